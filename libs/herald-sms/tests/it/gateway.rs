//! The generic HTTP/JSON gateway provider against a loopback gateway.

use std::time::Duration;

use crate::{
    GATEWAY_TOKEN, RECIPIENT, channel, context, deliver, expect_address_invalid, expect_permanent,
    expect_receipt, expect_retryable, gateway, gateway_server,
};

#[tokio::test]
async fn gateway_delivers_json_with_bearer_token_and_idempotency_key() {
    let server = gateway_server().await;
    let channel = channel(vec![gateway("gateway", server.url(), GATEWAY_TOKEN)]);
    let context = context(Some(RECIPIENT), "Your order has shipped", 1);

    let receipt = expect_receipt(deliver(&channel, &context, "gateway").await);

    let messages = server.wait_for_messages(1, Duration::from_secs(5)).await;
    let message = &messages[0];
    assert_eq!(message.to, RECIPIENT);
    assert_eq!(message.from.as_deref(), Some("Herald"));
    assert_eq!(message.body, "Your order has shipped");
    let delivery_id = context.delivery_id.to_string();
    assert_eq!(message.reference.as_deref(), Some(delivery_id.as_str()));
    assert_eq!(
        message.idempotency_key.as_deref(),
        Some(delivery_id.as_str())
    );
    assert_eq!(receipt.detail, format!("gateway id {}", message.id));
}

#[tokio::test]
async fn gateway_resending_a_delivery_reuses_its_idempotency_key() {
    let server = gateway_server().await;
    let channel = channel(vec![gateway("gateway", server.url(), GATEWAY_TOKEN)]);
    let context = context(Some(RECIPIENT), "Hello", 1);

    let first = expect_receipt(deliver(&channel, &context, "gateway").await);
    let second = expect_receipt(deliver(&channel, &context, "gateway").await);

    assert_eq!(first.detail, second.detail);
    assert_eq!(server.request_count(), 2);
    assert_eq!(server.messages().len(), 1, "the gateway sent it once");
}

#[tokio::test]
async fn gateway_invalid_number_makes_the_address_invalid() {
    let server = gateway_server().await;
    server.mark_invalid(RECIPIENT);
    let channel = channel(vec![gateway("gateway", server.url(), GATEWAY_TOKEN)]);

    let (addresses, detail) = expect_address_invalid(
        deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "gateway").await,
    );

    assert_eq!(addresses, [RECIPIENT]);
    assert_eq!(
        detail,
        "gateway rejected the recipient number (400, invalid_number)"
    );
}

#[tokio::test]
async fn gateway_throttling_and_server_errors_are_retryable() {
    let server = gateway_server().await;
    let channel = channel(vec![gateway("gateway", server.url(), GATEWAY_TOKEN)]);
    let cases = [
        (
            429,
            "rate_limited",
            "gateway asked to retry (429, rate_limited)",
        ),
        (500, "internal", "gateway failed (500, internal)"),
        (503, "unavailable", "gateway failed (503, unavailable)"),
    ];
    for (status, code, expected) in cases {
        server.fail_next(1, status, code);
        let detail = expect_retryable(
            deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "gateway").await,
        );
        assert_eq!(detail, expected);
    }
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn gateway_other_client_errors_are_permanent_with_their_code() {
    let server = gateway_server().await;
    server.fail_next(1, 422, "content_rejected");
    let channel = channel(vec![gateway("gateway", server.url(), GATEWAY_TOKEN)]);

    let detail =
        expect_permanent(deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "gateway").await);

    assert_eq!(
        detail,
        "gateway rejected the message (422, content_rejected)"
    );
}

#[tokio::test]
async fn gateway_with_a_wrong_token_is_a_retryable_authentication_failure() {
    let server = gateway_server().await;
    let channel = channel(vec![gateway("gateway", server.url(), "not-the-token")]);

    let detail =
        expect_retryable(deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "gateway").await);

    assert_eq!(detail, "gateway authentication failed (401, unauthorized)");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn gateway_at_a_wrong_path_is_permanent() {
    let server = gateway_server().await;
    let url = server.url().replace("/v1/messages", "/v2/send");
    let channel = channel(vec![gateway("gateway", url, GATEWAY_TOKEN)]);

    let detail =
        expect_permanent(deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "gateway").await);

    assert_eq!(detail, "gateway rejected the message (404, not_found)");
}

#[tokio::test]
async fn a_gateway_error_with_a_huge_body_is_classified_by_its_status_without_reading_it_all() {
    let server = herald_test_support::HugeBodyServer::start(503).await;
    let channel = channel(vec![gateway("gateway", server.url(), "token")]);

    let error =
        expect_retryable(deliver(&channel, &context(Some(RECIPIENT), "Hello", 1), "gateway").await);

    assert!(error.contains("503"), "{error}");
    assert!(!error.contains("timed out"), "{error}");
    assert!(
        !server.sent_whole_body(),
        "the body was read past the limit"
    );
}
