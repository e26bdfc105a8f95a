//! Agent lifecycle and reconciliation: the store holds what was asked for (desired state), the
//! runtime shows what is (observed state), and every function here moves the second towards the
//! first, writing each step to the audit log.
//!
//! Crash safety comes from ordering: intent is written to the store before the runtime is
//! touched, and every container carries labels naming its installation, tenant and agent. After
//! a crash at any point, [`App::reconcile`] finds the container (or its absence) by label and
//! finishes or undoes the step.

use std::time::Duration;

use clawpen_agent::client;
use clawpen_core::ids::{AgentId, TenantId};
use clawpen_core::lifecycle::Tier;
use clawpen_core::labels;
use clawpen_core::names::validate_name;
use clawpen_core::spec::{AgentSandbox, SandboxSpec};
use clawpen_runtime::{RuntimeError, RuntimeEvent, RuntimeEventKind, SandboxState};
use clawpen_store::{Agent, DesiredState, NewAudit, ObservedState, Observation, StoreError, Tenant};
use futures_util::StreamExt;
use tracing::{info, warn};

use crate::app::App;
use crate::error::ApiError;

/// Who asked for a lifecycle action, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

impl Actor {
    pub fn system() -> Actor {
        Actor("system".into())
    }
}

/// Agents brought to their desired state at once during the start-up reconciliation.
const RECONCILE_CONCURRENCY: usize = 8;

impl App {
    /// The sandbox spec of an agent running as `uid` (see [`uid_of`]) on `node`, built from its
    /// tenant's plan.
    pub fn spec_for(&self, tenant: &Tenant, agent: &AgentId, uid: u32, node: &str) -> SandboxSpec {
        let layout = self.layout_on(Some(node));
        let plan = self.config.plan_or_default(&tenant.plan);
        SandboxSpec::for_agent(AgentSandbox {
            instance: &self.instance,
            tenant: &tenant.id,
            agent,
            uid,
            image: plan.image.as_deref().unwrap_or(&self.image),
            workspace_dir: layout.workspace_dir(agent),
            run_dir: layout.run_dir(agent),
            plan,
            limits: self.config.agent,
            // Only where the image is the one built from this executable.
            executable: if plan.image.is_none() { self.agent_exe.clone() } else { None },
        })
    }

    pub(crate) async fn audit(&self, tenant: &TenantId, agent: Option<&AgentId>, actor: &Actor, action: &str, reason: &str, detail: Option<serde_json::Value>) {
        let entry = NewAudit { tenant: Some(tenant), agent, actor: &actor.0, action, reason, detail: detail.as_ref() };
        if let Err(e) = self.store.audit(entry).await {
            warn!(error = %e, action, "cannot write the audit log");
        }
    }

    /// Creates an agent: its row, then (unless `start_follows`) its filesystem and control
    /// socket. A failure in between removes the row again, so nothing half-made is left. When a
    /// start follows, the filesystem is left to it: a warm-pool claim brings its own, so making
    /// one here would only be thrown away. Either way the disk budget is checked first.
    pub async fn create_agent(&self, tenant: &Tenant, name: &str, actor: &Actor, start_follows: bool) -> Result<Agent, ApiError> {
        validate_name(name).map_err(|e| ApiError::invalid(format!("name: {e}")))?;
        let plan = self.config.plan_or_default(&tenant.plan);
        self.check_disk(plan.disk_mib)?;
        let agent = self.store.create_agent(&tenant.id, name, plan.max_agents).await?;
        self.audit(&tenant.id, Some(&agent.id), actor, "agent.create", "requested", Some(serde_json::json!({"name": name}))).await;
        if start_follows {
            info!(tenant = %tenant.id, agent = %agent.id, "agent created");
            return Ok(agent);
        }
        if let Err(e) = self.prepare_sandbox(tenant, &agent.id, tenant.uid as u32).await {
            self.close_control(&agent.id);
            self.remove_filesystems(&tenant.id, &agent.id);
            let _ = self.store.delete_agent(&agent.id).await;
            self.audit(&tenant.id, Some(&agent.id), &Actor::system(), "agent.create-failed", &e.message, None).await;
            return Err(e);
        }
        info!(tenant = %tenant.id, agent = %agent.id, "agent created");
        Ok(agent)
    }

