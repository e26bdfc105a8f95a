#![doc = include_str!("../README.md")]
//!
//! # Layout
//! - this file: [`StandinConfig`], [`Standin`] (in-process), [`serve`] and [`run_cli`] (own process).
//! - `tokens`: word counts and the deterministic reply, shared by both protocols.
//! - `openai`: Chat Completions (in OpenAI's, Gemini's, DeepSeek's and xAI's usage dialects,
//!   each on its own path: [`Dialect`]) and the model list.
//! - `anthropic`: Messages.
//! - `log`: [`RecordedRequest`]s, and the body wrapper that marks an answer completed.
//! - `sse`: server-sent event streams, paced for `-slow` models.
//! - `telegram`: the Telegram Bot API ([`TelegramStandin`]), on the same port.
//! - [`tls`]: an HTTPS front with a throwaway CA, for clients that must speak TLS.
//! - `provider`: [`ProviderStandin`], one OAuth provider (Google, GitHub, Slack, Trello or Notion)
//!   on its own port; its config, seeded [`Content`] and [`ProviderRequest`] record.
//! - `oauth`: OAuth 2.0 for the five: authorize (consents at once), token (PKCE S256, refresh,
//!   rotation), revoke, and the access-token check of their APIs.
//! - `google`: Calendar v3, Gmail v1 (drafts, and send recorded) and Drive v3.
//! - `github`: the REST API's issues (pull requests among them) and comments.
//! - `slack`: the Web API's conversations and `chat.postMessage`.
//! - `trello`: the REST API's member, boards, lists and cards (updates recorded).
//! - `notion`: the API's bot user, search, pages, blocks and comments (recorded).

mod anthropic;
mod github;
mod google;
mod log;
mod notion;
mod oauth;
mod openai;
mod provider;
mod slack;
mod sse;
mod telegram;
pub mod s3;
pub mod tls;
mod tokens;
mod trello;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use log::RecordedRequest;
pub use openai::{Dialect, REASONING_TOKENS};
pub use provider::{
    CalendarEvent, Content, DriveFile, Email, GmailDraft, IssuedTokens, Issue, IssueComment, NotionComment, NotionPage, ProviderKind, ProviderRequest, ProviderStandin, ProviderStandinConfig, SentMail,
    SlackChannel, SlackMessage, TrelloBoard, TrelloCard, TrelloList, TrelloUpdate,
};
pub use telegram::{Delivery, SentMessage, TelegramStandin, Webhook};

/// What the stand-in accepts and how fast it streams.
#[derive(Clone)]
pub struct StandinConfig {
    /// The key OpenAI clients must send as `Authorization: Bearer …`.
    pub openai_key: String,
    /// The key Anthropic clients must send as `x-api-key`.
    pub anthropic_key: String,
    /// Pause between streamed events for models whose name ends in `-slow`.
    pub token_delay_ms: u64,
    /// How long a model takes to answer (or to send a stream's first event), like a provider's
    /// time to first token. 0 answers at once.
    pub latency_ms: u64,
    /// Input tokens each image in a request counts.
    pub image_tokens: u64,
}

/// Input tokens a server-side tool adds to a call, like a provider's web search whose results
/// enter the context: each OpenAI `web_search_options`, Anthropic server tool (`web_search_…`,
/// `web_fetch_…`, …) and Anthropic MCP server.
pub const SERVER_TOOL_TOKENS: u64 = 10_000;

impl StandinConfig {
    /// Keys `sk-standin-openai` and `sk-ant-standin`, 20 ms between a slow model's events, 765
    /// tokens an image (OpenAI's figure for a 512×512 picture in high detail).
    pub fn for_testing() -> Self {
        Self { openai_key: "sk-standin-openai".into(), anthropic_key: "sk-ant-standin".into(), token_delay_ms: 20, latency_ms: 0, image_tokens: 765 }
    }
}

/// State shared by the handlers and the [`Standin`] handle.
struct Shared {
    config: StandinConfig,
    log: Arc<log::RequestLog>,
    /// Numbers answers (`chatcmpl-…`, `msg_…`).
    answers: AtomicU64,
    /// Numbers scripted tool calls (`call_<n>`), apart so that they count from 1 per stand-in.
    tool_calls: AtomicU64,
    /// The Bot API's bots, updates and sent messages.
    telegram: TelegramStandin,
    /// Keys of the providers' own customers (bring-your-own keys), accepted by the
    /// chat-completions APIs besides [`StandinConfig::openai_key`] until revoked.
    customer_keys: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Shared {
    fn new(config: StandinConfig) -> Arc<Self> {
        Arc::new(Self { config, log: Arc::default(), answers: AtomicU64::new(0), tool_calls: AtomicU64::new(0), telegram: TelegramStandin::default(), customer_keys: Default::default() })
    }

    fn next_answer(&self) -> u64 {
        self.answers.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn next_tool_call(&self) -> u64 {
        self.tool_calls.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Waits the model's time to answer (see [`StandinConfig::latency_ms`]).
    async fn think(&self) {
        if self.config.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.config.latency_ms)).await;
        }
    }

