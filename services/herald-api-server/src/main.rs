//! `herald-api-server [serve|migrate]`.

use clap::{Parser, Subcommand};
use herald_api_server::{Application, SERVICE_NAME, Settings};

#[derive(Parser)]
#[command(name = SERVICE_NAME, about = "Herald's gRPC API server")]
struct Cli {
    #[command(flatten)]
    config: herald_service::ConfigArgs,
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
    herald_service::run(
        SERVICE_NAME,
        &cli.config,
        |settings: &Settings| &settings.telemetry,
        |settings, shutdown| run(command, settings, shutdown),
    )
    .await
}

async fn run(
    command: Command,
    settings: Settings,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    match command {
        Command::Migrate => {
            use secrecy::ExposeSecret;
            let applied = herald_db::run_migrations(settings.database.url.expose_secret()).await?;
            tracing::info!(migrations.applied = applied.len(), "Migrations applied.");
            Ok(())
        }
        Command::Serve => {
            let application = Application::build(settings).await?;
            application.run_until_stopped(shutdown).await
        }
    }
}
