//! The tunnel seam: the [`Tunnel`] trait every WireGuard backend implements, the plain data it
//! takes ([`InterfaceSpec`], [`PeerSpec`]) and returns ([`PeerStats`]), and its error type.
//!
//! Backends:
//! - [`file::FileTunnel`]: writes wg-quick files and persists state; touches no interface.
//!   Used by tests and simnet, and by operators who bring interfaces up themselves.
//! - [`wireguard::WireGuardTunnel`]: drives real interfaces through wireguard-control (kernel
//!   WireGuard where the kernel has it, else userspace `wireguard-go`), with addresses, routes
//!   and rules set natively over rtnetlink.
//!
//! [`testing::conformance`] is the behavioural contract: every backend must pass it.
//!
//! Everything here may end up in a wg-quick file whose `PostUp` lines are run by a shell, and
//! some of it (a provider's endpoint, prefixes) comes from remote peers. [`InterfaceSpec::validate`]
//! and [`PeerSpec::validate`] therefore reject anything that could inject text into such a file;
//! backends call them before acting.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::types::WgKey;

pub mod config;
pub mod file;
pub mod probe;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod wireguard;

pub use file::{FileTunnel, render_wg_quick};
pub use wireguard::{WgBackend, WireGuardTunnel};

/// Longest interface name Linux accepts (`IFNAMSIZ` - 1).
pub const MAX_IFACE_NAME_LEN: usize = 15;

/// A WireGuard backend: creates interfaces and manages their peers.
///
/// Contract shared by all backends (checked by [`testing::conformance`]):
/// - every operation is idempotent: repeating a call with the same arguments leaves the same
///   state as calling it once;
/// - operations on an interface other than [`Tunnel::ensure_interface`] and
///   [`Tunnel::remove_interface`] fail with [`TunnelError::NoSuchInterface`] when the interface
///   was not ensured first;
/// - names are checked with [`validate_iface_name`], specs with their `validate` methods, before
///   anything is changed, so an invalid request leaves the state untouched.
#[async_trait::async_trait]
pub trait Tunnel: Send + Sync + 'static {
    /// Backend name for logs ("file", later "wireguard").
    fn kind(&self) -> &'static str;

    /// Creates or updates the interface: private key, listen port, addresses, routing policy.
    /// Idempotent; peers already on the interface are kept.
    ///
    /// Errors: [`TunnelError::InvalidName`], [`TunnelError::InvalidSpec`], or a backend failure.
    async fn ensure_interface(&self, spec: &InterfaceSpec) -> Result<(), TunnelError>;

    /// Adds the peer, or replaces the peer with the same public key (its endpoint, allowed IPs
    /// and keepalive become exactly those of `peer`). Idempotent.
    ///
    /// As in WireGuard, an allowed IP belongs to one peer only: a prefix listed by `peer` is
    /// removed from any other peer that listed exactly the same prefix.
    ///
    /// Errors: [`TunnelError::NoSuchInterface`], [`TunnelError::InvalidSpec`], backend failures.
    async fn add_peer(&self, iface: &str, peer: &PeerSpec) -> Result<(), TunnelError>;

    /// Removes a peer; removing an absent peer is Ok.
    ///
    /// Errors: [`TunnelError::NoSuchInterface`] or a backend failure.
    async fn remove_peer(&self, iface: &str, public_key: &WgKey) -> Result<(), TunnelError>;

    /// Replaces the interface addresses.
    ///
    /// Errors: [`TunnelError::NoSuchInterface`], [`TunnelError::InvalidSpec`], backend failures.
    async fn set_addresses(&self, iface: &str, addrs: &[IpNet]) -> Result<(), TunnelError>;

    /// Per-peer counters and last handshake (None where the backend cannot know), one entry per
    /// configured peer, in the order the peers were first added.
    ///
    /// Errors: [`TunnelError::NoSuchInterface`] or a backend failure.
    async fn peer_stats(&self, iface: &str) -> Result<Vec<PeerStats>, TunnelError>;

    /// Tears the interface down and removes what the backend created; absent is Ok.
    ///
    /// Errors: [`TunnelError::InvalidName`] or a backend failure.
    async fn remove_interface(&self, iface: &str) -> Result<(), TunnelError>;

    /// Checks the tunnel to `peer` on `iface`: its last handshake (from
    /// [`Tunnel::peer_stats`]) and an ICMP echo through it (see [`ProbeSpec`]).
    ///
    /// A missing reply is not an error: it is reported as `probe_rtt: None`, and
    /// [`TunnelCheck::verified`] then says false.
    ///
    /// Backends that cannot observe a real tunnel (the file backend) keep this default and
    /// return [`TunnelError::Unsupported`]; callers then treat the tunnel as unverified.
    ///
    /// Errors: [`TunnelError::Unsupported`], [`TunnelError::NoSuchInterface`],
    /// [`TunnelError::InvalidSpec`] for a bad probe, or a socket/backend failure (for example a
    /// raw socket refused without `CAP_NET_RAW`).
    async fn verify(
        &self,
        iface: &str,
        peer: &WgKey,
        probe: &ProbeSpec,
    ) -> Result<TunnelCheck, TunnelError> {
        let _ = (iface, peer, probe);
        Err(TunnelError::Unsupported(format!(
            "the {} tunnel backend cannot verify tunnels",
            self.kind()
        )))
    }
}

