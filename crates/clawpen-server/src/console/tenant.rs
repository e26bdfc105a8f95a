//! A tenant member's pages: agents and Deploy, an agent (chat, persona, memory), usage,
//! integrations and members. Every query is scoped by the session's tenant: another tenant's
//! ids answer the same "no such" page as missing ones.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use clawpen_console as ui;
use clawpen_core::ids::{AgentId, MemberId};

use super::auth::{self, MemberSession};
use super::{back, flash, member_frame, render, say, when, Posted};
use crate::api::views::AgentView;
use crate::app::App;
use crate::error::ApiError;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/agents", get(agents))
        .route("/deploy", post(deploy))
        .route("/agents/{id}", get(agent))
        .route("/agents/{id}/start", post(start))
        .route("/agents/{id}/stop", post(stop))
        .route("/agents/{id}/persona", post(persona))
        .route("/agents/{id}/memory/forget", post(forget))
        .route("/usage", get(usage))
        .route("/integrations", get(integrations))
        .route("/integrations/tools", post(tools))
        .route("/integrations/{provider}/connect", post(connect))
        .route("/integrations/connections/{id}/disconnect", post(disconnect))
        .route("/proposals/{n}/approve", post(approve))
        .route("/proposals/{n}/reject", post(reject))
        .route("/telegram", get(telegram))
        .route("/telegram/pairing-code", post(pairing_code))
        .route("/telegram/bot", post(connect_bot))
        .route("/telegram/bot/delete", post(disconnect_bot))
        .route("/members", get(members).post(add_member))
        .route("/members/{id}/remove", post(remove_member))
}

type Q = Query<HashMap<String, String>>;

fn agent_id(id: &str) -> Result<AgentId, ApiError> {
    AgentId::parse(id).map_err(|_| ApiError::not_found("agent"))
}

/// The model agents use: the meter's default, else its first.
fn model_of(app: &App) -> String {
    let m = &app.config.meter;
    m.default_model.clone().or_else(|| m.models.keys().next().cloned()).unwrap_or_default()
}

fn row(a: clawpen_store::Agent, model: &str) -> ui::AgentRow {
    let v = AgentView::from(a);
    ui::AgentRow { id: v.id, name: v.name, state: v.observed_state, tier: v.hibernation, model: model.to_owned(), last_error: v.last_error }
}

async fn agents_html(app: &App, s: &MemberSession, deploy: ui::DeployForm, fl: Option<ui::Flash>) -> Response {
    let frame = member_frame(s, "Agents", fl);
    let r = async {
        let mut deploy = deploy;
        deploy.telegram_bot = app.store.get_telegram_bot(&s.tenant.id).await?.map(|b| b.username);
        let model = model_of(app);
        let list: Vec<ui::AgentRow> = app.store.list_agents(&s.tenant.id).await?.into_iter().map(|a| row(a, &model)).collect();
        Ok(ui::agents_page(&frame, &list, &deploy))
    }
    .await;
    render(&frame, r)
}

async fn agents(State(app): State<App>, s: MemberSession, Query(q): Q) -> Response {
    agents_html(&app, &s, ui::DeployForm::default(), flash(&q)).await
}

/// Deploy: the agent is made and started in one press, and greets its owner.
async fn deploy(State(app): State<App>, Posted(s, form): Posted<MemberSession>) -> Response {
    let name = form.get("name").trim().to_owned();
    let telegram = form.get("telegram") == "on";
    let again = |name: String, error: String| ui::DeployForm { name, error: Some(error), telegram, telegram_bot: None };
    if let Err(e) = clawpen_core::names::validate_name(&name) {
        return agents_html(&app, &s, again(name, format!("The name {e}.")), None).await;
    }
    let actor = s.actor();
    match app.deploy(&s.tenant, &name, &actor, telegram).await {
        Ok(a) => Redirect::to(&format!("/console/agents/{}", a.id)).into_response(),
        Err(e) => agents_html(&app, &s, again(name, say(&e)), None).await,
    }
}

async fn agent(State(app): State<App>, s: MemberSession, Path(id): Path<String>, Query(q): Q) -> Response {
    agent_html(&app, &s, &id, flash(&q), None).await
}

