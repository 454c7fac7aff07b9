//! Delivery events: the one place every `delivery_events` row is written, each also emitted
//! as a tracing event with target [`TRACKING_TARGET`] (which telemetry bridges to OTel log
//! records), plus idempotent engagement events and the per-notification event listing.
//!
//! Kinds, in the order a delivery meets them: `accepted`, `scheduled`, `suppressed`,
//! `queued`, `sending`, `sent`, `delivered` | `retry_wait` | `failed` | `unknown` (and
//! `replayed` when an operator replays a failure), then the engagement kinds `opened`, `clicked`, `read`, `dismissed` (see ARCHITECTURE.md).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use herald_domain::{DeliveryId, NotificationId};
use uuid::Uuid;

use crate::Result;
use crate::personal::{PersonalStr, PersonalText};
use crate::schema::{deliveries, delivery_events};
use crate::statement::planned_per_run;

/// The tracing target every stored event is emitted under (defined by `herald-telemetry`,
/// which bridges it to OpenTelemetry log records).
pub use herald_domain::TRACKING_TARGET;

/// One event to store. `notification_id` and `channel` are only emitted with the tracing
/// event (the row joins them through the delivery); give them when at hand.
#[derive(Debug, Clone, Default)]
pub struct NewEvent<'a> {
    /// The delivery.
    pub delivery_id: Uuid,
    /// The event's kind (see the module docs).
    pub kind: &'a str,
    /// The delivery's attempt counter when it happened (0 before the first attempt).
    pub attempt: i32,
    /// A summary free of personal data.
    pub detail: &'a str,
    /// The provider of the attempt, if any.
    pub provider: Option<&'a str>,
    /// `retryable`, `permanent`, `exhausted`, `unknown` on failures.
    pub error_class: Option<&'a str>,
    /// The delivery's notification, for the tracing event.
    pub notification_id: Option<Uuid>,
    /// The delivery's channel, for the tracing event.
    pub channel: Option<&'a str>,
}

