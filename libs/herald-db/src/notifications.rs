//! Notifications, their deliveries and outbox rows, written in one transaction.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use herald_domain::{Channel, DeliveryId, DeliveryState, NotificationId, Priority, TemplateId};
use uuid::Uuid;

use crate::personal::{PersonalJson, PersonalText};
use crate::schema::{deliveries, idempotency_keys, notifications, templates};
use crate::{Error, Result};

mod rows;

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
    pub parameters: PersonalJson,
    /// Caller metadata.
    pub metadata: PersonalJson,
    /// W3C trace context to carry to the workers.
    pub trace_context: HashMap<String, String>,
    /// When it was accepted, by the service's clock: deliveries sent now become due for the
    /// relay at this instant, on the same clock the relay and quiet hours use.
    pub accepted_at: DateTime<Utc>,
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
    pub address: Option<PersonalText>,
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

/// What `insert_batch` did with one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// A new notification was stored.
    Created,
    /// The caller's idempotency key is bound to another notification (stored earlier, or
    /// earlier in the same batch); nothing was written for this one. The caller compares
    /// `request_hash` with its own to tell a replay from a conflicting reuse of the key.
    KeyExists {
        /// The notification the key is bound to.
        notification_id: NotificationId,
        /// The request hash stored with the binding.
        request_hash: Vec<u8>,
    },
}

/// Stores one notification: `insert_batch` with a batch of one.
pub async fn insert(connection: &mut AsyncPgConnection, new: &NewNotification) -> Result<Inserted> {
    let mut inserted = insert_batch(connection, std::slice::from_ref(new)).await?;
    inserted
        .pop()
        .ok_or_else(|| Error::Corrupt("a batch of one gave no answer".into()))
}

/// Stores `batch` in one transaction: each notification, its deliveries (`pending`,
/// `scheduled` or `suppressed`), an `accepted` event per delivery (and a `scheduled` or
/// `suppressed` one), and an outbox row per delivery to send (whose insert wakes the relays at commit,
/// through the `outbox_added` trigger). Returns one answer per notification, in
/// order.
///
/// Every statement is fixed-shape over arrays (`unnest`), so one statement serves any batch
/// size. Idempotency keys are claimed first, in one `INSERT … ON CONFLICT` sorted by key (so
/// concurrent batches lock keys in the same order): a key with a live binding, or one used
/// earlier in the same batch, answers `Inserted::KeyExists` and writes nothing. A concurrent
/// batch claiming the same key waits for this one's commit, then sees the binding.
///
/// Any error fails the whole batch and writes nothing; the caller retries the items one by
/// one to find the bad one.
pub async fn insert_batch(
    connection: &mut AsyncPgConnection,
    batch: &[NewNotification],
) -> Result<Vec<Inserted>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    connection
        .transaction::<_, Error, _>(async |connection| {
            let answers = claim_idempotency_keys(connection, batch).await?;
            let created: Vec<&NewNotification> = batch
                .iter()
                .zip(&answers)
                .filter(|(_, answer)| **answer == Inserted::Created)
                .map(|(new, _)| new)
                .collect();
            if !created.is_empty() {
                rows::insert_rows(connection, &created).await?;
            }
            Ok(answers)
        })
        .await
}

/// Claims the batch's idempotency keys and answers `Created` for every notification that
/// may be written (no key, or its key now bound to it) and `KeyExists` for the others.
async fn claim_idempotency_keys(
    connection: &mut AsyncPgConnection,
    batch: &[NewNotification],
) -> Result<Vec<Inserted>> {
    use diesel::sql_types::{Array, Bytea, Text, Timestamptz, Uuid as SqlUuid};
    // The first use of each (caller, key) in the batch claims it; later ones follow it.
    let mut first_use: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (index, new) in batch.iter().enumerate() {
        if let Some(key) = &new.idempotency_key {
            first_use
                .entry((new.submitted_by.as_str(), key.as_str()))
                .or_insert(index);
        }
    }
    if first_use.is_empty() {
        return Ok(vec![Inserted::Created; batch.len()]);
    }
    let now = Utc::now();
    // One retention for the batch: every item of a batch comes from one service's settings.
    let retention = batch
        .iter()
        .map(|new| new.idempotency_retention)
        .max()
        .unwrap_or_default();
    let expires_at = now + chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    // BTreeMap order: sorted by (caller, key), the lock order every batch follows.
    let callers: Vec<&str> = first_use.keys().map(|(caller, _)| *caller).collect();
    let keys: Vec<&str> = first_use.keys().map(|(_, key)| *key).collect();
    let hashes: Vec<&[u8]> = first_use
        .values()
        .map(|index| batch[*index].request_hash.as_slice())
        .collect();
    let ids: Vec<Uuid> = first_use
        .values()
        .map(|index| *batch[*index].id.as_uuid())
        .collect();
    // diesel's DSL has no `INSERT … SELECT FROM unnest … ON CONFLICT … DO UPDATE … WHERE`.
    // An expired binding is replaced; a live one is left alone (and locked until commit).
    let claimed: Vec<ClaimedKey> = crate::statement::Statement::new(
        "INSERT INTO idempotency_keys \
             (submitted_by, key, request_hash, notification_id, created_at, expires_at) \
         SELECT submitted_by, key, request_hash, notification_id, ?::timestamptz, \
                ?::timestamptz \
           FROM unnest(?::text[], ?::text[], ?::bytea[], ?::uuid[]) \
                AS claim(submitted_by, key, request_hash, notification_id) \
         ON CONFLICT (submitted_by, key) DO UPDATE SET \
             request_hash = EXCLUDED.request_hash, \
             notification_id = EXCLUDED.notification_id, \
             created_at = EXCLUDED.created_at, \
             expires_at = EXCLUDED.expires_at \
         WHERE idempotency_keys.expires_at <= EXCLUDED.created_at \
         RETURNING notification_id",
    )
    .bind::<Timestamptz, _>(now)
    .bind::<Timestamptz, _>(expires_at)
    .bind::<Array<Text>, _>(&callers)
    .bind::<Array<Text>, _>(&keys)
    .bind::<Array<Bytea>, _>(&hashes)
    .bind::<Array<SqlUuid>, _>(&ids)
    .load(connection)
    .await?;
    let won: HashSet<Uuid> = claimed
        .into_iter()
        .map(|claim| claim.notification_id)
        .collect();
    answers_after_claim(connection, batch, &first_use, &won).await
}

