//! Unit tests for validation and rendering.

use serde_json::json;

use super::*;

fn email(subject: &str, html: &str, text: &str) -> EmailPart {
    EmailPart {
        subject: subject.into(),
        html: html.into(),
        text: text.into(),
    }
}

fn content(part: EmailPart) -> TemplateContent {
    TemplateContent { email: Some(part) }
}

fn check_parameters(part: EmailPart, expected: &[&str]) {
    assert_eq!(validate(&content(part)).unwrap(), expected);
}

#[test]
fn parameters_are_inferred_from_every_part() {
    check_parameters(
        email(
            "Hi {{username}}",
            "<p>{{item_name}} ships {{{raw_html}}}</p>",
            "{{order.id}}",
        ),
        &["item_name", "order", "raw_html", "username"],
    );
}

#[test]
fn parameters_inside_each_are_relative_to_the_item() {
    check_parameters(
        email(
            "Order",
            "{{#each items}}{{name}}{{/each}}{{#if vip}}{{perk}}{{/if}}",
            "",
        ),
        &["items", "perk", "vip"],
    );
}

#[test]
fn syntax_errors_name_the_part() {
    let error = validate(&content(email("ok", "{{#if}}", ""))).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Syntax {
                part: "email.html",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_template_needs_a_subject_and_a_body() {
    assert!(matches!(
        validate(&content(email(" ", "x", ""))),
        Err(Error::Invalid {
            part: "email.subject",
            ..
        })
    ));
    assert!(matches!(
        validate(&content(email("s", "", ""))),
        Err(Error::Invalid { part: "email", .. })
    ));
    assert!(matches!(
        validate(&TemplateContent::default()),
        Err(Error::Invalid {
            part: "content",
            ..
        })
    ));
}

#[test]
fn html_is_escaped_only_in_the_html_part() {
    let rendered = render_email(
        &email("Hi {{name}}", "<p>{{name}}</p>", "Hi {{name}}"),
        &json!({"name": "<b>Ada & co</b>"}),
    )
    .unwrap();
    assert_eq!(rendered.subject, "Hi <b>Ada & co</b>");
    assert_eq!(rendered.html, "<p>&lt;b&gt;Ada &amp; co&lt;/b&gt;</p>");
    assert_eq!(rendered.text, "Hi <b>Ada & co</b>");
}

#[test]
fn a_missing_parameter_is_an_error_not_an_empty_string() {
    let error = render_email(&email("Hi {{username}}", "x", ""), &json!({})).unwrap_err();
    assert!(
        matches!(
            error,
            Error::MissingParameter {
                part: "email.subject",
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("username"), "{error}");
}

#[test]
fn parameter_values_are_data_not_templates() {
    let rendered = render_email(
        &email("{{name}}", "{{name}}", "{{name}}"),
        &json!({"name": "{{secret}} {{#each x}}"}),
    )
    .unwrap();
    assert_eq!(rendered.text, "{{secret}} {{#each x}}");
}

#[test]
fn subjects_cannot_inject_headers() {
    let rendered = render_email(
        &email("Hi {{name}}", "x", ""),
        &json!({"name": "a\r\nBcc: x@y.z"}),
    )
    .unwrap();
    assert_eq!(rendered.subject, "Hi a  Bcc: x@y.z");
}

#[test]
fn output_is_bounded() {
    let big = "x".repeat(MAX_OUTPUT_BYTES / 4 + 1);
    let error =
        render_email(&email("s", "{{v}}{{v}}{{v}}{{v}}", ""), &json!({"v": big})).unwrap_err();
    assert_eq!(error, Error::TooLarge { part: "email.html" });
}
