//! Network-namespace topology for `simnet --netns`: one namespace per daemon, joined by an
//! `internet` namespace that routes between them and nowhere else.
//!
//! ```text
//!                 lw-<run>-inet   "internet": forwards, has NO default route;
//!                                 lo holds 203.0.113.1/32 and 2001:db8:ffff::1/128;
//!                                 routes each provider's pools to that provider
//!      lw-p0       lw-p1    ...     lw-r0       lw-r1    ...   veth ends in lw-<run>-inet
//!        │           │                │           │
//!       up0         up0              up0         up0           veth ends in the nodes
//!  lw-<run>-p0 lw-<run>-p1  ...  lw-<run>-r0 lw-<run>-r1  ...
//!  (providers: forwarding on)    (renters)
//! ```
//!
//! Link `n` (providers first, then renters) is the /30 `192.0.2.(4n)/30` and the /126
//! `2001:db8::(4n)/126` (last group in hex): the internet end is host 1, the daemon end
//! host 2. Each daemon namespace has a default route to the internet end of its own veth and
//! nothing else, and the internet namespace has no default route at all, so traffic to
//! anything that is not part of the topology is dropped on this machine. Veths are created
//! directly inside the namespaces (`ip -n NS link add ... peer ... netns INET`), so the host's
//! namespace never sees them and deleting the namespaces removes every interface.
//!
//! [`Topology::create`] does, in order:
//!
//! 1. check the spec (sizes, run id, pools that clash with the underlay or each other);
//! 2. create the internet namespace: `lo` up, pinned sysctls, forwarding, host addresses;
//! 3. per provider and renter: a namespace with `lo` up, a veth pair to the internet namespace,
//!    both ends up, addresses, default routes (IPv6 duplicate address detection is off in
//!    every namespace, so addresses and neighbour discovery work from the first packet);
//! 4. in the internet namespace, a route per provider pool via that provider's underlay.
//!
//! Any failure tears down whatever was already made. Everything shells out to iproute2: this
//! is test orchestration; the daemon itself configures its interfaces over rtnetlink.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail, ensure};
use ipnet::IpNet;

/// Prefix of every namespace simnet creates; [`leftover_namespaces`] looks for it.
pub const NS_PREFIX: &str = "lw-";
/// Most providers plus renters one topology can hold: one /30 of 192.0.2.0/24 each.
pub const MAX_NODES: usize = 64;
/// Longest accepted run id; keeps namespace names short and readable.
pub const MAX_RUN_ID_LEN: usize = 24;
/// Name of the uplink veth inside every provider and renter namespace.
pub const UPLINK: &str = "up0";
/// The internet host's IPv4 address, on `lo` of the internet namespace.
pub const INTERNET_HOST_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The internet host's IPv6 address, on `lo` of the internet namespace.
pub const INTERNET_HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);

/// Prefix length of each link's IPv4 subnet.
const LINK_PREFIX_V4: u8 = 30;
/// Prefix length of each link's IPv6 subnet.
const LINK_PREFIX_V6: u8 = 126;
/// Host number of the internet namespace's end of a link.
const INTERNET_END: usize = 1;
/// Host number of the daemon namespace's end of a link.
const NODE_END: usize = 2;

/// What to build: how many providers (with the pools each one leases out) and renters.
#[derive(Clone, Debug)]
pub struct TopologySpec {
    /// Distinguishes this run's namespaces from any other run's: ASCII letters, digits and
    /// `-`, 1 to [`MAX_RUN_ID_LEN`] characters.
    pub run_id: String,
    /// One entry per provider: the prefixes it leases out, routed to it by the internet
    /// namespace. Each must be canonical (no host bits set) and must not overlap the underlay
    /// (192.0.2.0/24, 2001:db8::/64), the internet host or another pool.
    pub providers: Vec<Vec<IpNet>>,
    /// Number of renter namespaces.
    pub renters: usize,
}

/// One provider or renter namespace and its link to the internet namespace.
#[derive(Clone, Debug)]
struct Node {
    /// Namespace name.
    ns: String,
    /// Name of the veth end inside the internet namespace.
    peer_if: String,
    /// Link number: selects the /30 and /126 of the underlay.
    link: usize,
}

impl Node {
    fn underlay_v4(&self) -> Ipv4Addr {
        link_v4(self.link, NODE_END)
    }

    fn underlay_v6(&self) -> Ipv6Addr {
        link_v6(self.link, NODE_END)
    }

    fn gateway_v4(&self) -> Ipv4Addr {
        link_v4(self.link, INTERNET_END)
    }

