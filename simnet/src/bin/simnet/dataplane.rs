//! `--netns` data-plane checks: real TCP connections through each renter's WireGuard tunnel.
//!
//! Steps of [`check_rental`], per renter (all renters at once):
//!
//! 1. start two listeners in the renter's namespace, on the leased IPv4 address and on the
//!    leased IPv6 address (`<prefix>::1`, as the renter configures it);
//! 2. outbound: from each leased address, connect to the internet host's listener; the
//!    listener's answer is the source address it saw, which must be the leased one
//!    (`source_seen`). Outbound goes first: it makes the renter's WireGuard handshake, and
//!    until then the provider does not know where to send inbound packets;
//! 3. inbound: the internet host connects to both renter listeners;
//! 4. wait until the lease's `paid_until`, then until all four directions fail
//!    (`suspend_cut`): the provider's metering removed the peer;
//! 5. `add-credit`, then until all four work again, on the same addresses (`resume_ok`).
//!
//! Two more probes live here, run by the scenario around [`check_rental`]: [`first_packet`]
//! (right after `rent` returns, the time to the first outbound connection through the
//! tunnel) and [`check_after_restart`] (every provider restarted, traffic must flow again
//! without the renter doing anything).
//!
//! Every probe is a fresh process (`simnet probe-connect`) in a namespace, see probe.rs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::process::Command;

use crate::cli::Cli;
use crate::cluster::Node;
use crate::netns::Topology;
use crate::probe::LISTENING;
use crate::procs::{Procs, run_capture};
use crate::report::DataPlane;

/// Registry names of probe listeners start with this, so they can be stopped apart from the
/// daemons (a listener killed by SIGTERM is no unclean daemon stop).
pub const PROBE_NAME_PREFIX: &str = "probe-";
/// Port of the internet host's listeners (v4 and v6).
pub const INTERNET_PORT: u16 = 7000;
/// Port of each renter's listeners on its leased addresses.
pub const RENTER_PORT: u16 = 7001;
/// Credit bought with `add-credit` to resume a suspended lease: it must cover the back rent
/// of the suspension (seconds at 1 sat/s) and leave the lease active for the rest of the run.
pub const RESUME_CREDIT_SAT: u64 = 3_600;
/// Connect timeout of one probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1_500);
/// How long the first checks may retry (the first WireGuard handshake, route setup).
const FIRST_CHECK_WINDOW: Duration = Duration::from_secs(15);
/// How long after `paid_until` the tunnel may stay open before the cut counts as failed: the
/// provider meters every second, plus clock granularity and probe time.
const CUT_WINDOW: Duration = Duration::from_secs(20);
/// How long after `add-credit` traffic may take to flow again: a renter retries its
/// handshake every 5 s (WireGuard's REKEY_TIMEOUT) while its packets go unanswered.
const RESUME_WINDOW: Duration = Duration::from_secs(40);
/// Pause between probe rounds.
const ROUND_PAUSE: Duration = Duration::from_millis(500);
/// How long after a provider restart its leases may take to carry traffic again: the daemon
/// re-applies every active lease on start, and a renter whose handshake went unanswered
/// retries every 5 s (WireGuard's REKEY_TIMEOUT).
const RESTART_WINDOW: Duration = Duration::from_secs(45);
/// Pause between first-packet probes: the resolution of `first_packet_ms`.
const FIRST_PACKET_PAUSE: Duration = Duration::from_millis(20);
/// Connect timeout of one first-packet probe. Short, so a SYN lost before the route or the
/// handshake existed costs one probe and not a full TCP retransmission interval (1 s).
const FIRST_PACKET_PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// How long after `rent` returns the first-packet loop keeps trying.
const FIRST_PACKET_WINDOW: Duration = Duration::from_secs(15);

