//! `herald.preference.v1.PreferenceService`: product backends acting for their users. Reading
//! needs `preferences.read` and shows contact points masked unless the caller also holds
//! `contacts.read`; changing needs `preferences.write`, and `contacts.write` for any contact
//! point; erasing a user (`DeletePreferences`: everything Herald stores about them, see
//! `herald_db::erasure`) needs `contacts.write`. A caller bound to user namespaces reaches only
//! the users inside them. Every change is audited with who made it and which fields it changed;
//! an erase with a keyed hash of the user id and counts.

use std::collections::BTreeMap;

use herald_db::preferences::{self, PreferenceRecord};
use herald_db::{contacts, erasure};
use herald_domain::{
    Category, Channel, DeviceToken, EmailAddress, Permission, Platform, QuietHours, TimeZone,
    ValueError,
};
use herald_inbox::{InboxPublisher, Signal};
use herald_proto::preference::{
    self as pb, DeletePreferencesRequest, DeletePreferencesResponse, GetPreferencesRequest,
    UpdatePreferencesRequest, preference_service_server::PreferenceService,
};
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::auth::{Caller, caller, parts};
use crate::error::{Result, ServiceError};

const MAX_DEVICE_TOKENS: usize = 20;
const MAX_TOKEN: usize = 4096;
const MAX_CATEGORIES: usize = 100;

/// Every path `update_mask` may name.
const PATHS: [&str; 10] = [
    "contacts.email",
    "contacts.phone",
    "contacts.device_tokens",
    "locale",
    "time_zone",
    "channels",
    "categories",
    "quiet_hours",
    "global_opt_out",
    "tracking_opt_out",
];

pub(crate) struct PreferenceApi {
    state: AppState,
    /// Tells an erased user's open inbox streams to list again.
    inbox: InboxPublisher,
}

/// A channel map of an update (`{"email": true, …}`), validated.
fn channel_map(
    field: &str,
    channels: &std::collections::HashMap<String, bool>,
) -> Result<BTreeMap<Channel, bool>> {
    channels
        .iter()
        .map(|(name, enabled)| {
            let channel: Channel = name
                .parse()
                .map_err(|error| ServiceError::invalid(&format!("{field}[{name}]"), error))?;
            Ok((channel, *enabled))
        })
        .collect()
}

