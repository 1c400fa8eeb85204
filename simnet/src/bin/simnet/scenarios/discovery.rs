//! `--scenario discovery`: how fast renters find the whole market; nothing is rented.
//!
//! It mirrors the Hyperswarm anchor `../shared/anchors/discovery.mjs N M`:
//!
//! 1. lnd-sim and the N providers start (in batches of [`START_BATCH`], each ready before the
//!    next), and every provider finishes its first DHT announce (the anchor's `flushed()`);
//! 2. all M renter daemons are spawned at once;
//! 3. each renter is watched through its control API (`Offers`, over its Unix socket, every
//!    [`POLL`]) until it holds the signed offer of every provider. A renter lists an offer only
//!    after verifying its provider's signature, so "listed" is "verified". The watch ends when
//!    every renter has all N, or at [`EXCHANGE_TIMEOUT`] after the renters started;
//! 4. the times come from the renter itself, not from the polls: its `status` says when it
//!    started joining the network (`joined_at_unix_ms`: its swarm was created and began
//!    dialing, the anchor's `join()`), and each offer says when the renter first verified one
//!    of that provider (`first_verified_unix_ms`). `all_exchanged_ms` and `first_offer_ms`
//!    count from the join, as the anchor counts from `join()` (its `new Hyperswarm()`, key
//!    pair and DHT node are made before its clock starts); the daemon's own start-up (process
//!    spawn, config, store, Lightning connection) is reported beside them as `join_ms` and
//!    included in `all_exchanged_from_spawn_ms`;
//! 5. the renters' CPU time (`utime + stime` of `/proc/<pid>/stat`) and every daemon's RSS are
//!    read while they still run.
//!
//! The anchor times a signed hello and ack per pair; here the matching step is the renter's
//! signed offer exchange with each provider. The anchor's `clients_cpu_ms` is one Node process
//! that also hosts the servers and the DHT testnet, while `client_cpu_ms` here is the renter
//! daemons only.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use leasewire::control::ControlClient;
use leasewire::datadir::DataDir;
use serde::Serialize;

use crate::cli::Bins;
use crate::cluster::{Cluster, Kind, LND_SIM, Node, Placement};
use crate::procs::Procs;
use crate::scenario::{Plan, STOP_GRACE};

/// Providers' metering tick in this scenario: nothing is leased, so rarely.
pub const METERING_INTERVAL_SECS: u64 = 60;
/// Every node's discovery interval in this scenario: the daemon's default.
pub const DISCOVERY_INTERVAL_SECS: u64 = 15;
/// Daemons started together while the providers come up.
pub const START_BATCH: usize = 10;
/// How long after the renters start every one of them must know every provider.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the providers may take to finish their first announce.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between two `Offers` calls to one renter: the timing resolution.
pub const POLL: Duration = Duration::from_millis(50);
/// What a provider's `debug.log` says once its DHT announce query is over (node/tasks.rs,
/// `announce_loop`): published, or given up until the next try.
const ANNOUNCE_LOG_LINES: [&str; 2] = ["announced on the DHT", "DHT announce incomplete"];

/// The result of a discovery run: the JSON of `--json`.
#[derive(Debug, Default, Serialize)]
pub struct DiscoveryReport {
    /// Always `discovery`.
    pub scenario: &'static str,
    /// N.
    pub providers: usize,
    /// M.
    pub renters: usize,
    /// Whether every renter held every provider's offer within [`EXCHANGE_TIMEOUT`].
    pub complete: bool,
    /// Slowest renter's time from its join (see the module doc) to having verified every
    /// provider's offer; null unless all got there.
    pub all_exchanged_ms: Option<u64>,
    /// Median over renters of the time from its join to its first verified offer (renters
    /// that saw none are left out).
    pub first_offer_ms: Option<u64>,
    /// Slowest renter's time from its process spawn to every provider's offer: start-up
    /// included.
    pub all_exchanged_from_spawn_ms: Option<u64>,
    /// Slowest renter's start-up: from its spawn to its join.
    pub join_ms_max: Option<u64>,
    /// The fewest providers' offers any renter held at the end.
    pub offers_seen_min: usize,
    /// CPU time (user + system) of all renter daemons, read when the watch ended.
    pub client_cpu_ms: u64,
    /// Largest resident set of any leasewire daemon when the watch ended, MiB.
    pub rss_mb_max: f64,
    /// Sum of every leasewire daemon's resident set when the watch ended, MiB.
    pub rss_mb_total: f64,
    /// Largest peak resident set (VmHWM) of any leasewire daemon, MiB.
    pub rss_peak_mb_max: f64,
    /// lnd-sim's resident set, MiB (not in the totals above).
    pub lnd_sim_rss_mb: Option<f64>,
    /// From the first provider's spawn until every provider answered its control API.
    pub providers_ready_ms: u64,
    /// From then until every provider finished its first announce.
    pub announce_ms: u64,
    /// Providers whose first announce did not complete (they retry later) or was not seen.
    pub announce_incomplete: usize,
    /// The `Offers` poll interval, i.e. the timing resolution.
    pub poll_ms: u64,
    /// Per-renter figures, in renter order.
    pub per_renter: Vec<RenterDiscovery>,
    /// Why the run failed, beyond incomplete renters.
    #[serde(skip)]
    pub errors: Vec<String>,
}

