//! The writer against a real PostgreSQL schema.

use std::time::Duration;

use herald_db::notifications::{Inserted, NewNotification};
use herald_domain::TemplateId;
use herald_test_support::{TestDatabase, seed};

use super::{SubmitWriter, WriterLimits};

async fn pool_with_template(database: &TestDatabase) -> (herald_db::Pool, TemplateId) {
    let pool = herald_db::build_pool(&database.settings()).unwrap();
    let mut connection = herald_db::connection(&pool).await.unwrap();
    let template = herald_db::templates::create(&mut connection, seed::welcome_template())
        .await
        .unwrap();
    (pool, template.id)
}

fn notification(template_id: TemplateId, category: &str) -> NewNotification {
    NewNotification {
        category: category.into(),
        ..seed::email_notification(template_id, 1)
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
