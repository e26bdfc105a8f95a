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
use futures_util::FutureExt;
use http_body_util::BodyExt;
use rand::RngCore;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::budget::Budgets;
use crate::byok::{self, TenantKey, TenantKeys};
use crate::client::{Conn, UpstreamClient};
use crate::config::{MeterConfig, ModelConfig, Provider, Secret, Upstream};
use crate::refusals::{Refusals, Refused, ToWrite};
use crate::request;
use crate::runs::{CallRefusal, Runs};
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
    pub fn provider(self) -> Provider {
        match self {
            Endpoint::ChatCompletions => Provider::Openai,
            Endpoint::Messages => Provider::Anthropic,
        }
    }
}

pub struct Meter {
    /// Tenants' own provider keys (the server's), and what was learned of each.
    tenant_keys: std::sync::RwLock<Option<Arc<dyn TenantKeys>>>,
    own_keys: Mutex<HashMap<(TenantId, Provider), Option<TenantKey>>>,
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
    /// Runs the server opened, per agent: a model call is accepted only inside one. New runs are
    /// written by the flusher with the settled calls.
    runs: Runs,
    /// Refused calls, counted in memory; the flusher writes at most a row and a line per agent,
    /// code and minute.
    refusals: Refusals,
    /// Each tenant's plan name, read once; [`Meter::plan_changed`] drops an entry.
    plan_names: Mutex<HashMap<TenantId, String>>,
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

