//! FCM HTTP v1: an OAuth2 access token from a signed service-account JWT, then
//! `POST /v1/projects/{project}/messages:send`.
//!
//! Protocols: <https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send>,
//! <https://developers.google.com/identity/protocols/oauth2/service-account#httprest> and the
//! error codes in <https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode>.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald_domain::{DeviceToken, Platform};
use herald_worker::{DeliveryError, Receipt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::message::{PushMessage, check_size, describe_transport_error, request_failure};
use crate::settings::FcmSettings;
use crate::{Error, read_setting_file};

/// The OAuth2 scope that allows sending FCM messages.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The OAuth2 grant type of a signed JWT assertion (RFC 7523).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The lifetime Herald asks for in the assertion (Google's maximum).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// A cached access token is replaced this long before it expires, so a send never presents
/// one that expires in flight.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The fields of a Google service account key file Herald uses.
#[derive(Deserialize)]
struct ServiceAccount {
    #[serde(rename = "type")]
    kind: String,
    project_id: String,
    private_key_id: String,
    private_key: SecretString,
    client_email: String,
    token_uri: String,
}

/// A cached OAuth2 access token.
struct AccessToken {
    value: SecretString,
    refresh_at: Instant,
}

/// The token endpoint's answer.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    expires_in: u64,
    token_type: String,
}

/// Claims of the service-account assertion.
#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// A client for one Firebase project.
pub struct FcmClient {
    http: reqwest::Client,
    project_id: String,
    send_url: String,
    token_uri: String,
    client_email: String,
    key_id: String,
    signing_key: EncodingKey,
    ttl: Duration,
    /// Held across a refresh, so concurrent sends wait for one token request instead of each
    /// making their own.
    token: tokio::sync::Mutex<Option<AccessToken>>,
}

