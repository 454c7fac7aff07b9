//! A loopback FCM HTTP v1 server with its own OAuth2 token endpoint, checking requests the
//! way Google does: the service-account assertion's RS256 signature and claims, the bearer
//! token on every send, and the shape of the `message`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::lock;

/// The scope FCM sends need.
const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The largest `message` FCM accepts, in bytes.
const MAX_MESSAGE_BYTES: usize = 4096;

struct Shared {
    project_id: String,
    key_id: String,
    client_email: String,
    token_uri: String,
    decoding_key: DecodingKey,
    access_token_lifetime: Mutex<Duration>,
    issued: Mutex<HashMap<String, Instant>>,
    token_requests: Mutex<usize>,
    send_requests: Mutex<usize>,
    messages: Mutex<Vec<Value>>,
    unregistered: Mutex<HashSet<String>>,
    failures: Mutex<VecDeque<u16>>,
}

/// A running FCM peer. Its service account file points Herald at its token endpoint.
pub struct FcmServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    service_account_file: PathBuf,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl FcmServer {
    /// Generates an RSA-2048 service account key, writes the service account JSON file and
    /// starts serving `/token` and `/v1/projects/{project_id}/messages:send` on loopback.
    ///
    /// # Panics
    /// When the key cannot be generated or no port is free.
    pub async fn start(project_id: &str) -> Self {
        let key_pair =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("an RSA-2048 key");
        let decoding_key = DecodingKey::from_rsa_pem(key_pair.public_key_pem().as_bytes())
            .expect("the public key in PEM");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("the server's address");
        let key_id = format!("{:040x}", rand::random::<u128>());
        let client_email = format!("herald-sender@{project_id}.iam.gserviceaccount.com");
        let token_uri = format!("http://{address}/token");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let service_account_file = dir.path().join("service-account.json");
        let account = json!({
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": key_id,
            "private_key": key_pair.serialize_pem(),
            "client_email": client_email,
            "client_id": "100000000000000000000",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/herald",
            "universe_domain": "googleapis.com",
        });
        std::fs::write(
            &service_account_file,
            serde_json::to_vec_pretty(&account).expect("JSON"),
        )
        .expect("writing the service account file");
        let shared = Arc::new(Shared {
            project_id: project_id.to_owned(),
            key_id,
            client_email,
            token_uri,
            decoding_key,
            access_token_lifetime: Mutex::new(Duration::from_secs(3599)),
            issued: Mutex::default(),
            token_requests: Mutex::new(0),
            send_requests: Mutex::new(0),
            messages: Mutex::default(),
            unregistered: Mutex::default(),
            failures: Mutex::default(),
        });
        let app = axum::Router::new()
            .route("/token", post(token))
            .route("/v1/projects/{project}/messages:send", post(send))
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            address,
            shared,
            service_account_file,
            _dir: dir,
            task,
        }
    }

    /// The service account JSON key file for `push.fcm.service_account_file`.
    pub fn service_account_file(&self) -> &Path {
        &self.service_account_file
    }

    /// `http://127.0.0.1:<port>`, for `push.fcm.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The token endpoint written into the service account file.
    pub fn token_uri(&self) -> String {
        self.shared.token_uri.clone()
    }

    /// The project id.
    pub fn project_id(&self) -> &str {
        &self.shared.project_id
    }

    /// Every accepted `message` object, in arrival order.
    pub fn messages(&self) -> Vec<Value> {
        lock(&self.shared.messages).clone()
    }

    /// How many access tokens were issued.
    pub fn token_requests(&self) -> usize {
        *lock(&self.shared.token_requests)
    }

    /// How many send requests arrived (accepted or not).
    pub fn send_requests(&self) -> usize {
        *lock(&self.shared.send_requests)
    }

    /// Sends to `token` fail from now on with 404 `UNREGISTERED`, as for an uninstalled app.
    pub fn mark_unregistered(&self, token: &str) {
        lock(&self.shared.unregistered).insert(token.to_owned());
    }

    /// The next `count` authenticated sends fail with `status` and Google's error body for it
    /// (429 `QUOTA_EXCEEDED`, 500 `INTERNAL`, 503 `UNAVAILABLE`, 401 `UNAUTHENTICATED`, …).
    pub fn fail_next(&self, count: usize, status: u16) {
        lock(&self.shared.failures).extend(std::iter::repeat_n(status, count));
    }

    /// Access tokens issued from now on expire after `lifetime` (`expires_in`).
    pub fn set_access_token_lifetime(&self, lifetime: Duration) {
        *lock(&self.shared.access_token_lifetime) = lifetime;
    }

    /// Forgets every issued access token, as if they had been revoked: sends that present one
    /// get 401 until the client fetches a new token.
    pub fn revoke_access_tokens(&self) {
        lock(&self.shared.issued).clear();
    }
}

