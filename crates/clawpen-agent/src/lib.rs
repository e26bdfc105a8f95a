#![doc = include_str!("../README.md")]
//!
//! # Layout
//! - [`protocol`]: the request and response bodies on the agent socket.
//! - [`server`]: the agent's HTTP server (runs in the sandbox); [`config`]: its [`server::AgentConfig`].
//! - [`assistant`]: one run of the assistant loop (prompt → model → tools → model …).
//! - [`prompt`]: the bounded prompt built from the workspace; [`session`]: the session log.
//! - [`tools`]: the built-in tools (`remember`, `write_note`).
//! - [`workspace`]: file access confined to the workspace.
//! - [`meter_client`]: chat completions through the meter on `control.sock`; [`sse`]: its
//!   event-stream decoder; [`chat`]: the wire types.
//! - [`client`]: HTTP over a Unix socket, used by the control plane; [`uds`]: the connection both
//!   clients use.

pub mod assistant;
pub mod broker_client;
pub mod chat;
pub mod client;
pub mod config;
pub mod gateway;
pub mod meter_client;
pub mod prompt;
pub mod protocol;
pub mod server;
pub mod session;
pub mod sse;
pub mod tools;
pub mod uds;
pub mod workspace;
