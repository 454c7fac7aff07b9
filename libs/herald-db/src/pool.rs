//! The connection pool and migrations.

use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{self, Object};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use herald_config::DatabaseSettings;
use secrecy::ExposeSecret;

use crate::{Connector, Error, Result};

/// A pool of async PostgreSQL connections.
pub type Pool = deadpool::Pool<AsyncPgConnection>;

/// A connection checked out of the pool.
pub type Connection = Object<AsyncPgConnection>;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Builds a pool from settings, after installing the process's keyring from
/// `settings.encryption` (personal columns are sealed and opened with it, see `personal`).
/// Connects lazily: building never touches the network.
///
/// Checkouts do not ping (`RecyclingMethod::Fast`): a `SELECT 1` per checkout would be one
/// more round trip on every hot path. A connection the server closed (a restart) is seen as
/// closed by the client and replaced; one that dies silently fails its next query, which
/// every caller already treats as PostgreSQL being unavailable.
pub fn build_pool(settings: &DatabaseSettings) -> Result<Pool> {
    herald_crypto::install(herald_crypto::Keyring::load(&settings.encryption)?);
    let connector = Connector::new(settings)?;
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |_url| {
        let connector = connector.clone();
        Box::pin(async move { connector.connect().await })
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        settings.url.expose_secret(),
        config,
    );
    deadpool::Pool::builder(manager)
        .max_size(settings.max_connections)
        .wait_timeout(Some(settings.acquire_timeout))
        .create_timeout(Some(settings.acquire_timeout))
        .runtime(::deadpool::Runtime::Tokio1)
        .build()
        .map_err(|error| Error::Unavailable(error.to_string()))
}

/// Whether PostgreSQL answers through `pool`: a checkout and `SELECT 1` (the readiness check
/// of every service).
///
/// # Errors
/// `Error::Unavailable` when no connection can be had or the query fails.
pub async fn ping(pool: &Pool) -> Result<()> {
    use diesel_async::RunQueryDsl as _;
    let mut connection = connection(pool).await?;
    diesel::sql_query("SELECT 1")
        .execute(&mut connection)
        .await?;
    Ok(())
}

/// The readiness of a service that needs PostgreSQL: `ping` through `pool`, named
/// `postgresql` (a service adds its other dependencies).
pub fn readiness(pool: &Pool) -> herald_telemetry::Readiness {
    let pool = pool.clone();
    herald_telemetry::Readiness::default().with_check("postgresql", move || {
        let pool = pool.clone();
        async move { ping(&pool).await.map_err(|error| error.to_string()) }
    })
}

/// Checks a connection out of `pool`, mapping every failure to `Error::Unavailable`.
pub async fn connection(pool: &Pool) -> Result<Connection> {
    Ok(pool.get().await?)
}

/// The advisory lock `run_migrations` holds: this class, and the hash of the schema migrated
/// (`current_schema()`), so that runs against one schema wait for each other while runs
/// against different schemas of one database (the test suite's) do not.
const MIGRATION_LOCK_CLASS: i32 = 0x4845_524c; // "HERL"

/// Applies every pending embedded migration to the database `connector` reaches, returning
/// the versions applied.
///
/// Runs under a PostgreSQL advisory lock held by the migration connection from before the
/// first check of what is pending until the connection closes, so concurrent runs (one
/// initContainer per new pod) are safe: one applies the migrations, the others wait and then
/// find nothing left to apply.
pub async fn run_migrations(connector: &Connector) -> Result<Vec<String>> {
    use diesel_async::RunQueryDsl as _;
    let mut connection = connector
        .connect()
        .await
        .map_err(|error| Error::Unavailable(error.to_string()))?;
    let locked: Locked =
        diesel::sql_query("SELECT pg_try_advisory_lock($1, hashtext(current_schema())) AS locked")
            .bind::<diesel::sql_types::Integer, _>(MIGRATION_LOCK_CLASS)
            .get_result(&mut connection)
            .await?;
    if !locked.locked {
        tracing::info!("Another migration run holds the migration lock; waiting for it.");
        diesel::sql_query("SELECT pg_advisory_lock($1, hashtext(current_schema()))")
            .bind::<diesel::sql_types::Integer, _>(MIGRATION_LOCK_CLASS)
            .execute(&mut connection)
            .await?;
    }
    tokio::task::spawn_blocking(move || {
        let mut connection = AsyncConnectionWrapper::<AsyncPgConnection>::from(connection);
        let applied = connection
            .run_pending_migrations(MIGRATIONS)
            .map_err(|error| Error::Corrupt(format!("migration failed: {error}")))?;
        // Dropping the connection closes it, which releases the lock.
        Ok(applied.iter().map(ToString::to_string).collect())
    })
    .await
    .map_err(|error| Error::Unavailable(format!("migration task failed: {error}")))?
}

#[derive(diesel::QueryableByName)]
struct Locked {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    locked: bool,
}
