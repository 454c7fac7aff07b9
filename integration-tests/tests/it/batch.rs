//! `SubmitBatch`: many independent notifications in one call, each answered on its own.

use herald_proto::submit::{SubmitBatchRequest, SubmitBatchResponse, SubmitRequest};
use tonic::Code;

use crate::harness::{As, Options, TestApp, welcome_request};

async fn submit_batch(
    app: &TestApp,
    items: Vec<SubmitRequest>,
) -> Result<SubmitBatchResponse, tonic::Status> {
    app.submit_client(As::Orders)
        .await
        .submit_batch(SubmitBatchRequest { items })
        .await
        .map(tonic::Response::into_inner)
}

fn keyed(email: &str, key: &str) -> SubmitRequest {
    let mut request = welcome_request(email);
    request.idempotency_key = key.into();
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn each_item_of_a_batch_is_answered_and_a_bad_one_fails_alone() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let mut unknown_template = welcome_request("bo@example.com");
    unknown_template.template.as_mut().unwrap().key = "nope".into();

    let results = submit_batch(
        &app,
        vec![
            welcome_request("ada@example.com"),
            welcome_request("not-an-address"),
            unknown_template,
            welcome_request("cy@example.com"),
        ],
    )
    .await
    .unwrap()
    .results;

    assert_eq!(results.len(), 4);
    let codes: Vec<Code> = results
        .iter()
        .map(|result| Code::from_i32(result.code))
        .collect();
    assert_eq!(
        codes,
        [Code::Ok, Code::InvalidArgument, Code::NotFound, Code::Ok]
    );
    assert!(
        results[1]
            .message
            .starts_with("items[1].recipients[0].email: must be a valid email address"),
        "{}",
        results[1].message
    );
    assert!(
        results[2].message.starts_with("items[2].template.key:"),
        "{}",
        results[2].message
    );
    assert!(results[1].accepted.is_none());
    let accepted: Vec<&str> = [&results[0], &results[3]]
        .iter()
        .map(|result| result.accepted.as_ref().unwrap().notification_id.as_str())
        .collect();
    assert_ne!(accepted[0], accepted[1]);
    for id in accepted {
        assert_eq!(app.notification(id).await.id, id);
    }
    assert_eq!(app.count_rows("notifications").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_items_with_one_idempotency_key_in_a_batch_create_one_notification() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let mut different = keyed("ada@example.com", "once");
    different.priority = herald_proto::common::Priority::High.into();

    let results = submit_batch(
        &app,
        vec![
            keyed("ada@example.com", "once"),
            keyed("ada@example.com", "once"),
            different,
        ],
    )
    .await
    .unwrap()
    .results;

    let first = results[0].accepted.as_ref().expect(&results[0].message);
    let second = results[1].accepted.as_ref().expect(&results[1].message);
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(second.notification_id, first.notification_id);
    assert_eq!(Code::from_i32(results[2].code), Code::AlreadyExists);
    assert!(
        results[2].message.starts_with("items[2].idempotency_key:"),
        "{}",
        results[2].message
    );
    assert_eq!(app.count_rows("notifications").await, 1);

    // The same batch again is a replay of every item.
    let again = submit_batch(&app, vec![keyed("ada@example.com", "once")])
        .await
        .unwrap()
        .results;
    let replayed = again[0].accepted.as_ref().unwrap();
    assert!(replayed.duplicate);
    assert_eq!(replayed.notification_id, first.notification_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_over_the_per_call_limits_is_refused_naming_the_limit_and_writes_nothing() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;

    let too_many = submit_batch(&app, vec![welcome_request("ada@example.com"); 1001])
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert!(
        too_many.message().contains("at most")
            || too_many.message().contains("1 to 1000 notifications"),
        "{}",
        too_many.message()
    );
    let empty = submit_batch(&app, vec![]).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);

    let mut settings = app.api_replica_settings();
    settings.submit.batch_call_max_deliveries = 5;
    let replica = app.spawn_api_replica_with(settings).await;
    let mut three_recipients = welcome_request("ada@example.com");
    three_recipients.recipients = vec![three_recipients.recipients[0].clone(); 3];
    let over = herald_proto::submit::submit_service_client::SubmitServiceClient::new(
        app.channel_at(replica, As::Orders).await,
    )
    .submit_batch(SubmitBatchRequest {
        items: vec![three_recipients.clone(), three_recipients],
    })
    .await
    .unwrap_err();
    assert_eq!(over.code(), Code::InvalidArgument);
    assert!(
        over.message().contains("would create 6 deliveries")
            && over.message().contains("submit.batch_call_max_deliveries"),
        "{}",
        over.message()
    );
    assert_eq!(app.count_rows("notifications").await, 0);
}
