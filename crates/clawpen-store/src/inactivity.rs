//! Tenants warned for inactivity (their plan's `inactive_warn_days`), and whether their agents'
//! data was archived since.

use sqlx::Row;

use clawpen_core::ids::TenantId;

use crate::{parse_id, Result, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inactivity {
    pub tenant_id: TenantId,
    /// Unix milliseconds.
    pub warned_at: i64,
    pub archived_at: Option<i64>,
}

impl Store {
    /// Every tenant warned and not active since.
    pub async fn all_inactivity(&self) -> Result<Vec<Inactivity>> {
        let rows = sqlx::query("SELECT tenant_id, warned_at, archived_at FROM tenant_inactivity ORDER BY tenant_id").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok(Inactivity { tenant_id: parse_id(r.try_get::<String, _>("tenant_id")?)?, warned_at: r.try_get("warned_at")?, archived_at: r.try_get("archived_at")? }))
            .collect()
    }

    /// Records that the tenant was warned at `at` (once: a later call keeps the first time).
    pub async fn set_warned(&self, tenant: &TenantId, at: i64) -> Result<()> {
        sqlx::query("INSERT INTO tenant_inactivity (tenant_id, warned_at) VALUES ($1, $2) ON CONFLICT (tenant_id) DO NOTHING")
            .bind(tenant.as_str())
            .bind(at)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Records that the tenant's agents' data was archived at `at`.
    pub async fn set_archived(&self, tenant: &TenantId, at: i64) -> Result<()> {
        sqlx::query("UPDATE tenant_inactivity SET archived_at = $1 WHERE tenant_id = $2").bind(at).bind(tenant.as_str()).execute(&self.writer).await?;
        Ok(())
    }

    /// The tenant is active again: its warning is forgotten.
    pub async fn clear_inactivity(&self, tenant: &TenantId) -> Result<()> {
        sqlx::query("DELETE FROM tenant_inactivity WHERE tenant_id = $1").bind(tenant.as_str()).execute(&self.writer).await?;
        Ok(())
    }
}
