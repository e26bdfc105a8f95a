//! Nodes: the Docker Engines sandboxes run on. Placement (least committed memory among the nodes
//! that are up, not quarantined and not drained), admission by each node's memory budget, node
//! health (an engine that stops answering is down; down for `fleet.node_lost_secs` it is lost
//! and its agents start again elsewhere; one that keeps going down is quarantined), and draining.

use std::collections::HashMap;
use std::sync::Arc;

use clawpen_core::ids::AgentId;
use clawpen_core::labels;
use clawpen_core::lifecycle::Tier;
use clawpen_runtime::nodes::{Node, Nodes};
use clawpen_runtime::{DockerRuntime, Runtime};
use clawpen_store::{Agent, DesiredState, ObservedState, Observation, Tenant};
use serde::Serialize;
use tracing::{info, warn};

use crate::app::{App, Holder};
use crate::config::Config;
use crate::error::ApiError;
use crate::fleet::Actor;
use crate::supervisor::now_ms;

/// What the fleet knows of one node's health.
#[derive(Debug, Clone, Default)]
pub struct NodeHealth {
    pub up: bool,
    /// Since when it does not answer.
    pub down_since: Option<i64>,
    /// When it went down, within the last hour.
    pub downs: Vec<i64>,
    pub quarantined_until: Option<i64>,
    /// Its lost agents were moved away already during this outage.
    pub moved: bool,
}

/// A node as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    pub name: String,
    /// `up`, `down`, `quarantined` or `draining`.
    pub state: String,
    pub committed_mib: u64,
    pub budget_mib: u64,
    /// Agents placed on it.
    pub agents: usize,
}

/// Connects to the configured engines (or the local one, as `local`) with their budgets.
pub async fn connect(config: &Config) -> anyhow::Result<(Nodes, HashMap<String, u64>)> {
    let default_budget = config.fleet.memory_budget_mib();
    if config.nodes.is_empty() {
        let rt: Arc<dyn Runtime> = Arc::new(DockerRuntime::connect_local().await?);
        return Ok((Nodes::new(vec![Node { name: "local".into(), runtime: rt }]), HashMap::from([("local".into(), default_budget)])));
    }
    let mut nodes = Vec::new();
    let mut budgets = HashMap::new();
    for (i, n) in config.nodes.iter().enumerate() {
        let rt = match (&n.tls_ca, &n.tls_cert, &n.tls_key) {
            (Some(ca), Some(cert), Some(key)) => DockerRuntime::connect_tls(&n.docker, key, cert, ca)
                .await
                .map_err(|e| anyhow::anyhow!("node {}: {e} (check tls_ca, tls_cert and tls_key)", n.name))?,
            _ => DockerRuntime::connect_unix(n.docker.trim_start_matches("unix://")).await,
        };
        // The first node must answer at start (it is where a node-less call goes); others may
        // come up later.
        if i == 0 {
            rt.info().await.map_err(|e| anyhow::anyhow!("node {} ({}): {e}", n.name, n.docker))?;
        }
        nodes.push(Node { name: n.name.clone(), runtime: Arc::new(rt) });
        budgets.insert(n.name.clone(), if n.memory_mib > 0 { n.memory_mib } else { default_budget });
    }
    Ok((Nodes::new(nodes), budgets))
}

impl App {
    fn budget(&self, node: &str) -> u64 {
        self.budgets.get(node).copied().unwrap_or(0)
    }

    fn committed_on(committed: &HashMap<Holder, (String, u64)>, node: &str) -> u64 {
        committed.values().filter(|(n, _)| n == node).map(|(_, m)| m).sum()
    }

