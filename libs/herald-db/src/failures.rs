//! The failure record behind the dead-letter queues: listing, replay and discard, audited.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use herald_domain::{Channel, DeliveryId, DeliveryState, NotificationId, Priority};
use uuid::Uuid;

use crate::personal::PersonalText;
use crate::schema::{
    audit_log, deliveries, delivery_events, failures, notifications, outbox, templates,
};
use crate::{Error, Result};

/// A recorded failure.
#[derive(Debug, Clone)]
pub struct FailureRecord {
    /// Its id.
    pub id: Uuid,
    /// The failed delivery.
    pub delivery_id: DeliveryId,
    /// Its notification.
    pub notification_id: NotificationId,
    /// Channel.
    pub channel: Channel,
    /// `permanent`, `exhausted` or `unknown`.
    pub class: String,
    /// `open`, `replayed` or `discarded`.
    pub status: String,
    /// Attempts made when it failed.
    pub attempts: i32,
    /// The last error.
    pub error: String,
    /// The notification's template.
    pub template_key: String,
    /// The notification's priority.
    pub priority: Priority,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// When it was replayed or discarded.
    pub resolved_at: Option<DateTime<Utc>>,
    /// Who replayed or discarded it.
    pub resolved_by: Option<String>,
}

/// Which failures to list. `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct FailureFilter {
    /// Status name.
    pub status: Option<String>,
    /// Channel.
    pub channel: Option<Channel>,
    /// Class name.
    pub class: Option<String>,
    /// One notification's failures.
    pub notification_id: Option<NotificationId>,
    /// Recorded at or after.
    pub since: Option<DateTime<Utc>>,
    /// Keyset cursor: failures strictly older than this `(created_at, id)`.
    pub before: Option<(DateTime<Utc>, Uuid)>,
}

type Row = (
    Uuid,
    Uuid,
    Uuid,
    String,
    String,
    String,
    i32,
    String,
    String,
    i16,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<String>,
);

fn record(row: Row) -> Result<FailureRecord> {
    let (
        id,
        delivery_id,
        notification_id,
        channel,
        class,
        status,
        attempts,
        error,
        template_key,
        priority,
        created_at,
        resolved_at,
        resolved_by,
    ) = row;
    Ok(FailureRecord {
        id,
        delivery_id: delivery_id.into(),
        notification_id: notification_id.into(),
        channel: channel.parse()?,
        class,
        status,
        attempts,
        error,
        template_key,
        priority: Priority::from_i16(priority)?,
        created_at,
        resolved_at,
        resolved_by,
    })
}

macro_rules! failure_query {
    () => {
        failures::table
            .inner_join(notifications::table.inner_join(templates::table))
            .select((
                failures::id,
                failures::delivery_id,
                failures::notification_id,
                failures::channel,
                failures::error_class,
                failures::status,
                failures::attempts,
                failures::error,
                templates::key,
                notifications::priority,
                failures::created_at,
                failures::resolved_at,
                failures::resolved_by,
            ))
    };
}

