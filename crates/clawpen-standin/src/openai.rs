//! OpenAI: Chat Completions, the model list, and OpenAI's error shape.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::log::{Progress, RecordedRequest};
use crate::tokens::{last_user_text, reply_to, text, words, Reply};
use crate::{sse, Shared};

const MODEL_IDS: [&str; 3] = ["gpt-test", "gpt-test-slow", "gpt-cached"];

/// Whose chat-completions API is spoken: the same request, each provider's own usage fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `/v1/chat/completions`: cached input inside `prompt_tokens`
    /// (`prompt_tokens_details.cached_tokens`), reasoning inside `completion_tokens`.
    Openai,
    /// `/gemini/v1beta/openai/chat/completions` (Gemini's OpenAI-compatible endpoint): thinking
    /// tokens counted in `total_tokens` and `completion_tokens_details.reasoning_tokens`, not in
    /// `completion_tokens`.
    Gemini,
    /// `/deepseek/v1/chat/completions`: `prompt_cache_hit_tokens` and
    /// `prompt_cache_miss_tokens`; reasoning inside `completion_tokens`.
    Deepseek,
    /// `/xai/v1/chat/completions` (Grok): reasoning tokens beside `completion_tokens`,
    /// `total_tokens` their sum with the prompt.
    Xai,
}

impl Dialect {
    pub const ALL: [Dialect; 4] = [Dialect::Openai, Dialect::Gemini, Dialect::Deepseek, Dialect::Xai];

    /// The path of its chat completions on the stand-in.
    pub fn path(self) -> &'static str {
        match self {
            Dialect::Openai => "/v1/chat/completions",
            Dialect::Gemini => "/gemini/v1beta/openai/chat/completions",
            Dialect::Deepseek => "/deepseek/v1/chat/completions",
            Dialect::Xai => "/xai/v1/chat/completions",
        }
    }

    /// The base URL an OpenAI client (or the meter) is given, under the stand-in's base.
    pub fn base_path(self) -> &'static str {
        self.path().trim_end_matches("/chat/completions")
    }
}

/// Hidden reasoning tokens a model whose name says `think` or `reason` spends before it answers
/// (within the request's max tokens, as providers count them).
pub const REASONING_TOKENS: u64 = 24;

pub(crate) async fn chat_completions(state: State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    chat_in(state, headers, body, Dialect::Openai).await
}

pub(crate) async fn gemini(state: State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    chat_in(state, headers, body, Dialect::Gemini).await
}

pub(crate) async fn deepseek(state: State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    chat_in(state, headers, body, Dialect::Deepseek).await
}

pub(crate) async fn xai(state: State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    chat_in(state, headers, body, Dialect::Xai).await
}

async fn chat_in(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes, dialect: Dialect) -> Response {
    let request = serde_json::from_slice::<Value>(&body).ok();
    let authorized = authorized(&shared, &headers);
    let max = request.as_ref().map_or(Ok(None), max_tokens);
    let mut recorded = RecordedRequest::new(dialect.path(), request.clone().unwrap_or_default(), authorized, max.unwrap_or(None));
    recorded.key = crate::bearer(&headers).map(str::to_owned);
    let entry = shared.log.record(recorded);
    let response = if authorized {
        shared.think().await;
        chat(&shared, request, entry.progress(), dialect)
    } else {
        unauthorized(&headers)
    };
    entry.answer(response)
}

pub(crate) async fn models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let authorized = authorized(&shared, &headers);
    let entry = shared.log.record(RecordedRequest::new("/v1/models", Value::Null, authorized, None));
    let response = if authorized {
        let data = MODEL_IDS.map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "clawpen-standin"}));
        Json(json!({"object": "list", "data": data})).into_response()
    } else {
        unauthorized(&headers)
    };
    entry.answer(response)
}

/// Any other route: OpenAI's 404.
pub(crate) async fn not_found(State(shared): State<Arc<Shared>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let request = serde_json::from_slice::<Value>(&body).unwrap_or_default();
    let entry = shared.log.record(RecordedRequest::new(uri.path(), request, authorized(&shared, &headers), None));
    entry.answer(error(StatusCode::NOT_FOUND, &format!("Unknown request URL: {method} {}.", uri.path()), None, Some("unknown_url")))
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    match crate::bearer(headers) {
        Some(key) => key == shared.config.openai_key || shared.customer_keys.lock().expect("keys").contains(key),
        None => false,
    }
}

/// `max_completion_tokens`, else the older `max_tokens`; `Err(field)` when it is not a count.
fn max_tokens(request: &Value) -> Result<Option<u64>, &'static str> {
    for field in ["max_completion_tokens", "max_tokens"] {
        match &request[field] {
            Value::Null => continue,
            v => return v.as_u64().map(Some).ok_or(field),
        }
    }
    Ok(None)
}

fn error(status: StatusCode, message: &str, param: Option<&str>, code: Option<&str>) -> Response {
    (status, Json(json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}))).into_response()
}

