//! Faults injected for real: dependencies taken away through TCP proxies, workers killed
//! mid-delivery. Each test checks the ledger that matters: every accepted notification is
//! delivered, none twice (by `Message-ID`, the email channel's idempotency key).

use std::collections::BTreeMap;
use std::time::Duration;

use herald_proto::submit::{DeliveryState, NotificationStatus};
use herald_test_support::{FaultProxy, eventually};
use tonic::Code;

use crate::harness::{Options, TestApp, welcome_request};

const WAIT: Duration = Duration::from_secs(60);

/// Submits `count` notifications to distinct recipients; returns their ids.
async fn submit_many(app: &TestApp, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for index in 0..count {
        let response = app
            .submit(welcome_request(&format!("user{index}@example.com")))
            .await
            .expect("submits succeed");
        ids.push(response.notification_id);
    }
    ids
}

/// Waits until every notification is delivered and the SMTP server holds exactly one email
/// per delivery (counting by Message-ID).
async fn assert_each_delivered_once(app: &TestApp, ids: &[String]) {
    for id in ids {
        app.wait_for_status(id, NotificationStatus::Delivered).await;
    }
    let emails = app.smtp.wait_for_messages(ids.len(), WAIT).await;
    let mut per_message_id: BTreeMap<String, usize> = BTreeMap::new();
    for email in &emails {
        *per_message_id
            .entry(email.message_id.clone().unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(per_message_id.len(), ids.len(), "lost deliveries");
    assert!(
        per_message_id.values().all(|count| *count == 1),
        "duplicates: {per_message_id:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn submits_succeed_while_rabbitmq_is_away_and_everything_is_delivered_once_it_returns() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    app.amqp_proxy.cut();

    let ids = submit_many(&app, 50).await;
    let pending = app.notification(&ids[49]).await;
    assert_eq!(pending.deliveries[0].state(), DeliveryState::Pending);

    app.amqp_proxy.restore();
    assert_each_delivered_once(&app, &ids).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_dropping_connections_mid_traffic_loses_and_duplicates_nothing() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let mut ids = submit_many(&app, 40).await;
    app.amqp_proxy.cut();
    ids.extend(submit_many(&app, 40).await);
    app.amqp_proxy.restore();
    ids.extend(submit_many(&app, 40).await);
    app.amqp_proxy.cut();
    app.amqp_proxy.restore();
    assert_each_delivered_once(&app, &ids).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_queue_makes_publishes_unroutable_until_the_relay_redeclares_it() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let first = submit_many(&app, 1).await;
    app.wait_for_status(&first[0], NotificationStatus::Delivered)
        .await;

    app.vhost.delete_queue("herald.email.deliver").await;
    let ids = submit_many(&app, 10).await;

    assert_each_delivered_once(&app, &[first, ids].concat()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_unavailable_while_postgresql_is_away_and_recovers_without_a_restart() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    app.database_proxy.cut();

    let status = app
        .submit(welcome_request("ada@example.com"))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        app.count_rows("notifications").await,
        0,
        "never OK without a commit"
    );
    app.database_proxy.restore();
    let ids = eventually("submits to succeed again", WAIT, || async {
        app.submit(welcome_request("ada@example.com"))
            .await
            .ok()
            .map(|response| vec![response.notification_id])
    })
    .await;
    assert_each_delivered_once(&app, &ids).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_loses_postgresql_requeues_messages_instead_of_losing_them() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let ids = submit_many(&app, 20).await;
    eventually("the relay to queue everything", WAIT, || async {
        (app.vhost.ready_messages("herald.email.deliver").await == 20).then_some(())
    })
    .await;

    app.database_proxy.cut();
    app.start_email_worker(4);
    eventually("the worker to take messages", WAIT, || async {
        (app.vhost.ready_messages("herald.email.deliver").await < 20).then_some(())
    })
    .await;
    app.database_proxy.restore();

    assert_each_delivered_once(&app, &ids).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_between_claim_and_send_loses_nothing() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    // The doomed worker's SMTP server hangs, so it is stuck after its claim, before sending.
    let smtp_proxy = FaultProxy::start(app.smtp.address()).await;
    smtp_proxy.stall();
    let mut settings = app.email_worker_settings(1);
    settings.smtp.port = smtp_proxy.address().port();
    settings.worker.lease = Duration::from_secs(1);
    let doomed = tokio::spawn(
        herald_email_worker::Application::build(settings)
            .unwrap()
            .run_until_stopped(tokio_util::sync::CancellationToken::new()),
    );
    let ids = submit_many(&app, 1).await;
    eventually("the doomed worker's claim", WAIT, || async {
        (app.notification(&ids[0]).await.deliveries[0].state() == DeliveryState::Sending)
            .then_some(())
    })
    .await;

    // SIGKILL, in-process: the task and its AMQP connection vanish without a word.
    doomed.abort();
    let _ = doomed.await;
    smtp_proxy.restore();
    let mut settings = app.email_worker_settings(1);
    settings.worker.lease = Duration::from_secs(1);
    tokio::spawn(
        herald_email_worker::Application::build(settings)
            .unwrap()
            .run_until_stopped(tokio_util::sync::CancellationToken::new()),
    );

    assert_each_delivered_once(&app, &ids).await;
    let delivery = &app.notification(&ids[0]).await.deliveries[0];
    assert_eq!(
        delivery.attempts, 2,
        "the lease expired and the delivery was taken over"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_between_sending_and_recording_causes_no_effective_duplicate() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let sent = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut settings = app.email_worker_settings(1);
    settings.worker.lease = Duration::from_secs(1);
    let provider = CrashAfterSend {
        inner: herald_email_worker::SmtpProvider::new(&settings.smtp).unwrap(),
        sent: std::sync::Arc::clone(&sent),
    };
    let pool = herald_db::build_pool(&settings.database).unwrap();
    let doomed = tokio::spawn(
        herald_worker::Worker::new(
            provider,
            settings.worker.clone(),
            settings.amqp.clone(),
            pool,
            "doomed",
        )
        .run_until_stopped(tokio_util::sync::CancellationToken::new()),
    );
    let ids = submit_many(&app, 1).await;
    sent.notified().await;
    doomed.abort();
    let _ = doomed.await;

    tokio::spawn(
        herald_email_worker::Application::build(settings)
            .unwrap()
            .run_until_stopped(tokio_util::sync::CancellationToken::new()),
    );
    app.wait_for_status(&ids[0], NotificationStatus::Delivered)
        .await;
    let emails = app.smtp.wait_for_messages(2, WAIT).await;
    assert_eq!(
        emails.len(),
        2,
        "the outcome was unknown, so the email channel resent"
    );
    assert_eq!(
        emails[0].message_id, emails[1].message_id,
        "with the same Message-ID: one effective email"
    );
}

/// Sends for real, then hangs forever before the outcome can be recorded, like a process
/// killed right after the provider answered.
struct CrashAfterSend {
    inner: herald_email_worker::SmtpProvider,
    sent: std::sync::Arc<tokio::sync::Notify>,
}

impl herald_worker::ChannelProvider for CrashAfterSend {
    fn channel(&self) -> herald_domain::Channel {
        herald_domain::Channel::Email
    }

    fn name(&self) -> &str {
        "smtp"
    }

    async fn deliver(
        &self,
        context: &herald_db::deliveries::DeliveryContext,
    ) -> Result<herald_worker::Receipt, herald_worker::DeliveryError> {
        self.inner.deliver(context).await?;
        self.sent.notify_one();
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn critical_notifications_still_go_out_while_rabbitmq_is_away_and_are_not_sent_twice() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    app.amqp_proxy.cut();

    let mut critical = welcome_request("oncall@example.com");
    critical.priority = herald_proto::common::Priority::Critical.into();
    let critical_id = app.submit(critical).await.unwrap().notification_id;
    let bulk_id = app
        .submit(welcome_request("bulk@example.com"))
        .await
        .unwrap()
        .notification_id;

    app.wait_for_status(&critical_id, NotificationStatus::Delivered)
        .await;
    let emails = app.smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(emails[0].to, ["oncall@example.com"]);
    let bulk = app.notification(&bulk_id).await;
    assert_eq!(
        bulk.deliveries[0].state(),
        DeliveryState::Pending,
        "only critical traffic takes the emergency path"
    );

    app.amqp_proxy.restore();
    assert_each_delivered_once(&app, &[critical_id, bulk_id]).await;
}
