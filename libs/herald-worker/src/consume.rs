//! The consume loop: connection supervision, per-message handling and settlement.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use herald_config::AmqpSettings;
use herald_db::deliveries::{self, Claim, ClaimOutcome, FailureClass, Outcome};
use herald_domain::{Channel, DeliveryId, Priority};
use herald_proto::queue::DeliveryMessage;
use herald_queue::Publisher;
use herald_queue::lapin::message::Delivery;
use herald_queue::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use herald_queue::lapin::types::FieldTable;
use opentelemetry::KeyValue;
use prost::Message as _;
use secrecy::ExposeSecret;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::instruments::{Instruments, Settled};
use crate::{ChannelProvider, DeliveryError, WorkerSettings};

/// Put one message back on its queue.
const REQUEUE: BasicNackOptions = BasicNackOptions {
    requeue: true,
    multiple: false,
};

/// Pause before requeueing a message whose delivery could not be read or written because
/// PostgreSQL was unavailable.
const DATABASE_RETRY_DELAY: Duration = Duration::from_secs(1);

/// A channel worker: consumes its channel's queue and delivers through `P`.
pub struct Worker<P> {
    inner: Inner<P>,
    metrics_endpoint: Option<herald_telemetry::MetricsEndpoint>,
}

struct Inner<P> {
    provider: P,
    settings: WorkerSettings,
    amqp: AmqpSettings,
    pool: herald_db::Pool,
    service_name: &'static str,
    limiter: Option<crate::RateLimiter>,
    policy: herald_config::PolicySettings,
    clock: herald_domain::SharedClock,
    metrics: herald_telemetry::Metrics,
    instruments: Instruments,
}

/// What preparing an attempt found.
enum Prepared {
    /// Go ahead and call the provider with this context.
    Send(Box<deliveries::DeliveryContext>),
    /// Already settled without a provider call (preferences, rate limit).
    Settled(Settlement),
}

/// How a message is settled once its delivery was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settlement {
    /// Done with the message.
    Ack,
    /// Reject without requeue: the broker moves it to the channel's dead-letter queue.
    DeadLetter,
    /// Publish a copy to the delay queue for this long, then ack the original.
    Retry(Duration),
    /// Put the message back after this pause (PostgreSQL away, delivery leased elsewhere).
    RequeueAfter(Duration),
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
            metrics_endpoint: None,
            inner: Inner {
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
            },
        }
    }

    /// Enforces rate limits before every provider call.
    #[must_use]
    pub fn with_rate_limiter(mut self, limiter: crate::RateLimiter) -> Self {
        self.inner.limiter = Some(limiter);
        self
    }

    /// Weighs categories and priorities against user preferences with `policy`.
    #[must_use]
    pub fn with_policy(mut self, policy: herald_config::PolicySettings) -> Self {
        self.inner.policy = policy;
        self
    }

    /// Records queue, settlement, provider and circuit figures as `telemetry` says: pushed
    /// over OTLP when an endpoint is set, and served on `telemetry.prometheus_listen` (bound
    /// now) while the worker runs. Without it they go to a registry nobody reads.
    pub fn with_telemetry(
        mut self,
        telemetry: &herald_config::TelemetrySettings,
    ) -> Result<Self, herald_telemetry::Error> {
        let metrics = herald_telemetry::Metrics::new(telemetry, self.inner.service_name)?;
        self.metrics_endpoint = herald_telemetry::MetricsEndpoint::bind_configured(telemetry)?;
        self.inner.instruments = Instruments::new(&metrics);
        self.inner.metrics = metrics;
        Ok(self)
    }

    /// Where Prometheus metrics are served, when `telemetry.prometheus_listen` is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_endpoint
            .as_ref()
            .map(herald_telemetry::MetricsEndpoint::local_addr)
    }

    /// Reads quiet hours against `clock` (tests inject a manual one).
    #[must_use]
    pub fn with_clock(mut self, clock: herald_domain::SharedClock) -> Self {
        self.inner.clock = clock;
        self
    }

    /// Consumes until `shutdown` is cancelled, reconnecting to RabbitMQ with backoff whenever
    /// the connection fails. In-flight deliveries finish (within the grace period) before it
    /// returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        if let Some(endpoint) = self.metrics_endpoint {
            tokio::spawn(endpoint.serve(self.inner.metrics.clone(), shutdown.clone()));
        }
        let inner = Arc::new(self.inner);
        let _circuits = Inner::observe_circuits(&inner);
        let emergency = tokio::spawn(Arc::clone(&inner).emergency_path(shutdown.clone()));
        let amqp = &inner.amqp;
        let mut reconnect_delay = amqp.reconnect_min;
        let mut in_flight = JoinSet::new();
        while !shutdown.is_cancelled() {
            match inner.consume(&shutdown, &mut in_flight).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(
                        error = %error,
                        channel = %inner.provider.channel(),
                        retry_in_ms = reconnect_delay.as_millis() as u64,
                        "Worker lost RabbitMQ; reconnecting."
                    );
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(reconnect_delay) => {}
            }
            reconnect_delay = (reconnect_delay * 2).min(amqp.reconnect_max);
        }
        let drained = tokio::time::timeout(inner.settings.shutdown_grace_period, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "In-flight deliveries did not finish within the grace period; their messages will be redelivered."
            );
        }
        let _stopped = emergency.await;
        tracing::info!(channel = %inner.provider.channel(), "Worker stopped.");
    }
}

