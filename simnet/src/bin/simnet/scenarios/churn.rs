//! `churn`: leases come and go the way months of use bring them, in a few minutes of market
//! time (1 sat/s credit, 1 s metering, 2 s renter ticks, `failover_grace = "15s"`).
//!
//! The cast, by index (see [`tune`]): providers with different prices —
//! provider-0 the cheapest (failovers land there), provider-1 that moves its WireGuard port,
//! ends a lease with notice and promises refunds, provider-2 that takes payment and never
//! sends the lease (`[provider.fault] withhold_leases`), provider-3 that is killed for good,
//! provider-4 that leases IPv4 only (/32 and /30), provider-5 IPv6 only. Renters:
//! renter-0 holds several leases (AutoPay off, so nothing it pays is automatic), renter-1 is
//! cheated by provider-2, renter-2 leases from provider-3, renter-3 from provider-1 (both with
//! AutoPay, so they fail over), renter-4 and renter-5 rent one family each. Fewer than four
//! providers or renters cannot run it; with fewer than six the families part is left out.
//!
//! Steps of [`run`]:
//!
//! 1. every renter waits until its `offers` list every provider;
//! 2. at once: renter-0 rents twice from provider-0 (`rent --offer ID --yes`, under the
//!    provider's offer as the renter knows it then) and once from provider-1; renter-1 rents
//!    from provider-2 (pays, gets no lease), then `rent --auto`, which must pick another
//!    provider; renter-2 rents from provider-3, renter-3 from provider-1. With six providers
//!    and six renters, also the families and sizes part (see [`families`]): IPv4-only and
//!    IPv6-only rentals and a /30;
//! 3. renter-0's three leases must all be active; with the file backend provider-0's peer
//!    state (`tunnel/IFACE.state.json`) must hold both of its leases as two peers; with
//!    `--netns` each lease carries traffic both ways (and `wg show` on provider-0 lists both
//!    peers);
//! 4. renter-0 releases its second lease from provider-0 (`release --lease ID --yes`) while
//!    provider-0's `leases` is polled: `release_seen_by_provider_ms`;
//! 5. at once:
//!    - provider-3 is SIGKILLed and never restarted; renter-2 must fail over within
//!      `failover_grace` + 60 s, and nothing may be paid to provider-3 afterwards;
//!    - provider-1's config is rewritten with a new WireGuard port and it is restarted:
//!      renter-0's lease from it must show the new endpoint with no payment by renter-0 in
//!      between (`--netns`: and carry traffic again). Then provider-1 terminates renter-3's
//!      lease with 20 s notice: renter-3's `status` must show it, renter-3 fails over,
//!      renter-3 pays provider-1 nothing after the notice, and once it is over provider-1
//!      refunds the unused credit through lnd-sim;
//! 6. every renter's `status` gives one rental per lease; the ledger gives the figures of
//!    [`ChurnSummary`] (see figures.rs for the criteria on them).

mod faults;
mod figures;
mod finish;
mod rent;

use faults::{doom, move_endpoint, terminate};
use finish::finish;
use rent::{check_multi, families, time_release, timed_rent, wait_offers};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use leasewire::config::Config;
use leasewire::market::sizes::SizePrice;
use serde::Deserialize;

use super::wait_lease;
use crate::cli::{Bins, Cli, LeaseOut, RentOut, Sizes};
use crate::cluster::{Cluster, Kind, NETNS_WG_PORT, Node, Placement};
use crate::dataplane::{self, Prober};
use crate::ledger::{self, Ledger};
use crate::procs::Procs;
use crate::report::{ChurnLease, ChurnSummary, Rental};
use crate::scenario::{Outcome, RENT_TIMEOUT_SECS, STOP_GRACE};