/// What to probe: an ICMP echo from `source` (a leased address on the renter's interface) to
/// `target` (the provider's endpoint address), sent out through the interface
/// (`SO_BINDTODEVICE`), so a reply proves the tunnel carries traffic both ways.
///
/// `source` and `target` must be of the same address family; `attempts` echoes (at least one)
/// are spread across `timeout`, and the first matching reply ends the probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSpec {
    /// Address the echo is sent from: a leased address on the interface.
    pub source: IpAddr,
    /// Address the echo is sent to: the provider's endpoint address (reachable only back
    /// through the tunnel when sent from `source` on the interface).
    pub target: IpAddr,
    /// Total time to wait for a reply, across all attempts.
    pub timeout: Duration,
    /// How many echoes to send, evenly spaced across `timeout` (0 is treated as 1).
    pub attempts: u32,
}

/// Result of verifying a tunnel with [`Tunnel::verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelCheck {
    /// Unix time (seconds) of the peer's last completed handshake; `None` if never.
    pub last_handshake: Option<u64>,
    /// Seconds between the last handshake and the check; `None` if never.
    pub handshake_age_secs: Option<u64>,
    /// Round-trip time of the first probe reply; `None` = no reply within the timeout.
    pub probe_rtt: Option<Duration>,
}

impl TunnelCheck {
    /// Builds a check from the peer's last handshake (unix seconds), the time of the check
    /// (unix seconds) and the probe result. A handshake "in the future" (clock steps) counts
    /// as age 0.
    pub fn at(last_handshake: Option<u64>, now_unix: u64, probe_rtt: Option<Duration>) -> Self {
        TunnelCheck {
            last_handshake,
            handshake_age_secs: last_handshake.map(|t| now_unix.saturating_sub(t)),
            probe_rtt,
        }
    }

    /// Verified = a handshake no older than `max_handshake_age` AND a probe reply.
    pub fn verified(&self, max_handshake_age: Duration) -> bool {
        self.reason(max_handshake_age).is_none()
    }

    /// Why the tunnel is not verified, as one sentence; `None` when [`TunnelCheck::verified`].
    pub fn reason(&self, max_handshake_age: Duration) -> Option<String> {
        let max = max_handshake_age.as_secs();
        match self.handshake_age_secs {
            None => return Some("no WireGuard handshake with the peer yet".to_owned()),
            Some(age) if age > max => {
                return Some(format!(
                    "last WireGuard handshake was {age} s ago (more than {max} s)"
                ));
            }
            Some(_) => {}
        }
        if self.probe_rtt.is_none() {
            return Some("no reply to the ICMP probe through the tunnel".to_owned());
        }
        None
    }
}

/// The desired state of one WireGuard interface (peers excluded).
///
/// Holds the private key: its `Debug` output hides it (see [`WgKey`]), and anything persisting
/// it must use owner-only file modes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceSpec {
    /// Interface name, checked by [`validate_iface_name`].
    pub name: String,
    /// The interface's WireGuard private key.
    pub private_key: WgKey,
    /// UDP listen port; `None` lets the kernel pick (renters).
    pub listen_port: Option<u16>,
    /// Addresses assigned to the interface (for a renter: the leased addresses).
    pub addresses: Vec<IpNet>,
    /// Which traffic is routed into the interface.
    pub policy: RoutingPolicy,
}

