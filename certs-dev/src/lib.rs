#![doc = include_str!("../README.md")]

use std::path::Path;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// The files `generate` writes, all of which must exist for the set to be complete.
pub const FILES: [&str; 21] = [
    "ca.pem",
    "ca.key",
    "api-server.pem",
    "api-server.key",
    "postgres.pem",
    "postgres.key",
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
    "revoked.pem",
    "revoked.key",
    "expired.pem",
    "expired.key",
    "ca.crl.pem",
];

/// The identity of the `orders` client, which the `revoked` and `expired` certificates claim
/// too: a configured principal whose old certificates must no longer be accepted.
pub const ORDERS_IDENTITY: &str = "spiffe://herald.local/service/orders";

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
    let write_pair = |name: &str, pair: Issued| {
        write(&format!("{name}.pem"), pair.certificate)?;
        write(&format!("{name}.key"), pair.key)
    };

    let ca = Authority::new("Herald Dev CA")?;
    write("ca.pem", ca.pem())?;
    write("ca.key", ca.key_pem())?;
    write_pair("api-server", ca.server("spiffe://herald.local/api-server")?)?;
    // The local PostgreSQL serves this one over TLS (./scripts/postgres-tls).
    write_pair("postgres", ca.server("spiffe://herald.local/postgres")?)?;
    for (name, identity) in [
        ("orders", ORDERS_IDENTITY),
        ("admin", "spiffe://herald.local/admin/ops"),
        ("stranger", "spiffe://herald.local/service/stranger"),
    ] {
        write_pair(name, ca.client(identity)?)?;
    }
    // A certificate of a configured identity that the CA has revoked, and the CRL saying so.
    let revoked_serial = SerialNumber::from_slice(&[0x0d, 0xea, 0xd0]);
    let mut revoked = client_params(ORDERS_IDENTITY)?;
    revoked.serial_number = Some(revoked_serial.clone());
    write_pair("revoked", ca.issue(revoked, "revoked")?)?;
    write("ca.crl.pem", ca.crl(&[revoked_serial])?)?;
    // One that expired yesterday (relative to now, so it is expired whenever it is made).
    let mut expired = client_params(ORDERS_IDENTITY)?;
    let now = OffsetDateTime::now_utc();
    expired.not_before = now - Duration::days(30);
    expired.not_after = now - Duration::days(1);
    write_pair("expired", ca.issue(expired, "expired")?)?;

    let untrusted = Authority::new("Untrusted CA")?;
    write("untrusted-ca.pem", untrusted.pem())?;
    write("untrusted-ca.key", untrusted.key_pem())?;
    write_pair(
        "intruder",
        untrusted.client("spiffe://herald.local/admin/ops")?,
    )?;
    ensure_keys(out_dir)
}

/// A certificate and its private key, both PEM.
#[derive(Debug)]
pub struct Issued {
    /// The PEM certificate.
    pub certificate: String,
    /// The PEM private key.
    pub key: String,
}

/// A CA together with its key, able to sign leaves and revocation lists (also used by tests
/// that rotate or revoke certificates).
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// A new self-signed CA named `name`.
    ///
    /// # Errors
    /// When rcgen cannot make the key or the certificate.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Self { issuer })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A server certificate for `localhost` and `127.0.0.1`, also naming `identity`.
    ///
    /// # Errors
    /// When rcgen cannot make the certificate.
    pub fn server(&self, identity: &str) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .subject_alt_names
            .push(SanType::URI(identity.try_into()?));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, "server")
    }

    /// A client certificate naming `identity` (its URI SAN).
    ///
    /// # Errors
    /// When rcgen cannot make the certificate.
    pub fn client(&self, identity: &str) -> anyhow::Result<Issued> {
        self.issue(client_params(identity)?, "client")
    }

    /// A leaf with `params`, named `common_name`, signed by this CA.
    ///
    /// # Errors
    /// When rcgen cannot make the key or the certificate.
    pub fn issue(
        &self,
        mut params: CertificateParams,
        common_name: &str,
    ) -> anyhow::Result<Issued> {
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            certificate: certificate.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A PEM CRL revoking the certificates with these serial numbers, valid from a minute ago
    /// for a year.
    ///
    /// # Errors
    /// When rcgen cannot sign it.
    pub fn crl(&self, revoked: &[SerialNumber]) -> anyhow::Result<String> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(1),
            next_update: now + Duration::days(365),
            crl_number: SerialNumber::from(1),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial_number| RevokedCertParams {
                    serial_number: serial_number.clone(),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// Parameters of a client certificate naming `identity`, for `Authority::issue`.
///
/// # Errors
/// When `identity` is not a valid URI SAN.
pub fn client_params(identity: &str) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(identity.try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}
