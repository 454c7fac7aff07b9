//! The in-app inbox through the public API: Submit → in-app worker → `inbox_items`, then
//! `InboxService` on two API replicas sharing PostgreSQL and Redis, with live `Subscribe`
//! streams on both.

use std::net::SocketAddr;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use herald_proto::common::{Channel as WireChannel, Priority as WirePriority};
use herald_proto::inbox::inbox_event::Event;
use herald_proto::inbox::inbox_service_client::InboxServiceClient;
use herald_proto::inbox::{
    ArchiveRequest, GetUnreadCountRequest, InboxEvent, InboxItem, ListInboxRequest,
    MarkAllReadRequest, MarkReadRequest, SubscribeRequest,
};
use herald_proto::submit::{
    DeliveryState, Notification, NotificationStatus, Recipient, SubmitRequest, TemplateRef,
};
use herald_proto::template::{InAppPart, TemplateContent};
use herald_queue::lapin::BasicProperties;
use herald_queue::lapin::options::BasicPublishOptions;
use prost::Message as _;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::harness::{As, Options, TestApp, parameters};

/// How long a stream may take to show a change: the "within a second".
pub(crate) const LIVE: Duration = Duration::from_secs(1);

async fn in_app_app() -> TestApp {
    in_app_app_with(Options::default()).await
}

/// An app started with `options`, the `order-shipped` in-app template and an in-app worker.
pub(crate) async fn in_app_app_with(options: Options) -> TestApp {
    let app = TestApp::spawn_with(options).await;
    app.create_template_with(
        "order-shipped",
        "orders",
        TemplateContent {
            in_app: Some(InAppPart {
                title: "Shipped: {{item}}".into(),
                body: "Hi {{name}}, your {{item}} is on its way.".into(),
                action_url: "https://shop.example/orders/{{order}}".into(),
            }),
            ..TemplateContent::default()
        },
    )
    .await;
    app.start_in_app_worker();
    app
}

/// Submits an in-app `order-shipped` to `user_id` and waits until it is delivered.
pub(crate) async fn deliver(app: &TestApp, user_id: &str, order: &str) -> Notification {
    let response = app
        .submit(SubmitRequest {
            template: Some(TemplateRef {
                key: "order-shipped".into(),
                version: None,
            }),
            parameters: Some(parameters(&[
                ("name", "Ada"),
                ("item", "kettle"),
                ("order", order),
            ])),
            recipients: vec![Recipient {
                user_id: user_id.into(),
                ..Recipient::default()
            }],
            channels: vec![WireChannel::InApp.into()],
            priority: WirePriority::Normal.into(),
            ..SubmitRequest::default()
        })
        .await
        .expect("submitting an in-app notification");
    app.wait_for_status(&response.notification_id, NotificationStatus::Delivered)
        .await
}

async fn list(
    client: &mut InboxServiceClient<Channel>,
    request: ListInboxRequest,
) -> (Vec<InboxItem>, String, u32) {
    let response = client
        .list_inbox(request)
        .await
        .expect("ListInbox")
        .into_inner();
    (
        response.items,
        response.next_page_token,
        response.unread_count,
    )
}

async fn unread(client: &mut InboxServiceClient<Channel>, user_id: &str) -> u32 {
    client
        .get_unread_count(GetUnreadCountRequest {
            user_id: user_id.into(),
        })
        .await
        .expect("GetUnreadCount")
        .into_inner()
        .unread_count
}

pub(crate) async fn subscribe(
    client: &mut InboxServiceClient<Channel>,
    user_id: &str,
) -> Streaming<InboxEvent> {
    client
        .subscribe(SubscribeRequest {
            user_id: user_id.into(),
        })
        .await
        .expect("Subscribe")
        .into_inner()
}

/// The next event of `stream`, within `timeout`.
pub(crate) async fn next(stream: &mut Streaming<InboxEvent>, timeout: Duration) -> Event {
    tokio::time::timeout(timeout, stream.message())
        .await
        .expect("an event in time")
        .expect("a healthy stream")
        .expect("the stream to stay open")
        .event
        .expect("an event")
}

