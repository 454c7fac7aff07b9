//! Queue figures read from PostgreSQL: what waits in each channel's queue per priority, how
//! fast it is consumed, and the outbox backlog the relay has yet to publish. The broker's own
//! counts come from `herald_queue::channel_depths`.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Double, Nullable, SmallInt, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use herald_domain::{Channel, Priority};

use crate::Result;

/// How far back "recent" consumption is measured.
pub const RECENT_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// One channel's queue at one priority.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneFigures {
    /// The channel (its work queue is `herald.<channel>.deliver`).
    pub channel: Channel,
    /// The priority lane.
    pub priority: Priority,
    /// Deliveries published to the queue and not yet taken by a worker.
    pub waiting: i64,
    /// When the longest-waiting of them was published.
    pub oldest_queued_at: Option<DateTime<Utc>>,
    /// Deliveries waiting in a delay queue for their next attempt.
    pub retrying: i64,
    /// Attempts started in the last [`RECENT_WINDOW`].
    pub consumed_recently: i64,
    /// Mean time from publish to a worker taking the delivery, over those attempts.
    pub mean_wait_seconds: Option<f64>,
}

/// The relay's backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxFigures {
    /// Rows due and not yet published.
    pub backlog: i64,
    /// When the oldest of them became due.
    pub oldest_due_at: Option<DateTime<Utc>>,
}

#[derive(QueryableByName)]
struct LaneRow {
    #[diesel(sql_type = Text)]
    channel: String,
    #[diesel(sql_type = SmallInt)]
    priority: i16,
    #[diesel(sql_type = BigInt)]
    waiting: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    oldest_queued_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = BigInt)]
    retrying: i64,
    #[diesel(sql_type = BigInt)]
    consumed_recently: i64,
    #[diesel(sql_type = Nullable<Double>)]
    mean_wait_seconds: Option<f64>,
}

#[derive(QueryableByName)]
struct OutboxRow {
    #[diesel(sql_type = BigInt)]
    backlog: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    oldest_due_at: Option<DateTime<Utc>>,
}

/// The lanes and the outbox backlog read from one snapshot (a read-only `REPEATABLE READ`
/// transaction), so that a delivery the relay publishes meanwhile is counted once: either
/// still in the backlog or already waiting in its lane, never in neither.
pub async fn figures(
    connection: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> Result<(Vec<LaneFigures>, OutboxFigures)> {
    connection
        .build_transaction()
        .read_only()
        .repeatable_read()
        .run::<_, crate::Error, _>(async |connection| {
            let lanes = lanes(connection, now).await?;
            let outbox = outbox(connection, now).await?;
            Ok((lanes, outbox))
        })
        .await
}

/// Every channel and priority that has something waiting, retrying or recently consumed.
pub async fn lanes(
    connection: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> Result<Vec<LaneFigures>> {
    let since = now - chrono::Duration::from_std(RECENT_WINDOW).unwrap_or_default();
    let rows: Vec<LaneRow> = diesel::sql_query(
        "WITH waiting AS ( \
             SELECT d.channel, n.priority, \
                    count(*) FILTER (WHERE d.state = 'queued') AS waiting, \
                    min(d.queued_at) FILTER (WHERE d.state = 'queued') AS oldest_queued_at, \
                    count(*) FILTER (WHERE d.state = 'retry_wait') AS retrying \
             FROM deliveries d JOIN notifications n ON n.id = d.notification_id \
             WHERE d.open AND d.state IN ('queued', 'retry_wait') \
             GROUP BY d.channel, n.priority), \
         consumed AS ( \
             SELECT d.channel, n.priority, count(*) AS consumed_recently, \
                    avg(extract(epoch FROM e.occurred_at - d.queued_at)) \
                        FILTER (WHERE e.attempt = d.attempts_base + 1 AND d.queued_at IS NOT NULL \
                                AND e.occurred_at >= d.queued_at) AS mean_wait_seconds \
             FROM delivery_events e \
             JOIN deliveries d ON d.id = e.delivery_id \
             JOIN notifications n ON n.id = d.notification_id \
             WHERE e.kind = 'sending' AND e.occurred_at >= $1 \
             GROUP BY d.channel, n.priority) \
         SELECT coalesce(w.channel, c.channel) AS channel, \
                coalesce(w.priority, c.priority) AS priority, \
                coalesce(w.waiting, 0) AS waiting, w.oldest_queued_at, \
                coalesce(w.retrying, 0) AS retrying, \
                coalesce(c.consumed_recently, 0) AS consumed_recently, \
                c.mean_wait_seconds::float8 AS mean_wait_seconds \
         FROM waiting w FULL JOIN consumed c \
              ON c.channel = w.channel AND c.priority = w.priority \
         ORDER BY 1, 2 DESC",
    )
    .bind::<Timestamptz, _>(since)
    .load(connection)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(LaneFigures {
                channel: row.channel.parse()?,
                priority: Priority::from_i16(row.priority)?,
                waiting: row.waiting,
                oldest_queued_at: row.oldest_queued_at,
                retrying: row.retrying,
                consumed_recently: row.consumed_recently,
                mean_wait_seconds: row.mean_wait_seconds,
            })
        })
        .collect()
}

/// The outbox rows due by `now` and not yet published.
pub async fn outbox(
    connection: &mut AsyncPgConnection,
    now: DateTime<Utc>,
) -> Result<OutboxFigures> {
    let row: OutboxRow = diesel::sql_query(
        "SELECT count(*) AS backlog, min(available_at) AS oldest_due_at \
         FROM outbox WHERE published_at IS NULL AND available_at <= $1",
    )
    .bind::<Timestamptz, _>(now)
    .get_result(connection)
    .await?;
    Ok(OutboxFigures {
        backlog: row.backlog,
        oldest_due_at: row.oldest_due_at,
    })
}
