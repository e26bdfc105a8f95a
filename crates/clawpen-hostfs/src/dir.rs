//! [`SandboxDir`]: a directory whose contents a sandbox controls, and the operations the server
//! makes beneath it, all by handle.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// A directory opened without following a link. Everything beneath it is resolved from this
/// handle and never through a symlink, a magic link (`/proc/*/root`) or another mount.
#[derive(Debug)]
pub struct SandboxDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What a name in a directory is, as its entry (not a link's target) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: OsString,
    pub kind: EntryKind,
}

/// Why a bounded read refused.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{name} is not a regular file")]
    NotRegular { name: String },
    #[error("{name} is larger than {max} bytes")]
    TooLarge { name: String, max: u64 },
}

impl ReadError {
    /// True when the name does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Every lookup beneath a handle: inside it, through no link of any kind, on the same mount.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS).union(ResolveFlags::NO_XDEV);

fn kind_of(t: FileType) -> EntryKind {
    match t {
        FileType::RegularFile => EntryKind::File,
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        _ => EntryKind::Other,
    }
}

fn io(e: rustix::io::Errno) -> std::io::Error {
    std::io::Error::from(e)
}

impl SandboxDir {
    /// Opens the directory at `path`. Every component but the last must be the server's own
    /// (root-owned dirs the sandbox cannot change); the last must be a directory, not a link.
    pub fn open(path: &Path) -> std::io::Result<SandboxDir> {
        let fd = rfs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()).map_err(|e| {
            std::io::Error::new(std::io::Error::from(e).kind(), format!("{}: {}", path.display(), std::io::Error::from(e)))
        })?;
        Ok(SandboxDir { fd, path: path.to_owned() })
    }

