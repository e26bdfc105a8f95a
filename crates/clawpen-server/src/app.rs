//! `App`: everything a request handler or the reconciler needs, shared behind an `Arc`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use clawpen_core::ids::AgentId;
use clawpen_runtime::Runtime;
use clawpen_store::Store;

use crate::config::Config;
use crate::layout::Layout;

#[derive(Clone)]
pub struct App(pub Arc<AppInner>);

pub struct AppInner {
    pub store: Store,
    pub runtime: Arc<dyn Runtime>,
    pub config: Config,
    pub layout: Layout,
    /// This installation's id, on every container label.
    pub instance: String,
    /// Tag of the sandbox image agents run.
    pub image: String,
    /// SHA-256 (hex) of the admin token; the token itself is only in its 0600 file.
    pub admin_token_sha256: String,
    /// One lock per agent so start, stop and delete of one agent never interleave.
    agent_locks: Mutex<HashMap<AgentId, Arc<tokio::sync::Mutex<()>>>>,
    /// Set once the start-up reconciliation is done; `/readyz` waits for it.
    reconciled: AtomicBool,
}

impl std::ops::Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl App {
    pub fn new(
        store: Store,
        runtime: Arc<dyn Runtime>,
        config: Config,
        layout: Layout,
        instance: String,
        image: String,
        admin_token_sha256: String,
    ) -> App {
        App(Arc::new(AppInner {
            store,
            runtime,
            config,
            layout,
            instance,
            image,
            admin_token_sha256,
            agent_locks: Mutex::new(HashMap::new()),
            reconciled: AtomicBool::new(false),
        }))
    }

    /// Takes the agent's lifecycle lock. Locks of deleted agents are dropped when unused.
    pub async fn lock_agent(&self, id: &AgentId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.agent_locks.lock().expect("agent lock map");
            map.retain(|_, l| Arc::strong_count(l) > 1 || l.try_lock().is_err());
            map.entry(id.clone()).or_default().clone()
        };
        lock.lock_owned().await
    }

    pub fn is_reconciled(&self) -> bool {
        self.reconciled.load(Ordering::Acquire)
    }

    pub fn mark_reconciled(&self) {
        self.reconciled.store(true, Ordering::Release);
    }
}
