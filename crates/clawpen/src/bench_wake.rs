//! `clawpen bench wake`: time from a message to the agent's reply when the agent sleeps in each
//! hibernation tier (`paused`: frozen; `stopped`: container kept; `removed`: workspace only).
//! The baseline is the same message to the same agent while it is awake, measured right after
//! each wake, so `overhead_p99_ms` is what the wake itself costs. Without a model configured the
//! agent answers that none is: the reply still travels the whole path (API, wake, the agent's
//! socket, its loop, the session file).

use std::time::Instant;

use clawpen_core::labels;
use clawpen_runtime::SandboxState;
use serde_json::{json, Value};

use crate::bench::{BenchServer, Case};

pub async fn run(n: usize) -> anyhow::Result<Vec<Case>> {
    anyhow::ensure!(n >= 1, "--wakes must be at least 1");
    let server = BenchServer::start(4).await?;
    let mut cases = Vec::new();
    for (wall, plan) in crate::bench::WALLS {
        match run_on(&server, n, wall, plan).await {
            Ok(c) => cases.extend(c),
            Err(e) => {
                server.teardown().await;
                return Err(e);
            }
        }
    }
    // The walls' cases of one tier side by side.
    cases.sort_by_key(|c| ["paused", "stopped", "removed"].iter().position(|t| c.name.starts_with(t)));
    server.teardown().await;
    Ok(cases)
}

async fn run_on(server: &BenchServer, n: usize, wall: &str, plan: &str) -> anyhow::Result<Vec<Case>> {
    let app = &server.app;
    let tenant = app.store.create_tenant(&format!("bench-{wall}"), plan, app.config.sandbox.uid_base).await?;
    let (_, token) = app.store.create_api_key(&tenant.id).await?;
    let http = reqwest::Client::new();
    let post = |path: String, body: Value| {
        let (http, token, base) = (http.clone(), token.clone(), server.base.clone());
        async move {
            let res = http.post(format!("{base}{path}")).bearer_auth(token).json(&body).send().await?;
            let status = res.status().as_u16();
            let body: Value = res.json().await?;
            anyhow::ensure!(status == 200 || status == 201, "{path}: {status} {body}");
            anyhow::Ok(body)
        }
    };
    let agent = post("/api/v1/agents".into(), json!({"name": "sleeper", "start": true})).await?;
    let id = agent["id"].as_str().unwrap_or_default().to_owned();
    let container = clawpen_core::spec::container_name(&app.instance, &clawpen_core::ids::AgentId::parse(&id).map_err(|e| anyhow::anyhow!("{e}"))?);
    let mut cases = Vec::new();
    for (tier, engine_state) in [("paused", Some(SandboxState::Paused)), ("stopped", Some(SandboxState::Exited)), ("removed", None)] {
        let (mut woken, mut awake) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            eprintln!("wake {tier}-{wall} {}/{n}", i + 1);
            let slept = post(format!("/api/v1/agents/{id}/hibernate"), json!({"tier": tier})).await?;
            anyhow::ensure!(slept["hibernation"] == tier, "the agent did not hibernate: {slept}");
            // The engine agrees before the clock starts.
            let seen = app.runtime.inspect(&container).await.ok().map(|s| s.state);
            anyhow::ensure!(seen == engine_state, "after hibernate({tier}) the engine shows {seen:?}");
            let t0 = Instant::now();
            let reply = post(format!("/api/v1/agents/{id}/messages"), json!({"text": format!("wake {tier} {i}")})).await?;
            woken.push(t0.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(reply["reply"].as_str().is_some_and(|r| !r.is_empty()), "no reply: {reply}");
            let t0 = Instant::now();
            post(format!("/api/v1/agents/{id}/messages"), json!({"text": format!("awake {tier} {i}")})).await?;
            awake.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        let mut extra = serde_json::Map::new();
        extra.insert("baseline".into(), json!("the same message to the same agent while awake"));
        cases.push(Case { name: format!("{tier}-{wall}"), samples_ms: woken, baseline_ms: Some(awake), extra });
    }
    // Every wake kept the workspace: the session holds both messages of every round.
    let session = app.layout.workspace_dir(&clawpen_core::ids::AgentId::parse(&id).map_err(|e| anyhow::anyhow!("{e}"))?).join("sessions/main.jsonl");
    let text = std::fs::read_to_string(&session)?;
    for tier in ["paused", "stopped", "removed"] {
        anyhow::ensure!(text.contains(&format!("wake {tier} {}", n - 1)), "the session lost a message of the {tier} case");
    }
    let left = app.runtime.list(labels::AGENT, &id).await?.len();
    anyhow::ensure!(left == 1, "{left} containers for one agent");
    Ok(cases)
}
