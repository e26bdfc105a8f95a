//! Tenant routes: an agent's schedules (runs it starts on its own at set times; see
//! `schedules.rs`). Every query is scoped by the caller's tenant: another tenant's schedule
//! answers 404 exactly like a missing one.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use clawpen_core::ids::ScheduleId;
use clawpen_store::schedules::{Schedule, ScheduleRun};
use clawpen_store::StoreError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{ApiJson, AgentPath, TenantCaller};
use crate::app::App;
use crate::error::{ApiError, ErrorBody};
use crate::schedules::NewScheduleRequest;

/// A schedule id from the path; anything that is not one is a 404, like a missing schedule.
pub struct SchedulePath(pub ScheduleId);

impl FromRequestParts<App> for SchedulePath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let axum::extract::Path(v) = axum::extract::Path::<Vec<String>>::from_request_parts(parts, app).await.map_err(|_| ApiError::not_found("schedule"))?;
        ScheduleId::parse(v.first().map(String::as_str).unwrap_or("")).map(SchedulePath).map_err(|_| ApiError::not_found("schedule"))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleRunView {
    /// The due time the run served (Unix ms).
    pub due_at: i64,
    /// The run's id, as the meter and the usage show it.
    pub run_id: Option<String>,
    pub started_at: i64,
    /// When the reply's first piece arrived.
    pub first_token_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// `running`, `ok`, `failed`, or `interrupted` (the server stopped during it; not run again).
    pub status: String,
    /// Where the reply went, or what went wrong.
    pub detail: Option<String>,
}

impl From<ScheduleRun> for ScheduleRunView {
    fn from(r: ScheduleRun) -> Self {
        ScheduleRunView { due_at: r.due_at, run_id: r.run_id, started_at: r.started_at, first_token_at: r.first_token_at, finished_at: r.finished_at, status: r.status, detail: r.detail }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    pub id: String,
    pub agent_id: String,
    pub name: String,
    pub cron: Option<String>,
    pub every_secs: Option<i64>,
    pub tz: String,
    pub message: String,
    /// `console` or `telegram`.
    pub channel: String,
    /// With `telegram`: the paired person who gets the replies.
    pub telegram_user: Option<String>,
    pub created_at: i64,
    /// When the next run starts (Unix ms: the due time, its spread, any pause after failures);
    /// `null` while paused.
    pub next_run_at: Option<i64>,
    pub paused: bool,
    /// Why it is paused: its tenant paused it, a credit cap, runs that kept failing.
    pub paused_reason: Option<String>,
    /// When a paused schedule resumes by itself (a cap that lifts); `null`: when its tenant
    /// resumes it.
    pub paused_until: Option<i64>,
    /// Failed runs in a row.
    pub failures: i64,
    /// The newest run.
    pub last_run: Option<ScheduleRunView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleRunList {
    /// Newest first.
    pub runs: Vec<ScheduleRunView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleChange {
    /// `true` pauses the schedule; `false` resumes it (its failures forgotten, from its next due
    /// time after now).
    pub paused: bool,
}

async fn view(app: &App, s: Schedule) -> Result<ScheduleView, ApiError> {
    let last_run = app.store.schedule_runs(&s.tenant_id, &s.id, 1).await?.into_iter().next().map(ScheduleRunView::from);
    let spread = (app.config.schedules.spread_secs as i64).saturating_mul(1000);
    Ok(ScheduleView {
        next_run_at: crate::schedules::next_run_at(&s, spread),
        id: s.id.to_string(),
        agent_id: s.agent_id.to_string(),
        name: s.name,
        cron: s.cron,
        every_secs: s.every_secs,
        tz: s.tz,
        message: s.message,
        channel: s.channel,
        telegram_user: s.target,
        created_at: s.created_at,
        paused: s.paused_reason.is_some(),
        paused_reason: s.paused_reason,
        paused_until: s.paused_until,
        failures: s.failures,
        last_run,
    })
}

async fn own(app: &App, caller: &TenantCaller, id: &ScheduleId) -> Result<Schedule, ApiError> {
    app.store.get_schedule(&caller.tenant.id, id).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::not_found("schedule"),
        other => other.into(),
    })
}

#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/schedules", tag = "schedules", operation_id = "create_schedule", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)), request_body = NewScheduleRequest,
    responses((status = 201, description = "The schedule, with its first run's time.", body = ScheduleView),
        (status = 403, description = "The tenant's plan has no scheduled runs (`no_schedules`).", body = ErrorBody),
        (status = 404, description = "No such agent of the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "A schedule of that name exists, or the plan's number of schedules is reached (`schedule_conflict`).", body = ErrorBody),
        (status = 422, description = "The timing is not one (`bad_timing`), runs more often than the plan allows (`too_often`), or a field is wrong (`invalid_input`).", body = ErrorBody)))]
