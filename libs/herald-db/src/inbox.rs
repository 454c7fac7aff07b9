//! The in-app inbox: items the in-app channel stores for a user, read and archived through
//! `InboxService`. Reading and archiving are tracking events: each item that actually changes
//! gets a `delivery_events` row (`read` / `dismissed`, recorded once per delivery through
//! `events::record_once`) in the same transaction as its new state.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use herald_domain::{DeliveryId, NotificationId};
use uuid::Uuid;

use crate::events::EngagementKind;
use crate::personal::PersonalText;
use crate::schema::inbox_items;
use crate::{Error, Result};

/// One item in a user's inbox. Title, body and action URL are personal data (`expose` them
/// to show them to the user; `Debug` does not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxItem {
    /// The item (UUID v7).
    pub id: Uuid,
    /// The product's user id.
    pub user_id: String,
    /// The in-app delivery that stored it (one item per delivery).
    pub delivery_id: DeliveryId,
    /// Its notification.
    pub notification_id: NotificationId,
    /// The notification's category.
    pub category: String,
    /// Rendered title.
    pub title: PersonalText,
    /// Rendered body.
    pub body: PersonalText,
    /// Rendered action URL (may be empty).
    pub action_url: PersonalText,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// When the user read it.
    pub read_at: Option<DateTime<Utc>>,
    /// When the user archived it.
    pub archived_at: Option<DateTime<Utc>>,
}

#[derive(Queryable, QueryableByName, Selectable)]
#[diesel(table_name = inbox_items)]
struct Row {
    id: Uuid,
    user_id: String,
    delivery_id: Uuid,
    notification_id: Uuid,
    category: String,
    title: PersonalText,
    body: PersonalText,
    action_url: PersonalText,
    created_at: DateTime<Utc>,
    read_at: Option<DateTime<Utc>>,
    archived_at: Option<DateTime<Utc>>,
}

impl From<Row> for InboxItem {
    fn from(row: Row) -> Self {
        Self {
            id: row.id,
            user_id: row.user_id,
            delivery_id: row.delivery_id.into(),
            notification_id: row.notification_id.into(),
            category: row.category,
            title: row.title,
            body: row.body,
            action_url: row.action_url,
            created_at: row.created_at,
            read_at: row.read_at,
            archived_at: row.archived_at,
        }
    }
}

/// What the in-app channel stores for one delivery.
#[derive(Clone, Copy)]
pub struct NewInboxItem<'a> {
    /// The product's user id.
    pub user_id: &'a str,
    /// The delivery.
    pub delivery_id: DeliveryId,
    /// Its notification.
    pub notification_id: NotificationId,
    /// The notification's category.
    pub category: &'a str,
    /// Rendered title.
    pub title: &'a str,
    /// Rendered body.
    pub body: &'a str,
    /// Rendered action URL (may be empty).
    pub action_url: &'a str,
}

/// Stores `item` while its delivery is being sent to its user: `Some` with the new item,
/// `None` when nothing was written, because the delivery has its item already (a redelivered
/// or retried attempt) or is no longer being sent to that user (the user was erased meanwhile).
///
/// The delivery is read `FOR SHARE` in the same statement, which waits for an erase holding
/// it: an item is either stored before the erase deletes the user's items, or not at all.
pub async fn insert(
    connection: &mut AsyncPgConnection,
    item: &NewInboxItem<'_>,
) -> Result<Option<InboxItem>> {
    use diesel::sql_types::{Bytea, Text, Uuid as SqlUuid};
    Ok(crate::statement::Statement::new(
        "INSERT INTO inbox_items \
             (id, user_id, delivery_id, notification_id, category, title, body, action_url) \
         SELECT ?::uuid, deliveries.user_id, deliveries.id, ?::uuid, ?::text, ?::bytea, \
             ?::bytea, ?::bytea \
         FROM deliveries \
         WHERE deliveries.id = ?::uuid AND deliveries.user_id = ?::text \
             AND deliveries.state = 'sending' \
         FOR SHARE OF deliveries \
         ON CONFLICT (delivery_id) DO NOTHING \
         RETURNING id, user_id, delivery_id, notification_id, category, title, body, \
             action_url, created_at, read_at, archived_at",
    )
    .bind::<SqlUuid, _>(Uuid::now_v7())
    .bind::<SqlUuid, _>(*item.notification_id.as_uuid())
    .bind::<Text, _>(item.category)
    .bind::<Bytea, _>(PersonalText::from(item.title))
    .bind::<Bytea, _>(PersonalText::from(item.body))
    .bind::<Bytea, _>(PersonalText::from(item.action_url))
    .bind::<SqlUuid, _>(*item.delivery_id.as_uuid())
    .bind::<Text, _>(item.user_id)
    .get_result::<Row>(connection)
    .await
    .optional()?
    .map(InboxItem::from))
}

/// Which of a user's items `list` returns.
#[derive(Debug, Clone, Default)]
pub struct InboxQuery {
    /// Only items not read yet.
    pub unread_only: bool,
    /// Archived items too.
    pub include_archived: bool,
    /// Keyset cursor: items strictly older than this `(created_at, id)`.
    pub before: Option<(DateTime<Utc>, Uuid)>,
    /// Most items returned.
    pub limit: i64,
}

