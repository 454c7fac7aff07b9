//! `failures list`, `get`, `replay` and `discard`: AdminService's record of failed deliveries.

use std::collections::HashMap;

use anyhow::Context as _;
use herald_proto::admin::admin_service_client::AdminServiceClient;
use herald_proto::admin::{
    Attempt, DiscardFailuresRequest, Failure, FailureClass, FailureStatus, GetFailureRequest,
    GetFailureResponse, ListFailuresRequest, ReplayFailuresRequest, ResolveOutcome,
};
use herald_proto::{common, conversions};
use tonic::transport::Channel;

use crate::Outcome;
use crate::cli::{
    ConnectionArgs, FailuresCommand, FailuresDiscardArgs, FailuresGetArgs, FailuresListArgs,
    FailuresReplayArgs,
};
use crate::client::{connect, rpc_error};
use crate::display;

/// The largest page ListFailures serves.
const MAX_PAGE_SIZE: u32 = 500;
/// The most ids one ReplayFailures or DiscardFailures call takes.
const MAX_IDS_PER_CALL: usize = 500;
/// Characters of the error shown in the `failures list` table.
const ERROR_WIDTH: usize = 60;

/// Runs one `failures` subcommand.
pub(crate) async fn run(
    command: &FailuresCommand,
    connection: &ConnectionArgs,
) -> anyhow::Result<Outcome> {
    let mut client =
        AdminServiceClient::new(connect(connection, &connection.certificates()).await?);
    match command {
        FailuresCommand::List(args) => list(&mut client, args).await,
        FailuresCommand::Get(args) => get(&mut client, args).await,
        FailuresCommand::Replay(args) => replay(&mut client, args).await,
        FailuresCommand::Discard(args) => discard(&mut client, args).await,
    }
}

async fn list(
    client: &mut AdminServiceClient<Channel>,
    args: &FailuresListArgs,
) -> anyhow::Result<Outcome> {
    let (failures, more) = fetch(client, &list_filter(args), args.limit as usize).await?;
    if args.json {
        let list: Vec<serde_json::Value> = failures.iter().map(failure_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).context("encoding JSON")?
        );
    } else if failures.is_empty() {
        eprintln!("No failures match.");
    } else {
        print!("{}", to_table(&failures));
    }
    if more {
        eprintln!(
            "Showing the newest {}; more failures match (raise --limit to see them).",
            failures.len()
        );
    }
    Ok(Outcome::Success)
}

/// The ListFailures request for the filters of `failures list`, without paging.
fn list_filter(args: &FailuresListArgs) -> ListFailuresRequest {
    ListFailuresRequest {
        status: FailureStatus::from(args.status).into(),
        channel: args
            .channel
            .map_or(0, |channel| common::Channel::from(channel).into()),
        class: args
            .class
            .map_or(0, |class| FailureClass::from(class).into()),
        notification_id: args.notification.clone().unwrap_or_default(),
        since: args.since.map(conversions::timestamp),
        page_size: 0,
        page_token: String::new(),
    }
}

/// Up to `limit` failures matching `filter`, newest first, reading pages until there are
/// enough or no more, and whether more match beyond them.
async fn fetch(
    client: &mut AdminServiceClient<Channel>,
    filter: &ListFailuresRequest,
    limit: usize,
) -> anyhow::Result<(Vec<Failure>, bool)> {
    let mut failures = Vec::new();
    let mut page_token = String::new();
    loop {
        let remaining = limit.saturating_sub(failures.len());
        let page_size = u32::try_from(remaining)
            .unwrap_or(MAX_PAGE_SIZE)
            .min(MAX_PAGE_SIZE);
        let page = client
            .list_failures(ListFailuresRequest {
                page_size,
                page_token,
                ..filter.clone()
            })
            .await
            .map_err(|status| rpc_error(&status))
            .context("listing failures")?
            .into_inner();
        // An empty page with a token would otherwise loop forever.
        let last_page = page.next_page_token.is_empty() || page.failures.is_empty();
        failures.extend(page.failures);
        if failures.len() >= limit {
            failures.truncate(limit);
            return Ok((failures, !last_page));
        }
        if last_page {
            return Ok((failures, false));
        }
        page_token = page.next_page_token;
    }
}

