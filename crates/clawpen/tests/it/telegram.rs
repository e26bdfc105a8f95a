//! Telegram end to end: the real server, real agents in Docker answering through the model
//! stand-in, and the stand-in's Bot API receiving the replies. A tenant's own bot by webhook
//! (secret header checked) and by polling; the shared bot with pairing codes, where a paired
//! user reaches only their own tenant's agent and an unpaired one reaches nobody.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::TestServer;

const TOKEN_A: &str = "700001:AAtenantAbotTOKENsecretPART_0000001";
const TOKEN_B: &str = "700002:AAtenantBbotTOKENsecretPART_0000002";
const TOKEN_SHARED: &str = "700009:AAsharedBOTtokenSECRETpart_00000009";
const SHARED_ENV: &str = "CLAWPEN_TEST_TELEGRAM_SHARED_TOKEN";
const PROMPT_MARK: &str = "send /pair CODE";
const WAIT: Duration = Duration::from_secs(90);

/// Texts sent to `chat` by the bot, once there are `n` of them (fails after [`WAIT`]).
async fn replies(s: &TestServer, token: &str, chat: i64, n: usize) -> Vec<String> {
    let got = s.standin.telegram().wait_for_sent(token, chat, n, WAIT).await;
    assert!(got.len() >= n, "expected {n} replies to {chat}, got {got:?}\nlog:\n{}", s.log());
    got
}

/// The newest reply to `chat` after it had `before` of them.
async fn next_reply(s: &TestServer, token: &str, chat: i64, before: usize) -> String {
    replies(s, token, chat, before + 1).await[before].clone()
}

/// A user writes to a bot and waits for the one answer.
async fn say(s: &TestServer, token: &str, user: i64, text: &str) -> String {
    let before = s.standin.telegram().sent_to(token, user).len();
    s.standin.telegram().inject_message(token, user, text);
    next_reply(s, token, user, before).await
}

/// Session files in an agent's workspace.
fn sessions(ws: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(ws.join("sessions")).map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    v.sort();
    v
}

fn session_text(ws: &Path) -> String {
    sessions(ws).iter().map(|f| std::fs::read_to_string(ws.join("sessions").join(f)).unwrap_or_default()).collect()
}

async fn pairing_code(s: &TestServer, key: &str, agent: &str) -> String {
    let (st, c) = s.post("/api/v1/telegram/pairing-codes", key, json!({"agent_id": agent})).await;
    assert_eq!(st, 201, "{c}");
    c["code"].as_str().unwrap().to_owned()
}

