//! Where things live under the data dir, and how a sandbox's storage is made safely.
//!
//! ```text
//! <data-dir>/clawpen.db                          the store (SQLite)
//! <data-dir>/admin.token                         the admin token, mode 0600
//! <data-dir>/master.key                          the vault's master keys, mode 0600 (unless
//!                                                CLAWPEN_MASTER_KEY is set)
//! <data-dir>/signing.key                         the connect URLs' HMAC keys, mode 0600
//! <data-dir>/volumes/<agent>.img                 the agent's own filesystem (ext4 image, 0600)
//! <data-dir>/agents/<agent>/                     where it is mounted (nosuid,nodev,noexec):
//!                           workspace/           mounted at /data, 0700, the agent's uid
//!                           run/                 mounted at /run/clawpen, 0700, the agent's uid
//!                           .staging/            the server's, 0700 root: sockets and files are
//!                                                made here and renamed into run/
//! <data-dir>/volumes/pool-<slot>.img             a warm-pool sandbox's filesystem until claimed
//! <data-dir>/pool/<slot>/{workspace,run,.staging}  where it is mounted
//! ```
//!
//! The server runs as root and everything under `workspace/` and `run/` belongs to the sandbox,
//! so nothing here touches a path in them: every operation goes through a
//! [`clawpen_hostfs::SandboxDir`] handle (no link followed, reads bounded). The volume root and
//! `.staging/` are never visible to a sandbox (only `workspace/` and `run/` are bound into it).

use std::path::{Path, PathBuf};

use clawpen_core::ids::{AgentId, TenantId};
use clawpen_core::spec::Volume;
use clawpen_hostfs::volume::{self, VolumeSpec};
use clawpen_hostfs::{EntryKind, SandboxDir};

#[derive(Debug, Clone)]
pub struct Layout {
    pub data_dir: PathBuf,
}

/// The name of the dir in a volume where the server makes what it renames into `run/`.
const STAGING: &str = ".staging";

fn spec_of(v: Volume) -> VolumeSpec {
    VolumeSpec { size_mib: v.size_mib, inodes: v.inodes }
}

