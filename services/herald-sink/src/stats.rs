//! The counters: messages, distinct `Message-ID`s and duplicates, and the header scan that
//! finds a message's `Message-ID`.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// A snapshot of the counts, as served on `GET /stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Messages accepted with `250`.
    pub messages: u64,
    /// Distinct `Message-ID`s among them.
    pub distinct: u64,
    /// Messages whose `Message-ID` had been seen before.
    pub duplicates: u64,
    /// Messages without a `Message-ID` header (counted in `messages` only).
    pub without_message_id: u64,
}

/// The live counts. One lock guards all of them so that a snapshot or a reset is consistent;
/// it is held for a hash-set insert, far shorter than the SMTP round trips around it.
#[derive(Debug, Default)]
pub(crate) struct Counters(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    stats: Stats,
    seen: HashSet<Box<[u8]>>,
}

impl Counters {
    /// Counts one accepted message.
    pub(crate) fn record(&self, message_id: Option<&[u8]>) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.stats.messages += 1;
        match message_id {
            None => state.stats.without_message_id += 1,
            Some(id) => {
                if state.seen.contains(id) {
                    state.stats.duplicates += 1;
                } else {
                    state.seen.insert(id.into());
                    state.stats.distinct += 1;
                }
            }
        }
    }

    /// The counts right now.
    pub(crate) fn snapshot(&self) -> Stats {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).stats
    }

    /// Forgets everything; returns the counts as they were.
    pub(crate) fn reset(&self) -> Stats {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let before = state.stats;
        *state = State::default();
        before
    }
}

/// The value of the first `Message-ID` header of `message` (its header section: everything
/// before the first empty line), with folded lines unfolded and surrounding white space
/// trimmed. `None` when there is none or it is empty. The name is matched case-insensitively
/// ([RFC 5322 section 3.6.4](https://www.rfc-editor.org/rfc/rfc5322#section-3.6.4)).
pub(crate) fn message_id(message: &[u8]) -> Option<Vec<u8>> {
    let mut lines = message.split_inclusive(|byte| *byte == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = trim_line_end(line);
        if line.is_empty() {
            return None;
        }
        let Some(colon) = line.iter().position(|byte| *byte == b':') else {
            continue;
        };
        if !line[..colon]
            .trim_ascii_end()
            .eq_ignore_ascii_case(b"message-id")
        {
            continue;
        }
        let mut value = line[colon + 1..].to_vec();
        // A folded header continues on lines that start with white space.
        while let Some(next) =
            lines.next_if(|next| next.starts_with(b" ") || next.starts_with(b"\t"))
        {
            value.extend_from_slice(trim_line_end(next));
        }
        let trimmed = value.trim_ascii();
        return (!trimmed.is_empty()).then(|| trimmed.to_vec());
    }
    None
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests;
