#![doc = include_str!("../README.md")]

mod smtp;

use anyhow::Context;
use herald_config::{
    AmqpSettings, DatabaseSettings, PolicySettings, RedisSettings, TelemetrySettings, Validate,
};
use herald_redis::RedisCache;
use herald_worker::{RateLimitSettings, RateLimiter, Worker, WorkerSettings};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use herald_smtp::{SmtpSecurity, SmtpSettings};
pub use smtp::SmtpProvider;

/// The binary, package, Deployment and `service.name`.
pub const SERVICE_NAME: &str = "herald-email-worker";

/// Everything the email worker reads from configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// PostgreSQL.
    pub database: DatabaseSettings,
    /// RabbitMQ.
    pub amqp: AmqpSettings,
    /// Consumption and retries.
    pub worker: WorkerSettings,
    /// The SMTP relay.
    pub smtp: SmtpSettings,
    /// Redis (rate limits).
    pub redis: RedisSettings,
    /// Rate limits per notification type.
    pub rate_limits: RateLimitSettings,
    /// Mandatory categories and quiet-hours bypasses.
    pub policy: PolicySettings,
    /// Logging.
    pub telemetry: TelemetrySettings,
    /// Open and click tracking (the pixel and rewritten links).
    pub tracking: herald_tracking::TrackingSettings,
}

impl Validate for Settings {
    fn validate(&self, problems: &mut Vec<String>) {
        self.database.validate(problems);
        self.amqp.validate(problems);
        self.worker.validate(problems);
        self.smtp.validate(problems);
        self.redis.validate(problems);
        self.rate_limits.validate(problems);
        self.tracking.validate(problems);
        self.telemetry.validate(problems);
    }
}

/// The email worker, ready to run.
pub struct Application {
    worker: Worker<SmtpProvider>,
}

impl Application {
    /// Builds the pools (the SMTP one sized to `worker.concurrency`); nothing connects until
    /// `run_until_stopped`.
    pub fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool =
            herald_db::build_pool(&settings.database).context("building the database pool")?;
        let provider = SmtpProvider::with_concurrency(&settings.smtp, settings.worker.concurrency)
            .context("building the SMTP connection pool")?
            .with_tracking(&settings.tracking);
        let redis = RedisCache::new(&settings.redis).context("building the Redis pool")?;
        Ok(Self {
            worker: Worker::new(provider, settings.worker, settings.amqp, pool, SERVICE_NAME)
                .with_rate_limiter(RateLimiter::new(redis, settings.rate_limits))
                .with_policy(settings.policy)
                .with_telemetry(&settings.telemetry)?,
        })
    }

    /// Where Prometheus metrics are served, when `telemetry.prometheus_listen` is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.worker.metrics_addr()
    }

    /// Reads quiet hours against `clock` (tests inject a manual one).
    #[must_use]
    pub fn with_clock(self, clock: herald_domain::SharedClock) -> Self {
        Self {
            worker: self.worker.with_clock(clock),
        }
    }

    /// Delivers email until `shutdown` is cancelled.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        self.worker.run_until_stopped(shutdown).await;
    }
}
