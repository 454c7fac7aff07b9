//! The push channel through the public API, the relay, RabbitMQ and the push worker, to a
//! loopback APNs (HTTP/2 over TLS, ES256 provider tokens) and FCM HTTP v1 (OAuth2 with a
//! service-account JWT): fan-out to a user's devices, retries, unregistered tokens and limits.

use std::time::Duration;

use herald_channel_worker::WorkerChannel;
use herald_proto::common::{Channel as WireChannel, Priority as WirePriority};
use herald_proto::preference::{ContactPoints, DeviceToken, Platform};
use herald_proto::submit::{NotificationStatus, Recipient, SubmitRequest, TemplateRef};
use herald_proto::template::{PushPart, TemplateContent};
use herald_test_support::{ApnsServer, FcmServer};
use serde_json::json;

use crate::channels::{contacts_of, provider_events, set_contacts};
use crate::harness::{Options, TestApp, parameters};

const WAIT: Duration = Duration::from_secs(10);
/// An FCM registration token of the user's Android phone.
pub(crate) const ANDROID_TOKEN: &str = "fcm-registration-token-of-the-android-phone";

/// Sets the worker's `[push]` section to both loopback peers, written in the configuration
/// shape (`config/base.toml`).
pub(crate) fn set_push_providers(
    settings: &mut herald_channel_worker::Settings,
    fcm: &FcmServer,
    apns: &ApnsServer,
) {
    settings.push = serde_json::from_value(json!({
        "fcm": {
            "service_account_file": fcm.service_account_file(),
            "base_url": fcm.base_url(),
        },
        "apns": {
            "key_file": apns.key_file(),
            "key_id": apns.key_id(),
            "team_id": apns.team_id(),
            "topic": apns.topic(),
            "base_url": apns.base_url(),
            "ca_file": apns.ca_file(),
        },
    }))
    .expect("a valid [push] section");
}

/// A device token as PreferenceService takes it.
pub(crate) fn device(platform: Platform, token: &str) -> DeviceToken {
    DeviceToken {
        token: token.into(),
        platform: platform.into(),
        disabled_reason: String::new(),
    }
}

struct PushTest {
    app: TestApp,
    fcm: FcmServer,
    apns: ApnsServer,
}

/// An app without the email worker, the `order-shipped` push template and a push worker
/// sending to both peers.
async fn push_app() -> PushTest {
    let (app, fcm, apns) = tokio::join!(
        TestApp::spawn_with(Options {
            email_worker: false,
            ..Options::default()
        }),
        FcmServer::start("herald-test"),
        ApnsServer::start()
    );
    app.create_template_with(
        "order-shipped",
        "orders",
        TemplateContent {
            push: Some(PushPart {
                title: "Order {{order}} shipped".into(),
                body: "Hi {{name}}, it arrives on {{day}}.".into(),
                data: [
                    ("order_id".to_owned(), "{{order}}".to_owned()),
                    ("screen".to_owned(), "orders/{{order}}".to_owned()),
                    ("blob".to_owned(), "{{blob}}".to_owned()),
                ]
                .into(),
            }),
            ..TemplateContent::default()
        },
    )
    .await;
    let mut settings = app.channel_worker_settings();
    set_push_providers(&mut settings, &fcm, &apns);
    app.start_channel_worker(WorkerChannel::Push, settings);
    PushTest { app, fcm, apns }
}

/// Registers `devices` as `user-1`'s device tokens.
async fn with_devices(app: &TestApp, devices: Vec<DeviceToken>) {
    set_contacts(
        app,
        "user-1",
        ContactPoints {
            device_tokens: devices,
            ..ContactPoints::default()
        },
    )
    .await;
}

/// An `order-shipped` push to `user-1` at `priority`.
fn push_request(priority: WirePriority) -> SubmitRequest {
    SubmitRequest {
        template: Some(TemplateRef {
            key: "order-shipped".into(),
            version: None,
        }),
        parameters: Some(parameters(&[
            ("name", "Ada"),
            ("order", "A-1"),
            ("day", "Tuesday"),
            ("blob", "x"),
        ])),
        recipients: vec![Recipient {
            user_id: "user-1".into(),
            ..Recipient::default()
        }],
        channels: vec![WireChannel::Push.into()],
        priority: priority.into(),
        ..SubmitRequest::default()
    }
}

async fn submit(app: &TestApp, request: SubmitRequest) -> String {
    app.submit(request)
        .await
        .expect("submitting a push")
        .notification_id
}

fn expected_data() -> serde_json::Value {
    json!({"order_id": "A-1", "screen": "orders/A-1", "blob": "x"})
}

