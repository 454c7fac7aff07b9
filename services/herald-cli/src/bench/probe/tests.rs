//! Unit tests of the probe: its arguments and request, its report, and whole probes against a
//! fake SubmitService and a fake sink over loopback. Nothing here asserts how fast anything is.

use std::sync::{Arc, Mutex, PoisonError};

use clap::Parser as _;
use herald_proto::submit::submit_service_server::{SubmitService, SubmitServiceServer};
use herald_proto::submit::{
    Delivery, DeliveryState, GetNotificationResponse, SubmitBatchRequest, SubmitBatchResponse,
    SubmitResponse,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::{Request, Response, Status};

use super::*;
use crate::cli::{Cli, Command, PriorityArg};

fn probe_args(arguments: &[&str]) -> anyhow::Result<ProbeArgs> {
    match Cli::try_parse_from(["herald-cli", "probe"].iter().chain(arguments))? {
        Cli {
            command: Command::Probe(args),
            ..
        } => Ok(args),
        other => anyhow::bail!("expected a probe command, got {other:?}"),
    }
}

#[test]
fn a_probe_is_critical_by_default_and_needs_a_sink() -> anyhow::Result<()> {
    let args = probe_args(&["--sink", "http://127.0.0.1:8025"])?;
    assert_eq!(args.priority, PriorityArg::Critical);
    assert_eq!(args.template.key, "bench");
    assert_eq!(args.poll_interval, Duration::from_millis(10));
    assert_eq!(args.to, "probe+{run}@example.com");
    assert!(!args.json);
    let low = probe_args(&["--sink", "127.0.0.1:8025", "--priority", "low", "--json"])?;
    assert_eq!((low.priority, low.json), (PriorityArg::Low, true));
    assert!(probe_args(&[]).is_err(), "--sink is required");
    Ok(())
}

#[test]
fn the_probe_request_has_its_own_key_recipient_and_priority() -> anyhow::Result<()> {
    let args = probe_args(&["--sink", "127.0.0.1:8025"])?;
    let template = Template {
        key: "bench".to_owned(),
        version: 4,
        parameters: vec!["n".to_owned(), "run".to_owned(), "username".to_owned()],
        ..Template::default()
    };
    let request = probe_request(&template, &args, "run1");
    assert_eq!(request.idempotency_key, "probe-run1");
    assert_eq!(request.priority, common::Priority::Critical as i32);
    assert_eq!(request.channels, [common::Channel::Email as i32]);
    assert_eq!(request.recipients.len(), 1);
    assert_eq!(request.recipients[0].email, "probe+run1@example.com");
    assert_eq!(
        request.metadata.get("probe_run").map(String::as_str),
        Some("run1")
    );
    let pinned = request.template.context("a template")?;
    assert_eq!((pinned.key.as_str(), pinned.version), ("bench", Some(4)));
    let parameters =
        herald_proto::conversions::struct_to_json(request.parameters.unwrap_or_default());
    assert_eq!(
        serde_json::Value::Object(parameters),
        serde_json::json!({ "n": 0, "run": "run1", "username": "bench" })
    );
    Ok(())
}

#[test]
fn message_urls_put_the_id_in_one_path_segment() -> anyhow::Result<()> {
    let sink = SinkClient::new("127.0.0.1:8025/sink/")?;
    assert_eq!(
        sink.message_url("d-1@herald").as_str(),
        "http://127.0.0.1:8025/sink/messages/d-1@herald"
    );
    let sink = SinkClient::new("http://127.0.0.1:8025")?;
    assert_eq!(
        sink.message_url("a/b c@herald").as_str(),
        "http://127.0.0.1:8025/messages/a%2Fb%20c@herald"
    );
    Ok(())
}

#[test]
fn differences_of_wall_clock_readings_may_be_negative() {
    assert_eq!(difference_ms(1_000_250, 1_000_000), 250);
    assert_eq!(difference_ms(1_000_000, 1_000_250), -250);
    assert_eq!(difference_ms(u64::MAX, 0), i64::MAX);
    assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(42)), 42);
}

fn report(arrival: Option<SinkArrival>, stopped: Option<&str>) -> ProbeReport {
    ProbeReport {
        run_id: "run1".to_owned(),
        priority: "CRITICAL".to_owned(),
        template: "bench".to_owned(),
        template_version: Some(1),
        notification_id: "n-1".to_owned(),
        delivery_id: "d-1".to_owned(),
        submit_latency: Duration::from_micros(4_200),
        submitted_at_unix_ms: 1_700_000_000_000,
        timeout: Duration::from_secs(60),
        sink_after: arrival.as_ref().map(|_| SinkStats {
            messages: 142,
            distinct: 142,
            duplicates: 0,
        }),
        arrival,
        stopped: stopped.map(str::to_owned),
        polls: 12,
        poll_errors: Reasons::default(),
        waited_for: Duration::from_millis(130),
        sink_url: "http://127.0.0.1:8025".to_owned(),
        sink_before: SinkStats {
            messages: 100,
            distinct: 100,
            duplicates: 0,
        },
    }
}

