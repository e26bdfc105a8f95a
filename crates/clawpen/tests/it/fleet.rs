//! The fleet on real Docker: hibernation tiers (paused, stopped, removed) each woken by a message
//! with the workspace intact; health checks that restart a hung agent; the crash-loop guard
//! tripping on an agent that exits at once, and on one killed for memory, while another tenant
//! goes on undisturbed, also when the server is SIGKILLed in the middle of the restarts;
//! admission by the node's memory budget; SIGTERM draining requests.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::TestServer;

/// An image built for one test from a tiny static C program standing in for a broken agent
/// build (`FROM scratch`, the program as `/clawpen`); removed when dropped.
struct BrokenImage(String);

impl BrokenImage {
    fn build(what: &str, c_source: &str) -> BrokenImage {
        let dir = tempfile::Builder::new().prefix("cpt-img-").tempdir_in("/tmp").unwrap();
        std::fs::write(dir.path().join("main.c"), c_source).unwrap();
        let cc = Command::new("cc").args(["-static", "-O1", "-o"]).arg(dir.path().join("clawpen")).arg(dir.path().join("main.c")).output().expect("run cc");
        assert!(cc.status.success(), "cc: {}", String::from_utf8_lossy(&cc.stderr));
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY clawpen /clawpen\n").unwrap();
        let tag = format!("clawpen-test-{what}:{}", &uuid_ish()[..12]);
        let out = Command::new("docker").env("DOCKER_BUILDKIT", "0").args(["build", "-q", "-t", &tag]).arg(dir.path()).output().expect("docker build");
        assert!(out.status.success(), "docker build: {}", String::from_utf8_lossy(&out.stderr));
        BrokenImage(tag)
    }
}

impl Drop for BrokenImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

fn uuid_ish() -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{:x}{:x}", n, std::process::id())
}

