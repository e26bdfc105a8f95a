//! Tenant routes: the account's own provider keys (bring your own key; see `byok.rs`). A key
//! goes in once and never comes out: answers show its last four characters.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use clawpen_meter::config::Provider;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{ApiJson, TenantCaller};
use crate::app::App;
use crate::error::{ApiError, ErrorBody};

/// The providers' names as the path takes them.
pub const PROVIDER_PATTERN: &str = "^(openai|anthropic|gemini|deepseek|xai)$";

/// A provider from the path; anything else is a 404.
pub struct ProviderPath(pub Provider);

impl FromRequestParts<App> for ProviderPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let axum::extract::Path(v) = axum::extract::Path::<Vec<String>>::from_request_parts(parts, app).await.map_err(|_| ApiError::not_found("provider"))?;
        v.first().and_then(|p| Provider::parse(p)).map(ProviderPath).ok_or_else(|| ApiError::not_found("provider (openai, anthropic, gemini, deepseek or xai)"))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveProviderKey {
    /// The account's own API key at the provider. Checked with a cheap call, then sealed; it is
    /// never shown again.
    #[schema(min_length = 1, max_length = 512)]
    pub key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderKeyView {
    pub provider: String,
    /// The key's last four characters.
    pub last4: String,
    /// `active`, or `rejected`: the provider refused it and calls to it stop until a new key is
    /// saved.
    pub status: String,
    /// Why it was rejected.
    pub detail: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderKeyList {
    pub keys: Vec<ProviderKeyView>,
}

fn view(k: clawpen_store::provider_keys::ProviderKey) -> ProviderKeyView {
    ProviderKeyView { provider: k.provider, last4: k.last4, status: k.status, detail: k.detail, created_at: k.created_at }
}

#[utoipa::path(put, path = "/api/v1/provider-keys/{model_provider}", tag = "provider-keys", operation_id = "save_provider_key", security(("tenant_key" = [])),
    params(("model_provider" = String, Path)), request_body = SaveProviderKey,
    responses((status = 200, description = "The key is checked and saved: this account's calls to the provider use it, charged the plan's fee per call.", body = ProviderKeyView),
        (status = 404, description = "No such provider (`not_found`).", body = ErrorBody),
        (status = 409, description = "The server offers no models of this provider (`provider_not_offered`).", body = ErrorBody),
        (status = 422, description = "The provider refused the key (`key_rejected`), or it is not one (`invalid_input`); nothing was saved.", body = ErrorBody),
        (status = 502, description = "The provider could not be reached to check it (`provider_unreachable`); nothing was saved.", body = ErrorBody)))]
/// Saves the account's own key for a provider (bring your own key).
pub async fn save(State(app): State<App>, caller: TenantCaller, ProviderPath(provider): ProviderPath, ApiJson(body): ApiJson<SaveProviderKey>) -> Result<Json<ProviderKeyView>, ApiError> {
    app.save_provider_key(&caller.tenant, provider, &body.key, &caller.actor()).await?;
    let k = app.store.provider_key(&caller.tenant.id, provider.as_str()).await?.ok_or_else(|| ApiError::internal("the saved key is missing"))?;
    Ok(Json(view(k)))
}

#[utoipa::path(get, path = "/api/v1/provider-keys", tag = "provider-keys", operation_id = "list_provider_keys", security(("tenant_key" = [])),
    responses((status = 200, description = "The account's own keys, each as its last four characters.", body = ProviderKeyList)))]
pub async fn list(State(app): State<App>, caller: TenantCaller) -> Result<Json<ProviderKeyList>, ApiError> {
    Ok(Json(ProviderKeyList { keys: app.store.provider_keys(&caller.tenant.id).await?.into_iter().map(view).collect() }))
}

#[utoipa::path(delete, path = "/api/v1/provider-keys/{model_provider}", tag = "provider-keys", operation_id = "remove_provider_key", security(("tenant_key" = [])),
    params(("model_provider" = String, Path)),
    responses((status = 204, description = "Removed: the account's calls to the provider go on the platform's key, at its prices."),
        (status = 404, description = "No key of this account for that provider, or no such provider (`not_found`).", body = ErrorBody)))]
pub async fn remove(State(app): State<App>, caller: TenantCaller, ProviderPath(provider): ProviderPath) -> Result<StatusCode, ApiError> {
    app.remove_provider_key(&caller.tenant, provider, &caller.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}
