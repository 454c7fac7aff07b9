//! `herald.submit.v1.SubmitService`.

use std::collections::BTreeSet;

use herald_db::notifications::{
    self, Disposition, Inserted, NewDelivery, NewNotification, NotificationRecord,
};
use herald_domain::{
    Category, Channel, DeliveryId, DeliveryState, EmailAddress, IdempotencyKey, NotificationId,
    PhoneNumber, Priority, Role, Subject, TemplateKey,
};
use herald_proto::conversions::{self, channel_from_i32, priority_from_i32};
use herald_proto::submit::{
    self as pb, GetNotificationRequest, GetNotificationResponse, SubmitRequest, SubmitResponse,
    submit_service_server::SubmitService,
};
use herald_templates::{Locale, VersionContent};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::AppState;
use crate::auth::{Caller, caller};
use crate::error::{Result, ServiceError};

const MAX_METADATA_ENTRIES: usize = 32;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 1024;
const MAX_PARAMETERS_BYTES: usize = 64 * 1024;

pub(crate) struct SubmitApi {
    state: AppState,
}

impl SubmitApi {
    pub(crate) fn new(state: AppState) -> Self {
        Self { state }
    }
}

/// A submit request that passed every field check.
struct ValidSubmit {
    template_key: TemplateKey,
    template_version: Option<i32>,
    parameters: serde_json::Map<String, serde_json::Value>,
    recipients: Vec<ValidRecipient>,
    channels: Vec<Channel>,
    priority: Priority,
    category: Option<Category>,
    idempotency_key: Option<IdempotencyKey>,
    metadata: serde_json::Map<String, serde_json::Value>,
    send_at: Option<chrono::DateTime<chrono::Utc>>,
}

struct ValidRecipient {
    user_id: Option<String>,
    email: Option<EmailAddress>,
    phone: Option<PhoneNumber>,
    /// A configured chat destination's name.
    chat_destination: Option<String>,
    /// Chooses the template's content (`ko-KR` → `ko` → default). The user's profile locale
    /// (PreferenceService) is the fallback to add here when the submit gives none.
    locale: Option<Locale>,
}

