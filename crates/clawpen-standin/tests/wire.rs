//! The stand-in over HTTP: answers, usage, streams, errors, tool calls and the request record.

use std::time::{Duration, Instant};

use clawpen_standin::{Standin, StandinConfig};
use futures_util::StreamExt;
use serde_json::{json, Value};

const OPENAI: &[(&str, &str)] = &[("authorization", "Bearer sk-standin-openai")];
const ANTHROPIC: &[(&str, &str)] = &[("x-api-key", "sk-ant-standin"), ("anthropic-version", "2023-06-01")];

async fn standin() -> Standin {
    Standin::start(StandinConfig::for_testing()).await.unwrap()
}

async fn post(s: &Standin, path: &str, headers: &[(&str, &str)], body: impl Into<reqwest::Body>) -> (u16, String) {
    let mut req = reqwest::Client::new().post(format!("{}{path}", s.base_url())).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.body(body).send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

async fn json_ok(s: &Standin, path: &str, headers: &[(&str, &str)], body: &Value) -> Value {
    let (status, text) = post(s, path, headers, body.to_string()).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// OpenAI's stream: the JSON of each `data:` event before `[DONE]`.
fn openai_chunks(text: &str) -> Vec<Value> {
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    events[..events.len() - 1].iter().map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap()).collect()
}

/// Anthropic's stream: (event name, data) pairs, the name matching the data's type.
fn anthropic_events(text: &str) -> Vec<(String, Value)> {
    text.split_terminator("\n\n")
        .map(|e| {
            let (name, data) = e.strip_prefix("event: ").unwrap().split_once("\ndata: ").unwrap();
            let data: Value = serde_json::from_str(data).unwrap();
            assert_eq!(data["type"], name);
            (name.to_owned(), data)
        })
        .collect()
}

fn chat(model: &str, messages: Value) -> Value {
    json!({"model": model, "messages": messages})
}

#[tokio::test]
async fn openai_answers_with_exact_usage() {
    let s = standin().await;
    let body = chat("gpt-test", json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there meter"}]));
    let v = json_ok(&s, "/v1/chat/completions", OPENAI, &body).await;
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "gpt-test");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["system_fingerprint"], Value::Null);
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"], json!({"role": "assistant", "content": "stand-in reply to: hello there meter", "refusal": null}));
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({
            "prompt_tokens": (2 + 4) + (3 + 4), "completion_tokens": 6, "total_tokens": 19,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        })
    );
    let r = &s.requests()[0];
    assert_eq!((r.path.as_str(), r.model.as_str(), r.stream, r.authorized, r.max_tokens, r.completed), ("/v1/chat/completions", "gpt-test", false, true, None, true));
    assert_eq!(r.body, body);
}

#[tokio::test]
async fn openai_max_tokens_cuts_the_reply() {
    let s = standin().await;
    let mut body = chat("gpt-test", json!([{"role": "user", "content": "one two three"}]));
    body["max_tokens"] = json!(3);
    let v = json_ok(&s, "/v1/chat/completions", OPENAI, &body).await;
    assert_eq!(v["choices"][0]["message"]["content"], "stand-in reply to:");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    // The newer field wins over the older one.
    body["max_completion_tokens"] = json!(2);
    body["max_tokens"] = json!(50);
    let v = json_ok(&s, "/v1/chat/completions", OPENAI, &body).await;
    assert_eq!(v["usage"]["completion_tokens"], 2);
    // Exactly enough is not a cut.
    body["max_completion_tokens"] = json!(6);
    let v = json_ok(&s, "/v1/chat/completions", OPENAI, &body).await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let max: Vec<_> = s.requests().iter().map(|r| r.max_tokens).collect();
    assert_eq!(max, [Some(3), Some(2), Some(6)]);
}

