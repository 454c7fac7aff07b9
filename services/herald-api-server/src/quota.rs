//! Per-caller submit quotas: one noisy service cannot take the API from the others.
//!
//! The quota is counted in Redis per fixed window, so it holds across API replicas. A replica
//! does not ask Redis for every submit: it takes tokens in chunks (a twentieth of the quota,
//! 1 to 200) and counts them down locally. Tokens a replica took but did not use by the end
//! of a window are lost, so the API may admit a little less than the quota (at most a chunk
//! per replica), never more.

use std::collections::HashMap;

use tokio::sync::Mutex;
use tonic::Status;

use crate::AppState;
use crate::auth::Caller;

/// Most tokens one replica takes at once.
const MAX_CHUNK: u64 = 200;

/// Tokens this replica holds, per caller identity, for the current window.
#[derive(Debug, Default)]
pub(crate) struct QuotaLeases {
    leases: Mutex<HashMap<String, Lease>>,
}

#[derive(Debug, Clone, Copy)]
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
    let mut leases = state.quota.leases.lock().await;
    let lease = leases.entry(caller.identity.to_string()).or_insert(Lease {
        window,
        remaining: 0,
    });
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
