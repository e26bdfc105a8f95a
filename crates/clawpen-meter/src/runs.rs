//! Runs: one piece of work of an agent (a user's message), **opened by the server**, never chosen
//! by the agent. A run is admitted against the plan's runs per hour when it opens; a model call is
//! accepted only inside an open, unexpired run of the calling agent, and a run admits at most the
//! plan's calls per run.
//!
//! All of it is in memory per agent: an agent's runs of the last hour are read from the store the
//! first time the agent is seen in this process, and new runs are written by the flusher with its
//! next batch. After a restart a run recorded in the store is open again until its time runs out
//! (its calls counted from 0: a crash can give a run its calls twice, never refuse one wrongly).

use std::collections::HashMap;
use std::sync::Mutex;

use clawpen_core::ids::AgentId;
use rand::RngCore;

/// An hour, in milliseconds.
const HOUR_MS: i64 = 3_600_000;

/// Why a model call is not accepted in the run it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallRefusal {
    /// No open run of this agent has that id (unknown, closed, expired, another agent's).
    NoRun,
    /// The run made all the calls the plan allows.
    Exhausted,
}

/// A run still open for calls.
#[derive(Debug, Clone, Copy)]
struct OpenRun {
    /// When it closes by itself (Unix ms).
    until: i64,
    /// Calls admitted so far.
    calls: u32,
    /// Integration tool calls admitted so far (the broker's, see [`Runs::admit_tool_call`]).
    tool_calls: u32,
}

/// One agent's runs.
#[derive(Default)]
struct AgentRuns {
    /// Runs started in the last hour (id → start), for the runs per hour.
    started: HashMap<String, i64>,
    /// Runs open now.
    open: HashMap<String, OpenRun>,
    /// Started runs not yet in the store.
    unwritten: Vec<(String, i64)>,
    /// When runs older than an hour were last dropped.
    pruned_at: i64,
}

impl AgentRuns {
    /// Drops runs older than an hour and expired open runs (when they would count, and once a
    /// minute anyway, so that a plan with a large hourly cap does not grow the maps without end).
    fn prune(&mut self, now: i64, force: bool) {
        if force || now >= self.pruned_at + 60_000 {
            self.started.retain(|_, at| *at > now - HOUR_MS);
            self.open.retain(|_, r| r.until > now);
            self.pruned_at = now;
        }
    }
}

/// Every agent's runs, in memory.
#[derive(Default)]
pub struct Runs {
    map: Mutex<HashMap<AgentId, AgentRuns>>,
}

/// A fresh run id: `run_`, the time in milliseconds (12 hex digits, so ids sort by start), then 64
/// random bits.
pub fn new_run_id(now_ms: i64) -> String {
    let mut b = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut b);
    format!("run_{:012x}{}", now_ms.max(0), hex::encode(b))
}

