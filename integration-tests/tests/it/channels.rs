//! One notification on every channel at once: email, SMS, push and in-app to one user, each
//! delivery through its own worker and provider, each visible with its own state. Also the
//! contact-data helpers the channel tests share.

use std::collections::BTreeMap;

use herald_channel_worker::WorkerChannel;
use herald_proto::common::Channel as WireChannel;
use herald_proto::preference::preference_service_client::PreferenceServiceClient;
use herald_proto::preference::{
    ContactPoints, GetPreferencesRequest, Platform, Preferences, UpdatePreferencesRequest,
};
use herald_proto::submit::{
    DeliveryState, Notification, NotificationStatus, Recipient, SubmitRequest, TemplateRef,
};
use herald_proto::template::{EmailPart, InAppPart, PushPart, SmsPart, TemplateContent};
use herald_test_support::{ApnsServer, FcmServer, TwilioServer};

use crate::harness::{As, TestApp, parameters};
use crate::push::{ANDROID_TOKEN, device, set_push_providers};
use crate::sms::{ACCOUNT_SID, AUTH_TOKEN, PHONE, set_sms_providers, twilio_provider};

const EMAIL: &str = "ada@example.com";

/// Replaces `user_id`'s contact points (email, phone and device tokens) through
/// PreferenceService.
pub(crate) async fn set_contacts(app: &TestApp, user_id: &str, contacts: ContactPoints) {
    PreferenceServiceClient::new(app.channel(As::Orders).await)
        .update_preferences(UpdatePreferencesRequest {
            preferences: Some(Preferences {
                user_id: user_id.into(),
                contacts: Some(contacts),
                ..Preferences::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![
                    "contacts.email".into(),
                    "contacts.phone".into(),
                    "contacts.device_tokens".into(),
                ],
            }),
        })
        .await
        .expect("updating the user's contact points");
}

/// `user_id`'s contact points as PreferenceService shows them, with the disabled reasons.
pub(crate) async fn contacts_of(app: &TestApp, user_id: &str) -> ContactPoints {
    PreferenceServiceClient::new(app.channel(As::Orders).await)
        .get_preferences(GetPreferencesRequest {
            user_id: user_id.into(),
        })
        .await
        .expect("GetPreferences")
        .into_inner()
        .contacts
        .unwrap_or_default()
}

/// `(kind, provider)` of the outcomes of the delivery's attempts that reached a provider
/// (without the `sent` event before each), oldest first.
pub(crate) async fn provider_events(app: &TestApp, delivery_id: &str) -> Vec<(String, String)> {
    app.delivery_events(delivery_id)
        .await
        .into_iter()
        .filter(|(kind, _)| kind != "sent")
        .filter_map(|(kind, provider)| Some((kind, provider?)))
        .collect()
}

/// The SMS and push peers (email goes to the app's SMTP server).
struct Peers {
    twilio: TwilioServer,
    fcm: FcmServer,
    /// Configured, though the user has no iOS device; held so the worker's APNs stays up.
    _apns: ApnsServer,
}

/// The app with the email worker (started by default), an SMS, a push and an in-app worker,
/// the `account-ready` template with a part for each channel, and `user-1` with an email
/// address, a phone number and one Android device.
async fn every_channel_app() -> (TestApp, Peers) {
    let (app, twilio, fcm, apns) = tokio::join!(
        TestApp::spawn(),
        TwilioServer::start(ACCOUNT_SID, AUTH_TOKEN),
        FcmServer::start("herald-test"),
        ApnsServer::start()
    );
    app.create_template_with(
        "account-ready",
        "account",
        TemplateContent {
            email: Some(EmailPart {
                subject: "Welcome, {{name}}".into(),
                html: "<p>Hi {{name}}, your account is ready.</p>".into(),
                text: "Hi {{name}}, your account is ready.".into(),
            }),
            sms: Some(SmsPart {
                text: "Hi {{name}}, your account is ready.".into(),
            }),
            push: Some(PushPart {
                title: "Welcome, {{name}}".into(),
                body: "Your account is ready.".into(),
                data: [("screen".to_owned(), "home".to_owned())].into(),
            }),
            in_app: Some(InAppPart {
                title: "Welcome, {{name}}".into(),
                body: "Your account is ready.".into(),
                action_url: "https://app.example/home".into(),
            }),
            ..TemplateContent::default()
        },
    )
    .await;
    let mut sms = app.channel_worker_settings();
    set_sms_providers(
        &mut sms,
        vec![twilio_provider("twilio", &twilio.base_url())],
    );
    app.start_channel_worker(WorkerChannel::Sms, sms);
    let mut push = app.channel_worker_settings();
    set_push_providers(&mut push, &fcm, &apns);
    app.start_channel_worker(WorkerChannel::Push, push);
    app.start_in_app_worker();
    set_contacts(
        &app,
        "user-1",
        ContactPoints {
            email: EMAIL.into(),
            phone: PHONE.into(),
            device_tokens: vec![device(Platform::Android, ANDROID_TOKEN)],
            ..ContactPoints::default()
        },
    )
    .await;
    (
        app,
        Peers {
            twilio,
            fcm,
            _apns: apns,
        },
    )
}

