//! A tenant takes its data with it: an export is one `.tar.gz` (`clawpen_storage::archive`) of
//! every agent's workspace in OpenClaw's layout (from a snapshot taken for it), the usage and
//! the credits as CSV and the audit lines; an import makes new agents from such an archive, or
//! from a plain OpenClaw workspace (one agent), within the plan's bounds.
//!
//! ```text
//! clawpen-export.json      {"format": 1, "tenant": {…}, "exported_at", "agents": [{"id", "name", "dir"}]}
//! agents/<name>/…          SOUL.md, USER.md, MEMORY.md, memory/, sessions/, … as the agent had them
//! usage.csv                every model call: at, agent, model, provider, tokens, cost (micro-credits)
//! credits.csv              every credit grant: at, amount, reason
//! audit.jsonl              the tenant's audit lines, oldest first
//! ```

use std::collections::BTreeMap;

use axum::http::StatusCode;
use clawpen_storage::archive::{self, ArchiveError, Item, Limits};
use clawpen_storage::snapshot::{self, Quiet};
use clawpen_store::{Agent, DesiredState, Tenant};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tracing::info;

use crate::app::App;
use crate::error::ApiError;
use crate::fleet::Actor;

/// The name of an export's index at the archive's top.
pub const INDEX: &str = "clawpen-export.json";
const FORMAT: u32 = 1;
const MIB: u64 = 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Index {
    format: u32,
    tenant: IndexTenant,
    exported_at: i64,
    agents: Vec<IndexAgent>,
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexTenant {
    id: String,
    name: String,
    plan: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexAgent {
    id: String,
    name: String,
    /// Where its workspace is in the archive.
    dir: String,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn archive_error(e: ArchiveError) -> ApiError {
    match e {
        ArchiveError::TooLarge(m) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "archive_too_large", m),
        ArchiveError::Refused(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_archive", m),
        ArchiveError::Io(e) => ApiError::internal(format!("reading the archive: {e}")),
    }
}

/// What one agent's workspace may hold on the tenant's plan: its filesystem's size less what
/// ext4 keeps for itself, and its inodes less a few.
fn per_agent_limits(plan: &clawpen_core::plan::Plan) -> Limits {
    Limits { max_bytes: (plan.disk_mib * MIB).saturating_sub(16 * MIB).max(MIB), max_entries: plan.disk_inodes.saturating_sub(64).max(16) }
}

impl App {
    /// Writes the tenant's export (see the module's doc) to a new file at `out`. Each agent's
    /// workspace is backed up first, so the export holds it as it is now (a sandbox awake is
    /// frozen for that moment); an agent whose filesystem is on no node here is taken from its
    /// newest snapshot.
    pub async fn export_tenant(&self, tenant: &Tenant, actor: &Actor, out: &std::path::Path) -> Result<u64, ApiError> {
        let file = std::fs::File::create_new(out).map_err(|e| ApiError::internal(format!("making {}: {e}", out.display())))?;
        let mut w = archive::Writer::new(std::io::BufWriter::new(file));
        let (t, mut index_agents) = (tenant.id.as_str(), Vec::new());
        let agents: Vec<Agent> = self.store.list_agents(&tenant.id).await?.into_iter().filter(|a| a.desired_state != DesiredState::Deleted).collect();
        w.add_dir("agents", 0o755).map_err(archive_error)?;
        for a in &agents {
            if self.layout_of(a).workspace(&a.id).ok().flatten().is_some() {
                match self.backup_agent(tenant, &a.id, actor, "export", &Quiet).await {
                    Ok(_) => {}
                    // Another backup of it is running: its snapshot is as fresh.
                    Err(e) if e.code == "backup_running" => {}
                    Err(e) => return Err(e),
                }
            }
            let Some(m) = snapshot::newest(&self.storage, t, a.id.as_str()).await.map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", format!("reading {}'s snapshot: {e}", a.name)))? else {
                continue;
            };
            let dir = format!("agents/{}", a.name);
            w.add_dir(&dir, 0o755).map_err(archive_error)?;
            for d in &m.dirs {
                w.add_dir(&format!("{dir}/{}", d.path), d.mode).map_err(archive_error)?;
            }
            for f in &m.files {
                let bytes = snapshot::blob(&self.storage, &m, f).await.map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", format!("reading {}'s {}: {e}", a.name, f.path)))?;
                w.add_file(&format!("{dir}/{}", f.path), f.mode, &bytes).map_err(archive_error)?;
            }
            index_agents.push(IndexAgent { id: a.id.to_string(), name: a.name.clone(), dir });
        }
        let names: BTreeMap<String, String> = agents.iter().map(|a| (a.id.to_string(), a.name.clone())).collect();
        let mut usage = String::from("at,agent_id,agent,model,provider,input_tokens,output_tokens,cache_read,cache_write,cost,outcome\n");
        let mut calls = self.store.recent_calls(&tenant.id, i64::MAX).await?;
        calls.reverse();
        for c in &calls {
            let agent = names.get(&c.agent_id).map(String::as_str).unwrap_or("");
            usage.push_str(&format!("{},{},{},{},{},{},{},{},{},{},{}\n", c.at, c.agent_id, csv_field(agent), csv_field(&c.model), csv_field(&c.provider), c.input_tokens, c.output_tokens, c.cache_read, c.cache_write, c.cost, csv_field(&c.outcome)));
        }
        let mut credits = String::from("at,amount,reason\n");
        for (at, amount, reason) in self.store.credit_grants(&tenant.id).await? {
            credits.push_str(&format!("{at},{amount},{}\n", csv_field(&reason)));
        }
        let mut audit = String::new();
        let mut lines = self.store.list_audit(Some(&tenant.id), None, i64::MAX).await?;
        lines.reverse();
        for l in &lines {
            let line = serde_json::json!({"at": l.at, "agent_id": l.agent_id, "actor": l.actor, "action": l.action, "reason": l.reason, "detail": l.detail});
            audit.push_str(&line.to_string());
            audit.push('\n');
        }
        let index = Index { format: FORMAT, tenant: IndexTenant { id: t.to_owned(), name: tenant.name.clone(), plan: tenant.plan.clone() }, exported_at: clawpen_store::now_ms(), agents: index_agents };
        let index = serde_json::to_vec_pretty(&index).map_err(|e| ApiError::internal(e.to_string()))?;
        for (name, body) in [("usage.csv", usage.as_bytes()), ("credits.csv", credits.as_bytes()), ("audit.jsonl", audit.as_bytes()), (INDEX, &index[..])] {
            w.add_file(name, 0o644, body).map_err(archive_error)?;
        }
        let mut file = w.finish().map_err(archive_error)?;
        std::io::Write::flush(&mut file).map_err(|e| ApiError::internal(format!("writing the export: {e}")))?;
        let n = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
        self.audit(&tenant.id, None, actor, "tenant.export", "requested", Some(serde_json::json!({"agents": agents.len(), "bytes": n}))).await;
        info!(tenant = %tenant.id, bytes = n, "tenant exported");
        Ok(n)
    }

    /// Makes new agents of `tenant` from an archive (an export, or one OpenClaw workspace named
    /// `name`, default `imported`). Refused whole, before anything is made, when an entry is
    /// hostile (422 `invalid_archive`), the files pass the plan's disk or inodes (413
    /// `archive_too_large`), a name is taken or the plan has no room for the agents (409).
    /// Each agent is made `deleted` until its files are in, so a crash mid-way leaves nothing
    /// (the restart finishes it as a delete).
    pub async fn import_archive(&self, tenant: &Tenant, bytes: &[u8], name: Option<&str>, actor: &Actor) -> Result<Vec<Agent>, ApiError> {
        let plan = self.config.plan_or_default(&tenant.plan);
        let each = per_agent_limits(plan);
        // The whole archive may hold what the tenant's room for agents can.
        let room = (plan.max_agents as u64).saturating_sub(self.store.list_agents(&tenant.id).await?.len() as u64).max(1);
        let whole = Limits { max_bytes: each.max_bytes.saturating_mul(room), max_entries: each.max_entries.saturating_mul(room) + 8 };
        let items = archive::read_archive(bytes, &whole).map_err(archive_error)?;
        // Which agents, and the items of each, relative to its workspace.
        let mut agents: Vec<(String, Vec<Item>)> = Vec::new();
        if let Some(Item::File { bytes: index, .. }) = items.iter().find(|i| i.path() == INDEX) {
            let index: Index = serde_json::from_slice(index).map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_archive", format!("{INDEX} does not parse: {e}")))?;
            if index.format != FORMAT {
                return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_archive", format!("{INDEX} is of format {}; this server reads {FORMAT}", index.format)));
            }
            for a in &index.agents {
                let prefix = format!("{}/", a.dir);
                let mine = items.iter().filter_map(|i| i.path().strip_prefix(&prefix).map(|rel| rebase(i, rel))).collect();
                let agent_name = if index.agents.len() == 1 { name.unwrap_or(&a.name) } else { &a.name };
                agents.push((agent_name.to_owned(), mine));
            }
        } else {
            agents.push((name.unwrap_or("imported").to_owned(), items));
        }
        for (n, files) in &agents {
            clawpen_core::names::validate_name(n).map_err(|e| ApiError::invalid(format!("name {n:?}: {e}")))?;
            let bytes: u64 = files.iter().map(|i| if let Item::File { bytes, .. } = i { bytes.len() as u64 } else { 0 }).sum();
            if bytes > each.max_bytes || files.len() as u64 > each.max_entries {
                return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "archive_too_large", format!("the files of {n:?} ({bytes} bytes in {} entries) are past the plan's disk quota for one agent ({} bytes, {} entries)", files.len(), each.max_bytes, each.max_entries)));
            }
        }
        let existing = self.store.list_agents(&tenant.id).await?;
        if let Some((n, _)) = agents.iter().find(|(n, _)| existing.iter().any(|a| &a.name == n)) {
            return Err(ApiError::conflict(format!("the tenant has an agent named {n:?}; import with another name")));
        }
        if existing.len() + agents.len() > plan.max_agents as usize {
            return Err(ApiError::conflict(format!("the tenant's plan allows {} agents; it has {} and the archive holds {}", plan.max_agents, existing.len(), agents.len())));
        }
        let mut made = Vec::new();
        for (n, files) in agents {
            match self.import_one(tenant, &n, files, actor).await {
                Ok(a) => made.push(a),
                Err(e) => {
                    // All or nothing: the agents this import made go again.
                    for a in &made {
                        let _ = self.delete_agent(tenant, &a.id, actor, "an import failed").await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(made)
    }

    async fn import_one(&self, tenant: &Tenant, name: &str, items: Vec<Item>, actor: &Actor) -> Result<Agent, ApiError> {
        let plan = self.config.plan_or_default(&tenant.plan);
        let agent = self.store.create_agent_as(&tenant.id, name, plan.max_agents, DesiredState::Deleted).await?;
        let id = agent.id.clone();
        let filled = async {
            let uid = tenant.uid as u32;
            let node = self.prepare_sandbox(tenant, &id, uid).await?;
            let ws = self.layout_on(Some(&node)).workspace(&id).map_err(|e| ApiError::internal(format!("opening the workspace of {id}: {e}")))?.ok_or_else(|| ApiError::internal("the new agent's filesystem is not mounted"))?;
            let n = items.len();
            tokio::task::spawn_blocking(move || write_items(&ws, &items, uid))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "archive_too_large", format!("writing the files of {name:?}: {e} (the plan's disk is full)")))?;
            self.store.set_desired(&id, DesiredState::Stopped).await?;
            Ok::<usize, ApiError>(n)
        }
        .await;
        match filled {
            Ok(n) => {
                self.audit(&tenant.id, Some(&id), actor, "agent.import", "imported from an archive", Some(serde_json::json!({"name": name, "entries": n}))).await;
                Ok(self.store.get_agent(&tenant.id, &id).await?)
            }
            Err(e) => {
                let _ = self.delete_agent(tenant, &id, actor, "its import failed").await;
                Err(e)
            }
        }
    }
}

impl App {
    /// Removes everything of a tenant everywhere: its agents (sandboxes, filesystems, run dirs,
    /// snapshots), every row of it in the store (its audit lines and sealed secrets included),
    /// everything under its prefix in storage and its dir in the data dir. What is kept is one
    /// audit line that a purge happened, naming the tenant only by the SHA-256 of its id (so a
    /// scan for the id finds nothing). The store's own backup copies hold it until they are
    /// rotated out.
    pub async fn purge_tenant(&self, id: &clawpen_core::ids::TenantId, actor: &Actor) -> Result<(), ApiError> {
        let tenant = self.store.get_tenant(id).await.map_err(|e| match e {
            clawpen_store::StoreError::NotFound => ApiError::not_found("tenant"),
            other => other.into(),
        })?;
        let agents = self.store.list_agents(id).await?;
        for a in &agents {
            self.delete_agent(&tenant, &a.id, actor, "tenant purged").await?;
        }
        if let Ok(Some(bot)) = self.store.get_telegram_bot(id).await {
            self.telegram.stop_poller(&bot.id);
        }
        self.store.purge_tenant(id).await?;
        let objects = self.storage.delete_prefix(&clawpen_storage::tenant_prefix(id.as_str())).await.map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", format!("removing the tenant's objects: {e}; run the purge again")))?;
        self.layout.remove_tenant(id).map_err(|e| ApiError::internal(format!("removing the tenant's dir: {e}")))?;
        let hash = hex::encode(sha2::Sha256::digest(id.as_str().as_bytes()));
        let detail = serde_json::json!({"tenant_sha256": hash, "agents": agents.len(), "objects": objects});
        if let Err(e) = self.store.audit(clawpen_store::NewAudit { tenant: None, agent: None, actor: &actor.0, action: "tenant.purge", reason: "everything of the tenant removed", detail: Some(&detail) }).await {
            tracing::warn!(error = %e, "cannot write the audit log");
        }
        info!(tenant_sha256 = %hash, agents = agents.len(), objects, "tenant purged");
        Ok(())
    }
}

/// `item` with its path made `rel`.
fn rebase(item: &Item, rel: &str) -> Item {
    match item {
        Item::Dir { mode, .. } => Item::Dir { path: rel.to_owned(), mode: *mode },
        Item::File { mode, bytes, .. } => Item::File { path: rel.to_owned(), mode: *mode, bytes: bytes.clone() },
    }
}

/// Writes the items into a new agent's workspace (no sandbox runs on it yet), by handle:
/// parents first, a seed file the archive has replaced.
fn write_items(ws: &clawpen_hostfs::SandboxDir, items: &[Item], uid: u32) -> std::io::Result<()> {
    let parent = |path: &str| -> std::io::Result<(Option<clawpen_hostfs::SandboxDir>, String)> {
        match path.rsplit_once('/') {
            Some((dir, name)) => Ok((Some(ws.subdir(dir)?), name.to_owned())),
            None => Ok((None, path.to_owned())),
        }
    };
    // The dirs the archive lists, with their modes, and the parents it did not list (0700).
    let mut dirs: BTreeMap<&str, u32> = BTreeMap::new();
    for i in items {
        if let Item::Dir { path, mode } = i {
            dirs.insert(path, *mode);
        }
        let path = i.path();
        for (at, _) in path.match_indices('/') {
            dirs.entry(&path[..at]).or_insert(0o700);
        }
    }
    // In order, a parent comes before what is in it.
    for (path, mode) in dirs {
        let (dir, name) = parent(path)?;
        dir.as_ref().unwrap_or(ws).make_dir(&name, mode & 0o777, uid)?;
    }
    for i in items {
        if let Item::File { path, mode, bytes } = i {
            let (dir, name) = parent(path)?;
            dir.as_ref().unwrap_or(ws).write_file_from(&name, mode & 0o777, uid, &mut &bytes[..])?;
        }
    }
    Ok(())
}
