//! Submit → outbox → RabbitMQ → email worker → a real SMTP server.

use std::time::Duration;

use herald_proto::common::Priority as WirePriority;
use herald_proto::submit::{DeliveryState, NotificationStatus};
use herald_queue::lapin::BasicProperties;
use herald_queue::lapin::options::BasicPublishOptions;
use prost::Message as _;

use crate::harness::{Options, TestApp, parameters, welcome_request};

const WAIT: Duration = Duration::from_secs(20);

/// Waits for `notification_id`'s one email delivery to fail for good on its first attempt,
/// dead-lettered, with nothing sent and a `permanent` failure recorded; returns its error.
async fn failed_for_good_unsent(app: &TestApp, notification_id: &str) -> String {
    let notification = app
        .wait_for_status(notification_id, NotificationStatus::Failed)
        .await;
    let delivery = &notification.deliveries[0];
    assert_eq!(delivery.state(), DeliveryState::Failed);
    assert_eq!(delivery.attempts, 1, "a permanent error is not retried");
    herald_test_support::eventually("the message in the dead-letter queue", WAIT, || async {
        (app.vhost.ready_messages("herald.email.deliver.dlq").await == 1).then_some(())
    })
    .await;
    assert!(app.smtp.messages().is_empty());
    assert_eq!(app.failure_classes().await, ["permanent"]);
    delivery.last_error.clone()
}

