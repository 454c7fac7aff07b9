#![doc = include_str!("../README.md")]

mod metrics;
mod propagation;
mod readiness;

use herald_config::{LogFormat, TelemetrySettings};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use metrics::{Metrics, MetricsEndpoint};
pub use opentelemetry;
pub use propagation::{
    context_from_map, context_to_map, current_context_map, link_to, set_parent_from_map,
};
pub use readiness::{CHECK_TIMEOUT, Readiness};

/// Histogram bucket bounds, in seconds, for every latency Herald records (RPCs, queue waits,
/// provider calls): 1 ms to 2 minutes.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The tracing target of delivery tracking events; every stored delivery event is logged
/// under it and, with OTLP on, exported as an OpenTelemetry log record.
pub use herald_domain::TRACKING_TARGET;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A global subscriber is already installed.
    #[error("a tracing subscriber is already installed: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
    /// An OpenTelemetry exporter or the Prometheus registry could not be built.
    #[error("opentelemetry: {0}")]
    Exporter(String),
    /// The Prometheus endpoint could not listen.
    #[error("cannot serve metrics on {address}: {source}")]
    Bind {
        /// `telemetry.prometheus_listen`.
        address: std::net::SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// Keeps telemetry alive; dropping it flushes and shuts down the OTLP exporters.
#[must_use = "telemetry stops when the guard is dropped"]
pub struct TelemetryGuard {
    service_name: &'static str,
    tracer_provider: Option<SdkTracerProvider>,
    logger_provider: Option<SdkLoggerProvider>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TelemetryGuard")
            .field("service_name", &self.service_name)
            .field("otlp", &self.tracer_provider.is_some())
            .finish()
    }
}

impl TelemetryGuard {
    /// Exports every finished span and log record now (tests await their arrival).
    pub fn flush(&self) {
        if let Some(provider) = &self.tracer_provider
            && let Err(error) = provider.force_flush()
        {
            tracing::warn!(error = %error, "Could not flush spans.");
        }
        if let Some(provider) = &self.logger_provider
            && let Err(error) = provider.force_flush()
        {
            tracing::warn!(error = %error, "Could not flush log records.");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        tracing::debug!(service.name = self.service_name, "Telemetry shutting down.");
        if let Some(provider) = self.tracer_provider.take() {
            let _flushed = provider.shutdown();
        }
        if let Some(provider) = self.logger_provider.take() {
            let _flushed = provider.shutdown();
        }
    }
}

/// The OpenTelemetry resource of `service_name`: `service.name`, `service.version`, the
/// configured attributes and `OTEL_RESOURCE_ATTRIBUTES`.
pub fn resource(
    settings: &TelemetrySettings,
    service_name: &'static str,
) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_attributes(
            settings
                .resource_attributes
                .iter()
                .map(|(key, value)| opentelemetry::KeyValue::new(key.clone(), value.clone())),
        )
        .build()
}

/// Installs the global subscriber for `service_name`: logs (pretty or JSON), and with
/// `otlp_endpoint` set, spans exported over OTLP (W3C trace context propagation,
/// parent-based ratio sampling) and tracking events and warnings as OTLP log records.
///
/// Must be called inside a Tokio runtime (the OTLP exporters use tonic). Returns an error
/// when a global subscriber is already installed or an exporter cannot be built.
pub fn init(
    settings: &TelemetrySettings,
    service_name: &'static str,
) -> Result<TelemetryGuard, Error> {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log_filter));
    let output = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().compact().boxed(),
    };
    let (tracer_provider, logger_provider) = if settings.otlp_endpoint.is_empty() {
        (None, None)
    } else {
        let (tracer, logger) = otlp_providers(settings, service_name)?;
        (Some(tracer), Some(logger))
    };
    let spans = tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service_name))
            .with_filter(EnvFilter::new(&settings.log_filter))
    });
    let records = logger_provider.as_ref().map(|provider| {
        opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(provider)
            .with_filter(
                Targets::new()
                    .with_target(TRACKING_TARGET, LevelFilter::INFO)
                    .with_default(LevelFilter::WARN),
            )
    });
    tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .with(spans)
        .with(records)
        .try_init()?;
    tracing::info!(
        service.name = service_name,
        otlp = !settings.otlp_endpoint.is_empty(),
        "Telemetry initialised."
    );
    Ok(TelemetryGuard {
        service_name,
        tracer_provider,
        logger_provider,
    })
}

fn otlp_providers(
    settings: &TelemetrySettings,
    service_name: &'static str,
) -> Result<(SdkTracerProvider, SdkLoggerProvider), Error> {
    use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&settings.otlp_endpoint)
        .with_compression(opentelemetry_otlp::Compression::Gzip)
        .build()
        .map_err(|error| Error::Exporter(format!("span exporter: {error}")))?;
    let tracer_provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.trace_sample_ratio,
        ))))
        .with_resource(resource(settings, service_name))
        .build();
    let exporter = opentelemetry_otlp::LogExporter::builder()
        .with_tonic()
        .with_endpoint(&settings.otlp_endpoint)
        .with_compression(opentelemetry_otlp::Compression::Gzip)
        .build()
        .map_err(|error| Error::Exporter(format!("log exporter: {error}")))?;
    let logger_provider = SdkLoggerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(settings, service_name))
        .build();
    Ok((tracer_provider, logger_provider))
}
