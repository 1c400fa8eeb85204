//! The behavioural contract of [`Tunnel`], as a check any backend can run against itself.
//!
//! ```no_run
//! # async fn f(t: &dyn leasewire::tunnel::Tunnel) {
//! leasewire::tunnel::testing::conformance(t).await; // panics on the first violation
//! # }
//! ```
//!
//! Uses documentation prefixes (198.51.100.0/24, 2001:db8::/32) and loopback endpoints only.

use std::time::Duration;

use ipnet::IpNet;

use super::{InterfaceSpec, PeerSpec, PeerStats, ProbeSpec, RoutingPolicy, Tunnel, TunnelError};
use crate::types::WgKey;

/// Interface name used by [`conformance`].
pub const CONFORMANCE_IFACE: &str = "lwconf0";

/// Runs [`conformance_on`] with the interface [`CONFORMANCE_IFACE`].
pub async fn conformance(t: &dyn Tunnel) {
    conformance_on(t, CONFORMANCE_IFACE).await;
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test prefixes to parse")
}

fn peer(key: u8, endpoint: Option<&str>, ips: &[&str]) -> PeerSpec {
    PeerSpec {
        public_key: WgKey([key; 32]),
        endpoint: endpoint.map(str::to_owned),
        allowed_ips: ips.iter().map(|s| net(s)).collect(),
        persistent_keepalive: Some(25),
    }
}

/// The stats as (key, endpoint, allowed IPs), the part every backend must report.
fn view(stats: &[PeerStats]) -> Vec<(WgKey, Option<String>, Vec<IpNet>)> {
    stats
        .iter()
        .map(|s| (s.public_key, s.endpoint.clone(), s.allowed_ips.clone()))
        .collect()
}

fn expect(peers: &[&PeerSpec]) -> Vec<(WgKey, Option<String>, Vec<IpNet>)> {
    peers
        .iter()
        .map(|p| (p.public_key, p.endpoint.clone(), p.allowed_ips.clone()))
        .collect()
}