#[tokio::test]
async fn openai_cached_models_report_cached_tokens() {
    let s = standin().await;
    let short = json_ok(&s, "/v1/chat/completions", OPENAI, &chat("gpt-cached", json!([{"role": "user", "content": "hi"}]))).await;
    assert_eq!(short["usage"]["prompt_tokens"], 5);
    assert_eq!(short["usage"]["prompt_tokens_details"]["cached_tokens"], 5);
    let long = json_ok(&s, "/v1/chat/completions", OPENAI, &chat("gpt-cached", json!([{"role": "user", "content": "a long cached prompt with many words in it ok"}]))).await;
    assert_eq!(long["usage"]["prompt_tokens"], 14);
    assert_eq!(long["usage"]["prompt_tokens_details"]["cached_tokens"], 10);
}

#[tokio::test]
async fn openai_streams_usage_only_when_asked() {
    let s = standin().await;
    let mut body = chat("gpt-test", json!([{"role": "user", "content": "stream this please"}]));
    let whole = json_ok(&s, "/v1/chat/completions", OPENAI, &body).await;
    body["stream"] = json!(true);

    let (status, text) = post(&s, "/v1/chat/completions", OPENAI, body.to_string()).await;
    assert_eq!(status, 200);
    assert!(!text.contains("usage"), "no usage unless asked: {text}");
    let chunks = openai_chunks(&text);
    assert_eq!(chunks.len(), 1 + 6 + 1, "role, one per word, finish");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"] && c["model"] == "gpt-test"));
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": "", "refusal": null}));
    assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content": "stand-in"}));
    assert_eq!(chunks[2]["choices"][0]["delta"], json!({"content": " reply"}));
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, whole["choices"][0]["message"]["content"].as_str().unwrap());
    let last = &chunks[chunks.len() - 1]["choices"][0];
    assert_eq!((&last["delta"], &last["finish_reason"]), (&json!({}), &json!("stop")));
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["choices"][0]["finish_reason"].is_null()));

    body["stream_options"] = json!({"include_usage": true});
    let (_, text) = post(&s, "/v1/chat/completions", OPENAI, body.to_string()).await;
    let chunks = openai_chunks(&text);
    assert_eq!(chunks.len(), 1 + 6 + 1 + 1);
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert!(rest.iter().all(|c| c.get("usage") == Some(&Value::Null)), "every other chunk has usage: null");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], whole["usage"]);
    assert!(s.requests().iter().all(|r| r.completed));
    assert!(s.requests()[1].stream);
}

