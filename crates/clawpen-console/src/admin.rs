//! The operator's pages: the overview (nodes, agents, top spenders), the tenants, the audit.

use maud::html;

use crate::layout::{alert, badge, csrf_input, page, td, Frame};
use crate::{credits, number};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub name: String,
    pub state: String,
    pub agents: i64,
    pub committed_mib: i64,
    pub capacity_mib: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAgentRow {
    pub tenant: String,
    pub tenant_id: String,
    pub id: String,
    pub name: String,
    pub state: String,
    pub crashloop: bool,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpenderRow {
    pub tenant: String,
    pub tenant_id: String,
    /// This month, micro-credits.
    pub spent: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminView {
    pub nodes: Vec<NodeRow>,
    /// Already sorted: crash loops first.
    pub agents: Vec<AdminAgentRow>,
    pub top_spenders: Vec<SpenderRow>,
}

fn tenant_link(id: &str, name: &str) -> maud::Markup {
    html! { a href={ "/console/admin/tenants#tenant-" (id) } { (name) } }
}

/// The overview: nodes, every agent (crash loops first), this month's top spenders.
pub fn admin_page(frame: &Frame, a: &AdminView) -> String {
    page(frame, "/console/admin", &[], html! {
        section.card #nodes aria-labelledby="nodes-h" {
            h2 #nodes-h { "Nodes" }
            @if a.nodes.is_empty() {
                p.empty { "No nodes." }
            } @else {
                table.cards #nodes-table {
                    thead { tr { th scope="col" { "Node" } th scope="col" { "State" } th.num scope="col" { "Agents" } th scope="col" { "Memory committed" } } }
                    tbody {
                        @for n in &a.nodes {
                            tr data-node=(n.name) {
                                (td("Node", html! { code { (n.name) } }))
                                (td("State", badge(&n.state)))
                                td.num data-label="Agents" { (number(n.agents)) }
                                (td("Memory committed", html! {
                                    meter min="0" max=(n.capacity_mib.max(1)) high=(n.capacity_mib.max(1) * 9 / 10) value=(n.committed_mib.max(0)) { (number(n.committed_mib)) " of " (number(n.capacity_mib)) " MiB" }
                                    " " span.meter-text { (number(n.committed_mib)) " / " (number(n.capacity_mib)) " MiB" }
                                }))
                            }
                        }
                    }
                }
            }
        }
        section.card #admin-agents aria-labelledby="admin-agents-h" {
            h2 #admin-agents-h { "Agents" }
            @if a.agents.is_empty() {
                p.empty { "No agents." }
            } @else {
                table.cards #admin-agents-table {
                    thead { tr { th scope="col" { "Tenant" } th scope="col" { "Agent" } th scope="col" { "State" } th scope="col" { "Last error" } } }
                    tbody {
                        @for r in &a.agents {
                            tr data-agent-id=(r.id) .crashloop[r.crashloop] {
                                (td("Tenant", tenant_link(&r.tenant_id, &r.tenant)))
                                (td("Agent", html! { (r.name) " " code.muted { (r.id) } }))
                                (td("State", html! { (badge(&r.state)) @if r.crashloop && !r.state.contains("crash") { " " span.badge.state-crashloop { "crash loop" } } }))
                                (td("Last error", html! { @if let Some(e) = &r.last_error { span.error-text { (e) } } @else { span.muted { "—" } } }))
                            }
                        }
                    }
                }
            }
        }
        section.card #spenders aria-labelledby="spenders-h" {
            h2 #spenders-h { "Top spenders this month" }
            @if a.top_spenders.is_empty() {
                p.empty { "Nobody has spent anything this month." }
            } @else {
                table.cards #spenders-table {
                    thead { tr { th scope="col" { "Tenant" } th.num scope="col" { "Spent" } } }
                    tbody {
                        @for s in &a.top_spenders {
                            tr { (td("Tenant", tenant_link(&s.tenant_id, &s.tenant))) td.num data-label="Spent" { (credits(s.spent)) } }
                        }
                    }
                }
            }
        }
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRow {
    pub id: String,
    pub name: String,
    pub plan: String,
    /// Micro-credits.
    pub balance: i64,
    pub agents: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantsView {
    pub tenants: Vec<TenantRow>,
    pub plans: Vec<String>,
    pub form_name: String,
    pub form_email: String,
    pub error: Option<String>,
}

/// Every tenant with its plan and credits forms, and the form creating one.
pub fn tenants_page(frame: &Frame, t: &TenantsView) -> String {
    let err = t.error.as_ref().map(|_| "tenant-error");
    page(frame, "/console/admin/tenants", &[], html! {
        section.card aria-labelledby="tenants-h" {
            h2 #tenants-h { "Tenants" }
            @if t.tenants.is_empty() {
                p.empty #tenants-empty { "No tenants yet." }
            } @else {
                table.cards #tenants {
                    thead { tr { th scope="col" { "Tenant" } th scope="col" { "Plan" } th.num scope="col" { "Balance" } th.num scope="col" { "Agents" } th scope="col" { "Add credits" } } }
                    tbody {
                        @for (i, r) in t.tenants.iter().enumerate() {
                            tr id={ "tenant-" (r.id) } data-tenant-id=(r.id) {
                                (td("Tenant", html! { (r.name) " " code.muted { (r.id) } }))
                                (td("Plan", html! {
                                    form method="post" class="inline" action={ "/console/admin/tenants/" (r.id) "/plan" } {
                                        (csrf_input(&frame.csrf))
                                        label.visually-hidden for={ "plan-" (i) } { "Plan of " (r.name) }
                                        select id={ "plan-" (i) } name="plan" {
                                            @if !t.plans.contains(&r.plan) { option value=(r.plan) selected { (r.plan) } }
                                            @for p in &t.plans { option value=(p) selected[*p == r.plan] { (p) } }
                                        }
                                        " " button.small type="submit" { "Change" }
                                    }
                                }))
                                td.num data-label="Balance" { (credits(r.balance)) }
                                td.num data-label="Agents" { (number(r.agents)) }
                                (td("Add credits", html! {
                                    form method="post" class="inline" action={ "/console/admin/tenants/" (r.id) "/credits" } {
                                        (csrf_input(&frame.csrf))
                                        label.visually-hidden for={ "credits-" (i) } { "Credits to add to " (r.name) }
                                        input.credits-input id={ "credits-" (i) } type="text" name="credits" inputmode="decimal" pattern="-?[0-9]+([.][0-9]{1,6})?" placeholder="10 or 2.5" required autocomplete="off";
                                        " " button.small type="submit" { "Add" }
                                    }
                                }))
                            }
                        }
                    }
                }
            }
        }
        section.card aria-labelledby="new-tenant-h" {
            h2 #new-tenant-h { "Create a tenant" }
            (alert("tenant-error", t.error.as_deref()))
            form method="post" id="tenant-form" action="/console/admin/tenants" {
                (csrf_input(&frame.csrf))
                div.field {
                    label for="tenant-name" { "Name" }
                    input #tenant-name type="text" name="name" value=(t.form_name) required autocomplete="off" aria-describedby=[err];
                }
                div.field {
                    label for="tenant-plan" { "Plan" }
                    select #tenant-plan name="plan" required { @for p in &t.plans { option value=(p) { (p) } } }
                }
                fieldset {
                    legend { "Its first member" }
                    div.field {
                        label for="tenant-email" { "Email" }
                        input #tenant-email type="email" name="email" value=(t.form_email) required autocomplete="off" aria-describedby=[err];
                    }
                    div.field {
                        label for="tenant-password" { "Password" }
                        input #tenant-password type="password" name="password" required minlength="12" autocomplete="new-password" aria-describedby={ "tenant-password-hint" @if let Some(e) = err { " " (e) } };
                        p.hint #tenant-password-hint { "At least 12 characters." }
                    }
                }
                button.primary type="submit" #tenant-create { "Create" }
            }
        }
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub at: String,
    pub tenant: Option<String>,
    pub agent: Option<String>,
    pub actor: String,
    pub action: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub tenant: String,
    pub action: String,
}

/// The audit: a GET filter form, then the rows.
pub fn audit_page(frame: &Frame, rows: &[AuditRow], filter: &AuditFilter) -> String {
    page(frame, "/console/admin/audit", &[], html! {
        form.filter #audit-filter method="get" action="/console/admin/audit" {
            div.field {
                label for="audit-tenant" { "Tenant" }
                input #audit-tenant type="text" name="tenant" value=(filter.tenant) autocomplete="off";
            }
            div.field {
                label for="audit-action" { "Action" }
                input #audit-action type="text" name="action" value=(filter.action) autocomplete="off";
            }
            button type="submit" #audit-submit { "Filter" }
        }
        @if rows.is_empty() {
            p.empty #audit-empty { "No audit entries match." }
        } @else {
            table.cards #audit {
                thead { tr { th scope="col" { "When" } th scope="col" { "Tenant" } th scope="col" { "Agent" } th scope="col" { "Actor" } th scope="col" { "Action" } th scope="col" { "Reason" } } }
                tbody {
                    @for r in rows {
                        tr {
                            (td("When", html! { time { (r.at) } }))
                            (td("Tenant", html! { @if let Some(x) = &r.tenant { code { (x) } } @else { span.muted { "—" } } }))
                            (td("Agent", html! { @if let Some(x) = &r.agent { code { (x) } } @else { span.muted { "—" } } }))
                            (td("Actor", html! { (r.actor) }))
                            (td("Action", html! { code { (r.action) } }))
                            (td("Reason", html! { (r.reason) }))
                        }
                    }
                }
            }
        }
    })
}
