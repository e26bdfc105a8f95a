//! The HTTP edge: routes, OpenAPI document, health and readiness.

pub mod admin;
pub mod agents;
pub mod backups;
pub mod doc;
pub mod extract;
pub mod files;
pub mod integrations;
pub mod nodes;
pub mod provider_keys;
pub mod schedules;
pub mod telegram;
pub mod transfer;
pub mod usage;
pub mod views;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};

pub use doc::ApiDoc;
use crate::app::App;
use crate::error::ApiError;
use views::*;

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How much of a too-large body is read and thrown away so that the client, still sending, gets
/// the 413 instead of a reset connection. Past this the connection is closed.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;

pub fn router(app: App) -> Router {
    let document = std::sync::Arc::new(doc::document(&app.config));
    let api = Router::new()
        .route("/tenants", post(admin::create_tenant).get(admin::list_tenants))
        .route("/tenants/{tenant_id}", get(admin::get_tenant).delete(admin::delete_tenant))
        .route("/tenants/{tenant_id}/keys", post(admin::create_key).get(admin::list_keys))
        .route("/tenants/{tenant_id}/keys/{key_id}", axum::routing::delete(admin::revoke_key))
        .route("/tenants/{tenant_id}/members", post(admin::add_member).get(admin::list_members))
        .route("/tenants/{tenant_id}/members/{member_id}", axum::routing::delete(admin::remove_member))
        .route("/tenants/{tenant_id}/usage", get(usage::tenant_usage))
        .route("/tenants/{tenant_id}/plan", axum::routing::put(usage::set_plan))
        .route("/tenants/{tenant_id}/credits", post(usage::add_credits))
        .route("/usage", get(usage::usage))
        .route("/audit", get(admin::audit))
        .route("/nodes", get(nodes::list))
        .route("/nodes/{name}/drain", post(nodes::drain).delete(nodes::undrain))
        .route("/agents", post(agents::create_agent).get(agents::list_agents))
        .route("/agents/{agent_id}", get(agents::get_agent).delete(agents::delete_agent))
        .route("/agents/{agent_id}/start", post(agents::start_agent))
        .route("/agents/{agent_id}/stop", post(agents::stop_agent))
        .route("/agents/{agent_id}/hibernate", post(agents::hibernate))
        .route("/agents/{agent_id}/logs", get(agents::logs))
        .route("/agents/{agent_id}/events", get(agents::events))
        .route("/agents/{agent_id}/messages", post(agents::send_message))
        .route("/agents/{agent_id}/connect-url", post(agents::connect_url))
        .route("/agents/{agent_id}/files", get(files::get_file).put(files::put_file))
        .route("/agents/{agent_id}/memory", get(files::memory))
        .route("/agents/{agent_id}/memory/forget", post(files::forget))
        .route("/agents/{agent_id}/backups", post(backups::backup).get(backups::list))
        .route("/agents/{agent_id}/schedules", post(schedules::create).get(schedules::list_agent))
        .route("/schedules", get(schedules::list))
        .route("/provider-keys", get(provider_keys::list))
        .route("/provider-keys/{model_provider}", axum::routing::put(provider_keys::save).delete(provider_keys::remove))
        .route("/schedules/{schedule_id}", get(schedules::get).patch(schedules::change).delete(schedules::delete))
        .route("/schedules/{schedule_id}/runs", get(schedules::runs))
        .route("/backups", get(backups::list_all))
        .route("/backups/agents/{agent_id}", post(backups::backup_any))
        .route("/backups/store", post(backups::backup_store))
        .route("/export", get(transfer::export_own))
        .route("/account", axum::routing::delete(admin::purge_own))
        .route("/tenants/{tenant_id}/export", get(transfer::export_tenant))
        .route("/agents/{agent_id}/runs", post(admin::open_run))
        .route("/agents/{agent_id}/runs/{run_id}", axum::routing::delete(admin::close_run))
        .route("/telegram/bot", axum::routing::put(telegram::put_bot).get(telegram::get_bot).delete(telegram::delete_bot))
        .route("/telegram/pairing-codes", post(telegram::create_pairing_code))
        .route("/integrations", get(integrations::list))
        .route("/integrations/tools", axum::routing::put(integrations::enable))
        .route("/integrations/callback", get(integrations::callback))
        .route("/integrations/{provider}/connect", post(integrations::connect))
        .route("/integrations/connections/{connection_id}", axum::routing::delete(integrations::disconnect))
        .route("/proposals", get(integrations::proposals))
        .route("/proposals/{number}/approve", post(integrations::approve))
        .route("/proposals/{number}/reject", post(integrations::reject))
        .route("/tool-calls", get(integrations::tool_calls))
        .route("/members", get(telegram::list_members))
        .route("/members/{member_id}", axum::routing::delete(telegram::remove_member));
    // Archives are larger than any other body: read by their handler, bounded by the plan.
    let uploads = Router::new()
        .route("/api/v1/import", post(transfer::import_own))
        .route("/api/v1/tenants/{tenant_id}/import", post(transfer::import_tenant))
        .layer(DefaultBodyLimit::disable())
        .layer(tower_http::trace::TraceLayer::new_for_http());
    Router::new()
        .nest("/api/v1", api)
        .route("/api/openapi.json", get(move || std::future::ready(Json(document.clone()))))
        .route("/gateway/connect", get(crate::gateway::connect))
        .route("/", get(|| async { axum::response::Redirect::to("/console") }))
        .nest("/console", crate::console::router())
        .route("/telegram/webhook/{bot}", post(telegram::webhook))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(whole_body))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .merge(uploads)
        .with_state(app)
}

