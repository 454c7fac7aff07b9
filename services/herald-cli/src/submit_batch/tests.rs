//! Reading `submit-batch` input lines into requests, and printing results.

use herald_proto::common;
use herald_proto::submit::{SubmitBatchResult, SubmitResponse};

use super::{Item, render, request};

fn parse(line: &str) -> anyhow::Result<herald_proto::submit::SubmitRequest> {
    request(serde_json::from_str::<Item>(line)?)
}

#[test]
fn a_line_becomes_a_submit_request() {
    let request = parse(
        r#"{"template": "order-shipped", "version": 2, "to": ["ada@example.com"],
            "recipients": [{"user_id": "u-1", "locale": "ko-KR"}],
            "params": {"item_name": "kettle", "count": 2}, "channels": ["email", "in-app"],
            "priority": "high", "idempotency_key": "order-42", "metadata": {"order": "42"},
            "send_at": "2030-01-31T12:00:00Z"}"#,
    )
    .unwrap();

    let template = request.template.unwrap();
    assert_eq!(
        (template.key.as_str(), template.version),
        ("order-shipped", Some(2))
    );
    assert_eq!(request.recipients.len(), 2);
    assert_eq!(request.recipients[0].email, "ada@example.com");
    assert_eq!(request.recipients[1].user_id, "u-1");
    assert_eq!(request.recipients[1].locale, "ko-KR");
    assert_eq!(
        request.channels,
        [common::Channel::Email as i32, common::Channel::InApp as i32]
    );
    assert_eq!(request.priority, common::Priority::High as i32);
    assert_eq!(request.idempotency_key, "order-42");
    assert_eq!(request.metadata["order"], "42");
    assert_eq!(request.send_at.unwrap().seconds, 1_896_091_200);
    let parameters = herald_proto::conversions::struct_to_json(request.parameters.unwrap());
    assert_eq!(parameters["count"], 2.0);
}

#[test]
fn defaults_are_email_and_normal_priority() {
    let request = parse(r#"{"template": "welcome", "to": ["ada@example.com"]}"#).unwrap();
    assert_eq!(request.channels, [common::Channel::Email as i32]);
    assert_eq!(request.priority, common::Priority::Normal as i32);
}

#[test]
fn unknown_fields_channels_and_priorities_are_refused() {
    assert!(parse(r#"{"template": "welcome", "too": ["x"]}"#).is_err());
    let channel = parse(r#"{"template": "welcome", "channels": ["fax"]}"#).unwrap_err();
    assert!(channel.to_string().contains("unknown channel `fax`"));
    let priority = parse(r#"{"template": "welcome", "priority": "urgent"}"#).unwrap_err();
    assert!(priority.to_string().contains("unknown priority `urgent`"));
}

#[test]
fn results_print_one_line_per_item() {
    let accepted = SubmitBatchResult {
        accepted: Some(SubmitResponse {
            notification_id: "n-1".into(),
            duplicate: true,
        }),
        code: 0,
        message: String::new(),
    };
    let refused = SubmitBatchResult {
        accepted: None,
        code: tonic::Code::InvalidArgument as i32,
        message: "items[1].recipients[0].email: must be a valid email address".into(),
    };
    assert_eq!(render(1, &accepted, false), "1 n-1 duplicate");
    assert_eq!(
        render(2, &refused, false),
        "2 error InvalidArgument items[1].recipients[0].email: must be a valid email address"
    );
    let json: serde_json::Value = serde_json::from_str(&render(2, &refused, true)).unwrap();
    assert_eq!(json["code"], "InvalidArgument");
}
