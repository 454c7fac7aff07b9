//! Retention: the personal data of a delivery is kept while it may still be sent, and for a
//! configured time after it became final; then it is cleared, a batch of deliveries per
//! statement (the relay's retention job, `herald-relay`).
//!
//! Clearing a delivery sets its address to NULL, empties the detail of each of its events and
//! stamps `personal_cleared_at`. Once every delivery of a notification is cleared, its
//! parameters and metadata become an empty object and it is stamped too. Ids, states,
//! timestamps, attempts, errors and the events themselves stay, so `GetNotification`,
//! `ListEvents` and the failure record still answer. A user's erase (`erasure`) clears the
//! same way, at once, and takes the same lock, so the two never both leave a notification
//! uncleared thinking the other one still has a delivery to clear.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Bytea, Integer, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use herald_domain::DeliveryState;

use crate::personal::PersonalJson;
use crate::statement::Statement;
use crate::{Error, Result};

/// The class of the advisory lock that clearing holds (the other key is the schema's hash, so
/// deployments or tests sharing one database do not wait for each other).
const CLEARING_LOCK: i32 = 0x4852_4c44; // "HRLD"

/// What one batch cleared.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct Cleared {
    /// Deliveries whose address and event details were cleared.
    #[diesel(sql_type = BigInt)]
    pub deliveries: i64,
    /// Notifications whose parameters and metadata were cleared (all their deliveries were).
    #[diesel(sql_type = BigInt)]
    pub notifications: i64,
    /// Events whose detail was emptied.
    #[diesel(sql_type = BigInt)]
    pub events: i64,
}

impl std::ops::AddAssign for Cleared {
    fn add_assign(&mut self, other: Self) {
        self.deliveries += other.deliveries;
        self.notifications += other.notifications;
        self.events += other.events;
    }
}

/// The value cleared parameters and metadata hold: an empty object, which every reader
/// already understands (no parameters, no metadata).
pub(crate) fn cleared_json() -> PersonalJson {
    PersonalJson::new(serde_json::json!({}))
}

/// Takes the clearing lock for the current transaction: waits for it with `wait`, else gives
/// up at once and answers `false` when someone else holds it.
pub(crate) async fn lock(connection: &mut AsyncPgConnection, wait: bool) -> Result<bool> {
    #[derive(QueryableByName)]
    struct Locked {
        #[diesel(sql_type = Bool)]
        locked: bool,
    }
    let sql = if wait {
        "SELECT true AS locked \
         FROM (SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))) AS taken"
    } else {
        "SELECT pg_try_advisory_xact_lock($1, hashtext(current_schema())) AS locked"
    };
    let row: Locked = diesel::sql_query(sql)
        .bind::<Integer, _>(CLEARING_LOCK)
        .get_result(connection)
        .await?;
    Ok(row.locked)
}

/// One fixed-shape statement: the oldest `limit` deliveries final since before the cutoff and
/// not yet cleared (through `deliveries_personal_uncleared`, skipping rows another
/// transaction holds), cleared with their events, and the notifications all of whose
/// deliveries are now cleared. The statement's parts share one snapshot, so a notification's
/// other deliveries are tested as they were before this batch, leaving out the batch's own.
const CLEAR_BATCH: &str = r"
WITH due AS (
    SELECT id FROM deliveries
    WHERE NOT open AND personal_cleared_at IS NULL
      AND created_at < ?::timestamptz AND updated_at < ?::timestamptz
      AND state = ANY(?::text[])
    ORDER BY created_at
    LIMIT ?::int8
    FOR NO KEY UPDATE SKIP LOCKED
), cleared AS (
    UPDATE deliveries SET address = NULL, personal_cleared_at = ?::timestamptz
    FROM due WHERE deliveries.id = due.id
    RETURNING deliveries.id, deliveries.notification_id
), emptied AS (
    UPDATE delivery_events SET detail = '\x00'::bytea
    FROM cleared
    WHERE delivery_events.delivery_id = cleared.id AND delivery_events.detail <> '\x00'::bytea
    RETURNING 1
), finished AS (
    UPDATE notifications
    SET parameters = ?::bytea, metadata = ?::bytea, personal_cleared_at = ?::timestamptz
    WHERE notifications.id IN (SELECT notification_id FROM cleared)
      AND notifications.personal_cleared_at IS NULL
      AND NOT EXISTS (
          SELECT 1 FROM deliveries other
          WHERE other.notification_id = notifications.id
            AND other.personal_cleared_at IS NULL
            AND other.id NOT IN (SELECT id FROM cleared))
    RETURNING 1
)
SELECT (SELECT count(*) FROM cleared) AS deliveries,
       (SELECT count(*) FROM finished) AS notifications,
       (SELECT count(*) FROM emptied) AS events";

/// Clears one batch of at most `limit` deliveries that have been final since before `cutoff`,
/// stamping them `now`, in one transaction holding the clearing lock. `None` when another
/// replica (or an erase) holds the lock: try again at the next run. A batch that clears fewer
/// than `limit` deliveries was the last one due.
///
/// # Errors
/// When PostgreSQL fails or the keyring cannot seal the empty values.
pub async fn clear_batch(
    connection: &mut AsyncPgConnection,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Option<Cleared>> {
    let final_states: Vec<&str> = DeliveryState::ALL
        .into_iter()
        .filter(|state| state.is_final())
        .map(DeliveryState::as_str)
        .collect();
    connection
        .transaction::<_, Error, _>(async |connection| {
            if !lock(connection, false).await? {
                return Ok(None);
            }
            // Planned for its own cutoff on every run: a plan made once on a small table
            // would scan it for good (see `statement::planned_per_run`); it runs a few
            // times per interval, so planning costs nothing worth keeping.
            let cleared = Statement::new(CLEAR_BATCH)
                .bind::<Timestamptz, _>(cutoff)
                .bind::<Timestamptz, _>(cutoff)
                .bind::<diesel::sql_types::Array<Text>, _>(final_states)
                .bind::<BigInt, _>(limit)
                .bind::<Timestamptz, _>(now)
                .bind::<Bytea, _>(cleared_json())
                .bind::<Bytea, _>(cleared_json())
                .bind::<Timestamptz, _>(now)
                .planned_per_run()
                .get_result::<Cleared>(connection)
                .await?;
            Ok(Some(cleared))
        })
        .await
}
