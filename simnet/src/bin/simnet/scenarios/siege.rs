//! `siege`: the market under attack keeps serving its honest renters (issue 11).
//!
//! A small market (3 providers, 2 renters, 10 sat/s so credit moves fast) is attacked by
//! adversarial members, one attack at a time, each for `--attack-secs` seconds. The attacks
//! (see attacker/) run in a process of their own, `simnet attack`, against every provider
//! (and for the replay poisoning every renter):
//!
//! 1. `replay-poison`: valid envelopes dated 110 s ahead from 17 identities per daemon
//!    (renters too: envelopes to a renter pass a replay cache as well);
//! 2. `oversized`: 60 KB `agent` strings and offer ids;
//! 3. `floods`: hello floods and wrong-key membership handshakes from fresh identities;
//! 4. `hold-open`: raw connections, extra connections and never-finishing streams;
//! 5. `reservation-grab`: fresh identities reserving addresses they never pay for;
//! 6. `garbage`: broken framing, non-envelopes, bad signatures, garbage handshakes;
//! 7. `full-disk`: provider-1's data dir is a small tmpfs ([`TMPFS_MB`] MiB), filled for
//!    the attack's duration and freed after it (root only: otherwise `SKIPPED`, in the JSON
//!    and on stderr). Provider-1 is the cheapest, so the honest renters rent from it unless
//!    it refuses; its daemon must recover by itself.
//!
//! Steps of [`run`]: every renter waits for every provider's offer and rents one lease it
//! holds all run with AutoPay on; then per attack, at once: the attack, each honest renter
//! renting and releasing in a loop (`rent --auto`, `release`), and a sampler of every daemon's
//! resident set and open file descriptors (`/proc`). After each attack (and a short settling
//! time) the report takes the growth of every daemon's store, AutoPay's top-ups of the held
//! leases, and the providers' active leases without a tunnel peer.
//!
//! The "Done when" of issue 11 is judged per attack ([`judge`]); `double_payments` (lnd-sim's
//! ledger) and `audit_ok` (every node's `audit verify` after the daemons stopped) come from
//! the common frame (scenario.rs). With the file tunnel backend (no `--netns`) AutoPay cannot
//! verify a tunnel and so never tops up: `autopay_topups` stays 0 there and is not judged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use leasewire::config::Config;
use leasewire::datadir::DataDir;
use serde::Serialize;

use crate::attacker::{AttackKind, AttackerStats};
use crate::cli::{Cli, LeaseOut, RentOut};
use crate::cluster::{Cluster, Kind, Node, Placement};
use crate::ledger::Ledger;
use crate::procs::run_capture;
use crate::report::Rental;
use crate::scenario::{Outcome, Plan};

/// Providers when the command line does not say.
pub const PROVIDERS: u16 = 3;
/// Renters when the command line does not say.
pub const RENTERS: u16 = 2;
/// Default length of each attack: 7 attacks plus start and stop stay under 3 minutes.
pub const DEFAULT_ATTACK_SECS: u64 = 12;
/// Price: 864 000 sat/day is 10 sat/s, so AutoPay tops up within seconds.
pub const RATE_SAT_PER_DAY: u64 = 864_000;
/// The full-disk provider's price, 9 sat/s: the cheapest, so honest renters go there first.
pub const FULL_DISK_RATE_SAT_PER_DAY: u64 = 777_600;
/// The provider whose data dir is a tmpfs that the full-disk attack fills (not provider-0,
/// the bootstrap node, whose DHT role would blur what the attack shows).
pub const FULL_DISK_PROVIDER: usize = 1;
/// Credit of each rent of the honest rent-and-release loop (the providers' minimum).
const CYCLE_CREDIT_SAT: u64 = 50;
/// Credit of the lease each renter holds all run, without `--netns` (300 s at 10 sat/s:
/// AutoPay cannot top up without a tunnel it can verify).
pub const HELD_CREDIT_SAT: u64 = 3_000;
/// Credit of the held lease with `--netns` (15 s): AutoPay must keep it alive.
const NETNS_HELD_CREDIT_SAT: u64 = 150;
/// How long one honest `rent` may wait for offers and the lease.
const RENT_TIMEOUT_SECS: u64 = 20;
/// Pause after an honest rent failed, so a refusing market is not hammered by its own renters.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Pause of an honest renter between a release and its next rent: a brisk but human pace
/// (two rentals a second per renter), so that the store growth measured during an attack is
/// mostly the attack's and not dozens of honest rentals a second.
const HONEST_PACE: Duration = Duration::from_millis(500);
/// The disk floor of the full-disk provider (`provider.min_free_disk_mib`): below the free
/// space its [`TMPFS_MB`] MiB tmpfs keeps once the ballast is gone (the default 64 MiB floor is
/// larger than the whole tmpfs, and would refuse every rent after the attack).
const FULL_DISK_FLOOR_MIB: u64 = 8;
/// Time after each attack before its after-figures are taken.
const SETTLE: Duration = Duration::from_secs(2);
/// How often every daemon's `/proc` is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Size of the full-disk provider's tmpfs data dir.
pub const TMPFS_MB: u64 = 48;
/// How long after `rent` returned the provider's tunnel may take to show the lease's peer.
const TUNNEL_WAIT: Duration = Duration::from_secs(2);
/// How long a provider may take to answer `status` again once its disk has space.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for every provider's offer at a renter.
const OFFERS_TIMEOUT: Duration = Duration::from_secs(60);
/// Issue 11's bound on an honest rent's 99th percentile.
pub const MAX_RENT_P99_MS: u64 = 3_000;
/// Issue 11's bound on any daemon's resident set.
pub const MAX_RSS_MB: f64 = 150.0;
/// Issue 11's bound on audit growth per attack minute.
pub const MAX_AUDIT_BYTES_PER_MIN: u64 = 5 * 1024 * 1024;
/// Most honest-rent errors quoted per attack.
const ERRORS_KEPT: usize = 5;