fn validate(
    request: SubmitRequest,
    max_recipients: usize,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<ValidSubmit> {
    let send_at = request
        .send_at
        .as_ref()
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
        .transpose()?;
    let template = request
        .template
        .ok_or_else(|| ServiceError::invalid("template", "is required"))?;
    let template_key = TemplateKey::parse(&template.key)
        .map_err(|error| ServiceError::invalid("template.key", error))?;
    let template_version = template
        .version
        .map(|version| {
            i32::try_from(version)
                .ok()
                .filter(|version| *version >= 1)
                .ok_or_else(|| ServiceError::invalid("template.version", "must be at least 1"))
        })
        .transpose()?;

    let parameters = conversions::struct_to_json(request.parameters.unwrap_or_default());
    let parameters_size = serde_json::to_vec(&parameters).map_or(usize::MAX, |bytes| bytes.len());
    if parameters_size > MAX_PARAMETERS_BYTES {
        return Err(ServiceError::invalid(
            "parameters",
            format!("must encode to at most {MAX_PARAMETERS_BYTES} bytes of JSON"),
        ));
    }

    if request.channels.is_empty() {
        return Err(ServiceError::invalid(
            "channels",
            "must name at least one channel",
        ));
    }
    let mut channels = Vec::new();
    for (index, number) in request.channels.iter().enumerate() {
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

    if request.recipients.is_empty() {
        return Err(ServiceError::invalid(
            "recipients",
            "must contain at least one recipient",
        ));
    }
    if request.recipients.len() > max_recipients {
        return Err(ServiceError::invalid(
            "recipients",
            format!("must contain at most {max_recipients} recipients"),
        ));
    }
    let mut recipients = Vec::with_capacity(request.recipients.len());
    for (index, recipient) in request.recipients.into_iter().enumerate() {
        let user_id = (!recipient.user_id.is_empty())
            .then(|| {
                crate::fields::user_id(&format!("recipients[{index}].user_id"), &recipient.user_id)
            })
            .transpose()?;
        let email = if recipient.email.is_empty() {
            None
        } else {
            Some(EmailAddress::parse(&recipient.email).map_err(|error| {
                ServiceError::invalid(&format!("recipients[{index}].email"), error)
            })?)
        };
        let phone = (!recipient.phone.is_empty())
            .then(|| PhoneNumber::parse(&recipient.phone))
            .transpose()
            .map_err(|error| ServiceError::invalid(&format!("recipients[{index}].phone"), error))?;
        let chat_destination = (!recipient.chat_destination.is_empty())
            .then(|| {
                is_destination_name(&recipient.chat_destination)
                    .then_some(recipient.chat_destination)
                    .ok_or_else(|| {
                        ServiceError::invalid(
                            &format!("recipients[{index}].chat_destination"),
                            "must be 1 to 64 of a-z, 0-9, `-` and `_` (a destination configured in the chat worker)",
                        )
                    })
            })
            .transpose()?;
        for channel in &channels {
            let (field, given, requirement) = match channel {
                Channel::Email => (
                    "email",
                    email.is_some() || user_id.is_some(),
                    "is required for the email channel when the recipient has no user_id",
                ),
                Channel::Sms => (
                    "phone",
                    phone.is_some() || user_id.is_some(),
                    "is required for the sms channel when the recipient has no user_id",
                ),
                Channel::Push => (
                    "user_id",
                    user_id.is_some(),
                    "is required for the push channel (device tokens come from the user's preferences)",
                ),
                Channel::InApp => (
                    "user_id",
                    user_id.is_some(),
                    "is required for the in_app channel (the inbox is the user's)",
                ),
                Channel::Chat => (
                    "chat_destination",
                    chat_destination.is_some(),
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
        let locale = (!recipient.locale.is_empty())
            .then(|| Locale::parse(&recipient.locale))
            .transpose()
            .map_err(|error| {
                ServiceError::invalid(&format!("recipients[{index}].locale"), error)
            })?;
        recipients.push(ValidRecipient {
            user_id,
            email,
            phone,
            chat_destination,
            locale,
        });
    }

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

    if request.metadata.len() > MAX_METADATA_ENTRIES {
        return Err(ServiceError::invalid(
            "metadata",
            format!("must have at most {MAX_METADATA_ENTRIES} entries"),
        ));
    }
    let mut metadata = serde_json::Map::new();
    for (key, value) in request.metadata {
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
        metadata.insert(key, serde_json::Value::String(value));
    }

    Ok(ValidSubmit {
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

/// A chat destination name: 1 to 64 of `a-z`, `0-9`, `-`, `_`.
fn is_destination_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"-_".contains(&byte))
}

/// SHA-256 of the request's canonical JSON form (object keys sorted), so that a retried
/// submit with the same content matches whatever order the client encoded maps in.
fn request_hash(submit: &ValidSubmit) -> Vec<u8> {
    let mut canonical = serde_json::json!({
        "template": submit.template_key.as_ref(),
        "version": submit.template_version,
        "parameters": submit.parameters,
        "recipients": submit.recipients.iter().map(|recipient| {
            let mut canonical = serde_json::json!({
                "user_id": recipient.user_id,
                "email": recipient.email.as_ref().map(AsRef::as_ref),
            });
            // Only when given, so hashes of requests from before these fields are unchanged.
            if let Some(locale) = &recipient.locale {
                canonical["locale"] = locale.as_str().into();
            }
            if let Some(phone) = &recipient.phone {
                canonical["phone"] = phone.as_ref().into();
            }
            if let Some(destination) = &recipient.chat_destination {
                canonical["chat_destination"] = destination.as_str().into();
            }
            canonical
        }).collect::<Vec<_>>(),
        "channels": submit.channels.iter().map(|channel| channel.as_str()).collect::<Vec<_>>(),
        "priority": submit.priority.as_str(),
        "category": submit.category.as_ref().map(AsRef::as_ref),
        "metadata": submit.metadata,
    });
    // Only when given, so hashes of requests from before `send_at` are unchanged.
    if let Some(send_at) = submit.send_at {
        canonical["send_at"] = send_at.to_rfc3339().into();
    }
    Sha256::digest(canonical.to_string().as_bytes()).to_vec()
}

/// The W3C trace context carried to the relay and the workers: the current span's (the
/// Submit server span) when traces are exported, else the caller's own headers.
fn trace_context<T>(request: &Request<T>) -> serde_json::Value {
    let current = herald_telemetry::current_context_map();
    if !current.is_empty() {
        return serde_json::Value::Object(
            current
                .into_iter()
                .map(|(key, value)| (key, serde_json::Value::String(value)))
                .collect(),
        );
    }
    let mut context = serde_json::Map::new();
    for header in ["traceparent", "tracestate"] {
        if let Some(value) = request
            .metadata()
            .get(header)
            .and_then(|value| value.to_str().ok())
            .filter(|value| value.len() <= 512)
        {
            context.insert(header.into(), value.into());
        }
    }
    serde_json::Value::Object(context)
}

impl SubmitApi {
    async fn submit(
        &self,
        caller: &Caller,
        request: SubmitRequest,
        trace_context: serde_json::Value,
    ) -> Result<SubmitResponse> {
        let now = self.state.clock.now();
        let submit = validate(request, self.state.settings.submit.max_recipients, now)?;
        let hash = request_hash(&submit);
        let mut connection = herald_db::connection(&self.state.pool).await?;

        if let Some(key) = &submit.idempotency_key {
            if let Some(response) = self.cached_replay(caller, key, &hash).await? {
                return Ok(response);
            }
            if let Some(response) = replay(&mut connection, caller, key, &hash).await? {
                self.cache(caller, key, &response, &hash).await;
                return Ok(response);
            }
        }

        let template = herald_db::templates::find(
            &mut connection,
            submit.template_key.as_ref(),
            submit.template_version,
        )
        .await?
        .ok_or_else(|| match submit.template_version {
            Some(version) => ServiceError::NotFound(format!(
                "template.version: template `{}` has no version {version}",
                submit.template_key
            )),
            None => ServiceError::NotFound(format!(
                "template.key: no template named `{}`",
                submit.template_key
            )),
        })?;
        let content = VersionContent::from_stored(template.content.clone())
            .map_err(|error| herald_db::Error::Corrupt(format!("template content: {error}")))?;
        // Every locale of a version has the same channel parts, so the default locale decides.
        let template_channels = content.channels();
        for (index, channel) in submit.channels.iter().enumerate() {
            if !template_channels.contains(channel) {
                return Err(ServiceError::invalid(
                    &format!("channels[{index}]"),
                    format!("template `{}` has no {channel} part", submit.template_key),
                ));
            }
        }
        let missing: BTreeSet<&str> = template
            .parameters
            .iter()
            .map(String::as_str)
            .filter(|name| !submit.parameters.contains_key(*name))
            .collect();
        if !missing.is_empty() {
            return Err(ServiceError::invalid(
                "parameters",
                format!(
                    "template `{}` needs {}",
                    submit.template_key,
                    missing
                        .into_iter()
                        .map(|name| format!("`{name}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }

        let category = submit
            .category
            .as_ref()
            .map_or(template.category.clone(), ToString::to_string);
        let overrides = self
            .state
            .settings
            .policy
            .overrides(&category, submit.priority);
        let user_ids: Vec<String> = submit
            .recipients
            .iter()
            .filter_map(|recipient| recipient.user_id.clone())
            .collect();
        let stored_preferences =
            herald_db::preferences::get_many(&mut connection, &user_ids).await?;
        let notification_id = NotificationId::generate();
        let mut deliveries = Vec::new();
        for (index, recipient) in submit.recipients.iter().enumerate() {
            let variant = assign_variant(&content, &submit.template_key, recipient);
            for channel in &submit.channels {
                deliveries.push(NewDelivery {
                    id: DeliveryId::generate(),
                    channel: *channel,
                    recipient_index: i32::try_from(index).unwrap_or(i32::MAX),
                    user_id: recipient.user_id.clone(),
                    address: match channel {
                        Channel::Email => recipient
                            .email
                            .as_ref()
                            .map(|email| email.as_ref().to_owned()),
                        Channel::Sms => recipient
                            .phone
                            .as_ref()
                            .map(|phone| phone.as_ref().to_owned()),
                        Channel::Chat => recipient.chat_destination.clone(),
                        Channel::Push | Channel::InApp => None,
                    },
                    locale: recipient.locale.as_ref().map(ToString::to_string),
                    variant: variant.clone(),
                    disposition: disposition(
                        recipient
                            .user_id
                            .as_ref()
                            .and_then(|user_id| stored_preferences.get(user_id)),
                        *channel,
                        &category,
                        overrides,
                        submit.send_at,
                        now,
                    )?,
                });
            }
        }
        let new = NewNotification {
            id: notification_id,
            submitted_by: caller.identity.to_string(),
            idempotency_key: submit
                .idempotency_key
                .as_ref()
                .map(|key| key.as_ref().to_owned()),
            idempotency_retention: self.state.settings.submit.idempotency_retention,
            request_hash: hash.clone(),
            template_id: template.id,
            template_version: template.version,
            category: submit
                .category
                .as_ref()
                .map_or(template.category.clone(), |category| category.to_string()),
            priority: submit.priority,
            parameters: serde_json::Value::Object(submit.parameters),
            metadata: serde_json::Value::Object(submit.metadata),
            trace_context,
            deliveries,
        };
        let transaction = tracing::info_span!(
            "db",
            otel.name = "INSERT notifications",
            otel.kind = "client",
            db.system.name = "postgresql",
            db.operation.name = "INSERT",
            db.collection.name = "notifications",
            db.query.summary = "INSERT notifications deliveries delivery_events outbox",
        );
        let inserted = notifications::insert(&mut connection, &new)
            .instrument(transaction)
            .await?;
        match inserted {
            Inserted::Created => {
                let response = SubmitResponse {
                    notification_id: notification_id.to_string(),
                    duplicate: false,
                };
                if let Some(key) = &submit.idempotency_key {
                    self.cache(caller, key, &response, &hash).await;
                }
                tracing::info!(
                    notification.id = %notification_id,
                    template.key = %submit.template_key,
                    deliveries = new.deliveries.len(),
                    priority = %submit.priority,
                    caller = %caller.identity,
                    "Notification accepted."
                );
                Ok(response)
            }
            Inserted::KeyExists => {
                // A concurrent submit with the same key committed first: its result is ours.
                let key = submit.idempotency_key.as_ref().ok_or_else(|| {
                    herald_db::Error::Corrupt("idempotency conflict without a key".into())
                })?;
                replay(&mut connection, caller, key, &hash)
                    .await?
                    .ok_or_else(|| {
                        herald_db::Error::Corrupt("idempotency key vanished".into()).into()
                    })
            }
        }
    }

    /// Answers a repeated submit from Redis when it knows the key. Redis trouble is a miss:
    /// PostgreSQL decides.
    async fn cached_replay(
        &self,
        caller: &Caller,
        key: &IdempotencyKey,
        hash: &[u8],
    ) -> Result<Option<SubmitResponse>> {
        match self
            .state
            .redis
            .idempotency_get(&caller.identity, key)
            .await
        {
            Ok(Some((notification_id, stored_hash))) => {
                if stored_hash != hash {
                    return Err(key_conflict(key, notification_id));
                }
                tracing::info!(notification.id = %notification_id, caller = %caller.identity, "Idempotent replay answered from the cache.");
                Ok(Some(SubmitResponse {
                    notification_id: notification_id.to_string(),
                    duplicate: true,
                }))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                tracing::warn!(error = %error, "Idempotency cache unavailable; asking PostgreSQL.");
                Ok(None)
            }
        }
    }

    async fn cache(
        &self,
        caller: &Caller,
        key: &IdempotencyKey,
        response: &SubmitResponse,
        hash: &[u8],
    ) {
        let Ok(notification_id) = response.notification_id.parse() else {
            return;
        };
        let retention = self.state.settings.submit.idempotency_retention;
        if let Err(error) = self
            .state
            .redis
            .idempotency_put(&caller.identity, key, notification_id, hash, retention)
            .await
        {
            tracing::warn!(error = %error, "Could not cache an idempotency key.");
        }
    }

    async fn get_notification(
        &self,
        caller: &Caller,
        request: GetNotificationRequest,
    ) -> Result<GetNotificationResponse> {
        let id: NotificationId = request
            .notification_id
            .parse()
            .map_err(|error| ServiceError::invalid("notification_id", error))?;
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let record = notifications::load(&mut connection, id)
            .await?
            .filter(|record| {
                caller.has(Role::Admin) || record.submitted_by == caller.identity.as_ref()
            })
            .ok_or_else(|| {
                ServiceError::NotFound(format!("notification_id: no notification {id}"))
            })?;
        Ok(GetNotificationResponse {
            notification: Some(notification_message(record)),
        })
    }
}

/// The A/B test variant of the template version `recipient` gets, on every channel: assigned
/// from the template key and the user id, or without one the first address given (only hashed,
/// never stored for this). `None` when the version has no variants.
fn assign_variant(
    content: &VersionContent,
    template_key: &TemplateKey,
    recipient: &ValidRecipient,
) -> Option<String> {
    let subject = match &recipient.user_id {
        Some(user_id) => Subject::User(user_id),
        None => Subject::Address(
            recipient
                .email
                .as_ref()
                .map(AsRef::as_ref)
                .or(recipient.phone.as_ref().map(AsRef::as_ref))
                .or(recipient.chat_destination.as_deref())
                .unwrap_or_default(),
        ),
    };
    content
        .assign_variant(template_key.as_ref(), subject)
        .map(str::to_owned)
}

/// The original response for a reused idempotency key, or `None` if the key is unused.
async fn replay(
    connection: &mut herald_db::Connection,
    caller: &Caller,
    key: &IdempotencyKey,
    hash: &[u8],
) -> Result<Option<SubmitResponse>> {
    let Some((notification_id, stored_hash)) =
        notifications::find_by_idempotency_key(connection, caller.identity.as_ref(), key.as_ref())
            .await?
    else {
        return Ok(None);
    };
    if stored_hash != hash {
        return Err(key_conflict(key, notification_id));
    }
    tracing::info!(notification.id = %notification_id, caller = %caller.identity, "Idempotent replay answered with the original notification.");
    Ok(Some(SubmitResponse {
        notification_id: notification_id.to_string(),
        duplicate: true,
    }))
}

/// What a new delivery starts as: suppressed by the user's preferences, held until `send_at`
/// or the end of their quiet hours (whichever is later), or sent now.
fn disposition(
    stored: Option<&herald_db::preferences::PreferenceRecord>,
    channel: Channel,
    category: &str,
    overrides: herald_domain::Overrides,
    send_at: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Disposition> {
    let due = send_at.filter(|send_at| *send_at > now).unwrap_or(now);
    let verdict = match stored {
        Some(record) => record
            .to_domain()?
            .decide(channel, category, overrides, due),
        None => herald_domain::Verdict::Send,
    };
    Ok(match verdict {
        herald_domain::Verdict::Suppress(reason) => Disposition::Suppressed(reason),
        herald_domain::Verdict::DeferUntil(end) => Disposition::ScheduledFor(end),
        herald_domain::Verdict::Send if due > now => Disposition::ScheduledFor(due),
        herald_domain::Verdict::Send => Disposition::Now,
    })
}

fn key_conflict(key: &IdempotencyKey, notification_id: NotificationId) -> ServiceError {
    ServiceError::AlreadyExists(format!(
        "idempotency_key: `{}` was already used for a different request (notification {notification_id}); use a new key for a new notification",
        key.as_ref()
    ))
}

fn notification_status(record: &NotificationRecord) -> pb::NotificationStatus {
    let states: Vec<DeliveryState> = record
        .deliveries
        .iter()
        .map(|delivery| delivery.state)
        .collect();
    if states.iter().all(|state| *state == DeliveryState::Pending) {
        return pb::NotificationStatus::Accepted;
    }
    if !states.iter().all(|state| state.is_final()) {
        return pb::NotificationStatus::InProgress;
    }
    let delivered = states
        .iter()
        .filter(|state| **state == DeliveryState::Delivered)
        .count();
    if states
        .iter()
        .all(|state| *state == DeliveryState::Suppressed)
    {
        return pb::NotificationStatus::Suppressed;
    }
    if delivered == states.len() {
        pb::NotificationStatus::Delivered
    } else if delivered == 0 {
        pb::NotificationStatus::Failed
    } else {
        pb::NotificationStatus::PartiallyDelivered
    }
}

fn notification_message(record: NotificationRecord) -> pb::Notification {
    let status = notification_status(&record);
    pb::Notification {
        id: record.id.to_string(),
        status: status.into(),
        template_key: record.template_key,
        template_version: u32::try_from(record.template_version).unwrap_or_default(),
        category: record.category,
        priority: herald_proto::common::Priority::from(record.priority).into(),
        submitted_by: record.submitted_by,
        created_at: Some(conversions::timestamp(record.created_at)),
        metadata: record
            .metadata
            .as_object()
            .map(|object| {
                object
                    .iter()
                    .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default(),
        deliveries: record
            .deliveries
            .into_iter()
            .map(|delivery| pb::Delivery {
                id: delivery.id.to_string(),
                channel: herald_proto::common::Channel::from(delivery.channel).into(),
                state: pb::DeliveryState::from(delivery.state).into(),
                recipient_index: u32::try_from(delivery.recipient_index).unwrap_or_default(),
                user_id: delivery.user_id.unwrap_or_default(),
                attempts: u32::try_from(delivery.attempts).unwrap_or_default(),
                last_error: delivery.last_error.unwrap_or_default(),
                created_at: Some(conversions::timestamp(delivery.created_at)),
                updated_at: Some(conversions::timestamp(delivery.updated_at)),
                queued_at: delivery.queued_at.map(conversions::timestamp),
                delivered_at: delivery.delivered_at.map(conversions::timestamp),
                scheduled_for: delivery.scheduled_for.map(conversions::timestamp),
                variant: delivery.variant.unwrap_or_default(),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl SubmitService for SubmitApi {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let caller = caller(&request)?;
        tracing::Span::current().record("caller", caller.identity.as_ref());
        caller.require(Role::Submit, "Submit")?;
        crate::quota::check(&self.state, &caller).await?;
        let trace_context = trace_context(&request);
        Ok(Response::new(
            SubmitApi::submit(self, &caller, request.into_inner(), trace_context).await?,
        ))
    }

    async fn get_notification(
        &self,
        request: Request<GetNotificationRequest>,
    ) -> Result<Response<GetNotificationResponse>, Status> {
        let caller = caller(&request)?;
        tracing::Span::current().record("caller", caller.identity.as_ref());
        caller.require(Role::Submit, "GetNotification")?;
        Ok(Response::new(
            SubmitApi::get_notification(self, &caller, request.into_inner()).await?,
        ))
    }
}
