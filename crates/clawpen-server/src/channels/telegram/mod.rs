//! The Telegram channel.
//!
//! - **A tenant's own bot.** The tenant stores its bot's token (`PUT /api/v1/telegram/bot`); the
//!   token and a random webhook secret are sealed in the vault, bound to the tenant and the
//!   bot's opaque id. Updates arrive by webhook (`POST /telegram/webhook/<bot id>`, the secret
//!   header compared in constant time) or by a long-polling task per bot. By default only the
//!   tenant's Telegram members reach its agent (`access = "members"`); `open` lets anyone who
//!   writes to the bot in.
//! - **The shared bot.** One platform bot (token from the operator's environment or a 0600
//!   file). A Telegram user becomes a member of a tenant by sending `/pair CODE` (or opening the
//!   `/start CODE` deep link) with a code the tenant got from `POST /api/v1/telegram/pairing-codes`.
//!   A user belongs to at most one tenant; a tenant may have several (a family). Anyone else gets
//!   the pairing prompt and reaches no agent.
//!
//! Every update is taken once (its id is claimed in the store, so a retried webhook or a
//! re-fetched update is not answered twice), handled in its own task (the webhook answers at
//! once), one at a time per chat, and answered with `sendMessage`, cut at 4096 characters.
//!
//! # Layout
//! - [`bot_api`]: the Bot API client, update types, and cutting long replies.
//! - this file: [`Telegram`] (the shared bot, the pollers, handling an update, pairing codes).

pub mod bot_api;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use clawpen_agent::protocol::MessageIn;
use clawpen_core::ids::{AgentId, TelegramBotId, TenantId};
use clawpen_store::telegram::{Redeemed, TelegramBot, BOT_TOKEN_PURPOSE, WEBHOOK_SECRET_PURPOSE};
use clawpen_store::StoreError;
use clawpen_vault::{Binding, Secret};
use rand::RngCore;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::app::App;
use crate::config::{TelegramConfig, TelegramMode};
use crate::fleet::Actor;
use bot_api::{BotApi, BotApiError, BotUser, Update, User};

/// What an unpaired user is told, whatever they wrote.
pub const PAIRING_PROMPT: &str = "Hello! I only talk with people paired with an account here. \
Ask the account's owner for a pairing code, then send /pair CODE (or open the link they gave you).";
const NOT_VALID: &str = "That pairing code is not valid. Check it, or ask for a new one.";
const EXPIRED: &str = "That pairing code has expired. Ask for a new one.";
const USED: &str = "That pairing code was already used. Ask for a new one.";
const OTHER_TENANT: &str = "You are already paired with another account. Ask its owner to remove you first.";
const NO_AGENT: &str = "The assistant you were paired with is gone. Ask for a new pairing code and send /pair CODE.";
const TEXT_ONLY: &str = "I can only read text messages for now.";
const PAIRED_HELLO: &str = "You are paired. Just write your message.";

/// Characters of a pairing code: Crockford's base32 (no I, L, O, U).
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in a pairing code: 60 random bits.
pub const CODE_LEN: usize = 12;

/// The shared bot, once its token is loaded.
pub struct SharedBot {
    api: BotApi,
    /// Sent to Telegram with `setWebhook`; made fresh at every start and never stored.
    webhook_secret: String,
    /// The bot itself, once `getMe` answered.
    identity: OnceLock<BotUser>,
}

/// Which bot an update came to.
#[derive(Clone)]
pub enum Source {
    Shared(Arc<SharedBot>),
    Tenant { bot: Arc<TelegramBot>, api: BotApi },
}

impl Source {
    /// The key update ids are claimed under: ids count per bot.
    fn key(&self) -> String {
        match self {
            Source::Shared(s) => format!("shared:{}", s.identity.get().map_or(0, |b| b.id)),
            Source::Tenant { bot, .. } => bot.id.to_string(),
        }
    }

    fn api(&self) -> &BotApi {
        match self {
            Source::Shared(s) => &s.api,
            Source::Tenant { api, .. } => api,
        }
    }
}

