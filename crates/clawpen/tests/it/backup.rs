//! Workspaces outlive their node's copy: backed up to storage (the local folder, and an
//! S3-compatible server through `object_store`'s S3 client), the node's copy wiped, and the
//! agent started again: every file comes back byte for byte, and the agent remembers. A tenant
//! that leaves takes everything of it out of the bucket.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::harness::TestServer;

/// Every regular file and dir under `dir` (links are not followed), with the SHA-256 of each
/// file's bytes.
fn hashes(dir: &Path) -> BTreeMap<String, String> {
    fn go(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let t = e.file_type().unwrap();
            let rel = e.path().strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if t.is_dir() {
                out.insert(format!("{rel}/"), String::new());
                go(base, &e.path(), out);
            } else if t.is_file() {
                out.insert(rel, hex(&Sha256::digest(std::fs::read(e.path()).unwrap())));
            }
        }
    }
    let mut out = BTreeMap::new();
    go(dir, dir, &mut out);
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sh(args: &[&str]) {
    let st = std::process::Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?}");
}

/// A family's workspace: notes, nested dirs, a 2 MiB binary and 200 small files, owned by the
/// agent's uid; plus a link the sandbox planted, which is neither followed nor kept.
fn fill(ws: &Path) {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(ws).unwrap().uid().to_string();
    std::fs::write(ws.join("MEMORY.md"), "# MEMORY.md\n\n- Miso the cat is four\n").unwrap();
    std::fs::create_dir_all(ws.join("memory/deep/a/b")).unwrap();
    std::fs::write(ws.join("memory/2026-12-01.md"), "- walked Miso to the vet\n").unwrap();
    std::fs::write(ws.join("memory/deep/a/b/c.txt"), "nested\n").unwrap();
    let photo: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(ws.join("photo.bin"), photo).unwrap();
    std::fs::create_dir_all(ws.join("notes")).unwrap();
    for i in 0..200 {
        std::fs::write(ws.join("notes").join(format!("{i:03}.md")), format!("note {i}\n").repeat(i + 1)).unwrap();
    }
    sh(&["chown", "-R", &format!("{uid}:{uid}"), &ws.display().to_string()]);
    std::os::unix::fs::symlink("/etc/shadow", ws.join("shadow-link")).unwrap();
}

/// Backs up, wipes the node's copy, starts again; returns the agent's id and its tenant's key.
async fn round_trip(s: &TestServer) -> (String, String) {
    let (t, key) = s.tenant("family").await;
    let a = s.agent(&key, "keeper", true).await;
    let id = a["id"].as_str().unwrap().to_owned();
    let ws = s.workspace("", &id);
    fill(&ws);
    let mut before = hashes(&ws);
    before.remove("shadow-link");

    let (st, b) = s.post(&format!("/api/v1/agents/{id}/backups"), &key, json!({})).await;
    assert_eq!(st, 200, "{b}\nlog:\n{}", s.log());
    assert_eq!(b["unchanged"], false);
    assert_eq!(b["skipped"], 1, "the planted link is not kept: {b}");
    assert!(b["files"].as_u64().unwrap() >= 205 && b["bytes_sent"].as_u64().unwrap() > 2 * 1024 * 1024, "{b}");
    // Nothing changed: nothing sent, no new snapshot.
    let (_, again) = s.post(&format!("/api/v1/agents/{id}/backups"), &key, json!({})).await;
    assert_eq!((again["unchanged"].as_bool(), again["bytes_sent"].as_u64(), again["snapshot_id"].as_str()), (Some(true), Some(0), b["snapshot_id"].as_str()), "{again}");
    let (_, list) = s.get(&format!("/api/v1/agents/{id}/backups"), &key).await;
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1, "{list}");
    // Another tenant sees none of it.
    let (_, key_b) = s.tenant("other").await;
    assert_eq!(s.get(&format!("/api/v1/agents/{id}/backups"), &key_b).await.0, 404);
    assert_eq!(s.post(&format!("/api/v1/agents/{id}/backups"), &key_b, json!({})).await.0, 404);

    // The node loses its copy: the sandbox goes, the filesystem is unmounted and deleted.
    let (st, h) = s.post(&format!("/api/v1/agents/{id}/hibernate"), &key, json!({"tier": "removed"})).await;
    assert_eq!(st, 200, "{h}");
    let root = s.data_dir().join("agents").join(&id);
    sh(&["umount", "-l", &root.display().to_string()]);
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::remove_file(s.data_dir().join("volumes").join(format!("{id}.img"))).unwrap();

    let (st, started) = s.post(&format!("/api/v1/agents/{id}/start"), &key, json!({})).await;
    assert_eq!(st, 200, "{started}\nlog:\n{}", s.log());
    assert_eq!(hashes(&ws), before, "every file is back, byte for byte");
    let (_, memory) = s.get(&format!("/api/v1/agents/{id}/memory"), &key).await;
    assert!(memory.to_string().contains("Miso the cat is four"), "{memory}");
    let (st, reply) = s.post(&format!("/api/v1/agents/{id}/messages"), &key, json!({"text": "what is the cat called?"})).await;
    let logs = s.get(&format!("/api/v1/agents/{id}/logs"), &key).await.1;
    assert_eq!(st, 200, "{reply}\n{logs}");
    let (_, audit) = s.get(&format!("/api/v1/audit?tenant={}", t["id"].as_str().unwrap()), &s.admin.clone()).await;
    let actions: Vec<&str> = audit["entries"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"agent.backup") && actions.contains(&"agent.restore"), "{actions:?}");
    (id, key)
}

