//! The SMS channel through the public API, the relay, RabbitMQ and the SMS worker, to a
//! Twilio-compatible Messages API and a generic HTTP gateway on loopback: delivery, retries,
//! failover to the secondary provider, invalid numbers and over-long texts.

use std::time::Duration;

use herald_channel_worker::WorkerChannel;
use herald_proto::common::Channel as WireChannel;
use herald_proto::preference::ContactPoints;
use herald_proto::submit::{NotificationStatus, Recipient, SubmitRequest, TemplateRef};
use herald_proto::template::{SmsPart, TemplateContent};
use herald_test_support::{SmsGatewayServer, TwilioServer};
use serde_json::{Value, json};

use crate::channels::{contacts_of, provider_events, set_contacts};
use crate::harness::{Options, TestApp, parameters};

pub(crate) const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub(crate) const AUTH_TOKEN: &str = "twilio-auth-token";
const GATEWAY_TOKEN: &str = "gateway-bearer-token";
/// The sender number configured for Twilio.
pub(crate) const SENDER: &str = "+15005550006";
/// The user's phone number.
pub(crate) const PHONE: &str = "+821012345678";
const WAIT: Duration = Duration::from_secs(10);

/// A Twilio-compatible `[[sms.providers]]` entry named `name` at `base_url`, as operators
/// write it, sending from `SENDER`.
pub(crate) fn twilio_provider(name: &str, base_url: &str) -> Value {
    json!({
        "kind": "twilio",
        "name": name,
        "base_url": base_url,
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "from": SENDER,
        "timeout": "5s",
    })
}

fn gateway_provider(name: &str, gateway: &SmsGatewayServer) -> Value {
    json!({
        "kind": "http_gateway",
        "name": name,
        "url": gateway.url(),
        "token": GATEWAY_TOKEN,
        "from": "Herald",
        "timeout": "5s",
    })
}

/// Sets the worker's `[sms]` section to `providers` in failover order, the other keys at their
/// defaults. Built from the configuration shape (`config/base.toml`), so a renamed key fails
/// here the way it would fail an operator.
pub(crate) fn set_sms_providers(
    settings: &mut herald_channel_worker::Settings,
    providers: Vec<Value>,
) {
    settings.sms =
        serde_json::from_value(json!({ "providers": providers })).expect("a valid [sms] section");
}

/// An app without the email worker, the SMS templates, and an SMS worker with `providers`.
async fn sms_app(providers: Vec<Value>) -> TestApp {
    sms_app_with(providers, herald_worker::UnknownOutcome::Resend).await
}

/// `sms_app` whose worker follows `policy` for unknown outcomes.
async fn sms_app_with(providers: Vec<Value>, policy: herald_worker::UnknownOutcome) -> TestApp {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_template_with(
        "order-shipped",
        "orders",
        TemplateContent {
            sms: Some(SmsPart {
                text: "Hi {{name}}, order {{order}} has shipped.".into(),
            }),
            ..TemplateContent::default()
        },
    )
    .await;
    app.create_template_with(
        "order-shipped-ko",
        "orders",
        TemplateContent {
            sms: Some(SmsPart {
                text: "{{name}}님, 주문 {{order}}이(가) 발송되었습니다 📦".into(),
            }),
            ..TemplateContent::default()
        },
    )
    .await;
    let mut settings = app.channel_worker_settings();
    set_sms_providers(&mut settings, providers);
    settings.worker.unknown_outcome.sms = policy;
    app.start_channel_worker(WorkerChannel::Sms, settings);
    app
}

/// An app whose only SMS provider is `twilio`.
async fn twilio_app() -> (TestApp, TwilioServer) {
    let twilio = TwilioServer::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let app = sms_app(vec![twilio_provider("twilio", &twilio.base_url())]).await;
    (app, twilio)
}

/// An SMS submit of `template` to `recipient`.
fn sms_request(template: &str, recipient: Recipient, pairs: &[(&str, &str)]) -> SubmitRequest {
    SubmitRequest {
        template: Some(TemplateRef {
            key: template.into(),
            version: None,
        }),
        parameters: Some(parameters(pairs)),
        recipients: vec![recipient],
        channels: vec![WireChannel::Sms.into()],
        ..SubmitRequest::default()
    }
}

