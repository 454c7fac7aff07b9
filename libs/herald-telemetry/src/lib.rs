#![doc = include_str!("../README.md")]

use herald_config::{LogFormat, TelemetrySettings};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps telemetry alive; dropping it flushes what is buffered.
#[derive(Debug)]
#[must_use = "telemetry stops when the guard is dropped"]
pub struct TelemetryGuard {
    service_name: &'static str,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        tracing::debug!(service.name = self.service_name, "Telemetry shut down.");
    }
}

/// Installs the global subscriber for `service_name`.
///
/// Returns an error when a global subscriber is already installed.
pub fn init(
    settings: &TelemetrySettings,
    service_name: &'static str,
) -> Result<TelemetryGuard, tracing_subscriber::util::TryInitError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log_filter));
    let registry = tracing_subscriber::registry().with(filter);
    match settings.log_format {
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true))
            .try_init()?,
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().compact())
            .try_init()?,
    }
    tracing::info!(service.name = service_name, "Telemetry initialised.");
    Ok(TelemetryGuard { service_name })
}

/// A token cancelled on SIGTERM or SIGINT, which every binary passes to
/// `run_until_stopped` to start its graceful drain.
pub fn shutdown_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::warn!(error = %error, "Could not listen for SIGTERM.");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate => {}
        }
        tracing::info!("Shutdown signal received; draining.");
        cancel.cancel();
    });
    token
}

/// A service binary's `main` after argument parsing: loads `S` from `config_dir` (printing
/// every problem and returning exit code 64 when the configuration is invalid), initialises
/// telemetry from the section `telemetry` picks, runs `run`, and turns its error into exit
/// code 1 with the error chain logged once.
pub async fn run_service<S, F, Fut, E>(
    service_name: &'static str,
    config_dir: &std::path::Path,
    telemetry: fn(&S) -> &TelemetrySettings,
    run: F,
) -> std::process::ExitCode
where
    S: serde::de::DeserializeOwned + herald_config::Validate,
    F: FnOnce(S) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let settings: S = match herald_config::load_from_dir(config_dir) {
        Ok(settings) => settings,
        Err(error) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{service_name}: {error}");
            }
            return std::process::ExitCode::from(64);
        }
    };
    let _guard = match init(telemetry(&settings), service_name) {
        Ok(guard) => guard,
        Err(error) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{service_name}: cannot initialise telemetry: {error}");
            }
            return std::process::ExitCode::FAILURE;
        }
    };
    match run(settings).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let error: Box<dyn std::error::Error + Send + Sync> = error.into();
            let mut chain = error.to_string();
            let mut source = error.source();
            while let Some(cause) = source {
                chain.push_str(": ");
                chain.push_str(&cause.to_string());
                source = cause.source();
            }
            tracing::error!(error = %chain, "{service_name} failed.");
            std::process::ExitCode::FAILURE
        }
    }
}
