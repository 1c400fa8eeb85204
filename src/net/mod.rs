//! The libp2p network layer: discovery on a private Kademlia DHT, the membership handshake,
//! and signed request/response between members.
//!
//! Shape (the libp2p file-sharing example): [`new`] returns a cheap-clone [`NetClient`]
//! handle, a receiver of [`NetEvent`]s and an [`EventLoop`] that owns the swarm. Spawn
//! `event_loop.run(token)`; every client call is a command answered over a oneshot.
//!
//! Trust model:
//! - the transport (Noise XX over TCP) authenticates each remote's PeerId;
//! - the membership handshake ([`membership`]) proves the remote knows the topic secret; the
//!   dialer runs it as soon as a connection is up, and a peer that fails it is refused for the
//!   life of the loop (its connections are closed at once and it leaves the DHT routing table);
//! - every message travels in a signed envelope ([`crate::wire::envelope`]) whose signer must
//!   be the remote PeerId, fresh and not replayed. Only verified messages reach the caller.
//!
//! Nothing a peer sends can stop the loop: bad input is logged and the peer dropped.

pub mod backoff;
pub mod behaviour;
pub mod client;
pub mod codec;
mod dht;
pub mod event_loop;
mod exchange;
pub mod limits;
pub mod membership;
mod peers;
pub mod topic;

use std::time::Duration;

use ed25519_dalek::SigningKey;
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use serde::{Serialize, Serializer};
use tokio::sync::mpsc;

pub use client::NetClient;
pub use event_loop::EventLoop;
pub use topic::Topic;

use crate::wire::envelope::{ReplayGuard, TIME_WINDOW_SECS};
use crate::wire::messages::Message;
use crate::wire::signed::WireError;

/// Default time to wait for a response (and for a membership handshake).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Default Kademlia query timeout on the public DHT: queries cross many slow, distant peers.
pub const DEFAULT_PUBLIC_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Default Kademlia query timeout on a private DHT: every peer is a member, few and close.
pub const DEFAULT_PRIVATE_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The well-known bootstrap peers of the public IPFS ("Amino") DHT, dialed only by a node on
/// the public DHT whose configuration names no bootstrap peer of its own (see
/// [`NetConfig::bootstrap`]). Tests and the simnet never use them.
pub const PUBLIC_BOOTSTRAP_PEERS: &[&str] = &[
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmQCU2EcMqAqQPR2i9bChDtGNJchTbq5TbXJJ16u19uLTa",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmcZf59bWwK5XFi76CZX8cbJ4BhTzzA3gU1ZjYZcYW3dwt",
    "/ip4/104.131.131.82/tcp/4001/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ",
];

/// The well-known public bootstrap peers, parsed.
pub fn public_bootstrap_peers() -> Vec<Multiaddr> {
    PUBLIC_BOOTSTRAP_PEERS
        .iter()
        .map(|a| {
            a.parse()
                .expect("PUBLIC_BOOTSTRAP_PEERS to hold valid multiaddrs")
        })
        .collect()
}

/// Which DHT a node joins (`node.dht` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhtKind {
    /// The public IPFS Kademlia DHT (`/ipfs/kad/1.0.0`): anyone is a DHT peer; only members
    /// (membership handshake) exchange market messages.
    Public,
    /// A private network: every connection is encrypted with a pre-shared key derived from
    /// the cluster secret (libp2p `pnet`) before Noise, so a non-member cannot even finish a
    /// transport handshake; the DHT (`/leasewire/kad/1.0.0`) routes through members only.
    Private,
}

/// Whether the node answers DHT queries of others (server) or only asks (client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DhtRole {
    /// Serve the DHT: the node must be reachable at the addresses it announces.
    Server,
    /// Only query it (a node behind NAT).
    Client,
}

/// Capacity of the command and event channels. Events are dropped (with a warning) rather
/// than stalling the swarm when the consumer falls this far behind.
const CHANNEL_CAPACITY: usize = 256;

