//! The warm pool: a new agent's first start claims a ready pool sandbox (no container create),
//! answers as itself, runs as its own uid, and the pool refills; plans with other limits and a
//! server without a pool start cold; a claimed agent stopped and started again gets its own
//! container.

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use serde_json::{json, Value};

use crate::harness::TestServer;

/// Two pool sandboxes, and a plan whose limits differ from the pool's (the default plan's).
const POOL: &str = "[fleet]\nwarm_pool = 2\n\n[plans.big]\nmemory_mib = 192\nmax_agents = 5\n";

fn inspect(container: &str) -> Value {
    let out = Command::new("docker").args(["inspect", container]).output().unwrap();
    assert!(out.status.success(), "docker inspect {container}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone()
}

/// The audit lines of an agent, newest first.
async fn events(s: &TestServer, key: &str, id: &str) -> Vec<Value> {
    let (st, ev) = s.get(&format!("/api/v1/agents/{id}/events"), key).await;
    assert_eq!(st, 200, "{ev}");
    ev["entries"].as_array().unwrap().clone()
}

/// The `kind` of the agent's latest start.
async fn start_kind(s: &TestServer, key: &str, id: &str) -> String {
    let ev = events(s, key, id).await;
    let start = ev.iter().find(|e| e["action"] == "agent.start").unwrap_or_else(|| panic!("no agent.start: {ev:?}"));
    start["detail"]["kind"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_agent_claims_a_warm_sandbox_and_the_pool_refills() {
    let s = TestServer::start_full("", "", POOL, &[]).await;
    let (t, key) = s.tenant("warm").await;
    let tid = t["id"].as_str().unwrap().to_owned();
    let pool = s.pool_ready(2).await;
    assert_eq!(pool.len(), 2, "{pool:?}");

    let a = s.agent(&key, "helper", true).await;
    let id = a["id"].as_str().unwrap().to_owned();
    assert_eq!(a["observed_state"], "running", "{a}");
    // No container was made for it: its sandbox is one the pool had ready.
    let c = inspect(&s.container(&id));
    let cid = c["Id"].as_str().unwrap().to_owned();
    assert!(pool.contains(&cid), "{cid} is not one of the pool's {pool:?}");
    assert_eq!(start_kind(&s, &key, &id).await, "warm");
    assert!(events(&s, &key, &id).await.iter().any(|e| e["action"] == "agent.claim"));
    assert_eq!(s.metric(r#"clawpen_agent_starts_total{kind="warm"}"#).await, 1);
    assert_eq!(s.metric(r#"clawpen_agent_starts_total{kind="cold"}"#).await, 0);

    // It answers as itself, through the meter, and keeps its session in its seeded workspace.
    let (st, r) = s.post(&format!("/api/v1/agents/{id}/messages"), &key, json!({"text": "hello warm"})).await;
    assert_eq!(st, 200, "{r}\n{}", s.log());
    assert_eq!(r["reply"], "stand-in reply to: hello warm");
    let ws = s.workspace(&tid, &id);
    for f in ["SOUL.md", "USER.md", "MEMORY.md", "memory", "sessions"] {
        assert!(ws.join(f).exists(), "workspace lacks {f}");
    }
    assert!(std::fs::read_to_string(ws.join("sessions/main.jsonl")).unwrap().contains("stand-in reply to: hello warm"));
    // Its own uid: the pool sandbox's, not the tenant's; its dirs and files are that uid's.
    let uid: u64 = c["Config"]["User"].as_str().unwrap().split(':').next().unwrap().parse().unwrap();
    assert_ne!(uid, t["uid"].as_u64().unwrap());
    for p in [ws.clone(), ws.join("SOUL.md"), ws.join("sessions/main.jsonl"), s.run_dir(&id), s.run_dir(&id).join("control.sock")] {
        assert_eq!(std::fs::metadata(&p).unwrap().uid() as u64, uid, "{}", p.display());
    }
    let identity = s.run_dir(&id).join("identity.json");
    let m = std::fs::metadata(&identity).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o444), "the identity file is root's and read-only");

    // The pool fills up again, with new sandboxes.
    let refilled = s.pool_ready(2).await;
    assert!(!refilled.contains(&cid), "{refilled:?}");
    assert_eq!(s.data_dir().join("pool").read_dir().unwrap().count(), 2, "one dir per pool sandbox, the claimed slot's moved");

    // A plan with other limits never gets a pool sandbox: its start is cold.
    let (_, big_key) = s.tenant_on("big", "big").await;
    let b = s.agent(&big_key, "big", true).await;
    let bid = b["id"].as_str().unwrap().to_owned();
    assert_eq!(start_kind(&s, &big_key, &bid).await, "cold");
    let bc = inspect(&s.container(&bid));
    assert!(!refilled.contains(&bc["Id"].as_str().unwrap().to_owned()));
    assert_eq!(bc["Config"]["Labels"]["clawpen.role"], "agent");
    assert_eq!(bc["HostConfig"]["Memory"].as_u64(), Some(192 * 1024 * 1024));
    let (st, r) = s.post(&format!("/api/v1/agents/{bid}/messages"), &big_key, json!({"text": "cold one"})).await;
    assert_eq!((st, r["reply"].as_str()), (200, Some("stand-in reply to: cold one")), "{r}");
    assert_eq!(s.metric(r#"clawpen_agent_starts_total{kind="cold"}"#).await, 1);
    assert_eq!(s.metric("clawpen_warm_pool_ready").await, 2, "the pool was left alone");

    // Stopped and started again, the claimed agent gets its own container; the workspace stays.
    let (st, a) = s.post(&format!("/api/v1/agents/{id}/stop"), &key, json!({})).await;
    assert_eq!((st, a["observed_state"].as_str()), (200, Some("stopped")), "{a}");
    let (st, a) = s.post(&format!("/api/v1/agents/{id}/start"), &key, json!({})).await;
    assert_eq!((st, a["observed_state"].as_str()), (200, Some("running")), "{a}\n{}", s.log());
    let c2 = inspect(&s.container(&id));
    assert_ne!(c2["Id"], c["Id"], "a stopped claimed sandbox is made again");
    assert_eq!(c2["Config"]["Labels"]["clawpen.role"], "agent");
    assert_eq!(c2["Config"]["User"], c["Config"]["User"], "same uid");
    let (st, r) = s.post(&format!("/api/v1/agents/{id}/messages"), &key, json!({"text": "after the restart"})).await;
    assert_eq!((st, r["reply"].as_str()), (200, Some("stand-in reply to: after the restart")), "{r}");
    let session = std::fs::read_to_string(ws.join("sessions/main.jsonl")).unwrap();
    assert!(session.contains("hello warm") && session.contains("after the restart"), "{session}");

    // Deleting it leaves no container of it; the pool's are still there.
    let (st, _) = s.delete(&format!("/api/v1/agents/{id}"), &key).await;
    assert_eq!(st, 204);
    assert!(s.containers().iter().all(|(_, agent, _)| agent != &id));
    assert!(!ws.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_tenants_claimed_agents_run_as_different_uids_and_see_only_their_own_data() {
    let s = TestServer::start_with_probe("", POOL).await;
    let (ta, key_a) = s.tenant("alpha").await;
    let (tb, key_b) = s.tenant("beta").await;
    s.pool_ready(2).await;
    let a = s.agent(&key_a, "a", true).await["id"].as_str().unwrap().to_owned();
    let b = s.agent(&key_b, "b", true).await["id"].as_str().unwrap().to_owned();
    assert_eq!(start_kind(&s, &key_a, &a).await, "warm");
    assert_eq!(start_kind(&s, &key_b, &b).await, "warm");
    let uid = |id: &str| -> u64 { inspect(&s.container(id))["Config"]["User"].as_str().unwrap().split(':').next().unwrap().parse().unwrap() };
    let (uid_a, uid_b) = (uid(&a), uid(&b));
    assert_ne!(uid_a, uid_b, "claimed agents never share a uid");
    for u in [uid_a, uid_b] {
        assert!(u != ta["uid"].as_u64().unwrap() && u != tb["uid"].as_u64().unwrap(), "a pool uid is no tenant's");
    }
    let (ws_a, ws_b) = (s.workspace(ta["id"].as_str().unwrap(), &a), s.workspace(tb["id"].as_str().unwrap(), &b));
    assert_eq!(std::fs::metadata(&ws_a).unwrap().uid() as u64, uid_a);
    assert_eq!(std::fs::metadata(&ws_b).unwrap().uid() as u64, uid_b);

    // Each sees its own /data and nothing of the other's, from inside its sandbox.
    let marker = format!("B-POOL-{}", std::process::id());
    std::fs::write(ws_b.join("MEMORY.md"), format!("# MEMORY\n{marker}\n")).unwrap();
    let probe = |id: &str, paths: &[String]| -> Value {
        let mut args = vec!["exec".to_owned(), s.container(id), "/probe".into(), "read-paths".into(), "--marker".into(), marker.clone()];
        for p in paths {
            args.extend(["--path".to_owned(), p.clone()]);
        }
        let out = Command::new("docker").args(&args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null)
    };
    let from_a = probe(&a, &[ws_b.join("MEMORY.md").display().to_string(), format!("/run/clawpen/../{b}"), "/data/MEMORY.md".into()]);
    assert_eq!(from_a["any_marker_found"], false, "A found B's marker: {from_a:#}");
    let from_b = probe(&b, &["/data/MEMORY.md".into()]);
    assert_eq!(from_b["any_marker_found"], true, "B reads its own /data: {from_b:#}");
    let id_a = Command::new("docker").args(["exec", &s.container(&a), "/probe", "identity"]).output().unwrap();
    let id_a: Value = String::from_utf8_lossy(&id_a.stdout).lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap();
    assert_eq!(id_a["uid"].as_u64(), Some(uid_a), "{id_a}");
    for (id, key) in [(&a, &key_a), (&b, &key_b)] {
        let (st, r) = s.post(&format!("/api/v1/agents/{id}/messages"), key, json!({"text": "who are you"})).await;
        assert_eq!(st, 200, "each answers as itself: {r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_pool_a_start_is_cold_and_works() {
    let s = TestServer::start_full("", "", "[fleet]\nwarm_pool = 0\n", &[]).await;
    let (_, key) = s.tenant("cold").await;
    let a = s.agent(&key, "c", true).await;
    let id = a["id"].as_str().unwrap().to_owned();
    assert_eq!(start_kind(&s, &key, &id).await, "cold");
    assert_eq!(s.metric(r#"clawpen_agent_starts_total{kind="cold"}"#).await, 1);
    assert_eq!(s.metric("clawpen_warm_pool_ready").await, 0);
    assert!(s.pool_containers().is_empty());
    let (st, r) = s.post(&format!("/api/v1/agents/{id}/messages"), &key, json!({"text": "hi"})).await;
    assert_eq!((st, r["reply"].as_str()), (200, Some("stand-in reply to: hi")), "{r}");
    // /metrics holds no tenant data.
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains(&id) && !text.contains("tn_"), "{text}");
}
