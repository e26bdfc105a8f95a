//! Tenants' own provider keys (bring your own key): what may be shown of each and whether the
//! provider still takes it. The key itself is sealed in `secrets` (purpose
//! [`PROVIDER_KEY_PURPOSE`], id the provider), written in the same transaction.

use sqlx::Row;

use clawpen_core::ids::TenantId;

use crate::{Result, Store, StoreError};

/// The `secrets` purpose of a sealed provider key.
pub const PROVIDER_KEY_PURPOSE: &str = "provider_key";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderKey {
    pub tenant_id: TenantId,
    pub provider: String,
    pub last4: String,
    /// `active`, or `rejected` (the provider refused it: calls stop until a new key is saved).
    pub status: String,
    /// Why it was rejected.
    pub detail: Option<String>,
    pub created_at: i64,
}

impl Store {
    /// Saves (or replaces) the tenant's sealed key for `provider`, active.
    pub async fn put_provider_key(&self, tenant: &TenantId, provider: &str, last4: &str, sealed: &str) -> Result<()> {
        let now = crate::now_ms();
        let mut tx = self.writer.begin().await?;
        crate::secrets::upsert_secret(&mut *tx, tenant, PROVIDER_KEY_PURPOSE, provider, sealed).await?;
        sqlx::query(
            "INSERT INTO provider_keys (tenant_id, provider, last4, status, detail, created_at) VALUES ($1, $2, $3, 'active', NULL, $4) \
             ON CONFLICT (tenant_id, provider) DO UPDATE SET last4 = excluded.last4, status = 'active', detail = NULL, created_at = excluded.created_at",
        )
        .bind(tenant.as_str())
        .bind(provider)
        .bind(last4)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The tenant's key record for `provider`.
    pub async fn provider_key(&self, tenant: &TenantId, provider: &str) -> Result<Option<ProviderKey>> {
        let row = sqlx::query("SELECT tenant_id, provider, last4, status, detail, created_at FROM provider_keys WHERE tenant_id = $1 AND provider = $2")
            .bind(tenant.as_str())
            .bind(provider)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The tenant's key records, by provider.
    pub async fn provider_keys(&self, tenant: &TenantId) -> Result<Vec<ProviderKey>> {
        let rows = sqlx::query("SELECT tenant_id, provider, last4, status, detail, created_at FROM provider_keys WHERE tenant_id = $1 ORDER BY provider")
            .bind(tenant.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// The provider refused the key: marked rejected with `detail`.
    pub async fn reject_provider_key(&self, tenant: &TenantId, provider: &str, detail: &str) -> Result<()> {
        sqlx::query("UPDATE provider_keys SET status = 'rejected', detail = $1 WHERE tenant_id = $2 AND provider = $3")
            .bind(detail)
            .bind(tenant.as_str())
            .bind(provider)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Removes the tenant's key for `provider` (the record and the sealed key).
    pub async fn delete_provider_key(&self, tenant: &TenantId, provider: &str) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let res = sqlx::query("DELETE FROM provider_keys WHERE tenant_id = $1 AND provider = $2").bind(tenant.as_str()).bind(provider).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM secrets WHERE tenant_id = $1 AND purpose = $2 AND id = $3").bind(tenant.as_str()).bind(PROVIDER_KEY_PURPOSE).bind(provider).execute(&mut *tx).await?;
        tx.commit().await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<ProviderKey> {
    Ok(ProviderKey {
        tenant_id: crate::parse_id(r.try_get("tenant_id")?)?,
        provider: r.try_get("provider")?,
        last4: r.try_get("last4")?,
        status: r.try_get("status")?,
        detail: r.try_get("detail")?,
        created_at: r.try_get("created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::backends;

    #[tokio::test]
    async fn a_key_is_saved_rejected_replaced_and_removed_for_its_tenant_only() {
        for db in backends().await {
            let s = &db.store;
            let a = s.create_tenant("a", "free", 100_000).await.unwrap();
            let b = s.create_tenant("b", "free", 200_000).await.unwrap();
            s.put_provider_key(&a.id, "openai", "wxyz", "sealed-1").await.unwrap();
            assert_eq!(s.get_secret(&a.id, PROVIDER_KEY_PURPOSE, "openai").await.unwrap().as_deref(), Some("sealed-1"));
            assert!(s.provider_keys(&b.id).await.unwrap().is_empty(), "{}", db.backend);
            assert_eq!(s.get_secret(&b.id, PROVIDER_KEY_PURPOSE, "openai").await.unwrap(), None);
            s.reject_provider_key(&a.id, "openai", "HTTP 401").await.unwrap();
            let k = s.provider_key(&a.id, "openai").await.unwrap().unwrap();
            assert_eq!((k.status.as_str(), k.detail.as_deref()), ("rejected", Some("HTTP 401")));
            s.put_provider_key(&a.id, "openai", "abcd", "sealed-2").await.unwrap();
            let k = s.provider_key(&a.id, "openai").await.unwrap().unwrap();
            assert_eq!((k.status.as_str(), k.last4.as_str(), k.detail), ("active", "abcd", None));
            assert!(matches!(s.delete_provider_key(&b.id, "openai").await, Err(StoreError::NotFound)));
            s.delete_provider_key(&a.id, "openai").await.unwrap();
            assert_eq!(s.get_secret(&a.id, PROVIDER_KEY_PURPOSE, "openai").await.unwrap(), None);
            assert!(s.provider_keys(&a.id).await.unwrap().is_empty());
        }
    }
}
