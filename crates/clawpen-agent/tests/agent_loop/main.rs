//! The assistant loop end to end, without network: the agent server runs in-process on a temp
//! run dir's `agent.sock`, and a scripted fake meter serves `control.sock` next to it.

mod fake_meter;
mod gateway_schema;

use std::path::PathBuf;
use std::time::Duration;

use clawpen_agent::client::{self, ClientError};
use clawpen_agent::protocol::{MessageIn, MessageOut};
use clawpen_agent::server::{self, AgentConfig};
use clawpen_agent::workspace::{date_name, today_utc};
use fake_meter::{refusal, text, tool_calls, Canned, FakeMeter};
use serde_json::{json, Value};

/// An agent and its fake meter on a temp dir.
struct Harness {
    _dir: tempfile::TempDir,
    ws: PathBuf,
    run_dir: PathBuf,
    meter: FakeMeter,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Harness {
    async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    async fn start_with(tune: impl FnOnce(&mut AgentConfig)) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ws, run_dir) = (dir.path().join("data"), dir.path().join("run"));
        for d in [&ws, &run_dir, &ws.join("memory"), &ws.join("sessions")] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let mut config = AgentConfig::new("agt_test", "ten_test", &ws, &run_dir);
        tune(&mut config);
        let meter = FakeMeter::serve(&run_dir);
        let listener = server::bind(&run_dir).expect("bind agent.sock");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server::run(config, listener, async {
            let _ = stopped.await;
        }));
        Harness { _dir: dir, ws, run_dir, meter, _stop: stop }
    }

    async fn send(&self, text: &str) -> Result<MessageOut, ClientError> {
        self.send_in(text, None).await
    }

    async fn send_in(&self, text: &str, session: Option<&str>) -> Result<MessageOut, ClientError> {
        self.send_msg(MessageIn { text: text.to_owned(), session: session.map(str::to_owned), run_id: None, greeting: false }).await
    }

    async fn send_msg(&self, msg: MessageIn) -> Result<MessageOut, ClientError> {
        // Longer than any run may take, also when a test pauses tokio's clock.
        client::message(&client::AgentAddr::unverified(self.run_dir.clone()), &msg, Duration::from_secs(600)).await
    }

    fn write(&self, rel: &str, content: &str) {
        std::fs::write(self.ws.join(rel), content).expect("write");
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.ws.join(rel)).unwrap_or_default()
    }

    fn session_lines(&self, session: &str) -> Vec<Value> {
        self.read(&format!("sessions/{session}.jsonl")).lines().map(|l| serde_json::from_str(l).expect("jsonl line")).collect()
    }
}

fn today_note() -> String {
    format!("memory/{}.md", date_name(today_utc()))
}

fn yesterday_note() -> String {
    let today = today_utc();
    format!("memory/{}.md", date_name(today.previous_day().expect("a day before")))
}

/// The `messages` of a recorded request, as (role, content) pairs.
fn roles(body: &Value) -> Vec<(String, String)> {
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (m["role"].as_str().unwrap_or("").to_owned(), m["content"].as_str().unwrap_or("").to_owned()))
        .collect()
}

fn system_of(body: &Value) -> String {
    let m = &body["messages"][0];
    assert_eq!(m["role"], "system", "{body}");
    m["content"].as_str().expect("system text").to_owned()
}

#[tokio::test]
async fn prompt_carries_the_workspace_and_the_history() {
    let h = Harness::start().await;
    h.write("SOUL.md", "You are Pinch, a crab of few words.");
    h.write("USER.md", "The user is Ada; she lives in Lisbon.");
    h.write("MEMORY.md", "- Ada likes green tea\n");
    h.write(&today_note(), "Booked the dentist for Friday.");
    h.write(&yesterday_note(), "Ada started a new job.");
    h.meter.push(text("Hello Ada."));
    h.meter.push(text("Friday."));

    let first = h.send("hi").await.expect("first");
    assert_eq!(first.reply, "Hello Ada.");
    let second = h.send("when is the dentist?").await.expect("second");
    assert_eq!(second.reply, "Friday.");

    let seen = h.meter.seen();
    assert_eq!(seen.len(), 2);
    let system = system_of(&seen[1].body);
    for part in ["# SOUL.md", "Pinch, a crab", "# USER.md", "Ada; she lives", "# MEMORY.md", "likes green tea", "Booked the dentist", "started a new job", "(today's notes)", "(yesterday's notes)"] {
        assert!(system.contains(part), "system lacks {part:?}: {system}");
    }
    let (yesterday, today) = (system.find("started a new job").expect("y"), system.find("Booked the dentist").expect("t"));
    assert!(yesterday < today, "notes in date order");
    let convo: Vec<(String, String)> = roles(&seen[1].body).into_iter().skip(1).collect();
    let pair = |r: &str, c: &str| (r.to_owned(), c.to_owned());
    assert_eq!(convo, [pair("user", "hi"), pair("assistant", "Hello Ada."), pair("user", "when is the dentist?")]);
    // Another session has its own history.
    h.meter.push(text("ok"));
    h.send_in("elsewhere", Some("side")).await.expect("side");
    assert_eq!(roles(&h.meter.seen()[2].body).len(), 2, "system + the new message only");
}