/// `account-ready` to `user-1` on email, SMS, push and in-app; returns the notification id.
async fn submit_everywhere(app: &TestApp) -> String {
    app.submit(SubmitRequest {
        template: Some(TemplateRef {
            key: "account-ready".into(),
            version: None,
        }),
        parameters: Some(parameters(&[("name", "Ada")])),
        recipients: vec![Recipient {
            user_id: "user-1".into(),
            ..Recipient::default()
        }],
        channels: vec![
            WireChannel::Email.into(),
            WireChannel::Sms.into(),
            WireChannel::Push.into(),
            WireChannel::InApp.into(),
        ],
        ..SubmitRequest::default()
    })
    .await
    .expect("submitting on every channel")
    .notification_id
}

/// Each delivery's state by channel; panics if a channel has more than one delivery.
fn states_by_channel(notification: &Notification) -> BTreeMap<i32, DeliveryState> {
    let mut states = BTreeMap::new();
    for delivery in &notification.deliveries {
        assert_eq!(delivery.user_id, "user-1");
        let previous = states.insert(delivery.channel, delivery.state());
        assert!(
            previous.is_none(),
            "two deliveries on {:?}",
            delivery.channel()
        );
    }
    states
}

fn every_channel(
    email: DeliveryState,
    sms: DeliveryState,
    push: DeliveryState,
    in_app: DeliveryState,
) -> BTreeMap<i32, DeliveryState> {
    [
        (WireChannel::Email as i32, email),
        (WireChannel::Sms as i32, sms),
        (WireChannel::Push as i32, push),
        (WireChannel::InApp as i32, in_app),
    ]
    .into()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_submit_on_four_channels_produces_four_deliveries_each_delivered() {
    let (app, peers) = every_channel_app().await;

    let id = submit_everywhere(&app).await;

    let notification = app
        .wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    assert_eq!(notification.deliveries.len(), 4);
    let delivered = DeliveryState::Delivered;
    assert_eq!(
        states_by_channel(&notification),
        every_channel(delivered, delivered, delivered, delivered)
    );
    let emails = app.smtp.messages();
    assert_eq!(emails.len(), 1);
    assert_eq!(emails[0].to, [EMAIL]);
    assert_eq!(emails[0].subject, "Welcome, Ada");
    let texts = peers.twilio.messages();
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0].to, PHONE);
    assert_eq!(texts[0].body, "Hi Ada, your account is ready.");
    let pushes = peers.fcm.messages();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0]["token"], ANDROID_TOKEN);
    assert_eq!(pushes[0]["notification"]["title"], "Welcome, Ada");
    assert_eq!(app.count_rows("inbox_items").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unregistered_device_leaves_the_other_three_channels_delivered_and_the_notification_partial()
 {
    let (app, peers) = every_channel_app().await;
    peers.fcm.mark_unregistered(ANDROID_TOKEN);

    let id = submit_everywhere(&app).await;

    let notification = app
        .wait_for_status(&id, NotificationStatus::PartiallyDelivered)
        .await;
    let delivered = DeliveryState::Delivered;
    assert_eq!(
        states_by_channel(&notification),
        every_channel(delivered, delivered, DeliveryState::Failed, delivered)
    );
    let push = notification
        .deliveries
        .iter()
        .find(|delivery| delivery.channel() == WireChannel::Push)
        .expect("the push delivery");
    assert!(
        push.last_error.starts_with("address_invalid: "),
        "{}",
        push.last_error
    );
    assert_eq!(app.failure_classes().await, ["permanent"]);
    assert_eq!(app.smtp.messages().len(), 1);
    assert_eq!(peers.twilio.messages().len(), 1);
    assert!(peers.fcm.messages().is_empty());
    assert_eq!(app.count_rows("inbox_items").await, 1);
}