/// Providers the scenario needs (see the module doc for their parts).
pub const PROVIDERS: u16 = 6;
/// Renters the scenario needs.
pub const RENTERS: u16 = 6;
/// Credit of leases that must last the whole run (20 minutes at 1 sat/s).
pub const LONG_CREDIT_SAT: u64 = 1_200;
/// Service bought with the leases that fail over: 70 s, below AutoPay's 60 s low watermark
/// within seconds, so AutoPay tops them up (with `--netns`, where it can verify the tunnel)
/// until their provider dies or gives notice; long enough for either to happen first.
const SHORT_SECS: u64 = 70;
/// The cheapest provider; the bootstrap node.
const P_CHEAP: usize = 0;
/// The provider that moves its WireGuard port and terminates a lease with notice.
const P_MOVER: usize = 1;
/// The provider that takes payment and never sends the lease.
const P_FAULTY: usize = 2;
/// The provider killed for good.
const P_DOOMED: usize = 3;
/// The renter with several leases.
const R_MULTI: usize = 0;
/// The renter cheated by [`P_FAULTY`].
const R_CHEATED: usize = 1;
/// The renter whose provider dies.
const R_ORPHAN: usize = 2;
/// The renter whose lease is terminated with notice.
const R_NOTICED: usize = 3;
/// Credit price of provider `i`, sat/day: 1, 2, 1.5 and 3 sat/s, so provider-0 ranks first.
const RATES: [u64; 4] = [86_400, 172_800, 129_600, 259_200];
/// A lease's family name and IPv4 and IPv6 prefix lengths, as [`ChurnLease::family_of`]
/// gives them.
type Family = (&'static str, Option<u8>, Option<u8>);
/// The IPv4-only provider (/32 and /30), with [`SIZED_PROVIDERS`] providers.
const P_V4ONLY: usize = 4;
/// The IPv6-only provider.
const P_V6ONLY: usize = 5;
/// The renter renting IPv4 only, a /32 and a /30.
const R_V4: usize = 4;
/// The renter renting IPv6 only.
const R_V6: usize = 5;
/// Daily price of a /30 at the IPv4-only provider, on top of its base rate.
const V4_30_RATE: u64 = 86_400;
/// Providers (and renters) from which on the families-and-sizes part runs.
const SIZED_PROVIDERS: usize = 6;
/// Renters' failover grace period.
const FAILOVER_GRACE: Duration = Duration::from_secs(15);
/// Longest a failover may take after the provider's death: the grace period plus a minute.
const FAILOVER_LIMIT: Duration = Duration::from_secs(15 + 60);
/// Notice given with the termination.
const NOTICE_SECS: u64 = 20;
/// `rent --offer`'s wait for the offer: the id was just read from the renter's own `offers`,
/// so it is known at once unless superseded meanwhile.
const OFFER_RENT_TIMEOUT_SECS: u64 = 10;
/// Attempts of a `rent --offer` whose offer id keeps being superseded.
const RENT_ATTEMPTS: u32 = 4;
/// What `rent --offer` says of an offer id the renter no longer knows.
const SUPERSEDED: &str = "not found or not usable";
/// Longest wait for offers of every provider.
const OFFERS_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for the renter to follow a moved endpoint or to show a notice.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(45);
/// How long each traffic check may retry (first handshakes, a re-pointed tunnel).
const TRAFFIC_WINDOW: Duration = Duration::from_secs(30);
/// Longest wait for AutoPay's first top-up of a lease (`--netns`): the lease falls below
/// the 60 s low watermark 10 s after it is bought, then AutoPay's next 2 s pass pays.
const AUTOPAY_TIMEOUT: Duration = Duration::from_secs(40);
/// Longest wait, after a terminated lease's end, for its refund in the ledger: the renter
/// claims it on its next tick (2 s) and the provider pays at once.
const REFUND_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between polls of the provider's `leases` while timing a release.
const RELEASE_POLL: Duration = Duration::from_millis(20);
/// Longest wait for a release to show on the provider's side.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Adjusts node `kind`/`index`'s config for the churn scenario (see the module doc).
pub fn tune(cfg: &mut Config, kind: Kind, index: usize) {
    match kind {
        Kind::Provider => {
            cfg.provider.metering_interval_secs = 1;
            // Field by field, so terms other helpers add keep their defaults.
            let t = &mut cfg.provider.terms;
            t.activation_fee_sat = 10;
            t.rate_sat_per_day = RATES.get(index).copied().unwrap_or(RATES[0]);
            t.min_initial_credit_sat = 10;
            t.min_topup_sat = 10;
            t.max_credit_sat = 1_000_000;
            t.reserve_days = 1;
            // provider-1 promises refunds: its termination must pay one back.
            t.refund_unused = index == P_MOVER;
            cfg.provider.fault.withhold_leases = index == P_FAULTY;
            let size = |prefix_len, rate_sat_per_day| SizePrice {
                prefix_len,
                rate_sat_per_day,
            };
            match index {
                P_V4ONLY => {
                    cfg.provider.ipv6_pools.clear();
                    cfg.provider.ipv6_sizes.clear();
                    cfg.provider.ipv4_sizes = vec![size(32, 0), size(30, V4_30_RATE)];
                }
                P_V6ONLY => {
                    cfg.provider.ipv4_pools.clear();
                    cfg.provider.ipv4_sizes.clear();
                }
                _ => {}
            }
        }
        Kind::Renter | Kind::Intruder => {
            cfg.renter.failover_grace = Some(FAILOVER_GRACE);
            let a = &mut cfg.renter.autopay;
            // renter-0 pays only when told to: its endpoint check counts its payments.
            a.enabled = index != R_MULTI;
            a.low_watermark = Duration::from_secs(60);
            a.high_watermark = Duration::from_secs(120);
            a.check_interval = Duration::from_secs(2);
            a.probe_timeout = Duration::from_secs(2);
        }
    }
}

/// Credit for [`SHORT_SECS`] of service from provider `i`.
fn short_credit(i: usize) -> u64 {
    RATES[i] * SHORT_SECS / leasewire::types::DAY_SECS
}

/// Unix nanoseconds now: the ledger's clock.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The leased addresses a traffic check uses: every address of the IPv4 prefix and the
/// renter's address in the IPv6 prefix.
fn addresses(ipv4: Option<&str>, ipv6: Option<&str>) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    if let Some(v4) = ipv4.filter(|p| !p.is_empty()) {
        out.extend(dataplane::leased_v4_all(v4)?.into_iter().map(IpAddr::V4));
    }
    if let Some(v6) = ipv6.filter(|p| !p.is_empty()) {
        out.push(IpAddr::V6(dataplane::leased_v6(v6)?));
    }
    Ok(out)
}

