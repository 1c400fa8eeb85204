//! `autopay` (`--netns` only): AutoPay keeps healthy leases topped up, and stops paying for a
//! tunnel that was broken on purpose.
//!
//! Steps of [`run`]:
//!
//! 1. every renter rents at once, with little credit (15 s at the scenario's 10 sat/s);
//! 2. once the first leased renter's AutoPay has topped up once, its tunnel is broken: inside
//!    the provider's namespace the renter's peer is removed from the provider's WireGuard
//!    interface (`wg set IFACE peer KEY remove`; the key is found by the leased address in
//!    `wg show IFACE allowed-ips`). The time is recorded;
//! 3. the market runs on its own for [`RUN_AFTER_UP`] after all leases are up (and at least
//!    [`RUN_AFTER_BREAK`] after the break);
//! 4. payment figures from every renter's `status`, checked against lnd-sim's ledger.
//!
//! Pass criteria (besides the common ones): every healthy rental has at least
//! [`MIN_TOPUPS`] top-ups; the broken one has no payment to its provider's node created after
//! the break (ledger) and at least one AutoPay refusal for an unverified tunnel.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};

use super::{payment_figures, wait_lease};
use crate::cluster::{Cluster, Kind, Placement};
use crate::ledger::Ledger;
use crate::netns::Topology;
use crate::procs::run_capture;
use crate::report::Rental;
use crate::scenario::{Outcome, Plan};
use crate::scenarios::quickstart::rent_one;

/// How long the market runs after every lease is up.
const RUN_AFTER_UP: Duration = Duration::from_secs(60);
/// Least time after the break: enough for the credit to fall below the low watermark
/// (20 s topped up, 8 s watermark) and AutoPay to look at it a few times.
const RUN_AFTER_BREAK: Duration = Duration::from_secs(30);
/// Longest wait for the first AutoPay top-up of the rental to break.
const FIRST_TOPUP_TIMEOUT: Duration = Duration::from_secs(45);
/// Top-ups every healthy rental must have had.
const MIN_TOPUPS: u32 = 3;

/// Runs the scenario on a started cluster; see the module doc. Never fails: a step that
/// cannot be done becomes a failed criterion.
pub async fn run(
    cluster: &Cluster,
    placement: Placement<'_>,
    ledger: &Ledger,
    plan: Plan,
) -> Outcome {
    let mut failed = Vec::new();
    let names = cluster.provider_names();
    let all = names.keys().cloned().collect();
    tracing::info!(
        renters = plan.renters,
        credit_sat = plan.credit_sat,
        "renting"
    );
    let rents = cluster
        .of_kind(Kind::Renter)
        .map(|n| rent_one(&cluster.cli, n, plan.credit_sat, &all, &names));
    let mut rentals = futures::future::join_all(rents).await;
    let up = Instant::now();

    let broken = rentals.iter().position(Rental::leased);
    let mut break_ns = None;
    match (broken, placement.topology()) {
        (Some(i), Some(topo)) => {
            match break_after_first_topup(cluster, topo, placement.tag(), &rentals[i], i).await {
                Ok(ns) => break_ns = Some(ns),
                Err(e) => failed.push(format!(
                    "could not break {}'s tunnel: {e:#}",
                    rentals[i].renter
                )),
            }
        }
        (None, _) => failed.push("no rental to break: no renter got a lease".to_owned()),
        (_, None) => failed.push("the autopay scenario needs --netns".to_owned()),
    }
    let broke_at = Instant::now();

    let end = (up + RUN_AFTER_UP).max(broke_at + RUN_AFTER_BREAK);
    tracing::info!(
        secs = (end - Instant::now()).as_secs(),
        "letting AutoPay run"
    );
    tokio::time::sleep_until(end.into()).await;

    let double_payments = payment_figures(cluster, ledger, &mut rentals).await;
    match (ledger.audit().await, break_ns) {
        (Ok(audit), Some(at)) => {
            for (i, r) in rentals.iter_mut().enumerate() {
                r.broken = Some(Some(i) == broken);
                let Some(provider) = &r.provider else {
                    continue;
                };
                let after = audit
                    .payments
                    .iter()
                    .filter(|p| p.payer == r.renter && &p.payee == provider && p.created_at_ns > at)
                    .count();
                r.payments_after_break = Some(u32::try_from(after).unwrap_or(u32::MAX));
            }
        }
        (Err(e), _) => failed.push(format!("cannot read lnd-sim's ledger: {e:#}")),
        (Ok(_), None) => {}
    }
    failed.extend(judge(&rentals));
    Outcome {
        rentals,
        criteria_failed: failed,
        double_payments: Some(double_payments),
        ..Outcome::default()
    }
}