    /// Reserves the plan's memory of an agent about to start on `node`; refused when the node's
    /// budget would be passed even after giving up an unclaimed warm-pool sandbox there. An
    /// agent already counted there is not counted twice.
    pub fn admit(&self, id: &AgentId, node: &str, mib: u64) -> Result<(), ApiError> {
        let refused = match self.reserve(Holder::Agent(id.clone()), node, mib) {
            Ok(()) => return Ok(()),
            Err(refused) => refused,
        };
        // The pool yields to agents: a ready pool sandbox on that node is given up for the room.
        if node == self.nodes.default_node() && self.evict_pool_sandbox() {
            return self.admit(id, node, mib);
        }
        let (total, budget) = refused;
        Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "node_full",
            format!(
                "starting this agent would commit {mib} MiB more, but node {node} has {total} of its {budget} MiB committed; \
                 stop or delete idle agents, add a node, or raise its memory budget (fleet.node_memory_mib or nodes.memory_mib)"
            ),
        ))
    }

    /// Reserves `mib` on `node` for `holder` if the node's budget allows: the check and the
    /// reservation are one step. `Err((committed, budget))` when it does not fit.
    pub(crate) fn reserve(&self, holder: Holder, node: &str, mib: u64) -> Result<(), (u64, u64)> {
        let mut committed = self.committed.lock().expect("committed");
        if committed.get(&holder).is_some_and(|(n, _)| n == node) {
            return Ok(());
        }
        committed.remove(&holder);
        let total = App::committed_on(&committed, node);
        let budget = self.budget(node);
        if total + mib > budget {
            return Err((total, budget));
        }
        committed.insert(holder, (node.to_owned(), mib));
        Ok(())
    }

    /// Counts an agent's memory on a node whatever the budget (a sandbox found running).
    pub fn commit_found(&self, id: &AgentId, node: &str, mib: u64) {
        self.committed.lock().expect("committed").insert(Holder::Agent(id.clone()), (node.to_owned(), mib));
    }

    /// The agent's sandbox no longer holds memory (stopped, removed, exited, lost).
    pub fn release(&self, id: &AgentId) {
        self.committed.lock().expect("committed").remove(&Holder::Agent(id.clone()));
    }

    /// Moves a claimed pool sandbox's reservation to its agent, in one step.
    pub(crate) fn transfer(&self, slot: u64, id: &AgentId) {
        let mut committed = self.committed.lock().expect("committed");
        if let Some(held) = committed.remove(&Holder::Pool(slot)) {
            committed.insert(Holder::Agent(id.clone()), held);
        }
    }

    /// MiB committed on the first node (where the warm pool lives) and its budget.
    pub fn committed_mib(&self) -> (u64, u64) {
        let node = self.nodes.default_node();
        (App::committed_on(&self.committed.lock().expect("committed"), node), self.budget(node))
    }

    pub fn node_is_up(&self, node: &str) -> bool {
        self.node_health.lock().expect("node health").get(node).is_none_or(|h| h.up)
    }

    /// Where a new sandbox of `agent` goes: its node if it has one that is up and not drained,
    /// else the node with the least committed memory among those that are up, not quarantined,
    /// not drained, and have room.
    pub async fn place(&self, agent: &Agent, mib: u64) -> Result<String, ApiError> {
        let drains = self.store.drains().await?;
        let now = now_ms();
        let health = self.node_health.lock().expect("node health").clone();
        let usable = |n: &str| {
            let h = health.get(n);
            h.is_none_or(|h| h.up && h.quarantined_until.is_none_or(|q| q <= now)) && !drains.iter().any(|d| d == n)
        };
        if let Some(n) = &agent.node {
            if usable(n) && self.nodes.node(n).is_some() {
                return Ok(n.clone());
            }
        }
        let committed = self.committed.lock().expect("committed");
        // The usable node with the least committed memory; when none has room it is still the
        // answer, and admission then refuses with that node's figures.
        let mut best: Option<(bool, u64, String)> = None;
        for n in self.nodes.names() {
            if !usable(&n) {
                continue;
            }
            let used = App::committed_on(&committed, &n);
            let fits = used + mib <= self.budget(&n);
            if best.as_ref().is_none_or(|(bf, bu, _)| (fits, std::cmp::Reverse(used)) > (*bf, std::cmp::Reverse(*bu))) {
                best = Some((fits, used, n));
            }
        }
        best.map(|(_, _, n)| n).ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "node_full",
                "no node can take a sandbox now: each is down, quarantined or drained (see GET /api/v1/nodes); add a node or end a drain",
            )
        })
    }

    /// The nodes as the API shows them.
    pub async fn node_views(&self) -> Result<Vec<NodeView>, ApiError> {
        let drains = self.store.drains().await?;
        let agents = self.store.all_agents().await?;
        let health = self.node_health.lock().expect("node health").clone();
        let committed = self.committed.lock().expect("committed").clone();
        let now = now_ms();
        Ok(self
            .nodes
            .names()
            .into_iter()
            .map(|n| {
                let h = health.get(&n).cloned().unwrap_or(NodeHealth { up: true, ..Default::default() });
                let state = if drains.contains(&n) {
                    "draining"
                } else if !h.up {
                    "down"
                } else if h.quarantined_until.is_some_and(|q| q > now) {
                    "quarantined"
                } else {
                    "up"
                };
                NodeView {
                    committed_mib: App::committed_on(&committed, &n),
                    budget_mib: self.budget(&n),
                    agents: agents.iter().filter(|a| a.node.as_deref() == Some(n.as_str())).count(),
                    state: state.into(),
                    name: n,
                }
            })
            .collect())
    }

    /// Runs [`App::watch_nodes_once`] every `fleet.tick_ms` until the task is dropped: on its own
    /// task, so a node that hangs never delays the supervision of agents.
    pub async fn run_node_watch(self) {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(self.config.fleet.tick_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.is_reconciled() {
                self.watch_nodes_once().await;
            }
        }
    }

    /// Asks every node whether it answers and acts on the changes: a node that went down marks
    /// its agents lost; one down for `node_lost_secs` has its agents started elsewhere; one that
    /// came back gets its image and its stale sandboxes swept.
    pub async fn watch_nodes_once(&self) {
        let now = now_ms();
        // All nodes asked at once: a node that hangs costs one timeout, not one per node.
        let answers = futures_util::future::join_all(self.nodes.names().into_iter().map(|name| async move {
            let up = self.node_answers(&name).await;
            (name, up)
        }))
        .await;
        for (name, up) in answers {
            let (was_up, lost_now) = {
                let mut map = self.node_health.lock().expect("node health");
                let h = map.entry(name.clone()).or_insert(NodeHealth { up: true, ..Default::default() });
                let was_up = h.up;
                h.up = up;
                if up {
                    h.down_since = None;
                    h.moved = false;
                } else if was_up {
                    h.down_since = Some(now);
                    h.downs.retain(|t| now - t < 3_600_000);
                    h.downs.push(now);
                    if h.downs.len() >= self.config.fleet.node_quarantine_downs as usize {
                        h.quarantined_until = Some(now + 3_600_000);
                    }
                }
                let lost_secs = self.config.fleet.node_lost_secs as i64 * 1000;
                let lost_now = !up && !h.moved && h.down_since.is_some_and(|d| now - d >= lost_secs);
                if lost_now {
                    h.moved = true;
                }
                (was_up, lost_now)
            };
            if was_up && !up {
                warn!(node = %name, "node does not answer: its agents are lost until it returns");
                self.on_node_down(&name).await;
            } else if !was_up && up {
                info!(node = %name, "node answers again");
                self.on_node_up(&name).await;
            }
            if lost_now {
                warn!(node = %name, "node lost: moving its agents");
                self.move_agents_off(&name, "node lost").await;
            }
        }
    }

    /// Whether `node`'s engine answers now (within 3 s).
    async fn node_answers(&self, node: &str) -> bool {
        match self.nodes.node(node) {
            Some(n) => tokio::time::timeout(std::time::Duration::from_secs(3), n.runtime.info()).await.is_ok_and(|r| r.is_ok()),
            None => false,
        }
    }

    async fn agents_on(&self, node: &str) -> Vec<Agent> {
        self.store.all_agents().await.unwrap_or_default().into_iter().filter(|a| a.node.as_deref() == Some(node)).collect()
    }

    async fn on_node_down(&self, node: &str) {
        for a in self.agents_on(node).await {
            let _guard = self.lock_agent(&a.id).await;
            self.release(&a.id);
            if a.desired_state != DesiredState::Running || a.observed_state == ObservedState::Crashloop {
                continue;
            }
            let obs = Observation {
                state: ObservedState::Lost,
                container_id: a.container_id.clone(),
                spec_hash: a.spec_hash.clone(),
                exit_code: None,
                last_error: Some(format!("node {node} does not answer")),
            };
            let _ = self.store.set_observed(&a.id, &obs).await;
            self.audit(&a.tenant_id, Some(&a.id), &Actor::system(), "agent.lost", &format!("node {node} does not answer"), Some(serde_json::json!({"node": node}))).await;
        }
    }

    async fn on_node_up(&self, node: &str) {
        if let Some(n) = self.nodes.node(node) {
            if let Err(e) = crate::ensure_image_on(&n.runtime, &self.image).await {
                warn!(node, error = %e, "cannot put the sandbox image on the node");
            }
        }
        // Sandboxes there whose agents now live elsewhere (or nowhere) are stale: swept. Agents
        // still placed there are brought back.
        let containers = self.runtime.list(labels::INSTANCE, &self.instance).await.unwrap_or_default();
        let agents = self.store.all_agents().await.unwrap_or_default();
        for c in containers.iter().filter(|c| c.node == node) {
            let owner = c.labels.get(labels::AGENT).and_then(|id| agents.iter().find(|a| a.id.as_str() == id));
            if owner.is_none_or(|a| a.node.as_deref() != Some(node)) && c.labels.get(labels::ROLE).map(String::as_str) == Some("agent") {
                info!(container = %c.name, node, "removing a stale sandbox left on a returning node");
                let _ = self.runtime.remove(&c.id).await;
            }
        }
        self.sweep_moved_filesystems(node).await;
        for a in agents.iter().filter(|a| a.node.as_deref() == Some(node)) {
            if a.desired_state != DesiredState::Running || a.hibernation != Tier::Awake || a.observed_state == ObservedState::Crashloop {
                continue;
            }
            let Ok(tenant) = self.store.get_tenant(&a.tenant_id).await else { continue };
            let _guard = self.lock_agent(&a.id).await;
            self.audit(&a.tenant_id, Some(&a.id), &Actor::system(), "agent.recover", &format!("node {node} answers again"), None).await;
            if let Err(e) = self.bring_up(&tenant, &a.id).await {
                warn!(agent = %a.id, error = %e.message, "cannot bring an agent back on its returning node");
            }
        }
    }

    /// Moves every agent off `node`: its sandbox there is removed (if the node answers), and an
    /// agent that should run starts on another node. Where nodes keep filesystems apart, the
    /// workspace travels through storage (see [`App::move_agent`]).
    pub async fn move_agents_off(&self, node: &str, why: &str) -> Vec<AgentId> {
        let mut moved = Vec::new();
        // Whether the node answers is asked once, now: the last tick's answer may be a blip
        // under load, and a move from a node that answers keeps everything the agent wrote.
        let up = self.node_answers(node).await;
        for a in self.agents_on(node).await {
            let Ok(tenant) = self.store.get_tenant(&a.tenant_id).await else { continue };
            let _guard = self.lock_agent(&a.id).await;
            // Read again under the lock: a start or a delete may have come first.
            let Ok(a) = self.store.get_agent(&tenant.id, &a.id).await else { continue };
            if a.node.as_deref() != Some(node) {
                continue;
            }
            if let Err(e) = self.move_agent(&tenant, &a, node, up, why).await {
                warn!(agent = %a.id, error = %e.message, "cannot move the agent");
                self.audit(&tenant.id, Some(&a.id), &Actor::system(), "agent.move_failed", &e.message, Some(serde_json::json!({"from": node}))).await;
            } else {
                moved.push(a.id.clone());
            }
        }
        moved
    }

    /// True when some node keeps agents' filesystems somewhere other than `node` does: a move
    /// off it may need the workspace to travel.
    fn disk_is_apart(&self, node: &str) -> bool {
        self.nodes.names().iter().any(|n| !self.nodes_share_disk(n, node))
    }

    /// Moves one agent off `from`. Callers hold its lock. When another node keeps its files
    /// elsewhere, the workspace goes through storage: from a node that answers, the sandbox is
    /// removed first (so nothing writes), then the workspace is backed up and its filesystem
    /// there removed, and the new node restores it; a move that cannot back up does not happen.
    /// From a lost node, the newest snapshot is what the agent resumes from (what it wrote
    /// since is lost with the node), and an agent with no snapshot waits for its node.
    async fn move_agent(&self, tenant: &Tenant, a: &Agent, from: &str, up: bool, why: &str) -> Result<(), ApiError> {
        let apart = self.disk_is_apart(from);
        if apart && !up && !self.may_have_snapshot(tenant, &a.id).await {
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "no_snapshot",
                format!("the agent has no snapshot in storage, so it waits for node {from} to answer again"),
            ));
        }
        if up {
            let name = format!("{from}/{}", clawpen_core::spec::container_name(&self.instance, &a.id));
            self.runtime.remove(&name).await?;
        }
        self.release(&a.id);
        self.store.set_observed(&a.id, &Observation { state: ObservedState::Absent, ..Default::default() }).await?;
        let mut detail = serde_json::json!({"from": from});
        if apart && up && self.layout_on(Some(from)).has_volume(&a.id) {
            let layout = self.layout_on(Some(from)).clone();
            detail["snapshot"] = self.back_up_and_remove(tenant, &a.id, layout, "moving to another node").await?.into();
        } else if apart {
            detail["snapshot"] = self.store.get_backup(&tenant.id, &a.id).await.ok().flatten().map(|b| b.snapshot_id).into();
            self.close_control(&a.id);
        }
        self.store.set_node(&a.id, None).await?;
        // An agent asleep had its sandbox on that node: it sleeps on, without one.
        if a.hibernation != Tier::Awake {
            self.store.set_hibernation(&a.id, Tier::Removed).await?;
        }
        self.audit(&tenant.id, Some(&a.id), &Actor::system(), "agent.move", why, Some(detail)).await;
        if a.desired_state == DesiredState::Running && a.hibernation == Tier::Awake && a.observed_state != ObservedState::Crashloop {
            self.bring_up(tenant, &a.id).await?;
        }
        Ok(())
    }

    /// On a returning node that keeps its own files: the filesystems of agents that moved away
    /// while it was lost are stale (each resumed elsewhere from its snapshot) and are removed.
    async fn sweep_moved_filesystems(&self, node: &str) {
        let layout = self.layout_on(Some(node)).clone();
        if !self.disk_is_apart(node) {
            return;
        }
        for id in layout.agents_on_disk() {
            let _guard = self.lock_agent(&id).await;
            let Ok(Some(a)) = self.store.find_agent(&id).await else { continue };
            let here = match a.node.as_deref() {
                Some(n) => self.nodes_share_disk(n, node),
                None => self.layout_on(None).data_dir == layout.data_dir,
            };
            if here {
                continue;
            }
            info!(agent = %id, node, "removing the stale filesystem of an agent that moved off a returning node");
            let (l, t, i) = (layout.clone(), a.tenant_id.clone(), id.clone());
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || l.remove_agent(&t, &i)).await {
                warn!(agent = %id, node, error = %e, "cannot remove a stale filesystem");
            }
        }
    }
}
