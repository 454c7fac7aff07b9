//! `bench`: a load generator. Submits many notifications over a few shared mTLS connections,
//! closed-loop (`--concurrency` tasks) or open-loop (`--rate`, latency counted from each
//! request's intended send time), then measures delivery: from a herald-sink's counters
//! (`--sink`, one cheap HTTP call every 50 ms), or by polling every notification until it is
//! final and reading end-to-end latency from the server's own timestamps, so the polling
//! cadence does not distort the latencies it reports.

pub(crate) mod probe;
mod report;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use herald_proto::common;
use herald_proto::submit::submit_service_client::SubmitServiceClient;
use herald_proto::submit::{
    DeliveryState, GetNotificationRequest, Notification, NotificationStatus, Recipient,
    SubmitBatchRequest, SubmitRequest, SubmitResponse, TemplateRef,
};
use herald_proto::template::template_service_client::TemplateServiceClient;
use herald_proto::template::{
    CreateTemplateRequest, EmailPart, GetTemplateRequest, Template, TemplateContent,
};
use herald_tls::ClientCertificates;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tonic::transport::Channel;

use self::report::{Delivery, DeliverySummary, Load, Report, SinkSummary, SubmitSummary};
use crate::Outcome;
use crate::cli::{BenchArgs, BenchTemplateArgs, ConnectionArgs};
use crate::client::{code_name, connect, rpc_error};
use crate::{display, status};

/// The template the bench creates when `--template` does not exist. `n` and `run` are filled
/// per notification so that every rendered email differs.
const SUBJECT: &str = "Herald bench {{run}} #{{n}}";
const HTML: &str = "<p>Herald bench notification <b>{{n}}</b> of run {{run}}.</p>";
const TEXT: &str = "Herald bench notification {{n}} of run {{run}}.";

/// How often progress goes to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Pause of a poll task that finds nothing to poll while others still hold notifications.
const IDLE_POLL: Duration = Duration::from_millis(20);
/// How often the sink's counters are read with `--sink`.
const SINK_POLL: Duration = Duration::from_millis(50);
/// Longest wait for one answer from the sink.
const SINK_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the whole bench and prints its report.
pub(crate) async fn run(args: &BenchArgs, connection: &ConnectionArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        args.batch == 1 || args.rate.is_none(),
        "--batch is for the closed loop; the open loop (--rate) sends one submit per request"
    );
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(connect(connection, &connection.certificates()).await?);
    }
    let template = ensure_template(&args.template, connection, &channels).await?;
    let plan = Arc::new(SubmitPlan {
        count: args.count,
        template_key: template.key,
        template_version: template.version,
        parameter_names: template.parameters,
        recipient: args.to.clone(),
        priority: common::Priority::from(args.priority) as i32,
        run_id: run_id.clone(),
    });
    let load = Load::of(args);
    eprintln!(
        "Submitting {} notifications with template `{}` version {} {} over {} connections (run {run_id}).",
        args.count,
        plan.template_key,
        plan.template_version,
        load.describe(),
        args.connections
    );
    // The sink's counts are read before the first submit; watching starts with the submits, so
    // that deliveries finishing before the last submit is answered are timed too.
    let sink_watch = match (&args.sink, args.no_wait) {
        (Some(url), false) => Some(SinkWatch::start(SinkClient::new(url)?).await?),
        _ => None,
    };
    let submitted = submit_all(args, &channels, plan).await?;
    let delivery = if args.no_wait || submitted.accepted_ids.is_empty() {
        None
    } else if let Some(sink_watch) = sink_watch {
        eprintln!(
            "Waiting up to {} for {} notifications to reach the sink.",
            humantime::format_duration(args.wait_timeout),
            submitted.accepted_ids.len()
        );
        Some(Delivery::Sink(
            sink_watch
                .finish(
                    submitted.accepted_ids.len() as u64,
                    submitted.first_accepted_at,
                    args.wait_timeout,
                )
                .await?,
        ))
    } else {
        eprintln!(
            "Waiting up to {} for {} notifications to be delivered.",
            humantime::format_duration(args.wait_timeout),
            submitted.accepted_ids.len()
        );
        Some(Delivery::Polled(
            wait_all(args, &channels, submitted.accepted_ids).await?,
        ))
    };
    let report = Report {
        run_id,
        template: args.template.key.clone(),
        count: args.count,
        load,
        connections: args.connections,
        submit: submitted.summary,
        delivery,
    };
    report.print(args.json)?;
    Ok(if report.is_complete() {
        Outcome::Success
    } else {
        Outcome::Partial
    })
}

