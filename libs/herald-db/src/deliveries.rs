//! What channel workers read and write: an atomic, fenced claim, the context to render, and
//! the outcome.

use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use herald_domain::{Channel, DeliveryId, DeliveryState, NotificationId, Priority};
use uuid::Uuid;

use crate::events::{self, NewEvent};
use crate::schema::{
    deliveries, delivery_events, failures, notifications, template_versions, templates,
};
use crate::{Error, Result};

/// A delivery a worker holds for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The delivery.
    pub delivery_id: DeliveryId,
    /// This attempt's number (1 for the first); every later write is fenced on it.
    pub attempt: i32,
    /// This attempt's number within the current cycle (a replay starts a new cycle).
    pub cycle_attempt: i32,
}

/// What a claim attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The caller holds the delivery for this attempt and may call the provider.
    Claimed(Claim),
    /// The delivery reached a final state (or does not exist): nothing to do, ever.
    Done,
    /// Another worker holds an unexpired lease; look again after `retry_after`.
    Busy {
        /// Time left on the other worker's lease.
        retry_after: Duration,
    },
}

/// Claims `delivery_id` for an attempt: moves it to `sending`, bumps its attempt counter and
/// sets a lease, in one statement. Claimable are `pending`, `queued` and `retry_wait`, and a
/// `sending` delivery whose lease expired (its worker died mid-attempt; the outcome of that
/// attempt is unknown, and the new attempt is recorded as a takeover).
///
/// A `scheduled` delivery is claimable once its time has come by `clock_now`: the relay
/// publishes it when due but commits its `queued` state only after the broker's confirm, so a
/// fast worker can see it still `scheduled`.
pub async fn claim(
    connection: &mut AsyncPgConnection,
    delivery_id: DeliveryId,
    lease: Duration,
    clock_now: chrono::DateTime<Utc>,
) -> Result<ClaimOutcome> {
    let now = Utc::now();
    let lease_until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    let claimable: Vec<&str> = DeliveryState::ALL
        .into_iter()
        .filter(|state| state.is_claimable())
        .map(DeliveryState::as_str)
        .collect();
    connection
        .transaction::<_, Error, _>(async |connection| {
            let current = deliveries::table
                .filter(deliveries::id.eq(delivery_id.as_uuid()))
                .select((
                    deliveries::state,
                    deliveries::lease_until,
                    deliveries::scheduled_for,
                ))
                .for_update()
                .first::<(
                    String,
                    Option<chrono::DateTime<Utc>>,
                    Option<chrono::DateTime<Utc>>,
                )>(connection)
                .await
                .optional()?;
            let Some((state, held_until, scheduled_for)) = current else {
                return Ok(ClaimOutcome::Done);
            };
            let due = state == DeliveryState::Scheduled.as_str()
                && scheduled_for.is_none_or(|scheduled_for| scheduled_for <= clock_now);
            let takeover = state == DeliveryState::Sending.as_str();
            if takeover {
                if let Some(left) = held_until
                    .and_then(|until| (until - now).to_std().ok())
                    .filter(|left| !left.is_zero())
                {
                    return Ok(ClaimOutcome::Busy { retry_after: left });
                }
            } else if !claimable.contains(&state.as_str()) && !due {
                return Ok(ClaimOutcome::Done);
            }
            let (attempt, attempts_base, notification_id, channel) =
                diesel::update(deliveries::table.filter(deliveries::id.eq(delivery_id.as_uuid())))
                    .set((
                        deliveries::state.eq(DeliveryState::Sending.as_str()),
                        deliveries::attempts.eq(deliveries::attempts + 1),
                        deliveries::lease_until.eq(lease_until),
                        deliveries::updated_at.eq(now),
                    ))
                    .returning((
                        deliveries::attempts,
                        deliveries::attempts_base,
                        deliveries::notification_id,
                        deliveries::channel,
                    ))
                    .get_result::<(i32, i32, Uuid, String)>(connection)
                    .await?;
            let detail = if takeover {
                "the previous attempt's lease expired; its outcome is unknown"
            } else {
                ""
            };
            events::insert(
                connection,
                &[NewEvent {
                    delivery_id: *delivery_id.as_uuid(),
                    kind: "sending",
                    attempt,
                    detail,
                    notification_id: Some(notification_id),
                    channel: Some(&channel),
                    ..NewEvent::default()
                }],
            )
            .await?;
            Ok(ClaimOutcome::Claimed(Claim {
                delivery_id,
                attempt,
                cycle_attempt: attempt - attempts_base,
            }))
        })
        .await
}

