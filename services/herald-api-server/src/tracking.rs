//! `herald.tracking.v1.TrackingService`: engagement events reported by clients (push, in-app)
//! and the event history of a notification (`events.record`; `events.read`, scoped to the
//! submitter unless the caller holds `notifications.read_any`). A caller bound to user
//! namespaces records and reads only what goes to users inside them. Every event is
//! stored through `herald_db::events`, the same path as the pixel, the click redirects and
//! the inbox, so a given engagement is recorded once whichever way it arrives.

use herald_db::deliveries;
use herald_db::events::{self, Engagement, EngagementKind, Recorded};
use herald_db::notifications;
use herald_domain::{DeliveryId, NotificationId, Permission};
use herald_proto::conversions::timestamp;
use herald_proto::tracking::{
    self as pb, ListEventsRequest, ListEventsResponse, RecordEventRequest, RecordEventResponse,
    tracking_service_server::TrackingService,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Caller, parts};
use crate::error::{Result, ServiceError, respond};

/// Longest link a client may report with a click.
const MAX_LINK: usize = 2048;
/// Longest client event id.
const MAX_CLIENT_EVENT_ID: usize = 128;

pub(crate) struct TrackingApi {
    state: AppState,
}

impl TrackingApi {
    pub(crate) fn new(state: AppState) -> Self {
        Self { state }
    }

    async fn record(
        &self,
        caller: &Caller,
        request: RecordEventRequest,
    ) -> Result<RecordEventResponse> {
        let engagement = engagement(&request)?;
        let mut connection = herald_db::connection(&self.state.pool).await?;
        // Not scoped by submitter, but by user: another namespace's delivery is as unknown to
        // a namespaced caller as one that does not exist.
        if caller.is_namespaced() {
            let user_id = deliveries::user_of(&mut connection, engagement.delivery_id).await?;
            if !user_id
                .flatten()
                .is_some_and(|user_id| caller.may_access_user(&user_id))
            {
                return Err(unknown_delivery(engagement.delivery_id));
            }
        }
        match events::record_engagement(&mut connection, &engagement).await? {
            Recorded::New { occurred_at } => Ok(RecordEventResponse {
                recorded: true,
                already_recorded: false,
                occurred_at: Some(timestamp(occurred_at)),
            }),
            Recorded::Already { occurred_at } => Ok(RecordEventResponse {
                recorded: false,
                already_recorded: true,
                occurred_at: Some(timestamp(occurred_at)),
            }),
            Recorded::UnknownDelivery => Err(unknown_delivery(engagement.delivery_id)),
        }
    }

    /// The events of a notification the caller submitted (any, with `notifications.read_any`).
    async fn list(
        &self,
        caller: &Caller,
        request: ListEventsRequest,
    ) -> Result<ListEventsResponse> {
        let notification_id = NotificationId::from(parse_uuid(
            "notification_id",
            &request.notification_id,
            "a notification id",
        )?);
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let stored = if caller.is_namespaced() {
            // Whether a namespaced caller may read depends on the notification's users too,
            // so it is decided on the loaded notification.
            match notifications::load(&mut connection, notification_id).await? {
                Some(record) if caller.may_read_notification(&record) => {
                    events::for_notification(&mut connection, notification_id, None).await?
                }
                _ => None,
            }
        } else {
            let submitted_by =
                (!caller.has(Permission::NotificationsReadAny)).then(|| caller.identity.as_ref());
            events::for_notification(&mut connection, notification_id, submitted_by).await?
        };
        let stored = stored.ok_or_else(|| {
            ServiceError::NotFound(format!("notification {notification_id} does not exist"))
        })?;
        Ok(ListEventsResponse {
            events: stored
                .into_iter()
                .map(|event| pb::DeliveryEvent {
                    delivery_id: event.delivery_id.to_string(),
                    channel: event.channel,
                    kind: event.kind,
                    occurred_at: Some(timestamp(event.occurred_at)),
                    attempt: event.attempt,
                    provider: event.provider.unwrap_or_default(),
                    error_class: event.error_class.unwrap_or_default(),
                    detail: event.detail.into_inner(),
                })
                .collect(),
        })
    }
}

