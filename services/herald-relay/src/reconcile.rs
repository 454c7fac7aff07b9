//! The reconciler: every `reconcile.interval`, finds deliveries stuck in `queued` or
//! `retry_wait` for `reconcile.after` with nothing waiting in the outbox (their message lost
//! by the broker: a classic queue can lose one when its node fails, and a retry's delay copy
//! likewise) and puts them back in the outbox (`herald_db::outbox::requeue_stuck`), batch by
//! batch, for this relay to publish again. One log line and the `herald.outbox.reconciled`
//! counter per run that found any.
//!
//! It runs in the relay because publishing the outbox is the relay's job, every deployment
//! runs it (decision 0023), and a re-published message needs nothing else: the workers' claim
//! makes a duplicate harmless when the message was only slow, not lost. Replicas never requeue
//! the same delivery twice: the statement skips rows another holds and stamps each one it
//! requeues.

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// When a delivery counts as stuck, and how often the relay looks (`[reconcile]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileSettings {
    /// A delivery `queued` or `retry_wait` this long, with no outbox row, is published again.
    /// Longer than the longest retry delay (with its jitter) plus the time a backlog may
    /// wait in the queue; "0s" turns the reconciler off.
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    /// How often the relay looks.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Most deliveries requeued per statement.
    pub batch_size: i64,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            after: Duration::from_secs(15 * 60),
            interval: Duration::from_secs(60),
            batch_size: 500,
        }
    }
}

impl ReconcileSettings {
    /// Whether the reconciler runs.
    pub fn enabled(&self) -> bool {
        !self.after.is_zero()
    }

    pub(crate) fn validate(&self, problems: &mut Vec<String>) {
        if !(1..=10_000).contains(&self.batch_size) {
            problems.push("reconcile.batch_size must be between 1 and 10000".into());
        }
        if self.interval.is_zero() {
            problems.push("reconcile.interval must be positive".into());
        }
        if chrono::Duration::from_std(self.after).is_err() {
            problems.push("reconcile.after is too long".into());
        }
    }
}

/// The reconciler, ready to run.
pub(crate) struct Reconciler {
    pool: herald_db::Pool,
    settings: ReconcileSettings,
    /// Asked for queue depths on each pass.
    amqp: herald_config::AmqpSettings,
    /// Deliveries requeued, by `herald.channel`.
    reconciled: Counter<u64>,
    /// Passes that left a backlogged channel's queued deliveries alone, by `herald.channel`.
    deferred: Counter<u64>,
}

impl Reconciler {
    pub(crate) fn new(
        pool: herald_db::Pool,
        settings: &crate::Settings,
        metrics: &herald_telemetry::Metrics,
    ) -> Self {
        let reconciled = metrics
            .meter()
            .u64_counter("herald.outbox.reconciled")
            .with_unit("{delivery}")
            .with_description(
                "Deliveries stuck in queued or retry_wait whose message was lost, put back in the outbox",
            )
            .build();
        let deferred = metrics
            .meter()
            .u64_counter("herald.outbox.reconcile_deferred")
            .with_description(
                "Reconciler passes that left a channel's queued deliveries alone because its work queue still held messages (a backlog, not a loss)",
            )
            .build();
        Self {
            pool,
            settings: settings.reconcile.clone(),
            amqp: settings.amqp.clone(),
            reconciled,
            deferred,
        }
    }

    /// Runs every `reconcile.interval` until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        while herald_service::sleep_unless_shutdown(self.settings.interval, &shutdown).await {
            match self.requeue_stuck(&shutdown).await {
                Ok(requeued) => self.record(&requeued),
                Err(error) => tracing::warn!(
                    error = %error,
                    "Could not look for deliveries whose message was lost; retrying at the next interval."
                ),
            }
        }
    }

    /// Requeues batches until one is not full, or `shutdown`; returns the channel of each.
    async fn requeue_stuck(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Vec<String>, herald_db::Error> {
        let after =
            chrono::Duration::from_std(self.settings.after).unwrap_or(chrono::Duration::MAX);
        let stuck_before = chrono::Utc::now()
            .checked_sub_signed(after)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let Some(backlogged) = self.backlogged().await else {
            return Ok(Vec::new());
        };
        let mut connection = herald_db::connection(&self.pool).await?;
        let mut requeued = Vec::new();
        while !shutdown.is_cancelled() {
            let batch = herald_db::outbox::requeue_stuck(
                &mut connection,
                stuck_before,
                self.settings.batch_size,
                &backlogged,
            )
            .await?;
            let full = i64::try_from(batch.len()).unwrap_or(i64::MAX) >= self.settings.batch_size;
            requeued.extend(batch);
            if !full {
                break;
            }
        }
        Ok(requeued)
    }

    /// The run's log line and counter, from one place so they cannot drift apart.
    /// The channels whose work queue still holds ready messages: a delivery of theirs still
    /// `queued` may be waiting its turn there (a campaign's backlog), so it is not taken for
    /// lost. `None` when the broker cannot be asked: nothing could be published again anyway.
    async fn backlogged(&self) -> Option<Vec<String>> {
        let asked = herald_queue::read_depths(&self.amqp, "herald-relay-reconciler");
        let depths = match tokio::time::timeout(Duration::from_secs(5), asked).await {
            Ok(Ok(depths)) => depths,
            Ok(Err(error)) => {
                tracing::debug!(error = %error, "The reconciler cannot read queue depths; it waits for the broker.");
                return None;
            }
            Err(_elapsed) => return None,
        };
        let backlogged: Vec<String> = depths
            .into_iter()
            .filter(|depth| depth.work.is_some_and(|work| work.messages > 0))
            .map(|depth| depth.channel.as_str().to_owned())
            .collect();
        for channel in &backlogged {
            self.deferred
                .add(1, &[KeyValue::new("herald.channel", channel.clone())]);
        }
        Some(backlogged)
    }

    fn record(&self, requeued: &[String]) {
        if requeued.is_empty() {
            return;
        }
        let mut per_channel: BTreeMap<&str, u64> = BTreeMap::new();
        for channel in requeued {
            *per_channel.entry(channel.as_str()).or_default() += 1;
        }
        for (channel, count) in &per_channel {
            self.reconciled.add(
                *count,
                &[KeyValue::new("herald.channel", (*channel).to_owned())],
            );
        }
        tracing::warn!(
            deliveries = requeued.len(),
            after_s = self.settings.after.as_secs(),
            "Published deliveries again whose queue message was lost (stuck in queued or retry_wait)."
        );
    }
}