    fn counter(&self, model: &str) -> tokens::Counter {
        tokens::Counter::for_model(model, self.config.image_tokens)
    }

    fn delay(&self, model: &str) -> Duration {
        if model.ends_with("-slow") {
            Duration::from_millis(self.config.token_delay_ms)
        } else {
            Duration::ZERO
        }
    }
}

/// The key of an `Authorization: Bearer <key>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/gemini/v1beta/openai/chat/completions", post(openai::gemini))
        .route("/deepseek/v1/chat/completions", post(openai::deepseek))
        .route("/xai/v1/chat/completions", post(openai::xai))
        .route("/gemini/v1beta/openai/models", get(openai::models))
        .route("/deepseek/v1/models", get(openai::models))
        .route("/xai/v1/models", get(openai::models))
        .route("/v1/models", get(openai::models))
        .route("/v1/messages", post(anthropic::messages))
        .fallback(fallback)
        .with_state(shared)
}

/// `/bot<token>/<method>` is the Bot API; any other unknown route is OpenAI's 404.
async fn fallback(state: axum::extract::State<Arc<Shared>>, method: axum::http::Method, uri: axum::http::Uri, headers: HeaderMap, body: bytes::Bytes) -> axum::response::Response {
    if uri.path().starts_with("/bot") {
        return state.telegram.handle(method, &uri, &headers, body).await;
    }
    openai::not_found(state, method, uri, headers, body).await
}

async fn serve_shared(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Events are small writes: without TCP_NODELAY each waits for the client's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(shared)).with_graceful_shutdown(shutdown).await
}

/// Serves both APIs on `listener` until `shutdown` resolves (then lets open answers finish).
pub async fn serve(listener: TcpListener, config: StandinConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    serve_shared(listener, Shared::new(config), shutdown).await
}

/// A stand-in serving on a free loopback port in a background task, until dropped.
pub struct Standin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Standin {
    /// Binds 127.0.0.1 on a free port and serves in the background.
    pub async fn start(config: StandinConfig) -> std::io::Result<Standin> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Shared::new(config);
        let task = tokio::spawn(serve_shared(listener, shared.clone(), std::future::pending()));
        Ok(Standin { addr, shared, task })
    }

    /// Accepts `key` on the chat-completions APIs from now on, as a provider does a customer's
    /// own key.
    pub fn accept_key(&self, key: &str) {
        self.shared.customer_keys.lock().expect("keys").insert(key.to_owned());
    }

    /// Refuses `key` from now on (401), as a provider does a key its customer revoked.
    pub fn revoke_key(&self, key: &str) {
        self.shared.customer_keys.lock().expect("keys").remove(key);
    }

    /// `http://127.0.0.1:PORT`: Anthropic's base URL; OpenAI's is this plus `/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where it listens (for [`tls::TlsFront`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Telegram Bot API on this stand-in: register bots, inject updates, read what was sent.
    /// Its base URL (`api_base`) is [`Standin::base_url`].
    pub fn telegram(&self) -> &TelegramStandin {
        &self.shared.telegram
    }

    /// Every model API request received so far, in arrival order (Bot API calls are not here;
    /// see [`TelegramStandin::calls`]).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.log.snapshot()
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs a stand-in as its own process: binds `listen`, writes the bound address (`IP:PORT`) to
/// `addr_file` if given, prints `standin listening on http://ADDR`, and serves until SIGTERM or
/// ctrl-c.
pub async fn run_cli(listen: SocketAddr, addr_file: Option<PathBuf>, config: StandinConfig) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Registered before the address is published, so a supervisor's SIGTERM is never missed.
    let mut term = signal(SignalKind::terminate())?;
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    if let Some(path) = addr_file {
        // Written whole then renamed, so a reader polling for the file never sees half of it.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, addr.to_string())?;
        std::fs::rename(&partial, &path)?;
    }
    println!("standin listening on http://{addr}");
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    serve(listener, config, shutdown).await
}
