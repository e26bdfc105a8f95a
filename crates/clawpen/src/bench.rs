//! `clawpen bench SCENARIO --json`: measures a scenario and prints one JSON object,
//! `{"scenario": …, "cases": [{"name", "n", "p50_ms", "p99_ms", …}]}`. Where a baseline exists it
//! is measured in the same run, interleaved with the measured path, so ratios hold on a noisy
//! machine.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use clawpen_core::ids::{AgentId, TenantId};
use clawpen_core::labels;
use clawpen_runtime::docker::docker_run_args;
use serde_json::json;

#[derive(Clone, Copy, ValueEnum)]
pub enum Scenario {
    /// Create-and-start call to the first `/health` answer, against a plain `docker run`.
    Coldstart,
    /// A model call through the meter (control socket, ledger, upstream) against the same call
    /// straight to the upstream stand-in.
    Meter,
    /// A request's round trip through the gateway against straight to the agent's socket; and
    /// many idle connections through it.
    Gateway,
    /// A message to an agent asleep in each hibernation tier (paused, stopped, removed) to its
    /// reply, against the same message to the awake agent.
    Wake,
    /// Many idle agents, one tenant each: memory per agent on the host, and all healthy.
    Density,
    /// A new agent's create-and-start to its first answer while a warm-pool sandbox waits,
    /// against the same on a plan the pool never serves (a cold create).
    Claim,
    /// Tenant B's message round trip while tenant A's sandbox holds as many connections to its
    /// control socket as it can open, against B's round trip on the quiet server.
    Hostile,
    /// An integration tool call from the agent's side of control.sock through the broker to the
    /// provider stand-in, against the same provider request straight to the stand-in; and the
    /// same call answered from the broker's cache.
    Tools,
    /// Time to the first byte of the console's agents and usage pages for a signed-in member of
    /// a tenant with 100 agents and a month of calls.
    Console,
    /// A workspace of 1,000 files and 50 MiB to storage: a full backup, an incremental one (one
    /// file changed) against the full one, and a restore.
    Backup,
    /// Many paused agents' schedules due in the same minute: from the minute to each run's
    /// first token.
    Schedule,
}

#[derive(Args)]
pub struct BenchArgs {
    scenario: Scenario,
    /// How many agents to start (coldstart, density); samples per case (claim).
    #[arg(long, default_value_t = 20)]
    agents: usize,
    /// Requests per worker in each case (meter: a quarter of it in the cases that wait on the
    /// provider); requests each way (gateway, tools).
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// The upstream stand-in's time to answer (its time to first token) in the meter's standard
    /// cases and gateway's `first-token`, in milliseconds; `c64-saturated` always uses 0.
    #[arg(long, default_value_t = 200)]
    upstream_ms: u64,
    /// Samples per case (backup).
    #[arg(long, default_value_t = 10)]
    samples: usize,
    /// Wakes measured per tier (wake).
    #[arg(long, default_value_t = 30)]
    wakes: usize,
    /// Idle connections to open (gateway: through it; hostile: from the attacker's sandbox,
    /// 25,000 unless given).
    #[arg(long)]
    connections: Option<usize>,
    /// Agents with a schedule due in the same minute (schedule).
    #[arg(long, default_value_t = 1000)]
    schedules: usize,
    /// Print only the JSON object (progress still goes to stderr).
    #[arg(long)]
    json: bool,
}

