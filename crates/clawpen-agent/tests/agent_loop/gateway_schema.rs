//! Every frame the agent's gateway sends, in a scripted session of each protocol version,
//! validated against OpenClaw's JSON Schema of that version (`docs/openclaw/`, with the OpenClaw
//! commits it was taken from): the envelope of every frame, and the payload of every response
//! and event the schema has a definition for. No property the schema does not allow.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::fake_meter::{text, text_chunks, Canned};
use crate::Harness;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>;

/// One version's schema, with a validator per definition (built once: building one takes a
/// good part of a second).
struct Schema {
    version: u64,
    doc: Value,
    defs_key: &'static str,
    validators: std::cell::RefCell<std::collections::HashMap<String, std::rc::Rc<jsonschema::Validator>>>,
}

impl Schema {
    fn load(version: u64) -> Schema {
        let path = format!("{}/../../docs/openclaw/protocol-v{version}.schema.json", env!("CARGO_MANIFEST_DIR"));
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("the schema file")).expect("schema JSON");
        let defs_key = if doc.get("$defs").is_some() { "$defs" } else { "definitions" };
        Schema { version, doc, defs_key, validators: Default::default() }
    }

    fn has(&self, def: &str) -> bool {
        self.doc[self.defs_key].get(def).is_some()
    }

    /// The violations of `value` against definition `def`.
    fn violations(&self, def: &str, value: &Value) -> Vec<String> {
        let validator = self.validators.borrow_mut().entry(def.to_owned()).or_insert_with(|| {
            // Only the definitions and the reference: the document's own top-level keywords (its
            // `oneOf` of frames) would apply beside a `$ref` in draft 2020-12.
            let mut root = json!({"$ref": format!("#/{}/{def}", self.defs_key)});
            root["$schema"] = self.doc["$schema"].clone();
            root[self.defs_key] = self.doc[self.defs_key].clone();
            std::rc::Rc::new(jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("schema v{} {def}: {e}", self.version)))
        }).clone();
        validator.iter_errors(value).map(|e| format!("{def}: {e} at {}", e.instance_path)).collect()
    }
}

/// Checks one frame from the agent; `method` is what the response answers, if it is one.
fn check(schema: &Schema, frame: &Value, method: Option<&str>, problems: &mut Vec<String>) {
    let mut found = Vec::new();
    match frame["type"].as_str() {
        Some("res") => {
            found.extend(schema.violations("ResponseFrame", frame));
            if frame["ok"] == true {
                let def = match method {
                    Some("connect") => Some("HelloOk"),
                    Some("chat.send") if frame["payload"].get("runIds").is_some() => Some("ChatAbortResult"),
                    Some("chat.send") => Some("ChatSendResult"),
                    Some("chat.history") => Some("ChatHistoryResult"),
                    Some("chat.abort") => Some("ChatAbortResult"),
                    Some("sessions.list") => Some("SessionsListResult"),
                    Some("agent.identity.get") => Some("AgentIdentityResult"),
                    _ => None,
                };
                if let Some(def) = def.filter(|d| schema.has(d)) {
                    found.extend(schema.violations(def, &frame["payload"]));
                }
            }
        }
        Some("event") => {
            found.extend(schema.violations("EventFrame", frame));
            let def = match frame["event"].as_str() {
                Some("tick") => "TickEvent",
                Some("chat") => "ChatEvent",
                Some("agent") if schema.has("AgentEventPayload") => "AgentEventPayload",
                Some("agent") => "AgentEvent",
                Some("connect.challenge") => "ConnectChallengeEvent",
                Some("shutdown") => "ShutdownEvent",
                other => panic!("an event the agent should not send: {other:?}"),
            };
            found.extend(schema.violations(def, &frame["payload"]));
            // Chat messages have a schema of their own (the protocol's `message` is open).
            if frame["event"] == "chat" && frame["payload"]["message"].is_object() {
                found.extend(schema.violations("ChatEventMessage", &frame["payload"]["message"]));
            }
        }
        other => found.push(format!("a frame of type {other:?}")),
    }
    if method == Some("chat.history") {
        for m in frame["payload"]["messages"].as_array().into_iter().flatten() {
            found.extend(schema.violations("ChatTranscriptMessage", m));
        }
    }
    problems.extend(found.into_iter().map(|p| format!("v{} {frame}: {p}", schema.version)));
}

/// A gateway connection whose every incoming frame is checked.
struct Session {
    ws: Ws,
    schema: Schema,
    /// Request ids sent, by id, with their method.
    asked: std::collections::HashMap<String, String>,
    frames: Vec<Value>,
    problems: Vec<String>,
    next: u64,
}

impl Session {
    async fn open(h: &Harness, version: u64) -> Session {
        let stream = tokio::net::UnixStream::connect(h.run_dir.join("agent.sock")).await.expect("agent.sock");
        let (ws, _) = tokio_tungstenite::client_async("ws://agent/gateway", stream).await.expect("upgrade");
        Session { ws, schema: Schema::load(version), asked: Default::default(), frames: Vec::new(), problems: Vec::new(), next: 0 }
    }

