//! `config/base.toml` loads into every service's settings, and the environment wins.

use std::collections::HashMap;
use std::path::PathBuf;

use herald_config::Sources;
use herald_test_support::TestCerts;
use secrecy::ExposeSecret;

fn sources(env: &[(&str, String)]) -> Sources {
    let certs = TestCerts::get();
    let mut variables: HashMap<String, String> = [
        ("HERALD__TLS__CLIENT_CA", certs.path("ca.pem")),
        ("HERALD__TLS__CERT", certs.path("api-server.pem")),
        ("HERALD__TLS__KEY", certs.path("api-server.key")),
        ("HERALD__TLS__CRLS", certs.path("ca.crl.pem")),
    ]
    .into_iter()
    .map(|(key, path)| (key.to_owned(), path.display().to_string()))
    .collect();
    variables.extend(
        env.iter()
            .map(|(key, value)| ((*key).to_owned(), value.clone())),
    );
    Sources {
        config_dir: Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config"
        ))),
        environment: None,
        extra_dir: None,
        env_override: Some(variables),
    }
}

#[test]
fn base_toml_is_valid_for_every_service() {
    let api: herald_api_server::Settings = herald_config::load(&sources(&[])).unwrap();
    assert_eq!(api.auth.principals.len(), 2);
    // A list from the environment, comma-separated.
    assert_eq!(api.tls.crls, vec![TestCerts::get().path("ca.crl.pem")]);
    assert_eq!(api.redis.key_prefix, "herald");
    let relay: herald_relay::Settings = herald_config::load(&sources(&[])).unwrap();
    assert_eq!(relay.relay.batch_size, 500);
    assert_eq!(relay.relay.publishers, 2);
    assert_eq!(
        relay.retention.personal_data_after,
        std::time::Duration::from_secs(30 * 86_400)
    );
    let retention_off: herald_relay::Settings = herald_config::load(&sources(&[(
        "HERALD__RETENTION__PERSONAL_DATA_AFTER",
        "0s".to_owned(),
    )]))
    .unwrap();
    assert!(relay.retention.enabled() && !retention_off.retention.enabled());
    assert_eq!(api.submit.writers, 3);
    assert_eq!(api.submit.quota_window, std::time::Duration::from_secs(60));
    let worker: herald_channel_worker::Settings = herald_config::load(&sources(&[])).unwrap();
    assert_eq!(worker.smtp.port, 2525);
    let tracker: herald_tracker::Settings = herald_config::load(&sources(&[(
        "HERALD__TRACKING__SECRET",
        "a-tracking-secret-of-at-least-32-bytes".to_owned(),
    )]))
    .unwrap();
    assert_eq!(
        tracker.tracking.link_ttl,
        std::time::Duration::from_secs(90 * 86_400)
    );
    assert!(!worker.tracking.enabled);
    let sentinel: herald_sentinel::Settings = herald_config::load(&sources(&[])).unwrap();
    assert_eq!(
        sentinel.alerts.sla.critical,
        std::time::Duration::from_secs(60)
    );
}

#[test]
fn a_channel_worker_needs_its_own_channel_configured_and_only_that() {
    use herald_channel_worker::WorkerChannel;
    let worker: herald_channel_worker::Settings = herald_config::load(&sources(&[])).unwrap();
    assert_eq!(worker.sms.max_segments, 6);
    for (channel, section) in [
        (WorkerChannel::Sms, "sms.providers"),
        (WorkerChannel::Push, "push"),
        (WorkerChannel::Chat, "chat.destinations"),
    ] {
        let problems = worker.channel_problems(channel);
        assert!(
            problems.iter().any(|problem| problem.contains(section)),
            "{channel:?}: {problems:?}"
        );
    }

    let chat: herald_channel_worker::Settings = herald_config::load(&sources(&[
        ("HERALD__CHAT__DESTINATIONS__OPS__KIND", "slack".into()),
        (
            "HERALD__CHAT__DESTINATIONS__OPS__URL",
            "https://hooks.slack.com/services/T0/B0/X".into(),
        ),
    ]))
    .unwrap();
    assert_eq!(
        chat.channel_problems(WorkerChannel::Chat),
        Vec::<String>::new()
    );
    assert!(!chat.channel_problems(WorkerChannel::Sms).is_empty());
}

