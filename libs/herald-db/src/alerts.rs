//! What developer alerts read and write: unalerted failures, deliveries past their SLA, and
//! the de-duplication state of each alert fingerprint.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use herald_domain::{Channel, DeliveryState, NotificationId, Priority};
use uuid::Uuid;

use crate::Result;
use crate::schema::{alert_state, alerts_sent, deliveries, failures, notifications, templates};

/// The advisory lock key that makes one scanner at a time do the work, however many replicas
/// run.
const SCAN_LOCK: i64 = 0x4845_5241_4c44; // "HERALD"

/// Takes the scan lock for the current transaction; `false` when another replica holds it.
pub async fn try_lock_scan(connection: &mut AsyncPgConnection) -> Result<bool> {
    #[derive(QueryableByName)]
    struct Locked {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
    }
    let row: Locked = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
        .bind::<diesel::sql_types::BigInt, _>(SCAN_LOCK)
        .get_result(connection)
        .await?;
    Ok(row.locked)
}

/// A failure no alert has considered yet.
#[derive(Debug, Clone)]
pub struct UnalertedFailure {
    /// The failure.
    pub id: Uuid,
    /// Its notification.
    pub notification_id: NotificationId,
    /// Channel.
    pub channel: Channel,
    /// `permanent`, `exhausted` or `unknown`.
    pub class: String,
    /// The notification's template.
    pub template_key: String,
    /// The last error (no personal data).
    pub error: String,
}

/// Up to `limit` failures not yet considered by an alert, oldest first.
pub async fn unalerted_failures(
    connection: &mut AsyncPgConnection,
    limit: i64,
) -> Result<Vec<UnalertedFailure>> {
    let rows = failures::table
        .inner_join(notifications::table.inner_join(templates::table))
        .filter(failures::alerted_at.is_null())
        .order(failures::created_at.asc())
        .limit(limit)
        .select((
            failures::id,
            failures::notification_id,
            failures::channel,
            failures::error_class,
            templates::key,
            failures::error,
        ))
        .load::<(Uuid, Uuid, String, String, String, String)>(connection)
        .await?;
    rows.into_iter()
        .map(
            |(id, notification_id, channel, class, template_key, error)| {
                Ok(UnalertedFailure {
                    id,
                    notification_id: notification_id.into(),
                    channel: channel.parse()?,
                    class,
                    template_key,
                    error,
                })
            },
        )
        .collect()
}

/// A delivery still unfinished after its priority's SLA.
#[derive(Debug, Clone)]
pub struct OverdueDelivery {
    /// The delivery.
    pub id: Uuid,
    /// Its notification.
    pub notification_id: NotificationId,
    /// Channel.
    pub channel: Channel,
    /// Priority.
    pub priority: Priority,
    /// Its current state.
    pub state: DeliveryState,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
}

/// Up to `limit` unfinished deliveries accepted before their priority's cutoff and not yet
/// alerted, oldest first. `cutoffs` pairs each priority with its cutoff instant.
pub async fn overdue_deliveries(
    connection: &mut AsyncPgConnection,
    cutoffs: &[(Priority, DateTime<Utc>)],
    limit: i64,
) -> Result<Vec<OverdueDelivery>> {
    let mut overdue = Vec::new();
    for (priority, cutoff) in cutoffs {
        let rows = crate::statement::planned_per_run(
            deliveries::table
                .inner_join(notifications::table)
                // `open`: pending, queued, sending or retrying (the partial index's test).
                .filter(deliveries::open)
                .filter(deliveries::sla_alerted_at.is_null())
                .filter(notifications::priority.eq(priority.as_i16()))
                .filter(deliveries::created_at.lt(cutoff))
                .order(deliveries::created_at.asc())
                .limit(limit)
                .select((
                    deliveries::id,
                    deliveries::notification_id,
                    deliveries::channel,
                    deliveries::state,
                    deliveries::created_at,
                )),
        )
        .load::<(Uuid, Uuid, String, String, DateTime<Utc>)>(connection)
        .await?;
        for (id, notification_id, channel, state, created_at) in rows {
            overdue.push(OverdueDelivery {
                id,
                notification_id: notification_id.into(),
                channel: channel.parse()?,
                priority: *priority,
                state: state.parse()?,
                created_at,
            });
        }
    }
    Ok(overdue)
}

/// Marks failures as considered by an alert.
pub async fn mark_failures_alerted(connection: &mut AsyncPgConnection, ids: &[Uuid]) -> Result<()> {
    diesel::update(failures::table.filter(failures::id.eq_any(ids)))
        .set(failures::alerted_at.eq(Utc::now()))
        .execute(connection)
        .await?;
    Ok(())
}

/// Marks deliveries as having had their SLA alert.
pub async fn mark_deliveries_alerted(
    connection: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> Result<()> {
    diesel::update(deliveries::table.filter(deliveries::id.eq_any(ids)))
        .set(deliveries::sla_alerted_at.eq(Utc::now()))
        .execute(connection)
        .await?;
    Ok(())
}

/// When an alert with `fingerprint` was last sent, and how many occurrences were folded into
/// no alert since.
pub async fn fingerprint_state(
    connection: &mut AsyncPgConnection,
    fingerprint: &str,
) -> Result<(Option<DateTime<Utc>>, i32)> {
    Ok(alert_state::table
        .find(fingerprint)
        .select((alert_state::last_sent_at, alert_state::suppressed))
        .first::<(Option<DateTime<Utc>>, i32)>(connection)
        .await
        .optional()?
        .unwrap_or((None, 0)))
}

/// Alerts sent since `since` (for the hourly cap).
pub async fn sent_since(connection: &mut AsyncPgConnection, since: DateTime<Utc>) -> Result<i64> {
    Ok(alerts_sent::table
        .filter(alerts_sent::sent_at.ge(since))
        .count()
        .get_result(connection)
        .await?)
}

/// Records that an alert for `fingerprint` went out now.
pub async fn record_sent(
    connection: &mut AsyncPgConnection,
    fingerprint: &str,
    kind: &str,
    summary: &str,
) -> Result<()> {
    let now = Utc::now();
    diesel::insert_into(alert_state::table)
        .values((
            alert_state::fingerprint.eq(fingerprint),
            alert_state::last_sent_at.eq(now),
            alert_state::suppressed.eq(0),
        ))
        .on_conflict(alert_state::fingerprint)
        .do_update()
        .set((
            alert_state::last_sent_at.eq(now),
            alert_state::suppressed.eq(0),
        ))
        .execute(connection)
        .await?;
    diesel::insert_into(alerts_sent::table)
        .values((
            alerts_sent::fingerprint.eq(fingerprint),
            alerts_sent::kind.eq(kind),
            alerts_sent::summary.eq(summary),
            alerts_sent::sent_at.eq(now),
        ))
        .execute(connection)
        .await?;
    Ok(())
}

/// Folds `count` occurrences of `fingerprint` into no alert (de-duplicated or capped).
pub async fn record_suppressed(
    connection: &mut AsyncPgConnection,
    fingerprint: &str,
    count: i32,
) -> Result<()> {
    diesel::insert_into(alert_state::table)
        .values((
            alert_state::fingerprint.eq(fingerprint),
            alert_state::suppressed.eq(count),
        ))
        .on_conflict(alert_state::fingerprint)
        .do_update()
        .set(alert_state::suppressed.eq(alert_state::suppressed + count))
        .execute(connection)
        .await?;
    Ok(())
}
