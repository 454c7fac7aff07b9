//! Unit tests of `failures`: argument parsing, output, and paging and batching against a fake
//! AdminService over loopback.

use std::sync::{Mutex, PoisonError};

use clap::Parser as _;
use clap::error::ErrorKind;
use herald_proto::admin::admin_service_server::{AdminService, AdminServiceServer};
use herald_proto::admin::{ListFailuresResponse, ResolveFailuresResponse, ResolveResult};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::*;
use crate::cli::{ChannelArg, Cli, Command, FailureClassArg, FailureStatusArg};

fn parse(arguments: &[&str]) -> Result<FailuresCommand, clap::Error> {
    let cli = Cli::try_parse_from(["herald-cli", "failures"].iter().chain(arguments))?;
    match cli.command {
        Command::Failures(command) => Ok(command),
        other => panic!("expected a failures command, got {other:?}"),
    }
}

const ID: &str = "0193a3e4-5c1b-7d2e-8f00-000000000001";

#[test]
fn list_defaults_to_the_newest_100_open_failures() {
    let Ok(FailuresCommand::List(args)) = parse(&["list"]) else {
        panic!("expected failures list");
    };
    assert_eq!(args.status, FailureStatusArg::Open);
    assert_eq!(args.limit, 100);
    let filter = list_filter(&args);
    assert_eq!(filter.status, FailureStatus::Open as i32);
    assert_eq!((filter.channel, filter.class), (0, 0));
    assert_eq!(filter.since, None);
}

#[test]
fn list_filters_map_to_the_request() {
    let Ok(FailuresCommand::List(args)) = parse(&[
        "list",
        "--status",
        "any",
        "--channel",
        "in-app",
        "--class",
        "exhausted",
        "--notification",
        "n-1",
        "--since",
        "2025-01-31T13:00:00+01:00",
        "--limit",
        "1000",
    ]) else {
        panic!("expected failures list");
    };
    assert_eq!(args.channel, Some(ChannelArg::InApp));
    assert_eq!(args.class, Some(FailureClassArg::Exhausted));
    let filter = list_filter(&args);
    assert_eq!(filter.status, FailureStatus::Unspecified as i32);
    assert_eq!(filter.channel, common::Channel::InApp as i32);
    assert_eq!(filter.class, FailureClass::Exhausted as i32);
    assert_eq!(filter.notification_id, "n-1");
    let since = filter.since.expect("since is set");
    assert_eq!(
        display::rfc3339(conversions::instant(&since).expect("in range")),
        "2025-01-31T12:00:00.000Z"
    );
}

#[test]
fn list_rejects_bad_instants_and_a_zero_limit() {
    assert!(parse(&["list", "--since", "yesterday"]).is_err());
    assert!(parse(&["list", "--limit", "0"]).is_err());
}

#[test]
fn replay_and_discard_need_a_reason() {
    for command in ["replay", "discard"] {
        let error = parse(&[command, ID]).expect_err("--reason is required");
        assert_eq!(
            error.kind(),
            ErrorKind::MissingRequiredArgument,
            "{command}"
        );
        assert!(
            parse(&[command, "--reason", "  ", ID]).is_err(),
            "{command}"
        );
        let long = "x".repeat(501);
        assert!(
            parse(&[command, "--reason", &long, ID]).is_err(),
            "{command}"
        );
    }
}

#[test]
fn replay_and_discard_need_ids_which_must_be_uuids() {
    for command in ["replay", "discard"] {
        let error = parse(&[command, "--reason", "fixed"]).expect_err("an id is required");
        assert_eq!(
            error.kind(),
            ErrorKind::MissingRequiredArgument,
            "{command}"
        );
        let error = parse(&[command, "--reason", "fixed", "not-a-uuid"]).expect_err("bad id");
        assert_eq!(error.kind(), ErrorKind::ValueValidation, "{command}");
    }
    let Ok(FailuresCommand::Discard(args)) = parse(&[
        "discard",
        "--reason",
        "fixed",
        &ID.to_uppercase(),
        ID,
        "--json",
    ]) else {
        panic!("expected failures discard");
    };
    // Ids are sent in the server's spelling, so its answers match them.
    assert_eq!(
        args.ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [ID, ID]
    );
    assert!(args.json);
}

#[test]
fn replay_all_open_takes_no_ids() {
    let Ok(FailuresCommand::Replay(args)) = parse(&["replay", "--all-open", "--reason", "fixed"])
    else {
        panic!("expected failures replay");
    };
    assert!(args.all_open && args.ids.is_empty());
    let error = parse(&["replay", "--all-open", "--reason", "fixed", ID]).expect_err("conflict");
    assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
    let error = parse(&["replay", "--all-open"]).expect_err("--reason is required");
    assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
    assert!(parse(&["discard", "--all-open", "--reason", "fixed"]).is_err());
}