    /// Starts an agent and waits until it answers `/health`.
    pub async fn start_agent(&self, tenant: &Tenant, id: &AgentId, actor: &Actor, reason: &str) -> Result<Agent, ApiError> {
        let _guard = self.lock_agent(id).await;
        let agent = self.store.get_agent(&tenant.id, id).await?;
        if agent.desired_state != DesiredState::Running {
            self.store.set_desired(id, DesiredState::Running).await?;
        }
        // A manual start clears the crash-loop guard and its history.
        let now = crate::supervisor::now_ms();
        self.with_life(id, |l| l.cleared(now));
        if !agent.restarts.is_empty() {
            self.store.set_restarts(id, &[]).await?;
        }
        let slot = self.take_pool_slot(tenant, &agent).await;
        let kind = if slot.is_some() { "warm" } else { "cold" };
        self.audit(&tenant.id, Some(id), actor, "agent.start", reason, Some(serde_json::json!({"kind": kind}))).await;
        if let Err(e) = self.bring_up_from(tenant, id, slot).await {
            // Refused for room: nothing was started, so nothing of the request stays either.
            if e.code == "node_full" && agent.desired_state != DesiredState::Running {
                self.store.set_desired(id, agent.desired_state).await?;
            }
            return Err(e);
        }
        Ok(self.store.get_agent(&tenant.id, id).await?)
    }

    /// Makes the agent's sandbox run with the current spec (thawing, starting or creating it)
    /// and waits for its health answer. A sandbox that exits meanwhile fails the start at once,
    /// with its exit code. Callers hold the agent's lock.
    pub(crate) async fn bring_up(&self, tenant: &Tenant, id: &AgentId) -> Result<(), ApiError> {
        self.bring_up_from(tenant, id, None).await
    }

    /// [`App::bring_up`] at start-up: a sandbox found running is waited on for one health
    /// check's time only, and one that does not answer then is left to the supervisor's health
    /// checks (which restart it), so that a hanging sandbox holds up neither the start-up nor
    /// anyone else's.
    async fn bring_up_adopting(&self, tenant: &Tenant, id: &AgentId) -> Result<(), ApiError> {
        self.bring_up_with(tenant, id, None, true).await
    }

    /// [`App::bring_up`], claiming `slot` from the warm pool when given (a failed claim is
    /// undone and the start goes on cold).
    pub(crate) async fn bring_up_from(&self, tenant: &Tenant, id: &AgentId, slot: Option<crate::pool::Slot>) -> Result<(), ApiError> {
        self.bring_up_with(tenant, id, slot, false).await
    }

