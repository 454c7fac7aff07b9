//! The relay's reconciler: a delivery whose queue message the broker lost is published again
//! after `reconcile.after`, and a message that was only slow makes a harmless duplicate.

use std::time::Duration;

use herald_proto::submit::NotificationStatus;
use herald_test_support::eventually;

use crate::harness::{Options, TestApp, welcome_request};
use crate::observability::{sample, scrape};

const QUEUE: &str = "herald.email.deliver";
const WAIT: Duration = Duration::from_secs(30);

/// An app whose relay reconciles every 100 ms, after one second, with no email worker yet.
async fn reconciling_app() -> TestApp {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        reconcile: herald_relay::ReconcileSettings {
            after: Duration::from_secs(1),
            interval: Duration::from_millis(100),
            batch_size: 10,
        },
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    app
}

/// `reconciling_app` with one email submitted; returns its notification id too.
async fn reconciling_app_with_one_email() -> (TestApp, String) {
    let app = reconciling_app().await;
    let id = app
        .submit(welcome_request("ada@example.com"))
        .await
        .unwrap()
        .notification_id;
    (app, id)
}

/// Waits until `queue` holds `count` ready messages.
async fn wait_for_ready(app: &TestApp, count: u32, what: &str) {
    eventually(what, WAIT, || async {
        (app.vhost.ready_messages(QUEUE).await == count).then_some(())
    })
    .await;
}

/// The relay's `herald_outbox_reconciled_total` for email.
async fn reconciled(app: &TestApp) -> f64 {
    sample(
        &scrape(app.relay_metrics).await,
        "herald_outbox_reconciled_total",
        &[("herald_channel", "email")],
    )
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_whose_queue_message_was_lost_is_published_again_and_delivered_once() {
    let (app, id) = reconciling_app_with_one_email().await;
    wait_for_ready(&app, 1, "the relay to publish the delivery").await;

    // The broker loses the message (a node failure with a classic queue).
    app.vhost.purge_queue(QUEUE).await;
    assert_eq!(app.vhost.ready_messages(QUEUE).await, 0);
    app.start_email_worker(8);

    app.wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    let emails = app.smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(emails.len(), 1);
    assert_eq!(emails[0].to, ["ada@example.com"]);
    let delivery = &app.notification(&id).await.deliveries[0];
    assert_eq!(delivery.attempts, 1, "{delivery:?}");
    assert_eq!(app.count_rows("outbox").await, 0);
    assert!(reconciled(&app).await >= 1.0);
}

/// The relay's `herald_outbox_reconcile_deferred_total` for email: passes that left the
/// channel alone because its work queue held messages.
async fn deferred(app: &TestApp) -> f64 {
    sample(
        &scrape(app.relay_metrics).await,
        "herald_outbox_reconcile_deferred_total",
        &[("herald_channel", "email")],
    )
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_is_not_taken_for_lost_and_its_message_is_found_once_the_queue_is_empty() {
    let (app, id) = reconciling_app_with_one_email().await;
    wait_for_ready(&app, 1, "the relay to publish the delivery").await;

    // No worker consumes: the message waits in the queue well past the threshold (twenty
    // passes of 100 ms after a one-second threshold), like a campaign's backlog.
    eventually(
        "twenty reconciler passes to see the backlog",
        WAIT,
        || async { (deferred(&app).await >= 20.0).then_some(()) },
    )
    .await;
    assert_eq!(app.vhost.ready_messages(QUEUE).await, 1, "no second copy");
    assert_eq!(reconciled(&app).await, 0.0);

    // Now the broker loses it: the queue is empty, and the delivery is published again.
    app.vhost.purge_queue(QUEUE).await;
    wait_for_ready(&app, 1, "the reconciler to publish it again").await;
    app.start_email_worker(8);
    app.wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    let emails = app.smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(emails.len(), 1);
    assert!(reconciled(&app).await >= 1.0);
}
