//! `herald.inbox.v1.InboxService`: users' in-app inboxes, for product backends acting for
//! their users (`inbox.read`, `inbox.write`; only users in the caller's namespaces). Read and
//! archive changes are recorded as tracking events (in `herald_db::inbox`) and published to
//! the user's Redis channel, from which every replica's `InboxHub` feeds its `Subscribe`
//! streams.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use herald_db::inbox::{self, Changed, InboxItem, InboxQuery};
use herald_inbox::{InboxHub, InboxPublisher, Signal, Subscription, Update};
use herald_proto::conversions::timestamp;
use herald_proto::inbox::{
    self as pb, ArchiveRequest, ArchiveResponse, GetUnreadCountRequest, GetUnreadCountResponse,
    ListInboxRequest, ListInboxResponse, MarkAllReadRequest, MarkAllReadResponse, MarkReadRequest,
    MarkReadResponse, SubscribeRequest, inbox_event::Event, inbox_service_server::InboxService,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Caller, caller, parts};
use crate::error::{Result, ServiceError, respond};
use crate::paging::{decode_token, encode_token};

const DEFAULT_PAGE_SIZE: u32 = 20;
const MAX_PAGE_SIZE: u32 = 100;
const MAX_ITEM_IDS: usize = 500;

pub(crate) struct InboxApi {
    state: AppState,
    hub: InboxHub,
    publisher: InboxPublisher,
    /// Ends every `Subscribe` stream when the server shuts down (they would hold the graceful
    /// drain open until the grace period otherwise).
    shutdown: CancellationToken,
}

