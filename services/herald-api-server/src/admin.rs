//! `herald.admin.v1.AdminService`: the failure record, replay and discard
//! (`failures.admin`), and queue figures (`queues.read`).

use herald_db::failures::{self, FailureFilter, FailureRecord, Resolution};
use herald_domain::NotificationId;
use herald_proto::admin::{
    self as pb, DiscardFailuresRequest, GetFailureRequest, GetFailureResponse, ListFailuresRequest,
    ListFailuresResponse, ReplayFailuresRequest, ResolveFailuresResponse,
    admin_service_server::AdminService,
};
use herald_proto::conversions::{self, channel_from_i32};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Caller, parts};
use crate::error::{Result, ServiceError, respond};
use crate::paging::{decode_token, encode_token};

const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 500;
const MAX_IDS: usize = 500;
const MAX_REASON: usize = 500;

pub(crate) struct AdminApi {
    state: AppState,
}

impl AdminApi {
    pub(crate) fn new(state: AppState) -> Self {
        Self { state }
    }

    async fn list(&self, request: ListFailuresRequest) -> Result<ListFailuresResponse> {
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size if size <= MAX_PAGE_SIZE => size,
            _ => {
                return Err(ServiceError::invalid(
                    "page_size",
                    format!("must be at most {MAX_PAGE_SIZE}"),
                ));
            }
        };
        let status = match pb::FailureStatus::try_from(request.status) {
            Ok(pb::FailureStatus::Unspecified) => None,
            Ok(pb::FailureStatus::Open) => Some("open"),
            Ok(pb::FailureStatus::Replayed) => Some("replayed"),
            Ok(pb::FailureStatus::Discarded) => Some("discarded"),
            Err(_) => return Err(ServiceError::invalid("status", "unknown status")),
        };
        let class = match pb::FailureClass::try_from(request.class) {
            Ok(pb::FailureClass::Unspecified) => None,
            Ok(pb::FailureClass::Permanent) => Some("permanent"),
            Ok(pb::FailureClass::Exhausted) => Some("exhausted"),
            Ok(pb::FailureClass::Unknown) => Some("unknown"),
            Err(_) => return Err(ServiceError::invalid("class", "unknown class")),
        };
        let channel = match request.channel {
            0 => None,
            number => Some(
                channel_from_i32(number)
                    .map_err(|error| ServiceError::invalid("channel", error))?,
            ),
        };
        let notification_id = (!request.notification_id.is_empty())
            .then(|| request.notification_id.parse::<NotificationId>())
            .transpose()
            .map_err(|error| ServiceError::invalid("notification_id", error))?;
        let since = request
            .since
            .as_ref()
            .map(|since| {
                conversions::instant(since)
                    .ok_or_else(|| ServiceError::invalid("since", "is out of range"))
            })
            .transpose()?;
        let before = (!request.page_token.is_empty())
            .then(|| decode_token(&request.page_token))
            .transpose()?;
        let filter = FailureFilter {
            status: status.map(str::to_owned),
            channel,
            class: class.map(str::to_owned),
            notification_id,
            since,
            before,
        };
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let mut records =
            failures::list(&mut connection, &filter, i64::from(page_size) + 1).await?;
        let next_page_token = if records.len() > page_size as usize {
            records.truncate(page_size as usize);
            records
                .last()
                .map(|record| encode_token(record.created_at, record.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListFailuresResponse {
            failures: records.into_iter().map(failure_message).collect(),
            next_page_token,
        })
    }

    async fn get(&self, request: GetFailureRequest) -> Result<GetFailureResponse> {
        let id = parse_id("id", &request.id)?;
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let record = failures::get(&mut connection, id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("id: no failure {id}")))?;
        let history = failures::history(&mut connection, record.delivery_id).await?;
        Ok(GetFailureResponse {
            failure: Some(failure_message(record)),
            history: history
                .into_iter()
                .map(|event| pb::Attempt {
                    kind: event.kind,
                    attempt: u32::try_from(event.attempt).unwrap_or_default(),
                    provider: event.provider.unwrap_or_default(),
                    error_class: event.error_class.unwrap_or_default(),
                    detail: event.detail.into_inner(),
                    occurred_at: Some(conversions::timestamp(event.occurred_at)),
                })
                .collect(),
        })
    }

