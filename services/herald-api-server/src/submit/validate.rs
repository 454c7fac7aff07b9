//! The field checks of a submit: a `SubmitRequest` becomes a `ValidSubmit`, or the first
//! `INVALID_ARGUMENT` with the path of the field at fault and what it must be; then its users
//! are checked against the caller's namespaces (`PERMISSION_DENIED` with the recipient's path).

use herald_domain::{
    Category, Channel, EmailAddress, IdempotencyKey, PhoneNumber, Priority, TemplateKey,
};
use herald_proto::conversions::{self, channel_from_i32, priority_from_i32};
use herald_proto::submit::{self as pb, SubmitBatchRequest, SubmitRequest};
use herald_templates::Locale;

use crate::auth::Caller;
use crate::error::{Result, ServiceError};

const MAX_METADATA_ENTRIES: usize = 32;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 1024;
/// Most items in one `SubmitBatch`.
const MAX_BATCH_ITEMS: usize = 1000;

/// A submit request that passed every field check.
pub(super) struct ValidSubmit {
    pub(super) template_key: TemplateKey,
    pub(super) template_version: Option<i32>,
    pub(super) parameters: serde_json::Map<String, serde_json::Value>,
    pub(super) recipients: Vec<ValidRecipient>,
    pub(super) channels: Vec<Channel>,
    pub(super) priority: Priority,
    pub(super) category: Option<Category>,
    pub(super) idempotency_key: Option<IdempotencyKey>,
    pub(super) metadata: serde_json::Map<String, serde_json::Value>,
    pub(super) send_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub(super) struct ValidRecipient {
    pub(super) user_id: Option<String>,
    pub(super) email: Option<EmailAddress>,
    pub(super) phone: Option<PhoneNumber>,
    /// A configured chat destination's name.
    pub(super) chat_destination: Option<String>,
    /// Chooses the template's content (`ko-KR` → `ko` → default). The user's profile locale
    /// (PreferenceService) is the fallback to add here when the submit gives none.
    pub(super) locale: Option<Locale>,
}

impl ValidSubmit {
    /// Parses `request`, checking every field: the first fault is an `INVALID_ARGUMENT` naming
    /// its field path. `now` bounds `send_at`.
    pub(super) fn parse(
        request: SubmitRequest,
        max_recipients: usize,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Self> {
        let send_at = send_at(request.send_at.as_ref(), now)?;
        let (template_key, template_version) = template_ref(request.template)?;
        let parameters = parameters(request.parameters.unwrap_or_default())?;
        let channels = channels(&request.channels)?;
        let recipients = recipients(request.recipients, &channels, max_recipients)?;
        let priority = priority_from_i32(request.priority)
            .map_err(|error| ServiceError::invalid("priority", error))?;
        let category = (!request.category.is_empty())
            .then(|| Category::parse(&request.category))
            .transpose()
            .map_err(|error| ServiceError::invalid("category", error))?;
        let idempotency_key = (!request.idempotency_key.is_empty())
            .then(|| IdempotencyKey::parse(&request.idempotency_key))
            .transpose()
            .map_err(|error| ServiceError::invalid("idempotency_key", error))?;
        let metadata = metadata(request.metadata)?;
        Ok(Self {
            template_key,
            template_version,
            parameters,
            recipients,
            channels,
            priority,
            category,
            idempotency_key,
            metadata,
            send_at,
        })
    }

    /// `PERMISSION_DENIED` naming the first recipient whose user `caller` may not send to
    /// (outside its user namespaces). Recipients given by address only belong to no user.
    pub(super) fn check_users_of(&self, caller: &Caller) -> Result<()> {
        for (index, recipient) in self.recipients.iter().enumerate() {
            if let Some(user_id) = &recipient.user_id {
                caller.require_user(&format!("recipients[{index}].user_id"), user_id)?;
            }
        }
        Ok(())
    }
}

fn send_at(
    send_at: Option<&prost_types::Timestamp>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
    send_at
        .map(|send_at| {
            let instant = conversions::instant(send_at)
                .ok_or_else(|| ServiceError::invalid("send_at", "is out of range"))?;
            if instant > now + chrono::Duration::days(366) {
                return Err(ServiceError::invalid(
                    "send_at",
                    "must be at most a year ahead",
                ));
            }
            Ok(instant)
        })
        .transpose()
}

fn template_ref(template: Option<pb::TemplateRef>) -> Result<(TemplateKey, Option<i32>)> {
    let template = template.ok_or_else(|| ServiceError::invalid("template", "is required"))?;
    let key = TemplateKey::parse(&template.key)
        .map_err(|error| ServiceError::invalid("template.key", error))?;
    let version = template
        .version
        .map(|version| {
            i32::try_from(version)
                .ok()
                .filter(|version| *version >= 1)
                .ok_or_else(|| ServiceError::invalid("template.version", "must be at least 1"))
        })
        .transpose()?;
    Ok((key, version))
}

fn parameters(
    parameters: prost_types::Struct,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let parameters = conversions::struct_to_json(parameters);
    herald_templates::check_parameters("parameters", &parameters)
        .map_err(|error| ServiceError::InvalidArgument(error.to_string()))?;
    crate::fields::object_text("parameters", &parameters)?;
    Ok(parameters)
}

fn channels(numbers: &[i32]) -> Result<Vec<Channel>> {
    if numbers.is_empty() {
        return Err(ServiceError::invalid(
            "channels",
            "must name at least one channel",
        ));
    }
    let mut channels = Vec::new();
    for (index, number) in numbers.iter().enumerate() {
        let channel = channel_from_i32(*number)
            .map_err(|error| ServiceError::invalid(&format!("channels[{index}]"), error))?;
        if channels.contains(&channel) {
            return Err(ServiceError::invalid(
                &format!("channels[{index}]"),
                format!("{channel} is listed twice"),
            ));
        }
        channels.push(channel);
    }
    Ok(channels)
}

fn recipients(
    given: Vec<pb::Recipient>,
    channels: &[Channel],
    max_recipients: usize,
) -> Result<Vec<ValidRecipient>> {
    if given.is_empty() {
        return Err(ServiceError::invalid(
            "recipients",
            "must contain at least one recipient",
        ));
    }
    if given.len() > max_recipients {
        return Err(ServiceError::invalid(
            "recipients",
            format!("must contain at most {max_recipients} recipients"),
        ));
    }
    given
        .into_iter()
        .enumerate()
        .map(|(index, recipient)| {
            let valid = ValidRecipient::parse(index, recipient)?;
            valid.check_reachable(index, channels)?;
            Ok(valid)
        })
        .collect()
}

impl ValidRecipient {
    /// Checks each field of the recipient at `index` on its own.
    fn parse(index: usize, recipient: pb::Recipient) -> Result<Self> {
        let field = |name: &str| format!("recipients[{index}].{name}");
        let user_id = (!recipient.user_id.is_empty())
            .then(|| crate::fields::user_id(&field("user_id"), &recipient.user_id))
            .transpose()?;
        let email = (!recipient.email.is_empty())
            .then(|| EmailAddress::parse(&recipient.email))
            .transpose()
            .map_err(|error| ServiceError::invalid(&field("email"), error))?;
        let phone = (!recipient.phone.is_empty())
            .then(|| PhoneNumber::parse(&recipient.phone))
            .transpose()
            .map_err(|error| ServiceError::invalid(&field("phone"), error))?;
        let chat_destination = (!recipient.chat_destination.is_empty())
            .then(|| {
                is_destination_name(&recipient.chat_destination)
                    .then_some(recipient.chat_destination)
                    .ok_or_else(|| {
                        ServiceError::invalid(
                            &field("chat_destination"),
                            "must be 1 to 64 of a-z, 0-9, `-` and `_` (a destination configured in the chat worker)",
                        )
                    })
            })
            .transpose()?;
        let locale = (!recipient.locale.is_empty())
            .then(|| Locale::parse(&recipient.locale))
            .transpose()
            .map_err(|error| ServiceError::invalid(&field("locale"), error))?;
        Ok(Self {
            user_id,
            email,
            phone,
            chat_destination,
            locale,
        })
    }

