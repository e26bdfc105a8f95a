//! `GET /metrics`: the fleet's counters in the Prometheus text format. Aggregates only: no
//! tenant or agent id, nothing a tenant could learn about another from it.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::app::App;

/// Counters since the server started. Owned by [`App`].
#[derive(Debug, Default)]
pub struct Metrics {
    /// Agent starts that claimed a warm-pool sandbox.
    pub starts_warm: AtomicU64,
    /// Agent starts that created a container.
    pub starts_cold: AtomicU64,
    /// Claims that failed and were undone (the start then went on cold).
    pub claim_failures: AtomicU64,
}

/// The metrics as Prometheus text (format version 0.0.4).
pub fn render(app: &App) -> String {
    let m = &app.metrics;
    let (committed, budget) = app.committed_mib();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    metric(
        "clawpen_agent_starts_total",
        "counter",
        "Agent starts that needed a new sandbox: warm claimed one from the pool, cold created a container.",
        &[(r#"{kind="warm"}"#, m.starts_warm.load(Ordering::Relaxed)), (r#"{kind="cold"}"#, m.starts_cold.load(Ordering::Relaxed))],
    );
    metric("clawpen_warm_pool_claim_failures_total", "counter", "Warm claims that failed and were undone.", &[("", m.claim_failures.load(Ordering::Relaxed))]);
    metric("clawpen_warm_pool_ready", "gauge", "Warm-pool sandboxes that answered their health check and wait for an agent.", &[("", app.pool.ready() as u64)]);
    metric("clawpen_warm_pool_size", "gauge", "Warm-pool sandboxes the server keeps ([fleet] warm_pool).", &[("", app.config.fleet.warm_pool as u64)]);
    metric("clawpen_node_memory_committed_mib", "gauge", "Plan memory committed to sandboxes on this node, pool included.", &[("", committed)]);
    metric("clawpen_node_memory_budget_mib", "gauge", "The node's memory budget for sandboxes.", &[("", budget)]);
    out
}
