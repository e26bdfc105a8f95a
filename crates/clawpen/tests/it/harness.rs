//! Test harness: a real `clawpen serve` process on a temp data dir, removed with everything it
//! made (containers found by this run's instance label) when the `TestServer` is dropped, even
//! when the test panicked.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clawpen_standin::{Standin, StandinConfig};
use serde_json::{json, Value};

pub const EXE: &str = env!("CARGO_BIN_EXE_clawpen");

/// Fails (never skips) when Docker is not reachable: every test here needs it.
pub fn require_docker() {
    let ok = Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "Docker Engine is not reachable: these tests need it (start Docker, or run `clawpen doctor`)");
}

/// Builds the sandbox image for this executable once per test binary.
pub fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        require_docker();
        let out = Command::new(EXE).args(["image", "build", "--quiet"]).output().expect("run clawpen image build");
        assert!(out.status.success(), "image build failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// The attack probe (`crates/clawpen-probe`), a test-only program that the production `clawpen`
/// does not contain: built once per test binary, in a target dir of its own (so this build never
/// waits on the one running the tests), static like the sandbox's executable.
pub fn probe_exe() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let target = Path::new(EXE).ancestors().nth(3).expect("target dir").join("probe");
        let out = Command::new(env!("CARGO"))
            .current_dir(&root)
            .args(["build", "--quiet", "-p", "clawpen-probe", "--message-format", "json"])
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("run cargo build -p clawpen-probe");
        assert!(out.status.success(), "building the probe failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| (v["target"]["name"] == "clawpen-probe").then(|| v["executable"].as_str().map(PathBuf::from)).flatten())
            .expect("cargo named the probe's executable")
    })
}

/// A copy of the sandbox image with the probe at `/probe`, made for one test and removed when
/// dropped. A plan that pins it runs a real sandbox (same spec, uid, mounts and limits as any
/// agent's) in which the probe can be run with `docker exec`.
pub struct ProbeImage(pub String);

impl ProbeImage {
    pub fn build() -> ProbeImage {
        let dir = tempfile::Builder::new().prefix("cpt-probe-").tempdir_in("/tmp").unwrap();
        std::fs::copy(probe_exe(), dir.path().join("probe")).unwrap();
        std::fs::write(dir.path().join("Dockerfile"), format!("FROM {}\nCOPY probe /probe\n", image())).unwrap();
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let tag = format!("clawpen-test-probe:{:x}{:x}", n, std::process::id());
        let out = Command::new("docker").env("DOCKER_BUILDKIT", "0").args(["build", "-q", "-t", &tag]).arg(dir.path()).output().expect("docker build");
        assert!(out.status.success(), "building the probe image: {}", String::from_utf8_lossy(&out.stderr));
        ProbeImage(tag)
    }
}

impl Drop for ProbeImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

pub const OPENAI_KEY_ENV: &str = "CLAWPEN_TEST_OPENAI_KEY";
pub const ANTHROPIC_KEY_ENV: &str = "CLAWPEN_TEST_ANTHROPIC_KEY";