/// Which traffic a backend routes into the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RoutingPolicy {
    /// Provider: routes for the peers' allowed IPs point into the interface.
    Provider,
    /// Renter: only traffic whose source is a leased address uses the tunnel (source policy
    /// routing through routing table `table`); the host's other traffic is untouched.
    SourceOnly {
        /// Routing table number; 1..=252 or above 255 (253-255 are Linux's default, main and
        /// local tables, 0 is "unspecified").
        table: u32,
    },
    /// Renter: everything goes through the tunnel.
    FullTunnel,
}

/// One WireGuard peer of an interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSpec {
    /// The peer's public key: its identity on the interface.
    pub public_key: WgKey,
    /// `host:port` or `[v6]:port` to send to; `None` waits for the peer to connect (provider).
    pub endpoint: Option<String>,
    /// Source addresses accepted from, and destinations routed to, this peer.
    pub allowed_ips: Vec<IpNet>,
    /// Keepalive interval in seconds; `None` or `Some(0)` means off.
    pub persistent_keepalive: Option<u16>,
}

/// What a backend knows about one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStats {
    /// The peer's public key.
    pub public_key: WgKey,
    /// Unix time (seconds) of the last completed handshake; `None` if never or unknown.
    pub last_handshake_unix: Option<u64>,
    /// Bytes received from the peer (0 where the backend cannot observe traffic).
    pub rx_bytes: u64,
    /// Bytes sent to the peer (0 where the backend cannot observe traffic).
    pub tx_bytes: u64,
    /// The peer's current endpoint, if known.
    pub endpoint: Option<String>,
    /// The peer's allowed IPs.
    pub allowed_ips: Vec<IpNet>,
}

/// Errors from tunnel backends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// A file or device operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The interface was not created with [`Tunnel::ensure_interface`].
    #[error("no such tunnel interface: {0}")]
    NoSuchInterface(String),
    /// The interface name is not a valid Linux interface name.
    #[error("invalid interface name {0:?}: want 1 to 15 bytes of [A-Za-z0-9_=+.-]")]
    InvalidName(String),
    /// An interface or peer spec is malformed (bad endpoint, routing table, ...).
    #[error("invalid tunnel spec: {0}")]
    InvalidSpec(String),
    /// Persisted backend state could not be read back.
    #[error("corrupt tunnel state in {path}: {reason}")]
    CorruptState {
        /// The state file.
        path: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The backend (kernel, userspace daemon, ...) refused or failed.
    #[error("tunnel backend: {0}")]
    Backend(String),
    /// The backend cannot do this operation (the file backend cannot verify a tunnel).
    #[error("unsupported by this tunnel backend: {0}")]
    Unsupported(String),
}

impl TunnelError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TunnelError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Checks a Linux interface name: 1..=15 bytes of `[A-Za-z0-9_=+.-]`, not `.` or `..`.
///
/// Stricter than the kernel (which takes any byte but `/`, `:`, NUL and whitespace) because
/// names end up in file names and wg-quick configs.
///
/// Errors: [`TunnelError::InvalidName`].
pub fn validate_iface_name(name: &str) -> Result<(), TunnelError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFACE_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'=' | b'+' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TunnelError::InvalidName(name.to_owned()))
    }
}

/// Checks a WireGuard endpoint: `host:port` (host a DNS name or IPv4 address) or `[v6]:port`,
/// with a non-zero port.
///
/// Endpoints come from remote providers and are written into wg-quick files, so anything beyond
/// these characters (spaces, newlines, `#`, `=`) is refused rather than escaped.
///
/// Errors: [`TunnelError::InvalidSpec`].
pub fn validate_endpoint(endpoint: &str) -> Result<(), TunnelError> {
    let bad = |why: &str| TunnelError::InvalidSpec(format!("endpoint {endpoint:?}: {why}"));
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| bad("missing :port"))?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 && !port.starts_with('+') => {}
        _ => return Err(bad("bad port")),
    }
    if let Some(inner) = host.strip_prefix('[') {
        let v6 = inner.strip_suffix(']').ok_or_else(|| bad("unclosed ["))?;
        return match v6.parse::<std::net::Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(bad("bad IPv6 address")),
        };
    }
    if host.parse::<IpAddr>().is_ok() {
        // A bare IPv6 address without brackets has a ':' in the host part and cannot be told
        // apart from its port; only IPv4 gets here.
        return if host.contains(':') {
            Err(bad("IPv6 addresses need brackets"))
        } else {
            Ok(())
        };
    }
    let dns_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if dns_ok {
        Ok(())
    } else {
        Err(bad("bad host name"))
    }
}

