//! Caps on the parameters a template is rendered with. With the output cap and the step
//! budget (`restrict`) they bound what one render can cost; the API checks them on every
//! submit's parameters, a version's sample parameters and a preview's parameters.

use serde_json::{Map, Value};

/// The largest parameters object, encoded as JSON.
pub const MAX_PARAMETERS_BYTES: usize = 64 * 1024;

/// The longest string value (or key) in the parameters, in bytes.
pub const MAX_PARAMETER_STRING_BYTES: usize = 32 * 1024;

/// The most items one array in the parameters may have.
pub const MAX_PARAMETER_ARRAY_ITEMS: usize = 1000;

/// How deep objects and arrays may nest in the parameters (the parameters object is level 1).
pub const MAX_PARAMETER_DEPTH: usize = 16;

/// Which value of the parameters is over which cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ParameterError {
    /// The value's path under the field checked (`parameters.order.items`).
    pub path: String,
    /// Which cap it is over.
    pub message: String,
}

/// Checks `parameters` (given as the request field `field`) against the caps above, naming
/// the first value over one by its path.
pub fn check_parameters(
    field: &str,
    parameters: &Map<String, Value>,
) -> Result<(), ParameterError> {
    check_object(field, parameters, 1)?;
    let size = serde_json::to_vec(parameters).map_or(usize::MAX, |bytes| bytes.len());
    if size > MAX_PARAMETERS_BYTES {
        return Err(ParameterError {
            path: field.to_owned(),
            message: format!("must encode to at most {MAX_PARAMETERS_BYTES} bytes of JSON"),
        });
    }
    Ok(())
}

fn check_object(
    path: &str,
    entries: &Map<String, Value>,
    depth: usize,
) -> Result<(), ParameterError> {
    entries.iter().try_for_each(|(key, value)| {
        let path = format!("{path}.{}", truncated(key).escape_default());
        if key.len() > MAX_PARAMETER_STRING_BYTES {
            return Err(over(
                path,
                format!("keys must be at most {MAX_PARAMETER_STRING_BYTES} bytes"),
            ));
        }
        check_value(&path, value, depth)
    })
}

fn check_value(path: &str, value: &Value, depth: usize) -> Result<(), ParameterError> {
    match value {
        Value::String(text) if text.len() > MAX_PARAMETER_STRING_BYTES => Err(over(
            path.to_owned(),
            format!("must be at most {MAX_PARAMETER_STRING_BYTES} bytes"),
        )),
        Value::Array(_) | Value::Object(_) if depth >= MAX_PARAMETER_DEPTH => Err(over(
            path.to_owned(),
            format!("nests objects and arrays more than {MAX_PARAMETER_DEPTH} deep"),
        )),
        Value::Array(items) if items.len() > MAX_PARAMETER_ARRAY_ITEMS => Err(over(
            path.to_owned(),
            format!(
                "must have at most {MAX_PARAMETER_ARRAY_ITEMS} items (has {})",
                items.len()
            ),
        )),
        Value::Array(items) => items.iter().enumerate().try_for_each(|(index, item)| {
            check_value(&format!("{path}[{index}]"), item, depth + 1)
        }),
        Value::Object(entries) => check_object(path, entries, depth + 1),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => Ok(()),
    }
}

/// At most the first 64 characters of a key, for a path in an error message.
fn truncated(key: &str) -> &str {
    key.char_indices()
        .nth(64)
        .map_or(key, |(end, _)| &key[..end])
}

fn over(path: String, message: String) -> ParameterError {
    ParameterError { path, message }
}

#[cfg(test)]
mod tests;
