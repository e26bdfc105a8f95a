use std::collections::BTreeMap;
use std::path::Path;

use clawpen_hostfs::SandboxDir;
use sha2::{Digest, Sha256};

use crate::snapshot::{self, Quiet};
use crate::Storage;

fn uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Every file under `dir` with the SHA-256 of its bytes (links and FIFOs not followed).
fn hashes(dir: &Path) -> BTreeMap<String, String> {
    fn go(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            let rel = e.path().strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if t.is_dir() {
                out.insert(format!("{rel}/"), String::new());
                go(base, &e.path(), out);
            } else if t.is_file() {
                out.insert(rel, hex::encode(Sha256::digest(std::fs::read(e.path()).unwrap())));
            }
        }
    }
    let mut out = BTreeMap::new();
    go(dir, dir, &mut out);
    out
}

fn workspace(root: &Path) -> std::path::PathBuf {
    let ws = root.join("ws");
    std::fs::create_dir_all(ws.join("memory/2026")).unwrap();
    std::fs::write(ws.join("SOUL.md"), "# SOUL.md\nBe kind.\n").unwrap();
    std::fs::write(ws.join("MEMORY.md"), "- Ana likes tea\n").unwrap();
    std::fs::write(ws.join("memory/2026/12-01.md"), "walked the dog\n").unwrap();
    std::fs::write(ws.join("big.bin"), vec![7u8; 300_000]).unwrap();
    ws
}

#[tokio::test]
async fn a_snapshot_restores_byte_for_byte_and_the_next_sends_only_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = Storage::local(&tmp.path().join("store")).unwrap();
    let ws = workspace(tmp.path());
    // Planted by the sandbox: none of these is followed or kept.
    std::os::unix::fs::symlink("/etc/shadow", ws.join("shadow")).unwrap();
    std::os::unix::fs::symlink("/etc", ws.join("memory/etc")).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, ws.join("fifo"), rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();

    let (first, s1) = snapshot::take(&storage, "t_a", "ag_1", SandboxDir::open(&ws).unwrap(), None, &Quiet).await.unwrap();
    assert_eq!((s1.files, s1.blobs_sent, s1.skipped), (4, 4, 3), "{s1:?}");
    assert_eq!(first.skipped, vec!["fifo".to_owned(), "memory/etc".to_owned(), "shadow".to_owned()]);

    // Nothing changed: nothing read, nothing sent, no new manifest.
    let (same, s2) = snapshot::take(&storage, "t_a", "ag_1", SandboxDir::open(&ws).unwrap(), Some(&first), &Quiet).await.unwrap();
    assert!(s2.unchanged && s2.files_read == 0 && s2.blobs_sent == 0, "{s2:?}");
    assert_eq!(same.id, first.id);
    assert_eq!(snapshot::list(&storage, "t_a", "ag_1").await.unwrap().len(), 1);

    // One file changed (same size, so only its ctime gives it away): one read, one blob.
    std::fs::write(ws.join("MEMORY.md"), "- Ana likes TEA\n").unwrap();
    let (second, s3) = snapshot::take(&storage, "t_a", "ag_1", SandboxDir::open(&ws).unwrap(), Some(&first), &Quiet).await.unwrap();
    assert_eq!((s3.files_read, s3.blobs_sent, s3.bytes_sent, s3.unchanged), (1, 1, 16, false), "{s3:?}");
    assert_ne!(second.id, first.id);
    assert_eq!(snapshot::newest(&storage, "t_a", "ag_1").await.unwrap().unwrap().id, second.id);

    // Restored into a workspace with other things in it: exactly the snapshot's files.
    let target = tmp.path().join("restored");
    std::fs::create_dir_all(target.join("memory")).unwrap();
    std::fs::write(target.join("SOUL.md"), "seed").unwrap();
    std::fs::write(target.join("memory/stale.md"), "x").unwrap();
    let r = snapshot::restore(&storage, &second, SandboxDir::open(&target).unwrap(), uid(), &Quiet).await.unwrap();
    assert_eq!(r.files, 4);
    let mut want = hashes(&ws);
    want.retain(|k, _| !k.starts_with("memory/etc") && k != "shadow" && k != "fifo");
    assert_eq!(hashes(&target), want);

    // The older snapshot goes with its blob that nothing else names.
    assert_eq!(snapshot::prune(&storage, "t_a", "ag_1", 1).await.unwrap(), (1, 1));
    assert_eq!(snapshot::list(&storage, "t_a", "ag_1").await.unwrap(), vec![second.id.clone()]);
    let again = tmp.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    snapshot::restore(&storage, &second, SandboxDir::open(&again).unwrap(), uid(), &Quiet).await.unwrap();
    assert_eq!(hashes(&again), want);
}

