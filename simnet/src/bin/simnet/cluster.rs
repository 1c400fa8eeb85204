//! Bringing a cluster up: lnd-sim, then the bootstrap provider, then everyone else.
//!
//! Steps of [`Cluster::start`]:
//!
//! 1. start `lnd-sim` with one virtual Lightning node per leasewire node and wait for its
//!    `lnd-sim.json`;
//! 2. `leasewire init` every data dir;
//! 3. write provider-0's `config.toml` (no bootstrap peers), start its daemon, and read its
//!    listen address and peer id from `status`;
//! 4. write every other node's `config.toml` pointing at provider-0, start them all, and wait
//!    until each answers `status`.
//!
//! With `--netns` ([`Placement::Netns`]) lnd-sim runs in the internet namespace on the
//! internet host's address, each daemon runs in its own namespace with libp2p on its underlay
//! address and real WireGuard interfaces, and bootstrap goes through provider-0's underlay.
//!
//! Every node's config is built as a [`leasewire::config::Config`] by [`node_config`] (a pure
//! function) and validated before it is written, so a contract drift shows up here and not as
//! a daemon that dies at start.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use ipnet::IpNet;
use leasewire::config::{Config, Role, TunnelBackendKind};
use leasewire::types::Terms;
use serde::Deserialize;
use tokio::process::Command;

use crate::cli::{Bins, Cli};
use crate::netns::Topology;
use crate::procs::Procs;
use crate::scenarios::Scenario;

/// Seconds between discovery rounds in every simnet node; short so a run takes seconds.
pub const DISCOVERY_INTERVAL_SECS: u64 = 2;
/// Satoshis each paying node (renters, the intruder) starts with in lnd-sim.
pub const PAYER_BALANCE_SAT: u64 = 1_000_000;
/// Providers that get a /28 of 198.51.100.0/24 each (the first ones, and every provider
/// with `--netns`, whose topology routes only these pools).
pub const WIDE_POOL_PROVIDERS: usize = 16;
/// Providers after the first [`WIDE_POOL_PROVIDERS`]: one /31 each of 192.0.2.0/24 and then
/// 203.0.113.0/24 (128 per /24).
const NARROW_POOL_PROVIDERS: usize = 256;
/// Most providers a cluster can have: the address plan of [`provider_pools`].
pub const MAX_PROVIDERS: usize = WIDE_POOL_PROVIDERS + NARROW_POOL_PROVIDERS;
/// Registry name of the lnd-sim process.
pub const LND_SIM: &str = "lnd-sim";
/// `leasewire init` processes run at the same time.
const INIT_CONCURRENCY: usize = 8;
/// How long a daemon may take to answer its first `status`.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long lnd-sim may take to write `lnd-sim.json`.
const LND_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// WireGuard UDP port of every provider with `--netns` (each has its own namespace).
pub const NETNS_WG_PORT: u16 = 51820;
/// libp2p TCP port of every daemon with `--netns` (each has its own namespace and address).
pub const NETNS_P2P_PORT: u16 = 4001;
/// Credit price with `--netns`: 86 400 sat/day is 1 sat/s, so credit in satoshis is seconds
/// of service and a lease can be made to run out within a short run.
pub const NETNS_RATE_SAT_PER_DAY: u64 = 86_400;

/// Where the cluster's processes run.
#[derive(Clone, Copy, Debug)]
pub enum Placement<'a> {
    /// Everything in the host's namespace on loopback, with the file tunnel backend.
    Host,
    /// One namespace per daemon (see netns.rs), real WireGuard interfaces.
    Netns {
        /// The live topology; provider `i` and renter `i` run in its namespaces.
        topo: &'a Topology,
        /// Short run tag that makes WireGuard interface names unique machine-wide.
        tag: &'a str,
    },
}

impl<'a> Placement<'a> {
    /// The live topology with `--netns`.
    pub fn topology(&self) -> Option<&'a Topology> {
        match self {
            Placement::Host => None,
            Placement::Netns { topo, .. } => Some(topo),
        }
    }

    /// The run tag that prefixes WireGuard interface names (empty on the host).
    pub fn tag(&self) -> &'a str {
        match self {
            Placement::Host => "",
            Placement::Netns { tag, .. } => tag,
        }
    }

    /// The namespace node `kind`/`index` runs in; `None` on the host.
    ///
    /// Errors: an intruder with `--netns` (the topology has no namespace for it).
    fn namespace(&self, kind: Kind, index: usize) -> Result<Option<String>> {
        match self {
            Placement::Host => Ok(None),
            Placement::Netns { topo, .. } => match kind {
                Kind::Provider => Ok(Some(topo.provider_ns(index).to_owned())),
                Kind::Renter => Ok(Some(topo.renter_ns(index).to_owned())),
                Kind::Intruder => bail!("--intruder cannot be combined with --netns"),
            },
        }
    }

    /// Node `kind`/`index`'s underlay address (netns only).
    fn underlay(&self, kind: Kind, index: usize) -> Option<Ipv4Addr> {
        match self {
            Placement::Host => None,
            Placement::Netns { topo, .. } => Some(match kind {
                Kind::Provider => topo.provider_underlay_v4(index),
                Kind::Renter | Kind::Intruder => topo.renter_underlay_v4(index),
            }),
        }
    }

    /// A command running `program args` where node `ns` lives.
    fn command<I, S>(&self, ns: Option<&str>, program: &Path, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        match (self, ns) {
            (Placement::Netns { topo, .. }, Some(ns)) => {
                Command::from(topo.command(ns, program, args))
            }
            _ => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
        }
    }
}

