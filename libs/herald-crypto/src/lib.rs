#![doc = include_str!("../README.md")]

mod envelope;
mod keys;
mod lookup;

use std::sync::{Arc, RwLock};

pub use envelope::{Cipher, PLAINTEXT};
pub use keys::{KEY_LEN, KeyId, KeyProvider, LocalKeys, write_new_key};
pub use lookup::LookupKey;

/// What can go wrong with keys or sealed values.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No keyring was installed in this process (`install`): a wiring bug.
    #[error("no keyring is installed in this process")]
    NotInstalled,
    /// A key could not be loaded, or a key id is malformed; the message says which and why.
    #[error("{0}")]
    Key(String),
    /// A sealed value names a key this process does not hold.
    #[error("the key `{0}` is not configured here")]
    UnknownKey(String),
    /// A stored value is not a value this crate wrote, or it was altered.
    #[error("a sealed value is corrupt: {0}")]
    Corrupt(&'static str),
    /// The cryptographic library refused an operation (authentication failed, no randomness).
    #[error("a cryptographic operation failed")]
    Crypto,
}

impl From<aws_lc_rs::error::Unspecified> for Error {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        Self::Crypto
    }
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a process encrypts personal data and computes lookup hashes with.
#[derive(Debug)]
pub struct Keyring {
    cipher: Cipher,
    lookup: LookupKey,
}

impl Keyring {
    /// A keyring sealing under `provider`'s active key and hashing lookups with `lookup`.
    pub fn new(provider: Arc<dyn KeyProvider>, lookup: LookupKey) -> Self {
        Self {
            cipher: Cipher::new(provider),
            lookup,
        }
    }

    /// The keys `settings` names, read from its key directory. The lookup key is used for
    /// lookup hashes only, never to wrap data keys.
    ///
    /// # Errors
    /// `Error::Key` when a key is missing or unreadable.
    pub fn load(settings: &herald_config::EncryptionSettings) -> Result<Self> {
        let mut keys = keys::read_dir(&settings.key_dir)?;
        let lookup_id = KeyId::parse(&settings.lookup_key)?;
        let lookup = keys.remove(&lookup_id).ok_or_else(|| {
            Error::Key(format!(
                "the lookup key `{lookup_id}` is not in {}",
                settings.key_dir.display()
            ))
        })?;
        let provider = LocalKeys::from_keys(keys, KeyId::parse(&settings.active_key)?)
            .map_err(|error| Error::Key(format!("{}: {error}", settings.key_dir.display())))?;
        Ok(Self::new(Arc::new(provider), LookupKey::new(&lookup)))
    }

    /// Seals and opens values.
    pub fn cipher(&self) -> &Cipher {
        &self.cipher
    }

    /// Hashes values that are looked up by equality (addresses, request fingerprints).
    pub fn lookup(&self) -> &LookupKey {
        &self.lookup
    }
}

static INSTALLED: RwLock<Option<Arc<Keyring>>> = RwLock::new(None);

/// Makes `keyring` the process's keyring, replacing any earlier one. Column codecs (which
/// have no context of their own) and lookup hashes use it; services install it once at
/// startup, before their first query.
pub fn install(keyring: Keyring) {
    let keyring = Arc::new(keyring);
    match INSTALLED.write() {
        Ok(mut installed) => *installed = Some(keyring),
        Err(poisoned) => *poisoned.into_inner() = Some(keyring),
    }
}

/// The process's keyring.
///
/// # Errors
/// `Error::NotInstalled` before `install`.
pub fn keyring() -> Result<Arc<Keyring>> {
    let installed = match INSTALLED.read() {
        Ok(installed) => installed.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    installed.ok_or(Error::NotInstalled)
}

/// The installed keyring's lookup hash of `subject` in `domain`, as hex: for keys built from a
/// personal value (a Redis key, an event's dedupe key).
///
/// # Panics
/// If no keyring is installed: every service installs it when it builds its database pool,
/// before it builds such a key.
pub fn lookup_hex(domain: &str, subject: &[u8]) -> String {
    keyring()
        .expect("the keyring is installed at start-up (herald_db::build_pool), before a lookup key is built")
        .lookup()
        .hex(domain, &[subject])
}

/// True once a keyring is installed.
pub fn is_installed() -> bool {
    keyring().is_ok()
}

#[cfg(test)]
mod tests;
