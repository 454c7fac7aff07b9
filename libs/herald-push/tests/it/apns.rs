//! APNs over HTTP/2: headers, payload, provider tokens and error mapping.

use std::time::{SystemTime, UNIX_EPOCH};

use herald_domain::{Platform, Priority};
use herald_test_support::ApnsServer;
use herald_worker::DeliveryError;
use serde_json::json;

use crate::{channel, context, deliver, device};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

#[tokio::test]
async fn apns_receives_the_alert_with_the_documented_headers() {
    let server = ApnsServer::start().await;
    let channel = channel(None, Some(&server));
    let token = ApnsServer::new_device_token();
    let context = context(
        vec![device(Platform::Ios, &token)],
        json!({"order_id": "{{order}}", "collapse_id": "order-{{order}}"}),
        Priority::High,
    );

    let attempted = deliver(&channel, &context).await;

    assert_eq!(attempted.provider, "apns");
    let receipt = attempted.result.expect("delivered");
    let delivery_id = context.delivery_id.to_string();
    assert_eq!(
        receipt.detail,
        format!("1 of 1 device accepted (apns-id {delivery_id})")
    );
    let notifications = server.notifications();
    assert_eq!(notifications.len(), 1);
    let notification = &notifications[0];
    assert_eq!(notification.device_token, token);
    assert_eq!(notification.header("apns-topic"), Some(server.topic()));
    assert_eq!(notification.header("apns-push-type"), Some("alert"));
    assert_eq!(notification.header("apns-priority"), Some("10"));
    assert_eq!(notification.header("apns-id"), Some(delivery_id.as_str()));
    assert_eq!(notification.header("apns-collapse-id"), Some("order-A-1"));
    let expiration: u64 = notification
        .header("apns-expiration")
        .expect("an expiration")
        .parse()
        .expect("unix seconds");
    let expected = unix_now() + 24 * 3600;
    assert!(
        expiration.abs_diff(expected) <= 5,
        "{expiration} vs {expected}"
    );
    assert!(
        notification
            .header("authorization")
            .is_some_and(|value| value.starts_with("bearer ")),
    );
    assert_eq!(
        notification.payload,
        json!({
            "aps": {"alert": {"title": "Order A-1 shipped", "body": "It arrives on Tuesday"},
                    "sound": "default"},
            "order_id": "A-1",
        })
    );
}

#[tokio::test]
async fn normal_priority_is_apns_priority_5_and_the_provider_token_is_reused() {
    let server = ApnsServer::start().await;
    let channel = channel(None, Some(&server));
    let context = context(
        vec![device(Platform::Ios, &ApnsServer::new_device_token())],
        json!({}),
        Priority::Normal,
    );

    for _ in 0..2 {
        assert!(deliver(&channel, &context).await.result.is_ok());
    }

    let notifications = server.notifications();
    assert_eq!(notifications.len(), 2);
    assert!(
        notifications
            .iter()
            .all(|notification| notification.header("apns-priority") == Some("5"))
    );
    assert_eq!(notifications[0].header("apns-collapse-id"), None);
    assert_eq!(
        server.provider_tokens().len(),
        1,
        "one provider token for both sends"
    );
}

#[tokio::test]
async fn an_unregistered_token_is_address_invalid() {
    let server = ApnsServer::start().await;
    let token = ApnsServer::new_device_token();
    server.mark_unregistered(&token);
    let channel = channel(None, Some(&server));

    let attempted = deliver(
        &channel,
        &context(
            vec![device(Platform::Ios, &token)],
            json!({}),
            Priority::Normal,
        ),
    )
    .await;

    assert_eq!(
        attempted.result,
        Err(DeliveryError::AddressInvalid {
            addresses: vec![token],
            detail: "no device accepted: apns 410 Unregistered".into(),
        })
    );
}

#[tokio::test]
async fn a_malformed_device_token_is_address_invalid() {
    let server = ApnsServer::start().await;
    let channel = channel(None, Some(&server));

    let attempted = deliver(
        &channel,
        &context(
            vec![device(Platform::Ios, "not-a-token")],
            json!({}),
            Priority::Normal,
        ),
    )
    .await;

    assert_eq!(
        attempted.result,
        Err(DeliveryError::AddressInvalid {
            addresses: vec!["not-a-token".into()],
            detail: "no device accepted: apns 400 BadDeviceToken".into(),
        })
    );
}

