//! The agent's client of the meter: `POST /v1/chat/completions` on `control.sock`, HTTP/1.1,
//! answered as server-sent events and assembled into one [`Completion`].
//!
//! A non-2xx answer with the meter's error body (`{"error": {"code", "message", "paused_until"}}`,
//! or a provider's `{"error": {"message", "type"}}` passed through) is a [`Refusal`]: its message
//! is written for a person and goes to the user. Anything else that goes wrong (no socket, a
//! broken connection, a stream that is not chat-completions) is a failure of the call.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::chat::{ChatRequest, Completion, FunctionCall, ToolCall};
use crate::sse::{SseDecoder, SseError};
use crate::uds::{self, ConnectError};

/// The meter's chat-completions route.
pub const CHAT_PATH: &str = "/v1/chat/completions";
/// The header naming the run a call belongs to; the meter counts runs per hour with it.
pub const RUN_HEADER: &str = "x-clawpen-run";
/// Largest error body read: a refusal is a short JSON object.
const MAX_ERROR_BYTES: usize = 64 * 1024;
/// Most text plus tool arguments one completion may carry; `max_tokens` keeps a real one far below.
pub const MAX_COMPLETION_BYTES: usize = 1024 * 1024;
/// Most tool calls one completion may carry.
const MAX_CALLS_PER_COMPLETION: usize = 64;

/// The meter (or the provider behind it) declined the call, with words for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status, e.g. 402 for a paused agent.
    pub status: u16,
    /// Machine-readable reason, e.g. `cap_reached`, `rate_limited`.
    pub code: String,
    /// The explanation, written for a person.
    pub message: String,
    /// When the agent resumes (Unix ms), if it is paused until a known time.
    pub paused_until: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error("the meter's socket does not answer: {0}")]
    Connect(#[source] std::io::Error),
    #[error("the connection to the meter broke: {0}")]
    Http(String),
    #[error("the meter answered {0} without an explanation")]
    Status(StatusCode),
    #[error("the meter refused the call ({}): {}", .0.code, .0.message)]
    Refused(Refusal),
    #[error("the meter's answer is not a valid completion: {0}")]
    Stream(String),
}

impl From<SseError> for MeterError {
    fn from(e: SseError) -> Self {
        MeterError::Stream(e.to_string())
    }
}

/// Where the text of a streamed answer goes, piece by piece, as it arrives.
pub type Deltas = tokio::sync::mpsc::UnboundedSender<String>;

/// Sends one chat-completions request for run `run_id` and reads the whole answer; the text is
/// also sent to `deltas` piece by piece as it arrives (when given).
pub async fn complete(socket: &Path, run_id: &str, request: &ChatRequest<'_>, deltas: Option<&Deltas>) -> Result<Completion, MeterError> {
    let body = serde_json::to_vec(request).map_err(|e| MeterError::Stream(format!("cannot encode the request: {e}")))?;
    let mut conn = uds::connect(socket).await.map_err(|e| match e {
        ConnectError::Io(e) => MeterError::Connect(e),
        ConnectError::Handshake(e) => MeterError::Http(e.to_string()),
    })?;
    let req = Request::post(CHAT_PATH)
        .header("host", "meter")
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .header(RUN_HEADER, run_id)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| MeterError::Http(e.to_string()))?;
    let res = conn.sender.send_request(req).await.map_err(|e| MeterError::Http(e.to_string()))?;
    let status = res.status();
    if !status.is_success() {
        return Err(refusal(status, res.into_body()).await);
    }
    // `conn` lives until the answer is read: dropping it would stop the connection.
    let is_json = res.headers().get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("application/json"));
    let completion = if is_json { read_whole(res.into_body(), deltas).await } else { read_stream(res.into_body(), deltas).await };
    drop(conn);
    completion
}

async fn refusal(status: StatusCode, body: Incoming) -> MeterError {
    match Limited::new(body, MAX_ERROR_BYTES).collect().await {
        Ok(b) => parse_refusal(status, &b.to_bytes()).map(MeterError::Refused).unwrap_or(MeterError::Status(status)),
        Err(_) => MeterError::Status(status),
    }
}