impl Drop for FcmServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}

fn oauth_error(description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid_grant", "error_description": description})),
    )
        .into_response()
}

async fn token(
    State(shared): State<Arc<Shared>>,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type", "error_description": "Invalid grant_type"})),
        )
            .into_response();
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error("Missing required parameter: assertion");
    };
    let Ok(header) = jsonwebtoken::decode_header(assertion) else {
        return oauth_error("Invalid JWT: the assertion is not a JWT");
    };
    if header.alg != Algorithm::RS256 {
        return oauth_error("Invalid JWT: the assertion must be signed with RS256");
    }
    if header.kid.as_deref() != Some(shared.key_id.as_str()) {
        return oauth_error("Invalid JWT Signature: unknown key id");
    }
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[&shared.token_uri]);
    validation.set_issuer(&[&shared.client_email]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    validation.leeway = 0;
    let claims = match jsonwebtoken::decode::<Value>(assertion, &shared.decoding_key, &validation) {
        Ok(data) => data.claims,
        Err(error) => return oauth_error(&format!("Invalid JWT: {error}")),
    };
    if claims.get("scope").and_then(Value::as_str) != Some(FCM_SCOPE) {
        return oauth_error("Invalid JWT: the scope must be the firebase.messaging scope");
    }
    let iat = claims.get("iat").and_then(Value::as_u64).unwrap_or(0);
    let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
    if exp <= iat || exp - iat > 3600 {
        return oauth_error("Invalid JWT: Token must be a short-lived token (60 minutes)");
    }
    if iat > unix_now() + 60 {
        return oauth_error(
            "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe",
        );
    }
    let access_token = format!(
        "ya29.{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let lifetime = *lock(&shared.access_token_lifetime);
    lock(&shared.issued).insert(access_token.clone(), Instant::now() + lifetime);
    *lock(&shared.token_requests) += 1;
    Json(json!({
        "access_token": access_token,
        "expires_in": lifetime.as_secs(),
        "token_type": "Bearer",
    }))
    .into_response()
}

/// Google's error body for `status`, with an FCM error code when one applies.
fn google_error(status: u16, canonical: &str, message: &str, error_code: Option<&str>) -> Response {
    let mut details = Vec::new();
    if let Some(error_code) = error_code {
        details.push(json!({
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": error_code,
        }));
    }
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(json!({"error": {
            "code": status,
            "message": message,
            "status": canonical,
            "details": details,
        }})),
    )
        .into_response()
}

fn scripted_failure(status: u16) -> Response {
    match status {
        400 => google_error(
            400,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
            Some("INVALID_ARGUMENT"),
        ),
        401 => google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            None,
        ),
        403 => google_error(
            403,
            "PERMISSION_DENIED",
            "SenderId mismatch",
            Some("SENDER_ID_MISMATCH"),
        ),
        404 => google_error(
            404,
            "NOT_FOUND",
            "Requested entity was not found.",
            Some("UNREGISTERED"),
        ),
        429 => google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded.",
            Some("QUOTA_EXCEEDED"),
        ),
        503 => google_error(
            503,
            "UNAVAILABLE",
            "The service is currently unavailable.",
            Some("UNAVAILABLE"),
        ),
        other => google_error(
            other,
            "INTERNAL",
            "Internal error encountered.",
            Some("INTERNAL"),
        ),
    }
}

fn invalid_argument(field: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {
            "code": 400,
            "message": format!("Invalid value at '{field}': {description}"),
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": field, "description": description}],
                },
                {
                    "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                    "errorCode": "INVALID_ARGUMENT",
                },
            ],
        }})),
    )
        .into_response()
}