/// Up to `limit` failures matching `filter`, newest first.
pub async fn list(
    connection: &mut AsyncPgConnection,
    filter: &FailureFilter,
    limit: i64,
) -> Result<Vec<FailureRecord>> {
    let mut query = failure_query!()
        .order((failures::created_at.desc(), failures::id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some(status) = &filter.status {
        query = query.filter(failures::status.eq(status.clone()));
    }
    if let Some(channel) = filter.channel {
        query = query.filter(failures::channel.eq(channel.as_str()));
    }
    if let Some(class) = &filter.class {
        query = query.filter(failures::error_class.eq(class.clone()));
    }
    if let Some(notification_id) = filter.notification_id {
        query = query.filter(failures::notification_id.eq(*notification_id.as_uuid()));
    }
    if let Some(since) = filter.since {
        query = query.filter(failures::created_at.ge(since));
    }
    if let Some((created_at, id)) = filter.before {
        query = query.filter(
            failures::created_at
                .lt(created_at)
                .or(failures::created_at.eq(created_at).and(failures::id.lt(id))),
        );
    }
    query
        .load::<Row>(connection)
        .await?
        .into_iter()
        .map(record)
        .collect()
}

/// One failure.
pub async fn get(connection: &mut AsyncPgConnection, id: Uuid) -> Result<Option<FailureRecord>> {
    failure_query!()
        .filter(failures::id.eq(id))
        .first::<Row>(connection)
        .await
        .optional()?
        .map(record)
        .transpose()
}

/// One event of a delivery's history.
#[derive(Debug, Clone)]
pub struct HistoryEvent {
    /// Event kind (`sending`, `retry_wait`, `failed`, …).
    pub kind: String,
    /// Attempt number.
    pub attempt: i32,
    /// Provider, when one was called.
    pub provider: Option<String>,
    /// Error class of failed attempts.
    pub error_class: Option<String>,
    /// Detail (a provider's answer may hold personal data).
    pub detail: PersonalText,
    /// When.
    pub occurred_at: DateTime<Utc>,
}

/// The delivery's events, oldest first.
pub async fn history(
    connection: &mut AsyncPgConnection,
    delivery_id: DeliveryId,
) -> Result<Vec<HistoryEvent>> {
    Ok(delivery_events::table
        .filter(delivery_events::delivery_id.eq(delivery_id.as_uuid()))
        .order(delivery_events::id.asc())
        .select((
            delivery_events::kind,
            delivery_events::attempt,
            delivery_events::provider,
            delivery_events::error_class,
            delivery_events::detail,
            delivery_events::occurred_at,
        ))
        .load::<(
            String,
            i32,
            Option<String>,
            Option<String>,
            PersonalText,
            DateTime<Utc>,
        )>(connection)
        .await?
        .into_iter()
        .map(
            |(kind, attempt, provider, error_class, detail, occurred_at)| HistoryEvent {
                kind,
                attempt,
                provider,
                error_class,
                detail,
                occurred_at,
            },
        )
        .collect())
}

/// What resolving one failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Replayed or discarded now.
    Done,
    /// It had been replayed before; nothing changed.
    AlreadyReplayed,
    /// It had been discarded before; nothing changed.
    AlreadyDiscarded,
    /// No such failure.
    NotFound,
    /// Not replayed: retention or the user's erase cleared the delivery's personal data (its
    /// address, the notification's parameters), so it can no longer be sent. Nothing changed;
    /// discard it instead.
    PersonalDataCleared,
}

/// Replays failure `id`: in one transaction, marks it replayed by `actor`, starts a new attempt
/// cycle for its delivery (state `pending`, a fresh retry budget), queues it through the
/// outbox and writes the audit entry. Repeating it changes nothing.
pub async fn replay(
    connection: &mut AsyncPgConnection,
    id: Uuid,
    actor: &str,
    reason: &str,
) -> Result<Resolution> {
    resolve(connection, id, actor, reason, Action::Replay).await
}

/// Discards failure `id` (no send), audited. Repeating it changes nothing.
pub async fn discard(
    connection: &mut AsyncPgConnection,
    id: Uuid,
    actor: &str,
    reason: &str,
) -> Result<Resolution> {
    resolve(connection, id, actor, reason, Action::Discard).await
}

#[derive(Clone, Copy)]
enum Action {
    Replay,
    Discard,
}

async fn resolve(
    connection: &mut AsyncPgConnection,
    id: Uuid,
    actor: &str,
    reason: &str,
    action: Action,
) -> Result<Resolution> {
    connection
        .transaction::<_, Error, _>(async |connection| {
            let Some((status, delivery_id, notification_id, channel)) = failures::table
                .filter(failures::id.eq(id))
                .select((
                    failures::status,
                    failures::delivery_id,
                    failures::notification_id,
                    failures::channel,
                ))
                .for_update()
                .first::<(String, Uuid, Uuid, String)>(connection)
                .await
                .optional()?
            else {
                return Ok(Resolution::NotFound);
            };
            match status.as_str() {
                "replayed" => return Ok(Resolution::AlreadyReplayed),
                "discarded" => return Ok(Resolution::AlreadyDiscarded),
                _ => {}
            }
            if let Action::Replay = action {
                // Locked, so retention cannot clear it between this look and the requeue.
                let cleared = deliveries::table
                    .find(delivery_id)
                    .select(deliveries::personal_cleared_at.is_not_null())
                    .for_no_key_update()
                    .first::<bool>(connection)
                    .await?;
                if cleared {
                    return Ok(Resolution::PersonalDataCleared);
                }
            }
            let now = Utc::now();
            let (new_status, action_name) = match action {
                Action::Replay => ("replayed", "failure.replay"),
                Action::Discard => ("discarded", "failure.discard"),
            };
            diesel::update(failures::table.filter(failures::id.eq(id)))
                .set((
                    failures::status.eq(new_status),
                    failures::resolved_at.eq(now),
                    failures::resolved_by.eq(actor),
                ))
                .execute(connection)
                .await?;
            if let Action::Replay = action {
                let replay = Replay {
                    delivery_id,
                    notification_id,
                    channel: &channel,
                    actor,
                    reason,
                };
                replay.requeue(connection, now).await?;
            }
            diesel::insert_into(audit_log::table)
                .values((
                    audit_log::actor.eq(actor),
                    audit_log::action.eq(action_name),
                    audit_log::target.eq(id.to_string()),
                    audit_log::detail.eq(serde_json::json!({
                        "reason": reason,
                        "delivery_id": delivery_id,
                        "notification_id": notification_id,
                    })),
                ))
                .execute(connection)
                .await?;
            Ok(Resolution::Done)
        })
        .await
}

/// The delivery of a failure an operator replays.
struct Replay<'a> {
    delivery_id: Uuid,
    notification_id: Uuid,
    channel: &'a str,
    actor: &'a str,
    reason: &'a str,
}

