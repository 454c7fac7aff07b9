//! herald-inbox against real PostgreSQL and Redis: the inbox repository, the in-app provider
//! and the pub/sub fan-out.

mod channel;
mod hub;
mod storage;

use std::sync::Arc;
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use herald_config::RedisSettings;
use herald_db::deliveries::{self, BatchClaim};
use herald_db::notifications::{self, Disposition, NewDelivery, NewNotification};
use herald_db::templates::{self, NewTemplate};
use herald_domain::{Category, Channel, DeliveryId, TemplateId, TemplateKey};
use herald_templates::{CompiledVersion, VersionContent};
use herald_test_support::{TestDatabase, TestKeyspace, seed};
use herald_worker::DeliveryContext;
use secrecy::SecretString;

/// A migrated schema and a pool on it.
struct Storage {
    database: TestDatabase,
    pool: herald_db::Pool,
}

impl Storage {
    async fn new() -> Self {
        herald_test_support::init_test_tracing();
        let database = TestDatabase::new().await;
        let pool = herald_db::build_pool(&database.settings()).expect("a pool");
        Self { database, pool }
    }

    async fn connect(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(self.database.url())
            .await
            .expect("connecting to the test schema")
    }

    /// A notification with `count` in-app deliveries to `user_id`; returns the delivery ids.
    async fn in_app_deliveries(&self, user_id: Option<&str>, count: usize) -> Vec<DeliveryId> {
        let mut connection = self.connect().await;
        let template = match templates::find(&mut connection, "order-shipped", None)
            .await
            .expect("finding the template")
        {
            Some(template) => template,
            None => templates::create(
                &mut connection,
                NewTemplate {
                    id: TemplateId::generate(),
                    key: TemplateKey::parse("order-shipped").expect("a template key"),
                    category: Category::parse("orders").expect("a category"),
                    description: String::new(),
                    content: VersionContent::from_stored(serde_json::json!({"in_app": {
                        "title": "Shipped: {{item}}",
                        "body": "Hi {{name}}, your {{item}} is on its way.",
                        "action_url": "https://shop.example/orders/{{order}}",
                    }}))
                    .expect("a template version"),
                    parameters: vec!["item".into(), "name".into(), "order".into()],
                    sample_parameters: None,
                    created_by: "test".into(),
                },
            )
            .await
            .expect("creating the template"),
        };
        let ids: Vec<DeliveryId> = (0..count).map(|_| DeliveryId::generate()).collect();
        notifications::insert(
            &mut connection,
            &NewNotification {
                category: "orders".into(),
                parameters: serde_json::json!({"item": "kettle", "name": "Ada", "order": "42"})
                    .into(),
                deliveries: ids
                    .iter()
                    .enumerate()
                    .map(|(index, id)| NewDelivery {
                        id: *id,
                        channel: Channel::InApp,
                        recipient_index: i32::try_from(index).expect("few deliveries"),
                        user_id: user_id.map(str::to_owned),
                        address: None,
                        locale: None,
                        variant: None,
                        disposition: Disposition::Now,
                    })
                    .collect(),
                ..seed::email_notification(template.id, template.version)
            },
        )
        .await
        .expect("inserting the notification");
        ids
    }

    /// `count` in-app deliveries to `user_id`, each claimed like a worker about to store its
    /// item (an item is stored only while its delivery is being sent).
    async fn deliveries_being_sent(&self, user_id: &str, count: usize) -> Vec<DeliveryId> {
        let ids = self.in_app_deliveries(Some(user_id), count).await;
        let mut connection = self.connect().await;
        let claims = deliveries::claim_many(
            &mut connection,
            &ids,
            Duration::from_secs(60),
            chrono::Utc::now(),
        )
        .await
        .expect("claiming");
        assert!(
            claims
                .iter()
                .all(|claim| matches!(claim, BatchClaim::Claimed(_))),
            "every delivery should be claimable: {claims:?}"
        );
        ids
    }

    /// Claims `delivery_id` like a worker and loads its context.
    async fn claim(&self, delivery_id: DeliveryId) -> DeliveryContext {
        let mut connection = self.connect().await;
        let claims = deliveries::claim_many(
            &mut connection,
            &[delivery_id],
            Duration::from_secs(60),
            chrono::Utc::now(),
        )
        .await
        .expect("claiming");
        let [BatchClaim::Claimed(claimed)] = claims.as_slice() else {
            panic!("the delivery should be claimable: {claims:?}");
        };
        let mut contents = deliveries::template_contents(&mut connection, &[claimed.template])
            .await
            .expect("loading the template version");
        let version = contents
            .remove(&claimed.template)
            .expect("the claimed template version")
            .expect("a readable template version");
        DeliveryContext::claimed(
            claimed.delivery.clone(),
            Arc::new(CompiledVersion::new(version)),
        )
    }
}

/// Redis settings for `keyspace`, optionally at another URL (a proxy, a closed port).
fn redis_settings(keyspace: &TestKeyspace, url: Option<&str>) -> RedisSettings {
    RedisSettings {
        url: SecretString::from(url.unwrap_or(keyspace.url())),
        key_prefix: keyspace.prefix().to_owned(),
        timeout: Duration::from_secs(2),
        ..RedisSettings::default()
    }
}
