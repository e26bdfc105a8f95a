#![doc = include_str!("../README.md")]
//!
//! # Layout
//! - [`Broker`]: connecting, listing and disconnecting connections, the tenant's tool choice,
//!   one tool call ([`Broker::call`]), proposals and their approval, the audit.
//! - [`config`]: the `[broker]` section, the providers' endpoints and client secrets.
//! - [`oauth`]: PKCE, the state, code exchange, the single-flight refresh, revoking.
//! - [`catalogue`]: every tool as data, one module per provider, argument validation, result
//!   trimming and the untrusted wrapper.
//! - `http`: the outbound client (no redirects, timeouts, capped bodies) and the last check on
//!   every request's method and path.
//! - `router`: the routes an agent's `control.sock` serves for one [`Caller`].
//!
//! # Errors
//! The API-facing methods return [`BrokerError`], whose [`BrokerError::code`] and
//! [`BrokerError::status`] the server renders. A tool call never fails as a Rust error: it
//! answers a [`ToolOutcome`] the model reads, with `ok: false` and a [`ToolError`] whose message
//! says what to do. No error, log line or `Debug` output carries a token or a client secret.

pub mod catalogue;
pub mod config;
mod http;
pub mod oauth;
mod router;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use clawpen_core::ids::{AgentId, ConnectionId, TenantId};
use clawpen_store::integrations::{Connection, NewProposal, ProposalRow, ToolCallRow, ACCESS_TOKEN_PURPOSE, REFRESH_TOKEN_PURPOSE, STATUS_CONNECTED, STATUS_NEEDS_RECONNECTING, VERIFIER_PURPOSE};
use clawpen_store::{NewAudit, Store, StoreError};
use clawpen_vault::{Binding, Secret, Vault, VaultError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

pub use catalogue::{Kind, Provider, ToolInfo};
pub use config::{BrokerConfig, ProviderConfig};

use catalogue::{Catalogue, Exec};
use config::ResolvedProvider;

/// Who is calling: given by the server from the socket the call came in on, never by an
/// argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: TenantId,
    pub agent: AgentId,
}

/// Why a tool call did not do what was asked, for the model to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolError {
    /// `invalid_arguments`, `needs_reconnecting`, `not_connected`, `run_exhausted` …
    pub code: String,
    pub message: String,
}

impl ToolError {
    pub fn new(code: &str, message: String) -> ToolError {
        ToolError { code: code.to_owned(), message }
    }

    pub(crate) fn internal(message: &str) -> ToolError {
        ToolError::new("internal", message.to_owned())
    }

    pub(crate) fn store(e: StoreError) -> ToolError {
        warn!(error = %e, "broker: store error");
        ToolError::internal("the broker could not reach its store; try again")
    }
}

/// What one tool call answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolOutcome {
    pub ok: bool,
    /// For a read: `{"untrusted_content": …, "note": …}`; for a proposal: its number and
    /// state; `null` on an error.
    pub content: Value,
    pub error: Option<ToolError>,
    /// The content came from a provider: data to read, not instructions.
    pub untrusted: bool,
}

impl ToolOutcome {
    fn ok(content: Value, untrusted: bool) -> ToolOutcome {
        ToolOutcome { ok: true, content, error: None, untrusted }
    }

    fn err(e: ToolError) -> ToolOutcome {
        ToolOutcome { ok: false, content: Value::Null, error: Some(e), untrusted: false }
    }
}

/// A connection as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionView {
    pub id: String,
    pub tenant: String,
    pub provider: String,
    /// The login or email, when the provider told it.
    pub account: Option<String>,
    pub scopes: Vec<String>,
    /// `connected` or `needs_reconnecting`.
    pub status: String,
    pub created_at: i64,
}

impl From<&Connection> for ConnectionView {
    fn from(c: &Connection) -> Self {
        ConnectionView {
            id: c.id.to_string(),
            tenant: c.tenant_id.to_string(),
            provider: c.provider.clone(),
            account: c.account.clone(),
            scopes: c.scopes.split_whitespace().map(str::to_owned).collect(),
            status: c.status.clone(),
            created_at: c.created_at,
        }
    }
}

/// A proposed write, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Proposal {
    /// Per tenant: 1, 2, 3 …
    pub number: i64,
    pub id: String,
    pub agent: String,
    pub tool: String,
    pub provider: String,
    /// Human-readable: "GitHub acme/app issue #12".
    pub target: String,
    /// Exactly what will be written.
    pub text: String,
    /// The agent had read provider content (untrusted) in the run before it proposed this:
    /// the target or text may come from there.
    pub from_tool_result: bool,
    /// `pending`, `approved`, `rejected` or `failed`.
    pub state: String,
    pub created_at: i64,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    /// What performing it did (or why it failed).
    pub outcome: Option<String>,
}

