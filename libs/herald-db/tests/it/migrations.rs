//! `run_migrations` under its advisory lock: concurrent runs (one initContainer per new pod)
//! against one schema all succeed and apply each migration once.

use diesel_async::RunQueryDsl;
use herald_db::Connector;
use herald_test_support::TestDatabase;

/// The migrations embedded in herald-db: one directory each under `migrations/`.
fn migration_count() -> usize {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations"))
        .expect("the migrations directory")
        .filter(|entry| entry.as_ref().is_ok_and(|entry| entry.path().is_dir()))
        .count()
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    count: i64,
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_migrate_runs_all_succeed_and_apply_each_migration_once() {
    let database = TestDatabase::unmigrated().await;
    let connector = Connector::plain(database.url());

    let (first, second, third) = tokio::join!(
        herald_db::run_migrations(&connector),
        herald_db::run_migrations(&connector),
        herald_db::run_migrations(&connector),
    );

    let mut runs = [first.unwrap(), second.unwrap(), third.unwrap()];
    runs.sort_by_key(Vec::len);
    let count = migration_count();
    assert!(count > 10, "{count} migrations found");
    assert_eq!(
        runs.iter().map(Vec::len).collect::<Vec<_>>(),
        [0, 0, count],
        "one run applies every migration, the others find nothing left: {runs:?}"
    );
    let mut connection = connector.connect().await.unwrap();
    let recorded: Count =
        diesel::sql_query("SELECT count(*) AS count FROM __diesel_schema_migrations")
            .get_result(&mut connection)
            .await
            .unwrap();
    assert_eq!(usize::try_from(recorded.count).unwrap(), count);
    assert!(
        herald_db::run_migrations(&connector)
            .await
            .unwrap()
            .is_empty()
    );
}