    /// The path it was opened at (for messages; never used to reach it again).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn open_beneath(&self, rel: &str, flags: OFlags, mode: Mode) -> std::io::Result<OwnedFd> {
        // openat2 refuses O_PATH combined with anything but O_DIRECTORY, O_NOFOLLOW, O_CLOEXEC.
        let extra = if flags.contains(OFlags::PATH) { OFlags::empty() } else { OFlags::NOCTTY };
        rfs::openat2(&self.fd, rel, flags | extra | OFlags::NOFOLLOW | OFlags::CLOEXEC, mode, BENEATH).map_err(io)
    }

    /// The directory `rel` beneath this one, as a handle of its own; a link is refused.
    pub fn subdir(&self, rel: &str) -> std::io::Result<SandboxDir> {
        let fd = self.open_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        Ok(SandboxDir { fd, path: self.path.join(rel) })
    }

    /// Opens `rel` with `O_PATH` (no access to its contents), without following it: the caller
    /// learns what the name itself is.
    pub fn open_path(&self, rel: &str) -> std::io::Result<OwnedFd> {
        self.open_beneath(rel, OFlags::PATH, Mode::empty())
    }

    /// Reads the regular file `rel`, at most `max` bytes: a link, FIFO, device or socket is
    /// refused without blocking, and a larger (even sparse) file is refused before anything is
    /// read into memory.
    pub fn read_file(&self, rel: &str, max: u64) -> Result<Vec<u8>, ReadError> {
        let fd = self.open_beneath(rel, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty()).map_err(|e| {
            // ELOOP is what a symlink gives under O_NOFOLLOW / RESOLVE_NO_SYMLINKS.
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                ReadError::NotRegular { name: rel.to_owned() }
            } else {
                ReadError::Io(e)
            }
        })?;
        let st = rfs::fstat(&fd).map_err(io)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(ReadError::NotRegular { name: rel.to_owned() });
        }
        if st.st_size as u64 > max {
            return Err(ReadError::TooLarge { name: rel.to_owned(), max });
        }
        let mut out = Vec::with_capacity(st.st_size as usize);
        // The file may grow after the fstat: read one byte past the bound to notice.
        std::fs::File::from(fd).take(max + 1).read_to_end(&mut out)?;
        if out.len() as u64 > max {
            return Err(ReadError::TooLarge { name: rel.to_owned(), max });
        }
        Ok(out)
    }

    /// The entries of this directory (without `.` and `..`), as the entries say (links are not
    /// followed to learn their kind).
    pub fn entries(&self) -> std::io::Result<Vec<Entry>> {
        let fd = self.open_beneath(".", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        let mut dir = rfs::Dir::read_from(&fd).map_err(io)?;
        let mut out = Vec::new();
        while let Some(e) = dir.read() {
            let e = e.map_err(io)?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsString::from_vec(name.to_vec());
            let kind = match e.file_type() {
                FileType::Unknown => {
                    let st = rfs::statat(&self.fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW).map_err(io)?;
                    kind_of(FileType::from_raw_mode(st.st_mode))
                }
                t => kind_of(t),
            };
            out.push(Entry { name, kind });
        }
        Ok(out)
    }

    /// What `rel` is, without following it; `None` when it does not exist.
    pub fn kind(&self, rel: &str) -> std::io::Result<Option<EntryKind>> {
        match self.open_path(rel) {
            Ok(fd) => Ok(Some(kind_of(FileType::from_raw_mode(rfs::fstat(&fd).map_err(io)?.st_mode)))),
            // A symlink is opened by O_PATH|O_NOFOLLOW itself, except under RESOLVE_NO_SYMLINKS,
            // which refuses it with ELOOP.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => Ok(Some(EntryKind::Symlink)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes the directory `name` here (mode `mode`, owned by `uid`) unless something of that
    /// name exists; true when it made it. Nothing existing is followed or changed.
    pub fn make_dir(&self, name: &str, mode: u32, uid: u32) -> std::io::Result<bool> {
        match rfs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode)) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => return Ok(false),
            Err(e) => return Err(io(e)),
        }
        let d = self.subdir(name)?;
        d.set_owner_mode(uid, mode)?;
        Ok(true)
    }

    /// Writes a new file `name` here (it must not exist: `O_EXCL`, so a link in its place is
    /// neither followed nor replaced) owned by `uid`; false when the name exists.
    pub fn create_file(&self, name: &str, mode: u32, uid: u32, contents: &[u8]) -> std::io::Result<bool> {
        let fd = match self.open_beneath(name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, Mode::from_raw_mode(mode)) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        };
        rfs::fchown(&fd, Some(uid_of(uid)), Some(gid_of(uid))).map_err(io)?;
        rfs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(io)?;
        let mut f = std::fs::File::from(fd);
        std::io::Write::write_all(&mut f, contents)?;
        Ok(true)
    }

    /// Gives this directory (the handle's, not a name's) to `uid` with `mode`.
    pub fn set_owner_mode(&self, uid: u32, mode: u32) -> std::io::Result<()> {
        rfs::fchown(&self.fd, Some(uid_of(uid)), Some(gid_of(uid))).map_err(io)?;
        rfs::fchmod(&self.fd, Mode::from_raw_mode(mode)).map_err(io)
    }

    /// Removes the name `name` here (a file, link, socket: never what a link points at).
    pub fn remove_file(&self, name: &str) -> std::io::Result<()> {
        match rfs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    /// Moves `from` (in `src`, a dir of the server's) to `to` here, replacing whatever has that
    /// name (a link put there is replaced, not followed).
    pub fn rename_into(&self, src: &SandboxDir, from: &str, to: &str) -> std::io::Result<()> {
        rfs::renameat(&src.fd, from, &self.fd, to).map_err(io)
    }

    /// Space and inodes of the filesystem this directory is on.
    pub fn usage(&self) -> std::io::Result<Usage> {
        let s = rfs::fstatvfs(&self.fd).map_err(io)?;
        let block = s.f_frsize.max(1);
        Ok(Usage {
            bytes_total: s.f_blocks * block,
            bytes_free: s.f_bavail * block,
            inodes_total: s.f_files,
            inodes_free: s.f_favail,
        })
    }

    /// The device this directory is on (to tell a mounted volume from the dir beneath it).
    pub fn device(&self) -> std::io::Result<u64> {
        Ok(rfs::fstat(&self.fd).map_err(io)?.st_dev)
    }
}

