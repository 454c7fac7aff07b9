//! The transactional outbox read by the relay.
//!
//! The relay locks a batch with `FOR NO KEY UPDATE SKIP LOCKED` inside a transaction,
//! publishes it, and deletes only the confirmed rows before committing, so several relay
//! replicas never publish the same row concurrently and a crash before commit re-publishes
//! (the worker's claim makes that harmless). The table holds only what waits to be published;
//! the delivery's `queued_at` and `queued` event record the publish.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use herald_domain::{Channel, DeliveryId, NotificationId, Priority};
use uuid::Uuid;

use crate::Result;
use crate::schema::outbox;
use crate::statement::planned_per_run;

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
    /// W3C trace context captured at submit (`traceparent`, `tracestate`).
    pub trace_context: std::collections::HashMap<String, String>,
    /// When the row was written.
    pub created_at: DateTime<Utc>,
    /// When it became due (its `send_at`, else `created_at`): relay lag counts from here.
    pub available_at: DateTime<Utc>,
}

/// Locks up to `limit` unpublished rows due at `now`, most urgent first and oldest first
/// within a priority (a critical row never waits behind a campaign's backlog), skipping rows
/// another relay holds. Call inside a transaction; the locks last until it ends.
pub async fn lock_unpublished(
    connection: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<OutboxRow>> {
    let rows = planned_per_run(
        outbox::table
            .filter(outbox::published_at.is_null())
            .filter(outbox::available_at.le(now))
            .order((outbox::priority.desc(), outbox::id.asc()))
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
            .for_no_key_update()
            .skip_locked(),
    )
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
                    trace_context: crate::string_map(trace_context),
                    created_at,
                    available_at,
                })
            },
        )
        .collect()
}

