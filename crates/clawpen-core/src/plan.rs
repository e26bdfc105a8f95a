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
    /// Hard monthly spending cap of the tenant, in micro-credits: a call that could pass it is
    /// refused (that call alone); when the settled spending reaches it the tenant's agents pause
    /// until the next month.
    pub monthly_cap: i64,
    /// Soft daily cap, in micro-credits: checked after each call settles; past it the agents
    /// pause until the next day (UTC).
    pub daily_cap: i64,
    /// Credits a new tenant's account starts with, in micro-credits.
    pub initial_credits: i64,
    /// Most output tokens one model request may ask for; larger requests are clamped.
    pub max_tokens: u32,
    /// Most runs (user messages handled by an agent, each opened by the server) per agent per
    /// hour.
    pub runs_per_hour: u32,
    /// Most model calls one run may make (the agent's loop: a call, tools, a call, …); past it
    /// the meter refuses the run's calls with 429.
    pub max_calls_per_run: u32,
    /// Messages a tenant may send to its agents per minute, all doors together (a burst of this
    /// many, refilled evenly over the minute); past it a message is refused with 429.
    pub messages_per_minute: u32,
    /// Seconds without a message or connection after which an agent is frozen (memory kept,
    /// wakes in milliseconds); 0 never.
    pub idle_pause_secs: u64,
    /// Seconds idle after which it is stopped (container kept); 0 never.
    pub idle_stop_secs: u64,
    /// Seconds idle after which its container is removed (workspace kept); 0 never.
    pub idle_remove_secs: u64,
    /// Size of each agent's own filesystem (its workspace and run dir), in MiB: a hard bound;
    /// writing past it fails inside the sandbox with ENOSPC.
    pub disk_mib: u64,
    /// Files and directories each agent's filesystem may hold (rounded up by ext4).
    pub disk_inodes: u64,
    /// Connections one sandbox may hold open to its `control.sock` at once; more wait in the
    /// socket's backlog, costing the server nothing.
    pub control_connections: u32,
    /// Gateway connections (WebSockets) a tenant may hold open at once, all agents together.
    pub gateway_connections: u32,
    /// The integration tools (see docs/INTEGRATIONS.md) a tenant on this plan may enable;
    /// `None`: all of them.
    pub tools: Option<Vec<String>>,
    /// The sandbox image this plan's agents run instead of the server's own, e.g. a canary build
    /// on a test plan; `None` uses the server's image.
    pub image: Option<String>,
    /// Seconds between backups of each agent's workspace to storage (only when it changed; an
    /// agent that goes idle is also backed up then); 0 never.
    pub backup_every_secs: u64,
    /// Snapshots kept per agent (the newest ones; at least one).
    pub backup_keep: u32,
    /// Days (fractions allowed) without activity after which the tenant is warned: an audit
    /// line and a message to its people on Telegram; 0 never. Activity is a message to or a
    /// connection with any of its agents, or the tenant's creation.
    pub inactive_warn_days: f64,
    /// Days after the warning, still without activity, after which its agents' data is
    /// archived to storage and removed from the nodes (an agent's next start restores it);
    /// 0 never.
    pub inactive_grace_days: f64,
    /// Days without activity after which the tenant is deleted with everything of it, as a
    /// purge does; 0 never. Where warnings are set, only a tenant warned at least
    /// `inactive_grace_days` before is deleted.
    pub inactive_delete_days: f64,
    /// The wall around each sandbox: `runc` (namespaces, cgroups and seccomp over the host's
    /// kernel) or `runsc` (gVisor: a user-space kernel between the agent and the host's, at a
    /// cost in start time and memory). See docs/SECURITY.md.
    pub runtime: SandboxRuntime,
    /// Warm sandboxes kept ready for this plan's new agents (shared with the plans whose
    /// sandboxes are the same: limits, image and runtime); `None`: `fleet.warm_pool` for the
    /// default plan, none for the others. A runsc plan sets it to start its agents warm too.
    pub warm_pool: Option<u32>,
    /// Most schedules (runs the agent starts on its own, at set times) a tenant on this plan
    /// may have, all agents together; 0 none.
    pub schedules: u32,
    /// The shortest time between two runs of one schedule, in seconds: an interval below it,
    /// or a cron expression that ever falls due sooner after its last run, is refused.
    pub schedule_min_interval_secs: u64,
    /// The models (names in `[meter.models]`) this plan's agents may call; `None`: all of them.
    /// A call to another is refused with 403 `model_not_in_plan`, naming the plan's models.
    pub models: Option<Vec<String>>,
    /// What a call on the tenant's own provider key (bring your own key) is charged, in
    /// micro-credits, instead of the provider's price; may be 0.
    pub byok_fee_per_call: i64,
}

