//! Tenants nobody uses: after the plan's `inactive_warn_days` without activity the tenant is
//! warned (an audit line, and a message to its people on Telegram); after
//! `inactive_grace_days` more its agents' data is archived to storage and removed from the
//! nodes (each agent's next start restores it from its snapshot); after
//! `inactive_delete_days` it is deleted with everything of it, as a purge does. Activity is a
//! message to or a connection with any of its agents (`agents.last_active_at`), or its
//! creation; activity after a warning forgets the warning.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use clawpen_core::ids::AgentId;
use clawpen_core::lifecycle::Tier;
use clawpen_store::inactivity::Inactivity;
use clawpen_store::{Agent, DesiredState, ObservedState, Observation, Tenant};
use tracing::{info, warn};

use crate::app::App;
use crate::error::ApiError;
use crate::fleet::Actor;

const DAY_MS: f64 = 86_400_000.0;

/// How often the rules are looked at, at most.
const CHECK_EVERY_MS: i64 = 1_000;

/// When the rules were last looked at, and whether a look is running.
#[derive(Default)]
pub struct InactivityState {
    last: AtomicI64,
    busy: AtomicBool,
}

struct Busy<'a>(&'a AtomicBool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn ms(days: f64) -> i64 {
    (days * DAY_MS) as i64
}

/// The tenant's last activity: its newest agent activity, or its creation.
pub fn last_activity(tenant: &Tenant, agents: &[Agent]) -> i64 {
    agents.iter().filter(|a| a.tenant_id == tenant.id).filter_map(|a| a.last_active_at).fold(tenant.created_at, i64::max)
}

/// What is due for one tenant.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    Nothing,
    /// Active since its warning.
    Forget,
    Warn,
    Archive,
    Delete,
}

fn due(plan: &clawpen_core::plan::Plan, last: i64, record: Option<&Inactivity>, now: i64) -> Due {
    let idle = now - last;
    if let Some(r) = record {
        if last > r.warned_at {
            return Due::Forget;
        }
    }
    let warned_long_enough = |r: Option<&Inactivity>| r.is_some_and(|r| now - r.warned_at >= ms(plan.inactive_grace_days));
    if plan.inactive_delete_days > 0.0 && idle >= ms(plan.inactive_delete_days) && (plan.inactive_warn_days == 0.0 || warned_long_enough(record)) {
        return Due::Delete;
    }
    match record {
        None if plan.inactive_warn_days > 0.0 && idle >= ms(plan.inactive_warn_days) => Due::Warn,
        Some(r) if r.archived_at.is_none() && plan.inactive_grace_days > 0.0 && now - r.warned_at >= ms(plan.inactive_grace_days) => Due::Archive,
        _ => Due::Nothing,
    }
}

/// The notice a warned tenant's people get.
fn notice(plan: &clawpen_core::plan::Plan, idle_days: f64) -> String {
    let mut text = format!("Your agents here have not been used for {} days.", idle_days.floor().max(0.0) as u64);
    if plan.inactive_grace_days > 0.0 {
        text.push_str(&format!(" In {} days their files will be archived: they stay safe and come back the next time you write.", days_text(plan.inactive_grace_days)));
    }
    if plan.inactive_delete_days > 0.0 {
        let left = (plan.inactive_delete_days - idle_days).max(plan.inactive_grace_days);
        text.push_str(&format!(" In {} days the account and everything in it will be deleted.", days_text(left)));
    }
    text.push_str(" Send any message to keep it.");
    text
}

fn days_text(d: f64) -> String {
    if d >= 1.0 { format!("{}", d.round() as u64) } else { format!("{d:.2}") }
}

