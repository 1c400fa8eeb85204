//! Running a scenario: the common frame around every scenario's own steps.
//!
//! Steps of [`run`]:
//!
//! 1. [`Cluster::start`] (lnd-sim, bootstrap provider, everyone else), configured for the
//!    scenario;
//! 2. connect to lnd-sim's admin API (the ledger);
//! 3. the scenario's steps (scenarios/quickstart.rs, crash_pay.rs, autopay.rs, churn/), ending with
//!    each renter's payment figures cross-checked against the ledger (see
//!    [`scenarios::payment_figures`]);
//! 4. stop every daemon (so their stores are closed), then `audit verify` every data dir.
//!
//! Failures of individual renters or checks are recorded in the [`Report`]; only a cluster
//! that cannot be brought up is an `Err`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::cli::{Bins, Cli};
use crate::cluster::{Cluster, Node, Placement};
use crate::ledger::Ledger;
use crate::procs::Procs;
use crate::report::{IntruderReport, NodeAudit, NodeEntry, Rental, Report};
use crate::scenarios::{self, Scenario};

/// How long each renter's `rent` waits for offers.
pub const RENT_TIMEOUT_SECS: u64 = 60;
/// Grace period between SIGTERM and SIGKILL for each daemon.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Number of providers (1..=`cluster::MAX_PROVIDERS`).
    pub providers: usize,
    /// Number of renters.
    pub renters: usize,
    /// Whether to add a node on another market secret.
    pub intruder: bool,
    /// Credit each renter buys, in satoshis.
    pub credit_sat: u64,
    /// What to run.
    pub scenario: Scenario,
    /// Siege: seconds each attack runs.
    pub attack_secs: u64,
}

/// What a scenario's steps produced, before the common payment figures, stop and audit.
#[derive(Debug, Default)]
pub struct Outcome {
    /// One entry per renter, in renter order.
    pub rentals: Vec<Rental>,
    /// The intruder's view, with `--intruder`.
    pub intruder: Option<IntruderReport>,
    /// Daemons that did not exit cleanly when restarted on purpose (a warning).
    pub unclean_stops: Vec<String>,
    /// The scenario's pass criteria that did not hold.
    pub criteria_failed: Vec<String>,
    /// lnd-sim's double-payment count, or why the ledger could not be read.
    pub double_payments: Option<Result<u64, String>>,
    /// The churn scenario's top-level figures.
    pub churn: Option<crate::report::ChurnSummary>,
    /// The siege scenario's per-attack figures.
    pub siege: Option<scenarios::siege::SiegeSummary>,
}

/// Runs the scenario under `root`, registering every process in `procs`; with
/// [`Placement::Netns`] the daemons run in the topology's namespaces and every lease's data
/// plane is checked.
///
/// Leaves lnd-sim running (the caller stops everything left in `procs`). Errors: the cluster
/// could not be brought up, or (netns) the internet host's probe listeners did not start.
pub async fn run(
    root: &Path,
    bins: &Bins,
    procs: Arc<Procs>,
    plan: Plan,
    placement: Placement<'_>,
) -> Result<Report> {
    // The siege's full-disk provider gets a tmpfs data dir before anything is written there;
    // it is unmounted when this function returns, after every daemon stopped (or, on an
    // error, lazily while the caller stops them).
    let disk = (plan.scenario == Scenario::Siege).then(|| scenarios::siege::prepare(root, &plan));
    let cluster = Cluster::start(root, bins, procs.clone(), &plan, placement).await?;
    let lnd_ns = placement.topology().map(|t| t.internet_ns());
    let ledger = Ledger::connect(&cluster.lnd.dir, lnd_ns).await;
    let mut outcome = match (plan.scenario, ledger) {
        (Scenario::Quickstart, ledger) => {
            let mut o =
                scenarios::quickstart::run(&cluster, root, bins, &procs, plan, placement).await?;
            o.double_payments = Some(match ledger {
                Ok(l) => scenarios::payment_figures(&cluster, &l, &mut o.rentals).await,
                Err(e) => Err(format!("{e:#}")),
            });
            o
        }
        // These scenarios steer payments through the ledger: without it they cannot run.
        (Scenario::CrashPay, ledger) => {
            scenarios::crash_pay::run(&cluster, bins, placement, &ledger?, plan).await
        }
        (Scenario::Autopay, ledger) => {
            scenarios::autopay::run(&cluster, placement, &ledger?, plan).await
        }
        (Scenario::Churn, ledger) => {
            scenarios::churn::run(&cluster, root, bins, &procs, placement, &ledger?).await?
        }
        (Scenario::Siege, ledger) => {
            let unprepared = Err("not prepared".to_owned());
            let disk = disk.as_ref().unwrap_or(&unprepared);
            scenarios::siege::run(&cluster, placement, &ledger?, plan, disk).await?
        }
        (Scenario::Discovery, _) => {
            anyhow::bail!("the discovery scenario runs through scenarios::discovery::run")
        }
    };

    tracing::info!("stopping daemons");
    outcome
        .unclean_stops
        .extend(cluster.stop_daemons(STOP_GRACE).await);

    tracing::info!("verifying audit logs");
    let audits =
        futures::future::join_all(cluster.nodes.iter().map(|n| audit_one(&cluster.cli, n))).await;
    let audit_ok = !audits.is_empty() && audits.iter().all(NodeAudit::ok);
    let (double_payments, ledger_error) = match outcome.double_payments {
        Some(Ok(n)) => (Some(n), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };

    Ok(Report {
        scenario: plan.scenario.name(),
        rentals: outcome.rentals,
        nodes: cluster
            .nodes
            .iter()
            .map(|n| NodeEntry {
                name: n.name.clone(),
                role: n.kind.role_name().to_owned(),
                data_dir: n.data_dir.clone(),
            })
            .collect(),
        audit_ok,
        double_payments,
        intruder: outcome.intruder,
        ledger_error,
        criteria_failed: outcome.criteria_failed,
        audits,
        unclean_stops: outcome.unclean_stops,
        providers: plan.providers,
        churn: outcome.churn,
        siege: outcome.siege,
    })
}

async fn audit_one(cli: &Cli, node: &Node) -> NodeAudit {
    let result = cli
        .audit_verify(&node.data_dir)
        .await
        .map_err(|e| format!("{e:#}"));
    match &result {
        Ok(a) if a.ok => tracing::debug!(name = %node.name, entries = a.entries, "audit ok"),
        Ok(a) => tracing::error!(name = %node.name, first_bad = ?a.first_bad, "audit FAILED"),
        Err(e) => tracing::error!(name = %node.name, "audit could not run: {e}"),
    }
    NodeAudit {
        name: node.name.clone(),
        result,
    }
}
