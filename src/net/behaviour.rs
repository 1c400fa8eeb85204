//! The libp2p behaviour of a leasewire node and the swarm built around it.
//!
//! - `kad`: Kademlia with an in-memory store. On a private network it is `/leasewire/kad/1.0.0`
//!   with a routing table filled by hand (`BucketInserts::Manual`): the event loop adds a peer
//!   only once it passed the membership handshake, so queries never route through outsiders.
//!   On the public DHT it is `/ipfs/kad/1.0.0` with automatic inserts: every IPFS peer routes.
//! - `identify`: learns the listen addresses of peers that dialed us.
//! - `ping`: `/ipfs/ping/1.0.0`, which public DHT implementations require of their peers.
//! - `membership`: the PSK handshake ([`super::membership`]) over request-response.
//! - `msg`: signed envelopes over request-response.
//! - `blocked`: peers that failed the handshake either way, and banned peers
//!   ([`super::limits::Offenses`]); their connections are denied.
//! - `inbound`, `limits`, `memory`: connection bounds from [`super::limits::NetLimits`]
//!   (incoming per IP, incoming and in all, before the handshake; per peer, pending, and the
//!   established counts again as a backstop; process memory). They come first, so a refused
//!   connection costs no other behaviour anything.

use std::time::Duration;

use either::Either;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::transport::timeout::{TransportTimeout, TransportTimeoutError};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::kad::store::MemoryStore;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    PeerId, StreamProtocol, Swarm, SwarmBuilder, Transport, allow_block_list, connection_limits,
    identify, kad, memory_connection_limits, noise, ping, tcp, yamux,
};

use super::codec::{FrameCodec, MEMBERSHIP_PROTOCOL, MSG_PROTOCOL};
use super::limits::{InboundLimit, NetLimits};
use super::membership::MAX_HANDSHAKE_MESSAGE;
use super::{DhtKind, DhtRole, NetConfig, NetError};

/// Kademlia protocol name of a private leasewire DHT.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/leasewire/kad/1.0.0");

/// Kademlia protocol name of the public IPFS ("Amino") DHT.
pub const PUBLIC_KAD_PROTOCOL: StreamProtocol = kad::PROTOCOL_NAME;

/// The ping protocol served on every connection (libp2p ping).
pub const PING_PROTOCOL: StreamProtocol = ping::PROTOCOL_NAME;

/// Identify protocol version string: peers of other networks are told apart by it in logs.
pub const IDENTIFY_VERSION: &str = "/leasewire/1.0.0";

/// How long a connection with no open stream stays up. Longer than libp2p's default so a
/// renter's follow-up requests (pay, then lease) reuse the connection.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The combined behaviour; see the module documentation. Crate-private: the `BehaviourEvent`
/// enum the derive generates is an implementation detail of the event loop.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Incoming connections per remote IP, incoming and in all, refused before their
    /// handshake (see [`InboundLimit`]).
    pub inbound: InboundLimit,
    /// Connection counts: total, incoming, per peer, pending.
    pub limits: connection_limits::Behaviour,
    /// No new connection while the process uses more memory than configured.
    pub memory: Toggle<memory_connection_limits::Behaviour>,
    /// Peers refused by the handshake (either side) or banned: connections denied and closed.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// The DHT carrying provider records under the topic key.
    pub kad: kad::Behaviour<MemoryStore>,
    /// Peer information exchange (listen addresses).
    pub identify: identify::Behaviour,
    /// Liveness checks; served so public DHT peers keep us in their tables.
    pub ping: ping::Behaviour,
    /// Membership handshake.
    pub membership: request_response::Behaviour<FrameCodec>,
    /// Signed-envelope requests.
    pub msg: request_response::Behaviour<FrameCodec>,
}

