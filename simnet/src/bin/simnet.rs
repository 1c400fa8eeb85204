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
//! With `--netns` (root, iproute2, wireguard-go) every daemon runs in its own network
//! namespace behind a simulated internet, with real WireGuard tunnels, and each lease's data
//! plane is checked with real packets: outbound and inbound over IPv4 and IPv6, the cut when
//! the credit runs out and the resumption after `add-credit` (see dataplane.rs). The probes
//! are this same binary, run through the hidden `probe-listen` / `probe-connect` subcommands.
//!
//! `--scenario` picks what runs on the cluster (see scenarios/mod.rs): `quickstart` (the
//! default: the run above), `crash-pay` (daemons killed mid-payment), `autopay` (AutoPay
//! with a tunnel broken on purpose; implies `--netns`) or `churn` (leases that come and go:
//! several per renter, release, notice, a moved endpoint, a provider killed and one that never
//! delivers; see scenarios/churn.rs) or `siege` (adversarial members attack, one attack at a
//! time, while honest renters keep renting; see scenarios/siege.rs and the hidden `attack`
//! subcommand, attacker/). Every scenario reports each rental's
//! payment figures cross-checked against lnd-sim's own ledger, and `double_payments`.
//!
//! The `leasewire` and `lnd-sim` binaries must be built: `cargo build --workspace`.

// A non-`main.rs` binary root resolves `mod x;` next to itself (src/bin/x.rs); the modules
// live in src/bin/simnet/ so they cannot be mistaken for binaries of their own.
#[path = "simnet/attacker/mod.rs"]
mod attacker;
#[path = "simnet/cli.rs"]
mod cli;
#[path = "simnet/cluster.rs"]
mod cluster;
#[path = "simnet/dataplane.rs"]
mod dataplane;
#[path = "simnet/ledger.rs"]
mod ledger;
#[path = "simnet/netenv.rs"]
mod netenv;
// Part of the topology API (gateways, ping, leftovers) is used only by its own tests.
#[allow(dead_code)]
#[path = "simnet/netns.rs"]
mod netns;
#[path = "simnet/probe.rs"]
mod probe;
#[path = "simnet/procs.rs"]
mod procs;
#[path = "simnet/report.rs"]
mod report;
#[path = "simnet/scenario.rs"]
mod scenario;
#[path = "simnet/scenarios/mod.rs"]
mod scenarios;

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::cli::Bins;
use crate::cluster::Placement;
use crate::netenv::NetEnv;
use crate::procs::Procs;
use crate::scenario::{Plan, STOP_GRACE};
use crate::scenarios::Scenario;

/// Runs a local leasewire market (lnd-sim + N providers + M renters) and checks it end to end.
#[derive(Debug, Parser)]
#[command(name = "simnet", version, args_conflicts_with_subcommands = true)]
struct Opts {
    /// Internal helpers run by simnet itself inside namespaces.
    #[command(subcommand)]
    helper: Option<Helper>,
    /// What to run: quickstart (everyone rents at once), crash-pay (daemons killed while a
    /// payment is in flight), autopay (AutoPay top-ups and a broken tunnel; implies --netns),
    /// churn (several leases per renter, release, notice, endpoint move, failover, a provider
    /// that never delivers), discovery (every renter timed until it holds every provider's
    /// offer; no renting) or siege (attacks one after another while honest renters rent).
    #[arg(long, value_enum, default_value_t = Scenario::Quickstart)]
    scenario: Scenario,
    /// Number of provider daemons, up to 272 (16 with --netns) [default: 3; crash-pay 1;
    /// autopay 2; churn 6; discovery 5; siege 3].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=cluster::MAX_PROVIDERS as i64))]
    providers: Option<u16>,
    /// Number of renter daemons; each rents one lease (churn: as its part says) [default: 5;
    /// crash-pay 2; autopay 3; churn 6; discovery 5; siege 2].
    #[arg(long)]
    renters: Option<u16>,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Keep the run's directory (data dirs, logs) and print where it is.
    #[arg(long)]
    keep: bool,
    /// Add a renter on a different market secret; it must see no offers and be refused.
    #[arg(long, conflicts_with = "netns")]
    intruder: bool,
    /// Run each daemon in its own network namespace with real WireGuard tunnels and check
    /// every lease with real packets (needs root and wireguard-go).
    #[arg(long)]
    netns: bool,
    /// Credit each renter buys, in satoshis [default: 3000; with --netns 40, which at the
    /// netns price of 1 sat/s is 40 s of service before the suspension check; crash-pay 500;
    /// autopay 150, 15 s at its 10 sat/s].
    #[arg(long = "credit")]
    credit_sat: Option<u64>,
    /// Directory to create the run's temporary root in (default: the system temp dir).
    #[arg(long)]
    base_dir: Option<PathBuf>,
    /// Siege: seconds each of its seven attacks runs.
    #[arg(long, default_value_t = scenarios::siege::DEFAULT_ATTACK_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    attack_secs: u64,
}

