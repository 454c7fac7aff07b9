//! The attempt pipeline: intake, claim, prepare, provider call, finish, settle.
//!
//! ```text
//! consumer / emergency path ──▶ Intake (priority, then arrival)
//!   claimer: a batch slot, one attempt permit per delivery (worker.concurrency), then up to
//!            worker.batch_max deliveries off the intake
//!   claim batch: claim_many ─ templates ─ preferences, disabled contacts ─ rate limits
//!            (one statement or round trip each for the whole batch)
//!   provider calls: one task per delivery; its permit is returned when the provider answers
//!   finish batch: finish_many (one transaction for every outcome waiting) ─ settle
//!            (acks after the commit, retry copies after their confirms, dead letters)
//! ```
//!
//! Batches form by themselves under load and cost nothing when it is light: the claimer
//! lingers for `worker.batch_linger` only while other attempts are in flight, and a finish
//! batch takes everything that waits when it starts; a lone message is claimed and finished at
//! once. At most `BATCHES_IN_FLIGHT` claim batches and as many finish batches run at a time
//! (one of each with a pool of fewer than four connections), each on one pooled connection.
//!
//! Every guarantee of the single-delivery worker holds per delivery: the claim is fenced (a
//! delivery is sent only under a claim this worker won), a message is settled only after its
//! delivery's outcome is committed, a claim that fails before its provider call is released,
//! and an outcome that cannot be recorded is retried while the lease holds.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use herald_db::deliveries::{self, Claim, Claimed, FailureClass, Outcome, TemplateVersionRef};
use herald_domain::{DeliveryId, Priority};
use herald_templates::CompiledVersion;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::core::Core;
use crate::decide::{self, AfterClaim, DATABASE_RETRY_DELAY, Settlement};
use crate::intake::Intake;
use crate::prepare::{self, Prepared};
use crate::settle::{self, QueueMessage, ToSettle};
use crate::{Attempted, ChannelProvider, DeliveryContext};

mod finish;

/// The most claim batches, and finish batches, in flight at once (each holds a pooled
/// connection); one of each when the pool has fewer than four connections, so that the
/// provider (the in-app inbox writes to PostgreSQL) and the emergency path find one too.
const BATCHES_IN_FLIGHT: usize = 2;

/// The longest pause between tries to record outcomes while PostgreSQL is away.
const RECORD_RETRY_MAX: Duration = Duration::from_secs(2);

/// The pipeline's tasks: tracked, so the drain at shutdown can wait for them, and stopped
/// together when the worker is killed (its `run_until_stopped` future dropped, as a test does
/// to kill a worker mid-delivery): nothing of a killed worker runs on.
pub(crate) struct Tasks {
    tracker: TaskTracker,
    killed: CancellationToken,
}

impl Tasks {
    /// Runs `task` until it ends or the worker is killed.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let killed = self.killed.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = killed.cancelled() => {}
                () = task => {}
            }
        });
    }
}

/// One delivery to attempt.
pub(crate) struct Job {
    /// The delivery.
    pub(crate) delivery_id: DeliveryId,
    /// Its notification's priority: the intake's order.
    pub(crate) priority: Priority,
    /// The attempt's span (the consumer span of its message, or the emergency span).
    pub(crate) span: tracing::Span,
    /// Where it came from, and so how it is settled.
    pub(crate) origin: Origin,
}

/// Where a job came from.
pub(crate) enum Origin {
    /// A message of the work queue, settled once the outcome is committed.
    Queue(Box<QueueMessage>),
    /// The emergency path (no message). Dropping the job tells the path it is done.
    Emergency {
        /// Closed when the job is dropped.
        _done: oneshot::Sender<()>,
    },
}

impl Job {
    /// Whether its message's connection is gone: the broker returns the message, so the job
    /// is dropped rather than attempted.
    fn is_stale(&self) -> bool {
        matches!(&self.origin, Origin::Queue(message) if message.carrier.session.is_closed())
    }
}

/// A delivery this worker claimed, with its attempt permit, to prepare.
type Attempt = (Job, OwnedSemaphorePermit, Claimed);

