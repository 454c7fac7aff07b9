//! `bench`: a load generator. Submits many notifications over a few shared mTLS connections,
//! then polls them until they are final and measures end-to-end delivery from the server's own
//! timestamps, so the polling cadence does not distort the latencies it reports.

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
    SubmitRequest, TemplateRef,
};
use herald_proto::template::template_service_client::TemplateServiceClient;
use herald_proto::template::{
    CreateTemplateRequest, EmailPart, GetTemplateRequest, Template, TemplateContent,
};
use herald_tls::ClientCertificates;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tonic::transport::Channel;

use self::report::{DeliverySummary, Report, SubmitSummary};
use crate::Outcome;
use crate::cli::{BenchArgs, ConnectionArgs};
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

/// Runs the whole bench and prints its report.
pub(crate) async fn run(args: &BenchArgs, connection: &ConnectionArgs) -> anyhow::Result<Outcome> {
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(connect(connection, &connection.certificates()).await?);
    }
    let template = ensure_template(args, connection, &channels).await?;
    let plan = Arc::new(SubmitPlan {
        count: args.count,
        template_key: template.key,
        template_version: template.version,
        parameter_names: template.parameters,
        recipient: args.to.clone(),
        priority: common::Priority::from(args.priority) as i32,
        run_id: run_id.clone(),
    });
    eprintln!(
        "Submitting {} notifications with template `{}` version {} from {} tasks over {} connections (run {run_id}).",
        args.count, plan.template_key, plan.template_version, args.concurrency, args.connections
    );
    let (submit, accepted_ids) = submit_all(args, &channels, plan).await?;
    let delivery = if args.no_wait || accepted_ids.is_empty() {
        None
    } else {
        eprintln!(
            "Waiting up to {} for {} notifications to be delivered.",
            humantime::format_duration(args.wait_timeout),
            accepted_ids.len()
        );
        Some(wait_all(args, &channels, accepted_ids).await?)
    };
    let report = Report {
        run_id,
        template: args.template.clone(),
        count: args.count,
        concurrency: args.concurrency,
        connections: args.connections,
        submit,
        delivery,
    };
    report.print(args.json)?;
    Ok(if report.is_complete() {
        Outcome::Success
    } else {
        Outcome::Partial
    })
}

/// Reads the template, creating it with the admin certificate when it does not exist yet.
/// Fails when it cannot be used for email.
async fn ensure_template(
    args: &BenchArgs,
    connection: &ConnectionArgs,
    channels: &[Channel],
) -> anyhow::Result<Template> {
    let channel = channels.first().context("no connection to the server")?;
    let mut reader = TemplateServiceClient::new(channel.clone());
    let existing = reader
        .get_template(GetTemplateRequest {
            key: args.template.clone(),
            version: None,
        })
        .await;
    let template = match existing {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound => {
            create_template(args, connection, &mut reader).await?
        }
        Err(status) => {
            return Err(rpc_error(&status))
                .with_context(|| format!("reading template `{}`", args.template));
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
    args: &BenchArgs,
    connection: &ConnectionArgs,
    reader: &mut TemplateServiceClient<Channel>,
) -> anyhow::Result<Template> {
    let admin = ClientCertificates {
        ca: connection.ca.clone(),
        cert: args.admin_cert.clone(),
        key: args.admin_key.clone(),
    };
    let mut admin_client = TemplateServiceClient::new(
        connect(connection, &admin)
            .await
            .context("connecting with the admin certificate to create the bench template")?,
    );
    let request = CreateTemplateRequest {
        key: args.template.clone(),
        category: args.category.clone(),
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
            eprintln!("Created template `{}`.", args.template);
            Ok(response.into_inner())
        }
        // Someone else created it between our read and our create; theirs is as good.
        Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(reader
            .get_template(GetTemplateRequest {
                key: args.template.clone(),
                version: None,
            })
            .await
            .map_err(|status| rpc_error(&status))
            .with_context(|| format!("reading template `{}`", args.template))?
            .into_inner()),
        Err(status) => Err(rpc_error(&status))
            .with_context(|| format!("creating template `{}`", args.template)),
    }
}

/// Everything a submit task needs to build the request for one index.
#[derive(Debug)]
struct SubmitPlan {
    count: u64,
    template_key: String,
    template_version: u32,
    parameter_names: Vec<String>,
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
    accepted_ids: Vec<String>,
    duplicates: u64,
    errors: Reasons,
}

/// Submits `plan.count` notifications from `--concurrency` tasks. Returns the summary and the
/// ids of accepted notifications.
async fn submit_all(
    args: &BenchArgs,
    channels: &[Channel],
    plan: Arc<SubmitPlan>,
) -> anyhow::Result<(SubmitSummary, Vec<String>)> {
    let next_index = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let _progress = Progress::spawn("submitted", Arc::clone(&finished), plan.count);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for channel in channels.iter().cycle().take(args.concurrency as usize) {
        tasks.spawn(submit_task(
            SubmitServiceClient::new(channel.clone()),
            Arc::clone(&plan),
            Arc::clone(&next_index),
            Arc::clone(&finished),
        ));
    }
    let mut total = SubmitTally::default();
    let mut panics = 0;
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(tally) => {
                total.latencies_us.extend(tally.latencies_us);
                total.accepted_ids.extend(tally.accepted_ids);
                total.duplicates += tally.duplicates;
                total.errors.merge(tally.errors);
            }
            Err(_) => panics += 1,
        }
    }
    if panics > 0 {
        total.errors.note(
            "TaskPanicked".to_owned(),
            "a submit task panicked; its counts are lost",
        );
    }
    let summary = SubmitSummary {
        accepted: total.accepted_ids.len() as u64,
        duplicates: total.duplicates,
        errors: total.errors,
        elapsed: started.elapsed(),
        latency_us: report::Percentiles::of(&total.latencies_us)?,
    };
    Ok((summary, total.accepted_ids))
}

async fn submit_task(
    mut client: SubmitServiceClient<Channel>,
    plan: Arc<SubmitPlan>,
    next_index: Arc<AtomicU64>,
    finished: Arc<AtomicU64>,
) -> SubmitTally {
    let mut tally = SubmitTally::default();
    loop {
        let index = next_index.fetch_add(1, Ordering::Relaxed);
        if index >= plan.count {
            break;
        }
        let request = plan.request(index);
        let started = Instant::now();
        let result = client.submit(request).await;
        // Only accepted submits are timed: fast rejections would make the latency look better.
        match result {
            Ok(response) => {
                tally.latencies_us.push(micros(started.elapsed()));
                let response = response.into_inner();
                tally.duplicates += u64::from(response.duplicate);
                tally.accepted_ids.push(response.notification_id);
            }
            Err(status) => tally.errors.note_status(&status),
        }
        finished.fetch_add(1, Ordering::Relaxed);
    }
    tally
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
