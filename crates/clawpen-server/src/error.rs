//! The error policy, in one place.
//!
//! Model code returns specific `thiserror` enums (`StoreError`, `RuntimeError`, `ClientError`).
//! At the HTTP edge everything becomes an [`ApiError`], which renders as
//! `{"error": {"code": "...", "message": "..."}}` with a 4xx or 5xx status. A message never holds a
//! secret, a host path or a foreign tenant's id; 5xx details go to the log, not to the caller.
//! Input the caller got wrong is always a 4xx (see `api::extract` for bodies, queries and ids);
//! a 5xx is ours or a dependency's. The OpenAPI document declares every status a route can
//! answer (`api::doc`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use clawpen_agent::client::ClientError;
use clawpen_runtime::RuntimeError;
use clawpen_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `invalid_input`.
    pub code: String,
    /// What was wrong and, where there is one, what to do next.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no such {what}"))
    }
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", message)
    }
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid API key; send `Authorization: Bearer <key>`",
        )
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// A failure of ours: the detail is logged, the caller gets a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; the operator's log has the details")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message } };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("resource"),
            StoreError::Conflict(m) => ApiError::conflict(m),
            other => ApiError::internal(other),
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Unreachable(_) => {
                tracing::error!(error = %e, "container runtime unreachable");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "runtime_unavailable", "the container runtime is unreachable; try again shortly")
            }
            RuntimeError::ImageMissing(_) => {
                tracing::error!(error = %e, "sandbox image missing");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "image_missing", "the sandbox image is missing; the operator must run `clawpen image build`")
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<clawpen_meter::meter::MeterError> for ApiError {
    fn from(e: clawpen_meter::meter::MeterError) -> Self {
        ApiError::new(e.status(), e.code(), e.message())
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Connect(_) => ApiError::conflict("the agent is not running; start it with POST /api/v1/agents/{id}/start"),
            ClientError::Timeout => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "agent_timeout", "the agent did not answer in time"),
            ClientError::Untrusted(why) => {
                tracing::error!(error = %why, "an agent socket leads elsewhere than its sandbox; nothing was sent");
                ApiError::new(StatusCode::BAD_GATEWAY, "agent_mismatch", "the agent's socket does not lead to its own sandbox, so nothing was sent; restart the agent")
            }
            ClientError::TooLarge => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "agent_answer_too_large",
                format!("the agent's answer was larger than {} bytes and was dropped", clawpen_agent::client::MAX_ANSWER_BYTES),
            ),
            ClientError::Status { status, body } if status.is_client_error() => {
                let msg = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                    .unwrap_or_else(|| "the agent refused the message".to_owned());
                ApiError::new(StatusCode::BAD_REQUEST, "agent_refused", msg)
            }
            other => {
                tracing::warn!(error = %other, "agent call failed");
                ApiError::new(StatusCode::BAD_GATEWAY, "agent_error", "the agent failed to answer; see GET /api/v1/agents/{id}/logs")
            }
        }
    }
}
