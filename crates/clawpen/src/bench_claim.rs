//! `clawpen bench claim`: a new agent's `POST /api/v1/agents {"start": true}` to its first
//! answer to a message (the create call returning a running agent, then one message, timed
//! together), while a warm-pool sandbox waits (`warm`). The baseline is the same on a plan whose
//! spec differs from the pool's only in its `/tmp` size, so it never claims and always creates a
//! container (a cold start), interleaved sample by sample. Between samples the agents are
//! deleted and the pool refills (not timed). Without a model configured the agent answers that
//! none is: the reply still travels the whole path (API, the agent's socket, its loop, the
//! session file).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::bench::{percentile, round2, BenchServer, Case};

pub async fn run(n: usize) -> anyhow::Result<Vec<Case>> {
    anyhow::ensure!(n >= 1, "--agents must be at least 1");
    let server = BenchServer::start_config(
        4,
        |_| {},
        |c| {
            c.fleet.warm_pool = 1;
            // The pool serves the default plan: the bench plan gets its exact limits.
            let pool_plan = c.plans[&c.default_plan].clone();
            let bench = c.plans.get_mut("bench").expect("the bench plan");
            (bench.memory_mib, bench.cpu_millis, bench.pids, bench.tmp_mib, bench.max_tokens, bench.image) =
                (pool_plan.memory_mib, pool_plan.cpu_millis, pool_plan.pids, pool_plan.tmp_mib, pool_plan.max_tokens, pool_plan.image);
            let mut cold = bench.clone();
            cold.tmp_mib += 1;
            c.plans.insert("bench-cold".into(), cold);
        },
    )
    .await?;
    let result = run_on(&server, n).await;
    server.teardown().await;
    result
}

async fn run_on(server: &BenchServer, n: usize) -> anyhow::Result<Vec<Case>> {
    let app = &server.app;
    let http = reqwest::Client::new();
    let mut tokens = Vec::new();
    for plan in ["bench", "bench-cold"] {
        let tenant = app.store.create_tenant(plan, plan, app.config.sandbox.uid_base).await?;
        tokens.push(app.store.create_api_key(&tenant.id).await?.1);
    }
    let call = |method: reqwest::Method, path: String, token: String, body: Option<Value>| {
        let (http, base) = (http.clone(), server.base.clone());
        async move {
            let mut req = http.request(method, format!("{base}{path}")).bearer_auth(token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let res = req.send().await?;
            let status = res.status().as_u16();
            let text = res.text().await?;
            anyhow::ensure!((200..300).contains(&status), "{path}: {status} {text}");
            anyhow::Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? })
        }
    };
    let (mut warm, mut cold, mut warm_create) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        eprintln!("claim {}/{n}", i + 1);
        for (case, token) in ["warm", "cold"].iter().zip(&tokens) {
            if *case == "warm" {
                // The pool refills between samples; not timed.
                let deadline = Instant::now() + Duration::from_secs(60);
                while app.pool.ready() < 1 {
                    anyhow::ensure!(Instant::now() < deadline, "the warm pool did not refill");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let warm_before = app.metrics.starts_warm.load(Ordering::Relaxed);
            let t0 = Instant::now();
            let agent = call(reqwest::Method::POST, "/api/v1/agents".into(), token.clone(), Some(json!({"name": format!("{case}-{i}"), "start": true}))).await?;
            let created = t0.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(agent["observed_state"] == "running", "not running after create: {agent}");
            let id = agent["id"].as_str().unwrap_or_default().to_owned();
            let reply = call(reqwest::Method::POST, format!("/api/v1/agents/{id}/messages"), token.clone(), Some(json!({"text": "hello"}))).await?;
            let total = t0.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(reply["reply"].as_str().is_some_and(|r| !r.is_empty()), "no reply: {reply}");
            let was_warm = app.metrics.starts_warm.load(Ordering::Relaxed) > warm_before;
            anyhow::ensure!(was_warm == (*case == "warm"), "sample {i} of {case} started {}", if was_warm { "warm" } else { "cold" });
            if *case == "warm" {
                warm.push(total);
                warm_create.push(created);
            } else {
                cold.push(total);
            }
            call(reqwest::Method::DELETE, format!("/api/v1/agents/{id}"), token.clone(), None).await?;
        }
    }
    let mut extra = serde_json::Map::new();
    extra.insert("measured".into(), json!("POST /api/v1/agents {start: true} returning a running agent, then one message to its reply"));
    extra.insert("baseline".into(), json!("the same on a plan the pool never serves (/tmp one MiB larger): a container create"));
    extra.insert("create_p50_ms".into(), json!(round2(percentile(&warm_create, 50.0))));
    extra.insert("create_p99_ms".into(), json!(round2(percentile(&warm_create, 99.0))));
    extra.insert("target_p99_ms".into(), json!(50));
    Ok(vec![Case { name: "warm".into(), samples_ms: warm, baseline_ms: Some(cold), extra }])
}
