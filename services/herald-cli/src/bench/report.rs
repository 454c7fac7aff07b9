//! The bench report: latency percentiles from an HDR histogram, rates, and their text and JSON
//! forms, for both loads (closed and open loop) and both ways of measuring delivery (polling
//! every notification, or a sink's counters).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::json;

use super::Reasons;
use crate::cli::BenchArgs;

/// Highest latency the histograms resolve: one hour in microseconds. Longer samples are
/// recorded as one hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Percentiles {
    samples: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
    mean: f64,
}

impl Percentiles {
    /// Percentiles of `samples_us` (microseconds) with three significant figures, `None` when
    /// there are no samples.
    pub(crate) fn of(samples_us: &[u64]) -> anyhow::Result<Option<Self>> {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)
            .context("creating a latency histogram")?;
        for sample in samples_us {
            histogram.saturating_record(*sample);
        }
        if histogram.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            samples: histogram.len(),
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            max: histogram.max(),
            mean: histogram.mean(),
        }))
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "samples": self.samples,
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "max": self.max,
            "mean": self.mean.round(),
        })
    }

    fn to_text(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  max {}  (mean {})",
            milliseconds(self.p50),
            milliseconds(self.p90),
            milliseconds(self.p99),
            milliseconds(self.max),
            milliseconds(self.mean as u64)
        )
    }
}

fn milliseconds(microseconds: u64) -> String {
    format!("{:.2} ms", microseconds as f64 / 1000.0)
}

/// Events per second, `None` when no time passed.
fn per_second(count: u64, elapsed: Duration) -> Option<f64> {
    let seconds = elapsed.as_secs_f64();
    (seconds > 0.0).then(|| count as f64 / seconds)
}

/// Rounds for JSON so reports are not full of float noise.
pub(super) fn rounded(value: f64, decimals: i32) -> f64 {
    let scale = 10_f64.powi(decimals);
    (value * scale).round() / scale
}

/// How the submits were paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Load {
    /// `concurrency` tasks, each sending when its previous submit was answered.
    Closed { concurrency: u32 },
    /// `rate` submits per second on a fixed schedule, at most `max_in_flight` unanswered.
    Open { rate: f64, max_in_flight: u32 },
}

impl Load {
    pub(crate) fn of(args: &BenchArgs) -> Self {
        match args.rate {
            None => Self::Closed {
                concurrency: args.concurrency,
            },
            Some(rate) => Self::Open {
                rate,
                max_in_flight: args.max_in_flight,
            },
        }
    }

    /// For the line announcing the run.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Closed { concurrency } => format!("from {concurrency} tasks (closed loop)"),
            Self::Open {
                rate,
                max_in_flight,
            } => format!("at {rate}/s (open loop, at most {max_in_flight} in flight)"),
        }
    }

    fn to_json(self) -> serde_json::Value {
        match self {
            Self::Closed { concurrency } => json!({
                "mode": "closed",
                "concurrency": concurrency,
                "latency_from": "send",
            }),
            Self::Open {
                rate,
                max_in_flight,
            } => json!({
                "mode": "open",
                "rate": rate,
                "max_in_flight": max_in_flight,
                "latency_from": "intended_send",
            }),
        }
    }
}

/// The submit phase.
#[derive(Debug)]
pub(crate) struct SubmitSummary {
    pub(crate) accepted: u64,
    pub(crate) duplicates: u64,
    /// Submits (or calls) sent again to another server after a transport failure
    /// (`--also-server`).
    pub(crate) resends: u64,
    /// Failed submits by gRPC code.
    pub(crate) errors: Reasons,
    /// From the first send to the last answer.
    pub(crate) elapsed: Duration,
    /// Latency of accepted submits as seen by the client: from the send (closed loop) or from
    /// the intended send time (open loop).
    pub(crate) latency_us: Option<Percentiles>,
    /// Open loop: how late submits went out after their intended send time.
    pub(crate) send_lag_us: Option<Percentiles>,
}

/// The delivery phase, measured by polling every notification.
#[derive(Debug)]
pub(crate) struct DeliverySummary {
    pub(crate) delivered: u64,
    pub(crate) failed: u64,
    pub(crate) partially_delivered: u64,
    /// Not final when `--wait-timeout` passed.
    pub(crate) unfinished: u64,
    /// From the first notification's `created_at` to the last `delivered_at`.
    pub(crate) window: Option<Duration>,
    /// End-to-end latency of delivered notifications (`delivered_at - created_at`).
    pub(crate) latency_us: Option<Percentiles>,
    /// Deliveries that did not succeed, by state.
    pub(crate) undelivered: Reasons,
    pub(crate) polls: u64,
    pub(crate) poll_errors: Reasons,
    pub(crate) elapsed: Duration,
}

