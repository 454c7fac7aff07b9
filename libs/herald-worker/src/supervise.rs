//! Supervision: the `Worker` a service builds and runs, its RabbitMQ connection (connect,
//! declare, consume, reconnect with backoff), the emergency path, and the drain at shutdown.
//! Consumed messages go into the attempt pipeline (`pipeline`); this module never touches a
//! delivery itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use herald_config::AmqpSettings;
use herald_domain::{DeliveryId, Priority};
use herald_proto::queue::DeliveryMessage;
use herald_queue::Publisher;
use herald_queue::lapin::message::Delivery;
use herald_queue::lapin::options::{BasicConsumeOptions, BasicQosOptions};
use herald_queue::lapin::types::FieldTable;
use opentelemetry::KeyValue;
use tokio_util::sync::CancellationToken;

use crate::core::Core;
use crate::instruments::Instruments;
use crate::pipeline::{Job, Origin, Pipeline};
use crate::settle::{Carrier, QueueMessage, Session};
use crate::templates::TemplateCache;
use crate::{ChannelProvider, WorkerSettings};

/// A channel worker: consumes its channel's queue and delivers through `P`.
pub struct Worker<P> {
    core: Core<P>,
    /// Set by `with_telemetry`: the meter provider `core` records into, and its endpoint.
    service_metrics: Option<herald_service::ServiceMetrics>,
}

impl<P: ChannelProvider> Worker<P> {
    /// A worker for `provider`'s channel. Nothing connects until `run_until_stopped`.
    pub fn new(
        provider: P,
        settings: WorkerSettings,
        amqp: AmqpSettings,
        pool: herald_db::Pool,
        service_name: &'static str,
    ) -> Self {
        let metrics = herald_telemetry::Metrics::local(service_name);
        Self {
            service_metrics: None,
            core: Core {
                instruments: Instruments::new(&metrics),
                metrics,
                provider,
                settings,
                amqp,
                pool,
                service_name,
                limiter: None,
                policy: herald_config::PolicySettings::default(),
                clock: Arc::new(herald_domain::SystemClock),
                templates: TemplateCache::default(),
            },
        }
    }

    /// Enforces rate limits before every provider call.
    #[must_use]
    pub fn with_rate_limiter(mut self, limiter: crate::RateLimiter) -> Self {
        self.core.limiter = Some(limiter);
        self
    }

    /// Weighs categories and priorities against user preferences with `policy`.
    #[must_use]
    pub fn with_policy(mut self, policy: herald_config::PolicySettings) -> Self {
        self.core.policy = policy;
        self
    }

    /// Records queue, settlement, provider and circuit figures as `telemetry` says: pushed
    /// over OTLP when an endpoint is set, and served on `telemetry.prometheus_listen` (bound
    /// now) while the worker runs. Without it they go to a registry nobody reads.
    pub fn with_telemetry(
        mut self,
        telemetry: &herald_config::TelemetrySettings,
    ) -> Result<Self, herald_telemetry::Error> {
        let service_metrics =
            herald_service::ServiceMetrics::new(telemetry, self.core.service_name)?;
        self.core.instruments = Instruments::new(service_metrics.metrics());
        self.core.metrics = service_metrics.metrics().clone();
        self.service_metrics = Some(service_metrics);
        Ok(self)
    }

    /// Where Prometheus metrics are served, when `telemetry.prometheus_listen` is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.service_metrics
            .as_ref()
            .and_then(herald_service::ServiceMetrics::local_addr)
    }

    /// Reads quiet hours against `clock` (tests inject a manual one).
    #[must_use]
    pub fn with_clock(mut self, clock: herald_domain::SharedClock) -> Self {
        self.core.clock = clock;
        self
    }

    /// Consumes until `shutdown` is cancelled, reconnecting to RabbitMQ with backoff whenever
    /// the connection fails. In-flight deliveries finish (within the grace period) before it
    /// returns.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) {
        // The broker connection of the session consuming, as the readiness check sees it.
        let link = herald_queue::BrokerLink::default();
        if let Some(service_metrics) = &mut self.service_metrics {
            let readiness = herald_db::readiness(&self.core.pool).with_state("rabbitmq", {
                let link = link.clone();
                move || link.is_connected()
            });
            service_metrics.serve(&shutdown, readiness);
        }
        let core = Arc::new(self.core);
        let _circuits = observe_circuits(&core);
        // Dropping this future (a killed worker) stops every task it started.
        let killed = CancellationToken::new();
        let _kill_on_drop = killed.clone().drop_guard();
        let pipeline = Pipeline::start(Arc::clone(&core), shutdown.clone(), killed.clone());
        let emergency = tokio::spawn({
            let emergency =
                emergency_path(Arc::clone(&core), Arc::clone(&pipeline), shutdown.clone());
            async move {
                tokio::select! {
                    () = killed.cancelled() => {}
                    () = emergency => {}
                }
            }
        });
        let amqp = &core.amqp;
        let mut reconnect = herald_service::Backoff::new(amqp.reconnect_min, amqp.reconnect_max);
        while !shutdown.is_cancelled() {
            let consuming = AtomicBool::new(false);
            let outcome = session(&core, &pipeline, &shutdown, &consuming, &link).await;
            link.release();
            match outcome {
                Ok(()) => break,
                Err(error) => {
                    if consuming.load(Ordering::Relaxed) {
                        // It was a working connection: start the pauses over.
                        reconnect.reset();
                    }
                    let pause = reconnect.next_delay();
                    tracing::warn!(
                        error = %error,
                        channel = %core.provider.channel(),
                        retry_in_ms = pause.as_millis() as u64,
                        "Worker lost RabbitMQ; reconnecting."
                    );
                    if !herald_service::sleep_unless_shutdown(pause, &shutdown).await {
                        break;
                    }
                }
            }
        }
        if !pipeline.drain().await {
            tracing::warn!(
                "In-flight deliveries did not finish within the grace period; their messages will be redelivered."
            );
        }
        let _stopped = emergency.await;
        tracing::info!(channel = %core.provider.channel(), "Worker stopped.");
    }
}