/// Netns-specific parts of one node's config.
#[derive(Clone, Copy, Debug)]
pub struct NetnsNode<'a> {
    /// Run tag for interface names.
    pub tag: &'a str,
    /// The node's underlay IPv4 address: libp2p listens there, providers' WireGuard endpoint.
    pub underlay: Ipv4Addr,
}

/// What a node is for in the scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Sells addresses; provider 0 is also the bootstrap peer.
    Provider,
    /// Rents one lease.
    Renter,
    /// A renter on another market secret, which must see nothing.
    Intruder,
}

impl Kind {
    /// The leasewire role the node runs.
    pub fn role(self) -> Role {
        match self {
            Kind::Provider => Role::Provider,
            Kind::Renter | Kind::Intruder => Role::Renter,
        }
    }

    /// The role as the CLI and the report spell it.
    pub fn role_name(self) -> &'static str {
        match self.role() {
            Role::Provider => "provider",
            Role::Renter => "renter",
        }
    }

    /// The node's name: `provider-1`, `renter-0`, `intruder`.
    pub fn name(self, index: usize) -> String {
        match self {
            Kind::Provider => format!("provider-{index}"),
            Kind::Renter => format!("renter-{index}"),
            Kind::Intruder => "intruder".to_owned(),
        }
    }

    /// Its WireGuard interface name, unique in the cluster and at most 15 bytes; `tag` (a
    /// run tag) makes it unique machine-wide, as userspace WireGuard needs.
    ///
    /// A renter with several leases names the further interfaces after its own: the name
    /// without its trailing digits, then 1, 2, ... (src/market/renter/tunnel.rs). Renter names
    /// therefore end in a letter (`lwr4l`): `lwr0` would make renter-0's second lease
    /// `lwr1`, renter-1's own interface.
    pub fn interface(self, tag: &str, index: usize) -> String {
        match self {
            Kind::Provider => format!("lw{tag}p{index}"),
            Kind::Renter => format!("lw{tag}r{index}l"),
            Kind::Intruder => format!("lw{tag}x{index}l"),
        }
    }

    /// Starting balance in lnd-sim: providers only receive.
    fn balance_sat(self) -> u64 {
        match self {
            Kind::Provider => 0,
            Kind::Renter | Kind::Intruder => PAYER_BALANCE_SAT,
        }
    }
}

/// One leasewire node of the cluster.
#[derive(Clone, Debug)]
pub struct Node {
    /// `provider-0`, `renter-3`, `intruder`.
    pub name: String,
    /// Its part in the scenario.
    pub kind: Kind,
    /// Index among nodes of its kind.
    pub index: usize,
    /// Its data dir (absolute).
    pub data_dir: PathBuf,
    /// libp2p peer id, from `leasewire init`.
    pub peer_id: String,
    /// When its daemon first answered `status`.
    pub ready_at: Option<Instant>,
    /// The network namespace its daemon runs in (`--netns` only).
    pub ns: Option<String>,
}

/// `lnd-sim.json`, written by lnd-sim once it listens.
#[derive(Clone, Debug, Deserialize)]
pub struct LndSimInfo {
    /// gRPC `host:port`.
    pub address: String,
    /// Its TLS certificate.
    pub tls_cert_path: PathBuf,
    /// The virtual nodes.
    pub nodes: Vec<LndNode>,
    /// The directory holding `lnd-sim.json` (set by simnet, not read from the file).
    #[serde(skip)]
    pub dir: PathBuf,
}

/// One virtual Lightning node of [`LndSimInfo`].
#[derive(Clone, Debug, Deserialize)]
pub struct LndNode {
    /// Name, equal to the leasewire node's name.
    pub name: String,
    /// Macaroon selecting this node.
    pub macaroon_path: PathBuf,
}

impl LndSimInfo {
    /// The node called `name`.
    ///
    /// Errors: lnd-sim has no such node.
    pub fn node(&self, name: &str) -> Result<&LndNode> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("lnd-sim.json has no node named {name}"))
    }
}

impl LndSimInfo {
    /// Makes every path absolute, resolving relative ones against `dir` (where the file is).
    fn absolutize(&mut self, dir: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        self.dir = dir.to_owned();
        abs(&mut self.tls_cert_path);
        for n in &mut self.nodes {
            abs(&mut n.macaroon_path);
        }
    }
}

/// Everything [`node_config`] needs about one node.
#[derive(Clone, Copy, Debug)]
pub struct ConfigInput<'a> {
    /// Kind of node.
    pub kind: Kind,
    /// Index among its kind.
    pub index: usize,
    /// Market secret.
    pub secret: &'a str,
    /// Bootstrap multiaddr with `/p2p/<id>`; `None` for the bootstrap node itself.
    pub bootstrap: Option<&'a str>,
    /// lnd-sim endpoint and certificate.
    pub lnd: &'a LndSimInfo,
    /// This node's macaroon.
    pub macaroon_path: &'a Path,
    /// A UDP port no other node of the cluster uses.
    pub udp_port: u16,
    /// The libp2p TCP port. Fixed for the node's lifetime, so a restarted daemon is found at
    /// the address its peers (and, for provider-0, every bootstrap list) already know.
    pub tcp_port: u16,
    /// Set with `--netns`: real WireGuard, underlay addresses, fast-expiring terms.
    pub netns: Option<NetnsNode<'a>>,
    /// The scenario being run: it tunes terms, metering and AutoPay (see [`Scenario`]).
    pub scenario: Scenario,
}

