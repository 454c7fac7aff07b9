//! A RabbitMQ vhost per test, through the management HTTP API.

use crate::{block_on_thread, is_stale, required_env, unique_name};

/// A fresh vhost the guest user may use, deleted with the value.
#[derive(Debug)]
pub struct TestVhost {
    name: String,
    admin_url: String,
    amqp_url: String,
}

impl TestVhost {
    /// Creates the vhost and grants the management user full permissions on it.
    ///
    /// # Panics
    /// When the management API is unreachable or refuses.
    pub async fn new() -> Self {
        let admin_url = required_env("TEST_AMQP_ADMIN_URL");
        let amqp_base = required_env("TEST_AMQP_URL");
        let client = reqwest::Client::new();
        let (base, user, password) = split_credentials(&admin_url);
        sweep(&client, &base, &user, &password).await;
        let name = unique_name("test", '-');
        client
            .put(format!("{base}/api/vhosts/{name}"))
            .basic_auth(&user, Some(&password))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|error| panic!("creating vhost {name} via {base}: {error}"));
        client
            .put(format!("{base}/api/permissions/{name}/{user}"))
            .basic_auth(&user, Some(&password))
            .json(&serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|error| panic!("granting permissions on vhost {name}: {error}"));
        let amqp_url = format!("{}/{name}", amqp_base.trim_end_matches('/'));
        Self {
            name,
            admin_url,
            amqp_url,
        }
    }

    /// The AMQP URL of this vhost.
    pub fn amqp_url(&self) -> &str {
        &self.amqp_url
    }

    /// The vhost's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Messages ready in `queue` right now (a passive declare, not the lagging management
    /// statistics).
    ///
    /// # Panics
    /// When the queue does not exist or the broker is unreachable.
    pub async fn ready_messages(&self, queue: &str) -> u32 {
        let connection = herald_queue::connect(&self.amqp_url, "herald-test-support")
            .await
            .expect("connecting to the test vhost");
        let channel = connection
            .create_channel()
            .await
            .expect("opening a channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                herald_queue::lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                herald_queue::lapin::types::FieldTable::default(),
            )
            .await
            .unwrap_or_else(|error| panic!("queue {queue} should exist: {error}"));
        let _closed = connection.close(200, "done".into()).await;
        declared.message_count()
    }
}

impl TestVhost {
    /// Deletes `queue` through the management API, as an operator mistake or a broker that
    /// lost its definitions would.
    ///
    /// # Panics
    /// When the management API refuses.
    pub async fn delete_queue(&self, queue: &str) {
        self.queue_api(reqwest::Method::DELETE, queue, "", "deleting")
            .await;
    }

    /// Messages in `queue`, ready or delivered and not yet acknowledged, as the management
    /// API reports them (its statistics lag by a few seconds: poll with `eventually`).
    ///
    /// # Panics
    /// When the management API refuses or answers without the figure.
    pub async fn messages_held(&self, queue: &str) -> u64 {
        let queue_info: serde_json::Value = self
            .queue_api(reqwest::Method::GET, queue, "", "reading")
            .await
            .json()
            .await
            .unwrap_or_else(|error| panic!("reading queue {queue}: {error}"));
        queue_info["messages"].as_u64().unwrap_or(u64::MAX)
    }

    /// Deletes every ready message of `queue` through the management API, as a broker node
    /// that failed with unreplicated classic queues would lose them.
    ///
    /// # Panics
    /// When the management API refuses.
    pub async fn purge_queue(&self, queue: &str) {
        self.queue_api(reqwest::Method::DELETE, queue, "/contents", "purging")
            .await;
    }

    /// One management API request on `queue` (`/api/queues/<vhost>/<queue><suffix>`),
    /// panicking with `doing` when it fails or is refused.
    async fn queue_api(
        &self,
        method: reqwest::Method,
        queue: &str,
        suffix: &str,
        doing: &str,
    ) -> reqwest::Response {
        let (base, user, password) = split_credentials(&self.admin_url);
        reqwest::Client::new()
            .request(
                method,
                format!("{base}/api/queues/{}/{queue}{suffix}", self.name),
            )
            .basic_auth(&user, Some(&password))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|error| panic!("{doing} queue {queue}: {error}"))
    }
}

/// `http://user:pass@host:port` → (`http://host:port`, user, pass).
fn split_credentials(url: &str) -> (String, String, String) {
    let parsed = reqwest::Url::parse(url).expect("TEST_AMQP_ADMIN_URL must be a URL");
    let user = parsed.username().to_owned();
    let password = parsed.password().unwrap_or_default().to_owned();
    let base = format!(
        "{}://{}:{}",
        parsed.scheme(),
        parsed.host_str().unwrap_or("127.0.0.1"),
        parsed.port_or_known_default().unwrap_or(15672)
    );
    (base, user, password)
}

async fn sweep(client: &reqwest::Client, base: &str, user: &str, password: &str) {
    let Ok(response) = client
        .get(format!("{base}/api/vhosts"))
        .basic_auth(user, Some(password))
        .send()
        .await
    else {
        return;
    };
    let Ok(vhosts) = response.json::<Vec<serde_json::Value>>().await else {
        return;
    };
    for name in vhosts
        .iter()
        .filter_map(|vhost| vhost.get("name")?.as_str())
        .filter(|name| name.starts_with("test-") && is_stale(name, '-'))
    {
        let _ignored = client
            .delete(format!("{base}/api/vhosts/{name}"))
            .basic_auth(user, Some(password))
            .send()
            .await;
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let (base, user, password) = split_credentials(&self.admin_url);
        let name = self.name.clone();
        block_on_thread(async move {
            let _ignored = reqwest::Client::new()
                .delete(format!("{base}/api/vhosts/{name}"))
                .basic_auth(&user, Some(&password))
                .send()
                .await;
        });
    }
}
