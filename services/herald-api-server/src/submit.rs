//! `herald.submit.v1.SubmitService`.

use std::collections::HashMap;

use herald_db::personal::PersonalText;
use std::collections::BTreeSet;

use herald_db::notifications::{self, Disposition, Inserted, NewDelivery, NewNotification};
use herald_domain::{Channel, DeliveryId, IdempotencyKey, NotificationId, Subject, TemplateKey};
use herald_proto::submit::{
    GetNotificationRequest, GetNotificationResponse, SubmitBatchRequest, SubmitBatchResponse,
    SubmitBatchResult, SubmitRequest, SubmitResponse, submit_service_server::SubmitService,
};
use herald_templates::VersionContent;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::AppState;
use crate::auth::{Caller, caller};
use crate::error::{Result, ServiceError};
use notification::notification_message;
pub(crate) use validate::check_fuzz_input;
use validate::{ValidRecipient, ValidSubmit, check_batch_limits};

mod notification;
mod validate;

pub(crate) struct SubmitApi {
    state: AppState,
}

impl SubmitApi {
    pub(crate) fn new(state: AppState) -> Self {
        Self { state }
    }
}

/// `NOT_FOUND` for a template key or version that does not exist.
fn template_not_found(key: &TemplateKey, version: Option<i32>) -> ServiceError {
    match version {
        Some(version) => ServiceError::NotFound(format!(
            "template.version: template `{key}` has no version {version}"
        )),
        None => ServiceError::NotFound(format!("template.key: no template named `{key}`")),
    }
}

/// Checks what depends on the template: it has a part for every channel asked for, and the
/// submit gives every parameter it uses.
fn check_fits_template(
    submit: &ValidSubmit,
    content: &VersionContent,
    template: &herald_db::templates::TemplateRecord,
) -> Result<()> {
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
    Ok(())
}

/// The recipient's address on `channel`: none for push and in-app (they go to the user).
fn address(recipient: &ValidRecipient, channel: Channel) -> Option<String> {
    match channel {
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
    }
}

/// A request's fingerprint for idempotency, over its canonical JSON form (object keys sorted),
/// so that a retried submit with the same content matches whatever order the client encoded
/// maps in.
struct RequestHash {
    /// HMAC-SHA256 under the lookup key: what is stored. A plain hash of a request with a
    /// phone number or a one-time code in it could be reversed by trying candidates.
    keyed: Vec<u8>,
    /// Plain SHA-256, only compared: what notifications stored before keyed hashes hold, so a
    /// retry of such a submit is still a replay.
    legacy: Vec<u8>,
}

impl RequestHash {
    /// True when `stored` is this request's fingerprint.
    fn matches(&self, stored: &[u8]) -> bool {
        stored == self.keyed || stored == self.legacy
    }
}

fn request_hash(submit: &ValidSubmit) -> Result<RequestHash> {
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
    let canonical = canonical.to_string();
    let keyring = herald_crypto::keyring().map_err(herald_db::Error::from)?;
    Ok(RequestHash {
        keyed: keyring
            .lookup()
            .hash("submit-request", &[canonical.as_bytes()])
            .to_vec(),
        legacy: Sha256::digest(canonical.as_bytes()).to_vec(),
    })
}

/// The W3C trace context carried to the relay and the workers: the current span's (the
/// Submit server span) when traces are exported, else the caller's own headers.
fn trace_context<T>(request: &Request<T>) -> HashMap<String, String> {
    let current = herald_telemetry::current_context_map();
    if !current.is_empty() {
        return current;
    }
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|header| {
            let value = request.metadata().get(header)?.to_str().ok()?;
            (value.len() <= 512).then(|| (header.to_owned(), value.to_owned()))
        })
        .collect()
}

impl SubmitApi {
    async fn submit(
        &self,
        caller: &Caller,
        request: SubmitRequest,
        trace_context: HashMap<String, String>,
    ) -> Result<SubmitResponse> {
        let now = self.state.clock.now();
        let submit = ValidSubmit::parse(request, self.state.settings.submit.max_recipients, now)?;
        submit.check_users_of(caller)?;
        let hash = request_hash(&submit)?;
        let key = submit.idempotency_key.clone();
        let template_key = submit.template_key.clone();
        let priority = submit.priority;
        let new = match self
            .prepare(caller, submit, hash.keyed.clone(), trace_context, now)
            .await
        {
            Ok(new) => new,
            // A replay is answered even when the template changed since (a new active version
            // needing other parameters): the key decides, as it did at the first submit. Only
            // this failure path pays for the lookup.
            Err(error) => {
                return self
                    .replay_instead(caller, key.as_ref(), &hash, error)
                    .await;
            }
        };
        let notification_id = new.id;
        let deliveries = new.deliveries.len();
        let inserted = self
            .state
            .writer
            .write(new)
            .instrument(tracing::info_span!(
                "db",
                otel.name = "INSERT notifications",
                otel.kind = "client",
                db.system.name = "postgresql",
                db.operation.name = "INSERT",
                db.collection.name = "notifications",
                db.query.summary = "INSERT notifications deliveries delivery_events outbox",
            ))
            .await?;
        let response = answer(caller, key.as_ref(), &hash, notification_id, inserted)?;
        if !response.duplicate {
            tracing::info!(
                notification.id = %notification_id,
                template.key = %template_key,
                deliveries,
                priority = %priority,
                caller = %caller.identity,
                "Notification accepted."
            );
        }
        Ok(response)
    }