impl Behaviour {
    fn new(key: &Keypair, cfg: &NetConfig) -> Self {
        let local = key.public().to_peer_id();
        let request_timeout = cfg.request_timeout;
        let kad = kad_behaviour(local, cfg);

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_VERSION.to_string(), key.public())
                .with_agent_version(format!("leasewire/{}", env!("CARGO_PKG_VERSION"))),
        );

        let l = &cfg.limits;
        let rr_cfg = request_response::Config::default()
            .with_request_timeout(request_timeout)
            .with_max_concurrent_streams(l.max_streams_per_connection.max(1) as usize);
        // The only protocol a peer may use before it proved membership carries one Noise
        // message each way (48 bytes): its frames are capped at 1 KiB, not 64.
        let membership = request_response::Behaviour::with_codec(
            FrameCodec::new(MAX_HANDSHAKE_MESSAGE),
            [(MEMBERSHIP_PROTOCOL, ProtocolSupport::Full)],
            rr_cfg.clone(),
        );
        let msg = request_response::Behaviour::with_codec(
            FrameCodec::default(),
            [(MSG_PROTOCOL, ProtocolSupport::Full)],
            rr_cfg,
        );

        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(l.max_connections))
                .with_max_established_incoming(Some(l.max_incoming_connections))
                .with_max_established_per_peer(Some(l.max_connections_per_peer))
                .with_max_pending_incoming(Some(l.max_pending_incoming))
                .with_max_pending_outgoing(Some(l.max_pending_outgoing)),
        );
        let memory = Toggle::from((l.max_memory_mb > 0).then(|| {
            let bytes = l.max_memory_mb.saturating_mul(1024 * 1024);
            memory_connection_limits::Behaviour::with_max_bytes(
                usize::try_from(bytes).unwrap_or(usize::MAX),
            )
        }));
        Behaviour {
            limits,
            memory,
            inbound: InboundLimit::new(l),
            blocked: allow_block_list::Behaviour::default(),
            kad,
            identify,
            ping: ping::Behaviour::default(),
            membership,
            msg,
        }
    }
}

/// The Kademlia behaviour of `cfg`'s DHT kind and role.
fn kad_behaviour(local: PeerId, cfg: &NetConfig) -> kad::Behaviour<MemoryStore> {
    let mut kad_cfg = match cfg.dht {
        DhtKind::Private => {
            let mut c = kad::Config::new(KAD_PROTOCOL);
            c.set_kbucket_inserts(kad::BucketInserts::Manual);
            c
        }
        // Anyone is a DHT peer on the public DHT; membership only gates our own messages.
        DhtKind::Public => kad::Config::new(PUBLIC_KAD_PROTOCOL),
    };
    kad_cfg.set_query_timeout(cfg.query_timeout);
    let mut kad = kad::Behaviour::with_config(local, MemoryStore::new(local), kad_cfg);
    // Fixed rather than libp2p's automatic mode (server once an external address is
    // confirmed): the node announces its listen addresses as external on loopback and LANs,
    // which would make every renter behind NAT a server nobody can reach.
    kad.set_mode(Some(match cfg.dht_role {
        DhtRole::Server => kad::Mode::Server,
        DhtRole::Client => kad::Mode::Client,
    }));
    kad
}

/// Longest a TCP connection may take to come up on a private network.
const PRIVATE_CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

/// Longest a whole connection set-up (TCP, private-network layer, Noise, Yamux) may take on a
/// private network; longer than [`PRIVATE_CONNECT_TIMEOUT`] (see [`transport`]).
const PRIVATE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(6);

/// Text carried by every dial error of a private network that failed after the TCP connection
/// was up (in the private-network layer, multistream-select, Noise or Yamux): a peer of
/// another network, most likely. The event loop looks for it in the dial error's text because
/// the transport stack boxes errors into `io::Error`s whose source chains skip levels.
pub(crate) const HANDSHAKE_FAILED_MARKER: &str = "private network handshake failed";

/// Why a dial on a private network failed.
#[derive(Debug, thiserror::Error)]
enum PrivateDialError {
    /// The TCP connection could not be made: the peer is down or unreachable.
    #[error("{0}")]
    Tcp(std::io::Error),
    /// Connected, but the upgrade failed: the peer holds another key (or closed mid-way).
    #[error("private network handshake failed (another network's peer?): {0}")]
    Handshake(String),
}

