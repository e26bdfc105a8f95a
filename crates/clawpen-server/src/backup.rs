//! Workspaces in object storage: backups on each plan's schedule and when an agent goes idle,
//! and a restore before an agent starts on a node that has no copy of its workspace (a new
//! node, a replaced disk). The snapshots are `clawpen_storage::snapshot`'s.

use axum::http::StatusCode;
use clawpen_core::ids::AgentId;
use clawpen_core::lifecycle::Tier;
use clawpen_core::spec::Volume;
use clawpen_storage::snapshot::{self, Progress, Quiet};
use clawpen_store::backups::BackupRecord;
use clawpen_store::{Agent, ObservedState, Tenant};
use serde::Serialize;
use tracing::{info, warn};

use crate::app::App;
use crate::error::ApiError;
use crate::fleet::Actor;
use crate::supervisor::now_ms;

/// Backups started by one look of the supervisor, at most.
const SCHEDULED_PER_TICK: usize = 2;

/// What one backup did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BackupView {
    /// The snapshot that now holds the workspace (the previous one when nothing changed).
    pub snapshot_id: String,
    /// Unix milliseconds.
    pub taken_at: i64,
    pub files: u64,
    pub bytes: u64,
    /// Files read this time (the others were unchanged since the last snapshot).
    pub files_read: u64,
    /// Bytes sent to storage this time.
    pub bytes_sent: u64,
    /// Links, FIFOs, sockets and devices in the workspace: never kept.
    pub skipped: u64,
    /// Nothing changed since the last snapshot.
    pub unchanged: bool,
}

fn storage_error(what: &str, e: clawpen_storage::StorageError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", format!("{what}: {e}; check [storage] in the config and that the storage answers"))
}

/// Removes the agent from the set of backups in progress when dropped.
struct InProgress<'a>(&'a App, AgentId);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.backing_up.lock().expect("backing up").remove(&self.1);
    }
}

impl App {
    /// Backs up the agent's workspace now (see [`App::backup_locked`]), one backup of an agent
    /// at a time (409 `backup_running`).
    pub async fn backup_agent(&self, tenant: &Tenant, id: &AgentId, actor: &Actor, reason: &str, progress: &dyn Progress) -> Result<BackupView, ApiError> {
        if !self.backing_up.lock().expect("backing up").insert(id.clone()) {
            return Err(ApiError::new(StatusCode::CONFLICT, "backup_running", "a backup of this agent is running; try again when it is done"));
        }
        let _done = InProgress(self, id.clone());
        let _guard = self.lock_agent(id).await;
        self.backup_locked(tenant, id, actor, reason, progress).await
    }

    /// Takes a snapshot of the agent's workspace. A sandbox running awake is frozen for the
    /// walk, so every file is as it was at one moment; the files are read by handle, never
    /// through a link the tenant planted. Callers hold the agent's lock.
    pub(crate) async fn backup_locked(&self, tenant: &Tenant, id: &AgentId, actor: &Actor, reason: &str, progress: &dyn Progress) -> Result<BackupView, ApiError> {
        let agent = self.store.get_agent(&tenant.id, id).await?;
        let Some(ws) = self.layout_of(&agent).workspace(id).map_err(|e| ApiError::internal(format!("opening the workspace of {id}: {e}")))? else {
            return Err(ApiError::new(StatusCode::CONFLICT, "no_workspace_here", "the agent's filesystem is not on this server; start the agent first"));
        };
        let plan = self.config.plan_or_default(&tenant.plan);
        let (t, a) = (tenant.id.as_str(), id.as_str());
        let previous = snapshot::newest(&self.storage, t, a).await.map_err(|e| storage_error("reading the last snapshot", e))?;
        let frozen = self.freeze(&agent).await;
        let taken = snapshot::take(&self.storage, t, a, ws, previous.as_ref(), progress).await;
        if let Some(container) = frozen {
            if let Err(e) = self.runtime.unpause(&container).await {
                warn!(agent = %id, error = %e, "could not thaw the sandbox after a backup; the health check restarts it");
            }
        }
        let (m, stats) = taken.map_err(|e| match e {
            clawpen_storage::StorageError::Io(e) => ApiError::internal(format!("reading the workspace of {id}: {e}")),
            other => storage_error("writing the snapshot", other),
        })?;
        let now = now_ms();
        if !stats.unchanged {
            match snapshot::prune(&self.storage, t, a, plan.backup_keep as usize).await {
                Ok((snapshots, blobs)) if snapshots + blobs > 0 => info!(agent = %id, snapshots, blobs, "old snapshots removed"),
                Ok(_) => {}
                Err(e) => warn!(agent = %id, error = %e, "could not remove old snapshots; the next backup tries again"),
            }
        }
        let record = BackupRecord { agent_id: id.clone(), tenant_id: tenant.id.clone(), snapshot_id: m.id.clone(), taken_at: now, files: stats.files as i64, bytes: stats.bytes as i64 };
        self.store.record_backup(&record).await?;
        if let Some(map) = self.backed_up.lock().expect("backed up").as_mut() {
            map.insert(id.clone(), now);
        }
        if !stats.unchanged {
            let detail = serde_json::json!({"snapshot": m.id, "files": stats.files, "bytes": stats.bytes, "files_read": stats.files_read, "bytes_sent": stats.bytes_sent, "skipped": stats.skipped});
            self.audit(&tenant.id, Some(id), actor, "agent.backup", reason, Some(detail)).await;
        }
        Ok(BackupView { snapshot_id: m.id, taken_at: now, files: stats.files, bytes: stats.bytes, files_read: stats.files_read, bytes_sent: stats.bytes_sent, skipped: stats.skipped, unchanged: stats.unchanged })
    }

