//! Redis over TLS (`rediss://` with `redis.tls_ca`), against a real `redis-server` this test
//! starts on loopback with a TLS port and the test certificates.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use deadpool_redis::redis;
use herald_config::RedisSettings;
use herald_test_support::{TestCerts, eventually, unused_port};
use secrecy::SecretString;

/// A `redis-server` serving TLS only, killed on drop.
struct TlsRedis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start() -> Self {
        let certs = TestCerts::get();
        let dir = tempfile::tempdir().unwrap();
        let port = unused_port();
        let path = |file: &str| certs.path(file).display().to_string();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", &path("api-server.pem")])
            .args(["--tls-key-file", &path("api-server.key")])
            .args(["--tls-ca-cert-file", &path("ca.pem")])
            .args(["--tls-auth-clients", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (./scripts/deps installs it)");
        Self {
            port,
            child,
            _dir: dir,
        }
    }

    fn settings(&self, tls_ca: &Path) -> RedisSettings {
        RedisSettings {
            url: SecretString::from(format!("rediss://127.0.0.1:{}", self.port)),
            tls_ca: tls_ca.to_owned(),
            timeout: Duration::from_secs(2),
            ..RedisSettings::default()
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _gone = self.child.kill();
        let _reaped = self.child.wait();
    }
}

async fn ping(settings: &RedisSettings) -> Result<String, String> {
    let pool = herald_redis::build_pool(settings).map_err(|error| error.to_string())?;
    let mut connection = pool.get().await.map_err(|error| error.to_string())?;
    redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await
        .map_err(|error| error.to_string())
}

#[tokio::test]
async fn a_rediss_url_with_the_servers_ca_reaches_redis_over_tls_and_another_ca_is_refused() {
    herald_tls::install_crypto_provider();
    let server = TlsRedis::start();
    let certs = TestCerts::get();
    let trusted = server.settings(&certs.path("ca.pem"));
    let answer = eventually("redis-server to serve TLS", Duration::from_secs(20), || {
        let trusted = trusted.clone();
        async move { ping(&trusted).await.ok() }
    })
    .await;
    assert_eq!(answer, "PONG");
    // The multiplexed client the inbox fan-out uses goes the same way.
    let mut connection = herald_redis::client(&trusted)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let echoed: String = redis::cmd("ECHO")
        .arg("over tls")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(echoed, "over tls");

    // A CA that did not sign the server's certificate.
    let refused = ping(&server.settings(&certs.path("untrusted-ca.pem"))).await;
    assert!(refused.is_err(), "{refused:?}");
    // Plain Redis to the TLS port gets nowhere either.
    let plain = RedisSettings {
        url: SecretString::from(format!("redis://127.0.0.1:{}", server.port)),
        ..server.settings(Path::new(""))
    };
    assert!(ping(&plain).await.is_err());
}