impl App {
    /// Looks at the inactivity rules (at most every second, one look at a time, in its own
    /// task): warns, archives and deletes what is due.
    pub(crate) fn start_inactivity_check(&self, agents: &[Agent], tenants: &[Tenant], now: i64) {
        let st = &self.inactivity;
        if now - st.last.load(Ordering::Acquire) < CHECK_EVERY_MS {
            return;
        }
        let any = tenants.iter().any(|t| {
            let p = self.config.plan_or_default(&t.plan);
            p.inactive_warn_days > 0.0 || p.inactive_delete_days > 0.0
        });
        if !any || st.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        st.last.store(now, Ordering::Release);
        let (app, agents, tenants) = (self.clone(), agents.to_vec(), tenants.to_vec());
        tokio::spawn(async move {
            let _busy = Busy(&app.inactivity.busy);
            if let Err(e) = app.check_inactivity(&agents, &tenants, now).await {
                warn!(error = %e.message, "cannot look at the inactivity rules; trying again later");
            }
        });
    }

    async fn check_inactivity(&self, agents: &[Agent], tenants: &[Tenant], now: i64) -> Result<(), ApiError> {
        let records = self.store.all_inactivity().await?;
        let sys = Actor::system();
        for t in tenants {
            let plan = self.config.plan_or_default(&t.plan);
            let record = records.iter().find(|r| r.tenant_id == t.id);
            if plan.inactive_warn_days == 0.0 && plan.inactive_delete_days == 0.0 && record.is_none() {
                continue;
            }
            let last = last_activity(t, agents);
            let idle_days = (now - last) as f64 / DAY_MS;
            match due(plan, last, record, now) {
                Due::Nothing => {}
                Due::Forget => {
                    self.store.clear_inactivity(&t.id).await?;
                    self.audit(&t.id, None, &sys, "tenant.active", "used again after an inactivity warning", None).await;
                }
                Due::Warn => {
                    self.store.set_warned(&t.id, now).await?;
                    let reached = self.telegram.notify(self, t, &notice(plan, idle_days)).await;
                    let detail = serde_json::json!({"idle_days": idle_days, "archive_in_days": plan.inactive_grace_days, "delete_after_days": plan.inactive_delete_days, "told": reached});
                    self.audit(&t.id, None, &sys, "tenant.inactive-warn", &format!("no activity for {idle_days:.2} days"), Some(detail)).await;
                    info!(tenant = %t.id, idle_days, reached, "inactive tenant warned");
                }
                Due::Archive => self.archive_tenant(t, idle_days, now).await?,
                Due::Delete => {
                    info!(tenant = %t.id, idle_days, "deleting a tenant inactive past its plan's inactive_delete_days");
                    self.audit(&t.id, None, &sys, "tenant.inactive-delete", &format!("no activity for {idle_days:.2} days"), None).await;
                    self.purge_tenant(&t.id, &sys).await?;
                }
            }
        }
        Ok(())
    }

    /// Archives every agent of the tenant (see [`App::archive_agent`]); the tenant is marked
    /// archived only when all of them are, so a failure is tried again at the next look.
    async fn archive_tenant(&self, t: &Tenant, idle_days: f64, now: i64) -> Result<(), ApiError> {
        let mut archived = 0;
        for a in self.store.list_agents(&t.id).await? {
            if a.desired_state == DesiredState::Deleted {
                continue;
            }
            let _guard = self.lock_agent(&a.id).await;
            if self.archive_agent(t, &a.id).await? {
                archived += 1;
            }
        }
        self.store.set_archived(&t.id, now).await?;
        self.audit(&t.id, None, &Actor::system(), "tenant.archive", &format!("no activity for {idle_days:.2} days"), Some(serde_json::json!({"agents": archived}))).await;
        info!(tenant = %t.id, agents = archived, "inactive tenant's agents archived to storage");
        Ok(())
    }