impl fmt::Debug for FcmClient {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("FcmClient")
            .field("project_id", &self.project_id)
            .field("send_url", &self.send_url)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl FcmClient {
    /// Reads the service account file and builds the client. Makes no request.
    ///
    /// # Errors
    /// When the file cannot be read or is not a service account key, naming the setting.
    pub fn from_settings(settings: &FcmSettings) -> Result<Self, Error> {
        const SETTING: &str = "push.fcm.service_account_file";
        let path = &settings.service_account_file;
        let text = read_setting_file(SETTING, path)?;
        let account: ServiceAccount = serde_json::from_slice(&text).map_err(|error| {
            invalid(
                SETTING,
                path,
                format!("is not a service account JSON key: {error}"),
            )
        })?;
        if account.kind != "service_account" {
            return Err(invalid(
                SETTING,
                path,
                "has a `type` other than `service_account`",
            ));
        }
        for (field, value) in [
            ("project_id", &account.project_id),
            ("private_key_id", &account.private_key_id),
            ("client_email", &account.client_email),
        ] {
            if value.is_empty() {
                return Err(invalid(SETTING, path, format!("has an empty `{field}`")));
            }
        }
        let signing_key = EncodingKey::from_rsa_pem(account.private_key.expose_secret().as_bytes())
            .map_err(|error| {
                invalid(
                    SETTING,
                    path,
                    format!("has a `private_key` that is not an RSA PEM key: {error}"),
                )
            })?;
        let token_uri = if settings.token_uri.is_empty() {
            account.token_uri
        } else {
            settings.token_uri.clone()
        };
        if reqwest::Url::parse(&token_uri).is_err() {
            return Err(invalid(
                SETTING,
                path,
                "has a `token_uri` that is not a URL",
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(Error::Http)?;
        Ok(Self {
            http,
            send_url: format!(
                "{}/v1/projects/{}/messages:send",
                settings.base_url.trim_end_matches('/'),
                account.project_id
            ),
            project_id: account.project_id,
            token_uri,
            client_email: account.client_email,
            key_id: account.private_key_id,
            signing_key,
            ttl: settings.ttl,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// The Firebase project messages are sent to.
    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    /// Sends `message` to one Android or web registration token.
    ///
    /// A payload over the limit fails before any request (token or send) is made. An
    /// `UNREGISTERED` token, a `SENDER_ID_MISMATCH` or an `INVALID_ARGUMENT` about the token is
    /// `AddressInvalid` naming the token; throttling, server errors, a failed connection and a
    /// rejected access token (the cache is dropped) are `Retryable`; a send that got no answer
    /// after it was made is `Unknown`; other refusals are `Permanent`.
    pub async fn send(
        &self,
        message: &PushMessage,
        device: &DeviceToken,
    ) -> Result<Receipt, DeliveryError> {
        let body = serde_json::to_vec(&SendRequest {
            message: wire_message(message, device, self.ttl),
        })
        .map_err(|error| DeliveryError::Permanent(format!("push message: {error}")))?;
        // The limit is on the `message` object; the envelope `{"message":}` adds 12 bytes.
        check_size(&body[..body.len().saturating_sub(r#"{"message":}"#.len())])?;
        let access_token = self.access_token().await?;
        let response = self
            .http
            .post(&self.send_url)
            .bearer_auth(access_token.expose_secret())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|error| request_failure("fcm", error))?;
        let status = response.status().as_u16();
        let text = herald_worker::http::read_text(response)
            .await
            .unwrap_or_default();
        if status == 200 {
            let name = serde_json::from_str::<SendResponse>(&text)
                .map(|accepted| accepted.name)
                .unwrap_or_default();
            return Ok(Receipt {
                detail: format!("fcm message {name}"),
                invalid_addresses: Vec::new(),
            });
        }
        let failure = classify(status, &text);
        if status == 401 {
            self.invalidate(&access_token).await;
        }
        Err(failure.into_delivery_error(&device.token))
    }

    /// A valid access token: the cached one, or a new one from the token endpoint.
    async fn access_token(&self) -> Result<SecretString, DeliveryError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.refresh_at
        {
            return Ok(token.value.clone());
        }
        let fresh = self.fetch_token().await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    /// Drops the cached token if it is still `rejected` (another send may have replaced it).
    async fn invalidate(&self, rejected: &SecretString) {
        let mut cached = self.token.lock().await;
        if cached
            .as_ref()
            .is_some_and(|token| token.value.expose_secret() == rejected.expose_secret())
        {
            *cached = None;
            tracing::warn!(
                fcm.project = %self.project_id,
                "FCM rejected the access token; the next send fetches a new one"
            );
        }
    }

    async fn fetch_token(&self) -> Result<AccessToken, DeliveryError> {
        let assertion = self.assertion()?;
        let requested_at = Instant::now();
        let response = self
            .http
            .post(&self.token_uri)
            .form(&[("grant_type", JWT_BEARER_GRANT), ("assertion", &assertion)])
            .send()
            .await
            .map_err(|error| {
                DeliveryError::Retryable(format!(
                    "fcm token request failed: {}",
                    describe_transport_error(error)
                ))
            })?;
        let status = response.status();
        if !status.is_success() {
            // The body (`{"error": "invalid_grant", …}`) names the cause; it carries no
            // personal data, but it is only logged, not stored.
            let body = herald_worker::http::read_text(response)
                .await
                .unwrap_or_default();
            tracing::error!(
                fcm.project = %self.project_id,
                http.status = status.as_u16(),
                error = %truncate(&body, 200),
                "The FCM token endpoint refused the service account assertion"
            );
            return Err(DeliveryError::Retryable(format!(
                "fcm token endpoint answered {}",
                status.as_u16()
            )));
        }
        let token: TokenResponse =
            herald_worker::http::read_json(response)
                .await
                .map_err(|error| {
                    DeliveryError::Retryable(format!("fcm token response is not a token: {error}"))
                })?;
        if !token.token_type.eq_ignore_ascii_case("bearer") {
            return Err(DeliveryError::Retryable(format!(
                "fcm token endpoint issued a `{}` token, not a bearer token",
                truncate(&token.token_type, 20)
            )));
        }
        let lifetime = Duration::from_secs(token.expires_in);
        tracing::info!(
            fcm.project = %self.project_id,
            expires_in_s = token.expires_in,
            "Fetched an FCM access token"
        );
        Ok(AccessToken {
            value: token.access_token,
            refresh_at: requested_at + lifetime.saturating_sub(REFRESH_MARGIN),
        })
    }

    /// The signed RS256 assertion for the token endpoint.
    fn assertion(&self) -> Result<String, DeliveryError> {
        let iat = unix_now();
        let claims = AssertionClaims {
            iss: &self.client_email,
            scope: FCM_SCOPE,
            aud: &self.token_uri,
            iat,
            exp: iat + ASSERTION_LIFETIME.as_secs(),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(&header, &claims, &self.signing_key).map_err(|error| {
            DeliveryError::Permanent(format!("could not sign the fcm assertion: {error}"))
        })
    }
}

pub(crate) fn invalid(setting: &str, path: &Path, reason: impl fmt::Display) -> Error {
    Error::Invalid {
        setting: setting.to_owned(),
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

#[derive(Serialize)]
struct SendRequest {
    message: WireMessage,
}

#[derive(Deserialize)]
struct SendResponse {
    name: String,
}

/// The v1 `Message` resource (only the fields Herald sets).
#[derive(Serialize)]
pub(crate) struct WireMessage {
    token: String,
    notification: WireNotification,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    data: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    android: Option<AndroidConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    webpush: Option<WebpushConfig>,
}

#[derive(Serialize)]
struct WireNotification {
    title: String,
    body: String,
}

#[derive(Serialize)]
struct AndroidConfig {
    priority: &'static str,
    ttl: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    collapse_key: Option<String>,
}

#[derive(Serialize)]
struct WebpushConfig {
    headers: BTreeMap<&'static str, String>,
}

/// The wire message for one device: Android tokens get an `android` block (priority, TTL,
/// collapse key), web tokens a `webpush` block (`Urgency` and `TTL` headers, RFC 8030).
pub(crate) fn wire_message(
    message: &PushMessage,
    device: &DeviceToken,
    ttl: Duration,
) -> WireMessage {
    let high = message.is_high_priority();
    let (android, webpush) = match device.platform {
        Platform::Web => (
            None,
            Some(WebpushConfig {
                headers: BTreeMap::from([
                    ("TTL", ttl.as_secs().to_string()),
                    ("Urgency", if high { "high" } else { "normal" }.to_owned()),
                ]),
            }),
        ),
        Platform::Android | Platform::Ios => (
            Some(AndroidConfig {
                priority: if high { "HIGH" } else { "NORMAL" },
                ttl: format!("{}s", ttl.as_secs()),
                collapse_key: message.collapse_id.clone(),
            }),
            None,
        ),
    };
    WireMessage {
        token: device.token.clone(),
        notification: WireNotification {
            title: message.title.clone(),
            body: message.body.clone(),
        },
        data: message.data.clone(),
        android,
        webpush,
    }
}

/// Google's error envelope.
#[derive(Deserialize, Default)]
struct GoogleErrorBody {
    #[serde(default)]
    error: GoogleError,
}

#[derive(Deserialize, Default)]
struct GoogleError {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

/// What an FCM error response means for the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The token will never work again.
    InvalidToken(String),
    /// Try again later.
    Retryable(String),
    /// The request will never succeed.
    Permanent(String),
}

impl Failure {
    fn into_delivery_error(self, token: &str) -> DeliveryError {
        match self {
            Self::InvalidToken(detail) => DeliveryError::AddressInvalid {
                addresses: vec![token.to_owned()],
                detail,
            },
            Self::Retryable(detail) => DeliveryError::Retryable(detail),
            Self::Permanent(detail) => DeliveryError::Permanent(detail),
        }
    }
}

/// Maps an FCM error response to its meaning. The detail names the HTTP status, the
/// canonical status and the FCM error code, never the message text (which may echo values).
pub(crate) fn classify(status: u16, body: &str) -> Failure {
    let parsed: GoogleErrorBody = serde_json::from_str(body).unwrap_or_default();
    let error = parsed.error;
    let error_code = error
        .details
        .iter()
        .filter(|detail| {
            detail.get("@type").and_then(serde_json::Value::as_str)
                == Some("type.googleapis.com/google.firebase.fcm.v1.FcmError")
        })
        .find_map(|detail| detail.get("errorCode").and_then(serde_json::Value::as_str))
        .unwrap_or_default()
        .to_owned();
    let mut detail = format!("fcm {status}");
    for part in [&error.status, &error_code] {
        if !part.is_empty() && !detail.ends_with(part.as_str()) {
            detail.push(' ');
            detail.push_str(part);
        }
    }
    if status == 404 || error_code == "UNREGISTERED" || error_code == "SENDER_ID_MISMATCH" {
        return Failure::InvalidToken(detail);
    }
    if (error_code == "INVALID_ARGUMENT" || error.status == "INVALID_ARGUMENT")
        && names_the_token(&error)
    {
        return Failure::InvalidToken(detail);
    }
    match status {
        401 | 408 | 429 | 500..=599 => Failure::Retryable(detail),
        _ => Failure::Permanent(detail),
    }
}

/// True when an `INVALID_ARGUMENT` is about the registration token: a `BadRequest` field
/// violation on `message.token`, or FCM's message about an invalid registration token.
fn names_the_token(error: &GoogleError) -> bool {
    let field_names_token = error.details.iter().any(|detail| {
        detail
            .get("fieldViolations")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|violations| {
                violations.iter().any(|violation| {
                    violation.get("field").and_then(serde_json::Value::as_str)
                        == Some("message.token")
                })
            })
    });
    field_names_token
        || error
            .message
            .to_ascii_lowercase()
            .contains("registration token")
}
