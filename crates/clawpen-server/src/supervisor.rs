//! The supervisor: a loop that asks the lifecycle machine ([`clawpen_core::lifecycle`]) what each
//! agent that should run needs (a restart after its backoff, a deeper hibernation tier, a health
//! check) and carries it out, each agent in its own task so that one tenant's slow or crashing
//! sandbox never holds up another's. Also here: the activity that keeps an agent awake, waking it
//! from any tier, and admission by committed memory.

use std::time::Duration;

use clawpen_agent::client;
use clawpen_core::ids::AgentId;
use clawpen_core::lifecycle::{Action, Life, Tier};
use clawpen_runtime::SandboxState;
use clawpen_store::{Agent, DesiredState, ObservedState, Observation, Tenant};
use tracing::{info, warn};

use crate::app::App;
use crate::error::ApiError;
use crate::fleet::Actor;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A wake that did not bring the agent up, as a 503 that points at its logs.
pub(crate) fn wake_failed(id: &AgentId, e: ApiError) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "wake_failed",
        format!("the agent was not running and could not be started ({}); see GET /api/v1/agents/{id}/logs", e.message),
    )
}

/// The machine's view of an agent as the store remembers it (after a restart of the server).
fn life_of(a: &Agent, now: i64) -> Life {
    let mut life = Life::new(now);
    life.tier = a.hibernation;
    life.last_active = a.last_active_at.unwrap_or(a.updated_at).min(now);
    life.restarts = a.restarts.clone();
    if a.observed_state == ObservedState::Crashloop {
        life.crashloop = Some(a.last_error.clone().unwrap_or_else(|| "crash loop".into()));
    }
    life
}

/// Keeps an agent awake while it lives: a message being answered or an open connection. The
/// idle clock starts again when it is dropped.
pub struct Activity {
    app: App,
    agent: AgentId,
    /// A person's doing (a message, a connection): its tenant's activity, kept in the store.
    person: bool,
}

impl Drop for Activity {
    fn drop(&mut self) {
        let now = now_ms();
        self.app.with_life(&self.agent, |l| l.disconnected(now));
        if !self.person {
            return;
        }
        let (store, id) = (self.app.store.clone(), self.agent.clone());
        tokio::spawn(async move {
            let _ = store.set_last_active(&id, now).await;
        });
    }
}

impl App {
    /// Runs `f` on the agent's lifecycle record, making one if there is none.
    pub fn with_life<R>(&self, id: &AgentId, f: impl FnOnce(&mut Life) -> R) -> R {
        let mut lives = self.lives.lock().expect("lives");
        let life = lives.entry(id.clone()).or_insert_with(|| Life::new(now_ms()));
        f(life)
    }

    /// Marks the agent in use until the returned guard is dropped.
    pub fn activity(&self, id: &AgentId) -> Activity {
        let now = now_ms();
        let (store, agent) = (self.store.clone(), id.clone());
        tokio::spawn(async move {
            let _ = store.set_last_active(&agent, now).await;
        });
        self.with_life(id, |l| l.connected(now));
        Activity { app: self.clone(), agent: id.clone(), person: true }
    }

    /// Keeps the agent awake while the guard lives, like [`App::activity`], without counting as
    /// its tenant's activity (`last_active_at`, which the inactivity rules read): a scheduled
    /// run is the agent's own doing, not a person's.
    pub fn busy(&self, id: &AgentId) -> Activity {
        self.with_life(id, |l| l.connected(now_ms()));
        Activity { app: self.clone(), agent: id.clone(), person: false }
    }

    /// [`App::ensure_awake`] for a message or connection: errors a client can act on pass
    /// through, anything else becomes a 503 that points at the logs.
    pub async fn wake_for(&self, tenant: &Tenant, id: &AgentId, actor: &Actor, reason: &str) -> Result<(), ApiError> {
        self.ensure_awake(tenant, id, actor, reason).await.map_err(|e| match e.code {
            "agent_crashloop" | "node_full" | "not_found" => e,
            _ => wake_failed(id, e),
        })
    }