/// One attack of the siege, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// Run by the attacker process.
    Net(AttackKind),
    /// The full-disk provider's tmpfs filled.
    FullDisk,
}

/// Every attack, in order. Those whose effects can outlast them on a market without the
/// defences come last: a full disk can hang its provider, and reservations hold addresses
/// for as long as their invoices live.
pub const ATTACKS: [Attack; 7] = [
    Attack::Net(AttackKind::ReplayPoison),
    Attack::Net(AttackKind::Oversized),
    Attack::Net(AttackKind::Floods),
    Attack::Net(AttackKind::HoldOpen),
    Attack::Net(AttackKind::Garbage),
    Attack::FullDisk,
    Attack::Net(AttackKind::ReservationGrab),
];

impl Attack {
    /// The name the JSON and `simnet attack --attack` use.
    pub fn name(self) -> &'static str {
        match self {
            Attack::Net(AttackKind::ReplayPoison) => "replay-poison",
            Attack::Net(AttackKind::Oversized) => "oversized",
            Attack::Net(AttackKind::Floods) => "floods",
            Attack::Net(AttackKind::HoldOpen) => "hold-open",
            Attack::Net(AttackKind::ReservationGrab) => "reservation-grab",
            Attack::Net(AttackKind::Garbage) => "garbage",
            Attack::FullDisk => "full-disk",
        }
    }
}

/// One honest rent that got a lease.
#[derive(Debug)]
struct HonestRent {
    /// From the start of `rent` to the lease.
    ms: u64,
    /// The provider's peer id.
    provider: String,
    /// Whether the provider's tunnel carried the lease's prefixes.
    tunnel: bool,
}

/// The siege's figures, flattened into the report's top level.
#[derive(Debug, Default, Serialize)]
pub struct SiegeSummary {
    /// Seconds each attack ran.
    pub attack_secs: u64,
    /// One entry per attack, in order.
    pub attacks: Vec<AttackReport>,
}

impl SiegeSummary {
    /// One line per attack for the human table.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let num = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |n| n.to_string());
        let mut out = format!(
            "siege:     {} s per attack\n{:<17} {:>6} {:>5} {:>6} {:>7} {:>7} {:>6} {:>10} {:>5} {:>6}  {}\n",
            self.attack_secs,
            "ATTACK",
            "STATUS",
            "OK",
            "FAILED",
            "P50 MS",
            "P99 MS",
            "RSS MB",
            "STORE B",
            "NOTUN",
            "FDS",
            "VERDICT"
        );
        for a in &self.attacks {
            let rss = a.rss_mb_max.values().copied().fold(0.0_f64, f64::max);
            let fds = a.fds_max.values().copied().max().unwrap_or(0);
            let _ = writeln!(
                out,
                "{:<17} {:>6} {:>5} {:>6} {:>7} {:>7} {:>6.1} {:>10} {:>5} {:>6}  {}",
                a.attack,
                if a.skipped.is_some() { "SKIP" } else { "ran" },
                a.honest_rentals_ok,
                a.honest_rentals_failed,
                num(a.rent_ms_p50),
                num(a.rent_ms_p99),
                rss,
                a.audit_bytes_written,
                a.paid_without_tunnel,
                fds,
                if a.skipped.is_some() {
                    "SKIPPED"
                } else if a.passed {
                    "pass"
                } else {
                    "FAIL"
                }
            );
        }
        out
    }
}

