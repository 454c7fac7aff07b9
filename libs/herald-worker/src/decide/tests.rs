//! Table tests of the outcome decision.
#![allow(
    clippy::too_many_lines,
    reason = "a table of cases reads top to bottom"
)]

use std::time::Duration;

use herald_db::deliveries::{
    BatchClaim, Claim, Claimed, ClaimedDelivery, FailureClass, Outcome, TemplateVersionRef,
};
use herald_domain::{Channel, DeliveryId, NotificationId, Priority, TemplateId};

use super::{
    AfterClaim, DATABASE_RETRY_DELAY, LEASE_EXPIRED, Settlement, after_call, after_claim,
    after_record, invalid_addresses, outcome_name, pins_provider, settlement_of_held,
};
use crate::{DeliveryError, Receipt, UnknownOutcome, WorkerSettings};

const LEASE: Duration = Duration::from_secs(60);

fn settings() -> WorkerSettings {
    WorkerSettings {
        max_attempts: 3,
        retry_delays: vec![Duration::from_secs(1), Duration::from_secs(5)],
        lease: LEASE,
        ..WorkerSettings::default()
    }
}

fn claim(attempt: i32, cycle_attempt: i32) -> Claim {
    Claim {
        delivery_id: DeliveryId::generate(),
        attempt,
        cycle_attempt,
    }
}

fn receipt(detail: &str, invalid: &[&str]) -> Result<Receipt, DeliveryError> {
    Ok(Receipt {
        detail: detail.into(),
        invalid_addresses: invalid
            .iter()
            .map(|address| (*address).to_owned())
            .collect(),
    })
}

/// What a row of the table expects of the settlement.
#[derive(Debug)]
enum Expect {
    Exactly(Settlement),
    /// A retry through one of the jitter lanes of this tier's delay (ms).
    RetryAround(u64),
}

/// A row of the provider-answer table: case, the channel's unknown-outcome policy, cycle
/// attempt, answer, record, settlement.
type AnswerCase = (
    &'static str,
    UnknownOutcome,
    i32,
    Result<Receipt, DeliveryError>,
    Outcome,
    Expect,
);

#[test]
fn a_provider_answer_decides_the_record_and_the_settlement() {
    let table: Vec<AnswerCase> = vec![
        (
            "delivered",
            UnknownOutcome::Hold,
            1,
            receipt("250 ok", &[]),
            Outcome::Delivered {
                detail: "smtp: 250 ok".into(),
            },
            Expect::Exactly(Settlement::Ack),
        ),
        (
            "delivered, some device tokens unregistered",
            UnknownOutcome::Hold,
            1,
            receipt("2 of 3 devices", &["token"]),
            Outcome::Delivered {
                detail: "smtp: 2 of 3 devices".into(),
            },
            Expect::Exactly(Settlement::Ack),
        ),
        (
            "permanent",
            UnknownOutcome::Hold,
            1,
            Err(DeliveryError::Permanent("rejected".into())),
            Outcome::Failed {
                error: "rejected".into(),
                class: FailureClass::Permanent,
            },
            Expect::Exactly(Settlement::DeadLetter),
        ),
        (
            "address invalid",
            UnknownOutcome::Hold,
            2,
            Err(DeliveryError::AddressInvalid {
                addresses: vec!["ada@example.com".into()],
                detail: "smtp rejected the recipient with 550".into(),
            }),
            Outcome::Failed {
                error: "address_invalid: smtp rejected the recipient with 550".into(),
                class: FailureClass::Permanent,
            },
            Expect::Exactly(Settlement::DeadLetter),
        ),
        (
            "unknown outcome, hold: final, for an operator",
            UnknownOutcome::Hold,
            1,
            Err(DeliveryError::Unknown("timed out after sending".into())),
            Outcome::Failed {
                error: "timed out after sending".into(),
                class: FailureClass::Unknown,
            },
            Expect::Exactly(Settlement::DeadLetter),
        ),
        (
            "unknown outcome, resend: another attempt after the tier's delay",
            UnknownOutcome::Resend,
            1,
            Err(DeliveryError::Unknown("timed out after sending".into())),
            Outcome::Resend {
                error: "timed out after sending".into(),
            },
            Expect::RetryAround(1000),
        ),
        (
            "unknown outcome, resend, last attempt of the cycle: final unknown",
            UnknownOutcome::Resend,
            3,
            Err(DeliveryError::Unknown("timed out after sending".into())),
            Outcome::Failed {
                error: "gave up after 3 attempts: timed out after sending".into(),
                class: FailureClass::Unknown,
            },
            Expect::Exactly(Settlement::DeadLetter),
        ),
        (
            "retryable under resend: as under hold",
            UnknownOutcome::Resend,
            2,
            Err(DeliveryError::Retryable("smtp timed out".into())),
            Outcome::RetryWait {
                error: "smtp timed out".into(),
            },
            Expect::RetryAround(5000),
        ),
        (
            "retryable, first attempt",
            UnknownOutcome::Hold,
            1,
            Err(DeliveryError::Retryable("smtp timed out".into())),
            Outcome::RetryWait {
                error: "smtp timed out".into(),
            },
            Expect::RetryAround(1000),
        ),
        (
            "retryable, second attempt: the next tier",
            UnknownOutcome::Hold,
            2,
            Err(DeliveryError::Retryable("smtp timed out".into())),
            Outcome::RetryWait {
                error: "smtp timed out".into(),
            },
            Expect::RetryAround(5000),
        ),
        (
            "retryable, last attempt of the cycle",
            UnknownOutcome::Hold,
            3,
            Err(DeliveryError::Retryable("smtp timed out".into())),
            Outcome::Failed {
                error: "gave up after 3 attempts: smtp timed out".into(),
                class: FailureClass::Exhausted,
            },
            Expect::Exactly(Settlement::DeadLetter),
        ),
    ];
    for (case, policy, cycle_attempt, result, outcome, expected) in table {
        let (decided, settlement) = after_call(
            &claim(cycle_attempt + 4, cycle_attempt),
            "smtp",
            result,
            &settings(),
            policy,
        );
        assert_eq!(decided, outcome, "{case}");
        match expected {
            Expect::Exactly(expected) => assert_eq!(settlement, expected, "{case}"),
            Expect::RetryAround(ms) => {
                let Settlement::Retry(delay) = settlement else {
                    panic!("{case}: {settlement:?} is not a retry");
                };
                let lanes = [ms * 8 / 10, ms, ms * 12 / 10].map(Duration::from_millis);
                assert!(lanes.contains(&delay), "{case}: {delay:?} not in {lanes:?}");
            }
        }
    }
}

