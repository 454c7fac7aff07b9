#![doc = include_str!("../README.md")]

mod email;

use anyhow::Context;
use herald_config::{
    AmqpSettings, DatabaseSettings, PolicySettings, RedisSettings, TelemetrySettings, Validate,
};
use herald_inbox::{InboxChannel, InboxPublisher};
use herald_push::{PushChannel, PushSettings};
use herald_redis::RedisCache;
use herald_sms::{SmsChannel, SmsSettings};
use herald_webhook::{ChatChannel, ChatSettings};
use herald_worker::{
    ChannelProvider, ProviderBound, RateLimitSettings, RateLimiter, Worker, WorkerSettings,
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use email::SmtpProvider;
pub use herald_smtp::{SmtpSecurity, SmtpSettings};

/// The binary and package; each channel runs as its own Deployment and `service.name`
/// (`herald-email-worker`, `herald-sms-worker`, …).
pub const SERVICE_NAME: &str = "herald-channel-worker";

/// The channels this binary delivers, one per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerChannel {
    /// Email over SMTP (lettre), with open and click tracking.
    Email,
    /// Text messages through Twilio-compatible and HTTP gateway providers, with failover.
    Sms,
    /// Mobile push through FCM HTTP v1 and APNs.
    Push,
    /// The in-app inbox: items stored in PostgreSQL, announced to live streams through Redis.
    InApp,
    /// Slack-compatible and signed webhooks.
    Chat,
}

impl WorkerChannel {
    fn service_name(self) -> &'static str {
        match self {
            Self::Email => "herald-email-worker",
            Self::Sms => "herald-sms-worker",
            Self::Push => "herald-push-worker",
            Self::InApp => "herald-in-app-worker",
            Self::Chat => "herald-chat-worker",
        }
    }
}

/// Everything a channel worker reads from configuration; only the selected channel's
/// section must be complete.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// PostgreSQL.
    pub database: DatabaseSettings,
    /// RabbitMQ.
    pub amqp: AmqpSettings,
    /// Consumption and retries.
    pub worker: WorkerSettings,
    /// Redis (rate limits).
    pub redis: RedisSettings,
    /// Rate limits per notification type.
    pub rate_limits: RateLimitSettings,
    /// Mandatory categories and quiet-hours bypasses.
    pub policy: PolicySettings,
    /// The SMTP relay.
    pub smtp: SmtpSettings,
    /// Open and click tracking in email (the pixel and rewritten links).
    pub tracking: herald_tracking::TrackingSettings,
    /// SMS providers, in order of preference.
    pub sms: SmsSettings,
    /// Push providers.
    pub push: PushSettings,
    /// Chat destinations.
    pub chat: ChatSettings,
    /// The in-app inbox: the schemes an item's action URL may use.
    pub inbox: herald_inbox::InboxSettings,
    /// Logging.
    pub telemetry: TelemetrySettings,
}

impl Validate for Settings {
    fn validate(&self, problems: &mut Vec<String>) {
        self.database.validate(problems);
        self.amqp.validate(problems);
        self.worker.validate(problems);
        self.redis.validate(problems);
        self.rate_limits.validate(problems);
        self.smtp.validate(problems);
        self.tracking.validate(problems);
        self.telemetry.validate(problems);
    }
}

impl Settings {
    /// Problems with the section of `channel`, and with a `worker.lease` that does not
    /// outlast the channel's provider calls.
    pub fn channel_problems(&self, channel: WorkerChannel) -> Vec<String> {
        let mut problems = Vec::new();
        match channel {
            // `[smtp]` and `[tracking]` have complete defaults and are checked with the rest.
            WorkerChannel::Email => {}
            WorkerChannel::Sms => self.sms.validate(&mut problems),
            WorkerChannel::Push => self.push.validate(&mut problems),
            WorkerChannel::InApp => self.inbox.validate(&mut problems),
            WorkerChannel::Chat => self.chat.validate(&mut problems),
        }
        if let Some(bound) = self.provider_bound(channel) {
            problems.extend(herald_worker::lease_problem(self.worker.lease, &bound));
        }
        problems
    }

    /// The longest one claim of `channel` waits for its provider; `None` for the in-app
    /// inbox, which writes to PostgreSQL and has no provider timeout.
    pub fn provider_bound(&self, channel: WorkerChannel) -> Option<ProviderBound> {
        let bound = |provider_timeout, stages, setting| ProviderBound {
            provider_timeout,
            stages,
            // One claim calls one provider: failover moves the next attempt, not this one,
            // and push calls a user's devices concurrently.
            fan_out: 1,
            setting,
        };
        match channel {
            // Connection (greeting, EHLO, STARTTLS, AUTH), envelope, message: each timed.
            WorkerChannel::Email => Some(bound(self.smtp.timeout, 3, "smtp.timeout")),
            WorkerChannel::Sms => self
                .sms
                .providers
                .iter()
                .map(herald_sms::SmsProviderSettings::timeout)
                .max()
                .map(|timeout| bound(timeout, 1, "the longest sms.providers timeout")),
            // FCM may first exchange its service-account assertion for an access token.
            WorkerChannel::Push => [
                self.push.fcm.as_ref().map(|fcm| fcm.timeout),
                self.push.apns.as_ref().map(|apns| apns.timeout),
            ]
            .into_iter()
            .flatten()
            .max()
            .map(|timeout| bound(timeout, 2, "the longest push.fcm/push.apns timeout")),
            WorkerChannel::InApp => None,
            WorkerChannel::Chat => Some(bound(self.chat.timeout, 1, "chat.timeout")),
        }
    }
}

