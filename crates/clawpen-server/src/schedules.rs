//! Scheduled runs: an agent acting at set times (a cron expression in the tenant's time zone,
//! or an interval), each run an ordinary run: a run id the server issues, the meter's caps, the
//! agent's guards, a wake from whichever tier it sleeps in, and the reply kept in the session of
//! the channel the schedule names (and sent there).
//!
//! - **Once.** A run's row is written in the same transaction that moves its schedule past the
//!   due time it serves, before the run starts ([`clawpen_store::Store::claim_schedule_run`]); a
//!   run cut short by a stop is marked `interrupted` at the next start, never run again.
//! - **Missed runs.** After downtime a schedule's missed due times make one run (for the oldest
//!   of them), and the schedule moves to its first due time after now.
//! - **Spread.** Each schedule starts at its own fixed offset within `schedules.spread_secs`
//!   after its due time, and at most `schedules.concurrency` runs are in flight.
//! - **Failures.** A failed run holds the schedule back (one minute, doubling, at most an hour);
//!   after [`MAX_FAILURES`] in a row it is paused with the last reason. A run refused for the
//!   tenant's credit cap pauses the schedule with the meter's words, until the cap lifts.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use clawpen_agent::protocol::MessageIn;
use clawpen_core::schedule::{backoff_ms, spread_ms, Timing, MAX_FAILURES};
use clawpen_store::schedules::{NewSchedule, RunEnd, Schedule};
use clawpen_store::{now_ms, Store, StoreError, Tenant};
use tracing::{debug, info, warn};

use crate::app::App;
use crate::delivery::ReplyEvent;
use crate::error::ApiError;
use crate::fleet::Actor;

/// The longest message a schedule may start its runs from, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4000;

/// The channels a schedule's reply may go to.
pub const CHANNELS: [&str; 2] = ["console", "telegram"];

/// A due time claimed for a run.
#[derive(Debug, Clone)]
pub struct Claim {
    pub schedule: Schedule,
    /// The due time the run serves (the oldest one missed, after downtime).
    pub due_at: i64,
}

/// The timing a stored schedule was made with.
pub fn timing(s: &Schedule) -> Result<Timing, clawpen_core::schedule::TimingError> {
    Timing::parse(s.cron.as_deref(), s.every_secs.map(|e| e.max(0) as u64), &s.tz, s.created_at)
}

/// When the schedule's next run starts: its due time plus its spread; `None` while paused.
pub fn next_run_at(s: &Schedule, spread: i64) -> Option<i64> {
    s.paused_reason.is_none().then(|| s.next_due_at.saturating_add(spread_ms(s.id.as_str(), spread)).max(s.not_before))
}

/// Claims what is due at `now` (each schedule after its spread, at most `limit`), and resumes
/// the paused schedules whose pause has ended. The scheduler's whole decision, on the store
/// alone, so that its tests hold the clock.
pub async fn claim_due(store: &Store, spread: i64, now: i64, limit: usize) -> Result<Vec<Claim>, StoreError> {
    let mut claims = Vec::new();
    for s in store.due_schedules(now).await? {
        // One schedule's store error skips that schedule this tick: the claims made stay made.
        match claim_one(store, &s, spread, now, claims.len() < limit).await {
            Ok(true) => claims.push(Claim { due_at: s.next_due_at, schedule: s }),
            Ok(false) => {}
            Err(e) => warn!(schedule = %s.id, error = %e, "cannot claim a due schedule; trying again next tick"),
        }
    }
    Ok(claims)
}

/// Whether `s` was claimed for its due time (`room`: a run may start now).
async fn claim_one(store: &Store, s: &Schedule, spread: i64, now: i64, room: bool) -> Result<bool, StoreError> {
    let t = match timing(s) {
        Ok(t) => t,
        Err(e) => {
            warn!(schedule = %s.id, error = %e, "a stored schedule cannot be read; it is paused");
            store.pause_schedule(&s.id, &format!("its timing cannot be read: {e}"), None).await?;
            return Ok(false);
        }
    };
    // A pause that ends by itself (a credit cap that lifted): the schedule goes on from now,
    // with nothing run for what fell due while it was paused.
    if s.paused_reason.is_some() {
        let next = t.next_after(now).unwrap_or(i64::MAX);
        if store.resume_schedule_at_end_of_pause(&s.id, next, now).await? {
            info!(schedule = %s.id, "a paused schedule resumed as its pause ended");
        }
        return Ok(false);
    }
    if !room || s.next_due_at.saturating_add(spread_ms(s.id.as_str(), spread)) > now {
        return Ok(false);
    }
    // The next due time after now: every due time missed until now makes this one run.
    let next = t.next_after(now).unwrap_or(i64::MAX);
    store.claim_schedule_run(s, s.next_due_at, next, now).await
}

