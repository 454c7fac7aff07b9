//! FCM HTTP v1: OAuth2 token exchange and caching, message shape, error mapping.

use herald_domain::{Platform, Priority};
use herald_push::PushChannel;
use herald_test_support::FcmServer;
use herald_worker::DeliveryError;
use serde_json::json;

use crate::{channel, context, deliver, device};

#[tokio::test]
async fn fcm_fetches_one_access_token_and_reuses_it_for_two_sends() {
    let server = FcmServer::start("herald-test").await;
    let channel = channel(Some(&server), None);
    let devices = vec![device(Platform::Android, "android-token-1")];

    for _ in 0..2 {
        let attempted = deliver(
            &channel,
            &context(
                devices.clone(),
                json!({"order_id": "{{order}}"}),
                Priority::High,
            ),
        )
        .await;
        assert_eq!(attempted.provider, "fcm");
        let receipt = attempted.result.expect("delivered");
        assert!(
            receipt
                .detail
                .starts_with("1 of 1 device accepted (fcm message projects/herald-test/messages/"),
            "{}",
            receipt.detail
        );
        assert!(receipt.invalid_addresses.is_empty());
    }

    assert_eq!(server.token_requests(), 1, "the access token is cached");
    let messages = server.messages();
    assert_eq!(messages.len(), 2);
    assert_eq!(
        messages[0],
        json!({
            "token": "android-token-1",
            "notification": {"title": "Order A-1 shipped", "body": "It arrives on Tuesday"},
            "data": {"order_id": "A-1"},
            "android": {"priority": "HIGH", "ttl": "86400s"},
        })
    );
}

#[tokio::test]
async fn concurrent_sends_to_several_devices_share_one_token_request() {
    let server = FcmServer::start("herald-test").await;
    let channel = channel(Some(&server), None);
    let devices = vec![
        device(Platform::Android, "android-token-1"),
        device(Platform::Android, "android-token-2"),
        device(Platform::Web, "web-token-1"),
    ];

    let attempted = deliver(&channel, &context(devices, json!({}), Priority::Normal)).await;

    assert_eq!(
        attempted
            .result
            .expect("delivered")
            .detail
            .split(" (")
            .next(),
        Some("3 of 3 devices accepted")
    );
    assert_eq!(server.token_requests(), 1);
    let messages = server.messages();
    assert_eq!(messages.len(), 3);
    let web = messages
        .iter()
        .find(|message| message["token"] == "web-token-1")
        .expect("the web message");
    assert_eq!(
        web["webpush"],
        json!({"headers": {"TTL": "86400", "Urgency": "normal"}})
    );
}

#[tokio::test]
async fn an_unregistered_token_is_address_invalid() {
    let server = FcmServer::start("herald-test").await;
    server.mark_unregistered("uninstalled");
    let channel = channel(Some(&server), None);

    let attempted = deliver(
        &channel,
        &context(
            vec![device(Platform::Android, "uninstalled")],
            json!({}),
            Priority::Normal,
        ),
    )
    .await;

    assert_eq!(
        attempted.result,
        Err(DeliveryError::AddressInvalid {
            addresses: vec!["uninstalled".into()],
            detail: "no device accepted: fcm 404 NOT_FOUND UNREGISTERED".into(),
        })
    );
}