    /// Takes the agent off its node: its sandbox is removed, its workspace backed up and its
    /// filesystem removed, so it holds no memory and no disk; it sleeps (tier `removed`) and
    /// its next start restores the workspace from that snapshot. False when it had no
    /// filesystem on its node. Callers hold the agent's lock.
    pub(crate) async fn archive_agent(&self, tenant: &Tenant, id: &AgentId) -> Result<bool, ApiError> {
        let sys = Actor::system();
        let a = self.store.get_agent(&tenant.id, id).await?;
        if a.desired_state == DesiredState::Running && a.hibernation != Tier::Removed && a.observed_state != ObservedState::Crashloop {
            match self.hibernate_now(tenant, id, Tier::Removed, &sys, "archived for inactivity").await {
                Ok(()) => {}
                Err(e) if e.code == "not_running" => {}
                Err(e) => return Err(e),
            }
        }
        // Whatever sandbox is left (a stopped agent's, a crash loop's) goes too.
        if let Some(node) = a.node.as_deref() {
            self.runtime.remove(&format!("{node}/{}", clawpen_core::spec::container_name(&self.instance, id))).await?;
        }
        self.release(id);
        self.store.set_observed(id, &Observation { state: ObservedState::Absent, ..Default::default() }).await?;
        if a.desired_state == DesiredState::Running {
            self.store.set_hibernation(id, Tier::Removed).await?;
            self.with_life(id, |l| l.hibernated(Tier::Removed));
        }
        let layout = self.layout_of(&a).clone();
        if !layout.has_volume(id) {
            return Ok(false);
        }
        let snapshot = self.back_up_and_remove(tenant, id, layout, "archived for inactivity").await?;
        self.audit(&tenant.id, Some(id), &sys, "agent.archive", "archived to storage for inactivity; the next start restores it", Some(serde_json::json!({"snapshot": snapshot}))).await;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(warn: f64, grace: f64, delete: f64) -> clawpen_core::plan::Plan {
        clawpen_core::plan::Plan { inactive_warn_days: warn, inactive_grace_days: grace, inactive_delete_days: delete, ..Default::default() }
    }

    fn rec(warned_at: i64, archived_at: Option<i64>) -> Inactivity {
        Inactivity { tenant_id: clawpen_core::ids::TenantId::new(), warned_at, archived_at }
    }

    const D: i64 = 86_400_000;

    #[test]
    fn the_rules_come_in_their_order() {
        let p = plan(30.0, 7.0, 90.0);
        assert_eq!(due(&p, 0, None, 29 * D), Due::Nothing);
        assert_eq!(due(&p, 0, None, 30 * D), Due::Warn);
        let warned = rec(30 * D, None);
        assert_eq!(due(&p, 0, Some(&warned), 36 * D), Due::Nothing);
        assert_eq!(due(&p, 0, Some(&warned), 37 * D), Due::Archive);
        let archived = rec(30 * D, Some(37 * D));
        assert_eq!(due(&p, 0, Some(&archived), 89 * D), Due::Nothing);
        assert_eq!(due(&p, 0, Some(&archived), 90 * D), Due::Delete);
        // Activity after the warning forgets it.
        assert_eq!(due(&p, 31 * D, Some(&archived), 40 * D), Due::Forget);
        // Never deleted without the warning first, when warnings are set.
        assert_eq!(due(&p, 0, None, 100 * D), Due::Warn);
        assert_eq!(due(&p, 0, Some(&rec(99 * D, None)), 100 * D), Due::Nothing);
        // Without warnings, deletion alone.
        assert_eq!(due(&plan(0.0, 0.0, 90.0), 0, None, 90 * D), Due::Delete);
        // Nothing set: nothing ever.
        assert_eq!(due(&plan(0.0, 0.0, 0.0), 0, None, 1000 * D), Due::Nothing);
    }

    #[test]
    fn the_notice_says_what_comes_and_how_to_keep_it() {
        let t = notice(&plan(30.0, 7.0, 90.0), 30.2);
        assert!(t.contains("30 days") && t.contains("In 7 days") && t.contains("In 60 days") && t.contains("Send any message"), "{t}");
    }
}
