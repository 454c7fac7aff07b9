#![doc = include_str!("../README.md")]

use std::time::Duration;

use herald_domain::{Channel, Priority};
use herald_proto::queue::{DeliveryBatch, DeliveryMessage};
use lapin::Confirmation;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ConnectionProperties, ExchangeKind};
use prost::Message as _;

pub use lapin;

/// The exchange deliveries are published to, routed by channel name.
pub const EXCHANGE: &str = "herald.deliveries";

/// The exchange work queues dead-letter into, routed by channel name.
pub const DEAD_LETTER_EXCHANGE: &str = "herald.deliveries.dlx";

/// The exchange retries are published to, routed by retry queue name.
pub const RETRY_EXCHANGE: &str = "herald.retry";

/// The content type of a message carrying one delivery.
pub const CONTENT_TYPE: &str = "application/x-protobuf; proto=herald.queue.v1.DeliveryMessage";

/// The content type of a message carrying several deliveries of one channel and priority
/// (`DeliveryBatch`), which the relay publishes when it has more than one to send.
pub const BATCH_CONTENT_TYPE: &str = "application/x-protobuf; proto=herald.queue.v1.DeliveryBatch";

/// The deliveries a consumed message carries: one for a `DeliveryMessage`, each of a
/// `DeliveryBatch` (by the content type); `None` when the body is not what it says, or a
/// batch is empty.
pub fn decode_deliveries(
    properties: &BasicProperties,
    body: &[u8],
) -> Option<Vec<DeliveryMessage>> {
    let batch = properties
        .content_type()
        .as_ref()
        .is_some_and(|content_type| content_type.as_str() == BATCH_CONTENT_TYPE);
    if batch {
        let deliveries = DeliveryBatch::decode(body).ok()?.deliveries;
        (!deliveries.is_empty()).then_some(deliveries)
    } else {
        DeliveryMessage::decode(body)
            .ok()
            .map(|message| vec![message])
    }
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker connection or channel failed.
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    /// The TLS settings of the connection are not usable.
    #[error("{0}")]
    Tls(String),
    /// The broker refused the message (basic.nack).
    #[error("broker nacked the publish to {routing_key}")]
    Nacked {
        /// The routing key used.
        routing_key: String,
    },
    /// The message reached no queue (mandatory return): the topology is missing.
    #[error("publish to {routing_key} was returned as unroutable: {reply}")]
    Unroutable {
        /// The routing key used.
        routing_key: String,
        /// The broker's reply text.
        reply: String,
    },
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The work queue of `channel`: `herald.<channel>.deliver`.
pub fn work_queue(channel: Channel) -> String {
    format!("herald.{channel}.deliver")
}

/// The dead-letter queue of `channel`: `herald.<channel>.deliver.dlq`.
pub fn dead_letter_queue(channel: Channel) -> String {
    format!("{}.dlq", work_queue(channel))
}

/// The delay queue holding `channel`'s retries for `delay`: `herald.<channel>.retry.<ms>ms`.
/// Its per-queue TTL dead-letters every message back to the work queue when `delay` is up.
pub fn retry_queue(channel: Channel, delay: Duration) -> String {
    format!("herald.{channel}.retry.{}ms", delay.as_millis())
}

/// Opens a connection to `url`, over TLS for `amqps://` (the system's roots trusted). Herald
/// supervises reconnection itself instead of relying on lapin's recovery, so this is called
/// again after a failure.
pub async fn connect(url: &str, connection_name: &str) -> Result<lapin::Connection> {
    let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
    Ok(lapin::Connection::connect(url, properties).await?)
}

/// The broker connection a supervisor currently holds, shared with a readiness check: live,
/// so a connection the broker dropped reads as down at once, even while nothing is published.
#[derive(Clone, Default)]
pub struct BrokerLink(std::sync::Arc<std::sync::RwLock<Option<lapin::ConnectionStatus>>>);

impl std::fmt::Debug for BrokerLink {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_tuple("BrokerLink")
            .field(&self.is_connected())
            .finish()
    }
}

impl BrokerLink {
    /// Follows `connection` from now on.
    pub fn hold(&self, connection: &lapin::Connection) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(connection.status().clone());
    }

    /// No connection is held.
    pub fn release(&self) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Whether the connection held is up.
    pub fn is_connected(&self) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(lapin::ConnectionStatus::connected)
    }
}

/// Cancels `stop` once `connection` reports an error (the broker closed it, the network
/// dropped it), so that a supervisor idle on other work reconnects at once; returns early when
/// `stop` is cancelled otherwise.
pub fn cancel_when_lost(
    connection: &lapin::Connection,
    stop: tokio_util::sync::CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    use futures::StreamExt as _;
    let events = connection.events_listener();
    async move {
        let mut events = std::pin::pin!(events);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                event = events.next() => match event {
                    Some(lapin::Event::Error(_)) | None => {
                        stop.cancel();
                        return;
                    }
                    Some(_) => {}
                },
            }
        }
    }
}

