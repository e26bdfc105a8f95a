//! `clawpen bench console`: the console's pages for a busy tenant. Cases `agents-page` and
//! `usage-page`: time to the first byte of `GET /console/agents` and `GET /console/usage` for a
//! signed-in member of a tenant with 100 agents and a month of model calls (10 a day per agent),
//! through the whole server (session lookup, store, rendering, security headers). No sandbox is
//! started: the pages read records, not sandboxes.

use std::time::Instant;

use crate::bench::{BenchServer, Case};

const AGENTS: usize = 100;
const CALLS_PER_AGENT_PER_DAY: usize = 10;
const WARMUP: usize = 50;

pub async fn run(requests: usize) -> anyhow::Result<Vec<Case>> {
    anyhow::ensure!(requests >= 1, "--requests must be at least 1");
    let server = BenchServer::start(AGENTS as u32 + 1).await?;
    let result = measure(&server, requests).await;
    server.teardown().await;
    result
}

async fn measure(server: &BenchServer, requests: usize) -> anyhow::Result<Vec<Case>> {
    let store = &server.app.store;
    let tenant = store.create_tenant("bench-family", "bench", 100_000).await?;
    eprintln!("console bench: {AGENTS} agents and 30 days of calls");
    let mut agents = Vec::with_capacity(AGENTS);
    for i in 0..AGENTS {
        agents.push(store.create_agent(&tenant.id, &format!("agent-{i:03}"), AGENTS as u32 + 1).await?);
    }
    let now = clawpen_store::now_ms();
    let mut calls = Vec::new();
    for day in 0..30i64 {
        for (a, agent) in agents.iter().enumerate() {
            for k in 0..CALLS_PER_AGENT_PER_DAY {
                calls.push(clawpen_store::ledger::CallRecord {
                    id: format!("call_{day}_{a}_{k}"),
                    tenant_id: tenant.id.to_string(),
                    agent_id: agent.id.to_string(),
                    at: now - day * 86_400_000 - (k as i64) * 60_000,
                    model: "gpt-test".into(),
                    provider: "openai".into(),
                    stream: true,
                    input_tokens: 900,
                    output_tokens: 120,
                    cache_read: 0,
                    cache_write: 0,
                    cost: 1_500,
                    held: 4_000,
                    outcome: "ok".into(),
                });
            }
        }
    }
    for chunk in calls.chunks(500) {
        store.record_calls(chunk).await?;
    }
    eprintln!("console bench: {} calls recorded", calls.len());
    // The seeding's writes settle (the store's log is checkpointed) before anything is timed.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    // A member signed in: a session made as the sign-in page makes one.
    let member = store.add_member(&tenant.id, "web", "bench@example.com", "Bench").await?;
    let token = clawpen_server::console::auth::random_token();
    store
        .create_web_session(&clawpen_store::console::WebSession {
            token_hash: clawpen_server::console::auth::token_hash(&token),
            member: Some(member.id.clone()),
            tenant: Some(tenant.id.clone()),
            csrf: clawpen_server::console::auth::random_token(),
            created_at: now,
            expires_at: now + 3_600_000,
        })
        .await?;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let cookie = format!("clawpen_session={token}");
    let mut cases = Vec::new();
    for (name, path) in [("agents-page", "/console/agents"), ("usage-page", "/console/usage")] {
        eprintln!("console bench: {name}, {requests} requests after {WARMUP}");
        let mut samples = Vec::with_capacity(requests);
        let mut bytes = 0usize;
        for i in 0..requests + WARMUP {
            let t0 = Instant::now();
            // `send` returns with the status line and headers: the first byte.
            let r = http.get(format!("{}{path}", server.base)).header("cookie", &cookie).send().await?;
            let ttfb = t0.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(r.status() == 200, "{path}: HTTP {}", r.status());
            let body = r.text().await?;
            anyhow::ensure!(body.contains("agent-099") || path != "/console/agents", "{path} does not list the agents");
            bytes = body.len();
            if i >= WARMUP {
                samples.push(ttfb);
            }
        }
        let mut sorted = samples.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        eprintln!("console bench: {name} slowest {:?}", &sorted[..sorted.len().min(8)]);
        let mut extra = serde_json::Map::new();
        extra.insert("page_bytes".into(), bytes.into());
        extra.insert("agents".into(), AGENTS.into());
        extra.insert("calls".into(), calls.len().into());
        cases.push(Case { name: name.into(), samples_ms: samples, baseline_ms: None, extra });
    }
    Ok(cases)
}
