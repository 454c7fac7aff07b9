//! Delivery measured at a herald-sink: its counters, each message's arrival, and the watch
//! that waits until every accepted notification arrived.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::report::SinkSummary;
use super::{Progress, Reasons, SINK_POLL, SINK_TIMEOUT};

/// The counters a herald-sink serves on `GET /stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct SinkStats {
    pub(super) messages: u64,
    pub(super) distinct: u64,
    pub(super) duplicates: u64,
}

/// One message's arrival as a herald-sink serves it on `GET /messages/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub(super) struct SinkArrival {
    /// The `Message-ID` as the sink received it, angle brackets included.
    pub(super) message_id: String,
    /// When the first copy arrived: the sink's wall clock, milliseconds since the Unix epoch.
    pub(super) arrived_at_unix_ms: u64,
    /// Messages with this `Message-ID` (more than 1 after a resend).
    pub(super) copies: u64,
}

impl SinkStats {
    pub(super) fn from_json(body: &[u8]) -> anyhow::Result<Self> {
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
pub(super) struct SinkClient {
    /// As given, for messages.
    pub(super) url: String,
    /// Where the sink's routes start (`http://host:port/` or `http://host:port/prefix/`).
    pub(super) base: reqwest::Url,
    /// The `/stats` URL.
    pub(super) stats_url: reqwest::Url,
    pub(super) http: reqwest::Client,
}

impl SinkClient {
    /// Accepts `http://host:port[/prefix]` or `host:port`.
    pub(super) fn new(url: &str) -> anyhow::Result<Self> {
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
    pub(super) fn message_url(&self, message_id: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["messages", message_id]);
        }
        url
    }

    /// When the message with `message_id` (without angle brackets) arrived, or `None` while
    /// the sink has not seen it (404).
    pub(super) async fn message(&self, message_id: &str) -> anyhow::Result<Option<SinkArrival>> {
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

    pub(super) async fn stats(&self) -> anyhow::Result<SinkStats> {
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
pub(super) struct SinkTally {
    pub(super) last: SinkStats,
    /// When the distinct count was last seen to grow.
    pub(super) last_growth_at: Option<Instant>,
    pub(super) polls: u64,
    pub(super) errors: Reasons,
}

/// Watches the sink's counters from before the first submit until they have grown by the
/// number of accepted notifications, or a deadline passes. The target is only known once
/// the submits are done; until then the watcher only records.
#[derive(Debug)]
pub(super) struct SinkWatch {
    pub(super) url: String,
    pub(super) baseline: SinkStats,
    /// The number to wait for and the deadline, once known. Dropping it stops the watcher.
    pub(super) goal: watch::Sender<Option<(u64, Instant)>>,
    pub(super) task: JoinHandle<SinkTally>,
    /// Distinct Message-IDs above the baseline, for progress lines.
    pub(super) delivered: Arc<AtomicU64>,
}

impl SinkWatch {
    /// Reads the baseline (failing early when the sink is unreachable) and starts watching.
    pub(super) async fn start(client: SinkClient) -> anyhow::Result<Self> {
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
    pub(super) async fn finish(
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

pub(super) async fn watch_sink(
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