/// One renter's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RenterDiscovery {
    /// `renter-N`.
    pub renter: String,
    /// From its spawn to its control API answering.
    pub api_ms: Option<u64>,
    /// From its spawn to its join (its swarm created and dialing).
    pub join_ms: Option<u64>,
    /// From its join to its first verified offer.
    pub first_offer_ms: Option<u64>,
    /// From its join to having verified every provider's offer.
    pub all_exchanged_ms: Option<u64>,
    /// From its spawn to having verified every provider's offer.
    pub all_exchanged_from_spawn_ms: Option<u64>,
    /// Providers whose offer it held at the end.
    pub offers_seen: usize,
    /// Its CPU time (user + system) when the watch ended.
    pub cpu_ms: Option<u64>,
    /// Its resident set when the watch ended, MiB.
    pub rss_mb: Option<f64>,
    /// `Offers` calls made.
    pub polls: u32,
    /// The last error talking to it, if the watch did not complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl DiscoveryReport {
    /// Every reason the run failed; empty means it passed.
    pub fn failures(&self) -> Vec<String> {
        let mut f = self.errors.clone();
        for r in &self.per_renter {
            if r.all_exchanged_ms.is_none() {
                f.push(format!(
                    "{} held {}/{} offers after {EXCHANGE_TIMEOUT:?}{}",
                    r.renter,
                    r.offers_seen,
                    self.providers,
                    r.error
                        .as_ref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
            }
        }
        f
    }

    /// The single JSON object printed with `--json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report of plain strings and numbers")
    }

    /// The human-readable table and summary.
    pub fn table(&self) -> String {
        let num = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |n| n.to_string());
        let mut out = format!(
            "{:<10} {:>8} {:>8} {:>10} {:>10} {:>7} {:>8} {:>7}\n",
            "RENTER", "API MS", "JOIN MS", "FIRST MS", "ALL MS", "OFFERS", "CPU MS", "RSS MB"
        );
        for r in &self.per_renter {
            out.push_str(&format!(
                "{:<10} {:>8} {:>8} {:>10} {:>10} {:>7} {:>8} {:>7}\n",
                r.renter,
                num(r.api_ms),
                num(r.join_ms),
                num(r.first_offer_ms),
                num(r.all_exchanged_ms),
                r.offers_seen,
                num(r.cpu_ms),
                r.rss_mb
                    .map_or_else(|| "-".to_owned(), |m| format!("{m:.1}")),
            ));
        }
        out.push_str(&format!(
            "\ndiscovery {}x{}: all exchanged {} ms after join (max; {} ms after spawn), \
             first offer {} ms (median), fewest offers {}; renters' CPU {} ms; \
             RSS max {:.1} MiB, total {:.1} MiB\n",
            self.providers,
            self.renters,
            num(self.all_exchanged_ms),
            num(self.all_exchanged_from_spawn_ms),
            num(self.first_offer_ms),
            self.offers_seen_min,
            self.client_cpu_ms,
            self.rss_mb_max,
            self.rss_mb_total,
        ));
        out
    }
}

