//! Configuration: embedded defaults, optionally overridden by `<data-dir>/clawpen.toml` or a file
//! given with `--config`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clawpen_core::plan::{Plan, CREDIT};
use clawpen_core::spec::AgentLimits;
use clawpen_meter::MeterConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the API listens.
    pub listen: SocketAddr,
    /// Plan given to a tenant created without one.
    pub default_plan: String,
    pub plans: BTreeMap<String, Plan>,
    pub sandbox: SandboxConfig,
    /// Guardrails of every agent's loop.
    pub agent: AgentLimits,
    /// Upstream LLM APIs, models and prices.
    pub meter: MeterConfig,
    /// The base of the URLs handed to clients (connect URLs), as they reach this server, e.g.
    /// `https://agents.example.com`; default `http://<listen>`.
    pub public_url: Option<String>,
    /// The Telegram channel: the Bot API, the shared bot, pairing.
    pub telegram: TelegramConfig,
}

/// How a Telegram bot receives its updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TelegramMode {
    /// Telegram POSTs each update to this server (needs a URL Telegram can reach).
    Webhook,
    /// This server long-polls `getUpdates`.
    Polling,
}

impl TelegramMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TelegramMode::Webhook => "webhook",
            TelegramMode::Polling => "polling",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelegramConfig {
    /// The Bot API's base URL; calls go to `<api_base>/bot<token>/<method>`.
    pub api_base: String,
    /// How the shared bot receives updates, and the default for tenants' own bots.
    pub mode: TelegramMode,
    /// The base URL Telegram posts webhooks to (`<public_url>/telegram/webhook/<bot>`); default
    /// the top-level `public_url`, else the address the server listens on.
    pub public_url: Option<String>,
    /// The environment variable holding the shared bot's token; never the token itself.
    pub shared_bot_token_env: Option<String>,
    /// A file (mode 0600) holding the shared bot's token.
    pub shared_bot_token_file: Option<PathBuf>,
    /// How long a pairing code is valid.
    pub pairing_code_ttl_secs: u64,
    /// How long one `getUpdates` long poll waits.
    pub poll_timeout_secs: u64,
}

impl Default for TelegramConfig {
    fn default() -> Self {
        TelegramConfig {
            api_base: "https://api.telegram.org".to_owned(),
            mode: TelegramMode::Polling,
            public_url: None,
            shared_bot_token_env: None,
            shared_bot_token_file: None,
            pairing_code_ttl_secs: 600,
            poll_timeout_secs: 25,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Tenant uids are `uid_base + n`; keep the range clear of the node's own users.
    pub uid_base: u32,
    /// How long a starting sandbox may take to answer `/health`.
    pub start_timeout_secs: u64,
    /// SIGTERM-to-SIGKILL grace when stopping a sandbox.
    pub stop_grace_secs: i64,
    /// How long a message may wait for the agent's reply.
    pub message_timeout_secs: u64,
    /// Image to run instead of the one built from this executable (for development only).
    pub image: Option<String>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig { uid_base: 100_000, start_timeout_secs: 30, stop_grace_secs: 5, message_timeout_secs: 120, image: None }
    }
}

impl Default for Config {
    fn default() -> Self {
        let plans = BTreeMap::from([
            // A tiny budget: 0.2 credits a month, 0.05 a day.
            ("free".to_owned(), Plan { max_agents: 3, ..Plan::default() }),
            (
                "standard".to_owned(),
                Plan {
                    memory_mib: 256,
                    cpu_millis: 1000,
                    pids: 128,
                    tmp_mib: 64,
                    max_agents: 10,
                    monthly_cap: 20 * CREDIT,
                    daily_cap: 2 * CREDIT,
                    initial_credits: 0,
                    max_tokens: 4096,
                    runs_per_hour: 300,
                    messages_per_minute: 120,
                },
            ),
        ]);
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            default_plan: "free".to_owned(),
            plans,
            sandbox: SandboxConfig::default(),
            agent: AgentLimits::default(),
            meter: MeterConfig::default(),
            public_url: None,
            telegram: TelegramConfig::default(),
        }
    }
}

impl Config {
    /// Reads `path` if given, else `<data_dir>/clawpen.toml` if it exists, else the defaults.
    pub fn load(data_dir: &Path, path: Option<&Path>) -> anyhow::Result<Config> {
        let path: Option<PathBuf> = match path {
            Some(p) => Some(p.to_owned()),
            None => Some(data_dir.join("clawpen.toml")).filter(|p| p.exists()),
        };
        let config: Config = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not a valid clawpen config: {e}", p.display()))?
            }
            None => Config::default(),
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.plans.contains_key(&self.default_plan), "default_plan {:?} is not in [plans]", self.default_plan);
        anyhow::ensure!(self.sandbox.uid_base >= 10_000, "sandbox.uid_base must be at least 10000, clear of system users");
        for (name, p) in &self.plans {
            anyhow::ensure!(p.memory_mib >= 16, "plan {name}: memory_mib must be at least 16");
            anyhow::ensure!(p.messages_per_minute >= 1, "plan {name}: messages_per_minute must be at least 1");
            anyhow::ensure!(p.pids >= 8, "plan {name}: pids must be at least 8");
            anyhow::ensure!(p.cpu_millis >= 10, "plan {name}: cpu_millis must be at least 10");
        }
        let tg = &self.telegram;
        anyhow::ensure!(tg.api_base.starts_with("http://") || tg.api_base.starts_with("https://"), "telegram.api_base must be an http:// or https:// URL");
        anyhow::ensure!(!(tg.shared_bot_token_env.is_some() && tg.shared_bot_token_file.is_some()), "telegram: give shared_bot_token_env or shared_bot_token_file, not both");
        anyhow::ensure!((1..=86_400).contains(&tg.pairing_code_ttl_secs), "telegram.pairing_code_ttl_secs must be between 1 and 86400");
        anyhow::ensure!((1..=50).contains(&tg.poll_timeout_secs), "telegram.poll_timeout_secs must be between 1 and 50");
        Ok(())
    }

    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.plans.get(name)
    }
}
