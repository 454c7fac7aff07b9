#![doc = include_str!("../README.md")]

mod clock;
mod experiment;
mod ids;
mod preference;
mod quiet_hours;
mod state;
mod text;
mod values;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use experiment::{Subject, ZTest, assign_variant, two_proportion_z_test};
pub use ids::{DeliveryId, NotificationId, TemplateId};
pub use preference::{Overrides, UserPreferences, Verdict};
pub use quiet_hours::{QuietHours, TimeZone, parse_time_of_day, parse_weekday};
pub use state::DeliveryState;
pub use text::{Controls, check_controls};
pub use values::{
    Category, Channel, DeviceToken, EmailAddress, IdempotencyKey, Identity, Permission,
    PhoneNumber, Platform, Priority, Role, TemplateKey, VariantName,
};

/// The tracing target of delivery events: every stored delivery event is logged under it
/// (`herald_db::events`), and telemetry exports that stream as OpenTelemetry log records.
pub const TRACKING_TARGET: &str = "herald::tracking";

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
