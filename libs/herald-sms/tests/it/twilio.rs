//! The Twilio-compatible provider against a loopback Messages API.

use std::time::Duration;

use crate::{
    ACCOUNT_SID, AUTH_TOKEN, RECIPIENT, SENDER, channel, context, deliver, expect_address_invalid,
    expect_permanent, expect_receipt, expect_retryable, expect_unknown, twilio, twilio_server,
};
use herald_sms::{SmsProviderSettings, TwilioSettings};

#[tokio::test]
async fn twilio_delivers_a_form_encoded_message_with_basic_auth() {
    let server = twilio_server().await;
    let channel = channel(vec![twilio("twilio", &server, AUTH_TOKEN)]);

    let receipt = expect_receipt(
        deliver(
            &channel,
            &context(Some(RECIPIENT), "Your order has shipped", 1),
            "twilio",
        )
        .await,
    );

    let messages = server.wait_for_messages(1, Duration::from_secs(5)).await;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.to, RECIPIENT);
    assert_eq!(message.from.as_deref(), Some(SENDER));
    assert_eq!(message.messaging_service_sid, None);
    assert_eq!(message.body, "Your order has shipped");
    assert_eq!(
        receipt.detail,
        format!("twilio sid {} status queued", message.id)
    );
    assert!(message.id.starts_with("SM"), "{}", message.id);
    assert!(receipt.invalid_addresses.is_empty());
}

#[tokio::test]
async fn twilio_sends_through_a_messaging_service_instead_of_a_from_number() {
    let server = twilio_server().await;
    let channel = channel(vec![SmsProviderSettings::Twilio(TwilioSettings {
        name: "twilio".into(),
        base_url: format!("{}/", server.base_url()),
        account_sid: ACCOUNT_SID.into(),
        auth_token: AUTH_TOKEN.into(),
        from: None,
        messaging_service_sid: Some("MG0123456789abcdef0123456789abcdef".into()),
        timeout: Duration::from_secs(5),
    })]);

    let receipt =
        expect_receipt(deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "twilio").await);

    let message = &server.messages()[0];
    assert_eq!(message.from, None);
    assert_eq!(
        message.messaging_service_sid.as_deref(),
        Some("MG0123456789abcdef0123456789abcdef")
    );
    assert!(
        receipt.detail.ends_with("status accepted"),
        "{}",
        receipt.detail
    );
}

#[tokio::test]
async fn twilio_carries_korean_and_extension_characters_intact() {
    let server = twilio_server().await;
    let channel = channel(vec![twilio("twilio", &server, AUTH_TOKEN)]);
    let text = "주문하신 상품이 발송되었습니다 {€} & 100% = ok?";

    expect_receipt(deliver(&channel, &context(Some(RECIPIENT), text, 1), "twilio").await);

    assert_eq!(server.messages()[0].body, text);
}

#[tokio::test]
async fn twilio_with_wrong_credentials_is_a_retryable_authentication_failure() {
    let server = twilio_server().await;
    let channel = channel(vec![twilio("twilio", &server, "not-the-token")]);

    let detail =
        expect_retryable(deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "twilio").await);

    assert_eq!(detail, "twilio authentication failed (401, code 20003)");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn twilio_rejecting_the_number_makes_the_address_invalid() {
    for code in [21211, 21614, 21610] {
        let server = twilio_server().await;
        server.mark_invalid(RECIPIENT, code);
        let channel = channel(vec![twilio("twilio", &server, AUTH_TOKEN)]);

        let (addresses, detail) = expect_address_invalid(
            deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "twilio").await,
        );

        assert_eq!(addresses, [RECIPIENT]);
        assert_eq!(
            detail,
            format!("twilio rejected the recipient number (400, code {code})")
        );
        assert!(server.messages().is_empty());
    }
}

#[tokio::test]
async fn twilio_throttling_and_server_errors_are_retryable() {
    let server = twilio_server().await;
    let channel = channel(vec![twilio("twilio", &server, AUTH_TOKEN)]);
    let cases = [
        (429, 20429, "twilio throttled the request (429, code 20429)"),
        (500, 20500, "twilio failed (500, code 20500)"),
        (503, 20503, "twilio failed (503, code 20503)"),
    ];
    for (status, code, expected) in cases {
        server.fail_next(1, status, code);
        let detail = expect_retryable(
            deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "twilio").await,
        );
        assert_eq!(detail, expected);
    }
    assert!(server.messages().is_empty());
    assert_eq!(server.request_count(), 3);
}

#[tokio::test]
async fn twilio_other_client_errors_are_permanent_with_their_code() {
    let server = twilio_server().await;
    server.fail_next(1, 400, 21408);
    let channel = channel(vec![twilio("twilio", &server, AUTH_TOKEN)]);

    let detail =
        expect_permanent(deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "twilio").await);

    assert_eq!(detail, "twilio rejected the message (400, code 21408)");
}

#[tokio::test]
async fn twilio_unreachable_is_retryable() {
    let port = herald_test_support::refused_port();
    let channel = channel(vec![SmsProviderSettings::Twilio(TwilioSettings {
        name: "twilio".into(),
        base_url: format!("http://127.0.0.1:{port}"),
        account_sid: ACCOUNT_SID.into(),
        auth_token: AUTH_TOKEN.into(),
        from: Some(SENDER.into()),
        messaging_service_sid: None,
        timeout: Duration::from_secs(5),
    })]);

    let detail =
        expect_retryable(deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "twilio").await);

    assert_eq!(detail, "twilio could not connect");
}

#[tokio::test]
async fn twilio_not_answering_within_the_timeout_after_the_request_left_is_an_unknown_outcome() {
    // A peer that accepts connections and reads, but never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let address = listener.local_addr().expect("the listener's address");
    let (accepted_sender, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
            let _ = accepted_sender.send(());
        }
    });
    let channel = channel(vec![SmsProviderSettings::Twilio(TwilioSettings {
        name: "twilio".into(),
        base_url: format!("http://{address}"),
        account_sid: ACCOUNT_SID.into(),
        auth_token: AUTH_TOKEN.into(),
        from: Some(SENDER.into()),
        messaging_service_sid: None,
        timeout: Duration::from_millis(300),
    })]);

    let detail =
        expect_unknown(deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "twilio").await);

    assert_eq!(detail, "twilio timed out");
    assert!(
        accepted.recv().await.is_some(),
        "the request reached the peer"
    );
    silent.abort();
}

#[tokio::test]
async fn twilio_accepting_with_a_huge_body_is_delivered_without_reading_it_all() {
    let server = herald_test_support::HugeBodyServer::start(201).await;
    let channel = channel(vec![SmsProviderSettings::Twilio(TwilioSettings {
        name: "twilio".into(),
        base_url: server.url(),
        account_sid: ACCOUNT_SID.into(),
        auth_token: AUTH_TOKEN.into(),
        from: Some(crate::SENDER.into()),
        messaging_service_sid: None,
        timeout: Duration::from_secs(5),
    })]);

    let receipt =
        expect_receipt(deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "twilio").await);

    assert_eq!(receipt.detail, "twilio accepted the message with 201");
    assert_eq!(server.request_count(), 1);
    assert!(
        !server.sent_whole_body(),
        "the body was read past the limit"
    );
}
