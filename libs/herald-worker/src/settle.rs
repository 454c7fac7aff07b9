//! Settling queue messages once their deliveries' outcomes are committed: acks (one
//! `basic.ack` with `multiple` for a run of them where that is exact), rejects into the
//! dead-letter queue, copies published to a delay queue before the original is acked, and
//! requeues.
//!
//! A session is one AMQP connection's life: delivery tags are per channel, so each session
//! has its own settler task, which owns the `AckLedger` of the channel's unsettled tags and
//! sends every settlement frame of the channel, one after another. A multiple ack acknowledges
//! every unacknowledged tag up to its own ([AMQP 0-9-1 `basic.ack`]); the ledger uses one only
//! when every unsettled tag below it is being acked at that moment, so a message waiting for
//! its claim, its provider or a requeue is never acknowledged by someone else's ack, and no tag
//! is ever acknowledged twice (which RabbitMQ answers by closing the channel).
//!
//! [AMQP 0-9-1 `basic.ack`]: https://www.rabbitmq.com/amqp-0-9-1-reference#basic.ack

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use herald_domain::{Channel, Priority};
use herald_proto::queue::DeliveryMessage;
use herald_queue::Publisher;
use herald_queue::lapin::Acker;
use herald_queue::lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use opentelemetry::KeyValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::decide::Settlement;
use crate::instruments::{Instruments, Settled};
use crate::pipeline::Tasks;

/// Put one message back on its queue.
const REQUEUE: BasicNackOptions = BasicNackOptions {
    requeue: true,
    multiple: false,
};

/// One AMQP connection's consumer channel as far as settling goes: its publisher (for retry
/// copies) and its settler task. Shared by every job consumed on it; the settler ends once the
/// last of them is gone.
pub(crate) struct Session {
    channel_kind: Channel,
    publisher: Publisher,
    requests: mpsc::UnboundedSender<Request>,
    /// Cancelled when the session's connection failed or the worker stops: its waiting
    /// messages are returned by the broker, so nothing waits for them.
    closed: CancellationToken,
}

/// A message to settle on the session's channel.
struct Settle {
    tag: u64,
    acker: Acker,
    action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Ack,
    Reject,
    Requeue,
}

enum Request {
    /// A message was delivered with this tag.
    Received(u64),
    /// Settle these messages.
    Settle(Vec<Settle>),
}

impl Session {
    /// A session on `publisher`'s connection; the returned task settles its messages until
    /// every handle to the session is dropped.
    pub(crate) fn start(
        channel_kind: Channel,
        publisher: Publisher,
        closed: CancellationToken,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (requests, received) = mpsc::unbounded_channel();
        let settler = tokio::spawn(settler(received));
        let session = Arc::new(Self {
            channel_kind,
            publisher,
            requests,
            closed,
        });
        (session, settler)
    }

    /// Whether the session's connection is gone (or the worker stops).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Notes a delivered message, before anything can settle it.
    pub(crate) fn received(&self, tag: u64) {
        // The settler outlives every handle to the session, so the send cannot fail while
        // `self` exists.
        let _sent = self.requests.send(Request::Received(tag));
    }

    fn settle(&self, settles: Vec<Settle>) {
        if !settles.is_empty() {
            let _sent = self.requests.send(Request::Settle(settles));
        }
    }
}

/// One consumed AMQP message, shared by the deliveries it carries (one for a
/// `DeliveryMessage`, each of a `DeliveryBatch`), and settled once every one of them is.
pub(crate) struct Carrier {
    /// Its session.
    pub(crate) session: Arc<Session>,
    /// Its delivery tag on the session's channel.
    tag: u64,
    /// Its AMQP priority.
    pub(crate) priority: Priority,
    /// The queue and priority labels of its metrics.
    pub(crate) labels: [KeyValue; 2],
    /// When it was consumed.
    pub(crate) received: tokio::time::Instant,
    /// How many deliveries it carries.
    carried: usize,
    /// The deliveries not yet settled, and what settles the message once none is left.
    open: Mutex<Open>,
}