async fn dead_lettered(app: &TestApp, count: u32) {
    herald_test_support::eventually("the push in the dead-letter queue", WAIT, || async {
        (app.vhost.ready_messages("herald.push.deliver.dlq").await == count).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_with_an_iphone_and_an_android_phone_gets_the_push_on_both() {
    let PushTest { app, fcm, apns } = push_app().await;
    let iphone = ApnsServer::new_device_token();
    with_devices(
        &app,
        vec![
            device(Platform::Ios, &iphone),
            device(Platform::Android, ANDROID_TOKEN),
        ],
    )
    .await;

    let id = submit(&app, push_request(WirePriority::High)).await;

    let notification = app
        .wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    let delivery = &notification.deliveries[0];
    assert_eq!(delivery.channel(), WireChannel::Push);
    assert_eq!(delivery.attempts, 1, "{delivery:?}");
    assert_eq!(
        provider_events(&app, &delivery.id).await,
        [("delivered".to_owned(), "apns+fcm".to_owned())]
    );

    let notifications = apns.notifications();
    assert_eq!(notifications.len(), 1);
    let received = &notifications[0];
    assert_eq!(received.device_token, iphone);
    let mut payload = received.payload.clone();
    assert_eq!(
        payload["aps"]["alert"],
        json!({"title": "Order A-1 shipped", "body": "Hi Ada, it arrives on Tuesday."})
    );
    payload.as_object_mut().unwrap().remove("aps");
    assert_eq!(payload, expected_data());

    let messages = fcm.messages();
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message["token"], ANDROID_TOKEN);
    assert_eq!(
        message["notification"],
        json!({"title": "Order A-1 shipped", "body": "Hi Ada, it arrives on Tuesday."})
    );
    assert_eq!(message["data"], expected_data());
    assert_eq!(message["android"]["priority"], "HIGH");
    assert_eq!(fcm.token_requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn apns_sees_the_headers_apple_documents_for_an_urgent_alert() {
    let PushTest { app, apns, .. } = push_app().await;
    let iphone = ApnsServer::new_device_token();
    with_devices(&app, vec![device(Platform::Ios, &iphone)]).await;

    let urgent = submit(&app, push_request(WirePriority::Critical)).await;
    let routine = submit(&app, push_request(WirePriority::Normal)).await;

    let urgent = app
        .wait_for_status(&urgent, NotificationStatus::Delivered)
        .await;
    let routine = app
        .wait_for_status(&routine, NotificationStatus::Delivered)
        .await;
    let by_id = |delivery_id: &str| {
        apns.notifications()
            .into_iter()
            .find(|received| {
                received
                    .header("apns-id")
                    .is_some_and(|apns_id| apns_id.eq_ignore_ascii_case(delivery_id))
            })
            .unwrap_or_else(|| panic!("no notification with apns-id {delivery_id}"))
    };
    let received = by_id(&urgent.deliveries[0].id);
    assert_eq!(received.header("apns-priority"), Some("10"));
    assert_eq!(received.header("apns-push-type"), Some("alert"));
    assert_eq!(received.header("apns-topic"), Some(apns.topic()));
    let expiration: i64 = received
        .header("apns-expiration")
        .expect("apns-expiration")
        .parse()
        .expect("unix seconds");
    let now = chrono::Utc::now().timestamp();
    assert!(
        expiration > now + 3600 && expiration <= now + 24 * 3600 + 60,
        "apns-expiration {expiration}, now {now}"
    );
    assert!(
        received
            .header("authorization")
            .is_some_and(|value| value.starts_with("bearer ")),
        "{:?}",
        received.headers
    );
    assert_eq!(received.header("apns-collapse-id"), None);
    assert_eq!(
        by_id(&routine.deliveries[0].id).header("apns-priority"),
        Some("5")
    );
    // One provider token, reused for both requests.
    assert_eq!(apns.provider_tokens().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_503_from_fcm_is_retried_and_then_delivered() {
    let PushTest { app, fcm, .. } = push_app().await;
    with_devices(&app, vec![device(Platform::Android, ANDROID_TOKEN)]).await;
    fcm.fail_next(1, 503);

    let id = submit(&app, push_request(WirePriority::Normal)).await;

    let notification = app
        .wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    let delivery = &notification.deliveries[0];
    assert!(delivery.attempts >= 2, "{delivery:?}");
    assert_eq!(
        provider_events(&app, &delivery.id).await,
        [
            ("retry_wait".to_owned(), "fcm".to_owned()),
            ("delivered".to_owned(), "fcm".to_owned()),
        ]
    );
    assert_eq!(fcm.send_requests(), 2);
    let messages = fcm.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["android"]["priority"], "NORMAL");
    assert!(app.failure_classes().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unregistered_iphone_is_disabled_and_later_pushes_go_only_to_the_android_phone() {
    let PushTest { app, fcm, apns } = push_app().await;
    let stale = ApnsServer::new_device_token();
    apns.mark_unregistered(&stale);
    with_devices(
        &app,
        vec![
            device(Platform::Ios, &stale),
            device(Platform::Android, ANDROID_TOKEN),
        ],
    )
    .await;

    let first = submit(&app, push_request(WirePriority::Normal)).await;

    let notification = app
        .wait_for_status(&first, NotificationStatus::Delivered)
        .await;
    assert_eq!(
        provider_events(&app, &notification.deliveries[0].id).await,
        [("delivered".to_owned(), "apns+fcm".to_owned())]
    );
    assert_eq!(apns.requests(), 1);
    assert!(apns.notifications().is_empty());
    assert_eq!(fcm.messages().len(), 1);
    let devices = herald_test_support::eventually("the iPhone to be disabled", WAIT, || async {
        let devices = contacts_of(&app, "user-1").await.device_tokens;
        devices
            .iter()
            .any(|device| !device.disabled_reason.is_empty())
            .then_some(devices)
    })
    .await;
    assert_eq!(devices.len(), 2);
    for device in &devices {
        if device.token == stale {
            assert!(
                device.disabled_reason.contains("apns"),
                "{}",
                device.disabled_reason
            );
        } else {
            assert_eq!(
                device.disabled_reason, "",
                "the Android phone stays enabled"
            );
        }
    }

    let second = submit(&app, push_request(WirePriority::Normal)).await;

    let notification = app
        .wait_for_status(&second, NotificationStatus::Delivered)
        .await;
    assert_eq!(
        provider_events(&app, &notification.deliveries[0].id).await,
        [("delivered".to_owned(), "fcm".to_owned())]
    );
    assert_eq!(
        apns.requests(),
        1,
        "nothing more went to the disabled iPhone"
    );
    let messages = fcm.messages();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["token"], ANDROID_TOKEN);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_to_a_users_only_unregistered_token_fails_and_the_next_one_is_suppressed() {
    let PushTest { app, fcm, apns } = push_app().await;
    let stale = ApnsServer::new_device_token();
    apns.mark_unregistered(&stale);
    with_devices(&app, vec![device(Platform::Ios, &stale)]).await;

    let first = submit(&app, push_request(WirePriority::Normal)).await;

    let notification = app
        .wait_for_status(&first, NotificationStatus::Failed)
        .await;
    let delivery = &notification.deliveries[0];
    assert_eq!(delivery.attempts, 1, "{delivery:?}");
    assert!(
        delivery.last_error.starts_with("address_invalid: "),
        "{}",
        delivery.last_error
    );
    assert!(
        !delivery.last_error.contains(&stale),
        "{}",
        delivery.last_error
    );
    assert_eq!(
        provider_events(&app, &delivery.id).await,
        [("failed".to_owned(), "apns".to_owned())]
    );
    assert_eq!(app.failure_classes().await, ["permanent"]);
    dead_lettered(&app, 1).await;
    herald_test_support::eventually("the token to be disabled", WAIT, || async {
        let devices = contacts_of(&app, "user-1").await.device_tokens;
        (devices.len() == 1 && !devices[0].disabled_reason.is_empty()).then_some(())
    })
    .await;

    let second = submit(&app, push_request(WirePriority::Normal)).await;

    let notification = app
        .wait_for_status(&second, NotificationStatus::Suppressed)
        .await;
    let reason = &notification.deliveries[0].last_error;
    assert!(reason.starts_with("address_disabled: "), "{reason}");
    assert_eq!(apns.requests(), 1);
    assert_eq!(fcm.send_requests(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_whose_data_is_over_4096_bytes_fails_for_good_and_nothing_is_sent() {
    let PushTest { app, fcm, apns } = push_app().await;
    with_devices(
        &app,
        vec![
            device(Platform::Ios, &ApnsServer::new_device_token()),
            device(Platform::Android, ANDROID_TOKEN),
        ],
    )
    .await;
    let mut request = push_request(WirePriority::Normal);
    let blob = "x".repeat(5000);
    request.parameters = Some(parameters(&[
        ("name", "Ada"),
        ("order", "A-1"),
        ("day", "Tuesday"),
        ("blob", &blob),
    ]));

    let id = submit(&app, request).await;

    let notification = app.wait_for_status(&id, NotificationStatus::Failed).await;
    let delivery = &notification.deliveries[0];
    assert_eq!(delivery.attempts, 1, "{delivery:?}");
    assert!(
        delivery.last_error.contains("more than the 4096"),
        "{}",
        delivery.last_error
    );
    assert_eq!(app.failure_classes().await, ["permanent"]);
    dead_lettered(&app, 1).await;
    assert_eq!(apns.requests(), 0);
    assert_eq!(fcm.send_requests(), 0);
    assert_eq!(fcm.token_requests(), 0);
    // A content problem says nothing about the devices.
    let devices = contacts_of(&app, "user-1").await.device_tokens;
    assert!(
        devices
            .iter()
            .all(|device| device.disabled_reason.is_empty())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_to_a_user_without_device_tokens_is_suppressed_as_no_address() {
    let PushTest { app, fcm, apns } = push_app().await;
    set_contacts(
        &app,
        "user-1",
        ContactPoints {
            email: "ada@example.com".into(),
            ..ContactPoints::default()
        },
    )
    .await;

    let id = submit(&app, push_request(WirePriority::Normal)).await;

    let notification = app
        .wait_for_status(&id, NotificationStatus::Suppressed)
        .await;
    let reason = &notification.deliveries[0].last_error;
    assert!(reason.starts_with("no_address: "), "{reason}");
    assert_eq!(apns.requests(), 0);
    assert_eq!(fcm.send_requests(), 0);
    assert!(app.failure_classes().await.is_empty());
}
