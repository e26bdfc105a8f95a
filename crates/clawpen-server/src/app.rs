//! `App`: everything a request handler or the reconciler needs, shared behind an `Arc`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use clawpen_core::ids::{AgentId, TenantId};
use clawpen_meter::{Meter, MeterCaller};
use clawpen_runtime::Runtime;
use clawpen_store::Store;

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
    pub layout: Layout,
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
    /// Messages per minute per tenant.
    pub message_limits: crate::ratelimit::MessageLimits,
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
    /// One lock per agent so start, stop and delete of one agent never interleave.
    agent_locks: Mutex<HashMap<AgentId, Arc<tokio::sync::Mutex<()>>>>,
    /// Set once the start-up reconciliation is done; `/readyz` waits for it.
    reconciled: AtomicBool,
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
    ) -> App {
        let telegram = crate::channels::telegram::Telegram::new(&config.telegram);
        let runtime: Arc<dyn Runtime> = Arc::new(nodes.clone());
        App(Arc::new(AppInner {
            store,
            runtime,
            config,
            layout,
            instance,
            image,
            agent_exe: None,
            admin_token_sha256,
            meter,
            vault,
            signer,
            message_limits: Default::default(),
            lives: Mutex::new(HashMap::new()),
            committed: Mutex::new(HashMap::new()),
            nodes,
            budgets,
            node_health: Mutex::new(HashMap::new()),
            pool: Default::default(),
            metrics: Default::default(),
            telegram,
            control: Mutex::new(HashMap::new()),
            agent_locks: Mutex::new(HashMap::new()),
            reconciled: AtomicBool::new(false),
        }))
    }

    /// Binds this host copy of the image's executable into sandboxes.
    pub fn with_agent_exe(mut self, exe: Option<std::path::PathBuf>) -> App {
        Arc::get_mut(&mut self.0).expect("set before the app is shared").agent_exe = exe;
        self
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

    /// Serves the meter on the agent's `control.sock` (owned by the tenant's uid, 0600) unless
    /// it is served already. The socket is the caller's identity: the router is bound to this
    /// tenant and agent.
    pub fn open_control(&self, tenant: &TenantId, agent: &AgentId, uid: u32) -> std::io::Result<()> {
        let mut map = self.control.lock().expect("control map");
        if map.get(agent).is_some_and(|h| !h.is_finished()) {
            return Ok(());
        }
        let path = self.layout.control_socket(agent);
        let _ = std::fs::remove_file(&path);
        let std_listener = std::os::unix::net::UnixListener::bind(&path)?;
        std::os::unix::fs::lchown(&path, Some(uid), Some(uid))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        let router = clawpen_meter::router::router(self.meter.clone(), MeterCaller { tenant: tenant.clone(), agent: agent.clone() });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(error = %e, "control socket stopped");
            }
        });
        map.insert(agent.clone(), task.abort_handle());
        Ok(())
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
