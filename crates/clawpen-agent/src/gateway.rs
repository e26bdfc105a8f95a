//! OpenClaw's gateway protocol, versions 4 and 3, spoken by the agent on `GET /gateway` (a
//! WebSocket on its socket; the server relays clients to it after checking their signed connect
//! URL). The reference is OpenClaw's own schema and server (docs/openclaw/PROTOCOL.md, and the
//! JSON Schemas beside it, which the tests validate every frame against).
//!
//! - **Handshake.** The agent opens with `connect.challenge {nonce, ts}`. The first frame must be
//!   a `connect` request (within [`CONNECT_WITHIN`], at most [`PRE_CONNECT_MAX`] bytes); the
//!   highest of 4 and 3 inside the client's `minProtocol..maxProtocol` is spoken from then on,
//!   and `hello-ok` of that version is the very next frame. No common version: `INVALID_REQUEST
//!   "protocol mismatch"` with `details.expectedProtocol`, closed with 1002.
//! - **Chat.** `chat.send {sessionKey, message, idempotencyKey}` is answered at once
//!   `{runId: idempotencyKey, status: "started"}` (a repeated key: the same run, `in_flight` or
//!   its outcome). The run's answer streams as it is written: `agent` events (lifecycle start,
//!   assistant `{text, delta}` per piece, lifecycle end or error) and `chat` events of the
//!   negotiated version (v3: the whole text so far on each delta; v4: `deltaText`), ending in
//!   exactly one `final`, `aborted` or `error`. The server relaying a `chat.send` opens the run in
//!   the meter and puts that run's id in the params as `clawpenRunId`; the model calls carry it.
//! - `chat.abort {sessionKey, runId?}`, `chat.history {sessionKey, limit, maxChars}`,
//!   `sessions.list`, `agent.identity.get`, `agents.list`, `models.list`, `health`. Methods for
//!   what a sandboxed agent does not have (nodes, exec approvals, config, devices…) answer an
//!   error that says so; any other unknown method `INVALID_REQUEST "unknown method: …"`.
//! - A v4 `cancel {id}` frame is accepted and answered with nothing: every request here is
//!   answered at once, so there is never one in flight to cancel (runs are stopped with
//!   `chat.abort`).
//!
//! What clawpen adds goes where the schema has room: a guard that stopped a run is the final
//! event's `stopReason` (`max_tool_calls`, `max_run_time`); a meter refusal (a pause, a cap, a
//! rate limit) ends the run in `error` with the meter's words as `errorMessage`, its code as
//! `stopReason` and, in v4, `errorKind: "rate_limit"`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::server::{turn, valid_run_id, AgentState};
use crate::session::{self, LogLine};

/// The first request must come this soon.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// Largest frame before `connect` (OpenClaw's `MAX_PREAUTH_PAYLOAD_BYTES`).
pub const PRE_CONNECT_MAX: usize = 64 * 1024;
/// Largest frame after it.
pub const FRAME_MAX: usize = 256 * 1024;
/// The versions spoken, newest first.
pub const PROTOCOLS: [u64; 2] = [4, 3];
/// Methods advertised in `hello-ok`.
pub const METHODS: [&str; 8] = ["chat.send", "chat.history", "chat.abort", "sessions.list", "agent.identity.get", "agents.list", "models.list", "health"];
/// Events advertised in `hello-ok`.
pub const EVENTS: [&str; 4] = ["tick", "chat", "agent", "shutdown"];
/// The one agent a connection reaches, as OpenClaw clients name it.
const AGENT: &str = "main";
/// Most messages `chat.history` returns, and the default.
const HISTORY_MAX: u64 = 1000;
const HISTORY_DEFAULT: u64 = 200;
/// Bytes of the session log read back for `chat.history`.
const HISTORY_BYTES: usize = 1024 * 1024;
/// Text blocks of `chat.history` are cut here (as OpenClaw's display sanitiser cuts them).
const HISTORY_TEXT_MAX: usize = 12_000;
/// v3 deltas carry the whole text so far: at most one each this often (the last comes whole
/// with the final).
const V3_DELTA_EVERY: Duration = Duration::from_millis(100);
/// Messages that stop a session's runs instead of starting one (OpenClaw's stop commands).
const STOP_WORDS: [&str; 6] = ["/stop", "stop", "esc", "abort", "wait", "exit"];

