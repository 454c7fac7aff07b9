//! `herald-tracker`: serves the email open pixel and click redirects.

use clap::Parser;
use herald_tracker::{Application, SERVICE_NAME, Settings};

#[derive(Parser)]
#[command(name = SERVICE_NAME, about = "Herald's open-pixel and click-redirect endpoint")]
struct Cli {
    /// Directory holding base.toml and the {HERALD_ENV}.toml overlays.
    #[arg(long, env = "HERALD_CONFIG_DIR", default_value = "config")]
    config_dir: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    herald_telemetry::run_service(
        SERVICE_NAME,
        &cli.config_dir,
        |settings: &Settings| &settings.telemetry,
        |settings| async move {
            herald_tls::install_crypto_provider();
            let shutdown = herald_telemetry::shutdown_signal();
            Application::build(settings)
                .await?
                .run_until_stopped(shutdown)
                .await
        },
    )
    .await
}
