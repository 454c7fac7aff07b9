//! What an SRE sees: one OpenTelemetry trace per notification (received by a real OTLP/gRPC
//! receiver), Prometheus figures after real traffic, and the queue figures of
//! `AdminService.GetQueueStats`.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_config::TelemetrySettings;
use herald_proto::admin::GetQueueStatsRequest;
use herald_proto::common::{Channel as WireChannel, Priority as WirePriority};
use herald_proto::submit::{NotificationStatus, SubmitRequest};
use herald_test_support::{OtlpReceiver, ReceivedSpan, eventually};

use crate::harness::{As, Options, TestApp, parameters, welcome_request};

const WAIT: Duration = Duration::from_secs(20);

/// Personal data the traced notification carries; none of it may reach a span or a log record.
const EMAIL: &str = "grace.hopper@example.com";
const SECRET_PARAMETER: &str = "cobol-compiler-7731";

/// `SPAN_KIND_*` numbers of OTLP.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

/// Installs OTLP export to `receiver` for this test process (nextest runs each test in a
/// process of its own).
fn export_to(receiver: &OtlpReceiver) -> herald_telemetry::TelemetryGuard {
    herald_telemetry::init(
        &TelemetrySettings {
            otlp_endpoint: receiver.endpoint().to_owned(),
            log_filter: "info".into(),
            ..TelemetrySettings::default()
        },
        "herald-integration-test",
    )
    .expect("installing telemetry")
}

fn traced_request() -> SubmitRequest {
    let mut request = welcome_request(EMAIL);
    request.parameters = Some(parameters(&[
        ("username", "Grace"),
        ("item_name", SECRET_PARAMETER),
    ]));
    request
}

/// Submits `request` with a caller's `traceparent`.
async fn submit_traced(app: &TestApp, request: SubmitRequest, traceparent: &str) -> String {
    let mut call = tonic::Request::new(request);
    call.metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    app.submit_client(As::Orders)
        .await
        .submit(call)
        .await
        .expect("Submit")
        .into_inner()
        .notification_id
}

/// The spans of `trace_id` once `complete` holds for them, flushing the exporter meanwhile.
async fn trace(
    guard: &herald_telemetry::TelemetryGuard,
    receiver: &OtlpReceiver,
    trace_id: &str,
    complete: impl Fn(&[ReceivedSpan]) -> bool,
) -> Vec<ReceivedSpan> {
    eventually("the trace to arrive at the OTLP receiver", WAIT, || {
        guard.flush();
        let spans: Vec<ReceivedSpan> = receiver
            .spans()
            .into_iter()
            .filter(|span| span.trace_id == trace_id)
            .collect();
        std::future::ready(complete(&spans).then_some(spans))
    })
    .await
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|span| span.name == name).collect()
}

fn one<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found = named(spans, name);
    assert_eq!(
        found.len(),
        1,
        "expected one span named {name:?}, got {}; spans: {:?}",
        found.len(),
        spans.iter().map(|span| &span.name).collect::<Vec<_>>()
    );
    found[0]
}

/// Whether `ancestor` is `span`'s parent, grandparent, …
fn descends_from(spans: &[ReceivedSpan], span: &ReceivedSpan, ancestor: &ReceivedSpan) -> bool {
    let by_id: BTreeMap<&str, &ReceivedSpan> = spans
        .iter()
        .map(|span| (span.span_id.as_str(), span))
        .collect();
    let mut parent = span.parent_span_id.as_str();
    while let Some(current) = by_id.get(parent) {
        if current.span_id == ancestor.span_id {
            return true;
        }
        parent = current.parent_span_id.as_str();
    }
    false
}

/// Every string a span exports: attribute and event values, names.
fn exported_text(span: &ReceivedSpan) -> String {
    let mut text = format!("{} {:?}", span.name, span.attributes);
    for (name, attributes) in &span.events {
        text.push_str(&format!(" {name} {attributes:?}"));
    }
    text
}

