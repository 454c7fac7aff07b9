//! TemplateService: admins write, submitters read.

use std::collections::HashMap;
use std::time::Duration;

use herald_proto::common::Channel as WireChannel;
use herald_proto::submit::{Recipient, SubmitRequest, TemplateRef};
use herald_proto::template::{
    ActivateVersionRequest, CreateTemplateRequest, EmailPart, GetTemplateRequest,
    ListTemplatesRequest, ListVersionsRequest, RenderPreviewRequest, Template, TemplateContent,
    UpdateTemplateRequest,
};
use tonic::Code;

use crate::harness::{As, TestApp, parameters};

const WAIT: Duration = Duration::from_secs(20);

fn request(key: &str, html: &str) -> CreateTemplateRequest {
    CreateTemplateRequest {
        key: key.into(),
        category: "onboarding".into(),
        description: "Sent after sign-up".into(),
        content: Some(TemplateContent {
            email: Some(EmailPart {
                subject: "Hi {{username}}".into(),
                html: html.into(),
                text: String::new(),
            }),
            ..TemplateContent::default()
        }),
        ..CreateTemplateRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_creates_a_template_that_submitters_can_read() {
    let app = TestApp::spawn().await;
    let created = app
        .template_client(As::Admin)
        .await
        .create_template(request(
            "welcome",
            "<p>{{#each items}}{{name}}{{/each}} {{total}}</p>",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.version, 1);
    assert_eq!(created.parameters, ["items", "total", "username"]);
    assert_eq!(created.created_by, "spiffe://herald.local/admin/ops");

    let fetched = app
        .template_client(As::Orders)
        .await
        .get_template(GetTemplateRequest {
            key: "welcome".into(),
            version: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, created);
}

#[tokio::test(flavor = "multi_thread")]
async fn template_writes_need_the_admin_role() {
    let app = TestApp::spawn().await;
    let status = app
        .template_client(As::Orders)
        .await
        .create_template(request("welcome", "<p>x</p>"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(app.count_rows("templates").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_templates_are_refused_with_the_part_named_and_nothing_saved() {
    let app = TestApp::spawn().await;
    let mut client = app.template_client(As::Admin).await;
    let cases = [
        (request("Bad Key", "x"), "key:"),
        (
            CreateTemplateRequest {
                category: String::new(),
                ..request("ok", "x")
            },
            "category:",
        ),
        (
            request("ok", "{{#if}}"),
            "content.email.html does not compile",
        ),
        (
            CreateTemplateRequest {
                content: None,
                ..request("ok", "x")
            },
            "content.content must have",
        ),
        (
            CreateTemplateRequest {
                description: "d".repeat(1001),
                ..request("ok", "x")
            },
            "description:",
        ),
    ];
    for (request, expected) in cases {
        let status = client.create_template(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(
            status.message().starts_with(expected),
            "expected `{expected}…`, got `{}`",
            status.message()
        );
    }
    assert_eq!(app.count_rows("templates").await, 0);
    assert_eq!(app.count_rows("template_versions").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_key_is_already_exists() {
    let app = TestApp::spawn().await;
    let mut client = app.template_client(As::Admin).await;
    client
        .create_template(request("welcome", "x"))
        .await
        .unwrap();
    let status = client
        .create_template(request("welcome", "y"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(
        status.message(),
        "key: a template named `welcome` already exists"
    );
    assert_eq!(app.count_rows("templates").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn templates_are_listed_by_key_in_pages() {
    let app = TestApp::spawn().await;
    let mut admin = app.template_client(As::Admin).await;
    for key in ["c", "a", "b"] {
        admin.create_template(request(key, "x")).await.unwrap();
    }
    let mut client = app.template_client(As::Orders).await;
    let mut keys = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_templates(ListTemplatesRequest {
                page_size: 2,
                page_token: page_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        keys.extend(page.templates.into_iter().map(|template| template.key));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(keys, ["a", "b", "c"]);

    let status = client
        .list_templates(ListTemplatesRequest {
            page_size: 101,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_template_is_not_found() {
    let app = TestApp::spawn().await;
    let status = app
        .template_client(As::Orders)
        .await
        .get_template(GetTemplateRequest {
            key: "nope".into(),
            version: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

fn email(subject: &str, html: &str, text: &str) -> TemplateContent {
    TemplateContent {
        email: Some(EmailPart {
            subject: subject.into(),
            html: html.into(),
            text: text.into(),
        }),
        ..TemplateContent::default()
    }
}

fn locales(entries: &[(&str, TemplateContent)]) -> HashMap<String, TemplateContent> {
    entries
        .iter()
        .map(|(tag, content)| ((*tag).to_owned(), content.clone()))
        .collect()
}

/// `welcome` v1: English (default) and Korean, validated with `username`.
async fn create_localized(app: &TestApp) -> Template {
    app.template_client(As::Admin)
        .await
        .create_template(CreateTemplateRequest {
            key: "welcome".into(),
            category: "onboarding".into(),
            default_locale: "en".into(),
            locales: locales(&[
                (
                    "en",
                    email(
                        "Welcome, {{username}}",
                        "<p>Hello {{username}} &amp; team</p>",
                        "Hello {{username}}",
                    ),
                ),
                (
                    "ko",
                    email(
                        "환영합니다, {{username}}님",
                        "<p>{{username}}님, 안녕하세요</p>",
                        "{{username}}님, 안녕하세요",
                    ),
                ),
            ]),
            sample_parameters: Some(parameters(&[("username", "Ada")])),
            ..CreateTemplateRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn update(subject: &str, activate: bool) -> UpdateTemplateRequest {
    UpdateTemplateRequest {
        key: "welcome".into(),
        content: Some(email(subject, "", "Body for {{username}}")),
        sample_parameters: Some(parameters(&[("username", "Ada")])),
        activate,
        ..UpdateTemplateRequest::default()
    }
}

fn submit_to(address: &str, locale: &str, version: Option<u32>) -> SubmitRequest {
    SubmitRequest {
        template: Some(TemplateRef {
            key: "welcome".into(),
            version,
        }),
        parameters: Some(parameters(&[("username", "Ada")])),
        recipients: vec![Recipient {
            user_id: String::new(),
            email: address.into(),
            locale: locale.into(),
            ..Default::default()
        }],
        channels: vec![WireChannel::Email.into()],
        ..SubmitRequest::default()
    }
}

async fn active_version(app: &TestApp) -> u32 {
    app.template_client(As::Orders)
        .await
        .get_template(GetTemplateRequest {
            key: "welcome".into(),
            version: None,
        })
        .await
        .unwrap()
        .into_inner()
        .version
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_create_versions_that_submits_may_pin_and_activation_rolls_back() {
    let app = TestApp::spawn().await;
    create_localized(&app).await;
    let mut admin = app.template_client(As::Admin).await;

    let v2 = admin
        .update_template(update("Version two for {{username}}", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v2.version, v2.active_version), (2, 1));
    assert_eq!(v2.default_locale, "en");
    assert_eq!(active_version(&app).await, 1, "not activated");

    let activated = admin
        .activate_version(ActivateVersionRequest {
            key: "welcome".into(),
            version: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((activated.version, activated.active_version), (2, 2));
    assert_eq!(active_version(&app).await, 2);

    // The active version (2) by default; a pinned submit gets version 1.
    app.submit(submit_to("latest@example.com", "", None))
        .await
        .unwrap();
    app.submit(submit_to("pinned@example.com", "", Some(1)))
        .await
        .unwrap();
    let emails = app.smtp.wait_for_messages(2, WAIT).await;
    let subject_for = |address: &str| {
        emails
            .iter()
            .find(|email| email.to == [address])
            .map(|email| email.subject.clone())
            .unwrap()
    };
    assert_eq!(subject_for("latest@example.com"), "Version two for Ada");
    assert_eq!(subject_for("pinned@example.com"), "Welcome, Ada");

    // Rollback: activate version 1 again.
    admin
        .activate_version(ActivateVersionRequest {
            key: "welcome".into(),
            version: 1,
        })
        .await
        .unwrap();
    assert_eq!(active_version(&app).await, 1);

    let v3 = admin
        .update_template(update("Three", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v3.version, v3.active_version), (3, 3));

    let versions = app
        .template_client(As::Orders)
        .await
        .list_versions(ListVersionsRequest {
            key: "welcome".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(
        versions
            .iter()
            .map(|version| (version.version, version.active_version))
            .collect::<Vec<_>>(),
        [(3, 3), (2, 3), (1, 3)]
    );
    assert_eq!(versions[2].locales.len(), 2, "version 1 keeps its locales");
    assert_eq!(versions[0].locales.keys().collect::<Vec<_>>(), ["en"]);

    let status = admin
        .activate_version(ActivateVersionRequest {
            key: "welcome".into(),
            version: 9,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_whose_samples_miss_a_parameter_is_neither_saved_nor_activated() {
    let app = TestApp::spawn().await;
    create_localized(&app).await;
    let mut admin = app.template_client(As::Admin).await;

    let status = admin
        .update_template(UpdateTemplateRequest {
            key: "welcome".into(),
            locales: locales(&[
                ("en", email("Hi {{username}}", "", "x")),
                ("ko", email("Hi {{username}}", "", "쿠폰 {{coupon}}")),
            ]),
            sample_parameters: Some(parameters(&[("username", "Ada")])),
            activate: true,
            ..UpdateTemplateRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "locales[ko].email.text needs the parameter `coupon`, which was not supplied"
    );

    let status = admin
        .update_template(UpdateTemplateRequest {
            sample_parameters: None,
            ..update("Hi {{username}}", true)
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("sample_parameters: is required"),
        "{}",
        status.message()
    );

    let status = admin
        .update_template(UpdateTemplateRequest {
            locales: locales(&[("ko_KR", email("s", "", "t"))]),
            ..update("Hi {{username}}", true)
        })
        .await
        .unwrap_err();
    assert!(
        status
            .message()
            .starts_with("locales[ko_KR]: must be a BCP 47"),
        "{}",
        status.message()
    );
    assert_eq!(app.count_rows("template_versions").await, 1);
    assert_eq!(active_version(&app).await, 1);

    // A version stored without passing validation (e.g. written before sample parameters were
    // checked) cannot be activated either.
    let mut connection = app.pool.get().await.unwrap();
    herald_db::templates::add_version(
        &mut connection,
        herald_db::templates::NewVersion {
            key: herald_domain::TemplateKey::parse("welcome").unwrap(),
            content: herald_templates::VersionContent::from_stored(serde_json::json!({
                "email": {"subject": "{{username}} {{coupon}}", "html": "", "text": "x"}
            }))
            .unwrap(),
            parameters: vec!["coupon".into(), "username".into()],
            sample_parameters: Some(serde_json::json!({"username": "Ada"})),
            created_by: "test".into(),
            activate: false,
        },
    )
    .await
    .unwrap();
    let status = admin
        .activate_version(ActivateVersionRequest {
            key: "welcome".into(),
            version: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "version: version 2 of `welcome` cannot be activated: locales[en].email.subject needs the parameter `coupon`, which was not supplied"
    );
    assert_eq!(active_version(&app).await, 1);

    // Creating with samples is strict too, and saves nothing on failure.
    let status = admin
        .create_template(CreateTemplateRequest {
            sample_parameters: Some(parameters(&[])),
            ..request("other", "<p>x</p>")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "content.email.subject needs the parameter `username`, which was not supplied"
    );
    assert_eq!(app.count_rows("templates").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ko_kr_recipient_gets_korean_and_an_fr_recipient_the_default() {
    let app = TestApp::spawn().await;
    create_localized(&app).await;
    app.submit(submit_to("minji@example.com", "ko-KR", None))
        .await
        .unwrap();
    app.submit(submit_to("amelie@example.com", "fr", None))
        .await
        .unwrap();
    let emails = app.smtp.wait_for_messages(2, WAIT).await;
    let email_to = |address: &str| {
        emails
            .iter()
            .find(|email| email.to == [address])
            .unwrap()
            .clone()
    };
    let korean = email_to("minji@example.com");
    assert_eq!(korean.subject, "환영합니다, Ada님");
    assert_eq!(korean.text.as_deref(), Some("Ada님, 안녕하세요"));
    assert_eq!(email_to("amelie@example.com").subject, "Welcome, Ada");

    let status = app
        .submit(submit_to("x@example.com", "korean", None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("recipients[0].locale: must be a BCP 47"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn render_preview_returns_what_the_worker_sends_byte_for_byte() {
    let app = TestApp::spawn().await;
    create_localized(&app).await;
    // Markup, quotes, non-ASCII and template syntax in a parameter value. (No line break:
    // bodies are rendered with CRLF as sent, but aiosmtpd's maildir rewrites line endings of
    // quoted-printable parts, so the stored copy would differ from the wire.)
    let username = "<b>Jöhn & \"Ada\"</b> {{secret}}";
    let preview = app
        .template_client(As::Orders)
        .await
        .render_preview(RenderPreviewRequest {
            key: "welcome".into(),
            version: Some(1),
            locale: "ko-KR".into(),
            channel: WireChannel::Email.into(),
            parameters: Some(parameters(&[("username", username)])),
            variant: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((preview.version, preview.locale.as_str()), (1, "ko"));
    let rendered = preview.rendered.unwrap().email.unwrap();
    assert!(rendered.html.contains("&lt;b&gt;"), "{}", rendered.html);

    let mut request = submit_to("ada@example.com", "ko-KR", Some(1));
    request.parameters = Some(parameters(&[("username", username)]));
    app.submit(request).await.unwrap();
    let email = app.smtp.wait_for_messages(1, WAIT).await.remove(0);
    assert_eq!(email.subject.as_bytes(), rendered.subject.as_bytes());
    assert_eq!(
        email.text.as_deref().map(str::as_bytes),
        Some(rendered.text.as_bytes())
    );
    assert_eq!(
        email.html.as_deref().map(str::as_bytes),
        Some(rendered.html.as_bytes())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn render_preview_names_the_missing_parameter_and_the_missing_part() {
    let app = TestApp::spawn().await;
    create_localized(&app).await;
    let mut client = app.template_client(As::Orders).await;
    let preview =
        |locale: &str, channel: WireChannel, pairs: &[(&str, &str)]| RenderPreviewRequest {
            key: "welcome".into(),
            version: None,
            locale: locale.into(),
            channel: channel.into(),
            parameters: Some(parameters(pairs)),
            variant: String::new(),
        };
    let cases = [
        (
            preview("ko", WireChannel::Email, &[]),
            Code::InvalidArgument,
            "parameters: locales[ko].email.subject needs the parameter `username`, which was not supplied",
        ),
        (
            preview("en", WireChannel::Sms, &[("username", "Ada")]),
            Code::FailedPrecondition,
            "channel: version 1 of `welcome` has no sms part",
        ),
        (
            preview("ko_KR", WireChannel::Email, &[("username", "Ada")]),
            Code::InvalidArgument,
            "locale: must be a BCP 47 language tag such as `en`, `ko` or `ko-KR` (got `ko_KR`)",
        ),
    ];
    for (request, code, message) in cases {
        let status = client.render_preview(request).await.unwrap_err();
        assert_eq!((status.code(), status.message()), (code, message));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn non_admins_cannot_update_or_activate_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    create_localized(&app).await;
    app.template_client(As::Admin)
        .await
        .update_template(update("Two", false))
        .await
        .unwrap();
    let mut orders = app.template_client(As::Orders).await;
    let status = orders
        .update_template(update("Three", true))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = orders
        .activate_version(ActivateVersionRequest {
            key: "welcome".into(),
            version: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(app.count_rows("template_versions").await, 2);
    assert_eq!(active_version(&app).await, 1);
    // Reads stay open to submitters.
    let versions = orders
        .list_versions(ListVersionsRequest {
            key: "welcome".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(versions.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_activation_reaches_the_template_cache_of_every_api_replica() {
    let app = TestApp::spawn_with(crate::harness::Options {
        email_worker: false,
        ..crate::harness::Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let replica = app.spawn_api_replica().await;
    let mut replica_client = herald_proto::submit::submit_service_client::SubmitServiceClient::new(
        app.channel_at(replica, As::Orders).await,
    );
    let version_used =
        async |client: &mut herald_proto::submit::submit_service_client::SubmitServiceClient<
            tonic::transport::Channel,
        >| {
            let id = client
                .submit(crate::harness::welcome_request("ada@example.com"))
                .await
                .unwrap()
                .into_inner()
                .notification_id;
            app.notification(&id).await.template_version
        };
    // The replica now holds version 1 as the active one.
    assert_eq!(version_used(&mut replica_client).await, 1);

    // Activated through the other server: the replica hears of it through PostgreSQL.
    app.template_client(As::Admin)
        .await
        .update_template(UpdateTemplateRequest {
            key: "welcome".into(),
            content: Some(email("Version two for {{username}}", "", "{{item_name}}")),
            sample_parameters: Some(parameters(&[("username", "Ada"), ("item_name", "x")])),
            activate: true,
            ..UpdateTemplateRequest::default()
        })
        .await
        .unwrap();

    herald_test_support::eventually(
        "the replica to submit with version 2",
        Duration::from_secs(10),
        || {
            let mut client = replica_client.clone();
            async move { (version_used(&mut client).await == 2).then_some(()) }
        },
    )
    .await;
    // And a rollback the same way.
    app.template_client(As::Admin)
        .await
        .activate_version(ActivateVersionRequest {
            key: "welcome".into(),
            version: 1,
        })
        .await
        .unwrap();
    herald_test_support::eventually(
        "the replica to submit with version 1 again",
        Duration::from_secs(10),
        || {
            let mut client = replica_client.clone();
            async move { (version_used(&mut client).await == 1).then_some(()) }
        },
    )
    .await;
}
