//! Failover between providers and the per-provider circuit breaker, over real HTTP.

use std::time::Duration;

use herald_worker::{BreakerSettings, CircuitState};

use crate::{
    AUTH_TOKEN, GATEWAY_TOKEN, RECIPIENT, channel, channel_with, context, deliver,
    expect_address_invalid, expect_receipt, expect_retryable, gateway, gateway_server, twilio,
    twilio_server,
};

#[tokio::test]
async fn a_retryable_failure_on_the_primary_moves_the_next_attempt_to_the_secondary() {
    let primary = twilio_server().await;
    let secondary = gateway_server().await;
    primary.fail_next(1, 500, 20500);
    let channel = channel(vec![
        twilio("twilio", &primary, AUTH_TOKEN),
        gateway("gateway", secondary.url(), GATEWAY_TOKEN),
    ]);
    let first = context(Some(RECIPIENT), "Hello", 1);

    expect_retryable(deliver(&channel, &first, "twilio").await);
    let second = herald_worker::DeliveryContext {
        attempt: 2,
        cycle_attempt: 2,
        ..first.clone()
    };
    expect_receipt(deliver(&channel, &second, "gateway").await);

    assert!(primary.messages().is_empty());
    assert_eq!(primary.request_count(), 1);
    let messages = secondary.wait_for_messages(1, Duration::from_secs(5)).await;
    assert_eq!(messages[0].to, RECIPIENT);
    assert_eq!(
        messages[0].idempotency_key.as_deref(),
        Some(first.delivery_id.to_string().as_str())
    );
}

#[tokio::test]
async fn a_misconfigured_primary_fails_over_to_the_secondary() {
    let primary = twilio_server().await;
    let secondary = twilio_server().await;
    let channel = channel(vec![
        twilio("twilio-main", &primary, "a-stale-token"),
        twilio("twilio-backup", &secondary, AUTH_TOKEN),
    ]);

    let detail = expect_retryable(
        deliver(
            &channel,
            &context(Some(RECIPIENT), "Hello", 1),
            "twilio-main",
        )
        .await,
    );
    assert!(detail.contains("authentication failed"), "{detail}");
    expect_receipt(
        deliver(
            &channel,
            &context(Some(RECIPIENT), "Hello", 2),
            "twilio-backup",
        )
        .await,
    );

    assert_eq!(secondary.messages().len(), 1);
}

#[tokio::test]
async fn permanent_answers_keep_the_primary_in_use() {
    let primary = twilio_server().await;
    let secondary = gateway_server().await;
    primary.mark_invalid(RECIPIENT, 21614);
    let channel = channel_with(
        vec![
            twilio("twilio", &primary, AUTH_TOKEN),
            gateway("gateway", secondary.url(), GATEWAY_TOKEN),
        ],
        BreakerSettings {
            failure_threshold: 1,
            open_for: Duration::from_secs(30),
        },
        6,
    );

    for _ in 0..3 {
        expect_address_invalid(
            deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "twilio").await,
        );
    }

    assert_eq!(
        channel.failover().states()[0],
        ("twilio", CircuitState::Closed)
    );
    assert_eq!(secondary.request_count(), 0);
}

#[tokio::test]
async fn an_open_breaker_skips_the_primary_even_on_first_attempts_until_a_trial_succeeds() {
    let primary = twilio_server().await;
    let secondary = gateway_server().await;
    let open_for = Duration::from_secs(30);
    let channel = channel_with(
        vec![
            twilio("twilio", &primary, AUTH_TOKEN),
            gateway("gateway", secondary.url(), GATEWAY_TOKEN),
        ],
        BreakerSettings {
            failure_threshold: 3,
            open_for,
        },
        6,
    );

    // Three deliveries fail on their first attempt: the third failure opens the circuit.
    primary.fail_next(3, 503, 20503);
    for _ in 0..3 {
        expect_retryable(deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "twilio").await);
    }
    assert_eq!(
        channel.failover().states()[0],
        ("twilio", CircuitState::Open)
    );

    // While it is open, first attempts go straight to the secondary.
    for _ in 0..2 {
        expect_receipt(deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "gateway").await);
    }
    assert_eq!(
        primary.request_count(),
        3,
        "the open primary was not called"
    );
    assert_eq!(secondary.messages().len(), 2);

    // After `open_for` the breaker is half-open (the clock is moved, not waited for); the
    // next first attempt is the trial, and its success closes the circuit.
    tokio::time::pause();
    tokio::time::advance(open_for + Duration::from_millis(1)).await;
    tokio::time::resume();
    assert_eq!(
        channel.failover().states()[0],
        ("twilio", CircuitState::HalfOpen)
    );
    expect_receipt(deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "twilio").await);
    assert_eq!(
        channel.failover().states()[0],
        ("twilio", CircuitState::Closed)
    );
    expect_receipt(deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "twilio").await);
    assert_eq!(primary.messages().len(), 2);
}

#[tokio::test]
async fn a_failed_trial_keeps_the_primary_skipped() {
    let primary = twilio_server().await;
    let secondary = gateway_server().await;
    let open_for = Duration::from_secs(30);
    let channel = channel_with(
        vec![
            twilio("twilio", &primary, AUTH_TOKEN),
            gateway("gateway", secondary.url(), GATEWAY_TOKEN),
        ],
        BreakerSettings {
            failure_threshold: 1,
            open_for,
        },
        6,
    );

    primary.fail_next(2, 500, 20500);
    expect_retryable(deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "twilio").await);
    tokio::time::pause();
    tokio::time::advance(open_for + Duration::from_millis(1)).await;
    tokio::time::resume();
    expect_retryable(deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "twilio").await);

    assert_eq!(
        channel.failover().states()[0],
        ("twilio", CircuitState::Open)
    );
    expect_receipt(deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "gateway").await);
}
