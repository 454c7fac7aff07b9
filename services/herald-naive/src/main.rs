//! `herald-naive`: runs the naive pipeline once and prints its figures.

// A tool whose report is its output on stdout.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use herald_naive::{CONCURRENCY, DEFAULT_QUEUE, DEFAULT_SCHEMA, PREFETCH, Settings};

/// The naive pipeline baseline: per item INSERT+commit -> persistent publish with confirm ->
/// consume -> UPDATE+commit -> ack, with a pinned concurrency and prefetch.
#[derive(Debug, Parser)]
#[command(name = "herald-naive")]
#[command(after_help = format!("Concurrency is pinned at {CONCURRENCY} producers and prefetch at {PREFETCH}."))]
struct Cli {
    /// PostgreSQL URL.
    #[arg(long, env = "HERALD__DATABASE__URL")]
    database_url: String,
    /// RabbitMQ URL; the path is the vhost.
    #[arg(long, env = "HERALD__AMQP__URL")]
    amqp_url: String,
    /// Items to push through the pipeline.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Schema of its `items` table (dropped and recreated).
    #[arg(long, default_value = DEFAULT_SCHEMA)]
    schema: String,
    /// Its queue (deleted at the start and the end).
    #[arg(long, default_value = DEFAULT_QUEUE)]
    queue: String,
    /// Give up when not every item is acknowledged after this long.
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = Settings {
        database_url: cli.database_url,
        amqp_url: cli.amqp_url,
        count: cli.count,
        schema: cli.schema,
        queue: cli.queue,
        timeout: cli.timeout,
    };
    match herald_naive::run(&settings).await {
        Ok(report) => {
            if cli.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            if report.is_exact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(error) => {
            eprintln!("herald-naive: {error}");
            ExitCode::FAILURE
        }
    }
}