/// One answer per item once `won` holds the notifications whose keys the claim bound: `Created`
/// for those and for items without a key, `KeyExists` with the standing binding (read under
/// the claim's locks) for the others.
async fn answers_after_claim(
    connection: &mut AsyncPgConnection,
    batch: &[NewNotification],
    first_use: &BTreeMap<(&str, &str), usize>,
    won: &HashSet<Uuid>,
) -> Result<Vec<Inserted>> {
    use diesel::sql_types::{Array, Text};
    let callers: Vec<&str> = first_use.keys().map(|(caller, _)| *caller).collect();
    let keys: Vec<&str> = first_use.keys().map(|(_, key)| *key).collect();
    // Every keyed item claimed its key: nothing to look up.
    let keyed = batch
        .iter()
        .filter(|new| new.idempotency_key.is_some())
        .count();
    if won.len() == keyed {
        return Ok(vec![Inserted::Created; batch.len()]);
    }
    // The bindings of every key this batch did not win, read under the locks taken above.
    let bindings: Vec<Binding> = crate::statement::Statement::new(
        "SELECT submitted_by, key, notification_id, request_hash FROM idempotency_keys \
         WHERE (submitted_by, key) IN \
               (SELECT * FROM unnest(?::text[], ?::text[]))",
    )
    .bind::<Array<Text>, _>(&callers)
    .bind::<Array<Text>, _>(&keys)
    .load(connection)
    .await?;
    let bindings: HashMap<(&str, &str), &Binding> = bindings
        .iter()
        .map(|binding| {
            (
                (binding.submitted_by.as_str(), binding.key.as_str()),
                binding,
            )
        })
        .collect();
    batch
        .iter()
        .enumerate()
        .map(|(index, new)| {
            let Some(key) = &new.idempotency_key else {
                return Ok(Inserted::Created);
            };
            let caller_key = (new.submitted_by.as_str(), key.as_str());
            if first_use.get(&caller_key) == Some(&index) && won.contains(new.id.as_uuid()) {
                return Ok(Inserted::Created);
            }
            let binding = bindings.get(&caller_key).ok_or_else(|| {
                Error::Corrupt("an idempotency key neither claimed nor bound".into())
            })?;
            Ok(Inserted::KeyExists {
                notification_id: binding.notification_id.into(),
                request_hash: binding.request_hash.clone(),
            })
        })
        .collect()
}

#[derive(QueryableByName)]
struct ClaimedKey {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    notification_id: Uuid,
}

#[derive(QueryableByName)]
struct Binding {
    #[diesel(sql_type = diesel::sql_types::Text)]
    submitted_by: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    key: String,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    notification_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    request_hash: Vec<u8>,
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
    pub metadata: std::collections::BTreeMap<String, String>,
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
    /// When its personal data was cleared (retention, or its user's erase).
    pub personal_cleared_at: Option<DateTime<Utc>>,
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
    Option<DateTime<Utc>>,
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
        personal_cleared_at,
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
        personal_cleared_at,
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
            PersonalJson,
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
            deliveries::personal_cleared_at,
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
        metadata: crate::string_map(metadata.into_inner()),
        created_at,
        deliveries: delivery_rows
            .into_iter()
            .map(delivery_record)
            .collect::<Result<_>>()?,
    }))
}
