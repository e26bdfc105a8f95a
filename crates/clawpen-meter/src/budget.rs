//! Per-tenant leases: the ledger's conditional write once per several calls instead of twice
//! per call.
//!
//! A tenant's calls draw on a **lease**: one hold in the store, reserved with the same
//! conditional write as any hold (so the store still refuses anything past the balance or the
//! monthly cap, whatever this process believes). Each call carves its own hold out of the lease
//! in memory; when the lease runs short the tenant's next call grows it in the store (asking for
//! several calls' worth, then for exactly what is missing). Settled calls are charged against the
//! lease in batches: one transaction records them all and moves their total from held to spent.
//! An idle lease is released. A crash leaves the lease to expire and the sweeper voids it, like
//! any hold; what a crash can lose is the charge of calls settled in the last moments before it,
//! never credit.

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
}

impl Budget {
    fn available(&self) -> i64 {
        self.held - self.carved - self.unflushed_cost - self.flushing_cost
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
    map: Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<Budget>>>>,
    /// Leases open in this process; the sweeper leaves them alone.
    leases: Mutex<std::collections::HashSet<String>>,
    dirty: Notify,
}

impl Budgets {
    pub fn new(store: Store, ttl: Duration) -> Budgets {
        Budgets { store, ttl, map: Mutex::default(), leases: Mutex::default(), dirty: Notify::new() }
    }

    fn budget(&self, tenant: &TenantId) -> Arc<tokio::sync::Mutex<Budget>> {
        self.map.lock().expect("budgets").entry(tenant.clone()).or_default().clone()
    }

    /// Whether `hold` is a lease this process is using.
    pub fn owns(&self, hold: &str) -> bool {
        self.leases.lock().expect("leases").contains(hold)
    }

    /// Carves `r.amount` for one call out of the tenant's lease, growing the lease in the store
    /// when it runs short. `r.hold_id` is ignored: the store sees only the lease.
    pub async fn carve(&self, r: &Reserve<'_>, p: &Period, new_lease_id: impl Fn() -> String) -> clawpen_store::Result<Result<(), Refusal>> {
        let budget = self.budget(r.tenant);
        let mut b = budget.lock().await;
        let mut refusal = None;
        if b.available() < r.amount {
            let missing = r.amount - b.available();
            // Several calls' worth, or twice what is in use when many calls run at once, so
            // that the lease grows in a few steps; then exactly what is missing.
            let in_use = b.carved + b.unflushed_cost + b.flushing_cost;
            let chunk = (r.amount * LEASE_CALLS).max(2 * in_use);
            let asks = if missing < chunk { vec![chunk, missing] } else { vec![missing] };
            let expires_at = p.now_ms + self.ttl.as_millis() as i64;
            for ask in asks {
                let outcome = match b.lease.clone() {
                    Some(lease) => {
                        let grow = Reserve { hold_id: &lease, amount: ask, expires_at, ..r.clone() };
                        match self.store.grow_hold(&grow, p).await? {
                            Ok(true) => Ok(()),
                            Ok(false) => {
                                // The lease expired and was voided (a stall past its time): what
                                // it held is gone, its calls are charged from the balance alone.
                                self.leases.lock().expect("leases").remove(&lease);
                                b.lease = None;
                                b.held = b.carved + b.unflushed_cost + b.flushing_cost;
                                self.open(&mut b, r, ask, expires_at, p, &new_lease_id).await?
                            }
                            Err(refused) => Err(refused),
                        }
                    }
                    None => self.open(&mut b, r, ask, expires_at, p, &new_lease_id).await?,
                };
                match outcome {
                    Ok(()) => {
                        if b.lease.is_some() {
                            b.held += ask;
                        }
                        refusal = None;
                        break;
                    }
                    Err(refused) => refusal = Some(refused),
                }
            }
        }
        if let Some(refused) = refusal {
            return Ok(Err(refused));
        }
        b.carved += r.amount;
        b.idle_since = None;
        Ok(Ok(()))
    }

    async fn open(&self, b: &mut Budget, r: &Reserve<'_>, ask: i64, expires_at: i64, p: &Period, new_lease_id: &impl Fn() -> String) -> clawpen_store::Result<Result<(), Refusal>> {
        let id = new_lease_id();
        let open = Reserve { hold_id: &id, amount: ask, expires_at, ..r.clone() };
        let outcome = self.store.reserve(&open, p).await?;
        if outcome.is_ok() {
            self.leases.lock().expect("leases").insert(id.clone());
            b.lease = Some(id);
            b.held = b.carved + b.unflushed_cost + b.flushing_cost;
        }
        Ok(outcome)
    }

    /// A call is over: `held` goes back to the lease and `call` (its cost at most `held`) waits
    /// for the next flush.
    pub async fn settle(&self, tenant: &TenantId, held: i64, call: CallRecord) {
        let budget = self.budget(tenant);
        let mut b = budget.lock().await;
        b.carved -= held;
        b.unflushed_cost += call.cost;
        b.unflushed.push(call);
        if b.carved == 0 {
            b.idle_since = Some(Instant::now());
        }
        drop(b);
        self.dirty.notify_one();
    }

    /// Charges every tenant's settled calls in the store; releases leases idle for
    /// [`RELEASE_AFTER`]. Returns what was charged, per tenant.
    pub async fn flush(&self, p: &Period) -> Vec<Flushed> {
        let budgets: Vec<(TenantId, Arc<tokio::sync::Mutex<Budget>>)> = self.map.lock().expect("budgets").iter().map(|(t, b)| (t.clone(), b.clone())).collect();
        let mut out = Vec::new();
        for (tenant, budget) in budgets {
            let (lease, calls, cost) = {
                let mut b = budget.lock().await;
                if b.unflushed.is_empty() {
                    let idle = b.idle_since.is_some_and(|t| t.elapsed() >= RELEASE_AFTER);
                    if idle && b.carved == 0 && b.flushing_cost == 0 {
                        if let Some(lease) = b.lease.take() {
                            match self.store.release_hold(&lease, p).await {
                                Ok(_) => {
                                    self.leases.lock().expect("leases").remove(&lease);
                                    b.held = 0;
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "meter: cannot release a lease; it will expire");
                                    b.lease = Some(lease);
                                }
                            }
                        }
                    }
                    continue;
                }
                let calls = std::mem::take(&mut b.unflushed);
                let cost = std::mem::take(&mut b.unflushed_cost);
                b.flushing_cost += cost;
                (b.lease.clone().unwrap_or_default(), calls, cost)
            };
            let expires_at = p.now_ms + self.ttl.as_millis() as i64;
            let charged = self.store.charge_hold(&lease, &tenant, &calls, expires_at, p).await;
            let mut b = budget.lock().await;
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

    /// Waits until a call settles, or `max` passes.
    pub async fn wait_dirty(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.dirty.notified()).await;
    }

    /// Nothing waits to be charged and no lease is open (for shutdown and tests).
    pub async fn is_quiet(&self) -> bool {
        let budgets: Vec<_> = self.map.lock().expect("budgets").values().cloned().collect();
        for b in budgets {
            let b = b.lock().await;
            if !b.unflushed.is_empty() || b.flushing_cost != 0 || b.lease.is_some() {
                return false;
            }
        }
        true
    }
}
