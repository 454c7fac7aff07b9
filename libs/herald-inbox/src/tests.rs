//! Unit tests of the wire format and the channel names.

use uuid::Uuid;

use crate::signal::Signal;
use herald_redis::Keyspace;

#[test]
fn signals_round_trip_through_their_payload() {
    let id = Uuid::now_v7();
    for signal in [
        Signal::ItemAdded { item_id: id },
        Signal::ItemsRead { item_ids: vec![id] },
        Signal::AllRead,
        Signal::ItemsArchived { item_ids: vec![id] },
        Signal::Resync,
    ] {
        assert_eq!(
            Signal::from_payload(signal.to_payload().as_bytes()),
            Some(signal)
        );
    }
}

#[test]
fn the_payload_names_the_kind_and_ids_only() {
    let id = Uuid::nil();
    assert_eq!(
        Signal::ItemsRead { item_ids: vec![id] }.to_payload(),
        format!(r#"{{"kind":"items_read","item_ids":["{id}"]}}"#)
    );
    assert_eq!(Signal::AllRead.to_payload(), r#"{"kind":"all_read"}"#);
}

#[test]
fn unknown_payloads_are_ignored() {
    assert_eq!(Signal::from_payload(b"{\"kind\":\"exploded\"}"), None);
    assert_eq!(Signal::from_payload(b"not json"), None);
}

#[test]
fn channels_are_per_user_under_the_prefix_and_hide_the_user_id() {
    herald_test_support::TestCerts::get().install_keyring();
    let channel_name = |prefix: &str, user_id: &str| Keyspace::new(prefix).inbox_channel(user_id);
    let channel = channel_name("test:1", "user-1");
    assert!(channel.starts_with("test:1:inbox:"));
    assert!(!channel.contains("user-1"));
    assert_eq!(channel, channel_name("test:1", "user-1"));
    assert_ne!(channel, channel_name("test:1", "user-2"));
    assert_ne!(channel, channel_name("test:2", "user-1"));
}

#[test]
fn the_default_settings_are_valid_and_bad_ones_are_all_reported() {
    use herald_config::Validate;

    use crate::InboxSettings;

    let mut problems = Vec::new();
    InboxSettings::default().validate(&mut problems);
    assert!(problems.is_empty(), "{problems:?}");

    InboxSettings {
        subscribe_timeout: std::time::Duration::ZERO,
        reconnect_min: std::time::Duration::from_secs(10),
        reconnect_max: std::time::Duration::from_secs(1),
        stream_buffer: 0,
        ..InboxSettings::default()
    }
    .validate(&mut problems);
    assert_eq!(
        problems,
        [
            "inbox.subscribe_timeout must be positive",
            "inbox.reconnect_max must be at least inbox.reconnect_min",
            "inbox.stream_buffer must be at least 1",
        ]
    );
}
