//! A client for the Telegram Bot API: `POST <api_base>/bot<token>/<method>` with a JSON body,
//! answered `{"ok": true, "result"}` or `{"ok": false, "error_code", "description"}`.
//!
//! The token is in every URL, so nothing here ever prints a URL: transport errors are shown
//! without theirs, and [`BotApi`]'s `Debug` is redacted.

use std::sync::Arc;
use std::time::Duration;

use clawpen_vault::Secret;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// Longest message text Telegram takes, in UTF-16 code units.
pub const MAX_TEXT: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BotApiError {
    /// No answer: connection refused, timeout, TLS, DNS… (never with the URL).
    #[error("the Bot API could not be reached: {0}")]
    Unreachable(String),
    /// Telegram answered `ok: false`.
    #[error("the Bot API refused the call ({code}): {description}")]
    Refused { code: u16, description: String, retry_after: Option<u64> },
    #[error("the Bot API's answer is not valid: {0}")]
    Invalid(String),
}

impl BotApiError {
    /// Telegram does not know the token (revoked, or never valid).
    pub fn bad_token(&self) -> bool {
        matches!(self, BotApiError::Refused { code: 401 | 404, .. })
    }
}

/// A bot as `getMe` describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct BotUser {
    pub id: i64,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub first_name: String,
}

/// One update; only messages are read, everything else is skipped.
#[derive(Debug, Clone, Deserialize)]
pub struct Update {
    pub update_id: i64,
    #[serde(default)]
    pub message: Option<Message>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    #[serde(default)]
    pub from: Option<User>,
    pub chat: Chat,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub id: i64,
    #[serde(default)]
    pub is_bot: bool,
    #[serde(default)]
    pub first_name: String,
    #[serde(default)]
    pub username: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Chat {
    pub id: i64,
    /// `private`, `group`, `supergroup` or `channel`.
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    result: Value,
    #[serde(default)]
    error_code: Option<u16>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<ResponseParameters>,
}

#[derive(Deserialize)]
struct ResponseParameters {
    #[serde(default)]
    retry_after: Option<u64>,
}

/// One bot's view of the Bot API.
#[derive(Clone)]
pub struct BotApi {
    base: Arc<str>,
    token: Arc<Secret<String>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for BotApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotApi").field("base", &self.base).field("token", &"[redacted]").finish()
    }
}

/// A transport error's text and causes, without the URL (which holds the token).
fn transport(e: reqwest::Error) -> BotApiError {
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
    BotApiError::Unreachable(text)
}