#[tokio::test]
async fn a_huge_workspace_gives_a_bounded_request() {
    let h = Harness::start().await;
    let mib = 1024 * 1024;
    h.write("SOUL.md", &"soul ".repeat(mib / 5));
    h.write("USER.md", &"user ".repeat(mib / 5));
    let memory: String = (0..60_000).map(|i| format!("- fact number {i}\n")).collect();
    assert!(memory.len() >= mib);
    h.write("MEMORY.md", &memory);
    h.write(&today_note(), &"today ".repeat(mib / 6));
    h.write(&yesterday_note(), &"yesterday ".repeat(mib / 10));
    let history: String = (0..20_000)
        .flat_map(|i| {
            [json!({"role": "user", "content": format!("question {i}"), "ts": "t"}), json!({"role": "assistant", "content": format!("answer {i}"), "ts": "t"})]
        })
        .map(|l| format!("{l}\n"))
        .collect();
    h.write("sessions/main.jsonl", &history);
    h.meter.push(text("fine"));

    h.send("and now?").await.expect("reply");
    let seen = &h.meter.seen()[0];
    assert!(seen.bytes < 96 * 1024, "request is {} bytes", seen.bytes);
    let system = system_of(&seen.body);
    assert!(system.len() <= 8 * 1024 * 4 + 16 * 1024 + 1024, "system is {} bytes", system.len());
    assert!(system.contains("- fact number 59999"), "MEMORY.md keeps its newest facts");
    assert!(!system.contains("- fact number 0\n"), "its oldest are left out");
    let convo = roles(&seen.body);
    let msgs = seen.body["messages"].as_array().expect("messages");
    let history_bytes: usize = msgs[1..msgs.len() - 1].iter().map(|m| m.to_string().len()).sum();
    assert!(history_bytes <= 16 * 1024 && history_bytes > 15 * 1024, "history is {history_bytes} bytes");
    assert_eq!(convo[1].0, "user", "history starts with a question");
    assert_eq!(convo[convo.len() - 2], ("assistant".to_owned(), "answer 19999".to_owned()), "the newest turn is kept");
    assert_eq!(convo.last().expect("last").1, "and now?");
}

#[tokio::test]
async fn a_streamed_answer_is_the_reply_and_is_logged() {
    let h = Harness::start().await;
    h.meter.push(text("The weather in Lisbon is sunny — 24 °C."));
    let out = h.send("weather?").await.expect("reply");
    assert_eq!(out.reply, "The weather in Lisbon is sunny — 24 °C.");
    assert_eq!((out.agent_id.as_str(), out.tenant_id.as_str(), out.session.as_str()), ("agt_test", "ten_test", "main"));
    assert_eq!((out.stopped_by, out.paused, out.error_code, out.tool_calls), (None, false, None, 0));
    let lines = h.session_lines("main");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!((lines[0]["role"].as_str(), lines[0]["content"].as_str()), (Some("user"), Some("weather?")));
    assert_eq!((lines[1]["role"].as_str(), lines[1]["content"].as_str()), (Some("assistant"), Some(out.reply.as_str())));
    for l in &lines {
        assert!(l["ts"].as_str().is_some_and(|t| t.contains('T')), "{l}");
        assert_eq!(l["run"].as_str(), Some(out.run_id.as_str()));
    }
}

