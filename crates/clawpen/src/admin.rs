//! Offline admin commands on a data dir: the same store the server uses (SQLite allows both).

use clap::{Args, Subcommand};
use clawpen_core::ids::TenantId;
use clawpen_core::names::validate_name;

#[derive(Args)]
pub struct AdminArgs {
    #[arg(long, env = "CLAWPEN_DATA_DIR", default_value = "./clawpen-data")]
    data_dir: std::path::PathBuf,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a tenant and print it as JSON.
    CreateTenant {
        name: String,
        #[arg(long)]
        plan: Option<String>,
    },
    /// List tenants as JSON.
    ListTenants,
    /// Issue an API key for a tenant; the token is printed once.
    CreateKey { tenant: String },
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let data_dir = crate::absolute(&args.data_dir)?;
    let mut config = clawpen_server::Config::load(&data_dir, None)?;
    let layout = clawpen_server::Layout::new(data_dir);
    layout.init()?;
    let store = clawpen_store::Store::open_sqlite(&layout.db_path()).await?;
    config.sandbox.uid_base = clawpen_server::uid_range::resolve(&store, config.sandbox.uid_base).await?;
    match args.command {
        AdminCommand::CreateTenant { name, plan } => {
            validate_name(&name).map_err(|e| anyhow::anyhow!("name: {e}"))?;
            let plan = plan.unwrap_or_else(|| config.default_plan.clone());
            anyhow::ensure!(config.plan(&plan).is_some(), "unknown plan {plan:?}");
            let t = store.create_tenant(&name, &plan, config.sandbox.uid_base).await?;
            store
                .audit(clawpen_store::NewAudit { tenant: Some(&t.id), agent: None, actor: "admin-cli", action: "tenant.create", reason: "requested", detail: None })
                .await?;
            println!("{}", serde_json::to_string_pretty(&t)?);
        }
        AdminCommand::ListTenants => println!("{}", serde_json::to_string_pretty(&store.list_tenants().await?)?),
        AdminCommand::CreateKey { tenant } => {
            let id = TenantId::parse(&tenant).map_err(|e| anyhow::anyhow!("{e}"))?;
            store.get_tenant(&id).await.map_err(|_| anyhow::anyhow!("no tenant {id}"))?;
            let (key, token) = store.create_api_key(&id).await?;
            println!("{}", serde_json::json!({"key_id": key.id.to_string(), "token": token}));
        }
    }
    Ok(())
}