impl From<ProposalRow> for Proposal {
    fn from(p: ProposalRow) -> Self {
        Proposal {
            number: p.number,
            id: p.id.to_string(),
            agent: p.agent_id.to_string(),
            tool: p.tool,
            provider: p.provider,
            target: p.target,
            text: p.text,
            from_tool_result: p.from_tool_result,
            state: p.state,
            created_at: p.created_at,
            decided_by: p.decided_by,
            decided_at: p.decided_at,
            outcome: p.outcome,
        }
    }
}

/// One tool call in the audit: never its arguments or result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCallRecord {
    pub tenant: String,
    pub agent: String,
    pub tool: String,
    /// Hex SHA-256 of the canonical arguments.
    pub args_digest: String,
    /// `ok` or the error code.
    pub outcome: String,
    pub duration_ms: i64,
    /// Size of the JSON returned.
    pub bytes: i64,
    pub at: i64,
}

/// What the broker's API-facing methods fail with.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    Config(String),
    #[error("no provider named {0:?}: google, github, slack, trello or notion")]
    UnknownProvider(String),
    #[error("{0} is not set up on this server (no [broker.providers.{1}] section)")]
    NotConfigured(&'static str, &'static str),
    #[error("this connection link is not valid: {0}; start connecting again")]
    InvalidState(&'static str),
    #[error("this connection was begun by another member; start connecting again")]
    WrongMember,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("{provider} refused: {message}")]
    Provider { provider: &'static str, message: String },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("vault: {0}")]
    Vault(#[from] VaultError),
}

impl BrokerError {
    /// A stable code for the API's error body.
    pub fn code(&self) -> &'static str {
        match self {
            BrokerError::Config(_) => "broker_config",
            BrokerError::UnknownProvider(_) => "unknown_provider",
            BrokerError::NotConfigured(..) => "not_configured",
            BrokerError::InvalidState(_) => "invalid_state",
            BrokerError::WrongMember => "wrong_member",
            BrokerError::Invalid(_) => "invalid_request",
            BrokerError::NotAllowed(_) => "not_in_plan",
            BrokerError::NotFound => "not_found",
            BrokerError::Conflict(_) => "conflict",
            BrokerError::Provider { .. } => "provider_error",
            BrokerError::Store(StoreError::NotFound) => "not_found",
            BrokerError::Store(StoreError::Conflict(_)) => "conflict",
            BrokerError::Store(_) | BrokerError::Vault(_) => "internal",
        }
    }

    /// The HTTP status the server answers with.
    pub fn status(&self) -> u16 {
        match self.code() {
            "unknown_provider" | "not_configured" | "invalid_state" | "invalid_request" => 400,
            "wrong_member" | "not_in_plan" => 403,
            "not_found" => 404,
            "conflict" => 409,
            "provider_error" => 502,
            _ => 500,
        }
    }
}

/// The broker's clock: Unix ms, and an offset tests move forward.
#[derive(Default)]
pub(crate) struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        clawpen_store::now_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn advance(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }

    pub fn now_rfc3339(&self) -> String {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(self.now_ms() as i128 * 1_000_000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        t.replace_nanosecond(0).unwrap_or(t).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
    }
}

/// Read results, per tenant, connection, tool and canonical arguments, for `cache_secs`.
#[derive(Default)]
struct Cache {
    map: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    tenant: TenantId,
    expires_at: i64,
    content: Value,
}

/// Most results kept; past it the expired go, then all.
const CACHE_MAX: usize = 10_000;

impl Cache {
    /// The key names the tenant first: one tenant's entry is never another's.
    fn key(tenant: &TenantId, connection: &ConnectionId, tool: &str, args: &Value) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [tenant.as_str(), connection.as_str(), tool, &catalogue::canonical(args)] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }

    fn get(&self, key: &str, tenant: &TenantId, now: i64) -> Option<Value> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).filter(|c| c.expires_at > now && c.tenant == *tenant).map(|c| c.content.clone())
    }

    fn put(&self, key: String, tenant: &TenantId, expires_at: i64, now: i64, content: Value) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_MAX {
            map.retain(|_, c| c.expires_at > now);
            if map.len() >= CACHE_MAX {
                map.clear();
            }
        }
        map.insert(key, Cached { tenant: tenant.clone(), expires_at, content });
    }

    fn forget_tenant(&self, tenant: &TenantId) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, c| c.tenant != *tenant);
    }
}

