//! Workspace snapshots: every regular file of a workspace as a blob named by its SHA-256
//! (`{agent}/blobs/{sha[..2]}/{sha}`), and per snapshot a manifest of every dir and file with
//! its size, hash and mode (`{agent}/snapshots/{id}.json`), written after all of its blobs. A
//! backup killed half-way leaves blobs no manifest names (removed by the next [`prune`]); a
//! snapshot without its manifest is never seen, so none is ever used half-written.
//!
//! Incremental: a file whose size, mtime, ctime and inode match the previous manifest's entry is
//! not read again (ctime moves on every change and its owner cannot set it), and a blob the
//! previous snapshot has is not sent again. Files are read by handle beneath the workspace,
//! never through a link: links, FIFOs, sockets and devices are listed as skipped and not kept.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use clawpen_hostfs::{EntryKind, FileStat, SandboxDir};
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{agent_prefix, Result, Storage, StorageError};

/// The manifest format this build writes and reads.
pub const FORMAT: u32 = 1;
/// How deep a workspace may nest.
const MAX_DEPTH: usize = 64;
/// Files read and sent at once.
const PARALLEL: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Relative to the workspace, `/`-separated.
    pub path: String,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub mode: u32,
    /// What the file's `fstat` said when it was read: to know, next time, that it did not change.
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
}

/// One snapshot of one agent's workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// `{created_at:013}-{random}`: sorts by time.
    pub id: String,
    pub tenant: String,
    pub agent: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub dirs: Vec<DirEntry>,
    pub files: Vec<FileEntry>,
    /// Paths that were not kept: links, FIFOs, sockets, devices, names that are not UTF-8.
    #[serde(default)]
    pub skipped: Vec<String>,
    /// The sum of the files' sizes.
    pub bytes: u64,
}

impl Manifest {
    /// True when `other` holds the same dirs and files (paths, modes, hashes).
    pub fn same_content(&self, other: &Manifest) -> bool {
        let dirs = |m: &Manifest| -> Vec<(String, u32)> {
            let mut d: Vec<_> = m.dirs.iter().map(|d| (d.path.clone(), d.mode)).collect();
            d.sort();
            d
        };
        let files = |m: &Manifest| -> Vec<(String, String, u32)> {
            let mut f: Vec<_> = m.files.iter().map(|f| (f.path.clone(), f.sha256.clone(), f.mode)).collect();
            f.sort();
            f
        };
        dirs(self) == dirs(other) && files(self) == files(other)
    }
}

/// What a backup or restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SnapshotStats {
    pub files: u64,
    pub bytes: u64,
    /// Files read (the others matched the previous manifest by their stat).
    pub files_read: u64,
    /// Blobs sent (or, for a restore, fetched).
    pub blobs_sent: u64,
    pub bytes_sent: u64,
    pub skipped: u64,
    /// The workspace was as the previous snapshot had it: no new manifest was written.
    pub unchanged: bool,
}

