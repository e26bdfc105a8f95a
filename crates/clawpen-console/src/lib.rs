//! The web console's rendering: the server-rendered HTML pages (maud), the console's own small
//! static CSS and JS, and the security headers every console response carries.
//!
//! Pure: no I/O, no HTTP framework, no store. The server builds the view structs from its
//! application layer, calls a page function and serves the `String` it answers, with
//! [`security_headers`]; it serves [`asset`]s at `/console/assets/{name}`.
//!
//! # Layout
//! - [`layout`]: the [`Frame`] every page but the login page has (title, navigation, the CSRF
//!   token, a flash message) and the page shell.
//! - `pages`: the tenant's pages (agents, one agent, usage, integrations, Telegram, members),
//!   the login page and the error page.
//! - `admin`: the operator's pages (overview, tenants, audit).
//! - `chart`: the usage page's SVG chart of daily spend.
//!
//! # Rules the templates keep
//! - No inline script or style anywhere (the CSP forbids both): no `<script>` without `src`, no
//!   `style=` and no `on…=` attribute. Scripts load as `<script src=… defer>`; the chart's SVG
//!   uses presentation attributes and classes.
//! - Every text from a person or an agent goes through maud's escaping; nothing here wraps data
//!   in `PreEscaped`.
//! - Every form that posts carries a hidden `csrf` input with [`Frame::csrf`]; a form shown
//!   again with an error keeps what was typed (the server passes the values back), passwords
//!   excepted.

mod admin;
mod chart;
pub mod layout;
mod pages;
#[cfg(test)]
mod tests;

pub use maud::Markup;

pub use admin::{admin_page, audit_page, tenants_page, AdminAgentRow, AdminView, AuditFilter, AuditRow, NodeRow, SpenderRow, TenantRow, TenantsView};
pub use chart::spend_chart;
pub use layout::{Flash, FlashKind, Frame, Nav};
pub use pages::{agent_page, agents_page, error_page, integrations_page, login_page, members_page, telegram_page, usage_page, AgentDetail, AgentPage, AgentRow, CallRow, ConnectionRow, DaySpend, DeployForm, MemberRow, MembersView, MemoryLine, PairedRow, ProposalRow, ProviderRow, TelegramView, ToolRow, UsageView};

/// Micro-credits in one credit.
pub const MICRO: i64 = 1_000_000;

/// Money: integer micro-credits shown as `12.34 credits`: two decimals, rounded toward zero,
/// thousands separated by commas, negative with a minus (`-0.50 credits`; an amount that rounds
/// to zero is `0.00 credits`, without a sign).
pub fn credits(micro: i64) -> String {
    format!("{} credits", credits_number(micro))
}

/// [`credits`] without the unit: `12,345.00`, `-0.50`.
pub fn credits_number(micro: i64) -> String {
    let cents = micro.unsigned_abs() / 10_000;
    let sign = if micro < 0 && cents > 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", group(cents / 100), cents % 100)
}

/// A whole number with commas between the thousands: `12,345`, `-7`.
pub fn number(n: i64) -> String {
    let sign = if n < 0 { "-" } else { "" };
    format!("{sign}{}", group(n.unsigned_abs()))
}

fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) { out.push(','); }
        out.push(c);
    }
    out
}

/// The Content-Security-Policy of every console response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The `Cache-Control` an asset may be served with instead of the pages' `no-store`.
pub const ASSET_CACHE_CONTROL: &str = "max-age=300";

const PAGE_HEADERS: &[(&str, &str)] = &[
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
];

const ASSET_HEADERS: &[(&str, &str)] = &[
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cache-Control", ASSET_CACHE_CONTROL),
];

/// Headers for every console response (pages: `Cache-Control: no-store`). Header names are in
/// their usual capitalization; an HTTP library that wants lowercase names lowercases them.
pub fn security_headers() -> &'static [(&'static str, &'static str)] {
    PAGE_HEADERS
}

/// [`security_headers`] for an [`asset`]: the same, but `Cache-Control: max-age=300`.
pub fn asset_headers() -> &'static [(&'static str, &'static str)] {
    ASSET_HEADERS
}

const ASSETS: &[(&str, &str, &[u8])] = &[
    ("console.css", "text/css; charset=utf-8", include_bytes!("../assets/console.css")),
    ("chat.js", "text/javascript; charset=utf-8", include_bytes!("../assets/chat.js")),
    ("console.js", "text/javascript; charset=utf-8", include_bytes!("../assets/console.js")),
];

/// A static file the server serves at `/console/assets/{name}`: its content type and bytes.
/// `None` for any other name (no paths, no directory listing).
pub fn asset(name: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS.iter().find(|(n, _, _)| *n == name).map(|(_, ct, bytes)| (*ct, *bytes))
}

/// The names [`asset`] answers, for a server that wants to list or preload them.
pub fn asset_names() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|(n, _, _)| *n)
}
