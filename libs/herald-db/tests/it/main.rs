//! herald-db against a real PostgreSQL schema.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom, set-up included"
)]

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use herald_db::deliveries::{self, ClaimOutcome, Outcome};
use herald_db::notifications::{self, Inserted, NewNotification};
use herald_db::schema;
use herald_db::templates;
use herald_domain::{DeliveryId, DeliveryState, Priority};
use herald_test_support::{TestDatabase, seed};

mod batch;
mod encryption;
mod events;
mod migrations;
mod preferences;
mod retention;
mod tls;

async fn connect(database: &TestDatabase) -> AsyncPgConnection {
    AsyncPgConnection::establish(database.url()).await.unwrap()
}

/// Stores a template and a one-delivery notification; returns the delivery id.
async fn seed(
    connection: &mut AsyncPgConnection,
    idempotency_key: Option<&str>,
) -> (Inserted, DeliveryId) {
    let new = new_notification(connection, idempotency_key).await;
    let delivery_id = new.deliveries[0].id;
    let inserted = notifications::insert(connection, &new).await.unwrap();
    (inserted, delivery_id)
}

/// A one-delivery notification of the `welcome` template (stored first if missing), to a
/// `ko-KR` recipient.
async fn new_notification(
    connection: &mut AsyncPgConnection,
    idempotency_key: Option<&str>,
) -> NewNotification {
    let template = match templates::find(connection, "welcome", None).await.unwrap() {
        Some(template) => template,
        None => templates::create(connection, seed::welcome_template())
            .await
            .unwrap(),
    };
    let mut new = seed::email_notification(template.id, template.version);
    new.idempotency_key = idempotency_key.map(str::to_owned);
    new.deliveries[0].locale = Some("ko-KR".into());
    new
}

async fn count_rows(connection: &mut AsyncPgConnection) -> (i64, i64, i64) {
    let notifications: i64 = schema::notifications::table
        .count()
        .get_result(connection)
        .await
        .unwrap();
    let deliveries: i64 = schema::deliveries::table
        .count()
        .get_result(connection)
        .await
        .unwrap();
    let outbox: i64 = schema::outbox::table
        .count()
        .get_result(connection)
        .await
        .unwrap();
    (notifications, deliveries, outbox)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_answers_each_notification_and_a_key_used_twice_in_it_creates_one() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let first = new_notification(&mut connection, Some("k")).await;
    let again = new_notification(&mut connection, Some("k")).await;
    let different = NewNotification {
        request_hash: vec![2],
        ..new_notification(&mut connection, Some("k")).await
    };
    let keyless = new_notification(&mut connection, None).await;
    let other_key = new_notification(&mut connection, Some("other")).await;

    let answers = notifications::insert_batch(
        &mut connection,
        &[first.clone(), again, different, keyless, other_key],
    )
    .await
    .unwrap();

    let bound_to_first = Inserted::KeyExists {
        notification_id: first.id,
        request_hash: vec![1],
    };
    assert_eq!(
        answers,
        [
            Inserted::Created,
            bound_to_first.clone(),
            bound_to_first,
            Inserted::Created,
            Inserted::Created,
        ]
    );
    assert_eq!(count_rows(&mut connection).await, (3, 3, 3));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_with_one_bad_row_writes_nothing() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let good = new_notification(&mut connection, Some("good")).await;
    let mut bad = new_notification(&mut connection, None).await;
    // A NUL character is refused by PostgreSQL's text type.
    bad.category = "on\0boarding".into();

    let result = notifications::insert_batch(&mut connection, &[good.clone(), bad]).await;

    assert!(result.is_err());
    assert_eq!(count_rows(&mut connection).await, (0, 0, 0));
    assert_eq!(
        notifications::insert(&mut connection, &good).await.unwrap(),
        Inserted::Created,
        "the good notification alone is written, with its key"
    );
}

/// One column as `schema.rs` declares it and as PostgreSQL reports it: table, column, type
/// (PostgreSQL's `udt_name`, `_text` for `text[]`) and whether it may be null.
type ColumnShape = (String, String, String, bool);

