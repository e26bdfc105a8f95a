//! The warm pool: sandboxes made before any agent exists, so that an agent's first start is a
//! claim (a few renames and one request to the sandbox) instead of a container create.
//!
//! A sandbox's bind mounts, uid and environment are fixed when its container is made, so a pool
//! sandbox gets what any agent could be given: a fresh uid from the never-reused uid counter, its
//! own empty dirs under `<data-dir>/pool/<slot>/`, one plan's limits and runtime, and no identity
//! (its agent runs in pool mode and answers only `/health`). The pool keeps sandboxes per class:
//! plans whose sandboxes would be the same (same limits, image and runtime) share one; the
//! default plan's keeps `fleet.warm_pool` ready, another plan's what it sets as `warm_pool`
//! (none unless it does); an agent claims only a
//! sandbox whose spec its own plan gives. A claim, under the agent's lock:
//!
//! 1. writes the intent to the store (the agent takes the slot's uid, its record names the pool
//!    container, observed `starting`) and the audit log;
//! 2. moves the slot's dirs into the agent's places with `rename` (the running container's bind
//!    mounts follow the directories), seeds the workspace, and serves `control.sock` in the moved
//!    run dir for the agent's uid;
//! 3. renames the container to the agent's container name;
//! 4. writes the identity file into the run dir and posts `/claim`: the agent must answer with
//!    that identity.
//!
//! A failed claim is undone (container removed, the agent's dirs made again) and the start goes
//! on cold. After a crash the reconciler finishes a claim whose container already carries the
//! agent's name and undoes any other ([`App::settle_claim`]); unclaimed pool sandboxes carry no
//! tenant data, so at start-up they are all removed and the pool is filled again.
//!
//! The claimed container keeps its first-generation config (pool paths, pool hostname, no ids
//! in its environment), so it cannot be started again once stopped: [`App::bring_up`] re-creates
//! it from the agent's own spec then, workspace kept.

use std::sync::Mutex;
use std::time::Duration;

use clawpen_agent::client::{self, AgentAddr};
use clawpen_core::ids::AgentId;
use clawpen_core::labels;
use clawpen_core::plan::Plan;
use clawpen_core::spec::{self, PoolSandbox, SandboxSpec, Volume};
use clawpen_hostfs::Peer;
use clawpen_runtime::SandboxStatus;
use clawpen_store::{Agent, ObservedState, Observation, Tenant};
use tracing::{info, warn};

use crate::app::{App, Holder};
use crate::error::ApiError;
use crate::fleet::Actor;

/// The pool's sandboxes, warming or ready. Owned by [`App`]; a slot leaves it when claimed,
/// given up for room, or lost.
#[derive(Default)]
pub struct Pool {
    slots: Mutex<Vec<Slot>>,
    /// Wakes the refill task (after a claim, an eviction, a lost sandbox).
    wake: tokio::sync::Notify,
}

/// One pool sandbox.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The slot's number (the uid counter's value that gave its uid): names its container and
    /// its dirs, never reused.
    pub n: u64,
    pub uid: u32,
    /// Empty while the sandbox is being made.
    pub container_id: String,
    pub spec_hash: String,
    /// The class of plans it was made for (see [`App::pool_classes`]).
    pub class: String,
    /// The sandbox answered `/health`; only ready slots are handed out.
    pub ready: bool,
    /// Handed to an agent; the slot leaves the pool when the claim is done or undone.
    pub claiming: bool,
}

impl Pool {
    /// Slots ready to be claimed.
    pub fn ready(&self) -> usize {
        self.slots.lock().expect("pool").iter().filter(|s| s.ready).count()
    }

    /// Slots of one class, warming or ready.
    fn count(&self, class: &str) -> usize {
        self.slots.lock().expect("pool").iter().filter(|s| s.class == class).count()
    }

    /// Marks the first ready slot `fits` accepts as being claimed and returns it; it stays
    /// listed (so the stray sweep knows its container) until [`Pool::forget`].
    fn take(&self, fits: impl Fn(&Slot) -> bool) -> Option<Slot> {
        let mut slots = self.slots.lock().expect("pool");
        let slot = slots.iter_mut().find(|s| s.ready && !s.claiming && fits(s))?;
        slot.ready = false;
        slot.claiming = true;
        Some(slot.clone())
    }

