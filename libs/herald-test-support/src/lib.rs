#![doc = include_str!("../README.md")]
#![allow(clippy::print_stderr)]

mod apns;
mod database;
mod fcm;
mod huge_body;
mod keyspace;
mod otlp;
mod proxy;
pub mod seed;
mod sms;
mod smtp;
mod vhost;
mod webhook;

use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use apns::{ApnsServer, ReceivedNotification};
pub use database::TestDatabase;
pub use fcm::FcmServer;
pub use huge_body::{HUGE_BODY_BYTES, HugeBodyServer};
pub use keyspace::TestKeyspace;
pub use otlp::{OtlpReceiver, ReceivedLog, ReceivedSpan};
pub use proxy::FaultProxy;
pub use sms::{SmsGatewayServer, SmsMessage, TwilioServer};
pub use smtp::{ReceivedEmail, SmtpServer};
pub use vhost::TestVhost;
pub use webhook::{ReceivedRequest, WebhookReceiver};

/// Reads a required test variable or panics with the way to get it.
///
/// # Panics
/// When the variable is unset: tests never skip silently.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set. Run the tests through ./scripts/test, which starts PostgreSQL, \
             Redis, RabbitMQ and aiosmtpd and exports TEST_DATABASE_URL, TEST_REDIS_URL, \
             TEST_AMQP_URL, TEST_AMQP_ADMIN_URL and TEST_AIOSMTPD_PYTHON (or eval \"$(./scripts/deps)\")."
        )
    })
}

/// A loopback port nothing listens on right now (it was bound and released): for a server a
/// test starts itself. A dependency that must stay unreachable takes `refused_port`.
///
/// # Panics
/// When no loopback port is free.
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A loopback port that refuses every connection until the test process ends, for a server
/// that must be unreachable: a socket is bound to it and never listens, so no other server
/// (another test's, running in parallel) can take the port meanwhile, which a port merely found
/// free by `unused_port` could not promise.
///
/// # Panics
/// When no loopback port is free.
pub fn refused_port() -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("a free loopback port");
    let port = socket.local_addr().expect("the bound address").port();
    // Held, never listening, for the life of the test process (each test runs in its own).
    std::mem::forget(socket);
    port
}

/// Locks `mutex`, carrying on through poisoning: test servers keep serving after a handler
/// panicked.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves `app` over plain HTTP on a free loopback port until the task is aborted.
///
/// # Panics
/// When no loopback port is free.
pub(crate) async fn serve(
    app: axum::Router,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free loopback port");
    let address = listener.local_addr().expect("the server's address");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (address, task)
}

/// The socket address a `scheme://user:pass@host:port/...` URL points to.
///
/// # Panics
/// When the URL has no host and port that resolve to an address.
pub fn socket_address_of(url: &str) -> std::net::SocketAddr {
    let parsed =
        reqwest::Url::parse(url).unwrap_or_else(|error| panic!("{url} is not a URL: {error}"));
    let host = parsed.host_str().unwrap_or("127.0.0.1");
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let port = parsed
        .port_or_known_default()
        .unwrap_or_else(|| match parsed.scheme() {
            "postgres" | "postgresql" => 5432,
            "amqp" => 5672,
            "redis" => 6379,
            other => panic!("no default port for {other}"),
        });
    format!("{host}:{port}")
        .parse()
        .unwrap_or_else(|error| panic!("{host}:{port} is not a socket address: {error}"))
}

/// A unique, time-stamped name for a test resource: `<prefix><separator><secs><separator><rand>`.
pub(crate) fn unique_name(prefix: &str, separator: char) -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default();
    format!(
        "{prefix}{separator}{seconds}{separator}{:08x}",
        rand::random::<u32>()
    )
}

/// True when a name made by `unique_name` is more than an hour old.
pub(crate) fn is_stale(name: &str, separator: char) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default();
    name.split(separator)
        .nth(1)
        .and_then(|seconds| seconds.parse::<u64>().ok())
        .is_some_and(|created| now.saturating_sub(created) > 3600)
}

/// Runs `work` to completion on a fresh runtime in a new thread; used by `Drop` impls, which
/// cannot await.
pub(crate) fn block_on_thread<F>(work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let handle = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(work);
        }
    });
    let _joined = handle.join();
}

/// Development certificates, generated once per test process.
#[derive(Debug)]
pub struct TestCerts {
    dir: tempfile::TempDir,
}

impl TestCerts {
    /// The process-wide set.
    ///
    /// # Panics
    /// If certificates cannot be generated (disk full, for instance).
    pub fn get() -> &'static TestCerts {
        static CERTS: OnceLock<TestCerts> = OnceLock::new();
        CERTS.get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temporary directory for certificates");
            herald_certs_dev::generate(dir.path()).expect("generating test certificates");
            TestCerts { dir }
        })
    }

    /// Path of one generated file, e.g. `path("orders.pem")`.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Encryption settings over this set's keys (`keys/`), the same in every test of the
    /// process.
    pub fn encryption(&self) -> herald_config::EncryptionSettings {
        herald_config::EncryptionSettings {
            key_dir: self.path("keys"),
            ..herald_config::EncryptionSettings::default()
        }
    }

    /// Installs the process's keyring from `encryption` unless one is installed, for tests
    /// that write personal columns without building a pool.
    ///
    /// # Panics
    /// If the generated keys cannot be read.
    pub fn install_keyring(&self) {
        if !herald_crypto::is_installed() {
            herald_crypto::install(
                herald_crypto::Keyring::load(&self.encryption()).expect("the test keys load"),
            );
        }
    }
}

/// Polls `check` every 25 ms until it yields `Some`, for at most `timeout`.
///
/// # Panics
/// When `timeout` passes first, naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Installs a test subscriber once; silent unless `TEST_LOG=1`.
pub fn init_test_tracing() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        if std::env::var("TEST_LOG").is_ok_and(|value| value == "1") {
            let _ignored = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_test_writer()
                .try_init();
        }
    });
}
