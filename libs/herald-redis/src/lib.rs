#![doc = include_str!("../README.md")]

use std::time::Duration;

use deadpool_redis::redis::aio::MultiplexedConnection;
use herald_config::RedisSettings;
use herald_domain::Identity;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

/// Why a Redis operation did not complete. Callers fall back to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection within the timeout, or the pool could not be built.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// The command did not answer within the timeout.
    #[error("redis timed out")]
    Timeout,
    /// The command failed.
    #[error("redis command failed: {0}")]
    Command(#[from] deadpool_redis::redis::RedisError),
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds every Redis key Herald uses, under one prefix.
#[derive(Debug, Clone)]
pub struct Keyspace {
    prefix: String,
}

impl Keyspace {
    /// A keyspace under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// A client of `settings.url`: over TLS for `rediss://` (rustls), trusting `settings.tls_ca`
/// when set and the system's roots otherwise. Connects lazily.
pub fn client(settings: &RedisSettings) -> Result<deadpool_redis::redis::Client> {
    use deadpool_redis::redis;
    let url = settings.url.expose_secret();
    let client = if settings.tls_ca.as_os_str().is_empty() {
        redis::Client::open(url)
    } else {
        let root_cert = std::fs::read(&settings.tls_ca).map_err(|error| {
            Error::Unavailable(format!(
                "redis.tls_ca ({}) cannot be read: {error}",
                settings.tls_ca.display()
            ))
        })?;
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        )
    };
    client.map_err(|error| Error::Unavailable(error.to_string()))
}

/// A connection pool of `client(settings)` whose waits, connects and recycles are each bounded
/// by `settings.timeout`; connects lazily.
pub fn build_pool(settings: &RedisSettings) -> Result<deadpool_redis::Pool> {
    let manager = deadpool_redis::Manager::new(client(settings)?.get_connection_info().clone())
        .map_err(|error| Error::Unavailable(error.to_string()))?;
    deadpool_redis::Pool::builder(manager)
        .max_size(settings.max_connections)
        .wait_timeout(Some(settings.timeout))
        .create_timeout(Some(settings.timeout))
        .recycle_timeout(Some(settings.timeout))
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .map_err(|error| Error::Unavailable(error.to_string()))
}

/// The Redis cache.
#[derive(Clone)]
pub struct RedisCache {
    pool: deadpool_redis::Pool,
    keyspace: Keyspace,
    timeout: Duration,
    /// One multiplexed connection taken out of the pool for rate-limit batches: it pipelines
    /// the commands of concurrent callers and skips the pool's `PING` on every checkout.
    /// Dropped after an error, so the next batch connects afresh.
    shared: std::sync::Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RedisCache")
            .field("keyspace", &self.keyspace)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisCache {
    /// Builds the pool; connects lazily.
    pub fn new(settings: &RedisSettings) -> Result<Self> {
        Ok(Self {
            pool: build_pool(settings)?,
            keyspace: Keyspace::new(settings.key_prefix.clone()),
            timeout: settings.timeout,
            shared: std::sync::Arc::default(),
        })
    }

    /// The keyspace.
    pub fn keyspace(&self) -> &Keyspace {
        &self.keyspace
    }

    async fn connection(&self) -> Result<deadpool_redis::Connection> {
        self.pool
            .get()
            .await
            .map_err(|error| Error::Unavailable(error.to_string()))
    }

    /// The shared multiplexed connection, taken from the pool on first use.
    async fn shared_connection(&self) -> Result<MultiplexedConnection> {
        let mut shared = self.shared.lock().await;
        if let Some(connection) = shared.as_ref() {
            return Ok(connection.clone());
        }
        let connection = deadpool_redis::Connection::take(self.connection().await?);
        *shared = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets the shared connection after an error: the next caller connects again.
    async fn forget_shared_connection(&self) {
        *self.shared.lock().await = None;
    }

    async fn bounded<T>(&self, command: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.timeout, command)
            .await
            .map_err(|_| Error::Timeout)?
    }
}

/// Sliding-window admission in one atomic script: drops entries older than the window,
/// admits `member` if it was admitted before (a retry of the same delivery counts once) or if
/// fewer than `limit` members are in the window, and records it. Uses the Redis server's clock,
/// so workers with skewed clocks agree. Returns 1 when admitted.
const SLIDING_WINDOW: &str = r"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - window)
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  return 1
end
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now_ms, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 1
end
return 0
";

/// A fixed-window counter: increments and returns the count for the current window.
const FIXED_WINDOW: &str = r"
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
if count == tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return count
";

/// The keyed lookup hash (HMAC-SHA256 under the process keyring's lookup key) of `subject`
/// in `domain`, as hex: a plain hash of a phone number or an address in a key could be reversed
/// by trying candidates.
///
/// # Panics
/// If the process has no keyring (`herald_crypto::lookup_hex`).
fn keyed(domain: &str, subject: &str) -> String {
    herald_crypto::lookup_hex(domain, subject.as_bytes())
}

/// The number of the fixed window of length `window` that holds the present instant (on
/// the real clock, shared by every replica).
pub fn quota_window(window: Duration) -> u64 {
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default();
    now_ms / window_ms
}

impl Keyspace {
    /// `<prefix>:rate:<type>:<hmac(subject)>:<window ms>`: one sliding window per subject (a
    /// user, else an address) and notification type.
    ///
    /// # Panics
    /// If the process has no keyring (see `keyed`).
    pub fn rate_limit(&self, notification_type: &str, subject: &str, window: Duration) -> String {
        format!(
            "{}:rate:{notification_type}:{}:{}",
            self.prefix,
            keyed("rate", subject),
            window.as_millis()
        )
    }

    /// `<prefix>:inbox:<hmac(user_id)>`: the pub/sub channel of `user_id`'s inbox changes.
    /// Hashed like the rate-limit keys, so channel names have a bounded length and carry no
    /// caller-chosen text.
    ///
    /// # Panics
    /// If the process has no keyring (see `keyed`).
    pub fn inbox_channel(&self, user_id: &str) -> String {
        format!("{}:inbox:{}", self.prefix, keyed("inbox", user_id))
    }

    /// `<prefix>:quota:<sha256(identity)>:<window start>`: a caller's submit counter.
    pub fn submit_quota(&self, identity: &Identity, window_start: u64) -> String {
        format!(
            "{}:quota:{}:{window_start}",
            self.prefix,
            hex::encode(Sha256::digest(identity.as_ref().as_bytes()))
        )
    }
}

/// One sliding-window check for `RedisCache::admit_many`.
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    /// The notification type (template key).
    pub notification_type: &'a str,
    /// Whose window: a user id, else an address (personal data: only its hash is in the key).
    pub subject: &'a str,
    /// What is admitted (a delivery id): admitted before, it is admitted again.
    pub member: &'a str,
    /// Most members within `window`.
    pub limit: u32,
    /// The sliding window.
    pub window: Duration,
}

impl RedisCache {
    /// Admits `member` (a delivery id) into `subject`'s window for `notification_type` unless
    /// `limit` members were admitted within `window`. Atomic under concurrent workers.
    pub async fn admit(
        &self,
        notification_type: &str,
        subject: &str,
        member: &str,
        limit: u32,
        window: Duration,
    ) -> Result<bool> {
        let key = self.keyspace.rate_limit(notification_type, subject, window);
        let admitted: i64 = self
            .bounded(async {
                let mut connection = self.connection().await?;
                Ok(deadpool_redis::redis::Script::new(SLIDING_WINDOW)
                    .key(&key)
                    .arg(u64::try_from(window.as_millis()).unwrap_or(u64::MAX))
                    .arg(limit)
                    .arg(member)
                    .invoke_async(&mut *connection)
                    .await?)
            })
            .await?;
        Ok(admitted == 1)
    }

    /// `admit` for many deliveries at once, in one pipelined round trip: each check runs the
    /// same atomic sliding-window script (a retry of the same member counts once), in order,
    /// so two checks of one subject in a batch see each other. Returns, per check, whether it
    /// was admitted.
    pub async fn admit_many(&self, checks: &[Admission<'_>]) -> Result<Vec<bool>> {
        use deadpool_redis::redis::{ErrorKind, ServerErrorKind};
        if checks.is_empty() {
            return Ok(Vec::new());
        }
        let script = deadpool_redis::redis::Script::new(SLIDING_WINDOW);
        let keys: Vec<String> = checks
            .iter()
            .map(|check| {
                self.keyspace
                    .rate_limit(check.notification_type, check.subject, check.window)
            })
            .collect();
        let mut pipeline = deadpool_redis::redis::pipe();
        for (check, key) in checks.iter().zip(&keys) {
            pipeline.invoke_script(
                script
                    .key(key)
                    .arg(u64::try_from(check.window.as_millis()).unwrap_or(u64::MAX))
                    .arg(check.limit)
                    .arg(check.member),
            );
        }
        let result = self
            .bounded(async {
                let mut connection = self.shared_connection().await?;
                match pipeline.query_async::<Vec<i64>>(&mut connection).await {
                    // Redis lost its script cache (a restart): load the script and run the
                    // batch again. No check ran, since none of them found the script.
                    Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        script.load_async(&mut connection).await?;
                        Ok(pipeline.query_async::<Vec<i64>>(&mut connection).await?)
                    }
                    other => Ok(other?),
                }
            })
            .await;
        match result {
            Ok(admitted) => Ok(admitted.into_iter().map(|admitted| admitted == 1).collect()),
            Err(error) => {
                self.forget_shared_connection().await;
                Err(error)
            }
        }
    }

    /// Counts `count` submits by `identity` in the fixed window number `window_index` (of
    /// `window` each; see `quota_window`) and returns the count so far in that window. API
    /// replicas take their quota in chunks this way, and count the chunk's submits locally.
    pub async fn count_submits(
        &self,
        identity: &Identity,
        window: Duration,
        window_index: u64,
        count: u64,
    ) -> Result<u64> {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let key = self.keyspace.submit_quota(identity, window_index);
        self.bounded(async {
            let mut connection = self.connection().await?;
            Ok(deadpool_redis::redis::Script::new(FIXED_WINDOW)
                .key(&key)
                .arg(window_ms)
                .arg(count)
                .invoke_async(&mut *connection)
                .await?)
        })
        .await
    }
}
