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
pub use signal::Signal;

/// Why a Redis operation of the inbox failed: the same errors as every Redis call in Herald.
pub use herald_redis::{Error, Result};

#[cfg(test)]
mod tests;
