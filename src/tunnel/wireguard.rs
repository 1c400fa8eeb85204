//! The real WireGuard backend: drives interfaces with `wireguard-control` (keys, port, peers)
//! and rtnetlink (addresses, link state, routes, policy rules).
//!
//! Steps of [`Tunnel::ensure_interface`]:
//! 1. create the device: a kernel `wireguard` link via rtnetlink, or, without kernel support,
//!    a `wireguard-go` daemon (which creates a TUN link and a UAPI socket under
//!    `/var/run/wireguard/<iface>.sock`);
//! 2. set the private key and listen port (`DeviceUpdate::apply`, on a blocking thread);
//! 3. make the link's addresses exactly the spec's and bring the link up;
//! 4. reconcile routing with the [`RoutingPolicy`] (see [`desired_routing`]).
//!
//! Routing is reconciled, not replayed: every route and rule this backend installs carries the
//! routing protocol number 167 (`ip route show proto 167`), and each operation diffs the kernel's
//! current set against the desired one. Applying the same spec twice therefore changes nothing,
//! and a restarted daemon removes what an earlier run left behind.
//!
//! Namespaces: netlink sockets and `wireguard-go` children act in the network namespace of the
//! thread that opens or spawns them, and this backend uses tokio's worker and blocking threads.
//! The whole process must therefore live in the namespace to manage (`ip netns exec`), not just
//! one thread (`setns`). The UAPI socket directory is shared by all namespaces: interface names
//! must be unique machine-wide with the userspace backend.
//!
//! Private keys are never logged: neither [`InterfaceSpec`] nor wireguard-control's `Device`
//! (which holds the key) is ever formatted.

mod rtnl;

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::sync::Mutex;
use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

use self::rtnl::{MAIN_TABLE, Rtnl};
use super::{
    InterfaceSpec, PeerSpec, PeerStats, ProbeSpec, RoutingPolicy, Tunnel, TunnelCheck, TunnelError,
    probe, validate_iface_name,
};
use crate::types::WgKey;

/// The Debian package providing the userspace implementation.
pub const WIREGUARD_GO_PACKAGE: &str = "wireguard-go";

/// How long to wait for `wireguard-go` to open its socket, or to exit after its socket is
/// removed.
const USERSPACE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where WireGuard userspace implementations put their UAPI sockets (wireguard-control looks
/// in the same two places, in this order).
const SOCKET_DIRS: [&str; 2] = ["/var/run/wireguard", "/run/wireguard"];

/// Which WireGuard implementation backs the interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WgBackend {
    /// The Linux kernel module (links of kind `wireguard`).
    Kernel,
    /// A userspace implementation (`wireguard-go`, or the program named by
    /// `WG_USERSPACE_IMPLEMENTATION` / `WG_QUICK_USERSPACE_IMPLEMENTATION`) on a TUN device.
    Userspace,
}

impl WgBackend {
    fn control(self) -> Backend {
        match self {
            WgBackend::Kernel => Backend::Kernel,
            WgBackend::Userspace => Backend::Userspace,
        }
    }

    fn name(self) -> &'static str {
        match self {
            WgBackend::Kernel => "kernel",
            WgBackend::Userspace => "userspace",
        }
    }
}

/// What the backend remembers about an ensured interface. Everything else is read back from
/// the kernel or the userspace daemon.
struct IfaceState {
    policy: RoutingPolicy,
    /// Peers in the order first added, each with its allowed IPs in the order given, so that
    /// [`Tunnel::peer_stats`] reports them in a stable order (wireguard-go lists peers in hash
    /// map order).
    peers: Vec<(WgKey, Vec<IpNet>)>,
}

/// A [`Tunnel`] that drives real WireGuard interfaces (kernel or `wireguard-go`).
///
/// Needs `CAP_NET_ADMIN` (root) in the network namespace it manages. Operations are serialized
/// by an internal lock. See the module docs for the namespace and naming requirements.
pub struct WireGuardTunnel {
    backend: WgBackend,
    /// Absolute path of the userspace implementation (userspace backend only).
    userspace_program: Option<PathBuf>,
    state: Mutex<HashMap<String, IfaceState>>,
}

impl std::fmt::Debug for WireGuardTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireGuardTunnel")
            .field("backend", &self.backend)
            .field("userspace_program", &self.userspace_program)
            .finish_non_exhaustive()
    }
}

impl WireGuardTunnel {
    /// Detects the backend: the kernel's WireGuard if it is loaded (`/sys/module/wireguard`) or
    /// loadable (a throwaway `wireguard` link can be created), else the userspace
    /// implementation, which must be on `PATH`. Logs the choice.
    ///
    /// Must run inside a tokio runtime (it opens a netlink socket).
    ///
    /// Errors: [`TunnelError::Backend`] when neither is available; the message names the
    /// Debian package to install.
    pub async fn new() -> Result<Self, TunnelError> {
        let kernel = kernel_supports_wireguard().await;
        let program = userspace_program_name();
        let found = find_program(&program, std::env::var_os("PATH").as_deref());
        let backend = pick_backend(kernel, &program, found.as_deref())?;
        tracing::info!(
            backend = backend.name(),
            program = ?found.as_deref().filter(|_| backend == WgBackend::Userspace),
            "WireGuard backend selected"
        );
        Ok(WireGuardTunnel {
            backend,
            userspace_program: found.filter(|_| backend == WgBackend::Userspace),
            state: Mutex::new(HashMap::new()),
        })
    }

