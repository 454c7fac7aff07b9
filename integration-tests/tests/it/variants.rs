//! A/B test variants through the public API: deterministic assignment recorded at submit and
//! shown by GetNotification, the worker sending the variant's part, and GetVariantStats
//! counting recorded events exactly.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use herald_domain::{Subject, assign_variant, two_proportion_z_test};
use herald_proto::common::{Channel as WireChannel, Priority as WirePriority};
use herald_proto::preference::preference_service_client::PreferenceServiceClient;
use herald_proto::preference::{Preferences, UpdatePreferencesRequest};
use herald_proto::submit::{
    Delivery, DeliveryState, NotificationStatus, Recipient, SubmitRequest, TemplateRef,
};
use herald_proto::template::{
    CreateTemplateRequest, EmailPart, GetVariantStatsRequest, RenderPreviewRequest,
    TemplateContent, UpdateTemplateRequest, Variant, VariantStats,
};
use tonic::Code;

use crate::harness::{As, Options, TestApp, parameters};

const KEY: &str = "spring-sale";
const WAIT: Duration = Duration::from_secs(30);

fn email(subject: &str, text: &str) -> EmailPart {
    EmailPart {
        subject: subject.into(),
        html: String::new(),
        text: text.into(),
    }
}

/// Base email plus two variants weighted 70/30: `control` keeps the base part, `bold`
/// replaces it.
fn sale_content() -> TemplateContent {
    TemplateContent {
        email: Some(email("Spring sale, {{name}}", "Hi {{name}}, 10% off.")),
        variants: vec![
            Variant {
                name: "control".into(),
                weight: 70,
                ..Variant::default()
            },
            Variant {
                name: "bold".into(),
                weight: 30,
                email: Some(email(
                    "{{name}}, 10% off ends tonight",
                    "Hi {{name}}, last chance: 10% off.",
                )),
                ..Variant::default()
            },
        ],
        ..TemplateContent::default()
    }
}

fn sale_request(recipients: Vec<Recipient>) -> SubmitRequest {
    SubmitRequest {
        template: Some(TemplateRef {
            key: KEY.into(),
            version: None,
        }),
        parameters: Some(parameters(&[("name", "Ada")])),
        recipients,
        channels: vec![WireChannel::Email.into()],
        priority: WirePriority::Normal.into(),
        ..SubmitRequest::default()
    }
}

fn user(user_id: &str) -> Recipient {
    Recipient {
        user_id: user_id.into(),
        ..Recipient::default()
    }
}

/// Submits one notification and returns its deliveries as GetNotification shows them.
async fn submit_and_read(app: &TestApp, recipients: Vec<Recipient>) -> Vec<Delivery> {
    let response = app
        .submit(sale_request(recipients))
        .await
        .expect("submitting");
    app.notification(&response.notification_id).await.deliveries
}

/// Records an engagement event for a delivery as a client would: through TrackingService.
async fn record_engagement(app: &TestApp, delivery_id: &str, kind: &str) {
    use herald_proto::tracking::EngagementKind;
    let kind = match kind {
        "opened" => EngagementKind::Opened,
        "clicked" => EngagementKind::Clicked,
        "read" => EngagementKind::Read,
        "dismissed" => EngagementKind::Dismissed,
        other => panic!("no engagement kind {other}"),
    };
    herald_proto::tracking::tracking_service_client::TrackingServiceClient::new(
        app.channel(As::Orders).await,
    )
    .record_event(herald_proto::tracking::RecordEventRequest {
        delivery_id: delivery_id.into(),
        kind: kind.into(),
        link: "https://shop.example.com/offer".into(),
        ..Default::default()
    })
    .await
    .expect("RecordEvent");
}

