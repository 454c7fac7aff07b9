//! Unit tests for the domain values.

use super::*;

fn check_email(input: &str, valid: bool) {
    assert_eq!(EmailAddress::parse(input).is_ok(), valid, "{input}");
}

#[test]
fn email_addresses_are_validated() {
    check_email("ada@example.com", true);
    check_email("a.b+tag@sub.example.co.kr", true);
    check_email("\"a\u{1}b\"@example.com", false);
    check_email("\"a\tb\"@example.com", false);
    check_email("not-an-address", false);
    check_email("", false);
    check_email(&format!("{}@example.com", "a".repeat(250)), false);
}

#[test]
fn email_address_debug_output_is_redacted() {
    let address = EmailAddress::parse("ada@example.com").unwrap();
    assert!(!format!("{address:?}").contains("ada"));
}

#[test]
fn template_keys_accept_slugs_only() {
    assert!(TemplateKey::parse("order-shipped").is_ok());
    assert!(TemplateKey::parse("welcome.v2_b").is_ok());
    assert!(TemplateKey::parse("Welcome").is_err());
    assert!(TemplateKey::parse("-lead").is_err());
    assert!(TemplateKey::parse("").is_err());
    assert!(TemplateKey::parse(&"a".repeat(65)).is_err());
}

#[test]
fn idempotency_keys_are_printable_ascii() {
    assert!(IdempotencyKey::parse("order-42:shipped").is_ok());
    assert!(IdempotencyKey::parse("has space").is_err());
    assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
}

#[test]
fn state_names_round_trip() {
    for state in DeliveryState::ALL {
        assert_eq!(state.as_str().parse::<DeliveryState>(), Ok(state));
    }
}

#[test]
fn state_machine_allows_only_forward_moves() {
    assert!(DeliveryState::Queued.can_become(DeliveryState::Sending));
    assert!(DeliveryState::Sending.can_become(DeliveryState::Delivered));
    assert!(!DeliveryState::Delivered.can_become(DeliveryState::Sending));
    assert!(!DeliveryState::Failed.can_become(DeliveryState::Queued));
    assert!(DeliveryState::Failed.can_become(DeliveryState::Pending));
    assert!(!DeliveryState::Delivered.can_become(DeliveryState::Pending));
    let self_loops: Vec<_> = DeliveryState::ALL
        .into_iter()
        .filter(|state| state.can_become(*state))
        .collect();
    assert_eq!(
        self_loops,
        [DeliveryState::Sending],
        "only a lease takeover stays in place"
    );
}

#[test]
fn priorities_map_to_increasing_amqp_priorities() {
    let numbers: Vec<u8> = Priority::ALL.iter().map(|p| p.amqp_priority()).collect();
    assert!(numbers.windows(2).all(|pair| pair[0] < pair[1]));
    assert_eq!(Priority::Critical.amqp_priority(), Priority::MAX_AMQP);
    for priority in Priority::ALL {
        assert_eq!(Priority::from_i16(priority.as_i16()), Ok(priority));
    }
}

fn quiet_hours(start: &str, end: &str, days: &str) -> QuietHours {
    let days = days
        .split(',')
        .filter(|day| !day.is_empty())
        .map(|day| parse_weekday(day).unwrap())
        .collect();
    QuietHours::new(
        parse_time_of_day(start).unwrap(),
        parse_time_of_day(end).unwrap(),
        days,
    )
    .unwrap()
}

const LOCAL_FORMAT: &str = "%Y-%m-%dT%H:%M%:z";