    /// Checks that the recipient at `index` can be reached on every one of `channels`.
    fn check_reachable(&self, index: usize, channels: &[Channel]) -> Result<()> {
        for channel in channels {
            let (field, given, requirement) = match channel {
                Channel::Email => (
                    "email",
                    self.email.is_some() || self.user_id.is_some(),
                    "is required for the email channel when the recipient has no user_id",
                ),
                Channel::Sms => (
                    "phone",
                    self.phone.is_some() || self.user_id.is_some(),
                    "is required for the sms channel when the recipient has no user_id",
                ),
                Channel::Push => (
                    "user_id",
                    self.user_id.is_some(),
                    "is required for the push channel (device tokens come from the user's preferences)",
                ),
                Channel::InApp => (
                    "user_id",
                    self.user_id.is_some(),
                    "is required for the in_app channel (the inbox is the user's)",
                ),
                Channel::Chat => (
                    "chat_destination",
                    self.chat_destination.is_some(),
                    "is required for the chat channel",
                ),
            };
            if !given {
                return Err(ServiceError::invalid(
                    &format!("recipients[{index}].{field}"),
                    requirement,
                ));
            }
        }
        Ok(())
    }
}

fn metadata(
    given: std::collections::HashMap<String, String>,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    if given.len() > MAX_METADATA_ENTRIES {
        return Err(ServiceError::invalid(
            "metadata",
            format!("must have at most {MAX_METADATA_ENTRIES} entries"),
        ));
    }
    let mut metadata = serde_json::Map::new();
    for (key, value) in given {
        if key.is_empty() || key.len() > MAX_METADATA_KEY {
            return Err(ServiceError::invalid(
                "metadata",
                format!("keys must be 1 to {MAX_METADATA_KEY} bytes"),
            ));
        }
        if value.len() > MAX_METADATA_VALUE {
            return Err(ServiceError::invalid(
                &format!("metadata[{key}]"),
                format!("must be at most {MAX_METADATA_VALUE} bytes"),
            ));
        }
        crate::fields::no_controls("metadata", &key)?;
        crate::fields::no_controls(&format!("metadata[{key}]"), &value)?;
        metadata.insert(key, serde_json::Value::String(value));
    }
    Ok(metadata)
}

/// A chat destination name: 1 to 64 of `a-z`, `0-9`, `-`, `_`.
fn is_destination_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"-_".contains(&byte))
}

