//! Export and import of a tenant's data (see `transfer.rs`): by the operator for any tenant,
//! and by a tenant for itself.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{Admin, ApiQuery, TenantCaller, TenantPath};
use super::views::AgentView;
use crate::app::App;
use crate::error::{ApiError, ErrorBody};
use crate::fleet::Actor;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// The new agent's name, for a plain OpenClaw workspace or an export of one agent.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")]
    pub name: Option<String>,
}

/// The bytes of a `.tar.gz`.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ArchiveBody(#[allow(dead_code)] Vec<u8>);

#[derive(Debug, Serialize, ToSchema)]
pub struct Imported {
    pub agents: Vec<AgentView>,
}

async fn export(app: &App, tenant: &clawpen_store::Tenant, actor: &Actor) -> Result<Response, ApiError> {
    let path = app.layout.data_dir.join(format!(".export-{:016x}.tar.gz", rand::random::<u64>()));
    let written = app.export_tenant(tenant, actor, &path).await;
    let bytes = match written {
        Ok(_) => tokio::fs::read(&path).await.map_err(|e| ApiError::internal(format!("reading the export: {e}"))),
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_file(&path).await;
    let bytes = bytes?;
    let name = format!("attachment; filename=\"clawpen-{}.tar.gz\"", tenant.id);
    Ok(([(header::CONTENT_TYPE, "application/gzip".to_owned()), (header::CONTENT_DISPOSITION, name)], Body::from(bytes)).into_response())
}

async fn import(app: &App, tenant: &clawpen_store::Tenant, q: ImportQuery, body: Body, actor: &Actor) -> Result<(StatusCode, Json<Imported>), ApiError> {
    let plan = app.config.plan_or_default(&tenant.plan);
    // What the plan's disks hold, and a margin for the archive's headers.
    let cap = (plan.disk_mib * 1024 * 1024).saturating_mul(plan.max_agents as u64).saturating_add(64 * 1024 * 1024) as usize;
    let bytes = axum::body::to_bytes(body, cap).await.map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "archive_too_large", format!("the archive is larger than the plan's agents can hold ({cap} bytes)")))?;
    let agents = app.import_archive(tenant, &bytes, q.name.as_deref(), actor).await?;
    Ok((StatusCode::CREATED, Json(Imported { agents: agents.into_iter().map(AgentView::from).collect() })))
}

#[utoipa::path(get, path = "/api/v1/export", tag = "agents", operation_id = "export_own", security(("tenant_key" = [])),
    responses((status = 200, description = "One .tar.gz of everything of the tenant: workspaces in OpenClaw's layout, usage.csv, credits.csv, audit.jsonl, clawpen-export.json.", content_type = "application/gzip"),
        (status = 503, description = "Storage does not answer (`storage_unavailable`).", body = ErrorBody)))]
/// The caller's tenant's data, to take elsewhere.
pub async fn export_own(State(app): State<App>, caller: TenantCaller) -> Result<Response, ApiError> {
    export(&app, &caller.tenant, &caller.actor()).await
}

#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}/export", tag = "admin", operation_id = "export_tenant", security(("admin" = [])),
    params(("tenant_id" = String, Path)),
    responses((status = 200, description = "One .tar.gz of everything of the tenant.", content_type = "application/gzip"),
        (status = 404, description = "No such tenant (`not_found`).", body = ErrorBody),
        (status = 503, description = "Storage does not answer (`storage_unavailable`).", body = ErrorBody)))]
pub async fn export_tenant(State(app): State<App>, _: Admin, TenantPath(id): TenantPath) -> Result<Response, ApiError> {
    let tenant = super::admin::tenant_exists(&app, &id).await?;
    export(&app, &tenant, &super::admin::admin()).await
}

#[utoipa::path(post, path = "/api/v1/import", tag = "agents", operation_id = "import_own", security(("tenant_key" = [])),
    params(ImportQuery), request_body(content = ArchiveBody, content_type = "application/octet-stream", description = "An export, or an OpenClaw workspace as a .tar.gz (any content type is read as the archive's bytes)."),
    responses((status = 201, description = "The agents made (stopped: start them).", body = Imported),
        (status = 409, description = "A name is taken, or the plan has no room for the agents (`conflict`).", body = ErrorBody),
        (status = 413, description = "The files pass the plan's disk or inodes (`archive_too_large`).", body = ErrorBody),
        (status = 422, description = "An entry is a link, a device, an absolute or `..` path, or the archive is damaged (`invalid_archive`).", body = ErrorBody)))]
/// New agents of the caller's tenant from an archive.
pub async fn import_own(State(app): State<App>, caller: TenantCaller, ApiQuery(q): ApiQuery<ImportQuery>, body: Body) -> Result<(StatusCode, Json<Imported>), ApiError> {
    import(&app, &caller.tenant, q, body, &caller.actor()).await
}

#[utoipa::path(post, path = "/api/v1/tenants/{tenant_id}/import", tag = "admin", operation_id = "import_tenant", security(("admin" = [])),
    params(("tenant_id" = String, Path), ImportQuery), request_body(content = ArchiveBody, content_type = "application/octet-stream", description = "An export, or an OpenClaw workspace as a .tar.gz (any content type is read as the archive's bytes)."),
    responses((status = 201, description = "The agents made (stopped: start them).", body = Imported),
        (status = 404, description = "No such tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "A name is taken, or the plan has no room for the agents (`conflict`).", body = ErrorBody),
        (status = 413, description = "The files pass the plan's disk or inodes (`archive_too_large`).", body = ErrorBody),
        (status = 422, description = "An entry is a link, a device, an absolute or `..` path, or the archive is damaged (`invalid_archive`).", body = ErrorBody)))]
pub async fn import_tenant(State(app): State<App>, _: Admin, TenantPath(id): TenantPath, ApiQuery(q): ApiQuery<ImportQuery>, body: Body) -> Result<(StatusCode, Json<Imported>), ApiError> {
    let tenant = super::admin::tenant_exists(&app, &id).await?;
    import(&app, &tenant, q, body, &super::admin::admin()).await
}