fn docker_inspect(name: &str) -> String {
    let out = std::process::Command::new("docker").args(["inspect", name]).output().unwrap();
    assert!(out.status.success(), "docker inspect {name}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The secret part of a token (after the colon): what must never leak.
fn secret_part(token: &str) -> &str {
    token.split_once(':').unwrap().1
}

async fn post_webhook(s: &TestServer, url: &str, secret: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = s.http.post(url).json(body);
    if let Some(secret) = secret {
        req = req.header("X-Telegram-Bot-Api-Secret-Token", secret);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn update(update_id: i64, user: i64, text: &str) -> Value {
    json!({"update_id": update_id, "message": {"message_id": update_id, "from": {"id": user, "is_bot": false, "first_name": "Mallory"},
        "chat": {"id": user, "type": "private"}, "date": 1_700_000_000, "text": text}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_bot_by_webhook_answers_through_its_agent_and_refuses_wrong_secrets() {
    let s = TestServer::start_full("", "", "[telegram]\napi_base = \"STANDIN\"\nmode = \"webhook\"\n", &[]).await;
    let tg = s.standin.telegram().clone();
    tg.add_bot(TOKEN_A, "alpha_family_bot");
    tg.add_bot(TOKEN_B, "beta_family_bot");
    let (ta, key_a) = s.tenant("alpha").await;
    let (_, key_b) = s.tenant("beta").await;
    let tid_a = ta["id"].as_str().unwrap();
    // A's agent is stopped: the first Telegram message wakes it.
    let a = s.agent(&key_a, "a", false).await["id"].as_str().unwrap().to_owned();
    let b = s.agent(&key_b, "b", false).await["id"].as_str().unwrap().to_owned();

    // Bad input creates nothing.
    let bad = [
        (json!({"token": "not-a-token", "agent_id": a}), 422),
        (json!({"token": "700003:AAunknownTOKENxxxxxxxxxxxxxxxxxxxx", "agent_id": a}), 422),
        (json!({"token": TOKEN_A, "agent_id": b}), 404),
        (json!({"token": TOKEN_A, "agent_id": "ag_aaaaaaaaaaaaaaaaaaaaaaaaaa"}), 404),
        (json!({"token": TOKEN_A, "agent_id": "../etc"}), 422),
        (json!({"token": TOKEN_A, "agent_id": a, "mode": "pigeon"}), 422),
        (json!({"token": TOKEN_A, "agent_id": a, "access": "everyone"}), 422),
        (json!({"token": TOKEN_A, "agent_id": a, "extra": 1}), 422),
        (json!({"agent_id": a}), 422),
    ];
    for (body, want) in bad {
        let (st, e) = s.put("/api/v1/telegram/bot", &key_a, body.clone()).await;
        assert_eq!(st, want, "{body}: {e}");
        assert!(e["error"]["code"].is_string(), "{e}");
        assert!(!e.to_string().contains(secret_part(TOKEN_A)), "{e}");
    }
    assert_eq!(s.get("/api/v1/telegram/bot", &key_a).await.0, 404);
    assert_eq!(tg.webhook(TOKEN_A), None);

    // A connects its bot: validated with getMe, webhook set with a secret, token never shown.
    let (st, view) = s.put("/api/v1/telegram/bot", &key_a, json!({"token": TOKEN_A, "agent_id": a, "mode": "webhook"})).await;
    assert_eq!(st, 200, "{view}\nlog:\n{}", s.log());
    assert_eq!((view["username"].as_str(), view["mode"].as_str(), view["access"].as_str()), (Some("alpha_family_bot"), Some("webhook"), Some("members")));
    let bot_a = view["id"].as_str().unwrap().to_owned();
    let hook_a = tg.webhook(TOKEN_A).expect("the webhook is set");
    assert_eq!(Some(hook_a.url.as_str()), view["webhook_url"].as_str());
    assert!(hook_a.url.ends_with(&format!("/telegram/webhook/{bot_a}")), "{}", hook_a.url);
    let secret_a = hook_a.secret_token.clone().expect("a secret token");
    assert!(secret_a.len() >= 32);
    let (st, view_b) = s.put("/api/v1/telegram/bot", &key_b, json!({"token": TOKEN_B, "agent_id": b, "mode": "webhook"})).await;
    assert_eq!(st, 200, "{view_b}");
    let hook_b = tg.webhook(TOKEN_B).unwrap();
    // A's bot cannot be taken by B (and B's own bot survives the attempt).
    let (st, e) = s.put("/api/v1/telegram/bot", &key_b, json!({"token": TOKEN_A, "agent_id": b})).await;
    assert_eq!(st, 409, "{e}");
    assert_eq!(s.get("/api/v1/telegram/bot", &key_b).await.1["id"], view_b["id"]);

    // An unpaired user gets the pairing prompt and reaches no agent.
    let models_before = s.standin.requests().len();
    let r = say(&s, TOKEN_A, 5001, "hello, who are you?").await;
    assert!(r.contains(PROMPT_MARK), "{r}");
    assert_eq!(s.standin.requests().len(), models_before, "no model call for an unpaired user");
    assert!(sessions(&s.workspace(tid_a, &a)).is_empty());

    // Paired with a code of A's, the user talks to A's agent (woken by the message).
    let code = pairing_code(&s, &key_a, &a).await;
    let r = say(&s, TOKEN_A, 5001, &format!("/pair {code}")).await;
    assert!(r.starts_with("Paired!"), "{r}");
    let r = say(&s, TOKEN_A, 5001, "what is the weather like").await;
    assert_eq!(r, "stand-in reply to: what is the weather like", "log:\n{}", s.log());
    assert_eq!(sessions(&s.workspace(tid_a, &a)), ["tg-5001.jsonl"]);
    let (_, agent) = s.get(&format!("/api/v1/agents/{a}"), &key_a).await;
    assert_eq!(agent["observed_state"], "running", "the message woke the agent");

    // A reply longer than Telegram's 4096 characters arrives in pieces.
    let long = "y".repeat(4096);
    let before = tg.sent_to(TOKEN_A, 5001).len();
    tg.inject_message(TOKEN_A, 5001, &long);
    let parts = replies(&s, TOKEN_A, 5001, before + 2).await[before..].to_vec();
    assert_eq!(parts.len(), 2, "{}", parts.len());
    assert!(parts.iter().all(|p| p.encode_utf16().count() <= 4096));
    assert_eq!(parts.concat(), format!("stand-in reply to: {long}"));

    // Telegram retries a webhook it got no answer for: the same update is answered once.
    let url_a = hook_a.url.clone();
    let before = tg.sent_to(TOKEN_A, 5001).len();
    let dup = update(990_001, 5001, "only once please");
    for _ in 0..3 {
        let (st, ack) = post_webhook(&s, &url_a, Some(&secret_a), &dup).await;
        assert_eq!((st, ack["ok"].as_bool()), (200, Some(true)), "{ack}");
    }
    assert_eq!(next_reply(&s, TOKEN_A, 5001, before).await, "stand-in reply to: only once please");

    // Wrong, missing, or another bot's secret: 401, nothing delivered.
    let models_before = s.standin.requests().len();
    let sent_before = (tg.sent(TOKEN_A).len(), tg.sent(TOKEN_B).len());
    let attempts = [
        (url_a.clone(), Some("wrong-secret".to_owned())),
        (url_a.clone(), None),
        (url_a.clone(), Some(format!("{secret_a}x"))),
        (url_a.clone(), Some(hook_b.secret_token.clone().unwrap())),
        (hook_b.url.clone(), Some(secret_a.clone())),
    ];
    for (i, (url, secret)) in attempts.iter().enumerate() {
        let (st, e) = post_webhook(&s, url, secret.as_deref(), &update(880_000 + i as i64, 5001, "smuggled in")).await;
        assert_eq!(st, 401, "{url} {secret:?}: {e}");
        assert_eq!(e["error"]["code"], "bad_webhook_secret");
    }
    // Right secret but no update: 4xx, JSON.
    let (st, e) = post_webhook(&s, &url_a, Some(&secret_a), &json!({"message": {}})).await;
    assert_eq!((st, e["error"]["code"].as_str()), (422, Some("invalid_input")), "{e}");
    let res = s.http.post(&url_a).header("X-Telegram-Bot-Api-Secret-Token", &secret_a).body("{not json").send().await.unwrap();
    assert_eq!(res.status(), 400);
    let (st, _) = post_webhook(&s, &s.url("/telegram/webhook/tgb_aaaaaaaaaaaaaaaaaaaaaaaaaa"), Some(&secret_a), &update(1, 5001, "x")).await;
    assert_eq!(st, 404);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!((tg.sent(TOKEN_A).len(), tg.sent(TOKEN_B).len()), sent_before, "nothing was sent for refused calls");
    assert_eq!(s.standin.requests().len(), models_before, "no model call for refused calls");
    assert!(!session_text(&s.workspace(tid_a, &a)).contains("smuggled"));

    // The tokens never appear in the log, an API answer, or a sandbox.
    let (_, got) = s.get("/api/v1/telegram/bot", &key_a).await;
    let (_, audit) = s.get("/api/v1/audit", &s.admin).await;
    let inspect = docker_inspect(&s.container(&a));
    for token in [TOKEN_A, TOKEN_B] {
        let secret = secret_part(token);
        for (what, text) in [("log", s.log()), ("GET bot", got.to_string()), ("PUT answer", view.to_string()), ("audit", audit.to_string()), ("docker inspect", inspect.clone())] {
            assert!(!text.contains(secret), "a bot token appears in the {what}");
        }
    }
    assert!(!inspect.contains(&secret_a), "the webhook secret is not in the sandbox");

    // Disconnecting deletes the webhook at Telegram; the path is gone.
    assert_eq!(s.delete("/api/v1/telegram/bot", &key_a).await.0, 204);
    assert_eq!(tg.webhook(TOKEN_A), None);
    assert_eq!(s.get("/api/v1/telegram/bot", &key_a).await.0, 404);
    assert_eq!(s.delete("/api/v1/telegram/bot", &key_a).await.0, 404);
    let (st, _) = post_webhook(&s, &url_a, Some(&secret_a), &update(770_001, 5001, "after delete")).await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_bot_by_polling_answers_and_polls_again_after_a_restart() {
    let mut s = TestServer::start_full("", "", "[telegram]\napi_base = \"STANDIN\"\npoll_timeout_secs = 2\n", &[]).await;
    let tg = s.standin.telegram().clone();
    tg.add_bot(TOKEN_A, "alpha_poll_bot");
    let (ta, key) = s.tenant("poller").await;
    let a = s.agent(&key, "a", true).await["id"].as_str().unwrap().to_owned();
    let (st, view) = s.put("/api/v1/telegram/bot", &key, json!({"token": TOKEN_A, "agent_id": a, "mode": "polling", "access": "open"})).await;
    assert_eq!(st, 200, "{view}");
    assert!(view["webhook_url"].is_null());
    assert_eq!(tg.webhook(TOKEN_A), None);

    // Open access: anyone who writes to the tenant's own bot reaches its agent.
    assert_eq!(say(&s, TOKEN_A, 6001, "hello from polling").await, "stand-in reply to: hello from polling");
    assert!(tg.calls(TOKEN_A).iter().any(|c| c == "getUpdates"), "{:?}", tg.calls(TOKEN_A));
    assert!(sessions(&s.workspace(ta["id"].as_str().unwrap(), &a)).contains(&"tg-6001.jsonl".to_owned()));

    // The poller comes back with the server.
    s.kill();
    s.spawn().await;
    assert_eq!(say(&s, TOKEN_A, 6001, "still there").await, "stand-in reply to: still there", "log:\n{}", s.log());
    assert!(!s.log().contains(secret_part(TOKEN_A)), "the token is not in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shared_bot_pairs_a_family_and_keeps_tenants_apart() {
    let extra = format!("[telegram]\napi_base = \"STANDIN\"\nmode = \"webhook\"\nshared_bot_token_env = \"{SHARED_ENV}\"\npairing_code_ttl_secs = 5\n");
    let s = TestServer::start_full("", "", &extra, &[(SHARED_ENV, TOKEN_SHARED)]).await;
    let tg = s.standin.telegram().clone();
    // The bot exists at Telegram before the server asks (it retries getMe until then).
    tg.add_bot(TOKEN_SHARED, "clawpen_shared_bot");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tg.webhook(TOKEN_SHARED).is_none() {
        assert!(std::time::Instant::now() < deadline, "the shared bot's webhook was never set; log:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(tg.webhook(TOKEN_SHARED).unwrap().url.ends_with("/telegram/webhook/shared"));

    let (ta, key_a) = s.tenant("smiths").await;
    let (tb, key_b) = s.tenant("joneses").await;
    let (tid_a, tid_b) = (ta["id"].as_str().unwrap().to_owned(), tb["id"].as_str().unwrap().to_owned());
    let a = s.agent(&key_a, "helper", true).await["id"].as_str().unwrap().to_owned();
    let b = s.agent(&key_b, "helper", true).await["id"].as_str().unwrap().to_owned();
    let (ws_a, ws_b) = (s.workspace(&tid_a, &a), s.workspace(&tid_b, &b));
    let (u1, u2, u3, u4) = (1001_i64, 1002_i64, 1003_i64, 1004_i64);

    // A family: U1 by the deep link, U2 by /pair; both reach A's agent, each in a session of their own.
    let (st, c) = s.post("/api/v1/telegram/pairing-codes", &key_a, json!({"agent_id": a})).await;
    assert_eq!(st, 201, "{c}");
    assert_eq!(c["deep_link"].as_str(), Some(format!("https://t.me/clawpen_shared_bot?start={}", c["code"].as_str().unwrap()).as_str()));
    let code1 = c["code"].as_str().unwrap().to_owned();
    assert!(say(&s, TOKEN_SHARED, u1, &format!("/start {code1}")).await.starts_with("Paired!"));
    let code2 = pairing_code(&s, &key_a, &a).await;
    assert!(say(&s, TOKEN_SHARED, u2, &format!("/pair {}", code2.to_lowercase())).await.starts_with("Paired!"));
    assert_eq!(say(&s, TOKEN_SHARED, u1, "hello from one").await, "stand-in reply to: hello from one");
    assert_eq!(say(&s, TOKEN_SHARED, u2, "hello from two").await, "stand-in reply to: hello from two");
    assert_eq!(sessions(&ws_a), ["tg-1001.jsonl", "tg-1002.jsonl"]);

    // A used code and an expired code are refused.
    assert!(say(&s, TOKEN_SHARED, u3, &format!("/pair {code1}")).await.contains("already used"));
    let stale = pairing_code(&s, &key_a, &a).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(say(&s, TOKEN_SHARED, u3, &format!("/pair {stale}")).await.contains("expired"));
    assert!(say(&s, TOKEN_SHARED, u3, "/pair NOT-A-CODE").await.contains("not valid"));

    // U1 belongs to A: B's code does not move them, and stays unspent for B's own user.
    let usage_b = s.settled_usage(&key_b).await;
    let code_b = pairing_code(&s, &key_b, &b).await;
    assert!(say(&s, TOKEN_SHARED, u1, &format!("/pair {code_b}")).await.contains("already paired with another account"));
    assert!(say(&s, TOKEN_SHARED, u4, &format!("/pair {code_b}")).await.starts_with("Paired!"));
    assert_eq!(say(&s, TOKEN_SHARED, u1, "still A?").await, "stand-in reply to: still A?");
    assert!(sessions(&ws_b).is_empty(), "B's agent never heard from U1: {:?}", sessions(&ws_b));
    let after_b = s.settled_usage(&key_b).await;
    assert_eq!((after_b["balance"].clone(), after_b["month"]["spent"].clone()), (usage_b["balance"].clone(), usage_b["month"]["spent"].clone()), "nothing charged to B");

    // An unpaired user reaches nobody: the prompt, no session, no model call, nothing charged.
    let models = s.standin.requests().len();
    let (usage_a, usage_b) = (s.settled_usage(&key_a).await, s.settled_usage(&key_b).await);
    let (sessions_a, sessions_b) = (session_text(&ws_a), session_text(&ws_b));
    for text in ["hello?", "/start", r#"/tool remember {"fact": "x"}"#, ""] {
        assert!(say(&s, TOKEN_SHARED, u3, text).await.contains(PROMPT_MARK), "{text:?}");
    }
    // Group chats are not served at all, even for a paired user.
    tg.inject_chat_message(TOKEN_SHARED, u1, -100_500, "group", "hello group");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(tg.sent_to(TOKEN_SHARED, -100_500).is_empty());
    assert_eq!(s.standin.requests().len(), models, "no model call");
    assert_eq!((session_text(&ws_a), session_text(&ws_b)), (sessions_a, sessions_b), "no session written");
    assert_eq!(s.settled_usage(&key_a).await["balance"], usage_a["balance"]);
    assert_eq!(s.settled_usage(&key_b).await["balance"], usage_b["balance"]);

    // Members: each tenant sees its own; B can neither see nor remove A's (404).
    let ext = |v: &Value| v["members"].as_array().unwrap().iter().map(|m| (m["kind"].as_str().unwrap().to_owned(), m["external_id"].as_str().unwrap().to_owned())).collect::<Vec<_>>();
    let (_, ma) = s.get("/api/v1/members", &key_a).await;
    assert_eq!(ext(&ma), [("telegram".to_owned(), u1.to_string()), ("telegram".to_owned(), u2.to_string())]);
    let (_, mb) = s.get("/api/v1/members", &key_b).await;
    assert_eq!(ext(&mb), [("telegram".to_owned(), u4.to_string())]);
    let m2 = ma["members"][1]["id"].as_str().unwrap().to_owned();
    let (st, foreign) = s.delete(&format!("/api/v1/members/{m2}"), &key_b).await;
    let (_, missing) = s.delete("/api/v1/members/mb_aaaaaaaaaaaaaaaaaaaaaaaaaa", &key_b).await;
    assert_eq!((st, &foreign), (404, &missing), "a foreign member looks missing");
    let (_, admin_view) = s.get(&format!("/api/v1/tenants/{tid_a}/members"), &s.admin).await;
    assert_eq!(admin_view["members"].as_array().unwrap().len(), 2, "still there");
    // A removes U2, who is unpaired from then on.
    assert_eq!(s.delete(&format!("/api/v1/members/{m2}"), &key_a).await.0, 204);
    assert!(say(&s, TOKEN_SHARED, u2, "am I still in?").await.contains(PROMPT_MARK));

    // Bad pairing-code requests create nothing.
    for (body, want) in [(json!({"agent_id": b}), 404), (json!({"agent_id": "nope"}), 422), (json!({}), 422), (json!({"agent_id": a, "ttl": 1}), 422)] {
        let (st, e) = s.post("/api/v1/telegram/pairing-codes", &key_a, body.clone()).await;
        assert_eq!(st, want, "{body}: {e}");
    }

    // The shared token is nowhere: not in the log, an answer, or either sandbox.
    let secret = secret_part(TOKEN_SHARED);
    assert!(!s.log().contains(secret), "the shared bot's token is in the log");
    assert!(!ma.to_string().contains(secret) && !c.to_string().contains(secret));
    for agent in [&a, &b] {
        assert!(!docker_inspect(&s.container(agent)).contains(secret), "the shared bot's token is in a sandbox");
    }
}
