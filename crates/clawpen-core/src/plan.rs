//! Plans: what each sandbox of a tenant on that plan may use.

use serde::{Deserialize, Serialize};

/// Per-sandbox limits of one plan. Every field has a default so a config file may give only some.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Plan {
    /// Memory limit in MiB; memory+swap is set to the same value, so a sandbox never swaps.
    pub memory_mib: u64,
    /// CPU limit in thousandths of a core (500 = half a core).
    pub cpu_millis: u64,
    /// Maximum number of processes and threads in the sandbox.
    pub pids: i64,
    /// Size of the `/tmp` tmpfs in MiB.
    pub tmp_mib: u64,
    /// Most agents a tenant on this plan may have.
    pub max_agents: u32,
}

impl Default for Plan {
    fn default() -> Self {
        Plan { memory_mib: 128, cpu_millis: 500, pids: 64, tmp_mib: 16, max_agents: 5 }
    }
}
