//! `clawpen bench schedule`: many agents (one tenant each) asleep in the paused tier, each with a
//! schedule due in the same minute; the time from that minute to the first token of each run's
//! reply, as the scheduler spreads the runs (`schedules.spread_secs`, at most
//! `schedules.concurrency` at once) and wakes each agent. The model is the stand-in upstream,
//! answering after `--upstream-ms`.

use std::time::{Duration, Instant};

use clawpen_core::ids::AgentId;
use clawpen_core::lifecycle::Tier;
use serde_json::json;

use crate::bench::{percentile, round2, BenchServer, Case};

pub async fn run(agents: usize, ttft_ms: u64) -> anyhow::Result<Vec<Case>> {
    anyhow::ensure!(agents >= 1, "--schedules must be at least 1");
    let model = crate::bench::BenchModel::start(ttft_ms).await?;
    let tune = |p: &mut clawpen_core::plan::Plan| {
        // Idle agents, as a host full of families has them: small, and asleep within a second.
        p.memory_mib = 32;
        p.disk_mib = 16;
        p.disk_inodes = 1024;
        p.idle_pause_secs = 1;
        p.idle_stop_secs = 0;
        p.idle_remove_secs = 0;
        p.schedules = 1;
        p.schedule_min_interval_secs = 60;
        p.backup_every_secs = 0;
    };
    let server = BenchServer::start_config(1, tune, |c| {
        c.fleet.warm_pool = 0;
        // Idle agents use a few MiB of their 32: the bench commits past the host's memory.
        c.fleet.node_memory_mib = 64 * 1024;
        c.fleet.disk_budget_mib = (agents as u64 + 8) * 16;
        model.configure(c);
    })
    .await?;
    let result = run_on(&server, agents, ttft_ms).await;
    server.teardown().await;
    result
}

async fn run_on(server: &BenchServer, n: usize, ttft_ms: u64) -> anyhow::Result<Vec<Case>> {
    let app = &server.app;
    let http = reqwest::Client::new();
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        if i % 50 == 0 {
            eprintln!("schedule: starting agent {}/{n}", i + 1);
        }
        let tenant = app.store.create_tenant(&format!("family-{i}"), "bench", app.config.sandbox.uid_base).await?;
        let (_, token) = app.store.create_api_key(&tenant.id).await?;
        let res = http.post(format!("{}/api/v1/agents", server.base)).bearer_auth(&token).json(&json!({"name": "agent", "start": true})).send().await?;
        let status = res.status().as_u16();
        let body: serde_json::Value = res.json().await?;
        anyhow::ensure!(status == 201, "agent {i}: {status} {body}");
        agents.push((tenant, AgentId::parse(body["id"].as_str().unwrap_or_default()).map_err(|e| anyhow::anyhow!("{e}"))?));
    }
    // The minute they are all due: the first one at least 30 s away, so the schedules are made
    // and every agent is asleep before it.
    let now = clawpen_store::now_ms();
    let due = (now + 30_000 + 59_999) / 60_000 * 60_000;
    let cron = chrono_minute(due);
    eprintln!("schedule: {n} agents up; every schedule due at {cron} UTC");
    let mut ids = Vec::with_capacity(n);
    for (tenant, agent) in &agents {
        let req = clawpen_server::schedules::NewScheduleRequest {
            name: "morning".into(),
            cron: Some(cron.clone()),
            every_secs: None,
            tz: Some("UTC".into()),
            message: "good morning, what is on today?".into(),
            channel: None,
            telegram_user: None,
        };
        let s = app.create_schedule(tenant, agent, &req, &clawpen_server::fleet::Actor("bench".into())).await.map_err(|e| anyhow::anyhow!("{}", e.message))?;
        anyhow::ensure!(s.next_due_at == due, "schedule due at {} instead of {due}", s.next_due_at);
        ids.push((tenant.id.clone(), s.id));
    }
    // Every agent asleep in the paused tier when the minute comes.
    loop {
        let mut paused = 0;
        for (_, agent) in &agents {
            if app.store.find_agent(agent).await?.is_some_and(|a| a.hibernation == Tier::Paused) {
                paused += 1;
            }
        }
        let left = due - clawpen_store::now_ms();
        if paused == n {
            eprintln!("schedule: all {n} agents paused; {} s to the due minute", left / 1000);
            break;
        }
        anyhow::ensure!(left > 1000, "only {paused} of {n} agents were paused before the due minute");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every run ends: its first token's time, from the due minute and from its spread start.
    let deadline = Instant::now() + Duration::from_millis((due - clawpen_store::now_ms()).max(0) as u64) + Duration::from_secs(300);
    let spread = (app.config.schedules.spread_secs as i64).saturating_mul(1000);
    let (mut from_due, mut from_start, mut failed) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::new());
    for (tenant, id) in &ids {
        let run = loop {
            let runs = app.store.schedule_runs(tenant, id, 1).await?;
            match runs.into_iter().next() {
                Some(r) if r.status != "running" => break r,
                _ => {}
            }
            anyhow::ensure!(Instant::now() < deadline, "schedule {id} did not run within 5 minutes of its due time");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        anyhow::ensure!(run.due_at == due, "schedule {id} ran for {} instead of {due}", run.due_at);
        match (run.status.as_str(), run.first_token_at) {
            ("ok", Some(t)) => {
                from_due.push((t - due) as f64);
                from_start.push((t - due - clawpen_core::schedule::spread_ms(id.as_str(), spread)) as f64);
            }
            _ => failed.push(format!("{id}: {} {}", run.status, run.detail.unwrap_or_default())),
        }
    }
    anyhow::ensure!(failed.is_empty(), "{} runs failed, e.g. {}", failed.len(), failed[0]);
    let mut extra = serde_json::Map::new();
    extra.insert("what".into(), json!("the due minute to the first token of each run's reply; every agent paused, one tenant each"));
    extra.insert("spread_secs".into(), json!(app.config.schedules.spread_secs));
    extra.insert("concurrency".into(), json!(app.config.schedules.concurrency));
    extra.insert("upstream_ttft_ms".into(), json!(ttft_ms));
    extra.insert("from_own_start_p50_ms".into(), json!(round2(percentile(&from_start, 50.0))));
    extra.insert("from_own_start_p99_ms".into(), json!(round2(percentile(&from_start, 99.0))));
    extra.insert("last_first_token_ms".into(), json!(round2(from_due.iter().cloned().fold(0.0, f64::max))));
    Ok(vec![Case { name: format!("due-{n}"), samples_ms: from_due, baseline_ms: None, extra }])
}

/// A cron expression for the minute starting at `ms` (UTC).
fn chrono_minute(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{} {} {} {} *", t.minute(), t.hour(), t.day(), t.month() as u8)
}
