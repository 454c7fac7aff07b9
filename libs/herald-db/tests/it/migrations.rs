//! `run_migrations` under its advisory lock: concurrent runs (one initContainer per new pod)
//! against one schema all succeed and apply each migration once; and every migration says
//! what the release before it does on the migrated schema (`migrations/README.md`).

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

/// The migrations directory.
const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations");

/// Statements after which the release before a migration cannot keep working: it reads or
/// writes what they drop, rename, retype or make mandatory.
const BREAKING: [&str; 5] = [
    "DROP COLUMN",
    "DROP TABLE",
    "RENAME ",
    " TYPE ",
    "SET NOT NULL",
];

/// `migrations/README.md`'s table of what the previous release does on each migrated schema:
/// migration name and verdict.
fn compatibility_rows() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(format!("{MIGRATIONS}/README.md")).unwrap();
    let table = readme
        .split("| migration | previous release | why |")
        .nth(1)
        .expect("the README's table of the previous release against each migration");
    table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_owned(), cells[2].to_owned())
        })
        .collect()
}

/// The `BREAKING` statements in `sql`, comments left out, whatever its case and spacing.
fn breaking(sql: &str) -> Vec<&'static str> {
    let code: Vec<&str> = sql
        .lines()
        .map(|line| line.split("--").next().unwrap_or_default())
        .collect();
    let flat = code
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase();
    BREAKING
        .into_iter()
        .filter(|statement| flat.contains(statement))
        .collect()
}

#[test]
fn every_migration_says_what_the_previous_release_does_on_its_schema() {
    let mut directories: Vec<String> = std::fs::read_dir(MIGRATIONS)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    directories.sort();
    let rows = compatibility_rows();
    let named: Vec<String> = rows.iter().map(|(name, _)| name.clone()).collect();
    assert_eq!(
        named, directories,
        "migrations/README.md needs one row per migration, in order"
    );
    for (name, verdict) in &rows {
        assert!(
            ["works", "stop first", "first"].contains(&verdict.as_str()),
            "{name}: the verdict must be works, stop first or first, not `{verdict}`"
        );
        let sql = std::fs::read_to_string(format!("{MIGRATIONS}/{name}/up.sql")).unwrap();
        let breaking = breaking(&sql);
        assert!(
            verdict != "works" || breaking.is_empty(),
            "{name} is marked `works` but has {breaking:?}: the release before it reads or \
             writes what that changes; mark it `stop first` and say why, or split it into an \
             expand now and a contract one release later"
        );
    }
}

#[test]
fn breaking_statements_are_found_whatever_their_spacing_and_comments_are_not() {
    let table = [
        (
            "ALTER TABLE deliveries\n    drop   column  address;",
            vec!["DROP COLUMN"],
        ),
        (
            "ALTER TABLE t ALTER COLUMN c TYPE bytea USING c::bytea;",
            vec![" TYPE "],
        ),
        (
            "ALTER TABLE t ALTER COLUMN c SET NOT NULL;",
            vec!["SET NOT NULL"],
        ),
        ("ALTER TABLE t RENAME COLUMN a TO b;", vec!["RENAME "]),
        (
            "-- DROP TABLE t once it is unused\nALTER TABLE t ADD COLUMN c text;",
            vec![],
        ),
        (
            "ALTER TABLE t ADD COLUMN c boolean NOT NULL DEFAULT false;",
            vec![],
        ),
    ];
    for (sql, expected) in table {
        assert_eq!(breaking(sql), expected, "{sql}");
    }
}
