//! Signing in to the console: members by email and password (argon2id), the operator by the
//! admin token. A session is a random 32-byte token in an `HttpOnly; SameSite=Strict` cookie
//! (`Secure` when the server's public URL is https); the store keeps only its SHA-256, with the
//! CSRF token every form of the session carries. Sign-in attempts are rate limited per account
//! and for the whole server; signing out everywhere ends every session of the member.

use std::num::NonZeroU32;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clawpen_store::console::WebSession;
use clawpen_store::{Member, Tenant};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::App;

pub const SESSION_COOKIE: &str = "clawpen_session";
/// The sign-in page's own CSRF token (double-submit: the cookie and the form's field).
pub const LOGIN_COOKIE: &str = "clawpen_login";
/// How long a session lasts.
pub const SESSION_TTL_MS: i64 = 7 * 24 * 3600 * 1000;
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 12;

/// Sign-in attempts: 5 a minute per account, 60 a minute for the whole server.
pub struct LoginLimits {
    per_account: DefaultKeyedRateLimiter<String>,
    all: DefaultDirectRateLimiter,
}

impl Default for LoginLimits {
    fn default() -> Self {
        let q = |n: u32| Quota::per_minute(NonZeroU32::new(n).expect("nonzero"));
        LoginLimits { per_account: RateLimiter::keyed(q(5)), all: RateLimiter::direct(q(60)) }
    }
}

impl LoginLimits {
    /// Takes one attempt for `account`; `Err(wait)` when spent.
    pub fn check(&self, account: &str) -> Result<(), Duration> {
        let now = governor::clock::Clock::now(&governor::clock::DefaultClock::default());
        self.all.check().map_err(|n| n.wait_time_from(now))?;
        self.per_account.check_key(&account.to_owned()).map_err(|n| n.wait_time_from(now))
    }
}

/// 32 random bytes, base64url.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time equality of two tokens.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The argon2id PHC string of a password (the default parameters: 19 MiB, 2 passes).
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a salt");
    Argon2::default().hash_password(password.as_bytes(), &salt).expect("argon2 with default parameters").to_string()
}

/// Whether `password` is the one `phc` was made from. A malformed hash matches nothing.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A hash no password matches, checked against when the email is unknown so that both cases
/// take as long.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&random_token()))
}

/// A cookie's value from the request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// `Set-Cookie` for a cookie of the console: HttpOnly, SameSite=Strict, Path=/, Secure when
/// served over https. `max_age` 0 deletes it.
pub fn set_cookie(app: &App, name: &str, value: &str, max_age_secs: i64) -> String {
    let secure = app.config.public_url.as_deref().is_some_and(|u| u.starts_with("https://"));
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{}", if secure { "; Secure" } else { "" })
}

/// Starts a session and answers the redirect that sets its cookie.
pub async fn start_session(app: &App, member: Option<&Member>, to: &str) -> Result<Response, clawpen_store::StoreError> {
    let token = random_token();
    let now = clawpen_store::now_ms();
    let _ = app.store.prune_web_sessions(now).await;
    let s = WebSession { token_hash: token_hash(&token), member: member.map(|m| m.id.clone()), tenant: member.map(|m| m.tenant_id.clone()), csrf: random_token(), created_at: now, expires_at: now + SESSION_TTL_MS };
    app.store.create_web_session(&s).await?;
    let mut r = Redirect::to(to).into_response();
    let headers = r.headers_mut();
    for c in [set_cookie(app, SESSION_COOKIE, &token, SESSION_TTL_MS / 1000), set_cookie(app, LOGIN_COOKIE, "", 0)] {
        if let Ok(v) = c.parse() {
            headers.append(header::SET_COOKIE, v);
        }
    }
    Ok(r)
}

/// Who a signed-in request is.
pub enum Who {
    Member { tenant: Box<Tenant>, member: Box<Member> },
    Admin,
}

/// A request with a live session.
pub struct Session {
    pub session: WebSession,
    pub who: Who,
}

/// Not signed in (or the session ended): to the sign-in page.
pub struct SignIn;

impl IntoResponse for SignIn {
    fn into_response(self) -> Response {
        Redirect::to("/console/login").into_response()
    }
}

impl FromRequestParts<App> for Session {
    type Rejection = SignIn;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, SignIn> {
        let token = cookie(&parts.headers, SESSION_COOKIE).filter(|t| t.len() == 43).ok_or(SignIn)?;
        let (session, member) = app.store.web_session_with_member(&token_hash(&token), clawpen_store::now_ms()).await.ok().flatten().ok_or(SignIn)?;
        let who = match (member, &session.member) {
            (Some((tenant, member)), Some(_)) => Who::Member { tenant: Box::new(tenant), member: Box::new(member) },
            (None, None) => Who::Admin,
            _ => return Err(SignIn),
        };
        Ok(Session { session, who })
    }
}

/// A member's page: the tenant and member it is for.
pub struct MemberSession {
    pub tenant: Tenant,
    pub member: Member,
    pub csrf: String,
    pub token_hash: String,
}

impl MemberSession {
    pub fn actor(&self) -> crate::fleet::Actor {
        crate::fleet::Actor(format!("member:{}", self.member.id))
    }
}

impl FromRequestParts<App> for MemberSession {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Response> {
        let s = Session::from_request_parts(parts, app).await.map_err(IntoResponse::into_response)?;
        match s.who {
            Who::Member { tenant, member } => Ok(MemberSession { tenant: *tenant, member: *member, csrf: s.session.csrf, token_hash: s.session.token_hash }),
            Who::Admin => Err(Redirect::to("/console/admin").into_response()),
        }
    }
}

/// The operator's page.
pub struct AdminSession {
    pub csrf: String,
    pub token_hash: String,
}

impl FromRequestParts<App> for AdminSession {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Response> {
        let s = Session::from_request_parts(parts, app).await.map_err(IntoResponse::into_response)?;
        match s.who {
            Who::Admin => Ok(AdminSession { csrf: s.session.csrf, token_hash: s.session.token_hash }),
            Who::Member { .. } => Err((StatusCode::FORBIDDEN, "the operator's pages need the operator's sign-in").into_response()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_argon2id_and_verify() {
        let h = hash_password("correct horse battery staple");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse battery staple", &h));
        assert!(!verify_password("correct horse battery stapl", &h));
        assert!(!verify_password("x", "not a hash"));
        assert_ne!(hash_password("same"), hash_password("same"), "salted");
    }

    #[test]
    fn cookies_are_read_by_name() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; clawpen_session=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "clawpen"), None);
    }

    #[test]
    fn sign_in_attempts_are_limited_per_account() {
        let l = LoginLimits::default();
        for _ in 0..5 {
            assert!(l.check("ana@example.com").is_ok());
        }
        assert!(l.check("ana@example.com").is_err());
        assert!(l.check("bob@example.com").is_ok(), "another account is not held up");
    }
}
