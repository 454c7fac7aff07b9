//! What a worker measures, per queue and priority and per channel and provider.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

/// How a consumed message was settled, for `herald.queue.settlements`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Settled {
    /// Acknowledged: done.
    Ack,
    /// Negatively acknowledged and put back (PostgreSQL away, leased elsewhere).
    Requeue,
    /// Published to a delay queue, then acknowledged.
    Retry,
    /// Rejected into the dead-letter queue.
    DeadLetter,
}

impl Settled {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::Requeue => "nack",
            Self::Retry => "retry",
            Self::DeadLetter => "dead_letter",
        }
    }
}

/// The worker's instruments.
#[derive(Clone)]
pub(crate) struct Instruments {
    consumed: Counter<u64>,
    wait: Histogram<f64>,
    settlements: Counter<u64>,
    processing: Histogram<f64>,
    provider_duration: Histogram<f64>,
    outcomes: Counter<u64>,
    held: Counter<u64>,
}

impl Instruments {
    pub(crate) fn new(metrics: &herald_telemetry::Metrics) -> Self {
        let meter = metrics.meter();
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(herald_telemetry::LATENCY_BUCKETS.to_vec())
                .build()
        };
        Self {
            consumed: meter
                .u64_counter("herald.queue.consumed")
                .with_description("Messages taken off a work queue, by queue and priority")
                .build(),
            wait: seconds(
                "herald.queue.wait.duration",
                "Time from enqueue (relay publish, or a retry's return from its delay queue) to consume, by queue and priority",
            ),
            settlements: meter
                .u64_counter("herald.queue.settlements")
                .with_description(
                    "How consumed messages were settled: ack, nack, retry, dead_letter",
                )
                .build(),
            processing: seconds(
                "herald.queue.processing.duration",
                "Time from consume to settlement, by queue and priority",
            ),
            provider_duration: seconds(
                "herald.delivery.provider.duration",
                "Provider call latency, by channel, provider and outcome",
            ),
            outcomes: meter
                .u64_counter("herald.delivery.attempts")
                .with_description(
                    "Delivery attempts that reached a provider, by channel, provider and outcome",
                )
                .build(),
            held: meter
                .u64_counter("herald.delivery.held")
                .with_description(
                    "Deliveries left unknown for an operator (the channel's unknown-outcome policy is hold), by channel and reason",
                )
                .build(),
        }
    }

    pub(crate) fn consumed(&self, queue: &[KeyValue], waited: Option<std::time::Duration>) {
        self.consumed.add(1, queue);
        if let Some(waited) = waited {
            self.wait.record(waited.as_secs_f64(), queue);
        }
    }

    pub(crate) fn settled(&self, queue: &[KeyValue], settled: Settled, took: std::time::Duration) {
        let mut attributes = queue.to_vec();
        attributes.push(KeyValue::new("herald.settlement", settled.as_str()));
        self.settlements.add(1, &attributes);
        self.processing.record(took.as_secs_f64(), queue);
    }

    pub(crate) fn provider_call(
        &self,
        channel: herald_domain::Channel,
        provider: &str,
        outcome: &'static str,
        took: std::time::Duration,
    ) {
        let attributes = [
            KeyValue::new("herald.channel", channel.as_str()),
            KeyValue::new("herald.provider", provider.to_owned()),
            KeyValue::new("herald.outcome", outcome),
        ];
        self.provider_duration
            .record(took.as_secs_f64(), &attributes);
        self.outcomes.add(1, &attributes);
    }

    /// A delivery left `unknown` under the `hold` policy: one `error` line (an operator must
    /// check with the provider, then replay or discard it) and `herald.delivery.held`, by
    /// channel and reason (`unknown_outcome`: the provider's answer was lost;
    /// `lease_expired`: a takeover of an attempt whose worker vanished).
    pub(crate) fn held(
        &self,
        channel: herald_domain::Channel,
        delivery_id: herald_domain::DeliveryId,
        attempt: i32,
        provider_called: bool,
    ) {
        let reason = if provider_called {
            "unknown_outcome"
        } else {
            "lease_expired"
        };
        tracing::error!(
            delivery.id = %delivery_id,
            channel = %channel,
            attempt,
            reason,
            "Delivery held with an unknown outcome; check with the provider, then replay or discard it."
        );
        self.held.add(
            1,
            &[
                KeyValue::new("herald.channel", channel.as_str()),
                KeyValue::new("herald.reason", reason),
            ],
        );
    }
}
