//! Schedules (runs an agent starts on its own at set times) and the record of their runs. The
//! store keeps a due time from running twice: a run's row is written in the same transaction
//! that moves its schedule past the due time it serves.

use sqlx::any::AnyRow;
use sqlx::Row;

use clawpen_core::ids::{AgentId, ScheduleId, TenantId};

use crate::{conflict_on_unique, parse_id, Result, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub id: ScheduleId,
    pub tenant_id: TenantId,
    pub agent_id: AgentId,
    pub name: String,
    pub cron: Option<String>,
    pub every_secs: Option<i64>,
    pub tz: String,
    pub message: String,
    /// `console` or `telegram`.
    pub channel: String,
    /// Who on the channel gets the reply (a Telegram user id), when the channel needs one.
    pub target: Option<String>,
    pub created_at: i64,
    /// The next due time (Unix ms).
    pub next_due_at: i64,
    /// No run before this (Unix ms): the pause after failed runs.
    pub not_before: i64,
    /// Failed runs in a row.
    pub failures: i64,
    pub paused_reason: Option<String>,
    /// When a paused schedule resumes by itself; `None` when only its tenant can resume it.
    pub paused_until: Option<i64>,
}

/// What a new schedule is made of; the id and times are the store's.
pub struct NewSchedule<'a> {
    pub tenant: &'a TenantId,
    pub agent: &'a AgentId,
    pub name: &'a str,
    pub cron: Option<&'a str>,
    pub every_secs: Option<i64>,
    pub tz: &'a str,
    pub message: &'a str,
    pub channel: &'a str,
    pub target: Option<&'a str>,
    pub created_at: i64,
    pub next_due_at: i64,
}

/// How a run ended, for [`Store::finish_schedule_run`].
#[derive(Debug, Clone, Copy)]
pub struct RunEnd<'a> {
    pub ok: bool,
    /// What went wrong, or where the reply went.
    pub detail: &'a str,
    pub now: i64,
    pub first_token_at: Option<i64>,
    /// After a failure: no run of the schedule before this.
    pub not_before: i64,
    /// After a failure: pause the schedule with this reason.
    pub pause: Option<&'a str>,
}

/// One run of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRun {
    pub schedule_id: ScheduleId,
    /// The due time it serves.
    pub due_at: i64,
    pub run_id: Option<String>,
    pub started_at: i64,
    /// When the reply's first piece arrived.
    pub first_token_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// `running`, `ok`, `failed` or `interrupted` (the server stopped during it).
    pub status: String,
    /// What went wrong, or where the reply went.
    pub detail: Option<String>,
}

const COLUMNS: &str = "id, tenant_id, agent_id, name, cron, every_secs, tz, message, channel, target, created_at, next_due_at, not_before, failures, paused_reason, paused_until";
const RUN_COLUMNS: &str = "schedule_id, due_at, run_id, started_at, first_token_at, finished_at, status, detail";

impl Schedule {
    fn from_row(r: &AnyRow) -> Result<Schedule> {
        Ok(Schedule {
            id: parse_id(r.try_get("id")?)?,
            tenant_id: parse_id(r.try_get("tenant_id")?)?,
            agent_id: parse_id(r.try_get("agent_id")?)?,
            name: r.try_get("name")?,
            cron: r.try_get("cron")?,
            every_secs: r.try_get("every_secs")?,
            tz: r.try_get("tz")?,
            message: r.try_get("message")?,
            channel: r.try_get("channel")?,
            target: r.try_get("target")?,
            created_at: r.try_get("created_at")?,
            next_due_at: r.try_get("next_due_at")?,
            not_before: r.try_get("not_before")?,
            failures: r.try_get("failures")?,
            paused_reason: r.try_get("paused_reason")?,
            paused_until: r.try_get("paused_until")?,
        })
    }
}

impl ScheduleRun {
    fn from_row(r: &AnyRow) -> Result<ScheduleRun> {
        Ok(ScheduleRun {
            schedule_id: parse_id(r.try_get("schedule_id")?)?,
            due_at: r.try_get("due_at")?,
            run_id: r.try_get("run_id")?,
            started_at: r.try_get("started_at")?,
            first_token_at: r.try_get("first_token_at")?,
            finished_at: r.try_get("finished_at")?,
            status: r.try_get("status")?,
            detail: r.try_get("detail")?,
        })
    }
}