/// Checks the [`Tunnel`] contract on interface `iface`, which it creates and removes again:
/// errors for unknown interfaces and invalid input, idempotent ensure/add/remove, peer
/// replacement, allowed-IP ownership moving between peers, stats listing, and interface
/// removal. Panics with a description on the first violation.
pub async fn conformance_on(t: &dyn Tunnel, iface: &str) {
    let kind = t.kind();
    assert!(!kind.is_empty(), "kind() must name the backend");

    // Removing an absent interface is fine, and leaves a clean slate.
    t.remove_interface(iface)
        .await
        .expect("removing an absent interface to be Ok");

    let a = peer(0xa1, None, &["198.51.100.10/32", "2001:db8:a::/64"]);
    assert!(
        matches!(
            t.add_peer(iface, &a).await,
            Err(TunnelError::NoSuchInterface(_))
        ),
        "{kind}: add_peer before ensure_interface must fail with NoSuchInterface"
    );
    assert!(
        matches!(
            t.peer_stats(iface).await,
            Err(TunnelError::NoSuchInterface(_))
        ),
        "{kind}: peer_stats on an absent interface must fail with NoSuchInterface"
    );

    let mut spec = InterfaceSpec {
        name: iface.to_owned(),
        private_key: WgKey([0x11; 32]),
        listen_port: Some(51820),
        addresses: vec![net("198.51.100.1/24")],
        policy: RoutingPolicy::Provider,
    };
    let bad_name = InterfaceSpec {
        name: "no spaces allowed".into(),
        ..spec.clone()
    };
    assert!(
        matches!(
            t.ensure_interface(&bad_name).await,
            Err(TunnelError::InvalidName(_))
        ),
        "{kind}: an invalid interface name must be refused"
    );

    t.ensure_interface(&spec).await.expect("ensure_interface");
    t.ensure_interface(&spec)
        .await
        .expect("ensure_interface to be idempotent");
    assert!(
        t.peer_stats(iface).await.expect("peer_stats").is_empty(),
        "{kind}: a new interface has no peers"
    );

    // Adding the same peer twice leaves one peer.
    t.add_peer(iface, &a).await.expect("add_peer a");
    t.add_peer(iface, &a).await.expect("add_peer a again");
    assert_eq!(
        view(&t.peer_stats(iface).await.expect("peer_stats")),
        expect(&[&a]),
        "{kind}: re-adding a peer must not duplicate it"
    );

    let b = peer(0xb2, Some("127.0.0.1:51821"), &["198.51.100.20/32"]);
    t.add_peer(iface, &b).await.expect("add_peer b");
    assert_eq!(
        view(&t.peer_stats(iface).await.expect("peer_stats")),
        expect(&[&a, &b]),
        "{kind}: two peers, in the order added"
    );

    // Replacing a peer sets exactly the new endpoint and allowed IPs.
    let a2 = peer(0xa1, Some("[::1]:51822"), &["198.51.100.11/32"]);
    t.add_peer(iface, &a2).await.expect("replace a");
    assert_eq!(
        view(&t.peer_stats(iface).await.expect("peer_stats")),
        expect(&[&a2, &b]),
        "{kind}: add_peer with a known key replaces that peer in place"
    );

    // As in WireGuard, an allowed IP moves to the peer that claims it last.
    let c = peer(0xc3, None, &["198.51.100.20/32", "198.51.100.30/32"]);
    t.add_peer(iface, &c).await.expect("add_peer c");
    let b_without = PeerSpec {
        allowed_ips: Vec::new(),
        ..b.clone()
    };
    assert_eq!(
        view(&t.peer_stats(iface).await.expect("peer_stats")),
        expect(&[&a2, &b_without, &c]),
        "{kind}: an allowed IP claimed by a new peer leaves the old one"
    );

    // Invalid peers are refused and change nothing.
    let evil = peer(0xee, Some("127.0.0.1:1\nPostUp = true"), &[]);
    assert!(
        matches!(
            t.add_peer(iface, &evil).await,
            Err(TunnelError::InvalidSpec(_))
        ),
        "{kind}: an endpoint with a newline must be refused"
    );
    assert_eq!(
        t.peer_stats(iface).await.expect("peer_stats").len(),
        3,
        "{kind}: a refused peer must not be added"
    );

    // Removal is idempotent, and removing an unknown key is Ok.
    t.remove_peer(iface, &b.public_key)
        .await
        .expect("remove_peer b");
    t.remove_peer(iface, &b.public_key)
        .await
        .expect("remove_peer b again");
    t.remove_peer(iface, &WgKey([0x99; 32]))
        .await
        .expect("remove_peer of an unknown key");
    assert!(
        matches!(
            t.remove_peer("lwnosuch9", &a.public_key).await,
            Err(TunnelError::NoSuchInterface(_))
        ),
        "{kind}: remove_peer on an absent interface must fail with NoSuchInterface"
    );
    assert_eq!(
        view(&t.peer_stats(iface).await.expect("peer_stats")),
        expect(&[&a2, &c]),
        "{kind}: the removed peer is gone, the others stay"
    );
    for s in t.peer_stats(iface).await.expect("peer_stats") {
        assert!(
            s.rx_bytes == 0 && s.last_handshake_unix.is_none(),
            "{kind}: nothing listens at the test endpoints, so no handshake can have completed"
        );
    }

    check_verify(t, iface, &a2).await;

    // Addresses can be replaced; re-ensuring the interface keeps its peers.
    let addrs = [net("198.51.100.2/24"), net("2001:db8::2/64")];
    t.set_addresses(iface, &addrs).await.expect("set_addresses");
    t.set_addresses(iface, &addrs)
        .await
        .expect("set_addresses to be idempotent");
    spec.addresses = addrs.to_vec();
    t.ensure_interface(&spec).await.expect("re-ensure");
    assert_eq!(
        t.peer_stats(iface).await.expect("peer_stats").len(),
        2,
        "{kind}: ensure_interface must keep existing peers"
    );

    t.remove_interface(iface).await.expect("remove_interface");
    t.remove_interface(iface)
        .await
        .expect("remove_interface to be idempotent");
    assert!(
        matches!(
            t.peer_stats(iface).await,
            Err(TunnelError::NoSuchInterface(_))
        ),
        "{kind}: a removed interface is gone"
    );
    // A removed interface starts empty when created again.
    t.ensure_interface(&spec)
        .await
        .expect("ensure after remove");
    assert!(
        t.peer_stats(iface).await.expect("peer_stats").is_empty(),
        "{kind}: a re-created interface has no peers"
    );
    t.remove_interface(iface).await.expect("final cleanup");
}

/// The [`Tunnel::verify`] part of the contract, on `iface` holding the provider-side peer
/// `peer` whose endpoint nobody answers: a backend either cannot verify at all
/// ([`TunnelError::Unsupported`]), or it fails for unknown interfaces and peers and never calls
/// a tunnel without a handshake and a probe reply verified.
async fn check_verify(t: &dyn Tunnel, iface: &str, peer: &PeerSpec) {
    let kind = t.kind();
    let probe = ProbeSpec {
        source: "198.51.100.1".parse().expect("literal"),
        target: peer.allowed_ips[0].addr(),
        timeout: Duration::from_millis(300),
        attempts: 2,
    };
    match t.verify("lwnosuch9", &peer.public_key, &probe).await {
        Err(TunnelError::NoSuchInterface(_) | TunnelError::Unsupported(_)) => {}
        other => panic!("{kind}: verify on an absent interface gave {other:?}"),
    }
    match t.verify(iface, &WgKey([0x98; 32]), &probe).await {
        Err(_) => {}
        Ok(check) => panic!("{kind}: verify of an unknown peer gave {check:?}"),
    }
    match t.verify(iface, &peer.public_key, &probe).await {
        Err(TunnelError::Unsupported(_)) => {}
        Ok(check) => {
            assert_eq!(
                check.last_handshake, None,
                "{kind}: no handshake can have completed"
            );
            assert_eq!(
                check.probe_rtt, None,
                "{kind}: nobody answers behind the peer"
            );
            assert!(
                !check.verified(Duration::from_secs(3600)),
                "{kind}: {check:?} must not be verified"
            );
        }
        Err(e) => panic!("{kind}: verify of a configured peer failed: {e}"),
    }
}

