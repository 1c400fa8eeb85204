//! The file backend: keeps each interface's desired state on disk and renders it as a wg-quick
//! file, without touching any network interface.
//!
//! For every interface `I` in its directory it keeps:
//! - `I.state.json`: the [`InterfaceSpec`] and peers, reloaded by [`FileTunnel::new`] so a
//!   restarted daemon sees the state it left;
//! - `I.conf`: the same state in wg-quick format (`wg-quick up ./I.conf`), regenerated from the
//!   state on every change and on load.
//!
//! Both hold the private key, so both are written with mode 0600, atomically (temporary file,
//! fsync, rename, fsync of the directory). A change that leaves the state equal writes nothing,
//! so re-applying the same peer keeps the files byte-for-byte (and mtime) identical.
//!
//! The backend cannot observe traffic: [`Tunnel::peer_stats`] reports the configured peers with
//! zero counters and no handshake time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{
    InterfaceSpec, PeerSpec, PeerStats, RoutingPolicy, Tunnel, TunnelError, validate_iface_name,
};
use crate::fsutil;
use crate::types::WgKey;

/// Version of the `*.state.json` format.
const STATE_VERSION: u32 = 1;
const STATE_SUFFIX: &str = ".state.json";

/// What is persisted per interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct IfaceState {
    version: u32,
    spec: InterfaceSpec,
    /// In the order peers were first added; replacing a peer keeps its place.
    peers: Vec<PeerSpec>,
}

/// A [`Tunnel`] that writes wg-quick files and persists its state in a directory.
///
/// Cheap to share behind an `Arc`; all operations on one instance are serialized. Two instances
/// must not share a directory (each would overwrite the other's files).
#[derive(Debug)]
pub struct FileTunnel {
    dir: PathBuf,
    ifaces: Mutex<BTreeMap<String, IfaceState>>,
}

impl FileTunnel {
    /// Opens (creating it with mode 0700 if missing) `dir` and loads every `*.state.json` in it.
    /// Each loaded interface's `.conf` is rewritten if it does not match its state, which
    /// repairs a crash between the two writes of an update.
    ///
    /// Errors: [`TunnelError::Io`] if the directory cannot be created or read, and
    /// [`TunnelError::CorruptState`] for a state file that does not parse or whose spec is
    /// invalid (refusing to start beats silently dropping a lease's tunnel).
    pub fn new(dir: PathBuf) -> Result<FileTunnel, TunnelError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| TunnelError::io(format!("cannot create {}", dir.display()), e))?;
        let mut ifaces = BTreeMap::new();
        let entries = fs::read_dir(&dir)
            .map_err(|e| TunnelError::io(format!("cannot read {}", dir.display()), e))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| TunnelError::io(format!("cannot read {}", dir.display()), e))?;
            let file_name = entry.file_name();
            let Some(name) = file_name
                .to_str()
                .and_then(|n| n.strip_suffix(STATE_SUFFIX))
            else {
                continue;
            };
            // Skip leftovers such as `.lw0.state.json.tmp` or foreign files: only names we could
            // have written are ours.
            if validate_iface_name(name).is_err() {
                continue;
            }
            let state = load_state(&entry.path(), name)?;
            ifaces.insert(name.to_owned(), state);
        }
        for state in ifaces.values() {
            let conf_path = dir.join(format!("{}.conf", state.spec.name));
            let rendered = render_wg_quick(&state.spec, &state.peers);
            if fs::read(&conf_path).ok().as_deref() != Some(rendered.as_bytes()) {
                fsutil::write_private(&conf_path, rendered.as_bytes())
                    .map_err(private_write_err)?;
                tracing::info!(iface = %state.spec.name, path = %conf_path.display(), "rewrote wg-quick file from saved state");
            }
        }
        tracing::debug!(dir = %dir.display(), interfaces = ifaces.len(), "file tunnel loaded");
        Ok(FileTunnel {
            dir,
            ifaces: Mutex::new(ifaces),
        })
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the wg-quick file for `iface` (`dir/<iface>.conf`); it exists once the interface
    /// was ensured. `iface` is not validated here.
    pub fn conf_path(&self, iface: &str) -> PathBuf {
        self.dir.join(format!("{iface}.conf"))
    }

    /// Path of the persisted state of `iface` (`dir/<iface>.state.json`).
    pub fn state_path(&self, iface: &str) -> PathBuf {
        self.dir.join(format!("{iface}{STATE_SUFFIX}"))
    }

    /// Applies `change` to a copy of `iface`'s state and, if the copy differs, persists it and
    /// only then makes it current, so a failed write leaves memory and disk agreeing.
    ///
    /// If the caller's future is dropped while the write runs, the blocking write still
    /// finishes and memory lags the disk; the next change is computed from memory and rewrites
    /// both files, and a restart loads the disk state, so the two never stay apart.
    async fn update<F>(&self, iface: &str, change: F) -> Result<(), TunnelError>
    where
        F: FnOnce(&mut IfaceState) -> Result<(), TunnelError>,
    {
        validate_iface_name(iface)?;
        let mut ifaces = self.ifaces.lock().await;
        let current = ifaces
            .get(iface)
            .ok_or_else(|| TunnelError::NoSuchInterface(iface.to_owned()))?;
        let mut next = current.clone();
        change(&mut next)?;
        if next == *current {
            return Ok(());
        }
        self.persist(&next).await?;
        ifaces.insert(iface.to_owned(), next);
        Ok(())
    }

    /// Writes the state file, then the wg-quick file (the state is authoritative: see `new`).
    async fn persist(&self, state: &IfaceState) -> Result<(), TunnelError> {
        let json = serde_json::to_vec_pretty(state)
            .map_err(|e| TunnelError::Backend(format!("cannot encode tunnel state: {e}")))?;
        let conf = render_wg_quick(&state.spec, &state.peers);
        let state_path = self.state_path(&state.spec.name);
        let conf_path = self.conf_path(&state.spec.name);
        run_blocking(move || {
            fsutil::write_private(&state_path, &json).map_err(private_write_err)?;
            fsutil::write_private(&conf_path, conf.as_bytes()).map_err(private_write_err)
        })
        .await
    }
}

