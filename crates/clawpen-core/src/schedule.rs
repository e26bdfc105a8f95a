//! When an agent's scheduled runs fall due: a cron expression (five fields, minute granularity)
//! read in the tenant's time zone, or a fixed interval. Pure: every function takes the time it
//! works from, so the scheduler and its tests hold the clock.
//!
//! Across a daylight-saving change a cron schedule follows the wall clock as cron does (croner's
//! rules, after Vixie cron): a time that does not exist that day (the spring gap) runs at the
//! first minute after the gap, a time that exists twice (the autumn overlap) runs once, at its
//! first occurrence. An interval ignores the wall clock: every `every_secs` from its anchor.

use std::str::FromStr;

use chrono::{TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use sha2::{Digest, Sha256};

/// Consecutive failed runs after which a schedule is paused.
pub const MAX_FAILURES: u32 = 5;

/// The first pause after a failed run; it doubles with each further failure.
pub const FIRST_BACKOFF_MS: i64 = 60_000;

/// The longest pause after a failed run.
pub const MAX_BACKOFF_MS: i64 = 3_600_000;

/// The longest interval a schedule may have: ten years, in seconds.
pub const MAX_EVERY_SECS: u64 = 10 * 366 * 24 * 3600;

/// How many coming runs are looked at to find a cron expression's shortest gap.
const GAP_SAMPLES: usize = 400;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimingError {
    #[error("give either `cron` or `every_secs`, not both and not neither")]
    OneOf,
    #[error("`cron` is not a cron expression of five fields (minute hour day month weekday): {0}")]
    Cron(String),
    #[error("`tz` is not a time zone of the IANA database (like `Europe/Berlin` or `UTC`): {0}")]
    Tz(String),
    #[error("`every_secs` must be at least 1")]
    Zero,
    #[error("`every_secs` must be at most {MAX_EVERY_SECS} (ten years)")]
    TooLong,
    #[error("`cron` never falls due")]
    Never,
}

/// When a schedule falls due.
#[derive(Debug, Clone)]
pub enum Timing {
    Cron { cron: Box<Cron>, tz: Tz },
    /// Every `secs` seconds from `anchor_ms` (the schedule's creation).
    Every { secs: u64, anchor_ms: i64 },
}

impl Timing {
    /// Reads a schedule's timing as the API takes it.
    pub fn parse(cron: Option<&str>, every_secs: Option<u64>, tz: &str, anchor_ms: i64) -> Result<Timing, TimingError> {
        match (cron, every_secs) {
            (Some(expr), None) => {
                let tz = Tz::from_str(tz.trim()).map_err(|_| TimingError::Tz(tz.to_owned()))?;
                if expr.split_whitespace().count() != 5 {
                    return Err(TimingError::Cron(format!("{expr:?} has {} fields", expr.split_whitespace().count())));
                }
                let cron = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build().parse(expr).map_err(|e| TimingError::Cron(format!("{expr:?}: {e}")))?;
                let timing = Timing::Cron { cron: Box::new(cron), tz };
                timing.next_after(anchor_ms).ok_or(TimingError::Never)?;
                Ok(timing)
            }
            (None, Some(0)) => Err(TimingError::Zero),
            (None, Some(secs)) if secs > MAX_EVERY_SECS => Err(TimingError::TooLong),
            (None, Some(secs)) => Ok(Timing::Every { secs, anchor_ms }),
            _ => Err(TimingError::OneOf),
        }
    }

    /// The first time it falls due strictly after `after_ms` (Unix milliseconds); `None` never.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match self {
            Timing::Every { secs, anchor_ms } => {
                let every = (*secs as i64).saturating_mul(1000);
                if after_ms < *anchor_ms {
                    return Some(anchor_ms.saturating_add(every));
                }
                let k = (after_ms - anchor_ms) / every + 1;
                Some(anchor_ms.saturating_add(k.saturating_mul(every)))
            }
            Timing::Cron { cron, tz } => {
                let at = tz.from_utc_datetime(&Utc.timestamp_millis_opt(after_ms).single()?.naive_utc());
                let next = cron.find_next_occurrence(&at, false).ok()?;
                Some(next.timestamp_millis())
            }
        }
    }

    /// The shortest time between two runs, in seconds: the interval, or for a cron expression
    /// the shortest gap among its next runs after `from_ms` (a plan's limit on how often).
    pub fn shortest_gap_secs(&self, from_ms: i64) -> u64 {
        match self {
            Timing::Every { secs, .. } => *secs,
            Timing::Cron { .. } => {
                let mut shortest = u64::MAX;
                let mut prev = match self.next_after(from_ms) {
                    Some(t) => t,
                    None => return shortest,
                };
                for _ in 0..GAP_SAMPLES {
                    let Some(next) = self.next_after(prev) else { break };
                    shortest = shortest.min(((next - prev) / 1000) as u64);
                    prev = next;
                }
                shortest
            }
        }
    }
}

/// The pause before the next run after `failures` failed runs in a row (1 or more): one minute,
/// doubled each time, at most an hour.
pub fn backoff_ms(failures: u32) -> i64 {
    let doublings = failures.saturating_sub(1).min(20);
    (FIRST_BACKOFF_MS << doublings).min(MAX_BACKOFF_MS)
}

