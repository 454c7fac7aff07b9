//! The SMTP server: one task per connection, reading commands line by line
//! ([RFC 5321](https://www.rfc-editor.org/rfc/rfc5321)).
//!
//! Pipelining ([RFC 2920](https://www.rfc-editor.org/rfc/rfc2920)) falls out of the design:
//! replies are buffered and flushed only when no further input is already waiting, so a
//! client that sends `MAIL`, `RCPT` and `DATA` (or even the message and `QUIT`) in one write
//! gets all the replies in order, in one write, and a client that waits for each reply gets it
//! at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::Sink;
use crate::maildir::Envelope;
use crate::stats::message_id;

/// Longest command line accepted, CRLF included. RFC 5321 asks for at least 512 octets;
/// `MAIL FROM` with parameters stays far below this.
const MAX_COMMAND_LINE: usize = 4096;
/// Most recipients of one message (RFC 5321 asks servers to accept at least 100).
const MAX_RECIPIENTS: usize = 1000;
/// Socket buffers: a whole typical message fits in one read.
const BUFFER_SIZE: usize = 64 * 1024;

/// Serves one SMTP connection until the client quits or goes away.
pub(crate) async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    sink: Arc<Sink>,
) -> std::io::Result<()> {
    // Replies are small and must not wait for Nagle's algorithm.
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let mut session = Session {
        reader: BufReader::with_capacity(BUFFER_SIZE, read),
        writer: BufWriter::with_capacity(BUFFER_SIZE, write),
        peer,
        sink,
        greeted: false,
        transaction: None,
        line: Vec::with_capacity(256),
    };
    session.run().await
}

/// A message under way: after `MAIL`, collecting `RCPT`s.
#[derive(Debug)]
struct Transaction {
    mail_from: String,
    recipients: Vec<String>,
}

/// What reading one line found.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A whole line, terminator included, was appended.
    Complete,
    /// The line went past the limit; nothing of it was kept, but it was read to its end.
    TooLong,
    /// The client closed the connection (a partial last line is dropped).
    Eof,
}

struct Session {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    peer: SocketAddr,
    sink: Arc<Sink>,
    greeted: bool,
    transaction: Option<Transaction>,
    line: Vec<u8>,
}

