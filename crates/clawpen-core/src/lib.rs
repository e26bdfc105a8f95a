#![doc = include_str!("../README.md")]
//!
//! # Layout
//! - [`ids`]: typed, prefixed ids and their parsers.
//! - [`lifecycle`]: the pure state machine of hibernation tiers, restarts and the crash-loop guard.
//! - [`names`]: validation of user-chosen names.
//! - [`plan`]: plans and their sandbox limits.
//! - [`schedule`]: when an agent's scheduled runs fall due (cron in a time zone, or an interval).
//! - [`spec`]: [`spec::SandboxSpec`], built by [`spec::SandboxSpec::for_agent`] and nowhere else.

pub mod ids;
pub mod lifecycle;
pub mod names;
pub mod plan;
pub mod schedule;
pub mod spec;

/// Labels put on every container the platform makes, so a restarted server can adopt or sweep.
pub mod labels {
    /// The installation that made the object (one per data dir). A server never touches another
    /// installation's containers, which also keeps parallel test runs apart.
    pub const INSTANCE: &str = "clawpen.instance";
    pub const TENANT: &str = "clawpen.tenant";
    pub const AGENT: &str = "clawpen.agent";
    pub const SPEC_HASH: &str = "clawpen.spec-hash";
    /// What the container is for: `agent` for a tenant's agent, `doctor` for a throwaway check.
    pub const ROLE: &str = "clawpen.role";
}
