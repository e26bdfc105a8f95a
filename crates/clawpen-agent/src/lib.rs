#![doc = include_str!("../README.md")]
//!
//! # Layout
//! - [`protocol`]: the request and response bodies on the agent socket.
//! - [`server`]: the agent's HTTP server (runs in the sandbox).
//! - [`client`]: HTTP over a Unix socket, used by the control plane.

pub mod client;
pub mod protocol;
pub mod server;
