//! The `[tracking]` settings section.

use std::net::SocketAddr;
use std::time::Duration;

use herald_config::Validate;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Shortest accepted HMAC secret, in bytes.
pub(crate) const MIN_SECRET_LEN: usize = 32;

/// Open and click tracking of email (`[tracking]`): read by the email worker (to rewrite
/// HTML) and by `herald-tracker` (to serve the links).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackingSettings {
    /// Rewrite links and add the open pixel. Off: email goes out as rendered.
    pub enabled: bool,
    /// The public base URL that `herald-tracker` is reached at, e.g.
    /// `https://t.example.com` (tracking links are `<base_url>/o/<token>` and
    /// `<base_url>/c/<token>`).
    pub base_url: String,
    /// The HMAC-SHA256 key that signs tracking links: at least 32 bytes, the same for the
    /// email workers and the tracker. Changing it invalidates every link already sent.
    pub secret: SecretString,
    /// How long a tracking link stays valid after the email was rendered.
    #[serde(with = "humantime_serde")]
    pub link_ttl: Duration,
    /// Where `herald-tracker` listens (plain HTTP, behind the public ingress).
    pub listen: SocketAddr,
}

impl Default for TrackingSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: String::new(),
            secret: SecretString::from(""),
            link_ttl: Duration::from_secs(90 * 24 * 60 * 60),
            listen: SocketAddr::from(([0, 0, 0, 0], 8088)),
        }
    }
}

impl Validate for TrackingSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        if !self.enabled {
            return;
        }
        if self.secret.expose_secret().len() < MIN_SECRET_LEN {
            problems.push(format!(
                "tracking.secret must be at least {MIN_SECRET_LEN} bytes when tracking is enabled \
                 (set HERALD__TRACKING__SECRET)"
            ));
        }
        let base = self.base_url.to_ascii_lowercase();
        if !(base.starts_with("https://") || base.starts_with("http://"))
            || self.base_url.len() <= "https://".len()
        {
            problems.push(
                "tracking.base_url must be the tracker's public http(s) URL when tracking is enabled"
                    .into(),
            );
        }
        if self.link_ttl < Duration::from_secs(60) {
            problems.push("tracking.link_ttl must be at least 1m".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(settings: &TrackingSettings) -> Vec<String> {
        let mut problems = Vec::new();
        settings.validate(&mut problems);
        problems
    }

    #[test]
    fn disabled_tracking_needs_nothing() {
        assert!(problems(&TrackingSettings::default()).is_empty());
    }

    #[test]
    fn enabled_tracking_needs_a_long_secret_and_a_base_url() {
        let settings = TrackingSettings {
            enabled: true,
            secret: SecretString::from("short"),
            ..TrackingSettings::default()
        };
        let problems = problems(&settings);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("tracking.secret"));
        assert!(problems[1].contains("tracking.base_url"));
    }

    #[test]
    fn enabled_tracking_with_a_secret_and_a_base_url_is_valid() {
        let settings = TrackingSettings {
            enabled: true,
            secret: SecretString::from("0123456789abcdef0123456789abcdef"),
            base_url: "https://t.example.com".into(),
            ..TrackingSettings::default()
        };
        assert!(problems(&settings).is_empty());
    }
}
