//! `Runtime` on the Docker Engine. The only file that knows how a `SandboxSpec` becomes Docker
//! flags.

use std::collections::HashMap;

use async_trait::async_trait;
use bollard::container::{
    Config, CreateContainerOptions, ListContainersOptions, LogOutput, LogsOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use bollard::models::{
    ContainerStateStatusEnum, HostConfig, HostConfigLogConfig, Mount, ResourcesUlimits, MountBindOptions, MountBindOptionsPropagationEnum,
    MountTypeEnum, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::system::EventsOptions;
use bollard::Docker;
use clawpen_core::spec::{Network, SandboxSpec};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};

use crate::{EngineInfo, Result, Runtime, RuntimeError, RuntimeEvent, RuntimeEventKind, SandboxState, SandboxStatus};

/// A Docker Engine reached through bollard.
#[derive(Clone)]
pub struct DockerRuntime {
    /// The bollard client, its API version negotiated down to what the engine speaks.
    docker: Docker,
}

impl DockerRuntime {
    /// Connects to the local engine (`DOCKER_HOST` or `/var/run/docker.sock`) and negotiates the
    /// API version.
    pub async fn connect_local() -> Result<DockerRuntime> {
        let docker = Docker::connect_with_local_defaults().map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
        let docker = docker.negotiate_version().await.map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
        Ok(DockerRuntime { docker })
    }

    /// Connects to an engine on a Unix socket. The API version is negotiated when the engine
    /// answers; an engine that does not answer yet gets API 1.41 (what Docker 20.10 speaks) and
    /// is reported unreachable by its calls until it does.
    pub async fn connect_unix(path: &str) -> DockerRuntime {
        let docker = match Docker::connect_with_unix(path, 120, &bollard::ClientVersion { major_version: 1, minor_version: 41 }) {
            Ok(d) => d,
            Err(_) => Docker::connect_with_local_defaults().expect("a local client"),
        };
        let docker = match tokio::time::timeout(std::time::Duration::from_secs(3), docker.clone().negotiate_version()).await {
            Ok(Ok(d)) => d,
            _ => docker,
        };
        DockerRuntime { docker }
    }

    /// Connects to an engine over TCP with mutual TLS (`tcp://host:port`, the client's key and
    /// certificate, the CA that signed the engine's certificate). Like [`connect_unix`], an engine
    /// that does not answer yet gets API 1.41.
    ///
    /// [`connect_unix`]: DockerRuntime::connect_unix
    pub async fn connect_tls(addr: &str, key: &std::path::Path, cert: &std::path::Path, ca: &std::path::Path) -> Result<DockerRuntime> {
        let docker = Docker::connect_with_ssl(addr, key, cert, ca, 120, &bollard::ClientVersion { major_version: 1, minor_version: 41 })
            .map_err(|e| RuntimeError::Unreachable(format!("{addr}: {e}")))?;
        let docker = match tokio::time::timeout(std::time::Duration::from_secs(3), docker.clone().negotiate_version()).await {
            Ok(Ok(d)) => d,
            _ => docker,
        };
        Ok(DockerRuntime { docker })
    }

    /// The underlying client, for the image builder and for tests.
    pub fn client(&self) -> &Docker {
        &self.docker
    }
}

/// The Docker container config for a spec. Public so tests can check the translation.
pub fn container_config(spec: &SandboxSpec) -> Config<String> {
    let network_mode = match spec.network {
        Network::None => "none",
    };
    let mounts = spec
        .mounts
        .iter()
        .map(|m| Mount {
            target: Some(m.target.clone()),
            source: Some(m.host.display().to_string()),
            typ: Some(MountTypeEnum::BIND),
            read_only: Some(m.read_only),
            bind_options: Some(MountBindOptions {
                propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let host_config = HostConfig {
        mounts: Some(mounts),
        tmpfs: Some(spec.tmpfs.clone().into_iter().collect()),
        readonly_rootfs: Some(spec.read_only_root),
        cap_drop: Some(spec.cap_drop.clone()),
        cap_add: Some(vec![]),
        security_opt: Some(spec.security_opt.clone()),
        network_mode: Some(network_mode.to_owned()),
        init: Some(spec.init),
        memory: Some(spec.memory_bytes),
        memory_swap: Some(spec.memory_swap_bytes),
        nano_cpus: Some(spec.nano_cpus),
        pids_limit: Some(spec.pids_limit),
        runtime: Some(spec.runtime.name().to_owned()),
        ulimits: spec.nproc.map(|n| vec![ResourcesUlimits { name: Some("nproc".to_owned()), soft: Some(n), hard: Some(n) }]),
        privileged: Some(false),
        ipc_mode: Some("private".to_owned()),
        // The fleet decides about restarts, not the engine.
        restart_policy: Some(RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None }),
        // Bounded logs: a chatty agent cannot fill the node's disk.
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".to_owned()),
            config: Some(HashMap::from([
                ("max-size".to_owned(), "1m".to_owned()),
                ("max-file".to_owned(), "2".to_owned()),
            ])),
        }),
        ..Default::default()
    };
    Config {
        image: Some(spec.image.clone()),
        entrypoint: Some(vec![clawpen_core::spec::IMAGE_EXECUTABLE.to_owned()]),
        cmd: Some(spec.args.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        user: Some(format!("{}:{}", spec.uid, spec.gid)),
        hostname: Some(spec.hostname.clone()),
        working_dir: Some(clawpen_core::spec::WORKSPACE_MOUNT.to_owned()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        network_disabled: Some(true),
        host_config: Some(host_config),
        ..Default::default()
    }
}

fn state_of(s: Option<&str>) -> SandboxState {
    match s {
        Some("created") => SandboxState::Created,
        Some("running") => SandboxState::Running,
        Some("paused") => SandboxState::Paused,
        Some("exited") | Some("dead") => SandboxState::Exited,
        _ => SandboxState::Other,
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn info(&self) -> Result<EngineInfo> {
        let v = self.docker.version().await?;
        Ok(EngineInfo {
            version: v.version.unwrap_or_default(),
            api_version: self.docker.client_version().to_string(),
        })
    }

    async fn runtimes(&self) -> Result<std::collections::BTreeMap<String, Vec<String>>> {
        let info = self.docker.info().await?;
        Ok(info.runtimes.unwrap_or_default().into_iter().map(|(name, r)| (name, r.runtime_args.unwrap_or_default())).collect())
    }

    async fn create_and_start(&self, spec: &SandboxSpec) -> Result<String> {
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions { name: spec.name.clone(), platform: None }),
                container_config(spec),
            )
            .await
            .map_err(|e| match RuntimeError::from(e) {
                RuntimeError::NotFound => RuntimeError::ImageMissing(spec.image.clone()),
                other => other,
            })?;
        if let Err(e) = self.docker.start_container::<String>(&created.id, None).await {
            // A created-but-never-started sandbox is an orphan in waiting: take it away now.
            let _ = self.remove(&created.id).await;
            return Err(e.into());
        }
        Ok(created.id)
    }

    async fn start(&self, id: &str) -> Result<()> {
        match self.docker.start_container::<String>(id, None).await {
            // 304: already running.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            other => Ok(other?),
        }
    }

    async fn pause(&self, id: &str) -> Result<()> {
        Ok(self.docker.pause_container(id).await?)
    }

    async fn unpause(&self, id: &str) -> Result<()> {
        match self.docker.unpause_container(id).await {
            // 409: not paused.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, message }) if message.contains("not paused") => Ok(()),
            other => Ok(other?),
        }
    }

    async fn stop(&self, id: &str, grace_secs: i64) -> Result<()> {
        // A frozen sandbox cannot take its SIGTERM: thaw it first.
        if let Ok(st) = self.inspect(id).await {
            if st.state == SandboxState::Paused {
                self.unpause(id).await?;
            }
        }
        match self.docker.stop_container(id, Some(StopContainerOptions { t: grace_secs })).await {
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            other => Ok(other?),
        }
    }

    async fn remove(&self, id_or_name: &str) -> Result<()> {
        let opts = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        match self.docker.remove_container(id_or_name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) => match RuntimeError::from(e) {
                RuntimeError::NotFound => Ok(()),
                // 409: removal already in progress (e.g. by a server that died meanwhile):
                // wait until it is gone, so callers see the same end state either way.
                RuntimeError::Engine(m) if m.starts_with("409") && m.contains("already in progress") => {
                    for _ in 0..200 {
                        match self.docker.inspect_container(id_or_name, None).await {
                            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return Ok(()),
                            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                        }
                    }
                    Err(RuntimeError::Engine(format!("{id_or_name} is still being removed after 10 s")))
                }
                other => Err(other),
            },
        }
    }

    async fn rename(&self, id: &str, name: &str) -> Result<()> {
        Ok(self.docker.rename_container(id, bollard::container::RenameContainerOptions { name }).await?)
    }

    async fn inspect(&self, id_or_name: &str) -> Result<SandboxStatus> {
        let c = self.docker.inspect_container(id_or_name, None).await?;
        let state = c.state.unwrap_or_default();
        let status = state.status.map(|s| match s {
            ContainerStateStatusEnum::CREATED => "created",
            ContainerStateStatusEnum::RUNNING => "running",
            ContainerStateStatusEnum::PAUSED => "paused",
            ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD => "exited",
            _ => "other",
        });
        Ok(SandboxStatus {
            id: c.id.unwrap_or_default(),
            node: String::new(),
            name: c.name.unwrap_or_default().trim_start_matches('/').to_owned(),
            labels: c.config.and_then(|c| c.labels).unwrap_or_default(),
            state: state_of(status),
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
        })
    }

    async fn list(&self, label: &str, value: &str) -> Result<Vec<SandboxStatus>> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{label}={value}")])]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions { all: true, filters, ..Default::default() }))
            .await?;
        Ok(list
            .into_iter()
            .map(|c| SandboxStatus {
                id: c.id.unwrap_or_default(),
                node: String::new(),
                name: c.names.unwrap_or_default().first().map(|n| n.trim_start_matches('/').to_owned()).unwrap_or_default(),
                labels: c.labels.unwrap_or_default(),
                state: state_of(c.state.as_deref()),
                exit_code: None,
                oom_killed: false,
            })
            .collect())
    }

    async fn logs(&self, id: &str, tail: usize) -> Result<Vec<String>> {
        let opts = LogsOptions::<String> { stdout: true, stderr: true, tail: tail.to_string(), ..Default::default() };
        let chunks: Vec<LogOutput> = self.docker.logs(id, Some(opts)).try_collect().await?;
        let mut lines = Vec::new();
        for c in chunks {
            let stream = match c {
                LogOutput::StdErr { .. } => "stderr",
                _ => "stdout",
            };
            let text = String::from_utf8_lossy(&c.into_bytes()).into_owned();
            lines.extend(text.lines().map(|l| crate::sandbox_line(stream, l)));
        }
        let skip = lines.len().saturating_sub(tail);
        Ok(lines.split_off(skip))
    }

    fn as_docker(&self) -> Option<&DockerRuntime> {
        Some(self)
    }

    fn events(&self, label: &str, value: &str) -> BoxStream<'static, Result<RuntimeEvent>> {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("label".to_owned(), vec![format!("{label}={value}")]),
            ("event".to_owned(), vec!["start".to_owned(), "oom".to_owned(), "die".to_owned()]),
        ]);
        let docker = self.docker.clone();
        let stream = async_stream_events(docker, filters);
        stream.boxed()
    }
}

