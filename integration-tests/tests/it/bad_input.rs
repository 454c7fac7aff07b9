//! Bad input through the real API: control characters on every RPC that writes, the
//! restricted handlebars at save and at render, bounded rendering.

use herald_proto::admin::DiscardFailuresRequest;
use herald_proto::common::{Channel as WireChannel, Priority as WirePriority};
use herald_proto::inbox::MarkReadRequest;
use herald_proto::inbox::inbox_service_client::InboxServiceClient;
use herald_proto::preference::preference_service_client::PreferenceServiceClient;
use herald_proto::preference::{ContactPoints, Preferences, UpdatePreferencesRequest};
use herald_proto::submit::{
    NotificationStatus, Recipient, SubmitBatchRequest, SubmitRequest, TemplateRef,
};
use herald_proto::template::{
    CreateTemplateRequest, EmailPart, InAppPart, SmsPart, TemplateContent, UpdateTemplateRequest,
};
use herald_proto::tracking::tracking_service_client::TrackingServiceClient;
use herald_proto::tracking::{EngagementKind, RecordEventRequest};
use tonic::Code;

use crate::harness::{As, Options, TestApp, parameters, welcome_request};

/// The message of an `INVALID_ARGUMENT`, which must start with `expected`.
fn check_invalid<T: std::fmt::Debug>(result: Result<T, tonic::Status>, expected: &str) {
    let status = result.expect_err("the request is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().starts_with(expected),
        "`{}` does not start with `{expected}`",
        status.message()
    );
}

fn json_parameters(value: serde_json::Value) -> prost_types::Struct {
    let serde_json::Value::Object(object) = value else {
        panic!("parameters are an object");
    };
    herald_proto::conversions::json_to_struct(&object)
}

fn email_content(subject: &str, html: &str, text: &str) -> TemplateContent {
    TemplateContent {
        email: Some(EmailPart {
            subject: subject.into(),
            html: html.into(),
            text: text.into(),
        }),
        ..TemplateContent::default()
    }
}

async fn create(app: &TestApp, request: CreateTemplateRequest) -> Result<(), tonic::Status> {
    app.template_client(As::Admin)
        .await
        .create_template(request)
        .await
        .map(drop)
}

