#![doc = include_str!("../README.md")]
//!
//! # Layout
//! - [`Store`]: the pool and every query, grouped by table below.
//! - [`models`]: the rows as Rust types.
//! - [`secrets`]: sealed tenant secrets; [`telegram`]: tenants' bots, pairing codes, update ids.
//! - [`integrations`]: the broker's OAuth states, connections, enabled tools, proposals and
//!   tool-call audit.
//! - [`StoreError`]: what a query can fail with.

pub mod backups;
pub mod inactivity;
pub mod console;
pub mod integrations;
pub mod ledger;
pub mod provider_keys;
pub mod schedules;
pub mod secrets;
pub mod models;
pub mod telegram;
#[cfg(test)]
mod testing;

use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use clawpen_core::ids::{AgentId, KeyId, MemberId, TenantId};
use clawpen_core::lifecycle::Tier;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

pub use models::*;

/// The errors of this crate. `Conflict` and `NotFound` are the caller's to show; `Db` is ours.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The store: connection pools plus the backend it talks to.
#[derive(Clone)]
pub struct Store {
    /// Reads.
    pool: AnyPool,
    /// Writes. On SQLite one connection, so that writers queue here in order instead of
    /// sleeping in SQLite's busy handler (which costs milliseconds under contention); on
    /// PostgreSQL the same pool as reads.
    writer: AnyPool,
    backend: Backend,
}

/// Unix time in milliseconds; the store's only notion of time.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Prefix of every tenant API key, so a leaked key is recognisable by secret scanners.
pub const API_KEY_PREFIX: &str = "cpk_";

/// SHA-256 of a token, hex; what the store keeps instead of the token.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn conflict_on_unique(e: sqlx::Error, what: &str) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(what.to_owned())
        }
        _ => StoreError::Db(e),
    }
}

