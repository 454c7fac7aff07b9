//! Setting sections shared by several services.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::Validate;

/// The PostgreSQL connection pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://user:password@host:port/database?options=-csearch_path%3Dschema`.
    pub url: SecretString,
    /// Pool size per process.
    pub max_connections: usize,
    /// How long to wait for a pooled connection before answering `UNAVAILABLE`.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// The keys personal data is encrypted with and lookups are hashed with.
    pub encryption: EncryptionSettings,
    /// TLS to PostgreSQL.
    pub tls: DatabaseTlsSettings,
}

/// Whether connections to PostgreSQL use TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatabaseTlsMode {
    /// Plain TCP (a database on the same host or a private network).
    #[default]
    Off,
    /// TLS required, the server's certificate verified against `ca` and the URL's host.
    VerifyFull,
}

/// TLS to PostgreSQL. The URL's own `sslmode` is overridden: `verify-full` always requires TLS.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseTlsSettings {
    /// `off` or `verify-full`.
    pub mode: DatabaseTlsMode,
    /// PEM bundle of the CA(s) that sign the server's certificate; empty trusts the public web
    /// roots (webpki-roots).
    pub ca: PathBuf,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/test"),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
            encryption: EncryptionSettings::default(),
            tls: DatabaseTlsSettings::default(),
        }
    }
}

/// Keys for personal data at rest: a directory with one file per key (a mounted Secret), the
/// key new values are encrypted under, and the key lookup hashes are computed with.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionSettings {
    /// Directory of key files: each named by its key id, holding 64 hex digits.
    pub key_dir: PathBuf,
    /// Id of the key that wraps the data keys of new values.
    pub active_key: String,
    /// Id of the HMAC key of lookup hashes (disabled contacts, rate limits, idempotency).
    pub lookup_key: String,
}

impl Default for EncryptionSettings {
    fn default() -> Self {
        Self {
            key_dir: PathBuf::from("certs-dev/generated/keys"),
            active_key: "dev-data-1".to_owned(),
            lookup_key: "dev-lookup-1".to_owned(),
        }
    }
}

impl Validate for DatabaseSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        let url = self.url.expose_secret();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            problems.push("database.url must start with postgres:// or postgresql://".into());
        }
        if self.max_connections == 0 {
            problems.push("database.max_connections must be at least 1".into());
        }
        if self.tls.mode == DatabaseTlsMode::VerifyFull
            && !self.tls.ca.as_os_str().is_empty()
            && !self.tls.ca.is_file()
        {
            problems.push(format!(
                "database.tls.ca points to {}, which is not a readable file",
                self.tls.ca.display()
            ));
        }
        let encryption = &self.encryption;
        if encryption.active_key.is_empty() || encryption.lookup_key.is_empty() {
            problems.push(
                "database.encryption.active_key and lookup_key must name keys in key_dir".into(),
            );
        } else if encryption.active_key == encryption.lookup_key {
            problems.push(
                "database.encryption.lookup_key must be a key of its own, not the active_key"
                    .into(),
            );
        }
    }
}

/// The Redis connection. Redis is a cache: when it is slow or away, callers fall back to
/// PostgreSQL, so every command is bounded by `timeout`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port/db` (`rediss://` for TLS).
    pub url: SecretString,
    /// Prefix of every key Herald writes (`<prefix>:<kind>:<id>`).
    pub key_prefix: String,
    /// Longest wait for a connection or a command before treating Redis as unavailable.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Pool size per process.
    pub max_connections: usize,
    /// With `rediss://`: PEM bundle of the CA(s) that sign the server's certificate; empty
    /// trusts the system's roots.
    pub tls_ca: PathBuf,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("redis://127.0.0.1:6379"),
            key_prefix: "herald".into(),
            timeout: Duration::from_millis(250),
            max_connections: 16,
            tls_ca: PathBuf::new(),
        }
    }
}

impl Validate for RedisSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        let url = self.url.expose_secret();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            problems.push("redis.url must start with redis:// or rediss://".into());
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            problems.push("redis.key_prefix must be non-empty without whitespace".into());
        }
        if self.timeout.is_zero() {
            problems.push("redis.timeout must be positive".into());
        }
        tls_ca_problems("redis", "rediss://", url, &self.tls_ca, problems);
    }
}

/// The RabbitMQ connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSettings {
    /// `amqp://user:password@host:port/vhost` (`amqps://` for TLS). `%2f` is the default vhost.
    pub url: SecretString,
    /// Initial delay before reconnecting after the broker goes away; doubles up to `reconnect_max`.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest delay between reconnection attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// With `amqps://`: PEM bundle of the CA(s) that sign the broker's certificate; empty
    /// trusts the system's roots.
    pub tls_ca: PathBuf,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f"),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(10),
            tls_ca: PathBuf::new(),
        }
    }
}

impl Validate for AmqpSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        let url = self.url.expose_secret();
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            problems.push("amqp.url must start with amqp:// or amqps://".into());
        }
        if self.reconnect_min > self.reconnect_max {
            problems.push("amqp.reconnect_min must not exceed amqp.reconnect_max".into());
        }
        tls_ca_problems("amqp", "amqps://", url, &self.tls_ca, problems);
    }
}

/// A `tls_ca` is only meaningful with a `tls_scheme` URL, and must then be a readable file.
fn tls_ca_problems(
    section: &str,
    tls_scheme: &str,
    url: &str,
    tls_ca: &std::path::Path,
    problems: &mut Vec<String>,
) {
    if tls_ca.as_os_str().is_empty() {
        return;
    }
    if !url.starts_with(tls_scheme) {
        problems.push(format!(
            "{section}.tls_ca is set but {section}.url does not use TLS ({tls_scheme})"
        ));
    } else if !tls_ca.is_file() {
        problems.push(format!(
            "{section}.tls_ca points to {}, which is not a readable file",
            tls_ca.display()
        ));
    }
}