#[async_trait::async_trait]
impl Tunnel for FileTunnel {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn ensure_interface(&self, spec: &InterfaceSpec) -> Result<(), TunnelError> {
        spec.validate()?;
        let mut ifaces = self.ifaces.lock().await;
        let next = match ifaces.get(&spec.name) {
            Some(cur) if cur.spec == *spec => return Ok(()),
            Some(cur) => IfaceState {
                spec: spec.clone(),
                ..cur.clone()
            },
            None => IfaceState {
                version: STATE_VERSION,
                spec: spec.clone(),
                peers: Vec::new(),
            },
        };
        self.persist(&next).await?;
        tracing::info!(iface = %spec.name, policy = ?spec.policy, addresses = spec.addresses.len(), "tunnel interface configured (file backend)");
        ifaces.insert(spec.name.clone(), next);
        Ok(())
    }

    async fn add_peer(&self, iface: &str, peer: &PeerSpec) -> Result<(), TunnelError> {
        peer.validate()?;
        let mut peer = peer.clone();
        dedup_in_order(&mut peer.allowed_ips);
        self.update(iface, |state| {
            // An allowed IP routes to exactly one peer, as in WireGuard: take it from the others.
            for other in state
                .peers
                .iter_mut()
                .filter(|p| p.public_key != peer.public_key)
            {
                other
                    .allowed_ips
                    .retain(|ip| !peer.allowed_ips.contains(ip));
            }
            match state
                .peers
                .iter_mut()
                .find(|p| p.public_key == peer.public_key)
            {
                Some(existing) => *existing = peer.clone(),
                None => state.peers.push(peer.clone()),
            }
            Ok(())
        })
        .await?;
        tracing::debug!(iface, peer = %peer.public_key, "tunnel peer set (file backend)");
        Ok(())
    }

    async fn remove_peer(&self, iface: &str, public_key: &WgKey) -> Result<(), TunnelError> {
        self.update(iface, |state| {
            state.peers.retain(|p| p.public_key != *public_key);
            Ok(())
        })
        .await?;
        tracing::debug!(iface, peer = %public_key, "tunnel peer removed (file backend)");
        Ok(())
    }

    async fn set_addresses(&self, iface: &str, addrs: &[IpNet]) -> Result<(), TunnelError> {
        self.update(iface, |state| {
            state.spec.addresses = addrs.to_vec();
            Ok(())
        })
        .await
    }

