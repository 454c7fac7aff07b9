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
    let command = cli.command.unwrap_or(Command::Serve);
    herald_telemetry::run_service(
        SERVICE_NAME,
        &cli.config_dir,
        |settings: &Settings| &settings.telemetry,
        |settings| run(command, settings),
    )
    .await
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
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