/// Calls per run, counted in memory per (agent, run).
#[derive(Default)]
struct Runs {
    map: Mutex<HashMap<(AgentId, String), RunState>>,
}

#[derive(Default)]
struct RunState {
    calls: u32,
    /// A provider's content was returned in this run.
    saw_untrusted: bool,
    /// The first refusal past the cap was audited (the rest are not: a sandbox calling on
    /// costs no store write each).
    refusal_audited: bool,
    touched: i64,
}

/// Runs untouched this long are forgotten (runs close within minutes).
const RUN_FORGET_MS: i64 = 6 * 3600 * 1000;

enum Admit {
    Ok,
    Exhausted { audit: bool },
}

impl Runs {
    fn admit(&self, agent: &AgentId, run: &str, max: u32, now: i64) -> Admit {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 4096 {
            map.retain(|_, r| now - r.touched < RUN_FORGET_MS);
        }
        let r = map.entry((agent.clone(), run.to_owned())).or_default();
        r.touched = now;
        if r.calls >= max {
            let audit = !r.refusal_audited;
            r.refusal_audited = true;
            return Admit::Exhausted { audit };
        }
        r.calls += 1;
        Admit::Ok
    }

    fn saw_untrusted(&self, agent: &AgentId, run: &str) -> bool {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(agent.clone(), run.to_owned())).is_some_and(|r| r.saw_untrusted)
    }

    fn mark_untrusted(&self, agent: &AgentId, run: &str) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = map.get_mut(&(agent.clone(), run.to_owned())) {
            r.saw_untrusted = true;
        }
    }
}

/// A run id as the server makes them: short, `[A-Za-z0-9_-]`.
fn is_run_id(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A member id as the server gives it: bounded, printable.
fn check_member(member: &str) -> Result<(), BrokerError> {
    if (1..=200).contains(&member.len()) && !member.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(BrokerError::Invalid("the member is not valid".into()))
    }
}

