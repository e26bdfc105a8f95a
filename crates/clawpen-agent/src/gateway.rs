//! The subset of OpenClaw's gateway protocol a chat client needs, spoken by the agent on
//! `GET /gateway` (a WebSocket on its socket; the server relays clients to it after checking
//! their signed connect URL).
//!
//! Frames are JSON text: `{"type":"req","id","method","params"}` from the client,
//! `{"type":"res","id","ok","payload"|"error"}` and `{"type":"event","event","payload","seq"}`
//! from the agent. The agent opens with `connect.challenge`; the first request must be
//! `connect` (answered `hello-ok`), within [`CONNECT_WITHIN`] and at most [`PRE_CONNECT_MAX`]
//! bytes. Then: `chat.send` (with `idempotencyKey`), `chat.history`, `chat.abort`, `health`.
//! The server relaying a `chat.send` opens a run with the meter and puts its id in the params as
//! `clawpenRunId`: that is the run's `runId`, and its model calls carry it to the meter.
//! A run's reply comes as `chat` events: `delta`, then `final`, or `aborted` / `error`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::server::{turn, valid_run_id, AgentState};
use crate::session;

/// The first request must come this soon.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// Largest frame before `connect`.
pub const PRE_CONNECT_MAX: usize = 16 * 1024;
/// Largest frame after it.
pub const FRAME_MAX: usize = 256 * 1024;
/// A `tick` event this often keeps idle connections (and the relay) alive.
const TICK: Duration = Duration::from_secs(15);
const PROTOCOL: u64 = 3;
const METHODS: [&str; 5] = ["connect", "chat.send", "chat.history", "chat.abort", "health"];

pub(crate) async fn upgrade(State(s): State<Arc<AgentState>>, ws: WebSocketUpgrade) -> Response {
    // Small buffers: an idle connection should cost little (they grow for a large frame).
    ws.max_message_size(FRAME_MAX).max_frame_size(FRAME_MAX).read_buffer_size(4096).write_buffer_size(0).on_upgrade(move |socket| serve(s, socket))
}

fn res_ok(id: &Value, payload: Value) -> Value {
    json!({"type": "res", "id": id, "ok": true, "payload": payload})
}

fn res_err(id: &Value, code: &str, message: &str) -> Value {
    json!({"type": "res", "id": id, "ok": false, "error": {"code": code, "message": message}})
}

/// Sends frames in order and numbers events.
struct Out {
    tx: mpsc::Sender<Message>,
    seq: std::sync::atomic::AtomicU64,
}

impl Out {
    async fn send(&self, v: Value) {
        let _ = self.tx.send(Message::Text(v.to_string().into())).await;
    }

    async fn event(&self, event: &str, payload: Value) {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.send(json!({"type": "event", "event": event, "payload": payload, "seq": seq})).await;
    }
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
}

