//! Attacks from inside tenant A's real, running sandbox. The test-only `clawpen-probe` program
//! (at `/probe` in the test's copy of the sandbox image) is run with `docker exec` in A's container (same uid, cgroup, seccomp profile and capabilities as
//! A's agent) and reports what it could do; every attack must fail while tenant B and the server
//! keep answering.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{TestServer, Wall};

crate::both_walls!(
    cannot_read_another_tenants_files,
    no_network_at_all,
    fork_bomb_stops_at_the_pids_limit,
    memory_bomb_is_oom_killed_and_seen_by_the_server,
    no_privileges_and_a_read_only_root,
    no_secret_inside_the_sandbox_or_in_docker_inspect,
);

struct Tenants {
    s: TestServer,
    uid_a: u64,
    uid_b: u64,
    key_a: String,
    key_b: String,
    a: String,
    b: String,
    /// Host paths of B's workspace and run dir.
    b_workspace: String,
    b_run: String,
    /// A string only B's files hold.
    marker: String,
}

async fn two_tenants(wall: Wall) -> Tenants {
    let s = TestServer::start_with_probe_on(wall, "", "").await;
    let (ta, key_a) = s.tenant("alpha").await;
    let (tb, key_b) = s.tenant("beta").await;
    let a = s.agent(&key_a, "a", true).await["id"].as_str().unwrap().to_owned();
    let b = s.agent(&key_b, "b", true).await["id"].as_str().unwrap().to_owned();
    let marker = format!("B-ONLY-{}", std::process::id() as u64 * 7919 + 12345);
    let b_workspace = s.workspace(tb["id"].as_str().unwrap(), &b);
    let b_run = s.run_dir(&b);
    std::fs::write(b_workspace.join("MEMORY.md"), format!("# MEMORY\nthe safe code is {marker}\n")).unwrap();
    std::fs::write(b_run.join("note"), &marker).unwrap();
    Tenants {
        uid_a: ta["uid"].as_u64().unwrap(),
        uid_b: tb["uid"].as_u64().unwrap(),
        key_a,
        key_b,
        a,
        b,
        b_workspace: b_workspace.display().to_string(),
        b_run: b_run.display().to_string(),
        marker,
        s,
    }
}

fn probe(s: &TestServer, agent: &str, args: &[&str]) -> (i32, Value) {
    s.probe(agent, args)
}

async fn async_probe(s: &TestServer, agent: &str, args: &[&str]) -> tokio::process::Child {
    s.probe_async(agent, args)
}

/// B's agent answers a message and the server answers `/healthz`.
async fn b_and_server_answer(t: &Tenants) {
    let (st, r) = t.s.post(&format!("/api/v1/agents/{}/messages", t.b), &t.key_b, json!({"text": "are you fine?"})).await;
    assert_eq!(st, 200, "B must keep answering: {r}");
    assert_eq!(r["reply"], "stand-in reply to: are you fine?", "B's agent answers: {r}");
    let (st, _) = t.s.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(st, 200, "the server must keep answering");
}

