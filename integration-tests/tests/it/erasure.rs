//! A user's erase (`DeletePreferences`) through the running platform: afterwards nothing of
//! the user's personal data is in the database, in clear or sealed, a delivery that waited is
//! never sent, the user's open inbox streams are told to list again, and the audit log says
//! an erase happened without saying whom or what.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use herald_channel_worker::WorkerChannel;
use herald_proto::common::Channel as WireChannel;
use herald_proto::inbox::ListInboxRequest;
use herald_proto::inbox::inbox_event::Event;
use herald_proto::preference::preference_service_client::PreferenceServiceClient;
use herald_proto::preference::{ContactPoints, DeletePreferencesRequest, DeviceToken, Platform};
use herald_proto::submit::{
    DeliveryState, NotificationStatus, Recipient, SubmitRequest, TemplateRef,
};
use herald_proto::template::{EmailPart, InAppPart, SmsPart, TemplateContent};
use herald_proto::tracking::tracking_service_client::TrackingServiceClient;
use herald_proto::tracking::{EngagementKind, RecordEventRequest};
use herald_test_support::{TwilioServer, eventually};

use crate::channels::set_contacts;
use crate::harness::{As, TestApp, parameters};
use crate::inbox::{LIVE, next, subscribe};
use crate::sms::{ACCOUNT_SID, AUTH_TOKEN, set_sms_providers, twilio_provider};

const USER: &str = "erin-7781";
const EMAIL: &str = "erin.quokka@example.com";
const PHONE: &str = "+15557770123";
const DEVICE_TOKEN: &str = "apns-token-erin-9931";
const CLICKED: &str = "https://shop.example/orders/A-99231?ref=erin-click";
/// Everything of the user's that the test puts into Herald: ids, contact points, parameter
/// values (which the rendered texts contain) and the clicked link.
const PERSONAL: [&str; 9] = [
    USER,
    EMAIL,
    PHONE,
    "5557770123",
    DEVICE_TOKEN,
    "Erinthea",
    "zeta-kumquat",
    "A-99231",
    "erin-click",
];

