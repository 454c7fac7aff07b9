//! `TestApp`: the whole platform in-process against real infrastructure.

use std::net::SocketAddr;
use std::time::Duration;

use herald_config::{
    AmqpSettings, DatabaseSettings, GrpcServerSettings, RedisSettings, ServerTlsSettings,
    TelemetrySettings,
};
use herald_proto::admin::admin_service_client::AdminServiceClient;
use herald_proto::common::{Channel as WireChannel, Priority as WirePriority};
use herald_proto::submit::submit_service_client::SubmitServiceClient;
use herald_proto::submit::{
    GetNotificationRequest, Notification, NotificationStatus, Recipient, SubmitRequest,
    SubmitResponse, TemplateRef,
};
use herald_proto::template::template_service_client::TemplateServiceClient;
use herald_proto::template::{CreateTemplateRequest, EmailPart, Template, TemplateContent};
use herald_test_support::{
    FaultProxy, SmtpServer, TestCerts, TestDatabase, TestKeyspace, TestVhost, eventually,
    socket_address_of,
};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Which client certificate a test connects with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum As {
    /// `spiffe://herald.local/service/orders`, role submit.
    Orders,
    /// `spiffe://herald.local/admin/ops`, role admin.
    Admin,
    /// Trusted CA, but no role configured.
    Stranger,
    /// Signed by a CA Herald does not trust.
    Intruder,
    /// The orders identity, in a certificate the Herald CA has revoked (`ca.crl.pem`).
    Revoked,
    /// The orders identity, in a certificate that expired yesterday.
    Expired,
}

impl As {
    /// The certificate and key files of `self` among the dev certificates.
    pub(crate) fn files(self) -> (&'static str, &'static str) {
        match self {
            Self::Orders => ("orders.pem", "orders.key"),
            Self::Admin => ("admin.pem", "admin.key"),
            Self::Stranger => ("stranger.pem", "stranger.key"),
            Self::Intruder => ("intruder.pem", "intruder.key"),
            Self::Revoked => ("revoked.pem", "revoked.key"),
            Self::Expired => ("expired.pem", "expired.key"),
        }
    }
}

/// The identity of `As::Orders`.
pub(crate) const ORDERS_IDENTITY: &str = "spiffe://herald.local/service/orders";

pub(crate) struct TestApp {
    pub(crate) address: SocketAddr,
    /// Held for its `Drop`, which drops the schema.
    _database: TestDatabase,
    pub(crate) vhost: TestVhost,
    pub(crate) smtp: SmtpServer,
    pub(crate) keyspace: TestKeyspace,
    /// Every service reaches PostgreSQL through this proxy; `cut` it to take PostgreSQL away.
    pub(crate) database_proxy: FaultProxy,
    /// The relay and workers reach RabbitMQ through this proxy.
    pub(crate) amqp_proxy: FaultProxy,
    database_url: String,
    amqp_url: String,
    /// A direct pool (not through the proxy) for the test's own checks.
    pub(crate) pool: herald_db::Pool,
    clock: herald_domain::SharedClock,
    shutdown: CancellationToken,
    /// Where `herald-tracker` (open pixel, click redirects) listens.
    pub(crate) tracker_address: SocketAddr,
    /// The API server's Prometheus endpoint.
    pub(crate) api_metrics: SocketAddr,
    /// The relay's Prometheus endpoint.
    pub(crate) relay_metrics: SocketAddr,
    /// The tracker's Prometheus endpoint.
    pub(crate) tracker_metrics: SocketAddr,
}

/// Telemetry of every service a test starts: logs only, and Prometheus on a free port.
pub(crate) fn test_telemetry() -> TelemetrySettings {
    TelemetrySettings {
        prometheus_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..TelemetrySettings::default()
    }
}

/// The tracking secret the tracker and tracking email workers of every test share.
pub(crate) const TRACKING_SECRET: &str = "integration-test-tracking-secret-0123456789";

