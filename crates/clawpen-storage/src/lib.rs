//! Where tenants' data goes to outlive its host: an object store, a local folder by default
//! (under the data dir) or any S3-compatible service by URL (R2, MinIO, AWS), through the
//! `object_store` crate.
//!
//! Everything of a tenant is under `tenants/{tenant}/` (see [`tenant_prefix`]), so removing a
//! tenant everywhere is one prefix. [`snapshot`] keeps workspaces: content-addressed blobs and,
//! per snapshot, a manifest written last (a snapshot that has no manifest does not exist).
//! Credentials come from the environment or a 0600 file, never from the store, and no error of
//! this crate carries them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

pub mod archive;
pub mod snapshot;

pub use snapshot::{Manifest, Progress, SnapshotStats};

/// Why storage failed. Messages name the object and what to do, never a credential.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage is not configured right: {0}")]
    Config(String),
    #[error("{0} is not in storage")]
    NotFound(String),
    #[error("storage: {0}")]
    Backend(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StorageError>;

fn backend(e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { path, .. } => StorageError::NotFound(path),
        // object_store's messages name the bucket and key, never a credential.
        other => StorageError::Backend(other.to_string()),
    }
}

/// The prefix of everything of a tenant.
pub fn tenant_prefix(tenant: &str) -> String {
    format!("tenants/{tenant}")
}

/// The prefix of an agent's snapshots and blobs.
pub fn agent_prefix(tenant: &str, agent: &str) -> String {
    format!("tenants/{tenant}/agents/{agent}")
}

/// An object store and what it is (for messages: the URL without credentials).
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    describe: String,
    /// The folder, for a local store: its emptied dirs are removed too.
    local_root: Option<PathBuf>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("at", &self.describe).finish()
    }
}

/// S3 credentials read from a file: `access_key_id = "…"` and `secret_access_key = "…"` lines
/// (TOML), optionally `session_token`.
#[derive(serde::Deserialize)]
struct CredentialsFile {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    session_token: Option<String>,
}

impl Storage {
    /// A local folder (made 0700 if missing).
    pub fn local(dir: &Path) -> Result<Storage> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(backend)?;
        Ok(Storage { store: Arc::new(store), describe: format!("the folder {}", dir.display()), local_root: Some(dir.to_owned()) })
    }

    /// Opens storage by URL: empty or `local` is the folder `default_dir`; `file:///abs/dir` a
    /// folder; `s3://bucket[/prefix]` an S3-compatible service, with query options `endpoint`
    /// (e.g. `https://<account>.r2.cloudflarestorage.com`, or `http://127.0.0.1:9000` for a
    /// local MinIO), `region` (default `auto`) and `allow_http=true` for plain HTTP. The
    /// credentials are `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` from the environment, or
    /// `credentials_file` (which must be 0600 or stricter).
    pub fn open(url: &str, default_dir: &Path, credentials_file: Option<&Path>) -> Result<Storage> {
        let url = url.trim();
        if url.is_empty() || url == "local" {
            return Storage::local(default_dir);
        }
        let parsed = url::Url::parse(url).map_err(|e| StorageError::Config(format!("storage.url {url:?} is not a URL ({e}); use local, file:///dir or s3://bucket/prefix?endpoint=…")))?;
        match parsed.scheme() {
            "file" => {
                let dir = PathBuf::from(parsed.path());
                if !dir.is_absolute() || parsed.path().is_empty() {
                    return Err(StorageError::Config(format!("storage.url {url:?}: a file URL needs an absolute path, like file:///var/lib/clawpen-storage")));
                }
                Storage::local(&dir)
            }
            "s3" => Storage::s3(&parsed, credentials_file),
            other => Err(StorageError::Config(format!("storage.url: the scheme {other:?} is not supported; use local, file:///dir or s3://bucket/prefix"))),
        }
    }

    fn s3(url: &url::Url, credentials_file: Option<&Path>) -> Result<Storage> {
        let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| StorageError::Config("storage.url: s3:// needs a bucket, like s3://clawpen-backups".into()))?.to_owned();
        let prefix = url.path().trim_matches('/').to_owned();
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(&bucket).with_region("auto");
        let mut endpoint = None;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "endpoint" => {
                    endpoint = Some(v.to_string());
                    b = b.with_endpoint(v.to_string());
                }
                "region" => b = b.with_region(v.to_string()),
                "allow_http" => b = b.with_allow_http(v == "true"),
                other => return Err(StorageError::Config(format!("storage.url: unknown option {other:?} (endpoint, region and allow_http are known)"))),
            }
        }
        if let Some(file) = credentials_file {
            let c = read_credentials(file)?;
            b = b.with_access_key_id(c.access_key_id).with_secret_access_key(c.secret_access_key);
            if let Some(t) = c.session_token {
                b = b.with_token(t);
            }
        } else if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            return Err(StorageError::Config("S3 storage needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or storage.credentials_file (a 0600 file)".into()));
        }
        let store = b.build().map_err(|e| StorageError::Config(format!("S3 storage: {e}")))?;
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() { Arc::new(store) } else { Arc::new(object_store::prefix::PrefixStore::new(store, prefix.as_str())) };
        let at = endpoint.map(|e| format!(" at {e}")).unwrap_or_default();
        Ok(Storage { store, describe: format!("s3://{bucket}/{prefix}{at}"), local_root: None })
    }

    /// What this storage is, for messages (no credentials).
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Writes `key` whole: it appears with all its bytes or not at all.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.store.put(&Key::from(key), PutPayload::from_bytes(bytes)).await.map_err(backend)?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes> {
        self.store.get(&Key::from(key)).await.map_err(backend)?.bytes().await.map_err(backend)
    }

    /// True when `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(&Key::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(backend(e)),
        }
    }

    /// Every key under `prefix` (a folder-like prefix: `a/b` lists `a/b/…`), with its size.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let p = Key::from(prefix);
        let metas: Vec<_> = self.store.list(Some(&p)).try_collect().await.map_err(backend)?;
        let mut out: Vec<(String, u64)> = metas.into_iter().map(|m| (m.location.to_string(), m.size)).collect();
        out.sort();
        Ok(out)
    }

    /// Removes `key`; missing is fine.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&Key::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    /// Removes everything under `prefix`; returns how many objects went.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let keys = self.list(prefix).await?;
        for (k, _) in &keys {
            self.delete(k).await?;
        }
        // A folder keeps the dirs its objects were in: they name the tenant, so they go too.
        if let Some(root) = &self.local_root {
            let dir = root.join(Key::from(prefix).as_ref());
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(keys.len() as u64)
    }
}

fn read_credentials(file: &Path) -> Result<CredentialsFile> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).map_err(|e| StorageError::Config(format!("storage.credentials_file {}: {e}", file.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(StorageError::Config(format!("storage.credentials_file {} can be read by others; chmod 600 it", file.display())));
    }
    let text = std::fs::read_to_string(file)?;
    // A parse error could quote a line of the file, the secret's: say only what was expected.
    toml::from_str(&text).map_err(|_| StorageError::Config(format!("storage.credentials_file {}: expected access_key_id = \"…\" and secret_access_key = \"…\" lines", file.display())))
}

#[cfg(test)]
mod tests;