/// Everything the probes need: where they run and how to start them.
#[derive(Clone)]
pub struct Prober<'a> {
    /// The namespaces.
    pub topo: &'a Topology,
    /// This simnet executable, which serves as the probe helper.
    pub exe: PathBuf,
    /// Registry for the long-running listeners.
    pub procs: Arc<Procs>,
    /// Directory for the listeners' logs.
    pub log_dir: PathBuf,
}

impl Prober<'_> {
    /// Starts a registered `probe-listen` on `addr` in `ns` and waits until it listens.
    ///
    /// Errors: it cannot start, exits (address not assigned, port taken) or does not report
    /// listening within 10 s.
    pub async fn listen(&self, name: &str, ns: &str, addr: SocketAddr) -> Result<()> {
        let log = self.log_dir.join(format!("{name}.log"));
        let cmd = self
            .topo
            .command(ns, &self.exe, ["probe-listen", "--addr", &addr.to_string()]);
        self.procs.spawn(name, Command::from(cmd), &log)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.procs.ensure_running(name)?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().any(|l| l.starts_with(LISTENING)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{name} did not start listening on {addr} in {ns}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One `probe-connect` from `bind` in `ns` to `to`; returns the source address the
    /// listener saw.
    ///
    /// Errors: the connection failed (the message is the helper's stderr).
    pub async fn connect(&self, ns: &str, bind: IpAddr, to: SocketAddr) -> Result<SocketAddr> {
        self.connect_within(ns, bind, to, PROBE_TIMEOUT).await
    }

    /// [`Prober::connect`] with its own connect-and-read `timeout`.
    ///
    /// Errors: as [`Prober::connect`].
    pub async fn connect_within(
        &self,
        ns: &str,
        bind: IpAddr,
        to: SocketAddr,
        timeout: Duration,
    ) -> Result<SocketAddr> {
        let ms = timeout.as_millis().to_string();
        let (bind_s, to_s) = (bind.to_string(), to.to_string());
        let args = [
            "probe-connect",
            "--bind",
            &bind_s,
            "--to",
            &to_s,
            "--timeout-ms",
            &ms,
        ];
        let cmd = self.topo.command(ns, &self.exe, args);
        let out = run_capture(Command::from(cmd), timeout + Duration::from_secs(5)).await?;
        if !out.status.success() {
            bail!("{bind} -> {to}: {}", out.stderr.trim());
        }
        out.stdout
            .trim()
            .parse()
            .map_err(|_| anyhow!("{bind} -> {to}: bad helper output {:?}", out.stdout.trim()))
    }
}

/// Starts the internet host's listeners (IPv4 and IPv6) in the internet namespace.
///
/// Errors: as [`Prober::listen`].
pub async fn start_internet_listeners(p: &Prober<'_>) -> Result<()> {
    let ns = p.topo.internet_ns();
    p.listen(
        &format!("{PROBE_NAME_PREFIX}inet-v4"),
        ns,
        SocketAddr::new(p.topo.internet_host_v4().into(), INTERNET_PORT),
    )
    .await?;
    p.listen(
        &format!("{PROBE_NAME_PREFIX}inet-v6"),
        ns,
        SocketAddr::new(p.topo.internet_host_v6().into(), INTERNET_PORT),
    )
    .await
}

/// The address a renter configures for a leased IPv4 prefix: its network address.
///
/// Errors: not an IPv4 prefix.
pub fn leased_v4(prefix: &str) -> Result<Ipv4Addr> {
    let net: ipnet::Ipv4Net = prefix
        .parse()
        .with_context(|| format!("bad leased IPv4 prefix {prefix:?}"))?;
    Ok(net.network())
}

/// The address a renter configures for a leased IPv6 prefix: `<prefix>::1` (see
/// src/market/renter/tunnel.rs), not the subnet-router anycast address.
///
/// Errors: not an IPv6 prefix.
pub fn leased_v6(prefix: &str) -> Result<Ipv6Addr> {
    let net: ipnet::Ipv6Net = prefix
        .parse()
        .with_context(|| format!("bad leased IPv6 prefix {prefix:?}"))?;
    Ok(Ipv6Addr::from(u128::from(net.network()) + 1))
}

/// One round of probes: each direction and family, with the source address the far end saw.
/// Inbound results are already checked to come from the internet host; outbound ones carry
/// whatever source the internet host saw (see [`Round::sources_ok`]).
#[derive(Debug)]
struct Round {
    out_v4: Result<SocketAddr, String>,
    out_v6: Result<SocketAddr, String>,
    in_v4: Result<SocketAddr, String>,
    in_v6: Result<SocketAddr, String>,
}

impl Round {
    fn all(&self) -> [(&'static str, &Result<SocketAddr, String>); 4] {
        [
            ("out_v4", &self.out_v4),
            ("out_v6", &self.out_v6),
            ("in_v4", &self.in_v4),
            ("in_v6", &self.in_v6),
        ]
    }

    fn all_ok(&self) -> bool {
        self.all().iter().all(|(_, r)| r.is_ok())
    }

    /// Both outbound connections got through and the internet host saw the leased addresses
    /// as their sources.
    fn sources_ok(&self, t: Target<'_>) -> bool {
        matches!(&self.out_v4, Ok(a) if a.ip() == IpAddr::V4(t.v4))
            && matches!(&self.out_v6, Ok(a) if a.ip() == IpAddr::V6(t.v6))
    }

    /// Everything got through, from the right sources.
    fn good(&self, t: Target<'_>) -> bool {
        self.all_ok() && self.sources_ok(t)
    }

    fn all_failed(&self) -> bool {
        self.all().iter().all(|(_, r)| r.is_err())
    }

    /// `name: error` for every failed probe.
    fn errors(&self) -> Vec<String> {
        self.all()
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
            .collect()
    }

    /// `name` for every probe that still got through.
    fn open(&self) -> Vec<&'static str> {
        self.all()
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(n, _)| *n)
            .collect()
    }
}

