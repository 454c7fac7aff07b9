//! Command-line arguments, parsed with clap's derive API.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use herald_proto::{admin, common};
use uuid::Uuid;

mod bench;

pub(crate) use bench::{BenchArgs, BenchTemplateArgs, ProbeArgs};

/// Talks to Herald's API server over mutual TLS: manages templates, submits notifications,
/// follows their delivery, generates load and handles failed deliveries.
///
/// Connection options go before the subcommand. Certificate paths default to the development
/// certificates in `certs-dev/generated/` (relative to the working directory; create them with
/// `cargo run -p herald-certs-dev`).
#[derive(Debug, Parser)]
#[command(name = "herald-cli", version, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 success, 1 error, 2 bad usage, 3 partially delivered \
(or an incomplete bench, a probe that arrived more than once, or a failure replay/discard in \
which some id was not resolved), 4 failed, 5 timed out.";

/// Shown under every `failures` command's help: AdminService refuses other identities.
const ADMIN_CERTIFICATE: &str = "Needs the admin certificate. Connection options go before \
`failures`: herald-cli --cert certs-dev/generated/admin.pem --key certs-dev/generated/admin.key \
failures list";

/// Where the API server is and which identity to present. These options go before the
/// subcommand (`herald-cli --cert admin.pem --key admin.key template create --key welcome ..`):
/// they are not global because `template` has its own `--key`, the template key.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConnectionArgs {
    /// API server address as `host:port` (or a full `https://` URL).
    #[arg(long, env = "HERALD_SERVER", default_value = "127.0.0.1:50051")]
    pub(crate) server: String,
    /// Name the server certificate must carry.
    #[arg(long, env = "HERALD_SERVER_NAME", default_value = "localhost")]
    pub(crate) server_name: String,
    /// PEM bundle of the CA that signed the server certificate.
    #[arg(long, env = "HERALD_CA", default_value = "certs-dev/generated/ca.pem")]
    pub(crate) ca: PathBuf,
    /// PEM client certificate presented to the server. Its identity needs the `submit` role for
    /// submits, status and reading templates, and the `admin` role for `template create` and
    /// every `failures` command.
    #[arg(
        long,
        env = "HERALD_CERT",
        default_value = "certs-dev/generated/orders.pem"
    )]
    pub(crate) cert: PathBuf,
    /// PEM private key of `--cert`.
    #[arg(
        long,
        env = "HERALD_KEY",
        default_value = "certs-dev/generated/orders.key"
    )]
    pub(crate) key: PathBuf,
    /// Give up connecting to the server after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) connect_timeout: Duration,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create, show and list templates.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Submit one notification and print its id.
    Submit(SubmitArgs),
    /// Submit many independent notifications from a JSON Lines file (a bulk job, a campaign)
    /// through `SubmitBatch`, up to 1,000 per call, and print one result line per item.
    ///
    /// Each line is a notification: `{"template": "welcome", "to": ["ada@example.com"],
    /// "params": {"username": "Ada"}, "idempotency_key": "signup-42"}`; other fields:
    /// `version`, `recipients` (objects with `email`, `user_id`, `phone`, `locale`,
    /// `chat_destination`), `channels`, `priority`, `category`, `metadata`, `send_at`. Prints
    /// `<line> <id>` (plus `duplicate` for a replay) or `<line> error <Code> <message>`. Exits 3
    /// when any item was refused.
    SubmitBatch(SubmitBatchArgs),
    /// Show a notification's status and each of its deliveries.
    Get(GetArgs),
    /// Poll a notification until it reaches a final status, then show it.
    ///
    /// Exits 0 when DELIVERED, 3 when PARTIALLY_DELIVERED, 4 when FAILED or SUPPRESSED and 5 on
    /// timeout.
    Wait(WaitArgs),
    /// Generate load: submit many notifications, then measure how fast they are delivered.
    ///
    /// Makes sure the template exists first (creating it with the admin certificate if it does
    /// not), submits `--count` email notifications, each with a unique idempotency key, from
    /// `--concurrency` tasks sharing `--connections` mTLS connections (`--batch N` per
    /// `SubmitBatch` call), or open-loop at `--rate R` per second, and reports submit
    /// throughput, errors by gRPC code and submit latency. With `--sink URL` it then reads
    /// delivery from a herald-sink's counters; otherwise, unless `--no-wait`, it polls every
    /// accepted notification until it is final and reports end-to-end delivery throughput and
    /// latency from the server's timestamps (notification `created_at` to delivery
    /// `delivered_at`). Exits 3 when any submit failed or any notification was not delivered.
    Bench(BenchArgs),
    /// Time one notification from its submit to a herald-sink: how long a critical email takes
    /// to arrive, for example while a bulk campaign is being delivered.
    ///
    /// Makes sure the template exists (as `bench` does), submits one email notification with
    /// `--priority` (critical by default), reads its delivery id with GetNotification, then asks
    /// the sink for the message `<delivery-id@herald>` every `--poll-interval` until it has
    /// arrived or `--timeout` passed. The latency runs from the moment Submit returned OK to the
    /// sink's arrival time: both are wall-clock readings on the same machine, subtracted once.
    /// Also reports how many other messages reached the sink meanwhile (from its counts before
    /// the submit and after the arrival). Exits 0 when the message arrived once, 3 when it
    /// arrived more than once, 4 when the notification failed or was suppressed, 5 on timeout.
    Probe(ProbeArgs),
    /// Failed deliveries (the failure record): list, inspect, replay and discard. Needs the
    /// admin role.
    ///
    /// The default certificate is a submitter; present the admin identity before the
    /// subcommand: `herald-cli --cert certs-dev/generated/admin.pem
    /// --key certs-dev/generated/admin.key failures list`. Replays and discards are audited
    /// with that identity and the `--reason`.
    #[command(subcommand, after_help = ADMIN_CERTIFICATE)]
    Failures(FailuresCommand),
    /// Queue monitoring: per channel queue and priority what waits, the oldest wait, retries,
    /// recent consumption and mean wait, the broker's counts and the outbox backlog. Needs the
    /// admin role.
    #[command(after_help = ADMIN_CERTIFICATE)]
    Queues(QueuesArgs),
}

