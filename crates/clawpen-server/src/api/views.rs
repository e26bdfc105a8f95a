//! Request and response bodies of the API, with their OpenAPI schemas.

use clawpen_store::{Agent, ApiKey, AuditEntry, Member, Tenant};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::doc::{agent_id_schema, name_schema, tenant_id_query_schema};
use crate::config::TelegramMode;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    #[schema(schema_with = name_schema)]
    pub name: String,
    /// A plan from the server's config (the served document lists them); the default plan when
    /// absent.
    #[serde(default)]
    pub plan: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    pub plan: String,
    /// The uid and gid this tenant's sandboxes run as.
    pub uid: i64,
    pub created_at: i64,
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> Self {
        TenantView { id: t.id.to_string(), name: t.name, plan: t.plan, uid: t.uid, created_at: t.created_at }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    pub tenants: Vec<TenantView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub tenant_id: String,
    /// The first characters of the token.
    pub prefix: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl From<ApiKey> for ApiKeyView {
    fn from(k: ApiKey) -> Self {
        ApiKeyView { id: k.id.to_string(), tenant_id: k.tenant_id.to_string(), prefix: k.prefix, created_at: k.created_at, revoked_at: k.revoked_at }
    }
}

/// A new key: the token appears here once and is never shown again.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewApiKey {
    pub key: ApiKeyView,
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub keys: Vec<ApiKeyView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMember {
    pub kind: MemberKind,
    /// The login or Telegram user id: 1–128 printable ASCII characters, no spaces.
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]+$")]
    pub external_id: String,
    /// 1–128 characters, not only white space, no control characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub display_name: String,
    /// A `web` member's console password (at least 12 characters; stored as an argon2id hash):
    /// they sign in at `/console` with `external_id` (their email, lowercased) and it.
    #[schema(write_only, min_length = 12, max_length = 256)]
    pub password: Option<String>,
}

/// How a member reaches the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberKind {
    Web,
    Telegram,
}

impl MemberKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberKind::Web => "web",
            MemberKind::Telegram => "telegram",
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub id: String,
    pub kind: String,
    pub external_id: String,
    pub display_name: String,
    pub created_at: i64,
}

