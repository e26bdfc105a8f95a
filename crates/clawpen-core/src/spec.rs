//! The sandbox spec: every flag a tenant's sandbox runs with is decided here, in
//! [`SandboxSpec::for_agent`] (and [`SandboxSpec::for_pool`] for a warm-pool sandbox that has no
//! agent yet, with the very same hardening), and a runtime only translates it (Docker today,
//! Kubernetes later).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{AgentId, TenantId};
use crate::labels;
use crate::plan::{Plan, SandboxRuntime};

/// Where the agent's workspace is mounted inside the sandbox.
pub const WORKSPACE_MOUNT: &str = "/data";
/// Where the agent's run dir (its `agent.sock`, the server's `control.sock`) is mounted.
pub const RUN_MOUNT: &str = "/run/clawpen";
/// The agent's socket file name inside the run dir.
pub const AGENT_SOCKET: &str = "agent.sock";
/// The server's socket for this agent's model and tool calls, inside the run dir.
pub const CONTROL_SOCKET: &str = "control.sock";
/// The executable's path inside the image.
pub const IMAGE_EXECUTABLE: &str = "/clawpen";

/// A bind mount from the node into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub host: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// The sandbox's own filesystem, which holds its workspace and run dir: made by the server
/// (an image of this size and inode count, loop-mounted on the host) before the sandbox starts.
/// Part of the spec so that a plan's new bound re-creates its sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub size_mib: u64,
    pub inodes: u64,
}

impl Volume {
    pub fn of(plan: &Plan) -> Volume {
        Volume { size_mib: plan.disk_mib, inodes: plan.disk_inodes }
    }
}

/// Network attachment. Only `None` exists: a sandbox reaches the server through Unix sockets
/// in its run dir and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    None,
}

/// Everything needed to run one agent's sandbox. Plain data: tested without Docker, hashed to
/// detect drift (`clawpen.spec-hash`), and translated to Docker by the runtime crate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Container name; unique per installation and agent.
    pub name: String,
    /// The node (Docker Engine) to run on; empty: the first. Where the sandbox runs is not part
    /// of what it is, so it is left out of the spec hash.
    #[serde(skip)]
    pub node: String,
    /// Image reference (the tag of the locally built sandbox image).
    pub image: String,
    /// Entrypoint arguments after the executable.
    pub args: Vec<String>,
    /// Non-secret environment only: ids and the mount paths. Never a key or token.
    pub env: BTreeMap<String, String>,
    pub hostname: String,
    /// The tenant's own uid and gid (distinct per tenant, never 0).
    pub uid: u32,
    pub gid: u32,
    pub mounts: Vec<Mount>,
    /// The filesystem `/data` and `/run/clawpen` live on.
    pub volume: Volume,
    /// tmpfs mounts: target → options.
    pub tmpfs: BTreeMap<String, String>,
    pub read_only_root: bool,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    pub network: Network,
    /// Run an init as pid 1 that reaps zombies.
    pub init: bool,
    pub memory_bytes: i64,
    /// Equal to `memory_bytes`: no swap.
    pub memory_swap_bytes: i64,
    pub nano_cpus: i64,
    /// The host's bound on the sandbox's tasks (its cgroup's `pids.max`). Under runc these are
    /// the agent's own processes and threads, so it is the plan's `pids`; under runsc they are
    /// the user-space kernel's (see [`RUNSC_HOST_TASKS_PER_PID`]), and `nproc` bounds the
    /// agent's.
    pub pids_limit: i64,
    /// The OCI runtime. Part of the hash, so a plan's new runtime re-creates its sandboxes; left
    /// out when it is runc, so runc sandboxes keep the hash they had before runtimes existed.
    #[serde(default, skip_serializing_if = "SandboxRuntime::is_runc")]
    pub runtime: SandboxRuntime,
    /// `RLIMIT_NPROC`, soft and hard: the processes and threads the agent may have. Set under
    /// runsc, whose kernel counts them per sandbox; under runc the count would be per uid over
    /// the whole host (every agent of the tenant together), so the cgroup bound does it there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nproc: Option<i64>,
    pub labels: BTreeMap<String, String>,
}

/// Host tasks a runsc sandbox needs per task of its agent: gVisor's ptrace platform gives each
/// address space a stub process and each task a traced thread, beside the user-space kernel's
/// own threads. Measured: 62 forked children held about 377 host tasks (see docs/SECURITY.md).
pub const RUNSC_HOST_TASKS_PER_PID: i64 = 8;
/// Host tasks of an idle runsc sandbox (its kernel's threads, the gofer), before the agent's.
pub const RUNSC_HOST_TASKS_BASE: i64 = 128;

