//! Loopback SMS providers that check requests the way the real ones do: a Twilio-compatible
//! Messages API and the generic HTTP/JSON gateway.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde_json::json;

use crate::{eventually, lock, serve};

/// One message a loopback provider accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsMessage {
    /// The id the provider answered with (`SM…` for Twilio).
    pub id: String,
    /// Recipient.
    pub to: String,
    /// Sender, when given (`From` / `from`).
    pub from: Option<String>,
    /// Twilio's `MessagingServiceSid`, when given instead of `From`.
    pub messaging_service_sid: Option<String>,
    /// The text (`Body` / `text`).
    pub body: String,
    /// The gateway's `reference` field.
    pub reference: Option<String>,
    /// The gateway's `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
}

/// What both servers share: accepted messages, scripted failures and rejected numbers.
#[derive(Debug, Default)]
struct Recorder<C> {
    messages: Mutex<Vec<SmsMessage>>,
    failures: Mutex<VecDeque<(StatusCode, C)>>,
    invalid: Mutex<HashMap<String, C>>,
    requests: AtomicUsize,
}

impl<C: Clone> Recorder<C> {
    fn fail_next(&self, count: usize, status: u16, code: C) {
        let status = StatusCode::from_u16(status).expect("a valid HTTP status");
        lock(&self.failures).extend(std::iter::repeat_n((status, code), count));
    }

    fn next_failure(&self) -> Option<(StatusCode, C)> {
        lock(&self.failures).pop_front()
    }

    fn invalid_code(&self, number: &str) -> Option<C> {
        lock(&self.invalid).get(number).cloned()
    }

    fn messages(&self) -> Vec<SmsMessage> {
        lock(&self.messages).clone()
    }

    async fn wait_for_messages(&self, count: usize, timeout: Duration) -> Vec<SmsMessage> {
        eventually(&format!("{count} SMS message(s)"), timeout, || async {
            let messages = self.messages();
            (messages.len() >= count).then_some(messages)
        })
        .await
    }
}

fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A Twilio-compatible Messages API on loopback.
///
/// Serves `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` only, and checks what Twilio
/// checks: HTTP basic auth with the account SID and auth token (else `401`, code 20003), the
/// account in the path (else `404`, code 20404), a form-encoded body (any other content type
/// reads as no parameters, as at Twilio), `To` present (21604) and E.164 (21211), `From` or
/// `MessagingServiceSid` (21603), `Body` (21602). Accepted messages get `201` and a message
/// resource with an `SM…` sid and status `queued` (`accepted` through a messaging service).
pub struct TwilioServer {
    address: SocketAddr,
    state: Arc<TwilioState>,
    task: tokio::task::JoinHandle<()>,
}

struct TwilioState {
    account_sid: String,
    auth_token: String,
    recorder: Recorder<u32>,
}

