//! Integration tests, one binary. Every test drives the real `clawpen` executable against the real
//! Docker Engine through [`harness::TestServer`]; nothing is skipped when Docker is missing.
//!
//! # Layout
//! - `harness`: starting servers on temp data dirs (each with a stand-in model upstream), HTTP
//!   helpers, cleanup by label.
//! - `byok`: tenants' own provider keys: only their calls, never seen, stopped when revoked.
//! - `authz`: the authorization matrix (who may call what, and 404 for foreign ids).
//! - `bad_input`: malformed, oversized and hostile input is refused and creates nothing.
//! - `lifecycle`: create, start, message, stop, delete; OpenAPI; doctor.
//! - `isolation`: attacks from inside a tenant's sandbox on other tenants' files, the network,
//!   pids, memory, privileges and secrets.
//! - `hostile`: attacks from inside a sandbox on the server's side of it: its sockets, what the
//!   server reads from it, its storage and its connections.
//! - `kill`: SIGKILL of the server mid-operation, then restart and agreement.
//! - `console`: the web console in a real Chromium, and attacks on it over plain HTTP.
//! - `chat`: messages to running agents answered by the model through the meter; tools, guards, caps.
//! - `gateway`: a WebSocket client through the gateway to a woken agent (OpenClaw protocol).
//! - `fleet`: hibernation tiers woken by messages, health-check restarts, the crash-loop guard.
//! - `nodes`: a second Docker Engine: placement, a lost node, a drain.
//! - `pool`: the warm pool: warm claims, per-agent uids, cold starts for other plans or without
//!   a pool, a claimed agent stopped and started again (kills during claims are in `kill`).
//! - `meter`: model calls through the meter against a stand-in upstream; caps, aborts, crashes.
//! - `openapi`: schemathesis with a tenant key and with the admin token: every answer is one the
//!   OpenAPI document declares, and none is a 5xx.
//! - `schedules`: scheduled runs as ordinary runs, kills around due runs, caps, isolation.
//! - `telegram`: tenants' own bots (webhook, polling) and the shared bot with pairing, against the
//!   stand-in's Bot API; cross-tenant isolation and secrets.

mod harness;

mod authz;
mod backup;
mod bad_input;
mod byok;
mod chat;
mod console;
mod fleet;
mod gateway;
mod hostile;
mod integrations;
mod isolation;
mod kill;
mod lifecycle;
mod meter;
mod nodes;
mod openapi;
mod pool;
mod schedules;
mod telegram;
mod transfer;
mod walls;
