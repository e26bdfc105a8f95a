//! The README's walk-through as a test: create, start, message, stop, start, delete; plus the
//! OpenAPI document and `clawpen doctor`.

use reqwest::Method;
use serde_json::json;

use crate::harness::{TestServer, EXE};

#[tokio::test(flavor = "multi_thread")]
async fn create_start_message_stop_delete() {
    let s = TestServer::start().await;
    let (t, key) = s.tenant("family").await;
    let tid = t["id"].as_str().unwrap();
    let a = s.agent(&key, "helper", false).await;
    let id = a["id"].as_str().unwrap();
    assert_eq!(a["observed_state"], "absent");
    for f in ["SOUL.md", "USER.md", "MEMORY.md", "memory", "sessions"] {
        assert!(s.workspace(tid, id).join(f).exists(), "workspace lacks {f}");
    }

    let (st, a) = s.post(&format!("/api/v1/agents/{id}/start"), &key, json!({})).await;
    assert_eq!((st, a["observed_state"].as_str()), (200, Some("running")), "{a}");
    let (st, r) = s.post(&format!("/api/v1/agents/{id}/messages"), &key, json!({"text": "hello there"})).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["reply"], "stand-in reply to: hello there", "the model's reply, through the meter: {r}");
    let session = std::fs::read_to_string(s.workspace(tid, id).join("sessions/main.jsonl")).unwrap();
    assert!(session.contains("hello there"), "the agent keeps a session log in its workspace");
    assert!(session.contains("stand-in reply to: hello there"), "the session log holds the reply");

    let (st, logs) = s.get(&format!("/api/v1/agents/{id}/logs?tail=10"), &key).await;
    assert_eq!(st, 200);
    assert!(logs["lines"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().contains("listening")), "{logs}");
    assert!(logs["lines"].as_array().unwrap().iter().all(|l| l.as_str().unwrap().starts_with("sandbox ")), "every line is marked as the sandbox's: {logs}");

    let (st, a) = s.post(&format!("/api/v1/agents/{id}/stop"), &key, json!({})).await;
    assert_eq!((st, a["observed_state"].as_str(), a["desired_state"].as_str()), (200, Some("stopped"), Some("stopped")));
    // A message wakes the stopped agent: the reply waits for the start.
    let t0 = std::time::Instant::now();
    let (st, r) = s.post(&format!("/api/v1/agents/{id}/messages"), &key, json!({"text": "anyone?"})).await;
    assert_eq!(st, 200, "a message wakes a stopped agent: {r}");
    assert_eq!(r["reply"], "stand-in reply to: anyone?");
    eprintln!("wake on message from stopped: {} ms", t0.elapsed().as_millis());
    let (_, a) = s.get(&format!("/api/v1/agents/{id}"), &key).await;
    assert_eq!((a["observed_state"].as_str(), a["desired_state"].as_str()), (Some("running"), Some("running")), "{a}");
    let session = std::fs::read_to_string(s.workspace(tid, id).join("sessions/main.jsonl")).unwrap();
    assert!(session.contains("hello there"), "the workspace survives a stop and start");

    let (st, ev) = s.get(&format!("/api/v1/agents/{id}/events"), &key).await;
    assert_eq!(st, 200);
    let actions: Vec<&str> = ev["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for want in ["agent.create", "agent.start", "agent.stop"] {
        assert!(actions.contains(&want), "audit log lacks {want}: {actions:?}");
    }
    assert!(ev["entries"].as_array().unwrap().iter().any(|e| e["reason"] == "woken by a message"), "the wake is audited with its reason: {ev}");

    let (st, _) = s.call(Method::DELETE, &format!("/api/v1/agents/{id}"), Some(&key), None).await;
    assert_eq!(st, 204);
    assert!(s.containers().is_empty(), "delete removes the sandbox");
    assert!(!s.workspace(tid, id).exists() && !s.run_dir(id).exists(), "delete removes the agent's dirs");
    let (st, _) = s.get(&format!("/api/v1/agents/{id}"), &key).await;
    assert_eq!(st, 404);

    // The admin audit log keeps the deleted agent's history.
    let (st, audit) = s.get(&format!("/api/v1/audit?tenant={tid}"), &s.admin).await;
    assert_eq!(st, 200);
    assert!(audit["entries"].as_array().unwrap().iter().any(|e| e["action"] == "agent.delete"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_flags_match_the_spec() {
    let s = TestServer::start().await;
    let (t, key) = s.tenant("flags").await;
    let a = s.agent(&key, "a", true).await;
    let id = a["id"].as_str().unwrap();
    let out = std::process::Command::new("docker").args(["inspect", &s.container(id)]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &v[0];
    let hc = &c["HostConfig"];
    assert_eq!(hc["NetworkMode"], "none");
    assert_eq!(hc["ReadonlyRootfs"], true);
    assert_eq!(hc["CapDrop"], json!(["ALL"]));
    assert_eq!(hc["SecurityOpt"], json!(["no-new-privileges"]));
    assert_eq!(hc["Init"], true);
    assert_eq!(hc["Privileged"], false);
    assert_eq!(hc["Memory"], hc["MemorySwap"]);
    assert_eq!(hc["Memory"], json!(128 * 1024 * 1024));
    assert_eq!(hc["PidsLimit"], 64);
    assert_eq!(hc["NanoCpus"], 500_000_000);
    assert!(hc["Tmpfs"]["/tmp"].as_str().unwrap().contains("noexec,nosuid,nodev"));
    assert!(hc["PortBindings"].as_object().is_none_or(|p| p.is_empty()), "no host port is published: {}", hc["PortBindings"]);
    assert!(c["NetworkSettings"]["Networks"].as_object().is_none_or(|n| n.keys().all(|k| k == "none")), "no Docker network: {}", c["NetworkSettings"]["Networks"]);
    assert_eq!(c["Config"]["User"], format!("{0}:{0}", t["uid"]));
    let labels = &c["Config"]["Labels"];
    assert_eq!(labels["clawpen.tenant"], t["id"]);
    assert_eq!(labels["clawpen.agent"], a["id"]);
    assert!(labels["clawpen.spec-hash"].as_str().is_some_and(|h| !h.is_empty()));
    let mounts: Vec<(&str, bool)> = c["Mounts"].as_array().unwrap().iter().map(|m| (m["Destination"].as_str().unwrap(), m["RW"].as_bool().unwrap())).collect();
    assert_eq!(mounts.len(), 3, "{mounts:?}");
    assert!(mounts.contains(&("/data", true)) && mounts.contains(&("/run/clawpen", true)), "{mounts:?}");
    // The agent executable, one host file shared by every sandbox: read-only, root's, 0555.
    assert!(mounts.contains(&("/clawpen", false)), "{mounts:?}");
    let exe = c["Mounts"].as_array().unwrap().iter().find(|m| m["Destination"] == "/clawpen").unwrap()["Source"].as_str().unwrap().to_owned();
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&exe).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o555), "{exe}");
    }
    // The run dir is the tenant's own, 0700.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(s.run_dir(id)).unwrap();
    assert_eq!((m.uid() as i64, m.mode() & 0o777), (t["uid"].as_i64().unwrap(), 0o700));
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_lists_every_route() {
    let s = TestServer::start().await;
    let (st, doc) = s.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(st, 200);
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/tenants", "/api/v1/tenants/{tenant_id}", "/api/v1/tenants/{tenant_id}/keys", "/api/v1/tenants/{tenant_id}/keys/{key_id}",
        "/api/v1/tenants/{tenant_id}/members", "/api/v1/audit", "/api/v1/agents", "/api/v1/agents/{agent_id}",
        "/api/v1/agents/{agent_id}/start", "/api/v1/agents/{agent_id}/stop", "/api/v1/agents/{agent_id}/logs",
        "/api/v1/agents/{agent_id}/events", "/api/v1/agents/{agent_id}/messages", "/healthz", "/readyz",
        "/api/v1/tenants/{tenant_id}/members/{member_id}", "/api/v1/telegram/bot", "/api/v1/telegram/pairing-codes",
        "/api/v1/members", "/api/v1/members/{member_id}", "/telegram/webhook/{bot}", "/metrics",
        "/api/v1/agents/{agent_id}/runs", "/api/v1/agents/{agent_id}/runs/{run_id}",
    ] {
        assert!(paths.contains_key(p), "openapi lacks {p}");
    }
    let (st, h) = s.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((st, h["ok"].as_bool()), (200, Some(true)));
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_passes_on_this_machine() {
    crate::harness::image();
    let dir = tempfile::Builder::new().prefix("cpd-").tempdir_in("/tmp").unwrap();
    let out = std::process::Command::new(EXE).args(["doctor", "--json", "--data-dir"]).arg(dir.path()).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("doctor output: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["ok"], true, "{v:#}");
    let names: Vec<&str> = v["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for want in ["docker", "docker api", "sandbox image", "sandbox identity", "sandbox filesystem", "sandbox network", "runtime runc", "runtime runsc", "runsc sandbox identity", "runsc sandbox filesystem", "runsc sandbox network"] {
        assert!(names.contains(&want), "doctor lacks {want}: {names:?}");
    }
    // Another test's doctor may have throwaway sandboxes of its own for a few seconds; one this
    // doctor left would stay.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = std::process::Command::new("docker").args(["ps", "-aq", "--filter", "label=clawpen.role=doctor"]).output().unwrap();
        if String::from_utf8_lossy(&left.stdout).trim().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "doctor removes its throwaway sandboxes");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Two installations on one engine whose uid ranges overlap: doctor says so, and how to fix it.
#[tokio::test(flavor = "multi_thread")]
async fn doctor_finds_another_installation_inside_its_uid_range() {
    let s = TestServer::start().await;
    let (t, key) = s.tenant("elsewhere").await;
    s.agent(&key, "a", true).await;
    let uid = t["uid"].as_u64().unwrap();
    let doctor = |base: u64| {
        let dir = tempfile::Builder::new().prefix("cpd-").tempdir_in("/tmp").unwrap();
        std::fs::write(dir.path().join("clawpen.toml"), format!("[sandbox]\nuid_base = {base}\n")).unwrap();
        let out = std::process::Command::new(EXE).args(["doctor", "--json", "--data-dir"]).arg(dir.path()).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("doctor output: {}", String::from_utf8_lossy(&out.stdout)));
        v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "uid range").cloned().expect("doctor checks the uid range")
    };
    let clash = doctor(uid - 1);
    assert_eq!(clash["ok"], false, "{clash}");
    assert!(clash["detail"].as_str().unwrap().contains(&uid.to_string()) && clash["fix"].as_str().unwrap().contains("uid_base"), "{clash}");
    // A range above every automatic one (2,000 ranges of a million from one million) is clear.
    let clear = doctor(2_001_012_345);
    assert_eq!(clear["ok"], true, "{clear}");
}

