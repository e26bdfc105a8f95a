//! The lifecycle of one agent as a pure state machine: hibernation tiers, health failures, restart
//! backoff and the crash-loop guard. Nothing here touches a clock, a store or a runtime: every
//! call takes `now` (milliseconds since the epoch) and returns what the fleet should do, so the
//! machine is tested with a hand-advanced clock and the fleet (in the server) only carries the
//! decisions out.

use serde::{Deserialize, Serialize};

pub type Millis = i64;

/// How deep an agent that should run is hibernating. `Awake` means its sandbox runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Awake,
    /// Frozen (cgroup freezer): memory kept, no CPU; wakes in milliseconds.
    Paused,
    /// Stopped: no memory; the container is kept, so waking is a start.
    Stopped,
    /// The container is removed; the workspace is kept, so waking is a create and start.
    Removed,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Awake => "awake",
            Tier::Paused => "paused",
            Tier::Stopped => "stopped",
            Tier::Removed => "removed",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        Some(match s {
            "awake" => Tier::Awake,
            "paused" => Tier::Paused,
            "stopped" => Tier::Stopped,
            "removed" => Tier::Removed,
            _ => return None,
        })
    }
}

/// Idle times after which an agent goes into each tier; `None` never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiers {
    pub pause_after: Option<Millis>,
    pub stop_after: Option<Millis>,
    pub remove_after: Option<Millis>,
}

impl Tiers {
    /// The deepest tier an agent idle for `idle` ms belongs in.
    pub fn tier_for(&self, idle: Millis) -> Tier {
        let past = |t: Option<Millis>| t.is_some_and(|t| idle >= t);
        if past(self.remove_after) {
            Tier::Removed
        } else if past(self.stop_after) {
            Tier::Stopped
        } else if past(self.pause_after) {
            Tier::Paused
        } else {
            Tier::Awake
        }
    }
}

/// Restart backoff and the crash-loop guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// Restarts inside `window` after which the next failure trips the guard.
    pub max_restarts: usize,
    pub window: Millis,
    /// The first restart waits this long; each further one in the window twice as long.
    pub base_backoff: Millis,
    pub max_backoff: Millis,
    /// How often a running agent's `/health` is asked.
    pub health_every: Millis,
    /// Consecutive failed health checks that count as one failure.
    pub health_failures: u32,
}

impl Default for Guard {
    fn default() -> Self {
        Guard { max_restarts: 5, window: 10 * 60_000, base_backoff: 1_000, max_backoff: 60_000, health_every: 30_000, health_failures: 2 }
    }
}

impl Guard {
    /// The wait before restart number `n + 1` when `n` restarts happened inside the window.
    pub fn backoff(&self, n: usize) -> Millis {
        let factor = 1i64.checked_shl(n.min(30) as u32).unwrap_or(i64::MAX);
        self.base_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// What the fleet should do for one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Move the sandbox into this (deeper) tier.
    Hibernate(Tier),
    /// Ask the agent's `/health`.
    CheckHealth,
    /// Restart the sandbox now; the reason goes to the audit log.
    Restart { reason: String },
    /// Stop the sandbox and leave it stopped until a manual start.
    CrashLoop { reason: String },
}

/// What the fleet knows about one agent that should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Life {
    pub tier: Tier,
    /// Last message, connection or wake.
    pub last_active: Millis,
    /// Open client connections; an agent with one is never idle.
    pub connections: u32,
    /// Times of the restarts inside the guard's window.
    pub restarts: Vec<Millis>,
    /// A restart waiting for its backoff, and why.
    pub restart_at: Option<(Millis, String)>,
    /// Set when the guard tripped: why. Cleared only by a manual start.
    pub crashloop: Option<String>,
    pub last_health: Millis,
    pub health_failures: u32,
    /// An action is being carried out; no other is handed out meanwhile.
    pub busy: bool,
}

impl Life {
    pub fn new(now: Millis) -> Life {
        Life {
            tier: Tier::Awake,
            last_active: now,
            connections: 0,
            restarts: Vec::new(),
            restart_at: None,
            crashloop: None,
            last_health: now,
            health_failures: 0,
            busy: false,
        }
    }

    /// A message arrived for the agent.
    pub fn touch(&mut self, now: Millis) {
        self.last_active = self.last_active.max(now);
    }

    pub fn connected(&mut self, now: Millis) {
        self.connections += 1;
        self.touch(now);
    }

    /// A connection closed: the idle clock starts from here.
    pub fn disconnected(&mut self, now: Millis) {
        self.connections = self.connections.saturating_sub(1);
        self.touch(now);
    }

    /// The sandbox answers again, whichever tier it came from: the idle clock restarts.
    pub fn woke(&mut self, now: Millis) {
        self.tier = Tier::Awake;
        self.touch(now);
        self.last_health = now;
        self.health_failures = 0;
    }

    pub fn hibernated(&mut self, tier: Tier) {
        self.tier = tier;
    }

