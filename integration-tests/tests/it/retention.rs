//! Retention through the running platform: the relay's job clears the personal data of
//! deliveries final for longer than `retention.personal_data_after`, on the relay's clock,
//! and leaves the record (states, ids, events) and whatever may still be sent.

use std::sync::Arc;
use std::time::Duration;

use herald_domain::ManualClock;
use herald_proto::common::Channel as WireChannel;
use herald_proto::submit::{DeliveryState, Notification, NotificationStatus, Recipient};
use herald_proto::template::{EmailPart, SmsPart, TemplateContent};
use herald_proto::tracking::tracking_service_client::TrackingServiceClient;
use herald_proto::tracking::{EngagementKind, ListEventsRequest, RecordEventRequest};
use herald_test_support::eventually;

use crate::harness::{As, Options, TestApp, parameters, welcome_request};
use crate::observability::{sample, scrape};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The kinds and details of every event of `notification_id`, as `ListEvents` answers.
async fn events(app: &TestApp, notification_id: &str) -> Vec<(String, String)> {
    TrackingServiceClient::new(app.channel(As::Orders).await)
        .list_events(ListEventsRequest {
            notification_id: notification_id.into(),
        })
        .await
        .expect("ListEvents")
        .into_inner()
        .events
        .into_iter()
        .map(|event| (event.kind, event.detail))
        .collect()
}

/// Records a click on `link` of `delivery_id`.
async fn click(app: &TestApp, delivery_id: &str, link: &str) {
    TrackingServiceClient::new(app.channel(As::Orders).await)
        .record_event(RecordEventRequest {
            delivery_id: delivery_id.into(),
            kind: EngagementKind::Clicked.into(),
            link: link.into(),
            client_event_id: String::new(),
        })
        .await
        .expect("RecordEvent");
}