/// Whether a `chat.send` message is a stop command (OpenClaw's: it aborts the session's runs
/// instead of starting one).
pub fn is_stop_command(message: &str) -> bool {
    STOP_WORDS.contains(&message.trim().to_lowercase().as_str())
}
/// Method families a sandboxed agent has nothing for.
const NOT_HERE: [&str; 16] = [
    "node.", "exec.", "device.", "config.", "approval", "wizard.", "update.", "skills.", "cron.", "channels.", "talk.", "tts.", "voicewake.", "system-", "logs.", "agents.create",
];

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

fn invalid(id: &Value, message: &str) -> Value {
    res_err(id, "INVALID_REQUEST", message)
}

/// Sends frames in order and numbers events on the connection.
struct Out {
    tx: mpsc::Sender<Message>,
    seq: AtomicU64,
}

impl Out {
    async fn send(&self, v: Value) {
        let _ = self.tx.send(Message::Text(v.to_string().into())).await;
    }

    async fn event(&self, event: &str, payload: Value) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
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

/// The version to speak with a client offering `min..=max`: the newest both speak.
pub fn negotiate(min: u64, max: u64) -> Option<u64> {
    PROTOCOLS.into_iter().find(|v| (min..=max).contains(v))
}

/// What is wrong with `connect` params, if anything. Only what the agent needs is checked;
/// fields newer clients add are let through (OpenClaw's advice: be lenient on input).
fn connect_params_problem(p: &Value) -> Option<String> {
    for f in ["minProtocol", "maxProtocol"] {
        if p[f].as_u64().is_none_or(|v| v < 1) {
            return Some(format!("{f} must be an integer of at least 1"));
        }
    }
    for f in ["id", "version", "platform", "mode"] {
        if p["client"][f].as_str().is_none_or(str::is_empty) {
            return Some(format!("client.{f} must be a non-empty string"));
        }
    }
    None
}

async fn serve(s: Arc<AgentState>, mut socket: WebSocket) {
    let challenge = json!({"type": "event", "event": "connect.challenge", "payload": {"nonce": nonce(), "ts": session::now_ms()}});
    if socket.send(Message::Text(challenge.to_string().into())).await.is_err() {
        return;
    }
    let Some(version) = handshake(&s, &mut socket).await else { return };
    connected(s, socket, version).await;
}

/// Reads the `connect` request and answers it; the version spoken, or `None` when the
/// connection was closed.
async fn handshake(s: &AgentState, socket: &mut WebSocket) -> Option<u64> {
    let first = match tokio::time::timeout(CONNECT_WITHIN, socket.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => t,
        Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return None,
        Ok(Some(Ok(_))) => {
            close(socket, 1008, "invalid request frame").await;
            return None;
        }
        Err(_) => {
            close(socket, 1000, "connect did not come in time").await;
            return None;
        }
    };
    if first.len() > PRE_CONNECT_MAX {
        close(socket, 1009, "preauth payload too large").await;
        return None;
    }
    let req = serde_json::from_str::<Value>(&first).ok().filter(|r| r["type"] == "req" && r["id"].as_str().is_some_and(|i| !i.is_empty()) && r["method"].as_str().is_some_and(|m| !m.is_empty()));
    let Some(req) = req else {
        close(socket, 1008, "invalid request frame").await;
        return None;
    };
    let id = &req["id"];
    let refuse = |message: &str| Message::Text(invalid(id, message).to_string().into());
    if req["method"] != "connect" {
        let m = "invalid handshake: first request must be connect";
        let _ = socket.send(refuse(m)).await;
        close(socket, 1008, m).await;
        return None;
    }
    let params = &req["params"];
    if let Some(problem) = connect_params_problem(params) {
        let m = format!("invalid connect params: {problem}");
        let _ = socket.send(refuse(&m)).await;
        close(socket, 1008, "invalid connect params").await;
        return None;
    }
    let (min, max) = (params["minProtocol"].as_u64().unwrap_or(0), params["maxProtocol"].as_u64().unwrap_or(0));
    let Some(version) = negotiate(min, max) else {
        let details = json!({"code": "PROTOCOL_MISMATCH", "clientMinProtocol": min, "clientMaxProtocol": max, "expectedProtocol": PROTOCOLS[0], "minimumProbeProtocol": PROTOCOLS[1]});
        let frame = json!({"type": "res", "id": id, "ok": false, "error": {"code": "INVALID_REQUEST", "message": "protocol mismatch", "details": details}});
        let _ = socket.send(Message::Text(frame.to_string().into())).await;
        close(socket, 1002, "protocol mismatch").await;
        return None;
    };
    let role = params["role"].as_str().unwrap_or("operator");
    if role != "operator" {
        let _ = socket.send(refuse("invalid role")).await;
        close(socket, 1008, "invalid role").await;
        return None;
    }
    let scopes: Vec<String> = match params["scopes"].as_array() {
        Some(a) if !a.is_empty() => a.iter().filter_map(|x| x.as_str()).filter(|x| !x.is_empty()).map(str::to_owned).collect(),
        _ => vec!["operator.read".into(), "operator.write".into()],
    };
    let hello = hello_ok(s, version, &scopes);
    if socket.send(Message::Text(res_ok(id, hello).to_string().into())).await.is_err() {
        return None;
    }
    Some(version)
}

/// `hello-ok` of `version`: v3 has no `auth`, v4 needs `auth {role, scopes}`.
fn hello_ok(s: &AgentState, version: u64, scopes: &[String]) -> Value {
    let tick = s.config().gateway_tick;
    let mut hello = json!({
        "type": "hello-ok",
        "protocol": version,
        "server": {"version": env!("CARGO_PKG_VERSION"), "connId": nonce()},
        "features": {"methods": METHODS, "events": EVENTS},
        "snapshot": {
            "presence": [],
            "health": {},
            "stateVersion": {"presence": 0, "health": 0},
            "uptimeMs": s.uptime().as_millis() as u64,
            "sessionDefaults": {"defaultAgentId": AGENT, "mainKey": "main", "mainSessionKey": "agent:main:main"},
            "authMode": "none",
        },
        "policy": {"maxPayload": FRAME_MAX, "maxBufferedBytes": 4 * FRAME_MAX, "tickIntervalMs": tick.as_millis() as u64},
    });
    if version >= 4 {
        hello["auth"] = json!({"role": "operator", "scopes": scopes});
    }
    hello
}

/// A run started by `chat.send`, while it goes on.
struct Running {
    /// The session key as the client sent it (echoed on every event of the run).
    session_key: Value,
    /// The session log it writes to.
    session: String,
    handle: tokio::task::JoinHandle<()>,
    /// What the model has written so far, and the run's event numbering.
    progress: Arc<Progress>,
    /// The user's message and when it was sent, for the log of an aborted turn.
    text: String,
    asked_at: String,
}

/// A run's answer so far and its event numbering (shared by the run's task and an abort).
#[derive(Default)]
struct Progress {
    text: Mutex<String>,
    seq: AtomicU64,
}

impl Progress {
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// How a finished run ended, for a repeated `chat.send` with its key.
#[derive(Clone)]
enum Outcome {
    Ok,
    Failed(String),
}

async fn connected(s: Arc<AgentState>, socket: WebSocket, version: u64) {
    // A writer task owns the sink; runs send their events through it.
    let (mut sink, mut stream) = futures_util::StreamExt::split(socket);
    let (tx, mut rx) = mpsc::channel::<Message>(256);
    let out = Arc::new(Out { tx, seq: AtomicU64::new(1) });
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
        let (out, every) = (out.clone(), s.config().gateway_tick);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            loop {
                t.tick().await;
                out.event("tick", json!({"ts": session::now_ms()})).await;
            }
        })
    };
    let mut runs: HashMap<String, Running> = HashMap::new();
    let outcomes: Arc<Mutex<HashMap<String, Outcome>>> = Arc::default();
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
        runs.retain(|_, r| !r.handle.is_finished());
        let Ok(req) = serde_json::from_str::<Value>(&text) else {
            out.send(invalid(&json!("invalid"), "invalid request frame: not JSON")).await;
            continue;
        };
        // v4's cancel: nothing here is ever still pending, so there is nothing to answer.
        if req["type"] == "cancel" {
            continue;
        }
        let id = req["id"].clone();
        let method = req["method"].as_str().unwrap_or_default();
        if req["type"] != "req" || id.as_str().is_none_or(str::is_empty) || method.is_empty() {
            let id = if id.as_str().is_some_and(|i| !i.is_empty()) { id } else { json!("invalid") };
            out.send(invalid(&id, "invalid request frame: frames are {type: \"req\", id, method, params}")).await;
            continue;
        }
        let params = &req["params"];
        let frame = match method {
            "chat.send" => chat_send(&s, &out, version, &mut runs, &outcomes, &id, params).await,
            "chat.abort" => chat_abort(&s, &out, version, &mut runs, &outcomes, &id, params).await,
            "chat.history" => chat_history(&s, &id, params).await,
            "sessions.list" => sessions_list(&s, &id).await,
            "agent.identity.get" => res_ok(&id, json!({"agentId": AGENT, "name": agent_name(&s)})),
            "agents.list" => res_ok(&id, json!({"defaultId": AGENT, "mainKey": "main", "scope": "per-sender", "agents": [{"id": AGENT, "name": agent_name(&s)}]})),
            "models.list" => res_ok(&id, json!({"models": [{"id": s.config().model, "name": s.config().model}]})),
            "health" => res_ok(&id, json!({"ok": true})),
            "connect" => invalid(&id, "already connected"),
            other if NOT_HERE.iter().any(|p| other.starts_with(p)) => {
                invalid(&id, &format!("{other} is not available: this is a sandboxed clawpen agent, which has no nodes, devices, approvals or gateway config"))
            }
            other => invalid(&id, &format!("unknown method: {other}")),
        };
        // Null: the handler answered itself (an ack that must precede its events).
        if !frame.is_null() {
            out.send(frame).await;
        }
    }
    // The client went away: its runs stop (and with them their model calls); what they had
    // written is kept in the session.
    for (run_id, r) in runs {
        if !r.handle.is_finished() {
            stop_run(&s, None, &run_id, r).await;
        }
    }
    ticker.abort();
    drop(out);
    let _ = writer.await;
}