fn unauthorized(headers: &HeaderMap) -> Response {
    let message = if headers.contains_key(header::AUTHORIZATION) {
        "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."
    } else {
        "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    };
    error(StatusCode::UNAUTHORIZED, message, None, Some("invalid_api_key"))
}

fn chat(shared: &Shared, request: Option<Value>, progress: Progress, dialect: Dialect) -> Response {
    let Some(request) = request else {
        return error(StatusCode::BAD_REQUEST, "We could not parse the JSON body of your request. The OpenAI API expects a JSON payload.", None, None);
    };
    let Some(model) = request["model"].as_str() else {
        return error(StatusCode::BAD_REQUEST, "you must provide a model parameter", None, None);
    };
    let Some(messages) = request["messages"].as_array().filter(|m| !m.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "Missing required parameter: 'messages'.", Some("messages"), Some("missing_required_parameter"));
    };
    let max = match max_tokens(&request) {
        Ok(max) => max,
        Err(field) => return error(StatusCode::BAD_REQUEST, &format!("Invalid '{field}': expected a non-negative integer."), Some(field), Some("invalid_value")),
    };
    // `n` choices, each generated (and billed) in full, as OpenAI does.
    let n = match &request["n"] {
        Value::Null => 1,
        v => match v.as_u64().filter(|n| (1..=128).contains(n)) {
            Some(n) => n as usize,
            None => return error(StatusCode::BAD_REQUEST, "Invalid 'n': expected an integer from 1 to 128.", Some("n"), Some("invalid_value")),
        },
    };
    let answers: Vec<Answer> = (0..n).map(|_| answer(shared, &request, messages, max)).collect();
    let mut input = shared.counter(model).input(&Value::Null, messages);
    // A web search puts its results in the context: billed as input.
    if !request["web_search_options"].is_null() {
        input += crate::SERVER_TOOL_TOKENS;
    }
    let cached = if model.contains("cached") { input.min(10) } else { 0 };
    let output: u64 = answers.iter().map(Answer::tokens).sum();
    let reasoning = if model.contains("think") || model.contains("reason") { REASONING_TOKENS.min(max.unwrap_or(u64::MAX).saturating_mul(n as u64).saturating_sub(output)) } else { 0 };
    let usage = usage(dialect, input, output, cached, reasoning);
    let (id, created) = (format!("chatcmpl-standin{:012}", shared.next_answer()), SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));

    if request["stream"] != true {
        progress.generated(output + reasoning);
        let choices: Vec<Value> = answers.iter().enumerate().map(|(i, a)| json!({"index": i, "message": a.message(), "logprobs": null, "finish_reason": a.finish_reason()})).collect();
        return Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": usage, "system_fingerprint": null,
        }))
        .into_response();
    }
    // OpenAI adds `usage` to chunks only when asked: that is why the meter must ask.
    let include_usage = request["stream_options"]["include_usage"] == true;
    let chunk = |choices: Value| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "system_fingerprint": null, "choices": choices});
        if include_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let choice = |index: usize, delta: Value, finish: Value| json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    let mut events: Vec<(Bytes, u64)> = Vec::new();
    // Hidden reasoning comes first and streams nothing: it is billed with the first event.
    let mut hidden = reasoning;
    for (i, a) in answers.iter().enumerate() {
        events.extend(a.deltas().into_iter().map(|(delta, tokens)| (sse::data(&chunk(choice(i, delta, Value::Null))), tokens + std::mem::take(&mut hidden))));
        events.push((sse::data(&chunk(choice(i, json!({}), json!(a.finish_reason())))), 0));
    }
    if include_usage {
        let mut last = chunk(json!([]));
        last["usage"] = usage;
        events.push((sse::data(&last), 0));
    }
    events.push((Bytes::from_static(b"data: [DONE]\n\n"), 0));
    sse::response(events, shared.delay(model), progress)
}

