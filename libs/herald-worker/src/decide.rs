//! The outcome decision, pure: what a claim or a provider's answer means for the delivery's
//! record (`Outcome`) and for its queue message (`Settlement`). No IO, so every rule is in
//! one table of tests (`decide/tests.rs`).

use std::time::Duration;

use herald_db::deliveries::{BatchClaim, Claim, Claimed, FailureClass, Outcome};

use crate::{DeliveryError, Receipt, UnknownOutcome, WorkerSettings};

/// What a takeover records under `hold`: the previous attempt may have reached the provider.
pub(crate) const LEASE_EXPIRED: &str =
    "the previous attempt's lease expired before its outcome was recorded; it may have been sent";

/// Pause before requeueing a message whose delivery could not be read or written because
/// PostgreSQL was unavailable.
pub(crate) const DATABASE_RETRY_DELAY: Duration = Duration::from_secs(1);

/// How a message is settled once its delivery was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Done with the message.
    Ack,
    /// Reject without requeue: the broker moves it to the channel's dead-letter queue.
    DeadLetter,
    /// Publish a copy to the delay queue for this long, then ack the original.
    Retry(Duration),
    /// Put the message back after this pause (PostgreSQL away, delivery leased elsewhere).
    RequeueAfter(Duration),
}

/// What the worker does with one delivery after its claim was attempted.
#[derive(Debug)]
pub(crate) enum AfterClaim {
    /// Go on: prepare the attempt and call the provider.
    Attempt(Box<Claimed>),
    /// Record this outcome on the claim without a provider call, then settle the message.
    Record(Claim, Outcome),
    /// Nothing to record: settle the message now.
    Settle(Settlement),
}

/// The next step for a delivery whose claim came back as `claim`. A final delivery is acked
/// without a provider call (a redelivered message never sends twice); one leased by a live
/// worker, or waiting to retry and not yet due, is requeued when that runs out (at most
/// after `lease`), so a worker that died mid-attempt is taken
/// over rather than forgotten; an unreadable one fails for good. A takeover cannot tell
/// "claimed, never sent" from "sent, not recorded", so it follows the channel's `policy`:
/// `hold` records the delivery `unknown` without a provider call, `resend` attempts it again.
pub(crate) fn after_claim(
    claim: BatchClaim,
    lease: Duration,
    policy: UnknownOutcome,
) -> AfterClaim {
    match claim {
        BatchClaim::Claimed(claimed)
            if claimed.delivery.takeover && policy == UnknownOutcome::Hold =>
        {
            AfterClaim::Record(
                claimed.claim,
                Outcome::Failed {
                    error: LEASE_EXPIRED.to_owned(),
                    class: FailureClass::Unknown,
                },
            )
        }
        BatchClaim::Claimed(claimed) => AfterClaim::Attempt(claimed),
        BatchClaim::Unreadable { claim, problem } => AfterClaim::Record(
            claim,
            Outcome::Failed {
                error: problem,
                class: FailureClass::Permanent,
            },
        ),
        BatchClaim::Done => AfterClaim::Settle(Settlement::Ack),
        BatchClaim::Busy { retry_after } | BatchClaim::NotDue { retry_after } => {
            AfterClaim::Settle(Settlement::RequeueAfter(retry_after.min(lease)))
        }
    }
}

