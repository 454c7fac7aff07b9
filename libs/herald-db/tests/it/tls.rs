//! Connections to PostgreSQL over TLS (`database.tls.mode = "verify-full"`), against the shared
//! server, which `./scripts/postgres-tls` (run by `./scripts/test`) serves over TLS with the
//! development certificate.

use std::path::PathBuf;

use diesel::sql_types::Bool;
use diesel_async::RunQueryDsl;
use herald_config::{DatabaseSettings, DatabaseTlsMode, DatabaseTlsSettings};
use herald_db::{Connector, Error};
use herald_test_support::{TestCerts, TestDatabase, required_env};

#[derive(diesel::QueryableByName)]
struct Encrypted {
    #[diesel(sql_type = Bool)]
    ssl: bool,
}

async fn over_tls(connection: &mut diesel_async::AsyncPgConnection) -> bool {
    diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result::<Encrypted>(connection)
        .await
        .unwrap()
        .ssl
}

fn verify_full(database: &TestDatabase, ca: PathBuf) -> DatabaseSettings {
    DatabaseSettings {
        tls: DatabaseTlsSettings {
            mode: DatabaseTlsMode::VerifyFull,
            ca,
        },
        ..database.settings()
    }
}

/// The CA that signed the certificate the local PostgreSQL serves.
fn server_ca() -> PathBuf {
    required_env("TEST_DATABASE_TLS_CA").into()
}

#[tokio::test]
async fn verify_full_reaches_postgresql_over_tls_for_the_pool_the_listener_and_migrations() {
    let database = TestDatabase::new().await;
    let settings = verify_full(&database, server_ca());
    let pool = herald_db::build_pool(&settings).unwrap();
    let mut connection = herald_db::connection(&pool).await.unwrap();
    assert!(over_tls(&mut connection).await);
    // The plain connections of the rest of the suite are plain indeed.
    let mut plain = Connector::plain(database.url()).connect().await.unwrap();
    assert!(!over_tls(&mut plain).await);

    let connector = Connector::new(&settings).unwrap();
    let listener = herald_db::listen::Listener::connect(&connector, "herald_tls_test:")
        .await
        .unwrap();
    assert!(listener.channel().ends_with(database.schema()));
    // Already migrated: nothing to apply, over TLS.
    assert!(
        herald_db::run_migrations(&connector)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn verify_full_refuses_a_server_whose_certificate_another_ca_signed() {
    let database = TestDatabase::new().await;
    // The test process's own CA, which did not sign the server's certificate.
    let settings = verify_full(&database, TestCerts::get().path("ca.pem"));
    let pool = herald_db::build_pool(&settings).unwrap();
    let Err(error) = herald_db::connection(&pool).await else {
        panic!("a server certificate from another CA was accepted");
    };
    assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
    assert!(
        error.to_string().to_lowercase().contains("tls handshake"),
        "{error}"
    );
}

#[test]
fn a_ca_file_without_a_certificate_is_refused_naming_the_setting() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "not a certificate").unwrap();
    let settings = DatabaseSettings {
        tls: DatabaseTlsSettings {
            mode: DatabaseTlsMode::VerifyFull,
            ca: file.path().to_owned(),
        },
        ..DatabaseSettings::default()
    };
    let error = Connector::new(&settings).unwrap_err();
    assert!(error.to_string().contains("database.tls.ca"), "{error}");
}
