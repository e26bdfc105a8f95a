//! Sockets in a sandbox's run dir: the server's listener put there without touching a path the
//! sandbox can change, and connections to the sandbox's own listener that reach that sandbox
//! and no other.
//!
//! `connect(2)` by path follows symlinks: a sandbox that replaced its `agent.sock` with a link
//! to another sandbox's socket (or to `/proc/<pid>/root/...`) would have the server talk to
//! someone else. So the name is opened with `O_PATH | O_NOFOLLOW` (a link stays a link and is
//! refused), the socket is connected through `/proc/self/fd/N`, which is that very inode, and the
//! peer's credentials are checked before a byte is sent.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use rustix::fs::{self as rfs, FileType, Mode};

use crate::dir::SandboxDir;

/// Who must be listening on a sandbox's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The container's full id (hex, without a node prefix): the listener's process must be in
    /// that container's cgroup.
    pub container_id: String,
    /// The uid the listener must run as; `None` where the runtime shows another (gVisor's
    /// sandbox process holds host-side sockets under its own uid).
    pub uid: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{name} is not a socket (a {kind}); refusing to follow it")]
    NotASocket { name: String, kind: &'static str },
    #[error("the socket's listener is not the expected sandbox ({0})")]
    WrongPeer(String),
}

impl ConnectError {
    /// True when nobody listens (or the socket is gone): the sandbox is down, not hostile.
    pub fn is_unavailable(&self) -> bool {
        use std::io::ErrorKind::*;
        matches!(self, ConnectError::Io(e) if matches!(e.kind(), NotFound | ConnectionRefused | ConnectionReset))
    }
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::Symlink => "symlink",
        FileType::RegularFile => "file",
        FileType::Directory => "directory",
        FileType::Fifo => "FIFO",
        FileType::CharacterDevice | FileType::BlockDevice => "device",
        _ => "special file",
    }
}

/// Connects to the socket `name` in the sandbox's run dir `run_dir`, refusing a link or any
/// non-socket, and checks that the listener is `peer` before returning the stream. (`None` skips
/// the peer check: only for tests that run the listener in their own process.)
pub async fn connect(run_dir: &Path, name: &str, peer: Option<&Peer>) -> Result<tokio::net::UnixStream, ConnectError> {
    let dir = SandboxDir::open(run_dir)?;
    let fd = match dir.open_path(name) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(ConnectError::NotASocket { name: name.to_owned(), kind: "symlink" });
        }
        Err(e) => return Err(e.into()),
    };
    let t = FileType::from_raw_mode(rfs::fstat(&fd).map_err(std::io::Error::from)?.st_mode);
    if t != FileType::Socket {
        return Err(ConnectError::NotASocket { name: name.to_owned(), kind: kind_name(t) });
    }
    // The magic link is the inode itself: nothing the sandbox renames now changes where it leads.
    let via = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let stream = tokio::net::UnixStream::connect(&via).await?;
    drop(fd);
    if let Some(peer) = peer {
        verify(&stream, peer)?;
    }
    Ok(stream)
}

/// Checks the credentials of the process listening on the other end of `stream`.
pub fn verify(stream: &impl AsFd, peer: &Peer) -> Result<(), ConnectError> {
    let cred = peer_cred(stream)?;
    let pid = cred.pid;
    if pid <= 0 {
        return Err(ConnectError::WrongPeer("its process is not visible from the server".into()));
    }
    if pid as u32 == std::process::id() {
        return Err(ConnectError::WrongPeer("the server itself listens there".into()));
    }
    if let Some(uid) = peer.uid {
        if cred.uid != uid {
            return Err(ConnectError::WrongPeer(format!("it runs as uid {}, not {uid}", cred.uid)));
        }
    }
    if !pid_in_container(pid, &peer.container_id)? {
        return Err(ConnectError::WrongPeer(format!("process {pid} is not in container {}", short(&peer.container_id))));
    }
    Ok(())
}

