//! Signed, expiring tracking tokens.
//!
//! `token = base64url(payload) "." base64url(HMAC-SHA256(secret, payload))`, where
//! `payload = version (1) | target (1: 'o' open, 'c' click) | delivery id (16) |
//! expiry, Unix seconds (8, big-endian) | URL (click only, UTF-8)`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use herald_domain::DeliveryId;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use uuid::Uuid;

use crate::TrackingSettings;

const VERSION: u8 = 1;
const OPEN: u8 = b'o';
const CLICK: u8 = b'c';
const HEADER_LEN: usize = 1 + 1 + 16 + 8;
/// Longest token accepted before any decoding (a URL of about 6 KB).
const MAX_TOKEN_LEN: usize = 8192;

/// What a tracking link leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The open pixel.
    Open,
    /// A click on a link to `url` (the exact URL of the rendered template).
    Click {
        /// Where to redirect.
        url: String,
    },
}

/// A verified tracking link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The delivery the link was rendered into.
    pub delivery_id: DeliveryId,
    /// What it leads to.
    pub target: Target,
    /// When it stops being valid.
    pub expires_at: DateTime<Utc>,
}

/// Why a token was refused. The tracker answers every one the same way (404), so a prober
/// learns nothing from the difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Not a token at all (wrong shape, encoding or version, or too long).
    #[error("malformed tracking token")]
    Malformed,
    /// The signature does not match: forged or altered.
    #[error("tracking token signature mismatch")]
    BadSignature,
    /// Signed, but past its expiry.
    #[error("tracking token expired")]
    Expired,
    /// Signed, but for the other kind of link (a pixel token on the click path).
    #[error("tracking token used on the wrong path")]
    WrongTarget,
}

/// Signs and verifies tracking tokens with the configured secret.
#[derive(Clone)]
pub struct Signer {
    secret: SecretString,
    base_url: String,
    link_ttl: chrono::Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Signer")
            .field("base_url", &self.base_url)
            .field("link_ttl", &self.link_ttl)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for `settings` (validated: the secret is long enough).
    pub fn new(settings: &TrackingSettings) -> Self {
        Self {
            secret: settings.secret.clone(),
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            link_ttl: chrono::Duration::from_std(settings.link_ttl)
                .unwrap_or(chrono::Duration::MAX),
        }
    }

    /// The open-pixel URL of `delivery_id`, valid for `link_ttl` from `now`.
    pub fn pixel_url(&self, delivery_id: DeliveryId, now: DateTime<Utc>) -> String {
        format!(
            "{}/o/{}",
            self.base_url,
            self.sign(delivery_id, &Target::Open, now)
        )
    }

    /// The click URL of `url` in `delivery_id`, valid for `link_ttl` from `now`.
    pub fn click_url(&self, delivery_id: DeliveryId, url: &str, now: DateTime<Utc>) -> String {
        format!(
            "{}/c/{}",
            self.base_url,
            self.sign(
                delivery_id,
                &Target::Click {
                    url: url.to_owned()
                },
                now
            )
        )
    }