/// A prepared delivery to hand to the provider: its claim and context.
type ReadyToSend = (Job, OwnedSemaphorePermit, Claim, Box<DeliveryContext>);

/// An attempt's outcome, waiting to be recorded and settled.
struct Finished {
    job: Job,
    claim: Claim,
    claimed_at: Instant,
    outcome: Outcome,
    /// The provider that was called, if any.
    provider: Option<String>,
    /// How to settle the message once the outcome is recorded.
    settlement: Settlement,
    /// The delivery's context, when it was prepared (for logs and disabling addresses).
    context: Option<Box<DeliveryContext>>,
    /// Addresses the provider called invalid.
    invalid_addresses: Vec<String>,
    /// Pin the delivery to `provider` (its outcome there is unknown and the channel resends).
    pin: bool,
}

/// The pipeline of one worker; lives as long as the worker runs, across AMQP reconnects.
pub(crate) struct Pipeline<P> {
    core: Arc<Core<P>>,
    intake: Intake<Job>,
    /// One permit per delivery claimed and not yet answered by its provider.
    attempts: Arc<Semaphore>,
    /// One permit per claim batch in flight.
    claim_batches: Arc<Semaphore>,
    /// Outcomes waiting for a finish batch.
    finishing: Mutex<Vec<Finished>>,
    /// Finish batches running.
    finishers: AtomicUsize,
    /// Claim batches, and finish batches, that may run at once.
    batches_in_flight: usize,
    /// Every task of the pipeline.
    tasks: Tasks,
    shutdown: CancellationToken,
    /// When in-flight work must be done by, fixed by the first drain.
    drain_deadline: OnceLock<Instant>,
}

impl<P: ChannelProvider> Pipeline<P> {
    /// Starts the pipeline's claimer; it stops taking work when `shutdown` is cancelled, and
    /// every task of the pipeline stops where it is when `killed` is.
    pub(crate) fn start(
        core: Arc<Core<P>>,
        shutdown: CancellationToken,
        killed: CancellationToken,
    ) -> Arc<Self> {
        let batches_in_flight = (core.pool.status().max_size / 2).clamp(1, BATCHES_IN_FLIGHT);
        let pipeline = Arc::new(Self {
            attempts: Arc::new(Semaphore::new(core.settings.concurrency)),
            claim_batches: Arc::new(Semaphore::new(batches_in_flight)),
            batches_in_flight,
            core,
            intake: Intake::default(),
            finishing: Mutex::new(Vec::new()),
            finishers: AtomicUsize::new(0),
            tasks: Tasks {
                tracker: TaskTracker::new(),
                killed,
            },
            shutdown,
            drain_deadline: OnceLock::new(),
        });
        pipeline.tasks.spawn(Arc::clone(&pipeline).claimer());
        pipeline
    }

    /// Adds `job` to the intake (dropped once the worker stops).
    pub(crate) fn submit(&self, job: Job) {
        if !self.shutdown.is_cancelled() {
            self.intake.push(job.priority, job);
        }
    }

    /// Drops the waiting jobs of closed sessions (the broker returns their messages).
    pub(crate) fn forget_closed(&self) {
        self.intake.retain(|job| !job.is_stale());
    }

    /// Waits, after shutdown, for the deliveries in flight to be recorded and settled, until
    /// `shutdown_grace_period` after the first call. Returns whether they all were.
    pub(crate) async fn drain(&self) -> bool {
        let deadline = *self
            .drain_deadline
            .get_or_init(|| Instant::now() + self.core.settings.shutdown_grace_period);
        self.tasks.tracker.close();
        tokio::time::timeout_at(deadline, self.tasks.tracker.wait())
            .await
            .is_ok()
    }

