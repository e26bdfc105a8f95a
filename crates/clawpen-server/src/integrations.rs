//! The integrations' part of the server: the broker (crate `clawpen-broker`) is served to each
//! agent on its `control.sock` next to the meter, behind the run check here; chat commands
//! decide its proposals (`/approve N`, `/reject N`, `/proposals`); the API routes are in
//! `api/integrations.rs`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clawpen_meter::{Meter, MeterCaller};
use clawpen_core::ids::TenantId;

/// In front of the broker's `POST /v1/tools/call`: the call must name an open run of this agent
/// (one the server opened for a user's message), and the run may make at most `max` tool calls.
/// The agent cannot make its own runs, so a sandbox cannot call tools on its own.
pub async fn admit_tool_call(State((meter, caller, max)): State<(Arc<Meter>, MeterCaller, u32)>, req: Request, next: Next) -> Response {
    if req.uri().path() == clawpen_agent::broker_client::CALL_PATH {
        let run = req.headers().get(clawpen_agent::meter_client::RUN_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        if let Err(e) = meter.admit_tool_call(&caller, &run, max).await {
            let body = serde_json::json!({"ok": false, "content": null, "untrusted": false, "error": {"code": e.code(), "message": e.message()}});
            return (e.status(), axum::Json(body)).into_response();
        }
    }
    next.run(req).await
}

/// A chat command about proposals, when `text` is one: the answer to give instead of asking the
/// agent. The model never sees these, so nothing it reads can approve a proposal.
pub async fn chat_command(app: &crate::app::App, tenant: &TenantId, actor: &str, text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    let command = words.next()?;
    let arg = words.next();
    if words.next().is_some() {
        return None;
    }
    let broker = &app.broker;
    let number = || arg.and_then(|a| a.trim_start_matches('#').parse::<i64>().ok());
    let answer = match (command, arg) {
        ("/proposals", None) => match broker.proposals(tenant, true).await {
            Ok(p) if p.is_empty() => "No proposals wait for you.".to_owned(),
            Ok(p) => p.iter().map(|p| format!("#{}: {} — {}\n{}{}", p.number, p.tool, p.target, p.text, if p.from_tool_result { "\n(This came from content the agent read, not from you.)" } else { "" })).collect::<Vec<_>>().join("\n\n") + "\n\nAnswer /approve N or /reject N.",
            Err(e) => format!("The proposals cannot be read: {e}"),
        },
        ("/approve" | "/reject", Some(_)) => {
            let Some(n) = number() else { return Some(format!("{command} takes a proposal's number, e.g. {command} 3.")) };
            let r = if command == "/approve" { broker.approve(tenant, actor, n).await } else { broker.reject(tenant, actor, n).await };
            match r {
                Ok(p) if command == "/approve" => format!("Proposal #{} ({}) was approved: {}.", p.number, p.target, p.outcome.as_deref().unwrap_or(&p.state)),
                Ok(p) => format!("Proposal #{} ({}) was rejected; nothing was written.", p.number, p.target),
                Err(e) => format!("Proposal #{n}: {e}"),
            }
        }
        _ => return None,
    };
    Some(answer)
}
