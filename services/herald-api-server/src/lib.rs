#![doc = include_str!("../README.md")]

mod admin;
mod auth;
mod error;
mod fields;
mod inbox;
mod observe;
mod paging;
mod preference;
mod quota;
mod submit;
mod template;
mod templates_cache;
mod tracking;
mod writer;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use herald_config::{
    DatabaseSettings, GrpcServerSettings, PolicySettings, RedisSettings, ServerTlsSettings,
    TelemetrySettings, Validate,
};
use herald_proto::admin::admin_service_server::AdminServiceServer;
use herald_proto::inbox::inbox_service_server::InboxServiceServer;
use herald_proto::preference::preference_service_server::PreferenceServiceServer;
use herald_proto::submit::submit_service_server::SubmitServiceServer;
use herald_proto::template::template_service_server::TemplateServiceServer;
use herald_proto::tracking::tracking_service_server::TrackingServiceServer;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use auth::{AuthSettings, Caller, PrincipalSettings};

/// The entry of the fuzz target `submit_request`: an encoded `SubmitBatchRequest` validated
/// as `SubmitBatch` validates it, checking that nothing accepted holds what PostgreSQL would
/// refuse. `./scripts/test` replays the fuzz corpus through it.
///
/// # Panics
/// When an accepted item breaks those rules.
pub fn check_submit_fuzz_input(data: &[u8]) {
    submit::check_fuzz_input(data);
}

/// The binary, package, Deployment and `service.name`.
pub const SERVICE_NAME: &str = "herald-api-server";

/// Everything the API server reads from configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Listener.
    pub grpc: GrpcServerSettings,
    /// Server certificate and the client CA.
    pub tls: ServerTlsSettings,
    /// PostgreSQL.
    pub database: DatabaseSettings,
    /// Redis (submit quotas, inbox fan-out).
    pub redis: RedisSettings,
    /// Which identities may do what.
    pub auth: AuthSettings,
    /// Mandatory categories and quiet-hours bypasses.
    pub policy: PolicySettings,
    /// Submit limits.
    pub submit: SubmitSettings,
    /// Logging.
    pub telemetry: TelemetrySettings,
    /// Lifecycle.
    pub server: ServerSettings,
    /// The in-app inbox's live streams (Redis pub/sub fan-out).
    pub inbox: herald_inbox::InboxSettings,
    /// RabbitMQ, asked for queue depths by `AdminService.GetQueueStats`.
    pub amqp: herald_config::AmqpSettings,
}

/// Limits on submits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubmitSettings {
    /// Most recipients in one submit.
    pub max_recipients: usize,
    /// How long an idempotency key stays bound to its notification.
    #[serde(with = "humantime_serde")]
    pub idempotency_retention: Duration,
    /// Submits per caller per minute (0 = unlimited); `auth.principals[].quota_per_minute`
    /// overrides it per identity.
    pub quota_per_minute: u64,
    /// The fixed window the quota counts over: a minute. Tests stretch it so that no window
    /// boundary (which resets the count) can fall inside a test.
    #[serde(with = "humantime_serde")]
    pub quota_window: Duration,
    /// Most notifications one group-commit transaction writes.
    pub batch_max_items: usize,
    /// Most deliveries one group-commit transaction writes.
    pub batch_max_deliveries: usize,
    /// How long a batch waits for more submits while other batches are being committed.
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    /// Group-commit transactions in flight at once (each holds a pooled connection).
    pub writers: usize,
    /// Most deliveries one `SubmitBatch` call may create (recipients times channels, summed
    /// over its items).
    pub batch_call_max_deliveries: usize,
    /// Largest request message the API accepts, in bytes (`SubmitBatch` calls are the big
    /// ones); over it a call is `RESOURCE_EXHAUSTED`.
    pub max_request_bytes: usize,
}

impl Default for SubmitSettings {
    fn default() -> Self {
        Self {
            max_recipients: 1000,
            idempotency_retention: Duration::from_secs(24 * 60 * 60),
            quota_per_minute: 60_000,
            quota_window: Duration::from_secs(60),
            batch_max_items: 500,
            batch_max_deliveries: 5_000,
            batch_linger: Duration::from_millis(1),
            writers: 3,
            batch_call_max_deliveries: 100_000,
            max_request_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Server lifecycle.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// How long in-flight requests may take to finish after a shutdown signal.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace_period: Duration,
    /// Serve gRPC server reflection (to configured principals only), for tools such as
    /// grpcurl; off, it answers `UNIMPLEMENTED`.
    pub reflection: bool,
    /// HTTP/2 streams (calls) one client connection may have open at once.
    pub max_concurrent_streams: u32,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            shutdown_grace_period: Duration::from_secs(20),
            reflection: true,
            max_concurrent_streams: 256,
        }
    }
}

