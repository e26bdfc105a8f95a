//! The agent's HTTP server on its Unix socket: `GET /health` and `POST /messages`, which runs the
//! assistant loop ([`crate::assistant`]) and logs the turn in the session; and `POST /claim`,
//! which gives a warm-pool sandbox its identity.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::UnixListener;

use crate::assistant::{self, Ending, Turn};
use crate::meter_client::MeterError;
pub use crate::config::AgentConfig;
use crate::protocol::{AgentError, Health, MessageIn, MessageOut, StreamEvent, MAX_BODY_BYTES};
use crate::session::{self, now_ts, LogLine};
use crate::workspace::Workspace;

/// `error_code` on the log lines of a turn whose model call failed (the user got a 502).
const FAILED_CODE: &str = "meter_failed";

pub(crate) struct AgentState {
    /// Replaced once, when a warm-pool sandbox is claimed; otherwise fixed for the process.
    config: std::sync::RwLock<Arc<AgentConfig>>,
    pub(crate) workspace: Workspace,
    started: Instant,
}

impl AgentState {
    /// Who the agent is and how far a run may go, as of now.
    pub(crate) fn config(&self) -> Arc<AgentConfig> {
        self.config.read().expect("config lock").clone()
    }

    /// How long the agent process has run.
    pub(crate) fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}

/// An error answer of the agent.
type Rejection = (StatusCode, Json<AgentError>);

fn reject(status: StatusCode, error: impl Into<String>) -> Rejection {
    (status, Json(AgentError { error: error.into() }))
}

fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/claim", post(claim))
        .route("/messages", post(message))
        .route("/gateway", get(crate::gateway::upgrade))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn health(State(s): State<Arc<AgentState>>) -> Json<Health> {
    Json(health_of(&s))
}

fn health_of(s: &AgentState) -> Health {
    let config = s.config();
    Health {
        ok: true,
        agent_id: config.agent_id.clone(),
        tenant_id: config.tenant_id.clone(),
        uid: own_uid(),
        uptime_ms: s.started.elapsed().as_millis() as u64,
    }
}

/// A warm-pool sandbox takes the identity the server wrote into its run dir. Claiming again
/// with the same identity is a no-op; a claimed agent never changes identity (409).
async fn claim(State(s): State<Arc<AgentState>>) -> Result<Json<Health>, Rejection> {
    let config = s.config();
    let id = crate::config::read_identity(&config.run_dir)
        .map_err(|e| reject(StatusCode::BAD_REQUEST, format!("the identity file is not valid: {e}")))?
        .ok_or_else(|| reject(StatusCode::BAD_REQUEST, "there is no identity file in the run dir"))?;
    if config.is_claimed() {
        if (config.agent_id.as_str(), config.tenant_id.as_str()) != (id.agent_id.as_str(), id.tenant_id.as_str()) {
            return Err(reject(StatusCode::CONFLICT, "this agent already has another identity"));
        }
    } else {
        let mut claimed = (*config).clone();
        claimed.agent_id = id.agent_id;
        claimed.tenant_id = id.tenant_id;
        eprintln!("clawpen agent: claimed as {} (tenant {})", claimed.agent_id, claimed.tenant_id);
        *s.config.write().expect("config lock") = Arc::new(claimed);
    }
    Ok(Json(health_of(&s)))
}

fn own_uid() -> u32 {
    // /proc/self/status avoids an unsafe libc call for a number we only report.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(u32::MAX)
}

/// A run id as the meter takes it.
pub(crate) fn valid_run_id(s: &str) -> bool {
    valid_session(s)
}

