//! aiosmtpd as the test SMTP server.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::{eventually, required_env};

/// A running aiosmtpd storing every message it accepts in a Maildir. Recipients whose local
/// part starts with `bounce` are rejected with `550 5.1.1` (a hard bounce).
#[derive(Debug)]
pub struct SmtpServer {
    address: SocketAddr,
    maildir: tempfile::TempDir,
    _process: tokio::process::Child,
}

/// An email as the SMTP server received it.
#[derive(Debug, Clone)]
pub struct ReceivedEmail {
    /// `To` addresses.
    pub to: Vec<String>,
    /// `From` address.
    pub from: String,
    /// Decoded subject.
    pub subject: String,
    /// Decoded text body, if any.
    pub text: Option<String>,
    /// Decoded HTML body, if any.
    pub html: Option<String>,
    /// The `Message-ID` header.
    pub message_id: Option<String>,
}

impl SmtpServer {
    /// Starts aiosmtpd on a free loopback port and waits until it accepts connections.
    ///
    /// # Panics
    /// When aiosmtpd cannot be started.
    pub async fn start() -> Self {
        let python = required_env("TEST_AIOSMTPD_PYTHON");
        let maildir = tempfile::tempdir().expect("a temporary Maildir");
        // aiosmtpd cannot report a port it picked, so reserve one and hand it over; retry on
        // the rare race where another process takes it in between.
        for _ in 0..5 {
            let port = crate::unused_port();
            let address = SocketAddr::from(([127, 0, 0, 1], port));
            let mut process = tokio::process::Command::new(&python)
                .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
                .args(["-c", "herald_smtp_handlers.BouncingMailbox"])
                .env(
                    "PYTHONPATH",
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("python"),
                )
                .arg(maildir.path().join("mail"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|error| panic!("starting aiosmtpd with {python}: {error}"));
            for _ in 0..200 {
                if tokio::net::TcpStream::connect(address).await.is_ok() {
                    return Self {
                        address,
                        maildir,
                        _process: process,
                    };
                }
                if let Ok(Some(_)) = process.try_wait() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let _killed = process.kill().await;
        }
        panic!("aiosmtpd did not start");
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<ReceivedEmail> {
        read_maildir(&self.maildir.path().join("mail"))
    }

    /// Waits until at least `count` messages arrived and returns them all.
    pub async fn wait_for_messages(&self, count: usize, timeout: Duration) -> Vec<ReceivedEmail> {
        eventually(
            &format!("{count} email(s) at the SMTP server"),
            timeout,
            || async {
                let messages = self.messages();
                (messages.len() >= count).then_some(messages)
            },
        )
        .await
    }
}

fn read_maildir(maildir: &Path) -> Vec<ReceivedEmail> {
    let mut messages = Vec::new();
    for folder in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(maildir.join(folder)) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(raw) = std::fs::read(entry.path()) else {
                continue;
            };
            if let Some(parsed) = mail_parser::MessageParser::default().parse(&raw) {
                let addresses = |address: Option<&mail_parser::Address<'_>>| -> Vec<String> {
                    address
                        .map(|address| {
                            address
                                .iter()
                                .filter_map(|addr| addr.address().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                messages.push(ReceivedEmail {
                    to: addresses(parsed.to()),
                    from: addresses(parsed.from())
                        .into_iter()
                        .next()
                        .unwrap_or_default(),
                    subject: parsed.subject().unwrap_or_default().to_owned(),
                    text: parsed.body_text(0).map(|text| text.into_owned()),
                    html: parsed.body_html(0).map(|html| html.into_owned()),
                    message_id: parsed.message_id().map(str::to_owned),
                });
            }
        }
    }
    messages
}
