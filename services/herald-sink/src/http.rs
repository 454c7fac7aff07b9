//! The HTTP side: the counts as JSON (`GET /stats`), a reset (`POST /reset`) and one
//! message's arrival (`GET /messages/<message-id>`).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::Sink;
use crate::stats::{MessageArrival, Stats};

/// The routes, over the sink's shared state.
pub(crate) fn router(sink: Arc<Sink>) -> Router {
    Router::new()
        .route("/stats", get(stats))
        .route("/reset", post(reset))
        .route("/messages/{message_id}", get(message))
        .with_state(sink)
}

async fn stats(State(sink): State<Arc<Sink>>) -> Json<Stats> {
    Json(sink.counters.snapshot())
}

/// Answers with the counts as they were before the reset, so nothing counted is lost unseen.
async fn reset(State(sink): State<Arc<Sink>>) -> Json<Stats> {
    Json(sink.counters.reset())
}

/// When the message with this `Message-ID` first arrived and how many copies did, or `404`.
/// The id is given without its angle brackets (`/messages/<delivery-id>@herald`, percent-encoded
/// where a URL needs it); one given with them is taken as is, and an id stored without them
/// (a client that sent a bare `Message-ID`) is found too.
async fn message(
    State(sink): State<Arc<Sink>>,
    Path(message_id): Path<String>,
) -> Result<Json<MessageArrival>, StatusCode> {
    let bracketed = if message_id.starts_with('<') && message_id.ends_with('>') {
        message_id.clone()
    } else {
        format!("<{message_id}>")
    };
    sink.counters
        .arrival(&bracketed)
        .or_else(|| sink.counters.arrival(&message_id))
        .map(Json)
        .ok_or(StatusCode::NOT_FOUND)
}