/// Network configuration.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/4001` (empty: do not listen).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through; each must end with `/p2p/<PeerId>`. Used as given: the caller
    /// (the node) substitutes [`PUBLIC_BOOTSTRAP_PEERS`] when the configuration asks for it.
    /// Dialed again with [`NetConfig::bootstrap_backoff`] as long as the node is isolated.
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses to announce to the DHT. If empty, every confirmed listen address is
    /// announced instead, which is right on loopback and LANs (Kademlia stores no provider
    /// record for a node without an external address).
    pub external: Vec<Multiaddr>,
    /// The market's topic (DHT key, membership PSK and private-network key).
    pub topic: Topic,
    /// Time to wait for a response or a membership handshake.
    pub request_timeout: Duration,
    /// Public or private DHT.
    pub dht: DhtKind,
    /// DHT server or client.
    pub dht_role: DhtRole,
    /// Time a Kademlia query (provider lookup, announcement) may run; separate from
    /// `request_timeout`.
    pub query_timeout: Duration,
    /// Delays between dials of the bootstrap peers while the node is isolated.
    pub bootstrap_backoff: backoff::Backoff,
    /// Connection bounds, handshake timeout, streams and bans (`[node.limits]`).
    pub limits: limits::NetLimits,
}

impl NetConfig {
    /// A configuration with the given topic, no addresses and the default timeouts: the
    /// public DHT for the public market's topic, a private one otherwise, as a DHT server.
    pub fn new(topic: Topic) -> Self {
        let dht = if topic.is_public {
            DhtKind::Public
        } else {
            DhtKind::Private
        };
        NetConfig {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            external: Vec::new(),
            topic,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            dht,
            dht_role: DhtRole::Server,
            query_timeout: default_query_timeout(dht),
            bootstrap_backoff: backoff::Backoff::default(),
            limits: limits::NetLimits::default(),
        }
    }
}

/// The default Kademlia query timeout of a DHT kind.
pub fn default_query_timeout(dht: DhtKind) -> Duration {
    match dht {
        DhtKind::Public => DEFAULT_PUBLIC_QUERY_TIMEOUT,
        DhtKind::Private => DEFAULT_PRIVATE_QUERY_TIMEOUT,
    }
}

