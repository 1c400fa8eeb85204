//! `churn`: leases come and go the way months of use bring them, in a few minutes of market
//! time (1 sat/s credit, 1 s metering, 2 s renter ticks, `failover_grace = "15s"`).
//!
//! The cast, by index (see [`tune`]): providers with different prices —
//! provider-0 the cheapest (failovers land there), provider-1 that moves its WireGuard port
//! and ends a lease with notice, provider-2 that takes payment and never sends the lease
//! (`[provider.fault] withhold_leases`), provider-3 that is killed for good. Renters:
//! renter-0 holds several leases (AutoPay off, so nothing it pays is automatic), renter-1 is
//! cheated by provider-2, renter-2 leases from provider-3, renter-3 from provider-1 (both with
//! AutoPay, so they fail over).
//!
//! Steps of [`run`]:
//!
//! 1. every renter waits until its `offers` list every provider;
//! 2. at once: renter-0 rents twice from provider-0 (`rent --offer ... --yes`) and once from
//!    provider-1; renter-1 rents from provider-2 (pays, gets no lease), then `rent --auto`,
//!    which must pick another provider; renter-2 rents from provider-3, renter-3 from
//!    provider-1;
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
//!      lease with 20 s notice: renter-3's `status` must show it, renter-3 fails over, and
//!      renter-3 pays provider-1 nothing after the notice;
//! 6. every renter's `status` gives one rental per lease; the ledger gives the figures of
//!    [`ChurnSummary`] (see figures.rs for the criteria on them).

mod figures;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use leasewire::config::Config;
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
pub const PROVIDERS: u16 = 4;
/// Renters the scenario needs.
pub const RENTERS: u16 = 4;
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
/// Providers (and renters) from which on the families-and-sizes part runs.
const SIZED_PROVIDERS: usize = 6;
/// Renters' failover grace period.
const FAILOVER_GRACE: Duration = Duration::from_secs(15);
/// Longest a failover may take after the provider's death: the grace period plus a minute.
const FAILOVER_LIMIT: Duration = Duration::from_secs(15 + 60);
/// Notice given with the termination.
const NOTICE_SECS: u64 = 20;
/// Longest wait for offers of every provider.
const OFFERS_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for the renter to follow a moved endpoint or to show a notice.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(45);
/// How long each traffic check may retry (first handshakes, a re-pointed tunnel).
const TRAFFIC_WINDOW: Duration = Duration::from_secs(30);
/// Longest wait for AutoPay's first top-up of a lease (`--netns`): the lease falls below
/// the 60 s low watermark 10 s after it is bought, then AutoPay's next 2 s pass pays.
const AUTOPAY_TIMEOUT: Duration = Duration::from_secs(40);
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
            cfg.provider.fault.withhold_leases = index == P_FAULTY;
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
            .map(|r| offer_ids(&cluster.cli, r, &want)),
    )
    .await;
    let offers = match offers.into_iter().collect::<Result<Vec<_>>>() {
        Ok(o) => o,
        Err(e) => {
            notes.fail(format!("offers: {e:#}"));
            return Ok(finish(cluster, ledger, &cast, notes, start_ns, None).await);
        }
    };
    let offer = |renter: usize, provider: usize| -> String {
        offers[renter]
            .get(&cast.providers[provider].peer_id)
            .cloned()
            .unwrap_or_default()
    };

    // 2. Every renter's rents, at once.
    tracing::info!("renting");
    let cli = &cluster.cli;
    let multi = async {
        let mut got = Vec::new();
        for (p, credit) in [
            (P_CHEAP, LONG_CREDIT_SAT),
            (P_CHEAP, LONG_CREDIT_SAT),
            (P_MOVER, LONG_CREDIT_SAT),
        ] {
            got.push(timed_rent(cli, cast.renters[R_MULTI], &offer(R_MULTI, p), credit).await);
        }
        got
    };
    let cheated = async {
        let r = cast.renters[R_CHEATED];
        let first = timed_rent(cli, r, &offer(R_CHEATED, P_FAULTY), LONG_CREDIT_SAT).await;
        let started = Instant::now();
        let second = cli
            .rent(&r.data_dir, LONG_CREDIT_SAT, RENT_TIMEOUT_SECS)
            .await
            .map(|out| (out, millis(started.elapsed())));
        (first, second)
    };
    let (doomed_offer, mover_offer) = (offer(R_ORPHAN, P_DOOMED), offer(R_NOTICED, P_MOVER));
    let orphan = timed_rent(
        cli,
        cast.renters[R_ORPHAN],
        &doomed_offer,
        short_credit(P_DOOMED),
    );
    let noticed = timed_rent(
        cli,
        cast.renters[R_NOTICED],
        &mover_offer,
        short_credit(P_MOVER),
    );
    let families = families(cli, &cast, &offer, prober.as_ref());
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

