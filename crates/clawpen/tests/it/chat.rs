//! The agent's mind end to end: a message to a running agent in its real sandbox is answered by
//! the model through the meter, its tools write to its own workspace, its guardrails stop a
//! runaway run, and a tenant near its cap is refused clearly while another tenant is unaffected.

use serde_json::{json, Value};

use crate::harness::{expected_cost, TestServer};

async fn say(s: &TestServer, key: &str, agent: &str, text: &str) -> Value {
    let (st, r) = s.post(&format!("/api/v1/agents/{agent}/messages"), key, json!({"text": text})).await;
    assert_eq!(st, 200, "{r}\nlog:\n{}", s.log());
    r
}

async fn usage(s: &TestServer, key: &str) -> Value {
    let (st, u) = s.get("/api/v1/usage", key).await;
    assert_eq!(st, 200, "{u}");
    u
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_is_answered_by_the_model_through_the_meter_and_charged() {
    let s = TestServer::start().await;
    let (t, key) = s.tenant("talker").await;
    let tid = t["id"].as_str().unwrap();
    let a = s.agent(&key, "a", true).await;
    let id = a["id"].as_str().unwrap();
    let start = usage(&s, &key).await["balance"].as_i64().unwrap();

    let r = say(&s, &key, id, "what is the weather like").await;
    assert_eq!(r["reply"], "stand-in reply to: what is the weather like");
    assert_eq!((r["paused"].as_bool(), r["tool_calls"].as_u64()), (Some(false), Some(0)), "{r}");

    // The upstream got a streamed chat completion built from the workspace, with the platform's key.
    let reqs = s.standin.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let req = &reqs[0];
    assert!(req.authorized && req.stream && req.model == "gpt-test", "{req:?}");
    let system = req.body["messages"][0]["content"].as_str().unwrap_or_default();
    assert_eq!(req.body["messages"][0]["role"], "system");
    let soul = std::fs::read_to_string(s.workspace(tid, id).join("SOUL.md")).unwrap();
    let soul_line = soul.lines().find(|l| l.len() > 20).expect("SOUL.md has a line of text");
    assert!(system.contains(soul_line.trim()), "the prompt carries the persona from SOUL.md: {system}");

    // The usage API shows the call and its exact cost.
    let u = s.settled_usage(&key).await;
    let calls = u["recent_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{u:#}");
    let c = &calls[0];
    assert_eq!((c["outcome"].as_str(), c["agent_id"].as_str(), c["stream"].as_bool()), (Some("ok"), Some(id), Some(true)), "{c}");
    assert!(c["cost"].as_i64().unwrap() > 0);
    assert_eq!(c["cost"].as_i64().unwrap(), expected_cost(c), "{c}");
    assert_eq!(u["balance"].as_i64().unwrap(), start - c["cost"].as_i64().unwrap());
    assert_eq!(u["agents"][0]["cost"], c["cost"]);

    // The memory tool writes into this agent's own workspace, and the next prompt remembers it.
    let r = say(&s, &key, id, r#"/tool remember {"fact": "the cat is called Miso"}"#).await;
    assert_eq!(r["tool_calls"], 1, "{r}");
    let memory = std::fs::read_to_string(s.workspace(tid, id).join("MEMORY.md")).unwrap();
    assert!(memory.contains("the cat is called Miso"), "{memory}");
    say(&s, &key, id, "and what is the cat called").await;
    let last = s.standin.requests().pop().unwrap();
    assert!(last.body["messages"][0]["content"].as_str().unwrap().contains("Miso"), "MEMORY.md is in the prompt");

    // A runaway run stops at the tool-call guard and says so.
    let r = say(&s, &key, id, "/loop forever").await;
    assert_eq!(r["stopped_by"], "max_tool_calls", "{r}");
    assert_eq!(r["tool_calls"], 8, "the default guard is 8 tool calls: {r}");
    assert!(r["reply"].as_str().unwrap().contains("tool calls"), "the user is told why: {r}");

    // The session log in the workspace holds the turns.
    let session = std::fs::read_to_string(s.workspace(tid, id).join("sessions/main.jsonl")).unwrap();
    assert!(session.contains("stand-in reply to: what is the weather like"), "{session}");
    let u = s.settled_usage(&key).await;
    assert_eq!(u["balance"].as_i64().unwrap() + u["month"]["spent"].as_i64().unwrap(), start);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_near_its_cap_is_refused_clearly_without_a_pause_and_another_is_unaffected() {
    // A message costs a few hundred micro-credits and holds several thousand (its worst case: a
    // token a byte of its prompt, the plan's max tokens of output). The cap admits messages until
    // less than a hold is left; then each is refused, and nobody is paused while the spending is
    // under the cap.
    let s = TestServer::start_with("monthly_cap = 20000\ndaily_cap = 0\ninitial_credits = 1000000\nmessages_per_minute = 1000", "", &[]).await;
    let (_, key_a) = s.tenant("capped").await;
    let (_, key_b) = s.tenant("other").await;
    let a = s.agent(&key_a, "a", true).await["id"].as_str().unwrap().to_owned();
    let b = s.agent(&key_b, "b", true).await["id"].as_str().unwrap().to_owned();

    let mut refused = None;
    for i in 0..100 {
        let r = say(&s, &key_a, &a, &format!("message number {i}")).await;
        if r["error_code"].is_string() {
            refused = Some(r);
            break;
        }
        assert_eq!(r["reply"], format!("stand-in reply to: message number {i}"));
    }
    let r = refused.expect("the monthly cap refuses a message within 100");
    assert_eq!((r["error_code"].as_str(), r["paused"].as_bool()), (Some("cap_headroom"), Some(false)), "{r}");
    let reply = r["reply"].as_str().unwrap();
    assert!(reply.contains("cap") && reply.contains("left"), "the user reads why: {reply}");

    // Not paused: the API agrees, and the spending is within the cap.
    let (_, view) = s.get(&format!("/api/v1/agents/{a}"), &key_a).await;
    assert!(view["paused_until"].is_null(), "{view}");
    let u = s.settled_usage(&key_a).await;
    assert!(u["month"]["spent"].as_i64().unwrap() <= 20000, "{u}");

    // Tenant B, same plan, same server: answered and not paused.
    let r = say(&s, &key_b, &b, "am I fine").await;
    assert_eq!(r["reply"], "stand-in reply to: am I fine");
    assert_eq!(r["paused"], false);
    let (_, view) = s.get(&format!("/api/v1/agents/{b}"), &key_b).await;
    assert!(view["paused_until"].is_null(), "{view}");
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_are_rate_limited_per_tenant() {
    let s = TestServer::start_with("messages_per_minute = 3", "", &[]).await;
    let (_, key_a) = s.tenant("chatty").await;
    let (_, key_b) = s.tenant("quiet").await;
    let a = s.agent(&key_a, "a", true).await["id"].as_str().unwrap().to_owned();
    let b = s.agent(&key_b, "b", true).await["id"].as_str().unwrap().to_owned();
    for i in 0..3 {
        say(&s, &key_a, &a, &format!("message {i}")).await;
    }
    let (st, e) = s.post(&format!("/api/v1/agents/{a}/messages"), &key_a, json!({"text": "one too many"})).await;
    assert_eq!(st, 429, "{e}");
    assert_eq!(e["error"]["code"], "rate_limited");
    assert!(e["error"]["message"].as_str().unwrap().contains("3 messages a minute"), "{e}");
    // The refused message never reached the agent or the model.
    assert!(!s.standin.requests().iter().any(|r| r.body.to_string().contains("one too many")));
    // Another tenant has its own allowance.
    let r = say(&s, &key_b, &b, "my turn").await;
    assert_eq!(r["reply"], "stand-in reply to: my turn");
}

/// The reply as it is written: `Accept: text/event-stream` gives the model's answer piece by
/// piece, then the whole reply, the same as the JSON answer; the session keeps the turn.
#[tokio::test(flavor = "multi_thread")]
async fn a_reply_streams_piece_by_piece_as_server_sent_events() {
    let s = TestServer::start().await;
    let (t, key) = s.tenant("streamer").await;
    let a = s.agent(&key, "a", true).await;
    let id = a["id"].as_str().unwrap();
    let res = s
        .http
        .post(s.url(&format!("/api/v1/agents/{id}/messages")))
        .bearer_auth(&key)
        .header("accept", "text/event-stream")
        .json(&json!({"text": "tell me a story in pieces"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let body = res.text().await.unwrap();
    let mut deltas = String::new();
    let mut done = None;
    for block in body.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let event = block.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("");
        let data: Value = serde_json::from_str(block.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
        match event {
            "delta" => deltas.push_str(data["text"].as_str().unwrap()),
            "done" => done = Some(data),
            other => panic!("unexpected event {other}: {block}"),
        }
    }
    let pieces = body.matches("event: delta").count();
    assert!(pieces > 3, "the answer came in pieces ({pieces}): {body}");
    let done = done.expect("a done event");
    assert_eq!(done["reply"], "stand-in reply to: tell me a story in pieces", "{done}");
    assert_eq!(deltas, done["reply"].as_str().unwrap(), "the pieces make the reply");
    let session = std::fs::read_to_string(s.workspace(t["id"].as_str().unwrap(), id).join("sessions/main.jsonl")).unwrap();
    assert!(session.contains("stand-in reply to: tell me a story in pieces"));
}