/// With `--netns`: real traffic both ways on every address of the lease
/// ([`dataplane::check_addresses`]).
async fn traffic(
    p: &Prober<'_>,
    renter: &Node,
    ipv4: Option<&str>,
    ipv6: Option<&str>,
) -> (bool, Vec<String>) {
    match addresses(ipv4, ipv6) {
        Ok(a) => dataplane::check_addresses(p, renter, &a, TRAFFIC_WINDOW).await,
        Err(e) => (false, vec![format!("{e:#}")]),
    }
}

/// What the run learned along the way, for the report.
#[derive(Debug, Default)]
struct Notes {
    /// Criteria that did not hold.
    failed: Vec<String>,
    /// Lease id → what the scenario did with it.
    roles: HashMap<String, Vec<String>>,
    /// Lease id → ms from the start of its `rent` to holding it.
    lease_ms: HashMap<String, u64>,
    /// Lease id → whether it carried traffic (`--netns`).
    traffic: HashMap<String, bool>,
    /// Most active leases seen at one renter at once.
    leases_max: u32,
    release_ms: Option<u64>,
    endpoint_followed: bool,
}

impl Notes {
    fn role(&mut self, lease_id: &str, role: impl Into<String>) {
        self.roles
            .entry(lease_id.to_owned())
            .or_default()
            .push(role.into());
    }

    /// Takes in what a step run alongside others noted.
    fn merge(&mut self, other: Notes) {
        self.failed.extend(other.failed);
        for (id, roles) in other.roles {
            self.roles.entry(id).or_default().extend(roles);
        }
        self.lease_ms.extend(other.lease_ms);
        self.traffic.extend(other.traffic);
        self.leases_max = self.leases_max.max(other.leases_max);
        self.release_ms = self.release_ms.or(other.release_ms);
        self.endpoint_followed |= other.endpoint_followed;
    }

    fn fail(&mut self, what: impl Into<String>) {
        let what = what.into();
        tracing::error!("churn check failed: {what}");
        self.failed.push(what);
    }
}

/// The cast: nodes by part.
struct Cast<'a> {
    providers: Vec<&'a Node>,
    renters: Vec<&'a Node>,
}