/// How long after its due time a schedule's run starts, in `[0, window_ms)`: fixed per schedule
/// (a hash of its id), so that many schedules due at the same minute start spread over the
/// window instead of all at once, and one schedule always starts at the same offset.
pub fn spread_ms(schedule_id: &str, window_ms: i64) -> i64 {
    if window_ms <= 0 {
        return 0;
    }
    let h = Sha256::digest(schedule_id.as_bytes());
    let n = u64::from_be_bytes(h[..8].try_into().expect("eight bytes"));
    (n % window_ms as u64) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn iso(ms: i64) -> String {
        Utc.timestamp_millis_opt(ms).unwrap().format("%Y-%m-%dT%H:%M:%SZ").to_string()
    }

    fn runs(t: &Timing, from: &str, n: usize) -> Vec<String> {
        let mut at = utc(from);
        (0..n)
            .map(|_| {
                at = t.next_after(at).unwrap();
                iso(at)
            })
            .collect()
    }

    #[test]
    fn a_daily_cron_follows_the_wall_clock_across_both_changes() {
        // Europe/Berlin: 2026-03-29 02:00 CET → 03:00 CEST; 2026-10-25 03:00 CEST → 02:00 CET.
        let t = Timing::parse(Some("30 8 * * *"), None, "Europe/Berlin", 0).unwrap();
        assert_eq!(runs(&t, "2026-03-27T12:00:00Z", 3), ["2026-03-28T07:30:00Z", "2026-03-29T06:30:00Z", "2026-03-30T06:30:00Z"]);
        assert_eq!(runs(&t, "2026-10-23T12:00:00Z", 3), ["2026-10-24T06:30:00Z", "2026-10-25T07:30:00Z", "2026-10-26T07:30:00Z"]);
    }

    #[test]
    fn a_time_in_the_spring_gap_runs_after_it_and_one_in_the_autumn_overlap_runs_once() {
        let t = Timing::parse(Some("30 2 * * *"), None, "Europe/Berlin", 0).unwrap();
        // 02:30 does not exist on 2026-03-29: the run is at 03:00 CEST (01:00Z).
        assert_eq!(runs(&t, "2026-03-28T12:00:00Z", 2), ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]);
        // 02:30 exists twice on 2026-10-25: once, at 02:30 CEST (00:30Z).
        assert_eq!(runs(&t, "2026-10-24T12:00:00Z", 2), ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]);
    }

    #[test]
    fn an_interval_counts_from_its_anchor_and_ignores_the_wall_clock() {
        let anchor = utc("2026-03-29T00:10:00Z");
        let t = Timing::parse(None, Some(3600), "Europe/Berlin", anchor).unwrap();
        assert_eq!(runs(&t, "2026-03-29T00:00:00Z", 3), ["2026-03-29T01:10:00Z", "2026-03-29T02:10:00Z", "2026-03-29T03:10:00Z"]);
        assert_eq!(t.next_after(utc("2026-03-29T01:10:00Z")), Some(utc("2026-03-29T02:10:00Z")));
    }

    #[test]
    fn bad_timings_say_what_is_wrong() {
        assert_eq!(Timing::parse(None, None, "UTC", 0).unwrap_err(), TimingError::OneOf);
        assert_eq!(Timing::parse(Some("* * * * *"), Some(60), "UTC", 0).unwrap_err(), TimingError::OneOf);
        assert_eq!(Timing::parse(None, Some(0), "UTC", 0).unwrap_err(), TimingError::Zero);
        assert_eq!(Timing::parse(None, Some(u64::MAX), "UTC", 0).unwrap_err(), TimingError::TooLong);
        assert!(matches!(Timing::parse(Some("0 8 * * *"), None, "Mars/Olympus", 0), Err(TimingError::Tz(_))));
        for bad in ["0 0 8 * * *", "61 * * * *", "every day", "* * *", "0 8 31 2 *"] {
            assert!(matches!(Timing::parse(Some(bad), None, "UTC", 0), Err(TimingError::Cron(_) | TimingError::Never)), "{bad}");
        }
    }

    #[test]
    fn the_shortest_gap_is_what_a_plan_limits() {
        let from = utc("2026-12-01T00:00:00Z");
        assert_eq!(Timing::parse(Some("*/5 * * * *"), None, "UTC", 0).unwrap().shortest_gap_secs(from), 300);
        assert_eq!(Timing::parse(Some("0 8,9 * * *"), None, "UTC", 0).unwrap().shortest_gap_secs(from), 3600);
        assert_eq!(Timing::parse(None, Some(90), "UTC", 0).unwrap().shortest_gap_secs(from), 90);
    }

    #[test]
    fn backoff_doubles_to_an_hour_and_spread_stays_in_its_window() {
        assert_eq!([1, 2, 3, 7, 8, 40].map(backoff_ms), [60_000, 120_000, 240_000, 3_600_000, 3_600_000, 3_600_000]);
        let offsets: Vec<i64> = (0..200).map(|i| spread_ms(&format!("sch_{i}"), 30_000)).collect();
        assert!(offsets.iter().all(|o| (0..30_000).contains(o)));
        assert!(offsets.iter().filter(|o| **o < 15_000).count() > 50 && offsets.iter().filter(|o| **o >= 15_000).count() > 50, "spread over the window");
        assert_eq!(spread_ms("sch_a", 30_000), spread_ms("sch_a", 30_000));
        assert_eq!(spread_ms("sch_a", 0), 0);
    }
}
