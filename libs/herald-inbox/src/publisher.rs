//! Publishing a user's inbox changes to their Redis channel (the worker and the API server).

use std::time::Duration;

use deadpool_redis::redis::AsyncCommands;
use herald_config::RedisSettings;

use crate::signal::Signal;
use crate::{Error, Result};
use herald_redis::Keyspace;

/// Publishes `Signal`s with `PUBLISH` over a small connection pool. Every command is bounded by
/// `redis.timeout`.
#[derive(Clone)]
pub struct InboxPublisher {
    pool: deadpool_redis::Pool,
    keyspace: Keyspace,
    timeout: Duration,
}

impl std::fmt::Debug for InboxPublisher {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("InboxPublisher")
            .field("keyspace", &self.keyspace)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl InboxPublisher {
    /// Builds the pool; connects lazily.
    pub fn new(settings: &RedisSettings) -> Result<Self> {
        let pool = herald_redis::build_pool(settings)?;
        Ok(Self {
            pool,
            keyspace: Keyspace::new(settings.key_prefix.clone()),
            timeout: settings.timeout,
        })
    }

    /// Publishes `signal` to `user_id`'s channel; returns how many replicas received it.
    pub async fn publish(&self, user_id: &str, signal: &Signal) -> Result<u64> {
        let channel = self.keyspace.inbox_channel(user_id);
        let payload = signal.to_payload();
        tokio::time::timeout(self.timeout, async {
            let mut connection = self
                .pool
                .get()
                .await
                .map_err(|error| Error::Unavailable(error.to_string()))?;
            Ok(connection.publish(&channel, &payload).await?)
        })
        .await
        .map_err(|_| Error::Timeout)?
    }
}
