//! The vault: tenant secrets (a Telegram bot token, OAuth tokens) sealed with AES-256-GCM.
//!
//! - **Bound to their row.** The associated data is the tenant id, the purpose and the record id,
//!   so a sealed value copied to another row, purpose or tenant does not open.
//! - **Versioned keys.** A sealed value reads `v<N>:<base64url(nonce ‖ ciphertext ‖ tag)>`; the
//!   keyring keeps every version it was given and seals with the newest, so `clawpen vault
//!   rotate` can add a key and re-seal at leisure while old values still open.
//! - **The master keys** come from `CLAWPEN_MASTER_KEY` (`N:hex,N:hex` or one bare hex key, which
//!   is version 1), else from a key file (`N hex` per line) that `clawpen up` creates with mode
//!   0600 and that is refused when group or others may read it.
//! - **Secrets never print.** [`Secret`] shows as `[redacted]` in `Debug` and `Display`, and
//!   errors name what failed, never a value or a key.

pub mod connect;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use zeroize::Zeroizing;

/// The environment variable that may hold the master keys.
pub const MASTER_KEY_ENV: &str = "CLAWPEN_MASTER_KEY";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("the sealed value is malformed")]
    Malformed,
    #[error("the sealed value needs master key version {0}, which this server does not have; restore it to the key file or {MASTER_KEY_ENV}")]
    UnknownKeyVersion(u32),
    #[error("the sealed value does not open: it was altered, or it belongs to another tenant, purpose or record")]
    Decrypt,
    #[error("master keys: {0}")]
    Keys(String),
}

/// A value that must not be printed: `Debug` and `Display` show `[redacted]`, and it is wiped
/// from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T: zeroize::Zeroize>(Zeroizing<T>);

impl<T: zeroize::Zeroize> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(Zeroizing::new(value))
    }

    /// The value itself; keep it out of logs and error messages.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: zeroize::Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T: zeroize::Zeroize> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a sealed value belongs: it opens only for the same three.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub tenant: &'a str,
    pub purpose: &'a str,
    pub record: &'a str,
}

impl Binding<'_> {
    /// Each part length-prefixed, so no two different bindings give the same bytes.
    fn aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.tenant.len() + self.purpose.len() + self.record.len());
        for part in [self.tenant, self.purpose, self.record] {
            out.extend_from_slice(&(part.len() as u64).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out
    }
}

/// Master keys by version; the newest seals.
#[derive(Clone)]
pub struct Keyring {
    keys: BTreeMap<u32, Zeroizing<[u8; 32]>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring").field("versions", &self.keys.keys().collect::<Vec<_>>()).finish()
    }
}

fn parse_key(hex_key: &str) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let bytes = Zeroizing::new(hex::decode(hex_key.trim()).map_err(|_| VaultError::Keys("a key is not hex".into()))?);
    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| VaultError::Keys("a key must be 32 bytes (64 hex digits)".into()))?;
    Ok(Zeroizing::new(key))
}