/// Parses `--rate`: a positive, finite number of submits per second.
pub(crate) fn parse_rate(argument: &str) -> Result<f64, String> {
    let rate: f64 = argument
        .parse()
        .map_err(|_| format!("`{argument}` is not a number"))?;
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err("the rate must be a positive number of submits per second".to_owned())
    }
}

/// Reads the template, creating it with the admin certificate when it does not exist yet.
/// Fails when it cannot be used for email.
async fn ensure_template(
    source: &BenchTemplateArgs,
    connection: &ConnectionArgs,
    channels: &[Channel],
) -> anyhow::Result<Template> {
    let channel = channels.first().context("no connection to the server")?;
    let mut reader = TemplateServiceClient::new(channel.clone());
    let existing = reader
        .get_template(GetTemplateRequest {
            key: source.key.clone(),
            version: None,
        })
        .await;
    let template = match existing {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound => {
            create_template(source, connection, &mut reader).await?
        }
        Err(status) => {
            return Err(rpc_error(&status))
                .with_context(|| format!("reading template `{}`", source.key));
        }
    };
    if template
        .content
        .as_ref()
        .and_then(|content| content.email.as_ref())
        .is_none()
    {
        anyhow::bail!(
            "template `{}` has no email part, but the bench sends email",
            template.key
        );
    }
    Ok(template)
}

async fn create_template(
    source: &BenchTemplateArgs,
    connection: &ConnectionArgs,
    reader: &mut TemplateServiceClient<Channel>,
) -> anyhow::Result<Template> {
    let admin = ClientCertificates {
        ca: connection.ca.clone(),
        cert: source.admin_cert.clone(),
        key: source.admin_key.clone(),
    };
    let mut admin_client = TemplateServiceClient::new(
        connect(connection, &admin)
            .await
            .context("connecting with the admin certificate to create the bench template")?,
    );
    let request = CreateTemplateRequest {
        key: source.key.clone(),
        category: source.category.clone(),
        description: "Created by herald-cli bench.".to_owned(),
        content: Some(TemplateContent {
            email: Some(EmailPart {
                subject: SUBJECT.to_owned(),
                html: HTML.to_owned(),
                text: TEXT.to_owned(),
            }),
            ..TemplateContent::default()
        }),
        ..CreateTemplateRequest::default()
    };
    match admin_client.create_template(request).await {
        Ok(response) => {
            eprintln!("Created template `{}`.", source.key);
            Ok(response.into_inner())
        }
        // Someone else created it between our read and our create; theirs is as good.
        Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(reader
            .get_template(GetTemplateRequest {
                key: source.key.clone(),
                version: None,
            })
            .await
            .map_err(|status| rpc_error(&status))
            .with_context(|| format!("reading template `{}`", source.key))?
            .into_inner()),
        Err(status) => {
            Err(rpc_error(&status)).with_context(|| format!("creating template `{}`", source.key))
        }
    }
}

/// Everything a submit task needs to build the request for one index.
#[derive(Debug)]
struct SubmitPlan {
    count: u64,
    template_key: String,
    template_version: u32,
    parameter_names: Vec<String>,
    /// `{n}` becomes the index.
    recipient: String,
    priority: i32,
    run_id: String,
}

impl SubmitPlan {
    /// The request for notification `index`, with its own idempotency key. The template is
    /// pinned to the version whose parameters we read, and every parameter gets a value: the
    /// bench template's `n` and `run`, and `"bench"` for any other name a pre-existing
    /// template uses.
    fn request(&self, index: u64) -> SubmitRequest {
        let parameters: serde_json::Map<String, serde_json::Value> = self
            .parameter_names
            .iter()
            .map(|name| {
                let value = match name.as_str() {
                    "n" => index.into(),
                    "run" => self.run_id.clone().into(),
                    _ => "bench".into(),
                };
                (name.clone(), value)
            })
            .collect();
        SubmitRequest {
            send_at: None,
            template: Some(TemplateRef {
                key: self.template_key.clone(),
                version: Some(self.template_version),
            }),
            parameters: Some(herald_proto::conversions::json_to_struct(&parameters)),
            recipients: vec![Recipient {
                user_id: String::new(),
                email: self.recipient.replace("{n}", &index.to_string()),
                ..Recipient::default()
            }],
            channels: vec![common::Channel::Email as i32],
            priority: self.priority,
            category: String::new(),
            idempotency_key: format!("bench-{}-{index}", self.run_id),
            metadata: [("bench_run".to_owned(), self.run_id.clone())].into(),
        }
    }
}