/// Options for `TestApp::spawn_with`.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Start the email worker right away.
    pub(crate) email_worker: bool,
    /// The worker's prefetch.
    pub(crate) prefetch: u16,
    /// Redis settings for the API server instead of this test's keyspace.
    pub(crate) redis: Option<RedisSettings>,
    /// Submits per caller per minute.
    pub(crate) quota_per_minute: u64,
    /// The clock of the API, relay and workers (quiet hours, `send_at`).
    pub(crate) clock: Option<herald_domain::SharedClock>,
    /// Rows the relay publishes between two vacuums of the outbox.
    pub(crate) relay_vacuum_after: u64,
    /// Most deliveries the relay packs into one queue message.
    pub(crate) relay_message_max: usize,
    /// Principals besides orders and ops (the stranger's certificate, say).
    pub(crate) principals: Vec<herald_api_server::PrincipalSettings>,
    /// The relay's retention job; off unless a test turns it on (tests that move a manual
    /// clock by days would otherwise see their deliveries cleared).
    pub(crate) retention: herald_relay::RetentionSettings,
    /// The relay's reconciler; off unless a test turns it on (a test that holds deliveries in
    /// the queue on purpose would otherwise see them published again).
    pub(crate) reconcile: herald_relay::ReconcileSettings,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            email_worker: true,
            prefetch: 8,
            redis: None,
            quota_per_minute: 0,
            clock: None,
            relay_vacuum_after: herald_relay::RelaySettings::default().vacuum_after,
            relay_message_max: herald_relay::RelaySettings::default().message_max,
            principals: Vec::new(),
            retention: herald_relay::RetentionSettings {
                personal_data_after: Duration::ZERO,
                ..herald_relay::RetentionSettings::default()
            },
            reconcile: herald_relay::ReconcileSettings {
                after: Duration::ZERO,
                ..herald_relay::ReconcileSettings::default()
            },
        }
    }
}

impl TestApp {
    /// Starts the graceful shutdown of every service, as SIGTERM would.
    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// API server, relay and email worker.
    pub(crate) async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    /// The API server's settings: port 0, the dev certificates, `database` and `redis`; the
    /// orders identity has the submit, inbox and track roles and manages contact points, ops
    /// is admin, and `principals` come on top.
    pub(crate) fn api_settings(
        database: &DatabaseSettings,
        redis: RedisSettings,
        quota_per_minute: u64,
        principals: Vec<herald_api_server::PrincipalSettings>,
    ) -> herald_api_server::Settings {
        let certs = TestCerts::get();
        herald_api_server::Settings {
            grpc: GrpcServerSettings {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            },
            tls: ServerTlsSettings {
                client_ca: certs.path("ca.pem"),
                cert: certs.path("api-server.pem"),
                key: certs.path("api-server.key"),
                crls: vec![certs.path("ca.crl.pem")],
                ..ServerTlsSettings::default()
            },
            database: database.clone(),
            redis,
            auth: herald_api_server::AuthSettings {
                principals: vec![
                    herald_api_server::PrincipalSettings {
                        identity: ORDERS_IDENTITY.into(),
                        roles: vec!["submit".into(), "inbox".into(), "track".into()],
                        permissions: vec!["contacts.read".into(), "contacts.write".into()],
                        quota_per_minute: None,
                        user_namespaces: Vec::new(),
                    },
                    herald_api_server::PrincipalSettings {
                        identity: "spiffe://herald.local/admin/ops".into(),
                        roles: vec!["admin".into()],
                        permissions: Vec::new(),
                        quota_per_minute: None,
                        user_namespaces: Vec::new(),
                    },
                ]
                .into_iter()
                .chain(principals)
                .collect(),
            },
            submit: herald_api_server::SubmitSettings {
                quota_per_minute,
                // No window boundary (which resets the count) falls inside a test.
                quota_window: Duration::from_secs(10 * 365 * 24 * 60 * 60),
                ..herald_api_server::SubmitSettings::default()
            },
            telemetry: TelemetrySettings::default(),
            ..herald_api_server::Settings::default()
        }
    }

