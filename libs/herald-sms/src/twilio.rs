//! The Twilio-compatible provider: the Programmable Messaging `Messages` resource.
//!
//! `POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded `To`,
//! `From` (or `MessagingServiceSid`) and `Body`, HTTP basic auth with the account SID and auth
//! token; `201 Created` with the message resource as JSON, or an error object
//! `{"code", "message", "more_info", "status"}`. See
//! <https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource> and
//! <https://www.twilio.com/docs/usage/twilios-response#response-formats-exceptions>.

use herald_worker::{DeliveryError, Receipt};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::provider::{OutgoingSms, build_client, request_failure, sanitize};
use crate::{Error, TwilioSettings};

/// Twilio error codes meaning the recipient number cannot receive SMS from us.
const INVALID_TO_NUMBER: u32 = 21211;
/// "The 'To' number is not a valid mobile number."
const NOT_A_MOBILE_NUMBER: u32 = 21614;
/// "Attempt to send to unsubscribed recipient" (the recipient replied STOP).
const UNSUBSCRIBED_RECIPIENT: u32 = 21610;

/// Who the message is sent as.
#[derive(Debug, Clone)]
enum Sender {
    From(String),
    MessagingService(String),
}

/// Sends through a Twilio-compatible Messages API.
#[derive(Debug)]
pub struct TwilioProvider {
    name: String,
    messages_url: reqwest::Url,
    account_sid: String,
    auth_token: SecretString,
    sender: Sender,
    client: reqwest::Client,
}

/// The parts of a created message resource Herald keeps.
#[derive(Deserialize)]
struct CreatedMessage {
    sid: String,
    status: String,
}

/// The parts of an error response Herald keeps. `message` is deliberately not read: Twilio
/// echoes the phone number in it.
#[derive(Deserialize)]
struct ErrorResponse {
    code: Option<u32>,
}

impl TwilioProvider {
    /// Builds the provider and its HTTP client.
    pub fn new(settings: &TwilioSettings) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidProvider {
            name: settings.name.clone(),
            reason: reason.to_owned(),
        };
        let mut messages_url = reqwest::Url::parse(&settings.base_url)
            .map_err(|_| invalid("base_url is not a URL"))?;
        messages_url
            .path_segments_mut()
            .map_err(|()| invalid("base_url cannot carry a path"))?
            .pop_if_empty()
            .extend([
                "2010-04-01",
                "Accounts",
                &settings.account_sid,
                "Messages.json",
            ]);
        let sender = match (&settings.from, &settings.messaging_service_sid) {
            (Some(from), None) => Sender::From(from.clone()),
            (None, Some(service)) => Sender::MessagingService(service.clone()),
            _ => {
                return Err(invalid(
                    "exactly one of from and messaging_service_sid is required",
                ));
            }
        };
        Ok(Self {
            name: settings.name.clone(),
            messages_url,
            account_sid: settings.account_sid.clone(),
            auth_token: settings.auth_token.clone(),
            sender,
            client: build_client(&settings.name, settings.timeout)?,
        })
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates one message resource and classifies Twilio's answer.
    pub async fn send(&self, message: &OutgoingSms<'_>) -> Result<Receipt, DeliveryError> {
        let sender = match &self.sender {
            Sender::From(from) => ("From", from.as_str()),
            Sender::MessagingService(service) => ("MessagingServiceSid", service.as_str()),
        };
        let form = [("To", message.to), sender, ("Body", message.text)];
        let response = self
            .client
            .post(self.messages_url.clone())
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .form(&form)
            .send()
            .await
            .map_err(|error| request_failure("twilio", &error))?;
        let status = response.status();
        if status.is_success() {
            return Ok(
                match herald_worker::http::read_json::<CreatedMessage>(response).await {
                    Ok(created) => Receipt {
                        detail: format!(
                            "twilio sid {} status {}",
                            sanitize(&created.sid),
                            sanitize(&created.status)
                        ),
                        invalid_addresses: Vec::new(),
                    },
                    // The message was accepted; an unreadable body does not undo that.
                    Err(_) => Receipt {
                        detail: format!("twilio accepted the message with {}", status.as_u16()),
                        invalid_addresses: Vec::new(),
                    },
                },
            );
        }
        let code = herald_worker::http::read_json::<ErrorResponse>(response)
            .await
            .ok()
            .and_then(|body| body.code);
        Err(classify(status, code, message.to))
    }
}

/// Maps a non-2xx answer to a Herald outcome (the table in the crate README).
fn classify(status: StatusCode, code: Option<u32>, to: &str) -> DeliveryError {
    let status_number = status.as_u16();
    let code_text = code.map_or_else(|| "no code".to_owned(), |code| format!("code {code}"));
    match (status_number, code) {
        (401 | 403, _) => DeliveryError::Retryable(format!(
            "twilio authentication failed ({status_number}, {code_text})"
        )),
        (429, _) => DeliveryError::Retryable(format!(
            "twilio throttled the request ({status_number}, {code_text})"
        )),
        (
            400..=499,
            Some(code @ (INVALID_TO_NUMBER | NOT_A_MOBILE_NUMBER | UNSUBSCRIBED_RECIPIENT)),
        ) => DeliveryError::AddressInvalid {
            addresses: vec![to.to_owned()],
            detail: format!("twilio rejected the recipient number ({status_number}, code {code})"),
        },
        (400..=499, _) => DeliveryError::Permanent(format!(
            "twilio rejected the message ({status_number}, {code_text})"
        )),
        (500..=599, _) => {
            DeliveryError::Retryable(format!("twilio failed ({status_number}, {code_text})"))
        }
        // Redirects are not followed (a POST must not turn into a GET) and 1xx never reach
        // here; either way the endpoint is not answering as Twilio does, so try the next one.
        _ => DeliveryError::Retryable(format!(
            "twilio answered an unexpected status {status_number}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use herald_worker::DeliveryError;
    use reqwest::StatusCode;

    use super::classify;

    fn check(status: u16, code: Option<u32>, expected: &DeliveryError) {
        let status = StatusCode::from_u16(status).expect("a status code");
        assert_eq!(&classify(status, code, "+15005550006"), expected);
    }

    #[test]
    fn responses_map_to_outcomes_without_the_number() {
        use DeliveryError::{AddressInvalid, Permanent, Retryable};
        let invalid = |code: u32| AddressInvalid {
            addresses: vec!["+15005550006".into()],
            detail: format!("twilio rejected the recipient number (400, code {code})"),
        };
        check(400, Some(21211), &invalid(21211));
        check(400, Some(21614), &invalid(21614));
        check(400, Some(21610), &invalid(21610));
        check(
            400,
            Some(21602),
            &Permanent("twilio rejected the message (400, code 21602)".into()),
        );
        check(
            404,
            None,
            &Permanent("twilio rejected the message (404, no code)".into()),
        );
        check(
            401,
            Some(20003),
            &Retryable("twilio authentication failed (401, code 20003)".into()),
        );
        check(
            403,
            Some(20003),
            &Retryable("twilio authentication failed (403, code 20003)".into()),
        );
        check(
            429,
            Some(20429),
            &Retryable("twilio throttled the request (429, code 20429)".into()),
        );
        check(500, None, &Retryable("twilio failed (500, no code)".into()));
        check(
            503,
            Some(20503),
            &Retryable("twilio failed (503, code 20503)".into()),
        );
        check(
            302,
            None,
            &Retryable("twilio answered an unexpected status 302".into()),
        );
    }
}