/// The channel's state, shared by the routes and the background tasks.
pub struct Telegram {
    config: TelegramConfig,
    http: reqwest::Client,
    shared: OnceLock<Arc<SharedBot>>,
    /// The address the server listens on, the last resort for webhook URLs.
    bound: OnceLock<SocketAddr>,
    /// The polling task of each tenant bot in polling mode.
    pollers: Mutex<HashMap<TelegramBotId, tokio::task::AbortHandle>>,
    /// One lock per chat, so that a chat's messages are answered in order.
    chat_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// A fresh pairing code from the operating system's CSPRNG.
pub fn new_pairing_code() -> String {
    let mut b = [0u8; CODE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut b);
    // 256 is a multiple of 32: taking 5 bits of each byte is unbiased.
    b.iter().map(|x| CODE_ALPHABET[(x & 31) as usize] as char).collect()
}

/// A code as typed by a person (any case, dashes and spaces, O for 0, I or L for 1), or `None`
/// when it cannot be one.
pub fn normalize_code(input: &str) -> Option<String> {
    let code: String = input
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        })
        .collect();
    (code.len() == CODE_LEN && code.bytes().all(|b| CODE_ALPHABET.contains(&b))).then_some(code)
}

/// What the store keeps of a code. The code has 60 random bits and lives minutes, so a plain
/// SHA-256 is enough; it is looked up by this digest, never compared byte by byte.
pub fn code_sha256(code: &str) -> String {
    hex::encode(Sha256::digest(format!("clawpen-telegram-pairing:{code}").as_bytes()))
}

/// A command the channel answers itself.
#[derive(Debug, PartialEq, Eq)]
enum Command<'a> {
    /// `/pair CODE` or `/start CODE` (the deep link).
    Pair(&'a str),
    /// `/start` or `/pair` alone.
    Hello,
}

fn command(text: &str) -> Option<Command<'_>> {
    let (head, arg) = text.split_once(char::is_whitespace).map_or((text, ""), |(h, a)| (h, a.trim()));
    // `/pair@SomeBot` is how Telegram writes a command addressed to one bot.
    let name = head.split('@').next().unwrap_or_default();
    match name {
        "/pair" | "/start" if !arg.is_empty() => Some(Command::Pair(arg)),
        "/pair" | "/start" => Some(Command::Hello),
        _ => None,
    }
}

/// A member's display name from their Telegram profile: no control characters, at most 128.
fn display_name(u: &User) -> String {
    let mut name = u.first_name.clone();
    if let Some(username) = &u.username {
        name = format!("{name} (@{username})");
    }
    let name: String = name.chars().filter(|c| !c.is_control()).take(128).collect();
    if name.trim().is_empty() {
        "Telegram user".to_owned()
    } else {
        name
    }
}

/// What the user reads when a message could not be delivered (the API would have answered
/// this error's status).
fn delivery_failure(code: &str) -> &'static str {
    match code {
        "rate_limited" => "Too many messages for this account right now. Please try again in a minute.",
        "wake_failed" | "agent_unhealthy" | "runtime_unavailable" | "image_missing" => {
            "Your assistant could not be started just now. Please try again in a little while."
        }
        "agent_timeout" => "Your assistant took too long to answer. Please try again.",
        _ => "Something went wrong on our side. Please try again later.",
    }
}

/// Reads the shared bot's token from the environment variable or the 0600 file the config
/// names. Errors name the variable or file, never the value.
fn read_shared_token(config: &TelegramConfig) -> anyhow::Result<Option<Secret<String>>> {
    let token = if let Some(var) = &config.shared_bot_token_env {
        let v = std::env::var(var).map_err(|_| anyhow::anyhow!("telegram.shared_bot_token_env names {var}, which is not set"))?;
        v.trim().to_owned()
    } else if let Some(path) = &config.shared_bot_token_file {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).with_context(|| format!("reading the shared bot's token file {}", path.display()))?;
        anyhow::ensure!(meta.permissions().mode() & 0o077 == 0, "{} may be read by others; run `chmod 600 {}`", path.display(), path.display());
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?);
        text.trim().to_owned()
    } else {
        return Ok(None);
    };
    anyhow::ensure!(bot_api::is_token(&token), "the shared bot's token (from the telegram config) is not a bot token");
    Ok(Some(Secret::new(token)))
}

