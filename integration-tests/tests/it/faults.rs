//! Faults injected for real: dependencies taken away through TCP proxies, workers killed
//! mid-delivery. Each scenario checks a ledger: the accepted notification ids against what the
//! SMTP server received, counted by `Message-ID` (the email channel's idempotency key).
//!
//! `HERALD_FAULT_SUITE_SIZE` scales the scenarios (default 50 notifications each, which CI
//! runs); `./scripts/faults` runs them serially with a few thousand and prints every ledger.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_proto::admin::{
    FailureClass, FailureStatus, ListFailuresRequest, ReplayFailuresRequest,
};
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
    /// Deliveries left `unknown` for an operator (the channel holds unknown outcomes): neither
    /// lost nor duplicated, and counted apart from both.
    unknown: usize,
    /// Of `unknown`, those whose email did arrive (the attempt had reached the server).
    unknown_arrived: usize,
    lost: usize,
    physical_duplicates: usize,
    attempts: i64,
    recovery: Duration,
}

/// What a scenario may show besides delivered mail.
#[derive(Debug, Clone, Copy)]
struct Allowed {
    /// Resends with the same `Message-ID` (the email channel resends unknown outcomes).
    resends: bool,
    /// Deliveries held `unknown` (the email channel holds them, its default).
    unknown: bool,
}

/// A fault that touches no attempt in flight: every delivery delivered once.
const CLEAN: Allowed = Allowed {
    resends: false,
    unknown: false,
};

/// The delivery id an email carries in its `Message-ID` (`<id@herald>`).
fn delivery_of(message_id: &str) -> &str {
    message_id
        .trim_start_matches('<')
        .split('@')
        .next()
        .unwrap_or_default()
}

