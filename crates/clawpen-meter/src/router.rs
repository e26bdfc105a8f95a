//! The routes served on an agent's `control.sock`. The caller is bound when the router is made
//! for that socket; no header or body can change it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;

use crate::meter::{Endpoint, Meter, MeterCaller};

/// Largest model request accepted from a sandbox.
pub const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;

#[derive(Clone)]
struct Ctx {
    meter: Arc<Meter>,
    caller: MeterCaller,
}

pub fn router(meter: Arc<Meter>, caller: MeterCaller) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/messages", post(messages))
        .fallback(|| async {
            let body = serde_json::json!({"type": "error", "error": {"type": "clawpen_meter", "code": "not_found", "message": "the meter serves POST /v1/chat/completions and POST /v1/messages"}});
            (StatusCode::NOT_FOUND, axum::Json(body))
        })
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(Ctx { meter, caller })
}

async fn chat_completions(State(c): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    c.meter.handle(c.caller, Endpoint::ChatCompletions, headers, body).await
}

async fn messages(State(c): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    c.meter.handle(c.caller, Endpoint::Messages, headers, body).await
}
