//! The credit ledger: accounts, two-phase holds, calls, grants and runs. Money is integer
//! micro-credits everywhere.
//!
//! The rules that keep money exact:
//! - a reserve is **one conditional `UPDATE`** (balance, monthly cap and pause checked in its
//!   `WHERE`), never a read followed by a write, so concurrent reserves cannot overspend;
//! - a hold is settled or voided **once**: the state change `held → settled|voided` is itself
//!   conditional, so a repeated settle (a retry, the sweeper racing the owner) changes nothing;
//! - a settle charges what the call cost, **even past its hold**: the hold is the meter's upper
//!   bound and the provider bills what it bills, so an excess is taken from the balance alone
//!   (which may then go below zero) and never dropped. Only the part within the hold is released
//!   from what the account holds, so `reserved` always equals the sum of open holds.

use clawpen_core::ids::{AgentId, TenantId};
use serde::Serialize;
use sqlx::Row;

use crate::{Result, Store, StoreError};

/// A tenant's account as read back.
#[derive(Debug, Clone, Serialize)]
pub struct Account {
    pub tenant_id: String,
    pub balance: i64,
    pub reserved: i64,
    pub month: String,
    pub month_spent: i64,
    pub day: String,
    pub day_spent: i64,
    pub paused_until: Option<i64>,
    pub paused_reason: Option<String>,
}

/// The period keys (UTC) a ledger write belongs to.
#[derive(Debug, Clone)]
pub struct Period {
    /// `YYYY-MM`.
    pub month: String,
    /// `YYYY-MM-DD`.
    pub day: String,
    pub now_ms: i64,
}

/// A reserve to make.
#[derive(Debug, Clone)]
pub struct Reserve<'a> {
    pub hold_id: &'a str,
    pub tenant: &'a TenantId,
    pub agent: &'a AgentId,
    pub amount: i64,
    pub monthly_cap: i64,
    pub expires_at: i64,
}

/// Why a reserve was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Paused { until: Option<i64>, reason: String },
    MonthlyCap { cap: i64, spent: i64, reserved: i64 },
    InsufficientCredits { balance: i64, reserved: i64 },
}

/// A model call, as recorded in `calls`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallRecord {
    pub id: String,
    pub tenant_id: String,
    pub agent_id: String,
    pub at: i64,
    pub model: String,
    pub provider: String,
    pub stream: bool,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read: i64,
    pub cache_write: i64,
    /// What the tenant was charged.
    pub cost: i64,
    /// What was held for the call.
    pub held: i64,
    pub outcome: String,
}

/// What a settle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// False when the hold had already been settled or voided (nothing changed).
    pub applied: bool,
    pub charged: i64,
    pub day_spent: i64,
    pub month_spent: i64,
}

/// Spending of one agent this month.
#[derive(Debug, Clone, Serialize)]
pub struct AgentSpend {
    pub agent_id: String,
    pub calls: i64,
    pub cost: i64,
}

fn account_from_row(r: &sqlx::any::AnyRow) -> Result<Account> {
    Ok(Account {
        tenant_id: r.try_get("tenant_id")?,
        balance: r.try_get("balance")?,
        reserved: r.try_get("reserved")?,
        month: r.try_get("month")?,
        month_spent: r.try_get("month_spent")?,
        day: r.try_get("day")?,
        day_spent: r.try_get("day_spent")?,
        paused_until: r.try_get("paused_until")?,
        paused_reason: r.try_get("paused_reason")?,
    })
}

fn call_from_row(r: &sqlx::any::AnyRow) -> Result<CallRecord> {
    Ok(CallRecord {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        agent_id: r.try_get("agent_id")?,
        at: r.try_get("at")?,
        model: r.try_get("model")?,
        provider: r.try_get("provider")?,
        stream: r.try_get::<i64, _>("stream")? != 0,
        input_tokens: r.try_get("input_tokens")?,
        output_tokens: r.try_get("output_tokens")?,
        cache_read: r.try_get("cache_read")?,
        cache_write: r.try_get("cache_write")?,
        cost: r.try_get("cost")?,
        held: r.try_get("held")?,
        outcome: r.try_get("outcome")?,
    })
}

