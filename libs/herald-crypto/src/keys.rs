//! Key-encryption keys: the `KeyProvider` interface and `LocalKeys`, which reads them from a
//! directory (a mounted Kubernetes Secret, or `certs-dev/generated/keys` in development).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// The length of every key, in bytes (AES-256, HMAC-SHA256).
pub const KEY_LEN: usize = 32;

/// A key's name: 1 to 64 ASCII letters, digits, `-` or `_`, starting with a letter or digit.
/// It is stored beside every value sealed under the key, so it never changes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// Checks `id`.
    ///
    /// # Errors
    /// `Error::Key` naming the rule `id` breaks.
    pub fn parse(id: &str) -> Result<Self> {
        let well_formed = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .next()
                .is_some_and(|first| first.is_ascii_alphanumeric())
            && id
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if well_formed {
            Ok(Self(id.to_owned()))
        } else {
            Err(Error::Key(format!(
                "`{id}` is not a key id: use 1 to 64 letters, digits, `-` or `_`, starting with \
                 a letter or digit"
            )))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "KeyId({})", self.0)
    }
}

/// Holds the key-encryption keys and wraps data keys with them. A KMS implements it by
/// calling its encrypt and decrypt operations; the cipher calls `unwrap` once per data key
/// it meets and `wrap` once per data key it makes, so a remote call per value never happens.
pub trait KeyProvider: Send + Sync + fmt::Debug + 'static {
    /// The key new data keys are wrapped under.
    fn active(&self) -> &KeyId;

    /// Encrypts `data_key` under the active key.
    ///
    /// # Errors
    /// When the key is unavailable or encryption fails.
    fn wrap(&self, data_key: &[u8; KEY_LEN]) -> Result<Vec<u8>>;

    /// Decrypts `wrapped`, a data key that `wrap` encrypted under `key`.
    ///
    /// # Errors
    /// `Error::UnknownKey` when `key` is not held; `Error::Crypto` when `wrapped` does not
    /// authenticate.
    fn unwrap(&self, key: &KeyId, wrapped: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>>;
}

/// Key-encryption keys read from files: one file per key, named by its id, holding 64 hex
/// digits (32 random bytes). Files whose names start with `.` are skipped (a mounted Secret's
/// own bookkeeping).
pub struct LocalKeys {
    keys: BTreeMap<KeyId, LessSafeKey>,
    active: KeyId,
}

impl LocalKeys {
    /// Reads every key in `dir`; `active` must be one of them.
    ///
    /// # Errors
    /// `Error::Key` when the directory or a file cannot be read, a file is not a key, or
    /// `active` is missing.
    pub fn load(dir: &Path, active: &str) -> Result<Self> {
        Self::from_keys(read_dir(dir)?, KeyId::parse(active)?)
    }