impl Validate for Settings {
    fn validate(&self, problems: &mut Vec<String>) {
        self.tls.validate(problems);
        self.database.validate(problems);
        self.redis.validate(problems);
        self.auth.validate(problems);
        self.inbox.validate(problems);
        self.telemetry.validate(problems);
        self.amqp.validate(problems);
        if self.submit.batch_max_items == 0 || self.submit.batch_max_deliveries == 0 {
            problems.push(
                "submit.batch_max_items and submit.batch_max_deliveries must be at least 1".into(),
            );
        }
        if self.submit.writers == 0 || self.submit.writers >= self.database.max_connections {
            problems.push(format!(
                "submit.writers must be at least 1 and below database.max_connections ({}), which the other calls share",
                self.database.max_connections
            ));
        }
        if self.submit.quota_window < Duration::from_secs(1) {
            problems.push("submit.quota_window must be at least 1s".into());
        }
        if self.submit.idempotency_retention < Duration::from_secs(60) {
            problems.push("submit.idempotency_retention must be at least 1m".into());
        }
        if self.submit.max_recipients == 0 {
            problems.push("submit.max_recipients must be at least 1".into());
        }
    }
}

/// Shared state of the gRPC handlers.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) clock: herald_domain::SharedClock,
    pub(crate) pool: herald_db::Pool,
    pub(crate) redis: herald_redis::RedisCache,
    pub(crate) settings: std::sync::Arc<Settings>,
    /// Templates by key and version, kept fresh by `NOTIFY`.
    pub(crate) templates: templates_cache::TemplateCache,
    /// Group commit for submits.
    pub(crate) writer: writer::SubmitWriter,
    /// Submit quota tokens this replica holds.
    pub(crate) quota: std::sync::Arc<quota::QuotaLeases>,
}

/// A bound, ready-to-run API server.
pub struct Application {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    settings: Settings,
    pool: herald_db::Pool,
    redis: herald_redis::RedisCache,
    clock: herald_domain::SharedClock,
    inbox_hub: herald_inbox::InboxHub,
    inbox_publisher: herald_inbox::InboxPublisher,
    metrics: herald_service::ServiceMetrics,
}

