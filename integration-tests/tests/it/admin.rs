//! AdminService: the failure record, replay and discard.

use std::time::Duration;

use herald_proto::admin::{
    DiscardFailuresRequest, FailureClass, FailureStatus, GetFailureRequest, ListFailuresRequest,
    ReplayFailuresRequest, ResolveOutcome,
};
use herald_proto::submit::NotificationStatus;
use tonic::Code;

use crate::harness::{As, Options, TestApp, welcome_request};

async fn app_with_failed_notifications(count: usize) -> (TestApp, Vec<String>) {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let failing = app.start_failing_email_worker(1);
    let mut ids = Vec::new();
    for index in 0..count {
        let id = app
            .submit(welcome_request(&format!("user{index}@example.com")))
            .await
            .unwrap()
            .notification_id;
        app.wait_for_status(&id, NotificationStatus::Failed).await;
        ids.push(id);
    }
    failing.cancel();
    (app, ids)
}

fn replay(ids: Vec<String>) -> ReplayFailuresRequest {
    ReplayFailuresRequest {
        ids,
        reason: "SMTP relay fixed".into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_lists_inspects_and_replays_a_failure_once() {
    let (app, ids) = app_with_failed_notifications(1).await;
    let mut admin = app.admin_client().await;

    let open = admin
        .list_failures(ListFailuresRequest {
            status: FailureStatus::Open.into(),
            ..ListFailuresRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .failures;
    assert_eq!(open.len(), 1);
    let failure = &open[0];
    assert_eq!(failure.notification_id, ids[0]);
    assert_eq!(failure.class(), FailureClass::Exhausted);
    assert_eq!(failure.template_key, "welcome");

    let detail = admin
        .get_failure(GetFailureRequest {
            id: failure.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<_> = detail
        .history
        .iter()
        .map(|event| event.kind.as_str())
        .collect();
    // `queued` is absent when the worker claimed the delivery before the relay committed.
    let expected: &[&[&str]] = &[
        &["accepted", "queued", "sending", "sent", "failed"],
        &["accepted", "sending", "sent", "failed"],
    ];
    assert!(expected.contains(&kinds.as_slice()), "{kinds:?}");
    let failed = detail.history.last().unwrap();
    assert_eq!(failed.provider, "smtp");
    assert_eq!(failed.error_class, "exhausted");

    app.start_email_worker(1);
    let first = admin
        .replay_failures(replay(vec![failure.id.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.results[0].outcome(), ResolveOutcome::Done);
    let delivered = app
        .wait_for_status(&ids[0], NotificationStatus::Delivered)
        .await;
    assert_eq!(delivered.deliveries[0].attempts, 2);

    let again = admin
        .replay_failures(replay(vec![failure.id.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.results[0].outcome(), ResolveOutcome::AlreadyReplayed);
    // A replay writes its `replayed` event in the transaction that queues the delivery again
    // (published outbox rows are deleted, so they cannot be counted afterwards).
    assert_eq!(
        app.count_rows("delivery_events WHERE kind = 'replayed'")
            .await,
        1,
        "the second replay queued nothing"
    );
    assert_eq!(
        app.smtp
            .wait_for_messages(1, Duration::from_secs(10))
            .await
            .len(),
        1
    );

    let replayed = admin
        .get_failure(GetFailureRequest {
            id: failure.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .failure
        .unwrap();
    assert_eq!(replayed.status(), FailureStatus::Replayed);
    assert_eq!(replayed.resolved_by, "spiffe://herald.local/admin/ops");
    assert_eq!(app.count_rows("audit_log").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_gets_a_fresh_retry_budget() {
    let (app, ids) = app_with_failed_notifications(1).await;
    let mut admin = app.admin_client().await;
    let failure_id = admin
        .list_failures(ListFailuresRequest::default())
        .await
        .unwrap()
        .into_inner()
        .failures[0]
        .id
        .clone();

    // Still failing: the new cycle gets its own single attempt, then fails again.
    let failing = app.start_failing_email_worker(1);
    admin
        .replay_failures(replay(vec![failure_id]))
        .await
        .unwrap();
    herald_test_support::eventually("a second open failure", Duration::from_secs(20), || async {
        let open = app
            .admin_client()
            .await
            .list_failures(ListFailuresRequest {
                status: FailureStatus::Open.into(),
                ..ListFailuresRequest::default()
            })
            .await
            .ok()?
            .into_inner()
            .failures;
        (open.len() == 1).then_some(())
    })
    .await;
    failing.cancel();
    let notification = app.notification(&ids[0]).await;
    assert_eq!(notification.deliveries[0].attempts, 2);
    assert_eq!(notification.status(), NotificationStatus::Failed);
}

#[tokio::test(flavor = "multi_thread")]
async fn discarded_failures_are_closed_without_sending() {
    let (app, ids) = app_with_failed_notifications(2).await;
    let mut admin = app.admin_client().await;
    let failures = admin
        .list_failures(ListFailuresRequest {
            page_size: 1,
            ..ListFailuresRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failures.failures.len(), 1);
    assert!(!failures.next_page_token.is_empty());
    let newest = failures.failures[0].clone();
    assert_eq!(newest.notification_id, ids[1], "newest first");

    let results = admin
        .discard_failures(DiscardFailuresRequest {
            ids: vec![newest.id.clone(), uuid_like_missing()],
            reason: "customer asked us not to resend".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let outcomes: Vec<_> = results.iter().map(|result| result.outcome()).collect();
    assert_eq!(outcomes, [ResolveOutcome::Done, ResolveOutcome::NotFound]);

    let replayed = admin
        .replay_failures(replay(vec![newest.id]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        replayed.results[0].outcome(),
        ResolveOutcome::AlreadyDiscarded
    );
    let open = admin
        .list_failures(ListFailuresRequest {
            status: FailureStatus::Open.into(),
            ..ListFailuresRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .failures;
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].notification_id, ids[0]);
    assert!(app.smtp.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_whose_personal_data_was_cleared_is_not_replayed_and_can_be_discarded() {
    use herald_proto::preference::DeletePreferencesRequest;
    use herald_proto::preference::preference_service_client::PreferenceServiceClient;
    let (app, ids) = app_with_failed_notifications(1).await;
    PreferenceServiceClient::new(app.channel(As::Orders).await)
        .delete_preferences(DeletePreferencesRequest {
            user_id: "user-1".into(),
        })
        .await
        .unwrap();
    let mut admin = app.admin_client().await;
    let failure = admin
        .list_failures(ListFailuresRequest::default())
        .await
        .unwrap()
        .into_inner()
        .failures
        .remove(0);

    let replayed = admin
        .replay_failures(replay(vec![failure.id.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        replayed.results[0].outcome(),
        ResolveOutcome::PersonalDataCleared
    );
    let notification = app.notification(&ids[0]).await;
    assert_eq!(notification.status(), NotificationStatus::Failed);
    assert!(
        notification.deliveries[0]
            .personal_data_cleared_at
            .is_some()
    );
    let discarded = admin
        .discard_failures(DiscardFailuresRequest {
            ids: vec![failure.id],
            reason: "the user was erased".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(discarded.results[0].outcome(), ResolveOutcome::Done);
}

fn uuid_like_missing() -> String {
    "00000000-0000-7000-8000-000000000000".into()
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_calls_need_the_admin_role_and_valid_input() {
    let app = TestApp::spawn().await;
    let denied = herald_proto::admin::admin_service_client::AdminServiceClient::new(
        app.channel(As::Orders).await,
    )
    .list_failures(ListFailuresRequest::default())
    .await
    .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let mut admin = app.admin_client().await;
    let no_reason = admin
        .replay_failures(ReplayFailuresRequest {
            ids: vec![uuid_like_missing()],
            reason: " ".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(no_reason.code(), Code::InvalidArgument);
    assert!(no_reason.message().starts_with("reason:"));
    let bad_id = admin
        .replay_failures(replay(vec!["nope".into()]))
        .await
        .unwrap_err();
    assert!(
        bad_id.message().starts_with("ids[0]:"),
        "{}",
        bad_id.message()
    );
    let bad_token = admin
        .list_failures(ListFailuresRequest {
            page_token: "zz".into(),
            ..ListFailuresRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);
}
