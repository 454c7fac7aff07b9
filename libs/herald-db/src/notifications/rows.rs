//! The rows of new notifications: one fixed-shape statement over arrays per table,
//! pipelined on the submit transaction's connection.

use chrono::{DateTime, Utc};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use herald_domain::DeliveryState;

use super::{Disposition, NewDelivery, NewNotification};
use crate::Result;
use crate::statement::column;

/// Writes the rows of `created`: notifications, deliveries, their first events and outbox
/// rows, one statement per table, all four pipelined on the connection (sent together, then
/// their answers read): inside the transaction, a failure of any one fails the commit.
pub(super) async fn insert_rows(
    connection: &AsyncPgConnection,
    created: &[&NewNotification],
) -> Result<()> {
    let deliveries: Vec<(&NewNotification, &NewDelivery)> = created
        .iter()
        .flat_map(|new| new.deliveries.iter().map(move |delivery| (*new, delivery)))
        .collect();
    let details = event_details(&deliveries);
    let event_rows = accepted_events(&deliveries, &details);
    // Each future sends its statement when first polled: in this order, on one connection.
    let (notifications, deliveries_written, events, outbox) = futures::join!(
        insert_notifications(connection, created),
        insert_deliveries(connection, &deliveries),
        crate::events::insert_pipelined(connection, &event_rows),
        insert_outbox(connection, &deliveries),
    );
    notifications?;
    deliveries_written?;
    events?;
    outbox?;
    Ok(())
}

/// One `notifications` row per notification.
async fn insert_notifications(
    mut notifications_connection: &AsyncPgConnection,
    created: &[&NewNotification],
) -> Result<()> {
    use diesel::sql_types::{Array, Bytea, Int2, Int4, Nullable, Text, Uuid as SqlUuid};
    crate::statement::Statement::new(
        "INSERT INTO notifications (id, submitted_by, idempotency_key, request_hash, \
             template_id, template_version, category, priority, parameters, metadata) \
         SELECT * FROM unnest(?::uuid[], ?::text[], ?::text[], ?::bytea[], ?::uuid[], \
             ?::int4[], ?::text[], ?::int2[], ?::bytea[], ?::bytea[])",
    )
    .bind::<Array<SqlUuid>, _>(column(created, |new| *new.id.as_uuid()))
    .bind::<Array<Text>, _>(column(created, |new| new.submitted_by.as_str()))
    .bind::<Array<Nullable<Text>>, _>(column(created, |new| new.idempotency_key.as_deref()))
    .bind::<Array<Bytea>, _>(column(created, |new| new.request_hash.as_slice()))
    .bind::<Array<SqlUuid>, _>(column(created, |new| *new.template_id.as_uuid()))
    .bind::<Array<Int4>, _>(column(created, |new| new.template_version))
    .bind::<Array<Text>, _>(column(created, |new| new.category.as_str()))
    .bind::<Array<Int2>, _>(column(created, |new| new.priority.as_i16()))
    .bind::<Array<Bytea>, _>(column(created, |new| &new.parameters))
    .bind::<Array<Bytea>, _>(column(created, |new| &new.metadata))
    .execute(&mut notifications_connection)
    .await?;
    Ok(())
}

