//! The generic HTTP/JSON SMS gateway provider.
//!
//! `POST {url}` with `Authorization: Bearer {token}`, `Idempotency-Key: {delivery id}` and
//! the JSON body `{"to", "from", "text", "reference"}`; `2xx` with `{"id": …}` on acceptance,
//! `4xx`/`5xx` with `{"error": {"code", "message"}}` otherwise. The idempotency key makes a
//! retry after a timeout safe on gateways that honour it.

use herald_worker::{DeliveryError, Receipt};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::provider::{OutgoingSms, build_client, code_label, request_failure, sanitize};
use crate::{Error, HttpGatewaySettings};

/// The gateway's error code for a number it cannot deliver to.
const INVALID_NUMBER: &str = "invalid_number";

/// Sends through a generic HTTP/JSON gateway.
#[derive(Debug)]
pub struct HttpGatewayProvider {
    name: String,
    url: reqwest::Url,
    token: SecretString,
    from: String,
    client: reqwest::Client,
}

#[derive(Serialize)]
struct SendRequest<'a> {
    to: &'a str,
    from: &'a str,
    text: &'a str,
    reference: &'a str,
}

#[derive(Deserialize)]
struct Accepted {
    id: Option<serde_json::Value>,
}

/// The error object; its `message` is not read, since gateways may echo the number in it.
#[derive(Deserialize)]
struct ErrorResponse {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: Option<String>,
}

impl HttpGatewayProvider {
    /// Builds the provider and its HTTP client.
    pub fn new(settings: &HttpGatewaySettings) -> Result<Self, Error> {
        let url = reqwest::Url::parse(&settings.url).map_err(|_| Error::InvalidProvider {
            name: settings.name.clone(),
            reason: "url is not a URL".into(),
        })?;
        Ok(Self {
            name: settings.name.clone(),
            url,
            token: settings.token.clone(),
            from: settings.from.clone(),
            client: build_client(&settings.name, settings.timeout)?,
        })
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Posts one message and classifies the gateway's answer.
    pub async fn send(&self, message: &OutgoingSms<'_>) -> Result<Receipt, DeliveryError> {
        let response = self
            .client
            .post(self.url.clone())
            .bearer_auth(self.token.expose_secret())
            .header("Idempotency-Key", message.reference)
            .json(&SendRequest {
                to: message.to,
                from: &self.from,
                text: message.text,
                reference: message.reference,
            })
            .send()
            .await
            .map_err(|error| request_failure("gateway", &error))?;
        let status = response.status();
        if status.is_success() {
            let id = herald_worker::http::read_json::<Accepted>(response)
                .await
                .ok()
                .and_then(|accepted| accepted.id)
                .map(|id| match id {
                    serde_json::Value::String(text) => sanitize(&text),
                    other => sanitize(&other.to_string()),
                });
            let detail = match id {
                Some(id) => format!("gateway id {id}"),
                None => format!("gateway accepted the message with {}", status.as_u16()),
            };
            return Ok(Receipt {
                detail,
                invalid_addresses: Vec::new(),
            });
        }
        let code = herald_worker::http::read_json::<ErrorResponse>(response)
            .await
            .ok()
            .and_then(|body| body.error.code);
        Err(classify(status, code.as_deref(), message.to))
    }
}

/// Maps a non-2xx answer to a Herald outcome (the table in the crate README).
fn classify(status: StatusCode, code: Option<&str>, to: &str) -> DeliveryError {
    let status_number = status.as_u16();
    let code_text = code.map_or_else(|| "no code".to_owned(), code_label);
    match (status_number, code) {
        (400..=499, Some(INVALID_NUMBER)) => DeliveryError::AddressInvalid {
            addresses: vec![to.to_owned()],
            detail: format!(
                "gateway rejected the recipient number ({status_number}, {INVALID_NUMBER})"
            ),
        },
        // Bad credentials are a configuration fault of this provider, not of the message: a
        // retry moves to the next provider instead of failing the delivery for good.
        (401 | 403, _) => DeliveryError::Retryable(format!(
            "gateway authentication failed ({status_number}, {code_text})"
        )),
        (408 | 429, _) => DeliveryError::Retryable(format!(
            "gateway asked to retry ({status_number}, {code_text})"
        )),
        (400..=499, _) => DeliveryError::Permanent(format!(
            "gateway rejected the message ({status_number}, {code_text})"
        )),
        (500..=599, _) => {
            DeliveryError::Retryable(format!("gateway failed ({status_number}, {code_text})"))
        }
        _ => DeliveryError::Retryable(format!(
            "gateway answered an unexpected status {status_number}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use herald_worker::DeliveryError;
    use reqwest::StatusCode;

    use super::classify;

    fn check(status: u16, code: Option<&str>, expected: &DeliveryError) {
        let status = StatusCode::from_u16(status).expect("a status code");
        assert_eq!(&classify(status, code, "+821012345678"), expected);
    }

    #[test]
    fn responses_map_to_outcomes_without_the_number() {
        use DeliveryError::{AddressInvalid, Permanent, Retryable};
        check(
            400,
            Some("invalid_number"),
            &AddressInvalid {
                addresses: vec!["+821012345678".into()],
                detail: "gateway rejected the recipient number (400, invalid_number)".into(),
            },
        );
        check(
            422,
            Some("message_too_long"),
            &Permanent("gateway rejected the message (422, message_too_long)".into()),
        );
        check(
            400,
            None,
            &Permanent("gateway rejected the message (400, no code)".into()),
        );
        check(
            401,
            Some("unauthorized"),
            &Retryable("gateway authentication failed (401, unauthorized)".into()),
        );
        check(
            429,
            Some("rate_limited"),
            &Retryable("gateway asked to retry (429, rate_limited)".into()),
        );
        check(
            502,
            None,
            &Retryable("gateway failed (502, no code)".into()),
        );
        check(
            400,
            Some("+821012345678"),
            &Permanent("gateway rejected the message (400, unrecognised code)".into()),
        );
    }
}
