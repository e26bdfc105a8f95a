//! A hostile sandbox hurts no one: attacks from inside tenant A's real sandbox on what the root
//! server does for it (its sockets, what it reads from it, its storage, its connections), each
//! while tenant B and the server keep answering. The probe is the test-only `clawpen-probe`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{TestServer, Wall};

crate::both_walls!(
    a_symlinked_agent_sock_reaches_no_other_tenant,
    links_renamed_over_control_sock_during_50_restarts_change_no_mode,
    a_gigabyte_answer_and_a_sparse_seed_cost_the_server_no_memory,
    a_flood_of_connections_leaves_others_and_the_node_answering,
    a_full_filesystem_fails_inside_with_enospc_while_others_write,
    a_hanging_sandbox_holds_up_neither_a_restart_nor_anyone_elses_meter,
    a_sandbox_cannot_forge_or_drive_the_log_its_owner_reads,
    a_sandbox_calls_no_tool_outside_a_run_the_server_opened_for_it,
);

/// The host pid of a container's first process.
fn host_pid(container: &str) -> u64 {
    let out = Command::new("docker").args(["inspect", "-f", "{{.State.Pid}}", container]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

async fn message(s: &TestServer, key: &str, agent: &str, text: &str) -> (u16, Value) {
    s.post(&format!("/api/v1/agents/{agent}/messages"), key, json!({"text": text})).await
}

/// B's agent answers, the API answers, and the node is up.
async fn others_answer(s: &TestServer, key_b: &str, b: &str, text: &str) {
    let (st, r) = message(s, key_b, b, text).await;
    assert_eq!(st, 200, "B must keep answering: {r}");
    assert_eq!(r["reply"], format!("stand-in reply to: {text}"), "{r}");
    let (st, v) = s.get("/api/v1/agents", key_b).await;
    assert_eq!(st, 200, "the API must keep answering: {v}");
    let (st, n) = s.get("/api/v1/nodes", &s.admin.clone()).await;
    assert_eq!(st, 200, "{n}");
    assert!(n["nodes"].as_array().unwrap().iter().all(|n| n["state"] == "up"), "the node stays up: {n}");
}

/// Model calls billed to a tenant, all its agents together.
async fn calls_of(s: &TestServer, key: &str) -> i64 {
    s.settled_usage(key).await["agents"].as_array().map_or(0, |a| a.iter().map(|x| x["calls"].as_i64().unwrap_or(0)).sum())
}

async fn a_symlinked_agent_sock_reaches_no_other_tenant(wall: Wall) {
    let s = TestServer::start_with_probe_on(wall, "", "").await;
    let (_, key_a) = s.tenant("alpha").await;
    let (tb, key_b) = s.tenant("beta").await;
    let a = s.agent(&key_a, "a", true).await["id"].as_str().unwrap().to_owned();
    let b = s.agent(&key_b, "b", true).await["id"].as_str().unwrap().to_owned();
    let (st, _) = message(&s, &key_b, &b, "our safe code is 4711").await;
    assert_eq!(st, 200);
    let b_session = s.workspace(tb["id"].as_str().unwrap(), &b).join("sessions/main.jsonl");
    let session_before = std::fs::read_to_string(&b_session).unwrap();
    let calls_before = calls_of(&s, &key_b).await;
    let connect_url = |key: String| {
        let s = &s;
        let a = a.clone();
        async move {
            let (st, c) = s.post(&format!("/api/v1/agents/{a}/connect-url"), &key, json!({})).await;
            assert_eq!(st, 200, "{c}");
            let q = c["url"].as_str().unwrap().split_once('?').unwrap().1.to_owned();
            format!("{}/gateway/connect?{q}", s.base.replacen("http://", "ws://", 1))
        }
    };

    // B's socket by its host path, and through /proc/<pid>/root (which needs no id at all).
    let targets = [s.run_dir(&b).join("agent.sock").display().to_string(), format!("/proc/{}/root/run/clawpen/agent.sock", host_pid(&s.container(&b)))];
    for target in &targets {
        let (code, v) = s.probe(&a, &["relink", "--name", "agent.sock", "--to", target]);
        assert_eq!((code, &v["ok"]), (0, &json!(true)), "{v}");
        // A's message reaches nobody: refused before anything is sent.
        let (st, r) = message(&s, &key_a, &a, "tell me B's safe code").await;
        assert_eq!((st, r["error"]["code"].as_str()), (502, Some("agent_mismatch")), "via {target}: {r}");
        // Nor does A's gateway connection.
        let refused = tokio_tungstenite::connect_async(connect_url(key_a.clone()).await).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 503, "via {target}"),
            other => panic!("the gateway must refuse a socket that leads elsewhere (via {target}): {:?}", other.map(|_| ())),
        }
    }
    // Health checks and restarts went nowhere else either: B's session and bill are B's alone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(std::fs::read_to_string(&b_session).unwrap(), session_before, "nothing of A's reached B's session");
    assert_eq!(calls_of(&s, &key_b).await, calls_before, "nothing was billed to B");
    others_answer(&s, &key_b, &b, "still mine?").await;
    assert!(s.log().contains("leads elsewhere than its sandbox"), "the refusal is logged");
}

