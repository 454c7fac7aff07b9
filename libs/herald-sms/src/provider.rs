//! The provider enum and what the providers share: the HTTP client, transport-error mapping
//! and scrubbing of provider-supplied text.

use std::time::Duration;

use herald_worker::{DeliveryError, Receipt};

use crate::gateway::HttpGatewayProvider;
use crate::twilio::TwilioProvider;
use crate::{Error, SmsProviderSettings};

/// One message to send: personal data, so it is never logged and has no `Debug`.
pub struct OutgoingSms<'a> {
    /// Recipient, E.164.
    pub to: &'a str,
    /// The text; the provider splits it into segments.
    pub text: &'a str,
    /// Herald's delivery id: the provider-side reference and idempotency key.
    pub reference: &'a str,
}

/// A configured SMS provider.
#[derive(Debug)]
pub enum SmsProvider {
    /// A Twilio-compatible Messages API.
    Twilio(TwilioProvider),
    /// A generic HTTP/JSON gateway.
    HttpGateway(HttpGatewayProvider),
}

impl SmsProvider {
    /// Builds the provider `settings` describe, with its own HTTP client.
    pub fn new(settings: &SmsProviderSettings) -> Result<Self, Error> {
        Ok(match settings {
            SmsProviderSettings::Twilio(twilio) => Self::Twilio(TwilioProvider::new(twilio)?),
            SmsProviderSettings::HttpGateway(gateway) => {
                Self::HttpGateway(HttpGatewayProvider::new(gateway)?)
            }
        })
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        match self {
            Self::Twilio(provider) => provider.name(),
            Self::HttpGateway(provider) => provider.name(),
        }
    }

    /// Sends `message` as one (provider-concatenated) SMS and classifies the answer.
    #[tracing::instrument(
        name = "sms.send",
        skip_all,
        fields(provider = %self.name(), delivery.id = %message.reference)
    )]
    pub async fn send(&self, message: &OutgoingSms<'_>) -> Result<Receipt, DeliveryError> {
        match self {
            Self::Twilio(provider) => provider.send(message).await,
            Self::HttpGateway(provider) => provider.send(message).await,
        }
    }
}

/// One client per provider: its own connection pool and whole-request timeout. Redirects are
/// not followed, since a redirected POST would be replayed as a GET.
pub(crate) fn build_client(name: &str, timeout: Duration) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("herald-sms/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|source| Error::Client {
            name: name.to_owned(),
            source,
        })
}

/// Maps a request that got no HTTP answer: retryable when no connection was made (the next
/// attempt may move to the next provider), else an unknown outcome, since the provider may
/// have sent the message (the next attempt, if the policy resends, goes to the same provider
/// with the same idempotency key). reqwest's `Display` names the URL, so only the kind is
/// kept.
pub(crate) fn request_failure(kind: &str, error: &reqwest::Error) -> DeliveryError {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_body() || error.is_decode() {
        "broke off mid-response"
    } else {
        "request failed"
    };
    let request_left = !(error.is_connect() || error.is_builder());
    DeliveryError::unanswered(request_left, format!("{kind} {what}"))
}

/// A provider-issued id or status, cut down to characters and a length that are safe to
/// record.
pub(crate) fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|character| character.is_ascii_alphanumeric() || "_-.".contains(*character))
        .take(64)
        .collect()
}

/// A provider error code fit to record: short, plain, and not something that looks like a
/// phone number; anything else becomes `unrecognised code`.
pub(crate) fn code_label(code: &str) -> String {
    let plain = code
        .chars()
        .all(|character| character.is_ascii_alphanumeric() || "_-.".contains(character));
    let digits = code.chars().filter(char::is_ascii_digit).count();
    if !code.is_empty() && code.len() <= 40 && plain && digits < 7 {
        code.to_owned()
    } else {
        "unrecognised code".to_owned()
    }
}
