//! Admin routes: tenants, their API keys and members, and the audit log. Bearer admin token.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use clawpen_core::ids::TenantId;
use clawpen_core::names::validate_name;

use super::extract::{bounded, Admin, AgentPath, ApiJson, ApiQuery, TenantKeyPath, TenantMemberPath, TenantPath};
use super::views::*;
use crate::app::App;
use crate::error::{ApiError, ErrorBody};
use crate::fleet::Actor;

pub(super) fn admin() -> Actor {
    Actor("admin".into())
}

pub(super) async fn tenant_exists(app: &App, id: &TenantId) -> Result<clawpen_store::Tenant, ApiError> {
    app.store.get_tenant(id).await.map_err(|e| match e {
        clawpen_store::StoreError::NotFound => ApiError::not_found("tenant"),
        other => other.into(),
    })
}

/// Makes a tenant (an account or a family), with its own uid, on a plan.
#[utoipa::path(post, path = "/api/v1/tenants", tag = "admin", security(("admin" = [])), request_body = CreateTenant,
    responses((status = 201, description = "The tenant.", body = TenantView),
        (status = 409, description = "A tenant of that name exists (`conflict`).", body = ErrorBody),
        (status = 422, description = "The name is not one, or the plan is unknown (`invalid_input`).", body = ErrorBody)))]
pub async fn create_tenant(State(app): State<App>, _: Admin, ApiJson(body): ApiJson<CreateTenant>) -> Result<(StatusCode, Json<TenantView>), ApiError> {
    let t = make_tenant(&app, &body.name, body.plan, "requested").await?;
    Ok((StatusCode::CREATED, Json(t.into())))
}

/// Makes a tenant on `plan` (the default plan when `None`), for `reason`: the API's and the
/// console's.
pub async fn make_tenant(app: &App, name: &str, plan: Option<String>, reason: &str) -> Result<clawpen_store::Tenant, ApiError> {
    validate_name(name).map_err(|e| ApiError::invalid(format!("name: {e}")))?;
    let plan = plan.unwrap_or_else(|| app.config.default_plan.clone());
    if app.config.plan(&plan).is_none() {
        let known: Vec<_> = app.config.plans.keys().cloned().collect();
        return Err(ApiError::invalid(format!("plan: unknown plan; known plans: {}", known.join(", "))));
    }
    let t = app.store.create_tenant(name, &plan, app.config.sandbox.uid_base).await?;
    let detail = serde_json::json!({"name": t.name, "plan": t.plan, "uid": t.uid});
    let _ = app.store.audit(clawpen_store::NewAudit { tenant: Some(&t.id), agent: None, actor: "admin", action: "tenant.create", reason, detail: Some(&detail) }).await;
    Ok(t)
}

#[utoipa::path(get, path = "/api/v1/tenants", tag = "admin", security(("admin" = [])),
    responses((status = 200, description = "Every tenant.", body = TenantList)))]
pub async fn list_tenants(State(app): State<App>, _: Admin) -> Result<Json<TenantList>, ApiError> {
    let tenants = app.store.list_tenants().await?.into_iter().map(Into::into).collect();
    Ok(Json(TenantList { tenants }))
}

#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}", tag = "admin", security(("admin" = [])),
    params(("tenant_id" = String, Path)),
    responses((status = 200, description = "The tenant.", body = TenantView), (status = 404, description = "No such tenant (`not_found`).", body = ErrorBody)))]
