//! The mutual-TLS server side: a rustls config built from files (certificate chain, key,
//! client CAs and CRLs) that reloads when those files change or on SIGHUP, and a stream of
//! accepted connections whose handshakes run off the accept loop, each within a deadline.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use herald_config::ServerTlsSettings;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result, read};

/// The server's TLS config as last loaded from its files. Every new connection is handshaken
/// with the config current at its accept; a reload never touches established connections, so
/// calls in flight finish on the session they started on.
#[derive(Debug, Clone)]
pub struct ServerCertificates {
    settings: ServerTlsSettings,
    current: Arc<RwLock<Loaded>>,
}

#[derive(Debug)]
struct Loaded {
    config: Arc<ServerConfig>,
    /// A digest of every file the config was built from, to notice a change.
    fingerprint: u64,
}

/// What a reload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The files changed and new connections now get the new config.
    Changed,
    /// The files are as they were.
    Unchanged,
}

impl ServerCertificates {
    /// Loads the config `settings` names.
    ///
    /// # Errors
    /// `Error::Read` when a file cannot be read, `Error::Invalid` when its contents are not
    /// usable (no certificate, a key that does not match, an unparsable CRL).
    pub fn load(settings: &ServerTlsSettings) -> Result<Self> {
        let fingerprint = fingerprint(settings)?;
        let config = build(settings)?;
        Ok(Self {
            settings: settings.clone(),
            current: Arc::new(RwLock::new(Loaded {
                config,
                fingerprint,
            })),
        })
    }

    /// The config new connections are handshaken with.
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.read().config)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        // A writer only swaps two fields, so a poisoned lock still holds a whole config.
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the files again and, when any changed, builds and installs a new config. When
    /// the new files do not make a usable config (a certificate written before its key, say),
    /// the old config stays and the error is returned; the next reload tries again.
    ///
    /// # Errors
    /// As `load`.
    pub fn reload(&self) -> Result<Reloaded> {
        let fingerprint = fingerprint(&self.settings)?;
        if fingerprint == self.read().fingerprint {
            return Ok(Reloaded::Unchanged);
        }
        let config = build(&self.settings)?;
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = Loaded {
            config,
            fingerprint,
        };
        Ok(Reloaded::Changed)
    }

    /// Reloads every `settings.reload_interval` and on SIGHUP until `shutdown`, logging what
    /// changed and what could not be loaded. SIGHUP is taken over when this is called (from
    /// within the runtime), before the returned future first runs, so a signal sent once the
    /// server answers is never the default "terminate".
    pub fn watch(self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .inspect_err(|error| {
                tracing::warn!(%error, "Cannot listen for SIGHUP; TLS files reload on their interval only.");
            })
            .ok();
        self.reload_until(hangups, shutdown)
    }

    async fn reload_until(
        self,
        mut hangups: Option<tokio::signal::unix::Signal>,
        shutdown: CancellationToken,
    ) {
        loop {
            let trigger = tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.settings.reload_interval) => "interval",
                Some(()) = async {
                    match hangups.as_mut() {
                        Some(hangups) => hangups.recv().await,
                        None => std::future::pending().await,
                    }
                } => "SIGHUP",
            };
            match self.reload() {
                Ok(Reloaded::Changed) => {
                    tracing::info!(trigger, "TLS certificates, client CAs and CRLs reloaded.");
                }
                Ok(Reloaded::Unchanged) => {}
                Err(error) => tracing::error!(
                    trigger,
                    error = %error,
                    "TLS files changed but could not be loaded; new connections keep the previous certificates."
                ),
            }
        }
    }

    /// Accepts connections from `listener` until `shutdown`, handshaking each in its own task
    /// with the current config: at most `settings.max_pending_handshakes` at a time, each
    /// given `settings.handshake_timeout`. Only completed handshakes reach the stream; a
    /// failed or slow one is logged and dropped, and never delays the others.
    pub fn incoming(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        let (sender, receiver) = mpsc::channel(self.settings.max_pending_handshakes.max(1));
        tokio::spawn(accept_loop(self.clone(), listener, sender, shutdown));
        ReceiverStream::new(receiver)
    }
}

