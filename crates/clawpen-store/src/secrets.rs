//! Sealed tenant secrets: the store keeps only what the vault sealed, keyed by tenant, purpose
//! and record id (the same three the vault binds a sealed value to).

use sqlx::Row;

use clawpen_core::ids::TenantId;

use crate::{Result, Store};

/// One stored secret, still sealed.
#[derive(Debug, Clone)]
pub struct SealedSecret {
    pub tenant_id: String,
    pub purpose: String,
    pub id: String,
    pub sealed: String,
}

impl Store {
    /// Stores (or replaces) a sealed secret of a tenant.
    pub async fn put_secret(&self, tenant: &TenantId, purpose: &str, id: &str, sealed: &str) -> Result<()> {
        upsert_secret(&self.writer, tenant, purpose, id, sealed).await
    }

    /// A tenant's sealed secret, if stored.
    pub async fn get_secret(&self, tenant: &TenantId, purpose: &str, id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT sealed FROM secrets WHERE tenant_id = $1 AND purpose = $2 AND id = $3")
            .bind(tenant.as_str())
            .bind(purpose)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("sealed")).transpose()?)
    }

    /// Every sealed secret (for re-sealing after a key rotation).
    pub async fn sealed_secrets(&self) -> Result<Vec<SealedSecret>> {
        let rows = sqlx::query("SELECT tenant_id, purpose, id, sealed FROM secrets ORDER BY tenant_id, purpose, id").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok(SealedSecret { tenant_id: r.try_get("tenant_id")?, purpose: r.try_get("purpose")?, id: r.try_get("id")?, sealed: r.try_get("sealed")? }))
            .collect()
    }

    /// Replaces a sealed value only if it is still `old` (a concurrent write wins). Returns
    /// whether it was replaced.
    pub async fn reseal_secret(&self, s: &SealedSecret, new_sealed: &str) -> Result<bool> {
        let res = sqlx::query("UPDATE secrets SET sealed = $1, updated_at = $2 WHERE tenant_id = $3 AND purpose = $4 AND id = $5 AND sealed = $6")
            .bind(new_sealed)
            .bind(crate::now_ms())
            .bind(&s.tenant_id)
            .bind(&s.purpose)
            .bind(&s.id)
            .bind(&s.sealed)
            .execute(&self.writer)
            .await?;
        Ok(res.rows_affected() == 1)
    }
}

/// Stores (or replaces) a sealed secret through `e`: the writer pool, or a transaction that
/// writes the secret with the row it belongs to.
pub(crate) async fn upsert_secret<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(e: E, tenant: &TenantId, purpose: &str, id: &str, sealed: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO secrets (tenant_id, purpose, id, sealed, updated_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (tenant_id, purpose, id) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
    )
    .bind(tenant.as_str())
    .bind(purpose)
    .bind(id)
    .bind(sealed)
    .bind(crate::now_ms())
    .execute(e)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clawpen_vault::{Binding, Keyring, Vault};

    use crate::testing::backends;

    /// A's sealed bot token copied into B's row (or another purpose of A's) does not open; A's own
    /// row does; a rotation re-seals every row and they still open.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_sealed_value_moved_to_another_row_does_not_open() {
        for db in backends().await {
            let store = &db.store;
            let a = store.create_tenant("a", "free", 100_000).await.unwrap();
            let b = store.create_tenant("b", "free", 100_000).await.unwrap();
            let mut keys = Keyring::from_env_value(&"33".repeat(32)).unwrap();
            let vault = Vault::new(keys.clone());
            let a_bind = Binding { tenant: a.id.as_str(), purpose: "telegram_bot_token", record: "main" };
            let sealed = vault.seal(a_bind, b"12345:AAbbCC");
            store.put_secret(&a.id, "telegram_bot_token", "main", &sealed).await.unwrap();
            // The attacker's copy: the same bytes in B's row and in another purpose of A's.
            store.put_secret(&b.id, "telegram_bot_token", "main", &sealed).await.unwrap();
            store.put_secret(&a.id, "oauth_google", "main", &sealed).await.unwrap();

            let read = |t: &crate::TenantId, purpose: &'static str| {
                let store = store.clone();
                let t = t.clone();
                async move { store.get_secret(&t, purpose, "main").await.unwrap().unwrap() }
            };
            let own = read(&a.id, "telegram_bot_token").await;
            assert_eq!(vault.open(a_bind, &own).unwrap().expose(), b"12345:AAbbCC");
            let in_b = read(&b.id, "telegram_bot_token").await;
            assert!(vault.open(Binding { tenant: b.id.as_str(), purpose: "telegram_bot_token", record: "main" }, &in_b).is_err());
            let other_purpose = read(&a.id, "oauth_google").await;
            assert!(vault.open(Binding { tenant: a.id.as_str(), purpose: "oauth_google", record: "main" }, &other_purpose).is_err());

            // Rotation: every row that opens is re-sealed with the new key and still opens.
            keys.add_version();
            let rotated = Vault::new(keys);
            let mut resealed = 0;
            for s in store.sealed_secrets().await.unwrap() {
                let binding = Binding { tenant: &s.tenant_id, purpose: &s.purpose, record: &s.id };
                if let Ok(Some(new)) = rotated.reseal(binding, &s.sealed) {
                    assert!(store.reseal_secret(&s, &new).await.unwrap());
                    resealed += 1;
                }
            }
            assert_eq!(resealed, 1, "only A's own row opens");
            let own = read(&a.id, "telegram_bot_token").await;
            assert!(own.starts_with("v2:"));
            assert_eq!(rotated.open(a_bind, &own).unwrap().expose(), b"12345:AAbbCC");
        }
    }
}
