//! OAuth 2.0 as the five providers run it, shared: the authorization endpoint (no human: it
//! consents at once and redirects back with a code), the token endpoint (code exchange with PKCE
//! S256, which Notion does not take, refresh, rotation for GitHub, Slack, Trello and Notion),
//! revocation (none at Trello), and the access-token check the APIs use. Each provider's own
//! paths, token formats, error codes and status codes are chosen here by [`ProviderKind`]: Trello
//! is Atlassian's 3LO (auth.atlassian.com, JSON token requests), Notion authenticates the client
//! with HTTP Basic only.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::provider::{json_response, percent_decode, Inner, Req, Shared};
use crate::ProviderKind;

/// How long an authorization code can be exchanged (all of them: 10 minutes).
const CODE_LIFETIME: Duration = Duration::from_secs(600);
/// GitHub's `refresh_token_expires_in` (six months).
const GITHUB_REFRESH_TTL: u64 = 15_897_600;

/// Google scopes the authorization endpoint knows, after `https://www.googleapis.com/auth/`.
const GOOGLE_SCOPES: &[&str] = &[
    "calendar", "calendar.readonly", "calendar.events", "calendar.events.readonly", "gmail.readonly", "gmail.compose", "gmail.send", "gmail.modify", "gmail.metadata", "drive", "drive.readonly",
    "drive.file", "drive.metadata.readonly", "userinfo.email", "userinfo.profile",
];
/// GitHub classic scopes kept in a grant (others are dropped, as GitHub ignores them).
const GITHUB_SCOPES: &[&str] = &["repo", "public_repo", "read:user", "user", "user:email", "read:org", "notifications", "gist", "workflow"];
/// Slack user scopes the authorization endpoint knows.
const SLACK_SCOPES: &[&str] = &[
    "channels:read", "channels:history", "groups:read", "groups:history", "im:read", "im:history", "mpim:read", "mpim:history", "chat:write", "users:read", "users:read.email", "search:read",
    "reactions:read", "team:read",
];
/// Trello scopes (Atlassian 3LO's granular Trello scopes) the authorization endpoint knows.
const TRELLO_SCOPES: &[&str] = &["read:board:trello", "read:card:trello", "write:card:trello", "read:member:trello", "offline_access"];

/// The authorization codes, grants and tokens issued, and the token endpoint's request counts.
#[derive(Default)]
pub(crate) struct Tokens {
    codes: HashMap<String, Code>,
    /// By grant number (an authorization, with everything refreshed from it).
    grants: Vec<Grant>,
    access: HashMap<String, Access>,
    refresh: HashMap<String, Refresh>,
    /// Token endpoint requests by grant type.
    requests: HashMap<String, usize>,
    /// Numbers every code and token minted.
    minted: u64,
}

struct Code {
    redirect_uri: String,
    scopes: Vec<String>,
    /// The PKCE challenge; `None` for Notion, which takes none.
    challenge: Option<String>,
    /// Whether the exchange gives a refresh token (Google: only with `access_type=offline`).
    offline: bool,
    used: bool,
    issued: Instant,
}

struct Grant {
    scopes: Vec<String>,
    revoked: bool,
}

struct Access {
    grant: usize,
    expires: Instant,
    /// Expired before its time: [`Tokens::expire_all`], or GitHub's refresh replaced it.
    expired: bool,
}

struct Refresh {
    grant: usize,
    /// Rotated: used once already.
    used: bool,
}

/// Why an API refused an access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No token was sent.
    Missing,
    /// Not a token this stand-in issued (or deleted).
    Invalid,
    /// Past its lifetime, or expired by the test.
    Expired,
    /// Its grant was revoked.
    Revoked,
}

impl Denied {
    /// Slack's `error` for it.
    pub(crate) fn slack_error(self) -> &'static str {
        match self {
            Denied::Missing => "not_authed",
            Denied::Invalid => "invalid_auth",
            Denied::Expired => "token_expired",
            Denied::Revoked => "token_revoked",
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Code,
    Access,
    Refresh,
}

impl Tokens {
    pub(crate) fn requests(&self, grant_type: &str) -> usize {
        self.requests.get(grant_type).copied().unwrap_or(0)
    }