/// Counts of something by a name (a gRPC code, a delivery state), each with one example message.
#[derive(Debug, Default)]
pub(crate) struct Reasons(BTreeMap<String, Reason>);

/// One entry of [`Reasons`].
#[derive(Debug)]
pub(crate) struct Reason {
    pub(crate) count: u64,
    pub(crate) example: String,
}

impl Reasons {
    fn note(&mut self, name: String, message: &str) {
        let reason = self.0.entry(name).or_insert_with(|| Reason {
            count: 0,
            example: message.to_owned(),
        });
        reason.count += 1;
    }

    fn note_status(&mut self, status: &tonic::Status) {
        self.note(code_name(status.code()), status.message());
    }

    fn merge(&mut self, other: Self) {
        for (name, theirs) in other.0 {
            let ours = self.0.entry(name).or_insert(Reason {
                count: 0,
                example: theirs.example,
            });
            ours.count += theirs.count;
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.0.values().map(|reason| reason.count).sum()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Reason)> {
        self.0.iter()
    }
}

/// What one submit task saw. Latencies are kept as raw samples and put into one histogram at
/// the end: a histogram per task would cost far more memory than a few thousand samples.
#[derive(Debug, Default)]
struct SubmitTally {
    latencies_us: Vec<u64>,
    /// Open loop only: how late each submit went out after its intended send time.
    send_lags_us: Vec<u64>,
    accepted_ids: Vec<String>,
    duplicates: u64,
    errors: Reasons,
    /// When the earliest accepted submit was sent.
    first_accepted_at: Option<Instant>,
}

impl SubmitTally {
    /// Records one answer. Only accepted submits are timed: fast rejections would make the
    /// latency look better. `latency_from` is the send time (closed loop) or the intended send
    /// time (open loop); `sent_at` is when the request actually went out.
    fn record(
        &mut self,
        result: Result<SubmitResponse, tonic::Status>,
        latency_from: Instant,
        sent_at: Instant,
        answered_at: Instant,
    ) {
        match result {
            Ok(response) => {
                self.latencies_us
                    .push(micros(answered_at.saturating_duration_since(latency_from)));
                self.duplicates += u64::from(response.duplicate);
                self.accepted_ids.push(response.notification_id);
                self.first_accepted_at = combine(self.first_accepted_at, Some(sent_at), Ord::min);
            }
            Err(status) => self.errors.note_status(&status),
        }
    }

    fn merge(&mut self, other: Self) {
        self.latencies_us.extend(other.latencies_us);
        self.send_lags_us.extend(other.send_lags_us);
        self.accepted_ids.extend(other.accepted_ids);
        self.duplicates += other.duplicates;
        self.errors.merge(other.errors);
        self.first_accepted_at = combine(self.first_accepted_at, other.first_accepted_at, Ord::min);
    }
}

/// The submit phase's summary, the ids of accepted notifications and when the first of them
/// was sent (where delivery throughput starts).
#[derive(Debug)]
struct Submitted {
    summary: SubmitSummary,
    accepted_ids: Vec<String>,
    first_accepted_at: Option<Instant>,
}

/// Submits `plan.count` notifications, closed-loop or open-loop (`--rate`).
async fn submit_all(
    args: &BenchArgs,
    channels: &[Channel],
    plan: Arc<SubmitPlan>,
) -> anyhow::Result<Submitted> {
    let finished = Arc::new(AtomicU64::new(0));
    let _progress = Progress::spawn("submitted", Arc::clone(&finished), plan.count);
    let started = Instant::now();
    let total = match args.rate {
        None => submit_closed_loop(args, channels, plan, finished).await,
        Some(rate) => submit_open_loop(args, channels, plan, finished, rate).await?,
    };
    let summary = SubmitSummary {
        accepted: total.accepted_ids.len() as u64,
        duplicates: total.duplicates,
        errors: total.errors,
        elapsed: started.elapsed(),
        latency_us: report::Percentiles::of(&total.latencies_us)?,
        send_lag_us: report::Percentiles::of(&total.send_lags_us)?,
    };
    Ok(Submitted {
        summary,
        accepted_ids: total.accepted_ids,
        first_accepted_at: total.first_accepted_at,
    })
}

/// `--concurrency` tasks, each sending its next submit when the previous one is answered.
async fn submit_closed_loop(
    args: &BenchArgs,
    channels: &[Channel],
    plan: Arc<SubmitPlan>,
    finished: Arc<AtomicU64>,
) -> SubmitTally {
    let next_index = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for channel in channels.iter().cycle().take(args.concurrency as usize) {
        tasks.spawn(submit_task(
            SubmitServiceClient::new(channel.clone()),
            Arc::clone(&plan),
            Arc::clone(&next_index),
            Arc::clone(&finished),
            u64::from(args.batch),
        ));
    }
    let mut total = SubmitTally::default();
    let mut panics = 0;
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(tally) => total.merge(tally),
            Err(_) => panics += 1,
        }
    }
    if panics > 0 {
        total.errors.note(
            "TaskPanicked".to_owned(),
            "a submit task panicked; its counts are lost",
        );
    }
    total
}

