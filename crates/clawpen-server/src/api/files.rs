//! Tenant routes: an agent's persona and memory files, as the console edits them (see
//! `persona.rs`). Scoped by the caller's tenant: another tenant's agent is 404.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{AgentPath, ApiJson, ApiQuery, TenantCaller};
use crate::app::App;
use crate::error::{ApiError, ErrorBody};
use crate::persona::MemoryLine;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FileQuery {
    /// `SOUL.md`, `USER.md`, `MEMORY.md` or `memory/<name>.md`.
    #[param(pattern = "^(SOUL\\.md|USER\\.md|MEMORY\\.md|memory/[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}\\.md)$")]
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileText {
    /// The file's whole text (at most 64 KiB), without NUL characters.
    #[schema(max_length = 16384, pattern = "^[^\\u0000]*$")]
    pub text: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FileView {
    pub name: String,
    pub text: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryView {
    /// The lines of `MEMORY.md` and `memory/*.md`, without blank lines and headings.
    pub lines: Vec<MemoryLine>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgetLine {
    #[schema(pattern = "^(MEMORY\\.md|memory/[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}\\.md)$")]
    pub file: String,
    /// 1-based, as listed.
    #[schema(minimum = 1, maximum = 1000000)]
    #[serde(deserialize_with = "super::usage::integer")]
    pub line: i64,
    /// The line's text as listed: refused (409) if the agent changed it meanwhile.
    #[schema(max_length = 16384)]
    pub text: String,
}

/// A name the query may not give: 400, like any query that is not of its form.
fn checked(q: &FileQuery) -> Result<(), ApiError> {
    crate::persona::check_file(&q.name, false).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("name: {}", e.message.trim_start_matches("file: "))))
}

#[utoipa::path(get, path = "/api/v1/agents/{agent_id}/files", tag = "agents", operation_id = "get_agent_file", security(("tenant_key" = [])),
    params(("agent_id" = String, Path), FileQuery),
    responses((status = 200, description = "The file.", body = FileView),
        (status = 404, description = "No such agent of the caller's tenant, or no such file (`not_found`).", body = ErrorBody),
        (status = 409, description = "The agent's files are archived while it sleeps (`workspace_unavailable`), or the file is over 64 KiB (`file_too_large`).", body = ErrorBody)))]
/// Reads a persona or memory file of the agent.
pub async fn get_file(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath, ApiQuery(q): ApiQuery<FileQuery>) -> Result<Json<FileView>, ApiError> {
    checked(&q)?;
    let text = app.read_agent_file(&caller.tenant, &id, &q.name).await?.ok_or_else(|| ApiError::not_found("file"))?;
    Ok(Json(FileView { name: q.name, text }))
}

#[utoipa::path(put, path = "/api/v1/agents/{agent_id}/files", tag = "agents", operation_id = "put_agent_file", security(("tenant_key" = [])),
    params(("agent_id" = String, Path), FileQuery), request_body = FileText,
    responses((status = 204, description = "Written; the agent reads it for its next reply."),
        (status = 404, description = "No such agent of the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "The agent's files are archived while it sleeps (`workspace_unavailable`).", body = ErrorBody),
        (status = 507, description = "The agent's disk is full (`workspace_full`).", body = ErrorBody)))]
/// Replaces a persona (`SOUL.md`, `USER.md`) or memory file of the agent.
pub async fn put_file(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath, ApiQuery(q): ApiQuery<FileQuery>, ApiJson(body): ApiJson<FileText>) -> Result<StatusCode, ApiError> {
    checked(&q)?;
    app.write_agent_file(&caller.tenant, &id, &q.name, &body.text, &caller.actor().0).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/agents/{agent_id}/memory", tag = "agents", operation_id = "agent_memory", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)),
    responses((status = 200, description = "What the agent remembers, line by line.", body = MemoryView),
        (status = 404, description = "No such agent of the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "The agent's files are archived while it sleeps (`workspace_unavailable`).", body = ErrorBody)))]
pub async fn memory(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath) -> Result<Json<MemoryView>, ApiError> {
    Ok(Json(MemoryView { lines: app.memory_lines(&caller.tenant, &id).await? }))
}

#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/memory/forget", tag = "agents", operation_id = "forget_agent_memory", security(("tenant_key" = [])),
    params(("agent_id" = String, Path)), request_body = ForgetLine,
    responses((status = 204, description = "The line is gone from the file."),
        (status = 404, description = "No such agent of the caller's tenant, or no such file (`not_found`).", body = ErrorBody),
        (status = 409, description = "The line changed or is gone (`conflict`), or the files are archived (`workspace_unavailable`).", body = ErrorBody)))]
/// Forgets one line of the agent's memory.
pub async fn forget(State(app): State<App>, caller: TenantCaller, AgentPath(id): AgentPath, ApiJson(body): ApiJson<ForgetLine>) -> Result<StatusCode, ApiError> {
    let line = usize::try_from(body.line).map_err(|_| ApiError::conflict(format!("{} has no line {}", body.file, body.line)))?;
    app.forget_memory_line(&caller.tenant, &id, &body.file, line, &body.text, &caller.actor().0).await?;
    Ok(StatusCode::NO_CONTENT)
}
