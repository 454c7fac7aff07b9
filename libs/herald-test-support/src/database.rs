//! A migrated PostgreSQL schema per test.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::{block_on_thread, is_stale, required_env, unique_name};

/// A fresh, migrated schema, dropped with the value.
#[derive(Debug)]
pub struct TestDatabase {
    schema: String,
    base_url: String,
    url: String,
}

impl TestDatabase {
    /// Creates and migrates a new schema, and installs the test keyring (personal columns
    /// are sealed with it) unless one is installed.
    ///
    /// # Panics
    /// When PostgreSQL is unreachable or migrations fail.
    pub async fn new() -> Self {
        let database = Self::unmigrated().await;
        herald_db::run_migrations(&herald_db::Connector::plain(database.url()))
            .await
            .expect("migrating the test schema");
        database
    }

    /// Creates a new, empty schema (no migration applied), for tests of the migrations
    /// themselves; installs the test keyring as `new` does.
    ///
    /// # Panics
    /// When PostgreSQL is unreachable.
    pub async fn unmigrated() -> Self {
        crate::TestCerts::get().install_keyring();
        let base_url = required_env("TEST_DATABASE_URL");
        let mut connection = AsyncPgConnection::establish(&base_url)
            .await
            .unwrap_or_else(|error| panic!("cannot connect to TEST_DATABASE_URL: {error}"));
        sweep(&mut connection).await;
        let schema = unique_name("test", '_');
        diesel::sql_query(format!("CREATE SCHEMA \"{schema}\""))
            .execute(&mut connection)
            .await
            .expect("creating the test schema");
        let separator = if base_url.contains('?') { '&' } else { '?' };
        let url = format!("{base_url}{separator}options=-csearch_path%3D{schema}");
        Self {
            schema,
            base_url,
            url,
        }
    }

    /// The URL that selects this schema.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Pool settings for this schema: its URL and the test keys, other fields as default.
    pub fn settings(&self) -> herald_config::DatabaseSettings {
        herald_config::DatabaseSettings {
            url: self.url.clone().into(),
            encryption: crate::TestCerts::get().encryption(),
            ..herald_config::DatabaseSettings::default()
        }
    }

    /// The schema's name.
    pub fn schema(&self) -> &str {
        &self.schema
    }
}

async fn sweep(connection: &mut AsyncPgConnection) {
    #[derive(diesel::QueryableByName)]
    struct Schema {
        #[diesel(sql_type = diesel::sql_types::Text)]
        nspname: String,
    }
    let schemas: Vec<Schema> =
        diesel::sql_query("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'test\\_%'")
            .load(connection)
            .await
            .unwrap_or_default();
    for schema in schemas
        .into_iter()
        .filter(|schema| is_stale(&schema.nspname, '_'))
    {
        let _ignored = diesel::sql_query(format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            schema.nspname
        ))
        .execute(connection)
        .await;
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let base_url = self.base_url.clone();
        let schema = self.schema.clone();
        block_on_thread(async move {
            if let Ok(mut connection) = AsyncPgConnection::establish(&base_url).await {
                let _ignored =
                    diesel::sql_query(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .execute(&mut connection)
                        .await;
            }
        });
    }
}
