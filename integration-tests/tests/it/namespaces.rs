//! User namespaces: two products share one Herald. The stranger's certificate is the shop's
//! backend, bound to users whose id starts with `shop:`; the orders identity (unrestricted)
//! stands for everything else and sets up the blog's user `blog:bob`. The shop reaches its own
//! users through every service and none of the blog's.

use herald_proto::inbox::inbox_event::Event;
use herald_proto::inbox::{
    ArchiveRequest, GetUnreadCountRequest, ListInboxRequest, MarkAllReadRequest, MarkReadRequest,
    SubscribeRequest,
};
use herald_proto::preference::preference_service_client::PreferenceServiceClient;
use herald_proto::preference::{
    ContactPoints, DeletePreferencesRequest, GetPreferencesRequest, Preferences,
    UpdatePreferencesRequest,
};
use herald_proto::submit::{
    GetNotificationRequest, Notification, Recipient, SubmitBatchRequest, SubmitRequest,
};
use herald_proto::tracking::tracking_service_client::TrackingServiceClient;
use herald_proto::tracking::{EngagementKind, ListEventsRequest, RecordEventRequest};
use tonic::Code;

use crate::harness::{As, Options, TestApp, welcome_request};
use crate::inbox::{LIVE, deliver, in_app_app_with, next, subscribe};

const SHOP_BACKEND: &str = "spiffe://herald.local/service/stranger";

/// The shop's backend may submit, use inboxes, record and read events, manage contact points
/// and read any identity's notifications, all only for `shop:` users.
fn shop_backend() -> Options {
    Options {
        principals: vec![herald_api_server::PrincipalSettings {
            identity: SHOP_BACKEND.into(),
            roles: vec!["submit".into(), "inbox".into(), "track".into()],
            permissions: vec![
                "contacts.read".into(),
                "contacts.write".into(),
                "notifications.read_any".into(),
            ],
            quota_per_minute: None,
            user_namespaces: vec!["shop:".into()],
        }],
        ..Options::default()
    }
}

/// Asserts that `result` is the shop being refused the user named in `field`.
fn assert_outside<T>(result: Result<T, tonic::Status>, field: &str) {
    let status = result
        .err()
        .expect("a user of another namespace is refused");
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
    assert_eq!(status.message(), outside(field));
}

/// The message refusing the user in `field` to the shop.
fn outside(field: &str) -> String {
    format!("{field}: the user id is outside the user namespaces of {SHOP_BACKEND} (`shop:`)")
}

