//! Per-tenant leases: the ledger's conditional write once per several calls instead of twice
//! per call.
//!
//! A tenant's calls draw on a **lease**: one hold in the store, reserved with the same
//! conditional write as any hold (so the store still refuses anything past the balance or the
//! monthly cap, whatever this process believes). Each call carves its own hold out of the lease
//! in memory; when the lease runs short the tenant's next call grows it in the store (asking for
//! the headroom, at least two seconds of the tenant's recent spending, then for exactly what is
//! missing), and below half the headroom it is grown in the background before it runs short.
//! Settled calls are charged against the lease in batches: one transaction records them all and
//! moves their total from held to spent. A call that cost more than was carved for it (a
//! provider billed past the bound) is charged in full: the excess comes from the balance alone.
//! An idle lease is released. A crash leaves the lease to expire and the sweeper voids it, like
//! any hold; what a crash can lose is the charge of calls settled in the last moments before it,
//! never credit.
//!
//! The in-memory state sits behind a plain mutex held for a few instructions, never across a
//! store call: an async mutex under 64 concurrent calls of one tenant turns every carve and settle
//! into a queue of task wake-ups. Store steps on the lease (open, grow, release) are taken one at
//! a time behind a second, async lock; a call whose carve fits never waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clawpen_core::ids::TenantId;
use clawpen_store::ledger::{CallRecord, Period, Refusal, Reserve, Settled};
use clawpen_store::Store;
use tokio::sync::Notify;

/// A lease asks for this many calls' worth at a time (then for exactly what is missing).
const LEASE_CALLS: i64 = 16;
/// An unused lease is released after this long without calls in flight.
pub const RELEASE_AFTER: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Budget {
    /// The lease's hold id, when one is open.
    lease: Option<String>,
    /// What the lease holds in the store now.
    held: i64,
    /// Carved out for calls in flight.
    carved: i64,
    /// Settled, not yet charged in the store.
    unflushed: Vec<CallRecord>,
    unflushed_cost: i64,
    /// Being charged in the store right now.
    flushing_cost: i64,
    /// Since when nothing has been in flight.
    idle_since: Option<Instant>,
    /// A growth of the lease is on its way to the store (see [`Budgets::carve`]).
    growing: bool,
    /// Carved in the current second, and carved per second over the last whole one.
    window: (Option<Instant>, i64),
    per_second: i64,
    /// The hold of the tenant's latest call, what a lease opened ahead of a run is sized by.
    last_amount: i64,
    /// Chats of the tenant open now (gateway connections): while any is, its lease is kept
    /// between messages, so that a message's first call does not wait for the store.
    pins: u32,
    /// The tenant was paused: calls must ask the store (which refuses while the pause lasts)
    /// instead of carving from what the lease still holds. Cleared when the store grants again.
    ask_store: bool,
}

impl Budget {
    fn in_use(&self) -> i64 {
        self.carved + self.unflushed_cost + self.flushing_cost
    }

    fn available(&self) -> i64 {
        if self.ask_store {
            return 0;
        }
        self.held - self.in_use()
    }

    /// What the lease should have to spare: several calls' worth, twice what is in use when
    /// many calls run at once, and what the tenant spends in [`HEADROOM_FOR`], so that a store
    /// busy for a while (a WAL checkpoint's fsync can take hundreds of milliseconds) does not run
    /// it dry.
    fn headroom(&self, amount: i64) -> i64 {
        let by_rate = self.per_second.saturating_mul(HEADROOM_FOR.as_millis() as i64) / 1000;
        (amount * LEASE_CALLS).max(2 * self.in_use()).max(by_rate)
    }

    fn count_carved(&mut self, amount: i64) {
        let now = Instant::now();
        let (start, carved) = &mut self.window;
        match start {
            Some(at) if now.duration_since(*at) < Duration::from_secs(1) => *carved += amount,
            Some(at) => {
                let secs = now.duration_since(*at).as_secs_f64();
                self.per_second = (*carved as f64 / secs) as i64;
                self.window = (Some(now), amount);
            }
            None => self.window = (Some(now), amount),
        }
    }
}

/// The lease aims to hold what the tenant spends in this long (see [`Budget::headroom`]).
const HEADROOM_FOR: Duration = Duration::from_secs(2);