    fn knows(&self, n: u64) -> bool {
        self.slots.lock().expect("pool").iter().any(|s| s.n == n)
    }

    fn forget(&self, n: u64) {
        self.slots.lock().expect("pool").retain(|s| s.n != n);
    }

    fn forget_container(&self, container_id: &str) -> Option<Slot> {
        let mut slots = self.slots.lock().expect("pool");
        let i = slots.iter().position(|s| s.container_id == container_id)?;
        Some(slots.remove(i))
    }

    /// Asks the refill task to look now.
    pub fn refill_soon(&self) {
        self.wake.notify_one();
    }
}

impl App {
    /// The default plan, whose class of pool sandboxes comes first.
    pub fn pool_plan(&self) -> &Plan {
        self.config.plan_or_default(&self.config.default_plan)
    }

    /// The classes of pool sandboxes: (a plan of the class, the class's key, how many to keep).
    /// Plans whose pool sandboxes would have the same spec are one class; the default plan's
    /// comes first. A class keeps the most any of its plans asks for (`warm_pool`; for the
    /// default plan `fleet.warm_pool` unless it sets one).
    pub fn pool_classes(&self) -> Vec<(String, String, u32)> {
        let mut names: Vec<&String> = self.config.plans.keys().collect();
        names.sort_by_key(|n| **n != self.config.default_plan);
        let mut classes: Vec<(String, String, u32)> = Vec::new();
        for name in names {
            let plan = &self.config.plans[name];
            let key = self.pool_spec(0, u32::MAX, plan).spec_hash().to_owned();
            let want = plan.warm_pool.unwrap_or(if *name == self.config.default_plan { self.config.fleet.warm_pool } else { 0 });
            match classes.iter_mut().find(|c| c.1 == key) {
                Some(c) => c.2 = c.2.max(want),
                None => classes.push((name.clone(), key, want)),
            }
        }
        classes
    }

    /// The spec of pool slot `n` with `uid`, made with `plan`'s limits. An agent may claim a
    /// slot only when its own plan gives the slot's exact spec (same hash).
    pub fn pool_spec(&self, n: u64, uid: u32, plan: &Plan) -> SandboxSpec {
        SandboxSpec::for_pool(PoolSandbox {
            instance: &self.instance,
            slot: n,
            uid,
            image: plan.image.as_deref().unwrap_or(&self.image),
            workspace_dir: self.pool_layout().pool_workspace(n),
            run_dir: self.pool_layout().pool_run_dir(n),
            plan,
            limits: self.config.agent,
            executable: if plan.image.is_none() { self.agent_exe.clone() } else { None },
        })
    }

    /// Takes a ready pool sandbox for this agent's start, if it may have one: the agent has no
    /// sandbox, its workspace is pristine (a first start), and its plan gives the pool's spec.
    pub async fn take_pool_slot(&self, tenant: &Tenant, agent: &Agent) -> Option<Slot> {
        if self.config.fleet.warm_pool == 0 || agent.observed_state != ObservedState::Absent || agent.container_id.is_some() {
            return None;
        }
        // The pool is on the first node: an agent whose filesystem is on another stays there.
        if agent.node.as_deref().is_some_and(|n| !self.nodes_share_disk(n, self.nodes.default_node())) {
            return None;
        }
        if !self.pool_layout().is_pristine(&agent.id).unwrap_or(false) {
            return None;
        }
        // No filesystem here but a snapshot to restore: a cold start brings the workspace back.
        if !self.pool_layout().has_volume(&agent.id) && self.may_have_snapshot(tenant, &agent.id).await {
            return None;
        }
        let plan = self.config.plan_or_default(&tenant.plan);
        self.pool.take(|s| self.pool_spec(s.n, s.uid, plan).spec_hash() == s.spec_hash)
    }

