//! The broker's outbound HTTP: one reqwest client (rustls with aws-lc-rs, the system's roots),
//! no redirects followed, a timeout on every request, answers read up to a cap.
//!
//! Every API request is an [`ApiRequest`], made only from a base URL, a fixed path whose ids
//! went through [`segment`], and query pairs the URL encoder writes; [`ApiRequest::check`] then
//! refuses, as a last line, any method or path the catalogue has no business sending (a send
//! endpoint, a Slack method that posts or deletes), whatever built it.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, Url};

use crate::BrokerError;

/// Everything but RFC 3986's unreserved characters is encoded: a `/`, `%`, `?` or `#` in an id
/// can only ever be part of its one path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// An id percent-encoded for one path segment. `.` and `..` are refused by every id's pattern
/// before they get here; should one come anyway it becomes a literal `%2E%2E` (URL parsers
/// read an encoded `%2E%2E` as `..`), so no segment can walk up.
pub fn segment(id: &str) -> String {
    if !id.is_empty() && id.bytes().all(|b| b == b'.') {
        return "%252E".repeat(id.len());
    }
    utf8_percent_encode(id, SEGMENT).to_string()
}

/// Installs aws-lc-rs as the process's rustls provider (as `clawpen_meter::tls` does; the
/// binary installs it at start). Idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// What went wrong on the way: never with the URL (a query may hold a search the user typed,
/// and the token endpoints get secrets in bodies, which reqwest does not print anyway).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("could not be reached: {0}")]
    Unreachable(String),
}

/// A provider's answer, its body read up to the cap.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    /// The body went on past the cap (and was cut there).
    pub truncated: bool,
}

impl Answer {
    pub fn json(&self) -> Option<serde_json::Value> {
        if self.truncated {
            return None;
        }
        serde_json::from_slice(&self.body).ok()
    }
}

/// The client.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    max_body: usize,
}

fn transport(e: reqwest::Error) -> HttpError {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if timeout {
        text = "timed out".to_owned();
    }
    HttpError::Unreachable(text)
}

impl Http {
    pub fn new(timeout: Duration, max_body: usize, ca_file: Option<&std::path::Path>) -> Result<Http, BrokerError> {
        install_tls_provider();
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("clawpen-broker/", env!("CARGO_PKG_VERSION")))
            .https_only(false);
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| BrokerError::Config(format!("broker.ca_file {}: {e}", path.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| BrokerError::Config(format!("broker.ca_file {}: {e}", path.display())))?;
            b = b.add_root_certificate(cert);
        }
        let client = b.build().map_err(|e| BrokerError::Config(format!("the broker's HTTP client: {e}")))?;
        Ok(Http { client, max_body })
    }

    pub fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        self.client.request(method, url)
    }

    /// Sends and reads the answer's body up to the cap.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Result<Answer, HttpError> {
        let mut res = rb.send().await.map_err(transport)?;
        let status = res.status().as_u16();
        let mut body = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = res.chunk().await.map_err(transport)? {
            let room = self.max_body - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer { status, body, truncated })
    }
}

/// One request to a provider's API, built by the catalogue.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: Method,
    pub url: Url,
    pub json: Option<serde_json::Value>,
}

impl ApiRequest {
    /// `GET {base}{path}?{query}`: `path` is a template already filled with [`segment`]s.
    pub fn get(base: &Url, path: &str, query: &[(&str, String)]) -> ApiRequest {
        ApiRequest { method: Method::GET, url: join(base, path, query), json: None }
    }

    /// `POST {base}{path}` with a JSON body.
    pub fn post(base: &Url, path: &str, body: serde_json::Value) -> ApiRequest {
        ApiRequest { method: Method::POST, url: join(base, path, &[]), json: Some(body) }
    }

    /// `PUT {base}{path}` with a JSON body.
    pub fn put(base: &Url, path: &str, body: serde_json::Value) -> ApiRequest {
        ApiRequest { method: Method::PUT, url: join(base, path, &[]), json: Some(body) }
    }

    /// The last line: only GET; POST to Notion's search (a read) and to the write endpoints the
    /// catalogue knows (Gmail drafts, GitHub issue comments, Notion comments); PUT of a Trello
    /// card's fields, never its `closed` (archiving); never a send endpoint or a Slack method
    /// that posts, updates or deletes; never DELETE or PATCH; never off the base's host.
    pub fn check(&self, base: &Url) -> Result<(), &'static str> {
        if self.url.host_str() != base.host_str() || self.url.port_or_known_default() != base.port_or_known_default() || self.url.scheme() != base.scheme() {
            return Err("the request left the provider's API host");
        }
        let path = self.url.path();
        let rest = path.strip_prefix(base.path().trim_end_matches('/')).unwrap_or(path);
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.iter().any(|s| s.eq_ignore_ascii_case("send") || *s == ".." || *s == ".") {
            return Err("the broker never sends mail");
        }
        if let Some(method) = rest.strip_prefix("/api/") {
            if !matches!(method, "conversations.list" | "conversations.history" | "conversations.replies" | "auth.test") {
                return Err("the broker calls no Slack method that writes");
            }
        }
        match self.method {
            Method::GET => Ok(()),
            Method::POST => {
                let gmail_draft = rest == "/gmail/v1/users/me/drafts";
                let github_comment = segments.len() == 7 && segments[1] == "repos" && segments[4] == "issues" && segments[6] == "comments";
                let notion = rest == "/v1/search" || rest == "/v1/comments";
                if gmail_draft || github_comment || notion { Ok(()) } else { Err("the broker writes only Gmail drafts and GitHub and Notion comments") }
            }
            Method::PUT => {
                let trello_card = segments.len() == 3 && segments[1] == "cards";
                if !trello_card {
                    return Err("the broker updates only Trello cards");
                }
                if self.json.as_ref().is_some_and(|b| b.get("closed").is_some()) {
                    return Err("the broker never archives or deletes a card");
                }
                Ok(())
            }
            _ => Err("the broker only reads, and writes a draft, a comment or a card's fields when approved"),
        }
    }
}

