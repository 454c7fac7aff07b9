//! Engagement events: recorded once, however many times and however concurrently they arrive.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use herald_db::events::{self, Engagement, EngagementKind, Recorded};
use herald_db::schema;
use herald_domain::DeliveryId;
use herald_test_support::TestDatabase;

use crate::seed;

fn click(delivery_id: DeliveryId, link: &str) -> Engagement {
    Engagement {
        delivery_id,
        kind: EngagementKind::Clicked,
        dedupe_key: format!("link:{link}"),
        detail: link.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_duplicates_of_an_engagement_store_exactly_one_row() {
    let database = TestDatabase::new().await;
    let mut connection = AsyncPgConnection::establish(database.url()).await.unwrap();
    let (_, delivery_id) = seed(&mut connection, None).await;
    let notification_id: uuid::Uuid = schema::deliveries::table
        .find(delivery_id.as_uuid())
        .select(schema::deliveries::notification_id)
        .first(&mut connection)
        .await
        .unwrap();

    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let url = database.url().to_owned();
        attempts.spawn(async move {
            let mut connection = AsyncPgConnection::establish(&url).await.unwrap();
            events::record_engagement(&mut connection, &click(delivery_id, "https://a.example"))
                .await
                .unwrap()
        });
    }
    let outcomes = attempts.join_all().await;
    let new: Vec<_> = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Recorded::New { .. }))
        .collect();
    assert_eq!(new.len(), 1, "{outcomes:?}");
    let Recorded::New { occurred_at } = new[0] else {
        unreachable!()
    };
    for outcome in &outcomes {
        match outcome {
            Recorded::New { .. } => {}
            Recorded::Already { occurred_at: first } => assert_eq!(first, occurred_at),
            Recorded::UnknownDelivery => panic!("the delivery exists"),
        }
    }

    // Another link is another click; `record_once` (the inbox's path) dedupes read/dismissed.
    assert!(matches!(
        events::record_engagement(&mut connection, &click(delivery_id, "https://b.example"))
            .await
            .unwrap(),
        Recorded::New { .. }
    ));
    let ids = [*delivery_id.as_uuid()];
    assert_eq!(
        events::record_once(&mut connection, EngagementKind::Dismissed, &ids)
            .await
            .unwrap(),
        ids
    );
    assert!(
        events::record_once(&mut connection, EngagementKind::Dismissed, &ids)
            .await
            .unwrap()
            .is_empty()
    );

    let stored = events::for_notification(&mut connection, notification_id.into(), None)
        .await
        .unwrap()
        .unwrap();
    // herald_test_support::seed submits as `test`.
    let submitter = "test";
    assert_eq!(
        events::for_notification(&mut connection, notification_id.into(), Some(submitter))
            .await
            .unwrap()
            .as_ref(),
        Some(&stored),
        "the submitter sees its notification's events"
    );
    assert_eq!(
        events::for_notification(
            &mut connection,
            notification_id.into(),
            Some("someone-else")
        )
        .await
        .unwrap(),
        None,
        "another identity does not even learn that the notification exists"
    );
    let kinds: Vec<&str> = stored.iter().map(|event| event.kind.as_str()).collect();
    assert_eq!(kinds, ["accepted", "clicked", "clicked", "dismissed"]);
    assert_eq!(
        events::record_engagement(&mut connection, &click(DeliveryId::generate(), "x"))
            .await
            .unwrap(),
        Recorded::UnknownDelivery
    );
}