/// A config whose meter reaches `standin` (OpenAI and Anthropic models, keys from the
/// environment), with `plan` lines under `[plans.free]` and `meter_extra` lines under `[meter]`.
/// Prices, micro-credits per million tokens: 1 per input token, 2 per output token, 0.5 per cache
/// read, 1.25 per cache write.
pub fn meter_config(standin: &Standin, plan: &str, meter_extra: &str) -> String {
    let base = standin.base_url();
    let max_agents = if plan.contains("max_agents") { "" } else { "max_agents = 20" };
    let default_model = if meter_extra.contains("default_model") { "" } else { "default_model = \"gpt-test\"" };
    let priced = |name: &str, upstream: &str, upstream_model: &str| {
        format!(
            "[meter.models.{name}]\nupstream = \"{upstream}\"\nupstream_model = \"{upstream_model}\"\n\
             input_per_mtok = 1000000\noutput_per_mtok = 2000000\ncache_read_per_mtok = 500000\ncache_write_per_mtok = 1250000\n"
        )
    };
    format!(
        r#"
[plans.free]
{max_agents}
{plan}

[plans.standard]
max_agents = 20
monthly_cap = 20000000
daily_cap = 2000000

[meter]
{default_model}
{meter_extra}

[meter.upstreams.oai]
provider = "openai"
base_url = "{base}/v1"
api_key_env = "{OPENAI_KEY_ENV}"

[meter.upstreams.ant]
provider = "anthropic"
base_url = "{base}/v1"
api_key_env = "{ANTHROPIC_KEY_ENV}"

[meter.upstreams.gem]
provider = "gemini"
base_url = "{base}/gemini/v1beta/openai"
api_key_env = "{OPENAI_KEY_ENV}"

[meter.upstreams.ds]
provider = "deepseek"
base_url = "{base}/deepseek/v1"
api_key_env = "{OPENAI_KEY_ENV}"

[meter.upstreams.xai]
provider = "xai"
base_url = "{base}/xai/v1"
api_key_env = "{OPENAI_KEY_ENV}"

{}
{}
{}
{}
{}
{}
{}
{}
{}
{}
{}
"#,
        priced("gpt-test", "oai", "gpt-test"),
        priced("gpt-cached", "oai", "gpt-cached"),
        priced("gpt-slow", "oai", "gpt-test-slow"),
        priced("claude-test", "ant", "claude-test"),
        priced("claude-cached", "ant", "claude-cached"),
        // The three OpenAI-compatible providers, each in its own usage dialect (see the
        // stand-in's `Dialect`): a plain model and one that thinks and reads from the cache.
        priced("gemini-lite", "gem", "gemini-test"),
        priced("gemini-think", "gem", "gemini-think-cached") + "reasoning = true\n",
        priced("deepseek-chat", "ds", "deepseek-chat-cached"),
        priced("deepseek-reasoner", "ds", "deepseek-reasoner-cached") + "reasoning = true\n",
        priced("grok-fast", "xai", "grok-test"),
        priced("grok-mini", "xai", "grok-reason-cached") + "reasoning = true\n",
    )
}

/// The cost the test prices give a call record, rounding each part up like the meter.
pub fn expected_cost(c: &Value) -> i64 {
    let up = |tokens: i64, per_mtok: i64| (tokens * per_mtok + 999_999) / 1_000_000;
    up(c["input_tokens"].as_i64().unwrap(), 1_000_000)
        + up(c["output_tokens"].as_i64().unwrap(), 2_000_000)
        + up(c["cache_read_tokens"].as_i64().unwrap(), 500_000)
        + up(c["cache_write_tokens"].as_i64().unwrap(), 1_250_000)
}

