#![doc = include_str!("../README.md")]

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use backon::BackoffBuilder as _;

use herald_config::TelemetrySettings;
use tokio_util::sync::CancellationToken;

/// The arguments every service takes, flattened into its clap `Cli`
/// (`#[command(flatten)] config: ConfigArgs`).
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// Directory holding base.toml and the {HERALD_ENV}.toml overlays.
    #[arg(long, env = "HERALD_CONFIG_DIR", default_value = "config")]
    pub config_dir: PathBuf,
}

/// A service binary's `main` after argument parsing: installs the rustls crypto provider,
/// loads `S` from `args.config_dir` (printing every problem and returning exit code 64 when
/// the configuration is invalid), initialises telemetry from the section `telemetry` picks,
/// runs `run` with the settings and the shutdown signal, and turns its error into exit code 1
/// with the error chain logged once.
pub async fn run<S, F, Fut, E>(
    service_name: &'static str,
    args: &ConfigArgs,
    telemetry: fn(&S) -> &TelemetrySettings,
    run: F,
) -> ExitCode
where
    S: serde::de::DeserializeOwned + herald_config::Validate,
    F: FnOnce(S, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    run_checked(service_name, args, telemetry, |_| Vec::new(), run).await
}

/// `run`, with `check` adding the problems only the command line can reveal (the channel a
/// worker runs): any problem from it also ends the process with exit code 64, before
/// telemetry starts.
pub async fn run_checked<S, C, F, Fut, E>(
    service_name: &'static str,
    args: &ConfigArgs,
    telemetry: fn(&S) -> &TelemetrySettings,
    check: C,
    run: F,
) -> ExitCode
where
    S: serde::de::DeserializeOwned + herald_config::Validate,
    C: FnOnce(&S) -> Vec<String>,
    F: FnOnce(S, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    herald_tls::install_crypto_provider();
    let loaded = herald_config::load_from_dir(&args.config_dir).and_then(|settings: S| {
        let problems = check(&settings);
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(herald_config::Error::Invalid(problems))
        }
    });
    let settings: S = match loaded {
        Ok(settings) => settings,
        Err(error) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{service_name}: {error}");
            }
            return ExitCode::from(64);
        }
    };
    let _guard = match herald_telemetry::init(telemetry(&settings), service_name) {
        Ok(guard) => guard,
        Err(error) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{service_name}: cannot initialise telemetry: {error}");
            }
            return ExitCode::FAILURE;
        }
    };
    match run(settings, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
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
            ExitCode::FAILURE
        }
    }
}

/// A service's metrics: its meter provider and, when `telemetry.prometheus_listen` is set, its
/// Prometheus endpoint, bound when the service is built (so a taken port fails the start) and
/// served once it runs.
pub struct ServiceMetrics {
    metrics: herald_telemetry::Metrics,
    endpoint: Option<herald_telemetry::MetricsEndpoint>,
}

impl ServiceMetrics {
    /// The meter provider `telemetry` describes, and its endpoint bound.
    pub fn new(
        telemetry: &TelemetrySettings,
        service_name: &'static str,
    ) -> Result<Self, herald_telemetry::Error> {
        Ok(Self {
            metrics: herald_telemetry::Metrics::new(telemetry, service_name)?,
            endpoint: herald_telemetry::MetricsEndpoint::bind_configured(telemetry)?,
        })
    }

    /// The meter provider instruments are created from.
    pub fn metrics(&self) -> &herald_telemetry::Metrics {
        &self.metrics
    }

    /// Where Prometheus metrics are served, when `telemetry.prometheus_listen` is set.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint
            .as_ref()
            .map(herald_telemetry::MetricsEndpoint::local_addr)
    }

    /// Serves `GET /metrics`, `/healthz` and `/readyz` (the dependencies `readiness` checks)
    /// until `shutdown`; only the first call starts the server.
    pub fn serve(&mut self, shutdown: &CancellationToken, readiness: herald_telemetry::Readiness) {
        if let Some(endpoint) = self.endpoint.take() {
            tokio::spawn(endpoint.serve(self.metrics.clone(), readiness, shutdown.clone()));
        }
    }
}

/// A token cancelled on SIGTERM or SIGINT, which every service passes to
/// `run_until_stopped` to start its graceful drain.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
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

/// The pauses of a reconnect or retry loop: `min` first, doubling up to `max`, and `min` again
/// once `reset` says a try succeeded.
///
/// ```
/// # use std::time::Duration;
/// let mut backoff = herald_service::Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
/// let millis: Vec<_> = (0..4).map(|_| backoff.next_delay().as_millis()).collect();
/// assert_eq!(millis, [100, 200, 300, 300]);
/// backoff.reset();
/// assert_eq!(backoff.next_delay(), Duration::from_millis(100));
/// ```
#[derive(Debug)]
pub struct Backoff {
    builder: backon::ExponentialBuilder,
    delays: backon::ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Doubling pauses from `min` to `max`, for as many tries as it takes.
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        let builder = backon::ExponentialBuilder::new()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
            max,
        }
    }

    /// The pause before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }

    /// Starts over from `min`: the last try succeeded.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

/// Sleeps `pause`; `false` when `shutdown` came first (the loop that waited should end).
pub async fn sleep_unless_shutdown(pause: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(pause) => true,
    }
}
