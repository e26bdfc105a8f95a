//! Kill tests: the server is SIGKILLed at many points while agents are being created, started,
//! stopped and deleted, and while new agents claim warm-pool sandboxes; after each restart the
//! store and Docker agree, no container is orphaned, and no workspace file is lost.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::TestServer;

/// The warm pool's size in the claim kill test (the others run without a pool).
const POOL_SIZE: usize = 2;

/// Asserts that the store (through the API) and Docker tell the same story.
async fn assert_agreement(s: &TestServer, tenant: &str, key: &str, round: &str) {
    let (st, list) = s.get("/api/v1/agents", key).await;
    assert_eq!(st, 200);
    let agents: HashMap<String, Value> =
        list["agents"].as_array().unwrap().iter().map(|a| (a["id"].as_str().unwrap().to_owned(), a.clone())).collect();
    // Unclaimed warm-pool sandboxes belong to no agent; the pool keeps at most its size (a
    // stray whose create was under way in the engine during the kill is swept within seconds).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while s.pool_containers().len() > POOL_SIZE && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (pool, containers): (Vec<_>, Vec<_>) = s.containers().into_iter().partition(|(name, agent, _)| agent.is_empty() && name.contains("-pool-"));
    assert!(pool.len() <= POOL_SIZE, "{round}: {} pool sandboxes: {pool:?}", pool.len());
    let mut per_agent: HashMap<&str, Vec<&str>> = HashMap::new();
    for (name, agent, state) in &containers {
        assert!(agents.contains_key(agent), "{round}: orphan container {name} for unknown agent {agent}\n{}", s.log());
        per_agent.entry(agent).or_default().push(state);
    }
    for (id, a) in &agents {
        let states = per_agent.get(id.as_str()).cloned().unwrap_or_default();
        assert!(states.len() <= 1, "{round}: {id} has {} containers", states.len());
        match a["desired_state"].as_str().unwrap() {
            "running" => {
                // Asleep in a tier, the engine shows that tier; awake, it runs.
                let (engine, observed): (Vec<&str>, &str) = match a["hibernation"].as_str().unwrap() {
                    "paused" => (vec!["paused"], "paused"),
                    "stopped" => (vec!["exited"], "stopped"),
                    "removed" => (vec![], "absent"),
                    _ => (vec!["running"], "running"),
                };
                assert_eq!(states, engine, "{round}: {id} should be {engine:?}: {a}\n{}", s.log());
                assert_eq!(a["observed_state"], observed, "{round}: store disagrees for {id}: {a}");
            }
            "stopped" => assert!(!states.contains(&"running"), "{round}: {id} should not run: {a}"),
            other => panic!("{round}: {id} left in desired state {other} after reconciliation"),
        }
        let ws = s.workspace(tenant, id);
        for f in ["SOUL.md", "USER.md", "MEMORY.md", "sessions"] {
            assert!(ws.join(f).exists(), "{round}: {id} lost {f}");
        }
        assert!(s.run_dir(id).is_dir(), "{round}: {id} lost its run dir");
    }
    // Pool dirs only for the pool's sandboxes (warming or ready).
    if let Ok(dirs) = std::fs::read_dir(s.data_dir().join("pool")) {
        let n = dirs.count();
        assert!(n <= POOL_SIZE, "{round}: {n} pool dirs");
    }
    // Every agent filesystem (mounted dir and image) belongs to a live agent, or to the pool.
    for entry in std::fs::read_dir(s.data_dir().join("agents")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(agents.contains_key(&name), "{round}: stray agent dir {name}");
    }
    for entry in std::fs::read_dir(s.data_dir().join("volumes")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        // `.pool-N.img.tmp`: a pool sandbox warming right now (being formatted).
        let owner = name.trim_start_matches('.').trim_end_matches(".tmp").trim_end_matches(".img");
        assert!(agents.contains_key(owner) || owner.starts_with("pool-"), "{round}: stray filesystem image {name}");
    }
    let pool_images = std::fs::read_dir(s.data_dir().join("volumes")).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().trim_start_matches('.').starts_with("pool-")).count();
    assert!(pool_images <= POOL_SIZE, "{round}: {pool_images} pool filesystem images");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_lifecycle_then_restart_agrees() {
    let mut s = TestServer::start_with("max_agents = 100", "", &[]).await;
    let (t, key) = s.tenant("survivor").await;
    let tid = t["id"].as_str().unwrap().to_owned();
    let keeper = s.agent(&key, "keeper", true).await;
    let keeper_id = keeper["id"].as_str().unwrap().to_owned();
    let (st, _) = s.post(&format!("/api/v1/agents/{keeper_id}/messages"), &key, json!({"text": "remember the blue door"})).await;
    assert_eq!(st, 200);
    let keeper_session = s.workspace(&tid, &keeper_id).join("sessions/main.jsonl");
    let before = std::fs::read_to_string(&keeper_session).unwrap();

    // Kill points spread over the create → dirs → container create → start → health path.
    let delays_ms = [0u64, 3, 10, 25, 50, 80, 120, 180, 260, 400];
    for (round, delay) in delays_ms.iter().enumerate() {
        let label = format!("round {round} (kill after {delay} ms)");
        // Work in flight: three create+start calls, plus a stop and a delete of earlier agents.
        let (_, list) = s.get("/api/v1/agents", &key).await;
        let others: Vec<String> = list["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .filter(|id| id != &keeper_id)
            .collect();
        let mut inflight = Vec::new();
        for i in 0..3 {
            let (http, url, key) = (s.http.clone(), s.url("/api/v1/agents"), key.clone());
            inflight.push(tokio::spawn(async move {
                let _ = http.post(url).bearer_auth(key).json(&json!({"name": format!("r{round}-{i}"), "start": true})).send().await;
            }));
        }
        if let Some(victim) = others.first() {
            let (http, url, key) = (s.http.clone(), s.url(&format!("/api/v1/agents/{victim}/stop")), key.clone());
            inflight.push(tokio::spawn(async move {
                let _ = http.post(url).bearer_auth(key).send().await;
            }));
        }
        if let Some(victim) = others.get(1) {
            let (http, url, key) = (s.http.clone(), s.url(&format!("/api/v1/agents/{victim}")), key.clone());
            inflight.push(tokio::spawn(async move {
                let _ = http.delete(url).bearer_auth(key).send().await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(*delay)).await;
        s.kill();
        for h in inflight {
            let _ = h.await;
        }
        s.spawn().await;
        assert_agreement(&s, &tid, &key, &label).await;
    }

    // The long-lived agent was adopted every time, and its history is whole.
    let after = std::fs::read_to_string(&keeper_session).unwrap();
    assert!(after.starts_with(&before), "the keeper's session log lost lines");
    let (st, r) = s.post(&format!("/api/v1/agents/{keeper_id}/messages"), &key, json!({"text": "still there?"})).await;
    assert_eq!(st, 200, "{r}");
    let log = s.log();
    assert!(log.contains("adopting sandbox"), "restarts adopt running sandboxes");

    // Finally everything can be deleted cleanly.
    let (_, list) = s.get("/api/v1/agents", &key).await;
    for a in list["agents"].as_array().unwrap() {
        let (st, _) = s.call(Method::DELETE, &format!("/api/v1/agents/{}", a["id"].as_str().unwrap()), Some(&key), None).await;
        assert_eq!(st, 204);
    }
    assert!(s.containers().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_hibernation_and_wake_then_restart_agrees() {
    let mut s = TestServer::start().await;
    let (t, key) = s.tenant("sleeper").await;
    let tid = t["id"].as_str().unwrap().to_owned();
    let mut ids = Vec::new();
    for i in 0..3 {
        let a = s.agent(&key, &format!("s{i}"), true).await;
        ids.push(a["id"].as_str().unwrap().to_owned());
    }
    let delays_ms = [0u64, 5, 15, 30, 60, 100, 150, 250];
    let tiers = ["paused", "stopped", "removed"];
    for (round, delay) in delays_ms.iter().enumerate() {
        let label = format!("round {round} (kill after {delay} ms)");
        let mut inflight = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let (http, key) = (s.http.clone(), key.clone());
            // Even rounds put each agent to sleep (a different tier each round and agent), odd
            // rounds wake them with a message.
            let (url, body) = if round % 2 == 0 {
                (s.url(&format!("/api/v1/agents/{id}/hibernate")), json!({"tier": tiers[(round / 2 + i) % 3]}))
            } else {
                (s.url(&format!("/api/v1/agents/{id}/messages")), json!({"text": format!("{label} to {i}")}))
            };
            inflight.push(tokio::spawn(async move {
                let _ = http.post(url).bearer_auth(key).json(&body).send().await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(*delay)).await;
        s.kill();
        for h in inflight {
            let _ = h.await;
        }
        s.spawn().await;
        assert_agreement(&s, &tid, &key, &label).await;
    }
    // Every agent still answers (waking from wherever it was left) with its history whole.
    for id in &ids {
        let (st, r) = s.post(&format!("/api/v1/agents/{id}/messages"), &key, json!({"text": "last call"})).await;
        assert_eq!(st, 200, "{r}\n{}", s.log());
        let session = std::fs::read_to_string(s.workspace(&tid, id).join("sessions/main.jsonl")).unwrap();
        assert!(session.contains("last call"));
    }
    assert_agreement(&s, &tid, &key, "after the last wake").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn orphans_of_this_installation_are_swept_and_others_left_alone() {
    let mut s = TestServer::start().await;
    let (_, key) = s.tenant("t").await;
    let a = s.agent(&key, "a", true).await;
    let id = a["id"].as_str().unwrap().to_owned();
    let instance = s.instance();
    s.kill();
    // An orphan of this installation (an agent the store does not know) and a container of
    // another installation.
    let image = crate::harness::image();
    let orphan = format!("clawpen-{}-ag_orphanorphanorphanorphanorph", &instance[..8]);
    let foreign = format!("cpt-foreign-{}", std::process::id());
    // Removed even when the test fails: the orphan is the server's to remove, the foreign one ours.
    let _cleanup = RemoveOnDrop(vec![orphan.clone(), foreign.clone()]);
    for (name, inst, agent) in [(&orphan, instance.as_str(), "ag_orphanorphanorphanorphanorph"), (&foreign, "someone-else", "ag_foreignforeignforeignforeig")] {
        let out = std::process::Command::new("docker")
            .args(["create", "--name", name, "--label", &format!("clawpen.instance={inst}"), "--label", &format!("clawpen.agent={agent}"), "--network", "none", image, "agent"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    s.spawn().await;
    let exists = |n: &str| std::process::Command::new("docker").args(["inspect", n]).output().unwrap().status.success();
    let foreign_there = exists(&foreign);
    assert!(!exists(&orphan), "the orphan of this installation is removed");
    assert!(foreign_there, "another installation's container is never touched");
    assert!(s.log().contains("removing orphan sandbox"));
    let (st, _) = s.post(&format!("/api/v1/agents/{id}/messages"), &key, json!({"text": "hi"})).await;
    assert_eq!(st, 200, "the known agent was adopted");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_warm_claims_then_restart_agrees() {
    let mut s = TestServer::start_full("max_agents = 100\nmessages_per_minute = 1000", "", &format!("[fleet]\nwarm_pool = {POOL_SIZE}\n"), &[]).await;
    let (t, key) = s.tenant("claimer").await;
    let tid = t["id"].as_str().unwrap().to_owned();
    s.pool_ready(POOL_SIZE as u64).await;
    // A claimed agent with a history, adopted across every restart.
    let keeper = s.agent(&key, "keeper", true).await["id"].as_str().unwrap().to_owned();
    let (st, _) = s.post(&format!("/api/v1/agents/{keeper}/messages"), &key, json!({"text": "remember the red door"})).await;
    assert_eq!(st, 200);
    let keeper_session = s.workspace(&tid, &keeper).join("sessions/main.jsonl");
    let before = std::fs::read_to_string(&keeper_session).unwrap();

    // A claim takes tens of milliseconds: kill points spread over it and the refill after it.
    let delays_ms = [0u64, 2, 5, 8, 12, 18, 25, 35, 50, 80, 150];
    for (round, delay) in delays_ms.iter().enumerate() {
        let label = format!("claim round {round} (kill after {delay} ms)");
        s.pool_ready(POOL_SIZE as u64).await;
        let mut inflight = Vec::new();
        for i in 0..2 {
            let (http, url, key) = (s.http.clone(), s.url("/api/v1/agents"), key.clone());
            inflight.push(tokio::spawn(async move {
                let _ = http.post(url).bearer_auth(key).json(&json!({"name": format!("c{round}-{i}"), "start": true})).send().await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(*delay)).await;
        s.kill();
        for h in inflight {
            let _ = h.await;
        }
        s.spawn().await;
        assert_agreement(&s, &tid, &key, &label).await;
    }
    let log = s.log();
    assert!(log.contains("claimed a warm-pool sandbox"), "claims happened");
    assert!(log.contains("removing an unclaimed warm-pool sandbox"), "restarts sweep the pool");
    eprintln!(
        "claims finished after a kill: {}, undone: {}",
        log.matches("finished an interrupted claim").count(),
        log.matches("undoing an interrupted claim").count()
    );

    // Every agent answers (a claim left half-done was finished or undone) as itself, and the
    // keeper's history is whole.
    let (_, list) = s.get("/api/v1/agents", &key).await;
    for a in list["agents"].as_array().unwrap() {
        let id = a["id"].as_str().unwrap();
        let (st, r) = s.post(&format!("/api/v1/agents/{id}/messages"), &key, json!({"text": "still there?"})).await;
        assert_eq!(st, 200, "{id}: {r}\n{}", s.log());
        assert_eq!(r["reply"], "stand-in reply to: still there?");
    }
    assert!(std::fs::read_to_string(&keeper_session).unwrap().starts_with(&before), "the keeper's session log lost lines");
    assert_agreement(&s, &tid, &key, "after the messages").await;
}

/// Force-removes these containers when dropped (a test that fails midway leaves none behind).
struct RemoveOnDrop(Vec<String>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker").arg("rm").arg("-f").args(&self.0).output();
    }
}