impl InboxApi {
    pub(crate) fn new(
        state: AppState,
        hub: InboxHub,
        publisher: InboxPublisher,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            state,
            hub,
            publisher,
            shutdown,
        }
    }

    async fn list(&self, caller: &Caller, request: ListInboxRequest) -> Result<ListInboxResponse> {
        let user_id = caller.user_id("user_id", &request.user_id)?;
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
        let before = (!request.page_token.is_empty())
            .then(|| decode_token(&request.page_token))
            .transpose()?;
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let mut items = inbox::list(
            &mut connection,
            &user_id,
            &InboxQuery {
                unread_only: request.unread_only,
                include_archived: request.include_archived,
                before,
                limit: i64::from(page_size) + 1,
            },
        )
        .await?;
        let next_page_token = if items.len() > page_size as usize {
            items.truncate(page_size as usize);
            items
                .last()
                .map(|item| encode_token(item.created_at, item.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let unread_count = inbox::unread_count(&mut connection, &user_id).await?;
        Ok(ListInboxResponse {
            items: items.iter().map(item_message).collect(),
            next_page_token,
            unread_count: count(unread_count),
        })
    }

    async fn unread_count(&self, user_id: &str) -> Result<u32> {
        let mut connection = herald_db::connection(&self.state.pool).await?;
        Ok(count(inbox::unread_count(&mut connection, user_id).await?))
    }

    /// Applies a read or archive change to `item_ids` and signals what changed.
    async fn change(
        &self,
        user_id: &str,
        item_ids: &[String],
        archive: bool,
    ) -> Result<(Vec<Uuid>, u32)> {
        let ids = item_ids_of(item_ids)?;
        let mut connection = herald_db::connection(&self.state.pool).await?;
        let changed = if archive {
            inbox::archive(&mut connection, user_id, &ids).await?
        } else {
            inbox::mark_read(&mut connection, user_id, &ids).await?
        };
        let changed = match changed {
            Changed::Items(changed) => changed,
            Changed::NotFound(id) => {
                return Err(ServiceError::NotFound(format!(
                    "item_ids: {id} is not an item of this user's inbox"
                )));
            }
        };
        if !changed.is_empty() {
            let item_ids = changed.clone();
            let signal = if archive {
                Signal::ItemsArchived { item_ids }
            } else {
                Signal::ItemsRead { item_ids }
            };
            self.publish(user_id, &signal).await;
        }
        let unread_count = count(inbox::unread_count(&mut connection, user_id).await?);
        Ok((changed, unread_count))
    }

    /// Publishes `signal` after its change committed. A failure is logged and not returned:
    /// the change is stored, and streams converge at their next event or resync.
    async fn publish(&self, user_id: &str, signal: &Signal) {
        if let Err(error) = self.publisher.publish(user_id, signal).await {
            tracing::warn!(
                error = %error,
                "Could not publish an inbox change to Redis; open streams miss it until their next event or resync."
            );
        }
    }
}

/// 1 to `MAX_ITEM_IDS` UUIDs, duplicates dropped.
fn item_ids_of(texts: &[String]) -> Result<Vec<Uuid>> {
    if texts.is_empty() || texts.len() > MAX_ITEM_IDS {
        return Err(ServiceError::invalid(
            "item_ids",
            format!("must name 1 to {MAX_ITEM_IDS} items"),
        ));
    }
    let mut ids = Vec::with_capacity(texts.len());
    for (index, text) in texts.iter().enumerate() {
        let id = Uuid::parse_str(text).map_err(|_| {
            ServiceError::invalid(
                &format!("item_ids[{index}]"),
                "must be an inbox item id (a UUID)",
            )
        })?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

fn count(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn item_message(item: &InboxItem) -> pb::InboxItem {
    pb::InboxItem {
        id: item.id.to_string(),
        notification_id: item.notification_id.to_string(),
        delivery_id: item.delivery_id.to_string(),
        category: item.category.clone(),
        title: item.title.expose().to_owned(),
        body: item.body.expose().to_owned(),
        action_url: item.action_url.expose().to_owned(),
        created_at: Some(timestamp(item.created_at)),
        read_at: item.read_at.map(timestamp),
        archived_at: item.archived_at.map(timestamp),
    }
}

fn ids_message(ids: &[Uuid]) -> Vec<String> {
    ids.iter().map(Uuid::to_string).collect()
}

/// One `Subscribe` stream after its snapshot.
struct Live {
    pool: herald_db::Pool,
    user_id: String,
    subscription: Subscription,
    shutdown: CancellationToken,
    ended: bool,
}

impl Live {
    /// The next event for the client; `None` once the stream has ended.
    async fn next(&mut self) -> Option<Result<pb::InboxEvent, Status>> {
        if self.ended {
            return None;
        }
        loop {
            let update = tokio::select! {
                () = self.shutdown.cancelled() => {
                    self.ended = true;
                    return Some(Err(Status::unavailable(
                        "the server is shutting down; subscribe again",
                    )));
                }
                update = self.subscription.recv() => update,
            };
            match self.event(update).await {
                Ok(Some(event)) => return Some(Ok(pb::InboxEvent { event: Some(event) })),
                // The item is gone (its notification was deleted): nothing to tell.
                Ok(None) => {}
                Err(error) => {
                    self.ended = true;
                    return Some(Err(error.into()));
                }
            }
        }
    }

    /// The event for `update`, with the item and the unread count read now, after the change
    /// committed.
    async fn event(&self, update: Update) -> Result<Option<Event>> {
        let signal = match update {
            Update::Resync => return Ok(Some(Event::Resync(pb::Resync {}))),
            Update::Signal(signal) => signal,
        };
        let mut connection = herald_db::connection(&self.pool).await?;
        let event = match signal {
            Signal::ItemAdded { item_id } => {
                let Some(item) = inbox::find(&mut connection, &self.user_id, &[item_id])
                    .await?
                    .into_iter()
                    .next()
                else {
                    return Ok(None);
                };
                Event::ItemAdded(pb::ItemAdded {
                    item: Some(item_message(&item)),
                    unread_count: count(inbox::unread_count(&mut connection, &self.user_id).await?),
                })
            }
            Signal::ItemsRead { item_ids } => Event::ItemsRead(pb::ItemsRead {
                item_ids: ids_message(&item_ids),
                unread_count: count(inbox::unread_count(&mut connection, &self.user_id).await?),
            }),
            Signal::AllRead => Event::AllRead(pb::AllRead {
                unread_count: count(inbox::unread_count(&mut connection, &self.user_id).await?),
            }),
            Signal::ItemsArchived { item_ids } => Event::ItemsArchived(pb::ItemsArchived {
                item_ids: ids_message(&item_ids),
                unread_count: count(inbox::unread_count(&mut connection, &self.user_id).await?),
            }),
            // The user was erased: their client lists again (and finds nothing).
            Signal::Resync => Event::Resync(pb::Resync {}),
        };
        Ok(Some(event))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::InboxEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl InboxService for InboxApi {
    async fn list_inbox(
        &self,
        request: Request<ListInboxRequest>,
    ) -> Result<Response<ListInboxResponse>, Status> {
        let (caller, request) = parts(request)?;
        respond(self.list(&caller, request).await)
    }

    async fn get_unread_count(
        &self,
        request: Request<GetUnreadCountRequest>,
    ) -> Result<Response<GetUnreadCountResponse>, Status> {
        let user_id = caller(&request)?.user_id("user_id", &request.get_ref().user_id)?;
        Ok(Response::new(GetUnreadCountResponse {
            unread_count: self.unread_count(&user_id).await?,
        }))
    }

    async fn mark_read(
        &self,
        request: Request<MarkReadRequest>,
    ) -> Result<Response<MarkReadResponse>, Status> {
        let (caller, request) = parts(request)?;
        let user_id = caller.user_id("user_id", &request.user_id)?;
        let (changed, unread_count) = self.change(&user_id, &request.item_ids, false).await?;
        tracing::info!(caller = %caller.identity, changed = changed.len(), "Inbox items marked read.");
        Ok(Response::new(MarkReadResponse {
            changed_ids: ids_message(&changed),
            unread_count,
        }))
    }

    async fn mark_all_read(
        &self,
        request: Request<MarkAllReadRequest>,
    ) -> Result<Response<MarkAllReadResponse>, Status> {
        let caller = caller(&request)?;
        let user_id = caller.user_id("user_id", &request.get_ref().user_id)?;
        let mut connection = herald_db::connection(&self.state.pool)
            .await
            .map_err(ServiceError::from)?;
        let marked = inbox::mark_all_read(&mut connection, &user_id)
            .await
            .map_err(ServiceError::from)?;
        if !marked.is_empty() {
            self.publish(&user_id, &Signal::AllRead).await;
        }
        tracing::info!(caller = %caller.identity, changed = marked.len(), "All inbox items marked read.");
        let unread_count = inbox::unread_count(&mut connection, &user_id)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(MarkAllReadResponse {
            marked: u32::try_from(marked.len()).unwrap_or(u32::MAX),
            unread_count: count(unread_count),
        }))
    }

    async fn archive(
        &self,
        request: Request<ArchiveRequest>,
    ) -> Result<Response<ArchiveResponse>, Status> {
        let (caller, request) = parts(request)?;
        let user_id = caller.user_id("user_id", &request.user_id)?;
        let (changed, unread_count) = self.change(&user_id, &request.item_ids, true).await?;
        tracing::info!(caller = %caller.identity, changed = changed.len(), "Inbox items archived.");
        Ok(Response::new(ArchiveResponse {
            changed_ids: ids_message(&changed),
            unread_count,
        }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let user_id = caller(&request)?.user_id("user_id", &request.get_ref().user_id)?;
        // Subscribed first, then the snapshot: every change committed after the snapshot was
        // read reaches this stream (a change just before may arrive too; counts are re-read).
        let subscription = self.hub.subscribe(&user_id).await;
        let snapshot = pb::InboxEvent {
            event: Some(Event::Snapshot(pb::Snapshot {
                unread_count: self.unread_count(&user_id).await?,
            })),
        };
        let live = Live {
            pool: self.state.pool.clone(),
            user_id,
            subscription,
            shutdown: self.shutdown.clone(),
            ended: false,
        };
        let events = futures::stream::once(std::future::ready(Ok(snapshot))).chain(
            futures::stream::unfold(live, |mut live| async move {
                let event = live.next().await?;
                Some((event, live))
            }),
        );
        Ok(Response::new(Box::pin(events)))
    }
}