#[tokio::test]
async fn tool_calls_change_the_workspace_and_the_loop_goes_on() {
    let h = Harness::start().await;
    h.write("MEMORY.md", "- Ada likes green tea");
    h.meter.push(tool_calls(&[
        ("call_1", "remember", r#"{"fact": "Ada's cat is called Miso"}"#),
        ("call_2", "write_note", r#"{"text": "Ada asked to remember her cat."}"#),
        ("call_3", "shell", r#"{"cmd": "cat /etc/passwd"}"#),
        ("call_4", "remember", r#"{"fact": 42}"#),
    ]));
    h.meter.push(text("Noted: Miso."));

    let out = h.send("my cat is Miso").await.expect("reply");
    assert_eq!((out.reply.as_str(), out.tool_calls, out.stopped_by.as_deref()), ("Noted: Miso.", 4, None));
    assert_eq!(h.read("MEMORY.md"), "- Ada likes green tea\n- Ada's cat is called Miso\n");
    assert_eq!(h.read(&today_note()), "Ada asked to remember her cat.\n");

    let seen = h.meter.seen();
    assert_eq!(seen.len(), 2);
    let msgs = seen[1].body["messages"].as_array().expect("messages").clone();
    let assistant = &msgs[msgs.len() - 5];
    assert_eq!(assistant["role"], "assistant");
    assert_eq!(assistant["tool_calls"][0]["function"], json!({"name": "remember", "arguments": r#"{"fact": "Ada's cat is called Miso"}"#}));
    assert_eq!(assistant["tool_calls"][1]["id"], "call_2");
    let results: Vec<(&str, &str)> = msgs[msgs.len() - 4..]
        .iter()
        .map(|m| {
            assert_eq!(m["role"], "tool");
            (m["tool_call_id"].as_str().expect("id"), m["content"].as_str().expect("content"))
        })
        .collect();
    assert_eq!(results[0], ("call_1", "Remembered."));
    assert!(results[1].1.starts_with("Added to today's notes"), "{results:?}");
    assert!(results[2].1.contains("no tool named \"shell\""), "{results:?}");
    assert!(results[3].1.contains("bad arguments for `remember`"), "{results:?}");

    let lines = h.session_lines("main");
    let roles: Vec<&str> = lines.iter().map(|l| l["role"].as_str().expect("role")).collect();
    assert_eq!(roles, ["user", "tool", "tool", "tool", "tool", "assistant"]);
    assert_eq!((lines[1]["name"].as_str(), lines[1]["result"].as_str()), (Some("remember"), Some("Remembered.")));
    assert_eq!(lines[1]["arguments"], r#"{"fact": "Ada's cat is called Miso"}"#);

    // The next run's history has the turn without its tool lines.
    h.meter.push(text("Miso, yes."));
    h.send("what's my cat called?").await.expect("reply");
    let convo = roles_of_last(&h);
    assert_eq!(convo, ["system", "user", "assistant", "user"]);
}

fn roles_of_last(h: &Harness) -> Vec<String> {
    roles(&h.meter.seen().last().expect("a request").body).into_iter().map(|(r, _)| r).collect()
}

#[tokio::test]
async fn tools_never_write_outside_the_workspace() {
    let h = Harness::start().await;
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("target"), "untouched").expect("write");
    std::os::unix::fs::symlink(outside.path().join("target"), h.ws.join("MEMORY.md")).expect("symlink");
    h.meter.push(tool_calls(&[("c1", "remember", r#"{"fact": "escape"}"#)]));
    h.meter.push(text("I could not save that."));
    let out = h.send("remember escape").await.expect("reply");
    assert_eq!(out.reply, "I could not save that.");
    assert_eq!(std::fs::read_to_string(outside.path().join("target")).expect("read"), "untouched");
    let result = h.meter.seen()[1].body["messages"].as_array().expect("messages").last().expect("tool").clone();
    assert!(result["content"].as_str().expect("text").contains("could not be written"), "{result}");
    let system = system_of(&h.meter.seen()[0].body);
    assert!(!system.contains("untouched"), "a linked MEMORY.md is not read either");
}

#[tokio::test]
async fn the_ninth_tool_call_stops_the_run() {
    let h = Harness::start().await;
    for i in 0..9 {
        let args = format!(r#"{{"fact": "fact {i}"}}"#);
        h.meter.push(tool_calls(&[(&format!("call_{i}"), "remember", &args)]));
    }
    h.meter.push(text("never sent"));
    let out = h.send("remember a lot").await.expect("reply");
    assert_eq!(out.reply, "I stopped: this request needed more than 8 tool calls.");
    assert_eq!((out.stopped_by.as_deref(), out.tool_calls, out.paused), (Some("max_tool_calls"), 8, false));
    assert_eq!(h.meter.seen().len(), 9, "the model was asked 9 times");
    assert_eq!(h.meter.left(), 1);
    let memory = h.read("MEMORY.md");
    assert_eq!(memory.lines().count(), 8, "{memory}");
    assert!(!memory.contains("fact 8"));
    let lines = h.session_lines("main");
    assert_eq!(lines.len(), 10, "user, 8 tools, the reply");
    assert_eq!(lines[9]["stopped_by"], "max_tool_calls");
}

#[tokio::test]
async fn the_tool_call_limit_comes_from_the_config() {
    let h = Harness::start_with(|c| c.max_tool_calls = 1).await;
    h.meter.push(tool_calls(&[("a", "remember", r#"{"fact": "one"}"#), ("b", "remember", r#"{"fact": "two"}"#)]));
    let out = h.send("two facts").await.expect("reply");
    assert_eq!((out.reply.as_str(), out.tool_calls), ("I stopped: this request needed more than 1 tool call.", 1));
    assert_eq!(h.read("MEMORY.md"), "- one\n");
}

#[tokio::test]
async fn a_slow_model_is_stopped_at_the_run_time_limit() {
    let h = Harness::start_with(|c| c.max_run = Duration::from_millis(400)).await;
    h.meter.push(tool_calls(&[("a", "write_note", r#"{"text": "started"}"#)]));
    h.meter.push(Canned::Slow(Duration::from_secs(30), fake_meter::text_chunks(&["too late"])));
    let started = std::time::Instant::now();
    let out = h.send("think hard").await.expect("reply");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(out.reply, "I stopped: this request took longer than 400 milliseconds.");
    assert_eq!((out.stopped_by.as_deref(), out.tool_calls), (Some("max_run_time"), 1));
    assert_eq!(h.read(&today_note()), "started\n", "work done before the limit stays");
    assert_eq!(h.session_lines("main").last().expect("reply line")["stopped_by"], "max_run_time");
}

#[tokio::test(start_paused = true)]
async fn the_run_time_limit_holds_on_tokio_time() {
    // With the clock paused, tokio jumps to the deadline as soon as everything waits.
    let h = Harness::start().await;
    h.meter.push(Canned::Slow(Duration::from_secs(3600), fake_meter::text_chunks(&["an hour later"])));
    let out = h.send("slow").await.expect("reply");
    assert_eq!((out.stopped_by.as_deref(), out.reply.as_str()), (Some("max_run_time"), "I stopped: this request took longer than 90 seconds."));
}

#[tokio::test]
async fn a_paused_agent_tells_the_user_why() {
    let h = Harness::start().await;
    let msg = "This agent is paused: the monthly credit cap is reached. It resumes on 2026-12-01.";
    h.meter.push(Canned::Error(402, refusal("cap_reached", msg, Some(1_796_083_200_000))));
    let out = h.send("hello?").await.expect("a 402 from the meter is still an answer");
    assert_eq!(out.reply, msg);
    assert_eq!((out.paused, out.error_code.as_deref(), out.paused_until), (true, Some("cap_reached"), Some(1_796_083_200_000)));

    h.meter.push(Canned::Error(429, refusal("rate_limited", "This agent already handled 60 requests in the last hour.", None)));
    let out = h.send("again").await.expect("reply");
    assert_eq!((out.paused, out.error_code.as_deref()), (false, Some("rate_limited")));
    assert!(out.reply.contains("60 requests"));

    let lines = h.session_lines("main");
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|l| l["error_code"].is_string()), "{lines:?}");
    // A refusal is not something the model said: the next history leaves it out.
    h.meter.push(text("Back."));
    h.send("now?").await.expect("reply");
    assert_eq!(roles_of_last(&h), ["system", "user"]);
}

#[tokio::test]
async fn a_refusal_after_a_tool_call_keeps_the_work_done() {
    let h = Harness::start().await;
    h.meter.push(tool_calls(&[("a", "remember", r#"{"fact": "kept"}"#)]));
    h.meter.push(Canned::Error(402, refusal("daily_cap_reached", "This agent is paused until tomorrow.", None)));
    let out = h.send("remember and answer").await.expect("reply");
    assert_eq!((out.reply.as_str(), out.paused, out.tool_calls), ("This agent is paused until tomorrow.", true, 1));
    assert_eq!(h.read("MEMORY.md"), "- kept\n");
}

#[tokio::test]
async fn a_call_too_large_for_the_cap_left_is_not_a_pause() {
    let h = Harness::start().await;
    let msg = "This call could cost up to 900 micro-credits and this month's cap has 100 of 1000 left.";
    h.meter.push(Canned::Error(402, refusal("cap_headroom", msg, None)));
    let out = h.send("a big question").await.expect("reply");
    assert_eq!((out.reply.as_str(), out.paused, out.error_code.as_deref()), (msg, false, Some("cap_headroom")));
}

#[tokio::test]
async fn a_run_has_one_id_and_runs_differ() {
    let h = Harness::start().await;
    h.meter.push(tool_calls(&[("a", "remember", r#"{"fact": "x"}"#)]));
    h.meter.push(text("one"));
    h.meter.push(text("two"));
    let first = h.send("first").await.expect("reply");
    let second = h.send("second").await.expect("reply");
    let runs: Vec<String> = h.meter.seen().iter().map(|s| s.run.clone().expect("x-clawpen-run")).collect();
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[0], runs[1], "all calls of a run carry its id");
    assert_ne!(runs[1], runs[2], "each message is a new run");
    assert_eq!((first.run_id.as_str(), second.run_id.as_str()), (runs[0].as_str(), runs[2].as_str()));
}

#[tokio::test]
async fn the_run_the_server_opened_is_the_one_sent_to_the_meter() {
    let h = Harness::start().await;
    h.meter.push(tool_calls(&[("a", "remember", r#"{"fact": "x"}"#)]));
    h.meter.push(text("done"));
    let given = "run_0123456789abcdef0123456789ab";
    let out = h.send_msg(MessageIn { text: "remember".into(), session: None, run_id: Some(given.into()), greeting: false }).await.expect("reply");
    assert_eq!(out.run_id, given, "echoed");
    let runs: Vec<Option<String>> = h.meter.seen().iter().map(|s| s.run.clone()).collect();
    assert_eq!(runs, vec![Some(given.to_owned()), Some(given.to_owned())], "every call of the run carries the server's id");
    let lines = h.session_lines("main");
    assert!(lines.iter().all(|l| l["run"] == given), "{lines:?}");
    // An id the meter could not take is refused before any call.
    let bad = h.send_msg(MessageIn { text: "x".into(), session: None, run_id: Some("no spaces allowed".into()), greeting: false }).await;
    assert!(bad.is_err(), "{bad:?}");
    assert_eq!(h.meter.seen().len(), 2);
}

/// The gateway: the run is the client's idempotency key, and its model calls carry the meter's
/// run the server injected in `chat.send` (`clawpenRunId`).
#[tokio::test]
async fn a_gateway_send_runs_in_the_run_the_server_injected() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let h = Harness::start().await;
    h.meter.push(text("hi there"));
    let stream = tokio::net::UnixStream::connect(h.run_dir.join("agent.sock")).await.expect("agent.sock");
    let (mut ws, _) = tokio_tungstenite::client_async("ws://agent/gateway", stream).await.expect("upgrade");
    let Message::Text(challenge) = ws.next().await.expect("open").expect("frame") else { panic!("a text frame first") };
    assert!(challenge.contains("connect.challenge"), "{challenge}");
    let send = |v: Value| Message::Text(v.to_string().into());
    ws.send(send(json!({"type": "req", "id": "1", "method": "connect", "params": {"minProtocol": 3, "maxProtocol": 4, "client": {"id": "test", "version": "1", "platform": "linux", "mode": "test"}}}))).await.expect("connect");
    let given = "run_00000000000aabbccddeeff00112233";
    ws.send(send(json!({"type": "req", "id": "2", "method": "chat.send", "params": {"sessionKey": "main", "message": "hello", "idempotencyKey": "k1", "clawpenRunId": given}}))).await.expect("send");
    let mut started = None;
    let mut finals = None;
    while finals.is_none() {
        let Message::Text(t) = ws.next().await.expect("open").expect("frame") else { continue };
        let v: Value = serde_json::from_str(&t).expect("json");
        if v["id"] == "2" {
            started = Some(v["payload"]["runId"].clone());
            assert_eq!(v["payload"]["runId"], "k1", "the run is the idempotency key");
        }
        if v["event"] == "chat" && v["payload"]["state"] == "final" {
            finals = Some(v["payload"]["runId"].clone());
        }
    }
    assert_eq!((started, finals), (Some(json!("k1")), Some(json!("k1"))));
    assert_eq!(h.meter.seen()[0].run.as_deref(), Some(given), "the model call ran in the injected run");
}

#[tokio::test]
async fn the_request_follows_the_config() {
    let h = Harness::start_with(|c| {
        c.model = "gpt-test".into();
        c.max_tokens = 333;
    })
    .await;
    h.meter.push(text("ok"));
    h.send("hi").await.expect("reply");
    let seen = &h.meter.seen()[0];
    assert_eq!(seen.content_type.as_deref(), Some("application/json"));
    let b = &seen.body;
    assert_eq!((&b["stream"], &b["max_tokens"], &b["model"]), (&json!(true), &json!(333), &json!("gpt-test")));
    let tools: Vec<&str> = b["tools"].as_array().expect("tools").iter().map(|t| t["function"]["name"].as_str().expect("name")).collect();
    assert_eq!(tools, ["remember", "write_note"]);
    assert_eq!(b["tools"][0]["type"], "function");
    assert!(b["tools"][0]["function"]["parameters"]["properties"]["fact"].is_object());
}

#[tokio::test]
async fn a_broken_or_missing_meter_is_a_502() {
    let h = Harness::start().await;
    h.meter.push(Canned::Broken(fake_meter::text_chunks(&["half an ans"])[..2].to_vec()));
    let err = h.send("hi").await.expect_err("broken stream");
    let ClientError::Status { status, body } = err else { panic!("{err:?}") };
    assert_eq!(status.as_u16(), 502);
    assert!(body.contains("the model could not be reached"), "{body}");
    let lines = h.session_lines("main");
    assert_eq!(lines.len(), 1, "the question is logged, no answer: {lines:?}");
    assert_eq!(lines[0]["error_code"], "meter_failed");

    std::fs::remove_file(h.run_dir.join("control.sock")).expect("rm control.sock");
    let err = h.send("anyone?").await.expect_err("no meter");
    let ClientError::Status { status, body } = err else { panic!("{err:?}") };
    assert_eq!(status.as_u16(), 502);
    assert!(body.contains("socket does not answer"), "{body}");
}

#[tokio::test]
async fn health_and_input_checks_stay() {
    let h = Harness::start().await;
    let health = client::health(&client::AgentAddr::unverified(h.run_dir.clone()), Duration::from_secs(5)).await.expect("health");
    assert!(health.ok && health.agent_id == "agt_test" && health.tenant_id == "ten_test");
    let err = h.send_in("hi", Some("../etc")).await.expect_err("bad session");
    assert!(matches!(err, ClientError::Status { status, .. } if status.as_u16() == 400));
    assert!(h.meter.seen().is_empty(), "nothing reached the model");
}

/// A warm-pool sandbox's agent starts without an identity, answers `/health` but no message, and
/// takes the identity in its run dir's identity file when claimed; it never changes it again.
#[tokio::test]
async fn pool_mode_agent_is_claimed_once() {
    let h = Harness::start_with(|c| {
        c.agent_id.clear();
        c.tenant_id.clear();
    })
    .await;
    let sock = client::AgentAddr::unverified(h.run_dir.clone());
    let health = client::wait_healthy(&sock, Duration::from_secs(5)).await.expect("health in pool mode");
    assert_eq!((health.agent_id.as_str(), health.tenant_id.as_str()), ("", ""));
    assert!(matches!(h.send("hi").await, Err(ClientError::Status { status, .. }) if status == 409), "no message before a claim");
    assert!(matches!(client::claim(&sock, Duration::from_secs(5)).await, Err(ClientError::Status { status, .. }) if status == 400), "no claim without the file");
    let (agent, tenant) = (clawpen_core::ids::AgentId::new().to_string(), clawpen_core::ids::TenantId::new().to_string());
    let write_identity = |a: &str, t: &str| {
        std::fs::write(h.run_dir.join(clawpen_core::spec::IDENTITY_FILE), serde_json::json!({"agent_id": a, "tenant_id": t}).to_string()).unwrap()
    };
    write_identity(&agent, &tenant);
    let claimed = client::claim(&sock, Duration::from_secs(5)).await.expect("claim");
    assert_eq!((claimed.agent_id.as_str(), claimed.tenant_id.as_str()), (agent.as_str(), tenant.as_str()));
    let out = h.send("hello").await.expect("a claimed agent answers");
    assert_eq!((out.agent_id.as_str(), out.tenant_id.as_str()), (agent.as_str(), tenant.as_str()));
    // The same claim again is a no-op; another identity is refused.
    client::claim(&sock, Duration::from_secs(5)).await.expect("claim again");
    write_identity(&clawpen_core::ids::AgentId::new().to_string(), &tenant);
    assert!(matches!(client::claim(&sock, Duration::from_secs(5)).await, Err(ClientError::Status { status, .. }) if status == 409));
    assert_eq!(client::health(&sock, Duration::from_secs(5)).await.unwrap().agent_id, agent);
}