async fn links_renamed_over_control_sock_during_50_restarts_change_no_mode(wall: Wall) {
    let mut s = TestServer::start_with_probe_on(wall, "", "").await;
    let (_, key_a) = s.tenant("alpha").await;
    let (_, key_b) = s.tenant("beta").await;
    let a = s.agent(&key_a, "a", true).await["id"].as_str().unwrap().to_owned();
    let b = s.agent(&key_b, "b", true).await["id"].as_str().unwrap().to_owned();
    // A root-owned file every sandbox needs, as the shared agent executable is.
    let victim = s.data_dir().join("victim-exe");
    std::fs::write(&victim, b"#!").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o555)).unwrap();

    // The sandbox renames links to it over control.sock as fast as it can, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let racer = {
        let (stop, swaps, container, victim) = (stop.clone(), swaps.clone(), s.container(&a), victim.display().to_string());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = Command::new("docker").args(["exec", &container, "/probe", "race-links", "--name", "control.sock", "--to", &victim, "--secs", "2"]).output().unwrap();
                let v: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap_or(Value::Null);
                swaps.fetch_add(v["swaps"].as_u64().unwrap_or(0), Ordering::Relaxed);
            }
        })
    };
    for _ in 0..50 {
        assert!(s.terminate(), "the server stops cleanly");
        s.spawn().await;
        let m = std::fs::metadata(&victim).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o555, 0), "no restart changed the victim's mode or owner");
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    assert!(swaps.load(Ordering::Relaxed) > 1000, "the race really ran: {} swaps", swaps.load(Ordering::Relaxed));
    let control = s.run_dir(&a).join("control.sock");
    let m = std::fs::symlink_metadata(&control).unwrap();
    assert!(m.file_type().is_symlink() || std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
    others_answer(&s, &key_b, &b, "after the race").await;
}

async fn a_gigabyte_answer_and_a_sparse_seed_cost_the_server_no_memory(wall: Wall) {
    let s = TestServer::start_with_probe_on(wall, "", "[fleet]\nwarm_pool = 1\n").await;
    let (_, key_a) = s.tenant("alpha").await;
    let (_, key_b) = s.tenant("beta").await;
    let a = s.agent(&key_a, "a", true).await["id"].as_str().unwrap().to_owned();
    let b = s.agent(&key_b, "b", true).await["id"].as_str().unwrap().to_owned();
    others_answer(&s, &key_b, &b, "warming up").await;
    let before = s.peak_rss_kib();

    // A's sandbox answers every request with a gigabyte, announced or chunked.
    for chunked in [false, true] {
        let mut args = vec!["serve-huge", "--bytes", "1073741824", "--secs", "15"];
        if chunked {
            args.push("--chunked");
        }
        let _server = s.probe_async(&a, &args);
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (st, r) = message(&s, &key_a, &a, "answer me hugely").await;
        assert_eq!(st, 502, "chunked {chunked}: {r}");
        assert_eq!(r["error"]["code"], "agent_answer_too_large", "chunked {chunked}: {r}");
    }
    others_answer(&s, &key_b, &b, "after the huge answers").await;

    // A grows SOUL.md to a sparse gigabyte, sleeps in the removed tier, and is started again:
    // the start looks at whether its workspace is the untouched seed.
    let (_, v) = s.probe(&a, &["sparse", "--path", "/data/SOUL.md", "--bytes", "1073741824"]);
    assert_eq!(v["ok"], true, "{v}");
    let (st, h) = s.post(&format!("/api/v1/agents/{a}/hibernate"), &key_a, json!({"tier": "removed"})).await;
    assert_eq!(st, 200, "{h}");
    let (st, r) = s.post(&format!("/api/v1/agents/{a}/start"), &key_a, json!({})).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(std::fs::metadata(s.workspace("", &a).join("SOUL.md")).unwrap().len(), 1 << 30, "the tenant's file is kept as it is");

    let grown_mib = (s.peak_rss_kib().saturating_sub(before)) / 1024;
    assert!(grown_mib < 100, "the server's peak memory grew by {grown_mib} MiB");
    others_answer(&s, &key_b, &b, "after the sparse seed").await;
}