fn agent_name(s: &AgentState) -> String {
    let id = s.config().agent_id.clone();
    if id.is_empty() {
        AGENT.to_owned()
    } else {
        id
    }
}

/// The session log an OpenClaw session key names: `main` and `agent:main:main` are the main
/// session; `agent:main:<rest>` is `<rest>` (`:` becomes `-`); any other key is itself. `None`
/// when that is not a name the log can have.
pub fn session_of(key: &str) -> Option<String> {
    let rest = key.strip_prefix("agent:main:").unwrap_or(key);
    let name: String = rest.chars().map(|c| if c == ':' { '-' } else { c }).collect();
    let ok = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(name)
}

/// The key of a session log, as OpenClaw clients know it.
fn key_of(session: &str) -> String {
    format!("agent:main:{session}")
}

/// The session of a request's `sessionKey`, or the error frame for it.
fn session_param(id: &Value, method: &str, params: &Value) -> Result<(Value, String), Value> {
    let Some(key) = params["sessionKey"].as_str().filter(|k| !k.is_empty()) else {
        return Err(invalid(id, &format!("invalid {method} params: sessionKey is required")));
    };
    match session_of(key) {
        Some(session) => Ok((json!(key), session)),
        None => Err(invalid(id, &format!("invalid {method} params: sessionKey names no session this agent keeps (1-64 of [A-Za-z0-9_-], after agent:main:)"))),
    }
}