async fn event_kinds(app: &TestApp, delivery_id: &str) -> Vec<String> {
    let mut connection = app.pool.get().await.unwrap();
    herald_db::deliveries::event_kinds(&mut connection, delivery_id.parse().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submitted_email_arrives_rendered_at_the_smtp_server_and_is_reported_delivered() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;

    let response = app
        .submit(welcome_request("ada@example.com"))
        .await
        .unwrap();

    let emails = app.smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(emails.len(), 1);
    let email = &emails[0];
    assert_eq!(email.to, ["ada@example.com"]);
    assert_eq!(email.from, "noreply@herald.local");
    assert_eq!(email.subject, "Welcome, Ada");
    assert_eq!(
        email.text.as_deref().map(str::trim),
        Some("Hello Ada, your order #42 is ready.")
    );
    assert_eq!(
        email.html.as_deref().map(str::trim),
        Some("<p>Hello Ada, your order #42 is ready.</p>")
    );

    let notification = app
        .wait_for_status(&response.notification_id, NotificationStatus::Delivered)
        .await;
    assert_eq!(notification.deliveries.len(), 1);
    let delivery = &notification.deliveries[0];
    assert_eq!(delivery.state(), DeliveryState::Delivered);
    assert_eq!(delivery.attempts, 1);
    assert!(delivery.queued_at.is_some() && delivery.delivered_at.is_some());
    assert_eq!(delivery.last_error, "");
    assert_eq!(
        email.message_id.as_deref(),
        Some(format!("{}@herald", delivery.id).as_str()),
        "the Message-ID is derived from the delivery id"
    );
    // `queued` is absent when the worker claimed the delivery before the relay committed.
    let kinds = event_kinds(&app, &delivery.id).await;
    let expected: &[&[&str]] = &[
        &["accepted", "queued", "sending", "sent", "delivered"],
        &["accepted", "sending", "sent", "delivered"],
    ];
    assert!(
        expected.contains(
            &kinds
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
        ),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn parameters_are_html_escaped_in_the_html_part_only() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let mut request = welcome_request("ada@example.com");
    request.parameters = Some(parameters(&[
        ("username", "<b>Bob & co</b>"),
        ("item_name", "x"),
    ]));

    app.submit(request).await.unwrap();

    let email = app.smtp.wait_for_messages(1, WAIT).await.remove(0);
    assert_eq!(email.subject, "Welcome, <b>Bob & co</b>");
    assert!(email.text.unwrap().contains("Hello <b>Bob & co</b>,"));
    assert!(
        email
            .html
            .unwrap()
            .contains("Hello &lt;b&gt;Bob &amp; co&lt;/b&gt;,")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_submit_to_three_recipients_sends_three_emails() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let mut request = welcome_request("a@example.com");
    for address in ["b@example.com", "c@example.com"] {
        request.recipients.push(herald_proto::submit::Recipient {
            user_id: String::new(),
            email: address.into(),
            locale: String::new(),
            ..Default::default()
        });
    }

    let response = app.submit(request).await.unwrap();

    let notification = app
        .wait_for_status(&response.notification_id, NotificationStatus::Delivered)
        .await;
    assert_eq!(notification.deliveries.len(), 3);
    let mut recipients: Vec<String> = app
        .smtp
        .wait_for_messages(3, WAIT)
        .await
        .into_iter()
        .flat_map(|email| email.to)
        .collect();
    recipients.sort();
    assert_eq!(
        recipients,
        ["a@example.com", "b@example.com", "c@example.com"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_vacuums_the_outbox_behind_the_rows_it_published() {
    let app = TestApp::spawn_with(Options {
        relay_vacuum_after: 5,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let mut ids = Vec::new();
    for n in 0..6 {
        let request = welcome_request(&format!("reader+{n}@example.com"));
        ids.push(app.submit(request).await.unwrap().notification_id);
    }
    for id in &ids {
        app.wait_for_status(id, NotificationStatus::Delivered).await;
    }
    assert_eq!(app.count_rows("outbox").await, 0);

    // A manual vacuum, not autovacuum's (which is counted apart, and off on some servers).
    herald_test_support::eventually("a vacuum of the outbox", WAIT, || async {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Vacuums {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            vacuum_count: i64,
        }
        let mut connection = app.pool.get().await.ok()?;
        let vacuums = diesel::sql_query(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'outbox'::regclass",
        )
        .get_result::<Vacuums>(&mut connection)
        .await
        .ok()?;
        (vacuums.vacuum_count > 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_render_error_fails_the_delivery_permanently_and_dead_letters_it() {
    let app = TestApp::spawn().await;
    app.create_template(
        "receipt",
        "Receipt {{order.id}}",
        "",
        "Total {{order.total}}",
    )
    .await;
    let mut request = welcome_request("ada@example.com");
    request.template.as_mut().unwrap().key = "receipt".into();
    // `order` is present, so the submit is accepted, but `order.id` is missing: strict
    // rendering refuses to send an email with a hole in it.
    request.parameters = Some(herald_proto::conversions::json_to_struct(
        serde_json::json!({"order": {"total": 3}})
            .as_object()
            .unwrap(),
    ));

    let response = app.submit(request).await.unwrap();

    let error = failed_for_good_unsent(&app, &response.notification_id).await;
    assert!(error.contains("email.subject"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_whose_stored_template_version_no_longer_parses_fails_for_good_unsent() {
    use diesel_async::RunQueryDsl;
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let response = app
        .submit(welcome_request("ada@example.com"))
        .await
        .unwrap();
    // A bad manual edit: versions are immutable, and nothing Herald writes looks like this.
    let mut connection = app.pool.get().await.unwrap();
    diesel::sql_query("UPDATE template_versions SET content = '[\"not a version\"]'::jsonb")
        .execute(&mut connection)
        .await
        .unwrap();
    drop(connection);

    app.start_email_worker(8);

    let error = failed_for_good_unsent(&app, &response.notification_id).await;
    assert!(
        error.starts_with("stored template is unreadable:"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_smtp_server_is_retried_and_then_dead_lettered() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let shutdown = app.start_failing_email_worker(3);

    let response = app
        .submit(welcome_request("ada@example.com"))
        .await
        .unwrap();

    let notification = app
        .wait_for_status(&response.notification_id, NotificationStatus::Failed)
        .await;
    shutdown.cancel();
    let delivery = &notification.deliveries[0];
    assert_eq!(delivery.attempts, 3);
    assert!(
        delivery.last_error.starts_with("gave up after 3 attempts"),
        "{}",
        delivery.last_error
    );
    let kinds = event_kinds(&app, &delivery.id).await;
    assert_eq!(
        kinds.iter().filter(|kind| *kind == "retry_wait").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(kinds.last().map(String::as_str), Some("failed"));
    assert_eq!(app.failure_classes().await, ["exhausted"]);
    herald_test_support::eventually("the message in the dead-letter queue", WAIT, || async {
        (app.vhost.ready_messages("herald.email.deliver.dlq").await == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_message_for_a_delivered_delivery_is_acked_without_sending_again() {
    let app = TestApp::spawn_with(Options {
        email_worker: true,
        prefetch: 1,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let first = app
        .submit(welcome_request("ada@example.com"))
        .await
        .unwrap();
    let notification = app
        .wait_for_status(&first.notification_id, NotificationStatus::Delivered)
        .await;
    let delivery = &notification.deliveries[0];

    // The broker redelivering the same message, e.g. after a worker crashed before its ack.
    let connection = herald_queue::connect(app.vhost.amqp_url(), "test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let message = herald_proto::queue::DeliveryMessage {
        delivery_id: delivery.id.clone(),
        notification_id: notification.id.clone(),
        ..Default::default()
    };
    channel
        .basic_publish(
            herald_queue::EXCHANGE.into(),
            "email".into(),
            BasicPublishOptions::default(),
            &message.encode_to_vec(),
            BasicProperties::default().with_priority(WirePriority::Normal as u8),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    // With prefetch 1 and equal priority the worker handles messages in order, so once a
    // later notification is delivered the duplicate has been handled.
    let second = app
        .submit(welcome_request("bob@example.com"))
        .await
        .unwrap();
    app.wait_for_status(&second.notification_id, NotificationStatus::Delivered)
        .await;

    let again = app.notification(&first.notification_id).await;
    assert_eq!(again.deliveries[0].attempts, 1);
    let emails = app.smtp.messages();
    assert_eq!(emails.len(), 2, "ada got one email, bob one");
    assert_eq!(
        emails
            .iter()
            .filter(|email| email.to == ["ada@example.com"])
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hard_bounced_address_is_disabled_and_never_mailed_again() {
    use herald_proto::preference::ContactPoints;
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    crate::channels::set_contacts(
        &app,
        "user-1",
        ContactPoints {
            email: "bounce-me@example.com".into(),
            ..ContactPoints::default()
        },
    )
    .await;
    let mut request = welcome_request("");
    request.recipients[0].email.clear();

    let id = app.submit(request.clone()).await.unwrap().notification_id;
    let notification = app.wait_for_status(&id, NotificationStatus::Failed).await;
    let delivery = &notification.deliveries[0];
    assert!(
        delivery
            .last_error
            .starts_with("address_invalid: smtp rejected the recipient with 550"),
        "{}",
        delivery.last_error
    );
    assert!(!delivery.last_error.contains("bounce-me"));
    assert_eq!(app.failure_classes().await, ["permanent"]);
    let contacts = crate::channels::contacts_of(&app, "user-1").await;
    assert!(
        contacts.email_disabled_reason.contains("smtp"),
        "{contacts:?}"
    );

    let again = app.submit(request).await.unwrap().notification_id;
    let notification = app
        .wait_for_status(&again, NotificationStatus::Suppressed)
        .await;
    assert!(
        notification.deliveries[0]
            .last_error
            .starts_with("address_disabled: the email address was disabled"),
        "{}",
        notification.deliveries[0].last_error
    );
    assert!(app.smtp.messages().is_empty());
}
