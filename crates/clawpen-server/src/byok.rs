//! Bring your own key: a tenant's own key for a model provider, sealed in the vault (bound to
//! the tenant, purpose `provider_key`, record the provider), checked with a cheap call when
//! saved, shown only as its last four characters, and handed to the meter for that tenant's
//! calls alone (see `clawpen_meter::byok`). It never enters a sandbox, a log or an error.

use std::time::Duration;

use axum::http::StatusCode;
use clawpen_core::ids::TenantId;
use clawpen_meter::byok::{BoxFuture, TenantKey, TenantKeys};
use clawpen_meter::config::{Provider, Secret};
use clawpen_store::provider_keys::PROVIDER_KEY_PURPOSE;
use clawpen_store::{Store, Tenant};
use clawpen_vault::{Binding, Vault};
use tracing::warn;

use crate::app::App;
use crate::error::ApiError;
use crate::fleet::Actor;

/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// How long the check of a new key may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// The meter's way to tenants' keys: the store's records, opened by the vault.
pub struct StoreKeys {
    pub store: Store,
    pub vault: Vault,
}

fn binding<'a>(tenant: &'a TenantId, provider: Provider) -> Binding<'a> {
    Binding { tenant: tenant.as_str(), purpose: PROVIDER_KEY_PURPOSE, record: provider.as_str() }
}

impl TenantKeys for StoreKeys {
    fn lookup<'a>(&'a self, tenant: &'a TenantId, provider: Provider) -> BoxFuture<'a, Result<Option<TenantKey>, String>> {
        Box::pin(async move {
            let Some(record) = self.store.provider_key(tenant, provider.as_str()).await.map_err(|e| e.to_string())? else { return Ok(None) };
            if record.status != "active" {
                return Ok(Some(TenantKey::Rejected(record.detail.unwrap_or_else(|| "refused".to_owned()))));
            }
            let sealed = self.store.get_secret(tenant, PROVIDER_KEY_PURPOSE, provider.as_str()).await.map_err(|e| e.to_string())?.ok_or("the sealed key is missing")?;
            let plain = self.vault.open(binding(tenant, provider), &sealed).map_err(|e| format!("the sealed key does not open: {e}"))?;
            let key = String::from_utf8(plain.expose().clone()).map_err(|_| "the sealed key is not text".to_owned())?;
            Ok(Some(TenantKey::Active(Secret::new(key))))
        })
    }

    fn rejected<'a>(&'a self, tenant: &'a TenantId, provider: Provider, key: &'a Secret, reason: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // Only the key that was refused: one saved since stays active.
            match self.lookup(tenant, provider).await {
                Ok(Some(TenantKey::Active(current))) if current == *key => {}
                _ => return,
            }
            if let Err(e) = self.store.reject_provider_key(tenant, provider.as_str(), reason).await {
                warn!(tenant = %tenant, error = %e, "cannot mark the tenant's own key rejected");
            }
            let detail = serde_json::json!({"provider": provider.as_str(), "reason": reason});
            let entry = clawpen_store::NewAudit { tenant: Some(tenant), agent: None, actor: "meter", action: "provider_key.rejected", reason, detail: Some(&detail) };
            if let Err(e) = self.store.audit(entry).await {
                warn!(error = %e, "cannot write the audit log");
            }
        })
    }
}

/// The last four characters of a key: all that is ever shown of it.
pub fn last4(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

impl App {
    /// Checks `key` with a cheap call to the provider (its model list), then seals and saves
    /// it as the tenant's key for `provider`. Nothing is saved when the provider refuses it or
    /// cannot be reached.
    pub async fn save_provider_key(&self, tenant: &Tenant, provider: Provider, key: &str, actor: &Actor) -> Result<String, ApiError> {
        let key = key.trim();
        if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::invalid(format!("key: must be 1 to {MAX_KEY_LEN} printable characters without spaces")));
        }
        let (_, upstream) = self.config.meter.own_key_upstream(provider).ok_or_else(|| {
            ApiError::new(StatusCode::CONFLICT, "provider_not_offered", format!("this server offers no {} models; a key for it would never be used", provider.as_str()))
        })?;
        let base = upstream.base_url.trim_end_matches('/');
        let http = reqwest::Client::builder().timeout(CHECK_TIMEOUT).build().map_err(ApiError::internal)?;
        let req = match provider {
            Provider::Anthropic => http.get(format!("{base}/models")).header("x-api-key", key).header("anthropic-version", "2023-06-01"),
            _ => http.get(format!("{base}/models")).bearer_auth(key),
        };
        // Errors name the provider and the status only: never the key, nor the provider's body.
        let status = match req.send().await {
            Ok(r) => r.status(),
            Err(_) => return Err(ApiError::new(StatusCode::BAD_GATEWAY, "provider_unreachable", format!("{} could not be reached to check the key; nothing was saved, try again", provider.as_str()))),
        };
        // A key check's 400 is about the key (Gemini answers an invalid key so).
        if matches!(status.as_u16(), 400 | 401 | 403) {
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "key_rejected", format!("{} refused this key (HTTP {}); nothing was saved", provider.as_str(), status.as_u16())));
        }
        if !status.is_success() {
            return Err(ApiError::new(StatusCode::BAD_GATEWAY, "provider_unreachable", format!("{} answered HTTP {} to the key check; nothing was saved, try again", provider.as_str(), status.as_u16())));
        }
        let sealed = self.vault.seal(binding(&tenant.id, provider), key.as_bytes());
        let shown = last4(key);
        self.store.put_provider_key(&tenant.id, provider.as_str(), &shown, &sealed).await?;
        self.meter.forget_tenant_key(&tenant.id, provider);
        self.audit(&tenant.id, None, actor, "provider_key.save", provider.as_str(), Some(serde_json::json!({"provider": provider.as_str(), "last4": shown}))).await;
        Ok(shown)
    }

    /// Removes the tenant's key for `provider`: its calls go on the platform's keys again.
    pub async fn remove_provider_key(&self, tenant: &Tenant, provider: Provider, actor: &Actor) -> Result<(), ApiError> {
        self.store.delete_provider_key(&tenant.id, provider.as_str()).await.map_err(|e| match e {
            clawpen_store::StoreError::NotFound => ApiError::not_found("provider key"),
            other => other.into(),
        })?;
        self.meter.forget_tenant_key(&tenant.id, provider);
        self.audit(&tenant.id, None, actor, "provider_key.remove", provider.as_str(), Some(serde_json::json!({"provider": provider.as_str()}))).await;
        Ok(())
    }
}
