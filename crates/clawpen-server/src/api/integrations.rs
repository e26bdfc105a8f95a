//! Integration routes (tenant key): the tool catalogue and which tools the tenant enabled, OAuth
//! connections (connect, the provider's callback, disconnect), proposals to approve or reject,
//! and the audit of tool calls. The broker (`clawpen-broker`) does the work; these routes only
//! scope it to the caller's tenant. The callback takes no key: the single-use `state` it
//! carries is bound to the tenant and the member who began.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use clawpen_broker::BrokerError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{ApiJson, ApiQuery, TenantCaller};
use super::views::LimitQuery;
use crate::app::App;
use crate::error::{ApiError, ErrorBody};

/// Providers a connection can be made to.
pub const PROVIDER_PATTERN: &str = "^(google|github|slack|trello|notion)$";
/// A proposal's number within its tenant.
pub const NUMBER_PATTERN: &str = "^[1-9][0-9]{0,15}$";

pub(crate) fn broker_error(e: BrokerError) -> ApiError {
    let code = e.code();
    let status = match code {
        "unknown_provider" | "not_found" => StatusCode::NOT_FOUND,
        "not_configured" => StatusCode::CONFLICT,
        "invalid_request" => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    };
    if status.is_server_error() {
        tracing::warn!(error = %e, "integrations: the broker failed");
        return ApiError::new(status, code, "the integration could not do it; try again");
    }
    ApiError::new(status, code, e.to_string())
}

