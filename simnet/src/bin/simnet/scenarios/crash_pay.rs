//! `crash-pay`: daemons crash while a payment is in flight, and the market must neither pay
//! twice nor lose the lease.
//!
//! Renters take turns, one at a time (even index: the renter crashes; odd: its provider):
//!
//! - **renter crash**: lnd-sim holds the renter's next payment IN_FLIGHT for
//!   [`PAYMENT_DELAY`]; `rent --auto` starts in the background; once the ledger shows the
//!   payment in flight the renter daemon is SIGKILLed; lnd-sim completes the payment anyway;
//!   the daemon is started again and must find the payment (TrackPaymentV2, never a second
//!   payment) and get its lease;
//! - **provider crash**: the same delay and `rent`; once the payment is in flight the payee's
//!   provider daemon is frozen (SIGSTOP), so it cannot answer when the payment lands; after
//!   the ledger shows it SUCCEEDED the frozen provider is SIGKILLed and started again; its
//!   pending-invoice watcher must issue the lease and the renter must receive it.
//!
//! Pass criteria (besides the common ones: every rental leased, figures matching the ledger,
//! no double payment, audits): every renter holds exactly one active lease, every provider
//! lists the leases it issued, and each renter made exactly one SUCCEEDED payment.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use leasewire_simnet::lndsim::admin::STATUS_SUCCEEDED;
use tokio::task::JoinHandle;

use super::{payment_figures, wait_lease};
use crate::cli::{Bins, Cli, LeaseOut, RentOut};
use crate::cluster::{Cluster, Kind, Node, Placement};
use crate::ledger::Ledger;
use crate::report::Rental;
use crate::scenario::{Outcome, Plan, RENT_TIMEOUT_SECS};

/// How long lnd-sim keeps each scenario payment IN_FLIGHT: long enough to crash a daemon
/// in the middle of it.
const PAYMENT_DELAY: Duration = Duration::from_millis(4000);
/// Longest wait for the payment to appear IN_FLIGHT: `rent` first discovers offers.
const IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(RENT_TIMEOUT_SECS + 30);
/// Longest wait for the delayed payment to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the lease after the crashed daemon is back.
const LEASE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the background `rent` may take to give up once the outcome is known.
const RENT_END_WAIT: Duration = Duration::from_secs(15);

/// Which daemon a rental's crash takes down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Renter,
    Provider,
}

impl Victim {
    /// Renters alternate, starting with a renter crash.
    fn for_renter(index: usize) -> Victim {
        if index.is_multiple_of(2) {
            Victim::Renter
        } else {
            Victim::Provider
        }
    }
}

/// Runs the scenario on a started cluster; see the module doc. Never fails: a step that
/// cannot be done is the rental's `error`, which fails the run.
pub async fn run(
    cluster: &Cluster,
    bins: &Bins,
    placement: Placement<'_>,
    ledger: &Ledger,
    plan: Plan,
) -> Outcome {
    let mut rentals = Vec::new();
    let mut lease_ids = Vec::new();
    for node in cluster.of_kind(Kind::Renter) {
        let mut crash = Crash {
            cluster,
            bins,
            placement,
            ledger,
            started: Instant::now(),
            notes: Vec::new(),
        };
        let victim = Victim::for_renter(node.index);
        let result = crash.rent_through(node, victim, plan.credit_sat).await;
        let mut r = match result {
            Ok(lease) => {
                lease_ids.push(Some(lease.lease_id.clone()));
                rental_of(cluster, node, &lease, crash.started)
            }
            Err(e) => {
                tracing::error!(renter = %node.name, "crash-pay failed: {e:#}");
                lease_ids.push(None);
                Rental {
                    renter: node.name.clone(),
                    error: Some(format!("{e:#}")),
                    ..Rental::default()
                }
            }
        };
        r.crash = crash.notes;
        rentals.push(r);
    }

    let double_payments = payment_figures(cluster, ledger, &mut rentals).await;
    let criteria_failed = judge(cluster, ledger, &rentals, &lease_ids).await;
    Outcome {
        rentals,
        criteria_failed,
        double_payments: Some(double_payments),
        ..Outcome::default()
    }
}

/// One rental's crash run, with its notes.
struct Crash<'a, 'p> {
    cluster: &'a Cluster,
    bins: &'a Bins,
    placement: Placement<'p>,
    ledger: &'a Ledger,
    started: Instant,
    notes: Vec<String>,
}

