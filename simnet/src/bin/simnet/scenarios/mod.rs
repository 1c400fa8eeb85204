//! The scenarios `simnet --scenario NAME` runs, and what they share: the config tuning of
//! each ([`Scenario::tune`]) and the payment figures every rental reports, read from the
//! renter's `status` and cross-checked against lnd-sim's own ledger ([`payment_figures`]).
//!
//! - `quickstart` ([`quickstart`]): everyone rents at once; the default.
//! - `crash-pay` ([`crash_pay`]): daemons crash in the middle of a payment and must neither pay
//!   twice nor lose the lease.
//! - `autopay` ([`autopay`], `--netns`): AutoPay keeps healthy leases topped up and stops paying
//!   for a tunnel that was broken on purpose.
//! - `churn` ([`churn`]): several leases per renter, release, termination, an endpoint change,
//!   a provider killed for good and one that takes payment and never delivers.
//! - `discovery` ([`discovery`]): providers announce, then every renter starts at once and is
//!   timed until it has verified every provider's offer; nothing is rented.
//! - `siege` ([`siege`]): adversarial members attack the market one attack at a time while
//!   honest renters keep renting; judged against issue 11's thresholds.

pub mod autopay;
pub mod churn;
pub mod crash_pay;
pub mod discovery;
pub mod quickstart;
pub mod siege;

use std::time::Duration;

use leasewire::config::Config;
use leasewire::types::Terms;

use crate::cli::{Cli, LeaseOut};
use crate::cluster::{Cluster, Kind};
use crate::ledger::{self, Ledger};
use crate::report::Rental;

/// Which scenario to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Everyone rents at once (with `--netns`, every lease's data plane is checked).
    #[default]
    Quickstart,
    /// Renter and provider daemons are killed while a payment is in flight.
    CrashPay,
    /// AutoPay tops healthy leases up and refuses to pay for a broken tunnel (implies
    /// `--netns`).
    Autopay,
    /// Leases come and go: several per renter, release, termination, an endpoint change, a
    /// provider killed for good, one that never delivers.
    Churn,
    /// Every renter starts at once and is timed until it knows every provider's signed offer
    /// (no renting); mirrors the Hyperswarm discovery anchor.
    Discovery,
    /// Adversarial members attack, one attack at a time, while honest renters keep renting.
    Siege,
}

/// AutoPay scenario prices: 864 000 sat/day is 10 sat per second, so a lease's paid time
/// moves fast enough for several top-ups within a minute.
pub const AUTOPAY_RATE_SAT_PER_DAY: u64 = 864_000;
/// Smallest top-up the AutoPay providers accept.
pub const AUTOPAY_MIN_TOPUP_SAT: u64 = 50;