/// Stores `events` (one fixed-shape statement over arrays, whatever their number) and emits
/// each as a tracing event. The emission happens at the write, inside the caller's
/// transaction: if that transaction rolls back, the events were emitted but not kept (the
/// table, not the log, is the record).
pub async fn insert(connection: &mut AsyncPgConnection, events: &[NewEvent<'_>]) -> Result<()> {
    insert_pipelined(connection, events).await
}

/// `insert` on a shared connection, so that it can run concurrently with other statements on
/// the same connection: diesel-async pipelines them (sends them all, then reads the answers).
pub async fn insert_pipelined(
    mut connection: &AsyncPgConnection,
    events: &[NewEvent<'_>],
) -> Result<()> {
    use diesel::sql_types::{Array, Bytea, Int4, Nullable, Text, Uuid as SqlUuid};
    if events.is_empty() {
        return Ok(());
    }
    crate::statement::Statement::new(
        "INSERT INTO delivery_events (delivery_id, kind, attempt, detail, provider, error_class) \
         SELECT * FROM unnest(?::uuid[], ?::text[], ?::int4[], ?::bytea[], ?::text[], \
             ?::text[])",
    )
    .bind::<Array<SqlUuid>, _>(
        events
            .iter()
            .map(|event| event.delivery_id)
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Text>, _>(events.iter().map(|event| event.kind).collect::<Vec<_>>())
    .bind::<Array<Int4>, _>(events.iter().map(|event| event.attempt).collect::<Vec<_>>())
    .bind::<Array<Bytea>, _>(
        events
            .iter()
            .map(|event| PersonalStr(event.detail))
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(
        events
            .iter()
            .map(|event| event.provider)
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(
        events
            .iter()
            .map(|event| event.error_class)
            .collect::<Vec<_>>(),
    )
    .execute(&mut connection)
    .await?;
    for event in events {
        emit(event);
    }
    Ok(())
}

/// The tracing event of a stored delivery event: ids, kind, channel and provider only, never
/// addresses, parameters or links.
fn emit(event: &NewEvent<'_>) {
    tracing::event!(
        target: TRACKING_TARGET,
        tracing::Level::INFO,
        delivery.id = %event.delivery_id,
        event.kind = event.kind,
        notification.id = event.notification_id.map(tracing::field::display),
        channel = event.channel,
        provider = event.provider,
        attempt = event.attempt,
        error.class = event.error_class,
        "Delivery event."
    );
}

/// What a user did with a delivered notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngagementKind {
    /// The message was displayed (email: the open pixel loaded).
    Opened,
    /// A link or action in it was followed.
    Clicked,
    /// The user marked it read.
    Read,
    /// The user dismissed it (the inbox's archive).
    Dismissed,
}

impl EngagementKind {
    /// Every engagement kind.
    pub const ALL: [Self; 4] = [Self::Opened, Self::Clicked, Self::Read, Self::Dismissed];

    /// The stored kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::Clicked => "clicked",
            Self::Read => "read",
            Self::Dismissed => "dismissed",
        }
    }
}

/// One engagement to record once.
#[derive(Debug, Clone)]
pub struct Engagement {
    /// The delivery engaged with.
    pub delivery_id: DeliveryId,
    /// What happened.
    pub kind: EngagementKind,
    /// What makes this event the same as an earlier one: a second event with the same
    /// delivery, kind and key is not stored again.
    pub dedupe_key: String,
    /// Stored with the event (a click's link); may contain product data, so never logged.
    pub detail: PersonalText,
}

/// What recording an engagement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Stored now.
    New {
        /// When it was stored.
        occurred_at: DateTime<Utc>,
    },
    /// The same event was stored before; nothing was written.
    Already {
        /// When the first one was stored.
        occurred_at: DateTime<Utc>,
    },
    /// No such delivery.
    UnknownDelivery,
}

/// Records `engagement` at most once per (delivery, kind, dedupe key): the insert is an
/// `ON CONFLICT DO NOTHING` against the unique index `delivery_events_dedupe`, so concurrent
/// duplicates store exactly one row, without a read-then-write race.
///
/// A delivery whose personal data was cleared (retention, or its user's erase) records the
/// engagement without its detail. The delivery is read `FOR SHARE`, which waits for an erase
/// or a retention batch holding it: an engagement either sees the delivery cleared, or is
/// committed before the clearing empties its detail.
pub async fn record_engagement(
    connection: &mut AsyncPgConnection,
    engagement: &Engagement,
) -> Result<Recorded> {
    connection
        .transaction::<_, crate::Error, _>(async |connection| {
            let delivery = deliveries::table
                .find(engagement.delivery_id.as_uuid())
                .select((
                    deliveries::notification_id,
                    deliveries::channel,
                    deliveries::attempts,
                    deliveries::personal_cleared_at.is_not_null(),
                ))
                .for_share()
                .first::<(Uuid, String, i32, bool)>(connection)
                .await
                .optional()?;
            let Some((notification_id, channel, attempts, cleared)) = delivery else {
                return Ok(Recorded::UnknownDelivery);
            };
            let detail = if cleared {
                PersonalText::default()
            } else {
                engagement.detail.clone()
            };
            let kind = engagement.kind.as_str();
            let inserted = diesel::insert_into(delivery_events::table)
                .values((
                    delivery_events::delivery_id.eq(engagement.delivery_id.as_uuid()),
                    delivery_events::kind.eq(kind),
                    delivery_events::attempt.eq(attempts),
                    delivery_events::detail.eq(&detail),
                    delivery_events::dedupe_key.eq(&engagement.dedupe_key),
                ))
                .on_conflict_do_nothing()
                .returning(delivery_events::occurred_at)
                .get_result::<DateTime<Utc>>(connection)
                .await
                .optional()?;
            if let Some(occurred_at) = inserted {
                emit(&NewEvent {
                    delivery_id: *engagement.delivery_id.as_uuid(),
                    kind,
                    attempt: attempts,
                    notification_id: Some(notification_id),
                    channel: Some(&channel),
                    ..NewEvent::default()
                });
                return Ok(Recorded::New { occurred_at });
            }
            let occurred_at = delivery_events::table
                .filter(delivery_events::delivery_id.eq(engagement.delivery_id.as_uuid()))
                .filter(delivery_events::kind.eq(kind))
                .filter(delivery_events::dedupe_key.eq(&engagement.dedupe_key))
                .select(delivery_events::occurred_at)
                .first::<DateTime<Utc>>(connection)
                .await?;
            Ok(Recorded::Already { occurred_at })
        })
        .await
}

/// The dedupe key of engagements that happen at most once per delivery (`opened`, `read`,
/// `dismissed`), whichever path records them (pixel, inbox, `TrackingService`).
pub const ONCE: &str = "once";

/// Records `kind` once for each of `delivery_ids` (dedupe key [`ONCE`]); deliveries that have
/// it already, or do not exist, are left as they are. Returns the deliveries it recorded.
pub async fn record_once(
    connection: &mut AsyncPgConnection,
    kind: EngagementKind,
    delivery_ids: &[Uuid],
) -> Result<Vec<Uuid>> {
    let targets = planned_per_run(
        deliveries::table
            .filter(deliveries::id.eq_any(delivery_ids))
            .select((
                deliveries::id,
                deliveries::notification_id,
                deliveries::channel,
                deliveries::attempts,
            )),
    )
    .load::<(Uuid, Uuid, String, i32)>(connection)
    .await?;
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<_> = targets
        .iter()
        .map(|(delivery_id, _, _, attempts)| {
            (
                delivery_events::delivery_id.eq(*delivery_id),
                delivery_events::kind.eq(kind.as_str()),
                delivery_events::attempt.eq(*attempts),
                delivery_events::detail.eq(PersonalText::default()),
                delivery_events::dedupe_key.eq(ONCE),
            )
        })
        .collect();
    let recorded: Vec<Uuid> = diesel::insert_into(delivery_events::table)
        .values(&rows)
        .on_conflict_do_nothing()
        .returning(delivery_events::delivery_id)
        .get_results(connection)
        .await?;
    for (delivery_id, notification_id, channel, attempts) in &targets {
        if recorded.contains(delivery_id) {
            emit(&NewEvent {
                delivery_id: *delivery_id,
                kind: kind.as_str(),
                attempt: *attempts,
                notification_id: Some(*notification_id),
                channel: Some(channel),
                ..NewEvent::default()
            });
        }
    }
    Ok(recorded)
}

/// One stored event of a notification's delivery.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct StoredEvent {
    /// The delivery.
    #[diesel(deserialize_as = Uuid)]
    pub delivery_id: DeliveryId,
    /// The delivery's channel.
    pub channel: String,
    /// The event's kind.
    pub kind: String,
    /// When it was stored.
    pub occurred_at: DateTime<Utc>,
    /// The delivery's attempt counter then.
    pub attempt: i32,
    /// The attempt's provider, if any.
    pub provider: Option<String>,
    /// The failure class, if any.
    pub error_class: Option<String>,
    /// The stored summary (a click's link, a provider's answer).
    pub detail: PersonalText,
}