    fn gateway_v6(&self) -> Ipv6Addr {
        link_v6(self.link, INTERNET_END)
    }
}

/// A live set of namespaces built from a [`TopologySpec`].
///
/// Dropping it deletes every namespace it created (best effort, failures are logged); call
/// [`Topology::teardown`] to see errors. Stop the processes running inside first: a namespace
/// that still has processes disappears from `ip netns list` but lives on until they exit.
#[derive(Debug)]
pub struct Topology {
    internet: String,
    providers: Vec<Node>,
    renters: Vec<Node>,
    /// Namespaces this topology created and has not yet deleted, in creation order.
    created: Vec<String>,
}

impl Topology {
    /// Builds the topology described by `spec` on this machine (see the module doc).
    ///
    /// Blocking: runs a few `ip` commands per node (tens of milliseconds in all for a small
    /// run); from async code call it through `spawn_blocking`.
    ///
    /// Errors: an invalid spec (bad run id, too many nodes, a pool that is not canonical or
    /// clashes with the underlay or another pool), a namespace name already in use, or any
    /// `ip`/`sysctl` command failing (not root, iproute2 missing, ...). On error nothing the
    /// call created is left behind.
    pub fn create(spec: &TopologySpec) -> Result<Topology> {
        validate(spec)?;
        let prefix = run_prefix(&spec.run_id);
        let node = |kind: char, i: usize, link: usize| Node {
            ns: format!("{prefix}{kind}{i}"),
            peer_if: format!("lw-{kind}{i}"),
            link,
        };
        let n_providers = spec.providers.len();
        let mut topo = Topology {
            internet: format!("{prefix}inet"),
            providers: (0..n_providers).map(|i| node('p', i, i)).collect(),
            renters: (0..spec.renters)
                .map(|i| node('r', i, n_providers + i))
                .collect(),
            created: Vec::new(),
        };
        // On any error below `topo` is dropped, which deletes what was already made.
        topo.build(spec)
            .with_context(|| format!("cannot build the netns topology for run {}", spec.run_id))?;
        tracing::info!(
            run = %spec.run_id,
            providers = n_providers,
            renters = spec.renters,
            "netns topology up"
        );
        Ok(topo)
    }

    fn build(&mut self, spec: &TopologySpec) -> Result<()> {
        let inet = self.internet.clone();
        self.add_namespace(&inet, true)?;
        ip(&[
            "-n",
            &inet,
            "addr",
            "add",
            &format!("{INTERNET_HOST_V4}/32"),
            "dev",
            "lo",
        ])?;
        ip(&[
            "-n",
            &inet,
            "-6",
            "addr",
            "add",
            &format!("{INTERNET_HOST_V6}/128"),
            "dev",
            "lo",
        ])?;

        let nodes: Vec<(Node, bool)> = self
            .providers
            .iter()
            .map(|n| (n.clone(), true))
            .chain(self.renters.iter().map(|n| (n.clone(), false)))
            .collect();
        for (node, forwards) in &nodes {
            self.add_namespace(&node.ns, *forwards)?;
            self.link_to_internet(node)?;
        }

        for (node, pools) in self.providers.iter().zip(&spec.providers) {
            for pool in pools {
                let via = match pool {
                    IpNet::V4(_) => IpAddr::V4(node.underlay_v4()),
                    IpNet::V6(_) => IpAddr::V6(node.underlay_v6()),
                };
                ip(&[
                    "-n",
                    &inet,
                    "route",
                    "add",
                    &pool.to_string(),
                    "via",
                    &via.to_string(),
                    "dev",
                    &node.peer_if,
                ])?;
            }
        }
        Ok(())
    }