/// Backoff between failed Bot API rounds: 1 s doubling to a minute.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_secs(1))
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(60));
    }
    fn reset(&mut self) {
        self.0 = Duration::from_secs(1);
    }
}

impl Telegram {
    pub fn new(config: &TelegramConfig) -> Telegram {
        clawpen_meter::tls::install_provider();
        Telegram {
            config: config.clone(),
            http: reqwest::Client::new(),
            shared: OnceLock::new(),
            bound: OnceLock::new(),
            pollers: Mutex::new(HashMap::new()),
            chat_locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &TelegramConfig {
        &self.config
    }

    /// Loads the shared bot's token if the config names one. Returns whether it did.
    pub fn load_shared_bot(&self) -> anyhow::Result<bool> {
        let Some(token) = read_shared_token(&self.config)? else { return Ok(false) };
        let bot = SharedBot { api: self.api(token), webhook_secret: random_hex(32), identity: OnceLock::new() };
        let _ = self.shared.set(Arc::new(bot));
        Ok(true)
    }

    /// A Bot API client for `token`.
    pub fn api(&self, token: Secret<String>) -> BotApi {
        BotApi::new(self.http.clone(), &self.config.api_base, token)
    }

    /// The shared bot's Telegram identity, once known (for deep links).
    pub fn shared_identity(&self) -> Option<&BotUser> {
        self.shared.get().and_then(|s| s.identity.get())
    }

    /// The shared bot, if configured.
    pub fn shared(&self) -> Option<&Arc<SharedBot>> {
        self.shared.get()
    }

    /// `<public url>/telegram/webhook/<key>`.
    pub fn webhook_url(&self, app: &App, key: &str) -> String {
        let base = self
            .config
            .public_url
            .clone()
            .or_else(|| app.config.public_url.clone())
            .unwrap_or_else(|| format!("http://{}", self.bound.get().copied().unwrap_or(app.config.listen)));
        format!("{}/telegram/webhook/{key}", base.trim_end_matches('/'))
    }

    /// Opens a tenant bot's sealed token.
    pub async fn tenant_api(&self, app: &App, bot: &TelegramBot) -> anyhow::Result<BotApi> {
        let token = self.open_secret(app, bot, BOT_TOKEN_PURPOSE).await?;
        Ok(self.api(token))
    }

    /// Opens one of a tenant bot's sealed secrets.
    pub async fn open_secret(&self, app: &App, bot: &TelegramBot, purpose: &str) -> anyhow::Result<Secret<String>> {
        let sealed = app.store.get_secret(&bot.tenant_id, purpose, bot.id.as_str()).await?.ok_or_else(|| anyhow::anyhow!("bot {}: no sealed {purpose}", bot.id))?;
        let binding = Binding { tenant: bot.tenant_id.as_str(), purpose, record: bot.id.as_str() };
        let plain = app.vault.open(binding, &sealed).map_err(|e| anyhow::anyhow!("bot {}: {e}", bot.id))?;
        let text = String::from_utf8(plain.expose().clone()).map_err(|_| anyhow::anyhow!("bot {}: the sealed {purpose} is not text", bot.id))?;
        Ok(Secret::new(text))
    }

    /// Seals a tenant bot's token and a fresh webhook secret; returns the secret.
    pub async fn seal_secrets(&self, app: &App, bot: &TelegramBot, token: &Secret<String>) -> Result<Secret<String>, StoreError> {
        let secret = Secret::new(random_hex(32));
        for (purpose, value) in [(BOT_TOKEN_PURPOSE, token.expose()), (WEBHOOK_SECRET_PURPOSE, secret.expose())] {
            let sealed = app.vault.seal(Binding { tenant: bot.tenant_id.as_str(), purpose, record: bot.id.as_str() }, value.as_bytes());
            app.store.put_secret(&bot.tenant_id, purpose, bot.id.as_str(), &sealed).await?;
        }
        Ok(secret)
    }

    /// Background work for the life of the server: the tenants' pollers, the shared bot, and
    /// forgetting old update ids. `addr` is where the server listens.
    pub async fn run(app: App, addr: SocketAddr) {
        let tg = &app.telegram;
        let _ = tg.bound.set(addr);
        match app.store.all_telegram_bots().await {
            Ok(bots) => {
                for bot in bots.into_iter().filter(|b| b.mode == TelegramMode::Polling.as_str()) {
                    tg.start_poller(&app, bot);
                }
            }
            Err(e) => warn!(error = %e, "telegram: cannot list the tenants' bots; their pollers are not started"),
        }
        let shared = async {
            match tg.shared.get().cloned() {
                Some(bot) => tg.run_shared(&app, bot).await,
                None => std::future::pending().await,
            }
        };
        let prune = async {
            loop {
                let before = clawpen_store::now_ms() - 2 * 24 * 3600 * 1000;
                if let Err(e) = app.store.prune_telegram_updates(before).await {
                    warn!(error = %e, "telegram: cannot prune old update ids");
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        };
        tokio::join!(shared, prune);
    }

    /// Stops every poller (at shutdown).
    pub fn stop_all(&self) {
        for (_, h) in self.pollers.lock().expect("pollers").drain() {
            h.abort();
        }
    }

    /// The shared bot: learns who it is, then sets its webhook or polls.
    async fn run_shared(&self, app: &App, bot: Arc<SharedBot>) {
        let mut backoff = Backoff::new();
        let me = loop {
            match bot.api.get_me().await {
                Ok(me) => break me,
                Err(e) => {
                    warn!(error = %e, "telegram: the shared bot's getMe failed; retrying");
                    backoff.wait().await;
                }
            }
        };
        info!(bot = %me.username.as_deref().unwrap_or_default(), mode = self.config.mode.as_str(), "telegram: shared bot ready");
        let _ = bot.identity.set(me);
        backoff.reset();
        let source = Source::Shared(bot.clone());
        match self.config.mode {
            TelegramMode::Webhook => {
                let url = self.webhook_url(app, "shared");
                while let Err(e) = bot.api.set_webhook(&url, &bot.webhook_secret).await {
                    warn!(error = %e, "telegram: the shared bot's setWebhook failed; retrying");
                    backoff.wait().await;
                }
                info!(url = %url, "telegram: shared bot webhook set");
            }
            TelegramMode::Polling => self.poll(app, source, None).await,
        }
    }

    /// Starts (or restarts) the poller of a tenant bot in polling mode.
    pub fn start_poller(&self, app: &App, bot: TelegramBot) {
        let id = bot.id.clone();
        let app2 = app.clone();
        let task = tokio::spawn(async move {
            let bot = Arc::new(bot);
            let api = match app2.telegram.tenant_api(&app2, &bot).await {
                Ok(api) => api,
                Err(e) => {
                    warn!(bot = %bot.id, error = %e, "telegram: cannot open the bot's token; not polling");
                    return;
                }
            };
            app2.telegram.poll(&app2, Source::Tenant { bot: bot.clone(), api }, Some(&bot)).await;
        });
        if let Some(old) = self.pollers.lock().expect("pollers").insert(id, task.abort_handle()) {
            old.abort();
        }
    }

    pub fn stop_poller(&self, id: &TelegramBotId) {
        if let Some(h) = self.pollers.lock().expect("pollers").remove(id) {
            h.abort();
        }
    }

    /// Long-polls `getUpdates` until the task is aborted (or, for a tenant bot, until its row
    /// is gone or no longer polls). Errors are retried with backoff.
    async fn poll(&self, app: &App, source: Source, tenant_bot: Option<&TelegramBot>) {
        let mut offset: Option<i64> = None;
        let mut backoff = Backoff::new();
        // getUpdates is refused while a webhook is set.
        if let Err(e) = source.api().delete_webhook().await {
            debug!(error = %e, "telegram: deleteWebhook before polling failed");
        }
        loop {
            if let Some(bot) = tenant_bot {
                match app.store.find_telegram_bot(&bot.id).await {
                    Ok(Some(now)) if now.mode == TelegramMode::Polling.as_str() => {}
                    Ok(Some(_)) => return,
                    Ok(None) => {
                        // Gone with its agent: its sealed secrets go too.
                        let _ = app.store.delete_telegram_bot_secrets(&bot.tenant_id, &bot.id).await;
                        info!(bot = %bot.id, "telegram: bot removed; poller stops");
                        return;
                    }
                    Err(e) => {
                        warn!(bot = %bot.id, error = %e, "telegram: cannot read the bot's row; retrying");
                        backoff.wait().await;
                        continue;
                    }
                }
            }
            match source.api().get_updates(offset, self.config.poll_timeout_secs).await {
                Ok(updates) => {
                    backoff.reset();
                    for u in updates {
                        let Some(id) = u.get("update_id").and_then(Value::as_i64) else { continue };
                        offset = Some(offset.map_or(id + 1, |o| o.max(id + 1)));
                        if let Err(e) = self.accept(app, &source, u).await {
                            warn!(bot = %source.key(), error = %e, "telegram: cannot record an update; skipped");
                        }
                    }
                }
                Err(e) => {
                    warn!(bot = %source.key(), error = %e, "telegram: getUpdates failed; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    /// Takes an update: claims its id (a second time it is dropped) and handles it in its own
    /// task, so that a webhook is answered at once.
    pub async fn accept(&self, app: &App, source: &Source, update: Value) -> Result<(), StoreError> {
        let Some(update_id) = update.get("update_id").and_then(Value::as_i64) else { return Ok(()) };
        if !app.store.claim_telegram_update(&source.key(), update_id).await? {
            debug!(bot = %source.key(), update_id, "telegram: update seen before; dropped");
            return Ok(());
        }
        let Ok(update) = serde_json::from_value::<Update>(update) else {
            debug!(bot = %source.key(), update_id, "telegram: update of an unknown shape; skipped");
            return Ok(());
        };
        let (app, source) = (app.clone(), source.clone());
        tokio::spawn(async move { app.telegram.handle(&app, &source, update).await });
        Ok(())
    }

    fn chat_lock(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.chat_locks.lock().expect("chat locks");
        map.retain(|_, l| Arc::strong_count(l) > 1 || l.try_lock().is_err());
        map.entry(key).or_default().clone()
    }

    /// Answers one update: private text messages from people; everything else is ignored.
    async fn handle(&self, app: &App, source: &Source, update: Update) {
        let Some(msg) = update.message else { return };
        let Some(from) = msg.from else { return };
        if from.is_bot || msg.chat.kind != "private" {
            debug!(bot = %source.key(), chat_type = %msg.chat.kind, "telegram: not a private message from a person; ignored");
            return;
        }
        let lock = self.chat_lock(format!("{}:{}", source.key(), msg.chat.id));
        let _turn = lock.lock().await;
        let reply = self.answer(app, source, &from, msg.text.as_deref().unwrap_or_default().trim()).await;
        for part in bot_api::split_text(&reply) {
            if let Err(e) = source.api().send_message(msg.chat.id, &part).await {
                warn!(bot = %source.key(), error = %e, "telegram: sendMessage failed; the reply is lost");
                break;
            }
        }
    }

    /// What to say to `from`, who wrote `text`: a pairing answer, the prompt, or the agent's reply.
    async fn answer(&self, app: &App, source: &Source, from: &User, text: &str) -> String {
        if let Some(Command::Pair(code)) = command(text) {
            return self.pair(app, source, from, code).await;
        }
        let member = match app.store.telegram_member(&from.id.to_string()).await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "telegram: cannot look the user up");
                return delivery_failure("internal").to_owned();
            }
        };
        // Who may reach which agent: the heart of the channel's isolation.
        let (tenant, agent): (TenantId, AgentId) = match source {
            Source::Shared(_) => match member {
                None => return PAIRING_PROMPT.to_owned(),
                Some((_, None)) => return NO_AGENT.to_owned(),
                Some((m, Some(agent))) => (m.tenant_id, agent),
            },
            Source::Tenant { bot, .. } => {
                let member_here = member.is_some_and(|(m, _)| m.tenant_id == bot.tenant_id);
                if bot.access != "open" && !member_here {
                    return PAIRING_PROMPT.to_owned();
                }
                (bot.tenant_id.clone(), bot.agent_id.clone())
            }
        };
        if command(text) == Some(Command::Hello) {
            return PAIRED_HELLO.to_owned();
        }
        if text.is_empty() {
            return TEXT_ONLY.to_owned();
        }
        let (tenant, agent) = match (app.store.get_tenant(&tenant).await, app.store.get_agent(&tenant, &agent).await) {
            (Ok(t), Ok(a)) => (t, a),
            (Err(StoreError::NotFound), _) | (_, Err(StoreError::NotFound)) => return NO_AGENT.to_owned(),
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "telegram: cannot read the tenant or agent");
                return delivery_failure("internal").to_owned();
            }
        };
        let msg = MessageIn { text: text.to_owned(), session: Some(format!("tg-{}", from.id)), run_id: None, greeting: false };
        let actor = Actor(format!("telegram:{}", from.id));
        match app.deliver_message(&tenant, &agent, msg, &actor).await {
            Ok(out) => {
                debug!(bot = %source.key(), agent = %agent.id, "telegram: message answered");
                out.reply
            }
            Err(e) => {
                warn!(bot = %source.key(), tenant = %tenant.id, agent = %agent.id, code = e.code, error = %e.message, "telegram: message not delivered");
                delivery_failure(e.code).to_owned()
            }
        }
    }

    /// The tenant's own bot (which speaks for `agent`) tells each person paired with it that
    /// `agent` is live: the greeting is kept in that person's Telegram session (as if the agent
    /// had written first) and sent to their private chat, whose id is their user id. Returns
    /// how many got it; a failure for one person is logged and skips only them.
    pub async fn greet(&self, app: &App, bot: &TelegramBot, tenant: &clawpen_store::Tenant, agent: &clawpen_store::Agent, actor: &Actor) -> usize {
        let (api, people) = match (self.tenant_api(app, bot).await, app.store.list_members(&tenant.id).await) {
            (Ok(api), Ok(people)) => (api, people),
            (Err(e), _) => {
                warn!(bot = %bot.id, error = %e, "telegram: cannot open the bot's token; no greeting sent");
                return 0;
            }
            (_, Err(e)) => {
                warn!(tenant = %tenant.id, error = %e, "telegram: cannot list the tenant's members; no greeting sent");
                return 0;
            }
        };
        let mut greeted = 0;
        for person in people.iter().filter(|m| m.kind == clawpen_store::telegram::MEMBER_KIND) {
            let Ok(chat) = person.external_id.parse::<i64>() else { continue };
            let lock = self.chat_lock(format!("{}:{chat}", bot.id));
            let _turn = lock.lock().await;
            if let Err(e) = app.greet(tenant, agent, Some(format!("tg-{chat}")), actor).await {
                warn!(agent = %agent.id, code = e.code, error = %e.message, "telegram: the greeting was not kept in the session");
            }
            match api.send_message(chat, crate::delivery::GREETING).await {
                Ok(()) => greeted += 1,
                Err(e) => warn!(bot = %bot.id, error = %e, "telegram: sendMessage of the greeting failed"),
            }
        }
        greeted
    }

    /// Sends `text` to every person of the tenant paired on Telegram, through the tenant's own
    /// bot when it has one, else the shared bot; no agent is woken for it. The number reached.
    pub async fn notify(&self, app: &App, tenant: &clawpen_store::Tenant, text: &str) -> usize {
        let api = match self.speaker(app, tenant).await {
            Ok(api) => api,
            Err(e) => {
                warn!(tenant = %tenant.id, error = %e, "telegram: no notice sent");
                return 0;
            }
        };
        let people = app.store.list_members(&tenant.id).await.unwrap_or_default();
        let mut reached = 0;
        for person in people.iter().filter(|m| m.kind == clawpen_store::telegram::MEMBER_KIND) {
            let Ok(chat) = person.external_id.parse::<i64>() else { continue };
            match api.send_message(chat, text).await {
                Ok(()) => reached += 1,
                Err(e) => warn!(tenant = %tenant.id, error = %e, "telegram: sendMessage of a notice failed"),
            }
        }
        reached
    }

    /// The bot that speaks to the tenant's people: its own when it has one, else the shared bot.
    async fn speaker(&self, app: &App, tenant: &clawpen_store::Tenant) -> Result<BotApi, String> {
        match app.store.get_telegram_bot(&tenant.id).await {
            Ok(Some(bot)) => self.tenant_api(app, &bot).await.map_err(|e| format!("cannot open the bot's token: {e}")),
            Ok(None) => self.shared().map(|s| s.api.clone()).ok_or_else(|| "the tenant has no Telegram bot and there is no shared bot".to_owned()),
            Err(e) => Err(format!("cannot read the tenant's bot: {e}")),
        }
    }

    /// Sends `text` to the private chat of `user` (a person paired with the tenant), split to
    /// Telegram's message length, through the bot that speaks to the tenant's people.
    pub async fn send_to(&self, app: &App, tenant: &clawpen_store::Tenant, user: i64, text: &str) -> Result<(), String> {
        let api = self.speaker(app, tenant).await?;
        for part in bot_api::split_text(text) {
            api.send_message(user, &part).await.map_err(|e| format!("Telegram did not take the message: {e}"))?;
        }
        Ok(())
    }

    /// `/pair CODE`: spends the code and makes the user a member of its tenant.
    async fn pair(&self, app: &App, source: &Source, from: &User, code: &str) -> String {
        let Some(code) = normalize_code(code) else { return NOT_VALID.to_owned() };
        // A tenant's own bot takes only its own tenant's codes.
        let only = match source {
            Source::Shared(_) => None,
            Source::Tenant { bot, .. } => Some(bot.tenant_id.clone()),
        };
        let user = from.id.to_string();
        let redeemed = app.store.redeem_pairing_code(&code_sha256(&code), only.as_ref(), &user, &display_name(from), clawpen_store::now_ms()).await;
        match redeemed {
            Ok(Redeemed::Paired { member, tenant, agent, again }) => {
                let detail = serde_json::json!({"member_id": member.to_string(), "again": again, "bot": source.key()});
                let actor = format!("telegram:{user}");
                let entry = clawpen_store::NewAudit { tenant: Some(&tenant), agent: Some(&agent), actor: &actor, action: "telegram.pair", reason: "pairing code", detail: Some(&detail) };
                if let Err(e) = app.store.audit(entry).await {
                    warn!(error = %e, "cannot write the audit log");
                }
                info!(tenant = %tenant, agent = %agent, member = %member, "telegram: user paired");
                let name = app.store.get_agent(&tenant, &agent).await.map(|a| a.name).unwrap_or_else(|_| "your assistant".to_owned());
                format!("Paired! You now talk with {name}. Just write your message.")
            }
            Ok(Redeemed::Unknown) => NOT_VALID.to_owned(),
            Ok(Redeemed::Expired) => EXPIRED.to_owned(),
            Ok(Redeemed::Used) => USED.to_owned(),
            Ok(Redeemed::OtherTenant) => OTHER_TENANT.to_owned(),
            Err(e) => {
                warn!(error = %e, "telegram: pairing failed");
                "Pairing failed on our side. Please try again.".to_owned()
            }
        }
    }

    /// Checks a webhook's secret header for the bot named by the path (`shared` or a tenant
    /// bot's id) in constant time; returns where the update came from.
    pub async fn webhook_source(&self, app: &App, key: &str, header: Option<&[u8]>) -> Result<Source, WebhookRefusal> {
        use subtle::ConstantTimeEq;
        let (source, expected) = if key == "shared" {
            let shared = self.shared.get().filter(|_| self.config.mode == TelegramMode::Webhook).ok_or(WebhookRefusal::NoSuchBot)?;
            let expected = Secret::new(shared.webhook_secret.clone());
            (Source::Shared(shared.clone()), expected)
        } else {
            let id = TelegramBotId::parse(key).map_err(|_| WebhookRefusal::NoSuchBot)?;
            let bot = app.store.find_telegram_bot(&id).await.map_err(|e| WebhookRefusal::Internal(e.to_string()))?;
            let bot = bot.filter(|b| b.mode == TelegramMode::Webhook.as_str()).ok_or(WebhookRefusal::NoSuchBot)?;
            let expected = self.open_secret(app, &bot, WEBHOOK_SECRET_PURPOSE).await.map_err(|e| WebhookRefusal::Internal(e.to_string()))?;
            let api = self.tenant_api(app, &bot).await.map_err(|e| WebhookRefusal::Internal(e.to_string()))?;
            (Source::Tenant { bot: Arc::new(bot), api }, expected)
        };
        let given = header.ok_or(WebhookRefusal::BadSecret)?;
        if bool::from(given.ct_eq(expected.expose().as_bytes())) {
            Ok(source)
        } else {
            Err(WebhookRefusal::BadSecret)
        }
    }
}

/// Why a webhook call was refused.
#[derive(Debug)]
pub enum WebhookRefusal {
    NoSuchBot,
    BadSecret,
    Internal(String),
}

/// Errors of the Bot API that a tenant's `PUT /telegram/bot` shows.
pub fn describe_setup_error(e: &BotApiError) -> String {
    match e {
        BotApiError::Refused { description, .. } => format!("Telegram refused: {description}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_random_and_normalise() {
        let a = new_pairing_code();
        assert_eq!(a.len(), CODE_LEN);
        assert_ne!(a, new_pairing_code());
        assert_eq!(normalize_code(&a), Some(a.clone()));
        assert_eq!(normalize_code(&a.to_lowercase()), Some(a.clone()));
        assert_eq!(normalize_code("abcd-efgh-jkmo"), Some("ABCDEFGHJKM0".to_owned()));
        assert_eq!(normalize_code("il00 0000 0000"), Some("110000000000".to_owned()));
        for bad in ["", "short", "ABCDEFGHJKMNP", "ABCDEFGHJKM!", "ABCDEFGHJKMU"] {
            assert_eq!(normalize_code(bad), None, "{bad}");
        }
        assert_ne!(code_sha256(&a), code_sha256(&new_pairing_code()));
    }

    #[test]
    fn commands() {
        assert_eq!(command("/pair ABC"), Some(Command::Pair("ABC")));
        assert_eq!(command("/start  ABC "), Some(Command::Pair("ABC")));
        assert_eq!(command("/pair@family_bot ABC"), Some(Command::Pair("ABC")));
        assert_eq!(command("/start"), Some(Command::Hello));
        assert_eq!(command("hello /pair ABC"), None);
        assert_eq!(command("/tool remember {}"), None);
    }

    #[test]
    fn display_names_are_clean() {
        let u = User { id: 1, is_bot: false, first_name: "Ann\u{7}\n".into(), username: Some("ann".into()) };
        assert_eq!(display_name(&u), "Ann (@ann)");
        let nobody = User { id: 1, is_bot: false, first_name: " ".into(), username: None };
        assert_eq!(display_name(&nobody), "Telegram user");
    }
}