/// Whether `token` has a bot token's shape (`<digits>:<35ish of A-Za-z0-9_->`). Checked before
/// it is ever put in a URL.
pub fn is_token(token: &str) -> bool {
    let Some((id, secret)) = token.split_once(':') else { return false };
    (1..=20).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_digit())
        && (20..=100).contains(&secret.len())
        && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl BotApi {
    pub fn new(http: reqwest::Client, base: &str, token: Secret<String>) -> BotApi {
        BotApi { base: Arc::from(base.trim_end_matches('/')), token: Arc::new(token), http }
    }

    /// Calls `method` with `params`; the result decoded as `T`.
    pub async fn call<T: DeserializeOwned>(&self, method: &str, params: Value, timeout: Duration) -> Result<T, BotApiError> {
        let url = format!("{}/bot{}/{method}", self.base, self.token.expose());
        let res = self.http.post(url).json(&params).timeout(timeout).send().await.map_err(transport)?;
        let status = res.status().as_u16();
        let body = res.bytes().await.map_err(transport)?;
        let env: Envelope = serde_json::from_slice(&body).map_err(|_| BotApiError::Invalid(format!("{method}: HTTP {status} without a Bot API body")))?;
        if !env.ok {
            return Err(BotApiError::Refused {
                code: env.error_code.unwrap_or(status),
                description: env.description.unwrap_or_default(),
                retry_after: env.parameters.and_then(|p| p.retry_after),
            });
        }
        serde_json::from_value(env.result).map_err(|e| BotApiError::Invalid(format!("{method}: {e}")))
    }

    pub async fn get_me(&self) -> Result<BotUser, BotApiError> {
        self.call("getMe", json!({}), Duration::from_secs(15)).await
    }

    /// Long-polls for updates after `offset`, waiting up to `timeout_secs`. Updates come back
    /// raw: one that does not parse is still counted for the offset.
    pub async fn get_updates(&self, offset: Option<i64>, timeout_secs: u64) -> Result<Vec<Value>, BotApiError> {
        let params = json!({"offset": offset, "timeout": timeout_secs, "allowed_updates": ["message"]});
        self.call("getUpdates", params, Duration::from_secs(timeout_secs + 15)).await
    }

    pub async fn set_webhook(&self, url: &str, secret: &str) -> Result<(), BotApiError> {
        let params = json!({"url": url, "secret_token": secret, "allowed_updates": ["message"]});
        self.call::<Value>("setWebhook", params, Duration::from_secs(15)).await.map(drop)
    }

    pub async fn delete_webhook(&self) -> Result<(), BotApiError> {
        self.call::<Value>("deleteWebhook", json!({}), Duration::from_secs(15)).await.map(drop)
    }

    /// Sends one message (at most [`MAX_TEXT`]; see [`split_text`]). Retries a few times when
    /// Telegram is unreachable or asks to wait (429, at most 30 s).
    pub async fn send_message(&self, chat_id: i64, text: &str) -> Result<(), BotApiError> {
        let mut attempt = 0;
        loop {
            let sent = self.call::<Value>("sendMessage", json!({"chat_id": chat_id, "text": text}), Duration::from_secs(20)).await;
            let wait = match &sent {
                Err(BotApiError::Refused { code: 429, retry_after, .. }) => Duration::from_secs(retry_after.unwrap_or(1).min(30)),
                Err(BotApiError::Refused { code, .. }) if *code >= 500 => Duration::from_millis(500),
                Err(BotApiError::Unreachable(_)) => Duration::from_millis(500),
                _ => return sent.map(drop),
            };
            attempt += 1;
            if attempt >= 3 {
                return sent.map(drop);
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// Cuts `text` into pieces of at most [`MAX_TEXT`] UTF-16 code units, at a line break or a
/// space in the second half of a piece when there is one, never inside a character.
pub fn split_text(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if rest.encode_utf16().count() <= MAX_TEXT {
            out.push(rest.to_owned());
            break;
        }
        // The longest prefix that fits, as a byte index on a character boundary.
        let mut units = 0;
        let mut end = 0;
        for (i, c) in rest.char_indices() {
            if units + c.len_utf16() > MAX_TEXT {
                break;
            }
            units += c.len_utf16();
            end = i + c.len_utf8();
        }
        let window = &rest[..end];
        let cut = window.rfind('\n').or_else(|| window.rfind(' ')).filter(|&i| i >= end / 2).map_or(end, |i| i + 1);
        out.push(rest[..cut].to_owned());
        rest = &rest[cut..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_piece() {
        assert_eq!(split_text("hello"), ["hello"]);
        assert!(split_text("").is_empty());
        assert_eq!(split_text(&"x".repeat(MAX_TEXT)).len(), 1);
    }

    #[test]
    fn long_text_is_cut_within_the_limit_and_loses_nothing() {
        for text in [
            "x".repeat(MAX_TEXT * 2 + 5),
            "word ".repeat(2000),
            format!("{}\n{}", "a".repeat(3000), "b".repeat(3000)),
            "😀é".repeat(3000),
        ] {
            let parts = split_text(&text);
            assert!(parts.len() >= 2, "{}", parts.len());
            assert!(parts.iter().all(|p| !p.is_empty() && p.encode_utf16().count() <= MAX_TEXT));
            assert_eq!(parts.concat(), text);
        }
        // A line break in the second half is preferred.
        let parts = split_text(&format!("{}\n{}", "a".repeat(3000), "b".repeat(3000)));
        assert_eq!(parts[0], format!("{}\n", "a".repeat(3000)));
    }

    #[test]
    fn token_shape() {
        assert!(is_token("123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"));
        for bad in ["", "123", ":abc", "12a:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", "1:short", "1:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/../x", "1:AAHdqTcvCH1vGWJxfSe ofSAs0K5PALDsaw"] {
            assert!(!is_token(bad), "{bad}");
        }
    }

    #[test]
    fn debug_hides_the_token() {
        clawpen_meter::tls::install_provider();
        let api = BotApi::new(reqwest::Client::new(), "http://x", Secret::new("1:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw".into()));
        assert!(!format!("{api:?}").contains("AAHdq"));
    }
}