impl Scenario {
    /// The name as `--scenario` and the JSON spell it.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Quickstart => "quickstart",
            Scenario::CrashPay => "crash-pay",
            Scenario::Autopay => "autopay",
            Scenario::Churn => "churn",
            Scenario::Discovery => "discovery",
            Scenario::Siege => "siege",
        }
    }

    /// Whether it only makes sense in network namespaces (real WireGuard to verify).
    pub fn needs_netns(self) -> bool {
        self == Scenario::Autopay
    }

    /// `(providers, renters)` when the command line does not say.
    pub fn default_counts(self) -> (u16, u16) {
        match self {
            Scenario::Quickstart => (3, 5),
            Scenario::CrashPay => (1, 2),
            Scenario::Autopay => (2, 3),
            Scenario::Churn => (churn::PROVIDERS, churn::RENTERS),
            Scenario::Discovery => (5, 5),
            Scenario::Siege => (siege::PROVIDERS, siege::RENTERS),
        }
    }

    /// Credit each renter buys, in sat, unless `--credit` says otherwise; `None` keeps the
    /// quickstart default.
    pub fn default_credit_sat(self) -> Option<u64> {
        match self {
            Scenario::Quickstart | Scenario::Discovery => None,
            // Any amount: the payment is what matters.
            Scenario::CrashPay => Some(500),
            // 15 s at 10 sat/s: AutoPay's first top-up comes within seconds.
            Scenario::Autopay => Some(150),
            // Each of its rents chooses its own credit; this is the default for the others.
            Scenario::Churn => Some(churn::LONG_CREDIT_SAT),
            // Its rents choose their credit (siege.rs); this is only the nominal figure.
            Scenario::Siege => Some(siege::HELD_CREDIT_SAT),
        }
    }

    /// How many daemons after the bootstrap provider start together, each batch ready before
    /// the next; `None` starts them all at once.
    pub fn start_batch(self) -> Option<usize> {
        match self {
            Scenario::Discovery => Some(discovery::START_BATCH),
            _ => None,
        }
    }

    /// Whether renters wait for `Cluster::start_held` instead of starting with the cluster.
    pub fn holds_renters(self) -> bool {
        self == Scenario::Discovery
    }

    /// Adjusts the config of node `kind`/`index` for this scenario (after the common simnet
    /// settings, which leave AutoPay off).
    pub fn tune(self, cfg: &mut Config, kind: Kind, index: usize) {
        match self {
            Scenario::Quickstart => {}
            Scenario::Discovery => {
                // Hundreds of idle providers: meter rarely (nothing is leased) so their ticks
                // do not compete with discovery for the CPU.
                if kind == Kind::Provider {
                    cfg.provider.metering_interval_secs = discovery::METERING_INTERVAL_SECS;
                }
                // The daemon's default discovery interval, not the simnet's 2 s: this scenario
                // measures discovery as a user's node runs it. (At 2 s, every renter walks the
                // DHT every 2 s: twenty renters make ten walks a second among hundreds of
                // providers.) A renter's first pass comes with its first member anyway, and a
                // provider whose first announce reached nobody announces again as soon as a
                // DHT peer is routable.
                cfg.node.discovery_interval_secs = discovery::DISCOVERY_INTERVAL_SECS;
            }
            Scenario::CrashPay => {
                if kind == Kind::Provider {
                    // The provider's pending-invoice watcher runs on this tick; a short one
                    // issues the lease soon after a restarted provider comes back.
                    cfg.provider.metering_interval_secs = 1;
                }
            }
            Scenario::Autopay => match kind {
                Kind::Provider => {
                    cfg.provider.metering_interval_secs = 1;
                    cfg.provider.terms = Terms {
                        activation_fee_sat: 10,
                        rate_sat_per_day: AUTOPAY_RATE_SAT_PER_DAY,
                        min_initial_credit_sat: 50,
                        min_topup_sat: AUTOPAY_MIN_TOPUP_SAT,
                        max_credit_sat: 1_000_000,
                        reserve_days: 1,
                        refund_unused: false,
                        reservation_secs: 0,
                    };
                }
                Kind::Renter | Kind::Intruder => {
                    let a = &mut cfg.renter.autopay;
                    a.enabled = true;
                    a.low_watermark = Duration::from_secs(8);
                    a.high_watermark = Duration::from_secs(20);
                    a.check_interval = Duration::from_secs(2);
                    a.probe_timeout = Duration::from_secs(2);
                    // WireGuard re-handshakes only every 2 minutes; the default 3 minutes
                    // covers that, and the ICMP probe is what catches a broken peer.
                }
            },
            Scenario::Churn => churn::tune(cfg, kind, index),
            Scenario::Siege => siege::tune(cfg, kind, index),
        }
    }
}

/// The lease of `leases` that `rental` describes: the one with its IPv4 prefix, else the only
/// one, else the newest.
pub fn lease_of<'a>(rental: &Rental, leases: &'a [LeaseOut]) -> Option<&'a LeaseOut> {
    rental
        .ipv4
        .as_deref()
        .and_then(|v4| leases.iter().find(|l| l.ipv4 == v4))
        .or_else(|| leases.last())
}

