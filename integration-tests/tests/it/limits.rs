//! Rate limits against spam (enforced in Redis by the workers) and per-caller submit quotas.

use std::time::Duration;

use herald_proto::common::Priority as WirePriority;
use herald_proto::submit::{DeliveryState, Notification, NotificationStatus};
use herald_test_support::eventually;
use tonic::Code;

use crate::harness::{Options, TestApp, welcome_request};

const WAIT: Duration = Duration::from_secs(30);

async fn order_shipped_app(category: &str) -> TestApp {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_template_in(
        category,
        "order-shipped",
        "Your {{item_name}} shipped",
        "",
        "Hi {{username}}",
    )
    .await;
    app
}

/// An email worker with the shipped default limits (3 per type per user per day).
fn start_limited_worker(app: &TestApp, prefetch: u16) {
    let mut settings = app.email_worker_settings(prefetch);
    settings.rate_limits = herald_worker::RateLimitSettings::default();
    app.start_email_worker_with(settings);
}

async fn submit_to(app: &TestApp, user_id: &str, priority: WirePriority) -> String {
    let mut request = welcome_request(&format!("{user_id}@example.com"));
    request.template.as_mut().unwrap().key = "order-shipped".into();
    request.recipients[0].user_id = user_id.into();
    request.priority = priority.into();
    app.submit(request).await.unwrap().notification_id
}

/// Waits until every notification reached a final status and returns them.
async fn settled(app: &TestApp, ids: &[String]) -> Vec<Notification> {
    let mut notifications = Vec::new();
    for id in ids {
        notifications.push(
            eventually(&format!("{id} to settle"), WAIT, || async {
                let notification = app.notification(id).await;
                (!matches!(
                    notification.status(),
                    NotificationStatus::Accepted | NotificationStatus::InProgress
                ))
                .then_some(notification)
            })
            .await,
        );
    }
    notifications
}

fn count(notifications: &[Notification], state: DeliveryState) -> usize {
    notifications
        .iter()
        .filter(|notification| notification.deliveries[0].state() == state)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fourth_order_shipped_of_the_day_is_suppressed() {
    let app = order_shipped_app("orders").await;
    start_limited_worker(&app, 1);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(submit_to(&app, "user-7", WirePriority::Normal).await);
    }

    let notifications = settled(&app, &ids).await;

    assert_eq!(count(&notifications, DeliveryState::Delivered), 3);
    let suppressed: Vec<_> = notifications
        .iter()
        .filter(|notification| notification.status() == NotificationStatus::Suppressed)
        .collect();
    assert_eq!(suppressed.len(), 1);
    let reason = &suppressed[0].deliveries[0].last_error;
    assert!(
        reason.starts_with("rate_limited: at most 3 `order-shipped` per 1day"),
        "{reason}"
    );
    assert_eq!(app.smtp.wait_for_messages(3, WAIT).await.len(), 3);
    let another_user = submit_to(&app, "user-8", WirePriority::Normal).await;
    app.wait_for_status(&another_user, NotificationStatus::Delivered)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_hold_under_concurrent_workers() {
    let app = order_shipped_app("orders").await;
    for _ in 0..3 {
        start_limited_worker(&app, 4);
    }
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(submit_to(&app, "user-9", WirePriority::Normal).await);
    }

    let notifications = settled(&app, &ids).await;

    assert_eq!(count(&notifications, DeliveryState::Delivered), 3);
    assert_eq!(count(&notifications, DeliveryState::Suppressed), 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn critical_security_notifications_bypass_limits() {
    let app = order_shipped_app("security").await;
    start_limited_worker(&app, 2);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(submit_to(&app, "user-1", WirePriority::Critical).await);
    }

    let notifications = settled(&app, &ids).await;

    assert_eq!(count(&notifications, DeliveryState::Delivered), 5);
}

fn redis_down(app: &TestApp) -> herald_channel_worker::Settings {
    let port = herald_test_support::refused_port();
    let mut settings = app.email_worker_settings(1);
    settings.rate_limits = herald_worker::RateLimitSettings::default();
    settings.redis.url = secrecy::SecretString::from(format!("redis://127.0.0.1:{port}"));
    settings
}

#[tokio::test(flavor = "multi_thread")]
async fn without_redis_transactional_mail_fails_open_and_marketing_fails_closed() {
    let app = order_shipped_app("orders").await;
    app.create_template_in(
        "marketing",
        "promo",
        "Sale, {{username}}",
        "",
        "{{item_name}} on sale",
    )
    .await;
    app.start_email_worker_with(redis_down(&app));

    let transactional = submit_to(&app, "user-2", WirePriority::Normal).await;
    let mut promo = welcome_request("user-2@example.com");
    promo.template.as_mut().unwrap().key = "promo".into();
    promo.recipients[0].user_id = "user-2".into();
    let marketing = app.submit(promo).await.unwrap().notification_id;

    app.wait_for_status(&transactional, NotificationStatus::Delivered)
        .await;
    let suppressed = app
        .wait_for_status(&marketing, NotificationStatus::Suppressed)
        .await;
    assert!(
        suppressed.deliveries[0]
            .last_error
            .starts_with("rate_limit_unavailable")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_over_its_submit_quota_gets_resource_exhausted() {
    let app = TestApp::spawn_with(Options {
        quota_per_minute: 3,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    for _ in 0..3 {
        app.submit(welcome_request("ada@example.com"))
            .await
            .unwrap();
    }

    let status = app
        .submit(welcome_request("ada@example.com"))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .contains("may submit at most 3 notifications per"),
        "{}",
        status.message()
    );
    assert_eq!(app.count_rows("notifications").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_submit_quota_holds_across_api_replicas() {
    let app = TestApp::spawn_with(Options {
        quota_per_minute: 10,
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let mut settings = app.api_replica_settings();
    settings.submit.quota_per_minute = 10;
    let replica = app.spawn_api_replica_with(settings).await;
    let mut replica_client = herald_proto::submit::submit_service_client::SubmitServiceClient::new(
        app.channel_at(replica, crate::harness::As::Orders).await,
    );

    let mut accepted = 0;
    let mut refused = Vec::new();
    for n in 0..8 {
        let request = welcome_request(&format!("user{n}@example.com"));
        for result in [
            app.submit(request.clone()).await,
            replica_client
                .submit(request)
                .await
                .map(tonic::Response::into_inner),
        ] {
            match result {
                Ok(_) => accepted += 1,
                Err(status) => refused.push(status.code()),
            }
        }
    }

    assert_eq!(accepted, 10);
    assert_eq!(refused, vec![Code::ResourceExhausted; 6]);
    assert_eq!(app.count_rows("notifications").await, 10);
}
