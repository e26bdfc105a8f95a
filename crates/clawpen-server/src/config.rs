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
    /// Health checks, restarts, the crash-loop guard and admission.
    pub fleet: FleetConfig,
    /// The Docker Engines sandboxes run on; none: the local engine alone, as node `local`.
    pub nodes: Vec<NodeConfig>,
    /// The Telegram channel: the Bot API, the shared bot, pairing.
    pub telegram: TelegramConfig,
    /// Integrations: the OAuth providers agents' tools reach (docs/INTEGRATIONS.md).
    pub broker: clawpen_broker::config::BrokerConfig,
    /// Where workspaces' snapshots and the store's backups go (docs/OPERATIONS.md).
    pub storage: StorageConfig,
    /// Scheduled runs: how often they are looked for, spread and run at once.
    pub schedules: SchedulesConfig,
}

/// How the scheduler runs the schedules' runs (the plans say how many and how often).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulesConfig {
    /// How often due schedules are looked for, in milliseconds.
    pub tick_ms: u64,
    /// Runs due at the same time start spread over this many seconds (each schedule at its own
    /// fixed offset), so that a minute many families chose does not wake every agent at once.
    pub spread_secs: u64,
    /// Scheduled runs in flight at once, all tenants together; more wait their turn.
    pub concurrency: u32,
}

impl Default for SchedulesConfig {
    fn default() -> Self {
        SchedulesConfig { tick_ms: 250, spread_secs: 10, concurrency: 64 }
    }
}

/// Object storage: a local folder by default, or S3-compatible by URL.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Empty: the folder `<data-dir>/storage`. Or `file:///abs/dir`, or
    /// `s3://bucket/prefix?endpoint=https://…&region=…` (R2, MinIO, AWS).
    pub url: String,
    /// S3 credentials (`access_key_id = "…"`, `secret_access_key = "…"`), a 0600 file; without
    /// it `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` from the environment.
    pub credentials_file: Option<PathBuf>,
}

/// How a Telegram bot receives its updates: `webhook` or `polling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
pub struct FleetConfig {
    /// How often the supervisor looks at every agent (hibernation, due restarts, health).
    pub tick_ms: u64,
    /// How often a running agent's `/health` is asked.
    pub health_every_secs: u64,
    /// How long one health check may take.
    pub health_timeout_ms: u64,
    /// Failed health checks in a row that restart an agent.
    pub health_failures: u32,
    /// Restarts within `crashloop_window_secs` after which the next failure stops the agent in
    /// the `crashloop` state until a manual start.
    pub crashloop_restarts: u32,
    pub crashloop_window_secs: u64,
    /// The first restart waits this long, each further one twice as long, up to the maximum.
    pub restart_backoff_ms: u64,
    pub restart_backoff_max_ms: u64,
    /// Memory this node may commit to sandboxes (the sum of their plans' limits), in MiB; a start
    /// past it is refused. 0: nine tenths of the host's memory.
    pub node_memory_mib: u64,
    /// A node unreachable this long is lost: its agents are started again on another node.
    pub node_lost_secs: u64,
    /// A node that went down this many times within an hour is quarantined (no new sandboxes)
    /// for an hour.
    pub node_quarantine_downs: u32,
    /// Warm-pool sandboxes kept ready (default plan's limits) so that an agent's first start is
    /// a claim instead of a container create; 0 turns the pool off.
    pub warm_pool: u32,
    /// MiB of agents' filesystems (each plan's `disk_mib`) this node's data dir may carry all
    /// together; a new agent past it is refused with `disk_full`. 0: four fifths of the data
    /// dir's filesystem.
    pub disk_budget_mib: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            tick_ms: 1000,
            health_every_secs: 30,
            health_timeout_ms: 2000,
            health_failures: 2,
            crashloop_restarts: 5,
            crashloop_window_secs: 600,
            restart_backoff_ms: 1000,
            restart_backoff_max_ms: 60_000,
            node_memory_mib: 0,
            node_lost_secs: 60,
            node_quarantine_downs: 3,
            warm_pool: 2,
            disk_budget_mib: 0,
        }
    }
}