/// The OCI runtime a plan's sandboxes run under, registered under this name with the Docker
/// daemon (see `clawpen doctor`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxRuntime {
    /// The engine's default: the host's kernel behind namespaces, cgroups and seccomp.
    #[default]
    Runc,
    /// gVisor: the sandbox's system calls are served by a user-space kernel.
    Runsc,
}

impl SandboxRuntime {
    pub const ALL: [SandboxRuntime; 2] = [SandboxRuntime::Runc, SandboxRuntime::Runsc];

    /// The name the Docker daemon knows the runtime by.
    pub fn name(self) -> &'static str {
        match self {
            SandboxRuntime::Runc => "runc",
            SandboxRuntime::Runsc => "runsc",
        }
    }

    pub fn is_runc(&self) -> bool {
        *self == SandboxRuntime::Runc
    }
}

impl std::fmt::Display for SandboxRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One credit in micro-credits.
pub const CREDIT: i64 = 1_000_000;

impl Default for Plan {
    fn default() -> Self {
        Plan {
            memory_mib: 128,
            cpu_millis: 500,
            pids: 64,
            tmp_mib: 16,
            max_agents: 5,
            monthly_cap: CREDIT / 5,
            daily_cap: CREDIT / 20,
            initial_credits: CREDIT / 5,
            max_tokens: 1024,
            runs_per_hour: 30,
            max_calls_per_run: 24,
            messages_per_minute: 20,
            idle_pause_secs: 300,
            idle_stop_secs: 3600,
            idle_remove_secs: 7 * 24 * 3600,
            disk_mib: 256,
            disk_inodes: 16_384,
            control_connections: 32,
            gateway_connections: 16,
            tools: None,
            image: None,
            backup_every_secs: 6 * 3600,
            backup_keep: 7,
            inactive_warn_days: 0.0,
            inactive_grace_days: 0.0,
            inactive_delete_days: 0.0,
            runtime: SandboxRuntime::Runc,
            warm_pool: None,
            schedules: 5,
            schedule_min_interval_secs: 900,
            models: None,
            byok_fee_per_call: 0,
        }
    }
}

/// Memory a runsc sandbox's cgroup gets beyond its plan's `memory_mib`: gVisor's kernel, its
/// memory file's overhead and its gofer all live in the cgroup (an idle agent's sandbox measured
/// 14 MiB of PSS under runsc against 1.7 MiB under runc, `clawpen bench density`), so the agent
/// keeps what its plan gives it and admission counts what the host really commits.
pub const RUNSC_KERNEL_MIB: u64 = 16;

impl Plan {
    /// The memory limit of one sandbox of this plan, in MiB, which is also what admission
    /// commits of a node for it: `memory_mib`, plus [`RUNSC_KERNEL_MIB`] under runsc.
    pub fn sandbox_mib(&self) -> u64 {
        match self.runtime {
            SandboxRuntime::Runc => self.memory_mib,
            SandboxRuntime::Runsc => self.memory_mib + RUNSC_KERNEL_MIB,
        }
    }

    /// The hibernation tiers of this plan, in milliseconds.
    pub fn tiers(&self) -> crate::lifecycle::Tiers {
        let ms = |s: u64| (s > 0).then(|| (s as i64).saturating_mul(1000));
        crate::lifecycle::Tiers {
            pause_after: ms(self.idle_pause_secs),
            stop_after: ms(self.idle_stop_secs),
            remove_after: ms(self.idle_remove_secs),
        }
    }
}