/// `window` is `(start, end, days)`; `local_now` and `expected_local_end` are local times
/// with their UTC offset (`2026-03-08T03:00-04:00`) so ambiguous readings are spelled out.
fn check(
    window: (&str, &str, &str),
    zone: &str,
    local_now: &str,
    expected_local_end: Option<&str>,
) {
    let quiet_hours = quiet_hours(window.0, window.1, window.2);
    let time_zone = TimeZone::parse(zone).unwrap();
    let now = chrono::DateTime::parse_from_str(local_now, LOCAL_FORMAT).unwrap();
    let local_format = |instant: chrono::DateTime<chrono::Utc>| {
        instant
            .with_timezone(&time_zone.tz())
            .format(LOCAL_FORMAT)
            .to_string()
    };
    let now = now.with_timezone(&chrono::Utc);
    assert_eq!(
        local_format(now),
        local_now,
        "test input has the wrong offset for {zone}"
    );
    let actual = quiet_hours.quiet_until(&time_zone, now).map(local_format);
    assert_eq!(
        actual.as_deref(),
        expected_local_end,
        "{window:?} in {zone} at {local_now}"
    );
}

#[test]
fn quiet_until_returns_the_end_of_the_window_containing_now() {
    let overnight = ("22:00", "08:00", "");
    let seoul = "Asia/Seoul";
    check(
        overnight,
        seoul,
        "2026-05-14T02:00+09:00",
        Some("2026-05-14T08:00+09:00"),
    );
    check(overnight, seoul, "2026-05-13T21:59+09:00", None);
    check(
        overnight,
        seoul,
        "2026-05-13T22:00+09:00",
        Some("2026-05-14T08:00+09:00"),
    );
    check(
        overnight,
        seoul,
        "2026-05-14T07:59+09:00",
        Some("2026-05-14T08:00+09:00"),
    );
    check(overnight, seoul, "2026-05-14T08:00+09:00", None);
    check(
        overnight,
        seoul,
        "2026-12-31T23:30+09:00",
        Some("2027-01-01T08:00+09:00"),
    );

    let lunch = ("13:00", "14:00", "");
    check(lunch, seoul, "2026-05-14T12:59+09:00", None);
    check(
        lunch,
        seoul,
        "2026-05-14T13:00+09:00",
        Some("2026-05-14T14:00+09:00"),
    );
    check(
        lunch,
        seoul,
        "2026-05-14T13:59+09:00",
        Some("2026-05-14T14:00+09:00"),
    );
    check(lunch, seoul, "2026-05-14T14:00+09:00", None);
    check(lunch, seoul, "2026-05-14T02:00+09:00", None);
}

#[test]
fn quiet_until_applies_the_day_filter_to_the_day_a_window_starts() {
    let weeknights = ("22:00", "08:00", "mon,tue,wed,thu,fri");
    let seoul = "Asia/Seoul";
    // 2026-03-06 is a Friday.
    check(
        weeknights,
        seoul,
        "2026-03-06T23:00+09:00",
        Some("2026-03-07T08:00+09:00"),
    );
    check(
        weeknights,
        seoul,
        "2026-03-07T03:00+09:00",
        Some("2026-03-07T08:00+09:00"),
    );
    check(weeknights, seoul, "2026-03-07T23:00+09:00", None);
    check(weeknights, seoul, "2026-03-08T03:00+09:00", None);
    check(
        weeknights,
        seoul,
        "2026-03-09T23:00+09:00",
        Some("2026-03-10T08:00+09:00"),
    );
    // Monday morning belongs to Sunday night's window, which is filtered out.
    check(weeknights, seoul, "2026-03-08T23:00+09:00", None);
    check(weeknights, seoul, "2026-03-09T03:00+09:00", None);

    let weekend_afternoons = ("13:00", "17:00", "SAT,Sunday");
    check(
        weekend_afternoons,
        seoul,
        "2026-03-07T14:00+09:00",
        Some("2026-03-07T17:00+09:00"),
    );
    check(weekend_afternoons, seoul, "2026-03-06T14:00+09:00", None);
}

