//! Faults injected for real: dependencies taken away through TCP proxies, workers killed
//! mid-delivery. Each scenario checks a ledger: the accepted notification ids against what the
//! SMTP server received, counted by `Message-ID` (the email channel's idempotency key).
//!
//! `HERALD_FAULT_SUITE_SIZE` scales the scenarios (default 50 notifications each, which CI
//! runs); `./scripts/faults` runs them serially with a few thousand and prints every ledger.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_proto::submit::{DeliveryState, NotificationStatus};
use herald_test_support::{FaultProxy, eventually};
use tonic::Code;

use crate::harness::{Options, TestApp, welcome_request};

const WAIT: Duration = Duration::from_secs(60);

/// Notifications per scenario.
fn suite_size() -> usize {
    std::env::var("HERALD_FAULT_SUITE_SIZE")
        .ok()
        .and_then(|size| size.parse().ok())
        .unwrap_or(50)
}

/// How long to wait for a scenario of `count` notifications to drain.
fn drain_timeout(count: usize) -> Duration {
    WAIT + Duration::from_millis(50 * count as u64)
}

/// Submits `count` notifications to distinct recipients, 16 at a time; returns their ids.
async fn submit_many(app: &TestApp, count: usize) -> Vec<String> {
    let client = app.submit_client(crate::harness::As::Orders).await;
    futures::stream::iter(0..count)
        .map(|index| {
            let mut client = client.clone();
            async move {
                client
                    .submit(welcome_request(&format!("user{index}@example.com")))
                    .await
                    .expect("submits succeed")
                    .into_inner()
                    .notification_id
            }
        })
        .buffered(16)
        .collect()
        .await
}

/// What a scenario did, checked against what it should have done.
#[derive(Debug)]
struct Ledger {
    scenario: &'static str,
    accepted: usize,
    delivered: usize,
    lost: usize,
    physical_duplicates: usize,
    attempts: i64,
    recovery: Duration,
}

impl Ledger {
    /// Waits until every delivery is delivered (or `drain_timeout` passes), then compares the
    /// accepted ids with the SMTP server's mail. `recovered_from` is when the fault ended.
    async fn settle(
        app: &TestApp,
        scenario: &'static str,
        ids: &[String],
        recovered_from: Instant,
    ) -> Self {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use herald_db::schema::deliveries;
        let count = i64::try_from(ids.len()).unwrap();
        let delivered = eventually(
            &format!("{scenario}: every delivery delivered"),
            drain_timeout(ids.len()),
            || async {
                let mut connection = app.pool.get().await.ok()?;
                let delivered: i64 = deliveries::table
                    .filter(deliveries::state.eq("delivered"))
                    .count()
                    .get_result(&mut connection)
                    .await
                    .ok()?;
                (delivered >= count).then_some(delivered)
            },
        )
        .await;
        let recovery = recovered_from.elapsed();
        let mut connection = app.pool.get().await.unwrap();
        let attempts: Option<i64> = deliveries::table
            .select(diesel::dsl::sum(deliveries::attempts))
            .first(&mut connection)
            .await
            .unwrap();
        let emails = app
            .smtp
            .wait_for_messages(ids.len(), drain_timeout(ids.len()))
            .await;
        let mut per_message_id: BTreeMap<String, usize> = BTreeMap::new();
        for email in &emails {
            *per_message_id
                .entry(email.message_id.clone().unwrap_or_default())
                .or_default() += 1;
        }
        Self {
            scenario,
            accepted: ids.len(),
            delivered: usize::try_from(delivered).unwrap(),
            lost: ids.len().saturating_sub(per_message_id.len()),
            physical_duplicates: per_message_id.values().map(|copies| copies - 1).sum(),
            attempts: attempts.unwrap_or_default(),
            recovery,
        }
    }

