#![doc = include_str!("../README.md")]

mod context;
mod core;
mod decide;
mod failover;
pub mod http;
mod instruments;
mod intake;
mod limits;
mod pipeline;
mod prepare;
mod settle;
mod supervise;
mod templates;
mod unknown;

use std::future::Future;
use std::time::Duration;

use herald_config::Validate;
use herald_domain::Channel;
use herald_templates::RenderedPart;
use serde::Deserialize;

pub use context::DeliveryContext;
pub use failover::{BreakerSettings, CircuitState, Failover, Selected};
pub use limits::{Admission, FailMode, LimitRule, RateLimitSettings, RateLimiter};
pub use supervise::Worker;
pub use unknown::{ProviderBound, UnknownOutcome, UnknownOutcomeSettings, lease_problem};

/// What a provider reports when it accepted a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    /// A short summary of the provider's response, free of personal data.
    pub detail: String,
    /// Addresses the provider called no longer valid although the delivery went out (one of
    /// a user's device tokens was unregistered): the worker disables them.
    pub invalid_addresses: Vec<String>,
}

/// How a delivery attempt failed, which decides what happens next. `Debug` leaves out the
/// addresses of `AddressInvalid` (phone numbers, device tokens).
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Will never succeed (rejected content, template error): no retry.
    #[error("permanent: {0}")]
    Permanent(String),
    /// May succeed later (timeouts, throttling, the provider being down): retry with backoff,
    /// through the next provider.
    #[error("retryable: {0}")]
    Retryable(String),
    /// The request may or may not have been acted on (a timeout or a broken connection after
    /// it was sent): the channel's `worker.unknown_outcome` policy decides what happens next,
    /// `hold` (the delivery stays `unknown` for an operator) or `resend` (to the same provider).
    #[error("unknown outcome: {0}")]
    Unknown(String),
    /// The address is no longer valid (unregistered device token, hard bounce, invalid
    /// number): permanent, and the worker disables `addresses` so nothing is sent to them again.
    #[error("address invalid: {detail}")]
    AddressInvalid {
        /// The addresses to disable (personal data: never log them).
        addresses: Vec<String>,
        /// What the provider said, free of personal data.
        detail: String,
    },
}

impl DeliveryError {
    /// The error of a request that got no answer. `request_left` says whether it may have
    /// reached the provider: `false` (no connection was made, nothing was written) is
    /// `Retryable`; `true` is `Unknown`, since the provider may have acted on it, and the
    /// channel's `worker.unknown_outcome` policy decides whether it is sent again.
    pub fn unanswered(request_left: bool, detail: String) -> Self {
        if request_left {
            Self::Unknown(detail)
        } else {
            Self::Retryable(detail)
        }
    }
}

impl std::fmt::Debug for DeliveryError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Permanent(detail) => formatter.debug_tuple("Permanent").field(detail).finish(),
            Self::Retryable(detail) => formatter.debug_tuple("Retryable").field(detail).finish(),
            Self::Unknown(detail) => formatter.debug_tuple("Unknown").field(detail).finish(),
            Self::AddressInvalid { addresses, detail } => formatter
                .debug_struct("AddressInvalid")
                .field("addresses", &format_args!("<{} redacted>", addresses.len()))
                .field("detail", detail)
                .finish(),
        }
    }
}

/// One attempt's result and the provider that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempted {
    /// The configured name of the provider that was called (or would have been, when the
    /// attempt failed before a call), recorded on the attempt.
    pub provider: String,
    /// What happened.
    pub result: Result<Receipt, DeliveryError>,
}

/// One channel's way of sending a delivery.
pub trait ChannelProvider: Send + Sync + 'static {
    /// The channel this provider serves (selects the queue).
    fn channel(&self) -> Channel;

    /// Renders and sends one delivery. Must not log addresses, parameters or bodies.
    fn deliver(&self, context: &DeliveryContext) -> impl Future<Output = Attempted> + Send;

    /// Each provider's circuit breaker state, reported as a gauge; empty for channels
    /// without breakers.
    fn circuit_states(&self) -> Vec<(String, CircuitState)> {
        Vec::new()
    }
}

/// Renders the part `P` (`RenderedSms`, …) of the delivery's template version, in the
/// recipient's locale through the fallback chain, for the A/B test variant assigned at submit
/// (its part when it has one for the channel, else the base part), with the same code as
/// `RenderPreview` (`VersionContent::render_variant`), from the version the worker compiled
/// once and cached. Every error is permanent.
pub fn render<P: RenderedPart>(context: &DeliveryContext) -> Result<P, DeliveryError> {
    let _span = tracing::info_span!(
        "render",
        otel.name = %format_args!("render {}", P::CHANNEL),
        herald.channel = %P::CHANNEL,
        herald.template.key = %context.template_key,
        herald.variant = context.variant.as_deref().unwrap_or(""),
        herald.locale = context.locale.as_ref().map_or("", |locale| locale.as_str()),
    )
    .entered();
    let (_, rendered) = context
        .template
        .render_variant(
            context.locale.as_ref(),
            P::CHANNEL,
            context.variant.as_deref(),
            &context.parameters,
        )
        .map_err(|error| DeliveryError::Permanent(format!("template render failed: {error}")))?;
    P::from_rendered(rendered).ok_or_else(|| {
        DeliveryError::Permanent(format!("the template rendered no {} part", P::CHANNEL))
    })
}

