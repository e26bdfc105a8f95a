//! `App`: everything a request handler or the reconciler needs, shared behind an `Arc`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use clawpen_core::ids::{AgentId, TenantId};
use clawpen_meter::{Meter, MeterCaller};
use clawpen_runtime::Runtime;
use clawpen_agent::client::AgentAddr;
use clawpen_core::spec::Volume;
use clawpen_hostfs::Peer;
use clawpen_store::{Agent, Store, Tenant};

use crate::error::ApiError;

use crate::config::Config;
use crate::layout::Layout;

#[derive(Clone)]
pub struct App(pub Arc<AppInner>);

/// What holds committed memory on this node: an agent's sandbox, or a warm-pool sandbox (by its
/// slot) until it is claimed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Holder {
    Agent(AgentId),
    Pool(u64),
}

pub struct AppInner {
    pub store: Store,
    pub runtime: Arc<dyn Runtime>,
    pub config: Config,
    /// This server's data dir: the store, keys, tenants' dirs, local storage.
    pub layout: Layout,
    /// Where each node keeps its agents' filesystems, run dirs and warm pool: its own
    /// `data_dir`, or this server's (see [`App::layout_on`]).
    pub node_layouts: HashMap<String, Layout>,
    /// This installation's id, on every container label.
    pub instance: String,
    /// Tag of the sandbox image agents run.
    pub image: String,
    /// The host copy of the image's executable, bound read-only into sandboxes (see
    /// `AgentSandbox::executable`); `None` when the image is not this executable's.
    pub agent_exe: Option<std::path::PathBuf>,
    /// SHA-256 (hex) of the admin token; the token itself is only in its 0600 file.
    pub admin_token_sha256: String,
    /// The meter every model call of every agent goes through.
    pub meter: Arc<Meter>,
    /// Seals and opens tenant secrets (bot tokens, OAuth tokens).
    pub vault: clawpen_vault::Vault,
    /// Signs and verifies connect URLs.
    pub signer: clawpen_vault::connect::Signer,
    /// The integrations: OAuth connections, the tools agents call on `control.sock`, proposals.
    pub broker: Arc<clawpen_broker::Broker>,
    /// Messages per minute per tenant.
    pub message_limits: crate::ratelimit::MessageLimits,
    /// Console sign-in attempts, per account and in all.
    pub login_limits: crate::console::auth::LoginLimits,
    /// The console's usage chart: the settled days of each tenant's month.
    pub spend_days: crate::console::SpendDays,
    /// The lifecycle record of each agent that should run (see [`crate::supervisor`]).
    pub lives: Mutex<HashMap<AgentId, clawpen_core::lifecycle::Life>>,
    /// MiB of plan memory committed, per holder (an agent's sandbox, or a warm-pool sandbox):
    /// (node, MiB).
    pub committed: Mutex<HashMap<Holder, (String, u64)>>,
    /// The Docker Engines sandboxes run on (`runtime` routes to them).
    pub nodes: clawpen_runtime::nodes::Nodes,
    /// Each node's memory budget in MiB.
    pub budgets: HashMap<String, u64>,
    /// What the fleet knows of each node's health.
    pub node_health: Mutex<HashMap<String, crate::nodes::NodeHealth>>,
    /// The warm pool's sandboxes (see [`crate::pool`]); they live on the first node.
    pub pool: crate::pool::Pool,
    /// Counters for `GET /metrics`.
    pub metrics: crate::metrics::Metrics,
    /// The Telegram channel: the shared bot, the tenants' pollers.
    pub telegram: crate::channels::telegram::Telegram,
    /// The serving task of each agent's `control.sock`.
    control: Mutex<HashMap<AgentId, tokio::task::AbortHandle>>,
    /// File descriptors sandboxes may hold, all together (see [`crate::control`]).
    pub sandbox_fds: crate::control::SandboxFds,
    /// Open gateway connections per tenant, against its plan's `gateway_connections`.
    pub gateway_conns: Mutex<HashMap<TenantId, u32>>,
    /// Held while a new agent filesystem is admitted against the disk budget and made, so two
    /// at once cannot pass it together.
    pub(crate) disk_lock: Mutex<()>,
    /// One lock per agent so start, stop and delete of one agent never interleave.
    agent_locks: Mutex<HashMap<AgentId, Arc<tokio::sync::Mutex<()>>>>,
    /// Set once the start-up reconciliation is done; `/readyz` waits for it.
    reconciled: AtomicBool,
    /// Where workspaces are backed up to and restored from.
    pub storage: clawpen_storage::Storage,
    /// When each agent was last backed up (ms), as the store has it; loaded at the first look.
    pub backed_up: Mutex<Option<HashMap<AgentId, i64>>>,
    /// Agents being backed up now: one backup of an agent at a time.
    pub backing_up: Mutex<std::collections::HashSet<AgentId>>,
    /// The inactivity rules' looks (see [`crate::inactive`]).
    pub inactivity: crate::inactive::InactivityState,
}