    /// Takes batches off the intake: as many deliveries as there are free attempt permits
    /// (at most `batch_max`), highest priority first, each batch on its own task.
    async fn claimer(self: Arc<Self>) {
        let settings = &self.core.settings;
        loop {
            let shutdown = self.shutdown.cancelled();
            let batch = async {
                let slot = Arc::clone(&self.claim_batches).acquire_owned().await.ok()?;
                self.intake.wait().await;
                let first = Arc::clone(&self.attempts).acquire_owned().await.ok()?;
                // Under load, let a batch gather; a lone message goes at once.
                let busy = self.attempts.available_permits() + 1 < settings.concurrency
                    || self.claim_batches.available_permits() + 1 < self.batches_in_flight;
                if busy && self.intake.len() < settings.batch_max {
                    tokio::time::sleep(settings.batch_linger).await;
                }
                Some((slot, first))
            };
            let (slot, first) = tokio::select! {
                () = shutdown => break,
                batch = batch => match batch {
                    Some(batch) => batch,
                    None => break,
                },
            };
            let mut jobs = Vec::new();
            let mut permit = Some(first);
            while jobs.len() < settings.batch_max {
                let Some(next_permit) = permit
                    .take()
                    .or_else(|| Arc::clone(&self.attempts).try_acquire_owned().ok())
                else {
                    break;
                };
                let Some(job) = self.next_job() else {
                    break;
                };
                jobs.push((job, next_permit));
            }
            if !jobs.is_empty() {
                self.tasks.spawn(Arc::clone(&self).claim_batch(jobs, slot));
            }
        }
        // Stopping: what still waits is returned by the broker when the connection closes.
        self.intake.retain(|_| false);
    }

    /// The first job of the intake whose message is still settleable.
    fn next_job(&self) -> Option<Job> {
        std::iter::from_fn(|| self.intake.pop()).find(|job| !job.is_stale())
    }

    /// Claims and prepares `jobs` on one connection, then starts their provider calls.
    async fn claim_batch(
        self: Arc<Self>,
        jobs: Vec<(Job, OwnedSemaphorePermit)>,
        _slot: OwnedSemaphorePermit,
    ) {
        let core = &self.core;
        let ids: Vec<DeliveryId> = jobs.iter().map(|(job, _)| job.delivery_id).collect();
        let claimed_at = Instant::now();
        let mut connection = match herald_db::connection(&core.pool).await {
            Ok(connection) => connection,
            Err(error) => return self.requeue_unclaimed(jobs, &error).await,
        };
        let answers = match deliveries::claim_many(
            &mut connection,
            &ids,
            core.settings.lease,
            core.clock.now(),
        )
        .await
        {
            Ok(answers) => answers,
            Err(error) => return self.requeue_unclaimed(jobs, &error).await,
        };
        tracing::debug!(
            deliveries = ids.len(),
            took_us = claimed_at.elapsed().as_micros() as u64,
            "Claimed a batch."
        );
        let (attempts, settle_now) = self.triage_claims(jobs, answers, claimed_at);
        self.settle(settle_now).await;
        if attempts.is_empty() {
            return;
        }
        let prepared = match self.prepare(&mut connection, &attempts).await {
            Ok(prepared) => prepared,
            Err(error) => {
                // Nothing was sent: give the claims back so the requeued messages are not
                // held up by our own leases. If that fails too, the leases expire.
                let claims: Vec<Claim> = attempts
                    .iter()
                    .map(|(_, _, claimed)| claimed.claim.clone())
                    .collect();
                release(&mut connection, &claims).await;
                let jobs = attempts.into_iter().map(|(job, permit, _)| (job, permit));
                return self.requeue_unclaimed(jobs.collect(), &error).await;
            }
        };
        let (sends, released) = self.triage_prepared(attempts, prepared, claimed_at);
        if !released.is_empty() {
            let claims: Vec<Claim> = released.iter().map(|(_, claim)| claim.clone()).collect();
            release(&mut connection, &claims).await;
            let settles = released
                .into_iter()
                .map(|(job, _)| (job, Settlement::RequeueAfter(DATABASE_RETRY_DELAY)))
                .collect();
            self.settle(settles).await;
        }
        // Do not hold a pooled connection across the provider calls.
        drop(connection);
        tracing::debug!(
            sends = sends.len(),
            took_us = claimed_at.elapsed().as_micros() as u64,
            "Prepared a batch."
        );
        for (job, permit, claim, context) in sends {
            self.tasks
                .spawn(Arc::clone(&self).call(job, permit, claim, claimed_at, context));
        }
    }

