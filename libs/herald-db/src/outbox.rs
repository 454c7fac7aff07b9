//! The transactional outbox read by the relay.
//!
//! The relay locks a batch with `FOR UPDATE SKIP LOCKED` inside a transaction, publishes it,
//! and marks only the confirmed rows published before committing, so several relay replicas
//! never publish the same row concurrently and a crash before commit re-publishes (the
//! worker's claim makes that harmless).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use herald_domain::{Channel, DeliveryId, DeliveryState, NotificationId, Priority};
use uuid::Uuid;

use crate::Result;
use crate::schema::{deliveries, outbox};

/// The prefix of the `NOTIFY` channel the `outbox_added` trigger signals on when a statement
/// adds rows; the channel is this plus the rows' schema (`herald_outbox:public`).
pub const RELAY_CHANNEL_PREFIX: &str = "herald_outbox:";

/// An unpublished outbox row.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Row id (publish order).
    pub id: i64,
    /// The delivery to attempt.
    pub delivery_id: DeliveryId,
    /// Its notification.
    pub notification_id: NotificationId,
    /// Its channel (routing key).
    pub channel: Channel,
    /// Its priority.
    pub priority: Priority,
    /// W3C trace context captured at submit.
    pub trace_context: serde_json::Value,
    /// When the row was written.
    pub created_at: DateTime<Utc>,
    /// When it became due (its `send_at`, else `created_at`): relay lag counts from here.
    pub available_at: DateTime<Utc>,
}

/// Locks up to `limit` unpublished rows due at `now`, oldest first, skipping rows another
/// relay holds. Call inside a transaction; the locks last until it ends.
pub async fn lock_unpublished(
    connection: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<OutboxRow>> {
    let rows = outbox::table
        .filter(outbox::published_at.is_null())
        .filter(outbox::available_at.le(now))
        .order(outbox::id.asc())
        .limit(limit)
        .select((
            outbox::id,
            outbox::delivery_id,
            outbox::notification_id,
            outbox::channel,
            outbox::priority,
            outbox::trace_context,
            outbox::created_at,
            outbox::available_at,
        ))
        .for_update()
        .skip_locked()
        .load::<(
            i64,
            Uuid,
            Uuid,
            String,
            i16,
            serde_json::Value,
            DateTime<Utc>,
            DateTime<Utc>,
        )>(connection)
        .await?;
    rows.into_iter()
        .map(
            |(
                id,
                delivery_id,
                notification_id,
                channel,
                priority,
                trace_context,
                created_at,
                available_at,
            )| {
                Ok(OutboxRow {
                    id,
                    delivery_id: delivery_id.into(),
                    notification_id: notification_id.into(),
                    channel: channel.parse()?,
                    priority: Priority::from_i16(priority)?,
                    trace_context,
                    created_at,
                    available_at,
                })
            },
        )
        .collect()
}

/// Marks rows published and moves their deliveries from `pending` to `queued` with a `queued`
/// event. Deliveries a worker already claimed keep their state.
pub async fn mark_published(connection: &mut AsyncPgConnection, rows: &[&OutboxRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
    let delivery_ids: Vec<Uuid> = rows.iter().map(|row| *row.delivery_id.as_uuid()).collect();
    let now = Utc::now();
    diesel::update(outbox::table.filter(outbox::id.eq_any(&ids)))
        .set((
            outbox::published_at.eq(now),
            outbox::publish_attempts.eq(outbox::publish_attempts + 1),
        ))
        .execute(connection)
        .await?;
    diesel::update(deliveries::table.filter(deliveries::id.eq_any(&delivery_ids)))
        .set(deliveries::queued_at.eq(now))
        .execute(connection)
        .await?;
    // A worker may have claimed a delivery before this commit (it consumed the message
    // while the relay waited for confirms); only deliveries still pending become queued.
    let queued: Vec<Uuid> = diesel::update(
        deliveries::table
            .filter(deliveries::id.eq_any(&delivery_ids))
            .filter(deliveries::state.eq_any([
                DeliveryState::Pending.as_str(),
                DeliveryState::Scheduled.as_str(),
            ])),
    )
    .set((
        deliveries::state.eq(DeliveryState::Queued.as_str()),
        deliveries::updated_at.eq(now),
    ))
    .returning(deliveries::id)
    .get_results(connection)
    .await?;
    let events: Vec<_> = rows
        .iter()
        .filter(|row| queued.contains(row.delivery_id.as_uuid()))
        .map(|row| crate::events::NewEvent {
            delivery_id: *row.delivery_id.as_uuid(),
            kind: "queued",
            notification_id: Some(*row.notification_id.as_uuid()),
            channel: Some(row.channel.as_str()),
            ..crate::events::NewEvent::default()
        })
        .collect();
    crate::events::insert(connection, &events).await?;
    Ok(())
}

/// Records a failed publish attempt on rows that stay unpublished.
pub async fn record_publish_failure(
    connection: &mut AsyncPgConnection,
    rows: &[&OutboxRow],
    error: &str,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
    diesel::update(outbox::table.filter(outbox::id.eq_any(&ids)))
        .set((
            outbox::publish_attempts.eq(outbox::publish_attempts + 1),
            outbox::last_error.eq(error),
        ))
        .execute(connection)
        .await?;
    Ok(())
}

/// How many rows wait to be published, and when the oldest was written.
pub async fn backlog(connection: &mut AsyncPgConnection) -> Result<(i64, Option<DateTime<Utc>>)> {
    let count = outbox::table
        .filter(outbox::published_at.is_null())
        .count()
        .get_result::<i64>(connection)
        .await?;
    let oldest = outbox::table
        .filter(outbox::published_at.is_null())
        .select(diesel::dsl::min(outbox::created_at))
        .first::<Option<DateTime<Utc>>>(connection)
        .await?;
    Ok((count, oldest))
}