impl Keyring {
    /// `N:hex,N:hex` (or one bare hex key, version 1), as in [`MASTER_KEY_ENV`].
    pub fn from_env_value(value: &str) -> Result<Keyring, VaultError> {
        let mut keys = BTreeMap::new();
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (version, key) = match part.split_once(':') {
                Some((v, k)) => (v.trim().parse::<u32>().map_err(|_| VaultError::Keys("a version is not a number".into()))?, k),
                None => (1, part),
            };
            if keys.insert(version, parse_key(key)?).is_some() {
                return Err(VaultError::Keys(format!("version {version} is given twice")));
            }
        }
        Keyring::from_keys(keys)
    }

    /// The key file's text: `N hex` per line, `#` comments.
    pub fn from_file_text(text: &str) -> Result<Keyring, VaultError> {
        let mut keys = BTreeMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (version, key) = line.split_once(char::is_whitespace).ok_or_else(|| VaultError::Keys("each line is `VERSION HEX`".into()))?;
            let version = version.parse::<u32>().map_err(|_| VaultError::Keys("a version is not a number".into()))?;
            if keys.insert(version, parse_key(key)?).is_some() {
                return Err(VaultError::Keys(format!("version {version} is given twice")));
            }
        }
        Keyring::from_keys(keys)
    }

    fn from_keys(keys: BTreeMap<u32, Zeroizing<[u8; 32]>>) -> Result<Keyring, VaultError> {
        if keys.is_empty() {
            return Err(VaultError::Keys("no key given".into()));
        }
        if keys.contains_key(&0) {
            return Err(VaultError::Keys("versions start at 1".into()));
        }
        Ok(Keyring { keys })
    }

    /// The environment's keys if [`MASTER_KEY_ENV`] is set, else the key file at `path`,
    /// created (mode 0600, one fresh key) when missing. Returns whether the file was created.
    pub fn load(env_value: Option<&str>, path: &Path) -> Result<(Keyring, bool), VaultError> {
        if let Some(v) = env_value {
            return Ok((Keyring::from_env_value(v).map_err(|e| VaultError::Keys(format!("{MASTER_KEY_ENV}: {e}")))?, false));
        }
        let io = |e: std::io::Error| VaultError::Keys(format!("{}: {e}", path.display()));
        match std::fs::metadata(path) {
            Ok(meta) => {
                use std::os::unix::fs::PermissionsExt;
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(VaultError::Keys(format!("{} may be read by others; run `chmod 600 {}`", path.display(), path.display())));
                }
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
                Ok((Keyring::from_file_text(&text).map_err(|e| VaultError::Keys(format!("{}: {e}", path.display())))?, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let ring = Keyring { keys: BTreeMap::from([(1, fresh_key())]) };
                ring.write_file(path).map_err(io)?;
                Ok((ring, true))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Writes every key to `path` (mode 0600), whole or not at all.
    pub fn write_file(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let partial = path.with_extension("partial");
        let _ = std::fs::remove_file(&partial);
        let mut text = Zeroizing::new(String::from("# clawpen master keys: VERSION HEX; the highest version seals. Keep a copy safe.\n"));
        for (version, key) in &self.keys {
            text.push_str(&format!("{version} {}\n", hex::encode(key.as_slice())));
        }
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&partial)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&partial, path)
    }

    /// Adds a fresh key as the newest version; returns it.
    pub fn add_version(&mut self) -> u32 {
        let version = self.current() + 1;
        self.keys.insert(version, fresh_key());
        version
    }

    /// The version that seals.
    pub fn current(&self) -> u32 {
        *self.keys.keys().next_back().expect("a keyring is never empty")
    }

    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }
}

fn fresh_key() -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(key.as_mut_slice());
    key
}

/// Seals and opens with a [`Keyring`].
#[derive(Debug, Clone)]
pub struct Vault {
    keys: Keyring,
}

impl Vault {
    pub fn new(keys: Keyring) -> Vault {
        Vault { keys }
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keys
    }

    /// Seals `plaintext` for `binding` with the newest key and a fresh random nonce.
    pub fn seal(&self, binding: Binding<'_>, plaintext: &[u8]) -> String {
        let version = self.keys.current();
        let cipher = Aes256Gcm::new_from_slice(self.keys.keys[&version].as_slice()).expect("32-byte key");
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let aad = binding.aad();
        let ct = cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad }).expect("AES-GCM encryption does not fail for this size");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        format!("v{version}:{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens a value sealed for exactly this `binding`.
    pub fn open(&self, binding: Binding<'_>, sealed: &str) -> Result<Secret<Vec<u8>>, VaultError> {
        let (version, body) = split(sealed)?;
        let key = self.keys.keys.get(&version).ok_or(VaultError::UnknownKeyVersion(version))?;
        let raw = URL_SAFE_NO_PAD.decode(body).map_err(|_| VaultError::Malformed)?;
        if raw.len() < 12 + 16 {
            return Err(VaultError::Malformed);
        }
        let (nonce, ct) = raw.split_at(12);
        let cipher = Aes256Gcm::new_from_slice(key.as_slice()).expect("32-byte key");
        let aad = binding.aad();
        let plain = cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad }).map_err(|_| VaultError::Decrypt)?;
        Ok(Secret::new(plain))
    }

    /// Opens and seals again with the newest key; `None` when it already uses it.
    pub fn reseal(&self, binding: Binding<'_>, sealed: &str) -> Result<Option<String>, VaultError> {
        let (version, _) = split(sealed)?;
        if version == self.keys.current() {
            return Ok(None);
        }
        let plain = self.open(binding, sealed)?;
        Ok(Some(self.seal(binding, plain.expose())))
    }
}

