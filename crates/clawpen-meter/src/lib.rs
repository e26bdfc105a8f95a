#![doc = include_str!("../README.md")]
//!
//! # Layout
//! - [`config`]: upstreams, models and their prices; secrets that never print.
//! - [`price`]: estimates and costs, integer micro-credits.
//! - [`usage`]: reading usage from OpenAI and Anthropic answers, streamed or not.
//! - [`meter`]: [`Meter`], reserve → forward → settle, the sweeper, caps and pauses.
//! - [`client`]: the HTTP/1.1 client to providers; the calling task drives its connection.
//! - [`router`]: the HTTP routes served on an agent's `control.sock`.
//! - [`tls`]: the one TLS crypto provider (aws-lc-rs) for outbound HTTPS.

pub mod budget;
pub mod client;
pub mod config;
pub mod meter;
pub mod price;
pub mod router;
pub mod tls;
pub mod usage;

pub use config::MeterConfig;
pub use meter::{Meter, MeterCaller};
