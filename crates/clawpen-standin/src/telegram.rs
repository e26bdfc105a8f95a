//! Telegram: a Bot API stand-in on the same port as the model APIs.
//!
//! `GET|POST /bot<token>/<method>` with parameters in the query string, a JSON body or a form
//! body, answered `{"ok": true, "result": …}` or `{"ok": false, "error_code", "description"}` as
//! Telegram does. Bots exist once a test registers them ([`TelegramStandin::add_bot`]); any
//! other token is 401. Updates are injected by the test ([`TelegramStandin::inject_message`]) and
//! either wait for `getUpdates` (real long polling) or, with a webhook set, are POSTed to it with
//! the `X-Telegram-Bot-Api-Secret-Token` header.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// Longest message text, in UTF-16 code units as Telegram counts it.
pub const MAX_TEXT: usize = 4096;

/// A message a bot sent with `sendMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub chat_id: i64,
    pub text: String,
    pub message_id: i64,
}

/// A bot's webhook, as `setWebhook` set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    /// The `secret_token` Telegram sends back in `X-Telegram-Bot-Api-Secret-Token`.
    pub secret_token: Option<String>,
}

/// One POST of an update to a webhook: the status it got, or `None` when it did not connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub update_id: i64,
    pub status: Option<u16>,
}

#[derive(Default)]
struct Bot {
    id: i64,
    username: String,
    /// Updates not yet confirmed by a `getUpdates` offset (and not delivered to a webhook).
    pending: VecDeque<Value>,
    next_update_id: i64,
    next_message_id: i64,
    webhook: Option<Webhook>,
    sent: Vec<SentMessage>,
    deliveries: Vec<Delivery>,
    /// Methods called, in order (the token never appears here or anywhere else).
    calls: Vec<String>,
}

#[derive(Default)]
struct State {
    /// By token.
    bots: HashMap<String, Bot>,
}

/// The Bot API stand-in's state and the test's handle on it.
#[derive(Clone)]
pub struct TelegramStandin {
    state: Arc<Mutex<State>>,
    /// Wakes long polls (and `wait_for_sent`) when something changes.
    changed: Arc<tokio::sync::Notify>,
    /// Serialises webhook deliveries so that they arrive in order.
    delivering: Arc<tokio::sync::Mutex<()>>,
    http: reqwest::Client,
}