impl<P: ChannelProvider> Inner<P> {
    /// Reports each provider's circuit state (0 closed, 1 half-open, 2 open) as the
    /// `herald.provider.circuit.state` gauge while the worker lives.
    fn observe_circuits(inner: &Arc<Self>) -> opentelemetry::metrics::ObservableGauge<i64> {
        let weak = Arc::downgrade(inner);
        inner
            .metrics
            .meter()
            .i64_observable_gauge("herald.provider.circuit.state")
            .with_description("Circuit breaker state per provider: 0 closed, 1 half-open, 2 open")
            .with_callback(move |observer| {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let channel = inner.provider.channel();
                for (provider, state) in inner.provider.circuit_states() {
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

    /// One connection's life: returns `Ok` on shutdown, `Err` when the broker fails.
    async fn consume(
        self: &Arc<Self>,
        shutdown: &CancellationToken,
        in_flight: &mut JoinSet<()>,
    ) -> Result<(), herald_queue::Error> {
        let channel_kind = self.provider.channel();
        let connection =
            herald_queue::connect(self.amqp.url.expose_secret(), self.service_name).await?;
        let channel = connection.create_channel().await?;
        herald_queue::declare_topology(&channel).await?;
        let publisher = Publisher::new(&connection).await?;
        herald_queue::declare_retry_topology(
            publisher.channel(),
            channel_kind,
            &self.settings.retry_queue_delays(),
        )
        .await?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await?;
        let queue = herald_queue::work_queue(channel_kind);
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                self.service_name.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %queue, prefetch = self.settings.prefetch, "Worker consuming.");
        let result = loop {
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                // Reap finished tasks so the set does not grow without bound.
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let inner = Arc::clone(self);
                        let publisher = publisher.clone();
                        in_flight.spawn(async move { inner.handle(delivery, &publisher).await });
                    }
                    Some(Err(error)) => break Err(error.into()),
                    None => break Err(herald_queue::Error::Amqp(herald_queue::lapin::Error::from(
                        herald_queue::lapin::ErrorKind::InvalidConnectionState(
                            herald_queue::lapin::ConnectionState::Closed,
                        ),
                    ))),
                },
            }
        };
        if result.is_ok() {
            // Let in-flight deliveries settle on this channel before closing it.
            let _drained = tokio::time::timeout(self.settings.shutdown_grace_period, async {
                while in_flight.join_next().await.is_some() {}
            })
            .await;
            let _closed = connection.close(200, "worker shutting down".into()).await;
        }
        result
    }

