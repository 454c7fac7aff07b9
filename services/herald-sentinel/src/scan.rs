//! One scan: collect alert-worthy events, group them by fingerprint, alert or fold.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection as _;
use herald_db::alerts::{self, OverdueDelivery, UnalertedFailure};
use herald_domain::Priority;
use uuid::Uuid;

use crate::AlertSettings;
use crate::sinks::{Alert, Sinks};

/// How many notification ids an alert lists.
const SAMPLE_IDS: usize = 5;

pub(crate) struct Scanner {
    pool: herald_db::Pool,
    sinks: Sinks,
    settings: AlertSettings,
}

/// Events that share a fingerprint and become (at most) one alert.
enum Group {
    Failed {
        items: Vec<UnalertedFailure>,
    },
    Overdue {
        sla: std::time::Duration,
        items: Vec<OverdueDelivery>,
    },
}

impl Group {
    fn kind(&self) -> &'static str {
        match self {
            Self::Failed { .. } => "delivery_failed",
            Self::Overdue { .. } => "sla_missed",
        }
    }

    fn count(&self) -> usize {
        match self {
            Self::Failed { items } => items.len(),
            Self::Overdue { items, .. } => items.len(),
        }
    }

    fn render(&self, folded: i32) -> Alert {
        let mut text = String::new();
        let (subject, notification_ids): (String, Vec<String>) = match self {
            Self::Failed { items } => {
                let first = &items[0];
                let _ = writeln!(text, "Last error: {}", items[items.len() - 1].error);
                let _ = writeln!(
                    text,
                    "Inspect and replay: herald-cli failures list --class {}",
                    first.class
                );
                (
                    format!(
                        "[Herald] {} {} deliveries of `{}` failed for good ({})",
                        items.len(),
                        first.channel,
                        first.template_key,
                        first.class
                    ),
                    items
                        .iter()
                        .map(|item| item.notification_id.to_string())
                        .collect(),
                )
            }
            Self::Overdue { sla, items } => {
                let first = &items[0];
                let mut states: BTreeMap<&str, usize> = BTreeMap::new();
                for item in items {
                    *states.entry(item.state.as_str()).or_default() += 1;
                }
                let states: Vec<String> = states
                    .iter()
                    .map(|(state, count)| format!("{state}: {count}"))
                    .collect();
                let _ = writeln!(
                    text,
                    "Oldest accepted at {}; states: {}",
                    first.created_at.to_rfc3339(),
                    states.join(", ")
                );
                (
                    format!(
                        "[Herald] {} {} {} deliveries missed their {} SLA",
                        items.len(),
                        first.priority,
                        first.channel,
                        humantime::format_duration(*sla)
                    ),
                    items
                        .iter()
                        .map(|item| item.notification_id.to_string())
                        .collect(),
                )
            }
        };
        let mut sample: Vec<&str> = notification_ids
            .iter()
            .map(String::as_str)
            .take(SAMPLE_IDS)
            .collect();
        sample.dedup();
        let _ = write!(text, "Notifications: {}", sample.join(", "));
        if notification_ids.len() > sample.len() {
            let _ = write!(text, " and {} more", notification_ids.len() - sample.len());
        }
        if folded > 0 {
            let _ = write!(
                text,
                "\n{folded} earlier occurrences were folded into no alert (de-duplication or the hourly cap)."
            );
        }
        Alert { subject, text }
    }
}

impl Scanner {
    pub(crate) fn new(pool: herald_db::Pool, sinks: Sinks, settings: AlertSettings) -> Self {
        Self {
            pool,
            sinks,
            settings,
        }
    }

    fn sla(&self, priority: Priority) -> std::time::Duration {
        match priority {
            Priority::Critical => self.settings.sla.critical,
            Priority::High => self.settings.sla.high,
            Priority::Normal => self.settings.sla.normal,
            Priority::Low => self.settings.sla.low,
        }
    }

    /// One scan, in one transaction holding the scan lock. If every destination refuses an
    /// alert, the transaction rolls back and the next scan tries again.
    pub(crate) async fn scan(&self) -> anyhow::Result<()> {
        let mut connection = herald_db::connection(&self.pool).await?;
        connection
            .transaction::<_, anyhow::Error, _>(async |connection| {
                if !alerts::try_lock_scan(connection).await? {
                    return Ok(());
                }
                let now = Utc::now();
                let failures = alerts::unalerted_failures(connection, 1000).await?;
                let cutoffs: Vec<(Priority, DateTime<Utc>)> = Priority::ALL
                    .into_iter()
                    .map(|priority| {
                        let sla = chrono::Duration::from_std(self.sla(priority)).unwrap_or(chrono::Duration::MAX);
                        (priority, now - sla)
                    })
                    .collect();
                let overdue = alerts::overdue_deliveries(connection, &cutoffs, 1000).await?;
                let failure_ids: Vec<Uuid> = failures.iter().map(|failure| failure.id).collect();
                let overdue_ids: Vec<Uuid> = overdue.iter().map(|delivery| delivery.id).collect();

                let mut groups: BTreeMap<String, Group> = BTreeMap::new();
                for failure in failures
                    .into_iter()
                    .filter(|failure| self.settings.failure_classes.contains(&failure.class))
                {
                    let fingerprint = format!("failed:{}:{}:{}", failure.channel, failure.template_key, failure.class);
                    match groups.entry(fingerprint).or_insert_with(|| Group::Failed { items: Vec::new() }) {
                        Group::Failed { items } => items.push(failure),
                        Group::Overdue { .. } => {}
                    }
                }
                for delivery in overdue {
                    let fingerprint = format!("sla:{}:{}", delivery.priority, delivery.channel);
                    let sla = self.sla(delivery.priority);
                    match groups
                        .entry(fingerprint)
                        .or_insert_with(|| Group::Overdue { sla, items: Vec::new() })
                    {
                        Group::Overdue { items, .. } => items.push(delivery),
                        Group::Failed { .. } => {}
                    }
                }

                let repeat_after = chrono::Duration::from_std(self.settings.repeat_after).unwrap_or(chrono::Duration::MAX);
                let mut sent_this_hour = alerts::sent_since(connection, now - chrono::Duration::hours(1)).await?;
                for (fingerprint, group) in &groups {
                    let (last_sent_at, folded) = alerts::fingerprint_state(connection, fingerprint).await?;
                    let due = last_sent_at.is_none_or(|sent_at| now - sent_at >= repeat_after);
                    let count = i32::try_from(group.count()).unwrap_or(i32::MAX);
                    if due && sent_this_hour < self.settings.max_per_hour {
                        let alert = group.render(folded);
                        if !self.sinks.send(&alert).await {
                            return Err(anyhow!("no alert destination accepted `{}`", alert.subject));
                        }
                        alerts::record_sent(connection, fingerprint, group.kind(), &alert.subject).await?;
                        sent_this_hour += 1;
                    } else {
                        tracing::info!(alert.fingerprint = %fingerprint, occurrences = count, "Alert folded (de-duplicated or capped).");
                        alerts::record_suppressed(connection, fingerprint, count).await?;
                    }
                }
                alerts::mark_failures_alerted(connection, &failure_ids).await?;
                alerts::mark_deliveries_alerted(connection, &overdue_ids).await?;
                Ok(())
            })
            .await
    }
}
