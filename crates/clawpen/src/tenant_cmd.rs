//! `clawpen tenant export|import|delete`: a tenant's data out to one archive, into new agents,
//! and gone when asked,
//! through the running server's admin API (address and admin token from the data dir).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::backup_cmd::Server;

#[derive(Args)]
pub struct TenantArgs {
    #[arg(long, global = true, env = "CLAWPEN_DATA_DIR", default_value = "./clawpen-data")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: TenantCommand,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Writes one .tar.gz of everything of the tenant: its agents' workspaces in OpenClaw's
    /// layout, usage and credits as CSV, the audit lines.
    Export {
        tenant: String,
        /// Where to write it (default: clawpen-<tenant>.tar.gz here).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Makes new agents of a tenant from an export, or from an OpenClaw workspace (a folder with
    /// SOUL.md, USER.md, MEMORY.md, memory/, sessions/, or a .tar.gz of one).
    Import {
        path: PathBuf,
        #[arg(long)]
        tenant: String,
        /// The new agent's name (an OpenClaw workspace, or an export of one agent).
        #[arg(long)]
        name: Option<String>,
    },
    /// Deletes a tenant with its agents. With --purge, everything of it everywhere: store rows
    /// and audit lines, sealed secrets, workspaces, run dirs, snapshots, containers.
    Delete {
        tenant: String,
        #[arg(long)]
        purge: bool,
    },
}

pub async fn run(args: TenantArgs) -> anyhow::Result<()> {
    let dir = crate::absolute(&args.data_dir)?;
    let server = Server::open(&dir)?;
    match args.command {
        TenantCommand::Export { tenant, out } => {
            let out = out.unwrap_or_else(|| PathBuf::from(format!("clawpen-{tenant}.tar.gz")));
            eprintln!("exporting {tenant}: backing up its agents, then writing {}", out.display());
            let mut res = Server::send(server.request(reqwest::Method::GET, &format!("/tenants/{tenant}/export"))).await?;
            let tmp = out.with_extension("part");
            let mut file = std::fs::File::create(&tmp).with_context(|| format!("making {}", tmp.display()))?;
            let bar = ProgressBar::new(res.content_length().unwrap_or(0)).with_style(ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes}").expect("template"));
            while let Some(chunk) = res.chunk().await.context("reading the export")? {
                file.write_all(&chunk)?;
                bar.inc(chunk.len() as u64);
            }
            file.sync_all()?;
            std::fs::rename(&tmp, &out)?;
            bar.finish();
            println!("{}", out.display());
        }
        TenantCommand::Delete { tenant, purge } => {
            let bar = ProgressBar::new_spinner().with_message(format!("{} {tenant}: its agents first", if purge { "purging" } else { "deleting" }));
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
            let sent = Server::send(server.request(reqwest::Method::DELETE, &format!("/tenants/{tenant}?purge={purge}"))).await;
            bar.finish_and_clear();
            sent?;
            println!("{tenant}: {}", if purge { "purged: nothing of it is left" } else { "deleted" });
        }
        TenantCommand::Import { path, tenant, name } => {
            let bytes = if path.is_dir() {
                // A folder is packed here with the same refusals the server applies again.
                let limits = clawpen_storage::archive::Limits { max_bytes: 64 * 1024 * 1024 * 1024, max_entries: 10_000_000 };
                let items = clawpen_storage::archive::read_folder(&path, &limits).map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut w = clawpen_storage::archive::Writer::new(Vec::new());
                for i in &items {
                    match i {
                        clawpen_storage::archive::Item::Dir { path, mode } => w.add_dir(path, *mode),
                        clawpen_storage::archive::Item::File { path, mode, bytes } => w.add_file(path, *mode, bytes),
                    }
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                w.finish().map_err(|e| anyhow::anyhow!("{e}"))?
            } else {
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
            };
            let bar = ProgressBar::new_spinner().with_message(format!("importing {} bytes into {tenant}", bytes.len()));
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
            let mut route = format!("/tenants/{tenant}/import");
            if let Some(n) = &name {
                route.push_str(&format!("?name={}", url_escape(n)));
            }
            let sent = Server::send(server.request(reqwest::Method::POST, &route).header("content-type", "application/gzip").body(bytes)).await;
            bar.finish_and_clear();
            let body: serde_json::Value = sent?.json().await.context("reading the server's answer")?;
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
    }
    Ok(())
}

/// Percent-encodes a query value.
fn url_escape(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}
