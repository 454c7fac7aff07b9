//! User preferences: contact points and what reaches the user when. Changes are audited.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::schema::{audit_log, user_preferences};
use crate::statement::planned_per_run;
use crate::{Error, Result};

/// A user's stored preferences. Personal data: never log it.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = user_preferences)]
#[diesel(treat_none_as_null = true)]
pub struct PreferenceRecord {
    /// The product's user id.
    pub user_id: String,
    /// Email address.
    pub email: Option<String>,
    /// E.164 phone number.
    pub phone: Option<String>,
    /// `[{"token": …, "platform": …}]`.
    pub device_tokens: serde_json::Value,
    /// BCP 47 locale.
    pub locale: Option<String>,
    /// IANA time zone.
    pub time_zone: Option<String>,
    /// Channel name → enabled.
    pub channels: serde_json::Value,
    /// Category → {channel name → enabled}.
    pub categories: serde_json::Value,
    /// `{"start", "end", "days"}` or none.
    pub quiet_hours: Option<serde_json::Value>,
    /// Only mandatory categories reach the user.
    pub global_opt_out: bool,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Who made the last change.
    pub updated_by: String,
    /// No open pixel and no click-tracking links in this user's email.
    pub tracking_opt_out: bool,
}

impl PreferenceRecord {
    /// The defaults of a user never seen before: everything on, no contact points.
    pub fn defaults(user_id: &str) -> Self {
        Self {
            user_id: user_id.to_owned(),
            email: None,
            phone: None,
            device_tokens: serde_json::json!([]),
            locale: None,
            time_zone: None,
            channels: serde_json::json!({}),
            categories: serde_json::json!({}),
            quiet_hours: None,
            global_opt_out: false,
            updated_at: Utc::now(),
            updated_by: String::new(),
            tracking_opt_out: false,
        }
    }
}

/// The stored preferences of `user_id`, if any.
pub async fn get(
    connection: &mut AsyncPgConnection,
    user_id: &str,
) -> Result<Option<PreferenceRecord>> {
    Ok(user_preferences::table
        .find(user_id)
        .select(PreferenceRecord::as_select())
        .first(connection)
        .await
        .optional()?)
}

/// Applies `change` to `user_id`'s preferences (the defaults if none are stored) under a row
/// lock, stores the result and audits it as `actor`, in one transaction. `change` may refuse
/// with a message, which becomes `Error::Invalid` and writes nothing.
pub async fn update<F>(
    connection: &mut AsyncPgConnection,
    user_id: &str,
    actor: &str,
    change: F,
) -> Result<PreferenceRecord>
where
    F: FnOnce(&mut PreferenceRecord) -> std::result::Result<(), String> + Send,
{
    connection
        .transaction::<_, Error, _>(async |connection| {
            let current = user_preferences::table
                .find(user_id)
                .select(PreferenceRecord::as_select())
                .for_update()
                .first(connection)
                .await
                .optional()?;
            let mut record = current.unwrap_or_else(|| PreferenceRecord::defaults(user_id));
            change(&mut record).map_err(Error::Invalid)?;
            record.user_id = user_id.to_owned();
            record.updated_at = Utc::now();
            record.updated_by = actor.to_owned();
            diesel::insert_into(user_preferences::table)
                .values(&record)
                .on_conflict(user_preferences::user_id)
                .do_update()
                .set(&record)
                .execute(connection)
                .await?;
            audit(connection, actor, "preferences.update", user_id).await?;
            Ok(record)
        })
        .await
}

/// Deletes `user_id`'s preferences and contact data, audited; `false` when there were none.
pub async fn delete(
    connection: &mut AsyncPgConnection,
    user_id: &str,
    actor: &str,
) -> Result<bool> {
    connection
        .transaction::<_, Error, _>(async |connection| {
            let deleted = diesel::delete(user_preferences::table.find(user_id))
                .execute(connection)
                .await?;
            crate::contacts::delete_for_user(connection, user_id).await?;
            if deleted > 0 {
                audit(connection, actor, "preferences.delete", user_id).await?;
            }
            Ok(deleted > 0)
        })
        .await
}

