//! A pool of SMTP connections sized to the sender's concurrency.
//!
//! lettre's own pool (`AsyncSmtpTransport`) bounds only the connections it keeps idle, not the
//! ones in use: with more concurrent sends than its `max_size` it opens a connection for each
//! extra send and closes it again afterwards (it recycles on a spawned task, so even a send
//! that follows another often finds the pool empty), and it sends a `NOOP` on every checkout.
//! `SmtpPool` holds at most `max_connections` connections, busy or idle: a send waits for one
//! rather than opening another, a connection goes back to the pool as soon as its send
//! returns, and only a connection that sat idle for a while (`VERIFY_IDLE_AFTER`) is checked
//! with a `NOOP` before it is used again. Connections idle longer than `idle_timeout` are
//! closed.
//!
//! Plain and STARTTLS connections are opened here, with `TCP_NODELAY`: lettre writes a
//! command and its message in separate small writes, and with Nagle's algorithm the second
//! waits for the server's delayed ACK (about 40 ms on Linux) on every message. Implicit-TLS
//! connections (`security = "tls"`) are opened by lettre, which does not set it.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use secrecy::ExposeSecret;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::{SmtpSecurity, SmtpSettings};

/// A connection idle at least this long is checked with `NOOP` before a send (the server may
/// have closed it); busier connections are used without the extra round trip.
pub const VERIFY_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No TCP connection to the relay.
    #[error("could not connect to the smtp relay: {0}")]
    Connect(#[source] std::io::Error),
    /// The TCP connection was not established within the timeout.
    #[error("timed out connecting to the smtp relay")]
    ConnectTimeout,
    /// The SMTP conversation failed before the message's end was sent, or the relay answered
    /// the message with a reply code (lettre's error: reply code, TLS, network).
    #[error(transparent)]
    Smtp(#[from] lettre::transport::smtp::Error),
    /// The relay lacks an extension the message needs; nothing was sent.
    #[error("the smtp relay does not support {0}")]
    Unsupported(&'static str),
    /// The relay did not answer a command within the timeout, before the message's end was
    /// sent: nothing was handed over.
    #[error("the smtp relay did not answer within the timeout")]
    Timeout,
    /// The message was sent (or its sending broke off), but no reply to it came: the relay
    /// may have accepted it. `None` when the wait for the reply timed out.
    #[error("the smtp relay did not confirm the message")]
    Unconfirmed(#[source] Option<lettre::transport::smtp::Error>),
}

impl Error {
    /// Whether the relay may have accepted the message although the send failed: the outcome
    /// of the send cannot be known, and sending again may deliver it twice.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::Unconfirmed(_))
    }
}

/// Reused connections to one SMTP relay, at most `max_connections` at once.
pub struct SmtpPool {
    host: String,
    port: u16,
    timeout: Duration,
    idle_timeout: Duration,
    /// `Some` for STARTTLS and implicit TLS.
    tls: Option<TlsParameters>,
    security: SmtpSecurity,
    credentials: Option<Credentials>,
    hello: ClientId,
    /// One permit per connection that may exist.
    permits: Semaphore,
    /// Connections not in use, the most recently used last.
    idle: Mutex<Vec<Idle>>,
}

impl std::fmt::Debug for SmtpPool {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SmtpPool")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

struct Idle {
    connection: AsyncSmtpConnection,
    since: Instant,
}

impl SmtpPool {
    /// A pool for the relay `settings` describe, holding at most `max_connections` (at least
    /// one) connections. Nothing connects until the first send.
    pub fn new(
        settings: &SmtpSettings,
        max_connections: usize,
    ) -> Result<Self, lettre::transport::smtp::Error> {
        let tls = match settings.security {
            SmtpSecurity::None => None,
            SmtpSecurity::Starttls | SmtpSecurity::Tls => {
                Some(TlsParameters::new(settings.host.clone())?)
            }
        };
        Ok(Self {
            host: settings.host.clone(),
            port: settings.port,
            timeout: settings.timeout,
            idle_timeout: settings.idle_timeout,
            tls,
            security: settings.security,
            credentials: (!settings.username.is_empty()).then(|| {
                Credentials::new(
                    settings.username.clone(),
                    settings.password.expose_secret().to_owned(),
                )
            }),
            hello: ClientId::default(),
            permits: Semaphore::new(max_connections.max(1)),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends `message` (formatted) to `envelope`'s recipients on a pooled connection, waiting
    /// for one when all are busy. Getting a connection, the envelope (`MAIL`, `RCPT`, `DATA`)
    /// and the message each get `timeout`. A failure once the message's end may have been
    /// sent is `Error::Unconfirmed`; every earlier one handed nothing over. A connection
    /// that failed in any way is closed, not reused.
    pub async fn send(&self, envelope: &Envelope, message: &[u8]) -> Result<Response, Error> {
        // The semaphore is never closed.
        let _permit = self.permits.acquire().await;
        let mut connection = tokio::time::timeout(self.timeout, self.checkout())
            .await
            .map_err(|_| Error::ConnectTimeout)??;
        let sent = self.converse(&mut connection, envelope, message).await;
        match sent {
            Ok(_) if !connection.has_broken() => self.park(connection),
            _ => close(connection),
        }
        sent
    }

    /// One mail transaction on `connection`: the envelope, then the message. lettre's own
    /// `send` does the same in one call, which hides whether the message's end was sent when
    /// it fails; that decides whether a failure may have delivered the message.
    async fn converse(
        &self,
        connection: &mut AsyncSmtpConnection,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<Response, Error> {
        let mut options = Vec::new();
        let mut addresses = envelope.from().into_iter().chain(envelope.to());
        if addresses.any(|address| !AsRef::<str>::as_ref(address).is_ascii()) {
            if !connection
                .server_info()
                .supports_feature(Extension::SmtpUtfEight)
            {
                return Err(Error::Unsupported(
                    "SMTPUTF8, needed for a non-ASCII address",
                ));
            }
            options.push(MailParameter::SmtpUtfEight);
        }
        if !message.is_ascii() {
            if !connection
                .server_info()
                .supports_feature(Extension::EightBitMime)
            {
                return Err(Error::Unsupported(
                    "8BITMIME, needed for a non-ASCII message",
                ));
            }
            options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let handshake = async {
            connection
                .command(Mail::new(envelope.from().cloned(), options))
                .await?;
            for recipient in envelope.to() {
                connection
                    .command(Rcpt::new(recipient.clone(), Vec::new()))
                    .await?;
            }
            connection.command(Data).await
        };
        tokio::time::timeout(self.timeout, handshake)
            .await
            .map_err(|_| Error::Timeout)??;
        // From here on the relay may have the whole message: only a reply says what it did.
        match tokio::time::timeout(self.timeout, connection.message(message)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) if error.status().is_some() => Err(Error::Smtp(error)),
            Ok(Err(error)) => Err(Error::Unconfirmed(Some(error))),
            Err(_) => Err(Error::Unconfirmed(None)),
        }
    }

    /// An idle connection that is still usable, else a new one.
    async fn checkout(&self) -> Result<AsyncSmtpConnection, Error> {
        while let Some(idle) = self.take_idle() {
            let idle_for = idle.since.elapsed();
            let mut connection = idle.connection;
            if idle_for >= self.idle_timeout {
                close(connection);
                continue;
            }
            if idle_for < VERIFY_IDLE_AFTER || connection.test_connected().await {
                return Ok(connection);
            }
            close(connection);
        }
        self.connect().await
    }

    fn take_idle(&self) -> Option<Idle> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// Puts `connection` back, and closes connections idle longer than `idle_timeout`.
    fn park(&self, connection: AsyncSmtpConnection) {
        let expired: Vec<Idle> = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let kept = idle
                .iter()
                .position(|parked| now.duration_since(parked.since) < self.idle_timeout)
                .unwrap_or(idle.len());
            let expired = idle.drain(..kept).collect();
            idle.push(Idle {
                connection,
                since: now,
            });
            expired
        };
        for parked in expired {
            close(parked.connection);
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, Error> {
        let mut connection = match self.security {
            SmtpSecurity::Tls => {
                AsyncSmtpConnection::connect_tokio1(
                    (self.host.as_str(), self.port),
                    Some(self.timeout),
                    &self.hello,
                    self.tls.clone(),
                    None,
                )
                .await?
            }
            SmtpSecurity::None | SmtpSecurity::Starttls => {
                let stream = tokio::time::timeout(
                    self.timeout,
                    TcpStream::connect((self.host.as_str(), self.port)),
                )
                .await
                .map_err(|_| Error::ConnectTimeout)?
                .map_err(Error::Connect)?;
                stream.set_nodelay(true).map_err(Error::Connect)?;
                let mut connection =
                    AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello)
                        .await?;
                if let (SmtpSecurity::Starttls, Some(tls)) = (self.security, &self.tls) {
                    connection.starttls(tls.clone(), &self.hello).await?;
                }
                connection
            }
        };
        if let Some(credentials) = &self.credentials {
            connection.auth(DEFAULT_MECHANISMS, credentials).await?;
        }
        Ok(connection)
    }
}

/// Says `QUIT` and closes `connection` without holding up the caller.
fn close(mut connection: AsyncSmtpConnection) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move { connection.abort().await });
    }
}
