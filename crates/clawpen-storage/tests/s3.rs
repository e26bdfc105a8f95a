//! The same snapshots through `object_store`'s S3 client against an S3-compatible server
//! (`clawpen_standin::s3`: `moto_server` on a port of its own). Under `CI=true` a missing
//! `moto_server` fails the test; elsewhere it is skipped with a note.

use std::collections::BTreeMap;

use clawpen_hostfs::SandboxDir;
use clawpen_storage::snapshot::{self, Quiet};
use clawpen_standin::s3::S3Server;
use clawpen_storage::Storage;
use sha2::{Digest, Sha256};

fn hashes(dir: &std::path::Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walk(dir) {
        let rel = e.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        out.insert(rel, hex::encode(Sha256::digest(std::fs::read(&e).unwrap())));
    }
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            v.extend(walk(&e.path()));
        } else {
            v.push(e.path());
        }
    }
    v
}

#[tokio::test]
async fn a_workspace_goes_to_an_s3_compatible_server_and_comes_back_byte_for_byte() {
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("clawpen-test");
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("s3.toml");
    S3Server::write_credentials(&creds);
    let storage = Storage::open(&s3.url("clawpen-test", "backups"), tmp.path(), Some(&creds)).unwrap();

    let ws = tmp.path().join("ws");
    std::fs::create_dir_all(ws.join("memory")).unwrap();
    std::fs::write(ws.join("MEMORY.md"), "- the cat is called Miso\n").unwrap();
    for i in 0..30 {
        std::fs::write(ws.join("memory").join(format!("{i:02}.md")), format!("note {i}\n").repeat(i * 100 + 1)).unwrap();
    }
    let (first, s) = snapshot::take(&storage, "t_s3", "ag_s3", SandboxDir::open(&ws).unwrap(), None, &Quiet).await.unwrap();
    assert_eq!((s.files, s.blobs_sent), (31, 31));
    std::fs::write(ws.join("memory/07.md"), "changed\n").unwrap();
    let (second, s) = snapshot::take(&storage, "t_s3", "ag_s3", SandboxDir::open(&ws).unwrap(), Some(&first), &Quiet).await.unwrap();
    assert_eq!((s.files_read, s.blobs_sent), (1, 1), "{s:?}");

    let newest = snapshot::newest(&storage, "t_s3", "ag_s3").await.unwrap().unwrap();
    assert_eq!(newest.id, second.id);
    let target = tmp.path().join("restored");
    std::fs::create_dir_all(&target).unwrap();
    snapshot::restore(&storage, &newest, SandboxDir::open(&target).unwrap(), rustix::process::geteuid().as_raw(), &Quiet).await.unwrap();
    assert_eq!(hashes(&target), hashes(&ws));

    // Everything of the tenant is under its prefix, and goes with it.
    assert!(storage.list("tenants/t_s3").await.unwrap().len() >= 33);
    storage.delete_prefix("tenants/t_s3").await.unwrap();
    assert!(storage.list("tenants/t_s3").await.unwrap().is_empty());
}