fn member(caller: &TenantCaller) -> String {
    caller.actor().0
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToolView {
    pub name: String,
    /// `google`, `github`, `slack`, `trello` or `notion`.
    pub provider: String,
    pub description: String,
    /// The OAuth scopes it needs.
    pub scopes: Vec<String>,
    /// It proposes a write, done only when a member approves it.
    pub writes: bool,
    /// The tenant enabled it.
    pub enabled: bool,
    /// It is offered by the tenant's plan.
    pub in_plan: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionView {
    /// `cn_…`
    pub id: String,
    pub provider: String,
    /// The login or email at the provider, when it told.
    pub account: Option<String>,
    pub scopes: Vec<String>,
    /// `connected`, or `needs_reconnecting` (the provider refused the refresh token: connect again).
    pub status: String,
    pub created_at: i64,
}

impl From<clawpen_broker::ConnectionView> for ConnectionView {
    fn from(c: clawpen_broker::ConnectionView) -> Self {
        ConnectionView { id: c.id, provider: c.provider, account: c.account, scopes: c.scopes, status: c.status, created_at: c.created_at }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Integrations {
    pub tools: Vec<ToolView>,
    pub connections: Vec<ConnectionView>,
}

#[utoipa::path(get, path = "/api/v1/integrations", tag = "integrations", security(("tenant_key" = [])),
    responses((status = 200, description = "Every tool with whether the tenant enabled it, and the tenant's connections.", body = Integrations)))]
/// The tool catalogue, which tools the tenant enabled, and its connections.
pub async fn list(State(app): State<App>, caller: TenantCaller) -> Result<Json<Integrations>, ApiError> {
    let enabled = app.broker.enabled_tools(&caller.tenant.id).await.map_err(broker_error)?;
    let plan = app.config.plan_or_default(&caller.tenant.plan);
    let tools = app
        .broker
        .catalogue()
        .into_iter()
        .map(|t| ToolView {
            enabled: enabled.contains(&t.name),
            in_plan: plan.tools.as_ref().is_none_or(|p| p.contains(&t.name)),
            name: t.name,
            provider: t.provider,
            description: t.description,
            scopes: t.scopes,
            writes: t.writes,
        })
        .collect();
    let connections = app.broker.connections(&caller.tenant.id).await.map_err(broker_error)?.into_iter().map(Into::into).collect();
    Ok(Json(Integrations { tools, connections }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnableTools {
    /// The tools the tenant's agents may call, by name (the whole set; `[]` turns all off).
    #[schema(max_items = 64)]
    pub tools: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnabledTools {
    pub tools: Vec<String>,
}

#[utoipa::path(put, path = "/api/v1/integrations/tools", tag = "integrations", security(("tenant_key" = [])), request_body = EnableTools,
    responses((status = 200, description = "The tools now enabled.", body = EnabledTools),
        (status = 403, description = "A tool is not offered by the tenant's plan (`not_in_plan`).", body = ErrorBody),
        (status = 422, description = "A name is not a tool of the catalogue (`invalid_request`).", body = ErrorBody)))]
/// Sets which tools the tenant's agents may call. A tool answers only once its provider is
/// connected.
pub async fn enable(State(app): State<App>, caller: TenantCaller, ApiJson(body): ApiJson<EnableTools>) -> Result<Json<EnabledTools>, ApiError> {
    if body.tools.len() > 64 {
        return Err(ApiError::invalid("tools: at most 64"));
    }
    let plan = app.config.plan_or_default(&caller.tenant.plan);
    let tools = app.broker.enable_tools(&caller.tenant.id, &body.tools, plan.tools.as_deref()).await.map_err(broker_error)?;
    Ok(Json(EnabledTools { tools }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectStart {
    /// Open this in the browser of the person whose account it is: the provider asks them, then
    /// sends them back to the server's callback. It works once, for 10 minutes.
    pub authorize_url: String,
}

#[utoipa::path(post, path = "/api/v1/integrations/{provider}/connect", tag = "integrations", security(("tenant_key" = [])),
    params(("provider" = String, Path)),
    responses((status = 200, description = "Where to send the person to consent.", body = ConnectStart),
        (status = 404, description = "No such provider (`not_found`).", body = ErrorBody),
        (status = 409, description = "This server has no OAuth app for the provider (`not_configured`): the operator sets `[broker.providers.<name>]`.", body = ErrorBody)))]
/// Begins connecting a provider account (OAuth 2.0 authorization code with PKCE).
pub async fn connect(State(app): State<App>, caller: TenantCaller, Path(provider): Path<String>) -> Result<Json<ConnectStart>, ApiError> {
    if clawpen_broker::Provider::parse(&provider).is_none() {
        return Err(ApiError::not_found("provider"));
    }
    let authorize_url = app.broker.begin_connect(&caller.tenant.id, &member(&caller), &provider).await.map_err(broker_error)?;
    Ok(Json(ConnectStart { authorize_url }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    /// What the server gave the provider when the connection began.
    #[param(min_length = 1, max_length = 256)]
    pub state: String,
    /// The provider's authorization code.
    #[param(max_length = 2048, nullable = false)]
    pub code: Option<String>,
    /// Set by the provider when the person declined or something failed there.
    #[param(max_length = 256, nullable = false)]
    pub error: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/integrations/callback", tag = "integrations", params(CallbackQuery),
    responses((status = 200, description = "The account is connected.", body = ConnectionView),
        (status = 403, description = "The provider did not connect the account (`consent_refused`), or the link is used, expired or not one (`invalid_state`): start connecting again.", body = ErrorBody),
        (status = 502, description = "The provider did not give a token for the code (`provider_error`).", body = ErrorBody)))]
/// Where the provider sends the person back: the code is exchanged for tokens, sealed in the
/// vault. The `state` works once.
pub async fn callback(State(app): State<App>, headers: axum::http::HeaderMap, query: Result<ApiQuery<CallbackQuery>, ApiError>) -> axum::response::Response {
    use axum::response::IntoResponse;
    // A person's browser (the console) goes back to the integrations page, told what happened.
    let browser = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"));
    let done = match query {
        Ok(ApiQuery(q)) => finish(&app, q).await,
        Err(e) => Err(e),
    };
    match (done, browser) {
        (Ok(c), true) => crate::console::back("/console/integrations", Ok(format!("{} is connected.", c.provider))),
        (Err(e), true) => crate::console::back("/console/integrations", Err(e.message)),
        (Ok(c), false) => Json(c).into_response(),
        (Err(e), false) => e.into_response(),
    }
}

async fn finish(app: &App, q: CallbackQuery) -> Result<ConnectionView, ApiError> {
    if let Some(e) = q.error {
        let e: String = e.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
        return Err(ApiError::new(StatusCode::FORBIDDEN, "consent_refused", format!("the provider did not connect the account ({e}); start connecting again")));
    }
    let Some(code) = q.code else {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "invalid_state", "this connection link has no code; start connecting again"));
    };
    // A link that is not (or no longer) one: refused like a forged one, whatever the reason.
    let c = app.broker.finish_connect(&q.state, &code, None).await.map_err(|e| match e.code() {
        "not_found" | "unknown_provider" | "invalid_state" | "invalid_request" | "wrong_member" => ApiError::new(StatusCode::FORBIDDEN, "invalid_state", e.to_string()),
        _ => broker_error(e),
    })?;
    Ok(c.into())
}

#[utoipa::path(delete, path = "/api/v1/integrations/connections/{connection_id}", tag = "integrations", security(("tenant_key" = [])),
    params(("connection_id" = String, Path)),
    responses((status = 204, description = "Revoked at the provider (where it can be) and deleted with its tokens."),
        (status = 404, description = "No such connection of the caller's tenant (`not_found`).", body = ErrorBody)))]
/// Disconnects: the grant is revoked at the provider and the connection and its tokens deleted.
pub async fn disconnect(State(app): State<App>, caller: TenantCaller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    if clawpen_core::ids::ConnectionId::parse(&id).is_err() {
        return Err(ApiError::not_found("connection"));
    }
    app.broker.disconnect(&caller.tenant.id, &id).await.map_err(broker_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProposalView {
    /// Per tenant, 1, 2, 3 …: what `/approve N` names.
    pub number: i64,
    /// The agent (`ag_…`) that proposed it.
    pub agent_id: String,
    pub tool: String,
    pub provider: String,
    /// Where it would be written.
    pub target: String,
    /// Exactly what would be written.
    pub text: String,
    /// The agent had read outside content (mail, an issue…) before proposing: the target or
    /// text may come from there rather than from the user.
    pub from_tool_result: bool,
    /// `pending`, `approved`, `rejected` or `failed`.
    pub state: String,
    pub created_at: i64,
    pub decided_by: Option<String>,
    /// What the provider answered when it was done.
    pub outcome: Option<String>,
}

impl From<clawpen_broker::Proposal> for ProposalView {
    fn from(p: clawpen_broker::Proposal) -> Self {
        ProposalView {
            number: p.number,
            agent_id: p.agent,
            tool: p.tool,
            provider: p.provider,
            target: p.target,
            text: p.text,
            from_tool_result: p.from_tool_result,
            state: p.state,
            created_at: p.created_at,
            decided_by: p.decided_by,
            outcome: p.outcome,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProposalList {
    pub proposals: Vec<ProposalView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProposalQuery {
    /// Only those waiting for a decision (default true).
    #[param(nullable = false)]
    pub pending: Option<bool>,
}

#[utoipa::path(get, path = "/api/v1/proposals", tag = "integrations", security(("tenant_key" = [])), params(ProposalQuery),
    responses((status = 200, description = "The tenant's proposals, newest first.", body = ProposalList)))]
/// What the tenant's agents proposed to write (a draft, a comment), for a member to decide.
pub async fn proposals(State(app): State<App>, caller: TenantCaller, ApiQuery(q): ApiQuery<ProposalQuery>) -> Result<Json<ProposalList>, ApiError> {
    let list = app.broker.proposals(&caller.tenant.id, q.pending.unwrap_or(true)).await.map_err(broker_error)?;
    Ok(Json(ProposalList { proposals: list.into_iter().map(Into::into).collect() }))
}

fn number(n: &str) -> Result<i64, ApiError> {
    n.parse::<i64>().ok().filter(|n| *n > 0 && *n < 10_i64.pow(16)).ok_or_else(|| ApiError::not_found("proposal"))
}

#[utoipa::path(post, path = "/api/v1/proposals/{number}/approve", tag = "integrations", security(("tenant_key" = [])),
    params(("number" = String, Path)),
    responses((status = 200, description = "Done at the provider (or `failed`, with its answer in `outcome`).", body = ProposalView),
        (status = 404, description = "No such proposal of the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "It was decided already (`conflict`).", body = ErrorBody)))]
/// Approves a proposal: the write is made now, exactly as shown.
pub async fn approve(State(app): State<App>, caller: TenantCaller, Path(n): Path<String>) -> Result<Json<ProposalView>, ApiError> {
    let p = app.broker.approve(&caller.tenant.id, &member(&caller), number(&n)?).await.map_err(broker_error)?;
    Ok(Json(p.into()))
}

#[utoipa::path(post, path = "/api/v1/proposals/{number}/reject", tag = "integrations", security(("tenant_key" = [])),
    params(("number" = String, Path)),
    responses((status = 200, description = "Rejected; nothing was written.", body = ProposalView),
        (status = 404, description = "No such proposal of the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "It was decided already (`conflict`).", body = ErrorBody)))]
/// Rejects a proposal: nothing is written.
pub async fn reject(State(app): State<App>, caller: TenantCaller, Path(n): Path<String>) -> Result<Json<ProposalView>, ApiError> {
    let p = app.broker.reject(&caller.tenant.id, &member(&caller), number(&n)?).await.map_err(broker_error)?;
    Ok(Json(p.into()))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToolCallView {
    pub agent_id: String,
    pub tool: String,
    /// SHA-256 (hex) of the call's arguments: which calls were the same, never what they said.
    pub args_digest: String,
    /// `ok`, or why it was refused or failed.
    pub outcome: String,
    pub duration_ms: i64,
    /// Bytes of the result given to the agent.
    pub bytes: i64,
    pub at: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToolCallList {
    pub calls: Vec<ToolCallView>,
}

#[utoipa::path(get, path = "/api/v1/tool-calls", tag = "integrations", security(("tenant_key" = [])), params(LimitQuery),
    responses((status = 200, description = "The tenant's latest tool calls, newest first.", body = ToolCallList)))]
/// The audit of the tenant's tool calls.
pub async fn tool_calls(State(app): State<App>, caller: TenantCaller, ApiQuery(q): ApiQuery<LimitQuery>) -> Result<Json<ToolCallList>, ApiError> {
    let limit = super::extract::bounded("limit", q.limit, 100, 1000)?;
    let calls = app.broker.audit(&caller.tenant.id, limit as u32).await.map_err(broker_error)?;
    Ok(Json(ToolCallList {
        calls: calls.into_iter().map(|c| ToolCallView { agent_id: c.agent, tool: c.tool, args_digest: c.args_digest, outcome: c.outcome, duration_ms: c.duration_ms, bytes: c.bytes, at: c.at }).collect(),
    }))
}