/// `v<N>:<body>` → (N, body).
fn split(sealed: &str) -> Result<(u32, &str), VaultError> {
    let (version, body) = sealed.strip_prefix('v').and_then(|s| s.split_once(':')).ok_or(VaultError::Malformed)?;
    let version = version.parse::<u32>().map_err(|_| VaultError::Malformed)?;
    Ok((version, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::from_env_value(&format!("1:{}", "11".repeat(32))).unwrap()
    }

    const A: Binding<'static> = Binding { tenant: "tn_a", purpose: "telegram_bot_token", record: "main" };

    #[test]
    fn seals_and_opens_with_a_fresh_nonce_each_time() {
        let v = Vault::new(ring());
        let s1 = v.seal(A, b"123456:bot-token");
        let s2 = v.seal(A, b"123456:bot-token");
        assert_ne!(s1, s2, "a fresh nonce per seal");
        assert!(s1.starts_with("v1:"));
        assert!(!s1.contains("bot-token"));
        assert_eq!(v.open(A, &s1).unwrap().expose(), b"123456:bot-token");
    }

    #[test]
    fn another_tenant_purpose_or_record_does_not_open() {
        let v = Vault::new(ring());
        let sealed = v.seal(A, b"secret");
        for other in [
            Binding { tenant: "tn_b", ..A },
            Binding { purpose: "oauth_google", ..A },
            Binding { record: "other", ..A },
            // Length-prefixed: moving bytes between the parts does not collide.
            Binding { tenant: "tn_at", purpose: "elegram_bot_token", record: "main" },
        ] {
            assert_eq!(v.open(other, &sealed).unwrap_err(), VaultError::Decrypt, "{other:?}");
        }
    }

    #[test]
    fn tampering_and_garbage_are_refused_without_a_panic() {
        let v = Vault::new(ring());
        let sealed = v.seal(A, b"secret");
        let mut bytes = sealed.clone().into_bytes();
        // A character in the middle (the last one may carry padding bits base64 refuses).
        let mid = bytes.len() / 2;
        bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
        assert_eq!(v.open(A, &String::from_utf8(bytes).unwrap()).unwrap_err(), VaultError::Decrypt);
        for bad in ["", "v1:", "v1:!!!", "vx:abc", "1:abc", "v1:AAAA", &sealed[1..]] {
            assert!(v.open(A, bad).is_err(), "{bad}");
        }
        assert_eq!(v.open(A, &sealed.replacen("v1:", "v9:", 1)).unwrap_err(), VaultError::UnknownKeyVersion(9));
    }

    #[test]
    fn rotation_seals_with_the_new_key_and_still_opens_the_old() {
        let mut keys = ring();
        let old = Vault::new(keys.clone()).seal(A, b"secret");
        assert_eq!(keys.add_version(), 2);
        let v = Vault::new(keys);
        assert_eq!(v.open(A, &old).unwrap().expose(), b"secret");
        let new = v.reseal(A, &old).unwrap().unwrap();
        assert!(new.starts_with("v2:"));
        assert_eq!(v.open(A, &new).unwrap().expose(), b"secret");
        assert_eq!(v.reseal(A, &new).unwrap(), None, "already on the newest key");
    }

    #[test]
    fn secrets_and_keyrings_print_redacted() {
        let s = Secret::new(String::from("hunter2"));
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        let keys = ring();
        assert!(!format!("{keys:?}").contains(&"11".repeat(32)));
        let e = Keyring::from_env_value("1:zz").unwrap_err().to_string();
        assert!(!e.contains("zz"), "{e}");
    }

    #[test]
    fn the_key_file_is_created_0600_and_refused_when_others_may_read_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let (keys, created) = Keyring::load(None, &path).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (again, created) = Keyring::load(None, &path).unwrap();
        assert!(!created);
        let sealed = Vault::new(keys).seal(A, b"x");
        assert_eq!(Vault::new(again).open(A, &sealed).unwrap().expose(), b"x", "the same key is read back");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Keyring::load(None, &path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        // The environment wins over the file.
        let (env, created) = Keyring::load(Some(&"22".repeat(32)), &path).unwrap();
        assert_eq!((env.versions(), created), (vec![1], false));
    }

    #[test]
    fn env_values_are_checked() {
        assert!(Keyring::from_env_value("").is_err());
        assert!(Keyring::from_env_value(&"11".repeat(31)).is_err(), "31 bytes");
        assert!(Keyring::from_env_value(&format!("0:{}", "11".repeat(32))).is_err(), "version 0");
        assert!(Keyring::from_env_value(&format!("1:{k},1:{k}", k = "11".repeat(32))).is_err(), "twice");
        let two = Keyring::from_env_value(&format!("1:{},2:{}", "11".repeat(32), "22".repeat(32))).unwrap();
        assert_eq!((two.versions(), two.current()), (vec![1, 2], 2));
    }
}
