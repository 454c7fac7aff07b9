//! Developer alerts: a real HTTP server on loopback stands in for Slack, aiosmtpd for email.

use std::time::Duration;

use herald_proto::submit::NotificationStatus;
use herald_test_support::{WebhookReceiver, eventually};
use secrecy::SecretString;

use crate::harness::{Options, TestApp, welcome_request};

const WAIT: Duration = Duration::from_secs(30);

async fn failing_app() -> TestApp {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    app
}

async fn fail(app: &TestApp, template: &str, count: usize) -> Vec<String> {
    let failing = app.start_failing_email_worker(1);
    let mut ids = Vec::new();
    for index in 0..count {
        let mut request = welcome_request(&format!("ada{index}@example.com"));
        request.template.as_mut().unwrap().key = template.into();
        let id = app.submit(request).await.unwrap().notification_id;
        app.wait_for_status(&id, NotificationStatus::Failed).await;
        ids.push(id);
    }
    failing.cancel();
    ids
}

async fn wait_until_every_failure_is_considered(app: &TestApp) {
    eventually(
        "every failure to be considered by an alert",
        WAIT,
        || async {
            use diesel::prelude::*;
            use diesel_async::RunQueryDsl;
            use herald_db::schema::failures;
            let mut connection = app.pool.get().await.ok()?;
            let pending: i64 = failures::table
                .filter(failures::alerted_at.is_null())
                .count()
                .get_result(&mut connection)
                .await
                .ok()?;
            (pending == 0).then_some(())
        },
    )
    .await;
}

fn webhook(receiver: &WebhookReceiver) -> SecretString {
    SecretString::from(receiver.url("/services/T000/B000/XXXX"))
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_retries_alert_developers_by_webhook_and_email_without_personal_data() {
    let app = failing_app().await;
    let receiver = WebhookReceiver::start().await;
    app.start_sentinel(|alerts| {
        alerts.webhook_url = webhook(&receiver);
        alerts.email_to = vec!["oncall@example.com".into()];
    });

    let ids = fail(&app, "welcome", 1).await;

    let requests = receiver.wait_for_requests(1, WAIT).await;
    assert_eq!(requests[0].path, "/services/T000/B000/XXXX");
    let text = requests[0].json()["text"].as_str().unwrap().to_owned();
    assert!(
        text.contains("`welcome` failed for good (exhausted)"),
        "{text}"
    );
    assert!(text.contains(&ids[0]), "{text}");
    assert!(
        !text.contains("ada0@example.com") && !text.contains("Ada"),
        "no personal data: {text}"
    );
    let emails = app.smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(emails[0].to, ["oncall@example.com"]);
    assert!(
        emails[0]
            .subject
            .starts_with("[Herald] 1 email deliveries of `welcome`"),
        "{}",
        emails[0].subject
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_failures_becomes_one_alert() {
    let app = failing_app().await;
    let receiver = WebhookReceiver::start().await;
    app.start_sentinel(|alerts| alerts.webhook_url = webhook(&receiver));

    fail(&app, "welcome", 5).await;
    wait_until_every_failure_is_considered(&app).await;

    assert_eq!(
        receiver.requests().len(),
        1,
        "one fingerprint, one alert per repeat window"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_are_capped_per_hour_across_fingerprints() {
    let app = failing_app().await;
    for key in ["receipt", "reset"] {
        app.create_template(key, "Hi {{username}}", "", "{{item_name}}")
            .await;
    }
    let receiver = WebhookReceiver::start().await;
    app.start_sentinel(|alerts| {
        alerts.webhook_url = webhook(&receiver);
        alerts.max_per_hour = 2;
    });

    for template in ["welcome", "receipt", "reset"] {
        fail(&app, template, 1).await;
    }
    wait_until_every_failure_is_considered(&app).await;

    assert_eq!(receiver.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_still_unfinished_after_its_sla_alerts() {
    let app = failing_app().await;
    let receiver = WebhookReceiver::start().await;
    app.start_sentinel(|alerts| {
        alerts.webhook_url = webhook(&receiver);
        alerts.sla.normal = Duration::from_millis(300);
    });

    // No worker runs: the delivery waits in the queue past its SLA.
    app.submit(welcome_request("ada@example.com"))
        .await
        .unwrap();

    let requests = receiver.wait_for_requests(1, WAIT).await;
    let text = requests[0].json()["text"].as_str().unwrap().to_owned();
    assert!(
        text.contains("1 normal email deliveries missed their 300ms SLA"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_the_webhook_refused_is_sent_again_at_the_next_scan() {
    let app = failing_app().await;
    let receiver = WebhookReceiver::start().await;
    receiver.respond_with(503);
    app.start_sentinel(|alerts| alerts.webhook_url = webhook(&receiver));

    fail(&app, "welcome", 1).await;
    receiver.wait_for_requests(2, WAIT).await;
    receiver.respond_with(200);
    wait_until_every_failure_is_considered(&app).await;

    let accepted_after = receiver.requests().len();
    assert!(accepted_after >= 3, "refused twice, then accepted");
}