/// A tunnel backend for tests that keeps its state in another backend (normally the file
/// backend) but can "verify" tunnels as the WireGuard backend does, with the result the test
/// chooses: all tunnels answer while [`VerifyingTunnel::healthy`] is set, except those to
/// peers marked dead with [`VerifyingTunnel::set_peer_dead`]. A verified check reports a
/// handshake 5 s old and a 2 ms probe round trip. [`VerifyingTunnel::set_remove_fails`] makes
/// removing one peer fail, for tests of passes that must go on after a failing item;
/// [`VerifyingTunnel::add_fails`] makes adding any peer fail as the kernel does when out of
/// file descriptors (`EMFILE`).
pub struct VerifyingTunnel {
    /// The backend holding interfaces and peers.
    pub inner: std::sync::Arc<dyn Tunnel>,
    /// While false, no tunnel answers.
    pub healthy: std::sync::atomic::AtomicBool,
    /// How many verifications ran.
    pub checks: std::sync::atomic::AtomicU32,
    /// Provider peers (WireGuard keys) whose tunnels do not answer.
    dead: std::sync::Mutex<std::collections::HashSet<WgKey>>,
    /// Peers whose `remove_peer` fails.
    stuck: std::sync::Mutex<std::collections::HashSet<WgKey>>,
    /// While set, every `add_peer` fails with "Too many open files".
    pub add_fails: std::sync::atomic::AtomicBool,
}

impl VerifyingTunnel {
    /// A healthy double over `inner`.
    pub fn new(inner: std::sync::Arc<dyn Tunnel>) -> VerifyingTunnel {
        VerifyingTunnel {
            inner,
            healthy: std::sync::atomic::AtomicBool::new(true),
            checks: Default::default(),
            dead: Default::default(),
            stuck: Default::default(),
            add_fails: Default::default(),
        }
    }

    /// Makes `remove_peer` of the peer `key` fail (`true`) or work again.
    pub fn set_remove_fails(&self, key: WgKey, fails: bool) {
        let mut set = self.stuck.lock().expect("stuck-peer set not poisoned");
        if fails {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }

    /// Makes tunnels to the peer `key` fail verification (`true`) or answer again.
    pub fn set_peer_dead(&self, key: WgKey, dead: bool) {
        let mut set = self.dead.lock().expect("dead-peer set not poisoned");
        if dead {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }
}

#[async_trait::async_trait]
impl Tunnel for VerifyingTunnel {
    fn kind(&self) -> &'static str {
        "verifying-test"
    }
    async fn ensure_interface(&self, spec: &InterfaceSpec) -> Result<(), TunnelError> {
        self.inner.ensure_interface(spec).await
    }
    async fn add_peer(&self, iface: &str, peer: &PeerSpec) -> Result<(), TunnelError> {
        if self.add_fails.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(TunnelError::Io {
                context: format!("adding a peer to {iface}"),
                source: std::io::Error::from_raw_os_error(libc::EMFILE),
            });
        }
        self.inner.add_peer(iface, peer).await
    }
    async fn remove_peer(&self, iface: &str, key: &WgKey) -> Result<(), TunnelError> {
        if self
            .stuck
            .lock()
            .expect("stuck-peer set not poisoned")
            .contains(key)
        {
            return Err(TunnelError::Unsupported(
                "removing this peer fails in this test".into(),
            ));
        }
        self.inner.remove_peer(iface, key).await
    }
    async fn set_addresses(&self, iface: &str, addrs: &[IpNet]) -> Result<(), TunnelError> {
        self.inner.set_addresses(iface, addrs).await
    }
    async fn peer_stats(&self, iface: &str) -> Result<Vec<PeerStats>, TunnelError> {
        self.inner.peer_stats(iface).await
    }
    async fn remove_interface(&self, iface: &str) -> Result<(), TunnelError> {
        self.inner.remove_interface(iface).await
    }
    async fn verify(
        &self,
        iface: &str,
        peer: &WgKey,
        _probe: &ProbeSpec,
    ) -> Result<super::TunnelCheck, TunnelError> {
        use std::sync::atomic::Ordering;
        self.inner.peer_stats(iface).await?;
        self.checks.fetch_add(1, Ordering::SeqCst);
        let dead = self
            .dead
            .lock()
            .expect("dead-peer set not poisoned")
            .contains(peer);
        // The check is relative (handshake 5 s before "now"), so the wall clock is fine here.
        let now = crate::types::now_unix();
        let rtt =
            (self.healthy.load(Ordering::SeqCst) && !dead).then_some(Duration::from_millis(2));
        Ok(super::TunnelCheck::at(Some(now - 5), now, rtt))
    }
}
