//! `clawpen backup …`: workspaces and the store to storage. `agents`, `list` and `store` go
//! through the running server's admin API (its address and admin token are read from the data
//! dir); `restore-store` works on the data dir of a stopped server.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
pub struct BackupArgs {
    #[arg(long, global = true, env = "CLAWPEN_DATA_DIR", default_value = "./clawpen-data")]
    data_dir: PathBuf,
    /// Config file (default: <data-dir>/clawpen.toml when it exists); for `restore-store`.
    #[arg(long, global = true, env = "CLAWPEN_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: BackupCommand,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Every agent with its last backup.
    List,
    /// Backs up every agent's workspace now (or only those given with --agent).
    Agents {
        #[arg(long = "agent", value_name = "AGENT_ID")]
        agents: Vec<String>,
    },
    /// Copies the SQLite store to storage while the server runs.
    Store,
    /// Puts a copy of the store back (the newest, or --from KEY): the server must be stopped.
    /// The store it replaces is kept beside it as clawpen.db.before-restore-<ms>.
    RestoreStore {
        #[arg(long, value_name = "KEY")]
        from: Option<String>,
    },
}

pub(crate) struct Server {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Server {
    pub(crate) fn open(dir: &Path) -> anyhow::Result<Server> {
        let addr = std::fs::read_to_string(dir.join("server.addr")).with_context(|| format!("no server.addr in {}: is the server running with this --data-dir?", dir.display()))?;
        let token = std::fs::read_to_string(dir.join("admin.token")).context("reading the admin token (run as the server's user)")?;
        Ok(Server { http: reqwest::Client::new(), base: format!("http://{}/api/v1", addr.trim()), token: token.trim().to_owned() })
    }

    /// A request to `path` of the admin API, with the admin token.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }

    /// Sends `req`; a refusal is an error with the server's message.
    pub(crate) async fn send(req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let res = req.send().await.context("reaching the server")?;
        let status = res.status();
        if !status.is_success() {
            let body: serde_json::Value = res.json().await.unwrap_or_default();
            anyhow::bail!("{status}: {}", body["error"]["message"].as_str().unwrap_or("the server refused"));
        }
        Ok(res)
    }

    pub(crate) async fn call(&self, method: reqwest::Method, path: &str) -> anyhow::Result<serde_json::Value> {
        Server::send(self.request(method, path)).await?.json().await.context("reading the server's answer")
    }
}

pub async fn run(args: BackupArgs) -> anyhow::Result<()> {
    let dir = crate::absolute(&args.data_dir)?;
    match args.command {
        BackupCommand::List => {
            let list = Server::open(&dir)?.call(reqwest::Method::GET, "/backups").await?;
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        BackupCommand::Agents { agents } => {
            let server = Server::open(&dir)?;
            let ids: Vec<String> = if agents.is_empty() {
                let list = server.call(reqwest::Method::GET, "/backups").await?;
                list["agents"].as_array().into_iter().flatten().filter_map(|a| a["agent_id"].as_str().map(str::to_owned)).collect()
            } else {
                agents
            };
            let bar = ProgressBar::new(ids.len() as u64).with_style(ProgressStyle::with_template("{bar:30} {pos}/{len} agents {msg}").expect("template"));
            let mut failed = 0;
            for id in &ids {
                bar.set_message(id.clone());
                match server.call(reqwest::Method::POST, &format!("/backups/agents/{id}")).await {
                    Ok(v) => bar.suspend(|| println!("{id}: snapshot {} ({} files, {} bytes sent{})", v["snapshot_id"].as_str().unwrap_or("?"), v["files"], v["bytes_sent"], if v["unchanged"] == true { ", unchanged" } else { "" })),
                    Err(e) => {
                        failed += 1;
                        bar.suspend(|| eprintln!("{id}: {e}"));
                    }
                }
                bar.inc(1);
            }
            bar.finish_with_message("done");
            anyhow::ensure!(failed == 0, "{failed} of {} backups failed (see above); run again once the cause is fixed", ids.len());
        }
        BackupCommand::Store => {
            let v = Server::open(&dir)?.call(reqwest::Method::POST, "/backups/store").await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        BackupCommand::RestoreStore { from } => restore_store(&dir, args.config.as_deref(), from).await?,
    }
    Ok(())
}

async fn restore_store(dir: &Path, config: Option<&Path>, from: Option<String>) -> anyhow::Result<()> {
    if let Ok(addr) = std::fs::read_to_string(dir.join("server.addr")) {
        if tokio::net::TcpStream::connect(addr.trim()).await.is_ok() {
            anyhow::bail!("a server answers at {} on this data dir: stop it first (systemctl stop clawpen)", addr.trim());
        }
    }
    let config = clawpen_server::config::Config::load(dir, config)?;
    let layout = clawpen_server::layout::Layout::new(dir.to_owned());
    let storage = clawpen_storage::Storage::open(&config.storage.url, &layout.storage_dir(), config.storage.credentials_file.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let key = match from {
        Some(k) => k,
        None => {
            let copies = storage.list(clawpen_server::backup::STORE_PREFIX).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            copies.into_iter().filter(|(k, _)| k.ends_with(".db")).map(|(k, _)| k).next_back().with_context(|| format!("no copy of the store in {}; make one with `clawpen backup store`", storage.describe()))?
        }
    };
    eprintln!("restoring the store from {key} in {}", storage.describe());
    let bar = ProgressBar::new_spinner().with_message("downloading");
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    let bytes = storage.get(&key).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    bar.finish_with_message(format!("{} bytes", bytes.len()));
    anyhow::ensure!(bytes.starts_with(b"SQLite format 3\0"), "{key} is not an SQLite database; pick another copy with --from");
    let db = layout.db_path();
    let tmp = dir.join(".clawpen.db.restoring");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let aside = dir.join(format!("clawpen.db.before-restore-{}", clawpen_store::now_ms()));
    if db.exists() {
        std::fs::rename(&db, &aside).with_context(|| format!("moving the current store aside to {}", aside.display()))?;
        for ext in ["-wal", "-shm"] {
            let side = dir.join(format!("clawpen.db{ext}"));
            if side.exists() {
                std::fs::rename(&side, dir.join(format!("{}{ext}", aside.file_name().unwrap_or_default().to_string_lossy())))?;
            }
        }
        eprintln!("the store it replaces is kept as {}", aside.display());
    }
    std::fs::rename(&tmp, &db)?;
    eprintln!("done: start the server; agents whose workspace is missing on this node are restored from their snapshots as they start");
    Ok(())
}
