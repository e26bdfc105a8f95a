//! The newest workspace snapshot of each agent (the snapshots themselves are in object storage,
//! `clawpen-storage`).

use sqlx::any::AnyRow;
use sqlx::Row;

use clawpen_core::ids::{AgentId, TenantId};

use crate::{parse_id, Result, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    pub agent_id: AgentId,
    pub tenant_id: TenantId,
    pub snapshot_id: String,
    pub taken_at: i64,
    pub files: i64,
    pub bytes: i64,
}

impl BackupRecord {
    fn from_row(r: &AnyRow) -> Result<BackupRecord> {
        Ok(BackupRecord {
            agent_id: parse_id(r.try_get("agent_id")?)?,
            tenant_id: parse_id(r.try_get("tenant_id")?)?,
            snapshot_id: r.try_get("snapshot_id")?,
            taken_at: r.try_get("taken_at")?,
            files: r.try_get("files")?,
            bytes: r.try_get("bytes")?,
        })
    }
}

const COLUMNS: &str = "agent_id, tenant_id, snapshot_id, taken_at, files, bytes";

impl Store {
    /// Records the agent's newest snapshot (replacing the one before).
    pub async fn record_backup(&self, b: &BackupRecord) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO workspace_backups ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (agent_id) DO UPDATE SET snapshot_id = excluded.snapshot_id, taken_at = excluded.taken_at, files = excluded.files, bytes = excluded.bytes"
        ))
        .bind(b.agent_id.as_str())
        .bind(b.tenant_id.as_str())
        .bind(&b.snapshot_id)
        .bind(b.taken_at)
        .bind(b.files)
        .bind(b.bytes)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The newest snapshot of one agent of `tenant`, if it has one.
    pub async fn get_backup(&self, tenant: &TenantId, agent: &AgentId) -> Result<Option<BackupRecord>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM workspace_backups WHERE agent_id = $1 AND tenant_id = $2"))
            .bind(agent.as_str())
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(BackupRecord::from_row).transpose()
    }

    /// Every agent's newest snapshot (for the backup schedule).
    pub async fn all_backups(&self) -> Result<Vec<BackupRecord>> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM workspace_backups ORDER BY agent_id")).fetch_all(&self.pool).await?;
        rows.iter().map(BackupRecord::from_row).collect()
    }
}

impl Store {
    /// Writes a consistent copy of the SQLite store to `path` (a new file) while the store is in
    /// use (`VACUUM INTO`: SQLite's online copy). `Conflict` for PostgreSQL, whose backups are
    /// `pg_dump`'s.
    pub async fn copy_sqlite_to(&self, path: &std::path::Path) -> Result<()> {
        if self.backend() != crate::Backend::Sqlite {
            return Err(crate::StoreError::Conflict("the store is PostgreSQL: back it up with pg_dump".into()));
        }
        let p = path.to_str().ok_or_else(|| crate::StoreError::Conflict("the backup path is not UTF-8".into()))?;
        sqlx::query(&format!("VACUUM INTO '{}'", p.replace('\'', "''"))).execute(&self.writer).await?;
        Ok(())
    }
}
