#![doc = include_str!("../README.md")]

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use herald_config::{DatabaseSettings, TelemetrySettings, Validate};
use herald_db::events::{self, Engagement, EngagementKind, Recorded};
use herald_db::personal::PersonalText;
use herald_tracking::{Link, Signer, Target, TrackingSettings};
use secrecy::ExposeSecret;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// The binary, package, Deployment and `service.name`.
pub const SERVICE_NAME: &str = "herald-tracker";

/// A 1×1 transparent GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Tracking responses must reach the tracker every time (a cached pixel is an unseen open).
const NO_CACHE: &str = "no-store, no-cache, must-revalidate, private, max-age=0";

/// Everything the tracker reads from configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// PostgreSQL (where events are recorded).
    pub database: DatabaseSettings,
    /// The signing secret, link lifetime and listen address.
    pub tracking: TrackingSettings,
    /// Logging.
    pub telemetry: TelemetrySettings,
}

impl Validate for Settings {
    fn validate(&self, problems: &mut Vec<String>) {
        self.database.validate(problems);
        self.tracking.validate(problems);
        self.telemetry.validate(problems);
        // The tracker verifies links whether or not this deployment's workers add them.
        if !self.tracking.enabled && self.tracking.secret.expose_secret().len() < 32 {
            problems.push(
                "tracking.secret must be at least 32 bytes for herald-tracker (set HERALD__TRACKING__SECRET)"
                    .into(),
            );
        }
    }
}

struct Tracker {
    pool: herald_db::Pool,
    signer: Signer,
    /// Tracking requests by kind (`opened`, `clicked`) and result (`recorded`, `repeat`,
    /// `refused`, `unknown_delivery`, `error`).
    requests: opentelemetry::metrics::Counter<u64>,
}

/// The tracker, bound and ready to run.
pub struct Application {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    router: Router,
    metrics: herald_service::ServiceMetrics,
    readiness: herald_telemetry::Readiness,
}

impl Application {
    /// Binds `tracking.listen` (port 0 picks a free port) and prepares the pool (connections
    /// open lazily).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool =
            herald_db::build_pool(&settings.database).context("building the database pool")?;
        let listener = tokio::net::TcpListener::bind(settings.tracking.listen)
            .await
            .with_context(|| format!("binding {}", settings.tracking.listen))?;
        let local_addr = listener.local_addr()?;
        let metrics = herald_service::ServiceMetrics::new(&settings.telemetry, SERVICE_NAME)?;
        let readiness = herald_db::readiness(&pool);
        let tracker = Arc::new(Tracker {
            pool,
            signer: Signer::new(&settings.tracking),
            requests: metrics
                .metrics()
                .meter()
                .u64_counter("herald.tracking.requests")
                .with_description("Open-pixel and click requests, by kind and result")
                .build(),
        });
        let router = Router::new()
            .route("/o/{token}", get(open))
            .route("/c/{token}", get(click))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(tracker);
        Ok(Self {
            listener,
            local_addr,
            router,
            metrics,
            readiness,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where Prometheus metrics are served, when `telemetry.prometheus_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests finish.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.metrics.serve(&shutdown, self.readiness.clone());
        tracing::info!(address = %self.local_addr, "Tracker listening.");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("serving HTTP")?;
        tracing::info!("Tracker stopped.");
        Ok(())
    }
}

async fn open(State(tracker): State<Arc<Tracker>>, Path(token): Path<String>) -> Response {
    let Some(link) = tracker.verify(&token, false) else {
        tracker.count(EngagementKind::Opened, "refused");
        return not_found();
    };
    tracker.record(&link, EngagementKind::Opened).await;
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/gif")),
            (header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE)),
            (header::PRAGMA, HeaderValue::from_static("no-cache")),
            (header::EXPIRES, HeaderValue::from_static("0")),
        ],
        PIXEL,
    )
        .into_response()
}

async fn click(State(tracker): State<Arc<Tracker>>, Path(token): Path<String>) -> Response {
    let Some(link) = tracker.verify(&token, true) else {
        tracker.count(EngagementKind::Clicked, "refused");
        return not_found();
    };
    let Target::Click { url } = &link.target else {
        return not_found();
    };
    let Ok(location) = HeaderValue::from_str(&location(url)) else {
        return not_found();
    };
    tracker.record(&link, EngagementKind::Clicked).await;
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE)),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
    )
        .into_response()
}

/// `url` as a `Location` value, which must be visible ASCII: a template's link may hold raw
/// spaces or non-ASCII characters (`https://example.com/café`), which a browser following the
/// untracked link would percent-encode (UTF-8), so the redirect does the same; ASCII tabs and
/// newlines, which a browser drops from URLs, are dropped.
fn location(url: &str) -> String {
    /// Controls, space, DEL and every non-ASCII byte; `%` itself stays (already encoded).
    const NOT_VISIBLE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b' ');
    let url: String = url
        .chars()
        .filter(|character| !matches!(character, '\t' | '\n' | '\r'))
        .collect();
    percent_encoding::utf8_percent_encode(&url, NOT_VISIBLE).to_string()
}

/// Every refused token looks the same from outside.
fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE))],
        "not found",
    )
        .into_response()
}