/// An `order-shipped` SMS to `user-1`, whose phone comes from their preferences.
fn to_user() -> SubmitRequest {
    sms_request(
        "order-shipped",
        Recipient {
            user_id: "user-1".into(),
            ..Recipient::default()
        },
        &[("name", "Ada"), ("order", "A-1")],
    )
}

async fn with_phone(app: &TestApp) {
    set_contacts(
        app,
        "user-1",
        ContactPoints {
            phone: PHONE.into(),
            ..ContactPoints::default()
        },
    )
    .await;
}

async fn submit(app: &TestApp, request: SubmitRequest) -> String {
    app.submit(request)
        .await
        .expect("submitting an SMS")
        .notification_id
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sms_to_a_users_phone_is_delivered_through_twilio_with_the_rendered_text() {
    let (app, twilio) = twilio_app().await;
    with_phone(&app).await;

    let id = submit(&app, to_user()).await;

    let notification = app
        .wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    let delivery = &notification.deliveries[0];
    assert_eq!(delivery.channel(), WireChannel::Sms);
    assert_eq!(delivery.attempts, 1, "{delivery:?}");
    assert_eq!(delivery.last_error, "");
    let messages = twilio.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].to, PHONE);
    assert_eq!(messages[0].from.as_deref(), Some(SENDER));
    assert_eq!(messages[0].body, "Hi Ada, order A-1 has shipped.");
    // The peer answers 401 to wrong basic-auth credentials; one request means they were right.
    assert_eq!(twilio.request_count(), 1);
    assert_eq!(
        provider_events(&app, &delivery.id).await,
        [("delivered".to_owned(), "twilio".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn korean_text_reaches_twilio_intact() {
    let (app, twilio) = twilio_app().await;

    let id = submit(
        &app,
        sms_request(
            "order-shipped-ko",
            Recipient {
                phone: PHONE.into(),
                ..Recipient::default()
            },
            &[("name", "김민수"), ("order", "가-1")],
        ),
    )
    .await;

    app.wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    let messages = twilio.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].to, PHONE);
    assert_eq!(
        messages[0].body,
        "김민수님, 주문 가-1이(가) 발송되었습니다 📦"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_503_from_twilio_is_retried_and_then_delivered() {
    let (app, twilio) = twilio_app().await;
    with_phone(&app).await;
    twilio.fail_next(1, 503, 20503);

    let id = submit(&app, to_user()).await;

    let notification = app
        .wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    let delivery = &notification.deliveries[0];
    assert!(delivery.attempts >= 2, "{delivery:?}");
    assert_eq!(twilio.request_count(), 2);
    assert_eq!(twilio.messages().len(), 1);
    assert_eq!(
        provider_events(&app, &delivery.id).await,
        [
            ("retry_wait".to_owned(), "twilio".to_owned()),
            ("delivered".to_owned(), "twilio".to_owned()),
        ]
    );
    assert!(app.failure_classes().await.is_empty());
}

/// Sends one SMS to `user-1` on an app whose primary (`twilio`) fails its first attempt, and
/// checks that the retry went to the secondary `gateway`, which delivered it.
async fn check_the_gateway_delivers_the_retry(app: &TestApp, gateway: &SmsGatewayServer) {
    with_phone(app).await;

    let id = submit(app, to_user()).await;

    let notification = app
        .wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    let delivery = &notification.deliveries[0];
    assert_eq!(delivery.attempts, 2, "{delivery:?}");
    assert_eq!(
        provider_events(app, &delivery.id).await,
        [
            ("retry_wait".to_owned(), "twilio".to_owned()),
            ("delivered".to_owned(), "gateway".to_owned()),
        ]
    );
    let messages = gateway.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].to, PHONE);
    assert_eq!(messages[0].from.as_deref(), Some("Herald"));
    assert_eq!(messages[0].body, "Hi Ada, order A-1 has shipped.");
    assert_eq!(messages[0].reference.as_deref(), Some(delivery.id.as_str()));
    assert_eq!(
        messages[0].idempotency_key.as_deref(),
        Some(delivery.id.as_str())
    );
    assert_eq!(gateway.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn when_twilio_answers_500_the_secondary_gateway_delivers_the_retry() {
    let (twilio, gateway) = tokio::join!(
        TwilioServer::start(ACCOUNT_SID, AUTH_TOKEN),
        SmsGatewayServer::start(GATEWAY_TOKEN)
    );
    twilio.fail_next(1, 500, 20500);
    let app = sms_app(vec![
        twilio_provider("twilio", &twilio.base_url()),
        gateway_provider("gateway", &gateway),
    ])
    .await;

    check_the_gateway_delivers_the_retry(&app, &gateway).await;
    assert_eq!(twilio.request_count(), 1);
    assert!(twilio.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn when_twilio_is_unreachable_the_secondary_gateway_delivers_the_retry() {
    let gateway = SmsGatewayServer::start(GATEWAY_TOKEN).await;
    let nowhere = format!("http://127.0.0.1:{}", herald_test_support::refused_port());
    let app = sms_app(vec![
        twilio_provider("twilio", &nowhere),
        gateway_provider("gateway", &gateway),
    ])
    .await;

    check_the_gateway_delivers_the_retry(&app, &gateway).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_number_fails_for_good_disables_the_phone_and_suppresses_the_next_sms() {
    let (app, twilio) = twilio_app().await;
    with_phone(&app).await;
    twilio.mark_invalid(PHONE, 21614);

    let id = submit(&app, to_user()).await;

    let notification = app.wait_for_status(&id, NotificationStatus::Failed).await;
    let delivery = &notification.deliveries[0];
    assert_eq!(delivery.attempts, 1, "{delivery:?}");
    assert!(
        delivery.last_error.starts_with("address_invalid: ")
            && delivery.last_error.contains("21614"),
        "{}",
        delivery.last_error
    );
    assert!(
        !delivery.last_error.contains(PHONE),
        "{}",
        delivery.last_error
    );
    assert_eq!(app.failure_classes().await, ["permanent"]);
    herald_test_support::eventually("the SMS in the dead-letter queue", WAIT, || async {
        (app.vhost.ready_messages("herald.sms.deliver.dlq").await == 1).then_some(())
    })
    .await;
    let reason = herald_test_support::eventually("the phone to be disabled", WAIT, || async {
        let contacts = contacts_of(&app, "user-1").await;
        (!contacts.phone_disabled_reason.is_empty()).then_some(contacts.phone_disabled_reason)
    })
    .await;
    assert!(reason.contains("twilio"), "{reason}");

    let second = submit(&app, to_user()).await;

    let notification = app
        .wait_for_status(&second, NotificationStatus::Suppressed)
        .await;
    let reason = &notification.deliveries[0].last_error;
    assert!(reason.starts_with("address_disabled: "), "{reason}");
    assert_eq!(twilio.request_count(), 1);
    assert!(twilio.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sms_longer_than_max_segments_fails_for_good_and_nothing_is_sent() {
    let (app, twilio) = twilio_app().await;
    with_phone(&app).await;
    // 1,000 GSM-7 characters need 7 parts of 153; the default limit is 6.
    let long_name = "a".repeat(1000);
    let mut request = to_user();
    request.parameters = Some(parameters(&[("name", &long_name), ("order", "A-1")]));

    let id = submit(&app, request).await;

    let notification = app.wait_for_status(&id, NotificationStatus::Failed).await;
    let delivery = &notification.deliveries[0];
    assert_eq!(delivery.attempts, 1, "{delivery:?}");
    assert!(
        delivery
            .last_error
            .contains("segments (GSM-7), more than max_segments 6"),
        "{}",
        delivery.last_error
    );
    assert_eq!(app.failure_classes().await, ["permanent"]);
    herald_test_support::eventually("the SMS in the dead-letter queue", WAIT, || async {
        (app.vhost.ready_messages("herald.sms.deliver.dlq").await == 1).then_some(())
    })
    .await;
    assert_eq!(twilio.request_count(), 0);
    // A content problem says nothing about the number.
    assert_eq!(contacts_of(&app, "user-1").await.phone_disabled_reason, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sms_submit_without_phone_or_user_id_is_refused_with_the_field_to_fix() {
    let (app, twilio) = twilio_app().await;

    let status = app
        .submit(sms_request(
            "order-shipped",
            Recipient::default(),
            &[("name", "Ada"), ("order", "A-1")],
        ))
        .await
        .unwrap_err();

    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("recipients[0].phone: "),
        "{}",
        status.message()
    );
    assert_eq!(app.count_rows("notifications").await, 0);
    assert_eq!(twilio.request_count(), 0);
}

/// A gateway `[[sms.providers]]` entry whose requests time out after `timeout`.
fn impatient_gateway_provider(name: &str, gateway: &SmsGatewayServer, timeout: &str) -> Value {
    let mut provider = gateway_provider(name, gateway);
    provider["timeout"] = json!(timeout);
    provider
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sms_whose_answer_is_lost_is_resent_to_the_same_gateway_with_its_key_and_sent_once() {
    let primary = SmsGatewayServer::start(GATEWAY_TOKEN).await;
    let secondary = SmsGatewayServer::start(GATEWAY_TOKEN).await;
    primary.swallow_answer_of_next(1);
    let app = sms_app(vec![
        impatient_gateway_provider("primary", &primary, "500ms"),
        gateway_provider("secondary", &secondary),
    ])
    .await;
    with_phone(&app).await;

    let id = submit(&app, to_user()).await;

    let notification = app
        .wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    let delivery = &notification.deliveries[0];
    assert_eq!(delivery.attempts, 2, "{delivery:?}");
    assert_eq!(
        provider_events(&app, &delivery.id).await,
        [
            ("retry_wait".to_owned(), "primary".to_owned()),
            ("delivered".to_owned(), "primary".to_owned()),
        ],
        "an unknown outcome never fails over"
    );
    assert_eq!(primary.request_count(), 2);
    let messages = primary.messages();
    assert_eq!(messages.len(), 1, "the gateway knew the key: one text");
    assert_eq!(
        messages[0].idempotency_key.as_deref(),
        Some(delivery.id.as_str())
    );
    assert_eq!(secondary.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn under_hold_an_sms_whose_answer_is_lost_stays_unknown_until_an_operator_replays_it() {
    let gateway = SmsGatewayServer::start(GATEWAY_TOKEN).await;
    gateway.swallow_answer_of_next(1);
    let app = sms_app_with(
        vec![impatient_gateway_provider("gateway", &gateway, "500ms")],
        herald_worker::UnknownOutcome::Hold,
    )
    .await;
    with_phone(&app).await;

    let id = submit(&app, to_user()).await;

    let held = app.wait_for_status(&id, NotificationStatus::Failed).await;
    let delivery = &held.deliveries[0];
    assert_eq!(
        delivery.state(),
        herald_proto::submit::DeliveryState::Unknown
    );
    assert_eq!(delivery.attempts, 1);
    assert_eq!(delivery.last_error, "gateway timed out");
    assert_eq!(app.failure_classes().await, ["unknown"]);
    assert_eq!(gateway.request_count(), 1, "held: not sent again");

    let mut admin = app.admin_client().await;
    let failures = admin
        .list_failures(herald_proto::admin::ListFailuresRequest::default())
        .await
        .unwrap()
        .into_inner()
        .failures;
    admin
        .replay_failures(herald_proto::admin::ReplayFailuresRequest {
            ids: vec![failures[0].id.clone()],
            reason: "checked with the gateway".into(),
        })
        .await
        .unwrap();
    let replayed = app
        .wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    assert_eq!(replayed.deliveries[0].attempts, 2);
    assert_eq!(gateway.request_count(), 2);
    assert_eq!(
        gateway.messages().len(),
        1,
        "the replay carried the same idempotency key"
    );
}
