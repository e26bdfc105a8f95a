//! `clawpen bench tools`: what the broker adds to an integration tool call. In process: a real
//! SQLite store on a temp dir, a vault with a fresh keyring, the Google provider stand-in, and a
//! broker with the tenant's Calendar tools enabled and Google connected through the stand-in's
//! consent redirect. The broker's routes are served on a Unix socket by the server's own
//! `control.sock` loop (one request per connection), and called with the agent's own client
//! (`clawpen_agent::broker_client::call`, a fresh connection per call).
//!
//! - `call`: `calendar_get_event` with a different event each time, so that every call reaches
//!   the stand-in; baseline: the same `GET /calendar/v3/calendars/primary/events/{id}` straight
//!   to the stand-in with the access token, on a pooled keep-alive client as the broker's own.
//! - `cached`: the same call with the same arguments again and again, answered from the broker's
//!   cache (30 s); same baseline.
//!
//! Alternating sample by sample, after a warm-up. At the end the stand-in must have seen every
//! `call` and only the first `cached` one, and the store must hold an audit row for every call.

use std::sync::Arc;
use std::time::Instant;

use clawpen_broker::config::{BrokerConfig, ProviderConfig};
use clawpen_broker::{Broker, Caller, Provider};
use clawpen_core::ids::AgentId;
use clawpen_standin::{CalendarEvent, Content, ProviderKind, ProviderStandin, ProviderStandinConfig};
use clawpen_vault::{Keyring, Vault};
use serde_json::json;

use crate::bench::Case;

/// Calls each way before the samples, per case.
const WARMUP: usize = 20;
const CALENDAR_SCOPE: &str = "https://www.googleapis.com/auth/calendar.readonly";
const MEMBER: &str = "mb_bench";

fn event_path(id: &str) -> String {
    format!("/calendar/v3/calendars/primary/events/{id}")
}

/// Consent through the stand-in's authorize endpoint, which redirects at once with a code.
async fn connect(broker: &Broker, tenant: &clawpen_core::ids::TenantId) -> anyhow::Result<()> {
    let url = broker.begin_connect(tenant, MEMBER, "google").await.map_err(|e| anyhow::anyhow!("begin_connect: {e}"))?;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let res = client.get(&url).send().await?;
    anyhow::ensure!(res.status().as_u16() == 302, "the stand-in's authorize answered {}", res.status());
    let location = res.headers().get("location").and_then(|v| v.to_str().ok()).ok_or_else(|| anyhow::anyhow!("no redirect location"))?;
    let location = reqwest::Url::parse(location)?;
    let q: std::collections::HashMap<String, String> = location.query_pairs().into_owned().collect();
    let (Some(state), Some(code)) = (q.get("state"), q.get("code")) else { anyhow::bail!("the consent redirect has no code: {q:?}") };
    let c = broker.finish_connect(state, code, Some(MEMBER)).await.map_err(|e| anyhow::anyhow!("finish_connect: {e}"))?;
    anyhow::ensure!(c.status == "connected", "the connection is {}", c.status);
    Ok(())
}

/// One tool call through the broker's socket, as the agent makes it; its time in ms.
async fn through(socket: &std::path::Path, run: &str, event: &str) -> anyhow::Result<f64> {
    let args = json!({"event_id": event}).to_string();
    let t0 = Instant::now();
    let out = clawpen_agent::broker_client::call(socket, run, "calendar_get_event", &args).await;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(!out.starts_with("Error") && out.contains(event), "the tool call failed: {out}");
    Ok(ms)
}

/// The same provider request straight to the stand-in; its time in ms.
async fn direct(http: &reqwest::Client, base: &str, token: &str, event: &str) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let res = http.get(format!("{base}{}", event_path(event))).bearer_auth(token).header("accept", "application/json").send().await?;
    let status = res.status();
    let body = res.bytes().await?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(status.is_success(), "the stand-in answered {status}: {}", String::from_utf8_lossy(&body));
    Ok(ms)
}

/// Requests for `event` the stand-in received from the broker (any token but the baseline's).
fn broker_requests(standin: &ProviderStandin, baseline_auth: &str, event: &str) -> usize {
    let path = event_path(event);
    standin.requests().iter().filter(|r| r.path == path && r.authorization.as_deref() != Some(baseline_auth)).count()
}

