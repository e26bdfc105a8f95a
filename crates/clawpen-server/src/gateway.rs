//! The gateway: `GET /gateway/connect?<signed query>` upgrades to a WebSocket and relays it,
//! frame for frame, to the agent's own WebSocket on its socket (`/gateway`, where the agent
//! speaks the OpenClaw protocol subset). The signed query is the only credential: it names the
//! tenant and the agent, so a connection can reach that agent and no other. A stopped agent is
//! started first, and the upgrade waits for it.

use std::time::Duration;

use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use clawpen_core::ids::{AgentId, TenantId};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, protocol::frame::coding::CloseCode};
use tracing::{debug, warn};

use crate::app::App;
use crate::error::ApiError;
use crate::fleet::Actor;

/// Who acts through a gateway connection, in the audit log: whoever holds its signed URL.
const GATEWAY_ACTOR: &str = "gateway";

/// Largest frame relayed either way.
const FRAME_MAX: usize = 256 * 1024;

/// The WebSocket upgrade, when the request asked for one.
pub struct MaybeUpgrade(Option<WebSocketUpgrade>);

impl FromRequestParts<App> for MaybeUpgrade {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, state: &App) -> Result<Self, Self::Rejection> {
        Ok(MaybeUpgrade(WebSocketUpgrade::from_request_parts(parts, state).await.ok()))
    }
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    ApiError::new(status, code, message).into_response()
}

pub async fn connect(State(app): State<App>, RawQuery(query): RawQuery, MaybeUpgrade(upgrade): MaybeUpgrade) -> Response {
    let now = clawpen_store::now_ms() / 1000;
    let grant = match app.signer.verify(query.as_deref().unwrap_or_default(), now) {
        Ok(g) => g,
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, "bad_connect_url", e.to_string()),
    };
    let (Ok(tenant_id), Ok(agent_id)) = (TenantId::parse(&grant.tenant), AgentId::parse(&grant.agent)) else {
        return refuse(StatusCode::UNAUTHORIZED, "bad_connect_url", "the connect URL names no valid agent");
    };
    // The grant outlives nothing: a deleted tenant or agent is gone for its URLs too.
    let (Ok(tenant), Ok(_)) = (app.store.get_tenant(&tenant_id).await, app.store.get_agent(&tenant_id, &agent_id).await) else {
        return refuse(StatusCode::NOT_FOUND, "not_found", "no such agent");
    };
    let Some(upgrade) = upgrade else {
        return refuse(StatusCode::UPGRADE_REQUIRED, "websocket_required", "connect with a WebSocket client (Upgrade: websocket)");
    };
    let per_minute = app.config.plan_or_default(&tenant.plan).messages_per_minute;
    if let Err(wait) = app.message_limits.check(&tenant.id, per_minute) {
        return refuse(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("too many messages and connections; try again in {} s", wait.as_secs() + 1));
    }
    // Each connection holds two descriptors (the client's and the agent's) for as long as it
    // lasts: a tenant holds at most its plan's number at once.
    let Some(slot) = GatewaySlot::take(&app, &tenant) else {
        let most = app.config.plan_or_default(&tenant.plan).gateway_connections;
        return refuse(StatusCode::TOO_MANY_REQUESTS, "too_many_connections", format!("this tenant already holds {most} gateway connections, the most its plan allows; close one and try again"));
    };
    let actor = Actor(GATEWAY_ACTOR.into());
    // The connection keeps the agent awake from here until it closes.
    let activity = app.activity(&agent_id);
    if let Err(e) = app.wake_for(&tenant, &agent_id, &actor, "woken by a connection").await {
        return refuse(e.status, e.code, e.message);
    }
    let addr = match app.addr_of(&tenant, &agent_id).await {
        Ok(a) => a,
        Err(e) => return refuse(e.status, e.code, e.message),
    };
    let inner = match open_agent(&addr).await {
        Ok(ws) => ws,
        Err(e) => {
            warn!(agent = %agent_id, error = %e, "gateway: the agent's socket did not take the connection");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "agent_unavailable", "the agent did not take the connection; try again");
        }
    };
    debug!(tenant = %tenant_id, agent = %agent_id, "gateway: connection relayed");
    let app = app.clone();
    // Small buffers: an idle connection should cost little (they grow for a large frame).
    upgrade.max_message_size(FRAME_MAX).max_frame_size(FRAME_MAX).read_buffer_size(4096).write_buffer_size(0).on_upgrade(move |client| async move {
        // The chat keeps the tenant's credit lease between its messages (released when it closes).
        let _held = (activity, slot, app.meter.keep_lease(&tenant_id));
        let caller = clawpen_meter::MeterCaller { tenant: tenant_id, agent: agent_id };
        relay(app, caller, client, inner).await
    })
    .into_response()
}

