//! Group commit for submits: handlers validate and build their rows, then hand them to the
//! writer, which commits many submits in one transaction and answers each caller.
//!
//! A collector takes the first waiting submit, then everything else already waiting (up to
//! `submit.batch_max_items` notifications and `submit.batch_max_deliveries` deliveries);
//! while other batches are being committed it also lingers up to `submit.batch_linger` for
//! more. At most `submit.writers` batches commit at once, each on its own pooled
//! connection, so batches grow by themselves under load and a lone submit is written at once.
//!
//! A batch that fails is retried one submit at a time: only the bad submit fails, and every
//! other caller of the batch gets its own answer. PostgreSQL unreachable fails the batch with
//! `Unavailable` for every caller (nothing was written).

use std::sync::Arc;
use std::time::Duration;

use herald_db::notifications::{self, Inserted, NewNotification};
use tokio::sync::{Semaphore, mpsc, oneshot};

#[cfg(test)]
mod tests;

/// Limits of one batch and how many commit at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterLimits {
    /// Most notifications in one transaction.
    pub(crate) max_items: usize,
    /// Most deliveries in one transaction (a notification with many recipients counts for
    /// each of them).
    pub(crate) max_deliveries: usize,
    /// How long a batch waits for more submits while other batches are being committed.
    pub(crate) linger: Duration,
    /// Batches committing at once (pooled connections the writer may hold).
    pub(crate) writers: usize,
}

type Answer = Result<Inserted, herald_db::Error>;

struct Job {
    new: NewNotification,
    reply: oneshot::Sender<Answer>,
}

/// The handle handlers write through. Cloning shares the writer.
#[derive(Clone)]
pub(crate) struct SubmitWriter {
    sender: mpsc::Sender<Job>,
}

impl SubmitWriter {
    /// Starts the collector; it stops once every handle is dropped, after answering every
    /// submit it took.
    pub(crate) fn spawn(pool: herald_db::Pool, limits: WriterLimits) -> Self {
        // Room for a few full batches: beyond it handlers wait, which is the back-pressure.
        let (sender, receiver) = mpsc::channel(limits.max_items.saturating_mul(4).max(16));
        tokio::spawn(collect(pool, limits, receiver));
        Self { sender }
    }

    /// Writes `new` in the next batch and returns what became of it.
    pub(crate) async fn write(&self, new: NewNotification) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Job { new, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> herald_db::Error {
    herald_db::Error::Unavailable("the submit writer has stopped".into())
}

async fn collect(pool: herald_db::Pool, limits: WriterLimits, mut receiver: mpsc::Receiver<Job>) {
    let writers = Arc::new(Semaphore::new(limits.writers.max(1)));
    // A job that did not fit the previous batch starts the next one.
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match receiver.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let Ok(permit) = writers.clone().acquire_owned().await else {
            return;
        };
        let busy = writers.available_permits() + 1 < limits.writers.max(1);
        let mut batch = Batch::new(first);
        // Whatever arrived while the permit was awaited, then (when other batches are being
        // committed, so waiting costs no idle time) more within the linger.
        let deadline = tokio::time::Instant::now() + limits.linger;
        while !batch.is_full(&limits) {
            let next = match receiver.try_recv() {
                Ok(job) => Some(job),
                Err(_) if busy && !limits.linger.is_zero() => {
                    match tokio::time::timeout_at(deadline, receiver.recv()).await {
                        Ok(Some(job)) => Some(job),
                        Ok(None) | Err(_) => None,
                    }
                }
                Err(_) => None,
            };
            let Some(job) = next else { break };
            if let Some(overflow) = batch.push(job, &limits) {
                carried = Some(overflow);
                break;
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            write_batch(&pool, batch.jobs).await;
            drop(permit);
        });
    }
}

struct Batch {
    jobs: Vec<Job>,
    deliveries: usize,
}

impl Batch {
    fn new(first: Job) -> Self {
        Self {
            deliveries: first.new.deliveries.len(),
            jobs: vec![first],
        }
    }

    fn is_full(&self, limits: &WriterLimits) -> bool {
        self.jobs.len() >= limits.max_items || self.deliveries >= limits.max_deliveries
    }

    /// Adds `job`, or gives it back when its deliveries would overflow the batch.
    fn push(&mut self, job: Job, limits: &WriterLimits) -> Option<Job> {
        if self.deliveries + job.new.deliveries.len() > limits.max_deliveries {
            return Some(job);
        }
        self.deliveries += job.new.deliveries.len();
        self.jobs.push(job);
        None
    }
}

async fn write_batch(pool: &herald_db::Pool, jobs: Vec<Job>) {
    let mut connection = match herald_db::connection(pool).await {
        Ok(connection) => connection,
        Err(error) => {
            answer_all(jobs, &error);
            return;
        }
    };
    let (news, replies): (Vec<NewNotification>, Vec<oneshot::Sender<Answer>>) =
        jobs.into_iter().map(|job| (job.new, job.reply)).unzip();
    match notifications::insert_batch(&mut connection, &news).await {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _gone = reply.send(Ok(answer));
            }
        }
        Err(error) if news.len() == 1 => {
            if let Some(reply) = replies.into_iter().next() {
                let _gone = reply.send(Err(error));
            }
        }
        Err(error) if error.is_unavailable() => {
            tracing::warn!(error = %error, submits = news.len(), "A submit batch could not be written.");
            let jobs = news
                .into_iter()
                .zip(replies)
                .map(|(new, reply)| Job { new, reply });
            answer_all(jobs, &error);
        }
        Err(error) => {
            // One bad submit must not fail the others: write each alone.
            tracing::warn!(error = %error, submits = news.len(), "A submit batch failed; writing its submits one by one.");
            for (new, reply) in news.iter().zip(replies) {
                let answer = notifications::insert(&mut connection, new).await;
                let _gone = reply.send(answer);
            }
        }
    }
}

/// Answers every job with a copy of `error` (which is not `Clone`; a query failure's copy
/// keeps its text).
fn answer_all(jobs: impl IntoIterator<Item = Job>, error: &herald_db::Error) {
    for job in jobs {
        let copy = match error {
            herald_db::Error::Unavailable(message) => {
                herald_db::Error::Unavailable(message.clone())
            }
            herald_db::Error::Conflict { constraint } => herald_db::Error::Conflict {
                constraint: constraint.clone(),
            },
            herald_db::Error::TemplateKeyTaken { key } => {
                herald_db::Error::TemplateKeyTaken { key: key.clone() }
            }
            herald_db::Error::Invalid(message) => herald_db::Error::Invalid(message.clone()),
            herald_db::Error::Corrupt(message) => herald_db::Error::Corrupt(message.clone()),
            herald_db::Error::Keys(keys) => herald_db::Error::Keys(keys.clone()),
            herald_db::Error::Query(_) => herald_db::Error::Corrupt(error.to_string()),
        };
        let _gone = job.reply.send(Err(copy));
    }
}