/// Normalises announced addresses: drops a trailing `/p2p/..`, unspecified IPs (`0.0.0.0`,
/// `::`, which nobody can dial) and empty addresses, and removes duplicates, keeping the first
/// occurrence's order.
pub fn dialable_addrs(addrs: impl IntoIterator<Item = Multiaddr>) -> Vec<Multiaddr> {
    use libp2p::multiaddr::Protocol;
    let mut out: Vec<Multiaddr> = Vec::new();
    for mut addr in addrs {
        if let Some(Protocol::P2p(_)) = addr.iter().last() {
            addr.pop();
        }
        let unspecified = addr.iter().any(|p| match p {
            Protocol::Ip4(ip) => ip.is_unspecified(),
            Protocol::Ip6(ip) => ip.is_unspecified(),
            _ => false,
        });
        if addr.is_empty() || unspecified || out.contains(&addr) {
            continue;
        }
        out.push(addr);
    }
    out
}

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The transport could not be built or a listen address could not be bound.
    #[error("transport: {0}")]
    Transport(String),
    /// A configured address is unusable (e.g. a bootstrap address without `/p2p/<PeerId>`).
    #[error("bad address {addr}: {reason}")]
    BadAddress {
        /// The address.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The peer could not be dialed.
    #[error("cannot dial {peer}: {reason}")]
    Dial {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The peer is not a member of our market: it refused our handshake, we refused its, or
    /// no handshake completed within the request timeout.
    #[error("{peer} is not a member of this market")]
    NotMember {
        /// The peer.
        peer: PeerId,
    },
    /// No answer within the request timeout.
    #[error("timed out")]
    Timeout,
    /// An envelope could not be sealed, or a response failed verification.
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    /// The request failed on the way (connection closed, stream error, protocol unsupported).
    #[error("request to {peer} failed: {reason}")]
    Outbound {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The response could not be sent: the requester is gone or the request timed out.
    #[error("response channel closed")]
    ResponseChannelClosed,
    /// A DHT operation failed.
    #[error("dht: {0}")]
    Dht(String),
    /// The request was addressed to ourselves.
    #[error("cannot send a request to ourselves")]
    SelfRequest,
    /// The event loop has stopped.
    #[error("network event loop is not running")]
    Closed,
}

/// Something the network wants the application to know.
#[derive(Debug)]
#[non_exhaustive]
pub enum NetEvent {
    /// A verified request from a member (the envelope's signer is `peer`, fresh, not
    /// replayed). Answer it with [`NetClient::respond`]; dropping `channel` makes the
    /// requester's call fail.
    InboundRequest {
        /// The requester.
        peer: PeerId,
        /// The request (boxed: a `Message` is much larger than the other events).
        message: Box<Message>,
        /// Where the response goes.
        channel: InboundChannel,
    },
    /// A peer passed the membership handshake.
    MemberJoined {
        /// The peer.
        peer: PeerId,
    },
    /// A membership handshake failed; the peer is disconnected and refused from now on.
    MembershipRefused {
        /// The peer.
        peer: PeerId,
        /// True if we refused the peer's handshake, false if it refused ours.
        by_us: bool,
        /// Why, for logs.
        reason: String,
    },
    /// An envelope from `peer` was dropped (bad signature, replay, stale, oversize...) and
    /// the peer disconnected.
    BadMessage {
        /// The peer.
        peer: PeerId,
        /// Why, for logs.
        reason: String,
    },
    /// A peer broke the rules too often (see [`limits::Offenses`]): its connections are refused
    /// until the ban ends.
    PeerBanned {
        /// The peer.
        peer: PeerId,
        /// How long the ban lasts.
        secs: u64,
        /// The last offense, for logs.
        reason: String,
    },
}

/// Where the response to an [`NetEvent::InboundRequest`] goes. Opaque; pass it to
/// [`NetClient::respond`].
#[derive(Debug)]
pub struct InboundChannel(pub(crate) ResponseChannel<Vec<u8>>);

/// A snapshot of the network state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetStatus {
    /// Our PeerId.
    #[serde(serialize_with = "display")]
    pub peer_id: PeerId,
    /// Addresses we listen on.
    #[serde(serialize_with = "display_seq")]
    pub listen_addrs: Vec<Multiaddr>,
    /// Number of peers with at least one open connection.
    pub connected: usize,
    /// Peers that passed the membership handshake (connected or not), sorted.
    #[serde(serialize_with = "display_seq")]
    pub members: Vec<PeerId>,
    /// Peers that refused our handshake, sorted.
    #[serde(serialize_with = "display_seq")]
    pub refused_by: Vec<PeerId>,
    /// Peers whose handshake we refused, sorted.
    #[serde(serialize_with = "display_seq")]
    pub refused: Vec<PeerId>,
    /// True while the node has no connected member and (on the public DHT) no connected peer
    /// at all: it cannot discover anything, and redials its bootstrap peers with backoff.
    pub isolated: bool,
    /// Members with an open connection.
    pub connected_members: usize,
    /// The DHT the node is on.
    pub dht: DhtKind,
    /// Whether it serves the DHT.
    pub dht_role: DhtRole,
    /// Incoming connections that failed before a transport handshake completed (on a private
    /// network: mostly non-members without the network key).
    pub rejected_connections: u64,
    /// True while we provide and our last announce reached no DHT peer: the node announces
    /// again as soon as a peer is routable (and no longer counts on its timed re-announce).
    pub announce_pending: bool,
    /// Peers banned now for repeated offenses (malformed frames, bad envelopes).
    pub banned: usize,
}

// PeerId and Multiaddr serialize as their usual text forms (libp2p's serde feature is off).
fn display<S: Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn display_seq<S: Serializer, T: std::fmt::Display>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| x.to_string()))
}

