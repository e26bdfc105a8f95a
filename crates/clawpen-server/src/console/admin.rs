//! The operator's pages: nodes, agents by state (crash loops first), top spenders this month,
//! tenants (create with a first member who signs in, plan, credits) and the audit log.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use clawpen_console as ui;
use clawpen_core::ids::TenantId;

use super::auth::AdminSession;
use super::{admin_frame, back, flash, render, say, Posted};
use crate::api::views::AgentView;
use crate::app::App;
use crate::error::ApiError;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/admin", get(overview))
        .route("/admin/tenants", get(tenants).post(create_tenant))
        .route("/admin/tenants/{id}/plan", post(set_plan))
        .route("/admin/tenants/{id}/credits", post(add_credits))
        .route("/admin/audit", get(audit))
}

type Q = Query<HashMap<String, String>>;

fn tenant_id(id: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(id).map_err(|_| ApiError::not_found("tenant"))
}

async fn overview(State(app): State<App>, s: AdminSession, Query(q): Q) -> Response {
    let frame = admin_frame(&s, "Overview", flash(&q));
    let r = async {
        let nodes = app.node_views().await?.into_iter().map(|n| ui::NodeRow { name: n.name, state: n.state, agents: n.agents as i64, committed_mib: n.committed_mib as i64, capacity_mib: n.budget_mib as i64 }).collect();
        let tenants = app.store.list_tenants().await?;
        let names: HashMap<TenantId, String> = tenants.iter().map(|t| (t.id.clone(), t.name.clone())).collect();
        let mut agents: Vec<ui::AdminAgentRow> = app
            .store
            .all_agents()
            .await?
            .into_iter()
            .map(|a| {
                let tenant_id = a.tenant_id.clone();
                let v = AgentView::from(a);
                ui::AdminAgentRow { tenant: names.get(&tenant_id).cloned().unwrap_or_default(), tenant_id: tenant_id.to_string(), crashloop: v.observed_state == "crashloop", id: v.id, name: v.name, state: v.observed_state, last_error: v.last_error }
            })
            .collect();
        agents.sort_by(|a, b| b.crashloop.cmp(&a.crashloop).then(b.last_error.is_some().cmp(&a.last_error.is_some())).then(a.tenant.cmp(&b.tenant)).then(a.name.cmp(&b.name)));
        let (period, _, _) = clawpen_meter::meter::period_at(clawpen_store::now_ms());
        let mut top_spenders = Vec::new();
        for t in &tenants {
            let a = app.store.account(&t.id).await.ok();
            let spent = a.filter(|a| a.month == period.month).map_or(0, |a| a.month_spent);
            top_spenders.push(ui::SpenderRow { tenant: t.name.clone(), tenant_id: t.id.to_string(), spent });
        }
        top_spenders.sort_by_key(|s| std::cmp::Reverse(s.spent));
        top_spenders.truncate(10);
        Ok(ui::admin_page(&frame, &ui::AdminView { nodes, agents, top_spenders }))
    }
    .await;
    render(&frame, r)
}

async fn tenants_html(app: &App, s: &AdminSession, form_name: String, form_email: String, error: Option<String>, fl: Option<ui::Flash>) -> Response {
    let frame = admin_frame(s, "Tenants", fl);
    let r = async {
        let mut rows = Vec::new();
        for t in app.store.list_tenants().await? {
            let balance = crate::api::usage::account_of(app, &t).await.map(|a| a.balance).unwrap_or(0);
            let agents = app.store.list_agents(&t.id).await?.len() as i64;
            rows.push(ui::TenantRow { id: t.id.to_string(), name: t.name, plan: t.plan, balance, agents });
        }
        let plans = app.config.plans.keys().cloned().collect();
        Ok::<_, ApiError>(ui::tenants_page(&frame, &ui::TenantsView { tenants: rows, plans, form_name, form_email, error }))
    }
    .await;
    render(&frame, r)
}

async fn tenants(State(app): State<App>, s: AdminSession, Query(q): Q) -> Response {
    tenants_html(&app, &s, String::new(), String::new(), None, flash(&q)).await
}

