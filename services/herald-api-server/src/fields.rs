//! Request fields that several services share.

use crate::error::{Result, ServiceError};

/// The longest product user id.
pub(crate) const MAX_USER_ID: usize = 255;

/// A product user id: 1 to `MAX_USER_ID` characters, not blank; `INVALID_ARGUMENT` naming
/// `field` otherwise.
pub(crate) fn user_id(field: &str, text: &str) -> Result<String> {
    if text.trim().is_empty() || text.len() > MAX_USER_ID {
        return Err(ServiceError::invalid(
            field,
            format!("must be 1 to {MAX_USER_ID} non-blank characters"),
        ));
    }
    no_nul(field, text)?;
    Ok(text.to_owned())
}

/// Refuses the NUL character, which PostgreSQL cannot store in text or JSON: found here, it
/// is this field's `INVALID_ARGUMENT`; found by PostgreSQL, it would fail a whole batch.
pub(crate) fn no_nul(field: &str, text: &str) -> Result<()> {
    if text.contains('\0') {
        return Err(ServiceError::invalid(
            field,
            "must not contain the NUL character (U+0000)",
        ));
    }
    Ok(())
}

/// `no_nul` for every key and string inside `value`, naming the first offending one by its
/// path under `field` (`parameters.order.items[2]`).
pub(crate) fn json_no_nul(field: &str, value: &serde_json::Value) -> Result<()> {
    match value {
        serde_json::Value::String(text) => no_nul(field, text),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(index, item)| json_no_nul(&format!("{field}[{index}]"), item)),
        serde_json::Value::Object(entries) => object_no_nul(field, entries),
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {
            Ok(())
        }
    }
}

/// `json_no_nul` for the entries of an object.
pub(crate) fn object_no_nul(
    field: &str,
    entries: &serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    entries.iter().try_for_each(|(key, item)| {
        let path = format!("{field}.{}", key.escape_default());
        no_nul(&path, key)?;
        json_no_nul(&path, item)
    })
}