impl TwilioServer {
    /// Starts a server that accepts `account_sid:auth_token`.
    ///
    /// # Panics
    /// When no loopback port is free.
    pub async fn start(account_sid: &str, auth_token: &str) -> Self {
        let state = Arc::new(TwilioState {
            account_sid: account_sid.to_owned(),
            auth_token: auth_token.to_owned(),
            recorder: Recorder::default(),
        });
        let app = Router::new()
            .route(
                "/2010-04-01/Accounts/{account_sid}/Messages.json",
                post(twilio_create_message),
            )
            .fallback(|| async { twilio_error(StatusCode::NOT_FOUND, 20404) })
            .with_state(Arc::clone(&state));
        let (address, task) = serve(app).await;
        Self {
            address,
            state,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`, the value for `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Answers the next `count` requests with `status` and Twilio error `code`, before any
    /// other check (an outage or throttling).
    ///
    /// # Panics
    /// When `status` is not a valid HTTP status.
    pub fn fail_next(&self, count: usize, status: u16, code: u32) {
        self.state.recorder.fail_next(count, status, code);
    }

    /// Rejects messages to `number` with `400` and `code` (21211 invalid, 21614 not a mobile
    /// number, 21610 unsubscribed).
    pub fn mark_invalid(&self, number: &str, code: u32) {
        lock(&self.state.recorder.invalid).insert(number.to_owned(), code);
    }

    /// Every accepted message so far.
    pub fn messages(&self) -> Vec<SmsMessage> {
        self.state.recorder.messages()
    }

    /// Requests received, accepted or not.
    pub fn request_count(&self) -> usize {
        self.state.recorder.requests.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` messages were accepted and returns them all.
    ///
    /// # Panics
    /// When `timeout` passes first.
    pub async fn wait_for_messages(&self, count: usize, timeout: Duration) -> Vec<SmsMessage> {
        self.state.recorder.wait_for_messages(count, timeout).await
    }
}

impl Drop for TwilioServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Twilio's error body (<https://www.twilio.com/docs/usage/twilios-response>).
fn twilio_error(status: StatusCode, code: u32) -> Response {
    let message = match code {
        20003 => "Authenticate",
        20404 => "The requested resource was not found",
        20429 => "Too Many Requests",
        21211 => "The 'To' number is not a valid phone number.",
        21602 => "Message body is required.",
        21603 => "A 'From' or 'MessagingServiceSid' parameter is required to send a message.",
        21604 => "A 'To' phone number is required.",
        21610 => "Attempt to send to unsubscribed recipient",
        21614 => "'To' number is not a valid mobile number",
        _ => "Error",
    };
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"Twilio API\""),
        );
    }
    response
}

/// `user:password` from a `Basic` authorization header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn has_content_type(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case(expected))
}

async fn twilio_create_message(
    State(state): State<Arc<TwilioState>>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorder = &state.recorder;
    recorder.requests.fetch_add(1, Ordering::SeqCst);
    if let Some((status, code)) = recorder.next_failure() {
        return twilio_error(status, code);
    }
    let authenticated = basic_credentials(&headers)
        .is_some_and(|(user, password)| user == state.account_sid && password == state.auth_token);
    if !authenticated {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003);
    }
    if account_sid != state.account_sid {
        return twilio_error(StatusCode::NOT_FOUND, 20404);
    }
    let parameters: Vec<(String, String)> =
        if has_content_type(&headers, "application/x-www-form-urlencoded") {
            match serde_urlencoded::from_bytes(&body) {
                Ok(parameters) => parameters,
                Err(_) => return twilio_error(StatusCode::BAD_REQUEST, 21604),
            }
        } else {
            Vec::new()
        };
    let parameter = |name: &str| {
        parameters
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .filter(|value| !value.is_empty())
    };
    let Some(to) = parameter("To") else {
        return twilio_error(StatusCode::BAD_REQUEST, 21604);
    };
    if herald_domain::PhoneNumber::parse(&to).is_err() {
        return twilio_error(StatusCode::BAD_REQUEST, 21211);
    }
    if let Some(code) = recorder.invalid_code(&to) {
        return twilio_error(StatusCode::BAD_REQUEST, code);
    }
    let from = parameter("From");
    let messaging_service_sid = parameter("MessagingServiceSid");
    if from.is_none() && messaging_service_sid.is_none() {
        return twilio_error(StatusCode::BAD_REQUEST, 21603);
    }
    let Some(text) = parameter("Body") else {
        return twilio_error(StatusCode::BAD_REQUEST, 21602);
    };
    let sid = format!("SM{}", random_hex());
    let status = if messaging_service_sid.is_some() {
        "accepted"
    } else {
        "queued"
    };
    let resource = json!({
        "sid": sid,
        "account_sid": state.account_sid,
        "api_version": "2010-04-01",
        "to": to,
        "from": from,
        "messaging_service_sid": messaging_service_sid,
        "body": text,
        "status": status,
        "direction": "outbound-api",
        "num_media": "0",
        "price": null,
        "error_code": null,
        "error_message": null,
        "uri": format!("/2010-04-01/Accounts/{}/Messages/{sid}.json", state.account_sid),
    });
    lock(&recorder.messages).push(SmsMessage {
        id: sid,
        to,
        from,
        messaging_service_sid,
        body: text,
        reference: None,
        idempotency_key: None,
    });
    (StatusCode::CREATED, axum::Json(resource)).into_response()
}

/// The far side of Herald's generic HTTP/JSON SMS gateway, on loopback.
///
/// Serves `POST /v1/messages` and checks `Authorization: Bearer <token>` (else `401`
/// `unauthorized`), a JSON content type (else `415`), the body `{"to", "from", "text",
/// "reference"}` (else `400` `invalid_request`) and an E.164 `to` (else `400`
/// `invalid_number`). A repeated `Idempotency-Key` gets the first answer again without a
/// second message. Errors are `{"error": {"code", "message"}}`.
pub struct SmsGatewayServer {
    address: SocketAddr,
    state: Arc<GatewayState>,
    task: tokio::task::JoinHandle<()>,
}

struct GatewayState {
    token: String,
    recorder: Recorder<String>,
    /// Idempotency key → the id answered for it.
    answered: Mutex<HashMap<String, String>>,
    /// Messages still to accept without ever answering (`swallow_answer_of_next`).
    unanswered: AtomicUsize,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayRequest {
    to: String,
    from: String,
    text: String,
    reference: Option<String>,
}

impl SmsGatewayServer {
    /// Starts a gateway that accepts the bearer `token`.
    ///
    /// # Panics
    /// When no loopback port is free.
    pub async fn start(token: &str) -> Self {
        let state = Arc::new(GatewayState {
            token: token.to_owned(),
            recorder: Recorder::default(),
            answered: Mutex::default(),
            unanswered: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1/messages", post(gateway_send))
            .fallback(|| async { gateway_error(StatusCode::NOT_FOUND, "not_found") })
            .with_state(Arc::clone(&state));
        let (address, task) = serve(app).await;
        Self {
            address,
            state,
            task,
        }
    }

    /// `http://127.0.0.1:<port>/v1/messages`, the value for `url`.
    pub fn url(&self) -> String {
        format!("http://{}/v1/messages", self.address)
    }

    /// Answers the next `count` requests with `status` and error `code`, before any other
    /// check.
    ///
    /// # Panics
    /// When `status` is not a valid HTTP status.
    pub fn fail_next(&self, count: usize, status: u16, code: &str) {
        self.state
            .recorder
            .fail_next(count, status, code.to_owned());
    }

    /// Accepts the next `count` messages (recorded, their idempotency keys remembered) and
    /// never answers their requests, like a gateway whose answer is lost on the way back.
    pub fn swallow_answer_of_next(&self, count: usize) {
        self.state.unanswered.store(count, Ordering::SeqCst);
    }

    /// Rejects messages to `number` with `400` `invalid_number`.
    pub fn mark_invalid(&self, number: &str) {
        lock(&self.state.recorder.invalid).insert(number.to_owned(), "invalid_number".into());
    }

    /// Every accepted message so far (a replayed idempotency key is not recorded twice).
    pub fn messages(&self) -> Vec<SmsMessage> {
        self.state.recorder.messages()
    }

    /// Requests received, accepted or not.
    pub fn request_count(&self) -> usize {
        self.state.recorder.requests.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` messages were accepted and returns them all.
    ///
    /// # Panics
    /// When `timeout` passes first.
    pub async fn wait_for_messages(&self, count: usize, timeout: Duration) -> Vec<SmsMessage> {
        self.state.recorder.wait_for_messages(count, timeout).await
    }
}

impl Drop for SmsGatewayServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn gateway_error(status: StatusCode, code: &str) -> Response {
    let body = json!({
        "error": {
            "code": code,
            "message": format!("request failed: {code}"),
        }
    });
    (status, axum::Json(body)).into_response()
}

async fn gateway_send(
    State(state): State<Arc<GatewayState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorder = &state.recorder;
    recorder.requests.fetch_add(1, Ordering::SeqCst);
    if let Some((status, code)) = recorder.next_failure() {
        return gateway_error(status, &code);
    }
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|token| token == state.token);
    if !authorized {
        return gateway_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    if !has_content_type(&headers, "application/json") {
        return gateway_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    }
    let Ok(request) = serde_json::from_slice::<GatewayRequest>(&body) else {
        return gateway_error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    if request.text.is_empty() || request.from.is_empty() {
        return gateway_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    if herald_domain::PhoneNumber::parse(&request.to).is_err() {
        return gateway_error(StatusCode::BAD_REQUEST, "invalid_number");
    }
    if let Some(code) = recorder.invalid_code(&request.to) {
        return gateway_error(StatusCode::BAD_REQUEST, &code);
    }
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let id = {
        let mut answered = lock(&state.answered);
        if let Some(id) = idempotency_key.as_ref().and_then(|key| answered.get(key)) {
            return (
                StatusCode::OK,
                axum::Json(json!({ "id": id, "status": "accepted" })),
            )
                .into_response();
        }
        let id = format!("msg_{}", random_hex());
        if let Some(key) = &idempotency_key {
            answered.insert(key.clone(), id.clone());
        }
        id
    };
    lock(&recorder.messages).push(SmsMessage {
        id: id.clone(),
        to: request.to,
        from: Some(request.from),
        messaging_service_sid: None,
        body: request.text,
        reference: request.reference,
        idempotency_key,
    });
    let swallow = state
        .unanswered
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        })
        .is_ok();
    if swallow {
        std::future::pending::<()>().await;
    }
    (
        StatusCode::OK,
        axum::Json(json!({ "id": id, "status": "accepted" })),
    )
        .into_response()
}
