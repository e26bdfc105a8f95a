//! Refused calls, counted in memory. A hostile sandbox can send refused calls as fast as the
//! socket takes them; writing a ledger row for each grew the store by megabytes a minute. So per
//! agent and refusal code, the first refusal of each minute becomes one `calls` row (cost 0, so
//! the usage API's latest calls show why an agent was refused), and the rest of that minute only
//! count: when the minute is over, one audit line says how many more there were. At most one row
//! and one audit line per agent, code and minute reach the store, written by the flusher.

use std::collections::HashMap;
use std::sync::Mutex;

use clawpen_core::ids::{AgentId, TenantId};
use clawpen_store::ledger::CallRecord;

/// How long one count runs.
pub const WINDOW_MS: i64 = 60_000;

/// One agent's refusals with one code in the current minute.
struct Count {
    tenant: TenantId,
    /// When this minute's count started (the first refusal in it).
    since: i64,
    /// Refused since `since`, the first one included.
    refused: u64,
    /// The last refusal's message, for the audit line.
    message: String,
}

/// What the flusher writes: `calls` rows and audit lines (tenant, agent, reason).
#[derive(Default)]
pub struct ToWrite {
    pub calls: Vec<CallRecord>,
    pub audits: Vec<(TenantId, AgentId, String)>,
}

#[derive(Default)]
struct State {
    /// Per agent and code, the current minute's count.
    counts: HashMap<(AgentId, &'static str), Count>,
    /// Queued for the next flush.
    out: ToWrite,
}

#[derive(Default)]
pub struct Refusals {
    state: Mutex<State>,
}

/// A refused call, for [`Refusals::count`].
pub struct Refused<'a> {
    pub tenant: &'a TenantId,
    pub agent: &'a AgentId,
    pub code: &'static str,
    pub message: &'a str,
    pub model: &'a str,
    pub provider: &'a str,
    pub stream: bool,
    pub at: i64,
}

fn summary(n: u64, code: &str, since: i64, message: &str) -> String {
    let from = crate::meter::format_utc(since);
    format!("{n} more model calls refused ({code}) in the minute from {from}: {message}")
}

impl Refusals {
    /// Counts one refusal; the first of its minute is queued as a call row (`id` is its id).
    pub fn count(&self, r: Refused<'_>, id: impl FnOnce() -> String) {
        let mut guard = self.state.lock().expect("refusals");
        let State { counts, out } = &mut *guard;
        let key = (r.agent.clone(), r.code);
        if let Some(c) = counts.get_mut(&key).filter(|c| r.at < c.since + WINDOW_MS) {
            c.refused += 1;
            c.message = r.message.to_owned();
            return;
        }
        if let Some(old) = counts.remove(&key).filter(|c| c.refused > 1) {
            out.audits.push((old.tenant, r.agent.clone(), summary(old.refused - 1, r.code, old.since, &old.message)));
        }
        counts.insert(key, Count { tenant: r.tenant.clone(), since: r.at, refused: 1, message: r.message.to_owned() });
        out.calls.push(CallRecord {
            id: id(),
            tenant_id: r.tenant.to_string(),
            agent_id: r.agent.to_string(),
            at: r.at,
            model: r.model.to_owned(),
            provider: r.provider.to_owned(),
            stream: r.stream,
            outcome: format!("refused:{}", r.code),
            ..Default::default()
        });
    }

    /// What to write now: the queued rows, and a line for each minute that ended with more than
    /// its first refusal (those counts are then dropped).
    pub fn take(&self, now: i64) -> ToWrite {
        let mut guard = self.state.lock().expect("refusals");
        let State { counts, out } = &mut *guard;
        counts.retain(|(agent, code), c| {
            if now < c.since + WINDOW_MS {
                return true;
            }
            if c.refused > 1 {
                out.audits.push((c.tenant.clone(), agent.clone(), summary(c.refused - 1, code, c.since, &c.message)));
            }
            false
        });
        std::mem::take(out)
    }

    /// Puts back what could not be written, for the next flush.
    pub fn put_back(&self, w: ToWrite) {
        let mut guard = self.state.lock().expect("refusals");
        guard.out.calls.extend(w.calls);
        guard.out.audits.extend(w.audits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_of_refusals_is_one_row_and_one_line() {
        let r = Refusals::default();
        let (t, a) = (TenantId::new(), AgentId::new());
        let refuse = |code, at| {
            r.count(Refused { tenant: &t, agent: &a, code, message: "no run", model: "m", provider: "openai", stream: false, at }, || format!("id{at}"));
        };
        for i in 0..10_000 {
            refuse("no_run", 1_000 + i);
        }
        refuse("invalid_request", 2_000);
        let w = r.take(20_000);
        assert_eq!(w.calls.len(), 2, "the first of each code");
        assert!(w.audits.is_empty(), "the minute is not over");
        assert!(r.take(30_000).calls.is_empty());
        let w = r.take(61_000);
        assert_eq!(w.audits.len(), 1, "only no_run had more than one");
        assert!(w.audits[0].2.starts_with("9999 more model calls refused (no_run)"), "{}", w.audits[0].2);
        // The next minute starts with a row again.
        refuse("no_run", 62_000);
        assert_eq!(r.take(62_001).calls.len(), 1);
    }
}
