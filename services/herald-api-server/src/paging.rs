//! Keyset page tokens: the `(created_at, id)` of the last row of a page, newest first.

use uuid::Uuid;

use crate::error::{Result, ServiceError};

/// The token that continues after a row created at `created_at` with `id`.
pub(crate) fn encode_token(created_at: chrono::DateTime<chrono::Utc>, id: Uuid) -> String {
    hex::encode(format!("{}|{id}", created_at.timestamp_micros()))
}

/// The `(created_at, id)` a token continues after; `INVALID_ARGUMENT` on `page_token` for
/// anything this server did not issue.
pub(crate) fn decode_token(token: &str) -> Result<(chrono::DateTime<chrono::Utc>, Uuid)> {
    let invalid = || ServiceError::invalid("page_token", "is not a token this server issued");
    let text =
        String::from_utf8(hex::decode(token).map_err(|_| invalid())?).map_err(|_| invalid())?;
    let (micros, id) = text.split_once('|').ok_or_else(invalid)?;
    let created_at =
        chrono::DateTime::from_timestamp_micros(micros.parse().map_err(|_| invalid())?)
            .ok_or_else(invalid)?;
    Ok((created_at, Uuid::parse_str(id).map_err(|_| invalid())?))
}
