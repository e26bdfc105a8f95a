//! `clawpen bench density --agents N`: how many idle agents one host holds and what each costs.
//! N tenants with one agent each are created and started through the API (a small plan, so
//! admission does not stop the run), then left idle, once behind each wall: cases `runc` and
//! `runsc` (gVisor), each on a server of its own. The samples are each agent's
//! start (create call to its first `/health` answer) as the host fills up. Extra fields:
//! `host_mib_per_agent`: what each agent adds to the host, counted process by process as PSS
//! (shared pages split among their users, so the one agent executable in the page cache is not
//! counted N times): the sandbox's processes (init and agent), its engine shim, plus the growth
//! of dockerd, containerd, the storage driver's fuse-overlayfs processes and this server,
//! divided by N. `mem_available_drop_mib_per_agent`: the
//! drop in the kernel's MemAvailable divided by N, a cross-check that other work on the host
//! makes noisy. `server_rss_mib`: this process, which is the server. `healthy`: agents answering
//! `/health` after the idle period.

use std::time::{Duration, Instant};

use clawpen_core::ids::AgentId;
use serde_json::json;

use crate::bench::{percentile, round2, BenchServer, Case};

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemAvailable:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn self_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// Proportional set size of a process, in KiB.
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("Pss:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// Every process: (pid, comm, cmdline).
fn processes() -> Vec<(u32, String, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim().to_owned();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>().join(" ");
        Some((pid, comm, cmdline))
    })
    .collect()
}

/// The PIDs in a container's cgroup (v1 or v2).
fn container_pids(container_id: &str) -> Vec<u32> {
    let paths = [
        format!("/sys/fs/cgroup/memory/docker/{container_id}/cgroup.procs"),
        format!("/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cgroup.procs"),
        format!("/sys/fs/cgroup/docker/{container_id}/cgroup.procs"),
    ];
    paths.iter().find_map(|p| std::fs::read_to_string(p).ok()).map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect()).unwrap_or_default()
}

/// PSS of the engine's daemons together, with the storage driver's per-container
/// fuse-overlayfs processes where the engine uses it.
fn daemons_pss_kib(procs: &[(u32, String, String)]) -> u64 {
    procs.iter().filter(|(_, comm, _)| comm == "dockerd" || comm == "containerd" || comm == "fuse-overlayfs").map(|(pid, _, _)| pss_kib(*pid)).sum()
}

pub async fn run(n: usize) -> anyhow::Result<Vec<Case>> {
    anyhow::ensure!(n >= 1, "--agents must be at least 1");
    let mut cases = Vec::new();
    // A server of its own per wall, so each one's floor is the empty host.
    for (wall, plan) in crate::bench::WALLS {
        let server = BenchServer::start_with(1, |plan| plan.memory_mib = 32).await?;
        let result = run_on(&server, n, wall, plan).await;
        server.teardown().await;
        cases.push(result?);
    }
    Ok(cases)
}

/// The container's memory cgroup figure (v1 or v2), in KiB: what its limit is counted against.
fn cgroup_kib(container_id: &str) -> u64 {
    let paths = [
        format!("/sys/fs/cgroup/memory/docker/{container_id}/memory.usage_in_bytes"),
        format!("/sys/fs/cgroup/system.slice/docker-{container_id}.scope/memory.current"),
        format!("/sys/fs/cgroup/docker/{container_id}/memory.current"),
    ];
    paths.iter().find_map(|p| std::fs::read_to_string(p).ok()).and_then(|t| t.trim().parse::<u64>().ok()).map_or(0, |b| b / 1024)
}

