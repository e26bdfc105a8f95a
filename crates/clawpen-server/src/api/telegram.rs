//! Telegram routes. Tenant key: the tenant's own bot (`/api/v1/telegram/bot`), pairing codes,
//! and the tenant's members. No key: the webhook Telegram posts updates to, which the bot's
//! secret header authenticates.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use clawpen_core::ids::{AgentId, TelegramBotId};
use clawpen_store::telegram::TelegramBot;
use clawpen_store::{Agent, StoreError};
use clawpen_vault::Secret;
use serde::Serialize;
use utoipa::ToSchema;

use super::extract::{ApiJson, MemberPath, TenantCaller};
use super::views::*;
use crate::app::App;
use crate::channels::telegram::{self as tg, bot_api, WebhookRefusal};
use crate::config::TelegramMode;
use crate::error::{ApiError, ErrorBody};

/// Header Telegram carries a webhook's secret in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

fn no_bot() -> ApiError {
    ApiError::not_found("telegram bot; set one with PUT /api/v1/telegram/bot")
}

/// The tenant's agent named in a body: malformed is 422, another tenant's or missing is 404.
async fn body_agent(app: &App, caller: &TenantCaller, id: &str) -> Result<Agent, ApiError> {
    let id = AgentId::parse(id).map_err(|_| ApiError::invalid("agent_id: not an agent id"))?;
    app.store.get_agent(&caller.tenant.id, &id).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::not_found("agent"),
        other => other.into(),
    })
}

fn view(app: &App, bot: TelegramBot) -> TelegramBotView {
    let webhook_url = (bot.mode == TelegramMode::Webhook.as_str()).then(|| app.telegram.webhook_url(app, bot.id.as_str()));
    TelegramBotView {
        id: bot.id.to_string(),
        username: bot.username,
        bot_user_id: bot.bot_user_id,
        agent_id: bot.agent_id.to_string(),
        mode: bot.mode,
        access: bot.access,
        webhook_url,
        created_at: bot.created_at,
        updated_at: bot.updated_at,
    }
}

fn telegram_error(e: &bot_api::BotApiError) -> ApiError {
    if e.bad_token() {
        return ApiError::invalid("token: Telegram does not know this bot token");
    }
    tracing::warn!(error = %e, "telegram: a Bot API call for a tenant's bot failed");
    ApiError::new(StatusCode::BAD_GATEWAY, "telegram_unavailable", format!("the Telegram Bot API did not do it ({})", tg::describe_setup_error(e)))
}

async fn audit(app: &App, caller: &TenantCaller, agent: Option<&AgentId>, action: &str, detail: serde_json::Value) {
    audit_as(app, &caller.tenant.id, &caller.actor().0, agent, action, detail).await
}

async fn audit_as(app: &App, tenant: &clawpen_core::ids::TenantId, actor: &str, agent: Option<&AgentId>, action: &str, detail: serde_json::Value) {
    let entry = clawpen_store::NewAudit { tenant: Some(tenant), agent, actor, action, reason: "requested", detail: Some(&detail) };
    if let Err(e) = app.store.audit(entry).await {
        tracing::warn!(error = %e, action, "cannot write the audit log");
    }
}

/// Removes the tenant's bot, if any: its poller, its webhook at Telegram (best effort), its row
/// and sealed secrets. Returns whether there was one.
async fn remove_bot(app: &App, caller: &TenantCaller) -> Result<bool, ApiError> {
    remove_tenant_bot(app, &caller.tenant.id, &caller.actor().0).await
}

