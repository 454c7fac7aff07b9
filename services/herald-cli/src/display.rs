//! Short names for wire enums and readable timestamps, shared by every command's output.

use chrono::{DateTime, SecondsFormat, Utc};
use herald_proto::{admin, common, submit};

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

/// `OPEN` for `FAILURE_STATUS_OPEN`.
pub(crate) fn failure_status(number: i32) -> String {
    short_name(
        admin::FailureStatus::try_from(number)
            .ok()
            .map(|status| status.as_str_name()),
        "FAILURE_STATUS_",
        number,
    )
}

/// `EXHAUSTED` for `FAILURE_CLASS_EXHAUSTED`.
pub(crate) fn failure_class(number: i32) -> String {
    short_name(
        admin::FailureClass::try_from(number)
            .ok()
            .map(|class| class.as_str_name()),
        "FAILURE_CLASS_",
        number,
    )
}

/// `ALREADY_REPLAYED` for `RESOLVE_OUTCOME_ALREADY_REPLAYED`.
pub(crate) fn resolve_outcome(number: i32) -> String {
    short_name(
        admin::ResolveOutcome::try_from(number)
            .ok()
            .map(|outcome| outcome.as_str_name()),
        "RESOLVE_OUTCOME_",
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

/// Rows in aligned columns under a header, two spaces apart, each line starting with `indent`
/// and without trailing spaces.
pub(crate) fn table<const N: usize>(
    indent: &str,
    header: [&str; N],
    rows: &[[String; N]],
) -> String {
    let header = header.map(str::to_owned);
    let mut widths = [0; N];
    for row in std::iter::once(&header).chain(rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(indent);
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// `text` on one line (line breaks and runs of whitespace become one space), cut to at most
/// `max` characters with `…` marking the cut.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
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
        assert_eq!(failure_status(admin::FailureStatus::Open as i32), "OPEN");
        assert_eq!(
            failure_class(admin::FailureClass::Exhausted as i32),
            "EXHAUSTED"
        );
        assert_eq!(
            resolve_outcome(admin::ResolveOutcome::AlreadyReplayed as i32),
            "ALREADY_REPLAYED"
        );
    }

    #[test]
    fn unknown_enum_numbers_are_shown_as_numbers() {
        assert_eq!(delivery_state(99), "UNKNOWN(99)");
    }

    #[test]
    fn one_line_collapses_whitespace_and_marks_cuts() {
        assert_eq!(one_line("a\n  b\tc", 10), "a b c");
        assert_eq!(one_line("abcdef", 6), "abcdef");
        assert_eq!(one_line("abcdefg", 6), "abcde…");
        assert_eq!(one_line("ééééééé", 3), "éé…");
    }
}