async fn submit_task(
    mut client: SubmitServiceClient<Channel>,
    plan: Arc<SubmitPlan>,
    next_index: Arc<AtomicU64>,
    finished: Arc<AtomicU64>,
    batch: u64,
) -> SubmitTally {
    let mut tally = SubmitTally::default();
    loop {
        let first = next_index.fetch_add(batch, Ordering::Relaxed);
        if first >= plan.count {
            break;
        }
        let indices = first..(first + batch).min(plan.count);
        let sent_at = Instant::now();
        if batch == 1 {
            let result = send_submit(&mut client, &plan, first).await;
            tally.record(result, sent_at, sent_at, Instant::now());
        } else {
            let results = send_submit_batch(&mut client, &plan, indices.clone()).await;
            let answered_at = Instant::now();
            for result in results {
                tally.record(result, sent_at, sent_at, answered_at);
            }
        }
        finished.fetch_add(indices.end - indices.start, Ordering::Relaxed);
    }
    tally
}

/// Sends submits `indices` of `plan` in one `SubmitBatch` call; one result per index (the
/// call's own error for each when the whole call failed).
async fn send_submit_batch(
    client: &mut SubmitServiceClient<Channel>,
    plan: &SubmitPlan,
    indices: std::ops::Range<u64>,
) -> Vec<Result<SubmitResponse, tonic::Status>> {
    let count = usize::try_from(indices.end - indices.start).unwrap_or_default();
    let request = SubmitBatchRequest {
        items: indices.map(|index| plan.request(index)).collect(),
    };
    match client.submit_batch(request).await {
        Ok(response) => response
            .into_inner()
            .results
            .into_iter()
            .map(|result| {
                result.accepted.ok_or_else(|| {
                    tonic::Status::new(tonic::Code::from_i32(result.code), result.message)
                })
            })
            .collect(),
        Err(status) => (0..count).map(|_| Err(status.clone())).collect(),
    }
}

/// Sends submit `index` of `plan`.
async fn send_submit(
    client: &mut SubmitServiceClient<Channel>,
    plan: &SubmitPlan,
    index: u64,
) -> Result<SubmitResponse, tonic::Status> {
    client
        .submit(plan.request(index))
        .await
        .map(tonic::Response::into_inner)
}

/// The intended send time of request `index` at `rate` per second.
fn intended_send_time(started: Instant, index: u64, rate: f64) -> Instant {
    started + Duration::from_secs_f64(index as f64 / rate)
}

