#![doc = include_str!("../README.md")]

mod monitor;
mod scan;
mod sinks;

use std::time::Duration;

use anyhow::Context;
use herald_config::{DatabaseSettings, TelemetrySettings, Validate};
use herald_smtp::SmtpSettings;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// The binary, package, Deployment and `service.name`.
pub const SERVICE_NAME: &str = "herald-sentinel";

/// Everything the sentinel reads from configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// PostgreSQL.
    pub database: DatabaseSettings,
    /// What to alert on and where.
    pub alerts: AlertSettings,
    /// The SMTP relay for email alerts.
    pub smtp: SmtpSettings,
    /// Logging.
    pub telemetry: TelemetrySettings,
}

/// Developer alerts.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertSettings {
    /// How often to look for alert-worthy events.
    #[serde(with = "humantime_serde")]
    pub scan_interval: Duration,
    /// A Slack-compatible incoming-webhook URL (a secret); empty disables webhook alerts.
    /// Sent through the chat channel's webhook code (`herald-webhook`).
    pub webhook_url: SecretString,
    /// With a secret, `webhook_url` gets signed webhooks (Standard Webhooks / Svix style,
    /// event type `alert.developer`) instead of Slack's `{"text"}`; empty: Slack.
    pub webhook_secret: SecretString,
    /// Addresses that get alerts by email; empty disables email alerts.
    pub email_to: Vec<String>,
    /// One fingerprint alerts at most once per this long.
    #[serde(with = "humantime_serde")]
    pub repeat_after: Duration,
    /// At most this many alerts in any hour, across fingerprints.
    pub max_per_hour: i64,
    /// Failure classes that alert (`permanent`, `exhausted`, `unknown`).
    pub failure_classes: Vec<String>,
    /// Time to delivery per priority, after which an unfinished delivery alerts.
    pub sla: SlaSettings,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            scan_interval: Duration::from_secs(10),
            webhook_url: SecretString::from(""),
            webhook_secret: SecretString::from(""),
            email_to: Vec::new(),
            repeat_after: Duration::from_secs(15 * 60),
            max_per_hour: 20,
            failure_classes: vec!["exhausted".into(), "unknown".into()],
            sla: SlaSettings::default(),
        }
    }
}

/// Time to delivery per priority.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlaSettings {
    /// Critical.
    #[serde(with = "humantime_serde")]
    pub critical: Duration,
    /// High.
    #[serde(with = "humantime_serde")]
    pub high: Duration,
    /// Normal.
    #[serde(with = "humantime_serde")]
    pub normal: Duration,
    /// Low.
    #[serde(with = "humantime_serde")]
    pub low: Duration,
}

impl Default for SlaSettings {
    fn default() -> Self {
        Self {
            critical: Duration::from_secs(60),
            high: Duration::from_secs(5 * 60),
            normal: Duration::from_secs(30 * 60),
            low: Duration::from_secs(4 * 60 * 60),
        }
    }
}

impl Validate for Settings {
    fn validate(&self, problems: &mut Vec<String>) {
        self.database.validate(problems);
        self.smtp.validate(problems);
        self.telemetry.validate(problems);
        let url = self.alerts.webhook_url.expose_secret();
        if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
            problems.push("alerts.webhook_url must be an http(s) URL or empty".into());
        }
        for class in &self.alerts.failure_classes {
            if !["permanent", "exhausted", "unknown"].contains(&class.as_str()) {
                problems.push(format!(
                    "alerts.failure_classes: unknown class `{class}` (permanent, exhausted or unknown)"
                ));
            }
        }
        for address in &self.alerts.email_to {
            if herald_domain::EmailAddress::parse(address).is_err() {
                problems.push("alerts.email_to contains an invalid email address".into());
            }
        }
        if self.alerts.max_per_hour < 1 {
            problems.push("alerts.max_per_hour must be at least 1".into());
        }
        if self.alerts.scan_interval.is_zero() {
            problems.push("alerts.scan_interval must be positive".into());
        }
    }
}

/// The sentinel, ready to run.
pub struct Application {
    scanner: scan::Scanner,
    interval: Duration,
    pool: herald_db::Pool,
    metrics: herald_service::ServiceMetrics,
    gauges: monitor::QueueGauges,
}

impl Application {
    /// Builds the pool and the destinations; nothing connects until `run_until_stopped`.
    pub fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool =
            herald_db::build_pool(&settings.database).context("building the database pool")?;
        let sinks = sinks::Sinks::new(&settings.alerts, &settings.smtp)
            .context("building alert destinations")?;
        if sinks.is_empty() {
            tracing::warn!(
                "No alert destination configured (alerts.webhook_url, alerts.email_to); alerts are only logged."
            );
        }
        let metrics = herald_service::ServiceMetrics::new(&settings.telemetry, SERVICE_NAME)?;
        Ok(Self {
            interval: settings.alerts.scan_interval,
            gauges: monitor::QueueGauges::new(metrics.metrics()),
            metrics,
            scanner: scan::Scanner::new(pool.clone(), sinks, settings.alerts),
            pool,
        })
    }

    /// Where Prometheus metrics are served, when `telemetry.prometheus_listen` is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.local_addr()
    }

    /// Scans every `alerts.scan_interval` until `shutdown` is cancelled, reading the queue
    /// figures for the gauges at each scan.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) {
        self.metrics
            .serve(&shutdown, herald_db::readiness(&self.pool));
        while herald_service::sleep_unless_shutdown(self.interval, &shutdown).await {
            if let Err(error) = self.gauges.refresh(&self.pool).await {
                tracing::warn!(error = %error, "Could not read the queue figures; retrying at the next interval.");
            }
            if let Err(error) = self.scanner.scan().await {
                tracing::warn!(error = %error, "Alert scan failed; retrying at the next interval.");
            }
        }
        tracing::info!("Sentinel stopped.");
    }
}
