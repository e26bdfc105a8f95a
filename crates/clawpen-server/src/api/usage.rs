//! Usage and credits: a tenant's own spending (`GET /api/v1/usage`), and the admin routes that set
//! a tenant's plan and add credits.

use axum::extract::State;
use axum::Json;
use clawpen_core::ids::TenantId;
use clawpen_store::ledger::{Account, AgentSpend, CallRecord};
use clawpen_store::{StoreError, Tenant};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{Admin, ApiJson, TenantCaller, TenantPath};
use super::views::TenantView;
use crate::app::App;
use crate::error::{ApiError, ErrorBody};

#[derive(Debug, Serialize, ToSchema)]
pub struct PeriodSpend {
    /// `YYYY-MM-DD` or `YYYY-MM` (UTC).
    pub period: String,
    /// Micro-credits settled in the period.
    pub spent: i64,
    /// The plan's cap for the period, in micro-credits (monthly: hard; daily: soft).
    pub cap: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentSpendView {
    pub agent_id: String,
    pub calls: i64,
    /// Micro-credits this month.
    pub cost: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CallView {
    pub id: String,
    pub agent_id: String,
    pub at: i64,
    pub model: String,
    pub provider: String,
    pub stream: bool,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    /// Micro-credits charged.
    pub cost: i64,
    /// `ok`, `client_aborted`, `upstream_error:<status>`, `refused:<code>`, `expired`, …
    pub outcome: String,
}

impl From<CallRecord> for CallView {
    fn from(c: CallRecord) -> Self {
        CallView {
            id: c.id,
            agent_id: c.agent_id,
            at: c.at,
            model: c.model,
            provider: c.provider,
            stream: c.stream,
            input_tokens: c.input_tokens,
            output_tokens: c.output_tokens,
            cache_read_tokens: c.cache_read,
            cache_write_tokens: c.cache_write,
            cost: c.cost,
            outcome: c.outcome,
        }
    }
}

/// A tenant's money: balance, spending against its caps, per agent, and its latest calls.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    pub plan: String,
    /// Prepaid micro-credits left (settled calls already taken off).
    pub balance: i64,
    /// Micro-credits held by calls in flight.
    pub reserved: i64,
    pub today: PeriodSpend,
    pub month: PeriodSpend,
    /// When paused: until when (Unix ms) and why. The tenant's agents refuse model calls until then.
    pub paused_until: Option<i64>,
    pub paused_reason: Option<String>,
    pub agents: Vec<AgentSpendView>,
    pub recent_calls: Vec<CallView>,
}

/// The account of a tenant, opened with the plan's initial credits when it has none yet.
pub async fn account_of(app: &App, tenant: &Tenant) -> Result<Account, ApiError> {
    let plan = app.config.plan(&tenant.plan).cloned().unwrap_or_default();
    let (period, _, _) = clawpen_meter::meter::period_at(clawpen_store::now_ms());
    app.store.ensure_account(&tenant.id, plan.initial_credits, &period).await?;
    Ok(app.store.account(&tenant.id).await?)
}

/// The pause in force now, if any.
pub fn active_pause(a: &Account) -> (Option<i64>, Option<String>) {
    match a.paused_until {
        Some(u) if u > clawpen_store::now_ms() => (Some(u), a.paused_reason.clone()),
        _ => (None, None),
    }
}

async fn usage_of(app: &App, tenant: &Tenant) -> Result<UsageView, ApiError> {
    let a = account_of(app, tenant).await?;
    let plan = app.config.plan(&tenant.plan).cloned().unwrap_or_default();
    let (period, _, _) = clawpen_meter::meter::period_at(clawpen_store::now_ms());
    let month_start = month_start_ms(&period.month);
    let agents = app.store.spend_by_agent(&tenant.id, month_start).await?;
    let recent = app.store.recent_calls(&tenant.id, 50).await?;
    let (paused_until, paused_reason) = active_pause(&a);
    Ok(UsageView {
        plan: tenant.plan.clone(),
        balance: a.balance,
        reserved: a.reserved,
        today: PeriodSpend { spent: if a.day == period.day { a.day_spent } else { 0 }, period: period.day, cap: plan.daily_cap },
        month: PeriodSpend { spent: if a.month == period.month { a.month_spent } else { 0 }, period: period.month, cap: plan.monthly_cap },
        paused_until,
        paused_reason,
        agents: agents.into_iter().map(|s: AgentSpend| AgentSpendView { agent_id: s.agent_id, calls: s.calls, cost: s.cost }).collect(),
        recent_calls: recent.into_iter().map(Into::into).collect(),
    })
}

fn month_start_ms(month: &str) -> i64 {
    let (y, m) = month.split_once('-').unwrap_or(("1970", "01"));
    let (y, m): (i32, u8) = (y.parse().unwrap_or(1970), m.parse().unwrap_or(1));
    time::Month::try_from(m)
        .ok()
        .and_then(|m| time::Date::from_calendar_date(y, m, 1).ok())
        .map(|d| (d.midnight().assume_utc().unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or(0)
}

/// The caller's tenant's balance, spending against its caps, per agent, and latest model calls.
#[utoipa::path(get, path = "/api/v1/usage", tag = "usage", security(("tenant_key" = [])),
    responses((status = 200, description = "The usage.", body = UsageView)))]
pub async fn usage(State(app): State<App>, caller: TenantCaller) -> Result<Json<UsageView>, ApiError> {
    Ok(Json(usage_of(&app, &caller.tenant).await?))
}

async fn tenant_or_404(app: &App, id: &TenantId) -> Result<Tenant, ApiError> {
    app.store.get_tenant(id).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::not_found("tenant"),
        other => other.into(),
    })
}

