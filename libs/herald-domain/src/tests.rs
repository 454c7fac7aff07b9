//! Unit tests for the domain values.

use super::*;

fn check_email(input: &str, valid: bool) {
    assert_eq!(EmailAddress::parse(input).is_ok(), valid, "{input}");
}

#[test]
fn email_addresses_are_validated() {
    check_email("ada@example.com", true);
    check_email("a.b+tag@sub.example.co.kr", true);
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