#[test]
fn a_channel_worker_refuses_a_lease_that_does_not_outlast_its_provider_calls() {
    use herald_channel_worker::WorkerChannel;
    // smtp.timeout is 10s in base.toml, and an email attempt has three timed stages.
    let short: herald_channel_worker::Settings =
        herald_config::load(&sources(&[("HERALD__WORKER__LEASE", "30s".into())])).unwrap();
    let problems = short.channel_problems(WorkerChannel::Email);
    assert!(
        problems.iter().any(|problem| problem
            .starts_with("worker.lease (30s) must be longer than smtp.timeout (10s) x 3 stage(s)")),
        "{problems:?}"
    );
    assert!(
        short.channel_problems(WorkerChannel::InApp).is_empty(),
        "the inbox has no provider timeout"
    );

    let shipped: herald_channel_worker::Settings = herald_config::load(&sources(&[])).unwrap();
    assert!(shipped.channel_problems(WorkerChannel::Email).is_empty());
}

#[test]
fn each_channel_has_an_unknown_outcome_policy_that_the_environment_can_change() {
    use herald_domain::Channel;
    use herald_worker::UnknownOutcome;
    let shipped: herald_channel_worker::Settings = herald_config::load(&sources(&[])).unwrap();
    let policies = shipped.worker.unknown_outcome;
    assert_eq!(policies.for_channel(Channel::Email), UnknownOutcome::Hold);
    assert_eq!(policies.for_channel(Channel::Sms), UnknownOutcome::Resend);
    assert_eq!(policies.for_channel(Channel::Push), UnknownOutcome::Resend);
    assert_eq!(policies.for_channel(Channel::InApp), UnknownOutcome::Resend);
    assert_eq!(policies.for_channel(Channel::Chat), UnknownOutcome::Hold);

    let changed: herald_channel_worker::Settings = herald_config::load(&sources(&[(
        "HERALD__WORKER__UNKNOWN_OUTCOME__EMAIL",
        "resend".into(),
    )]))
    .unwrap();
    assert_eq!(
        changed.worker.unknown_outcome.for_channel(Channel::Email),
        UnknownOutcome::Resend
    );
    let error = herald_config::load::<herald_channel_worker::Settings>(&sources(&[(
        "HERALD__WORKER__UNKNOWN_OUTCOME__SMS",
        "twice".into(),
    )]))
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("twice") && error.contains("worker.unknown_outcome.sms"),
        "{error}"
    );
}

#[test]
fn environment_variables_override_the_file() {
    let worker: herald_channel_worker::Settings = herald_config::load(&sources(&[
        ("HERALD__SMTP__PORT", "2600".into()),
        ("HERALD__DATABASE__URL", "postgres://elsewhere/db".into()),
        ("HERALD__WORKER__LEASE", "2m".into()),
    ]))
    .unwrap();
    assert_eq!(worker.smtp.port, 2600);
    assert_eq!(
        worker.database.url.expose_secret(),
        "postgres://elsewhere/db"
    );
    assert_eq!(worker.worker.lease, std::time::Duration::from_secs(120));
}

#[test]
fn every_invalid_setting_is_reported_at_once() {
    let error = herald_config::load::<herald_channel_worker::Settings>(&sources(&[
        ("HERALD__DATABASE__URL", "mysql://nope".into()),
        ("HERALD__WORKER__PREFETCH", "0".into()),
        ("HERALD__SMTP__FROM", "not a mailbox".into()),
    ]))
    .unwrap_err()
    .to_string();
    for expected in ["database.url", "worker.prefetch", "smtp.from"] {
        assert!(error.contains(expected), "{expected} missing from: {error}");
    }
}

