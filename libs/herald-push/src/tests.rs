//! Unit tests: error mapping, payload shapes and limits, aggregation and settings.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_config::Validate;
use herald_domain::{DeliveryId, DeviceToken, Platform, Priority};
use herald_templates::RenderedPush;
use herald_worker::{DeliveryError, Receipt};
use serde_json::json;

use crate::channel::{DeviceResult, aggregate};
use crate::{Error, FcmClient, FcmSettings, PushMessage, PushSettings};

fn message(data: &[(&str, &str)], priority: Priority) -> PushMessage {
    PushMessage::new(
        DeliveryId::generate(),
        RenderedPush {
            title: "Your order shipped".into(),
            body: "It arrives on Tuesday".into(),
            data: data
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
        },
        priority,
    )
    .expect("a valid message")
}

mod fcm_errors {
    use super::*;
    use crate::fcm::{Failure, classify};

    fn check(status: u16, body: serde_json::Value, expected: Failure) {
        assert_eq!(
            classify(status, &body.to_string()),
            expected,
            "{status} {body}"
        );
    }

    fn google(
        code: u16,
        status: &str,
        message: &str,
        error_code: Option<&str>,
    ) -> serde_json::Value {
        let details: Vec<serde_json::Value> = error_code
            .map(|error_code| {
                json!({
                    "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                    "errorCode": error_code,
                })
            })
            .into_iter()
            .collect();
        json!({"error": {"code": code, "message": message, "status": status, "details": details}})
    }

    #[test]
    fn unregistered_and_sender_mismatch_invalidate_the_token() {
        check(
            404,
            google(
                404,
                "NOT_FOUND",
                "Requested entity was not found.",
                Some("UNREGISTERED"),
            ),
            Failure::InvalidToken("fcm 404 NOT_FOUND UNREGISTERED".into()),
        );
        check(
            403,
            google(
                403,
                "PERMISSION_DENIED",
                "SenderId mismatch",
                Some("SENDER_ID_MISMATCH"),
            ),
            Failure::InvalidToken("fcm 403 PERMISSION_DENIED SENDER_ID_MISMATCH".into()),
        );
    }

