//! Delivering a user's message to an agent, whatever door it came through (the API's
//! `POST /agents/{id}/messages`, Telegram): one path, so every door gets the same rate limit,
//! wake-up and identity check.

use std::time::Duration;

use axum::http::StatusCode;
use clawpen_agent::protocol::{MessageIn, MessageOut};
use clawpen_store::{Agent, Tenant};

use crate::app::App;
use crate::error::ApiError;
use crate::fleet::Actor;

/// What a freshly deployed agent says first.
pub const GREETING: &str = "I'm live! I'm your new assistant. Tell me about yourself, or ask me anything.";

impl App {
    /// Takes one message from the tenant's allowance (429 `rate_limited` when spent), wakes the
    /// agent from whichever tier it sleeps in (503 `wake_failed` when it cannot, 503 `node_full`
    /// without room, 409 `agent_crashloop` after repeated crashes), sends the message and
    /// waits for the reply, and withholds a reply from a sandbox that answers as another agent
    /// or tenant (502 `agent_mismatch`). `agent` must be `tenant`'s: callers look it up scoped
    /// by the tenant.
    pub async fn deliver_message(&self, tenant: &Tenant, agent: &Agent, mut msg: MessageIn, actor: &Actor) -> Result<MessageOut, ApiError> {
        if let Some(out) = self.command_reply(tenant, agent, &msg, actor).await {
            return Ok(out);
        }
        let run = self.admit_message(tenant, &agent.id).await?;
        msg.run_id = Some(run.id.clone());
        self.deliver_in_run(tenant, agent, msg, actor).await
    }

    /// Deploy: makes the agent, starts it and has it greet its owner with [`GREETING`], kept
    /// in its main session as its first message (no model call, no run), so every chat shows
    /// it. With `telegram`, the tenant's own bot speaks for the new agent from now on (409
    /// `no_telegram_bot` when it has none) and the people paired with it get the greeting there
    /// too. A greeting that cannot be sent to someone is logged; the agent stays deployed.
    pub async fn deploy(&self, tenant: &Tenant, name: &str, actor: &Actor, telegram: bool) -> Result<Agent, ApiError> {
        let bot = if telegram {
            let bot = self.store.get_telegram_bot(&tenant.id).await?;
            Some(bot.ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "no_telegram_bot", "this account has no Telegram bot of its own to answer on; connect one first"))?)
        } else {
            None
        };
        let agent = self.create_agent(tenant, name, actor, true).await?;
        let agent = self.start_agent(tenant, &agent.id, actor, "deployed").await?;
        self.greet(tenant, &agent, None, actor).await?;
        if let Some(bot) = bot {
            self.store.set_telegram_bot_agent(&tenant.id, &agent.id).await?;
            self.audit(&tenant.id, Some(&agent.id), actor, "telegram.bot.agent", "deployed to answer on the tenant's bot", Some(serde_json::json!({"bot": bot.id.to_string(), "was": bot.agent_id.to_string()}))).await;
            let greeted = self.telegram.greet(self, &bot, tenant, &agent, actor).await;
            tracing::info!(tenant = %tenant.id, agent = %agent.id, greeted, "telegram: the new agent greeted the bot's people");
        }
        Ok(agent)
    }

    /// Has the agent greet in `session` (its main one when `None`) with [`GREETING`]: kept in
    /// the session as the agent's message; no model call, no run.
    pub async fn greet(&self, tenant: &Tenant, agent: &Agent, session: Option<String>, actor: &Actor) -> Result<MessageOut, ApiError> {
        let msg = MessageIn { text: GREETING.to_owned(), session, run_id: None, greeting: true };
        self.deliver_in_run(tenant, agent, msg, actor).await
    }

    /// `/approve N` and the like are the user's, answered here, whatever door they came
    /// through: the agent never sees them. `None`: the message is not such a command.
    pub async fn command_reply(&self, tenant: &Tenant, agent: &Agent, msg: &MessageIn, actor: &Actor) -> Option<MessageOut> {
        let reply = crate::integrations::chat_command(self, &tenant.id, &actor.0, &msg.text).await?;
        let session = msg.session.clone().unwrap_or_else(|| "main".to_owned());
        Some(MessageOut { reply, agent_id: agent.id.to_string(), tenant_id: tenant.id.to_string(), session, run_id: String::new(), tool_calls: 0, stopped_by: None, paused: false, error_code: None, paused_until: None })
    }

    /// [`App::deliver_message`], with the reply as it is written: the agent's events, each
    /// piece of the answer as it arrives and then the whole reply (its identity checked like a
    /// whole reply's). The run ends with the stream; dropping it hangs up on the agent, which
    /// stops the run and its model call.
    pub async fn deliver_message_stream(&self, tenant: &Tenant, agent: &Agent, msg: MessageIn, actor: &Actor) -> Result<ReplyStream, ApiError> {
        let run = self.admit_message(tenant, &agent.id).await?;
        self.stream_in_run(tenant, agent, msg, run, actor, true).await
    }

    /// [`App::deliver_message_stream`] in a run already admitted (a scheduled run records the
    /// run's id before it starts). `person`: a person sent it, which is the tenant's activity;
    /// a scheduled run is not.
    pub(crate) async fn stream_in_run(&self, tenant: &Tenant, agent: &Agent, mut msg: MessageIn, run: OpenRun, actor: &Actor, person: bool) -> Result<ReplyStream, ApiError> {
        let id = &agent.id;
        msg.run_id = Some(run.id.clone());
        let timeout = Duration::from_secs(self.config.sandbox.message_timeout_secs);
        let activity = if person { self.activity(id) } else { self.busy(id) };
        self.wake_for(tenant, id, actor, "woken by a message").await?;
        let addr = self.addr_of(tenant, id).await?;
        let events = match clawpen_agent::client::message_stream(&addr, &msg, timeout).await {
            Err(clawpen_agent::client::ClientError::Connect(_)) => {
                self.start_agent(tenant, id, actor, "woken by a message").await.map_err(|e| crate::supervisor::wake_failed(id, e))?;
                let addr = self.addr_of(tenant, id).await?;
                clawpen_agent::client::message_stream(&addr, &msg, timeout).await?
            }
            other => other?,
        };
        Ok(ReplyStream { events, agent: id.clone(), tenant: tenant.id.clone(), _run: run, _activity: activity })
    }

    /// A message's admission: one from the tenant's allowance, and the run it starts.
    pub(crate) async fn admit_message(&self, tenant: &Tenant, id: &clawpen_core::ids::AgentId) -> Result<OpenRun, ApiError> {
        let per_minute = self.config.plan_or_default(&tenant.plan).messages_per_minute;
        if let Err(wait) = self.message_limits.check(&tenant.id, per_minute) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("this tenant may send {per_minute} messages a minute; try again in {} s", wait.as_secs() + 1),
            ));
        }
        // The run this message starts: the agent's model calls are accepted only inside it, and
        // the plan's runs per hour count these (429 `rate_limited` past them), before the agent
        // is even woken.
        let caller = clawpen_meter::MeterCaller { tenant: tenant.id.clone(), agent: id.clone() };
        let run = self.meter.open_run(&caller).await?;
        Ok(OpenRun { meter: self.meter.clone(), agent: id.clone(), id: run })
    }

    async fn deliver_in_run(&self, tenant: &Tenant, agent: &Agent, msg: MessageIn, actor: &Actor) -> Result<MessageOut, ApiError> {
        let id = &agent.id;
        let timeout = Duration::from_secs(self.config.sandbox.message_timeout_secs);
        // The message keeps the agent awake until answered, and wakes it from whichever tier it
        // sleeps in; the reply waits for the wake, which is bounded by the start timeout.
        let _activity = self.activity(id);
        self.wake_for(tenant, id, actor, "woken by a message").await?;
        // Only the sandbox the record names may answer (see `App::agent_addr`).
        let addr = self.addr_of(tenant, id).await?;
        let out = match clawpen_agent::client::message(&addr, &msg, timeout).await {
            // The sandbox went away under a running record: start it again, once.
            Err(clawpen_agent::client::ClientError::Connect(_)) => {
                self.start_agent(tenant, id, actor, "woken by a message").await.map_err(|e| crate::supervisor::wake_failed(id, e))?;
                let addr = self.addr_of(tenant, id).await?;
                clawpen_agent::client::message(&addr, &msg, timeout).await?
            }
            other => other?,
        };
        check_identity(&out, id, &tenant.id)?;
        Ok(out)
    }
}