/// Waits for the rental's first AutoPay top-up, then removes the renter's peer from the
/// provider's interface. Returns the break time in Unix nanoseconds (the ledger's clock).
///
/// Errors: no top-up in time, the peer cannot be found, or `wg` fails.
async fn break_after_first_topup(
    cluster: &Cluster,
    topo: &Topology,
    tag: &str,
    rental: &Rental,
    renter_index: usize,
) -> Result<u64> {
    let renter = cluster
        .of_kind(Kind::Renter)
        .nth(renter_index)
        .ok_or_else(|| anyhow!("no renter {renter_index}"))?;
    let ipv4 = rental
        .ipv4
        .clone()
        .ok_or_else(|| anyhow!("the lease has no IPv4 prefix"))?;
    let lease = wait_lease(&cluster.cli, &renter.data_dir, FIRST_TOPUP_TIMEOUT, |l| {
        l.ipv4 == ipv4 && l.autopay_topups >= 1
    })
    .await
    .context("waiting for the first AutoPay top-up")?;
    tracing::info!(renter = %renter.name, topups = lease.autopay_topups, "first AutoPay top-up seen");

    let provider_name = rental.provider.as_deref().unwrap_or_default();
    let provider = cluster
        .of_kind(Kind::Provider)
        .find(|p| p.name == provider_name)
        .ok_or_else(|| anyhow!("provider {provider_name:?} is not in the cluster"))?;
    let ns = topo.provider_ns(provider.index);
    let iface = Kind::Provider.interface(tag, provider.index);
    let shown = wg(topo, ns, &["show", &iface, "allowed-ips"]).await?;
    let key = peer_with(&shown, &ipv4)
        .ok_or_else(|| anyhow!("no peer of {iface} allows {ipv4}: {shown:?}"))?
        .to_owned();
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock before 1970")?;
    wg(topo, ns, &["set", &iface, "peer", &key, "remove"]).await?;
    tracing::warn!(renter = %renter.name, provider = %provider.name, %iface, peer = %key, "tunnel broken on purpose");
    Ok(u64::try_from(at.as_nanos()).unwrap_or(u64::MAX))
}

/// Runs `wg ARGS` in namespace `ns`; returns its stdout.
///
/// Errors: `wg` cannot run or exits non-zero (with its stderr).
pub async fn wg(topo: &Topology, ns: &str, args: &[&str]) -> Result<String> {
    let cmd = tokio::process::Command::from(topo.command(ns, "wg", args));
    let out = run_capture(cmd, Duration::from_secs(10)).await?;
    if !out.status.success() {
        bail!(
            "wg {} failed ({}): {}",
            args.join(" "),
            out.status,
            out.stderr.trim()
        );
    }
    Ok(out.stdout)
}

/// The peer whose allowed IPs include `prefix`, from `wg show IFACE allowed-ips` output
/// (`KEY<TAB>PREFIX PREFIX...` per line).
pub fn peer_with<'a>(shown: &'a str, prefix: &str) -> Option<&'a str> {
    shown.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let key = words.next()?;
        words.any(|w| w == prefix).then_some(key)
    })
}

/// The scenario's criteria over the final figures.
fn judge(rentals: &[Rental]) -> Vec<String> {
    let mut failed = Vec::new();
    for r in rentals.iter().filter(|r| r.leased()) {
        let topups = r.topups.unwrap_or(0);
        if r.broken == Some(true) {
            match r.payments_after_break {
                Some(0) => {}
                Some(n) => failed.push(format!(
                    "{} (broken tunnel) made {n} payments to its provider after the break",
                    r.renter
                )),
                None => failed.push(format!("{}: payments after the break unknown", r.renter)),
            }
            if r.refused_unverified.unwrap_or(0) == 0 {
                failed.push(format!(
                    "{} (broken tunnel): AutoPay never refused to pay for the unverified tunnel",
                    r.renter
                ));
            }
        } else if topups < MIN_TOPUPS {
            failed.push(format!(
                "{} (healthy) had {topups} top-ups, fewer than {MIN_TOPUPS}",
                r.renter
            ));
        } else if r.ledger_payments.unwrap_or(0) <= topups {
            // Activation plus every top-up must be a SUCCEEDED payment in the ledger.
            failed.push(format!(
                "{}: {topups} top-ups but only {:?} ledger payments",
                r.renter, r.ledger_payments
            ));
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_is_found_by_its_allowed_prefix() {
        let shown = "AAAA=\t198.51.100.1/32 2001:db8:100::/64\nBBBB=\t198.51.100.2/32\n";
        assert_eq!(peer_with(shown, "198.51.100.2/32"), Some("BBBB="));
        assert_eq!(peer_with(shown, "2001:db8:100::/64"), Some("AAAA="));
        // A prefix is matched whole, never as a substring.
        assert_eq!(peer_with(shown, "198.51.100.1/3"), None);
        assert_eq!(peer_with("", "198.51.100.1/32"), None);
    }

    fn rental(name: &str, broken: bool, topups: u32, ledger: u32) -> Rental {
        Rental {
            renter: name.into(),
            provider: Some("provider-0".into()),
            topups: Some(topups),
            ledger_payments: Some(ledger),
            broken: Some(broken),
            payments_after_break: Some(0),
            refused_unverified: Some(u32::from(broken)),
            ..Rental::default()
        }
    }

    #[test]
    fn criteria_hold_for_healthy_and_broken_rentals() {
        let ok = [
            rental("renter-0", true, 1, 2),
            rental("renter-1", false, 4, 5),
        ];
        assert!(judge(&ok).is_empty(), "{:?}", judge(&ok));

        let mut bad = ok.clone();
        bad[0].payments_after_break = Some(1);
        bad[0].refused_unverified = Some(0);
        bad[1].topups = Some(2);
        let f = judge(&bad).join("\n");
        assert!(
            f.contains("made 1 payments to its provider after the break"),
            "{f}"
        );
        assert!(f.contains("never refused"), "{f}");
        assert!(f.contains("had 2 top-ups, fewer than 3"), "{f}");

        let mut unmatched = ok.clone();
        unmatched[1].ledger_payments = Some(4);
        assert!(judge(&unmatched)[0].contains("only Some(4) ledger payments"));
    }
}
