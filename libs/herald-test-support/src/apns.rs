//! A loopback APNs server: HTTP/2 only over TLS (ALPN `h2`) with a certificate from its own
//! CA, checking requests the way Apple does: the ES256 provider token (`kid`, `iss`, age),
//! `apns-topic`, `apns-push-type`, `apns-priority`, `apns-expiration`, `apns-collapse-id`,
//! `apns-id`, the device token in the path and the JSON payload.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};
use tokio_rustls::rustls;

use crate::lock;

/// The largest payload APNs accepts for an alert, in bytes.
const MAX_PAYLOAD_BYTES: usize = 4096;

/// The longest `apns-collapse-id`, in bytes.
const MAX_COLLAPSE_ID_BYTES: usize = 64;

/// Provider tokens older than this are refused with `ExpiredProviderToken`.
const MAX_PROVIDER_TOKEN_AGE_SECS: u64 = 3600;

/// The bundle id the server accepts as `apns-topic`.
const TOPIC: &str = "com.example.herald";

/// One notification APNs accepted.
#[derive(Debug, Clone)]
pub struct ReceivedNotification {
    /// The device token from the path.
    pub device_token: String,
    /// Request headers (`authorization`, `apns-*`).
    pub headers: HeaderMap,
    /// The JSON payload.
    pub payload: Value,
}

impl ReceivedNotification {
    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

struct Shared {
    key_id: String,
    team_id: String,
    decoding_key: DecodingKey,
    requests: Mutex<usize>,
    notifications: Mutex<Vec<ReceivedNotification>>,
    provider_tokens: Mutex<Vec<String>>,
    unregistered: Mutex<HashSet<String>>,
    failures: Mutex<VecDeque<(u16, String)>>,
}

/// A running APNs peer.
pub struct ApnsServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl ApnsServer {
    /// Generates the `.p8` signing key and a CA-signed server certificate for `127.0.0.1` and
    /// `localhost`, and starts serving HTTP/2 over TLS on loopback.
    ///
    /// # Panics
    /// When keys or certificates cannot be made or no port is free.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let signing_key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("an EC P-256 key");
        std::fs::write(dir.path().join("apns-key.p8"), signing_key.serialize_pem())
            .expect("writing the .p8 key");
        let decoding_key = DecodingKey::from_ec_pem(signing_key.public_key_pem().as_bytes())
            .expect("the public key in PEM");

        let (ca_pem, certificate_der, key_der) = server_certificate();
        std::fs::write(dir.path().join("apns-ca.pem"), ca_pem).expect("writing the CA");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![certificate_der], key_der)
            .expect("the server certificate");
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let shared = Arc::new(Shared {
            key_id: random_id(),
            team_id: random_id(),
            decoding_key,
            requests: Mutex::new(0),
            notifications: Mutex::default(),
            provider_tokens: Mutex::default(),
            unregistered: Mutex::default(),
            failures: Mutex::default(),
        });
        let app = axum::Router::new()
            .route("/3/device/{token}", post(push))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("the server's address");
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            address,
            shared,
            dir,
            task,
        }
    }

    /// `https://127.0.0.1:<port>`, for `push.apns.base_url`.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// The `.p8` signing key, for `push.apns.key_file`.
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("apns-key.p8")
    }

    /// The PEM CA that signed the server certificate, for `push.apns.ca_file`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("apns-ca.pem")
    }

    /// The signing key's id, for `push.apns.key_id`.
    pub fn key_id(&self) -> &str {
        &self.shared.key_id
    }

    /// The team id, for `push.apns.team_id`.
    pub fn team_id(&self) -> &str {
        &self.shared.team_id
    }

    /// The accepted topic, for `push.apns.topic`.
    pub fn topic(&self) -> &str {
        TOPIC
    }

    /// A fresh, valid device token (64 hex characters).
    pub fn new_device_token() -> String {
        format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        )
    }

    /// Every accepted notification, in arrival order.
    pub fn notifications(&self) -> Vec<ReceivedNotification> {
        lock(&self.shared.notifications).clone()
    }

    /// How many requests arrived (accepted or not).
    pub fn requests(&self) -> usize {
        *lock(&self.shared.requests)
    }

    /// The distinct valid provider tokens presented, in order of first use.
    pub fn provider_tokens(&self) -> Vec<String> {
        lock(&self.shared.provider_tokens).clone()
    }

    /// Notifications to `device_token` fail from now on with 410 `Unregistered`.
    pub fn mark_unregistered(&self, device_token: &str) {
        lock(&self.shared.unregistered).insert(device_token.to_owned());
    }

    /// The next `count` authenticated requests fail with `status` and `{"reason": reason}`.
    pub fn fail_next(&self, count: usize, status: u16, reason: &str) {
        lock(&self.shared.failures).extend(std::iter::repeat_n((status, reason.to_owned()), count));
    }
}

impl Drop for ApnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn random_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..10)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}