/// How a scheduled run ended.
enum Outcome {
    /// Answered; the detail says where the reply went.
    Answered { detail: String, first_token_at: Option<i64> },
    /// It cannot go on as set (the tenant's credits or caps refused it, or its Telegram person
    /// is no longer paired): the schedule pauses, until `until` when the pause ends by itself.
    Pause { reason: String, until: Option<i64> },
    Failed(String),
}

impl App {
    /// Runs the scheduler until the task is dropped: marks runs a stop cut short, then every
    /// `schedules.tick_ms` (or as soon as a run ends) claims what is due and runs it.
    pub async fn run_scheduler(self) {
        match self.store.interrupt_schedule_runs(now_ms()).await {
            Ok(0) => {}
            Ok(n) => warn!(runs = n, "scheduled runs were cut short by the last stop; they are marked interrupted, not run again"),
            Err(e) => warn!(error = %e, "cannot mark interrupted scheduled runs"),
        }
        let c = &self.config.schedules;
        let spread = (c.spread_secs as i64).saturating_mul(1000);
        let slots = Arc::new(tokio::sync::Semaphore::new(c.concurrency.max(1) as usize));
        let ended = Arc::new(tokio::sync::Notify::new());
        let mut tick = tokio::time::interval(Duration::from_millis(c.tick_ms.max(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = ended.notified() => {}
            }
            let free = slots.available_permits();
            if free == 0 {
                continue;
            }
            let claims = match claim_due(&self.store, spread, now_ms(), free).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "cannot look for due schedules; trying again next tick");
                    continue;
                }
            };
            for claim in claims {
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let (app, ended) = (self.clone(), ended.clone());
                tokio::spawn(async move {
                    app.run_claim(claim).await;
                    drop(slot);
                    ended.notify_one();
                });
            }
        }
    }

    /// One claimed run, start to end, and what it does to its schedule.
    async fn run_claim(&self, claim: Claim) {
        let s = &claim.schedule;
        let outcome = self.scheduled_run(s, claim.due_at).await;
        let now = now_ms();
        let failures = s.failures.max(0) as u32 + 1;
        let give_up = match &outcome {
            Outcome::Failed(reason) if failures >= MAX_FAILURES => Some(format!("{failures} runs in a row failed; the last: {reason}")),
            _ => None,
        };
        let (end, audit) = match &outcome {
            Outcome::Answered { detail, first_token_at } => (RunEnd { ok: true, detail, now, first_token_at: *first_token_at, not_before: 0, pause: None }, None),
            Outcome::Pause { reason, until } => {
                if let Err(e) = self.store.pause_running_schedule(&s.id, reason, *until).await {
                    warn!(schedule = %s.id, error = %e, "cannot pause the schedule");
                }
                (RunEnd { ok: false, detail: reason, now, first_token_at: None, not_before: 0, pause: None }, Some(reason.clone()))
            }
            Outcome::Failed(reason) => (RunEnd { ok: false, detail: reason, now, first_token_at: None, not_before: now + backoff_ms(failures), pause: give_up.as_deref() }, give_up.clone()),
        };
        if let Err(e) = self.store.finish_schedule_run(&s.id, claim.due_at, &end).await {
            warn!(schedule = %s.id, error = %e, "cannot record the end of a scheduled run");
        }
        if let Some(reason) = audit {
            let detail = serde_json::json!({"schedule": s.id.to_string(), "due_at": claim.due_at});
            self.audit(&s.tenant_id, Some(&s.agent_id), &actor(s), "schedule.paused", &reason, Some(detail)).await;
        }
        debug!(schedule = %s.id, ok = end.ok, detail = %end.detail, "scheduled run ended");
    }

    async fn scheduled_run(&self, s: &Schedule, due_at: i64) -> Outcome {
        let (tenant, agent) = match (self.store.get_tenant(&s.tenant_id).await, self.store.get_agent(&s.tenant_id, &s.agent_id).await) {
            (Ok(t), Ok(a)) => (t, a),
            (Err(e), _) | (_, Err(e)) => return Outcome::Failed(format!("the agent cannot be read: {e}")),
        };
        if let ("telegram", Some(user)) = (s.channel.as_str(), s.target.as_deref()) {
            match self.store.list_members(&tenant.id).await {
                Ok(people) if people.iter().any(|m| m.kind == clawpen_store::telegram::MEMBER_KIND && m.external_id == user) => {}
                Ok(_) => return Outcome::Pause { reason: "the Telegram person its replies go to is no longer paired with this account".to_owned(), until: None },
                Err(e) => return Outcome::Failed(format!("the account's members cannot be read: {e}")),
            }
        }
        let run = match self.admit_message(&tenant, &agent.id).await {
            Ok(run) => run,
            Err(e) => return Outcome::Failed(e.message),
        };
        if let Err(e) = self.store.set_schedule_run_id(&s.id, due_at, run.id()).await {
            return Outcome::Failed(format!("the run could not be recorded: {e}"));
        }
        let msg = MessageIn { text: s.message.clone(), session: Some(session(s)), run_id: None, greeting: false };
        let mut stream = match self.stream_in_run(&tenant, &agent, msg, run, &actor(s), false).await {
            Ok(stream) => stream,
            Err(e) => return Outcome::Failed(e.message),
        };
        let mut first_token_at = None;
        let out = loop {
            match stream.next().await {
                Some(ReplyEvent::Delta(_)) => {
                    first_token_at.get_or_insert_with(now_ms);
                }
                Some(ReplyEvent::Done(out)) => break out,
                Some(ReplyEvent::Failed(e)) => return Outcome::Failed(e.message),
                None => return Outcome::Failed("the agent ended the run without a reply".to_owned()),
            }
        };
        drop(stream);
        if out.paused || out.error_code.as_deref() == Some("cap_headroom") {
            // A call too large for what is left of the monthly cap: the cap lifts next month.
            let until = out.paused_until.or_else(|| (out.error_code.as_deref() == Some("cap_headroom")).then(|| clawpen_meter::meter::period_at(now_ms()).2));
            return Outcome::Pause { reason: out.reply, until };
        }
        if let Some(code) = out.error_code {
            return Outcome::Failed(format!("{code}: {}", out.reply));
        }
        let first_token_at = first_token_at.or_else(|| Some(now_ms()));
        Outcome::Answered { detail: self.send_reply(&tenant, s, &out.reply).await, first_token_at }
    }

    /// Sends a scheduled run's reply to the schedule's channel (it is in the session already).
    async fn send_reply(&self, tenant: &Tenant, s: &Schedule, reply: &str) -> String {
        match (s.channel.as_str(), s.target.as_deref().and_then(|t| t.parse::<i64>().ok())) {
            ("telegram", Some(user)) => match self.telegram.send_to(self, tenant, user, reply).await {
                Ok(()) => "sent on Telegram".to_owned(),
                Err(e) => format!("kept in the session; not sent on Telegram: {e}"),
            },
            _ => "kept in the session the console shows".to_owned(),
        }
    }

    /// Makes a schedule for `agent` of `tenant`'s, checked against its plan.
    pub async fn create_schedule(&self, tenant: &Tenant, agent: &clawpen_core::ids::AgentId, req: &NewScheduleRequest, actor: &Actor) -> Result<Schedule, ApiError> {
        let plan = self.config.plan_or_default(&tenant.plan);
        if plan.schedules == 0 {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "no_schedules", "this tenant's plan has no scheduled runs"));
        }
        clawpen_core::names::validate_name(&req.name).map_err(|e| ApiError::invalid(format!("name: {e}")))?;
        let message = req.message.trim();
        if message.is_empty() || message.chars().count() > MAX_MESSAGE_CHARS {
            return Err(ApiError::invalid(format!("message: must be 1 to {MAX_MESSAGE_CHARS} characters")));
        }
        let now = now_ms();
        let tz = req.tz.as_deref().unwrap_or("UTC");
        let t = Timing::parse(req.cron.as_deref(), req.every_secs, tz, now).map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_timing", e.to_string()))?;
        let gap = t.shortest_gap_secs(now);
        if gap < plan.schedule_min_interval_secs {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too_often",
                format!("this schedule could run {gap} s after its last run; the plan allows one run every {} s at most", plan.schedule_min_interval_secs),
            ));
        }
        let channel = req.channel.as_deref().unwrap_or("console");
        let target = match channel {
            "console" => None,
            "telegram" => Some(self.telegram_target(tenant, req.telegram_user.as_deref()).await?),
            other => return Err(ApiError::invalid(format!("channel: {other:?} is not one of {}", CHANNELS.join(", ")))),
        };
        let next = t.next_after(now).ok_or_else(|| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_timing", "the schedule never falls due"))?;
        let new = NewSchedule {
            tenant: &tenant.id,
            agent,
            name: &req.name,
            cron: req.cron.as_deref(),
            every_secs: req.every_secs.map(|e| e as i64),
            tz,
            message,
            channel,
            target: target.as_deref(),
            created_at: now,
            next_due_at: next,
        };
        let s = self.store.create_schedule(new, plan.schedules).await.map_err(|e| match e {
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "schedule_conflict", m),
            other => other.into(),
        })?;
        self.audit(&tenant.id, Some(agent), actor, "schedule.create", &s.name, Some(serde_json::json!({"schedule": s.id.to_string(), "channel": s.channel}))).await;
        Ok(s)
    }

    /// The Telegram user a schedule's replies go to: `given` when it is a person paired with the
    /// tenant; without it, the tenant's only paired person.
    async fn telegram_target(&self, tenant: &Tenant, given: Option<&str>) -> Result<String, ApiError> {
        let people: Vec<_> = self.store.list_members(&tenant.id).await?.into_iter().filter(|m| m.kind == clawpen_store::telegram::MEMBER_KIND).collect();
        match given {
            Some(user) => people
                .iter()
                .find(|m| m.external_id == user)
                .map(|m| m.external_id.clone())
                .ok_or_else(|| ApiError::invalid("telegram_user: no person of this account is paired with that Telegram user id")),
            None => match people.as_slice() {
                [one] => Ok(one.external_id.clone()),
                [] => Err(ApiError::invalid("channel: nobody of this account is paired on Telegram yet; pair first, or use the console channel")),
                _ => Err(ApiError::invalid("telegram_user: several people are paired on Telegram; say which one gets the replies")),
            },
        }
    }

    /// Pauses (`paused`) or resumes a schedule of the tenant's; a resumed one forgets its
    /// failures and goes on from its next due time after now.
    pub async fn set_schedule_paused(&self, tenant: &Tenant, s: &Schedule, paused: bool, actor: &Actor) -> Result<(), ApiError> {
        if paused {
            self.store.pause_schedule(&s.id, "paused by its tenant", None).await?;
        } else {
            let t = timing(s).map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_timing", e.to_string()))?;
            self.store.resume_schedule(&s.id, t.next_after(now_ms()).unwrap_or(i64::MAX)).await?;
        }
        let action = if paused { "schedule.pause" } else { "schedule.resume" };
        self.audit(&tenant.id, Some(&s.agent_id), actor, action, &s.name, Some(serde_json::json!({"schedule": s.id.to_string()}))).await;
        Ok(())
    }
}

