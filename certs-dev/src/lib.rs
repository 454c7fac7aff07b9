#![doc = include_str!("../README.md")]

use std::path::Path;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// The files `generate` writes, all of which must exist for the set to be complete.
pub const FILES: [&str; 14] = [
    "ca.pem",
    "ca.key",
    "api-server.pem",
    "api-server.key",
    "orders.pem",
    "orders.key",
    "admin.pem",
    "admin.key",
    "stranger.pem",
    "stranger.key",
    "untrusted-ca.pem",
    "untrusted-ca.key",
    "intruder.pem",
    "intruder.key",
];

/// True when every file of the set exists in `out_dir`.
pub fn is_complete(out_dir: &Path) -> bool {
    FILES.iter().all(|file| out_dir.join(file).is_file())
}

/// The development encryption keys `ensure_keys` writes into `<out_dir>/keys`: the key that
/// wraps data keys and the lookup-hash key (`[database.encryption]` in `config/base.toml`).
pub const KEYS: [&str; 2] = ["dev-data-1", "dev-lookup-1"];

/// Writes each of `KEYS` into `<out_dir>/keys` unless it exists. Keys are never replaced,
/// not even by `--force`: the values sealed under them would be lost.
pub fn ensure_keys(out_dir: &Path) -> anyhow::Result<()> {
    let dir = out_dir.join("keys");
    for id in KEYS {
        if !dir.join(id).is_file() {
            herald_crypto::write_new_key(&dir, id)
                .with_context(|| format!("could not write the key {id}"))?;
        }
    }
    Ok(())
}

/// Writes a fresh CA, server and client certificates into `out_dir`, and the encryption keys
/// that are missing (`ensure_keys`).
pub fn generate(out_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("could not create {}", out_dir.display()))?;
    let write = |name: &str, contents: String| {
        let path = out_dir.join(name);
        std::fs::write(&path, contents)
            .with_context(|| format!("could not write {}", path.display()))
    };

    let ca = certificate_authority("Herald Dev CA")?;
    write("ca.pem", ca.pem())?;
    write("ca.key", ca.key().serialize_pem())?;

    let mut server = CertificateParams::new(vec!["localhost".to_owned()])?;
    server
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    server
        .subject_alt_names
        .push(SanType::URI("spiffe://herald.local/api-server".try_into()?));
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf(&ca, server, "api-server", &write)?;

    for (name, identity) in [
        ("orders", "spiffe://herald.local/service/orders"),
        ("admin", "spiffe://herald.local/admin/ops"),
        ("stranger", "spiffe://herald.local/service/stranger"),
    ] {
        leaf(&ca, client_params(identity)?, name, &write)?;
    }

    let untrusted = certificate_authority("Untrusted CA")?;
    write("untrusted-ca.pem", untrusted.pem())?;
    write("untrusted-ca.key", untrusted.key().serialize_pem())?;
    leaf(
        &untrusted,
        client_params("spiffe://herald.local/admin/ops")?,
        "intruder",
        &write,
    )?;
    ensure_keys(out_dir)
}

/// A CA together with its key, able to sign leaves.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn key(&self) -> &KeyPair {
        self.issuer.key()
    }
}

fn certificate_authority(name: &str) -> anyhow::Result<Authority> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    Ok(Authority { issuer })
}

fn client_params(identity: &str) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(identity.try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

fn leaf(
    authority: &Authority,
    mut params: CertificateParams,
    name: &str,
    write: &dyn Fn(&str, String) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, &authority.issuer)?;
    write(&format!("{name}.pem"), certificate.pem())?;
    write(&format!("{name}.key"), key.serialize_pem())
}
