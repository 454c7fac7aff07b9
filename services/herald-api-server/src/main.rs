//! `herald-api-server [serve|migrate]`.

use clap::{Parser, Subcommand};
use herald_api_server::{Application, SERVICE_NAME, Settings};

#[derive(Parser)]
#[command(name = SERVICE_NAME, about = "Herald's gRPC API server")]
struct Cli {
    /// Directory holding base.toml and the {HERALD_ENV}.toml overlays.
    #[arg(long, env = "HERALD_CONFIG_DIR", default_value = "config")]
    config_dir: std::path::PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
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
    match run(cli.command.unwrap_or(Command::Serve), settings).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "{SERVICE_NAME} failed.");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    let _telemetry = herald_telemetry::init(&settings.telemetry, SERVICE_NAME)?;
    herald_tls::install_crypto_provider();
    match command {
        Command::Migrate => {
            use secrecy::ExposeSecret;
            let applied = herald_db::run_migrations(settings.database.url.expose_secret()).await?;
            tracing::info!(migrations.applied = applied.len(), "Migrations applied.");
            Ok(())
        }
        Command::Serve => {
            let shutdown = herald_telemetry::shutdown_signal();
            let application = Application::build(settings).await?;
            application.run_until_stopped(shutdown).await
        }
    }
}