    /// Claims `slot` for the agent (see the module doc); returns the container's id. On failure
    /// the claim is undone and the agent is left without a sandbox, ready for a cold start.
    /// Callers hold the agent's lock.
    pub(crate) async fn claim(&self, tenant: &Tenant, id: &AgentId, slot: &Slot) -> Result<String, ApiError> {
        // The pool lives on the first node, and so does the agent from here on (recorded first,
        // so its filesystem is looked for there).
        self.store.set_node(id, Some(self.nodes.default_node())).await?;
        self.store.set_claim(id, slot.uid as i64, &slot.container_id, &slot.spec_hash).await?;
        let detail = serde_json::json!({"kind": "warm", "container": slot.container_id, "uid": slot.uid, "slot": slot.n});
        self.audit(&tenant.id, Some(id), &Actor::system(), "agent.claim", "a warm-pool sandbox becomes the agent's", Some(detail)).await;
        let pool_name = spec::pool_container_name(&self.instance, slot.n);
        let finished = self.finish_claim(tenant, id, slot.uid, &slot.container_id, &pool_name).await;
        // Claimed or given up: the slot leaves the pool, which makes another.
        self.pool.forget(slot.n);
        self.pool.refill_soon();
        match finished {
            Ok(()) => {
                self.transfer(slot.n, id);
                self.metrics.starts_warm.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                info!(agent = %id, slot = slot.n, uid = slot.uid, "claimed a warm-pool sandbox");
                Ok(slot.container_id.clone())
            }
            Err(e) => {
                warn!(agent = %id, slot = slot.n, error = %e.message, "warm claim failed; undoing it");
                self.metrics.claim_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.undo_claim(tenant, id, &slot.container_id).await;
                self.committed.lock().expect("committed").remove(&Holder::Pool(slot.n));
                let _ = self.pool_layout().remove_pool_slot(slot.n);
                self.audit(&tenant.id, Some(id), &Actor::system(), "agent.claim-failed", &e.message, None).await;
                Err(e)
            }
        }
    }

    /// Steps 2 to 4 of a claim of the container now named `current_name`; each can be redone.
    async fn finish_claim(&self, tenant: &Tenant, id: &AgentId, uid: u32, container_id: &str, current_name: &str) -> Result<(), ApiError> {
        // While the container has its pool name, its dirs may not have moved yet.
        let n = spec::pool_slot(&self.instance, current_name);
        self.close_control(id);
        if let Some(n) = n {
            self.pool_layout().claim_slot(n, id, uid).map_err(|e| ApiError::internal(format!("giving the pool slot's filesystem to {id}: {e}")))?;
        }
        self.prepare_sandbox(tenant, id, uid).await?;
        let name = spec::container_name(&self.instance, id);
        if current_name != name {
            self.runtime.rename(container_id, &name).await?;
        }
        self.pool_layout().write_identity(&tenant.id, id).map_err(|e| ApiError::internal(format!("writing the identity of {id}: {e}")))?;
        let timeout = Duration::from_millis(self.config.fleet.health_timeout_ms);
        let h = client::claim(&self.agent_addr(tenant, id, container_id, uid), timeout).await?;
        if h.agent_id != id.as_str() || h.tenant_id != tenant.id.as_str() {
            return Err(ApiError::internal(format!("the claimed sandbox answered as {:?} of {:?}", h.agent_id, h.tenant_id)));
        }
        Ok(())
    }

    /// Takes an interrupted or failed claim back: the pool container goes, a workspace the agent
    /// never used is made again for its uid, and the record says there is no sandbox.
    async fn undo_claim(&self, tenant: &Tenant, id: &AgentId, container_id: &str) {
        if let Err(e) = self.runtime.remove(container_id).await {
            warn!(agent = %id, error = %e, "cannot remove the pool sandbox of an undone claim");
        }
        self.release(id);
        self.close_control(id);
        let _ = self.pool_layout().remove_identity(id);
        let uid = self.store.find_agent(id).await.ok().flatten().and_then(|a| a.uid).unwrap_or(tenant.uid) as u32;
        let remade = match self.pool_layout().reset_pristine(id) {
            Ok(_) => self.prepare_sandbox(tenant, id, uid).await,
            Err(e) => Err(ApiError::internal(e)),
        };
        if let Err(e) = remade {
            warn!(agent = %id, error = %e.message, "cannot make the filesystem of an undone claim again");
        }
        if let Err(e) = self.store.set_observed(id, &Observation { state: ObservedState::Absent, ..Default::default() }).await {
            warn!(agent = %id, error = %e, "cannot record an undone claim");
        }
    }