/// What one attack did to the market.
#[derive(Debug, Default, Serialize)]
pub struct AttackReport {
    /// The attack's name.
    pub attack: &'static str,
    /// `ran`, or `SKIPPED` (then `skipped` says why and nothing else is judged).
    pub status: &'static str,
    /// Why it did not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// How long it ran, seconds.
    pub secs: f64,
    /// Honest `rent`s that got a lease meanwhile.
    pub honest_rentals_ok: u32,
    /// Honest `rent`s that failed meanwhile.
    pub honest_rentals_failed: u32,
    /// Median milliseconds of the honest rents that succeeded.
    pub rent_ms_p50: Option<u64>,
    /// 99th percentile milliseconds of the honest rents that succeeded.
    pub rent_ms_p99: Option<u64>,
    /// Honest rents that succeeded, by the provider that leased.
    pub honest_by_provider: BTreeMap<String, u32>,
    /// Per daemon: its largest resident set meanwhile, MiB.
    pub rss_mb_max: BTreeMap<String, f64>,
    /// Per daemon: most open file descriptors meanwhile.
    pub fds_max: BTreeMap<String, u64>,
    /// Growth of every daemon's store (the sled db holding the audit log) over the attack,
    /// bytes.
    pub audit_bytes_written: u64,
    /// Paid leases without a tunnel peer: honest rents whose provider did not carry the new
    /// lease (within 2 s of `rent` returning), plus active leases without one after the
    /// attack.
    pub paid_without_tunnel: u32,
    /// AutoPay top-ups of the held leases meanwhile.
    pub autopay_topups: u32,
    /// What the attacker did (`simnet attack`'s figures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attacker: Option<AttackerStats>,
    /// Full disk: whether the provider answered again by itself once space was back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// The first honest-rent errors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub honest_errors: Vec<String>,
    /// Anything else worth knowing (the attacker could not run, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Whether every threshold of issue 11 held for this attack.
    pub passed: bool,
    /// The thresholds that did not hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

/// Adjusts node `kind`/`index`'s config for the siege (see the module doc).
pub fn tune(cfg: &mut Config, kind: Kind, index: usize) {
    match kind {
        Kind::Provider => {
            cfg.provider.metering_interval_secs = 1;
            // Field by field, so terms other helpers add keep their defaults.
            let t = &mut cfg.provider.terms;
            t.activation_fee_sat = 10;
            t.rate_sat_per_day = if index == FULL_DISK_PROVIDER {
                FULL_DISK_RATE_SAT_PER_DAY
            } else {
                RATE_SAT_PER_DAY
            };
            t.min_initial_credit_sat = CYCLE_CREDIT_SAT;
            t.min_topup_sat = CYCLE_CREDIT_SAT;
            t.max_credit_sat = 1_000_000;
            // Released prefixes go back to the pool at once: the honest renters rent and
            // release dozens of times, more than the pools hold.
            t.reserve_days = 0;
            t.refund_unused = false;
            if index == FULL_DISK_PROVIDER {
                cfg.provider.min_free_disk_mib = FULL_DISK_FLOOR_MIB;
            }
        }
        Kind::Renter | Kind::Intruder => {
            let a = &mut cfg.renter.autopay;
            a.enabled = true;
            a.low_watermark = Duration::from_secs(8);
            a.high_watermark = Duration::from_secs(20);
            a.check_interval = Duration::from_secs(2);
            a.probe_timeout = Duration::from_secs(2);
        }
    }
}

/// The thresholds of issue 11's "Done when" that `r` misses, as sentences; none for a
/// skipped attack. `autopay_topups` is not judged (see the module doc).
pub fn judge(r: &AttackReport, attack_secs: u64) -> Vec<String> {
    let mut f = Vec::new();
    if r.skipped.is_some() {
        return f;
    }
    if r.honest_rentals_failed > 0 {
        f.push(format!(
            "{} honest rentals failed ({} succeeded)",
            r.honest_rentals_failed, r.honest_rentals_ok
        ));
    }
    if r.honest_rentals_ok == 0 {
        f.push("no honest rental succeeded".to_owned());
    }
    if let Some(p99) = r.rent_ms_p99
        && p99 > MAX_RENT_P99_MS
    {
        f.push(format!("rent p99 {p99} ms > {MAX_RENT_P99_MS} ms"));
    }
    for (name, rss) in &r.rss_mb_max {
        if *rss > MAX_RSS_MB {
            f.push(format!("{name} RSS {rss:.1} MiB > {MAX_RSS_MB} MiB"));
        }
    }
    // Per attack minute, as the issue states it; at least a minute's allowance so a very
    // short attack is not held to a fraction of the bound.
    let allowed = MAX_AUDIT_BYTES_PER_MIN * attack_secs.max(60) / 60;
    if r.audit_bytes_written > allowed {
        f.push(format!(
            "stores grew {} bytes > {allowed} ({} MiB per attack minute)",
            r.audit_bytes_written,
            MAX_AUDIT_BYTES_PER_MIN / (1024 * 1024)
        ));
    }
    if r.paid_without_tunnel > 0 {
        f.push(format!(
            "{} paid leases without a tunnel peer",
            r.paid_without_tunnel
        ));
    }
    if r.recovered == Some(false) {
        f.push("the provider did not recover by itself once space was back".to_owned());
    }
    f
}

/// The `p`th percentile (nearest rank) of `xs`, sorted in place.
pub fn percentile(xs: &mut [u64], p: u32) -> Option<u64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_unstable();
    let rank = (u64::from(p) * xs.len() as u64).div_ceil(100).max(1);
    xs.get(usize::try_from(rank - 1).unwrap_or(0)).copied()
}

/// The full-disk provider's tmpfs data dir, unmounted (lazily, so a daemon still holding it
/// cannot make that fail) when dropped.
#[derive(Debug)]
pub struct FullDisk {
    dir: PathBuf,
    /// Index of the provider whose data dir it is.
    pub provider: usize,
}

