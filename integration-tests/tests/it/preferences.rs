//! PreferenceService, and preferences applied at submit and again just before sending.

use std::sync::Arc;
use std::time::Duration;

use herald_domain::ManualClock;
use herald_proto::common::Priority as WirePriority;
use herald_proto::preference::preference_service_client::PreferenceServiceClient;
use herald_proto::preference::{
    CategoryPreference, ContactPoints, DeletePreferencesRequest, GetPreferencesRequest,
    Preferences, QuietHours, UpdatePreferencesRequest,
};
use herald_proto::submit::{DeliveryState, NotificationStatus, SubmitRequest};
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::{As, Options, TestApp, welcome_request};

const WAIT: Duration = Duration::from_secs(30);

async fn client(app: &TestApp) -> PreferenceServiceClient<Channel> {
    PreferenceServiceClient::new(app.channel(As::Orders).await)
}

async fn update(
    app: &TestApp,
    preferences: Preferences,
    paths: &[&str],
) -> Result<Preferences, tonic::Status> {
    client(app)
        .await
        .update_preferences(UpdatePreferencesRequest {
            preferences: Some(preferences),
            update_mask: (!paths.is_empty()).then(|| prost_types::FieldMask {
                paths: paths.iter().map(|path| (*path).to_owned()).collect(),
            }),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn user(user_id: &str) -> Preferences {
    Preferences {
        user_id: user_id.into(),
        contacts: Some(ContactPoints {
            email: format!("{user_id}@example.com"),
            ..ContactPoints::default()
        }),
        ..Preferences::default()
    }
}

/// A submit to `user_id` by id only: the address comes from the user's preferences.
fn to_user(user_id: &str) -> SubmitRequest {
    let mut request = welcome_request("");
    request.recipients[0].email.clear();
    request.recipients[0].user_id = user_id.into();
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn preferences_update_partially_and_deleting_a_user_removes_their_contact_data() {
    let app = TestApp::spawn().await;
    let mut preferences = client(&app).await;
    let fresh = preferences
        .get_preferences(GetPreferencesRequest {
            user_id: "u1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!fresh.global_opt_out && fresh.contacts.unwrap().email.is_empty());

    let mut first = user("u1");
    first.time_zone = "Asia/Seoul".into();
    update(&app, first, &[]).await.unwrap();
    let opted_out = Preferences {
        user_id: "u1".into(),
        global_opt_out: true,
        ..Preferences::default()
    };
    let after = update(&app, opted_out, &["global_opt_out"]).await.unwrap();
    assert!(after.global_opt_out);
    assert_eq!(
        after.contacts.unwrap().email,
        "u1@example.com",
        "fields outside the mask are kept"
    );
    assert_eq!(after.time_zone, "Asia/Seoul");

    let deleted = preferences
        .delete_preferences(DeletePreferencesRequest {
            user_id: "u1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    let gone = preferences
        .get_preferences(GetPreferencesRequest {
            user_id: "u1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(gone.contacts.unwrap().email.is_empty());
    assert_eq!(app.count_rows("audit_log").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_preference_reads_back_as_it_was_set_in_canonical_form() {
    use herald_proto::preference::{DeviceToken, Platform};
    let app = TestApp::spawn().await;
    let mut set = user("u2");
    set.contacts.as_mut().unwrap().device_tokens = vec![DeviceToken {
        token: "apns-token-1".into(),
        platform: Platform::Ios.into(),
        disabled_reason: String::new(),
    }];
    set.locale = "ko-kr".into();
    set.time_zone = "Asia/Seoul".into();
    set.channels = [("sms".to_owned(), false)].into();
    set.categories = vec![CategoryPreference {
        category: "marketing".into(),
        channels: [("email".to_owned(), false), ("push".to_owned(), true)].into(),
    }];
    set.quiet_hours = Some(QuietHours {
        start: "22:00".into(),
        end: "07:30".into(),
        days: vec!["Friday".into(), "MON".into()],
    });
    set.tracking_opt_out = true;
    update(&app, set, &[]).await.unwrap();

    let read = client(&app)
        .await
        .get_preferences(GetPreferencesRequest {
            user_id: "u2".into(),
        })
        .await
        .unwrap()
        .into_inner();

    let contacts = read.contacts.unwrap();
    assert_eq!(contacts.email, "u2@example.com");
    assert_eq!(contacts.device_tokens.len(), 1);
    assert_eq!(contacts.device_tokens[0].token, "apns-token-1");
    assert_eq!(contacts.device_tokens[0].platform(), Platform::Ios);
    assert_eq!(read.locale, "ko-KR");
    assert_eq!(read.time_zone, "Asia/Seoul");
    assert_eq!(read.channels, [("sms".to_owned(), false)].into());
    assert_eq!(read.categories.len(), 1);
    assert_eq!(read.categories[0].category, "marketing");
    assert_eq!(
        read.categories[0].channels,
        [("email".to_owned(), false), ("push".to_owned(), true)].into()
    );
    assert_eq!(
        read.quiet_hours,
        Some(QuietHours {
            start: "22:00".into(),
            end: "07:30".into(),
            days: vec!["mon".into(), "fri".into()],
        }),
        "weekdays come back as three-letter names, Monday first"
    );
    assert!(read.tracking_opt_out && !read.global_opt_out);
}

const STRANGER: &str = "spiffe://herald.local/service/stranger";

#[tokio::test(flavor = "multi_thread")]
async fn without_contact_permissions_contact_points_are_masked_and_cannot_be_changed() {
    use herald_proto::preference::{DeviceToken, Platform};
    // The stranger's certificate as a product backend that may manage preferences but was
    // not granted contacts.read or contacts.write.
    let app = TestApp::spawn_with(Options {
        principals: vec![herald_api_server::PrincipalSettings {
            identity: STRANGER.into(),
            roles: vec!["submit".into()],
            permissions: Vec::new(),
            quota_per_minute: None,
            user_namespaces: Vec::new(),
        }],
        ..Options::default()
    })
    .await;
    let mut owner = user("u3");
    let contacts = owner.contacts.as_mut().unwrap();
    contacts.phone = "+821012345678".into();
    contacts.device_tokens = vec![DeviceToken {
        token: "apns-token-1".into(),
        platform: Platform::Ios.into(),
        disabled_reason: String::new(),
    }];
    update(&app, owner, &[]).await.unwrap();
    let mut stranger = PreferenceServiceClient::new(app.channel(As::Stranger).await);

    let seen = stranger
        .get_preferences(GetPreferencesRequest {
            user_id: "u3".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .contacts
        .unwrap();
    assert_eq!(seen.email, "u***@example.com");
    assert_eq!(seen.phone, "+82***78");
    assert_eq!(seen.device_tokens[0].token, "apns***");

    let redirect = Preferences {
        user_id: "u3".into(),
        contacts: Some(ContactPoints {
            email: "attacker@example.com".into(),
            ..ContactPoints::default()
        }),
        ..Preferences::default()
    };
    let status = stranger
        .update_preferences(UpdatePreferencesRequest {
            preferences: Some(redirect),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["contacts.email".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        format!(
            "UpdatePreferences of contacts.email needs the contacts.write permission, which {STRANGER} does not have"
        )
    );
    let status = stranger
        .delete_preferences(DeletePreferencesRequest {
            user_id: "u3".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // What is not a contact point it may change; the answer stays masked.
    let opted_out = stranger
        .update_preferences(UpdatePreferencesRequest {
            preferences: Some(Preferences {
                user_id: "u3".into(),
                global_opt_out: true,
                ..Preferences::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["global_opt_out".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(opted_out.global_opt_out);
    assert_eq!(opted_out.contacts.unwrap().email, "u***@example.com");
    let kept = client(&app)
        .await
        .get_preferences(GetPreferencesRequest {
            user_id: "u3".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.contacts.unwrap().email, "u3@example.com");
    assert_eq!(
        audit_details(&app).await,
        [
            serde_json::json!({"fields": [
                "contacts.email", "contacts.phone", "contacts.device_tokens", "locale",
                "time_zone", "channels", "categories", "quiet_hours", "global_opt_out",
                "tracking_opt_out",
            ]}),
            serde_json::json!({"fields": ["global_opt_out"]}),
        ],
        "every change is audited with the fields it changed"
    );
}

/// The detail of every `preferences.update` audit row, oldest first.
async fn audit_details(app: &TestApp) -> Vec<serde_json::Value> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use herald_db::schema::audit_log;
    let mut connection = app.pool.get().await.unwrap();
    audit_log::table
        .filter(audit_log::action.eq("preferences.update"))
        .order(audit_log::id.asc())
        .select(audit_log::detail)
        .load(&mut connection)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_preferences_name_the_field_and_write_nothing() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            Preferences {
                contacts: Some(ContactPoints {
                    phone: "010-1234".into(),
                    ..ContactPoints::default()
                }),
                ..user("u2")
            },
            "preferences.contacts.phone:",
        ),
        (
            Preferences {
                time_zone: "Mars/Olympus".into(),
                ..user("u2")
            },
            "preferences.time_zone:",
        ),
        (
            Preferences {
                quiet_hours: Some(QuietHours {
                    start: "22:00".into(),
                    end: "22:00".into(),
                    days: vec![],
                }),
                ..user("u2")
            },
            "preferences.quiet_hours:",
        ),
        (
            Preferences {
                channels: [("fax".to_owned(), false)].into(),
                ..user("u2")
            },
            "preferences.channels[fax]:",
        ),
    ];
    for (preferences, expected) in cases {
        let status = update(&app, preferences, &[]).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(
            status.message().starts_with(expected),
            "expected `{expected}…`, got `{}`",
            status.message()
        );
    }
    let status = update(&app, user("u2"), &["colour"]).await.unwrap_err();
    assert!(
        status
            .message()
            .starts_with("update_mask.paths[0]: unknown path `colour`"),
        "{}",
        status.message()
    );
    let status = update(&app, user("u2"), &["locale", "channels", "locale"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "update_mask.paths[2]: `locale` is also update_mask.paths[0]; name each path once"
    );
    let status = update(&app, user("u2"), &["locale"; 1000])
        .await
        .unwrap_err();
    assert_eq!(
        status.message(),
        "update_mask.paths: must name at most 10 paths, each once (got 1000)"
    );
    assert_eq!(app.count_rows("user_preferences").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn submitting_to_a_user_id_resolves_the_address_when_sending() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    update(&app, user("u3"), &[]).await.unwrap();

    let id = app.submit(to_user("u3")).await.unwrap().notification_id;

    app.wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    assert_eq!(
        app.smtp.wait_for_messages(1, WAIT).await[0].to,
        ["u3@example.com"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_without_an_address_is_skipped_not_failed() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;

    let id = app.submit(to_user("nobody")).await.unwrap().notification_id;

    let notification = app
        .wait_for_status(&id, NotificationStatus::Suppressed)
        .await;
    assert!(
        notification.deliveries[0]
            .last_error
            .starts_with("no_address:")
    );
    assert_eq!(
        app.count_rows("failures").await,
        0,
        "not a failure, so no alert either"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn switched_off_channels_categories_and_global_opt_out_suppress_at_submit() {
    let app = TestApp::spawn().await;
    app.create_welcome_template().await;
    let mut channel_off = user("c1");
    channel_off.channels = [("email".to_owned(), false)].into();
    let mut category_off = user("c2");
    category_off.categories = vec![CategoryPreference {
        category: "transactional".into(),
        channels: [("email".to_owned(), false)].into(),
    }];
    let mut opted_out = user("c3");
    opted_out.global_opt_out = true;
    for preferences in [channel_off, category_off, opted_out] {
        update(&app, preferences, &[]).await.unwrap();
    }

    for (user_id, reason) in [
        ("c1", "channel_disabled:"),
        ("c2", "category_disabled:"),
        ("c3", "opted_out:"),
    ] {
        let id = app.submit(to_user(user_id)).await.unwrap().notification_id;
        let notification = app.notification(&id).await;
        assert_eq!(
            notification.status(),
            NotificationStatus::Suppressed,
            "{user_id}"
        );
        assert!(
            notification.deliveries[0].last_error.starts_with(reason),
            "{user_id}"
        );
    }
    assert_eq!(
        app.count_rows("outbox").await,
        0,
        "suppressed deliveries are never queued"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mandatory_categories_reach_users_who_opted_out() {
    let app = TestApp::spawn().await;
    app.create_template_in(
        "security",
        "new-login",
        "New sign-in, {{username}}",
        "",
        "{{item_name}}",
    )
    .await;
    let mut opted_out = user("m1");
    opted_out.global_opt_out = true;
    update(&app, opted_out, &[]).await.unwrap();
    let mut request = to_user("m1");
    request.template.as_mut().unwrap().key = "new-login".into();

    let id = app.submit(request).await.unwrap().notification_id;

    app.wait_for_status(&id, NotificationStatus::Delivered)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_who_opts_out_while_the_message_is_queued_does_not_get_it() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    update(&app, user("q1"), &[]).await.unwrap();
    let id = app.submit(to_user("q1")).await.unwrap().notification_id;
    let opted_out = Preferences {
        user_id: "q1".into(),
        global_opt_out: true,
        ..Preferences::default()
    };
    update(&app, opted_out, &["global_opt_out"]).await.unwrap();

    app.start_email_worker(1);

    let notification = app
        .wait_for_status(&id, NotificationStatus::Suppressed)
        .await;
    assert!(
        notification.deliveries[0]
            .last_error
            .starts_with("opted_out:")
    );
    assert!(app.smtp.messages().is_empty());
}

/// 02:00 in Seoul (UTC+9, no daylight saving), `days` days from today there: the injected
/// clock stays within a day or two of the real one, whatever the date the tests run on.
fn seoul_2am(days: i64) -> chrono::DateTime<chrono::Utc> {
    let seoul = chrono::FixedOffset::east_opt(9 * 3600).unwrap();
    let today = chrono::Utc::now().with_timezone(&seoul).date_naive();
    (today + chrono::Duration::days(days))
        .and_hms_opt(2, 0, 0)
        .unwrap()
        .and_local_timezone(seoul)
        .unwrap()
        .to_utc()
}

async fn seoul_sleeper(app: &TestApp, user_id: &str) {
    let mut preferences = user(user_id);
    preferences.time_zone = "Asia/Seoul".into();
    preferences.quiet_hours = Some(QuietHours {
        start: "22:00".into(),
        end: "08:00".into(),
        days: vec![],
    });
    update(app, preferences, &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_seoul_users_2am_message_arrives_at_8am_their_time() {
    // Yesterday's night: the service's clock runs behind the real one, and everything that
    // decides when a delivery is due must follow the service's clock, not the real one.
    let two_am = seoul_2am(-1);
    let clock = Arc::new(ManualClock::new(two_am));
    let app = TestApp::spawn_with(Options {
        clock: Some(clock.clone()),
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    seoul_sleeper(&app, "s1").await;

    let id = app.submit(to_user("s1")).await.unwrap().notification_id;

    let held = app.notification(&id).await;
    let delivery = &held.deliveries[0];
    assert_eq!(delivery.state(), DeliveryState::Scheduled);
    let eight_am = two_am + chrono::Duration::hours(6);
    assert_eq!(
        delivery.scheduled_for.unwrap().seconds,
        eight_am.timestamp()
    );
    // A notification submitted after it, to someone without quiet hours, goes out first:
    // the relay has run past the held one and left it alone.
    update(&app, user("awake"), &[]).await.unwrap();
    let other = app.submit(to_user("awake")).await.unwrap().notification_id;
    app.wait_for_status(&other, NotificationStatus::Delivered)
        .await;
    assert_eq!(
        app.notification(&id).await.deliveries[0].state(),
        DeliveryState::Scheduled
    );

    clock.set(eight_am);

    app.wait_for_status(&id, NotificationStatus::Delivered)
        .await;
    let emails = app.smtp.wait_for_messages(2, WAIT).await;
    assert!(emails.iter().any(|email| email.to == ["s1@example.com"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn critical_security_alerts_ignore_quiet_hours() {
    let clock = Arc::new(ManualClock::new(seoul_2am(1)));
    let app = TestApp::spawn_with(Options {
        clock: Some(clock),
        ..Options::default()
    })
    .await;
    app.create_template_in(
        "security",
        "new-login",
        "New sign-in, {{username}}",
        "",
        "{{item_name}}",
    )
    .await;
    seoul_sleeper(&app, "s2").await;
    let mut request = to_user("s2");
    request.template.as_mut().unwrap().key = "new-login".into();
    request.priority = WirePriority::Critical.into();

    let id = app.submit(request).await.unwrap().notification_id;

    app.wait_for_status(&id, NotificationStatus::Delivered)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn send_at_holds_a_notification_until_its_time() {
    let start = seoul_2am(1);
    let clock = Arc::new(ManualClock::new(start));
    let app = TestApp::spawn_with(Options {
        clock: Some(clock.clone()),
        ..Options::default()
    })
    .await;
    app.create_welcome_template().await;
    let later = start + chrono::Duration::hours(3);
    let mut request = welcome_request("ada@example.com");
    request.send_at = Some(herald_proto::conversions::timestamp(later));

    let id = app.submit(request).await.unwrap().notification_id;

    let held = app.notification(&id).await;
    assert_eq!(held.deliveries[0].state(), DeliveryState::Scheduled);
    assert_eq!(
        held.deliveries[0].scheduled_for.unwrap().seconds,
        later.timestamp()
    );
    clock.set(later);
    app.wait_for_status(&id, NotificationStatus::Delivered)
        .await;
}
