//! Admin routes over the fleet's nodes: list them, drain one (its agents move elsewhere and no new
//! sandbox goes there), end a drain.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::extract::{Admin, NodePath};
use crate::app::App;
use crate::error::{ApiError, ErrorBody};
use crate::nodes::NodeView;

#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DrainReport {
    pub node: String,
    /// Agents moved to other nodes (or left without a sandbox when asleep or stopped).
    pub moved: Vec<String>,
    /// Agents still placed on the node (a move failed; the error is in the server log and the
    /// agent's events). Draining again retries them.
    pub remaining: Vec<String>,
}

fn known(app: &App, name: &str) -> Result<(), ApiError> {
    app.nodes.node(name).map(|_| ()).ok_or_else(|| ApiError::not_found("node"))
}

/// The fleet's Docker Engines, with their state and committed memory.
#[utoipa::path(get, path = "/api/v1/nodes", tag = "admin", security(("admin" = [])), operation_id = "list_nodes",
    responses((status = 200, description = "The nodes.", body = NodeList)))]
pub async fn list(State(app): State<App>, _: Admin) -> Result<Json<NodeList>, ApiError> {
    Ok(Json(NodeList { nodes: app.node_views().await? }))
}

/// Drains a node: no new sandbox goes there, and its agents move to other nodes.
#[utoipa::path(post, path = "/api/v1/nodes/{name}/drain", tag = "admin", security(("admin" = [])), operation_id = "drain_node", params(("name" = String, Path)),
    responses((status = 200, description = "What moved and what is left.", body = DrainReport), (status = 404, description = "No such node (`not_found`).", body = ErrorBody)))]
pub async fn drain(State(app): State<App>, _: Admin, NodePath(name): NodePath) -> Result<Json<DrainReport>, ApiError> {
    known(&app, &name)?;
    app.store.set_drain(&name, true).await?;
    let moved = app.move_agents_off(&name, &format!("node {name} is drained")).await;
    let remaining = app.store.all_agents().await?.into_iter().filter(|a| a.node.as_deref() == Some(name.as_str())).map(|a| a.id.to_string()).collect();
    Ok(Json(DrainReport { node: name, moved: moved.into_iter().map(|a| a.to_string()).collect(), remaining }))
}

/// Ends a drain: the node takes new sandboxes again.
#[utoipa::path(delete, path = "/api/v1/nodes/{name}/drain", tag = "admin", security(("admin" = [])), operation_id = "undrain_node", params(("name" = String, Path)),
    responses((status = 200, description = "The nodes.", body = NodeList), (status = 404, description = "No such node (`not_found`).", body = ErrorBody)))]
pub async fn undrain(State(app): State<App>, _: Admin, NodePath(name): NodePath) -> Result<Json<NodeList>, ApiError> {
    known(&app, &name)?;
    app.store.set_drain(&name, false).await?;
    Ok(Json(NodeList { nodes: app.node_views().await? }))
}
