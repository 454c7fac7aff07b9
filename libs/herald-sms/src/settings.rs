//! The `[sms]` settings section.

use std::collections::HashSet;
use std::time::Duration;

use herald_config::Validate;
use herald_worker::BreakerSettings;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Twilio's production API root.
pub const TWILIO_BASE_URL: &str = "https://api.twilio.com";

/// The SMS channel: its providers in failover order, their breaker, and the length limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmsSettings {
    /// Most segments one message may need; a longer text is a permanent failure (1..=20).
    pub max_segments: u32,
    /// The circuit breaker each provider gets.
    pub breaker: BreakerSettings,
    /// Providers in order: the first is the primary, a retry moves to the next.
    pub providers: Vec<SmsProviderSettings>,
}

impl Default for SmsSettings {
    fn default() -> Self {
        Self {
            max_segments: 6,
            breaker: BreakerSettings::default(),
            providers: Vec::new(),
        }
    }
}

/// One configured SMS provider, chosen by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SmsProviderSettings {
    /// A Twilio-compatible Messages API.
    Twilio(TwilioSettings),
    /// A generic HTTP/JSON SMS gateway.
    HttpGateway(HttpGatewaySettings),
}

impl SmsProviderSettings {
    /// The provider's name (recorded on every attempt).
    pub fn name(&self) -> &str {
        match self {
            Self::Twilio(settings) => &settings.name,
            Self::HttpGateway(settings) => &settings.name,
        }
    }

    /// The provider's whole-request timeout.
    pub fn timeout(&self) -> std::time::Duration {
        match self {
            Self::Twilio(settings) => settings.timeout,
            Self::HttpGateway(settings) => settings.timeout,
        }
    }
}

/// A Twilio-compatible provider (`kind = "twilio"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioSettings {
    /// Name recorded on attempts, unique among the providers.
    pub name: String,
    /// API root; the Messages resource is under `/2010-04-01/Accounts/{account_sid}/`.
    #[serde(default = "twilio_base_url")]
    pub base_url: String,
    /// Account SID (`AC…`), also the basic-auth user name.
    pub account_sid: String,
    /// Auth token, the basic-auth password.
    pub auth_token: SecretString,
    /// Sender number or alphanumeric sender id; exactly one of this and
    /// `messaging_service_sid`.
    #[serde(default)]
    pub from: Option<String>,
    /// Messaging Service SID (`MG…`), which picks the sender itself.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// Whole-request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// A generic HTTP/JSON gateway (`kind = "http_gateway"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGatewaySettings {
    /// Name recorded on attempts, unique among the providers.
    pub name: String,
    /// The URL messages are POSTed to.
    pub url: String,
    /// Bearer token.
    pub token: SecretString,
    /// Sender number or id sent as `from`.
    pub from: String,
    /// Whole-request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn twilio_base_url() -> String {
    TWILIO_BASE_URL.to_owned()
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Validate for SmsSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        if !(1..=20).contains(&self.max_segments) {
            problems.push("sms.max_segments must be between 1 and 20".into());
        }
        if self.providers.is_empty() {
            problems.push("sms.providers must list at least one provider".into());
        }
        let mut names = HashSet::new();
        for (index, provider) in self.providers.iter().enumerate() {
            let at = format!("sms.providers[{index}]");
            let name = provider.name();
            if name.trim().is_empty() {
                problems.push(format!("{at}.name must not be empty"));
            } else if !names.insert(name) {
                problems.push(format!("{at}.name `{name}` is used by another provider"));
            }
            match provider {
                SmsProviderSettings::Twilio(twilio) => twilio.validate_at(&at, problems),
                SmsProviderSettings::HttpGateway(gateway) => gateway.validate_at(&at, problems),
            }
        }
    }
}

impl TwilioSettings {
    fn validate_at(&self, at: &str, problems: &mut Vec<String>) {
        check_url(&format!("{at}.base_url"), &self.base_url, problems);
        required(&format!("{at}.account_sid"), &self.account_sid, problems);
        required(
            &format!("{at}.auth_token"),
            self.auth_token.expose_secret(),
            problems,
        );
        let from = self.from.as_deref().filter(|from| !from.trim().is_empty());
        let service = self
            .messaging_service_sid
            .as_deref()
            .filter(|sid| !sid.trim().is_empty());
        match (from, service) {
            (Some(_), Some(_)) => problems.push(format!(
                "{at}: set only one of `from` and `messaging_service_sid`"
            )),
            (None, None) => problems.push(format!(
                "{at}: `from` or `messaging_service_sid` is required"
            )),
            _ => {}
        }
        check_timeout(at, self.timeout, problems);
    }
}

impl HttpGatewaySettings {
    fn validate_at(&self, at: &str, problems: &mut Vec<String>) {
        check_url(&format!("{at}.url"), &self.url, problems);
        required(&format!("{at}.token"), self.token.expose_secret(), problems);
        required(&format!("{at}.from"), &self.from, problems);
        check_timeout(at, self.timeout, problems);
    }
}

fn required(key: &str, value: &str, problems: &mut Vec<String>) {
    if value.trim().is_empty() {
        problems.push(format!("{key} is required"));
    }
}

fn check_url(key: &str, value: &str, problems: &mut Vec<String>) {
    match reqwest::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
        Ok(_) => problems.push(format!("{key} must be an http or https URL")),
        Err(error) => problems.push(format!("{key} is not a URL: {error}")),
    }
}

fn check_timeout(at: &str, timeout: Duration, problems: &mut Vec<String>) {
    if timeout.is_zero() {
        problems.push(format!("{at}.timeout must be more than zero"));
    }
}

#[cfg(test)]
mod tests;