/// Families and sizes, with a cluster of at least [`SIZED_PROVIDERS`] providers and as many
/// renters: renter-4 rents IPv4 only from the IPv4-only provider-4, a /32 and then a /30
/// (`--ipv4 32|30 --ipv6 none`); renter-5 rents IPv6 only from the IPv6-only provider-5
/// (`--ipv4 none --ipv6 64`). Each lease must have exactly the family and size asked for;
/// with `--netns` every address of each (all four of the /30) carries traffic both ways.
async fn families(
    cli: &Cli,
    cast: &Cast<'_>,
    offer: &impl Fn(usize, usize) -> String,
    prober: Option<&Prober<'_>>,
) -> Notes {
    let mut notes = Notes::default();
    if cast.providers.len() < SIZED_PROVIDERS || cast.renters.len() < SIZED_PROVIDERS {
        return notes;
    }
    let v4 = |len: &'static str| Sizes {
        ipv4: Some(len),
        ipv6: Some("none"),
    };
    let v6 = Sizes {
        ipv4: Some("none"),
        ipv6: Some("64"),
    };
    // (renter, provider, what to ask for, the family and lengths that must come back)
    let plan: [(usize, usize, Sizes, Family); 3] = [
        (R_V4, P_V4ONLY, v4("32"), ("ipv4", Some(32), None)),
        (R_V4, P_V4ONLY, v4("30"), ("ipv4", Some(30), None)),
        (R_V6, P_V6ONLY, v6, ("ipv6", None, Some(64))),
    ];
    for (r, p, sizes, want) in plan {
        let renter = cast.renters[r];
        let started = Instant::now();
        let out = match cli
            .rent_offer_sized(
                &renter.data_dir,
                &offer(r, p),
                LONG_CREDIT_SAT,
                RENT_TIMEOUT_SECS,
                sizes,
            )
            .await
        {
            Ok(o) => o,
            Err(e) => {
                notes.fail(format!("{} rent {sizes:?}: {e:#}", renter.name));
                continue;
            }
        };
        notes
            .lease_ms
            .insert(out.lease_id.clone(), millis(started.elapsed()));
        let got = ChurnLease::family_of(out.ipv4.as_deref(), out.ipv6.as_deref());
        if got != want {
            notes.fail(format!(
                "{} asked for {sizes:?} and got {:?} / {:?}",
                renter.name, out.ipv4, out.ipv6
            ));
            continue;
        }
        notes.role(&out.lease_id, format!("{} only, asked for", want.0));
        if let Some(p) = prober {
            let (ok, why) = match addresses(out.ipv4.as_deref(), out.ipv6.as_deref()) {
                Ok(a) => dataplane::check_addresses(p, renter, &a, TRAFFIC_WINDOW).await,
                Err(e) => (false, vec![format!("{e:#}")]),
            };
            notes.traffic.insert(out.lease_id.clone(), ok);
            if !ok {
                notes.fail(format!(
                    "{} lease {} ({:?}) carries no traffic on every address: {}",
                    renter.name,
                    out.lease_id,
                    out.ipv4.as_deref().or(out.ipv6.as_deref()),
                    why.join("; ")
                ));
            }
        }
    }
    notes
}

