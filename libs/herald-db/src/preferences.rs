//! User preferences: contact points and what reaches the user when. Changes are audited.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use herald_domain::{DeviceToken, UserPreferences, ValueError};

use crate::personal::PersonalText;

use crate::schema::{audit_log, user_preferences};
use crate::statement::planned_per_run;
use crate::{Error, Result};

mod stored;

use stored::Row;

/// A user's stored preferences, typed (the JSONB columns are shaped in `stored`, and only
/// there). Personal data: never log it.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceRecord {
    /// The product's user id.
    pub user_id: String,
    /// Email address.
    pub email: Option<PersonalText>,
    /// E.164 phone number.
    pub phone: Option<PersonalText>,
    /// The user's devices, for push.
    pub device_tokens: Vec<DeviceToken>,
    /// BCP 47 locale.
    pub locale: Option<String>,
    /// What reaches the user when: channel and category switches, the global opt-out, quiet
    /// hours and the time zone they are read in.
    pub preferences: UserPreferences,
    /// No open pixel and no click-tracking links in this user's email.
    pub tracking_opt_out: bool,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Who made the last change.
    pub updated_by: String,
}

impl PreferenceRecord {
    /// The defaults of a user never seen before: everything on, no contact points.
    pub fn defaults(user_id: &str) -> Self {
        Self {
            user_id: user_id.to_owned(),
            email: None,
            phone: None,
            device_tokens: Vec::new(),
            locale: None,
            preferences: UserPreferences::default(),
            tracking_opt_out: false,
            updated_at: Utc::now(),
            updated_by: String::new(),
        }
    }
}

/// The stored preferences of `user_id`, if any.
pub async fn get(
    connection: &mut AsyncPgConnection,
    user_id: &str,
) -> Result<Option<PreferenceRecord>> {
    user_preferences::table
        .find(user_id)
        .select(Row::as_select())
        .first(connection)
        .await
        .optional()?
        .map(PreferenceRecord::try_from)
        .transpose()
        .map_err(Error::from)
}

/// Applies `change` to `user_id`'s preferences (the defaults if none are stored) under a row
/// lock, stores the result and audits it as `actor` with the `fields` it changes (their
/// names, never their values), in one transaction. `change` may refuse with a message, which
/// becomes `Error::Invalid` and writes nothing.
pub async fn update<F>(
    connection: &mut AsyncPgConnection,
    user_id: &str,
    actor: &str,
    fields: &[String],
    change: F,
) -> Result<PreferenceRecord>
where
    F: FnOnce(&mut PreferenceRecord) -> std::result::Result<(), String> + Send,
{
    connection
        .transaction::<_, Error, _>(async |connection| {
            let current = user_preferences::table
                .find(user_id)
                .select(Row::as_select())
                .for_update()
                .first(connection)
                .await
                .optional()?;
            let mut record = match current {
                Some(row) => PreferenceRecord::try_from(row)?,
                None => PreferenceRecord::defaults(user_id),
            };
            change(&mut record).map_err(Error::Invalid)?;
            record.user_id = user_id.to_owned();
            record.updated_at = Utc::now();
            record.updated_by = actor.to_owned();
            let row = Row::from(&record);
            diesel::insert_into(user_preferences::table)
                .values(&row)
                .on_conflict(user_preferences::user_id)
                .do_update()
                .set(&row)
                .execute(connection)
                .await?;
            let detail = serde_json::json!({ "fields": fields });
            audit(connection, actor, "preferences.update", user_id, &detail).await?;
            Ok(record)
        })
        .await
}

/// How the audit log names a user (`erasure` rewrites these entries when the user is erased).
pub(crate) fn audit_target(user_id: &str) -> String {
    format!("user:{user_id}")
}

async fn audit(
    connection: &mut AsyncPgConnection,
    actor: &str,
    action: &str,
    user_id: &str,
    detail: &serde_json::Value,
) -> Result<()> {
    diesel::insert_into(audit_log::table)
        .values((
            audit_log::actor.eq(actor),
            audit_log::action.eq(action),
            audit_log::target.eq(audit_target(user_id)),
            audit_log::detail.eq(detail),
        ))
        .execute(connection)
        .await?;
    Ok(())
}

/// The stored preferences of each of `user_ids` that has any. A user whose stored values no
/// longer parse gets their own error (`Error::Corrupt` through `?`), so the others are not
/// held up by it.
pub async fn get_many(
    connection: &mut AsyncPgConnection,
    user_ids: &[String],
) -> Result<HashMap<String, std::result::Result<PreferenceRecord, ValueError>>> {
    if user_ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(planned_per_run(
        user_preferences::table
            .filter(user_preferences::user_id.eq_any(user_ids))
            .select(Row::as_select()),
    )
    .load::<Row>(connection)
    .await?
    .into_iter()
    .map(|row| (row.user_id.clone(), PreferenceRecord::try_from(row)))
    .collect())
}