/// One renter's leased addresses and where it lives.
#[derive(Clone, Copy, Debug)]
struct Target<'a> {
    ns: &'a str,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

/// Probes all four directions once. Outbound first, see the module doc. An inbound
/// connection counts only if the renter saw the internet host as its source.
async fn round(p: &Prober<'_>, t: Target<'_>) -> Round {
    let inet = p.topo.internet_ns();
    let host4 = IpAddr::V4(p.topo.internet_host_v4());
    let host6 = IpAddr::V6(p.topo.internet_host_v6());
    let expect = |want: IpAddr, r: Result<SocketAddr>| -> Result<SocketAddr, String> {
        match r {
            Ok(seen) if seen.ip() == want => Ok(seen),
            Ok(seen) => Err(format!("far end saw source {seen}, expected {want}")),
            Err(e) => Err(format!("{e:#}")),
        }
    };
    let (v4, v6) = (IpAddr::V4(t.v4), IpAddr::V6(t.v6));
    let raw = |r: Result<SocketAddr>| r.map_err(|e| format!("{e:#}"));
    let out_v4 = raw(p
        .connect(t.ns, v4, SocketAddr::new(host4, INTERNET_PORT))
        .await);
    let out_v6 = raw(p
        .connect(t.ns, v6, SocketAddr::new(host6, INTERNET_PORT))
        .await);
    let in_v4 = expect(
        host4,
        p.connect(inet, host4, SocketAddr::new(v4, RENTER_PORT))
            .await,
    );
    let in_v6 = expect(
        host6,
        p.connect(inet, host6, SocketAddr::new(v6, RENTER_PORT))
            .await,
    );
    Round {
        out_v4,
        out_v6,
        in_v4,
        in_v6,
    }
}

