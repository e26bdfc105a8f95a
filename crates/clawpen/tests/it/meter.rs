//! The meter end to end: a real server, a stand-in upstream speaking OpenAI and Anthropic, calls
//! made on an agent's control socket (as the agent makes them), and the usage API.
//!
//! A model call is accepted only inside a run the server opened (a user's message). These tests
//! open runs with `POST /api/v1/agents/{id}/runs` (admin token; `{"run_id"}`), the server's
//! wrapper around `Meter::open_run`: see [`open_run`]. The meter's own tests
//! (`crates/clawpen-meter/tests/contract.rs`) prove the contract in process.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::harness::{expected_cost, pytest, uds_post, TestServer};

pub async fn world(plan: &str, meter_extra: &str) -> TestServer {
    TestServer::start_with(plan, meter_extra, &[]).await
}

/// Opens a run for `agent` as the server does for a user's message: `(status, body)`.
async fn try_open_run(w: &TestServer, agent: &Value) -> (u16, Value) {
    let id = agent["id"].as_str().unwrap();
    w.post(&format!("/api/v1/agents/{id}/runs"), &w.admin.clone(), json!({})).await
}

/// A run for `agent`'s model calls (see the module docs).
async fn open_run(w: &TestServer, agent: &Value) -> String {
    let (st, v) = try_open_run(w, agent).await;
    assert_eq!(st, 201, "the server opens runs for tests with POST /api/v1/agents/{{id}}/runs (admin): {v}");
    v["run_id"].as_str().expect("run_id").to_owned()
}