impl std::ops::Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl App {
    #[allow(clippy::too_many_arguments)] // each is a distinct part, built by `crate::open`
    pub fn new(
        store: Store,
        (nodes, budgets): (clawpen_runtime::nodes::Nodes, HashMap<String, u64>),
        config: Config,
        layout: Layout,
        instance: String,
        image: String,
        admin_token_sha256: String,
        meter: Arc<Meter>,
        vault: clawpen_vault::Vault,
        signer: clawpen_vault::connect::Signer,
        broker: Arc<clawpen_broker::Broker>,
        storage: clawpen_storage::Storage,
    ) -> App {
        let telegram = crate::channels::telegram::Telegram::new(&config.telegram);
        let runtime: Arc<dyn Runtime> = Arc::new(nodes.clone());
        let node_layouts = nodes
            .names()
            .into_iter()
            .map(|n| {
                let own = config.nodes.iter().find(|c| c.name == n).and_then(|c| c.data_dir.clone());
                let l = own.map_or_else(|| layout.clone(), Layout::new);
                (n, l)
            })
            .collect();
        App(Arc::new(AppInner {
            store,
            runtime,
            config,
            layout,
            node_layouts,
            instance,
            image,
            agent_exe: None,
            admin_token_sha256,
            meter,
            vault,
            signer,
            broker,
            message_limits: Default::default(),
            login_limits: Default::default(),
            spend_days: Default::default(),
            lives: Mutex::new(HashMap::new()),
            committed: Mutex::new(HashMap::new()),
            nodes,
            budgets,
            node_health: Mutex::new(HashMap::new()),
            pool: Default::default(),
            metrics: Default::default(),
            telegram,
            control: Mutex::new(HashMap::new()),
            sandbox_fds: crate::control::SandboxFds::from_rlimit(),
            gateway_conns: Mutex::new(HashMap::new()),
            disk_lock: Mutex::new(()),
            agent_locks: Mutex::new(HashMap::new()),
            reconciled: AtomicBool::new(false),
            storage,
            backed_up: Mutex::new(None),
            backing_up: Mutex::new(Default::default()),
            inactivity: Default::default(),
        }))
    }

    /// Binds this host copy of the image's executable into sandboxes.
    pub fn with_agent_exe(mut self, exe: Option<std::path::PathBuf>) -> App {
        Arc::get_mut(&mut self.0).expect("set before the app is shared").agent_exe = exe;
        self
    }

    /// Where `node` keeps agents' filesystems (an agent not placed yet: the first node's).
    pub fn layout_on(&self, node: Option<&str>) -> &Layout {
        node.and_then(|n| self.node_layouts.get(n)).or_else(|| self.node_layouts.get(self.nodes.default_node())).unwrap_or(&self.layout)
    }

    /// Where the agent's filesystem is: on its node.
    pub fn layout_of(&self, agent: &Agent) -> &Layout {
        self.layout_on(agent.node.as_deref())
    }

    /// The warm pool's: the first node's.
    pub fn pool_layout(&self) -> &Layout {
        self.layout_on(None)
    }

    /// Each distinct node data dir once (nodes that share this server's count once).
    pub fn distinct_layouts(&self) -> Vec<&Layout> {
        let mut out: Vec<&Layout> = Vec::new();
        for n in self.nodes.names() {
            let l = self.layout_on(Some(&n));
            if !out.iter().any(|o| o.data_dir == l.data_dir) {
                out.push(l);
            }
        }
        out
    }

    /// True when `a` and `b` keep agents' filesystems in one place (a move between them needs
    /// no restore).
    pub fn nodes_share_disk(&self, a: &str, b: &str) -> bool {
        self.layout_on(Some(a)).data_dir == self.layout_on(Some(b)).data_dir
    }