/// The broker. One per server; shared behind an `Arc`.
pub struct Broker {
    store: Store,
    vault: Vault,
    config: BrokerConfig,
    /// The configured providers, secrets read.
    providers: Vec<ResolvedProvider>,
    catalogue: Catalogue,
    http: http::Http,
    /// Access tokens in memory, one lock per connection.
    tokens: oauth::Tokens,
    cache: Cache,
    runs: Runs,
    clock: Clock,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("providers", &self.providers.iter().map(|p| p.kind.as_str()).collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

impl Broker {
    /// The broker for this config: every configured provider's client secret is read now, and
    /// a config that cannot work is refused with what to fix.
    pub fn new(store: Store, vault: Vault, config: BrokerConfig) -> Result<Broker, BrokerError> {
        let providers = config.resolve()?;
        let http = http::Http::new(std::time::Duration::from_secs(config.request_timeout_secs), config.max_response_bytes, config.ca_file.as_deref())?;
        Ok(Broker {
            store,
            vault,
            config,
            providers,
            catalogue: Catalogue::new(),
            http,
            tokens: oauth::Tokens::default(),
            cache: Cache::default(),
            runs: Runs::default(),
            clock: Clock::default(),
        })
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Whether this server has an OAuth app for `p` (`[broker.providers.<p>]`).
    pub fn is_configured(&self, p: Provider) -> bool {
        self.provider(p).is_some()
    }

    fn provider(&self, p: Provider) -> Option<&ResolvedProvider> {
        self.providers.iter().find(|r| r.kind == p)
    }

    fn configured(&self, name: &str) -> Result<&ResolvedProvider, BrokerError> {
        let p = Provider::parse(name).ok_or_else(|| BrokerError::UnknownProvider(name.chars().take(40).collect()))?;
        self.provider(p).ok_or(BrokerError::NotConfigured(p.display(), p.as_str()))
    }

    fn redirect_uri(&self) -> &str {
        self.config.redirect_uri.as_deref().unwrap_or_default()
    }

    async fn audit_log(&self, tenant: &TenantId, actor: &str, action: &str, reason: &str, detail: Value) {
        let entry = NewAudit { tenant: Some(tenant), agent: None, actor, action, reason, detail: Some(&detail) };
        if let Err(e) = self.store.audit(entry).await {
            warn!(error = %e, action, "broker: could not write the audit log");
        }
    }

    // ---- connecting ----

    /// The scopes a connection to `p` asks for: those of the provider's tools the tenant
    /// enabled, or, when it enabled none of them yet, those of all its read tools (so that
    /// connecting first and choosing tools after works for reading; a write tool enabled later
    /// needs a reconnect, which asks for its scope).
    async fn scopes_for(&self, tenant: &TenantId, p: Provider) -> Result<Vec<String>, BrokerError> {
        let enabled = self.store.enabled_tools(tenant).await?;
        let of_provider: Vec<_> = self.catalogue.all().filter(|e| e.def.provider == p).collect();
        let chosen: Vec<_> = of_provider.iter().filter(|e| enabled.iter().any(|t| t == e.def.name)).collect();
        let union = |tools: &[&&catalogue::Entry]| -> BTreeSet<String> { tools.iter().flat_map(|e| e.def.scopes.iter().map(|s| s.to_string())).collect() };
        let mut scopes = union(&chosen);
        if scopes.is_empty() {
            // None chosen (or only a tool that needs no scope, like slack_prepare_reply).
            scopes = union(&of_provider.iter().filter(|e| e.def.kind == Kind::Read).collect::<Vec<_>>());
        }
        Ok(scopes.into_iter().collect())
    }

    /// Starts a connection: returns the provider's authorize URL (PKCE S256; a random 32-byte
    /// state, single-use, for `state_ttl_secs`, bound to the tenant and the member; stored
    /// hashed, with the code_verifier sealed by the vault).
    pub async fn begin_connect(&self, tenant: &TenantId, member: &str, provider: &str) -> Result<String, BrokerError> {
        check_member(member)?;
        let p = self.configured(provider)?;
        let scopes = self.scopes_for(tenant, p.kind).await?;
        let state = oauth::new_state();
        let pkce = oauth::pkce();
        let hash = oauth::state_hash(state.expose());
        let sealed = self.vault.seal(Binding { tenant: tenant.as_str(), purpose: VERIFIER_PURPOSE, record: &hash }, pkce.verifier.expose().as_bytes());
        let now = self.clock.now_ms();
        let _ = self.store.prune_oauth_states(now).await;
        self.store.create_oauth_state(&hash, tenant, member, p.kind.as_str(), &scopes.join(" "), &sealed, now + self.config.state_ttl_secs as i64 * 1000).await?;
        Ok(oauth::authorize_url(p, self.redirect_uri(), &scopes, state.expose(), &pkce.challenge).to_string())
    }

    /// The OAuth callback, with `state` and `code` from the redirect. `member`: who the
    /// server knows is finishing (it must be the one who began), or `None` when the callback
    /// has no session, and then the state alone binds it. Exchanges the code, seals the refresh
    /// token (`oauth.refresh_token`, record: the connection's id), keeps the access token only
    /// in memory. Connecting a provider the tenant has already replaces that connection's
    /// tokens in place.
    pub async fn finish_connect(&self, state: &str, code: &str, member: Option<&str>) -> Result<ConnectionView, BrokerError> {
        if !oauth::is_state(state) {
            return Err(BrokerError::InvalidState("it is malformed"));
        }
        if !oauth::is_code(code) {
            return Err(BrokerError::Invalid("the authorization code is malformed".into()));
        }
        let hash = oauth::state_hash(state);
        let Some(taken) = self.store.take_oauth_state(&hash).await? else {
            return Err(BrokerError::InvalidState("it is unknown or was used already"));
        };
        if taken.expires_at <= self.clock.now_ms() {
            return Err(BrokerError::InvalidState("it has expired"));
        }
        if member.is_some_and(|m| m != taken.member) {
            return Err(BrokerError::WrongMember);
        }
        let p = self.configured(&taken.provider)?;
        let tenant = taken.tenant_id.clone();
        let verifier = self.vault.open(Binding { tenant: tenant.as_str(), purpose: VERIFIER_PURPOSE, record: &hash }, &taken.verifier_sealed)?;
        let verifier = std::str::from_utf8(verifier.expose()).map_err(|_| BrokerError::InvalidState("its verifier is damaged"))?.to_owned();
        let set = oauth::exchange_code(&self.http, p, self.redirect_uri(), code, &verifier).await.map_err(|e| {
            warn!(tenant = %tenant, provider = %p.kind, error = %e, "broker: code exchange failed");
            BrokerError::Provider { provider: p.kind.display(), message: e.to_string() }
        })?;
        let asked: Vec<String> = taken.scopes.split_whitespace().map(str::to_owned).collect();
        let scopes = set.scopes.clone().unwrap_or(asked);
        let account = catalogue::account(self, p, &set.access_token, &scopes)
        .await
        .map(|a| catalogue::cut_str(&a.replace(|c: char| c.is_control(), ""), 200));
        let (purpose, token) = match (&set.refresh_token, set.expires_in) {
            (Some(rt), _) => (REFRESH_TOKEN_PURPOSE, rt.clone()),
            (None, None) => (ACCESS_TOKEN_PURPOSE, set.access_token.clone()),
            (None, Some(_)) => {
                return Err(BrokerError::Provider { provider: p.kind.display(), message: "it gave an expiring access token and no refresh token; check the app's settings (Google: offline access)".into() });
            }
        };
        let now = self.clock.now_ms();
        let mut conn = match self.store.connection_for(&tenant, p.kind.as_str()).await? {
            Some(existing) => Connection { account, scopes: scopes.join(" "), status: STATUS_CONNECTED.into(), updated_at: now, ..existing },
            None => Connection { id: ConnectionId::new(), tenant_id: tenant.clone(), provider: p.kind.as_str().into(), account, scopes: scopes.join(" "), status: STATUS_CONNECTED.into(), created_at: now, updated_at: now },
        };
        let sealed = self.seal_token(&conn, purpose, &token);
        if let Err(StoreError::Conflict(_)) = self.store.save_connection(&conn, purpose, &sealed).await {
            // Another callback of this tenant made the connection meanwhile: take its id.
            let existing = self.store.connection_for(&tenant, p.kind.as_str()).await?.ok_or(BrokerError::Conflict("the connection changed meanwhile; try again".into()))?;
            conn = Connection { id: existing.id, created_at: existing.created_at, ..conn };
            let sealed = self.seal_token(&conn, purpose, &token);
            self.store.save_connection(&conn, purpose, &sealed).await?;
        }
        self.keep_access_token(&conn, &set).await;
        self.cache.forget_tenant(&tenant);
        info!(tenant = %tenant, connection = %conn.id, provider = %p.kind, "broker: connected");
        self.audit_log(&tenant, &taken.member, "integrations.connect", "connected", json!({"connection": conn.id.as_str(), "provider": conn.provider, "account": conn.account, "scopes": scopes})).await;
        Ok(ConnectionView::from(&conn))
    }

    /// The tenant's connections.
    pub async fn connections(&self, tenant: &TenantId) -> Result<Vec<ConnectionView>, BrokerError> {
        Ok(self.store.connections(tenant).await?.iter().map(ConnectionView::from).collect())
    }

    /// Revokes the grant at the provider (a failure there is logged, not fatal) and deletes the
    /// connection and its sealed token. Another tenant's connection is `NotFound`.
    pub async fn disconnect(&self, tenant: &TenantId, connection: &str) -> Result<(), BrokerError> {
        let id = ConnectionId::parse(connection).map_err(|_| BrokerError::NotFound)?;
        let conn = self.store.get_connection(tenant, &id).await?.ok_or(BrokerError::NotFound)?;
        if let Some(p) = Provider::parse(&conn.provider).and_then(|k| self.provider(k)) {
            self.revoke_quietly(p, &conn).await;
        }
        self.store.delete_connection(tenant, &id).await?;
        self.tokens.forget(&id);
        self.cache.forget_tenant(tenant);
        info!(tenant = %tenant, connection = %id, provider = %conn.provider, "broker: disconnected");
        self.audit_log(tenant, "tenant", "integrations.disconnect", "requested", json!({"connection": id.as_str(), "provider": conn.provider})).await;
        Ok(())
    }

    async fn revoke_quietly(&self, p: &ResolvedProvider, conn: &Connection) {
        let open = |purpose: &'static str| async move {
            let sealed = self.store.get_secret(&conn.tenant_id, purpose, conn.id.as_str()).await.ok().flatten()?;
            let plain = self.vault.open(Binding { tenant: conn.tenant_id.as_str(), purpose, record: conn.id.as_str() }, &sealed).ok()?;
            String::from_utf8(plain.expose().clone()).ok().map(Secret::new)
        };
        let refresh_token = open(REFRESH_TOKEN_PURPOSE).await;
        let mut access = open(ACCESS_TOKEN_PURPOSE).await;
        if access.is_none() {
            let slot = self.tokens.slot(&conn.id);
            let s = slot.lock().await;
            access = s.access.as_ref().filter(|a| a.expires_at.is_none_or(|e| e > self.clock.now_ms())).map(|a| a.token.clone());
        }
        if access.is_none() && matches!(p.kind, Provider::Github | Provider::Slack) && conn.status == STATUS_CONNECTED {
            // GitHub and Slack revoke with an access token: get one.
            access = self.access_token(p, conn, None).await.ok().map(|(t, _)| t);
        }
        if let Err(e) = oauth::revoke(&self.http, p, access.as_ref(), refresh_token.as_ref()).await {
            warn!(tenant = %conn.tenant_id, connection = %conn.id, provider = %p.kind, error = %e, "broker: revoking at the provider failed; the connection is deleted anyway");
        }
    }

    // ---- tools ----

    /// Every tool the broker has.
    pub fn catalogue(&self) -> Vec<ToolInfo> {
        self.catalogue.all().map(|e| e.info()).collect()
    }

    /// The tools the tenant enabled.
    pub async fn enabled_tools(&self, tenant: &TenantId) -> Result<Vec<String>, BrokerError> {
        Ok(self.store.enabled_tools(tenant).await?)
    }

    /// Sets the tools the tenant gives its agents (replacing its choice). `plan_allows`: the
    /// tools its plan permits, if the plan restricts them. Returns the tools now enabled.
    pub async fn enable_tools(&self, tenant: &TenantId, tools: &[String], plan_allows: Option<&[String]>) -> Result<Vec<String>, BrokerError> {
        let mut chosen = BTreeSet::new();
        for t in tools {
            if self.catalogue.get(t).is_none() {
                return Err(BrokerError::Invalid(format!("no tool named {:?}", t.chars().take(64).collect::<String>())));
            }
            if plan_allows.is_some_and(|allowed| !allowed.contains(t)) {
                return Err(BrokerError::NotAllowed(format!("the tenant's plan does not include the tool {t}")));
            }
            chosen.insert(t.clone());
        }
        let chosen: Vec<String> = chosen.into_iter().collect();
        self.store.set_enabled_tools(tenant, &chosen).await?;
        Ok(chosen)
    }

    /// What an agent of the tenant may call now, as OpenAI function definitions
    /// (`{name, description, parameters}`): the enabled tools whose provider is configured and
    /// connected with the scopes they need. A connection that needs reconnecting keeps its
    /// tools listed, so that a call answers why and the model can tell the user.
    pub async fn tools_for(&self, tenant: &TenantId) -> Result<Vec<Value>, BrokerError> {
        let enabled = self.store.enabled_tools(tenant).await?;
        let connections = self.store.connections(tenant).await?;
        let mut out = Vec::new();
        for e in self.catalogue.all() {
            if !enabled.iter().any(|t| t == e.def.name) || self.provider(e.def.provider).is_none() {
                continue;
            }
            let Some(c) = connections.iter().find(|c| c.provider == e.def.provider.as_str()) else { continue };
            if has_scopes(c, e.def.scopes) {
                out.push(e.function());
            }
        }
        Ok(out)
    }

    /// One tool call of `caller` in the server's run `run` (which the server checked is open
    /// and counted against the plan). Counted per (agent, run) here as well, up to
    /// `max_calls_per_run`, refused calls included. Always answers; every call is audited
    /// (past the cap only the first refusal).
    pub async fn call(&self, caller: &Caller, run: &str, tool: &str, args: Value) -> ToolOutcome {
        let started = std::time::Instant::now();
        let (outcome, audit) = self.call_inner(caller, run, tool, &args).await;
        if audit {
            let record = ToolCallRow {
                tenant_id: caller.tenant.clone(),
                agent_id: caller.agent.clone(),
                tool: tool.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect(),
                args_digest: catalogue::digest(&args),
                outcome: outcome.error.as_ref().map_or_else(|| "ok".to_owned(), |e| e.code.clone()),
                duration_ms: started.elapsed().as_millis() as i64,
                bytes: serde_json::to_vec(&outcome.content).map_or(0, |b| b.len() as i64),
                at: self.clock.now_ms(),
            };
            if let Err(e) = self.store.record_tool_call(&record).await {
                warn!(tenant = %caller.tenant, agent = %caller.agent, error = %e, "broker: could not audit a tool call");
            }
        }
        outcome
    }

    async fn call_inner(&self, caller: &Caller, run: &str, tool: &str, args: &Value) -> (ToolOutcome, bool) {
        if !is_run_id(run) {
            return (ToolOutcome::err(ToolError::new("no_run", "a tool call needs the run it belongs to".into())), true);
        }
        if let Admit::Exhausted { audit } = self.runs.admit(&caller.agent, run, self.config.max_calls_per_run, self.clock.now_ms()) {
            let e = ToolError::new("run_exhausted", format!("this run has made its {} tool calls; answer the user with what you have", self.config.max_calls_per_run));
            return (ToolOutcome::err(e), audit);
        }
        match self.call_checked(caller, run, tool, args).await {
            Ok(o) => (o, true),
            Err(e) => (ToolOutcome::err(e), true),
        }
    }

    async fn call_checked(&self, caller: &Caller, run: &str, tool: &str, args: &Value) -> Result<ToolOutcome, ToolError> {
        let tenant = &caller.tenant;
        let Some(entry) = self.catalogue.get(tool) else {
            return Err(ToolError::new("unknown_tool", format!("there is no tool named {:?}; GET /v1/tools lists the tools this agent may call", tool.chars().take(64).collect::<String>())));
        };
        let def = entry.def;
        let enabled = self.store.enabled_tools(tenant).await.map_err(ToolError::store)?;
        if !enabled.iter().any(|t| t == def.name) {
            return Err(ToolError::new("tool_not_enabled", format!("{} is not enabled for this account; the user can enable it in clawpen (Integrations)", def.name)));
        }
        entry.validate(args)?;
        let Some(p) = self.provider(def.provider) else {
            return Err(ToolError::new("not_configured", format!("this server has no {} integration set up", def.provider.display())));
        };
        let Some(conn) = self.store.connection_for(tenant, def.provider.as_str()).await.map_err(ToolError::store)? else {
            return Err(ToolError::new("not_connected", format!("{} is not connected: ask the user to connect it in clawpen (Integrations).", def.provider.display())));
        };
        if conn.status == STATUS_NEEDS_RECONNECTING {
            return Err(oauth::needs_reconnecting(def.provider));
        }
        if !has_scopes(&conn, def.scopes) {
            return Err(ToolError::new("scope_missing", format!("The {} connection was made without the permission {} needs: ask the user to reconnect it in clawpen (Integrations).", def.provider.display(), def.name)));
        }
        let x = Exec { broker: self, provider: p, conn: &conn };
        match def.kind {
            Kind::Draft => Ok(ToolOutcome::ok(catalogue::slack::prepare_reply(args)?, false)),
            Kind::Propose => {
                let draft = catalogue::propose(&x, def, args).await?;
                let payload = draft.payload.to_string();
                let new = NewProposal {
                    agent_id: &caller.agent,
                    tool: def.name,
                    provider: def.provider.as_str(),
                    connection_id: &conn.id,
                    target: &draft.target,
                    payload: &payload,
                    text: &draft.text,
                    from_tool_result: self.runs.saw_untrusted(&caller.agent, run),
                };
                let row = self.store.create_proposal(tenant, &new).await.map_err(ToolError::store)?;
                Ok(ToolOutcome::ok(
                    json!({
                        "proposal": row.number,
                        "state": "pending",
                        "target": row.target,
                        "note": format!("Nothing was written yet. The user must approve proposal #{} in clawpen (Integrations) before it is performed; tell them so.", row.number),
                    }),
                    false,
                ))
            }
            Kind::Read => {
                let now = self.clock.now_ms();
                let key = Cache::key(tenant, &conn.id, def.name, args);
                if let Some(content) = self.cache.get(&key, tenant, now) {
                    self.runs.mark_untrusted(&caller.agent, run);
                    return Ok(ToolOutcome::ok(content, true));
                }
                let data = catalogue::read(&x, def, args).await?;
                let content = catalogue::untrusted(def.source, catalogue::fit(data, def.result_cap));
                if self.config.cache_secs > 0 {
                    self.cache.put(key, tenant, now + self.config.cache_secs as i64 * 1000, now, content.clone());
                }
                self.runs.mark_untrusted(&caller.agent, run);
                Ok(ToolOutcome::ok(content, true))
            }
        }
    }

    /// A GET with a token that is not a connection's yet (the account lookup right after a
    /// code grant). `None` on any failure: the account is only shown.
    pub(crate) async fn get_with_token(&self, p: &ResolvedProvider, token: &Secret<String>, path: &str, query: &[(&str, String)]) -> Option<Value> {
        let req = http::ApiRequest::get(&p.api_base, path, query);
        req.check(&p.api_base).ok()?;
        let rb = catalogue::api_headers(p.kind, self.http.request(req.method, req.url).bearer_auth(token.expose()));
        let ans = self.http.send(rb).await.ok()?;
        if !(200..300).contains(&ans.status) {
            return None;
        }
        ans.json()
    }

    // ---- proposals ----

    /// The tenant's proposals, newest first (the latest 200).
    pub async fn proposals(&self, tenant: &TenantId, pending_only: bool) -> Result<Vec<Proposal>, BrokerError> {
        Ok(self.store.proposals(tenant, pending_only, 200).await?.into_iter().map(Proposal::from).collect())
    }

    /// Approves a pending proposal and performs the write at the provider now; records what
    /// happened (`approved` with the outcome, or `failed` with why). Of two approvals at once
    /// exactly one performs it; the other is a `Conflict`.
    pub async fn approve(&self, tenant: &TenantId, member: &str, number: i64) -> Result<Proposal, BrokerError> {
        check_member(member)?;
        let row = self.store.get_proposal(tenant, number).await?.ok_or(BrokerError::NotFound)?;
        if row.state != "pending" || !self.store.decide_proposal(tenant, number, "approved", member).await? {
            return Err(BrokerError::Conflict(format!("proposal #{number} was decided already")));
        }
        let (state, outcome) = match self.perform(&row).await {
            Ok(done) => ("approved", done),
            Err(e) => ("failed", format!("{}: {}", e.code, e.message)),
        };
        self.store.finish_proposal(tenant, number, state, &outcome).await?;
        info!(tenant = %tenant, number, tool = %row.tool, state, "broker: proposal approved");
        self.audit_log(tenant, member, "integrations.approve", state, json!({"number": number, "tool": row.tool, "target": row.target, "outcome": outcome})).await;
        Ok(self.store.get_proposal(tenant, number).await?.ok_or(BrokerError::NotFound)?.into())
    }

    async fn perform(&self, row: &ProposalRow) -> Result<String, ToolError> {
        let kind = Provider::parse(&row.provider).ok_or_else(|| ToolError::internal("the proposal names an unknown provider"))?;
        let p = self.provider(kind).ok_or_else(|| ToolError::new("not_configured", format!("this server has no {} integration set up", kind.display())))?;
        let conn = self.store.get_connection(&row.tenant_id, &row.connection_id).await.map_err(ToolError::store)?;
        let Some(conn) = conn else {
            return Err(ToolError::new("not_connected", format!("the {} connection this was proposed with was removed", kind.display())));
        };
        if conn.status == STATUS_NEEDS_RECONNECTING {
            return Err(oauth::needs_reconnecting(kind));
        }
        let payload: Value = serde_json::from_str(&row.payload).map_err(|_| ToolError::internal("the proposal's payload is damaged"))?;
        if kind != Provider::Google {
            // The payload is the tool's own arguments (Google's also carries the thread a draft
            // answers): checked against its schema again.
            self.catalogue.get(&row.tool).ok_or_else(|| ToolError::internal("unknown tool"))?.validate(&payload)?;
        }
        let x = Exec { broker: self, provider: p, conn: &conn };
        catalogue::perform(&x, &row.tool, &payload).await
    }

    /// Rejects a pending proposal: nothing is written.
    pub async fn reject(&self, tenant: &TenantId, member: &str, number: i64) -> Result<Proposal, BrokerError> {
        check_member(member)?;
        self.store.get_proposal(tenant, number).await?.ok_or(BrokerError::NotFound)?;
        if !self.store.decide_proposal(tenant, number, "rejected", member).await? {
            return Err(BrokerError::Conflict(format!("proposal #{number} was decided already")));
        }
        self.audit_log(tenant, member, "integrations.reject", "rejected", json!({"number": number})).await;
        Ok(self.store.get_proposal(tenant, number).await?.ok_or(BrokerError::NotFound)?.into())
    }

    /// The tenant's latest tool calls, newest first (`limit` 1 to 1,000).
    pub async fn audit(&self, tenant: &TenantId, limit: u32) -> Result<Vec<ToolCallRecord>, BrokerError> {
        let rows = self.store.tool_calls(tenant, limit.clamp(1, 1000) as i64).await?;
        Ok(rows
            .into_iter()
            .map(|r| ToolCallRecord { tenant: r.tenant_id.to_string(), agent: r.agent_id.to_string(), tool: r.tool, args_digest: r.args_digest, outcome: r.outcome, duration_ms: r.duration_ms, bytes: r.bytes, at: r.at })
            .collect())
    }

    /// The routes of an agent's `control.sock` for `caller`: `GET /v1/tools` and
    /// `POST /v1/tools/call` (see the crate's README). It sets no fallback, so the server can
    /// merge it with the meter's router.
    pub fn router(self: &std::sync::Arc<Self>, caller: Caller) -> axum::Router {
        router::router(self.clone(), caller)
    }
}

/// Whether the connection was granted every scope in `needed`.
fn has_scopes(c: &Connection, needed: &[&str]) -> bool {
    needed.iter().all(|s| c.scopes.split_whitespace().any(|g| g == *s))
}