fn is_e164(phone: &str) -> bool {
    let digits = phone.strip_prefix('+').unwrap_or("");
    phone.starts_with('+')
        && (8..=15).contains(&digits.len())
        && digits.chars().all(|digit| digit.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Applies the fields of `update` named by `paths` to `record`, validating each.
fn apply(record: &mut PreferenceRecord, update: &pb::Preferences, paths: &[String]) -> Result<()> {
    let contacts = update.contacts.clone().unwrap_or_default();
    for path in paths {
        match path.as_str() {
            "contacts.email" => {
                record.email = if contacts.email.is_empty() {
                    None
                } else {
                    EmailAddress::parse(&contacts.email).map_err(|error| {
                        ServiceError::invalid("preferences.contacts.email", error)
                    })?;
                    Some(contacts.email.as_str().into())
                };
            }
            "contacts.phone" => {
                record.phone = if contacts.phone.is_empty() {
                    None
                } else if is_e164(&contacts.phone) {
                    Some(contacts.phone.as_str().into())
                } else {
                    return Err(ServiceError::invalid(
                        "preferences.contacts.phone",
                        "must be an E.164 number such as +821012345678",
                    ));
                };
            }
            "contacts.device_tokens" => {
                record.device_tokens = device_tokens(&contacts.device_tokens)?;
            }
            "locale" => {
                record.locale = if update.locale.is_empty() {
                    None
                } else {
                    Some(
                        herald_templates::Locale::parse(&update.locale)
                            .map_err(|error| ServiceError::invalid("preferences.locale", error))?
                            .as_str()
                            .to_owned(),
                    )
                };
            }
            "time_zone" => {
                record.preferences.time_zone =
                    if update.time_zone.is_empty() {
                        None
                    } else {
                        Some(TimeZone::parse(&update.time_zone).map_err(|error| {
                            ServiceError::invalid("preferences.time_zone", error)
                        })?)
                    };
            }
            "channels" => {
                record.preferences.channels =
                    channel_map("preferences.channels", &update.channels)?;
            }
            "categories" => record.preferences.categories = categories(&update.categories)?,
            "quiet_hours" => {
                record.preferences.quiet_hours =
                    update.quiet_hours.as_ref().map(quiet_hours).transpose()?;
            }
            "global_opt_out" => record.preferences.global_opt_out = update.global_opt_out,
            "tracking_opt_out" => record.tracking_opt_out = update.tracking_opt_out,
            other => {
                return Err(ServiceError::invalid(
                    "update_mask",
                    format!("unknown path `{other}`; use one of {}", PATHS.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

/// The paths of an update's mask: every path when it names none; otherwise at most one of
/// each of `PATHS`, so a mask is bounded by the number of paths there are. A path named twice
/// is refused rather than silently merged, like a channel listed twice in a submit: it is a
/// caller's mistake worth seeing.
fn mask_paths(mask: Option<prost_types::FieldMask>) -> Result<Vec<String>> {
    let paths = match mask {
        Some(mask) if !mask.paths.is_empty() => mask.paths,
        _ => return Ok(PATHS.iter().map(|path| (*path).to_owned()).collect()),
    };
    if paths.len() > PATHS.len() {
        return Err(ServiceError::invalid(
            "update_mask.paths",
            format!(
                "must name at most {} paths, each once (got {})",
                PATHS.len(),
                paths.len()
            ),
        ));
    }
    for (index, path) in paths.iter().enumerate() {
        let field = format!("update_mask.paths[{index}]");
        if !PATHS.contains(&path.as_str()) {
            let shown: String = path.chars().take(64).collect();
            return Err(ServiceError::invalid(
                &field,
                format!(
                    "unknown path `{}`; use one of {}",
                    shown.escape_default(),
                    PATHS.join(", ")
                ),
            ));
        }
        if let Some(first) = paths[..index].iter().position(|other| other == path) {
            return Err(ServiceError::invalid(
                &field,
                format!("`{path}` is also update_mask.paths[{first}]; name each path once"),
            ));
        }
    }
    Ok(paths)
}

/// The device tokens of an update, validated.
fn device_tokens(devices: &[pb::DeviceToken]) -> Result<Vec<DeviceToken>> {
    if devices.len() > MAX_DEVICE_TOKENS {
        return Err(ServiceError::invalid(
            "preferences.contacts.device_tokens",
            format!("must have at most {MAX_DEVICE_TOKENS} tokens"),
        ));
    }
    let mut tokens = Vec::new();
    for (index, device) in devices.iter().enumerate() {
        let field = format!("preferences.contacts.device_tokens[{index}]");
        if device.token.is_empty()
            || device.token.len() > MAX_TOKEN
            || !device
                .token
                .chars()
                .all(|character| character.is_ascii_graphic())
        {
            return Err(ServiceError::invalid(
                &format!("{field}.token"),
                format!("must be 1 to {MAX_TOKEN} printable ASCII characters"),
            ));
        }
        let platform = pb::Platform::try_from(device.platform)
            .map_err(|_| ValueError("must name a platform".into()))
            .and_then(Platform::try_from)
            .map_err(|error| ServiceError::invalid(&format!("{field}.platform"), error))?;
        tokens.push(DeviceToken {
            token: device.token.clone(),
            platform,
        });
    }
    Ok(tokens)
}

/// The per-category channel maps of an update, validated.
fn categories(
    entries: &[pb::CategoryPreference],
) -> Result<BTreeMap<String, BTreeMap<Channel, bool>>> {
    if entries.len() > MAX_CATEGORIES {
        return Err(ServiceError::invalid(
            "preferences.categories",
            format!("must have at most {MAX_CATEGORIES} entries"),
        ));
    }
    let mut categories = BTreeMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let field = format!("preferences.categories[{index}]");
        let category = Category::parse(&entry.category)
            .map_err(|error| ServiceError::invalid(&format!("{field}.category"), error))?;
        categories.insert(
            category.to_string(),
            channel_map(&format!("{field}.channels"), &entry.channels)?,
        );
    }
    Ok(categories)
}

/// The quiet hours of an update, validated.
fn quiet_hours(quiet: &pb::QuietHours) -> Result<QuietHours> {
    let start = herald_domain::parse_time_of_day(&quiet.start)
        .map_err(|error| ServiceError::invalid("preferences.quiet_hours.start", error))?;
    let end = herald_domain::parse_time_of_day(&quiet.end)
        .map_err(|error| ServiceError::invalid("preferences.quiet_hours.end", error))?;
    let mut days = chrono::WeekdaySet::EMPTY;
    for (index, day) in quiet.days.iter().enumerate() {
        days.insert(herald_domain::parse_weekday(day).map_err(|error| {
            ServiceError::invalid(&format!("preferences.quiet_hours.days[{index}]"), error)
        })?);
    }
    QuietHours::new(start, end, days)
        .map_err(|error| ServiceError::invalid("preferences.quiet_hours", error))
}

/// The user's stored preferences as `caller` may see them: contact points in clear with
/// `contacts.read`, masked without it.
async fn message_for(
    caller: &Caller,
    connection: &mut herald_db::Connection,
    record: &PreferenceRecord,
) -> Result<pb::Preferences, ServiceError> {
    let mut preferences = message_with_status(connection, record).await?;
    if !caller.has(Permission::ContactsRead)
        && let Some(contacts) = preferences.contacts.as_mut()
    {
        contacts.email = mask(
            &contacts.email,
            contacts.email.find('@').unwrap_or(0).min(1),
        );
        contacts.phone = mask(&contacts.phone, 3);
        for device in &mut contacts.device_tokens {
            device.token = mask(&device.token, 4);
        }
    }
    Ok(preferences)
}

/// `value` with everything but its first `keep` characters (and an email's domain, or a phone
/// number's last two digits) replaced by `***`: enough to recognise, not to use.
fn mask(value: &str, keep: usize) -> String {
    if value.is_empty() {
        return String::new();
    }
    let kept: String = value.chars().take(keep).collect();
    let tail: String = match value.rfind('@') {
        Some(at) => value[at..].to_owned(),
        None if value.starts_with('+') => {
            let last: Vec<char> = value.chars().rev().take(2).collect();
            last.into_iter().rev().collect()
        }
        None => String::new(),
    };
    format!("{kept}***{tail}")
}

/// The user's stored preferences as a message, with each contact point's disabled reason.
async fn message_with_status(
    connection: &mut herald_db::Connection,
    record: &PreferenceRecord,
) -> Result<pb::Preferences, ServiceError> {
    let mut preferences = message(record);
    let Some(contacts) = preferences.contacts.as_mut() else {
        return Ok(preferences);
    };
    let mut asked: Vec<(Channel, &str)> = contacts
        .device_tokens
        .iter()
        .map(|device| (Channel::Push, device.token.as_str()))
        .collect();
    for (channel, address) in [
        (Channel::Email, contacts.email.as_str()),
        (Channel::Sms, contacts.phone.as_str()),
    ] {
        if !address.is_empty() {
            asked.push((channel, address));
        }
    }
    let disabled: std::collections::HashMap<(Channel, String), String> =
        contacts::disabled_among(connection, &asked)
            .await?
            .into_iter()
            .map(|(channel, address, why)| ((channel, address), why.reason))
            .collect();
    let reason = |channel: Channel, address: &str| {
        disabled
            .get(&(channel, address.to_owned()))
            .cloned()
            .unwrap_or_default()
    };
    contacts.email_disabled_reason = reason(Channel::Email, &contacts.email);
    contacts.phone_disabled_reason = reason(Channel::Sms, &contacts.phone);
    for device in &mut contacts.device_tokens {
        device.disabled_reason = reason(Channel::Push, &device.token);
    }
    Ok(preferences)
}

fn message(record: &PreferenceRecord) -> pb::Preferences {
    let preferences = &record.preferences;
    pb::Preferences {
        user_id: record.user_id.clone(),
        contacts: Some(pb::ContactPoints {
            email: exposed(record.email.as_ref()),
            phone: exposed(record.phone.as_ref()),
            device_tokens: record
                .device_tokens
                .iter()
                .map(|device| pb::DeviceToken {
                    token: device.token.clone(),
                    platform: pb::Platform::from(device.platform).into(),
                    disabled_reason: String::new(),
                })
                .collect(),
            email_disabled_reason: String::new(),
            phone_disabled_reason: String::new(),
        }),
        locale: record.locale.clone().unwrap_or_default(),
        time_zone: preferences
            .time_zone
            .map(|zone| zone.name().to_owned())
            .unwrap_or_default(),
        channels: channels_message(&preferences.channels),
        categories: preferences
            .categories
            .iter()
            .map(|(category, channels)| pb::CategoryPreference {
                category: category.clone(),
                channels: channels_message(channels),
            })
            .collect(),
        quiet_hours: preferences.quiet_hours.map(|quiet| pb::QuietHours {
            start: quiet.start_text(),
            end: quiet.end_text(),
            days: quiet.day_names(),
        }),
        global_opt_out: preferences.global_opt_out,
        tracking_opt_out: record.tracking_opt_out,
        updated_at: Some(herald_proto::conversions::timestamp(record.updated_at)),
    }
}

/// A contact point as the message shows it (empty when there is none).
fn exposed(contact: Option<&herald_db::personal::PersonalText>) -> String {
    contact
        .map(|contact| contact.expose().to_owned())
        .unwrap_or_default()
}

/// A channel map as the message's map.
fn channels_message(channels: &BTreeMap<Channel, bool>) -> std::collections::HashMap<String, bool> {
    channels
        .iter()
        .map(|(channel, enabled)| (channel.as_str().to_owned(), *enabled))
        .collect()
}

impl PreferenceApi {
    pub(crate) fn new(state: AppState, inbox: InboxPublisher) -> Self {
        Self { state, inbox }
    }
}

#[tonic::async_trait]
impl PreferenceService for PreferenceApi {
    async fn get_preferences(
        &self,
        request: Request<GetPreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        let (caller, request) = parts(request)?;
        let user_id = caller.user_id("user_id", &request.user_id)?;
        let mut connection = herald_db::connection(&self.state.pool)
            .await
            .map_err(ServiceError::from)?;
        let record = preferences::get(&mut connection, &user_id)
            .await
            .map_err(ServiceError::from)?
            .unwrap_or_else(|| PreferenceRecord::defaults(&user_id));
        Ok(Response::new(
            message_for(&caller, &mut connection, &record).await?,
        ))
    }

    async fn update_preferences(
        &self,
        request: Request<UpdatePreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let update = request
            .preferences
            .ok_or_else(|| ServiceError::invalid("preferences", "is required"))?;
        let user_id = caller.user_id("preferences.user_id", &update.user_id)?;
        let paths = mask_paths(request.update_mask)?;
        if let Some(contact) = paths.iter().find(|path| path.starts_with("contacts.")) {
            caller.require(
                Permission::ContactsWrite,
                &format!("UpdatePreferences of {contact}"),
            )?;
        }
        // Validate before taking any lock or writing anything.
        apply(&mut PreferenceRecord::defaults(&user_id), &update, &paths)?;
        let mut connection = herald_db::connection(&self.state.pool)
            .await
            .map_err(ServiceError::from)?;
        let record = preferences::update(
            &mut connection,
            &user_id,
            caller.identity.as_ref(),
            &paths,
            |record| apply(record, &update, &paths).map_err(|error| error.to_string()),
        )
        .await
        .map_err(ServiceError::from)?;
        tracing::info!(caller = %caller.identity, fields = paths.len(), "Preferences updated.");
        Ok(Response::new(
            message_for(&caller, &mut connection, &record).await?,
        ))
    }

    async fn delete_preferences(
        &self,
        request: Request<DeletePreferencesRequest>,
    ) -> Result<Response<DeletePreferencesResponse>, Status> {
        let caller = caller(&request)?;
        let user_id = caller.user_id("user_id", &request.get_ref().user_id)?;
        let mut connection = herald_db::connection(&self.state.pool)
            .await
            .map_err(ServiceError::from)?;
        let erased = erasure::erase_user(
            &mut connection,
            &user_id,
            caller.identity.as_ref(),
            self.state.clock.now(),
        )
        .await
        .map_err(ServiceError::from)?;
        if !erased.inbox_items.is_empty()
            && let Err(error) = self.inbox.publish(&user_id, &Signal::Resync).await
        {
            tracing::warn!(
                error = %error,
                "Could not tell the erased user's open inbox streams to resync; their clients show the deleted items until they list again."
            );
        }
        tracing::info!(
            caller = %caller.identity,
            deliveries = erased.deliveries,
            cancelled = erased.cancelled,
            notifications = erased.notifications,
            inbox_items = erased.inbox_items.len(),
            "User erased."
        );
        Ok(Response::new(erased_message(&erased)))
    }
}

/// What an erase erased, as the response counts it.
fn erased_message(erased: &erasure::Erased) -> DeletePreferencesResponse {
    let count = |rows: i64| u32::try_from(rows).unwrap_or(u32::MAX);
    DeletePreferencesResponse {
        deleted: erased.preferences,
        inbox_items: u32::try_from(erased.inbox_items.len()).unwrap_or(u32::MAX),
        deliveries: count(erased.deliveries),
        cancelled_deliveries: count(erased.cancelled),
        notifications: count(erased.notifications),
        events: count(erased.events),
        disabled_contacts: count(erased.disabled_contacts),
    }
}

#[cfg(test)]
mod tests {
    use super::{mask, mask_paths};
    use crate::error::ServiceError;

    fn check_mask(paths: &[&str], expected: Result<&[&str], &str>) {
        let mask = prost_types::FieldMask {
            paths: paths.iter().map(|path| (*path).to_owned()).collect(),
        };
        match (mask_paths(Some(mask)), expected) {
            (Ok(paths), Ok(expected)) => assert_eq!(paths, expected),
            (Err(ServiceError::InvalidArgument(message)), Err(expected)) => {
                assert_eq!(message, expected);
            }
            (other, expected) => panic!("expected {expected:?}, got {other:?}"),
        }
    }

    #[test]
    fn update_mask_paths_are_known_named_once_and_bounded() {
        check_mask(&["locale", "time_zone"], Ok(&["locale", "time_zone"]));
        check_mask(
            &["locale", "channels", "locale"],
            Err("update_mask.paths[2]: `locale` is also update_mask.paths[0]; name each path once"),
        );
        check_mask(
            &["colour"],
            Err(
                "update_mask.paths[0]: unknown path `colour`; use one of contacts.email, contacts.phone, contacts.device_tokens, locale, time_zone, channels, categories, quiet_hours, global_opt_out, tracking_opt_out",
            ),
        );
        check_mask(
            &["locale"; 11],
            Err("update_mask.paths: must name at most 10 paths, each once (got 11)"),
        );
        assert_eq!(mask_paths(None).map(|paths| paths.len()).ok(), Some(10));
    }

    #[test]
    fn a_masked_contact_point_is_recognisable_not_usable() {
        assert_eq!(mask("ada@example.com", 1), "a***@example.com");
        assert_eq!(mask("+821012345678", 3), "+82***78");
        assert_eq!(mask("apns-token-1", 4), "apns***");
        assert_eq!(mask("+한국어", 3), "+한국***국어");
        assert_eq!(mask("", 3), "");
    }
}