/// A welcome email to `user_id` at `email`.
fn welcome_to(user_id: &str, email: &str) -> SubmitRequest {
    let mut request = welcome_request(email);
    request.recipients[0].user_id = user_id.into();
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespaced_principal_reads_its_users_inboxes_but_not_another_namespaces() {
    let app = in_app_app_with(shop_backend()).await;
    deliver(&app, "shop:ada", "1").await;
    deliver(&app, "blog:bob", "2").await;
    let mut shop = app.inbox_client_at(app.address, As::Stranger).await;
    let mut blog = app.inbox_client_at(app.address, As::Orders).await;
    let bob = || ListInboxRequest {
        user_id: "blog:bob".into(),
        ..ListInboxRequest::default()
    };

    let ada = shop
        .list_inbox(ListInboxRequest {
            user_id: "shop:ada".into(),
            ..ListInboxRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ada.items.len(), 1);
    assert_eq!(ada.items[0].title, "Shipped: kettle");
    assert_eq!(ada.items[0].action_url, "https://shop.example/orders/1");
    assert_eq!(ada.unread_count, 1);
    let mut stream = subscribe(&mut shop, "shop:ada").await;
    match next(&mut stream, LIVE).await {
        Event::Snapshot(snapshot) => assert_eq!(snapshot.unread_count, 1),
        other => panic!("expected the snapshot, got {other:?}"),
    }

    let bob_item = blog.list_inbox(bob()).await.unwrap().into_inner().items[0]
        .id
        .clone();
    assert_outside(shop.list_inbox(bob()).await, "user_id");
    assert_outside(
        shop.get_unread_count(GetUnreadCountRequest {
            user_id: "blog:bob".into(),
        })
        .await,
        "user_id",
    );
    assert_outside(
        shop.subscribe(SubscribeRequest {
            user_id: "blog:bob".into(),
        })
        .await,
        "user_id",
    );
    assert_outside(
        shop.mark_read(MarkReadRequest {
            user_id: "blog:bob".into(),
            item_ids: vec![bob_item.clone()],
        })
        .await,
        "user_id",
    );
    assert_outside(
        shop.mark_all_read(MarkAllReadRequest {
            user_id: "blog:bob".into(),
        })
        .await,
        "user_id",
    );
    assert_outside(
        shop.archive(ArchiveRequest {
            user_id: "blog:bob".into(),
            item_ids: vec![bob_item],
        })
        .await,
        "user_id",
    );

    // Bob's inbox is as the blog left it: unread, not archived.
    let bobs = blog.list_inbox(bob()).await.unwrap().into_inner();
    assert_eq!(bobs.unread_count, 1);
    assert_eq!(bobs.items.len(), 1);
    assert_eq!(bobs.items[0].read_at, None);
    assert_eq!(bobs.items[0].archived_at, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespaced_principal_cannot_read_change_or_erase_another_namespaces_preferences() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..shop_backend()
    })
    .await;
    let mut blog = PreferenceServiceClient::new(app.channel(As::Orders).await);
    let mut shop = PreferenceServiceClient::new(app.channel(As::Stranger).await);
    let user = |user_id: &str, email: &str| Preferences {
        user_id: user_id.into(),
        contacts: Some(ContactPoints {
            email: email.into(),
            ..ContactPoints::default()
        }),
        ..Preferences::default()
    };
    let opt_out = |user_id: &str| UpdatePreferencesRequest {
        preferences: Some(Preferences {
            user_id: user_id.into(),
            global_opt_out: true,
            ..Preferences::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["global_opt_out".into()],
        }),
    };
    blog.update_preferences(UpdatePreferencesRequest {
        preferences: Some(user("blog:bob", "bob@example.com")),
        update_mask: None,
    })
    .await
    .unwrap();

    // Its own users it manages, contact points included.
    shop.update_preferences(UpdatePreferencesRequest {
        preferences: Some(user("shop:ada", "ada@example.com")),
        update_mask: None,
    })
    .await
    .unwrap();
    assert!(
        shop.update_preferences(opt_out("shop:ada"))
            .await
            .unwrap()
            .into_inner()
            .global_opt_out
    );
    let ada = shop
        .get_preferences(GetPreferencesRequest {
            user_id: "shop:ada".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ada.contacts.unwrap().email, "ada@example.com");

    let bob = || GetPreferencesRequest {
        user_id: "blog:bob".into(),
    };
    assert_outside(shop.get_preferences(bob()).await, "user_id");
    assert_outside(
        shop.update_preferences(opt_out("blog:bob")).await,
        "preferences.user_id",
    );
    assert_outside(
        shop.update_preferences(UpdatePreferencesRequest {
            preferences: Some(user("blog:bob", "attacker@example.com")),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["contacts.email".into()],
            }),
        })
        .await,
        "preferences.user_id",
    );
    assert_outside(
        shop.delete_preferences(DeletePreferencesRequest {
            user_id: "blog:bob".into(),
        })
        .await,
        "user_id",
    );

    // Bob is as the blog left him: his address, not opted out, not erased.
    let bob = blog.get_preferences(bob()).await.unwrap().into_inner();
    assert_eq!(bob.contacts.unwrap().email, "bob@example.com");
    assert!(!bob.global_opt_out);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespaced_principal_submits_only_to_its_users_and_to_bare_addresses() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..shop_backend()
    })
    .await;
    app.create_welcome_template().await;
    let mut shop = app.submit_client(As::Stranger).await;

    let mut mixed = welcome_to("shop:ada", "ada@example.com");
    mixed.recipients.push(Recipient {
        user_id: "blog:bob".into(),
        email: "bob@example.com".into(),
        ..Recipient::default()
    });
    assert_outside(shop.submit(mixed).await, "recipients[1].user_id");
    assert_eq!(
        app.count_rows("notifications").await,
        0,
        "a refused submit writes nothing"
    );

    // Its own users it may send to, and recipients given by address only (no one's user).
    let own = shop
        .submit(welcome_to("shop:ada", "ada@example.com"))
        .await
        .unwrap()
        .into_inner();
    let by_address = shop
        .submit(welcome_to("", "guest@example.com"))
        .await
        .unwrap()
        .into_inner();
    for id in [own.notification_id, by_address.notification_id] {
        let notification = shop
            .get_notification(GetNotificationRequest {
                notification_id: id,
            })
            .await
            .unwrap()
            .into_inner()
            .notification
            .unwrap();
        assert_eq!(notification.submitted_by, SHOP_BACKEND);
    }

    // In a batch, only the item naming another namespace's user is refused, with its path.
    let results = shop
        .submit_batch(SubmitBatchRequest {
            items: vec![
                welcome_to("shop:ada", "ada@example.com"),
                welcome_to("blog:bob", "bob@example.com"),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results[0].code, Code::Ok as i32, "{}", results[0].message);
    assert_eq!(results[1].code, Code::PermissionDenied as i32);
    assert_eq!(
        results[1].message,
        format!("items[1].{}", outside("recipients[0].user_id"))
    );
    assert!(results[1].accepted.is_none());
    assert_eq!(app.count_rows("notifications").await, 3);
}

/// The notification `id` as the shop sees it.
async fn shops_view(app: &TestApp, id: &str) -> Result<Notification, tonic::Status> {
    app.submit_client(As::Stranger)
        .await
        .get_notification(GetNotificationRequest {
            notification_id: id.into(),
        })
        .await
        .map(|response| response.into_inner().notification.unwrap())
}

/// The kinds of the events of notification `id`, as the shop sees them.
async fn shops_events(app: &TestApp, id: &str) -> Result<Vec<String>, tonic::Status> {
    TrackingServiceClient::new(app.channel(As::Stranger).await)
        .list_events(ListEventsRequest {
            notification_id: id.into(),
        })
        .await
        .map(|response| {
            let events = response.into_inner().events;
            events.into_iter().map(|event| event.kind).collect()
        })
}

/// The shop records that `delivery_id` was opened.
async fn shop_records_open(app: &TestApp, delivery_id: &str) -> Result<bool, tonic::Status> {
    TrackingServiceClient::new(app.channel(As::Stranger).await)
        .record_event(RecordEventRequest {
            delivery_id: delivery_id.into(),
            kind: EngagementKind::Opened.into(),
            ..RecordEventRequest::default()
        })
        .await
        .map(|response| response.into_inner().recorded)
}

/// Asserts that `result` is `NOT_FOUND` with `message`.
fn assert_not_found<T>(result: Result<T, tonic::Status>, message: &str) {
    let status = result.err().expect("refused as unknown");
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    assert_eq!(status.message(), message);
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_any_notification_is_limited_to_the_namespaces_users_and_so_are_events() {
    let app = TestApp::spawn_with(Options {
        email_worker: false,
        ..shop_backend()
    })
    .await;
    app.create_welcome_template().await;
    // Submitted by the orders identity, not by the shop.
    let mut ids = Vec::new();
    for (user_id, email) in [
        ("shop:ada", "ada@example.com"),
        ("blog:bob", "bob@example.com"),
        ("", "guest@example.com"),
    ] {
        ids.push(
            app.submit(welcome_to(user_id, email))
                .await
                .unwrap()
                .notification_id,
        );
    }
    let [ada, bob, guest] = [0, 1, 2].map(|index| ids[index].clone());

    let seen = shops_view(&app, &ada).await.unwrap();
    assert_eq!(seen.deliveries[0].user_id, "shop:ada");
    assert!(
        shops_events(&app, &ada)
            .await
            .unwrap()
            .contains(&"accepted".to_owned())
    );
    assert!(
        shop_records_open(&app, &seen.deliveries[0].id)
            .await
            .unwrap()
    );

    // Another namespace's notification, or one to an address only that another identity
    // submitted, is as unknown to the shop as one that does not exist.
    for id in [&bob, &guest] {
        assert_not_found(
            shops_view(&app, id).await,
            &format!("notification_id: no notification {id}"),
        );
        assert_not_found(
            shops_events(&app, id).await,
            &format!("notification {id} does not exist"),
        );
    }
    let bobs_delivery = app.notification(&bob).await.deliveries[0].id.clone();
    assert_not_found(
        shop_records_open(&app, &bobs_delivery).await,
        &format!("delivery {bobs_delivery} does not exist"),
    );
    assert!(
        !app.delivery_events(&bobs_delivery)
            .await
            .iter()
            .any(|(kind, _)| kind == "opened"),
        "nothing was recorded for bob"
    );
}