impl FullDisk {
    fn ballast(&self) -> PathBuf {
        self.dir.join("siege-ballast")
    }

    /// Fills the tmpfs until no byte is left; returns the bytes written.
    fn fill(&self) -> Result<u64> {
        use std::io::Write as _;
        let path = self.ballast();
        let mut f = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e).context("filling the tmpfs"),
            }
        }
        // Whatever a 64 KiB chunk could not take, byte by byte would: close enough to full.
        Ok(written)
    }

    /// Gives the space back.
    fn free(&self) -> Result<()> {
        std::fs::remove_file(self.ballast()).context("cannot remove the ballast")
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.ballast());
        // The logs go with the tmpfs: keep a copy beside it for `--keep`.
        let logs = self.dir.with_extension("logs");
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            let _ = std::fs::create_dir_all(&logs);
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    let _ = std::fs::copy(e.path(), logs.join(e.file_name()));
                }
            }
        }
        let status = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
        match status {
            Ok(s) if s.success() => tracing::debug!(dir = %self.dir.display(), "tmpfs unmounted"),
            other => tracing::error!(dir = %self.dir.display(), ?other, "cannot unmount tmpfs"),
        }
    }
}

/// Before the cluster starts: mounts a [`TMPFS_MB`] MiB tmpfs (mode 0700) where
/// [`FULL_DISK_PROVIDER`]'s data dir goes. `Err` says why the full-disk attack will be
/// skipped.
pub fn prepare(root: &Path, plan: &Plan) -> Result<FullDisk, String> {
    let provider = FULL_DISK_PROVIDER;
    if plan.providers <= provider {
        return Err(format!("needs at least {} providers", provider + 1));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root: a tmpfs data dir needs root".to_owned());
    }
    let dir = root.join(Kind::Provider.name(provider));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let out = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={TMPFS_MB}m,mode=0700"),
            "tmpfs",
        ])
        .arg(&dir)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mount tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(FullDisk { dir, provider })
}

/// Runs the siege on a started cluster; see the module doc.
///
/// Errors: the market secret or the providers' addresses cannot be read. Everything else is
/// a figure or a failed criterion.
pub async fn run(
    cluster: &Cluster,
    placement: Placement<'_>,
    ledger: &Ledger,
    plan: Plan,
    disk: &Result<FullDisk, String>,
) -> Result<Outcome> {
    let cli = &cluster.cli;
    let providers: Vec<&Node> = cluster.of_kind(Kind::Provider).collect();
    let renters: Vec<&Node> = cluster.of_kind(Kind::Renter).collect();
    let secret = market_secret(providers[0])?;
    // Every daemon's address: providers are every attack's targets, renters also the replay
    // poisoning's (envelopes to a renter pass a replay cache too).
    let mut targets = Vec::new();
    let mut renter_targets = Vec::new();
    for n in providers.iter().chain(renters.iter()) {
        let st = cli.status(&n.data_dir).await?;
        let host = match (placement, n.kind) {
            (Placement::Host, _) => std::net::Ipv4Addr::LOCALHOST,
            (Placement::Netns { topo, .. }, Kind::Provider) => topo.provider_underlay_v4(n.index),
            (Placement::Netns { topo, .. }, _) => topo.renter_underlay_v4(n.index),
        };
        let addr = crate::cluster::bootstrap_addr(&st.listen_addrs, &st.peer_id, host)?;
        if n.kind == Kind::Provider {
            targets.push(addr);
        } else {
            renter_targets.push(addr);
        }
    }
    let mut outcome = Outcome::default();

    // Every renter knows every provider, then holds one lease all run.
    let want: Vec<&str> = providers.iter().map(|p| p.peer_id.as_str()).collect();
    for r in &renters {
        if let Err(e) = wait_offers(cli, r, &want).await {
            outcome.criteria_failed.push(format!("{e:#}"));
            return Ok(outcome);
        }
    }
    let held_credit = match placement {
        Placement::Host => HELD_CREDIT_SAT,
        Placement::Netns { .. } => NETNS_HELD_CREDIT_SAT,
    };
    let names = cluster.provider_names();
    let mut held: Vec<Option<String>> = Vec::new();
    for r in &renters {
        let started = Instant::now();
        match cli.rent(&r.data_dir, held_credit, RENT_TIMEOUT_SECS).await {
            Ok(out) => {
                tracing::info!(renter = %r.name, lease_id = %out.lease_id, "held lease");
                held.push(Some(out.lease_id.clone()));
                outcome.rentals.push(Rental {
                    renter: r.name.clone(),
                    provider: Some(names.get(&out.provider).cloned().unwrap_or(out.provider)),
                    ipv4: out.ipv4,
                    ipv6: out.ipv6,
                    lease_ms: Some(ms(started.elapsed())),
                    paid_until: out.paid_until,
                    ..Rental::default()
                });
            }
            Err(e) => {
                held.push(None);
                outcome.rentals.push(Rental {
                    renter: r.name.clone(),
                    error: Some(format!("{e:#}")),
                    ..Rental::default()
                });
                outcome
                    .criteria_failed
                    .push(format!("{} could not rent its held lease: {e:#}", r.name));
            }
        }
    }

    let mut summary = SiegeSummary {
        attack_secs: plan.attack_secs,
        attacks: Vec::new(),
    };
    for attack in ATTACKS {
        let mut report = AttackReport {
            attack: attack.name(),
            status: "ran",
            ..AttackReport::default()
        };
        if attack == Attack::FullDisk
            && let Err(why) = &disk
        {
            eprintln!("siege: full-disk SKIPPED ({why})");
            tracing::warn!("full-disk attack SKIPPED: {why}");
            report.status = "SKIPPED";
            report.skipped = Some(why.clone());
            report.passed = true;
            summary.attacks.push(report);
            continue;
        }
        tracing::info!(
            attack = attack.name(),
            secs = plan.attack_secs,
            "attack starts"
        );
        let ctx = Siege {
            cluster,
            placement,
            secret: &secret,
            targets: &targets,
            renter_targets: &renter_targets,
            renters: &renters,
            held: &held,
        };
        ctx.one(attack, plan.attack_secs, disk.as_ref().ok(), &mut report)
            .await;
        report.failed = judge(&report, plan.attack_secs);
        report.passed = report.failed.is_empty();
        tracing::info!(
            attack = attack.name(),
            ok = report.honest_rentals_ok,
            failed = report.honest_rentals_failed,
            p99 = ?report.rent_ms_p99,
            passed = report.passed,
            "attack over"
        );
        for f in &report.failed {
            outcome
                .criteria_failed
                .push(format!("{}: {f}", attack.name()));
        }
        summary.attacks.push(report);
    }

    // The held leases' figures from the renters' `status`. Unlike the other scenarios they are
    // not matched against the ledger's payments per provider: the rent-and-release loop pays
    // the same providers many times over.
    // Matched by lease id: with `reserve_days = 0` a lapsed held lease's address can go to a
    // later lease of the same renter.
    for ((node, r), id) in renters.iter().zip(outcome.rentals.iter_mut()).zip(&held) {
        let Some(id) = id else { continue };
        match cli.status(&node.data_dir).await {
            Ok(s) => match s.leases.iter().find(|l| &l.lease_id == id) {
                Some(l) => {
                    r.payments = Some(l.payments);
                    r.paid_sat = Some(l.paid_sat);
                    r.topups = Some(l.topups);
                    r.refused_unverified = Some(l.refused_unverified);
                }
                None => r.mismatch = Some(format!("status lists no lease {id}")),
            },
            Err(e) => r.mismatch = Some(format!("status: {e:#}")),
        }
    }
    outcome.double_payments = Some(match ledger.audit().await {
        Ok(a) => Ok(crate::ledger::double_payments(&a)),
        Err(e) => Err(format!("{e:#}")),
    });
    outcome.siege = Some(summary);
    Ok(outcome)
}