/// The inputs that decide a sandbox: who it is for, what it runs, and where its dirs are.
#[derive(Debug, Clone)]
pub struct AgentSandbox<'a> {
    pub instance: &'a str,
    pub tenant: &'a TenantId,
    pub agent: &'a AgentId,
    pub uid: u32,
    pub image: &'a str,
    pub workspace_dir: PathBuf,
    pub run_dir: PathBuf,
    pub plan: &'a Plan,
    /// Guardrails of the agent's loop, passed as environment.
    pub limits: AgentLimits,
    /// A host copy of the image's own executable, bound read-only over it: one file for every
    /// sandbox, so its pages are shared in the host's page cache even when the storage driver
    /// (fuse-overlayfs) gives each container a page cache of its own.
    pub executable: Option<PathBuf>,
}

/// Guardrails of one agent run (one user message), enforced by the agent itself; the meter
/// enforces the money side independently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLimits {
    pub max_tool_calls: u32,
    pub max_run_secs: u64,
}

impl Default for AgentLimits {
    fn default() -> Self {
        AgentLimits { max_tool_calls: 8, max_run_secs: 90 }
    }
}

/// The inputs of a warm-pool sandbox: made before any agent exists, so it has no identity, only
/// its own fresh uid and its own empty dirs. A claim later moves the dirs into an agent's places.
#[derive(Debug, Clone)]
pub struct PoolSandbox<'a> {
    pub instance: &'a str,
    /// The slot's number: unique in the installation, never reused.
    pub slot: u64,
    pub uid: u32,
    pub image: &'a str,
    pub workspace_dir: PathBuf,
    pub run_dir: PathBuf,
    /// The plan whose limits the sandbox gets; only an agent whose plan gives the same spec
    /// may claim it.
    pub plan: &'a Plan,
    pub limits: AgentLimits,
    pub executable: Option<PathBuf>,
}

/// Environment variable that starts the in-sandbox agent without an identity (pool mode).
pub const POOL_ENV: &str = "CLAWPEN_POOL";
/// The file in the run dir that gives a claimed pool sandbox its identity (root-owned, 0444).
pub const IDENTITY_FILE: &str = "identity.json";
/// `clawpen.role` of a warm-pool sandbox (claimed or not).
pub const ROLE_POOL: &str = "pool";
/// `clawpen.role` of a sandbox made for an agent.
pub const ROLE_AGENT: &str = "agent";

/// What differs between an agent's sandbox and a pool sandbox; everything else is the shared
/// hardening in [`SandboxSpec::hardened`].
struct Identity {
    name: String,
    hostname: String,
    env: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
}

impl SandboxSpec {
    /// The sandbox of one agent. Hardening is not optional and not configurable; only the
    /// limits come from the plan.
    pub fn for_agent(a: AgentSandbox<'_>) -> SandboxSpec {
        let mut env = base_env(a.plan, a.limits);
        env.insert("CLAWPEN_AGENT_ID".to_owned(), a.agent.to_string());
        env.insert("CLAWPEN_TENANT_ID".to_owned(), a.tenant.to_string());
        let labels = BTreeMap::from([
            (labels::INSTANCE.to_owned(), a.instance.to_owned()),
            (labels::TENANT.to_owned(), a.tenant.to_string()),
            (labels::AGENT.to_owned(), a.agent.to_string()),
            (labels::ROLE.to_owned(), ROLE_AGENT.to_owned()),
        ]);
        let id = Identity { name: container_name(a.instance, a.agent), hostname: a.agent.to_string().replace('_', "-"), env, labels };
        SandboxSpec::hardened(id, a.uid, a.image, a.workspace_dir, a.run_dir, a.plan, a.executable)
    }

    /// A warm-pool sandbox: the same hardening, image and limits as an agent's, but no agent or
    /// tenant id (its agent starts in pool mode and takes an identity when claimed).
    pub fn for_pool(p: PoolSandbox<'_>) -> SandboxSpec {
        let mut env = base_env(p.plan, p.limits);
        env.insert(POOL_ENV.to_owned(), "1".to_owned());
        let labels = BTreeMap::from([
            (labels::INSTANCE.to_owned(), p.instance.to_owned()),
            (labels::ROLE.to_owned(), ROLE_POOL.to_owned()),
        ]);
        let id = Identity { name: pool_container_name(p.instance, p.slot), hostname: format!("pool-{}", p.slot), env, labels };
        SandboxSpec::hardened(id, p.uid, p.image, p.workspace_dir, p.run_dir, p.plan, p.executable)
    }