/// What `fstat` said of a regular file opened by [`SandboxDir::open_regular`]: enough to tell
/// whether it changed since it was last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    /// Permission bits only.
    pub mode: u32,
    pub mtime_ns: i64,
    /// Set by the kernel on every change, and not settable by the file's owner.
    pub ctime_ns: i64,
    pub ino: u64,
}

impl SandboxDir {
    /// Opens the regular file `name` here for reading, never through a link: `None` when the
    /// name is a link, FIFO, socket or device (a FIFO is not waited on) or is gone.
    pub fn open_regular(&self, name: &str) -> std::io::Result<Option<(std::fs::File, FileStat)>> {
        let fd = match self.open_beneath(name, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) || e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = rfs::fstat(&fd).map_err(io)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Ok(None);
        }
        let stat = FileStat {
            size: st.st_size as u64,
            mode: st.st_mode & 0o7777 & !0o7000,
            mtime_ns: st.st_mtime.saturating_mul(1_000_000_000).saturating_add(st.st_mtime_nsec as i64),
            ctime_ns: st.st_ctime.saturating_mul(1_000_000_000).saturating_add(st.st_ctime_nsec as i64),
            ino: st.st_ino,
        };
        Ok(Some((std::fs::File::from(fd), stat)))
    }

    /// The permission bits of the directory (or file) `name` here, as its entry says.
    pub fn mode_of(&self, name: &str) -> std::io::Result<u32> {
        Ok(rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(io)?.st_mode & 0o777)
    }

    /// Writes the file `name` here from `reader`, owned by `uid` with `mode`: made new (whatever
    /// had the name, a link included, is unlinked first and never followed). Returns the bytes
    /// written.
    pub fn write_file_from(&self, name: &str, mode: u32, uid: u32, reader: &mut impl std::io::Read) -> std::io::Result<u64> {
        self.remove_file(name)?;
        let fd = self.open_beneath(name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, Mode::from_raw_mode(mode & 0o777))?;
        rfs::fchown(&fd, Some(uid_of(uid)), Some(gid_of(uid))).map_err(io)?;
        rfs::fchmod(&fd, Mode::from_raw_mode(mode & 0o777)).map_err(io)?;
        let mut f = std::fs::File::from(fd);
        std::io::copy(reader, &mut f)
    }

    /// Removes `name` here and, when it is a directory, everything beneath it, by handle (a
    /// link inside is removed, never followed). Missing is fine.
    pub fn remove_tree(&self, name: &str) -> std::io::Result<()> {
        match self.kind(name)? {
            None => Ok(()),
            Some(EntryKind::Dir) => {
                let d = self.subdir(name)?;
                for e in d.entries()? {
                    let Some(n) = e.name.to_str() else {
                        // Not UTF-8: unlinked by its bytes.
                        let c = std::ffi::CString::new(e.name.clone().into_vec()).map_err(std::io::Error::other)?;
                        let flags = if e.kind == EntryKind::Dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
                        rfs::unlinkat(&d.fd, c.as_c_str(), flags).map_err(io)?;
                        continue;
                    };
                    d.remove_tree(n)?;
                }
                self.remove_dir(name)
            }
            Some(_) => self.remove_file(name),
        }
    }
}

/// What [`SandboxDir::copy_tree`] copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub bytes: u64,
    /// FIFOs, sockets and devices: never copied.
    pub skipped: u64,
}

/// How deep [`SandboxDir::copy_tree`] goes.
const MAX_DEPTH: usize = 64;

