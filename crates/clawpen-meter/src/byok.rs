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
    /// The provider refused the tenant's key: keep that, with `reason`.
    fn rejected<'a>(&'a self, tenant: &'a TenantId, provider: Provider, reason: &'a str) -> BoxFuture<'a, ()>;
}

/// What the refusal of a rejected key says.
pub fn rejected_message(provider: Provider, reason: &str) -> String {
    format!("This account's own {} key was refused by the provider ({reason}); calls to {} stop until a new key is saved at /api/v1/provider-keys/{}.", provider.as_str(), provider.as_str(), provider.as_str())
}