/// The `x-clawpen-run` header of a run.
fn in_run(run: &str) -> [(&'static str, &str); 1] {
    [("x-clawpen-run", run)]
}

fn chat(model: &str, text: &str, stream: bool) -> Value {
    let mut b = json!({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 50});
    if stream {
        b["stream"] = json!(true);
    }
    b
}

async fn usage(s: &TestServer, key: &str) -> Value {
    let (st, u) = s.get("/api/v1/usage", key).await;
    assert_eq!(st, 200, "{u}");
    u
}

async fn settled(s: &TestServer, key: &str) -> Value {
    s.settled_usage(key).await
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_are_charged_exactly_from_provider_usage() {
    let w = world("", "").await;
    let (t, key) = w.tenant("payer").await;
    let a = w.agent(&key, "a", false).await;
    let sock = w.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    let start = usage(&w, &key).await["balance"].as_i64().unwrap();
    let run = open_run(&w, &a).await;
    let run = &in_run(&run);

    // OpenAI, plain and streamed (the caller did not ask for usage: the meter adds and strips it).
    let (st, body) = uds_post(&sock, "/v1/chat/completions", &chat("gpt-test", "hello there meter", false), run).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["choices"][0]["message"]["content"].as_str().unwrap().starts_with("stand-in reply"));
    let (st, body) = uds_post(&sock, "/v1/chat/completions", &chat("gpt-test", "stream this please", true), run).await;
    assert_eq!(st, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("data: [DONE]"));
    assert!(!text.contains("\"usage\""), "usage the caller did not ask for is stripped: {text}");
    // Cached input, and Anthropic plain and streamed.
    let (st, _) = uds_post(&sock, "/v1/chat/completions", &chat("gpt-cached", "a long cached prompt with many words in it ok", false), run).await;
    assert_eq!(st, 200);
    let ant = [run[0], ("anthropic-version", "2023-06-01")];
    let (st, body) = uds_post(&sock, "/v1/messages", &chat("claude-test", "hi claude", false), &ant).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let (st, body) = uds_post(&sock, "/v1/messages", &chat("claude-cached", "stream with cache", true), &ant).await;
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&body).contains("message_stop"));
    // A model that is not offered is refused and costs nothing.
    let (st, _) = uds_post(&sock, "/v1/chat/completions", &chat("gpt-9000", "x", false), run).await;
    assert_eq!(st, 400);

    let u = settled(&w, &key).await;
    let calls = u["recent_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 6, "{u:#}");
    let mut total = 0;
    for c in calls {
        if c["outcome"] == "ok" {
            assert!(c["cost"].as_i64().unwrap() > 0, "{c}");
            assert_eq!(c["cost"].as_i64().unwrap(), expected_cost(c), "the cost follows the provider's usage: {c}");
        } else {
            assert!(c["outcome"].as_str().unwrap().starts_with("refused"), "{c}");
            assert_eq!(c["cost"], 0);
        }
        total += c["cost"].as_i64().unwrap();
    }
    assert!(calls.iter().any(|c| c["cache_read_tokens"].as_i64() > Some(0)), "cache reads are priced");
    assert!(calls.iter().any(|c| c["cache_write_tokens"].as_i64() > Some(0)), "cache writes are priced");
    assert_eq!(u["month"]["spent"].as_i64().unwrap(), total);
    assert_eq!(u["balance"].as_i64().unwrap() + total, start, "balance + settled = start");
    assert_eq!(u["agents"][0]["agent_id"], a["id"]);

    // The upstream only ever saw the platform's keys.
    let reqs = w.standin.requests();
    assert_eq!(reqs.len(), 5);
    assert!(reqs.iter().all(|r| r.authorized));
    let _ = t;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_monthly_cap_refuses_what_it_cannot_fit_and_pauses_no_one_below_it() {
    // Each call costs about 16 micro-credits and holds about 300 (its worst case); the cap lets
    // calls through until less than a hold is left, then refuses each call, pausing no one.
    let w = world("monthly_cap = 1000\ndaily_cap = 100000\ninitial_credits = 100000\nmax_calls_per_run = 100", "").await;
    let (ta, key_a) = w.tenant("spender").await;
    let (_, key_b) = w.tenant("saver").await;
    let a = w.agent(&key_a, "a", false).await;
    let b = w.agent(&key_b, "b", false).await;
    let sock_a = w.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    let sock_b = w.run_dir(b["id"].as_str().unwrap()).join("control.sock");
    let run_a = open_run(&w, &a).await;
    let mut refused = None;
    let mut ok = 0;
    for i in 0..100 {
        let (st, body) = uds_post(&sock_a, "/v1/chat/completions", &chat("gpt-test", &format!("call {i}"), false), &in_run(&run_a)).await;
        if st != 200 {
            refused = Some((st, serde_json::from_slice::<Value>(&body).unwrap()));
            break;
        }
        ok += 1;
    }
    let (st, e) = refused.expect("the cap refuses a call");
    assert_eq!(st, 402, "{e}");
    assert_eq!(e["error"]["code"], "cap_headroom", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("left"), "{e}");
    assert!(ok > 20, "the cap was used, not given up at a hold that did not fit: {ok} calls");
    // Nobody is paused: the spend is under the cap.
    let u = settled(&w, &key_a).await;
    let spent = u["month"]["spent"].as_i64().unwrap();
    assert!(spent <= 1000, "{u}");
    let (_, view) = w.get(&format!("/api/v1/agents/{}", a["id"].as_str().unwrap()), &key_a).await;
    assert!(view["paused_until"].is_null(), "spent {spent} of 1000, not paused: {view}");
    // The other tenant is not touched.
    let run_b = open_run(&w, &b).await;
    let (st, _) = uds_post(&sock_b, "/v1/chat/completions", &chat("gpt-test", "I am fine", false), &in_run(&run_b)).await;
    assert_eq!(st, 200);
    // The operator moves the tenant to a bigger plan: calls go through again.
    let (st, v) = w.put(&format!("/api/v1/tenants/{}/plan", ta["id"].as_str().unwrap()), &w.admin, json!({"plan": "standard"})).await;
    assert_eq!(st, 200, "{v}");
    let run_a = open_run(&w, &a).await;
    let (st, _) = uds_post(&sock_a, "/v1/chat/completions", &chat("gpt-test", "back again", false), &in_run(&run_a)).await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aborted_stream_is_closed_upstream_at_once_and_charged_what_it_generated() {
    let w = world("", "").await;
    let (_, key) = w.tenant("quitter").await;
    let a = w.agent(&key, "a", false).await;
    let sock = w.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    let run = open_run(&w, &a).await;
    // A slow stream: read its first events, then hang up.
    let left = {
        use http_body_util::BodyExt;
        let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        let conn = tokio::spawn(conn);
        let body = chat("gpt-slow", "one two three four five six seven eight nine ten eleven twelve", true);
        let req = hyper::Request::post("/v1/chat/completions").header("host", "m").header("content-type", "application/json").header("x-clawpen-run", &run);
        let res = sender.send_request(req.body(http_body_util::Full::new(bytes::Bytes::from(body.to_string()))).unwrap()).await.unwrap();
        assert_eq!(res.status(), 200);
        let mut body = res.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        drop(body);
        drop(sender);
        conn.abort();
        Instant::now()
    };
    // The provider sees the meter close the stream within a second, before the answer's end.
    let deadline = left + Duration::from_secs(3);
    let seen = loop {
        let r = w.standin.requests().last().unwrap().clone();
        if r.hung_up_at.is_some() || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let at = seen.hung_up_at.unwrap_or_else(|| panic!("the meter kept reading the upstream: {seen:?}"));
    assert!(at.duration_since(left) < Duration::from_secs(1), "closed {:?} after the hang-up", at.duration_since(left));
    assert!(!seen.completed, "{seen:?}");
    let u = settled(&w, &key).await;
    let c = &u["recent_calls"][0];
    assert_eq!(c["outcome"], "client_aborted", "{u:#}");
    // Charged at least what the provider bills: the input (12 words + 4) and what it generated.
    let billed = (12 + 4) + 2 * seen.output_generated as i64;
    assert!(c["cost"].as_i64().unwrap() >= billed, "charged less than generated ({billed}): {c}");
    assert!(c["output_tokens"].as_i64().unwrap() <= 50, "never past max tokens: {c}");
    assert_eq!(c["cost"].as_i64().unwrap(), expected_cost(c), "{c}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_overspend_with_200_concurrent_calls() {
    // A non-streamed call of about 20 words holds at most a few hundred micro-credits; the cap
    // admits roughly 50 of them at once.
    let probe = world("", "").await;
    let (_, key) = probe.tenant("probe").await;
    let a = probe.agent(&key, "a", false).await;
    let sock = probe.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    let run = open_run(&probe, &a).await;
    let (st, _) = uds_post(&sock, "/v1/chat/completions", &chat("gpt-test", "how much is one call", false), &in_run(&run)).await;
    assert_eq!(st, 200);
    let one = settled(&probe, &key).await["recent_calls"][0]["cost"].as_i64().unwrap();
    drop(probe);

    let cap = one * 50;
    let w = world(&format!("monthly_cap = {cap}\ndaily_cap = 0\ninitial_credits = 1000000000\nruns_per_hour = 100000\nmax_calls_per_run = 1000"), "").await;
    let (_, key) = w.tenant("crowd").await;
    let a = w.agent(&key, "a", false).await;
    let sock = w.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    let start = usage(&w, &key).await["balance"].as_i64().unwrap();
    let run = open_run(&w, &a).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261122);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let words: Vec<String> = (0..rng.gen_range(1..8)).map(|j| format!("w{j}")).collect();
        let mut body = chat("gpt-test", &format!("how much is one call {i} {}", words.join(" ")), rng.gen_bool(0.3));
        // A tight max tokens keeps each hold near the call's cost, so the cap admits about 50.
        body["max_tokens"] = json!(12);
        let (sock, run) = (sock.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            let (st, body) = uds_post(&sock, "/v1/chat/completions", &body, &in_run(&run)).await;
            let e = serde_json::from_slice::<Value>(&body).unwrap_or_default();
            (st, e["error"]["code"].as_str().map(str::to_owned), e["error"]["message"].as_str().unwrap_or_default().to_owned())
        }));
    }
    let (mut ok, mut max_held) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (200, _, _) => ok += 1,
            // Refused for that call alone, never a pause: "This call could cost up to N …".
            (402 | 429, Some(code), message) if code == "cap_headroom" => {
                let held = message.split("up to ").nth(1).and_then(|m| m.split(' ').next()).and_then(|n| n.parse::<i64>().ok());
                max_held = max_held.max(held.unwrap_or_else(|| panic!("{message}")));
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let u = settled(&w, &key).await;
    let spent = u["month"]["spent"].as_i64().unwrap();
    assert!(spent <= cap, "settled {spent} > cap {cap}");
    // Holds are larger than costs, so fewer than 50 fit at once; calls wait for room instead of
    // pausing the tenant, so the cap is used until less than a hold is left.
    assert!((10..200).contains(&ok), "the cap admitted {ok} of 200");
    assert!(max_held == 0 || cap - spent < max_held, "spent {spent} of {cap}, holds of {max_held}: the cap was given up early");
    let (_, view) = w.get(&format!("/api/v1/agents/{}", a["id"].as_str().unwrap()), &key).await;
    assert!(spent >= cap || view["paused_until"].is_null(), "paused below the cap: {view}");
    eprintln!("the cap of {cap} admitted {ok} of 200 concurrent calls; settled {spent}");
    assert_eq!(u["balance"].as_i64().unwrap() + spent, start, "balance + settled = start");
    assert_eq!(u["reserved"], 0);
    let calls = u["recent_calls"].as_array().unwrap();
    for c in calls.iter().filter(|c| c["outcome"].as_str().unwrap().starts_with("refused")) {
        assert_eq!(c["cost"], 0, "a refused call costs nothing: {c}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn holds_in_flight_at_a_crash_are_voided_after_restart() {
    let mut w = world("", "hold_ttl_secs = 2\nsweep_secs = 1").await;
    let (_, key) = w.tenant("crashy").await;
    let a = w.agent(&key, "a", false).await;
    let sock = w.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    let start = usage(&w, &key).await["balance"].as_i64().unwrap();
    let run = open_run(&w, &a).await;
    let mut inflight = Vec::new();
    for i in 0..8 {
        let (sock, run) = (sock.clone(), run.clone());
        let body = chat("gpt-slow", &format!("a slow answer number {i} with some words"), true);
        inflight.push(tokio::spawn(async move { uds_post(&sock, "/v1/chat/completions", &body, &in_run(&run)).await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.kill();
    for h in inflight {
        let _ = h.await;
    }
    w.spawn().await;
    let u = settled(&w, &key).await;
    let spent = u["month"]["spent"].as_i64().unwrap();
    assert_eq!(u["balance"].as_i64().unwrap() + spent, start, "balance + settled = start: {u:#}");
    let expired = u["recent_calls"].as_array().unwrap().iter().filter(|c| c["outcome"] == "expired").count();
    assert!(expired >= 1, "the sweeper voided the holds the crash left: {u:#}");
    assert!(w.log().contains("voided an expired hold"));
}


/// The real `openai` and `anthropic` Python SDKs: through the meter on an agent's control
/// socket, and against the stand-in directly (its wire format is what the SDKs expect).
#[tokio::test(flavor = "multi_thread")]
async fn the_real_python_sdks_work_through_the_meter() {
    let w = world("", "").await;
    let (_, key) = w.tenant("pythonic").await;
    let a = w.agent(&key, "a", false).await;
    let sock = w.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    let sock = sock.to_str().unwrap();
    // The SDKs' calls go in one run, as an agent's calls for one message do.
    let run = open_run(&w, &a).await;
    pytest("test_meter_sdks.py", &[("CLAWPEN_CONTROL_SOCK", sock), ("CLAWPEN_URL", &w.base), ("CLAWPEN_TENANT_KEY", &key), ("CLAWPEN_RUN_ID", &run)]).await;
    // What reached the upstream through the meter: the platform's keys only (the SDKs sent a
    // made-up one), and never more tokens than the plan allows (1024 on the free plan).
    let reqs = w.standin.requests();
    assert!(reqs.len() >= 8, "{reqs:?}");
    assert!(reqs.iter().all(|r| r.authorized), "{reqs:?}");
    let clamped = reqs.iter().find(|r| r.body.to_string().contains("clamp me")).expect("the clamp call reached upstream");
    assert_eq!(clamped.max_tokens, Some(1024), "max tokens clamped by the plan: {clamped:?}");
    // What the SDKs send is within the meter's allow-list (nothing was refused but the unknown
    // model), and what reached the provider names no URL.
    assert!(reqs.iter().all(|r| !r.body.to_string().contains("://")), "{reqs:?}");

    pytest("test_standin_sdks.py", &[("CLAWPEN_STANDIN_URL", &w.standin.base_url())]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gemini_deepseek_and_grok_are_charged_exactly_through_the_real_openai_sdk() {
    // A plan that offers all but one model: that one is refused by name.
    let w = world("models = [\"gpt-test\", \"gemini-lite\", \"gemini-think\", \"deepseek-chat\", \"deepseek-reasoner\", \"grok-fast\", \"grok-mini\"]", "").await;
    let (_, key) = w.tenant("polyglot").await;
    let a = w.agent(&key, "a", false).await;
    let sock = w.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    let run = open_run(&w, &a).await;
    pytest("test_provider_sdks.py", &[("CLAWPEN_CONTROL_SOCK", sock.to_str().unwrap()), ("CLAWPEN_URL", &w.base), ("CLAWPEN_TENANT_KEY", &key), ("CLAWPEN_RUN_ID", &run)]).await;
    // Each provider's calls reached its own endpoint, with the platform's key, streamed with
    // usage asked for.
    let reqs = w.standin.requests();
    for (dialect, model) in [(clawpen_standin::Dialect::Gemini, "gemini-think-cached"), (clawpen_standin::Dialect::Deepseek, "deepseek-reasoner-cached"), (clawpen_standin::Dialect::Xai, "grok-reason-cached")] {
        let mine: Vec<_> = reqs.iter().filter(|r| r.path == dialect.path()).collect();
        assert!(mine.iter().any(|r| r.model == model && r.stream && r.body["stream_options"]["include_usage"] == true), "{dialect:?}: {mine:?}");
        assert!(mine.iter().all(|r| r.authorized && r.key.as_deref() != Some("sk-made-up-inside-the-sandbox")), "{dialect:?}: {mine:?}");
    }
    // Outside the plan's list: refused before any hold, naming the plan's models.
    let (st, body) = uds_post(&sock, "/v1/chat/completions", &chat("gpt-slow", "not mine", false), &in_run(&run)).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["error"]["code"], "model_not_in_plan", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("grok-mini"), "{v}");
    let (st, body) = uds_post(&sock, "/v1/chat/completions", &chat("gpt-cached", "not mine either", false), &in_run(&run)).await;
    assert_eq!(st, 403, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_upstream_is_reached_only_with_its_ca_trusted() {
    use clawpen_standin::{tls::TlsFront, Standin, StandinConfig};
    // A provider behind TLS with its own CA (like a private gateway).
    let upstream = Standin::start(StandinConfig::for_testing()).await.unwrap();
    let front = TlsFront::start(upstream.addr()).await.unwrap();
    let ca_dir = tempfile::Builder::new().prefix("cpt-ca-").tempdir_in("/tmp").unwrap();
    let ca = ca_dir.path().join("ca.pem");
    std::fs::write(&ca, &front.ca_pem).unwrap();
    let secure = format!(
        "[meter.upstreams.secure]\nprovider = \"openai\"\nbase_url = \"{}/v1\"\napi_key_env = \"{}\"\n\n\
         [meter.models.gpt-secure]\nupstream = \"secure\"\nupstream_model = \"gpt-test\"\ninput_per_mtok = 1000000\noutput_per_mtok = 2000000\n",
        front.base_url(),
        crate::harness::OPENAI_KEY_ENV
    );
    let trusted = TestServer::start_full("", &format!("ca_file = \"{}\"", ca.display()), &secure, &[]).await;
    let (_, key) = trusted.tenant("tls").await;
    let a = trusted.agent(&key, "a", false).await;
    let sock = trusted.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    let run = open_run(&trusted, &a).await;
    let (st, body) = uds_post(&sock, "/v1/chat/completions", &chat("gpt-secure", "over tls please", false), &in_run(&run)).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "stand-in reply to: over tls please");
    assert_eq!(upstream.requests().len(), 1, "the call crossed TLS to the provider");
    let u = trusted.settled_usage(&key).await;
    assert!(u["month"]["spent"].as_i64().unwrap() > 0, "and was charged: {u}");

    // The same server without the CA refuses the unknown certificate: nothing reaches the
    // provider, nothing is charged.
    let untrusted = TestServer::start_full("", "", &secure, &[]).await;
    let (_, key) = untrusted.tenant("tls").await;
    let a = untrusted.agent(&key, "a", false).await;
    let sock = untrusted.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    let run = open_run(&untrusted, &a).await;
    let (st, body) = uds_post(&sock, "/v1/chat/completions", &chat("gpt-secure", "over tls please", false), &in_run(&run)).await;
    assert_eq!(st, 502, "{}", String::from_utf8_lossy(&body));
    assert_eq!(upstream.requests().len(), 1);
    let u = untrusted.settled_usage(&key).await;
    assert_eq!(u["month"]["spent"], 0, "{u}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_call_outside_a_run_the_server_opened_is_refused() {
    let w = world("", "").await;
    let (_, key) = w.tenant("uninvited").await;
    let a = w.agent(&key, "a", false).await;
    let sock = w.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    // No run, or one the agent picked itself (reusing one value used to mean unlimited calls).
    for headers in [&[][..], &[("x-clawpen-run", "run-1")][..], &[("x-clawpen-run", "run_0000000000000000000000000000")][..]] {
        let (st, body) = uds_post(&sock, "/v1/chat/completions", &chat("gpt-test", "let me in", false), headers).await;
        let e: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((st, e["error"]["code"].as_str()), (403, Some("no_run")), "{headers:?}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains("a run the server started: a user's message"), "{e}");
    }
    let (st, _) = uds_post(&sock, "/v1/messages", &chat("claude-test", "let me in", false), &[("anthropic-version", "2023-06-01")]).await;
    assert_eq!(st, 403);
    assert!(w.standin.requests().is_empty(), "nothing reached the provider");
    // Refused calls are counted, not each written: one row for the four, with the meter's next
    // flush.
    let deadline = Instant::now() + Duration::from_secs(5);
    while usage(&w, &key).await["recent_calls"].as_array().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let u = usage(&w, &key).await;
    let calls = u["recent_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{u:#}");
    assert_eq!((calls[0]["outcome"].as_str(), calls[0]["cost"].as_i64()), (Some("refused:no_run"), Some(0)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_admits_only_its_own_agents_calls() {
    let w = world("", "").await;
    let (_, key) = w.tenant("sharing").await;
    let a = w.agent(&key, "a", false).await;
    let b = w.agent(&key, "b", false).await;
    let sock_a = w.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    let sock_b = w.run_dir(b["id"].as_str().unwrap()).join("control.sock");
    let run = open_run(&w, &a).await;
    let (st, _) = uds_post(&sock_b, "/v1/chat/completions", &chat("gpt-test", "borrowed", false), &in_run(&run)).await;
    assert_eq!(st, 403, "another agent's run");
    let (st, _) = uds_post(&sock_a, "/v1/chat/completions", &chat("gpt-test", "mine", false), &in_run(&run)).await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_per_hour_and_calls_per_run_are_capped_and_remembered_across_a_restart() {
    let mut w = world("runs_per_hour = 3\nmax_calls_per_run = 2", "").await;
    let (_, key) = w.tenant("busy").await;
    let a = w.agent(&key, "a", false).await;
    let sock = w.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    let call = |run: String| {
        let sock = sock.clone();
        async move { uds_post(&sock, "/v1/chat/completions", &chat("gpt-test", "one step of a run", false), &in_run(&run)).await }
    };
    let runs = [open_run(&w, &a).await, open_run(&w, &a).await, open_run(&w, &a).await];
    for run in [&runs[0], &runs[1], &runs[0]] {
        assert_eq!(call(run.clone()).await.0, 200, "within the plan's 3 runs per hour and 2 calls per run");
    }
    let (st, body) = call(runs[0].clone()).await;
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((st, e["error"]["code"].as_str()), (429, Some("run_exhausted")), "a 3rd call in a run: {e}");
    let (st, e) = try_open_run(&w, &a).await;
    assert_eq!(st, 429, "a 4th run in the hour is refused: {e}");
    assert_eq!(e["error"]["code"], "rate_limited", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("3 requests in the last hour"), "{e}");

    // The count outlives the server: a graceful restart, then a crash after the flusher ran.
    assert!(w.terminate(), "the server stops on SIGTERM");
    w.spawn().await;
    assert_eq!(try_open_run(&w, &a).await.0, 429, "still 3 runs this hour after a restart");
    assert_eq!(call(runs[1].clone()).await.0, 200, "an open run goes on after a restart");
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.kill();
    w.spawn().await;
    assert_eq!(try_open_run(&w, &a).await.0, 429, "still 3 runs this hour after a crash");
    let u = settled(&w, &key).await;
    let calls = u["recent_calls"].as_array().unwrap();
    assert_eq!(calls.iter().filter(|c| c["outcome"] == "ok").count(), 4, "{u:#}");
    assert!(calls.iter().filter(|c| c["outcome"] != "ok").all(|c| c["cost"] == 0), "refused calls cost nothing: {u:#}");
}
