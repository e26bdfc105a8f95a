//! A sandbox's writable storage: an ext4 filesystem of its own in an image file, loop-mounted
//! `nosuid,nodev,noexec`. Its size and inode count are fixed when it is made, so a sandbox that
//! writes without end fills only itself (ENOSPC inside), never the disk the store and Docker
//! share. The image is sparse: an idle agent costs what it wrote plus the filesystem's metadata.
//!
//! Mounting and formatting use util-linux's `mount` and e2fsprogs' `mkfs.ext4` (loop device setup
//! with autoclear is theirs to get right); bind mounts and unmounts are plain syscalls.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Size and inodes of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeSpec {
    pub size_mib: u64,
    pub inodes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("`{tool}` failed for {path}: {stderr}; is {package} installed (see `clawpen doctor`)?")]
    Tool { tool: &'static str, package: &'static str, path: String, stderr: String },
}

impl From<VolumeError> for std::io::Error {
    fn from(e: VolumeError) -> std::io::Error {
        match e {
            VolumeError::Io(e) => e,
            other => std::io::Error::other(other.to_string()),
        }
    }
}

/// Mount options of every volume: nothing on it runs, no device or setuid file means anything.
pub const MOUNT_OPTIONS: &str = "loop,nosuid,nodev,noexec,noatime";

fn run<S: AsRef<std::ffi::OsStr>>(tool: &'static str, package: &'static str, path: &Path, args: &[S]) -> Result<(), VolumeError> {
    let out = Command::new(tool).args(args).output().map_err(|e| VolumeError::Tool {
        tool,
        package,
        path: path.display().to_string(),
        stderr: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(VolumeError::Tool { tool, package, path: path.display().to_string(), stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
}

/// Makes the image `img` (root-owned, 0600) of `spec`'s size and inodes unless it exists. It is
/// formatted under a temporary name and renamed into place, so a crash never leaves a half-made
/// image under the real name.
pub fn create_image(img: &Path, spec: VolumeSpec) -> Result<bool, VolumeError> {
    if std::fs::symlink_metadata(img).is_ok() {
        return Ok(false);
    }
    let tmp = tmp_name(img);
    let _ = std::fs::remove_file(&tmp);
    {
        let f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        f.set_len(spec.size_mib.max(4) * 1024 * 1024)?;
    }
    let inodes = spec.inodes.max(64).to_string();
    let tmp_s = tmp.as_os_str();
    let args: [&std::ffi::OsStr; 12] =
        ["-q", "-F", "-m", "0", "-N", &inodes, "-E", "root_owner=0:0,nodiscard", "-L", "clawpen", "-t", "ext4"].map(std::ffi::OsStr::new);
    let r = run("mkfs.ext4", "e2fsprogs", img, &args.iter().copied().chain([tmp_s]).collect::<Vec<_>>());
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, img)?;
    Ok(true)
}

fn tmp_name(img: &Path) -> PathBuf {
    let name = img.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    img.with_file_name(format!(".{name}.tmp"))
}

/// True when something is mounted at `dir` (its device differs from its parent's).
pub fn is_mounted(dir: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let here = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let parent = std::fs::symlink_metadata(dir.join(".."))?;
    Ok(here.is_dir() && (here.dev() != parent.dev() || here.ino() == parent.ino()))
}

/// Mounts the image `img` at `dir` (made if missing) unless something is mounted there already.
pub fn mount(img: &Path, dir: &Path) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir)?;
    if is_mounted(dir)? {
        return Ok(());
    }
    let args: [&std::ffi::OsStr; 6] = [std::ffi::OsStr::new("-t"), "ext4".as_ref(), "-o".as_ref(), MOUNT_OPTIONS.as_ref(), img.as_os_str(), dir.as_os_str()];
    run("mount", "mount (util-linux)", img, &args)
}

/// Mounts the filesystem mounted at `from` at `to` as well (the same filesystem, not a copy), so
/// it can then be unmounted from `from`: how a warm-pool sandbox's volume becomes an agent's
/// while the sandbox keeps running on it.
pub fn bind(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    rustix::mount::mount_bind(from, to).map_err(std::io::Error::from)
}

/// Unmounts whatever is mounted at `dir` (lazily: a sandbox still running on it keeps it until
/// it stops; the loop device goes with the last user). Nothing mounted is fine.
pub fn unmount(dir: &Path) -> std::io::Result<()> {
    loop {
        if !is_mounted(dir)? {
            return Ok(());
        }
        match rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Unmounts every mount at or below `dir`, deepest first (tearing down a data dir).
pub fn unmount_under(dir: &Path) -> std::io::Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| *p == prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        match rustix::mount::unmount(p.as_str(), rustix::mount::UnmountFlags::DETACH) {
            Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The size of an image file, in MiB (what it was made with, or grown to).
pub fn image_mib(img: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(img)?.len() / (1024 * 1024))
}

/// Checks that volumes can be made and mounted here: the tools exist and a loop mount works.
/// Returns what is wrong, for `clawpen doctor`.
pub fn self_check(scratch: &Path) -> Result<(), String> {
    let img = scratch.join(".volume-check.img");
    let dir = scratch.join(".volume-check");
    let _ = unmount(&dir);
    let _ = std::fs::remove_file(&img);
    let result = (|| {
        create_image(&img, VolumeSpec { size_mib: 4, inodes: 64 }).map_err(|e| e.to_string())?;
        mount(&img, &dir).map_err(|e| e.to_string())?;
        let probe = dir.join("probe");
        std::fs::write(&probe, b"ok").map_err(|e| format!("writing to a mounted volume: {e}"))?;
        Ok(())
    })();
    let _ = unmount(&dir);
    let _ = std::fs::remove_dir(&dir);
    let _ = std::fs::remove_file(&img);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// Needs root (loop devices and mounts); the server does.
    #[test]
    fn a_volume_bounds_space_and_inodes_and_runs_nothing() {
        if !root() {
            assert!(std::env::var_os("CI").is_none(), "the volume tests need root under CI");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (img, dir) = (d.path().join("v.img"), d.path().join("v"));
        assert!(create_image(&img, VolumeSpec { size_mib: 8, inodes: 128 }).unwrap());
        assert!(!create_image(&img, VolumeSpec { size_mib: 8, inodes: 128 }).unwrap(), "made once");
        mount(&img, &dir).unwrap();
        mount(&img, &dir).unwrap();
        assert!(is_mounted(&dir).unwrap());
        let vol = crate::SandboxDir::open(&dir).unwrap();
        let u = vol.usage().unwrap();
        assert!(u.bytes_total <= 8 * 1024 * 1024 && u.inodes_total <= 256, "{u:?}");

        // Space: a write past the size fails with ENOSPC.
        let big = vec![7u8; 1024 * 1024];
        let mut f = std::fs::File::create(dir.join("fill")).unwrap();
        let err = (0..16).find_map(|_| std::io::Write::write_all(&mut f, &big).err()).expect("the volume fills up");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        drop(f);
        std::fs::remove_file(dir.join("fill")).unwrap();
        // Inodes: files past the count fail too.
        let err = (0..10_000).find_map(|i| std::fs::write(dir.join(format!("f{i}")), b"").err()).expect("inodes run out");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");

        // Bound elsewhere, unmounted from here: the same files.
        let other = d.path().join("w");
        bind(&dir, &other).unwrap();
        unmount(&dir).unwrap();
        assert!(!is_mounted(&dir).unwrap());
        assert!(other.join("f0").exists());
        unmount(&other).unwrap();
        unmount(&other).unwrap();
        assert!(!other.join("f0").exists());
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mi.contains(other.to_str().unwrap()));
    }
}
