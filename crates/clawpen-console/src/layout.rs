//! The frame every page but the login page has, the page shell, and the small pieces the pages
//! share (the CSRF input, button-only forms, state badges, form fields).

use maud::{html, Markup, DOCTYPE};

/// Which navigation a page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nav {
    /// A tenant's member: Agents, Usage, Integrations, Telegram, Members, Sign out, Sign out
    /// everywhere.
    Tenant { tenant_name: String, member_name: String },
    /// The operator: Overview, Tenants, Audit, Sign out.
    Admin,
    /// None (an error page for someone not signed in).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashKind {
    Ok,
    Error,
}

/// A message shown at the top of a page (after a redirect: "Saved.", "Could not deploy: …").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    pub kind: FlashKind,
    pub text: String,
}

/// What every page but the login page has: the title, the navigation, the CSRF token for its
/// forms, a message to show at the top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub title: String,
    pub nav: Nav,
    pub csrf: String,
    pub flash: Option<Flash>,
}

const TENANT_LINKS: &[(&str, &str)] = &[("/console/agents", "Agents"), ("/console/usage", "Usage"), ("/console/integrations", "Integrations"), ("/console/telegram", "Telegram"), ("/console/members", "Members")];
const ADMIN_LINKS: &[(&str, &str)] = &[("/console/admin", "Overview"), ("/console/admin/tenants", "Tenants"), ("/console/admin/audit", "Audit")];

/// A whole page: `current` is the navigation link to mark `aria-current="page"` (or ""),
/// `scripts` the page's own scripts besides console.js (names under /console/assets/).
pub(crate) fn page(frame: &Frame, current: &str, scripts: &[&str], body: Markup) -> String {
    shell(&frame.title, scripts, html! {
        a.skip href="#main" { "Skip to content" }
        header.top {
            div.bar {
                a.brand href=(home(&frame.nav)) { "clawpen" }
                @if let Nav::Tenant { tenant_name, member_name } = &frame.nav {
                    span.who { span.tenant { (tenant_name) } " · " span.member { (member_name) } }
                } @else if let Nav::Admin = &frame.nav {
                    span.who { "Operator" }
                }
            }
            (nav(frame, current))
        }
        main #main {
            @if let Some(f) = &frame.flash { (flash(f)) }
            h1 { (frame.title) }
            (body)
        }
    })
}

/// The document around a body: head, stylesheet, scripts (all from /console/assets/).
pub(crate) fn shell(title: &str, scripts: &[&str], body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) @if title != "clawpen" { " · clawpen" } }
                // No favicon request (data: is in img-src).
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
                @for s in scripts { script src={ "/console/assets/" (s) } defer {} }
            }
            body { (body) }
        }
    }.into_string()
}

fn home(nav: &Nav) -> &'static str {
    match nav { Nav::Admin => "/console/admin", _ => "/console" }
}

fn nav(frame: &Frame, current: &str) -> Markup {
    let links = match &frame.nav { Nav::Tenant { .. } => TENANT_LINKS, Nav::Admin => ADMIN_LINKS, Nav::None => return html! {} };
    html! {
        nav.main-nav aria-label="Main" {
            ul.links {
                @for (href, label) in links {
                    li { a href=(href) aria-current=[(*href == current).then_some("page")] { (label) } }
                }
            }
            div.signout {
                form method="post" action="/console/logout" {
                    (csrf_input(&frame.csrf))
                    button.link type="submit" #sign-out { "Sign out" }
                }
                @if let Nav::Tenant { .. } = &frame.nav {
                    form method="post" action="/console/logout-all" {
                        (csrf_input(&frame.csrf))
                        button.link type="submit" #sign-out-everywhere data-confirm="Sign out on every device?" { "Sign out everywhere" }
                    }
                }
            }
        }
    }
}

pub(crate) fn flash(f: &Flash) -> Markup {
    html! {
        @match f.kind {
            FlashKind::Ok => div.flash.ok #flash role="status" { (f.text) },
            FlashKind::Error => div.flash.error #flash role="alert" { (f.text) },
        }
    }
}

/// The hidden input every posting form carries.
pub(crate) fn csrf_input(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// A form that is one button: POST `action` with the CSRF token; `confirm` asks first
/// (console.js, when it runs).
pub(crate) fn button_form(csrf: &str, action: &str, label: &str, class: &str, confirm: Option<&str>) -> Markup {
    html! {
        form method="post" class="inline" action=(action) {
            (csrf_input(csrf))
            button type="submit" class=(class) data-confirm=[confirm] { (label) }
        }
    }
}

/// A state as a badge: `<span class="badge state-running">running</span>`.
pub(crate) fn badge(state: &str) -> Markup {
    html! { span class={ "badge state-" (class_word(state)) } { (state.replace('_', " ")) } }
}

/// A word safe in a class attribute: lowercase ASCII letters, digits and `-`.
pub(crate) fn class_word(s: &str) -> String {
    let w: String = s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    if w.is_empty() { "unknown".to_owned() } else { w }
}

/// An error under a field, with the id the field's `aria-describedby` names.
pub(crate) fn field_error(id: &str, error: Option<&str>) -> Markup {
    html! { @if let Some(e) = error { p.field-error id=(id) { (e) } } }
}

/// An error box at the top of a section.
pub(crate) fn alert(id: &str, error: Option<&str>) -> Markup {
    html! { @if let Some(e) = error { div.flash.error id=(id) role="alert" { (e) } } }
}

/// A `<td>` with the column's name for the card layout on phones.
pub(crate) fn td(label: &str, content: Markup) -> Markup {
    html! { td data-label=(label) { (content) } }
}
