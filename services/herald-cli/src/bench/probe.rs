//! `probe`: times one notification from its submit to a herald-sink. It submits one email
//! notification (critical by default), reads its delivery id, and asks the sink every few
//! milliseconds for the message `<delivery-id@herald>` (the `Message-ID` the email worker sets).
//!
//! The latency is the sink's arrival time minus the moment Submit returned OK. Both are
//! wall-clock readings (milliseconds since the Unix epoch) on the same machine, subtracted once;
//! the polling cadence only decides how soon the probe notices, not what it reports.
//! `scripts/bench` runs it while 10,000 bulk deliveries are being consumed, to measure that a
//! critical notification overtakes them.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use herald_proto::common;
use herald_proto::submit::submit_service_client::SubmitServiceClient;
use herald_proto::submit::{
    GetNotificationRequest, Notification, NotificationStatus, SubmitRequest,
};
use herald_proto::template::Template;
use serde_json::json;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::report::{reasons_json, reasons_text, rounded};
use super::sink::{SinkArrival, SinkClient, SinkStats};
use super::{Reasons, SubmitPlan};
use crate::Outcome;
use crate::cli::{ConnectionArgs, ProbeArgs};
use crate::client::{connect, rpc_error};
use crate::{display, status};

/// How often, while waiting at the sink, the notification's status is read: a delivery that
/// failed or was suppressed never arrives, and the probe says so instead of timing out.
const STATUS_EVERY: Duration = Duration::from_millis(500);

/// Runs the probe and prints its report.
pub(crate) async fn run(args: &ProbeArgs, connection: &ConnectionArgs) -> anyhow::Result<Outcome> {
    let sink = SinkClient::new(&args.sink)?;
    // An unreachable sink fails the probe before anything is submitted.
    sink.stats()
        .await
        .with_context(|| format!("reading the sink's counts at {}", sink.url))?;
    let channel = connect(connection, &connection.certificates()).await?;
    let template =
        super::ensure_template(&args.template, connection, std::slice::from_ref(&channel)).await?;
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let probe = Probe {
        request: probe_request(&template, args, &run_id),
        run_id,
        timeout: args.timeout,
        poll_interval: args.poll_interval,
    };
    let report = probe_once(SubmitServiceClient::new(channel), &sink, probe).await?;
    report.print(args.json)?;
    Ok(report.outcome())
}

/// The one submit of a probe, with its own idempotency key and recipient (`{run}` in `--to`
/// becomes the run id). Parameters are filled as the bench fills them.
fn probe_request(template: &Template, args: &ProbeArgs, run_id: &str) -> SubmitRequest {
    let plan = SubmitPlan {
        count: 1,
        template_key: template.key.clone(),
        template_version: template.version,
        parameter_names: template.parameters.clone(),
        recipient: args.to.replace("{run}", run_id),
        priority: common::Priority::from(args.priority) as i32,
        run_id: run_id.to_owned(),
    };
    SubmitRequest {
        idempotency_key: format!("probe-{run_id}"),
        metadata: [("probe_run".to_owned(), run_id.to_owned())].into(),
        ..plan.request(0)
    }
}

/// What to submit and how long to wait for it.
#[derive(Debug)]
struct Probe {
    run_id: String,
    request: SubmitRequest,
    timeout: Duration,
    poll_interval: Duration,
}

