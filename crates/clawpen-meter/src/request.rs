//! What a call may ask of a provider, per endpoint: an **allow-list** of fields, content types and
//! tools, the body forwarded (built from the allowed fields only, never by deleting bad ones), and
//! the call's **bound**: the most input and output tokens it can be billed for.
//!
//! The code in a sandbox is hostile, and whatever the upstream does for a request is billed to the
//! platform. So the forwarded body holds nothing that multiplies the bill past the bound (`n`,
//! audio output, server-side tools, MCP servers, web search, beta features, priority tiers) and
//! nothing that makes the provider fetch a URL (image URLs, URL or file sources, documents, the MCP
//! connector, `web_fetch`): a sandbox has no network, and such a URL would be its way out.
//! Anything else is refused with a message naming the field and why, before any hold is taken.
//!
//! # The bound
//! - Input: one token per byte of the forwarded body (compact JSON), image payloads left out,
//!   plus [`BASE_TOKENS`], [`PER_MESSAGE_TOKENS`] a message, [`PER_PART_TOKENS`] a content part,
//!   block or tool call, and [`TOOLS_TOKENS`] plus [`PER_TOOL_TOKENS`] a tool when tools or a
//!   response format are given; each image at the model's `image_tokens_max`. A byte-level
//!   tokenizer never makes more than one token of a byte; every string the model reads is in the
//!   body (JSON escapes only lengthen it), and its quotes, keys and brackets count too; the
//!   overheads cover what a provider adds around messages and tools (Anthropic's tool-use system
//!   prompt is about 350 tokens).
//! - Output: the max tokens, set exactly once (the request's smallest, clamped to the plan; the
//!   plan's when none), with `n` at most 1. Reasoning and thinking tokens count within it.

use axum::http::HeaderMap;
use serde_json::{Map, Value};

use crate::meter::Endpoint;

/// Tokens a request may carry besides its bytes (priming, a system frame).
pub const BASE_TOKENS: i64 = 64;
/// Tokens a provider adds around each message (role markers, separators).
pub const PER_MESSAGE_TOKENS: i64 = 16;
/// Tokens around each content part, block or tool call.
pub const PER_PART_TOKENS: i64 = 16;
/// Tokens of the framing a provider adds when tools or a response format are given.
pub const TOOLS_TOKENS: i64 = 1024;
/// Tokens around each tool definition.
pub const PER_TOOL_TOKENS: i64 = 64;

/// The `anthropic-version` sent when the caller sends none (or not a date).
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// A request the meter will forward, and its bound.
#[derive(Debug)]
pub struct Checked {
    /// The body to send upstream, serialized.
    pub body: Vec<u8>,
    pub stream: bool,
    /// Whether the caller asked for usage in its stream (OpenAI); if not, the meter's own usage
    /// chunk is stripped before the caller sees it.
    pub caller_wants_usage: bool,
    /// The max tokens sent upstream.
    pub max_tokens: i64,
    /// The most input tokens the text of the request can be (images apart).
    pub text_tokens_max: i64,
    /// Images in the request.
    pub images: i64,
    /// The request makes the model generate output a stream does not show in full (Anthropic's
    /// extended thinking is summarized): a call whose caller hangs up is charged its max tokens.
    pub hidden_output: bool,
    /// The `anthropic-version` to send upstream (Anthropic only): the caller's when it is a date
    /// (SDKs send their own), else the first. It selects response formats; the fields it may
    /// govern are the allow-listed ones either way.
    pub anthropic_version: String,
}

/// Why a request is refused: the field and what is wrong, in a sentence for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

type Checking<T> = Result<T, Invalid>;

fn bad<T>(path: &str, why: impl std::fmt::Display) -> Checking<T> {
    Err(Invalid(format!("{path}: {why}")))
}

/// What the walk over a request counted for its bound.
#[derive(Default)]
struct Tally {
    messages: i64,
    parts: i64,
    tools: i64,
    structured: bool,
    images: i64,
    /// Bytes of image payloads (data URLs, base64), left out of the byte count.
    image_bytes: i64,
}

