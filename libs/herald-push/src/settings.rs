//! The `[push]` settings: one optional table per provider and the breaker shared by both.

use std::path::PathBuf;
use std::time::Duration;

use herald_config::Validate;
use herald_worker::BreakerSettings;
use serde::Deserialize;

/// Push providers. At least one of `fcm` and `apns` must be configured; a platform whose
/// provider is absent is skipped (its tokens fail permanently).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushSettings {
    /// The circuit breaker each provider gets.
    pub breaker: BreakerSettings,
    /// Firebase Cloud Messaging (Android and web tokens); absent = no FCM.
    pub fcm: Option<FcmSettings>,
    /// Apple Push Notification service (iOS tokens); absent = no APNs.
    pub apns: Option<ApnsSettings>,
}

/// FCM HTTP v1 with a Google service account.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FcmSettings {
    /// The service account JSON key file downloaded from the Firebase console.
    pub service_account_file: PathBuf,
    /// The FCM API root.
    pub base_url: String,
    /// The OAuth2 token endpoint; empty = the `token_uri` of the service account file.
    pub token_uri: String,
    /// Bound on each HTTP exchange (token and send).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long FCM keeps a message for an offline device (`android.ttl`, web push `TTL`).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for FcmSettings {
    fn default() -> Self {
        Self {
            service_account_file: PathBuf::new(),
            base_url: "https://fcm.googleapis.com".into(),
            token_uri: String::new(),
            timeout: Duration::from_secs(10),
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// APNs with token-based (JWT ES256) authentication.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApnsSettings {
    /// The `.p8` signing key from the Apple developer account (PKCS#8 EC P-256, PEM).
    pub key_file: PathBuf,
    /// The key's 10-character id (the JWT `kid`).
    pub key_id: String,
    /// The developer team id (the JWT `iss`).
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// `https://api.push.apple.com`, or `https://api.sandbox.push.apple.com` for development
    /// builds of the app.
    pub base_url: String,
    /// An extra PEM trust anchor for the APNs server certificate; empty = system roots only.
    pub ca_file: PathBuf,
    /// How long APNs keeps a notification for an offline device (`apns-expiration`).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Bound on each HTTP/2 exchange.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ApnsSettings {
    fn default() -> Self {
        Self {
            key_file: PathBuf::new(),
            key_id: String::new(),
            team_id: String::new(),
            topic: String::new(),
            base_url: "https://api.push.apple.com".into(),
            ca_file: PathBuf::new(),
            ttl: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Validate for PushSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        if self.fcm.is_none() && self.apns.is_none() {
            problems
                .push("push needs at least one provider: configure push.fcm or push.apns".into());
        }
        let mut breaker = Vec::new();
        self.breaker.validate(&mut breaker);
        problems.extend(breaker.into_iter().map(|problem| format!("push.{problem}")));
        if let Some(fcm) = &self.fcm {
            fcm.validate(problems);
        }
        if let Some(apns) = &self.apns {
            apns.validate(problems);
        }
    }
}

impl Validate for FcmSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        if self.service_account_file.as_os_str().is_empty() {
            problems.push(
                "push.fcm.service_account_file must name the service account JSON file".into(),
            );
        }
        check_url("push.fcm.base_url", &self.base_url, problems);
        if !self.token_uri.is_empty() {
            check_url("push.fcm.token_uri", &self.token_uri, problems);
        }
        check_positive("push.fcm.timeout", self.timeout, problems);
        check_positive("push.fcm.ttl", self.ttl, problems);
    }
}

impl Validate for ApnsSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        if self.key_file.as_os_str().is_empty() {
            problems.push("push.apns.key_file must name the .p8 signing key".into());
        }
        for (name, value) in [
            ("push.apns.key_id", &self.key_id),
            ("push.apns.team_id", &self.team_id),
            ("push.apns.topic", &self.topic),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("{name} must not be empty"));
            }
        }
        check_url("push.apns.base_url", &self.base_url, problems);
        check_positive("push.apns.ttl", self.ttl, problems);
        check_positive("push.apns.timeout", self.timeout, problems);
    }
}

fn check_url(name: &str, value: &str, problems: &mut Vec<String>) {
    match reqwest::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
        _ => problems.push(format!("{name} must be an http(s) URL")),
    }
}

fn check_positive(name: &str, value: Duration, problems: &mut Vec<String>) {
    if value.is_zero() {
        problems.push(format!("{name} must be positive"));
    }
}