    async fn peer_stats(&self, iface: &str) -> Result<Vec<PeerStats>, TunnelError> {
        validate_iface_name(iface)?;
        let ifaces = self.ifaces.lock().await;
        let state = ifaces
            .get(iface)
            .ok_or_else(|| TunnelError::NoSuchInterface(iface.to_owned()))?;
        Ok(state
            .peers
            .iter()
            .map(|p| PeerStats {
                public_key: p.public_key,
                last_handshake_unix: None,
                rx_bytes: 0,
                tx_bytes: 0,
                endpoint: p.endpoint.clone(),
                allowed_ips: p.allowed_ips.clone(),
            })
            .collect())
    }

    async fn remove_interface(&self, iface: &str) -> Result<(), TunnelError> {
        validate_iface_name(iface)?;
        let mut ifaces = self.ifaces.lock().await;
        // The state file goes first: should the conf removal fail, a restart must not bring the
        // interface back.
        let state_path = self.state_path(iface);
        let conf_path = self.conf_path(iface);
        let dir = self.dir.clone();
        run_blocking(move || {
            remove_if_present(&state_path)?;
            remove_if_present(&conf_path)?;
            sync_dir(&dir)
        })
        .await?;
        if ifaces.remove(iface).is_some() {
            tracing::info!(iface, "tunnel interface removed (file backend)");
        }
        Ok(())
    }
}

/// Renders `spec` and `peers` as a wg-quick configuration file.
///
/// - `[Interface]`: `PrivateKey`, `ListenPort` (if any), one `Address` line per address.
///   - [`RoutingPolicy::Provider`] and [`RoutingPolicy::FullTunnel`]: no `Table` line, so
///     wg-quick adds routes for the peers' `AllowedIPs` (for `0.0.0.0/0` and `::/0` that is
///     wg-quick's own full-tunnel setup).
///   - [`RoutingPolicy::SourceOnly`]: `Table = off` plus `PostUp`/`PreDown` commands that route
///     only traffic *from* the interface addresses through the tunnel: per address family a
///     default route into the interface in table N, and per address an `ip rule` sending its
///     traffic to table N.
/// - one `[Peer]` section per peer: `PublicKey`, `Endpoint`, `AllowedIPs` (comma-separated),
///   `PersistentKeepalive` (if non-zero).
///
/// The output contains the private key. Endpoints are copied verbatim: callers must have
/// checked the specs with [`InterfaceSpec::validate`] / [`PeerSpec::validate`] (every backend
/// does), since wg-quick runs `PostUp` lines through a shell.
pub fn render_wg_quick(spec: &InterfaceSpec, peers: &[PeerSpec]) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results of writeln! are ignored for that reason.
    let _ = writeln!(
        out,
        "# Written by leasewire for interface {}. Contains a private key; keep it mode 0600.",
        spec.name
    );
    let _ = writeln!(out, "[Interface]");
    let _ = writeln!(out, "PrivateKey = {}", spec.private_key.to_base64());
    if let Some(port) = spec.listen_port {
        let _ = writeln!(out, "ListenPort = {port}");
    }
    for addr in &spec.addresses {
        let _ = writeln!(out, "Address = {addr}");
    }
    if let RoutingPolicy::SourceOnly { table } = spec.policy {
        let _ = writeln!(out, "Table = off");
        let mut post_up = Vec::new();
        let mut pre_down = Vec::new();
        for (flag, is_family) in [
            ("-4", (|n| matches!(n, IpNet::V4(_))) as fn(&IpNet) -> bool),
            ("-6", |n| matches!(n, IpNet::V6(_))),
        ] {
            let family: Vec<IpNet> = spec
                .addresses
                .iter()
                .filter(|a| is_family(a))
                .map(IpNet::trunc)
                .collect();
            if family.is_empty() {
                continue;
            }
            post_up.push(format!("ip {flag} route add default dev %i table {table}"));
            for net in &family {
                post_up.push(format!("ip {flag} rule add from {net} table {table}"));
                pre_down.push(format!("ip {flag} rule del from {net} table {table}"));
            }
            pre_down.push(format!("ip {flag} route del default dev %i table {table}"));
        }
        for cmd in post_up {
            let _ = writeln!(out, "PostUp = {cmd}");
        }
        for cmd in pre_down {
            let _ = writeln!(out, "PreDown = {cmd}");
        }
    }
    for peer in peers {
        let _ = writeln!(out, "\n[Peer]");
        let _ = writeln!(out, "PublicKey = {}", peer.public_key.to_base64());
        if let Some(ep) = &peer.endpoint {
            let _ = writeln!(out, "Endpoint = {ep}");
        }
        if !peer.allowed_ips.is_empty() {
            let ips: Vec<String> = peer.allowed_ips.iter().map(IpNet::to_string).collect();
            let _ = writeln!(out, "AllowedIPs = {}", ips.join(", "));
        }
        if let Some(secs) = peer.persistent_keepalive.filter(|s| *s > 0) {
            let _ = writeln!(out, "PersistentKeepalive = {secs}");
        }
    }
    out
}

