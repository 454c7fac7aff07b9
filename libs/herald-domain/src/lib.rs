#![doc = include_str!("../README.md")]

mod ids;
mod state;
mod values;

pub use ids::{DeliveryId, NotificationId, TemplateId};
pub use state::DeliveryState;
pub use values::{
    Category, Channel, EmailAddress, IdempotencyKey, Identity, Priority, Role, TemplateKey,
};

/// Why a value was rejected. The message names the rule that was broken, lowercase, without
/// the field name: callers prefix it with the field they parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

impl ValueError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

#[cfg(test)]
mod tests;