/// Gives a claim back before any provider call was made (the worker could not prepare the
/// attempt, e.g. PostgreSQL or Redis hiccuped): the delivery becomes `queued` again with its
/// attempt counter restored, so the requeued message can be claimed at once instead of after
/// the lease. Fenced like `finish`; `false` when the claim was already lost.
pub async fn release(connection: &mut AsyncPgConnection, claim: &Claim) -> Result<bool> {
    let released = diesel::update(
        deliveries::table
            .filter(deliveries::id.eq(claim.delivery_id.as_uuid()))
            .filter(deliveries::state.eq(DeliveryState::Sending.as_str()))
            .filter(deliveries::attempts.eq(claim.attempt)),
    )
    .set((
        deliveries::state.eq(DeliveryState::Queued.as_str()),
        deliveries::attempts.eq(deliveries::attempts - 1),
        deliveries::lease_until.eq(None::<chrono::DateTime<Utc>>),
        deliveries::updated_at.eq(Utc::now()),
    ))
    .execute(connection)
    .await?;
    Ok(released == 1)
}

/// Everything a worker needs to render and send one delivery.
#[derive(Debug, Clone)]
pub struct DeliveryContext {
    /// The delivery.
    pub delivery_id: DeliveryId,
    /// Its notification.
    pub notification_id: NotificationId,
    /// Channel.
    pub channel: Channel,
    /// The address on this channel (personal data: never log it).
    pub address: Option<String>,
    /// The product's user id, if given.
    pub user_id: Option<String>,
    /// Priority.
    pub priority: Priority,
    /// Category.
    pub category: String,
    /// The template's key (the notification type, e.g. `order-shipped`).
    pub template_key: String,
    /// The template version's parts per locale (either stored shape; read them with
    /// `herald_templates::VersionContent::from_stored`).
    pub template_content: serde_json::Value,
    /// The recipient's locale tag given at submit, if any.
    pub locale: Option<String>,
    /// The A/B test variant assigned at submit, whose parts are rendered (`None`: the base
    /// content).
    pub variant: Option<String>,
    /// Template parameters (personal data: never log them).
    pub parameters: serde_json::Value,
    /// The claimed attempt's number (1 for the first).
    pub attempt: u32,
    /// The attempt's number within the current cycle; failover picks the provider by it.
    pub cycle_attempt: u32,
    /// Push: the user's enabled device tokens, resolved from preferences before sending.
    pub device_tokens: Vec<herald_domain::DeviceToken>,
    /// The user opted out of tracking (email: no open pixel, no rewritten links); resolved
    /// from preferences before sending.
    pub tracking_opt_out: bool,
}

