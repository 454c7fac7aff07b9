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
    counters.record(Some(b"<a>"));
    counters.record(Some(b"<b>"));
    counters.record(Some(b"<a>"));
    counters.record(None);
    let expected = Stats {
        messages: 4,
        distinct: 2,
        duplicates: 1,
        without_message_id: 1,
    };
    assert_eq!(counters.snapshot(), expected);
    assert_eq!(counters.reset(), expected);
    assert_eq!(counters.snapshot(), Stats::default());
    counters.record(Some(b"<a>"));
    assert_eq!(counters.snapshot().duplicates, 0, "a reset forgets the ids");
}
