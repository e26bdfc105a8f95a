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

/// Puts the OpenClaw workspace skeleton's missing pieces into a workspace. Whatever exists (a
/// file, a dir, or a symlink the tenant made) is left alone: `O_EXCL` never follows a symlink.
fn seed_workspace(ws: &Path, uid: u32) -> std::io::Result<()> {
    let absent_ok = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    };
    for (name, text) in [("SOUL.md", SOUL), ("USER.md", USER), ("MEMORY.md", MEMORY)] {
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

    /// The current uid (tests run unprivileged or as root; either may chown to itself).
    fn current_uid() -> u32 {
        std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap()
    }
}
