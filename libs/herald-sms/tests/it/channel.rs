//! What the channel checks before any provider is called, and what it hands over.

use herald_worker::BreakerSettings;
use serde_json::json;

use crate::{
    AUTH_TOKEN, RECIPIENT, channel, channel_with, context, context_with, deliver,
    expect_address_invalid, expect_permanent, expect_receipt, twilio, twilio_server,
};

#[tokio::test]
async fn a_delivery_without_a_phone_number_is_permanent_and_calls_no_provider() {
    let server = twilio_server().await;
    let channel = channel(vec![twilio("twilio", &server, AUTH_TOKEN)]);

    let detail = expect_permanent(deliver(&channel, &context(None, "Hello", 1), "twilio").await);

    assert_eq!(detail, "the delivery has no phone number");
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn a_number_not_in_e164_form_is_an_invalid_address_and_calls_no_provider() {
    let server = twilio_server().await;
    let channel = channel(vec![twilio("twilio", &server, AUTH_TOKEN)]);

    for number in ["01012345678", "+82 10 1234 5678", "+1234567", "+0101234567"] {
        let (addresses, detail) = expect_address_invalid(
            deliver(&channel, &context(Some(number), "Hello", 1), "twilio").await,
        );
        assert_eq!(addresses, [number]);
        assert_eq!(detail, "the phone number is not in E.164 form");
    }
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn text_needing_more_than_max_segments_is_permanent_naming_count_and_encoding() {
    let server = twilio_server().await;
    let channel = channel_with(
        vec![twilio("twilio", &server, AUTH_TOKEN)],
        BreakerSettings::default(),
        2,
    );

    // 135 UCS-2 units: three parts of 67.
    let korean = "배".repeat(135);
    let detail =
        expect_permanent(deliver(&channel, &context(Some(RECIPIENT), &korean, 1), "twilio").await);
    assert_eq!(
        detail,
        "sms text needs 3 segments (UCS-2), more than max_segments 2"
    );

    // 307 GSM-7 septets: three parts of 153.
    let latin = "a".repeat(307);
    let detail =
        expect_permanent(deliver(&channel, &context(Some(RECIPIENT), &latin, 1), "twilio").await);
    assert_eq!(
        detail,
        "sms text needs 3 segments (GSM-7), more than max_segments 2"
    );
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn text_within_max_segments_is_sent_whole_as_one_message() {
    let server = twilio_server().await;
    let channel = channel_with(
        vec![twilio("twilio", &server, AUTH_TOKEN)],
        BreakerSettings::default(),
        2,
    );
    let korean = "배".repeat(134);

    expect_receipt(deliver(&channel, &context(Some(RECIPIENT), &korean, 1), "twilio").await);

    let messages = server.messages();
    assert_eq!(messages.len(), 1, "the provider concatenates the parts");
    assert_eq!(messages[0].body, korean);
}

#[tokio::test]
async fn the_sms_part_is_rendered_with_the_parameters() {
    let server = twilio_server().await;
    let channel = channel(vec![twilio("twilio", &server, AUTH_TOKEN)]);
    let context = context_with(
        Some(RECIPIENT),
        json!({ "sms": { "text": "Your code is {{code}} & expires in {{minutes}} min" } }),
        json!({ "code": "<123456>", "minutes": 5 }),
        1,
    );

    expect_receipt(deliver(&channel, &context, "twilio").await);

    // SMS text is never HTML-escaped.
    assert_eq!(
        server.messages()[0].body,
        "Your code is <123456> & expires in 5 min"
    );
}

#[tokio::test]
async fn a_template_without_an_sms_part_is_permanent() {
    let server = twilio_server().await;
    let channel = channel(vec![twilio("twilio", &server, AUTH_TOKEN)]);
    let context = context_with(
        Some(RECIPIENT),
        json!({ "email": { "subject": "Hi", "text": "Hello", "html": "<p>Hello</p>" } }),
        json!({}),
        1,
    );

    let detail = expect_permanent(deliver(&channel, &context, "twilio").await);

    assert!(detail.starts_with("template render failed"), "{detail}");
    assert!(detail.contains("sms"), "{detail}");
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn a_missing_parameter_is_permanent() {
    let server = twilio_server().await;
    let channel = channel(vec![twilio("twilio", &server, AUTH_TOKEN)]);
    let context = context_with(
        Some(RECIPIENT),
        json!({ "sms": { "text": "Your code is {{code}}" } }),
        json!({}),
        1,
    );

    let detail = expect_permanent(deliver(&channel, &context, "twilio").await);

    assert!(detail.starts_with("template render failed"), "{detail}");
    assert_eq!(server.request_count(), 0);
}
