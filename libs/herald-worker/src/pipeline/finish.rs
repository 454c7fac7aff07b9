//! The finish side of the pipeline: outcomes wait in a shared list, finish batches record
//! them (one transaction each, retried while PostgreSQL is away and the leases hold) and
//! settle their messages.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use herald_db::deliveries::{self, Finishing, Outcome};
use tokio::time::Instant;

use super::{Finished, Pipeline, RECORD_RETRY_MAX};
use crate::ChannelProvider;
use crate::decide;

impl<P: ChannelProvider> Pipeline<P> {
    /// Queues `finished` for recording, starting a finish batch unless enough run already.
    pub(super) fn finish(self: &Arc<Self>, finished: Finished) {
        self.lock_finishing().push(finished);
        self.start_finisher();
    }

    pub(super) fn start_finisher(self: &Arc<Self>) {
        let started = self
            .finishers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |running| {
                (running < self.batches_in_flight).then_some(running + 1)
            })
            .is_ok();
        if started {
            self.tasks.spawn(Arc::clone(self).finisher());
        }
    }

    pub(super) fn lock_finishing(&self) -> std::sync::MutexGuard<'_, Vec<Finished>> {
        self.finishing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records and settles what waits, batch after batch, until nothing does.
    pub(super) async fn finisher(self: Arc<Self>) {
        let settings = &self.core.settings;
        loop {
            let waiting = self.lock_finishing().len();
            if waiting > 0
                && waiting < settings.batch_max
                && self.finishers.load(Ordering::SeqCst) > 1
            {
                // Another batch is committing: let this one gather.
                tokio::time::sleep(settings.batch_linger).await;
            }
            let batch: Vec<Finished> = {
                let mut finishing = self.lock_finishing();
                let take = finishing.len().min(settings.batch_max);
                finishing.drain(..take).collect()
            };
            if batch.is_empty() {
                self.finishers.fetch_sub(1, Ordering::SeqCst);
                // An outcome queued after the check above but before the count went down
                // found no free finisher: take it on.
                if self.lock_finishing().is_empty()
                    || self
                        .finishers
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |running| {
                            (running < self.batches_in_flight).then_some(running + 1)
                        })
                        .is_err()
                {
                    return;
                }
                continue;
            }
            self.finish_batch(batch).await;
        }
    }

    /// Records `batch` in one transaction, then logs, disables invalid addresses and settles.
    pub(super) async fn finish_batch(&self, batch: Vec<Finished>) {
        let started = Instant::now();
        let recorded = self.record(&batch).await;
        tracing::debug!(
            outcomes = batch.len(),
            took_us = started.elapsed().as_micros() as u64,
            "Recorded a batch."
        );
        let mut to_settle = Vec::new();
        for (finished, recorded) in batch.into_iter().zip(recorded) {
            let settlement = decide::after_record(recorded, finished.settlement);
            {
                let _entered = finished.job.span.enter();
                if recorded == Some(true) && is_held(&finished.outcome) {
                    self.core.instruments.held(
                        self.core.provider.channel(),
                        finished.claim.delivery_id,
                        finished.claim.attempt,
                        finished.provider.is_some(),
                    );
                } else {
                    log_recorded(&finished, recorded);
                }
            }
            if recorded == Some(true)
                && !finished.invalid_addresses.is_empty()
                && let Some(context) = &finished.context
            {
                tracing::info!(
                    delivery.id = %context.delivery_id,
                    channel = %context.channel,
                    provider = finished.provider.as_deref().unwrap_or_default(),
                    addresses = finished.invalid_addresses.len(),
                    "Disabled addresses the provider called invalid."
                );
            }
            to_settle.push((finished.job, settlement));
        }
        self.settle(to_settle).await;
    }

    /// Records the outcomes of `batch`: `Some(recorded)` per item, `None` when PostgreSQL
    /// could not take it. The provider has already been called, so while PostgreSQL is away
    /// the write is retried as long as the leases protect the claims, rather than requeueing
    /// the messages and, after the leases, sending again. A batch PostgreSQL refuses for
    /// another reason is recorded item by item, so only a bad item fails.
    pub(super) async fn record(&self, batch: &[Finished]) -> Vec<Option<bool>> {
        match self.record_batch(batch).await {
            Ok(recorded) => recorded.into_iter().map(Some).collect(),
            Err(error) if batch.len() > 1 && !error.is_unavailable() => {
                tracing::warn!(error = %error, outcomes = batch.len(), "Could not record a batch of outcomes; recording them one by one.");
                let mut recorded = Vec::with_capacity(batch.len());
                for item in batch {
                    recorded.push(match self.record_batch(std::slice::from_ref(item)).await {
                        Ok(answer) => answer.first().copied(),
                        Err(_) => None,
                    });
                }
                recorded
            }
            Err(_) => vec![None; batch.len()],
        }
    }

    pub(super) async fn record_batch(
        &self,
        batch: &[Finished],
    ) -> Result<Vec<bool>, herald_db::Error> {
        let lease = self.core.settings.lease.mul_f64(0.8);
        let give_up_at = batch
            .iter()
            .map(|finished| finished.claimed_at)
            .min()
            .map_or_else(Instant::now, |claimed_at| claimed_at + lease);
        let items: Vec<Finishing<'_>> = batch
            .iter()
            .map(|finished| Finishing {
                claim: &finished.claim,
                outcome: &finished.outcome,
                provider: finished.provider.as_deref(),
                invalid_addresses: &finished.invalid_addresses,
                pin: finished.pin,
                retry_in: match finished.settlement {
                    decide::Settlement::Retry(delay) => Some(delay),
                    _ => None,
                },
            })
            .collect();
        let mut retry = herald_service::Backoff::new(Duration::from_millis(100), RECORD_RETRY_MAX);
        loop {
            let result = async {
                let mut connection = herald_db::connection(&self.core.pool).await?;
                deliveries::finish_many(&mut connection, &items).await
            }
            .await;
            let pause = retry.next_delay();
            match result {
                Err(error) if error.is_unavailable() && Instant::now() + pause < give_up_at => {
                    tracing::warn!(error = %error, outcomes = batch.len(), "Cannot record outcomes yet; retrying while the leases hold.");
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }
}

/// Whether `outcome` leaves the delivery `unknown` for an operator (the channel holds).
fn is_held(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Failed {
            class: deliveries::FailureClass::Unknown,
            ..
        }
    )
}

/// The log line of one recorded attempt (held-back deliveries were logged when prepared).
fn log_recorded(finished: &Finished, recorded: Option<bool>) {
    let delivery_id = finished.claim.delivery_id;
    let attempt = finished.claim.attempt;
    match recorded {
        None => {
            tracing::warn!(delivery.id = %delivery_id, attempt, "Database unavailable; requeueing the message.");
            return;
        }
        Some(false) => {
            tracing::warn!(delivery.id = %delivery_id, attempt, "Claim was lost before the outcome was recorded.");
            return;
        }
        Some(true) => {}
    }
    let provider = finished.provider.as_deref().unwrap_or_default();
    let Some(context) = &finished.context else {
        if let Outcome::Failed { error, class } = &finished.outcome {
            tracing::warn!(delivery.id = %delivery_id, attempt, error.class = class.as_str(), error = %error, "Delivery failed for good.");
        }
        return;
    };
    if finished.provider.is_none() {
        return;
    }
    match &finished.outcome {
        Outcome::Delivered { detail } => tracing::info!(
            notification.id = %context.notification_id,
            delivery.id = %delivery_id,
            channel = %context.channel,
            provider = %provider,
            attempt,
            provider.response = %detail,
            "Delivered."
        ),
        Outcome::Failed { error, class } => tracing::warn!(
            notification.id = %context.notification_id,
            delivery.id = %delivery_id,
            channel = %context.channel,
            provider = %provider,
            attempt,
            error.class = class.as_str(),
            error = %error,
            "Delivery failed for good."
        ),
        Outcome::RetryWait { error } | Outcome::Resend { error } => tracing::warn!(
            notification.id = %context.notification_id,
            delivery.id = %delivery_id,
            channel = %context.channel,
            provider = %provider,
            attempt,
            error = %error,
            resend = matches!(finished.outcome, Outcome::Resend { .. }),
            "Delivery failed or its outcome is unknown; will retry (a resend goes to the same provider)."
        ),
        Outcome::Suppressed { reason } | Outcome::Deferred { reason, .. } => tracing::info!(
            delivery.id = %delivery_id,
            reason = %reason,
            "Delivery held back."
        ),
    }
}