    /// Creates namespace `ns`, records it for teardown, brings `lo` up and sets its sysctls.
    fn add_namespace(&mut self, ns: &str, forwards: bool) -> Result<()> {
        ip(&["netns", "add", ns])?;
        self.created.push(ns.to_owned());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        // IPv4 conf values of a new namespace are copied from the host's; pin rp_filter so a
        // strict host setting cannot drop leased-address traffic depending on the machine.
        let mut settings = vec![
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv6.conf.all.disable_ipv6=0",
            "net.ipv6.conf.default.disable_ipv6=0",
            // No duplicate address detection on the veths created after this, link-local
            // addresses included: while a link-local address is still tentative, neighbour
            // discovery through it fails and the first packets across a fresh topology are
            // lost. The veths are point-to-point links we own; a duplicate cannot exist.
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ];
        if forwards {
            settings.extend(["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
        }
        // sysctl must run inside the namespace: /proc/sys/net shows the opener's namespace.
        let mut cmd = netns_exec(ns, "sysctl", ["-q", "-w"].into_iter().chain(settings));
        run(&mut cmd)?;
        Ok(())
    }

    /// The veth pair between `node` and the internet namespace, its addresses and the
    /// default routes of `node`.
    fn link_to_internet(&self, node: &Node) -> Result<()> {
        let inet = self.internet.as_str();
        let ns = node.ns.as_str();
        let peer = node.peer_if.as_str();
        ip(&[
            "-n", ns, "link", "add", UPLINK, "type", "veth", "peer", "name", peer, "netns", inet,
        ])?;
        // Both ends up before addressing, so the connected routes the gateways need exist.
        ip(&["-n", ns, "link", "set", UPLINK, "up"])?;
        ip(&["-n", inet, "link", "set", peer, "up"])?;
        for (ns, dev, v4, v6) in [
            (inet, peer, node.gateway_v4(), node.gateway_v6()),
            (ns, UPLINK, node.underlay_v4(), node.underlay_v6()),
        ] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v4}/{LINK_PREFIX_V4}"),
                "dev",
                dev,
            ])?;
            // nodad as well as accept_dad=0: the address is usable at once even if a host
            // setting made DAD mandatory.
            let v6 = format!("{v6}/{LINK_PREFIX_V6}");
            ip(&["-n", ns, "-6", "addr", "add", &v6, "dev", dev, "nodad"])?;
        }
        let gw4 = node.gateway_v4().to_string();
        let gw6 = node.gateway_v6().to_string();
        ip(&[
            "-n", ns, "route", "add", "default", "via", &gw4, "dev", UPLINK,
        ])?;
        ip(&[
            "-n", ns, "-6", "route", "add", "default", "via", &gw6, "dev", UPLINK,
        ])?;
        Ok(())
    }

    /// Name of the internet namespace (router and internet host).
    pub fn internet_ns(&self) -> &str {
        &self.internet
    }

    /// Name of provider `i`'s namespace. Panics if `i` is not below the spec's provider count.
    pub fn provider_ns(&self, i: usize) -> &str {
        &self.providers[i].ns
    }

    /// Name of renter `i`'s namespace. Panics if `i` is not below the spec's renter count.
    pub fn renter_ns(&self, i: usize) -> &str {
        &self.renters[i].ns
    }

    /// Number of provider namespaces.
    pub fn providers(&self) -> usize {
        self.providers.len()
    }

    /// Number of renter namespaces.
    pub fn renters(&self) -> usize {
        self.renters.len()
    }

    /// Provider `i`'s IPv4 underlay address (on its [`UPLINK`]). Panics if `i` is out of range.
    pub fn provider_underlay_v4(&self, i: usize) -> Ipv4Addr {
        self.providers[i].underlay_v4()
    }

    /// Provider `i`'s IPv6 underlay address (on its [`UPLINK`]). Panics if `i` is out of range.
    pub fn provider_underlay_v6(&self, i: usize) -> Ipv6Addr {
        self.providers[i].underlay_v6()
    }

    /// Renter `i`'s IPv4 underlay address (on its [`UPLINK`]). Panics if `i` is out of range.
    pub fn renter_underlay_v4(&self, i: usize) -> Ipv4Addr {
        self.renters[i].underlay_v4()
    }

    /// Renter `i`'s IPv6 underlay address (on its [`UPLINK`]). Panics if `i` is out of range.
    pub fn renter_underlay_v6(&self, i: usize) -> Ipv6Addr {
        self.renters[i].underlay_v6()
    }

    /// IPv4 address of the internet namespace's end of provider `i`'s link: its default
    /// gateway. Panics if `i` is out of range.
    pub fn provider_gateway_v4(&self, i: usize) -> Ipv4Addr {
        self.providers[i].gateway_v4()
    }

    /// IPv6 address of the internet namespace's end of provider `i`'s link: its default
    /// gateway. Panics if `i` is out of range.
    pub fn provider_gateway_v6(&self, i: usize) -> Ipv6Addr {
        self.providers[i].gateway_v6()
    }

    /// IPv4 address of the internet namespace's end of renter `i`'s link: its default
    /// gateway. Panics if `i` is out of range.
    pub fn renter_gateway_v4(&self, i: usize) -> Ipv4Addr {
        self.renters[i].gateway_v4()
    }

    /// IPv6 address of the internet namespace's end of renter `i`'s link: its default
    /// gateway. Panics if `i` is out of range.
    pub fn renter_gateway_v6(&self, i: usize) -> Ipv6Addr {
        self.renters[i].gateway_v6()
    }

    /// The internet host's IPv4 address (203.0.113.1), reachable from every namespace.
    pub fn internet_host_v4(&self) -> Ipv4Addr {
        INTERNET_HOST_V4
    }

    /// The internet host's IPv6 address (2001:db8:ffff::1), reachable from every namespace.
    pub fn internet_host_v6(&self) -> Ipv6Addr {
        INTERNET_HOST_V6
    }

    /// `ip netns exec NS PROGRAM ARGS...`: a command that runs inside namespace `ns`.
    ///
    /// `ip netns exec` execs the program in place, so the child's pid is the program's and
    /// `PR_SET_PDEATHSIG` set before exec still applies (see procs.rs). For tokio, convert
    /// with `tokio::process::Command::from`. `ns` is not checked against this topology.
    pub fn command<I, S>(&self, ns: &str, program: impl AsRef<OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        netns_exec(ns, program, args)
    }

    /// Sends one ICMP echo from namespace `ns` to `addr` and waits up to 2 s for the reply.
    ///
    /// Uses `ping` from `PATH`, or busybox's when there is none. Only meant for addresses of
    /// this topology (the network rule: nothing leaves the machine).
    ///
    /// Errors: neither `ping` nor `busybox` is installed, or no reply came (the message
    /// includes ping's output).
    pub fn ping(&self, ns: &str, addr: IpAddr) -> Result<()> {
        let family = if addr.is_ipv4() { "-4" } else { "-6" };
        let target = addr.to_string();
        let ping_args = [family, "-c1", "-W2", target.as_str()];
        let mut cmd = if find_program("ping").is_some() {
            netns_exec(ns, "ping", ping_args)
        } else if find_program("busybox").is_some() {
            netns_exec(ns, "busybox", std::iter::once("ping").chain(ping_args))
        } else {
            bail!("neither ping nor busybox is installed (apt-get install iputils-ping)");
        };
        run(&mut cmd).map(drop)
    }

    /// Deletes every namespace this topology created (and with them every veth). Idempotent:
    /// namespaces that are already gone are skipped.
    ///
    /// Errors: one or more namespaces could not be deleted; the message names each. Those are
    /// retried once more when the value is dropped.
    pub fn teardown(mut self) -> Result<()> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Result<()> {
        if self.created.is_empty() {
            return Ok(());
        }
        // Nodes first and the internet namespace last, the reverse of creation.
        let names: Vec<String> = self.created.drain(..).rev().collect();
        let failed = remove_namespaces(&names);
        self.created = failed.iter().map(|(ns, _)| ns.clone()).collect();
        if failed.is_empty() {
            tracing::debug!(namespaces = names.len(), "netns topology torn down");
            return Ok(());
        }
        let detail: Vec<String> = failed
            .iter()
            .map(|(ns, e)| format!("{ns}: {e:#}"))
            .collect();
        bail!("cannot delete namespaces: {}", detail.join("; "))
    }

    /// Checks that this machine can build a topology, naming everything that is missing:
    /// root, iproute2 (`ip` with working `ip netns`), `sysctl`, `/dev/net/tun` and
    /// `wireguard-go` (or the program named by `WG_USERSPACE_IMPLEMENTATION`).
    ///
    /// Errors: one message listing every missing piece.
    pub fn preflight() -> Result<()> {
        let mut missing = Vec::new();
        if !is_root() {
            missing.push(
                "root privileges (network namespaces need CAP_SYS_ADMIN): run as root".to_owned(),
            );
        }
        if find_program("ip").is_none() {
            missing.push("the `ip` program (apt-get install iproute2)".to_owned());
        } else if let Err(e) = list_namespaces("") {
            missing.push(format!("working `ip netns` ({e:#})"));
        }
        if find_program("sysctl").is_none() {
            missing.push("the `sysctl` program (apt-get install procps)".to_owned());
        }
        if !Path::new("/dev/net/tun").exists() {
            missing.push("/dev/net/tun (wireguard-go needs the tun driver)".to_owned());
        }
        let wg = std::env::var("WG_USERSPACE_IMPLEMENTATION")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "wireguard-go".to_owned());
        if find_program(&wg).is_none() {
            missing.push(format!("the `{wg}` program (apt-get install wireguard-go)"));
        }
        if missing.is_empty() {
            Ok(())
        } else {
            bail!(
                "simnet --netns cannot run here; missing: {}",
                missing.join(", ")
            )
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Err(e) = self.teardown_inner() {
            tracing::warn!("netns teardown: {e:#}");
        }
    }
}

