//! [`Workspace`]: every file the agent reads or writes, reached only below the workspace root.
//!
//! Paths are made by this crate from fixed names, UTC dates and checked session names, never from
//! what a model or a caller sends. Even so, the workspace is the tenant's and may hold links: a
//! directory on the way must be a real directory and the file is opened with `O_NOFOLLOW`, so no
//! link can lead a read or a write out of the workspace. `O_NONBLOCK` keeps a FIFO planted in
//! the workspace from hanging the agent on open.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tokio::sync::Mutex;

/// Which end of a file to keep when it is larger than asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The beginning (a document: its first part matters most).
    Head,
    /// The end (a log: the newest lines matter most).
    Tail,
}

/// Text read from a file, at most the size asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounded {
    /// The kept part, cut at a character (and for [`Keep::Tail`], a line) boundary.
    pub text: String,
    /// Whether part of the file was left out.
    pub truncated: bool,
}

/// The agent's workspace (`/data` in the sandbox).
#[derive(Debug)]
pub struct Workspace {
    /// The root; trusted as the mount the sandbox was given.
    root: PathBuf,
    /// Serialises appends so the lines of two concurrent runs never interleave.
    write_lock: Mutex<()>,
}

impl Workspace {
    pub fn new(root: impl Into<PathBuf>) -> Workspace {
        Workspace { root: root.into(), write_lock: Mutex::new(()) }
    }

    /// Reads at most `max` bytes of the file at `rel` (path components below the root).
    /// `Ok(None)` when the file (or a directory on the way) does not exist.
    pub async fn read_bounded(&self, rel: &[&str], max: usize, keep: Keep) -> io::Result<Option<Bounded>> {
        let (root, rel) = (self.root.clone(), owned(rel));
        blocking(move || read_rel_sync(&root, &borrowed(&rel), max, keep)).await
    }

    /// [`Workspace::read_bounded`] of several files in one trip to the blocking pool (each trip
    /// costs a thread wake-up; a prompt reads six files before its model call).
    pub async fn read_many(&self, files: Vec<(Vec<String>, usize, Keep)>) -> io::Result<Vec<io::Result<Option<Bounded>>>> {
        let root = self.root.clone();
        blocking(move || Ok(files.into_iter().map(|(rel, max, keep)| read_rel_sync(&root, &borrowed(&rel), max, keep)).collect())).await
    }

    /// Appends `text` to the file at `rel` as whole lines, creating the file and its directories.
    pub async fn append(&self, rel: &[&str], text: String) -> io::Result<()> {
        let _guard = self.write_lock.lock().await;
        let (root, rel) = (self.root.clone(), owned(rel));
        blocking(move || {
            let path = resolve_sync(&root, &borrowed(&rel), true)?.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "directory missing"))?;
            append_sync(&path, &text)
        })
        .await
    }
}

impl Workspace {
    /// The regular files directly in the directory `dir` (one name below the root), with their
    /// modification time (Unix ms), at most `max` of them. Links and other entries are left out.
    pub async fn list(&self, dir: &str, max: usize) -> io::Result<Vec<(String, i64)>> {
        check_component(dir)?;
        let path = self.root.join(dir);
        blocking(move || {
            let m = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            if !m.is_dir() {
                return Ok(Vec::new());
            }
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&path)?.take(max) {
                let entry = entry?;
                let meta = entry.metadata()?;
                if !entry.file_type()?.is_file() {
                    continue;
                }
                let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as i64);
                if let Some(name) = entry.file_name().to_str() {
                    out.push((name.to_owned(), mtime));
                }
            }
            Ok(out)
        })
        .await
    }
}

fn owned(rel: &[&str]) -> Vec<String> {
    rel.iter().map(|c| (*c).to_owned()).collect()
}

fn borrowed(rel: &[String]) -> Vec<&str> {
    rel.iter().map(String::as_str).collect()
}

/// Runs file IO on tokio's blocking pool; the single-threaded runtime must never block on disk.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(io::Error::other(format!("file task failed: {e}"))),
    }
}

/// One path component made by this crate: a plain name, never a separator or `..`.
fn check_component(c: &str) -> io::Result<()> {
    if c.is_empty() || c == "." || c == ".." || c.contains('/') || c.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{c:?} is not a plain file name")));
    }
    Ok(())
}

