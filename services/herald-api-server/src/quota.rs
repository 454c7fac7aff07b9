//! Per-caller submit quotas: one noisy service cannot take the API from the others.
//!
//! The quota is counted in Redis per fixed window, so it holds across API replicas. A replica
//! does not ask Redis for every submit: it takes tokens in chunks (a twentieth of the quota,
//! 1 to 200) and counts them down locally. Tokens a replica took but did not use by the end
//! of a window are lost, so the API may admit a little less than the quota (at most a chunk
//! per replica), never more.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use tokio::sync::Mutex;
use tonic::Status;

use crate::AppState;
use crate::auth::Caller;

/// Most tokens one replica takes at once.
const MAX_CHUNK: u64 = 200;

/// Tokens this replica holds, per caller identity, for the current window. Each identity has
/// its own lock, held across a refill from Redis, so that concurrent submits of one caller
/// take one chunk between them, while other callers' submits go on.
#[derive(Debug, Default)]
pub(crate) struct QuotaLeases {
    leases: std::sync::Mutex<HashMap<String, Arc<Mutex<Lease>>>>,
}

impl QuotaLeases {
    /// The lease of `identity`, created empty on its first submit.
    fn of(&self, identity: &str) -> Arc<Mutex<Lease>> {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lease) = leases.get(identity) {
            return Arc::clone(lease);
        }
        Arc::clone(leases.entry(identity.to_owned()).or_default())
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Lease {
    window: u64,
    remaining: u64,
}

/// Counts `count` submits against the caller's per-minute quota
/// (`auth.principals[].quota_per_minute`, else `submit.quota_per_minute`; 0 means
/// unlimited). Over quota is `RESOURCE_EXHAUSTED`. Redis trouble lets the submits through:
/// quotas protect the API, they must not take it down.
pub(crate) async fn check(state: &AppState, caller: &Caller, count: u64) -> Result<(), Status> {
    let quota = caller
        .quota_per_minute
        .unwrap_or(state.settings.submit.quota_per_minute);
    if quota == 0 {
        return Ok(());
    }
    let window_length = state.settings.submit.quota_window;
    let window = herald_redis::quota_window(window_length);
    let lease = state.quota.of(caller.identity.as_ref());
    let mut lease = lease.lock().await;
    if lease.window != window {
        *lease = Lease {
            window,
            remaining: 0,
        };
    }
    if lease.remaining >= count {
        lease.remaining -= count;
        return Ok(());
    }
    // Take what is missing plus a chunk for the submits to come.
    let chunk = (quota / 20).clamp(1, MAX_CHUNK);
    let wanted = count - lease.remaining + chunk - 1;
    match state
        .redis
        .count_submits(&caller.identity, window_length, window, wanted)
        .await
    {
        Ok(total) => {
            let before = total.saturating_sub(wanted);
            let granted = quota.saturating_sub(before).min(wanted);
            let available = lease.remaining + granted;
            if available < count {
                // What was granted stays with this replica for smaller submits.
                lease.remaining = available;
                tracing::warn!(caller = %caller.identity, quota, "Submit quota exceeded.");
                let per = if window_length.as_secs() == 60 {
                    "minute".to_owned()
                } else {
                    humantime::format_duration(window_length).to_string()
                };
                return Err(Status::resource_exhausted(format!(
                    "{} may submit at most {quota} notifications per {per}; retry after the current {per}",
                    caller.identity
                )));
            }
            lease.remaining = available - count;
            Ok(())
        }
        Err(error) => {
            tracing::warn!(error = %error, "Submit quota unavailable; letting the submit through.");
            Ok(())
        }
    }
}