/// Told how a long operation goes (a progress bar on the command line).
pub trait Progress: Send + Sync {
    fn begin(&self, _files: u64, _bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
}

/// Tells nobody.
pub struct Quiet;
impl Progress for Quiet {}

fn snapshots_prefix(tenant: &str, agent: &str) -> String {
    format!("{}/snapshots", agent_prefix(tenant, agent))
}

fn blobs_prefix(tenant: &str, agent: &str) -> String {
    format!("{}/blobs", agent_prefix(tenant, agent))
}

fn blob_key(tenant: &str, agent: &str, sha: &str) -> String {
    format!("{}/{}/{sha}", blobs_prefix(tenant, agent), &sha[..2])
}

fn manifest_key(tenant: &str, agent: &str, id: &str) -> String {
    format!("{}/{id}.json", snapshots_prefix(tenant, agent))
}

/// A file found by the walk, with the handle of its dir.
struct Found {
    dir: Arc<SandboxDir>,
    name: String,
    path: String,
    stat: FileStat,
}

struct Walk {
    dirs: Vec<DirEntry>,
    files: Vec<Found>,
    skipped: Vec<String>,
}

fn walk(ws: Arc<SandboxDir>) -> std::io::Result<Walk> {
    let mut w = Walk { dirs: Vec::new(), files: Vec::new(), skipped: Vec::new() };
    walk_into(ws, "", 0, &mut w)?;
    Ok(w)
}

fn walk_into(dir: Arc<SandboxDir>, prefix: &str, depth: usize, w: &mut Walk) -> std::io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(std::io::Error::other(format!("the workspace nests deeper than {MAX_DEPTH} directories at {prefix}")));
    }
    let mut entries = dir.entries()?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in entries {
        let Some(name) = e.name.to_str().map(str::to_owned) else {
            w.skipped.push(format!("{prefix}{}", e.name.to_string_lossy()));
            continue;
        };
        let path = format!("{prefix}{name}");
        match e.kind {
            EntryKind::Dir => {
                let sub = match dir.subdir(&name) {
                    Ok(s) => Arc::new(s),
                    // Replaced by something else since it was listed.
                    Err(_) => {
                        w.skipped.push(path);
                        continue;
                    }
                };
                w.dirs.push(DirEntry { path: path.clone(), mode: dir.mode_of(&name)? });
                walk_into(sub, &format!("{path}/"), depth + 1, w)?;
            }
            EntryKind::File => match dir.open_regular(&name)? {
                Some((_, stat)) => w.files.push(Found { dir: dir.clone(), name, path, stat }),
                None => w.skipped.push(path),
            },
            EntryKind::Symlink | EntryKind::Other => w.skipped.push(path),
        }
    }
    Ok(())
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn new_id(now_ms: i64) -> String {
    format!("{now_ms:013}-{:08x}", rand::random::<u32>())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

/// Takes a snapshot of the workspace `ws` of `agent` (of `tenant`): see the module's doc. With
/// `previous` (the newest snapshot), unchanged files are neither read nor sent, and when
/// nothing changed at all no manifest is written and `previous` is returned. The caller keeps
/// the agent from writing meanwhile (or accepts a snapshot of files each whole as it was read).
pub async fn take(storage: &Storage, tenant: &str, agent: &str, ws: SandboxDir, previous: Option<&Manifest>, progress: &dyn Progress) -> Result<(Manifest, SnapshotStats)> {
    let ws = Arc::new(ws);
    let found = tokio::task::spawn_blocking(move || walk(ws)).await.map_err(|e| StorageError::Backend(e.to_string()))??;
    let mut stats = SnapshotStats { skipped: found.skipped.len() as u64, ..SnapshotStats::default() };
    let before: HashMap<&str, &FileEntry> = previous.map(|m| m.files.iter().map(|f| (f.path.as_str(), f)).collect()).unwrap_or_default();
    let known: HashSet<String> = previous.map(|m| m.files.iter().map(|f| f.sha256.clone()).collect()).unwrap_or_default();
    progress.begin(found.files.len() as u64, found.files.iter().map(|f| f.stat.size).sum());

    // Files that look as before keep their entry; the others are read, hashed and sent.
    let mut entries: Vec<FileEntry> = Vec::with_capacity(found.files.len());
    let mut to_read = Vec::new();
    for f in found.files {
        match before.get(f.path.as_str()) {
            Some(old) if old.size == f.stat.size && old.mtime_ns == f.stat.mtime_ns && old.ctime_ns == f.stat.ctime_ns && old.ino == f.stat.ino && old.mode == f.stat.mode => {
                progress.advance(old.size);
                entries.push((*old).clone());
            }
            _ => to_read.push(f),
        }
    }
    let sent: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
    let read: Vec<Option<(FileEntry, bool)>> = futures_util::stream::iter(to_read.into_iter().map(|f| {
        let (storage, known, sent) = (storage.clone(), &known, sent.clone());
        async move {
            let (dir, name, path) = (f.dir.clone(), f.name.clone(), f.path.clone());
            let got = tokio::task::spawn_blocking(move || -> std::io::Result<Option<(Vec<u8>, FileStat)>> {
                let Some((file, stat)) = dir.open_regular(&name)? else { return Ok(None) };
                let mut bytes = Vec::with_capacity(stat.size as usize);
                std::io::Read::read_to_end(&mut std::io::Read::take(file, stat.size.saturating_add(1 << 20)), &mut bytes)?;
                Ok(Some((bytes, stat)))
            })
            .await
            .map_err(|e| StorageError::Backend(e.to_string()))??;
            // Gone, or replaced by a link, since the walk.
            let Some((bytes, stat)) = got else { return Ok::<_, StorageError>(None) };
            let sha = sha_hex(&bytes);
            let size = bytes.len() as u64;
            let fresh = !known.contains(&sha) && sent.lock().expect("sent").insert(sha.clone());
            if fresh {
                storage.put(&blob_key(tenant, agent, &sha), Bytes::from(bytes)).await?;
            }
            progress.advance(size);
            Ok(Some((FileEntry { path, size, sha256: sha, mode: stat.mode, mtime_ns: stat.mtime_ns, ctime_ns: stat.ctime_ns, ino: stat.ino }, fresh)))
        }
    }))
    .buffer_unordered(PARALLEL)
    .try_collect()
    .await?;
    let mut skipped = found.skipped;
    for r in read {
        match r {
            Some((entry, fresh)) => {
                stats.files_read += 1;
                if fresh {
                    stats.blobs_sent += 1;
                    stats.bytes_sent += entry.size;
                }
                entries.push(entry);
            }
            None => skipped.push(String::new()),
        }
    }
    skipped.retain(|s| !s.is_empty());
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let created_at = now_ms();
    let manifest = Manifest {
        format: FORMAT,
        id: new_id(created_at),
        tenant: tenant.to_owned(),
        agent: agent.to_owned(),
        created_at,
        bytes: entries.iter().map(|f| f.size).sum(),
        dirs: found.dirs,
        files: entries,
        skipped,
    };
    stats.files = manifest.files.len() as u64;
    stats.bytes = manifest.bytes;
    if let Some(prev) = previous.filter(|p| p.same_content(&manifest)) {
        stats.unchanged = true;
        return Ok((prev.clone(), stats));
    }
    // Last: from here the snapshot exists.
    storage.put(&manifest_key(tenant, agent, &manifest.id), Bytes::from(serde_json::to_vec(&manifest).map_err(|e| StorageError::Backend(e.to_string()))?)).await?;
    Ok((manifest, stats))
}

/// The ids of the agent's snapshots, oldest first.
pub async fn list(storage: &Storage, tenant: &str, agent: &str) -> Result<Vec<String>> {
    let prefix = snapshots_prefix(tenant, agent);
    Ok(storage.list(&prefix).await?.into_iter().filter_map(|(k, _)| k.strip_prefix(&format!("{prefix}/"))?.strip_suffix(".json").map(str::to_owned)).collect())
}

/// Reads one snapshot's manifest, checked: its format, that it is of this agent, and that every
/// path in it is a plain relative path.
pub async fn manifest(storage: &Storage, tenant: &str, agent: &str, id: &str) -> Result<Manifest> {
    let bytes = storage.get(&manifest_key(tenant, agent, id)).await?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt(format!("the manifest of snapshot {id} does not parse: {e}")))?;
    if m.format != FORMAT || m.tenant != tenant || m.agent != agent || m.id != id {
        return Err(StorageError::Corrupt(format!("the manifest of snapshot {id} is of another format or agent")));
    }
    for p in m.dirs.iter().map(|d| &d.path).chain(m.files.iter().map(|f| &f.path)) {
        check_rel_path(p).map_err(|e| StorageError::Corrupt(format!("snapshot {id}: {e}")))?;
    }
    Ok(m)
}