/// [`remove_bot`] for `tenant`, by `actor` (the API's key or the console's member).
pub(crate) async fn remove_tenant_bot(app: &App, tenant: &clawpen_core::ids::TenantId, actor: &str) -> Result<bool, ApiError> {
    let Some(old) = app.store.get_telegram_bot(tenant).await? else { return Ok(false) };
    app.telegram.stop_poller(&old.id);
    if old.mode == TelegramMode::Webhook.as_str() {
        if let Ok(api) = app.telegram.tenant_api(app, &old).await {
            if let Err(e) = api.delete_webhook().await {
                tracing::warn!(bot = %old.id, error = %e, "telegram: could not delete the old bot's webhook");
            }
        }
    }
    match app.store.delete_telegram_bot(tenant, &old.id).await {
        Ok(()) | Err(StoreError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    audit_as(app, tenant, actor, Some(&old.agent_id), "telegram.bot.remove", serde_json::json!({"bot_id": old.id.to_string(), "username": old.username})).await;
    Ok(true)
}

#[utoipa::path(put, path = "/api/v1/telegram/bot", tag = "telegram", security(("tenant_key" = [])), request_body = PutTelegramBot,
    responses((status = 200, description = "The connected bot.", body = TelegramBotView),
        (status = 404, description = "No such agent of the caller's tenant (`not_found`).", body = ErrorBody),
        (status = 409, description = "The bot is the platform's shared bot, or another tenant's (`conflict`).", body = ErrorBody),
        (status = 422, description = "The body is not of this shape, or Telegram does not know the token (`invalid_input`).", body = ErrorBody),
        (status = 502, description = "The Telegram Bot API could not be reached or refused the setup (`telegram_unavailable`); nothing was connected.", body = ErrorBody)))]
/// Connects (or replaces) the tenant's own bot: the token is checked with `getMe`, sealed in the
/// vault, and the webhook set or the poller started.
pub async fn put_bot(State(app): State<App>, caller: TenantCaller, ApiJson(body): ApiJson<PutTelegramBot>) -> Result<Json<TelegramBotView>, ApiError> {
    if !bot_api::is_token(body.token.trim()) {
        return Err(ApiError::invalid("token: not a bot token (it looks like 123456789:AA…, from @BotFather)"));
    }
    let agent = body_agent(&app, &caller, &body.agent_id).await?;
    let mode = body.mode.unwrap_or(app.telegram.config().mode);
    let access = body.access.unwrap_or(BotAccess::Members);
    let bot = connect_tenant_bot(&app, &caller.tenant.id, &caller.actor().0, body.token.trim(), &agent.id, mode, access).await?;
    Ok(Json(view(&app, bot)))
}

/// Connects (or replaces) `tenant`'s own bot with `token` for `agent` (the tenant's), by
/// `actor`: checked with `getMe`, sealed, the webhook set or the poller started; on any failure
/// nothing is left connected.
pub(crate) async fn connect_tenant_bot(app: &App, tenant: &clawpen_core::ids::TenantId, actor: &str, token: &str, agent: &AgentId, mode: TelegramMode, access: BotAccess) -> Result<TelegramBot, ApiError> {
    if !bot_api::is_token(token) {
        return Err(ApiError::invalid("token: not a bot token (it looks like 123456789:AA…, from @BotFather)"));
    }
    let token = Secret::new(token.to_owned());
    let access = access.as_str().to_owned();
    let api = app.telegram.api(token.clone());
    let me = api.get_me().await.map_err(|e| telegram_error(&e))?;
    if app.telegram.shared_identity().is_some_and(|s| s.id == me.id) {
        return Err(ApiError::conflict("this is the platform's shared bot; connect a bot of your own"));
    }
    if app.store.telegram_bot_owner(me.id).await?.is_some_and(|t| &t != tenant) {
        return Err(ApiError::conflict("this Telegram bot is already connected to another account"));
    }
    remove_tenant_bot(app, tenant, actor).await?;
    let now = clawpen_store::now_ms();
    let bot = TelegramBot {
        id: TelegramBotId::new(),
        tenant_id: tenant.clone(),
        agent_id: agent.clone(),
        bot_user_id: me.id,
        username: me.username.clone().unwrap_or_else(|| me.first_name.clone()),
        mode: mode.as_str().to_owned(),
        access,
        created_at: now,
        updated_at: now,
    };
    app.store.create_telegram_bot(&bot).await?;
    // From here a failure removes the bot again: nothing half-made is left.
    let undo = |e: ApiError| {
        let (app, tenant, id) = (app.clone(), tenant.clone(), bot.id.clone());
        async move {
            app.telegram.stop_poller(&id);
            let _ = app.store.delete_telegram_bot(&tenant, &id).await;
            e
        }
    };
    let secret = match app.telegram.seal_secrets(app, &bot, &token).await {
        Ok(s) => s,
        Err(e) => return Err(undo(e.into()).await),
    };
    match mode {
        TelegramMode::Webhook => {
            let url = app.telegram.webhook_url(app, bot.id.as_str());
            if let Err(e) = api.set_webhook(&url, secret.expose()).await {
                return Err(undo(telegram_error(&e)).await);
            }
        }
        TelegramMode::Polling => app.telegram.start_poller(app, bot.clone()),
    }
    audit_as(app, tenant, actor, Some(agent), "telegram.bot.set", serde_json::json!({"bot_id": bot.id.to_string(), "username": bot.username, "mode": bot.mode, "access": bot.access})).await;
    tracing::info!(tenant = %tenant, bot = %bot.id, mode = %bot.mode, "telegram: tenant bot connected");
    Ok(bot)
}

