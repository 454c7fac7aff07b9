//! The delivery state machine.
//!
//! ```text
//! pending ──relay──▶ queued ──claim──▶ sending ──▶ delivered
//!                      ▲                  │  ├──▶ failed
//!                      └── retry_wait ◀───┘  └──▶ unknown
//! pending ──preferences/limits──▶ suppressed
//! scheduled (send_at, quiet hours) ──relay, when due──▶ queued
//! sending ──quiet hours began──▶ scheduled
//! failed | unknown ──admin replay──▶ pending
//! sending (lease expired) ──takeover──▶ sending
//! ```

use std::fmt;
use std::str::FromStr;

use crate::ValueError;

/// Where a delivery is in its lifecycle. Stored as its `as_str` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Stored with its notification; the outbox row is not yet published.
    Pending,
    /// Waiting for its time (`send_at`, or the end of the recipient's quiet hours).
    Scheduled,
    /// Published to the channel queue.
    Queued,
    /// Claimed by a worker that is calling the provider.
    Sending,
    /// The provider accepted the message.
    Delivered,
    /// A retryable failure; another attempt is scheduled.
    RetryWait,
    /// A permanent failure or retries exhausted.
    Failed,
    /// Deliberately not sent (preferences, rate limits).
    Suppressed,
    /// The provider call's outcome cannot be known.
    Unknown,
}

impl DeliveryState {
    /// Every state, in lifecycle order.
    pub const ALL: [Self; 9] = [
        Self::Pending,
        Self::Scheduled,
        Self::Queued,
        Self::Sending,
        Self::Delivered,
        Self::RetryWait,
        Self::Failed,
        Self::Suppressed,
        Self::Unknown,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Delivered => "delivered",
            Self::RetryWait => "retry_wait",
            Self::Failed => "failed",
            Self::Suppressed => "suppressed",
            Self::Unknown => "unknown",
        }
    }

    /// True when no further attempt will be made.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Delivered | Self::Failed | Self::Suppressed | Self::Unknown
        )
    }

    /// States from which a worker may claim the delivery for an attempt.
    pub fn is_claimable(self) -> bool {
        matches!(self, Self::Pending | Self::Queued | Self::RetryWait)
    }

    /// Whether the machine allows moving from `self` to `next`.
    pub fn can_become(self, next: Self) -> bool {
        use DeliveryState::*;
        matches!(
            (self, next),
            (Pending, Queued | Suppressed | Sending)
                | (Scheduled, Queued | Suppressed)
                | (Sending, Scheduled)
                | (Queued, Sending | Suppressed)
                | (RetryWait, Queued | Sending | Suppressed)
                | (Sending, Delivered | Failed | RetryWait | Unknown | Suppressed | Sending)
                // An admin replay starts a new attempt cycle.
                | (Failed | Unknown, Pending)
        )
    }
}

impl FromStr for DeliveryState {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| ValueError::new(format!("unknown delivery state `{text}`")))
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}