/// A tenant and its first member, who signs in with the email and password given.
async fn create_tenant(State(app): State<App>, Posted(s, form): Posted<AdminSession>) -> Response {
    let (name, email) = (form.get("name").trim().to_owned(), form.get("email").trim().to_lowercase());
    let plan = Some(form.get("plan").to_owned()).filter(|p| !p.is_empty());
    let fail = |e: String| tenants_html(&app, &s, name.clone(), email.clone(), Some(e), None);
    let t = match crate::api::admin::make_tenant(&app, &name, plan, "console").await {
        Ok(t) => t,
        Err(e) => return fail(say(&e)).await,
    };
    match super::tenant::add_login(&app, &t.id, &email, &name, form.get("password"), "admin").await {
        Ok(_) => back("/console/admin/tenants", Ok(format!("{} is made; {email} can sign in.", t.name))),
        // Without its first member the tenant is removed again: nothing half-made is left.
        Err(e) => {
            let _ = app.store.delete_tenant(&t.id).await;
            fail(e).await
        }
    }
}

async fn set_plan(State(app): State<App>, Path(id): Path<String>, Posted(_, form): Posted<AdminSession>) -> Response {
    let plan = form.get("plan").to_owned();
    let r = async { crate::api::usage::change_plan(&app, &tenant_id(&id)?, &plan, "console").await }.await;
    back("/console/admin/tenants", r.map(|_| format!("Moved to {plan}.")).map_err(|e| say(&e)))
}

/// Credits as typed ("10", "2.5"): micro-credits, or why not.
fn parse_credits(s: &str) -> Result<i64, String> {
    let bad = || "Give a number of credits, like 10 or 2.5.".to_owned();
    let s = s.trim();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || whole.len() > 9 || frac.len() > 6 || !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let micro = whole.parse::<i64>().map_err(|_| bad())? * 1_000_000 + format!("{frac:0<6}").parse::<i64>().map_err(|_| bad())?;
    if micro == 0 { Err("Give more than 0 credits.".into()) } else { Ok(micro) }
}

async fn add_credits(State(app): State<App>, Path(id): Path<String>, Posted(_, form): Posted<AdminSession>) -> Response {
    let amount = match parse_credits(form.get("credits")) {
        Ok(a) => a,
        Err(e) => return back("/console/admin/tenants", Err(e)),
    };
    let r = async { crate::api::usage::grant(&app, &tenant_id(&id)?, amount, "added by the operator (console)").await.map(|a| a.balance) }.await;
    back("/console/admin/tenants", r.map(|b| format!("Added {}; the balance is {}.", ui::credits(amount), ui::credits(b))).map_err(|e| say(&e)))
}

async fn audit(State(app): State<App>, s: AdminSession, Query(q): Q) -> Response {
    let filter = ui::AuditFilter { tenant: q.get("tenant").cloned().unwrap_or_default(), action: q.get("action").cloned().unwrap_or_default() };
    let frame = admin_frame(&s, "Audit", flash(&q));
    let r = async {
        let tenant = match filter.tenant.trim() {
            "" => None,
            t => Some(TenantId::parse(t).map_err(|_| ApiError::invalid("The tenant filter is not a tenant id (tn_…)."))?),
        };
        let entries = app.store.list_audit(tenant.as_ref(), None, 500).await?;
        let rows: Vec<ui::AuditRow> = entries
            .into_iter()
            .filter(|e| filter.action.is_empty() || e.action.contains(filter.action.trim()))
            .take(200)
            .map(|e| ui::AuditRow { at: super::when(e.at), tenant: e.tenant_id, agent: e.agent_id, actor: e.actor, action: e.action, reason: e.reason })
            .collect();
        Ok(ui::audit_page(&frame, &rows, &filter))
    }
    .await;
    render(&frame, r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn credits_are_read_as_people_type_them() {
        assert_eq!(super::parse_credits("10"), Ok(10_000_000));
        assert_eq!(super::parse_credits("2.5"), Ok(2_500_000));
        assert_eq!(super::parse_credits(" 0.000001 "), Ok(1));
        for bad in ["", "-1", "1e3", "1.2.3", "abc", "0", "1.0000001", "9999999999"] {
            assert!(super::parse_credits(bad).is_err(), "{bad}");
        }
    }
}