/// The newest snapshot whose manifest reads back; `None` when the agent has none.
pub async fn newest(storage: &Storage, tenant: &str, agent: &str) -> Result<Option<Manifest>> {
    for id in list(storage, tenant, agent).await?.iter().rev() {
        match manifest(storage, tenant, agent, id).await {
            Ok(m) => return Ok(Some(m)),
            Err(StorageError::Corrupt(e)) => tracing::warn!(agent, error = %e, "a snapshot's manifest is unusable; trying an older one"),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// A relative path of plain names: no `..`, `.`, empty component, leading `/` or NUL.
pub fn check_rel_path(p: &str) -> std::result::Result<(), String> {
    if p.is_empty() || p.starts_with('/') || p.contains('\0') || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!("{p:?} is not a plain relative path"));
    }
    Ok(())
}

/// Restores `m` into the workspace `ws` (a fresh one no sandbox uses yet): whatever is in it is
/// removed, then every dir and file of the snapshot is made, owned by `uid`, each blob checked
/// against its hash and size before it is written.
pub async fn restore(storage: &Storage, m: &Manifest, ws: SandboxDir, uid: u32, progress: &dyn Progress) -> Result<SnapshotStats> {
    let ws = Arc::new(ws);
    let dirs = m.dirs.clone();
    let w = ws.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        for e in w.entries()? {
            if let Some(n) = e.name.to_str() {
                w.remove_tree(n)?;
            }
        }
        let mut dirs = dirs;
        dirs.sort_by_key(|d| d.path.matches('/').count());
        for d in &dirs {
            let (parent, name) = open_parent(&w, &d.path)?;
            parent.make_dir(&name, d.mode & 0o777, uid)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| StorageError::Backend(e.to_string()))??;
    progress.begin(m.files.len() as u64, m.bytes);
    let fetched: Vec<u64> = futures_util::stream::iter(m.files.clone().into_iter().map(|f| {
        let ws = ws.clone();
        async move {
            let bytes = blob(storage, m, &f).await.map_err(|e| match e {
                StorageError::Corrupt(why) => StorageError::Corrupt(format!("{why}; the snapshot cannot be restored")),
                other => other,
            })?;
            let (path, mode, n) = (f.path.clone(), f.mode, bytes.len() as u64);
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                let (parent, name) = open_parent(&ws, &path)?;
                parent.write_file_from(&name, mode, uid, &mut &bytes[..])?;
                Ok(())
            })
            .await
            .map_err(|e| StorageError::Backend(e.to_string()))??;
            progress.advance(n);
            Ok::<u64, StorageError>(n)
        }
    }))
    .buffer_unordered(PARALLEL)
    .try_collect()
    .await?;
    Ok(SnapshotStats { files: m.files.len() as u64, bytes: m.bytes, blobs_sent: fetched.len() as u64, bytes_sent: fetched.iter().sum(), ..SnapshotStats::default() })
}

