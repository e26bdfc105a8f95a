//! `clawpen bench gateway`: what the gateway costs. Case `roundtrip`: a `health` request's round
//! trip through the gateway (client → server → agent's socket) against the same request straight
//! to the agent's own WebSocket on its socket, alternating, on one connection each. Case
//! `idle-connections`: `n` connections opened through the gateway and left idle; `p50_ms` and
//! `p99_ms` are the time to `hello-ok`, `bytes_per_connection` the memory they hold (this
//! process, which is the server *and* the clients, plus the agent's sandbox), and `open` how many
//! still answer at the end. Case `wake-on-connect`: a connection to the agent while it is
//! stopped, which starts it, to `hello-ok`, against the same connection to the awake agent.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::bench::{percentile, round2, BenchServer, Case};

const CONNECT: &str = r#"{"type":"req","id":"c","method":"connect","params":{"minProtocol":3,"maxProtocol":3,"client":{"id":"test","mode":"test","version":"1","platform":"linux"}}}"#;

async fn next_json<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> anyhow::Result<Value> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
            Some(Ok(Message::Close(f))) => anyhow::bail!("closed: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("closed"),
        }
    }
}

/// Challenge, `connect`, `hello-ok`.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> anyhow::Result<()> {
    let challenge = next_json(ws).await?;
    anyhow::ensure!(challenge["event"] == "connect.challenge", "no challenge: {challenge}");
    ws.send(Message::Text(CONNECT.into())).await?;
    let hello = next_json(ws).await?;
    anyhow::ensure!(hello["payload"]["type"] == "hello-ok", "no hello-ok: {hello}");
    Ok(())
}

/// One `health` request to its answer, skipping events.
async fn health<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, i: usize) -> anyhow::Result<f64> {
    let id = format!("h{i}");
    let t0 = Instant::now();
    ws.send(Message::Text(json!({"type": "req", "id": id, "method": "health"}).to_string().into())).await?;
    loop {
        let v = next_json(ws).await?;
        if v["type"] == "res" && v["id"] == id.as_str() {
            anyhow::ensure!(v["ok"] == true, "{v}");
            return Ok(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
}

/// Client buffers as small as the server's, so the clients do not dominate the memory figure.
fn small() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0)
}

/// Resident memory of this process, in bytes.
fn own_rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm").ok().and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok()).unwrap_or(0) * 4096
}

/// Memory charged to a container's cgroup, in bytes (cgroup v2, then v1).
fn container_memory(id: &str) -> u64 {
    let out = std::process::Command::new("docker").args(["inspect", "--format", "{{.Id}}", id]).output();
    let Ok(out) = out else { return 0 };
    let full = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    for path in [
        format!("/sys/fs/cgroup/system.slice/docker-{full}.scope/memory.current"),
        format!("/sys/fs/cgroup/docker/{full}/memory.current"),
        format!("/sys/fs/cgroup/memory/docker/{full}/memory.usage_in_bytes"),
    ] {
        if let Ok(v) = std::fs::read_to_string(&path) {
            return v.trim().parse().unwrap_or(0);
        }
    }
    0
}

pub async fn run(requests: usize, connections: usize, upstream_ms: u64) -> anyhow::Result<Vec<Case>> {
    let server = BenchServer::start(2).await?;
    let result = run_on(&server, requests, connections).await;
    server.teardown().await;
    let mut cases = result?;
    cases.push(first_token((requests / 4).max(5), upstream_ms).await?);
    Ok(cases)
}

/// Case `first-token`: from `chat.send` through the gateway to the first `delta` of the reply
/// (the agent's model call streamed through the meter to a stand-in with a provider's time to
/// first token), against the first chunk of the same streamed call made straight to the
/// stand-in. Interleaved, on a server of its own.
async fn first_token(n: usize, ttft_ms: u64) -> anyhow::Result<Case> {
    let model = crate::bench::BenchModel::start(ttft_ms).await?;
    let server = BenchServer::start_config(2, |_| {}, |c| {
        c.fleet.warm_pool = 0;
        model.configure(c);
    })
    .await?;
    let result = first_token_on(&server, &model.standin, &model.key, n, ttft_ms).await;
    server.teardown().await;
    result
}