/// Sends request i at its intended time `started + i / rate`, each from its own task, whatever
/// the answers of earlier ones; at most `--max-in-flight` wait for an answer at once. Latency
/// counts from the intended send time, so a server that falls behind (or a full in-flight
/// window) shows up in the latencies instead of silently lowering the load (coordinated
/// omission).
async fn submit_open_loop(
    args: &BenchArgs,
    channels: &[Channel],
    plan: Arc<SubmitPlan>,
    finished: Arc<AtomicU64>,
    rate: f64,
) -> anyhow::Result<SubmitTally> {
    let clients: Vec<_> = channels
        .iter()
        .map(|channel| SubmitServiceClient::new(channel.clone()))
        .collect();
    anyhow::ensure!(!clients.is_empty(), "no connection to the server");
    let in_flight = Arc::new(Semaphore::new(args.max_in_flight as usize));
    let mut total = SubmitTally::default();
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for index in 0..plan.count {
        let intended = intended_send_time(started, index, rate);
        tokio::time::sleep_until(intended).await;
        let permit = Arc::clone(&in_flight)
            .acquire_owned()
            .await
            .context("the in-flight window closed")?;
        let sent_at = Instant::now();
        total
            .send_lags_us
            .push(micros(sent_at.saturating_duration_since(intended)));
        let mut client = clients[(index % clients.len() as u64) as usize].clone();
        let plan = Arc::clone(&plan);
        let finished = Arc::clone(&finished);
        tasks.spawn(async move {
            let result = send_submit(&mut client, &plan, index).await;
            let answered_at = Instant::now();
            drop(permit);
            finished.fetch_add(1, Ordering::Relaxed);
            (result, intended, sent_at, answered_at)
        });
        // Collect answers as they come so that finished tasks do not pile up.
        while let Some(result) = tasks.try_join_next() {
            total.note_open_loop_answer(result);
        }
    }
    while let Some(result) = tasks.join_next().await {
        total.note_open_loop_answer(result);
    }
    Ok(total)
}

/// One open-loop request's outcome: the answer, its intended send time, when it went out and
/// when it was answered.
type OpenLoopAnswer = (
    Result<SubmitResponse, tonic::Status>,
    Instant,
    Instant,
    Instant,
);