/// What every attack works with.
struct Siege<'a> {
    cluster: &'a Cluster,
    placement: Placement<'a>,
    secret: &'a str,
    targets: &'a [String],
    renter_targets: &'a [String],
    renters: &'a [&'a Node],
    held: &'a [Option<String>],
}

impl Siege<'_> {
    /// Runs one attack for `secs` with the honest renters and the sampler alongside, and
    /// fills `report` with what was measured.
    async fn one(
        &self,
        attack: Attack,
        secs: u64,
        disk: Option<&FullDisk>,
        report: &mut AttackReport,
    ) {
        let cli = &self.cluster.cli;
        let sizes_before = self.store_sizes();
        let topups_before = self.held_topups().await;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(secs);

        if attack == Attack::FullDisk
            && let Some(d) = disk
        {
            match d.fill() {
                Ok(n) => tracing::info!(bytes = n, "provider's disk filled"),
                Err(e) => report.notes.push(format!("{e:#}")),
            }
        }
        let attacker = async {
            match attack {
                Attack::Net(kind) => Some(self.attacker(kind, secs).await),
                Attack::FullDisk => None,
            }
        };
        let honest =
            futures::future::join_all(self.renters.iter().map(|r| self.honest(r, deadline)));
        let sample = sample(self.cluster, deadline + SETTLE);
        let (attacker, honest, (rss, fds)) = tokio::join!(attacker, honest, sample);
        report.secs = round1(started.elapsed().as_secs_f64());

        if attack == Attack::FullDisk
            && let Some(d) = disk
        {
            if let Err(e) = d.free() {
                report.notes.push(format!("{e:#}"));
            }
            let p = self
                .cluster
                .of_kind(Kind::Provider)
                .find(|n| n.index == d.provider);
            if let Some(p) = p {
                report.recovered = Some(recovers(cli, p).await);
            }
        }
        match attacker {
            Some(Ok(stats)) => report.attacker = Some(stats),
            Some(Err(e)) => report.notes.push(format!("attacker: {e:#}")),
            None => {}
        }
        let mut times = Vec::new();
        let names = self.cluster.provider_names();
        for result in honest.into_iter().flatten() {
            match result {
                Ok(HonestRent {
                    ms,
                    provider,
                    tunnel,
                }) => {
                    report.honest_rentals_ok += 1;
                    times.push(ms);
                    if !tunnel {
                        report.paid_without_tunnel += 1;
                    }
                    let name = names.get(&provider).cloned().unwrap_or(provider);
                    *report.honest_by_provider.entry(name).or_insert(0) += 1;
                }
                Err(e) => {
                    report.honest_rentals_failed += 1;
                    if report.honest_errors.len() < ERRORS_KEPT {
                        report.honest_errors.push(e);
                    }
                }
            }
        }
        report.rent_ms_p50 = percentile(&mut times, 50);
        report.rent_ms_p99 = percentile(&mut times, 99);
        report.rss_mb_max = rss;
        report.fds_max = fds;
        let sizes_after = self.store_sizes();
        report.audit_bytes_written = sizes_after
            .iter()
            .map(|(name, after)| after.saturating_sub(*sizes_before.get(name).unwrap_or(after)))
            .sum();
        let topups_after = self.held_topups().await;
        report.autopay_topups = topups_after.saturating_sub(topups_before);
        match self.paid_without_tunnel().await {
            Ok(n) => report.paid_without_tunnel += n,
            Err(e) => report.notes.push(format!("tunnel check: {e:#}")),
        }
    }

    /// Runs `simnet attack` for `kind` (in the internet namespace with `--netns`) and reads
    /// its figures.
    async fn attacker(&self, kind: AttackKind, secs: u64) -> Result<AttackerStats> {
        let exe = std::env::current_exe().context("cannot find simnet's own executable")?;
        let kind_name = clap::ValueEnum::to_possible_value(&kind)
            .map(|v| v.get_name().to_owned())
            .context("attack name")?;
        let mut args: Vec<String> = vec![
            "attack".into(),
            "--attack".into(),
            kind_name,
            "--secret".into(),
            self.secret.to_owned(),
            "--secs".into(),
            secs.to_string(),
        ];
        let renters = match kind {
            AttackKind::ReplayPoison => self.renter_targets,
            _ => &[],
        };
        for t in self.targets.iter().chain(renters) {
            args.push("--target".into());
            args.push(t.clone());
        }
        let cmd = match self.placement {
            Placement::Host => {
                let mut c = tokio::process::Command::new(&exe);
                c.args(&args);
                c
            }
            Placement::Netns { topo, .. } => {
                tokio::process::Command::from(topo.command(topo.internet_ns(), &exe, &args))
            }
        };
        let out = run_capture(cmd, Duration::from_secs(secs + 60)).await?;
        if !out.status.success() {
            bail!(
                "simnet attack failed ({}): {}",
                out.status,
                out.stderr.trim()
            );
        }
        crate::cli::parse_json(&out.stdout)
    }

    /// Every daemon's store size, bytes.
    fn store_sizes(&self) -> BTreeMap<String, u64> {
        self.cluster
            .nodes
            .iter()
            .map(|n| (n.name.clone(), dir_size(&DataDir::new(&n.data_dir).db())))
            .collect()
    }

    /// AutoPay top-ups of the held leases so far.
    async fn held_topups(&self) -> u32 {
        let mut total = 0;
        for (r, lease) in self.renters.iter().zip(self.held) {
            let Some(lease) = lease else { continue };
            if let Ok(s) = self.cluster.cli.status(&r.data_dir).await
                && let Some(l) = s.leases.iter().find(|l| &l.lease_id == lease)
            {
                total += l.autopay_topups;
            }
        }
        total
    }

    /// One honest renter until `deadline`: rent (`rent --auto`, the providers' minimum
    /// credit), check the provider's tunnel carries the new lease, release, again. Each rent's
    /// milliseconds, provider (peer id) and whether the tunnel carried it, or why it failed.
    async fn honest(&self, renter: &Node, deadline: Instant) -> Vec<Result<HonestRent, String>> {
        let cli = &self.cluster.cli;
        let mut out = Vec::new();
        while Instant::now() < deadline {
            let started = Instant::now();
            match cli
                .rent(&renter.data_dir, CYCLE_CREDIT_SAT, RENT_TIMEOUT_SECS)
                .await
            {
                Ok(lease) => {
                    let ms = ms(started.elapsed());
                    let tunnel = self.carried(&lease).await;
                    if !tunnel {
                        tracing::error!(renter = %renter.name, lease_id = %lease.lease_id,
                            "paid lease without a tunnel peer at the provider");
                    }
                    out.push(Ok(HonestRent {
                        ms,
                        provider: lease.provider.clone(),
                        tunnel,
                    }));
                    if let Err(e) = cli.release(&renter.data_dir, &lease.lease_id).await {
                        tracing::warn!(renter = %renter.name, "release: {e:#}");
                    }
                    tokio::time::sleep(HONEST_PACE).await;
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    tracing::warn!(renter = %renter.name, "honest rent failed: {e}");
                    out.push(Err(e));
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        out
    }

    /// Whether the provider of a lease just rented has a tunnel peer for each of its
    /// prefixes, polled for up to [`TUNNEL_WAIT`] in case the peer lands just after the
    /// lease.
    async fn carried(&self, lease: &RentOut) -> bool {
        let Some(p) = self
            .cluster
            .of_kind(Kind::Provider)
            .find(|n| n.peer_id == lease.provider)
        else {
            return true;
        };
        let want: Vec<&str> = [lease.ipv4.as_deref(), lease.ipv6.as_deref()]
            .into_iter()
            .flatten()
            .filter(|x| !x.is_empty())
            .collect();
        let until = Instant::now() + TUNNEL_WAIT;
        loop {
            if let Ok(peers) = self.peer_prefixes(p).await
                && want.iter().all(|w| peers.iter().any(|x| x == w))
            {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Active leases on the providers' side whose prefixes no tunnel peer carries.
    async fn paid_without_tunnel(&self) -> Result<u32> {
        let mut n = 0;
        for p in self.cluster.of_kind(Kind::Provider) {
            let Ok(leases) = self.cluster.cli.leases(&p.data_dir).await else {
                // A provider that does not answer is judged by the honest rents.
                continue;
            };
            let active: Vec<&LeaseOut> = leases.leases.iter().filter(|l| l.is_active()).collect();
            if active.is_empty() {
                continue;
            }
            let peers = self.peer_prefixes(p).await?;
            n += active
                .iter()
                .filter(|l| {
                    [l.ipv4.as_str(), l.ipv6.as_str()]
                        .iter()
                        .filter(|x| !x.is_empty())
                        .any(|x| !peers.iter().any(|p| p == x))
                })
                .count();
        }
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Every prefix some tunnel peer of provider `p` carries.
    async fn peer_prefixes(&self, p: &Node) -> Result<Vec<String>> {
        match self.placement {
            Placement::Host => {
                let iface = Kind::Provider.interface("", p.index);
                file_peer_prefixes(&p.data_dir, &iface)
            }
            Placement::Netns { topo, tag } => {
                let iface = Kind::Provider.interface(tag, p.index);
                let shown = super::autopay::wg(
                    topo,
                    topo.provider_ns(p.index),
                    &["show", &iface, "allowed-ips"],
                )
                .await?;
                Ok(shown
                    .lines()
                    .flat_map(|l| l.split_whitespace().skip(1).map(str::to_owned))
                    .collect())
            }
        }
    }
}

/// The prefixes of every peer in the file backend's state (`DATA/tunnel/IFACE.state.json`);
/// none when the file does not exist yet.
///
/// Errors: it exists but cannot be read or parsed.
pub fn file_peer_prefixes(data_dir: &Path, iface: &str) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct State {
        peers: Vec<Peer>,
    }
    #[derive(serde::Deserialize)]
    struct Peer {
        allowed_ips: Vec<String>,
    }
    let path = data_dir.join("tunnel").join(format!("{iface}.state.json"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let state: State =
        serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
    Ok(state
        .peers
        .into_iter()
        .flat_map(|p| p.allowed_ips)
        .collect())
}

/// The market secret, from a node's `config.toml`.
fn market_secret(node: &Node) -> Result<String> {
    let path = DataDir::new(&node.data_dir).config_file();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let cfg = Config::from_toml(&text).with_context(|| format!("invalid {}", path.display()))?;
    Ok(cfg.node.secret)
}

/// Waits until the renter's `offers` lists every provider of `want`.
async fn wait_offers(cli: &Cli, renter: &Node, want: &[&str]) -> Result<()> {
    let deadline = Instant::now() + OFFERS_TIMEOUT;
    loop {
        if let Ok(o) = cli.offers(&renter.data_dir).await
            && want
                .iter()
                .all(|w| o.offers.iter().any(|x| x.provider == *w))
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not list every provider's offer within {OFFERS_TIMEOUT:?}",
                renter.name
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Samples every daemon's resident set (MiB) and open descriptors until `until`; the largest
/// of each per daemon.
async fn sample(
    cluster: &Cluster,
    until: Instant,
) -> (BTreeMap<String, f64>, BTreeMap<String, u64>) {
    let mut rss = BTreeMap::new();
    let mut fds = BTreeMap::new();
    loop {
        for n in &cluster.nodes {
            let Ok(pid) = cluster.pid(&n.name) else {
                continue;
            };
            if let Some(m) = read_rss_mb(pid) {
                let e = rss.entry(n.name.clone()).or_insert(0.0_f64);
                *e = round1(e.max(m));
            }
            if let Some(f) = count_fds(pid) {
                let e = fds.entry(n.name.clone()).or_insert(0);
                *e = (*e).max(f);
            }
        }
        if Instant::now() >= until {
            return (rss, fds);
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// Whether the provider answers `status` within [`RECOVERY_TIMEOUT`].
async fn recovers(cli: &Cli, p: &Node) -> bool {
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    loop {
        if cli.status(&p.data_dir).await.is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `VmRSS` of `/proc/PID/status`, MiB.
fn read_rss_mb(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss_kb(&text).map(|kb| kb as f64 / 1024.0)
}

/// The `VmRSS:` figure of a `/proc/PID/status` text, kB.
pub fn parse_rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Entries of `/proc/PID/fd`.
fn count_fds(pid: u32) -> Option<u64> {
    let n = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    u64::try_from(n).ok()
}

/// Total size of the files under `dir`, bytes; 0 when it cannot be read.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return std::fs::metadata(dir).map_or(0, |m| m.len());
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passing() -> AttackReport {
        AttackReport {
            attack: "floods",
            status: "ran",
            honest_rentals_ok: 10,
            rent_ms_p99: Some(900),
            rss_mb_max: [("provider-0".to_owned(), 60.0)].into(),
            audit_bytes_written: 1024,
            ..AttackReport::default()
        }
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentile(&mut [], 50), None);
        assert_eq!(percentile(&mut [7], 99), Some(7));
        let mut xs: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut xs, 50), Some(50));
        assert_eq!(percentile(&mut xs, 99), Some(99));
        assert_eq!(percentile(&mut [5, 1, 3], 50), Some(3));
        assert_eq!(percentile(&mut [5, 1, 3], 99), Some(5));
    }

    #[test]
    fn every_threshold_of_the_issue_is_judged() {
        assert!(judge(&passing(), 12).is_empty());
        let mut r = passing();
        r.honest_rentals_failed = 1;
        assert!(judge(&r, 12)[0].contains("1 honest rentals failed"));
        let mut r = passing();
        r.rent_ms_p99 = Some(3_001);
        assert!(judge(&r, 12)[0].contains("p99"));
        let mut r = passing();
        r.rss_mb_max.insert("provider-1".into(), 150.5);
        assert!(judge(&r, 12)[0].contains("provider-1 RSS"));
        let mut r = passing();
        r.paid_without_tunnel = 2;
        assert!(judge(&r, 12)[0].contains("2 paid leases"));
        let mut r = passing();
        r.honest_rentals_ok = 0;
        assert!(judge(&r, 12)[0].contains("no honest rental"));
        let mut r = passing();
        r.recovered = Some(false);
        assert!(judge(&r, 12)[0].contains("recover"));
        // 5 MiB per attack minute: two minutes allow 10 MiB.
        let mut r = passing();
        r.audit_bytes_written = 6 * 1024 * 1024;
        assert_eq!(judge(&r, 60).len(), 1);
        assert!(judge(&r, 120).is_empty());
        // A skipped attack is not judged.
        let skipped = AttackReport {
            skipped: Some("not root".into()),
            ..AttackReport::default()
        };
        assert!(judge(&skipped, 12).is_empty());
    }

    #[test]
    fn attacks_run_in_the_issues_order_with_distinct_names() {
        let names: Vec<&str> = ATTACKS.iter().map(|a| a.name()).collect();
        assert_eq!(
            names,
            [
                "replay-poison",
                "oversized",
                "floods",
                "hold-open",
                "garbage",
                "full-disk",
                "reservation-grab"
            ]
        );
        // The attacker's own names match the scenario's.
        for a in ATTACKS {
            if let Attack::Net(k) = a {
                let v = clap::ValueEnum::to_possible_value(&k).unwrap();
                assert_eq!(v.get_name(), a.name());
            }
        }
    }

    #[test]
    fn proc_and_tunnel_state_parsing() {
        let status = "Name:\tleasewire\nVmPeak:\t  900 kB\nVmRSS:\t   51200 kB\n";
        assert_eq!(parse_rss_kb(status), Some(51_200));
        assert_eq!(parse_rss_kb("Name: x\n"), None);
        let dir = tempfile::tempdir().unwrap();
        assert!(file_peer_prefixes(dir.path(), "lwp0").unwrap().is_empty());
        std::fs::create_dir(dir.path().join("tunnel")).unwrap();
        std::fs::write(
            dir.path().join("tunnel/lwp0.state.json"),
            r#"{"peers":[{"public_key":"k","allowed_ips":["198.51.100.1/32","2001:db8:100::/64"]}]}"#,
        )
        .unwrap();
        assert_eq!(
            file_peer_prefixes(dir.path(), "lwp0").unwrap(),
            ["198.51.100.1/32", "2001:db8:100::/64"]
        );
    }

    #[test]
    fn siege_tunes_fast_terms_and_autopay() {
        let mut p = Config::default();
        tune(&mut p, Kind::Provider, 0);
        assert_eq!(p.provider.terms.credit_secs(150), 15);
        assert_eq!(p.provider.metering_interval_secs, 1);
        assert_eq!(p.provider.terms.reserve_days, 0);
        // The full-disk provider is the cheapest: honest renters go there first.
        let mut cheap = Config::default();
        tune(&mut cheap, Kind::Provider, FULL_DISK_PROVIDER);
        assert!(cheap.provider.terms.rate_sat_per_day < p.provider.terms.rate_sat_per_day);
        let mut r = Config::default();
        r.renter.autopay.enabled = false;
        tune(&mut r, Kind::Renter, 0);
        assert!(r.renter.autopay.enabled);
        assert_eq!(r.renter.autopay.validate(), Ok(()));
    }
}
