//! The HTTP side: the counts as JSON (`GET /stats`) and a reset (`POST /reset`).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};

use crate::Sink;
use crate::stats::Stats;

/// The routes, over the sink's shared state.
pub(crate) fn router(sink: Arc<Sink>) -> Router {
    Router::new()
        .route("/stats", get(stats))
        .route("/reset", post(reset))
        .with_state(sink)
}

async fn stats(State(sink): State<Arc<Sink>>) -> Json<Stats> {
    Json(sink.counters.snapshot())
}

/// Answers with the counts as they were before the reset, so nothing counted is lost unseen.
async fn reset(State(sink): State<Arc<Sink>>) -> Json<Stats> {
    Json(sink.counters.reset())
}