/// An `order-shipped` to the user on `channels`, with parameters that name them.
fn order_to_user(channels: &[WireChannel]) -> SubmitRequest {
    SubmitRequest {
        template: Some(TemplateRef {
            key: "order-shipped".into(),
            version: None,
        }),
        parameters: Some(parameters(&[
            ("name", "Erinthea"),
            ("item", "zeta-kumquat kettle"),
            ("order", "A-99231"),
        ])),
        recipients: vec![Recipient {
            user_id: USER.into(),
            ..Recipient::default()
        }],
        channels: channels.iter().map(|channel| (*channel).into()).collect(),
        ..SubmitRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erased_user_leaves_no_personal_data_and_nothing_more_is_sent_to_them() {
    let app = TestApp::spawn().await;
    app.create_template_with(
        "order-shipped",
        "orders",
        TemplateContent {
            email: Some(EmailPart {
                subject: "{{item}} shipped".into(),
                html: "<p>Hi {{name}}, your {{item}} (order {{order}}) is on its way.</p>".into(),
                text: "Hi {{name}}, your {{item}} (order {{order}}) is on its way.".into(),
            }),
            sms: Some(SmsPart {
                text: "Hi {{name}}, order {{order}} shipped.".into(),
            }),
            in_app: Some(InAppPart {
                title: "Shipped: {{item}}".into(),
                body: "Hi {{name}}, order {{order}} is on its way.".into(),
                action_url: "https://shop.example/orders/{{order}}".into(),
            }),
            ..TemplateContent::default()
        },
    )
    .await;
    app.start_in_app_worker();
    set_contacts(
        &app,
        USER,
        ContactPoints {
            email: EMAIL.into(),
            phone: PHONE.into(),
            device_tokens: vec![DeviceToken {
                token: DEVICE_TOKEN.into(),
                platform: Platform::Ios.into(),
                disabled_reason: String::new(),
            }],
            ..ContactPoints::default()
        },
    )
    .await;

    // Delivered by email and to the inbox, with a click on the in-app item.
    let delivered = app
        .submit(order_to_user(&[WireChannel::Email, WireChannel::InApp]))
        .await
        .unwrap()
        .notification_id;
    let delivered = app
        .wait_for_status(&delivered, NotificationStatus::Delivered)
        .await;
    let email = app.smtp.wait_for_messages(1, Duration::from_secs(20)).await;
    assert!(
        email[0]
            .text
            .as_deref()
            .unwrap_or_default()
            .contains("Erinthea")
    );
    TrackingServiceClient::new(app.channel(As::Orders).await)
        .record_event(RecordEventRequest {
            delivery_id: delivered.deliveries[1].id.clone(),
            kind: EngagementKind::Clicked.into(),
            link: CLICKED.into(),
            client_event_id: String::new(),
        })
        .await
        .unwrap();
    // Waiting: an SMS sits in the queue, as no SMS worker runs yet.
    let waiting = app
        .submit(order_to_user(&[WireChannel::Sms]))
        .await
        .unwrap()
        .notification_id;
    eventually("the SMS to be queued", Duration::from_secs(20), || async {
        let state = app.notification(&waiting).await.deliveries[0].state();
        (state == DeliveryState::Queued).then_some(())
    })
    .await;
    let before = app.pg_dump().await + &app.opened_personal_values().await.join("\n");
    for personal in PERSONAL {
        assert!(before.contains(personal), "the test stored `{personal}`");
    }
    let mut inbox = app.inbox_client_at(app.address, As::Orders).await;
    let mut stream = subscribe(&mut inbox, USER).await;
    assert!(matches!(next(&mut stream, LIVE).await, Event::Snapshot(_)));

    let erased = PreferenceServiceClient::new(app.channel(As::Orders).await)
        .delete_preferences(DeletePreferencesRequest {
            user_id: USER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(erased.deleted);
    assert_eq!(
        (
            erased.inbox_items,
            erased.deliveries,
            erased.cancelled_deliveries,
            erased.notifications,
        ),
        (1, 3, 1, 2)
    );
    assert!(erased.events >= 3, "{erased:?}");
    assert!(matches!(next(&mut stream, LIVE).await, Event::Resync(_)));
    let listed = inbox
        .list_inbox(ListInboxRequest {
            user_id: USER.into(),
            ..ListInboxRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.items.is_empty() && listed.unread_count == 0);

    // Nothing of the user is left: not in clear (the dump), not sealed (every personal value
    // opened).
    let after = app.pg_dump().await + &app.opened_personal_values().await.join("\n");
    for personal in PERSONAL {
        assert!(!after.contains(personal), "`{personal}` is still stored");
    }
    // The record stays, without the user: states, ids, the audit of the erase.
    let kept = app.notification(&delivered.id).await;
    assert_eq!(kept.status(), NotificationStatus::Delivered);
    assert!(
        kept.deliveries
            .iter()
            .all(|delivery| delivery.user_id.is_empty()
                && delivery.personal_data_cleared_at.is_some())
    );
    let cancelled = app.notification(&waiting).await.deliveries.remove(0);
    assert_eq!(cancelled.state(), DeliveryState::Suppressed);
    assert_eq!(cancelled.last_error, herald_db::erasure::ERASED_REASON);
    let (actor, target, detail) = erase_audit(&app).await;
    assert_eq!(actor, crate::harness::ORDERS_IDENTITY);
    assert_eq!(
        target,
        herald_db::erasure::erased_user_target(USER).unwrap(),
        "the audit names the user by a keyed hash"
    );
    assert_eq!(detail["deliveries"], 3, "{detail}");

    // The waiting SMS is never sent: an SMS worker starts, takes its message, and sends only
    // the one submitted after it to someone else.
    let twilio = TwilioServer::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let mut settings = app.channel_worker_settings();
    set_sms_providers(
        &mut settings,
        vec![twilio_provider("twilio", &twilio.base_url())],
    );
    app.start_channel_worker(WorkerChannel::Sms, settings);
    let mut witness = order_to_user(&[WireChannel::Sms]);
    witness.parameters = Some(parameters(&[
        ("name", "Wit"),
        ("item", "mug"),
        ("order", "W-1"),
    ]));
    witness.recipients = vec![Recipient {
        phone: "+15550009999".into(),
        ..Recipient::default()
    }];
    let witness = app.submit(witness).await.unwrap().notification_id;
    app.wait_for_status(&witness, NotificationStatus::Delivered)
        .await;
    let sent = twilio.messages();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].to, "+15550009999");
    let cancelled = app.notification(&waiting).await.deliveries.remove(0);
    assert_eq!(
        (cancelled.state(), cancelled.attempts),
        (DeliveryState::Suppressed, 0)
    );
}

/// The actor, target and detail of the erase's audit entry.
async fn erase_audit(app: &TestApp) -> (String, String, serde_json::Value) {
    use herald_db::schema::audit_log;
    let mut connection = app.pool.get().await.expect("a connection");
    audit_log::table
        .filter(audit_log::action.eq("user.erase"))
        .select((audit_log::actor, audit_log::target, audit_log::detail))
        .first(&mut connection)
        .await
        .expect("the erase is audited")
}