    async fn bring_up_with(&self, tenant: &Tenant, id: &AgentId, slot: Option<crate::pool::Slot>, adopting: bool) -> Result<(), ApiError> {
        // A claim proves health itself (the agent answered /claim as this agent).
        if let Some(slot) = slot {
            if let Ok(container_id) = self.claim(tenant, id, &slot).await {
                // The pool lives on the first node.
                self.store.set_node(id, Some(self.nodes.default_node())).await?;
                let obs = Observation { state: ObservedState::Running, container_id: Some(container_id), spec_hash: Some(slot.spec_hash), exit_code: None, last_error: None };
                self.store.set_observed(id, &obs).await?;
                self.store.set_hibernation(id, Tier::Awake).await?;
                let now = crate::supervisor::now_ms();
                self.with_life(id, |l| l.woke(now));
                return Ok(());
            }
        }
        let mut agent = self.store.get_agent(&tenant.id, id).await?;
        let uid = uid_of(tenant, &agent);
        let node = self.prepare_sandbox(tenant, id, uid).await?;
        // Its node is recorded now (placed by prepare_sandbox when it had none).
        agent.node = Some(node.clone());
        let mut spec = self.spec_for(tenant, id, uid, &node);
        let memory_mib = self.config.plan_or_default(&tenant.plan).sandbox_mib();
        let cold = || self.metrics.starts_cold.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // On its node (a stale copy on another node is not it).
        let target = format!("{node}/{}", spec.name);
        // Whether the sandbox was found running (and is adopted as it is).
        let mut found_running = false;
        let (container_id, spec_hash) = match self.runtime.inspect(&target).await {
            // A claimed pool sandbox runs on its first-generation config, which names the pool's
            // paths: kept while it runs, made again from the agent's spec once it stopped.
            Ok(st) if crate::pool::is_pool(&st) && matches!(st.state, SandboxState::Running | SandboxState::Paused) => {
                if st.state == SandboxState::Paused {
                    self.runtime.unpause(&st.id).await?;
                }
                let hash = st.labels.get(labels::SPEC_HASH).cloned().unwrap_or_default();
                (st.id, hash)
            }
            Ok(st) if st.labels.get(labels::SPEC_HASH).map(String::as_str) == Some(spec.spec_hash()) => {
                if agent.node.as_deref() != Some(st.node.as_str()) {
                    self.store.set_node(id, Some(&st.node)).await?;
                }
                match st.state {
                    SandboxState::Paused => self.runtime.unpause(&st.id).await?,
                    SandboxState::Running => found_running = true,
                    _ => {
                        self.admit(id, &st.node, memory_mib)?;
                        if let Err(e) = self.runtime.start(&st.id).await {
                            self.release(id);
                            return Err(e.into());
                        }
                    }
                }
                (st.id, spec.spec_hash().to_owned())
            }
            Ok(st) => {
                info!(agent = %id, "sandbox spec changed; recreating the container (workspace kept)");
                self.runtime.remove(&st.id).await?;
                self.release(id);
                cold();
                (self.create_placed(&agent, &mut spec, memory_mib).await?, spec.spec_hash().to_owned())
            }
            Err(RuntimeError::NotFound) => {
                cold();
                (self.create_placed(&agent, &mut spec, memory_mib).await?, spec.spec_hash().to_owned())
            }
            // Not placed, and a node that does not answer may hold a stale copy: that one is
            // swept when the node returns; the agent starts on a node that answers.
            Err(RuntimeError::Unreachable(_)) if agent.node.is_none() => {
                cold();
                (self.create_placed(&agent, &mut spec, memory_mib).await?, spec.spec_hash().to_owned())
            }
            Err(e) => return Err(e.into()),
        };
        let observed = |state, exit_code, last_error: Option<String>| Observation {
            state,
            container_id: Some(container_id.clone()),
            spec_hash: Some(spec_hash.clone()),
            exit_code,
            last_error,
        };
        self.store.set_observed(id, &observed(ObservedState::Starting, None, None)).await?;
        let lenient = adopting && found_running;
        let timeout = if lenient { Duration::from_millis(self.config.fleet.health_timeout_ms) } else { Duration::from_secs(self.config.sandbox.start_timeout_secs) };
        let exited = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match self.runtime.inspect(&container_id).await {
                    Ok(st) if st.state == SandboxState::Exited => return Some(st),
                    Err(RuntimeError::NotFound) => return None,
                    _ => {}
                }
            }
        };
        let addr = self.agent_addr(tenant, id, &container_id, uid);
        let outcome = tokio::select! {
            h = client::wait_healthy(&addr, timeout) => Ok(h),
            st = exited => Err(st),
        };
        match outcome {
            Ok(Ok(_)) => {
                self.store.set_observed(id, &observed(ObservedState::Running, None, None)).await?;
                self.store.set_hibernation(id, Tier::Awake).await?;
                let now = crate::supervisor::now_ms();
                self.with_life(id, |l| l.woke(now));
                Ok(())
            }
            Ok(Err(e)) if lenient => {
                warn!(agent = %id, error = %e, "an adopted sandbox did not answer at start-up; its health checks decide");
                self.store.set_observed(id, &observed(ObservedState::Running, None, None)).await?;
                let now = crate::supervisor::now_ms();
                self.with_life(id, |l| l.woke(now));
                Ok(())
            }
            Ok(Err(e)) => {
                let tail = self.runtime.logs(&container_id, 5).await.unwrap_or_default().join(" | ");
                let why = format!("did not answer /health within {}s ({e}); last log lines: {tail}", timeout.as_secs());
                self.store.set_observed(id, &observed(ObservedState::Failed, None, Some(why.clone()))).await?;
                self.audit(&tenant.id, Some(id), &Actor::system(), "agent.start-failed", &why, None).await;
                Err(ApiError::new(
                    axum::http::StatusCode::BAD_GATEWAY,
                    "agent_unhealthy",
                    format!("the agent did not become healthy within {}s; see GET /api/v1/agents/{id}/logs", timeout.as_secs()),
                ))
            }
            Err(st) => {
                self.release(id);
                let (code, oom) = st.as_ref().map_or((None, false), |s| (s.exit_code, s.oom_killed));
                let why = exit_reason(code, oom);
                self.store.set_observed(id, &observed(ObservedState::Exited, code, Some(why.clone()))).await?;
                self.audit(&tenant.id, Some(id), &Actor::system(), "agent.start-failed", &format!("the sandbox {why} while starting"), Some(serde_json::json!({"exit_code": code, "oom": oom}))).await;
                Err(ApiError::new(
                    axum::http::StatusCode::BAD_GATEWAY,
                    "agent_exited",
                    format!("the agent {why} while starting; see GET /api/v1/agents/{id}/logs"),
                ))
            }
        }
    }

    /// Places a new sandbox (intent first: the node goes to the store), admits it there and
    /// creates it.
    async fn create_placed(&self, agent: &Agent, spec: &mut SandboxSpec, memory_mib: u64) -> Result<String, ApiError> {
        let node = self.place(agent, memory_mib).await?;
        if agent.node.as_deref() != Some(node.as_str()) {
            // Another node may take it only where the agent's filesystem is too; else the agent
            // waits for a move (a drain, or the node lost for `node_lost_secs`).
            if let Some(from) = agent.node.as_deref().filter(|from| !self.nodes_share_disk(from, &node)) {
                return Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "node_unavailable",
                    format!("the agent's node {from} does not answer or is drained; the agent moves to another node when it is drained or lost for fleet.node_lost_secs"),
                ));
            }
            self.store.set_node(&agent.id, Some(&node)).await?;
        }
        self.admit(&agent.id, &node, memory_mib)?;
        spec.node = node;
        Ok(self.runtime.create_and_start(spec).await.inspect_err(|_| self.release(&agent.id))?)
    }

    /// Stops an agent; its container and workspace are kept.
    pub async fn stop_agent(&self, tenant: &Tenant, id: &AgentId, actor: &Actor, reason: &str) -> Result<Agent, ApiError> {
        let _guard = self.lock_agent(id).await;
        self.store.get_agent(&tenant.id, id).await?;
        self.store.set_desired(id, DesiredState::Stopped).await?;
        self.audit(&tenant.id, Some(id), actor, "agent.stop", reason, None).await;
        self.halt(tenant, id).await?;
        Ok(self.store.get_agent(&tenant.id, id).await?)
    }

    /// Stops the sandbox if there is one and records it. Callers hold the agent's lock.
    async fn halt(&self, _tenant: &Tenant, id: &AgentId) -> Result<(), ApiError> {
        let name = clawpen_core::spec::container_name(&self.instance, id);
        let obs = match self.runtime.inspect(&name).await {
            Ok(st) => {
                self.runtime.stop(&st.id, self.config.sandbox.stop_grace_secs).await?;
                self.release(id);
                let after = self.runtime.inspect(&st.id).await?;
                Observation {
                    state: ObservedState::Stopped,
                    container_id: Some(st.id),
                    spec_hash: after.labels.get(labels::SPEC_HASH).cloned(),
                    exit_code: after.exit_code,
                    last_error: None,
                }
            }
            Err(RuntimeError::NotFound) => Observation { state: ObservedState::Absent, ..Default::default() },
            Err(e) => return Err(e.into()),
        };
        self.store.set_observed(id, &obs).await?;
        // Stopped on purpose: no longer a hibernating agent.
        self.store.set_hibernation(id, Tier::Awake).await?;
        Ok(())
    }

    /// Deletes an agent: intent first, then the container, the dirs, and last the row.
    pub async fn delete_agent(&self, tenant: &Tenant, id: &AgentId, actor: &Actor, reason: &str) -> Result<(), ApiError> {
        let _guard = self.lock_agent(id).await;
        self.store.get_agent(&tenant.id, id).await?;
        self.store.set_desired(id, DesiredState::Deleted).await?;
        self.audit(&tenant.id, Some(id), actor, "agent.delete", reason, None).await;
        self.finish_delete(&tenant.id, id).await
    }

    /// Removes the agent's filesystem from every node's data dir, best effort (a create that
    /// failed half-way).
    fn remove_filesystems(&self, tenant: &TenantId, id: &AgentId) {
        for layout in self.distinct_layouts() {
            let _ = layout.remove_agent(tenant, id);
        }
    }

    async fn finish_delete(&self, tenant: &TenantId, id: &AgentId) -> Result<(), ApiError> {
        self.runtime.remove(&clawpen_core::spec::container_name(&self.instance, id)).await?;
        self.release(id);
        self.lives.lock().expect("lives").remove(id);
        self.close_control(id);
        for layout in self.distinct_layouts() {
            layout.remove_agent(tenant, id).map_err(|e| ApiError::internal(format!("removing the dirs of {id}: {e}")))?;
        }
        self.remove_snapshots(tenant, id).await?;
        self.store.delete_agent(id).await?;
        info!(tenant = %tenant, agent = %id, "agent deleted");
        Ok(())
    }

    /// Deletes a tenant with all its agents, sandboxes and dirs. Its audit lines stay.
    pub async fn delete_tenant(&self, id: &TenantId, actor: &Actor) -> Result<(), ApiError> {
        let tenant = self.store.get_tenant(id).await.map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("tenant"),
            other => other.into(),
        })?;
        self.audit(id, None, actor, "tenant.delete", "requested", None).await;
        for agent in self.store.list_agents(id).await? {
            self.delete_agent(&tenant, &agent.id, actor, "tenant deleted").await?;
        }
        self.store.delete_tenant(id).await?;
        self.layout.remove_tenant(id).map_err(|e| ApiError::internal(format!("removing the dirs of {id}: {e}")))?;
        Ok(())
    }

    /// Brings store and runtime into agreement after a (re)start: adopts containers the store
    /// knows, removes orphans, finishes interrupted deletes, and starts what should run.
    pub async fn reconcile(&self) -> anyhow::Result<()> {
        let containers = self.runtime.list(labels::INSTANCE, &self.instance).await?;
        let agents = self.store.all_agents().await?;
        for layout in self.distinct_layouts() {
            layout.remove_unfinished_images()?;
        }
        let sys = Actor::system();
        // Pool sandboxes no record names are removed, with every pool dir; claimed ones are
        // settled with their agents below.
        self.sweep_pool(&containers, &agents).await?;
        for c in containers.iter().filter(|c| !crate::pool::is_pool(c)) {
            let agent = c.labels.get(labels::AGENT).and_then(|a| AgentId::parse(a).ok());
            let known = agent.as_ref().and_then(|a| agents.iter().find(|x| &x.id == a));
            match known {
                // Its own sandbox on its own node (or on the only node it has ever had).
                Some(a) if a.desired_state != DesiredState::Deleted && a.node.as_deref().is_none_or(|n| n == c.node) => {
                    info!(container = %c.name, agent = %a.id, node = %c.node, state = ?c.state, "adopting sandbox");
                    if a.node.is_none() {
                        self.store.set_node(&a.id, Some(&c.node)).await?;
                    }
                }
                _ => {
                    info!(container = %c.name, "removing orphan sandbox (no live agent in the store)");
                    self.runtime.remove(&c.id).await?;
                    if let Some(t) = c.labels.get(labels::TENANT).and_then(|t| TenantId::parse(t).ok()) {
                        self.audit(&t, agent.as_ref(), &sys, "reconcile.orphan-removed", "container without a live agent", Some(serde_json::json!({"container": c.name}))).await;
                    }
                }
            }
        }
        // First every live agent's filesystem is mounted (moved over from the layout before
        // volumes, once) and its control socket served, so that every meter answers before any
        // sandbox is waited on; then the agents are brought to their desired state, several at
        // a time, so that one hanging sandbox holds up no one else.
        let mut steps = Vec::new();
        for a in agents {
            let tenant = match self.store.get_tenant(&a.tenant_id).await {
                Ok(t) => t,
                Err(e) => {
                    warn!(agent = %a.id, error = %e, "agent without its tenant; skipped");
                    continue;
                }
            };
            let _guard = self.lock_agent(&a.id).await;
            let uid = uid_of(&tenant, &a);
            // The agent's sandbox, by label or (a claimed pool sandbox) by the record's id.
            let is_its = |c: &&clawpen_runtime::SandboxStatus| {
                c.labels.get(labels::AGENT).map(String::as_str) == Some(a.id.as_str()) || a.container_id.as_deref() == Some(c.id.as_str())
            };
            if let Some(c) = containers.iter().filter(is_its).find(|c| crate::pool::is_pool(c)) {
                if a.desired_state != DesiredState::Deleted {
                    self.settle_claim(&tenant, &a, c).await;
                }
            }
            // A sandbox found running or frozen holds its plan's memory, whatever the budget.
            let holding = containers.iter().filter(is_its).find(|c| matches!(c.state, SandboxState::Running | SandboxState::Paused));
            if let Some(c) = holding {
                self.commit_found(&a.id, &c.node, self.config.plan_or_default(&tenant.plan).sandbox_mib());
            }
            let running = containers.iter().filter(is_its).any(|c| c.state == SandboxState::Running);
            if a.desired_state != DesiredState::Deleted {
                if let Err(e) = self.mount_and_serve(&tenant, &a, uid, containers.iter().filter(is_its).map(|c| c.id.clone()).collect()).await {
                    warn!(agent = %a.id, error = %e.message, "cannot prepare the agent's filesystem");
                    continue;
                }
            }
            steps.push((tenant, a, running));
        }
        let app = self.clone();
        futures_util::stream::iter(steps)
            .for_each_concurrent(RECONCILE_CONCURRENCY, |(tenant, a, running)| {
                let app = app.clone();
                async move {
                    let _guard = app.lock_agent(&a.id).await;
                    if let Err(e) = app.reconcile_one(&tenant, &a, running).await {
                        warn!(agent = %a.id, error = %e.message, "reconciliation step failed");
                    }
                }
            })
            .await;
        self.mark_reconciled();
        self.pool.refill_soon();
        info!("reconciliation done");
        Ok(())
    }

    /// The filesystem of an agent found at start-up: moved from the layout before volumes when
    /// it still lives there (its old sandbox, bound to the old dirs, is removed first so that
    /// nothing writes to them meanwhile; it is made again from the new spec), then mounted, and
    /// the agent's control socket served.
    async fn mount_and_serve(&self, tenant: &Tenant, a: &Agent, uid: u32, sandboxes: Vec<String>) -> Result<(), ApiError> {
        if self.layout.has_legacy_workspace(&tenant.id, &a.id) {
            for c in sandboxes {
                self.runtime.remove(&c).await?;
            }
            self.release(&a.id);
            let disk = clawpen_core::spec::Volume::of(self.config.plan_or_default(&tenant.plan));
            self.layout.migrate_legacy(&tenant.id, &a.id, uid, disk).map_err(|e| ApiError::internal(format!("moving the workspace of {} into its own filesystem: {e}", a.id)))?;
            self.audit(&tenant.id, Some(&a.id), &Actor::system(), "reconcile.workspace-moved", "the workspace moved into the agent's own bounded filesystem", None).await;
        }
        self.prepare_sandbox(tenant, &a.id, uid).await.map(|_| ())
    }

    /// Brings one agent found at start-up to its desired state. Callers hold its lock.
    async fn reconcile_one(&self, tenant: &Tenant, a: &Agent, running: bool) -> Result<(), ApiError> {
        let sys = Actor::system();
        match a.desired_state {
            DesiredState::Deleted => {
                info!(agent = %a.id, "finishing an interrupted delete");
                self.audit(&a.tenant_id, Some(&a.id), &sys, "reconcile.delete-finished", "delete was interrupted", None).await;
                self.finish_delete(&a.tenant_id, &a.id).await
            }
            // Adopt the sandbox in the state the store asks for: a crash-looping agent stays
            // stopped, a hibernating one in its tier (an interrupted step is done again).
            DesiredState::Running if a.observed_state == ObservedState::Crashloop || a.hibernation != Tier::Awake => self.settle_asleep(tenant, a).await,
            DesiredState::Running => {
                info!(agent = %a.id, "desired running: ensuring its sandbox runs");
                self.audit(&a.tenant_id, Some(&a.id), &sys, "reconcile.start", "desired state is running", None).await;
                self.bring_up_adopting(tenant, &a.id).await
            }
            DesiredState::Stopped => {
                if running {
                    info!(agent = %a.id, "desired stopped but running: stopping");
                    self.audit(&a.tenant_id, Some(&a.id), &sys, "reconcile.stop", "desired state is stopped", None).await;
                }
                self.halt(tenant, &a.id).await
            }
        }
    }

    /// Follows the runtime's events for this installation's sandboxes: records OOM kills and
    /// unexpected exits. Runs until the task is dropped; reconnects when the stream breaks.
    pub async fn watch_events(self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut events = self.runtime.events(labels::INSTANCE, &self.instance);
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(ev) => {
                        backoff = Duration::from_millis(200);
                        self.on_event(ev).await;
                    }
                    Err(e) => {
                        warn!(error = %e, "runtime event stream broke; reconnecting");
                        break;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn on_event(&self, ev: RuntimeEvent) {
        let agent = match ev.labels.get(labels::AGENT).and_then(|a| AgentId::parse(a).ok()) {
            Some(id) => self.store.find_agent(&id).await,
            // A pool sandbox: its agent, once claimed, is known by the container's id.
            None if ev.labels.get(labels::ROLE).map(String::as_str) == Some(clawpen_core::spec::ROLE_POOL) => {
                let found = self.store.agent_by_container(&ev.container_id).await;
                if matches!(found, Ok(None)) && matches!(ev.kind, RuntimeEventKind::Died { .. }) {
                    self.pool_sandbox_lost(&ev.container_id).await;
                }
                found
            }
            None => return,
        };
        let Ok(Some(agent)) = agent else { return };
        let id = agent.id.clone();
        let sys = Actor::system();
        match ev.kind {
            RuntimeEventKind::Oom => {
                warn!(agent = %id, "out of memory in the sandbox");
                if let Err(e) = self.store.record_oom(&id).await {
                    warn!(error = %e, "cannot record an OOM");
                }
                self.audit(&agent.tenant_id, Some(&id), &sys, "agent.oom", "the kernel killed a process in the sandbox for memory", None).await;
            }
            RuntimeEventKind::Died { exit_code } if agent.desired_state == DesiredState::Running => {
                // Its own hibernation, a restart in progress, or a crash loop already handled:
                // not a crash to count.
                let busy = self.with_life(&id, |l| l.busy);
                if agent.hibernation != Tier::Awake || agent.observed_state == ObservedState::Crashloop || busy {
                    return;
                }
                if agent.container_id.as_deref().is_some_and(|c| c != ev.container_id) {
                    return;
                }
                let oom = self.runtime.inspect(&ev.container_id).await.map(|s| s.oom_killed).unwrap_or(false);
                let why = exit_reason(exit_code, oom);
                warn!(agent = %id, ?exit_code, oom, "sandbox exited while it should run");
                self.release(&id);
                let obs = Observation {
                    state: ObservedState::Exited,
                    container_id: Some(ev.container_id.clone()),
                    spec_hash: agent.spec_hash.clone(),
                    exit_code,
                    last_error: Some(why.clone()),
                };
                if let Err(e) = self.store.set_observed(&id, &obs).await {
                    warn!(error = %e, "cannot record an exit");
                }
                self.audit(&agent.tenant_id, Some(&id), &sys, "agent.exited", &format!("the sandbox {why}"), Some(serde_json::json!({"exit_code": exit_code, "oom": oom}))).await;
                let guard = self.config.fleet.guard();
                let next = self.with_life(&id, |l| l.failed(crate::supervisor::now_ms(), &why, &guard));
                if let Some(clawpen_core::lifecycle::Action::CrashLoop { reason }) = next {
                    if let Ok(tenant) = self.store.get_tenant(&agent.tenant_id).await {
                        let _guard = self.lock_agent(&id).await;
                        if let Err(e) = self.trip(&tenant, &id, &reason).await {
                            warn!(agent = %id, error = %e.message, "cannot stop a crash-looping agent");
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// The uid an agent's sandbox runs as: its own once it claimed a warm-pool sandbox, else its
/// tenant's.
pub fn uid_of(tenant: &Tenant, agent: &Agent) -> u32 {
    agent.uid.unwrap_or(tenant.uid) as u32
}

/// Why a sandbox stopped, in words for the API and the audit log.
pub fn exit_reason(exit_code: Option<i64>, oom: bool) -> String {
    if oom {
        format!("was killed for memory (OOM, exit code {})", exit_code.map_or("?".into(), |c| c.to_string()))
    } else {
        format!("exited with code {}", exit_code.map_or("?".into(), |c| c.to_string()))
    }
}

impl App {
    /// Puts the sandbox of an agent that should run but sleeps (a hibernation tier, or a crash
    /// loop) into the state its record asks for. Callers hold the agent's lock.
    async fn settle_asleep(&self, tenant: &Tenant, a: &Agent) -> Result<(), ApiError> {
        let _ = tenant;
        let name = clawpen_core::spec::container_name(&self.instance, &a.id);
        let crashloop = a.observed_state == ObservedState::Crashloop;
        let tier = if crashloop { Tier::Stopped } else { a.hibernation };
        let st = match self.runtime.inspect(&name).await {
            Ok(st) => st,
            Err(RuntimeError::NotFound) => {
                if !crashloop {
                    self.store.set_observed(&a.id, &Observation { state: ObservedState::Absent, ..Default::default() }).await?;
                }
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        match (tier, st.state) {
            (Tier::Paused, SandboxState::Running) => {
                info!(agent = %a.id, "finishing an interrupted pause");
                self.runtime.pause(&st.id).await?;
            }
            (Tier::Stopped, SandboxState::Running | SandboxState::Paused) => {
                info!(agent = %a.id, "finishing an interrupted stop");
                self.runtime.stop(&st.id, self.config.sandbox.stop_grace_secs).await?;
                self.release(&a.id);
            }
            (Tier::Removed, _) => {
                info!(agent = %a.id, "finishing an interrupted removal");
                self.runtime.remove(&st.id).await?;
                self.release(&a.id);
            }
            _ => {}
        }
        // The record says what the engine now shows (an interrupted wake may have left
        // `starting`).
        if !crashloop {
            let state = match tier {
                Tier::Paused => ObservedState::Paused,
                Tier::Stopped => ObservedState::Stopped,
                _ => ObservedState::Absent,
            };
            let obs = if state == ObservedState::Absent {
                Observation { state, ..Default::default() }
            } else {
                Observation { state, container_id: Some(st.id), spec_hash: st.labels.get(labels::SPEC_HASH).cloned(), exit_code: None, last_error: None }
            };
            self.store.set_observed(&a.id, &obs).await?;
        }
        Ok(())
    }
}