    #[test]
    fn invalid_argument_invalidates_the_token_only_when_it_names_the_token() {
        check(
            400,
            google(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                Some("INVALID_ARGUMENT"),
            ),
            Failure::InvalidToken("fcm 400 INVALID_ARGUMENT".into()),
        );
        check(
            400,
            json!({"error": {"code": 400, "message": "Invalid value", "status": "INVALID_ARGUMENT",
                "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                             "fieldViolations": [{"field": "message.token", "description": "bad"}]}]}}),
            Failure::InvalidToken("fcm 400 INVALID_ARGUMENT".into()),
        );
        check(
            400,
            google(
                400,
                "INVALID_ARGUMENT",
                "Android message is too big",
                Some("INVALID_ARGUMENT"),
            ),
            Failure::Permanent("fcm 400 INVALID_ARGUMENT".into()),
        );
    }

    #[test]
    fn throttling_server_errors_and_rejected_credentials_are_retryable() {
        check(
            429,
            google(
                429,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded.",
                Some("QUOTA_EXCEEDED"),
            ),
            Failure::Retryable("fcm 429 RESOURCE_EXHAUSTED QUOTA_EXCEEDED".into()),
        );
        check(
            500,
            google(500, "INTERNAL", "Internal error.", Some("INTERNAL")),
            Failure::Retryable("fcm 500 INTERNAL".into()),
        );
        check(
            503,
            google(503, "UNAVAILABLE", "Unavailable.", Some("UNAVAILABLE")),
            Failure::Retryable("fcm 503 UNAVAILABLE".into()),
        );
        check(
            401,
            google(401, "UNAUTHENTICATED", "Bad credentials.", None),
            Failure::Retryable("fcm 401 UNAUTHENTICATED".into()),
        );
    }

    #[test]
    fn other_client_errors_are_permanent_and_the_detail_never_quotes_the_message() {
        check(
            403,
            google(
                403,
                "PERMISSION_DENIED",
                "Permission denied for +15551234567",
                None,
            ),
            Failure::Permanent("fcm 403 PERMISSION_DENIED".into()),
        );
        assert_eq!(
            classify(400, "<html>bad request</html>"),
            Failure::Permanent("fcm 400".into())
        );
    }
}

mod apns_errors {
    use crate::apns::{Failure, classify};

    fn check(status: u16, reason: &str, expected: Failure) {
        assert_eq!(classify(status, reason), expected, "{status} {reason}");
    }

    #[test]
    fn unregistered_and_bad_tokens_invalidate_the_token() {
        check(
            410,
            "Unregistered",
            Failure::InvalidToken("apns 410 Unregistered".into()),
        );
        check(
            410,
            "ExpiredToken",
            Failure::InvalidToken("apns 410 ExpiredToken".into()),
        );
        check(
            400,
            "BadDeviceToken",
            Failure::InvalidToken("apns 400 BadDeviceToken".into()),
        );
        check(
            400,
            "DeviceTokenNotForTopic",
            Failure::InvalidToken("apns 400 DeviceTokenNotForTopic".into()),
        );
    }

    #[test]
    fn throttling_server_errors_and_refused_provider_tokens_are_retryable() {
        check(
            429,
            "TooManyRequests",
            Failure::Retryable("apns 429 TooManyRequests".into()),
        );
        check(
            500,
            "InternalServerError",
            Failure::Retryable("apns 500 InternalServerError".into()),
        );
        check(
            503,
            "ServiceUnavailable",
            Failure::Retryable("apns 503 ServiceUnavailable".into()),
        );
        check(
            403,
            "ExpiredProviderToken",
            Failure::Retryable("apns 403 ExpiredProviderToken".into()),
        );
        check(
            403,
            "InvalidProviderToken",
            Failure::Retryable("apns 403 InvalidProviderToken".into()),
        );
    }

    #[test]
    fn other_refusals_are_permanent() {
        check(
            413,
            "PayloadTooLarge",
            Failure::Permanent("apns 413 PayloadTooLarge".into()),
        );
        check(
            400,
            "TopicDisallowed",
            Failure::Permanent("apns 400 TopicDisallowed".into()),
        );
        check(
            403,
            "BadCertificate",
            Failure::Permanent("apns 403 BadCertificate".into()),
        );
        check(405, "", Failure::Permanent("apns 405".into()));
    }
}

mod payloads {
    use super::*;
    use crate::{COLLAPSE_ID_KEY, MAX_PAYLOAD_BYTES};

    #[test]
    fn the_apns_payload_puts_the_alert_in_aps_and_data_beside_it() {
        let message = message(
            &[("order_id", "42"), (COLLAPSE_ID_KEY, "order-42")],
            Priority::High,
        );
        let payload: serde_json::Value =
            serde_json::from_slice(&crate::apns::payload(&message).expect("a payload"))
                .expect("JSON");
        assert_eq!(
            payload,
            json!({
                "aps": {"alert": {"title": "Your order shipped", "body": "It arrives on Tuesday"},
                        "sound": "default"},
                "order_id": "42",
            })
        );
        assert_eq!(message.collapse_id.as_deref(), Some("order-42"));
    }

    #[test]
    fn a_data_key_named_aps_is_refused() {
        let message = message(&[("aps", "x")], Priority::Normal);
        assert!(matches!(
            crate::apns::payload(&message),
            Err(DeliveryError::Permanent(detail)) if detail.contains("`aps`")
        ));
    }

    #[test]
    fn a_collapse_id_longer_than_64_bytes_is_permanent() {
        let result = PushMessage::new(
            DeliveryId::generate(),
            RenderedPush {
                title: "t".into(),
                body: "b".into(),
                data: BTreeMap::from([(COLLAPSE_ID_KEY.to_owned(), "x".repeat(65))]),
            },
            Priority::Normal,
        );
        assert!(
            matches!(result, Err(DeliveryError::Permanent(detail)) if detail.contains("65 bytes"))
        );
    }

    #[test]
    fn android_messages_carry_priority_ttl_and_collapse_key() {
        let message = message(
            &[("order_id", "42"), (COLLAPSE_ID_KEY, "order-42")],
            Priority::Critical,
        );
        let device = DeviceToken {
            token: "android-token".into(),
            platform: Platform::Android,
        };
        let wire = crate::fcm::wire_message(&message, &device, Duration::from_secs(3600));
        assert_eq!(
            serde_json::to_value(&wire).expect("JSON"),
            json!({
                "token": "android-token",
                "notification": {"title": "Your order shipped", "body": "It arrives on Tuesday"},
                "data": {"order_id": "42"},
                "android": {"priority": "HIGH", "ttl": "3600s", "collapse_key": "order-42"},
            })
        );
    }

    #[test]
    fn web_messages_carry_webpush_urgency_and_ttl() {
        let message = message(&[], Priority::Low);
        let device = DeviceToken {
            token: "web-token".into(),
            platform: Platform::Web,
        };
        let wire = crate::fcm::wire_message(&message, &device, Duration::from_secs(60));
        assert_eq!(
            serde_json::to_value(&wire).expect("JSON"),
            json!({
                "token": "web-token",
                "notification": {"title": "Your order shipped", "body": "It arrives on Tuesday"},
                "webpush": {"headers": {"TTL": "60", "Urgency": "normal"}},
            })
        );
    }

    #[test]
    fn payloads_over_4096_bytes_are_permanent() {
        assert!(crate::message::check_size(&vec![b'x'; MAX_PAYLOAD_BYTES]).is_ok());
        let error =
            crate::message::check_size(&vec![b'x'; MAX_PAYLOAD_BYTES + 1]).expect_err("too large");
        assert_eq!(
            error,
            DeliveryError::Permanent(
                "push payload is 4097 bytes, more than the 4096 the provider accepts".into()
            )
        );
    }

    #[test]
    fn debug_output_shows_no_content() {
        let text = format!("{:?}", message(&[("secret", "value")], Priority::Normal));
        assert!(!text.contains("shipped") && !text.contains("Tuesday") && !text.contains("value"));
    }
}

mod aggregation {
    use super::*;

    fn accepted(detail: &str) -> DeviceResult {
        DeviceResult {
            provider: Some("apns"),
            result: Ok(Receipt {
                detail: detail.into(),
                invalid_addresses: Vec::new(),
            }),
        }
    }

    fn failed(error: DeliveryError) -> DeviceResult {
        DeviceResult {
            provider: Some("fcm"),
            result: Err(error),
        }
    }

    fn invalid(token: &str) -> DeviceResult {
        failed(DeliveryError::AddressInvalid {
            addresses: vec![token.into()],
            detail: "fcm 404 NOT_FOUND UNREGISTERED".into(),
        })
    }

    #[test]
    fn one_accepted_device_delivers_and_carries_the_invalid_tokens() {
        let outcome = aggregate(vec![
            accepted("apns-id A"),
            invalid("stale"),
            failed(DeliveryError::Retryable("fcm 503 UNAVAILABLE".into())),
        ]);
        assert_eq!(
            outcome,
            Ok(Receipt {
                detail: "1 of 3 devices accepted (apns-id A); others: fcm 404 NOT_FOUND \
                         UNREGISTERED; fcm 503 UNAVAILABLE"
                    .into(),
                invalid_addresses: vec!["stale".into()],
            })
        );
    }

    #[test]
    fn all_invalid_is_address_invalid_naming_every_token() {
        let outcome = aggregate(vec![invalid("a"), invalid("b")]);
        assert!(matches!(
            outcome,
            Err(DeliveryError::AddressInvalid { addresses, .. }) if addresses == ["a", "b"]
        ));
    }

    #[test]
    fn any_retryable_failure_without_an_accepted_device_is_retryable() {
        let outcome = aggregate(vec![
            invalid("a"),
            failed(DeliveryError::Permanent("apns 413 PayloadTooLarge".into())),
            failed(DeliveryError::Retryable("fcm 503 UNAVAILABLE".into())),
        ]);
        assert!(matches!(outcome, Err(DeliveryError::Retryable(_))));
    }

    #[test]
    fn an_unknown_outcome_on_any_device_outweighs_a_retryable_failure() {
        let outcome = aggregate(vec![
            failed(DeliveryError::Retryable("fcm 503 UNAVAILABLE".into())),
            failed(DeliveryError::Unknown(
                "apns request failed: timed out".into(),
            )),
        ]);
        assert!(
            matches!(outcome, Err(DeliveryError::Unknown(_))),
            "{outcome:?}"
        );
    }

    #[test]
    fn otherwise_the_delivery_fails_permanently() {
        let outcome = aggregate(vec![
            invalid("a"),
            failed(DeliveryError::Permanent("apns 413 PayloadTooLarge".into())),
        ]);
        assert_eq!(
            outcome,
            Err(DeliveryError::Permanent(
                "no device accepted: apns 413 PayloadTooLarge; fcm 404 NOT_FOUND UNREGISTERED"
                    .into()
            ))
        );
    }
}

mod settings {
    use super::*;

    fn problems(settings: &PushSettings) -> Vec<String> {
        let mut problems = Vec::new();
        settings.validate(&mut problems);
        problems
    }

    #[test]
    fn settings_read_the_documented_shape_with_defaults() {
        let settings: PushSettings = serde_json::from_value(json!({
            "breaker": {"failure_threshold": 3, "open_for": "10s"},
            "fcm": {"service_account_file": "/etc/herald/fcm.json"},
            "apns": {"key_file": "/etc/herald/apns.p8", "key_id": "ABC123DEFG",
                     "team_id": "DEF123GHIJ", "topic": "com.example.app", "ttl": "1h"},
        }))
        .expect("valid settings");
        let fcm = settings.fcm.as_ref().expect("fcm");
        assert_eq!(fcm.base_url, "https://fcm.googleapis.com");
        assert_eq!(fcm.token_uri, "");
        assert_eq!(fcm.timeout, Duration::from_secs(10));
        let apns = settings.apns.as_ref().expect("apns");
        assert_eq!(apns.base_url, "https://api.push.apple.com");
        assert_eq!(apns.ttl, Duration::from_secs(3600));
        assert_eq!(settings.breaker.failure_threshold, 3);
        assert!(problems(&settings).is_empty(), "{:?}", problems(&settings));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let result = serde_json::from_value::<PushSettings>(json!({
            "fcm": {"service_account_file": "/x.json", "server_key": "legacy"},
        }));
        assert!(result.is_err());
    }

    #[test]
    fn validation_needs_a_provider_and_names_each_bad_setting() {
        assert_eq!(
            problems(&PushSettings::default()),
            ["push needs at least one provider: configure push.fcm or push.apns"]
        );
        let settings = PushSettings {
            apns: Some(crate::ApnsSettings {
                base_url: "ftp://apple".into(),
                ..crate::ApnsSettings::default()
            }),
            ..PushSettings::default()
        };
        assert_eq!(
            problems(&settings),
            [
                "push.apns.key_file must name the .p8 signing key",
                "push.apns.key_id must not be empty",
                "push.apns.team_id must not be empty",
                "push.apns.topic must not be empty",
                "push.apns.base_url must be an http(s) URL",
            ]
        );
    }

    #[test]
    fn a_missing_or_malformed_service_account_file_names_the_setting() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let missing = FcmSettings {
            service_account_file: dir.path().join("absent.json"),
            ..FcmSettings::default()
        };
        let error = FcmClient::from_settings(&missing).expect_err("no file");
        assert!(matches!(error, Error::Read { .. }));
        assert!(
            error
                .to_string()
                .starts_with("push.fcm.service_account_file: could not read")
        );

        let path = dir.path().join("account.json");
        std::fs::write(&path, r#"{"type": "authorized_user"}"#).expect("write");
        let error = FcmClient::from_settings(&FcmSettings {
            service_account_file: path,
            ..FcmSettings::default()
        })
        .expect_err("not a service account");
        assert!(
            error
                .to_string()
                .starts_with("push.fcm.service_account_file:")
                && error
                    .to_string()
                    .contains("is not a service account JSON key"),
            "{error}"
        );
    }

    #[test]
    fn a_malformed_apns_key_names_the_setting() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("key.p8");
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let error = crate::ApnsClient::from_settings(&crate::ApnsSettings {
            key_file: path,
            key_id: "ABC123DEFG".into(),
            team_id: "DEF123GHIJ".into(),
            topic: "com.example.app".into(),
            ..crate::ApnsSettings::default()
        })
        .expect_err("not a key");
        assert!(
            error.to_string().starts_with("push.apns.key_file:")
                && error.to_string().contains("is not a PKCS#8 EC P-256 key"),
            "{error}"
        );
    }

    #[test]
    fn building_without_a_provider_fails() {
        assert!(matches!(
            crate::PushChannel::from_settings(&PushSettings::default()),
            Err(Error::NoProvider)
        ));
    }
}
