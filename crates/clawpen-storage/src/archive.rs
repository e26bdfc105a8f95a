//! The archive of "take your data with you": `clawpen tenant export` writes everything of a
//! tenant as one `.tar.gz` ([`Writer`]); `clawpen tenant import` reads such an archive
//! ([`read_archive`]) or a plain OpenClaw workspace folder ([`read_folder`]) into a new agent.
//!
//! An archive comes from a user, so it is hostile until read: only files and directories with
//! plain relative paths are accepted, and anything else (a link, a device, a FIFO, `..`, an
//! absolute path, a name twice, a name that is not UTF-8) refuses the whole archive with a
//! message naming the entry. Reading writes nothing anywhere: the caller gets the items, checked,
//! and makes them. Sizes are bounded by the plan ([`Limits`]) as they are read, never by what a
//! header claims, so a gzip bomb stops at the quota.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::Path;

use clawpen_hostfs::{EntryKind, SandboxDir};

use crate::snapshot::check_rel_path;

/// How deep paths may nest (as a workspace snapshot may).
const MAX_DEPTH: usize = 64;
/// The longest path accepted, in bytes (Linux's `PATH_MAX`).
const MAX_PATH: usize = 4096;
/// The longest name of one component, in bytes (Linux's `NAME_MAX`).
const MAX_NAME: usize = 255;
/// What the decompressed stream may hold beyond the files' bytes: headers, padding, long names.
const STREAM_SLACK: u64 = 64 << 20;
/// The same, per entry allowed: a header and its padding.
const STREAM_PER_ENTRY: u64 = 1024;
/// The most preallocated for one file, whatever its header says.
const PREALLOC: u64 = 1 << 20;

/// Bounds of one import: the plan's disk quota and inode count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The sum of the files' sizes.
    pub max_bytes: u64,
    /// Files and directories, counted together.
    pub max_entries: u64,
}

/// Why an archive or a folder was not read (or an archive not written). Messages name the entry
/// and say what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A hostile or malformed entry, or an archive that is damaged.
    #[error("{0}")]
    Refused(String),
    /// Past the plan's [`Limits`].
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One entry read from an archive or a folder. Its path is relative and `/`-separated, checked
/// with [`check_rel_path`]; its mode is permission bits only (`& 0o777`: no setuid, setgid or
/// sticky bit ever comes in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Dir { path: String, mode: u32 },
    File { path: String, mode: u32, bytes: Vec<u8> },
}

impl Item {
    /// The item's relative path, dir or file.
    pub fn path(&self) -> &str {
        match self {
            Item::Dir { path, .. } | Item::File { path, .. } => path,
        }
    }
}

/// A name for a message: quoted, and cut when it is long.
fn show(p: &str) -> String {
    if p.len() <= 200 {
        return format!("{p:?}");
    }
    let cut: String = p.chars().take(200).collect();
    format!("{cut:?}…")
}

/// The paths seen so far, to refuse one twice and one beneath a file. Shared by the writer and
/// both readers, so what is written reads back.
#[derive(Default)]
struct Paths {
    seen: HashSet<String>,
    files: HashSet<String>,
    /// Every dir something was seen inside, listed or not.
    parents: HashSet<String>,
}

impl Paths {
    /// Checks `path` (of the kind `is_file`) and remembers it; the message says what is wrong.
    fn add(&mut self, path: &str, is_file: bool) -> Result<(), String> {
        check_rel_path(path).map_err(|e| format!("{e}: names must be relative, without a leading /, `..`, `.`, an empty part or a NUL"))?;
        if path.len() > MAX_PATH {
            return Err(format!("{} is longer than {MAX_PATH} bytes", show(path)));
        }
        if path.split('/').any(|c| c.len() > MAX_NAME) {
            return Err(format!("{} has a name longer than {MAX_NAME} bytes", show(path)));
        }
        if path.split('/').count() > MAX_DEPTH {
            return Err(format!("{} nests deeper than {MAX_DEPTH} directories", show(path)));
        }
        if self.seen.contains(path) {
            return Err(format!("{} appears twice", show(path)));
        }
        if is_file && self.parents.contains(path) {
            return Err(format!("{} is a file, but other entries are inside it", show(path)));
        }
        let mut parents = Vec::new();
        let mut at = path;
        while let Some((parent, _)) = at.rsplit_once('/') {
            if self.files.contains(parent) {
                return Err(format!("{} is inside {}, which is a file", show(path), show(parent)));
            }
            parents.push(parent);
            at = parent;
        }
        self.parents.extend(parents.into_iter().map(str::to_owned));
        self.seen.insert(path.to_owned());
        if is_file {
            self.files.insert(path.to_owned());
        }
        Ok(())
    }
}