fn arrival(copies: u64) -> SinkArrival {
    SinkArrival {
        message_id: "<d-1@herald>".to_owned(),
        arrived_at_unix_ms: 1_700_000_000_123,
        copies,
    }
}

#[test]
fn the_report_subtracts_the_submit_time_from_the_arrival_time() {
    let report = report(Some(arrival(1)), None);
    assert_eq!(report.outcome(), Outcome::Success);
    let json = report.to_json();
    assert_eq!(json["latency_ms"], 123);
    assert_eq!(json["arrived"], true);
    assert_eq!(json["copies"], 1);
    assert_eq!(json["message_id"], "<d-1@herald>");
    assert_eq!(json["submit_latency_us"], 4_200);
    assert_eq!(
        json["sink"]["others_arrived_meanwhile"], 41,
        "42 new distinct ids, one of them the probe's"
    );
    let text = report.to_text();
    assert!(text.contains("123 ms after Submit returned OK"), "{text}");
    assert!(text.contains("41 other messages"), "{text}");
}

#[test]
fn a_resend_a_failure_and_a_timeout_each_have_their_outcome() {
    assert_eq!(report(Some(arrival(2)), None).outcome(), Outcome::Partial);
    let failed = report(None, Some("notification n-1 is FAILED"));
    assert_eq!(failed.outcome(), Outcome::Failed);
    assert!(failed.to_text().contains("is FAILED"));
    let timed_out = report(None, None);
    assert_eq!(timed_out.outcome(), Outcome::TimedOut);
    let json = timed_out.to_json();
    assert_eq!(json["arrived"], false);
    assert_eq!(json["latency_ms"], serde_json::Value::Null);
    assert_eq!(
        json["sink"]["others_arrived_meanwhile"],
        serde_json::Value::Null
    );
    assert!(timed_out.to_text().contains("not there 1m after"));
}

/// Accepts every submit (keeping the requests) as notification `n-1` with one email delivery
/// `d-1` in `status`.
#[derive(Debug)]
struct FakeSubmitService {
    requests: Arc<Mutex<Vec<SubmitRequest>>>,
    status: NotificationStatus,
}

#[tonic::async_trait]
impl SubmitService for FakeSubmitService {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request.into_inner());
        Ok(Response::new(SubmitResponse {
            notification_id: "n-1".to_owned(),
            duplicate: false,
        }))
    }

    async fn submit_batch(
        &self,
        _request: Request<SubmitBatchRequest>,
    ) -> Result<Response<SubmitBatchResponse>, Status> {
        Err(Status::unimplemented("the probe sends one Submit"))
    }

    async fn get_notification(
        &self,
        request: Request<GetNotificationRequest>,
    ) -> Result<Response<GetNotificationResponse>, Status> {
        let id = request.into_inner().notification_id;
        if id != "n-1" {
            return Err(Status::not_found("no such notification"));
        }
        let (state, last_error) = match self.status {
            NotificationStatus::Failed => (DeliveryState::Failed, "550 mailbox unavailable"),
            NotificationStatus::Delivered => (DeliveryState::Delivered, ""),
            _ => (DeliveryState::Queued, ""),
        };
        Ok(Response::new(GetNotificationResponse {
            notification: Some(Notification {
                id,
                status: self.status as i32,
                deliveries: vec![Delivery {
                    id: "d-1".to_owned(),
                    channel: common::Channel::Email as i32,
                    state: state as i32,
                    last_error: last_error.to_owned(),
                    ..Delivery::default()
                }],
                ..Notification::default()
            }),
        }))
    }
}

/// A stand-in for herald-sink's HTTP side: `GET /stats` (100 distinct ids before the first
/// message question, 142 after) and `GET /messages/<id>`, which answers 404 `missing_for`
/// times, then the arrival with `copies` (stamped when answered) for `d-1@herald`.
#[derive(Debug)]
struct FakeSink {
    missing_for: u64,
    copies: u64,
    paths: Mutex<Vec<String>>,
}

impl FakeSink {
    fn new(missing_for: u64, copies: u64) -> Arc<Self> {
        Arc::new(Self {
            missing_for,
            copies,
            paths: Mutex::new(Vec::new()),
        })
    }

