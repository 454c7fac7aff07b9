//! `herald-sink`: serve the SMTP sink, or `blast` messages at an SMTP server.

// A tool whose `blast` report is its output on stdout.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use herald_sink::{Application, BlastSettings, SERVICE_NAME, Settings};

/// A fast SMTP sink for benchmarks and development: counts messages and distinct Message-IDs
/// and serves the counts as JSON on GET /stats (POST /reset starts them again), and when each
/// Message-ID first arrived on GET /messages/ID (the id without its angle brackets).
#[derive(Debug, Parser)]
#[command(name = SERVICE_NAME, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// SMTP listen address; port 0 picks a free port.
    #[arg(
        long,
        env = "HERALD_SINK_SMTP_LISTEN",
        default_value = "127.0.0.1:2525"
    )]
    smtp_listen: SocketAddr,
    /// HTTP listen address for GET /stats, POST /reset and GET /messages/ID; port 0 picks a
    /// free port.
    #[arg(
        long,
        env = "HERALD_SINK_HTTP_LISTEN",
        default_value = "127.0.0.1:8025"
    )]
    http_listen: SocketAddr,
    /// Also store every message in this Maildir (tmp/, then renamed into new/; no fsync).
    #[arg(long, value_name = "DIR")]
    maildir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send messages as fast as possible over N connections and print messages/s: the
    /// capacity of the SMTP server at --to (normally a herald-sink).
    Blast(BlastArgs),
}

#[derive(Debug, Args)]
struct BlastArgs {
    /// The SMTP server, host:port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2525")]
    to: String,
    /// Concurrent SMTP connections.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    connections: u32,
    /// Messages to send.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Leave Nagle's algorithm on, as lettre's own SMTP connections do: each message then
    /// waits for the server's delayed ACK (about 40 ms on Linux) before its final `.`.
    #[arg(long)]
    nagle: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Some(Command::Blast(args)) => blast(&args).await,
        None => serve(cli.serve).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("{SERVICE_NAME}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let application = Application::build(Settings {
        smtp_listen: args.smtp_listen,
        http_listen: args.http_listen,
        maildir: args.maildir,
        ..Settings::default()
    })
    .await?;
    tracing::info!(
        smtp = %application.smtp_local_addr(),
        http = %application.http_local_addr(),
        "herald-sink is listening."
    );
    let shutdown = herald_service::shutdown_signal();
    application.run_until_stopped(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

async fn blast(args: &BlastArgs) -> anyhow::Result<ExitCode> {
    let report = herald_sink::blast(&BlastSettings {
        to: args.to.clone(),
        connections: args.connections,
        count: args.count,
        nagle: args.nagle,
    })
    .await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.to_text());
    }
    Ok(if report.sent == args.count {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