    /// Keys given in memory (tests, or a provider that fetched them itself).
    ///
    /// # Errors
    /// `Error::Key` when `active` is not among `keys`.
    pub fn from_keys(
        keys: BTreeMap<KeyId, Zeroizing<[u8; KEY_LEN]>>,
        active: KeyId,
    ) -> Result<Self> {
        if !keys.contains_key(&active) {
            return Err(Error::Key(format!(
                "the active key `{active}` is not among the keys (they are: {})",
                keys.keys()
                    .map(KeyId::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let keys = keys
            .iter()
            .map(|(id, bytes)| {
                let key = UnboundKey::new(&AES_256_GCM, bytes.as_slice())?;
                Ok((id.clone(), LessSafeKey::new(key)))
            })
            .collect::<Result<_>>()?;
        Ok(Self { keys, active })
    }
}

impl fmt::Debug for LocalKeys {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("LocalKeys")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

impl KeyProvider for LocalKeys {
    fn active(&self) -> &KeyId {
        &self.active
    }

    fn wrap(&self, data_key: &[u8; KEY_LEN]) -> Result<Vec<u8>> {
        let key = &self.keys[&self.active];
        let mut nonce = [0_u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)?;
        let mut wrapped = nonce.to_vec();
        let mut sealed = data_key.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(self.active.as_str().as_bytes()),
            &mut sealed,
        )?;
        wrapped.extend_from_slice(&sealed);
        Ok(wrapped)
    }

    fn unwrap(&self, key: &KeyId, wrapped: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>> {
        let aead = self
            .keys
            .get(key)
            .ok_or_else(|| Error::UnknownKey(key.to_string()))?;
        let (nonce, sealed) = wrapped
            .split_at_checked(NONCE_LEN)
            .ok_or(Error::Corrupt("a wrapped data key is too short"))?;
        let nonce = Nonce::try_assume_unique_for_key(nonce)?;
        let mut buffer = Zeroizing::new(sealed.to_vec());
        let opened = aead.open_in_place(nonce, Aad::from(key.as_str().as_bytes()), &mut buffer)?;
        let data_key: [u8; KEY_LEN] = (&*opened)
            .try_into()
            .map_err(|_| Error::Corrupt("a wrapped data key has the wrong length"))?;
        Ok(Zeroizing::new(data_key))
    }
}

/// Every key file in `dir` (see `LocalKeys`), by id.
///
/// # Errors
/// `Error::Key` when the directory or a file cannot be read, or a file is not a key.
pub(crate) fn read_dir(dir: &Path) -> Result<BTreeMap<KeyId, Zeroizing<[u8; KEY_LEN]>>> {
    let entries = std::fs::read_dir(dir).map_err(|error| {
        Error::Key(format!(
            "cannot read key directory {}: {error} (create a key with `herald-api-server keys \
             new <id>`; in development, run herald-certs-dev)",
            dir.display()
        ))
    })?;
    let mut keys = BTreeMap::new();
    for entry in entries {
        let entry =
            entry.map_err(|error| Error::Key(format!("cannot list {}: {error}", dir.display())))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || entry.path().is_dir() {
            continue;
        }
        keys.insert(KeyId::parse(name)?, read_key(&entry.path())?);
    }
    Ok(keys)
}

fn read_key(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|error| Error::Key(format!("cannot read key {}: {error}", path.display())))?,
    );
    let mut key = Zeroizing::new([0_u8; KEY_LEN]);
    hex::decode_to_slice(text.trim(), key.as_mut_slice()).map_err(|_| {
        Error::Key(format!(
            "{} is not a key: it must hold {} hex digits",
            path.display(),
            KEY_LEN * 2
        ))
    })?;
    Ok(key)
}

/// Writes a new random key named `id` into `dir` (created if missing), readable only by its
/// owner. An existing key is never overwritten: values sealed under it would be lost.
///
/// # Errors
/// `Error::Key` when `id` is malformed, the key exists, or the file cannot be written.
pub fn write_new_key(dir: &Path, id: &str) -> Result<std::path::PathBuf> {
    let id = KeyId::parse(id)?;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|error| Error::Key(format!("cannot create {}: {error}", dir.display())))?;
    let path = dir.join(id.as_str());
    if path.exists() {
        return Err(Error::Key(format!(
            "the key {} exists: a key is never replaced",
            path.display()
        )));
    }
    // Written in full under a hidden name, then linked into place (which fails if the key
    // appeared meanwhile), so a key file is never seen half-written.
    let partial = dir.join(format!(".{id}.partial"));
    let written = write_key_file(&partial).and_then(|()| {
        std::fs::hard_link(&partial, &path)
            .map_err(|error| Error::Key(format!("cannot create key {}: {error}", path.display())))
    });
    let _removed = std::fs::remove_file(&partial);
    written.map(|()| path)
}

/// Writes 32 random bytes as hex into a new file at `path`, readable only by its owner, and
/// flushes it to disk.
fn write_key_file(path: &Path) -> Result<()> {
    let mut key = Zeroizing::new([0_u8; KEY_LEN]);
    aws_lc_rs::rand::fill(key.as_mut_slice())?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let text = Zeroizing::new(hex::encode(key.as_slice()));
    options
        .open(path)
        .and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()
        })
        .map_err(|error| Error::Key(format!("cannot write key {}: {error}", path.display())))
}
