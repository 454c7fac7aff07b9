//! The `[inbox]` settings: the API server's fan-out, and the action URLs in-app items may
//! link to.

use std::time::Duration;

use herald_config::Validate;
use serde::Deserialize;

/// How an API replica keeps its pub/sub connection and feeds its `Subscribe` streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboxSettings {
    /// Longest wait for Redis to confirm a user's channel (and for connecting and pinging)
    /// before a new stream gets its snapshot anyway; such a stream gets a `resync` once the
    /// channel is subscribed.
    #[serde(with = "humantime_serde")]
    pub subscribe_timeout: Duration,
    /// First delay before reconnecting after Redis dropped the pub/sub connection; it doubles
    /// up to `reconnect_max`.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest delay between reconnect attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// How often the pub/sub connection is pinged, so a connection that went silent (a dead
    /// peer without a reset) is noticed and replaced.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Changes buffered per user and replica; a stream that falls further behind gets a
    /// `resync` instead of the changes it missed.
    pub stream_buffer: usize,
    /// The schemes an in-app item's `action_url` may use (lowercase), checked when a template
    /// version is saved (API) and when an item is rendered (in-app worker); `https` by
    /// default, an app's own deep-link scheme when it has one.
    pub action_url_schemes: Vec<String>,
}

impl Default for InboxSettings {
    fn default() -> Self {
        Self {
            subscribe_timeout: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            ping_interval: Duration::from_secs(5),
            stream_buffer: 64,
            action_url_schemes: vec!["https".into()],
        }
    }
}

impl Validate for InboxSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        for (name, value) in [
            ("subscribe_timeout", self.subscribe_timeout),
            ("reconnect_min", self.reconnect_min),
            ("ping_interval", self.ping_interval),
        ] {
            if value.is_zero() {
                problems.push(format!("inbox.{name} must be positive"));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            problems.push("inbox.reconnect_max must be at least inbox.reconnect_min".into());
        }
        if self.stream_buffer == 0 {
            problems.push("inbox.stream_buffer must be at least 1".into());
        }
        for scheme in &self.action_url_schemes {
            let mut characters = scheme.chars();
            let valid = characters
                .next()
                .is_some_and(|first| first.is_ascii_lowercase())
                && characters.all(|character| {
                    character.is_ascii_lowercase()
                        || character.is_ascii_digit()
                        || "+-.".contains(character)
                });
            if !valid {
                problems.push(format!(
                    "inbox.action_url_schemes: `{}` is not a lowercase URL scheme (RFC 3986 §3.1)",
                    scheme.escape_default()
                ));
            }
        }
    }
}
