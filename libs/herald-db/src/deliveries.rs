//! What channel workers read and write: an atomic, fenced claim, the stored delivery to
//! render, and the outcome. Workers claim and finish deliveries in batches (`claim_many`,
//! `finish_many`, in `batch`); the single-delivery functions here are the same statements with
//! one item.

use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use herald_domain::{Channel, DeliveryId, DeliveryState, NotificationId, Priority};
use uuid::Uuid;

use crate::Result;
use crate::personal::{PersonalJson, PersonalText};
use crate::schema::{deliveries, delivery_events, outbox};

mod batch;

pub use batch::{
    BatchClaim, Claimed, Finishing, TemplateVersionRef, claim_many, finish_many, release_many,
    template_contents,
};

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
    /// Another worker holds an unexpired lease, or a retry is not due yet; look again after
    /// `retry_after`.
    Busy {
        /// Time left on the other worker's lease, or until the retry is due.
        retry_after: Duration,
    },
}

/// Claims `delivery_id` for an attempt: moves it to `sending`, bumps its attempt counter and
/// sets a lease, in one statement. Claimable are `pending`, `queued` and `retry_wait` (once
/// its retry is due), and a `sending` delivery whose lease expired (its worker died mid-attempt; the outcome of that
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
    let answer = claim_many(connection, &[delivery_id], lease, clock_now)
        .await?
        .into_iter()
        .next();
    Ok(match answer {
        Some(BatchClaim::Claimed(claimed)) => ClaimOutcome::Claimed(claimed.claim),
        Some(BatchClaim::Unreadable { claim, .. }) => ClaimOutcome::Claimed(claim),
        Some(BatchClaim::Busy { retry_after } | BatchClaim::NotDue { retry_after }) => {
            ClaimOutcome::Busy { retry_after }
        }
        Some(BatchClaim::Done) | None => ClaimOutcome::Done,
    })
}

/// Gives a claim back before any provider call was made (the worker could not prepare the
/// attempt, e.g. PostgreSQL or Redis hiccuped): the delivery becomes `queued` again with its
/// attempt counter restored, so the requeued message can be claimed at once instead of after
/// the lease. Fenced like `finish`; `false` when the claim was already lost.
pub async fn release(connection: &mut AsyncPgConnection, claim: &Claim) -> Result<bool> {
    Ok(release_many(connection, std::slice::from_ref(claim)).await? == 1)
}

/// A claimed delivery as its rows store it: what a worker turns into the typed context it
/// renders and sends with (`herald_worker::DeliveryContext`).
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    /// `deliveries.id`.
    pub delivery_id: DeliveryId,
    /// `deliveries.notification_id`.
    pub notification_id: NotificationId,
    /// `deliveries.channel`, parsed.
    pub channel: Channel,
    /// `deliveries.address`: given at submit, or `None` for a user-id recipient.
    pub address: Option<PersonalText>,
    /// `deliveries.user_id`.
    pub user_id: Option<String>,
    /// `notifications.priority`, parsed.
    pub priority: Priority,
    /// `notifications.category`.
    pub category: String,
    /// `templates.key`: the notification type.
    pub template_key: String,
    /// `deliveries.locale`: the tag given at submit, unparsed.
    pub locale: Option<String>,
    /// `deliveries.variant`: the A/B test variant assigned at submit.
    pub variant: Option<String>,
    /// `notifications.parameters`.
    pub parameters: PersonalJson,
    /// `deliveries.attempts` after the claim: this attempt's number.
    pub attempt: u32,
    /// The attempt's number within the current cycle (`attempts - attempts_base`).
    pub cycle_attempt: u32,
    /// The claim took the delivery over from an attempt whose lease expired: that attempt
    /// may or may not have reached the provider (its outcome is unknown).
    pub takeover: bool,
    /// `deliveries.pinned_provider`: the provider every attempt goes to since an earlier
    /// attempt's outcome there could not be known (the channel resends unknown outcomes).
    pub pinned_provider: Option<String>,
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
    /// The provider's answer could not be known and the channel's policy is to resend:
    /// another attempt will follow (state `retry_wait`, error class `unknown`), to the same
    /// provider (`Finishing::pin`).
    Resend {
        /// Why the outcome is unknown (no personal data).
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
            Self::RetryWait { .. } | Self::Resend { .. } => DeliveryState::RetryWait,
            Self::Suppressed { .. } => DeliveryState::Suppressed,
            Self::Deferred { .. } => DeliveryState::Scheduled,
        }
    }

    fn detail(&self) -> &str {
        match self {
            Self::Delivered { detail } => detail,
            Self::Failed { error, .. } | Self::RetryWait { error } | Self::Resend { error } => {
                error
            }
            Self::Suppressed { reason } | Self::Deferred { reason, .. } => reason,
        }
    }

    /// Whether this outcome comes from a provider's answer (rather than a decision not to
    /// send).
    fn reached_provider(&self) -> bool {
        matches!(
            self,
            Self::Delivered { .. }
                | Self::Failed { .. }
                | Self::RetryWait { .. }
                | Self::Resend { .. }
        )
    }

    fn error_class(&self) -> Option<&'static str> {
        match self {
            Self::Delivered { .. } | Self::Suppressed { .. } | Self::Deferred { .. } => None,
            Self::RetryWait { .. } => Some("retryable"),
            Self::Resend { .. } => Some("unknown"),
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
    let recorded = finish_many(
        connection,
        &[Finishing {
            claim,
            outcome,
            provider,
            invalid_addresses: &[],
            pin: false,
            retry_in: None,
        }],
    )
    .await?;
    Ok(recorded.as_slice() == [true])
}

/// The user a delivery goes to: `None` when there is no such delivery, `Some(None)` for a
/// delivery to an address only.
pub async fn user_of(
    connection: &mut AsyncPgConnection,
    delivery_id: DeliveryId,
) -> Result<Option<Option<String>>> {
    Ok(deliveries::table
        .find(delivery_id.as_uuid())
        .select(deliveries::user_id)
        .first::<Option<String>>(connection)
        .await
        .optional()?)
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
///
/// Read through the outbox, which holds only unpublished rows (the relay deletes what it
/// published) and has an index by priority: every worker asks every
/// `worker.emergency_poll_interval`, and a scan of all deliveries would grow with history.
pub async fn stranded_critical(
    connection: &mut AsyncPgConnection,
    channel: Channel,
    older_than: chrono::DateTime<Utc>,
    limit: i64,
) -> Result<Vec<DeliveryId>> {
    Ok(crate::statement::planned_per_run(
        outbox::table
            .inner_join(deliveries::table)
            .filter(outbox::published_at.is_null())
            .filter(outbox::priority.eq(Priority::Critical.as_i16()))
            .filter(outbox::channel.eq(channel.as_str()))
            .filter(deliveries::state.eq(DeliveryState::Pending.as_str()))
            .filter(deliveries::created_at.lt(older_than))
            .order(deliveries::created_at.asc())
            .limit(limit)
            .select(deliveries::id),
    )
    .load::<Uuid>(connection)
    .await?
    .into_iter()
    .map(DeliveryId::from)
    .collect())
}