/// Walks the directories of `rel` below `root`, refusing links; creates missing ones if asked.
/// `None` when a directory is missing and `create` is off.
fn resolve_sync(root: &Path, rel: &[&str], create: bool) -> io::Result<Option<PathBuf>> {
    let (file, dirs) = rel.split_last().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty path"))?;
    check_component(file)?;
    let mut path = root.to_path_buf();
    for d in dirs {
        check_component(d)?;
        path.push(d);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("{d} in the workspace is not a plain directory"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => std::fs::create_dir(&path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    path.push(file);
    Ok(Some(path))
}

fn open(path: &Path, opts: &mut OpenOptions) -> io::Result<File> {
    let f = opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(f)
}

/// [`read_bounded_sync`] of the file at `rel` below `root`; `None` when it (or a directory on
/// the way) does not exist.
fn read_rel_sync(root: &Path, rel: &[&str], max: usize, keep: Keep) -> io::Result<Option<Bounded>> {
    match resolve_sync(root, rel, false)? {
        Some(path) => read_bounded_sync(&path, max, keep),
        None => Ok(None),
    }
}

fn read_bounded_sync(path: &Path, max: usize, keep: Keep) -> io::Result<Option<Bounded>> {
    let mut f = match open(path, OpenOptions::new().read(true)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len <= max as u64 {
        let mut buf = Vec::with_capacity(len as usize);
        // `take` caps the read in case the file grows meanwhile.
        f.take(max as u64).read_to_end(&mut buf)?;
        return Ok(Some(Bounded { text: head_text(&buf), truncated: false }));
    }
    let text = match keep {
        Keep::Head => {
            let mut buf = Vec::with_capacity(max);
            f.take(max as u64).read_to_end(&mut buf)?;
            head_text(&buf)
        }
        Keep::Tail => {
            // One byte more than kept tells whether the cut falls at the start of a line.
            let start = len - max as u64 - 1;
            f.seek(SeekFrom::Start(start))?;
            let mut buf = Vec::with_capacity(max + 1);
            f.take(max as u64 + 1).read_to_end(&mut buf)?;
            tail_text(&buf)
        }
    };
    Ok(Some(Bounded { text, truncated: true }))
}

/// Text of bytes cut at their end: a character split by the cut is dropped.
fn head_text(buf: &[u8]) -> String {
    let end = match std::str::from_utf8(buf) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => buf.len(),
    };
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Text of bytes whose first byte precedes the kept part: the kept part starts at the first whole
/// line, or when there is no line break, at the first whole character.
fn tail_text(buf: &[u8]) -> String {
    let kept = match buf.iter().position(|&b| b == b'\n') {
        Some(i) => &buf[i + 1..],
        None => {
            let rest = &buf[1..];
            let skip = rest.iter().take_while(|&&b| b & 0xC0 == 0x80).count();
            &rest[skip..]
        }
    };
    String::from_utf8_lossy(kept).into_owned()
}

fn append_sync(path: &Path, text: &str) -> io::Result<()> {
    let mut f = open(path, OpenOptions::new().read(true).append(true).create(true))?;
    let len = f.metadata()?.len();
    let mut buf = Vec::with_capacity(text.len() + 2);
    // Keep whole lines even when the tenant left the file without a final newline.
    if len > 0 {
        let mut last = [0u8; 1];
        f.read_exact_at(&mut last, len - 1)?;
        if last[0] != b'\n' {
            buf.push(b'\n');
        }
    }
    buf.extend_from_slice(text.as_bytes());
    if !text.ends_with('\n') {
        buf.push(b'\n');
    }
    f.write_all(&buf)?;
    f.sync_data()
}

/// A UTC date as `YYYY-MM-DD`, the name of a daily note.
pub fn date_name(d: time::Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

/// Today's date in UTC.
pub fn today_utc() -> time::Date {
    time::OffsetDateTime::now_utc().date()
}

/// What the agent says when its filesystem is full: the user can act on it.
pub const FULL_NOTICE: &str = "the workspace is full (its plan's disk space or number of files is used up), so nothing was saved; forget some notes or ask the operator for a bigger plan";

/// True when a write failed because the agent's filesystem is full (space or inodes).
pub fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_reads_keep_the_asked_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ws = Workspace::new(dir.path());
        std::fs::write(dir.path().join("log.md"), "first line\nsecond line\nthird line\n").expect("write");
        let tail = ws.read_bounded(&["log.md"], 16, Keep::Tail).await.expect("read").expect("exists");
        assert_eq!(tail, Bounded { text: "third line\n".into(), truncated: true });
        let head = ws.read_bounded(&["log.md"], 8, Keep::Head).await.expect("read").expect("exists");
        assert_eq!(head, Bounded { text: "first li".into(), truncated: true });
        let whole = ws.read_bounded(&["log.md"], 1000, Keep::Tail).await.expect("read").expect("exists");
        assert!(!whole.truncated && whole.text.starts_with("first"));
        assert_eq!(ws.read_bounded(&["nope.md"], 10, Keep::Head).await.expect("read"), None);
        assert_eq!(ws.read_bounded(&["memory", "nope.md"], 10, Keep::Head).await.expect("read"), None);
    }

    #[test]
    fn cuts_never_split_a_character() {
        assert_eq!(head_text("aé".as_bytes().split_at(2).0), "a");
        assert_eq!(tail_text(&"xéb".as_bytes()[1..]), "b");
        assert_eq!(tail_text("xéb".as_bytes()), "éb");
    }

    #[tokio::test]
    async fn appends_whole_lines_and_refuses_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let ws = Workspace::new(dir.path());
        std::fs::write(dir.path().join("MEMORY.md"), "- old").expect("write");
        ws.append(&["MEMORY.md"], "- new".into()).await.expect("append");
        assert_eq!(std::fs::read_to_string(dir.path().join("MEMORY.md")).expect("read"), "- old\n- new\n");
        ws.append(&["memory", "2026-01-02.md"], "note".into()).await.expect("append creates the dir");
        assert_eq!(std::fs::read_to_string(dir.path().join("memory/2026-01-02.md")).expect("read"), "note\n");

        std::os::unix::fs::symlink(outside.path(), dir.path().join("sessions")).expect("symlink");
        assert!(ws.append(&["sessions", "main.jsonl"], "x".into()).await.is_err());
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("USER.md")).expect("symlink");
        std::fs::write(outside.path().join("secret"), "secret").expect("write");
        assert!(ws.read_bounded(&["USER.md"], 100, Keep::Head).await.is_err());
        assert!(ws.append(&["USER.md"], "x".into()).await.is_err());
        assert!(ws.read_bounded(&["..", "x"], 100, Keep::Head).await.is_err());
        assert_eq!(std::fs::read_to_string(outside.path().join("secret")).expect("read"), "secret");
        assert!(std::fs::read_dir(outside.path()).expect("ls").count() == 1, "nothing was written outside");
    }
}
