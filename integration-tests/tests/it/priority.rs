//! Urgent traffic overtakes bulk traffic.

use std::time::Duration;

use herald_proto::common::Priority as WirePriority;
use herald_proto::submit::NotificationStatus;

use crate::harness::{Options, TestApp, welcome_request};

const BACKLOG: u32 = 30;

#[tokio::test(flavor = "multi_thread")]
async fn a_critical_notification_is_delivered_before_a_queued_backlog_of_low_priority_ones() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;

    let mut low_ids = Vec::new();
    for index in 0..BACKLOG {
        let mut request = welcome_request(&format!("bulk{index}@example.com"));
        request.priority = WirePriority::Low.into();
        low_ids.push(app.submit(request).await.unwrap().notification_id);
    }
    wait_for_queued(&app, BACKLOG).await;
    let mut urgent = welcome_request("urgent@example.com");
    urgent.priority = WirePriority::Critical.into();
    let critical_id = app.submit(urgent).await.unwrap().notification_id;
    wait_for_queued(&app, BACKLOG + 1).await;

    // One delivery at a time, so the order of delivery is the order of consumption.
    app.start_email_worker(1);

    let critical = app
        .wait_for_status(&critical_id, NotificationStatus::Delivered)
        .await;
    let critical_at = critical.deliveries[0].delivered_at.unwrap();
    for id in &low_ids {
        let low = app.wait_for_status(id, NotificationStatus::Delivered).await;
        let low_at = low.deliveries[0].delivered_at.unwrap();
        assert!(
            (critical_at.seconds, critical_at.nanos) < (low_at.seconds, low_at.nanos),
            "the critical notification must be delivered before every queued low-priority one"
        );
    }
    let emails = app
        .smtp
        .wait_for_messages(BACKLOG as usize + 1, Duration::from_secs(20))
        .await;
    assert_eq!(emails.len(), BACKLOG as usize + 1);
}

async fn wait_for_queued(app: &TestApp, count: u32) {
    app.wait_until_queued(i64::from(count)).await;
}
