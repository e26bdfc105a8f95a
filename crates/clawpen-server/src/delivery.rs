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

impl App {
    /// Takes one message from the tenant's allowance (429 `rate_limited` when spent), wakes the
    /// agent from whichever tier it sleeps in (503 `wake_failed` when it cannot, 503 `node_full`
    /// without room, 409 `agent_crashloop` after repeated crashes), sends the message and
    /// waits for the reply, and withholds a reply from a sandbox that answers as another agent
    /// or tenant (502 `agent_mismatch`). `agent` must be `tenant`'s: callers look it up scoped
    /// by the tenant.
    pub async fn deliver_message(&self, tenant: &Tenant, agent: &Agent, mut msg: MessageIn, actor: &Actor) -> Result<MessageOut, ApiError> {
        let id = &agent.id;
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
        msg.run_id = Some(run.clone());
        let out = self.deliver_in_run(tenant, agent, msg, actor).await;
        self.meter.close_run(id, &run);
        out
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
        // The agent reports the identity its sandbox was given: a mismatch means a miswired
        // socket, and nothing from it may reach this tenant.
        if out.agent_id != id.as_str() || out.tenant_id != tenant.id.as_str() {
            tracing::error!(agent = %id, answered_as = %out.agent_id, "an agent socket answered with another identity; reply withheld");
            return Err(ApiError::new(StatusCode::BAD_GATEWAY, "agent_mismatch", "the agent's sandbox answered with another identity; restart the agent"));
        }
        Ok(out)
    }
}