/// A CA (PEM) and a server certificate and key (DER) it signed for `127.0.0.1` and
/// `localhost`.
fn server_certificate() -> (
    String,
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "Herald test APNs CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("a CA key"))
        .expect("the CA certificate");
    let mut server =
        CertificateParams::new(vec!["localhost".to_owned()]).expect("server certificate names");
    server
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    server
        .distinguished_name
        .push(DnType::CommonName, "api.push.apple.com");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().expect("a server key");
    let certificate = server
        .signed_by(&key, &issuer)
        .expect("the server certificate");
    (
        issuer.pem(),
        certificate.der().clone(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// An APNs error response.
fn reason(status: StatusCode, reason: &str) -> Response {
    let mut body = json!({"reason": reason});
    if status == StatusCode::GONE {
        body["timestamp"] = json!(unix_now() * 1000);
    }
    (status, Json(body)).into_response()
}

/// Checks the request headers APNs validates besides authorization and the message id;
/// returns APNs' reason for the first one at fault.
fn check_headers(headers: &HeaderMap) -> Result<(), &'static str> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    match header("apns-topic") {
        None => return Err("MissingTopic"),
        Some(topic) if topic != TOPIC => {
            return Err("TopicDisallowed");
        }
        Some(_) => {}
    }
    if !matches!(
        header("apns-push-type"),
        Some(
            "alert"
                | "background"
                | "location"
                | "voip"
                | "complication"
                | "fileprovider"
                | "mdm"
                | "liveactivity"
                | "pushtotalk"
        )
    ) {
        return Err("InvalidPushType");
    }
    if !matches!(header("apns-priority"), None | Some("1" | "5" | "10")) {
        return Err("BadPriority");
    }
    if header("apns-expiration").is_some_and(|value| value.parse::<u64>().is_err()) {
        return Err("BadExpirationDate");
    }
    if header("apns-collapse-id").is_some_and(|value| value.len() > MAX_COLLAPSE_ID_BYTES) {
        return Err("BadCollapseId");
    }
    Ok(())
}

async fn push(
    State(shared): State<Arc<Shared>>,
    UrlPath(device_token): UrlPath<String>,
    version: Version,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    *lock(&shared.requests) += 1;
    if version != Version::HTTP_2 {
        return reason(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed");
    }
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let provider_token = match header("authorization") {
        None => return reason(StatusCode::FORBIDDEN, "MissingProviderToken"),
        Some(value) => match value.strip_prefix("bearer ") {
            Some(token) => token.to_owned(),
            None => return reason(StatusCode::FORBIDDEN, "InvalidProviderToken"),
        },
    };
    if let Err(refusal) = check_provider_token(&shared, &provider_token) {
        return reason(StatusCode::FORBIDDEN, refusal);
    }
    {
        let mut tokens = lock(&shared.provider_tokens);
        if !tokens.contains(&provider_token) {
            tokens.push(provider_token);
        }
    }
    if let Err(refusal) = check_headers(&headers) {
        return reason(StatusCode::BAD_REQUEST, refusal);
    }
    let apns_id = match header("apns-id") {
        Some(value) => match uuid::Uuid::try_parse(value) {
            Ok(_) if value.len() == 36 => value.to_owned(),
            _ => return reason(StatusCode::BAD_REQUEST, "BadMessageId"),
        },
        None => uuid::Uuid::new_v4().to_string().to_uppercase(),
    };
    if device_token.len() != 64 || !device_token.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return reason(StatusCode::BAD_REQUEST, "BadDeviceToken");
    }
    if body.is_empty() {
        return reason(StatusCode::BAD_REQUEST, "PayloadEmpty");
    }
    if body.len() > MAX_PAYLOAD_BYTES {
        return reason(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    }
    let payload = match serde_json::from_slice::<Value>(&body) {
        Ok(payload) if payload.get("aps").is_some_and(Value::is_object) => payload,
        _ => return reason(StatusCode::BAD_REQUEST, "BadPayload"),
    };
    if let Some((status, text)) = lock(&shared.failures).pop_front() {
        return reason(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &text,
        );
    }
    if lock(&shared.unregistered).contains(&device_token) {
        return reason(StatusCode::GONE, "Unregistered");
    }
    lock(&shared.notifications).push(ReceivedNotification {
        device_token,
        headers,
        payload,
    });
    let mut response = StatusCode::OK.into_response();
    if let Ok(value) = HeaderValue::from_str(&apns_id) {
        response.headers_mut().insert("apns-id", value);
    }
    response
}

/// Checks the ES256 provider token: `kid`, signature, `iss` and an `iat` within the hour.
fn check_provider_token(shared: &Shared, token: &str) -> Result<(), &'static str> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| "InvalidProviderToken")?;
    if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(shared.key_id.as_str()) {
        return Err("InvalidProviderToken");
    }
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&[&shared.team_id]);
    validation.set_required_spec_claims(&["iss"]);
    validation.validate_exp = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(token, &shared.decoding_key, &validation)
        .map_err(|_| "InvalidProviderToken")?
        .claims;
    let iat = claims
        .get("iat")
        .and_then(Value::as_u64)
        .ok_or("InvalidProviderToken")?;
    let now = unix_now();
    if iat > now + 60 {
        return Err("InvalidProviderToken");
    }
    if now - iat > MAX_PROVIDER_TOKEN_AGE_SECS {
        return Err("ExpiredProviderToken");
    }
    Ok(())
}