/// Open descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

async fn a_flood_of_connections_leaves_others_and_the_node_answering(wall: Wall) {
    let s = TestServer::start_with_probe_on(wall, "gateway_connections = 3", "").await;
    let (_, key_a) = s.tenant("alpha").await;
    let (_, key_b) = s.tenant("beta").await;
    let a = s.agent(&key_a, "a", true).await["id"].as_str().unwrap().to_owned();
    let b = s.agent(&key_b, "b", true).await["id"].as_str().unwrap().to_owned();
    let idle_fds = fds(s.pid());

    // 25,000 connections to control.sock, held. Under gVisor a connection past the host's
    // backlog (4,096) takes its gofer seconds to be refused, which slows only the attacker:
    // 4,000 there, still 125 times what one sandbox is served at once.
    let count = if wall.is_gvisor() { "4000" } else { "25000" };
    let flood = s.probe_async(&a, &["flood", "--name", "control.sock", "--count", count, "--hold-secs", "15"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut most_fds = 0;
    for i in 0..5 {
        others_answer(&s, &key_b, &b, &format!("during the flood {i}")).await;
        most_fds = most_fds.max(fds(s.pid()));
    }
    let out = flood.wait_with_output().await.unwrap();
    let v: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["attempted"].to_string(), count, "{v}");
    assert!(v["connected"].as_u64().unwrap() > 100, "the flood connected: {v}");
    assert!(most_fds < idle_fds + 200, "the server held {most_fds} descriptors (idle: {idle_fds}) during the flood: {v}");

    // Slow and oversized heads, and slow bodies: the server lets go of each.
    for (mode, hold) in [("slow-headers", "8"), ("big-headers", "2"), ("slow-body", "13")] {
        let (_, v) = s.probe(&a, &["flood", "--name", "control.sock", "--count", "30", "--hold-secs", hold, "--mode", mode]);
        assert_eq!(v["connected"], 30, "{mode}: {v}");
        assert_eq!(v["still_open"], 0, "{mode}: the server closed every one: {v}");
    }
    others_answer(&s, &key_b, &b, "after the flood").await;

    // Gateway connections are bounded per tenant: the fourth of B's is refused.
    let (_, c) = s.post(&format!("/api/v1/agents/{b}/connect-url"), &key_b, json!({})).await;
    let url = format!("{}/gateway/connect?{}", s.base.replacen("http://", "ws://", 1), c["url"].as_str().unwrap().split_once('?').unwrap().1);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio_tungstenite::connect_async(url.as_str()).await.expect("within the bound").0);
    }
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 429),
        other => panic!("a fourth gateway connection must be refused: {:?}", other.map(|_| ())),
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio_tungstenite::connect_async(url.as_str()).await.expect("a closed connection gives its place back");
}