#[test]
fn quiet_until_moves_an_end_in_a_spring_forward_gap_to_the_end_of_the_gap() {
    let new_york = "America/New_York";
    // On 2026-03-08 clocks jump from 02:00 EST to 03:00 EDT, so 02:30 never happens.
    let into_gap = ("22:00", "02:30", "");
    check(
        into_gap,
        new_york,
        "2026-03-08T01:00-05:00",
        Some("2026-03-08T03:00-04:00"),
    );
    check(
        into_gap,
        new_york,
        "2026-03-08T01:59-05:00",
        Some("2026-03-08T03:00-04:00"),
    );
    check(into_gap, new_york, "2026-03-08T03:00-04:00", None);
    check(
        into_gap,
        new_york,
        "2026-03-07T01:00-05:00",
        Some("2026-03-07T02:30-05:00"),
    );
    // A window that spans the gap is an hour shorter.
    let overnight = ("22:00", "07:00", "");
    check(
        overnight,
        new_york,
        "2026-03-08T03:30-04:00",
        Some("2026-03-08T07:00-04:00"),
    );
    // A window that lies entirely in the gap does not happen that day.
    let inside_gap = ("02:10", "02:50", "");
    check(inside_gap, new_york, "2026-03-08T03:00-04:00", None);
    check(
        inside_gap,
        new_york,
        "2026-03-09T02:20-04:00",
        Some("2026-03-09T02:50-04:00"),
    );
}

#[test]
fn quiet_until_uses_the_earlier_instant_for_an_ambiguous_end() {
    let new_york = "America/New_York";
    // On 2026-11-01 clocks fall back from 02:00 EDT to 01:00 EST, so 01:30 happens twice.
    let into_overlap = ("22:00", "01:30", "");
    check(
        into_overlap,
        new_york,
        "2026-11-01T01:10-04:00",
        Some("2026-11-01T01:30-04:00"),
    );
    check(into_overlap, new_york, "2026-11-01T01:45-04:00", None);
    check(into_overlap, new_york, "2026-11-01T01:10-05:00", None);
    // A window that spans the overlap is an hour longer.
    let overnight = ("22:00", "07:00", "");
    check(
        overnight,
        new_york,
        "2026-11-01T01:30-05:00",
        Some("2026-11-01T07:00-05:00"),
    );
    // An ambiguous start also uses the earlier instant, so the repeated hour stays quiet.
    let from_overlap = ("01:30", "02:30", "");
    check(
        from_overlap,
        new_york,
        "2026-11-01T01:30-04:00",
        Some("2026-11-01T02:30-05:00"),
    );
    check(
        from_overlap,
        new_york,
        "2026-11-01T01:15-05:00",
        Some("2026-11-01T02:30-05:00"),
    );
}

#[test]
fn quiet_until_follows_london_across_the_last_sundays_of_march_and_october() {
    let london = "Europe/London";
    // 2026-03-29: 01:00 GMT jumps to 02:00 BST.
    let into_gap = ("23:00", "01:30", "");
    check(
        into_gap,
        london,
        "2026-03-29T00:45+00:00",
        Some("2026-03-29T02:00+01:00"),
    );
    check(into_gap, london, "2026-03-29T02:00+01:00", None);
    let overnight = ("22:00", "07:00", "sat");
    check(
        overnight,
        london,
        "2026-03-28T22:00+00:00",
        Some("2026-03-29T07:00+01:00"),
    );
    check(
        overnight,
        london,
        "2026-03-29T06:30+01:00",
        Some("2026-03-29T07:00+01:00"),
    );
    // 2026-10-25: 02:00 BST falls back to 01:00 GMT.
    check(
        into_gap,
        london,
        "2026-10-25T00:59+01:00",
        Some("2026-10-25T01:30+01:00"),
    );
    check(into_gap, london, "2026-10-25T01:15+00:00", None);
    check(
        overnight,
        london,
        "2026-10-25T01:30+00:00",
        Some("2026-10-25T07:00+00:00"),
    );
    check(
        overnight,
        london,
        "2026-10-24T22:00+01:00",
        Some("2026-10-25T07:00+00:00"),
    );
}