    /// Uses the given backend without probing the kernel.
    ///
    /// Errors: [`TunnelError::Backend`] for [`WgBackend::Userspace`] when the userspace
    /// implementation is not on `PATH`.
    pub fn with_backend(backend: WgBackend) -> Result<Self, TunnelError> {
        let userspace_program = match backend {
            WgBackend::Kernel => None,
            WgBackend::Userspace => {
                let program = userspace_program_name();
                let found = find_program(&program, std::env::var_os("PATH").as_deref());
                pick_backend(false, &program, found.as_deref())?;
                found
            }
        };
        tracing::info!(backend = backend.name(), "WireGuard backend selected");
        Ok(WireGuardTunnel {
            backend,
            userspace_program,
            state: Mutex::new(HashMap::new()),
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> WgBackend {
        self.backend
    }

    /// Runs a wireguard-control update on a blocking thread.
    async fn apply(
        &self,
        name: InterfaceName,
        update: DeviceUpdate,
        what: &str,
    ) -> Result<(), TunnelError> {
        let backend = self.backend.control();
        blocking(format!("{what} on {name}"), move || {
            update.apply(&name, backend)
        })
        .await
    }

    /// Reads the device (config and counters) on a blocking thread.
    async fn device(&self, name: InterfaceName) -> Result<Device, TunnelError> {
        let backend = self.backend.control();
        let res = tokio::task::spawn_blocking(move || Device::get(&name, backend))
            .await
            .map_err(|e| TunnelError::Backend(format!("reading {name}: worker failed: {e}")))?;
        match res {
            Ok(dev) => Ok(dev),
            // The socket is gone or dead: the daemon exited under us.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                Err(TunnelError::NoSuchInterface(name.to_string()))
            }
            Err(e) => Err(TunnelError::io(
                format!("reading WireGuard device {name}"),
                e,
            )),
        }
    }

    /// Creates the device if it does not exist yet.
    async fn create_device(&self, rtnl: &Rtnl, iface: &str) -> Result<(), TunnelError> {
        match self.backend {
            WgBackend::Kernel => rtnl.add_wireguard_link(iface).await.map(|_| ()),
            WgBackend::Userspace => {
                if socket_alive(iface) {
                    return Ok(());
                }
                if rtnl.link_index(iface).await?.is_some() {
                    return Err(TunnelError::Backend(format!(
                        "a link named {iface} exists but no WireGuard daemon serves it"
                    )));
                }
                let program = self.userspace_program.clone().ok_or_else(|| {
                    TunnelError::Backend(missing_program_message(&userspace_program_name()))
                })?;
                let iface = iface.to_owned();
                let what = format!("starting {} for {iface}", program.display());
                blocking(what, move || start_userspace(&program, &iface)).await
            }
        }
    }

    /// Deletes the device and waits until its link is gone; an absent device is Ok.
    async fn delete_device(
        &self,
        rtnl: &Rtnl,
        iface: &str,
        name: InterfaceName,
    ) -> Result<(), TunnelError> {
        if self.backend == WgBackend::Userspace {
            // The daemon closes its TUN device (the link goes) before its UDP sockets; the port
            // is read first so we can wait for it too, or re-creating the interface right away
            // would fail with EADDRINUSE.
            let port = match self.device(name).await {
                Ok(dev) => dev.listen_port.filter(|p| *p != 0),
                Err(_) => None,
            };
            // Removing the UAPI socket makes wireguard-go close its TUN device and exit.
            blocking(format!("removing the socket of {iface}"), move || {
                wireguard_control::backends::userspace::delete_interface(&name)
            })
            .await?;
            if wait_link_gone(rtnl, iface, USERSPACE_TIMEOUT).await? {
                if let Some(port) = port
                    && !wait_udp_port_free(port, USERSPACE_TIMEOUT).await
                {
                    tracing::warn!(iface, port, "UDP port still bound after the interface went");
                }
                return Ok(());
            }
            tracing::warn!(iface, "userspace WireGuard did not exit; deleting its link");
        }
        if let Some(index) = rtnl.link_index(iface).await? {
            rtnl.delete_link(index).await?;
        }
        if wait_link_gone(rtnl, iface, Duration::from_secs(2)).await? {
            Ok(())
        } else {
            Err(TunnelError::Backend(format!(
                "link {iface} is still present after deletion"
            )))
        }
    }

    /// Checks that `iface` was ensured by this backend and still exists; returns its
    /// wireguard-control name, link index and policy.
    async fn require(
        &self,
        state: &HashMap<String, IfaceState>,
        rtnl: &Rtnl,
        iface: &str,
    ) -> Result<(InterfaceName, u32, RoutingPolicy), TunnelError> {
        validate_iface_name(iface)?;
        let Some(st) = state.get(iface) else {
            return Err(TunnelError::NoSuchInterface(iface.to_owned()));
        };
        let name = wg_name(iface)?;
        let index = rtnl
            .link_index(iface)
            .await?
            .ok_or_else(|| TunnelError::NoSuchInterface(iface.to_owned()))?;
        Ok((name, index, st.policy))
    }

    /// Makes the routes and rules of `iface` match `policy`, its addresses and (for providers)
    /// its peers' allowed IPs.
    async fn sync_routing(
        &self,
        rtnl: &Rtnl,
        name: InterfaceName,
        index: u32,
        policy: RoutingPolicy,
    ) -> Result<(), TunnelError> {
        let addrs = rtnl.addresses(index).await?;
        let allowed: Vec<IpNet> = if policy == RoutingPolicy::Provider {
            self.device(name)
                .await?
                .peers
                .iter()
                .flat_map(|p| p.config.allowed_ips.iter())
                .filter_map(|a| IpNet::new(a.address, a.cidr).ok())
                .collect()
        } else {
            Vec::new()
        };
        let RoutingPlan {
            routes: want_routes,
            rules: want_rules,
        } = desired_routing(policy, &addrs, &allowed);

        let have_routes = rtnl.our_routes(index).await?;
        // Rules name a table, not an interface: ours are those pointing at a table this
        // interface has (or will have) routes in. Each interface needs its own table.
        let tables: BTreeSet<u32> = have_routes
            .iter()
            .map(|r| r.table)
            .chain(want_routes.iter().map(|(t, _)| *t))
            .filter(|t| *t != MAIN_TABLE)
            .collect();
        let have_rules: Vec<_> = rtnl
            .our_rules()
            .await?
            .into_iter()
            .filter(|r| tables.contains(&r.table))
            .collect();

        let have_rule_keys: BTreeSet<(u32, IpNet)> =
            have_rules.iter().map(|r| (r.table, r.src)).collect();
        let have_route_keys: BTreeSet<(u32, IpNet)> =
            have_routes.iter().map(|r| (r.table, r.dst)).collect();

        // Stale rules go first so no rule is left pointing at a table being emptied.
        for rule in have_rules {
            if !want_rules.contains(&(rule.table, rule.src)) {
                tracing::debug!(iface = %name, src = %rule.src, table = rule.table, "removing rule");
                rtnl.delete_rule(rule).await?;
            }
        }
        for route in have_routes {
            if !want_routes.contains(&(route.table, route.dst)) {
                tracing::debug!(iface = %name, dst = %route.dst, table = route.table, "removing route");
                rtnl.delete_route(route).await?;
            }
        }
        // Routes before rules: a rule sending traffic to a still-empty table would let it fall
        // through to the main table, outside the tunnel.
        for (table, dst) in &want_routes {
            if !have_route_keys.contains(&(*table, *dst)) {
                tracing::debug!(iface = %name, %dst, table, "adding route");
                rtnl.add_route(index, *table, *dst).await?;
            }
        }
        for (table, src) in &want_rules {
            if !have_rule_keys.contains(&(*table, *src)) {
                tracing::debug!(iface = %name, %src, table, "adding rule");
                rtnl.add_rule(*src, *table).await?;
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Tunnel for WireGuardTunnel {
    fn kind(&self) -> &'static str {
        "wireguard"
    }

    async fn ensure_interface(&self, spec: &InterfaceSpec) -> Result<(), TunnelError> {
        spec.validate()?;
        let iface = spec.name.as_str();
        let name = wg_name(iface)?;
        let mut state = self.state.lock().await;
        let rtnl = Rtnl::connect()?;

        self.create_device(&rtnl, iface).await?;
        let mut update = DeviceUpdate::new().set_private_key(Key(spec.private_key.0));
        if let Some(port) = spec.listen_port {
            update = update.set_listen_port(port);
        }
        self.apply(name, update, "setting key and port").await?;

        let index = rtnl.link_index(iface).await?.ok_or_else(|| {
            TunnelError::Backend(format!("link {iface} vanished right after creation"))
        })?;
        rtnl.sync_addresses(index, &spec.addresses).await?;
        rtnl.set_up(index).await?;
        if spec.policy == RoutingPolicy::Provider {
            enable_forwarding()?;
        }
        state
            .entry(iface.to_owned())
            .and_modify(|s| s.policy = spec.policy)
            .or_insert_with(|| IfaceState {
                policy: spec.policy,
                peers: Vec::new(),
            });
        self.sync_routing(&rtnl, name, index, spec.policy).await?;
        tracing::info!(
            iface,
            backend = self.backend.name(),
            listen_port = ?spec.listen_port,
            addresses = ?spec.addresses,
            policy = ?spec.policy,
            "WireGuard interface ensured"
        );
        Ok(())
    }

    async fn add_peer(&self, iface: &str, peer: &PeerSpec) -> Result<(), TunnelError> {
        validate_iface_name(iface)?;
        peer.validate()?;
        let mut state = self.state.lock().await;
        let rtnl = Rtnl::connect()?;
        let (name, index, policy) = self.require(&state, &rtnl, iface).await?;

        // Resolve before touching the device, so a bad name changes nothing.
        let endpoint = match &peer.endpoint {
            Some(ep) => Some(resolve_endpoint(ep).await?),
            None => None,
        };
        let key = Key(peer.public_key.0);
        let had_endpoint = self
            .device(name)
            .await?
            .peers
            .iter()
            .find(|p| p.config.public_key == key)
            .map(|p| p.config.endpoint.is_some());
        if endpoint.is_none() && had_endpoint == Some(true) {
            // WireGuard has no way to clear an endpoint; re-create the peer instead.
            self.apply(
                name,
                DeviceUpdate::new().remove_peer_by_key(&key),
                "clearing a peer endpoint",
            )
            .await?;
        }
        let mut builder = PeerConfigBuilder::new(&key)
            .replace_allowed_ips()
            .set_persistent_keepalive_interval(peer.persistent_keepalive.unwrap_or(0));
        for ip in &peer.allowed_ips {
            builder = builder.add_allowed_ip(ip.addr(), ip.prefix_len());
        }
        if let Some(ep) = endpoint {
            builder = builder.set_endpoint(ep);
        }
        self.apply(name, DeviceUpdate::new().add_peer(builder), "adding a peer")
            .await?;
        self.sync_routing(&rtnl, name, index, policy).await?;

        if let Some(st) = state.get_mut(iface) {
            match st.peers.iter_mut().find(|(k, _)| *k == peer.public_key) {
                Some((_, ips)) => ips.clone_from(&peer.allowed_ips),
                None => st.peers.push((peer.public_key, peer.allowed_ips.clone())),
            }
        }
        tracing::info!(
            iface,
            peer = %peer.public_key.to_base64(),
            endpoint = ?endpoint,
            allowed_ips = ?peer.allowed_ips,
            "WireGuard peer set"
        );
        Ok(())
    }

    async fn remove_peer(&self, iface: &str, public_key: &WgKey) -> Result<(), TunnelError> {
        let mut state = self.state.lock().await;
        let rtnl = Rtnl::connect()?;
        let (name, index, policy) = self.require(&state, &rtnl, iface).await?;
        let key = Key(public_key.0);
        let present = self
            .device(name)
            .await?
            .peers
            .iter()
            .any(|p| p.config.public_key == key);
        if present {
            self.apply(
                name,
                DeviceUpdate::new().remove_peer_by_key(&key),
                "removing a peer",
            )
            .await?;
            tracing::info!(iface, peer = %public_key.to_base64(), "WireGuard peer removed");
        }
        self.sync_routing(&rtnl, name, index, policy).await?;
        if let Some(st) = state.get_mut(iface) {
            st.peers.retain(|(k, _)| k != public_key);
        }
        Ok(())
    }

    async fn set_addresses(&self, iface: &str, addrs: &[IpNet]) -> Result<(), TunnelError> {
        let state = self.state.lock().await;
        let rtnl = Rtnl::connect()?;
        let (name, index, policy) = self.require(&state, &rtnl, iface).await?;
        if rtnl.sync_addresses(index, addrs).await? {
            tracing::info!(iface, addresses = ?addrs, "WireGuard addresses set");
        }
        self.sync_routing(&rtnl, name, index, policy).await
    }

    async fn peer_stats(&self, iface: &str) -> Result<Vec<PeerStats>, TunnelError> {
        let state = self.state.lock().await;
        let rtnl = Rtnl::connect()?;
        let (name, _, _) = self.require(&state, &rtnl, iface).await?;
        let device = self.device(name).await?;
        let stats = device.peers.iter().map(peer_stats_of).collect();
        let order = state
            .get(iface)
            .map(|s| s.peers.as_slice())
            .unwrap_or_default();
        Ok(order_stats(stats, order))
    }

    async fn remove_interface(&self, iface: &str) -> Result<(), TunnelError> {
        validate_iface_name(iface)?;
        let name = wg_name(iface)?;
        let mut state = self.state.lock().await;
        let rtnl = Rtnl::connect()?;
        if let Some(index) = rtnl.link_index(iface).await? {
            // Routes through the link vanish with it; rules do not, so remove ours first.
            let mut tables: BTreeSet<u32> = rtnl
                .our_routes(index)
                .await?
                .iter()
                .map(|r| r.table)
                .filter(|t| *t != MAIN_TABLE)
                .collect();
            if let Some(IfaceState {
                policy: RoutingPolicy::SourceOnly { table },
                ..
            }) = state.get(iface)
            {
                tables.insert(*table);
            }
            for rule in rtnl.our_rules().await? {
                if tables.contains(&rule.table) {
                    rtnl.delete_rule(rule).await?;
                }
            }
        }
        self.delete_device(&rtnl, iface, name).await?;
        if state.remove(iface).is_some() {
            tracing::info!(iface, "WireGuard interface removed");
        }
        Ok(())
    }

    /// Reads the peer's handshake around an ICMP echo sent from the probe's source address
    /// out of `iface` (see [`probe::icmp_echo`]).
    ///
    /// The handshake is read after the probe: on a renter the echo itself makes WireGuard
    /// (re)handshake when the session is stale, and that fresh handshake is what the check
    /// should report. The interface lock is not held during the probe, so other operations
    /// proceed meanwhile.
    ///
    /// Errors: [`TunnelError::NoSuchInterface`]; [`TunnelError::Backend`] when `peer` is not
    /// configured on `iface` (there is no tunnel to check); probe errors from
    /// [`probe::icmp_echo`].
    async fn verify(
        &self,
        iface: &str,
        peer: &WgKey,
        probe: &ProbeSpec,
    ) -> Result<TunnelCheck, TunnelError> {
        let peer_b64 = peer.to_base64();
        if !self
            .peer_stats(iface)
            .await?
            .iter()
            .any(|s| s.public_key == *peer)
        {
            return Err(TunnelError::Backend(format!(
                "peer {peer_b64} is not configured on {iface}"
            )));
        }
        let rtt = probe::icmp_echo(probe, iface).await?;
        let last_handshake = self
            .peer_stats(iface)
            .await?
            .into_iter()
            .find(|s| s.public_key == *peer)
            .and_then(|s| s.last_handshake_unix);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let check = TunnelCheck::at(last_handshake, now, rtt);
        tracing::debug!(
            iface,
            peer = %peer_b64,
            source = %probe.source,
            target = %probe.target,
            handshake_age_secs = ?check.handshake_age_secs,
            probe_rtt = ?check.probe_rtt,
            "WireGuard tunnel checked"
        );
        Ok(check)
    }
}

/// The routing an interface should have, as computed by [`desired_routing`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutingPlan {
    /// Routes `(table, destination)` through the interface.
    pub routes: BTreeSet<(u32, IpNet)>,
    /// Policy rules `(table, source prefix)`: `from <source> lookup <table>`.
    pub rules: BTreeSet<(u32, IpNet)>,
}

/// The routes `(table, destination)` and rules `(table, source)` an interface with `policy`,
/// addresses `addrs` and peers' allowed IPs `allowed` should have:
///
/// - [`RoutingPolicy::Provider`]: one main-table route per allowed IP, no rules;
/// - [`RoutingPolicy::SourceOnly`]: a default route in `table` for each address family the
///   interface has an address in, and a rule `from <network> lookup table` per address, the
///   network being the address with its prefix length (a leased IPv4 address is a /32 of its
///   own; the IPv6 address carries the leased prefix's length, so the whole prefix is
///   source-routed);
/// - [`RoutingPolicy::FullTunnel`]: the two halves of the address space (`0.0.0.0/1` and
///   `128.0.0.0/1`, `::/1` and `8000::/1`) in the main table, for each family with an address.
///   They beat the existing default route without replacing it, so removing the interface
///   restores the old routing. Caveat: the peer's endpoint must stay reachable outside the
///   tunnel through a more specific route (e.g. on the local network, or a host route the
///   operator adds), or the encrypted packets would be routed into the tunnel itself.
///   SourceOnly has no such caveat and is what renters use by default.
pub fn desired_routing(policy: RoutingPolicy, addrs: &[IpNet], allowed: &[IpNet]) -> RoutingPlan {
    let mut routes = BTreeSet::new();
    let mut rules = BTreeSet::new();
    let has_v4 = addrs.iter().any(|a| matches!(a, IpNet::V4(_)));
    let has_v6 = addrs.iter().any(|a| matches!(a, IpNet::V6(_)));
    match policy {
        RoutingPolicy::Provider => {
            routes.extend(allowed.iter().map(|n| (MAIN_TABLE, n.trunc())));
        }
        RoutingPolicy::SourceOnly { table } => {
            if has_v4 {
                routes.insert((table, IpNet::V4(Ipv4Net::default())));
            }
            if has_v6 {
                routes.insert((table, IpNet::V6(Ipv6Net::default())));
            }
            // One rule per address's network: a /32 (every leased IPv4 address is its own)
            // covers that address, an IPv6 `::1/64` the whole leased prefix.
            for a in addrs {
                rules.insert((table, a.trunc()));
            }
        }
        RoutingPolicy::FullTunnel => {
            let halves = |lo: IpAddr, hi: IpAddr| {
                [
                    IpNet::new(lo, 1).expect("/1 to be a valid prefix"),
                    IpNet::new(hi, 1).expect("/1 to be a valid prefix"),
                ]
            };
            if has_v4 {
                for n in halves(
                    Ipv4Addr::UNSPECIFIED.into(),
                    Ipv4Addr::new(128, 0, 0, 0).into(),
                ) {
                    routes.insert((MAIN_TABLE, n));
                }
            }
            if has_v6 {
                for n in halves(
                    Ipv6Addr::UNSPECIFIED.into(),
                    Ipv6Addr::new(0x8000, 0, 0, 0, 0, 0, 0, 0).into(),
                ) {
                    routes.insert((MAIN_TABLE, n));
                }
            }
        }
    }
    RoutingPlan { routes, rules }
}

/// Parses `host:port` endpoints that are IP literals (`192.0.2.1:51820`, `[2001:db8::1]:51820`)
/// without any lookup; `None` for DNS names.
pub fn literal_endpoint(endpoint: &str) -> Option<SocketAddr> {
    endpoint.parse().ok()
}

/// Resolves a validated endpoint (`host:port`, `[v6]:port`, DNS names included) to the first
/// address the resolver returns.
///
/// Errors: [`TunnelError::InvalidSpec`] for a malformed endpoint, [`TunnelError::Io`] when the
/// lookup fails, [`TunnelError::Backend`] when it returns no address.
pub async fn resolve_endpoint(endpoint: &str) -> Result<SocketAddr, TunnelError> {
    super::validate_endpoint(endpoint)?;
    if let Some(addr) = literal_endpoint(endpoint) {
        return Ok(addr);
    }
    let mut addrs = tokio::net::lookup_host(endpoint)
        .await
        .map_err(|e| TunnelError::io(format!("resolving endpoint {endpoint}"), e))?;
    addrs
        .next()
        .ok_or_else(|| TunnelError::Backend(format!("endpoint {endpoint} resolved to no address")))
}

/// Chooses the backend from what is available.
///
/// Errors: [`TunnelError::Backend`] naming the package to install when the kernel has no
/// WireGuard and `userspace` (the located program) is `None`.
fn pick_backend(
    kernel: bool,
    program: &str,
    userspace: Option<&Path>,
) -> Result<WgBackend, TunnelError> {
    if kernel {
        Ok(WgBackend::Kernel)
    } else if userspace.is_some() {
        Ok(WgBackend::Userspace)
    } else {
        Err(TunnelError::Backend(missing_program_message(program)))
    }
}

fn missing_program_message(program: &str) -> String {
    format!(
        "the kernel has no WireGuard support and the userspace implementation {program:?} is \
         not on PATH: install the Debian package `{WIREGUARD_GO_PACKAGE}` (apt install \
         {WIREGUARD_GO_PACKAGE}), or set WG_USERSPACE_IMPLEMENTATION to another implementation"
    )
}

/// The userspace implementation to run, chosen like wg-quick and wireguard-control do.
fn userspace_program_name() -> String {
    std::env::var("WG_USERSPACE_IMPLEMENTATION")
        .or_else(|_| std::env::var("WG_QUICK_USERSPACE_IMPLEMENTATION"))
        .unwrap_or_else(|_| WIREGUARD_GO_PACKAGE.to_owned())
}

/// Finds an executable: `program` itself when it contains a `/`, else the first match in the
/// `PATH`-style list `path`.
fn find_program(program: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_exec(&p).then_some(p);
    }
    std::env::split_paths(path?)
        .map(|dir| dir.join(program))
        .find(|p| is_exec(p))
}

/// Whether the running kernel can create WireGuard links: the module is loaded, or creating a
/// throwaway link works (which also autoloads a module that is installed but not loaded).
async fn kernel_supports_wireguard() -> bool {
    if Path::new("/sys/module/wireguard").exists() {
        return true;
    }
    static PROBES: AtomicU32 = AtomicU32::new(0);
    // Unique per process and call; "lwprobe" + 8 digits fits IFNAMSIZ.
    let n = std::process::id()
        .wrapping_mul(31)
        .wrapping_add(PROBES.fetch_add(1, Ordering::Relaxed))
        % 100_000_000;
    let probe = format!("lwprobe{n}");
    let rtnl = match Rtnl::connect() {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "cannot probe for kernel WireGuard");
            return false;
        }
    };
    match rtnl.add_wireguard_link(&probe).await {
        Ok(true) => {
            if let Ok(Some(index)) = rtnl.link_index(&probe).await
                && let Err(e) = rtnl.delete_link(index).await
            {
                tracing::warn!(link = %probe, error = %e, "could not delete the WireGuard probe link");
            }
            true
        }
        // The name was taken: the probe proves nothing either way.
        Ok(false) => false,
        Err(e) => {
            tracing::debug!(error = %e, "kernel WireGuard unavailable");
            false
        }
    }
}

fn wg_name(iface: &str) -> Result<InterfaceName, TunnelError> {
    iface
        .parse()
        .map_err(|_| TunnelError::InvalidName(iface.to_owned()))
}

fn socket_path(iface: &str) -> PathBuf {
    let dir = SOCKET_DIRS
        .iter()
        .find(|d| Path::new(d).exists())
        .unwrap_or(&SOCKET_DIRS[0]);
    Path::new(dir).join(format!("{iface}.sock"))
}

/// Whether a userspace daemon answers on the interface's UAPI socket.
fn socket_alive(iface: &str) -> bool {
    UnixStream::connect(socket_path(iface)).is_ok()
}

/// Starts the userspace implementation for `iface` (it daemonizes, so the tunnel outlives this
/// process like a kernel link would) and waits for its UAPI socket.
fn start_userspace(program: &Path, iface: &str) -> io::Result<()> {
    let out = Command::new(program)
        .arg(iface)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(io::Error::other(format!(
            "{} {iface} exited with {}: {}",
            program.display(),
            out.status,
            stderr.trim()
        )));
    }
    let deadline = Instant::now() + USERSPACE_TIMEOUT;
    while !socket_alive(iface) {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no UAPI socket at {}", socket_path(iface).display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::debug!(iface, program = %program.display(), "userspace WireGuard started");
    Ok(())
}

/// Polls until link `iface` is gone; returns whether it went within `timeout`.
async fn wait_link_gone(rtnl: &Rtnl, iface: &str, timeout: Duration) -> Result<bool, TunnelError> {
    let deadline = Instant::now() + timeout;
    loop {
        if rtnl.link_index(iface).await?.is_none() {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether `/proc/net/udp{,6}` (this network namespace's UDP sockets) lists a socket bound to
/// local port `port`.
fn udp_port_bound(port: u16) -> bool {
    let needle = format!(":{port:04X}");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|path| {
        std::fs::read_to_string(path).is_ok_and(|table| {
            // Columns: sl local_address rem_address ...; addresses are HEXADDR:HEXPORT.
            table
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(1))
                .any(|local| local.ends_with(&needle))
        })
    })
}

/// Polls until no UDP socket holds `port`; returns whether that happened within `timeout`.
async fn wait_udp_port_free(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while udp_port_bound(port) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    true
}

/// Turns IPv4 and IPv6 forwarding on (needed by providers to pass renters' traffic on).
/// Forwarding is never turned back off: other services on the host may rely on it.
fn enable_forwarding() -> Result<(), TunnelError> {
    for (path, required) in [
        ("/proc/sys/net/ipv4/ip_forward", true),
        ("/proc/sys/net/ipv6/conf/all/forwarding", false),
    ] {
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
            continue;
        }
        match std::fs::write(path, "1\n") {
            Ok(()) => tracing::info!(path, "forwarding enabled"),
            // IPv6 disabled on this host: nothing to forward.
            Err(e) if !required && e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(path, "IPv6 forwarding unavailable")
            }
            Err(e) => return Err(TunnelError::io(format!("writing {path}"), e)),
        }
    }
    Ok(())
}

/// Runs blocking I/O off the async runtime, mapping errors with `what`.
async fn blocking<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, TunnelError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(TunnelError::io(what, e)),
        Err(e) => Err(TunnelError::Backend(format!("{what}: worker failed: {e}"))),
    }
}

