//! `herald-channel-worker`: delivers one channel (email, SMS, push, in-app or chat).

use clap::Parser;
use herald_channel_worker::{Application, SERVICE_NAME, Settings, WorkerChannel};

#[derive(Parser)]
#[command(name = SERVICE_NAME, about = "Herald's channel worker: email, SMS, push, in-app or chat")]
struct Cli {
    /// The channel this process delivers; run one deployment per channel.
    #[arg(long, env = "HERALD_CHANNEL", value_enum)]
    channel: WorkerChannel,
    #[command(flatten)]
    config: herald_service::ConfigArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let channel = cli.channel;
    herald_service::run_checked(
        SERVICE_NAME,
        &cli.config,
        |settings: &Settings| &settings.telemetry,
        // The channel's own section and the lease check: a configuration error (exit 64).
        move |settings: &Settings| settings.channel_problems(channel),
        |settings, shutdown| async move {
            Application::build(settings, cli.channel)?
                .run_until_stopped(shutdown)
                .await;
            anyhow::Ok(())
        },
    )
    .await
}
