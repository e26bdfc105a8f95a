//! Tenant routes: a tenant's own agents. Bearer tenant API key. Every query is scoped by the
//! caller's tenant, so another tenant's agent answers 404 exactly like a missing one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use clawpen_agent::protocol::MessageIn;
use clawpen_store::StoreError;

use super::extract::{bounded, AgentPath, ApiJson, ApiQuery, TenantCaller};
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
    Ok(AgentView::from(a).paused(&pause_of(app, caller).await?).with_disk(app))
}

pub(super) fn agent_not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found("agent"),
        other => other.into(),
    }
}

/// Makes an agent (its workspace, no sandbox yet), and starts it with `start: true`.
#[utoipa::path(post, path = "/api/v1/agents", tag = "agents", security(("tenant_key" = [])), request_body = CreateAgent,
    responses((status = 201, description = "The agent (running, with `start: true`).", body = AgentView),
        (status = 409, description = "The tenant has an agent of that name, or as many agents as its plan allows (`conflict`), or `telegram` without a bot of its own (`no_telegram_bot`).", body = ErrorBody),
        (status = 502, description = "The sandbox exited or did not become healthy while starting (`agent_exited`, `agent_unhealthy`); the agent is kept, see its logs.", body = ErrorBody),
        (status = 503, description = "No node has room (`node_full`), or the container runtime is unreachable or the image missing (`runtime_unavailable`, `image_missing`).", body = ErrorBody)))]
pub async fn create_agent(State(app): State<App>, caller: TenantCaller, ApiJson(body): ApiJson<CreateAgent>) -> Result<(StatusCode, Json<AgentView>), ApiError> {
    if body.greet || body.telegram {
        let agent = app.deploy(&caller.tenant, &body.name, &caller.actor(), body.telegram).await?;
        return Ok((StatusCode::CREATED, Json(view(&app, &caller, agent).await?)));
    }
    let agent = app.create_agent(&caller.tenant, &body.name, &caller.actor(), body.start).await?;
    let agent = if body.start {
        app.start_agent(&caller.tenant, &agent.id, &caller.actor(), "created with start=true").await?
    } else {
        agent
    };
    Ok((StatusCode::CREATED, Json(view(&app, &caller, agent).await?)))
}

#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", security(("tenant_key" = [])),
    responses((status = 200, description = "The tenant's agents.", body = AgentList)))]
pub async fn list_agents(State(app): State<App>, caller: TenantCaller) -> Result<Json<AgentList>, ApiError> {
    let pause = pause_of(&app, &caller).await?;
    let agents = app.store.list_agents(&caller.tenant.id).await?.into_iter().map(|a| AgentView::from(a).paused(&pause).with_disk(&app)).collect();
    Ok(Json(AgentList { agents }))
}

#[utoipa::path(get, path = "/api/v1/agents/{agent_id}", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)),
    responses((status = 200, description = "The agent.", body = AgentView), (status = 404, description = "No such agent of the caller's tenant (`not_found`).", body = ErrorBody)))]
pub async fn get_agent(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath) -> Result<Json<AgentView>, ApiError> {
    let a = app.store.get_agent(&caller.tenant.id, &id).await.map_err(agent_not_found)?;
    Ok(Json(view(&app, &caller, a).await?))
}

/// Deletes the agent: its sandbox, its workspace, its record.
#[utoipa::path(delete, path = "/api/v1/agents/{agent_id}", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)),
    responses((status = 204, description = "Deleted."), (status = 404, description = "No such agent of the caller's tenant (`not_found`).", body = ErrorBody), (status = 503, description = "The container runtime is unreachable (`runtime_unavailable`).", body = ErrorBody)))]
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

/// Starts the agent and returns once it answers; clears a crash loop.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/start", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)),
    responses((status = 200, description = "The running agent.", body = AgentView), (status = 404, description = "No such agent of the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 502, description = "The sandbox exited or did not become healthy while starting (`agent_exited`, `agent_unhealthy`); the agent is kept, see its logs.", body = ErrorBody),
        (status = 503, description = "No node has room (`node_full`), or the container runtime is unreachable or the image missing (`runtime_unavailable`, `image_missing`).", body = ErrorBody)))]
pub async fn start_agent(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath) -> Result<Json<AgentView>, ApiError> {
    let a = app.start_agent(&caller.tenant, &id, &caller.actor(), "requested").await.map_err(not_found_as_agent)?;
    Ok(Json(view(&app, &caller, a).await?))
}

/// Stops the agent; its container and workspace are kept.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/stop", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)),
    responses((status = 200, description = "The stopped agent.", body = AgentView), (status = 404, description = "No such agent of the caller's tenant (`not_found`).", body = ErrorBody), (status = 503, description = "The container runtime is unreachable (`runtime_unavailable`).", body = ErrorBody)))]