#[test]
fn the_admin_certificate_is_mentioned_in_help() {
    for command in [
        &["--help"][..],
        &["list", "--help"],
        &["replay", "--help"],
        &["discard", "--help"],
        &["get", "--help"],
    ] {
        let help = parse(command).expect_err("help").to_string();
        assert!(
            help.contains(
                "--cert certs-dev/generated/admin.pem --key certs-dev/generated/admin.key"
            ),
            "{command:?}: {help}"
        );
    }
}

fn resolved(outcome: Option<ResolveOutcome>) -> Resolved {
    Resolved {
        id: ID.to_owned(),
        outcome: outcome.map(Into::into),
    }
}

#[test]
fn an_id_already_in_the_requested_state_counts_as_success() {
    let done = resolved(Some(ResolveOutcome::Done));
    let replayed = resolved(Some(ResolveOutcome::AlreadyReplayed));
    let discarded = resolved(Some(ResolveOutcome::AlreadyDiscarded));
    let missing = resolved(Some(ResolveOutcome::NotFound));
    let unanswered = resolved(None);
    let replay = Action::Replay;
    let discard = Action::Discard;
    assert_eq!(
        replay.outcome(&[done.clone(), replayed.clone()]),
        Outcome::Success
    );
    assert_eq!(
        replay.outcome(&[done.clone(), discarded.clone()]),
        Outcome::Partial
    );
    assert_eq!(
        discard.outcome(&[done.clone(), discarded.clone()]),
        Outcome::Success
    );
    assert_eq!(discard.outcome(&[done.clone(), replayed]), Outcome::Partial);
    assert_eq!(replay.outcome(&[done.clone(), missing]), Outcome::Partial);
    assert_eq!(discard.outcome(&[done, unanswered]), Outcome::Partial);
    assert_eq!(discard.outcome(&[discarded]), Outcome::Success);
}

#[test]
fn outcome_lines_and_the_summary_read_plainly() {
    let answers = [
        resolved(Some(ResolveOutcome::Done)),
        resolved(Some(ResolveOutcome::AlreadyReplayed)),
        resolved(Some(ResolveOutcome::Done)),
        resolved(Some(ResolveOutcome::NotFound)),
        resolved(None),
    ];
    assert_eq!(
        to_lines(&answers[..2]),
        format!("{ID}  done\n{ID}  already replayed\n")
    );
    assert_eq!(
        summary(&answers),
        "5 failures: 2 done, 1 already replayed, 1 not found, 1 no answer."
    );
    assert_eq!(
        answers[1].to_json(),
        serde_json::json!({ "id": ID, "outcome": "ALREADY_REPLAYED" })
    );
    assert_eq!(answers[4].to_json()["outcome"], serde_json::Value::Null);
}

fn failure(index: usize, status: FailureStatus) -> Failure {
    Failure {
        id: Uuid::from_u128(index as u128).to_string(),
        delivery_id: "d-1".to_owned(),
        notification_id: "n-1".to_owned(),
        channel: common::Channel::Email as i32,
        class: FailureClass::Exhausted as i32,
        status: status as i32,
        attempts: 5,
        error: "SMTP 451:\n  try again later, the mailbox is temporarily unavailable for delivery"
            .to_owned(),
        template_key: "welcome".to_owned(),
        priority: common::Priority::Normal as i32,
        created_at: Some(prost_types::Timestamp {
            seconds: 1_738_324_800,
            nanos: 0,
        }),
        ..Failure::default()
    }
}

#[test]
fn the_table_has_one_aligned_row_per_failure_with_the_error_cut() {
    let table = to_table(&[failure(1, FailureStatus::Open)]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("ID  "), "{table}");
    assert!(lines[0].ends_with("NOTIFICATION  ERROR"), "{table}");
    assert_eq!(lines[0].find("CREATED_AT"), lines[1].find("2025-01-31"));
    assert!(
        lines[1].contains(
            "2025-01-31T12:00:00.000Z  EMAIL    EXHAUSTED  OPEN    5         welcome   n-1"
        ),
        "{table}"
    );
    assert!(
        lines[1].ends_with("SMTP 451: try again later, the mailbox is temporarily unava…"),
        "{table}"
    );
}