    /// At start-up, for an agent whose record names a pool container: a claim that got as far as
    /// renaming the container is finished (identity written, `/claim` posted), any other is
    /// undone. Callers hold the agent's lock.
    pub(crate) async fn settle_claim(&self, tenant: &Tenant, a: &Agent, c: &SandboxStatus) {
        let uid = a.uid.unwrap_or(tenant.uid) as u32;
        let renamed = c.name == spec::container_name(&self.instance, &a.id);
        if renamed && c.state != clawpen_runtime::SandboxState::Running {
            // Claimed earlier and stopped since: bring_up makes it again when it is woken.
            return;
        }
        if renamed {
            // A claim that went through answers as its agent: nothing to finish.
            let timeout = Duration::from_millis(self.config.fleet.health_timeout_ms);
            if let Ok(h) = client::health(&self.agent_addr(tenant, &a.id, &c.id, uid), timeout).await {
                if h.agent_id == a.id.as_str() && h.tenant_id == a.tenant_id.as_str() {
                    return;
                }
            }
            match self.finish_claim(tenant, &a.id, uid, &c.id, &c.name).await {
                Ok(()) => {
                    info!(agent = %a.id, "finished an interrupted claim");
                    self.audit(&a.tenant_id, Some(&a.id), &Actor::system(), "reconcile.claim-finished", "a claim was interrupted", None).await;
                    return;
                }
                Err(e) => warn!(agent = %a.id, error = %e.message, "cannot finish an interrupted claim; undoing it"),
            }
        }
        info!(agent = %a.id, "undoing an interrupted claim");
        self.undo_claim(tenant, &a.id, &c.id).await;
        self.audit(&a.tenant_id, Some(&a.id), &Actor::system(), "reconcile.claim-undone", "a claim was interrupted before the sandbox was renamed", None).await;
    }

    /// Gives up one ready pool sandbox so an agent can have its memory; true if there was one.
    pub(crate) fn evict_pool_sandbox(&self) -> bool {
        let Some(slot) = self.pool.take(|_| true) else { return false };
        self.pool.forget(slot.n);
        self.pool.refill_soon();
        self.committed.lock().expect("committed").remove(&Holder::Pool(slot.n));
        info!(slot = slot.n, "giving up a warm-pool sandbox for an agent's start");
        let app = self.clone();
        tokio::spawn(async move { app.discard(&slot).await });
        true
    }

    /// A pool sandbox died before it was claimed: it leaves the pool, and the pool refills.
    pub(crate) async fn pool_sandbox_lost(&self, container_id: &str) {
        if let Some(slot) = self.pool.forget_container(container_id) {
            warn!(slot = slot.n, "a warm-pool sandbox exited; replacing it");
            self.committed.lock().expect("committed").remove(&Holder::Pool(slot.n));
            self.discard(&slot).await;
            self.pool.refill_soon();
        }
    }

    async fn discard(&self, slot: &Slot) {
        let name = spec::pool_container_name(&self.instance, slot.n);
        let target = if slot.container_id.is_empty() { name.as_str() } else { slot.container_id.as_str() };
        if let Err(e) = self.runtime.remove(target).await {
            warn!(slot = slot.n, error = %e, "cannot remove a warm-pool sandbox");
        }
        let _ = self.pool_layout().remove_pool_slot(slot.n);
    }

    /// At start-up: removes every pool sandbox of this installation no agent record names, and
    /// every pool dir (claimed slots' dirs have moved into their agents' places). Returns what it
    /// removed.
    pub(crate) async fn sweep_pool(&self, containers: &[SandboxStatus], agents: &[Agent]) -> anyhow::Result<usize> {
        let mut removed = 0;
        for c in containers.iter().filter(|c| c.labels.get(labels::ROLE).map(String::as_str) == Some(spec::ROLE_POOL)) {
            if agents.iter().any(|a| a.container_id.as_deref() == Some(c.id.as_str())) {
                info!(container = %c.name, "adopting a claimed warm-pool sandbox");
                continue;
            }
            info!(container = %c.name, "removing an unclaimed warm-pool sandbox");
            self.runtime.remove(&c.id).await?;
            removed += 1;
        }
        self.pool_layout().clear_pool()?;
        Ok(removed)
    }

    /// Removes pool sandboxes and dirs that are in no slot and no agent's record: a container
    /// whose create was still under way in the engine when a previous server was killed
    /// appears after the start-up sweep.
    async fn sweep_strays(&self) -> anyhow::Result<()> {
        for c in self.runtime.list(labels::INSTANCE, &self.instance).await? {
            let Some(n) = spec::pool_slot(&self.instance, &c.name).filter(|_| is_pool(&c)) else { continue };
            if self.pool.knows(n) || self.store.agent_by_container(&c.id).await?.is_some() {
                continue;
            }
            info!(container = %c.name, "removing a stray warm-pool sandbox");
            self.runtime.remove(&c.id).await?;
        }
        for n in self.pool_layout().pool_slots_on_disk().into_iter().filter(|n| !self.pool.knows(*n)) {
            let _ = self.pool_layout().remove_pool_slot(n);
        }
        Ok(())
    }