pub async fn run(requests: usize) -> anyhow::Result<Vec<Case>> {
    anyhow::ensure!(requests >= 1, "--requests must be at least 1");
    let dir = tempfile::Builder::new().prefix("clawpen-bench-tools-").tempdir_in("/tmp")?;
    // One event per `call` (warm-up included) and one for `cached`.
    let events: Vec<CalendarEvent> = (0..requests + WARMUP + 1).map(|i| CalendarEvent::in_hours(&format!("Bench event {i}"), "An event of the bench.", 24)).collect();
    let content = Content { calendar_events: events, ..Content::default() };
    let standin = ProviderStandin::start(ProviderKind::Google, ProviderStandinConfig { content, ..ProviderStandinConfig::default() }).await?;
    let ids: Vec<String> = standin.content().calendar_events.iter().filter(|e| e.summary.starts_with("Bench event ")).map(|e| e.id.clone()).collect();
    anyhow::ensure!(ids.len() == requests + WARMUP + 1, "the stand-in has {} bench events", ids.len());

    let secret = dir.path().join("google.secret");
    std::fs::write(&secret, format!("{}\n", ProviderStandinConfig::default().client_secret))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    let mut google = ProviderConfig::at(Provider::Google, &standin.base_url(), &ProviderStandinConfig::default().client_id, "UNUSED");
    google.client_secret_env = None;
    google.client_secret_file = Some(secret);
    // The broker's defaults (cache 30 s) but for the run's cap: the bench makes all its calls in
    // one run.
    let mut config = BrokerConfig { redirect_uri: Some("https://clawpen.bench/api/v1/integrations/callback".into()), max_calls_per_run: u32::MAX, ..BrokerConfig::default() };
    config.providers.google = Some(google);

    let store = clawpen_store::Store::open_sqlite(&dir.path().join("bench.db")).await?;
    let tenant = store.create_tenant("bench", "bench", 100_000).await?;
    let (keys, _) = Keyring::load(None, &dir.path().join("master.key")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let broker = Arc::new(Broker::new(store.clone(), Vault::new(keys), config).map_err(|e| anyhow::anyhow!("{e}"))?);
    broker.enable_tools(&tenant.id, &["calendar_list_events".into(), "calendar_get_event".into()], None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    connect(&broker, &tenant.id).await?;

    let socket = dir.path().join("control.sock");
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let caller = Caller { tenant: tenant.id.clone(), agent: AgentId::new() };
    // The server's own loop for control.sock: one request per connection, its time bounds.
    let server = tokio::spawn(clawpen_server::control::serve(listener, broker.router(caller), 32, clawpen_server::control::SandboxFds::new(1024)));

    let token = standin.issue_tokens(&[CALENDAR_SCOPE]).access_token;
    let baseline_auth = format!("Bearer {token}");
    // Like the broker's client: pooled, keep-alive, no redirects.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let base = standin.base_url();
    let run = "bench_tools_run";
    let mut calls = 0usize;

    // call: a new event each time.
    eprintln!("tools bench: call, {requests} each way after {WARMUP}");
    let (mut ours, mut baseline) = (Vec::with_capacity(requests), Vec::with_capacity(requests));
    for (i, id) in ids[..requests + WARMUP].iter().enumerate() {
        let t = through(&socket, run, id).await?;
        let d = direct(&http, &base, &token, id).await?;
        calls += 1;
        if i >= WARMUP {
            ours.push(t);
            baseline.push(d);
        }
    }
    let missed: Vec<&String> = ids[..requests + WARMUP].iter().filter(|id| broker_requests(&standin, &baseline_auth, id) != 1).collect();
    anyhow::ensure!(missed.is_empty(), "{} `call`s did not reach the stand-in exactly once (first: {})", missed.len(), missed[0]);
    let mut extra = serde_json::Map::new();
    extra.insert("what".into(), json!("calendar_get_event through the broker's socket (agent's client, a connection per call), a new event each time so every call reaches the provider stand-in; baseline: the same GET straight to the stand-in"));
    extra.insert("provider_requests".into(), json!(requests + WARMUP));
    let mut cases = vec![Case { name: "call".into(), samples_ms: ours, baseline_ms: Some(baseline), extra }];

    // cached: one event, again and again.
    eprintln!("tools bench: cached, {requests} each way after {WARMUP}");
    let id = &ids[requests + WARMUP];
    let (mut ours, mut baseline) = (Vec::with_capacity(requests), Vec::with_capacity(requests));
    for i in 0..requests + WARMUP {
        let t = through(&socket, run, id).await?;
        let d = direct(&http, &base, &token, id).await?;
        calls += 1;
        if i >= WARMUP {
            ours.push(t);
            baseline.push(d);
        }
    }
    let reached = broker_requests(&standin, &baseline_auth, id);
    anyhow::ensure!(reached == 1, "the stand-in saw {reached} `cached` calls; only the first should reach it");
    let mut extra = serde_json::Map::new();
    extra.insert("what".into(), json!("the same calendar_get_event again and again, answered from the broker's cache; baseline: the same GET straight to the stand-in"));
    extra.insert("provider_requests".into(), json!(reached));
    cases.push(Case { name: "cached".into(), samples_ms: ours, baseline_ms: Some(baseline), extra });

    server.abort();
    // Every call was audited.
    let audited = store.tool_calls(&tenant.id, i64::MAX).await?.len();
    anyhow::ensure!(audited == calls, "{audited} tool calls audited of {calls}");
    drop(broker);
    drop(standin);
    Ok(cases)
}