fn valid_session(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `POST /messages`: the reply as one JSON object, or (`Accept: text/event-stream`) as it is
/// written: events whose data is a [`crate::protocol::StreamEvent`] (`delta` with each piece
/// of the model's answer as it arrives, then one `done` with the whole [`MessageOut`], or
/// `error`). A caller that hangs up stops the run, and with it the model call.
async fn message(State(s): State<Arc<AgentState>>, headers: axum::http::HeaderMap, Json(m): Json<MessageIn>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let wants_stream = headers.get("accept").and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"));
    match checked(m) {
        Err(r) => r.into_response(),
        Ok((session, m)) if m.greeting => match greet(&s, &session, m.text).await {
            Ok(out) => Json(out).into_response(),
            Err((status, e)) => reject(status, e).into_response(),
        },
        Ok((session, m)) if wants_stream => stream_turn(s, session, m).into_response(),
        Ok((session, m)) => match turn(&s, &session, m.text, m.run_id, None).await {
            Ok(out) => Json(out).into_response(),
            Err((status, e)) => reject(status, e).into_response(),
        },
    }
}

/// The event stream of one turn (see [`message`]).
fn stream_turn(s: Arc<AgentState>, session: String, m: MessageIn) -> axum::response::sse::Sse<impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>> {
    use axum::response::sse::Event;
    /// Aborts the run when the stream is dropped (the caller hung up) before it ended.
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    struct Turning {
        deltas: tokio::sync::mpsc::UnboundedReceiver<String>,
        run: Option<tokio::task::JoinHandle<Result<MessageOut, (StatusCode, String)>>>,
        _abort: AbortOnDrop,
    }
    let (tx, deltas) = tokio::sync::mpsc::unbounded_channel::<String>();
    let run = tokio::spawn(async move { turn(&s, &session, m.text, m.run_id, Some(tx)).await });
    let state = Turning { _abort: AbortOnDrop(run.abort_handle()), deltas, run: Some(run) };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        let run = st.run.as_mut()?;
        let event = |e: StreamEvent| Event::default().event(e.name()).data(serde_json::to_string(&e).unwrap_or_default());
        if let Some(text) = st.deltas.recv().await {
            return Some((Ok(event(StreamEvent::Delta { text })), st));
        }
        // No more deltas: the run ended.
        let last = match run.await {
            Ok(Ok(out)) => StreamEvent::Done { out },
            Ok(Err((status, error))) => StreamEvent::Error { status: status.as_u16(), error },
            Err(e) => StreamEvent::Error { status: 500, error: e.to_string() },
        };
        st.run = None;
        Some((Ok(event(last)), st))
    });
    axum::response::sse::Sse::new(stream)
}

/// A message's session and run id, checked.
fn checked(m: MessageIn) -> Result<(String, MessageIn), Rejection> {
    let session = m.session.clone().unwrap_or_else(|| "main".to_owned());
    if !valid_session(&session) {
        return Err(reject(StatusCode::BAD_REQUEST, "session must be 1-64 of [A-Za-z0-9_-]"));
    }
    if m.text.trim().is_empty() {
        return Err(reject(StatusCode::BAD_REQUEST, "text must not be empty"));
    }
    if m.run_id.as_deref().is_some_and(|r| !valid_run_id(r)) {
        return Err(reject(StatusCode::BAD_REQUEST, "run_id must be 1-64 of [A-Za-z0-9_-]"));
    }
    Ok((session, m))
}

/// One user message, whichever door it came through: the assistant loop in the run the server
/// opened for it, then the turn in the session log. `Err` is the status and what to tell the user.
pub(crate) async fn turn(s: &AgentState, session: &str, text: String, run_id: Option<String>, deltas: Option<crate::meter_client::Deltas>) -> Result<MessageOut, (StatusCode, String)> {
    let asked_at = now_ts();
    let config = s.config();
    if !config.is_claimed() {
        return Err((StatusCode::CONFLICT, "this sandbox is in the warm pool and has no agent yet".to_owned()));
    }
    let Turn { run_id, ending, tool_lines } = assistant::run(&config, &s.workspace, session, &text, run_id, deltas).await;
    let tool_calls = tool_lines.len() as u32;
    let answer = answer(&config, session, &run_id, tool_calls, ending);
    let lines = log_lines(LogLine::User { content: text, ts: asked_at, run: Some(run_id.clone()), error_code: None }, tool_lines, &answer, &run_id);
    // The turn is logged even when the model failed: the question was asked and tools may have run.
    let logged = session::append(&s.workspace, session, &lines).await;
    let mut out = answer.map_err(|e| {
        eprintln!("clawpen agent: run {run_id} failed: {e}");
        (StatusCode::BAD_GATEWAY, format!("the model could not be reached: {e}"))
    })?;
    match logged {
        Ok(()) => {}
        // The user still gets the answer, and learns that it was not kept.
        Err(e) if crate::workspace::is_full(&e) => {
            out.reply.push_str("\n\n(This conversation was not saved: ");
            out.reply.push_str(crate::workspace::FULL_NOTICE);
            out.reply.push_str(".)");
            out.error_code.get_or_insert_with(|| "workspace_full".to_owned());
        }
        Err(e) => return Err((StatusCode::INTERNAL_SERVER_ERROR, format!("cannot write the session log: {e}"))),
    }
    Ok(out)
}

