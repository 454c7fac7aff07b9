//! `InboxHub`: one pub/sub connection per replica, per-user channels, resync after gaps.

use std::time::Duration;

use herald_inbox::{InboxHub, InboxPublisher, InboxSettings, Signal, Subscription, Update};
use herald_test_support::{FaultProxy, TestKeyspace, eventually, socket_address_of};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::redis_settings;

/// Fast reconnects and checks, for tests.
fn settings() -> InboxSettings {
    InboxSettings {
        subscribe_timeout: Duration::from_secs(2),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ping_interval: Duration::from_millis(200),
        ..InboxSettings::default()
    }
}

/// Starts a hub (a replica's fan-out) at `url` (the keyspace's Redis by default); it stops
/// when the returned token's guard drops.
fn start_hub(
    keyspace: &TestKeyspace,
    url: Option<&str>,
    settings: InboxSettings,
) -> (InboxHub, tokio_util::sync::DropGuard) {
    let hub = InboxHub::new(&redis_settings(keyspace, url), settings).expect("a hub");
    let shutdown = CancellationToken::new();
    tokio::spawn(hub.clone().run(shutdown.clone()));
    (hub, shutdown.drop_guard())
}

async fn next(subscription: &mut Subscription) -> Update {
    tokio::time::timeout(Duration::from_secs(5), subscription.recv())
        .await
        .expect("an update within 5 s")
}

/// Subscribers of `channel` on the Redis server (one per replica connection).
async fn subscribers(keyspace: &TestKeyspace, channel: &str) -> i64 {
    let mut connection = redis::Client::open(keyspace.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let (_, count): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut connection)
        .await
        .unwrap();
    count
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signal_reaches_every_stream_of_its_user_on_every_replica_and_no_other_user() {
    let keyspace = TestKeyspace::default();
    let (replica_a, _stop_a) = start_hub(&keyspace, None, settings());
    let (replica_b, _stop_b) = start_hub(&keyspace, None, settings());
    let mut first = replica_a.subscribe("user-1").await;
    let mut second = replica_a.subscribe("user-1").await;
    let mut third = replica_b.subscribe("user-1").await;
    let mut other = replica_b.subscribe("user-2").await;
    let publisher = InboxPublisher::new(&redis_settings(&keyspace, None)).unwrap();

    let signal = Signal::ItemsRead {
        item_ids: vec![Uuid::now_v7()],
    };
    assert_eq!(publisher.publish("user-1", &signal).await.unwrap(), 2);
    for stream in [&mut first, &mut second, &mut third] {
        assert_eq!(next(stream).await, Update::Signal(signal.clone()));
    }
    publisher.publish("user-2", &Signal::AllRead).await.unwrap();
    assert_eq!(next(&mut other).await, Update::Signal(Signal::AllRead));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_unsubscribes_when_the_users_last_stream_closes() {
    let keyspace = TestKeyspace::default();
    let (hub, _stop) = start_hub(&keyspace, None, settings());
    let channel = herald_redis::Keyspace::new(keyspace.prefix()).inbox_channel("user-1");
    let first = hub.subscribe("user-1").await;
    let second = hub.subscribe("user-1").await;
    assert_eq!(subscribers(&keyspace, &channel).await, 1);
    drop(first);
    drop(second);
    eventually(
        "the channel to be unsubscribed",
        Duration::from_secs(5),
        || async { (subscribers(&keyspace, &channel).await == 0).then_some(()) },
    )
    .await;

    let mut again = hub.subscribe("user-1").await;
    assert_eq!(subscribers(&keyspace, &channel).await, 1);
    let publisher = InboxPublisher::new(&redis_settings(&keyspace, None)).unwrap();
    publisher.publish("user-1", &Signal::AllRead).await.unwrap();
    assert_eq!(next(&mut again).await, Update::Signal(Signal::AllRead));
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_get_a_resync_after_the_connection_comes_back_and_then_signals_again() {
    let keyspace = TestKeyspace::default();
    let target = socket_address_of(keyspace.url());
    let proxy = FaultProxy::start(target).await;
    let url = proxy.rewrite(keyspace.url(), target);
    let (hub, _stop) = start_hub(&keyspace, Some(&url), settings());
    let mut stream = hub.subscribe("user-1").await;
    let channel = herald_redis::Keyspace::new(keyspace.prefix()).inbox_channel("user-1");
    assert_eq!(subscribers(&keyspace, &channel).await, 1);

    proxy.cut();
    eventually(
        "Redis to see the replica go",
        Duration::from_secs(5),
        || async { (subscribers(&keyspace, &channel).await == 0).then_some(()) },
    )
    .await;
    proxy.restore();
    assert_eq!(next(&mut stream).await, Update::Resync);

    let publisher = InboxPublisher::new(&redis_settings(&keyspace, None)).unwrap();
    publisher.publish("user-1", &Signal::AllRead).await.unwrap();
    assert_eq!(next(&mut stream).await, Update::Signal(Signal::AllRead));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_opened_while_redis_is_away_gets_a_resync_once_subscribed() {
    let keyspace = TestKeyspace::default();
    let target = socket_address_of(keyspace.url());
    let proxy = FaultProxy::start(target).await;
    proxy.cut();
    let url = proxy.rewrite(keyspace.url(), target);
    let (hub, _stop) = start_hub(
        &keyspace,
        Some(&url),
        InboxSettings {
            subscribe_timeout: Duration::from_millis(300),
            ..settings()
        },
    );
    // Returns after `subscribe_timeout`, without a confirmed subscription.
    let mut stream = hub.subscribe("user-1").await;
    proxy.restore();
    assert_eq!(next(&mut stream).await, Update::Resync);

    let publisher = InboxPublisher::new(&redis_settings(&keyspace, None)).unwrap();
    publisher.publish("user-1", &Signal::AllRead).await.unwrap();
    assert_eq!(next(&mut stream).await, Update::Signal(Signal::AllRead));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_falls_behind_gets_a_resync_instead_of_what_it_missed() {
    let keyspace = TestKeyspace::default();
    let (hub, _stop) = start_hub(
        &keyspace,
        None,
        InboxSettings {
            stream_buffer: 2,
            ..settings()
        },
    );
    let mut slow = hub.subscribe("user-1").await;
    let mut fast = hub.subscribe("user-1").await;
    let publisher = InboxPublisher::new(&redis_settings(&keyspace, None)).unwrap();
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    for id in &ids {
        publisher
            .publish("user-1", &Signal::ItemAdded { item_id: *id })
            .await
            .unwrap();
    }
    // Once the fast stream saw the last signal, all five went through the replica.
    let last = Update::Signal(Signal::ItemAdded { item_id: ids[4] });
    while next(&mut fast).await != last {}
    assert_eq!(next(&mut slow).await, Update::Resync);
    assert_eq!(
        next(&mut slow).await,
        Update::Signal(Signal::ItemAdded { item_id: ids[3] })
    );
    assert_eq!(next(&mut slow).await, last);
}
