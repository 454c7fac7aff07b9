//! The report's figures and its JSON and text forms.

use super::*;

#[test]
fn percentiles_come_from_the_samples() -> anyhow::Result<()> {
    let samples: Vec<u64> = (1..=1000).collect();
    let percentiles = Percentiles::of(&samples)?.context("expected percentiles")?;
    assert_eq!(percentiles.samples, 1000);
    assert_eq!(percentiles.p50, 500);
    assert_eq!(percentiles.p90, 900);
    assert_eq!(percentiles.p99, 990);
    assert_eq!(percentiles.max, 1000);
    assert_eq!(Percentiles::of(&[])?, None);
    Ok(())
}

fn submit() -> SubmitSummary {
    SubmitSummary {
        accepted: 2,
        duplicates: 0,
        resends: 0,
        errors: Reasons::default(),
        elapsed: Duration::from_millis(500),
        latency_us: None,
        send_lag_us: None,
    }
}

fn report(delivered: u64) -> Report {
    Report {
        run_id: "run1".to_owned(),
        template: "bench".to_owned(),
        count: 2,
        load: Load::Closed { concurrency: 1 },
        connections: 1,
        submit: submit(),
        delivery: Some(Delivery::Polled(DeliverySummary {
            delivered,
            failed: 2 - delivered,
            partially_delivered: 0,
            unfinished: 0,
            window: Some(Duration::from_secs(4)),
            latency_us: None,
            undelivered: Reasons::default(),
            polls: 4,
            poll_errors: Reasons::default(),
            elapsed: Duration::from_secs(1),
        })),
    }
}

fn sink_report(delivered: u64, duplicates: u64) -> Report {
    Report {
        load: Load::Open {
            rate: 1000.0,
            max_in_flight: 64,
        },
        submit: SubmitSummary {
            latency_us: Percentiles::of(&[1_000, 2_000]).unwrap(),
            send_lag_us: Percentiles::of(&[10, 20]).unwrap(),
            ..submit()
        },
        delivery: Some(Delivery::Sink(SinkSummary {
            url: "http://127.0.0.1:8025".to_owned(),
            delivered,
            unexpected: 0,
            unfinished: 2 - delivered,
            duplicates,
            messages: delivered + duplicates,
            window: Some(Duration::from_millis(250)),
            polls: 9,
            poll_errors: Reasons::default(),
            elapsed: Duration::from_millis(100),
        })),
        ..report(2)
    }
}

#[test]
fn rates_are_counts_over_their_windows() {
    let json = report(2).to_json();
    assert_eq!(json["submit"]["accepted_per_s"], 4.0);
    assert_eq!(json["delivery"]["source"], "poll");
    assert_eq!(json["delivery"]["delivered_per_s"], 0.5);
    assert_eq!(json["delivery"]["window_s"], 4.0);
    assert_eq!(json["load"]["mode"], "closed");
    assert_eq!(json["concurrency"], 1);
    assert!(json["submit"]["send_lag_us"].is_null());
}

#[test]
fn a_run_is_complete_only_when_everything_was_delivered() {
    assert!(report(2).is_complete());
    assert!(!report(1).is_complete());
}

#[test]
fn sink_delivery_and_the_open_loop_are_in_the_json() {
    let json = sink_report(2, 0).to_json();
    assert_eq!(json["load"]["mode"], "open");
    assert_eq!(json["load"]["rate"], 1000.0);
    assert_eq!(json["load"]["max_in_flight"], 64);
    assert_eq!(json["load"]["latency_from"], "intended_send");
    assert!(json["concurrency"].is_null());
    assert_eq!(json["submit"]["latency_us"]["max"], 2_000);
    assert_eq!(json["submit"]["send_lag_us"]["max"], 20);
    let delivery = &json["delivery"];
    assert_eq!(delivery["source"], "sink");
    assert_eq!(delivery["sink"], "http://127.0.0.1:8025");
    assert_eq!(delivery["delivered"], 2);
    assert_eq!(delivery["duplicates"], 0);
    assert_eq!(delivery["unfinished"], 0);
    assert_eq!(delivery["delivered_per_s"], 8.0);
    assert_eq!(delivery["window_s"], 0.25);
    let text = sink_report(2, 0).to_text();
    assert!(text.contains("at 1000/s (open loop"), "{text}");
    assert!(text.contains("from each intended send time"), "{text}");
    assert!(text.contains("8.0/s over 0.250s"), "{text}");
}

#[test]
fn a_sink_run_is_complete_only_when_everything_arrived_exactly_once() {
    assert!(sink_report(2, 0).is_complete());
    assert!(!sink_report(1, 0).is_complete());
    assert!(!sink_report(2, 1).is_complete(), "a resend is not complete");
}