/// Runs the scenario on loopback under `root`; every process goes into `procs` (the caller
/// stops whatever is left).
///
/// Errors: the cluster could not be brought up or the renters could not be spawned.
pub async fn run(
    root: &Path,
    bins: &Bins,
    procs: Arc<Procs>,
    plan: Plan,
) -> Result<DiscoveryReport> {
    let placement = Placement::Host;
    let t0 = Instant::now();
    let cluster = Cluster::start(root, bins, procs, &plan, placement).await?;
    let providers_ready_ms = ms(t0.elapsed());

    let providers: Vec<&Node> = cluster.of_kind(Kind::Provider).collect();
    let t1 = Instant::now();
    let announce_incomplete = wait_announced(&providers).await;
    let announce_ms = ms(t1.elapsed());
    tracing::info!(
        providers = providers.len(),
        providers_ready_ms,
        announce_ms,
        announce_incomplete,
        "providers up and announced; starting every renter"
    );

    let ids: HashSet<String> = providers.iter().map(|n| n.peer_id.clone()).collect();
    let started = cluster.start_held(bins, placement)?;
    let watches = started.iter().map(|(name, at)| {
        let node = cluster
            .of_kind(Kind::Renter)
            .find(|n| &n.name == name)
            .expect("held renters are cluster nodes");
        watch(node, *at, &ids)
    });
    let mut per_renter = futures::future::join_all(watches).await;

    // Read CPU and memory while every daemon still runs.
    let mut report = DiscoveryReport {
        scenario: "discovery",
        providers: plan.providers,
        renters: plan.renters,
        providers_ready_ms,
        announce_ms,
        announce_incomplete,
        poll_ms: ms(POLL),
        ..DiscoveryReport::default()
    };
    let mut rss_all = Vec::new();
    for node in &cluster.nodes {
        let Ok(pid) = cluster.pid(&node.name) else {
            report.errors.push(format!("{} is not running", node.name));
            continue;
        };
        let mem = read_mem(pid);
        if let Some(m) = mem {
            rss_all.push(m);
        }
        if let Some(r) = per_renter.iter_mut().find(|r| r.renter == node.name) {
            r.cpu_ms = read_cpu_ms(pid);
            r.rss_mb = mem.map(|m| m.rss_mb);
        }
    }
    report.lnd_sim_rss_mb = cluster
        .pid(LND_SIM)
        .ok()
        .and_then(read_mem)
        .map(|m| m.rss_mb);
    report.rss_mb_max = rss_all.iter().map(|m| m.rss_mb).fold(0.0, f64::max);
    report.rss_peak_mb_max = rss_all.iter().map(|m| m.peak_mb).fold(0.0, f64::max);
    report.rss_mb_total = round1(rss_all.iter().map(|m| m.rss_mb).sum());
    report.client_cpu_ms = per_renter.iter().filter_map(|r| r.cpu_ms).sum();
    summarize(&mut report, per_renter);

    tracing::info!("stopping daemons");
    for name in cluster.stop_daemons(STOP_GRACE).await {
        tracing::warn!(%name, "daemon did not exit cleanly");
    }
    Ok(report)
}

/// Fills the aggregate timings from the per-renter figures and keeps them.
fn summarize(report: &mut DiscoveryReport, per_renter: Vec<RenterDiscovery>) {
    report.complete = !per_renter.is_empty()
        && per_renter.iter().all(|r| r.all_exchanged_ms.is_some())
        && report.errors.is_empty();
    let all = per_renter.iter().all(|r| r.all_exchanged_ms.is_some());
    report.all_exchanged_ms = if all {
        per_renter.iter().filter_map(|r| r.all_exchanged_ms).max()
    } else {
        None
    };
    report.all_exchanged_from_spawn_ms = if all {
        per_renter
            .iter()
            .filter_map(|r| r.all_exchanged_from_spawn_ms)
            .max()
    } else {
        None
    };
    report.join_ms_max = per_renter.iter().filter_map(|r| r.join_ms).max();
    let mut firsts: Vec<u64> = per_renter.iter().filter_map(|r| r.first_offer_ms).collect();
    report.first_offer_ms = median(&mut firsts);
    report.offers_seen_min = per_renter.iter().map(|r| r.offers_seen).min().unwrap_or(0);
    report.per_renter = per_renter;
}

