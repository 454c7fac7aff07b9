//! `InboxChannel`: the in-app provider stores each delivery once and signals it once.

use std::time::Duration;

use herald_db::inbox::{self, InboxQuery};
use herald_inbox::{InboxChannel, InboxHub, InboxPublisher, InboxSettings, Signal, Update};
use herald_test_support::TestKeyspace;
use herald_worker::{ChannelProvider, DeliveryError};
use tokio_util::sync::CancellationToken;

use crate::{Storage, redis_settings};

async fn items(storage: &Storage, user_id: &str) -> Vec<inbox::InboxItem> {
    let mut connection = storage.connect().await;
    inbox::list(
        &mut connection,
        user_id,
        &InboxQuery {
            limit: 100,
            include_archived: true,
            ..InboxQuery::default()
        },
    )
    .await
    .expect("listing")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_in_app_delivery_is_rendered_stored_and_signalled_once() {
    let storage = Storage::new().await;
    let keyspace = TestKeyspace::default();
    let redis = redis_settings(&keyspace, None);
    let hub = InboxHub::new(&redis, InboxSettings::default()).unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(hub.clone().run(shutdown.clone()));
    let mut stream = hub.subscribe("user-1").await;
    let publisher = InboxPublisher::new(&redis).unwrap();
    let provider = InboxChannel::new(storage.pool.clone(), publisher.clone());

    let delivery_id = storage.in_app_deliveries(Some("user-1"), 1).await[0];
    let context = storage.claim(delivery_id).await;
    let attempted = provider.deliver(&context).await;
    assert_eq!(attempted.provider, "inbox");
    assert_eq!(attempted.result.unwrap().detail, "stored in the inbox");

    let stored = items(&storage, "user-1").await;
    assert_eq!(stored.len(), 1);
    let item = &stored[0];
    assert_eq!(item.title.expose(), "Shipped: kettle");
    assert_eq!(item.body.expose(), "Hi Ada, your kettle is on its way.");
    assert_eq!(item.action_url.expose(), "https://shop.example/orders/42");
    assert_eq!(item.category, "orders");
    assert_eq!(item.delivery_id, delivery_id);
    assert_eq!(item.notification_id, context.notification_id);
    assert_eq!(item.read_at, None);
    let received = tokio::time::timeout(Duration::from_secs(5), stream.recv())
        .await
        .expect("item_added within 5 s");
    assert_eq!(
        received,
        Update::Signal(Signal::ItemAdded { item_id: item.id })
    );

    // The same message again (redelivered, or a retry after a lost outcome).
    let again = provider.deliver(&context).await;
    assert_eq!(again.result.unwrap().detail, "already in the inbox");
    assert_eq!(items(&storage, "user-1").await.len(), 1);
    // Redis delivers one channel's messages in order: had the second attempt signalled, its
    // signal would arrive before this marker.
    publisher.publish("user-1", &Signal::AllRead).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), stream.recv())
        .await
        .expect("the marker within 5 s");
    assert_eq!(next, Update::Signal(Signal::AllRead));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_without_a_user_id_fails_permanently_and_stores_nothing() {
    let storage = Storage::new().await;
    let keyspace = TestKeyspace::default();
    let provider = InboxChannel::new(
        storage.pool.clone(),
        InboxPublisher::new(&redis_settings(&keyspace, None)).unwrap(),
    );
    let delivery_id = storage.in_app_deliveries(None, 1).await[0];
    let attempted = provider.deliver(&storage.claim(delivery_id).await).await;
    assert!(
        matches!(attempted.result, Err(DeliveryError::Permanent(ref message)) if message.contains("user_id")),
        "{attempted:?}"
    );
    let mut connection = storage.connect().await;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let count: i64 = herald_db::schema::inbox_items::table
        .count()
        .get_result(&mut connection)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_away_the_item_is_still_stored_and_delivered() {
    let storage = Storage::new().await;
    let keyspace = TestKeyspace::default();
    let unreachable = format!("redis://127.0.0.1:{}", herald_test_support::refused_port());
    let mut redis = redis_settings(&keyspace, Some(&unreachable));
    redis.timeout = Duration::from_millis(300);
    let provider = InboxChannel::new(storage.pool.clone(), InboxPublisher::new(&redis).unwrap());
    let delivery_id = storage.in_app_deliveries(Some("user-1"), 1).await[0];
    let attempted = provider.deliver(&storage.claim(delivery_id).await).await;
    assert_eq!(attempted.result.unwrap().detail, "stored in the inbox");
    assert_eq!(items(&storage, "user-1").await.len(), 1);
}