/// The session a schedule's runs are kept in: the one its channel shows.
fn session(s: &Schedule) -> String {
    match (s.channel.as_str(), &s.target) {
        ("telegram", Some(user)) => format!("tg-{user}"),
        _ => "main".to_owned(),
    }
}

fn actor(s: &Schedule) -> Actor {
    Actor(format!("schedule:{}", s.id))
}

/// A new schedule as the API takes it.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewScheduleRequest {
    /// A name of the tenant's choosing, unique in the account.
    #[schema(max_length = 64, pattern = r"^[A-Za-z0-9](\.?[A-Za-z0-9_-])*\.?$")]
    pub name: String,
    /// Five-field cron (`minute hour day month weekday`), read in `tz`; or give `every_secs`.
    pub cron: Option<String>,
    /// An interval in seconds from the schedule's creation; or give `cron`.
    #[schema(minimum = 1, maximum = 316224000)]
    pub every_secs: Option<u64>,
    /// An IANA time zone for `cron` (default `UTC`).
    pub tz: Option<String>,
    /// The message each run starts from, as if the user had sent it.
    #[schema(min_length = 1, max_length = 4000)]
    pub message: String,
    /// Where replies go: `console` (default; the agent's main session) or `telegram`.
    pub channel: Option<String>,
    /// With `telegram`: the paired person (Telegram user id) who gets the replies; default the
    /// account's only paired person.
    pub telegram_user: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn berlin(ms: i64) -> String {
        chrono_tz::Europe::Berlin.timestamp_millis_opt(ms).unwrap().format("%Y-%m-%d %H:%M %Z").to_string()
    }

    struct Clocked {
        dir: tempfile::TempDir,
        store: Store,
    }

    impl Clocked {
        async fn new() -> Clocked {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open_sqlite(&dir.path().join("store.db")).await.unwrap();
            Clocked { dir, store }
        }

        /// A stop and a start: the store opened again, runs cut short marked.
        async fn restart(&mut self, now: i64) -> u64 {
            self.store = Store::open_sqlite(&self.dir.path().join("store.db")).await.unwrap();
            self.store.interrupt_schedule_runs(now).await.unwrap()
        }

        /// Moves the clock from `from` to `to` a minute at a time, claiming and ending what is
        /// due at each step; the due times run, as Berlin wall-clock times.
        async fn run(&self, from: i64, to: i64, spread: i64) -> Vec<(String, String)> {
            let mut fired = Vec::new();
            let mut now = from;
            while now <= to {
                for c in claim_due(&self.store, spread, now, 1000).await.unwrap() {
                    fired.push((c.schedule.name.clone(), berlin(c.due_at)));
                    let end = RunEnd { ok: true, detail: "ok", now, first_token_at: Some(now), not_before: 0, pause: None };
                    self.store.finish_schedule_run(&c.schedule.id, c.due_at, &end).await.unwrap();
                }
                now += 60_000;
            }
            fired
        }
    }

    async fn schedule(store: &Store, tenant: &clawpen_core::ids::TenantId, name: &str, cron: &str, created: i64) -> Schedule {
        let agent = store.create_agent(tenant, name, 100).await.unwrap();
        let t = Timing::parse(Some(cron), None, "Europe/Berlin", created).unwrap();
        let new = NewSchedule { tenant, agent: &agent.id, name, cron: Some(cron), every_secs: None, tz: "Europe/Berlin", message: "good morning", channel: "console", target: None, created_at: created, next_due_at: t.next_after(created).unwrap() };
        store.create_schedule(new, 100).await.unwrap()
    }

    #[tokio::test]
    async fn runs_fire_at_the_right_minutes_across_a_dst_change_and_a_restart() {
        let mut c = Clocked::new().await;
        let t = c.store.create_tenant("family", "free", 100_000).await.unwrap();
        let start = utc("2026-03-27T12:00:00Z");
        schedule(&c.store, &t.id, "morning", "30 8 * * *", start).await;
        schedule(&c.store, &t.id, "night", "30 2 * * *", start).await;

        let mut fired = c.run(start, utc("2026-03-29T12:00:00Z"), 0).await;
        // A restart between two runs: nothing is run again, nothing is lost.
        assert_eq!(c.restart(utc("2026-03-29T12:00:00Z")).await, 0);
        fired.extend(c.run(utc("2026-03-29T12:01:00Z"), utc("2026-03-30T12:00:00Z"), 0).await);
        let want = [
            ("night", "2026-03-28 02:30 CET"),
            ("morning", "2026-03-28 08:30 CET"),
            // 02:30 does not exist on the night of the change: the run is at 03:00.
            ("night", "2026-03-29 03:00 CEST"),
            ("morning", "2026-03-29 08:30 CEST"),
            ("night", "2026-03-30 02:30 CEST"),
            ("morning", "2026-03-30 08:30 CEST"),
        ];
        assert_eq!(fired, want.map(|(a, b)| (a.to_owned(), b.to_owned())));

        // Autumn: 02:30 happens twice; the schedule runs once.
        let autumn = c.run(utc("2026-10-24T12:00:00Z"), utc("2026-10-25T12:00:00Z"), 0).await;
        // The clock jumped from March to October: each schedule first makes one run for all the
        // months it missed, then keeps to its times.
        let missed: Vec<_> = autumn.iter().filter(|(_, at)| at.starts_with("2026-03")).collect();
        assert_eq!(missed.len(), 2, "one run per schedule for the downtime: {autumn:?}");
        let rest: Vec<_> = autumn.iter().filter(|(_, at)| !at.starts_with("2026-03")).map(|(n, at)| (n.as_str(), at.as_str())).collect();
        assert_eq!(rest, [("night", "2026-10-25 02:30 CEST"), ("morning", "2026-10-25 08:30 CET")]);
    }

    #[tokio::test]
    async fn a_server_stopped_mid_run_leaves_exactly_one_run_and_runs_it_not_again() {
        let mut c = Clocked::new().await;
        let t = c.store.create_tenant("family", "free", 100_000).await.unwrap();
        let start = utc("2026-12-01T07:00:00Z");
        let s = schedule(&c.store, &t.id, "morning", "30 8 * * *", start).await;
        let due = utc("2026-12-01T07:30:00Z");
        let claims = claim_due(&c.store, 0, due, 10).await.unwrap();
        assert_eq!(claims.len(), 1);
        // The server dies here, the run in flight; it starts again a minute later.
        assert_eq!(c.restart(due + 60_000).await, 1);
        assert!(claim_due(&c.store, 0, due + 60_000, 10).await.unwrap().is_empty(), "the due time is not run again");
        let runs = c.store.schedule_runs(&t.id, &s.id, 10).await.unwrap();
        assert_eq!(runs.iter().map(|r| (r.due_at, r.status.as_str())).collect::<Vec<_>>(), [(due, "interrupted")]);
        // The next day's run is an ordinary one.
        let next = c.run(due + 120_000, utc("2026-12-02T08:00:00Z"), 0).await;
        assert_eq!(next, [("morning".to_owned(), "2026-12-02 08:30 CET".to_owned())]);
    }

    #[tokio::test]
    async fn many_schedules_due_at_one_minute_start_spread_over_the_window() {
        let c = Clocked::new().await;
        let t = c.store.create_tenant("many", "free", 100_000).await.unwrap();
        let start = utc("2026-12-01T07:00:00Z");
        for i in 0..40 {
            schedule(&c.store, &t.id, &format!("s{i}"), "30 8 * * *", start).await;
        }
        let due = utc("2026-12-01T07:30:00Z");
        let mut started = Vec::new();
        for second in 0..=30 {
            for claim in claim_due(&c.store, 30_000, due + second * 1000, 1000).await.unwrap() {
                started.push(second);
                assert_eq!(claim.due_at, due);
            }
        }
        assert_eq!(started.len(), 40, "every schedule ran once within the window: {started:?}");
        assert!(started.iter().filter(|s| **s < 15).count() >= 8 && started.iter().filter(|s| **s >= 15).count() >= 8, "spread over the window: {started:?}");
        // And at most `limit` at a time.
        assert!(claim_due(&c.store, 0, due + 86_400_000, 5).await.unwrap().len() == 5);
    }

    #[tokio::test]
    async fn a_schedule_paused_until_its_cap_lifts_resumes_then_without_catching_up() {
        let c = Clocked::new().await;
        let t = c.store.create_tenant("capped", "free", 100_000).await.unwrap();
        let start = utc("2026-12-01T07:00:00Z");
        let s = schedule(&c.store, &t.id, "morning", "30 8 * * *", start).await;
        let month = utc("2027-01-01T00:00:00Z");
        c.store.pause_schedule(&s.id, "the monthly credit cap is reached", Some(month)).await.unwrap();
        assert!(c.run(start, month - 60_000, 0).await.is_empty(), "nothing runs while paused");
        assert_eq!(c.run(month, utc("2027-01-01T12:00:00Z"), 0).await, [("morning".to_owned(), "2027-01-01 08:30 CET".to_owned())]);
    }
}