    pub(crate) async fn spawn_with(options: Options) -> Self {
        herald_test_support::init_test_tracing();
        herald_tls::install_crypto_provider();
        let (database, vhost, smtp) =
            tokio::join!(TestDatabase::new(), TestVhost::new(), SmtpServer::start());
        let keyspace = TestKeyspace::default();
        let database_target = socket_address_of(database.url());
        let database_proxy = FaultProxy::start(database_target).await;
        let database_url = database_proxy.rewrite(database.url(), database_target);
        let amqp_target = socket_address_of(vhost.amqp_url());
        let amqp_proxy = FaultProxy::start(amqp_target).await;
        let amqp_url = amqp_proxy.rewrite(vhost.amqp_url(), amqp_target);
        let database_settings = DatabaseSettings {
            url: SecretString::from(database_url.as_str()),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(2),
            encryption: TestCerts::get().encryption(),
            ..DatabaseSettings::default()
        };
        let amqp_settings = AmqpSettings {
            url: SecretString::from(amqp_url.as_str()),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(500),
            ..AmqpSettings::default()
        };
        let pool = herald_db::build_pool(&database.settings()).expect("test pool");
        let shutdown = CancellationToken::new();

        let api_settings = Self::api_settings(
            &database_settings,
            options.redis.clone().unwrap_or_else(|| RedisSettings {
                url: SecretString::from(keyspace.url()),
                key_prefix: keyspace.prefix().to_owned(),
                ..RedisSettings::default()
            }),
            options.quota_per_minute,
            options.principals.clone(),
        );
        let api = herald_api_server::Application::build(herald_api_server::Settings {
            amqp: amqp_settings.clone(),
            telemetry: test_telemetry(),
            ..api_settings
        })
        .await
        .expect("building the API server");
        let api_metrics = api.metrics_addr().expect("the API server serves metrics");
        let clock = options
            .clock
            .clone()
            .unwrap_or_else(|| std::sync::Arc::new(herald_domain::SystemClock));
        let api = api.with_clock(clock.clone());
        let address = api.local_addr();
        tokio::spawn(api.run_until_stopped(shutdown.clone()));

        let relay = herald_relay::Application::build(herald_relay::Settings {
            database: database_settings.clone(),
            amqp: amqp_settings.clone(),
            relay: herald_relay::RelaySettings {
                batch_size: 100,
                publishers: 2,
                // Submits wake the relay (NOTIFY): with the real clock nothing else needs it,
                // so every test shows that the wake-up works. A manual clock is moved by the
                // test, which only polling notices.
                poll_interval: if options.clock.is_some() {
                    Duration::from_millis(20)
                } else {
                    Duration::from_secs(3600)
                },
                linger: herald_relay::RelaySettings::default().linger,
                cleanup_interval: Duration::from_secs(60),
                vacuum_after: options.relay_vacuum_after,
                message_max: options.relay_message_max,
            },
            retention: options.retention.clone(),
            reconcile: options.reconcile.clone(),
            telemetry: test_telemetry(),
        })
        .expect("building the relay")
        .with_clock(clock.clone());
        let relay_metrics = relay.metrics_addr().expect("the relay serves metrics");
        tokio::spawn(relay.run_until_stopped(shutdown.clone()));

        let tracker = herald_tracker::Application::build(herald_tracker::Settings {
            database: database_settings.clone(),
            tracking: herald_tracking::TrackingSettings {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                secret: SecretString::from(TRACKING_SECRET),
                ..herald_tracking::TrackingSettings::default()
            },
            telemetry: test_telemetry(),
        })
        .await
        .expect("building the tracker");
        let tracker_address = tracker.local_addr();
        let tracker_metrics = tracker.metrics_addr().expect("the tracker serves metrics");
        tokio::spawn(tracker.run_until_stopped(shutdown.clone()));

        let app = Self {
            address,
            _database: database,
            vhost,
            smtp,
            keyspace,
            database_proxy,
            amqp_proxy,
            database_url,
            amqp_url,
            pool,
            clock,
            shutdown,
            tracker_address,
            api_metrics,
            relay_metrics,
            tracker_metrics,
        };
        if options.email_worker {
            app.start_email_worker(options.prefetch);
        }
        app
    }

