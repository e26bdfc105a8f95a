//! Extractors: who is calling, and request bodies and paths that fail as JSON errors.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use clawpen_core::ids::{AgentId, KeyId, MemberId, TenantId};
use clawpen_store::Tenant;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::app::App;
use crate::error::ApiError;
use crate::fleet::Actor;

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim())
}

fn is_admin(app: &App, token: &str) -> bool {
    let sha = clawpen_store::token_sha256(token);
    sha.as_bytes().ct_eq(app.admin_token_sha256.as_bytes()).into()
}

/// The caller holds the admin token.
pub struct Admin;

impl FromRequestParts<App> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        if is_admin(app, token) {
            return Ok(Admin);
        }
        match app.store.key_for_token(token).await? {
            Some(_) => Err(ApiError::forbidden("this route needs the admin token; a tenant API key cannot use it")),
            None => Err(ApiError::unauthorized()),
        }
    }
}

/// The caller holds a live API key of `tenant`. Every tenant route scopes its queries by it.
pub struct TenantCaller {
    pub tenant: Tenant,
    pub key: KeyId,
}

impl TenantCaller {
    pub fn actor(&self) -> Actor {
        Actor(format!("tenant-key:{}", self.key))
    }
}

impl FromRequestParts<App> for TenantCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        match app.store.key_for_token(token).await? {
            Some((tenant, key)) => {
                let tenant = app.store.get_tenant(&tenant).await.map_err(|_| ApiError::unauthorized())?;
                Ok(TenantCaller { tenant, key })
            }
            None if is_admin(app, token) => {
                Err(ApiError::forbidden("this route needs a tenant API key; the admin token is not a tenant"))
            }
            None => Err(ApiError::unauthorized()),
        }
    }
}

/// A JSON body whose every failure is a JSON error naming the problem: 415 without a JSON
/// content type, 400 when it is not JSON, 422 when it is JSON of the wrong shape (type, missing
/// or unknown field), 413 when too large. The OpenAPI document declares these on every route
/// with a body (see `doc.rs`).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let status = r.status();
    let code = match &r {
        JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
        JsonRejection::JsonSyntaxError(_) => "invalid_json",
        JsonRejection::JsonDataError(_) => "invalid_input",
        _ if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        _ => "invalid_body",
    };
    let message = match code {
        "body_too_large" => format!("the request body is larger than {} bytes", super::MAX_BODY_BYTES),
        _ => r.body_text(),
    };
    ApiError::new(status, code, message)
}

/// A tenant id from the path; anything that is not one is a 404, like a missing tenant.
pub struct TenantPath(pub TenantId);
/// An agent id from the path; anything that is not one is a 404, like a missing agent.
pub struct AgentPath(pub AgentId);
/// A tenant id and an API key id from the path.
pub struct TenantKeyPath(pub TenantId, pub KeyId);
/// A member id from the path; anything that is not one is a 404, like a missing member.
pub struct MemberPath(pub MemberId);
/// A tenant id and a member id from the path.
pub struct TenantMemberPath(pub TenantId, pub MemberId);

async fn path_segments(parts: &mut Parts, app: &App) -> Result<Vec<String>, ApiError> {
    let axum::extract::Path(v) = axum::extract::Path::<Vec<String>>::from_request_parts(parts, app)
        .await
        .map_err(|e: PathRejection| ApiError::new(axum::http::StatusCode::NOT_FOUND, "not_found", e.body_text()))?;
    Ok(v)
}

impl FromRequestParts<App> for TenantPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let v = path_segments(parts, app).await?;
        TenantId::parse(v.first().map(String::as_str).unwrap_or("")).map(TenantPath).map_err(|_| ApiError::not_found("tenant"))
    }
}

impl FromRequestParts<App> for AgentPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let v = path_segments(parts, app).await?;
        AgentId::parse(v.first().map(String::as_str).unwrap_or("")).map(AgentPath).map_err(|_| ApiError::not_found("agent"))
    }
}

impl FromRequestParts<App> for TenantKeyPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let v = path_segments(parts, app).await?;
        let t = TenantId::parse(v.first().map(String::as_str).unwrap_or("")).map_err(|_| ApiError::not_found("tenant"))?;
        let k = KeyId::parse(v.get(1).map(String::as_str).unwrap_or("")).map_err(|_| ApiError::not_found("api key"))?;
        Ok(TenantKeyPath(t, k))
    }
}

impl FromRequestParts<App> for MemberPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let v = path_segments(parts, app).await?;
        MemberId::parse(v.first().map(String::as_str).unwrap_or("")).map(MemberPath).map_err(|_| ApiError::not_found("member"))
    }
}

impl FromRequestParts<App> for TenantMemberPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let v = path_segments(parts, app).await?;
        let t = TenantId::parse(v.first().map(String::as_str).unwrap_or("")).map_err(|_| ApiError::not_found("tenant"))?;
        let m = MemberId::parse(v.get(1).map(String::as_str).unwrap_or("")).map_err(|_| ApiError::not_found("member"))?;
        Ok(TenantMemberPath(t, m))
    }
}

/// A node name from the path; anything that is not a known node (even bytes that are not UTF-8)
/// is a 404, like a missing node.
pub struct NodePath(pub String);

impl FromRequestParts<App> for NodePath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let v = path_segments(parts, app).await.map_err(|_| ApiError::not_found("node"))?;
        v.into_iter().next().map(NodePath).ok_or_else(|| ApiError::not_found("node"))
    }
}

/// Query parameters that fail as a JSON error (400 `invalid_query`).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::new(axum::http::StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
    }
}

/// A count from the query (`limit`, `tail`): `default` when absent, a 400 `invalid_query` outside
/// `1..=max` (the bounds the OpenAPI document declares), never silently clamped.
pub fn bounded(name: &str, value: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match value {
        None => Ok(default),
        Some(v) if (1..=max).contains(&v) => Ok(v),
        Some(_) => Err(ApiError::new(axum::http::StatusCode::BAD_REQUEST, "invalid_query", format!("{name}: must be between 1 and {max}"))),
    }
}
