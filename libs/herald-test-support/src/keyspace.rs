//! A Redis key prefix per test.

use deadpool_redis::redis;

use crate::{block_on_thread, required_env, unique_name};

/// A unique `test:<time>:<rand>` prefix; every key under it is deleted with the value.
/// Making one installs the test keyring unless one is installed (Redis keys hash their
/// subjects with its lookup key).
#[derive(Debug)]
pub struct TestKeyspace {
    prefix: String,
    url: String,
}

impl Default for TestKeyspace {
    fn default() -> Self {
        crate::TestCerts::get().install_keyring();
        Self {
            prefix: unique_name("test", ':'),
            url: required_env("TEST_REDIS_URL"),
        }
    }
}

impl TestKeyspace {
    /// The prefix to configure as `redis.key_prefix`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every key under the prefix.
    ///
    /// # Panics
    /// When Redis is unreachable.
    pub async fn keys(&self) -> Vec<String> {
        keys_under(&self.url, &self.prefix)
            .await
            .expect("scanning keys in TEST_REDIS_URL")
    }

    /// Deletes every key under the prefix (a "wiped" cache).
    pub async fn wipe(&self) {
        wipe(&self.url, &self.prefix).await;
    }
}

async fn keys_under(url: &str, prefix: &str) -> redis::RedisResult<Vec<String>> {
    let mut connection = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(500)
            .query_async(&mut connection)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

async fn wipe(url: &str, prefix: &str) {
    let Ok(keys) = keys_under(url, prefix).await else {
        return;
    };
    if keys.is_empty() {
        return;
    }
    if let Ok(client) = redis::Client::open(url)
        && let Ok(mut connection) = client.get_multiplexed_async_connection().await
    {
        let _deleted: Result<u64, _> = redis::cmd("UNLINK")
            .arg(&keys)
            .query_async(&mut connection)
            .await;
    }
}

impl Drop for TestKeyspace {
    fn drop(&mut self) {
        let url = self.url.clone();
        let prefix = self.prefix.clone();
        block_on_thread(async move { wipe(&url, &prefix).await });
    }
}