/// `lw-<run_id>-`: the prefix of every namespace of run `run_id`.
pub fn run_prefix(run_id: &str) -> String {
    format!("{NS_PREFIX}{run_id}-")
}

/// Names of the network namespaces (from `ip netns list`) that start with `prefix`, sorted.
///
/// Errors: `ip` cannot be run or fails.
pub fn list_namespaces(prefix: &str) -> Result<Vec<String>> {
    Ok(parse_netns_list(&ip(&["netns", "list"])?, prefix))
}

/// The names in `ip netns list` output that start with `prefix`, sorted.
fn parse_netns_list(out: &str, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = out
        .lines()
        // Lines read "NAME" or "NAME (id: N)".
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

/// Every simnet namespace that exists (all runs): after a clean run there are none of that
/// run's (see [`run_prefix`]); others are left over by runs that were killed.
///
/// Errors: as [`list_namespaces`].
pub fn leftover_namespaces() -> Result<Vec<String>> {
    list_namespaces(NS_PREFIX)
}

/// Deletes each namespace in `names` that still exists, for instance leftovers of a killed
/// run. Returns the ones that could not be deleted, with why; never stops early.
pub fn remove_namespaces(names: &[String]) -> Vec<(String, anyhow::Error)> {
    // When the list cannot be read, try them all and report what fails.
    let existing = list_namespaces("").ok();
    let mut failed = Vec::new();
    for ns in names {
        if existing.as_ref().is_some_and(|e| !e.contains(ns)) {
            continue;
        }
        if let Err(e) = ip(&["netns", "del", ns]) {
            failed.push((ns.clone(), e));
        }
    }
    failed
}

/// Address `host` of link `link` in 192.0.2.0/24.
fn link_v4(link: usize, host: usize) -> Ipv4Addr {
    let last = u8::try_from(4 * link + host).expect("validate() bounds links to 192.0.2.0/24");
    Ipv4Addr::new(192, 0, 2, last)
}

/// Address `host` of link `link` in 2001:db8::/64.
fn link_v6(link: usize, host: usize) -> Ipv6Addr {
    let last = u16::try_from(4 * link + host).expect("validate() bounds the link count");
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}

/// The underlay prefixes pools must stay out of.
fn underlay() -> [IpNet; 2] {
    [
        IpNet::new(Ipv4Addr::new(192, 0, 2, 0).into(), 24).expect("24 is a valid IPv4 length"),
        IpNet::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0).into(), 64)
            .expect("64 is a valid IPv6 length"),
    ]
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Checks a spec before anything is created, so a bad one leaves no trace.
fn validate(spec: &TopologySpec) -> Result<()> {
    let id = &spec.run_id;
    ensure!(
        !id.is_empty()
            && id.len() <= MAX_RUN_ID_LEN
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
        "run id {id:?} must be 1 to {MAX_RUN_ID_LEN} ASCII letters, digits or '-'"
    );
    let nodes = spec.providers.len() + spec.renters;
    ensure!(
        nodes <= MAX_NODES,
        "{nodes} providers and renters do not fit the underlay (at most {MAX_NODES})"
    );
    let host_v4 = IpNet::from(IpAddr::V4(INTERNET_HOST_V4));
    let host_v6 = IpNet::from(IpAddr::V6(INTERNET_HOST_V6));
    let mut seen: Vec<(usize, IpNet)> = Vec::new();
    for (p, pools) in spec.providers.iter().enumerate() {
        for pool in pools {
            ensure!(
                *pool == pool.trunc(),
                "provider {p}: pool {pool} has host bits set (did you mean {}?)",
                pool.trunc()
            );
            for reserved in underlay().iter().chain([&host_v4, &host_v6]) {
                ensure!(
                    !overlaps(pool, reserved),
                    "provider {p}: pool {pool} overlaps {reserved}, which the topology uses"
                );
            }
            if let Some((q, other)) = seen.iter().find(|(_, o)| overlaps(pool, o)) {
                bail!("provider {p}: pool {pool} overlaps provider {q}'s pool {other}");
            }
            seen.push((p, *pool));
        }
    }
    Ok(())
}