/// Pause after a failed `accept` (out of file descriptors, say) before the next one.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

async fn accept_loop(
    certificates: ServerCertificates,
    listener: TcpListener,
    sender: mpsc::Sender<io::Result<TlsStream<TcpStream>>>,
    shutdown: CancellationToken,
) {
    let pending = Arc::new(Semaphore::new(
        certificates.settings.max_pending_handshakes.max(1),
    ));
    let timeout = certificates.settings.handshake_timeout;
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            permit = Arc::clone(&pending).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: give the process a moment before
                    // the next accept rather than spinning on the same error.
                    tracing::warn!(%error, "Accepting a TCP connection failed.");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "Could not set TCP_NODELAY.");
        }
        let acceptor = TlsAcceptor::from(certificates.config());
        let sender = sender.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(timeout, acceptor.accept(stream)).await;
            drop(permit);
            match handshake {
                Ok(Ok(connection)) => {
                    // The server has stopped when nobody receives; the connection just closes.
                    let _stopped = sender.send(Ok(connection)).await;
                }
                // A TCP health check or port scan: it connected and left without a word.
                Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
                    tracing::debug!(peer = %peer.ip(), "A connection closed before its TLS handshake.");
                }
                Ok(Err(error)) => log_refused(peer, &error.to_string()),
                Err(_elapsed) => log_refused(peer, "the TLS handshake timed out"),
            }
        });
    }
}

fn log_refused(peer: SocketAddr, reason: &str) {
    tracing::warn!(peer = %peer.ip(), reason, "A TLS handshake failed; the connection was closed.");
}

/// The files a config is built from, each with the setting that names it.
fn files(settings: &ServerTlsSettings) -> impl Iterator<Item = (&'static str, &Path)> {
    [
        ("tls.cert", settings.cert.as_path()),
        ("tls.key", settings.key.as_path()),
        ("tls.client_ca", settings.client_ca.as_path()),
    ]
    .into_iter()
    .chain(settings.crls.iter().map(|crl| ("tls.crls", crl.as_path())))
}

fn fingerprint(settings: &ServerTlsSettings) -> Result<u64> {
    let mut hasher = DefaultHasher::new();
    for (_, path) in files(settings) {
        read(path)?.hash(&mut hasher);
    }
    Ok(hasher.finish())
}

fn invalid(setting: &'static str, path: &Path, reason: impl ToString) -> Error {
    Error::Invalid {
        setting,
        path: PathBuf::from(path),
        reason: reason.to_string(),
    }
}

fn certificates(setting: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(setting, path, error))?;
    if certificates.is_empty() {
        return Err(invalid(setting, path, "it holds no PEM certificate"));
    }
    Ok(certificates)
}

/// The config the files name. Callers take the files' `fingerprint` before building, so files
/// that change while the config is built are seen as changed again by the next reload.
fn build(settings: &ServerTlsSettings) -> Result<Arc<ServerConfig>> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates("tls.client_ca", &settings.client_ca)? {
        roots
            .add(certificate)
            .map_err(|error| invalid("tls.client_ca", &settings.client_ca, error))?;
    }
    let mut crls = Vec::new();
    for path in &settings.crls {
        let found = CertificateRevocationListDer::pem_slice_iter(&read(path)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| invalid("tls.crls", path, error))?;
        if found.is_empty() {
            return Err(invalid("tls.crls", path, "it holds no PEM X509 CRL"));
        }
        crls.extend(found);
    }
    let mut verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .with_crls(crls)
        .only_check_end_entity_revocation();
    if settings.allow_unknown_revocation_status {
        verifier = verifier.allow_unknown_revocation_status();
    }
    let verifier = verifier
        .build()
        .map_err(|error| invalid("tls.client_ca", &settings.client_ca, error))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&settings.key)?)
        .map_err(|error| invalid("tls.key", &settings.key, error))?;
    let mut config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates("tls.cert", &settings.cert)?, key)
        .map_err(|error| invalid("tls.key", &settings.key, error))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
