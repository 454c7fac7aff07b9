#![doc = include_str!("../README.md")]

mod blast;
mod http;
mod maildir;
mod smtp;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use blast::{BlastReport, BlastSettings, blast};
pub use stats::{MessageArrival, Stats};

use crate::maildir::Maildir;
use crate::stats::Counters;

/// The name the binary logs under.
pub const SERVICE_NAME: &str = "herald-sink";

/// Errors of the sink and of `blast`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("could not listen on {address}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The Maildir could not be created.
    #[error("could not create the maildir {}", path.display())]
    Maildir {
        /// Its root.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("the HTTP server failed")]
    Http(#[source] std::io::Error),
    /// `blast` could not open an SMTP connection.
    #[error("could not connect to the SMTP server {address}")]
    Connect {
        /// The server.
        address: String,
        /// Why: an IO error or lettre's.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `blast` could not build a message.
    #[error("could not build a message")]
    Message(#[from] lettre::error::Error),
    /// `blast` settings are unusable.
    #[error("{0}")]
    Settings(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the sink listens and what it keeps.
#[derive(Debug, Clone)]
pub struct Settings {
    /// SMTP listener; port 0 picks a free port.
    pub smtp_listen: SocketAddr,
    /// HTTP listener for `/stats`, `/reset` and `/messages/<id>`; port 0 picks a free port.
    pub http_listen: SocketAddr,
    /// Also store every message in this Maildir.
    pub maildir: Option<PathBuf>,
    /// The name in the greeting and the `EHLO` reply.
    pub hostname: String,
    /// Largest message accepted (`SIZE`); larger ones get `552`.
    pub max_message_size: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            smtp_listen: SocketAddr::from(([127, 0, 0, 1], 2525)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8025)),
            maildir: None,
            hostname: "herald-sink".to_owned(),
            max_message_size: 32 * 1024 * 1024,
        }
    }
}

/// State shared by every connection and the HTTP handlers.
#[derive(Debug)]
pub(crate) struct Sink {
    pub(crate) counters: Counters,
    pub(crate) maildir: Option<Maildir>,
    pub(crate) hostname: String,
    pub(crate) max_message_size: usize,
}

/// A sink with its listeners bound, ready to run.
#[derive(Debug)]
pub struct Application {
    smtp: TcpListener,
    http: TcpListener,
    smtp_addr: SocketAddr,
    http_addr: SocketAddr,
    sink: Arc<Sink>,
}

impl Application {
    /// Binds both listeners and creates the Maildir when one is configured.
    pub async fn build(settings: Settings) -> Result<Self> {
        let maildir = settings
            .maildir
            .as_deref()
            .map(|path| {
                Maildir::create(path).map_err(|source| Error::Maildir {
                    path: path.to_owned(),
                    source,
                })
            })
            .transpose()?;
        let smtp = bind(settings.smtp_listen).await?;
        let http = bind(settings.http_listen).await?;
        let smtp_addr = local_addr(&smtp, settings.smtp_listen)?;
        let http_addr = local_addr(&http, settings.http_listen)?;
        Ok(Self {
            smtp,
            http,
            smtp_addr,
            http_addr,
            sink: Arc::new(Sink {
                counters: Counters::default(),
                maildir,
                hostname: settings.hostname,
                max_message_size: settings.max_message_size,
            }),
        })
    }

    /// The SMTP address actually bound.
    pub fn smtp_local_addr(&self) -> SocketAddr {
        self.smtp_addr
    }

    /// The HTTP address actually bound.
    pub fn http_local_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The counts right now.
    pub fn stats(&self) -> Stats {
        self.sink.counters.snapshot()
    }

    /// Serves SMTP and HTTP until `shutdown` is cancelled; open SMTP connections are then
    /// dropped (a client in the middle of a message sees the connection close without a
    /// `250`, so it knows the message was not taken).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<()> {
        let http = axum::serve(self.http, http::router(Arc::clone(&self.sink)))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let http = tokio::spawn(async move { http.await });
        accept_loop(self.smtp, Arc::clone(&self.sink), shutdown).await;
        match http.await {
            Ok(result) => result.map_err(Error::Http),
            Err(join) => Err(Error::Http(std::io::Error::other(join))),
        }
    }
}

async fn bind(address: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|source| Error::Bind { address, source })
}

fn local_addr(listener: &TcpListener, address: SocketAddr) -> Result<SocketAddr> {
    listener
        .local_addr()
        .map_err(|source| Error::Bind { address, source })
}

/// Accepts SMTP connections, each served by its own task, until `shutdown`.
async fn accept_loop(listener: TcpListener, sink: Arc<Sink>, shutdown: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_finished) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let sink = Arc::clone(&sink);
                    connections.spawn(async move {
                        if let Err(error) = smtp::serve_connection(stream, peer, sink).await {
                            tracing::debug!(error = %error, peer = %peer, "An SMTP connection ended with an error.");
                        }
                    });
                }
                Err(error) => {
                    // Usually out of file descriptors: wait for connections to close.
                    tracing::warn!(error = %error, "Could not accept an SMTP connection.");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
    connections.shutdown().await;
}