/// Credit per renter without `--netns`.
const DEFAULT_CREDIT_SAT: u64 = 3000;
/// Credit per renter with `--netns`: seconds of service (1 sat/s) covering the first checks.
const NETNS_CREDIT_SAT: u64 = 40;

/// Hidden subcommands: the probe helpers of `--netns` (see probe.rs).
#[derive(Debug, Subcommand)]
enum Helper {
    /// Accept TCP connections on ADDR and answer each with the peer address it came from.
    #[command(hide = true)]
    ProbeListen {
        /// Address to listen on.
        #[arg(long)]
        addr: SocketAddr,
    },
    /// Connect from BIND to TO and print the source address the listener saw.
    #[command(hide = true)]
    ProbeConnect {
        /// Source address to bind (port 0).
        #[arg(long)]
        bind: IpAddr,
        /// Listener to connect to.
        #[arg(long)]
        to: SocketAddr,
        /// Connect and read timeout in milliseconds.
        #[arg(long, default_value_t = 1500)]
        timeout_ms: u64,
    },
    /// Run one attack of the siege scenario against TARGETs and print what it did as JSON.
    #[command(hide = true)]
    Attack {
        /// Which attack.
        #[arg(long, value_enum)]
        attack: attacker::AttackKind,
        /// The market secret.
        #[arg(long)]
        secret: String,
        /// A daemon to attack: `/ip4/A/tcp/P/p2p/ID` (repeatable).
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// How long to keep at it, in seconds.
        #[arg(long)]
        secs: u64,
    },
}

/// Runs a helper subcommand; exit 0 on success, 1 with the error on stderr otherwise.
fn run_helper(h: Helper) -> ExitCode {
    let result = match h {
        Helper::ProbeListen { addr } => probe::listen(addr),
        Helper::ProbeConnect {
            bind,
            to,
            timeout_ms,
        } => probe::connect(bind, to, std::time::Duration::from_millis(timeout_ms)).map(|seen| {
            println!("{seen}");
        }),
        Helper::Attack {
            attack,
            secret,
            targets,
            secs,
        } => run_attack(attack, &secret, &targets, secs),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(1)
        }
    }
}

/// The `attack` helper: its own multi-threaded runtime (the attacker signs and sends as fast
/// as it can), logs on stderr, the stats as one JSON object on stdout.
fn run_attack(
    attack: attacker::AttackKind,
    secret: &str,
    targets: &[String],
    secs: u64,
) -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the attacker's runtime")?;
    let stats = rt.block_on(attacker::run(attack, secret, targets, secs))?;
    println!(
        "{}",
        serde_json::to_string(&stats).context("cannot print the attack's figures")?
    );
    // Whatever task is still stuck on a socket dies with the process.
    rt.shutdown_background();
    Ok(())
}

/// How a run ended, mapped to the exit status in `main`.
enum Outcome {
    Passed,
    Failed,
    Interrupted,
}

