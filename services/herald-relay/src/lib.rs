#![doc = include_str!("../README.md")]

mod publish;
mod reconcile;
mod retention;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use herald_config::{AmqpSettings, DatabaseSettings, TelemetrySettings, Validate};
use herald_db::outbox;
use herald_queue::Publisher;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use reconcile::ReconcileSettings;
pub use retention::RetentionSettings;

/// The binary, package, Deployment and `service.name`.
pub const SERVICE_NAME: &str = "herald-relay";

/// Everything the relay reads from configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// PostgreSQL.
    pub database: DatabaseSettings,
    /// RabbitMQ.
    pub amqp: AmqpSettings,
    /// Batching and polling.
    pub relay: RelaySettings,
    /// How long personal data is kept after a delivery is final (the retention job).
    pub retention: RetentionSettings,
    /// When a delivery whose queue message was lost is published again (the reconciler).
    pub reconcile: ReconcileSettings,
    /// Logging.
    pub telemetry: TelemetrySettings,
}

/// How the relay wakes and batches.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelaySettings {
    /// Most rows published per transaction.
    pub batch_size: i64,
    /// Batches in flight at once, each in its own transaction (`SKIP LOCKED` keeps their rows
    /// apart): one is being confirmed by the broker while the next is read and published.
    pub publishers: usize,
    /// Longest sleep after a batch that was not full. Submits wake the relay at once
    /// (`NOTIFY`); this catches scheduled rows coming due and missed notifications.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Under load, how long a woken relay waits before reading the outbox, so that the
    /// submits committed meanwhile go out in one batch (one transaction, one round of
    /// confirms) rather than in one batch each. It applies only when the previous batch
    /// published something: a submit after a quiet moment is published at once.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// How often expired idempotency keys are deleted.
    #[serde(with = "humantime_serde")]
    pub cleanup_interval: Duration,
    /// Rows published between two vacuums of the outbox (`herald_db::outbox::vacuum`); 0
    /// leaves the outbox to autovacuum.
    pub vacuum_after: u64,
    /// Most deliveries of one channel and priority carried by one queue message (a
    /// `DeliveryBatch`); 1 publishes a message per delivery. The broker's work per message is
    /// what a delivery costs it, so packing them saves most of it.
    pub message_max: usize,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            publishers: 2,
            poll_interval: Duration::from_millis(500),
            linger: Duration::from_millis(20),
            cleanup_interval: Duration::from_secs(60),
            vacuum_after: 5_000,
            message_max: 16,
        }
    }
}

impl Validate for Settings {
    fn validate(&self, problems: &mut Vec<String>) {
        self.database.validate(problems);
        self.amqp.validate(problems);
        self.telemetry.validate(problems);
        self.retention.validate(problems);
        self.reconcile.validate(problems);
        if !(1..=10_000).contains(&self.relay.batch_size) {
            problems.push("relay.batch_size must be between 1 and 10000".into());
        }
        if !(1..=1_000).contains(&self.relay.message_max) {
            problems.push("relay.message_max must be between 1 and 1000".into());
        }
        if self.relay.publishers == 0 || self.relay.publishers >= self.database.max_connections {
            problems.push(format!(
                "relay.publishers must be at least 1 and below database.max_connections ({})",
                self.database.max_connections
            ));
        }
    }
}

/// The relay, ready to run.
pub struct Application {
    settings: Settings,
    pool: herald_db::Pool,
    clock: herald_domain::SharedClock,
    metrics: herald_service::ServiceMetrics,
    instruments: Instruments,
    vacuum: OutboxVacuum,
}

/// Vacuums the outbox every `every` published rows, one vacuum at a time, off the publishing
/// path: the rows the relay deletes would otherwise slow every batch's lookup until autovacuum
/// comes by (see `herald_db::outbox::vacuum`).
struct OutboxVacuum {
    every: u64,
    published: AtomicU64,
    running: Arc<AtomicBool>,
}