    /// Settings for an email worker pointed at this app's infrastructure.
    pub(crate) fn email_worker_settings(&self, prefetch: u16) -> herald_channel_worker::Settings {
        herald_channel_worker::Settings {
            database: DatabaseSettings {
                url: SecretString::from(self.database_url.as_str()),
                max_connections: 4,
                acquire_timeout: Duration::from_secs(2),
                encryption: TestCerts::get().encryption(),
                ..DatabaseSettings::default()
            },
            amqp: AmqpSettings {
                url: SecretString::from(self.amqp_url.as_str()),
                reconnect_min: Duration::from_millis(50),
                reconnect_max: Duration::from_millis(500),
                ..AmqpSettings::default()
            },
            worker: herald_worker::WorkerSettings {
                prefetch,
                retry_delays: vec![Duration::from_millis(50), Duration::from_millis(100)],
                shutdown_grace_period: Duration::from_secs(2),
                emergency_after: Duration::from_millis(500),
                emergency_poll_interval: Duration::from_millis(100),
                ..herald_worker::WorkerSettings::default()
            },
            redis: RedisSettings {
                url: SecretString::from(self.keyspace.url()),
                key_prefix: self.keyspace.prefix().to_owned(),
                ..RedisSettings::default()
            },
            // Effectively unlimited, so only the rate-limit tests (which set their own) see
            // suppressions.
            policy: herald_config::PolicySettings::default(),
            rate_limits: herald_worker::RateLimitSettings {
                default: herald_worker::LimitRule {
                    limit: 1_000_000,
                    window: Duration::from_secs(60),
                    on_redis_down: None,
                },
                ..herald_worker::RateLimitSettings::default()
            },
            smtp: herald_channel_worker::SmtpSettings {
                host: "127.0.0.1".into(),
                port: self.smtp.address().port(),
                timeout: Duration::from_secs(5),
                ..herald_channel_worker::SmtpSettings::default()
            },
            telemetry: TelemetrySettings::default(),
            // Off: only the tracking tests (which use `tracking_settings`) rewrite HTML.
            tracking: herald_tracking::TrackingSettings::default(),
            ..herald_channel_worker::Settings::default()
        }
    }

    /// Tracking on, with links pointing at this app's tracker.
    pub(crate) fn tracking_settings(&self) -> herald_tracking::TrackingSettings {
        herald_tracking::TrackingSettings {
            enabled: true,
            base_url: format!("http://{}", self.tracker_address),
            secret: SecretString::from(TRACKING_SECRET),
            ..herald_tracking::TrackingSettings::default()
        }
    }

    /// Starts an email worker with `prefetch`.
    pub(crate) fn start_email_worker(&self, prefetch: u16) {
        self.start_email_worker_with(self.email_worker_settings(prefetch));
    }

    /// Starts an email worker with `settings` (from `email_worker_settings`, adjusted).
    pub(crate) fn start_email_worker_with(&self, settings: herald_channel_worker::Settings) {
        let worker = herald_channel_worker::Application::build(
            settings,
            herald_channel_worker::WorkerChannel::Email,
        )
        .expect("building the email worker")
        .with_clock(self.clock.clone());
        tokio::spawn(worker.run_until_stopped(self.shutdown.clone()));
    }

    /// Starts an email worker (prefetch 4) that serves Prometheus metrics; returns their
    /// address and the token that stops it.
    pub(crate) fn start_email_worker_serving_metrics(&self) -> (SocketAddr, CancellationToken) {
        let mut settings = self.email_worker_settings(4);
        settings.telemetry = test_telemetry();
        let worker = herald_channel_worker::Application::build(
            settings,
            herald_channel_worker::WorkerChannel::Email,
        )
        .expect("building the worker");
        let metrics = worker.metrics_addr().expect("the worker serves metrics");
        let stop = CancellationToken::new();
        tokio::spawn(worker.run_until_stopped(stop.clone()));
        (metrics, stop)
    }

    /// Starts an email worker whose SMTP server refuses connections, so every attempt fails
    /// retryably; cancel the returned token to stop it.
    pub(crate) fn start_failing_email_worker(&self, max_attempts: u32) -> CancellationToken {
        let mut settings = self.email_worker_settings(1);
        settings.worker.max_attempts = max_attempts;
        settings.smtp.port = herald_test_support::refused_port();
        let shutdown = CancellationToken::new();
        let worker = herald_channel_worker::Application::build(
            settings,
            herald_channel_worker::WorkerChannel::Email,
        )
        .expect("building the email worker");
        tokio::spawn(worker.run_until_stopped(shutdown.clone()));
        shutdown
    }

    /// Settings for an SMS, push, in-app or chat worker pointed at this app's infrastructure:
    /// those of `email_worker_settings`; the test fills in its channel's section.
    pub(crate) fn channel_worker_settings(&self) -> herald_channel_worker::Settings {
        self.email_worker_settings(8)
    }