pub async fn stop_agent(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath) -> Result<Json<AgentView>, ApiError> {
    let a = app.stop_agent(&caller.tenant, &id, &caller.actor(), "requested").await.map_err(not_found_as_agent)?;
    Ok(Json(view(&app, &caller, a).await?))
}

#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/hibernate", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)), request_body = Hibernate,
    responses((status = 200, description = "The agent, asleep in that tier (or a deeper one it was in).", body = AgentView), (status = 404, description = "No such agent of the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "The agent is not running, or its sandbox is not (`not_running`).", body = ErrorBody), (status = 503, description = "The container runtime is unreachable (`runtime_unavailable`).", body = ErrorBody)))]
/// Puts a running agent to sleep now, in the tier given; the next message or connection wakes it.
pub async fn hibernate(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath, ApiJson(body): ApiJson<Hibernate>) -> Result<Json<AgentView>, ApiError> {
    let tier = clawpen_core::lifecycle::Tier::from(body.tier);
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

/// The last lines its sandbox wrote (none before its first start).
#[utoipa::path(get, path = "/api/v1/agents/{agent_id}/logs", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path), LogsQuery),
    responses((status = 200, description = "The lines, oldest first.", body = Logs), (status = 404, description = "No such agent of the caller's tenant (`not_found`).", body = ErrorBody), (status = 503, description = "The container runtime is unreachable (`runtime_unavailable`).", body = ErrorBody)))]
pub async fn logs(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath, ApiQuery(q): ApiQuery<LogsQuery>) -> Result<Json<Logs>, ApiError> {
    app.store.get_agent(&caller.tenant.id, &id).await.map_err(agent_not_found)?;
    let tail = bounded("tail", q.tail, 100, 1000)? as usize;
    let name = clawpen_core::spec::container_name(&app.instance, &id);
    let lines = match app.runtime.logs(&name, tail).await {
        Ok(lines) => lines,
        Err(clawpen_runtime::RuntimeError::NotFound) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    Ok(Json(Logs { lines }))
}

/// The agent's audit lines (starts, stops, hibernation, restarts), newest first.
#[utoipa::path(get, path = "/api/v1/agents/{agent_id}/events", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path), LimitQuery),
    responses((status = 200, description = "The latest lines.", body = AuditList), (status = 404, description = "No such agent of the caller's tenant (`not_found`).", body = ErrorBody)))]
pub async fn events(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath, ApiQuery(q): ApiQuery<LimitQuery>) -> Result<Json<AuditList>, ApiError> {
    app.store.get_agent(&caller.tenant.id, &id).await.map_err(agent_not_found)?;
    let limit = bounded("limit", q.limit, 100, 1000)?;
    let entries = app.store.list_audit(Some(&caller.tenant.id), Some(&id), limit).await?.into_iter().map(Into::into).collect();
    Ok(Json(AuditList { entries }))
}

/// Sends a message and waits for the reply, waking the agent first from whichever tier it sleeps in.
/// With `Accept: text/event-stream` the reply comes as it is written: `delta` events
/// `{"text"}` with each piece of the model's answer, then one `done` event with the whole reply
/// (the JSON answer below), or an `error` event `{"error": {"code", "message"}}`. Closing the
/// stream stops the run and its model call.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/messages", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)), request_body = SendMessage,
    responses((status = 200, description = "The reply (or why the run stopped or was refused, with `paused` or `error_code`); with `Accept: text/event-stream`, its events.", content(
            (MessageReply = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "The body is not JSON (`invalid_json`), or the agent refused the message (`agent_refused`).", body = ErrorBody),
        (status = 404, description = "No such agent of the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "The agent is crash-looping (`agent_crashloop`), or was stopped, put to sleep or deleted while it answered (`agent_interrupted`, `conflict`).", body = ErrorBody),
        (status = 429, description = "The tenant sent more messages this minute than its plan allows (`rate_limited`); the message says when to try again.", body = ErrorBody),
        (status = 502, description = "The agent failed to answer, or answered as another agent (`agent_error`, `agent_mismatch`).", body = ErrorBody),
        (status = 503, description = "The agent could not be woken (`wake_failed`, `node_full`, `runtime_unavailable`).", body = ErrorBody),
        (status = 504, description = "The agent did not answer in time (`agent_timeout`).", body = ErrorBody)))]
pub async fn send_message(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath, headers: axum::http::HeaderMap, ApiJson(body): ApiJson<SendMessage>) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let agent = app.store.get_agent(&caller.tenant.id, &id).await.map_err(agent_not_found)?;
    if body.text.is_empty() || body.text.chars().count() > MAX_MESSAGE_CHARS {
        return Err(ApiError::invalid(format!("text: must be 1 to {MAX_MESSAGE_CHARS} characters")));
    }
    // The agent refuses a bad session too, but only after it was woken for it.
    if body.session.as_deref().is_some_and(|s| s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')) {
        return Err(ApiError::invalid("session: must be 1 to 64 of [A-Za-z0-9_-]"));
    }
    let msg = MessageIn { text: body.text, session: body.session, run_id: None, greeting: false };
    let wants_stream = headers.get("accept").and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"));
    if wants_stream {
        if let Some(out) = app.command_reply(&caller.tenant, &agent, &msg, &caller.actor()).await {
            return Ok(command_events(out).into_response());
        }
        let stream = app.deliver_message_stream(&caller.tenant, &agent, msg, &caller.actor()).await?;
        return Ok(reply_events(stream).into_response());
    }
    let out = match app.deliver_message(&caller.tenant, &agent, msg, &caller.actor()).await {
        Ok(out) => out,
        Err(e) if e.code == "agent_error" => return Err(interrupted(&app, &caller, &id, e).await),
        Err(e) => return Err(e),
    };
    Ok(Json(MessageReply::from(out)).into_response())
}