#[tokio::test]
async fn anthropic_answers_with_exact_usage() {
    let s = standin().await;
    let body = json!({"model": "claude-test", "max_tokens": 50, "system": "be brief", "messages": [{"role": "user", "content": "hi claude"}]});
    let v = json_ok(&s, "/v1/messages", ANTHROPIC, &body).await;
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!((&v["type"], &v["role"], &v["model"]), (&json!("message"), &json!("assistant"), &json!("claude-test")));
    assert_eq!(v["content"], json!([{"type": "text", "text": "stand-in reply to: hi claude"}]));
    assert_eq!((&v["stop_reason"], &v["stop_sequence"]), (&json!("end_turn"), &Value::Null));
    assert_eq!(v["usage"], json!({"input_tokens": 2 + 2 + 4, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}));
    assert_eq!(s.requests()[0].max_tokens, Some(50));

    // Cached: the cache tokens come out of input_tokens.
    let long = "one two three four five six seven eight nine ten eleven twelve thirteen";
    let cached = json!({"model": "claude-cached", "max_tokens": 50, "messages": [{"role": "user", "content": long}]});
    let v = json_ok(&s, "/v1/messages", ANTHROPIC, &cached).await;
    assert_eq!(v["usage"], json!({"input_tokens": 13 + 4 - 15, "output_tokens": 16, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 10}));
    let small = json!({"model": "claude-cached", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(json_ok(&s, "/v1/messages", ANTHROPIC, &small).await["usage"]["input_tokens"], 0);
}

#[tokio::test]
async fn anthropic_streams_the_same_usage() {
    let s = standin().await;
    for (max_tokens, stop_reason) in [(50, "end_turn"), (4, "max_tokens")] {
        let mut body = json!({"model": "claude-cached", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "stream with cache please"}]});
        let whole = json_ok(&s, "/v1/messages", ANTHROPIC, &body).await;
        assert_eq!(whole["stop_reason"], stop_reason);
        body["stream"] = json!(true);
        let (status, text) = post(&s, "/v1/messages", ANTHROPIC, body.to_string()).await;
        assert_eq!(status, 200);
        let events = anthropic_events(&text);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        let words = whole["usage"]["output_tokens"].as_u64().unwrap() as usize;
        let mut expected = vec!["message_start", "content_block_start", "ping"];
        expected.extend(std::iter::repeat_n("content_block_delta", words));
        expected.extend(["content_block_stop", "message_delta", "message_stop"]);
        assert_eq!(names, expected);

        let start = &events[0].1["message"];
        assert_eq!((&start["id"], &start["content"], &start["stop_reason"]), (&start["id"], &json!([]), &Value::Null));
        let mut start_usage = whole["usage"].clone();
        start_usage["output_tokens"] = json!(1);
        assert_eq!(start["usage"], start_usage);
        assert_eq!(events[1].1, json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}));
        let text: String = events.iter().filter_map(|(_, e)| e["delta"]["text"].as_str()).collect();
        assert_eq!(text, whole["content"][0]["text"].as_str().unwrap());
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"], json!({"stop_reason": stop_reason, "stop_sequence": null}));
        assert_eq!(delta["usage"]["output_tokens"], whole["usage"]["output_tokens"]);
    }
}

#[tokio::test]
async fn openai_errors_have_openai_shape() {
    let s = standin().await;
    let body = chat("gpt-test", json!([{"role": "user", "content": "hi"}])).to_string();
    for headers in [&[][..], &[("authorization", "Bearer sk-wrong")][..], &[("x-api-key", "sk-standin-openai")][..]] {
        let (status, text) = post(&s, "/v1/chat/completions", headers, body.clone()).await;
        assert_eq!(status, 401);
        let e: Value = serde_json::from_str(&text).unwrap();
        assert_eq!((&e["error"]["type"], &e["error"]["code"], &e["error"]["param"]), (&json!("invalid_request_error"), &json!("invalid_api_key"), &Value::Null));
        assert!(e["error"]["message"].is_string());
    }
    for bad in ["{not json", r#"{"messages": [{"role": "user", "content": "x"}]}"#, r#"{"model": "gpt-test"}"#, r#"{"model": "gpt-test", "messages": []}"#, r#"{"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}"#] {
        let (status, text) = post(&s, "/v1/chat/completions", OPENAI, bad).await;
        assert_eq!(status, 400, "{bad}");
        let e: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(e["error"]["type"], "invalid_request_error", "{bad}");
        assert!(e["error"].get("param").is_some() && e["error"].get("code").is_some());
    }
    let r = s.requests();
    assert_eq!(r.len(), 8);
    assert!(r[..3].iter().all(|r| !r.authorized && r.completed));
    assert!(r[3..].iter().all(|r| r.authorized));
    assert_eq!(r[3].body, Value::Null, "a body that is not JSON records as null");
}

/// Request headers, body, expected status, expected error type.
type ErrorCase<'a> = (&'a [(&'a str, &'a str)], String, u16, &'a str);

