//! Rate limits against spam: at most N notifications of one type per user per window,
//! enforced atomically in Redis by every worker just before sending, for a whole batch of
//! deliveries in one pipelined round trip.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_domain::Priority;
use herald_redis::RedisCache;
use serde::Deserialize;

use crate::DeliveryContext;

/// What happens to a delivery when Redis cannot answer.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Send anyway (the limit is not enforced while Redis is away).
    Open,
    /// Suppress with reason `rate_limit_unavailable`.
    Closed,
}

/// One limit.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitRule {
    /// Most notifications of the type per user within `window`.
    pub limit: u32,
    /// The sliding window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Overrides the category-based default when Redis is away.
    #[serde(default)]
    pub on_redis_down: Option<FailMode>,
}

/// Rate limits per notification type (template key).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Whether limits are enforced at all.
    pub enabled: bool,
    /// The limit of every type without its own entry in `types`.
    pub default: LimitRule,
    /// Limits per template key.
    pub types: BTreeMap<String, LimitRule>,
    /// Critical-priority notifications of these categories bypass limits.
    pub bypass_categories: Vec<String>,
    /// When Redis is away, these categories are suppressed (fail closed); every other
    /// category, and critical priority always, is sent (fail open).
    pub fail_closed_categories: Vec<String>,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            default: LimitRule {
                limit: 3,
                window: Duration::from_secs(24 * 60 * 60),
                on_redis_down: None,
            },
            types: BTreeMap::new(),
            bypass_categories: vec!["security".into()],
            fail_closed_categories: vec!["marketing".into()],
        }
    }
}

impl herald_config::Validate for RateLimitSettings {
    fn validate(&self, problems: &mut Vec<String>) {
        for (name, rule) in std::iter::once(("default", &self.default))
            .chain(self.types.iter().map(|(name, rule)| (name.as_str(), rule)))
        {
            if rule.limit == 0 || rule.window.is_zero() {
                problems.push(format!(
                    "rate_limits.{name}: limit and window must be positive"
                ));
            }
        }
    }
}

/// Whether a delivery may be sent now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Send it.
    Send,
    /// Do not send; record it as suppressed for this reason.
    Suppress(String),
}

/// Applies `RateLimitSettings` with Redis.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    redis: RedisCache,
    settings: RateLimitSettings,
}

impl RateLimiter {
    /// A limiter over `redis`.
    pub fn new(redis: RedisCache, settings: RateLimitSettings) -> Self {
        Self { redis, settings }
    }

    /// Decides whether `context` may be sent. Counts it (once, however often it is retried)
    /// when it may.
    pub async fn admit(&self, context: &DeliveryContext) -> Admission {
        self.admit_many(&[context])
            .await
            .pop()
            .unwrap_or(Admission::Send)
    }

    /// `admit` for a batch, in one pipelined Redis round trip; the answers are in the order of
    /// `contexts`. Two deliveries of one user and type in a batch are counted one after the
    /// other, as if admitted separately.
    pub async fn admit_many(&self, contexts: &[&DeliveryContext]) -> Vec<Admission> {
        let checks: Vec<Option<(&LimitRule, &str)>> =
            contexts.iter().map(|context| self.check(context)).collect();
        let members: Vec<String> = contexts
            .iter()
            .map(|context| context.delivery_id.to_string())
            .collect();
        let asked: Vec<herald_redis::Admission<'_>> = contexts
            .iter()
            .zip(&checks)
            .zip(&members)
            .filter_map(|((context, check), member)| {
                check.map(|(rule, subject)| herald_redis::Admission {
                    notification_type: &context.template_key,
                    subject,
                    member,
                    limit: rule.limit,
                    window: rule.window,
                })
            })
            .collect();
        let answered = if asked.is_empty() {
            Ok(Vec::new())
        } else {
            self.redis.admit_many(&asked).await
        };
        let mut answers = match &answered {
            Ok(admitted) => admitted.clone().into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        contexts
            .iter()
            .zip(checks)
            .map(|(context, check)| {
                let Some((rule, _)) = check else {
                    return Admission::Send;
                };
                match (&answered, answers.next()) {
                    (Ok(_), Some(true)) => Admission::Send,
                    (Ok(_), Some(false)) => Admission::Suppress(format!(
                        "rate_limited: at most {} `{}` per {} per user",
                        rule.limit,
                        context.template_key,
                        humantime::format_duration(rule.window)
                    )),
                    (Err(error), _) => self.unavailable(context, rule, error),
                    (Ok(_), None) => self.unavailable(
                        context,
                        rule,
                        &herald_redis::Error::Unavailable("missing answer".into()),
                    ),
                }
            })
            .collect()
    }

    /// The rule and subject `context` is counted under, or `None` when no limit applies
    /// (limits off, a critical notification of a bypass category, no subject).
    fn check<'a>(&'a self, context: &'a DeliveryContext) -> Option<(&'a LimitRule, &'a str)> {
        if !self.settings.enabled {
            return None;
        }
        let critical = context.priority == Priority::Critical;
        if critical && self.settings.bypass_categories.contains(&context.category) {
            return None;
        }
        let subject = context.user_id.as_deref().or(context.address.as_deref())?;
        let rule = self
            .settings
            .types
            .get(&context.template_key)
            .unwrap_or(&self.settings.default);
        Some((rule, subject))
    }

    /// The admission of `context` when Redis could not answer: its rule's or its category's
    /// fail mode.
    fn unavailable(
        &self,
        context: &DeliveryContext,
        rule: &LimitRule,
        error: &herald_redis::Error,
    ) -> Admission {
        let critical = context.priority == Priority::Critical;
        let closed = !critical
            && self
                .settings
                .fail_closed_categories
                .contains(&context.category);
        let mode = rule.on_redis_down.unwrap_or(if closed {
            FailMode::Closed
        } else {
            FailMode::Open
        });
        tracing::warn!(delivery.id = %context.delivery_id, error = %error, fail_mode = ?mode, "Rate limits unavailable.");
        match mode {
            FailMode::Open => Admission::Send,
            FailMode::Closed => Admission::Suppress(
                "rate_limit_unavailable: limits could not be checked and this category fails closed".into(),
            ),
        }
    }
}