/// `user_id`'s items matching `query`, newest first (by `created_at`, then `id`).
pub async fn list(
    connection: &mut AsyncPgConnection,
    user_id: &str,
    query: &InboxQuery,
) -> Result<Vec<InboxItem>> {
    let mut select = inbox_items::table
        .filter(inbox_items::user_id.eq(user_id))
        .order((inbox_items::created_at.desc(), inbox_items::id.desc()))
        .limit(query.limit)
        .select(Row::as_select())
        .into_boxed();
    if query.unread_only {
        select = select.filter(inbox_items::read_at.is_null());
    }
    if !query.include_archived {
        select = select.filter(inbox_items::archived_at.is_null());
    }
    if let Some((created_at, id)) = query.before {
        select = select.filter(
            inbox_items::created_at
                .lt(created_at)
                .or(inbox_items::created_at
                    .eq(created_at)
                    .and(inbox_items::id.lt(id))),
        );
    }
    Ok(select
        .load::<Row>(connection)
        .await?
        .into_iter()
        .map(InboxItem::from)
        .collect())
}

/// `user_id`'s items among `ids`, oldest first; ids of other users' items are left out.
pub async fn find(
    connection: &mut AsyncPgConnection,
    user_id: &str,
    ids: &[Uuid],
) -> Result<Vec<InboxItem>> {
    Ok(inbox_items::table
        .filter(inbox_items::user_id.eq(user_id))
        .filter(inbox_items::id.eq_any(ids))
        .order((inbox_items::created_at.asc(), inbox_items::id.asc()))
        .select(Row::as_select())
        .load::<Row>(connection)
        .await?
        .into_iter()
        .map(InboxItem::from)
        .collect())
}

/// How many of `user_id`'s items are unread: neither read nor archived.
pub async fn unread_count(connection: &mut AsyncPgConnection, user_id: &str) -> Result<i64> {
    Ok(inbox_items::table
        .filter(inbox_items::user_id.eq(user_id))
        .filter(inbox_items::read_at.is_null())
        .filter(inbox_items::archived_at.is_null())
        .count()
        .get_result(connection)
        .await?)
}

/// What `mark_read` or `archive` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// The items whose state changed, sorted (possibly none: a repeated call changes nothing).
    Items(Vec<Uuid>),
    /// This id is not one of the user's items; nothing was changed.
    NotFound(Uuid),
}

/// A state change and the tracking event it records.
#[derive(Debug, Clone, Copy)]
enum Change {
    Read,
    Archive,
}

impl Change {
    fn event_kind(self) -> EngagementKind {
        match self {
            Self::Read => EngagementKind::Read,
            Self::Archive => EngagementKind::Dismissed,
        }
    }
}

/// Marks `user_id`'s items `ids` read. Items already read stay as they are and record
/// nothing; an id that is not the user's changes nothing at all.
pub async fn mark_read(
    connection: &mut AsyncPgConnection,
    user_id: &str,
    ids: &[Uuid],
) -> Result<Changed> {
    change(connection, user_id, Some(ids), Change::Read).await
}

/// Archives `user_id`'s items `ids`, like `mark_read`.
pub async fn archive(
    connection: &mut AsyncPgConnection,
    user_id: &str,
    ids: &[Uuid],
) -> Result<Changed> {
    change(connection, user_id, Some(ids), Change::Archive).await
}

/// Marks every unread item of `user_id` (not archived) read; returns those it changed, sorted.
pub async fn mark_all_read(connection: &mut AsyncPgConnection, user_id: &str) -> Result<Vec<Uuid>> {
    match change(connection, user_id, None, Change::Read).await? {
        Changed::Items(ids) => Ok(ids),
        Changed::NotFound(_) => Ok(Vec::new()),
    }
}

/// Applies `change` to `ids` (every unread item when `None`) and records one tracking event per
/// item that changed, with its delivery's current attempt number, in one transaction.
/// Concurrent calls are safe: the `WHERE … IS NULL` of the update is re-checked under the row
/// lock, so only one of them changes (and records) a given item.
async fn change(
    connection: &mut AsyncPgConnection,
    user_id: &str,
    ids: Option<&[Uuid]>,
    change: Change,
) -> Result<Changed> {
    connection
        .transaction::<_, Error, _>(async |connection| {
            if let Some(ids) = ids {
                let owned: Vec<Uuid> = inbox_items::table
                    .filter(inbox_items::user_id.eq(user_id))
                    .filter(inbox_items::id.eq_any(ids))
                    .select(inbox_items::id)
                    .load(connection)
                    .await?;
                if let Some(missing) = ids.iter().find(|id| !owned.contains(id)) {
                    return Ok(Changed::NotFound(*missing));
                }
            }
            let mut target = diesel::update(inbox_items::table)
                .filter(inbox_items::user_id.eq(user_id))
                .into_boxed();
            if let Some(ids) = ids {
                target = target.filter(inbox_items::id.eq_any(ids));
            }
            let now = Utc::now();
            let updated: Vec<(Uuid, Uuid)> = match change {
                Change::Read => {
                    if ids.is_none() {
                        target = target.filter(inbox_items::archived_at.is_null());
                    }
                    target
                        .filter(inbox_items::read_at.is_null())
                        .set(inbox_items::read_at.eq(now))
                        .returning((inbox_items::id, inbox_items::delivery_id))
                        .load(connection)
                        .await?
                }
                Change::Archive => {
                    target
                        .filter(inbox_items::archived_at.is_null())
                        .set(inbox_items::archived_at.eq(now))
                        .returning((inbox_items::id, inbox_items::delivery_id))
                        .load(connection)
                        .await?
                }
            };
            if !updated.is_empty() {
                let delivery_ids: Vec<Uuid> =
                    updated.iter().map(|(_, delivery)| *delivery).collect();
                crate::events::record_once(connection, change.event_kind(), &delivery_ids).await?;
            }
            let mut changed: Vec<Uuid> = updated.into_iter().map(|(id, _)| id).collect();
            changed.sort_unstable();
            Ok(Changed::Items(changed))
        })
        .await
}
