//! Publishing one batch of outbox rows. The rows of one channel and priority travel together,
//! up to `relay.message_max` deliveries per queue message (a `DeliveryBatch`; a lone row is a
//! plain `DeliveryMessage`). Every message is started before any confirm is awaited, so a
//! batch costs one round trip, and each row takes the outcome of its message's confirm. Each
//! row gets a producer span, a child of its Submit call's span, whose context travels with its
//! delivery in the message.

use std::collections::HashMap;

use herald_db::outbox::OutboxRow;
use herald_domain::{Channel, Priority};
use herald_proto::queue::DeliveryMessage;
use herald_queue::Publisher;
use opentelemetry::KeyValue;

use crate::Instruments;

/// What became of a batch's rows: whether each (in `rows` order) was confirmed, and the
/// first error of those that were not.
pub(crate) struct Published {
    pub(crate) confirmed: Vec<bool>,
    pub(crate) first_error: Option<herald_queue::Error>,
}

/// Publishes `rows` in messages of at most `message_max` deliveries of one channel and
/// priority, and waits for every confirm.
pub(crate) async fn publish_all(
    publisher: &Publisher,
    rows: &[OutboxRow],
    message_max: usize,
    instruments: &Instruments,
) -> Published {
    let mut pending = Vec::new();
    for group in group(rows, message_max.max(1)) {
        let spans: Vec<tracing::Span> = group
            .iter()
            .map(|&index| publish_span(&rows[index]))
            .collect();
        let messages: Vec<DeliveryMessage> = group
            .iter()
            .zip(&spans)
            .map(|(&index, span)| span.in_scope(|| message(&rows[index])))
            .collect();
        let first = &rows[group[0]];
        let started = publisher
            .publish_many(&messages, first.channel, first.priority)
            .await;
        pending.push((group, spans, started));
    }
    let outcomes = futures::future::join_all(pending.into_iter().map(
        |(group, spans, started)| async move {
            let confirmed = match started {
                Ok(pending) => pending.wait().await,
                Err(error) => Err(error),
            };
            (group, spans, confirmed)
        },
    ))
    .await;
    let mut published = Published {
        confirmed: vec![false; rows.len()],
        first_error: None,
    };
    for (group, spans, confirmed) in outcomes {
        for (&index, span) in group.iter().zip(&spans) {
            record(&rows[index], span, confirmed.as_ref().err(), instruments);
            published.confirmed[index] = confirmed.is_ok();
        }
        if let Err(error) = confirmed {
            published.first_error.get_or_insert(error);
        }
    }
    published
}

/// The rows' indexes in messages: rows of one channel and priority together, in their order,
/// at most `message_max` per message.
fn group(rows: &[OutboxRow], message_max: usize) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut open: HashMap<(Channel, Priority), usize> = HashMap::new();
    for (index, row) in rows.iter().enumerate() {
        let key = (row.channel, row.priority);
        match open.get(&key) {
            Some(&group) if groups[group].len() < message_max => groups[group].push(index),
            _ => {
                open.insert(key, groups.len());
                groups.push(vec![index]);
            }
        }
    }
    groups
}

/// Counts `row`'s outcome and records a failure on its span.
fn record(
    row: &OutboxRow,
    span: &tracing::Span,
    error: Option<&herald_queue::Error>,
    instruments: &Instruments,
) {
    let channel = KeyValue::new("herald.channel", row.channel.as_str());
    match error {
        None => {
            let priority = KeyValue::new("herald.priority", row.priority.to_string());
            instruments
                .published
                .add(1, &[channel.clone(), priority.clone()]);
            let lag = (chrono::Utc::now() - row.available_at)
                .to_std()
                .unwrap_or_default();
            instruments
                .lag
                .record(lag.as_secs_f64(), &[channel, priority]);
        }
        Some(error) => {
            instruments.failed.add(1, &[channel]);
            span.record("otel.status_code", "ERROR");
            span.record("error.type", error.to_string());
        }
    }
}

/// The producer span of one row's publish (OpenTelemetry messaging conventions).
fn publish_span(row: &OutboxRow) -> tracing::Span {
    let span = tracing::info_span!(
        "publish",
        otel.name = %format_args!("send {}", herald_queue::EXCHANGE),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = herald_queue::EXCHANGE,
        messaging.rabbitmq.destination.routing_key = row.channel.as_str(),
        messaging.message.id = %row.delivery_id,
        herald.notification.id = %row.notification_id,
        herald.delivery.id = %row.delivery_id,
        herald.priority = %row.priority,
    );
    herald_telemetry::set_parent_from_map(&span, &row.trace_context);
    span
}

/// The message for `row`, carrying the current (publish) span's trace context, or the
/// submit's own when traces are not exported.
fn message(row: &OutboxRow) -> DeliveryMessage {
    let current = herald_telemetry::current_context_map();
    DeliveryMessage {
        delivery_id: row.delivery_id.to_string(),
        notification_id: row.notification_id.to_string(),
        channel: herald_proto::common::Channel::from(row.channel).into(),
        priority: herald_proto::common::Priority::from(row.priority).into(),
        enqueued_at: Some(herald_proto::conversions::timestamp(chrono::Utc::now())),
        trace_context: if current.is_empty() {
            row.trace_context.clone()
        } else {
            current
        },
        previous_attempt: HashMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, channel: Channel, priority: Priority) -> OutboxRow {
        OutboxRow {
            id,
            delivery_id: herald_domain::DeliveryId::generate(),
            notification_id: herald_domain::NotificationId::generate(),
            channel,
            priority,
            trace_context: HashMap::new(),
            created_at: chrono::Utc::now(),
            available_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn rows_travel_by_channel_and_priority_in_their_order_up_to_the_cap() {
        use Channel::{Email, Sms};
        use Priority::{Critical, Low};
        let rows = [
            row(1, Email, Critical),
            row(2, Sms, Critical),
            row(3, Email, Critical),
            row(4, Email, Low),
            row(5, Email, Critical),
            row(6, Email, Low),
            row(7, Email, Critical),
        ];
        assert_eq!(
            group(&rows, 3),
            vec![vec![0, 2, 4], vec![1], vec![3, 5], vec![6]]
        );
        assert_eq!(
            group(&rows, 1),
            (0..rows.len()).map(|index| vec![index]).collect::<Vec<_>>()
        );
    }
}
