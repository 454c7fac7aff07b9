//! `/healthz` and `/readyz`, served beside `/metrics` on the metrics port: plain HTTP, so that
//! a kubelet (which cannot present a client certificate to the mTLS gRPC port) can probe every
//! service.
//!
//! `/healthz` answers 200 while the process serves at all (liveness). `/readyz` answers 200 when
//! every dependency the service registered is reachable, and 503 naming those that are not
//! (readiness): a check that does not answer within `CHECK_TIMEOUT` counts as unreachable.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Longest a readiness check may take before its dependency counts as unreachable.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// The dependencies `/readyz` checks, each by name.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.checks.iter().map(|(name, _)| *name).collect();
        formatter
            .debug_struct("Readiness")
            .field("checks", &names)
            .finish()
    }
}

impl Readiness {
    /// Adds `name`, reachable when `check` answers `Ok` within `CHECK_TIMEOUT`. The error text
    /// is logged at debug level, never served.
    #[must_use]
    pub fn with_check<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name, Arc::new(move || Box::pin(check()) as CheckFuture)));
        self
    }

    /// Adds `name`, reachable while `connected` answers true (the live state of a connection
    /// a supervisor keeps up).
    #[must_use]
    pub fn with_state(
        self,
        name: &'static str,
        connected: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        self.with_check(name, move || {
            let up = connected();
            async move {
                if up {
                    Ok(())
                } else {
                    Err("not connected".into())
                }
            }
        })
    }

    /// Runs every check at once: each dependency by name with whether it answered in time.
    pub async fn check_each(&self) -> Vec<(&'static str, bool)> {
        futures::future::join_all(self.checks.iter().map(|(name, check)| {
            let check = Arc::clone(check);
            let name = *name;
            async move {
                match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                    Ok(Ok(())) => (name, true),
                    Ok(Err(error)) => {
                        tracing::debug!(dependency = name, error = %error, "Not ready.");
                        (name, false)
                    }
                    Err(_elapsed) => {
                        tracing::debug!(dependency = name, "Not ready: the check timed out.");
                        (name, false)
                    }
                }
            }
        }))
        .await
    }

    /// Runs every check at once: `Ok` with the names checked, or `Err` with those unreachable.
    pub async fn check(&self) -> Result<Vec<&'static str>, Vec<&'static str>> {
        verdict(&self.check_each().await)
    }
}

/// `Ok` with every name when all are up, or `Err` with the names of those down.
pub(crate) fn verdict(
    results: &[(&'static str, bool)],
) -> Result<Vec<&'static str>, Vec<&'static str>> {
    let unreachable: Vec<_> = results
        .iter()
        .filter(|(_, up)| !up)
        .map(|(name, _)| *name)
        .collect();
    if unreachable.is_empty() {
        Ok(results.iter().map(|(name, _)| *name).collect())
    } else {
        Err(unreachable)
    }
}