/// Checks a request for `endpoint` against the allow-list and builds the body to forward, with
/// `upstream_model` as its model and max tokens clamped to `plan_max_tokens`.
pub fn check(endpoint: Endpoint, headers: &HeaderMap, request: &Map<String, Value>, upstream_model: &str, plan_max_tokens: i64) -> Checking<Checked> {
    let mut tally = Tally::default();
    let mut anthropic_version = String::new();
    let (mut out, max_tokens, hidden_output) = match endpoint {
        Endpoint::ChatCompletions => (openai(request, &mut tally)?, openai_max_tokens(request, plan_max_tokens)?, false),
        Endpoint::Messages => {
            anthropic_version = anthropic_headers(headers)?;
            let (out, hidden) = anthropic(request, &mut tally)?;
            (out, positive(request, "max_tokens")?.unwrap_or(plan_max_tokens).min(plan_max_tokens), hidden)
        }
    };
    out.insert("model".into(), Value::String(upstream_model.to_owned()));
    let stream = request.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let mut caller_wants_usage = true;
    match endpoint {
        Endpoint::ChatCompletions => {
            let field = if request.get("max_completion_tokens").is_some_and(|v| !v.is_null()) { "max_completion_tokens" } else { "max_tokens" };
            out.insert(field.into(), max_tokens.into());
            if stream {
                // The meter needs the usage chunk; it strips it again if the caller did not ask.
                caller_wants_usage = request.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
                out.insert("stream_options".into(), serde_json::json!({"include_usage": true}));
            }
        }
        Endpoint::Messages => {
            out.insert("max_tokens".into(), max_tokens.into());
        }
    }
    let body = serde_json::to_vec(&Value::Object(out)).map_err(|e| Invalid(format!("the request cannot be encoded again: {e}")))?;
    let mut text_tokens_max = body.len() as i64 - tally.image_bytes + BASE_TOKENS + tally.messages * PER_MESSAGE_TOKENS + tally.parts * PER_PART_TOKENS;
    if tally.structured || tally.tools > 0 {
        text_tokens_max += TOOLS_TOKENS + tally.tools * PER_TOOL_TOKENS;
    }
    Ok(Checked { body, stream, caller_wants_usage, max_tokens, text_tokens_max, images: tally.images, hidden_output, anthropic_version })
}

/// A field that, when given (and not `null`), is an integer of at least 1.
fn positive(o: &Map<String, Value>, field: &str) -> Checking<Option<i64>> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 1 => Ok(Some(n)),
            Some(_) => bad(field, "must be at least 1"),
            None => bad(field, "must be an integer"),
        },
    }
}

/// OpenAI's two names for max tokens: the smallest given, clamped; forwarded under one name.
fn openai_max_tokens(o: &Map<String, Value>, plan_max_tokens: i64) -> Checking<i64> {
    let a = positive(o, "max_completion_tokens")?;
    let b = positive(o, "max_tokens")?;
    Ok([a, b].into_iter().flatten().min().unwrap_or(plan_max_tokens).min(plan_max_tokens))
}

/// Copies `keys` of `from` that are present and not `null` into `to`, each checked by `each`.
fn copy(from: &Map<String, Value>, to: &mut Map<String, Value>, keys: &[&str], mut each: impl FnMut(&str, &Value) -> Checking<()>) -> Checking<()> {
    for k in keys {
        if let Some(v) = from.get(*k).filter(|v| !v.is_null()) {
            each(k, v)?;
            to.insert((*k).to_owned(), v.clone());
        }
    }
    Ok(())
}

/// Refuses any key of `o` not in `allowed`, naming it under `path`.
fn only(path: &str, o: &Map<String, Value>, allowed: &[&str], why: impl Fn(&str) -> Option<&'static str>) -> Checking<()> {
    for k in o.keys() {
        if !allowed.contains(&k.as_str()) {
            let at = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            let reason = why(k).map(str::to_owned).unwrap_or_else(|| format!("not accepted by the meter; it passes on only {}", allowed.join(", ")));
            return bad(&at, reason);
        }
    }
    Ok(())
}

fn object<'a>(path: &str, v: &'a Value) -> Checking<&'a Map<String, Value>> {
    v.as_object().map_or_else(|| bad(path, "must be an object"), Ok)
}

fn array<'a>(path: &str, v: &'a Value) -> Checking<&'a Vec<Value>> {
    v.as_array().map_or_else(|| bad(path, "must be an array"), Ok)
}

fn string<'a>(path: &str, v: &'a Value) -> Checking<&'a str> {
    v.as_str().map_or_else(|| bad(path, "must be a string"), Ok)
}

fn kind<'a>(path: &str, o: &'a Map<String, Value>) -> Checking<&'a str> {
    string(&format!("{path}.type"), o.get("type").unwrap_or(&Value::Null))
}

fn number(path: &str, v: &Value) -> Checking<()> {
    if v.is_number() {
        Ok(())
    } else {
        bad(path, "must be a number")
    }
}

fn boolean(path: &str, v: &Value) -> Checking<()> {
    if v.is_boolean() {
        Ok(())
    } else {
        bad(path, "must be true or false")
    }
}

fn integer(path: &str, v: &Value) -> Checking<()> {
    if v.is_i64() {
        Ok(())
    } else {
        bad(path, "must be an integer")
    }
}

fn strings(path: &str, v: &Value) -> Checking<()> {
    match v {
        Value::String(_) => Ok(()),
        Value::Array(a) if a.iter().all(Value::is_string) => Ok(()),
        _ => bad(path, "must be a string or an array of strings"),
    }
}

