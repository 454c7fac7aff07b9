//! Unit tests for the retry schedule.

use std::time::Duration;

use super::WorkerSettings;

fn settings(delays: &[u64]) -> WorkerSettings {
    WorkerSettings {
        retry_delays: delays.iter().map(|ms| Duration::from_millis(*ms)).collect(),
        ..WorkerSettings::default()
    }
}

#[test]
fn every_retry_delay_has_a_declared_queue() {
    let settings = settings(&[1000, 5000]);
    let queues = settings.retry_queue_delays();
    assert_eq!(queues.len(), 6);
    for attempt in 1..=10 {
        let delay = settings.retry_delay(attempt);
        assert!(queues.contains(&delay), "{delay:?} has no queue");
    }
}

#[test]
fn delays_grow_by_tier_and_stay_within_their_jitter_lanes() {
    let settings = settings(&[1000, 5000]);
    for _ in 0..50 {
        let first = settings.retry_delay(1).as_millis();
        let later = settings.retry_delay(7).as_millis();
        assert!((800..=1200).contains(&first), "{first}");
        assert!(
            (4000..=6000).contains(&later),
            "the last tier repeats: {later}"
        );
    }
}

#[test]
fn debug_output_of_an_invalid_address_leaves_the_address_out() {
    let error = crate::DeliveryError::AddressInvalid {
        addresses: vec!["+821012345678".into()],
        detail: "twilio 21614".into(),
    };
    let printed = format!("{error:?}");
    assert!(!printed.contains("+8210"), "{printed}");
    assert!(printed.contains("twilio 21614"), "{printed}");
}

#[test]
fn debug_output_of_a_delivery_context_leaves_out_personal_data() {
    use std::sync::Arc;

    use herald_db::deliveries::ClaimedDelivery;
    use herald_domain::{Channel, DeliveryId, DeviceToken, NotificationId, Platform, Priority};
    use herald_templates::{CompiledVersion, VersionContent};

    let content = VersionContent::from_stored(serde_json::json!({
        "email": {"subject": "Hi {{name}}", "html": "", "text": "Hi"}
    }))
    .unwrap();
    let mut context = crate::DeliveryContext::claimed(
        ClaimedDelivery {
            delivery_id: DeliveryId::generate(),
            notification_id: NotificationId::generate(),
            channel: Channel::Email,
            address: Some("ada@example.com".into()),
            user_id: Some("user-7".into()),
            priority: Priority::Normal,
            category: "orders".into(),
            template_key: "welcome".into(),
            locale: Some("ko-KR".into()),
            variant: None,
            parameters: serde_json::json!({"name": "Ada Lovelace"}).into(),
            attempt: 1,
            cycle_attempt: 1,
            takeover: false,
            pinned_provider: None,
        },
        Arc::new(CompiledVersion::new(content)),
    );
    context.device_tokens.push(DeviceToken {
        token: "device-token-secret".into(),
        platform: Platform::Ios,
    });
    let shown = format!("{context:?}");
    assert!(
        shown.contains("welcome") && shown.contains("ko-KR"),
        "{shown}"
    );
    for personal in ["ada@example.com", "Ada Lovelace", "device-token-secret"] {
        assert!(!shown.contains(personal), "{personal} in {shown}");
    }
}
