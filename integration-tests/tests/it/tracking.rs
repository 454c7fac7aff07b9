//! Tracking events: email open pixel and click redirects through the real `herald-tracker`,
//! the tracking opt-out, and `TrackingService` (RecordEvent, ListEvents).

use std::time::Duration;

use herald_proto::preference::preference_service_client::PreferenceServiceClient;
use herald_proto::preference::{GetPreferencesRequest, Preferences, UpdatePreferencesRequest};
use herald_proto::submit::{NotificationStatus, SubmitRequest, TemplateRef};
use herald_proto::tracking::tracking_service_client::TrackingServiceClient;
use herald_proto::tracking::{
    DeliveryEvent, EngagementKind, ListEventsRequest, RecordEventRequest, RecordEventResponse,
};
use secrecy::SecretString;
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::{As, Options, TestApp, parameters, welcome_request};

const WAIT: Duration = Duration::from_secs(30);

/// The link in the `order-link` template, as the recipient should end up at it.
const ORDER_URL: &str = "https://shop.example/orders/42?ref=mail&x=1";

/// An app whose email worker adds tracking, with the `order-link` template: one http link,
/// one `mailto:` link.
async fn tracking_app() -> TestApp {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    let mut settings = app.email_worker_settings(8);
    settings.tracking = app.tracking_settings();
    app.start_email_worker_with(settings);
    app.create_template(
        "order-link",
        "Your order {{order}}",
        "<html><body><p>See <a href=\"https://shop.example/orders/{{order}}?ref=mail&amp;x=1\">your order</a> \
         or <a href=\"mailto:help@example.com\">write to us</a>.</p></body></html>",
        "See https://shop.example/orders/{{order}}",
    )
    .await;
    app
}

fn order_request(email: &str) -> SubmitRequest {
    SubmitRequest {
        template: Some(TemplateRef {
            key: "order-link".into(),
            version: None,
        }),
        parameters: Some(parameters(&[("order", "42")])),
        ..welcome_request(email)
    }
}

/// Submits the order email to `email`, waits until it is delivered and returns the
/// notification id, the delivery id and the HTML the SMTP server received.
async fn deliver_order_email(app: &TestApp, email: &str) -> (String, String, String) {
    let id = app
        .submit(order_request(email))
        .await
        .unwrap()
        .notification_id;
    let notification = app
        .wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    let emails = app.smtp.wait_for_messages(1, WAIT).await;
    let html = emails[0].html.clone().expect("an html body");
    (id, notification.deliveries[0].id.clone(), html)
}