impl Session {
    async fn run(&mut self) -> std::io::Result<()> {
        let greeting = format!("220 {} ESMTP herald-sink\r\n", self.sink.hostname);
        self.reply(&greeting).await?;
        loop {
            self.line.clear();
            match append_line(&mut self.reader, &mut self.line, MAX_COMMAND_LINE).await? {
                Line::Eof => return Ok(()),
                Line::TooLong => self.reply("500 5.5.2 Line too long\r\n").await?,
                Line::Complete => {
                    if !self.command().await? {
                        self.writer.flush().await?;
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Handles the command in `self.line`; `false` when the session ends.
    async fn command(&mut self) -> std::io::Result<bool> {
        let line = String::from_utf8_lossy(trim_crlf(&self.line)).into_owned();
        let (verb, argument) = match line.split_once(' ') {
            Some((verb, argument)) => (verb, argument.trim()),
            None => (line.as_str(), ""),
        };
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                self.greeted = true;
                self.transaction = None;
                let reply = format!(
                    "250-{} greets {argument}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE {}\r\n",
                    self.sink.hostname, self.sink.max_message_size
                );
                self.reply(&reply).await?;
            }
            "HELO" => {
                self.greeted = true;
                self.transaction = None;
                let reply = format!("250 {}\r\n", self.sink.hostname);
                self.reply(&reply).await?;
            }
            "MAIL" => self.mail(argument).await?,
            "RCPT" => self.rcpt(argument).await?,
            "DATA" => self.data().await?,
            "RSET" => {
                self.transaction = None;
                self.reply("250 2.0.0 OK\r\n").await?;
            }
            "NOOP" => self.reply("250 2.0.0 OK\r\n").await?,
            "VRFY" => {
                self.reply("252 2.1.5 Cannot verify, but will accept\r\n")
                    .await?;
            }
            "HELP" => {
                self.reply("214 EHLO HELO MAIL RCPT DATA RSET NOOP QUIT\r\n")
                    .await?;
            }
            "QUIT" => {
                self.reply("221 2.0.0 Bye\r\n").await?;
                return Ok(false);
            }
            "STARTTLS" | "AUTH" | "BDAT" | "ETRN" | "EXPN" | "TURN" => {
                self.reply("502 5.5.1 Command not implemented\r\n").await?;
            }
            _ => self.reply("500 5.5.2 Command not recognized\r\n").await?,
        }
        Ok(true)
    }

    async fn mail(&mut self, argument: &str) -> std::io::Result<()> {
        if !self.greeted {
            return self.reply("503 5.5.1 Send EHLO or HELO first\r\n").await;
        }
        if self.transaction.is_some() {
            return self.reply("503 5.5.1 Nested MAIL command\r\n").await;
        }
        let Some(path) = path_after(argument, "FROM:") else {
            return self
                .reply("501 5.5.4 Syntax: MAIL FROM:<address>\r\n")
                .await;
        };
        self.transaction = Some(Transaction {
            mail_from: path,
            recipients: Vec::new(),
        });
        self.reply("250 2.1.0 OK\r\n").await
    }

    async fn rcpt(&mut self, argument: &str) -> std::io::Result<()> {
        let Some(transaction) = self.transaction.as_mut() else {
            return self.reply("503 5.5.1 Send MAIL first\r\n").await;
        };
        let Some(path) = path_after(argument, "TO:") else {
            return self.reply("501 5.5.4 Syntax: RCPT TO:<address>\r\n").await;
        };
        if transaction.recipients.len() >= MAX_RECIPIENTS {
            return self.reply("452 4.5.3 Too many recipients\r\n").await;
        }
        transaction.recipients.push(path);
        self.reply("250 2.1.5 OK\r\n").await
    }

    async fn data(&mut self) -> std::io::Result<()> {
        let ready = self
            .transaction
            .as_ref()
            .is_some_and(|transaction| !transaction.recipients.is_empty());
        if !ready {
            return self.reply("503 5.5.1 Send RCPT first\r\n").await;
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>\r\n")
            .await?;
        let Some(transaction) = self.transaction.take() else {
            return Ok(());
        };
        let limit = self.sink.max_message_size;
        let mut message = Vec::with_capacity(4096);
        let mut oversized = false;
        loop {
            let start = message.len();
            let line = if oversized {
                // Past the limit the rest is only read, to find the end of the data.
                self.line.clear();
                append_line(&mut self.reader, &mut self.line, BUFFER_SIZE).await?
            } else {
                append_line(&mut self.reader, &mut message, limit.saturating_add(5)).await?
            };
            match line {
                Line::Eof => return Ok(()),
                Line::TooLong => {
                    oversized = true;
                    message = Vec::new();
                    continue;
                }
                Line::Complete => {}
            }
            let appended = if oversized {
                &self.line[..]
            } else {
                &message[start..]
            };
            if matches!(appended, b".\r\n" | b".\n") {
                message.truncate(start);
                break;
            }
            if !oversized && appended.first() == Some(&b'.') {
                // Dot-unstuffing: a data line starting with a period had one more added
                // (RFC 5321 section 4.5.2).
                message.remove(start);
            }
            if !oversized && message.len() > limit {
                oversized = true;
                message = Vec::new();
            }
        }
        if oversized {
            return self
                .reply("552 5.3.4 Message exceeds the size limit\r\n")
                .await;
        }
        self.accept(&transaction, &message).await
    }

    /// Stores (with `--maildir`) and counts one message, then answers `250`. The count (and the
    /// arrival time, served on `GET /messages/<id>`) comes before the answer: whoever saw the
    /// `250` finds the message counted.
    async fn accept(&mut self, transaction: &Transaction, message: &[u8]) -> std::io::Result<()> {
        if let Some(maildir) = &self.sink.maildir {
            let peer = self.peer.to_string();
            let envelope = Envelope {
                peer: &peer,
                mail_from: &transaction.mail_from,
                recipients: &transaction.recipients,
            };
            if let Err(error) = maildir.store(&envelope, message).await {
                tracing::warn!(error = %error, "Could not store a message in the Maildir.");
                return self
                    .reply("451 4.3.0 Could not store the message\r\n")
                    .await;
            }
        }
        self.sink
            .counters
            .record(message_id(message).as_deref(), SystemTime::now());
        self.reply("250 2.0.0 OK\r\n").await
    }

    /// Buffers a reply and flushes unless more pipelined input is already waiting.
    async fn reply(&mut self, reply: &str) -> std::io::Result<()> {
        self.writer.write_all(reply.as_bytes()).await?;
        if self.reader.buffer().is_empty() {
            self.writer.flush().await?;
        }
        Ok(())
    }
}

/// Appends one line (up to and including `\n`) from `reader` to `buffer`, unless `buffer`
/// would grow past `limit`; then the rest of the line is read and dropped, and what this call
/// appended is removed again.
async fn append_line(
    reader: &mut BufReader<OwnedReadHalf>,
    buffer: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Line> {
    let start = buffer.len();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            buffer.truncate(start);
            return Ok(Line::Eof);
        }
        let (length, complete) = match available.iter().position(|byte| *byte == b'\n') {
            Some(end) => (end + 1, true),
            None => (available.len(), false),
        };
        if !too_long {
            if buffer.len().saturating_add(length) > limit {
                too_long = true;
                buffer.truncate(start);
            } else {
                buffer.extend_from_slice(&available[..length]);
            }
        }
        reader.consume(length);
        if complete {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The path of `MAIL FROM:<path> [parameters]` or `RCPT TO:<path> [parameters]`, without
/// its angle brackets; `None` when `argument` does not start with `keyword`
/// (case-insensitive). Some clients put a space after the colon, which is tolerated.
fn path_after(argument: &str, keyword: &str) -> Option<String> {
    let head = argument.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = argument[keyword.len()..].trim_start();
    let path = match rest.strip_prefix('<') {
        Some(inner) => inner.split_once('>')?.0,
        None => rest.split_whitespace().next().unwrap_or(""),
    };
    Some(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_read_with_or_without_brackets_and_parameters() {
        assert_eq!(
            path_after("FROM:<a@example.com> BODY=8BITMIME", "FROM:").as_deref(),
            Some("a@example.com")
        );
        assert_eq!(path_after("from: <>", "FROM:").as_deref(), Some(""));
        assert_eq!(
            path_after("To:b@example.com", "TO:").as_deref(),
            Some("b@example.com")
        );
        assert_eq!(path_after("TO:<unterminated", "TO:"), None);
        assert_eq!(path_after("FROM:<a@example.com>", "TO:"), None);
        assert_eq!(path_after("", "TO:"), None);
    }
}
