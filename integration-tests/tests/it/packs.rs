//! Several deliveries in one queue message (`relay.message_max`, a `DeliveryBatch`): each is
//! attempted, recorded and, when it fails, dead-lettered or retried on its own, and the
//! message is acked once every one of them is settled.

use std::sync::Arc;
use std::time::Duration;

use herald_domain::{Clock as _, ManualClock};

use herald_proto::queue::DeliveryMessage;
use herald_proto::submit::{DeliveryState, NotificationStatus, SubmitBatchRequest, SubmitRequest};
use herald_queue::lapin::options::BasicGetOptions;
use prost::Message as _;

use crate::harness::{As, Options, TestApp, welcome_request};

const WAIT: Duration = Duration::from_secs(20);
const WORK_QUEUE: &str = "herald.email.deliver";
const DEAD_LETTERS: &str = "herald.email.deliver.dlq";

/// An app without an email worker whose clock the test moves, its relay packing up to 16
/// deliveries per message.
async fn app_with_manual_clock() -> (TestApp, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        clock: Some(clock.clone()),
        relay_message_max: 16,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    (app, clock)
}

/// Submits `addresses` in one `SubmitBatch`, every one scheduled an hour ahead, then moves
/// the clock there: the relay finds them all due at once, so they travel in one message (or
/// two, when both of its publishers take some).
/// Returns the notification ids in order once every delivery is published.
async fn submit_packed(app: &TestApp, clock: &ManualClock, addresses: &[&str]) -> Vec<String> {
    let later = clock.now() + chrono::Duration::hours(1);
    let items: Vec<SubmitRequest> = addresses
        .iter()
        .map(|to| {
            let mut request = welcome_request(to);
            request.send_at = Some(herald_proto::conversions::timestamp(later));
            request
        })
        .collect();
    let results = app
        .submit_client(As::Orders)
        .await
        .submit_batch(SubmitBatchRequest { items })
        .await
        .expect("SubmitBatch")
        .into_inner()
        .results;
    let ids: Vec<String> = results
        .into_iter()
        .map(|result| {
            assert_eq!(result.code, 0, "{}", result.message);
            result.accepted.expect("accepted").notification_id
        })
        .collect();
    clock.set(later);
    app.wait_until_queued(i64::try_from(ids.len()).expect("a few"))
        .await;
    // The relay's two publishers may split them between them, never more.
    let messages = app.vhost.ready_messages(WORK_QUEUE).await;
    assert!(
        messages <= 2,
        "{} deliveries of one channel and priority travel in one message per publisher, not {messages}",
        ids.len()
    );
    ids
}

/// Waits until the work queue holds nothing, ready or unacknowledged: every message was
/// acked, none is held back or waiting to be redelivered.
async fn wait_until_work_queue_settled(app: &TestApp) {
    herald_test_support::eventually("every message of the work queue acked", WAIT, || async {
        (app.vhost.messages_held(WORK_QUEUE).await == 0).then_some(())
    })
    .await;
}

