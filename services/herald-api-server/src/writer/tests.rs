//! The writer against a real PostgreSQL schema.

use std::time::Duration;

use herald_db::notifications::{Disposition, Inserted, NewDelivery, NewNotification};
use herald_domain::{Channel, DeliveryId, NotificationId, Priority, TemplateId};
use herald_test_support::TestDatabase;

use super::{SubmitWriter, WriterLimits};

async fn pool_with_template(database: &TestDatabase) -> (herald_db::Pool, TemplateId) {
    let pool = herald_db::build_pool(&herald_config::DatabaseSettings {
        url: database.url().to_owned().into(),
        ..herald_config::DatabaseSettings::default()
    })
    .unwrap();
    let mut connection = herald_db::connection(&pool).await.unwrap();
    let template = herald_db::templates::create(
        &mut connection,
        herald_db::templates::NewTemplate {
            id: TemplateId::generate(),
            key: "welcome".into(),
            category: "onboarding".into(),
            description: String::new(),
            content: serde_json::json!({"email": {"subject": "s", "html": "", "text": "t"}}),
            parameters: vec![],
            sample_parameters: None,
            created_by: "test".into(),
        },
    )
    .await
    .unwrap();
    (pool, template.id)
}

fn notification(template_id: TemplateId, category: &str) -> NewNotification {
    NewNotification {
        id: NotificationId::generate(),
        submitted_by: "test".into(),
        idempotency_key: None,
        idempotency_retention: Duration::from_secs(3600),
        request_hash: vec![1],
        template_id,
        template_version: 1,
        category: category.into(),
        priority: Priority::Normal,
        parameters: serde_json::json!({}),
        metadata: serde_json::json!({}),
        trace_context: serde_json::json!({}),
        accepted_at: chrono::Utc::now(),
        deliveries: vec![NewDelivery {
            id: DeliveryId::generate(),
            channel: Channel::Email,
            recipient_index: 0,
            user_id: None,
            address: Some("ada@example.com".into()),
            locale: None,
            variant: None,
            disposition: Disposition::Now,
        }],
    }
}

// A current-thread runtime: every submit below is queued before the collector first runs, so
// they share one batch.
#[tokio::test]
async fn a_bad_submit_in_a_batch_fails_alone_and_the_others_are_written() {
    let database = TestDatabase::new().await;
    let (pool, template_id) = pool_with_template(&database).await;
    let writer = SubmitWriter::spawn(
        pool.clone(),
        WriterLimits {
            max_items: 100,
            max_deliveries: 1000,
            linger: Duration::ZERO,
            writers: 1,
        },
    );
    // PostgreSQL refuses a NUL character in text: the batch transaction fails.
    let bad = notification(template_id, "on\u{0}boarding");
    let good = [
        notification(template_id, "onboarding"),
        notification(template_id, "onboarding"),
    ];
    let ids = [good[0].id, bad.id, good[1].id];
    let [first, last] = good;

    let (first, refused, last) =
        tokio::join!(writer.write(first), writer.write(bad), writer.write(last),);

    assert_eq!(first.unwrap(), Inserted::Created);
    assert_eq!(last.unwrap(), Inserted::Created);
    assert!(refused.is_err());
    let mut connection = herald_db::connection(&pool).await.unwrap();
    let mut stored = Vec::new();
    for id in ids {
        stored.push(
            herald_db::notifications::load(&mut connection, id)
                .await
                .unwrap()
                .is_some(),
        );
    }
    assert_eq!(stored, [true, false, true]);
}