/// Grows the lease `grow.hold_id` by `grow.amount` in the store and, when it grew and is still
/// the tenant's lease, in memory. `Ok(false)`: the lease was no longer open in the store.
async fn grow_lease(store: &Store, t: &Tenant, grow: &Reserve<'_>, p: &Period) -> clawpen_store::Result<Result<bool, Refusal>> {
    let grown = store.grow_hold(grow, p).await?;
    if grown == Ok(true) {
        let mut b = t.state();
        if b.lease.as_deref() == Some(grow.hold_id) {
            b.held += grow.amount;
            b.ask_store = false;
        }
    }
    Ok(grown)
}

/// Opens the lease `open` in the store and, when the store grants it, makes it the tenant's in
/// memory (holding `open.amount` beyond what is in use). The caller holds the tenant's store step.
async fn open_lease(store: &Store, leases: &Mutex<std::collections::HashSet<String>>, t: &Tenant, open: &Reserve<'_>, p: &Period) -> clawpen_store::Result<Result<(), Refusal>> {
    let outcome = store.reserve(open, p).await?;
    if outcome.is_ok() {
        leases.lock().expect("leases").insert(open.hold_id.to_owned());
        let mut b = t.state();
        b.lease = Some(open.hold_id.to_owned());
        b.ask_store = false;
        b.held = b.in_use() + open.amount;
    }
    Ok(outcome)
}

/// One tenant's budget.
#[derive(Default)]
struct Tenant {
    state: Mutex<Budget>,
    /// Held while the lease is opened, grown or released in the store: one step at a time.
    store_step: tokio::sync::Mutex<()>,
    /// Woken when a call of the tenant settles (what it held returns to the lease).
    settled: Notify,
}

impl Tenant {
    fn state(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.state.lock().expect("budget")
    }
}

/// What a flush charged for one tenant, for the caller's cap checks.
pub struct Flushed {
    pub tenant: TenantId,
    pub settled: Settled,
    /// The last call charged (its agent is named in a pause's audit entry).
    pub last: CallRecord,
}

pub struct Budgets {
    store: Store,
    ttl: Duration,
    map: Mutex<HashMap<TenantId, Arc<Tenant>>>,
    /// Leases open in this process; the sweeper leaves them alone.
    leases: Arc<Mutex<std::collections::HashSet<String>>>,
    dirty: Notify,
    /// The process is shutting down: leases are released even while chats are open.
    closing: std::sync::atomic::AtomicBool,
}

impl Budgets {
    pub fn new(store: Store, ttl: Duration) -> Budgets {
        Budgets { store, ttl, map: Mutex::default(), leases: Arc::default(), dirty: Notify::new(), closing: Default::default() }
    }

    fn tenant(&self, tenant: &TenantId) -> Arc<Tenant> {
        let mut map = self.map.lock().expect("budgets");
        match map.get(tenant) {
            Some(t) => Arc::clone(t),
            None => Arc::clone(map.entry(tenant.clone()).or_default()),
        }
    }

    /// Whether `hold` is a lease this process is using.
    pub fn owns(&self, hold: &str) -> bool {
        self.leases.lock().expect("leases").contains(hold)
    }

    /// Carves `r.amount` for one call out of the tenant's lease, growing the lease in the store
    /// when it runs short. `r.hold_id` is ignored: the store sees only the lease.
    pub async fn carve(&self, r: &Reserve<'_>, p: &Period, new_lease_id: impl Fn() -> String) -> clawpen_store::Result<Result<(), Refusal>> {
        let t = self.tenant(r.tenant);
        if self.try_carve(&t, r, p) {
            return Ok(Ok(()));
        }
        let _step = t.store_step.lock().await;
        let expires_at = p.now_ms + self.ttl.as_millis() as i64;
        loop {
            // Another call may have grown the lease while this one waited, and calls that fit
            // may have used what a growth added: look again each time.
            if self.try_carve(&t, r, p) {
                return Ok(Ok(()));
            }
            // (No release can come between: it takes the store step this call holds.) Ask for
            // the headroom, so that the lease grows in a few steps; then for exactly what is
            // missing.
            // (Never a negative growth: a paused tenant's lease may hold more than the call needs.)
            let (lease, missing, chunk) = {
                let b = t.state();
                (b.lease.clone(), (r.amount - b.available()).max(0), b.headroom(r.amount))
            };
            let asks = if missing < chunk { vec![chunk, missing] } else { vec![missing] };
            let mut refusal = None;
            for ask in asks {
                match self.grow_or_open(&t, lease.as_deref(), r, ask, expires_at, p, &new_lease_id).await? {
                    Ok(()) => {
                        refusal = None;
                        break;
                    }
                    Err(refused) => refusal = Some(refused),
                }
            }
            if let Some(refused) = refusal {
                return Ok(Err(refused));
            }
        }
    }