/// `SO_PEERCRED` of a connected Unix socket. (rustix's typed version cannot hold pid 0, which
/// the kernel reports for a peer in a pid namespace the caller cannot see.)
pub fn peer_cred(stream: &impl AsFd) -> std::io::Result<libc::ucred> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given, and the fd is borrowed
    // for the duration of the call.
    let rc = unsafe { libc::getsockopt(stream.as_fd().as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred)
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// True when process `pid` belongs to the container `container_id`: its cgroup path names the
/// container's full id (`/docker/<id>` under cgroupfs, `docker-<id>.scope` under systemd).
pub fn pid_in_container(pid: i32, container_id: &str) -> std::io::Result<bool> {
    if container_id.len() < 32 || !container_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(false);
    }
    let cgroup = match std::fs::read(format!("/proc/{pid}/cgroup")) {
        Ok(c) => c,
        // Gone since it listened: not the sandbox we can vouch for.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let text = String::from_utf8_lossy(&cgroup);
    Ok(text.lines().any(|l| {
        let path = l.splitn(3, ':').nth(2).unwrap_or("");
        path.split(['/', '-', '.']).any(|part| part == container_id)
    }))
}

impl SandboxDir {
    /// Binds a listening socket as `name` in this (sandbox-owned) dir, owned by `uid` with
    /// `mode`. It is made and given its owner and mode in `staging`, a root-owned dir on the
    /// same filesystem that the sandbox cannot see, and then renamed here: whatever the sandbox
    /// put at `name` is replaced, never followed, and no path in this dir is chmodded.
    pub fn bind_socket(&self, name: &str, staging: &SandboxDir, uid: u32, mode: u32) -> std::io::Result<std::os::unix::net::UnixListener> {
        let tmp = format!(".{name}.{:016x}", rand::random::<u64>());
        // Through the handle, so the path's length never passes sun_path's 108 bytes.
        let path = format!("/proc/self/fd/{}/{tmp}", staging.fd().as_raw_fd());
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        let done = (|| {
            rfs::chownat(staging.fd(), tmp.as_str(), Some(rfs::Uid::from_raw(uid)), Some(rfs::Gid::from_raw(uid)), rfs::AtFlags::SYMLINK_NOFOLLOW)?;
            rfs::chmodat(staging.fd(), tmp.as_str(), Mode::from_raw_mode(mode), rfs::AtFlags::empty())?;
            rfs::renameat(staging.fd(), tmp.as_str(), self.fd(), name)
        })();
        if let Err(e) = done {
            let _ = rfs::unlinkat(staging.fd(), tmp.as_str(), rfs::AtFlags::empty());
            return Err(e.into());
        }
        Ok(listener)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn me() -> u32 {
        std::fs::metadata("/proc/self").unwrap().uid()
    }

    #[tokio::test]
    async fn links_and_non_sockets_are_never_connected() {
        let d = tempfile::tempdir().unwrap();
        let other = d.path().join("other.sock");
        let _l = std::os::unix::net::UnixListener::bind(&other).unwrap();
        std::os::unix::fs::symlink(&other, d.path().join("agent.sock")).unwrap();
        std::fs::write(d.path().join("file.sock"), "").unwrap();
        let peer = Peer { container_id: "0".repeat(64), uid: None };
        let e = connect(d.path(), "agent.sock", Some(&peer)).await.unwrap_err();
        assert!(matches!(e, ConnectError::NotASocket { kind: "symlink", .. }), "{e}");
        let e = connect(d.path(), "file.sock", Some(&peer)).await.unwrap_err();
        assert!(matches!(e, ConnectError::NotASocket { kind: "file", .. }), "{e}");
        assert!(connect(d.path(), "missing.sock", Some(&peer)).await.unwrap_err().is_unavailable());
        // A real socket whose listener is not the expected container's (this test process is
        // the server here): connected, then refused before anything is sent.
        let e = connect(d.path(), "other.sock", Some(&peer)).await.unwrap_err();
        assert!(matches!(e, ConnectError::WrongPeer(_)), "{e}");
        connect(d.path(), "other.sock", None).await.expect("unchecked, a real socket is reached");
    }

    #[test]
    fn cgroup_lines_are_matched_on_the_whole_id() {
        let id = "9b56ede38f2c9cbb1cbf679478e39214fdcfa656157572fd7e9b5088f1371ae4";
        assert!(!pid_in_container(std::process::id() as i32, id).unwrap());
        assert!(!pid_in_container(std::process::id() as i32, "").unwrap(), "an empty id matches nothing");
        assert!(!pid_in_container(std::process::id() as i32, "/").unwrap());
    }

    #[test]
    fn bind_replaces_a_planted_link_and_chmods_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let (run, staging) = (d.path().join("run"), d.path().join("staging"));
        std::fs::create_dir(&run).unwrap();
        std::fs::create_dir(&staging).unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "x").unwrap();
        std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&victim, run.join("control.sock")).unwrap();
        let (run_dir, staging_dir) = (SandboxDir::open(&run).unwrap(), SandboxDir::open(&staging).unwrap());
        let _l = run_dir.bind_socket("control.sock", &staging_dir, me(), 0o600).unwrap();
        let m = std::fs::symlink_metadata(run.join("control.sock")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&victim).unwrap().mode() & 0o777, 0o755, "the link's target is untouched");
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0, "nothing left in staging");
        std::os::unix::net::UnixStream::connect(run.join("control.sock")).expect("the listener answers at its new name");
    }
}
