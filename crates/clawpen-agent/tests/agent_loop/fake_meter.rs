//! A scripted stand-in for the meter: an axum app on `control.sock` that answers
//! `POST /v1/chat/completions` from a queue of canned answers in the OpenAI streaming format and
//! records every request it gets.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::net::UnixListener;

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Canned {
    /// These chunks as events, each in its own write, then `[DONE]`.
    Stream(Vec<Value>),
    /// A non-200 answer with this JSON body.
    Error(u16, Value),
    /// These chunks, then the connection breaks (no `[DONE]`, no clean end).
    Broken(Vec<Value>),
    /// Waits this long, then answers like `Stream`.
    Slow(Duration, Vec<Value>),
    /// These chunks with this pause before each (a model writing slowly).
    Trickle(Duration, Vec<Value>),
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The `x-clawpen-run` header.
    pub run: Option<String>,
    pub content_type: Option<String>,
    pub body: Value,
    /// Size of the body as sent.
    pub bytes: usize,
}

#[derive(Clone, Default)]
struct Shared {
    script: Arc<Mutex<VecDeque<Canned>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// The fake meter; serves until dropped.
pub struct FakeMeter {
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeMeter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeMeter {
    /// Serves `control.sock` in `run_dir`.
    pub fn serve(run_dir: &Path) -> FakeMeter {
        let listener = UnixListener::bind(run_dir.join("control.sock")).expect("bind control.sock");
        let shared = Shared::default();
        let app = Router::new().route("/v1/chat/completions", post(chat)).with_state(shared.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake meter");
        });
        FakeMeter { shared, task }
    }

    pub fn push(&self, c: Canned) {
        self.shared.script.lock().expect("script").push_back(c);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("seen").clone()
    }

    pub fn left(&self) -> usize {
        self.shared.script.lock().expect("script").len()
    }
}

async fn chat(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.seen.lock().expect("seen").push(Seen { run: header("x-clawpen-run"), content_type: header("content-type"), body: parsed, bytes: body.len() });
    let next = s.script.lock().expect("script").pop_front();
    match next.unwrap_or_else(|| text("(the fake meter has no more answers scripted)")) {
        Canned::Stream(chunks) => sse(chunks, false),
        Canned::Broken(chunks) => sse(chunks, true),
        Canned::Slow(wait, chunks) => {
            tokio::time::sleep(wait).await;
            sse(chunks, false)
        }
        Canned::Trickle(every, chunks) => {
            let events = futures_util::stream::iter(chunks.into_iter().map(|c| format!("data: {c}\n\n")).chain(std::iter::once("data: [DONE]\n\n".to_owned())))
                .then(move |e| async move {
                    tokio::time::sleep(every).await;
                    Ok::<_, std::io::Error>(Bytes::from(e))
                });
            let mut r = Response::new(Body::from_stream(events));
            r.headers_mut().insert("content-type", "text/event-stream".parse().expect("header"));
            r
        }
        Canned::Error(status, body) => (StatusCode::from_u16(status).expect("status"), axum::Json(body)).into_response(),
    }
}

fn sse(chunks: Vec<Value>, broken: bool) -> Response {
    let mut events: Vec<Result<Bytes, std::io::Error>> = chunks.iter().map(|c| Ok(Bytes::from(format!("data: {c}\n\n")))).collect();
    if broken {
        events.push(Err(std::io::Error::other("the fake meter breaks the stream")));
    } else {
        events.push(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
    }
    let mut r = Response::new(Body::from_stream(futures_util::stream::iter(events)));
    r.headers_mut().insert("content-type", "text/event-stream".parse().expect("header"));
    r
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

/// Text deltas of `parts`, then a stop chunk.
pub fn text_chunks(parts: &[&str]) -> Vec<Value> {
    let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    out.extend(parts.iter().map(|p| chunk(json!({"content": p}), None)));
    out.push(chunk(json!({}), Some("stop")));
    out
}

/// `answer` streamed a few characters at a time.
pub fn text(answer: &str) -> Canned {
    let chars: Vec<char> = answer.chars().collect();
    let parts: Vec<String> = chars.chunks(3).map(|c| c.iter().collect()).collect();
    Canned::Stream(text_chunks(&parts.iter().map(String::as_str).collect::<Vec<_>>()))
}

/// Tool calls `(id, name, arguments)`: id and name in a first chunk, the arguments split across
/// later chunks that interleave the calls, as providers do.
pub fn tool_calls(calls: &[(&str, &str, &str)]) -> Canned {
    let mut out = vec![chunk(json!({"role": "assistant", "content": null}), None)];
    for (i, (id, name, _)) in calls.iter().enumerate() {
        out.push(chunk(json!({"tool_calls": [{"index": i, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}), None));
    }
    let halves: Vec<(&str, &str)> = calls.iter().map(|(_, _, a)| a.split_at(a.char_indices().nth(a.chars().count() / 2).map_or(0, |(i, _)| i))).collect();
    for part in 0..2 {
        let pieces: Vec<Value> = halves
            .iter()
            .enumerate()
            .map(|(i, h)| json!({"index": i, "function": {"arguments": if part == 0 { h.0 } else { h.1 }}}))
            .collect();
        out.push(chunk(json!({"tool_calls": pieces}), None));
    }
    out.push(chunk(json!({}), Some("tool_calls")));
    // The usage chunk the meter adds; no choices.
    out.push(json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5}}));
    Canned::Stream(out)
}

/// The meter's refusal body.
pub fn refusal(code: &str, message: &str, paused_until: Option<i64>) -> Value {
    json!({"type": "error", "error": {"type": "clawpen_meter", "code": code, "message": message, "paused_until": paused_until}})
}