    /// A manual start: forgets the guard's history and any pending restart.
    pub fn cleared(&mut self, now: Millis) {
        self.crashloop = None;
        self.restarts.clear();
        self.restart_at = None;
        self.woke(now);
    }

    /// A restart was carried out.
    pub fn restarted(&mut self, now: Millis) {
        self.restarts.push(now);
        self.restart_at = None;
        self.last_health = now;
        self.health_failures = 0;
    }

    /// The sandbox died or stopped answering while it should run. Returns what to do now: a
    /// crash loop, or nothing (a restart is scheduled after its backoff and handed out by
    /// [`Life::tick`]).
    pub fn failed(&mut self, now: Millis, reason: &str, guard: &Guard) -> Option<Action> {
        if self.crashloop.is_some() || self.tier != Tier::Awake {
            return None;
        }
        self.restarts.retain(|t| now - t < guard.window);
        if self.restarts.len() >= guard.max_restarts {
            let why = format!("{reason}; {} restarts within {} s", self.restarts.len(), guard.window / 1000);
            self.crashloop = Some(why.clone());
            self.restart_at = None;
            return Some(Action::CrashLoop { reason: why });
        }
        if self.restart_at.is_none() {
            self.restart_at = Some((now + guard.backoff(self.restarts.len()), reason.to_owned()));
        }
        None
    }

    /// One health check's answer.
    pub fn health(&mut self, now: Millis, ok: bool, guard: &Guard) -> Option<Action> {
        self.last_health = now;
        if ok {
            self.health_failures = 0;
            return None;
        }
        self.health_failures += 1;
        if self.health_failures < guard.health_failures {
            return None;
        }
        self.health_failures = 0;
        let why = format!("{} health checks in a row failed", guard.health_failures);
        self.failed(now, &why, guard)
    }