/// A claimed delivery; `takeover` when its previous attempt's lease expired.
fn claimed_delivery(takeover: bool) -> BatchClaim {
    let claim = claim(1, 1);
    BatchClaim::Claimed(Box::new(Claimed {
        template: TemplateVersionRef {
            template_id: TemplateId::generate(),
            version: 1,
        },
        delivery: ClaimedDelivery {
            delivery_id: claim.delivery_id,
            notification_id: NotificationId::generate(),
            channel: Channel::Email,
            address: None,
            user_id: None,
            priority: Priority::Normal,
            category: "orders".into(),
            template_key: "welcome".into(),
            locale: None,
            variant: None,
            parameters: serde_json::json!({}).into(),
            attempt: 1,
            cycle_attempt: 1,
            takeover,
            pinned_provider: None,
        },
        claim,
    }))
}

#[test]
fn a_claim_decides_whether_to_attempt() {
    let claimed = || claimed_delivery(false);
    assert!(matches!(
        after_claim(claimed(), LEASE, UnknownOutcome::Hold),
        AfterClaim::Attempt(claimed) if claimed.claim.attempt == 1
    ));
    let table: Vec<(&str, BatchClaim, Settlement)> = vec![
        (
            "final or missing: acked without a provider call",
            BatchClaim::Done,
            Settlement::Ack,
        ),
        (
            "waiting to retry, not yet due: requeued when due (this may be its only message)",
            BatchClaim::NotDue {
                retry_after: Duration::from_secs(4),
            },
            Settlement::RequeueAfter(Duration::from_secs(4)),
        ),
        (
            "a retry due later than our lease waits no longer than the lease",
            BatchClaim::NotDue {
                retry_after: Duration::from_secs(108),
            },
            Settlement::RequeueAfter(LEASE),
        ),
        (
            "leased by a live worker: requeued when its lease runs out",
            BatchClaim::Busy {
                retry_after: Duration::from_secs(12),
            },
            Settlement::RequeueAfter(Duration::from_secs(12)),
        ),
        (
            "a lease longer than ours waits no longer than ours",
            BatchClaim::Busy {
                retry_after: Duration::from_secs(600),
            },
            Settlement::RequeueAfter(LEASE),
        ),
    ];
    for (case, answer, expected) in table {
        assert!(
            matches!(after_claim(answer, LEASE, UnknownOutcome::Hold), AfterClaim::Settle(settlement) if settlement == expected),
            "{case}"
        );
    }
    let unreadable = claim(1, 1);
    let AfterClaim::Record(recorded_on, outcome) = after_claim(
        BatchClaim::Unreadable {
            claim: unreadable.clone(),
            problem: "stored delivery is unreadable: bad channel".into(),
        },
        LEASE,
        UnknownOutcome::Resend,
    ) else {
        panic!("an unreadable delivery is recorded as failed");
    };
    assert_eq!(recorded_on, unreadable);
    assert_eq!(
        outcome,
        Outcome::Failed {
            error: "stored delivery is unreadable: bad channel".into(),
            class: FailureClass::Permanent,
        }
    );
}

