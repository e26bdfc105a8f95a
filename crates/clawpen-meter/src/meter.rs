//! [`Meter`]: reserve → forward → settle, for each call an agent makes on its control socket.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use clawpen_core::ids::{AgentId, TenantId};
use clawpen_core::plan::Plan;
use clawpen_store::ledger::{CallRecord, Period, Refusal, Reserve};
use clawpen_store::{NewAudit, Store};
use http_body_util::BodyExt;
use rand::RngCore;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::budget::Budgets;
use crate::client::{Conn, UpstreamClient};
use crate::config::{MeterConfig, ModelConfig, Provider, Upstream};
use crate::price;
use crate::usage::{self, event_data, SseSplitter, StreamUsage, Usage};

/// Who is calling: fixed by the socket the call came in on, never by anything in the request.
#[derive(Debug, Clone)]
pub struct MeterCaller {
    pub tenant: TenantId,
    pub agent: AgentId,
}

/// Which API the caller speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// Anthropic `POST /v1/messages`.
    Messages,
}

impl Endpoint {
    fn provider(self) -> Provider {
        match self {
            Endpoint::ChatCompletions => Provider::Openai,
            Endpoint::Messages => Provider::Anthropic,
        }
    }
}

pub struct Meter {
    store: Store,
    config: MeterConfig,
    upstreams: BTreeMap<String, Arc<Upstream>>,
    plans: BTreeMap<String, Plan>,
    default_plan: String,
    http: UpstreamClient,
    /// Each tenant's lease, the calls carved from it, and the settled calls still to charge.
    budgets: Budgets,
    /// Tenants whose account is known to exist (saves a write per call).
    accounts_open: Mutex<HashSet<TenantId>>,
    /// Each agent's runs of the last hour, read from the store on its first call here; new
    /// ones are written by the flusher with the settled calls.
    runs: Mutex<HashMap<AgentId, AgentRuns>>,
    /// Each tenant's plan name, read once; [`Meter::plan_changed`] drops an entry.
    plan_names: Mutex<HashMap<TenantId, String>>,
}

/// An agent's runs of the last hour (run id → start), and those not yet in the store.
#[derive(Default)]
struct AgentRuns {
    started: HashMap<String, i64>,
    unwritten: Vec<(String, i64)>,
    /// When runs older than an hour were last dropped.
    pruned_at: i64,
}

/// A refusal or failure, in a body both the agent and the OpenAI/Anthropic SDKs can read.
#[derive(Debug)]
pub struct MeterError {
    status: StatusCode,
    code: &'static str,
    message: String,
    paused_until: Option<i64>,
}

impl MeterError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> MeterError {
        MeterError { status, code, message: message.into(), paused_until: None }
    }
}

impl IntoResponse for MeterError {
    fn into_response(self) -> Response {
        let body = json!({"type": "error", "error": {
            "type": "clawpen_meter", "code": self.code, "message": self.message, "paused_until": self.paused_until,
        }});
        (self.status, axum::Json(body)).into_response()
    }
}

/// Periods (UTC) and the starts of the next day and month, from a Unix time in milliseconds.
pub fn period_at(now_ms: i64) -> (Period, i64, i64) {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(now_ms as i128 * 1_000_000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let date = t.date();
    let next_day = date.next_day().unwrap_or(date).midnight().assume_utc();
    let (y, m) = if date.month() == time::Month::December { (date.year() + 1, time::Month::January) } else { (date.year(), date.month().next()) };
    let next_month = time::Date::from_calendar_date(y, m, 1).unwrap_or(date).midnight().assume_utc();
    let period = Period {
        month: format!("{:04}-{:02}", date.year(), date.month() as u8),
        day: format!("{:04}-{:02}-{:02}", date.year(), date.month() as u8, date.day()),
        now_ms,
    };
    let ms = |t: time::OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
    (period, ms(next_day), ms(next_month))
}

fn format_utc(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), t.month() as u8, t.day(), t.hour(), t.minute())
}

/// A call's (or a lease's) id: the time in milliseconds, then 64 random bits. Ids made later
/// sort later, so the ledger appends rows at the end of its indexes instead of all over them.
fn new_request_id() -> String {
    let mut b = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut b);
    format!("req_{:012x}{}", Meter::now_ms().max(0), hex::encode(b))
}