    fn mint(&mut self, provider: ProviderKind, kind: Kind) -> String {
        self.minted += 1;
        let n = self.minted;
        match (provider, kind) {
            (ProviderKind::Google, Kind::Code) => format!("4/0standin-code-{n:06}"),
            (ProviderKind::Google, Kind::Access) => format!("ya29.a0standin-access-{n:06}"),
            (ProviderKind::Google, Kind::Refresh) => format!("1//0standin-refresh-{n:06}"),
            (ProviderKind::Github, Kind::Code) => format!("{n:020x}"),
            (ProviderKind::Github, Kind::Access) => format!("ghu_standin{n:025}"),
            (ProviderKind::Github, Kind::Refresh) => format!("ghr_standin{n:069}"),
            (ProviderKind::Slack, Kind::Code) => format!("4724469134.{n}.standin"),
            (ProviderKind::Slack, Kind::Access) => format!("xoxe.xoxp-1-standin-{n:06}"),
            (ProviderKind::Slack, Kind::Refresh) => format!("xoxe-1-standin-{n:06}"),
            (ProviderKind::Trello, Kind::Code) => format!("standin-trello-code-{n:06}"),
            (ProviderKind::Trello, Kind::Access) => format!("ATOAstandin{n:064x}"),
            (ProviderKind::Trello, Kind::Refresh) => format!("ATRTstandin{n:064x}"),
            (ProviderKind::Notion, Kind::Code) => format!("standin-notion-code-{n:06}"),
            (ProviderKind::Notion, Kind::Access) => format!("ntn_standin_access_{n:06}"),
            (ProviderKind::Notion, Kind::Refresh) => format!("nrt_standin_refresh_{n:06}"),
        }
    }

    fn new_access(&mut self, provider: ProviderKind, grant: usize, ttl: Duration) -> String {
        let token = self.mint(provider, Kind::Access);
        self.access.insert(token.clone(), Access { grant, expires: Instant::now() + ttl, expired: false });
        token
    }

    fn new_refresh(&mut self, provider: ProviderKind, grant: usize) -> String {
        let token = self.mint(provider, Kind::Refresh);
        self.refresh.insert(token.clone(), Refresh { grant, used: false });
        token
    }

    /// A new grant with an access and a refresh token.
    pub(crate) fn grant(&mut self, provider: ProviderKind, scopes: Vec<String>, ttl: Duration) -> (String, String) {
        self.grants.push(Grant { scopes, revoked: false });
        let grant = self.grants.len() - 1;
        (self.new_access(provider, grant, ttl), self.new_refresh(provider, grant))
    }

    /// The grant of a usable access token.
    pub(crate) fn check(&self, token: Option<&str>) -> Result<usize, Denied> {
        let token = token.filter(|t| !t.is_empty()).ok_or(Denied::Missing)?;
        let access = self.access.get(token).ok_or(Denied::Invalid)?;
        if self.grants[access.grant].revoked {
            return Err(Denied::Revoked);
        }
        if access.expired || Instant::now() >= access.expires {
            return Err(Denied::Expired);
        }
        Ok(access.grant)
    }

    /// The scopes of a usable access token.
    pub(crate) fn scopes_of(&self, token: Option<&str>) -> Result<Vec<String>, Denied> {
        self.check(token).map(|grant| self.grants[grant].scopes.clone())
    }

    fn grant_of(&self, token: &str) -> Option<usize> {
        self.access.get(token).map(|a| a.grant).or_else(|| self.refresh.get(token).map(|r| r.grant))
    }