#[tokio::test]
async fn a_tampered_blob_or_manifest_is_refused_and_a_half_written_snapshot_is_never_seen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let storage = Storage::local(&dir).unwrap();
    let ws = workspace(tmp.path());
    let (m, _) = snapshot::take(&storage, "t_a", "ag_1", SandboxDir::open(&ws).unwrap(), None, &Quiet).await.unwrap();

    // Blobs without a manifest (a backup killed before its end) are no snapshot.
    storage.put("tenants/t_a/agents/ag_2/blobs/ab/abcd", bytes::Bytes::from_static(b"x")).await.unwrap();
    assert!(snapshot::newest(&storage, "t_a", "ag_2").await.unwrap().is_none());

    // A newer manifest with a path that climbs out is refused; the older one is used.
    let mut evil = m.clone();
    evil.id = format!("{:013}-ffffffff", m.created_at + 1);
    evil.files[0].path = "../../etc/passwd".into();
    storage.put(&format!("tenants/t_a/agents/ag_1/snapshots/{}.json", evil.id), serde_json::to_vec(&evil).unwrap().into()).await.unwrap();
    assert_eq!(snapshot::newest(&storage, "t_a", "ag_1").await.unwrap().unwrap().id, m.id);

    // A blob whose bytes changed in storage stops the restore with a clear error.
    let f = m.files.iter().find(|f| f.path == "MEMORY.md").unwrap();
    storage.put(&format!("tenants/t_a/agents/ag_1/blobs/{}/{}", &f.sha256[..2], f.sha256), bytes::Bytes::from_static(b"- Ana likes coffee\n")).await.unwrap();
    let target = tmp.path().join("t");
    std::fs::create_dir_all(&target).unwrap();
    let e = snapshot::restore(&storage, &m, SandboxDir::open(&target).unwrap(), uid(), &Quiet).await.unwrap_err();
    assert!(e.to_string().contains("MEMORY.md does not match its hash"), "{e}");
}

#[test]
fn paths_in_a_manifest_are_plain_and_relative() {
    for bad in ["", "/etc/passwd", "../x", "a/../../b", "a//b", "./a", "a/.", "a\0b"] {
        assert!(snapshot::check_rel_path(bad).is_err(), "{bad:?}");
    }
    for good in ["SOUL.md", "memory/2026/12-01.md", ".hidden", "a..b"] {
        assert!(snapshot::check_rel_path(good).is_ok(), "{good:?}");
    }
}

#[test]
fn storage_urls_say_what_is_wrong_and_never_echo_a_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    assert!(Storage::open("", &d.join("a"), None).unwrap().describe().contains("/a"));
    assert!(Storage::open(&format!("file://{}", d.join("b").display()), d, None).unwrap().describe().contains("/b"));
    for (url, says) in [("ftp://x", "not supported"), ("s3://", "needs a bucket"), ("not a url", "not a URL"), ("s3://b?colour=red", "unknown option")] {
        let e = Storage::open(url, d, Some(&d.join("none"))).unwrap_err().to_string();
        assert!(e.contains(says), "{url}: {e}");
    }
    let creds = d.join("creds");
    std::fs::write(&creds, "access_key_id = \"AKIA\"\nsecret_access_key = \"TOPSECRETVALUE\"\n").unwrap();
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let e = Storage::open("s3://bucket?endpoint=http://127.0.0.1:1&allow_http=true", d, Some(&creds)).unwrap_err().to_string();
    assert!(e.contains("chmod 600") && !e.contains("TOPSECRET"), "{e}");
    std::fs::write(&creds, "secret_access_key = TOPSECRETVALUE garbage [[\n").unwrap();
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let e = Storage::open("s3://bucket?endpoint=http://127.0.0.1:1&allow_http=true", d, Some(&creds)).unwrap_err().to_string();
    assert!(e.contains("expected access_key_id") && !e.contains("TOPSECRET"), "{e}");
    std::fs::write(&creds, "access_key_id = \"AKIA\"\nsecret_access_key = \"TOPSECRETVALUE\"\n").unwrap();
    let s = Storage::open("s3://bucket/pre/fix?endpoint=http://127.0.0.1:1&allow_http=true", d, Some(&creds)).unwrap();
    assert_eq!(s.describe(), "s3://bucket/pre/fix at http://127.0.0.1:1");
    assert!(!format!("{s:?}").contains("TOPSECRET"));
}