/// Every `href`/`src` value of `html` that points at the tracker, in order.
fn tracker_urls(app: &TestApp, html: &str) -> Vec<String> {
    let base = format!("http://{}/", app.tracker_address);
    html.match_indices(&base)
        .map(|(start, _)| {
            let rest = &html[start..];
            rest[..rest.find('"').expect("a quoted attribute")].to_owned()
        })
        .collect()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn tracking_client(app: &TestApp) -> TrackingServiceClient<Channel> {
    TrackingServiceClient::new(app.channel(As::Orders).await)
}

async fn events(app: &TestApp, notification_id: &str) -> Vec<DeliveryEvent> {
    tracking_client(app)
        .await
        .list_events(ListEventsRequest {
            notification_id: notification_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .events
}

fn count(events: &[DeliveryEvent], kind: &str) -> usize {
    events.iter().filter(|event| event.kind == kind).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tracked_link_redirects_to_the_template_url_and_two_quick_clicks_record_one_click() {
    let app = tracking_app().await;
    let (id, _, html) = deliver_order_email(&app, "ada@example.com").await;

    assert!(
        !html.contains("shop.example"),
        "the link was rewritten: {html}"
    );
    assert!(html.contains("href=\"mailto:help@example.com\""), "{html}");
    let urls = tracker_urls(&app, &html);
    assert_eq!(urls.len(), 2, "one click link and the pixel: {urls:?}");
    let (click, pixel) = (&urls[0], &urls[1]);
    assert!(click.contains("/c/") && pixel.contains("/o/"), "{urls:?}");
    assert!(html.find(pixel.as_str()) < html.find("</body>"));

    let client = http();
    let (first, second) = tokio::join!(client.get(click).send(), client.get(click).send());
    for response in [first.unwrap(), second.unwrap()] {
        assert_eq!(response.status(), reqwest::StatusCode::FOUND);
        assert_eq!(response.headers()["location"], ORDER_URL);
    }
    let recorded = events(&app, &id).await;
    assert_eq!(count(&recorded, "clicked"), 1, "{recorded:?}");
    let clicked = recorded
        .iter()
        .find(|event| event.kind == "clicked")
        .unwrap();
    assert_eq!(clicked.detail, ORDER_URL);
    assert_eq!(clicked.channel, "email");

    for _ in 0..2 {
        let response = client.get(pixel).send().await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "image/gif");
        assert!(
            response.headers()["cache-control"]
                .to_str()
                .unwrap()
                .contains("no-store")
        );
        assert_eq!(&response.bytes().await.unwrap()[..6], b"GIF89a");
    }
    let recorded = events(&app, &id).await;
    assert_eq!(count(&recorded, "opened"), 1, "{recorded:?}");
    let kinds: Vec<&str> = recorded.iter().map(|event| event.kind.as_str()).collect();
    for kind in [
        "accepted",
        "sending",
        "sent",
        "delivered",
        "clicked",
        "opened",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let sent = recorded.iter().find(|event| event.kind == "sent").unwrap();
    assert_eq!((sent.provider.as_str(), sent.attempt), ("smtp", 1));

    let metrics = crate::observability::scrape(app.tracker_metrics).await;
    let requests = |kind: &str, result: &str| {
        crate::observability::sample(
            &metrics,
            "herald_tracking_requests_total",
            &[("event_kind", kind), ("herald_result", result)],
        )
    };
    assert_eq!(requests("clicked", "recorded"), Some(1.0), "{metrics}");
    assert_eq!(requests("clicked", "repeat"), Some(1.0));
    assert_eq!(requests("opened", "recorded"), Some(1.0));
    assert_eq!(requests("opened", "repeat"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_tampered_or_misused_link_gets_404_and_records_nothing() {
    let app = tracking_app().await;
    let (id, delivery_id, html) = deliver_order_email(&app, "ada@example.com").await;
    let urls = tracker_urls(&app, &html);
    let (click, pixel) = (&urls[0], &urls[1]);
    let base = format!("http://{}", app.tracker_address);

    // The same delivery and an attacker's URL, signed with a guessed secret.
    let forger = herald_tracking::Signer::new(&herald_tracking::TrackingSettings {
        enabled: true,
        base_url: base.clone(),
        secret: SecretString::from("not-the-secret-but-at-least-32-bytes-long"),
        ..herald_tracking::TrackingSettings::default()
    });
    let forged = forger.click_url(
        delivery_id.parse::<uuid::Uuid>().unwrap().into(),
        "https://evil.example/",
        chrono::Utc::now(),
    );
    // A flipped character in the signature, and in the payload.
    let flip = |url: &str, at: usize| {
        let mut bytes = url.as_bytes().to_vec();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    };
    let payload_at = click.find("/c/").unwrap() + 10;
    let candidates = [
        forged,
        flip(click, click.len() - 3),
        flip(click, payload_at),
        // A pixel token on the click path and a click token on the pixel path.
        format!("{base}/c/{}", pixel.rsplit('/').next().unwrap()),
        format!("{base}/o/{}", click.rsplit('/').next().unwrap()),
        format!("{base}/c/not-a-token"),
        format!("{base}/o/"),
    ];
    let client = http();
    for url in &candidates {
        let response = client.get(url).send().await.unwrap();
        assert!(
            response.status().is_client_error(),
            "{url}: {}",
            response.status()
        );
        assert!(response.headers().get("location").is_none());
    }
    let recorded = events(&app, &id).await;
    assert_eq!(
        count(&recorded, "clicked") + count(&recorded, "opened"),
        0,
        "{recorded:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_who_opted_out_of_tracking_gets_the_email_without_pixel_or_rewritten_links() {
    let app = tracking_app().await;
    let mut preferences = PreferenceServiceClient::new(app.channel(As::Orders).await);
    preferences
        .update_preferences(UpdatePreferencesRequest {
            preferences: Some(Preferences {
                user_id: "user-1".into(),
                tracking_opt_out: true,
                ..Preferences::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["tracking_opt_out".into()],
            }),
        })
        .await
        .unwrap();
    let stored = preferences
        .get_preferences(GetPreferencesRequest {
            user_id: "user-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stored.tracking_opt_out);

    let (_, _, html) = deliver_order_email(&app, "ada@example.com").await;
    assert!(
        html.contains("href=\"https://shop.example/orders/42?ref=mail&amp;x=1\""),
        "{html}"
    );
    assert!(tracker_urls(&app, &html).is_empty(), "{html}");
    assert!(!html.contains("<img"), "{html}");
}

async fn record(
    client: &mut TrackingServiceClient<Channel>,
    delivery_id: &str,
    kind: EngagementKind,
    link: &str,
) -> Result<RecordEventResponse, tonic::Status> {
    client
        .record_event(RecordEventRequest {
            delivery_id: delivery_id.into(),
            kind: kind.into(),
            link: link.into(),
            client_event_id: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread")]
async fn record_event_is_idempotent_per_event_and_rejects_bad_input_precisely() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let id = app
        .submit(welcome_request("ada@example.com"))
        .await
        .unwrap()
        .notification_id;
    let notification = app
        .wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    let delivery_id = notification.deliveries[0].id.clone();
    let mut client = tracking_client(&app).await;

    let first = record(&mut client, &delivery_id, EngagementKind::Opened, "")
        .await
        .unwrap();
    assert!(first.recorded && !first.already_recorded);
    let again = record(&mut client, &delivery_id, EngagementKind::Opened, "")
        .await
        .unwrap();
    assert!(!again.recorded && again.already_recorded);
    assert_eq!(again.occurred_at, first.occurred_at);

    for link in ["app://orders/42", "app://orders/42", "app://help"] {
        record(&mut client, &delivery_id, EngagementKind::Clicked, link)
            .await
            .unwrap();
    }
    for kind in [EngagementKind::Read, EngagementKind::Dismissed] {
        assert!(
            record(&mut client, &delivery_id, kind, "")
                .await
                .unwrap()
                .recorded
        );
        assert!(
            !record(&mut client, &delivery_id, kind, "")
                .await
                .unwrap()
                .recorded
        );
    }
    let recorded = events(&app, &id).await;
    assert_eq!(
        ["opened", "clicked", "read", "dismissed"].map(|kind| count(&recorded, kind)),
        [1, 2, 1, 1],
        "{recorded:?}"
    );

    let unknown = record(
        &mut client,
        &uuid::Uuid::now_v7().to_string(),
        EngagementKind::Opened,
        "",
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let unspecified = record(&mut client, &delivery_id, EngagementKind::Unspecified, "")
        .await
        .unwrap_err();
    assert_eq!(unspecified.code(), Code::InvalidArgument);
    assert!(
        unspecified
            .message()
            .starts_with("kind: must be one of ENGAGEMENT_KIND_OPENED"),
        "{}",
        unspecified.message()
    );
    let bad_id = record(&mut client, "42", EngagementKind::Opened, "")
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    assert!(
        bad_id.message().starts_with("delivery_id:"),
        "{}",
        bad_id.message()
    );
    let missing = client
        .list_events(ListEventsRequest {
            notification_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notifications_events_are_listed_to_its_submitter_and_to_readers_of_any() {
    // The stranger's certificate as a second product backend that may record and read events.
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        principals: vec![herald_api_server::PrincipalSettings {
            identity: "spiffe://herald.local/service/stranger".into(),
            roles: vec!["track".into()],
            permissions: Vec::new(),
            quota_per_minute: None,
            user_namespaces: Vec::new(),
        }],
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let id = app
        .submit(welcome_request("ada@example.com"))
        .await
        .unwrap()
        .notification_id;
    let list = |who: As| {
        let id = id.clone();
        let app = &app;
        async move {
            TrackingServiceClient::new(app.channel(who).await)
                .list_events(ListEventsRequest {
                    notification_id: id,
                })
                .await
        }
    };

    assert_eq!(
        count(
            &list(As::Orders).await.unwrap().into_inner().events,
            "accepted"
        ),
        1
    );
    assert_eq!(
        count(
            &list(As::Admin).await.unwrap().into_inner().events,
            "accepted"
        ),
        1
    );
    let status = list(As::Stranger).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
}
