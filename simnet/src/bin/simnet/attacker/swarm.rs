//! One adversarial identity on the market: a libp2p swarm of its own speaking leasewire's
//! transport (TCP, the private-network layer, Noise, Yamux) and its two request-response
//! protocols, with a codec that sends whatever bytes an attack wants (valid frames, broken
//! framing, or a frame that never finishes).
//!
//! [`Member`] dials one target, proves membership with the library's own handshake
//! ([`leasewire::net::membership::Initiator`]) and then sends requests; it knows everything
//! an honest member knows, which on the public market is everything (its secret is public).

use std::io;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use ed25519_dalek::SigningKey;
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt as _};
use leasewire::net::codec::{MEMBERSHIP_PROTOCOL, MSG_PROTOCOL};
use leasewire::net::membership::Initiator;
use leasewire::net::topic::Topic;
use leasewire::wire::envelope::{self, ReplayGuard, TIME_WINDOW_SECS};
use leasewire::wire::framing::{self, MAX_FRAME};
use leasewire::wire::messages::Message;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, Transport, noise, tcp, yamux,
};

/// How long a dial plus membership handshake may take before the attempt counts as failed.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What one request stream carries.
#[derive(Clone, Debug)]
pub enum Outgoing {
    /// A well-formed frame (length prefix and payload).
    Frame(Vec<u8>),
    /// These bytes exactly, whatever they are, then the stream's end.
    Raw(Vec<u8>),
    /// A frame header announcing `MAX_FRAME - 1` bytes and a few of them, then nothing more:
    /// the stream stays open until the other side gives up on it.
    Stall,
}

/// Writes [`Outgoing`] requests and reads one frame back; see the module doc.
#[derive(Clone, Debug, Default)]
pub struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Outgoing;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Outgoing>
    where
        T: AsyncRead + Unpin + Send,
    {
        // Nobody dials the attacker; anything read is just dropped.
        let bytes = framing::read_frame(io, MAX_FRAME)
            .await
            .map_err(io::Error::other)?;
        Ok(Outgoing::Frame(bytes))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        framing::read_frame(io, MAX_FRAME)
            .await
            .map_err(io::Error::other)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Outgoing,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Outgoing::Frame(payload) => {
                // Unlike framing::write_frame, no size check: oversized frames are an attack.
                let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
                let mut buf = len.to_be_bytes().to_vec();
                buf.extend_from_slice(&payload);
                io.write_all(&buf).await?;
            }
            Outgoing::Raw(bytes) => io.write_all(&bytes).await?,
            Outgoing::Stall => {
                let len = u32::try_from(MAX_FRAME - 1).unwrap_or(u32::MAX);
                let mut buf = len.to_be_bytes().to_vec();
                buf.extend_from_slice(&[0xA5; 16]);
                io.write_all(&buf).await?;
                io.flush().await?;
                // Never finish: the stream is held until the target (or our timeout) ends it.
                futures::future::pending::<()>().await;
            }
        }
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Ok(())
    }
}

/// The attacker's behaviour: leasewire's two request-response protocols, nothing else.
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
pub struct AttackBehaviour {
    membership: request_response::Behaviour<RawCodec>,
    msg: request_response::Behaviour<RawCodec>,
}

/// A fresh random identity.
pub fn fresh_key() -> Result<SigningKey> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow!("no randomness for a key: {e}"))?;
    Ok(SigningKey::from_bytes(&b))
}