/// Reports each provider's circuit state (0 closed, 1 half-open, 2 open) as the
/// `herald.provider.circuit.state` gauge while the worker lives.
fn observe_circuits<P: ChannelProvider>(
    core: &Arc<Core<P>>,
) -> opentelemetry::metrics::ObservableGauge<i64> {
    let weak = Arc::downgrade(core);
    core.metrics
        .meter()
        .i64_observable_gauge("herald.provider.circuit.state")
        .with_description("Circuit breaker state per provider: 0 closed, 1 half-open, 2 open")
        .with_callback(move |observer| {
            let Some(core) = weak.upgrade() else {
                return;
            };
            let channel = core.provider.channel();
            for (provider, state) in core.provider.circuit_states() {
                observer.observe(
                    state.as_gauge(),
                    &[
                        KeyValue::new("herald.channel", channel.as_str()),
                        KeyValue::new("herald.provider", provider),
                    ],
                );
            }
        })
        .build()
}

/// One connection's life: consumes into the pipeline until the broker fails (`Err`) or the
/// worker stops (`Ok`, after the deliveries in flight were settled on this connection).
/// Sets `consuming` once it consumes: a failure after that was a working connection's.
async fn session<P: ChannelProvider>(
    core: &Arc<Core<P>>,
    pipeline: &Arc<Pipeline<P>>,
    shutdown: &CancellationToken,
    consuming: &AtomicBool,
    link: &herald_queue::BrokerLink,
) -> Result<(), herald_queue::Error> {
    let channel_kind = core.provider.channel();
    let connection = herald_queue::connect_with(&core.amqp, core.service_name).await?;
    let channel = connection.create_channel().await?;
    herald_queue::declare_topology(&channel).await?;
    let publisher = Publisher::new(&connection).await?;
    herald_queue::declare_retry_topology(
        publisher.channel(),
        channel_kind,
        &core.settings.retry_queue_delays(),
    )
    .await?;
    channel
        .basic_qos(core.settings.prefetch, BasicQosOptions::default())
        .await?;
    let queue = herald_queue::work_queue(channel_kind);
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            core.service_name.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let closed = shutdown.child_token();
    let (session, settler) = Session::start(channel_kind, publisher, closed.clone());
    tracing::info!(
        queue = %queue,
        prefetch = core.settings.prefetch,
        concurrency = core.settings.concurrency,
        "Worker consuming."
    );
    consuming.store(true, Ordering::Relaxed);
    link.hold(&connection);
    let result = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => take_in(core, pipeline, &session, delivery, &queue),
                Some(Err(error)) => break Err(error.into()),
                None => break Err(herald_queue::Error::Amqp(herald_queue::lapin::Error::from(
                    herald_queue::lapin::ErrorKind::InvalidConnectionState(
                        herald_queue::lapin::ConnectionState::Closed,
                    ),
                ))),
            },
        }
    };
    // Messages of this connection still waiting for a claim are returned by the broker.
    closed.cancel();
    pipeline.forget_closed();
    drop(session);
    if result.is_ok() {
        // Let the deliveries in flight settle on this channel before closing it.
        pipeline.drain().await;
        let _settled = tokio::time::timeout(core.settings.shutdown_grace_period, settler).await;
        let _closed = connection.close(200, "worker shutting down".into()).await;
    }
    result
}

