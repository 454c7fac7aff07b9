//! Reading a provider's HTTP answer with a size limit. Whatever answers at a provider's address
//! could send a body of any size, and a worker reads many answers at once; provider answers
//! are small JSON documents (an id, an error code), so Herald reads at most
//! `MAX_PROVIDER_BODY_BYTES` of one and treats a longer body as unreadable, never buffering
//! the rest.

use serde::de::DeserializeOwned;

/// The most bytes of a provider's response body Herald reads.
pub const MAX_PROVIDER_BODY_BYTES: usize = 64 * 1024;

/// Why a provider's body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is longer than `MAX_PROVIDER_BODY_BYTES` (said by its `Content-Length`, or
    /// found while reading); the rest is not read.
    #[error("the response body is over {MAX_PROVIDER_BODY_BYTES} bytes")]
    TooLarge,
    /// The connection failed while reading (the error's text, which may name the URL, is
    /// kept as the source only).
    #[error("the response body could not be read")]
    Read(#[source] reqwest::Error),
    /// The body is not the JSON expected.
    #[error("the response body is not the expected JSON")]
    Json(#[source] serde_json::Error),
}

/// The body of `response`, at most `MAX_PROVIDER_BODY_BYTES` of it.
pub async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, BodyError> {
    let limit = MAX_PROVIDER_BODY_BYTES;
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `read_body` as text (invalid UTF-8 replaced).
pub async fn read_text(response: reqwest::Response) -> Result<String, BodyError> {
    let body = read_body(response).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// `read_body` parsed as JSON.
pub async fn read_json<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, BodyError> {
    let body = read_body(response).await?;
    serde_json::from_slice(&body).map_err(BodyError::Json)
}