/// A swarm for `key` on `topic`'s network.
fn build(key: &SigningKey, topic: &Topic) -> Result<Swarm<AttackBehaviour>> {
    let keypair = leasewire::net::keypair_of(key);
    let psk = (!topic.is_public).then(|| PreSharedKey::new(topic.pnet_key));
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)?;
            let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
            let t: Boxed<(PeerId, StreamMuxerBox)> = match psk {
                Some(psk) => tcp
                    .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .timeout(JOIN_TIMEOUT)
                    .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
                    .boxed(),
                None => tcp
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .timeout(JOIN_TIMEOUT)
                    .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
                    .boxed(),
            };
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(t)
        })
        .map_err(|e| anyhow!("attacker transport: {e}"))?
        .with_behaviour(|_| {
            // Long timeouts and many streams: holding streams open is one of the attacks.
            let cfg = request_response::Config::default()
                .with_request_timeout(Duration::from_secs(600))
                .with_max_concurrent_streams(100_000);
            AttackBehaviour {
                membership: request_response::Behaviour::new(
                    [(MEMBERSHIP_PROTOCOL, ProtocolSupport::Outbound)],
                    cfg.clone(),
                ),
                msg: request_response::Behaviour::new(
                    [(MSG_PROTOCOL, ProtocolSupport::Outbound)],
                    cfg,
                ),
            }
        })
        .map_err(|e| anyhow!("attacker behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    Ok(swarm)
}

/// A target daemon: its peer id and a dialable address.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its peer id.
    pub peer: PeerId,
    /// Its address, without `/p2p/`.
    pub addr: Multiaddr,
}

impl std::str::FromStr for Target {
    type Err = anyhow::Error;

    /// `/ip4/…/tcp/…/p2p/<id>`.
    fn from_str(s: &str) -> Result<Target> {
        let mut addr: Multiaddr = s.parse().map_err(|e| anyhow!("bad target {s}: {e}"))?;
        match addr.pop() {
            Some(libp2p::multiaddr::Protocol::P2p(peer)) => Ok(Target { peer, addr }),
            _ => bail!("target {s} does not end with /p2p/<peer id>"),
        }
    }
}

/// What happened to one request.
#[derive(Debug)]
pub enum Reply {
    /// A response envelope that opened: the target's message.
    Message(Box<Message>),
    /// Bytes that did not open as an envelope from the target.
    Garbled(String),
    /// The request failed (stream reset, connection closed, timeout...).
    Failed(String),
}

/// One identity connected to one target.
pub struct Member {
    swarm: Swarm<AttackBehaviour>,
    /// Its signing key (the envelope key is the libp2p identity, as for honest nodes).
    pub key: SigningKey,
    /// The target.
    pub target: Target,
    guard: ReplayGuard,
    /// Set once the membership handshake succeeded.
    pub member: bool,
    /// Whether a connection to the target is up.
    pub connected: bool,
}

/// An event of [`Member::next`].
#[derive(Debug)]
pub enum Step {
    /// The reply to a message request.
    Reply(OutboundRequestId, Reply),
    /// The membership handshake's outcome.
    Joined(Result<(), String>),
    /// The last connection to the target closed.
    Disconnected,
    /// Nothing of interest happened.
    Other,
}

impl Member {
    /// A new identity for `target`, not yet connected.
    ///
    /// Errors: the swarm cannot be built.
    pub fn new(topic: &Topic, target: Target) -> Result<Member> {
        let key = fresh_key()?;
        let swarm = build(&key, topic)?;
        Ok(Member {
            swarm,
            key,
            target,
            guard: ReplayGuard::new(TIME_WINDOW_SECS),
            member: false,
            connected: false,
        })
    }

    /// Dials the target (one more connection even when one is up).
    ///
    /// Errors: the dial could not start.
    pub fn dial(&mut self) -> Result<()> {
        let opts = DialOpts::peer_id(self.target.peer)
            .addresses(vec![self.target.addr.clone()])
            .condition(PeerCondition::Always)
            .build();
        self.swarm
            .dial(opts)
            .map_err(|e| anyhow!("dial {}: {e}", self.target.addr))
    }

    /// Sends membership message 1 made with `psk` (the market's key, or a wrong one for a
    /// handshake flood); the outcome comes as [`Step::Joined`].
    pub fn start_handshake(&mut self, psk: &[u8; 32]) -> Result<Initiator> {
        let local = *self.swarm.local_peer_id();
        let (init, m1) = Initiator::start(psk, &local, &self.target.peer)
            .map_err(|e| anyhow!("membership start: {e}"))?;
        self.swarm
            .behaviour_mut()
            .membership
            .send_request(&self.target.peer, Outgoing::Frame(m1));
        Ok(init)
    }

    /// Sends bytes on the membership protocol (garbage instead of a handshake).
    pub fn send_membership(&mut self, out: Outgoing) -> OutboundRequestId {
        self.swarm
            .behaviour_mut()
            .membership
            .send_request(&self.target.peer, out)
    }