enum Running {
    // Boxed: the SMTP provider's pool makes this variant the largest by far.
    Email(Box<Worker<SmtpProvider>>),
    Sms(Worker<SmsChannel>),
    Push(Worker<PushChannel>),
    InApp(Worker<InboxChannel>),
    Chat(Worker<ChatChannel>),
}

/// A channel worker, ready to run.
pub struct Application {
    running: Running,
}

impl Application {
    /// Builds the pools and the channel's providers; nothing connects until
    /// `run_until_stopped`.
    pub fn build(settings: Settings, channel: WorkerChannel) -> anyhow::Result<Self> {
        let problems = settings.channel_problems(channel);
        if !problems.is_empty() {
            anyhow::bail!("invalid configuration:\n  {}", problems.join("\n  "));
        }
        let pool =
            herald_db::build_pool(&settings.database).context("building the database pool")?;
        let running = match channel {
            WorkerChannel::Email => Running::Email(Box::new(worker(
                SmtpProvider::with_concurrency(&settings.smtp, settings.worker.concurrency)
                    .context("building the SMTP connection pool")?
                    .with_tracking(&settings.tracking),
                pool,
                &settings,
                channel,
            )?)),
            WorkerChannel::Sms => Running::Sms(worker(
                SmsChannel::new(&settings.sms).context("building the SMS providers")?,
                pool,
                &settings,
                channel,
            )?),
            WorkerChannel::Push => Running::Push(worker(
                PushChannel::from_settings(&settings.push)
                    .context("building the push providers")?,
                pool,
                &settings,
                channel,
            )?),
            WorkerChannel::InApp => {
                let publisher =
                    InboxPublisher::new(&settings.redis).context("building the inbox publisher")?;
                Running::InApp(worker(
                    InboxChannel::new(pool.clone(), publisher)
                        .with_action_url_schemes(settings.inbox.action_url_schemes.clone()),
                    pool,
                    &settings,
                    channel,
                )?)
            }
            WorkerChannel::Chat => Running::Chat(worker(
                ChatChannel::new(&settings.chat).context("building the chat destinations")?,
                pool,
                &settings,
                channel,
            )?),
        };
        Ok(Self { running })
    }

    /// Reads quiet hours against `clock` (tests inject a manual one).
    #[must_use]
    pub fn with_clock(self, clock: herald_domain::SharedClock) -> Self {
        let running = match self.running {
            Running::Email(worker) => Running::Email(Box::new(worker.with_clock(clock))),
            Running::Sms(worker) => Running::Sms(worker.with_clock(clock)),
            Running::Push(worker) => Running::Push(worker.with_clock(clock)),
            Running::InApp(worker) => Running::InApp(worker.with_clock(clock)),
            Running::Chat(worker) => Running::Chat(worker.with_clock(clock)),
        };
        Self { running }
    }

    /// Where Prometheus metrics are served, when `telemetry.prometheus_listen` is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.running {
            Running::Email(worker) => worker.metrics_addr(),
            Running::Sms(worker) => worker.metrics_addr(),
            Running::Push(worker) => worker.metrics_addr(),
            Running::InApp(worker) => worker.metrics_addr(),
            Running::Chat(worker) => worker.metrics_addr(),
        }
    }

    /// Delivers until `shutdown` is cancelled.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        match self.running {
            Running::Email(worker) => worker.run_until_stopped(shutdown).await,
            Running::Sms(worker) => worker.run_until_stopped(shutdown).await,
            Running::Push(worker) => worker.run_until_stopped(shutdown).await,
            Running::InApp(worker) => worker.run_until_stopped(shutdown).await,
            Running::Chat(worker) => worker.run_until_stopped(shutdown).await,
        }
    }
}

/// The worker runtime around `provider`, on `pool` (which the in-app provider shares).
fn worker<P: ChannelProvider>(
    provider: P,
    pool: herald_db::Pool,
    settings: &Settings,
    channel: WorkerChannel,
) -> anyhow::Result<Worker<P>> {
    let redis = RedisCache::new(&settings.redis).context("building the Redis pool")?;
    Ok(Worker::new(
        provider,
        settings.worker.clone(),
        settings.amqp.clone(),
        pool,
        channel.service_name(),
    )
    .with_rate_limiter(RateLimiter::new(redis, settings.rate_limits.clone()))
    .with_policy(settings.policy.clone())
    .with_telemetry(&settings.telemetry)?)
}