/// `ip netns exec ns program args...`, with stdin closed.
fn netns_exec<I, S>(ns: &str, program: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// Runs `ip args...` and returns its stdout.
fn ip(args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(args).stdin(Stdio::null());
    run(&mut cmd)
}

/// Runs `cmd` to completion and returns its stdout; a failure carries the command line and
/// what it printed.
fn run(cmd: &mut Command) -> Result<String> {
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::trace!(cmd = %line, "run");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(anyhow!(
            "`{line}` failed ({}): {}",
            out.status,
            format!("{} {}", stderr.trim(), stdout.trim()).trim()
        ));
    }
    Ok(stdout)
}

/// The executable `name` resolves to: itself if it contains a `/`, else the first match on
/// `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The root tests compare machine-wide state (`ip netns list`, host veths), so they run
    /// one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn net(s: &str) -> IpNet {
        s.parse().expect("test prefix")
    }

    /// True when the test may go on; false (after saying so) when it must be skipped.
    fn root_or_skip(test: &str) -> bool {
        if is_root() {
            return true;
        }
        if std::env::var_os("CI").is_some() {
            panic!("{test} needs root for network namespaces, and CI is set: run it as root");
        }
        eprintln!("SKIPPED {test}: needs root for network namespaces");
        false
    }

    /// A run id unique to this process and test.
    fn run_id(tag: &str) -> String {
        format!("t{}{tag}", std::process::id())
    }

    fn spec(tag: &str) -> TopologySpec {
        TopologySpec {
            run_id: run_id(tag),
            providers: vec![
                vec![net("198.51.100.0/28"), net("2001:db8:100::/48")],
                vec![net("198.51.100.16/28"), net("2001:db8:101::/48")],
            ],
            renters: 2,
        }
    }

    /// Veths in the host namespace that carry one of this module's interface names. Other
    /// people's veths may come and go on a shared machine, so only ours are compared.
    fn host_veths() -> Vec<String> {
        let out = ip(&["-o", "link", "show", "type", "veth"]).expect("list host veths");
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .filter(|n| n == UPLINK || n.starts_with("lw-"))
            .collect()
    }

    fn route_get(ns: &str, addr: &str) -> Result<String> {
        ip(&["-n", ns, "route", "get", addr])
    }

    fn sysctl(ns: &str, key: &str) -> String {
        let mut cmd = netns_exec(ns, "sysctl", ["-n", key]);
        run(&mut cmd).expect("read sysctl").trim().to_owned()
    }

    #[test]
    fn addressing_is_per_link() {
        assert_eq!(link_v4(0, INTERNET_END), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(link_v4(0, NODE_END), Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(link_v4(3, NODE_END), Ipv4Addr::new(192, 0, 2, 14));
        assert_eq!(
            link_v4(MAX_NODES - 1, NODE_END),
            Ipv4Addr::new(192, 0, 2, 254)
        );
        assert_eq!(
            link_v6(3, INTERNET_END),
            "2001:db8::d".parse::<Ipv6Addr>().unwrap()
        );
        // Both ends of a link share its subnet; different links never do.
        let a = IpNet::new(link_v4(5, NODE_END).into(), LINK_PREFIX_V4).unwrap();
        assert!(a.contains(&IpAddr::V4(link_v4(5, INTERNET_END))));
        assert!(!a.contains(&IpAddr::V4(link_v4(6, INTERNET_END))));
        let b = IpNet::new(link_v6(5, NODE_END).into(), LINK_PREFIX_V6).unwrap();
        assert!(b.contains(&IpAddr::V6(link_v6(5, INTERNET_END))));
        assert!(!b.contains(&IpAddr::V6(link_v6(4, NODE_END))));
    }

    #[test]
    fn validate_rejects_bad_specs() {
        assert!(validate(&spec("ok")).is_ok());
        let with = |f: fn(&mut TopologySpec)| {
            let mut s = spec("x");
            f(&mut s);
            validate(&s).unwrap_err().to_string()
        };
        assert!(with(|s| s.run_id = String::new()).contains("run id"));
        assert!(with(|s| s.run_id = "a b".into()).contains("run id"));
        assert!(with(|s| s.run_id = "x".repeat(MAX_RUN_ID_LEN + 1)).contains("run id"));
        assert!(with(|s| s.renters = MAX_NODES - 1).contains("do not fit"));
        assert!(with(|s| s.providers[0] = vec![net("198.51.100.1/28")]).contains("host bits"));
        assert!(with(|s| s.providers[0] = vec![net("192.0.2.128/25")]).contains("overlaps"));
        assert!(with(|s| s.providers[0] = vec![net("2001:db8::/48")]).contains("overlaps"));
        assert!(with(|s| s.providers[0] = vec![net("203.0.113.0/24")]).contains("overlaps"));
        let e = with(|s| s.providers[1] = vec![net("198.51.100.0/24")]);
        assert!(e.contains("provider 0's pool 198.51.100.0/28"), "{e}");
        // Exactly full is fine.
        let mut s = spec("full");
        s.renters = MAX_NODES - s.providers.len();
        assert!(validate(&s).is_ok());
    }

    #[test]
    fn names_fit_interface_and_run_limits() {
        let id = "x".repeat(MAX_RUN_ID_LEN);
        assert!(run_prefix(&id).starts_with(NS_PREFIX));
        // Interface names in the internet namespace: at most 15 bytes (IFNAMSIZ - 1).
        assert!(format!("lw-r{}", MAX_NODES - 1).len() <= 15);
        assert!(UPLINK.len() <= 15);
    }

    #[test]
    fn netns_list_output_is_parsed() {
        let out = "lw-b-inet (id: 3)\nother\nlw-a-p0\n\nlw-a-r1 (id: 0)\n";
        assert_eq!(
            parse_netns_list(out, NS_PREFIX),
            ["lw-a-p0", "lw-a-r1", "lw-b-inet"]
        );
        assert_eq!(
            parse_netns_list(out, &run_prefix("a")),
            ["lw-a-p0", "lw-a-r1"]
        );
        assert_eq!(parse_netns_list(out, "").len(), 4);
        assert!(parse_netns_list("", NS_PREFIX).is_empty());
    }

    #[test]
    fn command_wraps_ip_netns_exec() {
        let t = Topology {
            internet: "lw-x-inet".into(),
            providers: Vec::new(),
            renters: Vec::new(),
            created: Vec::new(),
        };
        let c = t.command("lw-x-r0", "wg", ["show", "wg0"]);
        assert_eq!(c.get_program(), "ip");
        let args: Vec<_> = c.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(args, ["netns", "exec", "lw-x-r0", "wg", "show", "wg0"]);
    }

    #[test]
    fn renters_reach_their_gateway_and_the_internet_host() {
        if !root_or_skip("renters_reach_their_gateway_and_the_internet_host") {
            return;
        }
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        Topology::preflight().expect("preflight");
        let t = Topology::create(&spec("a")).expect("create topology");
        for r in 0..t.renters() {
            let ns = t.renter_ns(r);
            for addr in [
                IpAddr::V4(t.renter_gateway_v4(r)),
                IpAddr::V4(t.internet_host_v4()),
                IpAddr::V6(t.renter_gateway_v6(r)),
                IpAddr::V6(t.internet_host_v6()),
            ] {
                t.ping(ns, addr)
                    .unwrap_or_else(|e| panic!("{ns} -> {addr}: {e:#}"));
            }
        }
        // Renter to provider crosses the internet namespace both ways (forwarding is on).
        t.ping(t.renter_ns(1), IpAddr::V4(t.provider_underlay_v4(0)))
            .expect("renter 1 -> provider 0 (v4)");
        t.ping(t.renter_ns(0), IpAddr::V6(t.provider_underlay_v6(1)))
            .expect("renter 0 -> provider 1 (v6)");
        t.teardown().expect("teardown");
    }

    #[test]
    fn namespaces_route_only_through_the_internet_namespace() {
        if !root_or_skip("namespaces_route_only_through_the_internet_namespace") {
            return;
        }
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let t = Topology::create(&spec("b")).expect("create topology");
        // `ip route get` only looks the route up; nothing is sent to 8.8.8.8.
        for i in 0..t.providers() {
            let ns = t.provider_ns(i);
            let r = route_get(ns, "8.8.8.8").expect("provider route");
            let via = format!("via {} dev {UPLINK}", t.provider_gateway_v4(i));
            assert!(r.contains(&via), "{ns}: {r}");
            let r6 = route_get(ns, "2001:4860:4860::8888").expect("provider v6 route");
            assert!(r6.contains(&format!("dev {UPLINK}")), "{ns}: {r6}");
            // The only interfaces are lo and the uplink: nothing leads to the host namespace.
            let links = ip(&["-n", ns, "-o", "link", "show"]).expect("links");
            let names: Vec<&str> = links
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n))
                .collect();
            assert_eq!(names, ["lo", UPLINK], "{ns}");
            assert_eq!(sysctl(ns, "net.ipv4.ip_forward"), "1", "{ns}");
            assert_eq!(sysctl(ns, "net.ipv6.conf.all.forwarding"), "1", "{ns}");
        }
        assert_eq!(sysctl(t.renter_ns(0), "net.ipv4.ip_forward"), "0");

        let inet = t.internet_ns();
        assert_eq!(sysctl(inet, "net.ipv4.ip_forward"), "1");
        assert_eq!(sysctl(inet, "net.ipv6.conf.all.forwarding"), "1");
        let e = route_get(inet, "8.8.8.8").expect_err("internet ns must have no default route");
        assert!(format!("{e:#}").contains("unreachable"), "{e:#}");
        route_get(inet, "2001:4860:4860::8888").expect_err("no IPv6 default route either");
        // Pools are routed to their provider's underlay address.
        for (addr, p, v6) in [
            ("198.51.100.5", 0, false),
            ("198.51.100.20", 1, false),
            ("2001:db8:100::7", 0, true),
            ("2001:db8:101:5::1", 1, true),
        ] {
            let r = route_get(inet, addr).expect("pool route");
            let via = if v6 {
                t.provider_underlay_v6(p).to_string()
            } else {
                t.provider_underlay_v4(p).to_string()
            };
            assert!(r.contains(&format!("via {via} dev lw-p{p}")), "{addr}: {r}");
        }
        // Space next to a pool but outside it goes nowhere.
        route_get(inet, "198.51.100.40").expect_err("unleased address must be unroutable");
        t.teardown().expect("teardown");
    }

    #[test]
    fn teardown_restores_the_namespace_list() {
        if !root_or_skip("teardown_restores_the_namespace_list") {
            return;
        }
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        // Only simnet's namespaces are compared: other tests on a shared machine create and
        // delete namespaces of their own (with other prefixes) at any time.
        let before = leftover_namespaces().expect("list");
        assert!(host_veths().is_empty(), "{:?}", host_veths());
        let s = spec("c");
        let prefix = run_prefix(&s.run_id);
        let t = Topology::create(&s).expect("create topology");
        let ours = list_namespaces(&prefix).expect("list ours");
        assert_eq!(ours.len(), 1 + 2 + 2, "{ours:?}");
        assert!(ours.contains(&t.internet_ns().to_owned()));
        assert!(leftover_namespaces().expect("leftovers").contains(&ours[0]));
        // The veths live only inside the namespaces.
        assert!(host_veths().is_empty(), "{:?}", host_veths());
        t.teardown().expect("teardown");
        assert_eq!(leftover_namespaces().expect("list"), before);
        assert!(list_namespaces(&prefix).expect("list ours").is_empty());
        assert!(host_veths().is_empty(), "{:?}", host_veths());

        // Dropping without teardown cleans up as well.
        let t = Topology::create(&s).expect("create again");
        drop(t);
        assert_eq!(leftover_namespaces().expect("list"), before);
    }

    #[test]
    fn full_size_topology_routes_its_last_links() {
        if !root_or_skip("full_size_topology_routes_its_last_links") {
            return;
        }
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = spec("e");
        s.renters = MAX_NODES - s.providers.len();
        let t = Topology::create(&s).expect("create a full topology");
        let last = t.renters() - 1;
        assert_eq!(t.renter_underlay_v4(last), Ipv4Addr::new(192, 0, 2, 254));
        t.ping(t.renter_ns(last), IpAddr::V4(t.provider_underlay_v4(1)))
            .expect("last renter -> provider 1 (v4)");
        t.ping(t.renter_ns(last), IpAddr::V6(t.internet_host_v6()))
            .expect("last renter -> internet host (v6)");
        t.teardown().expect("teardown");
    }

    #[test]
    fn failed_create_leaves_nothing_behind() {
        if !root_or_skip("failed_create_leaves_nothing_behind") {
            return;
        }
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let s = spec("d");
        let prefix = run_prefix(&s.run_id);
        // Occupy renter 1's name, so creation fails late, after most of the topology exists.
        let squatter = format!("{prefix}r1");
        ip(&["netns", "add", &squatter]).expect("add squatter");
        let created = Topology::create(&s);
        let left = list_namespaces(&prefix).expect("list");
        // Clean up before asserting, so a failed assertion leaves nothing behind either.
        let not_removed = remove_namespaces(&left);
        let err = match created {
            Ok(t) => {
                drop(t);
                panic!("create succeeded although {squatter} was taken");
            }
            Err(e) => format!("{e:#}"),
        };
        assert!(not_removed.is_empty(), "{not_removed:?}");
        assert!(err.contains(&squatter), "{err}");
        // Only the namespace we did not create survived the failed create.
        assert_eq!(left, [squatter], "{err}");
        assert!(list_namespaces(&prefix).expect("list").is_empty());
    }
}
