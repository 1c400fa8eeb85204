//! `simnet`: runs a whole leasewire market on one machine and checks that it works.
//!
//! It starts `lnd-sim` and N provider plus M renter daemons (and optionally an intruder on
//! another market secret) under a temporary root, has every renter rent at once, checks that
//! the intruder saw nothing, stops everything and verifies every audit log. Output is a table,
//! or with `--json` one JSON object on stdout; progress goes to stderr.
//!
//! Exit status: 0 when every check held, 1 when a check failed, 2 when the cluster could not be
//! run at all, 130 when interrupted. Every child process is stopped on every one of these
//! paths (see `procs.rs`).
//!
//! The `leasewire` and `lnd-sim` binaries must be built: `cargo build --workspace`.

// A non-`main.rs` binary root resolves `mod x;` next to itself (src/bin/x.rs); the modules
// live in src/bin/simnet/ so they cannot be mistaken for binaries of their own.
#[path = "simnet/cli.rs"]
mod cli;
#[path = "simnet/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "simnet/netns.rs"]
mod netns;
#[path = "simnet/procs.rs"]
mod procs;
#[path = "simnet/report.rs"]
mod report;
#[path = "simnet/scenario.rs"]
mod scenario;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::cli::Bins;
use crate::procs::Procs;
use crate::scenario::{Plan, STOP_GRACE};

/// Runs a local leasewire market (lnd-sim + N providers + M renters) and checks it end to end.
#[derive(Debug, Parser)]
#[command(name = "simnet", version)]
struct Opts {
    /// Number of provider daemons.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=cluster::MAX_PROVIDERS as i64))]
    providers: u16,
    /// Number of renter daemons; each rents one lease.
    #[arg(long, default_value_t = 5)]
    renters: u16,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Keep the run's directory (data dirs, logs) and print where it is.
    #[arg(long)]
    keep: bool,
    /// Add a renter on a different market secret; it must see no offers and be refused.
    #[arg(long)]
    intruder: bool,
    /// Credit each renter buys, in satoshis.
    #[arg(long = "credit", default_value_t = 3000)]
    credit_sat: u64,
    /// Directory to create the run's temporary root in (default: the system temp dir).
    #[arg(long)]
    base_dir: Option<PathBuf>,
}

/// How a run ended, mapped to the exit status in `main`.
enum Outcome {
    Passed,
    Failed,
    Interrupted,
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, so redirected logs stay greppable.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // Current-thread on purpose: every child is forked from this one thread, which keeps
    // PR_SET_PDEATHSIG (bound to the forking thread) meaningful. See procs.rs.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("simnet: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(opts)) {
        Ok(Outcome::Passed) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("simnet: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(opts: Opts) -> Result<Outcome> {
    // Install handlers before any child exists, so no signal can kill us mid-setup.
    let mut signals = Signals::new()?;
    let bins = Bins::locate()?;
    // Declared before `procs`: on unwind, children are killed first, then the dir removed.
    let tmp = make_root(opts.base_dir.as_deref())?;
    let root = tmp.path().to_owned();
    tracing::info!(root = %root.display(), "simnet root");
    let procs = Arc::new(Procs::new());
    let plan = Plan {
        providers: usize::from(opts.providers),
        renters: usize::from(opts.renters),
        intruder: opts.intruder,
        credit_sat: opts.credit_sat,
    };

    let result = tokio::select! {
        r = scenario::run(&root, &bins, procs.clone(), plan) => Some(r),
        sig = signals.recv() => {
            tracing::warn!("{sig} received; stopping every process");
            None
        }
    };

    // Whatever is left: lnd-sim always, daemons too after an error or interrupt. A second
    // signal cuts the grace period short: dropping the stop future kills the children it holds.
    tokio::select! {
        _ = procs.stop_all(STOP_GRACE) => {}
        sig = signals.recv() => tracing::warn!("{sig} received again; killing"),
    }

    if opts.keep {
        let kept = tmp.keep();
        if opts.json {
            tracing::info!("kept the run in {}", kept.display());
        } else {
            println!("kept the run in {}", kept.display());
        }
    } else {
        drop(tmp);
    }

    let report = match result {
        None => return Ok(Outcome::Interrupted),
        Some(r) => r?,
    };
    if opts.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    let failures = report.failures();
    for f in &failures {
        tracing::error!("check failed: {f}");
    }
    Ok(if failures.is_empty() {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}

/// A fresh run directory, inside `base` when given (created if missing).
fn make_root(base: Option<&Path>) -> Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix("simnet-");
    let dir = match base {
        Some(base) => {
            std::fs::create_dir_all(base)
                .with_context(|| format!("cannot create {}", base.display()))?;
            // Absolute, because data dirs are handed to other processes and into configs.
            let base = base
                .canonicalize()
                .with_context(|| format!("cannot resolve {}", base.display()))?;
            b.tempdir_in(base)
        }
        None => b.tempdir(),
    };
    dir.context("cannot create the simnet root directory")
}

/// SIGINT and SIGTERM, as one stream.
struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM and names it.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let o = Opts::try_parse_from(["simnet"]).unwrap();
        assert_eq!((o.providers, o.renters, o.credit_sat), (3, 5, 3000));
        assert!(!o.json && !o.keep && !o.intruder && o.base_dir.is_none());
        let o = Opts::try_parse_from([
            "simnet",
            "--providers",
            "2",
            "--renters",
            "2",
            "--intruder",
            "--json",
            "--credit",
            "5000",
        ])
        .unwrap();
        assert_eq!((o.providers, o.renters, o.credit_sat), (2, 2, 5000));
        assert!(o.json && o.intruder);
    }

    #[test]
    fn provider_count_is_bounded_by_the_address_plan() {
        assert!(Opts::try_parse_from(["simnet", "--providers", "0"]).is_err());
        assert!(Opts::try_parse_from(["simnet", "--providers", "17"]).is_err());
        assert!(Opts::try_parse_from(["simnet", "--providers", "16"]).is_ok());
    }

    #[test]
    fn root_goes_inside_base_dir_and_is_absolute() {
        let base = tempfile::tempdir().unwrap();
        let nested = base.path().join("a/b");
        let root = make_root(Some(&nested)).unwrap();
        assert!(root.path().is_absolute());
        assert!(root.path().starts_with(nested.canonicalize().unwrap()));
        let p = root.path().to_owned();
        drop(root);
        assert!(!p.exists());
    }
}
