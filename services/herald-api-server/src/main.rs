//! `herald-api-server [serve|migrate|keys …]`.

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
    /// Manage the keys personal data is encrypted with ([database.encryption]).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a new random key named ID into key_dir (never replacing one).
    New {
        /// The key's id: letters, digits, `-` or `_`.
        id: String,
    },
    /// Count the stored personal values of every column by the key they are sealed under.
    Status,
    /// Reseal every personal value that is not under active_key (or is stored in clear)
    /// under it, replace disabled contacts' plain hashes with keyed ones, then print the
    /// status. Every key still in use must be in key_dir.
    Rotate {
        /// Table pages read per statement.
        #[arg(long, default_value_t = 64)]
        blocks: i64,
    },
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
            let connector = herald_db::Connector::new(&settings.database)?;
            let applied = herald_db::run_migrations(&connector).await?;
            tracing::info!(migrations.applied = applied.len(), "Migrations applied.");
            Ok(())
        }
        Command::Keys(command) => keys(command, &settings).await,
        Command::Serve => {
            let application = Application::build(settings).await?;
            application.run_until_stopped(shutdown).await
        }
    }
}

async fn keys(command: KeysCommand, settings: &Settings) -> anyhow::Result<()> {
    use anyhow::Context;
    use herald_db::personal::keys::{self, SealedUnder};
    let encryption = &settings.database.encryption;
    if let KeysCommand::New { id } = command {
        let path = herald_crypto::write_new_key(&encryption.key_dir, &id)?;
        tracing::info!(key.path = %path.display(), "Key written.");
        return Ok(());
    }
    let pool = herald_db::build_pool(&settings.database).context("loading the keys")?;
    let mut connection = herald_db::connection(&pool).await?;
    if let KeysCommand::Rotate { blocks } = command {
        let resealed = keys::reseal(&mut connection, blocks).await?;
        let (rekeyed, plain) = herald_db::contacts::rekey_legacy(&mut connection, 500).await?;
        tracing::info!(
            key.active = %encryption.active_key,
            values.resealed = resealed.values,
            values.left = resealed.left,
            contacts.rekeyed = rekeyed,
            contacts.plain = plain,
            "Personal data resealed under the active key."
        );
        if resealed.left > 0 {
            tracing::warn!(
                values.left = resealed.left,
                "Some values changed while they were resealed, or are written by a service \
                 not yet sealing under the active key: run keys rotate again."
            );
        }
    }
    let mut report = String::from("column\tsealed under\tvalues\n");
    for usage in keys::usage(&mut connection).await? {
        let sealed_under = match usage.sealed_under {
            SealedUnder::Key(key) => key,
            SealedUnder::Clear => "(in clear)".to_owned(),
            SealedUnder::Empty => "(empty)".to_owned(),
            SealedUnder::Corrupt => "(corrupt)".to_owned(),
        };
        report.push_str(&format!(
            "{}\t{sealed_under}\t{}\n",
            usage.column, usage.values
        ));
    }
    let plain = herald_db::contacts::plain_hashes(&mut connection).await?;
    if plain > 0 {
        report.push_str(&format!(
            "disabled_contacts.address_hash\t(plain SHA-256)\t{plain}\n"
        ));
    }
    #[allow(clippy::print_stdout)]
    {
        print!("{report}");
    }
    Ok(())
}