/// Why a top-level OpenAI field is refused, for the fields a caller may well try.
fn openai_refusal(field: &str) -> Option<&'static str> {
    Some(match field {
        "web_search_options" => "server-side web search is not offered (the provider would fetch pages and bill their text)",
        "audio" => "audio output is not offered",
        "prediction" => "predicted outputs are not offered (rejected prediction tokens are billed past max tokens)",
        "service_tier" => "service tiers are not offered (a faster tier is billed at a higher price)",
        "functions" | "function_call" => "deprecated; use tools and tool_choice",
        "store" | "metadata" => "stored completions are not offered",
        _ => return None,
    })
}

const OPENAI_FIELDS: &[&str] = &[
    "model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options", "n", "modalities", "temperature", "top_p", "stop",
    "presence_penalty", "frequency_penalty", "seed", "user", "logprobs", "top_logprobs", "logit_bias", "response_format", "tools", "tool_choice",
    "parallel_tool_calls", "reasoning_effort",
];

fn openai(r: &Map<String, Value>, tally: &mut Tally) -> Checking<Map<String, Value>> {
    only("", r, OPENAI_FIELDS, openai_refusal)?;
    match r.get("n") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_i64() == Some(1) => {}
        Some(_) => return bad("n", "only 1 choice per call is offered (every choice is generated and billed)"),
    }
    match r.get("modalities") {
        None | Some(Value::Null) => {}
        Some(Value::Array(m)) if m.iter().all(|x| x == "text") => {}
        Some(_) => return bad("modalities", "only [\"text\"] is offered; audio output is not"),
    }
    if let Some(o) = r.get("stream_options").filter(|v| !v.is_null()) {
        let o = object("stream_options", o)?;
        only("stream_options", o, &["include_usage"], |_| None)?;
        if let Some(v) = o.get("include_usage") {
            boolean("stream_options.include_usage", v)?;
        }
    }
    let mut out = Map::new();
    copy(r, &mut out, &["stream", "parallel_tool_calls", "logprobs"], boolean)?;
    copy(r, &mut out, &["temperature", "top_p", "presence_penalty", "frequency_penalty"], number)?;
    copy(r, &mut out, &["seed", "top_logprobs"], integer)?;
    copy(r, &mut out, &["stop"], strings)?;
    copy(r, &mut out, &["user", "reasoning_effort"], |k, v| string(k, v).map(drop))?;
    copy(r, &mut out, &["logit_bias"], |k, v| {
        let o = object(k, v)?;
        o.iter().try_for_each(|(t, b)| number(&format!("{k}.{t}"), b))
    })?;
    if let Some(f) = r.get("response_format").filter(|v| !v.is_null()) {
        let o = object("response_format", f)?;
        match kind("response_format", o)? {
            "text" | "json_object" => only("response_format", o, &["type"], |_| None)?,
            "json_schema" => {
                only("response_format", o, &["type", "json_schema"], |_| None)?;
                let s = object("response_format.json_schema", o.get("json_schema").unwrap_or(&Value::Null))?;
                only("response_format.json_schema", s, &["name", "description", "schema", "strict"], |_| None)?;
                tally.structured = true;
            }
            other => return bad("response_format.type", format!("{other:?} is not offered; use text, json_object or json_schema")),
        }
        out.insert("response_format".into(), f.clone());
    }
    if let Some(tools) = r.get("tools").filter(|v| !v.is_null()) {
        let mut kept = Vec::new();
        for (i, t) in array("tools", tools)?.iter().enumerate() {
            let path = format!("tools[{i}]");
            let t = object(&path, t)?;
            match kind(&path, t)? {
                "function" => {}
                other => return bad(&format!("{path}.type"), format!("{other:?} tools are not offered; only function tools are (a server-side tool runs, and bills, at the provider)")),
            }
            only(&path, t, &["type", "function"], |_| None)?;
            let f = object(&format!("{path}.function"), t.get("function").unwrap_or(&Value::Null))?;
            only(&format!("{path}.function"), f, &["name", "description", "parameters", "strict"], |_| None)?;
            string(&format!("{path}.function.name"), f.get("name").unwrap_or(&Value::Null))?;
            kept.push(serde_json::json!({"type": "function", "function": f}));
        }
        tally.tools = kept.len() as i64;
        out.insert("tools".into(), Value::Array(kept));
    }
    if let Some(c) = r.get("tool_choice").filter(|v| !v.is_null()) {
        match c {
            Value::String(s) if ["none", "auto", "required"].contains(&s.as_str()) => {}
            Value::Object(o) if o.get("type").is_some_and(|t| t == "function") => {
                only("tool_choice", o, &["type", "function"], |_| None)?;
                let f = object("tool_choice.function", o.get("function").unwrap_or(&Value::Null))?;
                only("tool_choice.function", f, &["name"], |_| None)?;
            }
            _ => return bad("tool_choice", "must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": …}}"),
        }
        out.insert("tool_choice".into(), c.clone());
    }
    let messages = array("messages", r.get("messages").unwrap_or(&Value::Null))?;
    if messages.is_empty() {
        return bad("messages", "must not be empty");
    }
    let kept = messages.iter().enumerate().map(|(i, m)| openai_message(&format!("messages[{i}]"), m, tally)).collect::<Checking<Vec<_>>>()?;
    out.insert("messages".into(), Value::Array(kept));
    Ok(out)
}

