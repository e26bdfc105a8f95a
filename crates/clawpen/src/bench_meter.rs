//! `clawpen bench meter`: the latency the meter adds to a model call. Each case runs the same
//! requests through the meter (HTTP over the control socket → ledger reserve → upstream → usage →
//! settle) and straight to the upstream stand-in, in alternating rounds, with the same HTTP
//! client and keep-alive connections on both sides.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clawpen_core::ids::AgentId;
use clawpen_core::plan::{Plan, CREDIT};
use clawpen_meter::config::{ModelConfig, Provider, UpstreamConfig};
use clawpen_meter::{Meter, MeterCaller, MeterConfig};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::bench::{percentile, round2, Case};

/// Rounds each case is split into, alternating meter and direct.
const ROUNDS: usize = 4;

enum Target {
    Unix(std::path::PathBuf),
    Tcp(std::net::SocketAddr),
}

async fn worker<S>(stream: S, path: &'static str, auth: Option<String>, body: Bytes, n: usize, run: String) -> anyhow::Result<Vec<f64>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        sender.ready().await?;
        // Like an agent: one run id for the model calls of one piece of work.
        let mut req = Request::post(path).header("host", "bench").header("content-type", "application/json").header("x-clawpen-run", &run);
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let t0 = Instant::now();
        let res = sender.send_request(req.body(Full::new(body.clone()))?).await?;
        let status = res.status();
        let bytes = res.into_body().collect().await?.to_bytes();
        anyhow::ensure!(status.is_success(), "{status}: {}", String::from_utf8_lossy(&bytes));
        out.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

/// `c` workers with `n` requests each; returns all latencies and the wall time.
async fn batch(target: &Target, path: &'static str, auth: Option<String>, body: Bytes, c: usize, n: usize) -> anyhow::Result<(Vec<f64>, f64)> {
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(c);
    for w in 0..c {
        let (auth, body) = (auth.clone(), body.clone());
        let run = format!("bench-{w}-{}", rand_suffix());
        tasks.push(match target {
            Target::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p).await?;
                tokio::spawn(worker(s, path, auth, body, n, run))
            }
            Target::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                tokio::spawn(worker(s, path, auth, body, n, run))
            }
        });
    }
    let mut all = Vec::with_capacity(c * n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, t0.elapsed().as_secs_f64()))
}

fn rand_suffix() -> String {
    AgentId::new().as_str()[3..13].to_owned()
}

pub async fn run(requests: usize) -> anyhow::Result<Vec<Case>> {
    let dir = tempfile::Builder::new().prefix("clawpen-bench-meter-").tempdir_in("/tmp")?;
    let standin_config = clawpen_standin::StandinConfig::for_testing();
    let key = standin_config.openai_key.clone();
    let standin = clawpen_standin::Standin::start(standin_config).await?;
    let upstream_url = standin.base_url();
    let upstream_addr: std::net::SocketAddr = upstream_url.trim_start_matches("http://").parse()?;
    std::fs::write(dir.path().join("upstream.key"), &key)?;

    let store = clawpen_store::Store::open_sqlite(&dir.path().join("bench.db")).await?;
    let plan = Plan { monthly_cap: 1_000_000 * CREDIT, daily_cap: 1_000_000 * CREDIT, initial_credits: 1_000_000 * CREDIT, max_tokens: 64, runs_per_hour: u32::MAX, ..Plan::default() };
    let tenant = store.create_tenant("bench", "bench", 100_000).await?;
    let config = MeterConfig {
        default_model: Some("bench-model".into()),
        upstreams: BTreeMap::from([(
            "standin".to_owned(),
            UpstreamConfig { provider: Provider::Openai, base_url: format!("{upstream_url}/v1"), api_key_env: None, api_key_file: Some(dir.path().join("upstream.key")) },
        )]),
        models: BTreeMap::from([(
            "bench-model".to_owned(),
            ModelConfig { upstream: "standin".into(), upstream_model: None, input_per_mtok: 150_000, output_per_mtok: 600_000, cache_read_per_mtok: 75_000, cache_write_per_mtok: 0 },
        )]),
        ..MeterConfig::default()
    };
    let meter = Arc::new(Meter::new(store.clone(), config, BTreeMap::from([("bench".to_owned(), plan)]), "bench".into()).map_err(|e| anyhow::anyhow!(e))?);
    let socket = dir.path().join("control.sock");
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let router = clawpen_meter::router::router(meter.clone(), MeterCaller { tenant: tenant.id.clone(), agent: AgentId::new() });
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let flusher = tokio::spawn(meter.clone().run_flusher());

    let meter_target = Target::Unix(socket);
    let direct_target = Target::Tcp(upstream_addr);
    let mut cases = Vec::new();
    for (name, c, stream) in [("c1", 1usize, false), ("c64", 64, false), ("c1-stream", 1, true), ("c64-stream", 64, true)] {
        eprintln!("meter bench: case {name}");
        let mut body = json!({"model": "bench-model", "messages": [{"role": "user", "content": "What is the weather like on the moon today?"}], "max_tokens": 32});
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        let through_meter = Bytes::from(body.to_string());
        let direct = Bytes::from(body.to_string());
        // Warm both paths (connections, the account row, the stand-in).
        batch(&meter_target, "/v1/chat/completions", None, through_meter.clone(), c.min(8), 3).await?;
        batch(&direct_target, "/v1/chat/completions", Some(format!("Bearer {key}")), direct.clone(), c.min(8), 3).await?;
        let per_round = requests.div_ceil(ROUNDS).max(1);
        let (mut ours, mut base, mut wall) = (Vec::new(), Vec::new(), 0.0);
        for _ in 0..ROUNDS {
            let (m, w) = batch(&meter_target, "/v1/chat/completions", None, through_meter.clone(), c, per_round).await?;
            ours.extend(m);
            wall += w;
            let (d, _) = batch(&direct_target, "/v1/chat/completions", Some(format!("Bearer {key}")), direct.clone(), c, per_round).await?;
            base.extend(d);
        }
        let mut extra = serde_json::Map::new();
        extra.insert("concurrency".into(), json!(c));
        extra.insert("stream".into(), json!(stream));
        extra.insert("rps".into(), json!(round2(ours.len() as f64 / wall)));
        extra.insert("p999_ms".into(), json!(round2(percentile(&ours, 99.9))));
        cases.push(Case { name: name.into(), samples_ms: ours, baseline_ms: Some(base), extra });
    }
    server.abort();
    // Every call was charged and the lease released: nothing stays held.
    meter.quiesce(Duration::from_secs(5)).await;
    flusher.abort();
    let open = store.open_holds(&tenant.id).await?;
    anyhow::ensure!(open == 0, "{open} holds left open after the bench");
    drop(standin);
    Ok(cases)
}