/// Repeats rounds until `done` holds or `window` has passed; returns the last round.
async fn rounds_until(
    p: &Prober<'_>,
    t: Target<'_>,
    window: Duration,
    done: impl Fn(&Round) -> bool,
) -> Round {
    let deadline = Instant::now() + window;
    loop {
        let r = round(p, t).await;
        if done(&r) || Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs every data-plane check of one renter's lease (see the module doc). Never fails: what
/// went wrong is in [`DataPlane::notes`].
pub async fn check_rental(
    p: &Prober<'_>,
    cli: &Cli,
    node: &Node,
    ipv4: Option<&str>,
    ipv6: Option<&str>,
    paid_until: Option<u64>,
) -> DataPlane {
    let mut d = DataPlane::default();
    if let Err(e) = check_inner(p, cli, node, ipv4, ipv6, paid_until, &mut d).await {
        d.notes.push(format!("{e:#}"));
    }
    // The restart and first-packet verdicts are filled in by the scenario later; leave them
    // out here so this line names only what this function checked.
    let failed: Vec<&str> = d
        .failed_checks()
        .into_iter()
        .filter(|c| !matches!(*c, "provider_restart_ok" | "first_packet_ms"))
        .collect();
    tracing::info!(renter = %node.name, ?failed, "data plane checked");
    d
}

async fn check_inner(
    p: &Prober<'_>,
    cli: &Cli,
    node: &Node,
    ipv4: Option<&str>,
    ipv6: Option<&str>,
    paid_until: Option<u64>,
    d: &mut DataPlane,
) -> Result<()> {
    let ns = node
        .ns
        .as_deref()
        .ok_or_else(|| anyhow!("{} runs in no namespace", node.name))?;
    let v4 = leased_v4(ipv4.ok_or_else(|| anyhow!("the lease has no IPv4 prefix"))?)?;
    let v6 = leased_v6(ipv6.ok_or_else(|| anyhow!("the lease has no IPv6 prefix"))?)?;
    let paid_until = paid_until.ok_or_else(|| anyhow!("rent reported no paid_until"))?;
    let t = Target { ns, v4, v6 };
    for (fam, ip) in [("v4", IpAddr::V4(v4)), ("v6", IpAddr::V6(v6))] {
        let name = format!("{PROBE_NAME_PREFIX}{}-{fam}", node.name);
        p.listen(&name, ns, SocketAddr::new(ip, RENTER_PORT))
            .await?;
    }

    // 1. Both directions while the lease is paid.
    let first = rounds_until(p, t, FIRST_CHECK_WINDOW, |r| r.good(t)).await;
    d.out_v4 = first.out_v4.is_ok();
    d.out_v6 = first.out_v6.is_ok();
    d.in_v4 = first.in_v4.is_ok();
    d.in_v6 = first.in_v6.is_ok();
    d.source_ok = first.sources_ok(t);
    d.source_seen = first.out_v4.as_ref().ok().map(|a| a.ip().to_string());
    d.source_seen_v6 = first.out_v6.as_ref().ok().map(|a| a.ip().to_string());
    d.notes.extend(first.errors());
    if d.out_v4 && d.out_v6 && !d.source_ok {
        d.notes.push(format!(
            "the internet host saw {:?} / {:?}, not {v4} / {v6}",
            first.out_v4, first.out_v6
        ));
    }
    if now_unix() >= paid_until {
        // The first checks overlapped the end of the credit: their failures prove nothing.
        d.notes
            .push("the credit ran out before the first checks finished; buy more".into());
    }
    tracing::info!(renter = %node.name, ok = first.all_ok(), "tunnel checked while paid");

    // 2. The cut, once the provider's metering sees paid_until pass.
    let wait = paid_until.saturating_sub(now_unix());
    tracing::info!(renter = %node.name, wait_secs = wait, "waiting for the credit to run out");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let cut = rounds_until(p, t, CUT_WINDOW, Round::all_failed).await;
    d.suspend_cut = cut.all_failed();
    if !d.suspend_cut {
        d.notes.push(format!(
            "still open {}s after paid_until: {}",
            CUT_WINDOW.as_secs(),
            cut.open().join(", ")
        ));
    }
    tracing::info!(renter = %node.name, cut = d.suspend_cut, "suspension checked");

    // 3. Resume on the same addresses.
    let topped = cli
        .add_credit(&node.data_dir, RESUME_CREDIT_SAT)
        .await
        .context("add-credit")?;
    let same = |got: &Option<String>, want: Option<&str>| got.as_deref() == want;
    if !same(&topped.ipv4, ipv4) || !same(&topped.ipv6, ipv6) {
        d.notes.push(format!(
            "add-credit moved the lease to {:?} / {:?}",
            topped.ipv4, topped.ipv6
        ));
        return Ok(());
    }
    if topped.paid_until.is_none_or(|until| until <= now_unix()) {
        d.notes.push(format!(
            "add-credit of {RESUME_CREDIT_SAT} sat left the lease unpaid (paid_until {:?})",
            topped.paid_until
        ));
        return Ok(());
    }
    let back = rounds_until(p, t, RESUME_WINDOW, |r| r.good(t)).await;
    d.resume_ok = back.good(t);
    // Resumed traffic must come from the leased addresses too.
    d.source_ok &= back.sources_ok(t);
    d.notes.extend(
        back.errors()
            .into_iter()
            .map(|e| format!("after add-credit: {e}")),
    );
    Ok(())
}

/// Rent-to-first-packet: right after `rent` returned, probes outbound TCP from the leased
/// IPv4 address of `ipv4` to the internet host every [`FIRST_PACKET_PAUSE`], and returns the
/// milliseconds from `rent_started` to the end of the first probe that got through from that
/// address.
///
/// Errors: `node` runs in no namespace, `ipv4` is not an IPv4 prefix, or no probe got through
/// within [`FIRST_PACKET_WINDOW`] (the message is the last probe's error).
pub async fn first_packet(
    p: &Prober<'_>,
    node: &Node,
    ipv4: &str,
    rent_started: Instant,
) -> Result<u64> {
    let ns = node
        .ns
        .as_deref()
        .ok_or_else(|| anyhow!("{} runs in no namespace", node.name))?;
    let v4 = leased_v4(ipv4)?;
    let to = SocketAddr::new(p.topo.internet_host_v4().into(), INTERNET_PORT);
    let deadline = Instant::now() + FIRST_PACKET_WINDOW;
    loop {
        let last = match p
            .connect_within(ns, IpAddr::V4(v4), to, FIRST_PACKET_PROBE_TIMEOUT)
            .await
        {
            // Only a connection the internet host saw from the leased address went through
            // the tunnel; anything else leaked out of the underlay.
            Ok(seen) if seen.ip() == IpAddr::V4(v4) => {
                let ms = u64::try_from(rent_started.elapsed().as_millis()).unwrap_or(u64::MAX);
                tracing::info!(renter = %node.name, first_packet_ms = ms, "first packet through");
                return Ok(ms);
            }
            Ok(seen) => anyhow!("the internet host saw source {seen}, expected {v4}"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(last.context(format!(
                "no outbound IPv4 connection within {}s of the lease",
                FIRST_PACKET_WINDOW.as_secs()
            )));
        }
        tokio::time::sleep(FIRST_PACKET_PAUSE).await;
    }
}

/// After the provider of `node`'s lease restarted: repeats probe rounds (outbound and inbound,
/// IPv4 and IPv6, from the leased sources) until all get through or [`RESTART_WINDOW`]
/// passes. The renter does nothing in between: the provider alone must restore the tunnel.
/// Uses the renter listeners [`check_rental`] started, so call it before [`stop_listeners`].
///
/// Returns whether traffic flowed again, and why not.
pub async fn check_after_restart(
    p: &Prober<'_>,
    node: &Node,
    ipv4: Option<&str>,
    ipv6: Option<&str>,
) -> (bool, Vec<String>) {
    let target = || -> Result<Target<'_>> {
        Ok(Target {
            ns: node
                .ns
                .as_deref()
                .ok_or_else(|| anyhow!("{} runs in no namespace", node.name))?,
            v4: leased_v4(ipv4.ok_or_else(|| anyhow!("the lease has no IPv4 prefix"))?)?,
            v6: leased_v6(ipv6.ok_or_else(|| anyhow!("the lease has no IPv6 prefix"))?)?,
        })
    };
    let t = match target() {
        Ok(t) => t,
        Err(e) => return (false, vec![format!("after provider restart: {e:#}")]),
    };
    let started = Instant::now();
    let r = rounds_until(p, t, RESTART_WINDOW, |r| r.good(t)).await;
    let ok = r.good(t);
    tracing::info!(
        renter = %node.name, ok, secs = started.elapsed().as_secs_f32(),
        "tunnel checked after provider restart"
    );
    let mut notes: Vec<String> = r
        .errors()
        .into_iter()
        .map(|e| format!("after provider restart: {e}"))
        .collect();
    if r.all_ok() && !r.sources_ok(t) {
        notes.push(format!(
            "after provider restart the internet host saw {:?} / {:?}, not {} / {}",
            r.out_v4, r.out_v6, t.v4, t.v6
        ));
    }
    (ok, notes)
}

/// Every address of a leased IPv4 prefix, network address first (a /30 gives four).
///
/// Errors: not an IPv4 prefix, or one of more than 256 addresses.
pub fn leased_v4_all(prefix: &str) -> Result<Vec<Ipv4Addr>> {
    let net: ipnet::Ipv4Net = prefix
        .parse()
        .with_context(|| format!("bad leased IPv4 prefix {prefix:?}"))?;
    if net.prefix_len() < 24 {
        bail!("{prefix} is larger than a /24");
    }
    let first = u32::from(net.network());
    Ok((0..1u32 << (32 - net.prefix_len()))
        .map(|i| Ipv4Addr::from(first + i))
        .collect())
}

/// Real traffic to and from each of `addrs`, leased addresses configured in `node`'s
/// namespace: for each, an outbound TCP connection from it to the internet host (which must
/// see it as the source) and an inbound one from the internet host to a listener on it (which
/// must see the internet host). Rounds repeat until all hold or `window` passes. Listeners
/// are started on the first call for an address and reused by later ones.
///
/// Returns whether every address carried traffic both ways, and why not.
pub async fn check_addresses(
    p: &Prober<'_>,
    node: &Node,
    addrs: &[IpAddr],
    window: Duration,
) -> (bool, Vec<String>) {
    let Some(ns) = node.ns.as_deref() else {
        return (false, vec![format!("{} runs in no namespace", node.name)]);
    };
    if addrs.is_empty() {
        return (false, vec!["no leased address to check".to_owned()]);
    }
    for a in addrs {
        let name = format!(
            "{PROBE_NAME_PREFIX}{}-{}",
            node.name,
            a.to_string().replace([':', '.'], "-")
        );
        if p.procs.ensure_running(&name).is_ok() {
            continue;
        }
        if let Err(e) = p.listen(&name, ns, SocketAddr::new(*a, RENTER_PORT)).await {
            return (false, vec![format!("listener on {a}: {e:#}")]);
        }
    }
    let inet = p.topo.internet_ns();
    let host = |a: &IpAddr| -> IpAddr {
        match a {
            IpAddr::V4(_) => p.topo.internet_host_v4().into(),
            IpAddr::V6(_) => p.topo.internet_host_v6().into(),
        }
    };
    let deadline = Instant::now() + window;
    loop {
        let mut errors = Vec::new();
        for a in addrs {
            let h = host(a);
            // Outbound first: it makes the renter's handshake (see the module doc).
            match p.connect(ns, *a, SocketAddr::new(h, INTERNET_PORT)).await {
                Ok(seen) if seen.ip() == *a => {}
                Ok(seen) => errors.push(format!("out from {a}: internet host saw {seen}")),
                Err(e) => errors.push(format!("out from {a}: {e:#}")),
            }
            match p.connect(inet, h, SocketAddr::new(*a, RENTER_PORT)).await {
                Ok(seen) if seen.ip() == h => {}
                Ok(seen) => errors.push(format!("in to {a}: renter saw {seen}")),
                Err(e) => errors.push(format!("in to {a}: {e:#}")),
            }
        }
        if errors.is_empty() {
            return (true, Vec::new());
        }
        if Instant::now() >= deadline {
            return (false, errors);
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
}

/// Stops every probe listener in `procs` (they run until killed).
pub async fn stop_listeners(procs: &Procs) {
    let stopped = procs
        .stop_matching(Duration::from_secs(2), |n| n.starts_with(PROBE_NAME_PREFIX))
        .await;
    tracing::debug!(listeners = stopped.len(), "probe listeners stopped");
}

/// Directory for probe logs under the run root.
pub fn log_dir(root: &Path) -> Result<PathBuf> {
    let dir = root.join("probes");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leased_addresses_follow_the_renter() {
        assert_eq!(
            leased_v4("198.51.100.17/32").unwrap(),
            Ipv4Addr::new(198, 51, 100, 17)
        );
        assert_eq!(
            leased_v6("2001:db8:100:3::/64").unwrap(),
            "2001:db8:100:3::1".parse::<Ipv6Addr>().unwrap()
        );
        assert!(leased_v4("2001:db8::/64").is_err());
        assert!(leased_v6("198.51.100.0/32").is_err());
    }

    #[test]
    fn every_address_of_a_leased_subnet() {
        assert_eq!(
            leased_v4_all("198.51.100.4/30").unwrap(),
            (4..8)
                .map(|i| Ipv4Addr::new(198, 51, 100, i))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            leased_v4_all("198.51.100.9/32").unwrap(),
            [Ipv4Addr::new(198, 51, 100, 9)]
        );
        assert!(leased_v4_all("10.0.0.0/8").is_err());
        assert!(leased_v4_all("2001:db8::/64").is_err());
    }

    #[test]
    fn round_verdicts() {
        let ok: Result<SocketAddr, String> = Ok("192.0.2.1:1".parse().unwrap());
        let bad: Result<SocketAddr, String> = Err("timed out".into());
        let t = Target {
            ns: "lw-x-r0",
            v4: Ipv4Addr::new(198, 51, 100, 1),
            v6: "2001:db8:100::1".parse().unwrap(),
        };
        let r = Round {
            out_v4: ok.clone(),
            out_v6: ok.clone(),
            in_v4: ok.clone(),
            in_v6: ok.clone(),
        };
        assert!(r.all_ok() && !r.all_failed() && r.errors().is_empty());
        // Connected, but not from the leased addresses.
        assert!(!r.sources_ok(t) && !r.good(t));
        let r = Round {
            out_v4: Ok("198.51.100.1:5".parse().unwrap()),
            out_v6: Ok("[2001:db8:100::1]:5".parse().unwrap()),
            ..r
        };
        assert!(r.sources_ok(t) && r.good(t));
        let r = Round {
            out_v4: bad.clone(),
            out_v6: ok.clone(),
            in_v4: bad.clone(),
            in_v6: bad.clone(),
        };
        assert!(!r.all_ok() && !r.all_failed());
        assert_eq!(r.open(), ["out_v6"]);
        assert_eq!(r.errors()[0], "out_v4: timed out");
        let r = Round {
            out_v4: bad.clone(),
            out_v6: bad.clone(),
            in_v4: bad.clone(),
            in_v6: bad,
        };
        assert!(r.all_failed());
    }
}