/// `queues` options.
#[derive(Debug, clap::Args)]
pub(crate) struct QueuesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Template subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum TemplateCommand {
    /// Create a template with its first version (an email part). Needs the admin role.
    ///
    /// The default certificate is a submitter; present the admin identity before the
    /// subcommand: `herald-cli --cert certs-dev/generated/admin.pem
    /// --key certs-dev/generated/admin.key template create --key welcome ..`.
    Create(TemplateCreateArgs),
    /// Show one template, at its active version unless `--version` is given.
    Get(TemplateGetArgs),
    /// List every template.
    List(TemplateListArgs),
    /// Create the next version of a template (an email part, validated with `--sample`
    /// values); `--activate` makes it the active one. Needs the admin role.
    Update(TemplateUpdateArgs),
    /// Make a version the active one (activating an older one is a rollback). Needs the admin
    /// role.
    Activate(TemplateActivateArgs),
    /// List every version of a template, newest first.
    Versions(TemplateVersionsArgs),
    /// Render a version's email for a locale and parameters without sending anything.
    Preview(TemplatePreviewArgs),
}

/// The email part of a new template version (`template create` and `template update`).
#[derive(Debug, Args)]
pub(crate) struct EmailPartArgs {
    /// Email subject (handlebars, not escaped), e.g. `Welcome {{username}}`.
    #[arg(long)]
    pub(crate) subject: String,
    /// Email HTML body (handlebars, HTML-escaped).
    #[arg(long, default_value = "")]
    pub(crate) html: String,
    /// Email plain-text body (handlebars, not escaped).
    #[arg(long, default_value = "")]
    pub(crate) text: String,
    /// A sample parameter as NAME=VALUE; repeat. Every part must render with them (strict)
    /// before the version is saved; `template create` checks only when any is given.
    #[arg(long = "sample", value_name = "NAME=VALUE", value_parser = parse_key_value)]
    pub(crate) samples: Vec<(String, String)>,
}