async fn send(
    State(shared): State<Arc<Shared>>,
    UrlPath(project): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    *lock(&shared.send_requests) += 1;
    let bearer = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let authenticated = bearer.is_some_and(|token| {
        lock(&shared.issued)
            .get(token)
            .is_some_and(|expires| Instant::now() < *expires)
    });
    if !authenticated {
        return scripted_failure(401);
    }
    if project != shared.project_id {
        return google_error(
            403,
            "PERMISSION_DENIED",
            "Permission denied on the project.",
            None,
        );
    }
    if let Some(status) = lock(&shared.failures).pop_front() {
        return scripted_failure(status);
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return invalid_argument("message", "Invalid JSON payload received.");
    };
    let Some(message) = request.get("message").filter(|value| value.is_object()) else {
        return invalid_argument("message", "A message is required.");
    };
    if let Err((field, description)) = check_message(message) {
        return invalid_argument(&field, &description);
    }
    let token = message["token"].as_str().unwrap_or_default();
    if lock(&shared.unregistered).contains(token) {
        return scripted_failure(404);
    }
    lock(&shared.messages).push(message.clone());
    Json(json!({
        "name": format!("projects/{}/messages/0:{:016x}", shared.project_id, rand::random::<u64>()),
    }))
    .into_response()
}

/// Checks a `message` the way FCM validates one; names the offending field.
fn check_message(message: &Value) -> Result<(), (String, String)> {
    let size = serde_json::to_vec(message)
        .map(|bytes| bytes.len())
        .unwrap_or(0);
    if size > MAX_MESSAGE_BYTES {
        return Err(("message".into(), "Android message is too big".into()));
    }
    match message.get("token").and_then(Value::as_str) {
        Some(token) if !token.is_empty() => {}
        _ => {
            return Err((
                "message.token".into(),
                "The registration token is not a valid FCM registration token".into(),
            ));
        }
    }
    if let Some(notification) = message.get("notification") {
        for field in ["title", "body"] {
            if notification
                .get(field)
                .is_some_and(|value| !value.is_string())
            {
                return Err((
                    format!("message.notification.{field}"),
                    "must be a string".into(),
                ));
            }
        }
    }
    if let Some(data) = message.get("data") {
        let Some(entries) = data.as_object() else {
            return Err(("message.data".into(), "must be a map of strings".into()));
        };
        if let Some((key, _)) = entries.iter().find(|(_, value)| !value.is_string()) {
            return Err((format!("message.data[{key}]"), "must be a string".into()));
        }
    }
    if let Some(android) = message.get("android") {
        check_android(android)?;
    }
    if let Some(webpush) = message.get("webpush")
        && let Some(headers) = webpush.get("headers")
        && !headers
            .as_object()
            .is_some_and(|map| map.values().all(Value::is_string))
    {
        return Err((
            "message.webpush.headers".into(),
            "must be a map of strings".into(),
        ));
    }
    if let Some(apns) = message.get("apns")
        && let Some(headers) = apns.get("headers")
        && !headers
            .as_object()
            .is_some_and(|map| map.values().all(Value::is_string))
    {
        return Err((
            "message.apns.headers".into(),
            "must be a map of strings".into(),
        ));
    }
    Ok(())
}

/// Checks a message's `android` block: priority, time to live, collapse key.
fn check_android(android: &Value) -> Result<(), (String, String)> {
    if let Some(priority) = android.get("priority")
        && !matches!(priority.as_str(), Some("HIGH" | "NORMAL"))
    {
        return Err((
            "message.android.priority".into(),
            "must be HIGH or NORMAL".into(),
        ));
    }
    if let Some(ttl) = android.get("ttl") {
        let valid = ttl
            .as_str()
            .and_then(|text| text.strip_suffix('s'))
            .is_some_and(|seconds| {
                !seconds.is_empty() && seconds.parse::<f64>().is_ok_and(|value| value >= 0.0)
            });
        if !valid {
            return Err((
                "message.android.ttl".into(),
                "must be a duration such as \"3.5s\"".into(),
            ));
        }
    }
    if android
        .get("collapse_key")
        .is_some_and(|value| !value.is_string())
    {
        return Err((
            "message.android.collapse_key".into(),
            "must be a string".into(),
        ));
    }
    Ok(())
}
