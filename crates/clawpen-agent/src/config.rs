//! [`AgentConfig`]: who the agent is, where its dirs are, and the guardrails of each run, read
//! from the environment the sandbox spec sets.

use std::path::PathBuf;
use std::time::Duration;

/// Model name sent when `CLAWPEN_MODEL` is unset; the meter maps it to its default model.
pub const DEFAULT_MODEL: &str = "default";
/// Tool calls one run may make when `CLAWPEN_MAX_TOOL_CALLS` is unset.
pub const DEFAULT_MAX_TOOL_CALLS: u32 = 8;
/// Seconds one run may take when `CLAWPEN_MAX_RUN_SECS` is unset.
pub const DEFAULT_MAX_RUN_SECS: u64 = 90;
/// `max_tokens` of each model request when `CLAWPEN_MAX_TOKENS` is unset.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// Where the agent lives and how far one run may go.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The agent's id (`CLAWPEN_AGENT_ID`), echoed in every answer.
    pub agent_id: String,
    /// The owning tenant's id (`CLAWPEN_TENANT_ID`), echoed in every answer.
    pub tenant_id: String,
    /// The workspace (`/data` in the sandbox).
    pub workspace: PathBuf,
    /// The run dir holding `agent.sock` and the meter's `control.sock` (`/run/clawpen` in the sandbox).
    pub run_dir: PathBuf,
    /// Model name sent to the meter (`CLAWPEN_MODEL`).
    pub model: String,
    /// `max_tokens` of each model request (`CLAWPEN_MAX_TOKENS`); the meter clamps it to the plan.
    pub max_tokens: u32,
    /// Tool calls one run may make before it is stopped (`CLAWPEN_MAX_TOOL_CALLS`).
    pub max_tool_calls: u32,
    /// Wall time one run may take before it is stopped (`CLAWPEN_MAX_RUN_SECS`).
    pub max_run: Duration,
    /// How often the gateway sends `tick` to a connected client.
    pub gateway_tick: Duration,
}

impl AgentConfig {
    /// A config with the default model and guardrails; what `from_env` gives when only the four
    /// required variables are set.
    pub fn new(agent_id: impl Into<String>, tenant_id: impl Into<String>, workspace: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> AgentConfig {
        AgentConfig {
            agent_id: agent_id.into(),
            tenant_id: tenant_id.into(),
            workspace: workspace.into(),
            run_dir: run_dir.into(),
            model: DEFAULT_MODEL.to_owned(),
            max_tokens: DEFAULT_MAX_TOKENS,
            max_tool_calls: DEFAULT_MAX_TOOL_CALLS,
            max_run: Duration::from_secs(DEFAULT_MAX_RUN_SECS),
            gateway_tick: Duration::from_secs(15),
        }
    }

    /// Reads `CLAWPEN_AGENT_ID`, `CLAWPEN_TENANT_ID`, `CLAWPEN_WORKSPACE`, `CLAWPEN_RUN_DIR`
    /// (required) and `CLAWPEN_MODEL`, `CLAWPEN_MAX_TOKENS`, `CLAWPEN_MAX_TOOL_CALLS`,
    /// `CLAWPEN_MAX_RUN_SECS` (optional). A warm-pool sandbox (`CLAWPEN_POOL=1`) has no ids in
    /// its environment: it takes them from the identity file in its run dir once claimed (also
    /// when its process restarts after the claim), and until then runs in pool mode, with empty
    /// ids ([`AgentConfig::is_claimed`] false).
    pub fn from_env() -> Result<AgentConfig, String> {
        let get = |k: &str| std::env::var(k).ok();
        if get("CLAWPEN_AGENT_ID").is_none() && get(clawpen_core::spec::POOL_ENV).as_deref() == Some("1") {
            let run_dir = get("CLAWPEN_RUN_DIR").unwrap_or_default();
            let identity = read_identity(std::path::Path::new(&run_dir)).map_err(|e| format!("the identity file is unreadable: {e}"))?;
            let (agent, tenant) = identity.map(|i| (i.agent_id, i.tenant_id)).unwrap_or_default();
            return Self::from_lookup(|k| match k {
                "CLAWPEN_AGENT_ID" => Some(agent.clone()),
                "CLAWPEN_TENANT_ID" => Some(tenant.clone()),
                _ => get(k),
            });
        }
        Self::from_lookup(get)
    }

    /// False for a warm-pool sandbox that has not been claimed yet.
    pub fn is_claimed(&self) -> bool {
        !self.agent_id.is_empty()
    }

    /// [`from_env`](Self::from_env) over any lookup, so parsing is testable without touching the
    /// process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<AgentConfig, String> {
        let var = |k: &str| get(k).ok_or_else(|| format!("{k} is not set; `clawpen agent` runs inside a sandbox made by the server"));
        let mut c = AgentConfig::new(var("CLAWPEN_AGENT_ID")?, var("CLAWPEN_TENANT_ID")?, var("CLAWPEN_WORKSPACE")?, var("CLAWPEN_RUN_DIR")?);
        if let Some(m) = get("CLAWPEN_MODEL").filter(|m| !m.trim().is_empty()) {
            c.model = m;
        }
        c.max_tokens = positive(&get, "CLAWPEN_MAX_TOKENS", c.max_tokens)?;
        c.max_tool_calls = number(&get, "CLAWPEN_MAX_TOOL_CALLS", c.max_tool_calls)?;
        c.max_run = Duration::from_secs(positive(&get, "CLAWPEN_MAX_RUN_SECS", c.max_run.as_secs())?);
        Ok(c)
    }