/// Gives the agent a schedule: a cron expression in a time zone, or an interval, and the message
/// each run starts from.
pub async fn create(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath, ApiJson(body): ApiJson<NewScheduleRequest>) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    app.store.get_agent(&caller.tenant.id, &id).await.map_err(super::agents::agent_not_found)?;
    let s = app.create_schedule(&caller.tenant, &id, &body, &caller.actor()).await?;
    Ok((StatusCode::CREATED, Json(view(&app, s).await?)))
}

#[utoipa::path(get, path = "/api/v1/agents/{agent_id}/schedules", tag = "schedules", operation_id = "list_agent_schedules", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)),
    responses((status = 200, description = "The agent's schedules, each with its next and last run.", body = ScheduleList),
        (status = 404, description = "No such agent of the caller's tenant (`not_found`).", body = ErrorBody)))]
pub async fn list_agent(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath) -> Result<Json<ScheduleList>, ApiError> {
    app.store.get_agent(&caller.tenant.id, &id).await.map_err(super::agents::agent_not_found)?;
    let mut schedules = Vec::new();
    for s in app.store.list_schedules(&caller.tenant.id, Some(&id)).await? {
        schedules.push(view(&app, s).await?);
    }
    Ok(Json(ScheduleList { schedules }))
}

#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules", operation_id = "list_schedules", security(("tenant_key" = [])),
    responses((status = 200, description = "The tenant's schedules, all agents, each with its next and last run.", body = ScheduleList)))]
pub async fn list(State(app): State<App>, caller: TenantCaller) -> Result<Json<ScheduleList>, ApiError> {
    let mut schedules = Vec::new();
    for s in app.store.list_schedules(&caller.tenant.id, None).await? {
        schedules.push(view(&app, s).await?);
    }
    Ok(Json(ScheduleList { schedules }))
}

#[utoipa::path(get, path = "/api/v1/schedules/{schedule_id}", tag = "schedules", operation_id = "get_schedule", security(("tenant_key" = [])),
    params(("schedule_id" = String, Path)),
    responses((status = 200, description = "The schedule.", body = ScheduleView),
        (status = 404, description = "No such schedule of the caller's tenant (`not_found`).", body = ErrorBody)))]
pub async fn get(State(app): State<App>, caller: TenantCaller, SchedulePath(id): SchedulePath) -> Result<Json<ScheduleView>, ApiError> {
    let s = own(&app, &caller, &id).await?;
    Ok(Json(view(&app, s).await?))
}

#[utoipa::path(patch, path = "/api/v1/schedules/{schedule_id}", tag = "schedules", operation_id = "change_schedule", security(("tenant_key" = [])),
    params(("schedule_id" = String, Path)), request_body = ScheduleChange,
    responses((status = 200, description = "The schedule, paused or resumed.", body = ScheduleView),
        (status = 404, description = "No such schedule of the caller's tenant (`not_found`).", body = ErrorBody)))]
/// Pauses or resumes a schedule.
pub async fn change(State(app): State<App>, caller: TenantCaller, SchedulePath(id): SchedulePath, ApiJson(body): ApiJson<ScheduleChange>) -> Result<Json<ScheduleView>, ApiError> {
    let s = own(&app, &caller, &id).await?;
    app.set_schedule_paused(&caller.tenant, &s, body.paused, &caller.actor()).await?;
    Ok(Json(view(&app, own(&app, &caller, &id).await?).await?))
}

#[utoipa::path(delete, path = "/api/v1/schedules/{schedule_id}", tag = "schedules", operation_id = "delete_schedule", security(("tenant_key" = [])),
    params(("schedule_id" = String, Path)),
    responses((status = 204, description = "The schedule and its runs' record are gone; a run in flight ends as it would have."),
        (status = 404, description = "No such schedule of the caller's tenant (`not_found`).", body = ErrorBody)))]
pub async fn delete(State(app): State<App>, caller: TenantCaller, SchedulePath(id): SchedulePath) -> Result<StatusCode, ApiError> {
    let s = own(&app, &caller, &id).await?;
    app.store.delete_schedule(&caller.tenant.id, &id).await?;
    app.audit(&caller.tenant.id, Some(&s.agent_id), &caller.actor(), "schedule.delete", &s.name, Some(serde_json::json!({"schedule": id.to_string()}))).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/schedules/{schedule_id}/runs", tag = "schedules", operation_id = "list_schedule_runs", security(("tenant_key" = [])),
    params(("schedule_id" = String, Path)),
    responses((status = 200, description = "The schedule's newest runs (at most 50).", body = ScheduleRunList),
        (status = 404, description = "No such schedule of the caller's tenant (`not_found`).", body = ErrorBody)))]
pub async fn runs(State(app): State<App>, caller: TenantCaller, SchedulePath(id): SchedulePath) -> Result<Json<ScheduleRunList>, ApiError> {
    own(&app, &caller, &id).await?;
    let runs = app.store.schedule_runs(&caller.tenant.id, &id, 50).await?.into_iter().map(ScheduleRunView::from).collect();
    Ok(Json(ScheduleRunList { runs }))
}
