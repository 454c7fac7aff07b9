#![doc = include_str!("../README.md")]

mod report;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, ConnectionProperties};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls, Statement};
use tokio_util::sync::CancellationToken;

pub use report::{Report, Verification};

/// Producer tasks, each doing INSERT → publish → confirm for one item after the other, with
/// its own PostgreSQL connection and AMQP channel. Pinned: the benchmark's ratios are against
/// this figure.
pub const CONCURRENCY: usize = 32;
/// Unacknowledged messages the consumer may hold, and tasks doing UPDATE → ack, each with its
/// own PostgreSQL connection. Pinned like [`CONCURRENCY`].
pub const PREFETCH: u16 = 32;

/// The default schema.
pub const DEFAULT_SCHEMA: &str = "naive_bench";
/// The default queue.
pub const DEFAULT_QUEUE: &str = "herald-naive.items";

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL failed.
    #[error("postgresql: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// RabbitMQ failed.
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused a publish or could not route it.
    #[error("rabbitmq did not take item {id}: {what}")]
    NotConfirmed {
        /// The item.
        id: i64,
        /// Nack, returned, or no confirm.
        what: &'static str,
    },
    /// A consumed message does not name an item, or its row is missing.
    #[error("consumed message {0} does not match a row")]
    UnknownItem(String),
    /// Not every item was acknowledged in time.
    #[error("{acked} of {count} items acknowledged after {timeout:?}")]
    Timeout {
        /// Acknowledged so far.
        acked: u64,
        /// Items in the run.
        count: u64,
        /// The limit.
        timeout: Duration,
    },
    /// The schema name is not a plain identifier.
    #[error("the schema must be lowercase letters, digits and underscores, got {0:?}")]
    Schema(String),
    /// A task panicked or was cancelled.
    #[error("a task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the run goes and how much it does.
#[derive(Debug, Clone)]
pub struct Settings {
    /// PostgreSQL URL.
    pub database_url: String,
    /// RabbitMQ URL (the path is the vhost).
    pub amqp_url: String,
    /// Items.
    pub count: u64,
    /// Schema of the `items` table (recreated).
    pub schema: String,
    /// Queue (deleted at the start and at the end).
    pub queue: String,
    /// Give up when not every item is acknowledged after this long.
    pub timeout: Duration,
}

/// Runs the pipeline for `settings.count` items and checks the table afterwards.
///
/// # Errors
/// When PostgreSQL or RabbitMQ fail, a publish is not confirmed, or the items are not all
/// acknowledged within `settings.timeout`.
pub async fn run(settings: &Settings) -> Result<Report> {
    if settings.schema.is_empty()
        || !settings
            .schema
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
    {
        return Err(Error::Schema(settings.schema.clone()));
    }
    let table = format!("\"{}\".items", settings.schema);
    let admin = connect_postgres(&settings.database_url).await?;
    let server_synchronous_commit = admin
        .query_one("SHOW synchronous_commit", &[])
        .await?
        .try_get::<_, String>(0)?;
    create_table(&admin, &settings.schema, &table).await?;

    let amqp = lapin::Connection::connect(
        &settings.amqp_url,
        ConnectionProperties::default().with_connection_name("herald-naive".into()),
    )
    .await?;
    let setup = amqp.create_channel().await?;
    redeclare_queue(&setup, &settings.queue).await?;

    // Every connection, statement and channel is ready before the clock starts.
    let insert = format!("INSERT INTO {table} (id, payload) VALUES ($1, $2)");
    let update =
        format!("UPDATE {table} SET updates = updates + 1, updated_at = now() WHERE id = $1");
    let producers = prepared_sessions(&settings.database_url, &insert, CONCURRENCY).await?;
    let consumers =
        prepared_sessions(&settings.database_url, &update, usize::from(PREFETCH)).await?;
    let (publish_channels, consumer) = amqp_channels(&amqp, &settings.queue).await?;

    let shared = Arc::new(Shared::new(settings));
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    let (deliveries_tx, deliveries_rx) = mpsc::channel(usize::from(PREFETCH));
    let deliveries_rx = Arc::new(Mutex::new(deliveries_rx));
    tasks.spawn(dispatch(consumer, deliveries_tx, Arc::clone(&shared)));
    for (client, statement) in consumers {
        tasks.spawn(consume(
            client,
            statement,
            Arc::clone(&deliveries_rx),
            Arc::clone(&shared),
        ));
    }
    for ((client, statement), channel) in producers.into_iter().zip(publish_channels) {
        tasks.spawn(produce(client, statement, channel, Arc::clone(&shared)));
    }
    join_within(&mut tasks, settings, &shared).await?;
    let elapsed = shared
        .finished
        .get()
        .map_or_else(|| shared.started.elapsed(), |at| *at - shared.started);

    let verification = verify(&admin, &table).await?;
    setup
        .queue_delete(
            settings.queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await?;
    let _closed = amqp.close(200, "done".into()).await;
    let latencies_us = std::mem::take(
        &mut *shared
            .latencies_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    Ok(Report {
        count: settings.count,
        acked: shared.acked.load(Ordering::Acquire),
        elapsed,
        latency_us: report::Percentiles::of(&latencies_us),
        concurrency: CONCURRENCY,
        prefetch: PREFETCH,
        synchronous_commit: "on".to_owned(),
        server_synchronous_commit,
        postgres_connections: CONCURRENCY + usize::from(PREFETCH),
        verification,
    })
}

/// Creates the items table afresh in `schema`.
async fn create_table(admin: &tokio_postgres::Client, schema: &str, table: &str) -> Result<()> {
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
             DROP TABLE IF EXISTS {table};
             CREATE TABLE {table} (
                 id bigint PRIMARY KEY,
                 payload text NOT NULL,
                 created_at timestamptz NOT NULL DEFAULT now(),
                 updates integer NOT NULL DEFAULT 0,
                 updated_at timestamptz
             );"
        ))
        .await?;
    Ok(())
}