/// The server's greeting: kept in the session as the agent's first words, no model call.
async fn greet(s: &AgentState, session: &str, text: String) -> Result<MessageOut, (StatusCode, String)> {
    let config = s.config();
    if !config.is_claimed() {
        return Err((StatusCode::CONFLICT, "this sandbox is in the warm pool and has no agent yet".to_owned()));
    }
    let line = LogLine::Assistant { content: text.clone(), ts: now_ts(), run: None, stopped_by: None, error_code: None };
    session::append(&s.workspace, session, &[line]).await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot write the session log: {e}")))?;
    answer(&config, session, "", 0, Ending::Answer(text)).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// What the user is told at the end of a run; `Err` when the model could not be reached.
fn answer(config: &AgentConfig, session: &str, run_id: &str, tool_calls: u32, ending: Ending) -> Result<MessageOut, MeterError> {
    let mut out = MessageOut {
        reply: String::new(),
        agent_id: config.agent_id.clone(),
        tenant_id: config.tenant_id.clone(),
        session: session.to_owned(),
        run_id: run_id.to_owned(),
        tool_calls,
        stopped_by: None,
        paused: false,
        error_code: None,
        paused_until: None,
    };
    match ending {
        Ending::Answer(text) if text.trim().is_empty() => out.reply = "(The model returned an empty answer.)".to_owned(),
        Ending::Answer(text) => out.reply = text,
        Ending::Stopped(stop) => {
            out.reply = stop.reply(config);
            out.stopped_by = Some(stop.code().to_owned());
        }
        Ending::Refused(r) => {
            out.reply = r.message;
            // A 402 pauses the agent, except `cap_headroom`: that one call did not fit in what is
            // left of the monthly cap (a smaller one may), and nothing is paused.
            out.paused = r.status == StatusCode::PAYMENT_REQUIRED.as_u16() && r.code != "cap_headroom";
            out.error_code = Some(r.code);
            out.paused_until = r.paused_until;
        }
        Ending::Failed(e) => return Err(e),
    }
    Ok(out)
}

/// The session-log lines of a turn: the question, the tool calls, and the reply when there is
/// one. A turn without the model's words (refused, failed) is marked with `error_code` on its
/// lines, so the history of later runs leaves it out.
fn log_lines(mut question: LogLine, tool_lines: Vec<LogLine>, answer: &Result<MessageOut, MeterError>, run_id: &str) -> Vec<LogLine> {
    let error_code = match answer {
        Ok(out) => out.error_code.clone(),
        Err(_) => Some(FAILED_CODE.to_owned()),
    };
    if let LogLine::User { error_code: code, .. } = &mut question {
        code.clone_from(&error_code);
    }
    let mut lines = vec![question];
    lines.extend(tool_lines);
    if let Ok(out) = answer {
        lines.push(LogLine::Assistant {
            content: out.reply.clone(),
            ts: now_ts(),
            run: Some(run_id.to_owned()),
            stopped_by: out.stopped_by.clone(),
            error_code,
        });
    }
    lines
}

/// Binds `agent.sock` in the run dir, replacing a stale one from an earlier run.
pub fn bind(run_dir: &Path) -> std::io::Result<UnixListener> {
    let path = run_dir.join(clawpen_core::spec::AGENT_SOCKET);
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(&path)
}

/// Serves the agent until `shutdown` completes.
pub async fn run(config: AgentConfig, listener: UnixListener, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let workspace = Workspace::new(config.workspace.clone());
    let state = Arc::new(AgentState { config: std::sync::RwLock::new(Arc::new(config)), workspace, started: Instant::now() });
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

/// `clawpen agent`: read the environment, bind the socket, serve until SIGTERM.
pub fn main_blocking() -> Result<(), String> {
    let config = AgentConfig::from_env()?;
    // One thread: an idle agent should cost well under a MiB.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = bind(&config.run_dir).map_err(|e| format!("cannot bind {}: {e}", config.run_dir.display()))?;
        eprintln!(
            "clawpen agent {} listening on {} (model {}, at most {} tool calls and {} s a run)",
            if config.is_claimed() { config.agent_id.as_str() } else { "(warm pool, unclaimed)" },
            config.run_dir.join(clawpen_core::spec::AGENT_SOCKET).display(),
            config.model,
            config.max_tool_calls,
            config.max_run.as_secs()
        );
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
            tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
        };
        run(config, listener, shutdown).await.map_err(|e| e.to_string())
    })
}