    /// Backs the workspace up, then removes the agent's filesystem from `layout` (its control
    /// socket closed first): storage holds the only copy, which the next start restores. For a
    /// move and an archive; callers removed the sandbox and hold the agent's lock. The snapshot.
    pub(crate) async fn back_up_and_remove(&self, tenant: &Tenant, id: &AgentId, layout: crate::layout::Layout, reason: &str) -> Result<String, ApiError> {
        let b = self.backup_locked(tenant, id, &Actor::system(), reason, &Quiet).await?;
        self.close_control(id);
        let (t, i) = (tenant.id.clone(), id.clone());
        tokio::task::spawn_blocking(move || layout.remove_agent(&t, &i))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(format!("removing the filesystem of {id}: {e}")))?;
        Ok(b.snapshot_id)
    }

    /// Freezes the agent's sandbox when it runs awake; the container to thaw after.
    async fn freeze(&self, agent: &Agent) -> Option<String> {
        if agent.observed_state != ObservedState::Running || agent.hibernation != Tier::Awake {
            return None;
        }
        let container = agent.container_id.clone()?;
        match self.runtime.pause(&container).await {
            Ok(()) => Some(container),
            Err(e) => {
                warn!(agent = %agent.id, error = %e, "could not freeze the sandbox for a backup; files are read as they are");
                None
            }
        }
    }

    /// Restores the agent's newest snapshot into a new filesystem when it has one and no
    /// filesystem is here (admitted against the disk budget like a new one). The restore is
    /// made aside and becomes the agent's only when complete: a restore killed half-way is
    /// never used (start-up removes it). False when there was no snapshot.
    pub(crate) async fn restore_if_missing(&self, tenant: &Tenant, id: &AgentId, uid: u32, disk: Volume, layout: &crate::layout::Layout) -> Result<bool, ApiError> {
        let newest = snapshot::newest(&self.storage, tenant.id.as_str(), id.as_str()).await.map_err(|e| storage_error("looking for the agent's snapshot", e))?;
        let Some(m) = newest else { return Ok(false) };
        // A control socket served from the filesystem that is gone is bound again in the new one.
        self.close_control(id);
        let (app, a, l) = (self.clone(), id.clone(), layout.clone());
        let ws = tokio::task::spawn_blocking(move || {
            let _one_at_a_time = app.disk_lock.lock().expect("disk lock");
            app.admit_disk(&l, disk.size_mib)?;
            l.begin_restore(&a, uid, disk).map_err(|e| ApiError::internal(format!("making a filesystem to restore {a} into: {e}")))
        })
        .await
        .map_err(|e| ApiError::internal(format!("restoring {id}: {e}")))??;
        let restored = snapshot::restore(&self.storage, &m, ws, uid, &Quiet).await;
        let (l, a) = (layout.clone(), id.clone());
        let ok = restored.is_ok();
        tokio::task::spawn_blocking(move || if ok { l.finish_restore(&a) } else { l.abandon_restore(&a) })
            .await
            .map_err(|e| ApiError::internal(format!("restoring {id}: {e}")))?
            .map_err(|e| ApiError::internal(format!("putting the restored filesystem of {id} in place: {e}")))?;
        let stats = restored.map_err(|e| match e {
            clawpen_storage::StorageError::Io(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "restore_failed", format!("writing the restored workspace of {id}: {e} (a plan's disk smaller than the snapshot gives ENOSPC)")),
            other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "restore_failed", format!("restoring snapshot {} of {id}: {other}", m.id)),
        })?;
        info!(agent = %id, snapshot = %m.id, files = stats.files, bytes = stats.bytes, "workspace restored from storage");
        let detail = serde_json::json!({"snapshot": m.id, "files": stats.files, "bytes": stats.bytes});
        self.audit(&tenant.id, Some(id), &Actor::system(), "agent.restore", "no copy of the workspace on this node", Some(detail)).await;
        Ok(true)
    }

    /// True when storage holds a snapshot of the agent, or cannot say (a pool sandbox must not
    /// take the place of a workspace that is to be restored). Storage is asked, not the store:
    /// a store restored from an older copy may not know of the snapshot.
    pub(crate) async fn may_have_snapshot(&self, tenant: &Tenant, id: &AgentId) -> bool {
        snapshot::list(&self.storage, tenant.id.as_str(), id.as_str()).await.map_or(true, |ids| !ids.is_empty())
    }

    /// Loads when each agent was last backed up, once.
    pub(crate) async fn load_backups(&self) -> Result<(), ApiError> {
        if self.backed_up.lock().expect("backed up").is_some() {
            return Ok(());
        }
        let all = self.store.all_backups().await?;
        *self.backed_up.lock().expect("backed up") = Some(all.into_iter().map(|b| (b.agent_id, b.taken_at)).collect());
        Ok(())
    }

    /// Starts the backups due by each plan's `backup_every_secs` (counted from the last backup,
    /// or from the agent's creation), a few per look, each in its own task.
    pub(crate) fn start_due_backups(&self, agents: &[Agent], tenants: &[Tenant], now: i64) {
        let mut due = Vec::new();
        {
            let map = self.backed_up.lock().expect("backed up");
            let Some(map) = map.as_ref() else { return };
            let busy = self.backing_up.lock().expect("backing up");
            for a in agents {
                let Some(tenant) = tenants.iter().find(|t| t.id == a.tenant_id) else { continue };
                let every = self.config.plan_or_default(&tenant.plan).backup_every_secs;
                if every == 0 || busy.contains(&a.id) || a.desired_state == clawpen_store::DesiredState::Deleted || !self.layout_of(a).has_volume(&a.id) {
                    continue;
                }
                let last = map.get(&a.id).copied().unwrap_or(a.created_at);
                if now - last >= (every as i64).saturating_mul(1000) {
                    due.push((tenant.clone(), a.id.clone()));
                }
            }
        }
        for (tenant, id) in due.into_iter().take(SCHEDULED_PER_TICK) {
            self.spawn_backup(tenant, id, "scheduled");
        }
    }

    /// After an agent went to sleep: a backup when it was used since its last one.
    pub(crate) fn backup_after_idle(&self, tenant: &Tenant, id: &AgentId) {
        if self.config.plan_or_default(&tenant.plan).backup_every_secs == 0 {
            return;
        }
        let last_active = self.with_life(id, |l| l.last_active);
        let last = self.backed_up.lock().expect("backed up").as_ref().and_then(|m| m.get(id).copied()).unwrap_or(0);
        if last_active > last {
            self.spawn_backup(tenant.clone(), id.clone(), "the agent went idle");
        }
    }

    fn spawn_backup(&self, tenant: Tenant, id: AgentId, reason: &'static str) {
        let app = self.clone();
        tokio::spawn(async move {
            match app.backup_agent(&tenant, &id, &Actor::system(), reason, &Quiet).await {
                Ok(v) => info!(agent = %id, snapshot = %v.snapshot_id, unchanged = v.unchanged, bytes_sent = v.bytes_sent, reason, "backup done"),
                Err(e) if e.code == "backup_running" => {}
                Err(e) => warn!(agent = %id, code = e.code, error = %e.message, reason, "backup failed; it is tried again later"),
            }
        });
    }

    /// Removes every snapshot of the agent from storage (its delete).
    pub(crate) async fn remove_snapshots(&self, tenant: &clawpen_core::ids::TenantId, id: &AgentId) -> Result<u64, ApiError> {
        let n = self.storage.delete_prefix(&clawpen_storage::agent_prefix(tenant.as_str(), id.as_str())).await.map_err(|e| storage_error("removing the agent's snapshots", e))?;
        if let Some(map) = self.backed_up.lock().expect("backed up").as_mut() {
            map.remove(id);
        }
        Ok(n)
    }

    /// Copies the SQLite store to storage under `store/clawpen-{ms}.db` (SQLite's online copy,
    /// so the server keeps serving), keeping the newest [`STORE_BACKUPS_KEPT`].
    pub async fn backup_store(&self) -> Result<(String, u64), ApiError> {
        let tmp = self.layout.data_dir.join(format!(".store-backup-{:016x}.db", rand::random::<u64>()));
        let copied = self.store.copy_sqlite_to(&tmp).await;
        let result = async {
            copied.map_err(|e| match e {
                clawpen_store::StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "not_sqlite", m),
                other => other.into(),
            })?;
            let bytes = tokio::fs::read(&tmp).await.map_err(|e| ApiError::internal(format!("reading the store's copy: {e}")))?;
            let key = format!("{STORE_PREFIX}/clawpen-{:013}.db", now_ms());
            let n = bytes.len() as u64;
            self.storage.put(&key, bytes.into()).await.map_err(|e| storage_error("writing the store's copy", e))?;
            let mut all = self.storage.list(STORE_PREFIX).await.map_err(|e| storage_error("listing the store's copies", e))?;
            all.retain(|(k, _)| k.ends_with(".db"));
            for (old, _) in all.iter().take(all.len().saturating_sub(STORE_BACKUPS_KEPT)) {
                let _ = self.storage.delete(old).await;
            }
            Ok((key, n))
        }
        .await;
        let _ = tokio::fs::remove_file(&tmp).await;
        if let Ok((key, bytes)) = &result {
            info!(key, bytes, "the store is backed up");
        }
        result
    }
}

/// Where the store's copies go in storage.
pub const STORE_PREFIX: &str = "store";
/// Copies of the store kept.
pub const STORE_BACKUPS_KEPT: usize = 14;