async fn stats(app: &TestApp, version: Option<u32>) -> Result<Vec<VariantStats>, tonic::Status> {
    app.template_client(As::Orders)
        .await
        .get_variant_stats(GetVariantStatsRequest {
            key: KEY.into(),
            version,
        })
        .await
        .map(|response| response.into_inner().variants)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_users_split_by_weight_and_keep_their_variant() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_template_with(KEY, "marketing", sale_content())
        .await;

    // 1,000 distinct users in four concurrent submits of 250 (the limit is 1,000 per submit).
    let batches = (0..4).map(|batch| {
        let recipients = (batch * 250..(batch + 1) * 250)
            .map(|index| user(&format!("user-{index}")))
            .collect::<Vec<_>>();
        let app = &app;
        async move {
            let deliveries = submit_and_read(app, recipients.clone()).await;
            assert_eq!(deliveries.len(), 250);
            deliveries
                .into_iter()
                .map(|delivery| (delivery.user_id, delivery.variant))
                .collect::<Vec<_>>()
        }
    });
    let assigned: HashMap<String, String> = futures::future::join_all(batches)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(assigned.len(), 1000);

    let control = assigned
        .values()
        .filter(|variant| *variant == "control")
        .count();
    let bold = assigned
        .values()
        .filter(|variant| *variant == "bold")
        .count();
    assert_eq!(control + bold, 1000, "only the template's variants");
    // Binomial(1000, 0.7): sd ≈ 14.5; the assignment is deterministic, so ±4.5 sd never flakes.
    assert!((635..=765).contains(&control), "control {control} of 1000");

    // The recorded variant is the documented function of (template key, user id).
    for (user_id, variant) in &assigned {
        let expected =
            ["control", "bold"][assign_variant(KEY, Subject::User(user_id), &[70, 30]).unwrap()];
        assert_eq!(variant, expected, "{user_id}");
    }

    // Re-submitting (other batch, other order) gives every user the same variant.
    let again: Vec<String> = (0..1000)
        .rev()
        .step_by(7)
        .map(|i| format!("user-{i}"))
        .collect();
    let deliveries =
        submit_and_read(&app, again.iter().map(|user_id| user(user_id)).collect()).await;
    assert_eq!(deliveries.len(), again.len());
    for delivery in &deliveries {
        assert_eq!(
            delivery.variant, assigned[&delivery.user_id],
            "{}",
            delivery.user_id
        );
    }

    // A new version with the same variants keeps them: the experiment is the template.
    app.template_client(As::Admin)
        .await
        .update_template(UpdateTemplateRequest {
            key: KEY.into(),
            content: Some(sale_content()),
            sample_parameters: Some(parameters(&[("name", "Ada")])),
            activate: true,
            ..UpdateTemplateRequest::default()
        })
        .await
        .expect("a second version");
    let response = app
        .submit(sale_request(vec![user("user-1"), user("user-2")]))
        .await
        .unwrap();
    let notification = app.notification(&response.notification_id).await;
    assert_eq!(notification.template_version, 2);
    for delivery in &notification.deliveries {
        assert_eq!(delivery.variant, assigned[&delivery.user_id]);
    }

    // A direct address without a user id gets a variant too, the same one every time.
    let direct = || Recipient {
        email: "walk-in@example.com".into(),
        ..Recipient::default()
    };
    let first = submit_and_read(&app, vec![direct()])
        .await
        .remove(0)
        .variant;
    assert!(["control", "bold"].contains(&first.as_str()), "{first}");
    assert_eq!(
        submit_and_read(&app, vec![direct()])
            .await
            .remove(0)
            .variant,
        first
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_sends_each_recipient_its_variants_part() {
    let app = TestApp::spawn().await;
    app.create_template_with(KEY, "marketing", sale_content())
        .await;
    let recipients: Vec<Recipient> = (0..8)
        .map(|index| Recipient {
            user_id: format!("shopper-{index}"),
            email: format!("shopper-{index}@example.com"),
            ..Recipient::default()
        })
        .collect();
    let response = app.submit(sale_request(recipients)).await.unwrap();
    let notification = app
        .wait_for_status(&response.notification_id, NotificationStatus::Delivered)
        .await;
    let variant_of: HashMap<String, String> = notification
        .deliveries
        .iter()
        .map(|delivery| {
            (
                format!("{}@example.com", delivery.user_id),
                delivery.variant.clone(),
            )
        })
        .collect();
    assert!(
        variant_of.values().any(|variant| variant == "bold")
            && variant_of.values().any(|variant| variant == "control"),
        "eight users should meet both variants: {variant_of:?}"
    );

    let emails = app.smtp.wait_for_messages(8, WAIT).await;
    let mut preview = app.template_client(As::Orders).await;
    for email in &emails {
        let variant = &variant_of[&email.to[0]];
        let rendered = preview
            .render_preview(RenderPreviewRequest {
                key: KEY.into(),
                version: None,
                locale: String::new(),
                channel: WireChannel::Email.into(),
                parameters: Some(parameters(&[("name", "Ada")])),
                variant: variant.clone(),
            })
            .await
            .expect("previewing the variant")
            .into_inner();
        assert_eq!(&rendered.variant, variant);
        let expected = rendered.rendered.unwrap().email.unwrap();
        assert_eq!(email.subject, expected.subject, "{variant}");
        // A single-part text message ends with the transfer encoding's line breaks.
        assert_eq!(
            email.text.as_deref().map(str::trim_end),
            Some(expected.text.trim_end()),
            "{variant}"
        );
        let wanted = if variant == "bold" {
            "Ada, 10% off ends tonight"
        } else {
            "Spring sale, Ada"
        };
        assert_eq!(email.subject, wanted);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_count_recorded_events_exactly() {
    let app = TestApp::spawn().await;
    let mut content = sale_content();
    content.variants[0].weight = 50;
    content.variants[1].weight = 50;
    app.create_template_with(KEY, "marketing", content).await;
    // reader-0 opted out of everything: suppressed at submit, so neither sent nor delivered.
    PreferenceServiceClient::new(app.channel(As::Orders).await)
        .update_preferences(UpdatePreferencesRequest {
            preferences: Some(Preferences {
                user_id: "reader-0".into(),
                global_opt_out: true,
                ..Preferences::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["global_opt_out".into()],
            }),
        })
        .await
        .expect("opting reader-0 out");
    let recipients: Vec<Recipient> = (0..20)
        .map(|index| Recipient {
            user_id: format!("reader-{index}"),
            email: format!("reader-{index}@example.com"),
            ..Recipient::default()
        })
        .collect();
    let response = app.submit(sale_request(recipients)).await.unwrap();
    let notification = app
        .wait_for_status(
            &response.notification_id,
            NotificationStatus::PartiallyDelivered,
        )
        .await;
    let suppressed = &notification.deliveries[0];
    assert_eq!(suppressed.state(), DeliveryState::Suppressed);
    assert!(
        !suppressed.variant.is_empty(),
        "suppressed deliveries have a variant too"
    );
    let mut by_variant: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for delivery in &notification.deliveries[1..] {
        assert_eq!(delivery.state(), DeliveryState::Delivered);
        by_variant
            .entry(delivery.variant.clone())
            .or_default()
            .push(delivery.id.clone());
    }
    let control = by_variant["control"].clone();
    let bold = by_variant["bold"].clone();
    assert!(control.len() >= 4 && bold.len() >= 4, "{by_variant:?}");

    // control: 1 opened (twice: counted once), 1 clicked; bold: 3 opened, 2 of them clicked.
    record_engagement(&app, &control[0], "opened").await;
    record_engagement(&app, &control[0], "opened").await;
    record_engagement(&app, &control[1], "clicked").await;
    for id in &bold[..3] {
        record_engagement(&app, id, "opened").await;
    }
    for id in &bold[..2] {
        record_engagement(&app, id, "clicked").await;
    }
    // Events of other kinds, and events of undelivered deliveries, count for nothing.
    record_engagement(&app, &bold[3], "dismissed").await;
    record_engagement(&app, &suppressed.id, "opened").await;

    let rows = stats(&app, None).await.expect("GetVariantStats");
    assert_eq!(
        rows.iter()
            .map(|row| (row.version, row.variant.as_str()))
            .collect::<Vec<_>>(),
        [(1, "control"), (1, "bold")],
        "the variants' order, control first"
    );
    let (n_control, n_bold) = (control.len() as u64, bold.len() as u64);
    let expect = |row: &VariantStats, n: u64, opened: u64, clicked: u64| {
        assert_eq!(
            (row.sent, row.delivered, row.opened, row.clicked),
            (n, n, opened, clicked),
            "{}",
            row.variant
        );
        assert_eq!(row.delivery_rate, 1.0);
        assert_eq!(row.open_rate, opened as f64 / n as f64);
        assert_eq!(row.click_rate, clicked as f64 / n as f64);
    };
    expect(&rows[0], n_control, 1, 1);
    expect(&rows[1], n_bold, 3, 2);
    assert_eq!(
        rows[0].open_rate_vs_control, None,
        "the control is not compared"
    );
    let open = rows[1].open_rate_vs_control.unwrap();
    let reference = two_proportion_z_test(1, n_control, 3, n_bold).unwrap();
    assert!(
        (open.z - reference.z).abs() < 1e-12 && open.z > 0.0,
        "{open:?}"
    );
    assert!((open.p_value - reference.p_value).abs() < 1e-12, "{open:?}");
    let click = rows[1].click_rate_vs_control.unwrap();
    let reference = two_proportion_z_test(1, n_control, 2, n_bold).unwrap();
    assert!((click.z - reference.z).abs() < 1e-12, "{click:?}");

    // Asking for the version gives the same rows; errors name what is wrong.
    assert_eq!(stats(&app, Some(1)).await.unwrap(), rows);
    assert_eq!(
        stats(&app, Some(9)).await.unwrap_err().code(),
        Code::NotFound
    );
    app.create_template("plain", "Hi", "", "Hello").await;
    let error = app
        .template_client(As::Orders)
        .await
        .get_variant_stats(GetVariantStatsRequest {
            key: "plain".into(),
            version: None,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(error.message(), "key: no version of `plain` has variants");
    let denied = app
        .template_client(As::Stranger)
        .await
        .get_variant_stats(GetVariantStatsRequest {
            key: KEY.into(),
            version: None,
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_variants_are_rejected_with_the_field_named() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    let create = |content: TemplateContent| CreateTemplateRequest {
        key: KEY.into(),
        category: "marketing".into(),
        content: Some(content),
        ..CreateTemplateRequest::default()
    };
    let mut client = app.template_client(As::Admin).await;
    let mut cases: Vec<(TemplateContent, &str)> = Vec::new();
    let mut duplicate = sale_content();
    duplicate.variants[1].name = "control".into();
    cases.push((
        duplicate,
        "content.variants[1].name: `control` is also the name of variants[0]; names must be unique",
    ));
    let mut zero = sale_content();
    zero.variants[1].weight = 0;
    cases.push((zero, "content.variants[bold].weight: must be 1 to 1000000"));
    let mut missing_part = sale_content();
    missing_part.variants[1].sms = Some(herald_proto::template::SmsPart { text: "x".into() });
    cases.push((
        missing_part,
        "content.variants[bold].sms: the base content has no sms part; a variant can only replace parts the base content has",
    ));
    let mut empty_subject = sale_content();
    empty_subject.variants[1].email = Some(email(" ", "x"));
    cases.push((
        empty_subject,
        "content.variants[bold].email.subject must not be empty",
    ));
    for (content, message) in cases {
        let error = client.create_template(create(content)).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{}", error.message());
        assert_eq!(error.message(), message);
    }

    client
        .create_template(create(sale_content()))
        .await
        .unwrap();
    let error = client
        .render_preview(RenderPreviewRequest {
            key: KEY.into(),
            channel: WireChannel::Email.into(),
            parameters: Some(parameters(&[("name", "Ada")])),
            variant: "loud".into(),
            ..RenderPreviewRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(
        error.message(),
        "variant: the template has no variant `loud`; it has control, bold (version 1)"
    );
}