    /// Keeps `fleet.warm_pool` sandboxes warming or ready, one at a time, after the start-up
    /// reconciliation; wakes after each claim and every second, and sweeps strays every few
    /// seconds. Runs until the task is dropped.
    pub async fn run_pool(self) {
        let mut backoff = Duration::from_millis(500);
        let mut swept = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = self.pool.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if !self.is_reconciled() {
                continue;
            }
            if swept.elapsed() >= Duration::from_secs(3) {
                swept = tokio::time::Instant::now();
                if let Err(e) = self.sweep_strays().await {
                    warn!(error = %e, "cannot sweep stray warm-pool sandboxes");
                }
            }
            'classes: for (plan, class, want) in self.pool_classes() {
                while self.pool.count(&class) < want as usize {
                    match self.warm_one(&plan, &class).await {
                        Ok(true) => backoff = Duration::from_millis(500),
                        // No room on the node: skipped, not an error.
                        Ok(false) => break,
                        Err(e) => {
                            warn!(error = %e, plan, "cannot make a warm-pool sandbox");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                            break 'classes;
                        }
                    }
                }
            }
        }
    }

    /// Makes one pool sandbox of `plan` (of `class`) and waits for its `/health`. `Ok(false)`
    /// when the node's budget has no room for it.
    async fn warm_one(&self, plan: &str, class: &str) -> anyhow::Result<bool> {
        let plan = self.config.plan_or_default(plan).clone();
        let mib = plan.sandbox_mib();
        let (committed, budget) = self.committed_mib();
        if committed + mib > budget {
            return Ok(false);
        }
        let uid = self.store.next_uid(self.config.sandbox.uid_base).await?;
        let n = (uid - self.config.sandbox.uid_base as i64) as u64;
        let uid = uid as u32;
        if self.reserve(Holder::Pool(n), self.nodes.default_node(), mib).is_err() {
            return Ok(false);
        }
        let slot = |container_id: String, spec_hash: String| Slot { n, uid, container_id, spec_hash, class: class.to_owned(), ready: false, claiming: false };
        self.pool.slots.lock().expect("pool").push(slot(String::new(), String::new()));
        let made: anyhow::Result<(String, String)> = async {
            self.prepare_pool_volume(n, uid, Volume::of(&plan)).await.map_err(|e| anyhow::anyhow!(e.message))?;
            let spec = self.pool_spec(n, uid, &plan);
            let id = self.runtime.create_and_start(&spec).await?;
            let addr = AgentAddr::new(self.pool_layout().pool_run_dir(n), Peer { container_id: id.rsplit('/').next().unwrap_or(&id).to_owned(), uid: crate::app::peer_uid(plan.runtime, uid) });
            let h = client::wait_healthy(&addr, Duration::from_secs(self.config.sandbox.start_timeout_secs)).await?;
            anyhow::ensure!(h.agent_id.is_empty(), "a pool sandbox answered with an identity");
            Ok((id, spec.spec_hash().to_owned()))
        }
        .await;
        match made {
            Ok((id, hash)) => {
                let kept = {
                    let mut slots = self.pool.slots.lock().expect("pool");
                    slots.iter_mut().find(|s| s.n == n).map(|s| {
                        s.container_id.clone_from(&id);
                        s.spec_hash.clone_from(&hash);
                        s.ready = true;
                    })
                };
                // Given up while it warmed.
                if kept.is_none() {
                    self.discard(&slot(id, hash)).await;
                }
                Ok(true)
            }
            Err(e) => {
                self.pool.forget(n);
                self.committed.lock().expect("committed").remove(&Holder::Pool(n));
                self.discard(&slot(String::new(), String::new())).await;
                Err(e)
            }
        }
    }
}

/// Whether a container is a pool sandbox (claimed or not).
pub fn is_pool(c: &SandboxStatus) -> bool {
    c.labels.get(labels::ROLE).map(String::as_str) == Some(spec::ROLE_POOL)
}