#[tokio::test]
async fn unavailable_is_retryable_and_the_next_attempt_delivers() {
    let server = FcmServer::start("herald-test").await;
    server.fail_next(1, 503);
    let channel = channel(Some(&server), None);
    let mut context = context(
        vec![device(Platform::Android, "token")],
        json!({}),
        Priority::Normal,
    );

    let first = deliver(&channel, &context).await;
    assert_eq!(
        first.result,
        Err(DeliveryError::Retryable(
            "no device accepted: fcm 503 UNAVAILABLE".into()
        ))
    );
    assert!(server.messages().is_empty());

    context.attempt = 2;
    context.cycle_attempt = 2;
    let second = deliver(&channel, &context).await;
    assert!(second.result.is_ok(), "{:?}", second.result);
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn quota_exceeded_is_retryable() {
    let server = FcmServer::start("herald-test").await;
    server.fail_next(1, 429);
    let channel = channel(Some(&server), None);

    let attempted = deliver(
        &channel,
        &context(
            vec![device(Platform::Android, "token")],
            json!({}),
            Priority::Normal,
        ),
    )
    .await;

    assert_eq!(
        attempted.result,
        Err(DeliveryError::Retryable(
            "no device accepted: fcm 429 RESOURCE_EXHAUSTED QUOTA_EXCEEDED".into()
        ))
    );
}

#[tokio::test]
async fn a_rejected_access_token_is_retryable_and_the_next_send_fetches_a_new_one() {
    let server = FcmServer::start("herald-test").await;
    let channel = channel(Some(&server), None);
    let context = context(
        vec![device(Platform::Android, "token")],
        json!({}),
        Priority::Normal,
    );
    assert!(deliver(&channel, &context).await.result.is_ok());

    server.revoke_access_tokens();
    let refused = deliver(&channel, &context).await;
    assert_eq!(
        refused.result,
        Err(DeliveryError::Retryable(
            "no device accepted: fcm 401 UNAUTHENTICATED".into()
        ))
    );

    assert!(deliver(&channel, &context).await.result.is_ok());
    assert_eq!(server.token_requests(), 2);
    assert_eq!(server.messages().len(), 2);
}

#[tokio::test]
async fn an_oversize_payload_fails_permanently_before_any_request() {
    let server = FcmServer::start("herald-test").await;
    let channel = channel(Some(&server), None);
    let big = "x".repeat(5000);

    let attempted = deliver(
        &channel,
        &context(
            vec![device(Platform::Android, "token")],
            json!({"blob": big}),
            Priority::Normal,
        ),
    )
    .await;

    let Err(DeliveryError::Permanent(detail)) = attempted.result else {
        panic!("expected a permanent failure, got {:?}", attempted.result);
    };
    assert!(
        detail.contains("more than the 4096 the provider accepts"),
        "{detail}"
    );
    assert_eq!(server.token_requests(), 0);
    assert_eq!(server.send_requests(), 0);
}

#[tokio::test]
async fn a_token_expiring_within_a_minute_is_refreshed_before_the_next_send() {
    let server = FcmServer::start("herald-test").await;
    server.set_access_token_lifetime(std::time::Duration::from_secs(30));
    let channel = channel(Some(&server), None);
    let context = context(
        vec![device(Platform::Android, "token")],
        json!({}),
        Priority::Normal,
    );

    for _ in 0..2 {
        assert!(deliver(&channel, &context).await.result.is_ok());
    }

    assert_eq!(server.token_requests(), 2);
}

/// The channel with FCM's token endpoint or send endpoint at `huge`.
fn huge_body_channel(
    server: &FcmServer,
    huge: &herald_test_support::HugeBodyServer,
    at_token_uri: bool,
) -> PushChannel {
    let mut fcm = crate::fcm_settings(server);
    if at_token_uri {
        fcm.token_uri = format!("{}/token", huge.url());
    } else {
        fcm.base_url = huge.url();
    }
    herald_tls::install_crypto_provider();
    PushChannel::from_settings(&herald_push::PushSettings {
        fcm: Some(fcm),
        ..herald_push::PushSettings::default()
    })
    .expect("a push channel")
}

#[tokio::test]
async fn huge_bodies_from_the_token_endpoint_or_fcm_are_not_read_past_the_limit() {
    let server = FcmServer::start("herald-test").await;
    let huge = herald_test_support::HugeBodyServer::start(200).await;
    let android = || {
        context(
            vec![device(Platform::Android, "phone-1")],
            json!({}),
            Priority::Normal,
        )
    };

    let from_token_endpoint = deliver(&huge_body_channel(&server, &huge, true), &android()).await;
    assert_eq!(
        from_token_endpoint.result,
        Err(DeliveryError::Retryable(
            "no device accepted: fcm token response is not a token: the response body is over 65536 bytes"
                .into()
        ))
    );

    let from_fcm = deliver(&huge_body_channel(&server, &huge, false), &android()).await;
    assert_eq!(
        from_fcm.result.map(|receipt| receipt.detail),
        Ok("1 of 1 device accepted (fcm message )".into())
    );
    assert_eq!(huge.request_count(), 2);
    assert!(!huge.sent_whole_body(), "a body was read past the limit");
}