/// A tenant's usage, as the tenant sees it at `GET /api/v1/usage`.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}/usage", tag = "admin", security(("admin" = [])),
    params(("tenant_id" = String, Path)),
    responses((status = 200, description = "The usage.", body = UsageView), (status = 404, description = "No such tenant (`not_found`).", body = ErrorBody)))]
pub async fn tenant_usage(State(app): State<App>, _: Admin, TenantPath(id): TenantPath) -> Result<Json<UsageView>, ApiError> {
    let t = tenant_or_404(&app, &id).await?;
    Ok(Json(usage_of(&app, &t).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPlan {
    /// A plan from the server's config (the served document lists them).
    pub plan: String,
}

/// Moves a tenant to another plan; its caps and limits change at once.
#[utoipa::path(put, path = "/api/v1/tenants/{tenant_id}/plan", tag = "admin", security(("admin" = [])),
    params(("tenant_id" = String, Path)), request_body = SetPlan,
    responses((status = 200, description = "The tenant on its new plan.", body = TenantView), (status = 404, description = "No such tenant (`not_found`).", body = ErrorBody),
        (status = 422, description = "The body is not of this shape, or the plan is unknown (`invalid_input`).", body = ErrorBody)))]
pub async fn set_plan(State(app): State<App>, _: Admin, TenantPath(id): TenantPath, ApiJson(body): ApiJson<SetPlan>) -> Result<Json<TenantView>, ApiError> {
    Ok(Json(change_plan(&app, &id, &body.plan, "requested").await?.into()))
}

/// Moves a tenant to `plan` (the operator's doing, for `reason`): the API's and the console's.
pub async fn change_plan(app: &App, id: &TenantId, plan: &str, reason: &str) -> Result<Tenant, ApiError> {
    tenant_or_404(app, id).await?;
    if app.config.plan(plan).is_none() {
        let known: Vec<_> = app.config.plans.keys().cloned().collect();
        return Err(ApiError::invalid(format!("plan: unknown plan; known plans: {}", known.join(", "))));
    }
    app.store.set_plan(id, plan).await?;
    app.meter.plan_changed(id);
    let detail = serde_json::json!({"plan": plan});
    let _ = app.store.audit(clawpen_store::NewAudit { tenant: Some(id), agent: None, actor: "admin", action: "tenant.plan", reason, detail: Some(&detail) }).await;
    tenant_or_404(app, id).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddCredits {
    #[schema(schema_with = super::doc::amount_schema)]
    #[serde(deserialize_with = "integer")]
    pub amount: i64,
    /// Why, for the record: at most 200 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 200, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub reason: Option<String>,
}

/// An integer as JSON Schema counts one: `5` or `5.0` (a number without a fraction), which
/// serde's `i64` alone refuses.
pub(crate) fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    // Below 2^53 a float holds every integer exactly.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    n.as_i64()
        .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < EXACT).map(|f| f as i64))
        .ok_or_else(|| serde::de::Error::custom(format!("invalid value: {n}, expected an integer")))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    pub balance: i64,
    pub reserved: i64,
    pub paused_until: Option<i64>,
    pub paused_reason: Option<String>,
}

