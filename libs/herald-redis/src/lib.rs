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
        let mut config = deadpool_redis::Config::from_url(settings.url.expose_secret());
        let mut pool_config = deadpool_redis::PoolConfig::new(settings.max_connections);
        pool_config.timeouts = deadpool_redis::Timeouts {
            wait: Some(settings.timeout),
            create: Some(settings.timeout),
            recycle: Some(settings.timeout),
        };
        config.pool = Some(pool_config);
        let pool = config
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .map_err(|error| Error::Unavailable(error.to_string()))?;
        Ok(Self {
            pool,
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