fn join(base: &Url, path: &str, query: &[(&str, String)]) -> Url {
    let mut url = base.clone();
    let prefix = base.path().trim_end_matches('/');
    url.set_path(&format!("{prefix}{path}"));
    if !query.is_empty() {
        let mut q = url.query_pairs_mut();
        for (k, v) in query {
            q.append_pair(k, v);
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_encoded_into_one_segment() {
        assert_eq!(segment("abc_DEF-12"), "abc_DEF-12");
        assert_eq!(segment("a/b"), "a%2Fb");
        assert_eq!(segment("../x"), "..%2Fx");
        assert_eq!(segment(".."), "%252E%252E");
        let base = Url::parse("https://www.googleapis.com").unwrap();
        let dots = ApiRequest::get(&base, &format!("/drive/v3/files/{}/x", segment("..")), &[]);
        assert_eq!(dots.url.path(), "/drive/v3/files/%252E%252E/x");
        assert_eq!(segment("a%2Fb"), "a%252Fb");
        assert_eq!(segment("a?b#c d"), "a%3Fb%23c%20d");
        let base = Url::parse("https://api.github.com").unwrap();
        let r = ApiRequest::get(&base, &format!("/repos/{}/{}/issues", segment("acme"), segment("a/../b")), &[("state", "open&x=1".into())]);
        assert_eq!(r.url.as_str(), "https://api.github.com/repos/acme/a%2F..%2Fb/issues?state=open%26x%3D1");
        let prefixed = Url::parse("http://127.0.0.1:9/google").unwrap();
        assert_eq!(ApiRequest::get(&prefixed, "/gmail/v1/users/me/messages", &[]).url.as_str(), "http://127.0.0.1:9/google/gmail/v1/users/me/messages");
    }

    #[test]
    fn the_last_line_refuses_sends_and_other_writes() {
        let g = Url::parse("https://www.googleapis.com").unwrap();
        assert!(ApiRequest::post(&g, "/gmail/v1/users/me/drafts", serde_json::json!({})).check(&g).is_ok());
        for path in ["/gmail/v1/users/me/messages/send", "/gmail/v1/users/me/drafts/send", "/gmail/v1/users/me/messages"] {
            assert!(ApiRequest::post(&g, path, serde_json::json!({})).check(&g).is_err(), "{path}");
        }
        assert!(ApiRequest::get(&g, "/gmail/v1/users/me/messages/send", &[]).check(&g).is_err());
        let s = Url::parse("https://slack.com").unwrap();
        assert!(ApiRequest::get(&s, "/api/conversations.history", &[]).check(&s).is_ok());
        for m in ["/api/chat.postMessage", "/api/chat.delete", "/api/chat.update", "/api/files.upload"] {
            assert!(ApiRequest::get(&s, m, &[]).check(&s).is_err(), "{m}");
        }
        let h = Url::parse("https://api.github.com").unwrap();
        assert!(ApiRequest::post(&h, "/repos/a/b/issues/1/comments", serde_json::json!({})).check(&h).is_ok());
        assert!(ApiRequest::post(&h, "/repos/a/b/issues", serde_json::json!({})).check(&h).is_err());
        let mut del = ApiRequest::get(&h, "/repos/a/b", &[]);
        del.method = Method::DELETE;
        assert!(del.check(&h).is_err());
        let t = Url::parse("https://api.trello.com/1").unwrap();
        assert!(ApiRequest::put(&t, "/cards/5f0000000000000000000001", serde_json::json!({"name": "x"})).check(&t).is_ok());
        assert!(ApiRequest::put(&t, "/cards/5f0000000000000000000001", serde_json::json!({"closed": true})).check(&t).is_err());
        assert!(ApiRequest::put(&t, "/boards/5f0000000000000000000001", serde_json::json!({"name": "x"})).check(&t).is_err());
        assert!(ApiRequest::post(&t, "/cards", serde_json::json!({})).check(&t).is_err());
        let mut del = ApiRequest::get(&t, "/cards/5f0000000000000000000001", &[]);
        del.method = Method::DELETE;
        assert!(del.check(&t).is_err());
        let n = Url::parse("https://api.notion.com").unwrap();
        assert!(ApiRequest::post(&n, "/v1/search", serde_json::json!({})).check(&n).is_ok());
        assert!(ApiRequest::post(&n, "/v1/comments", serde_json::json!({})).check(&n).is_ok());
        assert!(ApiRequest::post(&n, "/v1/pages", serde_json::json!({})).check(&n).is_err());
        let mut patch = ApiRequest::put(&n, "/v1/blocks/x/children", serde_json::json!({}));
        patch.method = Method::PATCH;
        assert!(patch.check(&n).is_err());
        let mut off = ApiRequest::get(&h, "/x", &[]);
        off.url = Url::parse("https://evil.example/x").unwrap();
        assert!(off.check(&h).is_err());
    }
}