fn assert_no_personal_data(spans: &[ReceivedSpan], receiver: &OtlpReceiver) {
    for span in spans {
        let text = exported_text(span);
        for personal in [EMAIL, SECRET_PARAMETER, "Grace"] {
            assert!(
                !text.contains(personal),
                "span {:?} exports personal data {personal:?}: {text}",
                span.name
            );
        }
    }
    for record in receiver.logs() {
        let text = format!("{} {:?}", record.body, record.attributes);
        for personal in [EMAIL, SECRET_PARAMETER] {
            assert!(
                !text.contains(personal),
                "a log record exports {personal:?}: {text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_notification_is_one_trace_from_the_callers_span_to_the_smtp_server() {
    let receiver = OtlpReceiver::start().await;
    let guard = export_to(&receiver);
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let notification_id = submit_traced(
        &app,
        traced_request(),
        &format!("00-{trace_id}-{caller_span}-01"),
    )
    .await;
    app.wait_for_status(&notification_id, NotificationStatus::Delivered)
        .await;

    let spans = trace(&guard, &receiver, trace_id, |spans| {
        ["deliver email", "process herald.email.deliver"]
            .iter()
            .all(|name| spans.iter().any(|span| span.name == *name))
    })
    .await;

    let submit = one(&spans, "herald.submit.v1.SubmitService/Submit");
    assert_eq!(submit.kind, SERVER);
    assert_eq!(
        submit.parent_span_id, caller_span,
        "the caller's traceparent is the parent"
    );
    assert_eq!(submit.attributes["rpc.system"], "grpc");
    assert_eq!(
        submit.attributes["rpc.service"],
        "herald.submit.v1.SubmitService"
    );
    assert_eq!(submit.attributes["rpc.method"], "Submit");
    assert_eq!(submit.attributes["rpc.grpc.status_code"], "0");

    let transaction = one(&spans, "INSERT notifications");
    assert_eq!(transaction.kind, CLIENT);
    assert_eq!(transaction.attributes["db.system.name"], "postgresql");
    assert!(descends_from(&spans, transaction, submit));

    let publish = one(&spans, "send herald.deliveries");
    assert_eq!(publish.kind, PRODUCER);
    assert_eq!(publish.attributes["messaging.system"], "rabbitmq");
    assert_eq!(
        publish.attributes["messaging.rabbitmq.destination.routing_key"],
        "email"
    );
    assert!(
        descends_from(&spans, publish, submit),
        "the relay's publish joins the submit's trace"
    );

    let consume = one(&spans, "process herald.email.deliver");
    assert_eq!(consume.kind, CONSUMER);
    assert_eq!(
        consume.parent_span_id, publish.span_id,
        "the worker continues the context from the AMQP headers"
    );
    assert_eq!(
        consume.attributes["messaging.destination.name"],
        "herald.email.deliver"
    );
    assert_eq!(consume.attributes["herald.attempt"], "1");

    let render = one(&spans, "render email");
    assert!(descends_from(&spans, render, consume));

    let provider = one(&spans, "deliver email");
    assert_eq!(provider.kind, CLIENT);
    assert_eq!(provider.parent_span_id, consume.span_id);
    assert_eq!(provider.attributes["herald.outcome"], "delivered");
    assert_eq!(provider.attributes["herald.provider"], "smtp");

    assert!(
        spans
            .iter()
            .all(|span| span.service_name == "herald-integration-test"),
        "every span carries the configured resource"
    );
    // Every stored delivery event is also an OpenTelemetry log record.
    let delivery_id = consume.attributes["herald.delivery.id"].clone();
    let kinds = eventually("the delivery's events as log records", WAIT, || {
        guard.flush();
        let kinds: Vec<String> = receiver
            .logs()
            .iter()
            .filter(|record| record.attributes.get("delivery.id") == Some(&delivery_id))
            .filter_map(|record| record.attributes.get("event.kind").cloned())
            .collect();
        std::future::ready(
            kinds
                .iter()
                .any(|kind| kind == "delivered")
                .then_some(kinds),
        )
    })
    .await;
    for kind in ["accepted", "sending", "sent", "delivered"] {
        assert!(
            kinds.iter().any(|seen| seen == kind),
            "{kind} missing from {kinds:?}"
        );
    }
    assert_no_personal_data(&spans, &receiver);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_is_a_new_attempt_in_the_same_trace_linked_to_the_attempt_before() {
    let receiver = OtlpReceiver::start().await;
    let guard = export_to(&receiver);
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    // The first attempts go to a worker whose SMTP server is unreachable: retryable.
    let failing = app.start_failing_email_worker(50);

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let notification_id = submit_traced(
        &app,
        traced_request(),
        &format!("00-{trace_id}-b7ad6b7169203331-01"),
    )
    .await;
    let delivery_id = app.notification(&notification_id).await.deliveries[0]
        .id
        .clone();
    eventually("a first failed attempt", WAIT, || async {
        app.delivery_events(&delivery_id)
            .await
            .iter()
            .any(|(kind, _)| kind == "retry_wait")
            .then_some(())
    })
    .await;
    failing.cancel();
    app.start_email_worker(1);
    app.wait_for_status(&notification_id, NotificationStatus::Delivered)
        .await;

    let spans = trace(&guard, &receiver, trace_id, |spans| {
        // The delivering attempt's consumer span ends when its message is acknowledged.
        spans.iter().any(|span| {
            span.name == "process herald.email.deliver"
                && span.attributes.get("herald.settlement").map(String::as_str) == Some("Ack")
        })
    })
    .await;
    let publish = one(&spans, "send herald.deliveries");
    let attempts = named(&spans, "process herald.email.deliver");
    assert!(
        attempts.len() >= 2,
        "a failed attempt and the one that delivered: {:#?}",
        spans
            .iter()
            .map(|span| (
                &span.name,
                &span.span_id,
                &span.parent_span_id,
                &span.attributes
            ))
            .collect::<Vec<_>>()
    );
    for attempt in &attempts {
        assert_eq!(
            attempt.parent_span_id, publish.span_id,
            "every attempt continues the relay's publish"
        );
    }
    let mut retries = attempts
        .iter()
        .filter(|attempt| attempt.attributes["herald.attempt"] != "1")
        .peekable();
    assert!(retries.peek().is_some());
    for retry in retries {
        let (linked_trace, linked_span) = retry.links.first().unwrap_or_else(|| {
            panic!("attempt {} has no link", retry.attributes["herald.attempt"])
        });
        assert_eq!(linked_trace, trace_id);
        let previous = attempts
            .iter()
            .find(|attempt| &attempt.span_id == linked_span)
            .expect("the link points at an earlier attempt of this trace");
        let number =
            |span: &ReceivedSpan| span.attributes["herald.attempt"].parse::<u32>().unwrap();
        assert_eq!(number(previous) + 1, number(retry));
    }
    let failed_calls = named(&spans, "deliver email")
        .into_iter()
        .filter(|span| span.attributes["herald.outcome"] == "retryable")
        .count();
    assert!(
        failed_calls >= 1,
        "the failed provider call is in the trace with its outcome"
    );
    assert_no_personal_data(&spans, &receiver);
}

/// The value of the sample `name{labels…}` in Prometheus text, if present.
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            let Some(rest) = line.strip_prefix(name) else {
                return false;
            };
            (rest.starts_with('{') || rest.starts_with(' '))
                && labels
                    .iter()
                    .all(|(label, value)| rest.contains(&format!("{label}=\"{value}\"")))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

pub(crate) async fn scrape(address: std::net::SocketAddr) -> String {
    let response = reqwest::get(format!("http://{address}/metrics"))
        .await
        .expect("scraping /metrics");
    assert!(response.status().is_success());
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/plain")),
    );
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_to_methods_the_server_does_not_have_share_one_unknown_label() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    let mut grpc = tonic::client::Grpc::new(app.channel(As::Orders).await);
    // A service the server does not have, and a method its table does not have (refused
    // before the service sees it).
    for (path, code) in [
        ("/made.up.v1.Nowhere/Anything", tonic::Code::Unimplemented),
        (
            "/herald.submit.v1.SubmitService/Nope",
            tonic::Code::PermissionDenied,
        ),
    ] {
        grpc.ready().await.unwrap();
        let status = grpc
            .unary::<(), (), _>(
                tonic::Request::new(()),
                http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::<(), ()>::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{path}: {}", status.message());
    }

    let api = scrape(app.api_metrics).await;
    for code in ["12", "7"] {
        let unknown = [
            ("rpc_service", "unknown"),
            ("rpc_method", "unknown"),
            ("rpc_grpc_status_code", code),
        ];
        assert_eq!(
            sample(&api, "rpc_server_call_duration_seconds_count", &unknown),
            Some(1.0),
            "{api}"
        );
    }
    assert!(!api.contains("made.up") && !api.contains("Nope"), "{api}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_serves_prometheus_figures_of_the_traffic_it_handled() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    let (worker_metrics, stop_worker) = app.start_email_worker_serving_metrics();
    app.create_welcome_template().await;

    let mut ids = Vec::new();
    for index in 0..3 {
        ids.push(
            app.submit(welcome_request(&format!("user{index}@example.com")))
                .await
                .unwrap()
                .notification_id,
        );
    }
    let mut bad = welcome_request("not-an-address");
    bad.channels = vec![WireChannel::Email.into()];
    assert_eq!(
        app.submit(bad).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    for id in &ids {
        app.wait_for_status(id, NotificationStatus::Delivered).await;
    }

    let api = scrape(app.api_metrics).await;
    let submitted = [
        ("rpc_service", "herald.submit.v1.SubmitService"),
        ("rpc_method", "Submit"),
    ];
    let ok = [submitted[0], submitted[1], ("rpc_grpc_status_code", "0")];
    let invalid = [submitted[0], submitted[1], ("rpc_grpc_status_code", "3")];
    assert_eq!(
        sample(&api, "rpc_server_call_duration_seconds_count", &ok),
        Some(3.0),
        "{api}"
    );
    assert_eq!(
        sample(&api, "rpc_server_call_duration_seconds_count", &invalid),
        Some(1.0)
    );
    assert!(sample(&api, "rpc_server_call_duration_seconds_sum", &ok).unwrap() > 0.0);
    assert!(
        api.contains("service_name=\"herald-api-server\""),
        "target_info names the service"
    );

    let relay = scrape(app.relay_metrics).await;
    let email = [("herald_channel", "email"), ("herald_priority", "normal")];
    assert_eq!(
        sample(&relay, "herald_outbox_published_total", &email),
        Some(3.0),
        "{relay}"
    );
    assert_eq!(
        sample(&relay, "herald_relay_lag_seconds_count", &email),
        Some(3.0)
    );

    // The worker's figures settle after the ack, which follows the state change.
    let queue = [
        ("messaging_destination_name", "herald.email.deliver"),
        ("herald_priority", "normal"),
    ];
    let worker = eventually("the worker to count three acks", WAIT, || async {
        let text = scrape(worker_metrics).await;
        let acked = [queue[0], queue[1], ("herald_settlement", "ack")];
        (sample(&text, "herald_queue_settlements_total", &acked) == Some(3.0)).then_some(text)
    })
    .await;
    assert_eq!(
        sample(&worker, "herald_queue_consumed_total", &queue),
        Some(3.0),
        "{worker}"
    );
    assert_eq!(
        sample(&worker, "herald_queue_wait_duration_seconds_count", &queue),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &worker,
            "herald_queue_processing_duration_seconds_count",
            &queue
        ),
        Some(3.0)
    );
    let delivered = [
        ("herald_channel", "email"),
        ("herald_provider", "smtp"),
        ("herald_outcome", "delivered"),
    ];
    assert_eq!(
        sample(&worker, "herald_delivery_attempts_total", &delivered),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &worker,
            "herald_delivery_provider_duration_seconds_count",
            &delivered
        ),
        Some(3.0)
    );
    stop_worker.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_stats_show_what_waits_per_priority_and_what_the_broker_holds() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let mut ids = Vec::new();
    for (index, priority) in [
        WirePriority::Normal,
        WirePriority::Normal,
        WirePriority::High,
    ]
    .into_iter()
    .enumerate()
    {
        let mut request = welcome_request(&format!("waiting{index}@example.com"));
        request.priority = priority.into();
        ids.push(app.submit(request).await.unwrap().notification_id);
    }
    let mut admin = app.admin_client().await;
    let stats = eventually("the relay to publish all three", WAIT, || {
        let mut admin = admin.clone();
        async move {
            let stats = admin
                .get_queue_stats(GetQueueStatsRequest {})
                .await
                .ok()?
                .into_inner();
            let email = stats
                .queues
                .iter()
                .find(|queue| queue.channel() == WireChannel::Email)?;
            let published = stats.outbox.as_ref()?.backlog == 0;
            // Three deliveries in two or three messages: the two normal ones may travel
            // together.
            let queued = matches!(email.ready_messages, Some(2 | 3));
            (queued && published).then_some(stats)
        }
    })
    .await;
    assert_eq!(stats.broker_error, "");
    assert!(stats.outbox.unwrap().oldest_due.is_none());
    let email = stats
        .queues
        .iter()
        .find(|queue| queue.channel() == WireChannel::Email)
        .unwrap();
    assert_eq!(email.queue, "herald.email.deliver");
    assert_eq!(email.consumers, Some(0));
    assert_eq!(email.dead_lettered, Some(0));
    let lane = |priority: WirePriority| {
        email
            .lanes
            .iter()
            .find(|lane| lane.priority() == priority)
            .unwrap_or_else(|| panic!("a {priority:?} lane in {:?}", email.lanes))
    };
    assert_eq!(lane(WirePriority::Normal).waiting, 2);
    assert_eq!(lane(WirePriority::High).waiting, 1);
    assert!(lane(WirePriority::Normal).oldest_wait.is_some());
    // The sentinel exports the same figures as gauges.
    let sentinel = app.start_sentinel(|_| {});
    let gauges = eventually("the sentinel's first reading", WAIT, || async {
        let text = scrape(sentinel).await;
        text.contains("herald_queue_waiting").then_some(text)
    })
    .await;
    let normal_lane = [
        ("messaging_destination_name", "herald.email.deliver"),
        ("herald_priority", "normal"),
    ];
    let high_lane = [normal_lane[0], ("herald_priority", "high")];
    assert_eq!(
        sample(&gauges, "herald_queue_waiting", &normal_lane),
        Some(2.0),
        "{gauges}"
    );
    assert_eq!(
        sample(&gauges, "herald_queue_waiting", &high_lane),
        Some(1.0)
    );
    assert!(sample(&gauges, "herald_queue_oldest_wait_seconds", &normal_lane).unwrap() > 0.0);
    assert_eq!(sample(&gauges, "herald_outbox_backlog", &[]), Some(0.0));

    let sms = stats
        .queues
        .iter()
        .find(|queue| queue.channel() == WireChannel::Sms)
        .unwrap();
    assert!(sms.lanes.is_empty());

    app.start_email_worker(4);
    for id in &ids {
        app.wait_for_status(id, NotificationStatus::Delivered).await;
    }
    let stats = admin
        .get_queue_stats(GetQueueStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let email = stats
        .queues
        .iter()
        .find(|queue| queue.channel() == WireChannel::Email)
        .unwrap();
    let normal = email
        .lanes
        .iter()
        .find(|lane| lane.priority() == WirePriority::Normal)
        .unwrap();
    assert_eq!(normal.waiting, 0);
    assert_eq!(normal.consumed_recently, 2);
    assert!(normal.mean_wait.is_some());
    assert_eq!(email.consumers, Some(1));

    let status = herald_proto::admin::admin_service_client::AdminServiceClient::new(
        app.channel(As::Orders).await,
    )
    .get_queue_stats(GetQueueStatsRequest {})
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_also_pushed_over_otlp() {
    let receiver = OtlpReceiver::start().await;
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    let mut settings = app.api_replica_settings();
    settings.telemetry = TelemetrySettings {
        otlp_endpoint: receiver.endpoint().to_owned(),
        metrics_export_interval: Duration::from_secs(1),
        ..TelemetrySettings::default()
    };
    let replica = app.spawn_api_replica_with(settings).await;
    let status = herald_proto::submit::submit_service_client::SubmitServiceClient::new(
        app.channel_at(replica, As::Orders).await,
    )
    .get_notification(herald_proto::submit::GetNotificationRequest {
        notification_id: uuid::Uuid::now_v7().to_string(),
    })
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    eventually("the replica's RPC metric over OTLP", WAIT, || {
        let pushed = receiver.metric_names().contains(&(
            "herald-api-server".to_owned(),
            "rpc.server.call.duration".to_owned(),
        ));
        std::future::ready(pushed.then_some(()))
    })
    .await;
}