/// Runs the steps of the module doc on a started cluster.
///
/// Errors: (netns) the internet host's probe listeners did not start. Everything else that
/// goes wrong is a failed criterion.
pub async fn run(
    cluster: &Cluster,
    root: &Path,
    bins: &Bins,
    procs: &Arc<Procs>,
    placement: Placement<'_>,
    ledger: &Ledger,
) -> Result<Outcome> {
    let cast = Cast {
        providers: cluster.of_kind(Kind::Provider).collect(),
        renters: cluster.of_kind(Kind::Renter).collect(),
    };
    if cast.providers.len() < usize::from(PROVIDERS) || cast.renters.len() < usize::from(RENTERS) {
        return Ok(Outcome {
            criteria_failed: vec![format!(
                "the churn scenario needs at least {PROVIDERS} providers and {RENTERS} renters"
            )],
            ..Outcome::default()
        });
    }
    let prober = match placement {
        Placement::Host => None,
        Placement::Netns { topo, .. } => {
            let p = Prober {
                topo,
                exe: std::env::current_exe().context("cannot find simnet's own executable")?,
                procs: procs.clone(),
                log_dir: dataplane::log_dir(root)?,
            };
            dataplane::start_internet_listeners(&p).await?;
            Some(p)
        }
    };
    let mut notes = Notes::default();
    let names = cluster.provider_names();
    let start_ns = now_ns();

    // 1. Offers of every provider at every renter.
    let want: HashSet<String> = names.keys().cloned().collect();
    let offers = futures::future::join_all(
        cast.renters
            .iter()
            .map(|r| wait_offers(&cluster.cli, r, &want)),
    )
    .await;
    if let Err(e) = offers.into_iter().collect::<Result<Vec<_>>>() {
        notes.fail(format!("offers: {e:#}"));
        return Ok(finish(cluster, ledger, &cast, notes, start_ns, None).await);
    }
    let prov = |i: usize| cast.providers[i];

    // 2. Every renter's rents, at once.
    tracing::info!("renting");
    let cli = &cluster.cli;
    let multi = async {
        let mut got = Vec::new();
        for i in [P_CHEAP, P_CHEAP, P_MOVER] {
            let renter = cast.renters[R_MULTI];
            got.push(timed_rent(cli, renter, prov(i), LONG_CREDIT_SAT, Sizes::default()).await);
        }
        got
    };
    let cheated = async {
        let r = cast.renters[R_CHEATED];
        let first = timed_rent(cli, r, prov(P_FAULTY), LONG_CREDIT_SAT, Sizes::default()).await;
        let started = Instant::now();
        let second = cli
            .rent(&r.data_dir, LONG_CREDIT_SAT, RENT_TIMEOUT_SECS)
            .await
            .map(|out| (out, millis(started.elapsed())));
        (first, second)
    };
    let orphan = timed_rent(
        cli,
        cast.renters[R_ORPHAN],
        prov(P_DOOMED),
        short_credit(P_DOOMED),
        Sizes::default(),
    );
    let noticed = timed_rent(
        cli,
        cast.renters[R_NOTICED],
        prov(P_MOVER),
        short_credit(P_MOVER),
        Sizes::default(),
    );
    let families = families(cli, &cast, prober.as_ref());
    let (multi, (cheat_first, cheat_second), orphan, noticed, fam) =
        tokio::join!(multi, cheated, orphan, noticed, families);
    notes.merge(fam);

    let held = |notes: &mut Notes, who: &str, r: Result<(RentOut, u64)>| -> Option<RentOut> {
        match r {
            Ok((out, ms)) => {
                notes.lease_ms.insert(out.lease_id.clone(), ms);
                Some(out)
            }
            Err(e) => {
                notes.fail(format!("{who}: {e:#}"));
                None
            }
        }
    };
    let multi: Vec<Option<RentOut>> = multi
        .into_iter()
        .enumerate()
        .map(|(i, r)| held(&mut notes, &format!("renter-0 rent #{}", i + 1), r))
        .collect();
    let orphan = held(&mut notes, "renter-2 rent from provider-3", orphan);
    let noticed = held(&mut notes, "renter-3 rent from provider-1", noticed);
    match cheat_first {
        Ok((out, _)) => notes.fail(format!(
            "renter-1 got lease {} from the provider that withholds leases",
            out.lease_id
        )),
        Err(e) => tracing::info!("renter-1's rent from provider-2 failed as it must: {e:#}"),
    }
    if let Some(out) = held(
        &mut notes,
        "renter-1 rent --auto after the cheat",
        cheat_second,
    ) {
        notes.role(&out.lease_id, "rented after an undelivered payment");
        if out.provider == cast.providers[P_FAULTY].peer_id {
            notes.fail("renter-1's rent --auto picked the provider that took its money again");
        }
    }

    // 3. renter-0's three leases.
    check_multi(
        cluster,
        &cast,
        prober.as_ref(),
        placement,
        &multi,
        &mut notes,
    )
    .await;

    // 4. Release the second lease from provider-0.
    if let Some(Some(second)) = multi.get(1) {
        notes.role(&second.lease_id, "released");
        match time_release(cli, cast.renters[R_MULTI], cast.providers[P_CHEAP], second).await {
            Ok(ms) => notes.release_ms = Some(ms),
            Err(e) => notes.fail(format!("release: {e:#}")),
        }
    }

    // 5. Death of provider-3 and the moves of provider-1, at once.
    let doom = async {
        let mut n = Notes::default();
        let death_ns = doom(cluster, &cast, prober.as_ref(), orphan.as_ref(), &mut n).await;
        (n, death_ns)
    };
    let mover = async {
        let mut n = Notes::default();
        let b = multi.get(2).and_then(Option::as_ref);
        move_endpoint(
            cluster,
            bins,
            placement,
            prober.as_ref(),
            &cast,
            ledger,
            b,
            &mut n,
        )
        .await;
        terminate(
            cluster,
            &cast,
            prober.as_ref(),
            ledger,
            noticed.as_ref(),
            &mut n,
        )
        .await;
        n
    };
    let ((dn, death_ns), mn) = tokio::join!(doom, mover);
    notes.merge(dn);
    notes.merge(mn);
    if let Some(p) = &prober {
        dataplane::stop_listeners(&p.procs).await;
    }
    Ok(finish(cluster, ledger, &cast, notes, start_ns, death_ns).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_cover_the_subnet_and_the_v6_host() {
        let a = addresses(Some("198.51.100.4/30"), Some("2001:db8:100::/64")).unwrap();
        assert_eq!(a.len(), 5);
        assert_eq!(a[0], "198.51.100.4".parse::<IpAddr>().unwrap());
        assert_eq!(a[4], "2001:db8:100::1".parse::<IpAddr>().unwrap());
        assert_eq!(addresses(Some(""), Some("2001:db8::/64")).unwrap().len(), 1);
        assert!(addresses(None, None).unwrap().is_empty());
    }

    #[test]
    fn the_cast_is_tuned() {
        let mut faulty = Config::default();
        tune(&mut faulty, Kind::Provider, P_FAULTY);
        assert!(faulty.provider.fault.withhold_leases);
        assert_eq!(faulty.provider.metering_interval_secs, 1);
        let mut cheap = Config::default();
        tune(&mut cheap, Kind::Provider, P_CHEAP);
        assert!(!cheap.provider.fault.withhold_leases);
        assert_eq!(cheap.provider.terms.credit_secs(60), 60);
        let cost = |i: usize| {
            let mut c = Config::default();
            tune(&mut c, Kind::Provider, i);
            leasewire::market::select::cost_msat_per_day(&c.provider.terms, 120).unwrap()
        };
        // Failovers must land on provider-0: it is the cheapest.
        assert!((1..4).all(|i| cost(P_CHEAP) < cost(i)));
        let mut multi = Config::default();
        tune(&mut multi, Kind::Renter, R_MULTI);
        assert!(!multi.renter.autopay.enabled);
        assert_eq!(multi.renter.failover_grace, Some(FAILOVER_GRACE));
        let mut orphan = Config::default();
        tune(&mut orphan, Kind::Renter, R_ORPHAN);
        assert!(orphan.renter.autopay.enabled);
        assert_eq!(orphan.renter.autopay.validate(), Ok(()));
        let mut mover = Config::default();
        tune(&mut mover, Kind::Provider, P_MOVER);
        assert!(mover.provider.terms.refund_unused && !cheap.provider.terms.refund_unused);
        let mut v4 = Config::default();
        tune(&mut v4, Kind::Provider, P_V4ONLY);
        assert!(v4.provider.ipv6_pools.is_empty() && v4.provider.ipv6_sizes.is_empty());
        let lens: Vec<u8> = v4
            .provider
            .ipv4_sizes
            .iter()
            .map(|s| s.prefix_len)
            .collect();
        assert_eq!(lens, [32, 30]);
        let mut v6 = Config::default();
        tune(&mut v6, Kind::Provider, P_V6ONLY);
        assert!(v6.provider.ipv4_pools.is_empty() && v6.provider.ipv4_sizes.is_empty());
        assert!(!v6.provider.ipv6_sizes.is_empty());
        for c in [&v4, &v6, &faulty, &mover] {
            let mut c = c.clone();
            c.node.roles = vec![leasewire::config::Role::Provider];
            assert_eq!(c.validate().map_err(|e| e.to_string()), Ok(()));
        }
        // 70 s of service at each provider's price.
        assert_eq!(short_credit(P_DOOMED), 210);
        assert_eq!(short_credit(P_MOVER), 140);
    }
}