impl SandboxDir {
    /// Copies everything beneath this directory into `dst`, owned by `uid`: files and
    /// directories as they are, symlinks made again as symlinks (never followed), anything else
    /// skipped. Existing names in `dst` are left alone. Stops at the first error (a full `dst`
    /// gives ENOSPC).
    pub fn copy_tree(&self, dst: &SandboxDir, uid: u32) -> std::io::Result<CopyStats> {
        let mut stats = CopyStats::default();
        self.copy_into(dst, uid, 0, &mut stats)?;
        Ok(stats)
    }

    fn copy_into(&self, dst: &SandboxDir, uid: u32, depth: usize, stats: &mut CopyStats) -> std::io::Result<()> {
        if depth > MAX_DEPTH {
            return Err(std::io::Error::other(format!("{} nests deeper than {MAX_DEPTH} directories", self.path.display())));
        }
        for e in self.entries()? {
            let Some(name) = e.name.to_str() else {
                stats.skipped += 1;
                continue;
            };
            match e.kind {
                EntryKind::File => {
                    let fd = self.open_beneath(name, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())?;
                    let st = rfs::fstat(&fd).map_err(io)?;
                    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                        stats.skipped += 1;
                        continue;
                    }
                    let mode = st.st_mode & 0o777;
                    let out = match dst.open_beneath(name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, Mode::from_raw_mode(mode)) {
                        Ok(out) => out,
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(e),
                    };
                    rfs::fchown(&out, Some(uid_of(uid)), Some(gid_of(uid))).map_err(io)?;
                    let n = std::io::copy(&mut std::fs::File::from(fd), &mut std::fs::File::from(out))?;
                    stats.files += 1;
                    stats.bytes += n;
                }
                EntryKind::Dir => {
                    let mode = rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(io)?.st_mode & 0o777;
                    if dst.make_dir(name, mode, uid)? {
                        stats.dirs += 1;
                    }
                    self.subdir(name)?.copy_into(&dst.subdir(name)?, uid, depth + 1, stats)?;
                }
                EntryKind::Symlink => {
                    let target = rfs::readlinkat(&self.fd, name, Vec::new()).map_err(io)?;
                    match rfs::symlinkat(target.as_c_str(), &dst.fd, name) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(io(e)),
                    }
                    rfs::chownat(&dst.fd, name, Some(uid_of(uid)), Some(gid_of(uid)), AtFlags::SYMLINK_NOFOLLOW).map_err(io)?;
                    stats.links += 1;
                }
                EntryKind::Other => stats.skipped += 1,
            }
        }
        Ok(())
    }

    /// Removes the empty directory `name` here.
    pub fn remove_dir(&self, name: &str) -> std::io::Result<()> {
        match rfs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(io(e)),
        }
    }
}

/// Space and inodes of a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes_total: u64,
    pub bytes_free: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

fn uid_of(uid: u32) -> rustix::fs::Uid {
    // SAFETY-free: from_raw is a plain constructor; 0 is root and intended where passed.
    rustix::fs::Uid::from_raw(uid)
}