    /// Sorts a claim batch's answers: attempts to prepare, and jobs settled without one
    /// (their outcomes recorded through `finish` when the claim found one to record).
    fn triage_claims(
        self: &Arc<Self>,
        jobs: Vec<(Job, OwnedSemaphorePermit)>,
        answers: Vec<deliveries::BatchClaim>,
        claimed_at: Instant,
    ) -> (Vec<Attempt>, Vec<(Job, Settlement)>) {
        let core = &self.core;
        let mut attempts = Vec::new();
        let mut settle_now = Vec::new();
        for ((job, permit), answer) in jobs.into_iter().zip(answers) {
            match decide::after_claim(answer, core.settings.lease, core.unknown_outcome()) {
                AfterClaim::Attempt(claimed) => {
                    job.span.record("herald.attempt", claimed.claim.attempt);
                    attempts.push((job, permit, *claimed));
                }
                AfterClaim::Record(claim, outcome) => {
                    job.span.record("herald.attempt", claim.attempt);
                    self.finish(Finished {
                        settlement: decide::settlement_of_held(&outcome),
                        job,
                        claim,
                        claimed_at,
                        outcome,
                        provider: None,
                        context: None,
                        invalid_addresses: Vec::new(),
                        pin: false,
                    });
                }
                AfterClaim::Settle(settlement) => {
                    let _entered = job.span.enter();
                    match settlement {
                        Settlement::RequeueAfter(_) => tracing::info!(
                            delivery.id = %job.delivery_id,
                            "Delivery is leased by another worker; requeueing."
                        ),
                        _ => tracing::info!(
                            delivery.id = %job.delivery_id,
                            "Delivery already handled; skipping the message."
                        ),
                    }
                    drop(_entered);
                    settle_now.push((job, settlement));
                }
            }
        }
        (attempts, settle_now)
    }

    /// Sorts prepared attempts: sends to start, and claims to release (their outcomes recorded
    /// through `finish` when the preparation decided to hold them).
    fn triage_prepared(
        self: &Arc<Self>,
        attempts: Vec<Attempt>,
        prepared: Vec<Prepared>,
        claimed_at: Instant,
    ) -> (Vec<ReadyToSend>, Vec<(Job, Claim)>) {
        let mut released = Vec::new();
        let mut sends = Vec::new();
        for ((job, permit, claimed), prepared) in attempts.into_iter().zip(prepared) {
            match prepared {
                Prepared::Send(context) => sends.push((job, permit, claimed.claim, context)),
                Prepared::Hold(outcome) => self.finish(Finished {
                    settlement: decide::settlement_of_held(&outcome),
                    job,
                    claim: claimed.claim,
                    claimed_at,
                    outcome,
                    provider: None,
                    context: None,
                    invalid_addresses: Vec::new(),
                    pin: false,
                }),
                Prepared::Release(error) => {
                    let _entered = job.span.enter();
                    tracing::warn!(delivery.id = %job.delivery_id, error = %error, "Could not prepare the attempt; releasing the claim.");
                    drop(_entered);
                    released.push((job, claimed.claim));
                }
            }
        }
        (sends, released)
    }

    /// Loads the batch's template versions that are not cached yet (one query), builds each
    /// attempt's context with its compiled version, and prepares the attempts (preferences,
    /// disabled contacts, rate limits). A delivery whose version is missing or no longer
    /// parses fails for good, unsent.
    async fn prepare(
        &self,
        connection: &mut herald_db::Connection,
        attempts: &[Attempt],
    ) -> Result<Vec<Prepared>, herald_db::Error> {
        let core = &self.core;
        // Every version the batch renders, held here from the start: the shared cache may start
        // over (another batch filling it) between this lookup and the contexts below.
        let mut versions: HashMap<TemplateVersionRef, Arc<CompiledVersion>> = HashMap::new();
        let mut missing = Vec::new();
        for (_, _, claimed) in attempts {
            if versions.contains_key(&claimed.template) {
                continue;
            }
            match core.templates.get(&claimed.template) {
                Some(version) => {
                    versions.insert(claimed.template, version);
                }
                None => missing.push(claimed.template),
            }
        }
        missing.sort_unstable();
        missing.dedup();
        let mut unreadable = HashMap::new();
        for (template, content) in deliveries::template_contents(connection, &missing).await? {
            match content {
                Ok(content) => {
                    versions.insert(template, core.templates.insert(template, content));
                }
                Err(problem) => {
                    unreadable.insert(template, problem.0);
                }
            }
        }
        let contexts = attempts
            .iter()
            .map(|(_, _, claimed)| match versions.get(&claimed.template) {
                Some(version) => Ok(DeliveryContext::claimed(
                    claimed.delivery.clone(),
                    Arc::clone(version),
                )),
                None => Err(Outcome::Failed {
                    error: unreadable
                        .get(&claimed.template)
                        .cloned()
                        .unwrap_or_else(|| {
                            "the template version it was accepted with no longer exists".to_owned()
                        }),
                    class: FailureClass::Permanent,
                }),
            })
            .collect();
        prepare::prepare(core, connection, contexts).await
    }