/// Consumption, batching, retry and lifecycle settings of a worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Unacknowledged messages per worker process: what RabbitMQ hands over ahead of time,
    /// each carrying up to `relay.message_max` deliveries. The worker takes them in priority
    /// order, so a high prefetch does not put bulk messages ahead of a critical one that
    /// arrives later.
    pub prefetch: u16,
    /// Deliveries claimed and not yet answered by the provider, per process: the provider
    /// calls in flight (and the size of the email worker's SMTP connection pool).
    pub concurrency: usize,
    /// The most deliveries claimed, or outcomes recorded, in one statement.
    pub batch_max: usize,
    /// How long a batch waits for more deliveries while other work is in flight; a lone
    /// message never waits.
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    /// How long a claim is held before it counts as abandoned.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Attempts per cycle before a retryable failure becomes final and is dead-lettered.
    pub max_attempts: u32,
    /// Delay tiers: after failed attempt `n` the delivery waits about `retry_delays[n-1]`
    /// (the last tier repeats) in a RabbitMQ delay queue. Each tier is split into three jitter
    /// lanes (×0.8, ×1, ×1.2) and a retry picks one at random, so a burst of failures does not
    /// come back as a burst.
    #[serde(deserialize_with = "durations")]
    pub retry_delays: Vec<Duration>,
    /// How long in-flight deliveries may take to finish after a shutdown signal.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace_period: Duration,
    /// Emergency path: a critical delivery still unpublished this long after it was accepted
    /// (RabbitMQ or the relay is away) is delivered straight from PostgreSQL.
    #[serde(with = "humantime_serde")]
    pub emergency_after: Duration,
    /// How often the emergency path looks for stranded critical deliveries.
    #[serde(with = "humantime_serde")]
    pub emergency_poll_interval: Duration,
    /// What each channel does with an attempt whose outcome cannot be known: `hold` or
    /// `resend` (`[worker.unknown_outcome]`).
    pub unknown_outcome: UnknownOutcomeSettings,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            prefetch: 32,
            concurrency: 64,
            batch_max: 64,
            batch_linger: Duration::from_millis(20),
            lease: Duration::from_secs(60),
            max_attempts: 5,
            retry_delays: [1, 5, 30, 120].map(Duration::from_secs).to_vec(),
            shutdown_grace_period: Duration::from_secs(20),
            emergency_after: Duration::from_secs(10),
            emergency_poll_interval: Duration::from_secs(1),
            unknown_outcome: UnknownOutcomeSettings::default(),
        }
    }
}

impl Validate for WorkerSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        if self.prefetch == 0 {
            problems.push("worker.prefetch must be at least 1".into());
        }
        if self.concurrency == 0 {
            problems.push("worker.concurrency must be at least 1".into());
        }
        if self.batch_max == 0 {
            problems.push("worker.batch_max must be at least 1".into());
        }
        if self.max_attempts == 0 {
            problems.push("worker.max_attempts must be at least 1".into());
        }
        if self.emergency_poll_interval.is_zero() {
            problems.push("worker.emergency_poll_interval must be positive".into());
        }
        if self.retry_delays.is_empty() || self.retry_delays.iter().any(Duration::is_zero) {
            problems.push("worker.retry_delays must list at least one non-zero delay".into());
        }
    }
}

/// The jitter lanes of every tier, as multiples of the tier's delay.
const JITTER_LANES: [f64; 3] = [0.8, 1.0, 1.2];

impl WorkerSettings {
    /// Every delay queue the worker needs: each tier's jitter lanes.
    pub fn retry_queue_delays(&self) -> Vec<Duration> {
        let mut delays: Vec<Duration> = self
            .retry_delays
            .iter()
            .flat_map(|delay| JITTER_LANES.map(|factor| lane(*delay, factor)))
            .collect();
        delays.sort();
        delays.dedup();
        delays
    }

    /// The delay after failed attempt `cycle_attempt` (1-based): its tier, in a random lane.
    pub fn retry_delay(&self, cycle_attempt: u32) -> Duration {
        let tier = usize::try_from(cycle_attempt.saturating_sub(1))
            .unwrap_or(usize::MAX)
            .min(self.retry_delays.len().saturating_sub(1));
        let delay = self
            .retry_delays
            .get(tier)
            .copied()
            .unwrap_or(Duration::from_secs(1));
        let factor = JITTER_LANES[rand::random_range(0..JITTER_LANES.len())];
        lane(delay, factor)
    }
}

/// A lane's delay, rounded to whole milliseconds (queue names and TTLs are in ms).
fn lane(delay: Duration, factor: f64) -> Duration {
    Duration::from_millis(
        delay
            .mul_f64(factor)
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX),
    )
}

fn durations<'de, D>(deserializer: D) -> Result<Vec<Duration>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| humantime::parse_duration(text).map_err(serde::de::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests;
