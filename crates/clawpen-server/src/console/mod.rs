//! The web console at `/console`: server-rendered pages (`clawpen-console` draws them) over the
//! same application layer as the REST API. Members sign in with email and password, the operator
//! with the admin token (see [`auth`]); every form posts with the session's CSRF token; every
//! answer carries a strict Content-Security-Policy and the usual security headers. Every action
//! here also has its REST route.

// A refusal is the page itself, made at most once per request.
#![allow(clippy::result_large_err)]

pub mod auth;
mod admin;
mod tenant;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use clawpen_console as ui;

use crate::app::App;
use crate::error::ApiError;
use auth::{same, AdminSession, MemberSession};

pub fn router() -> Router<App> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_page).post(login))
        .route("/login/admin", post(login_admin))
        .route("/logout", post(logout))
        .route("/logout-all", post(logout_all))
        .route("/assets/{name}", get(asset))
        .merge(tenant::routes())
        .merge(admin::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(security_headers))
}

async fn security_headers(req: Request, next: axum::middleware::Next) -> Response {
    let mut r = next.run(req).await;
    set_headers(r.headers_mut(), ui::security_headers());
    r
}

/// Sets each header that is not set yet.
fn set_headers(h: &mut axum::http::HeaderMap, headers: &[(&str, &str)]) {
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (header::HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            h.entry(k).or_insert(v);
        }
    }
}

async fn not_found() -> Response {
    page_error(StatusCode::NOT_FOUND, "There is no such page.")
}

async fn asset(Path(name): Path<String>) -> Response {
    match ui::asset(&name) {
        Some((ct, body)) => {
            let mut r = ([(header::CONTENT_TYPE, ct)], body).into_response();
            // An asset's own headers (cached a while); the layer adds none over them.
            set_headers(r.headers_mut(), ui::asset_headers());
            r
        }
        None => not_found().await,
    }
}

/// A page without a session (an error before sign-in).
fn page_error(status: StatusCode, text: &str) -> Response {
    let frame = ui::Frame { title: "clawpen".into(), nav: ui::Nav::None, csrf: String::new(), flash: None };
    (status, Html(ui::error_page(&frame, status.as_u16(), text))).into_response()
}

/// `/console`: to the signed-in person's first page, or to sign in.
async fn home(s: Result<auth::Session, auth::SignIn>) -> Response {
    match s {
        Ok(s) if matches!(s.who, auth::Who::Admin) => Redirect::to("/console/admin").into_response(),
        Ok(_) => Redirect::to("/console/agents").into_response(),
        Err(e) => e.into_response(),
    }
}

/// A posted form (`application/x-www-form-urlencoded`), its fields in order.
pub struct FormData(Vec<(String, String)>);

impl<S: Send + Sync> FromRequest<S> for FormData {
    type Rejection = Response;
    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let form = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form {
            return Err(page_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "This address takes a form from the console's pages."));
        }
        let body = axum::body::Bytes::from_request(req, state).await.map_err(|_| page_error(StatusCode::PAYLOAD_TOO_LARGE, "That form was too large."))?;
        Ok(FormData(form_urlencoded::parse(&body).into_owned().collect()))
    }
}

impl FormData {
    pub fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
    }

    /// The form carries this session's CSRF token; a form from another site (or an old page)
    /// does not.
    pub fn check(&self, csrf: &str) -> Result<(), Response> {
        if !csrf.is_empty() && same(self.get("csrf"), csrf) {
            Ok(())
        } else {
            Err(page_error(StatusCode::FORBIDDEN, "This form is out of date or came from another site. Reload the page and try again."))
        }
    }
}

/// Who a session's forms come from, and the CSRF token they must carry.
pub trait SessionCsrf {
    fn csrf(&self) -> &str;
}

