//! A critical notification overtakes bulk messages the worker has already prefetched.
//!
//! RabbitMQ's priority queue orders only the messages it has not handed out yet; a worker
//! with a prefetch of hundreds holds that many bulk messages. The worker takes its prefetched
//! messages highest priority first, so a critical one that arrives behind them is claimed as
//! soon as a provider slot frees up, not after them.

use std::time::Duration;

use herald_proto::common::Priority as WirePriority;
use herald_proto::submit::{DeliveryState, NotificationStatus, SubmitBatchRequest};
use herald_test_support::{FaultProxy, eventually};

use crate::harness::{As, Options, TestApp, welcome_request};

/// Bulk deliveries queued before the worker starts.
const BULK: usize = 2_000;

/// The worker's prefetch: far more messages than it has provider slots.
const PREFETCH: u16 = 256;

/// Provider calls at once.
const CONCURRENCY: usize = 2;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn a_critical_notification_overtakes_thousands_of_bulk_deliveries_already_prefetched() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let bulk_ids = submit_bulk(&app).await;
    app.wait_until_queued(BULK as i64).await;

    // The worker's SMTP server sits behind a proxy the test can stall.
    let smtp_proxy = FaultProxy::start(app.smtp.address()).await;
    let mut settings = app.email_worker_settings(PREFETCH);
    settings.worker.concurrency = CONCURRENCY;
    settings.smtp.port = smtp_proxy.address().port();
    app.start_email_worker_with(settings);
    eventually("the bulk deliveries being consumed", WAIT, || async {
        (delivered_count(&app).await >= 20).then_some(())
    })
    .await;

    // Hold the worker mid-stream, its prefetch full of bulk messages, while the critical
    // notification is submitted and published.
    smtp_proxy.stall();
    let mut urgent = welcome_request("urgent@example.com");
    urgent.priority = WirePriority::Critical.into();
    let critical_id = app.submit(urgent).await.unwrap().notification_id;
    eventually("the critical message published", WAIT, || async {
        let state = app.notification(&critical_id).await.deliveries[0].state();
        (state != DeliveryState::Pending).then_some(())
    })
    .await;
    let delivered_before = delivered_count(&app).await;
    smtp_proxy.restore();

    let critical = app
        .wait_for_status(&critical_id, NotificationStatus::Delivered)
        .await;
    let critical_at = critical.deliveries[0].delivered_at.unwrap();
    let overtaken_by = bulk_delivered_before(&app, &critical.deliveries[0].id, critical_at).await;
    assert!(
        overtaken_by < BULK / 2,
        "the critical notification is delivered while most bulk ones are not: \
         {overtaken_by} of {BULK} went first"
    );
    assert!(
        overtaken_by < delivered_before + usize::from(PREFETCH) / 2,
        "the critical notification overtakes the bulk messages already prefetched: \
         {overtaken_by} bulk deliveries went first, {delivered_before} of them before it was \
         published, with {PREFETCH} prefetched"
    );
    let bulk = app.notification(bulk_ids.last().unwrap()).await;
    assert_ne!(
        bulk.deliveries[0].state(),
        DeliveryState::Delivered,
        "the last bulk notification is still waiting"
    );
}

/// Submits `BULK` low and normal priority notifications to distinct addresses, in batches.
async fn submit_bulk(app: &TestApp) -> Vec<String> {
    let mut client = app.submit_client(As::Orders).await;
    let mut ids = Vec::with_capacity(BULK);
    for chunk in (0..BULK).collect::<Vec<_>>().chunks(500) {
        let items = chunk
            .iter()
            .map(|index| {
                let mut request = welcome_request(&format!("bulk{index}@example.com"));
                request.priority = if index % 2 == 0 {
                    WirePriority::Low.into()
                } else {
                    WirePriority::Normal.into()
                };
                request
            })
            .collect();
        let response = client
            .submit_batch(SubmitBatchRequest { items })
            .await
            .expect("SubmitBatch")
            .into_inner();
        for result in response.results {
            ids.push(
                result
                    .accepted
                    .expect("every bulk notification is accepted")
                    .notification_id,
            );
        }
    }
    ids
}

/// Deliveries delivered so far.
async fn delivered_count(app: &TestApp) -> usize {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use herald_db::schema::deliveries;
    let mut connection = app.pool.get().await.expect("a connection");
    let delivered: i64 = deliveries::table
        .filter(deliveries::state.eq("delivered"))
        .count()
        .get_result(&mut connection)
        .await
        .expect("counting delivered deliveries");
    usize::try_from(delivered).unwrap()
}

/// Deliveries other than `critical_id` delivered before `critical_at`.
async fn bulk_delivered_before(
    app: &TestApp,
    critical_id: &str,
    critical_at: prost_types::Timestamp,
) -> usize {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use herald_db::schema::deliveries;
    let critical_at = chrono::DateTime::from_timestamp(
        critical_at.seconds,
        u32::try_from(critical_at.nanos).unwrap(),
    )
    .unwrap();
    let critical_id: uuid::Uuid = critical_id.parse().unwrap();
    let mut connection = app.pool.get().await.expect("a connection");
    let before: i64 = deliveries::table
        .filter(deliveries::id.ne(critical_id))
        .filter(deliveries::delivered_at.lt(critical_at))
        .count()
        .get_result(&mut connection)
        .await
        .expect("counting deliveries");
    usize::try_from(before).unwrap()
}
