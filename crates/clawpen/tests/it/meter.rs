//! The meter end to end: a real server, a stand-in upstream speaking OpenAI and Anthropic, calls
//! made on an agent's control socket (as the agent makes them), and the usage API.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::harness::{expected_cost, uds_post, TestServer};

pub async fn world(plan: &str, meter_extra: &str) -> TestServer {
    TestServer::start_with(plan, meter_extra, &[]).await
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

    // OpenAI, plain and streamed (the caller did not ask for usage: the meter adds and strips it).
    let (st, body) = uds_post(&sock, "/v1/chat/completions", &chat("gpt-test", "hello there meter", false), &[]).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["choices"][0]["message"]["content"].as_str().unwrap().starts_with("stand-in reply"));
    let (st, body) = uds_post(&sock, "/v1/chat/completions", &chat("gpt-test", "stream this please", true), &[]).await;
    assert_eq!(st, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("data: [DONE]"));
    assert!(!text.contains("\"usage\""), "usage the caller did not ask for is stripped: {text}");
    // Cached input, and Anthropic plain and streamed.
    let (st, _) = uds_post(&sock, "/v1/chat/completions", &chat("gpt-cached", "a long cached prompt with many words in it ok", false), &[]).await;
    assert_eq!(st, 200);
    let ant = [("anthropic-version", "2023-06-01")];
    let (st, body) = uds_post(&sock, "/v1/messages", &chat("claude-test", "hi claude", false), &ant).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let (st, body) = uds_post(&sock, "/v1/messages", &chat("claude-cached", "stream with cache", true), &ant).await;
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&body).contains("message_stop"));
    // A model that is not offered is refused and costs nothing.
    let (st, _) = uds_post(&sock, "/v1/chat/completions", &chat("gpt-9000", "x", false), &[]).await;
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
async fn the_monthly_cap_pauses_the_tenant_and_spares_the_other() {
    // Each call costs about 16 micro-credits and holds about 110; the cap lets a dozen through.
    let w = world("monthly_cap = 300\ndaily_cap = 100000\ninitial_credits = 100000", "").await;
    let (ta, key_a) = w.tenant("spender").await;
    let (_, key_b) = w.tenant("saver").await;
    let a = w.agent(&key_a, "a", false).await;
    let b = w.agent(&key_b, "b", false).await;
    let sock_a = w.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    let sock_b = w.run_dir(b["id"].as_str().unwrap()).join("control.sock");
    let mut refused = None;
    for i in 0..60 {
        let (st, body) = uds_post(&sock_a, "/v1/chat/completions", &chat("gpt-test", &format!("call {i}"), false), &[]).await;
        if st != 200 {
            refused = Some((st, serde_json::from_slice::<Value>(&body).unwrap()));
            break;
        }
    }
    let (st, e) = refused.expect("the cap refuses a call");
    assert_eq!(st, 402, "{e}");
    assert_eq!(e["error"]["code"], "cap_reached");
    assert!(e["error"]["message"].as_str().unwrap().contains("resumes on"), "{e}");
    let until = e["error"]["paused_until"].as_i64().unwrap();
    assert!(until > clawpen_store::now_ms());
    // Further calls are refused as paused, and the API says why and until when.
    let (st, body) = uds_post(&sock_a, "/v1/chat/completions", &chat("gpt-test", "again", false), &[]).await;
    assert_eq!(st, 402);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"], "agent_paused");
    let (_, view) = w.get(&format!("/api/v1/agents/{}", a["id"].as_str().unwrap()), &key_a).await;
    assert_eq!(view["paused_until"].as_i64(), Some(until), "{view}");
    assert!(view["paused_reason"].as_str().unwrap().contains("monthly"), "{view}");
    let u = settled(&w, &key_a).await;
    assert!(u["month"]["spent"].as_i64().unwrap() <= 300, "{u}");
    // The other tenant is not touched.
    let (st, _) = uds_post(&sock_b, "/v1/chat/completions", &chat("gpt-test", "I am fine", false), &[]).await;
    assert_eq!(st, 200);
    let (_, view_b) = w.get(&format!("/api/v1/agents/{}", b["id"].as_str().unwrap()), &key_b).await;
    assert!(view_b["paused_until"].is_null());
    // The operator moves the tenant to a bigger plan: the pause is lifted and calls go through.
    let (st, v) = w.put(&format!("/api/v1/tenants/{}/plan", ta["id"].as_str().unwrap()), &w.admin, json!({"plan": "standard"})).await;
    assert_eq!(st, 200, "{v}");
    let (_, view) = w.get(&format!("/api/v1/agents/{}", a["id"].as_str().unwrap()), &key_a).await;
    assert!(view["paused_until"].is_null(), "{view}");
    let (st, _) = uds_post(&sock_a, "/v1/chat/completions", &chat("gpt-test", "back again", false), &[]).await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aborted_stream_is_charged_for_what_it_generated() {
    let w = world("", "").await;
    let (_, key) = w.tenant("quitter").await;
    let a = w.agent(&key, "a", false).await;
    let sock = w.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    // A slow stream: read its first events, then hang up.
    {
        use http_body_util::BodyExt;
        let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        let conn = tokio::spawn(conn);
        let body = chat("gpt-slow", "one two three four five six seven eight nine ten eleven twelve", true);
        let req = hyper::Request::post("/v1/chat/completions").header("host", "m").header("content-type", "application/json");
        let res = sender.send_request(req.body(http_body_util::Full::new(bytes::Bytes::from(body.to_string()))).unwrap()).await.unwrap();
        assert_eq!(res.status(), 200);
        let mut body = res.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        drop(body);
        drop(sender);
        conn.abort();
    }
    let u = settled(&w, &key).await;
    let c = &u["recent_calls"][0];
    assert_eq!(c["outcome"], "client_aborted", "{u:#}");
    assert!(c["output_tokens"].as_i64().unwrap() > 1, "the whole generation is known: {c}");
    assert!(c["cost"].as_i64().unwrap() > 0);
    assert_eq!(c["cost"].as_i64().unwrap(), expected_cost(c), "{c}");
    let reqs = w.standin.requests();
    assert!(reqs.last().unwrap().completed, "the meter read the upstream to its end");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_overspend_with_200_concurrent_calls() {
    // A non-streamed call of about 20 words holds at most a few hundred micro-credits; the cap
    // admits roughly 50 of them at once.
    let probe = world("", "").await;
    let (_, key) = probe.tenant("probe").await;
    let a = probe.agent(&key, "a", false).await;
    let sock = probe.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    let (st, _) = uds_post(&sock, "/v1/chat/completions", &chat("gpt-test", "how much is one call", false), &[]).await;
    assert_eq!(st, 200);
    let one = settled(&probe, &key).await["recent_calls"][0]["cost"].as_i64().unwrap();
    drop(probe);

    let cap = one * 50;
    let w = world(&format!("monthly_cap = {cap}\ndaily_cap = 0\ninitial_credits = 1000000000\nruns_per_hour = 100000"), "").await;
    let (_, key) = w.tenant("crowd").await;
    let a = w.agent(&key, "a", false).await;
    let sock = w.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    let start = usage(&w, &key).await["balance"].as_i64().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261122);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let words: Vec<String> = (0..rng.gen_range(1..8)).map(|j| format!("w{j}")).collect();
        let mut body = chat("gpt-test", &format!("how much is one call {i} {}", words.join(" ")), rng.gen_bool(0.3));
        // A tight max tokens keeps each hold near the call's cost, so the cap admits about 50.
        body["max_tokens"] = json!(12);
        let sock = sock.clone();
        tasks.push(tokio::spawn(async move { uds_post(&sock, "/v1/chat/completions", &body, &[]).await.0 }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            402 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    let u = settled(&w, &key).await;
    let spent = u["month"]["spent"].as_i64().unwrap();
    assert!(spent <= cap, "settled {spent} > cap {cap}");
    // Holds are larger than costs, so fewer than 50 fit at once; the point is that some do.
    assert!((10..200).contains(&ok), "the cap admitted {ok} of 200");
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
    let mut inflight = Vec::new();
    for i in 0..8 {
        let sock = sock.clone();
        let body = chat("gpt-slow", &format!("a slow answer number {i} with some words"), true);
        inflight.push(tokio::spawn(async move { uds_post(&sock, "/v1/chat/completions", &body, &[]).await }));
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

/// Runs one file of `tests/python` with pytest: its report.
async fn pytest(file: &str, env: &[(&str, &str)]) -> String {
    let path = format!("{}/../../tests/python/{file}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", &path])
        .envs(env.iter().copied())
        .output()
        .await
        .expect("python3 must be installed (with `pip install -r tests/python/requirements.txt`)");
    let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{file} failed (it needs `pip install -r tests/python/requirements.txt`):\n{report}");
    assert!(report.contains(" passed") && !report.contains("skipped"), "{report}");
    report
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
    pytest("test_meter_sdks.py", &[("CLAWPEN_CONTROL_SOCK", sock), ("CLAWPEN_URL", &w.base), ("CLAWPEN_TENANT_KEY", &key)]).await;
    // What reached the upstream through the meter: the platform's keys only (the SDKs sent a
    // made-up one), and never more tokens than the plan allows (1024 on the free plan).
    let reqs = w.standin.requests();
    assert!(reqs.len() >= 8, "{reqs:?}");
    assert!(reqs.iter().all(|r| r.authorized), "{reqs:?}");
    let clamped = reqs.iter().find(|r| r.body.to_string().contains("clamp me")).expect("the clamp call reached upstream");
    assert_eq!(clamped.max_tokens, Some(1024), "max tokens clamped by the plan: {clamped:?}");

    pytest("test_standin_sdks.py", &[("CLAWPEN_STANDIN_URL", &w.standin.base_url())]).await;
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
    let (st, body) = uds_post(&sock, "/v1/chat/completions", &chat("gpt-secure", "over tls please", false), &[]).await;
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
    let (st, body) = uds_post(&sock, "/v1/chat/completions", &chat("gpt-secure", "over tls please", false), &[]).await;
    assert_eq!(st, 502, "{}", String::from_utf8_lossy(&body));
    assert_eq!(upstream.requests().len(), 1);
    let u = untrusted.settled_usage(&key).await;
    assert_eq!(u["month"]["spent"], 0, "{u}");
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_per_hour_are_capped_and_remembered_across_a_restart() {
    let mut w = world("runs_per_hour = 3", "").await;
    let (_, key) = w.tenant("busy").await;
    let a = w.agent(&key, "a", false).await;
    let sock = w.run_dir(a["id"].as_str().unwrap()).join("control.sock");
    let call = |run: &'static str| {
        let sock = sock.clone();
        async move { uds_post(&sock, "/v1/chat/completions", &chat("gpt-test", "one step of a run", false), &[("x-clawpen-run", run)]).await }
    };
    for run in ["run-1", "run-2", "run-3", "run-1", "run-3"] {
        assert_eq!(call(run).await.0, 200, "{run} is within the plan's 3 runs per hour");
    }
    let (st, body) = call("run-4").await;
    assert_eq!(st, 429, "a 4th run in the hour is refused");
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["error"]["code"], "rate_limited", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("3 requests in the last hour"), "{e}");

    // The count outlives the server: a graceful restart, then a crash after the flusher ran.
    assert!(w.terminate(), "the server stops on SIGTERM");
    w.spawn().await;
    assert_eq!(call("run-5").await.0, 429, "still 3 runs this hour after a restart");
    assert_eq!(call("run-2").await.0, 200, "an admitted run goes on after a restart");
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.kill();
    w.spawn().await;
    assert_eq!(call("run-6").await.0, 429, "still 3 runs this hour after a crash");
    let u = settled(&w, &key).await;
    let calls = u["recent_calls"].as_array().unwrap();
    assert_eq!(calls.iter().filter(|c| c["outcome"] == "ok").count(), 6, "{u:#}");
    assert!(calls.iter().filter(|c| c["outcome"] != "ok").all(|c| c["cost"] == 0), "refused runs cost nothing: {u:#}");
}