fn openai_message(path: &str, m: &Value, tally: &mut Tally) -> Checking<Value> {
    let m = object(path, m)?;
    tally.messages += 1;
    let role = string(&format!("{path}.role"), m.get("role").unwrap_or(&Value::Null))?;
    let (keys, parts): (&[&str], &[&str]) = match role {
        "system" | "developer" => (&["role", "content", "name"], &["text"]),
        "user" => (&["role", "content", "name"], &["text", "image_url"]),
        "assistant" => (&["role", "content", "name", "tool_calls", "refusal"], &["text", "refusal"]),
        "tool" => (&["role", "content", "tool_call_id"], &["text"]),
        other => return bad(&format!("{path}.role"), format!("{other:?} is not a role the meter passes on (system, developer, user, assistant, tool)")),
    };
    only(path, m, keys, |k| match k {
        "audio" => Some("audio is not offered"),
        "function_call" => Some("deprecated; use tool_calls"),
        _ => None,
    })?;
    let mut out = Map::new();
    copy(m, &mut out, &["role", "name", "tool_call_id", "refusal"], |k, v| string(&format!("{path}.{k}"), v).map(drop))?;
    match m.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            out.insert("content".into(), Value::String(s.clone()));
        }
        Some(Value::Array(ps)) => {
            let kept = ps.iter().enumerate().map(|(j, p)| openai_part(&format!("{path}.content[{j}]"), p, parts, tally)).collect::<Checking<Vec<_>>>()?;
            out.insert("content".into(), Value::Array(kept));
        }
        Some(_) => return bad(&format!("{path}.content"), "must be a string or an array of parts"),
    }
    if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
        let mut kept = Vec::new();
        for (j, c) in array(&format!("{path}.tool_calls"), calls)?.iter().enumerate() {
            let at = format!("{path}.tool_calls[{j}]");
            let c = object(&at, c)?;
            if kind(&at, c)? != "function" {
                return bad(&format!("{at}.type"), "only function calls are passed on");
            }
            only(&at, c, &["id", "type", "function"], |_| None)?;
            let f = object(&format!("{at}.function"), c.get("function").unwrap_or(&Value::Null))?;
            only(&format!("{at}.function"), f, &["name", "arguments"], |_| None)?;
            string(&format!("{at}.function.arguments"), f.get("arguments").unwrap_or(&Value::Null))?;
            tally.parts += 1;
            kept.push(serde_json::json!({"id": c.get("id"), "type": "function", "function": {"name": f.get("name"), "arguments": f.get("arguments")}}));
        }
        out.insert("tool_calls".into(), Value::Array(kept));
    }
    Ok(Value::Object(out))
}

fn openai_part(path: &str, p: &Value, allowed: &[&str], tally: &mut Tally) -> Checking<Value> {
    let p = object(path, p)?;
    tally.parts += 1;
    let t = kind(path, p)?;
    if !allowed.contains(&t) {
        let why = match t {
            "input_audio" => "audio input is not offered".to_owned(),
            "file" => "files are not offered (neither file ids nor file data)".to_owned(),
            other => format!("{other:?} parts are not passed on here; this message takes {}", allowed.join(", ")),
        };
        return bad(&format!("{path}.type"), why);
    }
    match t {
        "text" => {
            only(path, p, &["type", "text"], |_| None)?;
            let text = string(&format!("{path}.text"), p.get("text").unwrap_or(&Value::Null))?;
            Ok(serde_json::json!({"type": "text", "text": text}))
        }
        "refusal" => {
            only(path, p, &["type", "refusal"], |_| None)?;
            let text = string(&format!("{path}.refusal"), p.get("refusal").unwrap_or(&Value::Null))?;
            Ok(serde_json::json!({"type": "refusal", "refusal": text}))
        }
        _ => {
            only(path, p, &["type", "image_url"], |_| None)?;
            let at = format!("{path}.image_url");
            let img = object(&at, p.get("image_url").unwrap_or(&Value::Null))?;
            only(&at, img, &["url", "detail"], |_| None)?;
            let url = string(&format!("{at}.url"), img.get("url").unwrap_or(&Value::Null))?;
            if !is_image_data_url(url) {
                return bad(&format!("{at}.url"), "only data:image/…;base64, URLs are passed on; the provider would fetch any other URL");
            }
            let mut kept = Map::new();
            kept.insert("url".into(), Value::String(url.to_owned()));
            if let Some(d) = img.get("detail").filter(|v| !v.is_null()) {
                match d.as_str() {
                    Some("auto" | "low" | "high") => {
                        kept.insert("detail".into(), d.clone());
                    }
                    _ => return bad(&format!("{at}.detail"), "must be auto, low or high"),
                }
            }
            tally.images += 1;
            tally.image_bytes += url.len() as i64;
            Ok(serde_json::json!({"type": "image_url", "image_url": kept}))
        }
    }
}

