//! Personal data at rest: sealed in the database, readable through the repositories, and
//! resealed under a new key by rotation.

use std::sync::Arc;

use diesel::QueryableByName;
use diesel::sql_types::Bytea;
use diesel_async::RunQueryDsl;
use herald_crypto::{Keyring, LocalKeys, LookupKey};
use herald_db::personal::keys::{self, KeyUsage, SealedUnder};
use herald_db::preferences;
use herald_test_support::TestDatabase;

use crate::{connect, seed};

/// Installs a keyring over the keys in `dir`, sealing under `active`.
fn install(dir: &std::path::Path, active: &str) {
    let keys = LocalKeys::load(dir, active).expect("the keys load");
    herald_crypto::install(Keyring::new(Arc::new(keys), LookupKey::new(&[7; 32])));
}

#[derive(QueryableByName)]
struct Stored {
    #[diesel(sql_type = Bytea)]
    value: Vec<u8>,
}

async fn store_ada_email(connection: &mut diesel_async::AsyncPgConnection) {
    preferences::update(connection, "ada", "test", &[], |record| {
        record.email = Some("ada@example.com".into());
        Ok(())
    })
    .await
    .unwrap();
}

async fn raw_email(connection: &mut diesel_async::AsyncPgConnection) -> Vec<u8> {
    diesel::sql_query("SELECT email AS value FROM user_preferences WHERE user_id = 'ada'")
        .get_result::<Stored>(connection)
        .await
        .unwrap()
        .value
}

fn sealed_under(usage: &[KeyUsage], column: &str) -> Vec<SealedUnder> {
    usage
        .iter()
        .filter(|usage| usage.column == column)
        .map(|usage| usage.sealed_under.clone())
        .collect()
}

#[tokio::test]
async fn personal_values_are_sealed_at_rest_and_rotation_moves_them_to_the_new_key() {
    let database = TestDatabase::new().await;
    let keys_dir = tempfile::tempdir().unwrap();
    herald_crypto::write_new_key(keys_dir.path(), "k1").unwrap();
    install(keys_dir.path(), "k1");
    let mut connection = connect(&database).await;

    store_ada_email(&mut connection).await;
    seed(&mut connection, None).await;
    // A value written before encryption, as the migration left it.
    diesel::sql_query(
        "INSERT INTO user_preferences (user_id, phone, updated_by) \
         VALUES ('old', '\\x00'::bytea || convert_to('+15551234567', 'UTF8'), 'test')",
    )
    .execute(&mut connection)
    .await
    .unwrap();

    let stored = raw_email(&mut connection).await;
    assert!(
        !stored
            .windows(b"ada@".len())
            .any(|window| window == b"ada@"),
        "the address is stored in clear"
    );
    let usage = keys::usage(&mut connection).await.unwrap();
    assert_eq!(
        sealed_under(&usage, "user_preferences.email"),
        [SealedUnder::Key("k1".into())]
    );
    assert_eq!(
        sealed_under(&usage, "user_preferences.phone"),
        [SealedUnder::Clear]
    );
    assert_eq!(
        sealed_under(&usage, "deliveries.address"),
        [SealedUnder::Key("k1".into())]
    );

    // Rotate: k2 becomes active while k1 stays configured, then everything is resealed.
    herald_crypto::write_new_key(keys_dir.path(), "k2").unwrap();
    install(keys_dir.path(), "k2");
    let resealed = keys::reseal(&mut connection, 1).await.unwrap();
    assert_eq!(resealed.left, 0);
    let usage = keys::usage(&mut connection).await.unwrap();
    assert!(
        usage.iter().all(|usage| matches!(
            &usage.sealed_under,
            SealedUnder::Key(key) if key == "k2"
        ) || usage.sealed_under == SealedUnder::Empty),
        "values left outside k2: {usage:?}"
    );
    let non_empty: i64 = usage
        .iter()
        .filter(|usage| usage.sealed_under != SealedUnder::Empty)
        .map(|usage| usage.values)
        .sum();
    assert_eq!(u64::try_from(non_empty).unwrap(), resealed.values);
    assert_eq!(
        keys::reseal(&mut connection, 1).await.unwrap(),
        keys::Resealed { values: 0, left: 0 },
        "idempotent"
    );

    // k1 retired: everything still reads.
    std::fs::remove_file(keys_dir.path().join("k1")).unwrap();
    install(keys_dir.path(), "k2");
    let ada = preferences::get(&mut connection, "ada")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ada.email.unwrap().expose(), "ada@example.com");
    let old = preferences::get(&mut connection, "old")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.phone.unwrap().expose(), "+15551234567");
    assert_ne!(raw_email(&mut connection).await, stored);
}