#[tokio::test]
async fn a_workspace_wiped_from_its_node_comes_back_from_the_local_folder() {
    let s = TestServer::start().await;
    let (id, key) = round_trip(&s).await;
    let storage = s.data_dir().join("storage/tenants");
    assert!(walkdir_count(&storage, &id) > 0, "the snapshot is in <data-dir>/storage");
    // Deleting the agent takes its snapshots with it.
    let (st, _) = s.delete(&format!("/api/v1/agents/{id}"), &key).await;
    assert_eq!(st, 204);
    assert_eq!(walkdir_count(&storage, &id), 0, "no snapshot of a deleted agent is left");
}

/// Entries anywhere under `dir` whose path names `needle`.
fn walkdir_count(dir: &Path, needle: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().to_string_lossy().contains(needle) {
            n += 1;
        }
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            n += walkdir_count(&e.path(), needle);
        }
    }
    n
}

#[tokio::test]
async fn a_workspace_wiped_from_its_node_comes_back_from_an_s3_compatible_server() {
    let Some(s3) = clawpen_standin::s3::S3Server::start() else { return };
    s3.create_bucket("clawpen-it");
    let creds = tempfile::NamedTempFile::new().unwrap();
    clawpen_standin::s3::S3Server::write_credentials(creds.path());
    let extra = format!("[storage]\nurl = \"{}\"\ncredentials_file = \"{}\"\n", s3.url("clawpen-it", "node-a"), creds.path().display());
    let s = TestServer::start_full("", "", &extra, &[]).await;
    let (id, key) = round_trip(&s).await;
    // Nothing went to the local folder; the snapshot is in the bucket.
    assert!(!s.data_dir().join("storage").exists());
    let storage = clawpen_storage::Storage::open(&s3.url("clawpen-it", "node-a"), s.data_dir(), Some(creds.path())).unwrap();
    let objects = storage.list("tenants").await.unwrap();
    assert!(objects.iter().any(|(k, _)| k.contains(&format!("agents/{id}/snapshots/"))), "{objects:?}");
    let log = s.log();
    assert!(!log.contains("testing-secret-key"), "the S3 secret is never logged");
    // The tenant asks to leave: nothing of it is left in the bucket.
    let (st, e) = s.delete("/api/v1/account", &key).await;
    assert_eq!(st, 204, "{e}\nlog:\n{}", s.log());
    let left = storage.list("tenants").await.unwrap();
    assert!(left.is_empty(), "the bucket still holds {left:?}");
    assert_eq!(s.get("/api/v1/agents", &key).await.0, 401, "its key went with it");
}

/// Removes the agent's filesystem from the node (its sandbox removed first).
async fn wipe(s: &TestServer, key: &str, id: &str) {
    let (st, h) = s.post(&format!("/api/v1/agents/{id}/hibernate"), key, json!({"tier": "removed"})).await;
    assert!(st == 200 || st == 409, "{h}");
    let root = s.data_dir().join("agents").join(id);
    let _ = std::process::Command::new("umount").args(["-l", &root.display().to_string()]).status();
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(s.data_dir().join("volumes").join(format!("{id}.img")));
}

