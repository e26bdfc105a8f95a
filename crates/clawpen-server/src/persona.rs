//! The workspace files an agent's owner reads and edits (the console's persona and memory, and
//! their REST routes): `SOUL.md`, `USER.md`, `MEMORY.md` and the notes in `memory/`. Every read
//! is by handle, refusing links and anything but a regular file; every write is a new file
//! renamed over the name (see [`crate::layout::Layout::replace_workspace_file`]), owned by the
//! sandbox's uid. The sandbox is the attacker: nothing here follows a name it controls.

use axum::http::StatusCode;
use clawpen_core::ids::AgentId;
use clawpen_hostfs::SandboxDir;
use clawpen_store::Tenant;

use crate::app::App;
use crate::error::ApiError;

/// The persona files an owner may edit.
pub const PERSONA_FILES: [&str; 2] = ["SOUL.md", "USER.md"];
/// Largest persona or memory file read or written.
pub const MAX_FILE_BYTES: usize = 64 * 1024;
/// Most notes in `memory/` shown.
const MAX_NOTES: usize = 50;

/// One line of the agent's memory, as shown to its owner.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct MemoryLine {
    /// `MEMORY.md` or `memory/<name>.md`.
    pub file: String,
    /// 1-based.
    pub line: usize,
    pub text: String,
}

/// An agent's persona files and memory, as its owner sees them.
pub struct Persona {
    pub soul: String,
    pub user: String,
    pub memory: Vec<MemoryLine>,
}

/// A file name an owner may name: a persona file, `MEMORY.md`, or a note `memory/<name>.md`.
pub fn check_file(name: &str, persona_only: bool) -> Result<(), ApiError> {
    let persona = PERSONA_FILES.contains(&name);
    let memory = name == "MEMORY.md" || name.strip_prefix("memory/").and_then(|n| n.strip_suffix(".md")).is_some_and(|n| (1..=64).contains(&n.len()) && !n.starts_with('.') && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
    if persona || (!persona_only && memory) {
        Ok(())
    } else if persona_only {
        Err(ApiError::invalid("file: SOUL.md or USER.md"))
    } else {
        Err(ApiError::invalid("file: SOUL.md, USER.md, MEMORY.md or memory/<name>.md"))
    }
}

fn unavailable() -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "workspace_unavailable", "the agent's files are not on this node right now (archived while it sleeps); start the agent, then try again")
}

fn io_error(e: std::io::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("the agent's files could not be used: {e}"))
}

/// The dir holding `file` and its name there.
fn locate(ws: &SandboxDir, file: &str) -> Result<(Option<SandboxDir>, String), ApiError> {
    match file.split_once('/') {
        None => Ok((None, file.to_owned())),
        // Missing, or a link or a file in the dir's place (not the owner's notes): no such file.
        Some((dir, name)) => ws.subdir(dir).map(|d| (Some(d), name.to_owned())).map_err(|_| ApiError::not_found("file")),
    }
}

fn read(dir: &SandboxDir, name: &str) -> Result<Option<String>, ApiError> {
    match dir.read_file(name, MAX_FILE_BYTES as u64) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(clawpen_hostfs::ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(clawpen_hostfs::ReadError::TooLarge { .. }) => Err(ApiError::new(StatusCode::CONFLICT, "file_too_large", format!("{name} is larger than {MAX_FILE_BYTES} bytes; the console shows and edits smaller files"))),
        // A link, a FIFO, a device: the sandbox's doing; shown as absent, never followed.
        Err(clawpen_hostfs::ReadError::NotRegular { .. }) => Ok(None),
        Err(clawpen_hostfs::ReadError::Io(e)) => Err(io_error(e)),
    }
}

impl App {
    async fn owned_workspace(&self, tenant: &Tenant, agent: &AgentId) -> Result<(clawpen_store::Agent, SandboxDir), ApiError> {
        let a = self.store.get_agent(&tenant.id, agent).await.map_err(|e| match e {
            clawpen_store::StoreError::NotFound => ApiError::not_found("agent"),
            other => other.into(),
        })?;
        let ws = self.layout_of(&a).workspace(agent).map_err(io_error)?.ok_or_else(unavailable)?;
        Ok((a, ws))
    }

    /// A workspace file's text (`None`: it does not exist, or is not a regular file).
    pub async fn read_agent_file(&self, tenant: &Tenant, agent: &AgentId, file: &str) -> Result<Option<String>, ApiError> {
        check_file(file, false)?;
        let (_, ws) = self.owned_workspace(tenant, agent).await?;
        let (dir, name) = match locate(&ws, file) {
            Ok(x) => x,
            Err(e) if e.status == StatusCode::NOT_FOUND => return Ok(None),
            Err(e) => return Err(e),
        };
        read(dir.as_ref().unwrap_or(&ws), &name)
    }

    /// Replaces a persona file (`SOUL.md`, `USER.md`) or a memory file with `text`; the agent
    /// reads it for its next reply.
    pub async fn write_agent_file(&self, tenant: &Tenant, agent: &AgentId, file: &str, text: &str, actor: &str) -> Result<(), ApiError> {
        check_file(file, false)?;
        if text.len() > MAX_FILE_BYTES {
            return Err(ApiError::invalid(format!("text: at most {MAX_FILE_BYTES} bytes")));
        }
        if text.contains('\0') {
            return Err(ApiError::invalid("text: must not contain NUL characters"));
        }
        let _guard = self.lock_agent(agent).await;
        self.write_agent_file_locked(tenant, agent, file, text, actor).await
    }