    /// The meter's socket for this agent.
    pub fn control_socket(&self) -> PathBuf {
        self.run_dir.join(clawpen_core::spec::CONTROL_SOCKET)
    }
}

/// The identity a claimed warm-pool sandbox takes: the file [`clawpen_core::spec::IDENTITY_FILE`]
/// in its run dir, written by the server (root-owned, read-only to the agent).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub agent_id: String,
    pub tenant_id: String,
}

/// Reads the identity file of `run_dir`; `None` when there is none (an unclaimed sandbox).
pub fn read_identity(run_dir: &std::path::Path) -> Result<Option<Identity>, String> {
    match std::fs::read(run_dir.join(clawpen_core::spec::IDENTITY_FILE)) {
        Ok(bytes) => {
            let id: Identity = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            clawpen_core::ids::AgentId::parse(&id.agent_id).map_err(|e| format!("agent_id: {e}"))?;
            clawpen_core::ids::TenantId::parse(&id.tenant_id).map_err(|e| format!("tenant_id: {e}"))?;
            Ok(Some(id))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// An optional non-negative number; a set but unreadable value is an error rather than a silent
/// default, so a typo in the spec does not lift a guardrail.
fn number<T: std::str::FromStr + Copy>(get: &impl Fn(&str) -> Option<String>, key: &str, default: T) -> Result<T, String> {
    match get(key) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| format!("{key}={v:?} is not a whole number")),
    }
}

/// Like [`number`], but 0 is refused: a run with no time or no tokens could never answer.
fn positive<T: std::str::FromStr + Copy + PartialEq + Default>(get: &impl Fn(&str) -> Option<String>, key: &str, default: T) -> Result<T, String> {
    let n = number(get, key, default)?;
    if n == T::default() {
        return Err(format!("{key} must be at least 1"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: std::collections::HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    const BASE: [(&str, &str); 4] =
        [("CLAWPEN_AGENT_ID", "a"), ("CLAWPEN_TENANT_ID", "t"), ("CLAWPEN_WORKSPACE", "/data"), ("CLAWPEN_RUN_DIR", "/run/clawpen")];

    #[test]
    fn four_variables_give_the_defaults() {
        let c = AgentConfig::from_lookup(env(&BASE)).expect("config");
        assert_eq!((c.model.as_str(), c.max_tokens, c.max_tool_calls, c.max_run), ("default", 1024, 8, Duration::from_secs(90)));
        assert_eq!(c.control_socket(), PathBuf::from("/run/clawpen/control.sock"));
    }

    #[test]
    fn limits_are_read_and_checked() {
        let mut v = BASE.to_vec();
        v.extend([("CLAWPEN_MODEL", "gpt-x"), ("CLAWPEN_MAX_TOKENS", "200"), ("CLAWPEN_MAX_TOOL_CALLS", "0"), ("CLAWPEN_MAX_RUN_SECS", "5")]);
        let c = AgentConfig::from_lookup(env(&v)).expect("config");
        assert_eq!((c.model.as_str(), c.max_tokens, c.max_tool_calls, c.max_run), ("gpt-x", 200, 0, Duration::from_secs(5)));
        let mut bad = BASE.to_vec();
        bad.push(("CLAWPEN_MAX_RUN_SECS", "0"));
        assert!(AgentConfig::from_lookup(env(&bad)).is_err());
        let mut bad = BASE.to_vec();
        bad.push(("CLAWPEN_MAX_TOKENS", "lots"));
        assert!(AgentConfig::from_lookup(env(&bad)).unwrap_err().contains("CLAWPEN_MAX_TOKENS"));
        assert!(AgentConfig::from_lookup(env(&BASE[..3])).unwrap_err().contains("CLAWPEN_RUN_DIR"));
    }
}