async fn run_on(server: &BenchServer, n: usize, wall: &str, plan: &str) -> anyhow::Result<Case> {
    let app = &server.app;
    let http = reqwest::Client::new();
    // Settle, then the floor.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (avail_before, rss_before) = (mem_available_kib(), self_rss_kib());
    let (daemons_before, server_before) = (daemons_pss_kib(&processes()), pss_kib(std::process::id()));
    let mut starts = Vec::with_capacity(n);
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        if i % 25 == 0 {
            eprintln!("density {wall}: starting agent {}/{n}", i + 1);
        }
        let tenant = app.store.create_tenant(&format!("family-{i}"), plan, app.config.sandbox.uid_base).await?;
        let (_, token) = app.store.create_api_key(&tenant.id).await?;
        let t0 = Instant::now();
        let res = http.post(format!("{}/api/v1/agents", server.base)).bearer_auth(&token).json(&json!({"name": "agent", "start": true})).send().await?;
        let status = res.status().as_u16();
        let body: serde_json::Value = res.json().await?;
        anyhow::ensure!(status == 201, "agent {i}: {status} {body}");
        starts.push(t0.elapsed().as_secs_f64() * 1000.0);
        agents.push(AgentId::parse(body["id"].as_str().unwrap_or_default()).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    eprintln!("density {wall}: {n} agents up; idling 10 s");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let avail_after = mem_available_kib();
    let rss_after = self_rss_kib();
    let procs = processes();
    let (daemons_after, server_after) = (daemons_pss_kib(&procs), pss_kib(std::process::id()));
    let mut healthy = 0;
    let mut sandbox_kib = Vec::new();
    let mut shim_kib = Vec::new();
    let mut cgroup = Vec::new();
    for id in &agents {
        let a = app.store.find_agent(id).await?.ok_or_else(|| anyhow::anyhow!("agent {id} vanished"))?;
        let tenant = app.store.get_tenant(&a.tenant_id).await?;
        let addr = app.addr_of(&tenant, id).await.map_err(|e| anyhow::anyhow!(e.message))?;
        if clawpen_agent::client::health(&addr, Duration::from_secs(5)).await.is_ok() {
            healthy += 1;
        }
        if let Some(c) = app.store.find_agent(id).await?.and_then(|a| a.container_id).map(|c| c.rsplit('/').next().unwrap_or_default().to_owned()) {
            sandbox_kib.push(container_pids(&c).into_iter().map(pss_kib).sum::<u64>() as f64);
            cgroup.push(cgroup_kib(&c) as f64);
            let shim = procs.iter().filter(|(_, comm, cmd)| comm.starts_with("containerd-shim") && cmd.contains(&c)).map(|(pid, _, _)| pss_kib(*pid)).sum::<u64>();
            shim_kib.push(shim as f64);
        }
    }
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let growth = daemons_after.saturating_sub(daemons_before) + server_after.saturating_sub(server_before);
    let per_agent_kib = (sum(&sandbox_kib) + sum(&shim_kib) + growth as f64) / n as f64;
    let mut extra = serde_json::Map::new();
    extra.insert("host_mib_per_agent".into(), json!(round2(per_agent_kib / 1024.0)));
    extra.insert("sandbox_pss_kib".into(), json!(round2(percentile(&sandbox_kib, 50.0))));
    extra.insert("shim_pss_kib".into(), json!(round2(percentile(&shim_kib, 50.0))));
    // What the cgroup counts against the plan's limit, and what the host pays beyond it (the
    // shim and the daemons' growth).
    extra.insert("cgroup_kib".into(), json!(round2(percentile(&cgroup, 50.0))));
    extra.insert("outside_cgroup_mib_per_agent".into(), json!(round2((per_agent_kib - sum(&cgroup) / n as f64).max(0.0) / 1024.0)));
    extra.insert("runtime".into(), json!(wall));
    extra.insert("daemons_growth_kib_per_agent".into(), json!(round2(daemons_after.saturating_sub(daemons_before) as f64 / n as f64)));
    extra.insert("mem_available_drop_mib_per_agent".into(), json!(round2(avail_before.saturating_sub(avail_after) as f64 / 1024.0 / n as f64)));
    extra.insert("server_rss_mib".into(), json!(round2(rss_after as f64 / 1024.0)));
    extra.insert("server_rss_growth_kib_per_agent".into(), json!(round2(rss_after.saturating_sub(rss_before) as f64 / n as f64)));
    extra.insert("healthy".into(), json!(healthy));
    extra.insert("samples".into(), json!("create-and-start to the first /health answer of each agent, one tenant each, as the host fills"));
    Ok(Case { name: wall.into(), samples_ms: starts, baseline_ms: None, extra })
}