fn async_stream_events(
    docker: Docker,
    filters: HashMap<String, Vec<String>>,
) -> impl futures_util::Stream<Item = Result<RuntimeEvent>> + Send + 'static {
    docker
        .events(Some(EventsOptions::<String> { filters, ..Default::default() }))
        .map_err(RuntimeError::from)
        .try_filter_map(|ev| async move {
            let actor = ev.actor.unwrap_or_default();
            let labels = actor.attributes.unwrap_or_default();
            let kind = match ev.action.as_deref() {
                Some("start") => RuntimeEventKind::Started,
                Some("oom") => RuntimeEventKind::Oom,
                Some("die") => RuntimeEventKind::Died { exit_code: labels.get("exitCode").and_then(|c| c.parse().ok()) },
                _ => return Ok(None),
            };
            Ok(Some(RuntimeEvent { container_id: actor.id.unwrap_or_default(), labels, kind }))
        })
}

/// The `docker` CLI arguments (after `docker`) that run the same sandbox as [`container_config`]:
/// the baseline `clawpen bench` compares against, and a readable record of the flags.
pub fn docker_run_args(spec: &SandboxSpec) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), spec.name.clone()];
    let mut push = |k: &str, v: String| {
        a.push(k.to_owned());
        a.push(v);
    };
    push("--user", format!("{}:{}", spec.uid, spec.gid));
    push("--hostname", spec.hostname.clone());
    push("--workdir", clawpen_core::spec::WORKSPACE_MOUNT.to_owned());
    for c in &spec.cap_drop {
        push("--cap-drop", c.clone());
    }
    for s in &spec.security_opt {
        push("--security-opt", s.clone());
    }
    for (target, opts) in &spec.tmpfs {
        push("--tmpfs", format!("{target}:{opts}"));
    }
    push("--pids-limit", spec.pids_limit.to_string());
    push("--runtime", spec.runtime.name().to_owned());
    if let Some(n) = spec.nproc {
        push("--ulimit", format!("nproc={n}:{n}"));
    }
    push("--memory", format!("{}b", spec.memory_bytes));
    push("--memory-swap", format!("{}b", spec.memory_swap_bytes));
    push("--cpus", format!("{}", spec.nano_cpus as f64 / 1e9));
    push("--network", match spec.network { Network::None => "none".into() });
    push("--ipc", "private".into());
    push("--restart", "no".into());
    push("--log-opt", "max-size=1m".into());
    push("--log-opt", "max-file=2".into());
    for m in &spec.mounts {
        let ro = if m.read_only { ",readonly" } else { "" };
        push("--mount", format!("type=bind,source={},target={},bind-propagation=rprivate{ro}", m.host.display(), m.target));
    }
    for (k, v) in &spec.env {
        push("--env", format!("{k}={v}"));
    }
    for (k, v) in &spec.labels {
        push("--label", format!("{k}={v}"));
    }
    push("--entrypoint", clawpen_core::spec::IMAGE_EXECUTABLE.to_owned());
    if spec.read_only_root {
        a.push("--read-only".into());
    }
    if spec.init {
        a.push("--init".into());
    }
    a.push(spec.image.clone());
    a.extend(spec.args.iter().cloned());
    a
}