/// Loads the context of the claimed delivery.
pub async fn load_context(
    connection: &mut AsyncPgConnection,
    claim: &Claim,
) -> Result<DeliveryContext> {
    let delivery_id = claim.delivery_id;
    let (
        notification_id,
        channel,
        address,
        user_id,
        priority,
        category,
        template_key,
        content,
        parameters,
        locale,
        variant,
    ) = deliveries::table
        .inner_join(notifications::table)
        .inner_join(
            template_versions::table.on(template_versions::template_id
                .eq(notifications::template_id)
                .and(template_versions::version.eq(notifications::template_version))),
        )
        .inner_join(templates::table.on(templates::id.eq(notifications::template_id)))
        .filter(deliveries::id.eq(delivery_id.as_uuid()))
        .select((
            notifications::id,
            deliveries::channel,
            deliveries::address,
            deliveries::user_id,
            notifications::priority,
            notifications::category,
            templates::key,
            template_versions::content,
            notifications::parameters,
            deliveries::locale,
            deliveries::variant,
        ))
        .first::<(
            Uuid,
            String,
            Option<String>,
            Option<String>,
            i16,
            String,
            String,
            serde_json::Value,
            serde_json::Value,
            Option<String>,
            Option<String>,
        )>(connection)
        .await?;
    Ok(DeliveryContext {
        delivery_id,
        notification_id: notification_id.into(),
        channel: channel.parse()?,
        address,
        user_id,
        priority: Priority::from_i16(priority)?,
        category,
        template_key,
        template_content: content,
        locale,
        variant,
        parameters,
        attempt: u32::try_from(claim.attempt).unwrap_or_default(),
        cycle_attempt: u32::try_from(claim.cycle_attempt).unwrap_or_default(),
        device_tokens: Vec::new(),
        tracking_opt_out: false,
    })
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted the message; `detail` summarises its response.
    Delivered {
        /// Provider response summary (no personal data).
        detail: String,
    },
    /// A failure that ends the delivery: no further attempts.
    Failed {
        /// What went wrong (no personal data).
        error: String,
        /// Why it is final.
        class: FailureClass,
    },
    /// A retryable failure: another attempt will follow.
    RetryWait {
        /// What went wrong (no personal data).
        error: String,
    },
    /// Deliberately not sent (a rate limit, a preference); the provider was not called.
    Suppressed {
        /// Why, e.g. `rate_limited: …`.
        reason: String,
    },
    /// Not sent yet: the recipient's quiet hours began; queued again for `until`.
    Deferred {
        /// When to try again.
        until: chrono::DateTime<Utc>,
        /// Why.
        reason: String,
    },
}

/// Why a delivery failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The provider or the content made success impossible (bad address, render error).
    Permanent,
    /// Retryable failures used up the attempt budget.
    Exhausted,
    /// The provider call's outcome cannot be known and the channel's policy is not to resend.
    Unknown,
}

impl FailureClass {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::Exhausted => "exhausted",
            Self::Unknown => "unknown",
        }
    }
}

impl Outcome {
    fn state(&self) -> DeliveryState {
        match self {
            Self::Delivered { .. } => DeliveryState::Delivered,
            Self::Failed {
                class: FailureClass::Unknown,
                ..
            } => DeliveryState::Unknown,
            Self::Failed { .. } => DeliveryState::Failed,
            Self::RetryWait { .. } => DeliveryState::RetryWait,
            Self::Suppressed { .. } => DeliveryState::Suppressed,
            Self::Deferred { .. } => DeliveryState::Scheduled,
        }
    }

    fn detail(&self) -> &str {
        match self {
            Self::Delivered { detail } => detail,
            Self::Failed { error, .. } | Self::RetryWait { error } => error,
            Self::Suppressed { reason } | Self::Deferred { reason, .. } => reason,
        }
    }

    /// Whether this outcome comes from a provider's answer (rather than a decision not to
    /// send).
    fn reached_provider(&self) -> bool {
        matches!(
            self,
            Self::Delivered { .. } | Self::Failed { .. } | Self::RetryWait { .. }
        )
    }

    fn error_class(&self) -> Option<&'static str> {
        match self {
            Self::Delivered { .. } | Self::Suppressed { .. } | Self::Deferred { .. } => None,
            Self::RetryWait { .. } => Some("retryable"),
            Self::Failed { class, .. } => Some(class.as_str()),
        }
    }
}