/// One Docker Engine of the fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// 1–32 of `[a-z0-9-]`.
    pub name: String,
    /// The engine: `unix:///var/run/docker.sock`, or `tcp://host:port` with mutual TLS (then
    /// `tls_ca`, `tls_cert` and `tls_key` are required: plain TCP to an engine is root on that
    /// host for anyone who can reach it). The engine must see this host's files: workspaces
    /// and sockets are bind-mounted from the node's data dir (see `data_dir`).
    pub docker: String,
    /// The CA that signed the engine's certificate (PEM).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// This server's client certificate and key (PEM), signed by a CA the engine trusts.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Memory this node may commit to sandboxes, in MiB; 0: `fleet.node_memory_mib`.
    #[serde(default)]
    pub memory_mib: u64,
    /// The node's own data dir (absolute): where its agents' filesystems, run dirs and (on the
    /// first node) the warm pool live. Unset: this server's data dir, shared. An agent that
    /// moves between nodes with different data dirs is backed up from the one and restored
    /// from storage onto the other.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

impl FleetConfig {
    pub fn guard(&self) -> clawpen_core::lifecycle::Guard {
        clawpen_core::lifecycle::Guard {
            max_restarts: self.crashloop_restarts as usize,
            window: (self.crashloop_window_secs as i64).saturating_mul(1000),
            base_backoff: self.restart_backoff_ms as i64,
            max_backoff: self.restart_backoff_max_ms as i64,
            health_every: (self.health_every_secs as i64).saturating_mul(1000),
            health_failures: self.health_failures,
        }
    }