/// `data:image/<type>;base64,<data>`: an image carried in the request, nothing to fetch.
fn is_image_data_url(url: &str) -> bool {
    url.strip_prefix("data:image/").and_then(|rest| rest.split_once(',')).is_some_and(|(meta, _)| meta.ends_with(";base64") && meta.bytes().all(|b| b.is_ascii_alphanumeric() || b"+.-;=".contains(&b)))
}

/// Anthropic's headers: no beta features (none is needed, and several fetch URLs or bill past the
/// bound); the API version to send.
fn anthropic_headers(headers: &HeaderMap) -> Checking<String> {
    if headers.contains_key("anthropic-beta") {
        return bad("anthropic-beta", "beta features are not offered through the meter; send the request without that header");
    }
    let is_date = |v: &&str| v.len() == 10 && v.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    Ok(headers.get("anthropic-version").and_then(|v| v.to_str().ok()).filter(is_date).unwrap_or(ANTHROPIC_VERSION).to_owned())
}

fn anthropic_refusal(field: &str) -> Option<&'static str> {
    Some(match field {
        "mcp_servers" => "the MCP connector is not offered (the provider would reach those servers and bill what they return)",
        "container" => "code execution containers are not offered",
        "service_tier" => "service tiers are not offered (priority is billed at a higher price)",
        "context_management" => "a beta feature, not offered",
        _ => return None,
    })
}

const ANTHROPIC_FIELDS: &[&str] = &["model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature", "top_p", "top_k", "tools", "tool_choice", "metadata", "thinking"];

/// Returns the body and whether extended thinking is on.
fn anthropic(r: &Map<String, Value>, tally: &mut Tally) -> Checking<(Map<String, Value>, bool)> {
    only("", r, ANTHROPIC_FIELDS, anthropic_refusal)?;
    let mut out = Map::new();
    copy(r, &mut out, &["stream"], boolean)?;
    copy(r, &mut out, &["temperature", "top_p"], number)?;
    copy(r, &mut out, &["top_k"], integer)?;
    copy(r, &mut out, &["stop_sequences"], |k, v| match v {
        Value::Array(a) if a.iter().all(Value::is_string) => Ok(()),
        _ => bad(k, "must be an array of strings"),
    })?;
    copy(r, &mut out, &["metadata"], |k, v| {
        let o = object(k, v)?;
        only(k, o, &["user_id"], |_| None)
    })?;
    match r.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            out.insert("system".into(), Value::String(s.clone()));
        }
        Some(Value::Array(blocks)) => {
            let kept = blocks.iter().enumerate().map(|(i, b)| anthropic_block(&format!("system[{i}]"), b, &["text"], tally)).collect::<Checking<Vec<_>>>()?;
            out.insert("system".into(), Value::Array(kept));
        }
        Some(_) => return bad("system", "must be a string or an array of text blocks"),
    }
    let mut thinking = false;
    if let Some(t) = r.get("thinking").filter(|v| !v.is_null()) {
        let o = object("thinking", t)?;
        match kind("thinking", o)? {
            "disabled" => only("thinking", o, &["type"], |_| None)?,
            "enabled" => {
                only("thinking", o, &["type", "budget_tokens"], |_| None)?;
                positive(o, "budget_tokens").map_err(|Invalid(m)| Invalid(format!("thinking.{m}")))?;
                thinking = true;
            }
            other => return bad("thinking.type", format!("{other:?} is not offered; use enabled or disabled")),
        }
        out.insert("thinking".into(), t.clone());
    }
    if let Some(tools) = r.get("tools").filter(|v| !v.is_null()) {
        let mut kept = Vec::new();
        for (i, t) in array("tools", tools)?.iter().enumerate() {
            let path = format!("tools[{i}]");
            let t = object(&path, t)?;
            match t.get("type") {
                None | Some(Value::Null) => {}
                Some(k) if k == "custom" => {}
                Some(k) => {
                    let k = k.as_str().unwrap_or("?");
                    return bad(&format!("{path}.type"), format!("{k:?} is a server-side tool (the provider runs it, fetching and billing as it goes); only custom tools are offered"));
                }
            }
            only(&path, t, &["type", "name", "description", "input_schema", "cache_control"], |_| None)?;
            string(&format!("{path}.name"), t.get("name").unwrap_or(&Value::Null))?;
            object(&format!("{path}.input_schema"), t.get("input_schema").unwrap_or(&Value::Null))?;
            if let Some(c) = t.get("cache_control") {
                cache_control(&format!("{path}.cache_control"), c)?;
            }
            let mut tool = t.clone();
            tool.remove("type");
            kept.push(Value::Object(tool));
        }
        tally.tools = kept.len() as i64;
        out.insert("tools".into(), Value::Array(kept));
    }
    if let Some(c) = r.get("tool_choice").filter(|v| !v.is_null()) {
        let o = object("tool_choice", c)?;
        match kind("tool_choice", o)? {
            "auto" | "any" | "none" | "tool" => only("tool_choice", o, &["type", "name", "disable_parallel_tool_use"], |_| None)?,
            other => return bad("tool_choice.type", format!("{other:?} is not offered; use auto, any, none or tool")),
        }
        out.insert("tool_choice".into(), c.clone());
    }
    let messages = array("messages", r.get("messages").unwrap_or(&Value::Null))?;
    if messages.is_empty() {
        return bad("messages", "must not be empty");
    }
    let mut kept = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        let o = object(&path, m)?;
        tally.messages += 1;
        only(&path, o, &["role", "content"], |_| None)?;
        let role = string(&format!("{path}.role"), o.get("role").unwrap_or(&Value::Null))?;
        if role != "user" && role != "assistant" {
            return bad(&format!("{path}.role"), "must be user or assistant");
        }
        let content = match o.get("content") {
            Some(Value::String(s)) => Value::String(s.clone()),
            Some(Value::Array(blocks)) => {
                let allowed: &[&str] = &["text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking"];
                Value::Array(blocks.iter().enumerate().map(|(j, b)| anthropic_block(&format!("{path}.content[{j}]"), b, allowed, tally)).collect::<Checking<Vec<_>>>()?)
            }
            _ => return bad(&format!("{path}.content"), "must be a string or an array of content blocks"),
        };
        kept.push(serde_json::json!({"role": role, "content": content}));
    }
    out.insert("messages".into(), Value::Array(kept));
    Ok((out, thinking))
}