async fn cannot_read_another_tenants_files(wall: Wall) {
    let t = two_tenants(wall).await;
    let rel_ws = t.b_workspace.trim_start_matches(t.s.data_dir().to_str().unwrap());
    let rel_run = t.b_run.trim_start_matches(t.s.data_dir().to_str().unwrap());
    let targets = [
        t.b_workspace.clone(),
        format!("{}/MEMORY.md", t.b_workspace),
        t.b_run.clone(),
        format!("{}/note", t.b_run),
        format!("{}/agent.sock", t.b_run),
        format!("{}/control.sock", t.b_run),
        // The same, relative to where a data dir would be mounted.
        rel_ws.to_owned(),
        rel_run.to_owned(),
        format!("/data/..{rel_ws}"),
        format!("/run/clawpen/../{}", t.b),
        format!("/data/../../../../..{}", t.b_workspace),
        t.s.data_dir().display().to_string(),
    ];
    let mut args = vec!["read-paths", "--marker", &t.marker];
    for p in &targets {
        args.push("--path");
        args.push(p);
    }
    let (code, v) = probe(&t.s, &t.a, &args);
    assert_eq!(code, 0, "probe failed: {v}");
    let attempts = v["attempts"].as_array().expect("attempts");
    assert!(attempts.len() >= targets.len() * 3, "the probe tried every route: {}", attempts.len());
    let routes: std::collections::BTreeSet<&str> = attempts.iter().filter_map(|a| a["route"].as_str()).collect();
    for want in ["symlink", "proc-root"] {
        assert!(routes.iter().any(|r| r.contains(want)), "no {want} route tried: {routes:?}");
    }
    assert_eq!(v["any_marker_found"], false, "A found B's marker: {v:#}");
    for a in attempts {
        assert!(a["marker_found"] == false, "{a}");
        assert!(a["ok"] == false, "A reached a path of B or of the host: {a}");
    }
    // The symlink A planted is not followed by the server either: B's files are untouched.
    assert!(std::fs::read_to_string(format!("{}/MEMORY.md", t.b_workspace)).unwrap().contains(&t.marker));

    // Sanity: the same probe in B's own sandbox finds B's marker through /data, so a miss above
    // means isolation, not a broken probe.
    let (_, own) = probe(&t.s, &t.b, &["read-paths", "--marker", &t.marker, "--path", "/data/MEMORY.md"]);
    assert_eq!(own["any_marker_found"], true, "{own:#}");
}