    /// Makes sure the agent's sandbox runs and answers, waking it from whichever tier it
    /// sleeps in (or starting it if it was stopped). Holds the agent's lock, so it never
    /// interleaves with a hibernation step. A crash-looping agent is not woken: that takes a
    /// manual start.
    pub async fn ensure_awake(&self, tenant: &Tenant, id: &AgentId, actor: &Actor, reason: &str) -> Result<(), ApiError> {
        let _guard = self.lock_agent(id).await;
        let agent = self.store.get_agent(&tenant.id, id).await?;
        if agent.observed_state == ObservedState::Crashloop {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "agent_crashloop",
                format!(
                    "the agent was stopped after crashing repeatedly ({}); fix the cause, then POST /api/v1/agents/{id}/start",
                    agent.last_error.as_deref().unwrap_or("no reason recorded")
                ),
            ));
        }
        if agent.desired_state == DesiredState::Running && agent.observed_state == ObservedState::Running && agent.hibernation == Tier::Awake {
            return Ok(());
        }
        if agent.desired_state != DesiredState::Running {
            self.store.set_desired(id, DesiredState::Running).await?;
        }
        let slot = self.take_pool_slot(tenant, &agent).await;
        let kind = if slot.is_some() { "warm" } else { "cold" };
        self.audit(&tenant.id, Some(id), actor, "agent.wake", reason, Some(serde_json::json!({"from": agent.hibernation, "was": agent.observed_state, "kind": kind}))).await;
        self.bring_up_from(tenant, id, slot).await
    }

    /// Runs [`App::supervise_once`] every `fleet.tick_ms` until the task is dropped.
    pub async fn run_supervisor(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.fleet.tick_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.is_reconciled() {
                self.supervise_once().await;
            }
        }
    }

    /// One look at every agent: hands each due action to its own task.
    pub async fn supervise_once(&self) {
        let now = now_ms();
        let (agents, tenants) = match tokio::try_join!(self.store.all_agents(), self.store.list_tenants()) {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "supervisor: cannot read the agents");
                return;
            }
        };
        let guard = self.config.fleet.guard();
        let mut todo = Vec::new();
        {
            let mut lives = self.lives.lock().expect("lives");
            lives.retain(|id, _| agents.iter().any(|a| &a.id == id && a.desired_state == DesiredState::Running));
            for a in &agents {
                if a.desired_state != DesiredState::Running {
                    continue;
                }
                let Some(tenant) = tenants.iter().find(|t| t.id == a.tenant_id) else { continue };
                // An agent on a node that does not answer waits for the node (or its move).
                if a.node.as_deref().is_some_and(|n| !self.node_is_up(n)) || a.observed_state == ObservedState::Lost {
                    continue;
                }
                let life = lives.entry(a.id.clone()).or_insert_with(|| life_of(a, now));
                let tiers = self.config.plan_or_default(&tenant.plan).tiers();
                if let Some(action) = life.tick(now, &tiers, &guard) {
                    life.busy = true;
                    todo.push((tenant.clone(), a.id.clone(), action));
                }
            }
        }
        for (tenant, id, action) in todo {
            tokio::spawn(self.clone().carry_out(tenant, id, action));
        }
        match self.load_backups().await {
            Ok(()) => self.start_due_backups(&agents, &tenants, now),
            Err(e) => warn!(error = %e.message, "supervisor: cannot read the backups"),
        }
        self.start_inactivity_check(&agents, &tenants, now);
    }

    async fn carry_out(self, tenant: Tenant, id: AgentId, action: Action) {
        let _guard = self.lock_agent(&id).await;
        let result = match &action {
            Action::Hibernate(tier) => self.hibernate(&tenant, &id, *tier).await,
            Action::CheckHealth => self.check_health(&tenant, &id).await,
            Action::Restart { reason } => self.restart(&tenant, &id, reason).await,
            Action::CrashLoop { reason } => self.trip(&tenant, &id, reason).await,
        };
        self.with_life(&id, |l| l.busy = false);
        if let Err(e) = result {
            warn!(agent = %id, ?action, error = %e.message, "supervisor step failed");
        }
    }

    /// Puts an idle agent into `tier`, unless it was used since the decision. Callers hold the
    /// agent's lock.
    pub(crate) async fn hibernate(&self, tenant: &Tenant, id: &AgentId, tier: Tier) -> Result<(), ApiError> {
        let now = now_ms();
        let tiers = self.config.plan_or_default(&tenant.plan).tiers();
        let (idle, still_due) = self.with_life(id, |l| {
            let idle = if l.connections > 0 { 0 } else { now - l.last_active };
            (idle, l.connections == 0 && tiers.tier_for(idle) >= tier && l.tier < tier)
        });
        if !still_due {
            return Ok(());
        }
        self.hibernate_now(tenant, id, tier, &Actor::system(), &format!("idle for {} s", idle / 1000)).await?;
        self.backup_after_idle(tenant, id);
        Ok(())
    }

    /// Puts the agent into `tier` now. Callers hold the agent's lock.
    pub(crate) async fn hibernate_now(&self, tenant: &Tenant, id: &AgentId, tier: Tier, actor: &Actor, reason: &str) -> Result<(), ApiError> {
        let agent = self.store.get_agent(&tenant.id, id).await?;
        if agent.desired_state != DesiredState::Running || agent.observed_state == ObservedState::Crashloop || tier == Tier::Awake {
            return Ok(());
        }
        let name = clawpen_core::spec::container_name(&self.instance, id);
        // A sandbox that is gone or not running (it exited, or a start failed) is the agent's
        // state, not a failure of ours: a 409 the owner can act on.
        let not_running = |state: &str| {
            ApiError::new(axum::http::StatusCode::CONFLICT, "not_running", format!("the agent's sandbox is {state}; start the agent before putting it to sleep"))
        };
        let inspect = || async {
            match self.runtime.inspect(&name).await {
                Err(clawpen_runtime::RuntimeError::NotFound) => Err(not_running("gone")),
                other => other.map_err(ApiError::from),
            }
        };
        // Intent first: the sandbox's exit that follows is then not taken for a crash.
        self.store.set_hibernation(id, tier).await?;
        let done: Result<Observation, ApiError> = async {
            match tier {
                Tier::Paused => {
                    let st = inspect().await?;
                    if st.state != SandboxState::Running {
                        return Err(not_running(&format!("{:?}", st.state).to_lowercase()));
                    }
                    self.runtime.pause(&st.id).await?;
                    Ok(Observation { state: ObservedState::Paused, container_id: Some(st.id), spec_hash: agent.spec_hash.clone(), exit_code: None, last_error: None })
                }
                Tier::Stopped => {
                    let st = inspect().await?;
                    self.runtime.stop(&st.id, self.config.sandbox.stop_grace_secs).await?;
                    self.release(id);
                    Ok(Observation { state: ObservedState::Stopped, container_id: Some(st.id), spec_hash: agent.spec_hash.clone(), exit_code: None, last_error: None })
                }
                Tier::Removed => {
                    self.runtime.remove(&name).await?;
                    self.release(id);
                    Ok(Observation { state: ObservedState::Absent, ..Default::default() })
                }
                Tier::Awake => unreachable!("checked above"),
            }
        }
        .await;
        match done {
            Ok(obs) => {
                self.store.set_observed(id, &obs).await?;
                self.with_life(id, |l| l.hibernated(tier));
                info!(agent = %id, tier = tier.as_str(), reason, "agent hibernated");
                self.audit(&tenant.id, Some(id), actor, "agent.hibernate", reason, Some(serde_json::json!({"tier": tier, "from": agent.hibernation}))).await;
                Ok(())
            }
            Err(e) => {
                // Not hibernated after all: the health check and restarts look after it again.
                self.store.set_hibernation(id, agent.hibernation).await?;
                Err(e)
            }
        }
    }

    async fn check_health(&self, tenant: &Tenant, id: &AgentId) -> Result<(), ApiError> {
        let agent = self.store.get_agent(&tenant.id, id).await?;
        if agent.hibernation != Tier::Awake || agent.desired_state != DesiredState::Running {
            return Ok(());
        }
        let timeout = Duration::from_millis(self.config.fleet.health_timeout_ms);
        let ok = match agent.container_id.as_deref() {
            Some(c) => client::health(&self.agent_addr(tenant, id, c, crate::fleet::uid_of(tenant, &agent)), timeout).await.is_ok(),
            None => false,
        };
        let now = now_ms();
        let guard = self.config.fleet.guard();
        let next = self.with_life(id, |l| l.health(now, ok, &guard));
        if !ok {
            warn!(agent = %id, "health check failed");
            self.audit(&tenant.id, Some(id), &Actor::system(), "agent.unhealthy", "the agent did not answer /health", None).await;
        }
        if let Some(Action::CrashLoop { reason }) = next {
            return self.trip(tenant, id, &reason).await;
        }
        Ok(())
    }

    /// Restarts a sandbox that died or stopped answering. Callers hold the agent's lock.
    async fn restart(&self, tenant: &Tenant, id: &AgentId, reason: &str) -> Result<(), ApiError> {
        let agent = self.store.get_agent(&tenant.id, id).await?;
        if agent.desired_state != DesiredState::Running || agent.hibernation != Tier::Awake {
            self.with_life(id, |l| l.restart_at = None);
            return Ok(());
        }
        let now = now_ms();
        let restarts = self.with_life(id, |l| {
            l.restarted(now);
            l.restarts.clone()
        });
        self.store.set_restarts(id, &restarts).await?;
        self.audit(&tenant.id, Some(id), &Actor::system(), "agent.restart", reason, Some(serde_json::json!({"restarts_in_window": restarts.len()}))).await;
        // A hung sandbox is stopped first; one that exited is simply started again.
        let name = clawpen_core::spec::container_name(&self.instance, id);
        if let Ok(st) = self.runtime.inspect(&name).await {
            if matches!(st.state, SandboxState::Running | SandboxState::Paused) {
                self.runtime.stop(&st.id, self.config.sandbox.stop_grace_secs).await?;
            }
        }
        match self.bring_up(tenant, id).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let why = self.store.get_agent(&tenant.id, id).await.ok().and_then(|a| a.last_error).unwrap_or(e.message.clone());
                let guard = self.config.fleet.guard();
                let next = self.with_life(id, |l| l.failed(now_ms(), &why, &guard));
                if let Some(Action::CrashLoop { reason }) = next {
                    self.trip(tenant, id, &reason).await?;
                }
                Err(e)
            }
        }
    }

    /// Stops an agent that keeps crashing and leaves it in `crashloop` until a manual start.
    /// Callers hold the agent's lock.
    pub(crate) async fn trip(&self, tenant: &Tenant, id: &AgentId, reason: &str) -> Result<(), ApiError> {
        let agent = self.store.get_agent(&tenant.id, id).await?;
        let name = clawpen_core::spec::container_name(&self.instance, id);
        let mut container = agent.container_id.clone();
        if let Ok(st) = self.runtime.inspect(&name).await {
            if matches!(st.state, SandboxState::Running | SandboxState::Paused) {
                self.runtime.stop(&st.id, self.config.sandbox.stop_grace_secs).await?;
            }
            container = Some(st.id);
        }
        self.release(id);
        let obs = Observation {
            state: ObservedState::Crashloop,
            container_id: container,
            spec_hash: agent.spec_hash.clone(),
            exit_code: agent.exit_code,
            last_error: Some(reason.to_owned()),
        };
        self.store.set_observed(id, &obs).await?;
        self.with_life(id, |l| {
            l.crashloop = Some(reason.to_owned());
            l.restart_at = None;
        });
        warn!(agent = %id, reason, "crash loop: the agent is stopped until a manual start");
        self.audit(&tenant.id, Some(id), &Actor::system(), "agent.crashloop", reason, Some(serde_json::json!({"exit_code": agent.exit_code}))).await;
        Ok(())
    }
}
