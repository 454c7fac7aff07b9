//! A user's erase (`PreferenceService.DeletePreferences`): everything Herald stores about one
//! user, gone or cleared in one transaction, and audited without what it erased.
//!
//! - Preferences (contact points, switches) and the disabled contacts recorded for the user
//!   are deleted; so are the user's inbox items.
//! - Every delivery to the user loses its address and its user id and is stamped
//!   `personal_cleared_at` (like retention's clearing); the detail of each of its events is
//!   emptied. One not yet final is suppressed with [`ERASED_REASON`], under the row lock, so
//!   no worker claims it again; except one a worker holds right now (`sending` under a live
//!   lease): its worker has the address already and may hand it to the provider, so it keeps
//!   its state and its outcome is recorded as it happens (a retry of it finds no address).
//! - A notification all of whose deliveries are now cleared loses its parameters and metadata.
//!   One that also went to other users keeps them until retention clears its last delivery:
//!   the other users' deliveries may still need them, and it no longer names this user.
//! - The user's earlier audit entries (`user:<id>`) are rewritten to name the user by a keyed
//!   hash (HMAC under the lookup key), and the erase is audited the same way, with counts.
//!
//! Suppression reasons written by older releases named the user (`no_address: user <id> has
//! no …`); the erase rewrites those too.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::prelude::*;
use diesel::sql_types::{Array, Bool, Bytea, Integer, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use herald_domain::DeliveryState;
use uuid::Uuid;

use crate::retention::{cleared_json, lock};
use crate::schema::{audit_log, inbox_items, user_preferences};
use crate::statement::Statement;
use crate::{Error, Result};

/// The suppression reason of a delivery cancelled by its user's erase.
pub const ERASED_REASON: &str = "user_erased: the user was erased";

/// The domain of the keyed hash that names an erased user in the audit log.
const AUDIT_HASH_DOMAIN: &str = "audit.erased-user";

/// What an erase erased.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erased {
    /// The user had stored preferences, now deleted.
    pub preferences: bool,
    /// The user's inbox items, now deleted (their ids, for signalling open streams).
    pub inbox_items: Vec<Uuid>,
    /// Deliveries to the user, now without address and user id.
    pub deliveries: i64,
    /// Of those, the ones not yet final, now suppressed.
    pub cancelled: i64,
    /// Notifications whose parameters and metadata were cleared.
    pub notifications: i64,
    /// Events whose detail was emptied.
    pub events: i64,
    /// Disabled contacts recorded for the user, now forgotten.
    pub disabled_contacts: i64,
    /// Earlier audit entries about the user, now naming the keyed hash.
    pub audit_entries: i64,
}

/// How the audit log names an erased user: a keyed hash of the user id, so that an operator
/// holding the lookup key can confirm a given user was erased, and nobody can read the id.
///
/// # Errors
/// When no keyring is installed.
pub fn erased_user_target(user_id: &str) -> Result<String> {
    let hash = herald_crypto::keyring()?
        .lookup()
        .hex(AUDIT_HASH_DOMAIN, &[user_id.as_bytes()]);
    Ok(format!("erased-user:{hash}"))
}

/// One row of the user's deliveries as the erase left it.
#[derive(QueryableByName)]
struct ErasedDelivery {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    notification_id: Uuid,
    #[diesel(sql_type = Text)]
    channel: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Bool)]
    cancelled: bool,
}

/// The user's deliveries, locked in id order (as every batch locks them), forgotten, and the
/// ones not yet final suppressed.
const FORGET_DELIVERIES: &str = r"
WITH mine AS (
    SELECT id, NOT (state = ANY(?::text[]))
        AND NOT (state = 'sending' AND lease_until > now()) AS cancelled FROM deliveries
    WHERE user_id = ?::text ORDER BY id FOR NO KEY UPDATE
)
UPDATE deliveries SET address = NULL, user_id = NULL,
    personal_cleared_at = COALESCE(deliveries.personal_cleared_at, ?::timestamptz),
    state = CASE WHEN mine.cancelled THEN 'suppressed' ELSE deliveries.state END,
    lease_until = CASE WHEN mine.cancelled THEN NULL ELSE deliveries.lease_until END,
    updated_at = CASE WHEN mine.cancelled THEN ?::timestamptz ELSE deliveries.updated_at END,
    last_error = CASE WHEN mine.cancelled THEN ?::text
        ELSE regexp_replace(deliveries.last_error,
            '^no_address: user .* has no ', 'no_address: the user has no ') END
FROM mine WHERE deliveries.id = mine.id
RETURNING deliveries.id, deliveries.notification_id, deliveries.channel, deliveries.attempts,
    mine.cancelled";

/// Empties the detail of the events of the given deliveries.
const EMPTY_EVENTS: &str = r"
UPDATE delivery_events SET detail = '\x00'::bytea
WHERE delivery_id = ANY(?::uuid[]) AND detail <> '\x00'::bytea";

/// Clears the given notifications once none of their deliveries keeps personal data.
const CLEAR_NOTIFICATIONS: &str = r"
UPDATE notifications
SET parameters = ?::bytea, metadata = ?::bytea, personal_cleared_at = ?::timestamptz
WHERE id = ANY(?::uuid[]) AND personal_cleared_at IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM deliveries
      WHERE deliveries.notification_id = notifications.id
        AND deliveries.personal_cleared_at IS NULL)";