impl Application {
    /// Binds the listener and prepares the pool (connections open lazily).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool =
            herald_db::build_pool(&settings.database).context("building the database pool")?;
        let redis =
            herald_redis::RedisCache::new(&settings.redis).context("building the Redis pool")?;
        let inbox_hub = herald_inbox::InboxHub::new(&settings.redis, settings.inbox.clone())
            .context("building the inbox fan-out")?;
        let inbox_publisher = herald_inbox::InboxPublisher::new(&settings.redis)
            .context("building the inbox publisher")?;
        let listener = tokio::net::TcpListener::bind(settings.grpc.listen)
            .await
            .with_context(|| format!("binding {}", settings.grpc.listen))?;
        let local_addr = listener.local_addr()?;
        let metrics = herald_service::ServiceMetrics::new(&settings.telemetry, SERVICE_NAME)
            .context("starting metrics")?;
        Ok(Self {
            listener,
            local_addr,
            settings,
            pool,
            redis,
            clock: std::sync::Arc::new(herald_domain::SystemClock),
            inbox_hub,
            inbox_publisher,
            metrics,
        })
    }

    /// Uses `clock` for scheduling and quiet hours (tests inject a manual one).
    #[must_use]
    pub fn with_clock(mut self, clock: herald_domain::SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where Prometheus metrics are served, when `telemetry.prometheus_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, reports NOT_SERVING and
    /// lets in-flight calls finish within the grace period.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let certificates = herald_tls::ServerCertificates::load(&self.settings.tls)
            .context("loading TLS material")?;
        tokio::spawn(certificates.clone().watch(shutdown.clone()));
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        report_health(&health_reporter, tonic_health::ServingStatus::Serving).await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(herald_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;

        self.metrics
            .serve(&shutdown, herald_db::readiness(&self.pool));
        let grace_period = self.settings.server.shutdown_grace_period;
        let templates = templates_cache::TemplateCache::default();
        let connector = herald_db::Connector::new(&self.settings.database)
            .context("reading the database TLS settings")?;
        tokio::spawn(templates.clone().listen(connector, shutdown.clone()));
        templates.wait_listening(Duration::from_secs(2)).await;
        let writer = writer::SubmitWriter::spawn(
            self.pool.clone(),
            writer::WriterLimits {
                max_items: self.settings.submit.batch_max_items,
                max_deliveries: self.settings.submit.batch_max_deliveries,
                linger: self.settings.submit.batch_linger,
                writers: self.settings.submit.writers,
            },
        );
        let state = AppState {
            clock: self.clock,
            pool: self.pool,
            redis: self.redis,
            settings: std::sync::Arc::new(self.settings),
            templates,
            writer,
            quota: std::sync::Arc::default(),
        };
        // The fan-out task: one Redis pub/sub connection feeding every Subscribe stream.
        tokio::spawn(self.inbox_hub.clone().run(shutdown.clone()));
        let preferences =
            preference::PreferenceApi::new(state.clone(), self.inbox_publisher.clone());
        let inbox = inbox::InboxApi::new(
            state.clone(),
            self.inbox_hub,
            self.inbox_publisher,
            shutdown.clone(),
        );
        let reflection_on = state.settings.server.reflection;
        let max_concurrent_streams = state.settings.server.max_concurrent_streams;
        let (routes, authenticator) = herald_routes(state, preferences, inbox)?;
        // Health and reflection answer configured principals only, with no permission needed.
        let mut routes = routes.add_service(authenticator.guard(health_service));
        if reflection_on {
            routes = routes.add_service(authenticator.guard(reflection));
        }

        // Handshakes run beside the accept loop, each within a deadline, with the certificates,
        // client CAs and CRLs as last reloaded; accepted sockets get TCP_NODELAY (a small unary
        // response would otherwise wait for Nagle's delayed ACK). The accept loop stops with
        // `shutdown`, like tonic's own listener.
        let incoming = certificates.incoming(self.listener, shutdown.clone());
        tracing::info!(address = %self.local_addr, "API server listening (mutual TLS).");
        let stopping = shutdown.clone();
        let drain_started = CancellationToken::new();
        let drain_signal = drain_started.clone();
        let server = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(max_concurrent_streams))
            .layer(observe::RpcLayer::new(self.metrics.metrics()))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                stopping.cancelled().await;
                report_health(&health_reporter, tonic_health::ServingStatus::NotServing).await;
                drain_signal.cancel();
            });
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => result.context("serving gRPC")?,
            () = async {
                drain_started.cancelled().await;
                tokio::time::sleep(grace_period).await;
            } => {
                tracing::warn!(grace_period_ms = grace_period.as_millis() as u64, "In-flight calls did not finish within the grace period.");
            }
        }
        tracing::info!("API server stopped.");
        Ok(())
    }
}

/// Herald's own services, each behind the authenticator.
fn herald_routes(
    state: AppState,
    preferences: preference::PreferenceApi,
    inbox: inbox::InboxApi,
) -> anyhow::Result<(tonic::service::Routes, auth::Authenticator)> {
    let authenticator = auth::Authenticator::new(&state.settings.auth)?;
    let submit = authenticator.guard(
        SubmitServiceServer::new(submit::SubmitApi::new(state.clone()))
            .max_decoding_message_size(state.settings.submit.max_request_bytes),
    );
    let templates = authenticator.guard(TemplateServiceServer::new(template::TemplateApi::new(
        state.clone(),
    )));
    let preferences = authenticator.guard(PreferenceServiceServer::new(preferences));
    let inbox = authenticator.guard(InboxServiceServer::new(inbox));
    let tracking = authenticator.guard(TrackingServiceServer::new(tracking::TrackingApi::new(
        state.clone(),
    )));
    let admin = authenticator.guard(AdminServiceServer::new(admin::AdminApi::new(state)));
    let routes = tonic::service::Routes::new(submit)
        .add_service(templates)
        .add_service(preferences)
        .add_service(admin)
        .add_service(inbox)
        .add_service(tracking);
    Ok((routes, authenticator))
}

/// Every service the API serves, by the name the gRPC health service knows it by, and `""`
/// (the server as a whole): SERVING once it serves, NOT_SERVING as soon as the drain begins,
/// so that load balancers watching health stop sending calls before connections close.
const HEALTH_CHECKED: [&str; 7] = [
    "",
    <SubmitServiceServer<submit::SubmitApi> as tonic::server::NamedService>::NAME,
    <TemplateServiceServer<template::TemplateApi> as tonic::server::NamedService>::NAME,
    <AdminServiceServer<admin::AdminApi> as tonic::server::NamedService>::NAME,
    <PreferenceServiceServer<preference::PreferenceApi> as tonic::server::NamedService>::NAME,
    <InboxServiceServer<inbox::InboxApi> as tonic::server::NamedService>::NAME,
    <TrackingServiceServer<tracking::TrackingApi> as tonic::server::NamedService>::NAME,
];

async fn report_health(
    reporter: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    for service in HEALTH_CHECKED {
        reporter.set_service_status(service, status).await;
    }
}