    fn hardened(id: Identity, uid: u32, image: &str, workspace_dir: PathBuf, run_dir: PathBuf, plan: &Plan, executable: Option<PathBuf>) -> SandboxSpec {
        assert!(uid != 0, "a sandbox never runs as root");
        let memory_bytes = (plan.sandbox_mib() * 1024 * 1024) as i64;
        let mut spec = SandboxSpec {
            name: id.name,
            node: String::new(),
            image: image.to_owned(),
            args: vec!["agent".to_owned()],
            env: id.env,
            hostname: id.hostname,
            uid,
            gid: uid,
            mounts: vec![
                Mount { host: workspace_dir, target: WORKSPACE_MOUNT.to_owned(), read_only: false },
                Mount { host: run_dir, target: RUN_MOUNT.to_owned(), read_only: false },
            ]
            .into_iter()
            .chain(executable.map(|host| Mount { host, target: IMAGE_EXECUTABLE.to_owned(), read_only: true }))
            .collect(),
            volume: Volume::of(plan),
            tmpfs: BTreeMap::from([(
                "/tmp".to_owned(),
                format!("rw,noexec,nosuid,nodev,size={}m,mode=1777", plan.tmp_mib),
            )]),
            read_only_root: true,
            cap_drop: vec!["ALL".to_owned()],
            security_opt: vec!["no-new-privileges".to_owned()],
            network: Network::None,
            init: true,
            memory_bytes,
            memory_swap_bytes: memory_bytes,
            nano_cpus: (plan.cpu_millis as i64) * 1_000_000,
            pids_limit: match plan.runtime {
                SandboxRuntime::Runc => plan.pids,
                SandboxRuntime::Runsc => RUNSC_HOST_TASKS_BASE + plan.pids * RUNSC_HOST_TASKS_PER_PID,
            },
            runtime: plan.runtime,
            nproc: (plan.runtime == SandboxRuntime::Runsc).then_some(plan.pids),
            labels: id.labels,
        };
        let hash = spec.hash();
        spec.labels.insert(labels::SPEC_HASH.to_owned(), hash);
        spec
    }

    /// A stable hash of everything that decides how the sandbox runs (the spec-hash label itself
    /// excluded). A running container whose label differs is out of date.
    pub fn hash(&self) -> String {
        let mut copy = self.clone();
        copy.labels.remove(labels::SPEC_HASH);
        let bytes = serde_json::to_vec(&copy).expect("spec serializes");
        hex::encode(&Sha256::digest(&bytes)[..8])
    }

    pub fn spec_hash(&self) -> &str {
        self.labels.get(labels::SPEC_HASH).map(String::as_str).unwrap_or("")
    }
}

/// The environment every sandbox gets: paths and the run's guardrails, nothing secret.
fn base_env(plan: &Plan, limits: AgentLimits) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("CLAWPEN_WORKSPACE".to_owned(), WORKSPACE_MOUNT.to_owned()),
        ("CLAWPEN_RUN_DIR".to_owned(), RUN_MOUNT.to_owned()),
        ("CLAWPEN_MAX_TOKENS".to_owned(), plan.max_tokens.to_string()),
        ("CLAWPEN_MAX_TOOL_CALLS".to_owned(), limits.max_tool_calls.to_string()),
        ("CLAWPEN_MAX_RUN_SECS".to_owned(), limits.max_run_secs.to_string()),
    ])
}

/// Container name of a warm-pool sandbox before it is claimed.
pub fn pool_container_name(instance: &str, slot: u64) -> String {
    format!("clawpen-{}-pool-{slot}", &instance[..instance.len().min(8)])
}

/// The slot of a warm-pool sandbox from its container name; `None` for any other name.
pub fn pool_slot(instance: &str, name: &str) -> Option<u64> {
    name.strip_prefix(&format!("clawpen-{}-pool-", &instance[..instance.len().min(8)]))?.parse().ok()
}