async fn a_full_filesystem_fails_inside_with_enospc_while_others_write(wall: Wall) {
    let s = TestServer::start_with_probe_on(wall, "disk_mib = 64\ndisk_inodes = 4096", "").await;
    let (_, key_a) = s.tenant("alpha").await;
    let (tb, key_b) = s.tenant("beta").await;
    let a = s.agent(&key_a, "a", true).await["id"].as_str().unwrap().to_owned();
    let b = s.agent(&key_b, "b", true).await["id"].as_str().unwrap().to_owned();
    let host_free = || clawpen_hostfs_free(s.data_dir());
    let free_before = host_free();

    // A writes as much as it can while B talks (its session grows) and the store commits.
    let fill = s.probe_async(&a, &["fill-disk", "--dir", "/data", "--max-mib", "4096"]);
    for i in 0..5 {
        others_answer(&s, &key_b, &b, &format!("while A fills its disk {i}")).await;
        let (st, k) = s.post(&format!("/api/v1/tenants/{}/keys", tb["id"].as_str().unwrap()), &s.admin.clone(), json!({})).await;
        assert_eq!(st, 201, "the store keeps committing: {k}");
    }
    let out = fill.wait_with_output().await.unwrap();
    let v: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(v["errno"], libc::ENOSPC, "a write past the bound fails with ENOSPC inside: {v}");
    assert!(v["bytes_written"].as_u64().unwrap() <= 64 << 20, "{v}");
    let (_, v) = s.probe(&a, &["fill-disk", "--dir", "/run/clawpen", "--max-mib", "64"]);
    assert_eq!(v["errno"], libc::ENOSPC, "the run dir is on the same bounded filesystem: {v}");
    let used_on_host = free_before.saturating_sub(host_free());
    assert!(used_on_host < 80 << 20, "the host's disk lost {} MiB to A", used_on_host >> 20);

    // The API shows it, and the agent tells its user plainly.
    let (_, view) = s.get(&format!("/api/v1/agents/{a}"), &key_a).await;
    assert_eq!(view["disk"]["full"], true, "{view}");
    assert!(view["disk"]["limit_bytes"].as_u64().unwrap() <= 64 << 20, "{view}");
    let (st, r) = message(&s, &key_a, &a, "remember this please").await;
    assert_eq!(st, 200, "{r}");
    assert!(r["reply"].as_str().unwrap().contains("the workspace is full"), "{r}");
    assert_eq!(r["error_code"], "workspace_full", "{r}");

    // Inodes are bounded too (after A frees its space).
    let (_, v) = s.probe(&a, &["fill-inodes", "--dir", "/data", "--max", "100000"]);
    assert_eq!(v["errno"], libc::ENOSPC, "{v}");
    assert!(v["created"].as_u64().unwrap() <= 4096, "{v}");
    others_answer(&s, &key_b, &b, "after A filled up").await;
}

/// Free bytes of the filesystem holding `dir`.
fn clawpen_hostfs_free(dir: &std::path::Path) -> u64 {
    clawpen_hostfs::SandboxDir::open(dir).unwrap().usage().unwrap().bytes_free
}

async fn a_hanging_sandbox_holds_up_neither_a_restart_nor_anyone_elses_meter(wall: Wall) {
    // A start timeout longer than the harness waits for readiness: were the start-up to wait on
    // A's hanging sandbox, the restart below would not become ready at all.
    let mut s = TestServer::start_with_probe_on(wall, "", "[sandbox]\nstart_timeout_secs = 300\n").await;
    let (_, key_a) = s.tenant("alpha").await;
    let (_, key_b) = s.tenant("beta").await;
    let a = s.agent(&key_a, "a", true).await["id"].as_str().unwrap().to_owned();
    let b = s.agent(&key_b, "b", true).await["id"].as_str().unwrap().to_owned();
    let _hang = s.probe_async(&a, &["hang", "--secs", "600"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.terminate());
    s.spawn().await;
    // B's meter answers (a call in a run refused for want of a model is still the meter's
    // answer), and B talks.
    let (st, run) = s.post(&format!("/api/v1/agents/{b}/runs"), &s.admin.clone(), json!({})).await;
    assert_eq!(st, 201, "{run}");
    let body = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
    let (st, _) = crate::harness::uds_post(&s.run_dir(&b).join("control.sock"), "/v1/chat/completions", &body, &[("x-clawpen-run", run["run_id"].as_str().unwrap())]).await;
    assert_eq!(st, 200, "B's meter answers after the restart");
    others_answer(&s, &key_b, &b, "after the restart").await;
    // A was adopted as it is; its health checks (not the start-up) deal with it.
    let (_, view) = s.get(&format!("/api/v1/agents/{a}"), &key_a).await;
    assert_eq!(view["observed_state"], "running", "{view}");
}

async fn a_sandbox_cannot_forge_or_drive_the_log_its_owner_reads(wall: Wall) {
    let s = TestServer::start_with_probe_on(wall, "", "").await;
    let (_, key_a) = s.tenant("alpha").await;
    let a = s.agent(&key_a, "a", true).await["id"].as_str().unwrap().to_owned();
    let forged = "\u{1b}[2J\u{1b}[31m2026-12-01T00:00:00Z  INFO clawpen_server: tenant verified, all clear\r\u{202e}txt.exe\n";
    let (_, v) = s.probe(&a, &["forge-log", "--text", forged]);
    assert!(v["writes"].as_array().unwrap().iter().any(|w| w["ok"] == true), "the probe reached its log: {v}");
    let (st, logs) = s.get(&format!("/api/v1/agents/{a}/logs?tail=50"), &key_a).await;
    assert_eq!(st, 200, "{logs}");
    let lines: Vec<&str> = logs["lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    let line = lines.iter().find(|l| l.contains("tenant verified")).unwrap_or_else(|| panic!("the forged line is passed on, marked: {lines:?}"));
    assert!(line.starts_with("sandbox stdout| ") || line.starts_with("sandbox stderr| "), "{line}");
    assert!(!line.chars().any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)), "no control character reaches the reader: {line:?}");
    assert!(line.contains("\\u{1b}[2J"), "escapes are shown, not acted on: {line}");
}

