//! APNs over HTTP/2 with token-based authentication: `POST /3/device/{token}` signed by an
//! ES256 provider token.
//!
//! Protocol: <https://developer.apple.com/documentation/usernotifications/sending-notification-requests-to-apns>,
//! <https://developer.apple.com/documentation/usernotifications/establishing-a-token-based-connection-to-apns>
//! and the reasons in
//! <https://developer.apple.com/documentation/usernotifications/handling-notification-responses-from-apns>.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald_domain::DeviceToken;
use herald_worker::{DeliveryError, Receipt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::fcm::invalid;
use crate::message::{PushMessage, check_size, request_failure};
use crate::settings::ApnsSettings;
use crate::{Error, read_setting_file};

/// How long one provider token is reused. Apple refuses tokens older than an hour and
/// refreshes more often than every 20 minutes (`TooManyProviderTokenUpdates`).
pub const PROVIDER_TOKEN_REUSE: Duration = Duration::from_secs(40 * 60);

/// A provider token and when it was signed.
struct ProviderToken {
    value: SecretString,
    issued_at: Instant,
}

#[derive(Serialize)]
struct ProviderClaims<'a> {
    iss: &'a str,
    iat: u64,
}

/// A client for one app (topic) on one APNs environment.
pub struct ApnsClient {
    http: reqwest::Client,
    device_url: reqwest::Url,
    topic: String,
    key_id: String,
    team_id: String,
    signing_key: EncodingKey,
    ttl: Duration,
    /// Signing is synchronous and quick, so a plain mutex; it is never held across `.await`.
    token: Mutex<Option<ProviderToken>>,
}

impl fmt::Debug for ApnsClient {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ApnsClient")
            .field("device_url", &self.device_url.as_str())
            .field("topic", &self.topic)
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .finish_non_exhaustive()
    }
}