    async fn raw(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.expect("send");
    }

    async fn req(&mut self, method: &str, params: Value) -> String {
        self.next += 1;
        let id = format!("r{}", self.next);
        self.asked.insert(id.clone(), method.to_owned());
        self.raw(json!({"type": "req", "id": id, "method": method, "params": params})).await;
        id
    }

    /// The next frame (checked), or the close frame's code.
    async fn frame(&mut self) -> Result<Value, Option<u16>> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await.expect("a frame in time");
            match m {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("JSON frames");
                    if std::env::var_os("GW_DEBUG").is_some() { eprintln!("<- {v}"); }
                    let method = v["id"].as_str().and_then(|i| self.asked.get(i)).cloned();
                    check(&self.schema, &v, method.as_deref(), &mut self.problems);
                    self.frames.push(v.clone());
                    return Ok(v);
                }
                Some(Ok(Message::Close(f))) => return Err(f.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// The first frame, received already or from now on, that satisfies `until` (within 30 s).
    async fn until(&mut self, until: impl Fn(&Value) -> bool) -> Value {
        if let Some(f) = self.frames.iter().find(|f| until(f)) {
            return f.clone();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            assert!(tokio::time::Instant::now() < deadline, "the frame looked for did not come");
            let f = self.frame().await.unwrap_or_else(|c| panic!("closed ({c:?}) before the frame looked for"));
            if until(&f) {
                return f;
            }
        }
    }

    async fn answer(&mut self, id: &str) -> Value {
        self.until(|f| f["type"] == "res" && f["id"] == id).await
    }

    async fn connect(&mut self, min: u64, max: u64) -> Value {
        let challenge = self.frame().await.expect("the challenge");
        assert_eq!(challenge["event"], "connect.challenge", "{challenge}");
        let id = self.req("connect", json!({"minProtocol": min, "maxProtocol": max, "client": {"id": "test", "version": "1.0.0", "platform": "linux", "mode": "test"}, "role": "operator"})).await;
        // hello-ok is the very next frame.
        let hello = self.frame().await.expect("hello-ok");
        assert_eq!(hello["id"], id.as_str(), "the connect answer comes next: {hello}");
        hello
    }

    /// The terminal chat event of `run`.
    async fn end_of(&mut self, run: &str) -> Value {
        self.until(|f| f["event"] == "chat" && f["payload"]["runId"] == run && matches!(f["payload"]["state"].as_str(), Some("final" | "aborted" | "error"))).await
    }
}

async fn scripted_session(version: u64) -> Vec<String> {
    let h = Harness::start_with(|c| c.gateway_tick = Duration::from_millis(300)).await;
    let mut s = Session::open(&h, version).await;
    let hello = s.connect(3, 4.min(version.max(3))).await;
    assert_eq!(hello["payload"]["protocol"], version, "{hello}");
    let mut problems = Vec::new();

    // Two streamed sends, a repeated key, history.
    for (key, answer) in [("key-one", "the first streamed answer"), ("key-two", "and the second one")] {
        h.meter.push(text(answer));
        let id = s.req("chat.send", json!({"sessionKey": "agent:main:main", "message": format!("question {key}"), "idempotencyKey": key})).await;
        let ack = s.answer(&id).await;
        assert_eq!(ack["payload"], json!({"runId": key, "status": "started"}), "{ack}");
        let end = s.end_of(key).await;
        assert_eq!(end["payload"]["state"], "final", "{end}");
        assert_eq!(end["payload"]["message"]["content"][0]["text"], answer, "{end}");
        let deltas = s.frames.iter().filter(|f| f["event"] == "agent" && f["payload"]["runId"] == key && f["payload"]["stream"] == "assistant").count();
        assert!(deltas > 2, "the answer streamed in pieces: {deltas}");
    }
    let id = s.req("chat.send", json!({"sessionKey": "agent:main:main", "message": "again", "idempotencyKey": "key-one"})).await;
    assert_eq!(s.answer(&id).await["payload"], json!({"runId": "key-one", "status": "ok"}));
    let id = s.req("chat.history", json!({"sessionKey": "agent:main:main", "limit": 10})).await;
    let history = s.answer(&id).await;
    let texts: Vec<&str> = history["payload"]["messages"].as_array().expect("messages").iter().filter_map(|m| m["content"][0]["text"].as_str()).collect();
    assert_eq!(texts, ["question key-one", "the first streamed answer", "question key-two", "and the second one"], "{history}");

    // Abort by run, then by session, while answers trickle in.
    for (key, by_run) in [("slow-one", true), ("slow-two", false)] {
        h.meter.push(Canned::Trickle(Duration::from_millis(150), text_chunks(&["a ", "slow ", "answer ", "that ", "goes ", "on ", "and ", "on"])));
        let id = s.req("chat.send", json!({"sessionKey": "main", "message": "take your time", "idempotencyKey": key})).await;
        s.answer(&id).await;
        s.until(|f| f["event"] == "agent" && f["payload"]["runId"] == key && f["payload"]["stream"] == "assistant").await;
        let params = if by_run { json!({"sessionKey": "main", "runId": key}) } else { json!({"sessionKey": "main"}) };
        let id = s.req("chat.abort", params).await;
        let aborted = s.answer(&id).await;
        assert_eq!(aborted["payload"], json!({"ok": true, "aborted": true, "runIds": [key]}), "{aborted}");
        let end = s.end_of(key).await;
        assert_eq!((end["payload"]["state"].as_str(), end["payload"]["stopReason"].as_str()), (Some("aborted"), Some("rpc")), "{end}");
    }
    let id = s.req("chat.abort", json!({"sessionKey": "main"})).await;
    assert_eq!(s.answer(&id).await["payload"], json!({"ok": true, "aborted": false, "runIds": []}));

    // A cancel frame is taken quietly; sessions, identity, an unknown and a foreign method; a tick.
    s.raw(json!({"type": "cancel", "id": "r1"})).await;
    let id = s.req("sessions.list", json!({})).await;
    let list = s.answer(&id).await;
    assert_eq!(list["payload"]["sessions"][0]["key"], "agent:main:main", "{list}");
    let id = s.req("agent.identity.get", json!({})).await;
    s.answer(&id).await;
    let id = s.req("no.such.method", json!({})).await;
    assert_eq!(s.answer(&id).await["error"]["message"], "unknown method: no.such.method");
    let id = s.req("node.list", json!({})).await;
    assert!(s.answer(&id).await["error"]["message"].as_str().unwrap().contains("sandboxed"));
    let id = s.req("chat.history", json!({"sessionKey": "main", "limit": 5000})).await;
    assert_eq!(s.answer(&id).await["error"]["code"], "INVALID_REQUEST");
    s.until(|f| f["event"] == "tick").await;
    problems.append(&mut s.problems);

    // A client that speaks no common version: the mismatch answer, then 1002.
    let mut m = Session::open(&h, version).await;
    m.frame().await.expect("challenge");
    let id = m.req("connect", json!({"minProtocol": 5, "maxProtocol": 6, "client": {"id": "test", "version": "1", "platform": "linux", "mode": "test"}})).await;
    let refused = m.answer(&id).await;
    assert_eq!((refused["error"]["code"].as_str(), refused["error"]["message"].as_str()), (Some("INVALID_REQUEST"), Some("protocol mismatch")), "{refused}");
    assert_eq!(refused["error"]["details"]["expectedProtocol"], 4, "{refused}");
    assert_eq!(m.frame().await.err(), Some(Some(1002)), "closed with 1002");
    problems.append(&mut m.problems);

    // A first request that is not connect: refused, then 1008.
    let mut n = Session::open(&h, version).await;
    n.frame().await.expect("challenge");
    let id = n.req("chat.send", json!({"sessionKey": "main", "message": "hi", "idempotencyKey": "x"})).await;
    assert_eq!(n.answer(&id).await["error"]["message"], "invalid handshake: first request must be connect");
    assert_eq!(n.frame().await.err(), Some(Some(1008)));
    problems.append(&mut n.problems);
    problems
}

#[tokio::test]
async fn every_frame_of_a_v4_session_validates_against_openclaws_schema() {
    let problems = scripted_session(4).await;
    assert!(problems.is_empty(), "{} violations:\n{}", problems.len(), problems.join("\n"));
}

#[tokio::test]
async fn every_frame_of_a_v3_session_validates_against_openclaws_schema() {
    let problems = scripted_session(3).await;
    assert!(problems.is_empty(), "{} violations:\n{}", problems.len(), problems.join("\n"));
}

/// The check can fail: frames OpenClaw's schema refuses are found out.
#[test]
fn the_schemas_refuse_what_openclaw_refuses() {
    let (v3, v4) = (Schema::load(3), Schema::load(4));
    let delta = json!({"runId": "r", "sessionKey": "main", "seq": 1, "state": "delta", "deltaText": "x"});
    assert!(!v3.violations("ChatEvent", &delta).is_empty(), "v3 has no deltaText");
    assert!(v4.violations("ChatEvent", &delta).is_empty(), "v4 has it");
    let no_delta_text = json!({"runId": "r", "sessionKey": "main", "seq": 1, "state": "delta"});
    assert!(!v4.violations("ChatEvent", &no_delta_text).is_empty(), "v4 deltas need deltaText");
    assert!(!v4.violations("TickEvent", &json!({"ts": 1, "extra": true})).is_empty(), "closed objects");
    let frame = json!({"type": "res", "id": "1", "ok": true, "payload": {}, "error": null});
    assert!(!v4.violations("ResponseFrame", &frame).is_empty(), "error: null is not an ErrorShape");
}