/// Fills every rental's `payments`, `paid_sat`, `topups` and `refused_unverified` from its
/// renter's `status`, and `ledger_payments` from lnd-sim's ledger (the renter's SUCCEEDED
/// payments to that provider's node); a disagreement goes into the rental's `mismatch`.
/// Returns the ledger's double-payment count, or why it could not be read.
///
/// Runs while the daemons are still up; rentals are in renter order.
pub async fn payment_figures(
    cluster: &Cluster,
    ledger: &Ledger,
    rentals: &mut [Rental],
) -> Result<u64, String> {
    let audit = ledger.audit().await.map_err(|e| format!("{e:#}"))?;
    for (node, r) in cluster.of_kind(Kind::Renter).zip(rentals.iter_mut()) {
        match cluster.cli.status(&node.data_dir).await {
            Ok(s) => apply_status(r, &s.leases),
            Err(e) => r.mismatch = Some(format!("status: {e:#}")),
        }
        let Some(provider) = r.provider.clone() else {
            continue;
        };
        let paid = ledger::succeeded(&audit.payments, &node.name, &provider);
        r.ledger_payments = Some(u32::try_from(paid.len()).unwrap_or(u32::MAX));
        let ledger_sat: u64 = paid.iter().map(|p| p.amount_msat / 1000).sum();
        if r.mismatch.is_none() {
            r.mismatch = cross_check(r, ledger_sat);
        }
    }
    Ok(ledger::double_payments(&audit))
}

/// Copies the figures of the rental's lease out of the renter's `status` leases.
fn apply_status(r: &mut Rental, leases: &[LeaseOut]) {
    match lease_of(r, leases) {
        Some(l) => {
            r.payments = Some(l.payments);
            r.paid_sat = Some(l.paid_sat);
            r.topups = Some(l.topups);
            r.refused_unverified = Some(l.refused_unverified);
        }
        None if r.leased() => r.mismatch = Some("status lists no lease".to_owned()),
        None => {}
    }
}

/// Why the renter's own figures disagree with the ledger, if they do.
fn cross_check(r: &Rental, ledger_sat: u64) -> Option<String> {
    let (Some(mine), Some(theirs)) = (r.payments, r.ledger_payments) else {
        return None;
    };
    if mine != theirs {
        return Some(format!(
            "status says {mine} payments, lnd-sim's ledger has {theirs} succeeded"
        ));
    }
    match r.paid_sat {
        Some(p) if p != ledger_sat => Some(format!(
            "status says {p} sat paid, lnd-sim's ledger has {ledger_sat} sat"
        )),
        _ => None,
    }
}

