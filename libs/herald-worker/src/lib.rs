#![doc = include_str!("../README.md")]

mod consume;

use std::future::Future;
use std::time::Duration;

use herald_config::Validate;
use herald_db::deliveries::DeliveryContext;
use herald_domain::Channel;
use serde::Deserialize;

pub use consume::Worker;

/// What a provider reports when it accepted a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Which provider accepted it (e.g. `smtp`).
    pub provider: String,
    /// A short summary of the provider's response, free of personal data.
    pub detail: String,
}

/// How a delivery attempt failed, which decides what happens next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Will never succeed (invalid address, rejected content, template error): no retry.
    #[error("permanent: {0}")]
    Permanent(String),
    /// May succeed later (timeouts, throttling, the provider being down): retry with backoff.
    #[error("retryable: {0}")]
    Retryable(String),
    /// The request may or may not have been acted on; the channel's policy is not to resend.
    #[error("unknown outcome: {0}")]
    Unknown(String),
}

/// One channel's way of sending a delivery.
pub trait ChannelProvider: Send + Sync + 'static {
    /// The channel this provider serves (selects the queue).
    fn channel(&self) -> Channel;

    /// Renders and sends one delivery. Must not log addresses, parameters or bodies.
    fn deliver(
        &self,
        context: &DeliveryContext,
    ) -> impl Future<Output = Result<Receipt, DeliveryError>> + Send;
}

/// Consumption, retry and lifecycle settings of a worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Unacknowledged messages (and so concurrent deliveries) per worker process.
    pub prefetch: u16,
    /// How long a claim is held before it counts as abandoned.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Attempts before a retryable failure becomes final and is dead-lettered.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles per attempt, with full jitter.
    #[serde(with = "humantime_serde")]
    pub retry_base_delay: Duration,
    /// Longest backoff.
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
    /// How long in-flight deliveries may take to finish after a shutdown signal.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace_period: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            prefetch: 16,
            lease: Duration::from_secs(60),
            max_attempts: 5,
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(60),
            shutdown_grace_period: Duration::from_secs(20),
        }
    }
}

impl Validate for WorkerSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        if self.prefetch == 0 {
            problems.push("worker.prefetch must be at least 1".into());
        }
        if self.max_attempts == 0 {
            problems.push("worker.max_attempts must be at least 1".into());
        }
        if self.retry_base_delay > self.retry_max_delay {
            problems.push("worker.retry_base_delay must not exceed worker.retry_max_delay".into());
        }
    }
}

impl WorkerSettings {
    /// The jittered backoff after failed attempt number `attempt` (1-based): a uniform random
    /// delay up to `retry_base_delay * 2^(attempt-1)`, capped at `retry_max_delay`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let ceiling = self
            .retry_base_delay
            .saturating_mul(1 << exponent)
            .min(self.retry_max_delay);
        ceiling.mul_f64(rand::random::<f64>())
    }
}