/// The `config.toml` of one simnet node, validated.
///
/// Providers get their own pools in documentation prefixes (see [`provider_pools`]), and
/// advertise a loopback WireGuard endpoint on `udp_port`. With
/// [`ConfigInput::netns`], libp2p listens on the underlay address, the tunnel backend is
/// WireGuard, providers advertise `underlay:udp_port`, meter every second and sell credit at
/// [`NETNS_RATE_SAT_PER_DAY`] (1 sat per second).
///
/// Errors: the index is out of range for the address plan, or the result fails
/// [`Config::validate`].
pub fn node_config(input: ConfigInput<'_>) -> Result<Config> {
    let mut cfg = Config::default();
    cfg.node.roles = vec![input.kind.role()];
    let host = input
        .netns
        .map_or(Ipv4Addr::LOCALHOST, |n| n.underlay)
        .to_string();
    cfg.node.listen = vec![format!("/ip4/{host}/tcp/{}", input.tcp_port)];
    cfg.node.bootstrap = input.bootstrap.map(str::to_owned).into_iter().collect();
    // The first node has no bootstrap peer: it must wait to be dialed, never fall back to the
    // public IPFS bootstrap peers (nothing in the simnet dials off the machine).
    cfg.node.public_bootstrap = false;
    cfg.node.secret = input.secret.to_owned();
    cfg.node.discovery_interval_secs = DISCOVERY_INTERVAL_SECS;

    cfg.lightning.network = "regtest".to_owned();
    cfg.lightning.address = Some(input.lnd.address.clone());
    cfg.lightning.tls_cert_path = Some(input.lnd.tls_cert_path.clone());
    cfg.lightning.macaroon_path = Some(input.macaroon_path.to_owned());

    cfg.tunnel.backend = match input.netns {
        Some(_) => TunnelBackendKind::Wireguard,
        None => TunnelBackendKind::File,
    };
    cfg.tunnel.interface = input
        .kind
        .interface(input.netns.map_or("", |n| n.tag), input.index);
    cfg.tunnel.listen_port = input.udp_port;
    // The simnet's data dirs are temporary: links in the host's /etc/wireguard would dangle.
    cfg.tunnel.link_etc_wireguard = false;

    if input.kind == Kind::Provider {
        let pools = provider_pools(input.index)?;
        let of = |v4: bool| {
            pools
                .iter()
                .filter(|p| matches!(p, IpNet::V4(_)) == v4)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        cfg.provider.ipv4_pools = of(true);
        cfg.provider.ipv6_pools = of(false);
        cfg.provider.endpoint = format!("{host}:{}", input.udp_port);
        if input.netns.is_some() {
            cfg.provider.metering_interval_secs = 1;
            cfg.provider.terms = Terms {
                activation_fee_sat: 10,
                rate_sat_per_day: NETNS_RATE_SAT_PER_DAY,
                min_initial_credit_sat: 10,
                min_topup_sat: 10,
                max_credit_sat: 1_000_000,
                reserve_days: 1,
                refund_unused: false,
                reservation_secs: 0,
            };
        }
    }
    // AutoPay is on by default in leasewire; only its own scenario wants it, so the others
    // keep exactly the payments they make themselves.
    cfg.renter.autopay.enabled = false;
    input.scenario.tune(&mut cfg, input.kind, input.index);
    cfg.validate()
        .with_context(|| format!("config for {}", input.kind.name(input.index)))?;
    if !cfg.node.bootstrap_is_explicit() {
        bail!(
            "config for {} could fall back to the public bootstrap peers",
            input.kind.name(input.index)
        );
    }
    Ok(cfg)
}

/// Provider `index`'s address pools, all in documentation prefixes, distinct per provider:
///
/// - providers 0..16: their own /28 of 198.51.100.0/24 (`198.51.100.(16·i)/28`); the
///   `--netns` topology routes these to the provider;
/// - providers 16..272: a /31 (two /32 leases) of 192.0.2.0/24, then of 203.0.113.0/24, for
///   markets too large to lease much from each provider (host placement only: with `--netns`
///   those /24s are the underlay and the internet host);
/// - every provider: the /48 `2001:db8:(100+i)::/48` (the index's decimal digits read as hex,
///   distinct for every index in the plan).
///
/// Errors: `index` is not below [`MAX_PROVIDERS`].
pub fn provider_pools(index: usize) -> Result<Vec<IpNet>> {
    if index >= MAX_PROVIDERS {
        bail!("at most {MAX_PROVIDERS} providers fit in the simnet's address plan");
    }
    let v4 = if index < WIDE_POOL_PROVIDERS {
        format!("198.51.100.{}/28", 16 * index)
    } else {
        let slot = index - WIDE_POOL_PROVIDERS;
        let net = if slot < 128 { "192.0.2" } else { "203.0.113" };
        format!("{net}.{}/31", 2 * (slot % 128))
    };
    let v6 = format!("2001:db8:{}::/48", 100 + index);
    [v4, v6]
        .iter()
        .map(|p| p.parse().with_context(|| format!("pool {p}")))
        .collect()
}

/// The multiaddr other nodes bootstrap from: a TCP listen address of `status` on `host`
/// (loopback, or the underlay address with `--netns`), with `/p2p/<peer_id>` appended unless
/// already there.
///
/// Errors: no `/ip4/<host>/tcp/` address is listed.
pub fn bootstrap_addr(listen_addrs: &[String], peer_id: &str, host: Ipv4Addr) -> Result<String> {
    let want = format!("/ip4/{host}/tcp/");
    let addr = listen_addrs
        .iter()
        .find(|a| a.starts_with(&want))
        .ok_or_else(|| {
            anyhow!("bootstrap node lists no TCP address on {host}: {listen_addrs:?}")
        })?;
    let base = match addr.find("/p2p/") {
        Some(i) => &addr[..i],
        None => addr.as_str(),
    };
    Ok(format!("{base}/p2p/{peer_id}"))
}

/// A fresh random market secret with a readable prefix.
pub fn random_secret(prefix: &str) -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow!("no randomness for the market secret: {e}"))?;
    Ok(format!("{prefix}-{}", hex::encode(b)))
}