/// Erases `user_id` (see the module docs) in one transaction, audited as `actor`. The
/// transaction waits for the clearing lock that retention batches hold, so the two never
/// decide about the same notification at once.
///
/// # Errors
/// When PostgreSQL fails, or no keyring is installed.
pub async fn erase_user(
    connection: &mut AsyncPgConnection,
    user_id: &str,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Erased> {
    let erased_target = erased_user_target(user_id)?;
    connection
        .transaction::<_, Error, _>(async |connection| {
            lock(connection, true).await?;
            let mut erased = forget_deliveries(connection, user_id, now).await?;
            erased.inbox_items =
                diesel::delete(inbox_items::table.filter(inbox_items::user_id.eq(user_id)))
                    .returning(inbox_items::id)
                    .get_results(connection)
                    .await?;
            erased.preferences = diesel::delete(user_preferences::table.find(user_id))
                .execute(connection)
                .await?
                > 0;
            erased.disabled_contacts +=
                count(crate::contacts::delete_for_user(connection, user_id).await?);
            erased.audit_entries = count(
                diesel::update(
                    audit_log::table
                        .filter(audit_log::target.eq(crate::preferences::audit_target(user_id))),
                )
                .set(audit_log::target.eq(&erased_target))
                .execute(connection)
                .await?,
            );
            diesel::insert_into(audit_log::table)
                .values((
                    audit_log::actor.eq(actor),
                    audit_log::action.eq("user.erase"),
                    audit_log::target.eq(&erased_target),
                    audit_log::detail.eq(audit_detail(&erased)),
                ))
                .execute(connection)
                .await?;
            Ok(erased)
        })
        .await
}

/// Forgets the user's deliveries, empties their events' details, records a `suppressed`
/// event for each one cancelled, and clears the notifications left without personal data.
async fn forget_deliveries(
    connection: &mut AsyncPgConnection,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<Erased> {
    let final_states: Vec<&str> = DeliveryState::ALL
        .into_iter()
        .filter(|state| state.is_final())
        .map(DeliveryState::as_str)
        .collect();
    let deliveries: Vec<ErasedDelivery> = Statement::new(FORGET_DELIVERIES)
        .bind::<Array<Text>, _>(final_states)
        .bind::<Text, _>(user_id)
        .bind::<Timestamptz, _>(now)
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(ERASED_REASON)
        .planned_per_run()
        .load(connection)
        .await?;
    let delivery_ids: Vec<Uuid> = deliveries.iter().map(|delivery| delivery.id).collect();
    let events = Statement::new(EMPTY_EVENTS)
        .bind::<Array<SqlUuid>, _>(&delivery_ids)
        .planned_per_run()
        .execute(connection)
        .await?;
    let cancelled: Vec<crate::events::NewEvent<'_>> = deliveries
        .iter()
        .filter(|delivery| delivery.cancelled)
        .map(|delivery| crate::events::NewEvent {
            delivery_id: delivery.id,
            kind: DeliveryState::Suppressed.as_str(),
            attempt: delivery.attempts,
            detail: ERASED_REASON,
            notification_id: Some(delivery.notification_id),
            channel: Some(&delivery.channel),
            ..crate::events::NewEvent::default()
        })
        .collect();
    crate::events::insert(connection, &cancelled).await?;
    let mut notification_ids: Vec<Uuid> = deliveries
        .iter()
        .map(|delivery| delivery.notification_id)
        .collect();
    notification_ids.sort_unstable();
    notification_ids.dedup();
    let notifications = Statement::new(CLEAR_NOTIFICATIONS)
        .bind::<Bytea, _>(cleared_json())
        .bind::<Bytea, _>(cleared_json())
        .bind::<Timestamptz, _>(now)
        .bind::<Array<SqlUuid>, _>(&notification_ids)
        .planned_per_run()
        .execute(connection)
        .await?;
    // Addresses disabled by a delivery to the user, recorded without their user id.
    let contacts = diesel::delete(
        crate::schema::disabled_contacts::table
            .filter(crate::schema::disabled_contacts::delivery_id.eq_any(&delivery_ids)),
    )
    .execute(connection)
    .await?;
    Ok(Erased {
        deliveries: count(deliveries.len()),
        cancelled: count(cancelled.len()),
        notifications: count(notifications),
        events: count(events),
        disabled_contacts: count(contacts),
        ..Erased::default()
    })
}

/// The audit entry's detail: counts only, never what was erased.
fn audit_detail(erased: &Erased) -> serde_json::Value {
    serde_json::json!({
        "preferences": erased.preferences,
        "inbox_items": erased.inbox_items.len(),
        "deliveries": erased.deliveries,
        "cancelled": erased.cancelled,
        "notifications": erased.notifications,
        "events": erased.events,
        "disabled_contacts": erased.disabled_contacts,
        "audit_entries": erased.audit_entries,
    })
}

fn count(rows: usize) -> i64 {
    i64::try_from(rows).unwrap_or(i64::MAX)
}