async fn get(
    client: &mut AdminServiceClient<Channel>,
    args: &FailuresGetArgs,
) -> anyhow::Result<Outcome> {
    let response = client
        .get_failure(GetFailureRequest {
            id: args.id.to_string(),
        })
        .await
        .map_err(|status| rpc_error(&status))
        .with_context(|| format!("reading failure {}", args.id))?
        .into_inner();
    let failure = response
        .failure
        .as_ref()
        .context("the server answered without a failure")?;
    if args.json {
        let json = serde_json::json!({
            "failure": failure_json(failure),
            "history": response.history.iter().map(attempt_json).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&json).context("encoding JSON")?
        );
    } else {
        print!("{}", to_text(&response));
    }
    Ok(Outcome::Success)
}

async fn replay(
    client: &mut AdminServiceClient<Channel>,
    args: &FailuresReplayArgs,
) -> anyhow::Result<Outcome> {
    let ids = if args.all_open {
        let ids = open_failure_ids(client).await?;
        if ids.is_empty() {
            eprintln!("No open failures.");
        } else {
            eprintln!(
                "Replaying {} open failure{} in batches of {MAX_IDS_PER_CALL}.",
                ids.len(),
                plural(ids.len())
            );
        }
        ids
    } else {
        args.ids.iter().map(ToString::to_string).collect()
    };
    resolve_and_print(client, Action::Replay, &ids, &args.reason, args.json).await
}

async fn discard(
    client: &mut AdminServiceClient<Channel>,
    args: &FailuresDiscardArgs,
) -> anyhow::Result<Outcome> {
    let ids: Vec<String> = args.ids.iter().map(ToString::to_string).collect();
    resolve_and_print(client, Action::Discard, &ids, &args.reason, args.json).await
}

/// The id of every open failure, newest first.
async fn open_failure_ids(client: &mut AdminServiceClient<Channel>) -> anyhow::Result<Vec<String>> {
    let filter = ListFailuresRequest {
        status: FailureStatus::Open.into(),
        ..ListFailuresRequest::default()
    };
    let (failures, _) = fetch(client, &filter, usize::MAX)
        .await
        .context("looking for open failures")?;
    Ok(failures.into_iter().map(|failure| failure.id).collect())
}

/// Replays or discards `ids`, printing each batch's lines as soon as it is answered (or the
/// JSON array at the end), then a summary on stderr.
async fn resolve_and_print(
    client: &mut AdminServiceClient<Channel>,
    action: Action,
    ids: &[String],
    reason: &str,
    json: bool,
) -> anyhow::Result<Outcome> {
    let resolved = resolve(client, action, ids, reason, |batch| {
        if !json {
            print!("{}", to_lines(batch));
        }
    })
    .await?;
    if json {
        let list: Vec<serde_json::Value> = resolved.iter().map(Resolved::to_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).context("encoding JSON")?
        );
    }
    if !resolved.is_empty() {
        eprintln!("{}", summary(&resolved));
    }
    Ok(action.outcome(&resolved))
}

/// Replays or discards `ids` in calls of at most [`MAX_IDS_PER_CALL`], handing each call's
/// results to `on_batch` as they arrive.
async fn resolve(
    client: &mut AdminServiceClient<Channel>,
    action: Action,
    ids: &[String],
    reason: &str,
    mut on_batch: impl FnMut(&[Resolved]),
) -> anyhow::Result<Vec<Resolved>> {
    let mut resolved = Vec::with_capacity(ids.len());
    for batch in ids.chunks(MAX_IDS_PER_CALL) {
        let answer = match action {
            Action::Replay => {
                client
                    .replay_failures(ReplayFailuresRequest {
                        ids: batch.to_vec(),
                        reason: reason.to_owned(),
                    })
                    .await
            }
            Action::Discard => {
                client
                    .discard_failures(DiscardFailuresRequest {
                        ids: batch.to_vec(),
                        reason: reason.to_owned(),
                    })
                    .await
            }
        }
        .map_err(|status| rpc_error(&status))
        .with_context(|| {
            let verb = action.verb();
            if resolved.is_empty() {
                format!("{verb} failures")
            } else {
                format!(
                    "{verb} failures {} to {} of {} (the {} before were answered)",
                    resolved.len() + 1,
                    resolved.len() + batch.len(),
                    ids.len(),
                    resolved.len()
                )
            }
        })?
        .into_inner();
        // Results come in request order; look an id up by name only when they do not line up.
        let by_id: HashMap<&str, i32> = answer
            .results
            .iter()
            .map(|result| (result.id.as_str(), result.outcome))
            .collect();
        let batch: Vec<Resolved> = batch
            .iter()
            .enumerate()
            .map(|(index, id)| Resolved {
                id: id.clone(),
                outcome: answer
                    .results
                    .get(index)
                    .filter(|result| result.id == *id)
                    .map(|result| result.outcome)
                    .or_else(|| by_id.get(id.as_str()).copied()),
            })
            .collect();
        on_batch(&batch);
        resolved.extend(batch);
    }
    Ok(resolved)
}