/// Every snapshot the storage folder holds restores to exactly `want`.
async fn every_snapshot_is_whole(s: &TestServer, tenant: &str, id: &str, want: &BTreeMap<String, String>, round: &str) -> usize {
    let storage = clawpen_storage::Storage::local(&s.data_dir().join("storage")).unwrap();
    let ids = clawpen_storage::snapshot::list(&storage, tenant, id).await.unwrap();
    for sid in &ids {
        let m = clawpen_storage::snapshot::manifest(&storage, tenant, id, sid).await.unwrap_or_else(|e| panic!("{round}: snapshot {sid} is listed but unusable: {e}"));
        let into = tempfile::tempdir().unwrap();
        let ws = clawpen_hostfs::SandboxDir::open(into.path()).unwrap();
        clawpen_storage::snapshot::restore(&storage, &m, ws, 0, &clawpen_storage::snapshot::Quiet).await.unwrap_or_else(|e| panic!("{round}: snapshot {sid} does not restore: {e}"));
        assert_eq!(&hashes(into.path()), want, "{round}: snapshot {sid} differs from the workspace");
    }
    ids.len()
}

/// Nothing a restore makes aside is left in the data dir.
fn no_restore_leftovers(s: &TestServer, round: &str) {
    for d in ["agents", "volumes"] {
        for e in std::fs::read_dir(s.data_dir().join(d)).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with(".restore-") && !name.ends_with(".tmp"), "{round}: {d}/{name} is left over");
        }
    }
}

#[tokio::test]
async fn a_server_killed_during_backups_and_restores_never_uses_half_a_snapshot_and_loses_nothing() {
    let mut s = TestServer::start().await;
    let (t, key) = s.tenant("family").await;
    let tenant = t["id"].as_str().unwrap().to_owned();
    let a = s.agent(&key, "keeper", true).await;
    let id = a["id"].as_str().unwrap().to_owned();
    let ws = s.workspace("", &id);
    fill(&ws);
    // Enough to take a while: 24 files of 2 MiB more.
    for i in 0..24u32 {
        let bytes: Vec<u8> = (0..2 * 1024 * 1024u32).map(|j| (j.wrapping_mul(31).wrapping_add(i * 7919) >> 5) as u8).collect();
        std::fs::write(ws.join("notes").join(format!("scan-{i:02}.bin")), bytes).unwrap();
    }
    let mut want = hashes(&ws);
    want.remove("shadow-link");

    // Killed while backing up, at several points: a snapshot is whole or not there at all.
    for (round, delay) in [3u64, 15, 40, 90].into_iter().enumerate() {
        let (http, url, k) = (s.http.clone(), s.url(&format!("/api/v1/agents/{id}/backups")), key.clone());
        let call = tokio::spawn(async move { http.post(url).bearer_auth(k).json(&json!({})).send().await.map(|r| r.status().as_u16()) });
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        s.kill();
        let _ = call.await;
        s.spawn().await;
        every_snapshot_is_whole(&s, &tenant, &id, &want, &format!("backup kill {round}")).await;
    }
    let (st, b) = s.post(&format!("/api/v1/agents/{id}/backups"), &key, json!({})).await;
    assert_eq!(st, 200, "{b}");
    assert!(every_snapshot_is_whole(&s, &tenant, &id, &want, "after the kills").await >= 1);

    // Killed while restoring onto a wiped node: the half-restored filesystem is never the
    // agent's; the restart restores again, whole.
    for (round, delay) in [5u64, 30, 80, 160].into_iter().enumerate() {
        wipe(&s, &key, &id).await;
        let (http, url, k) = (s.http.clone(), s.url(&format!("/api/v1/agents/{id}/start")), key.clone());
        let call = tokio::spawn(async move { http.post(url).bearer_auth(k).json(&json!({})).send().await.map(|r| r.status().as_u16()) });
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        s.kill();
        let _ = call.await;
        s.spawn().await;
        let round = format!("restore kill {round}");
        let (st, started) = s.post(&format!("/api/v1/agents/{id}/start"), &key, json!({})).await;
        assert_eq!(st, 200, "{round}: {started}\nlog:\n{}", s.log());
        assert_eq!(hashes(&ws), want, "{round}: the workspace is whole");
        no_restore_leftovers(&s, &round);
    }
    eprintln!("interrupted restores: {}", s.log().matches("removing a restore that was interrupted").count());
}