#[test]
fn a_takeover_follows_the_channels_unknown_outcome_policy() {
    let AfterClaim::Record(_, outcome) =
        after_claim(claimed_delivery(true), LEASE, UnknownOutcome::Hold)
    else {
        panic!("under hold a takeover is recorded without a provider call");
    };
    assert_eq!(
        outcome,
        Outcome::Failed {
            error: LEASE_EXPIRED.into(),
            class: FailureClass::Unknown,
        }
    );
    assert_eq!(settlement_of_held(&outcome), Settlement::DeadLetter);
    assert!(
        matches!(
            after_claim(claimed_delivery(true), LEASE, UnknownOutcome::Resend),
            AfterClaim::Attempt(claimed) if claimed.delivery.takeover
        ),
        "under resend a takeover is attempted again"
    );
}

#[test]
fn only_resent_unknown_outcomes_pin_the_provider() {
    let unknown = Err(DeliveryError::Unknown("timed out".into()));
    let retryable = Err(DeliveryError::Retryable("503".into()));
    let table = [
        (
            "unknown, resend",
            &unknown,
            false,
            UnknownOutcome::Resend,
            true,
        ),
        (
            "unknown, hold",
            &unknown,
            false,
            UnknownOutcome::Hold,
            false,
        ),
        (
            "retryable",
            &retryable,
            false,
            UnknownOutcome::Resend,
            false,
        ),
        (
            "a takeover's resend",
            &retryable,
            true,
            UnknownOutcome::Resend,
            true,
        ),
    ];
    for (case, result, takeover, policy, expected) in table {
        assert_eq!(pins_provider(result, takeover, policy), expected, "{case}");
    }
}

#[test]
fn what_recording_found_decides_the_final_settlement() {
    let retry = Settlement::Retry(Duration::from_secs(1));
    let table = [
        ("recorded: as decided", Some(true), retry, retry),
        (
            "recorded: dead-letter as decided",
            Some(true),
            Settlement::DeadLetter,
            Settlement::DeadLetter,
        ),
        (
            "the claim was lost: someone else owns the delivery",
            Some(false),
            retry,
            Settlement::Ack,
        ),
        (
            "PostgreSQL away past the lease: requeued",
            None,
            Settlement::Ack,
            Settlement::RequeueAfter(DATABASE_RETRY_DELAY),
        ),
    ];
    for (case, recorded, decided, expected) in table {
        assert_eq!(after_record(recorded, decided), expected, "{case}");
    }
}

#[test]
fn held_outcomes_are_acked_and_failures_dead_lettered() {
    let table = [
        (
            Outcome::Suppressed {
                reason: "rate_limited".into(),
            },
            Settlement::Ack,
        ),
        (
            Outcome::Deferred {
                until: chrono::Utc::now(),
                reason: "quiet_hours".into(),
            },
            Settlement::Ack,
        ),
        (
            Outcome::Failed {
                error: "unreadable".into(),
                class: FailureClass::Permanent,
            },
            Settlement::DeadLetter,
        ),
    ];
    for (outcome, expected) in table {
        assert_eq!(settlement_of_held(&outcome), expected, "{outcome:?}");
    }
}

#[test]
fn results_are_named_and_invalid_addresses_collected() {
    let table: Vec<(Result<Receipt, DeliveryError>, &str, Vec<String>)> = vec![
        (receipt("ok", &["t1"]), "delivered", vec!["t1".into()]),
        (
            Err(DeliveryError::Retryable("x".into())),
            "retryable",
            vec![],
        ),
        (
            Err(DeliveryError::Permanent("x".into())),
            "permanent",
            vec![],
        ),
        (Err(DeliveryError::Unknown("x".into())), "unknown", vec![]),
        (
            Err(DeliveryError::AddressInvalid {
                addresses: vec!["+821012345678".into()],
                detail: "x".into(),
            }),
            "address_invalid",
            vec!["+821012345678".into()],
        ),
    ];
    for (result, name, invalid) in table {
        assert_eq!(outcome_name(&result), name);
        assert_eq!(invalid_addresses(&result), invalid, "{name}");
    }
}
