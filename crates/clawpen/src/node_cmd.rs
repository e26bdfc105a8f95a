//! `clawpen node list|drain|undrain`: the fleet's nodes, through the running server's admin API
//! (the address and the admin token are read from the data dir).

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct NodeArgs {
    #[arg(long, global = true, env = "CLAWPEN_DATA_DIR", default_value = "./clawpen-data")]
    data_dir: std::path::PathBuf,
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// The nodes with their state, committed memory and agents.
    List,
    /// Moves every agent off NAME and places nothing new there until `undrain`.
    Drain { name: String },
    /// Lets NAME take new sandboxes again.
    Undrain { name: String },
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let dir = crate::absolute(&args.data_dir)?;
    let addr = std::fs::read_to_string(dir.join("server.addr"))
        .with_context(|| format!("no server.addr in {}: is the server running with this --data-dir?", dir.display()))?;
    let token = std::fs::read_to_string(dir.join("admin.token")).with_context(|| "reading the admin token (run as the server's user)")?;
    let base = format!("http://{}/api/v1/nodes", addr.trim());
    let http = reqwest::Client::new();
    let req = match &args.command {
        NodeCommand::List => http.get(&base),
        NodeCommand::Drain { name } => {
            eprintln!("draining node {name}: moving its agents (this waits for each to start elsewhere)");
            http.post(format!("{base}/{name}/drain"))
        }
        NodeCommand::Undrain { name } => http.delete(format!("{base}/{name}/drain")),
    };
    let res = req.bearer_auth(token.trim()).send().await.context("reaching the server")?;
    let status = res.status();
    let body: serde_json::Value = res.json().await.context("reading the server's answer")?;
    println!("{}", serde_json::to_string_pretty(&body)?);
    anyhow::ensure!(status.is_success(), "the server refused: {status}");
    Ok(())
}
