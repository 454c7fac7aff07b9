//! Unit tests of the ack plan: a multiple ack only where it acknowledges exactly the messages
//! being acked.

use super::{AckFrame, AckLedger};

fn ledger(tags: std::ops::RangeInclusive<u64>) -> AckLedger {
    let mut ledger = AckLedger::default();
    for tag in tags {
        ledger.received(tag);
    }
    ledger
}

fn single(tag: u64) -> AckFrame {
    AckFrame {
        tag,
        multiple: false,
        covers: 1,
    }
}

#[test]
fn a_run_from_the_oldest_unsettled_tag_is_one_multiple_ack() {
    let mut ledger = ledger(1..=10);

    assert_eq!(
        ledger.plan_acks(&[3, 1, 2, 4]),
        [AckFrame {
            tag: 4,
            multiple: true,
            covers: 4
        }]
    );
    assert_eq!(
        ledger.plan_acks(&[5]),
        [single(5)],
        "one message is a plain ack"
    );
}

#[test]
fn tags_above_one_still_unsettled_are_acked_one_by_one() {
    let mut ledger = ledger(1..=6);

    // 3 is still waiting (for its claim, its provider or a requeue).
    assert_eq!(
        ledger.plan_acks(&[1, 2, 4, 6]),
        [
            AckFrame {
                tag: 2,
                multiple: true,
                covers: 2
            },
            single(4),
            single(6)
        ]
    );
    // Once 3 is acked, nothing below 5 is left, so 3 alone is acked.
    assert_eq!(ledger.plan_acks(&[3]), [single(3)]);
    assert_eq!(ledger.plan_acks(&[5]), [single(5)]);
}

#[test]
fn tags_settled_on_their_own_do_not_stop_a_multiple_ack() {
    let mut ledger = ledger(1..=5);
    ledger.settled(2);
    ledger.settled(4);

    assert_eq!(
        ledger.plan_acks(&[1, 3, 5]),
        [AckFrame {
            tag: 5,
            multiple: true,
            covers: 3
        }]
    );
}

#[test]
fn a_tag_is_never_acked_twice() {
    let mut ledger = ledger(1..=3);
    assert_eq!(
        ledger.plan_acks(&[1, 2]),
        [AckFrame {
            tag: 2,
            multiple: true,
            covers: 2
        }]
    );

    assert_eq!(ledger.plan_acks(&[2, 1]), [], "already acked");
    assert_eq!(ledger.plan_acks(&[3, 3]), [single(3)]);
}

#[test]
fn later_deliveries_do_not_change_the_plan_below_them() {
    let mut ledger = ledger(1..=2);
    ledger.received(3);
    ledger.received(4);

    assert_eq!(
        ledger.plan_acks(&[1, 2]),
        [AckFrame {
            tag: 2,
            multiple: true,
            covers: 2
        }]
    );
}