async fn agent_html(app: &App, s: &MemberSession, id: &str, fl: Option<ui::Flash>, persona_error: Option<(&str, &str, &str)>) -> Response {
    let frame = member_frame(s, "Agent", fl);
    let r = async {
        let id = agent_id(id)?;
        let a = app.store.get_agent(&s.tenant.id, &id).await.map_err(|e| match e {
            clawpen_store::StoreError::NotFound => ApiError::not_found("agent"),
            other => other.into(),
        })?;
        let model = model_of(app);
        let v = AgentView::from(a);
        let detail = ui::AgentDetail { id: v.id.clone(), name: v.name.clone(), state: v.observed_state.clone(), tier: v.hibernation.clone(), model };
        let expires_at = clawpen_store::now_ms() / 1000 + crate::api::agents::CONNECT_URL_TTL_SECS;
        let query = app.signer.sign(s.tenant.id.as_str(), id.as_str(), expires_at);
        // The files are read where they are; an archived agent's are shown as unavailable.
        // A form that failed keeps what was typed.
        let (soul, user, memory, unavailable) = match (persona_error, app.persona(&s.tenant, &id).await) {
            (Some((soul, user, _)), files) => (soul.to_owned(), user.to_owned(), files.map(|p| p.memory).unwrap_or_default(), None),
            (None, Ok(p)) => (p.soul, p.user, p.memory, None),
            (None, Err(e)) => (String::new(), String::new(), Vec::new(), Some(say(&e))),
        };
        let memory: Vec<ui::MemoryLine> = memory.into_iter().map(|m| ui::MemoryLine { file: m.file, line: m.line, text: m.text }).collect();
        let error = persona_error.map(|(_, _, e)| e.to_owned()).or(unavailable);
        let frame = member_frame(s, &v.name, frame.flash.clone());
        Ok(ui::agent_page(&frame, &ui::AgentPage { agent: &detail, gateway_query: &query, soul: &soul, user: &user, memory: &memory, persona_error: error.as_deref() }))
    }
    .await;
    render(&frame, r)
}

async fn start(State(app): State<App>, Path(id): Path<String>, Posted(s, _): Posted<MemberSession>) -> Response {
    let to = format!("/console/agents/{id}");
    let r = async { app.start_agent(&s.tenant, &agent_id(&id)?, &s.actor(), "started from the console").await }.await;
    back(&to, r.map(|_| "Started.".to_owned()).map_err(|e| say(&e)))
}

async fn stop(State(app): State<App>, Path(id): Path<String>, Posted(s, _): Posted<MemberSession>) -> Response {
    let to = format!("/console/agents/{id}");
    let r = async { app.stop_agent(&s.tenant, &agent_id(&id)?, &s.actor(), "stopped from the console").await }.await;
    back(&to, r.map(|_| "Stopped.".to_owned()).map_err(|e| say(&e)))
}

async fn persona(State(app): State<App>, Path(id): Path<String>, Posted(s, form): Posted<MemberSession>) -> Response {
    let (soul, user) = (form.get("soul").replace("\r\n", "\n"), form.get("user").replace("\r\n", "\n"));
    let actor = s.actor().0;
    let r = async {
        let aid = agent_id(&id)?;
        app.write_agent_file(&s.tenant, &aid, "SOUL.md", &soul, &actor).await?;
        app.write_agent_file(&s.tenant, &aid, "USER.md", &user, &actor).await
    }
    .await;
    match r {
        Ok(()) => back(&format!("/console/agents/{id}"), Ok("Saved. The next reply uses it.".into())),
        Err(e) if e.status == StatusCode::NOT_FOUND => render(&member_frame(&s, "Agent", None), Err(e)),
        // What was typed stays in the form.
        Err(e) => agent_html(&app, &s, &id, None, Some((&soul, &user, &say(&e)))).await,
    }
}

async fn forget(State(app): State<App>, Path(id): Path<String>, Posted(s, form): Posted<MemberSession>) -> Response {
    let line: usize = form.get("line").parse().unwrap_or(0);
    let r = async { app.forget_memory_line(&s.tenant, &agent_id(&id)?, form.get("file"), line, form.get("text"), &s.actor().0).await }.await;
    back(&format!("/console/agents/{id}"), r.map(|_| "Forgotten.".to_owned()).map_err(|e| say(&e)))
}

/// `YYYY-MM-DD` of a day number since the epoch.
fn date_of(day: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(day * 86_400).map(|t| t.date().to_string()).unwrap_or_default()
}

