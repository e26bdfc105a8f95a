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

/// Every table that holds a tenant's rows by `tenant_id`, children before parents.
const TENANT_TABLES: &[&str] = &[
    "tool_calls", "proposals", "enabled_tools", "connections", "oauth_states", "telegram_pairing_codes", "telegram_bots", "secrets", "credit_grants",
    "calls", "holds", "accounts", "web_sessions", "workspace_backups", "tenant_inactivity", "api_keys", "audit_log",
];

impl Store {
    /// Removes every row of the tenant from every table, its audit lines and the tenant itself,
    /// in one transaction: what `clawpen tenant delete --purge` leaves of it in the store is
    /// nothing. With SQLite the deleted rows are zeroed in the file (`secure_delete`), the file is
    /// rewritten (`VACUUM`, for rows deleted before) and the write-ahead log is emptied; PostgreSQL keeps dead rows until its VACUUM. Its agents'
    /// sandboxes and files are the caller's to remove first.
    pub async fn purge_tenant(&self, tenant: &TenantId) -> Result<()> {
        let t = tenant.as_str();
        let sqlite = self.backend() == crate::Backend::Sqlite;
        let mut conn = self.writer.acquire().await?;
        if sqlite {
            // Deleted rows are overwritten with zeros, not left in free pages of the file.
            sqlx::query("PRAGMA secure_delete = ON").execute(&mut *conn).await?;
        }
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        // The one door through the audit log's append-only rule (migration 0011).
        sqlx::query("INSERT INTO purging (tenant_id) VALUES ($1)").bind(t).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM telegram_updates WHERE bot_key IN (SELECT id FROM telegram_bots WHERE tenant_id = $1)").bind(t).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM telegram_links WHERE member_id IN (SELECT id FROM members WHERE tenant_id = $1)").bind(t).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM web_logins WHERE member_id IN (SELECT id FROM members WHERE tenant_id = $1)").bind(t).execute(&mut *tx).await?;
        for table in TENANT_TABLES {
            sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1")).bind(t).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM runs WHERE agent_id IN (SELECT id FROM agents WHERE tenant_id = $1)").bind(t).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM members WHERE tenant_id = $1").bind(t).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM agents WHERE tenant_id = $1").bind(t).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM tenants WHERE id = $1").bind(t).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM purging WHERE tenant_id = $1").bind(t).execute(&mut *tx).await?;
        tx.commit().await?;
        if sqlite {
            sqlx::query("PRAGMA secure_delete = OFF").execute(&mut *conn).await?;
            // Rows of it deleted earlier (its agents') may linger in free pages: the file is
            // rewritten without them.
            sqlx::query("VACUUM").execute(&mut *conn).await?;
            // And the write-ahead log, which still holds the pages as they were, is emptied.
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut *conn).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{NewAudit, Store};

    #[tokio::test]
    async fn a_purge_removes_every_row_of_the_tenant_and_only_its_own() {
        for db in crate::testing::backends().await {
            purge_on(&db.store).await;
        }
    }

    async fn purge_on(store: &Store) {
        let a = store.create_tenant("a", "free", 100_000).await.unwrap();
        let b = store.create_tenant("b", "free", 100_000).await.unwrap();
        for t in [&a, &b] {
            let ag = store.create_agent(&t.id, "main", 5).await.unwrap();
            store.create_api_key(&t.id).await.unwrap();
            store.add_member(&t.id, "web", &format!("{}@x.example", t.name), "m").await.unwrap();
            store.audit(NewAudit { tenant: Some(&t.id), agent: Some(&ag.id), actor: "admin", action: "agent.create", reason: "test", detail: None }).await.unwrap();
        }
        store.purge_tenant(&a.id).await.unwrap();
        assert!(matches!(store.get_tenant(&a.id).await, Err(crate::StoreError::NotFound)));
        assert!(store.list_audit(Some(&a.id), None, 10).await.unwrap().is_empty());
        assert!(store.list_agents(&a.id).await.unwrap().is_empty() && store.list_members(&a.id).await.unwrap().is_empty());
        // B keeps everything, and the log stays append-only for it and for everyone else.
        assert_eq!(store.list_audit(Some(&b.id), None, 10).await.unwrap().len(), 1);
        assert_eq!(store.list_agents(&b.id).await.unwrap().len(), 1);
        assert!(sqlx::query("DELETE FROM audit_log").execute(&store.pool).await.is_err(), "the audit log is still append-only");
    }
}