impl From<clawpen_agent::protocol::MessageOut> for MessageReply {
    fn from(out: clawpen_agent::protocol::MessageOut) -> Self {
        MessageReply {
            reply: out.reply,
            session: out.session,
            run_id: out.run_id,
            tool_calls: out.tool_calls,
            stopped_by: out.stopped_by,
            paused: out.paused,
            error_code: out.error_code,
            paused_until: out.paused_until,
        }
    }
}

/// A command's answer (`/approve N` …) as the events of a streamed reply: all of it as one
/// `delta`, then `done`.
fn command_events(out: clawpen_agent::protocol::MessageOut) -> axum::response::sse::Sse<impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>> {
    let delta = delta_event(&out.reply);
    axum::response::sse::Sse::new(futures_util::stream::iter([Ok(delta), Ok(done_event(out))]))
}

/// A piece of a streamed reply.
fn delta_event(text: &str) -> axum::response::sse::Event {
    axum::response::sse::Event::default().event("delta").data(serde_json::json!({ "text": text }).to_string())
}

/// The end of a streamed reply: the whole of it.
fn done_event(out: clawpen_agent::protocol::MessageOut) -> axum::response::sse::Event {
    axum::response::sse::Event::default().event("done").data(serde_json::to_string(&MessageReply::from(out)).unwrap_or_default())
}

/// A streamed reply as server-sent events (see [`send_message`]).
fn reply_events(stream: crate::delivery::ReplyStream) -> axum::response::sse::Sse<impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>> {
    use axum::response::sse::Event;
    use crate::delivery::ReplyEvent;
    let events = futures_util::stream::unfold(Some(stream), |stream| async move {
        let mut stream = stream?;
        let ev = stream.next().await?;
        let (event, more) = match ev {
            ReplyEvent::Delta(text) => (delta_event(&text), true),
            ReplyEvent::Done(out) => (done_event(out), false),
            ReplyEvent::Failed(e) => (Event::default().event("error").data(serde_json::json!({ "error": { "code": e.code, "message": e.message } }).to_string()), false),
        };
        Some((Ok(event), more.then_some(stream)))
    });
    axum::response::sse::Sse::new(events)
}

/// A message whose connection broke: when a stop, hibernation or delete (another request's,
/// which holds the agent's lock meanwhile) took the sandbox away under it, that is a 409 the
/// caller can act on, not a failure of the agent's (502).
async fn interrupted(app: &App, caller: &TenantCaller, id: &clawpen_core::ids::AgentId, e: ApiError) -> ApiError {
    let _guard = app.lock_agent(id).await;
    let taken_away = match app.store.get_agent(&caller.tenant.id, id).await {
        Ok(a) => a.desired_state != clawpen_store::DesiredState::Running || a.hibernation != clawpen_core::lifecycle::Tier::Awake,
        Err(StoreError::NotFound) => true,
        Err(other) => return other.into(),
    };
    if taken_away {
        ApiError::new(StatusCode::CONFLICT, "agent_interrupted", "the agent was stopped, put to sleep or deleted while it answered; send the message again")
    } else {
        e
    }
}

/// How long a connect URL stays valid.
pub const CONNECT_URL_TTL_SECS: i64 = 300;

/// A signed URL that opens a WebSocket to the agent through the gateway, valid for five minutes.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/connect-url", tag = "agents", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)),
    responses((status = 200, description = "The URL.", body = ConnectUrl), (status = 404, description = "No such agent of the caller's tenant (`not_found`).", body = ErrorBody)))]
pub async fn connect_url(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath) -> Result<Json<ConnectUrl>, ApiError> {
    app.store.get_agent(&caller.tenant.id, &id).await.map_err(agent_not_found)?;
    let expires_at = clawpen_store::now_ms() / 1000 + CONNECT_URL_TTL_SECS;
    let query = app.signer.sign(caller.tenant.id.as_str(), id.as_str(), expires_at);
    let base = app.config.public_url.clone().unwrap_or_else(|| format!("http://{}", app.config.listen));
    Ok(Json(ConnectUrl { url: format!("{}/gateway/connect?{query}", base.trim_end_matches('/')), expires_at }))
}
