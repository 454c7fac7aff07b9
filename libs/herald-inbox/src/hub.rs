//! The per-replica fan-out: one Redis pub/sub connection per API replica, subscribed to the
//! channel of every user with at least one open stream on this replica, forwarding each signal
//! to the local streams through a tokio broadcast channel.
//!
//! Subscriptions are reconciled by the single task that owns the connection (`InboxHub::run`):
//! opening a user's first stream or closing their last one only records the change and wakes
//! that task, so SUBSCRIBE and UNSUBSCRIBE for one channel can never be reordered. When the
//! connection drops, the task reconnects with exponential backoff, subscribes every channel
//! again and sends `Update::Resync` to every stream that may have missed signals meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use herald_config::RedisSettings;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::settings::InboxSettings;
use crate::signal::Signal;
use crate::{Error, Result};
use herald_redis::Keyspace;

/// Most channels named in one SUBSCRIBE after a reconnect.
const SUBSCRIBE_BATCH: usize = 500;

/// What a stream receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A change published to the user's channel.
    Signal(Signal),
    /// Signals may have been missed (Redis reconnected, or this stream fell behind): the client
    /// should list again.
    Resync,
}

/// The fan-out of one API replica. Cheap to clone; `run` must be running for streams to get
/// anything.
#[derive(Clone)]
pub struct InboxHub {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for InboxHub {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("InboxHub")
            .field("keyspace", &self.shared.keyspace)
            .finish_non_exhaustive()
    }
}

struct Shared {
    client: redis::Client,
    keyspace: Keyspace,
    settings: InboxSettings,
    registry: Mutex<Registry>,
    /// Wakes the connection task to reconcile subscriptions (a stored permit is never lost).
    wake: Notify,
}

/// Channels with local streams, and the changes the connection task has not applied yet.
#[derive(Default)]
struct Registry {
    topics: HashMap<String, Topic>,
    opened: Vec<String>,
    closed: Vec<String>,
}