/// Most micro-credits one grant may move (a billion credits).
pub const MAX_GRANT: i64 = 1_000_000_000_000_000;

/// Adds credits to a tenant's balance (or takes them away) and ends a pause for credits.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant_id}/credits", tag = "admin", security(("admin" = [])),
    params(("tenant_id" = String, Path)), request_body = AddCredits,
    responses((status = 200, description = "The tenant's account after the grant.", body = AccountView), (status = 404, description = "No such tenant (`not_found`).", body = ErrorBody),
        (status = 422, description = "The body is not of this shape, or the balance would leave the 64-bit range (`invalid_input`).", body = ErrorBody)))]
pub async fn add_credits(State(app): State<App>, _: Admin, TenantPath(id): TenantPath, ApiJson(body): ApiJson<AddCredits>) -> Result<Json<AccountView>, ApiError> {
    let reason = body.reason.unwrap_or_else(|| "added by the operator".to_owned());
    let a = grant(&app, &id, body.amount, &reason).await?;
    let (paused_until, paused_reason) = active_pause(&a);
    Ok(Json(AccountView { balance: a.balance, reserved: a.reserved, paused_until, paused_reason }))
}

/// Adds `amount` micro-credits to a tenant's balance (negative: takes them away), for `reason`:
/// the API's and the console's grant, with the same bounds.
pub async fn grant(app: &App, id: &TenantId, amount: i64, reason: &str) -> Result<Account, ApiError> {
    let t = tenant_or_404(app, id).await?;
    if amount == 0 || amount.abs() > MAX_GRANT {
        return Err(ApiError::invalid(format!("amount: must be non-zero and at most {MAX_GRANT} micro-credits either way")));
    }
    if reason.chars().count() > 200 || reason.chars().any(char::is_control) {
        return Err(ApiError::invalid("reason: at most 200 characters, no control characters"));
    }
    // SQLite turns an integer sum that overflows into a float, which no longer reads back.
    if account_of(app, &t).await?.balance.checked_add(amount).is_none() {
        return Err(ApiError::invalid("amount: the balance would leave the 64-bit range"));
    }
    let (period, _, _) = clawpen_meter::meter::period_at(clawpen_store::now_ms());
    let a = app.store.add_credits(id, amount, reason, &period).await?;
    let detail = serde_json::json!({"amount": amount});
    let _ = app.store.audit(clawpen_store::NewAudit { tenant: Some(id), agent: None, actor: "admin", action: "tenant.credits", reason, detail: Some(&detail) }).await;
    Ok(a)
}


#[cfg(test)]
mod tests {
    use super::AddCredits;

    #[test]
    fn an_amount_is_an_integer_as_json_schema_counts_one() {
        let amount = |body: &str| serde_json::from_str::<AddCredits>(body).map(|b| b.amount).map_err(|e| e.to_string());
        assert_eq!(amount(r#"{"amount": 5}"#), Ok(5));
        assert_eq!(amount(r#"{"amount": -1043.0}"#), Ok(-1043));
        assert_eq!(amount(r#"{"amount": 1e15}"#), Ok(1_000_000_000_000_000));
        for bad in [r#"{"amount": 1.5}"#, r#"{"amount": 1e300}"#, r#"{"amount": "5"}"#, r#"{"amount": null}"#] {
            assert!(amount(bad).is_err(), "{bad}");
        }
    }
}