    /// Starts a channel worker; cancel the returned token to stop it before the app stops.
    pub(crate) fn start_channel_worker(
        &self,
        channel: herald_channel_worker::WorkerChannel,
        settings: herald_channel_worker::Settings,
    ) -> CancellationToken {
        let shutdown = self.shutdown.child_token();
        let worker = herald_channel_worker::Application::build(settings, channel)
            .expect("building the channel worker")
            .with_clock(self.clock.clone());
        tokio::spawn(worker.run_until_stopped(shutdown.clone()));
        shutdown
    }

    /// Creates a template with `content`'s parts in `category` as admin.
    pub(crate) async fn create_template_with(
        &self,
        key: &str,
        category: &str,
        content: TemplateContent,
    ) -> Template {
        self.template_client(As::Admin)
            .await
            .create_template(CreateTemplateRequest {
                key: key.into(),
                category: category.into(),
                content: Some(content),
                ..CreateTemplateRequest::default()
            })
            .await
            .expect("creating a template")
            .into_inner()
    }

    /// Starts the sentinel, alerting to `webhook_url` (if any) and by email to `email_to`
    /// through this app's SMTP server; `adjust` tweaks the rest.
    /// Returns where it serves Prometheus metrics.
    pub(crate) fn start_sentinel(
        &self,
        adjust: impl FnOnce(&mut herald_sentinel::AlertSettings),
    ) -> SocketAddr {
        let mut alerts = herald_sentinel::AlertSettings {
            scan_interval: Duration::from_millis(100),
            ..herald_sentinel::AlertSettings::default()
        };
        adjust(&mut alerts);
        let worker = self.email_worker_settings(1);
        let sentinel = herald_sentinel::Application::build(herald_sentinel::Settings {
            database: worker.database,
            alerts,
            smtp: worker.smtp,
            telemetry: test_telemetry(),
        })
        .expect("building the sentinel");
        let metrics = sentinel
            .metrics_addr()
            .expect("the sentinel serves metrics");
        tokio::spawn(sentinel.run_until_stopped(self.shutdown.clone()));
        metrics
    }