/// Waits until the notification's deliveries on `channels` show their personal data cleared.
async fn wait_until_cleared(app: &TestApp, id: &str, channels: &[WireChannel]) -> Notification {
    eventually(
        &format!("retention to clear {channels:?} of {id}"),
        Duration::from_secs(20),
        || async {
            let notification = app.notification(id).await;
            notification
                .deliveries
                .iter()
                .filter(|delivery| channels.contains(&delivery.channel()))
                .all(|delivery| delivery.personal_data_cleared_at.is_some())
                .then_some(notification)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_clears_personal_data_after_the_period_and_keeps_the_record() {
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let app = TestApp::spawn_with(Options {
        clock: Some(clock.clone()),
        retention: herald_relay::RetentionSettings {
            personal_data_after: 30 * DAY,
            interval: Duration::from_millis(50),
            // Two deliveries per statement, so that a run takes several batches.
            batch_size: 2,
        },
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    app.create_template_with(
        "receipt",
        "orders",
        TemplateContent {
            email: Some(EmailPart {
                subject: "Receipt for {{item}}".into(),
                html: "<p>{{item}}</p>".into(),
                text: "{{item}}".into(),
            }),
            sms: Some(SmsPart {
                text: "Receipt for {{item}}".into(),
            }),
            ..TemplateContent::default()
        },
    )
    .await;

    // Delivered: one email with a click recorded on it.
    let mut request = welcome_request("quokkabelle@example.com");
    request.parameters = Some(parameters(&[
        ("username", "Quokkabelle"),
        ("item_name", "zeta-kumquat"),
    ]));
    request.metadata = [("crm_contact".to_owned(), "vip-marmoset".to_owned())].into();
    let delivered = app.submit(request).await.unwrap().notification_id;
    let before = app
        .wait_for_status(&delivered, NotificationStatus::Delivered)
        .await;
    click(
        &app,
        &before.deliveries[0].id,
        "https://shop.example/track/okapi-lantern",
    )
    .await;
    let events_before = events(&app, &delivered).await;

    // Half final: its email is delivered, its SMS waits in the queue (no SMS worker runs).
    let mixed = app
        .submit(herald_proto::submit::SubmitRequest {
            template: Some(herald_proto::submit::TemplateRef {
                key: "receipt".into(),
                version: None,
            }),
            parameters: Some(parameters(&[("item", "ocelot-teapot")])),
            recipients: vec![Recipient {
                email: "ocelot@example.com".into(),
                phone: "+15550001111".into(),
                ..Recipient::default()
            }],
            channels: vec![WireChannel::Email.into(), WireChannel::Sms.into()],
            ..herald_proto::submit::SubmitRequest::default()
        })
        .await
        .unwrap()
        .notification_id;
    eventually(
        "the email delivered, the SMS queued",
        Duration::from_secs(20),
        || async {
            let states: Vec<DeliveryState> = app
                .notification(&mixed)
                .await
                .deliveries
                .iter()
                .map(herald_proto::submit::Delivery::state)
                .collect();
            (states == [DeliveryState::Delivered, DeliveryState::Queued]).then_some(())
        },
    )
    .await;

    // Within the period the job runs (a whole run after these deliveries became final) and
    // keeps everything.
    let runs_so_far =
        retention_figure(&app, "herald_retention_runs_total", "herald_outcome", "ok").await;
    eventually(
        "two more retention runs",
        Duration::from_secs(20),
        || async {
            let runs =
                retention_figure(&app, "herald_retention_runs_total", "herald_outcome", "ok").await;
            (runs >= runs_so_far + 2.0).then_some(())
        },
    )
    .await;
    let kept = app.opened_personal_values().await.join("\n");
    for personal in [
        "quokkabelle@example.com",
        "Quokkabelle",
        "vip-marmoset",
        "okapi-lantern",
    ] {
        assert!(
            kept.contains(personal),
            "`{personal}` is kept within the period"
        );
    }

    clock.advance(chrono::Duration::days(31));
    wait_until_cleared(&app, &delivered, &[WireChannel::Email]).await;
    let mixed_after = wait_until_cleared(&app, &mixed, &[WireChannel::Email]).await;
    // Read again: GetNotification reads the notification and then its deliveries, so the
    // answer that first showed them cleared may hold the notification from before the batch.
    let after = app.notification(&delivered).await;

    // The record stays: status, ids, states, the user id, every event (without its detail).
    assert_eq!(after.status(), NotificationStatus::Delivered);
    assert_eq!(after.id, delivered);
    assert_eq!(after.deliveries[0].id, before.deliveries[0].id);
    assert_eq!(after.deliveries[0].state(), DeliveryState::Delivered);
    assert_eq!(after.deliveries[0].user_id, "user-1");
    assert!(after.metadata.is_empty(), "{:?}", after.metadata);
    let events_after = events(&app, &delivered).await;
    assert_eq!(
        events_after
            .iter()
            .map(|(kind, _)| kind)
            .collect::<Vec<_>>(),
        events_before
            .iter()
            .map(|(kind, _)| kind)
            .collect::<Vec<_>>()
    );
    assert!(
        events_before
            .iter()
            .any(|(_, detail)| detail.contains("okapi-lantern"))
            && events_after.iter().all(|(_, detail)| detail.is_empty()),
        "{events_after:?}"
    );

    // The delivery not yet final is untouched, and so is its notification's data.
    let sms = &mixed_after.deliveries[1];
    assert_eq!(sms.state(), DeliveryState::Queued);
    assert_eq!(sms.personal_data_cleared_at, None);
    let left = app.opened_personal_values().await.join("\n");
    for cleared in [
        "quokkabelle@example.com",
        "Quokkabelle",
        "zeta-kumquat",
        "vip-marmoset",
        "okapi-lantern",
        "ocelot@example.com",
    ] {
        assert!(!left.contains(cleared), "`{cleared}` was not cleared");
    }
    for kept in ["+15550001111", "ocelot-teapot"] {
        assert!(
            left.contains(kept),
            "`{kept}` may still be sent and is kept"
        );
    }

    // A click recorded later (an old email's link still works) keeps no detail either.
    click(
        &app,
        &before.deliveries[0].id,
        "https://shop.example/track/late-tapir",
    )
    .await;
    let events_late = events(&app, &delivered).await;
    assert_eq!(events_late.len(), events_after.len() + 1);
    assert!(events_late.iter().all(|(_, detail)| detail.is_empty()));
    assert!(
        !app.opened_personal_values()
            .await
            .join("\n")
            .contains("late-tapir")
    );

    eventually("the run's counters", Duration::from_secs(20), || async {
        let deliveries = retention_figure(
            &app,
            "herald_retention_cleared_total",
            "herald_record",
            "deliveries",
        )
        .await;
        let notifications = retention_figure(
            &app,
            "herald_retention_cleared_total",
            "herald_record",
            "notifications",
        )
        .await;
        ((deliveries, notifications) == (2.0, 1.0)).then_some(())
    })
    .await;
}

/// The relay's Prometheus sample `name{label="value"}`, 0 while absent.
async fn retention_figure(app: &TestApp, name: &str, label: &str, value: &str) -> f64 {
    sample(&scrape(app.relay_metrics).await, name, &[(label, value)]).unwrap_or_default()
}
