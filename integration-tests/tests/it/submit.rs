//! Submit validation, idempotency and visibility.

use std::time::Duration;

use herald_proto::common::Channel as WireChannel;
use herald_proto::submit::{GetNotificationRequest, NotificationStatus, SubmitRequest};
use herald_proto::template::{EmailPart, TemplateContent, UpdateTemplateRequest};
use tonic::Code;

use crate::harness::{As, Options, TestApp, parameters, welcome_request};

fn check(
    app_request: impl FnOnce(&mut SubmitRequest),
    code: Code,
    field: &str,
) -> (SubmitRequest, Code, String) {
    let mut request = welcome_request("ada@example.com");
    app_request(&mut request);
    (request, code, field.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_submits_get_a_precise_status_naming_the_field_and_write_nothing() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let cases = [
        check(|r| r.template = None, Code::InvalidArgument, "template:"),
        check(
            |r| r.template.as_mut().unwrap().key = "Not A Key".into(),
            Code::InvalidArgument,
            "template.key:",
        ),
        check(
            |r| r.template.as_mut().unwrap().version = Some(0),
            Code::InvalidArgument,
            "template.version:",
        ),
        check(
            |r| r.recipients.clear(),
            Code::InvalidArgument,
            "recipients:",
        ),
        check(
            |r| r.recipients[0].email = "not-an-address".into(),
            Code::InvalidArgument,
            "recipients[0].email:",
        ),
        check(
            |r| {
                r.recipients[0].email.clear();
                r.recipients[0].user_id.clear();
            },
            Code::InvalidArgument,
            "recipients[0].email:",
        ),
        check(
            |r| r.recipients[0].user_id = "u".repeat(256),
            Code::InvalidArgument,
            "recipients[0].user_id:",
        ),
        check(|r| r.channels.clear(), Code::InvalidArgument, "channels:"),
        check(
            |r| r.channels = vec![0],
            Code::InvalidArgument,
            "channels[0]:",
        ),
        check(
            |r| r.channels = vec![1, 99],
            Code::InvalidArgument,
            "channels[1]:",
        ),
        check(
            |r| r.channels.push(WireChannel::Email.into()),
            Code::InvalidArgument,
            "channels[1]:",
        ),
        check(
            |r| r.channels.push(WireChannel::Sms.into()),
            Code::InvalidArgument,
            "channels[1]: template `welcome` has no sms part",
        ),
        check(|r| r.priority = 42, Code::InvalidArgument, "priority:"),
        check(
            |r| r.category = "Bad Category".into(),
            Code::InvalidArgument,
            "category:",
        ),
        check(
            |r| r.idempotency_key = "has spaces".into(),
            Code::InvalidArgument,
            "idempotency_key:",
        ),
        check(
            |r| r.metadata = (0..33).map(|i| (format!("k{i}"), "v".into())).collect(),
            Code::InvalidArgument,
            "metadata:",
        ),
        check(
            |r| r.parameters = Some(parameters(&[("username", "Ada")])),
            Code::InvalidArgument,
            "parameters: template `welcome` needs `item_name`",
        ),
        check(
            |r| r.template.as_mut().unwrap().key = "missing".into(),
            Code::NotFound,
            "template.key: no template named `missing`",
        ),
        check(
            |r| r.template.as_mut().unwrap().version = Some(7),
            Code::NotFound,
            "template.version:",
        ),
    ];
    let mut client = app.submit_client(As::Orders).await;
    for (request, code, field) in cases {
        let status = client.submit(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{field}: {}", status.message());
        assert!(
            status.message().starts_with(&field),
            "expected `{field}…`, got `{}`",
            status.message()
        );
    }
    assert_eq!(app.count_rows("notifications").await, 0);
    assert_eq!(app.count_rows("deliveries").await, 0);
    assert_eq!(app.count_rows("outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_submit_with_the_same_idempotency_key_returns_the_original_and_sends_once() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let mut request = welcome_request("ada@example.com");
    request.idempotency_key = "order-42-shipped".into();
    request.metadata = [
        ("a".to_owned(), "1".to_owned()),
        ("b".to_owned(), "2".to_owned()),
    ]
    .into();

    let first = app.submit(request.clone()).await.unwrap();
    let second = app.submit(request).await.unwrap();

    assert_eq!(first.notification_id, second.notification_id);
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(app.count_rows("notifications").await, 1);
    app.wait_for_status(&first.notification_id, NotificationStatus::Delivered)
        .await;
    assert_eq!(app.smtp.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_of_a_submit_stored_with_a_plain_hash_before_keyed_hashes_is_still_a_replay() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let mut request = welcome_request("ada@example.com");
    request.idempotency_key = "order-7-shipped".into();
    let first = app.submit(request.clone()).await.unwrap();
    // What a release before keyed hashes stored: SHA-256 of the canonical request.
    let canonical = serde_json::json!({
        "template": "welcome",
        "version": null,
        "parameters": {"item_name": "order #42", "username": "Ada"},
        "recipients": [{"user_id": "user-1", "email": "ada@example.com"}],
        "channels": ["email"],
        "priority": "normal",
        "category": null,
        "metadata": {},
    });
    let plain = {
        use sha2::Digest;
        sha2::Sha256::digest(canonical.to_string().as_bytes()).to_vec()
    };
    let mut connection = herald_db::connection(&app.pool).await.unwrap();
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query("UPDATE idempotency_keys SET request_hash = $1")
            .bind::<diesel::sql_types::Bytea, _>(&plain),
        &mut connection,
    )
    .await
    .unwrap();

    let again = app.submit(request.clone()).await.unwrap();
    assert_eq!(
        (again.notification_id, again.duplicate),
        (first.notification_id, true)
    );
    request.parameters = Some(parameters(&[("username", "Bob"), ("item_name", "x")]));
    let other = app.submit(request).await.unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists, "{other:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_submits_with_one_idempotency_key_create_one_notification() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let mut request = welcome_request("ada@example.com");
    request.idempotency_key = "burst".into();
    let client = app.submit_client(As::Orders).await;

    let responses = futures::future::join_all((0..10).map(|_| {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.submit(request).await.unwrap().into_inner() }
    }))
    .await;

    let ids: std::collections::BTreeSet<_> = responses
        .iter()
        .map(|r| r.notification_id.clone())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(responses.iter().filter(|r| !r.duplicate).count(), 1);
    assert_eq!(app.count_rows("notifications").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn reusing_an_idempotency_key_for_a_different_request_is_refused() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let mut request = welcome_request("ada@example.com");
    request.idempotency_key = "k1".into();
    app.submit(request.clone()).await.unwrap();

    request.recipients[0].email = "someone-else@example.com".into();
    let status = app.submit(request).await.unwrap_err();

    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(
        status.message().starts_with("idempotency_key:"),
        "{}",
        status.message()
    );
    assert_eq!(app.count_rows("notifications").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_keys_are_scoped_to_the_calling_identity() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let mut request = welcome_request("ada@example.com");
    request.idempotency_key = "shared-key".into();

    let orders = app.submit(request.clone()).await.unwrap();
    let admin = app
        .submit_client(As::Admin)
        .await
        .submit(request)
        .await
        .unwrap()
        .into_inner();

    assert_ne!(orders.notification_id, admin.notification_id);
    assert!(!admin.duplicate);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notification_is_visible_to_its_submitter_and_admins_only() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let id = app
        .submit_client(As::Admin)
        .await
        .submit(welcome_request("ada@example.com"))
        .await
        .unwrap()
        .into_inner()
        .notification_id;

    let hidden = app
        .submit_client(As::Orders)
        .await
        .get_notification(GetNotificationRequest {
            notification_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);

    let malformed = app
        .submit_client(As::Orders)
        .await
        .get_notification(GetNotificationRequest {
            notification_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(malformed.message().starts_with("notification_id:"));

    herald_test_support::eventually(
        "the admin's notification to be delivered",
        Duration::from_secs(20),
        || async {
            let notification = app
                .submit_client(As::Admin)
                .await
                .get_notification(GetNotificationRequest {
                    notification_id: id.clone(),
                })
                .await
                .ok()?
                .into_inner()
                .notification?;
            (notification.status() == NotificationStatus::Delivered).then_some(())
        },
    )
    .await;
}

fn keyed_request(key: &str) -> SubmitRequest {
    let mut request = welcome_request("ada@example.com");
    request.idempotency_key = key.into();
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_is_answered_with_the_original_even_after_the_template_changed() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let first = app.submit(keyed_request("replayed")).await.unwrap();
    assert!(!first.duplicate);
    // Version 2 needs a parameter the original request does not have.
    app.template_client(As::Admin)
        .await
        .update_template(UpdateTemplateRequest {
            key: "welcome".into(),
            content: Some(TemplateContent {
                email: Some(EmailPart {
                    subject: "Hi {{username}}".into(),
                    html: String::new(),
                    text: "Your coupon: {{coupon}}".into(),
                }),
                ..TemplateContent::default()
            }),
            sample_parameters: Some(parameters(&[("username", "Ada"), ("coupon", "C")])),
            activate: true,
            ..UpdateTemplateRequest::default()
        })
        .await
        .unwrap();

    let second = app.submit(keyed_request("replayed")).await.unwrap();

    assert_eq!(second.notification_id, first.notification_id);
    assert!(second.duplicate);
    let mut conflicting = keyed_request("replayed");
    conflicting.priority = herald_proto::common::Priority::High.into();
    let status = app.submit(conflicting).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{}", status.message());
    let unkeyed = app
        .submit(welcome_request("ada@example.com"))
        .await
        .unwrap_err();
    assert_eq!(unkeyed.code(), Code::InvalidArgument);
    assert!(
        unkeyed.message().contains("`coupon`"),
        "{}",
        unkeyed.message()
    );
    assert_eq!(app.count_rows("notifications").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nul_character_is_refused_with_its_field_path_while_other_submits_are_written() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let mut bad = welcome_request("ada@example.com");
    bad.parameters = Some(parameters(&[("username", "A\0da"), ("item_name", "x")]));
    let mut bad_metadata = welcome_request("ada@example.com");
    bad_metadata.metadata = [("order".to_owned(), "4\u{0}2".to_owned())].into();

    let (good, refused, refused_metadata) = tokio::join!(
        futures::future::join_all(
            (0..20).map(|n| app.submit(welcome_request(&format!("user{n}@example.com"))))
        ),
        app.submit(bad),
        app.submit(bad_metadata),
    );

    assert!(good.iter().all(Result::is_ok), "{good:?}");
    let refused = refused.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .starts_with("parameters.username: must not contain control characters other than tab, line feed and carriage return (found U+0000 at character 1)"),
        "{}",
        refused.message()
    );
    let refused_metadata = refused_metadata.unwrap_err();
    assert_eq!(refused_metadata.code(), Code::InvalidArgument);
    assert!(
        refused_metadata.message().starts_with("metadata[order]:"),
        "{}",
        refused_metadata.message()
    );
    assert_eq!(app.count_rows("notifications").await, 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_being_down_never_causes_a_duplicate_or_a_failed_submit() {
    let port = herald_test_support::refused_port();
    let app = TestApp::spawn_with(Options {
        redis: Some(herald_config::RedisSettings {
            url: secrecy::SecretString::from(format!("redis://127.0.0.1:{port}")),
            ..herald_config::RedisSettings::default()
        }),
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;

    let first = app.submit(keyed_request("no-redis")).await.unwrap();
    let second = app.submit(keyed_request("no-redis")).await.unwrap();

    assert_eq!(second.notification_id, first.notification_id);
    assert!(second.duplicate);
    assert_eq!(app.count_rows("notifications").await, 1);
    app.wait_for_status(&first.notification_id, NotificationStatus::Delivered)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_idempotency_key_can_be_used_again() {
    use diesel_async::RunQueryDsl;
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let first = app.submit(keyed_request("retention")).await.unwrap();
    // Jump past the retention window.
    let mut connection = app.pool.get().await.unwrap();
    diesel::sql_query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
        .execute(&mut connection)
        .await
        .unwrap();
    app.keyspace.wipe().await;

    let second = app.submit(keyed_request("retention")).await.unwrap();

    assert_ne!(second.notification_id, first.notification_id);
    assert!(!second.duplicate);
    assert_eq!(app.count_rows("idempotency_keys").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_concurrent_submits_with_one_key_create_exactly_one_notification() {
    const SUBMITS: usize = 10_000;
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(app.submit_client(As::Orders).await);
    }

    let outcomes = futures::future::join_all((0..SUBMITS).map(|index| {
        let mut client = channels[index % channels.len()].clone();
        async move { client.submit(keyed_request("stampede")).await }
    }))
    .await;

    let mut ids = std::collections::BTreeSet::new();
    let mut retryable = 0;
    for outcome in outcomes {
        match outcome {
            Ok(response) => {
                ids.insert(response.into_inner().notification_id);
            }
            Err(status) => {
                assert!(
                    matches!(
                        status.code(),
                        Code::Unavailable | Code::Aborted | Code::ResourceExhausted
                    ),
                    "only retryable refusals are allowed: {status:?}"
                );
                retryable += 1;
            }
        }
    }
    assert_eq!(ids.len(), 1, "every accepted submit got the same id");
    assert!(retryable < SUBMITS);
    assert_eq!(app.count_rows("notifications").await, 1);
    assert_eq!(app.count_rows("deliveries").await, 1);
}