/// Prompt caching for 5 minutes, the rate `cache_write_per_mtok` prices; the 1-hour cache is
/// billed higher.
fn cache_control(path: &str, v: &Value) -> Checking<()> {
    let o = object(path, v)?;
    only(path, o, &["type", "ttl"], |_| None)?;
    if kind(path, o)? != "ephemeral" {
        return bad(&format!("{path}.type"), "must be ephemeral");
    }
    match o.get("ttl") {
        None | Some(Value::Null) => Ok(()),
        Some(t) if t == "5m" => Ok(()),
        Some(_) => bad(&format!("{path}.ttl"), "only 5m is offered (a longer cache is billed above the model's cache write price)"),
    }
}

fn anthropic_block(path: &str, b: &Value, allowed: &[&str], tally: &mut Tally) -> Checking<Value> {
    let o = object(path, b)?;
    tally.parts += 1;
    let t = kind(path, o)?;
    if !allowed.contains(&t) {
        let why = match t {
            "document" => "documents are not offered (by URL the provider would fetch them; a PDF's pages are billed as images)".to_owned(),
            "search_result" | "server_tool_use" | "web_search_tool_result" | "web_fetch_tool_result" | "mcp_tool_use" | "mcp_tool_result" | "container_upload" => {
                format!("{t:?} blocks belong to server-side tools, which are not offered")
            }
            other => format!("{other:?} blocks are not passed on here; this takes {}", allowed.join(", ")),
        };
        return bad(&format!("{path}.type"), why);
    }
    let keys: &[&str] = match t {
        "text" => &["type", "text", "cache_control"],
        "image" => &["type", "source", "cache_control"],
        "tool_use" => &["type", "id", "name", "input", "cache_control"],
        "tool_result" => &["type", "tool_use_id", "content", "is_error", "cache_control"],
        "thinking" => &["type", "thinking", "signature"],
        _ => &["type", "data"],
    };
    only(path, o, keys, |k| (k == "citations").then_some("citations are not offered"))?;
    if let Some(c) = o.get("cache_control") {
        cache_control(&format!("{path}.cache_control"), c)?;
    }
    let mut out = o.clone();
    match t {
        "text" => {
            string(&format!("{path}.text"), o.get("text").unwrap_or(&Value::Null))?;
        }
        "image" => {
            let at = format!("{path}.source");
            let s = object(&at, o.get("source").unwrap_or(&Value::Null))?;
            match kind(&at, s)? {
                "base64" => {}
                other => return bad(&format!("{at}.type"), format!("{other:?} sources are not offered; send the image as base64 (the provider would fetch a URL)")),
            }
            only(&at, s, &["type", "media_type", "data"], |_| None)?;
            let data = string(&format!("{at}.data"), s.get("data").unwrap_or(&Value::Null))?;
            string(&format!("{at}.media_type"), s.get("media_type").unwrap_or(&Value::Null))?;
            tally.images += 1;
            tally.image_bytes += data.len() as i64;
        }
        "tool_use" => {
            string(&format!("{path}.id"), o.get("id").unwrap_or(&Value::Null))?;
            string(&format!("{path}.name"), o.get("name").unwrap_or(&Value::Null))?;
            object(&format!("{path}.input"), o.get("input").unwrap_or(&Value::Null))?;
        }
        "tool_result" => {
            string(&format!("{path}.tool_use_id"), o.get("tool_use_id").unwrap_or(&Value::Null))?;
            if let Some(v) = o.get("is_error") {
                boolean(&format!("{path}.is_error"), v)?;
            }
            match o.get("content") {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(Value::Array(inner)) => {
                    let kept = inner.iter().enumerate().map(|(k, b)| anthropic_block(&format!("{path}.content[{k}]"), b, &["text", "image"], tally)).collect::<Checking<Vec<_>>>()?;
                    out.insert("content".into(), Value::Array(kept));
                }
                Some(_) => return bad(&format!("{path}.content"), "must be a string or an array of text and image blocks"),
            }
        }
        "thinking" => {
            string(&format!("{path}.thinking"), o.get("thinking").unwrap_or(&Value::Null))?;
            string(&format!("{path}.signature"), o.get("signature").unwrap_or(&Value::Null))?;
        }
        _ => {
            string(&format!("{path}.data"), o.get("data").unwrap_or(&Value::Null))?;
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn openai_ok(r: Value) -> Checked {
        check(Endpoint::ChatCompletions, &HeaderMap::new(), r.as_object().unwrap(), "up", 100).unwrap()
    }

    fn openai_err(r: Value) -> String {
        check(Endpoint::ChatCompletions, &HeaderMap::new(), r.as_object().unwrap(), "up", 100).unwrap_err().0
    }

    fn anthropic_err(r: Value) -> String {
        check(Endpoint::Messages, &HeaderMap::new(), r.as_object().unwrap(), "up", 100).unwrap_err().0
    }

    fn sent(c: &Checked) -> Value {
        serde_json::from_slice(&c.body).unwrap()
    }

    const HI: &str = "hello there";

    #[test]
    fn max_tokens_are_set_exactly_once_and_clamped() {
        let m = json!([{"role": "user", "content": HI}]);
        for (r, field, want) in [
            (json!({"model": "x", "messages": m}), "max_tokens", 100),
            (json!({"model": "x", "messages": m, "max_tokens": 7}), "max_tokens", 7),
            (json!({"model": "x", "messages": m, "max_completion_tokens": null, "max_tokens": 1_000_000}), "max_tokens", 100),
            (json!({"model": "x", "messages": m, "max_completion_tokens": 5, "max_tokens": 1_000_000}), "max_completion_tokens", 5),
            (json!({"model": "x", "messages": m, "max_completion_tokens": 1_000_000, "max_tokens": null}), "max_completion_tokens", 100),
        ] {
            let c = openai_ok(r.clone());
            let body = sent(&c);
            assert_eq!(c.max_tokens, want, "{r}");
            assert_eq!(body[field], want, "{r} → {body}");
            let other = if field == "max_tokens" { "max_completion_tokens" } else { "max_tokens" };
            assert!(body.get(other).is_none(), "exactly one alias goes upstream: {body}");
            assert_eq!(body["model"], "up");
        }
        assert!(openai_err(json!({"model": "x", "messages": m, "max_tokens": 0})).starts_with("max_tokens: must be at least 1"));
        let c = check(Endpoint::Messages, &HeaderMap::new(), json!({"model": "x", "messages": m, "max_tokens": 1_000_000}).as_object().unwrap(), "up", 100).unwrap();
        assert_eq!(sent(&c)["max_tokens"], 100);
    }

    #[test]
    fn multipliers_and_server_tools_are_refused_by_name() {
        let m = json!([{"role": "user", "content": HI}]);
        let cases = [
            (json!({"n": 8}), "n: only 1 choice"),
            (json!({"n": 1}), ""),
            (json!({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}), "audio: audio output"),
            (json!({"modalities": ["text", "audio"]}), "modalities: only"),
            (json!({"web_search_options": {}}), "web_search_options: server-side web search"),
            (json!({"service_tier": "priority"}), "service_tier:"),
            (json!({"tools": [{"type": "web_search"}]}), "tools[0].type: \"web_search\" tools are not offered"),
            (json!({"stream_options": {"include_usage": true, "x": 1}}), "stream_options.x:"),
            (json!({"surprise": 1}), "surprise: not accepted by the meter"),
        ];
        for (extra, want) in cases {
            let mut r = json!({"model": "x", "messages": m});
            r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            let got = check(Endpoint::ChatCompletions, &HeaderMap::new(), r.as_object().unwrap(), "up", 100);
            match want {
                "" => assert!(got.is_ok(), "{r}: {got:?}"),
                want => assert!(got.as_ref().unwrap_err().0.starts_with(want), "{r}: {got:?}"),
            }
        }
        let hello = json!([{"role": "user", "content": HI}]);
        assert!(anthropic_err(json!({"model": "x", "messages": hello, "mcp_servers": [{"type": "url", "url": "https://x"}]})).starts_with("mcp_servers: the MCP connector"));
        let e = anthropic_err(json!({"model": "x", "messages": hello, "tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}));
        assert!(e.starts_with("tools[0].type: \"web_fetch_20250910\" is a server-side tool"), "{e}");
        let mut beta = HeaderMap::new();
        beta.insert("anthropic-beta", "mcp-client-2025-04-04".parse().unwrap());
        let e = check(Endpoint::Messages, &beta, json!({"model": "x", "messages": hello}).as_object().unwrap(), "up", 100).unwrap_err().0;
        assert!(e.starts_with("anthropic-beta: beta features"), "{e}");
        // The SDK's own API version goes on when it is a date; anything else is replaced.
        for (sent, want) in [("2026-10-21", "2026-10-21"), ("latest; beta=mcp", ANTHROPIC_VERSION)] {
            let mut h = HeaderMap::new();
            h.insert("anthropic-version", sent.parse().unwrap());
            let c = check(Endpoint::Messages, &h, json!({"model": "x", "messages": hello}).as_object().unwrap(), "up", 100).unwrap();
            assert_eq!(c.anthropic_version, want);
        }
        let e = anthropic_err(json!({"model": "x", "messages": [{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]}));
        assert!(e.starts_with("messages[0].content[0].cache_control.ttl"), "{e}");
    }

    #[test]
    fn no_remote_url_is_passed_on() {
        let part = |url: &str| json!({"model": "x", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]});
        for url in ["https://attacker.example/x.png", "http://10.0.0.1/", "data:text/html;base64,AAAA", "data:image/png,raw", "file:///etc/passwd"] {
            assert!(openai_err(part(url)).starts_with("messages[0].content[0].image_url.url: only data:image/"), "{url}");
        }
        let c = openai_ok(part("data:image/png;base64,iVBORw0KGgo="));
        assert_eq!(c.images, 1);
        let e = openai_err(json!({"model": "x", "messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]}));
        assert!(e.starts_with("messages[0].content[0].type: files are not offered"), "{e}");
        let img = |source: Value| json!({"model": "x", "messages": [{"role": "user", "content": [{"type": "image", "source": source}]}]});
        for source in [json!({"type": "url", "url": "https://attacker.example/x.png"}), json!({"type": "file", "file_id": "f"})] {
            assert!(anthropic_err(img(source)).starts_with("messages[0].content[0].source.type"));
        }
        let doc = json!({"model": "x", "messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}]}]});
        assert!(anthropic_err(doc).starts_with("messages[0].content[0].type: documents are not offered"));
        // Nested in a tool result too.
        let nested = json!({"model": "x", "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {"type": "url", "url": "https://x"}}]}]}]});
        assert!(anthropic_err(nested).starts_with("messages[0].content[0].content[0].source.type"));
    }

    #[test]
    fn the_input_bound_counts_every_byte_and_each_overhead() {
        let text = "é".repeat(500); // 1,000 bytes, which a byte-level tokenizer may make 1,000 tokens
        let c = openai_ok(json!({"model": "x", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": text}]}));
        assert!(c.text_tokens_max >= 1_000 + 2 * PER_MESSAGE_TOKENS + BASE_TOKENS, "{}", c.text_tokens_max);
        assert_eq!(c.text_tokens_max, c.body.len() as i64 + BASE_TOKENS + 2 * PER_MESSAGE_TOKENS);
        // Image payloads are priced per image, not per byte.
        let big = format!("data:image/png;base64,{}", "A".repeat(100_000));
        let c = openai_ok(json!({"model": "x", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": big}}]}]}));
        assert!(c.text_tokens_max < 1_000, "{}", c.text_tokens_max);
        assert_eq!(c.images, 1);
        // Tools add their framing.
        let c = openai_ok(json!({"model": "x", "messages": [{"role": "user", "content": HI}], "tools": [{"type": "function", "function": {"name": "f"}}]}));
        assert_eq!(c.text_tokens_max, c.body.len() as i64 + BASE_TOKENS + PER_MESSAGE_TOKENS + TOOLS_TOKENS + PER_TOOL_TOKENS);
    }

    #[test]
    fn the_forwarded_body_is_built_from_allowed_fields() {
        let c = openai_ok(json!({
            "model": "x", "stream": true, "temperature": 0.5, "n": 1, "modalities": ["text"],
            "messages": [{"role": "user", "content": [{"type": "text", "text": HI}]}, {"role": "assistant", "content": null, "refusal": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, {"role": "tool", "tool_call_id": "c1", "content": "ok"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true}}],
        }));
        let body = sent(&c);
        assert!(c.stream && !c.caller_wants_usage);
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
        assert!(body.get("n").is_none() && body.get("modalities").is_none(), "defaults need not be sent: {body}");
        assert_eq!(body["messages"][1]["tool_calls"][0]["function"]["name"], "f");
        assert_eq!(body["temperature"], 0.5);
        let c = check(
            Endpoint::Messages,
            &HeaderMap::new(),
            json!({"model": "x", "system": "be brief", "thinking": {"type": "enabled", "budget_tokens": 50}, "tools": [{"name": "t", "input_schema": {"type": "object"}}], "messages": [{"role": "user", "content": HI}]}).as_object().unwrap(),
            "up",
            100,
        )
        .unwrap();
        assert!(c.hidden_output);
        assert_eq!(sent(&c)["system"], "be brief");
    }
}
