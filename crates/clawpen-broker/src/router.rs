//! The broker's routes on an agent's `control.sock`, bound to one [`Caller`] when the router is
//! made: no header or body can name another tenant or agent.
//!
//! - `GET /v1/tools` → `{"tools": [function definitions]}`
//! - `POST /v1/tools/call`, header `x-clawpen-run`, body `{"name", "arguments"}` (arguments an
//!   object, or a JSON string of one, as OpenAI tool calls carry them) → a [`ToolOutcome`]
//!   (status 200 whether the tool did it or not: the model reads why).
//!
//! Malformed requests are answered `{"error": {"code", "message"}}` with a 4xx. Bodies are read
//! up to [`MAX_BODY_BYTES`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::{Broker, Caller};

/// Largest tool call body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The header that carries the server's run id.
pub const RUN_HEADER: &str = "x-clawpen-run";

#[derive(Clone)]
struct Ctx {
    broker: Arc<Broker>,
    caller: Caller,
}

pub fn router(broker: Arc<Broker>, caller: Caller) -> Router {
    Router::new().route("/v1/tools", get(list)).route("/v1/tools/call", post(call)).with_state(Ctx { broker, caller })
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

async fn list(State(c): State<Ctx>) -> Response {
    match c.broker.tools_for(&c.caller.tenant).await {
        Ok(tools) => Json(json!({"tools": tools})).into_response(),
        Err(e) => {
            tracing::warn!(tenant = %c.caller.tenant, error = %e, "broker: listing tools failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the tools could not be listed; try again")
        }
    }
}

async fn call(State(c): State<Ctx>, req: Request<Body>) -> Response {
    let Some(run) = req.headers().get(RUN_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned) else {
        return error(StatusCode::BAD_REQUEST, "no_run", "a tool call needs the x-clawpen-run header (the run this message is answered in)");
    };
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", &format!("a tool call body may be at most {MAX_BODY_BYTES} bytes")),
    };
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "the body must be a JSON object {\"name\", \"arguments\"}");
    };
    if let Some(extra) = body.keys().find(|k| *k != "name" && *k != "arguments") {
        let extra: String = extra.chars().take(40).collect();
        return error(StatusCode::BAD_REQUEST, "invalid_request", &format!("unknown field `{extra}`: the body has only name and arguments"));
    }
    let Some(Value::String(name)) = body.remove("name") else {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "`name` must be the tool's name");
    };
    let args = match body.remove("arguments") {
        None | Some(Value::Null) => json!({}),
        // Not JSON: passed on as the string, which the call refuses (and counts).
        Some(Value::String(s)) => serde_json::from_str::<Value>(&s).unwrap_or(Value::String(s)),
        Some(v) => v,
    };
    Json(c.broker.call(&c.caller, &run, &name, args).await).into_response()
}
