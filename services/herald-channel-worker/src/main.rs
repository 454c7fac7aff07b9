//! `herald-channel-worker`: delivers one channel (email, SMS, push, in-app or chat).

use clap::Parser;
use herald_channel_worker::{Application, SERVICE_NAME, Settings, WorkerChannel};

#[derive(Parser)]
#[command(name = SERVICE_NAME, about = "Herald's channel worker: email, SMS, push, in-app or chat")]
struct Cli {
    /// The channel this process delivers; run one deployment per channel.
    #[arg(long, env = "HERALD_CHANNEL", value_enum)]
    channel: WorkerChannel,
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
            Application::build(settings, cli.channel)?
                .run_until_stopped(shutdown)
                .await;
            anyhow::Ok(())
        },
    )
    .await
}