    /// Carves from what the lease has, if it is enough.
    fn try_carve(&self, t: &Arc<Tenant>, r: &Reserve<'_>, p: &Period) -> bool {
        let mut b = t.state();
        if b.available() < r.amount {
            return false;
        }
        b.carved += r.amount;
        b.last_amount = r.amount;
        b.idle_since = None;
        b.count_carved(r.amount);
        self.grow_ahead(t, &mut b, r, p);
        true
    }

    #[allow(clippy::too_many_arguments)]
    async fn grow_or_open(
        &self,
        t: &Tenant,
        lease: Option<&str>,
        r: &Reserve<'_>,
        ask: i64,
        expires_at: i64,
        p: &Period,
        new_lease_id: &impl Fn() -> String,
    ) -> clawpen_store::Result<Result<(), Refusal>> {
        let Some(lease) = lease else { return self.open(t, r, ask, expires_at, p, new_lease_id).await };
        let grow = Reserve { hold_id: lease, amount: ask, expires_at, ..r.clone() };
        match grow_lease(&self.store, t, &grow, p).await? {
            Ok(true) => Ok(Ok(())),
            Ok(false) => {
                // The lease expired and was voided (a stall past its time): what it held is
                // gone, its calls are charged from the balance alone.
                self.leases.lock().expect("leases").remove(lease);
                {
                    let mut b = t.state();
                    b.lease = None;
                    b.held = b.in_use();
                }
                self.open(t, r, ask, expires_at, p, new_lease_id).await
            }
            Err(refused) => Ok(Err(refused)),
        }
    }

    async fn open(&self, t: &Tenant, r: &Reserve<'_>, ask: i64, expires_at: i64, p: &Period, new_lease_id: &impl Fn() -> String) -> clawpen_store::Result<Result<(), Refusal>> {
        let id = new_lease_id();
        open_lease(&self.store, &self.leases, t, &Reserve { hold_id: &id, amount: ask, expires_at, ..r.clone() }, p).await
    }

    /// A chat of the tenant opened (a gateway connection): its lease is kept between messages
    /// until every chat has closed ([`Budgets::unpin`]), so the first call of each message finds
    /// it in memory. What the lease holds beyond the calls in flight shows as `reserved` meanwhile;
    /// the plan's gateway connections bound how many chats a tenant holds open.
    pub fn pin(&self, tenant: &TenantId) {
        self.tenant(tenant).state().pins += 1;
    }

    /// A chat of the tenant closed; with none left open its idle lease is released as usual.
    pub fn unpin(&self, tenant: &TenantId) {
        let t = self.tenant(tenant);
        let mut b = t.state();
        b.pins = b.pins.saturating_sub(1);
        if b.pins == 0 && b.carved == 0 {
            b.idle_since.get_or_insert_with(Instant::now);
            drop(b);
            self.dirty.notify_one();
        }
    }

