//! Delivery measured by polling: every accepted notification is read with
//! `GetNotification` until it is final, and end-to-end latency comes from the server's own
//! timestamps.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_proto::submit::submit_service_client::SubmitServiceClient;
use herald_proto::submit::{
    DeliveryState, GetNotificationRequest, Notification, NotificationStatus,
};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::report::{self, DeliverySummary};
use super::{IDLE_POLL, Progress, Reasons, combine};
use crate::cli::BenchArgs;
use crate::{display, status};

/// A notification still to poll, and when to poll it next.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) id: String,
    pub(super) due: Instant,
}

/// Notifications waiting to be polled, shared by the poll tasks. Each task takes one from the
/// front and puts it back at the end (due one poll interval later) while it is not final.
#[derive(Debug)]
pub(super) struct PollQueue {
    pub(super) pending: Mutex<VecDeque<Pending>>,
    pub(super) finished: Arc<AtomicU64>,
    pub(super) total: u64,
}

impl PollQueue {
    pub(super) fn pop(&self) -> Option<Pending> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    pub(super) fn push(&self, pending: Pending) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(pending);
    }

    pub(super) fn is_done(&self) -> bool {
        self.finished.load(Ordering::Acquire) >= self.total
    }
}

/// What one poll task saw.
#[derive(Debug, Default)]
pub(super) struct DeliveryTally {
    /// End-to-end latency of each delivered notification.
    pub(super) latencies_us: Vec<u64>,
    pub(super) delivered: u64,
    pub(super) failed: u64,
    pub(super) partially_delivered: u64,
    pub(super) first_created_at: Option<DateTime<Utc>>,
    pub(super) last_delivered_at: Option<DateTime<Utc>>,
    /// Deliveries of failed or partially delivered notifications that did not succeed, by state.
    pub(super) undelivered: Reasons,
    pub(super) polls: u64,
    pub(super) poll_errors: Reasons,
}

impl DeliveryTally {
    pub(super) fn observe(&mut self, notification: &Notification) {
        if let Some(created_at) = display::instant(notification.created_at.as_ref()) {
            self.first_created_at = Some(
                self.first_created_at
                    .map_or(created_at, |first| first.min(created_at)),
            );
        }
    }

    pub(super) fn record_final(&mut self, notification: &Notification) {
        match NotificationStatus::try_from(notification.status) {
            Ok(NotificationStatus::Delivered) => {
                self.delivered += 1;
                let created_at = display::instant(notification.created_at.as_ref());
                let delivered_at = notification
                    .deliveries
                    .iter()
                    .filter_map(|delivery| display::instant(delivery.delivered_at.as_ref()))
                    .max();
                if let (Some(created_at), Some(delivered_at)) = (created_at, delivered_at) {
                    // Both instants come from server clocks; skew between hosts could make the
                    // difference negative, which is recorded as zero.
                    let latency = (delivered_at - created_at)
                        .num_microseconds()
                        .unwrap_or(i64::MAX);
                    self.latencies_us.push(u64::try_from(latency).unwrap_or(0));
                    self.last_delivered_at = Some(
                        self.last_delivered_at
                            .map_or(delivered_at, |last| last.max(delivered_at)),
                    );
                }
            }
            Ok(NotificationStatus::PartiallyDelivered) => {
                self.partially_delivered += 1;
                self.note_undelivered(notification);
            }
            _ => {
                self.failed += 1;
                self.note_undelivered(notification);
            }
        }
    }

    pub(super) fn note_undelivered(&mut self, notification: &Notification) {
        for delivery in &notification.deliveries {
            if delivery.state != DeliveryState::Delivered as i32 {
                self.undelivered.note(
                    display::delivery_state(delivery.state),
                    &delivery.last_error,
                );
            }
        }
    }

    pub(super) fn merge(&mut self, other: Self) {
        self.latencies_us.extend(other.latencies_us);
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.partially_delivered += other.partially_delivered;
        self.first_created_at =
            combine(self.first_created_at, other.first_created_at, DateTime::min);
        self.last_delivered_at = combine(
            self.last_delivered_at,
            other.last_delivered_at,
            DateTime::max,
        );
        self.undelivered.merge(other.undelivered);
        self.polls += other.polls;
        self.poll_errors.merge(other.poll_errors);
    }
}

/// Polls every id until it is final or `--wait-timeout` passes.
pub(super) async fn wait_all(
    args: &BenchArgs,
    channels: &[Channel],
    ids: Vec<String>,
) -> anyhow::Result<DeliverySummary> {
    let started = Instant::now();
    let deadline = started + args.wait_timeout;
    let total = ids.len() as u64;
    let queue = Arc::new(PollQueue {
        pending: Mutex::new(
            ids.into_iter()
                .map(|id| Pending { id, due: started })
                .collect(),
        ),
        finished: Arc::new(AtomicU64::new(0)),
        total,
    });
    let _progress = Progress::spawn("final", Arc::clone(&queue.finished), total);
    let mut tasks = JoinSet::new();
    for channel in channels.iter().cycle().take(args.concurrency as usize) {
        tasks.spawn(poll_task(
            SubmitServiceClient::new(channel.clone()),
            Arc::clone(&queue),
            deadline,
            args.poll_interval,
        ));
    }
    let mut total_tally = DeliveryTally::default();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(tally) => total_tally.merge(tally),
            Err(_) => total_tally.poll_errors.note(
                "TaskPanicked".to_owned(),
                "a poll task panicked; its counts are lost",
            ),
        }
    }
    let window = match (total_tally.first_created_at, total_tally.last_delivered_at) {
        (Some(first), Some(last)) => (last - first).to_std().ok(),
        _ => None,
    };
    let finished = queue.finished.load(Ordering::Acquire);
    Ok(DeliverySummary {
        delivered: total_tally.delivered,
        failed: total_tally.failed,
        partially_delivered: total_tally.partially_delivered,
        unfinished: total.saturating_sub(finished),
        window,
        latency_us: report::Percentiles::of(&total_tally.latencies_us)?,
        undelivered: total_tally.undelivered,
        polls: total_tally.polls,
        poll_errors: total_tally.poll_errors,
        elapsed: started.elapsed(),
    })
}

pub(super) async fn poll_task(
    mut client: SubmitServiceClient<Channel>,
    queue: Arc<PollQueue>,
    deadline: Instant,
    poll_interval: Duration,
) -> DeliveryTally {
    let mut tally = DeliveryTally::default();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let Some(pending) = queue.pop() else {
            // Other tasks may still put notifications back; stop only when all are final.
            if queue.is_done() {
                break;
            }
            tokio::time::sleep(IDLE_POLL.min(deadline - now)).await;
            continue;
        };
        if pending.due > now {
            tokio::time::sleep_until(pending.due.min(deadline)).await;
        }
        tally.polls += 1;
        let result = client
            .get_notification(GetNotificationRequest {
                notification_id: pending.id.clone(),
            })
            .await;
        match result {
            Ok(response) => {
                if let Some(notification) = response.into_inner().notification {
                    tally.observe(&notification);
                    if status::is_final(notification.status) {
                        tally.record_final(&notification);
                        queue.finished.fetch_add(1, Ordering::AcqRel);
                        continue;
                    }
                }
            }
            Err(status) => tally.poll_errors.note_status(&status),
        }
        queue.push(Pending {
            id: pending.id,
            due: Instant::now() + poll_interval,
        });
    }
    tally
}