    /// Dials and proves membership with `psk`, within [`JOIN_TIMEOUT`].
    ///
    /// Errors: no connection, or the target refused the handshake.
    pub async fn join(&mut self, psk: &[u8; 32]) -> Result<()> {
        let deadline = Instant::now() + JOIN_TIMEOUT;
        self.dial()?;
        let mut init = None;
        loop {
            let step = tokio::time::timeout_at(deadline.into(), self.next_raw(&mut init)).await;
            match step {
                Err(_) => bail!("no membership within {JOIN_TIMEOUT:?}"),
                Ok(Step::Joined(Ok(()))) => return Ok(()),
                Ok(Step::Joined(Err(e))) => bail!("membership refused: {e}"),
                Ok(Step::Disconnected) if init.is_some() => bail!("disconnected while joining"),
                Ok(_) => {}
            }
            if self.connected && init.is_none() && !self.member {
                init = Some(self.start_handshake(psk)?);
            }
        }
    }

    /// Sends a request on the message protocol.
    pub fn send(&mut self, out: Outgoing) -> OutboundRequestId {
        self.swarm
            .behaviour_mut()
            .msg
            .send_request(&self.target.peer, out)
    }

    /// Seals `msg` now (a fresh envelope) and sends it.
    ///
    /// Errors: the message cannot be encoded.
    pub fn send_message(&mut self, msg: &Message) -> Result<OutboundRequestId> {
        let env = envelope::seal(&self.key, msg).map_err(|e| anyhow!("seal: {e}"))?;
        Ok(self.send(Outgoing::Frame(env)))
    }

    /// Sends `msg` and waits for its reply (other replies arriving meanwhile are dropped).
    ///
    /// Errors: the message cannot be encoded, or no reply within `timeout`.
    pub async fn ask(&mut self, msg: &Message, timeout: Duration) -> Result<Reply> {
        let id = self.send_message(msg)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.next()).await {
                Err(_) => bail!("no reply within {timeout:?}"),
                Ok(Step::Reply(got, reply)) if got == id => return Ok(reply),
                Ok(Step::Disconnected) => return Ok(Reply::Failed("disconnected".into())),
                Ok(_) => {}
            }
        }
    }

    /// The next event of interest (for a member past its handshake).
    pub async fn next(&mut self) -> Step {
        let mut none = None;
        self.next_raw(&mut none).await
    }

    async fn next_raw(&mut self, init: &mut Option<Initiator>) -> Step {
        let event = self.swarm.select_next_some().await;
        match event {
            SwarmEvent::ConnectionEstablished { .. } => {
                self.connected = true;
                Step::Other
            }
            SwarmEvent::ConnectionClosed {
                num_established: 0, ..
            } => {
                self.connected = false;
                self.member = false;
                Step::Disconnected
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                if self.connected {
                    Step::Other
                } else {
                    Step::Joined(Err(format!("dial: {error}")))
                }
            }
            SwarmEvent::Behaviour(AttackBehaviourEvent::Membership(e)) => match e {
                request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                } => match init.take() {
                    Some(i) => match i.finish(&response) {
                        Ok(()) => {
                            self.member = true;
                            Step::Joined(Ok(()))
                        }
                        Err(e) => Step::Joined(Err(e.to_string())),
                    },
                    None => Step::Other,
                },
                request_response::Event::OutboundFailure { error, .. } => {
                    Step::Joined(Err(error.to_string()))
                }
                _ => Step::Other,
            },
            SwarmEvent::Behaviour(AttackBehaviourEvent::Msg(e)) => match e {
                request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                } => {
                    let reply = match envelope::open(
                        &response,
                        &self.target.peer,
                        &self.guard,
                        leasewire::types::now_unix(),
                    ) {
                        Ok(o) => Reply::Message(Box::new(o.message)),
                        Err(e) => Reply::Garbled(e.to_string()),
                    };
                    Step::Reply(request_id, reply)
                }
                request_response::Event::OutboundFailure {
                    request_id, error, ..
                } => Step::Reply(request_id, Reply::Failed(error.to_string())),
                _ => Step::Other,
            },
            _ => Step::Other,
        }
    }
}
