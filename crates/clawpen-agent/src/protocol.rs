//! Bodies exchanged on `agent.sock`.

use serde::{Deserialize, Serialize};

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    pub agent_id: String,
    pub tenant_id: String,
    pub uid: u32,
    pub uptime_ms: u64,
}

/// `POST /messages` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageIn {
    /// The user's message.
    pub text: String,
    /// Session the message belongs to; `main` when absent.
    #[serde(default)]
    pub session: Option<String>,
    /// The run the server opened with the meter for this message: its model calls carry it as
    /// `x-clawpen-run`, and the meter refuses calls outside a run it opened. Absent, the agent
    /// makes up an id (which only a fake meter accepts: tests of the agent alone).
    #[serde(default)]
    pub run_id: Option<String>,
    /// The server's greeting of a freshly deployed agent: `text` is kept in the session as the
    /// agent's own first message and answered back, without a model call.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub greeting: bool,
}

/// `POST /messages` response. Sent with status 200 whenever the user gets an answer: the model's,
/// a guardrail's explanation (`stopped_by`) or the meter's refusal (`error_code`, `paused`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageOut {
    /// What the user reads.
    pub reply: String,
    pub agent_id: String,
    pub tenant_id: String,
    pub session: String,
    /// The run's id, sent to the meter as `x-clawpen-run` on each of its model calls: the one the
    /// message came with, echoed.
    #[serde(default)]
    pub run_id: String,
    /// Tool calls the run made.
    #[serde(default)]
    pub tool_calls: u32,
    /// The guardrail that stopped the run: `max_tool_calls` or `max_run_time`.
    #[serde(default)]
    pub stopped_by: Option<String>,
    /// The meter refused because the agent is paused or out of credits (a 402 refusal other than
    /// `cap_headroom`, which refuses one call too large for what is left of the monthly cap).
    #[serde(default)]
    pub paused: bool,
    /// The meter's refusal code (`agent_paused`, `cap_headroom`, `insufficient_credits`,
    /// `no_run`, `run_exhausted`, `rate_limited`, …) when the reply is its refusal.
    #[serde(default)]
    pub error_code: Option<String>,
    /// When a paused agent resumes (Unix ms), if the meter said.
    #[serde(default)]
    pub paused_until: Option<i64>,
}

/// One event of `POST /messages` as an event stream (`Accept: text/event-stream`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// A piece of the model's answer, as it arrived.
    Delta { text: String },
    /// The turn ended with this reply (the whole of it, as `POST /messages` answers).
    Done { out: MessageOut },
    /// The turn failed: the status `POST /messages` would have answered, and why.
    Error { status: u16, error: String },
}

impl StreamEvent {
    /// The event's name in the stream.
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::Delta { .. } => "delta",
            StreamEvent::Done { .. } => "done",
            StreamEvent::Error { .. } => "error",
        }
    }
}

/// Error body of the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentError {
    /// What went wrong, in a sentence.
    pub error: String,
}

/// Largest request body the agent accepts.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