/// `n` distinct UDP ports that were free on 127.0.0.1 a moment ago.
///
/// The file tunnel backend never binds them; they are real free ports anyway so the configs
/// stay usable with a backend that does.
fn free_udp_ports(n: usize) -> Result<Vec<u16>> {
    // Hold every socket until all are chosen, so the kernel cannot hand out one port twice.
    let socks = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot reserve UDP ports")?;
    socks
        .iter()
        .map(|s| Ok(s.local_addr()?.port()))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot read reserved UDP ports")
}

/// `n` distinct TCP ports that were free on 127.0.0.1 a moment ago: each daemon's libp2p
/// port, kept across restarts.
fn free_tcp_ports(n: usize) -> Result<Vec<u16>> {
    // Held together until all are chosen, as for the UDP ports.
    let socks = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot reserve TCP ports")?;
    socks
        .iter()
        .map(|s| Ok(s.local_addr()?.port()))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot read reserved TCP ports")
}

/// A running cluster.
pub struct Cluster {
    /// CLI runner.
    pub cli: Cli,
    /// Nodes: providers, then renters, then the intruder.
    pub nodes: Vec<Node>,
    /// The running lnd-sim, as its `lnd-sim.json` describes it.
    pub lnd: LndSimInfo,
    procs: Arc<Procs>,
    /// Nodes whose config is written but whose daemon waits for [`Cluster::start_held`].
    held: Vec<String>,
}

impl Cluster {
    /// Starts lnd-sim and every daemon `plan` asks for under `root`, configured for its
    /// scenario; see the module doc for the steps.
    ///
    /// Every process goes into `procs`, so the caller can stop them whether this succeeds or
    /// not. Errors: a program fails to start or does not become ready in time (the message
    /// carries the end of its log).
    pub async fn start(
        root: &Path,
        bins: &Bins,
        procs: Arc<Procs>,
        plan: &crate::scenario::Plan,
        placement: Placement<'_>,
    ) -> Result<Cluster> {
        let (providers, renters, intruder, scenario) =
            (plan.providers, plan.renters, plan.intruder, plan.scenario);
        if providers == 0 || providers > MAX_PROVIDERS {
            bail!("--providers must be 1..={MAX_PROVIDERS}");
        }
        let cli = Cli::new(bins.leasewire.clone());
        let plan: Vec<(Kind, usize)> = (0..providers)
            .map(|i| (Kind::Provider, i))
            .chain((0..renters).map(|i| (Kind::Renter, i)))
            .chain(intruder.then_some((Kind::Intruder, 0)))
            .collect();

        let lnd = start_lnd_sim(root, bins, &procs, &plan, placement).await?;
        tracing::info!(address = %lnd.address, nodes = lnd.nodes.len(), "lnd-sim ready");

        // init is independent per node: do them all at once.
        let inits = plan.iter().map(|&(kind, index)| {
            let cli = cli.clone();
            let data_dir = root.join(kind.name(index));
            let ns = placement.namespace(kind, index);
            async move {
                let ns = ns?;
                let out = cli
                    .init(&data_dir, kind.role_name())
                    .await
                    .with_context(|| format!("init {}", kind.name(index)))?;
                anyhow::Ok(Node {
                    name: kind.name(index),
                    kind,
                    index,
                    data_dir,
                    peer_id: out.peer_id,
                    ready_at: None,
                    ns,
                })
            }
        });
        // A bounded number at a time: hundreds of `init` processes at once swamp a small
        // machine. `buffered` keeps the plan's order.
        let mut nodes: Vec<Node> = futures::stream::iter(inits)
            .buffered(INIT_CONCURRENCY)
            .try_collect()
            .await?;

        let secret = random_secret("simnet-cluster")?;
        let intruder_secret = random_secret("simnet-intruder")?;
        let ports: Vec<(u16, u16)> = match placement {
            Placement::Host => free_udp_ports(nodes.len())?
                .into_iter()
                .zip(free_tcp_ports(nodes.len())?)
                .collect(),
            // Every daemon has a namespace to itself, so well-known ports serve all.
            Placement::Netns { .. } => vec![(NETNS_WG_PORT, NETNS_P2P_PORT); nodes.len()],
        };
        let tag = match placement {
            Placement::Host => "",
            Placement::Netns { tag, .. } => tag,
        };
        let write_config = |node: &Node,
                            (udp_port, tcp_port): (u16, u16),
                            bootstrap: Option<&str>|
         -> Result<()> {
            let cfg = node_config(ConfigInput {
                kind: node.kind,
                index: node.index,
                secret: if node.kind == Kind::Intruder {
                    &intruder_secret
                } else {
                    &secret
                },
                bootstrap,
                lnd: &lnd,
                macaroon_path: &lnd.node(&node.name)?.macaroon_path,
                udp_port,
                tcp_port,
                netns: placement
                    .underlay(node.kind, node.index)
                    .map(|underlay| NetnsNode { tag, underlay }),
                scenario,
            })?;
            let path = node.data_dir.join("config.toml");
            std::fs::write(&path, cfg.to_toml())
                .with_context(|| format!("cannot write {}", path.display()))
        };

        // The bootstrap node first: everyone else needs its address.
        let (boot, rest) = nodes
            .split_first_mut()
            .expect("the plan to start with provider-0");
        write_config(boot, ports[0], None)?;
        start_daemon(&procs, bins, placement, boot)?;
        let status = wait_ready(&procs, &cli, boot).await?;
        let boot_host = placement
            .underlay(Kind::Provider, 0)
            .unwrap_or(Ipv4Addr::LOCALHOST);
        let bootstrap = bootstrap_addr(&status.listen_addrs, &status.peer_id, boot_host)?;
        tracing::info!(%bootstrap, "bootstrap provider ready");

        // Large markets start in batches, each ready before the next, so hundreds of daemons
        // do not all initialise at once on a small machine. Renters the scenario holds back
        // get their config now and start later, all at once (`start_held`).
        let batch = scenario.start_batch().unwrap_or(rest.len()).max(1);
        let mut held = Vec::new();
        for (chunk, ports) in rest.chunks_mut(batch).zip(ports[1..].chunks(batch)) {
            let mut started = Vec::new();
            for (node, &port) in chunk.iter_mut().zip(ports) {
                write_config(node, port, Some(&bootstrap))?;
                if node.kind == Kind::Renter && scenario.holds_renters() {
                    held.push(node.name.clone());
                } else {
                    start_daemon(&procs, bins, placement, node)?;
                    started.push(node);
                }
            }
            let ready = started.into_iter().map(|node| {
                let (procs, cli) = (&procs, &cli);
                async move { wait_ready(procs, cli, node).await.map(|_| ()) }
            });
            futures::future::try_join_all(ready).await?;
        }
        tracing::info!(
            nodes = nodes.len() - held.len(),
            held = held.len(),
            "all daemons ready"
        );
        Ok(Cluster {
            cli,
            nodes,
            lnd,
            procs,
            held,
        })
    }