async fn no_network_at_all(wall: Wall) {
    let t = two_tenants(wall).await;
    let port = t.s.base.rsplit(':').next().unwrap().to_owned();
    // The server, the model provider (the stand-in upstream the meter calls), ssh and DNS.
    let provider = t.s.standin.base_url().rsplit(':').next().unwrap().to_owned();
    let mut tcp = vec![format!("127.0.0.1:{port}"), format!("127.0.0.1:{provider}"), "127.0.0.1:22".to_owned(), "127.0.0.1:53".to_owned()];
    // The host's own addresses, as the host sees them.
    let hosts = Command::new("hostname").arg("-I").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    for h in hosts.split_whitespace().filter(|h| !h.contains(':')) {
        tcp.push(format!("{h}:{port}"));
        tcp.push(format!("{h}:{provider}"));
        tcp.push(format!("{h}:2375"));
    }
    let mut args = vec!["network".to_owned()];
    for target in &tcp {
        args.extend(["--tcp".to_owned(), target.clone()]);
    }
    for name in ["example.com", "host.docker.internal", "registry-1.docker.io"] {
        args.extend(["--dns".to_owned(), name.to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, v) = probe(&t.s, &t.a, &args);
    assert_eq!(code, 0, "{v}");
    let tcp_results = v["tcp"].as_array().unwrap();
    assert_eq!(tcp_results.len(), tcp.len());
    for r in tcp_results {
        assert_eq!(r["ok"], false, "TCP reached {r}");
    }
    for r in v["dns"].as_array().unwrap() {
        assert_eq!(r["ok"], false, "DNS resolved {r}");
    }
    for r in v["udp_dns"].as_array().unwrap_or(&vec![]) {
        assert_eq!(r["ok"], false, "a DNS server answered {r}");
    }
    assert_eq!(v["interfaces"], json!(["lo"]), "only loopback: {v}");
    assert_eq!(v["routes"], 0, "no routes: {v}");
}

async fn fork_bomb_stops_at_the_pids_limit(wall: Wall) {
    let t = two_tenants(wall).await;
    let started = Instant::now();
    let bomb = async_probe(&t.s, &t.a, &["fork-bomb", "--max", "100000", "--hold-ms", "4000"]).await;
    // While A's pids are exhausted, B and the server answer.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b_and_server_answer(&t).await;
    let out = bomb.wait_with_output().await.unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("fork-bomb output: {}", String::from_utf8_lossy(&out.stdout)));
    let forked = v["forked"].as_u64().unwrap();
    assert!(forked < 64, "the pids limit (64) stops the bomb: {v}");
    assert!(forked > 10, "the bomb did run: {v}");
    assert_eq!(v["errno"], 11, "fork fails with EAGAIN: {v}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // Threads count against the same bound.
    let (_, v) = probe(&t.s, &t.a, &["fork-bomb", "--threads", "--max", "100000", "--hold-ms", "500"]);
    assert!(v["forked"].as_u64().unwrap() < 64 && v["errno"] == 11, "the pids limit (64) stops a thread bomb: {v}");
    // A recovers once its processes are gone.
    let (st, r) = t.s.post(&format!("/api/v1/agents/{}/messages", t.a), &t.key_a, json!({"text": "back?"})).await;
    assert_eq!(st, 200, "{r}");
}

async fn memory_bomb_is_oom_killed_and_seen_by_the_server(wall: Wall) {
    let t = two_tenants(wall).await;
    let (code, _) = probe(&t.s, &t.a, &["memory-bomb", "--max-mib", "4096"]);
    if wall.is_gvisor() {
        // gVisor's kernel has no OOM killer of its own: the host's kills the sandbox whole,
        // its user-space kernel with it, and the bomb never reports.
        assert_ne!(code, 0, "the bomb does not run to its end");
    } else {
        assert_eq!(code, 137, "the kernel kills the bomb (SIGKILL)");
    }
    // The server saw the OOM and shows it on A's agent, and only there.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, a) = t.s.get(&format!("/api/v1/agents/{}", t.a), &t.key_a).await;
        if a["oom_count"].as_i64().unwrap_or(0) >= 1 {
            assert!(a["last_oom_at"].as_i64().is_some());
            break;
        }
        assert!(Instant::now() < deadline, "the server never recorded the OOM: {a}\n{}", t.s.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, ev) = t.s.get(&format!("/api/v1/agents/{}/events", t.a), &t.key_a).await;
    assert!(ev["entries"].as_array().unwrap().iter().any(|e| e["action"] == "agent.oom"), "{ev}");
    let (_, b) = t.s.get(&format!("/api/v1/agents/{}", t.b), &t.key_b).await;
    assert_eq!(b["oom_count"], 0);
    b_and_server_answer(&t).await;
    // A answers again (under gVisor, once its sandbox is started again).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (st, r) = t.s.post(&format!("/api/v1/agents/{}/messages", t.a), &t.key_a, json!({"text": "back?"})).await;
        if st == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "A never answered again: {st} {r}\n{}", t.s.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn no_privileges_and_a_read_only_root(wall: Wall) {
    let t = two_tenants(wall).await;
    let (code, a) = probe(&t.s, &t.a, &["identity"]);
    assert_eq!(code, 0, "{a}");
    let (_, b) = probe(&t.s, &t.b, &["identity"]);
    assert_eq!(a["uid"].as_u64(), Some(t.uid_a), "A runs as A's uid: {a}");
    assert_eq!(a["gid"].as_u64(), Some(t.uid_a));
    assert_eq!(b["uid"].as_u64(), Some(t.uid_b));
    assert_ne!(t.uid_a, t.uid_b, "tenants never share a uid");
    assert!(t.uid_a >= 100_000);
    for set in ["cap_eff", "cap_prm", "cap_bnd", "cap_amb"] {
        assert!(a[set].as_str().unwrap().chars().all(|c| c == '0'), "{set} must be empty: {a}");
    }
    assert_eq!(a["no_new_privs"], 1, "{a}");
    if wall.is_gvisor() {
        // The agent's system calls are served by gVisor's kernel, not the host's (whose own
        // seccomp filter confines gVisor).
        assert_ne!(a["kernel"].as_str().unwrap(), crate::harness::host_kernel(), "{a}");
    } else {
        assert_eq!(a["seccomp"], 2, "the default seccomp filter is on: {a}");
        assert_eq!(a["kernel"].as_str().unwrap(), crate::harness::host_kernel(), "{a}");
    }
    for attempt in ["setuid", "setgid", "raw_socket", "mount", "chroot"] {
        let found = a.as_object().unwrap().iter().find(|(k, _)| k.contains(attempt));
        let (k, v) = found.unwrap_or_else(|| panic!("identity lacks {attempt}: {a}"));
        let refused = v.is_string() || v.get("ok") == Some(&json!(false)) || v.get("error").is_some_and(|e| !e.is_null());
        assert!(refused, "{k} must fail: {v}");
    }

    let (code, fs) = probe(&t.s, &t.a, &["filesystem"]);
    assert_eq!(code, 0, "{fs}");
    for w in fs["writes"].as_array().unwrap() {
        let path = w["path"].as_str().unwrap();
        let should_work = path.starts_with("/data/") || path.starts_with("/run/clawpen/");
        assert_eq!(w["ok"].as_bool(), Some(should_work), "write to {path}: {w}");
    }
    assert_eq!(fs["tmp_exec"]["ok"], false, "/tmp is noexec: {fs}");
    assert!(fs["mounts"]["/"].as_str().unwrap().split(',').any(|o| o == "ro"), "{fs}");
    if wall.is_gvisor() {
        // gVisor does not carry the host mount's flags across its file proxy (docs/SECURITY.md):
        // what runs from /data runs against gVisor's kernel, as the agent does. /tmp is its own.
        assert!(fs["mounts"]["/tmp"].as_str().unwrap().split(',').any(|x| x == "noexec"), "{fs}");
    } else {
        assert_eq!(fs["data_exec"]["ok"], false, "/data is noexec: {fs}");
        assert_eq!(fs["run_exec"]["ok"], false, "/run/clawpen is noexec: {fs}");
        for point in ["/data", "/run/clawpen"] {
            let opts = fs["mounts"][point].as_str().unwrap();
            for o in ["noexec", "nosuid", "nodev"] {
                assert!(opts.split(',').any(|x| x == o), "{point} lacks {o}: {opts}");
            }
        }
        let tmp = fs["mounts"]["/tmp"].as_str().unwrap();
        for o in ["noexec", "nosuid", "nodev"] {
            assert!(tmp.split(',').any(|x| x == o), "/tmp lacks {o}: {tmp}");
        }
    }

    let (code, d) = probe(&t.s, &t.a, &["docker-socket"]);
    assert_eq!(code, 0, "{d}");
    for c in d["checks"].as_array().unwrap() {
        assert_eq!(c["exists"], false, "{c}");
        assert_ne!(c["connect_ok"], true, "{c}");
    }
    for sock in d["sockets_found"].as_array().unwrap() {
        let own = ["/run/clawpen/agent.sock", "/run/clawpen/control.sock"];
        assert!(own.contains(&sock.as_str().unwrap()), "the only sockets in the sandbox are its own: {d}");
    }
}

async fn no_secret_inside_the_sandbox_or_in_docker_inspect(wall: Wall) {
    let t = two_tenants(wall).await;
    // The server holds the provider keys (in its environment here): none may reach a sandbox.
    let keys = clawpen_standin::StandinConfig::for_testing();
    let mut needles = vec![t.s.admin.clone(), t.key_a.clone(), t.key_b.clone(), keys.openai_key, keys.anthropic_key];
    // And the vault's master keys and the connect-URL signing keys.
    for file in ["master.key", "signing.key"] {
        let keys = std::fs::read_to_string(t.s.data_dir().join(file)).unwrap_or_else(|e| panic!("the server created {file}: {e}"));
        needles.extend(keys.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_whitespace().nth(1)).map(str::to_owned));
    }
    assert!(needles.len() >= 7, "{needles:?}");
    let mut args = vec!["secrets"];
    for n in &needles {
        args.extend(["--needle", n.as_str()]);
    }
    let (code, v) = probe(&t.s, &t.a, &args);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["found"], json!([]), "a secret is visible inside the sandbox: {v}");
    assert!(v["files_scanned"].as_u64().unwrap() > 0, "the probe did scan: {v}");
    let out_text = v.to_string();
    for n in &needles {
        assert!(!out_text.contains(n.as_str()));
    }
    let allowed = [
        "PATH", "HOSTNAME", "HOME", "CLAWPEN_AGENT_ID", "CLAWPEN_TENANT_ID", "CLAWPEN_WORKSPACE", "CLAWPEN_RUN_DIR",
        "CLAWPEN_MAX_TOKENS", "CLAWPEN_MAX_TOOL_CALLS", "CLAWPEN_MAX_RUN_SECS",
    ];
    for k in v["env_keys"].as_array().unwrap() {
        assert!(allowed.contains(&k.as_str().unwrap()), "unexpected variable {k} in the sandbox");
    }
    let inspect = Command::new("docker").args(["inspect", &t.s.container(&t.a)]).output().unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains(&t.a), "inspect worked");
    for n in &needles {
        assert!(!text.contains(n.as_str()), "docker inspect shows a secret");
    }
}
