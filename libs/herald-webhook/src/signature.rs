//! Standard Webhooks (Svix-style) signatures: `v1,` + base64 of HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// The signature scheme's version prefix.
pub const SIGNATURE_VERSION: &str = "v1";

/// A computed signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature(Vec<u8>);

impl Signature {
    /// The `webhook-signature` header value: `v1,<base64>`.
    pub fn header_value(&self) -> String {
        format!("{SIGNATURE_VERSION},{}", STANDARD.encode(&self.0))
    }
}

/// The key bytes of a signing secret: `whsec_` + base64 is decoded (as Svix issues them);
/// any other non-empty string is used as it is.
pub(crate) fn secret_bytes(secret: &SecretString) -> Result<Vec<u8>, String> {
    let secret = secret.expose_secret();
    if let Some(encoded) = secret.strip_prefix("whsec_") {
        return STANDARD
            .decode(encoded)
            .map_err(|_| "starts with whsec_ but the rest is not base64".to_owned());
    }
    if secret.len() < 16 {
        return Err("must be at least 16 characters".to_owned());
    }
    Ok(secret.as_bytes().to_vec())
}

fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Signs one request.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Signature {
    Signature(
        mac(key, id, timestamp, body)
            .finalize()
            .into_bytes()
            .to_vec(),
    )
}

/// Checks a `webhook-signature` header (space-separated `v1,<base64>` entries, any of which
/// may match) in constant time: what a receiver does.
pub fn verify(key: &[u8], id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    header.split(' ').any(|entry| {
        entry
            .strip_prefix("v1,")
            .and_then(|encoded| STANDARD.decode(encoded).ok())
            .is_some_and(|candidate| {
                mac(key, id, timestamp, body)
                    .verify_slice(&candidate)
                    .is_ok()
            })
    })
}