    /// Starts every daemon the scenario held back (see [`Scenario::holds_renters`]) at once,
    /// without waiting for them; returns each one's name and the instant it was spawned.
    ///
    /// Errors: a daemon cannot be spawned.
    pub fn start_held(
        &self,
        bins: &Bins,
        placement: Placement<'_>,
    ) -> Result<Vec<(String, Instant)>> {
        self.held
            .iter()
            .map(|name| {
                let node = self
                    .nodes
                    .iter()
                    .find(|n| &n.name == name)
                    .expect("held names come from the cluster's nodes");
                start_daemon(&self.procs, bins, placement, node)?;
                Ok((name.clone(), Instant::now()))
            })
            .collect()
    }

    /// The pid of the running daemon (or lnd-sim) `name`.
    ///
    /// Errors: it is not running.
    pub fn pid(&self, name: &str) -> Result<u32> {
        // Signal 0 delivers nothing: it only checks the process is there.
        self.procs.signal(name, 0)
    }

    /// Nodes of one kind, in index order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.kind == kind)
    }

    /// Provider peer id → provider name.
    pub fn provider_names(&self) -> HashMap<String, String> {
        self.of_kind(Kind::Provider)
            .map(|n| (n.peer_id.clone(), n.name.clone()))
            .collect()
    }

    /// Restarts one daemon in place: SIGTERM (SIGKILL after `grace`), wait for it to exit,
    /// start it again in the same namespace with the same data dir, and wait until it answers
    /// `status` as the same peer. The new process replaces the old one in the registry, so
    /// [`Cluster::stop_daemons`] and the caller's final cleanup cover it.
    ///
    /// Returns how the old process ended. Errors: `node` was not running, or the new process
    /// cannot start or does not become ready (the message carries the end of its log).
    pub async fn restart_daemon(
        &self,
        bins: &Bins,
        placement: Placement<'_>,
        node: &Node,
        grace: Duration,
    ) -> Result<crate::procs::Stopped> {
        let stopped = self.procs.stop_matching(grace, |n| n == node.name).await;
        let how = stopped
            .into_iter()
            .next()
            .map(|(_, how)| how)
            .ok_or_else(|| anyhow!("{} is not a running daemon", node.name))?;
        tracing::info!(name = %node.name, %how, "daemon stopped for restart");
        self.start_again(bins, placement, node).await?;
        Ok(how)
    }

    /// Crashes one daemon: SIGKILL, no grace, and waits until it is gone. It leaves the
    /// registry; [`Cluster::start_again`] brings it back.
    ///
    /// Errors: `node` is not a running daemon.
    pub async fn kill_daemon(&self, node: &Node) -> Result<()> {
        let status = self.procs.kill(&node.name).await?;
        tracing::info!(name = %node.name, %status, "daemon killed (SIGKILL)");
        Ok(())
    }

    /// Freezes (`SIGSTOP`) one daemon: it keeps its sockets but answers nothing. A later
    /// [`Cluster::kill_daemon`] works on it as on a running one.
    ///
    /// Errors: `node` is not a running daemon.
    pub fn freeze_daemon(&self, node: &Node) -> Result<()> {
        let pid = self.procs.signal(&node.name, libc::SIGSTOP)?;
        tracing::info!(name = %node.name, pid, "daemon frozen (SIGSTOP)");
        Ok(())
    }

    /// Starts a daemon that is not running (after [`Cluster::kill_daemon`]) on the same data
    /// dir, in the same place, and waits until it answers `status` as the same peer.
    ///
    /// Errors: it cannot start or does not become ready (the message carries its log's end).
    pub async fn start_again(
        &self,
        bins: &Bins,
        placement: Placement<'_>,
        node: &Node,
    ) -> Result<()> {
        start_daemon(&self.procs, bins, placement, node)?;
        // A copy: only `ready_at` changes, and the cluster's record keeps the first start.
        let mut again = node.clone();
        wait_ready(&self.procs, &self.cli, &mut again).await?;
        Ok(())
    }

    /// Stops every daemon (SIGTERM, up to `grace`, SIGKILL), leaving lnd-sim running.
    /// Returns the names of daemons that did not exit cleanly.
    pub async fn stop_daemons(&self, grace: Duration) -> Vec<String> {
        let stopped = self.procs.stop_matching(grace, |n| n != LND_SIM).await;
        stopped
            .into_iter()
            .filter(|(_, how)| !how.is_clean())
            .map(|(name, how)| {
                tracing::warn!(%name, %how, "daemon did not exit cleanly");
                name
            })
            .collect()
    }
}