    /// The HTTP status to answer with (429 `rate_limited` for a run past the hourly limit).
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code (`rate_limited`, `no_run`, `cap_headroom`, …).
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// What to tell the user, in a sentence that says what to do.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for MeterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
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

pub(crate) fn format_utc(ms: i64) -> String {
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
    /// The body sent upstream: the allowed fields only (see [`crate::request`]).
    body: Bytes,
    stream: bool,
    /// Whether the caller asked for usage in its stream (OpenAI); if not, the meter's own usage
    /// chunk is stripped before the caller sees it.
    caller_wants_usage: bool,
    /// The max tokens sent upstream.
    max_tokens: i64,
    /// The most input tokens the call can be billed for, images included.
    input_tokens_max: i64,
    /// The model generates output a stream does not show (see [`request::Checked::hidden_output`] and
    /// [`ModelConfig::reasoning`]).
    hidden_output: bool,
    /// Sent upstream as `anthropic-version` (Anthropic only).
    anthropic_version: String,
    held: i64,
    /// The tenant's own key for the provider, when it saved one: sent instead of the platform's,
    /// and the call is charged `held` (the plan's fee per call) whatever its usage.
    own_key: Option<Secret>,
}

/// How long the flusher waits after the first settled call, so the calls settling meanwhile
/// share its store transaction.
const FLUSH_COALESCE: Duration = Duration::from_millis(20);

/// How long a call whose hold does not fit under the monthly cap waits for the tenant's calls in
/// flight to settle and give back what they held beyond their cost.
const CAP_WAIT: Duration = Duration::from_secs(3);

/// Output tokens a stream cut short may have generated beyond what the meter saw: those on their
/// way (in the provider's buffers and the network) when the meter closed the connection.
pub const IN_FLIGHT_TOKENS: i64 = 64;

const HOUR_MS: i64 = 3_600_000;

/// What a refused call was, for its count: the model it asked for and whether it streamed.
#[derive(Default)]
struct Asked {
    model: String,
    stream: bool,
}

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
            runs: Runs::default(),
            refusals: Refusals::default(),
            plan_names: Mutex::new(HashMap::new()),
            tenant_keys: std::sync::RwLock::new(None),
            own_keys: Mutex::new(HashMap::new()),
        })
    }

    /// Where tenants' own provider keys are found (see [`crate::byok`]); without it every call
    /// goes on the platform's keys.
    pub fn set_tenant_keys(&self, keys: Arc<dyn TenantKeys>) {
        *self.tenant_keys.write().expect("tenant keys") = Some(keys);
        self.own_keys.lock().expect("own keys").clear();
    }

    /// The tenant saved or removed its key for `provider`: the next call looks it up again.
    pub fn forget_tenant_key(&self, tenant: &TenantId, provider: Provider) {
        self.own_keys.lock().expect("own keys").remove(&(tenant.clone(), provider));
    }

    async fn tenant_key(&self, tenant: &TenantId, provider: Provider) -> Result<Option<TenantKey>, MeterError> {
        let Some(keys) = self.tenant_keys.read().expect("tenant keys").clone() else { return Ok(None) };
        if let Some(known) = self.own_keys.lock().expect("own keys").get(&(tenant.clone(), provider)) {
            return Ok(known.clone());
        }
        let found = keys.lookup(tenant, provider).await.map_err(|e| {
            warn!(tenant = %tenant, provider = provider.as_str(), error = %e, "meter: cannot read the tenant's own key");
            MeterError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the account's own provider key cannot be read right now; try again")
        })?;
        self.own_keys.lock().expect("own keys").insert((tenant.clone(), provider), found.clone());
        Ok(found)
    }

    /// The provider refused `key`, the tenant's key a call went with: unless the tenant has
    /// saved another since, its use stops.
    async fn key_rejected(&self, tenant: &TenantId, provider: Provider, key: &Secret, reason: &str) {
        warn!(tenant = %tenant, provider = provider.as_str(), reason, "meter: the provider refused the tenant's own key; its use stops until a new one is saved");
        {
            let mut known = self.own_keys.lock().expect("own keys");
            let slot = (tenant.clone(), provider);
            // A key saved since (the cache forgot the old one) is not the one refused.
            if let Some(Some(TenantKey::Active(k))) = known.get(&slot) {
                if k == key {
                    known.insert(slot, Some(TenantKey::Rejected(reason.to_owned())));
                }
            }
        }
        let keys = self.tenant_keys.read().expect("tenant keys").clone();
        if let Some(keys) = keys {
            keys.rejected(tenant, provider, key, reason).await;
        }
    }

    fn now_ms() -> i64 {
        clawpen_store::now_ms()
    }

    fn run_ttl_ms(&self) -> i64 {
        (self.config.run_ttl_secs as i64).saturating_mul(1000)
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

    /// Pauses the tenant's agents in the store until `until`, makes its calls ask the store from
    /// now on (so none is carved from what its lease still holds), and audits why.
    async fn pause(&self, caller: &MeterCaller, until: i64, reason: &str, detail: &str) {
        if let Err(e) = self.store.pause_account(&caller.tenant, Some(until), reason).await {
            warn!(error = %e, "meter: cannot record a pause");
        }
        self.budgets.ask_store(&caller.tenant);
        self.audit(caller, "tenant.paused", &format!("{detail}; until {}", format_utc(until))).await;
        info!(tenant = %caller.tenant, reason, "meter: tenant paused");
    }

    /// Opens a run for `caller`'s agent: one piece of work the server started (a user's message),
    /// inside which the agent's model calls are accepted (`x-clawpen-run: <id>`), at most the
    /// plan's `max_calls_per_run` of them, until `run_ttl_secs` pass or [`Meter::close_run`].
    /// Refused with 429 `rate_limited` past the plan's runs per hour. The run is written to the
    /// store with the flusher's next batch.
    pub async fn open_run(&self, caller: &MeterCaller) -> Result<String, MeterError> {
        let plan = self.plan_of(&caller.tenant).await?;
        let now = Self::now_ms();
        self.load_runs(&caller.agent, now).await?;
        let run = self.runs.open(&caller.agent, plan.runs_per_hour, now, self.run_ttl_ms()).ok_or_else(|| {
            MeterError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("This agent already handled {} requests in the last hour, the most its plan allows; try again later.", plan.runs_per_hour),
            )
        })?;
        // The run's first call comes next: its lease is opened while the agent builds its prompt.
        if self.accounts_open.lock().expect("accounts set").contains(&caller.tenant) {
            self.budgets.open_ahead(&caller.tenant, &caller.agent, plan.monthly_cap, &period_at(now).0, new_request_id);
        }
        Ok(run)
    }

    /// Keeps `tenant`'s lease between messages while the returned guard lives (a chat
    /// connection): see [`crate::budget::Budgets::pin`].
    pub fn keep_lease(self: &Arc<Self>, tenant: &TenantId) -> LeaseKept {
        self.budgets.pin(tenant);
        LeaseKept { meter: Arc::clone(self), tenant: tenant.clone() }
    }

    /// Admits one integration tool call of `caller` in its open run `run` (at most `max_calls`
    /// per run). Refused like a model call outside a run: 403 `no_run`, 429 `run_exhausted`.
    pub async fn admit_tool_call(&self, caller: &MeterCaller, run: &str, max_calls: u32) -> Result<(), MeterError> {
        let now = Self::now_ms();
        let no_run = || MeterError::new(StatusCode::FORBIDDEN, "no_run", "Tools are called only during a run the server started: a user's message. This call names no open run of this agent.");
        if !valid_run_id(run) {
            return Err(no_run());
        }
        self.load_runs(&caller.agent, now).await?;
        match self.runs.admit_tool_call(&caller.agent, run, max_calls, now) {
            Ok(()) => Ok(()),
            Err(crate::runs::CallRefusal::NoRun) => Err(no_run()),
            Err(crate::runs::CallRefusal::Exhausted) => Err(MeterError::new(StatusCode::TOO_MANY_REQUESTS, "run_exhausted", format!("This request already made {max_calls} tool calls, the most a request may make."))),
        }
    }

    /// Closes `agent`'s run `run`: its model calls are refused from now on. (It still counts for
    /// the hour.) Closing a run that is not open changes nothing.
    pub fn close_run(&self, agent: &AgentId, run: &str) {
        self.runs.close(agent, run);
    }

    /// Reads `agent`'s runs of the last hour from the store, the first time it is seen here.
    async fn load_runs(&self, agent: &AgentId, now: i64) -> Result<(), MeterError> {
        if self.runs.known(agent) {
            return Ok(());
        }
        let seen = self.store.runs_since(agent, now - HOUR_MS).await.map_err(store_down)?;
        self.runs.load(agent, seen, now, self.run_ttl_ms());
        Ok(())
    }

    /// Admits one model call in the run its `x-clawpen-run` header names.
    async fn admit_call(&self, caller: &MeterCaller, run: &str, plan: &Plan, now: i64) -> Result<(), MeterError> {
        let no_run = || {
            MeterError::new(
                StatusCode::FORBIDDEN,
                "no_run",
                "Model calls are made only during a run the server started: a user's message. This call's x-clawpen-run names no open run of this agent.",
            )
        };
        if !valid_run_id(run) {
            return Err(no_run());
        }
        self.load_runs(&caller.agent, now).await?;
        self.runs.admit_call(&caller.agent, run, plan.max_calls_per_run, now).map_err(|r| match r {
            CallRefusal::NoRun => no_run(),
            CallRefusal::Exhausted => MeterError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "run_exhausted",
                format!("This run already made {} model calls, the most its plan allows for one message; the next message starts a new run.", plan.max_calls_per_run),
            ),
        })
    }

    /// Handles one call from `caller` on `endpoint`.
    pub async fn handle(self: &Arc<Self>, caller: MeterCaller, endpoint: Endpoint, headers: HeaderMap, body: Bytes) -> Response {
        let now = Self::now_ms();
        let mut asked = Asked::default();
        match self.prepare(&caller, endpoint, &headers, &body, now, &mut asked).await {
            Ok(p) => self.forward(caller, endpoint, p).await,
            Err(e) => {
                // Counted in memory: a flood of refusals costs no store write each.
                let refused = Refused { tenant: &caller.tenant, agent: &caller.agent, code: e.code, message: &e.message, model: &asked.model, provider: endpoint.provider().as_str(), stream: asked.stream, at: now };
                self.refusals.count(refused, new_request_id);
                e.into_response()
            }
        }
    }

    /// Validates against the allow-list, admits the call in its run and reserves. On success the
    /// hold exists.
    async fn prepare(&self, caller: &MeterCaller, endpoint: Endpoint, headers: &HeaderMap, body: &[u8], now: i64, asked: &mut Asked) -> Result<Prepared, MeterError> {
        let invalid = |m: String| MeterError::new(StatusCode::BAD_REQUEST, "invalid_request", m);
        let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
            return Err(invalid("the body must be a JSON object".into()));
        };
        let requested = request.get("model").and_then(Value::as_str).ok_or_else(|| invalid("model: required, a string".into()))?.to_owned();
        asked.model.clone_from(&requested);
        asked.stream = request.get("stream").and_then(Value::as_bool).unwrap_or(false);
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
        if upstream.provider.api() != endpoint.provider() {
            return Err(invalid(format!("model {model_name} is served by the {} API, not this one", upstream.provider.as_str())));
        }
        let plan = self.plan_of(&caller.tenant).await?;
        if let Some(offered) = plan.models.as_ref().filter(|m| !m.contains(&model_name)) {
            return Err(MeterError::new(StatusCode::FORBIDDEN, "model_not_in_plan", format!("model {model_name} is not in this account's plan; it offers: {}", offered.join(", "))));
        }
        let keyed = self.config.own_key_upstream(upstream.provider).is_some_and(|(name, _)| name == upstream.name);
        let own = if keyed { self.tenant_key(&caller.tenant, upstream.provider).await? } else { None };
        let own_key = match own {
            Some(TenantKey::Active(key)) => Some(key),
            Some(TenantKey::Rejected(reason)) => return Err(MeterError::new(StatusCode::FORBIDDEN, "provider_key_rejected", byok::rejected_message(upstream.provider, &reason))),
            None => None,
        };
        let upstream_model = model.upstream_model.clone().unwrap_or_else(|| model_name.clone());
        let checked = request::check(endpoint, headers, &request, &upstream_model, plan.max_tokens as i64).map_err(|request::Invalid(m)| invalid(m))?;
        let image_tokens = match (checked.images, model.image_tokens_max) {
            (0, _) => 0,
            (n, Some(per)) => n.saturating_mul(per),
            (_, None) => return Err(invalid(format!("messages: model {model_name} takes no images here (the operator has not set its image_tokens_max)"))),
        };
        let input_tokens_max = checked.text_tokens_max.saturating_add(image_tokens);

        let run = headers.get("x-clawpen-run").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        self.admit_call(caller, &run, &plan, now).await?;
        let id = new_request_id();
        // On the tenant's own key the provider bills the tenant: the platform holds its fee.
        let held = if own_key.is_some() { plan.byok_fee_per_call.max(0) } else { price::estimate(&model, input_tokens_max, checked.max_tokens) };
        let reserved = self.reserve(caller, &plan, &id, held, now).await;
        if let Err(e) = reserved {
            // Only calls that went upstream count against the run.
            self.runs.release_call(&caller.agent, &run);
            return Err(e);
        }
        let hidden_output = checked.hidden_output || model.reasoning;
        Ok(Prepared {
            id,
            model_name,
            model,
            upstream,
            body: Bytes::from(checked.body),
            stream: checked.stream,
            caller_wants_usage: checked.caller_wants_usage,
            max_tokens: checked.max_tokens,
            input_tokens_max,
            hidden_output,
            anthropic_version: checked.anthropic_version,
            held,
            own_key,
        })
    }

    /// Carves `held` for one call out of the tenant's lease. A hold the monthly cap does not fit
    /// waits a little for the tenant's calls in flight to give back what they held beyond their
    /// cost, then is refused for this call alone: only spending pauses a tenant, never a hold.
    async fn reserve(&self, caller: &MeterCaller, plan: &Plan, id: &str, held: i64, now: i64) -> Result<(), MeterError> {
        let (period, _, _) = period_at(now);
        if !self.accounts_open.lock().expect("accounts set").contains(&caller.tenant) {
            self.store.ensure_account(&caller.tenant, plan.initial_credits, &period).await.map_err(store_down)?;
            self.accounts_open.lock().expect("accounts set").insert(caller.tenant.clone());
        }
        let reserve = Reserve {
            hold_id: id,
            tenant: &caller.tenant,
            agent: &caller.agent,
            amount: held,
            monthly_cap: plan.monthly_cap,
            expires_at: now + self.config.hold_ttl_secs as i64 * 1000,
        };
        let refused = match self.budgets.carve(&reserve, &period, new_request_id).await.map_err(store_down)? {
            Ok(()) => return Ok(()),
            Err(r @ Refusal::MonthlyCap { .. }) => {
                if self.budgets.wait_for_headroom(&reserve, &period, tokio::time::Instant::now() + CAP_WAIT).await {
                    return Ok(());
                }
                // Once more through the store: a lease released meanwhile gave its headroom back.
                match self.budgets.carve(&reserve, &period, new_request_id).await.map_err(store_down)? {
                    Ok(()) => return Ok(()),
                    Err(Refusal::MonthlyCap { .. }) => r,
                    Err(other) => other,
                }
            }
            Err(r) => r,
        };
        Err(self.refusal(caller, refused, held))
    }

    fn refusal(&self, caller: &MeterCaller, r: Refusal, held: i64) -> MeterError {
        match r {
            Refusal::Paused { until, reason } => {
                let when = until.map(|u| format!(" It resumes on {}.", format_utc(u))).unwrap_or_default();
                MeterError { paused_until: until, ..MeterError::new(StatusCode::PAYMENT_REQUIRED, "agent_paused", format!("This agent is paused: {reason}.{when}")) }
            }
            Refusal::MonthlyCap { .. } if self.budgets.in_flight(&caller.tenant) => MeterError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "cap_headroom",
                format!("This call could cost up to {held} micro-credits, more than the monthly cap leaves while this agent's other calls are running; try again in a moment."),
            ),
            Refusal::MonthlyCap { cap, spent, reserved } => {
                let left = (cap - spent - reserved).max(0);
                MeterError::new(
                    StatusCode::PAYMENT_REQUIRED,
                    "cap_headroom",
                    format!("This call could cost up to {held} micro-credits and this month's cap has {left} of {cap} left; a shorter request or a smaller max_tokens may fit, or the operator can raise the plan's monthly cap."),
                )
            }
            Refusal::InsufficientCredits { .. } => MeterError::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_credits",
                "This agent is out of credits for now; the operator can add credits.",
            ),
        }
    }

    fn upstream_request(&self, endpoint: Endpoint, p: &Prepared) -> Result<hyper::Request<http_body_util::Full<Bytes>>, String> {
        let base = &p.upstream.base;
        let key = p.own_key.as_ref().unwrap_or(&p.upstream.key).expose();
        let req = hyper::Request::post(base.path(match endpoint {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Messages => "/messages",
        }))
        .header("host", base.authority())
        .header("content-type", "application/json");
        // No header of the caller's goes upstream but a checked `anthropic-version` (see `request`).
        let req = match endpoint {
            Endpoint::ChatCompletions => req.header("authorization", format!("Bearer {key}")),
            Endpoint::Messages => req.header("x-api-key", key).header("anthropic-version", &p.anthropic_version),
        };
        // The error names neither the key nor the value that failed (only that one did).
        req.body(http_body_util::Full::new(p.body.clone())).map_err(|_| "a header for the provider is not valid".to_owned())
    }

    async fn forward(self: &Arc<Self>, caller: MeterCaller, endpoint: Endpoint, p: Prepared) -> Response {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.config.upstream_timeout_secs);
        let req = self.upstream_request(endpoint, &p);
        // From here the call is settled whatever happens: if the agent hangs up on a call that
        // is not streamed, this task is dropped mid-way and the guard charges the whole hold.
        let mut call = OpenCall { meter: Arc::clone(self), caller, p: Some(p) };
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                call.close(None, "invalid_request", true).await;
                return MeterError::new(StatusCode::BAD_REQUEST, "invalid_request", e).into_response();
            }
        };
        let upstream = Arc::clone(&call.p().upstream);
        let sent = match tokio::time::timeout_at(deadline, self.http.send(&upstream.base, req)).await {
            Ok(Ok(r)) => r,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer in time".to_owned(),
                };
                warn!(error = %why, upstream = %upstream.name, "meter: upstream unreachable");
                call.close(None, "upstream_unreachable", true).await;
                return MeterError::new(StatusCode::BAD_GATEWAY, "upstream_unreachable", "the model provider could not be reached; try again").into_response();
            }
        };
        let (resp, mut conn) = sent;
        let status = resp.status();
        let content_type = resp.headers().get("content-type").cloned();
        if status.is_success() && call.p().stream {
            let p = call.p.take().expect("not settled yet");
            return self.forward_stream(call.caller.clone(), endpoint, p, resp.into_body(), conn, deadline, content_type);
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
                call.close(None, "upstream_broken", !status.is_success()).await;
                return MeterError::new(StatusCode::BAD_GATEWAY, "upstream_broken", "the model provider's answer broke off").into_response();
            }
        };
        if !status.is_success() && call.p().own_key.is_some() {
            // On the tenant's own key the provider's body goes nowhere: it may quote the key.
            let provider = call.p().upstream.provider;
            let key = call_key(&call);
            let code = status.as_u16();
            call.close(None, &format!("upstream_error:{code}"), true).await;
            if byok::refuses_key(code, &body) {
                // The key was refused: its use stops here.
                let reason = format!("HTTP {code}");
                self.key_rejected(&call.caller.tenant, provider, &key, &reason).await;
                return MeterError::new(StatusCode::FORBIDDEN, "provider_key_rejected", byok::rejected_message(provider, &reason)).into_response();
            }
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            return MeterError::new(status, "upstream_error", format!("{} refused the call on this account's own key (HTTP {code})", provider.as_str())).into_response();
        }
        if !status.is_success() {
            // The provider refused: nothing was generated, nothing is charged.
            call.close(None, &format!("upstream_error:{}", status.as_u16()), true).await;
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
            Endpoint::ChatCompletions => usage::chat_completions(upstream.provider, &u),
            Endpoint::Messages => usage::anthropic(&u),
        });
        // Settled in memory here (the store is written by the flusher, in batches): cheaper
        // than a task of its own, which would cost a wake-up per call.
        call.close(usage, "ok", false).await;
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
        let provider = p.upstream.provider;
        tokio::spawn(async move {
            let mut splitter = SseSplitter::default();
            let mut seen = StreamUsage::of(provider);
            let (mut client_gone, mut broken) = (false, false);
            'read: loop {
                let next = tokio::select! {
                    // The caller hung up: stop at once (below), so that the provider stops
                    // generating (and billing) an answer nobody reads.
                    biased;
                    _ = tx.closed() => {
                        client_gone = true;
                        break;
                    }
                    next = tokio::time::timeout_at(deadline, conn.drive(upstream.frame())) => next,
                };
                let next = match next {
                    Ok(Ok(n)) => n.map(|r| r.map_err(|e| e.to_string())),
                    Ok(Err(e)) => Some(Err(e.to_string())),
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
                        let rest = splitter.rest();
                        if !rest.is_empty() {
                            let _ = tx.send(Ok(Bytes::from(rest))).await;
                        }
                        drop(tx);
                        meter.close(&caller, &p, seen.usage(), "ok", false).await;
                        return;
                    }
                };
                for event in splitter.push(&chunk) {
                    if let Some(out) = rewrite_event(endpoint, &event, &mut seen, p.caller_wants_usage) {
                        if tx.send(Ok(out)).await.is_err() {
                            client_gone = true;
                            break 'read;
                        }
                    }
                }
            }
            drop(tx);
            if client_gone {
                // What the connection already has is read without waiting, for its usage; then
                // the connection is dropped, which closes it: the provider stops there.
                while let Some(Ok(Some(Ok(frame)))) = conn.drive(upstream.frame()).now_or_never() {
                    if let Ok(chunk) = frame.into_data() {
                        for event in splitter.push(&chunk) {
                            rewrite_event(endpoint, &event, &mut seen, true);
                        }
                    }
                }
                drop((upstream, conn));
                let usage = match seen.usage() {
                    // It had ended after all: its usage is known.
                    Some(u) if seen.finished() => u,
                    _ => cut_short(&p, &seen),
                };
                meter.close(&caller, &p, Some(usage), "client_aborted", false).await;
            } else {
                debug_assert!(broken);
                meter.close(&caller, &p, seen.usage(), "upstream_broken", false).await;
            }
        });
        let mut r = Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)));
        r.headers_mut().insert("content-type", content_type.unwrap_or(HeaderValue::from_static("text/event-stream")));
        r.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache"));
        r
    }

    /// Settles (from `usage`, or at the whole hold when a call generated without telling how
    /// much) or voids the call's hold. A cost past the hold is charged in full and pauses the
    /// tenant: the meter's bound failed, and an operator must see why.
    async fn close(&self, caller: &MeterCaller, p: &Prepared, usage: Option<Usage>, outcome: &str, void: bool) {
        let now = Self::now_ms();
        let u = usage.unwrap_or_default();
        let cost = match (void, usage) {
            (true, _) => 0,
            // The tenant's own key: the plan's fee, whatever the provider bills the tenant.
            (false, _) if p.own_key.is_some() => p.held,
            (false, Some(u)) => price::cost(&p.model, &u),
            // No usage came back for a call that did generate: never settle at 0.
            (false, None) => p.held,
        };
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
        if cost > p.held {
            let (_, _, next_month) = period_at(now);
            warn!(model = %p.model_name, cost, held = p.held, "meter: a call cost more than its hold");
            let detail = format!(
                "a model call cost more than the meter held for it ({cost} micro-credits against a hold of {}, model {}); it was charged in full. \
                 Check the model's prices and image_tokens_max in [meter.models], then lift the pause (set the plan again, or add credits)",
                p.held, p.model_name
            );
            self.pause(caller, next_month, "a model call cost more than the meter held for it; the operator is looking into it", &detail).await;
        }
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

    /// One flush (see [`Meter::run_flusher`]): the runs opened and the refusals counted since the
    /// last one, the settled calls, then the caps on what was spent.
    pub async fn flush_once(&self) {
        self.write_runs().await;
        let now = Self::now_ms();
        self.write_refusals(now).await;
        let (period, next_day, next_month) = period_at(now);
        for f in self.budgets.flush(&period).await {
            let Ok(plan) = self.plan_of(&f.tenant).await else { continue };
            let agent = AgentId::parse(&f.last.agent_id).unwrap_or_else(|_| AgentId::new());
            let caller = MeterCaller { tenant: f.tenant.clone(), agent };
            // Only what was spent pauses a tenant, never what calls in flight hold.
            if f.settled.month_spent >= plan.monthly_cap {
                let reason = "the monthly credit cap of its plan is reached";
                let detail = format!("{reason} ({} of {} micro-credits spent)", f.settled.month_spent, plan.monthly_cap);
                self.pause(&caller, next_month, reason, &detail).await;
            } else if plan.daily_cap > 0 && f.settled.day_spent >= plan.daily_cap {
                let reason = "the daily credit limit of its plan is reached";
                self.pause(&caller, next_day, reason, reason).await;
            }
        }
    }

    /// Writes the runs opened since the last flush.
    async fn write_runs(&self) {
        let rows = self.runs.take_unwritten();
        if rows.is_empty() {
            return;
        }
        if let Err(e) = self.store.record_runs(&rows).await {
            warn!(error = %e, runs = rows.len(), "meter: cannot record opened runs; will retry");
            self.runs.put_back(rows);
        }
    }

    /// Writes what the refusals counted since the last flush come to (see [`crate::refusals`]).
    async fn write_refusals(&self, now: i64) {
        let w = self.refusals.take(now);
        if !w.calls.is_empty() {
            if let Err(e) = self.store.record_calls(&w.calls).await {
                warn!(error = %e, "meter: cannot record refused calls; will retry");
                self.refusals.put_back(ToWrite { calls: w.calls, audits: Vec::new() });
            }
        }
        for (tenant, agent, reason) in w.audits {
            self.audit(&MeterCaller { tenant, agent }, "meter.refused", &reason).await;
        }
    }

    /// Charges what waits to be charged and releases idle leases, until none is open or
    /// `max` passes (at shutdown).
    pub async fn quiesce(&self, max: Duration) {
        self.budgets.closing();
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

fn store_down(e: clawpen_store::StoreError) -> MeterError {
    warn!(error = %e, "meter: store error");
    MeterError::new(StatusCode::SERVICE_UNAVAILABLE, "meter_unavailable", "the meter cannot reach its ledger; try again")
}

/// What a stream whose caller hung up is charged, never less than the provider bills: the input
/// as reported, or its bound when it never came (OpenAI reports usage last); the output as seen
/// (bytes of generated text bound its tokens) plus [`IN_FLIGHT_TOKENS`], at most the max tokens,
/// or all of them when the model generates output the stream does not show.
fn cut_short(p: &Prepared, seen: &StreamUsage) -> Usage {
    let (input, output_seen) = seen.so_far();
    let output = if p.hidden_output { p.max_tokens } else { output_seen.saturating_add(IN_FLIGHT_TOKENS).min(p.max_tokens) };
    match input {
        Some(u) => Usage { output, ..u },
        None => price::worst_input(&p.model, p.input_tokens_max, output),
    }
}

/// A call between its hold and its settle. Dropped unsettled (the task handling the call was
/// dropped: its caller hung up on a call that was not streamed), it charges the whole hold, in a
/// task of its own: the upstream connection went with the dropped task, so nothing more can be
/// learned, and the hold bounds what the provider bills.
struct OpenCall {
    meter: Arc<Meter>,
    caller: MeterCaller,
    p: Option<Prepared>,
}

impl OpenCall {
    fn p(&self) -> &Prepared {
        self.p.as_ref().expect("not settled yet")
    }

    async fn close(&mut self, usage: Option<Usage>, outcome: &str, void: bool) {
        if let Some(p) = self.p.take() {
            self.meter.close(&self.caller, &p, usage, outcome, void).await;
        }
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        let Some(p) = self.p.take() else { return };
        let (meter, caller) = (Arc::clone(&self.meter), self.caller.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { meter.close(&caller, &p, None, "client_aborted", false).await });
        }
    }
}

/// The tenant's own key the call went with.
fn call_key(call: &OpenCall) -> Secret {
    call.p().own_key.clone().expect("an own-key call")
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

/// A tenant's lease kept between messages (see [`Meter::keep_lease`]); dropped, it may go.
pub struct LeaseKept {
    meter: Arc<Meter>,
    tenant: TenantId,
}

impl Drop for LeaseKept {
    fn drop(&mut self) {
        self.meter.budgets.unpin(&self.tenant);
    }
}
