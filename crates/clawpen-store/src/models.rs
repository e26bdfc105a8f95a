//! Rows as Rust types.

use std::fmt;
use std::str::FromStr;

use clawpen_core::ids::{AgentId, KeyId, MemberId, TenantId};
use clawpen_core::lifecycle::Tier;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub plan: String,
    /// The tenant's own uid and gid inside its sandboxes; never reused.
    pub uid: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub id: MemberId,
    pub tenant_id: TenantId,
    /// `web` or `telegram`.
    pub kind: String,
    pub external_id: String,
    pub display_name: String,
    pub created_at: i64,
}

/// An API key as stored: never the token itself.
#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    pub id: KeyId,
    pub tenant_id: TenantId,
    /// The first characters of the token, to tell keys apart.
    pub prefix: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

macro_rules! string_enum {
    ($name:ident { $($variant:ident => $s:literal),* $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),* }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $s),* }
            }
        }

        impl FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($s => Ok(Self::$variant),)* _ => Err(()) }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(DesiredState {
    Running => "running",
    Stopped => "stopped",
    Deleted => "deleted",
});

string_enum!(ObservedState {
    Absent => "absent",
    Starting => "starting",
    Running => "running",
    Stopped => "stopped",
    Exited => "exited",
    Failed => "failed",
    Paused => "paused",
    Crashloop => "crashloop",
    Lost => "lost",
});

#[derive(Debug, Clone, Serialize)]
pub struct Agent {
    pub id: AgentId,
    pub tenant_id: TenantId,
    pub name: String,
    /// What the owner asked for.
    pub desired_state: DesiredState,
    /// What the runtime last showed.
    pub observed_state: ObservedState,
    pub container_id: Option<String>,
    pub spec_hash: Option<String>,
    pub exit_code: Option<i64>,
    pub oom_count: i64,
    pub last_oom_at: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// How deep the fleet put the agent to sleep while it should run.
    pub hibernation: Tier,
    /// Last message or connection, milliseconds since the epoch.
    pub last_active_at: Option<i64>,
    /// Restarts inside the crash-loop guard's window.
    pub restarts: Vec<i64>,
    /// The node the sandbox is placed on; `None` until placed.
    pub node: Option<String>,
    /// The agent's own uid, set when it claimed a warm-pool sandbox; `None`: its tenant's uid.
    pub uid: Option<i64>,
}

/// What the runtime showed for an agent, written by [`crate::Store::set_observed`].
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub state: ObservedState,
    pub container_id: Option<String>,
    pub spec_hash: Option<String>,
    pub exit_code: Option<i64>,
    pub last_error: Option<String>,
}

#[allow(clippy::derivable_impls)] // the enum comes from a macro that takes no attributes
impl Default for ObservedState {
    fn default() -> Self {
        ObservedState::Absent
    }
}

/// One line of the audit log as read back.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub tenant_id: Option<String>,
    pub agent_id: Option<String>,
    /// Who asked: `admin`, `tenant:<key id>`, or `system` for the reconciler.
    pub actor: String,
    pub action: String,
    /// Why it happened, in words.
    pub reason: String,
    pub detail: Option<serde_json::Value>,
}

/// A line to append to the audit log.
#[derive(Debug, Clone, Copy)]
pub struct NewAudit<'a> {
    pub tenant: Option<&'a TenantId>,
    pub agent: Option<&'a AgentId>,
    pub actor: &'a str,
    pub action: &'a str,
    pub reason: &'a str,
    pub detail: Option<&'a serde_json::Value>,
}