impl SubmitTally {
    fn note_open_loop_answer(&mut self, joined: Result<OpenLoopAnswer, tokio::task::JoinError>) {
        match joined {
            Ok((result, intended, sent_at, answered_at)) => {
                self.record(result, intended, sent_at, answered_at);
            }
            Err(_) => self.errors.note(
                "TaskPanicked".to_owned(),
                "a submit task panicked; its request is lost",
            ),
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// A notification still to poll, and when to poll it next.
#[derive(Debug)]
struct Pending {
    id: String,
    due: Instant,
}

/// Notifications waiting to be polled, shared by the poll tasks. Each task takes one from the
/// front and puts it back at the end (due one poll interval later) while it is not final.
#[derive(Debug)]
struct PollQueue {
    pending: Mutex<VecDeque<Pending>>,
    finished: Arc<AtomicU64>,
    total: u64,
}

impl PollQueue {
    fn pop(&self) -> Option<Pending> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    fn push(&self, pending: Pending) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(pending);
    }

    fn is_done(&self) -> bool {
        self.finished.load(Ordering::Acquire) >= self.total
    }
}

/// What one poll task saw.
#[derive(Debug, Default)]
struct DeliveryTally {
    /// End-to-end latency of each delivered notification.
    latencies_us: Vec<u64>,
    delivered: u64,
    failed: u64,
    partially_delivered: u64,
    first_created_at: Option<DateTime<Utc>>,
    last_delivered_at: Option<DateTime<Utc>>,
    /// Deliveries of failed or partially delivered notifications that did not succeed, by state.
    undelivered: Reasons,
    polls: u64,
    poll_errors: Reasons,
}

impl DeliveryTally {
    fn observe(&mut self, notification: &Notification) {
        if let Some(created_at) = display::instant(notification.created_at.as_ref()) {
            self.first_created_at = Some(
                self.first_created_at
                    .map_or(created_at, |first| first.min(created_at)),
            );
        }
    }

    fn record_final(&mut self, notification: &Notification) {
        match NotificationStatus::try_from(notification.status) {
            Ok(NotificationStatus::Delivered) => {
                self.delivered += 1;
                let created_at = display::instant(notification.created_at.as_ref());
                let delivered_at = notification
                    .deliveries
                    .iter()
                    .filter_map(|delivery| display::instant(delivery.delivered_at.as_ref()))
                    .max();
                if let (Some(created_at), Some(delivered_at)) = (created_at, delivered_at) {
                    // Both instants come from server clocks; skew between hosts could make the
                    // difference negative, which is recorded as zero.
                    let latency = (delivered_at - created_at)
                        .num_microseconds()
                        .unwrap_or(i64::MAX);
                    self.latencies_us.push(u64::try_from(latency).unwrap_or(0));
                    self.last_delivered_at = Some(
                        self.last_delivered_at
                            .map_or(delivered_at, |last| last.max(delivered_at)),
                    );
                }
            }
            Ok(NotificationStatus::PartiallyDelivered) => {
                self.partially_delivered += 1;
                self.note_undelivered(notification);
            }
            _ => {
                self.failed += 1;
                self.note_undelivered(notification);
            }
        }
    }

    fn note_undelivered(&mut self, notification: &Notification) {
        for delivery in &notification.deliveries {
            if delivery.state != DeliveryState::Delivered as i32 {
                self.undelivered.note(
                    display::delivery_state(delivery.state),
                    &delivery.last_error,
                );
            }
        }
    }

    fn merge(&mut self, other: Self) {
        self.latencies_us.extend(other.latencies_us);
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.partially_delivered += other.partially_delivered;
        self.first_created_at =
            combine(self.first_created_at, other.first_created_at, DateTime::min);
        self.last_delivered_at = combine(
            self.last_delivered_at,
            other.last_delivered_at,
            DateTime::max,
        );
        self.undelivered.merge(other.undelivered);
        self.polls += other.polls;
        self.poll_errors.merge(other.poll_errors);
    }
}

/// Combines two optional values with `pick` when both are present.
fn combine<T>(ours: Option<T>, theirs: Option<T>, pick: fn(T, T) -> T) -> Option<T> {
    match (ours, theirs) {
        (Some(ours), Some(theirs)) => Some(pick(ours, theirs)),
        (ours, theirs) => ours.or(theirs),
    }
}

/// Polls every id until it is final or `--wait-timeout` passes.
async fn wait_all(
    args: &BenchArgs,
    channels: &[Channel],
    ids: Vec<String>,
) -> anyhow::Result<DeliverySummary> {
    let started = Instant::now();
    let deadline = started + args.wait_timeout;
    let total = ids.len() as u64;
    let queue = Arc::new(PollQueue {
        pending: Mutex::new(
            ids.into_iter()
                .map(|id| Pending { id, due: started })
                .collect(),
        ),
        finished: Arc::new(AtomicU64::new(0)),
        total,
    });
    let _progress = Progress::spawn("final", Arc::clone(&queue.finished), total);
    let mut tasks = JoinSet::new();
    for channel in channels.iter().cycle().take(args.concurrency as usize) {
        tasks.spawn(poll_task(
            SubmitServiceClient::new(channel.clone()),
            Arc::clone(&queue),
            deadline,
            args.poll_interval,
        ));
    }
    let mut total_tally = DeliveryTally::default();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(tally) => total_tally.merge(tally),
            Err(_) => total_tally.poll_errors.note(
                "TaskPanicked".to_owned(),
                "a poll task panicked; its counts are lost",
            ),
        }
    }
    let window = match (total_tally.first_created_at, total_tally.last_delivered_at) {
        (Some(first), Some(last)) => (last - first).to_std().ok(),
        _ => None,
    };
    let finished = queue.finished.load(Ordering::Acquire);
    Ok(DeliverySummary {
        delivered: total_tally.delivered,
        failed: total_tally.failed,
        partially_delivered: total_tally.partially_delivered,
        unfinished: total.saturating_sub(finished),
        window,
        latency_us: report::Percentiles::of(&total_tally.latencies_us)?,
        undelivered: total_tally.undelivered,
        polls: total_tally.polls,
        poll_errors: total_tally.poll_errors,
        elapsed: started.elapsed(),
    })
}

async fn poll_task(
    mut client: SubmitServiceClient<Channel>,
    queue: Arc<PollQueue>,
    deadline: Instant,
    poll_interval: Duration,
) -> DeliveryTally {
    let mut tally = DeliveryTally::default();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let Some(pending) = queue.pop() else {
            // Other tasks may still put notifications back; stop only when all are final.
            if queue.is_done() {
                break;
            }
            tokio::time::sleep(IDLE_POLL.min(deadline - now)).await;
            continue;
        };
        if pending.due > now {
            tokio::time::sleep_until(pending.due.min(deadline)).await;
        }
        tally.polls += 1;
        let result = client
            .get_notification(GetNotificationRequest {
                notification_id: pending.id.clone(),
            })
            .await;
        match result {
            Ok(response) => {
                if let Some(notification) = response.into_inner().notification {
                    tally.observe(&notification);
                    if status::is_final(notification.status) {
                        tally.record_final(&notification);
                        queue.finished.fetch_add(1, Ordering::AcqRel);
                        continue;
                    }
                }
            }
            Err(status) => tally.poll_errors.note_status(&status),
        }
        queue.push(Pending {
            id: pending.id,
            due: Instant::now() + poll_interval,
        });
    }
    tally
}