async fn usage(State(app): State<App>, s: MemberSession, Query(q): Q) -> Response {
    let frame = member_frame(&s, "Usage", flash(&q));
    let r = async {
        // A read; the account is opened (a write) only the first time.
        let a = match app.store.account(&s.tenant.id).await {
            Err(clawpen_store::StoreError::NotFound) => crate::api::usage::account_of(&app, &s.tenant).await?,
            other => other?,
        };
        let plan = app.config.plan_or_default(&s.tenant.plan).clone();
        let now = clawpen_store::now_ms();
        let (period, _, _) = clawpen_meter::meter::period_at(now);
        let today = now / 86_400_000;
        // The last 30 days, one bar each (days without calls at zero).
        let spent = app.spend_days.last_30(&app.store, &s.tenant.id, today).await?;
        let days = (today - 29..=today).map(|d| ui::DaySpend { date: date_of(d), spent: spent.get(&d).copied().unwrap_or(0) }).collect();
        let names: HashMap<String, String> = app.store.list_agents(&s.tenant.id).await?.into_iter().map(|a| (a.id.to_string(), a.name)).collect();
        let calls = app
            .store
            .recent_calls(&s.tenant.id, 20)
            .await?
            .into_iter()
            .map(|c| ui::CallRow { at: when(c.at), agent: names.get(&c.agent_id).cloned().unwrap_or(c.agent_id), model: c.model, tokens_in: c.input_tokens, tokens_out: c.output_tokens, cost: c.cost })
            .collect();
        let month_spent = if a.month == period.month { a.month_spent } else { 0 };
        let view = ui::UsageView { days, daily_cap: (plan.daily_cap > 0).then_some(plan.daily_cap), monthly_cap: (plan.monthly_cap > 0).then_some(plan.monthly_cap), month_spent, balance: a.balance, calls };
        Ok(ui::usage_page(&frame, &view))
    }
    .await;
    render(&frame, r)
}

async fn integrations(State(app): State<App>, s: MemberSession, Query(q): Q) -> Response {
    let frame = member_frame(&s, "Integrations", flash(&q));
    let r = async {
        let t = &s.tenant.id;
        let err = crate::api::integrations::broker_error;
        let enabled = app.broker.enabled_tools(t).await.map_err(err)?;
        let connections = app.broker.connections(t).await.map_err(err)?;
        let providers = clawpen_broker::Provider::ALL
            .iter()
            .map(|p| ui::ProviderRow {
                name: p.as_str().into(),
                display: p.display().into(),
                configured: app.broker.is_configured(*p),
                connection: connections.iter().find(|c| c.provider == p.as_str()).map(|c| ui::ConnectionRow { id: c.id.clone(), account: c.account.clone(), status: c.status.clone() }),
            })
            .collect::<Vec<_>>();
        let plan = app.config.plan_or_default(&s.tenant.plan);
        let tools = app
            .broker
            .catalogue()
            .into_iter()
            .filter(|t| plan.tools.as_ref().is_none_or(|p| p.contains(&t.name)))
            .map(|t| ui::ToolRow { enabled: enabled.contains(&t.name), name: t.name, provider: t.provider, description: t.description, writes: t.writes })
            .collect::<Vec<_>>();
        let proposals = app.broker.proposals(t, true).await.map_err(err)?.into_iter().map(|p| ui::ProposalRow { number: p.number, tool: p.tool, target: p.target, text: p.text, from_tool_result: p.from_tool_result }).collect::<Vec<_>>();
        Ok(ui::integrations_page(&frame, &providers, &tools, &proposals))
    }
    .await;
    render(&frame, r)
}

const INTEGRATIONS: &str = "/console/integrations";

async fn tools(State(app): State<App>, Posted(s, form): Posted<MemberSession>) -> Response {
    let chosen = form.all("tools");
    let plan = app.config.plan_or_default(&s.tenant.plan);
    let r = app.broker.enable_tools(&s.tenant.id, &chosen, plan.tools.as_deref()).await;
    back(INTEGRATIONS, r.map(|t| format!("Saved: {} tools on.", t.len())).map_err(|e| say(&crate::api::integrations::broker_error(e))))
}

/// Connecting: to the provider's consent page (it sends the person back to the callback).
async fn connect(State(app): State<App>, Path(provider): Path<String>, Posted(s, _): Posted<MemberSession>) -> Response {
    match app.broker.begin_connect(&s.tenant.id, s.member.id.as_str(), &provider).await {
        Ok(url) => Redirect::to(&url).into_response(),
        Err(e) => back(INTEGRATIONS, Err(say(&crate::api::integrations::broker_error(e)))),
    }
}