/// Declares `queue` afresh: durable, and empty.
async fn redeclare_queue(setup: &lapin::Channel, queue: &str) -> Result<()> {
    setup
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    setup
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Waits for every task, or fails with how far the items got when `settings.timeout` passes.
async fn join_within(
    tasks: &mut JoinSet<Result<()>>,
    settings: &Settings,
    shared: &Shared,
) -> Result<()> {
    let finished = tokio::time::timeout(settings.timeout, async {
        while let Some(result) = tasks.join_next().await {
            result??;
        }
        Ok::<_, Error>(())
    })
    .await;
    match finished {
        Ok(result) => result?,
        Err(_elapsed) => {
            return Err(Error::Timeout {
                acked: shared.acked.load(Ordering::Acquire),
                count: settings.count,
                timeout: settings.timeout,
            });
        }
    }
    Ok(())
}

/// A confirm-mode publish channel per producer, and the consumer of `queue` (prefetch
/// `PREFETCH`).
async fn amqp_channels(
    amqp: &lapin::Connection,
    queue: &str,
) -> Result<(Vec<lapin::Channel>, lapin::Consumer)> {
    let mut publish_channels = Vec::with_capacity(CONCURRENCY);
    for _ in 0..CONCURRENCY {
        let channel = amqp.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        publish_channels.push(channel);
    }
    let consume_channel = amqp.create_channel().await?;
    consume_channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let consumer = consume_channel
        .basic_consume(
            queue.into(),
            "herald-naive".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((publish_channels, consumer))
}

/// What the tasks share.
#[derive(Debug)]
struct Shared {
    count: u64,
    queue: String,
    /// The next item a producer takes.
    next: AtomicU64,
    acked: AtomicU64,
    /// Just before the first INSERT.
    started: Instant,
    /// Just after the last ack.
    finished: OnceLock<Instant>,
    /// Cancelled when the last item is acknowledged: the consumer then stops.
    all_acked: CancellationToken,
    /// Per item, from the start of its INSERT to its ack.
    latencies_us: std::sync::Mutex<Vec<u64>>,
}

impl Shared {
    fn new(settings: &Settings) -> Self {
        Self {
            count: settings.count,
            queue: settings.queue.clone(),
            next: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            started: Instant::now(),
            finished: OnceLock::new(),
            all_acked: CancellationToken::new(),
            latencies_us: std::sync::Mutex::new(Vec::with_capacity(
                usize::try_from(settings.count).unwrap_or(0),
            )),
        }
    }
}

async fn connect_postgres(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        // The client's next call reports a lost connection; nothing to add here.
        let _ended = connection.await;
    });
    client.batch_execute("SET synchronous_commit TO on").await?;
    Ok(client)
}

/// `sessions` connections, each with `sql` prepared.
async fn prepared_sessions(
    url: &str,
    sql: &str,
    sessions: usize,
) -> Result<Vec<(Client, Statement)>> {
    let mut prepared = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let client = connect_postgres(url).await?;
        let statement = client.prepare(sql).await?;
        prepared.push((client, statement));
    }
    Ok(prepared)
}

/// A message body: the item id and the microseconds since the start at which its INSERT
/// began (for its latency), then the payload.
fn body(id: i64, began_us: u64, payload: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + payload.len());
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&began_us.to_be_bytes());
    body.extend_from_slice(payload.as_bytes());
    body
}