fn valid_run_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Everything decided about a call before it is forwarded.
struct Prepared {
    id: String,
    model_name: String,
    model: ModelConfig,
    upstream: Arc<Upstream>,
    body: Value,
    stream: bool,
    /// Whether the caller asked for usage in its stream (OpenAI); if not, the meter's own usage
    /// chunk is stripped before the caller sees it.
    caller_wants_usage: bool,
    held: i64,
}

/// How long the flusher waits after the first settled call, so the calls settling meanwhile
/// share its store transaction.
const FLUSH_COALESCE: Duration = Duration::from_millis(20);

impl Meter {
    pub fn new(store: Store, config: MeterConfig, plans: BTreeMap<String, Plan>, default_plan: String) -> Result<Meter, String> {
        let upstreams = config.resolve()?.into_iter().map(|(name, u)| (name, Arc::new(u))).collect();
        let extra_ca = match &config.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| format!("meter.ca_file {}: {e}", path.display()))?),
            None => None,
        };
        let http = UpstreamClient::new(extra_ca.as_deref()).map_err(|e| match &config.ca_file {
            Some(path) => format!("meter.ca_file {}: {e}", path.display()),
            None => e,
        })?;
        let ttl = Duration::from_secs(config.hold_ttl_secs);
        Ok(Meter {
            store: store.clone(),
            config,
            upstreams,
            plans,
            default_plan,
            http,
            budgets: Budgets::new(store.clone(), ttl),
            accounts_open: Mutex::new(HashSet::new()),
            runs: Mutex::new(HashMap::new()),
            plan_names: Mutex::new(HashMap::new()),
        })
    }

    fn now_ms() -> i64 {
        clawpen_store::now_ms()
    }

    async fn plan_of(&self, tenant: &TenantId) -> Result<Plan, MeterError> {
        let cached = self.plan_names.lock().expect("plan names").get(tenant).cloned();
        let name = match cached {
            Some(name) => name,
            None => {
                let t = self.store.get_tenant(tenant).await.map_err(|e| {
                    warn!(error = %e, "meter: tenant lookup failed");
                    MeterError::new(StatusCode::SERVICE_UNAVAILABLE, "meter_unavailable", "the meter cannot read the tenant's plan; try again")
                })?;
                self.plan_names.lock().expect("plan names").insert(tenant.clone(), t.plan.clone());
                t.plan
            }
        };
        Ok(self.plans.get(&name).or_else(|| self.plans.get(&self.default_plan)).cloned().unwrap_or_default())
    }

    /// The operator moved `tenant` to another plan (or deleted it): read its plan again.
    pub fn plan_changed(&self, tenant: &TenantId) {
        self.plan_names.lock().expect("plan names").remove(tenant);
    }

    async fn audit(&self, caller: &MeterCaller, action: &str, reason: &str) {
        let e = NewAudit { tenant: Some(&caller.tenant), agent: Some(&caller.agent), actor: "meter", action, reason, detail: None };
        if let Err(err) = self.store.audit(e).await {
            warn!(error = %err, "meter: cannot write the audit log");
        }
    }

    async fn refuse(&self, caller: &MeterCaller, model: &str, provider: Provider, stream: bool, err: MeterError) -> Response {
        let call = CallRecord {
            id: new_request_id(),
            tenant_id: caller.tenant.to_string(),
            agent_id: caller.agent.to_string(),
            at: Self::now_ms(),
            model: model.to_owned(),
            provider: provider.as_str().to_owned(),
            stream,
            outcome: format!("refused:{}", err.code),
            ..Default::default()
        };
        if let Err(e) = self.store.record_call(&call).await {
            warn!(error = %e, "meter: cannot record a refused call");
        }
        err.into_response()
    }

    /// Handles one call from `caller` on `endpoint`.
    pub async fn handle(self: &Arc<Self>, caller: MeterCaller, endpoint: Endpoint, headers: HeaderMap, body: Bytes) -> Response {
        let parsed: Value = match serde_json::from_slice(&body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return MeterError::new(StatusCode::BAD_REQUEST, "invalid_request", "the body must be a JSON object").into_response(),
        };
        let requested = parsed.get("model").and_then(Value::as_str).unwrap_or("").to_owned();
        let stream = parsed.get("stream").and_then(Value::as_bool).unwrap_or(false);
        match self.prepare(&caller, endpoint, &headers, parsed, body.len()).await {
            Ok(p) => self.forward(caller, endpoint, headers, p).await,
            Err(e) => self.refuse(&caller, &requested, endpoint.provider(), stream, e).await,
        }
    }

    /// Validates, clamps, admits the run and reserves. On success the hold exists.
    async fn prepare(&self, caller: &MeterCaller, endpoint: Endpoint, headers: &HeaderMap, mut body: Value, body_len: usize) -> Result<Prepared, MeterError> {
        let invalid = |m: String| MeterError::new(StatusCode::BAD_REQUEST, "invalid_request", m);
        let requested = body.get("model").and_then(Value::as_str).ok_or_else(|| invalid("model: required".into()))?.to_owned();
        if !body.get("messages").is_some_and(Value::is_array) {
            return Err(invalid("messages: required, an array".into()));
        }
        if self.config.models.is_empty() {
            return Err(MeterError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_model",
                "No language model is configured on this server yet; the operator adds one under [meter] in clawpen.toml (see docs/CONFIG.md).",
            ));
        }
        let model_name = match (requested.as_str(), &self.config.default_model) {
            ("default", Some(d)) => d.clone(),
            _ => requested.clone(),
        };
        let model = self.config.models.get(&model_name).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.config.models.keys().map(String::as_str).collect();
            invalid(format!("model: {requested:?} is not offered; offered: {}", known.join(", ")))
        })?;
        let upstream = Arc::clone(&self.upstreams[&model.upstream]);
        if upstream.provider != endpoint.provider() {
            return Err(invalid(format!("model {model_name} is served by the {} API, not this one", upstream.provider.as_str())));
        }
        let plan = self.plan_of(&caller.tenant).await?;
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);

        // Max tokens: the request's, clamped by the plan; the plan's when the request has none.
        let obj = body.as_object_mut().expect("checked to be an object");
        let field = if obj.contains_key("max_completion_tokens") { "max_completion_tokens" } else { "max_tokens" };
        let asked = obj.get(field).and_then(Value::as_i64);
        if asked.is_some_and(|n| n < 1) {
            return Err(invalid(format!("{field}: must be at least 1")));
        }
        let max_tokens = asked.unwrap_or(plan.max_tokens as i64).min(plan.max_tokens as i64);
        obj.insert(field.to_owned(), json!(max_tokens));
        obj.insert("model".to_owned(), json!(model.upstream_model.clone().unwrap_or_else(|| model_name.clone())));
        let mut caller_wants_usage = true;
        if endpoint == Endpoint::ChatCompletions && stream {
            caller_wants_usage = obj.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
            let opts = obj.entry("stream_options").or_insert_with(|| json!({}));
            if let Some(o) = opts.as_object_mut() {
                o.insert("include_usage".to_owned(), json!(true));
            }
        }

        let now = Self::now_ms();
        let (period, _, next_month) = period_at(now);
        let id = new_request_id();
        let run = headers.get("x-clawpen-run").and_then(|v| v.to_str().ok()).filter(|r| valid_run_id(r)).unwrap_or(&id).to_owned();
        let db = |e: clawpen_store::StoreError| {
            warn!(error = %e, "meter: store error");
            MeterError::new(StatusCode::SERVICE_UNAVAILABLE, "meter_unavailable", "the meter cannot reach its ledger; try again")
        };
        if !self.admit_run(caller, &run, &plan, now).await.map_err(db)? {
            return Err(MeterError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("This agent already handled {} requests in the last hour, the most its plan allows; try again later.", plan.runs_per_hour),
            ));
        }
        if !self.accounts_open.lock().expect("accounts set").contains(&caller.tenant) {
            self.store.ensure_account(&caller.tenant, plan.initial_credits, &period).await.map_err(db)?;
            self.accounts_open.lock().expect("accounts set").insert(caller.tenant.clone());
        }
        let held = price::estimate(&model, body_len, max_tokens);
        let reserve = Reserve {
            hold_id: &id,
            tenant: &caller.tenant,
            agent: &caller.agent,
            amount: held,
            monthly_cap: plan.monthly_cap,
            expires_at: now + self.config.hold_ttl_secs as i64 * 1000,
        };
        let outcome = self.budgets.carve(&reserve, &period, new_request_id).await;
        let refusal = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(r)) => Some(r),
            Err(e) => return Err(db(e)),
        };
        if let Some(r) = refusal {
            return Err(self.refusal(caller, r, next_month).await);
        }
        Ok(Prepared { id, model_name, model, upstream, body, stream, caller_wants_usage, held })
    }

    /// Admits a run against the plan's runs per hour, in memory: an agent's runs are read from
    /// the store on its first call in this process, and new ones are written in the flusher's
    /// next batch (a crash can forget the last few, never refuse wrongly).
    async fn admit_run(&self, caller: &MeterCaller, run: &str, plan: &Plan, now: i64) -> clawpen_store::Result<bool> {
        let hour_ago = now - 3_600_000;
        let known = self.runs.lock().expect("runs").contains_key(&caller.agent);
        if !known {
            let seen = self.store.runs_since(&caller.agent, hour_ago).await?;
            self.runs.lock().expect("runs").entry(caller.agent.clone()).or_insert_with(|| AgentRuns { started: seen.into_iter().collect(), unwritten: Vec::new(), pruned_at: now });
        }
        let mut all = self.runs.lock().expect("runs");
        let agent = all.get_mut(&caller.agent).expect("read above");
        if agent.started.contains_key(run) {
            return Ok(true);
        }
        // Runs older than an hour are dropped when they would count, and once a minute anyway.
        let max = plan.runs_per_hour as usize;
        if agent.started.len() >= max || now >= agent.pruned_at + 60_000 {
            agent.started.retain(|_, at| *at > hour_ago);
            agent.pruned_at = now;
            if agent.started.len() >= max {
                return Ok(false);
            }
        }
        agent.started.insert(run.to_owned(), now);
        agent.unwritten.push((run.to_owned(), now));
        Ok(true)
    }

    /// Writes the runs admitted since the last flush.
    async fn write_runs(&self) {
        let rows: Vec<(AgentId, String, i64)> = {
            let mut all = self.runs.lock().expect("runs");
            all.iter_mut().flat_map(|(agent, r)| std::mem::take(&mut r.unwritten).into_iter().map(move |(run, at)| (agent.clone(), run, at))).collect()
        };
        if rows.is_empty() {
            return;
        }
        if let Err(e) = self.store.record_runs(&rows).await {
            warn!(error = %e, runs = rows.len(), "meter: cannot record admitted runs; will retry");
            let mut all = self.runs.lock().expect("runs");
            for (agent, run, at) in rows {
                if let Some(r) = all.get_mut(&agent) {
                    r.unwritten.push((run, at));
                }
            }
        }
    }

    async fn refusal(&self, caller: &MeterCaller, r: Refusal, next_month: i64) -> MeterError {
        match r {
            Refusal::Paused { until, reason } => {
                let when = until.map(|u| format!(" It resumes on {}.", format_utc(u))).unwrap_or_default();
                MeterError { paused_until: until, ..MeterError::new(StatusCode::PAYMENT_REQUIRED, "agent_paused", format!("This agent is paused: {reason}.{when}")) }
            }
            Refusal::MonthlyCap { .. } => {
                let reason = "the monthly credit cap of its plan is reached";
                if let Err(e) = self.store.pause_account(&caller.tenant, Some(next_month), reason).await {
                    warn!(error = %e, "meter: cannot record a pause");
                }
                self.audit(caller, "tenant.paused", &format!("{reason}; until {}", format_utc(next_month))).await;
                info!(tenant = %caller.tenant, "monthly cap reached; paused until the next month");
                MeterError {
                    paused_until: Some(next_month),
                    ..MeterError::new(StatusCode::PAYMENT_REQUIRED, "cap_reached", format!("This agent is paused: {reason}. It resumes on {}.", format_utc(next_month)))
                }
            }
            Refusal::InsufficientCredits { .. } => MeterError::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_credits",
                "This agent is out of credits for now; the operator can add credits.",
            ),
        }
    }

    fn upstream_request(&self, endpoint: Endpoint, headers: &HeaderMap, p: &Prepared) -> Result<hyper::Request<http_body_util::Full<Bytes>>, String> {
        let base = &p.upstream.base;
        let body = serde_json::to_vec(&p.body).map_err(|e| e.to_string())?;
        let key = p.upstream.key.expose();
        let req = hyper::Request::post(base.path(match endpoint {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Messages => "/messages",
        }))
        .header("host", base.authority())
        .header("content-type", "application/json");
        let req = match endpoint {
            Endpoint::ChatCompletions => req.header("authorization", format!("Bearer {key}")),
            Endpoint::Messages => {
                let version = headers.get("anthropic-version").cloned().unwrap_or(HeaderValue::from_static("2023-06-01"));
                let req = req.header("x-api-key", key).header("anthropic-version", version);
                match headers.get("anthropic-beta") {
                    Some(beta) => req.header("anthropic-beta", beta.clone()),
                    None => req,
                }
            }
        };
        // The error names neither the key nor the value that failed (only that one did).
        req.body(http_body_util::Full::new(Bytes::from(body))).map_err(|_| "a header for the provider is not valid".to_owned())
    }

    async fn forward(self: &Arc<Self>, caller: MeterCaller, endpoint: Endpoint, headers: HeaderMap, p: Prepared) -> Response {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.config.upstream_timeout_secs);
        let req = match self.upstream_request(endpoint, &headers, &p) {
            Ok(r) => r,
            Err(e) => {
                self.close(&caller, &p, None, "invalid_request", true).await;
                return MeterError::new(StatusCode::BAD_REQUEST, "invalid_request", e).into_response();
            }
        };
        let sent = match tokio::time::timeout_at(deadline, self.http.send(&p.upstream.base, req)).await {
            Ok(Ok(r)) => r,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer in time".to_owned(),
                };
                warn!(error = %why, upstream = %p.upstream.name, "meter: upstream unreachable");
                self.close(&caller, &p, None, "upstream_unreachable", true).await;
                return MeterError::new(StatusCode::BAD_GATEWAY, "upstream_unreachable", "the model provider could not be reached; try again").into_response();
            }
        };
        let (resp, mut conn) = sent;
        let status = resp.status();
        let content_type = resp.headers().get("content-type").cloned();
        if status.is_success() && p.stream {
            return self.forward_stream(caller, endpoint, p, resp.into_body(), conn, deadline, content_type);
        }
        let read = tokio::time::timeout_at(deadline, conn.drive(resp.into_body().collect())).await;
        let body = match read {
            Ok(Ok(Ok(b))) => {
                self.http.checkin(conn);
                b.to_bytes()
            }
            failed => {
                let why = match failed {
                    Ok(Ok(Err(e))) => e.to_string(),
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer in time".to_owned(),
                };
                warn!(error = %why, "meter: upstream body broke");
                // Generated but not delivered: charge the hold, never 0 (unless the provider
                // had refused, when nothing was generated).
                self.close(&caller, &p, None, "upstream_broken", !status.is_success()).await;
                return MeterError::new(StatusCode::BAD_GATEWAY, "upstream_broken", "the model provider's answer broke off").into_response();
            }
        };
        if !status.is_success() {
            // The provider refused: nothing was generated, nothing is charged.
            self.close(&caller, &p, None, &format!("upstream_error:{}", status.as_u16()), true).await;
            let mut r = Response::new(Body::from(body));
            *r.status_mut() = status;
            if let Some(ct) = content_type {
                r.headers_mut().insert("content-type", ct);
            }
            return r;
        }
        // Only `usage` is built; the rest of the answer (the generated text) is skipped over.
        #[derive(serde::Deserialize)]
        struct UsageOnly {
            usage: Option<Value>,
        }
        let usage = serde_json::from_slice::<UsageOnly>(&body).ok().and_then(|v| v.usage).filter(Value::is_object).map(|u| match endpoint {
            Endpoint::ChatCompletions => usage::openai(&u),
            Endpoint::Messages => usage::anthropic(&u),
        });
        // Settled in memory here (the store is written by the flusher, in batches): cheaper
        // than a task of its own, which would cost a wake-up per call.
        self.close(&caller, &p, usage, "ok", false).await;
        let mut r = Response::new(Body::from(body));
        r.headers_mut().insert("content-type", content_type.unwrap_or(HeaderValue::from_static("application/json")));
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_stream(
        self: &Arc<Self>,
        caller: MeterCaller,
        endpoint: Endpoint,
        p: Prepared,
        mut upstream: hyper::body::Incoming,
        mut conn: Conn,
        deadline: tokio::time::Instant,
        content_type: Option<HeaderValue>,
    ) -> Response {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
        let meter = Arc::clone(self);
        let drain = Duration::from_secs(self.config.drain_secs);
        tokio::spawn(async move {
            let mut splitter = SseSplitter::default();
            let mut seen = StreamUsage::default();
            let mut client_gone_at: Option<tokio::time::Instant> = None;
            let mut broken = false;
            loop {
                // The client left: keep reading (bounded) to learn what was generated.
                let until = client_gone_at.map_or(deadline, |at| deadline.min(at + drain));
                let next = match tokio::time::timeout_at(until, conn.drive(upstream.frame())).await {
                    Ok(Ok(n)) => n.map(|r| r.map_err(|e| e.to_string())),
                    Ok(Err(e)) => Some(Err(e.to_string())),
                    Err(_) if client_gone_at.is_some() => break,
                    Err(_) => Some(Err("no end in time".to_owned())),
                };
                let chunk = match next {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(c) => c,
                        Err(_) => continue,
                    },
                    Some(Err(e)) => {
                        warn!(error = %e, "meter: upstream stream broke");
                        broken = true;
                        break;
                    }
                    None => {
                        meter.http.checkin(conn);
                        break;
                    }
                };
                for event in splitter.push(&chunk) {
                    let out = rewrite_event(endpoint, &event, &mut seen, p.caller_wants_usage);
                    if let (Some(out), None) = (out, client_gone_at) {
                        if tx.send(Ok(out)).await.is_err() {
                            client_gone_at = Some(tokio::time::Instant::now());
                        }
                    }
                }
            }
            let rest = splitter.rest();
            if !rest.is_empty() && client_gone_at.is_none() {
                let _ = tx.send(Ok(Bytes::from(rest))).await;
            }
            drop(tx);
            let outcome = match (client_gone_at, broken) {
                (Some(_), _) => "client_aborted",
                (None, true) => "upstream_broken",
                _ => "ok",
            };
            meter.close(&caller, &p, seen.usage(), outcome, false).await;
        });
        let mut r = Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)));
        r.headers_mut().insert("content-type", content_type.unwrap_or(HeaderValue::from_static("text/event-stream")));
        r.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache"));
        r
    }

    /// Settles (from `usage`, or at the whole hold when a call generated without telling how
    /// much) or voids the call's hold, then applies the daily soft cap.
    async fn close(&self, caller: &MeterCaller, p: &Prepared, usage: Option<Usage>, outcome: &str, void: bool) {
        let now = Self::now_ms();
        let u = usage.unwrap_or_default();
        let cost = match (void, usage) {
            (true, _) => 0,
            (false, Some(u)) => price::cost(&p.model, &u),
            // No usage came back for a call that did generate: never settle at 0.
            (false, None) => p.held,
        }
        .min(p.held);
        let call = CallRecord {
            id: p.id.clone(),
            tenant_id: caller.tenant.to_string(),
            agent_id: caller.agent.to_string(),
            at: now,
            model: p.model_name.clone(),
            provider: p.upstream.provider.as_str().to_owned(),
            stream: p.stream,
            input_tokens: u.input,
            output_tokens: u.output,
            cache_read: u.cache_read,
            cache_write: u.cache_write,
            cost,
            held: p.held,
            outcome: outcome.to_owned(),
        };
        self.budgets.settle(&caller.tenant, p.held, call).await;
    }

    /// Charges settled calls in the store (in batches, as they come) and releases idle leases,
    /// until the task is dropped. A tenant past its daily soft cap is paused until the next day.
    pub async fn run_flusher(self: Arc<Self>) {
        loop {
            self.budgets.wait_dirty(crate::budget::RELEASE_AFTER).await;
            // Let the calls settling meanwhile join this batch: one store transaction for many
            // calls instead of one each (and no wake-up of this task per call under load).
            tokio::time::sleep(FLUSH_COALESCE).await;
            self.flush_once().await;
        }
    }

    /// One flush (see [`Meter::run_flusher`]).
    pub async fn flush_once(&self) {
        self.write_runs().await;
        let now = Self::now_ms();
        let (period, next_day, _) = period_at(now);
        for f in self.budgets.flush(&period).await {
            let Ok(plan) = self.plan_of(&f.tenant).await else { continue };
            if plan.daily_cap > 0 && f.settled.day_spent >= plan.daily_cap {
                let reason = "the daily credit limit of its plan is reached";
                if let Err(e) = self.store.pause_account(&f.tenant, Some(next_day), reason).await {
                    warn!(error = %e, "meter: cannot record a pause");
                }
                let agent = AgentId::parse(&f.last.agent_id).unwrap_or_else(|_| AgentId::new());
                let caller = MeterCaller { tenant: f.tenant.clone(), agent };
                self.audit(&caller, "tenant.paused", &format!("{reason}; until {}", format_utc(next_day))).await;
            }
        }
    }

    /// Charges what waits to be charged and releases idle leases, until none is open or
    /// `max` passes (at shutdown).
    pub async fn quiesce(&self, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            self.flush_once().await;
            if self.budgets.is_quiet().await || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Voids the holds whose time ran out and whose call is not running here (a crash left them).
    /// Returns how many were voided.
    pub async fn sweep_once(&self) -> usize {
        let now = Self::now_ms();
        let expired = match self.store.expired_holds(now).await {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "sweeper: cannot list holds");
                return 0;
            }
        };
        let (period, _, _) = period_at(now);
        let mut voided = 0;
        for (id, tenant, agent) in expired {
            if self.budgets.owns(&id) {
                continue;
            }
            let call = CallRecord { id: id.clone(), tenant_id: tenant, agent_id: agent, at: now, model: String::new(), provider: String::new(), outcome: "expired".into(), ..Default::default() };
            match self.store.close_hold(&id, &call, true, &period).await {
                Ok(s) if s.applied => {
                    info!(hold = %id, "sweeper: voided an expired hold");
                    voided += 1;
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, hold = %id, "sweeper: cannot void"),
            }
        }
        voided
    }

    /// Runs the sweeper until the task is dropped.
    pub async fn run_sweeper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(self.config.sweep_secs.max(1)));
        loop {
            tick.tick().await;
            self.sweep_once().await;
        }
    }
}