struct Open {
    left: usize,
    /// A delivery that could not be settled on its own (a copy the broker did not confirm, a
    /// requeue) sends the whole message back once the others are settled: the broker
    /// redelivers it, and the claims of the deliveries already recorded make those no-ops.
    requeue: bool,
    /// Taken by the last delivery to settle.
    acker: Option<Acker>,
}

impl Carrier {
    /// The message `tag` on `session`, carrying `carried` (at least one) deliveries.
    pub(crate) fn new(
        session: Arc<Session>,
        tag: u64,
        acker: Acker,
        priority: Priority,
        labels: [KeyValue; 2],
        carried: usize,
    ) -> Arc<Self> {
        let carried = carried.max(1);
        Arc::new(Self {
            session,
            tag,
            priority,
            labels,
            received: tokio::time::Instant::now(),
            carried,
            open: Mutex::new(Open {
                left: carried,
                requeue: false,
                acker: Some(acker),
            }),
        })
    }

    /// Whether it carries one delivery only, which then settles the message itself (a dead
    /// letter is a reject, a requeue a nack).
    fn is_whole(&self) -> bool {
        self.carried == 1
    }

    /// Settles one of its deliveries with `action`; returns the frame that settles the
    /// message once it was the last. `Reject` only comes from a message carrying one delivery.
    fn settle_one(&self, action: Action) -> Option<Settle> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.requeue |= action == Action::Requeue;
        open.left = open.left.saturating_sub(1);
        if open.left > 0 {
            return None;
        }
        let acker = open.acker.take()?;
        let action = match action {
            Action::Reject => Action::Reject,
            _ if open.requeue => Action::Requeue,
            _ => Action::Ack,
        };
        Some(Settle {
            tag: self.tag,
            acker,
            action,
        })
    }

    /// Rejects an undecodable message (a carrier of one, made for it) into the dead-letter
    /// queue.
    pub(crate) fn dead_letter(&self, instruments: &Instruments) {
        instruments.settled(&self.labels, Settled::DeadLetter, self.received.elapsed());
        if let Some(settle) = self.settle_one(Action::Reject) {
            self.session.settle(vec![settle]);
        }
    }
}

/// One delivery of a queue message.
pub(crate) struct QueueMessage {
    /// The message it came in.
    pub(crate) carrier: Arc<Carrier>,
    /// The delivery (a retry republishes it).
    pub(crate) message: DeliveryMessage,
}

/// One delivery and how to settle it, with the span its attempt ran in.
pub(crate) struct ToSettle {
    pub(crate) message: QueueMessage,
    pub(crate) settlement: Settlement,
    pub(crate) span: tracing::Span,
}

/// A copy published before a delivery counts as settled.
#[derive(Clone, Copy)]
enum CopyTo {
    /// To the delay queue for this long.
    Retry(Duration),
    /// To the dead-letter queue: a delivery of a batch, whose message is not rejected for it.
    DeadLetter,
}