#[tokio::test]
async fn a_value_sealed_under_a_key_that_is_not_configured_is_an_error_not_garbage() {
    let database = TestDatabase::new().await;
    let keys_dir = tempfile::tempdir().unwrap();
    herald_crypto::write_new_key(keys_dir.path(), "gone").unwrap();
    install(keys_dir.path(), "gone");
    let mut connection = connect(&database).await;
    store_ada_email(&mut connection).await;

    let other_dir = tempfile::tempdir().unwrap();
    herald_crypto::write_new_key(other_dir.path(), "other").unwrap();
    install(other_dir.path(), "other");
    let error = preferences::get(&mut connection, "ada").await.unwrap_err();
    assert!(error.to_string().contains("gone"), "{error}");
}

#[tokio::test]
async fn disabled_contacts_are_keyed_hashes_and_plain_ones_from_before_stay_in_force_until_rekeyed()
{
    use herald_db::contacts;
    use herald_domain::Channel;
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let phone = "+15551234567";
    contacts::disable(
        &mut connection,
        Channel::Sms,
        None,
        &[phone.to_owned()],
        "invalid",
        None,
    )
    .await
    .unwrap();

    let stored: Vec<Vec<u8>> =
        diesel::sql_query("SELECT address_hash AS value FROM disabled_contacts")
            .load::<Stored>(&mut connection)
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.value)
            .collect();
    let plain = {
        use sha2::Digest;
        sha2::Sha256::digest(format!("sms:{phone}").as_bytes()).to_vec()
    };
    assert_eq!(
        stored,
        [contacts::address_hash(Channel::Sms, phone).unwrap()]
    );
    assert_ne!(stored[0], plain, "a plain SHA-256 of the number is stored");
    let found = contacts::disabled_among(&mut connection, &[(Channel::Sms, phone)])
        .await
        .unwrap();
    assert_eq!(found.len(), 1);

    // A row from before keyed hashes: still in force, then replaced by its keyed hash, found
    // from the user's stored phone number.
    let old_phone = "+15559876543";
    preferences::update(&mut connection, "bob", "test", &[], |record| {
        record.phone = Some(old_phone.into());
        Ok(())
    })
    .await
    .unwrap();
    let old_plain = {
        use sha2::Digest;
        sha2::Sha256::digest(format!("sms:{old_phone}").as_bytes()).to_vec()
    };
    diesel::sql_query(
        "INSERT INTO disabled_contacts (channel, address_hash, user_id, reason, keyed) \
         VALUES ('sms', $1, 'bob', 'unsubscribed', false)",
    )
    .bind::<Bytea, _>(&old_plain)
    .execute(&mut connection)
    .await
    .unwrap();
    let still_disabled = |found: Vec<(Channel, String, contacts::Disabled)>| {
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].2.reason, "unsubscribed");
    };
    still_disabled(
        contacts::disabled_among(&mut connection, &[(Channel::Sms, old_phone)])
            .await
            .unwrap(),
    );
    assert_eq!(contacts::plain_hashes(&mut connection).await.unwrap(), 1);
    assert_eq!(
        contacts::rekey_legacy(&mut connection, 10).await.unwrap(),
        (1, 0)
    );
    assert_eq!(contacts::plain_hashes(&mut connection).await.unwrap(), 0);
    still_disabled(
        contacts::disabled_among(&mut connection, &[(Channel::Sms, old_phone)])
            .await
            .unwrap(),
    );
}

#[tokio::test]
async fn a_value_that_does_not_open_fails_its_own_row_and_not_the_batch_that_reads_it() {
    use herald_db::deliveries::{self, BatchClaim};
    let database = TestDatabase::new().await;
    let mut connection = connect(&database).await;
    let (_, lost) = seed(&mut connection, None).await;
    store_ada_email(&mut connection).await;

    // The key those values were sealed under is gone; later values are sealed under another.
    let keys_dir = tempfile::tempdir().unwrap();
    herald_crypto::write_new_key(keys_dir.path(), "other").unwrap();
    install(keys_dir.path(), "other");
    let (_, readable) = seed(&mut connection, None).await;
    preferences::update(&mut connection, "bob", "test", &[], |record| {
        record.email = Some("bob@example.com".into());
        Ok(())
    })
    .await
    .unwrap();

    let answers = deliveries::claim_many(
        &mut connection,
        &[lost, readable],
        std::time::Duration::from_secs(60),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let unreadable = answers
        .iter()
        .find_map(|answer| match answer {
            BatchClaim::Unreadable { claim, problem } if claim.delivery_id == lost => {
                Some(problem.clone())
            }
            _ => None,
        })
        .expect("the delivery whose values do not open is unreadable, alone");
    assert!(unreadable.contains("does not open"), "{unreadable}");
    assert!(answers.iter().any(|answer| matches!(
        answer,
        BatchClaim::Claimed(claimed) if claimed.claim.delivery_id == readable
    )));

    let users = preferences::get_many(&mut connection, &["ada".to_owned(), "bob".to_owned()])
        .await
        .unwrap();
    let ada = users["ada"].as_ref().unwrap_err();
    assert!(
        ada.0.starts_with("user_preferences.") && ada.0.contains("does not open"),
        "{ada}"
    );
    assert_eq!(
        users["bob"]
            .as_ref()
            .unwrap()
            .email
            .as_ref()
            .unwrap()
            .expose(),
        "bob@example.com"
    );
}