/// What `failures replay` and `failures discard` ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Replay,
    Discard,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Self::Replay => "replaying",
            Self::Discard => "discarding",
        }
    }

    /// Whether the failure is now in the requested state: resolved by this call or before.
    fn settled(self, outcome: Option<i32>) -> bool {
        let Some(outcome) = outcome.and_then(|number| ResolveOutcome::try_from(number).ok()) else {
            return false;
        };
        match (self, outcome) {
            (_, ResolveOutcome::Done)
            | (Self::Replay, ResolveOutcome::AlreadyReplayed)
            | (Self::Discard, ResolveOutcome::AlreadyDiscarded) => true,
            (Self::Replay, ResolveOutcome::AlreadyDiscarded)
            | (Self::Discard, ResolveOutcome::AlreadyReplayed)
            | (
                _,
                ResolveOutcome::NotFound
                | ResolveOutcome::PersonalDataCleared
                | ResolveOutcome::Unspecified,
            ) => false,
        }
    }

    /// Success when every id is settled, [`Outcome::Partial`] (exit 3) otherwise.
    fn outcome(self, resolved: &[Resolved]) -> Outcome {
        if resolved
            .iter()
            .all(|resolved| self.settled(resolved.outcome))
        {
            Outcome::Success
        } else {
            Outcome::Partial
        }
    }
}

/// One requested id and the server's answer for it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    id: String,
    /// A `ResolveOutcome`; `None` when the server's answer left the id out.
    outcome: Option<i32>,
}

impl Resolved {
    /// `done`, `already replayed`, `already discarded`, `not found` or why it was not
    /// replayed.
    fn outcome_text(&self) -> String {
        match self.outcome {
            None => "no answer".to_owned(),
            Some(number) => match ResolveOutcome::try_from(number) {
                Ok(ResolveOutcome::Done) => "done".to_owned(),
                Ok(ResolveOutcome::AlreadyReplayed) => "already replayed".to_owned(),
                Ok(ResolveOutcome::AlreadyDiscarded) => "already discarded".to_owned(),
                Ok(ResolveOutcome::NotFound) => "not found".to_owned(),
                Ok(ResolveOutcome::PersonalDataCleared) => {
                    "not replayed: its personal data was cleared".to_owned()
                }
                Ok(ResolveOutcome::Unspecified) | Err(_) => {
                    format!("unknown outcome ({})", display::resolve_outcome(number))
                }
            },
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "outcome": self.outcome.map(display::resolve_outcome),
        })
    }
}

/// One `<id>  <outcome>` line per id.
fn to_lines(resolved: &[Resolved]) -> String {
    resolved
        .iter()
        .map(|resolved| format!("{}  {}\n", resolved.id, resolved.outcome_text()))
        .collect()
}

