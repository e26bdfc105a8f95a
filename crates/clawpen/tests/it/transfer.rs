//! A tenant takes its data with it: exported from one server with `clawpen tenant export`,
//! imported into a fresh one with `clawpen tenant import`, the agent answers with the same
//! persona and memory; a plain OpenClaw workspace folder imports; hostile archives (a link, a
//! `..` path, a device, a gzip bomb past the plan's disk) are refused with a clear error and
//! leave nothing behind.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use crate::harness::{TestServer, EXE};

pub(crate) fn clawpen(args: &[&str], data_dir: &Path) -> (bool, String) {
    let out = std::process::Command::new(EXE).args(args).arg("--data-dir").arg(data_dir).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

async fn put_file(s: &TestServer, key: &str, agent: &str, name: &str, text: &str) {
    let (st, e) = s.put(&format!("/api/v1/agents/{agent}/files?name={name}"), key, json!({"text": text})).await;
    assert_eq!(st, 204, "{e}");
}

#[tokio::test]
async fn a_tenant_exported_from_one_server_answers_the_same_on_a_fresh_one() {
    let a = TestServer::start().await;
    let (ta, key_a) = a.tenant("family").await;
    let id = a.agent(&key_a, "keeper", true).await["id"].as_str().unwrap().to_owned();
    let soul = "# SOUL.md\n\nYou are Keeper, the family's helper. Sign off as Keeper.\n";
    put_file(&a, &key_a, &id, "SOUL.md", soul).await;
    put_file(&a, &key_a, &id, "MEMORY.md", "# MEMORY.md\n\n- Miso the cat is four\n").await;
    let (st, r) = a.post(&format!("/api/v1/agents/{id}/messages"), &key_a, json!({"text": "remember the vet on Friday"})).await;
    assert_eq!(st, 200, "{r}");

    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("family.tar.gz");
    let (ok, said) = clawpen(&["tenant", "export", ta["id"].as_str().unwrap(), "--out", &file.display().to_string()], a.data_dir());
    assert!(ok, "{said}");
    let items = clawpen_storage::archive::read_archive(std::fs::File::open(&file).unwrap(), &clawpen_storage::archive::Limits { max_bytes: 1 << 30, max_entries: 100_000 }).unwrap();
    let text = |p: &str| items.iter().find_map(|i| match i {
        clawpen_storage::archive::Item::File { path, bytes, .. } if path == p => Some(String::from_utf8_lossy(bytes).into_owned()),
        _ => None,
    });
    assert_eq!(text("agents/keeper/SOUL.md").as_deref(), Some(soul));
    assert!(text("usage.csv").unwrap().lines().count() >= 2, "a call is in usage.csv");
    assert!(text("audit.jsonl").unwrap().contains("agent.create"));
    assert!(text("clawpen-export.json").unwrap().contains("\"keeper\""));
    assert!(items.iter().any(|i| i.path().starts_with("agents/keeper/sessions/")), "the sessions come along");

    // A fresh server, a new tenant: the agent comes back as it was.
    let b = TestServer::start().await;
    let (tb, key_b) = b.tenant("family").await;
    let (ok, said) = clawpen(&["tenant", "import", &file.display().to_string(), "--tenant", tb["id"].as_str().unwrap()], b.data_dir());
    assert!(ok, "{said}\n{}", b.log());
    let imported: Value = serde_json::from_str(said.trim_start_matches(|c| c != '{')).unwrap();
    let new_id = imported["agents"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(imported["agents"][0]["name"], "keeper");
    let (st, started) = b.post(&format!("/api/v1/agents/{new_id}/start"), &key_b, json!({})).await;
    assert_eq!(st, 200, "{started}");
    let (_, f) = b.get(&format!("/api/v1/agents/{new_id}/files?name=SOUL.md"), &key_b).await;
    assert_eq!(f["text"].as_str(), Some(soul));
    let (_, memory) = b.get(&format!("/api/v1/agents/{new_id}/memory"), &key_b).await;
    assert!(memory.to_string().contains("Miso the cat is four"), "{memory}");
    let (st, r) = b.post(&format!("/api/v1/agents/{new_id}/messages"), &key_b, json!({"text": "who are you?"})).await;
    assert_eq!(st, 200, "{r}");
    assert!(r["reply"].as_str().unwrap().ends_with("— Keeper"), "the persona came along: {r}");
    let sessions: String = std::fs::read_dir(b.workspace("", &new_id).join("sessions")).unwrap().flatten().map(|e| std::fs::read_to_string(e.path()).unwrap_or_default()).collect();
    assert!(sessions.contains("remember the vet on Friday"), "the old conversation came along");
}

/// A .tar.gz holding one entry built by `make`.
fn archive_with(make: impl FnOnce(&mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    make(&mut b);
    b.into_inner().unwrap().finish().unwrap()
}

fn raw_header(name: &[u8], kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_cksum();
    h
}

async fn import_raw(s: &TestServer, key: &str, name: &str, body: Vec<u8>) -> (u16, Value) {
    let r = s.http.post(s.url(&format!("/api/v1/import?name={name}"))).bearer_auth(key).header("content-type", "application/gzip").body(body).send().await.unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

fn volumes(s: &TestServer) -> usize {
    std::fs::read_dir(s.data_dir().join("volumes")).unwrap().count()
}

#[tokio::test]
async fn an_openclaw_workspace_folder_imports_and_hostile_archives_leave_nothing() {
    let s = TestServer::start().await;
    let (t, key) = s.tenant("family").await;
    let folder = tempfile::tempdir().unwrap();
    let w = folder.path();
    std::fs::write(w.join("SOUL.md"), "# SOUL.md\n\nYou are Pip. Sign off as Pip.\n").unwrap();
    std::fs::write(w.join("USER.md"), "# USER.md\n\nAna, who likes tea.\n").unwrap();
    std::fs::write(w.join("MEMORY.md"), "# MEMORY.md\n\n- the garden needs water on Sundays\n").unwrap();
    std::fs::create_dir_all(w.join("memory")).unwrap();
    std::fs::write(w.join("memory/2026-11-30.md"), "- planted tulips\n").unwrap();
    let (ok, said) = clawpen(&["tenant", "import", &w.display().to_string(), "--tenant", t["id"].as_str().unwrap(), "--name", "pip"], s.data_dir());
    assert!(ok, "{said}");
    let agents = s.get("/api/v1/agents", &key).await.1["agents"].as_array().unwrap().clone();
    assert_eq!(agents.len(), 1);
    let pip = agents[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(s.post(&format!("/api/v1/agents/{pip}/start"), &key, json!({})).await.0, 200);
    let (_, memory) = s.get(&format!("/api/v1/agents/{pip}/memory"), &key).await;
    assert!(memory.to_string().contains("planted tulips") && memory.to_string().contains("garden needs water"), "{memory}");
    let (_, r) = s.post(&format!("/api/v1/agents/{pip}/messages"), &key, json!({"text": "hi"})).await;
    assert!(r["reply"].as_str().unwrap_or_default().ends_with("— Pip"), "{r}");

    // The same folder with a link in it is refused by the command, naming it.
    std::os::unix::fs::symlink("/etc/shadow", w.join("shadow")).unwrap();
    let (ok, said) = clawpen(&["tenant", "import", &w.display().to_string(), "--tenant", t["id"].as_str().unwrap(), "--name", "pip2"], s.data_dir());
    assert!(!ok && said.contains("\"shadow\" is a symlink"), "{said}");

    let before = volumes(&s);
    let link = archive_with(|b| {
        let mut h = raw_header(b"SOUL.md", tar::EntryType::Symlink, 0);
        h.set_link_name("/etc/shadow").unwrap();
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    });
    let climb = archive_with(|b| b.append(&raw_header(b"../../escape.md", tar::EntryType::Regular, 3), &b"hi\n"[..]).unwrap());
    let device = archive_with(|b| b.append(&raw_header(b"memory/null", tar::EntryType::Char, 0), std::io::empty()).unwrap());
    // 300 MiB of zeros, a few hundred KiB gzipped: past the plan's 256 MiB disk.
    let bomb = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let size = 300u64 * 1024 * 1024;
        let h = raw_header(b"MEMORY.md", tar::EntryType::Regular, size);
        gz.write_all(h.as_bytes()).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..300 {
            gz.write_all(&zeros).unwrap();
        }
        gz.write_all(&[0u8; 1024]).unwrap();
        gz.finish().unwrap()
    };
    for (what, body, status, code, says) in [
        ("a link", link, 422, "invalid_archive", "is a symlink"),
        ("a climb", climb, 422, "invalid_archive", "not a plain relative path"),
        ("a device", device, 422, "invalid_archive", "is a character device"),
        ("a gzip bomb", bomb, 413, "archive_too_large", "quota"),
    ] {
        let (st, e) = import_raw(&s, &key, "evil", body).await;
        assert_eq!((st, e["error"]["code"].as_str()), (status, Some(code)), "{what}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(says), "{what}: {e}");
        assert_eq!(s.get("/api/v1/agents", &key).await.1["agents"].as_array().unwrap().len(), 1, "{what}: no agent is left");
        assert_eq!(volumes(&s), before, "{what}: no filesystem is left");
    }
    assert!(!std::path::Path::new("/escape.md").exists() && !s.data_dir().join("escape.md").exists());
}

#[tokio::test]
async fn a_server_killed_during_an_import_leaves_the_agent_whole_or_not_at_all() {
    let mut s = TestServer::start().await;
    let (_, key) = s.tenant("family").await;
    // A workspace of 40 notes of 1 MiB: long enough to be killed in.
    let mut w = clawpen_storage::archive::Writer::new(Vec::new());
    w.add_file("SOUL.md", 0o644, b"# SOUL.md\n\nYou are Big.\n").unwrap();
    w.add_dir("memory", 0o755).unwrap();
    for i in 0..40u32 {
        let bytes: Vec<u8> = (0..1024 * 1024u32).map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(i) >> 11) as u8).collect();
        w.add_file(&format!("memory/{i:02}.md"), 0o644, &bytes).unwrap();
    }
    let archive = w.finish().unwrap();
    for (round, delay) in [20u64, 60, 150, 300].into_iter().enumerate() {
        let name = format!("big{round}");
        let (http, url, k, body) = (s.http.clone(), s.url(&format!("/api/v1/import?name={name}")), key.clone(), archive.clone());
        let call = tokio::spawn(async move { http.post(url).bearer_auth(k).header("content-type", "application/gzip").body(body).send().await.map(|r| r.status().as_u16()) });
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        s.kill();
        let _ = call.await;
        s.spawn().await;
        let (_, list) = s.get("/api/v1/agents", &key).await;
        for a in list["agents"].as_array().unwrap() {
            assert_ne!(a["desired_state"], "deleted", "round {round}: a half-imported agent is visible: {a}");
            let n = std::fs::read_dir(s.workspace("", a["id"].as_str().unwrap()).join("memory")).unwrap().count();
            assert_eq!(n, 40, "round {round}: {} has {n} of 40 notes", a["name"]);
        }
        let volumes = std::fs::read_dir(s.data_dir().join("volumes")).unwrap().count();
        assert_eq!(volumes, list["agents"].as_array().unwrap().len(), "round {round}: no filesystem without its agent");
    }
    let log = s.log();
    eprintln!("imports finished as deletes: {}, imports done: {}", log.matches("finishing an interrupted delete").count(), s.get("/api/v1/agents", &key).await.1["agents"].as_array().unwrap().len());
}

/// Files under `dir` (the harness's own log and config left out) whose name or bytes hold any
/// of `needles`.
fn files_naming(dir: &Path, needles: &[String]) -> Vec<String> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "server.log" || name == "test-config.toml" {
            continue;
        }
        if needles.iter().any(|n| name.contains(n.as_str())) {
            hits.push(p.display().to_string());
        }
        let t = e.file_type().unwrap();
        if t.is_dir() {
            hits.extend(files_naming(&p, needles));
        } else if t.is_file() {
            let bytes = std::fs::read(&p).unwrap_or_default();
            for n in needles {
                if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                    hits.push(format!("{} holds {n}", p.display()));
                }
            }
        }
    }
    hits
}

