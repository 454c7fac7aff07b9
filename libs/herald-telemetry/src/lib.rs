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