/// Container name of an agent's sandbox in one installation.
pub fn container_name(instance: &str, agent: &AgentId) -> String {
    format!("clawpen-{}-{}", &instance[..instance.len().min(8)], agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(uid: u32) -> SandboxSpec {
        let plan = Plan::default();
        SandboxSpec::for_agent(AgentSandbox {
            instance: "inst1234abcd",
            tenant: &TenantId::new(),
            agent: &AgentId::new(),
            uid,
            image: "clawpen-sandbox:abc",
            workspace_dir: "/srv/ws".into(),
            run_dir: "/srv/run".into(),
            plan: &plan,
            limits: AgentLimits::default(),
            executable: None,
        })
    }

    #[test]
    fn hardening_is_always_on() {
        let s = spec(100_001);
        assert!(s.read_only_root && s.init);
        assert_eq!(s.cap_drop, ["ALL"]);
        assert_eq!(s.security_opt, ["no-new-privileges"]);
        assert_eq!(s.network, Network::None);
        assert_eq!(s.memory_bytes, s.memory_swap_bytes);
        assert_eq!((s.uid, s.gid), (100_001, 100_001));
        assert!(s.tmpfs["/tmp"].contains("noexec,nosuid,nodev"));
        assert_eq!(s.mounts.len(), 2);
        for key in [labels::INSTANCE, labels::TENANT, labels::AGENT, labels::SPEC_HASH] {
            assert!(s.labels.contains_key(key), "{key}");
        }
        // Only ids, paths and limits: nothing that could be a secret.
        let allowed = ["CLAWPEN_AGENT_ID", "CLAWPEN_TENANT_ID", "CLAWPEN_WORKSPACE", "CLAWPEN_RUN_DIR", "CLAWPEN_MAX_TOKENS", "CLAWPEN_MAX_TOOL_CALLS", "CLAWPEN_MAX_RUN_SECS"];
        assert!(s.env.keys().all(|k| allowed.contains(&k.as_str())), "{:?}", s.env.keys());
    }

    #[test]
    fn hash_tracks_the_spec() {
        let s = spec(100_001);
        assert_eq!(s.spec_hash(), s.hash());
        let mut t = s.clone();
        t.pids_limit += 1;
        assert_ne!(t.hash(), s.hash());
    }

    fn pool(uid: u32, plan: &Plan) -> SandboxSpec {
        SandboxSpec::for_pool(PoolSandbox {
            instance: "inst1234abcd",
            slot: 7,
            uid,
            image: "clawpen-sandbox:abc",
            workspace_dir: "/srv/pool/7/workspace".into(),
            run_dir: "/srv/pool/7/run".into(),
            plan,
            limits: AgentLimits::default(),
            executable: None,
        })
    }

    #[test]
    fn pool_sandboxes_get_the_same_hardening_and_no_identity() {
        let (a, p) = (spec(100_001), pool(100_002, &Plan::default()));
        let same = |s: &SandboxSpec| (s.read_only_root, s.init, s.cap_drop.clone(), s.security_opt.clone(), s.network, s.memory_bytes, s.memory_swap_bytes, s.nano_cpus, s.pids_limit, s.tmpfs.clone(), s.image.clone(), s.args.clone());
        assert_eq!(same(&a), same(&p));
        assert_eq!(p.name, "clawpen-inst1234-pool-7");
        assert_eq!(pool_slot("inst1234abcd", &p.name), Some(7));
        assert_eq!(pool_slot("inst1234abcd", &a.name), None);
        assert_eq!(p.labels[labels::ROLE], ROLE_POOL);
        assert!(!p.labels.contains_key(labels::AGENT) && !p.labels.contains_key(labels::TENANT));
        assert!(!p.env.contains_key("CLAWPEN_AGENT_ID") && !p.env.contains_key("CLAWPEN_TENANT_ID"));
        assert_eq!(p.env[POOL_ENV], "1");
        assert_eq!(p.spec_hash(), p.hash());
        // Another plan's limits give another spec: its agents never claim this sandbox.
        let other = Plan { memory_mib: 256, ..Plan::default() };
        assert_ne!(pool(100_002, &other).spec_hash(), p.spec_hash());
        assert_eq!(pool(100_002, &Plan { max_agents: 99, ..Plan::default() }).spec_hash(), p.spec_hash());
        // So does another disk bound.
        assert_ne!(pool(100_002, &Plan { disk_mib: 512, ..Plan::default() }).spec_hash(), p.spec_hash());
    }

    #[test]
    fn the_runtime_is_part_of_the_spec_and_runc_keeps_its_hash() {
        let runc = spec(100_001);
        // A runc spec serializes exactly as before runtimes were part of it.
        let json = serde_json::to_value(&runc).unwrap();
        assert!(json.get("runtime").is_none() && json.get("nproc").is_none(), "{json}");
        let mut a = runc.clone();
        a.runtime = SandboxRuntime::Runsc;
        assert_ne!(a.hash(), runc.hash(), "another runtime is another sandbox");
        let plan = Plan { runtime: SandboxRuntime::Runsc, ..Plan::default() };
        let p = pool(100_002, &plan);
        assert_eq!(p.runtime, SandboxRuntime::Runsc);
        assert_ne!(p.spec_hash(), pool(100_002, &Plan::default()).spec_hash(), "a runsc plan's agents never claim a runc pool sandbox");
        // Under runsc the agent's own tasks are bounded by its kernel, the host's by the cgroup.
        assert_eq!(p.nproc, Some(plan.pids));
        assert_eq!(p.memory_bytes, ((plan.memory_mib + crate::plan::RUNSC_KERNEL_MIB) << 20) as i64, "gVisor's kernel is in the cgroup, beside the agent's share");
        assert!(p.pids_limit > plan.pids * 4, "{}", p.pids_limit);
        let r = pool(100_002, &Plan::default());
        assert_eq!((r.nproc, r.pids_limit), (None, Plan::default().pids));
    }

    #[test]
    #[should_panic]
    fn never_root() {
        spec(0);
    }
}