async fn audit(
    connection: &mut AsyncPgConnection,
    actor: &str,
    action: &str,
    user_id: &str,
) -> Result<()> {
    diesel::insert_into(audit_log::table)
        .values((
            audit_log::actor.eq(actor),
            audit_log::action.eq(action),
            audit_log::target.eq(format!("user:{user_id}")),
        ))
        .execute(connection)
        .await?;
    Ok(())
}

impl PreferenceRecord {
    /// The stored device tokens. Stored values were validated on the way in, so an
    /// unparseable one is `Error::Corrupt`.
    pub fn device_tokens(&self) -> Result<Vec<herald_domain::DeviceToken>> {
        let corrupt = || Error::Corrupt("user_preferences.device_tokens".into());
        self.device_tokens
            .as_array()
            .ok_or_else(corrupt)?
            .iter()
            .map(|device| {
                Ok(herald_domain::DeviceToken {
                    token: device["token"].as_str().ok_or_else(corrupt)?.to_owned(),
                    platform: device["platform"]
                        .as_str()
                        .and_then(|platform| platform.parse().ok())
                        .ok_or_else(corrupt)?,
                })
            })
            .collect()
    }

    /// The domain view of the stored JSON. Stored values were validated on the way in, so an
    /// unparseable one is `Error::Corrupt`.
    pub fn to_domain(&self) -> Result<herald_domain::UserPreferences> {
        use herald_domain::{Channel, QuietHours, TimeZone, UserPreferences};
        let corrupt = |what: &str| Error::Corrupt(format!("user_preferences.{what}"));
        let channel_map =
            |value: &serde_json::Value| -> Option<std::collections::BTreeMap<Channel, bool>> {
                value
                    .as_object()?
                    .iter()
                    .map(|(name, enabled)| {
                        Some((name.parse::<Channel>().ok()?, enabled.as_bool()?))
                    })
                    .collect()
            };
        let channels = channel_map(&self.channels).ok_or_else(|| corrupt("channels"))?;
        let categories = self
            .categories
            .as_object()
            .ok_or_else(|| corrupt("categories"))?
            .iter()
            .map(|(category, channels)| Some((category.clone(), channel_map(channels)?)))
            .collect::<Option<_>>()
            .ok_or_else(|| corrupt("categories"))?;
        let quiet_hours = self
            .quiet_hours
            .as_ref()
            .map(|value| quiet_hours_from_json(value).ok_or_else(|| corrupt("quiet_hours")))
            .transpose()?;
        let time_zone = self
            .time_zone
            .as_deref()
            .map(|zone| TimeZone::parse(zone).map_err(|_| corrupt("time_zone")))
            .transpose()?;
        Ok(UserPreferences {
            channels,
            categories,
            global_opt_out: self.global_opt_out,
            quiet_hours: quiet_hours.map(|quiet: QuietHours| quiet),
            time_zone,
        })
    }
}

/// `{"start": "HH:MM", "end": "HH:MM", "days": ["mon", …]}` → `QuietHours`.
pub fn quiet_hours_from_json(value: &serde_json::Value) -> Option<herald_domain::QuietHours> {
    let start = herald_domain::parse_time_of_day(value.get("start")?.as_str()?).ok()?;
    let end = herald_domain::parse_time_of_day(value.get("end")?.as_str()?).ok()?;
    let mut days = chrono::WeekdaySet::EMPTY;
    for day in value.get("days")?.as_array()? {
        days.insert(herald_domain::parse_weekday(day.as_str()?).ok()?);
    }
    herald_domain::QuietHours::new(start, end, days).ok()
}

/// The stored preferences of each of `user_ids` that has any.
pub async fn get_many(
    connection: &mut AsyncPgConnection,
    user_ids: &[String],
) -> Result<std::collections::HashMap<String, PreferenceRecord>> {
    if user_ids.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    Ok(planned_per_run(
        user_preferences::table
            .filter(user_preferences::user_id.eq_any(user_ids))
            .select(PreferenceRecord::as_select()),
    )
    .load(connection)
    .await?
    .into_iter()
    .map(|record| (record.user_id.clone(), record))
    .collect())
}