/// Writes a `.tar.gz` of dirs and files. Paths are checked as [`read_archive`] checks them (a
/// bad one is refused, not written), so an export always imports. Entries have mtime 0, uid and
/// gid 0 and no user names, and the gzip header no time: two exports of the same data are
/// byte-identical.
pub struct Writer<W: Write> {
    tar: tar::Builder<flate2::write::GzEncoder<W>>,
    paths: Paths,
}

impl<W: Write> Writer<W> {
    /// Starts an archive written to `w` (the default gzip level).
    pub fn new(w: W) -> Writer<W> {
        let gz = flate2::GzBuilder::new().write(w, flate2::Compression::default());
        Writer { tar: tar::Builder::new(gz), paths: Paths::default() }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode & 0o777);
        h.set_size(size);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn check(&mut self, path: &str, is_file: bool) -> Result<(), ArchiveError> {
        self.paths.add(path, is_file).map_err(|e| ArchiveError::Refused(format!("cannot write into the archive: {e}")))
    }

    /// Adds the directory `path` (its parents need not be added first).
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), ArchiveError> {
        self.check(path, false)?;
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.tar.append_data(&mut h, path, std::io::empty())?;
        Ok(())
    }

    /// Adds the file `path` with `bytes`; a long path gets a GNU long-name entry.
    pub fn add_file(&mut self, path: &str, mode: u32, bytes: &[u8]) -> Result<(), ArchiveError> {
        self.check(path, true)?;
        let mut h = Self::header(tar::EntryType::Regular, mode, bytes.len() as u64);
        self.tar.append_data(&mut h, path, bytes)?;
        Ok(())
    }

    /// Ends the archive and the gzip stream, and gives back the writer.
    pub fn finish(self) -> Result<W, ArchiveError> {
        Ok(self.tar.into_inner()?.finish()?)
    }
}

/// Why a read stopped: a refusal, or the stream failed (which the caller tells apart: the
/// source, a limit, or damage).
enum Fail {
    Archive(ArchiveError),
    Stream(std::io::Error),
}

impl From<ArchiveError> for Fail {
    fn from(e: ArchiveError) -> Fail {
        Fail::Archive(e)
    }
}

/// The plan's limits as they are used up.
struct Budget<'a> {
    limits: &'a Limits,
    /// "the archive" or "the folder", for messages.
    what: &'static str,
    bytes: u64,
    entries: u64,
}

impl Budget<'_> {
    fn entry(&mut self, path: &str) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooLarge(format!("{} holds more than {} files and directories, the plan's limit (at {})", self.what, self.limits.max_entries, show(path))));
        }
        Ok(())
    }

    fn too_large(&self, path: &str) -> ArchiveError {
        ArchiveError::TooLarge(format!("{} holds more than {} bytes of files, the plan's quota (at {})", self.what, self.limits.max_bytes, show(path)))
    }

    /// Reads one file of `claimed` bytes (what its header or stat says) from `r`. A claim past
    /// what is left is refused before anything is read or allocated; then the bytes actually
    /// read are counted, one past what is left at most.
    fn read(&mut self, path: &str, claimed: u64, r: impl Read) -> Result<Vec<u8>, Fail> {
        let left = self.limits.max_bytes.saturating_sub(self.bytes);
        if claimed > left {
            return Err(self.too_large(path).into());
        }
        let mut bytes = Vec::with_capacity(claimed.min(PREALLOC) as usize);
        r.take(left.saturating_add(1)).read_to_end(&mut bytes).map_err(Fail::Stream)?;
        if bytes.len() as u64 > left {
            return Err(self.too_large(path).into());
        }
        self.bytes += bytes.len() as u64;
        Ok(bytes)
    }
}

/// A reader that counts what passes and fails past `cap`, noting why it failed.
struct Watch<R> {
    inner: R,
    read: u64,
    cap: u64,
    over: bool,
    failed: bool,
}

impl<R: Read> Watch<R> {
    fn new(inner: R, cap: u64) -> Watch<R> {
        Watch { inner, read: 0, cap, over: false, failed: false }
    }
}

impl<R: Read> Read for Watch<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.read >= self.cap {
            // One byte past the cap tells a stream that ends right at it from a longer one.
            let mut one = [0u8; 1];
            let n = self.inner.read(&mut one).inspect_err(|_| self.failed = true)?;
            if n == 0 {
                return Ok(0);
            }
            self.over = true;
            return Err(std::io::Error::other("the archive expands past its bound"));
        }
        let room = (self.cap - self.read).min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..room]).inspect_err(|_| self.failed = true)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Reads a `.tar.gz` (or a plain tar: told apart by the gzip magic `1f 8b`) and returns its dirs
