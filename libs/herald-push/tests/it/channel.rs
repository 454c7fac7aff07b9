//! The channel across platforms: fan-out to every device, aggregation, missing providers.

use herald_domain::{Platform, Priority};
use herald_test_support::{ApnsServer, FcmServer};
use herald_worker::DeliveryError;
use serde_json::json;

use crate::{channel, context, deliver, device};

#[tokio::test]
async fn a_user_with_ios_and_android_devices_gets_the_notification_on_both() {
    let fcm = FcmServer::start("herald-test").await;
    let apns = ApnsServer::start().await;
    let channel = channel(Some(&fcm), Some(&apns));
    let ios = ApnsServer::new_device_token();

    let attempted = deliver(
        &channel,
        &context(
            vec![
                device(Platform::Ios, &ios),
                device(Platform::Android, "android-token"),
            ],
            json!({"order_id": "{{order}}"}),
            Priority::Critical,
        ),
    )
    .await;

    assert_eq!(attempted.provider, "apns+fcm");
    let receipt = attempted.result.expect("delivered");
    assert!(
        receipt.detail.starts_with("2 of 2 devices accepted"),
        "{}",
        receipt.detail
    );
    assert_eq!(apns.notifications().len(), 1);
    assert_eq!(apns.notifications()[0].device_token, ios);
    assert_eq!(fcm.messages().len(), 1);
    assert_eq!(fcm.messages()[0]["token"], "android-token");
    assert_eq!(fcm.messages()[0]["android"]["priority"], "HIGH");
}

#[tokio::test]
async fn an_unregistered_device_beside_a_working_one_is_reported_for_disabling() {
    let fcm = FcmServer::start("herald-test").await;
    let apns = ApnsServer::start().await;
    let stale = ApnsServer::new_device_token();
    apns.mark_unregistered(&stale);
    let channel = channel(Some(&fcm), Some(&apns));

    let attempted = deliver(
        &channel,
        &context(
            vec![
                device(Platform::Ios, &stale),
                device(Platform::Android, "android-token"),
            ],
            json!({}),
            Priority::Normal,
        ),
    )
    .await;

    let receipt = attempted.result.expect("delivered to the android device");
    assert!(
        receipt.detail.starts_with("1 of 2 devices accepted"),
        "{}",
        receipt.detail
    );
    assert_eq!(receipt.invalid_addresses, vec![stale]);
}

#[tokio::test]
async fn a_retryable_failure_on_one_platform_with_none_accepted_is_retryable() {
    let fcm = FcmServer::start("herald-test").await;
    let apns = ApnsServer::start().await;
    let stale = ApnsServer::new_device_token();
    apns.mark_unregistered(&stale);
    fcm.fail_next(1, 500);
    let channel = channel(Some(&fcm), Some(&apns));

    let attempted = deliver(
        &channel,
        &context(
            vec![
                device(Platform::Ios, &stale),
                device(Platform::Android, "android-token"),
            ],
            json!({}),
            Priority::Normal,
        ),
    )
    .await;

    assert_eq!(
        attempted.result,
        Err(DeliveryError::Retryable(
            "no device accepted: apns 410 Unregistered; fcm 500 INTERNAL".into()
        ))
    );
}

#[tokio::test]
async fn a_user_without_device_tokens_fails_permanently() {
    let fcm = FcmServer::start("herald-test").await;
    let channel = channel(Some(&fcm), None);

    let attempted = deliver(&channel, &context(Vec::new(), json!({}), Priority::Normal)).await;

    assert_eq!(attempted.provider, "fcm");
    assert_eq!(
        attempted.result,
        Err(DeliveryError::Permanent(
            "the user has no enabled device tokens".into()
        ))
    );
    assert_eq!(fcm.token_requests(), 0);
}

#[tokio::test]
async fn a_device_whose_provider_is_not_configured_is_skipped() {
    let fcm = FcmServer::start("herald-test").await;
    let channel = channel(Some(&fcm), None);
    let ios = ApnsServer::new_device_token();

    let only_ios = deliver(
        &channel,
        &context(
            vec![device(Platform::Ios, &ios)],
            json!({}),
            Priority::Normal,
        ),
    )
    .await;
    assert_eq!(
        only_ios.result,
        Err(DeliveryError::Permanent(
            "no device accepted: ios device skipped: push.apns is not configured".into()
        ))
    );

    let mixed = deliver(
        &channel,
        &context(
            vec![
                device(Platform::Ios, &ios),
                device(Platform::Web, "web-token"),
            ],
            json!({}),
            Priority::Normal,
        ),
    )
    .await;
    assert_eq!(mixed.provider, "fcm");
    let receipt = mixed.result.expect("delivered to the web device");
    assert!(
        receipt.detail.starts_with("1 of 2 devices accepted"),
        "{}",
        receipt.detail
    );
    assert!(receipt.invalid_addresses.is_empty());
}