/// Polls the renter's `offers` until every provider of `want` is listed; returns provider peer
/// id → offer id.
///
/// Errors: not within [`OFFERS_TIMEOUT`].
async fn offer_ids(
    cli: &Cli,
    renter: &Node,
    want: &HashSet<String>,
) -> Result<HashMap<String, String>> {
    let deadline = Instant::now() + OFFERS_TIMEOUT;
    loop {
        let seen: HashMap<String, String> = match cli.offers(&renter.data_dir).await {
            Ok(o) => o
                .offers
                .into_iter()
                .map(|o| (o.provider, o.offer_id))
                .collect(),
            Err(e) => {
                tracing::debug!(renter = %renter.name, "offers: {e:#}");
                HashMap::new()
            }
        };
        if want.iter().all(|p| seen.contains_key(p)) {
            return Ok(seen);
        }
        if Instant::now() >= deadline {
            bail!(
                "{} listed {} of {} providers within {OFFERS_TIMEOUT:?}",
                renter.name,
                want.iter().filter(|p| seen.contains_key(*p)).count(),
                want.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `rent --offer ID`, timed.
async fn timed_rent(
    cli: &Cli,
    renter: &Node,
    offer_id: &str,
    credit: u64,
) -> Result<(RentOut, u64)> {
    if offer_id.is_empty() {
        bail!("{} knows no offer of that provider", renter.name);
    }
    let started = Instant::now();
    let out = cli
        .rent_offer(&renter.data_dir, offer_id, credit, RENT_TIMEOUT_SECS)
        .await?;
    tracing::info!(renter = %renter.name, lease_id = %out.lease_id, ipv4 = ?out.ipv4, "leased");
    Ok((out, millis(started.elapsed())))
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

/// Step 3: renter-0's leases are all active at once; provider-0 holds its two as two peers;
/// with `--netns` each carries traffic.
async fn check_multi(
    cluster: &Cluster,
    cast: &Cast<'_>,
    prober: Option<&Prober<'_>>,
    placement: Placement<'_>,
    multi: &[Option<RentOut>],
    notes: &mut Notes,
) {
    let renter = cast.renters[R_MULTI];
    let leases: Vec<&RentOut> = multi.iter().flatten().collect();
    match cluster.cli.status(&renter.data_dir).await {
        Ok(s) => {
            let active = leases
                .iter()
                .filter(|l| {
                    s.leases
                        .iter()
                        .any(|x| x.lease_id == l.lease_id && x.is_active())
                })
                .count();
            notes.leases_max = notes.leases_max.max(u32::try_from(active).unwrap_or(0));
            if active < 3 {
                notes.fail(format!("renter-0 holds {active} active leases, not 3"));
            }
        }
        Err(e) => notes.fail(format!("renter-0 status: {e:#}")),
    }
    let from_cheap: Vec<&RentOut> = multi.iter().take(2).flatten().collect();
    if from_cheap.len() == 2 {
        let p0 = cast.providers[P_CHEAP];
        let peers = match placement {
            Placement::Host => file_peers(&p0.data_dir, &Kind::Provider.interface("", p0.index)),
            Placement::Netns { topo, tag } => {
                let iface = Kind::Provider.interface(tag, p0.index);
                crate::scenarios::autopay::wg(
                    topo,
                    topo.provider_ns(p0.index),
                    &["show", &iface, "allowed-ips"],
                )
                .await
                .map(|shown| {
                    shown
                        .lines()
                        .map(|l| l.split_whitespace().skip(1).map(str::to_owned).collect())
                        .collect()
                })
            }
        };
        match peers {
            Ok(peers) => {
                if let Err(e) = two_peers(&peers, from_cheap[0], from_cheap[1]) {
                    notes.fail(format!("provider-0's peer state: {e}"));
                }
            }
            Err(e) => notes.fail(format!("provider-0's peer state: {e:#}")),
        }
    }
    if let Some(p) = prober {
        let checks = leases.iter().map(|l| async move {
            let (ok, why) = match addresses(l.ipv4.as_deref(), l.ipv6.as_deref()) {
                Ok(a) => dataplane::check_addresses(p, renter, &a, TRAFFIC_WINDOW).await,
                Err(e) => (false, vec![format!("{e:#}")]),
            };
            (l.lease_id.clone(), ok, why)
        });
        for (id, ok, why) in futures::future::join_all(checks).await {
            notes.traffic.insert(id.clone(), ok);
            if !ok {
                notes.fail(format!(
                    "renter-0 lease {id} carries no traffic: {}",
                    why.join("; ")
                ));
            }
        }
    }
}

/// The allowed IPs of every peer in the file backend's state of interface `iface`
/// (`DATA/tunnel/IFACE.state.json`).
///
/// Errors: the file cannot be read or parsed.
fn file_peers(data_dir: &Path, iface: &str) -> Result<Vec<Vec<String>>> {
    #[derive(Deserialize)]
    struct State {
        peers: Vec<Peer>,
    }
    #[derive(Deserialize)]
    struct Peer {
        allowed_ips: Vec<String>,
    }
    let path = data_dir.join("tunnel").join(format!("{iface}.state.json"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let state: State =
        serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
    Ok(state.peers.into_iter().map(|p| p.allowed_ips).collect())
}

/// Whether `peers` (each peer's allowed IPs) route each lease's prefixes to a peer of its own.
fn two_peers(peers: &[Vec<String>], a: &RentOut, b: &RentOut) -> Result<(), String> {
    let peer_of = |l: &RentOut| -> Result<usize, String> {
        let prefixes: Vec<&str> = [l.ipv4.as_deref(), l.ipv6.as_deref()]
            .into_iter()
            .flatten()
            .filter(|p| !p.is_empty())
            .collect();
        let i = peers
            .iter()
            .position(|ips| prefixes.iter().all(|p| ips.iter().any(|x| x == p)))
            .ok_or_else(|| format!("no peer routes {prefixes:?} (peers: {peers:?})"))?;
        Ok(i)
    };
    let (pa, pb) = (peer_of(a)?, peer_of(b)?);
    if pa == pb {
        return Err(format!(
            "leases {} and {} share one peer",
            a.lease_id, b.lease_id
        ));
    }
    Ok(())
}

/// Step 4: releases `lease` while polling the provider's `leases`; returns the ms from the
/// release command's start to the provider showing the lease released.
///
/// Errors: the release fails or the provider does not show it within [`RELEASE_TIMEOUT`].
async fn time_release(cli: &Cli, renter: &Node, provider: &Node, lease: &RentOut) -> Result<u64> {
    let started = Instant::now();
    let release = cli.release(&renter.data_dir, &lease.lease_id);
    let seen = async {
        loop {
            if let Ok(l) = cli.leases(&provider.data_dir).await
                && l.leases
                    .iter()
                    .any(|x| x.lease_id == lease.lease_id && x.state == "released")
            {
                return millis(started.elapsed());
            }
            if started.elapsed() > RELEASE_TIMEOUT {
                return u64::MAX;
            }
            tokio::time::sleep(RELEASE_POLL).await;
        }
    };
    let (released, ms) = tokio::join!(release, seen);
    let out = released.context("release")?;
    tracing::info!(lease_id = %lease.lease_id, forfeit_sat = out.paid_sat, ms, "released");
    if ms == u64::MAX {
        bail!(
            "provider-0 did not show lease {} released within {RELEASE_TIMEOUT:?}",
            lease.lease_id
        );
    }
    Ok(ms)
}

/// Step 5, death: SIGKILLs provider-3 and waits for renter-2's failover. Returns the time of
/// death (Unix ns) once the process is gone.
async fn doom(
    cluster: &Cluster,
    cast: &Cast<'_>,
    prober: Option<&Prober<'_>>,
    orphan: Option<&RentOut>,
    notes: &mut Notes,
) -> Option<u64> {
    let doomed = cast.providers[P_DOOMED];
    if let (Some(_), Some(old)) = (prober, orphan) {
        autopay_first(cluster, cast.renters[R_ORPHAN], &old.lease_id, notes).await;
    }
    if let Err(e) = cluster.kill_daemon(doomed).await {
        notes.fail(format!("cannot kill provider-3: {e:#}"));
        return None;
    }
    let death = now_ns();
    let died = Instant::now();
    tracing::warn!("provider-3 killed for good");
    let Some(old) = orphan else {
        return Some(death);
    };
    notes.role(&old.lease_id, "provider killed");
    let renter = cast.renters[R_ORPHAN];
    match wait_lease(&cluster.cli, &renter.data_dir, FAILOVER_LIMIT, |l| {
        l.failed_over_from == old.lease_id && l.is_active()
    })
    .await
    {
        Ok(new) => {
            tracing::info!(secs = died.elapsed().as_secs(), new = %new.lease_id, "renter-2 failed over");
            notes.role(
                &new.lease_id,
                format!("failover after {} s", died.elapsed().as_secs()),
            );
            replacement_traffic(prober, renter, &new, notes).await;
        }
        Err(e) => notes.fail(format!(
            "renter-2 did not fail over within {FAILOVER_LIMIT:?} of provider-3's death: {e:#}"
        )),
    }
    Some(death)
}

/// Step 5, endpoint: provider-1 moves to a new WireGuard port; renter-0's lease `lease` from
/// it must follow with no payment by renter-0 meanwhile.
#[allow(clippy::too_many_arguments)]
async fn move_endpoint(
    cluster: &Cluster,
    bins: &Bins,
    placement: Placement<'_>,
    prober: Option<&Prober<'_>>,
    cast: &Cast<'_>,
    ledger: &Ledger,
    lease: Option<&RentOut>,
    notes: &mut Notes,
) {
    let Some(lease) = lease else { return };
    notes.role(&lease.lease_id, "endpoint moved");
    let renter = cast.renters[R_MULTI];
    let mover = cast.providers[P_MOVER];
    let before = now_ns();
    let endpoint = match rewrite_port(mover, placement).await {
        Ok(e) => e,
        Err(e) => return notes.fail(format!("cannot move provider-1: {e:#}")),
    };
    tracing::info!(%endpoint, "restarting provider-1 on a new WireGuard port");
    if let Err(e) = cluster
        .restart_daemon(bins, placement, mover, STOP_GRACE)
        .await
    {
        return notes.fail(format!("cannot restart provider-1: {e:#}"));
    }
    let id = lease.lease_id.clone();
    let followed = wait_lease(&cluster.cli, &renter.data_dir, FOLLOW_TIMEOUT, |l| {
        l.lease_id == id && l.endpoint == endpoint
    })
    .await;
    if let Err(e) = followed {
        return notes.fail(format!(
            "renter-0 did not follow provider-1 to {endpoint}: {e:#}"
        ));
    }
    let paid = match ledger.audit().await {
        Ok(a) => figures::succeeded_after(&a.payments, Some(&renter.name), None, before).count(),
        Err(e) => return notes.fail(format!("ledger: {e:#}")),
    };
    if paid > 0 {
        return notes.fail(format!(
            "renter-0 made {paid} payments while following the move"
        ));
    }
    notes.endpoint_followed = true;
    if let Some(p) = prober {
        let (ok, why) = match addresses(lease.ipv4.as_deref(), lease.ipv6.as_deref()) {
            Ok(a) => dataplane::check_addresses(p, renter, &a, TRAFFIC_WINDOW).await,
            Err(e) => (false, vec![format!("{e:#}")]),
        };
        notes.traffic.insert(lease.lease_id.clone(), ok);
        if !ok {
            notes.fail(format!(
                "renter-0's lease from provider-1 carries no traffic after the move: {}",
                why.join("; ")
            ));
        }
    }
}

/// Rewrites `node`'s config with a new WireGuard listen port and the endpoint that goes with
/// it; returns the new endpoint.
///
/// Errors: the config cannot be read, changed or written.
async fn rewrite_port(node: &Node, placement: Placement<'_>) -> Result<String> {
    let path = node.data_dir.join("config.toml");
    let mut cfg = Config::load(&path)?;
    let port = match placement {
        // Its own namespace: any other port is free.
        Placement::Netns { .. } => NETNS_WG_PORT + 1,
        Placement::Host => std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .context("cannot find a free UDP port")?
            .port(),
    };
    let host = cfg
        .provider
        .endpoint
        .rsplit_once(':')
        .map(|(h, _)| h.to_owned())
        .ok_or_else(|| anyhow!("endpoint {:?} has no port", cfg.provider.endpoint))?;
    cfg.provider.endpoint = format!("{host}:{port}");
    cfg.tunnel.listen_port = port;
    cfg.validate()?;
    std::fs::write(&path, cfg.to_toml())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(cfg.provider.endpoint)
}

/// Step 5, notice: provider-1 terminates renter-3's lease with notice; the notice must show
/// in renter-3's `status`, renter-3 must fail over and pay provider-1 nothing more.
async fn terminate(
    cluster: &Cluster,
    cast: &Cast<'_>,
    prober: Option<&Prober<'_>>,
    ledger: &Ledger,
    lease: Option<&RentOut>,
    notes: &mut Notes,
) {
    let Some(lease) = lease else { return };
    notes.role(&lease.lease_id, "terminated with notice");
    let renter = cast.renters[R_NOTICED];
    let provider = cast.providers[P_MOVER];
    if prober.is_some() {
        autopay_first(cluster, renter, &lease.lease_id, notes).await;
    }
    let at = now_ns();
    if let Err(e) = cluster
        .cli
        .terminate(&provider.data_dir, &lease.lease_id, NOTICE_SECS)
        .await
    {
        return notes.fail(format!("terminate: {e:#}"));
    }
    let id = lease.lease_id.clone();
    let shown = wait_lease(&cluster.cli, &renter.data_dir, FOLLOW_TIMEOUT, |l| {
        l.lease_id == id && l.terminates_at > 0
    })
    .await;
    let ends_at = match shown {
        Ok(l) => l.terminates_at,
        Err(e) => return notes.fail(format!("renter-3's status never showed the notice: {e:#}")),
    };
    match wait_lease(&cluster.cli, &renter.data_dir, FOLLOW_TIMEOUT, |l| {
        l.failed_over_from == id && l.is_active()
    })
    .await
    {
        Ok(new) => {
            notes.role(&new.lease_id, "failover after a termination notice");
            replacement_traffic(prober, renter, &new, notes).await;
        }
        Err(e) => notes.fail(format!(
            "renter-3 did not fail over after the notice: {e:#}"
        )),
    }
    // AutoPay gets its chance to (wrongly) pay until the notice is over.
    let end = UNIX_EPOCH + Duration::from_secs(ends_at + 2);
    if let Ok(wait) = end.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    match ledger.audit().await {
        Ok(a) => {
            let n =
                figures::succeeded_after(&a.payments, Some(&renter.name), Some(&provider.name), at)
                    .count();
            if n > 0 {
                notes.fail(format!(
                    "renter-3 paid provider-1 {n} times after the notice"
                ));
            }
        }
        Err(e) => notes.fail(format!("ledger: {e:#}")),
    }
}

/// With `--netns`, where AutoPay can verify tunnels: waits for AutoPay's first top-up of
/// `lease_id`, so that what follows (death, notice) stops a payer that was paying.
async fn autopay_first(cluster: &Cluster, renter: &Node, lease_id: &str, notes: &mut Notes) {
    match wait_lease(&cluster.cli, &renter.data_dir, AUTOPAY_TIMEOUT, |l| {
        l.lease_id == lease_id && l.autopay_topups >= 1
    })
    .await
    {
        Ok(_) => notes.role(lease_id, "topped up by AutoPay"),
        Err(e) => notes.fail(format!(
            "{}: AutoPay never topped up lease {lease_id}: {e:#}",
            renter.name
        )),
    }
}

/// With `--netns`: the replacement lease a failover bought carries traffic.
async fn replacement_traffic(
    prober: Option<&Prober<'_>>,
    renter: &Node,
    new: &LeaseOut,
    notes: &mut Notes,
) {
    let Some(p) = prober else { return };
    let (ok, why) = match addresses(Some(&new.ipv4), Some(&new.ipv6)) {
        Ok(a) => dataplane::check_addresses(p, renter, &a, TRAFFIC_WINDOW).await,
        Err(e) => (false, vec![format!("{e:#}")]),
    };
    notes.traffic.insert(new.lease_id.clone(), ok);
    if !ok {
        notes.fail(format!(
            "{}: the replacement lease {} carries no traffic: {}",
            renter.name,
            new.lease_id,
            why.join("; ")
        ));
    }
}

/// Step 6: one rental per lease from every renter's `status`, the ledger's figures and the
/// criteria on them.
async fn finish(
    cluster: &Cluster,
    ledger: &Ledger,
    cast: &Cast<'_>,
    mut notes: Notes,
    start_ns: u64,
    death_ns: Option<u64>,
) -> Outcome {
    let names = cluster.provider_names();
    let audit = match ledger.audit().await {
        Ok(a) => Some(a),
        Err(e) => {
            notes.fail(format!("cannot read lnd-sim's ledger: {e:#}"));
            None
        }
    };
    let mut rentals = Vec::new();
    let mut undelivered = BTreeMap::new();
    let mut failovers = 0;
    for renter in &cast.renters {
        let leases = match cluster.cli.status(&renter.data_dir).await {
            Ok(s) => s.leases,
            Err(e) => {
                notes.fail(format!("{} status: {e:#}", renter.name));
                continue;
            }
        };
        let active = leases.iter().filter(|l| l.is_active()).count();
        notes.leases_max = notes.leases_max.max(u32::try_from(active).unwrap_or(0));
        let provider_of = |l: &LeaseOut| {
            names
                .get(&l.provider)
                .cloned()
                .unwrap_or_else(|| l.provider.clone())
        };
        let by_id: HashMap<&str, &LeaseOut> =
            leases.iter().map(|l| (l.lease_id.as_str(), l)).collect();
        let counted: Vec<figures::Counted> = leases
            .iter()
            .map(|l| figures::Counted {
                provider: provider_of(l),
                payments: l.payments,
                paid_sat: l.paid_sat,
            })
            .collect();
        let mut missing = 0;
        if let Some(a) = &audit {
            for (provider, (no_lease, ledger_sat, status_sat)) in
                figures::unaccounted(&a.payments, &renter.name, &counted)
            {
                missing += no_lease;
                // A payment that bought nothing explains the difference; anything else is a
                // disagreement between the renter and the ledger.
                if no_lease == 0 || counted.iter().any(|c| c.provider == provider) {
                    notes.fail(format!(
                        "{} payments to {provider}: status says {status_sat} sat, lnd-sim's \
                         ledger has {ledger_sat} sat",
                        renter.name
                    ));
                }
            }
        }
        undelivered.insert(renter.name.clone(), missing);
        for l in &leases {
            let from = (!l.failed_over_from.is_empty()).then(|| {
                by_id
                    .get(l.failed_over_from.as_str())
                    .map_or_else(|| l.failed_over_from.clone(), |old| provider_of(old))
            });
            failovers += u32::from(from.is_some());
            let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
            let (family, ipv4_len, ipv6_len) = ChurnLease::family_of(Some(&l.ipv4), Some(&l.ipv6));
            rentals.push(Rental {
                renter: renter.name.clone(),
                provider: Some(provider_of(l)),
                ipv4: opt(&l.ipv4),
                ipv6: opt(&l.ipv6),
                paid_sat: Some(l.paid_sat),
                payments: Some(l.payments),
                topups: Some(l.topups),
                refused_unverified: Some(l.refused_unverified),
                lease_ms: notes.lease_ms.get(&l.lease_id).copied(),
                paid_until: Some(l.paid_until),
                churn: Some(ChurnLease {
                    lease_id: l.lease_id.clone(),
                    state: l.state.clone(),
                    family,
                    ipv4_len,
                    ipv6_len,
                    failed_over_from: from,
                    roles: notes.roles.get(&l.lease_id).cloned().unwrap_or_default(),
                    traffic_ok: notes.traffic.get(&l.lease_id).copied(),
                }),
                ..Rental::default()
            });
        }
    }
    let node_names =
        |k: Kind| -> Vec<String> { cluster.of_kind(k).map(|n| n.name.clone()).collect() };
    let (paid_after_death_sat, refunds_sat, double_payments) = match &audit {
        Some(a) => (
            death_ns.map_or(0, |at| {
                figures::sat_after(&a.payments, None, Some(&cast.providers[P_DOOMED].name), at)
            }),
            figures::refunds_sat(
                &a.payments,
                &node_names(Kind::Provider),
                &node_names(Kind::Renter),
            ),
            Ok(ledger::double_payments(a)),
        ),
        None => (0, 0, Err("the ledger could not be read".to_owned())),
    };
    if let Some(a) = &audit {
        let faulty = &cast.providers[P_FAULTY].name;
        let paid = figures::succeeded_after(&a.payments, None, Some(faulty), start_ns).count();
        if paid != 1 {
            notes.fail(format!(
                "provider-2 (never delivers) was paid {paid} times, not once"
            ));
        }
    }
    let summary = ChurnSummary {
        leases_per_renter_max: notes.leases_max,
        failovers,
        paid_after_death_sat,
        refunds_sat,
        undelivered_paid: undelivered,
        endpoint_followed: notes.endpoint_followed,
        release_seen_by_provider_ms: notes.release_ms,
    };
    notes.failed.extend(figures::judge(&summary, false));
    Outcome {
        rentals,
        criteria_failed: notes.failed,
        double_payments: Some(double_payments),
        churn: Some(summary),
        ..Outcome::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rent(id: &str, v4: &str, v6: &str) -> RentOut {
        RentOut {
            lease_id: id.into(),
            provider: "P".into(),
            ipv4: Some(v4.into()),
            ipv6: Some(v6.into()),
            paid_sat: 1,
            paid_until: None,
        }
    }

    #[test]
    fn two_leases_need_two_peers() {
        let a = rent("a", "198.51.100.1/32", "2001:db8:100::/64");
        let b = rent("b", "198.51.100.2/32", "2001:db8:100:1::/64");
        let ips = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let two = [
            ips(&["198.51.100.1/32", "2001:db8:100::/64"]),
            ips(&["198.51.100.2/32", "2001:db8:100:1::/64"]),
        ];
        assert_eq!(two_peers(&two, &a, &b), Ok(()));
        // The old bug: one peer whose allowed IPs were replaced by the newest lease.
        let one = [ips(&["198.51.100.2/32", "2001:db8:100:1::/64"])];
        assert!(
            two_peers(&one, &a, &b)
                .unwrap_err()
                .contains("no peer routes")
        );
        let shared = [ips(&[
            "198.51.100.1/32",
            "2001:db8:100::/64",
            "198.51.100.2/32",
            "2001:db8:100:1::/64",
        ])];
        assert!(
            two_peers(&shared, &a, &b)
                .unwrap_err()
                .contains("share one peer")
        );
    }

    #[test]
    fn file_backend_state_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tunnel")).unwrap();
        std::fs::write(
            dir.path().join("tunnel/lwp0.state.json"),
            r#"{"version":1,"spec":{},"peers":[{"public_key":"k","allowed_ips":["198.51.100.1/32"]}]}"#,
        )
        .unwrap();
        assert_eq!(
            file_peers(dir.path(), "lwp0").unwrap(),
            [vec!["198.51.100.1/32".to_owned()]]
        );
        assert!(file_peers(dir.path(), "lwp1").is_err());
    }

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
        // 70 s of service at each provider's price.
        assert_eq!(short_credit(P_DOOMED), 210);
        assert_eq!(short_credit(P_MOVER), 140);
    }
}