/// Removes duplicates, keeping the first occurrence of each.
fn dedup_in_order(ips: &mut Vec<IpNet>) {
    let mut seen = Vec::with_capacity(ips.len());
    ips.retain(|ip| {
        if seen.contains(ip) {
            false
        } else {
            seen.push(*ip);
            true
        }
    });
}

/// Reads and checks one state file.
fn load_state(path: &Path, name: &str) -> Result<IfaceState, TunnelError> {
    let corrupt = |reason: String| TunnelError::CorruptState {
        path: path.display().to_string(),
        reason,
    };
    let bytes = fs::read(path)
        .map_err(|e| TunnelError::io(format!("cannot read {}", path.display()), e))?;
    let state: IfaceState = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if state.version != STATE_VERSION {
        return Err(corrupt(format!("unsupported version {}", state.version)));
    }
    if state.spec.name != name {
        return Err(corrupt(format!(
            "holds interface {:?}, file name says {name:?}",
            state.spec.name
        )));
    }
    state.spec.validate().map_err(|e| corrupt(e.to_string()))?;
    for peer in &state.peers {
        peer.validate().map_err(|e| corrupt(e.to_string()))?;
    }
    Ok(state)
}

/// A failed [`fsutil::write_private`] (its message names the step and the path).
fn private_write_err(e: std::io::Error) -> TunnelError {
    TunnelError::io("tunnel file", e)
}

/// Deletes `path`; a missing file is not an error.
fn remove_if_present(path: &Path) -> Result<(), TunnelError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TunnelError::io(
            format!("cannot remove {}", path.display()),
            e,
        )),
    }
}

/// Makes renames and removals in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), TunnelError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TunnelError::io(format!("cannot sync {}", dir.display()), e))
}

