//! Retention and erasure at the repository: what a batch clears, when a notification's own
//! personal data goes, and how an erase and retention meet on a notification shared by two
//! users.

use chrono::{Duration, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use herald_db::events::{self, NewEvent};
use herald_db::notifications::{self, NewDelivery};
use herald_db::personal::{PersonalJson, PersonalText};
use herald_db::retention::{self, Cleared};
use herald_db::schema::{deliveries, delivery_events, notifications as notification_rows};
use herald_domain::{DeliveryId, NotificationId};
use herald_test_support::TestDatabase;

use crate::{connect, new_notification};

/// A notification with parameters and metadata and one email delivery per `(user, address)`,
/// each with its `accepted` event and a `delivered` one whose detail is a provider's answer;
/// returns its id and the deliveries'.
async fn notification_to(
    connection: &mut AsyncPgConnection,
    recipients: &[(&str, &str)],
) -> (NotificationId, Vec<DeliveryId>) {
    let mut new = new_notification(connection, None).await;
    new.parameters = PersonalJson::new(serde_json::json!({"name": "Quokkabelle"}));
    new.metadata = PersonalJson::new(serde_json::json!({"crm": "vip-marmoset"}));
    new.deliveries = recipients
        .iter()
        .enumerate()
        .map(|(index, (user_id, address))| NewDelivery {
            id: DeliveryId::generate(),
            recipient_index: i32::try_from(index).unwrap(),
            user_id: Some((*user_id).to_owned()),
            address: Some(PersonalText::new(*address)),
            ..new.deliveries[0].clone()
        })
        .collect();
    notifications::insert(connection, &new).await.unwrap();
    let ids: Vec<DeliveryId> = new.deliveries.iter().map(|delivery| delivery.id).collect();
    for id in &ids {
        events::insert(
            connection,
            &[NewEvent {
                delivery_id: *id.as_uuid(),
                kind: "delivered",
                attempt: 1,
                detail: "250 accepted for quokkabelle@example.com",
                ..NewEvent::default()
            }],
        )
        .await
        .unwrap();
    }
    (new.id, ids)
}

/// Moves `delivery_id` to `state`, last changed `ago` before now.
async fn set_state(
    connection: &mut AsyncPgConnection,
    delivery_id: DeliveryId,
    state: &str,
    ago: Duration,
) {
    diesel::update(deliveries::table.find(delivery_id.as_uuid()))
        .set((
            deliveries::state.eq(state),
            deliveries::updated_at.eq(Utc::now() - ago),
            deliveries::created_at.eq(Utc::now() - ago),
        ))
        .execute(connection)
        .await
        .unwrap();
}

async fn address(connection: &mut AsyncPgConnection, delivery_id: DeliveryId) -> Option<String> {
    deliveries::table
        .find(delivery_id.as_uuid())
        .select(deliveries::address)
        .first::<Option<PersonalText>>(connection)
        .await
        .unwrap()
        .map(PersonalText::into_inner)
}

async fn details(connection: &mut AsyncPgConnection, delivery_id: DeliveryId) -> Vec<String> {
    delivery_events::table
        .filter(delivery_events::delivery_id.eq(delivery_id.as_uuid()))
        .order(delivery_events::id.asc())
        .select(delivery_events::detail)
        .load::<PersonalText>(connection)
        .await
        .unwrap()
        .into_iter()
        .map(PersonalText::into_inner)
        .collect()
}

async fn parameters(
    connection: &mut AsyncPgConnection,
    id: NotificationId,
) -> (serde_json::Value, serde_json::Value) {
    let (parameters, metadata) = notification_rows::table
        .find(id.as_uuid())
        .select((notification_rows::parameters, notification_rows::metadata))
        .first::<(PersonalJson, PersonalJson)>(connection)
        .await
        .unwrap();
    (parameters.into_inner(), metadata.into_inner())
}

/// One retention batch with a one-day period.
async fn clear(connection: &mut AsyncPgConnection, limit: i64) -> Cleared {
    let now = Utc::now();
    retention::clear_batch(connection, now - Duration::days(1), now, limit)
        .await
        .unwrap()
        .expect("nobody else holds the clearing lock")
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_clears_final_deliveries_then_their_notification_once_all_are_cleared() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let (id, ids) = notification_to(
        &mut connection,
        &[("ada", "ada@example.com"), ("bo", "bo@example.com")],
    )
    .await;
    let (recent, recent_ids) = notification_to(&mut connection, &[("cy", "cy@example.com")]).await;
    set_state(&mut connection, ids[0], "delivered", Duration::days(3)).await;
    set_state(&mut connection, ids[1], "queued", Duration::days(3)).await;
    set_state(&mut connection, recent_ids[0], "failed", Duration::hours(1)).await;

    assert_eq!(
        clear(&mut connection, 500).await,
        Cleared {
            deliveries: 1,
            notifications: 0,
            events: 1
        },
        "only the delivery final for longer than the period, and not its notification yet"
    );
    assert_eq!(address(&mut connection, ids[0]).await, None);
    assert_eq!(details(&mut connection, ids[0]).await, ["", ""]);
    assert_eq!(
        address(&mut connection, ids[1]).await.as_deref(),
        Some("bo@example.com"),
        "a delivery that may still be sent keeps its address"
    );
    assert_eq!(
        parameters(&mut connection, id).await.0["name"],
        "Quokkabelle",
        "the notification keeps its parameters while a delivery may still need them"
    );
    assert_eq!(
        address(&mut connection, recent_ids[0]).await.as_deref(),
        Some("cy@example.com"),
        "a delivery final for less than the period is kept"
    );
    assert_eq!(clear(&mut connection, 500).await, Cleared::default());

    // The last delivery finishes; a batch of one clears it and then the notification.
    set_state(&mut connection, ids[1], "suppressed", Duration::days(2)).await;
    assert_eq!(
        clear(&mut connection, 1).await,
        Cleared {
            deliveries: 1,
            notifications: 1,
            events: 1
        }
    );
    let empty = serde_json::json!({});
    assert_eq!(
        parameters(&mut connection, id).await,
        (empty.clone(), empty)
    );
    assert_eq!(
        parameters(&mut connection, recent).await.0["name"],
        "Quokkabelle"
    );
    let kinds = herald_db::deliveries::event_kinds(&mut connection, ids[1])
        .await
        .unwrap();
    assert_eq!(kinds, ["accepted", "delivered"], "events stay");
    assert_eq!(
        details(&mut connection, ids[1]).await,
        ["", ""],
        "without their detail"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erase_leaves_a_shared_notification_to_retention_and_suppresses_what_was_not_sent() {
    use herald_db::erasure;
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let (shared, ids) = notification_to(
        &mut connection,
        &[("ada", "ada@example.com"), ("bo", "bo@example.com")],
    )
    .await;
    let (own, own_ids) = notification_to(&mut connection, &[("ada", "ada@example.com")]).await;
    set_state(&mut connection, ids[0], "delivered", Duration::hours(1)).await;
    set_state(&mut connection, ids[1], "delivered", Duration::hours(1)).await;
    set_state(
        &mut connection,
        own_ids[0],
        "retry_wait",
        Duration::hours(1),
    )
    .await;

    let erased = erasure::erase_user(&mut connection, "ada", "ops", Utc::now())
        .await
        .unwrap();
    assert_eq!(
        (
            erased.deliveries,
            erased.cancelled,
            erased.notifications,
            erased.events
        ),
        (2, 1, 1, 2)
    );
    let (state, user_id, last_error) = deliveries::table
        .find(own_ids[0].as_uuid())
        .select((
            deliveries::state,
            deliveries::user_id,
            deliveries::last_error,
        ))
        .first::<(String, Option<String>, Option<String>)>(&mut connection)
        .await
        .unwrap();
    assert_eq!(
        (state.as_str(), user_id, last_error.as_deref()),
        ("suppressed", None, Some(erasure::ERASED_REASON))
    );
    assert_eq!(
        parameters(&mut connection, own).await.0,
        serde_json::json!({})
    );
    assert_eq!(
        parameters(&mut connection, shared).await.0["name"],
        "Quokkabelle",
        "the other user's delivery may be replayed with them until retention clears it"
    );
    assert_eq!(address(&mut connection, ids[0]).await, None);
    assert_eq!(
        address(&mut connection, ids[1]).await.as_deref(),
        Some("bo@example.com")
    );

    // Retention later clears the other user's delivery, and with it the notification.
    set_state(&mut connection, ids[1], "delivered", Duration::days(2)).await;
    assert_eq!(
        clear(&mut connection, 500).await,
        Cleared {
            deliveries: 1,
            notifications: 1,
            events: 1
        },
        "the erased user's deliveries are not cleared again"
    );
    assert_eq!(
        parameters(&mut connection, shared).await.0,
        serde_json::json!({})
    );
    let again = erasure::erase_user(&mut connection, "ada", "ops", Utc::now())
        .await
        .unwrap();
    assert_eq!(
        again,
        erasure::Erased::default(),
        "erasing again erases nothing"
    );
}
