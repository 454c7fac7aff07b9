//! Opening PostgreSQL connections, in plain or over TLS (`[database.tls]`).
//!
//! Every connection Herald opens goes through a `Connector`: the pool's, the `LISTEN`
//! connections' and the migrations'. Over TLS the server certificate is verified against
//! `database.tls.ca` (or the public web roots when empty) and the URL's host, with rustls on the
//! aws-lc-rs provider; SCRAM channel binding is offered.

use std::sync::Arc;

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use herald_config::{DatabaseSettings, DatabaseTlsMode};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres_rustls_improved::MakeRustlsConnect;

use crate::{Error, Result};

/// Opens connections to the database `DatabaseSettings` names, the way they say.
#[derive(Clone)]
pub struct Connector {
    url: SecretString,
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Connector")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector for `settings`, reading the CA bundle when TLS is on.
    ///
    /// # Errors
    /// `Error::Unavailable` naming the setting when the CA bundle cannot be read or holds no
    /// usable certificate.
    pub fn new(settings: &DatabaseSettings) -> Result<Self> {
        let tls = match settings.tls.mode {
            DatabaseTlsMode::Off => None,
            DatabaseTlsMode::VerifyFull => Some(MakeRustlsConnect::new(client_config(settings)?)),
        };
        Ok(Self {
            url: settings.url.clone(),
            tls,
        })
    }

    /// A plain connector for `url` (tests and tools that manage schemas).
    pub fn plain(url: &str) -> Self {
        Self {
            url: SecretString::from(url),
            tls: None,
        }
    }

    /// Opens one connection.
    ///
    /// # Errors
    /// As `diesel_async`'s `establish`: the server is unreachable, refuses the credentials, or
    /// (over TLS) presents a certificate that does not verify.
    pub async fn connect(&self) -> diesel::ConnectionResult<AsyncPgConnection> {
        let url = self.url.expose_secret();
        let Some(tls) = &self.tls else {
            return <AsyncPgConnection as diesel_async::AsyncConnection>::establish(url).await;
        };
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|error: tokio_postgres::Error| {
                ConnectionError::BadConnection(error.to_string())
            })?;
        // verify-full: TLS or nothing; a server that does not offer it is refused.
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
        let (client, connection) = config
            .connect(tls.clone())
            .await
            .map_err(|error| ConnectionError::BadConnection(error.to_string()))?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await
    }
}

fn client_config(settings: &DatabaseSettings) -> Result<rustls::ClientConfig> {
    let unusable = |reason: String| {
        Error::Unavailable(format!(
            "database.tls.ca ({}) is not usable: {reason}",
            settings.tls.ca.display()
        ))
    };
    let mut roots = rustls::RootCertStore::empty();
    if settings.tls.ca.as_os_str().is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        let pem = std::fs::read(&settings.tls.ca).map_err(|error| unusable(error.to_string()))?;
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            let certificate = certificate.map_err(|error| unusable(error.to_string()))?;
            roots
                .add(certificate)
                .map_err(|error| unusable(error.to_string()))?;
        }
        if roots.is_empty() {
            return Err(unusable("it holds no PEM certificate".into()));
        }
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(Arc::new(roots))
        .with_no_client_auth())
}