impl SessionCsrf for MemberSession {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl SessionCsrf for AdminSession {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl SessionCsrf for auth::Session {
    fn csrf(&self) -> &str {
        &self.session.csrf
    }
}

/// A form posted by a signed-in person (`S`: a member, the operator, or either) that carries its
/// session's CSRF token. Every console form is taken through it, so no handler can forget the
/// check: a form without the token (another site's, an old page's) is answered 403 before the
/// handler runs.
pub struct Posted<S>(pub S, pub FormData);

impl<S> FromRequest<App> for Posted<S>
where
    S: axum::extract::FromRequestParts<App> + SessionCsrf + Send,
    S::Rejection: IntoResponse,
{
    type Rejection = Response;
    async fn from_request(req: Request, app: &App) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let who = S::from_request_parts(&mut parts, app).await.map_err(IntoResponse::into_response)?;
        let form = FormData::from_request(Request::from_parts(parts, body), app).await?;
        form.check(who.csrf())?;
        Ok(Posted(who, form))
    }
}

/// An error of the application layer, in plain words on the page it came from.
pub fn say(e: &ApiError) -> String {
    e.message.clone()
}

/// A redirect after a form, with a message for the next page (in its query: `ok=` or `error=`).
pub fn back(to: &str, outcome: Result<String, String>) -> Response {
    let (k, v) = match outcome {
        Ok(v) => ("ok", v),
        Err(v) => ("error", v),
    };
    let q: String = form_urlencoded::Serializer::new(String::new()).append_pair(k, &v).finish();
    let sep = if to.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{to}{sep}{q}")).into_response()
}

/// The message a redirect carried, for the page's top.
pub fn flash(q: &std::collections::HashMap<String, String>) -> Option<ui::Flash> {
    let clip = |s: &String| s.chars().filter(|c| !c.is_control()).take(300).collect::<String>();
    q.get("error").map(|e| ui::Flash { kind: ui::FlashKind::Error, text: clip(e) }).or_else(|| q.get("ok").map(|m| ui::Flash { kind: ui::FlashKind::Ok, text: clip(m) }))
}

// ---- signing in and out ----

async fn login_page(State(app): State<App>) -> Response {
    login_form(&app, None, "")
}

/// The sign-in page with a fresh double-submit token in its cookie and form.
fn login_form(app: &App, error: Option<&str>, email: &str) -> Response {
    let token = auth::random_token();
    let status = if error.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
    let mut r = (status, Html(ui::login_page(error, email, &token))).into_response();
    if let Ok(v) = auth::set_cookie(app, auth::LOGIN_COOKIE, &token, 3600).parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn login_token_ok(headers: &axum::http::HeaderMap, form: &FormData) -> bool {
    auth::cookie(headers, auth::LOGIN_COOKIE).is_some_and(|c| !c.is_empty() && same(&c, form.get("csrf")))
}

async fn login(State(app): State<App>, headers: axum::http::HeaderMap, form: FormData) -> Response {
    let email = form.get("email").trim().to_lowercase();
    if !login_token_ok(&headers, &form) {
        return login_form(&app, Some("The sign-in form was out of date. Try again."), &email);
    }
    if let Err(wait) = app.login_limits.check(&email) {
        return login_form(&app, Some(&format!("Too many attempts. Try again in {} seconds.", wait.as_secs() + 1)), &email);
    }
    let password = form.get("password").to_owned();
    let found = match app.store.web_login(&email).await {
        Ok(f) => f,
        Err(e) => return page_error(StatusCode::SERVICE_UNAVAILABLE, &format!("Signing in is not possible right now: {e}")),
    };
    let hash = found.as_ref().and_then(|(_, h)| h.clone());
    let ok = tokio::task::spawn_blocking(move || auth::verify_password(&password, hash.as_deref().unwrap_or(auth::decoy_hash()))).await.unwrap_or(false);
    match found {
        Some((member, Some(_))) if ok => {
            let _ = app.store.audit(clawpen_store::NewAudit { tenant: Some(&member.tenant_id), agent: None, actor: &format!("member:{}", member.id), action: "console.sign_in", reason: "password", detail: None }).await;
            auth::start_session(&app, Some(&member), "/console/agents").await.unwrap_or_else(|e| page_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()))
        }
        _ => login_form(&app, Some("That email and password do not match."), &email),
    }
}

async fn login_admin(State(app): State<App>, headers: axum::http::HeaderMap, form: FormData) -> Response {
    if !login_token_ok(&headers, &form) {
        return login_form(&app, Some("The sign-in form was out of date. Try again."), "");
    }
    if let Err(wait) = app.login_limits.check("admin") {
        return login_form(&app, Some(&format!("Too many attempts. Try again in {} seconds.", wait.as_secs() + 1)), "");
    }
    let sha = clawpen_store::token_sha256(form.get("admin_key").trim());
    if !same(&sha, &app.admin_token_sha256) {
        return login_form(&app, Some("That is not the admin token."), "");
    }
    let _ = app.store.audit(clawpen_store::NewAudit { tenant: None, agent: None, actor: "admin", action: "console.sign_in", reason: "admin token", detail: None }).await;
    auth::start_session(&app, None, "/console/admin").await.unwrap_or_else(|e| page_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()))
}

