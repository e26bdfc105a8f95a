//! Runs a stand-in as its own process, for tests in other languages (the Python SDK tests):
//! `standin [--listen IP:PORT] [--addr-file PATH] [--token-delay-ms N] [--latency-ms N]`, with the test keys of
//! `StandinConfig::for_testing`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clawpen_standin::{run_cli, StandinConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse()?;
    let mut addr_file = None;
    let mut config = StandinConfig::for_testing();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = value.parse()?,
            "--addr-file" => addr_file = Some(PathBuf::from(value)),
            "--token-delay-ms" => config.token_delay_ms = value.parse()?,
            "--latency-ms" => config.latency_ms = value.parse()?,
            _ => return Err(format!("unknown argument {flag}").into()),
        }
    }
    run_cli(listen, addr_file, config).await?;
    Ok(())
}
