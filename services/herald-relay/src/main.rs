//! `herald-relay`: publishes the outbox to RabbitMQ.

use clap::Parser;
use herald_relay::{Application, SERVICE_NAME, Settings};

#[derive(Parser)]
#[command(name = SERVICE_NAME, about = "Herald's outbox relay")]
struct Cli {
    #[command(flatten)]
    config: herald_service::ConfigArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    herald_service::run(
        SERVICE_NAME,
        &cli.config,
        |settings: &Settings| &settings.telemetry,
        |settings, shutdown| async move {
            Application::build(settings)?
                .run_until_stopped(shutdown)
                .await
        },
    )
    .await
}