#[utoipa::path(get, path = "/api/v1/telegram/bot", tag = "telegram", security(("tenant_key" = [])),
    responses((status = 200, description = "The bot.", body = TelegramBotView), (status = 404, description = "The tenant has no bot (`not_found`).", body = ErrorBody)))]
/// The tenant's own bot (never its token).
pub async fn get_bot(State(app): State<App>, caller: TenantCaller) -> Result<Json<TelegramBotView>, ApiError> {
    let bot = app.store.get_telegram_bot(&caller.tenant.id).await?.ok_or_else(no_bot)?;
    Ok(Json(view(&app, bot)))
}

#[utoipa::path(delete, path = "/api/v1/telegram/bot", tag = "telegram", security(("tenant_key" = [])),
    responses((status = 204, description = "Disconnected."), (status = 404, description = "The tenant has no bot (`not_found`).", body = ErrorBody)))]
/// Disconnects the tenant's own bot: its webhook is deleted at Telegram, its sealed token removed.
pub async fn delete_bot(State(app): State<App>, caller: TenantCaller) -> Result<StatusCode, ApiError> {
    if remove_bot(&app, &caller).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_bot())
    }
}

#[utoipa::path(post, path = "/api/v1/telegram/pairing-codes", tag = "telegram", security(("tenant_key" = [])), request_body = CreatePairingCode,
    responses((status = 201, description = "The code; it is in this answer only.", body = PairingCodeView),
        (status = 404, description = "No such agent of the caller's tenant (`not_found`).", body = ErrorBody)))]
/// A single-use code that makes the Telegram user who sends `/pair CODE` a member of this tenant,
/// talking to the agent named here. It expires after `telegram.pairing_code_ttl_secs`.
pub async fn create_pairing_code(State(app): State<App>, caller: TenantCaller, ApiJson(body): ApiJson<CreatePairingCode>) -> Result<(StatusCode, Json<PairingCodeView>), ApiError> {
    let agent = body_agent(&app, &caller, &body.agent_id).await?;
    let code = tg::new_pairing_code();
    let expires_at = clawpen_store::now_ms() / 1000 + app.telegram.config().pairing_code_ttl_secs as i64;
    app.store.create_pairing_code(&caller.tenant.id, &agent.id, &tg::code_sha256(&code), expires_at * 1000).await?;
    audit(&app, &caller, Some(&agent.id), "telegram.pairing-code", serde_json::json!({"expires_at": expires_at})).await;
    let deep_link = app.telegram.shared_identity().and_then(|b| b.username.as_ref()).map(|u| format!("https://t.me/{u}?start={code}"));
    Ok((StatusCode::CREATED, Json(PairingCodeView { code, expires_at, agent_id: agent.id.to_string(), deep_link })))
}