/// Opens a connection as `settings` say: for `amqps://` with `tls_ca` set, the broker's
/// certificate must chain to that CA bundle (rustls, aws-lc-rs).
pub async fn connect_with(
    settings: &herald_config::AmqpSettings,
    connection_name: &str,
) -> Result<lapin::Connection> {
    use secrecy::ExposeSecret as _;
    let url = settings.url.expose_secret();
    if settings.tls_ca.as_os_str().is_empty() {
        return connect(url, connection_name).await;
    }
    let cert_chain = std::fs::read_to_string(&settings.tls_ca).map_err(|error| {
        Error::Tls(format!(
            "amqp.tls_ca ({}) cannot be read: {error}",
            settings.tls_ca.display()
        ))
    })?;
    let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: Some(cert_chain),
    };
    Ok(lapin::Connection::connect_with_config(
        url,
        properties,
        tls,
        lapin::runtime::default_runtime()?,
    )
    .await?)
}

/// Declares exchanges and queues for every channel. Idempotent: declaring an existing entity
/// with the same arguments is a no-op.
pub async fn declare_topology(channel: &lapin::Channel) -> Result<()> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for exchange in [EXCHANGE, DEAD_LETTER_EXCHANGE] {
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Direct,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
    }
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for delivery_channel in Channel::ALL {
        let routing_key = delivery_channel.as_str();
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-max-priority".into(),
            AMQPValue::ShortShortUInt(Priority::MAX_AMQP),
        );
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
        );
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(routing_key.into()),
        );
        let queue = work_queue(delivery_channel);
        channel
            .queue_declare(queue.as_str().into(), durable_queue, arguments)
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                EXCHANGE.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let dead_letters = dead_letter_queue(delivery_channel);
        channel
            .queue_declare(
                dead_letters.as_str().into(),
                durable_queue,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                dead_letters.as_str().into(),
                DEAD_LETTER_EXCHANGE.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Declares the retry exchange and one delay queue per delay for `delivery_channel`.
/// Per-queue TTLs (not per-message TTLs, which only expire at the head of a queue) make every
/// message in a queue wait the same time, then dead-letter to `herald.deliveries`.
pub async fn declare_retry_topology(
    channel: &lapin::Channel,
    delivery_channel: Channel,
    delays: &[Duration],
) -> Result<()> {
    channel
        .exchange_declare(
            RETRY_EXCHANGE.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    for delay in delays {
        let queue = retry_queue(delivery_channel, *delay);
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
        );
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(EXCHANGE.into()),
        );
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(delivery_channel.as_str().into()),
        );
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                RETRY_EXCHANGE.into(),
                queue.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// The W3C trace context (`traceparent`, `tracestate`) in a consumed message's AMQP headers.
pub fn trace_headers(properties: &BasicProperties) -> std::collections::HashMap<String, String> {
    properties
        .headers()
        .as_ref()
        .map(|headers| {
            headers
                .inner()
                .iter()
                .filter(|(key, _)| matches!(key.as_str(), "traceparent" | "tracestate"))
                .filter_map(|(key, value)| match value {
                    AMQPValue::LongString(text) => Some((
                        key.to_string(),
                        String::from_utf8_lossy(text.as_bytes()).into_owned(),
                    )),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Messages ready and consumers attached on one queue, as the broker reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    /// Messages ready for delivery (not counting unacknowledged ones).
    pub messages: u32,
    /// Consumers attached.
    pub consumers: u32,
}

/// Asks the broker for `queue`'s depth with a passive declare. A queue that does not exist
/// yet closes `channel` with NOT_FOUND: use a channel of its own per call.
pub async fn queue_depth(channel: &lapin::Channel, queue: &str) -> Result<QueueDepth> {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(QueueDepth {
        messages: declared.message_count(),
        consumers: declared.consumer_count(),
    })
}

/// The broker's counts for one channel's work and dead-letter queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelDepths {
    /// The channel.
    pub channel: Channel,
    /// `herald.<channel>.deliver`; `None` when the queue is not declared yet.
    pub work: Option<QueueDepth>,
    /// `herald.<channel>.deliver.dlq`; `None` when the queue is not declared yet.
    pub dead_letters: Option<QueueDepth>,
}

/// The broker's counts for every channel's queues. Each passive declare gets a channel of its
/// own, so a queue not declared yet (the broker closes the channel with NOT_FOUND) reads as
/// `None` without affecting the others.
pub async fn channel_depths(connection: &lapin::Connection) -> Result<Vec<ChannelDepths>> {
    async fn depth(connection: &lapin::Connection, queue: &str) -> Result<Option<QueueDepth>> {
        let channel = connection.create_channel().await?;
        match queue_depth(&channel, queue).await {
            Ok(depth) => {
                let _closed = channel.close(200, "depth read".into()).await;
                Ok(Some(depth))
            }
            Err(Error::Amqp(error)) if !connection.status().connected() => Err(Error::Amqp(error)),
            Err(_) => Ok(None),
        }
    }
    let mut depths = Vec::with_capacity(Channel::ALL.len());
    for channel in Channel::ALL {
        depths.push(ChannelDepths {
            channel,
            work: depth(connection, &work_queue(channel)).await?,
            dead_letters: depth(connection, &dead_letter_queue(channel)).await?,
        });
    }
    Ok(depths)
}

/// Opens a short-lived connection as `settings` say, reads `channel_depths` and closes it: for
/// callers that ask now and then (the API's queue stats, the relay's reconciler), bounded by
/// the caller's own timeout.
pub async fn read_depths(
    settings: &herald_config::AmqpSettings,
    connection_name: &str,
) -> Result<Vec<ChannelDepths>> {
    let connection = connect_with(settings, connection_name).await?;
    let depths = channel_depths(&connection).await;
    let _closed = connection.close(200, "queue depths read".into()).await;
    depths
}

/// Publishes delivery messages with publisher confirms.
#[derive(Debug, Clone)]
pub struct Publisher {
    channel: lapin::Channel,
}

impl Publisher {
    /// Opens a confirm-mode channel on `connection`.
    pub async fn new(connection: &lapin::Connection) -> Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    /// The underlying channel (for declaring topology).
    pub fn channel(&self) -> &lapin::Channel {
        &self.channel
    }

    /// Starts a persistent, mandatory publish of `message` to its channel's queue. Await the
    /// returned `PendingConfirm` for the outcome; many may be in flight at once.
    pub async fn publish(
        &self,
        message: &DeliveryMessage,
        channel: Channel,
        priority: Priority,
    ) -> Result<PendingConfirm> {
        self.publish_to(EXCHANGE, channel.as_str(), message, priority)
            .await
    }

    /// Starts a publish of `message` to `channel`'s delay queue for `delay` (declared by
    /// `declare_retry_topology`), from where it returns to the work queue.
    pub async fn publish_retry(
        &self,
        message: &DeliveryMessage,
        channel: Channel,
        priority: Priority,
        delay: Duration,
    ) -> Result<PendingConfirm> {
        self.publish_to(
            RETRY_EXCHANGE,
            &retry_queue(channel, delay),
            message,
            priority,
        )
        .await
    }

    /// Starts a persistent, mandatory publish of `messages` (deliveries of `channel` at
    /// `priority`) as one message: a `DeliveryMessage` for one, a `DeliveryBatch` for more.
    /// One confirm covers them all.
    pub async fn publish_many(
        &self,
        messages: &[DeliveryMessage],
        channel: Channel,
        priority: Priority,
    ) -> Result<PendingConfirm> {
        match messages {
            [message] => self.publish(message, channel, priority).await,
            _ => {
                let payload = DeliveryBatch {
                    deliveries: messages.to_vec(),
                }
                .encode_to_vec();
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_priority(priority.amqp_priority())
                    .with_content_type(BATCH_CONTENT_TYPE.into());
                self.send(EXCHANGE, channel.as_str(), &payload, properties)
                    .await
            }
        }
    }

    /// Starts a publish of `message` straight to `channel`'s dead-letter queue: for one
    /// delivery of a `DeliveryBatch`, whose message cannot be rejected for it alone.
    pub async fn publish_dead_letter(
        &self,
        message: &DeliveryMessage,
        channel: Channel,
        priority: Priority,
    ) -> Result<PendingConfirm> {
        self.publish_to(DEAD_LETTER_EXCHANGE, channel.as_str(), message, priority)
            .await
    }

    async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &DeliveryMessage,
        priority: Priority,
    ) -> Result<PendingConfirm> {
        let payload = message.encode_to_vec();
        let mut headers = FieldTable::default();
        for (key, value) in &message.trace_context {
            headers.insert(
                key.as_str().into(),
                AMQPValue::LongString(value.as_str().into()),
            );
        }
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_priority(priority.amqp_priority())
            .with_content_type(CONTENT_TYPE.into())
            .with_message_id(message.delivery_id.as_str().into());
        self.send(exchange, routing_key, &payload, properties).await
    }

    async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<PendingConfirm> {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                payload,
                properties,
            )
            .await?;
        Ok(PendingConfirm {
            confirm,
            routing_key: routing_key.to_owned(),
        })
    }
}

/// A publish waiting for the broker's confirm.
#[derive(Debug)]
pub struct PendingConfirm {
    confirm: lapin::PublisherConfirm,
    routing_key: String,
}

impl PendingConfirm {
    /// Waits for the broker. `Ok` only for a positive confirm without a mandatory return.
    pub async fn wait(self) -> Result<()> {
        match self.confirm.await? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(Error::Unroutable {
                routing_key: self.routing_key,
                reply: returned.reply_text.to_string(),
            }),
            Confirmation::Nack(_) => Err(Error::Nacked {
                routing_key: self.routing_key,
            }),
            // Confirm mode is always selected on a Publisher's channel, so this means the
            // channel was reset underneath us; count it as not confirmed.
            Confirmation::NotRequested => Err(Error::Nacked {
                routing_key: self.routing_key,
            }),
        }
    }
}
