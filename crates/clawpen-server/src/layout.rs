//! Where things live under the data dir, and how a tenant's dirs are made safely.
//!
//! ```text
//! <data-dir>/clawpen.db                          the store (SQLite)
//! <data-dir>/admin.token                         the admin token, mode 0600
//! <data-dir>/master.key                          the vault's master keys, mode 0600 (unless
//!                                                CLAWPEN_MASTER_KEY is set)
//! <data-dir>/signing.key                         the connect URLs' HMAC keys, mode 0600
//! <data-dir>/tenants/<tenant>/agents/<agent>/workspace   mounted at /data, 0700, tenant uid
//! <data-dir>/run/<agent>/                        mounted at /run/clawpen, 0700, tenant uid
//!                                                (a claimed agent's dirs: its own uid)
//! <data-dir>/pool/<slot>/{workspace,run}/        a warm-pool sandbox's dirs until claimed,
//!                                                0700, the slot's uid
//! ```
//!
//! The server runs as root and the workspace's contents belong to the tenant, so nothing here
//! follows a symlink inside a workspace: dirs are checked with `symlink_metadata`, ownership is
//! changed with `lchown`, and seed files are created with `O_EXCL` and `fchown`ed by handle.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clawpen_core::ids::{AgentId, TenantId};

#[derive(Debug, Clone)]
pub struct Layout {
    pub data_dir: PathBuf,
}

