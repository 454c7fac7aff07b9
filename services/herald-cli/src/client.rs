//! Mutual-TLS channels to the API server, and readable errors from gRPC statuses.

use anyhow::Context as _;
use herald_tls::ClientCertificates;
use tonic::transport::{Channel, Endpoint};

use crate::cli::ConnectionArgs;

impl ConnectionArgs {
    /// The CA and the client certificate given by `--ca`, `--cert` and `--key`.
    pub(crate) fn certificates(&self) -> ClientCertificates {
        ClientCertificates {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    fn url(&self) -> String {
        if self.server.contains("://") {
            self.server.clone()
        } else {
            format!("https://{}", self.server)
        }
    }
}

/// Opens one HTTP/2 connection to the server presenting `certificates`. Every call opens a new
/// connection; clones of the returned channel share it.
pub(crate) async fn connect(
    connection: &ConnectionArgs,
    certificates: &ClientCertificates,
) -> anyhow::Result<Channel> {
    let tls =
        herald_tls::client_config(certificates, &connection.server_name).with_context(|| {
            format!(
                "loading the client certificate {}",
                certificates.cert.display()
            )
        })?;
    let url = connection.url();
    Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid server address `{}`", connection.server))?
        .connect_timeout(connection.connect_timeout)
        .tls_config(tls)
        .context("configuring TLS")?
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// The name of a gRPC status code as in the gRPC spec's Rust spelling (`NotFound`,
/// `Unavailable`), used in messages and as keys of error counts.
pub(crate) fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// A failed RPC, displayed as `NotFound: notification_id: no notification ..` rather than
/// tonic's debug-style display with metadata. Callers downcast to it to look at the code.
#[derive(Debug)]
pub(crate) struct RpcError {
    /// The gRPC status code.
    pub(crate) code: tonic::Code,
    message: String,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}: {}", code_name(self.code), self.message)
    }
}

impl std::error::Error for RpcError {}

/// An [`RpcError`] for `status`, as an `anyhow::Error` ready for `.context(..)`.
pub(crate) fn rpc_error(status: &tonic::Status) -> anyhow::Error {
    RpcError {
        code: status.code(),
        message: status.message().to_owned(),
    }
    .into()
}
