//! Provider failover: a channel's ordered providers, each behind a circuit breaker.
//!
//! Attempt `n` of a delivery starts at provider `(n - 1) % len`, so a retryable failure moves
//! the next attempt to the next provider. Before that, providers whose breaker is open are
//! skipped, so an outage moves even first attempts away from the failing provider until a
//! trial call after `open_for` finds it healthy again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::{DeliveryError, Receipt};

/// When a provider's circuit opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive failed calls (retryable or unknown outcome) that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit sends no calls; then one trial call decides.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

impl herald_config::Validate for BreakerSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        if self.failure_threshold == 0 {
            problems.push("breaker.failure_threshold must be at least 1".into());
        }
        if self.open_for.is_zero() {
            problems.push("breaker.open_for must be positive".into());
        }
    }
}

/// A circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls are diverted to other providers until the instant passes.
    Open,
    /// The open period is over; one trial call is in flight or may start.
    HalfOpen,
}

impl CircuitState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The `herald.provider.circuit.state` gauge value: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

#[derive(Debug)]
struct Breaker {
    settings: BreakerSettings,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

impl Breaker {
    fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn state(&self) -> CircuitState {
        let state = self.lock();
        match state.open_until {
            None => CircuitState::Closed,
            Some(until) if Instant::now() < until => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// Whether a call may go to this provider now. A half-open circuit admits one trial call
    /// and stays closed to others for another `open_for`, so a trial whose result never comes
    /// back (its task was cancelled) only delays the next trial.
    fn try_admit(&self) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        match state.open_until {
            None => true,
            Some(until) if now < until => false,
            Some(_) => {
                state.trial_in_flight = true;
                state.open_until = Some(now + self.settings.open_for);
                true
            }
        }
    }

    fn record_success(&self) {
        let mut state = self.lock();
        *state = BreakerState::default();
    }

    fn record_failure(&self) -> bool {
        let mut state = self.lock();
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        let trial_failed = state.trial_in_flight;
        state.trial_in_flight = false;
        if trial_failed || state.consecutive_failures >= self.settings.failure_threshold {
            let newly_opened = state.open_until.is_none();
            state.open_until = Some(Instant::now() + self.settings.open_for);
            return newly_opened || trial_failed;
        }
        false
    }
}

struct Member<P: ?Sized> {
    name: String,
    provider: Arc<P>,
    breaker: Breaker,
}

/// A channel's providers in order of preference, each with its own circuit breaker.
pub struct Failover<P: ?Sized> {
    members: Vec<Member<P>>,
}

impl<P: ?Sized> std::fmt::Debug for Failover<P> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_list()
            .entries(
                self.members
                    .iter()
                    .map(|member| (member.name.as_str(), member.breaker.state())),
            )
            .finish()
    }
}

impl<P: ?Sized + Send + Sync> Failover<P> {
    /// Providers in order of preference, by name.
    ///
    /// # Panics
    /// When `members` is empty: a channel needs at least one provider (settings validation
    /// refuses an empty list before this is reached).
    pub fn new(breaker: BreakerSettings, members: Vec<(String, Arc<P>)>) -> Self {
        assert!(
            !members.is_empty(),
            "a failover needs at least one provider"
        );
        Self {
            members: members
                .into_iter()
                .map(|(name, provider)| Member {
                    name,
                    provider,
                    breaker: Breaker::new(breaker),
                })
                .collect(),
        }
    }

    /// The provider for a delivery's `cycle_attempt` (1-based): providers are tried from
    /// `(cycle_attempt - 1) % len` on, and the first whose circuit admits a call is chosen.
    /// When every circuit is open the rotation's first provider is used anyway: the delivery
    /// still gets its attempt, and the retry policy decides what happens after it.
    pub fn select(&self, cycle_attempt: u32) -> Selected<'_, P> {
        let count = self.members.len();
        let start = usize::try_from(cycle_attempt.saturating_sub(1)).unwrap_or(0) % count;
        let chosen = (0..count)
            .map(|offset| &self.members[(start + offset) % count])
            .find(|member| member.breaker.try_admit())
            .unwrap_or(&self.members[start]);
        Selected { member: chosen }
    }

    /// The provider for the attempt `context` describes. A delivery pinned to a provider (an
    /// earlier attempt's outcome there is unknown) goes to it, whatever its circuit says: a
    /// resend elsewhere could deliver twice, and only that provider can deduplicate it. A
    /// takeover that resends goes where the rotation sent the lost attempt (the provider it
    /// used unless that provider's circuit was open then; which one it used is not recorded).
    /// Any other attempt is `select(cycle_attempt)`. A pin names a provider of this list, or
    /// several joined by `+` (push records `apns+fcm`).
    pub fn select_for(&self, context: &crate::DeliveryContext) -> Selected<'_, P> {
        let pinned = context.pinned_provider.as_deref().and_then(|pinned| {
            self.members
                .iter()
                .find(|member| pinned.split('+').any(|name| name == member.name))
        });
        if let Some(member) = pinned {
            return Selected { member };
        }
        if context.takeover {
            let lost_attempt = context.cycle_attempt.saturating_sub(1).max(1);
            let start = usize::try_from(lost_attempt - 1).unwrap_or(0) % self.members.len();
            return Selected {
                member: &self.members[start],
            };
        }
        self.select(context.cycle_attempt)
    }

    /// Every provider's name and circuit state, in order.
    pub fn states(&self) -> Vec<(&str, CircuitState)> {
        self.members
            .iter()
            .map(|member| (member.name.as_str(), member.breaker.state()))
            .collect()
    }
}

