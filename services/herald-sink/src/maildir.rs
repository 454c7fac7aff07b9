//! Optional storage of every message as a file in a Maildir: written to `tmp/`, then renamed
//! into `new/` so that a reader never sees half a file. Nothing is fsynced: the sink is for
//! benchmarks and development, and a crash may lose the last messages.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A Maildir (`tmp/`, `new/`, `cur/` under one directory).
#[derive(Debug)]
pub(crate) struct Maildir {
    root: PathBuf,
    /// Makes file names unique within this process.
    sequence: AtomicU64,
}

/// Who sent a message and to whom, written as headers in front of it.
#[derive(Debug)]
pub(crate) struct Envelope<'a> {
    pub(crate) peer: &'a str,
    pub(crate) mail_from: &'a str,
    pub(crate) recipients: &'a [String],
}

impl Maildir {
    /// Creates the three folders when missing.
    pub(crate) fn create(root: &Path) -> std::io::Result<Self> {
        for folder in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(root.join(folder))?;
        }
        Ok(Self {
            root: root.to_owned(),
            sequence: AtomicU64::new(0),
        })
    }

    /// Stores one message (as received, CRLF line endings) with `X-Peer`, `X-MailFrom` and
    /// `X-RcptTo` headers in front, as aiosmtpd's `Mailbox` handler does.
    pub(crate) async fn store(
        &self,
        envelope: &Envelope<'_>,
        message: &[u8],
    ) -> std::io::Result<()> {
        let name = self.unique_name();
        let mut contents = format!(
            "X-Peer: {}\r\nX-MailFrom: {}\r\nX-RcptTo: {}\r\n",
            envelope.peer,
            envelope.mail_from,
            envelope.recipients.join(", ")
        )
        .into_bytes();
        contents.extend_from_slice(message);
        let temporary = self.root.join("tmp").join(&name);
        tokio::fs::write(&temporary, contents).await?;
        tokio::fs::rename(&temporary, self.root.join("new").join(&name)).await
    }

    /// `<seconds>.M<microseconds>P<pid>Q<sequence>.herald-sink`, the usual Maildir shape
    /// (<https://cr.yp.to/proto/maildir.html>).
    fn unique_name(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        format!(
            "{}.M{}P{}Q{}.herald-sink",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            self.sequence.fetch_add(1, Ordering::Relaxed)
        )
    }
}
