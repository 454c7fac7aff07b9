//! Arguments of `bench` and `probe`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::PriorityArg;

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// The template to send with.
    #[command(flatten)]
    pub(crate) template: BenchTemplateArgs,
    /// Notifications to submit.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: u64,
    /// Concurrent submit (and later poll) tasks: the closed-loop load. Ignored for submits with
    /// `--rate`, but still the number of poll tasks without `--sink`.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) concurrency: u32,
    /// Open loop: send R submits per second, request i at i/R seconds after the start whatever
    /// the answers, and count each latency from that intended send time (no coordinated
    /// omission). Without it the load is closed-loop: `--concurrency` tasks, each sending its
    /// next submit when the last one is answered.
    #[arg(long, value_name = "R", value_parser = crate::bench::parse_rate)]
    pub(crate) rate: Option<f64>,
    /// With `--rate`: most submits in flight at once. When reached, sends wait (and the wait
    /// counts in their latency, since it is measured from the intended send time).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) max_in_flight: u32,
    /// Closed loop only: each task sends N notifications per `SubmitBatch` call instead of one
    /// `Submit` each; every item's latency is its call's.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) batch: u32,
    /// Another API server of the same deployment, besides the global `--server` (repeatable).
    /// The connections are spread over all of them, and a submit (or `SubmitBatch` call) that
    /// fails in transport (`UNAVAILABLE`, `CANCELLED` or `UNKNOWN`: its server is restarting,
    /// draining or unreachable) is sent again, with the same idempotency keys, to the next
    /// server, each server once. The keys make the resend safe: a submit the first server did
    /// commit comes back as a duplicate with the same id. This is how a client rides out a
    /// rolling restart of the API.
    #[arg(long = "also-server", value_name = "HOST:PORT")]
    pub(crate) also_servers: Vec<String>,
    /// mTLS connections (HTTP/2) the tasks share (rounded up to a multiple of the servers).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) connections: u32,
    /// Recipient of every notification; `{n}` becomes the notification's index, so the
    /// default gives each its own recipient (one recipient would hit the per-user rate limit).
    #[arg(long, value_name = "EMAIL", default_value = "bench+{n}@example.com")]
    pub(crate) to: String,
    /// Priority of every notification.
    #[arg(long, value_enum, default_value_t = PriorityArg::Normal)]
    pub(crate) priority: PriorityArg,
    /// Measure delivery from a herald-sink's counters at this HTTP address (e.g.
    /// `http://127.0.0.1:8025`) instead of polling GetNotification for every notification:
    /// its distinct Message-ID count is read before the first submit and watched (every 50 ms)
    /// until it has grown by the number accepted; duplicates it saw are reported too.
    #[arg(long, value_name = "URL")]
    pub(crate) sink: Option<String>,
    /// Only submit; do not wait for deliveries.
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// Stop waiting for deliveries after this long; the rest are reported as unfinished.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub(crate) wait_timeout: Duration,
    /// Pause between two polls of the same notification (without `--sink`).
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub(crate) poll_interval: Duration,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `probe`.
#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    /// The template to send with.
    #[command(flatten)]
    pub(crate) template: BenchTemplateArgs,
    /// The herald-sink's HTTP address (e.g. `http://127.0.0.1:8025`) that the email worker
    /// delivers into; it answers `GET /messages/<id>` and `GET /stats`.
    #[arg(long, value_name = "URL")]
    pub(crate) sink: String,
    /// Priority of the probe notification.
    #[arg(long, value_enum, default_value_t = PriorityArg::Critical)]
    pub(crate) priority: PriorityArg,
    /// Recipient; `{run}` becomes the probe's run id, so that each probe has its own
    /// recipient (and no per-recipient rate limit from earlier probes).
    #[arg(long, value_name = "EMAIL", default_value = "probe+{run}@example.com")]
    pub(crate) to: String,
    /// Give up when the message has not reached the sink this long after Submit returned.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) timeout: Duration,
    /// Pause between two questions to the sink; the arrival time is the sink's own, so this
    /// only bounds how soon the probe notices.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub(crate) poll_interval: Duration,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The template `bench` and `probe` send with, created (email part) when missing.
#[derive(Debug, Args)]
pub(crate) struct BenchTemplateArgs {
    /// Template key; created with an email part when missing.
    #[arg(long = "template", default_value = "bench")]
    pub(crate) key: String,
    /// Category given to the template if it is created.
    #[arg(long, default_value = "bench")]
    pub(crate) category: String,
    /// Admin certificate used only to create the template when it is missing.
    #[arg(
        long,
        env = "HERALD_ADMIN_CERT",
        default_value = "certs-dev/generated/admin.pem"
    )]
    pub(crate) admin_cert: PathBuf,
    /// Private key of `--admin-cert`.
    #[arg(
        long,
        env = "HERALD_ADMIN_KEY",
        default_value = "certs-dev/generated/admin.key"
    )]
    pub(crate) admin_key: PathBuf,
}
