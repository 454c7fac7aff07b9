#![doc = include_str!("../README.md")]
// herald-cli is a command-line tool: its output *is* stdout and stderr, so the workspace's
// print lints (meant to keep services logging through tracing) do not apply here.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod cli;
mod client;
mod display;
mod failures;
mod queues;
mod status;
mod submit;
mod submit_batch;
mod template;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};

/// How a command ended; each maps to an exit code documented in the README and `--help`.
/// Errors exit 1 and bad usage exits 2 (clap's convention).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done; for `wait`, the notification was delivered.
    Success,
    /// Partially delivered, a bench in which something was not accepted or not delivered, a
    /// probe whose message arrived more than once, or a failure replay/discard in which some id
    /// was neither resolved now nor already in the requested state.
    Partial,
    /// The notification failed.
    Failed,
    /// `wait` gave up before the notification was final.
    TimedOut,
}

impl From<Outcome> for ExitCode {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Success => Self::SUCCESS,
            Outcome::Partial => Self::from(3),
            Outcome::Failed => Self::from(4),
            Outcome::TimedOut => Self::from(5),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    herald_tls::install_crypto_provider();
    match run(&cli).await {
        Ok(outcome) => outcome.into(),
        Err(error) => {
            eprintln!("herald-cli: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by `: `, leaving out a cause whose text the previous
/// message already ends with (some errors print their source in their own message too).
fn error_chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut previous = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if previous.ends_with(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
        previous = message;
    }
    text
}

async fn run(cli: &Cli) -> anyhow::Result<Outcome> {
    let connection = &cli.connection;
    match &cli.command {
        Command::Template(command) => template::run(command, connection).await,
        Command::Submit(args) => submit::run(args, connection).await,
        Command::SubmitBatch(args) => submit_batch::run(args, connection).await,
        Command::Get(args) => status::get(args, connection).await,
        Command::Wait(args) => status::wait(args, connection).await,
        Command::Bench(args) => bench::run(args, connection).await,
        Command::Probe(args) => bench::probe::run(args, connection).await,
        Command::Failures(command) => failures::run(command, connection).await,
        Command::Queues(args) => queues::run(args, connection).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_skips_causes_already_in_the_message() {
        let io = std::io::Error::other("no such file");
        let error = anyhow::Error::new(io)
            .context("could not read a.pem: no such file")
            .context("loading the client certificate");
        assert_eq!(
            error_chain(&error),
            "loading the client certificate: could not read a.pem: no such file"
        );
    }
}