/// A tenant with one running agent on `server`: the tenant, its API key, the agent's id, and a
/// gateway URL for it.
async fn running_agent(server: &BenchServer) -> anyhow::Result<(clawpen_store::Tenant, String, String, String)> {
    let app = &server.app;
    let tenant = app.store.create_tenant("bench", "bench", app.config.sandbox.uid_base).await?;
    let (_, token) = app.store.create_api_key(&tenant.id).await?;
    let http = reqwest::Client::new();
    let agent: Value = http.post(format!("{}/api/v1/agents", server.base)).bearer_auth(&token).json(&json!({"name": "bench", "start": true})).send().await?.json().await?;
    let id = agent["id"].as_str().ok_or_else(|| anyhow::anyhow!("create failed: {agent}"))?.to_owned();
    let c: Value = http.post(format!("{}/api/v1/agents/{id}/connect-url", server.base)).bearer_auth(&token).send().await?.json().await?;
    let query = c["url"].as_str().and_then(|u| u.split_once('?')).map(|(_, q)| q.to_owned()).ok_or_else(|| anyhow::anyhow!("no connect URL: {c}"))?;
    let url = format!("{}/gateway/connect?{query}", server.base.replacen("http://", "ws://", 1));
    Ok((tenant, token, id, url))
}

async fn first_token_on(server: &BenchServer, standin: &clawpen_standin::Standin, key: &str, n: usize, ttft_ms: u64) -> anyhow::Result<Case> {
    let (_, _, _, url) = running_agent(server).await?;
    let http = reqwest::Client::new();
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(small()), false).await?;
    let challenge = next_json(&mut ws).await?;
    anyhow::ensure!(challenge["event"] == "connect.challenge", "no challenge: {challenge}");
    ws.send(Message::Text(CONNECT.replace("\"maxProtocol\":3", "\"maxProtocol\":4").into())).await?;
    next_json(&mut ws).await?;
    let direct = |i: usize| {
        let (http, url, key) = (http.clone(), format!("{}/v1/chat/completions", standin.base_url()), key.to_owned());
        async move {
            let body = json!({"model": "gpt-test", "stream": true, "max_tokens": 64, "messages": [{"role": "user", "content": format!("first token {i}")}]});
            let t0 = Instant::now();
            let mut res = http.post(url).bearer_auth(key).json(&body).send().await?;
            anyhow::ensure!(res.status().is_success(), "stand-in: {}", res.status());
            // The first chunk that carries text.
            let mut seen = String::new();
            while let Some(chunk) = res.chunk().await? {
                seen.push_str(&String::from_utf8_lossy(&chunk));
                if has_text(&seen) {
                    break;
                }
            }
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            while res.chunk().await?.is_some() {}
            anyhow::Ok(ms)
        }
    };
    eprintln!("gateway bench: first token, {n} runs each way");
    let (mut through, mut base) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // Where the time goes: chat.send to the call reaching the provider, and the provider's
    // first chunk to the client's delta.
    let (mut up, mut down): (Vec<f64>, Vec<f64>) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + 2 {
        let key = format!("ft-{i}");
        let seen_before = standin.requests().len();
        let t0 = Instant::now();
        ws.send(Message::Text(json!({"type": "req", "id": key, "method": "chat.send", "params": {"sessionKey": "main", "message": format!("first token {i}"), "idempotencyKey": key}}).to_string().into())).await?;
        let mut first = None;
        loop {
            let v = next_json(&mut ws).await?;
            let p = &v["payload"];
            if v["event"] != "chat" || p["runId"] != key.as_str() {
                continue;
            }
            match p["state"].as_str() {
                Some("delta") if first.is_none() => first = Some(t0.elapsed().as_secs_f64() * 1000.0),
                Some("final") => break,
                Some("error" | "aborted") => anyhow::bail!("the run failed: {v}"),
                _ => {}
            }
        }
        let reached = standin.requests().get(seen_before).map(|r| r.received_at.saturating_duration_since(t0).as_secs_f64() * 1000.0);
        let d = direct(i).await?;
        // The first two rounds warm both paths up.
        if i >= 2 {
            let first = first.ok_or_else(|| anyhow::anyhow!("no delta before the final"))?;
            through.push(first);
            base.push(d);
            if let Some(r) = reached {
                up.push(r);
                down.push(first - r - ttft_ms as f64);
            }
        }
    }
    let mut extra = serde_json::Map::new();
    extra.insert("what".into(), json!("chat.send through the gateway (agent, meter, provider) to the first delta, against the first text chunk of the same streamed call straight to the provider stand-in"));
    extra.insert("upstream_ttft_ms".into(), json!(ttft_ms));
    let p = |v: &[f64], q: f64| round2(percentile(v, q));
    extra.insert("to_provider_p50_ms".into(), json!(p(&up, 50.0)));
    extra.insert("to_provider_p99_ms".into(), json!(p(&up, 99.0)));
    extra.insert("from_provider_p50_ms".into(), json!(p(&down, 50.0)));
    extra.insert("from_provider_p99_ms".into(), json!(p(&down, 99.0)));
    Ok(Case { name: "first-token".into(), samples_ms: through, baseline_ms: Some(base), extra })
}

