//! Notifications, their deliveries and outbox rows, written in one transaction.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use herald_domain::{Channel, DeliveryId, DeliveryState, NotificationId, Priority, TemplateId};
use uuid::Uuid;

use crate::schema::{deliveries, idempotency_keys, notifications, outbox, templates};
use crate::{Error, Result};

/// A validated notification ready to store.
#[derive(Debug, Clone)]
pub struct NewNotification {
    /// Its id.
    pub id: NotificationId,
    /// The caller's identity.
    pub submitted_by: String,
    /// The caller's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// How long the idempotency key stays bound to this notification.
    pub idempotency_retention: std::time::Duration,
    /// SHA-256 of the canonical request, to tell a replay from a conflicting reuse of a key.
    pub request_hash: Vec<u8>,
    /// Template id.
    pub template_id: TemplateId,
    /// Template version resolved at submit.
    pub template_version: i32,
    /// Category.
    pub category: String,
    /// Priority.
    pub priority: Priority,
    /// Template parameters.
    pub parameters: serde_json::Value,
    /// Caller metadata.
    pub metadata: serde_json::Value,
    /// W3C trace context to carry to the workers.
    pub trace_context: serde_json::Value,
    /// One per recipient and channel.
    pub deliveries: Vec<NewDelivery>,
}

/// One delivery of a new notification.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Its id.
    pub id: DeliveryId,
    /// Channel.
    pub channel: Channel,
    /// Position of the recipient in the request.
    pub recipient_index: i32,
    /// The product's user id, if given.
    pub user_id: Option<String>,
    /// The address on this channel.
    pub address: Option<String>,
    /// The recipient's locale tag from the submit, if given.
    pub locale: Option<String>,
    /// The A/B test variant assigned at submit, when the template version has variants.
    pub variant: Option<String>,
    /// What happens to it: sent now, held until `ScheduledFor`, or suppressed.
    pub disposition: Disposition,
}

/// What a new delivery starts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// `pending`: published right away.
    Now,
    /// `scheduled`: published once due (`send_at`, quiet hours).
    ScheduledFor(DateTime<Utc>),
    /// `suppressed` for this reason (preferences); never queued.
    Suppressed(String),
}

/// What `insert` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// A new notification was stored.
    Created,
    /// The idempotency key was already used by this caller; nothing was written.
    KeyExists,
}