impl OutboxVacuum {
    fn new(every: u64) -> Self {
        Self {
            every,
            published: AtomicU64::new(0),
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Counts `rows` published, and starts a vacuum on a connection of `pool` once `every`
    /// rows have been published since the last one started.
    fn count(&self, rows: usize, pool: &herald_db::Pool) {
        let rows = rows as u64;
        if self.every == 0 || rows == 0 {
            return;
        }
        let published = self.published.fetch_add(rows, Ordering::Relaxed) + rows;
        if published < self.every || self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.published.store(0, Ordering::Relaxed);
        let running = self.running.clone();
        let pool = pool.clone();
        tokio::spawn(async move {
            let vacuumed = async {
                let mut connection = herald_db::connection(&pool).await?;
                outbox::vacuum(&mut connection).await
            }
            .await;
            match vacuumed {
                Ok(()) => tracing::debug!(published, "Outbox vacuumed."),
                Err(error) => tracing::warn!(error = %error, "Could not vacuum the outbox."),
            }
            running.store(false, Ordering::Release);
        });
    }
}

/// What the relay measures.
#[derive(Clone)]
pub(crate) struct Instruments {
    /// Rows confirmed by the broker, by channel and priority.
    pub(crate) published: opentelemetry::metrics::Counter<u64>,
    /// Rows the broker refused or that could not be routed, by channel.
    pub(crate) failed: opentelemetry::metrics::Counter<u64>,
    /// From a row becoming due to the broker's confirm, by channel and priority.
    pub(crate) lag: opentelemetry::metrics::Histogram<f64>,
}

impl Instruments {
    fn new(metrics: &herald_telemetry::Metrics) -> Self {
        let meter = metrics.meter();
        Self {
            published: meter
                .u64_counter("herald.outbox.published")
                .with_description("Outbox rows published to RabbitMQ and confirmed")
                .build(),
            failed: meter
                .u64_counter("herald.outbox.publish.failures")
                .with_description("Outbox publishes the broker nacked or returned")
                .build(),
            lag: meter
                .f64_histogram("herald.relay.lag")
                .with_unit("s")
                .with_description("Time from an outbox row becoming due to its confirmed publish")
                .with_boundaries(herald_telemetry::LATENCY_BUCKETS.to_vec())
                .build(),
        }
    }
}

/// Why one batch stopped.
enum BatchError {
    /// PostgreSQL failed: wait and retry with the same connection to the broker.
    Database(herald_db::Error),
    /// The broker failed: reconnect.
    Broker(herald_queue::Error),
}

impl From<herald_db::Error> for BatchError {
    fn from(error: herald_db::Error) -> Self {
        Self::Database(error)
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for BatchError {
    fn from(error: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        Self::Database(error.into())
    }
}

impl From<diesel::result::Error> for BatchError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Database(error.into())
    }
}

impl Application {
    /// Prepares the pool and binds the Prometheus endpoint; nothing connects until
    /// `run_until_stopped`.
    pub fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool =
            herald_db::build_pool(&settings.database).context("building the database pool")?;
        let metrics = herald_service::ServiceMetrics::new(&settings.telemetry, SERVICE_NAME)
            .context("starting metrics")?;
        let instruments = Instruments::new(metrics.metrics());
        let vacuum = OutboxVacuum::new(settings.relay.vacuum_after);
        Ok(Self {
            settings,
            pool,
            clock: std::sync::Arc::new(herald_domain::SystemClock),
            metrics,
            instruments,
            vacuum,
        })
    }

    /// Where Prometheus metrics are served, when `telemetry.prometheus_listen` is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.local_addr()
    }

