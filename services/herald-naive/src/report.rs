//! What a run measured, as text or JSON.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

/// How often each row was updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    /// Rows updated exactly once.
    pub updated_once: u64,
    /// Rows never updated.
    pub not_updated: u64,
    /// Rows updated more than once (a message consumed twice).
    pub updated_more_than_once: u64,
    /// Rows in the table.
    pub rows: u64,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

impl Percentiles {
    /// Percentiles of `samples_us` with three significant figures; `None` without samples.
    pub(crate) fn of(samples_us: &[u64]) -> Option<Self> {
        // Bounded (1 µs to one hour): an auto-resizing histogram would saturate instead.
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).ok()?;
        for sample in samples_us {
            histogram.saturating_record(*sample);
        }
        (!histogram.is_empty()).then(|| Self {
            p50: histogram.value_at_quantile(0.50),
            p99: histogram.value_at_quantile(0.99),
            max: histogram.max(),
        })
    }
}

/// A run's figures and the settings that produced them.
#[derive(Debug, Clone)]
pub struct Report {
    /// Items in the run.
    pub count: u64,
    /// Items acknowledged.
    pub acked: u64,
    /// From the first INSERT to the last ack.
    pub elapsed: Duration,
    /// Per item, from the start of its INSERT to its ack.
    pub latency_us: Option<Percentiles>,
    /// Producer tasks ([`crate::CONCURRENCY`]).
    pub concurrency: usize,
    /// Consumer prefetch ([`crate::PREFETCH`]).
    pub prefetch: u16,
    /// `synchronous_commit` of the run's sessions.
    pub synchronous_commit: String,
    /// The server's default `synchronous_commit`.
    pub server_synchronous_commit: String,
    /// PostgreSQL connections the run held.
    pub postgres_connections: usize,
    /// The table afterwards.
    pub verification: Verification,
}

impl Report {
    /// Items per second, end to end.
    pub fn items_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.acked as f64 / seconds
        } else {
            0.0
        }
    }

    /// Whether every item was acknowledged and its row updated exactly once.
    pub fn is_exact(&self) -> bool {
        let verification = &self.verification;
        self.acked == self.count
            && verification.rows == self.count
            && verification.updated_once == self.count
            && verification.not_updated == 0
            && verification.updated_more_than_once == 0
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let verification = &self.verification;
        json!({
            "count": self.count,
            "acked": self.acked,
            "elapsed_s": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "items_per_s": (self.items_per_second() * 10.0).round() / 10.0,
            "latency_us": self.latency_us.map(|latency| json!({
                "p50": latency.p50,
                "p99": latency.p99,
                "max": latency.max,
            })),
            "concurrency": self.concurrency,
            "prefetch": self.prefetch,
            "synchronous_commit": self.synchronous_commit,
            "server_synchronous_commit": self.server_synchronous_commit,
            "postgres_connections": self.postgres_connections,
            "pipeline": "INSERT+commit -> persistent publish, confirm awaited -> consume -> UPDATE+commit -> ack",
            "verification": {
                "updated_once": verification.updated_once,
                "not_updated": verification.not_updated,
                "updated_more_than_once": verification.updated_more_than_once,
                "rows": verification.rows,
            },
        })
    }

    /// The report as text.
    pub fn to_text(&self) -> String {
        let verification = &self.verification;
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            text,
            "herald-naive: {} of {} items in {:.3}s: {:.1} items/s end to end (first INSERT to last ack)",
            self.acked,
            self.count,
            self.elapsed.as_secs_f64(),
            self.items_per_second()
        );
        let _ = writeln!(
            text,
            "  per item:     INSERT+commit -> persistent publish, confirm awaited -> consume -> UPDATE+commit -> ack"
        );
        let _ = writeln!(
            text,
            "  settings:     concurrency {} (producers), prefetch {} (consumer), synchronous_commit {} (server default {}), {} PostgreSQL connections",
            self.concurrency,
            self.prefetch,
            self.synchronous_commit,
            self.server_synchronous_commit,
            self.postgres_connections
        );
        if let Some(latency) = self.latency_us {
            let _ = writeln!(
                text,
                "  item latency: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms (INSERT start to ack)",
                latency.p50 as f64 / 1000.0,
                latency.p99 as f64 / 1000.0,
                latency.max as f64 / 1000.0
            );
        }
        let _ = writeln!(
            text,
            "  verified:     {} rows, {} updated once, {} not updated, {} updated more than once",
            verification.rows,
            verification.updated_once,
            verification.not_updated,
            verification.updated_more_than_once
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_keep_latencies_of_milliseconds_and_seconds() {
        let samples: Vec<u64> = (1..=100).map(|n| n * 1_000).collect();
        let percentiles = Percentiles::of(&samples).unwrap();
        assert_eq!(percentiles.p50 / 100, 500);
        assert_eq!(percentiles.p99 / 100, 990);
        assert_eq!(percentiles.max / 1000, 100);
        assert_eq!(Percentiles::of(&[]), None);
        assert_eq!(Percentiles::of(&[2_500_000]).unwrap().max / 10_000, 250);
    }
}