/// How many ids ended each way, e.g. `3 failures: 2 done, 1 not found.`
fn summary(resolved: &[Resolved]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for resolved in resolved {
        let text = resolved.outcome_text();
        match counts.iter_mut().find(|(outcome, _)| *outcome == text) {
            Some((_, count)) => *count += 1,
            None => counts.push((text, 1)),
        }
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(outcome, count)| format!("{count} {outcome}"))
        .collect();
    format!(
        "{} failure{}: {}.",
        resolved.len(),
        plural(resolved.len()),
        parts.join(", ")
    )
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// A failure as a JSON object with readable enum names and RFC 3339 timestamps.
fn failure_json(failure: &Failure) -> serde_json::Value {
    serde_json::json!({
        "id": failure.id,
        "created_at": display::timestamp_json(failure.created_at.as_ref()),
        "channel": display::channel(failure.channel),
        "class": display::failure_class(failure.class),
        "status": display::failure_status(failure.status),
        "attempts": failure.attempts,
        "template_key": failure.template_key,
        "priority": display::priority(failure.priority),
        "notification_id": failure.notification_id,
        "delivery_id": failure.delivery_id,
        "error": failure.error,
        "resolved_at": display::timestamp_json(failure.resolved_at.as_ref()),
        "resolved_by": failure.resolved_by,
    })
}

fn attempt_json(attempt: &Attempt) -> serde_json::Value {
    serde_json::json!({
        "kind": attempt.kind,
        "attempt": attempt.attempt,
        "provider": attempt.provider,
        "error_class": attempt.error_class,
        "detail": attempt.detail,
        "occurred_at": display::timestamp_json(attempt.occurred_at.as_ref()),
    })
}

fn timestamp_text(timestamp: Option<&prost_types::Timestamp>) -> String {
    display::instant(timestamp).map_or_else(String::new, display::rfc3339)
}

/// One line per failure, in aligned columns, the error cut to [`ERROR_WIDTH`] characters.
fn to_table(failures: &[Failure]) -> String {
    let rows: Vec<[String; 9]> = failures
        .iter()
        .map(|failure| {
            [
                failure.id.clone(),
                timestamp_text(failure.created_at.as_ref()),
                display::channel(failure.channel),
                display::failure_class(failure.class),
                display::failure_status(failure.status),
                failure.attempts.to_string(),
                failure.template_key.clone(),
                failure.notification_id.clone(),
                display::one_line(&failure.error, ERROR_WIDTH),
            ]
        })
        .collect();
    display::table(
        "",
        [
            "ID",
            "CREATED_AT",
            "CHANNEL",
            "CLASS",
            "STATUS",
            "ATTEMPTS",
            "TEMPLATE",
            "NOTIFICATION",
            "ERROR",
        ],
        &rows,
    )
}

/// The failure's fields, then its delivery's history as an indented table.
fn to_text(response: &GetFailureResponse) -> String {
    use std::fmt::Write as _;

    let failure = response.failure.clone().unwrap_or_default();
    let mut text = String::new();
    // Writing to a String cannot fail, so the results are ignored.
    let _ = writeln!(
        text,
        "Failure {}: {}",
        failure.id,
        display::failure_status(failure.status)
    );
    let _ = writeln!(
        text,
        "  class:        {}",
        display::failure_class(failure.class)
    );
    let _ = writeln!(
        text,
        "  channel:      {}",
        display::channel(failure.channel)
    );
    let _ = writeln!(text, "  attempts:     {}", failure.attempts);
    let _ = writeln!(text, "  template:     {}", failure.template_key);
    let _ = writeln!(
        text,
        "  priority:     {}",
        display::priority(failure.priority)
    );
    let _ = writeln!(text, "  notification: {}", failure.notification_id);
    let _ = writeln!(text, "  delivery:     {}", failure.delivery_id);
    if let Some(created_at) = display::instant(failure.created_at.as_ref()) {
        let _ = writeln!(text, "  created at:   {}", display::rfc3339(created_at));
    }
    if let Some(resolved_at) = display::instant(failure.resolved_at.as_ref()) {
        let _ = write!(text, "  resolved at:  {}", display::rfc3339(resolved_at));
        if !failure.resolved_by.is_empty() {
            let _ = write!(text, " by {}", failure.resolved_by);
        }
        let _ = writeln!(text);
    }
    if !failure.error.is_empty() {
        let _ = writeln!(text, "  error:        {}", failure.error);
    }
    if response.history.is_empty() {
        let _ = writeln!(text, "  History: none");
    } else {
        let _ = writeln!(text, "  History");
        let rows: Vec<[String; 6]> = response
            .history
            .iter()
            .map(|attempt| {
                [
                    timestamp_text(attempt.occurred_at.as_ref()),
                    attempt.kind.clone(),
                    attempt.attempt.to_string(),
                    attempt.provider.clone(),
                    attempt.error_class.clone(),
                    display::one_line(&attempt.detail, usize::MAX),
                ]
            })
            .collect();
        text.push_str(&display::table(
            "    ",
            [
                "TIME",
                "KIND",
                "ATTEMPT",
                "PROVIDER",
                "ERROR_CLASS",
                "DETAIL",
            ],
            &rows,
        ));
    }
    text
}

#[cfg(test)]
mod tests;