#[tokio::test]
async fn service_unavailable_is_retryable() {
    let server = ApnsServer::start().await;
    server.fail_next(1, 503, "ServiceUnavailable");
    let channel = channel(None, Some(&server));
    let context = context(
        vec![device(Platform::Ios, &ApnsServer::new_device_token())],
        json!({}),
        Priority::Normal,
    );

    let attempted = deliver(&channel, &context).await;
    assert_eq!(
        attempted.result,
        Err(DeliveryError::Retryable(
            "no device accepted: apns 503 ServiceUnavailable".into()
        ))
    );
    assert!(deliver(&channel, &context).await.result.is_ok());
}

#[tokio::test]
async fn an_expired_provider_token_answer_makes_the_next_send_sign_a_new_one() {
    let server = ApnsServer::start().await;
    server.fail_next(1, 403, "ExpiredProviderToken");
    let channel = channel(None, Some(&server));
    let context = context(
        vec![device(Platform::Ios, &ApnsServer::new_device_token())],
        json!({}),
        Priority::Normal,
    );

    let refused = deliver(&channel, &context).await;
    assert!(matches!(refused.result, Err(DeliveryError::Retryable(_))));
    assert!(deliver(&channel, &context).await.result.is_ok());
    assert_eq!(server.provider_tokens().len(), 2);
}

#[tokio::test]
async fn payload_too_large_from_apns_is_permanent() {
    let server = ApnsServer::start().await;
    server.fail_next(1, 413, "PayloadTooLarge");
    let channel = channel(None, Some(&server));

    let attempted = deliver(
        &channel,
        &context(
            vec![device(Platform::Ios, &ApnsServer::new_device_token())],
            json!({}),
            Priority::Normal,
        ),
    )
    .await;

    assert_eq!(
        attempted.result,
        Err(DeliveryError::Permanent(
            "no device accepted: apns 413 PayloadTooLarge".into()
        ))
    );
}

#[tokio::test]
async fn an_oversize_payload_fails_permanently_before_any_request() {
    let server = ApnsServer::start().await;
    let channel = channel(None, Some(&server));

    let attempted = deliver(
        &channel,
        &context(
            vec![device(Platform::Ios, &ApnsServer::new_device_token())],
            json!({"blob": "x".repeat(4100)}),
            Priority::Normal,
        ),
    )
    .await;

    assert!(matches!(
        attempted.result,
        Err(DeliveryError::Permanent(detail)) if detail.contains("more than the 4096 the provider accepts")
    ));
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn a_provider_token_with_the_wrong_key_id_is_refused_and_retryable() {
    let server = ApnsServer::start().await;
    herald_tls::install_crypto_provider();
    let channel = herald_push::PushChannel::from_settings(&herald_push::PushSettings {
        apns: Some(herald_push::ApnsSettings {
            key_id: "WRONGKEY00".into(),
            ..crate::apns_settings(&server)
        }),
        ..herald_push::PushSettings::default()
    })
    .expect("a push channel");

    let attempted = deliver(
        &channel,
        &context(
            vec![device(Platform::Ios, &ApnsServer::new_device_token())],
            json!({}),
            Priority::Normal,
        ),
    )
    .await;

    assert_eq!(
        attempted.result,
        Err(DeliveryError::Retryable(
            "no device accepted: apns 403 InvalidProviderToken".into()
        ))
    );
    assert!(server.notifications().is_empty());
}

#[tokio::test]
async fn a_server_certificate_outside_the_trusted_roots_is_a_retryable_transport_error() {
    let server = ApnsServer::start().await;
    herald_tls::install_crypto_provider();
    let channel = herald_push::PushChannel::from_settings(&herald_push::PushSettings {
        apns: Some(herald_push::ApnsSettings {
            ca_file: std::path::PathBuf::new(),
            ..crate::apns_settings(&server)
        }),
        ..herald_push::PushSettings::default()
    })
    .expect("a push channel");
    let token = ApnsServer::new_device_token();

    let attempted = deliver(
        &channel,
        &context(
            vec![device(Platform::Ios, &token)],
            json!({}),
            Priority::Normal,
        ),
    )
    .await;

    let Err(DeliveryError::Retryable(detail)) = attempted.result else {
        panic!("expected a retryable failure, got {:?}", attempted.result);
    };
    assert!(detail.contains("apns request failed"), "{detail}");
    assert!(
        !detail.contains(&token),
        "the device token stays out of errors: {detail}"
    );
    assert_eq!(server.requests(), 0);
}
