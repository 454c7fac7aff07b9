//! Envelope encryption of single values.
//!
//! A value is sealed with AES-256-GCM under a random data key; the data key is stored beside
//! it, wrapped by a key-encryption key from the `KeyProvider`, together with that key's id.
//! A process reuses its data key for up to `DATA_KEY_USES` values and remembers the data keys
//! it has unwrapped, so the provider is called once per data key rather than per value.
//!
//! The stored form, one byte string:
//!
//! ```text
//! 0x00 | plaintext                       a value written before encryption, or an empty one
//! 0x01 | n: u8 | key id (n bytes) | m: u16 BE | wrapped data key (m bytes)  ← header
//!      | nonce (12 bytes) | ciphertext | tag (16 bytes)
//! ```
//!
//! The header is the AEAD's associated data, so a value cannot be moved under another
//! wrapped key. Rotation (`herald-api-server keys rotate`) opens every value not under the
//! active key and seals it again.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use zeroize::Zeroizing;

use crate::keys::{KEY_LEN, KeyId, KeyProvider};
use crate::{Error, Result};

/// The first byte of a value stored in clear (written before encryption, or empty).
pub const PLAINTEXT: u8 = 0;
/// The first byte of a sealed value.
const SEALED: u8 = 1;
/// How many values one data key seals before the cipher makes a new one. Random 96-bit
/// nonces stay far from a collision at this count.
const DATA_KEY_USES: u32 = 1 << 20;
/// How many unwrapped data keys a process remembers before it forgets them all.
const OPENED_CAPACITY: usize = 4096;

/// Seals and opens values under a `KeyProvider`'s keys.
pub struct Cipher {
    provider: Arc<dyn KeyProvider>,
    sealing: Mutex<Option<Arc<SealingKey>>>,
    opened: RwLock<HashMap<Box<[u8]>, Arc<RandomizedNonceKey>>>,
}

/// The data key new values are sealed with, and the header that names it.
struct SealingKey {
    header: Box<[u8]>,
    key: Arc<RandomizedNonceKey>,
    uses: AtomicU32,
}

impl Cipher {
    /// A cipher over `provider`'s keys.
    pub fn new(provider: Arc<dyn KeyProvider>) -> Self {
        Self {
            provider,
            sealing: Mutex::new(None),
            opened: RwLock::new(HashMap::new()),
        }
    }

    /// The key new values are sealed under.
    pub fn active(&self) -> &KeyId {
        self.provider.active()
    }

