//! The agent's HTTP server on its Unix socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::Mutex;

use crate::protocol::{AgentError, Health, MessageIn, MessageOut, MAX_BODY_BYTES};

/// Where the agent lives, read from the environment the sandbox spec sets.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub agent_id: String,
    pub tenant_id: String,
    /// The workspace (`/data` in the sandbox).
    pub workspace: PathBuf,
    /// The run dir holding `agent.sock` (`/run/clawpen` in the sandbox).
    pub run_dir: PathBuf,
}

impl AgentConfig {
    pub fn from_env() -> Result<AgentConfig, String> {
        let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set; `clawpen agent` runs inside a sandbox made by the server"));
        Ok(AgentConfig {
            agent_id: var("CLAWPEN_AGENT_ID")?,
            tenant_id: var("CLAWPEN_TENANT_ID")?,
            workspace: var("CLAWPEN_WORKSPACE")?.into(),
            run_dir: var("CLAWPEN_RUN_DIR")?.into(),
        })
    }
}

struct AgentState {
    config: AgentConfig,
    started: Instant,
    /// Serialises session-log appends so lines never interleave.
    log_lock: Mutex<()>,
}

fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/messages", post(message))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn health(State(s): State<Arc<AgentState>>) -> Json<Health> {
    Json(Health {
        ok: true,
        agent_id: s.config.agent_id.clone(),
        tenant_id: s.config.tenant_id.clone(),
        uid: own_uid(),
        uptime_ms: s.started.elapsed().as_millis() as u64,
    })
}

fn own_uid() -> u32 {
    // /proc/self/status avoids an unsafe libc call for a number we only report.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(u32::MAX)
}

fn valid_session(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn message(
    State(s): State<Arc<AgentState>>,
    Json(m): Json<MessageIn>,
) -> Result<Json<MessageOut>, (StatusCode, Json<AgentError>)> {
    let session = m.session.unwrap_or_else(|| "main".to_owned());
    if !valid_session(&session) {
        return Err((StatusCode::BAD_REQUEST, Json(AgentError { error: "session must be 1-64 of [A-Za-z0-9_-]".into() })));
    }
    // Until the model loop exists the reply is an acknowledgement that names this sandbox, so a
    // caller can see the round trip reached the right tenant.
    let reply = format!(
        "ack from agent {} of tenant {}: received {} characters",
        s.config.agent_id,
        s.config.tenant_id,
        m.text.chars().count()
    );
    let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let lines = [
        serde_json::json!({"ts": now, "role": "user", "content": m.text}),
        serde_json::json!({"ts": now, "role": "assistant", "content": reply}),
    ];
    append_session(&s, &session, &lines).await.map_err(|e| {
        (StatusCode::INTERNAL_SERVER_ERROR, Json(AgentError { error: format!("cannot write the session log: {e}") }))
    })?;
    Ok(Json(MessageOut { reply, agent_id: s.config.agent_id.clone(), tenant_id: s.config.tenant_id.clone(), session }))
}

async fn append_session(s: &AgentState, session: &str, lines: &[serde_json::Value]) -> std::io::Result<()> {
    let _guard = s.log_lock.lock().await;
    let dir = s.config.workspace.join("sessions");
    tokio::fs::create_dir_all(&dir).await?;
    let mut f = tokio::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{session}.jsonl"))).await?;
    let mut buf = Vec::new();
    for l in lines {
        serde_json::to_writer(&mut buf, l)?;
        buf.push(b'\n');
    }
    f.write_all(&buf).await?;
    f.sync_data().await
}

/// Binds `agent.sock` in the run dir, replacing a stale one from an earlier run.
pub fn bind(run_dir: &Path) -> std::io::Result<UnixListener> {
    let path = run_dir.join(clawpen_core::spec::AGENT_SOCKET);
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(&path)
}

/// Serves the agent until `shutdown` completes.
pub async fn run(config: AgentConfig, listener: UnixListener, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let state = Arc::new(AgentState { config, started: Instant::now(), log_lock: Mutex::new(()) });
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

/// `clawpen agent`: read the environment, bind the socket, serve until SIGTERM.
pub fn main_blocking() -> Result<(), String> {
    let config = AgentConfig::from_env()?;
    // One thread: an idle agent should cost well under a MiB.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = bind(&config.run_dir).map_err(|e| format!("cannot bind {}: {e}", config.run_dir.display()))?;
        eprintln!("clawpen agent {} listening on {}", config.agent_id, config.run_dir.join("agent.sock").display());
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
            tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
        };
        run(config, listener, shutdown).await.map_err(|e| e.to_string())
    })
}
