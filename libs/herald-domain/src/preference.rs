//! What a user's preferences decide for one delivery.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::{Channel, QuietHours, TimeZone};

/// A user's preferences, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPreferences {
    /// Channel → enabled; absent channels are on.
    pub channels: BTreeMap<Channel, bool>,
    /// Category → channel → enabled; absent entries are on.
    pub categories: BTreeMap<String, BTreeMap<Channel, bool>>,
    /// Only mandatory categories reach the user.
    pub global_opt_out: bool,
    /// When nothing non-urgent should arrive.
    pub quiet_hours: Option<QuietHours>,
    /// The user's time zone; quiet hours are read in it (UTC when unknown).
    pub time_zone: Option<TimeZone>,
}

/// What the rules of the notification allow against the user's preferences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Overrides {
    /// The category cannot be switched off (e.g. security alerts).
    pub mandatory: bool,
    /// The notification may arrive during quiet hours (critical priority in a category
    /// configured to bypass them).
    pub ignore_quiet_hours: bool,
}

/// The decision for one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send it now.
    Send,
    /// Never send it; the reason is recorded on the delivery.
    Suppress(String),
    /// Hold it until this instant (the end of the quiet window), then send it.
    DeferUntil(DateTime<Utc>),
}

impl UserPreferences {
    /// Decides whether a `category` notification on `channel` reaches the user at `now`.
    pub fn decide(
        &self,
        channel: Channel,
        category: &str,
        overrides: Overrides,
        now: DateTime<Utc>,
    ) -> Verdict {
        if !overrides.mandatory {
            if self.global_opt_out {
                return Verdict::Suppress(
                    "opted_out: the user opted out of all notifications".into(),
                );
            }
            if self.channels.get(&channel) == Some(&false) {
                return Verdict::Suppress(format!(
                    "channel_disabled: the user turned off {channel}"
                ));
            }
            if self
                .categories
                .get(category)
                .and_then(|channels| channels.get(&channel))
                == Some(&false)
            {
                return Verdict::Suppress(format!(
                    "category_disabled: the user turned off {category} on {channel}"
                ));
            }
        }
        if !overrides.ignore_quiet_hours
            && let Some(quiet_hours) = &self.quiet_hours
            && let Some(zone) = self.time_zone.or_else(|| TimeZone::parse("UTC").ok())
            && let Some(end) = quiet_hours.quiet_until(&zone, now)
        {
            return Verdict::DeferUntil(end);
        }
        Verdict::Send
    }
}