/// Settles the deliveries of `messages`: publishes the retry copies, and the dead-letter
/// copies of deliveries that share their message (all at once, then awaits their confirms),
/// rejects the dead letters that are a message of their own, and acks the rest. A message is
/// settled by its last delivery, each session's in one request to its settler; a requeue
/// after a pause waits on a task of `tasks` (dropped when its session closes: the broker
/// returns the message then).
pub(crate) async fn settle(messages: Vec<ToSettle>, instruments: &Instruments, tasks: &Tasks) {
    let mut copies = Vec::new();
    let mut now = Vec::new();
    for to_settle in messages {
        to_settle
            .span
            .record("herald.settlement", format!("{:?}", to_settle.settlement));
        let whole = to_settle.message.carrier.is_whole();
        match to_settle.settlement {
            Settlement::Ack => now.push((to_settle.message, Action::Ack, Settled::Ack)),
            Settlement::DeadLetter if whole => {
                now.push((to_settle.message, Action::Reject, Settled::DeadLetter));
            }
            Settlement::DeadLetter => copies.push((to_settle, CopyTo::DeadLetter)),
            Settlement::Retry(delay) => copies.push((to_settle, CopyTo::Retry(delay))),
            Settlement::RequeueAfter(delay) => {
                requeue_after(to_settle.message, delay, instruments.clone(), tasks);
            }
        }
    }
    let confirms = futures::future::join_all(
        copies
            .iter()
            .map(|(to_settle, copy)| publish_copy(to_settle, *copy)),
    )
    .await;
    for ((to_settle, copy), confirmed) in copies.into_iter().zip(confirms) {
        match confirmed {
            Ok(()) => {
                let settled = match copy {
                    CopyTo::Retry(_) => Settled::Retry,
                    CopyTo::DeadLetter => Settled::DeadLetter,
                };
                now.push((to_settle.message, Action::Ack, settled));
            }
            Err(error) => {
                // The delivery's outcome is recorded (retry_wait or final), so putting its
                // message back is safe; it only comes back sooner than planned, or is acked
                // without an attempt.
                let _entered = to_settle.span.enter();
                tracing::warn!(error = %error, "Could not publish a retry or dead-letter copy; requeueing the message.");
                now.push((to_settle.message, Action::Requeue, Settled::Requeue));
            }
        }
    }
    let mut per_session: HashMap<*const Session, (Arc<Session>, Vec<Settle>)> = HashMap::new();
    for (message, action, settled) in now {
        let carrier = &message.carrier;
        instruments.settled(&carrier.labels, settled, carrier.received.elapsed());
        if let Some(settle) = carrier.settle_one(action) {
            per_session
                .entry(Arc::as_ptr(&carrier.session))
                .or_insert_with(|| (Arc::clone(&carrier.session), Vec::new()))
                .1
                .push(settle);
        }
    }
    for (session, settles) in per_session.into_values() {
        session.settle(settles);
    }
}

/// Puts `message`'s delivery back on its queue after `delay` (PostgreSQL away, or the delivery
/// leased by a live worker whose lease runs out then): its message is requeued once every
/// delivery it carries is settled. Holding it meanwhile keeps it from coming back at once; if
/// the session closes first, the broker returns it anyway.
fn requeue_after(message: QueueMessage, delay: Duration, instruments: Instruments, tasks: &Tasks) {
    tasks.spawn(async move {
        let carrier = &message.carrier;
        tokio::select! {
            () = carrier.session.closed.cancelled() => {}
            () = tokio::time::sleep(delay) => {
                instruments.settled(&carrier.labels, Settled::Requeue, carrier.received.elapsed());
                if let Some(settle) = carrier.settle_one(Action::Requeue) {
                    carrier.session.settle(vec![settle]);
                }
            }
        }
    });
}

/// Publishes `copy` of the delivery, waiting for the confirm.
async fn publish_copy(to_settle: &ToSettle, copy: CopyTo) -> Result<(), herald_queue::Error> {
    match copy {
        CopyTo::Retry(delay) => schedule_retry(to_settle, delay).await,
        CopyTo::DeadLetter => {
            let message = &to_settle.message;
            let session = &message.carrier.session;
            session
                .publisher
                .publish_dead_letter(
                    &message.message,
                    session.channel_kind,
                    message.carrier.priority,
                )
                .await?
                .wait()
                .await
        }
    }
}

/// Publishes a copy of the message to the delay queue for `delay`, waiting for the confirm.
/// The copy keeps the trace context of the relay's publish (so the next attempt joins the same
/// trace) and carries this attempt's, which the next attempt links to.
async fn schedule_retry(to_settle: &ToSettle, delay: Duration) -> Result<(), herald_queue::Error> {
    let message = &to_settle.message;
    let session = &message.carrier.session;
    let mut copy = message.message.clone();
    copy.previous_attempt = {
        let _entered = to_settle.span.enter();
        herald_telemetry::current_context_map()
    };
    // The copy reaches the work queue when the delay queue's TTL lets it go: its queue wait
    // counts from then, not from now (the backoff is not time spent waiting for a worker, and
    // would swamp `herald.queue.wait.duration`).
    let back_in_queue = chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
    copy.enqueued_at = Some(herald_proto::conversions::timestamp(back_in_queue));
    session
        .publisher
        .publish_retry(&copy, session.channel_kind, message.carrier.priority, delay)
        .await?
        .wait()
        .await
}