    /// The token of a link to `target` in `delivery_id`, expiring `link_ttl` after `now`.
    pub fn sign(&self, delivery_id: DeliveryId, target: &Target, now: DateTime<Utc>) -> String {
        let expires_at = now
            .checked_add_signed(self.link_ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.sign_until(delivery_id, target, expires_at)
    }

    /// The token of a link to `target` in `delivery_id`, expiring at `expires_at`.
    pub fn sign_until(
        &self,
        delivery_id: DeliveryId,
        target: &Target,
        expires_at: DateTime<Utc>,
    ) -> String {
        let mut payload = Vec::with_capacity(HEADER_LEN + 64);
        payload.push(VERSION);
        payload.push(match target {
            Target::Open => OPEN,
            Target::Click { .. } => CLICK,
        });
        payload.extend_from_slice(delivery_id.as_uuid().as_bytes());
        payload.extend_from_slice(&expires_at.timestamp().to_be_bytes());
        if let Target::Click { url } = target {
            payload.extend_from_slice(url.as_bytes());
        }
        let tag = self.mac(&payload).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Verifies `token` (signature first, in constant time, then expiry) against `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Link, Rejected> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Rejected::Malformed);
        }
        let (payload, tag) = token.split_once('.').ok_or(Rejected::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| Rejected::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| Rejected::Malformed)?;
        self.mac(&payload)
            .verify_slice(&tag)
            .map_err(|_| Rejected::BadSignature)?;
        if payload.len() < HEADER_LEN || payload[0] != VERSION {
            return Err(Rejected::Malformed);
        }
        let uuid = Uuid::from_slice(&payload[2..18]).map_err(|_| Rejected::Malformed)?;
        let seconds = i64::from_be_bytes(
            payload[18..HEADER_LEN]
                .try_into()
                .map_err(|_| Rejected::Malformed)?,
        );
        let expires_at = DateTime::<Utc>::from_timestamp(seconds, 0).ok_or(Rejected::Malformed)?;
        let target = match payload[1] {
            OPEN if payload.len() == HEADER_LEN => Target::Open,
            CLICK => Target::Click {
                url: String::from_utf8(payload[HEADER_LEN..].to_vec())
                    .map_err(|_| Rejected::Malformed)?,
            },
            _ => return Err(Rejected::Malformed),
        };
        if expires_at <= now {
            return Err(Rejected::Expired);
        }
        Ok(Link {
            delivery_id: uuid.into(),
            target,
            expires_at,
        })
    }

    /// The entry of the fuzz target `tracking_token` (and of the test replaying its corpus):
    /// `data` is verified as a token as it could arrive in a link, and, signed as a payload
    /// with a fixed key, as a token whose signature holds, so the parsing after the signature
    /// check is reached too. A token that verifies must be exactly what signing its link gives.
    ///
    /// # Panics
    /// When verification breaks that rule (what the fuzzer looks for).
    pub fn check_fuzz_input(data: &[u8]) {
        let signer = Self {
            secret: "fuzzing-key-0123456789-0123456789-0123".into(),
            base_url: "https://t.example".into(),
            link_ttl: chrono::Duration::days(1),
        };
        let now = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        if let Ok(token) = std::str::from_utf8(data) {
            // Without the key a token is refused, whatever it holds; it must never panic.
            assert!(
                signer.verify(token, now).is_err() || token.contains('.'),
                "a token without a signature verified"
            );
        }
        let token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(data),
            URL_SAFE_NO_PAD.encode(signer.mac(data).finalize().into_bytes())
        );
        if let Ok(link) = signer.verify(&token, now) {
            assert!(link.expires_at > now, "an expired token verified");
            assert_eq!(
                signer.sign_until(link.delivery_id, &link.target, link.expires_at),
                token,
                "a verified token does not re-sign to itself"
            );
        }
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose_secret().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(payload);
        mac
    }
}

/// A short, stable key for a clicked URL (a prefix of its keyed lookup hash), used to record one
/// click per (delivery, link) without storing the URL, or a plain hash of it that trying
/// candidate links would reverse, in the key.
///
/// # Panics
/// If the process has no keyring (`herald_crypto::lookup_hex`).
pub(crate) fn url_key(url: &str) -> String {
    let mut key = herald_crypto::lookup_hex("click", url.as_bytes());
    key.truncate(32);
    key
}

impl Target {
    /// The dedupe key of an engagement on this target: `once` for the pixel, the URL's
    /// digest for a click.
    pub fn dedupe_key(&self) -> String {
        match self {
            Self::Open => "once".into(),
            Self::Click { url } => format!("link:{}", url_key(url)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(secret: &str) -> Signer {
        Signer::new(&TrackingSettings {
            enabled: true,
            base_url: "https://t.example.com/".into(),
            secret: SecretString::from(secret.to_owned()),
            link_ttl: std::time::Duration::from_secs(3600),
            ..TrackingSettings::default()
        })
    }

    const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";

    fn token_of(url: &str) -> &str {
        url.rsplit('/').next().unwrap()
    }

    #[test]
    fn a_signed_click_link_verifies_to_its_delivery_and_exact_url() {
        let signer = signer(SECRET);
        let delivery_id = DeliveryId::from(Uuid::now_v7());
        let now = Utc::now();
        let url = "https://shop.example/orders/42?utm=mail&x=%20y#top";
        let link = signer.click_url(delivery_id, url, now);
        assert!(link.starts_with("https://t.example.com/c/"), "{link}");
        let verified = signer.verify(token_of(&link), now).unwrap();
        assert_eq!(verified.delivery_id, delivery_id);
        assert_eq!(verified.target, Target::Click { url: url.into() });
        assert_eq!(
            verified.expires_at.timestamp(),
            (now + chrono::Duration::hours(1)).timestamp()
        );
    }

    #[test]
    fn a_pixel_link_verifies_as_an_open() {
        let signer = signer(SECRET);
        let delivery_id = DeliveryId::from(Uuid::now_v7());
        let now = Utc::now();
        let link = signer.pixel_url(delivery_id, now);
        assert!(link.starts_with("https://t.example.com/o/"), "{link}");
        assert_eq!(
            signer.verify(token_of(&link), now).unwrap().target,
            Target::Open
        );
    }

    #[test]
    fn an_expired_link_is_rejected() {
        let signer = signer(SECRET);
        let now = Utc::now();
        let token = signer.sign(DeliveryId::from(Uuid::now_v7()), &Target::Open, now);
        assert_eq!(
            signer.verify(&token, now + chrono::Duration::hours(2)),
            Err(Rejected::Expired)
        );
    }

    #[test]
    fn a_link_signed_with_another_secret_is_rejected() {
        let now = Utc::now();
        let token = signer("another-secret-of-at-least-32-bytes!!").sign(
            DeliveryId::from(Uuid::now_v7()),
            &Target::Click {
                url: "https://evil.example".into(),
            },
            now,
        );
        assert_eq!(
            signer(SECRET).verify(&token, now),
            Err(Rejected::BadSignature)
        );
    }

    #[test]
    fn a_tampered_url_delivery_or_expiry_is_rejected() {
        let signer = signer(SECRET);
        let now = Utc::now();
        let token = signer.sign(
            DeliveryId::from(Uuid::now_v7()),
            &Target::Click {
                url: "https://shop.example/a".into(),
            },
            now,
        );
        let (payload, tag) = token.split_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
        for index in [1, 5, 20, bytes.len() - 1] {
            let mut altered = bytes.clone();
            altered[index] ^= 0x01;
            let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(&altered));
            assert_eq!(signer.verify(&forged, now), Err(Rejected::BadSignature));
        }
        bytes.extend_from_slice(b"/../evil");
        let extended = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(&bytes));
        assert_eq!(signer.verify(&extended, now), Err(Rejected::BadSignature));
    }

    #[test]
    fn garbage_is_malformed_or_badly_signed() {
        let signer = signer(SECRET);
        let now = Utc::now();
        for token in [
            "",
            "abc",
            "a.b.c",
            "!!!.???",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(signer.verify(token, now).is_err(), "{token}");
        }
        assert_eq!(signer.verify("AAAA.AAAA", now), Err(Rejected::BadSignature));
    }

    #[test]
    fn dedupe_keys_are_once_for_opens_and_per_url_for_clicks() {
        herald_test_support::TestCerts::get().install_keyring();
        assert_eq!(Target::Open.dedupe_key(), "once");
        let a = Target::Click {
            url: "https://a.example".into(),
        };
        let b = Target::Click {
            url: "https://b.example".into(),
        };
        assert_ne!(a.dedupe_key(), b.dedupe_key());
        assert!(a.dedupe_key().starts_with("link:"));
    }
}