/// The provider chosen for one attempt.
pub struct Selected<'a, P: ?Sized> {
    member: &'a Member<P>,
}

impl<P: ?Sized> Selected<'_, P> {
    /// The provider's configured name, recorded on the attempt.
    pub fn name(&self) -> &str {
        &self.member.name
    }

    /// The provider.
    pub fn provider(&self) -> &P {
        &self.member.provider
    }

    /// Feeds the call's result to the provider's breaker. Retryable failures and unknown
    /// outcomes count against the provider; a delivery, a permanent rejection and an invalid
    /// address show it is up.
    pub fn record(&self, result: &Result<Receipt, DeliveryError>) {
        let breaker = &self.member.breaker;
        match result {
            Err(DeliveryError::Retryable(_) | DeliveryError::Unknown(_)) => {
                if breaker.record_failure() {
                    tracing::warn!(
                        provider = %self.member.name,
                        open_for_ms = breaker.settings.open_for.as_millis() as u64,
                        "Provider circuit opened; sending through the next provider."
                    );
                }
            }
            Ok(_) | Err(DeliveryError::Permanent(_) | DeliveryError::AddressInvalid { .. }) => {
                if breaker.state() != CircuitState::Closed {
                    tracing::info!(provider = %self.member.name, "Provider circuit closed.");
                }
                breaker.record_success();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failover(threshold: u32) -> Failover<str> {
        Failover::new(
            BreakerSettings {
                failure_threshold: threshold,
                open_for: Duration::from_secs(30),
            },
            vec![
                ("primary".to_owned(), Arc::from("primary")),
                ("secondary".to_owned(), Arc::from("secondary")),
            ],
        )
    }

    fn retryable() -> Result<Receipt, DeliveryError> {
        Err(DeliveryError::Retryable("503".into()))
    }

    #[test]
    fn attempts_rotate_through_the_providers() {
        let failover = failover(5);
        let names: Vec<String> = (1..=4)
            .map(|attempt| failover.select(attempt).name().to_owned())
            .collect();
        assert_eq!(names, ["primary", "secondary", "primary", "secondary"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_diverts_first_attempts_until_a_trial_succeeds() {
        let failover = failover(2);
        for _ in 0..2 {
            let selected = failover.select(1);
            assert_eq!(selected.name(), "primary");
            selected.record(&retryable());
        }
        assert_eq!(failover.states()[0], ("primary", CircuitState::Open));
        assert_eq!(failover.select(1).name(), "secondary");

        tokio::time::advance(Duration::from_secs(31)).await;
        let trial = failover.select(1);
        assert_eq!(
            trial.name(),
            "primary",
            "the half-open trial goes to the primary"
        );
        assert_eq!(
            failover.select(1).name(),
            "secondary",
            "only one trial call at a time"
        );
        trial.record(&Ok(Receipt::default()));
        assert_eq!(failover.states()[0], ("primary", CircuitState::Closed));
        assert_eq!(failover.select(1).name(), "primary");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_opens_the_circuit_again() {
        let failover = failover(1);
        failover.select(1).record(&retryable());
        tokio::time::advance(Duration::from_secs(31)).await;
        let trial = failover.select(1);
        assert_eq!(trial.name(), "primary");
        trial.record(&retryable());
        assert_eq!(failover.states()[0].1, CircuitState::Open);
        assert_eq!(failover.select(1).name(), "secondary");
    }

    #[test]
    fn permanent_errors_do_not_count_against_a_provider() {
        let failover = failover(1);
        failover
            .select(1)
            .record(&Err(DeliveryError::Permanent("bad request".into())));
        assert_eq!(failover.states()[0].1, CircuitState::Closed);
    }

    #[test]
    fn with_every_circuit_open_the_rotation_still_picks_a_provider() {
        let failover = failover(1);
        failover.select(1).record(&retryable());
        failover.select(2).record(&retryable());
        assert_eq!(failover.select(1).name(), "primary");
        assert_eq!(failover.select(2).name(), "secondary");
    }
}