/// Validates `request` into the engagement to record, with its dedupe key: `once` for
/// opened/read/dismissed; for clicked, the link's digest (the same key `herald-tracker` gives
/// an email click), else the client event id's digest, else `once`.
fn engagement(request: &RecordEventRequest) -> Result<Engagement> {
    let delivery_id = DeliveryId::from(parse_uuid(
        "delivery_id",
        &request.delivery_id,
        "a delivery id",
    )?);
    let kind = match pb::EngagementKind::try_from(request.kind) {
        Ok(pb::EngagementKind::Opened) => EngagementKind::Opened,
        Ok(pb::EngagementKind::Clicked) => EngagementKind::Clicked,
        Ok(pb::EngagementKind::Read) => EngagementKind::Read,
        Ok(pb::EngagementKind::Dismissed) => EngagementKind::Dismissed,
        Ok(pb::EngagementKind::Unspecified) | Err(_) => {
            return Err(ServiceError::invalid(
                "kind",
                format!(
                    "must be one of ENGAGEMENT_KIND_OPENED, ENGAGEMENT_KIND_CLICKED, \
                     ENGAGEMENT_KIND_READ, ENGAGEMENT_KIND_DISMISSED (got {})",
                    request.kind
                ),
            ));
        }
    };
    if request.link.len() > MAX_LINK {
        return Err(ServiceError::invalid(
            "link",
            format!("must be at most {MAX_LINK} characters"),
        ));
    }
    if request.client_event_id.len() > MAX_CLIENT_EVENT_ID {
        return Err(ServiceError::invalid(
            "client_event_id",
            format!("must be at most {MAX_CLIENT_EVENT_ID} characters"),
        ));
    }
    crate::fields::no_controls("link", &request.link)?;
    crate::fields::no_controls("client_event_id", &request.client_event_id)?;
    let (dedupe_key, detail) = match kind {
        EngagementKind::Clicked if !request.link.is_empty() => (
            herald_tracking::Target::Click {
                url: request.link.clone(),
            }
            .dedupe_key(),
            request.link.clone(),
        ),
        EngagementKind::Clicked if !request.client_event_id.is_empty() => (
            format!(
                "client:{}",
                &herald_crypto::lookup_hex("client-event", request.client_event_id.as_bytes())
                    [..32]
            ),
            String::new(),
        ),
        _ => (events::ONCE.to_owned(), String::new()),
    };
    Ok(Engagement {
        delivery_id,
        kind,
        dedupe_key,
        detail: detail.into(),
    })
}

/// `NOT_FOUND` for a delivery that does not exist (or is not the caller's to see).
fn unknown_delivery(delivery_id: DeliveryId) -> ServiceError {
    ServiceError::NotFound(format!("delivery {delivery_id} does not exist"))
}

fn parse_uuid(field: &str, text: &str, what: &str) -> Result<Uuid> {
    Uuid::parse_str(text)
        .map_err(|_| ServiceError::invalid(field, format!("must be {what} (a UUID)")))
}

#[tonic::async_trait]
impl TrackingService for TrackingApi {
    async fn record_event(
        &self,
        request: Request<RecordEventRequest>,
    ) -> Result<Response<RecordEventResponse>, Status> {
        let (caller, request) = parts(request)?;
        respond(self.record(&caller, request).await)
    }

    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        let (caller, request) = parts(request)?;
        respond(self.list(&caller, request).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: pb::EngagementKind, link: &str, client_event_id: &str) -> RecordEventRequest {
        RecordEventRequest {
            delivery_id: Uuid::now_v7().to_string(),
            kind: kind.into(),
            link: link.into(),
            client_event_id: client_event_id.into(),
        }
    }

    #[test]
    fn opens_reads_and_dismissals_are_once_per_delivery_whatever_the_client_id() {
        for kind in [
            pb::EngagementKind::Opened,
            pb::EngagementKind::Read,
            pb::EngagementKind::Dismissed,
        ] {
            let engagement = engagement(&request(kind, "https://x.example", "e-1")).unwrap();
            assert_eq!(engagement.dedupe_key, "once");
            assert_eq!(engagement.detail.expose(), "");
        }
    }

    #[test]
    fn clicks_are_keyed_by_link_then_client_event_id() {
        herald_test_support::TestCerts::get().install_keyring();
        let by_link = engagement(&request(
            pb::EngagementKind::Clicked,
            "https://x.example",
            "e-1",
        ))
        .unwrap();
        assert!(by_link.dedupe_key.starts_with("link:"));
        assert_eq!(by_link.detail.expose(), "https://x.example");
        let by_id = engagement(&request(pb::EngagementKind::Clicked, "", "e-1")).unwrap();
        assert!(by_id.dedupe_key.starts_with("client:"));
        let bare = engagement(&request(pb::EngagementKind::Clicked, "", "")).unwrap();
        assert_eq!(bare.dedupe_key, "once");
    }

    #[test]
    fn an_unspecified_or_unknown_kind_is_invalid_and_names_the_kinds() {
        let mut unknown = request(pb::EngagementKind::Opened, "", "");
        for kind in [0, 99] {
            unknown.kind = kind;
            let Err(ServiceError::InvalidArgument(message)) = engagement(&unknown) else {
                panic!("kind {kind} should be invalid");
            };
            assert!(
                message.starts_with("kind: must be one of ENGAGEMENT_KIND_OPENED"),
                "{message}"
            );
        }
    }

    #[test]
    fn a_bad_delivery_id_is_invalid() {
        let mut bad = request(pb::EngagementKind::Opened, "", "");
        bad.delivery_id = "nope".into();
        assert!(
            matches!(engagement(&bad), Err(ServiceError::InvalidArgument(message)) if message.starts_with("delivery_id:"))
        );
    }
}
