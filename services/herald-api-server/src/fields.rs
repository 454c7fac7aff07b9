//! Request fields that several services share.

use crate::error::{Result, ServiceError};

/// The longest product user id.
const MAX_USER_ID: usize = 255;

/// A product user id: 1 to `MAX_USER_ID` characters, not blank; `INVALID_ARGUMENT` naming
/// `field` otherwise.
pub(crate) fn user_id(field: &str, text: &str) -> Result<String> {
    if text.trim().is_empty() || text.len() > MAX_USER_ID {
        return Err(ServiceError::invalid(
            field,
            format!("must be 1 to {MAX_USER_ID} non-blank characters"),
        ));
    }
    Ok(text.to_owned())
}