/// A real server whose meter reaches an in-process stand-in upstream (`standin`), so agents
/// answer with model replies: "stand-in reply to: <the message>".
pub struct TestServer {
    pub standin: Standin,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub admin: String,
    pub http: reqwest::Client,
    child: Option<Child>,
    config: Option<PathBuf>,
    /// Extra environment of the server process (upstream keys in meter tests).
    env: Vec<(String, String)>,
    /// The probe image every sandbox of this server runs, when it was started with one
    /// (removed after the sandboxes, when the server is dropped).
    probe_image: Option<ProbeImage>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with("", "", &[]).await
    }

    /// A server whose sandboxes (agents' and the warm pool's) all run the probe image: the
    /// sandbox image plus `/probe`, so that [`TestServer::probe`] can attack from inside any of
    /// them. `plan` and `extra` as for [`TestServer::start_full`].
    /// [`TestServer::start_with_probe`] with every plan's sandboxes behind `wall`.
    pub async fn start_with_probe_on(wall: Wall, plan: &str, extra: &str) -> TestServer {
        wall.require();
        TestServer::start_with_probe(&format!("{}{plan}", wall.plan_line()), extra).await
    }

    pub async fn start_with_probe(plan: &str, extra: &str) -> TestServer {
        let img = ProbeImage::build();
        let image_line = format!("image = \"{}\"", img.0);
        let extra = if extra.contains("[sandbox]") { extra.replacen("[sandbox]", &format!("[sandbox]\n{image_line}"), 1) } else { format!("{extra}\n[sandbox]\n{image_line}\n") };
        let mut s = TestServer::start_full(plan, "", &extra, &[]).await;
        s.probe_image = Some(img);
        s
    }

    /// Runs `/probe ARGS` inside the agent's sandbox with `docker exec` (same uid, cgroup,
    /// seccomp profile and capabilities as its agent): `(exit code, the JSON it printed)`.
    /// A `docker exec` whose sandbox dies under it (gVisor's, killed whole for memory) may never
    /// return: after 120 s it is killed and its code is -1.
    pub fn probe(&self, agent: &str, args: &[&str]) -> (i32, Value) {
        assert!(self.probe_image.is_some(), "start the server with TestServer::start_with_probe");
        let mut child = Command::new("docker")
            .args(["exec", &self.container(agent), "/probe"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout_pipe = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stdout_pipe, &mut buf);
            buf
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let code = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st.code().unwrap_or(-1);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break -1;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let out = reader.join().unwrap_or_default();
        let stdout = String::from_utf8_lossy(&out);
        let json = stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
        (code, json)
    }

    /// [`TestServer::probe`], running in the background; its output is read with
    /// `wait_with_output`.
    pub fn probe_async(&self, agent: &str, args: &[&str]) -> tokio::process::Child {
        assert!(self.probe_image.is_some(), "start the server with TestServer::start_with_probe");
        tokio::process::Command::new("docker")
            .args(["exec", &self.container(agent), "/probe"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// The server's peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("server running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap()
    }

    /// The server process's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Starts a server with `plan` lines under `[plans.free]`, `meter_extra` lines under
    /// `[meter]` (see [`meter_config`]) and extra environment.
    pub async fn start_with(plan: &str, meter_extra: &str, env: &[(&str, &str)]) -> TestServer {
        TestServer::start_full(plan, meter_extra, "", env).await
    }

    /// [`TestServer::start_with`], plus `extra` TOML appended to the config (e.g. a `[telegram]`
    /// table, whose `api_base` may be written `STANDIN`: the stand-in's base URL).
    pub async fn start_full(plan: &str, meter_extra: &str, extra: &str, env: &[(&str, &str)]) -> TestServer {
        clawpen_meter::tls::install_provider();
        image();
        let keys = StandinConfig::for_testing();
        let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        env.push((OPENAI_KEY_ENV.into(), keys.openai_key.clone()));
        env.push((ANTHROPIC_KEY_ENV.into(), keys.anthropic_key.clone()));
        let standin = Standin::start(keys).await.expect("start the stand-in upstream");
        // Short path: Unix socket paths under the data dir must stay under 108 bytes.
        let dir = tempfile::Builder::new().prefix("cpt-").tempdir_in("/tmp").unwrap();
        let config = dir.path().join("test-config.toml");
        let mut extra = extra.replace("STANDIN", &standin.base_url());
        // The warm pool is off unless a test turns it on: the other suites' assertions count
        // containers, and two idle sandboxes per server would only load the machine.
        if !extra.contains("warm_pool") {
            extra = if extra.contains("[fleet]") { extra.replacen("[fleet]", "[fleet]\nwarm_pool = 0", 1) } else { format!("{extra}\n[fleet]\nwarm_pool = 0\n") };
        }
        std::fs::write(&config, format!("{}\n{extra}\n", meter_config(&standin, plan, meter_extra))).unwrap();
        let config = Some(config);
        let mut s = TestServer { standin, dir, base: String::new(), admin: String::new(), http: reqwest::Client::new(), child: None, config, env, probe_image: None };
        s.spawn().await;
        s
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// (Re)starts the server process on the data dir and waits for `/readyz`.
    pub async fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.data_dir().join("server.addr"));
        let mut cmd = Command::new(EXE);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(self.data_dir());
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.data_dir().join("server.log")).unwrap();
        cmd.stdout(Stdio::null()).stderr(log).env("CLAWPEN_LOG", "info").envs(self.env.iter().cloned());
        self.child = Some(cmd.spawn().expect("spawn clawpen serve"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(self.data_dir().join("server.addr")) {
                if a.trim().parse::<std::net::SocketAddr>().is_ok() {
                    break a;
                }
            }
            assert!(Instant::now() < deadline, "server did not start; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        self.base = format!("http://{}", addr.trim());
        self.admin = std::fs::read_to_string(self.data_dir().join("admin.token")).unwrap().trim().to_owned();
        loop {
            let last = match self.http.get(self.url("/readyz")).timeout(Duration::from_secs(5)).send().await {
                Ok(r) if r.status() == 200 => break,
                Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => format!("{e:?}"),
            };
            let alive = self.child.as_mut().map(|c| c.try_wait().ok().flatten().map(|st| st.to_string()));
            assert!(Instant::now() < deadline, "server at {} not ready (last /readyz: {last}; exited: {alive:?}); log:\n{}", self.base, self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM and waits for the server to exit; true when it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return false };
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        c.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// SIGKILLs the server process (sandboxes keep running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("server.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// This installation's id, as the server logged it at start.
    pub fn instance(&self) -> String {
        instance_from_log(&self.log())
    }

    /// Containers made by this server (any state), as `(name, agent, state)`. A claimed
    /// warm-pool sandbox carries no agent label: its agent is read from its name; an unclaimed
    /// one has agent `""` (see [`TestServer::pool_containers`]).
    pub fn containers(&self) -> Vec<(String, String, String)> {
        let out = Command::new("docker")
            .args(["ps", "-a", "--filter", &format!("label=clawpen.instance={}", self.instance()), "--format", "{{.Names}}\t{{.Label \"clawpen.agent\"}}\t{{.State}}"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut p = l.split('\t').map(str::to_owned);
                let (name, label, state) = (p.next().unwrap_or_default(), p.next().unwrap_or_default(), p.next().unwrap_or_default());
                let agent = if label.is_empty() { name.rsplit('-').next().filter(|a| a.starts_with("ag_")).unwrap_or("").to_owned() } else { label };
                (name, agent, state)
            })
            .collect()
    }

    /// Unclaimed warm-pool sandboxes of this server (any state), by name.
    pub fn pool_containers(&self) -> Vec<String> {
        self.containers().into_iter().filter(|(name, agent, _)| agent.is_empty() && name.contains("-pool-")).map(|(n, _, _)| n).collect()
    }

    /// A metric's value from `GET /metrics` (`name` with its labels, e.g.
    /// `clawpen_agent_starts_total{kind="warm"}`).
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.http.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())).unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }

    /// Waits until `n` warm-pool sandboxes are ready; their container ids.
    pub async fn pool_ready(&self, n: u64) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.metric("clawpen_warm_pool_ready").await < n {
            assert!(Instant::now() < deadline, "the warm pool did not fill to {n}; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let out = Command::new("docker")
            .args(["ps", "-q", "--no-trunc", "--filter", &format!("label=clawpen.instance={}", self.instance()), "--filter", "label=clawpen.role=pool", "--filter", "name=-pool-"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let v = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")) };
        (status, v)
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, Some(token), None).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(token), Some(body)).await
    }

    /// The tenant's usage once every call is charged and nothing is held any more (the meter
    /// charges settled calls in batches and releases an idle lease shortly after).
    pub async fn settled_usage(&self, key: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (st, u) = self.get("/api/v1/usage", key).await;
            assert_eq!(st, 200, "{u}");
            if u["reserved"] == 0 {
                return u;
            }
            assert!(Instant::now() < deadline, "holds stay open: {u}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Creates a tenant and a key for it: `(tenant json, token)`.
    pub async fn tenant(&self, name: &str) -> (Value, String) {
        self.tenant_with(json!({"name": name})).await
    }

    /// [`TestServer::tenant`] on a named plan.
    pub async fn tenant_on(&self, name: &str, plan: &str) -> (Value, String) {
        self.tenant_with(json!({"name": name, "plan": plan})).await
    }

    async fn tenant_with(&self, body: Value) -> (Value, String) {
        let (s, t) = self.post("/api/v1/tenants", &self.admin.clone(), body).await;
        assert_eq!(s, 201, "{t}");
        let (s, k) = self.post(&format!("/api/v1/tenants/{}/keys", t["id"].as_str().unwrap()), &self.admin.clone(), json!({})).await;
        assert_eq!(s, 201, "{k}");
        (t, k["token"].as_str().unwrap().to_owned())
    }

    /// Creates an agent (started when `start`): its JSON.
    pub async fn agent(&self, token: &str, name: &str, start: bool) -> Value {
        let (s, a) = self.post("/api/v1/agents", token, json!({"name": name, "start": start})).await;
        assert_eq!(s, 201, "{a}\nlog:\n{}", self.log());
        a
    }

    /// Host path of an agent's workspace (on the agent's own filesystem; the tenant is not
    /// part of the path).
    pub fn workspace(&self, _tenant: &str, agent: &str) -> PathBuf {
        self.data_dir().join("agents").join(agent).join("workspace")
    }

    pub fn run_dir(&self, agent: &str) -> PathBuf {
        self.data_dir().join("agents").join(agent).join("run")
    }

    /// Container name of an agent's sandbox.
    pub fn container(&self, agent: &str) -> String {
        format!("clawpen-{}-{}", &self.instance()[..8], agent)
    }
}

fn instance_from_log(log: &str) -> String {
    // The server logs `instance=<id>` when it starts serving.
    let plain: String = strip_ansi(log);
    plain
        .split("instance=")
        .nth(1)
        .map(|rest| rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect())
        .expect("the server log names its instance")
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for n in chars.by_ref() {
                if n.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let instance = if self.base.is_empty() { None } else { Some(self.instance()) };
        self.kill();
        if let Some(instance) = instance.filter(|i| !i.is_empty()) {
            // A container create the killed server had under way finishes in the engine after
            // it died (the warm pool refills in the background): look twice more.
            for round in 0..3 {
                if round > 0 {
                    std::thread::sleep(Duration::from_millis(300));
                }
                let out = Command::new("docker").args(["ps", "-aq", "--filter", &format!("label=clawpen.instance={instance}")]).output();
                if let Ok(out) = out {
                    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect();
                    if !ids.is_empty() {
                        let _ = Command::new("docker").arg("rm").arg("-f").args(&ids).output();
                    }
                }
            }
        }
        // The agents' filesystems are mounted under the data dir: unmount them (their loop
        // devices go with them) before the temp dir is removed.
        unmount_under(self.data_dir());
    }
}

/// Lazily unmounts every mount at or below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let _ = clawpen_hostfs::volume::unmount_under(dir);
}

/// Runs one file of `tests/python` with pytest and `env`: its report (`-rP`: the summaries of
/// passing tests too). Fails with the report when pytest fails or skips anything.
pub async fn pytest(file: &str, env: &[(&str, &str)]) -> String {
    let path = format!("{}/../../tests/python/{file}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new("python3")
        .args(["-m", "pytest", "-q", "-rP", "-p", "no:cacheprovider", &path])
        .envs(env.iter().copied())
        .output()
        .await
        .expect("python3 must be installed (with `pip install -r tests/python/requirements.txt`)");
    let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{file} failed (it needs `pip install -r tests/python/requirements.txt`):\n{report}");
    assert!(report.contains(" passed") && !report.contains("skipped"), "{report}");
    report
}

/// One HTTP/1.1 request over a Unix socket (an agent's `control.sock`): `(status, body)`.
pub async fn uds_post(socket: &Path, path: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, bytes::Bytes) {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::post(path).header("host", "meter").header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = sender.send_request(req.body(http_body_util::Full::new(bytes::Bytes::from(body.to_string()))).unwrap()).await.unwrap();
    let status = res.status().as_u16();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

/// The wall around the sandboxes of a test's server: the suites that attack from inside a
/// sandbox run behind each (see [`both_walls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wall {
    Runc,
    Runsc,
}

impl Wall {
    /// The plan line that puts a plan's sandboxes behind this wall.
    pub fn plan_line(self) -> &'static str {
        match self {
            Wall::Runc => "",
            Wall::Runsc => "runtime = \"runsc\"\n",
        }
    }

    /// Fails, saying how to fix it, when the Docker daemon lacks the runtime or registered it
    /// without the sandbox contract's arguments.
    pub fn require(self) {
        if self == Wall::Runc {
            return;
        }
        let out = Command::new("docker").args(["info", "--format", "{{json .Runtimes}}"]).output().expect("run docker info");
        let runtimes: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let args: Vec<String> = runtimes["runsc"]["runtimeArgs"].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect()).unwrap_or_default();
        let contract = clawpen_runtime::tiers::required_args(clawpen_core::plan::SandboxRuntime::Runsc);
        assert!(
            runtimes.get("runsc").is_some() && contract.iter().all(|c| args.iter().any(|a| a == c)),
            "the gVisor tests need runsc registered with the Docker daemon (it has {runtimes}): {}",
            clawpen_runtime::tiers::advice(clawpen_core::plan::SandboxRuntime::Runsc)
        );
    }

    /// Whether the sandbox's kernel is gVisor's rather than the host's.
    pub fn is_gvisor(self) -> bool {
        self == Wall::Runsc
    }
}

/// The host's kernel as the probe's `identity` reports a sandbox's (the same self-check code).
pub fn host_kernel() -> String {
    clawpen_selfcheck::kernel().expect("uname answers")
}

/// Runs each named `async fn(Wall)` as two tests, `runc::NAME` and `runsc::NAME`: the same
/// attack behind each wall.
#[macro_export]
macro_rules! both_walls {
    ($($name:ident),* $(,)?) => {
        mod runc {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name($crate::harness::Wall::Runc).await
                }
            )*
        }
        mod runsc {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name($crate::harness::Wall::Runsc).await
                }
            )*
        }
    };
}