/// Submits the probe's notification and waits for it at the sink.
async fn probe_once(
    mut client: SubmitServiceClient<Channel>,
    sink: &SinkClient,
    probe: Probe,
) -> anyhow::Result<ProbeReport> {
    let sink_before = sink
        .stats()
        .await
        .with_context(|| format!("reading the sink's counts at {}", sink.url))?;
    let sent_at = Instant::now();
    let response = client
        .submit(probe.request.clone())
        .await
        .map_err(|status| rpc_error(&status))
        .context("submitting the probe notification")?
        .into_inner();
    // Taken first thing after the OK: this is where the latency starts.
    let submitted_at_unix_ms = unix_ms(SystemTime::now());
    let accepted_at = Instant::now();
    let deadline = accepted_at + probe.timeout;
    let notification_id = response.notification_id;
    let delivery_id =
        email_delivery_id(&mut client, &notification_id, deadline, probe.poll_interval).await?;
    let message_id = format!("{delivery_id}@herald");
    let waited = wait_at_sink(
        &mut client,
        sink,
        &notification_id,
        &message_id,
        deadline,
        probe.poll_interval,
    )
    .await;
    let waited_for = accepted_at.elapsed();
    // Read right after the arrival was seen: what else reached the sink in the meantime.
    let sink_after = match &waited.arrival {
        Some(_) => sink.stats().await.ok(),
        None => None,
    };
    let template = probe.request.template.unwrap_or_default();
    Ok(ProbeReport {
        run_id: probe.run_id,
        priority: display::priority(probe.request.priority),
        template: template.key,
        template_version: template.version,
        notification_id,
        delivery_id,
        submit_latency: accepted_at.saturating_duration_since(sent_at),
        submitted_at_unix_ms,
        timeout: probe.timeout,
        arrival: waited.arrival,
        stopped: waited.stopped,
        polls: waited.polls,
        poll_errors: waited.poll_errors,
        waited_for,
        sink_url: sink.url.clone(),
        sink_before,
        sink_after,
    })
}

/// The id of the notification's email delivery, asked for until it is there or `deadline`
/// (deliveries are written with the notification, so normally at once).
async fn email_delivery_id(
    client: &mut SubmitServiceClient<Channel>,
    notification_id: &str,
    deadline: Instant,
    poll_interval: Duration,
) -> anyhow::Result<String> {
    loop {
        let answer = client
            .get_notification(GetNotificationRequest {
                notification_id: notification_id.to_owned(),
            })
            .await;
        let problem = match answer {
            Ok(response) => match response.into_inner().notification {
                Some(notification) => match email_delivery(&notification) {
                    Some(id) => return Ok(id),
                    None if status::is_final(notification.status) => anyhow::bail!(
                        "notification {notification_id} is {} without an email delivery",
                        display::notification_status(notification.status)
                    ),
                    None => anyhow::anyhow!("it has no email delivery yet"),
                },
                None => anyhow::anyhow!("the server answered without a notification"),
            },
            Err(status) => rpc_error(&status),
        };
        if Instant::now() + poll_interval >= deadline {
            return Err(problem).with_context(|| {
                format!("reading the delivery id of notification {notification_id}")
            });
        }
        tokio::time::sleep(poll_interval).await;
    }
}

/// The id of the first email delivery with an id.
fn email_delivery(notification: &Notification) -> Option<String> {
    notification
        .deliveries
        .iter()
        .find(|delivery| {
            delivery.channel == common::Channel::Email as i32 && !delivery.id.is_empty()
        })
        .map(|delivery| delivery.id.clone())
}

/// What waiting at the sink found.
#[derive(Debug, Default)]
struct Waited {
    arrival: Option<SinkArrival>,
    /// Why the wait ended before the deadline without an arrival.
    stopped: Option<String>,
    polls: u64,
    poll_errors: Reasons,
}