fn delivered_at(notification: &Notification) -> chrono::DateTime<chrono::Utc> {
    let delivery = &notification.deliveries[0];
    assert_eq!(delivery.state(), DeliveryState::Delivered);
    let at = delivery.delivered_at.expect("delivered_at");
    chrono::DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).unwrap())
        .expect("a valid instant")
}

/// `(kind, attempt)` of the read/archived tracking events of `delivery_id`.
async fn tracking_events(app: &TestApp, delivery_id: &str) -> Vec<(String, i32)> {
    use herald_db::schema::delivery_events;
    let delivery_id: uuid::Uuid = delivery_id.parse().unwrap();
    let mut connection = app.pool.get().await.unwrap();
    delivery_events::table
        .filter(delivery_events::delivery_id.eq(delivery_id))
        .filter(delivery_events::kind.eq_any(["read", "dismissed"]))
        .order(delivery_events::id.asc())
        .select((delivery_events::kind, delivery_events::attempt))
        .load(&mut connection)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_in_app_notification_lands_rendered_in_the_users_inbox_and_is_delivered() {
    let app = in_app_app().await;
    let notification = deliver(&app, "user-1", "42").await;
    let delivery = &notification.deliveries[0];
    assert_eq!(delivery.channel(), WireChannel::InApp);
    assert_eq!(delivery.attempts, 1);

    let mut client = app.inbox_client_at(app.address, As::Orders).await;
    let (items, next_page_token, unread_count) = list(
        &mut client,
        ListInboxRequest {
            user_id: "user-1".into(),
            ..ListInboxRequest::default()
        },
    )
    .await;
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(item.title, "Shipped: kettle");
    assert_eq!(item.body, "Hi Ada, your kettle is on its way.");
    assert_eq!(item.action_url, "https://shop.example/orders/42");
    assert_eq!(item.category, "orders");
    assert_eq!(item.notification_id, notification.id);
    assert_eq!(item.delivery_id, delivery.id);
    assert!(item.created_at.is_some());
    assert_eq!(item.read_at, None);
    assert_eq!(next_page_token, "");
    assert_eq!(unread_count, 1);
    assert_eq!(unread(&mut client, "user-1").await, 1);
    assert_eq!(unread(&mut client, "user-2").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_on_two_replicas_see_a_new_item_within_a_second_and_read_state_syncs() {
    let app = in_app_app().await;
    let replica: SocketAddr = app.spawn_api_replica().await;
    let mut client_a = app.inbox_client_at(app.address, As::Orders).await;
    let mut client_b = app.inbox_client_at(replica, As::Orders).await;
    let mut stream_a = subscribe(&mut client_a, "user-1").await;
    let mut stream_b = subscribe(&mut client_b, "user-1").await;
    for stream in [&mut stream_a, &mut stream_b] {
        match next(stream, LIVE).await {
            Event::Snapshot(snapshot) => assert_eq!(snapshot.unread_count, 0),
            other => panic!("expected the snapshot first, got {other:?}"),
        }
    }

    // Read both streams concurrently with the delivery, noting when each event arrived.
    let watch = |mut stream: Streaming<InboxEvent>| {
        tokio::spawn(async move {
            let event = next(&mut stream, Duration::from_secs(20)).await;
            (event, chrono::Utc::now(), stream)
        })
    };
    let (watch_a, watch_b) = (watch(stream_a), watch(stream_b));
    let notification = deliver(&app, "user-1", "42").await;
    let delivered_at = delivered_at(&notification);
    let mut streams = Vec::new();
    for watcher in [watch_a, watch_b] {
        let (event, arrived_at, stream) = tokio::time::timeout(LIVE, watcher)
            .await
            .expect("item_added within a second of the delivery being recorded")
            .unwrap();
        assert!(
            arrived_at - delivered_at <= chrono::Duration::from_std(LIVE).unwrap(),
            "item_added arrived {} after the delivery was recorded",
            arrived_at - delivered_at
        );
        match event {
            Event::ItemAdded(added) => {
                let item = added.item.expect("the item");
                assert_eq!(item.title, "Shipped: kettle");
                assert_eq!(item.delivery_id, notification.deliveries[0].id);
                assert_eq!(added.unread_count, 1);
            }
            other => panic!("expected item_added, got {other:?}"),
        }
        streams.push(stream);
    }
    let [mut stream_a, mut stream_b]: [Streaming<InboxEvent>; 2] =
        streams.try_into().expect("two streams");
    let (items, _, _) = list(
        &mut client_a,
        ListInboxRequest {
            user_id: "user-1".into(),
            ..ListInboxRequest::default()
        },
    )
    .await;
    let item_id = items[0].id.clone();

    // Read on replica A: replica B's stream (and A's) learns it, and the counts agree.
    let read = client_a
        .mark_read(MarkReadRequest {
            user_id: "user-1".into(),
            item_ids: vec![item_id.clone()],
        })
        .await
        .expect("MarkRead")
        .into_inner();
    assert_eq!(read.changed_ids, std::slice::from_ref(&item_id));
    assert_eq!(read.unread_count, 0);
    for stream in [&mut stream_b, &mut stream_a] {
        match next(stream, LIVE).await {
            Event::ItemsRead(event) => {
                assert_eq!(event.item_ids, std::slice::from_ref(&item_id));
                assert_eq!(event.unread_count, 0);
            }
            other => panic!("expected items_read, got {other:?}"),
        }
    }
    assert_eq!(unread(&mut client_a, "user-1").await, 0);
    assert_eq!(unread(&mut client_b, "user-1").await, 0);

    // Reading it again (on B) changes nothing, records nothing and signals nothing: the next
    // event the streams see is the archive that follows.
    let again = client_b
        .mark_read(MarkReadRequest {
            user_id: "user-1".into(),
            item_ids: vec![item_id.clone()],
        })
        .await
        .expect("MarkRead again")
        .into_inner();
    assert!(again.changed_ids.is_empty());
    let delivery_id = &notification.deliveries[0].id;
    assert_eq!(
        tracking_events(&app, delivery_id).await,
        [("read".to_owned(), 1)]
    );
    client_b
        .archive(ArchiveRequest {
            user_id: "user-1".into(),
            item_ids: vec![item_id.clone()],
        })
        .await
        .expect("Archive");
    for stream in [&mut stream_a, &mut stream_b] {
        match next(stream, LIVE).await {
            Event::ItemsArchived(event) => {
                assert_eq!(event.item_ids, std::slice::from_ref(&item_id))
            }
            other => panic!("expected items_archived, got {other:?}"),
        }
    }
    assert_eq!(
        tracking_events(&app, delivery_id).await,
        [("read".to_owned(), 1), ("dismissed".to_owned(), 1)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_inbox_pages_newest_first_and_filters_unread_and_archived_items() {
    let app = in_app_app().await;
    let mut delivered = Vec::new();
    for order in ["1", "2", "3"] {
        delivered.push(deliver(&app, "user-1", order).await);
    }
    deliver(&app, "user-2", "9").await;
    let mut client = app.inbox_client_at(app.address, As::Orders).await;
    let page = |page_token: String| ListInboxRequest {
        user_id: "user-1".into(),
        page_size: 2,
        page_token,
        ..ListInboxRequest::default()
    };
    let (first, token, unread_count) = list(&mut client, page(String::new())).await;
    assert_eq!(unread_count, 3);
    assert_eq!(first.len(), 2);
    assert!(!token.is_empty());
    let (second, last_token, _) = list(&mut client, page(token)).await;
    assert_eq!(second.len(), 1);
    assert_eq!(last_token, "");
    let urls: Vec<&str> = first
        .iter()
        .chain(&second)
        .map(|item| item.action_url.as_str())
        .collect();
    assert_eq!(
        urls,
        [
            "https://shop.example/orders/3",
            "https://shop.example/orders/2",
            "https://shop.example/orders/1",
        ]
    );

    let newest = first[0].id.clone();
    let oldest = second[0].id.clone();
    client
        .mark_read(MarkReadRequest {
            user_id: "user-1".into(),
            item_ids: vec![newest.clone()],
        })
        .await
        .expect("MarkRead");
    client
        .archive(ArchiveRequest {
            user_id: "user-1".into(),
            item_ids: vec![oldest.clone()],
        })
        .await
        .expect("Archive");
    let ids = |items: Vec<InboxItem>| items.into_iter().map(|item| item.id).collect::<Vec<_>>();
    let (unread_items, _, unread_count) = list(
        &mut client,
        ListInboxRequest {
            user_id: "user-1".into(),
            unread_only: true,
            ..ListInboxRequest::default()
        },
    )
    .await;
    assert_eq!(ids(unread_items), [first[1].id.clone()]);
    assert_eq!(unread_count, 1);
    let (visible, _, _) = list(
        &mut client,
        ListInboxRequest {
            user_id: "user-1".into(),
            ..ListInboxRequest::default()
        },
    )
    .await;
    assert_eq!(ids(visible), [newest.clone(), first[1].id.clone()]);
    let (everything, _, _) = list(
        &mut client,
        ListInboxRequest {
            user_id: "user-1".into(),
            include_archived: true,
            ..ListInboxRequest::default()
        },
    )
    .await;
    assert_eq!(everything.len(), 3);
    assert!(everything[2].archived_at.is_some());

    let all = client
        .mark_all_read(MarkAllReadRequest {
            user_id: "user-1".into(),
        })
        .await
        .expect("MarkAllRead")
        .into_inner();
    assert_eq!((all.marked, all.unread_count), (1, 0));
    assert_eq!(unread(&mut client, "user-2").await, 1);

    for (request, field) in [
        (
            ListInboxRequest {
                user_id: "user-1".into(),
                page_token: "not-a-token".into(),
                ..ListInboxRequest::default()
            },
            "page_token",
        ),
        (
            ListInboxRequest {
                user_id: "user-1".into(),
                page_size: 101,
                ..ListInboxRequest::default()
            },
            "page_size",
        ),
        (ListInboxRequest::default(), "user_id"),
    ] {
        let status = client.list_inbox(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with(field), "{}", status.message());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn another_users_item_is_not_found_and_nothing_changes() {
    let app = in_app_app().await;
    deliver(&app, "user-1", "1").await;
    let theirs = deliver(&app, "user-2", "2").await;
    let mut client = app.inbox_client_at(app.address, As::Orders).await;
    let (items, _, _) = list(
        &mut client,
        ListInboxRequest {
            user_id: "user-1".into(),
            ..ListInboxRequest::default()
        },
    )
    .await;
    let (their_items, _, _) = list(
        &mut client,
        ListInboxRequest {
            user_id: "user-2".into(),
            ..ListInboxRequest::default()
        },
    )
    .await;
    let mine = items[0].id.clone();
    let their_item = their_items[0].id.clone();

    let read = client
        .mark_read(MarkReadRequest {
            user_id: "user-1".into(),
            item_ids: vec![mine.clone(), their_item.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(read.code(), tonic::Code::NotFound);
    assert!(read.message().contains(&their_item), "{}", read.message());
    let archive = client
        .archive(ArchiveRequest {
            user_id: "user-1".into(),
            item_ids: vec![their_item.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(archive.code(), tonic::Code::NotFound);
    assert_eq!(unread(&mut client, "user-1").await, 1);
    assert_eq!(unread(&mut client, "user-2").await, 1);
    assert!(
        tracking_events(&app, &theirs.deliveries[0].id)
            .await
            .is_empty()
    );

    let invalid = client
        .mark_read(MarkReadRequest {
            user_id: "user-1".into(),
            item_ids: vec!["kettle".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    assert!(
        invalid.message().starts_with("item_ids[0]"),
        "{}",
        invalid.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn inbox_calls_need_the_inbox_permissions() {
    let app = TestApp::spawn().await;
    // A replica where the orders identity may submit but not read inboxes.
    let mut settings = app.api_replica_settings();
    for principal in &mut settings.auth.principals {
        principal.roles.retain(|role| role != "inbox");
    }
    let replica = app.spawn_api_replica_with(settings).await;
    let mut denied = app.inbox_client_at(replica, As::Orders).await;
    let status = denied
        .list_inbox(ListInboxRequest {
            user_id: "user-1".into(),
            ..ListInboxRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "ListInbox needs the inbox.read permission, which spiffe://herald.local/service/orders does not have"
    );
    let status = denied
        .subscribe(SubscribeRequest {
            user_id: "user-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    // Admins hold every permission.
    let mut admin = app.inbox_client_at(replica, As::Admin).await;
    assert_eq!(unread(&mut admin, "user-1").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_message_does_not_create_a_second_item() {
    let app = in_app_app().await;
    let mut client = app.inbox_client_at(app.address, As::Orders).await;
    let mut stream = subscribe(&mut client, "user-1").await;
    next(&mut stream, LIVE).await;
    let notification = deliver(&app, "user-1", "42").await;
    assert!(matches!(next(&mut stream, LIVE).await, Event::ItemAdded(_)));
    let delivery = &notification.deliveries[0];

    // As if the worker had stored the item and died before recording the outcome: the
    // delivery is still `sending` with an expired lease, and the broker redelivers the message.
    {
        use herald_db::schema::deliveries;
        let delivery_id: uuid::Uuid = delivery.id.parse().unwrap();
        let mut connection = app.pool.get().await.unwrap();
        diesel::update(deliveries::table.find(delivery_id))
            .set((
                deliveries::state.eq("sending"),
                deliveries::lease_until.eq(chrono::Utc::now() - chrono::Duration::seconds(1)),
            ))
            .execute(&mut connection)
            .await
            .unwrap();
    }
    let connection = herald_queue::connect(app.vhost.amqp_url(), "test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let message = herald_proto::queue::DeliveryMessage {
        delivery_id: delivery.id.clone(),
        notification_id: notification.id.clone(),
        ..Default::default()
    };
    channel
        .basic_publish(
            herald_queue::EXCHANGE.into(),
            "in_app".into(),
            BasicPublishOptions::default(),
            &message.encode_to_vec(),
            BasicProperties::default().with_priority(WirePriority::Normal as u8),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let again = herald_test_support::eventually(
        "the redelivered message to be handled",
        Duration::from_secs(20),
        || async {
            let again = app.notification(&notification.id).await;
            (again.deliveries[0].attempts == 2
                && again.deliveries[0].state() == DeliveryState::Delivered)
                .then_some(again)
        },
    )
    .await;
    assert_eq!(again.status(), NotificationStatus::Delivered);
    // The second attempt did call the provider, which found the item already stored.
    let outcomes: Vec<(herald_db::personal::PersonalText, Option<String>)> = {
        use herald_db::schema::delivery_events;
        let delivery_id: uuid::Uuid = delivery.id.parse().unwrap();
        let mut connection = app.pool.get().await.unwrap();
        delivery_events::table
            .filter(delivery_events::delivery_id.eq(delivery_id))
            .filter(delivery_events::kind.eq("delivered"))
            .order(delivery_events::id.asc())
            .select((delivery_events::detail, delivery_events::provider))
            .load(&mut connection)
            .await
            .unwrap()
    };
    let inbox = Some("inbox".to_owned());
    assert_eq!(
        outcomes,
        [
            ("inbox: stored in the inbox".into(), inbox.clone()),
            ("inbox: already in the inbox".into(), inbox),
        ]
    );
    let (items, _, unread_count) = list(
        &mut client,
        ListInboxRequest {
            user_id: "user-1".into(),
            include_archived: true,
            ..ListInboxRequest::default()
        },
    )
    .await;
    assert_eq!(items.len(), 1);
    assert_eq!(unread_count, 1);
    assert_eq!(app.count_rows("inbox_items").await, 1);

    // No second item_added either: the next event is the one this test causes now.
    client
        .mark_all_read(MarkAllReadRequest {
            user_id: "user-1".into(),
        })
        .await
        .expect("MarkAllRead");
    assert!(matches!(
        next(&mut stream, LIVE).await,
        Event::AllRead(all) if all.unread_count == 0
    ));
}