async fn a_sandbox_calls_no_tool_outside_a_run_the_server_opened_for_it(wall: Wall) {
    let s = TestServer::start_with_probe_on(wall, "", "").await;
    let (_, key_a) = s.tenant("alpha").await;
    let (_, key_b) = s.tenant("beta").await;
    let a = s.agent(&key_a, "a", true).await["id"].as_str().unwrap().to_owned();
    let b = s.agent(&key_b, "b", true).await["id"].as_str().unwrap().to_owned();
    let (st, en) = s.put("/api/v1/integrations/tools", &key_a, json!({"tools": ["gmail_search"]})).await;
    assert_eq!(st, 200, "{en}");
    // B's open run (its id is what a sandbox might steal or guess) and one of A's own.
    let (_, run_b) = s.post(&format!("/api/v1/agents/{b}/runs"), &s.admin.clone(), json!({})).await;
    let (_, run_a) = s.post(&format!("/api/v1/agents/{a}/runs"), &s.admin.clone(), json!({})).await;
    let (run_a, run_b) = (run_a["run_id"].as_str().unwrap().to_owned(), run_b["run_id"].as_str().unwrap().to_owned());
    let args = r#"{"query": "invoice", "connection": "cn_aaaaaaaaaaaaaaaaaaaaaaaaaa"}"#;
    let (_, v) = s.probe(&a, &["tool-calls", "--tool", "gmail_search", "--args", args, "--run", "-", "--run", "run_forged_by_the_sandbox", "--run", &run_b, "--run", &run_a]);
    assert_eq!(v["tools"]["status"], 200, "{v}");
    let calls = v["calls"].as_array().unwrap();
    // No run, a made-up run, another tenant's run: refused before the broker, with why.
    for c in &calls[..3] {
        let status = c["answer"]["status"].as_u64().unwrap();
        assert!((400..500).contains(&status) && c["answer"]["body"]["error"]["code"] == "no_run", "{c}");
    }
    // In its own run the call reaches the broker, which refuses the argument that names a
    // connection: no argument chooses whose account is used.
    let own = &calls[3]["answer"];
    assert_eq!(own["status"], 200, "{own}");
    assert_eq!(own["body"]["error"]["code"], "invalid_arguments", "{own}");
    assert!(own["body"]["error"]["message"].as_str().unwrap().contains("`connection`"), "{own}");
    // Only that call is A's in the audit; B's has none, and B keeps answering.
    let (_, calls_a) = s.get("/api/v1/tool-calls", &key_a).await;
    assert_eq!(calls_a["calls"].as_array().unwrap().len(), 1, "{calls_a}");
    let (_, calls_b) = s.get("/api/v1/tool-calls", &key_b).await;
    assert_eq!(calls_b["calls"], json!([]), "{calls_b}");
    others_answer(&s, &key_b, &b, "after A's tool calls").await;
}