fn clawpen(args: &[&str], data_dir: &Path) -> (bool, String) {
    let out = std::process::Command::new(crate::harness::EXE).args(args).arg("--data-dir").arg(data_dir).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn the_operator_backs_up_every_agent_and_the_store_and_puts_a_lost_store_back() {
    let mut s = TestServer::start().await;
    let (_, key) = s.tenant("family").await;
    let a = s.agent(&key, "keeper", true).await;
    let id = a["id"].as_str().unwrap().to_owned();
    let b = s.agent(&key, "helper", true).await;
    let dir = s.data_dir().to_owned();

    let (ok, out) = clawpen(&["backup", "agents"], &dir);
    assert!(ok && out.contains(&format!("{id}: snapshot")) && out.contains(b["id"].as_str().unwrap()), "{out}");
    let (ok, out) = clawpen(&["backup", "list"], &dir);
    assert!(ok && out.contains("snapshot_id") && out.contains(&id), "{out}");
    let (ok, out) = clawpen(&["backup", "store"], &dir);
    assert!(ok && out.contains("store/clawpen-"), "{out}");
    // Not while the server runs.
    let (ok, out) = clawpen(&["backup", "restore-store"], &dir);
    assert!(!ok && out.contains("stop it first"), "{out}");

    // The store is lost; the copy comes back and the server knows its tenants again.
    assert!(s.terminate());
    for f in ["clawpen.db", "clawpen.db-wal", "clawpen.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let (ok, out) = clawpen(&["backup", "restore-store"], &dir);
    assert!(ok, "{out}");
    s.spawn().await;
    let (st, list) = s.get("/api/v1/agents", &key).await;
    assert_eq!(st, 200, "{list}");
    assert_eq!(list["agents"].as_array().unwrap().len(), 2, "{list}");
}

async fn actions(s: &TestServer, tenant: &str) -> Vec<String> {
    let (st, a) = s.get(&format!("/api/v1/audit?tenant={tenant}&limit=500"), &s.admin).await;
    assert_eq!(st, 200, "{a}");
    a["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap().to_owned()).collect()
}

async fn wait_for_action(s: &TestServer, tenant: &str, action: &str, count: usize, secs: u64) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let list = actions(s, tenant).await;
        if list.iter().filter(|a| *a == action).count() >= count {
            return list;
        }
        assert!(std::time::Instant::now() < deadline, "no {action} (x{count}) within {secs} s: {list:?}\n{}", s.log());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A plan's inactivity rules, in seconds instead of days: a tenant nobody writes to is warned on
/// Telegram, then its agent's data is archived to storage and taken off the node (no sandbox,
/// no filesystem); a message brings it back byte for byte and forgets the warning; left alone
/// again, the tenant is warned, archived and finally deleted with everything of it. A tenant on
/// a plan without the rules is never touched.
#[tokio::test(flavor = "multi_thread")]
async fn an_inactive_tenant_is_warned_archived_and_deleted_on_its_plans_days() {
    const TOKEN: &str = "700021:AAinactiveBotTOKENsecretPART_0000021";
    const GRANDPA: i64 = 6_200_001;
    // 10 s to the warning (past the set-up below), 6 s more to the archive, 30 s to the delete.
    let (warn, grace, delete) = (10.0 / 86_400.0, 6.0 / 86_400.0, 30.0 / 86_400.0);
    let plan = format!("inactive_warn_days = {warn:e}\ninactive_grace_days = {grace:e}\ninactive_delete_days = {delete:e}\n");
    let s = TestServer::start_full(&plan, "", "[telegram]\napi_base = \"STANDIN\"\nmode = \"webhook\"\n\n[fleet]\ntick_ms = 200\n", &[]).await;
    let tg = s.standin.telegram();
    tg.add_bot(TOKEN, "sleepy_family_bot");
    let (t, key) = s.tenant("sleepy").await;
    let tid = t["id"].as_str().unwrap().to_owned();
    let (busy, busy_key) = s.tenant_on("busy", "standard").await;
    let keeper = s.agent(&busy_key, "keeper", true).await["id"].as_str().unwrap().to_owned();
    let id = s.agent(&key, "nest", true).await["id"].as_str().unwrap().to_owned();
    let (st, v) = s.put(&format!("/api/v1/agents/{id}/files?name=MEMORY.md"), &key, json!({"text": "- Grandpa's birthday is in May. Sign off as Nest.\n"})).await;
    assert_eq!(st, 204, "{v}");
    let (st, v) = s.put("/api/v1/telegram/bot", &key, json!({"token": TOKEN, "agent_id": id, "mode": "webhook"})).await;
    assert_eq!(st, 200, "{v}");
    let (st, c) = s.post("/api/v1/telegram/pairing-codes", &key, json!({"agent_id": id})).await;
    assert_eq!(st, 201, "{c}");
    tg.inject_message(TOKEN, GRANDPA, &format!("/pair {}", c["code"].as_str().unwrap()));
    tg.wait_for_sent(TOKEN, GRANDPA, 1, std::time::Duration::from_secs(30)).await;
    tg.inject_message(TOKEN, GRANDPA, "the garden party is on Sunday");
    let sent = tg.wait_for_sent(TOKEN, GRANDPA, 2, std::time::Duration::from_secs(60)).await;
    assert_eq!(sent[1], "stand-in reply to: the garden party is on Sunday — Nest", "{sent:?}");

    // Warned, on Telegram, without the agent being woken for it.
    wait_for_action(&s, &tid, "tenant.inactive-warn", 1, 30).await;
    let sent = tg.wait_for_sent(TOKEN, GRANDPA, 3, std::time::Duration::from_secs(10)).await;
    assert!(sent[2].contains("have not been used") && sent[2].contains("Send any message to keep it"), "{sent:?}");
    let ws = s.workspace("", &id);
    let before = hashes(&ws);

    // Archived: backed up, no sandbox and no filesystem left on the node.
    let list = wait_for_action(&s, &tid, "tenant.archive", 1, 30).await;
    assert!(list.iter().any(|a| a == "agent.archive"), "{list:?}");
    let container = s.container(&id);
    let out = std::process::Command::new("docker").args(["inspect", &container]).output().unwrap();
    assert!(!out.status.success(), "the archived agent's sandbox is gone");
    assert!(!s.data_dir().join("volumes").join(format!("{id}.img")).exists() && !s.data_dir().join("agents").join(&id).exists(), "its filesystem is gone from the node");
    let snapshots = s.data_dir().join("storage/tenants").join(&tid).join("agents").join(&id).join("snapshots");
    assert!(std::fs::read_dir(&snapshots).unwrap().count() >= 1, "its snapshot is in storage");
    // The other plan's tenant is untouched and answers.
    let (st, r) = s.post(&format!("/api/v1/agents/{keeper}/messages"), &busy_key, json!({"text": "hello"})).await;
    assert_eq!(st, 200, "{r}");
    assert!(!actions(&s, busy["id"].as_str().unwrap()).await.iter().any(|a| a.starts_with("tenant.inactive") || a == "tenant.archive"));

    // Started again: every file comes back; Grandpa's next message finds its memory and
    // forgets the warning.
    let (st, v) = s.post(&format!("/api/v1/agents/{id}/start"), &key, json!({})).await;
    assert_eq!(st, 200, "{v}\n{}", s.log());
    assert_eq!(hashes(&ws), before, "the archived workspace came back byte for byte");
    tg.inject_message(TOKEN, GRANDPA, "when is my birthday?");
    let sent = tg.wait_for_sent(TOKEN, GRANDPA, 4, std::time::Duration::from_secs(60)).await;
    assert_eq!(sent[3], "stand-in reply to: when is my birthday? — Nest", "{sent:?}");
    let list = wait_for_action(&s, &tid, "tenant.active", 1, 30).await;
    assert!(list.iter().any(|a| a == "agent.restore"), "{list:?}");

    // Left alone again: warned, archived, and deleted with everything of it.
    wait_for_action(&s, &tid, "tenant.inactive-warn", 2, 30).await;
    wait_for_action(&s, &tid, "tenant.archive", 2, 30).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while s.get("/api/v1/agents", &key).await.0 != 401 {
        assert!(std::time::Instant::now() < deadline, "the tenant was not deleted\n{}", s.log());
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert!(!s.data_dir().join("storage/tenants").join(&tid).exists(), "its snapshots are gone from storage");
    let (st, tenants) = s.get("/api/v1/tenants", &s.admin).await;
    assert_eq!(st, 200);
    assert!(!tenants.to_string().contains(&tid), "{tenants}");
    let (st, r) = s.post(&format!("/api/v1/agents/{keeper}/messages"), &busy_key, json!({"text": "still here"})).await;
    assert_eq!(st, 200, "the other tenant answers: {r}");
}
