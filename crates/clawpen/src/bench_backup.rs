//! `clawpen bench backup`: workspace snapshots to storage, in process, on the default backend
//! (the local folder; the server's path minus freezing the sandbox, which a stopped agent does
//! not need). The workspace: 1,000 files, 50 MiB (990 notes of 10 KiB and 10 files of 4 MiB),
//! in nested dirs, read by handle as the server reads a tenant's workspace.
//!
//! - `first`: a full backup into empty storage (a new agent each time).
//! - `incremental`: one note changed since the last snapshot; baseline: `first`, measured in the
//!   same run, alternating sample by sample.
//! - `restore`: the newest snapshot into an empty workspace, every blob checked against its hash.
//!
//! At the end the restored workspace must hold exactly the workspace's files.

use std::path::Path;
use std::time::Instant;

use clawpen_hostfs::SandboxDir;
use clawpen_storage::snapshot::{self, Quiet};
use clawpen_storage::Storage;
use serde_json::json;

use crate::bench::Case;

const SMALL: usize = 990;
const SMALL_BYTES: usize = 10 * 1024;
const LARGE: usize = 10;
const LARGE_BYTES: usize = 4 * 1024 * 1024;

fn fill(ws: &Path) -> anyhow::Result<()> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    for i in 0..SMALL {
        let dir = ws.join(format!("memory/{:02}", i % 30));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{i:04}.md")), bytes(SMALL_BYTES))?;
    }
    std::fs::create_dir_all(ws.join("files"))?;
    for i in 0..LARGE {
        std::fs::write(ws.join("files").join(format!("{i}.bin")), bytes(LARGE_BYTES))?;
    }
    Ok(())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

pub async fn run(samples: usize) -> anyhow::Result<Vec<Case>> {
    let tmp = tempfile::Builder::new().prefix("clawpen-bench-backup-").tempdir()?;
    let ws = tmp.path().join("workspace");
    fill(&ws)?;
    let storage = Storage::local(&tmp.path().join("storage"))?;
    let uid = own_uid();
    let open = || SandboxDir::open(&ws);

    // The agent whose workspace changes one note at a time.
    let (mut last, stats) = snapshot::take(&storage, "t_bench", "ag_inc", open()?, None, &Quiet).await?;
    anyhow::ensure!(stats.files == (SMALL + LARGE) as u64, "the workspace holds {} files", stats.files);
    let (mut first, mut incremental, mut restore) = (Vec::new(), Vec::new(), Vec::new());
    let mut sent_incremental = 0;
    for i in 0..samples {
        eprint!("\rbackup: sample {}/{samples}", i + 1);
        let t = Instant::now();
        let (_, s) = snapshot::take(&storage, "t_bench", &format!("ag_full{i}"), open()?, None, &Quiet).await?;
        first.push(ms(t));
        anyhow::ensure!(s.blobs_sent == (SMALL + LARGE) as u64, "a first backup sent {} blobs", s.blobs_sent);

        std::fs::write(ws.join(format!("memory/{:02}/{:04}.md", i % 30, i % SMALL)), format!("changed in sample {i}\n").repeat(400))?;
        let t = Instant::now();
        let (m, s) = snapshot::take(&storage, "t_bench", "ag_inc", open()?, Some(&last), &Quiet).await?;
        incremental.push(ms(t));
        anyhow::ensure!(s.files_read == 1 && s.blobs_sent == 1, "an incremental backup read {} files and sent {} blobs", s.files_read, s.blobs_sent);
        sent_incremental = s.bytes_sent;
        last = m;

        let target = tmp.path().join(format!("restored-{i}"));
        std::fs::create_dir(&target)?;
        let t = Instant::now();
        snapshot::restore(&storage, &last, SandboxDir::open(&target)?, uid, &Quiet).await?;
        restore.push(ms(t));
        if i + 1 < samples {
            std::fs::remove_dir_all(&target)?;
        }
    }
    eprintln!();
    let restored = tmp.path().join(format!("restored-{}", samples - 1));
    anyhow::ensure!(same_files(&ws, &restored)?, "the restored workspace differs from the workspace");
    let total = (SMALL * SMALL_BYTES + LARGE * LARGE_BYTES) as u64;
    let extra = |sent: u64| {
        let mut m = serde_json::Map::new();
        m.insert("files".into(), json!(SMALL + LARGE));
        m.insert("bytes".into(), json!(total));
        m.insert("bytes_sent".into(), json!(sent));
        m.insert("storage".into(), json!("local folder"));
        m
    };
    Ok(vec![
        Case { name: "first".into(), samples_ms: first.clone(), baseline_ms: None, extra: extra(total) },
        Case { name: "incremental".into(), samples_ms: incremental, baseline_ms: Some(first), extra: extra(sent_incremental) },
        Case { name: "restore".into(), samples_ms: restore, baseline_ms: None, extra: extra(total) },
    ])
}

/// True when both trees hold the same files with the same bytes.
fn same_files(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let mut left = Vec::new();
    let mut right = Vec::new();
    list(a, a, &mut left)?;
    list(b, b, &mut right)?;
    left.sort();
    right.sort();
    Ok(left == right)
}

fn list(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            list(base, &e.path(), out)?;
        } else {
            out.push((e.path().strip_prefix(base)?.to_string_lossy().into_owned(), std::fs::read(e.path())?));
        }
    }
    Ok(())
}

/// This process's effective uid (the restored files' owner).
fn own_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}
