//! The entry of the fuzz target `template` (and of the test replaying its corpus): compile and
//! render what a template admin and a submitter could send.

use crate::{EmailPart, Error, TemplateContent};

/// `data` is a template source, optionally followed by a NUL and JSON parameters (other
/// parameters are used when there are none or they do not parse). The source is validated as
/// the html and text parts of an email; when it is accepted it is rendered. Every render
/// ends, bounded by the output cap and the step budget.
///
/// # Panics
/// When validation accepts a source the worker cannot compile, or when a render fails in a
/// way that only a bug explains (what the fuzzer looks for).
pub fn check_fuzz_input(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (source, parameters) = text.split_once('\u{0}').unwrap_or((&text, ""));
    let parameters: serde_json::Value = serde_json::from_str(parameters).unwrap_or_else(|_| {
        serde_json::json!({
            "name": "Ada", "items": [1, 2, 3], "empty": [],
            "order": {"id": 7, "lines": [{"sku": "a", "qty": 2}]}, "flag": true
        })
    });
    let email = EmailPart {
        subject: "subject".into(),
        html: source.into(),
        text: source.into(),
    };
    let content = TemplateContent {
        email: Some(email.clone()),
        ..TemplateContent::default()
    };
    if crate::validate(&content).is_err() {
        return;
    }
    match crate::render_email(&email, &parameters) {
        Ok(_)
        | Err(
            Error::MissingParameter { .. }
            | Error::Render { .. }
            | Error::TooLarge { .. }
            | Error::TooMuchWork { .. },
        ) => {}
        Err(error) => panic!("a validated source failed to render with {error:?}"),
    }
}