    /// Resolves the template (cached) and the recipients' preferences, and builds the rows
    /// of a valid submit. Checks everything that depends on the template.
    async fn prepare(
        &self,
        caller: &Caller,
        submit: ValidSubmit,
        hash: Vec<u8>,
        trace_context: HashMap<String, String>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<NewNotification> {
        let template = self
            .state
            .templates
            .find(
                &self.state.pool,
                submit.template_key.as_ref(),
                submit.template_version,
            )
            .await?
            .ok_or_else(|| template_not_found(&submit.template_key, submit.template_version))?;
        let content = &template.content;
        check_fits_template(&submit, content, &template)?;

        let category = submit
            .category
            .clone()
            .unwrap_or_else(|| template.category.clone());
        let overrides = self
            .state
            .settings
            .policy
            .overrides(category.as_ref(), submit.priority);
        let user_ids: Vec<String> = submit
            .recipients
            .iter()
            .filter_map(|recipient| recipient.user_id.clone())
            .collect();
        // Recipients given by address need no preferences, and no connection.
        let stored_preferences = if user_ids.is_empty() {
            std::collections::HashMap::new()
        } else {
            let mut connection = herald_db::connection(&self.state.pool).await?;
            herald_db::preferences::get_many(&mut connection, &user_ids).await?
        };
        let mut deliveries = Vec::new();
        for (index, recipient) in submit.recipients.iter().enumerate() {
            let variant = assign_variant(content, &submit.template_key, recipient);
            for channel in &submit.channels {
                deliveries.push(NewDelivery {
                    id: DeliveryId::generate(),
                    channel: *channel,
                    recipient_index: i32::try_from(index).unwrap_or(i32::MAX),
                    user_id: recipient.user_id.clone(),
                    address: address(recipient, *channel).map(PersonalText::from),
                    locale: recipient.locale.as_ref().map(ToString::to_string),
                    variant: variant.clone(),
                    disposition: disposition(
                        recipient
                            .user_id
                            .as_ref()
                            .and_then(|user_id| stored_preferences.get(user_id)),
                        *channel,
                        category.as_ref(),
                        overrides,
                        submit.send_at,
                        now,
                    )?,
                });
            }
        }
        Ok(NewNotification {
            id: NotificationId::generate(),
            submitted_by: caller.identity.to_string(),
            idempotency_key: submit
                .idempotency_key
                .as_ref()
                .map(|key| key.as_ref().to_owned()),
            idempotency_retention: self.state.settings.submit.idempotency_retention,
            request_hash: hash,
            template_id: template.id,
            template_version: template.version,
            category: category.to_string(),
            priority: submit.priority,
            parameters: serde_json::Value::Object(submit.parameters).into(),
            metadata: serde_json::Value::Object(submit.metadata).into(),
            trace_context,
            accepted_at: now,
            deliveries,
        })
    }

    /// Every item of a `SubmitBatch`, concurrently: they meet in the writer's batches. Each
    /// gets its own result; a refused item's message starts with its path (`items[3].`).
    ///
    /// Items sharing an idempotency key run one after the other, in item order, so the first
    /// of them decides what the key is bound to and the later ones are answered as replays or
    /// conflicts of it, whatever order the concurrent items reach the writer in.
    async fn submit_batch(
        &self,
        caller: &Caller,
        request: SubmitBatchRequest,
        trace_context: &HashMap<String, String>,
    ) -> Vec<SubmitBatchResult> {
        let mut chains: Vec<Vec<(usize, SubmitRequest)>> = Vec::new();
        let mut chain_of_key: std::collections::HashMap<String, usize> =
            std::collections::HashMap::new();
        for (index, item) in request.items.into_iter().enumerate() {
            // An item without a key starts a chain of its own; one with a key joins its key's.
            let chain = if item.idempotency_key.is_empty() {
                chains.len()
            } else {
                *chain_of_key
                    .entry(item.idempotency_key.clone())
                    .or_insert(chains.len())
            };
            if chain == chains.len() {
                chains.push(Vec::new());
            }
            chains[chain].push((index, item));
        }
        let chains = chains.into_iter().map(|chain| async move {
            let mut results = Vec::with_capacity(chain.len());
            for (index, item) in chain {
                let result = match self.submit(caller, item, trace_context.clone()).await {
                    Ok(accepted) => SubmitBatchResult {
                        accepted: Some(accepted),
                        code: tonic::Code::Ok as i32,
                        message: String::new(),
                    },
                    Err(error) => {
                        let status = Status::from(error);
                        SubmitBatchResult {
                            accepted: None,
                            code: status.code() as i32,
                            message: format!("items[{index}].{}", status.message()),
                        }
                    }
                };
                results.push((index, result));
            }
            results
        });
        let mut results: Vec<(usize, SubmitBatchResult)> = futures::future::join_all(chains)
            .await
            .into_iter()
            .flatten()
            .collect();
        results.sort_unstable_by_key(|(index, _)| *index);
        results.into_iter().map(|(_, result)| result).collect()
    }

    /// The original response when `key` is bound to an earlier submit of the same request,
    /// the conflict when it is bound to a different one, otherwise `error` itself.
    async fn replay_instead(
        &self,
        caller: &Caller,
        key: Option<&IdempotencyKey>,
        hash: &RequestHash,
        error: ServiceError,
    ) -> Result<SubmitResponse> {
        let Some(key) = key else { return Err(error) };
        if matches!(&error, ServiceError::Database(database) if database.is_unavailable()) {
            return Err(error);
        }
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let bound = notifications::find_by_idempotency_key(
            &mut connection,
            caller.identity.as_ref(),
            key.as_ref(),
        )
        .await?;
        match bound {
            Some((original, request_hash)) => answer(
                caller,
                Some(key),
                hash,
                original,
                Inserted::KeyExists {
                    notification_id: original,
                    request_hash,
                },
            ),
            None => Err(error),
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
            .filter(|record| caller.may_read_notification(record))
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

/// The response to a submit the writer answered `inserted`: the new notification, or for a
/// key bound to an earlier one, a replay (same request) or a conflict (a different one).
fn answer(
    caller: &Caller,
    key: Option<&IdempotencyKey>,
    hash: &RequestHash,
    notification_id: NotificationId,
    inserted: Inserted,
) -> Result<SubmitResponse> {
    match (inserted, key) {
        (Inserted::Created, _) => Ok(SubmitResponse {
            notification_id: notification_id.to_string(),
            duplicate: false,
        }),
        (
            Inserted::KeyExists {
                notification_id: original,
                request_hash,
            },
            Some(key),
        ) => {
            if !hash.matches(&request_hash) {
                return Err(key_conflict(key, original));
            }
            tracing::info!(notification.id = %original, caller = %caller.identity, "Idempotent replay answered with the original notification.");
            Ok(SubmitResponse {
                notification_id: original.to_string(),
                duplicate: true,
            })
        }
        (Inserted::KeyExists { .. }, None) => {
            Err(herald_db::Error::Corrupt("an idempotency conflict without a key".into()).into())
        }
    }
}

/// What a new delivery starts as: suppressed by the user's preferences, held until `send_at`
/// or the end of their quiet hours (whichever is later), or sent now.
fn disposition(
    stored: Option<&Result<herald_db::preferences::PreferenceRecord, herald_domain::ValueError>>,
    channel: Channel,
    category: &str,
    overrides: herald_domain::Overrides,
    send_at: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Disposition> {
    let due = send_at.filter(|send_at| *send_at > now).unwrap_or(now);
    let verdict = match stored {
        Some(Ok(record)) => record.preferences.decide(channel, category, overrides, due),
        Some(Err(error)) => return Err(herald_db::Error::from(error.clone()).into()),
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

#[tonic::async_trait]
impl SubmitService for SubmitApi {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let caller = caller(&request)?;
        tracing::Span::current().record("caller", caller.identity.as_ref());
        crate::quota::check(&self.state, &caller, 1).await?;
        let trace_context = trace_context(&request);
        Ok(Response::new(
            SubmitApi::submit(self, &caller, request.into_inner(), trace_context).await?,
        ))
    }

    async fn submit_batch(
        &self,
        request: Request<SubmitBatchRequest>,
    ) -> Result<Response<SubmitBatchResponse>, Status> {
        let caller = caller(&request)?;
        tracing::Span::current().record("caller", caller.identity.as_ref());
        check_batch_limits(
            request.get_ref(),
            self.state.settings.submit.batch_call_max_deliveries,
        )?;
        let items = u64::try_from(request.get_ref().items.len()).unwrap_or(u64::MAX);
        crate::quota::check(&self.state, &caller, items).await?;
        let trace_context = trace_context(&request);
        let results =
            SubmitApi::submit_batch(self, &caller, request.into_inner(), &trace_context).await;
        Ok(Response::new(SubmitBatchResponse { results }))
    }

    async fn get_notification(
        &self,
        request: Request<GetNotificationRequest>,
    ) -> Result<Response<GetNotificationResponse>, Status> {
        let caller = caller(&request)?;
        tracing::Span::current().record("caller", caller.identity.as_ref());
        Ok(Response::new(
            SubmitApi::get_notification(self, &caller, request.into_inner()).await?,
        ))
    }
}