/// and files in order. Refused, with the entry named: symlinks, hard links, devices, FIFOs and
/// any kind but a regular file or a directory (GNU long names and PAX headers are read; PAX
/// global headers are skipped); paths that are absolute, have `..`, `.` or empty parts, a NUL,
/// are not UTF-8, nest deeper than 64 or are too long; a path twice, or beneath a file. A file
/// whose parent dir is not listed is fine (the caller makes parents). Past `limits` is
/// [`ArchiveError::TooLarge`]: file bytes are counted as read, a header claiming more than is
/// left is refused before reading, and the whole decompressed stream is bounded too (by
/// `max_bytes` + 64 MiB + 1 KiB per entry allowed), so a bomb of empty headers stops as well.
/// The gzip stream is read to its end, so a damaged one (its CRC) is refused. Nothing is written
/// anywhere.
pub fn read_archive(r: impl Read, limits: &Limits) -> Result<Vec<Item>, ArchiveError> {
    let mut source = Watch::new(r, u64::MAX);
    let mut magic = [0u8; 2];
    let mut n = 0;
    while n < magic.len() {
        match source.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ArchiveError::Io(e)),
        }
    }
    if n == 0 {
        return Err(ArchiveError::Refused("the archive is empty: expected a .tar.gz".into()));
    }
    let cap = limits.max_bytes.saturating_add(STREAM_SLACK).saturating_add(limits.max_entries.saturating_mul(STREAM_PER_ENTRY));
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let mut last = None;
    let (got, over) = if magic[..n] == [0x1f, 0x8b] {
        let mut stream = Watch::new(flate2::read::GzDecoder::new(head.chain(&mut source)), cap);
        let got = read_tar(&mut stream, limits, &mut last);
        (got, stream.over)
    } else {
        let mut stream = Watch::new(head.chain(&mut source), cap);
        let got = read_tar(&mut stream, limits, &mut last);
        (got, stream.over)
    };
    match got {
        Ok(items) => Ok(items),
        Err(Fail::Archive(e)) => Err(e),
        Err(Fail::Stream(_)) if over => Err(ArchiveError::TooLarge(format!("the archive expands to more than {cap} bytes, past what the plan's quota of {} bytes and {} entries can hold", limits.max_bytes, limits.max_entries))),
        Err(Fail::Stream(e)) if source.failed => Err(ArchiveError::Io(e)),
        Err(Fail::Stream(e)) => {
            let at = last.map(|p| format!(" after the entry {}", show(&p))).unwrap_or_default();
            Err(ArchiveError::Refused(format!("the archive is damaged or is not a .tar.gz{at}: {e}")))
        }
    }
}

/// What a tar entry's kind is, for a refusal; `None` for the kinds accepted.
fn refused_kind(t: tar::EntryType) -> Option<String> {
    use tar::EntryType as T;
    Some(match t {
        T::Regular | T::Directory => return None,
        T::Symlink => "is a symlink".into(),
        T::Link => "is a hard link".into(),
        T::Char => "is a character device".into(),
        T::Block => "is a block device".into(),
        T::Fifo => "is a FIFO".into(),
        other => format!("is of a kind that cannot be imported (tar type {:?})", other.as_byte().escape_ascii().to_string()),
    })
}

fn read_tar(stream: &mut impl Read, limits: &Limits, last: &mut Option<String>) -> Result<Vec<Item>, Fail> {
    let items = read_entries(&mut *stream, limits, last)?;
    // To the end of the stream, bounded as the rest: the gzip CRC is checked there.
    std::io::copy(stream, &mut std::io::sink()).map_err(Fail::Stream)?;
    Ok(items)
}

fn read_entries(stream: impl Read, limits: &Limits, last: &mut Option<String>) -> Result<Vec<Item>, Fail> {
    let mut archive = tar::Archive::new(stream);
    let mut budget = Budget { limits, what: "the archive", bytes: 0, entries: 0 };
    let mut paths = Paths::default();
    let mut items = Vec::new();
    for entry in archive.entries().map_err(Fail::Stream)? {
        let entry = entry.map_err(Fail::Stream)?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            // `git archive` writes one (the commit id); it says nothing of the files.
            continue;
        }
        let refuse = |what: String| Fail::Archive(ArchiveError::Refused(format!("the archive's entry {what}")));
        let path = match String::from_utf8(entry.path_bytes().into_owned()) {
            Ok(p) => p,
            Err(e) => return Err(refuse(format!("\"{}\" has a name that is not UTF-8", e.as_bytes().escape_ascii()))),
        };
        if let Some(what) = refused_kind(kind) {
            return Err(refuse(format!("{} {what}: only files and directories can be imported", show(&path))));
        }
        let is_file = kind == tar::EntryType::Regular;
        // GNU tar writes directories as `name/`.
        let path = if is_file { path } else { path.strip_suffix('/').map(str::to_owned).unwrap_or(path) };
        paths.add(&path, is_file).map_err(refuse)?;
        let mode = entry.header().mode().map_err(|e| refuse(format!("{} has a mode that does not parse: {e}", show(&path))))? & 0o777;
        budget.entry(&path)?;
        *last = Some(path.clone());
        if is_file {
            let claimed = entry.size();
            let bytes = budget.read(&path, claimed, entry)?;
            items.push(Item::File { path, mode, bytes });
        } else {
            items.push(Item::Dir { path, mode });
        }
    }
    Ok(items)
}