/// Polls `status` until `pred` holds for one of the renter's leases or `timeout` passes.
///
/// Errors: the time ran out (with the last error or what the leases looked like).
pub async fn wait_lease(
    cli: &Cli,
    dir: &std::path::Path,
    timeout: Duration,
    pred: impl Fn(&LeaseOut) -> bool,
) -> anyhow::Result<LeaseOut> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let last = match cli.status(dir).await {
            Ok(s) => match s.leases.iter().find(|l| pred(l)) {
                Some(l) => return Ok(l.clone()),
                None => format!(
                    "leases: {:?}",
                    s.leases
                        .iter()
                        .map(|l| (&l.state, l.payments, l.topups))
                        .collect::<Vec<_>>()
                ),
            },
            Err(e) => format!("{e:#}"),
        };
        if std::time::Instant::now() >= deadline {
            anyhow::bail!("not within {timeout:?} ({last})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ipv4: &str, payments: u32, paid_sat: u64) -> LeaseOut {
        LeaseOut {
            ipv4: ipv4.to_owned(),
            state: "active".to_owned(),
            payments,
            paid_sat,
            topups: payments.saturating_sub(1),
            ..LeaseOut::default()
        }
    }

    fn rental(ipv4: Option<&str>) -> Rental {
        Rental {
            renter: "renter-0".into(),
            provider: Some("provider-0".into()),
            ipv4: ipv4.map(str::to_owned),
            ..Rental::default()
        }
    }

    #[test]
    fn lease_is_matched_by_address_then_newest() {
        let ls = [
            lease("198.51.100.1/32", 1, 10),
            lease("198.51.100.2/32", 2, 20),
        ];
        let r = rental(Some("198.51.100.1/32"));
        assert_eq!(lease_of(&r, &ls).unwrap().paid_sat, 10);
        assert_eq!(lease_of(&rental(None), &ls).unwrap().paid_sat, 20);
        assert!(lease_of(&r, &[]).is_none());
    }

    #[test]
    fn status_figures_and_ledger_must_agree() {
        let mut r = rental(Some("198.51.100.1/32"));
        apply_status(&mut r, &[lease("198.51.100.1/32", 3, 390)]);
        assert_eq!(
            (r.payments, r.topups, r.paid_sat, r.refused_unverified),
            (Some(3), Some(2), Some(390), Some(0))
        );
        r.ledger_payments = Some(3);
        assert_eq!(cross_check(&r, 390), None);
        assert!(cross_check(&r, 400).unwrap().contains("390 sat"));
        r.ledger_payments = Some(4);
        assert!(cross_check(&r, 390).unwrap().contains("4 succeeded"));
        let mut lost = rental(None);
        apply_status(&mut lost, &[]);
        assert_eq!(lost.mismatch.as_deref(), Some("status lists no lease"));
    }

    #[test]
    fn scenarios_tune_terms_and_autopay() {
        let mut p = Config::default();
        Scenario::Autopay.tune(&mut p, Kind::Provider, 0);
        assert_eq!(p.provider.terms.credit_secs(150), 15);
        assert_eq!(p.provider.terms.min_topup_sat, 50);
        assert_eq!(p.provider.metering_interval_secs, 1);
        let mut r = Config::default();
        r.renter.autopay.enabled = false;
        Scenario::Autopay.tune(&mut r, Kind::Renter, 0);
        assert!(r.renter.autopay.enabled);
        assert_eq!(r.renter.autopay.low_watermark, Duration::from_secs(8));
        assert_eq!(r.renter.autopay.validate(), Ok(()));
        let mut c = Config::default();
        let before = c.clone();
        Scenario::Quickstart.tune(&mut c, Kind::Provider, 0);
        assert_eq!(c, before);
        Scenario::CrashPay.tune(&mut c, Kind::Provider, 0);
        assert_eq!(c.provider.metering_interval_secs, 1);
        assert!(Scenario::Autopay.needs_netns() && !Scenario::CrashPay.needs_netns());
        assert_eq!(Scenario::CrashPay.default_counts(), (1, 2));
    }

    #[test]
    fn discovery_keeps_providers_quiet_and_holds_renters() {
        let mut p = Config::default();
        Scenario::Discovery.tune(&mut p, Kind::Provider, 0);
        assert_eq!(
            p.provider.metering_interval_secs,
            discovery::METERING_INTERVAL_SECS
        );
        assert_eq!(
            p.node.discovery_interval_secs,
            Config::default().node.discovery_interval_secs
        );
        // Renters, which are timed, are left as the simnet configures them.
        let mut r = Config::default();
        Scenario::Discovery.tune(&mut r, Kind::Renter, 0);
        assert_eq!(r, Config::default());
        assert!(Scenario::Discovery.holds_renters() && !Scenario::Quickstart.holds_renters());
        assert_eq!(
            Scenario::Discovery.start_batch(),
            Some(discovery::START_BATCH)
        );
        assert_eq!(Scenario::Quickstart.start_batch(), None);
        assert!(!Scenario::Discovery.needs_netns());
    }
}