impl Tracker {
    fn count(&self, kind: EngagementKind, result: &'static str) {
        self.requests.add(
            1,
            &[
                opentelemetry::KeyValue::new("event.kind", kind.as_str()),
                opentelemetry::KeyValue::new("herald.result", result),
            ],
        );
    }

    /// The verified link of `token` on the click path (`click`) or the pixel path; `None`
    /// (logged without the token) when it is refused.
    fn verify(&self, token: &str, click: bool) -> Option<Link> {
        match self.signer.verify(token, Utc::now()) {
            Ok(link) if matches!(link.target, Target::Click { .. }) == click => Some(link),
            Ok(link) => {
                tracing::debug!(delivery.id = %link.delivery_id, "Tracking token used on the wrong path; refused.");
                None
            }
            Err(rejected) => {
                tracing::debug!(reason = %rejected, "Tracking token refused.");
                None
            }
        }
    }

    /// Records the engagement once (a repeat is a no-op in the database). Failures are
    /// logged: the pixel or redirect is served regardless.
    async fn record(&self, link: &Link, kind: EngagementKind) {
        let engagement = Engagement {
            delivery_id: link.delivery_id,
            kind,
            dedupe_key: link.target.dedupe_key(),
            detail: match &link.target {
                Target::Click { url } => url.as_str().into(),
                Target::Open => PersonalText::default(),
            },
        };
        let result = async {
            let mut connection = herald_db::connection(&self.pool).await?;
            events::record_engagement(&mut connection, &engagement).await
        }
        .await;
        let counted = match &result {
            Ok(Recorded::New { .. }) => "recorded",
            Ok(Recorded::Already { .. }) => "repeat",
            Ok(Recorded::UnknownDelivery) => "unknown_delivery",
            Err(_) => "error",
        };
        self.count(kind, counted);
        match result {
            Ok(Recorded::New { .. } | Recorded::Already { .. }) => {}
            Ok(Recorded::UnknownDelivery) => {
                tracing::info!(delivery.id = %link.delivery_id, event.kind = kind.as_str(), "Tracking link of a delivery that no longer exists.");
            }
            Err(error) => {
                tracing::warn!(delivery.id = %link.delivery_id, event.kind = kind.as_str(), error = %error, "Could not record a tracking event.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_with_spaces_or_non_ascii_characters_redirects_percent_encoded() {
        assert_eq!(
            location("https://shop.example/a?b=c&d=%20e#top"),
            "https://shop.example/a?b=c&d=%20e#top"
        );
        assert_eq!(
            location("https://shop.example/café menu"),
            "https://shop.example/caf%C3%A9%20menu"
        );
        assert_eq!(
            location("https://shop.example/\ta\nb"),
            "https://shop.example/ab"
        );
        assert!(HeaderValue::from_str(&location("https://shop.example/ü\u{7f}")).is_ok());
    }
}