type AgentWs = tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>;

/// One of a tenant's gateway connections; given back when dropped.
struct GatewaySlot {
    app: App,
    tenant: TenantId,
}

impl GatewaySlot {
    fn take(app: &App, tenant: &clawpen_store::Tenant) -> Option<GatewaySlot> {
        let most = app.config.plan_or_default(&tenant.plan).gateway_connections;
        let mut held = app.gateway_conns.lock().expect("gateway connections");
        let n = held.entry(tenant.id.clone()).or_default();
        if *n >= most {
            return None;
        }
        *n += 1;
        Some(GatewaySlot { app: app.clone(), tenant: tenant.id.clone() })
    }
}

impl Drop for GatewaySlot {
    fn drop(&mut self) {
        let mut held = self.app.gateway_conns.lock().expect("gateway connections");
        if let Some(n) = held.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.tenant);
            }
        }
    }
}

/// Opens the agent's own WebSocket, on a stream verified to reach its sandbox.
async fn open_agent(addr: &clawpen_agent::client::AgentAddr) -> Result<AgentWs, String> {
    let stream = tokio::time::timeout(Duration::from_secs(5), addr.connect()).await.map_err(|_| "timed out".to_owned())?.map_err(|e| e.to_string())?;
    let config = tungstenite::protocol::WebSocketConfig::default().max_message_size(Some(FRAME_MAX)).max_frame_size(Some(FRAME_MAX)).read_buffer_size(4096).write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config("ws://agent/gateway", stream, Some(config)).await.map_err(|e| e.to_string())?;
    Ok(ws)
}

/// What the relay does with a frame from the client.
enum Upward {
    /// Pass it on (maybe rewritten).
    Forward(String),
    /// Answer the client with this frame instead.
    Refuse(String),
}

/// A `chat.send` starts a run, and the server, not the client or the agent, starts it: the
/// meter opens it (refused past the plan's runs per hour) and its id goes to the agent as
/// `params.clawpenRunId`, whatever the client put there. The protocol's run is the client's
/// idempotency key; a retried send with the same key goes on in the same meter run. Every other
/// frame passes as it is.
/// `by_key`: the meter runs this connection's sends started, by idempotency key; `opened` gets
/// the key of a run this call opened.
async fn upward(app: &App, caller: &clawpen_meter::MeterCaller, by_key: &std::sync::Mutex<std::collections::HashMap<String, String>>, opened: &mut Option<String>, text: &str) -> Upward {
    if !text.contains("chat.send") {
        return Upward::Forward(text.to_owned());
    }
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(text) else { return Upward::Forward(text.to_owned()) };
    if v["type"] != "req" || v["method"] != "chat.send" || !v["params"].is_object() {
        return Upward::Forward(text.to_owned());
    }
    // Without a key the agent refuses the request (OpenClaw requires one: it is the run's
    // id); a stop command stops runs instead of starting one. Neither opens a run.
    let Some(key) = v["params"]["idempotencyKey"].as_str().filter(|k| !k.is_empty()).map(str::to_owned) else { return Upward::Forward(text.to_owned()) };
    if v["params"]["message"].as_str().is_some_and(clawpen_agent::gateway::is_stop_command) {
        return Upward::Forward(text.to_owned());
    }
    // `/approve N` and the like are the user's, answered here; the agent only shows the
    // answer (and only the server may give one: a client's own is dropped).
    let message = v["params"]["message"].as_str().unwrap_or_default().to_owned();
    if let Some(reply) = crate::integrations::chat_command(app, &caller.tenant, GATEWAY_ACTOR, &message).await {
        v["params"]["clawpenCommandReply"] = serde_json::Value::String(reply);
        return Upward::Forward(v.to_string());
    }
    if let Some(params) = v["params"].as_object_mut() {
        params.remove("clawpenCommandReply");
    }
    let known = by_key.lock().expect("runs").get(&key).cloned();
    let run = match known {
        Some(run) => run,
        None => match app.meter.open_run(caller).await {
            Ok(run) => {
                by_key.lock().expect("runs").insert(key.clone(), run.clone());
                *opened = Some(key);
                run
            }
            Err(e) => {
                let code = if e.code() == "rate_limited" { "RATE_LIMITED" } else { "UNAVAILABLE" };
                let frame = serde_json::json!({"type": "res", "id": v["id"], "ok": false, "error": {"code": code, "message": e.message()}});
                return Upward::Refuse(frame.to_string());
            }
        },
    };
    v["params"]["clawpenRunId"] = serde_json::Value::String(run);
    Upward::Forward(v.to_string())
}

