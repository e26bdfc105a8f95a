//! The gateway end to end: a signed connect URL, a real WebSocket client (Python `websockets`)
//! speaking the OpenClaw protocol through the relay to a real agent, woken from stopped.

use std::time::Instant;

use reqwest::Method;

use crate::harness::TestServer;

/// The connect URL of an agent, pointed at this server (`ws://`).
pub(crate) async fn connect_url(s: &TestServer, key: &str, agent: &str) -> String {
    let (st, c) = s.call(Method::POST, &format!("/api/v1/agents/{agent}/connect-url"), Some(key), None).await;
    assert_eq!(st, 200, "{c}");
    let query = c["url"].as_str().unwrap().split_once('?').unwrap().1.to_owned();
    format!("{}/gateway/connect?{query}", s.base.replacen("http://", "ws://", 1))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_client_chats_through_the_gateway_and_wakes_the_agent() {
    let s = TestServer::start().await;
    let (_, key_a) = s.tenant("alpha").await;
    let (tb, key_b) = s.tenant("beta").await;
    let a = s.agent(&key_a, "a", false).await["id"].as_str().unwrap().to_owned();
    let b = s.agent(&key_b, "b", true).await["id"].as_str().unwrap().to_owned();
    let url = connect_url(&s, &key_a, &a).await;

    // Wake on connect: A's agent is stopped; the upgrade waits for its start.
    let t0 = Instant::now();
    let out = tokio::process::Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/test_gateway.py")])
        .env("CLAWPEN_CONNECT_URL", &url)
        .output()
        .await
        .expect("python3 with `pip install -r tests/python/requirements.txt`");
    let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{report}\nserver log:\n{}", s.log());
    assert!(report.contains("7 passed"), "{report}");
    eprintln!("gateway suite (first connection woke the agent) took {} ms", t0.elapsed().as_millis());
    let (_, view) = s.get(&format!("/api/v1/agents/{a}"), &key_a).await;
    assert_eq!(view["observed_state"], "running", "{view}");
    let (_, ev) = s.get(&format!("/api/v1/agents/{a}/events"), &key_a).await;
    assert!(ev["entries"].as_array().unwrap().iter().any(|e| e["reason"] == "woken by a connection"), "{ev}");

    // Cross-tenant: A's URL only ever reached A's agent; B's session log has no trace of it.
    let b_session = s.workspace(tb["id"].as_str().unwrap(), &b).join("sessions");
    let b_text: String = std::fs::read_dir(&b_session).map(|d| d.flatten().map(|e| std::fs::read_to_string(e.path()).unwrap_or_default()).collect()).unwrap_or_default();
    assert!(!b_text.contains("hello gateway"), "B's agent saw A's chat");
    // A plain HTTP GET (no upgrade) with a valid URL is told to use a WebSocket; a bad one is 401.
    let http_url = url.replacen("ws://", "http://", 1);
    let r = reqwest::get(&http_url).await.unwrap();
    assert_eq!(r.status(), 426);
    let r = reqwest::get(http_url.replace("sig=", "sig=f")).await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_connect_url");
}

/// A real OpenClaw client from PyPI (`openclaw-sdk`) through a clawpen connect URL, as shipped
/// (protocol 3) and at protocol 4: the reply streams token by token, the history and sessions
/// read back.
#[tokio::test(flavor = "multi_thread")]
async fn the_openclaw_sdk_chats_through_the_gateway() {
    let s = TestServer::start().await;
    let (_, key) = s.tenant("sdk").await;
    let a = s.agent(&key, "a", true).await["id"].as_str().unwrap().to_owned();
    let url = connect_url(&s, &key, &a).await;
    let report = crate::harness::pytest("test_openclaw_sdk.py", &[("CLAWPEN_CONNECT_URL", &url)]).await;
    assert!(report.contains("2 passed"), "{report}\nserver log:\n{}", s.log());
}

/// A client that hangs up mid-stream: the agent stops the run, the meter closes the provider's
/// stream at once, no model call follows, and the call is charged at least what the provider
/// generated (the ledger read back). A meter cannot know a provider's count for a stream cut
/// short, so it charges its bound: every byte of text it saw as a token, plus 64 tokens that may
/// have been in flight (docs/ARCHITECTURE.md); the stand-in's tokens are words, so that is at
/// most 16 per word generated, plus the 64.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_gone_mid_stream_leaves_no_run_and_pays_what_was_generated() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let s = TestServer::start_with("", "default_model = \"gpt-slow\"", &[]).await;
    let (_, key) = s.tenant("leaver").await;
    let a = s.agent(&key, "a", true).await["id"].as_str().unwrap().to_owned();
    let url = connect_url(&s, &key, &a).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("connect");
    let Message::Text(challenge) = ws.next().await.expect("open").expect("frame") else { panic!("text first") };
    assert!(challenge.as_str().contains("connect.challenge"), "{challenge}");
    let send = |v: serde_json::Value| Message::Text(v.to_string().into());
    ws.send(send(serde_json::json!({"type": "req", "id": "c", "method": "connect", "params": {"minProtocol": 4, "maxProtocol": 4, "client": {"id": "test", "version": "1", "platform": "linux", "mode": "test"}}}))).await.unwrap();
    let long = "tell me everything about the sea, the ships, the harbours and the lighthouses along the coast";
    ws.send(send(serde_json::json!({"type": "req", "id": "s", "method": "chat.send", "params": {"sessionKey": "main", "message": long, "idempotencyKey": "leaving"}}))).await.unwrap();
    // The first piece of the answer, then the client is gone.
    loop {
        let Message::Text(t) = ws.next().await.expect("open").expect("frame") else { continue };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        if v["event"] == "chat" && v["payload"]["state"] == "delta" {
            break;
        }
    }
    let left = std::time::Instant::now();
    drop(ws);
    let deadline = left + std::time::Duration::from_secs(3);
    let seen = loop {
        let r = s.standin.requests().last().unwrap().clone();
        if r.hung_up_at.is_some() || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let at = seen.hung_up_at.unwrap_or_else(|| panic!("the run went on after its client left: {seen:?}"));
    assert!(at.duration_since(left) < std::time::Duration::from_secs(1), "closed {:?} after the client left", at.duration_since(left));
    assert!(!seen.completed, "{seen:?}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(s.standin.requests().len(), 1, "no model call after the client left");
    let u = s.settled_usage(&key).await;
    let c = &u["recent_calls"][0];
    assert_eq!(c["outcome"], "client_aborted", "{u:#}");
    let (generated, charged) = (seen.output_generated as i64, c["output_tokens"].as_i64().unwrap());
    assert!(charged >= generated, "charged {charged} output tokens, the provider generated {generated}");
    assert!(charged <= 16 * (generated + 1) + 64, "charged {charged} output tokens for {generated} generated");
    assert_eq!(c["cost"].as_i64().unwrap(), crate::harness::expected_cost(c), "{c}");
    // The session keeps what was asked and the part that was written.
    let session = std::fs::read_to_string(s.run_dir(&a).parent().unwrap().join("workspace/sessions/main.jsonl")).unwrap();
    assert!(session.contains(long) && session.contains("\"stopped_by\":\"aborted\""), "{session}");
}
