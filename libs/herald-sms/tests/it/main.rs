//! Wire-level tests of the SMS channel against loopback Twilio and gateway peers.

mod channel;
mod failover;
mod gateway;
mod twilio;

use std::sync::Arc;
use std::time::Duration;

use herald_domain::{Channel, DeliveryId, NotificationId, Priority};
use herald_sms::{
    HttpGatewaySettings, SmsChannel, SmsProviderSettings, SmsSettings, TwilioSettings,
};
use herald_templates::{CompiledVersion, VersionContent};
use herald_test_support::{SmsGatewayServer, TwilioServer};
use herald_worker::{
    Attempted, BreakerSettings, ChannelProvider, DeliveryContext, DeliveryError, Receipt,
};
use serde_json::json;

const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
const AUTH_TOKEN: &str = "twilio-auth-token";
const GATEWAY_TOKEN: &str = "gateway-bearer-token";
const SENDER: &str = "+15005550006";
const RECIPIENT: &str = "+821012345678";

/// A delivery of `text` to `address` on its `cycle_attempt`.
fn context(address: Option<&str>, text: &str, cycle_attempt: u32) -> DeliveryContext {
    context_with(
        address,
        json!({ "sms": { "text": text } }),
        json!({}),
        cycle_attempt,
    )
}

fn context_with(
    address: Option<&str>,
    template_content: serde_json::Value,
    parameters: serde_json::Value,
    cycle_attempt: u32,
) -> DeliveryContext {
    DeliveryContext {
        delivery_id: DeliveryId::generate(),
        notification_id: NotificationId::generate(),
        channel: Channel::Sms,
        address: address.map(str::to_owned),
        user_id: Some("user-1".into()),
        priority: Priority::Normal,
        category: "transactional".into(),
        template_key: "order-shipped".into(),
        template: Arc::new(CompiledVersion::new(
            VersionContent::from_stored(template_content).expect("a valid template version"),
        )),
        locale: None,
        variant: None,
        parameters,
        attempt: cycle_attempt,
        cycle_attempt,
        device_tokens: Vec::new(),
        tracking_opt_out: false,
        takeover: false,
        pinned_provider: None,
    }
}

fn twilio(name: &str, server: &TwilioServer, auth_token: &str) -> SmsProviderSettings {
    SmsProviderSettings::Twilio(TwilioSettings {
        name: name.into(),
        base_url: server.base_url(),
        account_sid: ACCOUNT_SID.into(),
        auth_token: auth_token.into(),
        from: Some(SENDER.into()),
        messaging_service_sid: None,
        timeout: Duration::from_secs(5),
    })
}

fn gateway(name: &str, url: String, token: &str) -> SmsProviderSettings {
    SmsProviderSettings::HttpGateway(HttpGatewaySettings {
        name: name.into(),
        url,
        token: token.into(),
        from: "Herald".into(),
        timeout: Duration::from_secs(5),
    })
}

fn channel(providers: Vec<SmsProviderSettings>) -> SmsChannel {
    channel_with(providers, BreakerSettings::default(), 6)
}

fn channel_with(
    providers: Vec<SmsProviderSettings>,
    breaker: BreakerSettings,
    max_segments: u32,
) -> SmsChannel {
    herald_tls::install_crypto_provider();
    herald_test_support::init_test_tracing();
    let settings = SmsSettings {
        max_segments,
        breaker,
        providers,
    };
    let mut problems = Vec::new();
    herald_config::Validate::validate(&settings, &mut problems);
    assert!(problems.is_empty(), "test settings are valid: {problems:?}");
    SmsChannel::new(&settings).expect("an sms channel")
}

async fn twilio_server() -> TwilioServer {
    TwilioServer::start(ACCOUNT_SID, AUTH_TOKEN).await
}

async fn gateway_server() -> SmsGatewayServer {
    SmsGatewayServer::start(GATEWAY_TOKEN).await
}

/// Delivers and checks the provider used.
async fn deliver(channel: &SmsChannel, context: &DeliveryContext, provider: &str) -> Attempted {
    assert_eq!(channel.channel(), Channel::Sms);
    let attempted = channel.deliver(context).await;
    assert_eq!(attempted.provider, provider, "{attempted:?}");
    assert_no_personal_data(&attempted);
    attempted
}

/// Details and error texts are recorded and logged: no number, no body.
fn assert_no_personal_data(attempted: &Attempted) {
    let text = match &attempted.result {
        Ok(receipt) => receipt.detail.clone(),
        Err(DeliveryError::AddressInvalid { detail, .. }) => detail.clone(),
        Err(error) => error.to_string(),
    };
    for personal in [RECIPIENT, "821012345678", "Your order", "배송"] {
        assert!(!text.contains(personal), "{text:?} contains {personal:?}");
    }
}

fn expect_receipt(attempted: Attempted) -> Receipt {
    attempted
        .result
        .unwrap_or_else(|error| panic!("expected a delivery, got {error:?}"))
}

fn expect_retryable(attempted: Attempted) -> String {
    match attempted.result {
        Err(DeliveryError::Retryable(detail)) => detail,
        other => panic!("expected a retryable failure, got {other:?}"),
    }
}

fn expect_unknown(attempted: Attempted) -> String {
    match attempted.result {
        Err(DeliveryError::Unknown(detail)) => detail,
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
}

fn expect_permanent(attempted: Attempted) -> String {
    match attempted.result {
        Err(DeliveryError::Permanent(detail)) => detail,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

fn expect_address_invalid(attempted: Attempted) -> (Vec<String>, String) {
    match attempted.result {
        Err(DeliveryError::AddressInvalid { addresses, detail }) => (addresses, detail),
        other => panic!("expected an invalid address, got {other:?}"),
    }
}
