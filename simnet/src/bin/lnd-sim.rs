//! `lnd-sim`: serve simulated LND nodes over LND's gRPC API.
//!
//! ```text
//! lnd-sim --dir /tmp/sim --node alice:1000000 --node bob:500000 [--listen 127.0.0.1:0]
//!         [--fee-base-msat 1000 --fee-ppm 100] [--fault alice:delay=500:3]
//! ```
//! Writes `DIR/tls.cert`, `DIR/tls.key`, `DIR/NAME/admin.macaroon`, `DIR/admin.macaroon`, then,
//! once listening, `DIR/lnd-sim.json` (address, certificate, per-node macaroon paths and keys,
//! admin macaroon). Runs until SIGINT or SIGTERM. Faults and fees can also be changed at run
//! time through the admin API (`leasewire_simnet::lndsim::admin::AdminClient`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use leasewire_simnet::lndsim::SimServer;
use leasewire_simnet::lndsim::ledger::{FaultKind, RoutingFee};
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
    /// Fixed routing fee charged to the payer of every payment, in msat.
    #[arg(long, default_value_t = 0)]
    fee_base_msat: u64,
    /// Proportional routing fee, in parts per million of the amount.
    #[arg(long, default_value_t = 0)]
    fee_ppm: u64,
    /// A fault for NODE's payments: KIND is no_route, timeout, fee_over_limit or delay=MS;
    /// COUNT payments are affected (default 0 = all). Repeatable.
    #[arg(long = "fault", value_name = "NODE:KIND[:COUNT]", value_parser = parse_fault)]
    faults: Vec<(String, FaultKind, u32)>,
}

fn parse_fault(s: &str) -> Result<(String, FaultKind, u32), String> {
    let mut parts = s.split(':');
    let (Some(node), Some(kind)) = (parts.next(), parts.next()) else {
        return Err(format!("expected NODE:KIND[:COUNT], got {s:?}"));
    };
    let count = match parts.next() {
        Some(c) => c
            .parse::<u32>()
            .map_err(|e| format!("bad count in {s:?}: {e}"))?,
        None => 0,
    };
    if parts.next().is_some() {
        return Err(format!("expected NODE:KIND[:COUNT], got {s:?}"));
    }
    let kind = match kind {
        "no_route" => FaultKind::NoRoute,
        "timeout" => FaultKind::Timeout,
        "fee_over_limit" => FaultKind::FeeOverLimit,
        other => match other.strip_prefix("delay=").map(str::parse::<u64>) {
            Some(Ok(ms)) if ms > 0 => FaultKind::Delay(std::time::Duration::from_millis(ms)),
            _ => return Err(format!("unknown fault kind {other:?} in {s:?}")),
        },
    };
    Ok((node.to_owned(), kind, count))
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
    handle.set_routing_fee(RoutingFee {
        base_msat: opts.fee_base_msat,
        ppm: opts.fee_ppm,
    });
    for (node, kind, count) in &opts.faults {
        handle
            .add_fault(node, *kind, *count)
            .with_context(|| format!("--fault for {node}"))?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!(
            parse_fault("alice:no_route").expect("ok"),
            ("alice".into(), FaultKind::NoRoute, 0)
        );
        assert_eq!(
            parse_fault("bob:delay=250:3").expect("ok"),
            (
                "bob".into(),
                FaultKind::Delay(std::time::Duration::from_millis(250)),
                3
            )
        );
        assert!(parse_fault("bob").is_err());
        assert!(parse_fault("bob:delay=0").is_err());
        assert!(parse_fault("bob:explode").is_err());
        assert!(parse_fault("bob:timeout:x").is_err());
        assert!(parse_fault("bob:timeout:1:2").is_err());
    }
}
