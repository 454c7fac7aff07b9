#![doc = include_str!("../README.md")]

mod signature;

use std::collections::BTreeMap;
use std::time::Duration;

use herald_config::Validate;
use herald_domain::Channel;
use herald_templates::RenderedChat;
use herald_worker::{Attempted, ChannelProvider, DeliveryContext, DeliveryError, Receipt};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

pub use signature::{SIGNATURE_VERSION, Signature, sign, verify};

/// How a destination is spoken to.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DestinationSettings {
    /// A Slack-compatible incoming webhook: `POST {"text": …}`. The URL is the credential.
    Slack {
        /// The webhook URL (a secret).
        url: SecretString,
    },
    /// A signed webhook in the Standard Webhooks (Svix) style: a JSON event with
    /// `webhook-id`, `webhook-timestamp` and `webhook-signature` (`v1,` + base64
    /// HMAC-SHA256 of `{id}.{timestamp}.{body}`) headers.
    Signed {
        /// Where to POST.
        url: SecretString,
        /// The signing secret: `whsec_` + base64 (as Svix issues them), or any other string,
        /// used as raw bytes.
        secret: SecretString,
    },
}

/// The chat channel: named destinations, so submits name a destination and URLs and secrets
/// stay in configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatSettings {
    /// Destinations by name (`[chat.destinations.ops-slack]`).
    pub destinations: BTreeMap<String, DestinationSettings>,
    /// Per-request timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ChatSettings {
    fn default() -> Self {
        Self {
            destinations: BTreeMap::new(),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Validate for ChatSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        if self.destinations.is_empty() {
            problems.push(
                "chat.destinations must name at least one destination for the chat worker".into(),
            );
        }
        for (name, destination) in &self.destinations {
            let (url, secret) = match destination {
                DestinationSettings::Slack { url } => (url, None),
                DestinationSettings::Signed { url, secret } => (url, Some(secret)),
            };
            match reqwest::Url::parse(url.expose_secret()) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                _ => problems.push(format!(
                    "chat.destinations.{name}.url must be an http(s) URL"
                )),
            }
            if let Some(secret) = secret
                && let Err(error) = signature::secret_bytes(secret)
            {
                problems.push(format!("chat.destinations.{name}.secret {error}"));
            }
        }
    }
}

/// One message to one destination.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    /// A unique, stable id: the signed webhook's `webhook-id`, which receivers use to drop
    /// duplicates (the delivery id for notifications).
    pub id: String,
    /// The text (Slack `mrkdwn`).
    pub text: String,
    /// The event type of a signed webhook (`notification.chat`, `alert.developer`).
    pub event_type: String,
    /// More fields for a signed webhook's JSON body, next to `type`, `id`, `timestamp` and
    /// `text`. Must hold no personal data beyond what the text already does.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// A destination, ready to send to.