/// The README's curl walk-through, run as written against a real server.
#[tokio::test(flavor = "multi_thread")]
async fn readme_walkthrough_works_as_written() {
    let s = TestServer::start().await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let script = readme
        .split("```bash")
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("CLAWPEN_URL"))
        .expect("the README has a walk-through block");
    let out = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .env("CLAWPEN_URL", &s.base)
        .env("CLAWPEN_DATA_DIR", s.data_dir())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "walk-through failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"\"running\""), "{stdout}");
    assert!(lines.contains(&"stand-in reply to: Hello!"), "the agent answers with the model's reply: {stdout}");
    assert!(lines.iter().any(|l| l.contains("listening")), "{stdout}");
    assert!(lines.contains(&"\"stopped\""), "{stdout}");
    assert_eq!(lines.last(), Some(&"204"), "{stdout}");
    assert!(s.containers().is_empty());
}

/// A throwaway PostgreSQL database, dropped when this goes (even when the test failed).
struct PgDb {
    admin: String,
    name: String,
    url: String,
}

impl PgDb {
    /// `None` (with a loud note) when no PostgreSQL is configured outside CI; under CI a missing
    /// server fails the test.
    fn create() -> Option<PgDb> {
        let admin = match std::env::var("CLAWPEN_TEST_POSTGRES_URL") {
            Ok(a) => a,
            Err(_) if std::env::var("CI").is_ok() => panic!("CLAWPEN_TEST_POSTGRES_URL is not set: CI must test the server on PostgreSQL"),
            Err(_) => {
                eprintln!("NOT RUN: CLAWPEN_TEST_POSTGRES_URL is not set, so the server was not tested on PostgreSQL");
                return None;
            }
        };
        let name = format!("clawpen_it_{}_{}", std::process::id(), rand::random::<u32>());
        let out = std::process::Command::new("psql").arg(&admin).args(["-qc", &format!("CREATE DATABASE {name}")]).output().expect("psql");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        Some(PgDb { admin, name, url })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql").arg(&self.admin).args(["-qc", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)]).output();
    }
}

