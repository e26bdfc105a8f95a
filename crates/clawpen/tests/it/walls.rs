//! The two walls side by side: a tenant on a runsc (gVisor) plan and one on a runc plan, on one
//! server. Each plan's agents start warm from a pool sandbox of their own runtime, and the probe
//! in each sandbox finds nothing of the other tenant.

use std::process::Command;

use serde_json::{json, Value};

use crate::harness::{TestServer, Wall};

fn runtime_of(container: &str) -> String {
    let out = Command::new("docker").args(["inspect", "-f", "{{.HostConfig.Runtime}}", container]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn start_kind(s: &TestServer, key: &str, id: &str) -> String {
    let (_, ev) = s.get(&format!("/api/v1/agents/{id}/events"), key).await;
    let list = ev["entries"].as_array().unwrap();
    let start = list.iter().find(|e| e["action"] == "agent.start").unwrap_or_else(|| panic!("no agent.start: {ev}"));
    start["detail"]["kind"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runsc_tenant_and_a_runc_tenant_run_side_by_side_and_find_nothing_of_each_other() {
    Wall::Runsc.require();
    let s = TestServer::start_with_probe("", "[fleet]\nwarm_pool = 1\n\n[plans.gvisor]\nruntime = \"runsc\"\nwarm_pool = 1\n").await;
    // One warm sandbox of each runtime.
    let pool = s.pool_ready(2).await;
    let mut runtimes: Vec<String> = pool.iter().map(|c| runtime_of(c)).collect();
    runtimes.sort();
    assert_eq!(runtimes, ["runc", "runsc"], "{pool:?}");

    let (tg, key_g) = s.tenant_on("walled", "gvisor").await;
    let (tr, key_r) = s.tenant("plain").await;
    let g = s.agent(&key_g, "g", true).await["id"].as_str().unwrap().to_owned();
    let r = s.agent(&key_r, "r", true).await["id"].as_str().unwrap().to_owned();
    assert_eq!(runtime_of(&s.container(&g)), "runsc");
    assert_eq!(runtime_of(&s.container(&r)), "runc");
    assert_eq!(start_kind(&s, &key_g, &g).await, "warm", "the runsc plan's agent started warm");
    assert_eq!(start_kind(&s, &key_r, &r).await, "warm");

    // Each keeps a secret; each sandbox looks for the other's.
    let markers = [(format!("G-ONLY-{}", std::process::id() * 31 + 7), &g, &key_g, tg["id"].as_str().unwrap()), (format!("R-ONLY-{}", std::process::id() * 37 + 11), &r, &key_r, tr["id"].as_str().unwrap())];
    for (m, id, key, _) in &markers {
        let (st, e) = s.put(&format!("/api/v1/agents/{id}/files?name=MEMORY.md"), key, json!({"text": format!("# MEMORY.md\n\n- the code is {m}\n")})).await;
        assert_eq!(st, 204, "{e}");
        let (st, a) = s.post(&format!("/api/v1/agents/{id}/messages"), key, json!({"text": format!("remember {m}")})).await;
        assert_eq!(st, 200, "{a}");
    }
    for (i, (_, me, _, _)) in markers.iter().enumerate() {
        let (other_marker, other, _, other_tenant) = &markers[1 - i];
        let ws = s.workspace(other_tenant, other).display().to_string();
        let run = s.run_dir(other).display().to_string();
        let targets = [format!("{ws}/MEMORY.md"), format!("{ws}/sessions/main.jsonl"), format!("{run}/agent.sock"), format!("/data/../../../../..{ws}/MEMORY.md"), s.data_dir().display().to_string()];
        let mut args = vec!["read-paths", "--marker", other_marker.as_str()];
        for t in &targets {
            args.extend(["--path", t.as_str()]);
        }
        let (code, v) = s.probe(me, &args);
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["any_marker_found"], false, "{me} found the other tenant's secret: {v:#}");
        for a in v["attempts"].as_array().unwrap() {
            assert!(a["ok"] == false, "{me} reached {a}");
        }
        let needles: Vec<String> = vec![other.to_string(), other_tenant.to_string(), other_marker.clone()];
        let mut args = vec!["secrets"];
        for n in &needles {
            args.extend(["--needle", n.as_str()]);
        }
        let (_, found) = s.probe(me, &args);
        assert_eq!(found["found"], json!([]), "{me} sees the other tenant: {found}");
        // Sanity: its own secret is where it should be.
        let (_, own) = s.probe(me, &["read-paths", "--marker", markers[i].0.as_str(), "--path", "/data/MEMORY.md"]);
        assert_eq!(own["any_marker_found"], true, "{own}");
    }
    // Both keep answering, each from its own memory.
    for (m, id, key, _) in &markers {
        let (st, a): (u16, Value) = s.post(&format!("/api/v1/agents/{id}/messages"), key, json!({"text": "still there?"})).await;
        assert_eq!(st, 200, "{a}");
        let session = std::fs::read_to_string(s.workspace("", id).join("sessions/main.jsonl")).unwrap();
        assert!(session.contains(m.as_str()), "{session}");
    }

    // Changing the plan's runtime re-creates its agents' sandboxes on their next start, workspace
    // kept: here the gVisor tenant moves to the runc plan.
    let (st, p) = s.put(&format!("/api/v1/tenants/{}/plan", tg["id"].as_str().unwrap()), &s.admin.clone(), json!({"plan": "free"})).await;
    assert!(st == 200 || st == 204, "{p}");
    for path in ["stop", "start"] {
        let (st, e) = s.post(&format!("/api/v1/agents/{g}/{path}"), &key_g, json!({})).await;
        assert_eq!(st, 200, "{path}: {e}");
    }
    assert_eq!(runtime_of(&s.container(&g)), "runc", "the new plan's runtime");
    let (st, a) = s.post(&format!("/api/v1/agents/{g}/messages"), &key_g, json!({"text": "after the move"})).await;
    assert_eq!(st, 200, "{a}");
    let session = std::fs::read_to_string(s.workspace("", &g).join("sessions/main.jsonl")).unwrap();
    assert!(session.contains(markers[0].0.as_str()), "the workspace is kept: {session}");
}
