//! Bring-your-own keys: a tenant's own key for a provider, used for that tenant's calls to that
//! provider instead of the platform's. The server keeps the keys (sealed in its vault, bound to
//! the tenant) and hands them to the meter through [`TenantKeys`]; the meter keeps what it
//! learned per tenant and provider until the server says the key changed.
//!
//! A call on a tenant's key is still a metered call (the run, the plan's calls per run and max
//! tokens, the ledger line and its tokens), but it is charged the plan's `byok_fee_per_call`
//! instead of the provider's price: the provider bills the tenant. When the provider refuses
//! the key (401 or 403), that tenant's use of it stops at once: the key is marked rejected, the
//! call gets the meter's own error (never the provider's body, which may quote the key), and
//! every later call to that provider is refused before it leaves, until the tenant saves a key
//! again.

use std::future::Future;
use std::pin::Pin;

use clawpen_core::ids::TenantId;

use crate::config::{Provider, Secret};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the server has of a tenant's key for a provider.
#[derive(Debug, Clone)]
pub enum TenantKey {
    /// Calls go with this key.
    Active(Secret),
    /// The provider refused it: calls are refused with this reason until a new key is saved.
    Rejected(String),
}

/// Where the meter finds tenants' own keys (the server's store and vault).
pub trait TenantKeys: Send + Sync {
    /// The tenant's key for `provider`, if it saved one.
    fn lookup<'a>(&'a self, tenant: &'a TenantId, provider: Provider) -> BoxFuture<'a, Result<Option<TenantKey>, String>>;
    /// The provider refused `key`, the tenant's key for `provider`: keep that, with `reason`,
    /// unless the tenant has saved another key since.
    fn rejected<'a>(&'a self, tenant: &'a TenantId, provider: Provider, key: &'a Secret, reason: &'a str) -> BoxFuture<'a, ()>;
}

/// Whether a provider's refusal (`status`, `body`) is of the key: 401 and 403, and the 400 some
/// providers answer an invalid key with (Gemini's `API_KEY_INVALID`).
pub fn refuses_key(status: u16, body: &[u8]) -> bool {
    match status {
        401 | 403 => true,
        400 => {
            let text = String::from_utf8_lossy(body).to_ascii_lowercase();
            text.contains("api_key_invalid") || text.contains("api key") || text.contains("api_key")
        }
        _ => false,
    }
}

/// What the refusal of a rejected key says.
pub fn rejected_message(provider: Provider, reason: &str) -> String {
    format!("This account's own {} key was refused by the provider ({reason}); calls to {} stop until a new key is saved at /api/v1/provider-keys/{}.", provider.as_str(), provider.as_str(), provider.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_of_the_key_is_told_from_other_refusals() {
        assert!(refuses_key(401, b"{}") && refuses_key(403, b""));
        assert!(refuses_key(400, br#"[{"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT", "details": [{"reason": "API_KEY_INVALID"}]}}]"#));
        assert!(!refuses_key(400, br#"{"error": {"message": "max_tokens is too large"}}"#));
        assert!(!refuses_key(429, b"rate limited") && !refuses_key(500, b"api key"));
    }
}
