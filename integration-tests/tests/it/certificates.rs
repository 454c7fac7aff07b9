//! The API's certificates over their lifetime: a revoked or expired client certificate is
//! refused, and a rotated server certificate, client CA or CRL is served without a restart,
//! while connections made before the rotation keep working.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use herald_certs_dev::{Authority, Issued, ORDERS_IDENTITY};
use herald_config::{RedisSettings, ServerTlsSettings};
use herald_test_support::{TestCerts, TestDatabase, TestKeyspace, eventually};
use rcgen::SerialNumber;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::harness::{As, TestApp, welcome_request};

/// An API server whose TLS files live in a directory of the test's, so that it can rotate them.
struct RotatingServer {
    address: SocketAddr,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
    _database: TestDatabase,
    _keyspace: TestKeyspace,
}

impl RotatingServer {
    /// Serves the dev server certificate to clients of the dev CA, reading its files again every
    /// `reload_interval`; with `crl`, that CRL file is loaded too.
    async fn start(reload_interval: Duration, crl: Option<String>) -> Self {
        Self::start_with(reload_interval, crl, |_| {}).await
    }

    /// As `start`, with `adjust` applied to the TLS settings.
    async fn start_with(
        reload_interval: Duration,
        crl: Option<String>,
        adjust: impl FnOnce(&mut ServerTlsSettings),
    ) -> Self {
        herald_test_support::init_test_tracing();
        herald_tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        replace(dir.path(), "client-ca.pem", &dev_file("ca.pem"));
        replace(dir.path(), "server.pem", &dev_file("api-server.pem"));
        replace(dir.path(), "server.key", &dev_file("api-server.key"));
        if let Some(crl) = &crl {
            replace(dir.path(), "crl.pem", crl);
        }
        let database = TestDatabase::new().await;
        let keyspace = TestKeyspace::default();
        let mut settings = TestApp::api_settings(
            &database.settings(),
            RedisSettings {
                url: SecretString::from(keyspace.url()),
                key_prefix: keyspace.prefix().to_owned(),
                ..RedisSettings::default()
            },
            1_000,
            Vec::new(),
        );
        settings.tls = ServerTlsSettings {
            client_ca: dir.path().join("client-ca.pem"),
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
            crls: crl
                .map(|_| dir.path().join("crl.pem"))
                .into_iter()
                .collect(),
            reload_interval,
            ..ServerTlsSettings::default()
        };
        adjust(&mut settings.tls);
        let api = herald_api_server::Application::build(settings)
            .await
            .expect("building the API server");
        let server = Self {
            address: api.local_addr(),
            dir,
            shutdown: CancellationToken::new(),
            _database: database,
            _keyspace: keyspace,
        };
        tokio::spawn(api.run_until_stopped(server.shutdown.clone()));
        server
            .await_reload("the API server to answer", &dev_client(As::Orders))
            .await;
        server
    }

    /// Replaces one of the server's files.
    fn replace(&self, file: &str, contents: &str) {
        replace(self.dir.path(), file, contents);
    }

    /// Waits until a new connection with `tls` gets an answer, which only a reload can bring.
    async fn await_reload(&self, what: &str, tls: &ClientTlsConfig) {
        eventually(what, Duration::from_secs(20), || {
            let tls = tls.clone();
            async move { call(self.address, tls).await.ok() }
        })
        .await;
    }
}

impl Drop for RotatingServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Replaces `file` in `dir` whole (written beside it, then renamed over it), as a Secret
/// update does.
fn replace(dir: &Path, file: &str, contents: &str) {
    let staged = dir.join(format!(".{file}.new"));
    std::fs::write(&staged, contents).unwrap();
    std::fs::rename(staged, dir.join(file)).unwrap();
}

/// The contents of one of the dev certificate files.
fn dev_file(file: &str) -> String {
    std::fs::read_to_string(TestCerts::get().path(file)).unwrap()
}

/// A client of the dev CA's server certificate, presenting `who`'s dev certificate.
fn dev_client(who: As) -> ClientTlsConfig {
    let (cert, key) = who.files();
    client(&dev_file("ca.pem"), &dev_file(cert), &dev_file(key))
}

/// A client trusting `ca` for the server and presenting `cert` with `key`.
fn client(ca: &str, cert: &str, key: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
}

async fn connect(address: SocketAddr, tls: ClientTlsConfig) -> Result<Channel, String> {
    Endpoint::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|error| format!("connect: {error:?}"))
}

/// One health check over `channel`, which needs a configured identity.
async fn check(channel: Channel) -> Result<(), String> {
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|status| format!("rpc: {status:?}"))
}

/// One call on a new connection.
async fn call(address: SocketAddr, tls: ClientTlsConfig) -> Result<(), String> {
    check(connect(address, tls).await?).await
}

/// A client of a new CA holding the orders identity, and the server certificate it signed.
struct NewAuthority {
    ca: Authority,
    server: Issued,
    orders: Issued,
}

impl NewAuthority {
    fn new() -> Self {
        let ca = Authority::new("Herald CA, next generation").unwrap();
        let server = ca.server("spiffe://herald.local/api-server").unwrap();
        let orders = ca.client(ORDERS_IDENTITY).unwrap();
        Self { ca, server, orders }
    }