/// True when an event-stream buffer holds a chunk with text (`choices[0].delta.content`).
fn has_text(buf: &str) -> bool {
    buf.lines().filter_map(|l| l.strip_prefix("data: ")).filter_map(|d| serde_json::from_str::<Value>(d).ok()).any(|v| v["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty()))
}

async fn run_on(server: &BenchServer, requests: usize, connections: usize) -> anyhow::Result<Vec<Case>> {
    let app = &server.app;
    let (tenant, token, id, url) = running_agent(server).await?;
    let http = reqwest::Client::new();
    let agent_id = clawpen_core::ids::AgentId::parse(&id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let addr = app.addr_of(&app.store.get_tenant(&tenant.id).await?, &agent_id).await.map_err(|e| anyhow::anyhow!(e.message))?;

    // roundtrip
    eprintln!("gateway bench: roundtrip, {requests} requests each way");
    let (mut through, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(small()), false).await?;
    handshake(&mut through).await?;
    let stream = addr.connect().await?;
    let (mut direct, _) = tokio_tungstenite::client_async("ws://agent/gateway", stream).await?;
    handshake(&mut direct).await?;
    for i in 0..20 {
        health(&mut through, i).await?;
        health(&mut direct, i).await?;
    }
    let (mut ours, mut base) = (Vec::with_capacity(requests), Vec::with_capacity(requests));
    for i in 0..requests {
        ours.push(health(&mut through, i).await?);
        base.push(health(&mut direct, i).await?);
    }
    drop(through);
    drop(direct);
    let mut cases = vec![Case { name: "roundtrip".into(), samples_ms: ours, baseline_ms: Some(base), extra: serde_json::Map::new() }];

    // wake-on-connect: the agent stopped (its container kept), then a connection through the
    // gateway, which starts it; timed to hello-ok. Baseline: the same connection to the awake
    // agent, right after.
    let wakes = (requests / 10).clamp(5, 30);
    eprintln!("gateway bench: wake on connect, {wakes} times");
    let (mut woken, mut awake) = (Vec::with_capacity(wakes), Vec::with_capacity(wakes));
    for _ in 0..wakes {
        let res = http.post(format!("{}/api/v1/agents/{id}/hibernate", server.base)).bearer_auth(&token).json(&json!({"tier": "stopped"})).send().await?;
        anyhow::ensure!(res.status().is_success(), "hibernate: {}", res.text().await.unwrap_or_default());
        let t0 = Instant::now();
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(small()), false).await?;
        handshake(&mut ws).await?;
        woken.push(t0.elapsed().as_secs_f64() * 1000.0);
        drop(ws);
        let t0 = Instant::now();
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(small()), false).await?;
        handshake(&mut ws).await?;
        awake.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let mut extra = serde_json::Map::new();
    extra.insert("what".into(), json!("a connection to a stopped agent (container kept) through the gateway, to hello-ok; baseline: the same to the awake agent"));
    cases.push(Case { name: "wake-on-connect".into(), samples_ms: woken, baseline_ms: Some(awake), extra });

    // idle-connections
    eprintln!("gateway bench: opening {connections} idle connections");
    let container = clawpen_core::spec::container_name(&app.instance, &agent_id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss0, agent0) = (own_rss(), container_memory(&container));
    let mut open = Vec::with_capacity(connections);
    let mut setup = Vec::with_capacity(connections);
    let bar = indicatif::ProgressBar::new(connections as u64);
    for _ in 0..connections {
        let t0 = Instant::now();
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(small()), false).await?;
        handshake(&mut ws).await?;
        setup.push(t0.elapsed().as_secs_f64() * 1000.0);
        open.push(ws);
        bar.inc(1);
    }
    bar.finish_and_clear();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, agent1) = (own_rss(), container_memory(&container));
    // Every connection still answers.
    let mut answering = 0;
    for (i, ws) in open.iter_mut().enumerate() {
        if health(ws, i).await.is_ok() {
            answering += 1;
        }
    }
    let held = rss1.saturating_sub(rss0) + agent1.saturating_sub(agent0);
    let mut extra = serde_json::Map::new();
    extra.insert("bytes_per_connection".into(), json!(held / connections.max(1) as u64));
    extra.insert("server_and_clients_bytes_per_connection".into(), json!(rss1.saturating_sub(rss0) / connections.max(1) as u64));
    extra.insert("agent_bytes_per_connection".into(), json!(agent1.saturating_sub(agent0) / connections.max(1) as u64));
    extra.insert("open".into(), json!(answering));
    extra.insert("what".into(), json!("p50/p99: time from the WebSocket connect to hello-ok, through the gateway"));
    cases.push(Case { name: "idle-connections".into(), samples_ms: setup, baseline_ms: None, extra });
    drop(open);
    Ok(cases)
}