fn main() -> ExitCode {
    let mut opts = Opts::parse();
    if let Some(h) = opts.helper.take() {
        return run_helper(h);
    }
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

async fn run(mut opts: Opts) -> Result<Outcome> {
    // Install handlers before any child exists, so no signal can kill us mid-setup.
    let mut signals = Signals::new()?;
    let bins = Bins::locate()?;
    if opts.intruder && opts.scenario != Scenario::Quickstart {
        anyhow::bail!("--intruder is part of the quickstart scenario only");
    }
    if opts.scenario == Scenario::Discovery && (opts.netns || opts.intruder) {
        anyhow::bail!("the discovery scenario runs on loopback, without --netns or --intruder");
    }
    if opts.netns
        && opts
            .providers
            .is_some_and(|p| usize::from(p) > cluster::WIDE_POOL_PROVIDERS)
    {
        anyhow::bail!(
            "--netns routes at most {} providers' pools",
            cluster::WIDE_POOL_PROVIDERS
        );
    }
    if opts.scenario.needs_netns() && !opts.netns {
        tracing::info!(
            scenario = opts.scenario.name(),
            "this scenario verifies real WireGuard tunnels: running with --netns"
        );
        opts.netns = true;
    }
    if opts.netns {
        // Before anything is created, so a machine that cannot run it says so at once.
        netns::Topology::preflight().with_context(|| {
            format!(
                "the {} scenario needs network namespaces",
                opts.scenario.name()
            )
        })?;
    }
    if (opts.scenario == Scenario::Autopay || (opts.scenario == Scenario::Churn && opts.netns))
        && netns::find_program("wg").is_none()
    {
        anyhow::bail!(
            "the {} scenario reads or changes tunnels with `wg`, which is not installed \
             (apt-get install wireguard-tools)",
            opts.scenario.name()
        );
    }
    // Declared before `procs`: on unwind, children are killed first, then the dir removed.
    let tmp = make_root(opts.base_dir.as_deref())?;
    let root = tmp.path().to_owned();
    tracing::info!(root = %root.display(), "simnet root");
    let procs = Arc::new(Procs::new());
    let (providers, renters) = opts.scenario.default_counts();
    let plan = Plan {
        providers: usize::from(opts.providers.unwrap_or(providers)),
        renters: usize::from(opts.renters.unwrap_or(renters)),
        intruder: opts.intruder,
        credit_sat: opts
            .credit_sat
            .or(opts.scenario.default_credit_sat())
            .unwrap_or(if opts.netns {
                NETNS_CREDIT_SAT
            } else {
                DEFAULT_CREDIT_SAT
            }),
        scenario: opts.scenario,
        attack_secs: opts.attack_secs,
    };
    // Built before any child starts, and removed only after every child has stopped.
    let net = if opts.netns {
        let pools = (0..plan.providers)
            .map(cluster::provider_pools)
            .collect::<Result<_>>()?;
        Some(NetEnv::create(pools, plan.renters)?)
    } else {
        None
    };
    let placement = match &net {
        Some(n) => Placement::Netns {
            topo: &n.topo,
            tag: &n.tag,
        },
        None => Placement::Host,
    };

    let result = tokio::select! {
        r = run_scenario(&root, &bins, procs.clone(), plan, placement) => Some(r),
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
    let mut cleanup_failed = false;
    if let Some(n) = net
        && let Err(e) = n.cleanup().await
    {
        tracing::error!("netns cleanup: {e:#}");
        cleanup_failed = true;
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
        println!("{}", report.json);
    } else {
        print!("{}", report.table);
    }
    let mut failures = report.failures;
    if cleanup_failed {
        failures.push("the network namespaces were not all removed".to_owned());
    }
    for f in &failures {
        tracing::error!("check failed: {f}");
    }
    Ok(if failures.is_empty() {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}

/// What a finished scenario prints and whether it passed.
struct Finished {
    /// The `--json` object.
    json: String,
    /// The human table.
    table: String,
    /// Why it failed; empty when it passed.
    failures: Vec<String>,
}

/// Runs the chosen scenario: discovery has a report of its own, the others share `report::Report`.
async fn run_scenario(
    root: &Path,
    bins: &Bins,
    procs: Arc<Procs>,
    plan: Plan,
    placement: Placement<'_>,
) -> Result<Finished> {
    if plan.scenario == Scenario::Discovery {
        let r = scenarios::discovery::run(root, bins, procs, plan).await?;
        return Ok(Finished {
            json: r.to_json(),
            table: r.table(),
            failures: r.failures(),
        });
    }
    let r = scenario::run(root, bins, procs, plan, placement).await?;
    Ok(Finished {
        json: r.to_json(),
        table: r.table(),
        failures: r.failures(),
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
        assert_eq!((o.providers, o.renters, o.credit_sat), (None, None, None));
        assert_eq!(o.scenario, Scenario::Quickstart);
        assert_eq!(o.scenario.default_counts(), (3, 5));
        assert!(!o.json && !o.keep && !o.intruder && !o.netns && o.base_dir.is_none());
        assert!(o.helper.is_none());
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
        assert_eq!(
            (o.providers, o.renters, o.credit_sat),
            (Some(2), Some(2), Some(5000))
        );
        assert!(o.json && o.intruder);
        for (arg, s) in [
            ("quickstart", Scenario::Quickstart),
            ("crash-pay", Scenario::CrashPay),
            ("autopay", Scenario::Autopay),
            ("churn", Scenario::Churn),
            ("discovery", Scenario::Discovery),
            ("siege", Scenario::Siege),
        ] {
            let o = Opts::try_parse_from(["simnet", "--scenario", arg]).unwrap();
            assert_eq!(o.scenario, s);
            assert_eq!(s.name(), arg);
        }
        assert!(Opts::try_parse_from(["simnet", "--scenario", "nope"]).is_err());
        let o = Opts::try_parse_from(["simnet", "--scenario", "siege"]).unwrap();
        assert_eq!(o.attack_secs, scenarios::siege::DEFAULT_ATTACK_SECS);
        assert_eq!(o.scenario.default_counts(), (3, 2));
        let o =
            Opts::try_parse_from(["simnet", "--scenario", "siege", "--attack-secs", "3"]).unwrap();
        assert_eq!(o.attack_secs, 3);
        assert!(Opts::try_parse_from(["simnet", "--attack-secs", "0"]).is_err());
    }

    #[test]
    fn netns_flag_and_hidden_helpers_parse() {
        let o = Opts::try_parse_from(["simnet", "--netns", "--renters", "2", "--keep"]).unwrap();
        assert!(o.netns && o.keep && o.helper.is_none());
        // The intruder needs a namespace of its own that the topology does not provide.
        assert!(Opts::try_parse_from(["simnet", "--netns", "--intruder"]).is_err());
        let o = Opts::try_parse_from([
            "simnet",
            "probe-connect",
            "--bind",
            "198.51.100.1",
            "--to",
            "203.0.113.1:7000",
        ])
        .unwrap();
        match o.helper {
            Some(Helper::ProbeConnect {
                bind,
                to,
                timeout_ms,
            }) => {
                assert_eq!(bind.to_string(), "198.51.100.1");
                assert_eq!(to.port(), 7000);
                assert_eq!(timeout_ms, 1500);
            }
            other => panic!("{other:?}"),
        }
        let o = Opts::try_parse_from(["simnet", "probe-listen", "--addr", "[2001:db8::1]:7001"])
            .unwrap();
        assert!(matches!(o.helper, Some(Helper::ProbeListen { .. })));
        // Helpers stay out of the help text.
        let help = <Opts as clap::CommandFactory>::command()
            .render_help()
            .to_string();
        assert!(!help.contains("probe-"), "{help}");
    }

    #[test]
    fn provider_count_is_bounded_by_the_address_plan() {
        assert!(Opts::try_parse_from(["simnet", "--providers", "0"]).is_err());
        assert!(Opts::try_parse_from(["simnet", "--providers", "273"]).is_err());
        assert!(Opts::try_parse_from(["simnet", "--providers", "272"]).is_ok());
        let o = Opts::try_parse_from(["simnet", "--scenario", "discovery", "--providers", "200"])
            .unwrap();
        assert_eq!((o.scenario, o.providers), (Scenario::Discovery, Some(200)));
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