    /// Decides which scheduled rows are due, and which personal data retention clears, with
    /// `clock` (tests inject a manual one).
    #[must_use]
    pub fn with_clock(mut self, clock: herald_domain::SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Publishes the outbox until `shutdown` is cancelled. A batch in flight is finished
    /// (published and committed) before returning.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // The broker connection held, as the readiness check sees it.
        let link = herald_queue::BrokerLink::default();
        let readiness = herald_db::readiness(&self.pool).with_state("rabbitmq", {
            let link = link.clone();
            move || link.is_connected()
        });
        self.metrics.serve(&shutdown, readiness);
        let jobs = self.spawn_jobs(&shutdown);
        let wakers: Vec<Arc<Notify>> = (0..self.settings.relay.publishers.max(1))
            .map(|_| Arc::new(Notify::new()))
            .collect();
        tokio::spawn(listen_for_submits(
            herald_db::Connector::new(&self.settings.database)?,
            wakers.clone(),
            shutdown.clone(),
        ));
        let mut reconnect = herald_service::Backoff::new(
            self.settings.amqp.reconnect_min,
            self.settings.amqp.reconnect_max,
        );
        while !shutdown.is_cancelled() {
            match self.connect().await {
                Ok((connection, publisher)) => {
                    reconnect.reset();
                    link.hold(&connection);
                    tracing::info!("Relay connected to RabbitMQ.");
                    // Every publisher stops at the first broker error, at shutdown, or when the
                    // connection reports an error while they are idle; then it reconnects.
                    let stop = shutdown.child_token();
                    tokio::spawn(herald_queue::cancel_when_lost(&connection, stop.clone()));
                    let errors = futures::future::join_all(wakers.iter().map(|wake| async {
                        let error = self.publish_until_error(&publisher, wake, &stop).await;
                        stop.cancel();
                        error
                    }))
                    .await;
                    link.release();
                    // Best effort: the connection may already be gone.
                    let _closed = connection.close(200, "relay reconnecting".into()).await;
                    if shutdown.is_cancelled() {
                        break;
                    }
                    let error = errors
                        .into_iter()
                        .flatten()
                        .next()
                        .map(|error| error.to_string());
                    tracing::warn!(
                        error = error.as_deref().unwrap_or("connection lost"),
                        "Relay lost RabbitMQ; reconnecting."
                    );
                }
                Err(error) => {
                    tracing::warn!(error = %error, "Relay cannot reach RabbitMQ.");
                }
            }
            let pause = reconnect.next_delay();
            tracing::info!(
                retry_in_ms = pause.as_millis() as u64,
                "Relay reconnecting to RabbitMQ."
            );
            if !herald_service::sleep_unless_shutdown(pause, &shutdown).await {
                break;
            }
        }
        for job in jobs {
            let _stopped = job.await;
        }
        tracing::info!("Relay stopped.");
        Ok(())
    }

    /// Starts the jobs beside publishing, each until `shutdown`: the idempotency-key cleanup,
    /// retention and the reconciler (the last two when enabled).
    fn spawn_jobs(&self, shutdown: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let mut jobs = vec![tokio::spawn(clean_up_expired_keys(
            self.pool.clone(),
            self.settings.relay.cleanup_interval,
            shutdown.clone(),
        ))];
        if self.settings.retention.enabled() {
            let job = retention::Retention::new(
                self.pool.clone(),
                self.clock.clone(),
                self.settings.retention.clone(),
                self.metrics.metrics(),
            );
            jobs.push(tokio::spawn(job.run(shutdown.clone())));
        }
        if self.settings.reconcile.enabled() {
            let job = reconcile::Reconciler::new(
                self.pool.clone(),
                &self.settings,
                self.metrics.metrics(),
            );
            jobs.push(tokio::spawn(job.run(shutdown.clone())));
        }
        jobs
    }

    async fn connect(
        &self,
    ) -> Result<(herald_queue::lapin::Connection, Publisher), herald_queue::Error> {
        let connection = herald_queue::connect_with(&self.settings.amqp, SERVICE_NAME).await?;
        let publisher = Publisher::new(&connection).await?;
        herald_queue::declare_topology(publisher.channel()).await?;
        Ok((connection, publisher))
    }