/// The counters a herald-sink serves on `GET /stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SinkStats {
    messages: u64,
    distinct: u64,
    duplicates: u64,
}

/// One message's arrival as a herald-sink serves it on `GET /messages/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct SinkArrival {
    /// The `Message-ID` as the sink received it, angle brackets included.
    message_id: String,
    /// When the first copy arrived: the sink's wall clock, milliseconds since the Unix epoch.
    arrived_at_unix_ms: u64,
    /// Messages with this `Message-ID` (more than 1 after a resend).
    copies: u64,
}

impl SinkStats {
    fn from_json(body: &[u8]) -> anyhow::Result<Self> {
        let value: serde_json::Value =
            serde_json::from_slice(body).context("the sink's answer is not JSON")?;
        let field = |name: &str| {
            value[name]
                .as_u64()
                .with_context(|| format!("the sink's answer has no number `{name}`"))
        };
        Ok(Self {
            messages: field("messages")?,
            distinct: field("distinct")?,
            duplicates: field("duplicates")?,
        })
    }
}

/// Reads a herald-sink's counters (`GET /stats`) and single arrivals (`GET /messages/<id>`).
#[derive(Debug, Clone)]
struct SinkClient {
    /// As given, for messages.
    url: String,
    /// Where the sink's routes start (`http://host:port/` or `http://host:port/prefix/`).
    base: reqwest::Url,
    /// The `/stats` URL.
    stats_url: reqwest::Url,
    http: reqwest::Client,
}

impl SinkClient {
    /// Accepts `http://host:port[/prefix]` or `host:port`.
    fn new(url: &str) -> anyhow::Result<Self> {
        let with_scheme = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let base = reqwest::Url::parse(&with_scheme)
            .with_context(|| format!("--sink must be an http:// URL, got `{url}`"))?;
        anyhow::ensure!(
            base.scheme() == "http",
            "--sink must be an http:// URL, got the scheme `{}`",
            base.scheme()
        );
        anyhow::ensure!(
            base.host_str().is_some_and(|host| !host.is_empty()),
            "--sink must name a host and port, got `{url}`"
        );
        let stats_url =
            reqwest::Url::parse(&format!("{}/stats", base.as_str().trim_end_matches('/')))?;
        Ok(Self {
            url: url.to_owned(),
            base,
            stats_url,
            http: reqwest::Client::builder().timeout(SINK_TIMEOUT).build()?,
        })
    }

    /// `GET /messages/<message_id>`: `message_id` without its angle brackets, percent-encoded
    /// here as one path segment.
    fn message_url(&self, message_id: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["messages", message_id]);
        }
        url
    }

    /// When the message with `message_id` (without angle brackets) arrived, or `None` while
    /// the sink has not seen it (404).
    async fn message(&self, message_id: &str) -> anyhow::Result<Option<SinkArrival>> {
        let response = self
            .http
            .get(self.message_url(message_id))
            .send()
            .await
            .with_context(|| format!("asking the sink at {} for a message", self.url))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        anyhow::ensure!(
            response.status().is_success(),
            "the sink answered {}",
            response.status()
        );
        let body = response
            .bytes()
            .await
            .context("reading the sink's answer")?;
        serde_json::from_slice(&body)
            .map(Some)
            .context("the sink's answer is not a message arrival")
    }

    async fn stats(&self) -> anyhow::Result<SinkStats> {
        let response = self
            .http
            .get(self.stats_url.clone())
            .send()
            .await
            .with_context(|| format!("asking the sink at {} for its counts", self.url))?;
        anyhow::ensure!(
            response.status().is_success(),
            "the sink answered {}",
            response.status()
        );
        SinkStats::from_json(
            &response
                .bytes()
                .await
                .context("reading the sink's answer")?,
        )
    }
}

/// What the sink watcher saw.
#[derive(Debug, Default)]
struct SinkTally {
    last: SinkStats,
    /// When the distinct count was last seen to grow.
    last_growth_at: Option<Instant>,
    polls: u64,
    errors: Reasons,
}

