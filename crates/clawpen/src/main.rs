//! `clawpen`: one executable for the control plane, the in-sandbox agent and the operator's tools.
//!
//! # Layout
//! - `main.rs`: the command line and its dispatch.
//! - `image_cmd`: `clawpen image build` and the image check shared by `up` and `doctor`.
//! - `doctor`: `clawpen doctor`.
//! - `bench`: `clawpen bench SCENARIO --json`; `bench_meter`: its `meter` scenario; `bench_tools`:
//!   its `tools` scenario (the broker).
//! - `admin`: offline admin commands on a data dir.

mod admin;
mod backup_cmd;
mod bench;
mod tenant_cmd;
mod bench_backup;
mod bench_claim;
mod bench_console;
mod bench_density;
mod bench_gateway;
mod bench_hostile;
mod bench_wake;
mod bench_meter;
mod bench_schedule;
mod bench_tools;
mod vault_cmd;
mod doctor;
mod image_cmd;
mod node_cmd;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use clawpen_server::Config;

#[derive(Parser)]
#[command(name = "clawpen", version, about = "Hosts personal AI agents, one hardened sandbox per tenant.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// Where the store, the admin token and the tenants' workspaces live.
    #[arg(long, env = "CLAWPEN_DATA_DIR", default_value = "./clawpen-data")]
    data_dir: PathBuf,
    /// Config file (default: <data-dir>/clawpen.toml when it exists, else built-in defaults).
    #[arg(long, env = "CLAWPEN_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides the config), e.g. 127.0.0.1:8080; port 0 picks a free one.
    #[arg(long, env = "CLAWPEN_LISTEN")]
    listen: Option<SocketAddr>,
    /// Store URL (`postgres://…`); default: the SQLite file `<data-dir>/clawpen.db`.
    #[arg(long, env = "CLAWPEN_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Build the sandbox image if it is missing or stale, then serve.
    Up(ServerArgs),
    /// Serve the API (the sandbox image must exist).
    Serve(ServerArgs),
    /// Run the agent (inside a sandbox; started by the server).
    Agent,
    /// Sandbox image commands.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Check that this machine can run clawpen, and say how to fix what is wrong.
    Doctor(doctor::DoctorArgs),
    /// Measure a scenario and print one JSON object.
    Bench(bench::BenchArgs),
    /// Tenants and keys, straight on a data dir (the server may be running).
    Admin(admin::AdminArgs),
    /// The fleet's nodes (Docker Engines): list, drain, undrain, through the running server.
    Node(node_cmd::NodeArgs),
    /// Backups to storage: agents' workspaces and the store, and putting the store back.
    Backup(backup_cmd::BackupArgs),
    /// A tenant's data: export it to one archive, import an archive or an OpenClaw workspace,
    /// delete (and purge) it.
    Tenant(tenant_cmd::TenantArgs),
    /// The vault's master keys.
    Vault {
        #[command(subcommand)]
        command: vault_cmd::VaultCommand,
    },
    /// What this process can see of its confinement, as one JSON line (run by `clawpen doctor`
    /// inside a throwaway sandbox).
    #[command(hide = true)]
    SelfCheck {
        #[arg(value_enum)]
        what: SelfCheck,
        /// HOST:PORT to try to reach (network).
        #[arg(long = "tcp", value_name = "HOST:PORT")]
        tcp: Vec<String>,
    },
    /// Holds many connections to a socket (run inside a sandbox by `clawpen bench hostile`).
    #[command(hide = true)]
    BenchFlood {
        #[arg(long, default_value = "/run/clawpen/control.sock")]
        socket: String,
        #[arg(long, default_value_t = 25_000)]
        count: usize,
        #[arg(long, default_value_t = 60)]
        hold_secs: u64,
        /// End the flood running in this sandbox.
        #[arg(long)]
        stop: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SelfCheck {
    Identity,
    Filesystem,
    Network,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build the sandbox image from this executable (FROM scratch, no registry).
    Build {
        /// Print only the tag.
        #[arg(long)]
        quiet: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Agent => match clawpen_agent::server::main_blocking() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("clawpen agent: {e}");
                1
            }
        },
        Command::BenchFlood { socket, count, hold_secs, stop } => bench_hostile::flood(&socket, count, hold_secs, stop),
        Command::SelfCheck { what, tcp } => {
            let report = match what {
                SelfCheck::Identity => clawpen_selfcheck::identity(),
                SelfCheck::Filesystem => clawpen_selfcheck::filesystem(),
                SelfCheck::Network => clawpen_selfcheck::network(&tcp, &[]),
            };
            println!("{report}");
            0
        }
        other => {
            init_tracing();
            // The one TLS crypto provider, before anything builds an HTTPS client.
            clawpen_meter::tls::install_provider();
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            match rt.block_on(dispatch(other)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            }
        }
    };
    std::process::ExitCode::from(code as u8)
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CLAWPEN_LOG").unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn,sqlx=warn,bollard=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

async fn dispatch(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Up(args) => serve(args, true).await.map(|_| 0),
        Command::Serve(args) => serve(args, false).await.map(|_| 0),
        Command::Image { command: ImageCommand::Build { quiet } } => {
            let tag = image_cmd::build(!quiet).await?;
            println!("{tag}");
            Ok(0)
        }
        Command::Doctor(args) => doctor::run(args).await,
        Command::Bench(args) => bench::run(args).await.map(|_| 0),
        Command::Admin(args) => admin::run(args).await.map(|_| 0),
        Command::Node(args) => node_cmd::run(args).await.map(|_| 0),
        Command::Backup(args) => backup_cmd::run(args).await.map(|_| 0),
        Command::Tenant(args) => tenant_cmd::run(args).await.map(|_| 0),
        Command::Vault { command } => vault_cmd::run(command).await.map(|_| 0),
        Command::Agent | Command::SelfCheck { .. } | Command::BenchFlood { .. } => unreachable!("handled before the runtime starts"),
    }
}

pub fn load_config(args: &ServerArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(&args.data_dir, args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    Ok(config)
}

/// The data dir as an absolute path: sandboxes bind-mount dirs under it.
pub fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))
}

async fn serve(mut args: ServerArgs, build_image: bool) -> anyhow::Result<()> {
    args.data_dir = absolute(&args.data_dir)?;
    let config = load_config(&args)?;
    let image = image_cmd::ensure(&config, build_image).await?;
    let listen = config.listen;
    let app = clawpen_server::open(&args.data_dir, args.database_url.as_deref(), config, image).await?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}; is another server using it? pass --listen"))?;
    let addr = listener.local_addr()?;
    // Written after binding, so scripts and tests started with port 0 can find the server.
    // Whole or not at all (written aside, then renamed): a reader never sees it half written.
    let partial = args.data_dir.join("server.addr.partial");
    std::fs::write(&partial, addr.to_string())?;
    std::fs::rename(&partial, args.data_dir.join("server.addr"))?;
    println!("clawpen listening on http://{addr}");
    println!("admin token: {}", app.layout.admin_token_path().display());
    clawpen_server::run(app, listener, shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down; sandboxes keep running and are adopted at the next start");
}