    async fn resolve(
        &self,
        caller: &Caller,
        ids: Vec<String>,
        reason: String,
        replay: bool,
    ) -> Result<ResolveFailuresResponse> {
        if ids.is_empty() || ids.len() > MAX_IDS {
            return Err(ServiceError::invalid(
                "ids",
                format!("must list 1 to {MAX_IDS} failure ids"),
            ));
        }
        let ids = ids
            .iter()
            .enumerate()
            .map(|(index, id)| parse_id(&format!("ids[{index}]"), id))
            .collect::<Result<Vec<_>>>()?;
        if reason.trim().is_empty() || reason.chars().count() > MAX_REASON {
            return Err(ServiceError::invalid(
                "reason",
                format!("must be 1 to {MAX_REASON} characters"),
            ));
        }
        crate::fields::text("reason", &reason)?;
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let mut results = Vec::with_capacity(ids.len());
        for id in ids {
            let resolution = if replay {
                failures::replay(&mut connection, id, caller.identity.as_ref(), &reason).await?
            } else {
                failures::discard(&mut connection, id, caller.identity.as_ref(), &reason).await?
            };
            tracing::info!(failure.id = %id, caller = %caller.identity, action = if replay { "replay" } else { "discard" }, outcome = ?resolution, "Failure resolved.");
            results.push(pb::ResolveResult {
                id: id.to_string(),
                outcome: match resolution {
                    Resolution::Done => pb::ResolveOutcome::Done,
                    Resolution::AlreadyReplayed => pb::ResolveOutcome::AlreadyReplayed,
                    Resolution::AlreadyDiscarded => pb::ResolveOutcome::AlreadyDiscarded,
                    Resolution::NotFound => pb::ResolveOutcome::NotFound,
                    Resolution::PersonalDataCleared => pb::ResolveOutcome::PersonalDataCleared,
                }
                .into(),
            });
        }
        Ok(ResolveFailuresResponse { results })
    }
}

fn parse_id(field: &str, text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|_| ServiceError::invalid(field, "must be a failure id (a UUID)"))
}

fn failure_message(record: FailureRecord) -> pb::Failure {
    pb::Failure {
        id: record.id.to_string(),
        delivery_id: record.delivery_id.to_string(),
        notification_id: record.notification_id.to_string(),
        channel: herald_proto::common::Channel::from(record.channel).into(),
        class: match record.class.as_str() {
            "permanent" => pb::FailureClass::Permanent,
            "exhausted" => pb::FailureClass::Exhausted,
            "unknown" => pb::FailureClass::Unknown,
            _ => pb::FailureClass::Unspecified,
        }
        .into(),
        status: match record.status.as_str() {
            "open" => pb::FailureStatus::Open,
            "replayed" => pb::FailureStatus::Replayed,
            "discarded" => pb::FailureStatus::Discarded,
            _ => pb::FailureStatus::Unspecified,
        }
        .into(),
        attempts: u32::try_from(record.attempts).unwrap_or_default(),
        error: record.error,
        template_key: record.template_key,
        priority: herald_proto::common::Priority::from(record.priority).into(),
        created_at: Some(conversions::timestamp(record.created_at)),
        resolved_at: record.resolved_at.map(conversions::timestamp),
        resolved_by: record.resolved_by.unwrap_or_default(),
    }
}