    /// Prints the ledger and asserts nothing was lost or effectively duplicated: one
    /// `Message-ID` per accepted notification. `physical_duplicates_allowed` is for scenarios
    /// where the outcome of a send could not be known (the resend carries the same Message-ID).
    fn assert_sound(&self, physical_duplicates_allowed: bool) {
        #[allow(clippy::print_stdout)]
        {
            println!(
                "ledger {:<28} accepted {:>5}  delivered {:>5}  lost {}  effective duplicates 0  \
                 resent with the same Message-ID {}  attempts {:>5}  recovery {:.2}s",
                self.scenario,
                self.accepted,
                self.delivered,
                self.lost,
                self.physical_duplicates,
                self.attempts,
                self.recovery.as_secs_f64()
            );
        }
        assert_eq!(self.lost, 0, "{self:?}");
        assert_eq!(self.delivered, self.accepted, "{self:?}");
        if !physical_duplicates_allowed {
            assert_eq!(self.physical_duplicates, 0, "{self:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn submits_succeed_while_rabbitmq_is_away_and_everything_is_delivered_once_it_returns() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    app.amqp_proxy.cut();

    let ids = submit_many(&app, suite_size()).await;
    let pending = app.notification(ids.last().unwrap()).await;
    assert_eq!(pending.deliveries[0].state(), DeliveryState::Pending);

    app.amqp_proxy.restore();
    Ledger::settle(&app, "rabbitmq away", &ids, Instant::now())
        .await
        .assert_sound(false);
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_dropping_connections_mid_traffic_loses_and_duplicates_nothing() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let third = suite_size().div_ceil(3);
    let mut ids = submit_many(&app, third).await;
    app.amqp_proxy.cut();
    ids.extend(submit_many(&app, third).await);
    app.amqp_proxy.restore();
    ids.extend(submit_many(&app, third).await);
    app.amqp_proxy.cut();
    app.amqp_proxy.restore();
    Ledger::settle(&app, "rabbitmq connections dropped", &ids, Instant::now())
        .await
        .assert_sound(false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_queue_makes_publishes_unroutable_until_the_relay_redeclares_it() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let first = submit_many(&app, 1).await;
    app.wait_for_status(&first[0], NotificationStatus::Delivered)
        .await;

    app.vhost.delete_queue("herald.email.deliver").await;
    let deleted_at = Instant::now();
    let ids = submit_many(&app, suite_size()).await;

    Ledger::settle(
        &app,
        "work queue deleted",
        &[first, ids].concat(),
        deleted_at,
    )
    .await
    .assert_sound(false);
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
    let restored_at = Instant::now();
    let probe = eventually("submits to succeed again", WAIT, || async {
        app.submit(welcome_request("probe@example.com"))
            .await
            .ok()
            .map(|response| response.notification_id)
    })
    .await;
    let mut ids = vec![probe];
    ids.extend(submit_many(&app, suite_size()).await);
    Ledger::settle(&app, "postgresql away from the api", &ids, restored_at)
        .await
        .assert_sound(false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_loses_postgresql_requeues_messages_instead_of_losing_them() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let count = suite_size();
    let ids = submit_many(&app, count).await;
    let queued = u32::try_from(count).unwrap();
    eventually("the relay to queue everything", WAIT, || async {
        (app.vhost.ready_messages("herald.email.deliver").await == queued).then_some(())
    })
    .await;

    app.database_proxy.cut();
    app.start_email_worker(4);
    eventually("the worker to take messages", WAIT, || async {
        (app.vhost.ready_messages("herald.email.deliver").await < queued).then_some(())
    })
    .await;
    app.database_proxy.restore();

    Ledger::settle(&app, "postgresql away from workers", &ids, Instant::now())
        .await
        .assert_sound(false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_stream_loses_nothing() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let mut settings = app.email_worker_settings(8);
    settings.worker.lease = Duration::from_secs(1);
    let doomed = tokio::spawn(
        herald_channel_worker::Application::build(
            settings.clone(),
            herald_channel_worker::WorkerChannel::Email,
        )
        .unwrap()
        .run_until_stopped(tokio_util::sync::CancellationToken::new()),
    );
    let count = suite_size();
    let ids = submit_many(&app, count).await;
    eventually(
        "a third of the mail to go out",
        drain_timeout(count),
        || async { (app.smtp.messages().len() >= count / 3).then_some(()) },
    )
    .await;

    // SIGKILL, in-process: the task and its AMQP connection vanish mid-delivery.
    doomed.abort();
    let _ = doomed.await;
    let killed_at = Instant::now();
    tokio::spawn(
        herald_channel_worker::Application::build(
            settings,
            herald_channel_worker::WorkerChannel::Email,
        )
        .unwrap()
        .run_until_stopped(tokio_util::sync::CancellationToken::new()),
    );

    Ledger::settle(&app, "worker killed mid-stream", &ids, killed_at)
        .await
        .assert_sound(true);
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
        herald_channel_worker::Application::build(
            settings,
            herald_channel_worker::WorkerChannel::Email,
        )
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
        herald_channel_worker::Application::build(
            settings,
            herald_channel_worker::WorkerChannel::Email,
        )
        .unwrap()
        .run_until_stopped(tokio_util::sync::CancellationToken::new()),
    );

    Ledger::settle(&app, "worker killed after its claim", &ids, Instant::now())
        .await
        .assert_sound(false);
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
        inner: herald_channel_worker::SmtpProvider::new(&settings.smtp).unwrap(),
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
        herald_channel_worker::Application::build(
            settings,
            herald_channel_worker::WorkerChannel::Email,
        )
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
    inner: herald_channel_worker::SmtpProvider,
    sent: std::sync::Arc<tokio::sync::Notify>,
}

impl herald_worker::ChannelProvider for CrashAfterSend {
    fn channel(&self) -> herald_domain::Channel {
        herald_domain::Channel::Email
    }

    async fn deliver(&self, context: &herald_worker::DeliveryContext) -> herald_worker::Attempted {
        let attempted = self.inner.deliver(context).await;
        if attempted.result.is_err() {
            return attempted;
        }
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
    Ledger::settle(
        &app,
        "emergency path",
        &[critical_id, bulk_id],
        Instant::now(),
    )
    .await
    .assert_sound(false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_worker_finishes_its_in_flight_delivery_within_the_grace_period() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let smtp_proxy = FaultProxy::start(app.smtp.address()).await;
    smtp_proxy.stall();
    let mut settings = app.email_worker_settings(1);
    settings.smtp.port = smtp_proxy.address().port();
    settings.worker.shutdown_grace_period = Duration::from_secs(5);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(
        herald_channel_worker::Application::build(
            settings,
            herald_channel_worker::WorkerChannel::Email,
        )
        .unwrap()
        .run_until_stopped(shutdown.clone()),
    );
    let ids = submit_many(&app, 1).await;
    eventually("the delivery to be in flight", WAIT, || async {
        (app.notification(&ids[0]).await.deliveries[0].state() == DeliveryState::Sending)
            .then_some(())
    })
    .await;

    // SIGTERM: stop consuming, but let the in-flight delivery finish.
    shutdown.cancel();
    smtp_proxy.restore();
    tokio::time::timeout(Duration::from_secs(5) + Duration::from_secs(2), worker)
        .await
        .expect("the worker exits within its grace period")
        .unwrap();

    let delivery = &app.notification(&ids[0]).await.deliveries[0];
    assert_eq!(delivery.state(), DeliveryState::Delivered);
    assert_eq!(delivery.attempts, 1);
    assert_eq!(app.smtp.messages().len(), 1);
}