fn template(key: &str, content: TemplateContent) -> CreateTemplateRequest {
    CreateTemplateRequest {
        key: key.into(),
        category: "transactional".into(),
        content: Some(content),
        ..CreateTemplateRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn control_characters_in_a_batch_item_are_refused_with_its_path_and_the_other_items_are_written()
 {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let mut escape = welcome_request("bo@example.com");
    escape.parameters = Some(parameters(&[
        ("username", "Bo\u{1b}[31m"),
        ("item_name", "x"),
    ]));
    let mut nul_key = welcome_request("cy@example.com");
    nul_key.parameters = Some(json_parameters(serde_json::json!({
        "username": "Cy", "item_name": "x", "extra": {"ke\u{0}y": "v"}
    })));
    let mut tab_metadata = welcome_request("di@example.com");
    tab_metadata.metadata = [("order".to_owned(), "4\t2".to_owned())].into();
    let mut multiline = welcome_request("ed@example.com");
    multiline.parameters = Some(parameters(&[
        ("username", "Ed"),
        ("item_name", "line one\r\n\tline two"),
    ]));
    let results = app
        .submit_client(As::Orders)
        .await
        .submit_batch(SubmitBatchRequest {
            items: vec![
                welcome_request("ada@example.com"),
                escape,
                nul_key,
                tab_metadata,
                multiline,
            ],
        })
        .await
        .expect("SubmitBatch answers per item")
        .into_inner()
        .results;

    let codes: Vec<i32> = results.iter().map(|result| result.code).collect();
    let invalid = Code::InvalidArgument as i32;
    assert_eq!(codes, [0, invalid, invalid, invalid, 0]);
    assert_eq!(
        results[1].message,
        "items[1].parameters.username: must not contain control characters other than tab, line feed and carriage return (found U+001B at character 2)"
    );
    assert_eq!(
        results[2].message,
        "items[2].parameters.extra.ke\\u{0}y: must not contain control characters (found U+0000 at character 2)"
    );
    assert_eq!(
        results[3].message,
        "items[3].metadata[order]: must not contain control characters (found U+0009 at character 1)"
    );
    assert_eq!(app.count_rows("notifications").await, 2);
    assert_eq!(app.count_rows("deliveries").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn control_characters_are_invalid_arguments_on_every_rpc_that_writes() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    let nul_html = create(
        &app,
        template("nul", email_content("Hi", "<p>\u{0}</p>", "")),
    )
    .await;
    check_invalid(
        nul_html,
        "content.email.html must not contain control characters other than tab, line feed and carriage return (found U+0000 at character 3)",
    );
    let escape_description = create(
        &app,
        CreateTemplateRequest {
            description: "red\u{1b}[31m".into(),
            ..template("escape", email_content("Hi", "", "Hello"))
        },
    )
    .await;
    check_invalid(
        escape_description,
        "description: must not contain control characters",
    );
    let nul_sample = create(
        &app,
        CreateTemplateRequest {
            sample_parameters: Some(parameters(&[("na\u{0}me", "Ada")])),
            ..template("sample", email_content("Hi", "", "Hello"))
        },
    )
    .await;
    check_invalid(
        nul_sample,
        "sample_parameters.na\\u{0}me: must not contain control characters",
    );
    assert_eq!(app.count_rows("templates").await, 0);

    let mut preferences = PreferenceServiceClient::new(app.channel(As::Orders).await);
    let update = |user_id: &str, email: &str| UpdatePreferencesRequest {
        preferences: Some(Preferences {
            user_id: user_id.into(),
            contacts: Some(ContactPoints {
                email: email.into(),
                ..ContactPoints::default()
            }),
            ..Preferences::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["contacts.email".into()],
        }),
    };
    check_invalid(
        preferences.update_preferences(update("user\n1", "")).await,
        "preferences.user_id: must not contain control characters (found U+000A at character 4)",
    );
    check_invalid(
        preferences
            .update_preferences(update("user-1", "\"a\u{1}b\"@example.com"))
            .await,
        "preferences.contacts.email: must not contain control characters",
    );
    assert_eq!(app.count_rows("user_preferences").await, 0);

    let mut inbox = InboxServiceClient::new(app.channel(As::Orders).await);
    check_invalid(
        inbox
            .mark_read(MarkReadRequest {
                user_id: "user\u{0}".into(),
                item_ids: vec![uuid::Uuid::new_v4().to_string()],
            })
            .await,
        "user_id: must not contain control characters (found U+0000 at character 4)",
    );
    let mut tracking = TrackingServiceClient::new(app.channel(As::Orders).await);
    check_invalid(
        tracking
            .record_event(RecordEventRequest {
                delivery_id: uuid::Uuid::new_v4().to_string(),
                kind: EngagementKind::Clicked.into(),
                link: "https://shop.example/\u{0}".into(),
                client_event_id: String::new(),
            })
            .await,
        "link: must not contain control characters",
    );
    check_invalid(
        app.admin_client()
            .await
            .discard_failures(DiscardFailuresRequest {
                ids: vec![uuid::Uuid::new_v4().to_string()],
                reason: "bell\u{7}".into(),
            })
            .await,
        "reason: must not contain control characters other than tab",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_using_log_partials_or_decorators_is_refused_naming_the_construct_and_the_part()
{
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    check_invalid(
        create(
            &app,
            template("log", email_content("Hi", "", "{{log username}}")),
        )
        .await,
        "content.email.text must not use the helper `log`; the allowed ones are if, unless, each, with, lookup, eq",
    );
    check_invalid(
        create(
            &app,
            template(
                "inline",
                email_content("Hi", "{{#*inline \"x\"}}{{> x}}{{/inline}}{{> x}}", ""),
            ),
        )
        .await,
        "content.email.html must not use decorators or inline partials",
    );
    check_invalid(
        create(
            &app,
            template("partial", email_content("{{> email.subject}}", "", "x")),
        )
        .await,
        "content.email.subject must not use partials",
    );
    check_invalid(
        create(
            &app,
            template(
                "raw",
                TemplateContent {
                    sms: Some(SmsPart {
                        text: "{{{{raw}}}}{{username}}{{{{/raw}}}}".into(),
                    }),
                    ..TemplateContent::default()
                },
            ),
        )
        .await,
        "content.sms.text must not use the block helper `raw`",
    );
    app.create_welcome_template().await;
    let update = app
        .template_client(As::Admin)
        .await
        .update_template(UpdateTemplateRequest {
            key: "welcome".into(),
            content: Some(email_content("Hi", "", "{{#if (log username)}}x{{/if}}")),
            sample_parameters: Some(parameters(&[("username", "Ada")])),
            activate: true,
            ..UpdateTemplateRequest::default()
        })
        .await;
    check_invalid(update, "content.email.text must not use the helper `log`");
    assert_eq!(app.count_rows("templates").await, 1);
    assert_eq!(app.count_rows("template_versions").await, 1);
}

/// Submits `request` for version `version` of `welcome` and waits for it to fail.
async fn wait_for_failure(app: &TestApp, mut request: SubmitRequest, version: u32) -> String {
    request.template = Some(TemplateRef {
        key: "welcome".into(),
        version: Some(version),
    });
    let id = app
        .submit(request)
        .await
        .expect("the submit is accepted")
        .notification_id;
    let notification = app.wait_for_status(&id, NotificationStatus::Failed).await;
    notification.deliveries[0].last_error.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_template_that_breaks_the_rules_fails_its_delivery_permanently_without_rendering()
{
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    // Stored before the rules existed: written straight to the database.
    let mut connection = app.pool.get().await.unwrap();
    herald_db::templates::add_version(
        &mut connection,
        herald_db::templates::NewVersion {
            key: herald_domain::TemplateKey::parse("welcome").unwrap(),
            content: herald_templates::VersionContent::from_stored(serde_json::json!({
                "email": {"subject": "Hi", "html": "", "text": "{{log username}}{{username}}"}
            }))
            .unwrap(),
            parameters: vec!["username".into()],
            sample_parameters: None,
            created_by: "test".into(),
            activate: false,
        },
    )
    .await
    .unwrap();
    drop(connection);

    let last_error = wait_for_failure(&app, welcome_request("ada@example.com"), 2).await;
    assert!(
        last_error.contains("locales[en].email.text must not use the helper `log`"),
        "{last_error}"
    );
    assert!(!last_error.contains("Ada"), "{last_error}");
    assert!(app.smtp.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn nested_eaches_over_big_arrays_fail_the_delivery_permanently_instead_of_hanging() {
    let app = TestApp::spawn().await;
    app.template_client(As::Admin)
        .await
        .create_template(CreateTemplateRequest {
            sample_parameters: Some(json_parameters(serde_json::json!({"items": [1, 2]}))),
            ..template(
                "welcome",
                email_content(
                    "Items",
                    "",
                    "{{#each items}}{{#each @root.items}}{{#each @root.items}}{{/each}}{{/each}}{{/each}}done",
                ),
            )
        })
        .await
        .expect("the template renders its samples");
    let items: Vec<u32> = (0..1000).collect();
    let mut big = welcome_request("ada@example.com");
    big.parameters = Some(json_parameters(serde_json::json!({ "items": items })));
    let last_error = wait_for_failure(&app, big, 1).await;
    assert!(
        last_error.contains("locales[en].email.text takes more than 200000 steps to render"),
        "{last_error}"
    );

    let too_many: Vec<u32> = (0..=1000).collect();
    let mut refused = welcome_request("ada@example.com");
    refused.parameters = Some(json_parameters(serde_json::json!({ "items": too_many })));
    check_invalid(
        app.submit(refused).await,
        "parameters.items: must have at most 1000 items (has 1001)",
    );
    assert!(app.smtp.messages().is_empty());
}

fn in_app(action_url: &str) -> TemplateContent {
    TemplateContent {
        in_app: Some(InAppPart {
            title: "Hi".into(),
            body: String::new(),
            action_url: action_url.into(),
        }),
        ..TemplateContent::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_action_url_outside_the_allowed_schemes_is_refused_at_save_and_fails_at_render() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    check_invalid(
        create(&app, template("script", in_app("javascript:alert({{id}})"))).await,
        "content.in_app.action_url must use one of the schemes https (in_app.action_url_schemes), not `javascript`",
    );
    check_invalid(
        create(
            &app,
            CreateTemplateRequest {
                sample_parameters: Some(parameters(&[("url", "data:text/html,x")])),
                ..template("sampled", in_app("{{url}}"))
            },
        )
        .await,
        "content.in_app.action_url must use one of the schemes https (in_app.action_url_schemes), not `data`",
    );
    assert_eq!(app.count_rows("templates").await, 0);

    // The scheme can come from a parameter: the worker checks what it renders.
    create(&app, template("linked", in_app("{{url}}")))
        .await
        .expect("a template without samples only states no scheme");
    app.start_in_app_worker();
    let submit = |url: &str| SubmitRequest {
        template: Some(TemplateRef {
            key: "linked".into(),
            version: None,
        }),
        parameters: Some(parameters(&[("url", url)])),
        recipients: vec![Recipient {
            user_id: "user-1".into(),
            ..Recipient::default()
        }],
        channels: vec![WireChannel::InApp.into()],
        priority: WirePriority::Normal.into(),
        ..SubmitRequest::default()
    };
    let refused = app.submit(submit("javascript:alert(1)")).await.unwrap();
    let notification = app
        .wait_for_status(&refused.notification_id, NotificationStatus::Failed)
        .await;
    assert!(
        notification.deliveries[0]
            .last_error
            .contains("in_app.action_url must use one of the schemes https"),
        "{}",
        notification.deliveries[0].last_error
    );
    assert_eq!(app.count_rows("inbox_items").await, 0);
    let allowed = app.submit(submit("https://shop.example/1")).await.unwrap();
    app.wait_for_status(&allowed.notification_id, NotificationStatus::Delivered)
        .await;
    assert_eq!(app.count_rows("inbox_items").await, 1);
}