/// Takes one consumed message into the pipeline, a job per delivery it carries (or
/// dead-letters it when it is neither a `DeliveryMessage` nor a `DeliveryBatch` of valid
/// deliveries), counting and tracing each.
fn take_in<P: ChannelProvider>(
    core: &Core<P>,
    pipeline: &Pipeline<P>,
    session: &Arc<Session>,
    delivery: Delivery,
    queue: &str,
) {
    session.received(delivery.delivery_tag);
    let deliveries = herald_queue::decode_deliveries(&delivery.properties, &delivery.data)
        .and_then(|messages| {
            messages
                .into_iter()
                .map(|message| Some((message.delivery_id.parse::<DeliveryId>().ok()?, message)))
                .collect::<Option<Vec<_>>>()
        });
    let priority = delivery
        .properties
        .priority()
        .and_then(|number| Priority::from_i16(i16::from(number)).ok())
        .unwrap_or_default();
    let labels = [
        KeyValue::new("messaging.destination.name", queue.to_owned()),
        KeyValue::new("herald.priority", priority.to_string()),
    ];
    let carrier = Carrier::new(
        Arc::clone(session),
        delivery.delivery_tag,
        delivery.acker,
        priority,
        labels,
        deliveries.as_ref().map_or(1, Vec::len),
    );
    let Some(deliveries) = deliveries else {
        let span = consume_span(&delivery.properties, delivery.delivery_tag, None, queue);
        let _entered = span.enter();
        core.instruments.consumed(&carrier.labels, None);
        tracing::error!(
            "Dead-lettering a message that is neither a valid DeliveryMessage nor a valid DeliveryBatch."
        );
        span.record("herald.settlement", "DeadLetter");
        carrier.dead_letter(&core.instruments);
        return;
    };
    for (delivery_id, message) in deliveries {
        let span = consume_span(
            &delivery.properties,
            delivery.delivery_tag,
            Some(&message),
            queue,
        );
        let waited = message
            .enqueued_at
            .and_then(|enqueued_at| herald_proto::conversions::instant(&enqueued_at))
            .and_then(|enqueued_at| (chrono::Utc::now() - enqueued_at).to_std().ok());
        core.instruments.consumed(&carrier.labels, waited);
        pipeline.submit(Job {
            delivery_id,
            priority,
            span,
            origin: Origin::Queue(Box::new(QueueMessage {
                carrier: Arc::clone(&carrier),
                message,
            })),
        });
    }
}

/// Delivers critical notifications that the queue has not brought within
/// `emergency_after`, straight from PostgreSQL, through the same pipeline (claim, records) as
/// the queue path, ahead of everything waiting. When RabbitMQ returns, the relay publishes
/// them and the claim turns the late messages into no-ops.
async fn emergency_path<P: ChannelProvider>(
    core: Arc<Core<P>>,
    pipeline: Arc<Pipeline<P>>,
    shutdown: CancellationToken,
) {
    let channel = core.provider.channel();
    while herald_service::sleep_unless_shutdown(core.settings.emergency_poll_interval, &shutdown)
        .await
    {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(core.settings.emergency_after)
                .unwrap_or(chrono::Duration::MAX);
        let stranded = async {
            let mut connection = herald_db::connection(&core.pool).await?;
            herald_db::deliveries::stranded_critical(&mut connection, channel, cutoff, 50).await
        }
        .await;
        let stranded = match stranded {
            Ok(stranded) => stranded,
            Err(error) => {
                tracing::debug!(error = %error, "Emergency path cannot read PostgreSQL.");
                continue;
            }
        };
        let mut done = Vec::with_capacity(stranded.len());
        for delivery_id in stranded {
            tracing::warn!(delivery.id = %delivery_id, channel = %channel, "Critical delivery stranded outside the queue; delivering it on the emergency path.");
            let span = tracing::info_span!(
                "emergency",
                otel.name = %format_args!("deliver {channel} (emergency path)"),
                herald.delivery.id = %delivery_id,
                herald.attempt = tracing::field::Empty,
            );
            let (finished, waited) = tokio::sync::oneshot::channel();
            pipeline.submit(Job {
                delivery_id,
                priority: Priority::Critical,
                span,
                origin: Origin::Emergency { _done: finished },
            });
            done.push(waited);
        }
        // The next look waits until these are done, so none is submitted twice.
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = futures::future::join_all(done) => {}
        }
    }
}

/// The consumer span of one delivery (OpenTelemetry messaging conventions): a child of the
/// relay's publish span, whose context comes in the AMQP headers (or, for messages published
/// without them, batches among them, in the delivery), linked to the attempt that scheduled it
/// when it is a retry.
fn consume_span(
    properties: &herald_queue::lapin::BasicProperties,
    delivery_tag: u64,
    message: Option<&DeliveryMessage>,
    queue: &str,
) -> tracing::Span {
    let span = tracing::info_span!(
        "consume",
        otel.name = %format_args!("process {queue}"),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.operation.name = "deliver",
        messaging.destination.name = queue,
        messaging.message.id = message.map_or("", |message| message.delivery_id.as_str()),
        messaging.rabbitmq.message.delivery_tag = delivery_tag,
        herald.delivery.id = message.map_or("", |message| message.delivery_id.as_str()),
        herald.notification.id = message.map_or("", |message| message.notification_id.as_str()),
        herald.attempt = tracing::field::Empty,
        herald.settlement = tracing::field::Empty,
    );
    let headers = herald_queue::trace_headers(properties);
    match message {
        Some(message) if headers.is_empty() => {
            herald_telemetry::set_parent_from_map(&span, &message.trace_context);
        }
        _ => herald_telemetry::set_parent_from_map(&span, &headers),
    }
    if let Some(message) = message {
        herald_telemetry::link_to(&span, &message.previous_attempt);
    }
    span
}
