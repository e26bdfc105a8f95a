//! Scheduled runs on the real server: each run an ordinary run (a run id, the meter, a wake from
//! the paused tier, the reply in the session and on Telegram), kills around a due run leave one
//! run per due time, a tenant at its cap gets its schedule paused with the reason, and two
//! tenants' schedules never meet. The scheduler's clock rules (cron across DST changes, missed
//! runs after downtime, spread) are tested with a hand-held clock in
//! `crates/clawpen-server/src/schedules.rs`.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::TestServer;

const TOKEN: &str = "700031:AAscheduleBotTOKENsecretPART_000031";

/// A plan where schedules may run every second, and nothing else gets in their way.
const PLAN: &str = "schedule_min_interval_secs = 1\nschedules = 3\nruns_per_hour = 100000\nmessages_per_minute = 100000\nidle_pause_secs = 1";
const FAST: &str = "[schedules]\ntick_ms = 100\nspread_secs = 0\n";

async fn runs(s: &TestServer, key: &str, id: &str) -> Vec<Value> {
    let (st, v) = s.get(&format!("/api/v1/schedules/{id}/runs"), key).await;
    assert_eq!(st, 200, "{v}");
    v["runs"].as_array().unwrap().clone()
}

/// Waits until the schedule has `n` runs that ended (fails after a minute).
async fn ended_runs(s: &TestServer, key: &str, id: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = runs(s, key, id).await;
        if r.iter().filter(|r| r["status"] != "running").count() >= n {
            return r;
        }
        assert!(Instant::now() < deadline, "{n} runs of {id} did not end: {r:?}\nlog:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn session(s: &TestServer, agent: &str, name: &str) -> String {
    std::fs::read_to_string(s.workspace("", agent).join(format!("sessions/{name}.jsonl"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_run_is_an_ordinary_run_kept_in_the_session_and_sent_on_telegram() {
    let s = TestServer::start_full(PLAN, "", &format!("{FAST}[telegram]\napi_base = \"STANDIN\"\npoll_timeout_secs = 2\n"), &[]).await;
    let tg = s.standin.telegram().clone();
    tg.add_bot(TOKEN, "schedule_family_bot");
    let (_, key) = s.tenant("family").await;
    let a = s.agent(&key, "a", true).await["id"].as_str().unwrap().to_owned();

    // The agent falls asleep in the paused tier; the schedule's run wakes it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.get(&format!("/api/v1/agents/{a}"), &key).await.1["hibernation"] != "paused" {
        assert!(Instant::now() < deadline, "the agent never paused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (st, sch) = s.post(&format!("/api/v1/agents/{a}/schedules"), &key, json!({"name": "brief", "every_secs": 2, "message": "morning brief please"})).await;
    assert_eq!(st, 201, "{sch}");
    let id = sch["id"].as_str().unwrap().to_owned();
    assert!(sch["next_run_at"].as_i64().unwrap() > sch["created_at"].as_i64().unwrap(), "{sch}");
    let first = ended_runs(&s, &key, &id, 1).await;
    let run = first.last().unwrap();
    assert_eq!(run["status"], "ok", "{run}\nlog:\n{}", s.log());
    let run_id = run["run_id"].as_str().unwrap();
    assert!(run_id.starts_with("run_"), "a server-issued run id: {run}");
    assert!(run["first_token_at"].as_i64().unwrap() >= run["due_at"].as_i64().unwrap());
    assert!(session(&s, &a, "main").contains("stand-in reply to: morning brief please"), "kept in the console's session");
    // The meter saw it as a run of this agent.
    let calls = s.standin.requests();
    assert!(calls.iter().any(|r| r.body.to_string().contains("morning brief please")), "the model was asked");
    let view = s.get(&format!("/api/v1/schedules/{id}"), &key).await.1;
    assert_eq!(view["last_run"]["run_id"], run_id, "{view}");
    // A scheduled run is not its tenant's activity (the inactivity rules read this).
    let agent = s.get(&format!("/api/v1/agents/{a}"), &key).await.1;
    assert!(agent["last_active_at"].as_i64().unwrap_or(0) < sch["created_at"].as_i64().unwrap(), "{agent}");
    assert_eq!((view["paused"].as_bool(), view["failures"].as_i64()), (Some(false), Some(0)));

    // Telegram: a paired person gets the scheduled replies in their chat, kept in their session.
    let (st, _) = s.put("/api/v1/telegram/bot", &key, json!({"token": TOKEN, "agent_id": a, "mode": "polling"})).await;
    assert_eq!(st, 200);
    let (st, bad) = s.post(&format!("/api/v1/agents/{a}/schedules"), &key, json!({"name": "tg", "every_secs": 2, "message": "x", "channel": "telegram"})).await;
    assert_eq!((st, bad["error"]["code"].as_str()), (422, Some("invalid_input")), "nobody paired yet: {bad}");
    let (_, code) = s.post("/api/v1/telegram/pairing-codes", &key, json!({"agent_id": a})).await;
    tg.inject_message(TOKEN, 7001, &format!("/pair {}", code["code"].as_str().unwrap()));
    let paired = tg.wait_for_sent(TOKEN, 7001, 1, Duration::from_secs(60)).await;
    assert!(paired[0].starts_with("Paired!"), "{paired:?}");
    let (st, tgs) = s.post(&format!("/api/v1/agents/{a}/schedules"), &key, json!({"name": "tg", "every_secs": 2, "message": "evening brief please", "channel": "telegram"})).await;
    assert_eq!(st, 201, "{tgs}");
    assert_eq!(tgs["telegram_user"], "7001");
    let got = tg.wait_for_sent(TOKEN, 7001, 2, Duration::from_secs(60)).await;
    assert_eq!(got.get(1).map(String::as_str), Some("stand-in reply to: evening brief please"), "{got:?}\nlog:\n{}", s.log());
    assert!(session(&s, &a, "tg-7001").contains("evening brief please"));

    // Paused by its tenant, it runs no more; resumed, it goes on.
    let (st, p) = s.call(Method::PATCH, &format!("/api/v1/schedules/{id}"), Some(&key), Some(json!({"paused": true}))).await;
    assert_eq!((st, p["paused"].as_bool(), p["next_run_at"].is_null()), (200, Some(true), true), "{p}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = runs(&s, &key, &id).await.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(runs(&s, &key, &id).await.len(), before, "a paused schedule does not run");
    let (st, p) = s.call(Method::PATCH, &format!("/api/v1/schedules/{id}"), Some(&key), Some(json!({"paused": false}))).await;
    assert_eq!((st, p["paused"].as_bool()), (200, Some(false)));
    ended_runs(&s, &key, &id, before + 1).await;
    let (st, _) = s.delete(&format!("/api/v1/schedules/{id}"), &key).await;
    assert_eq!(st, 204);
    assert_eq!(s.get(&format!("/api/v1/schedules/{id}"), &key).await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_around_due_runs_leaves_exactly_one_run_per_due_time() {
    let mut s = TestServer::start_full(PLAN, "", FAST, &[]).await;
    let (_, key) = s.tenant("killed").await;
    let a = s.agent(&key, "a", true).await["id"].as_str().unwrap().to_owned();
    let (st, sch) = s.post(&format!("/api/v1/agents/{a}/schedules"), &key, json!({"name": "tick", "every_secs": 3, "message": "scheduled tick"})).await;
    assert_eq!(st, 201, "{sch}");
    let id = sch["id"].as_str().unwrap().to_owned();
    // Kill at several points of the three-second cycle: before a due time, at it, during a run.
    for (round, offset_ms) in [0u64, 150, 400, 900, 1700, 2600].into_iter().enumerate() {
        let next = s.get(&format!("/api/v1/schedules/{id}"), &key).await.1["next_run_at"].as_i64().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let wait = (next - now).max(0) as u64 + offset_ms;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        s.kill();
        s.spawn().await;
        let all = runs(&s, &key, &id).await;
        assert!(all.iter().all(|r| r["status"] != "running" || r["started_at"].as_i64().unwrap() >= now), "round {round}: a run cut short is marked interrupted: {all:?}");
    }
    let all = ended_runs(&s, &key, &id, 4).await;
    let mut due: Vec<i64> = all.iter().map(|r| r["due_at"].as_i64().unwrap()).collect();
    let n = due.len();
    due.sort();
    due.dedup();
    assert_eq!(due.len(), n, "no due time ran twice: {all:?}");
    // Every run that reached the agent is in its session once: at most one per recorded run, and
    // at least the ones that ended well.
    let asked = session(&s, &a, "main").matches("stand-in reply to: scheduled tick").count();
    let ok = all.iter().filter(|r| r["status"] == "ok").count();
    assert!(asked >= ok && asked <= all.len(), "{asked} replies in the session for {} runs ({ok} ok): {all:?}", all.len());
    let statuses: Vec<&str> = all.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert!(statuses.iter().all(|st| ["ok", "interrupted", "running"].contains(st)), "{statuses:?}\nlog:\n{}", s.log());
    // Run ids are the meter's, one per run.
    let mut ids: Vec<&str> = all.iter().filter_map(|r| r["run_id"].as_str()).collect();
    let m = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), m, "{all:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_at_its_cap_gets_its_schedule_paused_and_tenants_never_see_each_others() {
    let extra = format!("{FAST}[plans.capped]\nmonthly_cap = 1\ndaily_cap = 0\ninitial_credits = 1000000\n{PLAN}\n");
    let s = TestServer::start_full(PLAN, "", &extra, &[]).await;
    let (_, ka) = s.tenant("alpha").await;
    let (tb, kb) = s.tenant_on("beta", "capped").await;
    let a = s.agent(&ka, "a", false).await["id"].as_str().unwrap().to_owned();
    let b = s.agent(&kb, "b", true).await["id"].as_str().unwrap().to_owned();

    // Bad schedules are refused with what is wrong, and make nothing.
    let bad = [
        (json!({"name": "x", "message": "m"}), 422, "bad_timing"),
        (json!({"name": "x", "message": "m", "cron": "* * * * *", "every_secs": 5}), 422, "bad_timing"),
        (json!({"name": "x", "message": "m", "cron": "61 * * * *"}), 422, "bad_timing"),
        (json!({"name": "x", "message": "m", "cron": "0 8 * * *", "tz": "Mars/Olympus"}), 422, "bad_timing"),
        (json!({"name": "x", "message": "m", "every_secs": 0}), 422, "bad_timing"),
        (json!({"name": "x", "message": "", "every_secs": 5}), 422, "invalid_input"),
        (json!({"name": "../x", "message": "m", "every_secs": 5}), 422, "invalid_input"),
        (json!({"name": "x", "message": "m", "every_secs": 5, "channel": "pigeon"}), 422, "invalid_input"),
        (json!({"name": "x", "message": "m", "every_secs": 5, "extra": 1}), 422, "invalid_input"),
    ];
    for (body, want, code) in bad {
        let (st, e) = s.post(&format!("/api/v1/agents/{a}/schedules"), &ka, body.clone()).await;
        assert_eq!((st, e["error"]["code"].as_str()), (want, Some(code)), "{body}: {e}");
    }
    assert!(s.get("/api/v1/schedules", &ka).await.1["schedules"].as_array().unwrap().is_empty());

    // A's schedule runs for a minute from now; B's every second, on B's capped plan.
    let (st, sa) = s.post(&format!("/api/v1/agents/{a}/schedules"), &ka, json!({"name": "a", "cron": "0 3 * * *", "tz": "Europe/Berlin", "message": "alpha secret errand"})).await;
    assert_eq!(st, 201, "{sa}");
    let sa = sa["id"].as_str().unwrap().to_owned();
    let (st, sb) = s.post(&format!("/api/v1/agents/{b}/schedules"), &kb, json!({"name": "b", "every_secs": 1, "message": "beta errand"})).await;
    assert_eq!(st, 201, "{sb}");
    let sb = sb["id"].as_str().unwrap().to_owned();

    // Neither tenant sees, changes or runs the other's.
    assert_eq!(s.post(&format!("/api/v1/agents/{a}/schedules"), &kb, json!({"name": "y", "every_secs": 5, "message": "m"})).await.0, 404);
    for (key, other) in [(&ka, &sb), (&kb, &sa)] {
        assert_eq!(s.get(&format!("/api/v1/schedules/{other}"), key).await.0, 404);
        assert_eq!(s.get(&format!("/api/v1/schedules/{other}/runs"), key).await.0, 404);
        assert_eq!(s.call(Method::PATCH, &format!("/api/v1/schedules/{other}"), Some(key), Some(json!({"paused": false}))).await.0, 404);
        assert_eq!(s.delete(&format!("/api/v1/schedules/{other}"), key).await.0, 404);
        let list = s.get("/api/v1/schedules", key).await.1;
        assert_eq!(list["schedules"].as_array().unwrap().len(), 1, "{list}");
        assert!(!list.to_string().contains(other.as_str()));
    }
    assert!(!s.get(&format!("/api/v1/agents/{a}/schedules"), &kb).await.1.to_string().contains(&sa));

    // B is at its cap: its run is refused by the meter and the schedule pauses with the reason,
    // until the month the cap lifts.
    let deadline = Instant::now() + Duration::from_secs(60);
    let view = loop {
        let v = s.get(&format!("/api/v1/schedules/{sb}"), &kb).await.1;
        if v["paused"] == true {
            break v;
        }
        assert!(Instant::now() < deadline, "the capped schedule never paused: {v}\nlog:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reason = view["paused_reason"].as_str().unwrap();
    assert!(reason.to_lowercase().contains("cap"), "the reason names the cap: {view}");
    assert!(view["paused_until"].as_i64().is_some(), "it resumes when the cap lifts: {view}");
    let paused_runs = runs(&s, &kb, &sb).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(runs(&s, &kb, &sb).await.len(), paused_runs.len(), "no retry loop once paused");
    let (st, audit) = s.get(&format!("/api/v1/audit?tenant={}", tb["id"].as_str().unwrap()), &s.admin.clone()).await;
    assert_eq!(st, 200);
    assert!(audit.to_string().contains("schedule.paused"), "{audit}");
    // Nothing of B's ran in A's agent: A's stays asleep, with no session of B's message.
    assert!(!session(&s, &a, "main").contains("beta errand"));
    assert_eq!(s.get(&format!("/api/v1/agents/{a}"), &ka).await.1["observed_state"], "absent");
    assert!(runs(&s, &ka, &sa).await.is_empty());
}