#[tokio::test]
async fn a_purged_tenant_is_found_nowhere_and_the_others_keep_answering() {
    let s = TestServer::start().await;
    let (doomed, key) = s.tenant("doomed").await;
    let tenant = doomed["id"].as_str().unwrap().to_owned();
    let (_, key_b) = s.tenant("stays").await;
    let b = s.agent(&key_b, "other", true).await["id"].as_str().unwrap().to_owned();
    let marker = format!("MARKER-{}", rand::random::<u64>());
    let mut needles = vec![tenant.clone(), marker.clone()];
    for name in ["one", "two"] {
        let id = s.agent(&key, name, true).await["id"].as_str().unwrap().to_owned();
        put_file(&s, &key, &id, "MEMORY.md", &format!("- {marker}\n")).await;
        let (st, r) = s.post(&format!("/api/v1/agents/{id}/messages"), &key, json!({"text": format!("keep {marker}")})).await;
        assert_eq!(st, 200, "{r}");
        assert_eq!(s.post(&format!("/api/v1/agents/{id}/backups"), &key, json!({})).await.0, 200);
        needles.push(id);
    }
    let (st, m) = s.post(&format!("/api/v1/tenants/{tenant}/members"), &s.admin.clone(), json!({"kind": "web", "external_id": "gone@doomed.example", "display_name": marker, "password": "correct horse battery staple"})).await;
    assert_eq!(st, 201, "{m}");
    needles.push("gone@doomed.example".into());
    assert!(!files_naming(s.data_dir(), &needles).is_empty(), "the scan finds the tenant before the purge");

    let (ok, said) = crate::transfer::clawpen(&["tenant", "delete", &tenant, "--purge"], s.data_dir());
    assert!(ok, "{said}\n{}", s.log());
    // Its key is gone with it.
    assert_eq!(s.get("/api/v1/agents", &key).await.0, 401);

    let hits = files_naming(s.data_dir(), &needles);
    assert!(hits.is_empty(), "the data dir, the store and storage still hold the tenant: {hits:?}");
    let docker = std::process::Command::new("docker").args(["ps", "-a", "--format", "{{.ID}}"]).output().unwrap();
    for c in String::from_utf8_lossy(&docker.stdout).lines() {
        let inspect = std::process::Command::new("docker").args(["inspect", c]).output().unwrap();
        let inspect = String::from_utf8_lossy(&inspect.stdout);
        for n in &needles {
            assert!(!inspect.contains(n.as_str()), "container {c} names {n}");
        }
    }
    // One audit line says it happened, naming the tenant by a hash of its id.
    let (_, audit) = s.get("/api/v1/audit", &s.admin.clone()).await;
    let purge = audit["entries"].as_array().unwrap().iter().find(|e| e["action"] == "tenant.purge").expect("a tenant.purge line").clone();
    let hash: String = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(tenant.as_bytes())).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(purge["detail"]["tenant_sha256"], hash.as_str(), "{purge}");
    assert!(!audit.to_string().contains(&tenant));
    // The other tenant answers as before.
    let (st, r) = s.post(&format!("/api/v1/agents/{b}/messages"), &key_b, json!({"text": "still there?"})).await;
    assert_eq!(st, 200, "{r}");
}