#[test]
fn get_shows_the_failure_and_its_history() {
    let mut replayed = failure(1, FailureStatus::Replayed);
    replayed.resolved_by = "spiffe://herald.local/admin".to_owned();
    replayed.resolved_at = Some(prost_types::Timestamp {
        seconds: 1_738_328_400,
        nanos: 0,
    });
    let response = GetFailureResponse {
        failure: Some(replayed),
        history: vec![
            Attempt {
                kind: "sending".to_owned(),
                attempt: 1,
                provider: "smtp".to_owned(),
                ..Attempt::default()
            },
            Attempt {
                kind: "failed".to_owned(),
                attempt: 1,
                provider: "smtp".to_owned(),
                error_class: "exhausted".to_owned(),
                detail: "451 try again".to_owned(),
                occurred_at: Some(prost_types::Timestamp {
                    seconds: 1_738_324_800,
                    nanos: 0,
                }),
            },
        ],
    };
    let text = to_text(&response);
    assert!(
        text.starts_with(&format!("Failure {}: REPLAYED\n", Uuid::from_u128(1))),
        "{text}"
    );
    assert!(
        text.contains("  resolved at:  2025-01-31T13:00:00.000Z by spiffe://herald.local/admin\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "    TIME                      KIND     ATTEMPT  PROVIDER  ERROR_CLASS  DETAIL\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "    2025-01-31T12:00:00.000Z  failed   1        smtp      exhausted    451 try again\n"
        ),
        "{text}"
    );
    let json = failure_json(response.failure.as_ref().expect("failure"));
    assert_eq!(json["status"], "REPLAYED");
    assert_eq!(json["class"], "EXHAUSTED");
    assert_eq!(json["resolved_at"], "2025-01-31T13:00:00.000Z");
    let attempt = attempt_json(&response.history[0]);
    assert_eq!(attempt["occurred_at"], serde_json::Value::Null);
}

/// Failures newest first, paged by offset, enforcing the server's page and batch limits and
/// recording the size of every page and batch asked for.
#[derive(Debug, Default)]
struct FakeAdminService {
    failures: Mutex<Vec<Failure>>,
    page_sizes: Mutex<Vec<u32>>,
    batch_sizes: Mutex<Vec<usize>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeAdminService {
    fn resolve(
        &self,
        ids: &[String],
        to: FailureStatus,
    ) -> Result<ResolveFailuresResponse, Status> {
        if ids.is_empty() || ids.len() > 500 {
            return Err(Status::invalid_argument("ids: must list 1 to 500"));
        }
        lock(&self.batch_sizes).push(ids.len());
        let mut failures = lock(&self.failures);
        let results = ids
            .iter()
            .map(|id| {
                let outcome = match failures.iter_mut().find(|failure| failure.id == *id) {
                    None => ResolveOutcome::NotFound,
                    Some(failure) => match failure.status() {
                        FailureStatus::Replayed => ResolveOutcome::AlreadyReplayed,
                        FailureStatus::Discarded => ResolveOutcome::AlreadyDiscarded,
                        FailureStatus::Open | FailureStatus::Unspecified => {
                            failure.status = to.into();
                            ResolveOutcome::Done
                        }
                    },
                };
                ResolveResult {
                    id: id.clone(),
                    outcome: outcome.into(),
                }
            })
            .collect();
        Ok(ResolveFailuresResponse { results })
    }
}

#[tonic::async_trait]
impl AdminService for FakeAdminService {
    async fn get_queue_stats(
        &self,
        _request: Request<herald_proto::admin::GetQueueStatsRequest>,
    ) -> Result<Response<herald_proto::admin::GetQueueStatsResponse>, Status> {
        Err(Status::unimplemented(
            "the failures tests do not read queue figures",
        ))
    }

    async fn list_failures(
        &self,
        request: Request<ListFailuresRequest>,
    ) -> Result<Response<ListFailuresResponse>, Status> {
        let request = request.into_inner();
        let page_size = match request.page_size {
            0 => 100,
            size if size <= 500 => size as usize,
            _ => return Err(Status::invalid_argument("page_size: must be at most 500")),
        };
        lock(&self.page_sizes).push(request.page_size);
        let offset: usize = if request.page_token.is_empty() {
            0
        } else {
            request
                .page_token
                .parse()
                .map_err(|_| Status::invalid_argument("page_token"))?
        };
        let matching: Vec<Failure> = lock(&self.failures)
            .iter()
            .filter(|failure| request.status == 0 || failure.status == request.status)
            .cloned()
            .collect();
        let end = matching.len().min(offset + page_size);
        let failures = matching.get(offset..end).unwrap_or_default().to_vec();
        let next_page_token = if end < matching.len() {
            end.to_string()
        } else {
            String::new()
        };
        Ok(Response::new(ListFailuresResponse {
            failures,
            next_page_token,
        }))
    }

    async fn get_failure(
        &self,
        _request: Request<GetFailureRequest>,
    ) -> Result<Response<GetFailureResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn replay_failures(
        &self,
        request: Request<ReplayFailuresRequest>,
    ) -> Result<Response<ResolveFailuresResponse>, Status> {
        self.resolve(&request.into_inner().ids, FailureStatus::Replayed)
            .map(Response::new)
    }

