#![doc = include_str!("../README.md")]
//!
//! # Layout
//! - [`config`]: upstreams, models and their prices; secrets that never print.
//! - [`request`]: the allow-list per endpoint, the forwarded body, a call's token bound.
//! - [`price`]: estimates and costs, integer micro-credits.
//! - [`usage`]: reading usage from each provider's answers (its own fields), streamed or not.
//! - [`runs`]: runs opened by the server, their calls counted.
//! - [`refusals`]: refused calls counted in memory, written as aggregates.
//! - [`meter`]: [`Meter`], reserve → forward → settle, the sweeper, caps and pauses.
//! - [`budget`]: per-tenant leases carved in memory.
//! - [`byok`]: tenants' own provider keys ([`byok::TenantKeys`], the server's), charged a fee per call.
//! - [`client`]: the HTTP/1.1 client to providers; the calling task drives its connection.
//! - [`router`]: the HTTP routes served on an agent's `control.sock`.
//! - [`tls`]: the one TLS crypto provider (aws-lc-rs) for outbound HTTPS.

pub mod budget;
pub mod byok;
pub mod client;
pub mod config;
pub mod meter;
pub mod price;
pub mod refusals;
pub mod request;
pub mod router;
pub mod runs;
pub mod tls;
pub mod usage;

pub use config::MeterConfig;
pub use meter::{Meter, MeterCaller};