async fn chat_send(s: &Arc<AgentState>, out: &Arc<Out>, version: u64, runs: &mut HashMap<String, Running>, outcomes: &Arc<Mutex<HashMap<String, Outcome>>>, id: &Value, params: &Value) -> Value {
    let (session_key, session) = match session_param(id, "chat.send", params) {
        Ok(k) => k,
        Err(frame) => return frame,
    };
    let Some(key) = params["idempotencyKey"].as_str().filter(|k| !k.is_empty()) else {
        return invalid(id, "invalid chat.send params: idempotencyKey is required");
    };
    let Some(message) = params["message"].as_str() else {
        return invalid(id, "invalid chat.send params: message must be a string");
    };
    if message.contains('\0') {
        return invalid(id, "message must not contain null bytes");
    }
    if params["attachments"].as_array().is_some_and(|a| !a.is_empty()) {
        return invalid(id, "attachments are not supported by this agent yet; send the message as text");
    }
    // A repeated key is the same run: still going, or its outcome.
    if runs.contains_key(key) {
        return res_ok(id, json!({"runId": key, "status": "in_flight"}));
    }
    if let Some(done) = outcomes.lock().expect("outcomes").get(key).cloned() {
        return match done {
            Outcome::Ok => res_ok(id, json!({"runId": key, "status": "ok"})),
            Outcome::Failed(summary) => json!({"type": "res", "id": id, "ok": false, "payload": {"runId": key, "status": "error", "summary": summary}, "error": {"code": "UNAVAILABLE", "message": summary}}),
        };
    }
    let message: String = message.chars().filter(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r')).collect();
    if is_stop_command(&message) {
        let ids = abort_session(s, out, version, runs, outcomes, &session, None).await;
        return res_ok(id, json!({"ok": true, "aborted": !ids.is_empty(), "runIds": ids}));
    }
    if message.trim().is_empty() {
        return invalid(id, "message or attachment required");
    }
    // A command the server answered itself (`/approve N`, `/proposals` …, which only the
    // user may give): the answer is the reply, and the model never sees either.
    if let Some(reply) = params["clawpenCommandReply"].as_str() {
        command_reply(out, outcomes, id, key, &session_key, reply).await;
        return Value::Null;
    }
    // The server relaying this opened the run in the meter (its id is what the model calls
    // carry); without one (the gateway used alone, in tests) the run's own id stands in.
    let meter_run = match &params["clawpenRunId"] {
        Value::String(r) if valid_run_id(r) => Some(r.clone()),
        Value::Null => None,
        _ => return invalid(id, "invalid chat.send params: clawpenRunId must be 1-64 of [A-Za-z0-9_-]"),
    };
    let progress = Arc::new(Progress::default());
    let asked_at = session::now_ts();
    let handle = tokio::spawn(run(s.clone(), out.clone(), version, key.to_owned(), session_key.clone(), session.clone(), message.clone(), meter_run, progress.clone(), outcomes.clone()));
    runs.insert(key.to_owned(), Running { session_key, session, handle, progress, text: message, asked_at });
    res_ok(id, json!({"runId": key, "status": "started"}))
}

/// The run of a command the server answered: acknowledged, then ended at once with the
/// server's answer as its final message (the ack is sent here so it comes before the events).
async fn command_reply(out: &Out, outcomes: &Mutex<HashMap<String, Outcome>>, id: &Value, key: &str, session_key: &Value, reply: &str) {
    out.send(res_ok(id, json!({"runId": key, "status": "started"}))).await;
    let progress = Progress::default();
    let lifecycle = |phase: &str| json!({"runId": key, "seq": progress.next_seq(), "stream": "lifecycle", "ts": session::now_ms(), "sessionKey": session_key, "data": {"phase": phase}});
    out.event("agent", lifecycle("start")).await;
    out.event("agent", lifecycle("end")).await;
    let message = json!({"role": "assistant", "content": [{"type": "text", "text": reply}], "timestamp": session::now_ms()});
    out.event("chat", json!({"runId": key, "sessionKey": session_key, "seq": progress.next_seq(), "state": "final", "message": message, "stopReason": "stop"})).await;
    remember(outcomes, key, Outcome::Ok);
}

/// One run: the turn, with its answer passed on as it is written, then its end.
#[allow(clippy::too_many_arguments)] // the run's own parts, moved into its task
async fn run(
    s: Arc<AgentState>,
    out: Arc<Out>,
    version: u64,
    run_id: String,
    session_key: Value,
    session: String,
    message: String,
    meter_run: Option<String>,
    progress: Arc<Progress>,
    outcomes: Arc<Mutex<HashMap<String, Outcome>>>,
) {
    let agent_event = |data: Value| json!({"runId": run_id, "seq": progress.next_seq(), "stream": "", "ts": session::now_ms(), "sessionKey": session_key, "data": data});
    let lifecycle = |data: Value| {
        let mut e = agent_event(data);
        e["stream"] = json!("lifecycle");
        e
    };
    out.event("agent", lifecycle(json!({"phase": "start"}))).await;
    let (tx, mut deltas) = mpsc::unbounded_channel::<String>();
    let meter_run = meter_run.or_else(|| valid_run_id(&run_id).then(|| run_id.clone()));
    let turn_done = turn(&s, &session, message, meter_run, Some(tx));
    tokio::pin!(turn_done);
    let mut first = true;
    let mut v3_sent_at: Option<Instant> = None;
    let ended = loop {
        tokio::select! {
            biased;
            Some(piece) = deltas.recv() => {
                let text = {
                    let mut t = progress.text.lock().expect("progress");
                    t.push_str(&piece);
                    t.clone()
                };
                let mut e = agent_event(json!({"text": text, "delta": piece}));
                e["stream"] = json!("assistant");
                let seq = e["seq"].clone();
                out.event("agent", e).await;
                let snapshot = json!({"role": "assistant", "content": [{"type": "text", "text": text}], "timestamp": session::now_ms()});
                if version >= 4 {
                    let mut d = json!({"runId": run_id, "sessionKey": session_key, "seq": seq, "state": "delta", "deltaText": piece});
                    // The first piece carries the whole message so far; the rest only append.
                    if first {
                        d["message"] = snapshot;
                    }
                    out.event("chat", d).await;
                } else if v3_sent_at.is_none_or(|at| at.elapsed() >= V3_DELTA_EVERY) {
                    out.event("chat", json!({"runId": run_id, "sessionKey": session_key, "seq": seq, "state": "delta", "message": snapshot})).await;
                    v3_sent_at = Some(Instant::now());
                }
                first = false;
            }
            r = &mut turn_done => break r,
        }
    };
    let base = |state: &str| json!({"runId": run_id, "sessionKey": session_key, "seq": progress.next_seq(), "state": state});
    let outcome = match ended {
        // A refusal of the meter (a pause, a cap, a rate limit): the run ends in error with the
        // meter's words. A full workspace still answered: only the saving failed.
        Ok(reply) if reply.error_code.as_deref().is_some_and(|c| c != "workspace_full") => {
            let code = reply.error_code.clone().unwrap_or_default();
            let mut e = base("error");
            e["errorMessage"] = json!(reply.reply);
            e["stopReason"] = json!(code);
            if version >= 4 {
                e["errorKind"] = json!("rate_limit");
            }
            out.event("agent", lifecycle(json!({"phase": "error", "error": reply.reply}))).await;
            out.event("chat", e).await;
            Outcome::Failed(reply.reply)
        }
        Ok(reply) => {
            let mut e = base("final");
            e["message"] = json!({"role": "assistant", "content": [{"type": "text", "text": reply.reply}], "timestamp": session::now_ms()});
            e["stopReason"] = json!(reply.stopped_by.clone().unwrap_or_else(|| "stop".into()));
            out.event("agent", lifecycle(json!({"phase": "end"}))).await;
            out.event("chat", e).await;
            Outcome::Ok
        }
        Err((_, error)) => {
            let mut e = base("error");
            e["errorMessage"] = json!(error);
            if version >= 4 {
                e["errorKind"] = json!("unknown");
            }
            out.event("agent", lifecycle(json!({"phase": "error", "error": error}))).await;
            out.event("chat", e).await;
            Outcome::Failed(error)
        }
    };
    remember(&outcomes, &run_id, outcome);
}

/// Keeps how a run ended, for a repeated send with its key (the newest 256 runs).
fn remember(outcomes: &Mutex<HashMap<String, Outcome>>, run_id: &str, outcome: Outcome) {
    let mut o = outcomes.lock().expect("outcomes");
    if o.len() >= 256 {
        o.clear();
    }
    o.insert(run_id.to_owned(), outcome);
}

async fn chat_abort(s: &Arc<AgentState>, out: &Arc<Out>, version: u64, runs: &mut HashMap<String, Running>, outcomes: &Arc<Mutex<HashMap<String, Outcome>>>, id: &Value, params: &Value) -> Value {
    let (_, session) = match session_param(id, "chat.abort", params) {
        Ok(k) => k,
        Err(frame) => return frame,
    };
    let only = match &params["runId"] {
        Value::Null => None,
        Value::String(r) => Some(r.as_str()),
        _ => return invalid(id, "invalid chat.abort params: runId must be a string"),
    };
    if let Some(r) = only.and_then(|r| runs.get(r)) {
        if r.session != session {
            return invalid(id, "runId does not match sessionKey");
        }
    }
    let ids = abort_session(s, out, version, runs, outcomes, &session, only).await;
    res_ok(id, json!({"ok": true, "aborted": !ids.is_empty(), "runIds": ids}))
}

/// Stops the session's runs (only `only`, when given): each ends in one `aborted` event with
/// what it had written, and its turn is logged with that partial answer. The ids stopped.
async fn abort_session(s: &AgentState, out: &Out, _version: u64, runs: &mut HashMap<String, Running>, outcomes: &Mutex<HashMap<String, Outcome>>, session: &str, only: Option<&str>) -> Vec<String> {
    let ids: Vec<String> = runs.iter().filter(|(k, r)| r.session == session && only.is_none_or(|o| o == k.as_str()) && !r.handle.is_finished()).map(|(k, _)| k.clone()).collect();
    for run_id in &ids {
        let Some(r) = runs.remove(run_id) else { continue };
        stop_run(s, Some(out), run_id, r).await;
        remember(outcomes, run_id, Outcome::Ok);
    }
    ids
}

/// Stops a run: it ends in one `aborted` event with what it had written (when `out` is given:
/// the client is still there), and its turn is logged with that partial answer.
async fn stop_run(s: &AgentState, out: Option<&Out>, run_id: &str, r: Running) {
    r.handle.abort();
    let partial = r.progress.text.lock().expect("progress").clone();
    if let Some(out) = out {
        let mut e = json!({"runId": run_id, "sessionKey": r.session_key, "seq": r.progress.next_seq(), "state": "aborted", "stopReason": "rpc"});
        if !partial.is_empty() {
            e["message"] = json!({"role": "assistant", "content": [{"type": "text", "text": partial}], "timestamp": session::now_ms()});
        }
        let end = json!({"runId": run_id, "seq": r.progress.next_seq(), "stream": "lifecycle", "ts": session::now_ms(), "sessionKey": r.session_key, "data": {"phase": "end", "aborted": true}});
        out.event("agent", end).await;
        out.event("chat", e).await;
    }
    // The turn happened as far as it went: the question and the partial answer are kept.
    let lines = [
        LogLine::User { content: r.text.clone(), ts: r.asked_at.clone(), run: Some(run_id.to_owned()), error_code: None },
        LogLine::Assistant { content: partial, ts: session::now_ts(), run: Some(run_id.to_owned()), stopped_by: Some("aborted".into()), error_code: None },
    ];
    if let Err(err) = session::append(&s.workspace, &r.session, &lines).await {
        eprintln!("clawpen agent: cannot log the stopped run {run_id}: {err}");
    }
}

async fn chat_history(s: &AgentState, id: &Value, params: &Value) -> Value {
    let (session_key, session) = match session_param(id, "chat.history", params) {
        Ok(k) => k,
        Err(frame) => return frame,
    };
    let limit = match &params["limit"] {
        Value::Null => HISTORY_DEFAULT,
        v => match v.as_u64().filter(|n| (1..=HISTORY_MAX).contains(n)) {
            Some(n) => n,
            None => return invalid(id, &format!("invalid chat.history params: limit must be an integer from 1 to {HISTORY_MAX}")),
        },
    } as usize;
    let max_chars = match &params["maxChars"] {
        Value::Null => HISTORY_TEXT_MAX,
        v => match v.as_u64().filter(|n| (1..=500_000).contains(n)) {
            Some(n) => (n as usize).min(HISTORY_TEXT_MAX),
            None => return invalid(id, "invalid chat.history params: maxChars must be an integer from 1 to 500000"),
        },
    };
    let lines = match session::transcript(&s.workspace, &session, HISTORY_BYTES).await {
        Ok(l) => l,
        Err(e) => return res_err(id, "UNAVAILABLE", &format!("cannot read the session: {e}")),
    };
    let messages: Vec<Value> = lines.into_iter().map(|l| transcript_message(l, max_chars)).collect();
    let skip = messages.len().saturating_sub(limit);
    res_ok(id, json!({"sessionKey": session_key, "sessionId": session, "messages": messages[skip..]}))
}

fn cut(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…\n...(truncated)...", &text[..i]),
        None => text,
    }
}