/// Whether `id` has the shape of an id [`new_run_id`] makes.
fn is_server_run_id(id: &str) -> bool {
    id.strip_prefix("run_").is_some_and(|h| h.len() == 28 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Runs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AgentId, AgentRuns>> {
        self.map.lock().expect("runs")
    }

    /// Whether `agent`'s runs were read from the store in this process.
    pub fn known(&self, agent: &AgentId) -> bool {
        self.lock().contains_key(agent)
    }

    /// Takes `agent`'s runs of the last hour as the store has them (run id, start); those started
    /// less than `ttl_ms` ago by the server are open again. A second load changes nothing.
    pub fn load(&self, agent: &AgentId, seen: Vec<(String, i64)>, now: i64, ttl_ms: i64) {
        self.lock().entry(agent.clone()).or_insert_with(|| {
            let open = seen.iter().filter(|(id, at)| is_server_run_id(id) && at + ttl_ms > now).map(|(id, at)| (id.clone(), OpenRun { until: at + ttl_ms, calls: 0, tool_calls: 0 })).collect();
            AgentRuns { started: seen.into_iter().collect(), open, unwritten: Vec::new(), pruned_at: now }
        });
    }

    /// Opens a run for `agent` if its plan allows another this hour (`None` when not). The agent's
    /// runs must be [`Runs::load`]ed.
    pub fn open(&self, agent: &AgentId, runs_per_hour: u32, now: i64, ttl_ms: i64) -> Option<String> {
        let mut all = self.lock();
        let a = all.entry(agent.clone()).or_default();
        let max = runs_per_hour as usize;
        a.prune(now, a.started.len() >= max);
        if a.started.len() >= max {
            return None;
        }
        let id = new_run_id(now);
        a.started.insert(id.clone(), now);
        a.open.insert(id.clone(), OpenRun { until: now + ttl_ms, calls: 0, tool_calls: 0 });
        a.unwritten.push((id.clone(), now));
        Some(id)
    }

    /// Closes a run: no more calls in it. (It still counts for the runs per hour.)
    pub fn close(&self, agent: &AgentId, run: &str) {
        if let Some(a) = self.lock().get_mut(agent) {
            a.open.remove(run);
        }
    }

    /// Admits one model call in `agent`'s open run `run`, counting it.
    pub fn admit_call(&self, agent: &AgentId, run: &str, max_calls: u32, now: i64) -> Result<(), CallRefusal> {
        let mut all = self.lock();
        let Some(a) = all.get_mut(agent) else { return Err(CallRefusal::NoRun) };
        let Some(r) = a.open.get_mut(run) else { return Err(CallRefusal::NoRun) };
        if r.until <= now {
            a.open.remove(run);
            return Err(CallRefusal::NoRun);
        }
        if r.calls >= max_calls {
            return Err(CallRefusal::Exhausted);
        }
        r.calls += 1;
        Ok(())
    }

    /// Admits one integration tool call in `agent`'s open run `run`, counting it: the broker
    /// holds a run to the same number of tool calls as the agent's own guard, whatever the agent
    /// does.
    pub fn admit_tool_call(&self, agent: &AgentId, run: &str, max_calls: u32, now: i64) -> Result<(), CallRefusal> {
        let mut all = self.lock();
        let Some(r) = all.get_mut(agent).and_then(|a| a.open.get_mut(run)) else { return Err(CallRefusal::NoRun) };
        if r.until <= now {
            return Err(CallRefusal::NoRun);
        }
        if r.tool_calls >= max_calls {
            return Err(CallRefusal::Exhausted);
        }
        r.tool_calls += 1;
        Ok(())
    }

    /// Gives back a call admitted by [`Runs::admit_call`] that was then refused (no credit, the
    /// cap): only calls that went upstream count.
    pub fn release_call(&self, agent: &AgentId, run: &str) {
        if let Some(r) = self.lock().get_mut(agent).and_then(|a| a.open.get_mut(run)) {
            r.calls = r.calls.saturating_sub(1);
        }
    }

    /// The runs started since the last call, to write to the store.
    pub fn take_unwritten(&self) -> Vec<(AgentId, String, i64)> {
        let mut all = self.lock();
        all.iter_mut().flat_map(|(agent, r)| std::mem::take(&mut r.unwritten).into_iter().map(move |(run, at)| (agent.clone(), run, at))).collect()
    }

    /// Puts back runs that could not be written, for the next try.
    pub fn put_back(&self, rows: Vec<(AgentId, String, i64)>) {
        let mut all = self.lock();
        for (agent, run, at) in rows {
            if let Some(r) = all.get_mut(&agent) {
                r.unwritten.push((run, at));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_opened_counted_and_closed() {
        let runs = Runs::default();
        let (a, b) = (AgentId::new(), AgentId::new());
        runs.load(&a, Vec::new(), 0, 1_000);
        let r1 = runs.open(&a, 2, 0, 1_000).unwrap();
        assert!(is_server_run_id(&r1), "{r1}");
        let r2 = runs.open(&a, 2, 10, 1_000).unwrap();
        assert_ne!(r1, r2);
        assert_eq!(runs.open(&a, 2, 20, 1_000), None, "2 runs an hour");
        assert_eq!(runs.admit_call(&a, &r1, 2, 30), Ok(()));
        assert_eq!(runs.admit_call(&a, &r1, 2, 30), Ok(()));
        assert_eq!(runs.admit_call(&a, &r1, 2, 30), Err(CallRefusal::Exhausted));
        runs.release_call(&a, &r1);
        assert_eq!(runs.admit_call(&a, &r1, 2, 30), Ok(()), "a refused call gives its slot back");
        assert_eq!(runs.admit_call(&b, &r1, 2, 30), Err(CallRefusal::NoRun), "another agent's run");
        assert_eq!(runs.admit_call(&a, "run-made-up", 2, 30), Err(CallRefusal::NoRun));
        assert_eq!(runs.admit_call(&a, &r2, 2, 1_010), Err(CallRefusal::NoRun), "expired");
        runs.close(&a, &r1);
        assert_eq!(runs.admit_call(&a, &r1, 9, 40), Err(CallRefusal::NoRun), "closed");
        assert_eq!(runs.take_unwritten().len(), 2);
        assert!(runs.take_unwritten().is_empty());
        // An hour later the hourly count starts again.
        assert!(runs.open(&a, 2, HOUR_MS + 11, 1_000).is_some());
    }

    #[test]
    fn tool_calls_are_admitted_only_in_an_open_run_of_the_agent_and_counted_apart() {
        let runs = Runs::default();
        let (a, b) = (AgentId::new(), AgentId::new());
        runs.load(&a, Vec::new(), 0, 1_000);
        let r = runs.open(&a, 5, 0, 1_000).unwrap();
        assert_eq!(runs.admit_tool_call(&a, &r, 2, 10), Ok(()));
        assert_eq!(runs.admit_tool_call(&a, &r, 2, 10), Ok(()));
        assert_eq!(runs.admit_tool_call(&a, &r, 2, 10), Err(CallRefusal::Exhausted), "2 tool calls a run");
        assert_eq!(runs.admit_call(&a, &r, 2, 10), Ok(()), "model calls are counted apart");
        assert_eq!(runs.admit_tool_call(&b, &r, 9, 10), Err(CallRefusal::NoRun), "another agent's run");
        assert_eq!(runs.admit_tool_call(&a, "run_made_up", 9, 10), Err(CallRefusal::NoRun));
        assert_eq!(runs.admit_tool_call(&a, &r, 9, 1_000), Err(CallRefusal::NoRun), "expired");
        let r2 = runs.open(&a, 5, 20, 1_000).unwrap();
        runs.close(&a, &r2);
        assert_eq!(runs.admit_tool_call(&a, &r2, 9, 30), Err(CallRefusal::NoRun), "closed");
    }

    #[test]
    fn a_restart_reopens_recent_server_runs_only() {
        let runs = Runs::default();
        let a = AgentId::new();
        let recent = new_run_id(5_000);
        let old = new_run_id(1_000);
        runs.load(&a, vec![(recent.clone(), 5_000), (old.clone(), 1_000), ("agent-chosen".into(), 5_000)], 6_000, 2_000);
        assert_eq!(runs.admit_call(&a, &recent, 5, 6_000), Ok(()));
        assert_eq!(runs.admit_call(&a, &old, 5, 6_000), Err(CallRefusal::NoRun));
        assert_eq!(runs.admit_call(&a, "agent-chosen", 5, 6_000), Err(CallRefusal::NoRun));
        assert_eq!(runs.open(&a, 3, 6_000, 2_000), None, "all three count for the hour");
    }
}