impl Layout {
    pub fn new(data_dir: PathBuf) -> Layout {
        Layout { data_dir }
    }
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("clawpen.db")
    }
    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }
    pub fn signing_key_path(&self) -> PathBuf {
        self.data_dir.join("signing.key")
    }
    pub fn master_key_path(&self) -> PathBuf {
        self.data_dir.join("master.key")
    }
    pub fn tenant_dir(&self, tenant: &TenantId) -> PathBuf {
        self.data_dir.join("tenants").join(tenant.as_str())
    }
    /// The local folder storage uses by default (`storage.url` empty).
    pub fn storage_dir(&self) -> PathBuf {
        self.data_dir.join("storage")
    }
    pub fn volumes_dir(&self) -> PathBuf {
        self.data_dir.join("volumes")
    }
    /// The agent's filesystem image.
    pub fn volume_image(&self, agent: &AgentId) -> PathBuf {
        self.volumes_dir().join(format!("{agent}.img"))
    }
    /// Where the agent's filesystem is mounted.
    pub fn agent_root(&self, agent: &AgentId) -> PathBuf {
        self.data_dir.join("agents").join(agent.as_str())
    }
    pub fn workspace_dir(&self, agent: &AgentId) -> PathBuf {
        self.agent_root(agent).join("workspace")
    }
    pub fn run_dir(&self, agent: &AgentId) -> PathBuf {
        self.agent_root(agent).join("run")
    }
    pub fn control_socket(&self, agent: &AgentId) -> PathBuf {
        self.run_dir(agent).join(clawpen_core::spec::CONTROL_SOCKET)
    }

    pub fn pool_root(&self) -> PathBuf {
        self.data_dir.join("pool")
    }
    pub fn pool_slot_dir(&self, slot: u64) -> PathBuf {
        self.pool_root().join(slot.to_string())
    }
    pub fn pool_image(&self, slot: u64) -> PathBuf {
        self.volumes_dir().join(format!("pool-{slot}.img"))
    }
    pub fn pool_workspace(&self, slot: u64) -> PathBuf {
        self.pool_slot_dir(slot).join("workspace")
    }
    pub fn pool_run_dir(&self, slot: u64) -> PathBuf {
        self.pool_slot_dir(slot).join("run")
    }

    /// Where agents' files lived before each agent had a filesystem of its own (moved into the
    /// agent's volume by [`Layout::migrate_legacy`]).
    fn legacy_agent_dir(&self, tenant: &TenantId, agent: &AgentId) -> PathBuf {
        self.tenant_dir(tenant).join("agents").join(agent.as_str())
    }
    fn legacy_run_dir(&self, agent: &AgentId) -> PathBuf {
        self.data_dir.join("run").join(agent.as_str())
    }

    /// Makes a warm-pool slot's filesystem (with an empty workspace and run dir owned by its
    /// uid) and mounts it.
    pub fn prepare_pool_slot(&self, slot: u64, uid: u32, disk: Volume) -> std::io::Result<()> {
        volume::create_image(&self.pool_image(slot), spec_of(disk))?;
        volume::mount(&self.pool_image(slot), &self.pool_slot_dir(slot))?;
        let root = SandboxDir::open(&self.pool_slot_dir(slot))?;
        prepare_root(&root, uid)
    }

    /// Unmounts and removes a pool slot's filesystem.
    pub fn remove_pool_slot(&self, slot: u64) -> std::io::Result<()> {
        volume::unmount(&self.pool_slot_dir(slot))?;
        remove_if_present(&self.pool_slot_dir(slot))?;
        remove_file_if_present(&self.pool_image(slot))
    }

    /// Removes every pool slot's filesystem (at start-up, once no pool sandbox is left).
    pub fn clear_pool(&self) -> std::io::Result<()> {
        if let Ok(dirs) = std::fs::read_dir(self.pool_root()) {
            for d in dirs.flatten() {
                volume::unmount(&d.path())?;
            }
        }
        remove_if_present(&self.pool_root())?;
        if let Ok(files) = std::fs::read_dir(self.volumes_dir()) {
            for f in files.flatten() {
                if f.file_name().to_string_lossy().starts_with("pool-") {
                    remove_file_if_present(&f.path())?;
                }
            }
        }
        Ok(())
    }

    /// Removes images a crash left half-made (formatted under a temporary name, never renamed
    /// into place) and restores it left unfinished (their filesystem is mounted aside and never
    /// was the agent's). Only at start-up, before anything makes a new one.
    pub fn remove_unfinished_images(&self) -> std::io::Result<()> {
        for f in std::fs::read_dir(self.data_dir.join("agents")).into_iter().flatten().flatten() {
            if let Some(agent) = f.file_name().to_str().and_then(|n| n.strip_prefix(RESTORE_PREFIX)) {
                tracing::warn!(agent, "removing a restore that was interrupted; the next start restores again");
                volume::unmount(&f.path())?;
                remove_if_present(&f.path())?;
            }
        }
        for f in std::fs::read_dir(self.volumes_dir()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(".img.tmp") || name.starts_with(RESTORE_PREFIX) {
                remove_file_if_present(&f.path())?;
            }
        }
        Ok(())
    }

    fn restore_dir(&self, agent: &AgentId) -> PathBuf {
        self.data_dir.join("agents").join(format!("{RESTORE_PREFIX}{agent}"))
    }
    fn restore_image(&self, agent: &AgentId) -> PathBuf {
        self.volumes_dir().join(format!("{RESTORE_PREFIX}{agent}.img"))
    }

    /// Makes a new filesystem for the agent under a temporary name, mounted aside (no sandbox
    /// sees it), with an empty workspace and a run dir owned by `uid`, and returns the
    /// workspace: where a snapshot is restored before [`Layout::finish_restore`] makes it the
    /// agent's. What an earlier, killed restore left is removed first.
    pub fn begin_restore(&self, agent: &AgentId, uid: u32, disk: Volume) -> std::io::Result<SandboxDir> {
        self.abandon_restore(agent)?;
        volume::create_image(&self.restore_image(agent), spec_of(disk))?;
        volume::mount(&self.restore_image(agent), &self.restore_dir(agent))?;
        let root = SandboxDir::open(&self.restore_dir(agent))?;
        prepare_root(&root, uid)?;
        root.subdir("workspace")
    }

    /// The restored filesystem becomes the agent's (unmounted aside, its image renamed into
    /// place; [`Layout::prepare_agent`] mounts it). Every handle into it must be closed.
    pub fn finish_restore(&self, agent: &AgentId) -> std::io::Result<()> {
        volume::unmount(&self.restore_dir(agent))?;
        remove_if_present(&self.restore_dir(agent))?;
        std::fs::rename(self.restore_image(agent), self.volume_image(agent))
    }

    /// Removes an unfinished restore of the agent.
    pub fn abandon_restore(&self, agent: &AgentId) -> std::io::Result<()> {
        volume::unmount(&self.restore_dir(agent))?;
        remove_if_present(&self.restore_dir(agent))?;
        remove_file_if_present(&self.restore_image(agent))
    }

    /// The slot numbers with pool dirs or images on disk.
    pub fn pool_slots_on_disk(&self) -> Vec<u64> {
        let mut slots: Vec<u64> = std::fs::read_dir(self.pool_root()).into_iter().flatten().flatten().filter_map(|d| d.file_name().to_str()?.parse().ok()).collect();
        for f in std::fs::read_dir(self.volumes_dir()).into_iter().flatten().flatten() {
            if let Some(n) = f.file_name().to_str().and_then(|n| n.strip_prefix("pool-")?.strip_suffix(".img")?.parse().ok()) {
                slots.push(n);
            }
        }
        slots.sort_unstable();
        slots.dedup();
        slots
    }

    /// Makes a warm-pool slot's filesystem the agent's, so the slot's running sandbox (whose
    /// bind mounts hold that filesystem, not the path) becomes the agent's, and seeds the
    /// workspace, owned by `uid`. The agent's own workspace must be pristine (nothing but the
    /// untouched seed): its filesystem is removed, so nothing of the tenant's is lost. Each step
    /// can be redone after a crash.
    pub fn claim_slot(&self, slot: u64, agent: &AgentId, uid: u32) -> std::io::Result<()> {
        let (root, pool_dir, pool_img) = (self.agent_root(agent), self.pool_slot_dir(slot), self.pool_image(slot));
        if std::fs::symlink_metadata(&pool_img).is_ok() {
            let pool_mounted = volume::is_mounted(&pool_dir)?;
            let same = pool_mounted && volume::is_mounted(&root)? && SandboxDir::open(&root)?.device()? == SandboxDir::open(&pool_dir)?.device()?;
            if !same {
                if !self.reset_pristine(agent)? {
                    return Err(std::io::Error::other(format!("{} holds the tenant's files; a pool sandbox cannot take it over", self.workspace_dir(agent).display())));
                }
                if pool_mounted {
                    volume::bind(&pool_dir, &root)?;
                } else {
                    volume::mount(&pool_img, &root)?;
                }
            }
            std::fs::rename(&pool_img, self.volume_image(agent))?;
        }
        self.remove_pool_slot(slot)?;
        let r = SandboxDir::open(&root)?;
        prepare_root(&r, uid)?;
        seed_workspace(&r.subdir("workspace")?, uid)
    }

    /// Removes an agent's filesystem if its workspace is pristine (see
    /// [`workspace_is_pristine`]), so that it can be made again for another uid or replaced by a
    /// pool sandbox's; true when it was removed (or was missing).
    pub fn reset_pristine(&self, agent: &AgentId) -> std::io::Result<bool> {
        let root = self.agent_root(agent);
        if std::fs::symlink_metadata(self.volume_image(agent)).is_err() && !volume::is_mounted(&root)? {
            remove_if_present(&root)?;
            return Ok(true);
        }
        if volume::is_mounted(&root)? && !self.is_pristine(agent)? {
            return Ok(false);
        }
        volume::unmount(&root)?;
        remove_if_present(&root)?;
        remove_file_if_present(&self.volume_image(agent))?;
        Ok(true)
    }

    /// True when the agent's workspace holds nothing but the untouched seed (or is missing).
    pub fn is_pristine(&self, agent: &AgentId) -> std::io::Result<bool> {
        let root = self.agent_root(agent);
        if !volume::is_mounted(&root)? {
            return Ok(std::fs::symlink_metadata(self.volume_image(agent)).is_err());
        }
        match SandboxDir::open(&root)?.subdir("workspace") {
            Ok(ws) => workspace_is_pristine(&ws),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Writes the identity file of a claimed pool sandbox into the agent's run dir: root-owned,
    /// 0444, made in the staging dir and renamed into place.
    pub fn write_identity(&self, tenant: &TenantId, agent: &AgentId) -> std::io::Result<()> {
        let root = SandboxDir::open(&self.agent_root(agent))?;
        let staging = root.subdir(STAGING)?;
        let run = root.subdir("run")?;
        let tmp = format!(".{}.{:016x}", clawpen_core::spec::IDENTITY_FILE, rand::random::<u64>());
        let body = serde_json::json!({"agent_id": agent.as_str(), "tenant_id": tenant.as_str()}).to_string();
        // No fsync: after a crash the reconciler writes it again before the claim is trusted.
        staging.create_file(&tmp, 0o444, 0, body.as_bytes())?;
        run.rename_into(&staging, &tmp, clawpen_core::spec::IDENTITY_FILE)
    }

    pub fn remove_identity(&self, agent: &AgentId) -> std::io::Result<()> {
        match SandboxDir::open(&self.run_dir(agent)) {
            Ok(run) => run.remove_file(clawpen_core::spec::IDENTITY_FILE),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Binds the agent's `control.sock`: owned by `uid`, 0600, renamed into its run dir.
    pub fn bind_control(&self, agent: &AgentId, uid: u32) -> std::io::Result<std::os::unix::net::UnixListener> {
        let root = SandboxDir::open(&self.agent_root(agent))?;
        let (staging, run) = (root.subdir(STAGING)?, root.subdir("run")?);
        run.bind_socket(clawpen_core::spec::CONTROL_SOCKET, &staging, uid, 0o600)
    }

    /// The agent's workspace by handle; `None` when its filesystem is not mounted here (the
    /// agent is archived, or was never made on this node).
    pub fn workspace(&self, agent: &AgentId) -> std::io::Result<Option<SandboxDir>> {
        let root = self.agent_root(agent);
        if !volume::is_mounted(&root)? {
            return Ok(None);
        }
        Ok(Some(SandboxDir::open(&root)?.subdir("workspace")?))
    }

    /// Replaces the file `name` of the workspace dir `dir` (the workspace or one of its subdirs)
    /// with `contents`, owned by `uid`: written new in the staging dir (root's, on the same
    /// filesystem) and renamed over the name, so a link the sandbox put there is replaced,
    /// never followed.
    pub fn replace_workspace_file(&self, agent: &AgentId, dir: &SandboxDir, name: &str, uid: u32, contents: &[u8]) -> std::io::Result<()> {
        let staging = SandboxDir::open(&self.agent_root(agent))?.subdir(STAGING)?;
        let tmp = format!(".edit.{:016x}", rand::random::<u64>());
        staging.create_file(&tmp, 0o600, uid, contents)?;
        dir.rename_into(&staging, &tmp, name).inspect_err(|_| {
            let _ = staging.remove_file(&tmp);
        })
    }

    /// Space and inodes the agent's filesystem has and uses; `None` when it is not mounted.
    pub fn disk_usage(&self, agent: &AgentId) -> std::io::Result<Option<clawpen_hostfs::dir::Usage>> {
        let root = self.agent_root(agent);
        if !volume::is_mounted(&root)? {
            return Ok(None);
        }
        Ok(Some(SandboxDir::open(&root)?.usage()?))
    }

    /// Makes the data dir (0700) and its fixed subdirs.
    pub fn init(&self) -> anyhow::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.data_dir)?;
        std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700))?;
        for d in [self.data_dir.join("tenants"), self.data_dir.join("agents"), self.volumes_dir()] {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&d)?;
        }
        Ok(())
    }

    /// A root-owned, read-only (0555) copy of the running executable at
    /// `<data-dir>/bin/agent-<image version>`, made once per version, for sandboxes to bind over
    /// the image's own copy.
    pub fn install_agent_exe(&self, image_tag: &str) -> anyhow::Result<PathBuf> {
        let version: String = image_tag.rsplit(':').next().unwrap_or(image_tag).chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        let bin = self.data_dir.join("bin");
        std::fs::DirBuilder::new().recursive(true).mode(0o711).create(&bin)?;
        let path = bin.join(format!("agent-{version}"));
        if !path.exists() {
            let tmp = bin.join(format!(".agent-{version}.{}", std::process::id()));
            std::fs::copy(std::env::current_exe()?, &tmp)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o555))?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(path)
    }

    /// True when the agent has a filesystem image (made by [`Layout::prepare_agent`]).
    pub fn has_volume(&self, agent: &AgentId) -> bool {
        std::fs::symlink_metadata(self.volume_image(agent)).is_ok()
    }

    /// Makes (or re-checks) an agent's filesystem: the image (if missing) with `disk`'s bounds,
    /// mounted, a workspace and run dir owned by `uid`, 0700, and whichever OpenClaw workspace
    /// files are missing (a crash may have interrupted the first seeding).
    pub fn prepare_agent(&self, agent: &AgentId, uid: u32, disk: Volume) -> std::io::Result<()> {
        volume::create_image(&self.volume_image(agent), spec_of(disk))?;
        self.mount_agent(agent)?;
        let root = SandboxDir::open(&self.agent_root(agent))?;
        prepare_root(&root, uid)?;
        seed_workspace(&root.subdir("workspace")?, uid)
    }

    /// Mounts the agent's filesystem if it is not (after a reboot). Never makes one.
    pub fn mount_agent(&self, agent: &AgentId) -> std::io::Result<()> {
        Ok(volume::mount(&self.volume_image(agent), &self.agent_root(agent))?)
    }

    /// True when the agent's files still live in the layout before volumes.
    pub fn has_legacy_workspace(&self, tenant: &TenantId, agent: &AgentId) -> bool {
        std::fs::symlink_metadata(self.legacy_agent_dir(tenant, agent).join("workspace")).is_ok()
    }

    /// Moves an agent's files from the layout before volumes (`tenants/<t>/agents/<a>/workspace`
    /// and `run/<a>`) into its new filesystem, copied by handle (links made again, never
    /// followed), then removes the old dirs. True when there was something to move.
    pub fn migrate_legacy(&self, tenant: &TenantId, agent: &AgentId, uid: u32, disk: Volume) -> std::io::Result<bool> {
        let old = self.legacy_agent_dir(tenant, agent);
        let old_ws = old.join("workspace");
        if std::fs::symlink_metadata(&old_ws).is_err() {
            return Ok(false);
        }
        volume::create_image(&self.volume_image(agent), spec_of(disk))?;
        self.mount_agent(agent)?;
        let root = SandboxDir::open(&self.agent_root(agent))?;
        prepare_root(&root, uid)?;
        let stats = SandboxDir::open(&old_ws)?.copy_tree(&root.subdir("workspace")?, uid)?;
        tracing::info!(agent = %agent, files = stats.files, bytes = stats.bytes, "moved a workspace into the agent's own filesystem");
        remove_if_present(&old)?;
        remove_if_present(&self.legacy_run_dir(agent))?;
        seed_workspace(&root.subdir("workspace")?, uid)?;
        Ok(true)
    }

    /// Removes an agent's filesystem (unmounted first) and any dirs of the layout before it.
    pub fn remove_agent(&self, tenant: &TenantId, agent: &AgentId) -> std::io::Result<()> {
        volume::unmount(&self.agent_root(agent))?;
        for d in [self.agent_root(agent), self.legacy_agent_dir(tenant, agent), self.legacy_run_dir(agent)] {
            remove_if_present(&d)?;
        }
        remove_file_if_present(&self.volume_image(agent))
    }

    pub fn remove_tenant(&self, tenant: &TenantId) -> std::io::Result<()> {
        remove_if_present(&self.tenant_dir(tenant))
    }

    /// The agents whose filesystem images are here (not the pool's, not a restore's).
    pub fn agents_on_disk(&self) -> Vec<AgentId> {
        self.volumes_on_disk().into_iter().filter_map(|(name, _)| AgentId::parse(name.strip_suffix(".img")?).ok()).collect()
    }

    /// Every agent filesystem image on disk and its size in MiB (for the disk budget).
    pub fn volumes_on_disk(&self) -> Vec<(String, u64)> {
        std::fs::read_dir(self.volumes_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|f| {
                let name = f.file_name().into_string().ok()?;
                name.ends_with(".img").then(|| (name.clone(), volume::image_mib(&f.path()).unwrap_or(0)))
            })
            .collect()
    }
}

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