/// One `deliveries` row per delivery: `pending`, `scheduled` or `suppressed`.
async fn insert_deliveries(
    mut deliveries_connection: &AsyncPgConnection,
    deliveries: &[(&NewNotification, &NewDelivery)],
) -> Result<()> {
    use diesel::sql_types::{Array, Bytea, Int4, Nullable, Text, Timestamptz, Uuid as SqlUuid};
    crate::statement::Statement::new(
        "INSERT INTO deliveries (id, notification_id, channel, recipient_index, user_id, \
             address, locale, variant, state, scheduled_for, last_error) \
         SELECT * FROM unnest(?::uuid[], ?::uuid[], ?::text[], ?::int4[], ?::text[], \
             ?::bytea[], ?::text[], ?::text[], ?::text[], ?::timestamptz[], ?::text[])",
    )
    .bind::<Array<SqlUuid>, _>(column(deliveries, |(_, delivery)| *delivery.id.as_uuid()))
    .bind::<Array<SqlUuid>, _>(column(deliveries, |(new, _)| *new.id.as_uuid()))
    .bind::<Array<Text>, _>(column(deliveries, |(_, delivery)| {
        delivery.channel.as_str()
    }))
    .bind::<Array<Int4>, _>(column(deliveries, |(_, delivery)| delivery.recipient_index))
    .bind::<Array<Nullable<Text>>, _>(column(deliveries, |(_, delivery)| {
        delivery.user_id.as_deref()
    }))
    .bind::<Array<Nullable<Bytea>>, _>(column(deliveries, |(_, delivery)| {
        delivery.address.as_ref()
    }))
    .bind::<Array<Nullable<Text>>, _>(column(deliveries, |(_, delivery)| {
        delivery.locale.as_deref()
    }))
    .bind::<Array<Nullable<Text>>, _>(column(deliveries, |(_, delivery)| {
        delivery.variant.as_deref()
    }))
    .bind::<Array<Text>, _>(
        deliveries
            .iter()
            .map(|(_, delivery)| match &delivery.disposition {
                Disposition::Now => DeliveryState::Pending.as_str(),
                Disposition::ScheduledFor(_) => DeliveryState::Scheduled.as_str(),
                Disposition::Suppressed(_) => DeliveryState::Suppressed.as_str(),
            })
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Timestamptz>>, _>(
        deliveries
            .iter()
            .map(|(_, delivery)| match &delivery.disposition {
                Disposition::ScheduledFor(at) => Some(*at),
                _ => None,
            })
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(
        deliveries
            .iter()
            .map(|(_, delivery)| match &delivery.disposition {
                Disposition::Suppressed(reason) => Some(reason.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>(),
    )
    .execute(&mut deliveries_connection)
    .await?;
    Ok(())
}

/// One `outbox` row per delivery to send (none for a suppressed one), due when accepted or
/// when scheduled; its insert wakes the relays at commit (the `outbox_added` trigger).
async fn insert_outbox(
    mut outbox_connection: &AsyncPgConnection,
    deliveries: &[(&NewNotification, &NewDelivery)],
) -> Result<usize> {
    use diesel::sql_types::{Array, Int2, Jsonb, Text, Timestamptz, Uuid as SqlUuid};
    let outbox_rows: Vec<(&NewNotification, &NewDelivery, DateTime<Utc>)> = deliveries
        .iter()
        .filter_map(|(new, delivery)| {
            let available_at = match &delivery.disposition {
                Disposition::Now => new.accepted_at,
                Disposition::ScheduledFor(at) => *at,
                Disposition::Suppressed(_) => return None,
            };
            Some((*new, *delivery, available_at))
        })
        .collect();
    if outbox_rows.is_empty() {
        return Ok(0);
    }
    // Each notification's trace context as JSON once, shared by its deliveries' rows.
    let mut trace_contexts = std::collections::HashMap::new();
    for (new, _, _) in &outbox_rows {
        trace_contexts
            .entry(new.id)
            .or_insert_with(|| serde_json::to_value(&new.trace_context).unwrap_or_default());
    }
    Ok(crate::statement::Statement::new(
        "INSERT INTO outbox (delivery_id, notification_id, channel, priority, \
             trace_context, available_at) \
         SELECT * FROM unnest(?::uuid[], ?::uuid[], ?::text[], ?::int2[], \
             ?::jsonb[], ?::timestamptz[])",
    )
    .bind::<Array<SqlUuid>, _>(column(&outbox_rows, |(_, delivery, _)| {
        *delivery.id.as_uuid()
    }))
    .bind::<Array<SqlUuid>, _>(column(&outbox_rows, |(new, _, _)| *new.id.as_uuid()))
    .bind::<Array<Text>, _>(column(&outbox_rows, |(_, delivery, _)| {
        delivery.channel.as_str()
    }))
    .bind::<Array<Int2>, _>(column(&outbox_rows, |(new, _, _)| new.priority.as_i16()))
    .bind::<Array<Jsonb>, _>(column(&outbox_rows, |(new, _, _)| &trace_contexts[&new.id]))
    .bind::<Array<Timestamptz>, _>(outbox_rows.iter().map(|(_, _, at)| *at).collect::<Vec<_>>())
    .execute(&mut outbox_connection)
    .await?)
}

/// The detail of each delivery's second event (`scheduled` or `suppressed`), if it has one.
fn event_details(
    deliveries: &[(&NewNotification, &NewDelivery)],
) -> Vec<Option<(&'static str, String)>> {
    deliveries
        .iter()
        .map(|(_, delivery)| match &delivery.disposition {
            Disposition::Now => None,
            Disposition::ScheduledFor(at) => {
                Some(("scheduled", format!("until {}", at.to_rfc3339())))
            }
            Disposition::Suppressed(reason) => Some(("suppressed", reason.clone())),
        })
        .collect()
}

/// The first events of new deliveries: `accepted`, then `scheduled` or `suppressed`.
fn accepted_events<'a>(
    deliveries: &[(&'a NewNotification, &'a NewDelivery)],
    details: &'a [Option<(&'static str, String)>],
) -> Vec<crate::events::NewEvent<'a>> {
    deliveries
        .iter()
        .zip(details)
        .flat_map(|((new, delivery), then)| {
            let accepted = crate::events::NewEvent {
                delivery_id: *delivery.id.as_uuid(),
                kind: "accepted",
                notification_id: Some(*new.id.as_uuid()),
                channel: Some(delivery.channel.as_str()),
                ..crate::events::NewEvent::default()
            };
            let then = then.as_ref().map(|(kind, detail)| crate::events::NewEvent {
                kind,
                detail,
                ..accepted.clone()
            });
            std::iter::once(accepted).chain(then)
        })
        .collect()
}