impl Store {
    /// Makes a schedule, unless the tenant already has `max` (Conflict), or one of that name.
    pub async fn create_schedule(&self, new: NewSchedule<'_>, max: u32) -> Result<Schedule> {
        let id = ScheduleId::new();
        // The count and the insert are one statement, in a transaction that holds the tenant's
        // row on PostgreSQL (where writers run side by side; SQLite has one writer): concurrent
        // creates cannot pass `max`.
        let mut tx = self.writer.begin().await?;
        if self.backend() == crate::Backend::Postgres {
            sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR UPDATE").bind(new.tenant.as_str()).execute(&mut *tx).await?;
        }
        let res = sqlx::query(
            "INSERT INTO schedules (id, tenant_id, agent_id, name, cron, every_secs, tz, message, channel, target, created_at, next_due_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 WHERE (SELECT COUNT(*) FROM schedules WHERE tenant_id = $2) < $13",
        )
        .bind(id.as_str())
        .bind(new.tenant.as_str())
        .bind(new.agent.as_str())
        .bind(new.name)
        .bind(new.cron)
        .bind(new.every_secs)
        .bind(new.tz)
        .bind(new.message)
        .bind(new.channel)
        .bind(new.target)
        .bind(new.created_at)
        .bind(new.next_due_at)
        .bind(max as i64)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_on_unique(e, "a schedule with this name already exists"))?;
        if res.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("the tenant's plan allows at most {max} schedules")));
        }
        tx.commit().await?;
        self.get_schedule(new.tenant, &id).await
    }

    /// A schedule of `tenant`'s.
    pub async fn get_schedule(&self, tenant: &TenantId, id: &ScheduleId) -> Result<Schedule> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM schedules WHERE id = $1 AND tenant_id = $2"))
            .bind(id.as_str())
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Schedule::from_row(&row)
    }

    /// `tenant`'s schedules (of one agent, when given), oldest first.
    pub async fn list_schedules(&self, tenant: &TenantId, agent: Option<&AgentId>) -> Result<Vec<Schedule>> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM schedules WHERE tenant_id = $1 AND ($2 IS NULL OR agent_id = $2) ORDER BY created_at, id"))
            .bind(tenant.as_str())
            .bind(agent.map(|a| a.as_str()))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Schedule::from_row).collect()
    }

    /// Removes a schedule of `tenant`'s and its runs' record.
    pub async fn delete_schedule(&self, tenant: &TenantId, id: &ScheduleId) -> Result<()> {
        let res = sqlx::query("DELETE FROM schedules WHERE id = $1 AND tenant_id = $2").bind(id.as_str()).bind(tenant.as_str()).execute(&self.writer).await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Pauses a schedule with `reason` (until `until`, when it resumes by itself).
    pub async fn pause_schedule(&self, id: &ScheduleId, reason: &str, until: Option<i64>) -> Result<()> {
        sqlx::query("UPDATE schedules SET paused_reason = $1, paused_until = $2 WHERE id = $3").bind(reason).bind(until).bind(id.as_str()).execute(&self.writer).await?;
        Ok(())
    }

    /// Pauses a schedule with `reason` unless it is paused already (its tenant's pause, or an
    /// earlier one, stands). Whether it was paused now.
    pub async fn pause_running_schedule(&self, id: &ScheduleId, reason: &str, until: Option<i64>) -> Result<bool> {
        let res = sqlx::query("UPDATE schedules SET paused_reason = $1, paused_until = $2 WHERE id = $3 AND paused_reason IS NULL")
            .bind(reason)
            .bind(until)
            .bind(id.as_str())
            .execute(&self.writer)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Resumes a schedule whose pause ended by `now` (one with a `paused_until`), as
    /// [`Store::resume_schedule`]; a pause without an end (its tenant's) stays. Whether it resumed.
    pub async fn resume_schedule_at_end_of_pause(&self, id: &ScheduleId, next_due_at: i64, now: i64) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE schedules SET paused_reason = NULL, paused_until = NULL, failures = 0, not_before = 0, next_due_at = $1 \
             WHERE id = $2 AND paused_until IS NOT NULL AND paused_until <= $3",
        )
        .bind(next_due_at)
        .bind(id.as_str())
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Resumes a schedule: its failures are forgotten and it next falls due at `next_due_at`.
    pub async fn resume_schedule(&self, id: &ScheduleId, next_due_at: i64) -> Result<()> {
        sqlx::query("UPDATE schedules SET paused_reason = NULL, paused_until = NULL, failures = 0, not_before = 0, next_due_at = $1 WHERE id = $2")
            .bind(next_due_at)
            .bind(id.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Every schedule that may run at `now`: not paused, due (its `next_due_at` reached) and not
    /// held back; and the paused ones whose pause ends by `now`. The caller adds each one's
    /// spread before it runs it.
    pub async fn due_schedules(&self, now: i64) -> Result<Vec<Schedule>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM schedules WHERE (paused_reason IS NULL AND next_due_at <= $1 AND not_before <= $1) \
             OR (paused_reason IS NOT NULL AND paused_until IS NOT NULL AND paused_until <= $1) ORDER BY next_due_at, id"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Schedule::from_row).collect()
    }

    /// Claims the run of `schedule` for its due time `due_at`, moving it to `next_due_at`: the
    /// run's row (`running`) and the move are one transaction, and only one claim of a due time
    /// wins. `false`: another claim, or a change to the schedule, came first.
    pub async fn claim_schedule_run(&self, schedule: &Schedule, due_at: i64, next_due_at: i64, now: i64) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let moved = sqlx::query("UPDATE schedules SET next_due_at = $1 WHERE id = $2 AND next_due_at = $3 AND paused_reason IS NULL")
            .bind(next_due_at)
            .bind(schedule.id.as_str())
            .bind(due_at)
            .execute(&mut *tx)
            .await?;
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        let inserted = sqlx::query("INSERT INTO schedule_runs (schedule_id, due_at, tenant_id, started_at, status) VALUES ($1, $2, $3, $4, 'running') ON CONFLICT DO NOTHING")
            .bind(schedule.id.as_str())
            .bind(due_at)
            .bind(schedule.tenant_id.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if inserted.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The run id the meter gave a claimed run.
    pub async fn set_schedule_run_id(&self, id: &ScheduleId, due_at: i64, run_id: &str) -> Result<()> {
        sqlx::query("UPDATE schedule_runs SET run_id = $1 WHERE schedule_id = $2 AND due_at = $3").bind(run_id).bind(id.as_str()).bind(due_at).execute(&self.writer).await?;
        Ok(())
    }

    /// Ends a run (`ok` or `failed`) and keeps the schedule's failures: none after `ok`; after
    /// `failed` one more, held back until `not_before`, and paused with `pause` when given.
    pub async fn finish_schedule_run(&self, id: &ScheduleId, due_at: i64, end: &RunEnd<'_>) -> Result<()> {
        let RunEnd { ok, detail, now, first_token_at, not_before, pause } = *end;
        let mut tx = self.writer.begin().await?;
        sqlx::query("UPDATE schedule_runs SET status = $1, detail = $2, finished_at = $3, first_token_at = $4 WHERE schedule_id = $5 AND due_at = $6")
            .bind(if ok { "ok" } else { "failed" })
            .bind(detail)
            .bind(now)
            .bind(first_token_at)
            .bind(id.as_str())
            .bind(due_at)
            .execute(&mut *tx)
            .await?;
        if ok {
            sqlx::query("UPDATE schedules SET failures = 0, not_before = 0 WHERE id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        } else {
            sqlx::query("UPDATE schedules SET failures = failures + 1, not_before = $1, paused_reason = COALESCE($2, paused_reason) WHERE id = $3")
                .bind(not_before)
                .bind(pause)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// At start-up: every run still `running` was cut short by the stop; it is marked
    /// `interrupted` (and not run again). How many.
    pub async fn interrupt_schedule_runs(&self, now: i64) -> Result<u64> {
        let res = sqlx::query("UPDATE schedule_runs SET status = 'interrupted', finished_at = $1, detail = 'the server stopped during the run; it is not run again' WHERE status = 'running'")
            .bind(now)
            .execute(&self.writer)
            .await?;
        Ok(res.rows_affected())
    }

    /// The newest runs of a schedule of `tenant`'s, newest first.
    pub async fn schedule_runs(&self, tenant: &TenantId, id: &ScheduleId, limit: i64) -> Result<Vec<ScheduleRun>> {
        let rows = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM schedule_runs WHERE schedule_id = $1 AND tenant_id = $2 ORDER BY due_at DESC LIMIT $3"))
            .bind(id.as_str())
            .bind(tenant.as_str())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(ScheduleRun::from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::backends;

    async fn setup(store: &Store) -> (TenantId, AgentId) {
        let t = store.create_tenant("sched", "default", 100_000).await.unwrap();
        let a = store.create_agent(&t.id, "a", 5).await.unwrap();
        (t.id, a.id)
    }

    fn new<'a>(t: &'a TenantId, a: &'a AgentId, name: &'a str, due: i64) -> NewSchedule<'a> {
        NewSchedule { tenant: t, agent: a, name, cron: None, every_secs: Some(60), tz: "UTC", message: "hi", channel: "console", target: None, created_at: 0, next_due_at: due }
    }

    #[tokio::test]
    async fn a_due_time_is_claimed_once_and_a_crashed_run_is_interrupted_not_rerun() {
        for db in backends().await {
            let s = &db.store;
            let (t, a) = setup(s).await;
            let sch = s.create_schedule(new(&t, &a, "one", 1_000), 5).await.unwrap();
            assert_eq!(s.due_schedules(999).await.unwrap().len(), 0, "{}", db.backend);
            let due = s.due_schedules(1_000).await.unwrap();
            assert_eq!(due.len(), 1);
            // Two claims of the same due time: one wins.
            let (x, y) = tokio::join!(s.claim_schedule_run(&due[0], 1_000, 61_000, 1_000), s.claim_schedule_run(&due[0], 1_000, 61_000, 1_000));
            assert!(x.unwrap() ^ y.unwrap(), "exactly one claim wins on {}", db.backend);
            assert_eq!(s.get_schedule(&t, &sch.id).await.unwrap().next_due_at, 61_000);
            assert_eq!(s.interrupt_schedule_runs(2_000).await.unwrap(), 1);
            let runs = s.schedule_runs(&t, &sch.id, 10).await.unwrap();
            assert_eq!(runs.len(), 1);
            assert_eq!(runs[0].status, "interrupted");
            assert!(s.due_schedules(2_000).await.unwrap().is_empty(), "an interrupted run is not due again");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_plan_bounds_a_tenants_schedules_and_failures_pause_them() {
        for db in backends().await {
            let s = &db.store;
            let (t, a) = setup(s).await;
            s.create_schedule(new(&t, &a, "one", 1_000), 2).await.unwrap();
            assert!(matches!(s.create_schedule(new(&t, &a, "one", 1_000), 2).await, Err(StoreError::Conflict(_))));
            let two = s.create_schedule(new(&t, &a, "two", 1_000), 2).await.unwrap();
            let err = s.create_schedule(new(&t, &a, "three", 1_000), 2).await.unwrap_err();
            assert!(err.to_string().contains("at most 2 schedules"), "{err}");

            // Many creates at once never pass the bound.
            let other_tenant = s.create_tenant("racers", "free", 300_000).await.unwrap();
            let racer = s.create_agent(&other_tenant.id, "r", 5).await.unwrap();
            let names: Vec<String> = (0..60).map(|i| format!("r{i}")).collect();
            let made = futures_util::future::join_all(names.iter().map(|n| s.create_schedule(new(&other_tenant.id, &racer.id, n, 1_000), 3))).await;
            assert_eq!(made.iter().filter(|r| r.is_ok()).count(), 3, "{}", db.backend);
            assert_eq!(s.list_schedules(&other_tenant.id, None).await.unwrap().len(), 3);
            // And so with agents against the plan's max_agents.
            let made = futures_util::future::join_all(names.iter().map(|n| s.create_agent(&other_tenant.id, n, 4))).await;
            assert_eq!(made.iter().filter(|r| r.is_ok()).count(), 3, "{}: one agent was there already", db.backend);

            assert!(s.claim_schedule_run(&two, 1_000, 2_000, 1_000).await.unwrap());
            let end = RunEnd { ok: false, detail: "boom", now: 1_100, first_token_at: None, not_before: 61_100, pause: Some("runs keep failing: boom") };
            s.finish_schedule_run(&two.id, 1_000, &end).await.unwrap();
            let paused = s.get_schedule(&t, &two.id).await.unwrap();
            assert_eq!((paused.failures, paused.paused_reason.as_deref(), paused.not_before), (1, Some("runs keep failing: boom"), 61_100));
            assert!(!s.due_schedules(100_000).await.unwrap().iter().any(|x| x.id == two.id), "a paused schedule is not due");
            s.resume_schedule(&two.id, 200_000).await.unwrap();
            let resumed = s.get_schedule(&t, &two.id).await.unwrap();
            assert_eq!((resumed.failures, resumed.paused_reason, resumed.next_due_at), (0, None, 200_000));

            // Another tenant sees none of them.
            let other = s.create_tenant("other", "default", 200_000).await.unwrap();
            assert!(s.list_schedules(&other.id, None).await.unwrap().is_empty());
            assert!(matches!(s.get_schedule(&other.id, &two.id).await, Err(StoreError::NotFound)));
            assert!(matches!(s.delete_schedule(&other.id, &two.id).await, Err(StoreError::NotFound)));
            assert!(s.schedule_runs(&other.id, &two.id, 10).await.unwrap().is_empty());
        }
    }
}