fn peer_stats_of(p: &wireguard_control::PeerInfo) -> PeerStats {
    PeerStats {
        public_key: WgKey(p.config.public_key.0),
        last_handshake_unix: p
            .stats
            .last_handshake_time
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .filter(|s| *s > 0),
        rx_bytes: p.stats.rx_bytes,
        tx_bytes: p.stats.tx_bytes,
        endpoint: p.config.endpoint.map(|e| e.to_string()),
        allowed_ips: p
            .config
            .allowed_ips
            .iter()
            .filter_map(|a| IpNet::new(a.address, a.cidr).ok())
            .collect(),
    }
}

/// Orders peers as first added (unknown ones last, in device order) and each peer's allowed
/// IPs as given (unknown ones last).
fn order_stats(mut stats: Vec<PeerStats>, order: &[(WgKey, Vec<IpNet>)]) -> Vec<PeerStats> {
    let pos = |k: &WgKey| order.iter().position(|(o, _)| o == k).unwrap_or(usize::MAX);
    // Stable sort: peers unknown to `order` keep their relative device order.
    stats.sort_by_key(|s| pos(&s.public_key));
    for s in &mut stats {
        if let Some((_, given)) = order.iter().find(|(k, _)| *k == s.public_key) {
            let ip_pos = |n: &IpNet| {
                given
                    .iter()
                    .position(|g| g.trunc() == n.trunc())
                    .unwrap_or(usize::MAX)
            };
            s.allowed_ips.sort_by_key(ip_pos);
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn stats(key: u8, ips: &[&str]) -> PeerStats {
        PeerStats {
            public_key: WgKey([key; 32]),
            last_handshake_unix: None,
            rx_bytes: 0,
            tx_bytes: 0,
            endpoint: None,
            allowed_ips: ips.iter().map(|s| net(s)).collect(),
        }
    }

    #[test]
    fn literal_endpoints_parse_without_lookup() {
        assert_eq!(
            literal_endpoint("192.0.2.1:51820"),
            Some("192.0.2.1:51820".parse().unwrap())
        );
        assert_eq!(
            literal_endpoint("[2001:db8::7]:1"),
            Some(SocketAddr::new("2001:db8::7".parse().unwrap(), 1))
        );
        assert_eq!(literal_endpoint("vpn.example.net:51820"), None);
        assert_eq!(literal_endpoint("2001:db8::7:1"), None);
    }

    #[tokio::test]
    async fn endpoints_resolve_including_names() {
        assert_eq!(
            resolve_endpoint("[::1]:51822").await.unwrap(),
            "[::1]:51822".parse().unwrap()
        );
        let local = resolve_endpoint("localhost:9").await.unwrap();
        assert!(local.ip().is_loopback(), "{local}");
        assert_eq!(local.port(), 9);
        assert!(matches!(
            resolve_endpoint("h:1\nPostUp = true").await,
            Err(TunnelError::InvalidSpec(_))
        ));
        assert!(matches!(
            resolve_endpoint("127.0.0.1:0").await,
            Err(TunnelError::InvalidSpec(_))
        ));
    }

    #[test]
    fn backend_choice() {
        let prog = Path::new("/usr/bin/wireguard-go");
        assert_eq!(
            pick_backend(true, "wireguard-go", None).unwrap(),
            WgBackend::Kernel
        );
        assert_eq!(
            pick_backend(true, "wireguard-go", Some(prog)).unwrap(),
            WgBackend::Kernel
        );
        assert_eq!(
            pick_backend(false, "wireguard-go", Some(prog)).unwrap(),
            WgBackend::Userspace
        );
        match pick_backend(false, "wireguard-go", None) {
            Err(TunnelError::Backend(msg)) => {
                assert!(msg.contains("apt install wireguard-go"), "{msg}");
            }
            other => panic!("want a Backend error naming the package, got {other:?}"),
        }
    }

    #[test]
    fn programs_are_found_on_path_only_when_executable() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("wg-impl");
        std::fs::write(&exe, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.path().join("not-exec");
        std::fs::write(&plain, b"").unwrap();
        let path =
            std::env::join_paths(["/nonexistent-dir", dir.path().to_str().unwrap()]).unwrap();

        assert_eq!(find_program("wg-impl", Some(&path)), Some(exe.clone()));
        assert_eq!(find_program("not-exec", Some(&path)), None);
        assert_eq!(find_program("wg-impl", None), None);
        assert_eq!(find_program("", Some(&path)), None);
        // A path with a slash is taken as is, not searched.
        assert_eq!(find_program(exe.to_str().unwrap(), None), Some(exe));
        assert_eq!(find_program(plain.to_str().unwrap(), Some(&path)), None);
    }

    #[test]
    fn provider_routes_follow_allowed_ips() {
        let RoutingPlan { routes, rules } = desired_routing(
            RoutingPolicy::Provider,
            &[net("203.0.113.1/32")],
            &[
                net("198.51.100.2/32"),
                net("2001:db8:5::1/64"),
                net("198.51.100.2/32"),
            ],
        );
        assert_eq!(
            routes.into_iter().collect::<Vec<_>>(),
            vec![
                (MAIN_TABLE, net("198.51.100.2/32")),
                (MAIN_TABLE, net("2001:db8:5::/64")),
            ]
        );
        assert!(rules.is_empty());
    }

    #[test]
    fn source_only_routes_by_leased_address() {
        let policy = RoutingPolicy::SourceOnly { table: 51820 };
        let RoutingPlan { routes, rules } = desired_routing(
            policy,
            &[net("198.51.100.2/32"), net("198.51.100.3/24")],
            &[net("0.0.0.0/0")],
        );
        assert_eq!(
            routes.into_iter().collect::<Vec<_>>(),
            vec![(51820, net("0.0.0.0/0"))]
        );
        assert_eq!(
            rules.into_iter().collect::<Vec<_>>(),
            // Each address's network, as the file backend's PostUp rules: an address with a
            // shorter prefix source-routes that whole prefix.
            vec![
                (51820, net("198.51.100.0/24")),
                (51820, net("198.51.100.2/32"))
            ]
        );

        let RoutingPlan { routes, rules } = desired_routing(policy, &[net("2001:db8::9/64")], &[]);
        assert_eq!(
            routes.into_iter().collect::<Vec<_>>(),
            vec![(51820, net("::/0"))]
        );
        assert_eq!(
            rules.into_iter().collect::<Vec<_>>(),
            vec![(51820, net("2001:db8::/64"))]
        );

        // No leased address: nothing to route.
        let RoutingPlan { routes, rules } = desired_routing(policy, &[], &[]);
        assert!(routes.is_empty() && rules.is_empty());
    }

    #[test]
    fn full_tunnel_uses_half_defaults_in_main() {
        let RoutingPlan { routes, rules } = desired_routing(
            RoutingPolicy::FullTunnel,
            &[net("198.51.100.2/32"), net("2001:db8::9/128")],
            &[],
        );
        assert_eq!(
            routes.into_iter().collect::<Vec<_>>(),
            vec![
                (MAIN_TABLE, net("0.0.0.0/1")),
                (MAIN_TABLE, net("128.0.0.0/1")),
                (MAIN_TABLE, net("::/1")),
                (MAIN_TABLE, net("8000::/1")),
            ]
        );
        assert!(rules.is_empty());
    }

    #[test]
    fn stats_are_ordered_as_configured() {
        let order = vec![
            (
                WgKey([3; 32]),
                vec![net("198.51.100.10/32"), net("2001:db8:a::/64")],
            ),
            (WgKey([1; 32]), vec![net("198.51.100.20/32")]),
        ];
        let device = vec![
            stats(9, &[]),
            stats(1, &[]),
            stats(
                3,
                &["2001:db8:a::/64", "198.51.100.99/32", "198.51.100.10/32"],
            ),
        ];
        let got = order_stats(device, &order);
        let keys: Vec<u8> = got.iter().map(|s| s.public_key.0[0]).collect();
        assert_eq!(keys, vec![3, 1, 9]);
        assert_eq!(
            got[0].allowed_ips,
            vec![
                net("198.51.100.10/32"),
                net("2001:db8:a::/64"),
                net("198.51.100.99/32")
            ]
        );
    }

    #[test]
    fn handshake_times_convert_to_unix_seconds() {
        let mut info = wireguard_control::PeerInfo::from_public_key(Key([7; 32]));
        assert_eq!(peer_stats_of(&info).last_handshake_unix, None);
        info.stats.last_handshake_time =
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        info.stats.rx_bytes = 92;
        info.stats.tx_bytes = 148;
        info.config.endpoint = Some("[2001:db8::1]:51820".parse().unwrap());
        let s = peer_stats_of(&info);
        assert_eq!(s.last_handshake_unix, Some(1_700_000_000));
        assert_eq!((s.rx_bytes, s.tx_bytes), (92, 148));
        assert_eq!(s.endpoint.as_deref(), Some("[2001:db8::1]:51820"));
        assert_eq!(s.public_key, WgKey([7; 32]));
    }

    #[test]
    fn bound_udp_ports_are_seen() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        assert!(udp_port_bound(port));
        drop(sock);
        assert!(!udp_port_bound(port));
    }

    #[test]
    fn debug_output_has_no_state() {
        let t = WireGuardTunnel {
            backend: WgBackend::Userspace,
            userspace_program: Some("/usr/bin/wireguard-go".into()),
            state: Mutex::new(HashMap::new()),
        };
        let text = format!("{t:?}");
        assert!(text.contains("Userspace"), "{text}");
        assert_eq!(t.kind(), "wireguard");
    }
}
