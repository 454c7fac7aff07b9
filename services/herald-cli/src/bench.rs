//! `bench`: a load generator. Submits many notifications over a few shared mTLS connections,
//! closed-loop (`--concurrency` tasks) or open-loop (`--rate`, latency counted from each
//! request's intended send time), then measures delivery: from a herald-sink's counters
//! (`--sink`, one cheap HTTP call every 50 ms), or by polling every notification until it is
//! final and reading end-to-end latency from the server's own timestamps, so the polling
//! cadence does not distort the latencies it reports.

mod clients;
mod poll;
pub(crate) mod probe;
mod report;
mod sink;
mod template;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use herald_proto::common;
use herald_proto::submit::submit_service_client::SubmitServiceClient;
use herald_proto::submit::{
    Recipient, SubmitBatchRequest, SubmitRequest, SubmitResponse, TemplateRef,
};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tonic::transport::Channel;

use self::clients::Clients;
use self::report::{Delivery, Load, Report, SubmitSummary};
use crate::Outcome;
use crate::cli::{BenchArgs, ConnectionArgs};
use crate::client::code_name;
use poll::wait_all;
use sink::{SinkClient, SinkWatch};
use template::ensure_template;

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
    let (channels, submit_clients) = clients::open(args, connection).await?;
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
        channels.len()
    );
    // The sink's counts are read before the first submit; watching starts with the submits, so
    // that deliveries finishing before the last submit is answered are timed too.
    let sink_watch = match (&args.sink, args.no_wait) {
        (Some(url), false) => Some(SinkWatch::start(SinkClient::new(url)?).await?),
        _ => None,
    };
    let submitted = submit_all(args, &submit_clients, plan).await?;
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
        connections: u32::try_from(channels.len()).unwrap_or(u32::MAX),
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
    /// Submits (or calls) sent again to another server after a transport failure.
    resends: u64,
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
        self.resends += other.resends;
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
    clients: &Clients,
    plan: Arc<SubmitPlan>,
) -> anyhow::Result<Submitted> {
    let finished = Arc::new(AtomicU64::new(0));
    let _progress = Progress::spawn("submitted", Arc::clone(&finished), plan.count);
    let started = Instant::now();
    let total = match args.rate {
        None => submit_closed_loop(args, clients, plan, finished).await,
        Some(rate) => submit_open_loop(args, clients, plan, finished, rate).await?,
    };
    let summary = SubmitSummary {
        accepted: total.accepted_ids.len() as u64,
        duplicates: total.duplicates,
        resends: total.resends,
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
    clients: &Clients,
    plan: Arc<SubmitPlan>,
    finished: Arc<AtomicU64>,
) -> SubmitTally {
    let next_index = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for task in 0..args.concurrency as usize {
        tasks.spawn(submit_task(
            clients.clone(),
            task % clients.len(),
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

/// One closed-loop task: sends through connection `connection` of `clients` until the plan is
/// used up.
async fn submit_task(
    clients: Clients,
    connection: usize,
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
            let (result, resends) = clients.submit(connection, &plan, first).await;
            tally.resends += resends;
            tally.record(result, sent_at, sent_at, Instant::now());
        } else {
            let (results, resends) = clients
                .submit_batch(connection, &plan, indices.clone())
                .await;
            tally.resends += resends;
            let answered_at = Instant::now();
            for result in results {
                tally.record(result, sent_at, sent_at, answered_at);
            }
        }
        finished.fetch_add(indices.end - indices.start, Ordering::Relaxed);
    }
    tally
}

/// Sends submits `indices` of `plan` in one `SubmitBatch` call; one result per index, or the
/// call's own error.
async fn send_submit_batch(
    client: &mut SubmitServiceClient<Channel>,
    plan: &SubmitPlan,
    indices: std::ops::Range<u64>,
) -> Result<Vec<Result<SubmitResponse, tonic::Status>>, tonic::Status> {
    let request = SubmitBatchRequest {
        items: indices.map(|index| plan.request(index)).collect(),
    };
    Ok(client
        .submit_batch(request)
        .await?
        .into_inner()
        .results
        .into_iter()
        .map(|result| {
            result.accepted.ok_or_else(|| {
                tonic::Status::new(tonic::Code::from_i32(result.code), result.message)
            })
        })
        .collect())
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
    clients: &Clients,
    plan: Arc<SubmitPlan>,
    finished: Arc<AtomicU64>,
    rate: f64,
) -> anyhow::Result<SubmitTally> {
    anyhow::ensure!(clients.len() > 0, "no connection to the server");
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
        let connection = usize::try_from(index % clients.len() as u64).unwrap_or_default();
        let clients = clients.clone();
        let plan = Arc::clone(&plan);
        let finished = Arc::clone(&finished);
        tasks.spawn(async move {
            let (result, resends) = clients.submit(connection, &plan, index).await;
            let answered_at = Instant::now();
            drop(permit);
            finished.fetch_add(1, Ordering::Relaxed);
            (result, resends, intended, sent_at, answered_at)
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
    u64,
    Instant,
    Instant,
    Instant,
);

impl SubmitTally {
    fn note_open_loop_answer(&mut self, joined: Result<OpenLoopAnswer, tokio::task::JoinError>) {
        match joined {
            Ok((result, resends, intended, sent_at, answered_at)) => {
                self.resends += resends;
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

/// Combines two optional values with `pick` when both are present.
fn combine<T>(ours: Option<T>, theirs: Option<T>, pick: fn(T, T) -> T) -> Option<T> {
    match (ours, theirs) {
        (Some(ours), Some(theirs)) => Some(pick(ours, theirs)),
        (ours, theirs) => ours.or(theirs),
    }
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