fn nonce() -> String {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn serve(s: Arc<AgentState>, mut socket: WebSocket) {
    let challenge = json!({"type": "event", "event": "connect.challenge", "payload": {"nonce": nonce(), "ts": session::now_ms()}, "seq": 0});
    if socket.send(Message::Text(challenge.to_string().into())).await.is_err() {
        return;
    }
    // Handshake: one small `connect` request, soon.
    let first = match tokio::time::timeout(CONNECT_WITHIN, socket.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => t,
        Ok(Some(Ok(Message::Close(_)))) | Ok(None) => return,
        Ok(_) => return close(&mut socket, 1003, "text frames only").await,
        Err(_) => return close(&mut socket, 1008, "connect did not come in time").await,
    };
    if first.len() > PRE_CONNECT_MAX {
        return close(&mut socket, 1009, "frame too large before connect").await;
    }
    let Ok(req) = serde_json::from_str::<Value>(&first) else { return close(&mut socket, 1007, "not JSON").await };
    if req["type"] != "req" || req["method"] != "connect" {
        let _ = socket.send(Message::Text(res_err(&req["id"], "INVALID_REQUEST", "the first request must be connect").to_string().into())).await;
        return close(&mut socket, 1008, "connect first").await;
    }
    let min = req["params"]["minProtocol"].as_u64().unwrap_or(PROTOCOL);
    let max = req["params"]["maxProtocol"].as_u64().unwrap_or(PROTOCOL);
    if !(min..=max).contains(&PROTOCOL) {
        let _ = socket.send(Message::Text(res_err(&req["id"], "PROTOCOL_MISMATCH", "this agent speaks protocol 3").to_string().into())).await;
        return close(&mut socket, 1002, "protocol mismatch").await;
    }
    let hello = json!({
        "type": "hello-ok", "protocol": PROTOCOL,
        "server": {"name": "clawpen", "agentId": s.config().agent_id, "version": env!("CARGO_PKG_VERSION")},
        "features": {"methods": METHODS, "events": ["chat", "tick"]},
        "policy": {"maxPayload": FRAME_MAX, "tickIntervalMs": TICK.as_millis() as u64},
    });
    if socket.send(Message::Text(res_ok(&req["id"], hello).to_string().into())).await.is_err() {
        return;
    }

    // Connected: a writer task owns the sink; runs send their events through it.
    let (mut sink, mut stream) = futures_util::StreamExt::split(socket);
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    let out = Arc::new(Out { tx, seq: std::sync::atomic::AtomicU64::new(1) });
    let writer = tokio::spawn(async move {
        use futures_util::SinkExt;
        while let Some(m) = rx.recv().await {
            let closing = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || closing {
                break;
            }
        }
    });
    let ticker = {
        let out = out.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(TICK);
            t.tick().await;
            loop {
                t.tick().await;
                out.event("tick", json!({"ts": session::now_ms()})).await;
            }
        })
    };
    // Runs in flight by run id, and run ids by idempotency key.
    let mut runs: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut by_key: HashMap<String, String> = HashMap::new();
    while let Some(Ok(msg)) = futures_util::StreamExt::next(&mut stream).await {
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Binary(_) => {
                let _ = out.tx.send(Message::Close(Some(CloseFrame { code: 1003, reason: "text frames only".into() }))).await;
                break;
            }
        };
        let Ok(req) = serde_json::from_str::<Value>(&text) else {
            let _ = out.tx.send(Message::Close(Some(CloseFrame { code: 1007, reason: "not JSON".into() }))).await;
            break;
        };
        let id = req["id"].clone();
        if req["type"] != "req" || !id.is_string() {
            out.send(res_err(&id, "INVALID_REQUEST", "frames are {type: req, id, method, params}")).await;
            continue;
        }
        runs.retain(|_, h| !h.is_finished());
        let params = &req["params"];
        match req["method"].as_str().unwrap_or_default() {
            "health" => out.send(res_ok(&id, json!({"ok": true, "agentId": s.config().agent_id}))).await,
            "chat.send" => {
                let (Some(message), Some(session)) = (params["message"].as_str(), session_of(params)) else {
                    out.send(res_err(&id, "INVALID_REQUEST", "chat.send needs message and a sessionKey of [A-Za-z0-9:_-]")).await;
                    continue;
                };
                if message.trim().is_empty() {
                    out.send(res_err(&id, "INVALID_REQUEST", "message must not be empty")).await;
                    continue;
                }
                let key = params["idempotencyKey"].as_str().map(str::to_owned);
                if let Some(run_id) = key.as_ref().and_then(|k| by_key.get(k)) {
                    // A retried send: the same run, not a second one.
                    let status = if runs.contains_key(run_id) { "in_flight" } else { "ok" };
                    out.send(res_ok(&id, json!({"runId": run_id, "status": status}))).await;
                    continue;
                }
                // The server opened the run with the meter and injected its id; without one
                // (a gateway used alone) the id is made up.
                let run_id = match &params["clawpenRunId"] {
                    Value::Null => format!("run_{}", nonce()),
                    Value::String(r) if valid_run_id(r) => r.clone(),
                    _ => {
                        out.send(res_err(&id, "INVALID_REQUEST", "clawpenRunId must be 1-64 of [A-Za-z0-9_-]")).await;
                        continue;
                    }
                };
                if let Some(k) = key {
                    by_key.insert(k, run_id.clone());
                }
                out.send(res_ok(&id, json!({"runId": run_id, "status": "started"}))).await;
                let (s, out, session_key, message, rid) = (s.clone(), out.clone(), params["sessionKey"].clone(), message.to_owned(), run_id.clone());
                runs.insert(
                    run_id,
                    tokio::spawn(async move {
                        let base = json!({"runId": rid, "sessionKey": session_key});
                        match turn(&s, &session, message, Some(rid.clone()), None).await {
                            Ok(reply) => {
                                let msg = json!({"role": "assistant", "content": [{"type": "text", "text": reply.reply}]});
                                out.event("chat", merge(&base, json!({"state": "delta", "message": msg}))).await;
                                let extra = json!({"state": "final", "message": msg, "stoppedBy": reply.stopped_by, "paused": reply.paused, "errorCode": reply.error_code});
                                out.event("chat", merge(&base, extra)).await;
                            }
                            Err((_, e)) => out.event("chat", merge(&base, json!({"state": "error", "errorMessage": e}))).await,
                        }
                    }),
                );
            }
            "chat.abort" => {
                let run_id = params["runId"].as_str().unwrap_or_default();
                let aborted = match runs.remove(run_id) {
                    Some(h) if !h.is_finished() => {
                        h.abort();
                        out.event("chat", json!({"runId": run_id, "sessionKey": params["sessionKey"], "state": "aborted"})).await;
                        true
                    }
                    _ => false,
                };
                out.send(res_ok(&id, json!({"ok": true, "aborted": aborted}))).await;
            }
            "chat.history" => {
                let Some(session) = session_of(params) else {
                    out.send(res_err(&id, "INVALID_REQUEST", "chat.history needs a sessionKey of [A-Za-z0-9:_-]")).await;
                    continue;
                };
                let limit = params["limit"].as_u64().unwrap_or(50).clamp(1, 200) as usize;
                match session::history(&s.workspace, &session, 256 * 1024).await {
                    Ok(messages) => {
                        let messages: Vec<Value> = messages
                            .iter()
                            .filter_map(|m| serde_json::to_value(m).ok())
                            .map(|m| json!({"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}))
                            .collect();
                        let skip = messages.len().saturating_sub(limit);
                        out.send(res_ok(&id, json!({"sessionKey": params["sessionKey"], "messages": messages[skip..]}))).await;
                    }
                    Err(e) => out.send(res_err(&id, "UNAVAILABLE", &format!("cannot read the session: {e}"))).await,
                }
            }
            "connect" => out.send(res_err(&id, "INVALID_REQUEST", "already connected")).await,
            other => out.send(res_err(&id, "INVALID_REQUEST", &format!("unknown method {other:?}; this agent offers {}", METHODS.join(", ")))).await,
        }
    }
    // The client went away: its runs stop (what they already wrote stays in the session).
    for (_, h) in runs {
        h.abort();
    }
    ticker.abort();
    drop(out);
    let _ = writer.await;
}

/// OpenClaw session keys look like `agent:main:main`; the agent keeps one session log per key,
/// named by its last part.
fn session_of(params: &Value) -> Option<String> {
    let key = params["sessionKey"].as_str().unwrap_or("main");
    let ok = !key.is_empty() && key.len() <= 128 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:".contains(&b));
    let name = key.rsplit(':').next()?;
    (ok && !name.is_empty() && name.len() <= 64).then(|| name.to_owned())
}

fn merge(base: &Value, extra: Value) -> Value {
    let mut v = base.clone();
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}
