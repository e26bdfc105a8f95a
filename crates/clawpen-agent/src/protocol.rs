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
    pub text: String,
    /// Session the message belongs to; `main` when absent.
    #[serde(default)]
    pub session: Option<String>,
}

/// `POST /messages` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageOut {
    pub reply: String,
    pub agent_id: String,
    pub tenant_id: String,
    pub session: String,
}

/// Error body of the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentError {
    pub error: String,
}

/// Largest request body the agent accepts.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