fn parse_body(body: &[u8]) -> Option<(i64, u64)> {
    let id = i64::from_be_bytes(body.get(..8)?.try_into().ok()?);
    let began_us = u64::from_be_bytes(body.get(8..16)?.try_into().ok()?);
    Some((id, began_us))
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// INSERT + commit, then a persistent, mandatory publish whose confirm is awaited; item after
/// item until none is left.
async fn produce(
    client: Client,
    insert: Statement,
    channel: lapin::Channel,
    shared: Arc<Shared>,
) -> Result<()> {
    let properties = BasicProperties::default().with_delivery_mode(2);
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    loop {
        let index = shared.next.fetch_add(1, Ordering::Relaxed);
        if index >= shared.count {
            return Ok(());
        }
        let id = i64::try_from(index).unwrap_or(i64::MAX);
        let began_us = micros(shared.started.elapsed());
        let payload = format!(
            r#"{{"template":"naive","to":"naive+{id}@example.com","parameters":{{"n":{id}}}}}"#
        );
        // Without a transaction block the statement commits on its own.
        client.execute(&insert, &[&id, &payload]).await?;
        let confirmation = channel
            .basic_publish(
                "".into(),
                shared.queue.as_str().into(),
                options,
                &body(id, began_us, &payload),
                properties.clone(),
            )
            .await?
            .await?;
        match confirmation {
            Confirmation::Ack(None) => {}
            // A mandatory publish that reached no queue is acked with the message returned.
            Confirmation::Ack(Some(_)) => {
                return Err(Error::NotConfirmed {
                    id,
                    what: "returned as unroutable",
                });
            }
            Confirmation::Nack(_) => return Err(Error::NotConfirmed { id, what: "nacked" }),
            Confirmation::NotRequested => {
                return Err(Error::NotConfirmed {
                    id,
                    what: "no confirm",
                });
            }
        }
    }
}

/// Hands consumed messages to the UPDATE tasks until every item is acknowledged.
async fn dispatch(
    mut consumer: lapin::Consumer,
    deliveries: mpsc::Sender<lapin::message::Delivery>,
    shared: Arc<Shared>,
) -> Result<()> {
    loop {
        let delivery = tokio::select! {
            () = shared.all_acked.cancelled() => return Ok(()),
            delivery = consumer.next() => delivery,
        };
        let Some(delivery) = delivery else {
            return Ok(());
        };
        if deliveries.send(delivery?).await.is_err() {
            return Ok(());
        }
    }
}

/// UPDATE + commit, then ack; message after message.
async fn consume(
    client: Client,
    update: Statement,
    deliveries: Arc<Mutex<mpsc::Receiver<lapin::message::Delivery>>>,
    shared: Arc<Shared>,
) -> Result<()> {
    loop {
        let delivery = {
            let mut receiver = tokio::select! {
                () = shared.all_acked.cancelled() => return Ok(()),
                receiver = deliveries.lock() => receiver,
            };
            tokio::select! {
                () = shared.all_acked.cancelled() => return Ok(()),
                delivery = receiver.recv() => delivery,
            }
        };
        let Some(delivery) = delivery else {
            return Ok(());
        };
        let Some((id, began_us)) = parse_body(&delivery.data) else {
            return Err(Error::UnknownItem(format!("{:?}", delivery.delivery_tag)));
        };
        let updated = client.execute(&update, &[&id]).await?;
        if updated != 1 {
            return Err(Error::UnknownItem(id.to_string()));
        }
        delivery.ack(BasicAckOptions::default()).await?;
        let latency = micros(shared.started.elapsed()).saturating_sub(began_us);
        shared
            .latencies_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(latency);
        if shared.acked.fetch_add(1, Ordering::AcqRel) + 1 == shared.count {
            let _first = shared.finished.set(Instant::now());
            shared.all_acked.cancel();
        }
    }
}

/// Counts rows by how often they were updated.
async fn verify(client: &Client, table: &str) -> Result<Verification> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE updates = 1),
                        count(*) FILTER (WHERE updates = 0),
                        count(*) FILTER (WHERE updates > 1),
                        count(*)
                 FROM {table}"
            ),
            &[],
        )
        .await?;
    let count = |index: usize| -> Result<u64> {
        Ok(u64::try_from(row.try_get::<_, i64>(index)?).unwrap_or(0))
    };
    Ok(Verification {
        updated_once: count(0)?,
        not_updated: count(1)?,
        updated_more_than_once: count(2)?,
        rows: count(3)?,
    })
}