/// The delivery phase, measured from a herald-sink's counters (`--sink`).
#[derive(Debug)]
pub(crate) struct SinkSummary {
    pub(crate) url: String,
    /// Growth of the sink's distinct Message-IDs, up to the number accepted.
    pub(crate) delivered: u64,
    /// Growth beyond the number accepted: someone else is sending to the sink.
    pub(crate) unexpected: u64,
    /// Accepted but not seen by the sink when `--wait-timeout` passed.
    pub(crate) unfinished: u64,
    /// Growth of the sink's duplicates: messages whose Message-ID it had seen (resends).
    pub(crate) duplicates: u64,
    /// Growth of the sink's messages.
    pub(crate) messages: u64,
    /// From the first accepted submit to the poll that saw the last growth (polls every 50 ms).
    pub(crate) window: Option<Duration>,
    pub(crate) polls: u64,
    pub(crate) poll_errors: Reasons,
    /// The wait after the last submit.
    pub(crate) elapsed: Duration,
}

/// How delivery was measured, and what it found.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// By polling GetNotification for every notification.
    Polled(DeliverySummary),
    /// From the sink's counters.
    Sink(SinkSummary),
}

/// Everything the bench measured.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) run_id: String,
    pub(crate) template: String,
    pub(crate) count: u64,
    pub(crate) load: Load,
    pub(crate) connections: u32,
    pub(crate) submit: SubmitSummary,
    /// `None` with `--no-wait` or when nothing was accepted.
    pub(crate) delivery: Option<Delivery>,
}

impl Report {
    /// Whether every submit was accepted and, when waited for, every notification delivered
    /// (and, measured at the sink, delivered exactly once).
    pub(crate) fn is_complete(&self) -> bool {
        let delivered = match &self.delivery {
            None => true,
            Some(Delivery::Polled(delivery)) => delivery.delivered == self.submit.accepted,
            Some(Delivery::Sink(sink)) => {
                sink.delivered == self.submit.accepted && sink.duplicates == 0
            }
        };
        self.submit.errors.total() == 0 && self.submit.accepted == self.count && delivered
    }

    /// Prints the report to stdout as text or as one JSON object.
    pub(crate) fn print(&self, json: bool) -> anyhow::Result<()> {
        print_report(json, || self.to_json(), || self.to_text())
    }

    pub(super) fn to_json(&self) -> serde_json::Value {
        let submit = &self.submit;
        let delivery = self.delivery.as_ref().map(|delivery| match delivery {
            Delivery::Polled(delivery) => json!({
                "source": "poll",
                "delivered": delivery.delivered,
                "failed": delivery.failed,
                "partially_delivered": delivery.partially_delivered,
                "unfinished": delivery.unfinished,
                "window_s": delivery.window.map(|window| rounded(window.as_secs_f64(), 3)),
                "delivered_per_s": delivery
                    .window
                    .and_then(|window| per_second(delivery.delivered, window))
                    .map(|rate| rounded(rate, 1)),
                "latency_us": delivery.latency_us.as_ref().map(Percentiles::to_json),
                "undelivered": reasons_json(&delivery.undelivered),
                "polls": delivery.polls,
                "poll_errors": reasons_json(&delivery.poll_errors),
                "elapsed_s": rounded(delivery.elapsed.as_secs_f64(), 3),
            }),
            Delivery::Sink(sink) => json!({
                "source": "sink",
                "sink": sink.url,
                "delivered": sink.delivered,
                "unfinished": sink.unfinished,
                "duplicates": sink.duplicates,
                "unexpected": sink.unexpected,
                "messages": sink.messages,
                "window_s": sink.window.map(|window| rounded(window.as_secs_f64(), 3)),
                "delivered_per_s": sink
                    .window
                    .and_then(|window| per_second(sink.delivered, window))
                    .map(|rate| rounded(rate, 1)),
                "polls": sink.polls,
                "poll_errors": reasons_json(&sink.poll_errors),
                "elapsed_s": rounded(sink.elapsed.as_secs_f64(), 3),
            }),
        });
        let concurrency = match self.load {
            Load::Closed { concurrency } => Some(concurrency),
            Load::Open { .. } => None,
        };
        json!({
            "run_id": self.run_id,
            "template": self.template,
            "count": self.count,
            "load": self.load.to_json(),
            "concurrency": concurrency,
            "connections": self.connections,
            "submit": {
                "accepted": submit.accepted,
                "duplicates": submit.duplicates,
                "resent_to_another_server": submit.resends,
                "failed": submit.errors.total(),
                "errors": reasons_json(&submit.errors),
                "elapsed_s": rounded(submit.elapsed.as_secs_f64(), 3),
                "accepted_per_s": per_second(submit.accepted, submit.elapsed).map(|rate| rounded(rate, 1)),
                "latency_us": submit.latency_us.as_ref().map(Percentiles::to_json),
                "send_lag_us": submit.send_lag_us.as_ref().map(Percentiles::to_json),
            },
            "delivery": delivery,
        })
    }

