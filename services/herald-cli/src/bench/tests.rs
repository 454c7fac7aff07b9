//! Unit tests of the bench, and its two phases against a fake SubmitService over loopback.

use std::collections::HashMap;

use clap::Parser as _;
use herald_proto::submit::submit_service_server::{SubmitService, SubmitServiceServer};
use herald_proto::submit::{Delivery, GetNotificationResponse, SubmitResponse};
use tonic::{Request, Response, Status};

use super::*;
use crate::cli::{Cli, Command};

fn plan(parameter_names: &[&str]) -> SubmitPlan {
    SubmitPlan {
        count: 10,
        template_key: "bench".to_owned(),
        template_version: 3,
        parameter_names: parameter_names
            .iter()
            .map(|name| (*name).to_owned())
            .collect(),
        recipient: "bench@example.com".to_owned(),
        priority: common::Priority::Normal as i32,
        run_id: "run1".to_owned(),
    }
}

#[test]
fn every_request_has_its_own_idempotency_key_and_all_parameters() {
    let plan = plan(&["n", "run", "username"]);
    let first = plan.request(0);
    let second = plan.request(1);
    assert_eq!(first.idempotency_key, "bench-run1-0");
    assert_eq!(second.idempotency_key, "bench-run1-1");
    assert_eq!(
        first
            .template
            .as_ref()
            .and_then(|template| template.version),
        Some(3)
    );
    let parameters =
        herald_proto::conversions::struct_to_json(second.parameters.unwrap_or_default());
    assert_eq!(
        serde_json::Value::Object(parameters),
        serde_json::json!({ "n": 1, "run": "run1", "username": "bench" })
    );
}

fn timestamp(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

fn notification(status: NotificationStatus, created: i64, delivered: Option<i64>) -> Notification {
    Notification {
        status: status as i32,
        created_at: timestamp(created, 0),
        deliveries: vec![Delivery {
            state: if delivered.is_some() {
                DeliveryState::Delivered as i32
            } else {
                DeliveryState::Failed as i32
            },
            last_error: "mailbox unavailable".to_owned(),
            delivered_at: delivered.and_then(|seconds| timestamp(seconds, 250_000_000)),
            ..Delivery::default()
        }],
        ..Notification::default()
    }
}

#[test]
fn delivered_notifications_record_end_to_end_latency_and_the_window() {
    let mut first = DeliveryTally::default();
    let delivered = notification(NotificationStatus::Delivered, 100, Some(101));
    first.observe(&delivered);
    first.record_final(&delivered);
    let mut second = DeliveryTally::default();
    let failed = notification(NotificationStatus::Failed, 99, None);
    second.observe(&failed);
    second.record_final(&failed);
    first.merge(second);

    assert_eq!(first.latencies_us, [1_250_000]);
    assert_eq!((first.delivered, first.failed), (1, 1));
    assert_eq!(
        first.first_created_at.map(|instant| instant.timestamp()),
        Some(99)
    );
    assert_eq!(
        first.last_delivered_at.map(|instant| instant.timestamp()),
        Some(101)
    );
    let failures: Vec<_> = first
        .undelivered
        .iter()
        .map(|(name, reason)| (name.clone(), reason.count))
        .collect();
    assert_eq!(failures, [("FAILED".to_owned(), 1)]);
}

#[test]
fn reasons_keep_the_first_example_and_add_counts() {
    let mut ours = Reasons::default();
    ours.note("Unavailable".to_owned(), "first");
    let mut theirs = Reasons::default();
    theirs.note("Unavailable".to_owned(), "second");
    theirs.note("Internal".to_owned(), "boom");
    ours.merge(theirs);
    assert_eq!(ours.total(), 3);
    let unavailable = ours
        .iter()
        .find(|(name, _)| *name == "Unavailable")
        .map(|(_, reason)| reason);
    assert_eq!(
        unavailable.map(|reason| (reason.count, reason.example.as_str())),
        Some((2, "first"))
    );
}

/// Accepts every submit except those whose idempotency key ends in `7` (UNAVAILABLE), and
/// reports each notification IN_PROGRESS on its first poll and DELIVERED, 5 ms after its
/// creation, from the second on. Notification ids are the idempotency keys.
#[derive(Debug, Default)]
struct FakeSubmitService {
    notifications: Mutex<HashMap<String, (prost_types::Timestamp, u32)>>,
}

#[tonic::async_trait]
impl SubmitService for FakeSubmitService {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let key = request.into_inner().idempotency_key;
        if key.ends_with('7') {
            return Err(Status::unavailable("try again"));
        }
        let created_at = herald_proto::conversions::timestamp(Utc::now());
        self.notifications
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone(), (created_at, 0));
        Ok(Response::new(SubmitResponse {
            notification_id: key,
            duplicate: false,
        }))
    }

    async fn get_notification(
        &self,
        request: Request<GetNotificationRequest>,
    ) -> Result<Response<GetNotificationResponse>, Status> {
        let id = request.into_inner().notification_id;
        let mut notifications = self
            .notifications
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some((created_at, polls)) = notifications.get_mut(&id) else {
            return Err(Status::not_found("no such notification"));
        };
        *polls += 1;
        let delivered_at = herald_proto::conversions::instant(created_at)
            .filter(|_| *polls >= 2)
            .map(|created| {
                herald_proto::conversions::timestamp(created + chrono::Duration::milliseconds(5))
            });
        let (status, state) = if delivered_at.is_some() {
            (NotificationStatus::Delivered, DeliveryState::Delivered)
        } else {
            (NotificationStatus::InProgress, DeliveryState::Queued)
        };
        Ok(Response::new(GetNotificationResponse {
            notification: Some(Notification {
                id,
                status: status as i32,
                created_at: Some(*created_at),
                deliveries: vec![Delivery {
                    state: state as i32,
                    attempts: 1,
                    delivered_at,
                    ..Delivery::default()
                }],
                ..Notification::default()
            }),
        }))
    }
}