/// Longest path a Unix socket may have (sun_path holds 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

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
    pub fn agent_dir(&self, tenant: &TenantId, agent: &AgentId) -> PathBuf {
        self.tenant_dir(tenant).join("agents").join(agent.as_str())
    }
    pub fn workspace_dir(&self, tenant: &TenantId, agent: &AgentId) -> PathBuf {
        self.agent_dir(tenant, agent).join("workspace")
    }
    pub fn run_root(&self) -> PathBuf {
        self.data_dir.join("run")
    }
    pub fn run_dir(&self, agent: &AgentId) -> PathBuf {
        self.run_root().join(agent.as_str())
    }
    pub fn agent_socket(&self, agent: &AgentId) -> PathBuf {
        self.run_dir(agent).join(clawpen_core::spec::AGENT_SOCKET)
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
    pub fn pool_workspace(&self, slot: u64) -> PathBuf {
        self.pool_slot_dir(slot).join("workspace")
    }
    pub fn pool_run_dir(&self, slot: u64) -> PathBuf {
        self.pool_slot_dir(slot).join("run")
    }

    /// Makes a warm-pool slot's empty workspace and run dir, owned by its uid, 0700.
    pub fn prepare_pool_slot(&self, slot: u64, uid: u32) -> std::io::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(self.pool_slot_dir(slot))?;
        ensure_owned_dir(&self.pool_workspace(slot), uid)?;
        ensure_owned_dir(&self.pool_run_dir(slot), uid)
    }

    pub fn remove_pool_slot(&self, slot: u64) -> std::io::Result<()> {
        remove_if_present(&self.pool_slot_dir(slot))
    }

    /// Removes every pool slot's dirs (at start-up, once no pool sandbox is left).
    pub fn clear_pool(&self) -> std::io::Result<()> {
        remove_if_present(&self.pool_root())
    }

    /// Moves a warm-pool slot's dirs into an agent's places, so the slot's running sandbox
    /// (whose bind mounts follow the directories) becomes the agent's, and seeds the workspace,
    /// owned by `uid`. The agent's own workspace must be pristine (nothing but the untouched
    /// seed): it is removed, so nothing of the tenant's is lost. Each step can be redone after a
    /// crash: a missing source means the move happened.
    pub fn claim_slot(&self, slot: u64, tenant: &TenantId, agent: &AgentId, uid: u32) -> std::io::Result<()> {
        let (ws, run) = (self.workspace_dir(tenant, agent), self.run_dir(agent));
        let (pool_ws, pool_run) = (self.pool_workspace(slot), self.pool_run_dir(slot));
        if std::fs::symlink_metadata(&pool_ws).is_ok() {
            if !self.reset_pristine(tenant, agent)? && std::fs::symlink_metadata(&ws).is_ok() {
                return Err(std::io::Error::other(format!("{} holds the tenant's files; a pool sandbox cannot take it over", ws.display())));
            }
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(self.agent_dir(tenant, agent))?;
            std::fs::rename(&pool_ws, &ws)?;
        }
        ensure_owned_dir(&ws, uid)?;
        seed_workspace(&ws, uid)?;
        if std::fs::symlink_metadata(&pool_run).is_ok() {
            remove_if_present(&run)?;
            std::fs::rename(&pool_run, &run)?;
        }
        ensure_owned_dir(&run, uid)?;
        self.remove_pool_slot(slot)
    }

    /// Removes an agent's workspace if it is pristine (see [`workspace_is_pristine`]), so that it
    /// can be made again for another uid; true when it was removed (or was missing).
    pub fn reset_pristine(&self, tenant: &TenantId, agent: &AgentId) -> std::io::Result<bool> {
        let ws = self.workspace_dir(tenant, agent);
        match std::fs::symlink_metadata(&ws) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        if !workspace_is_pristine(&ws)? {
            return Ok(false);
        }
        std::fs::remove_dir_all(&ws)?;
        Ok(true)
    }

    /// Writes the identity file of a claimed pool sandbox into the agent's run dir: root-owned,
    /// 0444, replaced atomically.
    pub fn write_identity(&self, tenant: &TenantId, agent: &AgentId) -> std::io::Result<()> {
        let run = self.run_dir(agent);
        let tmp = run.join(format!(".{}.tmp", clawpen_core::spec::IDENTITY_FILE));
        let _ = std::fs::remove_file(&tmp);
        let body = serde_json::json!({"agent_id": agent.as_str(), "tenant_id": tenant.as_str()}).to_string();
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o444).open(&tmp)?;
        std::os::unix::fs::fchown(&f, Some(0), Some(0)).or_else(|e| if e.kind() == std::io::ErrorKind::PermissionDenied { Ok(()) } else { Err(e) })?;
        // No fsync: after a crash the reconciler writes it again before the claim is trusted.
        f.write_all(body.as_bytes())?;
        std::fs::rename(&tmp, run.join(clawpen_core::spec::IDENTITY_FILE))
    }

    pub fn remove_identity(&self, agent: &AgentId) -> std::io::Result<()> {
        match std::fs::remove_file(self.run_dir(agent).join(clawpen_core::spec::IDENTITY_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Makes the data dir (0700) and checks that socket paths under it fit.
    pub fn init(&self) -> anyhow::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.data_dir)?;
        std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700))?;
        for d in [self.data_dir.join("tenants"), self.run_root()] {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&d)?;
        }
        let probe = self.agent_socket(&AgentId::new());
        anyhow::ensure!(
            probe.as_os_str().len() <= MAX_SOCKET_PATH,
            "the data dir {} is too long: agent socket paths under it would exceed {MAX_SOCKET_PATH} bytes; use a shorter --data-dir",
            self.data_dir.display()
        );
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

    /// Makes (or re-checks) an agent's workspace and run dir, owned by the tenant's uid, 0700,
    /// and puts in whichever OpenClaw workspace files are missing (a crash may have interrupted
    /// the first seeding).
    pub fn prepare_agent(&self, tenant: &TenantId, agent: &AgentId, uid: u32) -> std::io::Result<()> {
        let agent_dir = self.agent_dir(tenant, agent);
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&agent_dir)?;
        let ws = self.workspace_dir(tenant, agent);
        ensure_owned_dir(&ws, uid)?;
        seed_workspace(&ws, uid)?;
        ensure_owned_dir(&self.run_dir(agent), uid)?;
        Ok(())
    }

    /// Removes an agent's workspace and run dir.
    pub fn remove_agent(&self, tenant: &TenantId, agent: &AgentId) -> std::io::Result<()> {
        for d in [self.run_dir(agent), self.agent_dir(tenant, agent)] {
            match std::fs::remove_dir_all(&d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn remove_tenant(&self, tenant: &TenantId) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.tenant_dir(tenant)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn remove_if_present(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// True when a workspace holds nothing but the seed, untouched (an agent that never wrote
/// anything): replacing it with a fresh seed loses nothing.
pub fn workspace_is_pristine(ws: &Path) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(ws)? {
        let entry = entry?;
        let name = entry.file_name();
        let kind = entry.file_type()?;
        let seed = SEED.iter().find(|(n, _)| name == std::ffi::OsStr::new(n));
        let pristine = match (seed, name.to_str()) {
            (Some((_, text)), _) => kind.is_file() && std::fs::read(entry.path())? == text.as_bytes(),
            (None, Some("memory" | "sessions")) => kind.is_dir() && std::fs::read_dir(entry.path())?.next().is_none(),
            _ => false,
        };
        if !pristine {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Makes `dir` if missing; refuses a symlink; sets owner and mode 0700.
fn ensure_owned_dir(dir: &Path, uid: u32) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
            return Err(std::io::Error::other(format!("{} is not a plain directory", dir.display())));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new().mode(0o700).create(dir)?,
        Err(e) => return Err(e),
    }
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

const SOUL: &str = "# SOUL.md\n\nYou are a helpful, honest personal assistant. Be brief and kind.\n";
const USER: &str = "# USER.md\n\nWhat you know about the people you help goes here.\n";
const MEMORY: &str = "# MEMORY.md\n\nLong-term facts worth keeping.\n";
const SEED: [(&str, &str); 3] = [("SOUL.md", SOUL), ("USER.md", USER), ("MEMORY.md", MEMORY)];

/// Puts the OpenClaw workspace skeleton's missing pieces into a workspace. Whatever exists (a
/// file, a dir, or a symlink the tenant made) is left alone: `O_EXCL` never follows a symlink.
fn seed_workspace(ws: &Path, uid: u32) -> std::io::Result<()> {
    let absent_ok = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    };
    for (name, text) in SEED {
        absent_ok((|| {
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(ws.join(name))?;
            std::os::unix::fs::fchown(&f, Some(uid), Some(uid))?;
            f.write_all(text.as_bytes())
        })())?;
    }
    for sub in ["memory", "sessions"] {
        let d = ws.join(sub);
        absent_ok(std::fs::DirBuilder::new().mode(0o700).create(&d).and_then(|()| std::os::unix::fs::lchown(&d, Some(uid), Some(uid))))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn prepare_is_idempotent_and_owned() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().to_owned());
        layout.init().unwrap();
        let (t, a) = (TenantId::new(), AgentId::new());
        let uid = current_uid();
        layout.prepare_agent(&t, &a, uid).unwrap();
        let ws = layout.workspace_dir(&t, &a);
        std::fs::write(ws.join("MEMORY.md"), "kept").unwrap();
        std::fs::remove_file(ws.join("SOUL.md")).unwrap();
        // A symlink planted by the tenant is neither followed nor replaced.
        std::fs::remove_file(ws.join("USER.md")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", ws.join("USER.md")).unwrap();
        layout.prepare_agent(&t, &a, uid).unwrap();
        assert_eq!(std::fs::read_to_string(ws.join("MEMORY.md")).unwrap(), "kept");
        assert!(ws.join("SOUL.md").is_file(), "a missing seed file is put back");
        assert!(std::fs::symlink_metadata(ws.join("USER.md")).unwrap().file_type().is_symlink());
        let m = std::fs::metadata(layout.run_dir(&a)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (uid, 0o700));
        layout.remove_agent(&t, &a).unwrap();
        assert!(!layout.agent_dir(&t, &a).exists() && !layout.run_dir(&a).exists());
    }

    #[test]
    fn refuses_symlinked_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().to_owned());
        layout.init().unwrap();
        let (t, a) = (TenantId::new(), AgentId::new());
        std::fs::create_dir_all(layout.agent_dir(&t, &a)).unwrap();
        std::os::unix::fs::symlink("/etc", layout.workspace_dir(&t, &a)).unwrap();
        assert!(layout.prepare_agent(&t, &a, current_uid()).is_err());
    }

    #[test]
    fn a_pool_slot_becomes_a_pristine_agents_and_never_a_used_one() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().to_owned());
        layout.init().unwrap();
        let (t, a, uid) = (TenantId::new(), AgentId::new(), current_uid());
        layout.prepare_agent(&t, &a, uid).unwrap();
        let ws = layout.workspace_dir(&t, &a);
        assert!(workspace_is_pristine(&ws).unwrap());
        layout.prepare_pool_slot(3, uid).unwrap();
        std::fs::write(layout.pool_run_dir(3).join("agent.sock"), "").unwrap();
        layout.claim_slot(3, &t, &a, uid).unwrap();
        assert!(!layout.pool_slot_dir(3).exists(), "the slot's dirs moved");
        assert!(layout.run_dir(&a).join("agent.sock").exists(), "the slot's run dir is the agent's");
        assert!(workspace_is_pristine(&ws).unwrap(), "seeded, nothing else");
        layout.write_identity(&t, &a).unwrap();
        let id = std::fs::read_to_string(layout.run_dir(&a).join(clawpen_core::spec::IDENTITY_FILE)).unwrap();
        assert!(id.contains(a.as_str()) && id.contains(t.as_str()));
        let m = std::fs::metadata(layout.run_dir(&a).join(clawpen_core::spec::IDENTITY_FILE)).unwrap();
        assert_eq!(m.mode() & 0o777, 0o444);
        // Redoing a finished claim changes nothing.
        layout.claim_slot(3, &t, &a, uid).unwrap();
        assert!(layout.run_dir(&a).join("agent.sock").exists());

        // A workspace the agent wrote to is never taken over.
        std::fs::write(ws.join("sessions/main.jsonl"), "{}\n").unwrap();
        assert!(!workspace_is_pristine(&ws).unwrap());
        layout.prepare_pool_slot(4, uid).unwrap();
        assert!(layout.claim_slot(4, &t, &a, uid).is_err());
        assert!(ws.join("sessions/main.jsonl").exists());
        std::fs::write(ws.join("sessions/main.jsonl"), "").unwrap();
        std::fs::remove_file(ws.join("sessions/main.jsonl")).unwrap();
        std::fs::write(ws.join("MEMORY.md"), "changed").unwrap();
        assert!(!workspace_is_pristine(&ws).unwrap());
        layout.clear_pool().unwrap();
        assert!(!layout.pool_root().exists());
    }

    /// The current uid (tests run unprivileged or as root; either may chown to itself).
    fn current_uid() -> u32 {
        std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap()
    }
}
