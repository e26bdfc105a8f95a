#![doc = include_str!("../README.md")]
//!
//! # Layout
//! - [`config`]: the configuration file and its defaults (plans live here).
//! - [`layout`]: paths under the data dir, and safe creation of a tenant's dirs.
//! - [`app`]: [`app::App`], the state shared by handlers and background tasks.
//! - [`fleet`]: agent lifecycle, start-up reconciliation, runtime events.
//! - [`pool`]: the warm pool: sandboxes made ahead of agents, claimed at an agent's first start.
//! - [`metrics`]: `GET /metrics` (Prometheus text): starts warm and cold, the pool, memory.
//! - [`delivery`]: [`App::deliver_message`], the one path from any door to an agent.
//! - [`channels`]: doors other than the API (Telegram).
//! - [`api`]: the REST API under `/api/v1`, `/api/openapi.json`, `/healthz`, `/readyz`.
//! - [`error`]: the error policy and the JSON error body.

pub mod api;
pub mod app;
pub mod backup;
pub mod byok;
pub mod channels;
pub mod config;
pub mod console;
pub mod control;
pub mod delivery;
pub mod error;
pub mod fleet;
pub mod gateway;
pub mod inactive;
pub mod integrations;
pub mod layout;
pub mod metrics;
pub mod nodes;
pub mod persona;
pub mod pool;
pub mod ratelimit;
pub mod schedules;
pub mod supervisor;
pub mod transfer;
pub mod uid_range;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clawpen_runtime::Runtime;
use clawpen_store::Store;
use rand::RngCore;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::info;

pub use app::App;
pub use config::Config;
pub use layout::Layout;

/// Prefix of the admin token.
pub const ADMIN_TOKEN_PREFIX: &str = "cpa_";

