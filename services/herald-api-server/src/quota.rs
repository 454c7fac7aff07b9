//! Per-caller submit quotas: one noisy service cannot take the API from the others.

use std::time::Duration;

use tonic::Status;

use crate::AppState;
use crate::auth::Caller;

const WINDOW: Duration = Duration::from_secs(60);

/// Counts a submit against the caller's per-minute quota (`auth.principals[].quota_per_minute`,
/// else `submit.quota_per_minute`; 0 means unlimited). Over quota is `RESOURCE_EXHAUSTED`.
/// Redis trouble lets the submit through: quotas protect the API, they must not take it down.
pub(crate) async fn check(state: &AppState, caller: &Caller) -> Result<(), Status> {
    let quota = caller
        .quota_per_minute
        .unwrap_or(state.settings.submit.quota_per_minute);
    if quota == 0 {
        return Ok(());
    }
    match state.redis.count_submit(&caller.identity, WINDOW).await {
        Ok(count) if count > quota => {
            tracing::warn!(caller = %caller.identity, quota, "Submit quota exceeded.");
            Err(Status::resource_exhausted(format!(
                "{} may submit at most {quota} notifications per minute; retry after the current minute",
                caller.identity
            )))
        }
        Ok(_) => Ok(()),
        Err(error) => {
            tracing::warn!(error = %error, "Submit quota unavailable; letting the submit through.");
            Ok(())
        }
    }
}
