#![doc = include_str!("../README.md")]

mod channel;
mod hub;
mod publisher;
mod settings;
mod signal;

pub use channel::{InboxChannel, PROVIDER};
pub use hub::{InboxHub, Subscription, Update};
pub use publisher::InboxPublisher;
pub use settings::InboxSettings;
pub use signal::{Signal, channel_name};

/// Why a Redis operation of the inbox failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection, or the pool or client could not be built.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// The command did not answer within the timeout.
    #[error("redis timed out")]
    Timeout,
    /// The command failed.
    #[error("redis command failed: {0}")]
    Command(#[from] redis::RedisError),
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;