    fn orders_client(&self) -> ClientTlsConfig {
        client(&self.ca.pem(), &self.orders.certificate, &self.orders.key)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_certificate_of_a_configured_identity_is_refused_and_its_live_twin_is_not() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let address = app.address;
    let refused = call(address, app.tls(As::Revoked)).await;
    assert!(refused.is_err(), "the revoked certificate got in");
    let submit = async |who: As| {
        let channel = connect(address, app.tls(who)).await?;
        herald_proto::submit::submit_service_client::SubmitServiceClient::new(channel)
            .submit(welcome_request("ada@example.com"))
            .await
            .map_err(|status| format!("rpc: {status:?}"))
    };
    assert!(submit(As::Revoked).await.is_err());
    assert_eq!(app.count_rows("notifications").await, 0);
    // The same identity in a certificate the CRL does not list.
    submit(As::Orders).await.unwrap();
    assert_eq!(app.count_rows("notifications").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_of_a_configured_identity_is_refused() {
    let app = TestApp::spawn().await;
    let refused = call(app.address, app.tls(As::Expired)).await;
    assert!(refused.is_err(), "the expired certificate got in");
    call(app.address, app.tls(As::Orders)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_server_certificate_and_client_ca_are_served_without_a_restart() {
    let server = RotatingServer::start(Duration::from_millis(50), None).await;
    let before = connect(server.address, dev_client(As::Orders))
        .await
        .unwrap();
    check(before.clone()).await.unwrap();

    let next = NewAuthority::new();
    // The key first: until the certificate follows, the pair does not match and the server
    // keeps the old one.
    server.replace("server.key", &next.server.key);
    server.replace("server.pem", &next.server.certificate);
    server.replace("client-ca.pem", &next.ca.pem());
    server
        .await_reload(
            "the new server certificate and client CA",
            &next.orders_client(),
        )
        .await;

    // A connection made before the rotation keeps its session.
    check(before).await.unwrap();
    // New connections of the old CA are refused both ways: the server no longer presents a
    // certificate the old clients trust, nor accepts their certificates.
    let old_ca_client_for_new_server = client(
        &next.ca.pem(),
        &dev_file("orders.pem"),
        &dev_file("orders.key"),
    );
    assert!(
        call(server.address, old_ca_client_for_new_server)
            .await
            .is_err()
    );
    assert!(call(server.address, dev_client(As::Orders)).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_revoked_while_the_server_runs_is_refused_from_the_next_reload() {
    let next = NewAuthority::new();
    // One CRL per trusted CA: the dev CA's, and an empty one of the new CA.
    let crls = |revoked: &[SerialNumber]| {
        format!(
            "{}{}",
            dev_file("ca.crl.pem"),
            next.ca.crl(revoked).unwrap()
        )
    };
    let server = RotatingServer::start(Duration::from_millis(50), Some(crls(&[]))).await;
    // Trust the new CA beside the dev CA.
    server.replace(
        "client-ca.pem",
        &format!("{}{}", dev_file("ca.pem"), next.ca.pem()),
    );
    let serial = SerialNumber::from(0x5eed_u64);
    let mut params = herald_certs_dev::client_params(ORDERS_IDENTITY).unwrap();
    params.serial_number = Some(serial.clone());
    let compromised = next.ca.issue(params, "compromised").unwrap();
    let compromised_client = client(
        &dev_file("ca.pem"),
        &compromised.certificate,
        &compromised.key,
    );
    server
        .await_reload("the new client CA", &compromised_client)
        .await;

    server.replace("crl.pem", &crls(&[serial]));
    eventually(
        "the revoked certificate to be refused",
        Duration::from_secs(20),
        || {
            let tls = compromised_client.clone();
            async move { call(server.address, tls).await.err() }
        },
    )
    .await;
    // Another certificate of the same CA and identity is still accepted.
    let other = next.ca.client(ORDERS_IDENTITY).unwrap();
    call(
        server.address,
        client(&dev_file("ca.pem"), &other.certificate, &other.key),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_certificates_at_once() {
    // Files are read again only every hour: only the signal can bring the new ones.
    let server = RotatingServer::start(Duration::from_secs(3600), None).await;
    let next = NewAuthority::new();
    server.replace("server.key", &next.server.key);
    server.replace("server.pem", &next.server.certificate);
    server.replace("client-ca.pem", &next.ca.pem());
    assert!(call(server.address, next.orders_client()).await.is_err());

    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    server
        .await_reload("the certificates SIGHUP loads", &next.orders_client())
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_never_finish_their_handshake_neither_stall_others_nor_stay_connected() {
    let server = RotatingServer::start_with(Duration::from_secs(3600), None, |tls| {
        tls.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    // Connections that open TCP and then say nothing.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(
            tokio::net::TcpStream::connect(server.address)
                .await
                .unwrap(),
        );
    }
    // A real client is served meanwhile.
    call(server.address, dev_client(As::Orders)).await.unwrap();
    // Each silent one is closed by the server once its handshake time is up: a read ends.
    for mut stream in silent {
        let mut buffer = [0_u8; 64];
        let read = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::AsyncReadExt::read(&mut stream, &mut buffer),
        )
        .await
        .expect("the server closes a connection whose handshake never came");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