impl Replay<'_> {
    /// Puts the delivery back to `pending` with a fresh attempt budget, a `replayed` event and
    /// an outbox row, if it is still failed or unknown and keeps its personal data (else
    /// nothing: it was replayed already, or cleared).
    async fn requeue(&self, connection: &mut AsyncPgConnection, now: DateTime<Utc>) -> Result<()> {
        let final_states = [
            DeliveryState::Failed.as_str(),
            DeliveryState::Unknown.as_str(),
        ];
        let attempts = diesel::update(
            deliveries::table
                .filter(deliveries::id.eq(self.delivery_id))
                .filter(deliveries::state.eq_any(final_states))
                .filter(deliveries::personal_cleared_at.is_null()),
        )
        .set((
            deliveries::state.eq(DeliveryState::Pending.as_str()),
            deliveries::attempts_base.eq(deliveries::attempts),
            deliveries::lease_until.eq(None::<DateTime<Utc>>),
            deliveries::updated_at.eq(now),
        ))
        .returning(deliveries::attempts)
        .get_result::<i32>(connection)
        .await
        .optional()?;
        if let Some(attempts) = attempts {
            let priority = notifications::table
                .find(self.notification_id)
                .select(notifications::priority)
                .first::<i16>(connection)
                .await?;
            let detail = format!("by {}: {}", self.actor, self.reason);
            crate::events::insert(
                connection,
                &[crate::events::NewEvent {
                    delivery_id: self.delivery_id,
                    kind: "replayed",
                    attempt: attempts,
                    detail: &detail,
                    notification_id: Some(self.notification_id),
                    channel: Some(self.channel),
                    ..crate::events::NewEvent::default()
                }],
            )
            .await?;
            diesel::insert_into(outbox::table)
                .values((
                    outbox::delivery_id.eq(self.delivery_id),
                    outbox::notification_id.eq(self.notification_id),
                    outbox::channel.eq(self.channel),
                    outbox::priority.eq(priority),
                ))
                .execute(connection)
                .await?;
        }
        Ok(())
    }
}