    /// Takes the agent's lifecycle lock. Locks of deleted agents are dropped when unused.
    pub async fn lock_agent(&self, id: &AgentId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.agent_locks.lock().expect("agent lock map");
            map.retain(|_, l| Arc::strong_count(l) > 1 || l.try_lock().is_err());
            map.entry(id.clone()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Serves the meter on the agent's `control.sock` (owned by the agent's uid, 0600) unless
    /// it is served already. The socket is the caller's identity: the router is bound to this
    /// tenant and agent. It is bound in the agent's staging dir and renamed into its run dir, so
    /// nothing the sandbox put there is followed (see [`Layout::bind_control`]).
    pub fn open_control(&self, tenant: &Tenant, agent: &AgentId, uid: u32, layout: &Layout) -> std::io::Result<()> {
        let mut map = self.control.lock().expect("control map");
        if map.get(agent).is_some_and(|h| !h.is_finished()) {
            return Ok(());
        }
        let std_listener = layout.bind_control(agent, uid)?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        let caller = MeterCaller { tenant: tenant.id.clone(), agent: agent.clone() };
        // The meter's routes and the broker's, both bound to this caller; a tool call is
        // admitted in the run it names first (open, this agent's, within its tool calls).
        let tools = self.broker.router(clawpen_broker::Caller { tenant: tenant.id.clone(), agent: agent.clone() })
            .layer(axum::middleware::from_fn_with_state((self.meter.clone(), caller.clone(), self.config.broker.max_calls_per_run), crate::integrations::admit_tool_call));
        let router = clawpen_meter::router::router(self.meter.clone(), caller).merge(tools);
        let per_sandbox = self.config.plan_or_default(&tenant.plan).control_connections;
        let task = tokio::spawn(crate::control::serve(listener, router, per_sandbox, self.sandbox_fds.clone()));
        map.insert(agent.clone(), task.abort_handle());
        Ok(())
    }

    /// The agent's node: where its filesystem is and its sandbox runs. An agent that has none
    /// is placed now (and the node recorded first), so its filesystem is made where it will run.
    pub(crate) async fn node_for(&self, tenant: &Tenant, agent: &AgentId) -> Result<String, ApiError> {
        let a = self.store.get_agent(&tenant.id, agent).await?;
        if let Some(n) = a.node.as_deref().filter(|n| self.nodes.node(n).is_some()) {
            return Ok(n.to_owned());
        }
        // A sandbox made before its node was recorded stays where it is.
        let found = a.container_id.as_deref().and_then(|c| c.split_once('/')).map(|(n, _)| n).filter(|n| self.nodes.node(n).is_some());
        let n = match found {
            Some(n) => n.to_owned(),
            None => self.place(&a, self.config.plan_or_default(&tenant.plan).sandbox_mib()).await?,
        };
        self.store.set_node(agent, Some(&n)).await?;
        Ok(n)
    }

    /// Makes (or re-checks) the agent's filesystem on its node (placing the agent when it has
    /// none), mounted, with its workspace and run dir for `uid`, and serves its `control.sock`;
    /// returns the node. A new filesystem is first admitted against the node's disk budget
    /// (503 `disk_full` past it). Formatting and mounting run other programs, so they run on a
    /// blocking thread, never on one that serves requests.
    pub async fn prepare_sandbox(&self, tenant: &Tenant, agent: &AgentId, uid: u32) -> Result<String, ApiError> {
        let node = self.node_for(tenant, agent).await?;
        let layout = self.layout_on(Some(&node)).clone();
        let disk = Volume::of(self.config.plan_or_default(&tenant.plan));
        let internal = move |id: &AgentId, e: std::io::Error| ApiError::internal(format!("preparing the filesystem and control socket of {id}: {e}"));
        if !layout.has_volume(agent) {
            // A node without a copy of the workspace (new, its disk replaced, or the agent moved
            // here) gets the newest snapshot back before anything starts on it.
            self.restore_if_missing(tenant, agent, uid, disk, &layout).await?;
        }
        let (app, id, l) = (self.clone(), agent.clone(), layout.clone());
        tokio::task::spawn_blocking(move || {
            if !l.has_volume(&id) {
                let _one_at_a_time = app.disk_lock.lock().expect("disk lock");
                app.admit_disk(&l, disk.size_mib)?;
                l.prepare_agent(&id, uid, disk).map_err(|e| internal(&id, e))
            } else {
                l.prepare_agent(&id, uid, disk).map_err(|e| internal(&id, e))
            }
        })
        .await
        .map_err(|e| ApiError::internal(format!("preparing the filesystem of {agent}: {e}")))??;
        self.open_control(tenant, agent, uid, &layout).map_err(|e| internal(agent, e))?;
        Ok(node)
    }

    /// Makes a warm-pool slot's filesystem, admitted against the disk budget like an agent's (on
    /// a blocking thread, as [`App::prepare_sandbox`]).
    pub async fn prepare_pool_volume(&self, slot: u64, uid: u32, disk: Volume) -> Result<(), ApiError> {
        let app = self.clone();
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = app.disk_lock.lock().expect("disk lock");
            let layout = app.pool_layout();
            if std::fs::symlink_metadata(layout.pool_image(slot)).is_err() {
                app.admit_disk(layout, disk.size_mib)?;
            }
            layout.prepare_pool_slot(slot, uid, disk).map_err(|e| ApiError::internal(format!("preparing pool slot {slot}'s filesystem: {e}")))
        })
        .await
        .map_err(|e| ApiError::internal(format!("preparing pool slot {slot}'s filesystem: {e}")))?
    }

    /// Refuses a new filesystem of `mib` when no node's disk has room for it (each node's
    /// filesystems on disk and it would pass its disk budget). Images are sparse, so this
    /// bounds what tenants can write all together, not what they have written.
    pub fn check_disk(&self, mib: u64) -> Result<(), ApiError> {
        let _one_at_a_time = self.disk_lock.lock().expect("disk lock");
        let mut refused = None;
        for l in self.distinct_layouts() {
            match self.admit_disk(l, mib) {
                Ok(()) => return Ok(()),
                Err(e) => refused = Some(e),
            }
        }
        refused.map_or(Ok(()), Err)
    }

    pub(crate) fn admit_disk(&self, layout: &Layout, mib: u64) -> Result<(), ApiError> {
        let committed: u64 = layout.volumes_on_disk().iter().map(|(_, m)| m).sum();
        let budget = self.disk_budget_mib(layout);
        if committed + mib > budget {
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "disk_full",
                format!("this node's disk budget is committed ({committed} of {budget} MiB to agents' filesystems); delete agents, lower the plans' disk_mib, or raise fleet.disk_budget_mib"),
            ));
        }
        Ok(())
    }

    /// MiB of agent filesystems a node's data dir may carry: `fleet.disk_budget_mib`, or four
    /// fifths of the filesystem's size.
    pub fn disk_budget_mib(&self, layout: &Layout) -> u64 {
        match self.config.fleet.disk_budget_mib {
            0 => clawpen_hostfs::SandboxDir::open(&layout.data_dir).and_then(|d| d.usage()).map(|u| u.bytes_total / (1024 * 1024) * 4 / 5).unwrap_or(u64::MAX),
            n => n,
        }
    }

    /// How to reach the agent in the sandbox `container_id` (node-qualified or not) that runs as
    /// `uid`: its socket, on that sandbox's node, with that sandbox's process as the only peer
    /// accepted.
    pub fn agent_addr(&self, tenant: &Tenant, agent: &AgentId, container_id: &str, uid: u32) -> AgentAddr {
        let (node, raw) = match container_id.split_once('/') {
            Some((n, raw)) => (Some(n), raw),
            None => (None, container_id),
        };
        let runtime = self.config.plan_or_default(&tenant.plan).runtime;
        AgentAddr::new(self.layout_on(node).run_dir(agent), Peer { container_id: raw.to_owned(), uid: peer_uid(runtime, uid) })
    }

    /// [`App::agent_addr`] from the agent's record: 503 `agent_unavailable` when it names no
    /// sandbox.
    pub async fn addr_of(&self, tenant: &Tenant, agent: &AgentId) -> Result<AgentAddr, ApiError> {
        let a = self.store.get_agent(&tenant.id, agent).await?;
        let Some(container) = a.container_id.as_deref() else {
            return Err(ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "agent_unavailable", "the agent has no sandbox yet; start it"));
        };
        Ok(self.agent_addr(tenant, agent, container, crate::fleet::uid_of(tenant, &a)))
    }

    /// Stops serving an agent's `control.sock`.
    pub fn close_control(&self, agent: &AgentId) {
        if let Some(h) = self.control.lock().expect("control map").remove(agent) {
            h.abort();
        }
    }

    pub fn is_reconciled(&self) -> bool {
        self.reconciled.load(Ordering::Acquire)
    }

    pub fn mark_reconciled(&self) {
        self.reconciled.store(true, Ordering::Release);
    }
}

/// The uid that must hold a sandbox's socket on the host: its agent's, under runc. Under runsc
/// the host-side socket is held by gVisor's gofer, as root, in the sandbox's cgroup: there the
/// cgroup alone names the sandbox.
pub fn peer_uid(runtime: clawpen_core::plan::SandboxRuntime, uid: u32) -> Option<u32> {
    runtime.is_runc().then_some(uid)
}
