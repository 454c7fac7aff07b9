use std::collections::BTreeMap;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::keys::KEY_LEN;
use crate::{Cipher, Error, KeyId, LocalKeys, LookupKey, PLAINTEXT, write_new_key};

fn key_id(id: &str) -> KeyId {
    KeyId::parse(id).expect("a valid key id")
}

/// Keys named `ids`, each filled with its id's last byte (so "k1" is the same key everywhere).
fn keys(ids: &[&str], active: &str) -> Arc<LocalKeys> {
    let keys = ids
        .iter()
        .map(|id| {
            let byte = *id.as_bytes().last().expect("a non-empty id");
            (key_id(id), Zeroizing::new([byte; KEY_LEN]))
        })
        .collect::<BTreeMap<_, _>>();
    Arc::new(LocalKeys::from_keys(keys, key_id(active)).expect("the active key is among them"))
}

#[test]
fn a_sealed_value_opens_to_itself_and_does_not_contain_it() {
    let cipher = Cipher::new(keys(&["k1"], "k1"));
    let sealed = cipher.seal(b"ada@example.com").expect("sealed");
    assert!(
        !sealed.windows(3).any(|window| window == b"ada"),
        "the plaintext shows through"
    );
    assert_eq!(Cipher::key_of(&sealed).expect("parsed"), Some("k1"));
    assert_eq!(cipher.open(&sealed).expect("opened"), b"ada@example.com");
    let again = cipher.seal(b"ada@example.com").expect("sealed");
    assert_ne!(
        sealed, again,
        "two seals of one value must differ (fresh nonces)"
    );
}

#[test]
fn empty_and_legacy_values_are_stored_in_clear_and_read_back() {
    let cipher = Cipher::new(keys(&["k1"], "k1"));
    assert_eq!(cipher.seal(b"").expect("sealed"), vec![PLAINTEXT]);
    assert_eq!(cipher.open(&[PLAINTEXT]).expect("opened"), b"");
    let legacy = [&[PLAINTEXT][..], b"+15551234567"].concat();
    assert_eq!(cipher.open(&legacy).expect("opened"), b"+15551234567");
    assert_eq!(Cipher::key_of(&legacy).expect("parsed"), None);
}

#[test]
fn an_altered_value_does_not_open() {
    let cipher = Cipher::new(keys(&["k1"], "k1"));
    let sealed = cipher.seal(b"secret parameters").expect("sealed");
    for position in [3, sealed.len() / 2, sealed.len() - 1] {
        let mut altered = sealed.clone();
        altered[position] ^= 0x01;
        assert!(
            cipher.open(&altered).is_err(),
            "a flipped bit at {position} was accepted"
        );
    }
    assert!(matches!(
        cipher.open(&sealed[..sealed.len() / 3]),
        Err(Error::Corrupt(_) | Error::Crypto)
    ));
    assert!(matches!(cipher.open(b"\x07junk"), Err(Error::Corrupt(_))));
}

#[test]
fn values_under_an_older_key_open_while_it_is_configured_and_not_after() {
    let before = Cipher::new(keys(&["k1"], "k1"));
    let sealed = before.seal(b"+15551234567").expect("sealed");

    let rotated = Cipher::new(keys(&["k1", "k2"], "k2"));
    assert_eq!(rotated.open(&sealed).expect("opened"), b"+15551234567");
    let resealed = rotated.seal(b"+15551234567").expect("sealed");
    assert_eq!(Cipher::key_of(&resealed).expect("parsed"), Some("k2"));
    assert!(resealed.starts_with(&Cipher::prefix_of(&key_id("k2"))));

    let retired = Cipher::new(keys(&["k2"], "k2"));
    assert!(matches!(retired.open(&sealed), Err(Error::UnknownKey(id)) if id == "k1"));
    assert_eq!(retired.open(&resealed).expect("opened"), b"+15551234567");
}

#[test]
fn a_key_with_the_same_id_but_other_bytes_does_not_open_a_value() {
    let sealed = Cipher::new(keys(&["k1"], "k1"))
        .seal(b"hello")
        .expect("sealed");
    let other_bytes = BTreeMap::from([(key_id("k1"), Zeroizing::new([9; KEY_LEN]))]);
    let impostor = Cipher::new(Arc::new(
        LocalKeys::from_keys(other_bytes, key_id("k1")).expect("one key"),
    ));
    assert!(matches!(impostor.open(&sealed), Err(Error::Crypto)));
}

#[test]
fn keys_are_read_from_a_directory_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write_new_key(dir.path(), "data-1").expect("written");
    write_new_key(dir.path(), "lookup-1").expect("written");
    std::fs::write(dir.path().join(".hidden"), "not a key").expect("written");
    assert!(
        matches!(write_new_key(dir.path(), "data-1"), Err(Error::Key(message)) if message.contains("data-1")),
        "an existing key must never be overwritten"
    );
    let loaded = LocalKeys::load(dir.path(), "data-1").expect("loaded");
    let cipher = Cipher::new(Arc::new(loaded));
    let sealed = cipher.seal(b"x").expect("sealed");
    assert_eq!(cipher.open(&sealed).expect("opened"), b"x");

    let missing = LocalKeys::load(dir.path(), "data-2").expect_err("no such key");
    assert!(missing.to_string().contains("data-2"), "{missing}");
    std::fs::write(dir.path().join("broken"), "abc").expect("written");
    let broken = LocalKeys::load(dir.path(), "data-1").expect_err("a broken key file");
    assert!(broken.to_string().contains("broken"), "{broken}");
    assert!(KeyId::parse("../etc").is_err());
    assert!(KeyId::parse("").is_err());
}

#[test]
fn lookup_hashes_are_keyed_and_separated_by_domain_and_part() {
    let one = LookupKey::new(&[1; KEY_LEN]);
    let other = LookupKey::new(&[2; KEY_LEN]);
    let hash = one.hash("contact", &[b"email", b"ada@example.com"]);
    assert_eq!(hash, one.hash("contact", &[b"email", b"ada@example.com"]));
    assert_ne!(hash, other.hash("contact", &[b"email", b"ada@example.com"]));
    assert_ne!(hash, one.hash("rate", &[b"email", b"ada@example.com"]));
    assert_ne!(hash, one.hash("contact", &[b"emailada", b"@example.com"]));
    assert_eq!(one.hex("contact", &[b"x"]).len(), 64);
    assert_eq!(format!("{one:?}"), "LookupKey(<redacted>)");
}