/// Stores the notification, its deliveries (state `pending`), an `accepted` event per delivery
/// and one outbox row per delivery in a single transaction. A reused idempotency key writes
/// nothing and returns `Inserted::KeyExists`.
pub async fn insert(connection: &mut AsyncPgConnection, new: &NewNotification) -> Result<Inserted> {
    let result = connection
        .transaction::<_, Error, _>(async |connection| {
            if let Some(key) = &new.idempotency_key
                && !claim_idempotency_key(connection, new, key).await?
            {
                return Err(Error::Conflict {
                    constraint: IDEMPOTENCY_KEY_TAKEN.into(),
                });
            }
            diesel::insert_into(notifications::table)
                .values((
                    notifications::id.eq(new.id.as_uuid()),
                    notifications::submitted_by.eq(&new.submitted_by),
                    notifications::idempotency_key.eq(&new.idempotency_key),
                    notifications::request_hash.eq(&new.request_hash),
                    notifications::template_id.eq(new.template_id.as_uuid()),
                    notifications::template_version.eq(new.template_version),
                    notifications::category.eq(&new.category),
                    notifications::priority.eq(new.priority.as_i16()),
                    notifications::parameters.eq(&new.parameters),
                    notifications::metadata.eq(&new.metadata),
                ))
                .execute(connection)
                .await?;
            let delivery_rows: Vec<_> = new
                .deliveries
                .iter()
                .map(|delivery| {
                    (
                        deliveries::id.eq(*delivery.id.as_uuid()),
                        deliveries::notification_id.eq(*new.id.as_uuid()),
                        deliveries::channel.eq(delivery.channel.as_str()),
                        deliveries::recipient_index.eq(delivery.recipient_index),
                        deliveries::user_id.eq(delivery.user_id.clone()),
                        deliveries::address.eq(delivery.address.clone()),
                        deliveries::locale.eq(delivery.locale.clone()),
                        deliveries::variant.eq(delivery.variant.clone()),
                        deliveries::state.eq(match &delivery.disposition {
                            Disposition::Now => DeliveryState::Pending.as_str(),
                            Disposition::ScheduledFor(_) => DeliveryState::Scheduled.as_str(),
                            Disposition::Suppressed(_) => DeliveryState::Suppressed.as_str(),
                        }),
                        deliveries::scheduled_for.eq(match &delivery.disposition {
                            Disposition::ScheduledFor(at) => Some(*at),
                            _ => None,
                        }),
                        deliveries::last_error.eq(match &delivery.disposition {
                            Disposition::Suppressed(reason) => Some(reason.clone()),
                            _ => None,
                        }),
                    )
                })
                .collect();
            diesel::insert_into(deliveries::table)
                .values(&delivery_rows)
                .execute(connection)
                .await?;
            let details: Vec<Option<(&str, String)>> = new
                .deliveries
                .iter()
                .map(|delivery| match &delivery.disposition {
                    Disposition::Now => None,
                    Disposition::ScheduledFor(at) => {
                        Some(("scheduled", format!("until {}", at.to_rfc3339())))
                    }
                    Disposition::Suppressed(reason) => Some(("suppressed", reason.clone())),
                })
                .collect();
            let event_rows: Vec<_> = new
                .deliveries
                .iter()
                .zip(&details)
                .flat_map(|(delivery, then)| {
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
                .collect();
            crate::events::insert(connection, &event_rows).await?;
            let now = Utc::now();
            let outbox_rows: Vec<_> = new
                .deliveries
                .iter()
                .filter_map(|delivery| {
                    let available_at = match &delivery.disposition {
                        Disposition::Now => now,
                        Disposition::ScheduledFor(at) => *at,
                        Disposition::Suppressed(_) => return None,
                    };
                    Some((
                        outbox::delivery_id.eq(*delivery.id.as_uuid()),
                        outbox::notification_id.eq(*new.id.as_uuid()),
                        outbox::channel.eq(delivery.channel.as_str()),
                        outbox::priority.eq(new.priority.as_i16()),
                        outbox::trace_context.eq(&new.trace_context),
                        outbox::available_at.eq(available_at),
                    ))
                })
                .collect();
            if !outbox_rows.is_empty() {
                diesel::insert_into(outbox::table)
                    .values(&outbox_rows)
                    .execute(connection)
                    .await?;
            }
            Ok(())
        })
        .await;
    match result {
        Ok(()) => Ok(Inserted::Created),
        Err(Error::Conflict { constraint }) if constraint == IDEMPOTENCY_KEY_TAKEN => {
            Ok(Inserted::KeyExists)
        }
        Err(error) => Err(error),
    }
}

/// The marker `insert` uses for a live idempotency key.
const IDEMPOTENCY_KEY_TAKEN: &str = "idempotency_keys_pkey";

/// Binds `key` to `new` unless a live (unexpired) binding exists; an expired binding is
/// replaced. Concurrent callers with one key serialise on the primary key: the later insert
/// waits for the earlier transaction, then sees its row. Returns whether the key is now ours.
async fn claim_idempotency_key(
    connection: &mut AsyncPgConnection,
    new: &NewNotification,
    key: &str,
) -> Result<bool> {
    use diesel::sql_types::{Bytea, Text, Timestamptz, Uuid as SqlUuid};
    let now = Utc::now();
    let expires_at = now
        + chrono::Duration::from_std(new.idempotency_retention).unwrap_or(chrono::Duration::MAX);
    // diesel's DSL has no `ON CONFLICT … DO UPDATE … WHERE`; the statement is small and fixed.
    let claimed = diesel::sql_query(
        "INSERT INTO idempotency_keys \
             (submitted_by, key, request_hash, notification_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (submitted_by, key) DO UPDATE SET \
             request_hash = EXCLUDED.request_hash, \
             notification_id = EXCLUDED.notification_id, \
             created_at = EXCLUDED.created_at, \
             expires_at = EXCLUDED.expires_at \
         WHERE idempotency_keys.expires_at <= EXCLUDED.created_at",
    )
    .bind::<Text, _>(&new.submitted_by)
    .bind::<Text, _>(key)
    .bind::<Bytea, _>(&new.request_hash)
    .bind::<SqlUuid, _>(new.id.as_uuid())
    .bind::<Timestamptz, _>(now)
    .bind::<Timestamptz, _>(expires_at)
    .execute(connection)
    .await?;
    Ok(claimed == 1)
}

/// The live binding of `key` for `submitted_by`: the notification and its request hash.
pub async fn find_by_idempotency_key(
    connection: &mut AsyncPgConnection,
    submitted_by: &str,
    key: &str,
) -> Result<Option<(NotificationId, Vec<u8>)>> {
    Ok(idempotency_keys::table
        .filter(idempotency_keys::submitted_by.eq(submitted_by))
        .filter(idempotency_keys::key.eq(key))
        .filter(idempotency_keys::expires_at.gt(Utc::now()))
        .select((
            idempotency_keys::notification_id,
            idempotency_keys::request_hash,
        ))
        .first::<(Uuid, Vec<u8>)>(connection)
        .await
        .optional()?
        .map(|(id, hash)| (id.into(), hash)))
}

/// Deletes up to `limit` bindings that expired before `before`; returns how many.
pub async fn delete_expired_idempotency_keys(
    connection: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<usize> {
    Ok(diesel::sql_query(
        "DELETE FROM idempotency_keys WHERE (submitted_by, key) IN \
             (SELECT submitted_by, key FROM idempotency_keys WHERE expires_at < $1 LIMIT $2)",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(before)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .execute(connection)
    .await?)
}

/// A stored notification.
#[derive(Debug, Clone)]
pub struct NotificationRecord {
    /// Its id.
    pub id: NotificationId,
    /// The caller's identity.
    pub submitted_by: String,
    /// Template key.
    pub template_key: String,
    /// Template version.
    pub template_version: i32,
    /// Category.
    pub category: String,
    /// Priority.
    pub priority: Priority,
    /// Caller metadata.
    pub metadata: serde_json::Value,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// Its deliveries, by recipient then channel.
    pub deliveries: Vec<DeliveryRecord>,
}

/// A stored delivery, without its address.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    /// Its id.
    pub id: DeliveryId,
    /// Channel.
    pub channel: Channel,
    /// State.
    pub state: DeliveryState,
    /// Position of the recipient in the request.
    pub recipient_index: i32,
    /// The product's user id, if given.
    pub user_id: Option<String>,
    /// Attempts made so far.
    pub attempts: i32,
    /// The last error or suppression reason.
    pub last_error: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Published to the queue.
    pub queued_at: Option<DateTime<Utc>>,
    /// Accepted by the provider.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When a scheduled delivery becomes due.
    pub scheduled_for: Option<DateTime<Utc>>,
    /// The A/B test variant assigned at submit.
    pub variant: Option<String>,
}

type DeliveryRow = (
    Uuid,
    String,
    String,
    i32,
    Option<String>,
    i32,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
);

fn delivery_record(row: DeliveryRow) -> Result<DeliveryRecord> {
    let (
        id,
        channel,
        state,
        recipient_index,
        user_id,
        attempts,
        last_error,
        created_at,
        updated_at,
        queued_at,
        delivered_at,
        scheduled_for,
        variant,
    ) = row;
    Ok(DeliveryRecord {
        id: id.into(),
        channel: channel.parse()?,
        state: state.parse()?,
        recipient_index,
        user_id,
        attempts,
        last_error,
        created_at,
        updated_at,
        queued_at,
        delivered_at,
        scheduled_for,
        variant,
    })
}

/// The notification with `id` and its deliveries.
pub async fn load(
    connection: &mut AsyncPgConnection,
    id: NotificationId,
) -> Result<Option<NotificationRecord>> {
    let Some((
        submitted_by,
        template_key,
        template_version,
        category,
        priority,
        metadata,
        created_at,
    )) = notifications::table
        .inner_join(templates::table)
        .filter(notifications::id.eq(id.as_uuid()))
        .select((
            notifications::submitted_by,
            templates::key,
            notifications::template_version,
            notifications::category,
            notifications::priority,
            notifications::metadata,
            notifications::created_at,
        ))
        .first::<(
            String,
            String,
            i32,
            String,
            i16,
            serde_json::Value,
            DateTime<Utc>,
        )>(connection)
        .await
        .optional()?
    else {
        return Ok(None);
    };
    let delivery_rows = deliveries::table
        .filter(deliveries::notification_id.eq(id.as_uuid()))
        .order((deliveries::recipient_index.asc(), deliveries::channel.asc()))
        .select((
            deliveries::id,
            deliveries::channel,
            deliveries::state,
            deliveries::recipient_index,
            deliveries::user_id,
            deliveries::attempts,
            deliveries::last_error,
            deliveries::created_at,
            deliveries::updated_at,
            deliveries::queued_at,
            deliveries::delivered_at,
            deliveries::scheduled_for,
            deliveries::variant,
        ))
        .load::<DeliveryRow>(connection)
        .await?;
    Ok(Some(NotificationRecord {
        id,
        submitted_by,
        template_key,
        template_version,
        category,
        priority: Priority::from_i16(priority)?,
        metadata,
        created_at,
        deliveries: delivery_rows
            .into_iter()
            .map(delivery_record)
            .collect::<Result<_>>()?,
    }))
}