async fn disconnect(State(app): State<App>, Path(id): Path<String>, Posted(s, _): Posted<MemberSession>) -> Response {
    let r = app.broker.disconnect(&s.tenant.id, &id).await;
    back(INTEGRATIONS, r.map(|_| "Disconnected.".to_owned()).map_err(|e| say(&crate::api::integrations::broker_error(e))))
}

async fn decide(app: &App, s: &MemberSession, n: &str, approve: bool) -> Response {
    let Ok(n) = n.parse::<i64>() else { return back(INTEGRATIONS, Err("There is no such proposal.".into())) };
    let member = s.member.id.to_string();
    let r = if approve { app.broker.approve(&s.tenant.id, &member, n).await } else { app.broker.reject(&s.tenant.id, &member, n).await };
    match r {
        Ok(p) if approve => back(INTEGRATIONS, Ok(format!("Proposal #{} approved: {}.", p.number, p.outcome.as_deref().unwrap_or(&p.state)))),
        Ok(p) => back(INTEGRATIONS, Ok(format!("Proposal #{} rejected; nothing was written.", p.number))),
        Err(e) => back(INTEGRATIONS, Err(say(&crate::api::integrations::broker_error(e)))),
    }
}

async fn approve(State(app): State<App>, Path(n): Path<String>, Posted(s, _): Posted<MemberSession>) -> Response {
    decide(&app, &s, &n, true).await
}

async fn reject(State(app): State<App>, Path(n): Path<String>, Posted(s, _): Posted<MemberSession>) -> Response {
    decide(&app, &s, &n, false).await
}

async fn members_html(app: &App, s: &MemberSession, form_email: String, form_name: String, error: Option<String>, fl: Option<ui::Flash>) -> Response {
    let frame = member_frame(s, "Members", fl);
    let r = async {
        let members = app.store.list_members(&s.tenant.id).await?.into_iter().map(|m| ui::MemberRow { you: m.id == s.member.id, id: m.id.to_string(), kind: m.kind, name: m.display_name, external_id: m.external_id }).collect();
        Ok(ui::members_page(&frame, &ui::MembersView { members, form_email, form_name, error }))
    }
    .await;
    render(&frame, r)
}

async fn members(State(app): State<App>, s: MemberSession, Query(q): Q) -> Response {
    members_html(&app, &s, String::new(), String::new(), None, flash(&q)).await
}

/// Adds a person who signs in with email and password: a `web` member with a login.
pub async fn add_login(app: &App, tenant: &clawpen_core::ids::TenantId, email: &str, name: &str, password: &str, actor: &str) -> Result<clawpen_store::Member, String> {
    let email_ok = email.len() <= 128 && email.split_once('@').is_some_and(|(a, d)| !a.is_empty() && d.contains('.')) && email.chars().all(|c| c.is_ascii_graphic());
    if !email_ok {
        return Err("The email is not an email address.".into());
    }
    if name.trim().is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err("The name must be 1 to 128 characters.".into());
    }
    if password.chars().count() < auth::MIN_PASSWORD {
        return Err(format!("The password must be at least {} characters.", auth::MIN_PASSWORD));
    }
    let m = app.store.add_member(tenant, "web", email, name.trim()).await.map_err(|e| match e {
        clawpen_store::StoreError::Conflict(_) => "Someone with that email already signs in here.".to_owned(),
        other => other.to_string(),
    })?;
    let pw = password.to_owned();
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&pw)).await.map_err(|e| e.to_string())?;
    app.store.set_password(&m.id, &hash).await.map_err(|e| e.to_string())?;
    let detail = serde_json::json!({"member_id": m.id.to_string(), "kind": "web"});
    let _ = app.store.audit(clawpen_store::NewAudit { tenant: Some(tenant), agent: None, actor, action: "member.add", reason: "console", detail: Some(&detail) }).await;
    Ok(m)
}

async fn add_member(State(app): State<App>, Posted(s, form): Posted<MemberSession>) -> Response {
    let (email, name) = (form.get("email").trim().to_lowercase(), form.get("name").trim().to_owned());
    match add_login(&app, &s.tenant.id, &email, &name, form.get("password"), &s.actor().0).await {
        Ok(m) => back("/console/members", Ok(format!("{} can sign in now.", m.display_name))),
        Err(e) => members_html(&app, &s, email, name, Some(e), None).await,
    }
}