/// The server on PostgreSQL: lifecycle, a SIGKILL and adoption, with the store at a URL.
#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_on_postgres() {
    let Some(db) = PgDb::create() else { return };
    let mut s = TestServer::start_with("", "", &[("CLAWPEN_DATABASE_URL", &db.url)]).await;
    assert!(!s.data_dir().join("clawpen.db").exists(), "no SQLite file when a database URL is given");
    let (_, key) = s.tenant("pg-family").await;
    let a = s.agent(&key, "helper", true).await;
    let id = a["id"].as_str().unwrap();
    let (st, r) = s.post(&format!("/api/v1/agents/{id}/messages"), &key, json!({"text": "hello postgres"})).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["reply"], "stand-in reply to: hello postgres");
    // The meter's ledger on PostgreSQL: the call is charged and nothing stays held.
    let u = s.settled_usage(&key).await;
    let calls = u["recent_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{u}");
    assert!(calls[0]["cost"].as_i64().unwrap() > 0 && calls[0]["outcome"] == "ok", "{u}");
    assert_eq!(u["month"]["spent"], calls[0]["cost"]);
    s.kill();
    s.spawn().await;
    let (st, a) = s.get(&format!("/api/v1/agents/{id}"), &key).await;
    assert_eq!((st, a["observed_state"].as_str()), (200, Some("running")), "{a}");
    let (st, _) = s.post(&format!("/api/v1/agents/{id}/stop"), &key, json!({})).await;
    assert_eq!(st, 200);
    let (st, _) = s.call(Method::DELETE, &format!("/api/v1/agents/{id}"), Some(&key), None).await;
    assert_eq!(st, 204);
    let (_, audit) = s.get("/api/v1/audit", &s.admin).await;
    assert!(audit["entries"].as_array().unwrap().len() >= 5, "{audit}");
    assert!(s.containers().is_empty());
}

