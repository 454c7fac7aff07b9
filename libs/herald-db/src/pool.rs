//! The connection pool and migrations.

use diesel::Connection as _;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{self, Object};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures::FutureExt as _;
use herald_config::DatabaseSettings;
use secrecy::ExposeSecret;

use crate::{Error, Result};

/// A pool of async PostgreSQL connections.
pub type Pool = deadpool::Pool<AsyncPgConnection>;

/// A connection checked out of the pool.
pub type Connection = Object<AsyncPgConnection>;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Builds a pool from settings. Connects lazily: building never touches the network.
///
/// Checkouts do not ping (`RecyclingMethod::Fast`): a `SELECT 1` per checkout would be one
/// more round trip on every hot path. A connection the server closed (a restart) is seen as
/// closed by the client and replaced; one that dies silently fails its next query, which
/// every caller already treats as PostgreSQL being unavailable.
///
/// Every connection plans each statement for its own parameters
/// (`plan_cache_mode = force_custom_plan`). Statements are prepared once per connection, and
/// PostgreSQL would otherwise switch a statement to a generic plan after five runs and keep
/// it for the connection's life. A generic plan made while a table was still small (every
/// fresh deployment, every test) scans the whole table for `id = ANY($1)`: measured in the
/// bench, a worker's claim of 18 deliveries read 1,850 pages and took 26 ms instead of well
/// under one. Planning a batch statement costs far less than one such scan.
pub fn build_pool(settings: &DatabaseSettings) -> Result<Pool> {
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(|url| establish(url).boxed());
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

/// Connects to `url` and sets the session up as `build_pool` describes.
async fn establish(url: &str) -> diesel::ConnectionResult<AsyncPgConnection> {
    let mut connection =
        <AsyncPgConnection as diesel_async::AsyncConnection>::establish(url).await?;
    diesel::sql_query("SET plan_cache_mode = force_custom_plan")
        .execute(&mut connection)
        .await
        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    Ok(connection)
}

/// Checks a connection out of `pool`, mapping every failure to `Error::Unavailable`.
pub async fn connection(pool: &Pool) -> Result<Connection> {
    Ok(pool.get().await?)
}

/// Applies every pending embedded migration to the database at `url`, returning the
/// versions applied.
pub async fn run_migrations(url: &str) -> Result<Vec<String>> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut connection = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)
            .map_err(|error| Error::Unavailable(error.to_string()))?;
        let applied = connection
            .run_pending_migrations(MIGRATIONS)
            .map_err(|error| Error::Corrupt(format!("migration failed: {error}")))?;
        Ok(applied.iter().map(ToString::to_string).collect())
    })
    .await
    .map_err(|error| Error::Unavailable(format!("migration task failed: {error}")))?
}