/// The refusal in an error body, if it has a message to show.
pub fn parse_refusal(status: StatusCode, body: &[u8]) -> Option<Refusal> {
    #[derive(Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        /// A string from the meter; a provider may send null or a number.
        #[serde(default)]
        code: Option<Value>,
        #[serde(default, rename = "type")]
        kind: Option<String>,
        message: String,
        #[serde(default)]
        paused_until: Option<i64>,
    }
    let d = serde_json::from_slice::<Body>(body).ok()?.error;
    let message = d.message.trim();
    if message.is_empty() {
        return None;
    }
    let code = d.code.as_ref().and_then(Value::as_str).map(str::to_owned).or(d.kind).unwrap_or_else(|| format!("http_{}", status.as_u16()));
    Some(Refusal { status: status.as_u16(), code, message: message.to_owned(), paused_until: d.paused_until })
}

/// Reads an event stream to `[DONE]`. A stream that ends before `[DONE]` and before any
/// `finish_reason` broke off, and its partial answer is not used.
async fn read_stream(mut body: Incoming, deltas: Option<&Deltas>) -> Result<Completion, MeterError> {
    let mut decoder = SseDecoder::default();
    let mut acc = Accumulator::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| MeterError::Http(e.to_string()))?;
        let Ok(data) = frame.into_data() else { continue };
        for event in decoder.push(&data)? {
            let before = acc.content.len();
            acc.event(&event)?;
            pass_on(deltas, &acc.content[before..]);
            if acc.done {
                return Ok(acc.finish());
            }
        }
    }
    if let Some(event) = decoder.finish() {
        let before = acc.content.len();
        acc.event(&event)?;
        pass_on(deltas, &acc.content[before..]);
    }
    if !acc.done && acc.finish_reason.is_none() {
        return Err(MeterError::Stream("the stream ended before the answer was complete".into()));
    }
    Ok(acc.finish())
}

/// Sends new text on, if anyone listens (a listener that left is no error: the run goes on).
fn pass_on(deltas: Option<&Deltas>, text: &str) {
    if let (Some(d), false) = (deltas, text.is_empty()) {
        let _ = d.send(text.to_owned());
    }
}

/// Reads a non-streamed answer, for a provider that ignored `stream: true`.
async fn read_whole(body: Incoming, deltas: Option<&Deltas>) -> Result<Completion, MeterError> {
    let bytes = Limited::new(body, MAX_COMPLETION_BYTES * 2).collect().await.map_err(|e| MeterError::Http(e.to_string()))?.to_bytes();
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| MeterError::Stream(format!("the answer is not JSON: {e}")))?;
    let choice = v.pointer("/choices/0").ok_or_else(|| MeterError::Stream("the answer has no choices".into()))?;
    let mut acc = Accumulator::default();
    if let Some(m) = choice.get("message") {
        acc.delta(m)?;
    }
    acc.finish_reason = choice.get("finish_reason").and_then(Value::as_str).map(str::to_owned);
    pass_on(deltas, &acc.content);
    Ok(acc.finish())
}

/// Joins the deltas of a stream into one completion.
#[derive(Debug, Default)]
pub struct Accumulator {
    content: String,
    /// Tool calls by their `index`; id and name come first, the arguments in pieces.
    calls: BTreeMap<u64, ToolCall>,
    finish_reason: Option<String>,
    /// `[DONE]` was seen.
    done: bool,
    /// Text and argument bytes so far, against [`MAX_COMPLETION_BYTES`].
    bytes: usize,
}