    /// One provider call, inside the attempt's span; its permit is returned as soon as the
    /// provider answers.
    async fn call(
        self: Arc<Self>,
        job: Job,
        permit: OwnedSemaphorePermit,
        claim: Claim,
        claimed_at: Instant,
        context: Box<DeliveryContext>,
    ) {
        let core = &self.core;
        let span = tracing::info_span!(
            parent: &job.span,
            "provider",
            otel.name = %format_args!("deliver {}", context.channel),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            herald.channel = %context.channel,
            herald.provider = tracing::field::Empty,
            herald.outcome = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let called_at = Instant::now();
        let Attempted { provider, result } = core
            .provider
            .deliver(&context)
            .instrument(span.clone())
            .await;
        drop(permit);
        let outcome_name = decide::outcome_name(&result);
        span.record("herald.provider", provider.as_str());
        span.record("herald.outcome", outcome_name);
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", outcome_name);
        }
        drop(span);
        core.instruments.provider_call(
            context.channel,
            &provider,
            outcome_name,
            called_at.elapsed(),
        );
        let invalid_addresses = decide::invalid_addresses(&result);
        let policy = core.unknown_outcome();
        let pin = decide::pins_provider(&result, context.takeover, policy);
        let (outcome, settlement) =
            decide::after_call(&claim, &provider, result, &core.settings, policy);
        self.finish(Finished {
            job,
            claim,
            claimed_at,
            outcome,
            provider: Some(provider),
            settlement,
            context: Some(context),
            invalid_addresses,
            pin,
        });
    }

    /// Requeues the messages of jobs whose deliveries could not be claimed or prepared
    /// because PostgreSQL was unavailable (after a pause).
    async fn requeue_unclaimed(
        &self,
        jobs: Vec<(Job, OwnedSemaphorePermit)>,
        error: &herald_db::Error,
    ) {
        tracing::warn!(error = %error, messages = jobs.len(), "Database unavailable; requeueing the messages.");
        let settles = jobs
            .into_iter()
            .map(|(job, _permit)| (job, Settlement::RequeueAfter(DATABASE_RETRY_DELAY)))
            .collect();
        self.settle(settles).await;
    }

    /// Settles the messages of `jobs` (emergency jobs have none: dropping them is enough).
    async fn settle(&self, jobs: Vec<(Job, Settlement)>) {
        let messages: Vec<ToSettle> = jobs
            .into_iter()
            .filter_map(|(job, settlement)| match job.origin {
                Origin::Queue(message) => Some(ToSettle {
                    message: *message,
                    settlement,
                    span: job.span,
                }),
                Origin::Emergency { .. } => None,
            })
            .collect();
        if !messages.is_empty() {
            settle::settle(messages, &self.core.instruments, &self.tasks).await;
        }
    }
}

/// Gives `claims` back (no provider call was made for them); a failure leaves them to their
/// leases' expiry.
async fn release(connection: &mut herald_db::Connection, claims: &[Claim]) {
    if let Err(error) = deliveries::release_many(connection, claims).await {
        tracing::warn!(error = %error, claims = claims.len(), "Could not release claims; their leases will expire.");
    }
}
