//! herald-naive against the real PostgreSQL and RabbitMQ (its own schema and vhost).

use std::time::Duration;

use herald_naive::{CONCURRENCY, PREFETCH, Settings};
use herald_test_support::{TestVhost, required_env};

/// A schema of its own, dropped afterwards.
struct TestSchema {
    name: String,
    url: String,
}

impl TestSchema {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Self {
            name: format!("naive_test_{nanos:x}_{}", std::process::id()),
            url: required_env("TEST_DATABASE_URL"),
        }
    }

    async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connecting to TEST_DATABASE_URL");
        tokio::spawn(connection);
        client
    }

    async fn drop_schema(&self) {
        self.client()
            .await
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            .await
            .expect("dropping the test schema");
    }
}

#[tokio::test]
async fn every_item_goes_through_the_pipeline_and_is_updated_exactly_once() {
    let vhost = TestVhost::new().await;
    let schema = TestSchema::new();
    let settings = Settings {
        database_url: schema.url.clone(),
        amqp_url: vhost.amqp_url().to_owned(),
        count: 500,
        schema: schema.name.clone(),
        queue: "herald-naive.test".to_owned(),
        timeout: Duration::from_secs(60),
    };

    let report = herald_naive::run(&settings).await.expect("the run");
    // A second run starts from a clean table and queue.
    let again = herald_naive::run(&Settings {
        count: 40,
        ..settings.clone()
    })
    .await
    .expect("the second run");

    let rows = schema
        .client()
        .await
        .query_one(
            &format!(
                "SELECT count(*), count(*) FILTER (WHERE updates = 1 AND updated_at IS NOT NULL)
                 FROM \"{}\".items",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    schema.drop_schema().await;

    assert_eq!(report.acked, 500);
    assert!(report.is_exact(), "{report:?}");
    assert_eq!(report.verification.updated_once, 500);
    assert_eq!(
        (report.concurrency, report.prefetch),
        (CONCURRENCY, PREFETCH)
    );
    assert_eq!((CONCURRENCY, PREFETCH), (32, 32), "pinned for the ratios");
    assert_eq!(report.synchronous_commit, "on");
    assert!(report.items_per_second() > 0.0);
    let latency = report.latency_us.expect("item latencies");
    assert!(
        latency.p50 >= 100,
        "an item takes several round trips, not {} µs",
        latency.p50
    );
    let json = report.to_json();
    assert_eq!(json["concurrency"], 32);
    assert_eq!(json["prefetch"], 32);
    assert_eq!(json["verification"]["updated_once"], 500);

    assert!(again.is_exact(), "{again:?}");
    assert_eq!(
        (rows.get::<_, i64>(0), rows.get::<_, i64>(1)),
        (40, 40),
        "the table holds only the second run, every row updated once"
    );
    assert!(
        !queue_exists(vhost.amqp_url(), "herald-naive.test").await,
        "the queue is deleted at the end"
    );
}

/// Whether `queue` exists (a passive declare succeeds).
async fn queue_exists(amqp_url: &str, queue: &str) -> bool {
    let connection = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default())
        .await
        .expect("connecting to the test vhost");
    let channel = connection.create_channel().await.expect("a channel");
    let declared = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await;
    let _closed = connection.close(200, "done".into()).await;
    declared.is_ok()
}