/// A log line as OpenClaw's transcript shows it.
fn transcript_message(line: LogLine, max_chars: usize) -> Value {
    let block = |t: String| json!([{"type": "text", "text": cut(t, max_chars)}]);
    match line {
        LogLine::User { content, ts, .. } => json!({"role": "user", "content": block(content), "timestamp": session::ts_ms(&ts)}),
        LogLine::Assistant { content, ts, stopped_by, error_code, .. } => {
            let mut m = json!({"role": "assistant", "content": block(content.clone()), "timestamp": session::ts_ms(&ts)});
            match (error_code.as_deref(), stopped_by.as_deref()) {
                (Some(_), _) => {
                    m["stopReason"] = json!("error");
                    m["errorMessage"] = json!(cut(content, max_chars));
                }
                (None, Some("aborted")) => m["stopReason"] = json!("aborted"),
                (None, Some(_)) => m["stopReason"] = json!("length"),
                (None, None) => m["stopReason"] = json!("stop"),
            }
            m
        }
        LogLine::Tool { name, result, ts, run, .. } => json!({
            "role": "toolResult",
            "toolCallId": format!("{}-{name}", run.unwrap_or_default()),
            "toolName": name,
            "content": block(result),
            "isError": false,
            "timestamp": session::ts_ms(&ts),
        }),
    }
}