/// The delivery ids of the messages in `queue`, each one `DeliveryMessage` (taken off it),
/// sorted.
async fn take_delivery_ids(app: &TestApp, queue: &str) -> Vec<String> {
    let connection = herald_queue::connect(app.vhost.amqp_url(), "packs-test")
        .await
        .expect("connecting");
    let channel = connection.create_channel().await.expect("a channel");
    let mut ids = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let message = DeliveryMessage::decode(message.delivery.data.as_slice())
            .expect("one DeliveryMessage per message");
        ids.push(message.delivery_id);
    }
    let _closed = connection.close(200, "done".into()).await;
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn packed_deliveries_are_each_sent_once_and_a_bounce_among_them_is_dead_lettered_alone() {
    let (app, clock) = app_with_manual_clock().await;
    let addresses = [
        "ada@example.com",
        "bounce-bo@example.com",
        "cy@example.com",
        "di@example.com",
        "bounce-ed@example.com",
        "flo@example.com",
    ];
    let ids = submit_packed(&app, &clock, &addresses).await;

    app.start_email_worker(8);
    let emails = app.smtp.wait_for_messages(4, WAIT).await;
    let mut failed_deliveries = Vec::new();
    for (id, to) in ids.iter().zip(addresses) {
        if to.starts_with("bounce") {
            let notification = app.wait_for_status(id, NotificationStatus::Failed).await;
            failed_deliveries.push(notification.deliveries[0].id.clone());
        } else {
            app.wait_for_status(id, NotificationStatus::Delivered).await;
        }
    }
    herald_test_support::eventually("two dead letters", WAIT, || async {
        (app.vhost.ready_messages(DEAD_LETTERS).await == 2).then_some(())
    })
    .await;
    wait_until_work_queue_settled(&app).await;

    let mut received: Vec<String> = emails.iter().map(|email| email.to.join(",")).collect();
    received.sort();
    assert_eq!(
        received,
        [
            "ada@example.com",
            "cy@example.com",
            "di@example.com",
            "flo@example.com"
        ]
    );
    assert_eq!(app.smtp.messages().len(), 4, "nothing is sent twice");
    failed_deliveries.sort();
    assert_eq!(
        take_delivery_ids(&app, DEAD_LETTERS).await,
        failed_deliveries
    );
    assert_eq!(app.failure_classes().await, ["permanent", "permanent"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn packed_deliveries_that_fail_retryably_each_get_a_retry_message_of_their_own() {
    let (app, clock) = app_with_manual_clock().await;
    let addresses = ["ada@example.com", "bo@example.com", "cy@example.com"];
    let ids = submit_packed(&app, &clock, &addresses).await;

    // A worker whose SMTP server refuses connections fails every attempt retryably.
    let mut failing = app.email_worker_settings(8);
    failing.smtp.port = herald_test_support::refused_port();
    failing.worker.retry_delays = vec![Duration::from_secs(3600)];
    let retry_delays = failing.worker.retry_queue_delays();
    app.start_email_worker_with(failing);
    let retrying =
        herald_test_support::eventually("three deliveries waiting to retry", WAIT, || async {
            let mut retrying = Vec::new();
            for id in &ids {
                let delivery = app.notification(id).await.deliveries.remove(0);
                if delivery.state() != DeliveryState::RetryWait {
                    return None;
                }
                assert_eq!(delivery.attempts, 1);
                retrying.push(delivery.id);
            }
            Some(retrying)
        })
        .await;
    // Each retry is a message of its own, confirmed before the packed message is acked (in
    // the delay queue of its jittered delay).
    let retry_queues: Vec<String> = retry_delays
        .iter()
        .map(|delay| herald_queue::retry_queue(herald_domain::Channel::Email, *delay))
        .collect();
    herald_test_support::eventually("three retry messages", WAIT, || async {
        let mut waiting = 0;
        for queue in &retry_queues {
            waiting += app.vhost.ready_messages(queue).await;
        }
        (waiting == 3).then_some(())
    })
    .await;
    wait_until_work_queue_settled(&app).await;
    let mut retrying = retrying;
    retrying.sort();
    let mut retried = Vec::new();
    for queue in &retry_queues {
        retried.extend(take_delivery_ids(&app, queue).await);
    }
    retried.sort();
    assert_eq!(retried, retrying);
    assert!(app.smtp.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_is_neither_a_delivery_nor_a_batch_is_dead_lettered_whole() {
    let (app, _clock) = app_with_manual_clock().await;
    let connection = herald_queue::connect(app.vhost.amqp_url(), "packs-test")
        .await
        .expect("connecting");
    let channel = connection.create_channel().await.expect("a channel");
    herald_queue::declare_topology(&channel)
        .await
        .expect("declaring the topology");
    for content_type in [herald_queue::CONTENT_TYPE, herald_queue::BATCH_CONTENT_TYPE] {
        channel
            .basic_publish(
                herald_queue::EXCHANGE.into(),
                "email".into(),
                herald_queue::lapin::options::BasicPublishOptions::default(),
                b"\xff\xff not protobuf",
                herald_queue::lapin::BasicProperties::default()
                    .with_content_type(content_type.into()),
            )
            .await
            .expect("publishing")
            .await
            .expect("confirmed");
    }
    let _closed = connection.close(200, "done".into()).await;

    app.start_email_worker(8);
    herald_test_support::eventually("both messages dead-lettered", WAIT, || async {
        (app.vhost.ready_messages(DEAD_LETTERS).await == 2).then_some(())
    })
    .await;
    wait_until_work_queue_settled(&app).await;
    assert!(app.smtp.messages().is_empty());
}
