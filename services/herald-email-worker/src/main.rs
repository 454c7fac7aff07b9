//! `herald-email-worker`: delivers email.

use clap::Parser;
use herald_email_worker::{Application, SERVICE_NAME, Settings};

#[derive(Parser)]
#[command(name = SERVICE_NAME, about = "Herald's email channel worker")]
struct Cli {
    /// Directory holding base.toml and the {HERALD_ENV}.toml overlays.
    #[arg(long, env = "HERALD_CONFIG_DIR", default_value = "config")]
    config_dir: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.config_dir) {
        Ok(settings) => settings,
        Err(error) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{SERVICE_NAME}: {error}");
            }
            return std::process::ExitCode::from(64);
        }
    };
    let result = async {
        let _telemetry = herald_telemetry::init(&settings.telemetry, SERVICE_NAME)?;
        herald_tls::install_crypto_provider();
        let shutdown = herald_telemetry::shutdown_signal();
        Application::build(settings)?
            .run_until_stopped(shutdown)
            .await;
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "{SERVICE_NAME} failed.");
            std::process::ExitCode::FAILURE
        }
    }
}