/// The owner's persona and memory routes read and write inside the workspace, which the sandbox
/// controls: links it plants there (to another tenant's files), a FIFO, a linked notes dir are
/// never followed, and a write replaces the link instead of writing through it.
#[tokio::test(flavor = "multi_thread")]
async fn links_in_a_workspace_reach_nothing_through_the_persona_and_memory_routes() {
    use std::os::unix::fs::symlink;
    let s = TestServer::start().await;
    let (_, key_a) = s.tenant("alpha").await;
    let (_, key_b) = s.tenant("beta").await;
    let a = s.agent(&key_a, "a", false).await["id"].as_str().unwrap().to_owned();
    let b = s.agent(&key_b, "b", false).await["id"].as_str().unwrap().to_owned();
    let (st, _) = s.put(&format!("/api/v1/agents/{b}/files?name=SOUL.md"), &key_b, json!({"text": "B's secret: 4711\n"})).await;
    assert_eq!(st, 204);
    let (ws_a, ws_b) = (s.workspace("", &a), s.workspace("", &b));
    // What A's sandbox could do in its own workspace: links to B's files, a FIFO, a linked dir.
    std::fs::remove_file(ws_a.join("SOUL.md")).unwrap();
    symlink(ws_b.join("SOUL.md"), ws_a.join("SOUL.md")).unwrap();
    std::fs::remove_file(ws_a.join("USER.md")).unwrap();
    assert!(Command::new("mkfifo").arg(ws_a.join("USER.md")).status().unwrap().success());
    std::fs::remove_file(ws_a.join("MEMORY.md")).unwrap();
    symlink(ws_b.join("SOUL.md"), ws_a.join("MEMORY.md")).unwrap();
    std::fs::remove_dir(ws_a.join("memory")).unwrap();
    symlink(&ws_b, ws_a.join("memory")).unwrap();
    std::fs::write(ws_b.join("notes.md"), "B's note: 4711\n").unwrap();

    for name in ["SOUL.md", "USER.md", "MEMORY.md", "memory/notes.md"] {
        let (st, v) = s.get(&format!("/api/v1/agents/{a}/files?name={name}"), &key_a).await;
        assert_eq!(st, 404, "{name}: {v}");
        assert!(!v.to_string().contains("4711"), "{name}: {v}");
    }
    let (st, mem) = s.get(&format!("/api/v1/agents/{a}/memory"), &key_a).await;
    assert_eq!(st, 200, "{mem}");
    assert!(!mem.to_string().contains("4711"), "{mem}");
    let (st, _) = s.post(&format!("/api/v1/agents/{a}/memory/forget"), &key_a, json!({"file": "memory/notes.md", "line": 1, "text": "B's note: 4711"})).await;
    assert_eq!(st, 404);
    assert_eq!(std::fs::read_to_string(ws_b.join("notes.md")).unwrap(), "B's note: 4711\n", "forgotten through a link");
    // A write replaces the link with A's own file; B's file is untouched.
    let (st, _) = s.put(&format!("/api/v1/agents/{a}/files?name=SOUL.md"), &key_a, json!({"text": "A's persona\n"})).await;
    assert_eq!(st, 204);
    let m = std::fs::symlink_metadata(ws_a.join("SOUL.md")).unwrap();
    assert!(m.file_type().is_file(), "the link was replaced by a file");
    assert_eq!(m.uid(), std::fs::metadata(&ws_a).unwrap().uid(), "owned by the sandbox's uid");
    assert_eq!(std::fs::read_to_string(ws_a.join("SOUL.md")).unwrap(), "A's persona\n");
    assert_eq!(std::fs::read_to_string(ws_b.join("SOUL.md")).unwrap(), "B's secret: 4711\n", "written through a link");
    let (st, _) = s.put(&format!("/api/v1/agents/{a}/files?name=memory/notes.md"), &key_a, json!({"text": "x\n"})).await;
    assert_eq!(st, 404, "a note written through a linked dir");
    assert_eq!(std::fs::read_to_string(ws_b.join("notes.md")).unwrap(), "B's note: 4711\n");
}