struct Topic {
    sender: broadcast::Sender<Update>,
    streams: usize,
    /// True while Redis has confirmed the subscription on the current connection.
    confirmed: watch::Sender<bool>,
    /// Signals may have been missed since a stream took its snapshot: send `Resync` as soon as
    /// the channel is subscribed (again).
    gap: bool,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // No code panics while holding the lock, and the registry stays consistent anyway.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One stream's view of a user's channel. Dropping it closes the stream; the last one of a
/// user unsubscribes the replica from the user's channel.
pub struct Subscription {
    shared: Arc<Shared>,
    channel: String,
    receiver: broadcast::Receiver<Update>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Subscription")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next update; `Resync` when this stream fell more than `inbox.stream_buffer` updates
    /// behind.
    pub async fn recv(&mut self) -> Update {
        match self.receiver.recv().await {
            Ok(update) => update,
            Err(broadcast::error::RecvError::Lagged(_)) => Update::Resync,
            // The topic (and so its sender) lives as long as this subscription.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut registry = self.shared.registry();
        let Some(topic) = registry.topics.get_mut(&self.channel) else {
            return;
        };
        topic.streams = topic.streams.saturating_sub(1);
        if topic.streams == 0 {
            registry.topics.remove(&self.channel);
            registry.closed.push(self.channel.clone());
            drop(registry);
            self.shared.wake.notify_one();
        }
    }
}

/// Why the connection task left a connection.
enum Left {
    Shutdown,
    Lost(String),
}

impl InboxHub {
    /// A hub for the channels under `redis.key_prefix`. Connects only once `run` runs.
    pub fn new(redis: &RedisSettings, settings: InboxSettings) -> Result<Self> {
        let client = herald_redis::client(redis)?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                keyspace: Keyspace::new(redis.key_prefix.clone()),
                settings,
                registry: Mutex::new(Registry::default()),
                wake: Notify::new(),
            }),
        })
    }

    /// Opens a stream of `user_id`'s changes. Waits (at most `inbox.subscribe_timeout`) until
    /// Redis confirmed the user's channel, so that a snapshot taken afterwards misses nothing;
    /// when Redis is away it returns anyway and the stream gets `Resync` once subscribed.
    pub async fn subscribe(&self, user_id: &str) -> Subscription {
        let channel = self.shared.keyspace.inbox_channel(user_id);
        let (receiver, mut confirmed) = {
            let mut registry = self.shared.registry();
            let buffer = self.shared.settings.stream_buffer.max(1);
            let topic = match registry.topics.get_mut(&channel) {
                Some(topic) => topic,
                None => {
                    registry.opened.push(channel.clone());
                    registry
                        .topics
                        .entry(channel.clone())
                        .or_insert_with(|| Topic {
                            sender: broadcast::Sender::new(buffer),
                            streams: 0,
                            confirmed: watch::Sender::new(false),
                            gap: false,
                        })
                }
            };
            topic.streams += 1;
            (topic.sender.subscribe(), topic.confirmed.subscribe())
        };
        self.shared.wake.notify_one();
        let subscription = Subscription {
            shared: Arc::clone(&self.shared),
            channel,
            receiver,
        };
        let in_time = tokio::time::timeout(
            self.shared.settings.subscribe_timeout,
            confirmed.wait_for(|confirmed| *confirmed),
        )
        .await
        .is_ok_and(|result| result.is_ok());
        if !in_time {
            let mut registry = self.shared.registry();
            if let Some(topic) = registry.topics.get_mut(&subscription.channel)
                && !*topic.confirmed.borrow()
            {
                topic.gap = true;
            }
        }
        subscription
    }

    /// The fan-out task: keeps the pub/sub connection, reconnecting with backoff, until
    /// `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let settings = &self.shared.settings;
        let mut reconnect =
            herald_service::Backoff::new(settings.reconnect_min, settings.reconnect_max);
        loop {
            let connected = tokio::select! {
                () = shutdown.cancelled() => return,
                connected = tokio::time::timeout(
                    settings.subscribe_timeout,
                    self.shared.client.get_async_pubsub(),
                ) => connected,
            };
            match connected {
                Ok(Ok(pubsub)) => {
                    reconnect.reset();
                    tracing::info!("Inbox fan-out connected to Redis.");
                    let (sink, stream) = pubsub.split();
                    let left = self.serve(sink, stream, &shutdown).await;
                    self.disconnected();
                    match left {
                        Left::Shutdown => return,
                        Left::Lost(error) => tracing::warn!(
                            error = %error,
                            "Inbox fan-out lost its Redis pub/sub connection; reconnecting, and open streams will get a resync."
                        ),
                    }
                }
                Ok(Err(error)) => tracing::warn!(
                    error = %error,
                    "Inbox fan-out cannot connect to Redis; retrying."
                ),
                Err(_) => tracing::warn!("Inbox fan-out timed out connecting to Redis; retrying."),
            }
            let pause = reconnect.next_delay();
            tracing::info!(
                retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                "Inbox fan-out reconnecting to Redis."
            );
            if !herald_service::sleep_unless_shutdown(pause, &shutdown).await {
                return;
            }
        }
    }

    /// Serves one connection until it fails or `shutdown` is cancelled.
    async fn serve(
        &self,
        mut sink: PubSubSink,
        mut stream: PubSubStream,
        shutdown: &CancellationToken,
    ) -> Left {
        let settings = &self.shared.settings;
        let mut subscribed = HashSet::new();
        if let Err(error) = self.reconcile(&mut sink, &mut subscribed, true).await {
            return Left::Lost(error.to_string());
        }
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + settings.ping_interval,
            settings.ping_interval,
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let result = tokio::select! {
                () = shutdown.cancelled() => return Left::Shutdown,
                message = stream.next() => match message {
                    Some(message) => {
                        self.dispatch(&message);
                        Ok(())
                    }
                    None => Err(Error::Unavailable("the connection closed".into())),
                },
                () = self.shared.wake.notified() => {
                    self.reconcile(&mut sink, &mut subscribed, false).await
                }
                _ = ping.tick() => bounded(settings.subscribe_timeout, sink.ping::<redis::Value>())
                    .await
                    .map(|_| ()),
            };
            if let Err(error) = result {
                return Left::Lost(error.to_string());
            }
        }
    }

    /// Applies the opened and closed channels to the connection (every channel when `full`, on
    /// a new connection), then confirms the opened ones and resyncs those with a gap.
    async fn reconcile(
        &self,
        sink: &mut PubSubSink,
        subscribed: &mut HashSet<String>,
        full: bool,
    ) -> Result<()> {
        let timeout = self.shared.settings.subscribe_timeout;
        let (to_subscribe, to_unsubscribe, to_confirm) = {
            let mut registry = self.shared.registry();
            let opened = std::mem::take(&mut registry.opened);
            let closed = std::mem::take(&mut registry.closed);
            if full {
                let all: Vec<String> = registry.topics.keys().cloned().collect();
                (all, Vec::new(), Vec::new())
            } else {
                let mut to_subscribe = Vec::new();
                let mut to_confirm = Vec::new();
                for channel in unique(opened) {
                    if !registry.topics.contains_key(&channel) {
                        continue;
                    }
                    if subscribed.contains(&channel) {
                        to_confirm.push(channel);
                    } else {
                        to_subscribe.push(channel);
                    }
                }
                let to_unsubscribe = unique(closed)
                    .into_iter()
                    .filter(|channel| {
                        !registry.topics.contains_key(channel) && subscribed.contains(channel)
                    })
                    .collect();
                (to_subscribe, to_unsubscribe, to_confirm)
            }
        };
        if !to_unsubscribe.is_empty() {
            bounded(timeout, sink.unsubscribe(&to_unsubscribe)).await?;
            for channel in &to_unsubscribe {
                subscribed.remove(channel);
            }
        }
        for batch in to_subscribe.chunks(SUBSCRIBE_BATCH) {
            bounded(timeout, sink.subscribe(batch)).await?;
            subscribed.extend(batch.iter().cloned());
        }
        let mut registry = self.shared.registry();
        for channel in to_subscribe.iter().chain(&to_confirm) {
            if let Some(topic) = registry.topics.get_mut(channel) {
                topic.confirmed.send_replace(true);
                if std::mem::take(&mut topic.gap) {
                    let _no_receivers = topic.sender.send(Update::Resync);
                }
            }
        }
        Ok(())
    }

    /// Forwards one published message to the local streams of its channel.
    fn dispatch(&self, message: &redis::Msg) {
        let Some(signal) = Signal::from_payload(message.get_payload_bytes()) else {
            tracing::warn!("Ignoring an inbox signal this version does not understand.");
            return;
        };
        let registry = self.shared.registry();
        if let Some(topic) = registry.topics.get(message.get_channel_name()) {
            let _no_receivers = topic.sender.send(Update::Signal(signal));
        }
    }

    /// The connection is gone: nothing is confirmed any more, and every stream that was
    /// receiving may miss signals until the channel is subscribed again.
    fn disconnected(&self) {
        let mut registry = self.shared.registry();
        registry.opened.clear();
        registry.closed.clear();
        for topic in registry.topics.values_mut() {
            if topic.confirmed.send_replace(false) {
                topic.gap = true;
            }
        }
    }
}

fn unique(mut channels: Vec<String>) -> Vec<String> {
    channels.sort_unstable();
    channels.dedup();
    channels
}

async fn bounded<T>(
    timeout: Duration,
    command: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T> {
    Ok(tokio::time::timeout(timeout, command)
        .await
        .map_err(|_| Error::Timeout)??)
}