impl Default for TelegramStandin {
    fn default() -> Self {
        // Its webhook client is built with TLS support: the crypto provider must be in place.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        TelegramStandin {
            state: Default::default(),
            changed: Default::default(),
            delivering: Default::default(),
            http: reqwest::Client::new(),
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl TelegramStandin {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a bot; its user id is the number before the token's colon (as in real tokens).
    /// Returns that id.
    pub fn add_bot(&self, token: &str, username: &str) -> i64 {
        let id = token.split(':').next().and_then(|n| n.parse().ok()).unwrap_or(1);
        let mut st = self.state();
        st.bots.insert(token.to_owned(), Bot { id, username: username.to_owned(), next_update_id: 1000, next_message_id: 1, ..Bot::default() });
        id
    }

    /// A user writes `text` to the bot in a private chat (`chat.id` = the user's id, as Telegram
    /// does for private chats). Returns the update's id.
    pub fn inject_message(&self, token: &str, from_id: i64, text: &str) -> i64 {
        self.inject_chat_message(token, from_id, from_id, "private", text)
    }

    /// A user writes `text` to the bot in a chat of `chat_type` (`private`, `group`, …).
    pub fn inject_chat_message(&self, token: &str, from_id: i64, chat_id: i64, chat_type: &str, text: &str) -> i64 {
        self.inject_with(token, |update_id, message_id| {
            json!({
                "update_id": update_id,
                "message": {
                    "message_id": message_id,
                    "from": {"id": from_id, "is_bot": false, "first_name": format!("User{from_id}"), "language_code": "en"},
                    "chat": {"id": chat_id, "type": chat_type, "first_name": format!("User{from_id}")},
                    "date": now_secs(),
                    "text": text,
                }
            })
        })
    }

    /// Injects an update built by `make(update_id, message_id)`. Returns the update's id.
    pub fn inject_with(&self, token: &str, make: impl FnOnce(i64, i64) -> Value) -> i64 {
        let (update, webhook) = {
            let mut st = self.state();
            let bot = st.bots.get_mut(token).expect("inject into a registered bot");
            bot.next_update_id += 1;
            bot.next_message_id += 1;
            let update = make(bot.next_update_id, bot.next_message_id);
            if bot.webhook.is_none() {
                bot.pending.push_back(update.clone());
            }
            (update, bot.webhook.clone())
        };
        let update_id = update["update_id"].as_i64().unwrap_or_default();
        match webhook {
            Some(hook) => {
                let this = self.clone();
                let token = token.to_owned();
                tokio::spawn(async move { this.deliver(&token, hook, update).await });
            }
            None => self.changed.notify_waiters(),
        }
        update_id
    }

    /// POSTs an update to the webhook, retrying a failed delivery a few times as Telegram does.
    async fn deliver(&self, token: &str, hook: Webhook, update: Value) {
        let _order = self.delivering.lock().await;
        let update_id = update["update_id"].as_i64().unwrap_or_default();
        for attempt in 0..3 {
            let mut req = self.http.post(&hook.url).json(&update).timeout(Duration::from_secs(10));
            if let Some(secret) = &hook.secret_token {
                req = req.header("X-Telegram-Bot-Api-Secret-Token", secret);
            }
            let status = req.send().await.ok().map(|r| r.status().as_u16());
            {
                let mut st = self.state();
                if let Some(bot) = st.bots.get_mut(token) {
                    bot.deliveries.push(Delivery { update_id, status });
                }
            }
            self.changed.notify_waiters();
            if status.is_some_and(|s| (200..300).contains(&s)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
    }

    /// Messages the bot sent, all chats, in order.
    pub fn sent(&self, token: &str) -> Vec<SentMessage> {
        self.state().bots.get(token).map(|b| b.sent.clone()).unwrap_or_default()
    }

    /// Texts the bot sent to `chat_id`, in order.
    pub fn sent_to(&self, token: &str, chat_id: i64) -> Vec<String> {
        self.sent(token).into_iter().filter(|m| m.chat_id == chat_id).map(|m| m.text).collect()
    }

    /// Waits until the bot has sent at least `count` messages to `chat_id` (or `timeout` passes)
    /// and returns their texts.
    pub async fn wait_for_sent(&self, token: &str, chat_id: i64, count: usize, timeout: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            let texts = self.sent_to(token, chat_id);
            if texts.len() >= count || tokio::time::Instant::now() >= deadline {
                return texts;
            }
            let _ = tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + Duration::from_millis(200)), changed).await;
        }
    }

    /// The bot's webhook, if set.
    pub fn webhook(&self, token: &str) -> Option<Webhook> {
        self.state().bots.get(token).and_then(|b| b.webhook.clone())
    }

    /// Webhook deliveries so far.
    pub fn deliveries(&self, token: &str) -> Vec<Delivery> {
        self.state().bots.get(token).map(|b| b.deliveries.clone()).unwrap_or_default()
    }

    /// Bot API methods the bot's token was used for, in order.
    pub fn calls(&self, token: &str) -> Vec<String> {
        self.state().bots.get(token).map(|b| b.calls.clone()).unwrap_or_default()
    }

    /// Updates waiting for `getUpdates`.
    pub fn pending(&self, token: &str) -> usize {
        self.state().bots.get(token).map_or(0, |b| b.pending.len())
    }

    /// Serves `/bot<token>/<method>`.
    pub(crate) async fn handle(&self, method: Method, uri: &Uri, headers: &HeaderMap, body: Bytes) -> Response {
        let Some((token, api_method)) = uri.path().strip_prefix("/bot").and_then(|rest| rest.split_once('/')) else {
            return error(StatusCode::NOT_FOUND, "Not Found");
        };
        if method != Method::GET && method != Method::POST {
            return error(StatusCode::NOT_FOUND, "Not Found");
        }
        let known = {
            let mut st = self.state();
            match st.bots.get_mut(token) {
                Some(bot) => {
                    bot.calls.push(api_method.to_owned());
                    true
                }
                None => false,
            }
        };
        if !known {
            return error(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        let params = match params(uri, headers, &body) {
            Ok(p) => p,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("Bad Request: {e}")),
        };
        // Telegram's method names are case-insensitive.
        let result = match api_method.to_ascii_lowercase().as_str() {
            "getme" => self.get_me(token),
            "getupdates" => self.get_updates(token, &params).await,
            "setwebhook" => self.set_webhook(token, &params),
            "deletewebhook" => self.delete_webhook(token, &params),
            "getwebhookinfo" => self.webhook_info(token),
            "sendmessage" => self.send_message(token, &params),
            _ => Err((StatusCode::NOT_FOUND, "Not Found".to_owned())),
        };
        match result {
            Ok(v) => Json(json!({"ok": true, "result": v})).into_response(),
            Err((status, description)) => error(status, &description),
        }
    }

    fn with_bot<T>(&self, token: &str, f: impl FnOnce(&mut Bot) -> T) -> T {
        let mut st = self.state();
        f(st.bots.get_mut(token).expect("the token was checked"))
    }

    fn get_me(&self, token: &str) -> ApiResult {
        Ok(self.with_bot(token, |b| {
            json!({"id": b.id, "is_bot": true, "first_name": b.username.trim_end_matches("_bot"), "username": b.username,
                "can_join_groups": true, "can_read_all_group_messages": false, "supports_inline_queries": false})
        }))
    }

    async fn get_updates(&self, token: &str, p: &Map<String, Value>) -> ApiResult {
        let offset = int(p, "offset")?;
        let limit = int(p, "limit")?.unwrap_or(100).clamp(1, 100) as usize;
        let timeout = int(p, "timeout")?.unwrap_or(0).clamp(0, 50) as u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        loop {
            let changed = self.changed.notified();
            let batch = self.with_bot(token, |b| {
                if b.webhook.is_some() {
                    return Err((StatusCode::CONFLICT, "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first".to_owned()));
                }
                if let Some(offset) = offset {
                    // An offset confirms every update before it.
                    b.pending.retain(|u| u["update_id"].as_i64().unwrap_or_default() >= offset);
                }
                Ok(b.pending.iter().take(limit).cloned().collect::<Vec<_>>())
            })?;
            if !batch.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(Value::Array(batch));
            }
            let _ = tokio::time::timeout_at(deadline, changed).await;
        }
    }

    fn set_webhook(&self, token: &str, p: &Map<String, Value>) -> ApiResult {
        let url = string(p, "url")?.unwrap_or_default();
        let secret = string(p, "secret_token")?;
        if let Some(s) = &secret {
            let ok = (1..=256).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
            if !ok {
                return Err((StatusCode::BAD_REQUEST, "Bad Request: secret token contains unallowed characters".to_owned()));
            }
        }
        if url.is_empty() {
            return self.delete_webhook(token, p);
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err((StatusCode::BAD_REQUEST, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook".to_owned()));
        }
        self.with_bot(token, |b| b.webhook = Some(Webhook { url, secret_token: secret }));
        Ok(Value::Bool(true))
    }

    fn delete_webhook(&self, token: &str, p: &Map<String, Value>) -> ApiResult {
        let drop_pending = matches!(p.get("drop_pending_updates"), Some(Value::Bool(true))) || string(p, "drop_pending_updates")?.as_deref() == Some("true");
        self.with_bot(token, |b| {
            b.webhook = None;
            if drop_pending {
                b.pending.clear();
            }
        });
        Ok(Value::Bool(true))
    }

    fn webhook_info(&self, token: &str) -> ApiResult {
        Ok(self.with_bot(token, |b| {
            json!({"url": b.webhook.as_ref().map(|w| w.url.clone()).unwrap_or_default(), "has_custom_certificate": false, "pending_update_count": b.pending.len()})
        }))
    }

    fn send_message(&self, token: &str, p: &Map<String, Value>) -> ApiResult {
        let chat_id = match string(p, "chat_id")? {
            None => return Err((StatusCode::BAD_REQUEST, "Bad Request: chat_id is empty".to_owned())),
            Some(c) => c.parse::<i64>().map_err(|_| (StatusCode::BAD_REQUEST, "Bad Request: chat not found".to_owned()))?,
        };
        let text = string(p, "text")?.unwrap_or_default();
        if text.trim().is_empty() {
            return Err((StatusCode::BAD_REQUEST, "Bad Request: message text is empty".to_owned()));
        }
        if text.encode_utf16().count() > MAX_TEXT {
            return Err((StatusCode::BAD_REQUEST, "Bad Request: message is too long".to_owned()));
        }
        let result = self.with_bot(token, |b| {
            b.next_message_id += 1;
            b.sent.push(SentMessage { chat_id, text: text.clone(), message_id: b.next_message_id });
            json!({
                "message_id": b.next_message_id,
                "from": {"id": b.id, "is_bot": true, "first_name": b.username.trim_end_matches("_bot"), "username": b.username},
                "chat": {"id": chat_id, "type": "private"},
                "date": now_secs(),
                "text": text,
            })
        });
        self.changed.notify_waiters();
        Ok(result)
    }
}

type ApiResult = Result<Value, (StatusCode, String)>;

fn error(status: StatusCode, description: &str) -> Response {
    (status, Json(json!({"ok": false, "error_code": status.as_u16(), "description": description}))).into_response()
}

/// The call's parameters: the query string, then a JSON or form body on top.
fn params(uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let form = |bytes: &[u8], out: &mut Map<String, Value>| -> Result<(), String> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(bytes).map_err(|_| "can't parse parameters".to_owned())?;
        out.extend(pairs.into_iter().map(|(k, v)| (k, Value::String(v))));
        Ok(())
    };
    if let Some(q) = uri.query() {
        form(q.as_bytes(), &mut out)?;
    }
    if body.is_empty() {
        return Ok(out);
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if content_type.starts_with("application/json") {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => out.extend(m),
            _ => return Err("can't parse JSON object".to_owned()),
        }
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        form(body, &mut out)?;
    } else {
        return Err("unsupported content type".to_owned());
    }
    Ok(out)
}

fn bad(name: &str) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, format!("Bad Request: wrong parameter {name}"))
}

/// An integer parameter, as a JSON number or a decimal string.
fn int(p: &Map<String, Value>, name: &str) -> Result<Option<i64>, (StatusCode, String)> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| bad(name)),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad(name)),
        Some(_) => Err(bad(name)),
    }
}

/// A string parameter; a number is taken as its decimal text (Telegram accepts `chat_id` both ways).
fn string(p: &Map<String, Value>, name: &str) -> Result<Option<String>, (StatusCode, String)> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(bad(name)),
    }
}
