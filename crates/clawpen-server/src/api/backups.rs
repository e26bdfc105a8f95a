//! Backups of an agent's workspace (tenant routes), and of the store (admin). See `backup.rs`.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::extract::{Admin, AgentPath, TenantCaller};
use crate::app::App;
use crate::backup::BackupView;
use crate::error::{ApiError, ErrorBody};

#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotView {
    pub id: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotList {
    /// Newest first.
    pub snapshots: Vec<SnapshotView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StoreBackupView {
    /// Where in storage the copy is (`store/…`).
    pub key: String,
    pub bytes: u64,
}

async fn own_agent(app: &App, caller: &TenantCaller, id: &clawpen_core::ids::AgentId) -> Result<(), ApiError> {
    app.store.get_agent(&caller.tenant.id, id).await.map(drop).map_err(super::agents::agent_not_found)
}

#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/backups", tag = "agents", operation_id = "backup_agent", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)),
    responses((status = 200, description = "The workspace is in storage: a new snapshot, or the last one when nothing changed.", body = BackupView),
        (status = 404, description = "No such agent of the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "A backup of the agent is running (`backup_running`), or its filesystem is not on this server (`no_workspace_here`).", body = ErrorBody),
        (status = 503, description = "Storage does not answer (`storage_unavailable`).", body = ErrorBody)))]
/// Backs the agent's workspace up now (the sandbox is frozen for the moment it takes).
pub async fn backup(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath) -> Result<Json<BackupView>, ApiError> {
    own_agent(&app, &caller, &id).await?;
    Ok(Json(app.backup_agent(&caller.tenant, &id, &caller.actor(), "requested", &clawpen_storage::snapshot::Quiet).await?))
}

#[utoipa::path(get, path = "/api/v1/agents/{agent_id}/backups", tag = "agents", operation_id = "list_agent_backups", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)),
    responses((status = 200, description = "The agent's snapshots in storage.", body = SnapshotList),
        (status = 404, description = "No such agent of the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 503, description = "Storage does not answer (`storage_unavailable`).", body = ErrorBody)))]
pub async fn list(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath) -> Result<Json<SnapshotList>, ApiError> {
    own_agent(&app, &caller, &id).await?;
    let (t, a) = (caller.tenant.id.as_str(), id.as_str());
    let unavailable = |e: clawpen_storage::StorageError| ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", format!("listing the snapshots: {e}"));
    let mut snapshots = Vec::new();
    for sid in clawpen_storage::snapshot::list(&app.storage, t, a).await.map_err(unavailable)?.iter().rev() {
        match clawpen_storage::snapshot::manifest(&app.storage, t, a, sid).await {
            Ok(m) => snapshots.push(SnapshotView { id: m.id, created_at: m.created_at, files: m.files.len() as u64, bytes: m.bytes }),
            Err(clawpen_storage::StorageError::Corrupt(_) | clawpen_storage::StorageError::NotFound(_)) => {}
            Err(e) => return Err(unavailable(e)),
        }
    }
    Ok(Json(SnapshotList { snapshots }))
}

#[utoipa::path(post, path = "/api/v1/backups/store", tag = "admin", operation_id = "backup_store", security(("admin" = [])),
    responses((status = 200, description = "A consistent copy of the store (SQLite's online backup) is in storage.", body = StoreBackupView),
        (status = 409, description = "The store is PostgreSQL: back it up with pg_dump (`not_sqlite`).", body = ErrorBody),
        (status = 503, description = "Storage does not answer (`storage_unavailable`).", body = ErrorBody)))]
/// Copies the SQLite store to storage while the server runs.
pub async fn backup_store(State(app): State<App>, _admin: Admin) -> Result<Json<StoreBackupView>, ApiError> {
    let (key, bytes) = app.backup_store().await?;
    Ok(Json(StoreBackupView { key, bytes }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentBackupRow {
    pub agent_id: String,
    pub tenant_id: String,
    /// The newest snapshot, when the agent has one.
    pub snapshot_id: Option<String>,
    /// When the agent was last backed up (Unix milliseconds).
    pub backed_up_at: Option<i64>,
    pub files: Option<i64>,
    pub bytes: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentBackupList {
    pub agents: Vec<AgentBackupRow>,
}

#[utoipa::path(get, path = "/api/v1/backups", tag = "admin", operation_id = "list_backups", security(("admin" = [])),
    responses((status = 200, description = "Every agent with its last backup.", body = AgentBackupList)))]
pub async fn list_all(State(app): State<App>, _admin: Admin) -> Result<Json<AgentBackupList>, ApiError> {
    let (agents, backups) = tokio::try_join!(app.store.all_agents(), app.store.all_backups())?;
    let rows = agents
        .into_iter()
        .filter(|a| a.desired_state != clawpen_store::DesiredState::Deleted)
        .map(|a| {
            let b = backups.iter().find(|b| b.agent_id == a.id);
            AgentBackupRow {
                agent_id: a.id.to_string(),
                tenant_id: a.tenant_id.to_string(),
                snapshot_id: b.map(|b| b.snapshot_id.clone()),
                backed_up_at: b.map(|b| b.taken_at),
                files: b.map(|b| b.files),
                bytes: b.map(|b| b.bytes),
            }
        })
        .collect();
    Ok(Json(AgentBackupList { agents: rows }))
}

#[utoipa::path(post, path = "/api/v1/backups/agents/{agent_id}", tag = "admin", operation_id = "backup_any_agent", security(("admin" = [])),
    params(("agent_id" = String, Path)),
    responses((status = 200, description = "The workspace is in storage.", body = BackupView),
        (status = 404, description = "No such agent (`not_found`).", body = ErrorBody),
        (status = 409, description = "A backup of the agent is running (`backup_running`), or its filesystem is not on this server (`no_workspace_here`).", body = ErrorBody),
        (status = 503, description = "Storage does not answer (`storage_unavailable`).", body = ErrorBody)))]
/// Backs one agent's workspace up now (the operator's `clawpen backup agents`).
pub async fn backup_any(State(app): State<App>, _admin: Admin, AgentPath(id): AgentPath) -> Result<Json<BackupView>, ApiError> {
    let agent = app.store.find_agent(&id).await?.ok_or_else(|| ApiError::not_found("agent"))?;
    let tenant = app.store.get_tenant(&agent.tenant_id).await?;
    Ok(Json(app.backup_agent(&tenant, &id, &super::admin::admin(), "requested by the operator", &clawpen_storage::snapshot::Quiet).await?))
}
