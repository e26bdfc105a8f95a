//! Several nodes: a second Docker Engine started by the test on this machine (its own socket,
//! data root and exec root, no bridge), which the server reaches over TCP with mutual TLS
//! (certificates made by the test). Agents are spread by committed memory; when the second
//! engine is killed its agents are marked lost and brought back on the first node while the
//! first node's agents run on undisturbed; the returning engine's stale sandboxes are swept;
//! `clawpen node drain` moves agents off a node.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{TestServer, EXE};

/// A second dockerd on this machine, removed with everything it made when dropped. It listens
/// on a Unix socket (for the test's own `docker` calls) and on loopback TCP with mutual TLS (for
/// the server).
struct SecondEngine {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn make_certs(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "clawpen test node CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issue = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        (p.signed_by(&key, &ca_cert, &ca_key).unwrap().pem(), key.serialize_pem())
    };
    let (server, server_key) = issue(vec!["127.0.0.1".into(), "localhost".into()], ExtendedKeyUsagePurpose::ServerAuth, "node two");
    let (client, client_key) = issue(vec![], ExtendedKeyUsagePurpose::ClientAuth, "clawpen server");
    for (name, pem) in [("ca.pem", ca_cert.pem()), ("server.pem", server), ("server-key.pem", server_key), ("client.pem", client), ("client-key.pem", client_key)] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
}

impl SecondEngine {
    fn start() -> SecondEngine {
        let dir = tempfile::Builder::new().prefix("cpt-d2-").tempdir_in("/tmp").unwrap().keep();
        std::fs::write(dir.join("daemon.json"), "{}").unwrap();
        make_certs(&dir);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut e = SecondEngine { dir, port, child: None };
        e.spawn();
        e
    }

