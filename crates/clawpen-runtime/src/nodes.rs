//! Several Docker Engines behind one [`Runtime`]. Every id it hands out is qualified with the node
//! that holds the sandbox (`node/container-id`), so later calls go to that node without a lookup;
//! a bare name or id is looked for on every node. A spec names its node in
//! [`SandboxSpec::node`] (empty: the first node). Events of all nodes arrive as one stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clawpen_core::spec::SandboxSpec;
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;

use crate::{EngineInfo, Result, Runtime, RuntimeError, RuntimeEvent, SandboxStatus};

/// One Docker Engine in the fleet.
#[derive(Clone)]
pub struct Node {
    pub name: String,
    pub runtime: Arc<dyn Runtime>,
}

/// The fleet's engines, routed by node name.
#[derive(Clone)]
pub struct Nodes {
    nodes: Vec<Node>,
}

/// How long a call to one node may take before that node counts as unreachable for it.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);

impl Nodes {
    pub fn new(nodes: Vec<Node>) -> Nodes {
        assert!(!nodes.is_empty(), "at least one node");
        Nodes { nodes }
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The first node: where a spec without a node goes.
    pub fn default_node(&self) -> &str {
        &self.nodes[0].name
    }

    /// `node/id` → (that node, `id`); a bare id → `None`.
    fn split<'a>(&self, id: &'a str) -> Option<(&Node, &'a str)> {
        let (node, rest) = id.split_once('/')?;
        self.node(node).map(|n| (n, rest))
    }

    fn qualify(node: &str, mut st: SandboxStatus) -> SandboxStatus {
        st.id = format!("{node}/{}", st.id);
        st.node = node.to_owned();
        st
    }

    /// Runs `f` on the node an id names, or on each node in turn until one knows the sandbox.
    async fn route<T, F, Fut>(&self, id: &str, f: F) -> Result<T>
    where
        F: Fn(Arc<dyn Runtime>, String) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        if let Some((node, rest)) = self.split(id) {
            return with_timeout(f(node.runtime.clone(), rest.to_owned())).await;
        }
        let mut unreachable = None;
        for n in &self.nodes {
            match with_timeout(f(n.runtime.clone(), id.to_owned())).await {
                Err(RuntimeError::NotFound) => continue,
                Err(e @ RuntimeError::Unreachable(_)) => unreachable = Some(e),
                other => return other,
            }
        }
        Err(unreachable.unwrap_or(RuntimeError::NotFound))
    }
}

async fn with_timeout<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(NODE_TIMEOUT, f).await.unwrap_or_else(|_| Err(RuntimeError::Unreachable(format!("no answer within {} s", NODE_TIMEOUT.as_secs()))))
}

#[async_trait]
impl Runtime for Nodes {
    async fn info(&self) -> Result<EngineInfo> {
        self.nodes[0].runtime.info().await
    }

    async fn runtimes(&self) -> Result<std::collections::BTreeMap<String, Vec<String>>> {
        self.nodes[0].runtime.runtimes().await
    }

    async fn create_and_start(&self, spec: &SandboxSpec) -> Result<String> {
        let name = if spec.node.is_empty() { self.default_node() } else { spec.node.as_str() };
        let node = self.node(name).ok_or_else(|| RuntimeError::Engine(format!("no node named {name:?} in the config")))?;
        let id = with_timeout(node.runtime.create_and_start(spec)).await?;
        Ok(format!("{}/{id}", node.name))
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.route(id, |rt, id| async move { rt.start(&id).await }).await
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.route(id, |rt, id| async move { rt.pause(&id).await }).await
    }

    async fn unpause(&self, id: &str) -> Result<()> {
        self.route(id, |rt, id| async move { rt.unpause(&id).await }).await
    }

    async fn stop(&self, id: &str, grace_secs: i64) -> Result<()> {
        self.route(id, |rt, id| async move { rt.stop(&id, grace_secs).await }).await
    }

    async fn remove(&self, id: &str) -> Result<()> {
        if let Some((node, rest)) = self.split(id) {
            return with_timeout(node.runtime.remove(rest)).await;
        }
        // A bare name: gone from every node that answers.
        for n in &self.nodes {
            match with_timeout(n.runtime.remove(id)).await {
                Ok(()) | Err(RuntimeError::Unreachable(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<SandboxStatus> {
        if let Some((node, rest)) = self.split(id) {
            return with_timeout(node.runtime.inspect(rest)).await.map(|s| Nodes::qualify(&node.name, s));
        }
        let mut unreachable = None;
        for n in &self.nodes {
            match with_timeout(n.runtime.inspect(id)).await {
                Ok(s) => return Ok(Nodes::qualify(&n.name, s)),
                Err(RuntimeError::NotFound) => continue,
                Err(e @ RuntimeError::Unreachable(_)) => unreachable = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(unreachable.unwrap_or(RuntimeError::NotFound))
    }

    /// The sandboxes of every node that answers; an unreachable node is skipped (the fleet
    /// watches node health separately). Fails only when no node answers.
    async fn list(&self, label: &str, value: &str) -> Result<Vec<SandboxStatus>> {
        let mut all = Vec::new();
        let mut answered = false;
        let mut last_err = None;
        for n in &self.nodes {
            match with_timeout(n.runtime.list(label, value)).await {
                Ok(list) => {
                    answered = true;
                    all.extend(list.into_iter().map(|s| Nodes::qualify(&n.name, s)));
                }
                Err(e) => last_err = Some(e),
            }
        }
        match (answered, last_err) {
            (false, Some(e)) => Err(e),
            _ => Ok(all),
        }
    }

    async fn rename(&self, id: &str, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.route(id, |rt, id| {
            let name = name.clone();
            async move { rt.rename(&id, &name).await }
        })
        .await
    }

    async fn logs(&self, id: &str, tail: usize) -> Result<Vec<String>> {
        self.route(id, |rt, id| async move { rt.logs(&id, tail).await }).await
    }

    fn events(&self, label: &str, value: &str) -> BoxStream<'static, Result<RuntimeEvent>> {
        let streams: Vec<_> = self
            .nodes
            .iter()
            .map(|n| {
                let node = n.name.clone();
                let ended = node.clone();
                n.runtime
                    .events(label, value)
                    .map(move |ev| {
                        ev.map(|mut e| {
                            e.container_id = format!("{node}/{}", e.container_id);
                            e
                        })
                    })
                    // A node's stream that ends is an error, so the watcher reconnects.
                    .chain(stream::once(async move { Err(RuntimeError::Unreachable(format!("the event stream of node {ended} ended"))) }))
                    .boxed()
            })
            .collect();
        stream::select_all(streams).boxed()
    }
}

/// Which node each sandbox of a listing is on, by agent label.
pub fn by_label<'a>(list: &'a [SandboxStatus], label: &str) -> HashMap<&'a str, Vec<&'a SandboxStatus>> {
    let mut m: HashMap<&str, Vec<&SandboxStatus>> = HashMap::new();
    for s in list {
        if let Some(v) = s.labels.get(label) {
            m.entry(v.as_str()).or_default().push(s);
        }
    }
    m
}