/// A chat event that ends a run (`final`, `aborted`, `error`): that run's id (its idempotency
/// key).
fn ended_run(text: &str) -> Option<String> {
    if !text.contains("\"chat\"") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let ends = v["type"] == "event" && v["event"] == "chat" && matches!(v["payload"]["state"].as_str(), Some("final" | "aborted" | "error"));
    ends.then(|| v["payload"]["runId"].as_str().map(str::to_owned)).flatten()
}

/// Copies frames both ways until either side closes; `chat.send` requests start runs (see
/// [`upward`]), which close when the agent reports their end or the connection closes.
async fn relay(app: App, caller: clawpen_meter::MeterCaller, client: WebSocket, agent: AgentWs) {
    let (c_tx, mut c_rx) = client.split();
    let c_tx = tokio::sync::Mutex::new(c_tx);
    let (mut a_tx, mut a_rx) = agent.split();
    // The meter runs of this connection's sends, by idempotency key (the protocol's run id),
    // and the keys whose run has not ended yet.
    let by_key = std::sync::Mutex::new(std::collections::HashMap::<String, String>::new());
    let open = std::sync::Mutex::new(std::collections::HashSet::<String>::new());
    let up = async {
        while let Some(Ok(m)) = c_rx.next().await {
            let m = match m {
                ws::Message::Text(t) => {
                    let mut opened = None;
                    let verdict = upward(&app, &caller, &by_key, &mut opened, t.as_str()).await;
                    open.lock().expect("runs").extend(opened);
                    match verdict {
                        Upward::Forward(text) => tungstenite::Message::Text(text.into()),
                        Upward::Refuse(frame) => {
                            if c_tx.lock().await.send(ws::Message::Text(frame.into())).await.is_err() {
                                break;
                            }
                            continue;
                        }
                    }
                }
                ws::Message::Binary(b) => tungstenite::Message::Binary(b),
                ws::Message::Ping(_) | ws::Message::Pong(_) => continue,
                ws::Message::Close(f) => {
                    let frame = f.map(|f| tungstenite::protocol::CloseFrame { code: CloseCode::from(f.code), reason: f.reason.as_str().into() });
                    let _ = a_tx.send(tungstenite::Message::Close(frame)).await;
                    break;
                }
            };
            if a_tx.send(m).await.is_err() {
                break;
            }
        }
    };
    let down = async {
        while let Some(Ok(m)) = a_rx.next().await {
            let m = match m {
                tungstenite::Message::Text(t) => {
                    if let Some(key) = ended_run(t.as_str()) {
                        if open.lock().expect("runs").remove(&key) {
                            if let Some(run) = by_key.lock().expect("runs").get(&key) {
                                app.meter.close_run(&caller.agent, run);
                            }
                        }
                    }
                    ws::Message::Text(t.as_str().into())
                }
                tungstenite::Message::Binary(b) => ws::Message::Binary(b),
                tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) | tungstenite::Message::Frame(_) => continue,
                tungstenite::Message::Close(f) => {
                    let frame = f.map(|f| ws::CloseFrame { code: u16::from(f.code), reason: f.reason.as_str().into() });
                    let _ = c_tx.lock().await.send(ws::Message::Close(frame)).await;
                    break;
                }
            };
            if c_tx.lock().await.send(m).await.is_err() {
                break;
            }
        }
    };
    // Whichever side ends first ends the relay; dropping the other closes its connection. The
    // agent stops the runs of a client that went away, so they close here too.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    let keys = by_key.lock().expect("runs");
    for key in open.lock().expect("runs").drain() {
        if let Some(run) = keys.get(&key) {
            app.meter.close_run(&caller.agent, run);
        }
    }
}