    /// From now on idle leases are released whatever chats are open (shutdown).
    pub fn closing(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A run of the tenant was opened: its first model call follows in a few milliseconds (the
    /// agent builds its prompt meanwhile). When the tenant has no lease, one is opened now, in
    /// the background, sized like its latest call's, so that the call finds it in memory instead
    /// of waiting for a store write (several milliseconds at p99). An agent talked to at a human
    /// pace has its lease released between messages, so without this every message's first call
    /// would wait for the store. Refusals are left for the call: it asks the store itself and
    /// hears why. Nothing is opened for a tenant whose calls are not known yet.
    pub fn open_ahead(&self, tenant: &TenantId, agent: &clawpen_core::ids::AgentId, monthly_cap: i64, p: &Period, new_lease_id: impl Fn() -> String + Send + 'static) {
        let t = self.tenant(tenant);
        let amount = {
            let b = t.state();
            if b.lease.is_some() || b.ask_store || b.last_amount <= 0 {
                return;
            }
            b.headroom(b.last_amount)
        };
        let (store, leases, p) = (self.store.clone(), Arc::clone(&self.leases), p.clone());
        let (tenant, agent) = (tenant.clone(), agent.clone());
        let expires_at = p.now_ms + self.ttl.as_millis() as i64;
        tokio::spawn(async move {
            // A call opening or growing the lease itself, or a release, is under way.
            let Ok(_step) = t.store_step.try_lock() else { return };
            if t.state().lease.is_some() {
                return;
            }
            let id = new_lease_id();
            let open = Reserve { hold_id: &id, tenant: &tenant, agent: &agent, amount, monthly_cap, expires_at };
            if let Ok(Ok(())) = open_lease(&store, &leases, &t, &open, &p).await {
                // Released like any idle lease if the call never comes.
                let mut b = t.state();
                if b.carved == 0 {
                    b.idle_since = Some(Instant::now());
                }
            }
        });
    }

    /// After a refusal by the monthly cap: waits until `until` for the tenant's calls in flight
    /// to settle and give back what they held beyond their cost, and carves from that (in memory:
    /// no store round trip per wake-up). False when nothing is in flight any more (waiting cannot
    /// help) or the time is up.
    pub async fn wait_for_headroom(&self, r: &Reserve<'_>, p: &Period, until: tokio::time::Instant) -> bool {
        let t = self.tenant(r.tenant);
        loop {
            // Registered before looking, so that a settle in between is not missed.
            let settled = t.settled.notified();
            let mut settled = std::pin::pin!(settled);
            settled.as_mut().enable();
            if self.try_carve(&t, r, p) {
                return true;
            }
            if t.state().carved == 0 {
                return false;
            }
            if tokio::time::timeout_at(until, settled).await.is_err() {
                return false;
            }
        }
    }

    /// Whether calls of `tenant` are in flight in this process.
    pub fn in_flight(&self, tenant: &TenantId) -> bool {
        self.tenant(tenant).state().carved > 0
    }

    /// The tenant was paused in the store: from now on its calls ask the store, which refuses
    /// them while the pause lasts, instead of carving from what its lease still holds.
    pub fn ask_store(&self, tenant: &TenantId) {
        self.tenant(tenant).state().ask_store = true;
    }

    /// When less than half the usual headroom is left, grows the lease in the background, so
    /// that calls rarely wait for the store (which may be busy charging a batch). Refusals and
    /// failures are left for the call that runs short: it grows the lease itself and hears why.
    fn grow_ahead(&self, t: &Arc<Tenant>, b: &mut Budget, r: &Reserve<'_>, p: &Period) {
        let headroom = b.headroom(r.amount);
        let Some(lease) = b.lease.clone() else { return };
        if b.growing || b.available() >= headroom / 2 {
            return;
        }
        b.growing = true;
        let (store, t, p) = (self.store.clone(), Arc::clone(t), p.clone());
        let (tenant, agent, monthly_cap) = (r.tenant.clone(), r.agent.clone(), r.monthly_cap);
        let expires_at = p.now_ms + self.ttl.as_millis() as i64;
        tokio::spawn(async move {
            // A call growing the lease itself, or a release, is under way: leave it to them.
            if let Ok(_step) = t.store_step.try_lock() {
                let grow = Reserve { hold_id: &lease, tenant: &tenant, agent: &agent, amount: headroom, monthly_cap, expires_at };
                let _ = grow_lease(&store, &t, &grow, &p).await;
            }
            t.state().growing = false;
        });
    }

    /// A call is over: `held` goes back to the lease and `call` waits for the next flush. Its
    /// cost is charged in full; what passes `held` is taken from the balance alone (see
    /// [`Store::charge_hold`]), so the lease in memory counts only the part within the carve.
    pub async fn settle(&self, tenant: &TenantId, held: i64, call: CallRecord) {
        let t = self.tenant(tenant);
        {
            let mut b = t.state();
            b.carved -= held;
            b.unflushed_cost += call.cost.clamp(0, held);
            b.unflushed.push(call);
            if b.carved == 0 {
                b.idle_since = Some(Instant::now());
            }
        }
        t.settled.notify_waiters();
        self.dirty.notify_one();
    }

    /// Charges every tenant's settled calls in the store; releases leases idle for
    /// [`RELEASE_AFTER`]. Returns what was charged, per tenant.
    pub async fn flush(&self, p: &Period) -> Vec<Flushed> {
        let tenants: Vec<(TenantId, Arc<Tenant>)> = self.map.lock().expect("budgets").iter().map(|(id, t)| (id.clone(), Arc::clone(t))).collect();
        let mut out = Vec::new();
        for (tenant, t) in tenants {
            let taken = {
                let mut b = t.state();
                if b.unflushed.is_empty() {
                    None
                } else {
                    let calls = std::mem::take(&mut b.unflushed);
                    // What of their cost comes from the lease (each call's, up to its carve).
                    let cost = std::mem::take(&mut b.unflushed_cost);
                    b.flushing_cost += cost;
                    Some((b.lease.clone().unwrap_or_default(), calls, cost))
                }
            };
            let Some((lease, calls, cost)) = taken else {
                self.release_if_idle(&t, p).await;
                continue;
            };
            let expires_at = p.now_ms + self.ttl.as_millis() as i64;
            let charged = self.store.charge_hold(&lease, &tenant, &calls, expires_at, p).await;
            let mut b = t.state();
            b.flushing_cost -= cost;
            match charged {
                Ok(settled) => {
                    if b.lease.as_deref() == Some(lease.as_str()) {
                        b.held -= cost;
                    }
                    let last = calls.last().cloned().unwrap_or_default();
                    out.push(Flushed { tenant: tenant.clone(), settled, last });
                }
                Err(e) => {
                    // Put them back: the next flush tries again (call ids make it idempotent).
                    tracing::warn!(error = %e, calls = calls.len(), "meter: cannot charge settled calls; will retry");
                    b.unflushed_cost += cost;
                    let mut calls = calls;
                    calls.append(&mut b.unflushed);
                    b.unflushed = calls;
                }
            }
        }
        out
    }

    /// Releases the tenant's lease when nothing has used it for [`RELEASE_AFTER`].
    async fn release_if_idle(&self, t: &Tenant, p: &Period) {
        let closing = self.closing.load(std::sync::atomic::Ordering::Relaxed);
        let idle = |b: &Budget| {
            b.lease.is_some() && b.in_use() == 0 && b.unflushed.is_empty() && !b.growing && (b.pins == 0 || closing) && b.idle_since.is_some_and(|at| at.elapsed() >= RELEASE_AFTER)
        };
        let candidate = idle(&t.state());
        if !candidate {
            return;
        }
        // No store step on this lease meanwhile; a call that comes now waits and opens a new one.
        let Ok(_step) = t.store_step.try_lock() else { return };
        let taken = {
            let mut b = t.state();
            if idle(&b) {
                let held = std::mem::take(&mut b.held);
                b.lease.take().map(|lease| (lease, held))
            } else {
                None
            }
        };
        let Some((lease, held)) = taken else { return };
        match self.store.release_hold(&lease, p).await {
            Ok(_) => {
                self.leases.lock().expect("leases").remove(&lease);
            }
            Err(e) => {
                tracing::warn!(error = %e, "meter: cannot release a lease; will try again");
                let mut b = t.state();
                b.lease = Some(lease);
                b.held += held;
            }
        }
    }

    /// Waits until a call settles, or `max` passes.
    pub async fn wait_dirty(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.dirty.notified()).await;
    }

    /// Nothing waits to be charged and no lease is open (for shutdown and tests).
    pub async fn is_quiet(&self) -> bool {
        let tenants: Vec<Arc<Tenant>> = self.map.lock().expect("budgets").values().cloned().collect();
        tenants.iter().all(|t| {
            let b = t.state();
            b.unflushed.is_empty() && b.flushing_cost == 0 && b.lease.is_none()
        })
    }
}