/// The bytes of one file of a snapshot, checked against its hash and size.
pub async fn blob(storage: &Storage, m: &Manifest, f: &FileEntry) -> Result<Bytes> {
    let bytes = storage.get(&blob_key(&m.tenant, &m.agent, &f.sha256)).await?;
    if bytes.len() as u64 != f.size || sha_hex(&bytes) != f.sha256 {
        return Err(StorageError::Corrupt(format!("the stored copy of {} does not match its hash", f.path)));
    }
    Ok(bytes)
}

/// The dir holding `path` (opened by handle from `ws`, never through a link) and the last name.
fn open_parent(ws: &Arc<SandboxDir>, path: &str) -> std::io::Result<(Arc<SandboxDir>, String)> {
    check_rel_path(path).map_err(std::io::Error::other)?;
    match path.rsplit_once('/') {
        Some((dir, name)) => Ok((Arc::new(ws.subdir(dir)?), name.to_owned())),
        None => Ok((ws.clone(), path.to_owned())),
    }
}

/// Keeps the newest `keep` snapshots of the agent (at least one) and removes the others, then
/// every blob none of the kept ones names. Returns (snapshots removed, blobs removed). The
/// caller makes sure no backup of this agent runs meanwhile.
pub async fn prune(storage: &Storage, tenant: &str, agent: &str, keep: usize) -> Result<(u64, u64)> {
    let ids = list(storage, tenant, agent).await?;
    let keep = keep.max(1);
    let (old, kept) = ids.split_at(ids.len().saturating_sub(keep));
    let mut referenced = HashSet::new();
    for id in kept {
        match manifest(storage, tenant, agent, id).await {
            Ok(m) => referenced.extend(m.files.into_iter().map(|f| f.sha256)),
            // An unreadable manifest protects nothing and is useless: it goes too.
            Err(StorageError::Corrupt(_)) => storage.delete(&manifest_key(tenant, agent, id)).await?,
            Err(e) => return Err(e),
        }
    }
    if referenced.is_empty() && !kept.is_empty() {
        // Every kept manifest was unreadable: keep the blobs rather than guess.
        return Ok((0, 0));
    }
    for id in old {
        storage.delete(&manifest_key(tenant, agent, id)).await?;
    }
    let mut blobs_removed = 0;
    for (key, _) in storage.list(&blobs_prefix(tenant, agent)).await? {
        let sha = key.rsplit('/').next().unwrap_or_default();
        if !referenced.contains(sha) {
            storage.delete(&key).await?;
            blobs_removed += 1;
        }
    }
    Ok((old.len() as u64, blobs_removed))
}
