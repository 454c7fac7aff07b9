//! What every part of a running worker shares: the provider, the settings, the pools, the
//! policy, the clock, the instruments and the cache of compiled template versions.

use herald_config::AmqpSettings;

use crate::instruments::Instruments;
use crate::templates::TemplateCache;
use crate::{ChannelProvider, RateLimiter, UnknownOutcome, WorkerSettings};

/// The shared state of one worker, behind an `Arc`.
pub(crate) struct Core<P> {
    /// Renders and sends.
    pub(crate) provider: P,
    /// Consumption, batching, retries and lifecycle.
    pub(crate) settings: WorkerSettings,
    /// Where RabbitMQ is.
    pub(crate) amqp: AmqpSettings,
    /// PostgreSQL.
    pub(crate) pool: herald_db::Pool,
    /// The service name (also the consumer tag).
    pub(crate) service_name: &'static str,
    /// Rate limits, when enforced.
    pub(crate) limiter: Option<RateLimiter>,
    /// Mandatory categories and quiet-hours bypasses.
    pub(crate) policy: herald_config::PolicySettings,
    /// "Now" for quiet hours and `send_at`.
    pub(crate) clock: herald_domain::SharedClock,
    /// The worker's own meter provider.
    pub(crate) metrics: herald_telemetry::Metrics,
    /// Its instruments.
    pub(crate) instruments: Instruments,
    /// Template versions compiled once, by template id and version.
    pub(crate) templates: TemplateCache,
}

impl<P: ChannelProvider> Core<P> {
    /// The channel's policy for attempts whose outcome cannot be known.
    pub(crate) fn unknown_outcome(&self) -> UnknownOutcome {
        self.settings
            .unknown_outcome
            .for_channel(self.provider.channel())
    }
}