    fn message_paths(&self) -> Vec<String> {
        self.paths
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|path| path.starts_with("/messages/"))
            .cloned()
            .collect()
    }

    /// The answer to `GET path`: status and JSON body.
    fn answer(&self, path: &str) -> (u16, String) {
        let mut paths = self.paths.lock().unwrap_or_else(PoisonError::into_inner);
        paths.push(path.to_owned());
        let asked = paths
            .iter()
            .filter(|path| path.starts_with("/messages/"))
            .count() as u64;
        if path == "/stats" {
            let distinct = if asked == 0 { 100 } else { 142 };
            let body = serde_json::json!({
                "messages": distinct, "distinct": distinct, "duplicates": 0, "without_message_id": 0,
            });
            return (200, body.to_string());
        }
        if path == "/messages/d-1@herald" && asked > self.missing_for {
            let body = serde_json::json!({
                "message_id": "<d-1@herald>",
                "arrived_at_unix_ms": unix_ms(SystemTime::now()),
                "copies": self.copies,
            });
            return (200, body.to_string());
        }
        (404, String::new())
    }

    /// Serves on a loopback port, one request per connection; returns its URL.
    async fn serve(self: &Arc<Self>) -> anyhow::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let sink = Arc::clone(self);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let sink = Arc::clone(&sink);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0_u8; 1024];
                    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => request.extend_from_slice(&buffer[..read]),
                        }
                    }
                    let request = String::from_utf8_lossy(&request);
                    let path = request.split(' ').nth(1).unwrap_or_default();
                    let (status, body) = sink.answer(path);
                    let reason = if status == 200 { "OK" } else { "Not Found" };
                    let response = format!(
                        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _written = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Ok(format!("http://{address}"))
    }
}

/// Runs one probe (of a notification in `status`) against `sink`; returns the report and the
/// requests the fake server received.
async fn probe_against(
    sink: &Arc<FakeSink>,
    status: NotificationStatus,
    timeout: Duration,
) -> anyhow::Result<(ProbeReport, Vec<SubmitRequest>)> {
    let url = sink.serve().await?;
    let requests = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SubmitServiceServer::new(FakeSubmitService {
                requests: Arc::clone(&requests),
                status,
            }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect()
        .await?;
    let args = probe_args(&["--sink", &url])?;
    let template = Template {
        key: "bench".to_owned(),
        version: 1,
        parameters: vec!["n".to_owned()],
        ..Template::default()
    };
    let probe = Probe {
        request: probe_request(&template, &args, "run1"),
        run_id: "run1".to_owned(),
        timeout,
        poll_interval: Duration::from_millis(10),
    };
    let report = probe_once(
        SubmitServiceClient::new(channel),
        &SinkClient::new(&url)?,
        probe,
    )
    .await?;
    let requests = requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Ok((report, requests))
}

#[tokio::test]
async fn the_probe_finds_its_delivery_at_the_sink_and_counts_the_others() -> anyhow::Result<()> {
    let sink = FakeSink::new(3, 1);
    let (report, requests) = probe_against(
        &sink,
        NotificationStatus::InProgress,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(requests.len(), 1, "one submit");
    assert_eq!(requests[0].priority, common::Priority::Critical as i32);
    assert_eq!(
        (report.notification_id.as_str(), report.delivery_id.as_str()),
        ("n-1", "d-1")
    );
    assert_eq!(sink.message_paths(), vec!["/messages/d-1@herald"; 4]);
    assert_eq!(report.polls, 4);
    assert_eq!(report.outcome(), Outcome::Success);
    assert!(report.latency_ms().is_some());
    assert_eq!(report.others_meanwhile(), Some(41));
    assert_eq!(report.priority, "CRITICAL");
    assert_eq!(report.poll_errors.total(), 0);
    Ok(())
}

#[tokio::test]
async fn a_probe_seen_twice_at_the_sink_is_partial() -> anyhow::Result<()> {
    let sink = FakeSink::new(0, 2);
    let (report, _requests) = probe_against(
        &sink,
        NotificationStatus::InProgress,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(
        report.arrival.as_ref().map(|arrival| arrival.copies),
        Some(2)
    );
    assert_eq!(report.outcome(), Outcome::Partial);
    Ok(())
}

#[tokio::test]
async fn a_probe_that_never_arrives_times_out() -> anyhow::Result<()> {
    let sink = FakeSink::new(u64::MAX, 1);
    let (report, _requests) = probe_against(
        &sink,
        NotificationStatus::InProgress,
        Duration::from_millis(100),
    )
    .await?;
    assert_eq!(report.arrival, None);
    assert_eq!(report.stopped, None);
    assert_eq!(report.outcome(), Outcome::TimedOut);
    assert!(report.polls >= 1);
    Ok(())
}

#[tokio::test]
async fn a_failed_notification_ends_the_wait_with_its_error() -> anyhow::Result<()> {
    let sink = FakeSink::new(u64::MAX, 1);
    let (report, _requests) =
        probe_against(&sink, NotificationStatus::Failed, Duration::from_secs(30)).await?;
    assert_eq!(report.outcome(), Outcome::Failed);
    let stopped = report.stopped.context("a reason")?;
    assert!(
        stopped.contains("FAILED") && stopped.contains("550 mailbox unavailable"),
        "{stopped}"
    );
    Ok(())
}

#[tokio::test]
async fn a_notification_delivered_elsewhere_ends_the_wait() -> anyhow::Result<()> {
    let sink = FakeSink::new(u64::MAX, 1);
    let (report, _requests) = probe_against(
        &sink,
        NotificationStatus::Delivered,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(report.outcome(), Outcome::Failed);
    let stopped = report.stopped.context("a reason")?;
    assert!(stopped.contains("another SMTP server"), "{stopped}");
    Ok(())
}
