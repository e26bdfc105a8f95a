//! Tenant routes: a tenant's own agents. Bearer tenant API key. Every query is scoped by the
//! caller's tenant, so another tenant's agent answers 404 exactly like a missing one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use clawpen_agent::protocol::MessageIn;
use clawpen_store::StoreError;

use super::extract::{AgentPath, ApiJson, ApiQuery, TenantCaller};
use super::views::*;
use crate::app::App;
use crate::error::{ApiError, ErrorBody};

/// Longest message text accepted, in characters.
pub const MAX_MESSAGE_CHARS: usize = 32_000;

/// The tenant's pause in force, shown on every agent view.
async fn pause_of(app: &App, caller: &TenantCaller) -> Result<(Option<i64>, Option<String>), ApiError> {
    Ok(super::usage::active_pause(&super::usage::account_of(app, &caller.tenant).await?))
}

async fn view(app: &App, caller: &TenantCaller, a: clawpen_store::Agent) -> Result<AgentView, ApiError> {
    Ok(AgentView::from(a).paused(&pause_of(app, caller).await?))
}

fn agent_not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found("agent"),
        other => other.into(),
    }
}

#[utoipa::path(post, path = "/api/v1/agents", tag = "agents", security(("tenant_key" = [])), request_body = CreateAgent,
    responses((status = 201, body = AgentView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn create_agent(State(app): State<App>, caller: TenantCaller, ApiJson(body): ApiJson<CreateAgent>) -> Result<(StatusCode, Json<AgentView>), ApiError> {
    let agent = app.create_agent(&caller.tenant, &body.name, &caller.actor()).await?;
    let agent = if body.start {
        app.start_agent(&caller.tenant, &agent.id, &caller.actor(), "created with start=true").await?
    } else {
        agent
    };
    Ok((StatusCode::CREATED, Json(view(&app, &caller, agent).await?)))
}

#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", security(("tenant_key" = [])),
    responses((status = 200, body = AgentList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_agents(State(app): State<App>, caller: TenantCaller) -> Result<Json<AgentList>, ApiError> {
    let pause = pause_of(&app, &caller).await?;
    let agents = app.store.list_agents(&caller.tenant.id).await?.into_iter().map(|a| AgentView::from(a).paused(&pause)).collect();
    Ok(Json(AgentList { agents }))
}

#[utoipa::path(get, path = "/api/v1/agents/{agent_id}", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)),
    responses((status = 200, body = AgentView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_agent(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath) -> Result<Json<AgentView>, ApiError> {
    let a = app.store.get_agent(&caller.tenant.id, &id).await.map_err(agent_not_found)?;
    Ok(Json(view(&app, &caller, a).await?))
}

#[utoipa::path(delete, path = "/api/v1/agents/{agent_id}", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_agent(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath) -> Result<StatusCode, ApiError> {
    app.delete_agent(&caller.tenant, &id, &caller.actor(), "requested").await.map_err(not_found_as_agent)?;
    Ok(StatusCode::NO_CONTENT)
}

fn not_found_as_agent(e: ApiError) -> ApiError {
    if e.status == StatusCode::NOT_FOUND {
        ApiError::not_found("agent")
    } else {
        e
    }
}

#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/start", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)),
    responses((status = 200, body = AgentView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn start_agent(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath) -> Result<Json<AgentView>, ApiError> {
    let a = app.start_agent(&caller.tenant, &id, &caller.actor(), "requested").await.map_err(not_found_as_agent)?;
    Ok(Json(view(&app, &caller, a).await?))
}

#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/stop", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)),
    responses((status = 200, body = AgentView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn stop_agent(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath) -> Result<Json<AgentView>, ApiError> {
    let a = app.stop_agent(&caller.tenant, &id, &caller.actor(), "requested").await.map_err(not_found_as_agent)?;
    Ok(Json(view(&app, &caller, a).await?))
}

#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/hibernate", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)), request_body = Hibernate,
    responses((status = 200, body = AgentView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
/// Puts a running agent to sleep now, in the tier given; the next message or connection wakes it.
pub async fn hibernate(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath, ApiJson(body): ApiJson<Hibernate>) -> Result<Json<AgentView>, ApiError> {
    let tier = match clawpen_core::lifecycle::Tier::parse(&body.tier) {
        Some(t) if t != clawpen_core::lifecycle::Tier::Awake => t,
        _ => return Err(ApiError::invalid("tier: must be paused, stopped or removed")),
    };
    let _guard = app.lock_agent(&id).await;
    let a = app.store.get_agent(&caller.tenant.id, &id).await.map_err(agent_not_found)?;
    if a.desired_state != clawpen_store::DesiredState::Running || a.observed_state == clawpen_store::ObservedState::Crashloop {
        return Err(ApiError::new(StatusCode::CONFLICT, "not_running", format!("the agent is {} ({}); only a running agent hibernates", a.desired_state, a.observed_state)));
    }
    if a.hibernation < tier {
        app.hibernate_now(&caller.tenant, &id, tier, &caller.actor(), "asked by the owner").await?;
    }
    let a = app.store.get_agent(&caller.tenant.id, &id).await?;
    Ok(Json(view(&app, &caller, a).await?))
}

#[utoipa::path(get, path = "/api/v1/agents/{agent_id}/logs", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path), LogsQuery),
    responses((status = 200, body = Logs), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn logs(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath, ApiQuery(q): ApiQuery<LogsQuery>) -> Result<Json<Logs>, ApiError> {
    app.store.get_agent(&caller.tenant.id, &id).await.map_err(agent_not_found)?;
    let tail = q.tail.unwrap_or(100);
    if !(1..=1000).contains(&tail) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", "tail: must be between 1 and 1000"));
    }
    let name = clawpen_core::spec::container_name(&app.instance, &id);
    let lines = match app.runtime.logs(&name, tail).await {
        Ok(lines) => lines,
        Err(clawpen_runtime::RuntimeError::NotFound) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    Ok(Json(Logs { lines }))
}

#[utoipa::path(get, path = "/api/v1/agents/{agent_id}/events", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path), LimitQuery),
    responses((status = 200, body = AuditList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn events(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath, ApiQuery(q): ApiQuery<LimitQuery>) -> Result<Json<AuditList>, ApiError> {
    app.store.get_agent(&caller.tenant.id, &id).await.map_err(agent_not_found)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = app.store.list_audit(Some(&caller.tenant.id), Some(&id), limit).await?.into_iter().map(Into::into).collect();
    Ok(Json(AuditList { entries }))
}

#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/messages", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)), request_body = SendMessage,
    responses((status = 200, body = MessageReply), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub async fn send_message(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath, ApiJson(body): ApiJson<SendMessage>) -> Result<Json<MessageReply>, ApiError> {
    let agent = app.store.get_agent(&caller.tenant.id, &id).await.map_err(agent_not_found)?;
    if body.text.is_empty() || body.text.chars().count() > MAX_MESSAGE_CHARS {
        return Err(ApiError::invalid(format!("text: must be 1 to {MAX_MESSAGE_CHARS} characters")));
    }
    let msg = MessageIn { text: body.text, session: body.session, run_id: None };
    let out = app.deliver_message(&caller.tenant, &agent, msg, &caller.actor()).await?;
    Ok(Json(MessageReply {
        reply: out.reply,
        session: out.session,
        run_id: out.run_id,
        tool_calls: out.tool_calls,
        stopped_by: out.stopped_by,
        paused: out.paused,
        error_code: out.error_code,
        paused_until: out.paused_until,
    }))
}

/// How long a connect URL stays valid.
pub const CONNECT_URL_TTL_SECS: i64 = 300;

#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/connect-url", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)),
    responses((status = 200, body = ConnectUrl), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn connect_url(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath) -> Result<Json<ConnectUrl>, ApiError> {
    app.store.get_agent(&caller.tenant.id, &id).await.map_err(agent_not_found)?;
    let expires_at = clawpen_store::now_ms() / 1000 + CONNECT_URL_TTL_SECS;
    let query = app.signer.sign(caller.tenant.id.as_str(), id.as_str(), expires_at);
    let base = app.config.public_url.clone().unwrap_or_else(|| format!("http://{}", app.config.listen));
    Ok(Json(ConnectUrl { url: format!("{}/gateway/connect?{query}", base.trim_end_matches('/')), expires_at }))
}