    pub(crate) fn revoke_token(&mut self, token: &str) -> bool {
        match self.grant_of(token) {
            Some(grant) if !self.grants[grant].revoked => {
                self.grants[grant].revoked = true;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn revoke_all(&mut self) {
        for grant in &mut self.grants {
            grant.revoked = true;
        }
    }

    pub(crate) fn expire_all(&mut self) {
        for access in self.access.values_mut() {
            access.expired = true;
        }
    }
}

/// Whether `path` is one of the provider's OAuth endpoints (authorize, token, revoke).
pub(crate) fn is_oauth_path(kind: ProviderKind, path: &str) -> bool {
    match kind {
        ProviderKind::Google => matches!(path, "/o/oauth2/v2/auth" | "/o/oauth2/auth" | "/token" | "/o/oauth2/token" | "/revoke" | "/o/oauth2/revoke"),
        ProviderKind::Github => matches!(path, "/login/oauth/authorize" | "/login/oauth/access_token") || path.starts_with("/applications/"),
        ProviderKind::Slack => matches!(path, "/oauth/v2/authorize" | "/api/oauth.v2.access" | "/api/auth.revoke"),
        ProviderKind::Trello => matches!(path, "/authorize" | "/oauth/token"),
        ProviderKind::Notion => matches!(path, "/v1/oauth/authorize" | "/v1/oauth/token" | "/v1/oauth/revoke"),
    }
}

/// Answers the OAuth endpoints; `None` for any other path.
pub(crate) fn route(shared: &Shared, inner: &mut Inner, req: &Req) -> Option<Response> {
    use ProviderKind::*;
    let response = match (shared.kind, req.path.as_str()) {
        (Google, "/o/oauth2/v2/auth" | "/o/oauth2/auth") | (Github, "/login/oauth/authorize") | (Slack, "/oauth/v2/authorize") | (Trello, "/authorize") | (Notion, "/v1/oauth/authorize") => {
            authorize(shared, &mut inner.tokens, req)
        }
        (Google, "/token" | "/o/oauth2/token") | (Github, "/login/oauth/access_token") | (Slack, "/api/oauth.v2.access") | (Trello, "/oauth/token") | (Notion, "/v1/oauth/token") => token(shared, inner, req),
        (Google, "/revoke" | "/o/oauth2/revoke") => google_revoke(&mut inner.tokens, req),
        (Github, path) if path.starts_with("/applications/") => github_revoke(shared, &mut inner.tokens, req),
        (Slack, "/api/auth.revoke") => slack_revoke(&mut inner.tokens, req),
        (Notion, "/v1/oauth/revoke") => notion_revoke(shared, &mut inner.tokens, req),
        _ => return None,
    };
    Some(response)
}

/// The error page of an authorization request that cannot be sent back to the client.
fn error_page(status: StatusCode, error: &str, description: &str) -> Response {
    let html = format!("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Error {}: {error}</title></head><body><h1>Error {}: {error}</h1><p>{description}</p></body></html>\n", status.as_u16(), status.as_u16());
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// 302 to `redirect_uri` with `params` (and `state`, unchanged) added to its query.
fn redirect(redirect_uri: &str, mut params: Vec<(&str, String)>, state: Option<&str>) -> Response {
    if let Some(state) = state {
        params.push(("state", state.to_owned()));
    }
    // A fragment is not sent back (RFC 6749 §3.1.2: the redirect URI has none).
    let base = redirect_uri.split('#').next().unwrap_or(redirect_uri);
    let sep = if base.contains('?') { '&' } else { '?' };
    let location = format!("{base}{sep}{}", serde_urlencoded::to_string(&params).unwrap_or_default());
    let body = format!("<html><body>Moved <a href=\"{location}\">here</a>.</body></html>");
    (StatusCode::FOUND, [(header::LOCATION, location), (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned())], body).into_response()
}

/// The scopes a request asks for, or the first one the provider does not know.
fn requested_scopes(kind: ProviderKind, req: &Req) -> Result<Vec<String>, String> {
    let split = |s: &str| s.split([' ', ',']).filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>();
    match kind {
        ProviderKind::Google => {
            let scopes = split(req.q("scope").unwrap_or_default());
            let known = |s: &str| s == "https://mail.google.com/" || matches!(s, "openid" | "email" | "profile") || s.strip_prefix("https://www.googleapis.com/auth/").is_some_and(|r| GOOGLE_SCOPES.contains(&r));
            match scopes.iter().find(|s| !known(s)) {
                Some(bad) => Err(bad.clone()),
                None => Ok(scopes),
            }
        }
        ProviderKind::Github => Ok(split(req.q("scope").unwrap_or_default()).into_iter().filter(|s| GITHUB_SCOPES.contains(&s.as_str())).collect()),
        ProviderKind::Slack | ProviderKind::Trello => {
            let (param, known) = if kind == ProviderKind::Slack { ("user_scope", SLACK_SCOPES) } else { ("scope", TRELLO_SCOPES) };
            let scopes = split(req.q(param).unwrap_or_default());
            match scopes.iter().find(|s| !known.contains(&s.as_str())) {
                Some(bad) => Err(bad.clone()),
                None => Ok(scopes),
            }
        }
        // Capabilities are set on the integration, not asked for: the grant has them all.
        ProviderKind::Notion => Ok(Vec::new()),
    }
}

/// BASE64URL-NOPAD(SHA256(verifier)), RFC 7636's S256.
pub(crate) fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The authorization endpoint: validates the request, then consents at once.
fn authorize(shared: &Shared, tokens: &mut Tokens, req: &Req) -> Response {
    use ProviderKind::*;
    let kind = shared.kind;
    if req.method != Method::GET {
        return error_page(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "The authorization endpoint takes GET.");
    }
    if req.q("client_id") != Some(shared.client_id.as_str()) {
        return error_page(StatusCode::BAD_REQUEST, "invalid_client", "The OAuth client was not found.");
    }
    let redirect_uri = match req.q("redirect_uri") {
        Some(uri) => uri.to_owned(),
        // GitHub, Slack and Notion fall back to the registered callback.
        None if matches!(kind, Github | Slack | Notion) && !shared.redirect_uris.is_empty() => shared.redirect_uris[0].clone(),
        None => return error_page(StatusCode::BAD_REQUEST, "invalid_request", "Missing required parameter: redirect_uri"),
    };
    let registered = shared.redirect_uris.is_empty() || shared.redirect_uris.contains(&redirect_uri);
    if !(redirect_uri.starts_with("http://") || redirect_uri.starts_with("https://")) || !registered {
        return error_page(StatusCode::BAD_REQUEST, "redirect_uri_mismatch", "The redirect_uri MUST match the registered callback URL for this application.");
    }
    let state = req.q("state");
    let fail = |error: &str, description: &str| redirect(&redirect_uri, vec![("error", error.to_owned()), ("error_description", description.to_owned())], state);
    match req.q("response_type") {
        Some("code") => {}
        None if matches!(kind, Github | Slack) => {}
        None => return fail("invalid_request", "Required parameter is missing: response_type"),
        Some(other) => return fail("unsupported_response_type", &format!("Unsupported response_type: {other}")),
    }
    if kind == Notion && req.q("owner") != Some("user") {
        return fail("invalid_request", "owner must be user");
    }
    // Notion does not take PKCE: a challenge sent is ignored.
    let challenge = match kind {
        Notion => None,
        _ => {
            if req.q("code_challenge_method") != Some("S256") {
                return fail("invalid_request", "code_challenge_method must be S256");
            }
            let challenge = req.q("code_challenge").unwrap_or_default();
            if challenge.len() != 43 || !challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return fail("invalid_request", "Invalid code_challenge: it must be BASE64URL(SHA256(code_verifier)) without padding");
            }
            Some(challenge.to_owned())
        }
    };
    let scopes = match requested_scopes(kind, req) {
        Ok(scopes) if scopes.is_empty() && matches!(kind, Google | Trello) => return fail("invalid_request", "Missing required parameter: scope"),
        Ok(scopes) => scopes,
        Err(bad) => return fail("invalid_scope", &format!("Invalid scope: {bad}")),
    };
    let offline = match kind {
        Google => req.q("access_type") == Some("offline"),
        Trello => scopes.iter().any(|s| s == "offline_access"),
        _ => true,
    };
    let code = tokens.mint(kind, Kind::Code);
    tokens.codes.insert(code.clone(), Code { redirect_uri: redirect_uri.clone(), scopes: scopes.clone(), challenge, offline, used: false, issued: Instant::now() });
    let mut params = vec![("code", code)];
    if kind == Google {
        params.push(("scope", scopes.join(" ")));
    }
    redirect(&redirect_uri, params, state)
}

/// A refused token request, before it is put in the provider's words.
#[derive(Debug)]
enum TokenError {
    UnknownClient,
    BadSecret,
    /// A missing parameter (Google's `invalid_request`).
    Request(&'static str),
    /// Unknown, used, expired, or issued for another request.
    BadCode,
    /// A missing or wrong `code_verifier`.
    Verifier(&'static str),
    RedirectMismatch,
    /// Unknown, rotated out, or of a revoked grant.
    BadRefresh,
    UnsupportedGrant(String),
}

/// What a successful token request issued.
struct Issued {
    access_token: String,
    refresh_token: Option<String>,
    scopes: Vec<String>,
    /// A code exchange (Slack answers it in another shape than a refresh).
    exchange: bool,
}

/// The token endpoint.
fn token(shared: &Shared, inner: &mut Inner, req: &Req) -> Response {
    let kind = shared.kind;
    if req.method != Method::POST && !(kind == ProviderKind::Slack && req.method == Method::GET) {
        return error_page(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "The token endpoint takes POST.");
    }
    let params = req.params();
    let grant_type = match params.get("grant_type") {
        Some(g) => g.clone(),
        // GitHub's and Slack's code exchange needs no grant_type.
        None if matches!(kind, ProviderKind::Github | ProviderKind::Slack) && params.contains_key("code") => "authorization_code".to_owned(),
        None => String::new(),
    };
    *inner.tokens.requests.entry(grant_type.clone()).or_default() += 1;
    let result = client_auth(shared, req, &params).and_then(|()| match grant_type.as_str() {
        "authorization_code" => exchange(shared, &mut inner.tokens, &params),
        "refresh_token" => refresh(shared, &mut inner.tokens, &params),
        other => Err(TokenError::UnsupportedGrant(other.to_owned())),
    });
    match result {
        Ok(issued) => token_answer(shared, inner, req, issued),
        Err(error) => token_error(kind, req, error),
    }
}

/// The client's credentials: HTTP Basic (RFC 6749 §2.3.1: form-encoded id and secret), else the
/// `client_id` and `client_secret` parameters (not at Notion: Basic only).
fn client_auth(shared: &Shared, req: &Req, params: &BTreeMap<String, String>) -> Result<(), TokenError> {
    let basic = req.auth_token(&["Basic"]).and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok()).and_then(|b| String::from_utf8(b).ok());
    let (id, secret) = match basic.as_deref().and_then(|b| b.split_once(':')) {
        Some((id, secret)) => (Some(percent_decode(id, true)), Some(percent_decode(secret, true))),
        None if shared.kind == ProviderKind::Notion => (None, None),
        None => (params.get("client_id").cloned(), params.get("client_secret").cloned()),
    };
    if id.as_deref() != Some(shared.client_id.as_str()) {
        return Err(TokenError::UnknownClient);
    }
    if secret.as_deref() != Some(shared.client_secret.as_str()) {
        return Err(TokenError::BadSecret);
    }
    Ok(())
}

fn exchange(shared: &Shared, tokens: &mut Tokens, params: &BTreeMap<String, String>) -> Result<Issued, TokenError> {
    let kind = shared.kind;
    let code_param = params.get("code").ok_or(TokenError::BadCode)?;
    let code = tokens.codes.get_mut(code_param).filter(|c| !c.used && c.issued.elapsed() < CODE_LIFETIME).ok_or(TokenError::BadCode)?;
    match params.get("redirect_uri") {
        None if matches!(kind, ProviderKind::Google | ProviderKind::Trello) => return Err(TokenError::Request("Missing required parameter: redirect_uri")),
        Some(uri) if *uri != code.redirect_uri => return Err(TokenError::RedirectMismatch),
        _ => {}
    }
    if let Some(challenge) = &code.challenge {
        let verifier = params.get("code_verifier").ok_or(TokenError::Verifier("Missing code verifier."))?;
        if s256(verifier) != *challenge {
            // The code stays usable: only a successful exchange uses it up.
            return Err(TokenError::Verifier("Invalid code verifier."));
        }
    }
    code.used = true;
    let (scopes, offline) = (code.scopes.clone(), code.offline);
    tokens.grants.push(Grant { scopes: scopes.clone(), revoked: false });
    let grant = tokens.grants.len() - 1;
    let access_token = tokens.new_access(kind, grant, shared.ttl);
    let refresh_token = offline.then(|| tokens.new_refresh(kind, grant));
    Ok(Issued { access_token, refresh_token, scopes, exchange: true })
}

fn refresh(shared: &Shared, tokens: &mut Tokens, params: &BTreeMap<String, String>) -> Result<Issued, TokenError> {
    let kind = shared.kind;
    let presented = params.get("refresh_token").ok_or(TokenError::BadRefresh)?;
    let entry = tokens.refresh.get(presented).ok_or(TokenError::BadRefresh)?;
    let grant = entry.grant;
    if entry.used || tokens.grants[grant].revoked {
        return Err(TokenError::BadRefresh);
    }
    let rotates = kind != ProviderKind::Google;
    if rotates {
        if let Some(entry) = tokens.refresh.get_mut(presented) {
            entry.used = true;
        }
    }
    if kind == ProviderKind::Github {
        // "Once you use a refresh token, that refresh token and the old user access token will no longer work."
        for access in tokens.access.values_mut().filter(|a| a.grant == grant) {
            access.expired = true;
        }
    }
    let access_token = tokens.new_access(kind, grant, shared.ttl);
    let refresh_token = rotates.then(|| tokens.new_refresh(kind, grant));
    Ok(Issued { access_token, refresh_token, scopes: tokens.grants[grant].scopes.clone(), exchange: false })
}

fn token_answer(shared: &Shared, inner: &Inner, req: &Req, issued: Issued) -> Response {
    let ttl = shared.ttl.as_secs();
    match shared.kind {
        ProviderKind::Google => {
            let mut body = json!({"access_token": issued.access_token, "expires_in": ttl, "scope": issued.scopes.join(" "), "token_type": "Bearer"});
            if let Some(refresh) = issued.refresh_token {
                body["refresh_token"] = refresh.into();
            }
            let mut response = json_response(StatusCode::OK, &body);
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache, no-store, max-age=0, must-revalidate"));
            headers.insert(header::PRAGMA, header::HeaderValue::from_static("no-cache"));
            response
        }
        ProviderKind::Github => github_answer(
            req,
            json!({
                "access_token": issued.access_token, "expires_in": ttl, "refresh_token": issued.refresh_token, "refresh_token_expires_in": GITHUB_REFRESH_TTL,
                "scope": issued.scopes.join(","), "token_type": "bearer",
            }),
        ),
        ProviderKind::Slack => {
            let c = &inner.content;
            let team = json!({"id": c.slack_team_id, "name": c.slack_team_name});
            let scope = issued.scopes.join(",");
            let body = if issued.exchange {
                json!({
                    "ok": true, "app_id": "A0STANDIN",
                    "authed_user": {"id": c.slack_user_id, "scope": scope, "access_token": issued.access_token, "token_type": "user", "refresh_token": issued.refresh_token, "expires_in": ttl},
                    "team": team, "enterprise": null, "is_enterprise_install": false,
                })
            } else {
                json!({
                    "ok": true, "app_id": "A0STANDIN", "access_token": issued.access_token, "refresh_token": issued.refresh_token, "expires_in": ttl, "token_type": "user",
                    "scope": scope, "user_id": c.slack_user_id, "team": team, "enterprise": null, "is_enterprise_install": false,
                })
            };
            json_response(StatusCode::OK, &body)
        }
        ProviderKind::Trello => {
            let mut body = json!({"access_token": issued.access_token, "expires_in": ttl, "scope": issued.scopes.join(" "), "token_type": "Bearer"});
            if let Some(refresh) = issued.refresh_token {
                body["refresh_token"] = refresh.into();
            }
            json_response(StatusCode::OK, &body)
        }
        ProviderKind::Notion => {
            let c = &inner.content;
            let body = json!({
                "access_token": issued.access_token, "token_type": "bearer", "refresh_token": issued.refresh_token, "expires_in": ttl, "bot_id": crate::notion::BOT_ID,
                "workspace_id": crate::notion::WORKSPACE_ID, "workspace_name": c.notion_workspace_name, "workspace_icon": null, "owner": {"type": "user", "user": crate::notion::owner_json(c)},
                "duplicated_template_id": null, "request_id": crate::notion::request_id(inner),
            });
            json_response(StatusCode::OK, &body)
        }
    }
}

/// GitHub's token endpoint answers JSON only to `Accept: application/json`, else a form.
fn github_answer(req: &Req, body: Value) -> Response {
    if req.header("accept").is_some_and(|a| a.contains("application/json")) {
        return json_response(StatusCode::OK, &body);
    }
    let pairs: Vec<(String, String)> = body.as_object().into_iter().flatten().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect();
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-www-form-urlencoded; charset=utf-8")], serde_urlencoded::to_string(pairs).unwrap_or_default()).into_response()
}

fn token_error(kind: ProviderKind, req: &Req, error: TokenError) -> Response {
    match kind {
        ProviderKind::Google => {
            let (status, code, description) = match &error {
                TokenError::UnknownClient => (StatusCode::UNAUTHORIZED, "invalid_client", "The OAuth client was not found.".to_owned()),
                TokenError::BadSecret => (StatusCode::UNAUTHORIZED, "invalid_client", "Unauthorized".to_owned()),
                TokenError::Request(message) => (StatusCode::BAD_REQUEST, "invalid_request", message.to_string()),
                TokenError::BadCode => (StatusCode::BAD_REQUEST, "invalid_grant", "Bad Request".to_owned()),
                TokenError::Verifier(message) => (StatusCode::BAD_REQUEST, "invalid_grant", message.to_string()),
                TokenError::RedirectMismatch => (StatusCode::BAD_REQUEST, "redirect_uri_mismatch", "Bad Request".to_owned()),
                TokenError::BadRefresh => (StatusCode::BAD_REQUEST, "invalid_grant", "Token has been expired or revoked.".to_owned()),
                TokenError::UnsupportedGrant(grant) => (StatusCode::BAD_REQUEST, "unsupported_grant_type", format!("Invalid grant_type: {grant}")),
            };
            json_response(status, &json!({"error": code, "error_description": description}))
        }
        ProviderKind::Github => {
            let (code, description, anchor) = match &error {
                TokenError::UnknownClient | TokenError::BadSecret => ("incorrect_client_credentials", "The client_id and/or client_secret passed are incorrect.", "incorrect-client-credentials"),
                TokenError::Request(_) | TokenError::BadCode | TokenError::Verifier(_) => ("bad_verification_code", "The code passed is incorrect or expired.", "bad-verification-code"),
                TokenError::RedirectMismatch => ("redirect_uri_mismatch", "The redirect_uri MUST match the registered callback URL for this application.", "redirect-uri-mismatch2"),
                TokenError::BadRefresh => ("bad_refresh_token", "The refresh token passed is incorrect or expired.", "bad-refresh-token"),
                TokenError::UnsupportedGrant(_) => ("unsupported_grant_type", "The grant type is not supported.", "unsupported-grant-type"),
            };
            let uri = format!("https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#{anchor}");
            github_answer(req, json!({"error": code, "error_description": description, "error_uri": uri}))
        }
        ProviderKind::Slack => {
            let code = match error {
                TokenError::UnknownClient => "invalid_client_id",
                TokenError::BadSecret => "bad_client_secret",
                TokenError::Request(_) => "invalid_arguments",
                TokenError::BadCode | TokenError::Verifier(_) => "invalid_code",
                TokenError::RedirectMismatch => "bad_redirect_uri",
                TokenError::BadRefresh => "invalid_refresh_token",
                TokenError::UnsupportedGrant(_) => "invalid_grant_type",
            };
            json_response(StatusCode::OK, &json!({"ok": false, "error": code}))
        }
        ProviderKind::Trello => {
            let (status, code, description) = match &error {
                TokenError::UnknownClient | TokenError::BadSecret => (StatusCode::UNAUTHORIZED, "access_denied", "Unauthorized".to_owned()),
                TokenError::Request(message) => (StatusCode::BAD_REQUEST, "invalid_request", message.to_string()),
                TokenError::BadCode => (StatusCode::FORBIDDEN, "invalid_grant", "Invalid authorization code".to_owned()),
                TokenError::Verifier(message) => (StatusCode::FORBIDDEN, "invalid_grant", message.to_string()),
                TokenError::RedirectMismatch => (StatusCode::FORBIDDEN, "invalid_grant", "redirect_uri is not the one of the authorization request".to_owned()),
                TokenError::BadRefresh => (StatusCode::FORBIDDEN, "invalid_grant", "Unknown or invalid refresh token.".to_owned()),
                TokenError::UnsupportedGrant(grant) => (StatusCode::FORBIDDEN, "unsupported_grant_type", format!("Unsupported grant type: {grant}")),
            };
            json_response(status, &json!({"error": code, "error_description": description}))
        }
        ProviderKind::Notion => {
            let (status, code, description) = match &error {
                TokenError::UnknownClient | TokenError::BadSecret => (StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed: send the client id and secret with HTTP Basic.".to_owned()),
                TokenError::Request(message) => (StatusCode::BAD_REQUEST, "invalid_request", message.to_string()),
                TokenError::BadCode | TokenError::Verifier(_) => (StatusCode::BAD_REQUEST, "invalid_grant", "Invalid code.".to_owned()),
                TokenError::RedirectMismatch => (StatusCode::BAD_REQUEST, "invalid_grant", "Invalid redirect_uri.".to_owned()),
                TokenError::BadRefresh => (StatusCode::BAD_REQUEST, "invalid_grant", "Invalid refresh token.".to_owned()),
                TokenError::UnsupportedGrant(grant) => (StatusCode::BAD_REQUEST, "unsupported_grant_type", format!("Unsupported grant_type: {grant}")),
            };
            json_response(status, &json!({"error": code, "error_description": description}))
        }
    }
}

/// Notion's `POST /v1/oauth/revoke`: the client's Basic credentials and `{"token": …}` (an access
/// or refresh token), whose whole grant goes.
fn notion_revoke(shared: &Shared, tokens: &mut Tokens, req: &Req) -> Response {
    if req.method != Method::POST {
        return error_page(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "The revocation endpoint takes POST.");
    }
    let params = req.params();
    if let Err(error) = client_auth(shared, req, &params) {
        return token_error(ProviderKind::Notion, req, error);
    }
    let Some(token) = params.get("token").filter(|t| !t.is_empty()) else {
        return token_error(ProviderKind::Notion, req, TokenError::Request("body.token should be defined"));
    };
    if tokens.revoke_token(token) {
        json_response(StatusCode::OK, &json!({}))
    } else {
        json_response(StatusCode::BAD_REQUEST, &json!({"error": "invalid_grant", "error_description": "The token is invalid or already revoked."}))
    }
}

/// Google's `POST /revoke?token=…` (or `token` in a form body): an access or refresh token, whose
/// whole grant goes.
fn google_revoke(tokens: &mut Tokens, req: &Req) -> Response {
    if req.method != Method::POST && req.method != Method::GET {
        return error_page(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "The revocation endpoint takes POST.");
    }
    let token = req.params().get("token").cloned().unwrap_or_default();
    if tokens.revoke_token(&token) {
        json_response(StatusCode::OK, &json!({}))
    } else {
        json_response(StatusCode::BAD_REQUEST, &json!({"error": "invalid_token", "error_description": "Token expired or revoked"}))
    }
}

fn github_message(status: StatusCode, message: &str, documentation_url: &str) -> Response {
    json_response(status, &json!({"message": message, "documentation_url": documentation_url, "status": status.as_u16().to_string()}))
}

/// GitHub's `DELETE /applications/{client_id}/grant` (the whole authorization) and
/// `DELETE /applications/{client_id}/token` (that token), with the app's Basic credentials and
/// `{"access_token": …}`.
fn github_revoke(shared: &Shared, tokens: &mut Tokens, req: &Req) -> Response {
    let segments = req.segments();
    let what = match segments.as_slice() {
        [_, client, what] if *client == shared.client_id && (what == "grant" || what == "token") && req.method == Method::DELETE => what.clone(),
        _ => return github_message(StatusCode::NOT_FOUND, "Not Found", "https://docs.github.com/rest"),
    };
    let doc = "https://docs.github.com/rest/apps/oauth-applications#delete-an-app-authorization";
    let basic = req.auth_token(&["Basic"]).and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok()).and_then(|b| String::from_utf8(b).ok());
    if basic.as_deref() != Some(format!("{}:{}", shared.client_id, shared.client_secret).as_str()) {
        return github_message(StatusCode::UNAUTHORIZED, "Bad credentials", "https://docs.github.com/rest");
    }
    let Some(token) = req.json().and_then(|v| v.get("access_token").and_then(Value::as_str).map(str::to_owned)) else {
        return github_message(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request.\n\n\"access_token\" wasn't supplied.", doc);
    };
    if !tokens.access.contains_key(&token) {
        return github_message(StatusCode::NOT_FOUND, "Not Found", doc);
    }
    if what == "grant" {
        tokens.revoke_token(&token);
    } else {
        tokens.access.remove(&token);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Slack's `auth.revoke`: the token of the call itself (`test=true` only checks it).
fn slack_revoke(tokens: &mut Tokens, req: &Req) -> Response {
    let params = req.params();
    let token = req.bearer().map(str::to_owned).or_else(|| params.get("token").cloned());
    if let Err(denied) = tokens.check(token.as_deref()) {
        return json_response(StatusCode::OK, &json!({"ok": false, "error": denied.slack_error()}));
    }
    let test = params.get("test").is_some_and(|t| t == "true" || t == "1");
    if !test {
        tokens.revoke_token(token.as_deref().unwrap_or_default());
    }
    json_response(StatusCode::OK, &json!({"ok": true, "revoked": !test}))
}