/// Asks the sink for `message_id` every `poll_interval` until it is there or `deadline`.
/// Every [`STATUS_EVERY`] it also reads the notification: one that ended without being
/// delivered will never arrive, and one delivered elsewhere (the worker's SMTP server is not
/// this sink) will not either.
async fn wait_at_sink(
    client: &mut SubmitServiceClient<Channel>,
    sink: &SinkClient,
    notification_id: &str,
    message_id: &str,
    deadline: Instant,
    poll_interval: Duration,
) -> Waited {
    let mut waited = Waited::default();
    let mut ticker = tokio::time::interval(poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_status_at = Instant::now() + STATUS_EVERY;
    // Set once the server says DELIVERED: the sink gets one more look before the probe gives up.
    let mut delivered_elsewhere = false;
    loop {
        ticker.tick().await;
        waited.polls += 1;
        match sink.message(message_id).await {
            Ok(Some(arrival)) => {
                waited.arrival = Some(arrival);
                return waited;
            }
            Ok(None) => {}
            Err(error) => waited
                .poll_errors
                .note("SinkUnreachable".to_owned(), &format!("{error:#}")),
        }
        if delivered_elsewhere {
            waited.stopped = Some(format!(
                "notification {notification_id} is DELIVERED, but the sink has no message \
                 <{message_id}>: is the email worker sending to another SMTP server?"
            ));
            return waited;
        }
        let now = Instant::now();
        if now >= deadline {
            return waited;
        }
        if now >= next_status_at {
            next_status_at = now + STATUS_EVERY;
            let answer = client
                .get_notification(GetNotificationRequest {
                    notification_id: notification_id.to_owned(),
                })
                .await;
            if let Ok(Some(notification)) =
                answer.map(|response| response.into_inner().notification)
            {
                if notification.status == NotificationStatus::Delivered as i32 {
                    delivered_elsewhere = true;
                } else if status::is_final(notification.status) {
                    waited.stopped = Some(undelivered(&notification));
                    return waited;
                }
            }
        }
    }
}

/// Why a final notification was not delivered, from its status and its deliveries' errors.
fn undelivered(notification: &Notification) -> String {
    let mut text = format!(
        "notification {} is {}",
        notification.id,
        display::notification_status(notification.status)
    );
    for delivery in &notification.deliveries {
        let _ = write!(
            text,
            "; delivery {} {}",
            delivery.id,
            display::delivery_state(delivery.state)
        );
        if !delivery.last_error.is_empty() {
            let _ = write!(text, " ({})", delivery.last_error);
        }
    }
    text
}

/// Milliseconds since the Unix epoch; 0 for a clock set before 1970.
fn unix_ms(instant: SystemTime) -> u64 {
    instant.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// `later - earlier` in milliseconds, negative when `later` is earlier.
fn difference_ms(later: u64, earlier: u64) -> i64 {
    let difference = i128::from(later) - i128::from(earlier);
    i64::try_from(difference).unwrap_or(if difference < 0 { i64::MIN } else { i64::MAX })
}

/// Everything one probe measured.
#[derive(Debug)]
struct ProbeReport {
    run_id: String,
    /// `CRITICAL`, `LOW`, ..
    priority: String,
    template: String,
    template_version: Option<u32>,
    notification_id: String,
    delivery_id: String,
    /// From sending Submit to its OK.
    submit_latency: Duration,
    /// The client's wall clock when Submit returned OK.
    submitted_at_unix_ms: u64,
    timeout: Duration,
    /// `None` when the message had not arrived by the timeout (or the wait was `stopped`).
    arrival: Option<SinkArrival>,
    stopped: Option<String>,
    /// Questions asked of the sink.
    polls: u64,
    poll_errors: Reasons,
    /// From Submit's OK to the poll that found the message (or the end of the wait).
    waited_for: Duration,
    sink_url: String,
    /// The sink's counts just before the submit.
    sink_before: SinkStats,
    /// The sink's counts just after the arrival was seen.
    sink_after: Option<SinkStats>,
}

impl ProbeReport {
    /// From Submit's OK to the sink's arrival time: two wall-clock readings on one machine.
    /// Both are whole milliseconds, so the figure is good to about one millisecond.
    fn latency_ms(&self) -> Option<i64> {
        self.arrival
            .as_ref()
            .map(|arrival| difference_ms(arrival.arrived_at_unix_ms, self.submitted_at_unix_ms))
    }

    /// Other distinct messages that reached the sink between just before the submit and just
    /// after the probe's message was seen there (so up to one poll interval too many).
    fn others_meanwhile(&self) -> Option<u64> {
        self.sink_after.map(|after| {
            after
                .distinct
                .saturating_sub(self.sink_before.distinct)
                .saturating_sub(1)
        })
    }

    fn message_id(&self) -> String {
        format!("<{}@herald>", self.delivery_id)
    }

    /// Arrived once: success; arrived more than once: partial (a resend); ended undelivered:
    /// failed; still missing at the timeout: timed out.
    fn outcome(&self) -> Outcome {
        match (&self.arrival, &self.stopped) {
            (Some(arrival), _) if arrival.copies > 1 => Outcome::Partial,
            (Some(_), _) => Outcome::Success,
            (None, Some(_)) => Outcome::Failed,
            (None, None) => Outcome::TimedOut,
        }
    }

    fn print(&self, json: bool) -> anyhow::Result<()> {
        super::report::print_report(json, || self.to_json(), || self.to_text())
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "run_id": self.run_id,
            "priority": self.priority,
            "template": { "key": self.template, "version": self.template_version },
            "notification_id": self.notification_id,
            "delivery_id": self.delivery_id,
            "message_id": self.message_id(),
            "submit_latency_us": super::micros(self.submit_latency),
            "submitted_at_unix_ms": self.submitted_at_unix_ms,
            "arrived": self.arrival.is_some(),
            "arrived_at_unix_ms": self.arrival.as_ref().map(|arrival| arrival.arrived_at_unix_ms),
            "latency_ms": self.latency_ms(),
            "copies": self.arrival.as_ref().map_or(0, |arrival| arrival.copies),
            "stopped": self.stopped,
            "timeout_s": rounded(self.timeout.as_secs_f64(), 3),
            "waited_s": rounded(self.waited_for.as_secs_f64(), 3),
            "polls": self.polls,
            "poll_errors": reasons_json(&self.poll_errors),
            "sink": {
                "url": self.sink_url,
                "distinct_before": self.sink_before.distinct,
                "distinct_after": self.sink_after.map(|after| after.distinct),
                "others_arrived_meanwhile": self.others_meanwhile(),
            },
        })
    }

    fn to_text(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail, so the results are ignored.
        let version = self
            .template_version
            .map_or_else(String::new, |version| format!(" version {version}"));
        let _ = writeln!(
            text,
            "Probe run {}: one {} email notification with template `{}`{version}",
            self.run_id, self.priority, self.template
        );
        let _ = writeln!(
            text,
            "  notification  {} (delivery {}, Message-ID {})",
            self.notification_id,
            self.delivery_id,
            self.message_id()
        );
        let _ = writeln!(
            text,
            "  submit        {:.2} ms from send to OK",
            self.submit_latency.as_secs_f64() * 1000.0
        );
        match (&self.arrival, self.latency_ms()) {
            (Some(arrival), Some(latency)) => {
                let _ = writeln!(
                    text,
                    "  to the sink   {latency} ms after Submit returned OK (the sink's arrival \
                     time minus the client's, one machine's wall clock), {} {}",
                    arrival.copies,
                    if arrival.copies == 1 {
                        "copy"
                    } else {
                        "copies"
                    }
                );
            }
            _ => {
                let why = self.stopped.clone().unwrap_or_else(|| {
                    format!(
                        "not there {} after Submit returned OK",
                        humantime::format_duration(self.timeout)
                    )
                });
                let _ = writeln!(text, "  to the sink   not arrived: {why}");
            }
        }
        if let (Some(after), Some(others)) = (self.sink_after, self.others_meanwhile()) {
            let _ = writeln!(
                text,
                "  meanwhile     {others} other messages reached the sink (distinct Message-IDs \
                 {} before the submit, {} after the arrival)",
                self.sink_before.distinct, after.distinct
            );
        }
        let _ = writeln!(
            text,
            "  sink polls    {} in {:.3}s, errors: {}",
            self.polls,
            self.waited_for.as_secs_f64(),
            reasons_text(&self.poll_errors)
        );
        text
    }
}

#[cfg(test)]
mod tests;