impl Accumulator {
    /// Takes the data of one event.
    pub fn event(&mut self, data: &str) -> Result<(), MeterError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| MeterError::Stream(format!("an event is not JSON: {e}")))?;
        if let Some(err) = chunk.get("error") {
            let msg = err.get("message").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| err.to_string());
            return Err(MeterError::Stream(format!("the model failed mid-answer: {msg}")));
        }
        // The usage chunk has no choices; nothing in it concerns the answer.
        let Some(choice) = chunk.pointer("/choices/0") else { return Ok(()) };
        if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(r.to_owned());
        }
        match choice.get("delta") {
            Some(d) => self.delta(d),
            None => Ok(()),
        }
    }

    /// Takes a delta (or a whole message, which has the same fields).
    fn delta(&mut self, delta: &Value) -> Result<(), MeterError> {
        if let Some(t) = delta.get("content").and_then(Value::as_str) {
            self.grow(t.len())?;
            self.content.push_str(t);
        }
        let calls = delta.get("tool_calls").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        for (pos, c) in calls.iter().enumerate() {
            self.call_piece(pos, c)?;
        }
        Ok(())
    }

    fn call_piece(&mut self, pos: usize, piece: &Value) -> Result<(), MeterError> {
        // A whole message's calls carry no index: their position is it.
        let index = piece.get("index").and_then(Value::as_u64).unwrap_or(pos as u64);
        if !self.calls.contains_key(&index) && self.calls.len() >= MAX_CALLS_PER_COMPLETION {
            return Err(MeterError::Stream(format!("more than {MAX_CALLS_PER_COMPLETION} tool calls in one answer")));
        }
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
        let (id, name) = (text(piece.get("id")), text(piece.pointer("/function/name")));
        let args = text(piece.pointer("/function/arguments"));
        self.grow(id.len() + name.len() + args.len())?;
        let call = self.calls.entry(index).or_insert_with(|| ToolCall {
            id: String::new(),
            kind: "function".into(),
            function: FunctionCall { name: String::new(), arguments: String::new() },
        });
        // Id and name arrive once, in the first piece; later pieces repeat them empty or not at all.
        if call.id.is_empty() {
            call.id = id;
        }
        if call.function.name.is_empty() {
            call.function.name = name;
        }
        call.function.arguments.push_str(&args);
        Ok(())
    }

    fn grow(&mut self, n: usize) -> Result<(), MeterError> {
        self.bytes += n;
        if self.bytes > MAX_COMPLETION_BYTES {
            return Err(MeterError::Stream(format!("the answer is larger than {MAX_COMPLETION_BYTES} bytes")));
        }
        Ok(())
    }

    /// The completion; a call without an id gets one, since its result must name it.
    pub fn finish(self) -> Completion {
        let tool_calls = self
            .calls
            .into_iter()
            .map(|(i, mut c)| {
                if c.id.is_empty() {
                    c.id = format!("call_{i}");
                }
                c
            })
            .collect();
        Completion { content: self.content, tool_calls, finish_reason: self.finish_reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_merge_by_index() {
        let mut acc = Accumulator::default();
        let events = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"Sure"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":", noted.","tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"remember","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"write_note","arguments":"{\"te"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"fact\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"x\"}"}},{"index":1,"function":{"arguments":"xt\":\"y\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            "[DONE]",
        ];
        for e in events {
            acc.event(e).expect("event");
        }
        let c = acc.finish();
        assert_eq!(c.content, "Sure, noted.");
        assert_eq!(c.finish_reason.as_deref(), Some("tool_calls"));
        let calls: Vec<(&str, &str, &str)> = c.tool_calls.iter().map(|t| (t.id.as_str(), t.function.name.as_str(), t.function.arguments.as_str())).collect();
        assert_eq!(calls, [("call_a", "remember", "{\"fact\":\"x\"}"), ("call_b", "write_note", "{\"text\":\"y\"}")]);
    }

    #[test]
    fn bad_events_fail_the_call() {
        assert!(matches!(Accumulator::default().event("{nope"), Err(MeterError::Stream(_))));
        let err = Accumulator::default().event(r#"{"error":{"message":"overloaded"}}"#).unwrap_err();
        assert!(err.to_string().contains("overloaded"), "{err}");
    }

    #[test]
    fn refusals_keep_the_meters_words() {
        let body = br#"{"type":"error","error":{"type":"clawpen_meter","code":"cap_reached","message":"This agent is paused.","paused_until":1798761600000}}"#;
        let r = parse_refusal(StatusCode::PAYMENT_REQUIRED, body).expect("refusal");
        assert_eq!((r.status, r.code.as_str(), r.message.as_str(), r.paused_until), (402, "cap_reached", "This agent is paused.", Some(1798761600000)));
        let provider = br#"{"error":{"message":"Rate limit","type":"requests","code":null}}"#;
        assert_eq!(parse_refusal(StatusCode::TOO_MANY_REQUESTS, provider).expect("refusal").code, "requests");
        assert_eq!(parse_refusal(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>"), None);
    }
}