/// Reads the admin token file, creating it (mode 0600) with a fresh token when missing.
/// Returns the token's SHA-256 and whether it was created now.
pub fn ensure_admin_token(path: &Path) -> anyhow::Result<(String, bool)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(t) => Ok((clawpen_store::token_sha256(t.trim()), false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut secret);
            let token = format!("{ADMIN_TOKEN_PREFIX}{}", hex::encode(secret));
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(token.as_bytes())?;
            f.sync_all()?;
            Ok((clawpen_store::token_sha256(&token), true))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Opens everything an `App` needs from a data dir: layout, store (the SQLite file in the data
/// dir, or `database_url`), admin token, runtime, meter.
pub async fn open(data_dir: &Path, database_url: Option<&str>, mut config: Config, image: String) -> anyhow::Result<App> {
    let layout = Layout::new(data_dir.to_owned());
    layout.init().with_context(|| format!("preparing the data dir {}", data_dir.display()))?;
    let store = match database_url {
        // The URL may hold a password: it is never printed.
        Some(url) => Store::connect(url).await.context("opening the store at the database URL")?,
        None => Store::open_sqlite(&layout.db_path()).await.context("opening the store")?,
    };
    let (admin_sha, created) = ensure_admin_token(&layout.admin_token_path())?;
    if created {
        info!(path = %layout.admin_token_path().display(), "created the admin token (mode 0600)");
    }
    let keys = open_keyring(&layout)?;
    let (signing, created) = clawpen_vault::connect::load_signing_keys(&layout.signing_key_path())?;
    if created {
        info!(path = %layout.signing_key_path().display(), "created the connect-URL signing key (mode 0600)");
    }
    let instance = store.instance_id().await?;
    config.sandbox.uid_base = uid_range::resolve(&store, config.sandbox.uid_base).await?;
    for n in &config.nodes {
        if let Some(d) = &n.data_dir {
            Layout::new(d.clone()).init().with_context(|| format!("preparing node {}'s data dir {}", n.name, d.display()))?;
        }
    }
    let nodes = nodes::connect(&config).await?;
    for n in nodes.0.names() {
        if let Some(node) = nodes.0.node(&n) {
            if let Err(e) = ensure_image_on(&node.runtime, &image).await {
                tracing::warn!(node = %n, error = %e, "cannot put the sandbox image on the node yet");
            }
        }
    }
    check_runtimes(&nodes.0, &config).await?;
    let meter = clawpen_meter::Meter::new(store.clone(), config.meter.clone(), config.plans.clone(), config.default_plan.clone())
        .map_err(|e| anyhow::anyhow!("meter configuration: {e}"))?;
    // The image built from this executable gets a host copy of it bound over its own (shared
    // pages); a configured image runs as it is.
    let agent_exe = match &config.sandbox.image {
        None => Some(layout.install_agent_exe(&image).context("copying the agent executable into the data dir")?),
        Some(_) => None,
    };
    let vault = clawpen_vault::Vault::new(keys);
    meter.set_tenant_keys(Arc::new(byok::StoreKeys { store: store.clone(), vault: vault.clone() }));
    let broker = clawpen_broker::Broker::new(store.clone(), vault.clone(), config.broker.clone()).map_err(|e| anyhow::anyhow!("integrations ([broker]) configuration: {e}"))?;
    let storage = clawpen_storage::Storage::open(&config.storage.url, &layout.storage_dir(), config.storage.credentials_file.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    info!(storage = storage.describe(), "backups go to storage");
    let app = App::new(store, nodes, config, layout, instance, image, admin_sha, Arc::new(meter), vault, clawpen_vault::connect::Signer::new(signing), Arc::new(broker), storage)
        .with_agent_exe(agent_exe);
    if app.telegram.load_shared_bot()? {
        info!("telegram: the shared bot's token is loaded");
    }
    Ok(app)
}

/// Refuses a config whose plans name a sandbox runtime a node's daemon lacks, or has registered
/// without the arguments the sandbox contract needs, saying how to register it. A node that
/// does not answer now is checked by `clawpen doctor`, not here.
async fn check_runtimes(nodes: &clawpen_runtime::nodes::Nodes, config: &Config) -> anyhow::Result<()> {
    let mut wanted: std::collections::BTreeMap<clawpen_core::plan::SandboxRuntime, Vec<&str>> = Default::default();
    for (name, p) in &config.plans {
        wanted.entry(p.runtime).or_default().push(name);
    }
    if wanted.keys().all(|r| r.is_runc()) {
        return Ok(());
    }
    for n in nodes.names() {
        let Some(node) = nodes.node(&n) else { continue };
        let registered = match tokio::time::timeout(std::time::Duration::from_secs(5), node.runtime.runtimes()).await {
            Ok(Ok(r)) => r,
            _ => {
                tracing::warn!(node = %n, "cannot ask the node which sandbox runtimes it has; `clawpen doctor` checks them");
                continue;
            }
        };
        for (rt, plans) in &wanted {
            if let Some(problem) = clawpen_runtime::tiers::problem(&registered, *rt) {
                anyhow::bail!("node {n}: {problem}, and plan {} runs its sandboxes under {rt}. To fix it: {}", plans.join(", "), clawpen_runtime::tiers::advice(*rt));
            }
        }
    }
    Ok(())
}

/// Makes sure a node has the sandbox image: built there from this executable when missing (a
/// configured image is the operator's to provide). Images are built locally, so a new node
/// needs no registry.
pub async fn ensure_image_on(rt: &Arc<dyn Runtime>, image: &str) -> anyhow::Result<()> {
    let Some(docker) = rt.as_docker() else { return Ok(()) };
    if clawpen_runtime::image::image_present(docker, image).await? {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let expected = clawpen_runtime::image::tag_for_digest(&clawpen_runtime::image::file_sha256(&exe)?);
    anyhow::ensure!(expected == image, "the node lacks the configured image {image}; load it there");
    info!(image, "building the sandbox image on a node");
    clawpen_runtime::image::build(docker, &exe, |_| {}).await?;
    Ok(())
}

/// The vault's master keys: `CLAWPEN_MASTER_KEY` if set, else `<data-dir>/master.key`, created
/// (mode 0600) on first start.
pub fn open_keyring(layout: &Layout) -> anyhow::Result<clawpen_vault::Keyring> {
    let env = std::env::var(clawpen_vault::MASTER_KEY_ENV).ok();
    let (keys, created) = clawpen_vault::Keyring::load(env.as_deref(), &layout.master_key_path())?;
    if created {
        info!(path = %layout.master_key_path().display(), "created the vault's master key (mode 0600); keep a copy safe");
    }
    Ok(keys)
}

/// Serves the API on `listener` until `shutdown` completes. Reconciles store and runtime first
/// (in the background; `/readyz` answers 503 until it is done) and follows runtime events.
pub async fn run(app: App, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let events = tokio::spawn(app.clone().watch_events());
    let _events_guard = AbortOnDrop(events);
    let reconciler = app.clone();
    let reconcile = tokio::spawn(async move {
        if let Err(e) = reconciler.reconcile().await {
            tracing::error!(error = %e, "start-up reconciliation failed; /readyz stays 503");
        }
    });
    let _reconcile_guard = AbortOnDrop(reconcile);
    let _supervisor_guard = AbortOnDrop(tokio::spawn(app.clone().run_supervisor()));
    let _nodes_guard = AbortOnDrop(tokio::spawn(app.clone().run_node_watch()));
    let _pool_guard = AbortOnDrop(tokio::spawn(app.clone().run_pool()));
    let _scheduler_guard = AbortOnDrop(tokio::spawn(app.clone().run_scheduler()));
    let _sweeper_guard = AbortOnDrop(tokio::spawn(app.meter.clone().run_sweeper()));
    let _flusher_guard = AbortOnDrop(tokio::spawn(app.meter.clone().run_flusher()));
    let _telegram_guard = AbortOnDrop(tokio::spawn(channels::telegram::Telegram::run(app.clone(), listener.local_addr()?)));
    info!(addr = %listener.local_addr()?, instance = %app.instance, image = %app.image, "clawpen serving");
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, api::router(app.clone())).with_graceful_shutdown(shutdown).await?;
    app.telegram.stop_all();
    // Charge the calls already settled and release the leases before going.
    app.meter.quiesce(Duration::from_secs(5)).await;
    Ok(())
}

/// Aborts a background task when dropped, so an early return cannot leak it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