    /// Seals `plaintext`. An empty value is stored as the single byte `PLAINTEXT`: it holds
    /// nothing to hide.
    ///
    /// # Errors
    /// When the provider cannot wrap a new data key or encryption fails.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        if plaintext.is_empty() {
            return Ok(vec![PLAINTEXT]);
        }
        let sealing = self.sealing_key()?;
        let header = &sealing.header;
        let mut sealed = Vec::with_capacity(header.len() + NONCE_LEN + plaintext.len() + 16);
        sealed.extend_from_slice(header);
        sealed.extend_from_slice(&[0; NONCE_LEN]);
        let body_start = sealed.len();
        sealed.extend_from_slice(plaintext);
        let (nonce, tag) = sealing
            .key
            .seal_in_place_separate_tag(Aad::from(&**header), &mut sealed[body_start..])?;
        sealed[header.len()..body_start].copy_from_slice(nonce.as_ref());
        sealed.extend_from_slice(tag.as_ref());
        Ok(sealed)
    }

    /// Opens a value `seal` wrote (or a `PLAINTEXT` one).
    ///
    /// # Errors
    /// `Error::Corrupt` when `stored` is not such a value, `Error::UnknownKey` when its key is
    /// not configured, `Error::Crypto` when it does not authenticate.
    pub fn open(&self, stored: &[u8]) -> Result<Vec<u8>> {
        let parsed = Parsed::read(stored)?;
        let Parsed::Sealed {
            header,
            key_id,
            wrapped,
            nonce,
            body,
        } = parsed
        else {
            return Ok(stored[1..].to_vec());
        };
        let key = self.opening_key(header, key_id, wrapped)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce)?;
        let mut buffer = body.to_vec();
        let length = key
            .open_in_place(nonce, Aad::from(header), &mut buffer)?
            .len();
        buffer.truncate(length);
        Ok(buffer)
    }

    /// The id of the key `stored` is sealed under; `None` for a value stored in clear.
    ///
    /// # Errors
    /// `Error::Corrupt` when `stored` is not a value this crate wrote.
    pub fn key_of(stored: &[u8]) -> Result<Option<&str>> {
        Ok(match Parsed::read(stored)? {
            Parsed::Plain => None,
            Parsed::Sealed { key_id, .. } => Some(key_id),
        })
    }

    /// The bytes every value sealed under `key` starts with.
    pub fn prefix_of(key: &KeyId) -> Vec<u8> {
        let id = key.as_str().as_bytes();
        let mut prefix = vec![SEALED, u8::try_from(id.len()).unwrap_or(u8::MAX)];
        prefix.extend_from_slice(id);
        prefix
    }

    fn sealing_key(&self) -> Result<Arc<SealingKey>> {
        let mut sealing = self
            .sealing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(current) = sealing.as_ref()
            && current.uses.fetch_add(1, Ordering::Relaxed) < DATA_KEY_USES
        {
            return Ok(Arc::clone(current));
        }
        let fresh = Arc::new(self.new_data_key()?);
        *sealing = Some(Arc::clone(&fresh));
        Ok(fresh)
    }

    fn new_data_key(&self) -> Result<SealingKey> {
        let mut data_key = Zeroizing::new([0_u8; KEY_LEN]);
        aws_lc_rs::rand::fill(data_key.as_mut_slice())?;
        let wrapped = self.provider.wrap(&data_key)?;
        let mut header = Self::prefix_of(self.provider.active());
        let wrapped_len = u16::try_from(wrapped.len())
            .map_err(|_| Error::Key("a wrapped data key is longer than 65535 bytes".to_owned()))?;
        header.extend_from_slice(&wrapped_len.to_be_bytes());
        header.extend_from_slice(&wrapped);
        let key = Arc::new(RandomizedNonceKey::new(&AES_256_GCM, data_key.as_slice())?);
        Ok(SealingKey {
            header: header.into_boxed_slice(),
            key,
            uses: AtomicU32::new(1),
        })
    }

    fn opening_key(
        &self,
        header: &[u8],
        key_id: &str,
        wrapped: &[u8],
    ) -> Result<Arc<RandomizedNonceKey>> {
        let known = self
            .opened
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(header)
            .cloned();
        if let Some(key) = known {
            return Ok(key);
        }
        let data_key = self.provider.unwrap(&KeyId::parse(key_id)?, wrapped)?;
        let key = Arc::new(RandomizedNonceKey::new(&AES_256_GCM, data_key.as_slice())?);
        let mut opened = self
            .opened
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if opened.len() >= OPENED_CAPACITY {
            opened.clear();
        }
        opened.insert(header.into(), Arc::clone(&key));
        Ok(key)
    }
}

impl fmt::Debug for Cipher {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Cipher")
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// A stored value, split into its parts.
enum Parsed<'a> {
    Plain,
    Sealed {
        header: &'a [u8],
        key_id: &'a str,
        wrapped: &'a [u8],
        nonce: &'a [u8],
        body: &'a [u8],
    },
}

impl<'a> Parsed<'a> {
    fn read(stored: &'a [u8]) -> Result<Self> {
        match stored.first() {
            Some(&PLAINTEXT) => return Ok(Self::Plain),
            Some(&SEALED) => {}
            _ => return Err(Error::Corrupt("unknown format")),
        }
        let truncated = || Error::Corrupt("truncated");
        let id_len = usize::from(*stored.get(1).ok_or_else(truncated)?);
        let id_end = 2 + id_len;
        let key_id = stored.get(2..id_end).ok_or_else(truncated)?;
        let key_id = std::str::from_utf8(key_id).map_err(|_| Error::Corrupt("key id"))?;
        let length = stored.get(id_end..id_end + 2).ok_or_else(truncated)?;
        let wrapped_len = usize::from(u16::from_be_bytes([length[0], length[1]]));
        let header_end = id_end + 2 + wrapped_len;
        let wrapped = stored.get(id_end + 2..header_end).ok_or_else(truncated)?;
        let nonce = stored
            .get(header_end..header_end + NONCE_LEN)
            .ok_or_else(truncated)?;
        let body = &stored[header_end + NONCE_LEN..];
        Ok(Self::Sealed {
            header: &stored[..header_end],
            key_id,
            wrapped,
            nonce,
            body,
        })
    }
}