/// Two plaintext channels to a fake SubmitService on a loopback port.
async fn fake_server() -> anyhow::Result<Vec<Channel>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SubmitServiceServer::new(FakeSubmitService::default()))
            .serve_with_incoming(incoming),
    );
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?;
    Ok(vec![endpoint.connect().await?, endpoint.connect().await?])
}

fn bench_args(arguments: &[&str]) -> BenchArgs {
    let cli = Cli::try_parse_from(["herald-cli", "bench"].iter().chain(arguments));
    match cli {
        Ok(Cli {
            command: Command::Bench(args),
            ..
        }) => args,
        other => panic!("expected a bench command, got {other:?}"),
    }
}

#[tokio::test]
async fn submits_and_waits_for_every_notification_counting_errors_by_code() -> anyhow::Result<()> {
    let channels = fake_server().await?;
    let args = bench_args(&[
        "--count",
        "50",
        "--concurrency",
        "4",
        "--poll-interval",
        "1ms",
    ]);
    let plan = Arc::new(SubmitPlan {
        count: args.count,
        ..plan(&["n"])
    });

    let (submit, accepted_ids) = submit_all(&args, &channels, plan).await?;
    // Indices 7, 17, 27, 37 and 47 are refused.
    assert_eq!(submit.accepted, 45);
    assert_eq!(accepted_ids.len(), 45);
    let errors: Vec<_> = submit
        .errors
        .iter()
        .map(|(code, reason)| (code.clone(), reason.count))
        .collect();
    assert_eq!(errors, [("Unavailable".to_owned(), 5)]);
    assert!(submit.latency_us.is_some());

    let delivery = wait_all(&args, &channels, accepted_ids).await?;
    assert_eq!(delivery.delivered, 45);
    assert_eq!((delivery.failed, delivery.unfinished), (0, 0));
    assert!(
        delivery.polls >= 90,
        "each notification needs two polls, got {}",
        delivery.polls
    );
    assert_eq!(delivery.poll_errors.total(), 0);
    assert!(delivery.window.is_some());
    let latency = delivery
        .latency_us
        .context("expected end-to-end latencies")?;
    assert_eq!(
        latency,
        report::Percentiles::of(&[5_000; 45])?.context("expected percentiles")?
    );
    Ok(())
}

#[tokio::test]
async fn unfinished_notifications_are_reported_when_the_wait_times_out() -> anyhow::Result<()> {
    let channels = fake_server().await?;
    let args = bench_args(&["--wait-timeout", "50ms", "--poll-interval", "1h"]);
    let ids = vec!["never-submitted".to_owned()];
    let delivery = wait_all(&args, &channels, ids).await?;
    assert_eq!((delivery.delivered, delivery.unfinished), (0, 1));
    assert_eq!(
        delivery
            .poll_errors
            .iter()
            .map(|(code, _)| code.as_str())
            .collect::<Vec<_>>(),
        ["NotFound"]
    );
    Ok(())
}