/// A gRPC listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcServerSettings {
    /// Address to bind; port 0 picks a free port (tests).
    pub listen: SocketAddr,
}

impl Default for GrpcServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
        }
    }
}

/// Certificates for a TLS server that requires client certificates (mutual TLS). The files
/// are read again every `reload_interval` and on SIGHUP; new connections get what changed.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// PEM bundle of the CA(s) whose client certificates are accepted.
    pub client_ca: PathBuf,
    /// PEM certificate chain the server presents.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM files of certificate revocation lists: a client certificate they revoke is
    /// refused during the handshake.
    pub crls: Vec<PathBuf>,
    /// With `crls` given, accept a client certificate whose issuer has no CRL among them
    /// (otherwise it is refused, so a CA added without its CRL is noticed at once).
    pub allow_unknown_revocation_status: bool,
    /// How long a client may take to complete its TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; further connections wait in the listen backlog.
    pub max_pending_handshakes: usize,
    /// How often the files are read again to notice a rotation.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for ServerTlsSettings {
    fn default() -> Self {
        let dir = PathBuf::from("certs-dev/generated");
        Self {
            client_ca: dir.join("ca.pem"),
            cert: dir.join("api-server.pem"),
            key: dir.join("api-server.key"),
            crls: Vec::new(),
            allow_unknown_revocation_status: false,
            handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: 256,
            reload_interval: Duration::from_secs(30),
        }
    }
}

impl Validate for ServerTlsSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        if self.handshake_timeout.is_zero() || self.reload_interval.is_zero() {
            problems.push("tls.handshake_timeout and tls.reload_interval must be positive".into());
        }
        if self.max_pending_handshakes == 0 {
            problems.push("tls.max_pending_handshakes must be at least 1".into());
        }
        for (name, path) in [
            ("tls.client_ca", &self.client_ca),
            ("tls.cert", &self.cert),
            ("tls.key", &self.key),
        ]
        .into_iter()
        .chain(self.crls.iter().map(|crl| ("tls.crls", crl)))
        {
            if !path.is_file() {
                problems.push(format!(
                    "{name} points to {}, which is not a readable file (run ./scripts/run or cargo run -p herald-certs-dev to create dev certificates)",
                    path.display()
                ));
            }
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines for local work.
    #[default]
    Pretty,
    /// One JSON object per line, for production collectors.
    Json,
}

/// Logs, OpenTelemetry export and the Prometheus endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `pretty` or `json`.
    pub log_format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` overrides it.
    pub log_filter: String,
    /// OTLP/gRPC collector endpoint (`http://collector:4317`) receiving traces, metrics and
    /// tracking log records; empty turns OTLP export off.
    pub otlp_endpoint: String,
    /// Share of new traces sampled (0.0–1.0); a caller's sampled `traceparent` is always
    /// followed (parent-based sampling).
    pub trace_sample_ratio: f64,
    /// Extra OpenTelemetry resource attributes, e.g. `deployment.environment.name`.
    pub resource_attributes: std::collections::BTreeMap<String, String>,
    /// How often metrics are pushed over OTLP.
    #[serde(with = "humantime_serde")]
    pub metrics_export_interval: Duration,
    /// Where the service serves Prometheus text on `GET /metrics`; unset serves nothing.
    /// Port 0 picks a free port (logged at start).
    pub prometheus_listen: Option<SocketAddr>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_filter: "info".into(),
            otlp_endpoint: String::new(),
            trace_sample_ratio: 1.0,
            resource_attributes: std::collections::BTreeMap::new(),
            metrics_export_interval: Duration::from_secs(30),
            prometheus_listen: None,
        }
    }
}

impl Validate for TelemetrySettings {
    fn validate(&self, problems: &mut Vec<String>) {
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            problems.push("telemetry.trace_sample_ratio must be between 0.0 and 1.0".into());
        }
        let is_url = ["http://", "https://"]
            .iter()
            .any(|scheme| self.otlp_endpoint.starts_with(scheme));
        if !self.otlp_endpoint.is_empty() && !is_url {
            problems.push(format!(
                "telemetry.otlp_endpoint must be an http:// or https:// URL (got {:?})",
                self.otlp_endpoint
            ));
        }
        if self.metrics_export_interval < Duration::from_secs(1) {
            problems.push("telemetry.metrics_export_interval must be at least 1s".into());
        }
    }
}

/// Rules that weigh a notification's category and priority against user preferences, shared by
/// the API (at submit) and the workers (just before sending).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    /// Categories users cannot switch off (channel, category or global opt-out).
    pub mandatory_categories: Vec<String>,
    /// Critical-priority notifications of these categories ignore quiet hours.
    pub quiet_hours_bypass_categories: Vec<String>,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            mandatory_categories: vec!["security".into()],
            quiet_hours_bypass_categories: vec!["security".into()],
        }
    }
}

impl PolicySettings {
    /// What a `category` notification at `priority` may override in a user's preferences.
    pub fn overrides(
        &self,
        category: &str,
        priority: herald_domain::Priority,
    ) -> herald_domain::Overrides {
        herald_domain::Overrides {
            mandatory: self
                .mandatory_categories
                .iter()
                .any(|mandatory| mandatory == category),
            ignore_quiet_hours: priority == herald_domain::Priority::Critical
                && self
                    .quiet_hours_bypass_categories
                    .iter()
                    .any(|bypass| bypass == category),
        }
    }
}
