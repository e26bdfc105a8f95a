#![doc = include_str!("../README.md")]
//!
//! # Layout
//! - [`Runtime`]: what the control plane needs from a container runtime.
//! - [`docker`]: the Docker Engine implementation.
//! - [`image`]: building the sandbox image and checking it is current.

pub mod docker;
pub mod image;
pub mod nodes;
pub mod tiers;

use std::collections::HashMap;

use async_trait::async_trait;
use clawpen_core::spec::SandboxSpec;
use futures_util::stream::BoxStream;

pub use docker::DockerRuntime;

/// What a runtime call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the container runtime is unreachable: {0}; is Docker running and is its socket readable?")]
    Unreachable(String),
    #[error("no such sandbox")]
    NotFound,
    #[error("the sandbox image {0} is missing; run `clawpen image build`")]
    ImageMissing(String),
    #[error("container runtime error: {0}")]
    Engine(String),
    #[error("{0}")]
    Image(String),
}

impl From<bollard::errors::Error> for RuntimeError {
    fn from(e: bollard::errors::Error) -> Self {
        use bollard::errors::Error as E;
        match e {
            E::DockerResponseServerError { status_code: 404, .. } => RuntimeError::NotFound,
            E::DockerResponseServerError { status_code, message } => {
                RuntimeError::Engine(format!("{status_code}: {message}"))
            }
            E::IOError { err } => RuntimeError::Unreachable(err.to_string()),
            E::HyperResponseError { err } => RuntimeError::Unreachable(err.to_string()),
            E::HyperLegacyError { err } => RuntimeError::Unreachable(err.to_string()),
            other => RuntimeError::Engine(other.to_string()),
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// The runtime's view of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxStatus {
    pub id: String,
    /// The node holding the sandbox (set by [`nodes::Nodes`]; empty from a single engine).
    pub node: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    pub state: SandboxState,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    Created,
    Running,
    Paused,
    Exited,
    Other,
}

/// Something the runtime reports about a sandbox as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEvent {
    pub container_id: String,
    pub labels: HashMap<String, String>,
    pub kind: RuntimeEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEventKind {
    Started,
    /// The kernel killed a process in the sandbox for memory.
    Oom,
    Died { exit_code: Option<i64> },
}

/// Facts about the engine, for `doctor` and `/readyz`.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub version: String,
    pub api_version: String,
}

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    async fn info(&self) -> Result<EngineInfo>;
    /// The OCI runtimes the engine has registered: name → the arguments it runs them with.
    async fn runtimes(&self) -> Result<std::collections::BTreeMap<String, Vec<String>>>;
    /// Creates the sandbox described by `spec` and starts it; returns its id.
    async fn create_and_start(&self, spec: &SandboxSpec) -> Result<String>;
    async fn start(&self, id: &str) -> Result<()>;
    /// Freezes every process of a running sandbox (cgroup freezer); memory is kept.
    async fn pause(&self, id: &str) -> Result<()>;
    /// Thaws a paused sandbox. Unpausing one that is not paused is not an error.
    async fn unpause(&self, id: &str) -> Result<()>;
    /// Stops a sandbox: SIGTERM, then SIGKILL after `grace_secs`.
    async fn stop(&self, id: &str, grace_secs: i64) -> Result<()>;
    /// Removes a sandbox whatever its state. Removing a missing one is not an error.
    async fn remove(&self, id_or_name: &str) -> Result<()>;
    async fn inspect(&self, id_or_name: &str) -> Result<SandboxStatus>;
    /// Gives a sandbox another name (a claimed warm-pool sandbox takes its agent's); labels,
    /// mounts and the running processes are untouched.
    async fn rename(&self, id: &str, name: &str) -> Result<()>;
    /// Every sandbox (running or not) carrying `label=value`.
    async fn list(&self, label: &str, value: &str) -> Result<Vec<SandboxStatus>>;
    /// The last `tail` lines the sandbox wrote to stdout and stderr.
    async fn logs(&self, id: &str, tail: usize) -> Result<Vec<String>>;
    /// Events of the sandboxes carrying `label=value`, from now on.
    fn events(&self, label: &str, value: &str) -> BoxStream<'static, Result<RuntimeEvent>>;
    /// The Docker Engine behind this runtime, for what only Docker does (building images).
    fn as_docker(&self) -> Option<&DockerRuntime> {
        None
    }
}

/// Longest log line passed on from a sandbox, in characters; the rest is cut.
pub const MAX_LOG_LINE: usize = 2048;

/// One line a sandbox wrote, as the server passes it on: marked with where it came from
/// (`sandbox stdout| …`), so that it cannot pass for the server's own, and with every control
/// character (terminal escapes, carriage returns, bidirectional overrides) shown as an escape
/// instead of acting on whoever reads it.
pub fn sandbox_line(stream: &str, line: &str) -> String {
    let mut out = format!("sandbox {stream}| ");
    for (i, c) in line.chars().enumerate() {
        if i == MAX_LOG_LINE {
            out.push('…');
            break;
        }
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
        if (c.is_control() && c != '\t') || bidi {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn sandbox_lines_are_marked_and_defused() {
        let l = super::sandbox_line("stdout", "\u{1b}[2J\u{1b}[31mINFO clawpen_server: all fine\r\u{202e}evil");
        assert!(l.starts_with("sandbox stdout| "), "{l}");
        assert!(!l.chars().any(|c| c.is_control()), "{l:?}");
        assert!(l.contains("\\u{1b}[2J") && l.contains("\\u{d}") && l.contains("\\u{202e}"), "{l}");
        let long = super::sandbox_line("stderr", &"x".repeat(10_000));
        assert_eq!(long.chars().count(), "sandbox stderr| ".len() + super::MAX_LOG_LINE + 1);
    }
}