fn signed_out(app: &App) -> Response {
    let mut r = Redirect::to("/console/login").into_response();
    if let Ok(v) = auth::set_cookie(app, auth::SESSION_COOKIE, "", 0).parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(app): State<App>, Posted(s, _): Posted<auth::Session>) -> Response {
    let _ = app.store.delete_web_session(&s.session.token_hash).await;
    signed_out(&app)
}

/// Ends every session of the member (or every operator session): a copied cookie dies too.
async fn logout_all(State(app): State<App>, Posted(s, _): Posted<auth::Session>) -> Response {
    let _ = app.store.delete_web_sessions_of(s.session.member.as_ref()).await;
    signed_out(&app)
}

/// The frame of a member's page.
fn member_frame(s: &MemberSession, title: &str, flash: Option<ui::Flash>) -> ui::Frame {
    ui::Frame { title: title.to_owned(), nav: ui::Nav::Tenant { tenant_name: s.tenant.name.clone(), member_name: s.member.display_name.clone() }, csrf: s.csrf.clone(), flash }
}

fn admin_frame(s: &AdminSession, title: &str, flash: Option<ui::Flash>) -> ui::Frame {
    ui::Frame { title: title.to_owned(), nav: ui::Nav::Admin, csrf: s.csrf.clone(), flash }
}

/// A page, or the error page of the frame's person.
fn render(frame: &ui::Frame, r: Result<String, ApiError>) -> Response {
    match r {
        Ok(html) => Html(html).into_response(),
        Err(e) => (e.status, Html(ui::error_page(frame, e.status.as_u16(), &say(&e)))).into_response(),
    }
}

/// `YYYY-MM-DD HH:MM` (UTC) of Unix ms.
pub fn when(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000).map(|t| format!("{} {:02}:{:02}", t.date(), t.hour(), t.minute())).unwrap_or_default()
}

const DAY_MS: i64 = 86_400_000;

/// The usage chart's days that no longer change (older than yesterday: every hold of theirs has
/// expired or settled), per tenant, computed once a day; today and yesterday are read each time.
#[derive(Default)]
pub struct SpendDays(std::sync::Mutex<std::collections::HashMap<clawpen_core::ids::TenantId, SettledDays>>);

/// The day they were read on, and (day number, micro-credits) of each settled day.
type SettledDays = (i64, Vec<(i64, i64)>);

impl SpendDays {
    /// Spending per day (day number, micro-credits) of the 30 days up to `today`.
    pub async fn last_30(&self, store: &clawpen_store::Store, tenant: &clawpen_core::ids::TenantId, today: i64) -> Result<std::collections::HashMap<i64, i64>, clawpen_store::StoreError> {
        let settled = self.0.lock().expect("spend days").get(tenant).filter(|(day, _)| *day == today).map(|(_, d)| d.clone());
        let settled = match settled {
            Some(d) => d,
            None => {
                let d = store.spend_by_day(tenant, (today - 29) * DAY_MS, (today - 1) * DAY_MS).await?;
                let mut map = self.0.lock().expect("spend days");
                map.retain(|_, (day, _)| *day == today);
                map.insert(tenant.clone(), (today, d.clone()));
                d
            }
        };
        let recent = store.spend_by_day(tenant, (today - 1) * DAY_MS, i64::MAX).await?;
        Ok(settled.into_iter().chain(recent).collect())
    }
}