/// The agent reports the identity its sandbox was given: a mismatch means a miswired socket,
/// and nothing from it may reach this tenant.
fn check_identity(out: &MessageOut, agent: &clawpen_core::ids::AgentId, tenant: &clawpen_core::ids::TenantId) -> Result<(), ApiError> {
    if out.agent_id != agent.as_str() || out.tenant_id != tenant.as_str() {
        tracing::error!(agent = %agent, answered_as = %out.agent_id, "an agent socket answered with another identity; reply withheld");
        return Err(ApiError::new(StatusCode::BAD_GATEWAY, "agent_mismatch", "the agent's sandbox answered with another identity; restart the agent"));
    }
    Ok(())
}

/// A run the server opened for a message; closed when dropped.
pub(crate) struct OpenRun {
    meter: std::sync::Arc<clawpen_meter::Meter>,
    agent: clawpen_core::ids::AgentId,
    id: String,
}

impl OpenRun {
    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for OpenRun {
    fn drop(&mut self) {
        self.meter.close_run(&self.agent, &self.id);
    }
}

/// What a streamed reply yields.
#[derive(Debug)]
pub enum ReplyEvent {
    /// A piece of the answer, as it arrived.
    Delta(String),
    /// The whole reply: the stream is over.
    Done(MessageOut),
    /// The turn failed (as the whole-reply route would have answered): the stream is over.
    Failed(ApiError),
}

/// The events of a streamed reply (see [`App::deliver_message_stream`]). Holds the run and the
/// agent's activity until it is dropped.
pub struct ReplyStream {
    events: tokio::sync::mpsc::Receiver<Result<clawpen_agent::protocol::StreamEvent, clawpen_agent::client::ClientError>>,
    agent: clawpen_core::ids::AgentId,
    tenant: clawpen_core::ids::TenantId,
    _run: OpenRun,
    _activity: crate::supervisor::Activity,
}

impl ReplyStream {
    /// The next event; `None` after the last.
    pub async fn next(&mut self) -> Option<ReplyEvent> {
        use clawpen_agent::protocol::StreamEvent;
        Some(match self.events.recv().await? {
            Ok(StreamEvent::Delta { text }) => ReplyEvent::Delta(text),
            Ok(StreamEvent::Done { out }) => match check_identity(&out, &self.agent, &self.tenant) {
                Ok(()) => ReplyEvent::Done(out),
                Err(e) => ReplyEvent::Failed(e),
            },
            Ok(StreamEvent::Error { status, error }) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                ReplyEvent::Failed(ApiError::from(clawpen_agent::client::ClientError::Status { status, body: serde_json::json!({ "error": error }).to_string() }))
            }
            Err(e) => ReplyEvent::Failed(e.into()),
        })
    }
}
