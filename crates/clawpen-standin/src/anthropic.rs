//! Anthropic: Messages, and Anthropic's error shape.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::log::{Progress, RecordedRequest};
use crate::tokens::{last_user_text, reply_to, Reply};
use crate::{sse, Shared};

pub(crate) async fn messages(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let request = serde_json::from_slice::<Value>(&body).ok();
    let authorized = authorized(&shared, &headers);
    let max_tokens = request.as_ref().and_then(|r| r["max_tokens"].as_u64());
    let entry = shared.log.record(RecordedRequest::new("/v1/messages", request.clone().unwrap_or_default(), authorized, max_tokens));
    let response = if !authorized {
        error(StatusCode::UNAUTHORIZED, "authentication_error", "invalid x-api-key")
    } else if !headers.contains_key("anthropic-version") {
        invalid("anthropic-version: header is required")
    } else {
        shared.think().await;
        answer(&shared, request, entry.progress())
    };
    entry.answer(response)
}

/// `x-api-key`, or `Authorization: Bearer`, which Anthropic's own SDKs send since 2.0.
fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let key = shared.config.anthropic_key.as_str();
    headers.get("x-api-key").is_some_and(|k| k == key) || crate::bearer(headers) == Some(key)
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, Json(json!({"type": "error", "error": {"type": kind, "message": message}}))).into_response()
}

fn invalid(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

fn answer(shared: &Shared, request: Option<Value>, progress: Progress) -> Response {
    let Some(request) = request else { return invalid("The request body is not valid JSON.") };
    let Some(model) = request["model"].as_str() else { return invalid("model: Field required") };
    let Some(messages) = request["messages"].as_array().filter(|m| !m.is_empty()) else {
        return invalid("messages: Field required");
    };
    let max_tokens = match &request["max_tokens"] {
        Value::Null => return invalid("max_tokens: Field required"),
        v => match v.as_u64() {
            Some(max) => max,
            None => return invalid("max_tokens: Input should be a valid non-negative integer"),
        },
    };
    let reply = Reply::new(&reply_to(&last_user_text(messages)), Some(max_tokens));
    // Server-side tools (a `type` other than `custom`) and MCP servers run at the provider and
    // put what they found in the context: billed as input.
    let server_tools = request["tools"].as_array().map_or(0, |tools| tools.iter().filter(|t| t["type"].as_str().is_some_and(|k| k != "custom")).count());
    let mcp_servers = request["mcp_servers"].as_array().map_or(0, Vec::len);
    let extra = (server_tools + mcp_servers) as u64 * crate::SERVER_TOOL_TOKENS;
    let total = shared.counter(model).input(&request["system"], messages) + extra;
    // Anthropic counts cache reads and writes outside `input_tokens`.
    let (input, cache_read, cache_write) = if model.contains("cached") { (total.saturating_sub(15), 10, 5) } else { (total, 0, 0) };
    let id = format!("msg_standin{:012}", shared.next_answer());
    let stop_reason = if reply.cut { "max_tokens" } else { "end_turn" };

    let mut usage = json!({"input_tokens": input, "output_tokens": reply.tokens(), "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read});
    if server_tools + mcp_servers > 0 {
        usage["server_tool_use"] = json!({"web_search_requests": server_tools});
    }
    if request["stream"] != true {
        progress.generated(reply.tokens());
        return Json(json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": reply.text()}],
            "stop_reason": stop_reason, "stop_sequence": null,
            "usage": usage,
        }))
        .into_response();
    }
    let start = json!({"type": "message_start", "message": {
        "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": input, "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read, "output_tokens": 1},
    }});
    let head = [start, json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}), json!({"type": "ping"})];
    let words = reply.pieces().map(|piece| (json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}), 1));
    let tail = [
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": reply.tokens()}}),
        json!({"type": "message_stop"}),
    ];
    let events = head.into_iter().map(|e| (e, 0)).chain(words).chain(tail.into_iter().map(|e| (e, 0))).map(|(e, tokens)| (sse::event(&e), tokens)).collect();
    sse::response(events, shared.delay(model), progress)
}