    /// The node's memory budget in MiB: the configured one, else nine tenths of the host's.
    pub fn memory_budget_mib(&self) -> u64 {
        if self.node_memory_mib > 0 {
            return self.node_memory_mib;
        }
        let total_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
            .unwrap_or(4 * 1024 * 1024);
        total_kib / 1024 * 9 / 10
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
    /// Tenant uids are `uid_base + n`; keep the range clear of the node's own users. 0 (the
    /// default): a range of its own for each installation, chosen once and kept in the store
    /// (see [`crate::uid_range`]), so that two installations on one host never share a uid.
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
        SandboxConfig { uid_base: 0, start_timeout_secs: 30, stop_grace_secs: 5, message_timeout_secs: 120, image: None }
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
                    max_calls_per_run: 24,
                    messages_per_minute: 120,
                    idle_pause_secs: 600,
                    idle_stop_secs: 6 * 3600,
                    idle_remove_secs: 30 * 24 * 3600,
                    disk_mib: 1024,
                    disk_inodes: 65_536,
                    control_connections: 64,
                    gateway_connections: 64,
                    ..Plan::default()
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
            fleet: FleetConfig::default(),
            nodes: Vec::new(),
            telegram: TelegramConfig::default(),
            broker: Default::default(),
            storage: Default::default(),
            schedules: SchedulesConfig::default(),
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
        anyhow::ensure!(
            self.sandbox.uid_base == 0 || self.sandbox.uid_base >= 10_000,
            "sandbox.uid_base must be 0 (a range of its own per installation) or at least 10000, clear of system users"
        );
        for (name, p) in &self.plans {
            anyhow::ensure!(p.memory_mib >= 16, "plan {name}: memory_mib must be at least 16");
            anyhow::ensure!(p.warm_pool.is_none_or(|w| w <= 64), "plan {name}: warm_pool must be at most 64");
            anyhow::ensure!(p.messages_per_minute >= 1, "plan {name}: messages_per_minute must be at least 1");
            anyhow::ensure!(p.pids >= 8, "plan {name}: pids must be at least 8");
            anyhow::ensure!(p.cpu_millis >= 10, "plan {name}: cpu_millis must be at least 10");
            let ordered = |a: u64, b: u64| a == 0 || b == 0 || a < b;
            anyhow::ensure!(
                ordered(p.idle_pause_secs, p.idle_stop_secs) && ordered(p.idle_stop_secs, p.idle_remove_secs) && ordered(p.idle_pause_secs, p.idle_remove_secs),
                "plan {name}: idle_pause_secs < idle_stop_secs < idle_remove_secs (0 turns a tier off)"
            );
            for (field, v) in [("inactive_warn_days", p.inactive_warn_days), ("inactive_grace_days", p.inactive_grace_days), ("inactive_delete_days", p.inactive_delete_days)] {
                anyhow::ensure!(v.is_finite() && (0.0..=36_500.0).contains(&v), "plan {name}: {field} must be 0 (never) or a number of days up to 36500");
            }
            anyhow::ensure!(
                p.inactive_grace_days == 0.0 || p.inactive_warn_days > 0.0,
                "plan {name}: inactive_grace_days counts from the warning, so it needs inactive_warn_days"
            );
            anyhow::ensure!(
                p.inactive_delete_days == 0.0 || p.inactive_warn_days == 0.0 || p.inactive_delete_days > p.inactive_warn_days,
                "plan {name}: inactive_delete_days must be more than inactive_warn_days (the warning comes first)"
            );
            for m in p.models.iter().flatten() {
                anyhow::ensure!(self.meter.models.contains_key(m), "plan {name}: models names {m:?}, which is not in [meter.models]");
            }
        }
        let s = &self.schedules;
        anyhow::ensure!(s.tick_ms >= 10 && s.concurrency >= 1, "schedules.tick_ms must be at least 10 and schedules.concurrency at least 1");
        anyhow::ensure!(s.spread_secs <= 3600, "schedules.spread_secs must be at most 3600");
        let f = &self.fleet;
        anyhow::ensure!(f.tick_ms >= 10, "fleet.tick_ms must be at least 10");
        anyhow::ensure!(f.health_every_secs >= 1 && f.health_timeout_ms >= 10, "fleet.health_every_secs must be at least 1 and fleet.health_timeout_ms at least 10");
        anyhow::ensure!(f.crashloop_restarts >= 1 && f.health_failures >= 1, "fleet.crashloop_restarts and fleet.health_failures must be at least 1");
        anyhow::ensure!(f.warm_pool <= 64, "fleet.warm_pool must be at most 64");
        anyhow::ensure!(f.restart_backoff_ms <= f.restart_backoff_max_ms, "fleet.restart_backoff_ms must not exceed fleet.restart_backoff_max_ms");
        anyhow::ensure!(f.node_lost_secs >= 1, "fleet.node_lost_secs must be at least 1");
        let mut seen = std::collections::HashSet::new();
        for n in &self.nodes {
            anyhow::ensure!(
                !n.name.is_empty() && n.name.len() <= 32 && n.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "nodes: name {:?} must be 1-32 of [a-z0-9-]",
                n.name
            );
            anyhow::ensure!(seen.insert(n.name.clone()), "nodes: the name {:?} is given twice", n.name);
            if let Some(d) = &n.data_dir {
                anyhow::ensure!(d.is_absolute(), "nodes.{}: data_dir = {:?} must be an absolute path", n.name, d);
            }
            let tls = [&n.tls_ca, &n.tls_cert, &n.tls_key];
            if n.docker.starts_with("tcp://") {
                anyhow::ensure!(
                    tls.iter().all(|p| p.is_some()),
                    "nodes.{}: docker = {:?} needs tls_ca, tls_cert and tls_key: an engine is reached over TCP only with mutual TLS",
                    n.name,
                    n.docker
                );
            } else {
                anyhow::ensure!(n.docker.starts_with("unix:///"), "nodes.{}: docker = {:?} must be unix:///path or tcp://host:port", n.name, n.docker);
                anyhow::ensure!(tls.iter().all(|p| p.is_none()), "nodes.{}: tls_* apply only to a tcp:// engine", n.name);
            }
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

    /// The plan of that name, else the default plan (a tenant whose plan was removed from the
    /// config keeps running on the default).
    pub fn plan_or_default(&self, name: &str) -> &Plan {
        self.plans.get(name).or_else(|| self.plans.get(&self.default_plan)).expect("validate() checked the default plan exists")
    }
}