/// Reads the request body whole (at most [`MAX_BODY_BYTES`]) before any handler runs. A larger
/// body is answered 413 only after it has been read to its end (up to [`DRAIN_BYTES`]): answering
/// while the client is still sending makes it see a reset instead of the JSON error.
async fn whole_body(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use futures_util::StreamExt;
    let (parts, body) = req.into_parts();
    let mut body = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return ApiError::new(StatusCode::BAD_REQUEST, "bad_body", "the request body could not be read").into_response();
        };
        seen += chunk.len();
        if seen <= MAX_BODY_BYTES {
            buf.extend_from_slice(&chunk);
        } else if seen > DRAIN_BYTES {
            break;
        }
    }
    if seen > MAX_BODY_BYTES {
        let mut res = ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the request body is larger than {MAX_BODY_BYTES} bytes"))
            .into_response();
        if seen > DRAIN_BYTES {
            res.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        return res;
    }
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(buf.freeze()))).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route; the API is described at /api/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method; see /api/openapi.json")
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Up.", body = Status)))]
pub async fn healthz() -> Json<Status> {
    Json(Status { ok: true, problems: vec![] })
}

/// The fleet's counters in the Prometheus text format: agent starts by kind (`warm`: claimed
/// from the warm pool, `cold`: a container created), the pool's ready sandboxes, committed
/// memory. Aggregates only, no tenant data; like the probes it takes no token.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "The counters.", content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn metrics(State(app): State<App>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::render(&app))
}

/// The store and the container runtime answer, and the start-up reconciliation is done.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, description = "Ready.", body = Status), (status = 503, description = "Not ready; `problems` says why.", body = Status)))]
pub async fn readyz(State(app): State<App>) -> (StatusCode, Json<Status>) {
    let mut problems = Vec::new();
    if let Err(e) = app.store.ping().await {
        problems.push(format!("store: {e}"));
    }
    if let Err(e) = app.runtime.info().await {
        problems.push(format!("runtime: {e}"));
    }
    if !app.is_reconciled() {
        problems.push("reconciliation: the start-up reconciliation is still running".to_owned());
    }
    let status = if problems.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Status { ok: problems.is_empty(), problems }))
}