const ACCOUNT_COLUMNS: &str =
    "tenant_id, balance, reserved, month, month_spent, day, day_spent, paused_until, paused_reason";

impl Store {
    /// Opens the tenant's account with `initial` credits if it has none yet.
    pub async fn ensure_account(&self, tenant: &TenantId, initial: i64, p: &Period) -> Result<()> {
        sqlx::query("INSERT INTO accounts (tenant_id, balance, month, day) VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id) DO NOTHING")
            .bind(tenant.as_str())
            .bind(initial)
            .bind(&p.month)
            .bind(&p.day)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn account(&self, tenant: &TenantId) -> Result<Account> {
        let row = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE tenant_id = $1"
        ))
        .bind(tenant.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        account_from_row(&row)
    }

    /// Reserves `amount` for a call: one conditional write, then the hold row, in one
    /// transaction. On refusal nothing is written and the reason is returned.
    pub async fn reserve(&self, r: &Reserve<'_>, p: &Period) -> Result<Result<(), Refusal>> {
        let mut tx = self.writer.begin().await?;
        if let Err(refusal) = Self::reserve_in(&mut tx, r, p).await? {
            tx.rollback().await?;
            return Ok(Err(self.explain(r, p, refusal).await?));
        }
        sqlx::query("INSERT INTO holds (id, tenant_id, agent_id, amount, state, created_at, expires_at) VALUES ($1, $2, $3, $4, 'held', $5, $6)")
            .bind(r.hold_id)
            .bind(r.tenant.as_str())
            .bind(r.agent.as_str())
            .bind(r.amount)
            .bind(p.now_ms)
            .bind(r.expires_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Grows an open hold (a meter's lease) by `r.amount` with the same conditional write as
    /// [`Store::reserve`], and moves its expiry to `r.expires_at`. `Ok(Ok(false))` when the hold is
    /// no longer open (the sweeper closed it): nothing is written.
    pub async fn grow_hold(&self, r: &Reserve<'_>, p: &Period) -> Result<Result<bool, Refusal>> {
        let mut tx = self.writer.begin().await?;
        if let Err(refusal) = Self::reserve_in(&mut tx, r, p).await? {
            tx.rollback().await?;
            return Ok(Err(self.explain(r, p, refusal).await?));
        }
        let res = sqlx::query("UPDATE holds SET amount = amount + $1, expires_at = $2 WHERE id = $3 AND state = 'held'")
            .bind(r.amount)
            .bind(r.expires_at)
            .bind(r.hold_id)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(Ok(false));
        }
        tx.commit().await?;
        Ok(Ok(true))
    }

    /// The conditional write of a reserve; `Err(())` when the account refuses it.
    async fn reserve_in(tx: &mut sqlx::Transaction<'_, sqlx::Any>, r: &Reserve<'_>, p: &Period) -> Result<Result<(), ()>> {
        let res = sqlx::query(
            "UPDATE accounts SET \
                reserved = reserved + $1, \
                month_spent = CASE WHEN month = $2 THEN month_spent ELSE 0 END, month = $2, \
                day_spent = CASE WHEN day = $3 THEN day_spent ELSE 0 END, day = $3 \
             WHERE tenant_id = $4 \
               AND balance - reserved >= $1 \
               AND (CASE WHEN month = $2 THEN month_spent ELSE 0 END) + reserved + $1 <= $5 \
               AND (paused_until IS NULL OR paused_until <= $6)",
        )
        .bind(r.amount)
        .bind(&p.month)
        .bind(&p.day)
        .bind(r.tenant.as_str())
        .bind(r.monthly_cap)
        .bind(p.now_ms)
        .execute(&mut **tx)
        .await?;
        Ok(if res.rows_affected() == 0 { Err(()) } else { Ok(()) })
    }

    /// Why a reserve was refused. Only to explain: the decision was the conditional write.
    async fn explain(&self, r: &Reserve<'_>, p: &Period, _: ()) -> Result<Refusal> {
        let a = self.account(r.tenant).await?;
        let month_spent = if a.month == p.month { a.month_spent } else { 0 };
        Ok(if a.paused_until.is_some_and(|u| u > p.now_ms) {
            Refusal::Paused { until: a.paused_until, reason: a.paused_reason.unwrap_or_default() }
        } else if a.balance - a.reserved < r.amount {
            Refusal::InsufficientCredits { balance: a.balance, reserved: a.reserved }
        } else {
            Refusal::MonthlyCap { cap: r.monthly_cap, spent: month_spent, reserved: a.reserved }
        })
    }

    /// Charges settled calls against an open hold (a meter's lease), in one transaction: the
    /// calls are recorded (idempotently, by id), their total leaves the balance, and the hold's
    /// expiry moves to `expires_at`. Each call's cost up to its `held` (what was carved out of the
    /// hold for it) leaves the hold; a cost above that is charged from the balance alone. When
    /// the hold is no longer open (it expired and was voided) the calls are still charged: what
    /// was generated is never settled at 0.
    pub async fn charge_hold(&self, hold_id: &str, tenant: &TenantId, calls: &[CallRecord], expires_at: i64, p: &Period) -> Result<Settled> {
        let total: i64 = calls.iter().map(|c| c.cost.max(0)).sum();
        let within: i64 = calls.iter().map(|c| c.cost.clamp(0, c.held.max(0))).sum();
        let mut tx = self.writer.begin().await?;
        let res = sqlx::query("UPDATE holds SET amount = amount - $1, charged = COALESCE(charged, 0) + $2, expires_at = $3 WHERE id = $4 AND state = 'held'")
            .bind(within)
            .bind(total)
            .bind(expires_at)
            .bind(hold_id)
            .execute(&mut *tx)
            .await?;
        let from_reserved = if res.rows_affected() == 1 { within } else { 0 };
        let (month_spent, day_spent) = charge_account(&mut tx, tenant.as_str(), from_reserved, total, p).await?;
        insert_calls(&mut tx, calls).await?;
        tx.commit().await?;
        Ok(Settled { applied: true, charged: total, day_spent, month_spent })
    }

    /// Settles a hold at `call.cost` (in full, past the held amount too: the excess comes from the
    /// balance) and records the call; or, with `void`, releases it and charges nothing.
    /// Idempotent: a hold already closed is left alone.
    pub async fn close_hold(
        &self,
        hold_id: &str,
        call: &CallRecord,
        void: bool,
        p: &Period,
    ) -> Result<Settled> {
        let mut tx = self.writer.begin().await?;
        let state = if void { "voided" } else { "settled" };
        // Closing is conditional on the hold still being open.
        let row = sqlx::query(
            "UPDATE holds SET state = $1, settled_at = $2, \
                charged = CASE WHEN $3 < 0 THEN charged ELSE COALESCE(charged, 0) + $3 END \
             WHERE id = $4 AND state = 'held' RETURNING tenant_id, amount, charged",
        )
        .bind(state)
        .bind(p.now_ms)
        .bind(if void { -1 } else { call.cost.max(0) })
        .bind(hold_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(Settled { applied: false, charged: 0, day_spent: 0, month_spent: 0 });
        };
        let tenant: String = row.try_get("tenant_id")?;
        // What was still held (all released), and what this close charges (a voided hold: nothing).
        let amount: i64 = row.try_get("amount")?;
        let charged: i64 = if void { 0 } else { call.cost.max(0) };
        let (month_spent, day_spent) = charge_account(&mut tx, &tenant, amount, charged, p).await?;
        let mut record = call.clone();
        record.cost = charged;
        record.held = amount;
        insert_call(&mut tx, &record).await?;
        tx.commit().await?;
        Ok(Settled {
            applied: true,
            charged,
            day_spent,
            month_spent,
        })
    }

    /// Closes an open hold without a further charge, releasing what it still holds (a meter's
    /// lease that is no longer needed). Returns whether it was open.
    pub async fn release_hold(&self, hold_id: &str, p: &Period) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query("UPDATE holds SET state = 'settled', settled_at = $1 WHERE id = $2 AND state = 'held' RETURNING tenant_id, amount")
            .bind(p.now_ms)
            .bind(hold_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(false);
        };
        sqlx::query("UPDATE accounts SET reserved = reserved - $1 WHERE tenant_id = $2")
            .bind(row.try_get::<i64, _>("amount")?)
            .bind(row.try_get::<String, _>("tenant_id")?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records calls that were refused before any hold (cost 0), in one transaction.
    pub async fn record_calls(&self, calls: &[CallRecord]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        insert_calls(&mut tx, calls).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Holds still open whose time ran out.
    pub async fn expired_holds(&self, now_ms: i64) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query("SELECT id, tenant_id, agent_id FROM holds WHERE state = 'held' AND expires_at <= $1 ORDER BY expires_at")
            .bind(now_ms)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("tenant_id")?,
                    r.try_get("agent_id")?,
                ))
            })
            .collect()
    }

    /// Number of holds still open (for tests and metrics).
    pub async fn open_holds(&self, tenant: &TenantId) -> Result<i64> {
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM holds WHERE tenant_id = $1 AND state = 'held'")
                .bind(tenant.as_str())
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get("n")?)
    }

    /// Sum of what settled holds charged this tenant.
    pub async fn settled_total(&self, tenant: &TenantId) -> Result<i64> {
        let row = sqlx::query("SELECT CAST(COALESCE(SUM(charged), 0) AS BIGINT) AS total FROM holds WHERE tenant_id = $1 AND state = 'settled'")
            .bind(tenant.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("total")?)
    }

    pub async fn pause_account(
        &self,
        tenant: &TenantId,
        until: Option<i64>,
        reason: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE accounts SET paused_until = $1, paused_reason = $2 WHERE tenant_id = $3",
        )
        .bind(until)
        .bind(reason)
        .bind(tenant.as_str())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Adds credits (negative takes them away) and lifts a pause.
    pub async fn add_credits(
        &self,
        tenant: &TenantId,
        amount: i64,
        reason: &str,
        p: &Period,
    ) -> Result<Account> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("INSERT INTO accounts (tenant_id, balance, month, day) VALUES ($1, 0, $2, $3) ON CONFLICT (tenant_id) DO NOTHING")
            .bind(tenant.as_str())
            .bind(&p.month)
            .bind(&p.day)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE accounts SET balance = balance + $1, paused_until = NULL, paused_reason = NULL WHERE tenant_id = $2")
            .bind(amount)
            .bind(tenant.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO credit_grants (tenant_id, at, amount, reason) VALUES ($1, $2, $3, $4)",
        )
        .bind(tenant.as_str())
        .bind(p.now_ms)
        .bind(amount)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.account(tenant).await
    }

    /// Moves a tenant to another plan and lifts any pause: the new plan's caps decide from now on
    /// (a call past them pauses the tenant again).
    pub async fn set_plan(&self, tenant: &TenantId, plan: &str) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let res = sqlx::query("UPDATE tenants SET plan = $1 WHERE id = $2")
            .bind(plan)
            .bind(tenant.as_str())
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query("UPDATE accounts SET paused_until = NULL, paused_reason = NULL WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The runs of `agent` that started after `since_ms` (run id, start), for counting an
    /// agent's runs per hour.
    pub async fn runs_since(&self, agent: &AgentId, since_ms: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT run_id, at FROM runs WHERE agent_id = $1 AND at > $2").bind(agent.as_str()).bind(since_ms).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get("run_id")?, r.try_get("at")?))).collect()
    }

    /// Records admitted runs (agent, run id, start); one already recorded is left alone.
    pub async fn record_runs(&self, runs: &[(AgentId, String, i64)]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for chunk in runs.chunks(CALLS_PER_INSERT) {
            let sql = format!("INSERT INTO runs (agent_id, run_id, at) VALUES {} ON CONFLICT (agent_id, run_id) DO NOTHING", placeholders(chunk.len(), 3));
            let mut q = sqlx::query(&sql);
            for (agent, run, at) in chunk {
                q = q.bind(agent.as_str()).bind(run).bind(*at);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// This month's spending per agent of a tenant.
    pub async fn spend_by_agent(
        &self,
        tenant: &TenantId,
        since_ms: i64,
    ) -> Result<Vec<AgentSpend>> {
        let rows = sqlx::query(
            "SELECT agent_id, COUNT(*) AS calls, CAST(COALESCE(SUM(cost), 0) AS BIGINT) AS cost FROM calls \
             WHERE tenant_id = $1 AND at >= $2 GROUP BY agent_id ORDER BY agent_id",
        )
        .bind(tenant.as_str())
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AgentSpend {
                    agent_id: r.try_get("agent_id")?,
                    calls: r.try_get("calls")?,
                    cost: r.try_get("cost")?,
                })
            })
            .collect()
    }

    /// Micro-credits a tenant spent per UTC day in `[since_ms, until_ms)`: (day number since
    /// the epoch, spent), oldest first; days without calls are left out.
    pub async fn spend_by_day(&self, tenant: &TenantId, since_ms: i64, until_ms: i64) -> Result<Vec<(i64, i64)>> {
        let rows = sqlx::query(
            "SELECT CAST(at / 86400000 AS BIGINT) AS day, CAST(COALESCE(SUM(cost), 0) AS BIGINT) AS spent FROM calls \
             WHERE tenant_id = $1 AND at >= $2 AND at < $3 GROUP BY CAST(at / 86400000 AS BIGINT) ORDER BY day",
        )
        .bind(tenant.as_str())
        .bind(since_ms)
        .bind(until_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("day")?, r.try_get("spent")?))).collect()
    }

    /// Every credit grant of a tenant, oldest first: (at, amount, reason).
    pub async fn credit_grants(&self, tenant: &TenantId) -> Result<Vec<(i64, i64, String)>> {
        let rows = sqlx::query("SELECT at, amount, reason FROM credit_grants WHERE tenant_id = $1 ORDER BY at, id").bind(tenant.as_str()).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get("at")?, r.try_get("amount")?, r.try_get("reason")?))).collect()
    }

    /// The newest calls of a tenant.
    pub async fn recent_calls(&self, tenant: &TenantId, limit: i64) -> Result<Vec<CallRecord>> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, agent_id, at, model, provider, stream, input_tokens, output_tokens, cache_read, cache_write, cost, held, outcome \
             FROM calls WHERE tenant_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
        )
        .bind(tenant.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(call_from_row).collect()
    }
}