pub struct Destination {
    client: reqwest::Client,
    url: SecretString,
    secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Destination")
            .field("signed", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

impl Destination {
    /// Builds the HTTP client; nothing connects until the first send.
    pub fn new(settings: &DestinationSettings, timeout: Duration) -> Result<Self, BuildError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent("Herald-Webhook/1")
            .build()
            .map_err(|error| BuildError(error.to_string()))?;
        let (url, secret) = match settings {
            DestinationSettings::Slack { url } => (url.clone(), None),
            DestinationSettings::Signed { url, secret } => (
                url.clone(),
                Some(signature::secret_bytes(secret).map_err(BuildError)?),
            ),
        };
        Ok(Self {
            client,
            url,
            secret,
        })
    }

    /// Whether requests are signed.
    pub fn is_signed(&self) -> bool {
        self.secret.is_some()
    }

    /// Sends `message` and maps the response: 2xx delivered; 408, 429 and 5xx (and network
    /// errors, timeouts) retryable; any other status permanent (a revoked Slack webhook answers
    /// 403/404/410, which retrying does not fix).
    pub async fn send(&self, message: &ChatMessage) -> Result<Receipt, DeliveryError> {
        let request = self.client.post(self.url.expose_secret());
        let request = match &self.secret {
            None => request.json(&serde_json::json!({ "text": message.text })),
            Some(secret) => {
                let timestamp = chrono::Utc::now().timestamp();
                let mut body = serde_json::Map::new();
                body.insert("type".into(), message.event_type.clone().into());
                body.insert("id".into(), message.id.clone().into());
                body.insert(
                    "timestamp".into(),
                    chrono::DateTime::from_timestamp(timestamp, 0)
                        .unwrap_or_default()
                        .to_rfc3339()
                        .into(),
                );
                body.insert("text".into(), message.text.clone().into());
                for (key, value) in &message.fields {
                    body.entry(key.clone()).or_insert_with(|| value.clone());
                }
                let body = serde_json::to_vec(&body).map_err(|error| {
                    DeliveryError::Permanent(format!("could not encode the webhook body: {error}"))
                })?;
                let signature = sign(secret, &message.id, timestamp, &body);
                request
                    .header("content-type", "application/json")
                    .header("webhook-id", &message.id)
                    .header("webhook-timestamp", timestamp.to_string())
                    .header("webhook-signature", signature.header_value())
                    .body(body)
            }
        };
        let response = request.send().await.map_err(|error| {
            // Without the URL: it is the credential of a Slack webhook.
            let kind = if error.is_timeout() {
                "timed out"
            } else if error.is_connect() {
                "could not connect"
            } else {
                "request failed"
            };
            // Without a connection nothing was sent; after it, the receiver may have acted.
            let request_left = !(error.is_connect() || error.is_builder());
            DeliveryError::unanswered(request_left, format!("webhook {kind}"))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(Receipt {
                detail: format!("webhook answered {}", status.as_u16()),
                invalid_addresses: Vec::new(),
            });
        }
        // Slack answers with a short error code (`invalid_payload`, `no_service`); keep it
        // when it looks like one, never a long body that could echo the message.
        let body = herald_worker::http::read_text(response)
            .await
            .unwrap_or_default();
        let code = Some(body.trim())
            .filter(|code| {
                !code.is_empty()
                    && code.len() <= 64
                    && code
                        .bytes()
                        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
            })
            .map(|code| format!(" ({code})"))
            .unwrap_or_default();
        let detail = format!("webhook answered {}{code}", status.as_u16());
        if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            Err(DeliveryError::Retryable(detail))
        } else {
            Err(DeliveryError::Permanent(detail))
        }
    }
}

/// A destination that cannot be built (its TLS client or secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("webhook destination: {0}")]
pub struct BuildError(String);

/// The chat channel's provider: renders the template's chat part and sends it to the
/// destination the submit named.
#[derive(Debug)]
pub struct ChatChannel {
    destinations: BTreeMap<String, Destination>,
}

impl ChatChannel {
    /// Builds every configured destination.
    pub fn new(settings: &ChatSettings) -> Result<Self, BuildError> {
        let destinations = settings
            .destinations
            .iter()
            .map(|(name, destination)| {
                Ok((
                    name.clone(),
                    Destination::new(destination, settings.timeout)?,
                ))
            })
            .collect::<Result<_, BuildError>>()?;
        Ok(Self { destinations })
    }

    async fn send(
        &self,
        context: &DeliveryContext,
        destination: &Destination,
    ) -> Result<Receipt, DeliveryError> {
        let chat: RenderedChat = herald_worker::render(context)?;
        let mut fields = serde_json::Map::new();
        fields.insert(
            "notification_id".into(),
            context.notification_id.to_string().into(),
        );
        fields.insert("template".into(), context.template_key.clone().into());
        fields.insert("category".into(), context.category.clone().into());
        fields.insert("priority".into(), context.priority.as_str().into());
        destination
            .send(&ChatMessage {
                id: context.delivery_id.to_string(),
                text: chat.text,
                event_type: "notification.chat".into(),
                fields,
            })
            .await
    }
}

impl ChannelProvider for ChatChannel {
    fn channel(&self) -> Channel {
        Channel::Chat
    }

    async fn deliver(&self, context: &DeliveryContext) -> Attempted {
        let name = context.address.as_deref().unwrap_or_default();
        let Some(destination) = self.destinations.get(name) else {
            return Attempted {
                provider: "webhook".into(),
                result: Err(DeliveryError::Permanent(format!(
                    "chat destination `{name}` is not configured (chat.destinations)"
                ))),
            };
        };
        Attempted {
            provider: if destination.is_signed() {
                "signed-webhook".into()
            } else {
                "slack-webhook".into()
            },
            result: self.send(context, destination).await,
        }
    }
}

#[cfg(test)]
mod tests;