impl Ledger {
    /// Waits until every delivery is final, delivered or held `unknown` (or `drain_timeout`
    /// passes), then compares the accepted ids with the SMTP server's mail. `recovered_from`
    /// is when the fault ended.
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
        eventually(
            &format!("{scenario}: every delivery delivered or held"),
            drain_timeout(ids.len()),
            || async {
                let mut connection = app.pool.get().await.ok()?;
                let done: i64 = deliveries::table
                    .filter(deliveries::state.eq_any(["delivered", "unknown"]))
                    .count()
                    .get_result(&mut connection)
                    .await
                    .ok()?;
                (done >= count).then_some(())
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
        let states: Vec<(uuid::Uuid, String)> = deliveries::table
            .select((deliveries::id, deliveries::state))
            .load(&mut connection)
            .await
            .unwrap();
        let delivered = states
            .iter()
            .filter(|(_, state)| state == "delivered")
            .count();
        let unknown: BTreeSet<String> = states
            .iter()
            .filter(|(_, state)| state == "unknown")
            .map(|(id, _)| id.to_string())
            .collect();
        let emails = app
            .smtp
            .wait_for_messages(delivered, drain_timeout(ids.len()))
            .await;
        let mut per_delivery: BTreeMap<String, usize> = BTreeMap::new();
        for email in &emails {
            let message_id = email.message_id.clone().unwrap_or_default();
            *per_delivery
                .entry(delivery_of(&message_id).to_owned())
                .or_default() += 1;
        }
        let accounted_for = per_delivery
            .keys()
            .chain(&unknown)
            .collect::<BTreeSet<_>>()
            .len();
        Self {
            scenario,
            accepted: ids.len(),
            delivered,
            unknown: unknown.len(),
            unknown_arrived: unknown
                .iter()
                .filter(|id| per_delivery.contains_key(*id))
                .count(),
            lost: ids.len().saturating_sub(accounted_for),
            physical_duplicates: per_delivery.values().map(|copies| copies - 1).sum(),
            attempts: attempts.unwrap_or_default(),
            recovery,
        }
    }

    /// Prints the ledger and asserts nothing was lost or effectively duplicated: one
    /// `Message-ID` per accepted notification, except those held `unknown` when `allowed`,
    /// and resends with the same `Message-ID` only when `allowed`.
    fn assert_sound(&self, allowed: Allowed) {
        #[allow(clippy::print_stdout)]
        {
            println!(
                "ledger {:<40} accepted {:>5}  delivered {:>5}  unknown {} ({} arrived)  lost {}  \
                 effective duplicates 0  resent with the same Message-ID {}  attempts {:>5}  \
                 recovery {:.2}s",
                self.scenario,
                self.accepted,
                self.delivered,
                self.unknown,
                self.unknown_arrived,
                self.lost,
                self.physical_duplicates,
                self.attempts,
                self.recovery.as_secs_f64()
            );
        }
        assert_eq!(self.lost, 0, "{self:?}");
        assert_eq!(self.delivered + self.unknown, self.accepted, "{self:?}");
        if !allowed.unknown {
            assert_eq!(self.unknown, 0, "{self:?}");
        }
        if !allowed.resends {
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
        .assert_sound(CLEAN);
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
        .assert_sound(CLEAN);
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
    .assert_sound(CLEAN);
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
        .assert_sound(CLEAN);
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
    app.wait_until_queued(i64::try_from(count).unwrap()).await;
    let queued = app.vhost.ready_messages("herald.email.deliver").await;

    app.database_proxy.cut();
    app.start_email_worker(4);
    eventually("the worker to take messages", WAIT, || async {
        (app.vhost.ready_messages("herald.email.deliver").await < queued).then_some(())
    })
    .await;
    app.database_proxy.restore();

    Ledger::settle(&app, "postgresql away from workers", &ids, Instant::now())
        .await
        .assert_sound(CLEAN);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_stream_loses_nothing_and_holds_what_it_may_have_sent() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let settings = short_lease_email_settings(&app, 8);
    let doomed = spawn_email_worker(settings.clone());
    let count = suite_size();
    let ids = submit_many(&app, count).await;
    eventually(
        "a third of the mail to go out",
        drain_timeout(count),
        || async { (app.smtp.messages().len() >= count / 3).then_some(()) },
    )
    .await;

    // SIGKILL, in-process: the task and its AMQP connection vanish mid-delivery. Email holds
    // unknown outcomes (the default): what the dead worker had in flight is held, not resent.
    doomed.abort();
    let _ = doomed.await;
    let killed_at = Instant::now();
    spawn_email_worker(settings);

    Ledger::settle(&app, "worker killed mid-stream (hold)", &ids, killed_at)
        .await
        .assert_sound(Allowed {
            resends: false,
            unknown: true,
        });
}

/// Starts an email worker built as the binary builds it; aborting the handle kills it.
fn spawn_email_worker(settings: herald_channel_worker::Settings) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        herald_channel_worker::Application::build(
            settings,
            herald_channel_worker::WorkerChannel::Email,
        )
        .unwrap()
        .run_until_stopped(tokio_util::sync::CancellationToken::new()),
    )
}

/// Email worker settings with a lease of 5 s, so a dead worker's claims are taken over
/// quickly, and an SMTP timeout short enough for the start-up check (3 stages of 1.6 s).
fn short_lease_email_settings(app: &TestApp, prefetch: u16) -> herald_channel_worker::Settings {
    let mut settings = app.email_worker_settings(prefetch);
    settings.worker.lease = Duration::from_secs(5);
    settings.smtp.timeout = Duration::from_millis(1600);
    settings
}

/// Starts an email worker that claims `claims` deliveries (its provider slots) and then
/// hangs: its SMTP server (behind `smtp_proxy`) never answers. Built from the runtime directly,
/// since its lease is meant to run out while it waits, which `Application::build`'s lease check
/// refuses.
fn stuck_email_worker(
    app: &TestApp,
    smtp_proxy: &FaultProxy,
    claims: u16,
) -> tokio::task::JoinHandle<()> {
    // A message may carry several deliveries: the slots, not the prefetch, bound the claims.
    let mut settings = app.email_worker_settings(claims);
    settings.worker.concurrency = usize::from(claims);
    settings.smtp.port = smtp_proxy.address().port();
    settings.worker.lease = Duration::from_secs(1);
    let provider = herald_channel_worker::SmtpProvider::new(&settings.smtp).unwrap();
    spawn_doomed(provider, &settings)
}

/// Starts a worker around `provider` from the runtime directly (no start-up checks: its lease
/// is meant to run out while it hangs); aborting the handle kills it.
fn spawn_doomed<P: herald_worker::ChannelProvider>(
    provider: P,
    settings: &herald_channel_worker::Settings,
) -> tokio::task::JoinHandle<()> {
    let pool = herald_db::build_pool(&settings.database).unwrap();
    tokio::spawn(
        herald_worker::Worker::new(
            provider,
            settings.worker.clone(),
            settings.amqp.clone(),
            pool,
            "doomed",
        )
        .run_until_stopped(tokio_util::sync::CancellationToken::new()),
    )
}

/// The "worker killed after its claim" scenario under the email channel's `policy`: a worker
/// claims a batch, hangs before sending (its SMTP server stalls) and is killed; another takes
/// over once the leases expire. Returns the app, the accepted ids and when the kill happened.
async fn kill_a_worker_after_its_claim(
    policy: herald_worker::UnknownOutcome,
) -> (TestApp, Vec<String>, Instant, usize) {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let smtp_proxy = FaultProxy::start(app.smtp.address()).await;
    smtp_proxy.stall();
    let count = suite_size();
    let claimed = count.min(16);
    let doomed = stuck_email_worker(&app, &smtp_proxy, u16::try_from(claimed).unwrap());
    let ids = submit_many(&app, count).await;
    eventually("the doomed worker's claims", WAIT, || async {
        (app.count_rows("deliveries WHERE state = 'sending'").await
            == i64::try_from(claimed).unwrap())
        .then_some(())
    })
    .await;

    // SIGKILL, in-process: the task and its AMQP connection vanish without a word.
    doomed.abort();
    let _ = doomed.await;
    let killed_at = Instant::now();
    smtp_proxy.restore();
    let mut settings = short_lease_email_settings(&app, 8);
    settings.worker.unknown_outcome.email = policy;
    spawn_email_worker(settings);
    (app, ids, killed_at, claimed)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_after_its_claim_has_its_deliveries_held_under_hold_until_an_operator_replays_them()
 {
    let (app, ids, killed_at, claimed) =
        kill_a_worker_after_its_claim(herald_worker::UnknownOutcome::Hold).await;

    let held = Ledger::settle(
        &app,
        "worker killed after its claim (hold)",
        &ids,
        killed_at,
    )
    .await;
    held.assert_sound(Allowed {
        resends: false,
        unknown: true,
    });
    assert_eq!(
        held.unknown, claimed,
        "every claim of the dead worker is held, nothing else"
    );
    assert_eq!(held.unknown_arrived, 0, "the dead worker never sent");

    // The operator checks with the SMTP relay (nothing went out) and replays them.
    let replayed_at = Instant::now();
    let mut admin = app.admin_client().await;
    let unknown = admin
        .list_failures(ListFailuresRequest {
            status: FailureStatus::Open.into(),
            class: FailureClass::Unknown.into(),
            page_size: 500,
            ..ListFailuresRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .failures;
    assert_eq!(unknown.len(), claimed);
    admin
        .replay_failures(ReplayFailuresRequest {
            ids: unknown.into_iter().map(|failure| failure.id).collect(),
            reason: "checked with the relay: never sent".into(),
        })
        .await
        .unwrap();
    let after_replay = Ledger::settle(
        &app,
        "worker killed after its claim (hold), replayed",
        &ids,
        replayed_at,
    )
    .await;
    after_replay.assert_sound(CLEAN);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_after_its_claim_has_its_deliveries_resent_once_under_resend() {
    let (app, ids, killed_at, claimed) =
        kill_a_worker_after_its_claim(herald_worker::UnknownOutcome::Resend).await;

    let ledger = Ledger::settle(
        &app,
        "worker killed after its claim (resend)",
        &ids,
        killed_at,
    )
    .await;
    ledger.assert_sound(CLEAN);
    assert!(
        ledger.attempts >= i64::try_from(ids.len() + claimed).unwrap(),
        "each lease expired and its delivery was taken over and sent once more: {ledger:?}"
    );
}

/// A worker that sends one email for real and is killed before it records the outcome; then
/// a healthy worker starts, following `policy` for unknown outcomes. Returns the app and the
/// notification id.
async fn kill_a_worker_between_sending_and_recording(
    policy: herald_worker::UnknownOutcome,
) -> (TestApp, String) {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let sent = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut settings = short_lease_email_settings(&app, 1);
    settings.worker.unknown_outcome.email = policy;
    let provider = CrashAfterSend {
        inner: herald_channel_worker::SmtpProvider::new(&settings.smtp).unwrap(),
        sent: std::sync::Arc::clone(&sent),
    };
    let doomed = spawn_doomed(provider, &settings);
    let mut ids = submit_many(&app, 1).await;
    sent.notified().await;
    doomed.abort();
    let _ = doomed.await;

    spawn_email_worker(settings);
    (app, ids.remove(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_between_sending_and_recording_causes_no_effective_duplicate_under_resend()
{
    let (app, id) =
        kill_a_worker_between_sending_and_recording(herald_worker::UnknownOutcome::Resend).await;

    app.wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    let emails = app.smtp.wait_for_messages(2, WAIT).await;
    assert_eq!(
        emails.len(),
        2,
        "the outcome was unknown, and this email channel resends"
    );
    assert_eq!(
        emails[0].message_id, emails[1].message_id,
        "with the same Message-ID: one effective email"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_between_sending_and_recording_leaves_the_delivery_unknown_under_hold() {
    let (app, id) =
        kill_a_worker_between_sending_and_recording(herald_worker::UnknownOutcome::Hold).await;

    let held = app.wait_for_status(&id, NotificationStatus::Failed).await;
    assert_eq!(held.deliveries[0].state(), DeliveryState::Unknown);
    assert_eq!(app.failure_classes().await, ["unknown"]);
    assert_eq!(app.smtp.messages().len(), 1, "sent once, never again");
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
    .assert_sound(CLEAN);
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