/// Releases `released` from what a tenant holds and charges `charged` to its balance and to this
/// day's and month's spending (a new period starts from 0). Returns (month spent, day spent).
async fn charge_account(tx: &mut sqlx::Transaction<'_, sqlx::Any>, tenant: &str, released: i64, charged: i64, p: &Period) -> Result<(i64, i64)> {
    let acc = sqlx::query(
        "UPDATE accounts SET \
            reserved = reserved - $1, balance = balance - $2, \
            month_spent = (CASE WHEN month = $3 THEN month_spent ELSE 0 END) + $2, month = $3, \
            day_spent = (CASE WHEN day = $4 THEN day_spent ELSE 0 END) + $2, day = $4 \
         WHERE tenant_id = $5 RETURNING month_spent, day_spent",
    )
    .bind(released)
    .bind(charged)
    .bind(&p.month)
    .bind(&p.day)
    .bind(tenant)
    .fetch_one(&mut **tx)
    .await?;
    Ok((acc.try_get("month_spent")?, acc.try_get("day_spent")?))
}

/// Records calls in one statement (at most [`CALLS_PER_INSERT`] rows each). The placeholders are
/// numbered by hand: `QueryBuilder<Any>` writes `?`, which PostgreSQL does not take.
async fn insert_calls(tx: &mut sqlx::Transaction<'_, sqlx::Any>, calls: &[CallRecord]) -> Result<()> {
    const COLUMNS: usize = 14;
    for chunk in calls.chunks(CALLS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO calls (id, tenant_id, agent_id, at, model, provider, stream, input_tokens, output_tokens, cache_read, cache_write, cost, held, outcome) \
             VALUES {} ON CONFLICT (id) DO NOTHING",
            placeholders(chunk.len(), COLUMNS)
        );
        let mut q = sqlx::query(&sql);
        for c in chunk {
            q = q
                .bind(&c.id)
                .bind(&c.tenant_id)
                .bind(&c.agent_id)
                .bind(c.at)
                .bind(&c.model)
                .bind(&c.provider)
                .bind(c.stream as i64)
                .bind(c.input_tokens)
                .bind(c.output_tokens)
                .bind(c.cache_read)
                .bind(c.cache_write)
                .bind(c.cost)
                .bind(c.held)
                .bind(&c.outcome);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// The `VALUES` list of a multi-row insert: `rows` tuples of `columns` numbered placeholders,
/// `($1, $2), ($3, $4)`.
fn placeholders(rows: usize, columns: usize) -> String {
    let row = |r: usize| format!("({})", (1..=columns).map(|c| format!("${}", r * columns + c)).collect::<Vec<_>>().join(", "));
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
}

/// Rows per insert. Small on purpose: SQLite looks up each `$N` parameter's name with a linear
/// scan (binding is quadratic in the parameter count), and each distinct row count is its own
/// prepared statement in the driver's cache.
const CALLS_PER_INSERT: usize = 16;

async fn insert_call(tx: &mut sqlx::Transaction<'_, sqlx::Any>, c: &CallRecord) -> Result<()> {
    insert_calls(tx, std::slice::from_ref(c)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn period(now_ms: i64) -> Period {
        Period {
            month: "2026-11".into(),
            day: "2026-11-22".into(),
            now_ms,
        }
    }

    /// A lease: opened and grown by the conditional write (refused past the cap), charged in a
    /// batch, released; charging after it is gone still charges the balance.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_lease_is_grown_charged_and_released() {
        for db in crate::testing::backends().await {
            let store = &db.store;
            let t = store.create_tenant("t", "free", 100_000).await.unwrap();
            let agent = AgentId::new();
            let p = period(1_000);
            store.ensure_account(&t.id, 10_000, &p).await.unwrap();
            let r = |amount| Reserve { hold_id: "lease-1", tenant: &t.id, agent: &agent, amount, monthly_cap: 2_000, expires_at: 60_000 };
            store.reserve(&r(1_000), &p).await.unwrap().unwrap();
            assert!(store.grow_hold(&r(500), &p).await.unwrap().unwrap());
            let refused = store.grow_hold(&r(600), &p).await.unwrap().unwrap_err();
            assert!(matches!(refused, Refusal::MonthlyCap { .. }), "{refused:?}");
            assert_eq!(store.account(&t.id).await.unwrap().reserved, 1_500);

            let call = |id: &str, cost| CallRecord { id: id.into(), tenant_id: t.id.to_string(), agent_id: agent.to_string(), cost, held: 400, outcome: "ok".into(), ..Default::default() };
            let s = store.charge_hold("lease-1", &t.id, &[call("c1", 300), call("c2", 200)], 90_000, &p).await.unwrap();
            assert_eq!((s.charged, s.month_spent), (500, 500));
            let a = store.account(&t.id).await.unwrap();
            assert_eq!((a.balance, a.reserved), (9_500, 1_000));
            assert_eq!(store.recent_calls(&t.id, 10).await.unwrap().len(), 2);

            assert!(store.release_hold("lease-1", &p).await.unwrap());
            assert!(!store.release_hold("lease-1", &p).await.unwrap(), "releasing twice changes nothing");
            assert!(!store.grow_hold(&r(10), &p).await.unwrap().unwrap(), "a closed lease does not grow");
            let a = store.account(&t.id).await.unwrap();
            assert_eq!((a.balance, a.reserved), (9_500, 0));
            assert_eq!(store.settled_total(&t.id).await.unwrap(), 500);

            // A call settled after its lease is gone is still charged, from the balance alone.
            store.charge_hold("lease-1", &t.id, &[call("c3", 100)], 90_000, &p).await.unwrap();
            let a = store.account(&t.id).await.unwrap();
            assert_eq!((a.balance, a.reserved, a.month_spent), (9_400, 0, 600));
        }
    }

    /// 200 concurrent calls of one tenant against a cap that admits about 50: whatever the
    /// interleaving and whatever the calls cost, the settled total stays within the cap, refused
    /// calls cost nothing, and balance + settled equals the start. Seeded, so a failure repeats.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_overspend_under_concurrency() {
        for seed in [1u64, 7, 42] {
            for db in crate::testing::backends().await {
                no_overspend_on(&db.store, seed).await;
            }
        }
    }

    async fn no_overspend_on(store: &Store, seed: u64) {
        let seed_label = format!("{seed} on {:?}", store.backend());
        let t = store.create_tenant("t", "free", 100_000).await.unwrap();
        let agent = AgentId::new();
        let start = 1_000_000_000i64;
        let cap = 50 * 1_000; // about 50 holds of 1,000
        store
            .ensure_account(&t.id, start, &period(0))
            .await
            .unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let plans: Vec<(i64, i64, bool, u64)> = (0..200)
            .map(|_| {
                let hold = rng.gen_range(800..=1_200);
                // Calls cost up to their hold (the meter's bound), some are voided. (A cost past
                // its hold is charged in full: see `a_charge_past_the_hold_is_taken_in_full`.)
                let cost = rng.gen_range(hold / 2..=hold);
                // Arrivals spread over 50 ms, so that settles free room for later reserves (with
                // one writer connection, 200 reserves at once would all queue before any settle).
                (hold, cost, rng.gen_bool(0.1), rng.gen_range(0..50u64))
            })
            .collect();
        let mut tasks = Vec::new();
        for (i, (hold, cost, void, delay_ms)) in plans.into_iter().enumerate() {
            let (store, tenant, agent) = (store.clone(), t.id.clone(), agent.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                let id = format!("h{seed}-{i}");
                let r = Reserve {
                    hold_id: &id,
                    tenant: &tenant,
                    agent: &agent,
                    amount: hold,
                    monthly_cap: cap,
                    expires_at: i64::MAX,
                };
                match store.reserve(&r, &period(1)).await.unwrap() {
                    Err(_) => 0,
                    Ok(()) => {
                        let call = CallRecord {
                            id: id.clone(),
                            cost,
                            outcome: "ok".into(),
                            ..Default::default()
                        };
                        let s = store
                            .close_hold(&id, &call, void, &period(2))
                            .await
                            .unwrap();
                        // Settling twice changes nothing.
                        assert!(
                            !store
                                .close_hold(&id, &call, false, &period(3))
                                .await
                                .unwrap()
                                .applied
                        );
                        assert!(s.charged <= hold);
                        s.charged
                    }
                }
            }));
        }
        let mut charged = 0;
        for task in tasks {
            charged += task.await.unwrap();
        }
        let a = store.account(&t.id).await.unwrap();
        let settled = store.settled_total(&t.id).await.unwrap();
        assert_eq!(settled, charged, "seed {seed_label}");
        assert!(
            settled <= cap,
            "seed {seed_label}: settled {settled} > cap {cap}"
        );
        assert!(
            settled > cap / 2,
            "seed {seed_label}: the cap was actually used ({settled})"
        );
        assert_eq!(
            a.balance + settled,
            start,
            "seed {seed_label}: money appeared or vanished"
        );
        assert_eq!(
            (a.reserved, store.open_holds(&t.id).await.unwrap()),
            (0, 0),
            "seed {seed_label}"
        );
        assert_eq!(a.month_spent, settled);
    }

    /// A provider that bills past the hold is charged in full, by both charge paths: the excess
    /// leaves the balance (and counts as spent) while only the hold itself leaves `reserved`.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_charge_past_the_hold_is_taken_in_full() {
        for db in crate::testing::backends().await {
            let store = &db.store;
            let t = store.create_tenant("t", "free", 100_000).await.unwrap();
            let agent = AgentId::new();
            let p = period(1_000);
            store.ensure_account(&t.id, 10_000, &p).await.unwrap();
            let r = |id, amount| Reserve { hold_id: id, tenant: &t.id, agent: &agent, amount, monthly_cap: 5_000, expires_at: 60_000 };
            // A lease of 1,000 with two calls carved from it: one of 300 that cost 2,500, one of
            // 300 that cost 100, and a second hold open beside it.
            store.reserve(&r("lease", 1_000), &p).await.unwrap().unwrap();
            store.reserve(&r("other", 200), &p).await.unwrap().unwrap();
            let call = |id: &str, cost, held| CallRecord { id: id.into(), tenant_id: t.id.to_string(), agent_id: agent.to_string(), cost, held, outcome: "ok".into(), ..Default::default() };
            let s = store.charge_hold("lease", &t.id, &[call("c1", 2_500, 300), call("c2", 100, 300)], 90_000, &p).await.unwrap();
            assert_eq!((s.charged, s.month_spent), (2_600, 2_600));
            let a = store.account(&t.id).await.unwrap();
            assert_eq!((a.balance, a.reserved), (7_400, 1_000 - 400 + 200), "only the calls' carves left the lease");
            // A single hold settled past its amount.
            let s = store.close_hold("other", &call("other", 9_000, 200), false, &p).await.unwrap();
            assert_eq!(s.charged, 9_000);
            let a = store.account(&t.id).await.unwrap();
            assert_eq!((a.balance, a.reserved, a.month_spent), (-1_600, 600, 11_600), "charged in full, below zero, past the cap");
            assert!(store.release_hold("lease", &p).await.unwrap());
            let a = store.account(&t.id).await.unwrap();
            assert_eq!(a.reserved, 0);
            assert_eq!(store.settled_total(&t.id).await.unwrap(), 11_600);
            // Nothing more can be reserved: the balance is gone and the cap passed.
            assert!(store.reserve(&r("next", 1), &p).await.unwrap().is_err());
        }
    }

    #[tokio::test]
    async fn refusals_say_why_and_expired_holds_are_found() {
        for db in crate::testing::backends().await {
            refusals_on(&db.store).await;
        }
    }

    async fn refusals_on(store: &Store) {
        let t = store.create_tenant("t", "free", 100_000).await.unwrap();
        let agent = AgentId::new();
        store.ensure_account(&t.id, 500, &period(0)).await.unwrap();
        let r = |id: &'static str, amount| Reserve {
            hold_id: id,
            tenant: &t.id,
            agent: &agent,
            amount,
            monthly_cap: 1_000,
            expires_at: 100,
        };
        assert!(matches!(
            store.reserve(&r("a", 600), &period(1)).await.unwrap(),
            Err(Refusal::InsufficientCredits { .. })
        ));
        store
            .add_credits(&t.id, 10_000, "test", &period(1))
            .await
            .unwrap();
        assert!(matches!(
            store.reserve(&r("b", 1_001), &period(1)).await.unwrap(),
            Err(Refusal::MonthlyCap { .. })
        ));
        store
            .reserve(&r("c", 400), &period(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.expired_holds(99).await.unwrap().len(), 0);
        assert_eq!(store.expired_holds(100).await.unwrap()[0].0, "c");
        store
            .pause_account(&t.id, Some(5_000), "daily soft cap")
            .await
            .unwrap();
        assert!(matches!(
            store.reserve(&r("d", 1), &period(2)).await.unwrap(),
            Err(Refusal::Paused {
                until: Some(5_000),
                ..
            })
        ));
        store
            .reserve(&r("e", 1), &period(5_000))
            .await
            .unwrap()
            .unwrap();
        // A new month starts the monthly counter again.
        let call = CallRecord {
            id: "c".into(),
            cost: 400,
            ..Default::default()
        };
        store
            .close_hold("c", &call, false, &period(3))
            .await
            .unwrap();
        let next = Period {
            month: "2026-12".into(),
            day: "2026-12-01".into(),
            now_ms: 6_000,
        };
        store.reserve(&r("f", 999), &next).await.unwrap().unwrap();
        let runs = [(agent.clone(), "run1".to_owned(), 0), (agent.clone(), "run2".to_owned(), 2), (agent.clone(), "run3".to_owned(), 3_600_001)];
        store.record_runs(&runs).await.unwrap();
        store.record_runs(&runs[..1]).await.unwrap();
        let mut seen = store.runs_since(&agent, -1).await.unwrap();
        seen.sort();
        assert_eq!(seen, vec![("run1".to_owned(), 0), ("run2".to_owned(), 2), ("run3".to_owned(), 3_600_001)], "recorded once each");
        let recent = store.runs_since(&agent, 1).await.unwrap();
        assert_eq!(recent.len(), 2, "only runs after the given time");
    }
}