    /// [`App::write_agent_file`] for a caller holding the agent's lock.
    async fn write_agent_file_locked(&self, tenant: &Tenant, agent: &AgentId, file: &str, text: &str, actor: &str) -> Result<(), ApiError> {
        let (a, ws) = self.owned_workspace(tenant, agent).await?;
        let (dir, name) = locate(&ws, file)?;
        let uid = crate::fleet::uid_of(tenant, &a);
        self.layout_of(&a).replace_workspace_file(agent, dir.as_ref().unwrap_or(&ws), &name, uid, text.as_bytes()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::StorageFull {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "workspace_full", "the agent's disk is full; forget some memory or delete files, then try again")
            } else {
                io_error(e)
            }
        })?;
        let detail = serde_json::json!({"file": file, "bytes": text.len()});
        let _ = self.store.audit(clawpen_store::NewAudit { tenant: Some(&tenant.id), agent: Some(agent), actor, action: "agent.file.write", reason: "requested", detail: Some(&detail) }).await;
        Ok(())
    }

    /// The lines of `MEMORY.md` and of the notes in `memory/` (blank lines and headings left
    /// out), in file order.
    pub async fn memory_lines(&self, tenant: &Tenant, agent: &AgentId) -> Result<Vec<MemoryLine>, ApiError> {
        let (_, ws) = self.owned_workspace(tenant, agent).await?;
        memory_of(&ws)
    }

    /// What the console's agent page shows, from one look at the workspace: `SOUL.md`,
    /// `USER.md` (empty when absent) and the memory lines (none when they cannot be read).
    pub async fn persona(&self, tenant: &Tenant, agent: &AgentId) -> Result<Persona, ApiError> {
        let (_, ws) = self.owned_workspace(tenant, agent).await?;
        Ok(Persona { soul: read(&ws, "SOUL.md")?.unwrap_or_default(), user: read(&ws, "USER.md")?.unwrap_or_default(), memory: memory_of(&ws).unwrap_or_default() })
    }

    /// Removes line `line` of a memory file, if it still reads `text` (409 `conflict` when the
    /// agent changed it meanwhile).
    pub async fn forget_memory_line(&self, tenant: &Tenant, agent: &AgentId, file: &str, line: usize, text: &str, actor: &str) -> Result<(), ApiError> {
        if PERSONA_FILES.contains(&file) {
            return Err(ApiError::invalid("file: MEMORY.md or memory/<name>.md"));
        }
        check_file(file, false)?;
        let _guard = self.lock_agent(agent).await;
        let current = self.read_agent_file(tenant, agent, file).await?.ok_or_else(|| ApiError::not_found("file"))?;
        let lines: Vec<&str> = current.split_inclusive('\n').collect();
        let at = line.checked_sub(1).filter(|i| *i < lines.len()).ok_or_else(|| ApiError::conflict(format!("{file} has no line {line} any more; reload and try again")))?;
        if lines[at].trim_end_matches(['\n', '\r']) != text {
            return Err(ApiError::conflict(format!("line {line} of {file} changed meanwhile; reload and try again")));
        }
        let kept: String = lines.iter().enumerate().filter(|(i, _)| *i != at).map(|(_, l)| *l).collect();
        self.write_agent_file_locked(tenant, agent, file, &kept, actor).await?;
        let detail = serde_json::json!({"file": file, "line": line});
        let _ = self.store.audit(clawpen_store::NewAudit { tenant: Some(&tenant.id), agent: Some(agent), actor, action: "agent.memory.forget", reason: "requested", detail: Some(&detail) }).await;
        Ok(())
    }
}

/// The lines of `MEMORY.md` and of the notes in `memory/` (blank lines and headings left out),
/// in file order.
fn memory_of(ws: &SandboxDir) -> Result<Vec<MemoryLine>, ApiError> {
    let mut files = vec![("MEMORY.md".to_owned(), read(ws, "MEMORY.md")?)];
    if let Ok(notes) = ws.subdir("memory") {
        let mut names: Vec<String> = notes.entries().map_err(io_error)?.into_iter().filter(|e| e.kind == clawpen_hostfs::dir::EntryKind::File).filter_map(|e| e.name.to_str().map(str::to_owned)).filter(|n| check_file(&format!("memory/{n}"), false).is_ok()).collect();
        names.sort();
        for n in names.into_iter().take(MAX_NOTES) {
            files.push((format!("memory/{n}"), read(&notes, &n)?));
        }
    }
    let mut out = Vec::new();
    for (file, text) in files {
        for (i, line) in text.unwrap_or_default().lines().enumerate() {
            let t = line.trim();
            if !t.is_empty() && !t.starts_with('#') {
                out.push(MemoryLine { file: file.clone(), line: i + 1, text: line.to_owned() });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owners_files_may_be_named() {
        for ok in ["SOUL.md", "USER.md", "MEMORY.md", "memory/2026-12-01.md", "memory/trip_notes.md"] {
            assert!(check_file(ok, false).is_ok(), "{ok}");
        }
        for bad in ["../SOUL.md", "memory/../SOUL.md", "memory/.hidden.md", "memory/a/b.md", "sessions/main.jsonl", "AGENTS.md", "/etc/passwd", "memory/x.txt", "memory/.md"] {
            assert!(check_file(bad, false).is_err(), "{bad}");
        }
        assert!(check_file("MEMORY.md", true).is_err());
    }
}