/// The name of a filesystem being restored (its image in `volumes/`, its mount in `agents/`).
const RESTORE_PREFIX: &str = ".restore-";

/// `remove_dir_all` does not follow links (it works by handle since Rust 1.58.1).
fn remove_if_present(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn remove_file_if_present(f: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(f) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The volume root: root's, 0700, with `.staging/` (root's) and `workspace/` and `run/`
/// (`uid`'s, 0700). The root and staging dir are never bound into a sandbox, so the sandbox
/// cannot change them; `workspace` and `run` themselves are its mount points, which it cannot
/// rename or replace either.
fn prepare_root(root: &SandboxDir, uid: u32) -> std::io::Result<()> {
    root.set_owner_mode(0, 0o700)?;
    // mkfs makes it; the sandbox never sees the volume root, and it would only be noise.
    let _ = root.remove_dir("lost+found");
    root.make_dir(STAGING, 0o700, 0)?;
    root.subdir(STAGING)?.set_owner_mode(0, 0o700)?;
    for d in ["workspace", "run"] {
        root.make_dir(d, 0o700, uid)?;
        root.subdir(d)?.set_owner_mode(uid, 0o700)?;
    }
    Ok(())
}

/// True when a workspace holds nothing but the seed, untouched (an agent that never wrote
/// anything): replacing it with a fresh seed loses nothing. Read by handle and bounded: a
/// seed file is compared only when its size is the seed's, and nothing is followed.
pub fn workspace_is_pristine(ws: &SandboxDir) -> std::io::Result<bool> {
    for entry in ws.entries()? {
        let Some(name) = entry.name.to_str() else { return Ok(false) };
        let seed = SEED.iter().find(|(n, _)| *n == name);
        let pristine = match (seed, name) {
            (Some((_, text)), _) => {
                entry.kind == EntryKind::File
                    && match ws.read_file(name, text.len() as u64) {
                        Ok(bytes) => bytes == text.as_bytes(),
                        Err(clawpen_hostfs::ReadError::Io(e)) => return Err(e),
                        Err(_) => false,
                    }
            }
            (None, "memory" | "sessions") => entry.kind == EntryKind::Dir && ws.subdir(name)?.entries()?.is_empty(),
            _ => false,
        };
        if !pristine {
            return Ok(false);
        }
    }
    Ok(true)
}

const SOUL: &str = "# SOUL.md\n\nYou are a helpful, honest personal assistant. Be brief and kind.\n";
const USER: &str = "# USER.md\n\nWhat you know about the people you help goes here.\n";
const MEMORY: &str = "# MEMORY.md\n\nLong-term facts worth keeping.\n";
const SEED: [(&str, &str); 3] = [("SOUL.md", SOUL), ("USER.md", USER), ("MEMORY.md", MEMORY)];

/// Puts the OpenClaw workspace skeleton's missing pieces into a workspace. Whatever exists (a
/// file, a dir, or a symlink the tenant made) is left alone: `O_EXCL` never follows a link.
fn seed_workspace(ws: &SandboxDir, uid: u32) -> std::io::Result<()> {
    for (name, text) in SEED {
        ws.create_file(name, 0o600, uid, text.as_bytes())?;
    }
    for sub in ["memory", "sessions"] {
        ws.make_dir(sub, 0o700, uid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const DISK: Volume = Volume { size_mib: 8, inodes: 256 };

    /// Volumes need root (loop mounts), as the server does; CI runs as root.
    fn root_or_skip() -> bool {
        let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        assert!(root || std::env::var_os("CI").is_none(), "the layout tests need root under CI");
        root
    }

    /// A data dir that unmounts what it mounted, even when a test fails.
    struct Dir(tempfile::TempDir, Layout);
    impl Drop for Dir {
        fn drop(&mut self) {
            for base in [self.1.data_dir.join("agents"), self.1.pool_root()] {
                for d in std::fs::read_dir(base).into_iter().flatten().flatten() {
                    let _ = volume::unmount(&d.path());
                }
            }
        }
    }
    fn data_dir() -> Dir {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().to_owned());
        layout.init().unwrap();
        Dir(dir, layout)
    }

    #[test]
    fn prepare_is_idempotent_owned_and_bounded() {
        if !root_or_skip() {
            return;
        }
        let d = data_dir();
        let (layout, t, a, uid) = (&d.1, TenantId::new(), AgentId::new(), 4242);
        layout.prepare_agent(&a, uid, DISK).unwrap();
        let ws = layout.workspace_dir(&a);
        std::fs::write(ws.join("MEMORY.md"), "kept").unwrap();
        std::fs::remove_file(ws.join("SOUL.md")).unwrap();
        // A symlink planted by the tenant is neither followed nor replaced.
        std::fs::remove_file(ws.join("USER.md")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", ws.join("USER.md")).unwrap();
        layout.prepare_agent(&a, uid, DISK).unwrap();
        assert_eq!(std::fs::read_to_string(ws.join("MEMORY.md")).unwrap(), "kept");
        assert!(ws.join("SOUL.md").is_file(), "a missing seed file is put back");
        assert!(std::fs::symlink_metadata(ws.join("USER.md")).unwrap().file_type().is_symlink());
        for d in [layout.run_dir(&a), ws.clone()] {
            let m = std::fs::metadata(&d).unwrap();
            assert_eq!((m.uid(), m.mode() & 0o777), (uid, 0o700), "{}", d.display());
        }
        let u = layout.disk_usage(&a).unwrap().expect("mounted");
        assert!(u.bytes_total <= 8 << 20, "{u:?}");
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = mi.lines().find(|l| l.contains(layout.agent_root(&a).to_str().unwrap())).expect("mounted");
        assert!(line.contains("nosuid") && line.contains("nodev") && line.contains("noexec"), "{line}");
        layout.remove_agent(&t, &a).unwrap();
        assert!(!layout.agent_root(&a).exists() && !layout.volume_image(&a).exists());
    }

    #[test]
    fn the_control_socket_and_identity_replace_planted_links() {
        if !root_or_skip() {
            return;
        }
        let d = data_dir();
        let (layout, t, a) = (&d.1, TenantId::new(), AgentId::new());
        layout.prepare_agent(&a, 4242, DISK).unwrap();
        let victim = d.0.path().join("victim");
        std::fs::write(&victim, "x").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o755)).unwrap();
        let run = layout.run_dir(&a);
        std::os::unix::fs::symlink(&victim, run.join("control.sock")).unwrap();
        std::os::unix::fs::symlink(&victim, run.join("identity.json")).unwrap();
        let _l = layout.bind_control(&a, 4242).unwrap();
        layout.write_identity(&t, &a).unwrap();
        let m = std::fs::metadata(&victim).unwrap();
        assert_eq!((m.mode() & 0o777, m.uid()), (0o755, 0), "the link's target is untouched");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "x");
        let s = std::fs::symlink_metadata(run.join("control.sock")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_socket(&s.file_type()));
        assert_eq!((s.uid(), s.mode() & 0o777), (4242, 0o600));
        let id = std::fs::symlink_metadata(run.join("identity.json")).unwrap();
        assert!(id.is_file() && id.mode() & 0o777 == 0o444 && id.uid() == 0);
    }

    #[test]
    fn a_pool_slot_becomes_a_pristine_agents_and_never_a_used_one() {
        if !root_or_skip() {
            return;
        }
        let d = data_dir();
        let (layout, t, a, uid) = (&d.1, TenantId::new(), AgentId::new(), 4242);
        layout.prepare_agent(&a, uid, DISK).unwrap();
        assert!(layout.is_pristine(&a).unwrap());
        layout.prepare_pool_slot(3, 4343, DISK).unwrap();
        std::fs::write(layout.pool_run_dir(3).join("agent.sock"), "").unwrap();
        layout.claim_slot(3, &a, 4343).unwrap();
        assert!(!layout.pool_slot_dir(3).exists() && !layout.pool_image(3).exists(), "the slot is gone");
        assert!(layout.run_dir(&a).join("agent.sock").exists(), "the slot's filesystem is the agent's");
        assert!(layout.is_pristine(&a).unwrap(), "seeded, nothing else");
        assert_eq!(std::fs::metadata(layout.workspace_dir(&a)).unwrap().uid(), 4343);
        // Redoing a finished claim changes nothing.
        layout.claim_slot(3, &a, 4343).unwrap();
        assert!(layout.run_dir(&a).join("agent.sock").exists());

        // A workspace the agent wrote to is never taken over.
        let ws = layout.workspace_dir(&a);
        std::fs::write(ws.join("sessions/main.jsonl"), "{}\n").unwrap();
        assert!(!layout.is_pristine(&a).unwrap());
        layout.prepare_pool_slot(4, 4444, DISK).unwrap();
        assert!(layout.claim_slot(4, &a, 4444).is_err());
        assert!(ws.join("sessions/main.jsonl").exists());
        std::fs::remove_file(ws.join("sessions/main.jsonl")).unwrap();
        // A seed file grown sparse to a terabyte is read no further than the seed's size.
        let f = std::fs::OpenOptions::new().write(true).open(ws.join("SOUL.md")).unwrap();
        f.set_len(1 << 40).unwrap_or_else(|_| f.set_len(4 << 20).unwrap());
        assert!(!layout.is_pristine(&a).unwrap());
        layout.clear_pool().unwrap();
        assert!(!layout.pool_root().exists() && layout.pool_slots_on_disk().is_empty());
        layout.remove_agent(&t, &a).unwrap();
    }

    #[test]
    fn legacy_workspaces_move_into_the_agents_filesystem() {
        if !root_or_skip() {
            return;
        }
        let d = data_dir();
        let (layout, t, a) = (&d.1, TenantId::new(), AgentId::new());
        let old = layout.legacy_agent_dir(&t, &a).join("workspace");
        std::fs::create_dir_all(old.join("memory")).unwrap();
        std::fs::write(old.join("MEMORY.md"), "the family's facts").unwrap();
        std::fs::write(old.join("memory/2026-11-30.md"), "a note").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", old.join("trap")).unwrap();
        std::fs::create_dir_all(layout.legacy_run_dir(&a)).unwrap();
        assert!(layout.migrate_legacy(&t, &a, 4242, DISK).unwrap());
        let ws = layout.workspace_dir(&a);
        assert_eq!(std::fs::read_to_string(ws.join("MEMORY.md")).unwrap(), "the family's facts");
        assert_eq!(std::fs::read_to_string(ws.join("memory/2026-11-30.md")).unwrap(), "a note");
        assert!(std::fs::symlink_metadata(ws.join("trap")).unwrap().file_type().is_symlink());
        assert!(ws.join("SOUL.md").exists(), "seeded what was missing");
        assert!(!layout.legacy_agent_dir(&t, &a).exists() && !layout.legacy_run_dir(&a).exists());
        assert!(!layout.migrate_legacy(&t, &a, 4242, DISK).unwrap(), "once");
        layout.remove_agent(&t, &a).unwrap();
    }
}