/// Every event of every delivery of `notification_id`, ordered by delivery (recipient order,
/// then channel) and then oldest first; `None` when the notification does not exist, or was
/// not submitted by `submitted_by` when one is given (a caller sees only its own).
pub async fn for_notification(
    connection: &mut AsyncPgConnection,
    notification_id: NotificationId,
    submitted_by: Option<&str>,
) -> Result<Option<Vec<StoredEvent>>> {
    use crate::schema::notifications;
    let mut notification = notifications::table
        .filter(notifications::id.eq(notification_id.as_uuid()))
        .into_boxed();
    if let Some(submitted_by) = submitted_by {
        notification = notification.filter(notifications::submitted_by.eq(submitted_by));
    }
    let exists = diesel::select(diesel::dsl::exists(notification))
        .get_result::<bool>(connection)
        .await?;
    if !exists {
        return Ok(None);
    }
    let events = delivery_events::table
        .inner_join(deliveries::table)
        .filter(deliveries::notification_id.eq(notification_id.as_uuid()))
        .order((
            deliveries::recipient_index.asc(),
            deliveries::channel.asc(),
            delivery_events::id.asc(),
        ))
        .select((
            delivery_events::delivery_id,
            deliveries::channel,
            delivery_events::kind,
            delivery_events::occurred_at,
            delivery_events::attempt,
            delivery_events::provider,
            delivery_events::error_class,
            delivery_events::detail,
        ))
        .load::<StoredEvent>(connection)
        .await?;
    Ok(Some(events))
}
