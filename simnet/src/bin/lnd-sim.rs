//! `lnd-sim`: serve simulated LND nodes over LND's gRPC API.
//!
//! ```text
//! lnd-sim --dir /tmp/sim --node alice:1000000 --node bob:500000 [--listen 127.0.0.1:0]
//! ```
//! Writes `DIR/tls.cert`, `DIR/tls.key`, `DIR/NAME/admin.macaroon`, then, once listening,
//! `DIR/lnd-sim.json` (address, certificate and per-node macaroon paths and keys). Runs until
//! SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use leasewire_simnet::lndsim::SimServer;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

/// Simulated LND nodes behind one LND-compatible gRPC server.
#[derive(Debug, Parser)]
#[command(version)]
struct Opts {
    /// Directory for tls.cert, tls.key, NAME/admin.macaroon and lnd-sim.json.
    #[arg(long)]
    dir: PathBuf,
    /// Address to listen on (port 0 picks a free port; see lnd-sim.json).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// A node as NAME:BALANCE_SAT; repeat for more nodes.
    #[arg(long = "node", value_name = "NAME:BALANCE_SAT", required = true, value_parser = parse_node)]
    nodes: Vec<(String, u64)>,
}

fn parse_node(s: &str) -> Result<(String, u64), String> {
    let (name, sat) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected NAME:BALANCE_SAT, got {s:?}"))?;
    let sat = sat
        .parse::<u64>()
        .map_err(|e| format!("bad balance in {s:?}: {e}"))?;
    Ok((name.to_owned(), sat))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let opts = Opts::parse();

    let mut handle = SimServer::start(&opts.dir, opts.listen, &opts.nodes)
        .await
        .context("starting lnd-sim")?;
    let manifest_path = opts.dir.join("lnd-sim.json");
    handle
        .write_manifest(&manifest_path)
        .context("writing lnd-sim.json")?;
    info!(address = handle.address(), manifest = %manifest_path.display(), "ready");

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = sigterm.recv() => {}
        r = handle.wait() => return r.context("lnd-sim server stopped"),
    }
    info!("shutting down");
    handle.shutdown().await.context("stopping lnd-sim")?;
    Ok(())
}