impl Store {
    /// Opens the SQLite file at `path`, creating it, and runs the migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Store> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Store::connect(&url).await
    }

    /// Opens the SQLite store at `path` if the file exists; `None` when it does not (nothing is
    /// created).
    pub async fn open_sqlite_existing(path: &Path) -> Result<Option<Store>> {
        if !path.exists() {
            return Ok(None);
        }
        Store::open_sqlite(path).await.map(Some)
    }

    /// Opens a store by URL (`sqlite://…` or `postgres://…`) and runs the migrations.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let options = || AnyPoolOptions::new()
            // A ping before every acquire is a round trip to the driver's thread: on SQLite the
            // file cannot go away, and PostgreSQL errors surface on the query itself.
            .test_before_acquire(false)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // One statement per call: the Any driver runs only the first of several.
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 10000",
                        ] {
                            conn.execute(pragma).await?;
                        }
                    }
                    Ok(())
                })
            });
        let pool = options().max_connections(if backend == Backend::Sqlite { 8 } else { 16 }).connect(url).await?;
        let writer = match backend {
            Backend::Sqlite => options().max_connections(1).connect(url).await?,
            Backend::Postgres => pool.clone(),
        };
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&writer).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&writer).await?,
        }
        Ok(Store { pool, writer, backend })
    }

    /// A throwaway SQLite store in a temp file (for tests).
    pub async fn for_testing(dir: &Path) -> Result<Store> {
        Store::open_sqlite(&dir.join("test.db")).await
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Cheap liveness query for `/readyz`.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The installation id: made once, on the first start, and kept. Every container the platform
    /// makes carries it, so a server adopts or sweeps only its own.
    pub async fn instance_id(&self) -> Result<String> {
        let mut bytes = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut bytes);
        let fresh = hex::encode(bytes);
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('instance_id', $1) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&fresh)
        .execute(&self.writer)
        .await?;
        let row = sqlx::query("SELECT value FROM meta WHERE key = 'instance_id'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("value")?)
    }

    /// The value kept under `key` in the store's own metadata, or `fresh` stored there first
    /// (once: a racing writer's value wins for both).
    pub async fn meta_or_insert(&self, key: &str, fresh: &str) -> Result<String> {
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING").bind(key).bind(fresh).execute(&self.writer).await?;
        let row = sqlx::query("SELECT value FROM meta WHERE key = $1").bind(key).fetch_one(&self.writer).await?;
        Ok(row.try_get("value")?)
    }

    /// The value under `key` in the store's metadata, if any.
    pub async fn meta(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = $1").bind(key).fetch_optional(&self.pool).await?;
        row.map(|r| r.try_get("value")).transpose().map_err(Into::into)
    }

    /// How many uids the store has handed out (tenants' and warm-pool sandboxes').
    pub async fn uids_handed_out(&self) -> Result<i64> {
        let row = sqlx::query("SELECT value FROM counters WHERE name = 'tenant_uid'").fetch_one(&self.pool).await?;
        Ok(row.try_get("value")?)
    }

    // ---- tenants ----

    /// Creates a tenant with a fresh uid (`uid_base` + a counter that never goes back).
    pub async fn create_tenant(&self, name: &str, plan: &str, uid_base: u32) -> Result<Tenant> {
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query(
            "UPDATE counters SET value = value + 1 WHERE name = 'tenant_uid' RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?;
        let n: i64 = row.try_get("value")?;
        let tenant = Tenant {
            id: TenantId::new(),
            name: name.to_owned(),
            plan: plan.to_owned(),
            uid: uid_base as i64 + n,
            created_at: now_ms(),
        };
        sqlx::query(
            "INSERT INTO tenants (id, name, plan, uid, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(tenant.id.as_str())
        .bind(&tenant.name)
        .bind(&tenant.plan)
        .bind(tenant.uid)
        .bind(tenant.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_on_unique(e, "a tenant with this name already exists"))?;
        tx.commit().await?;
        Ok(tenant)
    }

    /// A fresh uid for a warm-pool sandbox, from the tenants' counter: no tenant or agent ever
    /// shares it.
    pub async fn next_uid(&self, uid_base: u32) -> Result<i64> {
        let row = sqlx::query("UPDATE counters SET value = value + 1 WHERE name = 'tenant_uid' RETURNING value")
            .fetch_one(&self.writer)
            .await?;
        let n: i64 = row.try_get("value")?;
        Ok(uid_base as i64 + n)
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        let rows = sqlx::query(
            "SELECT id, name, plan, uid, created_at FROM tenants ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Tenant::from_row).collect()
    }

    pub async fn get_tenant(&self, id: &TenantId) -> Result<Tenant> {
        let row = sqlx::query("SELECT id, name, plan, uid, created_at FROM tenants WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Tenant::from_row(&row)
    }

    /// Deletes a tenant that has no agents left (their sandboxes are removed first by the caller).
    pub async fn delete_tenant(&self, id: &TenantId) -> Result<()> {
        let res = sqlx::query("DELETE FROM tenants WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.writer)
            .await
            .map_err(|e| match &e {
                // SQLite reports a RESTRICT violation with its trigger code, not the foreign-key one.
                sqlx::Error::Database(db)
                    if db.is_foreign_key_violation() || db.message().contains("FOREIGN KEY") =>
                {
                    StoreError::Conflict("the tenant still has agents".into())
                }
                _ => StoreError::Db(e),
            })?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    // ---- members ----

    pub async fn add_member(
        &self,
        tenant: &TenantId,
        kind: &str,
        external_id: &str,
        display_name: &str,
    ) -> Result<Member> {
        let m = Member {
            id: MemberId::new(),
            tenant_id: tenant.clone(),
            kind: kind.to_owned(),
            external_id: external_id.to_owned(),
            display_name: display_name.to_owned(),
            created_at: now_ms(),
        };
        sqlx::query("INSERT INTO members (id, tenant_id, kind, external_id, display_name, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(m.id.as_str())
            .bind(m.tenant_id.as_str())
            .bind(&m.kind)
            .bind(&m.external_id)
            .bind(&m.display_name)
            .bind(m.created_at)
            .execute(&self.writer)
            .await
            .map_err(|e| conflict_on_unique(e, "this member already belongs to a tenant"))?;
        Ok(m)
    }

    pub async fn list_members(&self, tenant: &TenantId) -> Result<Vec<Member>> {
        let rows = sqlx::query("SELECT id, tenant_id, kind, external_id, display_name, created_at FROM members WHERE tenant_id = $1 ORDER BY created_at, id")
            .bind(tenant.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Member::from_row).collect()
    }

    /// Removes a member of this tenant; another tenant's member is `NotFound`.
    pub async fn remove_member(&self, tenant: &TenantId, member: &MemberId) -> Result<()> {
        let res = sqlx::query("DELETE FROM members WHERE id = $1 AND tenant_id = $2")
            .bind(member.as_str())
            .bind(tenant.as_str())
            .execute(&self.writer)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    // ---- API keys ----

    /// Issues a key: returns its row and the token, which is shown once and stored only hashed.
    pub async fn create_api_key(&self, tenant: &TenantId) -> Result<(ApiKey, String)> {
        let mut secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut secret);
        let token = format!("{API_KEY_PREFIX}{}", hex::encode(secret));
        let key = ApiKey {
            id: KeyId::new(),
            tenant_id: tenant.clone(),
            prefix: token[..API_KEY_PREFIX.len() + 6].to_owned(),
            created_at: now_ms(),
            revoked_at: None,
        };
        sqlx::query("INSERT INTO api_keys (id, tenant_id, prefix, token_sha256, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(key.id.as_str())
            .bind(key.tenant_id.as_str())
            .bind(&key.prefix)
            .bind(token_sha256(&token))
            .bind(key.created_at)
            .execute(&self.writer)
            .await?;
        Ok((key, token))
    }

    pub async fn list_api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query("SELECT id, tenant_id, prefix, created_at, revoked_at FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id")
            .bind(tenant.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(ApiKey::from_row).collect()
    }

    /// Revokes a key of this tenant; a key of another tenant is `NotFound`.
    pub async fn revoke_api_key(&self, tenant: &TenantId, key: &KeyId) -> Result<()> {
        let res = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND tenant_id = $3 AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(key.as_str())
            .bind(tenant.as_str())
            .execute(&self.writer)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// The tenant and key a live (unrevoked) token belongs to.
    pub async fn key_for_token(&self, token: &str) -> Result<Option<(TenantId, KeyId)>> {
        let row = sqlx::query(
            "SELECT id, tenant_id FROM api_keys WHERE token_sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(token_sha256(token))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok((
                parse_id(r.try_get::<String, _>("tenant_id")?)?,
                parse_id(r.try_get::<String, _>("id")?)?,
            ))
        })
        .transpose()
    }

    // ---- agents ----

    pub async fn create_agent(
        &self,
        tenant: &TenantId,
        name: &str,
        max_agents: u32,
    ) -> Result<Agent> {
        self.create_agent_as(tenant, name, max_agents, DesiredState::Stopped).await
    }

    /// [`Store::create_agent`] in the desired state `desired`: an import makes its agent
    /// `Deleted` until its files are in, so that one interrupted is finished as a delete.
    pub async fn create_agent_as(&self, tenant: &TenantId, name: &str, max_agents: u32, desired: DesiredState) -> Result<Agent> {
        let now = now_ms();
        let agent = Agent {
            id: AgentId::new(),
            tenant_id: tenant.clone(),
            name: name.to_owned(),
            desired_state: desired,
            observed_state: ObservedState::Absent,
            container_id: None,
            spec_hash: None,
            exit_code: None,
            oom_count: 0,
            last_oom_at: None,
            last_error: None,
            created_at: now,
            updated_at: now,
            hibernation: Tier::Awake,
            last_active_at: None,
            restarts: Vec::new(),
            node: None,
            uid: None,
        };
        // The count check and the insert are one statement, in a transaction that holds the
        // tenant's row on PostgreSQL (where writers run side by side; SQLite has one writer), so
        // concurrent creates cannot pass the plan's limit together.
        let mut tx = self.writer.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR UPDATE").bind(tenant.as_str()).execute(&mut *tx).await?;
        }
        let res = sqlx::query(
            "INSERT INTO agents (id, tenant_id, name, desired_state, observed_state, created_at, updated_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7 \
             WHERE (SELECT COUNT(*) FROM agents WHERE tenant_id = $2) < $8",
        )
        .bind(agent.id.as_str())
        .bind(agent.tenant_id.as_str())
        .bind(&agent.name)
        .bind(agent.desired_state.as_str())
        .bind(agent.observed_state.as_str())
        .bind(now)
        .bind(now)
        .bind(max_agents as i64)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_on_unique(e, "an agent with this name already exists"))?;
        if res.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "the tenant's plan allows at most {max_agents} agents"
            )));
        }
        tx.commit().await?;
        Ok(agent)
    }

    pub async fn list_agents(&self, tenant: &TenantId) -> Result<Vec<Agent>> {
        let rows = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE tenant_id = $1 ORDER BY created_at, id"
        ))
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Agent::from_row).collect()
    }

    /// Every agent of every tenant; for the reconciler only, never for a request.
    pub async fn all_agents(&self) -> Result<Vec<Agent>> {
        let rows = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Agent::from_row).collect()
    }

    /// An agent of this tenant. Another tenant's agent is `NotFound`, exactly like a missing one.
    pub async fn get_agent(&self, tenant: &TenantId, id: &AgentId) -> Result<Agent> {
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1 AND tenant_id = $2"
        ))
        .bind(id.as_str())
        .bind(tenant.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        Agent::from_row(&row)
    }

    /// An agent by id alone; for the reconciler and the event watcher, never for a request.
    pub async fn find_agent(&self, id: &AgentId) -> Result<Option<Agent>> {
        let row = sqlx::query(&format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Agent::from_row).transpose()
    }

    pub async fn set_desired(&self, id: &AgentId, desired: DesiredState) -> Result<()> {
        sqlx::query("UPDATE agents SET desired_state = $1, updated_at = $2 WHERE id = $3")
            .bind(desired.as_str())
            .bind(now_ms())
            .bind(id.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Records what the runtime shows for an agent.
    pub async fn set_observed(&self, id: &AgentId, obs: &Observation) -> Result<()> {
        sqlx::query(
            "UPDATE agents SET observed_state = $1, container_id = $2, spec_hash = $3, exit_code = $4, \
             last_error = $5, updated_at = $6 WHERE id = $7",
        )
        .bind(obs.state.as_str())
        .bind(obs.container_id.as_deref())
        .bind(obs.spec_hash.as_deref())
        .bind(obs.exit_code)
        .bind(obs.last_error.as_deref())
        .bind(now_ms())
        .bind(id.as_str())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The intent of a warm claim, before anything moves: the agent takes the pool sandbox's
    /// uid, and its record names the sandbox (observed `starting`), so a restart after a crash
    /// finds the claim and finishes or undoes it.
    pub async fn set_claim(&self, id: &AgentId, uid: i64, container_id: &str, spec_hash: &str) -> Result<()> {
        sqlx::query(
            "UPDATE agents SET uid = $1, container_id = $2, spec_hash = $3, observed_state = $4, exit_code = NULL, \
             last_error = NULL, updated_at = $5 WHERE id = $6",
        )
        .bind(uid)
        .bind(container_id)
        .bind(spec_hash)
        .bind(ObservedState::Starting.as_str())
        .bind(now_ms())
        .bind(id.as_str())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The agent whose record names this container; for the event watcher (a claimed pool
    /// sandbox carries no agent label).
    pub async fn agent_by_container(&self, container_id: &str) -> Result<Option<Agent>> {
        let row = sqlx::query(&format!("SELECT {AGENT_COLUMNS} FROM agents WHERE container_id = $1"))
            .bind(container_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Agent::from_row).transpose()
    }

    /// Records how deep the fleet put an agent to sleep (`Awake` when it woke).
    pub async fn set_hibernation(&self, id: &AgentId, tier: Tier) -> Result<()> {
        sqlx::query("UPDATE agents SET hibernation = $1, updated_at = $2 WHERE id = $3")
            .bind(tier.as_str())
            .bind(now_ms())
            .bind(id.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Records the node an agent's sandbox is placed on (`None`: not placed).
    pub async fn set_node(&self, id: &AgentId, node: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE agents SET node = $1, updated_at = $2 WHERE id = $3")
            .bind(node)
            .bind(now_ms())
            .bind(id.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Nodes being drained.
    pub async fn drains(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT name FROM node_drains ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>("name")?)).collect()
    }

    /// Marks a node drained (or no longer).
    pub async fn set_drain(&self, name: &str, drain: bool) -> Result<()> {
        if drain {
            sqlx::query("INSERT INTO node_drains (name, started_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .bind(now_ms())
                .execute(&self.writer)
                .await?;
        } else {
            sqlx::query("DELETE FROM node_drains WHERE name = $1").bind(name).execute(&self.writer).await?;
        }
        Ok(())
    }

    /// Records when agents were last used; a time older than the stored one is ignored.
    pub async fn set_last_active(&self, id: &AgentId, at: i64) -> Result<()> {
        sqlx::query("UPDATE agents SET last_active_at = $1 WHERE id = $2 AND (last_active_at IS NULL OR last_active_at < $1)")
            .bind(at)
            .bind(id.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Records the restarts inside the crash-loop guard's window.
    pub async fn set_restarts(&self, id: &AgentId, restarts: &[i64]) -> Result<()> {
        let text = restarts.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        sqlx::query("UPDATE agents SET restarts = $1, updated_at = $2 WHERE id = $3")
            .bind(text)
            .bind(now_ms())
            .bind(id.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Counts an out-of-memory kill seen in the agent's sandbox.
    pub async fn record_oom(&self, id: &AgentId) -> Result<()> {
        let now = now_ms();
        sqlx::query("UPDATE agents SET oom_count = oom_count + 1, last_oom_at = $1, updated_at = $2 WHERE id = $3")
            .bind(now)
            .bind(now)
            .bind(id.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Removes the agent's record and its runs (kept by agent only).
    pub async fn delete_agent(&self, id: &AgentId) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM runs WHERE agent_id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM agents WHERE id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- audit log ----

    /// Appends one line to the audit log. Nothing ever changes or removes a line.
    pub async fn audit(&self, e: NewAudit<'_>) -> Result<()> {
        sqlx::query("INSERT INTO audit_log (at, tenant_id, agent_id, actor, action, reason, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(now_ms())
            .bind(e.tenant.map(|t| t.as_str().to_owned()))
            .bind(e.agent.map(|a| a.as_str().to_owned()))
            .bind(e.actor)
            .bind(e.action)
            .bind(e.reason)
            .bind(e.detail.map(|d| d.to_string()))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The audit log, newest first; scoped to one tenant when `tenant` is given.
    pub async fn list_audit(
        &self,
        tenant: Option<&TenantId>,
        agent: Option<&AgentId>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, at, tenant_id, agent_id, actor, action, reason, detail FROM audit_log \
             WHERE ($1 IS NULL OR tenant_id = $1) AND ($2 IS NULL OR agent_id = $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(tenant.map(|t| t.as_str().to_owned()))
        .bind(agent.map(|a| a.as_str().to_owned()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(AuditEntry::from_row).collect()
    }
}

const AGENT_COLUMNS: &str =
    "id, tenant_id, name, desired_state, observed_state, container_id, spec_hash, \
    exit_code, oom_count, last_oom_at, last_error, created_at, updated_at, hibernation, last_active_at, restarts, node, uid";

fn parse_id<T: TryFrom<String>>(s: String) -> Result<T> {
    T::try_from(s.clone()).map_err(|_| StoreError::Corrupt(format!("bad id {s:?}")))
}

fn parse_enum<T: FromStr>(s: String) -> Result<T> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("bad state {s:?}")))
}

impl Tenant {
    fn from_row(r: &AnyRow) -> Result<Tenant> {
        Ok(Tenant {
            id: parse_id(r.try_get("id")?)?,
            name: r.try_get("name")?,
            plan: r.try_get("plan")?,
            uid: r.try_get("uid")?,
            created_at: r.try_get("created_at")?,
        })
    }
}

impl Member {
    fn from_row(r: &AnyRow) -> Result<Member> {
        Ok(Member {
            id: parse_id(r.try_get("id")?)?,
            tenant_id: parse_id(r.try_get("tenant_id")?)?,
            kind: r.try_get("kind")?,
            external_id: r.try_get("external_id")?,
            display_name: r.try_get("display_name")?,
            created_at: r.try_get("created_at")?,
        })
    }
}

impl ApiKey {
    fn from_row(r: &AnyRow) -> Result<ApiKey> {
        Ok(ApiKey {
            id: parse_id(r.try_get("id")?)?,
            tenant_id: parse_id(r.try_get("tenant_id")?)?,
            prefix: r.try_get("prefix")?,
            created_at: r.try_get("created_at")?,
            revoked_at: r.try_get("revoked_at")?,
        })
    }
}

impl Agent {
    fn from_row(r: &AnyRow) -> Result<Agent> {
        Ok(Agent {
            id: parse_id(r.try_get("id")?)?,
            tenant_id: parse_id(r.try_get("tenant_id")?)?,
            name: r.try_get("name")?,
            desired_state: parse_enum(r.try_get("desired_state")?)?,
            observed_state: parse_enum(r.try_get("observed_state")?)?,
            container_id: r.try_get("container_id")?,
            spec_hash: r.try_get("spec_hash")?,
            exit_code: r.try_get("exit_code")?,
            oom_count: r.try_get("oom_count")?,
            last_oom_at: r.try_get("last_oom_at")?,
            last_error: r.try_get("last_error")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            hibernation: {
                let h: String = r.try_get("hibernation")?;
                Tier::parse(&h).ok_or_else(|| StoreError::Corrupt(format!("unknown hibernation tier {h:?}")))?
            },
            last_active_at: r.try_get("last_active_at")?,
            restarts: {
                let t: String = r.try_get("restarts")?;
                t.split(',').filter(|x| !x.is_empty()).filter_map(|x| x.parse().ok()).collect()
            },
            node: r.try_get("node")?,
            uid: r.try_get("uid")?,
        })
    }
}

impl AuditEntry {
    fn from_row(r: &AnyRow) -> Result<AuditEntry> {
        let detail: Option<String> = r.try_get("detail")?;
        Ok(AuditEntry {
            id: r.try_get("id")?,
            at: r.try_get("at")?,
            tenant_id: r.try_get("tenant_id")?,
            agent_id: r.try_get("agent_id")?,
            actor: r.try_get("actor")?,
            action: r.try_get("action")?,
            reason: r.try_get("reason")?,
            detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tenants_keys_agents_and_audit() {
        for db in crate::testing::backends().await {
            tenants_keys_agents_and_audit_on(&db.store).await;
        }
    }

    async fn tenants_keys_agents_and_audit_on(store: &Store) {
        let a = store.create_tenant("a", "free", 100_000).await.unwrap();
        let b = store.create_tenant("b", "free", 100_000).await.unwrap();
        assert_ne!(a.uid, b.uid);
        assert!(matches!(
            store.create_tenant("a", "free", 100_000).await,
            Err(StoreError::Conflict(_))
        ));

        let (key, token) = store.create_api_key(&a.id).await.unwrap();
        assert!(token.starts_with(API_KEY_PREFIX));
        assert_eq!(
            store.key_for_token(&token).await.unwrap(),
            Some((a.id.clone(), key.id.clone()))
        );
        assert!(matches!(
            store.revoke_api_key(&b.id, &key.id).await,
            Err(StoreError::NotFound)
        ));
        store.revoke_api_key(&a.id, &key.id).await.unwrap();
        assert_eq!(store.key_for_token(&token).await.unwrap(), None);

        let ag = store.create_agent(&a.id, "main", 1).await.unwrap();
        assert!(matches!(
            store.create_agent(&a.id, "second", 1).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.get_agent(&b.id, &ag.id).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(store.get_agent(&a.id, &ag.id).await.unwrap().name, "main");
        // A pool uid comes from the tenants' counter: never a tenant's, never reused.
        let pool_uid = store.next_uid(100_000).await.unwrap();
        assert!(pool_uid > a.uid.max(b.uid), "{pool_uid}");
        assert_eq!(ag.uid, None);
        store.set_claim(&ag.id, pool_uid, "cid-1", "hash").await.unwrap();
        let claimed = store.agent_by_container("cid-1").await.unwrap().unwrap();
        assert_eq!((claimed.id.clone(), claimed.uid, claimed.observed_state), (ag.id.clone(), Some(pool_uid), ObservedState::Starting));
        assert!(store.agent_by_container("cid-2").await.unwrap().is_none());
        let c = store.create_tenant("c", "free", 100_000).await.unwrap();
        assert!(c.uid > pool_uid);
        store.delete_tenant(&c.id).await.unwrap();
        assert!(store.list_agents(&b.id).await.unwrap().is_empty());
        let r = store.delete_tenant(&a.id).await;
        assert!(
            matches!(r, Err(StoreError::Conflict(_))),
            "{:?}: {r:?}",
            store.backend()
        );

        store
            .audit(NewAudit {
                tenant: Some(&a.id),
                agent: Some(&ag.id),
                actor: "test",
                action: "create",
                reason: "r",
                detail: None,
            })
            .await
            .unwrap();
        assert_eq!(
            store.list_audit(Some(&a.id), None, 10).await.unwrap().len(),
            1
        );
        assert!(store
            .list_audit(Some(&b.id), None, 10)
            .await
            .unwrap()
            .is_empty());
        assert!(
            sqlx::query("DELETE FROM audit_log")
                .execute(&store.pool)
                .await
                .is_err(),
            "audit log must be append-only"
        );
        assert!(sqlx::query("UPDATE audit_log SET reason = 'x'")
            .execute(&store.pool)
            .await
            .is_err());

        let again = store.instance_id().await.unwrap();
        assert_eq!(again, store.instance_id().await.unwrap());
    }
}
