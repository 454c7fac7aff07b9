//! Metrics: one OpenTelemetry meter provider per service, read by a Prometheus registry
//! (served as text on `GET /metrics`) and, with OTLP on, pushed to the collector.

use std::net::SocketAddr;
use std::sync::Arc;

use herald_config::TelemetrySettings;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::Encoder as _;
use tokio_util::sync::CancellationToken;

use crate::Readiness;

use crate::Error;

/// A service's metrics. Cheap to clone; every clone records into the same provider.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    service_name: &'static str,
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Pushes the last figures over OTLP; nothing to do when that fails at exit.
        let _flushed = self.provider.shutdown();
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Metrics")
            .field("service_name", &self.inner.service_name)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics of `service_name`, readable in Prometheus text and, when `otlp_endpoint` is
    /// set, pushed over OTLP every `metrics_export_interval` (call inside a Tokio runtime).
    pub fn new(settings: &TelemetrySettings, service_name: &'static str) -> Result<Self, Error> {
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .build()
            .map_err(|error| Error::Exporter(format!("prometheus exporter: {error}")))?;
        let mut builder = SdkMeterProvider::builder()
            .with_reader(prometheus)
            .with_resource(crate::resource(settings, service_name));
        if !settings.otlp_endpoint.is_empty() {
            use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(&settings.otlp_endpoint)
                .with_compression(opentelemetry_otlp::Compression::Gzip)
                .build()
                .map_err(|error| Error::Exporter(format!("metric exporter: {error}")))?;
            builder = builder.with_reader(
                opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
                    .with_interval(settings.metrics_export_interval)
                    .build(),
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                service_name,
                provider: builder.build(),
                registry,
            }),
        })
    }

    /// Metrics kept only for the Prometheus text (no OTLP): for tests and tools.
    pub fn local(service_name: &'static str) -> Self {
        Self::new(&TelemetrySettings::default(), service_name).unwrap_or_else(|error| {
            unreachable!("a Prometheus-only provider always builds: {error}")
        })
    }

    /// The meter instruments are created from.
    pub fn meter(&self) -> Meter {
        self.inner.provider.meter(self.inner.service_name)
    }

    /// Every metric in the Prometheus text exposition format.
    pub fn prometheus_text(&self) -> String {
        let mut buffer = Vec::new();
        let families = self.inner.registry.gather();
        if let Err(error) = prometheus::TextEncoder::new().encode(&families, &mut buffer) {
            tracing::warn!(error = %error, "Could not encode metrics.");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// The bound Prometheus endpoint of a service (`GET /metrics`).
#[derive(Debug)]
pub struct MetricsEndpoint {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
}

impl MetricsEndpoint {
    /// Binds `address` now, so a taken port fails at start-up and port 0 is resolved. Call
    /// inside a Tokio runtime.
    pub fn bind(address: SocketAddr) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    /// Binds `settings.prometheus_listen` when it is set.
    pub fn bind_configured(settings: &TelemetrySettings) -> Result<Option<Self>, Error> {
        settings
            .prometheus_listen
            .map(|address| Self::bind(address).map_err(|source| Error::Bind { address, source }))
            .transpose()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `metrics` on `/metrics`, liveness on `/healthz` and `readiness` on `/readyz`
    /// until `shutdown` is cancelled. Every `/readyz` probe and every `/metrics` scrape runs
    /// the readiness checks and sets `herald.dependency.up` (1 reachable, 0 not) per
    /// dependency, so the gauge says what `/readyz` says.
    pub async fn serve(self, metrics: Metrics, readiness: Readiness, shutdown: CancellationToken) {
        let dependencies = DependencyGauge::new(&metrics, readiness);
        let router = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .route(
                "/readyz",
                axum::routing::get({
                    let dependencies = dependencies.clone();
                    move || {
                        let dependencies = dependencies.clone();
                        async move { ready_answer(&dependencies).await }
                    }
                }),
            )
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let metrics = metrics.clone();
                    let dependencies = dependencies.clone();
                    async move {
                        dependencies.check().await;
                        (
                            [(
                                http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            metrics.prometheus_text(),
                        )
                    }
                }),
            );
        tracing::info!(address = %self.local_addr, "Serving /metrics, /healthz and /readyz.");
        if let Err(error) = axum::serve(self.listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
        {
            tracing::warn!(error = %error, "The metrics endpoint stopped.");
        }
    }
}

/// The readiness checks and the `herald.dependency.up` gauge they set.
#[derive(Clone)]
struct DependencyGauge {
    readiness: Readiness,
    up: opentelemetry::metrics::Gauge<i64>,
}

impl DependencyGauge {
    fn new(metrics: &Metrics, readiness: Readiness) -> Self {
        let up = metrics
            .meter()
            .i64_gauge("herald.dependency.up")
            .with_description(
                "Whether a dependency /readyz checks is reachable (1) or not (0), by dependency",
            )
            .build();
        Self { readiness, up }
    }

    /// Runs the checks and records each result.
    async fn check(&self) -> Vec<(&'static str, bool)> {
        let results = self.readiness.check_each().await;
        for (dependency, reachable) in &results {
            self.up.record(
                i64::from(*reachable),
                &[opentelemetry::KeyValue::new(
                    "herald.dependency",
                    *dependency,
                )],
            );
        }
        results
    }
}

/// `/readyz`: 200 listing the dependencies checked, or 503 naming those unreachable.
async fn ready_answer(dependencies: &DependencyGauge) -> (http::StatusCode, String) {
    match crate::readiness::verdict(&dependencies.check().await) {
        Ok(checked) => (
            http::StatusCode::OK,
            format!("ready: {}\n", checked.join(", ")),
        ),
        Err(unreachable) => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready, unreachable: {}\n", unreachable.join(", ")),
        ),
    }
}