    /// What to do at `now`, if anything: a due restart first, then hibernation, then a health
    /// check.
    pub fn tick(&mut self, now: Millis, tiers: &Tiers, guard: &Guard) -> Option<Action> {
        if self.busy || self.crashloop.is_some() {
            return None;
        }
        if let Some((at, reason)) = &self.restart_at {
            return (now >= *at).then(|| Action::Restart { reason: reason.clone() });
        }
        let idle = if self.connections > 0 { 0 } else { now - self.last_active };
        let due = tiers.tier_for(idle);
        if due > self.tier {
            return Some(Action::Hibernate(due));
        }
        if self.tier == Tier::Awake && now - self.last_health >= guard.health_every {
            return Some(Action::CheckHealth);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock that moves only when the test moves it.
    struct Clock(Millis);

    impl Clock {
        fn advance(&mut self, ms: Millis) -> Millis {
            self.0 += ms;
            self.0
        }
    }

    const S: Millis = 1000;

    fn tiers() -> Tiers {
        Tiers { pause_after: Some(60 * S), stop_after: Some(600 * S), remove_after: Some(3600 * S) }
    }

    fn quiet_guard() -> Guard {
        Guard { health_every: Millis::MAX / 4, ..Guard::default() }
    }

    #[test]
    fn idle_agent_goes_down_the_tiers_one_step_at_a_time() {
        let mut clock = Clock(1_700_000_000_000);
        let mut life = Life::new(clock.0);
        let (t, g) = (tiers(), quiet_guard());
        assert_eq!(life.tick(clock.advance(59 * S), &t, &g), None);
        assert_eq!(life.tick(clock.advance(S), &t, &g), Some(Action::Hibernate(Tier::Paused)));
        life.hibernated(Tier::Paused);
        assert_eq!(life.tick(clock.advance(60 * S), &t, &g), None);
        assert_eq!(life.tick(clock.advance(480 * S), &t, &g), Some(Action::Hibernate(Tier::Stopped)));
        life.hibernated(Tier::Stopped);
        assert_eq!(life.tick(clock.advance(2999 * S), &t, &g), None);
        assert_eq!(life.tick(clock.advance(S), &t, &g), Some(Action::Hibernate(Tier::Removed)));
        life.hibernated(Tier::Removed);
        assert_eq!(life.tick(clock.advance(99_999 * S), &t, &g), None);
    }

    #[test]
    fn a_long_sleep_goes_straight_to_the_deepest_due_tier() {
        let mut clock = Clock(0);
        let mut life = Life::new(0);
        assert_eq!(life.tick(clock.advance(700 * S), &tiers(), &quiet_guard()), Some(Action::Hibernate(Tier::Stopped)));
    }

    #[test]
    fn the_idle_clock_restarts_at_each_wake_and_message() {
        let mut clock = Clock(0);
        let mut life = Life::new(0);
        let (t, g) = (tiers(), quiet_guard());
        life.hibernated(Tier::Stopped);
        clock.advance(5000 * S);
        life.woke(clock.0);
        assert_eq!(life.tick(clock.advance(59 * S), &t, &g), None, "a wake starts a fresh idle period");
        life.touch(clock.0);
        assert_eq!(life.tick(clock.advance(59 * S), &t, &g), None, "a message too");
        assert_eq!(life.tick(clock.advance(S), &t, &g), Some(Action::Hibernate(Tier::Paused)));
        // A message stamped earlier than the last activity never moves the clock back.
        life.touch(0);
        assert_eq!(life.last_active, clock.0 - 60 * S);
    }

    #[test]
    fn an_open_connection_keeps_the_agent_awake() {
        let mut clock = Clock(0);
        let mut life = Life::new(0);
        let (t, g) = (tiers(), quiet_guard());
        life.connected(clock.advance(S));
        assert_eq!(life.tick(clock.advance(7200 * S), &t, &g), None);
        life.disconnected(clock.0);
        assert_eq!(life.tick(clock.advance(59 * S), &t, &g), None, "idle counts from the disconnect");
        assert_eq!(life.tick(clock.advance(S), &t, &g), Some(Action::Hibernate(Tier::Paused)));
    }

    #[test]
    fn failures_back_off_exponentially_then_trip_the_guard_on_the_sixth() {
        let mut clock = Clock(0);
        let mut life = Life::new(0);
        let (t, g) = (tiers(), quiet_guard());
        let mut waits = Vec::new();
        for _ in 0..5 {
            assert_eq!(life.failed(clock.0, "exited with code 3", &g), None);
            let at = life.restart_at.as_ref().unwrap().0;
            waits.push(at - clock.0);
            assert_eq!(life.tick(clock.advance(at - clock.0 - 1), &t, &g), None, "not before the backoff");
            assert_eq!(life.tick(clock.advance(1), &t, &g), Some(Action::Restart { reason: "exited with code 3".into() }));
            life.restarted(clock.0);
        }
        assert_eq!(waits, vec![1000, 2000, 4000, 8000, 16000]);
        let trip = life.failed(clock.advance(100), "exited with code 3", &g);
        assert_eq!(trip, Some(Action::CrashLoop { reason: "exited with code 3; 5 restarts within 600 s".into() }));
        assert!(life.crashloop.is_some());
        assert_eq!(life.tick(clock.advance(3600 * S), &t, &g), None, "a crash-looping agent is left alone, not even hibernated");
        assert_eq!(life.failed(clock.0, "again", &g), None);
        life.cleared(clock.0);
        assert_eq!(life.crashloop, None);
        assert_eq!(life.failed(clock.0, "exited with code 3", &g), None, "a manual start gives a fresh history");
        assert_eq!(life.restart_at.as_ref().unwrap().0 - clock.0, 1000);
    }

    #[test]
    fn restarts_spread_wider_than_the_window_never_trip() {
        let mut clock = Clock(0);
        let mut life = Life::new(0);
        let g = quiet_guard();
        for _ in 0..20 {
            assert_eq!(life.failed(clock.0, "oom", &g), None);
            let at = life.restart_at.as_ref().unwrap().0;
            clock.0 = at;
            life.restarted(clock.0);
            clock.advance(150 * S);
        }
        assert!(life.crashloop.is_none());
        assert!(life.restarts.len() <= 5);
    }

    #[test]
    fn backoff_is_capped() {
        let g = Guard::default();
        assert_eq!(g.backoff(0), 1000);
        assert_eq!(g.backoff(6), 60_000);
        assert_eq!(g.backoff(200), 60_000);
    }

    #[test]
    fn health_checks_are_due_on_their_interval_and_two_failures_restart() {
        let mut clock = Clock(0);
        let mut life = Life::new(0);
        let t = Tiers { pause_after: None, stop_after: None, remove_after: None };
        let g = Guard::default();
        assert_eq!(life.tick(clock.advance(29 * S), &t, &g), None);
        assert_eq!(life.tick(clock.advance(S), &t, &g), Some(Action::CheckHealth));
        assert_eq!(life.health(clock.0, false, &g), None, "one failure is not enough");
        assert_eq!(life.tick(clock.advance(30 * S), &t, &g), Some(Action::CheckHealth));
        assert_eq!(life.health(clock.0, false, &g), None, "the second schedules a restart");
        assert_eq!(life.tick(clock.advance(S), &t, &g), Some(Action::Restart { reason: "2 health checks in a row failed".into() }));
    }

    #[test]
    fn a_hibernating_agent_is_not_health_checked_or_restarted() {
        let mut clock = Clock(0);
        let mut life = Life::new(0);
        let t = Tiers { pause_after: None, stop_after: None, remove_after: None };
        life.hibernated(Tier::Stopped);
        assert_eq!(life.tick(clock.advance(3600 * S), &t, &Guard::default()), None);
        assert_eq!(life.failed(clock.0, "exited with code 0", &Guard::default()), None, "its own stop is no failure");
        assert_eq!(life.restart_at, None);
    }

    #[test]
    fn a_busy_agent_gets_no_second_action() {
        let mut life = Life::new(0);
        life.busy = true;
        assert_eq!(life.tick(10_000 * S, &tiers(), &Guard::default()), None);
    }
}