pub async fn get_tenant(State(app): State<App>, _: Admin, TenantPath(id): TenantPath) -> Result<Json<TenantView>, ApiError> {
    Ok(Json(tenant_exists(&app, &id).await?.into()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteTenantQuery {
    /// Remove everything of the tenant everywhere: its audit lines, its store rows, its objects
    /// in storage (see `tenant.purge`).
    #[serde(default)]
    pub purge: bool,
}

/// Deletes a tenant with its agents, their sandboxes and dirs; its audit lines stay, unless
/// `purge`.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant_id}", tag = "admin", security(("admin" = [])),
    params(("tenant_id" = String, Path), DeleteTenantQuery),
    responses((status = 204, description = "Deleted."), (status = 404, description = "No such tenant (`not_found`).", body = ErrorBody),
        (status = 503, description = "The container runtime or storage is unreachable (`runtime_unavailable`, `storage_unavailable`); what is not deleted yet stays: try again.", body = ErrorBody)))]
pub async fn delete_tenant(State(app): State<App>, _: Admin, TenantPath(id): TenantPath, ApiQuery(q): ApiQuery<DeleteTenantQuery>) -> Result<StatusCode, ApiError> {
    if q.purge {
        app.purge_tenant(&id, &admin()).await?;
    } else {
        app.delete_tenant(&id, &admin()).await?;
    }
    app.meter.plan_changed(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// The tenant's own request to leave: everything of it is removed everywhere (as the
/// operator's `DELETE /api/v1/tenants/{id}?purge=true`); this key stops working.
#[utoipa::path(delete, path = "/api/v1/account", tag = "agents", operation_id = "purge_own", security(("tenant_key" = [])),
    responses((status = 204, description = "Everything of the tenant is gone."),
        (status = 503, description = "The container runtime or storage is unreachable; what is not deleted yet stays: try again.", body = ErrorBody)))]
pub async fn purge_own(State(app): State<App>, caller: super::extract::TenantCaller) -> Result<StatusCode, ApiError> {
    let id = caller.tenant.id.clone();
    app.purge_tenant(&id, &caller.actor()).await?;
    app.meter.plan_changed(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// Gives the tenant a new API key; its token is in this answer only.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant_id}/keys", tag = "admin", security(("admin" = [])),
    params(("tenant_id" = String, Path)),
    responses((status = 201, description = "The key and its token.", body = NewApiKey), (status = 404, description = "No such tenant (`not_found`).", body = ErrorBody)))]
pub async fn create_key(State(app): State<App>, _: Admin, TenantPath(id): TenantPath) -> Result<(StatusCode, Json<NewApiKey>), ApiError> {
    tenant_exists(&app, &id).await?;
    let (key, token) = app.store.create_api_key(&id).await?;
    let detail = serde_json::json!({"key_id": key.id.to_string()});
    let _ = app.store.audit(clawpen_store::NewAudit { tenant: Some(&id), agent: None, actor: "admin", action: "key.create", reason: "requested", detail: Some(&detail) }).await;
    Ok((StatusCode::CREATED, Json(NewApiKey { key: key.into(), token })))
}

#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}/keys", tag = "admin", security(("admin" = [])),
    params(("tenant_id" = String, Path)),
    responses((status = 200, description = "The tenant's keys, revoked ones too (never their tokens).", body = ApiKeyList),
        (status = 404, description = "No such tenant (`not_found`).", body = ErrorBody)))]
pub async fn list_keys(State(app): State<App>, _: Admin, TenantPath(id): TenantPath) -> Result<Json<ApiKeyList>, ApiError> {
    tenant_exists(&app, &id).await?;
    let keys = app.store.list_api_keys(&id).await?.into_iter().map(Into::into).collect();
    Ok(Json(ApiKeyList { keys }))
}

#[utoipa::path(delete, path = "/api/v1/tenants/{tenant_id}/keys/{key_id}", tag = "admin", security(("admin" = [])),
    params(("tenant_id" = String, Path), ("key_id" = String, Path)),
    responses((status = 204, description = "Revoked."), (status = 404, description = "No such live key of that tenant (`not_found`).", body = ErrorBody)))]
pub async fn revoke_key(State(app): State<App>, _: Admin, TenantKeyPath(t, k): TenantKeyPath) -> Result<StatusCode, ApiError> {
    app.store.revoke_api_key(&t, &k).await.map_err(|e| match e {
        clawpen_store::StoreError::NotFound => ApiError::not_found("api key"),
        other => other.into(),
    })?;
    let detail = serde_json::json!({"key_id": k.to_string()});
    let _ = app.store.audit(clawpen_store::NewAudit { tenant: Some(&t), agent: None, actor: "admin", action: "key.revoke", reason: "requested", detail: Some(&detail) }).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/tenants/{tenant_id}/members", tag = "admin", security(("admin" = [])), operation_id = "add_tenant_member",
    params(("tenant_id" = String, Path)), request_body = CreateMember,
    responses((status = 201, description = "The member.", body = MemberView), (status = 404, description = "No such tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "That kind and external id is a member already, of this tenant or another (`conflict`).", body = ErrorBody)))]
pub async fn add_member(State(app): State<App>, _: Admin, TenantPath(id): TenantPath, ApiJson(body): ApiJson<CreateMember>) -> Result<(StatusCode, Json<MemberView>), ApiError> {
    tenant_exists(&app, &id).await?;
    let ext_ok = !body.external_id.is_empty() && body.external_id.len() <= 128 && body.external_id.chars().all(|c| c.is_ascii_graphic());
    if !ext_ok {
        return Err(ApiError::invalid("external_id: 1-128 printable ASCII characters without spaces"));
    }
    let name_ok = !body.display_name.trim().is_empty() && body.display_name.chars().count() <= 128 && !body.display_name.chars().any(char::is_control);
    if !name_ok {
        return Err(ApiError::invalid("display_name: 1-128 characters, no control characters"));
    }
    let external_id = match (&body.password, body.kind) {
        (None, _) => body.external_id.clone(),
        (Some(p), MemberKind::Web) if (12..=256).contains(&p.chars().count()) => body.external_id.to_lowercase(),
        (Some(_), MemberKind::Web) => return Err(ApiError::invalid("password: 12 to 256 characters")),
        (Some(_), MemberKind::Telegram) => return Err(ApiError::conflict("a Telegram member signs in through Telegram: only a web member has a console password")),
    };
    let m = app.store.add_member(&id, body.kind.as_str(), &external_id, &body.display_name).await?;
    if let Some(p) = body.password {
        let hash = tokio::task::spawn_blocking(move || crate::console::auth::hash_password(&p)).await.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
        app.store.set_password(&m.id, &hash).await?;
    }
    let detail = serde_json::json!({"member_id": m.id.to_string(), "kind": m.kind});
    let _ = app.store.audit(clawpen_store::NewAudit { tenant: Some(&id), agent: None, actor: "admin", action: "member.add", reason: "requested", detail: Some(&detail) }).await;
    Ok((StatusCode::CREATED, Json(m.into())))
}

#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}/members", tag = "admin", security(("admin" = [])), operation_id = "list_tenant_members",
    params(("tenant_id" = String, Path)),
    responses((status = 200, description = "The tenant's members.", body = MemberList), (status = 404, description = "No such tenant (`not_found`).", body = ErrorBody)))]
pub async fn list_members(State(app): State<App>, _: Admin, TenantPath(id): TenantPath) -> Result<Json<MemberList>, ApiError> {
    tenant_exists(&app, &id).await?;
    let members = app.store.list_members(&id).await?.into_iter().map(Into::into).collect();
    Ok(Json(MemberList { members }))
}

#[utoipa::path(delete, path = "/api/v1/tenants/{tenant_id}/members/{member_id}", tag = "admin", security(("admin" = [])), operation_id = "remove_tenant_member",
    params(("tenant_id" = String, Path), ("member_id" = String, Path)),
    responses((status = 204, description = "Removed."), (status = 404, description = "No such member of that tenant (`not_found`).", body = ErrorBody)))]