async fn start_lnd_sim(
    root: &Path,
    bins: &Bins,
    procs: &Procs,
    plan: &[(Kind, usize)],
    placement: Placement<'_>,
) -> Result<LndSimInfo> {
    let dir = root.join("lnd");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // With --netns lnd-sim lives on the internet host, which every namespace routes to; its
    // certificate names only loopback, which is fine: LndClient pins the exact certificate
    // and does not check names.
    let (ns, listen) = match placement {
        Placement::Host => (None, "127.0.0.1:0".to_owned()),
        Placement::Netns { topo, .. } => (
            Some(topo.internet_ns()),
            format!("{}:0", topo.internet_host_v4()),
        ),
    };
    let mut args: Vec<std::ffi::OsString> = vec![
        "--dir".into(),
        dir.clone().into(),
        "--listen".into(),
        listen.into(),
    ];
    for &(kind, index) in plan {
        args.push("--node".into());
        args.push(format!("{}:{}", kind.name(index), kind.balance_sat()).into());
    }
    let cmd = placement.command(ns, &bins.lnd_sim, args);
    procs.spawn(LND_SIM, cmd, &dir.join("lnd-sim.log"))?;

    let info_path = dir.join("lnd-sim.json");
    let deadline = Instant::now() + LND_READY_TIMEOUT;
    loop {
        procs.ensure_running(LND_SIM)?;
        // lnd-sim writes the file atomically (rename), so a parse never sees half of it.
        if let Ok(text) = std::fs::read_to_string(&info_path) {
            let mut info: LndSimInfo = serde_json::from_str(&text)
                .with_context(|| format!("invalid {}", info_path.display()))?;
            info.absolutize(&dir);
            return Ok(info);
        }
        if Instant::now() > deadline {
            bail!(
                "lnd-sim did not write {} within {LND_READY_TIMEOUT:?}",
                info_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn start_daemon(procs: &Procs, bins: &Bins, placement: Placement<'_>, node: &Node) -> Result<()> {
    let cmd = placement.command(
        node.ns.as_deref(),
        &bins.leasewire,
        [
            "daemon".as_ref(),
            "--data-dir".as_ref(),
            node.data_dir.as_os_str(),
        ],
    );
    let pid = procs.spawn(&node.name, cmd, &node.data_dir.join("daemon.log"))?;
    tracing::debug!(name = %node.name, pid, "daemon started");
    Ok(())
}

/// Polls `status` until the daemon answers, failing early if it exits.
async fn wait_ready(procs: &Procs, cli: &Cli, node: &mut Node) -> Result<crate::cli::StatusOut> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        procs.ensure_running(&node.name)?;
        match cli.status(&node.data_dir).await {
            Ok(status) => {
                if status.peer_id != node.peer_id {
                    bail!(
                        "{} reports peer id {} but init said {}",
                        node.name,
                        status.peer_id,
                        node.peer_id
                    );
                }
                node.ready_at = Some(Instant::now());
                tracing::info!(name = %node.name, peer_id = %node.peer_id, "daemon ready");
                return Ok(status);
            }
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!(
                    "{} did not answer status within {READY_TIMEOUT:?}; see {}",
                    node.name,
                    node.data_dir.join("daemon.log").display()
                )));
            }
            Err(e) => tracing::trace!(name = %node.name, "not ready yet: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lnd() -> LndSimInfo {
        LndSimInfo {
            address: "127.0.0.1:10009".into(),
            tls_cert_path: "tls.cert".into(),
            nodes: vec![LndNode {
                name: "provider-0".into(),
                macaroon_path: "provider-0/admin.macaroon".into(),
            }],
            dir: PathBuf::new(),
        }
    }

    fn input<'a>(kind: Kind, index: usize, lnd: &'a LndSimInfo) -> ConfigInput<'a> {
        ConfigInput {
            kind,
            index,
            secret: "simnet-cluster-x",
            bootstrap: Some(
                "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
            ),
            lnd,
            macaroon_path: Path::new("/m/admin.macaroon"),
            udp_port: 40000 + index as u16,
            tcp_port: 0,
            netns: None,
            scenario: Scenario::Quickstart,
        }
    }

    #[test]
    fn provider_config_uses_documentation_prefixes_and_round_trips() {
        let lnd = lnd();
        let cfg = node_config(input(Kind::Provider, 3, &lnd)).unwrap();
        assert_eq!(cfg.node.roles, [Role::Provider]);
        assert_eq!(cfg.provider.ipv4_pools, ["198.51.100.48/28"]);
        assert_eq!(cfg.provider.ipv6_pools, ["2001:db8:103::/48"]);
        assert_eq!(cfg.provider.endpoint, "127.0.0.1:40003");
        assert_eq!(cfg.tunnel.interface, "lwp3");
        assert_eq!(cfg.tunnel.listen_port, 40003);
        assert_eq!(cfg.node.discovery_interval_secs, DISCOVERY_INTERVAL_SECS);
        assert_eq!(cfg.lightning.address.as_deref(), Some("127.0.0.1:10009"));
        assert_eq!(
            cfg.lightning.macaroon_path.as_deref(),
            Some(Path::new("/m/admin.macaroon"))
        );
        assert_eq!(Config::from_toml(&cfg.to_toml()).unwrap(), cfg);
    }

    #[test]
    fn every_provider_pool_is_distinct_and_inside_the_plan() {
        let lnd = lnd();
        let doc: Vec<IpNet> = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let v6_doc: IpNet = "2001:db8::/32".parse().unwrap();
        let mut seen: Vec<IpNet> = Vec::new();
        for i in 0..MAX_PROVIDERS {
            let cfg = node_config(input(Kind::Provider, i, &lnd)).unwrap();
            let v4: IpNet = cfg.provider.ipv4_pools[0].parse().unwrap();
            let v6: IpNet = cfg.provider.ipv6_pools[0].parse().unwrap();
            assert_eq!(
                v4.prefix_len(),
                if i < WIDE_POOL_PROVIDERS { 28 } else { 31 }
            );
            assert!(doc.iter().any(|d| d.contains(&v4)), "{v4}");
            assert_eq!(v6.prefix_len(), 48);
            assert!(v6_doc.contains(&v6), "{v6}");
            for p in [v4, v6] {
                assert!(
                    seen.iter().all(|q| !q.contains(&p) && !p.contains(q)),
                    "{p} overlaps another provider's pool"
                );
                seen.push(p);
            }
        }
        // The first providers keep the plan the --netns topology routes.
        assert_eq!(
            provider_pools(15).unwrap()[0].to_string(),
            "198.51.100.240/28"
        );
        assert_eq!(provider_pools(16).unwrap()[0].to_string(), "192.0.2.0/31");
        assert_eq!(
            provider_pools(MAX_PROVIDERS - 1).unwrap()[0].to_string(),
            "203.0.113.254/31"
        );
        let e = node_config(input(Kind::Provider, MAX_PROVIDERS, &lnd)).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
    }

    /// The network rule: no config the simnet writes, for any kind of node, scenario or
    /// secret (the public market's included), lets a daemon dial the public IPFS bootstrap
    /// peers.
    #[test]
    fn no_config_falls_back_to_the_public_bootstrap_peers() {
        use clap::ValueEnum;
        let lnd = lnd();
        for scenario in Scenario::value_variants() {
            for kind in [Kind::Provider, Kind::Renter, Kind::Intruder] {
                for secret in [
                    "simnet-cluster-x",
                    leasewire::net::topic::DEFAULT_PUBLIC_SECRET,
                ] {
                    for bootstrap in [true, false] {
                        let mut i = input(kind, 0, &lnd);
                        i.scenario = *scenario;
                        i.secret = secret;
                        if !bootstrap {
                            i.bootstrap = None;
                        }
                        let cfg = node_config(i).unwrap();
                        assert!(
                            cfg.node.bootstrap_is_explicit(),
                            "{scenario:?} {kind:?} {secret} bootstrap={bootstrap}"
                        );
                        let dht = cfg
                            .node
                            .dht_kind(secret == leasewire::net::topic::DEFAULT_PUBLIC_SECRET);
                        assert!(
                            cfg.node
                                .bootstrap_for(dht)
                                .iter()
                                .all(|a| a.starts_with("/ip4/127.0.0.1/")),
                            "{scenario:?} {kind:?}: {:?}",
                            cfg.node.bootstrap_for(dht)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn renter_and_intruder_configs() {
        let lnd = lnd();
        let r = node_config(input(Kind::Renter, 4, &lnd)).unwrap();
        assert_eq!(r.node.roles, [Role::Renter]);
        assert_eq!(r.tunnel.interface, "lwr4l");
        assert_eq!(r.node.bootstrap.len(), 1);
        let mut i = input(Kind::Intruder, 0, &lnd);
        i.secret = "other";
        let x = node_config(i).unwrap();
        assert_eq!(x.node.roles, [Role::Renter]);
        assert_eq!(x.node.secret, "other");
        assert_eq!(x.tunnel.interface, "lwx0l");
        let mut b = input(Kind::Provider, 0, &lnd);
        b.bootstrap = None;
        assert!(node_config(b).unwrap().node.bootstrap.is_empty());
    }

    #[test]
    fn further_lease_interfaces_of_one_renter_never_take_another_nodes_name() {
        // The renter's naming of further interfaces (src/market/renter/tunnel.rs).
        let further = |base: &str, n: usize| {
            format!("{}{n}", base.trim_end_matches(|c: char| c.is_ascii_digit()))
        };
        let mut seen = std::collections::HashSet::new();
        for i in 0..20 {
            for kind in [Kind::Provider, Kind::Renter] {
                assert!(seen.insert(kind.interface("ab12", i)));
            }
        }
        for i in 0..20 {
            let base = Kind::Renter.interface("ab12", i);
            for n in 1..20 {
                let name = further(&base, n);
                assert!(name.len() <= 15, "{name}");
                assert!(seen.insert(name.clone()), "{name} is taken twice");
            }
        }
    }

    #[test]
    fn netns_config_uses_underlay_wireguard_and_fast_terms() {
        let lnd = lnd();
        let mut i = input(Kind::Provider, 1, &lnd);
        i.udp_port = NETNS_WG_PORT;
        i.netns = Some(NetnsNode {
            tag: "ab12",
            underlay: Ipv4Addr::new(192, 0, 2, 6),
        });
        let p = node_config(i).unwrap();
        assert_eq!(p.node.listen, ["/ip4/192.0.2.6/tcp/0"]);
        let mut fixed = i;
        fixed.tcp_port = NETNS_P2P_PORT;
        assert_eq!(
            node_config(fixed).unwrap().node.listen,
            ["/ip4/192.0.2.6/tcp/4001"]
        );
        assert_eq!(p.tunnel.backend, TunnelBackendKind::Wireguard);
        assert_eq!(p.tunnel.interface, "lwab12p1");
        assert_eq!(p.provider.endpoint, "192.0.2.6:51820");
        assert_eq!(p.provider.metering_interval_secs, 1);
        // 1 sat buys one second.
        assert_eq!(p.provider.terms.credit_secs(40), 40);
        let mut r = input(Kind::Renter, 12, &lnd);
        r.netns = Some(NetnsNode {
            tag: "ab12",
            underlay: Ipv4Addr::new(192, 0, 2, 10),
        });
        let r = node_config(r).unwrap();
        assert_eq!(r.tunnel.interface, "lwab12r12l");
        assert_eq!(r.node.listen, ["/ip4/192.0.2.10/tcp/0"]);
        assert_eq!(Config::from_toml(&r.to_toml()).unwrap(), r);
    }

    #[test]
    fn bootstrap_addr_picks_loopback_and_appends_peer_once() {
        let addrs = vec![
            "/ip6/::1/tcp/9".to_owned(),
            "/ip4/127.0.0.1/tcp/4001".to_owned(),
        ];
        assert_eq!(
            bootstrap_addr(&addrs, "PEER", Ipv4Addr::LOCALHOST).unwrap(),
            "/ip4/127.0.0.1/tcp/4001/p2p/PEER"
        );
        let with = vec!["/ip4/127.0.0.1/tcp/4001/p2p/PEER".to_owned()];
        assert_eq!(
            bootstrap_addr(&with, "PEER", Ipv4Addr::LOCALHOST).unwrap(),
            "/ip4/127.0.0.1/tcp/4001/p2p/PEER"
        );
        assert!(bootstrap_addr(&["/ip6/::1/tcp/9".to_owned()], "P", Ipv4Addr::LOCALHOST).is_err());
        let underlay = vec![
            "/ip4/127.0.0.1/tcp/1".to_owned(),
            "/ip4/192.0.2.2/tcp/4001".to_owned(),
        ];
        assert_eq!(
            bootstrap_addr(&underlay, "PEER", Ipv4Addr::new(192, 0, 2, 2)).unwrap(),
            "/ip4/192.0.2.2/tcp/4001/p2p/PEER"
        );
    }

    #[test]
    fn lnd_info_paths_become_absolute() {
        let mut info = lnd();
        info.absolutize(Path::new("/run/lnd"));
        assert_eq!(info.tls_cert_path, Path::new("/run/lnd/tls.cert"));
        assert_eq!(
            info.node("provider-0").unwrap().macaroon_path,
            Path::new("/run/lnd/provider-0/admin.macaroon")
        );
        assert!(info.node("renter-9").is_err());
    }

    #[test]
    fn secrets_differ_and_ports_are_distinct() {
        let a = random_secret("simnet-cluster").unwrap();
        let b = random_secret("simnet-cluster").unwrap();
        assert!(a.starts_with("simnet-cluster-") && a != b);
        let ports = free_udp_ports(8).unwrap();
        let set: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(set.len(), 8);
        let tcp = free_tcp_ports(8).unwrap();
        let set: std::collections::HashSet<_> = tcp.iter().collect();
        assert_eq!(set.len(), 8);
        assert!(tcp.iter().all(|&p| p != 0));
    }
}
