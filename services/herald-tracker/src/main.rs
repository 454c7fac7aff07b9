//! `herald-tracker`: serves the email open pixel and click redirects.

use clap::Parser;
use herald_tracker::{Application, SERVICE_NAME, Settings};

#[derive(Parser)]
#[command(name = SERVICE_NAME, about = "Herald's open-pixel and click-redirect endpoint")]
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
            Application::build(settings)
                .await?
                .run_until_stopped(shutdown)
                .await
        },
    )
    .await
}
