#![doc = include_str!("../README.md")]

use std::path::{Path, PathBuf};

use herald_domain::Identity;
use tonic::transport::{Certificate, ClientTlsConfig};
use x509_parser::extensions::GeneralName;

mod server;

pub use server::{Reloaded, ServerCertificates};

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate or key file could not be read.
    #[error("could not read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A file was read but does not hold what its setting needs.
    #[error("{setting} ({path}) is not usable: {reason}")]
    Invalid {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Installs aws-lc-rs as the process-wide rustls provider. Every TLS user in Herald (tonic,
/// lapin, lettre, reqwest) builds its configs from this provider. Safe to call repeatedly.
pub fn install_crypto_provider() {
    // An error means a provider is already installed; Herald only ever installs this one.
    let _already_installed = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// Files a client needs for mutual TLS.
#[derive(Debug, Clone)]
pub struct ClientCertificates {
    /// PEM bundle of the CA that signed the server certificate.
    pub ca: PathBuf,
    /// PEM client certificate.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
}

/// A tonic client TLS config presenting a client certificate and trusting only `ca`.
pub fn client_config(
    certificates: &ClientCertificates,
    server_name: &str,
) -> Result<ClientTlsConfig> {
    let identity =
        tonic::transport::Identity::from_pem(read(&certificates.cert)?, read(&certificates.key)?);
    Ok(ClientTlsConfig::new()
        .domain_name(server_name)
        .ca_certificate(Certificate::from_pem(read(&certificates.ca)?))
        .identity(identity))
}

/// The identity named by a DER certificate: its first URI SAN, else its first DNS SAN.
/// `None` when the certificate cannot be parsed or names nothing usable.
pub fn identity_of(certificate_der: &[u8]) -> Option<Identity> {
    let (_, certificate) = x509_parser::parse_x509_certificate(certificate_der).ok()?;
    let names = certificate.subject_alternative_name().ok()??;
    let uri = names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let dns = || {
        names
            .value
            .general_names
            .iter()
            .find_map(|name| match name {
                GeneralName::DNSName(dns) => Some(*dns),
                _ => None,
            })
    };
    Identity::parse(uri.or_else(dns)?).ok()
}
