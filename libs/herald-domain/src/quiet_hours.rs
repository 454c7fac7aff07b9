//! Quiet hours: a recurring local-time window in which a recipient does not want to be
//! disturbed, and the IANA time zone that gives "local" its meaning.
//!
//! All arithmetic goes through real instants so daylight-saving changes are handled exactly:
//! a window edge that falls in a spring-forward gap moves to the first valid instant after the
//! gap, and one that falls in a fall-back overlap uses the earlier of the two instants.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, TimeZone as _, Utc, Weekday,
    WeekdaySet,
};
use chrono_tz::Tz;

use crate::ValueError;

/// An IANA time zone such as `Asia/Seoul`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeZone(Tz);

impl TimeZone {
    /// Parses an IANA time zone name (case-sensitive, as in the tz database).
    pub fn parse(text: &str) -> Result<Self, ValueError> {
        Tz::from_str(text)
            .map(Self)
            .map_err(|_| ValueError::new("must be an IANA time zone such as Asia/Seoul"))
    }

    /// The underlying `chrono-tz` zone.
    pub fn tz(self) -> Tz {
        self.0
    }

    /// The IANA name.
    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

impl FromStr for TimeZone {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl AsRef<str> for TimeZone {
    fn as_ref(&self) -> &str {
        self.0.name()
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.0.name())
    }
}

/// Parses a 24-hour `HH:MM` time of day such as `22:00`.
pub fn parse_time_of_day(text: &str) -> Result<NaiveTime, ValueError> {
    let error = || ValueError::new("must be a time of day in HH:MM form such as 22:00");
    let bytes = text.as_bytes();
    let well_formed = bytes.len() == 5
        && bytes[2] == b':'
        && [0, 1, 3, 4]
            .iter()
            .all(|&index| bytes[index].is_ascii_digit());
    if !well_formed {
        return Err(error());
    }
    let digits =
        |index: usize| u32::from(bytes[index] - b'0') * 10 + u32::from(bytes[index + 1] - b'0');
    NaiveTime::from_hms_opt(digits(0), digits(3), 0).ok_or_else(error)
}

/// Parses a weekday name: `mon` to `sun` or the full English name, in any case.
pub fn parse_weekday(text: &str) -> Result<Weekday, ValueError> {
    // chrono accepts exactly the three-letter and full English names, case-insensitively.
    Weekday::from_str(text).map_err(|_| ValueError::new("must be a weekday such as mon"))
}

/// A recurring quiet window in local time.
///
/// The window starts at `start` on each of `days` (local weekdays; empty means every day) and
/// runs until the local clock next reads `end`. When `end` is earlier than `start` the window
/// spans midnight into the next day. The start is inclusive and the end exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    start: NaiveTime,
    end: NaiveTime,
    days: WeekdaySet,
}

impl QuietHours {
    /// A validated window. `start` and `end` must differ; an empty `days` means every day.
    ///
    /// `days` is a [`WeekdaySet`] rather than a `BTreeSet<Weekday>` because chrono's `Weekday`
    /// has no `Ord`; collect one with `days.into_iter().collect()`.
    pub fn new(start: NaiveTime, end: NaiveTime, days: WeekdaySet) -> Result<Self, ValueError> {
        if start == end {
            return Err(ValueError::new("start and end must differ"));
        }
        Ok(Self { start, end, days })
    }

    /// The local time the window starts (inclusive).
    pub fn start(&self) -> NaiveTime {
        self.start
    }

    /// The local time the window ends (exclusive).
    pub fn end(&self) -> NaiveTime {
        self.end
    }

    /// The local weekdays on which a window starts, as given; empty means every day.
    pub fn days(&self) -> WeekdaySet {
        self.days
    }

    /// `start` as `HH:MM`, the form `parse_time_of_day` reads.
    pub fn start_text(&self) -> String {
        self.start.format("%H:%M").to_string()
    }

    /// `end` as `HH:MM`, the form `parse_time_of_day` reads.
    pub fn end_text(&self) -> String {
        self.end.format("%H:%M").to_string()
    }

    /// The days as `mon` to `sun`, Monday first: the names `parse_weekday` reads.
    pub fn day_names(&self) -> Vec<String> {
        self.days
            .iter(Weekday::Mon)
            .map(|day| day.to_string().to_ascii_lowercase())
            .collect()
    }

    /// Whether a window starts on the local weekday `weekday`.
    pub fn starts_on(&self, weekday: Weekday) -> bool {
        self.days.is_empty() || self.days.contains(weekday)
    }

    /// Whether a window ends on the local day after it starts.
    pub fn spans_midnight(&self) -> bool {
        self.end < self.start
    }

    /// If `now` falls inside a quiet window in `zone`, the instant that window ends; otherwise
    /// `None`.
    ///
    /// The end is the first time the local clock reads `end` after the window started. An edge
    /// in a daylight-saving gap moves to the first valid instant after the gap; an ambiguous
    /// edge uses the earlier instant. Windows that started on the previous local day are
    /// considered even if today is not one of `days`.
    pub fn quiet_until(&self, zone: &TimeZone, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let tz = zone.tz();
        let today = now.with_timezone(&tz).date_naive();
        // A window lasts under a day plus a daylight-saving shift, so only windows that
        // started today, yesterday or (defensively) the day before can still be running.
        (0..=2)
            .filter_map(|days_back| today.checked_sub_days(Days::new(days_back)))
            .filter(|start_date| self.starts_on(start_date.weekday()))
            .filter_map(|start_date| self.window_starting_on(tz, start_date))
            .filter(|(window_start, window_end)| *window_start <= now && now < *window_end)
            .map(|(_, window_end)| window_end)
            .max()
    }

    /// The instants bounding the window that starts on local date `start_date`, ignoring the
    /// day filter. `None` only at the edges of chrono's representable range.
    fn window_starting_on(
        &self,
        tz: Tz,
        start_date: NaiveDate,
    ) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let end_date = if self.spans_midnight() {
            start_date.succ_opt()?
        } else {
            start_date
        };
        let window_start = resolve_local(tz, start_date.and_time(self.start))?;
        let window_end = resolve_local(tz, end_date.and_time(self.end))?;
        Some((window_start, window_end))
    }
}

/// The instant at which the local clock in `tz` first reads `local`: the earlier instant when
/// `local` happens twice, and the end of the gap when it never happens.
fn resolve_local(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local).earliest() {
        Some(instant) => Some(instant.with_timezone(&Utc)),
        None => first_instant_reading_at_least(tz, local),
    }
}

/// The first whole-second instant whose local time in `tz` is at or after `local`. Used for
/// times inside a spring-forward gap, where that instant is the transition itself.
fn first_instant_reading_at_least(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    // UTC offsets lie within -12h..+14h, so 15 hours either side of `local` read as UTC
    // brackets the answer: the lower bound reads earlier than `local`, the upper bound later.
    const BRACKET_SECONDS: i64 = 15 * 3600;
    let reads_at_least = |seconds: i64| {
        DateTime::from_timestamp(seconds, 0)
            .map(|instant| instant.with_timezone(&tz).naive_local() >= local)
    };
    let pivot = local.and_utc().timestamp();
    let (mut before, mut at_or_after) = (pivot - BRACKET_SECONDS, pivot + BRACKET_SECONDS);
    while at_or_after - before > 1 {
        let middle = before + (at_or_after - before) / 2;
        if reads_at_least(middle)? {
            at_or_after = middle;
        } else {
            before = middle;
        }
    }
    DateTime::from_timestamp(at_or_after, 0)
}