#[test]
fn the_tracker_needs_a_secret_and_enabled_tracking_needs_one_everywhere() {
    let error = herald_config::load::<herald_tracker::Settings>(&sources(&[]))
        .unwrap_err()
        .to_string();
    assert!(error.contains("tracking.secret"), "{error}");
    let error = herald_config::load::<herald_channel_worker::Settings>(&sources(&[(
        "HERALD__TRACKING__ENABLED",
        "true".to_owned(),
    )]))
    .unwrap_err()
    .to_string();
    assert!(error.contains("tracking.secret"), "{error}");
}

#[test]
fn the_production_profile_puts_tls_on_every_hop_and_refuses_plain_smtp_to_a_remote_relay() {
    let certs = TestCerts::get();
    let ca = certs.path("ca.pem").display().to_string();
    // The files the manifests mount, here the test's own.
    let mounted = [
        ("HERALD__DATABASE__TLS__CA", ca.clone()),
        ("HERALD__REDIS__TLS_CA", ca.clone()),
        ("HERALD__AMQP__TLS_CA", ca),
        (
            "HERALD__DATABASE__ENCRYPTION__KEY_DIR",
            certs.path("keys").display().to_string(),
        ),
    ];
    let production = |env: &[(&str, String)]| {
        let mut sources = sources(&[mounted.as_slice(), env].concat());
        sources.environment = Some("production".into());
        sources
    };
    let api: herald_api_server::Settings = herald_config::load(&production(&[])).unwrap();
    assert_eq!(
        api.database.tls.mode,
        herald_config::DatabaseTlsMode::VerifyFull
    );
    assert!(api.redis.url.expose_secret().starts_with("rediss://"));
    assert!(api.amqp.url.expose_secret().starts_with("amqps://"));
    assert!(!api.tls.crls.is_empty());
    let worker: herald_channel_worker::Settings = herald_config::load(&production(&[])).unwrap();
    assert_eq!(worker.smtp.security, herald_smtp::SmtpSecurity::Starttls);
    assert!(worker.amqp.url.expose_secret().starts_with("amqps://"));

    let plain = herald_config::load::<herald_channel_worker::Settings>(&production(&[(
        "HERALD__SMTP__SECURITY",
        "none".into(),
    )]))
    .unwrap_err()
    .to_string();
    assert!(plain.contains("smtp.security"), "{plain}");
}

#[test]
fn the_api_principals_and_the_sms_providers_come_from_files_in_the_extra_directory() {
    use herald_channel_worker::WorkerChannel;
    let extra = tempfile::tempdir().unwrap();
    // What the production Secrets herald-api-server-config and herald-sms-worker-config hold.
    std::fs::write(
        extra.path().join("principals.toml"),
        r#"
[[auth.principals]]
identity = "spiffe://example.com/service/shop"
roles = ["submit", "inbox"]
user_namespaces = ["shop:"]
"#,
    )
    .unwrap();
    std::fs::write(
        extra.path().join("sms-providers.toml"),
        r#"
[[sms.providers]]
kind = "http_gateway"
name = "gateway"
url = "https://sms.example.com/v1/messages"
token = "a-gateway-token"
from = "Herald"
"#,
    )
    .unwrap();
    let with_extra = |env: &[(&str, String)]| Sources {
        extra_dir: Some(extra.path().to_owned()),
        ..sources(env)
    };

    let api: herald_api_server::Settings = herald_config::load(&with_extra(&[])).unwrap();
    let identities: Vec<&str> = api
        .auth
        .principals
        .iter()
        .map(|principal| principal.identity.as_str())
        .collect();
    assert_eq!(identities, ["spiffe://example.com/service/shop"]);
    assert_eq!(api.auth.principals[0].user_namespaces, ["shop:"]);

    let worker: herald_channel_worker::Settings = herald_config::load(&with_extra(&[])).unwrap();
    assert_eq!(
        worker.channel_problems(WorkerChannel::Sms),
        Vec::<String>::new()
    );
    // The environment still wins over the extra directory.
    let worker: herald_channel_worker::Settings =
        herald_config::load(&with_extra(&[("HERALD__SMS__MAX_SEGMENTS", "2".into())])).unwrap();
    assert_eq!(worker.sms.max_segments, 2);
}
