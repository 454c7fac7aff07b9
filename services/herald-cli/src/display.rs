//! Short names for wire enums and readable timestamps, shared by every command's output.

use chrono::{DateTime, SecondsFormat, Utc};
use herald_proto::{common, submit};

/// `DELIVERED` for `NOTIFICATION_STATUS_DELIVERED`; `UNKNOWN(7)` for numbers this build does not know.
pub(crate) fn notification_status(number: i32) -> String {
    short_name(
        submit::NotificationStatus::try_from(number)
            .ok()
            .map(|status| status.as_str_name()),
        "NOTIFICATION_STATUS_",
        number,
    )
}

/// `DELIVERED` for `DELIVERY_STATE_DELIVERED`.
pub(crate) fn delivery_state(number: i32) -> String {
    short_name(
        submit::DeliveryState::try_from(number)
            .ok()
            .map(|state| state.as_str_name()),
        "DELIVERY_STATE_",
        number,
    )
}

/// `EMAIL` for `CHANNEL_EMAIL`.
pub(crate) fn channel(number: i32) -> String {
    short_name(
        common::Channel::try_from(number)
            .ok()
            .map(|channel| channel.as_str_name()),
        "CHANNEL_",
        number,
    )
}

/// `NORMAL` for `PRIORITY_NORMAL`.
pub(crate) fn priority(number: i32) -> String {
    short_name(
        common::Priority::try_from(number)
            .ok()
            .map(|priority| priority.as_str_name()),
        "PRIORITY_",
        number,
    )
}

fn short_name(name: Option<&'static str>, prefix: &str, number: i32) -> String {
    match name {
        Some(name) => name.strip_prefix(prefix).unwrap_or(name).to_owned(),
        None => format!("UNKNOWN({number})"),
    }
}

/// The instant of a protobuf timestamp, `None` when absent or out of range.
pub(crate) fn instant(timestamp: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    timestamp.and_then(herald_proto::conversions::instant)
}

/// RFC 3339 with milliseconds, e.g. `2025-01-31T12:00:00.123Z`.
pub(crate) fn rfc3339(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A timestamp as an RFC 3339 JSON string, or `null`.
pub(crate) fn timestamp_json(timestamp: Option<&prost_types::Timestamp>) -> serde_json::Value {
    instant(timestamp).map_or(serde_json::Value::Null, |instant| rfc3339(instant).into())
}

/// Seconds between two instants, e.g. `1.234s`.
pub(crate) fn elapsed(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let milliseconds = (to - from).num_milliseconds();
    format!("{:.3}s", milliseconds as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_enum_names_lose_their_prefix() {
        assert_eq!(
            notification_status(submit::NotificationStatus::PartiallyDelivered as i32),
            "PARTIALLY_DELIVERED"
        );
        assert_eq!(
            delivery_state(submit::DeliveryState::RetryWait as i32),
            "RETRY_WAIT"
        );
        assert_eq!(channel(common::Channel::Email as i32), "EMAIL");
        assert_eq!(priority(common::Priority::Critical as i32), "CRITICAL");
    }

    #[test]
    fn unknown_enum_numbers_are_shown_as_numbers() {
        assert_eq!(delivery_state(99), "UNKNOWN(99)");
    }
}