async fn remove_member(State(app): State<App>, Path(id): Path<String>, Posted(s, _): Posted<MemberSession>) -> Response {
    let Ok(mid) = MemberId::parse(&id) else { return back("/console/members", Err("There is no such member.".into())) };
    if mid == s.member.id {
        return back("/console/members", Err("You cannot remove yourself.".into()));
    }
    let r = app.store.remove_member(&s.tenant.id, &mid).await;
    back("/console/members", r.map(|_| "Removed.".to_owned()).map_err(|_| "There is no such member.".to_owned()))
}

async fn telegram_html(app: &App, s: &MemberSession, pairing_code: Option<String>, error: Option<String>, fl: Option<ui::Flash>) -> Response {
    let frame = member_frame(s, "Telegram", fl);
    let r = async {
        let bot = app.store.get_telegram_bot(&s.tenant.id).await?;
        let shared = app.telegram.shared_identity().and_then(|b| b.username.clone());
        let paired = app.store.list_members(&s.tenant.id).await?.into_iter().filter(|m| m.kind == "telegram").map(|m| ui::PairedRow { id: m.id.to_string(), name: m.display_name, external_id: m.external_id }).collect();
        let error = error.or_else(|| (bot.is_none() && shared.is_none()).then(|| "This server has no shared Telegram bot; connect your own bot with PUT /api/v1/telegram/bot.".to_owned()));
        Ok::<_, ApiError>(ui::telegram_page(&frame, &ui::TelegramView { bot_username: bot.map(|b| b.username).or(shared), pairing_code, paired, error }))
    }
    .await;
    render(&frame, r)
}

async fn telegram(State(app): State<App>, s: MemberSession, Query(q): Q) -> Response {
    telegram_html(&app, &s, None, None, flash(&q)).await
}

/// A single-use code that pairs the Telegram user who sends it with the tenant's first agent
/// (or its bot's agent).
async fn pairing_code(State(app): State<App>, Posted(s, _): Posted<MemberSession>) -> Response {
    let r = async {
        let bot = app.store.get_telegram_bot(&s.tenant.id).await?;
        let agents = app.store.list_agents(&s.tenant.id).await?;
        let agent = match bot {
            Some(b) => b.agent_id,
            None => agents.first().map(|a| a.id.clone()).ok_or_else(|| ApiError::conflict("Deploy an agent first: the code pairs a person with it."))?,
        };
        let code = crate::channels::telegram::new_pairing_code();
        let expires_at = clawpen_store::now_ms() + app.telegram.config().pairing_code_ttl_secs as i64 * 1000;
        app.store.create_pairing_code(&s.tenant.id, &agent, &crate::channels::telegram::code_sha256(&code), expires_at).await?;
        let detail = serde_json::json!({"expires_at": expires_at / 1000});
        let _ = app.store.audit(clawpen_store::NewAudit { tenant: Some(&s.tenant.id), agent: Some(&agent), actor: &s.actor().0, action: "telegram.pairing-code", reason: "console", detail: Some(&detail) }).await;
        Ok::<_, ApiError>(code)
    }
    .await;
    match r {
        Ok(code) => telegram_html(&app, &s, Some(code), None, None).await,
        Err(e) => telegram_html(&app, &s, None, Some(say(&e)), None).await,
    }
}

/// Connects the tenant's own bot (a token from @BotFather) to its first agent.
async fn connect_bot(State(app): State<App>, Posted(s, form): Posted<MemberSession>) -> Response {
    let r = async {
        let agent = app.store.list_agents(&s.tenant.id).await?.into_iter().next().ok_or_else(|| ApiError::conflict("Deploy an agent first: the bot's people talk to it."))?;
        let mode = app.telegram.config().mode;
        crate::api::telegram::connect_tenant_bot(&app, &s.tenant.id, &s.actor().0, form.get("token").trim(), &agent.id, mode, crate::api::views::BotAccess::Members).await
    }
    .await;
    match r {
        Ok(bot) => back("/console/telegram", Ok(format!("@{} is connected.", bot.username))),
        // The token is not put back in the form: it is a secret.
        Err(e) => telegram_html(&app, &s, None, Some(say(&e).trim_start_matches("token: ").to_owned()), None).await,
    }
}

async fn disconnect_bot(State(app): State<App>, Posted(s, _): Posted<MemberSession>) -> Response {
    let r = crate::api::telegram::remove_tenant_bot(&app, &s.tenant.id, &s.actor().0).await;
    back("/console/telegram", r.map(|had| if had { "The bot is disconnected.".to_owned() } else { "There was no bot.".to_owned() }).map_err(|e| say(&e)))
}