/// The server creates the vault's master key (0600) on first start; `clawpen vault rotate` adds a
/// version and re-seals, and the server starts again on the rotated file.
#[tokio::test(flavor = "multi_thread")]
async fn the_master_key_is_created_private_and_rotates() {
    use std::os::unix::fs::PermissionsExt;
    let mut s = TestServer::start().await;
    let path = s.data_dir().join("master.key");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let before = std::fs::read_to_string(&path).unwrap();
    assert_eq!(before.lines().filter(|l| !l.starts_with('#')).count(), 1, "{}", before.len());
    s.kill();
    let out = std::process::Command::new(EXE).args(["vault", "rotate", "--data-dir"]).arg(s.data_dir()).env_remove("CLAWPEN_MASTER_KEY").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("added master key version 2") && stderr.contains("re-sealed 0 of 0"), "{stderr}");
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(after.contains(before.lines().find(|l| l.starts_with("1 ")).unwrap()), "version 1 is kept");
    assert!(after.lines().any(|l| l.starts_with("2 ")));
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    for key in after.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        assert!(!stderr.contains(key), "the rotation prints no key");
    }
    s.spawn().await;
    assert!(!s.log().contains(after.lines().nth(2).unwrap().split_whitespace().nth(1).unwrap()), "the log holds no key");
    // A key file others may read is refused, with what to do.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    s.kill();
    let out = std::process::Command::new(EXE).args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(s.data_dir()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"), "{}", String::from_utf8_lossy(&out.stderr));
}