impl InterfaceSpec {
    /// Checks the name and the routing policy.
    ///
    /// Errors: [`TunnelError::InvalidName`], or [`TunnelError::InvalidSpec`] for a reserved or
    /// zero routing table.
    pub fn validate(&self) -> Result<(), TunnelError> {
        validate_iface_name(&self.name)?;
        if let RoutingPolicy::SourceOnly { table } = self.policy
            && (table == 0 || (253..=255).contains(&table))
        {
            return Err(TunnelError::InvalidSpec(format!(
                "routing table {table} is reserved (0, 253 default, 254 main, 255 local)"
            )));
        }
        Ok(())
    }
}

impl PeerSpec {
    /// Checks the endpoint (see [`validate_endpoint`]).
    ///
    /// Errors: [`TunnelError::InvalidSpec`].
    pub fn validate(&self) -> Result<(), TunnelError> {
        if let Some(ep) = &self.endpoint {
            validate_endpoint(ep)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iface_names() {
        for ok in ["lw0", "wg-renter.1", "a", "abcdefghijklmno", "x_y=z+1"] {
            assert!(validate_iface_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "abcdefghijklmnop",
            "a b",
            "a/b",
            "..",
            ".",
            "lw0\n",
            "é",
            "a:b",
        ] {
            assert!(
                matches!(validate_iface_name(bad), Err(TunnelError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn endpoints() {
        for ok in [
            "127.0.0.1:51820",
            "[::1]:51820",
            "[2001:db8::7]:1",
            "vpn.example.net:51820",
            "localhost:9",
        ] {
            assert!(validate_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "::1:51820",
            "[::1:51820",
            "host name:1",
            "h:1\nPostUp = rm -rf /",
            "a..b:1",
            "-a.b:1",
            ":1",
            "x:+1",
            "x#y:1",
        ] {
            assert!(
                matches!(validate_endpoint(bad), Err(TunnelError::InvalidSpec(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn check_verdicts_and_reasons() {
        let max = Duration::from_secs(180);
        let rtt = Some(Duration::from_millis(3));
        let ok = TunnelCheck::at(Some(1_000), 1_100, rtt);
        assert_eq!(ok.handshake_age_secs, Some(100));
        assert!(ok.verified(max));
        assert_eq!(ok.reason(max), None);

        // Exactly at the limit still counts; one second more does not.
        assert!(TunnelCheck::at(Some(1_000), 1_180, rtt).verified(max));
        let stale = TunnelCheck::at(Some(1_000), 1_181, rtt);
        assert!(!stale.verified(max));
        assert!(stale.reason(max).unwrap().contains("181 s ago"));

        let never = TunnelCheck::at(None, 1_100, rtt);
        assert_eq!(never.handshake_age_secs, None);
        assert!(
            never
                .reason(max)
                .unwrap()
                .contains("no WireGuard handshake")
        );

        let silent = TunnelCheck::at(Some(1_000), 1_001, None);
        assert!(!silent.verified(max));
        assert!(silent.reason(max).unwrap().contains("probe"));

        // A clock that stepped back makes the handshake "from the future": age 0, not a wrap.
        assert_eq!(
            TunnelCheck::at(Some(2_000), 1_000, rtt).handshake_age_secs,
            Some(0)
        );
    }

    #[tokio::test]
    async fn file_backend_cannot_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let t = FileTunnel::new(tmp.path().join("wg")).unwrap();
        let probe = ProbeSpec {
            source: "198.51.100.2".parse().unwrap(),
            target: "192.0.2.1".parse().unwrap(),
            timeout: Duration::from_secs(1),
            attempts: 1,
        };
        let err = t.verify("lw0", &WgKey([2; 32]), &probe).await.unwrap_err();
        assert!(matches!(err, TunnelError::Unsupported(_)), "{err}");
        assert!(err.to_string().contains("file"), "{err}");
    }

    #[test]
    fn reserved_tables_are_refused() {
        let mut spec = InterfaceSpec {
            name: "lw0".into(),
            private_key: WgKey([1; 32]),
            listen_port: None,
            addresses: vec![],
            policy: RoutingPolicy::SourceOnly { table: 254 },
        };
        assert!(matches!(spec.validate(), Err(TunnelError::InvalidSpec(_))));
        spec.policy = RoutingPolicy::SourceOnly { table: 0 };
        assert!(spec.validate().is_err());
        spec.policy = RoutingPolicy::SourceOnly { table: 51820 };
        assert!(spec.validate().is_ok());
        spec.name = "bad name".into();
        assert!(matches!(spec.validate(), Err(TunnelError::InvalidName(_))));
    }
}