/// The columns `schema.rs` declares, read from its `diesel::table!` blocks, and each table's
/// primary key.
fn declared_schema() -> (Vec<ColumnShape>, Vec<(String, Vec<String>)>) {
    let text = include_str!("../../src/schema.rs");
    let mut columns = Vec::new();
    let mut keys = Vec::new();
    let mut table: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(current) = &table {
            if line == "}" {
                table = None;
            } else if let Some((column, sql_type)) = line.trim_end_matches(',').split_once(" -> ") {
                let (sql_type, nullable) = match sql_type.strip_prefix("Nullable<") {
                    Some(inner) => (inner.trim_end_matches('>'), true),
                    None => (sql_type, false),
                };
                let udt = match sql_type {
                    "Text" => "text",
                    "Int2" => "int2",
                    "Int4" => "int4",
                    "Int8" => "int8",
                    "Bool" => "bool",
                    "Bytea" => "bytea",
                    "Jsonb" => "jsonb",
                    "Timestamptz" => "timestamptz",
                    "Uuid" => "uuid",
                    "Array<Text>" => "_text",
                    other => panic!(
                        "schema.rs: {current}.{column} has a type this test does not map: {other}"
                    ),
                };
                columns.push((current.clone(), column.to_owned(), udt.to_owned(), nullable));
            }
        } else if let Some((name, rest)) = line.split_once(" (")
            && let Some(key) = rest.strip_suffix(") {")
            && !name.contains(' ')
        {
            table = Some(name.to_owned());
            keys.push((
                name.to_owned(),
                key.split(',')
                    .map(|column| column.trim().to_owned())
                    .collect(),
            ));
        }
    }
    columns.sort();
    keys.sort();
    (columns, keys)
}

#[derive(QueryableByName)]
struct MigratedColumn {
    #[diesel(sql_type = diesel::sql_types::Text)]
    table_name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    column_name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    udt_name: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    nullable: bool,
}

#[derive(QueryableByName)]
struct MigratedKey {
    #[diesel(sql_type = diesel::sql_types::Text)]
    table_name: String,
    #[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::Text>)]
    columns: Vec<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_rs_and_the_migrated_database_have_the_same_columns_types_and_keys() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let mut migrated: Vec<ColumnShape> = diesel::sql_query(
        "SELECT table_name::text, column_name::text, udt_name::text, \
                is_nullable = 'YES' AS nullable \
           FROM information_schema.columns \
          WHERE table_schema = current_schema() \
            AND table_name <> '__diesel_schema_migrations'",
    )
    .load::<MigratedColumn>(&mut connection)
    .await
    .unwrap()
    .into_iter()
    .map(|column| {
        (
            column.table_name,
            column.column_name,
            column.udt_name,
            column.nullable,
        )
    })
    .collect();
    migrated.sort();
    let mut migrated_keys: Vec<(String, Vec<String>)> = diesel::sql_query(
        "SELECT c.relname::text AS table_name, \
                array_agg(a.attname::text ORDER BY k.position) AS columns \
           FROM pg_index i \
           JOIN pg_class c ON c.oid = i.indrelid \
           JOIN pg_namespace n ON n.oid = c.relnamespace \
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) \
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
          WHERE i.indisprimary AND n.nspname = current_schema() \
            AND c.relname <> '__diesel_schema_migrations' \
          GROUP BY c.relname",
    )
    .load::<MigratedKey>(&mut connection)
    .await
    .unwrap()
    .into_iter()
    .map(|key| (key.table_name, key.columns))
    .collect();
    migrated_keys.sort();
    let (declared, declared_keys) = declared_schema();