fn naively_inside(quiet_hours: &QuietHours, local: chrono::NaiveDateTime) -> bool {
    use chrono::Datelike as _;
    let (date, time) = (local.date(), local.time());
    let yesterday = date.pred_opt().unwrap();
    if quiet_hours.spans_midnight() {
        (time >= quiet_hours.start() && quiet_hours.starts_on(date.weekday()))
            || (time < quiet_hours.end() && quiet_hours.starts_on(yesterday.weekday()))
    } else {
        quiet_hours.start() <= time
            && time < quiet_hours.end()
            && quiet_hours.starts_on(date.weekday())
    }
}

#[test]
fn quiet_until_holds_its_invariants_every_fifteen_minutes_for_a_year() {
    use chrono::TimeZone as _;
    let windows = [
        quiet_hours("22:00", "07:00", "mon,tue,wed,thu,fri"),
        quiet_hours("13:00", "14:00", ""),
        quiet_hours("01:30", "02:30", ""),
        quiet_hours("23:00", "01:30", "sat,sun"),
        quiet_hours("00:00", "23:45", "wed"),
    ];
    for zone in ["Asia/Seoul", "America/New_York"] {
        let time_zone = TimeZone::parse(zone).unwrap();
        let tz = time_zone.tz();
        let mut now = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let stop = chrono::Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
        while now < stop {
            let local = now.with_timezone(&tz).naive_local();
            // The local reading is one of two; a naive local comparison cannot tell them apart.
            let ambiguous = tz.from_local_datetime(&local).single().is_none();
            for quiet_hours in &windows {
                let context = format!("{quiet_hours:?} in {zone} at {now} ({local})");
                match quiet_hours.quiet_until(&time_zone, now) {
                    Some(end) => {
                        assert!(end > now, "{context}");
                        assert!(end - now <= chrono::Duration::hours(25), "{context}");
                        if let Some(next_end) = quiet_hours.quiet_until(&time_zone, end) {
                            assert!(next_end > end, "{context}: same window at its own end");
                        }
                        assert!(ambiguous || naively_inside(quiet_hours, local), "{context}");
                    }
                    None => {
                        assert!(
                            ambiguous || !naively_inside(quiet_hours, local),
                            "{context}"
                        );
                    }
                }
            }
            now += chrono::Duration::minutes(15);
        }
    }
}

#[test]
fn quiet_hours_print_in_the_form_they_parse_from() {
    let quiet = quiet_hours("22:05", "07:00", "SUNDAY,fri,Mon");
    assert_eq!(quiet.start_text(), "22:05");
    assert_eq!(quiet.end_text(), "07:00");
    assert_eq!(quiet.day_names(), ["mon", "fri", "sun"]);
    let again = quiet_hours(
        &quiet.start_text(),
        &quiet.end_text(),
        &quiet.day_names().join(","),
    );
    assert_eq!(again, quiet);
}

#[test]
fn quiet_hours_reject_an_empty_window() {
    let time = parse_time_of_day("22:00").unwrap();
    assert_eq!(
        QuietHours::new(time, time, chrono::WeekdaySet::EMPTY),
        Err(ValueError::new("start and end must differ"))
    );
}

#[test]
fn times_of_day_must_be_hh_mm() {
    assert_eq!(
        parse_time_of_day("07:05"),
        Ok(chrono::NaiveTime::from_hms_opt(7, 5, 0).unwrap())
    );
    assert!(parse_time_of_day("23:59").is_ok());
    for bad in [
        "24:00", "7:05", "07:60", "07:05:00", "0705", "", "ab:cd", "+1:00",
    ] {
        assert_eq!(
            parse_time_of_day(bad),
            Err(ValueError::new(
                "must be a time of day in HH:MM form such as 22:00"
            )),
            "{bad}"
        );
    }
}

#[test]
fn weekdays_parse_case_insensitively() {
    assert_eq!(parse_weekday("mon"), Ok(chrono::Weekday::Mon));
    assert_eq!(parse_weekday("SUN"), Ok(chrono::Weekday::Sun));
    assert_eq!(parse_weekday("Friday"), Ok(chrono::Weekday::Fri));
    assert_eq!(
        parse_weekday("funday"),
        Err(ValueError::new("must be a weekday such as mon"))
    );
}