impl Crash<'_, '_> {
    /// Records a step, with the seconds since this rental started.
    fn note(&mut self, what: String) {
        let at = self.started.elapsed().as_secs_f32();
        tracing::info!("crash-pay +{at:.1}s: {what}");
        self.notes.push(format!("+{at:.1}s {what}"));
    }

    /// Rents for `renter` while crashing `victim` mid-payment; returns the active lease.
    async fn rent_through(
        &mut self,
        renter: &Node,
        victim: Victim,
        credit: u64,
    ) -> Result<LeaseOut> {
        let cluster = self.cluster;
        self.ledger
            .delay_next_payment(&renter.name, PAYMENT_DELAY)
            .await?;
        // In the background: this CLI call dies with the daemon (or times out waiting for a
        // frozen provider), which is expected and only noted.
        let mut rent = Background(tokio::spawn({
            let (cli, dir) = (cluster.cli.clone(), renter.data_dir.clone());
            async move { cli.rent(&dir, credit, RENT_TIMEOUT_SECS).await }
        }));
        let in_flight = tokio::select! {
            p = self.ledger.wait_in_flight(&renter.name, IN_FLIGHT_TIMEOUT) => p?,
            r = &mut rent.0 => {
                let r = r.context("the rent task")?;
                return Err(anyhow!("rent ended before any payment was in flight: {r:?}"));
            }
        };
        let hash = in_flight.payment_hash.clone();
        self.note(format!(
            "payment {} ({} msat to {}) IN_FLIGHT",
            short(&hash),
            in_flight.amount_msat,
            in_flight.payee
        ));

        let provider = match victim {
            Victim::Renter => {
                cluster.kill_daemon(renter).await?;
                self.note(format!("{} daemon SIGKILLed", renter.name));
                None
            }
            Victim::Provider => {
                let p = cluster
                    .of_kind(Kind::Provider)
                    .find(|p| p.name == in_flight.payee)
                    .ok_or_else(|| anyhow!("payee {:?} is not a provider", in_flight.payee))?;
                cluster.freeze_daemon(p)?;
                self.note(format!("{} daemon frozen (SIGSTOP)", p.name));
                Some(p)
            }
        };

        self.ledger
            .wait_succeeded(&renter.name, &hash, RESOLVE_TIMEOUT)
            .await?;
        self.note(format!("payment {} SUCCEEDED", short(&hash)));

        match provider {
            None => {
                // The CLI lost its daemon: it has failed by now or does so at once.
                self.note_rent(&mut rent).await;
                cluster
                    .start_again(self.bins, self.placement, renter)
                    .await?;
                self.note(format!("{} daemon restarted", renter.name));
            }
            Some(p) => {
                cluster.kill_daemon(p).await?;
                self.note(format!("{} daemon SIGKILLed while frozen", p.name));
                cluster.start_again(self.bins, self.placement, p).await?;
                self.note(format!("{} daemon restarted", p.name));
            }
        }

        let lease = wait_lease(
            &cluster.cli,
            &renter.data_dir,
            LEASE_TIMEOUT,
            LeaseOut::is_active,
        )
        .await
        .context("waiting for the renter's active lease")?;
        self.note(format!(
            "{} holds active lease {}",
            renter.name, lease.lease_id
        ));
        if let Some(p) = provider {
            wait_listed(&cluster.cli, p, &lease.lease_id).await?;
            self.note(format!("{} lists lease {}", p.name, lease.lease_id));
            self.note_rent(&mut rent).await;
        }
        Ok(lease)
    }

    /// Notes how the background `rent` ended, giving it [`RENT_END_WAIT`] to do so before it
    /// is stopped (its outcome does not matter: the lease is judged from `status`).
    async fn note_rent(&mut self, rent: &mut Background) {
        let what = match tokio::time::timeout(RENT_END_WAIT, &mut rent.0).await {
            Ok(Ok(Ok(_))) => "rent CLI returned the lease".to_owned(),
            Ok(Ok(Err(e))) => {
                let msg = format!("{e:#}");
                let last = msg.lines().last().unwrap_or_default();
                format!("rent CLI failed, as expected: {last}")
            }
            Ok(Err(e)) => format!("rent task: {e}"),
            Err(_) => {
                // Aborting drops the child's handle, and kill_on_drop ends the CLI process.
                rent.0.abort();
                format!("rent CLI still waiting after {RENT_END_WAIT:?}; stopped")
            }
        };
        self.note(what);
    }
}