    fn to_text(&self) -> String {
        let submit = &self.submit;
        let mut text = String::new();
        // Writing to a String cannot fail, so the results are ignored.
        let _ = writeln!(
            text,
            "Bench run {}: {} notifications with template `{}`, {} over {} connections",
            self.run_id,
            self.count,
            self.template,
            self.load.describe(),
            self.connections
        );
        let latency_from = match self.load {
            Load::Closed { .. } => "from each send",
            Load::Open { .. } => "from each intended send time",
        };
        let _ = writeln!(text, "\nSubmit");
        let _ = writeln!(
            text,
            "  accepted     {} of {} in {:.3}s ({}), {} duplicates",
            submit.accepted,
            self.count,
            submit.elapsed.as_secs_f64(),
            rate_text(per_second(submit.accepted, submit.elapsed)),
            submit.duplicates
        );
        if submit.resends > 0 {
            let _ = writeln!(
                text,
                "  resent       {} to another server after a transport failure",
                submit.resends
            );
        }
        let _ = writeln!(text, "  errors       {}", reasons_text(&submit.errors));
        if let Some(latency) = &submit.latency_us {
            let _ = writeln!(
                text,
                "  latency      {} ({latency_from})",
                latency.to_text()
            );
        }
        if let Some(lag) = &submit.send_lag_us {
            let _ = writeln!(
                text,
                "  send lag     {} (behind the schedule)",
                lag.to_text()
            );
        }
        match &self.delivery {
            None => {}
            Some(Delivery::Polled(delivery)) => self.polled_text(&mut text, delivery),
            Some(Delivery::Sink(sink)) => self.sink_text(&mut text, sink),
        }
        text
    }

    fn polled_text(&self, text: &mut String, delivery: &DeliverySummary) {
        let _ = writeln!(
            text,
            "\nDelivery (end to end: notification created_at to delivery delivered_at)"
        );
        let _ = writeln!(
            text,
            "  delivered    {} of {} ({} failed, {} partially delivered, {} unfinished)",
            delivery.delivered,
            self.submit.accepted,
            delivery.failed,
            delivery.partially_delivered,
            delivery.unfinished
        );
        if let Some(window) = delivery.window {
            let _ = writeln!(
                text,
                "  throughput   {} over {:.3}s (first created_at to last delivered_at)",
                rate_text(per_second(delivery.delivered, window)),
                window.as_secs_f64()
            );
        }
        if let Some(latency) = &delivery.latency_us {
            let _ = writeln!(text, "  latency      {}", latency.to_text());
        }
        if delivery.undelivered.total() > 0 {
            let _ = writeln!(
                text,
                "  undelivered  {}",
                reasons_text(&delivery.undelivered)
            );
        }
        let _ = writeln!(
            text,
            "  polling      {} GetNotification calls in {:.3}s, errors: {}",
            delivery.polls,
            delivery.elapsed.as_secs_f64(),
            reasons_text(&delivery.poll_errors)
        );
    }

    fn sink_text(&self, text: &mut String, sink: &SinkSummary) {
        let _ = writeln!(
            text,
            "\nDelivery (distinct Message-IDs at the sink {})",
            sink.url
        );
        let _ = writeln!(
            text,
            "  delivered    {} of {} ({} unfinished), {} duplicates, {} unexpected",
            sink.delivered, self.submit.accepted, sink.unfinished, sink.duplicates, sink.unexpected
        );
        if let Some(window) = sink.window {
            let _ = writeln!(
                text,
                "  throughput   {} over {:.3}s (first accepted submit to the last arrival, polled every 50 ms)",
                rate_text(per_second(sink.delivered, window)),
                window.as_secs_f64()
            );
        }
        let _ = writeln!(
            text,
            "  watching     {} reads of /stats, {:.3}s after the last submit, errors: {}",
            sink.polls,
            sink.elapsed.as_secs_f64(),
            reasons_text(&sink.poll_errors)
        );
    }
}

fn rate_text(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-/s".to_owned(), |rate| format!("{rate:.1}/s"))
}

pub(super) fn reasons_json(reasons: &Reasons) -> serde_json::Value {
    reasons
        .iter()
        .map(|(name, reason)| {
            (
                name.clone(),
                json!({ "count": reason.count, "example": reason.example }),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

pub(super) fn reasons_text(reasons: &Reasons) -> String {
    if reasons.total() == 0 {
        return "none".to_owned();
    }
    reasons
        .iter()
        .map(|(name, reason)| format!("{name} x{} (e.g. {:?})", reason.count, reason.example))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Prints a report to stdout: one JSON object with `json`, else its text.
pub(super) fn print_report(
    json: bool,
    to_json: impl FnOnce() -> serde_json::Value,
    to_text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string(&to_json()).context("encoding JSON")?
        );
    } else {
        print!("{}", to_text());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
