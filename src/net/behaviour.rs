//! The libp2p behaviour of a leasewire node and the swarm built around it.
//!
//! - `kad`: a private Kademlia DHT (`/leasewire/kad/1.0.0`, server mode, in-memory store).
//!   Its routing table is filled by hand (`BucketInserts::Manual`): the event loop adds a peer
//!   only once it passed the membership handshake, so queries never route through outsiders.
//! - `identify`: learns the listen addresses of peers that dialed us.
//! - `membership`: the PSK handshake ([`super::membership`]) over request-response.
//! - `msg`: signed envelopes over request-response.
//! - `blocked`: peers that failed the handshake either way; their connections are denied.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::kad::store::MemoryStore;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    StreamProtocol, Swarm, SwarmBuilder, allow_block_list, identify, kad, noise, tcp, yamux,
};

use super::NetError;
use super::codec::{FrameCodec, MEMBERSHIP_PROTOCOL, MSG_PROTOCOL};

/// Kademlia protocol name of the leasewire DHT (not the public IPFS one).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/leasewire/kad/1.0.0");

/// Identify protocol version string: peers of other networks are told apart by it in logs.
pub const IDENTIFY_VERSION: &str = "/leasewire/1.0.0";

/// How long a connection with no open stream stays up. Longer than libp2p's default so a
/// renter's follow-up requests (pay, then lease) reuse the connection.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The combined behaviour; see the module documentation. Crate-private: the `BehaviourEvent`
/// enum the derive generates is an implementation detail of the event loop.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Peers refused by the handshake (either side): connections denied and closed.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// The DHT carrying provider records under the topic key.
    pub kad: kad::Behaviour<MemoryStore>,
    /// Peer information exchange (listen addresses).
    pub identify: identify::Behaviour,
    /// Membership handshake.
    pub membership: request_response::Behaviour<FrameCodec>,
    /// Signed-envelope requests.
    pub msg: request_response::Behaviour<FrameCodec>,
}

impl Behaviour {
    fn new(key: &Keypair, request_timeout: Duration) -> Self {
        let local = key.public().to_peer_id();

        let mut kad_cfg = kad::Config::new(KAD_PROTOCOL);
        kad_cfg.set_kbucket_inserts(kad::BucketInserts::Manual);
        kad_cfg.set_query_timeout(request_timeout);
        let mut kad = kad::Behaviour::with_config(local, MemoryStore::new(local), kad_cfg);
        // Every member serves the DHT: a private network has no public servers to lean on.
        kad.set_mode(Some(kad::Mode::Server));

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_VERSION.to_string(), key.public())
                .with_agent_version(format!("leasewire/{}", env!("CARGO_PKG_VERSION"))),
        );

        let rr_cfg = request_response::Config::default().with_request_timeout(request_timeout);
        let membership = request_response::Behaviour::with_codec(
            FrameCodec::default(),
            [(MEMBERSHIP_PROTOCOL, ProtocolSupport::Full)],
            rr_cfg.clone(),
        );
        let msg = request_response::Behaviour::with_codec(
            FrameCodec::default(),
            [(MSG_PROTOCOL, ProtocolSupport::Full)],
            rr_cfg,
        );

        Behaviour {
            blocked: allow_block_list::Behaviour::default(),
            kad,
            identify,
            membership,
            msg,
        }
    }
}

/// Builds a swarm over TCP (+DNS) with Noise and Yamux, running on the tokio runtime.
///
/// # Errors
/// [`NetError::Transport`] if the transport cannot be set up (e.g. the system DNS
/// configuration cannot be read).
pub(crate) fn build_swarm(
    key: Keypair,
    request_timeout: Duration,
) -> Result<Swarm<Behaviour>, NetError> {
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetError::Transport(format!("tcp/noise: {e}")))?
        .with_dns()
        .map_err(|e| NetError::Transport(format!("dns: {e}")))?
        .with_behaviour(|key| Behaviour::new(key, request_timeout))
        .map_err(|e| NetError::Transport(format!("behaviour: {e}")))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok(swarm)
}