    /// Publishes batches until shutdown (`None`) or a broker error (`Some`); sleeps after a
    /// batch that was not full until `wake` (a submit committed) or the poll interval.
    async fn publish_until_error(
        &self,
        publisher: &Publisher,
        wake: &Notify,
        shutdown: &CancellationToken,
    ) -> Option<herald_queue::Error> {
        let mut database_retry =
            herald_service::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            let (pause, busy) = match self.publish_batch(publisher).await {
                Ok(published) => {
                    database_retry.reset();
                    self.vacuum.count(published, &self.pool);
                    if published as i64 >= self.settings.relay.batch_size {
                        continue;
                    }
                    (self.settings.relay.poll_interval, published > 0)
                }
                Err(BatchError::Broker(error)) => return Some(error),
                Err(BatchError::Database(error)) => {
                    let delay = database_retry.next_delay();
                    tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "Relay cannot read the outbox.");
                    (delay, false)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
            if busy
                && !self.settings.relay.linger.is_zero()
                && !herald_service::sleep_unless_shutdown(self.settings.relay.linger, shutdown)
                    .await
            {
                return None;
            }
        }
    }

    /// Publishes one batch in one transaction; returns how many rows were confirmed.
    async fn publish_batch(&self, publisher: &Publisher) -> Result<usize, BatchError> {
        use diesel_async::AsyncConnection as _;
        let mut connection = self.pool.get().await?;
        let batch_size = self.settings.relay.batch_size;
        let (published, broker_error) = connection
            .transaction::<_, BatchError, _>(async |connection| {
                let rows =
                    outbox::lock_unpublished(connection, self.clock.now(), batch_size).await?;
                if rows.is_empty() {
                    return Ok((0, None));
                }
                let published = publish::publish_all(
                    publisher,
                    &rows,
                    self.settings.relay.message_max,
                    &self.instruments,
                )
                .await;
                let mut confirmed = Vec::new();
                let mut failed = Vec::new();
                for (row, &ok) in rows.iter().zip(&published.confirmed) {
                    if ok {
                        confirmed.push(row)
                    } else {
                        failed.push(row)
                    }
                }
                let first_error = published.first_error;
                outbox::mark_published(connection, &confirmed).await?;
                if let Some(error) = &first_error {
                    outbox::record_publish_failure(connection, &failed, &error.to_string()).await?;
                }
                Ok((confirmed.len(), first_error))
            })
            .await?;
        if published > 0 {
            tracing::debug!(published, "Outbox batch published.");
        }
        match broker_error {
            Some(error) => Err(BatchError::Broker(error)),
            None => Ok(published),
        }
    }
}

/// Listens for committed submits (`NOTIFY herald_outbox:<schema>`) and wakes every
/// publisher; reconnects when the connection is lost (the poll interval covers the gap).
async fn listen_for_submits(
    connector: herald_db::Connector,
    wakers: Vec<Arc<Notify>>,
    shutdown: CancellationToken,
) {
    use herald_db::listen::Heard;
    herald_db::listen::follow(
        &connector,
        outbox::RELAY_CHANNEL_PREFIX,
        shutdown,
        |heard| match heard {
            // Rows committed while nobody listened are found by the pass this wakes.
            Heard::Listening | Heard::Notified(_) => {
                wakers.iter().for_each(|wake| wake.notify_one());
            }
            Heard::Deaf(error) => {
                tracing::warn!(error = %error, "Relay cannot listen for submits; polling until it can.");
            }
        },
    )
    .await;
}

/// Deletes expired idempotency-key bindings every `interval` until `shutdown`. Expired keys are
/// already ignored and replaced by submits; this only keeps the table small.
async fn clean_up_expired_keys(
    pool: herald_db::Pool,
    interval: Duration,
    shutdown: CancellationToken,
) {
    while herald_service::sleep_unless_shutdown(interval, &shutdown).await {
        let deleted = async {
            let mut connection = herald_db::connection(&pool).await?;
            herald_db::notifications::delete_expired_idempotency_keys(
                &mut connection,
                chrono::Utc::now(),
                10_000,
            )
            .await
        }
        .await;
        match deleted {
            Ok(0) => {}
            Ok(count) => tracing::info!(deleted = count, "Expired idempotency keys deleted."),
            Err(error) => {
                tracing::warn!(error = %error, "Could not delete expired idempotency keys.")
            }
        }
    }
}
