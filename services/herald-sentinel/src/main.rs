//! `herald-sentinel`: developer alerts.

use clap::Parser;
use herald_sentinel::{Application, SERVICE_NAME, Settings};

#[derive(Parser)]
#[command(name = SERVICE_NAME, about = "Herald's developer alerts")]
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
                .await;
            anyhow::Ok(())
        },
    )
    .await
}
