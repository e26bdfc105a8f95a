//! The agent's client of the broker, on `control.sock` next to the meter: `GET /v1/tools` (the
//! tenant's enabled integration tools, as function definitions) and `POST /v1/tools/call`
//! (one call, in the run the server opened). The broker decides everything but the tool's name
//! and arguments: which connection, which host and path, what comes back. Its answers are data
//! from outside (an email, an issue) and are passed to the model marked as such.

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use serde_json::{json, Value};

use crate::meter_client::RUN_HEADER;
use crate::uds;

/// The broker's routes on `control.sock`.
pub const TOOLS_PATH: &str = "/v1/tools";
pub const CALL_PATH: &str = "/v1/tools/call";
/// Largest answer read from the broker (it trims results far below this).
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// Most integration tools offered to the model at once.
const MAX_TOOLS: usize = 64;

async fn exchange(socket: &Path, req: Request<Full<Bytes>>) -> Result<(hyper::StatusCode, Value), String> {
    let mut conn = uds::connect(socket).await.map_err(|e| format!("the broker's socket does not answer: {e:?}"))?;
    let res = conn.sender.send_request(req).await.map_err(|e| format!("the connection to the broker broke: {e}"))?;
    let status = res.status();
    let body = Limited::new(res.into_body(), MAX_ANSWER_BYTES).collect().await.map_err(|e| format!("the broker's answer broke off: {e}"))?.to_bytes();
    drop(conn);
    let v = serde_json::from_slice(&body).map_err(|_| format!("the broker answered {status} with something that is not JSON"))?;
    Ok((status, v))
}

/// The integration tools the tenant enabled and connected, as chat-completions tool
/// definitions. None when the broker is not there or answers nothing usable: the run goes on
/// with the agent's own tools.
pub async fn tools(socket: &Path) -> Vec<Value> {
    let Ok(req) = Request::get(TOOLS_PATH).header("host", "broker").body(Full::new(Bytes::new())) else { return Vec::new() };
    match exchange(socket, req).await {
        Ok((status, v)) if status.is_success() => v["tools"]
            .as_array()
            .map(|a| a.iter().filter(|t| t["name"].as_str().is_some_and(|n| !n.is_empty())).take(MAX_TOOLS).map(|t| json!({"type": "function", "function": t})).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The names of tool definitions (`[{type, function: {name}}]`).
pub fn names(defs: &[Value]) -> Vec<String> {
    defs.iter().filter_map(|d| d["function"]["name"].as_str().map(str::to_owned)).collect()
}

/// Calls `name` with the model's `arguments` (JSON text) in run `run`. What the model is told:
/// the broker's answer (its data marked untrusted), or what went wrong, in words.
pub async fn call(socket: &Path, run: &str, name: &str, arguments: &str) -> String {
    let args: Value = match serde_json::from_str(arguments) {
        Ok(v) => v,
        Err(e) => return format!("Error: the arguments of {name} are not JSON: {e}"),
    };
    let body = json!({"name": name, "arguments": args}).to_string();
    let req = match Request::post(CALL_PATH).header("host", "broker").header("content-type", "application/json").header(RUN_HEADER, run).body(Full::new(Bytes::from(body))) {
        Ok(r) => r,
        Err(e) => return format!("Error: {e}"),
    };
    match exchange(socket, req).await {
        Ok((_, v)) => match v.get("ok").and_then(Value::as_bool) {
            Some(true) => v["content"].to_string(),
            Some(false) => format!("Error ({}): {}", v["error"]["code"].as_str().unwrap_or("failed"), v["error"]["message"].as_str().unwrap_or("the tool failed")),
            None => format!("Error ({}): {}", v["error"]["code"].as_str().unwrap_or("failed"), v["error"]["message"].as_str().unwrap_or("the broker refused the call")),
        },
        Err(e) => format!("Error: {e}"),
    }
}