/// The usage object of `dialect` for `input` prompt tokens (`cached` of them from the cache),
/// `output` visible tokens and `reasoning` hidden ones.
fn usage(dialect: Dialect, input: u64, output: u64, cached: u64, reasoning: u64) -> Value {
    match dialect {
        Dialect::Openai => json!({
            "prompt_tokens": input, "completion_tokens": output + reasoning, "total_tokens": input + output + reasoning,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        }),
        Dialect::Gemini => json!({
            "prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output + reasoning,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }),
        Dialect::Deepseek => json!({
            "prompt_tokens": input, "completion_tokens": output + reasoning, "total_tokens": input + output + reasoning,
            "prompt_cache_hit_tokens": cached, "prompt_cache_miss_tokens": input - cached,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }),
        Dialect::Xai => json!({
            "prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output + reasoning,
            "prompt_tokens_details": {"text_tokens": input, "audio_tokens": 0, "image_tokens": 0, "cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
            "num_sources_used": 0,
        }),
    }
}

enum Answer {
    Text(Reply),
    Call { id: String, name: String, arguments: String },
}

/// A text reply, or a scripted tool call (rules in the crate docs).
fn answer(shared: &Shared, request: &Value, messages: &[Value], max: Option<u64>) -> Answer {
    let tools: Vec<&str> = request["tools"].as_array().map(|tools| tools.iter().filter_map(|t| t["function"]["name"].as_str()).collect()).unwrap_or_default();
    let prompt = last_user_text(messages);
    let last = &messages[messages.len() - 1];
    let call = |name: &str, arguments: &str| Answer::Call { id: format!("call_{}", shared.next_tool_call()), name: name.to_owned(), arguments: arguments.to_owned() };
    if let Some(first) = tools.first().filter(|_| prompt.starts_with("/loop")) {
        return call(first, "{}");
    }
    if last["role"] == "user" {
        if let Some((name, arguments)) = scripted_call(&prompt).filter(|(name, _)| tools.contains(name)) {
            return call(name, arguments);
        }
    }
    // A gullible model: it does what a tool result tells it (a prompt injection), a few times.
    if last["role"] == "tool" && messages.iter().filter(|m| m["role"] == "tool").count() <= 4 {
        if let Some((name, arguments)) = injected_call(&text(&last["content"])).filter(|(name, _)| tools.contains(&name.as_str())) {
            return call(&name, &arguments);
        }
    }
    let mut reply = if last["role"] == "tool" { format!("tool result: {}", text(&last["content"])) } else { reply_to(&prompt) };
    if let Some(name) = sign_off(messages) {
        reply.push_str(&format!(" — {name}"));
    }
    Answer::Text(Reply::new(&reply, max))
}

/// A persona that says `Sign off as NAME.` in the system prompt: the model follows it, so a
/// test sees an edited persona reach the next reply.
fn sign_off(messages: &[Value]) -> Option<String> {
    let system = messages.iter().filter(|m| m["role"] == "system").map(|m| text(&m["content"])).collect::<Vec<_>>().join("\n");
    let at = system.find("Sign off as ")? + "Sign off as ".len();
    let name: String = system[at..].chars().take_while(|c| *c != '.' && *c != '\n').take(40).collect();
    (!name.trim().is_empty()).then(|| name.trim().to_owned())
}

/// `/tool NAME {json object}` anywhere in a tool result's text, or in a string inside it when
/// the result is JSON (where the text is escaped): what an injected instruction asks for.
fn injected_call(content: &str) -> Option<(String, String)> {
    fn strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            Value::Object(o) => o.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    let mut texts = vec![content.to_owned()];
    if let Ok(v) = serde_json::from_str::<Value>(content) {
        strings(&v, &mut texts);
    }
    for t in texts {
        let Some(at) = t.find("/tool ") else { continue };
        let rest = &t[at..];
        // The JSON object ends at the matching brace.
        let Some(open) = rest.find('{') else { continue };
        let mut depth = 0;
        let end = rest[open..].char_indices().find_map(|(i, c)| {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            (depth == 0).then_some(open + i + 1)
        });
        let Some(end) = end else { continue };
        if let Some((name, arguments)) = scripted_call(&rest[..end]) {
            return Some((name.to_owned(), arguments.to_owned()));
        }
    }
    None
}

/// `/tool NAME {json object}` → (NAME, the JSON text).
fn scripted_call(prompt: &str) -> Option<(&str, &str)> {
    let (name, arguments) = prompt.strip_prefix("/tool ")?.split_once(' ')?;
    let arguments = arguments.trim();
    serde_json::from_str::<Value>(arguments).ok()?.is_object().then_some((name, arguments))
}

impl Answer {
    fn tokens(&self) -> u64 {
        match self {
            Answer::Text(reply) => reply.tokens(),
            Answer::Call { arguments, .. } => words(arguments) + 1,
        }
    }

    fn finish_reason(&self) -> &'static str {
        match self {
            Answer::Text(reply) if reply.cut => "length",
            Answer::Text(_) => "stop",
            Answer::Call { .. } => "tool_calls",
        }
    }

    fn message(&self) -> Value {
        match self {
            Answer::Text(reply) => json!({"role": "assistant", "content": reply.text(), "refusal": null}),
            Answer::Call { id, name, arguments } => json!({
                "role": "assistant", "content": null, "refusal": null,
                "tool_calls": [{"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}],
            }),
        }
    }

    /// The stream's deltas before the finishing one, each with the output tokens it carries
    /// (they add up to [`Answer::tokens`]).
    fn deltas(&self) -> Vec<(Value, u64)> {
        match self {
            Answer::Text(reply) => {
                let first = json!({"role": "assistant", "content": "", "refusal": null});
                std::iter::once((first, 0)).chain(reply.pieces().map(|piece| (json!({"content": piece}), 1))).collect()
            }
            Answer::Call { id, name, arguments } => {
                let first = json!({
                    "role": "assistant", "content": null, "refusal": null,
                    "tool_calls": [{"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}],
                });
                let pieces = arguments.split_inclusive(' ').map(|piece| (json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}), words(piece)));
                std::iter::once((first, 1)).chain(pieces).collect()
            }
        }
    }
}