/// Runs blocking file I/O off the async executor.
async fn run_blocking<F>(f: F) -> Result<(), TunnelError>
where
    F: FnOnce() -> Result<(), TunnelError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TunnelError::Backend(format!("file writer task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use crate::tunnel::testing;

    const PRIV: WgKey = WgKey([0x11; 32]);

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn provider_spec() -> InterfaceSpec {
        InterfaceSpec {
            name: "lwp0".into(),
            private_key: PRIV,
            listen_port: Some(51820),
            addresses: vec![net("198.51.100.1/24")],
            policy: RoutingPolicy::Provider,
        }
    }

    fn renter_peer() -> PeerSpec {
        PeerSpec {
            public_key: WgKey([0x22; 32]),
            endpoint: Some("127.0.0.1:51820".into()),
            allowed_ips: vec![net("0.0.0.0/0"), net("::/0")],
            persistent_keepalive: Some(25),
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn file_tunnel_passes_conformance() {
        let tmp = tempfile::tempdir().unwrap();
        let t = FileTunnel::new(tmp.path().join("wg")).unwrap();
        testing::conformance(&t).await;
        // remove_interface cleaned up after itself.
        assert!(!t.conf_path(testing::CONFORMANCE_IFACE).exists());
        assert!(!t.state_path(testing::CONFORMANCE_IFACE).exists());
    }

    #[test]
    fn renders_provider_config() {
        let peers = [
            PeerSpec {
                public_key: WgKey([0x33; 32]),
                endpoint: None,
                allowed_ips: vec![net("198.51.100.16/30"), net("2001:db8:1::/64")],
                persistent_keepalive: None,
            },
            PeerSpec {
                public_key: WgKey([0x44; 32]),
                endpoint: None,
                allowed_ips: vec![net("198.51.100.20/32")],
                persistent_keepalive: Some(0),
            },
        ];
        let want = format!(
            "# Written by leasewire for interface lwp0. Contains a private key; keep it mode 0600.\n\
             [Interface]\n\
             PrivateKey = {}\n\
             ListenPort = 51820\n\
             Address = 198.51.100.1/24\n\
             \n\
             [Peer]\n\
             PublicKey = {}\n\
             AllowedIPs = 198.51.100.16/30, 2001:db8:1::/64\n\
             \n\
             [Peer]\n\
             PublicKey = {}\n\
             AllowedIPs = 198.51.100.20/32\n",
            PRIV.to_base64(),
            WgKey([0x33; 32]).to_base64(),
            WgKey([0x44; 32]).to_base64(),
        );
        assert_eq!(render_wg_quick(&provider_spec(), &peers), want);
    }

    #[test]
    fn renders_source_only_renter_config() {
        let spec = InterfaceSpec {
            name: "lwr0".into(),
            private_key: PRIV,
            listen_port: None,
            addresses: vec![net("198.51.100.7/32"), net("2001:db8:5::1/128")],
            policy: RoutingPolicy::SourceOnly { table: 51820 },
        };
        let want = format!(
            "# Written by leasewire for interface lwr0. Contains a private key; keep it mode 0600.\n\
             [Interface]\n\
             PrivateKey = {}\n\
             Address = 198.51.100.7/32\n\
             Address = 2001:db8:5::1/128\n\
             Table = off\n\
             PostUp = ip -4 route add default dev %i table 51820\n\
             PostUp = ip -4 rule add from 198.51.100.7/32 table 51820\n\
             PostUp = ip -6 route add default dev %i table 51820\n\
             PostUp = ip -6 rule add from 2001:db8:5::1/128 table 51820\n\
             PreDown = ip -4 rule del from 198.51.100.7/32 table 51820\n\
             PreDown = ip -4 route del default dev %i table 51820\n\
             PreDown = ip -6 rule del from 2001:db8:5::1/128 table 51820\n\
             PreDown = ip -6 route del default dev %i table 51820\n\
             \n\
             [Peer]\n\
             PublicKey = {}\n\
             Endpoint = 127.0.0.1:51820\n\
             AllowedIPs = 0.0.0.0/0, ::/0\n\
             PersistentKeepalive = 25\n",
            PRIV.to_base64(),
            WgKey([0x22; 32]).to_base64(),
        );
        assert_eq!(render_wg_quick(&spec, &[renter_peer()]), want);

        // Only the families that have addresses get rules.
        let v4_only = InterfaceSpec {
            addresses: vec![net("198.51.100.9/32")],
            ..spec.clone()
        };
        let text = render_wg_quick(&v4_only, &[]);
        assert!(text.contains("ip -4 rule add from 198.51.100.9/32 table 51820"));
        assert!(!text.contains("ip -6"));
    }

    #[test]
    fn full_tunnel_leaves_routing_to_wg_quick() {
        let spec = InterfaceSpec {
            name: "lwr1".into(),
            private_key: PRIV,
            listen_port: None,
            addresses: vec![net("198.51.100.7/32")],
            policy: RoutingPolicy::FullTunnel,
        };
        let text = render_wg_quick(&spec, &[renter_peer()]);
        assert!(!text.contains("Table"));
        assert!(!text.contains("PostUp"));
        assert!(text.contains("AllowedIPs = 0.0.0.0/0, ::/0\n"));
    }

    #[tokio::test]
    async fn files_are_private_and_reapply_is_a_no_op() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wg");
        let t = FileTunnel::new(dir.clone()).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let spec = provider_spec();
        let p = renter_peer();
        t.ensure_interface(&spec).await.unwrap();
        t.add_peer("lwp0", &p).await.unwrap();
        let conf = t.conf_path("lwp0");
        assert_eq!(mode(&conf), 0o600);
        assert_eq!(mode(&t.state_path("lwp0")), 0o600);
        assert_eq!(
            fs::read_to_string(&conf).unwrap(),
            render_wg_quick(&spec, std::slice::from_ref(&p))
        );

        // Every write renames a new file into place, so an unchanged inode proves that
        // re-applying the same state wrote nothing.
        let before = (fs::read(&conf).unwrap(), fs::metadata(&conf).unwrap().ino());
        t.ensure_interface(&spec).await.unwrap();
        t.add_peer("lwp0", &p).await.unwrap();
        t.set_addresses("lwp0", &spec.addresses).await.unwrap();
        t.remove_peer("lwp0", &WgKey([0x77; 32])).await.unwrap();
        let after = (fs::read(&conf).unwrap(), fs::metadata(&conf).unwrap().ino());
        assert_eq!(before, after);

        // A real change rewrites it.
        t.remove_peer("lwp0", &p.public_key).await.unwrap();
        assert_eq!(
            fs::read_to_string(&conf).unwrap(),
            render_wg_quick(&spec, &[])
        );
        // No temporary files are left behind.
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[tokio::test]
    async fn state_survives_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let spec = provider_spec();
        let peers = [
            renter_peer(),
            PeerSpec {
                public_key: WgKey([0x55; 32]),
                endpoint: Some("[::1]:51821".into()),
                allowed_ips: vec![net("198.51.100.40/32")],
                persistent_keepalive: None,
            },
        ];
        let (stats, conf_bytes) = {
            let t = FileTunnel::new(dir.clone()).unwrap();
            t.ensure_interface(&spec).await.unwrap();
            for p in &peers {
                t.add_peer("lwp0", p).await.unwrap();
            }
            (
                t.peer_stats("lwp0").await.unwrap(),
                fs::read(t.conf_path("lwp0")).unwrap(),
            )
        };
        assert_eq!(stats.len(), 2);
        assert!(
            stats
                .iter()
                .all(|s| s.rx_bytes == 0 && s.tx_bytes == 0 && s.last_handshake_unix.is_none())
        );

        let t = FileTunnel::new(dir.clone()).unwrap();
        assert_eq!(t.peer_stats("lwp0").await.unwrap(), stats);
        assert_eq!(fs::read(t.conf_path("lwp0")).unwrap(), conf_bytes);
        // Re-applying after the restart changes nothing either.
        t.ensure_interface(&spec).await.unwrap();
        t.add_peer("lwp0", &peers[0]).await.unwrap();
        assert_eq!(fs::read(t.conf_path("lwp0")).unwrap(), conf_bytes);

        // A lost or stale conf (crash between the two writes) is rebuilt from the state.
        fs::remove_file(t.conf_path("lwp0")).unwrap();
        drop(t);
        let t = FileTunnel::new(dir.clone()).unwrap();
        assert_eq!(fs::read(t.conf_path("lwp0")).unwrap(), conf_bytes);
        assert_eq!(mode(&t.conf_path("lwp0")), 0o600);

        // A removed interface stays removed.
        t.remove_interface("lwp0").await.unwrap();
        drop(t);
        let t = FileTunnel::new(dir).unwrap();
        assert!(matches!(
            t.peer_stats("lwp0").await,
            Err(TunnelError::NoSuchInterface(_))
        ));
    }

    #[tokio::test]
    async fn corrupt_state_is_refused_at_load() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("lw0.state.json"), b"{not json").unwrap();
        assert!(matches!(
            FileTunnel::new(tmp.path().to_path_buf()),
            Err(TunnelError::CorruptState { .. })
        ));

        // A state file naming another interface is refused too.
        let t2 = tempfile::tempdir().unwrap();
        {
            let t = FileTunnel::new(t2.path().to_path_buf()).unwrap();
            t.ensure_interface(&provider_spec()).await.unwrap();
        }
        fs::rename(
            t2.path().join("lwp0.state.json"),
            t2.path().join("other.state.json"),
        )
        .unwrap();
        assert!(matches!(
            FileTunnel::new(t2.path().to_path_buf()),
            Err(TunnelError::CorruptState { .. })
        ));
    }

    #[tokio::test]
    async fn invalid_input_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let t = FileTunnel::new(tmp.path().to_path_buf()).unwrap();
        let mut spec = provider_spec();
        spec.policy = RoutingPolicy::SourceOnly { table: 254 };
        assert!(matches!(
            t.ensure_interface(&spec).await,
            Err(TunnelError::InvalidSpec(_))
        ));
        assert!(!t.conf_path("lwp0").exists());
        assert!(matches!(
            t.remove_interface("../etc").await,
            Err(TunnelError::InvalidName(_))
        ));
    }
}