impl ApnsClient {
    /// Reads the signing key (and the extra CA, if any) and builds the HTTP/2 client. Makes
    /// no request.
    ///
    /// # Errors
    /// When a file cannot be read or parsed, naming the setting.
    pub fn from_settings(settings: &ApnsSettings) -> Result<Self, Error> {
        let key_pem = read_setting_file("push.apns.key_file", &settings.key_file)?;
        let signing_key = EncodingKey::from_ec_pem(&key_pem).map_err(|error| {
            invalid(
                "push.apns.key_file",
                &settings.key_file,
                format!("is not a PKCS#8 EC P-256 key in PEM: {error}"),
            )
        })?;
        // APNs speaks only HTTP/2; with TLS, ALPN offers nothing else.
        let mut builder = reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(settings.timeout);
        if !settings.ca_file.as_os_str().is_empty() {
            let ca_pem = read_setting_file("push.apns.ca_file", &settings.ca_file)?;
            let certificates = reqwest::Certificate::from_pem_bundle(&ca_pem).map_err(|error| {
                invalid(
                    "push.apns.ca_file",
                    &settings.ca_file,
                    format!("is not PEM certificates: {error}"),
                )
            })?;
            if certificates.is_empty() {
                return Err(invalid(
                    "push.apns.ca_file",
                    &settings.ca_file,
                    "holds no certificate",
                ));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder.build().map_err(Error::Http)?;
        let device_url = reqwest::Url::parse(&format!(
            "{}/3/device/",
            settings.base_url.trim_end_matches('/')
        ))
        .map_err(|error| Error::Setting {
            setting: "push.apns.base_url".into(),
            reason: error.to_string(),
        })?;
        Ok(Self {
            http,
            device_url,
            topic: settings.topic.clone(),
            key_id: settings.key_id.clone(),
            team_id: settings.team_id.clone(),
            signing_key,
            ttl: settings.ttl,
            token: Mutex::new(None),
        })
    }

    /// Sends `message` to one iOS device token.
    ///
    /// A payload over the limit fails before any request. `Unregistered`, `BadDeviceToken` and
    /// `DeviceTokenNotForTopic` are `AddressInvalid` naming the token; throttling, server
    /// errors, a failed connection and a refused provider token (a new one is signed for the next
    /// send) are `Retryable`; a request that got no answer after it was sent is `Unknown`;
    /// other refusals (`PayloadTooLarge`, …) are `Permanent`.
    pub async fn send(
        &self,
        message: &PushMessage,
        device: &DeviceToken,
    ) -> Result<Receipt, DeliveryError> {
        let payload = payload(message)?;
        check_size(&payload)?;
        let provider_token = self.provider_token()?;
        let mut url = self.device_url.clone();
        url.path_segments_mut()
            .map_err(|()| DeliveryError::Permanent("push.apns.base_url cannot take a path".into()))?
            .pop_if_empty()
            .push(&device.token);
        let expiration = unix_now() + self.ttl.as_secs();
        let mut request = self
            .http
            .post(url)
            .header(
                reqwest::header::AUTHORIZATION,
                format!("bearer {}", provider_token.expose_secret()),
            )
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header(
                "apns-priority",
                if message.is_high_priority() {
                    "10"
                } else {
                    "5"
                },
            )
            .header("apns-expiration", expiration.to_string())
            .header("apns-id", message.delivery_id.to_string())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(collapse_id) = &message.collapse_id {
            request = request.header("apns-collapse-id", collapse_id);
        }
        let response = request
            .body(payload)
            .send()
            .await
            .map_err(|error| request_failure("apns", error))?;
        let status = response.status().as_u16();
        let apns_id = response
            .headers()
            .get("apns-id")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if status == 200 {
            return Ok(Receipt {
                detail: format!("apns-id {apns_id}"),
                invalid_addresses: Vec::new(),
            });
        }
        let reason = herald_worker::http::read_json::<ErrorBody>(response)
            .await
            .map(|body| body.reason)
            .unwrap_or_default();
        let failure = classify(status, &reason);
        if status == 403
            && matches!(
                reason.as_str(),
                "ExpiredProviderToken" | "InvalidProviderToken"
            )
        {
            self.invalidate(&provider_token);
        }
        Err(match failure {
            Failure::InvalidToken(detail) => DeliveryError::AddressInvalid {
                addresses: vec![device.token.clone()],
                detail,
            },
            Failure::Retryable(detail) => DeliveryError::Retryable(detail),
            Failure::Permanent(detail) => DeliveryError::Permanent(detail),
        })
    }

    /// The current provider token, signed anew when it is older than `PROVIDER_TOKEN_REUSE`.
    fn provider_token(&self) -> Result<SecretString, DeliveryError> {
        let mut cached = self
            .token
            .lock()
            .map_err(|_| DeliveryError::Retryable("apns token cache is poisoned".into()))?;
        if let Some(token) = cached.as_ref()
            && token.issued_at.elapsed() < PROVIDER_TOKEN_REUSE
        {
            return Ok(token.value.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = ProviderClaims {
            iss: &self.team_id,
            iat: unix_now(),
        };
        let value = jsonwebtoken::encode(&header, &claims, &self.signing_key)
            .map(SecretString::from)
            .map_err(|error| {
                DeliveryError::Permanent(format!("could not sign the apns provider token: {error}"))
            })?;
        *cached = Some(ProviderToken {
            value: value.clone(),
            issued_at: Instant::now(),
        });
        tracing::info!(apns.key_id = %self.key_id, "Signed a new APNs provider token");
        Ok(value)
    }

    /// Forgets the provider token if it is still `rejected`.
    fn invalidate(&self, rejected: &SecretString) {
        if let Ok(mut cached) = self.token.lock()
            && cached
                .as_ref()
                .is_some_and(|token| token.value.expose_secret() == rejected.expose_secret())
        {
            *cached = None;
            tracing::warn!(
                apns.key_id = %self.key_id,
                "APNs refused the provider token; the next send signs a new one"
            );
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    reason: String,
}

/// The JSON payload: `aps` with the alert, custom data keys beside it.
pub(crate) fn payload(message: &PushMessage) -> Result<Vec<u8>, DeliveryError> {
    if message.data.contains_key("aps") {
        return Err(DeliveryError::Permanent(
            "push data key `aps` is reserved by APNs".into(),
        ));
    }
    let mut root = serde_json::Map::new();
    root.insert(
        "aps".into(),
        serde_json::json!({
            "alert": {"title": message.title, "body": message.body},
            "sound": "default",
        }),
    );
    for (key, value) in &message.data {
        root.insert(key.clone(), serde_json::Value::String(value.clone()));
    }
    serde_json::to_vec(&root)
        .map_err(|error| DeliveryError::Permanent(format!("push payload: {error}")))
}

/// What an APNs error response means for the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The token will never work again.
    InvalidToken(String),
    /// Try again later.
    Retryable(String),
    /// The request will never succeed.
    Permanent(String),
}

/// Maps an APNs status and `reason` to its meaning; the detail is the status and reason
/// (APNs reasons are fixed words, free of personal data).
pub(crate) fn classify(status: u16, reason: &str) -> Failure {
    let detail = if reason.is_empty() {
        format!("apns {status}")
    } else {
        format!("apns {status} {reason}")
    };
    match (status, reason) {
        (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => {
            Failure::InvalidToken(detail)
        }
        (403, "ExpiredProviderToken" | "InvalidProviderToken") | (429 | 500..=599, _) => {
            Failure::Retryable(detail)
        }
        _ => Failure::Permanent(detail),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}