fn gid_of(gid: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(gid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn me() -> u32 {
        std::fs::metadata("/proc/self").unwrap().uid()
    }

    #[test]
    fn reads_refuse_links_fifos_and_large_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "hello").unwrap();
        std::fs::write(d.path().join("secret"), "root only").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), d.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.path().join("abs")).unwrap();
        rustix::fs::mkfifoat(rustix::fs::CWD, d.path().join("fifo").as_path(), Mode::from_raw_mode(0o600)).unwrap();
        let sparse = std::fs::File::create(d.path().join("sparse")).unwrap();
        sparse.set_len(1 << 40).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("..", d.path().join("sub/up")).unwrap();

        let dir = SandboxDir::open(d.path()).unwrap();
        assert_eq!(dir.read_file("a", 100).unwrap(), b"hello");
        assert!(matches!(dir.read_file("a", 4), Err(ReadError::TooLarge { .. })));
        assert!(matches!(dir.read_file("link", 100), Err(ReadError::NotRegular { .. })));
        assert!(matches!(dir.read_file("abs", 100), Err(ReadError::NotRegular { .. })));
        // A FIFO would block a plain open forever.
        assert!(matches!(dir.read_file("fifo", 100), Err(ReadError::NotRegular { .. })));
        assert!(matches!(dir.read_file("sparse", 1 << 20), Err(ReadError::TooLarge { .. })));
        assert!(dir.read_file("sub/up/a", 100).is_err(), "no link on the way either");
        assert!(dir.read_file("../etc/hostname", 100).is_err(), "nothing outside");
        assert!(dir.read_file("missing", 100).unwrap_err().is_not_found());
        assert_eq!(dir.kind("link").unwrap(), Some(EntryKind::Symlink));
        assert_eq!(dir.kind("fifo").unwrap(), Some(EntryKind::Other));
        assert_eq!(dir.kind("sub").unwrap(), Some(EntryKind::Dir));
        assert_eq!(dir.kind("nope").unwrap(), None);
        assert!(dir.subdir("link").is_err());

        let mut names: Vec<_> = dir.entries().unwrap().into_iter().map(|e| (e.name.into_string().unwrap(), e.kind)).collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(names.iter().find(|(n, _)| n == "link").unwrap().1, EntryKind::Symlink);
        assert_eq!(names.iter().find(|(n, _)| n == "sub").unwrap().1, EntryKind::Dir);
        assert_eq!(names.len(), 7);
    }

    #[test]
    fn a_symlinked_dir_is_not_opened() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("ws")).unwrap();
        assert!(SandboxDir::open(&d.path().join("ws")).is_err());
    }

    #[test]
    fn creation_never_follows_or_replaces() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("SOUL.md")).unwrap();
        let dir = SandboxDir::open(d.path()).unwrap();
        assert!(!dir.create_file("SOUL.md", 0o600, me(), b"seed").unwrap());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert!(dir.create_file("USER.md", 0o600, me(), b"seed").unwrap());
        assert_eq!(std::fs::metadata(d.path().join("USER.md")).unwrap().mode() & 0o777, 0o600);
        assert!(dir.make_dir("memory", 0o700, me()).unwrap());
        assert!(!dir.make_dir("memory", 0o700, me()).unwrap());
        std::os::unix::fs::symlink(&victim, d.path().join("sessions")).unwrap();
        assert!(!dir.make_dir("sessions", 0o700, me()).unwrap());
        dir.remove_file("SOUL.md").unwrap();
        assert!(victim.exists(), "unlinking a link removes the link");
    }

    #[test]
    fn copies_a_tree_without_following_anything() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::create_dir_all(a.path().join("memory/deep")).unwrap();
        std::fs::write(a.path().join("MEMORY.md"), "facts").unwrap();
        std::fs::write(a.path().join("memory/deep/n.md"), "note").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", a.path().join("evil")).unwrap();
        std::os::unix::fs::symlink("/etc", a.path().join("memory/etc")).unwrap();
        rustix::fs::mkfifoat(rustix::fs::CWD, a.path().join("fifo").as_path(), Mode::from_raw_mode(0o600)).unwrap();
        let stats = SandboxDir::open(a.path()).unwrap().copy_tree(&SandboxDir::open(b.path()).unwrap(), me()).unwrap();
        assert_eq!((stats.files, stats.dirs, stats.links, stats.skipped), (2, 2, 2, 1), "{stats:?}");
        assert_eq!(std::fs::read_to_string(b.path().join("memory/deep/n.md")).unwrap(), "note");
        assert_eq!(std::fs::read_link(b.path().join("evil")).unwrap(), Path::new("/etc/shadow"));
        assert!(std::fs::symlink_metadata(b.path().join("memory/etc")).unwrap().file_type().is_symlink());
        assert!(!b.path().join("fifo").exists());
    }
}