/// Waits until every provider's `debug.log` shows its first announce finished, or
/// [`ANNOUNCE_TIMEOUT`]; returns how many did not get there or only gave up for now.
async fn wait_announced(providers: &[&Node]) -> usize {
    let deadline = Instant::now() + ANNOUNCE_TIMEOUT;
    // `None` while waiting; `Some(completed)` once the first attempt is over.
    let mut done: Vec<Option<bool>> = vec![None; providers.len()];
    loop {
        for (node, d) in providers.iter().zip(done.iter_mut()) {
            if d.is_none() {
                *d = announce_outcome(&DataDir::new(&node.data_dir).debug_log());
            }
        }
        if done.iter().all(Option::is_some) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let incomplete = done.iter().filter(|d| **d != Some(true)).count();
    if incomplete > 0 {
        tracing::warn!(
            incomplete,
            "providers whose first announce did not complete (or was not seen)"
        );
    }
    incomplete
}

/// What a daemon log says of its first announce: `None` while nothing, else whether it
/// completed.
fn announce_outcome(log: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find_map(|l| {
        if l.contains(ANNOUNCE_LOG_LINES[0]) {
            Some(true)
        } else if l.contains(ANNOUNCE_LOG_LINES[1]) {
            Some(false)
        } else {
            None
        }
    })
}

/// Watches one renter from `started` (its spawn) until it lists an offer of every provider in
/// `ids`, or [`EXCHANGE_TIMEOUT`]; then reads its own times (see the module doc).
async fn watch(node: &Node, started: Instant, ids: &HashSet<String>) -> RenterDiscovery {
    // The spawn on the wall clock, which the daemon's own timestamps use.
    let spawned_ms = wall_ms().saturating_sub(ms(started.elapsed()));
    let deadline = started + EXCHANGE_TIMEOUT;
    let socket = DataDir::new(&node.data_dir).control_socket();
    let mut r = RenterDiscovery {
        renter: node.name.clone(),
        ..RenterDiscovery::default()
    };
    // The daemon needs a moment to open its store and bind the socket.
    let client = loop {
        match ControlClient::connect(&socket).await {
            Ok(c) => break c,
            Err(e) if Instant::now() >= deadline => {
                r.error = Some(format!("control API: {e}"));
                return r;
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    };
    loop {
        r.polls += 1;
        match client.offers().await {
            Ok(reply) => {
                if r.api_ms.is_none() {
                    r.api_ms = Some(ms(started.elapsed()));
                }
                // Provider -> when this renter first verified an offer of it.
                let seen: std::collections::HashMap<&str, u64> = reply
                    .offers
                    .iter()
                    .filter(|o| ids.contains(&o.provider))
                    .map(|o| (o.provider.as_str(), o.first_verified_unix_ms))
                    .collect();
                r.offers_seen = seen.len();
                let done = seen.len() == ids.len();
                if done || Instant::now() >= deadline {
                    times(&mut r, &client, spawned_ms, &seen, done).await;
                    if done {
                        tracing::info!(renter = %r.renter, ms = ?r.all_exchanged_ms, "every offer held");
                    }
                    return r;
                }
            }
            Err(e) => r.error = Some(format!("offers: {e}")),
        }
        if Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Fills `r`'s times from the renter's join (read from its `status`) and the first-verified
/// times of the offers it holds (`seen`); `done` when it holds every provider's.
async fn times(
    r: &mut RenterDiscovery,
    client: &ControlClient,
    spawned_ms: u64,
    seen: &std::collections::HashMap<&str, u64>,
    done: bool,
) {
    let joined = match client.status().await {
        Ok(st) => st.net.map(|n| n.joined_at_unix_ms).filter(|t| *t > 0),
        Err(e) => {
            r.error = Some(format!("status: {e}"));
            None
        }
    };
    let Some(joined) = joined else {
        r.error
            .get_or_insert_with(|| "no join time in status".to_owned());
        return;
    };
    r.join_ms = Some(joined.saturating_sub(spawned_ms));
    r.first_offer_ms = seen.values().min().map(|t| t.saturating_sub(joined));
    if done {
        let last = seen.values().max().copied().unwrap_or(joined);
        r.all_exchanged_ms = Some(last.saturating_sub(joined));
        r.all_exchanged_from_spawn_ms = Some(last.saturating_sub(spawned_ms));
        r.error = None;
    }
}

/// The wall clock in unix milliseconds.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Resident and peak resident set of a process, MiB.
#[derive(Clone, Copy, Debug)]
struct Mem {
    rss_mb: f64,
    peak_mb: f64,
}

/// `VmRSS` and `VmHWM` of `/proc/<pid>/status`.
fn read_mem(pid: u32) -> Option<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_mem(&text)
}

fn parse_mem(status: &str) -> Option<Mem> {
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    let mb = |k: u64| round1(k as f64 / 1024.0);
    Some(Mem {
        rss_mb: mb(kib("VmRSS:")?),
        peak_mb: mb(kib("VmHWM:")?),
    })
}

/// `utime + stime` of `/proc/<pid>/stat`, in milliseconds.
fn read_cpu_ms(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    parse_cpu_ms(&text, u64::try_from(tck).ok().filter(|&t| t > 0)?)
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line, at `ticks` per second.
fn parse_cpu_ms(stat: &str, ticks: u64) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 1000 / ticks)
}

/// The median, the mean of the two middle values for an even count; `None` when empty.
fn median(xs: &mut [u64]) -> Option<u64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_unstable();
    let n = xs.len();
    Some((xs[(n - 1) / 2] + xs[n / 2]) / 2)
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

    #[test]
    fn cpu_is_utime_plus_stime_after_the_command_name() {
        // Fields 14 and 15 are 250 and 50 ticks; the name holds a space and a parenthesis.
        let stat = "4242 (lease wire) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9";
        assert_eq!(parse_cpu_ms(stat, 100), Some(3000));
        assert_eq!(parse_cpu_ms("4242 (x) S 1", 100), None);
    }

    #[test]
    fn memory_comes_from_vmrss_and_vmhwm() {
        let status = "Name:\tleasewire\nVmHWM:\t   40960 kB\nVmRSS:\t   20480 kB\n";
        let m = parse_mem(status).unwrap();
        assert_eq!((m.rss_mb, m.peak_mb), (20.0, 40.0));
        assert!(parse_mem("Name:\tx\n").is_none());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [30, 10, 20]), Some(20));
        assert_eq!(median(&mut [40, 10, 20, 30]), Some(25));
        assert_eq!(median(&mut []), None);
    }

    fn renter(i: usize, first: Option<u64>, all: Option<u64>, seen: usize) -> RenterDiscovery {
        RenterDiscovery {
            renter: format!("renter-{i}"),
            first_offer_ms: first,
            all_exchanged_ms: all,
            offers_seen: seen,
            ..RenterDiscovery::default()
        }
    }

    #[test]
    fn aggregates_are_max_median_and_min() {
        let mut r = DiscoveryReport {
            providers: 3,
            renters: 3,
            ..DiscoveryReport::default()
        };
        summarize(
            &mut r,
            vec![
                renter(0, Some(100), Some(900), 3),
                renter(1, Some(300), Some(700), 3),
                renter(2, Some(200), Some(800), 3),
            ],
        );
        assert!(r.complete);
        assert_eq!(r.all_exchanged_ms, Some(900));
        assert_eq!(r.first_offer_ms, Some(200));
        assert_eq!(r.offers_seen_min, 3);
        assert!(r.failures().is_empty());
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        for key in [
            "all_exchanged_ms",
            "first_offer_ms",
            "offers_seen_min",
            "client_cpu_ms",
            "rss_mb_max",
            "rss_mb_total",
            "per_renter",
        ] {
            assert!(json.get(key).is_some(), "{key} missing");
        }
        assert!(r.table().contains("renter-2"));
    }

    #[test]
    fn a_renter_short_of_offers_fails_the_run() {
        let mut r = DiscoveryReport {
            providers: 3,
            renters: 2,
            ..DiscoveryReport::default()
        };
        summarize(
            &mut r,
            vec![renter(0, Some(100), Some(900), 3), renter(1, None, None, 0)],
        );
        assert!(!r.complete);
        assert_eq!(r.all_exchanged_ms, None);
        assert_eq!(r.first_offer_ms, Some(100));
        assert_eq!(r.offers_seen_min, 0);
        let f = r.failures();
        assert_eq!(f.len(), 1);
        assert!(f[0].contains("renter-1 held 0/3"), "{f:?}");
    }

    #[test]
    fn the_announce_is_read_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("debug.log");
        assert_eq!(announce_outcome(&log), None);
        std::fs::write(&log, "x DEBUG something else\n").unwrap();
        assert_eq!(announce_outcome(&log), None);
        std::fs::write(
            &log,
            "x DEBUG leasewire: DHT announce incomplete; will retry\n",
        )
        .unwrap();
        assert_eq!(announce_outcome(&log), Some(false));
        std::fs::write(&log, "x DEBUG leasewire: announced on the DHT offer_id=a\n").unwrap();
        assert_eq!(announce_outcome(&log), Some(true));
    }
}
