//! Where "now" comes from. Code that schedules or expires things takes a [`SharedClock`] so tests
//! can swap the system clock for a [`ManualClock`] and move time by hand instead of sleeping.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};

/// A source of the current instant.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// A clock shared between components.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to. Meant for tests.
#[derive(Debug)]
pub struct ManualClock {
    instant: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock that reads `start` until it is moved.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            instant: Mutex::new(start),
        }
    }

    /// Moves the clock to `instant`, forwards or backwards.
    pub fn set(&self, instant: DateTime<Utc>) {
        *self.lock() = instant;
    }

    /// Moves the clock by `by` (negative values move it back).
    ///
    /// # Panics
    ///
    /// Panics if the result falls outside the range chrono can represent.
    pub fn advance(&self, by: Duration) {
        let mut instant = self.lock();
        *instant = instant
            .checked_add_signed(by)
            .expect("a manual clock is only moved within chrono's representable range");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DateTime<Utc>> {
        // The guarded value is a plain `Copy` instant that is written in one step, so a panic
        // elsewhere while holding the lock cannot leave it half-updated.
        self.instant.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.lock()
    }
}
