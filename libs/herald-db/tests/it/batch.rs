//! Claims and outcomes of many deliveries at once, fenced per delivery.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use herald_db::deliveries::{
    self, BatchClaim, Claim, FailureClass, Finishing, Outcome, TemplateVersionRef,
};
use herald_db::schema;
use herald_domain::{Channel, DeliveryId, DeliveryState, Priority};
use herald_test_support::TestDatabase;

use super::{connect, seed};

const LEASE: Duration = Duration::from_secs(60);

async fn set_state(
    connection: &mut diesel_async::AsyncPgConnection,
    delivery_id: DeliveryId,
    state: DeliveryState,
    lease_until: Option<chrono::DateTime<chrono::Utc>>,
) {
    diesel::update(schema::deliveries::table.find(delivery_id.as_uuid()))
        .set((
            schema::deliveries::state.eq(state.as_str()),
            schema::deliveries::lease_until.eq(lease_until),
        ))
        .execute(connection)
        .await
        .unwrap();
}

fn claimed(answer: &BatchClaim) -> &deliveries::Claimed {
    match answer {
        BatchClaim::Claimed(claimed) => claimed,
        other => panic!("expected a claim, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_claim_answers_each_delivery_in_order() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let (_, pending) = seed(&mut connection, None).await;
    let (_, delivered) = seed(&mut connection, None).await;
    let (_, leased) = seed(&mut connection, None).await;
    let (_, abandoned) = seed(&mut connection, None).await;
    set_state(&mut connection, delivered, DeliveryState::Delivered, None).await;
    let lease_left = chrono::Utc::now() + chrono::Duration::seconds(30);
    set_state(
        &mut connection,
        leased,
        DeliveryState::Sending,
        Some(lease_left),
    )
    .await;
    let expired = chrono::Utc::now() - chrono::Duration::seconds(1);
    set_state(
        &mut connection,
        abandoned,
        DeliveryState::Sending,
        Some(expired),
    )
    .await;
    let missing = DeliveryId::generate();

    let answers = deliveries::claim_many(
        &mut connection,
        &[pending, delivered, leased, missing, pending, abandoned],
        LEASE,
        chrono::Utc::now(),
    )
    .await
    .unwrap();

    assert_eq!(answers.len(), 6);
    let first = claimed(&answers[0]);
    assert_eq!(first.claim.delivery_id, pending);
    assert_eq!((first.claim.attempt, first.claim.cycle_attempt), (1, 1));
    assert_eq!(first.delivery.channel, Channel::Email);
    assert_eq!(
        first
            .delivery
            .address
            .as_ref()
            .map(|address| address.expose()),
        Some("ada@example.com")
    );
    assert_eq!(first.delivery.locale.as_deref(), Some("ko-KR"));
    assert_eq!(first.delivery.priority, Priority::Normal);
    assert_eq!(first.delivery.template_key, "welcome");
    assert!(matches!(answers[1], BatchClaim::Done), "final");
    assert!(
        matches!(answers[2], BatchClaim::Busy { retry_after } if retry_after > Duration::from_secs(20)),
        "leased by a live worker: {:?}",
        answers[2]
    );
    assert!(matches!(answers[3], BatchClaim::Done), "missing");
    assert!(
        matches!(answers[4], BatchClaim::Busy { retry_after } if retry_after == LEASE),
        "a second copy meets the claim just taken: {:?}",
        answers[4]
    );
    assert_eq!(claimed(&answers[5]).claim.attempt, 1, "taken over");
    assert!(
        claimed(&answers[5]).delivery.takeover,
        "and flagged a takeover"
    );
    assert!(!first.delivery.takeover);
    assert_eq!(
        deliveries::event_kinds(&mut connection, pending)
            .await
            .unwrap(),
        ["accepted", "sending"]
    );

    let contents = deliveries::template_contents(&mut connection, &[first.template])
        .await
        .unwrap();
    let content = contents[&first.template].as_ref().unwrap();
    assert!(content.default_content().unwrap().email.is_some());
    let unknown = TemplateVersionRef {
        version: first.template.version + 1,
        ..first.template
    };
    assert!(
        deliveries::template_contents(&mut connection, &[unknown])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_outcomes_is_recorded_only_for_claims_still_held() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(seed(&mut connection, None).await.1);
    }
    let claims: Vec<Claim> =
        deliveries::claim_many(&mut connection, &ids, LEASE, chrono::Utc::now())
            .await
            .unwrap()
            .iter()
            .map(|answer| claimed(answer).claim.clone())
            .collect();
    // Another worker took the third delivery over: its claim is lost.
    diesel::update(schema::deliveries::table.find(ids[2].as_uuid()))
        .set(schema::deliveries::attempts.eq(schema::deliveries::attempts + 1))
        .execute(&mut connection)
        .await
        .unwrap();
    let until = chrono::Utc::now() + chrono::Duration::hours(8);
    let delivered = Outcome::Delivered {
        detail: "smtp: 250".into(),
    };
    let bounced = Outcome::Failed {
        error: "address_invalid: smtp rejected the recipient with 550\0".into(),
        class: FailureClass::Permanent,
    };
    let deferred = Outcome::Deferred {
        until,
        reason: "quiet_hours".into(),
    };
    let invalid = vec!["ada@example.com".to_owned()];

    let recorded = deliveries::finish_many(
        &mut connection,
        &[
            Finishing {
                claim: &claims[0],
                outcome: &delivered,
                provider: Some("smtp"),
                invalid_addresses: &[],
                pin: false,
                retry_in: None,
            },
            Finishing {
                claim: &claims[1],
                outcome: &bounced,
                provider: Some("smtp"),
                invalid_addresses: &invalid,
                pin: false,
                retry_in: None,
            },
            Finishing {
                claim: &claims[2],
                outcome: &delivered,
                provider: Some("smtp"),
                invalid_addresses: &[],
                pin: false,
                retry_in: None,
            },
            Finishing {
                claim: &claims[3],
                outcome: &deferred,
                provider: None,
                invalid_addresses: &[],
                pin: false,
                retry_in: None,
            },
        ],
    )
    .await
    .unwrap();

    assert_eq!(recorded, [true, true, false, true]);
    let states: Vec<(uuid::Uuid, String, Option<String>)> = schema::deliveries::table
        .select((
            schema::deliveries::id,
            schema::deliveries::state,
            schema::deliveries::last_error,
        ))
        .load(&mut connection)
        .await
        .unwrap();
    let state_of = |id: DeliveryId| {
        states
            .iter()
            .find(|(row, _, _)| row == id.as_uuid())
            .map(|(_, state, error)| (state.clone(), error.clone()))
            .unwrap()
    };
    assert_eq!(state_of(ids[0]), ("delivered".into(), None));
    assert_eq!(
        state_of(ids[1]),
        (
            "failed".into(),
            Some("address_invalid: smtp rejected the recipient with 550".into())
        ),
        "a NUL from a provider's reply is left out"
    );
    assert_eq!(
        state_of(ids[2]).0,
        "sending",
        "the lost claim wrote nothing"
    );
    assert_eq!(state_of(ids[3]).0, "scheduled");
    assert_eq!(
        deliveries::event_kinds(&mut connection, ids[1])
            .await
            .unwrap(),
        ["accepted", "sending", "sent", "failed"]
    );
    assert_eq!(
        deliveries::event_kinds(&mut connection, ids[2])
            .await
            .unwrap(),
        ["accepted", "sending"]
    );
    assert_eq!(
        deliveries::event_kinds(&mut connection, ids[3])
            .await
            .unwrap(),
        ["accepted", "sending", "scheduled"]
    );
    let failures: i64 = schema::failures::table
        .count()
        .get_result(&mut connection)
        .await
        .unwrap();
    assert_eq!(failures, 1);
    let comes_back: Vec<chrono::DateTime<chrono::Utc>> = schema::outbox::table
        .filter(schema::outbox::delivery_id.eq(ids[3].as_uuid()))
        .filter(schema::outbox::published_at.is_null())
        .select(schema::outbox::available_at)
        .load(&mut connection)
        .await
        .unwrap();
    assert_eq!(comes_back.len(), 2, "the submit's row and the deferral's");
    assert!(
        comes_back
            .iter()
            .any(|at| (*at - until).num_milliseconds().abs() < 1)
    );
    let disabled = herald_db::contacts::disabled_among(
        &mut connection,
        &[(Channel::Email, "ada@example.com")],
    )
    .await
    .unwrap();
    assert_eq!(disabled.len(), 1, "disabled with the outcome");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resent_unknown_outcome_pins_the_delivery_to_its_provider_for_good() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let (_, delivery_id) = seed(&mut connection, None).await;
    let claim_once = async |connection: &mut diesel_async::AsyncPgConnection| {
        let answers = deliveries::claim_many(connection, &[delivery_id], LEASE, chrono::Utc::now())
            .await
            .unwrap();
        claimed(&answers[0]).clone()
    };
    let first = claim_once(&mut connection).await;
    assert_eq!(first.delivery.pinned_provider, None);

    let resend = Outcome::Resend {
        error: "gateway timed out".into(),
    };
    let recorded = deliveries::finish_many(
        &mut connection,
        &[Finishing {
            claim: &first.claim,
            outcome: &resend,
            provider: Some("gateway"),
            invalid_addresses: &[],
            pin: true,
            retry_in: None,
        }],
    )
    .await
    .unwrap();
    assert_eq!(recorded, [true]);
    let second = claim_once(&mut connection).await;
    assert_eq!(second.delivery.pinned_provider.as_deref(), Some("gateway"));

    // A later attempt elsewhere (it should not happen) cannot move the pin.
    let retry = Outcome::RetryWait {
        error: "503".into(),
    };
    deliveries::finish_many(
        &mut connection,
        &[Finishing {
            claim: &second.claim,
            outcome: &retry,
            provider: Some("twilio"),
            invalid_addresses: &[],
            pin: true,
            retry_in: None,
        }],
    )
    .await
    .unwrap();
    let third = claim_once(&mut connection).await;
    assert_eq!(third.delivery.pinned_provider.as_deref(), Some("gateway"));
    let events: Vec<(String, Option<String>)> = schema::delivery_events::table
        .filter(schema::delivery_events::delivery_id.eq(delivery_id.as_uuid()))
        .filter(schema::delivery_events::kind.eq("retry_wait"))
        .order(schema::delivery_events::id.asc())
        .select((
            schema::delivery_events::kind,
            schema::delivery_events::error_class,
        ))
        .load(&mut connection)
        .await
        .unwrap();
    assert_eq!(
        events,
        [
            ("retry_wait".into(), Some("unknown".into())),
            ("retry_wait".into(), Some("retryable".into())),
        ],
        "the resend is recorded as an unknown outcome waiting for its retry"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_waiting_to_retry_is_not_claimed_before_its_delay() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let (_, waiting) = seed(&mut connection, None).await;
    let (_, due) = seed(&mut connection, None).await;
    let answers =
        deliveries::claim_many(&mut connection, &[waiting, due], LEASE, chrono::Utc::now())
            .await
            .unwrap();
    let claims: Vec<Claim> = answers
        .iter()
        .map(|answer| claimed(answer).claim.clone())
        .collect();
    let retry = Outcome::RetryWait {
        error: "smtp timed out".into(),
    };
    fn finishing<'a>(claim: &'a Claim, outcome: &'a Outcome, retry_in: Duration) -> Finishing<'a> {
        Finishing {
            claim,
            outcome,
            provider: Some("smtp"),
            invalid_addresses: &[],
            pin: false,
            retry_in: Some(retry_in),
        }
    }
    let recorded = deliveries::finish_many(
        &mut connection,
        &[
            finishing(&claims[0], &retry, Duration::from_secs(600)),
            finishing(&claims[1], &retry, Duration::ZERO),
        ],
    )
    .await
    .unwrap();
    assert_eq!(recorded, [true, true]);

    // The message both shared comes back at once (a worker stopped before settling it): the
    // one whose delay runs is left to its retry copy, the other is attempted.
    let answers =
        deliveries::claim_many(&mut connection, &[waiting, due], LEASE, chrono::Utc::now())
            .await
            .unwrap();
    assert!(
        matches!(answers[0], BatchClaim::NotDue { retry_after }
            if retry_after > Duration::from_secs(500) && retry_after <= Duration::from_secs(540)),
        "not due for 90% of ten minutes: {:?}",
        answers[0]
    );
    assert_eq!(claimed(&answers[1]).claim.attempt, 2);
    assert_eq!(
        deliveries::event_kinds(&mut connection, waiting)
            .await
            .unwrap(),
        ["accepted", "sending", "sent", "retry_wait"],
        "nothing was recorded for the early copy"
    );

    // Once the time has passed (moved back here, as the clock would move on), it is claimed.
    diesel::update(schema::deliveries::table.find(waiting.as_uuid()))
        .set(
            schema::deliveries::retry_not_before
                .eq(chrono::Utc::now() - chrono::Duration::seconds(1)),
        )
        .execute(&mut connection)
        .await
        .unwrap();
    let answers = deliveries::claim_many(&mut connection, &[waiting], LEASE, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(claimed(&answers[0]).claim.attempt, 2);
}