pub async fn remove_member(State(app): State<App>, _: Admin, TenantMemberPath(t, m): TenantMemberPath) -> Result<StatusCode, ApiError> {
    app.store.remove_member(&t, &m).await.map_err(|e| match e {
        clawpen_store::StoreError::NotFound => ApiError::not_found("member"),
        other => other.into(),
    })?;
    let detail = serde_json::json!({"member_id": m.to_string()});
    let _ = app.store.audit(clawpen_store::NewAudit { tenant: Some(&t), agent: None, actor: "admin", action: "member.remove", reason: "requested", detail: Some(&detail) }).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "admin", security(("admin" = [])), params(AuditQuery),
    responses((status = 200, description = "The latest lines.", body = AuditList)))]
pub async fn audit(State(app): State<App>, _: Admin, ApiQuery(q): ApiQuery<AuditQuery>) -> Result<Json<AuditList>, ApiError> {
    let tenant = match q.tenant {
        Some(t) => Some(TenantId::parse(&t).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", "tenant: not a tenant id"))?),
        None => None,
    };
    let limit = bounded("limit", q.limit, 100, 1000)?;
    let entries = app.store.list_audit(tenant.as_ref(), None, limit).await?.into_iter().map(Into::into).collect();
    Ok(Json(AuditList { entries }))
}

/// Opens a model run for an agent, as a user's message does (counted against its plan's runs
/// per hour): the agent's model calls carrying its id are accepted until it is closed or
/// expires. For operators' diagnostics; users' messages open their own runs.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/runs", tag = "admin", security(("admin" = [])),
    params(("agent_id" = String, Path)),
    responses((status = 201, description = "The run.", body = RunView),
        (status = 404, description = "No such agent (`not_found`).", body = ErrorBody),
        (status = 429, description = "The agent had its plan's runs this hour (`rate_limited`).", body = ErrorBody),
        (status = 503, description = "The meter cannot read the tenant's plan or its ledger (`meter_unavailable`).", body = ErrorBody)))]
pub async fn open_run(State(app): State<App>, _: Admin, AgentPath(id): AgentPath) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let agent = app.store.find_agent(&id).await?.ok_or_else(|| ApiError::not_found("agent"))?;
    let caller = clawpen_meter::MeterCaller { tenant: agent.tenant_id.clone(), agent: id.clone() };
    let run_id = app.meter.open_run(&caller).await?;
    let _ = app
        .store
        .audit(clawpen_store::NewAudit { tenant: Some(&agent.tenant_id), agent: Some(&id), actor: "admin", action: "run.open", reason: "requested", detail: Some(&serde_json::json!({"run_id": run_id})) })
        .await;
    Ok((StatusCode::CREATED, Json(RunView { run_id })))
}

/// Closes a run opened for an agent: its model calls are refused from then on.
#[utoipa::path(delete, path = "/api/v1/agents/{agent_id}/runs/{run_id}", tag = "admin", security(("admin" = [])),
    params(("agent_id" = String, Path), ("run_id" = String, Path)),
    responses((status = 204, description = "Closed (or it was not open)."), (status = 404, description = "No such agent (`not_found`).", body = ErrorBody)))]
pub async fn close_run(State(app): State<App>, _: Admin, axum::extract::Path((agent_id, run_id)): axum::extract::Path<(String, String)>) -> Result<StatusCode, ApiError> {
    let id = clawpen_core::ids::AgentId::parse(&agent_id).map_err(|_| ApiError::not_found("agent"))?;
    app.store.find_agent(&id).await?.ok_or_else(|| ApiError::not_found("agent"))?;
    if run_id.is_empty() || run_id.len() > 64 || !run_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(ApiError::not_found("run"));
    }
    app.meter.close_run(&id, &run_id);
    Ok(StatusCode::NO_CONTENT)
}
