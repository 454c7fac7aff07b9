//! Unit tests of the header scan and the counters.

use super::*;

fn check(message: &str, expected: Option<&str>) {
    assert_eq!(
        message_id(message.as_bytes()).as_deref(),
        expected.map(str::as_bytes),
        "message: {message:?}"
    );
}

#[test]
fn the_message_id_is_read_from_the_header_section_only() {
    check(
        "From: a@example.com\r\nMessage-ID: <1@herald>\r\n\r\nbody\r\n",
        Some("<1@herald>"),
    );
    check("message-id:<2@herald>\r\n\r\n", Some("<2@herald>"));
    check("MESSAGE-ID :  <3@herald>  \n\n", Some("<3@herald>"));
    check(
        "Subject: x\r\n\r\nMessage-ID: <in-the-body@herald>\r\n",
        None,
    );
    check("Subject: x\r\n\r\n", None);
    check("Message-ID:   \r\n\r\n", None);
    check("X-Message-ID: <other@herald>\r\n\r\n", None);
}

#[test]
fn a_folded_message_id_is_unfolded_and_the_first_one_wins() {
    check(
        "Message-ID:\r\n <4@herald>\r\nMessage-ID: <5@herald>\r\n\r\n",
        Some("<4@herald>"),
    );
}

#[test]
fn a_message_without_a_blank_line_is_all_header() {
    check("Message-ID: <6@herald>", Some("<6@herald>"));
}

#[test]
fn counters_tell_distinct_ids_from_duplicates_and_reset() {
    let counters = Counters::default();
    let now = SystemTime::now();
    counters.record(Some(b"<a>"), now);
    counters.record(Some(b"<b>"), now);
    counters.record(Some(b"<a>"), now);
    counters.record(None, now);
    let expected = Stats {
        messages: 4,
        distinct: 2,
        duplicates: 1,
        without_message_id: 1,
    };
    assert_eq!(counters.snapshot(), expected);
    assert_eq!(counters.reset(), expected);
    assert_eq!(counters.snapshot(), Stats::default());
    counters.record(Some(b"<a>"), now);
    assert_eq!(counters.snapshot().duplicates, 0, "a reset forgets the ids");
}

fn at_unix_ms(milliseconds: u64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_millis(milliseconds)
}

#[test]
fn the_first_arrival_of_an_id_is_kept_and_later_copies_are_counted() {
    let counters = Counters::default();
    counters.record(Some(b"<a@herald>"), at_unix_ms(1_700_000_000_123));
    counters.record(Some(b"<b@herald>"), at_unix_ms(1_700_000_000_200));
    counters.record(Some(b"<a@herald>"), at_unix_ms(1_700_000_000_999));
    assert_eq!(
        counters.arrival("<a@herald>"),
        Some(MessageArrival {
            message_id: "<a@herald>".to_owned(),
            arrived_at_unix_ms: 1_700_000_000_123,
            copies: 2,
        })
    );
    assert_eq!(
        counters.arrival("<b@herald>").map(|arrival| arrival.copies),
        Some(1)
    );
    assert_eq!(counters.arrival("a@herald"), None, "ids match exactly");
    assert_eq!(counters.arrival("<c@herald>"), None);
    counters.reset();
    assert_eq!(
        counters.arrival("<a@herald>"),
        None,
        "a reset forgets arrivals"
    );
}

#[test]
fn a_clock_before_1970_gives_zero_instead_of_failing() {
    assert_eq!(unix_ms(UNIX_EPOCH - std::time::Duration::from_secs(1)), 0);
    assert_eq!(unix_ms(at_unix_ms(42)), 42);
}