#[utoipa::path(get, path = "/api/v1/members", tag = "telegram", security(("tenant_key" = [])),
    responses((status = 200, description = "The members.", body = MemberList)))]
/// The tenant's members (its Telegram users among them).
pub async fn list_members(State(app): State<App>, caller: TenantCaller) -> Result<Json<MemberList>, ApiError> {
    let members = app.store.list_members(&caller.tenant.id).await?.into_iter().map(Into::into).collect();
    Ok(Json(MemberList { members }))
}

#[utoipa::path(delete, path = "/api/v1/members/{member_id}", tag = "telegram", security(("tenant_key" = [])),
    params(("member_id" = String, Path)),
    responses((status = 204, description = "Removed."), (status = 404, description = "No such member of the caller's tenant (`not_found`).", body = ErrorBody)))]
/// Removes a member of the tenant; a Telegram member reaches no agent from then on.
pub async fn remove_member(State(app): State<App>, caller: TenantCaller, MemberPath(id): MemberPath) -> Result<StatusCode, ApiError> {
    app.store.remove_member(&caller.tenant.id, &id).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::not_found("member"),
        other => other.into(),
    })?;
    audit(&app, &caller, None, "member.remove", serde_json::json!({"member_id": id.to_string()})).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The shape of an update as far as the server reads it (documentation only).
#[derive(Serialize, ToSchema)]
pub struct TelegramUpdate {
    pub update_id: i64,
    /// Other fields of Telegram's `Update` may be present; those the server does not read are
    /// ignored.
    #[schema(value_type = Option<Object>)]
    pub message: Option<serde_json::Value>,
}

#[utoipa::path(post, path = "/telegram/webhook/{bot}", tag = "telegram", request_body = TelegramUpdate,
    params(("bot" = String, Path, description = "`shared`, or the id (`tgb_…`) of a tenant's bot."),
        ("X-Telegram-Bot-Api-Secret-Token" = String, Header, description = "The secret set with setWebhook.")),
    responses((status = 200, description = "The update was taken (or seen before).", body = WebhookAck),
        (status = 400, description = "The body is not JSON (`invalid_json`).", body = ErrorBody),
        (status = 401, description = "The secret header is missing or wrong (`bad_webhook_secret`).", body = ErrorBody),
        (status = 404, description = "No such bot, or not in webhook mode (`not_found`).", body = ErrorBody),
        (status = 422, description = "The update has no integer `update_id` (`invalid_input`).", body = ErrorBody)))]
/// Where Telegram posts a bot's updates. The secret header is compared in constant time; the
/// update is taken once (by its id) and answered in the background, so this returns at once.
pub async fn webhook(State(app): State<App>, path: Result<Path<String>, PathRejection>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(Path(key)) = path else { return ApiError::not_found("telegram bot").into_response() };
    let header = headers.get(SECRET_HEADER).map(|v| v.as_bytes());
    let source = match app.telegram.webhook_source(&app, &key, header).await {
        Ok(s) => s,
        Err(WebhookRefusal::NoSuchBot) => return ApiError::not_found("telegram bot").into_response(),
        Err(WebhookRefusal::BadSecret) => {
            tracing::warn!(bot = %key, "telegram: webhook call with a missing or wrong secret refused");
            return ApiError::new(StatusCode::UNAUTHORIZED, "bad_webhook_secret", "missing or wrong X-Telegram-Bot-Api-Secret-Token").into_response();
        }
        Err(WebhookRefusal::Internal(e)) => return ApiError::internal(e).into_response(),
    };
    let update: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the update is not JSON: {e}")).into_response(),
    };
    if update.get("update_id").and_then(serde_json::Value::as_i64).is_none() {
        return ApiError::invalid("update_id: an update must carry an integer update_id").into_response();
    }
    match app.telegram.accept(&app, &source, update).await {
        Ok(()) => Json(WebhookAck { ok: true }).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}
