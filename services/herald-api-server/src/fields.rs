//! Request fields that several services share, and the control-character rules every RPC
//! that writes applies to what it stores.
//!
//! The rules (`herald_domain::Controls`, README "Bad input"): identifiers, keys, links and
//! metadata hold no control character at all (Unicode `Cc`: U+0000–U+001F, U+007F–U+009F);
//! free text (parameter values, template sources, descriptions, reasons) may hold tab, line
//! feed and carriage return but no other control character. NUL is refused everywhere, inside
//! JSON too, because PostgreSQL cannot store it in `text` or `jsonb`: found here it is the
//! field's `INVALID_ARGUMENT`, found by PostgreSQL it would be an `INTERNAL` (and fail a
//! whole group commit).

use herald_domain::{Controls, check_controls};

use crate::error::{Result, ServiceError};

/// The longest product user id.
pub(crate) const MAX_USER_ID: usize = 255;

/// A product user id: 1 to `MAX_USER_ID` characters, not blank, no control characters;
/// `INVALID_ARGUMENT` naming `field` otherwise.
pub(crate) fn user_id(field: &str, text: &str) -> Result<String> {
    if text.trim().is_empty() || text.len() > MAX_USER_ID {
        return Err(ServiceError::invalid(
            field,
            format!("must be 1 to {MAX_USER_ID} non-blank characters"),
        ));
    }
    no_controls(field, text)?;
    Ok(text.to_owned())
}

/// Refuses every control character in an identifier, key, link or metadata value.
pub(crate) fn no_controls(field: &str, text: &str) -> Result<()> {
    check_controls(text, Controls::Refused).map_err(|error| ServiceError::invalid(field, error))
}

/// Refuses the control characters free text may not hold: all but tab, line feed and
/// carriage return.
pub(crate) fn text(field: &str, text: &str) -> Result<()> {
    check_controls(text, Controls::TabsAndLineBreaks)
        .map_err(|error| ServiceError::invalid(field, error))
}

/// The control-character rules for a JSON value under `field`: keys are identifiers
/// (`no_controls`), strings are free text (`text`); the first offender is named by its path
/// (`parameters.order.items[2]`).
pub(crate) fn json_text(field: &str, value: &serde_json::Value) -> Result<()> {
    match value {
        serde_json::Value::String(value) => text(field, value),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(index, item)| json_text(&format!("{field}[{index}]"), item)),
        serde_json::Value::Object(entries) => object_text(field, entries),
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {
            Ok(())
        }
    }
}

/// `json_text` for the entries of an object.
pub(crate) fn object_text(
    field: &str,
    entries: &serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    entries.iter().try_for_each(|(key, item)| {
        let path = format!("{field}.{}", key.escape_default());
        no_controls(&path, key)?;
        json_text(&path, item)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(result: Result<()>, expected: Option<&str>) {
        match (result, expected) {
            (Ok(()), None) => {}
            (Err(ServiceError::InvalidArgument(message)), Some(expected)) => {
                assert_eq!(message, expected);
            }
            (other, expected) => panic!("expected {expected:?}, got {other:?}"),
        }
    }

    #[test]
    fn identifiers_refuse_every_control_character() {
        check(no_controls("user_id", "ada"), None);
        check(
            no_controls("user_id", "a\tb"),
            Some("user_id: must not contain control characters (found U+0009 at character 1)"),
        );
        check(
            no_controls("user_id", "ada\u{85}"),
            Some("user_id: must not contain control characters (found U+0085 at character 3)"),
        );
    }

    #[test]
    fn text_keeps_tabs_and_line_breaks_but_refuses_other_controls() {
        check(text("parameters.note", "line one\r\n\tline two"), None);
        check(
            text("parameters.note", "bell\u{7}"),
            Some(
                "parameters.note: must not contain control characters other than tab, line feed and carriage return (found U+0007 at character 4)",
            ),
        );
    }

    #[test]
    fn json_names_the_path_of_a_nul_in_a_key_or_a_nested_value() {
        let value = serde_json::json!({"order": {"items": ["ok", "b\u{0}d"]}});
        check(
            json_text("parameters", &value),
            Some(
                "parameters.order.items[1]: must not contain control characters other than tab, line feed and carriage return (found U+0000 at character 1)",
            ),
        );
        let value = serde_json::json!({"na\u{0}me": "ada"});
        check(
            json_text("parameters", &value),
            Some(
                "parameters.na\\u{0}me: must not contain control characters (found U+0000 at character 2)",
            ),
        );
    }
}
