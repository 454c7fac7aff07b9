#![doc = include_str!("../README.md")]

mod apns;
mod channel;
mod fcm;
mod message;
mod settings;

use std::path::{Path, PathBuf};

pub use apns::{ApnsClient, PROVIDER_TOKEN_REUSE};
pub use channel::PushChannel;
pub use fcm::{FCM_SCOPE, FcmClient, JWT_BEARER_GRANT};
pub use message::{COLLAPSE_ID_KEY, MAX_COLLAPSE_ID_BYTES, MAX_PAYLOAD_BYTES, PushMessage};
pub use settings::{ApnsSettings, FcmSettings, PushSettings};

/// Why the push channel could not be built from its settings. Every variant names the setting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file named by a setting could not be read.
    #[error("{setting}: could not read {}: {source}", path.display())]
    Read {
        /// The setting, e.g. `push.apns.key_file`.
        setting: String,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A file named by a setting was read but does not hold what the setting needs.
    #[error("{setting}: {} {reason}", path.display())]
    Invalid {
        /// The setting.
        setting: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting's value cannot be used.
    #[error("{setting}: {reason}")]
    Setting {
        /// The setting.
        setting: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No provider is configured.
    #[error("push needs at least one provider: configure push.fcm or push.apns")]
    NoProvider,
    /// The HTTP client could not be built (TLS initialisation).
    #[error("could not build the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reads the file a setting names.
fn read_setting_file(setting: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read {
        setting: setting.to_owned(),
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests;
