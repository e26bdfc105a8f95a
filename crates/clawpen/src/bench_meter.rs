//! `clawpen bench meter`: the latency the meter adds to a model call. Each case runs the same
//! requests through the meter (HTTP over the control socket → ledger reserve → upstream → usage →
//! settle) and straight to the upstream stand-in, in alternating rounds, with the same HTTP
//! client and keep-alive connections on both sides.
//!
//! The four standard cases (`c1`, `c64`, `c1-stream`, `c64-stream`) call a stand-in that takes a
//! provider's time to answer (`--upstream-ms`, 200 by default: a fast model's time to first
//! token), so that 64 calls in flight are 64 calls waiting on a provider, as in use. Its latency
//! is fixed and the workers start spread over it, so a call's time is that latency plus what the
//! path adds, and the p99 difference is the p99 of what the meter adds (a stall of the meter
//! shows in full).
//!
//! `c64-saturated` calls a stand-in that answers at once: the 64 workers, the meter and the
//! stand-in then share the two cores flat out, and the latency measures CPU per call more than
//! added delay. That case also measures a bare pass-through proxy (same client, no metering) in
//! the same run: the cost of the extra HTTP hop alone on this machine.

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

async fn worker<S>(stream: S, path: &'static str, auth: Option<String>, body: Bytes, n: usize, run: String, start_after: Duration) -> anyhow::Result<Vec<f64>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    tokio::time::sleep(start_after).await;
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

/// Opens the runs the meter's calls are made in (as the server does for each user message).
type Runs<'a> = Option<(&'a Meter, &'a MeterCaller)>;

/// `c` workers with `n` requests each, their starts spread evenly over `spread`; returns all
/// latencies and the wall time. Through the meter (`runs`), each worker calls in a run of its own.
#[allow(clippy::too_many_arguments)]
async fn batch(target: &Target, path: &'static str, auth: Option<String>, body: Bytes, c: usize, n: usize, spread: Duration, runs: Runs<'_>) -> anyhow::Result<(Vec<f64>, f64)> {
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(c);
    for w in 0..c {
        let (auth, body) = (auth.clone(), body.clone());
        let run = match runs {
            Some((meter, caller)) => meter.open_run(caller).await.map_err(|e| anyhow::anyhow!("{e}"))?,
            None => format!("bench-{w}-{}", rand_suffix()),
        };
        let start_after = spread * w as u32 / c as u32;
        tasks.push(match target {
            Target::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p).await?;
                tokio::spawn(worker(s, path, auth, body, n, run, start_after))
            }
            Target::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                tokio::spawn(worker(s, path, auth, body, n, run, start_after))
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

/// A pass-through proxy with the meter's upstream client and no metering: the floor of a hop.
fn passthrough(upstream: &str, key: &str) -> anyhow::Result<axum::Router> {
    let client = Arc::new(clawpen_meter::client::UpstreamClient::new(None).map_err(|e| anyhow::anyhow!(e))?);
    let base = Arc::new(clawpen_meter::client::BaseUrl::parse(upstream).map_err(|e| anyhow::anyhow!(e))?);
    let auth = format!("Bearer {key}");
    Ok(axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: Bytes| {
            let (client, base, auth) = (client.clone(), base.clone(), auth.clone());
            async move {
                let req = Request::post(base.path("/chat/completions"))
                    .header("host", base.authority())
                    .header("content-type", "application/json")
                    .header("authorization", auth)
                    .body(Full::new(body))
                    .expect("a valid request");
                match client.call(&base, req).await {
                    Ok((parts, body)) => axum::response::Response::from_parts(parts, axum::body::Body::from(body)),
                    Err(e) => axum::response::Response::builder().status(502).body(axum::body::Body::from(e.to_string())).expect("a valid answer"),
                }
            }
        }),
    ))
}

fn request_body(model: &str, stream: bool) -> Bytes {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "What is the weather like on the moon today?"}], "max_tokens": 32});
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    Bytes::from(body.to_string())
}