#[tokio::test]
async fn anthropic_errors_have_anthropic_shape() {
    let s = standin().await;
    let good = json!({"model": "claude-test", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let cases: [ErrorCase; 6] = [
        (&[("anthropic-version", "2023-06-01")], good.clone(), 401, "authentication_error"),
        (&[("x-api-key", "sk-wrong"), ("anthropic-version", "2023-06-01")], good.clone(), 401, "authentication_error"),
        (&[("x-api-key", "sk-ant-standin")], good.clone(), 400, "invalid_request_error"),
        (ANTHROPIC, "{nope".into(), 400, "invalid_request_error"),
        (ANTHROPIC, json!({"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]}).to_string(), 400, "invalid_request_error"),
        (ANTHROPIC, json!({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).to_string(), 400, "invalid_request_error"),
    ];
    for (headers, body, status, kind) in cases {
        let (st, text) = post(&s, "/v1/messages", headers, body).await;
        assert_eq!(st, status, "{text}");
        let e: Value = serde_json::from_str(&text).unwrap();
        assert_eq!((&e["type"], &e["error"]["type"]), (&json!("error"), &json!(kind)), "{text}");
        assert!(e["error"]["message"].is_string());
    }
    // Anthropic's SDKs send the key as a bearer token.
    let (status, _) = post(&s, "/v1/messages", &[("authorization", "Bearer sk-ant-standin"), ("anthropic-version", "2023-06-01")], good.clone()).await;
    assert_eq!(status, 200);
    let (status, _) = post(&s, "/v1/messages", &[("authorization", "Bearer sk-standin-openai"), ("anthropic-version", "2023-06-01")], good.clone()).await;
    assert_eq!(status, 401);
    let (_, text) = post(&s, "/v1/messages", &ANTHROPIC[..1], good).await;
    assert!(text.contains("anthropic-version"), "{text}");
    let (_, text) = post(&s, "/v1/messages", ANTHROPIC, json!({"model": "claude-test", "messages": [{"role": "user", "content": "hi"}]}).to_string()).await;
    assert!(text.contains("max_tokens"), "{text}");
}

#[tokio::test]
async fn scripted_tool_calls_drive_an_agent_loop() {
    let s = standin().await;
    let tools = json!([{"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}}, {"type": "function", "function": {"name": "write"}}]);
    let call = "/tool read {\"path\": \"notes.txt\"}";
    let mut body = json!({"model": "gpt-test", "tools": tools, "messages": [{"role": "user", "content": call}]});
    let v = json_ok(&s, "/v1/chat/completions", OPENAI, &body).await;
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call_msg = json!([{"id": "call_1", "type": "function", "function": {"name": "read", "arguments": "{\"path\": \"notes.txt\"}"}}]);
    assert_eq!(choice["message"]["tool_calls"], call_msg);
    assert_eq!(v["usage"]["completion_tokens"], 2 + 1);

    // Streamed: id, type and name first with empty arguments, then the arguments in pieces.
    body["stream"] = json!(true);
    let (_, text) = post(&s, "/v1/chat/completions", OPENAI, body.to_string()).await;
    let chunks = openai_chunks(&text);
    let first = &chunks[0]["choices"][0]["delta"];
    assert_eq!(first["tool_calls"], json!([{"index": 0, "id": "call_2", "type": "function", "function": {"name": "read", "arguments": ""}}]));
    let pieces: Vec<&str> = chunks[1..].iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()).collect();
    assert!(pieces.len() > 1);
    assert_eq!(pieces.concat(), "{\"path\": \"notes.txt\"}");
    assert!(chunks[1..].iter().all(|c| c["choices"][0]["delta"]["tool_calls"][0].get("id").is_none()));
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");

    // The tool's result comes back.
    let mut messages = body["messages"].as_array().unwrap().clone();
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": call_msg}));
    messages.push(json!({"role": "tool", "tool_call_id": "call_1", "content": "buy milk"}));
    let after = json!({"model": "gpt-test", "tools": tools, "messages": messages});
    let v = json_ok(&s, "/v1/chat/completions", OPENAI, &after).await;
    assert_eq!(v["choices"][0]["message"]["content"], "tool result: buy milk");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], (4 + 4) + (2 + 4) + (2 + 4), "the call's arguments count as input");

    // A tool that is not offered, or no JSON object: an ordinary reply.
    for text in ["/tool delete {\"all\": true}", "/tool read not-json"] {
        let v = json_ok(&s, "/v1/chat/completions", OPENAI, &json!({"model": "gpt-test", "tools": tools, "messages": [{"role": "user", "content": text}]})).await;
        assert_eq!(v["choices"][0]["message"]["content"], format!("stand-in reply to: {text}"));
    }
    // Without tools, /tool is just text.
    let v = json_ok(&s, "/v1/chat/completions", OPENAI, &chat("gpt-test", json!([{"role": "user", "content": call}]))).await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn loop_calls_the_first_tool_forever() {
    let s = standin().await;
    let tools = json!([{"type": "function", "function": {"name": "spin"}}, {"type": "function", "function": {"name": "other"}}]);
    let mut messages = vec![json!({"role": "user", "content": "/loop until stopped"})];
    for n in 1..=3 {
        let v = json_ok(&s, "/v1/chat/completions", OPENAI, &json!({"model": "gpt-test", "tools": tools, "messages": messages})).await;
        let message = &v["choices"][0]["message"];
        assert_eq!(message["tool_calls"][0]["function"], json!({"name": "spin", "arguments": "{}"}));
        assert_eq!(message["tool_calls"][0]["id"], format!("call_{n}"));
        assert_eq!(v["usage"]["completion_tokens"], 2);
        messages.push(message.clone());
        messages.push(json!({"role": "tool", "tool_call_id": format!("call_{n}"), "content": "again"}));
    }
}

#[tokio::test]
async fn slow_streams_are_paced_and_a_hang_up_leaves_them_incomplete() {
    let s = Standin::start(StandinConfig { token_delay_ms: 40, ..StandinConfig::for_testing() }).await.unwrap();
    let body = json!({"model": "gpt-test-slow", "stream": true, "messages": [{"role": "user", "content": "one two three four five six"}]});
    let t0 = Instant::now();
    let (_, text) = post(&s, "/v1/chat/completions", OPENAI, body.to_string()).await;
    // role + 9 words + finish + [DONE]: 11 pauses.
    assert_eq!(openai_chunks(&text).len(), 11);
    assert!(t0.elapsed() >= Duration::from_millis(11 * 40), "{:?}", t0.elapsed());
    assert!(s.requests()[0].completed);

    let res = reqwest::Client::new().post(format!("{}/v1/chat/completions", s.base_url())).headers(reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, "Bearer sk-standin-openai".parse().unwrap())])).body(body.to_string()).send().await.unwrap();
    let mut frames = res.bytes_stream();
    let first = frames.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "the first event arrives before the rest is produced");
    assert!(!s.requests()[1].completed, "still streaming");
    drop(frames);
    tokio::time::sleep(Duration::from_millis(11 * 40 + 200)).await;
    assert!(!s.requests()[1].completed, "the rest was never sent");
}

#[tokio::test]
async fn models_and_unknown_routes() {
    let s = standin().await;
    let res = reqwest::Client::new().get(format!("{}/v1/models", s.base_url())).bearer_auth("sk-standin-openai").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert!(v["data"].as_array().unwrap().iter().any(|m| m["id"] == "gpt-test" && m["object"] == "model"));
    let res = reqwest::Client::new().get(format!("{}/v1/models", s.base_url())).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let (status, text) = post(&s, "/v1/completions", OPENAI, "{}").await;
    assert_eq!(status, 404);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"]["code"], "unknown_url");
    let paths: Vec<String> = s.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/v1/models", "/v1/models", "/v1/completions"]);
}

#[tokio::test]
async fn serve_stops_on_its_shutdown_signal() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(clawpen_standin::serve(listener, StandinConfig::for_testing(), async {
        let _ = stopped.await;
    }));
    let res = reqwest::Client::new().post(format!("http://{addr}/v1/chat/completions")).bearer_auth("sk-standin-openai").body(chat("gpt-test", json!([{"role": "user", "content": "hi"}])).to_string()).send().await.unwrap();
    assert_eq!(res.status(), 200);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn every_multiplier_is_billed_honestly() {
    let s = standin().await;
    let hello = json!([{"role": "user", "content": "hello there meter"}]);
    // n choices: n answers, n times the output.
    let v = json_ok(&s, "/v1/chat/completions", OPENAI, &json!({"model": "gpt-test", "messages": hello, "n": 3})).await;
    assert_eq!(v["choices"].as_array().unwrap().len(), 3);
    assert_eq!((v["usage"]["prompt_tokens"].as_u64(), v["usage"]["completion_tokens"].as_u64()), (Some(7), Some(18)));
    assert_eq!(s.requests()[0].output_generated, 18);
    // Images count `image_tokens` each, in OpenAI and Anthropic parts alike.
    let img = json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}});
    let v = json_ok(&s, "/v1/chat/completions", OPENAI, &chat("gpt-test", json!([{"role": "user", "content": [{"type": "text", "text": "look"}, img, img]}]))).await;
    assert_eq!(v["usage"]["prompt_tokens"], 1 + 2 * 765 + 4);
    let block = json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}});
    let v = json_ok(&s, "/v1/messages", ANTHROPIC, &json!({"model": "claude-test", "max_tokens": 50, "messages": [{"role": "user", "content": [block, {"type": "text", "text": "look"}]}]})).await;
    assert_eq!(v["usage"]["input_tokens"], 765 + 1 + 4);
    // Server-side tools and MCP servers add what they put in the context.
    let v = json_ok(&s, "/v1/chat/completions", OPENAI, &json!({"model": "gpt-test", "messages": hello, "web_search_options": {}})).await;
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(7 + clawpen_standin::SERVER_TOOL_TOKENS));
    let tools = json!([{"type": "web_search_20250305", "name": "web_search"}, {"name": "mine", "input_schema": {"type": "object"}}]);
    let v = json_ok(&s, "/v1/messages", ANTHROPIC, &json!({"model": "claude-test", "max_tokens": 50, "tools": tools, "mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}], "messages": hello})).await;
    assert_eq!(v["usage"]["input_tokens"].as_u64(), Some(7 + 2 * clawpen_standin::SERVER_TOOL_TOKENS));
    assert_eq!(v["usage"]["server_tool_use"]["web_search_requests"], 1);
    // A `bytes` model counts one token per byte of text.
    let v = json_ok(&s, "/v1/chat/completions", OPENAI, &chat("gpt-bytes", json!([{"role": "user", "content": "héllo there"}]))).await;
    assert_eq!(v["usage"]["prompt_tokens"], 12 + 4);
}

#[tokio::test]
async fn a_hang_up_is_recorded_with_what_was_generated() {
    let s = Standin::start(StandinConfig { token_delay_ms: 40, ..StandinConfig::for_testing() }).await.unwrap();
    let body = json!({"model": "claude-test-slow", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": "one two three four five six seven eight"}]});
    let mut req = reqwest::Client::new().post(format!("{}/v1/messages", s.base_url()));
    for (k, v) in ANTHROPIC {
        req = req.header(*k, *v);
    }
    let mut frames = req.body(body.to_string()).send().await.unwrap().bytes_stream();
    let mut seen = String::new();
    while seen.matches("event: content_block_delta").count() < 3 {
        seen.push_str(&String::from_utf8_lossy(&frames.next().await.unwrap().unwrap()));
    }
    let r = &s.requests()[0];
    assert!(r.hung_up_at.is_none() && (3..=5).contains(&r.output_generated), "{r:?}");
    let left = Instant::now();
    drop(frames);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = &s.requests()[0];
    let at = r.hung_up_at.expect("the hang-up is seen");
    assert!(at.duration_since(left) < Duration::from_millis(200), "{:?}", at.duration_since(left));
    assert!(!r.completed && r.output_generated < 11, "generation stopped with the client: {r:?}");
}