#[test]
fn time_zones_must_be_iana_names() {
    let seoul = TimeZone::parse("Asia/Seoul").unwrap();
    assert_eq!(seoul.to_string(), "Asia/Seoul");
    assert_eq!(seoul.as_ref(), "Asia/Seoul");
    for bad in ["KST", "asia/seoul", "", "Mars/Olympus"] {
        assert_eq!(
            TimeZone::parse(bad),
            Err(ValueError::new(
                "must be an IANA time zone such as Asia/Seoul"
            )),
            "{bad}"
        );
    }
}

#[test]
fn manual_clock_moves_only_when_told() {
    use chrono::TimeZone as _;
    let start = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let manual_clock = std::sync::Arc::new(ManualClock::new(start));
    let shared_clock: SharedClock = manual_clock.clone();
    assert_eq!(shared_clock.now(), start);
    manual_clock.advance(chrono::Duration::minutes(90));
    assert_eq!(shared_clock.now(), start + chrono::Duration::minutes(90));
    manual_clock.set(start);
    assert_eq!(shared_clock.now(), start);
    let system_clock: SharedClock = std::sync::Arc::new(SystemClock);
    assert!(system_clock.now() > start);
}

#[test]
fn phone_numbers_are_e164() {
    for valid in [
        "+15005550006",
        "+821012345678",
        "+12345678",
        "+123456789012345",
    ] {
        assert!(crate::PhoneNumber::parse(valid).is_ok(), "{valid}");
    }
    for invalid in [
        "",
        "+",
        "15005550006",
        "+1234567",
        "+1234567890123456",
        "+1 500 555 0006",
        "+01234567890",
        "+1500555000\u{ff16}",
        "tel:+15005550006",
    ] {
        assert!(crate::PhoneNumber::parse(invalid).is_err(), "{invalid}");
    }
    assert_eq!(
        format!("{:?}", crate::PhoneNumber::parse("+821012345678").unwrap()),
        "PhoneNumber(<redacted>)"
    );
}

#[test]
fn permissions_parse_by_name_and_roles_stand_for_fixed_sets() {
    use crate::{Permission, Role};
    for permission in Permission::ALL {
        assert_eq!(permission.as_str().parse::<Permission>(), Ok(permission));
    }
    let error = "contacts.delete".parse::<Permission>().unwrap_err();
    assert!(
        error.0.starts_with(
            "unknown permission `contacts.delete` (expected one of notifications.submit, "
        ),
        "{error}"
    );
    assert_eq!(Role::Admin.permissions(), Permission::ALL);
    let submit = Role::Submit.permissions();
    assert!(submit.contains(&Permission::NotificationsSubmit));
    assert!(
        !submit.contains(&Permission::ContactsRead) && !submit.contains(&Permission::ContactsWrite),
        "a service that may submit must not see or redirect users' contact points"
    );
}

#[test]
fn control_characters_are_refused_by_rule_and_named_with_their_position() {
    use crate::{Controls, check_controls};
    assert_eq!(check_controls("ada", Controls::Refused), Ok(()));
    assert_eq!(
        check_controls("a\tb", Controls::Refused).map_err(|error| error.to_string()),
        Err("must not contain control characters (found U+0009 at character 1)".into())
    );
    assert_eq!(
        check_controls("line\r\n\tnext", Controls::TabsAndLineBreaks),
        Ok(())
    );
    assert_eq!(
        check_controls("x\u{0}\u{85}", Controls::TabsAndLineBreaks).map_err(|error| error.to_string()),
        Err(
            "must not contain control characters other than tab, line feed and carriage return (found U+0000 at character 1)"
                .into()
        )
    );
    assert!(check_controls("ok\u{85}", Controls::Refused).is_err());
}