/// The libp2p keypair of a node key (the same ed25519 key, so PeerIds match
/// [`crate::wire::signed::peer_id_of`]).
pub fn keypair_of(key: &SigningKey) -> libp2p::identity::Keypair {
    libp2p::identity::Keypair::ed25519_from_bytes(key.to_bytes())
        .expect("a 32-byte ed25519 secret to be a valid libp2p ed25519 key")
}

/// Builds the network: binds the listen addresses, dials the bootstrap peers, and returns the
/// client handle, the event receiver and the event loop (spawn [`EventLoop::run`]).
///
/// # Errors
/// [`NetError::Transport`] if the transport cannot be built or an address cannot be listened
/// on; [`NetError::BadAddress`] for a bootstrap address without a `/p2p/<PeerId>` suffix.
pub fn new(
    key: &SigningKey,
    cfg: NetConfig,
) -> Result<(NetClient, mpsc::Receiver<NetEvent>, EventLoop), NetError> {
    let keypair = keypair_of(key);
    let swarm = behaviour::build_swarm(keypair, &cfg)?;
    let (cmd_tx, cmd_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (event_tx, event_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let local = *swarm.local_peer_id();
    let event_loop = EventLoop::new(
        swarm,
        cmd_rx,
        event_tx,
        cfg,
        ReplayGuard::new(TIME_WINDOW_SECS),
    )?;
    let client = NetClient::new(cmd_tx, key.clone(), local);
    Ok((client, event_rx, event_loop))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn dialable_addrs_dedup_and_drop_unspecified() {
        let peer = PeerId::random();
        let got = dialable_addrs([
            ma("/ip4/127.0.0.1/tcp/4710"),
            ma(&format!("/ip4/127.0.0.1/tcp/4710/p2p/{peer}")),
            ma("/ip4/0.0.0.0/tcp/4710"),
            ma("/ip6/::/tcp/4710"),
            ma("/ip4/192.0.2.1/tcp/4710"),
            ma("/dns4/example.org/tcp/4710"),
            ma("/ip4/127.0.0.1/tcp/4710"),
            ma(&format!("/p2p/{peer}")),
        ]);
        assert_eq!(
            got,
            vec![
                ma("/ip4/127.0.0.1/tcp/4710"),
                ma("/ip4/192.0.2.1/tcp/4710"),
                ma("/dns4/example.org/tcp/4710"),
            ]
        );
    }

    #[test]
    fn public_bootstrap_peers_parse_and_name_their_peer() {
        let peers = public_bootstrap_peers();
        assert_eq!(peers.len(), PUBLIC_BOOTSTRAP_PEERS.len());
        for p in peers {
            assert!(
                matches!(p.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn default_config_follows_the_topic() {
        let public = topic::derive(topic::DEFAULT_PUBLIC_SECRET).unwrap();
        let cfg = NetConfig::new(public);
        assert_eq!(cfg.dht, DhtKind::Public);
        assert_eq!(cfg.query_timeout, DEFAULT_PUBLIC_QUERY_TIMEOUT);
        // Used as given: NetConfig never substitutes the public list itself.
        assert!(cfg.bootstrap.is_empty());
        let cluster = topic::derive("test-cluster-secret").unwrap();
        let cfg = NetConfig::new(cluster);
        assert_eq!(cfg.dht, DhtKind::Private);
        assert_eq!(cfg.query_timeout, DEFAULT_PRIVATE_QUERY_TIMEOUT);
        assert_ne!(cfg.query_timeout, cfg.request_timeout);
    }
}