/// One measured case.
pub struct Case {
    pub name: String,
    pub samples_ms: Vec<f64>,
    pub baseline_ms: Option<Vec<f64>>,
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Nearest-rank percentile of unsorted samples.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Case {
    pub fn to_json(&self) -> serde_json::Value {
        let (p50, p99) = (percentile(&self.samples_ms, 50.0), percentile(&self.samples_ms, 99.0));
        let mut o = serde_json::Map::new();
        o.insert("name".into(), json!(self.name));
        o.insert("n".into(), json!(self.samples_ms.len()));
        o.insert("p50_ms".into(), json!(round2(p50)));
        o.insert("p99_ms".into(), json!(round2(p99)));
        if let Some(b) = &self.baseline_ms {
            let (b50, b99) = (percentile(b, 50.0), percentile(b, 99.0));
            o.insert("baseline_p50_ms".into(), json!(round2(b50)));
            o.insert("baseline_p99_ms".into(), json!(round2(b99)));
            o.insert("ratio_p50".into(), json!((p50 / b50 * 1000.0).round() / 1000.0));
            o.insert("overhead_p99_ms".into(), json!(round2(p99 - b99)));
        }
        o.extend(self.extra.clone());
        serde_json::Value::Object(o)
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (scenario, cases) = match args.scenario {
        Scenario::Coldstart => ("coldstart", coldstart(args.agents).await?),
        Scenario::Meter => ("meter", crate::bench_meter::run(args.requests, args.upstream_ms).await?),
        Scenario::Gateway => ("gateway", crate::bench_gateway::run(args.requests, args.connections.unwrap_or(5000), args.upstream_ms).await?),
        Scenario::Wake => ("wake", crate::bench_wake::run(args.wakes).await?),
        Scenario::Density => ("density", crate::bench_density::run(args.agents).await?),
        Scenario::Claim => ("claim", crate::bench_claim::run(args.agents).await?),
        Scenario::Hostile => ("hostile", crate::bench_hostile::run(args.requests, args.connections.unwrap_or(25_000)).await?),
        Scenario::Tools => ("tools", crate::bench_tools::run(args.requests).await?),
        Scenario::Console => ("console", crate::bench_console::run(args.requests).await?),
        Scenario::Backup => ("backup", crate::bench_backup::run(args.samples.max(1)).await?),
        Scenario::Schedule => ("schedule", crate::bench_schedule::run(args.schedules, args.upstream_ms).await?),
    };
    let out = json!({"scenario": scenario, "cases": cases.iter().map(Case::to_json).collect::<Vec<_>>()});
    if args.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// The bench plan behind runsc (gVisor).
pub const RUNSC_PLAN: &str = "bench-runsc";

/// The bench plan behind each wall: (case suffix, plan name).
pub const WALLS: [(&str, &str); 2] = [("runc", "bench"), ("runsc", RUNSC_PLAN)];

/// The model stand-in a bench's agents call, answering after `ttft_ms`, and its key in a file:
/// [`BenchModel::configure`] makes it the server's `bench-model`, its default. Kept alive as
/// long as the server.
pub struct BenchModel {
    pub standin: clawpen_standin::Standin,
    /// The key the stand-in takes.
    pub key: String,
    key_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl BenchModel {
    pub async fn start(ttft_ms: u64) -> anyhow::Result<BenchModel> {
        let keys = clawpen_standin::StandinConfig::for_testing();
        let standin = clawpen_standin::Standin::start(clawpen_standin::StandinConfig { latency_ms: ttft_ms, ..keys.clone() }).await?;
        let dir = tempfile::Builder::new().prefix("clawpen-bench-key-").tempdir_in("/tmp")?;
        let key_file = dir.path().join("upstream.key");
        std::fs::write(&key_file, &keys.openai_key)?;
        Ok(BenchModel { standin, key: keys.openai_key, key_file, _dir: dir })
    }

    /// Points the server's meter at the stand-in: upstream `standin`, model `bench-model` (the
    /// default), priced a micro-credit per million tokens.
    pub fn configure(&self, c: &mut clawpen_server::Config) {
        use clawpen_meter::config::{ModelConfig, Provider, UpstreamConfig};
        c.meter.default_model = Some("bench-model".into());
        let base_url = format!("{}/v1", self.standin.base_url());
        c.meter.upstreams.insert("standin".into(), UpstreamConfig { provider: Provider::Openai, base_url, api_key_env: None, api_key_file: Some(self.key_file.clone()) });
        let model = ModelConfig { upstream: "standin".into(), upstream_model: Some("gpt-test".into()), input_per_mtok: 1, output_per_mtok: 1, cache_read_per_mtok: 0, cache_write_per_mtok: 0, image_tokens_max: None, reasoning: false };
        c.meter.models.insert("bench-model".into(), model);
    }
}

/// A throwaway server on a temp data dir, torn down (sandboxes included) when dropped.
pub struct BenchServer {
    pub app: clawpen_server::App,
    pub base: String,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl BenchServer {
    pub async fn start(max_agents: u32) -> anyhow::Result<BenchServer> {
        BenchServer::start_with(max_agents, |_| {}).await
    }

    /// [`BenchServer::start`] with the `bench` plan changed by `tune`. No warm pool: these
    /// scenarios measure cold starts.
    pub async fn start_with(max_agents: u32, tune: impl FnOnce(&mut clawpen_core::plan::Plan)) -> anyhow::Result<BenchServer> {
        BenchServer::start_config(max_agents, tune, |c| c.fleet.warm_pool = 0).await
    }

    /// [`BenchServer::start_with`], with the whole config changed by `configure` last.
    pub async fn start_config(
        max_agents: u32,
        tune: impl FnOnce(&mut clawpen_core::plan::Plan),
        configure: impl FnOnce(&mut clawpen_server::Config),
    ) -> anyhow::Result<BenchServer> {
        let dir = tempfile::Builder::new().prefix("clawpen-bench-").tempdir_in("/tmp")?;
        let mut config = clawpen_server::Config::default();
        let mut plan = config.plans[&config.default_plan].clone();
        plan.max_agents = max_agents;
        tune(&mut plan);
        // The bench opens thousands of connections and sends many messages; the plan's message
        // rate and runs per hour are not what it measures.
        plan.messages_per_minute = u32::MAX;
        plan.runs_per_hour = u32::MAX;
        // `bench gateway` holds thousands of gateway connections of one tenant.
        plan.gateway_connections = u32::MAX;
        // The same plan behind gVisor, for the scenarios that compare the two walls.
        config.plans.insert(RUNSC_PLAN.into(), clawpen_core::plan::Plan { runtime: clawpen_core::plan::SandboxRuntime::Runsc, ..plan.clone() });
        config.plans.insert("bench".into(), plan);
        configure(&mut config);
        let image = crate::image_cmd::ensure(&config, true).await?;
        let app = clawpen_server::open(dir.path(), None, config, image).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(clawpen_server::run(app.clone(), listener, async move {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "the bench server did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(BenchServer { app, base, dir, stop: Some(stop) })
    }

    /// Stops the server, then removes every sandbox it made and its data dir.
    pub async fn teardown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // Twice: a warm-pool refill under way when the server stopped may still add one.
        for round in 0..2 {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if let Ok(list) = self.app.runtime.list(labels::INSTANCE, &self.app.instance).await {
                for c in list {
                    let _ = self.app.runtime.remove(&c.id).await;
                }
            }
        }
        // The agents' filesystems are mounted under the data dir.
        let _ = clawpen_hostfs::volume::unmount_under(self.dir.path());
        drop(self.dir);
    }
}

async fn coldstart(n: usize) -> anyhow::Result<Vec<Case>> {
    anyhow::ensure!(n >= 1, "--agents must be at least 1");
    let server = BenchServer::start(n as u32 + 1).await?;
    let mut cases = Vec::new();
    for (wall, plan) in WALLS {
        match coldstart_on(&server, n, wall, plan).await {
            Ok(c) => cases.push(c),
            Err(e) => {
                server.teardown().await;
                return Err(e);
            }
        }
    }
    server.teardown().await;
    Ok(cases)
}

async fn coldstart_on(server: &BenchServer, n: usize, wall: &str, plan: &str) -> anyhow::Result<Case> {
    let app = &server.app;
    let tenant = app.store.create_tenant(&format!("bench-{wall}"), plan, app.config.sandbox.uid_base).await?;
    let (_, token) = app.store.create_api_key(&tenant.id).await?;
    let http = reqwest::Client::new();
    // The baseline's containers carry their own instance label so the server never adopts them.
    let baseline_instance = format!("bench-baseline-{}", &TenantId::new().as_str()[3..15]);
    let mut ours = Vec::with_capacity(n);
    let mut baseline = Vec::with_capacity(n);
    let mut engine = Vec::with_capacity(n);
    let result: anyhow::Result<()> = async {
        for i in 0..n {
            eprintln!("coldstart {wall} {}/{n}", i + 1);
            // clawpen: one create call with start=true, then the agent's first /health answer.
            let t0 = Instant::now();
            let res = http
                .post(format!("{}/api/v1/agents", server.base))
                .bearer_auth(&token)
                .json(&json!({"name": format!("bench-{i}"), "start": true}))
                .send()
                .await?;
            anyhow::ensure!(res.status().as_u16() == 201, "create failed: {} {}", res.status(), res.text().await.unwrap_or_default());
            let agent: serde_json::Value = res.json().await?;
            let id = AgentId::parse(agent["id"].as_str().unwrap_or("")).map_err(|e| anyhow::anyhow!("{e}"))?;
            clawpen_agent::client::wait_healthy(&app.addr_of(&tenant, &id).await.map_err(|e| anyhow::anyhow!(e.message))?, Duration::from_secs(30)).await?;
            ours.push(t0.elapsed().as_secs_f64() * 1000.0);

            // Baseline: the same spec through `docker run`, then the same health poll.
            let bid = AgentId::new();
            app.layout.prepare_agent(&bid, tenant.uid as u32, clawpen_core::spec::Volume::of(app.config.plan_or_default(&tenant.plan)))?;
            let mut spec = app.spec_for(&tenant, &bid, tenant.uid as u32, app.nodes.default_node());
            spec.name = format!("clawpen-bench-{}", bid);
            spec.labels.insert(labels::INSTANCE.into(), baseline_instance.clone());
            let t0 = Instant::now();
            let out = tokio::process::Command::new("docker").args(docker_run_args(&spec)).output().await.context("running `docker run`")?;
            anyhow::ensure!(out.status.success(), "docker run failed: {}", String::from_utf8_lossy(&out.stderr));
            let container = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            clawpen_agent::client::wait_healthy(&app.agent_addr(&tenant, &bid, &container, tenant.uid as u32), Duration::from_secs(30)).await?;
            baseline.push(t0.elapsed().as_secs_f64() * 1000.0);

            // The floor: the same spec through the Engine API directly (no store, no HTTP).
            let eid = AgentId::new();
            app.layout.prepare_agent(&eid, tenant.uid as u32, clawpen_core::spec::Volume::of(app.config.plan_or_default(&tenant.plan)))?;
            let mut spec = app.spec_for(&tenant, &eid, tenant.uid as u32, app.nodes.default_node());
            spec.name = format!("clawpen-bench-{}", eid);
            spec.labels.insert(labels::INSTANCE.into(), baseline_instance.clone());
            let t0 = Instant::now();
            let container = app.runtime.create_and_start(&spec).await?;
            clawpen_agent::client::wait_healthy(&app.agent_addr(&tenant, &eid, &container, tenant.uid as u32), Duration::from_secs(30)).await?;
            engine.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(())
    }
    .await;
    if let Ok(list) = app.runtime.list(labels::INSTANCE, &baseline_instance).await {
        for c in list {
            let _ = app.runtime.remove(&c.id).await;
        }
    }
    result?;
    let mut extra = serde_json::Map::new();
    extra.insert("baseline".into(), json!("docker run -d (CLI) with the same flags, to the first /health answer"));
    extra.insert("mode".into(), json!("sequential, interleaved with the baseline"));
    extra.insert("engine_api_p50_ms".into(), json!(round2(percentile(&engine, 50.0))));
    extra.insert("engine_api_p99_ms".into(), json!(round2(percentile(&engine, 99.0))));
    Ok(Case { name: wall.into(), samples_ms: ours, baseline_ms: Some(baseline), extra })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), 50.0);
        assert_eq!(percentile(&s, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        let c = Case { name: "x".into(), samples_ms: vec![2.0, 4.0], baseline_ms: Some(vec![1.0, 2.0]), extra: Default::default() };
        let j = c.to_json();
        assert_eq!(j["ratio_p50"], json!(2.0));
        assert_eq!(j["overhead_p99_ms"], json!(2.0));
    }
}