async fn sessions_list(s: &AgentState, id: &Value) -> Value {
    let sessions = match session::list(&s.workspace, 1000).await {
        Ok(l) => l,
        Err(e) => return res_err(id, "UNAVAILABLE", &format!("cannot list the sessions: {e}")),
    };
    let rows: Vec<Value> = sessions
        .iter()
        .map(|(name, at)| json!({"key": key_of(name), "kind": "direct", "updatedAt": at, "sessionId": name, "displayName": name}))
        .collect();
    res_ok(id, json!({"ts": session::now_ms(), "path": "", "count": rows.len(), "defaults": {"modelProvider": null, "model": s.config().model, "contextTokens": null}, "sessions": rows}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_common_version_is_spoken() {
        assert_eq!(negotiate(3, 4), Some(4));
        assert_eq!(negotiate(4, 9), Some(4));
        assert_eq!(negotiate(3, 3), Some(3));
        assert_eq!(negotiate(1, 2), None);
        assert_eq!(negotiate(5, 6), None);
    }

    #[test]
    fn session_keys_map_to_logs() {
        assert_eq!(session_of("main").as_deref(), Some("main"));
        assert_eq!(session_of("agent:main:main").as_deref(), Some("main"));
        assert_eq!(session_of("agent:main:webchat:dm:web-1").as_deref(), Some("webchat-dm-web-1"));
        assert_eq!(session_of("../etc"), None);
        assert_eq!(session_of(""), None);
        assert_eq!(key_of("main"), "agent:main:main");
    }
}