/// Records the outcome of `claim`'s attempt by `provider` with an event, in one transaction;
/// a final failure also gets its `failures` row there, before the caller dead-letters the
/// message. Fenced: it only writes while the delivery is still `sending` at the claimed
/// attempt, and returns `false` (writing nothing) when the claim was lost.
pub async fn finish(
    connection: &mut AsyncPgConnection,
    claim: &Claim,
    outcome: &Outcome,
    provider: Option<&str>,
) -> Result<bool> {
    let now = Utc::now();
    let state = outcome.state();
    let last_error = match outcome {
        Outcome::Delivered { .. } => None,
        other => Some(other.detail().to_owned()),
    };
    let delivered_at = matches!(outcome, Outcome::Delivered { .. }).then_some(now);
    connection
        .transaction::<_, Error, _>(async |connection| {
            let updated = diesel::update(
                deliveries::table
                    .filter(deliveries::id.eq(claim.delivery_id.as_uuid()))
                    .filter(deliveries::state.eq(DeliveryState::Sending.as_str()))
                    .filter(deliveries::attempts.eq(claim.attempt)),
            )
            .set((
                deliveries::state.eq(state.as_str()),
                deliveries::last_error.eq(&last_error),
                deliveries::lease_until.eq(None::<chrono::DateTime<Utc>>),
                deliveries::updated_at.eq(now),
                deliveries::delivered_at.eq(delivered_at),
            ))
            .returning((deliveries::notification_id, deliveries::channel))
            .get_result::<(Uuid, String)>(connection)
            .await
            .optional()?;
            let Some((notification_id, channel)) = updated else {
                return Ok(false);
            };
            let event = NewEvent {
                delivery_id: *claim.delivery_id.as_uuid(),
                kind: state.as_str(),
                attempt: claim.attempt,
                detail: outcome.detail(),
                provider,
                error_class: outcome.error_class(),
                notification_id: Some(notification_id),
                channel: Some(&channel),
            };
            // `sent`: the attempt was handed to a provider, whatever it answered.
            let sent = provider
                .filter(|_| outcome.reached_provider())
                .map(|provider| NewEvent {
                    kind: "sent",
                    detail: "",
                    provider: Some(provider),
                    error_class: None,
                    ..event.clone()
                });
            let recorded: Vec<NewEvent<'_>> = sent.into_iter().chain([event]).collect();
            events::insert(connection, &recorded).await?;
            if let Outcome::Deferred { until, .. } = outcome {
                diesel::update(
                    deliveries::table.filter(deliveries::id.eq(claim.delivery_id.as_uuid())),
                )
                .set(deliveries::scheduled_for.eq(Some(*until)))
                .execute(connection)
                .await?;
                let priority = notifications::table
                    .find(notification_id)
                    .select(notifications::priority)
                    .first::<i16>(connection)
                    .await?;
                diesel::insert_into(crate::schema::outbox::table)
                    .values((
                        crate::schema::outbox::delivery_id.eq(claim.delivery_id.as_uuid()),
                        crate::schema::outbox::notification_id.eq(notification_id),
                        crate::schema::outbox::channel.eq(&channel),
                        crate::schema::outbox::priority.eq(priority),
                        crate::schema::outbox::available_at.eq(*until),
                    ))
                    .execute(connection)
                    .await?;
            }
            if let Outcome::Failed { error, class } = outcome {
                diesel::insert_into(failures::table)
                    .values((
                        failures::id.eq(Uuid::now_v7()),
                        failures::delivery_id.eq(claim.delivery_id.as_uuid()),
                        failures::notification_id.eq(notification_id),
                        failures::channel.eq(channel),
                        failures::attempts.eq(claim.attempt),
                        failures::error.eq(error),
                        failures::error_class.eq(class.as_str()),
                    ))
                    .execute(connection)
                    .await?;
            }
            Ok(true)
        })
        .await
}

/// The kinds of a delivery's events, oldest first.
pub async fn event_kinds(
    connection: &mut AsyncPgConnection,
    delivery_id: DeliveryId,
) -> Result<Vec<String>> {
    Ok(delivery_events::table
        .filter(delivery_events::delivery_id.eq(delivery_id.as_uuid()))
        .order(delivery_events::id.asc())
        .select(delivery_events::kind)
        .load(connection)
        .await?)
}

/// Critical deliveries on `channel` still `pending` (their outbox row not yet published)
/// since before `older_than`, oldest first: the emergency path's work when RabbitMQ or the
/// relay is away.
pub async fn stranded_critical(
    connection: &mut AsyncPgConnection,
    channel: Channel,
    older_than: chrono::DateTime<Utc>,
    limit: i64,
) -> Result<Vec<DeliveryId>> {
    Ok(deliveries::table
        .inner_join(notifications::table)
        .filter(deliveries::channel.eq(channel.as_str()))
        .filter(deliveries::state.eq(DeliveryState::Pending.as_str()))
        .filter(notifications::priority.eq(Priority::Critical.as_i16()))
        .filter(deliveries::created_at.lt(older_than))
        .order(deliveries::created_at.asc())
        .limit(limit)
        .select(deliveries::id)
        .load::<Uuid>(connection)
        .await?
        .into_iter()
        .map(DeliveryId::from)
        .collect())
}
