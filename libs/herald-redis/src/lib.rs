#![doc = include_str!("../README.md")]

use std::time::Duration;

use deadpool_redis::redis::AsyncCommands;
use herald_config::RedisSettings;
use herald_domain::{IdempotencyKey, Identity, NotificationId};
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

    /// `<prefix>:idem:<sha256(identity, key)>`: hashed so that keys stay short and carry no
    /// caller-chosen text.
    pub fn idempotency(&self, identity: &Identity, key: &IdempotencyKey) -> String {
        let mut hasher = Sha256::new();
        hasher.update(identity.as_ref().as_bytes());
        hasher.update([0]);
        hasher.update(key.as_ref().as_bytes());
        format!("{}:idem:{}", self.prefix, hex::encode(hasher.finalize()))
    }
}

/// A connection pool to `settings.url` whose waits, connects and recycles are each bounded by
/// `settings.timeout`; connects lazily.
pub fn build_pool(settings: &RedisSettings) -> Result<deadpool_redis::Pool> {
    let mut config = deadpool_redis::Config::from_url(settings.url.expose_secret());
    let mut pool_config = deadpool_redis::PoolConfig::new(settings.max_connections);
    pool_config.timeouts = deadpool_redis::Timeouts {
        wait: Some(settings.timeout),
        create: Some(settings.timeout),
        recycle: Some(settings.timeout),
    };
    config.pool = Some(pool_config);
    config
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .map_err(|error| Error::Unavailable(error.to_string()))
}

/// The Redis cache.
#[derive(Clone)]
pub struct RedisCache {
    pool: deadpool_redis::Pool,
    keyspace: Keyspace,
    timeout: Duration,
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

    async fn bounded<T>(&self, command: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.timeout, command)
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// The cached outcome of an earlier submit with `key` by `identity`.
    pub async fn idempotency_get(
        &self,
        identity: &Identity,
        key: &IdempotencyKey,
    ) -> Result<Option<(NotificationId, Vec<u8>)>> {
        let redis_key = self.keyspace.idempotency(identity, key);
        let value: Option<String> = self
            .bounded(async {
                let mut connection = self.connection().await?;
                Ok(connection.get(&redis_key).await?)
            })
            .await?;
        Ok(value.and_then(|value| {
            let (id, hash) = value.split_once(':')?;
            Some((id.parse().ok()?, hex::decode(hash).ok()?))
        }))
    }

    /// Caches the outcome of a submit for `ttl`.
    pub async fn idempotency_put(
        &self,
        identity: &Identity,
        key: &IdempotencyKey,
        notification_id: NotificationId,
        request_hash: &[u8],
        ttl: Duration,
    ) -> Result<()> {
        let redis_key = self.keyspace.idempotency(identity, key);
        let value = format!("{notification_id}:{}", hex::encode(request_hash));
        self.bounded(async {
            let mut connection = self.connection().await?;
            let () = connection
                .set_ex(&redis_key, value, ttl.as_secs().max(1))
                .await?;
            Ok(())
        })
        .await
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
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return count
";

impl Keyspace {
    /// `<prefix>:rate:<type>:<sha256(subject)>:<window ms>`: one sliding window per subject
    /// (a user) and notification type.
    pub fn rate_limit(&self, notification_type: &str, subject: &str, window: Duration) -> String {
        format!(
            "{}:rate:{notification_type}:{}:{}",
            self.prefix,
            hex::encode(Sha256::digest(subject.as_bytes())),
            window.as_millis()
        )
    }

    /// `<prefix>:inbox:<sha256(user_id)>`: the pub/sub channel of `user_id`'s inbox changes.
    /// Hashed like the rate-limit keys, so channel names have a bounded length and carry no
    /// caller-chosen text.
    pub fn inbox_channel(&self, user_id: &str) -> String {
        format!(
            "{}:inbox:{}",
            self.prefix,
            hex::encode(Sha256::digest(user_id.as_bytes()))
        )
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

    /// Counts one submit by `identity` in the current fixed window of `window` and returns the
    /// count so far in that window.
    pub async fn count_submit(&self, identity: &Identity, window: Duration) -> Result<u64> {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or_default();
        let key = self.keyspace.submit_quota(identity, now_ms / window_ms);
        self.bounded(async {
            let mut connection = self.connection().await?;
            Ok(deadpool_redis::redis::Script::new(FIXED_WINDOW)
                .key(&key)
                .arg(window_ms)
                .invoke_async(&mut *connection)
                .await?)
        })
        .await
    }
}
