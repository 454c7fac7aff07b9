//! Queue figures as gauges: every scan reads `herald_db::monitor` (the same figures
//! `AdminService.GetQueueStats` returns) and the gauges report the latest reading.

use std::sync::{Arc, Mutex, PoisonError};

use herald_db::monitor::{LaneFigures, OutboxFigures};
use herald_domain::{Channel, Priority};
use opentelemetry::KeyValue;
use opentelemetry::metrics::ObservableGauge;

#[derive(Default)]
struct Reading {
    lanes: Vec<LaneFigures>,
    outbox: OutboxFigures,
    at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The gauges and the reading they report.
pub(crate) struct QueueGauges {
    reading: Arc<Mutex<Reading>>,
    _gauges: (Vec<ObservableGauge<i64>>, Vec<ObservableGauge<f64>>),
}

fn lock(reading: &Mutex<Reading>) -> std::sync::MutexGuard<'_, Reading> {
    reading.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every channel and priority with its figures (zero when nothing waits).
fn lanes(reading: &Reading) -> Vec<(Channel, Priority, Option<&LaneFigures>)> {
    Channel::ALL
        .into_iter()
        .flat_map(|channel| {
            Priority::ALL
                .into_iter()
                .map(move |priority| (channel, priority))
        })
        .map(|(channel, priority)| {
            let figures = reading
                .lanes
                .iter()
                .find(|lane| lane.channel == channel && lane.priority == priority);
            (channel, priority, figures)
        })
        .collect()
}

fn lane_attributes(channel: Channel, priority: Priority) -> [KeyValue; 3] {
    [
        KeyValue::new(
            "messaging.destination.name",
            herald_queue::work_queue(channel),
        ),
        KeyValue::new("herald.channel", channel.as_str()),
        KeyValue::new("herald.priority", priority.to_string()),
    ]
}

impl QueueGauges {
    pub(crate) fn new(metrics: &herald_telemetry::Metrics) -> Self {
        let meter = metrics.meter();
        let reading = Arc::new(Mutex::new(Reading::default()));
        Self {
            _gauges: (count_gauges(&meter, &reading), age_gauges(&meter, &reading)),
            reading,
        }
    }

    /// Reads the figures now.
    pub(crate) async fn refresh(&self, pool: &herald_db::Pool) -> Result<(), herald_db::Error> {
        let now = chrono::Utc::now();
        let mut connection = herald_db::connection(pool).await?;
        let (lanes, outbox) = herald_db::monitor::figures(&mut connection, now).await?;
        *lock(&self.reading) = Reading {
            lanes,
            outbox,
            at: Some(now),
        };
        Ok(())
    }
}

fn seconds_between(from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>) -> f64 {
    (to - from).to_std().unwrap_or_default().as_secs_f64()
}

/// The gauges that count: deliveries waiting and retrying per lane, the outbox backlog.
fn count_gauges(
    meter: &opentelemetry::metrics::Meter,
    reading: &Arc<Mutex<Reading>>,
) -> Vec<ObservableGauge<i64>> {
    let count = |name: &'static str, description: &'static str, pick: fn(&LaneFigures) -> i64| {
        let reading = Arc::clone(reading);
        meter
            .i64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |observer| {
                let reading = lock(&reading);
                if reading.at.is_none() {
                    return;
                }
                for (channel, priority, figures) in lanes(&reading) {
                    observer.observe(figures.map_or(0, pick), &lane_attributes(channel, priority));
                }
            })
            .build()
    };
    vec![
        count(
            "herald.queue.waiting",
            "Deliveries published to a queue and not yet taken, by queue and priority",
            |lane| lane.waiting,
        ),
        count(
            "herald.queue.retrying",
            "Deliveries waiting in a delay queue for their next attempt, by channel and priority",
            |lane| lane.retrying,
        ),
        {
            let reading = Arc::clone(reading);
            meter
                .i64_observable_gauge("herald.outbox.backlog")
                .with_description("Outbox rows due and not yet published by the relay")
                .with_callback(move |observer| {
                    let reading = lock(&reading);
                    if reading.at.is_some() {
                        observer.observe(reading.outbox.backlog, &[]);
                    }
                })
                .build()
        },
    ]
}

/// The gauges of ages: the oldest waiting delivery per lane, the oldest due outbox row.
fn age_gauges(
    meter: &opentelemetry::metrics::Meter,
    reading: &Arc<Mutex<Reading>>,
) -> Vec<ObservableGauge<f64>> {
    vec![
        {
            let reading = Arc::clone(reading);
            meter
                .f64_observable_gauge("herald.queue.oldest_wait")
                .with_unit("s")
                .with_description(
                    "Age of the longest-waiting delivery in a queue, by queue and priority",
                )
                .with_callback(move |observer| {
                    let reading = lock(&reading);
                    let Some(at) = reading.at else {
                        return;
                    };
                    for (channel, priority, figures) in lanes(&reading) {
                        let age = figures
                            .and_then(|lane| lane.oldest_queued_at)
                            .map_or(0.0, |oldest| seconds_between(oldest, at));
                        observer.observe(age, &lane_attributes(channel, priority));
                    }
                })
                .build()
        },
        {
            let reading = Arc::clone(reading);
            meter
                .f64_observable_gauge("herald.outbox.oldest_due")
                .with_unit("s")
                .with_description(
                    "How long the oldest unpublished outbox row has been due (relay lag)",
                )
                .with_callback(move |observer| {
                    let reading = lock(&reading);
                    let Some(at) = reading.at else {
                        return;
                    };
                    let age = reading
                        .outbox
                        .oldest_due_at
                        .map_or(0.0, |oldest| seconds_between(oldest, at));
                    observer.observe(age, &[]);
                })
                .build()
        },
    ]
}