/// What to pass on of one upstream event: unchanged, rewritten (OpenAI's usage fields removed
/// when the caller did not ask for them), or nothing (the usage chunk itself).
fn rewrite_event(endpoint: Endpoint, event: &[u8], seen: &mut StreamUsage, caller_wants_usage: bool) -> Option<Bytes> {
    let Some(data) = event_data(event) else { return Some(Bytes::copy_from_slice(event)) };
    let Ok(mut v) = serde_json::from_str::<Value>(&data) else { return Some(Bytes::copy_from_slice(event)) };
    match endpoint {
        Endpoint::Messages => {
            seen.observe_anthropic(&v);
            Some(Bytes::copy_from_slice(event))
        }
        Endpoint::ChatCompletions => {
            seen.observe_openai(&v);
            if caller_wants_usage {
                return Some(Bytes::copy_from_slice(event));
            }
            let is_usage_chunk = v.get("choices").and_then(Value::as_array).is_some_and(Vec::is_empty) && v.get("usage").is_some_and(Value::is_object);
            if is_usage_chunk {
                return None;
            }
            match v.as_object_mut().and_then(|o| o.remove("usage")) {
                Some(_) => Some(Bytes::from(format!("data: {v}\n\n"))),
                None => Some(Bytes::copy_from_slice(event)),
            }
        }
    }
}
