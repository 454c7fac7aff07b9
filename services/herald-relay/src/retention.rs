//! The retention job: every `retention.interval`, clears the personal data of deliveries that
//! have been final for `retention.personal_data_after` (`herald_db::retention`), a batch per
//! statement until none is due, and reports each run as one log line and the
//! `herald.retention.cleared` and `herald.retention.runs` counters.
//!
//! It runs in the relay because every deployment runs the relay (nothing is delivered
//! without it) and the relay already keeps PostgreSQL tidy (expired idempotency keys, the
//! outbox's vacuum); it works on its own connection, off the publishing path. Replicas share
//! the work through the clearing lock: one clears while the others skip the run.

use std::time::{Duration, Instant};

use herald_db::retention::{self, Cleared};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// How long personal data is kept after a delivery is final (`[retention]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// A final delivery's address and event details are cleared this long after it became
    /// final, and a notification's parameters and metadata once all its deliveries are
    /// cleared. Zero turns retention off: personal data is then kept until its user is erased.
    #[serde(with = "humantime_serde")]
    pub personal_data_after: Duration,
    /// How often the job looks for deliveries due.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Most deliveries cleared per statement (each in its own short transaction).
    pub batch_size: i64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            personal_data_after: Duration::from_secs(30 * 24 * 60 * 60),
            interval: Duration::from_secs(5 * 60),
            batch_size: 500,
        }
    }
}

impl RetentionSettings {
    /// Whether personal data is cleared at all.
    pub fn enabled(&self) -> bool {
        !self.personal_data_after.is_zero()
    }

    pub(crate) fn validate(&self, problems: &mut Vec<String>) {
        if !(1..=10_000).contains(&self.batch_size) {
            problems.push("retention.batch_size must be between 1 and 10000".into());
        }
        if self.interval.is_zero() {
            problems.push("retention.interval must be positive".into());
        }
        if chrono::Duration::from_std(self.personal_data_after).is_err() {
            problems.push("retention.personal_data_after is too long".into());
        }
    }
}

/// The job, ready to run.
pub(crate) struct Retention {
    pool: herald_db::Pool,
    clock: herald_domain::SharedClock,
    settings: RetentionSettings,
    /// Records cleared, by `herald.record` (deliveries, notifications, events).
    cleared: Counter<u64>,
    /// Runs, by `herald.outcome` (`ok`, `error`): a job that stopped running shows here.
    runs: Counter<u64>,
}

impl Retention {
    pub(crate) fn new(
        pool: herald_db::Pool,
        clock: herald_domain::SharedClock,
        settings: RetentionSettings,
        metrics: &herald_telemetry::Metrics,
    ) -> Self {
        let meter = metrics.meter();
        let cleared = meter
            .u64_counter("herald.retention.cleared")
            .with_unit("{record}")
            .with_description(
                "Deliveries, notifications and events whose personal data retention cleared",
            )
            .build();
        let runs = meter
            .u64_counter("herald.retention.runs")
            .with_unit("{run}")
            .with_description("Runs of the retention job")
            .build();
        Self {
            pool,
            clock,
            settings,
            cleared,
            runs,
        }
    }

    /// Runs every `retention.interval` until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        while herald_service::sleep_unless_shutdown(self.settings.interval, &shutdown).await {
            let started = Instant::now();
            match self.clear_due(&shutdown).await {
                Ok(cleared) => self.record(cleared, started.elapsed()),
                Err(error) => {
                    self.runs
                        .add(1, &[KeyValue::new("herald.outcome", "error")]);
                    tracing::warn!(
                        error = %error,
                        "Retention could not clear personal data; retrying at the next interval."
                    );
                }
            }
        }
    }

    /// Clears batches until one is not full (nothing more is due), another replica holds the
    /// clearing lock, or `shutdown`.
    async fn clear_due(&self, shutdown: &CancellationToken) -> Result<Cleared, herald_db::Error> {
        let now = self.clock.now();
        let kept = chrono::Duration::from_std(self.settings.personal_data_after)
            .unwrap_or(chrono::Duration::MAX);
        let cutoff = now
            .checked_sub_signed(kept)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let mut connection = herald_db::connection(&self.pool).await?;
        // Contacts disabled before keyed hashes are rekeyed from their delivery's address,
        // which clearing is about to take away.
        herald_db::contacts::rekey_legacy(&mut connection, 500).await?;
        let mut total = Cleared::default();
        while !shutdown.is_cancelled() {
            let batch =
                retention::clear_batch(&mut connection, cutoff, now, self.settings.batch_size)
                    .await?;
            let Some(batch) = batch else { break };
            total += batch;
            if batch.deliveries < self.settings.batch_size {
                break;
            }
        }
        Ok(total)
    }

    /// The run's log line and counters, from one place so they cannot drift apart. Counts
    /// only: what was cleared is never logged.
    fn record(&self, cleared: Cleared, took: Duration) {
        for (record, count) in [
            ("deliveries", cleared.deliveries),
            ("notifications", cleared.notifications),
            ("events", cleared.events),
        ] {
            self.cleared.add(
                u64::try_from(count).unwrap_or_default(),
                &[KeyValue::new("herald.record", record)],
            );
        }
        self.runs.add(1, &[KeyValue::new("herald.outcome", "ok")]);
        let duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        if cleared == Cleared::default() {
            tracing::debug!(duration_ms, "Retention found no personal data due.");
        } else {
            tracing::info!(
                deliveries = cleared.deliveries,
                notifications = cleared.notifications,
                events = cleared.events,
                duration_ms,
                "Retention cleared personal data."
            );
        }
    }
}
