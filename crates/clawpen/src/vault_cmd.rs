//! `clawpen vault rotate`: a new master key version, then every stored secret re-sealed with it.

use std::path::PathBuf;

use clap::Subcommand;
use clawpen_server::Layout;
use clawpen_vault::{Binding, Keyring, Vault, MASTER_KEY_ENV};

#[derive(Subcommand)]
pub enum VaultCommand {
    /// Add a master key version to `<data-dir>/master.key` (or, with `CLAWPEN_MASTER_KEY` set, use
    /// its newest version) and re-seal every stored secret with it. Older versions stay, so
    /// values not yet re-sealed still open.
    Rotate {
        #[arg(long, env = "CLAWPEN_DATA_DIR", default_value = "./clawpen-data")]
        data_dir: PathBuf,
        /// Store URL (`postgres://…`); default: the SQLite file `<data-dir>/clawpen.db`.
        #[arg(long, env = "CLAWPEN_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
}

pub async fn run(command: VaultCommand) -> anyhow::Result<()> {
    let VaultCommand::Rotate { data_dir, database_url } = command;
    let layout = Layout::new(data_dir);
    let keys = match std::env::var(MASTER_KEY_ENV) {
        // Keys from the environment: the operator adds the version there (`…,N:hex`) and
        // restarts the server; this re-seals with the newest one.
        Ok(value) => {
            let keys = Keyring::from_env_value(&value).map_err(|e| anyhow::anyhow!("{MASTER_KEY_ENV}: {e}"))?;
            eprintln!("master keys from {MASTER_KEY_ENV}; re-sealing the stored secrets with version {}", keys.current());
            keys
        }
        Err(_) => {
            let path = layout.master_key_path();
            anyhow::ensure!(path.exists(), "{} does not exist; start the server once (`clawpen up`) to create it", path.display());
            let (mut keys, _) = Keyring::load(None, &path)?;
            let version = keys.add_version();
            keys.write_file(&path)?;
            eprintln!("added master key version {version} to {}; restart the server to seal with it; re-sealing the stored secrets", path.display());
            keys
        }
    };
    let store = match database_url {
        Some(url) => clawpen_store::Store::connect(&url).await?,
        None => clawpen_store::Store::open_sqlite(&layout.db_path()).await?,
    };
    let vault = Vault::new(keys);
    reseal_all(&store, &vault).await
}

/// Re-seals every stored secret not yet on the newest key, with progress on stderr.
pub async fn reseal_all(store: &clawpen_store::Store, vault: &Vault) -> anyhow::Result<()> {
    let secrets = store.sealed_secrets().await?;
    let bar = indicatif::ProgressBar::new(secrets.len() as u64);
    let (mut resealed, mut failed) = (0, 0);
    for s in &secrets {
        let binding = Binding { tenant: &s.tenant_id, purpose: &s.purpose, record: &s.id };
        match vault.reseal(binding, &s.sealed) {
            Ok(Some(new)) => {
                if store.reseal_secret(s, &new).await? {
                    resealed += 1;
                }
            }
            Ok(None) => {}
            Err(e) => {
                // Named by row, never by value.
                bar.suspend(|| eprintln!("cannot re-seal {} / {} / {}: {e}", s.tenant_id, s.purpose, s.id));
                failed += 1;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    eprintln!("re-sealed {resealed} of {} secrets with key version {}", secrets.len(), vault.keyring().current());
    anyhow::ensure!(failed == 0, "{failed} secrets did not open; they keep their old sealing (see above)");
    Ok(())
}
