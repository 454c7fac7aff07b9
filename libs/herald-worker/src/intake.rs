//! The worker's intake: prefetched messages (and emergency deliveries) waiting for a claim,
//! taken highest priority first and, within a priority, in arrival order.
//!
//! RabbitMQ's priority queue only orders messages it has not yet handed to a consumer. With
//! hundreds prefetched, a critical message that arrives after a burst of bulk ones would wait
//! behind all of them if the worker took them in delivery order; the intake lets it overtake
//! everything the worker has not claimed yet. The pipeline claims only as many deliveries as
//! it has free provider slots, so almost everything prefetched waits here, reorderable.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Mutex, PoisonError};

use herald_domain::Priority;
use tokio::sync::Notify;

/// Items waiting, by priority then arrival.
#[derive(Debug)]
pub(crate) struct Intake<T> {
    waiting: Mutex<Waiting<T>>,
    arrived: Notify,
}

#[derive(Debug)]
struct Waiting<T> {
    heap: BinaryHeap<Entry<T>>,
    next_arrival: u64,
}

#[derive(Debug)]
struct Entry<T> {
    priority: i16,
    arrival: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    /// The greatest entry is taken first: the highest priority, then the earliest arrival.
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.arrival.cmp(&self.arrival))
    }
}

impl<T> Default for Intake<T> {
    fn default() -> Self {
        Self {
            waiting: Mutex::new(Waiting {
                heap: BinaryHeap::new(),
                next_arrival: 0,
            }),
            arrived: Notify::new(),
        }
    }
}

impl<T> Intake<T> {
    /// Adds `item` at `priority`.
    pub(crate) fn push(&self, priority: Priority, item: T) {
        {
            let mut waiting = self.lock();
            let arrival = waiting.next_arrival;
            waiting.next_arrival += 1;
            waiting.heap.push(Entry {
                priority: priority.as_i16(),
                arrival,
                item,
            });
        }
        self.arrived.notify_one();
    }

    /// Takes the first item by priority, then arrival.
    pub(crate) fn pop(&self) -> Option<T> {
        self.lock().heap.pop().map(|entry| entry.item)
    }

    /// How many items wait.
    pub(crate) fn len(&self) -> usize {
        self.lock().heap.len()
    }

    /// Waits until an item is waiting (returns at once if one is).
    pub(crate) async fn wait(&self) {
        loop {
            let arrived = self.arrived.notified();
            if self.len() > 0 {
                return;
            }
            arrived.await;
        }
    }

    /// Keeps only the items `keep` accepts; the others are dropped.
    pub(crate) fn retain(&self, keep: impl FnMut(&T) -> bool) {
        let mut keep = keep;
        self.lock().heap.retain(|entry| keep(&entry.item));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting<T>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