pub async fn run(requests: usize, upstream_ms: u64) -> anyhow::Result<Vec<Case>> {
    let dir = tempfile::Builder::new().prefix("clawpen-bench-meter-").tempdir_in("/tmp")?;
    // A stand-in with a provider's latency, and one that answers at once.
    let provider = clawpen_standin::Standin::start(clawpen_standin::StandinConfig { latency_ms: upstream_ms, ..clawpen_standin::StandinConfig::for_testing() }).await?;
    let instant = clawpen_standin::Standin::start(clawpen_standin::StandinConfig::for_testing()).await?;
    let key = clawpen_standin::StandinConfig::for_testing().openai_key;
    std::fs::write(dir.path().join("upstream.key"), &key)?;

    let store = clawpen_store::Store::open_sqlite(&dir.path().join("bench.db")).await?;
    let plan = Plan { monthly_cap: 1_000_000 * CREDIT, daily_cap: 1_000_000 * CREDIT, initial_credits: 1_000_000 * CREDIT, max_tokens: 64, runs_per_hour: u32::MAX, max_calls_per_run: u32::MAX, ..Plan::default() };
    let tenant = store.create_tenant("bench", "bench", 100_000).await?;
    let upstream = |s: &clawpen_standin::Standin| UpstreamConfig {
        provider: Provider::Openai,
        base_url: format!("{}/v1", s.base_url()),
        api_key_env: None,
        api_key_file: Some(dir.path().join("upstream.key")),
    };
    let model = |upstream: &str| ModelConfig {
        upstream: upstream.into(),
        upstream_model: None,
        input_per_mtok: 150_000,
        output_per_mtok: 600_000,
        cache_read_per_mtok: 75_000,
        cache_write_per_mtok: 0,
        image_tokens_max: None,
        reasoning: false,
    };
    let config = MeterConfig {
        default_model: Some("bench-model".into()),
        upstreams: BTreeMap::from([("provider".to_owned(), upstream(&provider)), ("instant".to_owned(), upstream(&instant))]),
        models: BTreeMap::from([("bench-model".to_owned(), model("provider")), ("bench-instant".to_owned(), model("instant"))]),
        ..MeterConfig::default()
    };
    let meter = Arc::new(Meter::new(store.clone(), config, BTreeMap::from([("bench".to_owned(), plan)]), "bench".into()).map_err(|e| anyhow::anyhow!(e))?);
    let socket = dir.path().join("control.sock");
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let caller = MeterCaller { tenant: tenant.id.clone(), agent: AgentId::new() };
    let router = clawpen_meter::router::router(meter.clone(), caller.clone());
    let runs = Some((&*meter, &caller));
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let flusher = tokio::spawn(meter.clone().run_flusher());
    let bare_socket = dir.path().join("passthrough.sock");
    let bare_listener = tokio::net::UnixListener::bind(&bare_socket)?;
    let bare_router = passthrough(&format!("{}/v1", instant.base_url()), &key)?;
    let bare_server = tokio::spawn(async move { axum::serve(bare_listener, bare_router).await });

    let meter_target = Target::Unix(socket);
    let bare_target = Target::Unix(bare_socket);
    let auth = Some(format!("Bearer {key}"));
    let path = "/v1/chat/completions";
    let mut cases = Vec::new();
    for (name, c, stream, saturated) in [("c1", 1usize, false, false), ("c64", 64, false, false), ("c1-stream", 1, true, false), ("c64-stream", 64, true, false), ("c64-saturated", 64, false, true)] {
        eprintln!("meter bench: case {name}");
        let (standin, model) = if saturated { (&instant, "bench-instant") } else { (&provider, "bench-model") };
        let direct_target = Target::Tcp(standin.base_url().trim_start_matches("http://").parse()?);
        let body = request_body(model, stream);
        let spread = Duration::from_millis(if saturated { 0 } else { upstream_ms });
        // Warm every path (connections, the account row, the stand-in).
        batch(&meter_target, path, None, body.clone(), c.min(8), 3, spread, runs).await?;
        batch(&direct_target, path, auth.clone(), body.clone(), c.min(8), 3, spread, None).await?;
        if saturated {
            batch(&bare_target, path, None, body.clone(), c.min(8), 3, spread, None).await?;
        }
        // A call that waits on the provider takes its latency: those cases make a quarter of
        // the requests, so that the whole bench stays near a minute and a half.
        let per_worker = if saturated { requests } else { requests.div_ceil(4) };
        let per_round = per_worker.div_ceil(ROUNDS).max(1);
        let (mut ours, mut base, mut bare, mut wall, mut bare_wall) = (Vec::new(), Vec::new(), Vec::new(), 0.0, 0.0);
        for _ in 0..ROUNDS {
            let (m, w) = batch(&meter_target, path, None, body.clone(), c, per_round, spread, runs).await?;
            ours.extend(m);
            wall += w;
            let (d, _) = batch(&direct_target, path, auth.clone(), body.clone(), c, per_round, spread, None).await?;
            base.extend(d);
            if saturated {
                let (b, w) = batch(&bare_target, path, None, body.clone(), c, per_round, spread, None).await?;
                bare.extend(b);
                bare_wall += w;
            }
        }
        let mut extra = serde_json::Map::new();
        extra.insert("concurrency".into(), json!(c));
        extra.insert("stream".into(), json!(stream));
        extra.insert("upstream_ms".into(), json!(if saturated { 0 } else { upstream_ms }));
        extra.insert("rps".into(), json!(round2(ours.len() as f64 / wall)));
        extra.insert("p999_ms".into(), json!(round2(percentile(&ours, 99.9))));
        if saturated {
            let p99 = |v: &[f64]| percentile(v, 99.0);
            extra.insert("passthrough_p50_ms".into(), json!(round2(percentile(&bare, 50.0))));
            extra.insert("passthrough_p99_ms".into(), json!(round2(p99(&bare))));
            extra.insert("passthrough_overhead_p99_ms".into(), json!(round2(p99(&bare) - p99(&base))));
            extra.insert("passthrough_rps".into(), json!(round2(bare.len() as f64 / bare_wall)));
        }
        cases.push(Case { name: name.into(), samples_ms: ours, baseline_ms: Some(base), extra });
    }
    server.abort();
    bare_server.abort();
    // Every call was charged and the lease released: nothing stays held.
    meter.quiesce(Duration::from_secs(5)).await;
    flusher.abort();
    let open = store.open_holds(&tenant.id).await?;
    anyhow::ensure!(open == 0, "{open} holds left open after the bench");
    drop((provider, instant));
    Ok(cases)
}