/// Refuses a `SubmitBatch` over the per-call limits, naming the limit.
pub(super) fn check_batch_limits(
    request: &SubmitBatchRequest,
    max_deliveries: usize,
) -> Result<()> {
    if request.items.is_empty() || request.items.len() > MAX_BATCH_ITEMS {
        return Err(ServiceError::invalid(
            "items",
            format!(
                "must contain 1 to {MAX_BATCH_ITEMS} notifications (got {})",
                request.items.len()
            ),
        ));
    }
    let deliveries: usize = request
        .items
        .iter()
        .map(|item| item.recipients.len().saturating_mul(item.channels.len()))
        .fold(0, usize::saturating_add);
    if deliveries > max_deliveries {
        return Err(ServiceError::invalid(
            "items",
            format!(
                "would create {deliveries} deliveries (recipients times channels, summed over the items); one call may create at most {max_deliveries} (submit.batch_call_max_deliveries): split it"
            ),
        ));
    }
    Ok(())
}

/// The entry of the fuzz target `submit_request` (and of the test replaying its corpus):
/// `data` as an encoded `SubmitBatchRequest`, checked as `SubmitBatch` checks it (the call's
/// limits, then every item).
///
/// # Panics
/// When an accepted item holds something PostgreSQL would refuse (a NUL in its parameters
/// or metadata), or its parameters break the caps (what the fuzzer looks for).
pub(crate) fn check_fuzz_input(data: &[u8]) {
    let Ok(request) = <SubmitBatchRequest as prost::Message>::decode(data) else {
        return;
    };
    if check_batch_limits(&request, 100_000).is_err() {
        return;
    }
    let now = chrono::DateTime::<chrono::Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default();
    for item in request.items {
        let Ok(valid) = ValidSubmit::parse(item, 1000, now) else {
            continue;
        };
        for stored in [&valid.parameters, &valid.metadata] {
            let json = serde_json::to_string(stored).unwrap_or_default();
            assert!(
                !json.contains("\\u0000"),
                "an accepted item holds a NUL: {json}"
            );
        }
        assert!(
            herald_templates::check_parameters("parameters", &valid.parameters).is_ok(),
            "accepted parameters break the caps"
        );
    }
}