    /// The server's `[[nodes]]` entry for this engine: TCP with mutual TLS.
    fn node_config(&self, name: &str) -> String {
        let d = self.dir.display();
        format!(
            "[[nodes]]\nname = \"{name}\"\ndocker = \"tcp://127.0.0.1:{}\"\ntls_ca = \"{d}/ca.pem\"\ntls_cert = \"{d}/client.pem\"\ntls_key = \"{d}/client-key.pem\"\n",
            self.port
        )
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn spawn(&mut self) {
        let d = &self.dir;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("-H")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--tlsverify")
            .arg("--tlscacert")
            .arg(d.join("ca.pem"))
            .arg("--tlscert")
            .arg(d.join("server.pem"))
            .arg("--tlskey")
            .arg(d.join("server-key.pem"))
            .args(["--bridge", "none", "--iptables=false", "--ip-masq=false", "--storage-driver", "fuse-overlayfs"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a second dockerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.docker(&["info", "--format", "{{.ServerVersion}}"]).0 {
            assert!(Instant::now() < deadline, "the second dockerd did not come up: {}", std::fs::read_to_string(d.join("dockerd.log")).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `docker` against this engine: (success, stdout).
    fn docker(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("docker").arg("-H").arg(format!("unix://{}", self.socket().display())).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// SIGKILL of the engine's daemon: the node stops answering.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        if self.child.is_some() {
            let (_, ids) = self.docker(&["ps", "-aq"]);
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.lines());
                let _ = self.docker(&args);
            }
            if let Some(c) = &self.child {
                let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            }
            if let Some(mut c) = self.child.take() {
                let _ = c.wait();
            }
        }
        // Its containerd, the shims and processes of containers it lost track of when it was
        // killed, and any mount left under the dir, go too.
        let d = self.dir.display().to_string();
        let _ = Command::new("pkill").args(["-f", &format!("containerd --config {d}")]).status();
        kill_orphan_shims(&d);
        std::thread::sleep(Duration::from_millis(300));
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut under: Vec<&str> = mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|m| m.starts_with(&d)).collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        let _ = Command::new("pkill").args(["-9", "-f", &format!("fuse-overlayfs.*{d}")]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills the containers (by their cgroups) and shims an engine under `dir` left behind.
fn kill_orphan_shims(dir: &str) {
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if !args.first().is_some_and(|a| a.contains("containerd-shim")) || !args.iter().any(|a| a.contains(dir)) {
            continue;
        }
        if let Some(id) = args.iter().position(|a| a == "-id").and_then(|i| args.get(i + 1)) {
            for ctl in ["pids", "memory", "cpu"] {
                let procs = std::fs::read_to_string(format!("/sys/fs/cgroup/{ctl}/docker/{id}/cgroup.procs")).unwrap_or_default();
                for cpid in procs.lines() {
                    let _ = Command::new("kill").args(["-9", cpid]).status();
                }
            }
        }
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

async fn agents(s: &TestServer, key: &str) -> Vec<Value> {
    let (st, list) = s.get("/api/v1/agents", key).await;
    assert_eq!(st, 200, "{list}");
    list["agents"].as_array().unwrap().clone()
}

async fn wait_until<F: Fn(&[Value]) -> bool>(s: &TestServer, key: &str, secs: u64, what: &str, pred: F) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let list = agents(s, key).await;
        if pred(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "waited {secs} s for {what}: {list:#?}\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn say(s: &TestServer, key: &str, id: &str, text: &str) {
    let (st, r) = s.post(&format!("/api/v1/agents/{id}/messages"), key, json!({"text": text})).await;
    assert_eq!(st, 200, "{r}\n{}", s.log());
    assert_eq!(r["reply"], format!("stand-in reply to: {text}"));
}

fn on(list: &[Value], node: &str) -> Vec<String> {
    list.iter().filter(|a| a["node"] == node).map(|a| a["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_spread_over_two_nodes_survive_a_lost_node_and_a_drain() {
    clawpen_meter::tls::install_provider();
    let mut two = SecondEngine::start();
    // The engine's TCP port speaks only TLS: a plain request gets no answer from the API.
    let plain = reqwest::get(format!("http://127.0.0.1:{}/_ping", two.port)).await;
    assert!(plain.is_err() || plain.unwrap().status() != 200, "the engine answered plain HTTP on TCP");
    let extra = format!(
        "[fleet]\ntick_ms = 200\nnode_lost_secs = 3\n\n[[nodes]]\nname = \"one\"\ndocker = \"unix:///var/run/docker.sock\"\n\n{}",
        two.node_config("two")
    );
    let s = TestServer::start_full("", "", &extra, &[]).await;
    let instance = s.instance();
    let (t, key) = s.tenant("spread").await;
    let tid = t["id"].as_str().unwrap().to_owned();
    for i in 0..4 {
        s.agent(&key, &format!("a{i}"), true).await;
    }
    // Placement by least committed memory: two on each node.
    let list = agents(&s, &key).await;
    let (on_one, on_two) = (on(&list, "one"), on(&list, "two"));
    assert_eq!((on_one.len(), on_two.len()), (2, 2), "{list:#?}");
    let (_, there) = two.docker(&["ps", "--filter", &format!("label=clawpen.instance={instance}"), "--format", "{{.Label \"clawpen.agent\"}}"]);
    let mut there: Vec<&str> = there.lines().collect();
    there.sort();
    let mut expected: Vec<&str> = on_two.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(there, expected, "the second engine runs exactly the agents placed there");
    for id in on_one.iter().chain(&on_two) {
        say(&s, &key, id, &format!("hello {id}")).await;
    }
    let started = |id: &str| {
        let out = Command::new("docker").args(["inspect", "-f", "{{.State.StartedAt}}", &s.container(id)]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let one_started: Vec<String> = on_one.iter().map(|id| started(id)).collect();

    // The second engine dies: its agents are lost, then brought back on node one.
    two.kill();
    let list = wait_until(&s, &key, 10, "the second node's agents to be lost", |l| on_two.iter().all(|id| l.iter().any(|a| a["id"] == id.as_str() && a["observed_state"] == "lost"))).await;
    for a in list.iter().filter(|a| on_one.iter().any(|id| a["id"] == id.as_str())) {
        assert_eq!(a["observed_state"], "running", "node one's agents are undisturbed: {a}");
    }
    let (st, nodes) = s.get("/api/v1/nodes", &s.admin).await;
    assert_eq!(st, 200, "{nodes}");
    assert_eq!(nodes["nodes"][1]["state"], "down", "{nodes}");
    for id in &on_one {
        say(&s, &key, id, "still here").await;
    }
    wait_until(&s, &key, 30, "the lost agents to run on node one", |l| l.iter().all(|a| a["node"] == "one" && a["observed_state"] == "running")).await;
    for id in &on_two {
        say(&s, &key, id, "moved").await;
        let session = std::fs::read_to_string(s.workspace(&tid, id).join("sessions/main.jsonl")).unwrap();
        assert!(session.contains(&format!("hello {id}")), "the workspace moved with the agent");
        let ev = s.get(&format!("/api/v1/agents/{id}/events?limit=100"), &key).await.1;
        let actions: Vec<&str> = ev["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert!(actions.contains(&"agent.lost") && actions.contains(&"agent.move"), "{actions:?}");
    }
    let now_started: Vec<String> = on_one.iter().map(|id| started(id)).collect();
    assert_eq!(one_started, now_started, "node one's sandboxes were never restarted");

    // The engine returns: the stale sandboxes of the moved agents are swept from it.
    two.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, left) = two.docker(&["ps", "-a", "--filter", &format!("label=clawpen.instance={instance}"), "-q"]);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "stale sandboxes stay on the returned node: {left}\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, nodes) = s.get("/api/v1/nodes", &s.admin).await;
    assert_eq!(nodes["nodes"][1]["state"], "up", "{nodes}");

    // New agents go to the emptier node two; draining it moves them to node one.
    for i in 0..2 {
        s.agent(&key, &format!("b{i}"), true).await;
    }
    let list = agents(&s, &key).await;
    let fresh = on(&list, "two");
    assert_eq!(fresh.len(), 2, "{list:#?}");
    for id in &fresh {
        say(&s, &key, id, "on two").await;
    }
    let out = Command::new(EXE).args(["node", "drain", "two", "--data-dir"]).arg(s.data_dir()).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["moved"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(report["remaining"].as_array().unwrap().len(), 0, "{report}");
    let list = agents(&s, &key).await;
    assert!(list.iter().all(|a| a["node"] == "one" && a["observed_state"] == "running"), "{list:#?}");
    for id in &fresh {
        say(&s, &key, id, "after the drain").await;
    }
    let (_, left) = two.docker(&["ps", "-a", "--filter", &format!("label=clawpen.instance={instance}"), "-q"]);
    assert!(left.is_empty(), "a drained node keeps no sandbox: {left}");
    // While drained it takes nothing new.
    let c = s.agent(&key, "c0", true).await;
    assert_eq!(c["node"], "one", "{c}");
    let (st, nodes) = s.get("/api/v1/nodes", &s.admin).await;
    assert_eq!((st, nodes["nodes"][1]["state"].as_str()), (200, Some("draining")), "{nodes}");
    // Nodes are the operator's: a tenant key cannot see or drain them.
    let (st, _) = s.get("/api/v1/nodes", &key).await;
    assert_eq!(st, 403);
    let (st, _) = s.post("/api/v1/nodes/two/drain", &key, json!({})).await;
    assert_eq!(st, 403);
    let (st, e) = s.post("/api/v1/nodes/three/drain", &s.admin, json!({})).await;
    assert_eq!(st, 404, "{e}");
}

/// Data dirs of nodes' own, unmounted and removed when dropped (after the server that used them).
struct NodeDirs(tempfile::TempDir);

impl NodeDirs {
    fn new() -> NodeDirs {
        NodeDirs(tempfile::Builder::new().prefix("cpt-nd-").tempdir_in("/tmp").unwrap())
    }
    fn of(&self, node: &str) -> PathBuf {
        self.0.path().join(node)
    }
}

impl Drop for NodeDirs {
    fn drop(&mut self) {
        crate::harness::unmount_under(self.0.path());
    }
}

/// SHA-256 of every regular file under `dir`, by relative path.
fn hashes(dir: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    use sha2::Digest;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, format!("{:x}", sha2::Sha256::digest(std::fs::read(e.path()).unwrap())));
            }
        }
    }
    out
}

async fn events(s: &TestServer, key: &str, id: &str) -> Vec<Value> {
    let (st, ev) = s.get(&format!("/api/v1/agents/{id}/events?limit=200"), key).await;
    assert_eq!(st, 200, "{ev}");
    ev["entries"].as_array().unwrap().clone()
}

/// Each node keeps its agents' filesystems in a data dir of its own, not the server's. A drain
/// moves an agent to the other node through storage: backed up, its filesystem removed from
/// the drained node, restored on the other, where it answers with its persona and memory and
/// every file is byte for byte what it was. A lost node's agent resumes on the other node from
/// its newest snapshot, and the stale copy is removed when the node returns.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_moved_between_nodes_with_separate_data_dirs_keeps_its_memory() {
    clawpen_meter::tls::install_provider();
    let dirs = NodeDirs::new();
    let mut two = SecondEngine::start();
    let (d1, d2) = (dirs.of("one"), dirs.of("two"));
    let extra = format!(
        "[fleet]\ntick_ms = 200\nnode_lost_secs = 3\n\n[[nodes]]\nname = \"one\"\ndocker = \"unix:///var/run/docker.sock\"\ndata_dir = \"{}\"\n\n{}data_dir = \"{}\"\n",
        d1.display(),
        two.node_config("two"),
        d2.display()
    );
    let s = TestServer::start_full("", "", &extra, &[]).await;
    let (_, key) = s.tenant("movers").await;
    // The first agent goes to node one, the second to the emptier node two.
    let first = s.agent(&key, "first", true).await["id"].as_str().unwrap().to_owned();
    let pip = s.agent(&key, "pip", true).await;
    assert_eq!(pip["node"], "two", "{pip}");
    let pip = pip["id"].as_str().unwrap().to_owned();
    let ws = |d: &std::path::Path, id: &str| d.join("agents").join(id).join("workspace");
    assert!(d2.join("volumes").join(format!("{pip}.img")).is_file(), "the filesystem is in node two's own data dir");
    assert!(!s.data_dir().join("volumes").join(format!("{pip}.img")).exists() && !d1.join("volumes").join(format!("{pip}.img")).exists());
    assert!(d1.join("volumes").join(format!("{first}.img")).is_file());

    let put = |file: &'static str, text: String| {
        let (s, key, pip) = (&s, &key, &pip);
        async move {
            let (st, e) = s.put(&format!("/api/v1/agents/{pip}/files?name={file}"), key, json!({"text": text})).await;
            assert_eq!(st, 204, "{e}");
        }
    };
    put("SOUL.md", "# SOUL.md\n\nYou are the family's helper.\n".into()).await;
    put("MEMORY.md", "# MEMORY.md\n\n- The children call you Pip. Sign off as Pip.\n".into()).await;
    let (st, r) = s.post(&format!("/api/v1/agents/{pip}/messages"), &key, json!({"text": "the swimming lesson is on Tuesday"})).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["reply"], "stand-in reply to: the swimming lesson is on Tuesday — Pip", "{r}");
    let before = hashes(&ws(&d2, &pip));
    assert!(before.contains_key("sessions/main.jsonl") && before.contains_key("MEMORY.md"), "{before:?}");

    // A drain moves it: backed up, gone from node two's data dir, restored into node one's.
    let (st, report) = s.post("/api/v1/nodes/two/drain", &s.admin, json!({})).await;
    assert_eq!(st, 200, "{report}\n{}", s.log());
    assert_eq!(report["moved"].as_array().unwrap().len(), 1, "{report}\n{}", s.log());
    let list = agents(&s, &key).await;
    let moved = list.iter().find(|a| a["id"] == pip.as_str()).unwrap();
    assert_eq!((moved["node"].as_str(), moved["observed_state"].as_str()), (Some("one"), Some("running")), "{moved}");
    assert!(!d2.join("volumes").join(format!("{pip}.img")).exists() && !d2.join("agents").join(&pip).exists(), "the drained node keeps nothing of it");
    let after = hashes(&ws(&d1, &pip));
    assert_eq!(before, after, "every file arrived byte for byte");
    let actions: Vec<String> = events(&s, &key, &pip).await.iter().map(|e| e["action"].as_str().unwrap().to_owned()).collect();
    for a in ["agent.backup", "agent.move", "agent.restore"] {
        assert!(actions.iter().any(|x| x == a), "{a} missing: {actions:?}");
    }
    let (st, r) = s.post(&format!("/api/v1/agents/{pip}/messages"), &key, json!({"text": "when is the swimming lesson?"})).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["reply"], "stand-in reply to: when is the swimming lesson? — Pip", "the memory came along: {r}");
    let session = std::fs::read_to_string(ws(&d1, &pip).join("sessions/main.jsonl")).unwrap();
    assert!(session.contains("the swimming lesson is on Tuesday") && session.contains("when is the swimming lesson?"), "{session}");
    let (st, e) = s.delete("/api/v1/nodes/two/drain", &s.admin).await;
    assert!(st == 200 || st == 204, "{e}");

    // A new agent on node two, backed up; then node two is lost: the agent resumes on node one
    // from that snapshot.
    let wren = s.agent(&key, "wren", true).await;
    assert_eq!(wren["node"], "two", "{wren}");
    let wren = wren["id"].as_str().unwrap().to_owned();
    let (st, r) = s.post(&format!("/api/v1/agents/{wren}/messages"), &key, json!({"text": "the dentist is on Monday"})).await;
    assert_eq!(st, 200, "{r}");
    let (st, b) = s.post(&format!("/api/v1/agents/{wren}/backups"), &key, json!({})).await;
    assert!(st == 200 || st == 201, "{b}");
    let snapshot = hashes(&ws(&d2, &wren));
    two.kill();
    wait_until(&s, &key, 40, "the lost agent to run on node one", |l| l.iter().any(|a| a["id"] == wren.as_str() && a["node"] == "one" && a["observed_state"] == "running")).await;
    assert_eq!(hashes(&ws(&d1, &wren)), snapshot, "it resumed from its snapshot");
    let (st, r) = s.post(&format!("/api/v1/agents/{wren}/messages"), &key, json!({"text": "still there?"})).await;
    assert_eq!(st, 200, "{r}");
    let session = std::fs::read_to_string(ws(&d1, &wren).join("sessions/main.jsonl")).unwrap();
    assert!(session.contains("the dentist is on Monday"), "{session}");

    // Node two returns: the stale copy of the moved agent is removed from its data dir.
    two.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while d2.join("volumes").join(format!("{wren}.img")).exists() || d2.join("agents").join(&wren).exists() {
        assert!(Instant::now() < deadline, "the stale copy stays on the returned node\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Deleting an agent leaves nothing of it in any node's data dir.
    let (st, e) = s.delete(&format!("/api/v1/agents/{pip}"), &key).await;
    assert!(st == 200 || st == 204, "{e}");
    for d in [&d1, &d2, &s.data_dir().to_owned()] {
        assert!(!d.join("volumes").join(format!("{pip}.img")).exists() && !d.join("agents").join(&pip).exists(), "{} keeps the deleted agent", d.display());
    }
}

/// A plan whose sandboxes run under a runtime one node's daemon lacks: the server refuses to
/// start, names the node and the plan, and says exactly how to register the runtime. (The
/// second engine here has only runc.)
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_whose_runtime_a_node_lacks_is_refused_at_start_with_the_fix() {
    crate::harness::image();
    let two = SecondEngine::start();
    let dir = tempfile::Builder::new().prefix("cpt-").tempdir_in("/tmp").unwrap();
    let config = dir.path().join("test-config.toml");
    let text = format!(
        "[plans.free]\n\n[plans.walled]\nruntime = \"runsc\"\n\n[[nodes]]\nname = \"one\"\ndocker = \"unix:///var/run/docker.sock\"\n\n{}",
        two.node_config("two")
    );
    std::fs::write(&config, text).unwrap();
    let out = Command::new(EXE).args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path()).arg("--config").arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the server started: {err}");
    for want in ["node two", "no runtime named runsc", "plan walled", "daemon.json", "\"--network=none\",\"--host-uds=all\"", "apt-get install runsc"] {
        assert!(err.contains(want), "{want:?} missing from: {err}");
    }
    drop(two);
}