/// Arguments of `template update`.
#[derive(Debug, Args)]
pub(crate) struct TemplateUpdateArgs {
    /// The template's key.
    #[arg(long)]
    pub(crate) key: String,
    /// The new version's email part.
    #[command(flatten)]
    pub(crate) email: EmailPartArgs,
    /// Make the new version the active one.
    #[arg(long)]
    pub(crate) activate: bool,
    /// Print the new version as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `template activate`.
#[derive(Debug, Args)]
pub(crate) struct TemplateActivateArgs {
    /// The template's key.
    #[arg(long)]
    pub(crate) key: String,
    /// The version to activate.
    #[arg(long)]
    pub(crate) version: u32,
    /// Print the activated version as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `template versions`.
#[derive(Debug, Args)]
pub(crate) struct TemplateVersionsArgs {
    /// The template's key.
    #[arg(long)]
    pub(crate) key: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `template preview`.
#[derive(Debug, Args)]
pub(crate) struct TemplatePreviewArgs {
    /// The template's key.
    #[arg(long)]
    pub(crate) key: String,
    /// A specific version instead of the active one.
    #[arg(long)]
    pub(crate) version: Option<u32>,
    /// The recipient's locale (`en`, `ko-KR`); the template's default when absent.
    #[arg(long)]
    pub(crate) locale: Option<String>,
    /// A template parameter as NAME=VALUE; repeat.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_key_value)]
    pub(crate) params: Vec<(String, String)>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `template create`.
#[derive(Debug, Args)]
pub(crate) struct TemplateCreateArgs {
    /// Stable key used by submits, e.g. `welcome`.
    #[arg(long)]
    pub(crate) key: String,
    /// Category used by preferences and rate limits, e.g. `onboarding`.
    #[arg(long)]
    pub(crate) category: String,
    /// Free text for people reading the template list.
    #[arg(long, default_value = "")]
    pub(crate) description: String,
    /// The first version's email part.
    #[command(flatten)]
    pub(crate) email: EmailPartArgs,
    /// Print the created template as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `template get`.
#[derive(Debug, Args)]
pub(crate) struct TemplateGetArgs {
    /// The template's key.
    #[arg(long)]
    pub(crate) key: String,
    /// A specific version instead of the active one.
    #[arg(long)]
    pub(crate) version: Option<u32>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `template list`.
#[derive(Debug, Args)]
pub(crate) struct TemplateListArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `submit`.
#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// Key of the template to render.
    #[arg(long)]
    pub(crate) template: String,
    /// Pin a template version instead of using the active one.
    #[arg(long)]
    pub(crate) template_version: Option<u32>,
    /// Recipient email address; repeat for several recipients.
    #[arg(long = "to", value_name = "EMAIL", required = true)]
    pub(crate) to: Vec<String>,
    /// The product's user id, recorded on every recipient's deliveries.
    #[arg(long)]
    pub(crate) user_id: Option<String>,
    /// Every recipient's locale (`en`, `ko`, `ko-KR`); the template's default when absent.
    #[arg(long)]
    pub(crate) locale: Option<String>,
    /// A template parameter as NAME=VALUE (the value is a string); repeat. Overrides the same
    /// name in `--params-json`.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_key_value)]
    pub(crate) params: Vec<(String, String)>,
    /// Template parameters as one JSON object, for numbers, lists and nested values.
    #[arg(long, value_name = "JSON", value_parser = parse_json_object)]
    pub(crate) params_json: Option<serde_json::Map<String, serde_json::Value>>,
    /// Channel to deliver on; repeat for several.
    #[arg(long = "channel", value_enum, default_values_t = [ChannelArg::Email])]
    pub(crate) channels: Vec<ChannelArg>,
    /// How urgent the notification is.
    #[arg(long, value_enum, default_value_t = PriorityArg::Normal)]
    pub(crate) priority: PriorityArg,
    /// Overrides the template's category.
    #[arg(long)]
    pub(crate) category: Option<String>,
    /// Makes retries safe: the same key returns the original notification.
    #[arg(long)]
    pub(crate) idempotency_key: Option<String>,
    /// Caller data kept with the notification, as NAME=VALUE; repeat.
    #[arg(long = "metadata", value_name = "NAME=VALUE", value_parser = parse_key_value)]
    pub(crate) metadata: Vec<(String, String)>,
    /// Print `{"notification_id": .., "duplicate": ..}` instead of the bare id.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `submit-batch`.
#[derive(Debug, Args)]
pub(crate) struct SubmitBatchArgs {
    /// The JSON Lines file, one notification per line; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// Items per `SubmitBatch` call (the server takes at most 1,000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub(crate) per_call: u64,
    /// Print one JSON object per item instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `get`.
#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// The notification id printed by `submit`.
    pub(crate) id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `wait`.
#[derive(Debug, Args)]
pub(crate) struct WaitArgs {
    /// The notification id printed by `submit`.
    pub(crate) id: String,
    /// Give up after this long (humantime: `30s`, `2m`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) timeout: Duration,
    /// Pause between polls.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub(crate) interval: Duration,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `failures` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum FailuresCommand {
    /// List failures, newest first, as a table (or a JSON array with `--json`).
    #[command(after_help = ADMIN_CERTIFICATE)]
    List(FailuresListArgs),
    /// Show one failure with its delivery's full history.
    #[command(after_help = ADMIN_CERTIFICATE)]
    Get(FailuresGetArgs),
    /// Start a fresh attempt cycle (a new retry budget) for each open failure's delivery.
    ///
    /// Prints one line per id with its outcome: done, already replayed, already discarded or
    /// not found. Safe to repeat: a failure already replayed is not replayed twice. With
    /// `--all-open`, lists every open failure first and replays them all. Ids are sent in
    /// batches of 500. Exits 0 when every id was replayed now or before, 3 otherwise.
    #[command(after_help = ADMIN_CERTIFICATE)]
    Replay(FailuresReplayArgs),
    /// Close open failures without sending.
    ///
    /// Prints one line per id with its outcome: done, already replayed, already discarded or
    /// not found. Ids are sent in batches of 500. Exits 0 when every id was discarded now or
    /// before, 3 otherwise.
    #[command(after_help = ADMIN_CERTIFICATE)]
    Discard(FailuresDiscardArgs),
}

/// Arguments of `failures list`.
#[derive(Debug, Args)]
pub(crate) struct FailuresListArgs {
    /// Only failures in this status.
    #[arg(long, value_enum, default_value_t = FailureStatusArg::Open)]
    pub(crate) status: FailureStatusArg,
    /// Only failures on this channel.
    #[arg(long, value_enum)]
    pub(crate) channel: Option<ChannelArg>,
    /// Only failures of this class.
    #[arg(long, value_enum)]
    pub(crate) class: Option<FailureClassArg>,
    /// Only failures of this notification.
    #[arg(long, value_name = "ID")]
    pub(crate) notification: Option<String>,
    /// Only failures recorded at or after this instant (RFC 3339, e.g.
    /// `2025-01-31T12:00:00Z`).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub(crate) since: Option<DateTime<Utc>>,
    /// Show at most this many failures, reading as many pages as needed.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) limit: u32,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `failures get`.
#[derive(Debug, Args)]
pub(crate) struct FailuresGetArgs {
    /// The failure id (a UUID, as printed by `failures list`).
    pub(crate) id: Uuid,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `failures replay`.
#[derive(Debug, Args)]
pub(crate) struct FailuresReplayArgs {
    /// Why, for the audit log (1 to 500 characters).
    #[arg(long, value_parser = parse_reason)]
    pub(crate) reason: String,
    /// Replay every open failure instead of the given ids.
    #[arg(long, conflicts_with = "ids")]
    pub(crate) all_open: bool,
    /// Failure ids (UUIDs, as printed by `failures list`).
    #[arg(value_name = "ID", required_unless_present = "all_open")]
    pub(crate) ids: Vec<Uuid>,
    /// Print a JSON array of `{"id": .., "outcome": ..}` instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `failures discard`.
#[derive(Debug, Args)]
pub(crate) struct FailuresDiscardArgs {
    /// Why, for the audit log (1 to 500 characters).
    #[arg(long, value_parser = parse_reason)]
    pub(crate) reason: String,
    /// Failure ids (UUIDs, as printed by `failures list`).
    #[arg(value_name = "ID", required = true)]
    pub(crate) ids: Vec<Uuid>,
    /// Print a JSON array of `{"id": .., "outcome": ..}` instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A delivery channel as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ChannelArg {
    Email,
    Sms,
    Push,
    InApp,
}

impl From<ChannelArg> for common::Channel {
    fn from(channel: ChannelArg) -> Self {
        match channel {
            ChannelArg::Email => Self::Email,
            ChannelArg::Sms => Self::Sms,
            ChannelArg::Push => Self::Push,
            ChannelArg::InApp => Self::InApp,
        }
    }
}

/// A priority as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PriorityArg {
    Low,
    Normal,
    High,
    Critical,
}

impl From<PriorityArg> for common::Priority {
    fn from(priority: PriorityArg) -> Self {
        match priority {
            PriorityArg::Low => Self::Low,
            PriorityArg::Normal => Self::Normal,
            PriorityArg::High => Self::High,
            PriorityArg::Critical => Self::Critical,
        }
    }
}

/// A failure status filter as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FailureStatusArg {
    /// Not replayed or discarded yet.
    Open,
    /// Sent into a fresh attempt cycle by `failures replay`.
    Replayed,
    /// Closed without sending by `failures discard`.
    Discarded,
    /// Every status.
    Any,
}

impl From<FailureStatusArg> for admin::FailureStatus {
    fn from(status: FailureStatusArg) -> Self {
        match status {
            FailureStatusArg::Open => Self::Open,
            FailureStatusArg::Replayed => Self::Replayed,
            FailureStatusArg::Discarded => Self::Discarded,
            FailureStatusArg::Any => Self::Unspecified,
        }
    }
}

/// A failure class filter as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FailureClassArg {
    /// The provider or the content made success impossible (bad address, render error).
    Permanent,
    /// Retryable failures used up the attempt budget.
    Exhausted,
    /// The provider call's outcome cannot be known and the channel does not resend.
    Unknown,
}

impl From<FailureClassArg> for admin::FailureClass {
    fn from(class: FailureClassArg) -> Self {
        match class {
            FailureClassArg::Permanent => Self::Permanent,
            FailureClassArg::Exhausted => Self::Exhausted,
            FailureClassArg::Unknown => Self::Unknown,
        }
    }
}

fn parse_key_value(argument: &str) -> Result<(String, String), String> {
    match argument.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got `{argument}`")),
    }
}

fn parse_json_object(argument: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str(argument) {
        Ok(serde_json::Value::Object(object)) => Ok(object),
        Ok(_) => Err("expected a JSON object".to_owned()),
        Err(error) => Err(format!("invalid JSON: {error}")),
    }
}

fn parse_rfc3339(argument: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(argument)
        .map(|instant| instant.to_utc())
        .map_err(|error| format!("expected an RFC 3339 instant like 2025-01-31T12:00:00Z: {error}"))
}

/// The audit reason: the server wants 1 to 500 characters, not only whitespace.
fn parse_reason(argument: &str) -> Result<String, String> {
    if argument.trim().is_empty() {
        Err("the reason must not be empty".to_owned())
    } else if argument.chars().count() > 500 {
        Err("the reason must be at most 500 characters".to_owned())
    } else {
        Ok(argument.to_owned())
    }
}

#[cfg(test)]
mod tests;