    /// Delivers critical notifications that the queue has not brought within
    /// `emergency_after`, straight from PostgreSQL, through the same claim and records as the
    /// queue path. When RabbitMQ returns, the relay publishes them and the claim turns the
    /// late messages into no-ops.
    async fn emergency_path(self: Arc<Self>, shutdown: CancellationToken) {
        let channel = self.provider.channel();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.settings.emergency_poll_interval) => {}
            }
            let cutoff = chrono::Utc::now()
                - chrono::Duration::from_std(self.settings.emergency_after)
                    .unwrap_or(chrono::Duration::MAX);
            let stranded = async {
                let mut connection = herald_db::connection(&self.pool).await?;
                deliveries::stranded_critical(&mut connection, channel, cutoff, 50).await
            }
            .await;
            let stranded = match stranded {
                Ok(stranded) => stranded,
                Err(error) => {
                    tracing::debug!(error = %error, "Emergency path cannot read PostgreSQL.");
                    continue;
                }
            };
            for delivery_id in stranded {
                tracing::warn!(delivery.id = %delivery_id, channel = %channel, "Critical delivery stranded outside the queue; delivering it on the emergency path.");
                let span = tracing::info_span!(
                    "emergency",
                    otel.name = %format_args!("deliver {channel} (emergency path)"),
                    herald.delivery.id = %delivery_id,
                    herald.attempt = tracing::field::Empty,
                );
                if let Err(error) = self.attempt(delivery_id).instrument(span).await {
                    tracing::warn!(delivery.id = %delivery_id, error = %error, "Emergency delivery could not be recorded.");
                }
            }
        }
    }

    async fn handle(&self, delivery: Delivery, publisher: &Publisher) {
        let received = tokio::time::Instant::now();
        let message = DeliveryMessage::decode(delivery.data.as_slice()).ok();
        let priority = delivery
            .properties
            .priority()
            .and_then(|number| Priority::from_i16(i16::from(number)).ok())
            .unwrap_or_default();
        let queue = herald_queue::work_queue(self.provider.channel());
        let span = consume_span(&delivery, message.as_ref(), &queue);
        let queue = [
            KeyValue::new("messaging.destination.name", queue),
            KeyValue::new("herald.priority", priority.to_string()),
        ];
        let waited = message
            .as_ref()
            .and_then(|message| message.enqueued_at)
            .and_then(|enqueued_at| herald_proto::conversions::instant(&enqueued_at))
            .and_then(|enqueued_at| (chrono::Utc::now() - enqueued_at).to_std().ok());
        self.instruments.consumed(&queue, waited);
        let settled = async {
            let settlement = self.process(message.as_ref()).await;
            tracing::Span::current().record("herald.settlement", format!("{settlement:?}"));
            match settlement {
                Settlement::Ack => (
                    Settled::Ack,
                    delivery.acker.ack(BasicAckOptions::default()).await,
                ),
                Settlement::Retry(delay) => {
                    match self
                        .schedule_retry(message.clone().unwrap_or_default(), publisher, priority, delay)
                        .await
                    {
                        Ok(()) => (
                            Settled::Retry,
                            delivery.acker.ack(BasicAckOptions::default()).await,
                        ),
                        Err(error) => {
                            // The delivery is in retry_wait, so putting the message back is
                            // safe; it only comes back sooner than planned.
                            tracing::warn!(error = %error, "Could not schedule a retry; requeueing the message.");
                            (Settled::Requeue, delivery.acker.nack(REQUEUE).await)
                        }
                    }
                }
                Settlement::DeadLetter => (
                    Settled::DeadLetter,
                    delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await,
                ),
                Settlement::RequeueAfter(delay) => {
                    tokio::time::sleep(delay).await;
                    (Settled::Requeue, delivery.acker.nack(REQUEUE).await)
                }
            }
        }
        .instrument(span)
        .await;
        let (settled, outcome) = settled;
        self.instruments
            .settled(&queue, settled, received.elapsed());
        if let Err(error) = outcome {
            // The broker will redeliver; the claim makes the redelivery harmless.
            tracing::warn!(error = %error, "Could not settle a message; it will be redelivered.");
        }
    }

    /// Publishes the message to the delay queue for `delay`, waiting for the confirm. The copy
    /// keeps the trace context of the relay's publish (so the next attempt joins the same
    /// trace) and carries this attempt's, which the next attempt links to.
    async fn schedule_retry(
        &self,
        mut message: DeliveryMessage,
        publisher: &Publisher,
        priority: Priority,
        delay: Duration,
    ) -> Result<(), herald_queue::Error> {
        message.previous_attempt = herald_telemetry::current_context_map();
        // The copy reaches the work queue when the delay queue's TTL lets it go: its queue
        // wait counts from then, not from now (the backoff is not time spent waiting for a
        // worker, and would swamp `herald.queue.wait.duration`).
        let back_in_queue =
            chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        message.enqueued_at = Some(herald_proto::conversions::timestamp(back_in_queue));
        publisher
            .publish_retry(&message, self.provider.channel(), priority, delay)
            .await?
            .wait()
            .await
    }

    /// Handles one message and says how to settle it. Every path that returns `Ack` or
    /// `DeadLetter` has committed the delivery's state first.
    async fn process(&self, message: Option<&DeliveryMessage>) -> Settlement {
        let Some(delivery_id) =
            message.and_then(|message| message.delivery_id.parse::<DeliveryId>().ok())
        else {
            tracing::error!("Dead-lettering a message that is not a valid DeliveryMessage.");
            return Settlement::DeadLetter;
        };
        match self.attempt(delivery_id).await {
            Ok(settlement) => settlement,
            Err(error) => {
                tracing::warn!(delivery.id = %delivery_id, error = %error, "Database unavailable; requeueing the message.");
                Settlement::RequeueAfter(DATABASE_RETRY_DELAY)
            }
        }
    }

    async fn attempt(&self, delivery_id: DeliveryId) -> Result<Settlement, herald_db::Error> {
        let mut connection = herald_db::connection(&self.pool).await?;
        let claimed_at = tokio::time::Instant::now();
        let claim = match deliveries::claim(
            &mut connection,
            delivery_id,
            self.settings.lease,
            self.clock.now(),
        )
        .await?
        {
            ClaimOutcome::Claimed(claim) => claim,
            ClaimOutcome::Done => {
                tracing::info!(delivery.id = %delivery_id, "Delivery already handled; skipping the message.");
                return Ok(Settlement::Ack);
            }
            ClaimOutcome::Busy { retry_after } => {
                // Another worker holds the lease. Keep the message until the lease runs out,
                // so a worker that died mid-attempt is taken over rather than forgotten.
                tracing::info!(delivery.id = %delivery_id, "Delivery is leased by another worker; requeueing.");
                return Ok(Settlement::RequeueAfter(
                    retry_after.min(self.settings.lease),
                ));
            }
        };
        tracing::Span::current().record("herald.attempt", claim.attempt);
        let context = match self.prepare(&mut connection, &claim).await {
            Ok(Prepared::Send(context)) => *context,
            Ok(Prepared::Settled(settlement)) => return Ok(settlement),
            Err(error) => {
                // Nothing was sent: give the claim back so the requeued message is not held up
                // by our own lease. If that fails too, the lease expiry is the fallback.
                drop(connection);
                let released = async {
                    let mut connection = herald_db::connection(&self.pool).await?;
                    deliveries::release(&mut connection, &claim).await
                }
                .await;
                if let Err(release_error) = released {
                    tracing::warn!(delivery.id = %delivery_id, error = %release_error, "Could not release a claim; its lease will expire.");
                }
                return Err(error);
            }
        };
        // Do not hold a pooled connection across the provider call.
        drop(connection);
        let call = tracing::info_span!(
            "provider",
            otel.name = %format_args!("deliver {}", context.channel),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            herald.channel = %context.channel,
            herald.provider = tracing::field::Empty,
            herald.outcome = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let called_at = tokio::time::Instant::now();
        let crate::Attempted { provider, result } = self
            .provider
            .deliver(&context)
            .instrument(call.clone())
            .await;
        let outcome_name = match &result {
            Ok(_) => "delivered",
            Err(DeliveryError::Retryable(_)) => "retryable",
            Err(DeliveryError::Permanent(_)) => "permanent",
            Err(DeliveryError::Unknown(_)) => "unknown",
            Err(DeliveryError::AddressInvalid { .. }) => "address_invalid",
        };
        call.record("herald.provider", provider.as_str());
        call.record("herald.outcome", outcome_name);
        if result.is_err() {
            call.record("otel.status_code", "ERROR");
            call.record("error.type", outcome_name);
        }
        drop(call);
        self.instruments.provider_call(
            context.channel,
            &provider,
            outcome_name,
            called_at.elapsed(),
        );
        let invalid_addresses = match &result {
            Ok(receipt) => receipt.invalid_addresses.clone(),
            Err(DeliveryError::AddressInvalid { addresses, .. }) => addresses.clone(),
            Err(_) => Vec::new(),
        };
        let (outcome, settlement) = self.decide(&claim, &provider, result);
        let recorded = self.record(&claim, &outcome, &provider, claimed_at).await?;
        if !recorded {
            tracing::warn!(delivery.id = %delivery_id, attempt = claim.attempt, "Claim was lost before the outcome was recorded.");
            return Ok(Settlement::Ack);
        }
        if !invalid_addresses.is_empty() {
            self.disable_contacts(&context, &provider, &invalid_addresses)
                .await;
        }
        match &outcome {
            Outcome::Delivered { detail } => tracing::info!(
                notification.id = %context.notification_id,
                delivery.id = %delivery_id,
                channel = %context.channel,
                provider = %provider,
                attempt = claim.attempt,
                provider.response = %detail,
                "Delivered."
            ),
            Outcome::Failed { error, class } => tracing::warn!(
                notification.id = %context.notification_id,
                delivery.id = %delivery_id,
                channel = %context.channel,
                provider = %provider,
                attempt = claim.attempt,
                error.class = class.as_str(),
                error = %error,
                "Delivery failed for good."
            ),
            Outcome::Suppressed { reason } | Outcome::Deferred { reason, .. } => tracing::info!(
                delivery.id = %delivery_id,
                reason = %reason,
                "Delivery held back."
            ),
            Outcome::RetryWait { error } => tracing::warn!(
                notification.id = %context.notification_id,
                delivery.id = %delivery_id,
                channel = %context.channel,
                provider = %provider,
                attempt = claim.attempt,
                error = %error,
                "Delivery failed; will retry."
            ),
        }
        Ok(settlement)
    }

    /// Everything between the claim and the provider call: the context, the preferences
    /// re-check and the rate limit.
    async fn prepare(
        &self,
        connection: &mut herald_db::Connection,
        claim: &Claim,
    ) -> Result<Prepared, herald_db::Error> {
        let mut context = deliveries::load_context(connection, claim).await?;
        if let Some(outcome) = self.apply_preferences(connection, &mut context).await? {
            tracing::info!(
                notification.id = %context.notification_id,
                delivery.id = %claim.delivery_id,
                channel = %context.channel,
                outcome = ?outcome,
                "Preferences held the delivery back."
            );
            deliveries::finish(connection, claim, &outcome, None).await?;
            return Ok(Prepared::Settled(Settlement::Ack));
        }
        if let Some(limiter) = &self.limiter
            && let crate::Admission::Suppress(reason) = limiter.admit(&context).await
        {
            tracing::info!(
                notification.id = %context.notification_id,
                delivery.id = %claim.delivery_id,
                channel = %context.channel,
                reason = %reason,
                "Delivery suppressed."
            );
            deliveries::finish(connection, claim, &Outcome::Suppressed { reason }, None).await?;
            return Ok(Prepared::Settled(Settlement::Ack));
        }
        Ok(Prepared::Send(Box::new(context)))
    }

    /// Re-checks the recipient's preferences just before sending (they may have changed since
    /// the submit), resolves the contact point and locale of a user-id recipient, leaves out
    /// disabled addresses, and returns the outcome when the delivery must not be sent now.
    async fn apply_preferences(
        &self,
        connection: &mut herald_db::Connection,
        context: &mut deliveries::DeliveryContext,
    ) -> Result<Option<Outcome>, herald_db::Error> {
        if let Some(user_id) = context.user_id.clone() {
            let stored = herald_db::preferences::get(connection, &user_id).await?;
            if let Some(record) = &stored {
                let overrides = self.policy.overrides(&context.category, context.priority);
                match record.to_domain()?.decide(
                    context.channel,
                    &context.category,
                    overrides,
                    self.clock.now(),
                ) {
                    herald_domain::Verdict::Send => {}
                    herald_domain::Verdict::Suppress(reason) => {
                        return Ok(Some(Outcome::Suppressed { reason }));
                    }
                    herald_domain::Verdict::DeferUntil(until) => {
                        return Ok(Some(Outcome::Deferred {
                            until,
                            reason: format!("quiet_hours: held until {}", until.to_rfc3339()),
                        }));
                    }
                }
                if context.address.is_none() {
                    context.address = match context.channel {
                        Channel::Email => record.email.clone(),
                        Channel::Sms => record.phone.clone(),
                        Channel::Push | Channel::InApp | Channel::Chat => None,
                    };
                }
                if context.channel == Channel::Push {
                    context.device_tokens = record.device_tokens()?;
                }
                if context.locale.is_none() {
                    context.locale = record.locale.clone();
                }
                context.tracking_opt_out = record.tracking_opt_out;
            }
            let missing = match context.channel {
                Channel::Email => context.address.is_none().then_some("email address"),
                Channel::Sms => context.address.is_none().then_some("phone number"),
                Channel::Push => context.device_tokens.is_empty().then_some("device tokens"),
                Channel::InApp | Channel::Chat => None,
            };
            if let Some(missing) = missing {
                return Ok(Some(Outcome::Suppressed {
                    reason: format!("no_address: user {user_id} has no {missing}"),
                }));
            }
        }
        self.leave_out_disabled(connection, context).await
    }

    /// Drops addresses a provider called invalid before: a disabled email address or phone
    /// number suppresses the delivery; disabled device tokens are left out of a push, which is
    /// suppressed only when none is left.
    async fn leave_out_disabled(
        &self,
        connection: &mut herald_db::Connection,
        context: &mut deliveries::DeliveryContext,
    ) -> Result<Option<Outcome>, herald_db::Error> {
        match context.channel {
            Channel::Email | Channel::Sms => {
                let Some(address) = context.address.as_deref() else {
                    return Ok(None);
                };
                let disabled =
                    herald_db::contacts::disabled_among(connection, &[(context.channel, address)])
                        .await?;
                Ok(disabled
                    .into_iter()
                    .next()
                    .map(|(_, _, why)| Outcome::Suppressed {
                        reason: format!(
                            "address_disabled: the {} address was disabled on {} ({})",
                            context.channel,
                            why.disabled_at.format("%Y-%m-%d"),
                            why.reason
                        ),
                    }))
            }
            Channel::Push => {
                let tokens: Vec<(Channel, &str)> = context
                    .device_tokens
                    .iter()
                    .map(|device| (Channel::Push, device.token.as_str()))
                    .collect();
                let disabled: Vec<String> =
                    herald_db::contacts::disabled_among(connection, &tokens)
                        .await?
                        .into_iter()
                        .map(|(_, token, _)| token)
                        .collect();
                context
                    .device_tokens
                    .retain(|device| !disabled.contains(&device.token));
                Ok(context
                    .device_tokens
                    .is_empty()
                    .then(|| Outcome::Suppressed {
                        reason: "address_disabled: every device token of the user was disabled"
                            .into(),
                    }))
            }
            Channel::InApp | Channel::Chat => Ok(None),
        }
    }

    /// Records addresses the provider called invalid so nothing is sent to them again. The
    /// outcome is already recorded; if this write fails the next attempt to the address fails
    /// at the provider again and is recorded then.
    async fn disable_contacts(
        &self,
        context: &deliveries::DeliveryContext,
        provider: &str,
        addresses: &[String],
    ) {
        let disabled = async {
            let mut connection = herald_db::connection(&self.pool).await?;
            herald_db::contacts::disable(
                &mut connection,
                context.channel,
                context.user_id.as_deref(),
                addresses,
                &format!("{provider} reported the address invalid"),
                Some(context.delivery_id),
            )
            .await
        }
        .await;
        match disabled {
            Ok(count) => tracing::info!(
                delivery.id = %context.delivery_id,
                channel = %context.channel,
                provider = %provider,
                disabled = count,
                "Disabled addresses the provider called invalid."
            ),
            Err(error) => tracing::warn!(
                delivery.id = %context.delivery_id,
                error = %error,
                "Could not record addresses the provider called invalid."
            ),
        }
    }

    /// Records the attempt's outcome. The provider has already been called, so if PostgreSQL
    /// is briefly away the write is retried while the lease still protects the claim, rather
    /// than requeueing the message and, after the lease, sending again.
    async fn record(
        &self,
        claim: &Claim,
        outcome: &Outcome,
        provider: &str,
        claimed_at: tokio::time::Instant,
    ) -> Result<bool, herald_db::Error> {
        let give_up_at = claimed_at + self.settings.lease.mul_f64(0.8);
        let mut pause = Duration::from_millis(100);
        loop {
            let result = async {
                let mut connection = herald_db::connection(&self.pool).await?;
                deliveries::finish(&mut connection, claim, outcome, Some(provider)).await
            }
            .await;
            match result {
                Err(error)
                    if error.is_unavailable()
                        && tokio::time::Instant::now() + pause < give_up_at =>
                {
                    tracing::warn!(delivery.id = %claim.delivery_id, error = %error, "Cannot record an outcome yet; retrying while the lease holds.");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    fn decide(
        &self,
        claim: &Claim,
        provider: &str,
        result: Result<crate::Receipt, DeliveryError>,
    ) -> (Outcome, Settlement) {
        match result {
            Ok(receipt) => (
                Outcome::Delivered {
                    detail: format!("{provider}: {}", receipt.detail),
                },
                Settlement::Ack,
            ),
            Err(DeliveryError::Permanent(error)) => (
                Outcome::Failed {
                    error,
                    class: FailureClass::Permanent,
                },
                Settlement::DeadLetter,
            ),
            Err(DeliveryError::AddressInvalid { detail, .. }) => (
                Outcome::Failed {
                    error: format!("address_invalid: {detail}"),
                    class: FailureClass::Permanent,
                },
                Settlement::DeadLetter,
            ),
            Err(DeliveryError::Unknown(error)) => (
                Outcome::Failed {
                    error,
                    class: FailureClass::Unknown,
                },
                Settlement::DeadLetter,
            ),
            Err(DeliveryError::Retryable(error)) => {
                let cycle_attempt = u32::try_from(claim.cycle_attempt).unwrap_or(u32::MAX);
                if cycle_attempt >= self.settings.max_attempts {
                    (
                        Outcome::Failed {
                            error: format!("gave up after {cycle_attempt} attempts: {error}"),
                            class: FailureClass::Exhausted,
                        },
                        Settlement::DeadLetter,
                    )
                } else {
                    (
                        Outcome::RetryWait { error },
                        Settlement::Retry(self.settings.retry_delay(cycle_attempt)),
                    )
                }
            }
        }
    }
}

/// The consumer span of one message (OpenTelemetry messaging conventions): a child of the
/// relay's publish span, whose context comes in the AMQP headers (or, for messages published
/// without them, in the body), linked to the attempt that scheduled it when it is a retry.
fn consume_span(
    delivery: &Delivery,
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
        messaging.rabbitmq.message.delivery_tag = delivery.delivery_tag,
        herald.delivery.id = message.map_or("", |message| message.delivery_id.as_str()),
        herald.notification.id = message.map_or("", |message| message.notification_id.as_str()),
        herald.attempt = tracing::field::Empty,
        herald.settlement = tracing::field::Empty,
    );
    let headers = herald_queue::trace_headers(&delivery.properties);
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