    let describe = |(table, column, udt, nullable): &ColumnShape| {
        format!(
            "{table}.{column} {udt}{}",
            if *nullable { " null" } else { " not null" }
        )
    };
    let only_in_schema_rs: Vec<String> = declared
        .iter()
        .filter(|column| !migrated.contains(column))
        .map(describe)
        .collect();
    let only_in_database: Vec<String> = migrated
        .iter()
        .filter(|column| !declared.contains(column))
        .map(describe)
        .collect();
    assert!(
        only_in_schema_rs.is_empty() && only_in_database.is_empty(),
        "schema.rs and the migrations disagree.\n  only in schema.rs: {only_in_schema_rs:?}\n  only in the migrated database: {only_in_database:?}"
    );
    assert_eq!(
        declared_keys, migrated_keys,
        "primary keys: schema.rs, then the database"
    );
    assert!(
        declared.len() > 50,
        "the parser read {} columns from schema.rs",
        declared.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_template_key_is_its_own_error() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    templates::create(&mut connection, seed::welcome_template())
        .await
        .unwrap();
    let again = templates::create(&mut connection, seed::welcome_template()).await;
    assert!(
        matches!(&again, Err(herald_db::Error::TemplateKeyTaken { key }) if key == "welcome"),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_idempotency_key_writes_nothing() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    assert_eq!(seed(&mut connection, Some("k")).await.0, Inserted::Created);
    assert!(matches!(
        seed(&mut connection, Some("k")).await.0,
        Inserted::KeyExists { request_hash, .. } if request_hash == [1]
    ));
    let deliveries: i64 = schema::deliveries::table
        .count()
        .get_result(&mut connection)
        .await
        .unwrap();
    let outbox: i64 = schema::outbox::table
        .count()
        .get_result(&mut connection)
        .await
        .unwrap();
    assert_eq!((deliveries, outbox), (1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn only_one_of_two_concurrent_claims_wins() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let (_, delivery_id) = seed(&mut connection, None).await;
    let mut other = connect(&database).await;

    let lease = Duration::from_secs(60);
    let (first, second) = tokio::join!(
        deliveries::claim(&mut connection, delivery_id, lease, chrono::Utc::now()),
        deliveries::claim(&mut other, delivery_id, lease, chrono::Utc::now())
    );

    let outcomes = [first.unwrap(), second.unwrap()];
    let winners: Vec<_> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            ClaimOutcome::Claimed(claim) => Some(claim),
            _ => None,
        })
        .collect();
    assert_eq!(winners.len(), 1);
    assert_eq!(winners[0].attempt, 1);
    assert!(
        outcomes
            .iter()
            .any(|outcome| matches!(outcome, ClaimOutcome::Busy { .. })),
        "the loser sees the winner's lease: {outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outcome_is_recorded_only_by_the_current_claim() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let (_, delivery_id) = seed(&mut connection, None).await;
    let lease = Duration::from_secs(60);
    let ClaimOutcome::Claimed(claim) =
        deliveries::claim(&mut connection, delivery_id, lease, chrono::Utc::now())
            .await
            .unwrap()
    else {
        panic!("the first claim wins");
    };
    let delivered = Outcome::Delivered {
        detail: "smtp: 250".into(),
    };

    assert!(
        deliveries::finish(&mut connection, &claim, &delivered, Some("smtp"))
            .await
            .unwrap()
    );
    // A second write for the same attempt (e.g. a stale worker) changes nothing.
    let failed = Outcome::Failed {
        error: "x".into(),
        class: deliveries::FailureClass::Permanent,
    };
    assert!(
        !deliveries::finish(&mut connection, &claim, &failed, None)
            .await
            .unwrap()
    );
    assert_eq!(
        deliveries::claim(&mut connection, delivery_id, lease, chrono::Utc::now())
            .await
            .unwrap(),
        ClaimOutcome::Done
    );

    let state: String = schema::deliveries::table
        .find(delivery_id.as_uuid())
        .select(schema::deliveries::state)
        .first(&mut connection)
        .await
        .unwrap();
    assert_eq!(state, DeliveryState::Delivered.as_str());
    assert_eq!(
        deliveries::event_kinds(&mut connection, delivery_id)
            .await
            .unwrap(),
        ["accepted", "sending", "sent", "delivered"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_whose_worker_died_mid_attempt_is_taken_over_once_its_lease_expires() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let (_, delivery_id) = seed(&mut connection, None).await;
    let ClaimOutcome::Claimed(abandoned) = deliveries::claim(
        &mut connection,
        delivery_id,
        Duration::ZERO,
        chrono::Utc::now(),
    )
    .await
    .unwrap() else {
        panic!("the first claim wins");
    };

    let ClaimOutcome::Claimed(takeover) = deliveries::claim(
        &mut connection,
        delivery_id,
        Duration::from_secs(60),
        chrono::Utc::now(),
    )
    .await
    .unwrap() else {
        panic!("an expired lease can be taken over");
    };

    assert_eq!(takeover.attempt, abandoned.attempt + 1);
    let late = Outcome::Delivered {
        detail: "late".into(),
    };
    assert!(
        !deliveries::finish(&mut connection, &abandoned, &late, None)
            .await
            .unwrap(),
        "the abandoned attempt can no longer record an outcome"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_idempotency_keys_are_replaced_and_cleaned_up() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    assert_eq!(seed(&mut connection, Some("k")).await.0, Inserted::Created);
    expire_every_idempotency_key(&mut connection).await;
    assert!(
        notifications::find_by_idempotency_key(&mut connection, "test", "k")
            .await
            .unwrap()
            .is_none(),
        "an expired key binds nothing"
    );
    assert_eq!(seed(&mut connection, Some("k")).await.0, Inserted::Created);

    expire_every_idempotency_key(&mut connection).await;
    let deleted =
        notifications::delete_expired_idempotency_keys(&mut connection, chrono::Utc::now(), 100)
            .await
            .unwrap();
    assert_eq!(deleted, 1);
}

async fn expire_every_idempotency_key(connection: &mut AsyncPgConnection) {
    diesel::update(schema::idempotency_keys::table)
        .set(
            schema::idempotency_keys::expires_at
                .eq(chrono::Utc::now() - chrono::Duration::seconds(1)),
        )
        .execute(connection)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_released_claim_can_be_claimed_again_at_once() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let (_, delivery_id) = seed(&mut connection, None).await;
    let lease = Duration::from_secs(60);
    let ClaimOutcome::Claimed(first) =
        deliveries::claim(&mut connection, delivery_id, lease, chrono::Utc::now())
            .await
            .unwrap()
    else {
        panic!("the first claim wins");
    };

    assert!(deliveries::release(&mut connection, &first).await.unwrap());
    assert!(
        !deliveries::release(&mut connection, &first).await.unwrap(),
        "released once"
    );

    let ClaimOutcome::Claimed(second) =
        deliveries::claim(&mut connection, delivery_id, lease, chrono::Utc::now())
            .await
            .unwrap()
    else {
        panic!("a released delivery is claimable without waiting for the lease");
    };
    assert_eq!(
        second.attempt, first.attempt,
        "no provider call was made, so no attempt is counted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_takes_the_most_urgent_due_rows_first_then_the_oldest() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let mut bulk = Vec::new();
    for _ in 0..3 {
        let new = NewNotification {
            priority: Priority::Low,
            ..new_notification(&mut connection, None).await
        };
        notifications::insert(&mut connection, &new).await.unwrap();
        bulk.push(new.deliveries[0].id);
    }
    let critical = NewNotification {
        priority: Priority::Critical,
        ..new_notification(&mut connection, None).await
    };
    notifications::insert(&mut connection, &critical)
        .await
        .unwrap();

    let rows = herald_db::outbox::lock_unpublished(&mut connection, chrono::Utc::now(), 10)
        .await
        .unwrap();

    let order: Vec<DeliveryId> = rows.iter().map(|row| row.delivery_id).collect();
    assert_eq!(order[0], critical.deliveries[0].id);
    assert_eq!(order[1..], bulk[..]);
}

#[tokio::test]
async fn a_published_row_leaves_the_outbox_and_its_delivery_is_queued() {
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let published = new_notification(&mut connection, None).await;
    notifications::insert(&mut connection, &published)
        .await
        .unwrap();
    let waiting = new_notification(&mut connection, None).await;
    notifications::insert(&mut connection, &waiting)
        .await
        .unwrap();
    let delivery = published.deliveries[0].id;

    let rows = herald_db::outbox::lock_unpublished(&mut connection, chrono::Utc::now(), 10)
        .await
        .unwrap();
    let confirmed: Vec<_> = rows
        .iter()
        .filter(|row| row.delivery_id == delivery)
        .collect();
    assert_eq!(confirmed.len(), 1);
    herald_db::outbox::mark_published(&mut connection, &confirmed)
        .await
        .unwrap();

    let left: Vec<uuid::Uuid> = schema::outbox::table
        .select(schema::outbox::delivery_id)
        .load(&mut connection)
        .await
        .unwrap();
    assert_eq!(left, [*waiting.deliveries[0].id.as_uuid()]);
    assert_eq!(
        deliveries::event_kinds(&mut connection, delivery)
            .await
            .unwrap(),
        ["accepted", "queued"]
    );
    let state: String = schema::deliveries::table
        .find(delivery.as_uuid())
        .select(schema::deliveries::state)
        .get_result(&mut connection)
        .await
        .unwrap();
    assert_eq!(state, DeliveryState::Queued.as_str());
    assert_eq!(
        herald_db::outbox::backlog(&mut connection).await.unwrap().0,
        1
    );
}