/// Watches the sink's counters from before the first submit until they have grown by the
/// number of accepted notifications, or a deadline passes. The target is only known once
/// the submits are done; until then the watcher only records.
#[derive(Debug)]
struct SinkWatch {
    url: String,
    baseline: SinkStats,
    /// The number to wait for and the deadline, once known. Dropping it stops the watcher.
    goal: watch::Sender<Option<(u64, Instant)>>,
    task: JoinHandle<SinkTally>,
    /// Distinct Message-IDs above the baseline, for progress lines.
    delivered: Arc<AtomicU64>,
}

impl SinkWatch {
    /// Reads the baseline (failing early when the sink is unreachable) and starts watching.
    async fn start(client: SinkClient) -> anyhow::Result<Self> {
        let baseline = client
            .stats()
            .await
            .with_context(|| format!("reading the sink's counts at {}", client.url))?;
        let (goal, goal_receiver) = watch::channel(None);
        let delivered = Arc::new(AtomicU64::new(0));
        let url = client.url.clone();
        let task = tokio::spawn(watch_sink(
            client,
            baseline,
            goal_receiver,
            Arc::clone(&delivered),
        ));
        Ok(Self {
            url,
            baseline,
            goal,
            task,
            delivered,
        })
    }

    /// Waits until `expected` more distinct Message-IDs arrived, or `wait_timeout` passed.
    /// Delivery throughput runs from `first_accepted_at` to the poll that saw the last one.
    async fn finish(
        self,
        expected: u64,
        first_accepted_at: Option<Instant>,
        wait_timeout: Duration,
    ) -> anyhow::Result<SinkSummary> {
        let waiting_since = Instant::now();
        let _progress = Progress::spawn("delivered", Arc::clone(&self.delivered), expected);
        // The watcher only ends after it got a goal, so it is still there to receive it.
        let _sent = self
            .goal
            .send(Some((expected, waiting_since + wait_timeout)));
        let tally = self.task.await.context("the sink watcher failed")?;
        let growth = tally.last.distinct.saturating_sub(self.baseline.distinct);
        let window = match (first_accepted_at, tally.last_growth_at) {
            (Some(first), Some(last)) => Some(last.saturating_duration_since(first)),
            _ => None,
        };
        Ok(SinkSummary {
            url: self.url,
            delivered: growth.min(expected),
            unexpected: growth.saturating_sub(expected),
            unfinished: expected.saturating_sub(growth),
            duplicates: tally
                .last
                .duplicates
                .saturating_sub(self.baseline.duplicates),
            messages: tally.last.messages.saturating_sub(self.baseline.messages),
            window,
            polls: tally.polls,
            poll_errors: tally.errors,
            elapsed: waiting_since.elapsed(),
        })
    }
}

async fn watch_sink(
    client: SinkClient,
    baseline: SinkStats,
    mut goal: watch::Receiver<Option<(u64, Instant)>>,
    delivered: Arc<AtomicU64>,
) -> SinkTally {
    let mut tally = SinkTally {
        last: baseline,
        ..SinkTally::default()
    };
    let mut ticker = tokio::time::interval(SINK_POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let target = *goal.borrow_and_update();
        if target.is_none() && goal.has_changed().is_err() {
            // The bench stopped waiting (`--no-wait`, or nothing was accepted).
            break;
        }
        tally.polls += 1;
        match client.stats().await {
            Ok(stats) => {
                if stats.distinct > tally.last.distinct {
                    tally.last_growth_at = Some(Instant::now());
                }
                tally.last = stats;
                delivered.store(
                    stats.distinct.saturating_sub(baseline.distinct),
                    Ordering::Relaxed,
                );
            }
            Err(error) => tally
                .errors
                .note("SinkUnreachable".to_owned(), &format!("{error:#}")),
        }
        if let Some((expected, deadline)) = target {
            let growth = tally.last.distinct.saturating_sub(baseline.distinct);
            if growth >= expected || Instant::now() >= deadline {
                break;
            }
        }
    }
    tally
}

/// Prints `<label> <done>/<total>` to stderr every few seconds until dropped.
#[derive(Debug)]
struct Progress(JoinHandle<()>);

impl Progress {
    fn spawn(label: &'static str, done: Arc<AtomicU64>, total: u64) -> Self {
        Self(tokio::spawn(async move {
            let started = Instant::now();
            let mut ticker = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
            loop {
                ticker.tick().await;
                eprintln!(
                    "  {label} {}/{total} after {:.0}s",
                    done.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64()
                );
            }
        }))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests;
