use std::time::Duration;

use herald_test_support::WebhookReceiver;
use secrecy::SecretString;

use super::*;

/// The example from the Standard Webhooks specification's test vectors.
#[test]
fn signatures_match_the_standard_webhooks_test_vector() {
    let key = signature::secret_bytes(&SecretString::from(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ))
    .expect("a valid secret");
    let body = br#"{"test": 2432232314}"#;
    let signature = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
    assert_eq!(
        signature.header_value(),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
    assert!(verify(
        &key,
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1_614_265_330,
        body,
        "v1,bm90IGl0 v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    ));
    assert!(!verify(
        &key,
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1_614_265_331,
        body,
        &signature.header_value()
    ));
}

#[test]
fn secrets_that_cannot_be_keys_are_refused_by_validation() {
    let settings = ChatSettings {
        destinations: [
            (
                "short".to_owned(),
                DestinationSettings::Signed {
                    url: SecretString::from("https://hooks.example.com/a"),
                    secret: SecretString::from("tooshort"),
                },
            ),
            (
                "not-base64".to_owned(),
                DestinationSettings::Signed {
                    url: SecretString::from("https://hooks.example.com/b"),
                    secret: SecretString::from("whsec_***"),
                },
            ),
            (
                "bad-url".to_owned(),
                DestinationSettings::Slack {
                    url: SecretString::from("ftp://hooks.example.com/c"),
                },
            ),
        ]
        .into(),
        ..ChatSettings::default()
    };
    let mut problems = Vec::new();
    settings.validate(&mut problems);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].starts_with("chat.destinations.bad-url.url"));
    assert!(problems[1].starts_with("chat.destinations.not-base64.secret"));
    assert!(problems[2].starts_with("chat.destinations.short.secret"));
}

fn message() -> ChatMessage {
    ChatMessage {
        id: "0190f3c2-6a4e-7000-8000-000000000001".into(),
        text: "*Deploy finished* in 42 s".into(),
        event_type: "notification.chat".into(),
        fields: [("category".to_owned(), "ops".into())]
            .into_iter()
            .collect(),
    }
}

#[tokio::test]
async fn a_signed_webhook_carries_a_signature_the_receiver_can_verify() {
    let receiver = WebhookReceiver::start().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let destination = Destination::new(
        &DestinationSettings::Signed {
            url: SecretString::from(receiver.url("/hooks/herald")),
            secret: SecretString::from(secret),
        },
        Duration::from_secs(5),
    )
    .expect("a destination");

    destination.send(&message()).await.expect("delivered");

    let request = receiver
        .wait_for_requests(1, Duration::from_secs(5))
        .await
        .remove(0);
    assert_eq!(request.path, "/hooks/herald");
    let header = |name: &str| {
        request.headers[name]
            .to_str()
            .expect("an ASCII header")
            .to_owned()
    };
    assert_eq!(header("webhook-id"), "0190f3c2-6a4e-7000-8000-000000000001");
    let timestamp: i64 = header("webhook-timestamp").parse().expect("unix seconds");
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 60);
    let key = signature::secret_bytes(&SecretString::from(secret)).expect("a valid secret");
    assert!(verify(
        &key,
        &header("webhook-id"),
        timestamp,
        &request.body,
        &header("webhook-signature"),
    ));
    let body = request.json();
    assert_eq!(body["type"], "notification.chat");
    assert_eq!(body["text"], "*Deploy finished* in 42 s");
    assert_eq!(body["category"], "ops");

    // A tampered body no longer verifies.
    let mut tampered = request.body.to_vec();
    tampered.push(b' ');
    assert!(!verify(
        &key,
        &header("webhook-id"),
        timestamp,
        &tampered,
        &header("webhook-signature"),
    ));
}

#[tokio::test]
async fn slack_webhooks_get_the_text_and_failures_are_classified() {
    let receiver = WebhookReceiver::start().await;
    let destination = Destination::new(
        &DestinationSettings::Slack {
            url: SecretString::from(receiver.url("/services/T000/B000/XXXX")),
        },
        Duration::from_secs(5),
    )
    .expect("a destination");

    destination.send(&message()).await.expect("delivered");
    let request = receiver
        .wait_for_requests(1, Duration::from_secs(5))
        .await
        .remove(0);
    assert_eq!(
        request.json(),
        serde_json::json!({ "text": "*Deploy finished* in 42 s" })
    );
    assert!(request.headers.get("webhook-signature").is_none());

    receiver.respond_with(503);
    assert!(matches!(
        destination.send(&message()).await,
        Err(DeliveryError::Retryable(detail)) if detail == "webhook answered 503"
    ));
    receiver.respond_with(404);
    assert!(matches!(
        destination.send(&message()).await,
        Err(DeliveryError::Permanent(detail)) if detail.starts_with("webhook answered 404")
    ));
}

#[tokio::test]
async fn an_unreachable_destination_is_retryable_and_the_error_hides_the_url() {
    let port = herald_test_support::refused_port();
    let destination = Destination::new(
        &DestinationSettings::Slack {
            url: SecretString::from(format!("http://127.0.0.1:{port}/services/secret-token")),
        },
        Duration::from_secs(5),
    )
    .expect("a destination");
    match destination.send(&message()).await {
        Err(DeliveryError::Retryable(detail)) => {
            assert_eq!(detail, "webhook could not connect");
        }
        other => panic!("expected a retryable error, got {other:?}"),
    }
}
