//! The chat channel: Slack-compatible and signed webhooks to named destinations, through the
//! public API, the relay, RabbitMQ and the chat worker, to real HTTP servers on loopback.

use std::time::Duration;

use herald_channel_worker::WorkerChannel;
use herald_proto::common::Channel as WireChannel;
use herald_proto::submit::{NotificationStatus, Recipient, SubmitRequest, TemplateRef};
use herald_proto::template::{ChatPart, TemplateContent};
use herald_test_support::WebhookReceiver;
use herald_webhook::DestinationSettings;
use secrecy::SecretString;

use crate::harness::{TestApp, parameters};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn chat_app() -> (TestApp, WebhookReceiver) {
    let app = TestApp::spawn().await;
    app.create_template_with(
        "deploy-finished",
        "ops",
        TemplateContent {
            chat: Some(ChatPart {
                text: "*{{service}}* deployed in {{seconds}} s".into(),
            }),
            ..TemplateContent::default()
        },
    )
    .await;
    let receiver = WebhookReceiver::start().await;
    let mut settings = app.channel_worker_settings();
    settings.chat.destinations = [
        (
            "ops-slack".to_owned(),
            DestinationSettings::Slack {
                url: SecretString::from(receiver.url("/services/T000/B000/XXXX")),
            },
        ),
        (
            "billing-events".to_owned(),
            DestinationSettings::Signed {
                url: SecretString::from(receiver.url("/hooks/herald")),
                secret: SecretString::from(SECRET),
            },
        ),
    ]
    .into();
    app.start_channel_worker(WorkerChannel::Chat, settings);
    (app, receiver)
}

fn chat_request(destination: &str) -> SubmitRequest {
    SubmitRequest {
        template: Some(TemplateRef {
            key: "deploy-finished".into(),
            version: None,
        }),
        parameters: Some(parameters(&[("service", "checkout"), ("seconds", "42")])),
        recipients: vec![Recipient {
            chat_destination: destination.into(),
            ..Recipient::default()
        }],
        channels: vec![WireChannel::Chat.into()],
        ..SubmitRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chat_notification_reaches_a_slack_compatible_webhook() {
    let (app, receiver) = chat_app().await;
    let id = app
        .submit(chat_request("ops-slack"))
        .await
        .unwrap()
        .notification_id;

    let notification = app
        .wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    let requests = receiver.wait_for_requests(1, Duration::from_secs(5)).await;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/services/T000/B000/XXXX");
    assert_eq!(
        requests[0].json(),
        serde_json::json!({ "text": "*checkout* deployed in 42 s" })
    );
    let events = app.delivery_events(&notification.deliveries[0].id).await;
    assert!(
        events.contains(&("delivered".to_owned(), Some("slack-webhook".to_owned()))),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_webhook_verifies_with_the_destination_secret_and_carries_the_delivery_id() {
    let (app, receiver) = chat_app().await;
    let id = app
        .submit(chat_request("billing-events"))
        .await
        .unwrap()
        .notification_id;

    let notification = app
        .wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    let request = receiver
        .wait_for_requests(1, Duration::from_secs(5))
        .await
        .remove(0);
    let header = |name: &str| request.headers[name].to_str().unwrap().to_owned();
    let delivery_id = &notification.deliveries[0].id;
    assert_eq!(&header("webhook-id"), delivery_id);
    let timestamp: i64 = header("webhook-timestamp").parse().unwrap();
    let key = herald_webhook_key();
    assert!(herald_webhook::verify(
        &key,
        delivery_id,
        timestamp,
        &request.body,
        &header("webhook-signature")
    ));
    let body = request.json();
    assert_eq!(body["type"], "notification.chat");
    assert_eq!(body["id"], delivery_id.as_str());
    assert_eq!(body["notification_id"], id.as_str());
    assert_eq!(body["text"], "*checkout* deployed in 42 s");
    assert_eq!(body["template"], "deploy-finished");
}

/// The key bytes of `SECRET` (`whsec_` + base64), decoded the way receivers do.
fn herald_webhook_key() -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_that_answers_503_is_retried_until_it_accepts() {
    let (app, receiver) = chat_app().await;
    receiver.respond_with(503);
    let id = app
        .submit(chat_request("ops-slack"))
        .await
        .unwrap()
        .notification_id;
    receiver.wait_for_requests(1, Duration::from_secs(10)).await;
    receiver.respond_with(200);

    let notification = app
        .wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    let delivery = &notification.deliveries[0];
    assert!(delivery.attempts >= 2, "{delivery:?}");
    let events = app.delivery_events(&delivery.id).await;
    assert!(
        events
            .iter()
            .any(|(kind, _)| kind == "retry_scheduled" || kind == "retry_wait"),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_destination_fails_permanently_and_names_it() {
    let (app, receiver) = chat_app().await;
    let id = app
        .submit(chat_request("nowhere"))
        .await
        .unwrap()
        .notification_id;

    let notification = app.wait_for_status(&id, NotificationStatus::Failed).await;
    let delivery = &notification.deliveries[0];
    assert_eq!(delivery.attempts, 1);
    assert!(
        delivery
            .last_error
            .contains("chat destination `nowhere` is not configured"),
        "{}",
        delivery.last_error
    );
    assert!(receiver.requests().is_empty());
    assert_eq!(app.failure_classes().await, ["permanent"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chat_submit_without_a_destination_is_refused_with_the_field_to_fix() {
    let (app, _receiver) = chat_app().await;
    let status = app.submit(chat_request("")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("recipients[0].chat_destination: is required for the chat channel"),
        "{}",
        status.message()
    );
    let status = app.submit(chat_request("Ops Slack")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("recipients[0].chat_destination: must be"),
        "{}",
        status.message()
    );
    assert_eq!(app.count_rows("notifications").await, 0);
}