/// The settler of one session: keeps its ledger and sends its frames in order, until every
/// handle to the session is gone.
async fn settler(mut requests: mpsc::UnboundedReceiver<Request>) {
    let mut ledger = AckLedger::default();
    while let Some(request) = requests.recv().await {
        match request {
            Request::Received(tag) => ledger.received(tag),
            Request::Settle(settles) => send_frames(&mut ledger, settles).await,
        }
    }
}

/// Sends the frames that settle `settles`: rejects and requeues first, each on its own (so no
/// multiple ack sent after them can cover them), then the acks as `AckLedger` plans them.
async fn send_frames(ledger: &mut AckLedger, settles: Vec<Settle>) {
    let mut ackers = HashMap::new();
    let mut acks = Vec::new();
    let mut failed = 0_usize;
    for settle in settles {
        let sent = match settle.action {
            Action::Ack => {
                acks.push(settle.tag);
                ackers.insert(settle.tag, settle.acker);
                continue;
            }
            Action::Reject => {
                settle
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await
            }
            Action::Requeue => settle.acker.nack(REQUEUE).await,
        };
        ledger.settled(settle.tag);
        failed += usize::from(!matches!(sent, Ok(true)));
    }
    for frame in ledger.plan_acks(&acks) {
        let Some(acker) = ackers.get(&frame.tag) else {
            continue;
        };
        let sent = acker
            .ack(BasicAckOptions {
                multiple: frame.multiple,
            })
            .await;
        if !matches!(sent, Ok(true)) {
            failed += frame.covers;
        }
    }
    if failed > 0 {
        // The broker redelivers them; their claims make the redeliveries harmless.
        tracing::warn!(
            messages = failed,
            "Could not settle messages; they will be redelivered."
        );
    }
}

/// The unsettled delivery tags of one channel, and the plan of ack frames.
#[derive(Debug, Default)]
pub(crate) struct AckLedger {
    unsettled: BTreeSet<u64>,
}

/// One `basic.ack` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckFrame {
    /// The delivery tag it names.
    pub(crate) tag: u64,
    /// Whether it acknowledges every unsettled tag up to `tag`.
    pub(crate) multiple: bool,
    /// How many messages it acknowledges.
    pub(crate) covers: usize,
}

impl AckLedger {
    /// `tag` was delivered and is unsettled.
    pub(crate) fn received(&mut self, tag: u64) {
        self.unsettled.insert(tag);
    }

    /// `tag` was settled on its own (rejected or requeued).
    pub(crate) fn settled(&mut self, tag: u64) {
        self.unsettled.remove(&tag);
    }

    /// The frames that acknowledge exactly `tags` (unsettled tags of this channel): one
    /// multiple ack for the tags below the lowest tag that stays unsettled, one single ack
    /// for each tag above it. Marks `tags` settled.
    pub(crate) fn plan_acks(&mut self, tags: &[u64]) -> Vec<AckFrame> {
        let mut tags: Vec<u64> = tags
            .iter()
            .copied()
            .filter(|tag| self.unsettled.contains(tag))
            .collect();
        tags.sort_unstable();
        tags.dedup();
        let floor = self
            .unsettled
            .iter()
            .find(|tag| tags.binary_search(tag).is_err())
            .copied();
        let below = floor.map_or(tags.len(), |floor| tags.partition_point(|tag| *tag < floor));
        let mut frames = Vec::new();
        if let Some(highest) = below.checked_sub(1).map(|index| tags[index]) {
            frames.push(AckFrame {
                tag: highest,
                multiple: below > 1,
                covers: below,
            });
        }
        frames.extend(tags[below..].iter().map(|tag| AckFrame {
            tag: *tag,
            multiple: false,
            covers: 1,
        }));
        for tag in &tags {
            self.unsettled.remove(tag);
        }
        frames
    }
}

#[cfg(test)]
mod tests;