impl AdminApi {
    /// Queue figures from PostgreSQL and, when it answers within a second, the broker.
    async fn queue_stats(&self) -> Result<pb::GetQueueStatsResponse> {
        let now = self.state.clock.now();
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let (lanes, outbox) = herald_db::monitor::figures(&mut connection, now).await?;
        drop(connection);
        let (depths, broker_error) = match self.broker_depths().await {
            Ok(depths) => (depths, String::new()),
            Err(error) => (Vec::new(), error),
        };
        let since = |instant: chrono::DateTime<chrono::Utc>| {
            prost_types::Duration::try_from((now - instant).to_std().unwrap_or_default()).ok()
        };
        let queues = herald_domain::Channel::ALL
            .into_iter()
            .map(|channel| {
                let depth = depths.iter().find(|depth| depth.channel == channel);
                pb::QueueStats {
                    channel: herald_proto::common::Channel::from(channel).into(),
                    queue: herald_queue::work_queue(channel),
                    ready_messages: depth.and_then(|depth| depth.work).map(|work| work.messages),
                    consumers: depth
                        .and_then(|depth| depth.work)
                        .map(|work| work.consumers),
                    dead_lettered: depth
                        .and_then(|depth| depth.dead_letters)
                        .map(|dead| dead.messages),
                    lanes: lanes
                        .iter()
                        .filter(|lane| lane.channel == channel)
                        .map(|lane| pb::PriorityLane {
                            priority: herald_proto::common::Priority::from(lane.priority).into(),
                            waiting: lane.waiting,
                            oldest_wait: lane.oldest_queued_at.and_then(since),
                            retrying: lane.retrying,
                            consumed_recently: lane.consumed_recently,
                            mean_wait: lane.mean_wait_seconds.and_then(|seconds| {
                                prost_types::Duration::try_from(
                                    std::time::Duration::try_from_secs_f64(seconds.max(0.0))
                                        .ok()?,
                                )
                                .ok()
                            }),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(pb::GetQueueStatsResponse {
            queues,
            outbox: Some(pb::OutboxStats {
                backlog: outbox.backlog,
                oldest_due: outbox.oldest_due_at.and_then(since),
            }),
            recent_window: prost_types::Duration::try_from(herald_db::monitor::RECENT_WINDOW).ok(),
            broker_error,
            measured_at: Some(conversions::timestamp(now)),
        })
    }

    /// The broker's counts, or why they are missing.
    async fn broker_depths(&self) -> std::result::Result<Vec<herald_queue::ChannelDepths>, String> {
        let asked = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            herald_queue::read_depths(&self.state.settings.amqp, crate::SERVICE_NAME),
        )
        .await;
        match asked {
            Ok(Ok(depths)) => Ok(depths),
            Ok(Err(error)) => Err(format!("RabbitMQ did not answer: {error}")),
            Err(_) => Err("RabbitMQ did not answer within 1s".into()),
        }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_queue_stats(
        &self,
        _request: Request<pb::GetQueueStatsRequest>,
    ) -> Result<Response<pb::GetQueueStatsResponse>, Status> {
        respond(self.queue_stats().await)
    }

    async fn list_failures(
        &self,
        request: Request<ListFailuresRequest>,
    ) -> Result<Response<ListFailuresResponse>, Status> {
        respond(self.list(request.into_inner()).await)
    }

    async fn get_failure(
        &self,
        request: Request<GetFailureRequest>,
    ) -> Result<Response<GetFailureResponse>, Status> {
        respond(self.get(request.into_inner()).await)
    }

    async fn replay_failures(
        &self,
        request: Request<ReplayFailuresRequest>,
    ) -> Result<Response<ResolveFailuresResponse>, Status> {
        let (caller, request) = parts(request)?;
        respond(
            self.resolve(&caller, request.ids, request.reason, true)
                .await,
        )
    }

    async fn discard_failures(
        &self,
        request: Request<DiscardFailuresRequest>,
    ) -> Result<Response<ResolveFailuresResponse>, Status> {
        let (caller, request) = parts(request)?;
        respond(
            self.resolve(&caller, request.ids, request.reason, false)
                .await,
        )
    }
}
