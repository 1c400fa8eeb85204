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

pub mod behaviour;
pub mod client;
pub mod codec;
mod dht;
pub mod event_loop;
mod exchange;
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

/// Capacity of the command and event channels. Events are dropped (with a warning) rather
/// than stalling the swarm when the consumer falls this far behind.
const CHANNEL_CAPACITY: usize = 256;

/// Network configuration.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/4001` (empty: do not listen).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through; each must end with `/p2p/<PeerId>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses to announce to the DHT. If empty, every confirmed listen address is
    /// announced instead, which is right on loopback and LANs (Kademlia stores no provider
    /// record for a node without an external address).
    pub external: Vec<Multiaddr>,
    /// The market's topic (DHT key and membership PSK).
    pub topic: Topic,
    /// Time to wait for a response or a membership handshake.
    pub request_timeout: Duration,
}

impl NetConfig {
    /// A configuration with the given topic, no addresses and the default timeout.
    pub fn new(topic: Topic) -> Self {
        NetConfig {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            external: Vec::new(),
            topic,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
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
    let swarm = behaviour::build_swarm(keypair, cfg.request_timeout)?;
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
