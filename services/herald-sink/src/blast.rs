//! `blast`: sends messages as fast as it can over N SMTP connections, to measure what an SMTP
//! server (normally the sink itself) can take. Each connection is one lettre
//! `AsyncSmtpConnection` reused for every message: no pool, so no `NOOP` per checkout, and
//! every connection is open before the clock starts.
//!
//! The sockets are opened here with `TCP_NODELAY`: lettre opens its own without it and writes
//! a message's data and the final `.` in two writes, so Nagle's algorithm holds the `.` back
//! until the server acknowledges the data, which a server that has nothing to answer yet does
//! only after its delayed-ACK timer (about 40 ms on Linux). That would cap every connection
//! near 25 messages/s whatever the server. `nagle: true` keeps lettre's behaviour, to show it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lettre::Message;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::{Error, Result};

/// Per-command timeout: a server that stalls this long is broken, not slow.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What `blast` sends, where.
#[derive(Debug, Clone)]
pub struct BlastSettings {
    /// The SMTP server, `host:port`.
    pub to: String,
    /// Connections, each sending one message after the other.
    pub connections: u32,
    /// Messages in total.
    pub count: u64,
    /// Leave Nagle's algorithm on (no `TCP_NODELAY`), as lettre's own connections do.
    pub nagle: bool,
}

/// What `blast` measured.
#[derive(Debug, Clone)]
pub struct BlastReport {
    /// Messages the server accepted with `250`.
    pub sent: u64,
    /// Messages the server refused or that failed on the wire.
    pub failed: u64,
    /// Messages never tried because every connection broke.
    pub unsent: u64,
    /// Connections used.
    pub connections: u32,
    /// From the first message to the last answer.
    pub elapsed: Duration,
    /// The first error, if any.
    pub first_error: Option<String>,
}

impl BlastReport {
    /// Accepted messages per second.
    pub fn messages_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.sent as f64 / seconds
        } else {
            0.0
        }
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "sent": self.sent,
            "failed": self.failed,
            "unsent": self.unsent,
            "connections": self.connections,
            "elapsed_s": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "messages_per_s": (self.messages_per_second() * 10.0).round() / 10.0,
            "first_error": self.first_error,
        })
    }

    /// The report as one line of text.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "blast: {} messages accepted over {} connections in {:.3}s: {:.1} messages/s",
            self.sent,
            self.connections,
            self.elapsed.as_secs_f64(),
            self.messages_per_second()
        );
        if self.failed > 0 || self.unsent > 0 {
            text.push_str(&format!(
                " ({} failed, {} unsent; first error: {})",
                self.failed,
                self.unsent,
                self.first_error.as_deref().unwrap_or("none")
            ));
        }
        text
    }
}

/// Opens `settings.connections` connections, then sends `settings.count` messages over them
/// as fast as the server answers. Each message has its own `Message-ID`
/// (`<blast-RUN-N@herald-sink>`) and a text and HTML body of about the size of a Herald email.
///
/// # Errors
/// When a connection cannot be opened before the start, or the settings are unusable.
pub async fn blast(settings: &BlastSettings) -> Result<BlastReport> {
    if settings.connections == 0 {
        return Err(Error::Settings(
            "--connections must be at least 1".to_owned(),
        ));
    }
    let plan = Arc::new(Plan::new(settings)?);
    let mut connections = Vec::new();
    for _ in 0..settings.connections {
        connections.push(plan.connect().await?);
    }
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for connection in connections {
        tasks.spawn(send_task(connection, Arc::clone(&plan)));
    }
    let mut tally = Tally::default();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(task) => tally.merge(task),
            Err(join) => tally.note_error(format!("a sending task failed: {join}")),
        }
    }
    let elapsed = started.elapsed();
    Ok(BlastReport {
        sent: tally.sent,
        failed: tally.failed,
        unsent: settings.count.saturating_sub(tally.sent + tally.failed),
        connections: settings.connections,
        elapsed,
        first_error: tally.first_error,
    })
}

/// What every sending task shares.
#[derive(Debug)]
struct Plan {
    address: String,
    count: u64,
    next: AtomicU64,
    run: String,
    from: Mailbox,
    hello: ClientId,
    nagle: bool,
}

impl Plan {
    fn new(settings: &BlastSettings) -> Result<Self> {
        let from = "herald-sink blast <blast@herald-sink.test>"
            .parse()
            .map_err(|error| Error::Settings(format!("the sender address: {error}")))?;
        let run = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        Ok(Self {
            address: settings.to.clone(),
            count: settings.count,
            next: AtomicU64::new(0),
            run: format!("{run:x}"),
            from,
            hello: ClientId::Domain("herald-sink.test".to_owned()),
            nagle: settings.nagle,
        })
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection> {
        let connect_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Connect {
            address: self.address.clone(),
            source,
        };
        let timed_out = || std::io::Error::from(std::io::ErrorKind::TimedOut);
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(self.address.as_str()))
            .await
            .map_err(|_| timed_out())
            .and_then(|connected| connected)
            .and_then(|stream| stream.set_nodelay(!self.nagle).map(|()| stream))
            .map_err(|error| connect_error(error.into()))?;
        tokio::time::timeout(
            TIMEOUT,
            AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello),
        )
        .await
        .map_err(|_| connect_error(timed_out().into()))?
        .map_err(|error| connect_error(error.into()))
    }

    /// Message `index`, shaped like a Herald email (multipart text and HTML).
    fn message(&self, index: u64) -> Result<Message> {
        let to: Mailbox = format!("blast+{index}@example.com")
            .parse()
            .map_err(|error| Error::Settings(format!("a recipient address: {error}")))?;
        Ok(Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(format!("herald-sink blast {} #{index}", self.run))
            .message_id(Some(format!("<blast-{}-{index}@herald-sink>", self.run)))
            .multipart(MultiPart::alternative_plain_html(
                format!("herald-sink blast message {index} of run {}.", self.run),
                format!(
                    "<p>herald-sink blast message <b>{index}</b> of run {}.</p>",
                    self.run
                ),
            ))?)
    }
}

#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Tally {
    fn note_error(&mut self, error: String) {
        self.first_error.get_or_insert(error);
    }

    fn merge(&mut self, other: Self) {
        self.sent += other.sent;
        self.failed += other.failed;
        if let Some(error) = other.first_error {
            self.note_error(error);
        }
    }
}

/// Sends messages until none are left. A broken connection is reopened once per failure; if
/// that fails too, the task stops and the others carry on.
async fn send_task(mut connection: AsyncSmtpConnection, plan: Arc<Plan>) -> Tally {
    let mut tally = Tally::default();
    loop {
        let index = plan.next.fetch_add(1, Ordering::Relaxed);
        if index >= plan.count {
            break;
        }
        let result = match plan.message(index) {
            Ok(message) => connection
                .send(message.envelope(), &message.formatted())
                .await
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match result {
            Ok(_response) => tally.sent += 1,
            Err(error) => {
                tally.failed += 1;
                tally.note_error(error);
                if connection.has_broken() {
                    match plan.connect().await {
                        Ok(fresh) => connection = fresh,
                        Err(error) => {
                            tally.note_error(error.to_string());
                            return tally;
                        }
                    }
                }
            }
        }
    }
    let _quit = connection.quit().await;
    tally
}