    pub(crate) async fn admin_client(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel(As::Admin).await)
    }

    /// A TLS config for `who`, trusting the Herald CA.
    pub(crate) fn tls(&self, who: As) -> ClientTlsConfig {
        let certs = TestCerts::get();
        let (cert, key) = who.files();
        herald_tls::client_config(
            &herald_tls::ClientCertificates {
                ca: certs.path("ca.pem"),
                cert: certs.path(cert),
                key: certs.path(key),
            },
            "localhost",
        )
        .expect("client TLS config")
    }

    /// An mTLS channel as `who`.
    pub(crate) async fn channel(&self, who: As) -> Channel {
        Endpoint::from_shared(format!("https://{}", self.address))
            .expect("endpoint")
            .tls_config(self.tls(who))
            .expect("tls config")
            .connect()
            .await
            .expect("connecting over mTLS")
    }

    pub(crate) async fn submit_client(&self, who: As) -> SubmitServiceClient<Channel> {
        SubmitServiceClient::new(self.channel(who).await)
    }

    pub(crate) async fn template_client(&self, who: As) -> TemplateServiceClient<Channel> {
        TemplateServiceClient::new(self.channel(who).await)
    }

    /// Creates an email template in the `transactional` category as admin.
    pub(crate) async fn create_template(
        &self,
        key: &str,
        subject: &str,
        html: &str,
        text: &str,
    ) -> Template {
        self.create_template_in("transactional", key, subject, html, text)
            .await
    }

    /// Creates an email template in `category` as admin.
    pub(crate) async fn create_template_in(
        &self,
        category: &str,
        key: &str,
        subject: &str,
        html: &str,
        text: &str,
    ) -> Template {
        self.template_client(As::Admin)
            .await
            .create_template(CreateTemplateRequest {
                key: key.into(),
                category: category.into(),
                description: String::new(),
                content: Some(TemplateContent {
                    email: Some(EmailPart {
                        subject: subject.into(),
                        html: html.into(),
                        text: text.into(),
                    }),
                    ..TemplateContent::default()
                }),
                ..CreateTemplateRequest::default()
            })
            .await
            .expect("creating a template")
            .into_inner()
    }

    /// Creates the `welcome` template used by most tests.
    pub(crate) async fn create_welcome_template(&self) -> Template {
        self.create_template(
            "welcome",
            "Welcome, {{username}}",
            "<p>Hello {{username}}, your {{item_name}} is ready.</p>",
            "Hello {{username}}, your {{item_name}} is ready.",
        )
        .await
    }

    /// Submits as `As::Orders`.
    pub(crate) async fn submit(
        &self,
        request: SubmitRequest,
    ) -> Result<SubmitResponse, tonic::Status> {
        self.submit_client(As::Orders)
            .await
            .submit(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// The notification as `As::Orders` sees it.
    pub(crate) async fn notification(&self, id: &str) -> Notification {
        self.submit_client(As::Orders)
            .await
            .get_notification(GetNotificationRequest {
                notification_id: id.into(),
            })
            .await
            .expect("GetNotification")
            .into_inner()
            .notification
            .expect("a notification")
    }

    /// Waits until the notification reaches `status`.
    pub(crate) async fn wait_for_status(
        &self,
        id: &str,
        status: NotificationStatus,
    ) -> Notification {
        let client = self.submit_client(As::Orders).await;
        eventually(
            &format!("notification {id} to become {status:?}"),
            Duration::from_secs(20),
            || {
                let mut client = client.clone();
                async move {
                    let notification = client
                        .get_notification(GetNotificationRequest {
                            notification_id: id.into(),
                        })
                        .await
                        .ok()?
                        .into_inner()
                        .notification?;
                    (notification.status() == status).then_some(notification)
                }
            },
        )
        .await
    }

    /// Waits until `count` deliveries are `queued`: published and confirmed, not yet claimed.
    /// (The work queue's depth counts messages, and the relay packs up to
    /// `relay.message_max` deliveries into one.)
    pub(crate) async fn wait_until_queued(&self, count: i64) {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use herald_db::schema::deliveries;
        eventually(
            &format!("{count} deliveries queued"),
            Duration::from_secs(20),
            || async {
                let mut connection = self.pool.get().await.ok()?;
                let queued: i64 = deliveries::table
                    .filter(deliveries::state.eq("queued"))
                    .count()
                    .get_result(&mut connection)
                    .await
                    .ok()?;
                (queued == count).then_some(())
            },
        )
        .await;
    }

    /// The error class of every recorded failure, oldest first.
    pub(crate) async fn failure_classes(&self) -> Vec<String> {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use herald_db::schema::failures;
        let mut connection = self.pool.get().await.expect("a connection");
        failures::table
            .order(failures::created_at.asc())
            .select(failures::error_class)
            .load(&mut connection)
            .await
            .expect("reading failures")
    }

    /// `(kind, provider)` of every event recorded for `delivery_id`, oldest first.
    pub(crate) async fn delivery_events(&self, delivery_id: &str) -> Vec<(String, Option<String>)> {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use herald_db::schema::delivery_events;
        let delivery_id: uuid::Uuid = delivery_id.parse().expect("a delivery id");
        let mut connection = self.pool.get().await.expect("a connection");
        delivery_events::table
            .filter(delivery_events::delivery_id.eq(delivery_id))
            .order(delivery_events::id.asc())
            .select((delivery_events::kind, delivery_events::provider))
            .load(&mut connection)
            .await
            .expect("reading delivery events")
    }

    /// `pg_dump` of this test's schema: its tables and every row, as text.
    pub(crate) async fn pg_dump(&self) -> String {
        let base_url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL is set");
        let output = tokio::process::Command::new("pg_dump")
            .arg(format!("--dbname={base_url}"))
            .arg(format!("--schema={}", self._database.schema()))
            .output()
            .await
            .expect("pg_dump runs (PostgreSQL's client tools are installed)");
        assert!(
            output.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("a text dump")
    }

    /// Every value of every personal column of this test's schema, opened with the keyring:
    /// what the sealed columns of `pg_dump` hold, in clear. JSON values come as their text.
    pub(crate) async fn opened_personal_values(&self) -> Vec<String> {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Value {
            #[diesel(sql_type = diesel::sql_types::Bytea)]
            value: herald_db::personal::PersonalText,
        }
        let mut connection = self.pool.get().await.expect("a connection");
        let mut values = Vec::new();
        for (table, column) in herald_db::personal::keys::COLUMNS {
            let rows: Vec<Value> = diesel::sql_query(format!(
                "SELECT {column} AS value FROM {table} WHERE {column} IS NOT NULL"
            ))
            .load(&mut connection)
            .await
            .expect("reading a personal column");
            values.extend(rows.into_iter().map(|row| row.value.into_inner()));
        }
        values
    }

    /// Rows in `table` of this test's schema.
    pub(crate) async fn count_rows(&self, table: &str) -> i64 {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            count: i64,
        }
        let mut connection = self.pool.get().await.expect("a connection");
        diesel::sql_query(format!("SELECT count(*) AS count FROM {table}"))
            .get_result::<Count>(&mut connection)
            .await
            .expect("counting rows")
            .count
    }

    /// Settings of another API replica on this app's database (through the proxy) and Redis
    /// keyspace; adjust them, then `spawn_api_replica_with`.
    pub(crate) fn api_replica_settings(&self) -> herald_api_server::Settings {
        Self::api_settings(
            &DatabaseSettings {
                url: SecretString::from(self.database_url.as_str()),
                max_connections: 8,
                acquire_timeout: Duration::from_secs(2),
                encryption: TestCerts::get().encryption(),
                ..DatabaseSettings::default()
            },
            RedisSettings {
                url: SecretString::from(self.keyspace.url()),
                key_prefix: self.keyspace.prefix().to_owned(),
                ..RedisSettings::default()
            },
            0,
            Vec::new(),
        )
    }

    /// Starts another API server replica on this app's database and Redis keyspace (it stops
    /// with the app); returns its address.
    pub(crate) async fn spawn_api_replica(&self) -> SocketAddr {
        self.spawn_api_replica_with(self.api_replica_settings())
            .await
    }

    /// Starts another API server replica with `settings` (from `api_replica_settings`).
    pub(crate) async fn spawn_api_replica_with(
        &self,
        settings: herald_api_server::Settings,
    ) -> SocketAddr {
        let api = herald_api_server::Application::build(settings)
            .await
            .expect("building an API replica")
            .with_clock(self.clock.clone());
        let address = api.local_addr();
        tokio::spawn(api.run_until_stopped(self.shutdown.clone()));
        address
    }

    /// An mTLS channel as `who` to the API server at `address` (this app's or a replica's).
    pub(crate) async fn channel_at(&self, address: SocketAddr, who: As) -> Channel {
        Endpoint::from_shared(format!("https://{address}"))
            .expect("endpoint")
            .tls_config(self.tls(who))
            .expect("tls config")
            .connect()
            .await
            .expect("connecting over mTLS")
    }

    /// An `InboxService` client as `who` on the API server at `address`.
    pub(crate) async fn inbox_client_at(
        &self,
        address: SocketAddr,
        who: As,
    ) -> herald_proto::inbox::inbox_service_client::InboxServiceClient<Channel> {
        herald_proto::inbox::inbox_service_client::InboxServiceClient::new(
            self.channel_at(address, who).await,
        )
    }

    /// Starts an in-app worker (`herald-channel-worker` for the in-app channel) on this app's
    /// infrastructure; cancel the returned token to stop it before the app stops.
    pub(crate) fn start_in_app_worker(&self) -> CancellationToken {
        self.start_channel_worker(
            herald_channel_worker::WorkerChannel::InApp,
            self.channel_worker_settings(),
        )
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A valid email submit of the `welcome` template to `email`.
pub(crate) fn welcome_request(email: &str) -> SubmitRequest {
    SubmitRequest {
        template: Some(TemplateRef {
            key: "welcome".into(),
            version: None,
        }),
        parameters: Some(parameters(&[
            ("username", "Ada"),
            ("item_name", "order #42"),
        ])),
        recipients: vec![Recipient {
            user_id: "user-1".into(),
            email: email.into(),
            locale: String::new(),
            ..Default::default()
        }],
        channels: vec![WireChannel::Email.into()],
        priority: WirePriority::Normal.into(),
        ..SubmitRequest::default()
    }
}

/// A parameters struct from string pairs.
pub(crate) fn parameters(pairs: &[(&str, &str)]) -> prost_types::Struct {
    let object: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(key, value)| {
            (
                (*key).to_owned(),
                serde_json::Value::String((*value).to_owned()),
            )
        })
        .collect();
    herald_proto::conversions::json_to_struct(&object)
}