/// The record and settlement of an attempt that reached `provider` and got `result`: a
/// delivery is acked; a permanent failure and a retryable failure past `max_attempts` are
/// recorded as final and dead-lettered; any other retryable failure waits in the delay queue
/// of its tier. An unknown outcome follows `policy`: `hold` records it final (`unknown`) and
/// dead-letters it; `resend` waits like a retryable failure (`Outcome::Resend`, pinned to
/// `provider`), and past `max_attempts` it is final `unknown` too.
pub(crate) fn after_call(
    claim: &Claim,
    provider: &str,
    result: Result<Receipt, DeliveryError>,
    settings: &WorkerSettings,
    policy: UnknownOutcome,
) -> (Outcome, Settlement) {
    let cycle_attempt = u32::try_from(claim.cycle_attempt).unwrap_or(u32::MAX);
    let exhausted = cycle_attempt >= settings.max_attempts;
    match result {
        Ok(receipt) => (
            Outcome::Delivered {
                detail: format!("{provider}: {}", receipt.detail),
            },
            Settlement::Ack,
        ),
        Err(DeliveryError::Permanent(error)) => (
            Outcome::Failed {
                error,
                class: FailureClass::Permanent,
            },
            Settlement::DeadLetter,
        ),
        Err(DeliveryError::AddressInvalid { detail, .. }) => (
            Outcome::Failed {
                error: format!("address_invalid: {detail}"),
                class: FailureClass::Permanent,
            },
            Settlement::DeadLetter,
        ),
        Err(DeliveryError::Unknown(error)) if policy == UnknownOutcome::Hold => (
            Outcome::Failed {
                error,
                class: FailureClass::Unknown,
            },
            Settlement::DeadLetter,
        ),
        Err(DeliveryError::Unknown(error)) if exhausted => (
            Outcome::Failed {
                error: format!("gave up after {cycle_attempt} attempts: {error}"),
                class: FailureClass::Unknown,
            },
            Settlement::DeadLetter,
        ),
        Err(DeliveryError::Unknown(error)) => (
            Outcome::Resend { error },
            Settlement::Retry(settings.retry_delay(cycle_attempt)),
        ),
        Err(DeliveryError::Retryable(error)) if exhausted => (
            Outcome::Failed {
                error: format!("gave up after {cycle_attempt} attempts: {error}"),
                class: FailureClass::Exhausted,
            },
            Settlement::DeadLetter,
        ),
        Err(DeliveryError::Retryable(error)) => (
            Outcome::RetryWait { error },
            Settlement::Retry(settings.retry_delay(cycle_attempt)),
        ),
    }
}

/// Whether the delivery is pinned to the provider of an attempt that got `result`: its
/// outcome there is unknown and the channel resends, or the attempt itself resent a taken-over
/// one (`takeover`) and reached a provider, which may now have it.
pub(crate) fn pins_provider(
    result: &Result<Receipt, DeliveryError>,
    takeover: bool,
    policy: UnknownOutcome,
) -> bool {
    policy == UnknownOutcome::Resend
        && (takeover || matches!(result, Err(DeliveryError::Unknown(_))))
}

/// The settlement of an outcome that is not a provider's answer (preferences, a rate limit,
/// an unreadable delivery): a deferral or a suppression is done with the message, a failure
/// goes to the dead-letter queue.
pub(crate) fn settlement_of_held(outcome: &Outcome) -> Settlement {
    match outcome {
        Outcome::Failed { .. } => Settlement::DeadLetter,
        Outcome::Delivered { .. }
        | Outcome::RetryWait { .. }
        | Outcome::Resend { .. }
        | Outcome::Suppressed { .. }
        | Outcome::Deferred { .. } => Settlement::Ack,
    }
}

/// How a message is finally settled once recording was tried: as decided when the outcome
/// was recorded; acked when the claim was lost meanwhile (whoever took the delivery over owns
/// it now); requeued after a pause when PostgreSQL could not record it within the lease.
pub(crate) fn after_record(recorded: Option<bool>, decided: Settlement) -> Settlement {
    match recorded {
        Some(true) => decided,
        Some(false) => Settlement::Ack,
        None => Settlement::RequeueAfter(DATABASE_RETRY_DELAY),
    }
}

/// The name of a provider result, for the provider span and metrics.
pub(crate) fn outcome_name(result: &Result<Receipt, DeliveryError>) -> &'static str {
    match result {
        Ok(_) => "delivered",
        Err(DeliveryError::Retryable(_)) => "retryable",
        Err(DeliveryError::Permanent(_)) => "permanent",
        Err(DeliveryError::Unknown(_)) => "unknown",
        Err(DeliveryError::AddressInvalid { .. }) => "address_invalid",
    }
}

/// The addresses a provider's answer says to disable.
pub(crate) fn invalid_addresses(result: &Result<Receipt, DeliveryError>) -> Vec<String> {
    match result {
        Ok(receipt) => receipt.invalid_addresses.clone(),
        Err(DeliveryError::AddressInvalid { addresses, .. }) => addresses.clone(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