/// TCP, upgraded with the private-network handshake when `psk` is set, then Noise and Yamux.
///
/// The `pnet` layer sits under Noise: a dialer without the key sends bytes the listener
/// decrypts to garbage, so multistream-select and Noise fail and no protocol is ever reached.
fn transport(
    key: &Keypair,
    psk: Option<PreSharedKey>,
    limits: &NetLimits,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let noise = noise::Config::new(key)?;
    let mut yamux = yamux::Config::default();
    yamux.set_max_num_streams(limits.max_streams_per_connection.max(1) as usize);
    // A transport handshake that has not finished by then is dropped: a peer cannot hold a
    // pending slot (see `max_pending_incoming`) open for free. (A private network keeps its
    // own, shorter timeouts, see below.)
    let handshake_timeout = limits.handshake_timeout();
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let transport = match psk {
        // Connecting gets its own, shorter timeout than the whole upgrade, so a timeout of the
        // whole means the TCP connection was up: the peer is there but speaks no protocol we
        // can read, as a peer of another network does (garbage can also leave both sides
        // waiting for bytes that never come, which only a timeout ends).
        Some(psk) => TransportTimeout::new(tcp, PRIVATE_CONNECT_TIMEOUT)
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux)
            .timeout(PRIVATE_HANDSHAKE_TIMEOUT)
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .map_err(|e| match e {
                TransportTimeoutError::Timeout => {
                    PrivateDialError::Handshake("timed out after connecting".into())
                }
                TransportTimeoutError::TimerError(e) => PrivateDialError::Tcp(e),
                TransportTimeoutError::Other(Either::Left(Either::Left(Either::Left(tcp)))) => {
                    PrivateDialError::Tcp(std::io::Error::other(tcp))
                }
                TransportTimeoutError::Other(other) => {
                    PrivateDialError::Handshake(other.to_string())
                }
            })
            .boxed(),
        None => tcp
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux)
            .timeout(handshake_timeout)
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
    };
    Ok(transport)
}

/// Builds a swarm over TCP (+DNS) with Noise and Yamux (and `pnet` on a private network),
/// running on the tokio runtime.
///
/// # Errors
/// [`NetError::Transport`] if the transport cannot be set up (e.g. the system DNS
/// configuration cannot be read).
pub(crate) fn build_swarm(key: Keypair, cfg: &NetConfig) -> Result<Swarm<Behaviour>, NetError> {
    let psk = match cfg.dht {
        DhtKind::Private => Some(PreSharedKey::new(cfg.topic.pnet_key)),
        DhtKind::Public => None,
    };
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| {
            transport(key, psk, &cfg.limits)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .map_err(|e| NetError::Transport(format!("tcp/noise: {e}")))?
        .with_dns()
        .map_err(|e| NetError::Transport(format!("dns: {e}")))?
        .with_behaviour(|key| Behaviour::new(key, cfg))
        .map_err(|e| NetError::Transport(format!("behaviour: {e}")))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
                .with_max_negotiating_inbound_streams(
                    cfg.limits.max_streams_per_connection.max(1) as usize
                )
        })
        .build();
    Ok(swarm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_failures_carry_the_marker_and_tcp_failures_do_not() {
        let h = PrivateDialError::Handshake("garbage".into()).to_string();
        assert!(h.contains(HANDSHAKE_FAILED_MARKER), "{h}");
        // Wrapped the way the boxed transport stack wraps it, the text survives.
        let boxed = std::io::Error::other(std::io::Error::other(PrivateDialError::Handshake(
            "x".into(),
        )));
        assert!(boxed.to_string().contains(HANDSHAKE_FAILED_MARKER));
        let t = PrivateDialError::Tcp(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(!t.to_string().contains(HANDSHAKE_FAILED_MARKER));
    }
}