/// Reads a plain OpenClaw workspace folder (`SOUL.md`, `USER.md`, `MEMORY.md`, `memory/`,
/// `sessions/`: everything in it) by handle, never following a link, with the same refusals and
/// limits as [`read_archive`]: a symlink, FIFO, socket or device anywhere refuses the folder with
/// its path (it is not skipped), as does a name that is not UTF-8 or nesting deeper than 64.
/// Items come dir first, then what is in it, names sorted.
pub fn read_folder(dir: &Path, limits: &Limits) -> Result<Vec<Item>, ArchiveError> {
    let root = SandboxDir::open(dir)?;
    let mut budget = Budget { limits, what: "the folder", bytes: 0, entries: 0 };
    let mut items = Vec::new();
    match walk(&root, "", 0, &mut budget, &mut items) {
        Ok(()) => Ok(items),
        Err(Fail::Archive(e)) => Err(e),
        Err(Fail::Stream(e)) => Err(ArchiveError::Io(e)),
    }
}

/// What a name that is neither a file, a dir nor a link is, read by an `O_PATH` handle.
fn other_kind(dir: &SandboxDir, name: &str) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let Ok(fd) = dir.open_path(name) else { return "is not a regular file or a directory" };
    match std::fs::File::from(fd).metadata().map(|m| m.file_type()) {
        Ok(t) if t.is_fifo() => "is a FIFO",
        Ok(t) if t.is_socket() => "is a socket",
        Ok(t) if t.is_char_device() => "is a character device",
        Ok(t) if t.is_block_device() => "is a block device",
        _ => "is not a regular file or a directory",
    }
}

fn walk(dir: &SandboxDir, prefix: &str, depth: usize, budget: &mut Budget<'_>, items: &mut Vec<Item>) -> Result<(), Fail> {
    let refuse = |path: &str, what: &str| Fail::Archive(ArchiveError::Refused(format!("the folder's entry {} {what}", show(path))));
    let mut entries = dir.entries().map_err(Fail::Stream)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in entries {
        let Some(name) = e.name.to_str() else {
            let shown = format!("\"{prefix}{}\"", std::os::unix::ffi::OsStrExt::as_bytes(e.name.as_os_str()).escape_ascii());
            return Err(Fail::Archive(ArchiveError::Refused(format!("the folder's entry {shown} has a name that is not UTF-8"))));
        };
        let path = format!("{prefix}{name}");
        check_rel_path(&path).map_err(|m| Fail::Archive(ArchiveError::Refused(format!("the folder's entry {m}"))))?;
        // `depth` is how many dirs `prefix` has: the path has one part more.
        if depth + 1 > MAX_DEPTH {
            return Err(refuse(&path, &format!("nests deeper than {MAX_DEPTH} directories")));
        }
        match e.kind {
            EntryKind::Symlink => return Err(refuse(&path, "is a symlink: only files and directories can be imported")),
            EntryKind::Other => return Err(refuse(&path, &format!("{}: only files and directories can be imported", other_kind(dir, name)))),
            EntryKind::Dir => {
                budget.entry(&path)?;
                // A link put in its place since the listing is refused by `subdir`.
                let sub = dir.subdir(name).map_err(|err| refuse(&path, &format!("cannot be opened as a directory: {err}")))?;
                items.push(Item::Dir { path: path.clone(), mode: dir.mode_of(name).map_err(Fail::Stream)? & 0o777 });
                walk(&sub, &format!("{path}/"), depth + 1, budget, items)?;
            }
            EntryKind::File => {
                budget.entry(&path)?;
                let Some((file, stat)) = dir.open_regular(name).map_err(Fail::Stream)? else {
                    return Err(refuse(&path, "changed into something other than a regular file while it was read"));
                };
                let bytes = budget.read(&path, stat.size, file)?;
                items.push(Item::File { path, mode: stat.mode & 0o777, bytes });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "archive_tests.rs"]
mod tests;