    async fn discard_failures(
        &self,
        request: Request<DiscardFailuresRequest>,
    ) -> Result<Response<ResolveFailuresResponse>, Status> {
        self.resolve(&request.into_inner().ids, FailureStatus::Discarded)
            .map(Response::new)
    }
}

/// A client of a fake AdminService holding `open` open failures followed by one replayed and
/// one discarded (ids are `Uuid::from_u128(index)`), and the service to look at afterwards.
async fn fake_server(
    open: usize,
) -> anyhow::Result<(
    AdminServiceClient<Channel>,
    std::sync::Arc<FakeAdminService>,
)> {
    let mut failures: Vec<Failure> = (0..open)
        .map(|index| failure(index, FailureStatus::Open))
        .collect();
    failures.push(failure(open, FailureStatus::Replayed));
    failures.push(failure(open + 1, FailureStatus::Discarded));
    let service = std::sync::Arc::new(FakeAdminService {
        failures: Mutex::new(failures),
        ..FakeAdminService::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdminServiceServer::from_arc(std::sync::Arc::clone(
                &service,
            )))
            .serve_with_incoming(incoming),
    );
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?;
    Ok((AdminServiceClient::new(endpoint.connect().await?), service))
}

fn open_filter() -> ListFailuresRequest {
    ListFailuresRequest {
        status: FailureStatus::Open.into(),
        ..ListFailuresRequest::default()
    }
}

#[tokio::test]
async fn listing_follows_pages_until_the_limit() -> anyhow::Result<()> {
    let (mut client, service) = fake_server(1203).await?;

    let (failures, more) = fetch(&mut client, &open_filter(), 600).await?;
    assert_eq!((failures.len(), more), (600, true));
    assert_eq!(failures[599].id, Uuid::from_u128(599).to_string());
    assert_eq!(*lock(&service.page_sizes), [500, 100]);

    lock(&service.page_sizes).clear();
    let (failures, more) = fetch(&mut client, &open_filter(), 5000).await?;
    assert_eq!((failures.len(), more), (1203, false));
    assert_eq!(*lock(&service.page_sizes), [500, 500, 500]);

    let (failures, more) = fetch(&mut client, &open_filter(), 1203).await?;
    assert_eq!((failures.len(), more), (1203, false));
    Ok(())
}

#[tokio::test]
async fn replaying_all_open_failures_goes_in_batches_of_500() -> anyhow::Result<()> {
    let (mut client, service) = fake_server(1203).await?;
    let ids = open_failure_ids(&mut client).await?;
    assert_eq!(ids.len(), 1203);

    let mut batches = Vec::new();
    let resolved = resolve(&mut client, Action::Replay, &ids, "fixed", |batch| {
        batches.push(batch.len());
    })
    .await?;
    assert_eq!(batches, [500, 500, 203]);
    assert_eq!(*lock(&service.batch_sizes), [500, 500, 203]);
    assert_eq!(resolved.len(), 1203);
    assert_eq!(Action::Replay.outcome(&resolved), Outcome::Success);
    assert!(open_failure_ids(&mut client).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn each_id_gets_its_outcome_and_the_exit_code_follows() -> anyhow::Result<()> {
    let (mut client, _service) = fake_server(2).await?;
    let [open, replayed, discarded, missing] =
        [0, 2, 3, 99].map(|index| Uuid::from_u128(index).to_string());

    let ids = [open.clone(), replayed.clone(), missing.clone()];
    let resolved = resolve(&mut client, Action::Replay, &ids, "fixed", |_| {}).await?;
    assert_eq!(
        to_lines(&resolved),
        format!("{open}  done\n{replayed}  already replayed\n{missing}  not found\n")
    );
    assert_eq!(Action::Replay.outcome(&resolved), Outcome::Partial);

    let ids = [open.clone(), replayed.clone()];
    let resolved = resolve(&mut client, Action::Replay, &ids, "again", |_| {}).await?;
    assert_eq!(Action::Replay.outcome(&resolved), Outcome::Success);

    // The same id twice: answers are matched by position, not by id.
    let other = Uuid::from_u128(1).to_string();
    let ids = [other.clone(), other.clone()];
    let resolved = resolve(&mut client, Action::Discard, &ids, "spam", |_| {}).await?;
    assert_eq!(
        to_lines(&resolved),
        format!("{other}  done\n{other}  already discarded\n")
    );

    let ids = [discarded.clone(), replayed.clone()];
    let resolved = resolve(&mut client, Action::Discard, &ids, "spam", |_| {}).await?;
    assert_eq!(
        to_lines(&resolved),
        format!("{discarded}  already discarded\n{replayed}  already replayed\n")
    );
    assert_eq!(Action::Discard.outcome(&resolved), Outcome::Partial);
    Ok(())
}