/// Deletes published rows and moves their deliveries from `pending` to `queued` with a
/// `queued` event. Deliveries a worker already claimed keep their state.
pub async fn mark_published(connection: &mut AsyncPgConnection, rows: &[&OutboxRow]) -> Result<()> {
    use diesel::sql_types::{Array, BigInt, Timestamptz, Uuid as SqlUuid};
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
    let delivery_ids: Vec<Uuid> = rows.iter().map(|row| *row.delivery_id.as_uuid()).collect();
    let now = Utc::now();
    let mut outbox_connection = &*connection;
    let published =
        crate::statement::Statement::new("DELETE FROM outbox WHERE id = ANY(?::int8[])")
            .bind::<Array<BigInt>, _>(&ids)
            .planned_per_run()
            .execute(&mut outbox_connection);
    // One update per delivery: every one gets its queued_at, and only those still pending or
    // scheduled become queued (a worker may have claimed one before this commit, having
    // consumed its message while the relay waited for confirms). The states are read under
    // the row locks (taken in id order, as every batch does, so batches do not deadlock), so
    // a claim that committed meanwhile is seen.
    let mut deliveries_connection = &*connection;
    let stamped = crate::statement::Statement::new(
        "WITH current AS ( \
             SELECT id, state IN ('pending', 'scheduled') AS becomes_queued FROM deliveries \
             WHERE id = ANY(?::uuid[]) ORDER BY id FOR NO KEY UPDATE) \
         UPDATE deliveries SET queued_at = ?::timestamptz, \
             state = CASE WHEN current.becomes_queued THEN 'queued' ELSE deliveries.state END, \
             updated_at = CASE WHEN current.becomes_queued THEN ?::timestamptz \
                 ELSE deliveries.updated_at END \
         FROM current WHERE deliveries.id = current.id \
         RETURNING deliveries.id, current.becomes_queued",
    )
    .bind::<Array<SqlUuid>, _>(&delivery_ids)
    .bind::<Timestamptz, _>(now)
    .bind::<Timestamptz, _>(now)
    .planned_per_run()
    .load::<Stamped>(&mut deliveries_connection);
    let (published, stamped) = futures::join!(published, stamped);
    published?;
    let queued: std::collections::HashSet<Uuid> = stamped?
        .into_iter()
        .filter(|stamped| stamped.becomes_queued)
        .map(|stamped| stamped.id)
        .collect();
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

#[derive(QueryableByName)]
struct Stamped {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    becomes_queued: bool,
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
    planned_per_run(
        diesel::update(outbox::table.filter(outbox::id.eq_any(&ids))).set((
            outbox::publish_attempts.eq(outbox::publish_attempts + 1),
            outbox::last_error.eq(error),
        )),
    )
    .execute(connection)
    .await?;
    Ok(())
}

/// Vacuums the outbox: removes the rows the relay deleted, and their index entries.
///
/// The outbox is a queue, so nearly all of its rows are dead ones the relay deleted, and
/// until they are vacuumed every batch's lookup walks past them (2 ms and 300 pages for an
/// empty outbox behind 20,000 published rows). Autovacuum visits a table at most once per
/// `autovacuum_naptime` (a minute by default), and is off on some servers; the relay calls
/// this every `relay.vacuum_after` published rows. `SKIP_LOCKED`: a vacuum already running
/// (autovacuum, another relay) makes this one a no-op. A role that does not own the table gets
/// a warning from PostgreSQL, not an error, and the table is left to autovacuum.
///
/// `VACUUM` cannot run in a transaction: call it on a connection with none open.
pub async fn vacuum(connection: &mut AsyncPgConnection) -> Result<()> {
    use diesel_async::SimpleAsyncConnection as _;
    connection
        .batch_execute("VACUUM (SKIP_LOCKED) outbox")
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

/// Re-queues, through the outbox, up to `limit` deliveries whose queue message the broker may
/// have lost: still `queued` or `retry_wait` (a retry's delay copy lost too), unchanged since
/// before `stuck_before`, with no outbox row waiting. Each gets an outbox row (the relay
/// publishes it again) and its `updated_at` set to now, so it is looked at again only after
/// another full threshold. A message that was not lost after all is then delivered twice to
/// the queue, which the workers' claim makes harmless: the second copy finds the delivery
/// claimed or final. Rows another transaction holds are skipped, and so are the `queued`
/// deliveries of `backlogged` channels, whose work queue still holds messages: theirs may be
/// among them, waiting its turn. Returns the channel of each delivery re-queued.
pub async fn requeue_stuck(
    connection: &mut AsyncPgConnection,
    stuck_before: DateTime<Utc>,
    limit: i64,
    backlogged: &[String],
) -> Result<Vec<String>> {
    use diesel::sql_types::{Array, BigInt, Text, Timestamptz};
    #[derive(QueryableByName)]
    struct Requeued {
        #[diesel(sql_type = Text)]
        channel: String,
    }
    // `open` narrows the scan to the deliveries that may still be sent (`deliveries_open`).
    let requeued: Vec<Requeued> = diesel::sql_query(
        "WITH stuck AS ( \
             SELECT d.id FROM deliveries AS d \
             WHERE d.open AND d.state IN ('queued', 'retry_wait') AND d.updated_at < $1 \
               AND NOT (d.state = 'queued' AND d.channel = ANY($3)) \
               AND NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.delivery_id = d.id) \
             ORDER BY d.updated_at LIMIT $2 \
             FOR NO KEY UPDATE OF d SKIP LOCKED), \
         touched AS ( \
             UPDATE deliveries AS d SET updated_at = now() FROM stuck WHERE d.id = stuck.id \
             RETURNING d.id, d.notification_id, d.channel) \
         INSERT INTO outbox (delivery_id, notification_id, channel, priority) \
         SELECT t.id, t.notification_id, t.channel, n.priority \
         FROM touched AS t JOIN notifications AS n ON n.id = t.notification_id \
         RETURNING channel",
    )
    .bind::<Timestamptz, _>(stuck_before)
    .bind::<BigInt, _>(limit)
    .bind::<Array<Text>, _>(backlogged)
    .load(connection)
    .await?;
    Ok(requeued
        .into_iter()
        .map(|requeued| requeued.channel)
        .collect())
}
