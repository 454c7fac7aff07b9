//! The JSONB columns of `user_preferences`, each shaped in this one place: the row as diesel
//! reads and writes it (`Row`), and its conversions from and to the typed `PreferenceRecord`.
//! Stored values were validated on the way in, so one that no longer parses is a
//! `ValueError` naming its column (`Error::Corrupt` through `?`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc, WeekdaySet};
use diesel::prelude::*;
use herald_domain::{Channel, DeviceToken, QuietHours, TimeZone, UserPreferences, ValueError};
use serde::{Deserialize, Serialize};

use super::PreferenceRecord;
use crate::personal::{PersonalJson, PersonalText, Readable};
use crate::schema::user_preferences;

/// A `user_preferences` row as stored.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = user_preferences)]
#[diesel(treat_none_as_null = true)]
pub(super) struct Row {
    pub(super) user_id: String,
    // Read through `Readable`, so a value that does not open fails its own user only.
    email: Option<Readable<PersonalText>>,
    phone: Option<Readable<PersonalText>>,
    /// `[{"token": …, "platform": "android" | "ios" | "web"}, …]`.
    device_tokens: Readable<PersonalJson>,
    locale: Option<String>,
    time_zone: Option<String>,
    /// `{"email": true, …}`: channel name → enabled.
    channels: serde_json::Value,
    /// `{"orders": {"sms": false}, …}`: category → channel map.
    categories: serde_json::Value,
    /// `{"start": "22:00", "end": "07:00", "days": ["mon", …]}`.
    quiet_hours: Option<serde_json::Value>,
    global_opt_out: bool,
    updated_at: DateTime<Utc>,
    updated_by: String,
    tracking_opt_out: bool,
}

/// One element of `device_tokens`.
#[derive(Serialize, Deserialize)]
struct StoredDevice {
    token: String,
    platform: String,
}

/// `quiet_hours`.
#[derive(Serialize, Deserialize)]
struct StoredQuietHours {
    start: String,
    end: String,
    days: Vec<String>,
}

/// A channel map as stored: channel names as keys.
type StoredChannels = BTreeMap<String, bool>;

/// What a stored value that does not parse reports.
type Result<T> = std::result::Result<T, ValueError>;

impl TryFrom<Row> for PreferenceRecord {
    type Error = ValueError;

    fn try_from(row: Row) -> Result<Self> {
        let preferences = UserPreferences {
            channels: channels(parse(row.channels, "channels")?, "channels")?,
            categories: parse::<BTreeMap<String, StoredChannels>>(row.categories, "categories")?
                .into_iter()
                .map(|(category, map)| Ok((category, channels(map, "categories")?)))
                .collect::<Result<_>>()?,
            global_opt_out: row.global_opt_out,
            quiet_hours: row
                .quiet_hours
                .map(|value| quiet_hours(parse(value, "quiet_hours")?))
                .transpose()?,
            time_zone: row
                .time_zone
                .as_deref()
                .map(|zone| TimeZone::parse(zone).map_err(|_| corrupt("time_zone")))
                .transpose()?,
        };
        let device_tokens = row
            .device_tokens
            .into_result("user_preferences.device_tokens")?;
        let device_tokens =
            parse::<Vec<StoredDevice>>(device_tokens.into_inner(), "device_tokens")?
                .into_iter()
                .map(|device| {
                    Ok(DeviceToken {
                        platform: device
                            .platform
                            .parse()
                            .map_err(|_| corrupt("device_tokens"))?,
                        token: device.token,
                    })
                })
                .collect::<Result<_>>()?;
        Ok(Self {
            user_id: row.user_id,
            email: row
                .email
                .map(|email| email.into_result("user_preferences.email"))
                .transpose()?,
            phone: row
                .phone
                .map(|phone| phone.into_result("user_preferences.phone"))
                .transpose()?,
            device_tokens,
            locale: row.locale,
            preferences,
            tracking_opt_out: row.tracking_opt_out,
            updated_at: row.updated_at,
            updated_by: row.updated_by,
        })
    }
}

impl From<&PreferenceRecord> for Row {
    fn from(record: &PreferenceRecord) -> Self {
        let preferences = &record.preferences;
        let devices: Vec<StoredDevice> = record
            .device_tokens
            .iter()
            .map(|device| StoredDevice {
                token: device.token.clone(),
                platform: device.platform.as_str().to_owned(),
            })
            .collect();
        let categories: BTreeMap<&str, StoredChannels> = preferences
            .categories
            .iter()
            .map(|(category, map)| (category.as_str(), stored_channels(map)))
            .collect();
        Self {
            user_id: record.user_id.clone(),
            email: record.email.clone().map(Readable::Open),
            phone: record.phone.clone().map(Readable::Open),
            device_tokens: Readable::Open(PersonalJson::new(json(&devices))),
            locale: record.locale.clone(),
            time_zone: preferences.time_zone.map(|zone| zone.name().to_owned()),
            channels: json(&stored_channels(&preferences.channels)),
            categories: json(&categories),
            quiet_hours: preferences.quiet_hours.map(|quiet| {
                json(&StoredQuietHours {
                    start: quiet.start_text(),
                    end: quiet.end_text(),
                    days: quiet.day_names(),
                })
            }),
            global_opt_out: preferences.global_opt_out,
            updated_at: record.updated_at,
            updated_by: record.updated_by.clone(),
            tracking_opt_out: record.tracking_opt_out,
        }
    }
}

fn corrupt(column: &str) -> ValueError {
    ValueError(format!("user_preferences.{column} does not parse"))
}

fn parse<T: serde::de::DeserializeOwned>(value: serde_json::Value, column: &str) -> Result<T> {
    serde_json::from_value(value).map_err(|_| corrupt(column))
}

/// A value of one of the shapes above as JSON (they always serialize).
fn json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

fn channels(stored: StoredChannels, column: &str) -> Result<BTreeMap<Channel, bool>> {
    stored
        .into_iter()
        .map(|(name, enabled)| Ok((name.parse().map_err(|_| corrupt(column))?, enabled)))
        .collect()
}

fn stored_channels(map: &BTreeMap<Channel, bool>) -> StoredChannels {
    map.iter()
        .map(|(channel, enabled)| (channel.as_str().to_owned(), *enabled))
        .collect()
}

fn quiet_hours(stored: StoredQuietHours) -> Result<QuietHours> {
    let start =
        herald_domain::parse_time_of_day(&stored.start).map_err(|_| corrupt("quiet_hours"))?;
    let end = herald_domain::parse_time_of_day(&stored.end).map_err(|_| corrupt("quiet_hours"))?;
    let mut days = WeekdaySet::EMPTY;
    for day in &stored.days {
        days.insert(herald_domain::parse_weekday(day).map_err(|_| corrupt("quiet_hours"))?);
    }
    QuietHours::new(start, end, days).map_err(|_| corrupt("quiet_hours"))
}