/// The engine's state of a container: `running`, `paused`, `exited`, or `absent`.
fn engine_state(name: &str) -> String {
    let out = Command::new("docker").args(["inspect", "-f", "{{.State.Status}}", name]).output().unwrap();
    if !out.status.success() {
        return "absent".into();
    }
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn agent_view(s: &TestServer, key: &str, id: &str) -> Value {
    let (st, a) = s.get(&format!("/api/v1/agents/{id}"), key).await;
    assert_eq!(st, 200, "{a}");
    a
}

/// Polls the agent until `pred` holds (at most `secs`).
async fn wait_for(s: &TestServer, key: &str, id: &str, secs: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let a = agent_view(s, key, id).await;
        if pred(&a) {
            return a;
        }
        assert!(Instant::now() < deadline, "waited {secs} s for {what}; agent: {a}\nlog:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn events(s: &TestServer, key: &str, id: &str) -> Vec<Value> {
    let (st, e) = s.get(&format!("/api/v1/agents/{id}/events?limit=1000"), key).await;
    assert_eq!(st, 200, "{e}");
    let mut v = e["entries"].as_array().unwrap().clone();
    v.sort_by_key(|e| e["id"].as_i64());
    v
}

async fn message(s: &TestServer, key: &str, id: &str, text: &str) -> Value {
    let (st, r) = s.post(&format!("/api/v1/agents/{id}/messages"), key, json!({"text": text})).await;
    assert_eq!(st, 200, "{r}\nlog:\n{}", s.log());
    assert_eq!(r["reply"], format!("stand-in reply to: {text}"), "{r}");
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_agents_sink_through_the_tiers_and_a_message_wakes_each() {
    // Free plan: paused after 2 s idle, stopped after 4 s, removed after 6 s. Standard plan: none
    // of that within the test.
    let s = TestServer::start_full(
        "idle_pause_secs = 2\nidle_stop_secs = 4\nidle_remove_secs = 6",
        "",
        "[fleet]\ntick_ms = 100\n",
        &[],
    )
    .await;
    let (ta, ka) = s.tenant("sleepy").await;
    let tid = ta["id"].as_str().unwrap().to_owned();
    let a = s.agent(&ka, "dozer", true).await;
    let id = a["id"].as_str().unwrap().to_owned();
    let (_, kb) = s.tenant_on("busy", "standard").await;
    let b = s.agent(&kb, "awake", true).await;
    let bid = b["id"].as_str().unwrap().to_owned();
    message(&s, &ka, &id, "first words").await;

    // Left alone, the agent goes down every tier in order; the engine agrees at each.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = agent_view(&s, &ka, &id).await;
        let tier = v["hibernation"].as_str().unwrap().to_owned();
        if seen.last() != Some(&tier) {
            let engine = engine_state(&s.container(&id));
            match tier.as_str() {
                "paused" if v["observed_state"] == "paused" => assert_eq!(engine, "paused", "{v}"),
                "stopped" if v["observed_state"] == "stopped" => assert_eq!(engine, "exited", "{v}"),
                "removed" if v["observed_state"] == "absent" => assert_eq!(engine, "absent", "{v}"),
                _ => {}
            }
            seen.push(tier.clone());
        }
        if tier == "removed" && v["observed_state"] == "absent" {
            break;
        }
        assert!(Instant::now() < deadline, "never reached the removed tier: {seen:?}\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, ["awake", "paused", "stopped", "removed"], "tiers in order");
    // The audit line follows the step it records.
    let mut tiers: Vec<String> = Vec::new();
    for _ in 0..50 {
        tiers = events(&s, &ka, &id)
            .await
            .iter()
            .filter(|e| e["action"] == "agent.hibernate")
            .map(|e| format!("{} ({})", e["detail"]["tier"].as_str().unwrap(), e["reason"].as_str().unwrap()))
            .collect();
        if tiers.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tiers.len(), 3, "{tiers:?}");
    assert!(tiers[0].starts_with("paused (idle for 2 s") || tiers[0].starts_with("paused (idle for 3 s"), "{tiers:?}");
    assert!(tiers[2].starts_with("removed"), "{tiers:?}");

    // A message wakes it from the removed tier; the workspace kept everything.
    message(&s, &ka, &id, "back from removed").await;
    let v = agent_view(&s, &ka, &id).await;
    assert_eq!((v["observed_state"].as_str(), v["hibernation"].as_str()), (Some("running"), Some("awake")), "{v}");
    assert_eq!(engine_state(&s.container(&id)), "running");
    // And from the paused and stopped tiers (put there at once by the owner).
    for tier in ["paused", "stopped"] {
        let (st, v) = s.post(&format!("/api/v1/agents/{id}/hibernate"), &ka, json!({"tier": tier})).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["hibernation"], tier);
        assert_eq!(engine_state(&s.container(&id)), if tier == "paused" { "paused" } else { "exited" });
        message(&s, &ka, &id, &format!("back from {tier}")).await;
        assert_eq!(engine_state(&s.container(&id)), "running");
    }
    let session = std::fs::read_to_string(s.workspace(&tid, &id).join("sessions/main.jsonl")).unwrap();
    for text in ["first words", "back from removed", "back from paused", "back from stopped"] {
        assert!(session.contains(text), "the session lost {text:?}:\n{session}");
    }
    for f in ["SOUL.md", "USER.md", "MEMORY.md"] {
        assert!(s.workspace(&tid, &id).join(f).exists(), "lost {f}");
    }
    let wakes: Vec<String> =
        events(&s, &ka, &id).await.iter().filter(|e| e["action"] == "agent.wake").map(|e| e["detail"]["from"].as_str().unwrap().to_owned()).collect();
    assert_eq!(wakes, ["removed", "paused", "stopped"]);

    // The idle clock starts again at each wake: right after one the agent is awake, and it sinks
    // again only after another idle period.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(agent_view(&s, &ka, &id).await["hibernation"], "awake", "hibernated too early after a wake");
    wait_for(&s, &ka, &id, 10, "the paused tier again", |v| v["hibernation"] == "paused").await;

    // The other tenant's agent, on a plan with long tiers, ran throughout.
    let vb = agent_view(&s, &kb, &bid).await;
    assert_eq!((vb["observed_state"].as_str(), vb["hibernation"].as_str()), (Some("running"), Some("awake")), "{vb}");
    assert!(events(&s, &kb, &bid).await.iter().all(|e| e["action"] != "agent.hibernate"));
    // A tier name that is not one is refused, and nothing changes.
    let (st, e) = s.post(&format!("/api/v1/agents/{bid}/hibernate"), &kb, json!({"tier": "frozen"})).await;
    assert_eq!((st, e["error"]["code"].as_str()), (422, Some("invalid_input")), "{e}");
    // One tenant cannot put another's agent to sleep.
    let (st, _) = s.post(&format!("/api/v1/agents/{bid}/hibernate"), &ka, json!({"tier": "paused"})).await;
    assert_eq!(st, 404);
    assert_eq!(engine_state(&s.container(&bid)), "running");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_agent_fails_its_health_checks_and_is_restarted() {
    let s = TestServer::start_full("", "", "[fleet]\ntick_ms = 100\nhealth_every_secs = 1\nhealth_timeout_ms = 300\nhealth_failures = 2\n", &[]).await;
    let (_, key) = s.tenant("hangs").await;
    let a = s.agent(&key, "stuck", true).await;
    let id = a["id"].as_str().unwrap().to_owned();
    // Frozen behind the server's back: its socket takes connections but nothing answers.
    let out = Command::new("docker").args(["pause", &s.container(&id)]).output().unwrap();
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ev = events(&s, &key, &id).await;
        if ev.iter().any(|e| e["action"] == "agent.restart") && engine_state(&s.container(&id)) == "running" {
            let unhealthy = ev.iter().filter(|e| e["action"] == "agent.unhealthy").count();
            assert!(unhealthy >= 2, "{ev:?}");
            let restart = ev.iter().find(|e| e["action"] == "agent.restart").unwrap();
            assert_eq!(restart["reason"], "2 health checks in a row failed");
            break;
        }
        assert!(Instant::now() < deadline, "the hung agent was not restarted\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(&s, &key, &id, 10, "running again", |v| v["observed_state"] == "running").await;
    message(&s, &key, &id, "are you back").await;
}

const EXIT_AT_ONCE: &str = "int main(void) { return 3; }\n";
const EAT_MEMORY: &str = "#include <stdlib.h>\n#include <string.h>\nint main(void) { for (;;) { char *p = malloc(1 << 20); if (p) memset(p, 1, 1 << 20); } }\n";

#[tokio::test(flavor = "multi_thread")]
async fn crashing_agents_trip_the_guard_after_five_restarts_and_others_go_on() {
    let crash = BrokenImage::build("crash", EXIT_AT_ONCE);
    let hog = BrokenImage::build("hog", EAT_MEMORY);
    let extra = format!(
        "[fleet]\ntick_ms = 100\nrestart_backoff_ms = 100\nrestart_backoff_max_ms = 400\n\n\
         [plans.broken]\nimage = \"{}\"\n\n[plans.hog]\nimage = \"{}\"\nmemory_mib = 32\n",
        crash.0, hog.0
    );
    let s = TestServer::start_full("", "", &extra, &[]).await;
    let (kc, ko, kg) = (s.tenant_on("crashy", "broken").await.1, s.tenant_on("hungry", "hog").await.1, s.tenant_on("steady", "standard").await.1);
    let good = s.agent(&kg, "steady", true).await;
    let gid = good["id"].as_str().unwrap().to_owned();

    // The start itself fails at once with the exit code; the guard then restarts it with backoff.
    let (st, e) = s.post("/api/v1/agents", &kc, json!({"name": "crashy", "start": true})).await;
    assert_eq!((st, e["error"]["code"].as_str()), (502, Some("agent_exited")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("exited with code 3"), "{e}");
    let (_, list) = s.get("/api/v1/agents", &kc).await;
    let cid = list["agents"][0]["id"].as_str().unwrap().to_owned();
    let (st, e) = s.post("/api/v1/agents", &ko, json!({"name": "hungry", "start": true})).await;
    assert_eq!(st, 502, "{e}");
    let (_, list) = s.get("/api/v1/agents", &ko).await;
    let oid = list["agents"][0]["id"].as_str().unwrap().to_owned();

    // While both loop, the other tenant's agent answers every message.
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        message(&s, &kg, &gid, &format!("still here {answered}")).await;
        answered += 1;
        let (c, o) = (agent_view(&s, &kc, &cid).await, agent_view(&s, &ko, &oid).await);
        if c["observed_state"] == "crashloop" && o["observed_state"] == "crashloop" {
            break;
        }
        assert!(Instant::now() < deadline, "no crash loop yet: {c}\n{o}\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(answered >= 3, "the steady tenant was asked only {answered} times");

    let c = agent_view(&s, &kc, &cid).await;
    assert_eq!(c["exit_code"], 3, "{c}");
    assert_eq!(c["restarts"], 5, "{c}");
    let why = c["last_error"].as_str().unwrap();
    assert!(why.contains("exited with code 3") && why.contains("5 restarts"), "{c}");
    let ev = events(&s, &kc, &cid).await;
    assert_eq!(ev.iter().filter(|e| e["action"] == "agent.restart").count(), 5, "{ev:?}");
    assert_eq!(ev.iter().filter(|e| e["action"] == "agent.crashloop").count(), 1, "{ev:?}");
    assert_ne!(engine_state(&s.container(&cid)), "running");

    let o = agent_view(&s, &ko, &oid).await;
    let why = o["last_error"].as_str().unwrap();
    assert!(why.contains("killed for memory (OOM"), "{o}");
    assert!(o["oom_count"].as_i64().unwrap() >= 1, "{o}");

    // A crash-looping agent is not woken by a message: that takes a manual start.
    let (st, e) = s.post(&format!("/api/v1/agents/{cid}/messages"), &kc, json!({"text": "hello?"})).await;
    assert_eq!((st, e["error"]["code"].as_str()), (409, Some("agent_crashloop")), "{e}");
    // Left alone it stays down: no further restarts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(events(&s, &kc, &cid).await.iter().filter(|e| e["action"] == "agent.restart").count(), 5);
    // A manual start clears the guard (and, the image being broken still, the loop begins anew).
    let (st, _) = s.post(&format!("/api/v1/agents/{cid}/start"), &kc, json!({})).await;
    assert_eq!(st, 502);
    let c = agent_view(&s, &kc, &cid).await;
    assert_ne!(c["observed_state"], "crashloop", "{c}");
    assert!(c["restarts"].as_i64().unwrap() <= 1, "{c}");
    // Stop it for good; the steady agent was never restarted.
    let (st, _) = s.post(&format!("/api/v1/agents/{cid}/stop"), &kc, json!({})).await;
    assert_eq!(st, 200);
    let g = agent_view(&s, &kg, &gid).await;
    assert_eq!((g["observed_state"].as_str(), g["restarts"].as_i64()), (Some("running"), Some(0)), "{g}");
    assert!(events(&s, &kg, &gid).await.iter().all(|e| e["action"] != "agent.restart" && e["action"] != "agent.exited"));
}

#[tokio::test(flavor = "multi_thread")]
async fn starts_past_the_node_memory_budget_are_refused_never_overcommitted() {
    // Room for two sandboxes of the free plan (128 MiB each), not three.
    let s = TestServer::start_full("", "", "[fleet]\nnode_memory_mib = 300\n", &[]).await;
    let (_, key) = s.tenant("crowd").await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(s.agent(&key, &format!("c{i}"), false).await["id"].as_str().unwrap().to_owned());
    }
    // Four starts at once: exactly two are admitted.
    let paths: Vec<String> = ids.iter().map(|id| format!("/api/v1/agents/{id}/start")).collect();
    let starts = paths.iter().map(|p| s.post(p, &key, json!({})));
    let results = futures_util::future::join_all(starts).await;
    let admitted: Vec<&str> = ids.iter().zip(&results).filter(|(_, (st, _))| *st == 200).map(|(id, _)| id.as_str()).collect();
    let refused: Vec<&Value> = results.iter().filter(|(st, _)| *st != 200).map(|(_, e)| e).collect();
    assert_eq!(admitted.len(), 2, "{results:?}");
    for e in &refused {
        assert_eq!(e["error"]["code"], "node_full", "{e}");
        let m = e["error"]["message"].as_str().unwrap();
        assert!(m.contains("256 of its 300 MiB") && m.contains("node_memory_mib"), "{m}");
    }
    let running: Vec<String> = s.containers().into_iter().filter(|c| c.2 == "running").map(|c| c.1).collect();
    assert_eq!(running.len(), 2, "only the admitted agents run: {running:?}");
    let refused_id = ids.iter().find(|id| !admitted.contains(&id.as_str())).unwrap().clone();
    assert!(s.containers().iter().all(|c| c.1 != refused_id), "a refused start leaves no container");
    let (_, v) = s.get(&format!("/api/v1/agents/{refused_id}"), &key).await;
    assert_eq!(v["desired_state"], "stopped", "a refused start changes nothing: {v}");

    // A paused agent keeps its memory; a stopped one gives it back.
    let (st, _) = s.post(&format!("/api/v1/agents/{}/hibernate", admitted[0]), &key, json!({"tier": "paused"})).await;
    assert_eq!(st, 200);
    let (st, e) = s.post(&format!("/api/v1/agents/{refused_id}/start"), &key, json!({})).await;
    assert_eq!((st, e["error"]["code"].as_str()), (503, Some("node_full")), "{e}");
    let (st, _) = s.post(&format!("/api/v1/agents/{}/hibernate", admitted[0]), &key, json!({"tier": "stopped"})).await;
    assert_eq!(st, 200);
    let (st, e) = s.post(&format!("/api/v1/agents/{refused_id}/start"), &key, json!({})).await;
    assert_eq!(st, 200, "{e}");
    // Now the sleeper cannot wake: its message is refused with the same clear error, and it
    // answers once room is made.
    let (st, e) = s.post(&format!("/api/v1/agents/{}/messages", admitted[0]), &key, json!({"text": "wake up"})).await;
    assert_eq!((st, e["error"]["code"].as_str()), (503, Some("node_full")), "{e}");
    let (st, _) = s.post(&format!("/api/v1/agents/{refused_id}/stop"), &key, json!({})).await;
    assert_eq!(st, 200);
    message(&s, &key, admitted[0], "wake up").await;
}

/// `docker inspect` of one field.
fn inspect_field(name: &str, field: &str) -> String {
    let out = Command::new("docker").args(["inspect", "-f", field, name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_messages_and_the_next_server_adopts_the_sandboxes() {
    // A slow model (20 ms between streamed tokens): a message takes about a second.
    let mut s = TestServer::start_with("", "default_model = \"gpt-slow\"", &[]).await;
    let (_, key) = s.tenant("upgrade").await;
    let a = s.agent(&key, "steady", true).await;
    let id = a["id"].as_str().unwrap().to_owned();
    let container = s.container(&id);
    let started_at = inspect_field(&container, "{{.State.StartedAt}}");
    let text = "tell me a long story about the sea and the ships and the lighthouse keeper who counted every wave for forty years";
    let (http, url, k) = (s.http.clone(), s.url(&format!("/api/v1/agents/{id}/messages")), key.clone());
    let inflight = tokio::spawn(async move {
        let res = http.post(url).bearer_auth(k).json(&json!({"text": text})).send().await.expect("the in-flight request is answered");
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!inflight.is_finished(), "the message should still be in flight");
    let t0 = Instant::now();
    let clean = tokio::task::spawn_blocking(move || {
        let ok = s.terminate();
        (s, ok)
    });
    let (st, reply) = inflight.await.unwrap();
    let (mut s, clean) = clean.await.unwrap();
    assert_eq!(st, 200, "the in-flight message was drained, not cut: {reply}");
    assert_eq!(reply["reply"], format!("stand-in reply to: {text}"));
    assert!(clean, "the server exits cleanly on SIGTERM\n{}", s.log());
    assert!(t0.elapsed() < Duration::from_secs(20));
    // The sandbox was never stopped: the next server adopts it as it is.
    assert_eq!(engine_state(&container), "running");
    s.spawn().await;
    assert!(s.log().contains("adopting sandbox"), "{}", s.log());
    let (st, r) = s.post(&format!("/api/v1/agents/{id}/messages"), &key, json!({"text": "still you?"})).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(inspect_field(&container, "{{.State.StartedAt}}"), started_at, "the sandbox kept running across the upgrade");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_restarts_and_the_crash_loop_then_restart_agrees() {
    let crash = BrokenImage::build("crash", EXIT_AT_ONCE);
    let extra = format!("[fleet]\ntick_ms = 100\nrestart_backoff_ms = 100\nrestart_backoff_max_ms = 400\n\n[plans.broken]\nimage = \"{}\"\n", crash.0);
    let mut s = TestServer::start_full("", "", &extra, &[]).await;
    let ((ct, kc), (gt, kg)) = (s.tenant_on("crashy", "broken").await, s.tenant_on("steady", "standard").await);
    let (ct, gt) = (ct["id"].as_str().unwrap().to_owned(), gt["id"].as_str().unwrap().to_owned());
    let good = s.agent(&kg, "steady", true).await;
    let gid = good["id"].as_str().unwrap().to_owned();
    message(&s, &kg, &gid, "before the kills").await;
    let (st, _) = s.post("/api/v1/agents", &kc, json!({"name": "crashy", "start": true})).await;
    assert_eq!(st, 502);
    let (_, list) = s.get("/api/v1/agents", &kc).await;
    let cid = list["agents"][0]["id"].as_str().unwrap().to_owned();

    // Kills land in backoff waits, restarts and starts of the crashing agent.
    for delay in [50u64, 150, 300, 500, 800, 1200] {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        s.kill();
        s.spawn().await;
        let mut per_agent: std::collections::HashMap<String, usize> = Default::default();
        for (name, agent, _) in s.containers() {
            assert!(agent == cid || agent == gid, "after a kill at {delay} ms: orphan container {name}");
            *per_agent.entry(agent).or_default() += 1;
        }
        assert!(per_agent.values().all(|n| *n <= 1), "after a kill at {delay} ms: {per_agent:?}");
        let g = agent_view(&s, &kg, &gid).await;
        assert_eq!(g["observed_state"], "running", "the steady agent after a kill at {delay} ms: {g}");
        for f in ["SOUL.md", "USER.md", "MEMORY.md"] {
            assert!(s.workspace(&ct, &cid).join(f).exists(), "the crashing agent lost {f}");
        }
    }
    // The guard still trips, counting restarts across the server's restarts, and stays tripped
    // through one more.
    wait_for(&s, &kc, &cid, 60, "the crash loop", |v| v["observed_state"] == "crashloop").await;
    s.kill();
    s.spawn().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let c = agent_view(&s, &kc, &cid).await;
    assert_eq!(c["observed_state"], "crashloop", "a restart of the server keeps the guard tripped: {c}");
    assert_ne!(engine_state(&s.container(&cid)), "running");
    message(&s, &kg, &gid, "after the kills").await;
    let session = std::fs::read_to_string(s.workspace(&gt, &gid).join("sessions/main.jsonl")).unwrap();
    assert!(session.contains("before the kills") && session.contains("after the kills"));
}
