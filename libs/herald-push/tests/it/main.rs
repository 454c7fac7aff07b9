//! Wire-level tests of the push channel against loopback FCM and APNs peers that check
//! requests the way Google and Apple do.

mod apns;
mod channel;
mod fcm;

use std::sync::Arc;

use herald_domain::{Channel, DeliveryId, DeviceToken, NotificationId, Platform, Priority};
use herald_push::{ApnsSettings, FcmSettings, PushChannel, PushSettings};
use herald_templates::{CompiledVersion, VersionContent};
use herald_test_support::{ApnsServer, FcmServer};
use herald_worker::{Attempted, ChannelProvider, DeliveryContext};
use serde_json::{Value, json};

/// A push delivery to `devices` with the single-locale stored template shape; the push part's
/// data is `data` (values are templates over `{"order": "A-1"}`).
fn context(devices: Vec<DeviceToken>, data: Value, priority: Priority) -> DeliveryContext {
    DeliveryContext {
        delivery_id: DeliveryId::generate(),
        notification_id: NotificationId::generate(),
        channel: Channel::Push,
        address: None,
        user_id: Some("user-1".into()),
        priority,
        category: "orders".into(),
        template_key: "order-shipped".into(),
        template: Arc::new(CompiledVersion::new(
            VersionContent::from_stored(json!({"push": {
                "title": "Order {{order}} shipped",
                "body": "It arrives on Tuesday",
                "data": data,
            }}))
            .expect("a valid template version"),
        )),
        locale: None,
        variant: None,
        parameters: json!({"order": "A-1"}),
        attempt: 1,
        cycle_attempt: 1,
        device_tokens: devices,
        tracking_opt_out: false,
        takeover: false,
        pinned_provider: None,
    }
}

fn device(platform: Platform, token: &str) -> DeviceToken {
    DeviceToken {
        token: token.to_owned(),
        platform,
    }
}

fn fcm_settings(server: &FcmServer) -> FcmSettings {
    FcmSettings {
        service_account_file: server.service_account_file().to_owned(),
        base_url: server.base_url(),
        ..FcmSettings::default()
    }
}

fn apns_settings(server: &ApnsServer) -> ApnsSettings {
    ApnsSettings {
        key_file: server.key_file(),
        key_id: server.key_id().to_owned(),
        team_id: server.team_id().to_owned(),
        topic: server.topic().to_owned(),
        base_url: server.base_url(),
        ca_file: server.ca_file(),
        ..ApnsSettings::default()
    }
}

/// The channel with the given peers as its providers.
fn channel(fcm: Option<&FcmServer>, apns: Option<&ApnsServer>) -> PushChannel {
    herald_tls::install_crypto_provider();
    herald_test_support::init_test_tracing();
    PushChannel::from_settings(&PushSettings {
        fcm: fcm.map(fcm_settings),
        apns: apns.map(apns_settings),
        ..PushSettings::default()
    })
    .expect("a push channel")
}

async fn deliver(channel: &PushChannel, context: &DeliveryContext) -> Attempted {
    channel.deliver(context).await
}
