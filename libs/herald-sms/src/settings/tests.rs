//! Loading and validating `[sms]` through the real configuration loader.

use std::collections::HashMap;
use std::time::Duration;

use herald_config::{Sources, Validate};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{SmsProviderSettings, SmsSettings, TWILIO_BASE_URL};

#[derive(Debug, Deserialize)]
struct Wrapper {
    sms: SmsSettings,
}

impl Validate for Wrapper {
    fn validate(&self, problems: &mut Vec<String>) {
        self.sms.validate(problems);
    }
}

/// Loads `toml` as `base.toml` with an empty environment.
fn load(toml: &str) -> herald_config::Result<SmsSettings> {
    let dir = tempfile::tempdir().expect("a temporary config directory");
    std::fs::write(dir.path().join("base.toml"), toml).expect("writing base.toml");
    herald_config::load::<Wrapper>(&Sources {
        config_dir: Some(dir.path().to_owned()),
        environment: None,
        extra_dir: None,
        env_override: Some(HashMap::new()),
    })
    .map(|wrapper| wrapper.sms)
}

fn problems_of(toml: &str) -> Vec<String> {
    match load(toml) {
        Err(herald_config::Error::Invalid(problems)) => problems,
        other => panic!("expected validation problems, got {other:?}"),
    }
}

const FULL: &str = r#"
[sms]
max_segments = 4
breaker = { failure_threshold = 3, open_for = "10s" }

[[sms.providers]]
kind = "twilio"
name = "twilio"
base_url = "https://api.twilio.com"
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token = "twilio-secret"
from = "+15005550006"
timeout = "5s"

[[sms.providers]]
kind = "http_gateway"
name = "gateway"
url = "https://sms.example.com/v1/messages"
token = "gateway-secret"
from = "Herald"
"#;

#[test]
fn full_example_loads_with_providers_in_order() {
    let settings = load(FULL).expect("valid settings");
    assert_eq!(settings.max_segments, 4);
    assert_eq!(settings.breaker.failure_threshold, 3);
    assert_eq!(settings.breaker.open_for, Duration::from_secs(10));
    let names: Vec<&str> = settings.providers.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["twilio", "gateway"]);
    let SmsProviderSettings::Twilio(twilio) = &settings.providers[0] else {
        panic!("the first provider is twilio");
    };
    assert_eq!(twilio.account_sid, "AC0123456789abcdef0123456789abcdef");
    assert_eq!(twilio.auth_token.expose_secret(), "twilio-secret");
    assert_eq!(twilio.from.as_deref(), Some("+15005550006"));
    assert_eq!(twilio.messaging_service_sid, None);
    assert_eq!(twilio.timeout, Duration::from_secs(5));
    let SmsProviderSettings::HttpGateway(gateway) = &settings.providers[1] else {
        panic!("the second provider is the gateway");
    };
    assert_eq!(gateway.url, "https://sms.example.com/v1/messages");
    assert_eq!(gateway.token.expose_secret(), "gateway-secret");
    assert_eq!(gateway.from, "Herald");
    assert_eq!(gateway.timeout, Duration::from_secs(10));
}

#[test]
fn debug_output_hides_secrets() {
    let settings = load(FULL).expect("valid settings");
    let debug = format!("{settings:?}");
    assert!(!debug.contains("twilio-secret"), "{debug}");
    assert!(!debug.contains("gateway-secret"), "{debug}");
}

#[test]
fn twilio_defaults_to_the_public_api_and_a_ten_second_timeout() {
    let settings = load(
        r#"
        [[sms.providers]]
        kind = "twilio"
        name = "twilio"
        account_sid = "AC1"
        auth_token = "token"
        messaging_service_sid = "MG1"
        "#,
    )
    .expect("valid settings");
    let SmsProviderSettings::Twilio(twilio) = &settings.providers[0] else {
        panic!("a twilio provider");
    };
    assert_eq!(twilio.base_url, TWILIO_BASE_URL);
    assert_eq!(twilio.timeout, Duration::from_secs(10));
    assert_eq!(twilio.messaging_service_sid.as_deref(), Some("MG1"));
    assert_eq!(settings.max_segments, 6);
}

#[test]
fn default_settings_have_no_provider_and_say_so() {
    let settings = SmsSettings::default();
    assert_eq!(settings.max_segments, 6);
    assert!(settings.providers.is_empty());
    let mut problems = Vec::new();
    settings.validate(&mut problems);
    assert_eq!(problems, ["sms.providers must list at least one provider"]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let problems = problems_of(
        r#"
        [sms]
        max_segments = 0

        [[sms.providers]]
        kind = "twilio"
        name = "primary"
        base_url = "not a url"
        account_sid = ""
        auth_token = ""
        from = "+15005550006"
        messaging_service_sid = "MG1"
        timeout = "0s"

        [[sms.providers]]
        kind = "twilio"
        name = "second"
        base_url = "ftp://api.twilio.com"
        account_sid = "AC1"
        auth_token = "token"

        [[sms.providers]]
        kind = "http_gateway"
        name = "primary"
        url = "https://sms.example.com"
        token = ""
        from = ""
        "#,
    );
    let expected = [
        "sms.max_segments must be between 1 and 20",
        "sms.providers[0].base_url is not a URL: relative URL without a base",
        "sms.providers[0].account_sid is required",
        "sms.providers[0].auth_token is required",
        "sms.providers[0]: set only one of `from` and `messaging_service_sid`",
        "sms.providers[0].timeout must be more than zero",
        "sms.providers[1].base_url must be an http or https URL",
        "sms.providers[1]: `from` or `messaging_service_sid` is required",
        "sms.providers[2].name `primary` is used by another provider",
        "sms.providers[2].token is required",
        "sms.providers[2].from is required",
    ];
    assert_eq!(problems, expected);
}

#[test]
fn max_segments_above_twenty_is_rejected() {
    let problems = problems_of(
        r#"
        [sms]
        max_segments = 21
        [[sms.providers]]
        kind = "http_gateway"
        name = "gateway"
        url = "http://127.0.0.1:9/send"
        token = "token"
        from = "Herald"
        "#,
    );
    assert_eq!(problems, ["sms.max_segments must be between 1 and 20"]);
}

#[test]
fn an_unknown_kind_does_not_load() {
    let error = load(
        r#"
        [[sms.providers]]
        kind = "carrier_pigeon"
        name = "pigeon"
        "#,
    )
    .expect_err("unknown kind");
    assert!(error.to_string().contains("carrier_pigeon"), "{error}");
}

#[test]
fn an_unknown_provider_field_does_not_load() {
    let error = load(
        r#"
        [[sms.providers]]
        kind = "http_gateway"
        name = "gateway"
        url = "http://127.0.0.1:9/send"
        token = "token"
        from = "Herald"
        api_key = "typo"
        "#,
    )
    .expect_err("unknown field");
    assert!(error.to_string().contains("api_key"), "{error}");
}