/// The background `rent`, aborted (and its CLI process killed) when dropped, so an early
/// error return leaves nothing running.
struct Background(JoinHandle<Result<RentOut>>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls the provider's `leases` until it lists `lease_id` as active.
///
/// Errors: not within [`LEASE_TIMEOUT`].
async fn wait_listed(cli: &Cli, provider: &Node, lease_id: &str) -> Result<()> {
    let deadline = Instant::now() + LEASE_TIMEOUT;
    loop {
        if let Ok(l) = cli.leases(&provider.data_dir).await
            && l.leases
                .iter()
                .any(|l| l.lease_id == lease_id && l.is_active())
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("{} does not list lease {lease_id} as active", provider.name);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The report entry for a lease obtained through a crash.
fn rental_of(cluster: &Cluster, renter: &Node, lease: &LeaseOut, started: Instant) -> Rental {
    let names = cluster.provider_names();
    let none_if_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Rental {
        renter: renter.name.clone(),
        provider: Some(
            names
                .get(&lease.provider)
                .cloned()
                .unwrap_or_else(|| lease.provider.clone()),
        ),
        ipv4: none_if_empty(&lease.ipv4),
        ipv6: none_if_empty(&lease.ipv6),
        lease_ms: Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)),
        paid_until: Some(lease.paid_until),
        ..Rental::default()
    }
}

/// The scenario's own criteria, checked while the daemons still run.
async fn judge(
    cluster: &Cluster,
    ledger: &Ledger,
    rentals: &[Rental],
    lease_ids: &[Option<String>],
) -> Vec<String> {
    let mut failed = Vec::new();
    for node in cluster.of_kind(Kind::Renter) {
        match cluster.cli.status(&node.data_dir).await {
            Ok(s) => {
                let active = s.leases.iter().filter(|l| l.is_active()).count();
                if active != 1 {
                    failed.push(format!("{} holds {active} active leases, not 1", node.name));
                }
            }
            Err(e) => failed.push(format!("{} status: {e:#}", node.name)),
        }
    }
    let mut listed: HashMap<&str, Vec<String>> = HashMap::new();
    for p in cluster.of_kind(Kind::Provider) {
        match cluster.cli.leases(&p.data_dir).await {
            Ok(l) => {
                listed.insert(&p.name, l.leases.into_iter().map(|l| l.lease_id).collect());
            }
            Err(e) => failed.push(format!("{} leases: {e:#}", p.name)),
        }
    }
    for (r, id) in rentals.iter().zip(lease_ids) {
        if let (Some(p), Some(id)) = (&r.provider, id)
            && let Some(ids) = listed.get(p.as_str())
            && !ids.contains(id)
        {
            failed.push(format!("{p} does not list {}'s lease {id}", r.renter));
        }
    }
    match ledger.audit().await {
        Ok(audit) => {
            for node in cluster.of_kind(Kind::Renter) {
                let n = audit
                    .payments
                    .iter()
                    .filter(|p| p.payer == node.name && p.status == STATUS_SUCCEEDED)
                    .count();
                if n != 1 {
                    failed.push(format!(
                        "{} made {n} SUCCEEDED payments in lnd-sim's ledger, not 1",
                        node.name
                    ));
                }
            }
        }
        Err(e) => failed.push(format!("cannot read lnd-sim's ledger: {e:#}")),
    }
    failed
}

/// The first 8 hex digits of a payment hash, for notes.
fn short(hash: &str) -> &str {
    hash.get(..8).unwrap_or(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn victims_alternate_starting_with_the_renter() {
        let v: Vec<Victim> = (0..4).map(Victim::for_renter).collect();
        assert_eq!(
            v,
            [
                Victim::Renter,
                Victim::Provider,
                Victim::Renter,
                Victim::Provider
            ]
        );
    }

    #[test]
    fn hashes_are_shortened_safely() {
        assert_eq!(short("0123456789abcdef"), "01234567");
        assert_eq!(short("abc"), "abc");
    }

    #[test]
    fn waits_cover_discovery_and_the_delay() {
        assert!(IN_FLIGHT_TIMEOUT > Duration::from_secs(RENT_TIMEOUT_SECS));
        assert!(RESOLVE_TIMEOUT > PAYMENT_DELAY * 2);
    }
}