impl From<Member> for MemberView {
    fn from(m: Member) -> Self {
        MemberView { id: m.id.to_string(), kind: m.kind, external_id: m.external_id, display_name: m.display_name, created_at: m.created_at }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberList {
    pub members: Vec<MemberView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    /// Unique within the tenant.
    #[schema(schema_with = name_schema)]
    pub name: String,
    /// Start the agent right away; the call returns once it answers.
    #[serde(default)]
    pub start: bool,
    /// Deploy as the console does: start it and have it greet its owner with its first "I'm
    /// live" message, kept in its main session. Implies `start`.
    #[serde(default)]
    pub greet: bool,
    /// Have the tenant's own Telegram bot answer for the new agent from now on, and greet the
    /// people paired with it there (409 `no_telegram_bot` without a bot). Implies `greet`.
    #[serde(default)]
    pub telegram: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentView {
    pub id: String,
    pub name: String,
    /// `running`, `stopped` or `deleted`: what was asked for.
    pub desired_state: String,
    /// `absent`, `starting`, `running`, `paused`, `stopped`, `exited`, `failed` or `crashloop`:
    /// what the runtime shows. `crashloop`: stopped after crashing repeatedly, `last_error` says
    /// why; a manual start clears it.
    pub observed_state: String,
    /// `awake`, or how deep an idle agent sleeps: `paused`, `stopped` or `removed`. A message or
    /// connection wakes it from any of them.
    pub hibernation: String,
    /// Last message or connection (Unix ms).
    pub last_active_at: Option<i64>,
    /// Restarts inside the crash-loop guard's window.
    pub restarts: usize,
    /// The node (Docker Engine) its sandbox is placed on; `null` until placed.
    pub node: Option<String>,
    pub exit_code: Option<i64>,
    /// Times the kernel killed a process in the sandbox for memory.
    pub oom_count: i64,
    pub last_oom_at: Option<i64>,
    pub last_error: Option<String>,
    /// When the tenant's agents are paused (a credit cap): until when (Unix ms) and why.
    pub paused_until: Option<i64>,
    pub paused_reason: Option<String>,
    /// The agent's own filesystem (its workspace and run dir): what it holds against its
    /// plan's bounds. `null` while it is not mounted.
    pub disk: Option<DiskView>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Space and files of an agent's filesystem. Writes past either bound fail inside the sandbox
/// (ENOSPC); the agent tells its user so.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiskView {
    pub used_bytes: u64,
    pub limit_bytes: u64,
    pub used_files: u64,
    pub limit_files: u64,
    /// True when either bound is (nearly) reached: under 1% or 64 KiB of space, or no file left.
    pub full: bool,
}

impl DiskView {
    pub fn of(u: clawpen_hostfs::dir::Usage) -> DiskView {
        DiskView {
            used_bytes: u.bytes_total.saturating_sub(u.bytes_free),
            limit_bytes: u.bytes_total,
            used_files: u.inodes_total.saturating_sub(u.inodes_free),
            limit_files: u.inodes_total,
            full: u.bytes_free < (u.bytes_total / 100).max(64 * 1024) || u.inodes_free == 0,
        }
    }
}

impl AgentView {
    /// Adds the tenant's pause in force, if any.
    pub fn paused(mut self, pause: &(Option<i64>, Option<String>)) -> AgentView {
        (self.paused_until, self.paused_reason) = pause.clone();
        self
    }

    /// Adds what the agent's filesystem (on its node) holds.
    pub fn with_disk(mut self, app: &crate::app::App) -> AgentView {
        if let Ok(id) = clawpen_core::ids::AgentId::parse(&self.id) {
            self.disk = app.layout_on(self.node.as_deref()).disk_usage(&id).ok().flatten().map(DiskView::of);
        }
        self
    }
}

impl From<Agent> for AgentView {
    fn from(a: Agent) -> Self {
        AgentView {
            id: a.id.to_string(),
            name: a.name,
            desired_state: a.desired_state.to_string(),
            observed_state: a.observed_state.to_string(),
            hibernation: a.hibernation.as_str().to_owned(),
            last_active_at: a.last_active_at,
            restarts: a.restarts.len(),
            node: a.node,
            exit_code: a.exit_code,
            oom_count: a.oom_count,
            last_oom_at: a.last_oom_at,
            last_error: a.last_error,
            paused_until: None,
            paused_reason: None,
            disk: None,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// A model run the server opened for an agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    /// What the agent's model calls carry as `x-clawpen-run`.
    pub run_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Hibernate {
    pub tier: SleepTier,
}

/// How deep to put an agent to sleep: `paused` (frozen, memory kept), `stopped` (container
/// kept) or `removed` (workspace kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SleepTier {
    Paused,
    Stopped,
    Removed,
}

impl From<SleepTier> for clawpen_core::lifecycle::Tier {
    fn from(t: SleepTier) -> Self {
        match t {
            SleepTier::Paused => clawpen_core::lifecycle::Tier::Paused,
            SleepTier::Stopped => clawpen_core::lifecycle::Tier::Stopped,
            SleepTier::Removed => clawpen_core::lifecycle::Tier::Removed,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// The message, 1 to 32,000 characters.
    #[schema(min_length = 1, max_length = 32000)]
    pub text: String,
    /// Session id; `main` when absent.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$")]
    pub session: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectUrl {
    /// Opens a connection to this agent through the gateway; anyone holding it may, until it
    /// expires, so hand it only to the tenant's own client.
    pub url: String,
    /// Unix seconds.
    pub expires_at: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageReply {
    /// What the user reads: the model's answer, or why the run stopped or was refused.
    pub reply: String,
    pub session: String,
    /// The run's id; its model calls carry it in the usage API.
    pub run_id: String,
    /// Tool calls the run made.
    pub tool_calls: u32,
    /// The guardrail that stopped the run: `max_tool_calls` or `max_run_time`.
    pub stopped_by: Option<String>,
    /// The agent is paused (a cap was reached) or out of credits: the reply says why and until when.
    pub paused: bool,
    /// The meter's refusal code (`cap_reached`, `agent_paused`, `daily_cap_reached`, `rate_limited`, …).
    pub error_code: Option<String>,
    /// When a paused agent resumes (Unix ms).
    pub paused_until: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Lines from the end (default 100).
    #[param(minimum = 1, maximum = 1000, nullable = false)]
    pub tail: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Logs {
    /// What the sandbox wrote, oldest first. Every line is marked `sandbox stdout| ` or
    /// `sandbox stderr| ` (it is the tenant's agent talking, never the server), control
    /// characters are shown as `\u{..}` escapes, and lines are cut at 2048 characters.
    pub lines: Vec<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this tenant's lines.
    #[param(schema_with = tenant_id_query_schema, required = false)]
    pub tenant: Option<String>,
    /// At most this many lines, newest first (default 100).
    #[param(minimum = 1, maximum = 1000, nullable = false)]
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// At most this many lines, newest first (default 100).
    #[param(minimum = 1, maximum = 1000, nullable = false)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub at: i64,
    pub tenant_id: Option<String>,
    pub agent_id: Option<String>,
    /// `admin`, `tenant-key:<id>` or `system`.
    pub actor: String,
    pub action: String,
    pub reason: String,
    /// What the action was about (names, ids, amounts); `null` when nothing more.
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
}

impl From<AuditEntry> for AuditView {
    fn from(a: AuditEntry) -> Self {
        AuditView { id: a.id, at: a.at, tenant_id: a.tenant_id, agent_id: a.agent_id, actor: a.actor, action: a.action, reason: a.reason, detail: a.detail }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    pub ok: bool,
    /// What is not ready, when `ok` is false.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// A tenant's own Telegram bot. The token is write-only: no answer ever carries it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutTelegramBot {
    /// The bot's token from @BotFather (`123456789:AA…`). Stored sealed; never shown again.
    #[schema(write_only, pattern = "^[0-9]{1,20}:[A-Za-z0-9_-]{20,100}$")]
    pub token: String,
    /// The agent the bot's users talk to.
    #[schema(schema_with = agent_id_schema)]
    pub agent_id: String,
    /// The server's `telegram.mode` when absent.
    #[serde(default)]
    pub mode: Option<TelegramMode>,
    /// `members` by default.
    #[serde(default)]
    pub access: Option<BotAccess>,
}

/// Who may talk to a tenant's bot: `members` (only this tenant's Telegram members, paired with a
/// code) or `open` (anyone who writes to the bot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BotAccess {
    Members,
    Open,
}

impl BotAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            BotAccess::Members => "members",
            BotAccess::Open => "open",
        }
    }
}

impl std::fmt::Debug for PutTelegramBot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutTelegramBot").field("token", &"[redacted]").field("agent_id", &self.agent_id).field("mode", &self.mode).field("access", &self.access).finish()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TelegramBotView {
    /// Opaque id; the webhook URL carries it.
    pub id: String,
    /// The bot's @username on Telegram.
    pub username: String,
    /// Telegram's id of the bot.
    pub bot_user_id: i64,
    pub agent_id: String,
    /// `webhook` or `polling`.
    pub mode: String,
    /// `members` or `open`.
    pub access: String,
    /// Where Telegram posts this bot's updates (webhook mode).
    pub webhook_url: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePairingCode {
    /// The agent the paired Telegram user will talk to.
    #[schema(schema_with = agent_id_schema)]
    pub agent_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PairingCodeView {
    /// 12 characters; the Telegram user sends `/pair CODE` to the shared bot or to this
    /// tenant's own bot. Single use.
    pub code: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub agent_id: String,
    /// `https://t.me/<shared bot>?start=CODE`, when the platform has a shared bot.
    pub deep_link: Option<String>,
}

/// What a webhook call is answered when the update was taken.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAck {
    pub ok: bool,
}
