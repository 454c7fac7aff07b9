//! The counters: messages, distinct `Message-ID`s and duplicates, when each `Message-ID`
//! first arrived, and the header scan that finds a message's `Message-ID`.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

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

/// When a message with one `Message-ID` first arrived and how many copies did, as served on
/// `GET /messages/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageArrival {
    /// The `Message-ID` as received, angle brackets included (`<delivery-id@herald>`).
    pub message_id: String,
    /// When the first copy was accepted: wall-clock milliseconds since the Unix epoch, taken
    /// just before its `250`, so that it can be compared with another process's clock on the
    /// same machine.
    pub arrived_at_unix_ms: u64,
    /// Messages accepted with this `Message-ID`: 1, or more after resends.
    pub copies: u64,
}

/// The live counts. One lock guards all of them so that a snapshot or a reset is consistent;
/// it is held for a hash-map insert, far shorter than the SMTP round trips around it.
#[derive(Debug, Default)]
pub(crate) struct Counters(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    stats: Stats,
    /// Every `Message-ID` since the start or the last reset: the duplicate check needs them
    /// all anyway, and the first arrival time and the number of copies ride along (about
    /// 100 bytes per id with Herald's ids, so 10 MB for a campaign of 100,000).
    seen: HashMap<Box<[u8]>, Arrival>,
}

#[derive(Debug, Clone, Copy)]
struct Arrival {
    arrived_at_unix_ms: u64,
    copies: u64,
}

impl Counters {
    /// Counts one message accepted at `arrived_at`.
    pub(crate) fn record(&self, message_id: Option<&[u8]>, arrived_at: SystemTime) {
        let arrived_at_unix_ms = unix_ms(arrived_at);
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.stats.messages += 1;
        match message_id {
            None => state.stats.without_message_id += 1,
            Some(id) => {
                if let Some(arrival) = state.seen.get_mut(id) {
                    arrival.copies += 1;
                    state.stats.duplicates += 1;
                } else {
                    state.seen.insert(
                        id.into(),
                        Arrival {
                            arrived_at_unix_ms,
                            copies: 1,
                        },
                    );
                    state.stats.distinct += 1;
                }
            }
        }
    }

    /// When the message with `message_id` (as in its header, angle brackets included) first
    /// arrived, and how many copies did; `None` when none arrived since the last reset.
    pub(crate) fn arrival(&self, message_id: &str) -> Option<MessageArrival> {
        let state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .seen
            .get(message_id.as_bytes())
            .map(|arrival| MessageArrival {
                message_id: message_id.to_owned(),
                arrived_at_unix_ms: arrival.arrived_at_unix_ms,
                copies: arrival.copies,
            })
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

/// Milliseconds since the Unix epoch; 0 for a clock set before 1970.
fn unix_ms(instant: SystemTime) -> u64 {
    instant.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
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
