//! Keyed hashes for values looked up by equality: a disabled address, a rate-limited
//! recipient, an idempotent request. Plain SHA-256 of a phone number or a one-time code can
//! be reversed by trying every candidate; an HMAC under a secret key cannot.

use std::fmt;

use aws_lc_rs::hmac;

/// An HMAC-SHA256 key for lookup hashes. Changing it changes every hash: the lookups stored
/// under the old key stop matching (see the README's key management).
pub struct LookupKey(hmac::Key);

impl LookupKey {
    /// A lookup key from 32 secret bytes.
    pub fn new(bytes: &[u8; crate::keys::KEY_LEN]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// The keyed hash of `parts` in the lookup `domain` (e.g. `"contact"`), so that equal
    /// inputs of different kinds never share a hash. Each part is length-prefixed, so part
    /// boundaries cannot shift.
    pub fn hash(&self, domain: &str, parts: &[&[u8]]) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.0);
        for part in std::iter::once(domain.as_bytes()).chain(parts.iter().copied()) {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
        let mut hash = [0_u8; 32];
        hash.copy_from_slice(context.sign().as_ref());
        hash
    }

    /// `hash` as lowercase hex, for keys in text keyspaces (Redis).
    pub fn hex(&self, domain: &str, parts: &[&[u8]]) -> String {
        hex::encode(self.hash(domain, parts))
    }
}

impl fmt::Debug for LookupKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("LookupKey(<redacted>)")
    }
}
