//! What a worker does when it cannot know whether a provider has a delivery: a timeout or a
//! lost connection after the request left (`DeliveryError::Unknown`), or a takeover of a claim
//! whose lease expired (the previous worker may have sent it). Each channel follows its
//! configured policy, `[worker.unknown_outcome]`.

use std::time::Duration;

use herald_domain::Channel;
use serde::Deserialize;

/// The policy for an attempt whose outcome cannot be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownOutcome {
    /// At most once: the delivery stays `unknown` (a failure of class `unknown`, which the
    /// sentinel alerts on), counted in `herald.delivery.held`, until an operator checks with
    /// the provider and replays or discards it.
    Hold,
    /// At least once: another attempt follows, always to the same provider (the delivery is
    /// pinned to it), with the delivery id as its idempotency key where the provider honours
    /// one.
    Resend,
}

impl UnknownOutcome {
    /// `hold` or `resend`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hold => "hold",
            Self::Resend => "resend",
        }
    }
}

/// The policy of each channel (`[worker.unknown_outcome]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnknownOutcomeSettings {
    /// SMTP has no idempotency key: a resend is a second email (with the same `Message-ID`,
    /// which few mail clients fold), so email holds by default.
    pub email: UnknownOutcome,
    /// The HTTP gateway deduplicates by the delivery id (`Idempotency-Key`), and a lost
    /// one-time code costs more than a rare duplicate through Twilio: SMS resends by default.
    pub sms: UnknownOutcome,
    /// APNs gets the delivery id as `apns-id` and a collapse id; a repeated push replaces or
    /// repeats a banner: push resends by default.
    pub push: UnknownOutcome,
    /// The inbox is Herald's own table, one item per delivery: a resend never makes a second
    /// item, so in-app resends by default.
    pub in_app: UnknownOutcome,
    /// Slack webhooks have no idempotency key (signed webhooks carry `webhook-id`, which
    /// receivers may deduplicate by); a duplicate post is visible to people: chat holds by
    /// default.
    pub chat: UnknownOutcome,
}

impl Default for UnknownOutcomeSettings {
    fn default() -> Self {
        Self {
            email: UnknownOutcome::Hold,
            sms: UnknownOutcome::Resend,
            push: UnknownOutcome::Resend,
            in_app: UnknownOutcome::Resend,
            chat: UnknownOutcome::Hold,
        }
    }
}

impl UnknownOutcomeSettings {
    /// The policy of `channel`.
    pub fn for_channel(&self, channel: Channel) -> UnknownOutcome {
        match channel {
            Channel::Email => self.email,
            Channel::Sms => self.sms,
            Channel::Push => self.push,
            Channel::InApp => self.in_app,
            Channel::Chat => self.chat,
        }
    }
}

/// The longest a worker may wait for its provider on one claim: one provider call takes at
/// most `provider_timeout` (each of its stages, `stages` of them) and a claim makes
/// `fan_out` calls one after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderBound {
    /// The configured timeout of one stage of a provider call.
    pub provider_timeout: Duration,
    /// Stages of one call each bounded by `provider_timeout` (SMTP: connection, envelope,
    /// message; HTTP providers: one).
    pub stages: u32,
    /// Provider calls one claim makes one after another (push: a user's devices, up to the
    /// concurrency the channel uses for them; others: one).
    pub fan_out: u32,
    /// The setting that holds the timeout, for the message (`smtp.timeout`).
    pub setting: &'static str,
}

impl ProviderBound {
    /// The longest the calls of one claim can take.
    pub fn total(&self) -> Duration {
        self.provider_timeout
            .saturating_mul(self.stages)
            .saturating_mul(self.fan_out)
    }
}

/// The problem, if any, with a `lease` that does not outlast the provider calls of one claim:
/// a lease that ran out while its worker still waited for the provider lets another worker
/// take the delivery over, and then either hold it or send it again, while the first
/// attempt may still succeed.
pub fn lease_problem(lease: Duration, bound: &ProviderBound) -> Option<String> {
    let needed = bound.total();
    (lease <= needed).then(|| {
        format!(
            "worker.lease ({}) must be longer than {} ({}) x {} stage(s) x a fan-out of {} = {}: \
             a lease that runs out while the provider is still being called lets another \
             worker take the delivery over",
            humantime::format_duration(lease),
            bound.setting,
            humantime::format_duration(bound.provider_timeout),
            bound.stages,
            bound.fan_out,
            humantime::format_duration(needed),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(seconds: u64, stages: u32, fan_out: u32) -> ProviderBound {
        ProviderBound {
            provider_timeout: Duration::from_secs(seconds),
            stages,
            fan_out,
            setting: "smtp.timeout",
        }
    }

    #[test]
    fn a_lease_longer_than_every_stage_of_every_call_is_accepted() {
        assert_eq!(
            lease_problem(Duration::from_secs(31), &bound(10, 3, 1)),
            None
        );
        assert_eq!(
            lease_problem(Duration::from_secs(60), &bound(10, 1, 5)),
            None
        );
    }

    #[test]
    fn a_lease_no_longer_than_the_provider_calls_is_refused_with_the_arithmetic() {
        let problem = lease_problem(Duration::from_secs(30), &bound(10, 3, 1))
            .expect("30s does not outlast 3 stages of 10s");
        assert!(
            problem.starts_with(
                "worker.lease (30s) must be longer than smtp.timeout (10s) x 3 stage(s) x a \
                 fan-out of 1 = 30s"
            ),
            "{problem}"
        );
        assert!(lease_problem(Duration::from_secs(49), &bound(10, 1, 5)).is_some());
    }

    #[test]
    fn each_channel_has_its_documented_default() {
        let defaults = UnknownOutcomeSettings::default();
        let policies: Vec<&str> = [
            Channel::Email,
            Channel::Sms,
            Channel::Push,
            Channel::InApp,
            Channel::Chat,
        ]
        .into_iter()
        .map(|channel| defaults.for_channel(channel).as_str())
        .collect();
        assert_eq!(policies, ["hold", "resend", "resend", "resend", "hold"]);
    }
}
