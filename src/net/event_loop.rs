//! [`EventLoop`]: owns the swarm and serves [`super::NetClient`] commands.
//!
//! Steps of [`EventLoop::run`], repeated until the token fires or every client is dropped:
//! 1. a swarm event: connections (dialers start the membership handshake, see
//!    [`super::peers`]), addresses, DHT query progress, handshake and message traffic;
//! 2. a command: answered at once, or parked in a `pending_*` map keyed by the libp2p query or
//!    request id until the matching swarm event arrives;
//! 3. a periodic sweep failing requests whose membership handshake did not come in time;
//! 4. while the node is isolated (no member connected and, on the public DHT, no peer at all),
//!    dials of the bootstrap peers, again and again with exponential backoff (see
//!    [`super::backoff`]), and a rate-limited warning.
//!
//! When the loop ends, every parked reply is dropped, so waiting callers get `Closed`.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::kad::QueryId;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::backoff::{Backoff, RateLimit};
use super::behaviour::{Behaviour, BehaviourEvent, HANDSHAKE_FAILED_MARKER};
use super::codec::Frame;
use super::limits::{Offenses, Verdict};
use super::membership::Initiator;
use super::peers::{AddressBook, RefusedSet, Waiting};
use super::{
    DhtKind, DhtRole, InboundChannel, NetConfig, NetError, NetEvent, NetStatus, Topic,
    dialable_addrs,
};
use crate::wire::envelope::ReplayGuard;
use crate::wire::messages::Message;

/// Where a command's answer goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, NetError>>;

/// How often requests waiting for a membership handshake are checked for their deadline.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Least time between two warnings that the node is isolated, and between two log lines about
/// failed incoming connections.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// A client's request to the loop.
pub(crate) enum Command {
    ListenAddrs {
        reply: Reply<Vec<Multiaddr>>,
    },
    StartProviding {
        reply: Reply<()>,
    },
    FindProviders {
        /// Gets each provider as the lookup meets it, if given.
        progress: Option<mpsc::UnboundedSender<PeerId>>,
        reply: Reply<HashSet<PeerId>>,
    },
    Request {
        peer: PeerId,
        envelope: Vec<u8>,
        reply: Reply<(Message, Duration)>,
    },
    Respond {
        channel: InboundChannel,
        envelope: Vec<u8>,
        reply: Reply<()>,
    },
    Status {
        reply: oneshot::Sender<NetStatus>,
    },
}

/// An outbound message request in flight.
pub(crate) struct PendingRequest {
    pub(crate) peer: PeerId,
    pub(crate) sent_at: Instant,
    pub(crate) reply: Reply<(Message, Duration)>,
}

/// A provider lookup in flight.
pub(crate) struct PendingFind {
    /// Providers found so far.
    pub(crate) found: HashSet<PeerId>,
    /// Where each new provider goes at once (see [`super::NetClient::find_providers_each`]).
    pub(crate) progress: Option<mpsc::UnboundedSender<PeerId>>,
    pub(crate) reply: Reply<HashSet<PeerId>>,
}

/// The network actor; see the module documentation. Built by [`super::new`].
pub struct EventLoop {
    pub(crate) swarm: Swarm<Behaviour>,
    pub(crate) local: PeerId,
    pub(crate) topic: Topic,
    pub(crate) request_timeout: Duration,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    pub(crate) replay: ReplayGuard,
    /// Announce listen addresses as external ones (no `external` configured).
    announce_listen_addrs: bool,
    /// Listeners not yet closed; when none is left, `listen_addrs` callers get an error.
    open_listeners: usize,
    pub(crate) book: AddressBook,
    pub(crate) members: HashSet<PeerId>,
    pub(crate) refused: RefusedSet,
    pub(crate) refused_by: RefusedSet,
    /// Peers of a private network whose transport handshake failed after TCP connected (most
    /// likely another network's). Reported in `status` as refusing us, but, unlike
    /// `refused_by`, not blocked: a member that closed mid-handshake is tried again.
    pub(crate) transport_refused_by: RefusedSet,
    /// Configured bootstrap peers: their addresses stay in the book.
    pub(crate) bootstrap_peers: HashSet<PeerId>,
    /// Peers with a handshake of ours in flight.
    pub(crate) handshaking: HashSet<PeerId>,
    pub(crate) bootstrapped: bool,
    pub(crate) pending_handshakes: HashMap<OutboundRequestId, (PeerId, Initiator)>,
    pub(crate) waiting: HashMap<PeerId, Vec<Waiting>>,
    pub(crate) pending_requests: HashMap<OutboundRequestId, PendingRequest>,
    pending_listen: Vec<Reply<Vec<Multiaddr>>>,
    pub(crate) pending_providing: HashMap<QueryId, Reply<()>>,
    pub(crate) pending_find: HashMap<QueryId, PendingFind>,
    pub(crate) dht: DhtKind,
    dht_role: DhtRole,
    /// The configured bootstrap peers with their addresses.
    bootstrap_list: Vec<(PeerId, Multiaddr)>,
    backoff: Backoff,
    /// Redials since the node last stopped being isolated.
    bootstrap_attempt: u32,
    /// When the next redial is due; only polled while `retry_armed`.
    retry: Pin<Box<tokio::time::Sleep>>,
    retry_armed: bool,
    isolation_log: RateLimit,
    rejected_log: RateLimit,
    rejected_connections: u64,
    /// We announced ourselves as a provider: our local record follows our addresses.
    pub(crate) providing: bool,
    /// Our last announce reached no DHT peer (none was routable yet, or we were isolated
    /// since): announce again as soon as one is, rather than at the next timed re-announce.
    pub(crate) reannounce_when_routable: bool,
    /// Announces the loop started itself (see `reannounce_when_routable`), not a caller.
    pub(crate) background_announces: HashSet<QueryId>,
    /// Offense counts and bans of misbehaving peers.
    pub(crate) offenses: Offenses,
}

impl EventLoop {
    /// Binds the listeners, records the external addresses and dials the bootstrap peers.
    pub(crate) fn new(
        mut swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<NetEvent>,
        cfg: NetConfig,
        replay: ReplayGuard,
    ) -> Result<Self, NetError> {
        // The tokio TCP transport registers listeners with the current runtime.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(NetError::Transport(
                "net::new must be called within a tokio runtime".into(),
            ));
        }
        // Check the configuration before binding anything.
        let mut bootstrap = Vec::with_capacity(cfg.bootstrap.len());
        for addr in &cfg.bootstrap {
            let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
                return Err(NetError::BadAddress {
                    addr: addr.to_string(),
                    reason: "bootstrap address must end with /p2p/<PeerId>".into(),
                });
            };
            bootstrap.push((peer, addr));
        }
        for addr in &cfg.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Transport(format!("cannot listen on {addr}: {e}")))?;
        }
        for addr in dialable_addrs(cfg.external.iter().cloned()) {
            swarm.add_external_address(addr);
        }
        let local = *swarm.local_peer_id();
        let mut el = EventLoop {
            swarm,
            local,
            topic: cfg.topic,
            request_timeout: cfg.request_timeout,
            commands,
            events,
            replay,
            announce_listen_addrs: cfg.external.is_empty(),
            open_listeners: cfg.listen.len(),
            book: AddressBook::default(),
            members: HashSet::new(),
            refused: RefusedSet::default(),
            refused_by: RefusedSet::default(),
            transport_refused_by: RefusedSet::default(),
            bootstrap_peers: HashSet::new(),
            handshaking: HashSet::new(),
            bootstrapped: false,
            pending_handshakes: HashMap::new(),
            waiting: HashMap::new(),
            pending_requests: HashMap::new(),
            pending_listen: Vec::new(),
            pending_providing: HashMap::new(),
            pending_find: HashMap::new(),
            dht: cfg.dht,
            dht_role: cfg.dht_role,
            bootstrap_list: Vec::new(),
            backoff: cfg.bootstrap_backoff,
            bootstrap_attempt: 0,
            retry: Box::pin(tokio::time::sleep(Duration::ZERO)),
            retry_armed: false,
            isolation_log: RateLimit::new(LOG_EVERY),
            rejected_log: RateLimit::new(LOG_EVERY),
            rejected_connections: 0,
            providing: false,
            reannounce_when_routable: false,
            background_announces: HashSet::new(),
            offenses: cfg.limits.offenses(),
        };
        for (peer, addr) in bootstrap {
            if peer == local {
                continue;
            }
            el.bootstrap_peers.insert(peer);
            el.book.add(peer, addr.clone());
            el.bootstrap_list.push((peer, addr.clone()));
        }
        if el.bootstrap_list.is_empty() {
            tracing::info!("no bootstrap peers: waiting for peers to dial us");
        }
        el.dial_bootstrap_peers();
        el.arm_retry();
        Ok(el)
    }

    /// True while the node cannot discover anything: no member connected and, on the public
    /// DHT (where any peer routes queries), no peer connected at all.
    pub(crate) fn is_isolated(&self) -> bool {
        let no_member = !self.members.iter().any(|m| self.swarm.is_connected(m));
        match self.dht {
            DhtKind::Private => no_member,
            DhtKind::Public => no_member && self.swarm.connected_peers().next().is_none(),
        }
    }

    /// Dials every configured bootstrap peer we are not connected to.
    fn dial_bootstrap_peers(&mut self) {
        for i in 0..self.bootstrap_list.len() {
            let (peer, addr) = self.bootstrap_list[i].clone();
            if self.swarm.is_connected(&peer) || self.is_refused(&peer) {
                continue;
            }
            // Keep the configured address even if the book forgot it.
            self.book.add(peer, addr.clone());
            if self.dht == DhtKind::Public {
                // On the public DHT bootstrap peers are DHT servers, members or not: route
                // through them at once rather than after identify.
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
            }
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(self.book.get(&peer))
                .build();
            // A bootstrap peer that is down must not keep the node from starting.
            match self.swarm.dial(opts) {
                Ok(()) => tracing::debug!(%peer, %addr, "dialing bootstrap peer"),
                Err(e) => tracing::debug!(%peer, %addr, "cannot dial bootstrap peer: {e}"),
            }
        }
    }

    /// Schedules the next bootstrap redial if the node is isolated and none is scheduled.
    pub(crate) fn arm_retry(&mut self) {
        if self.retry_armed || self.bootstrap_list.is_empty() || !self.is_isolated() {
            return;
        }
        let delay = self.backoff.random_delay(self.bootstrap_attempt);
        self.retry
            .as_mut()
            .reset(tokio::time::Instant::now() + delay);
        self.retry_armed = true;
    }

    /// A redial is due: dial again if still isolated, warn (rate-limited), schedule the next.
    fn on_retry(&mut self) {
        self.retry_armed = false;
        if !self.is_isolated() {
            self.bootstrap_attempt = 0;
            return;
        }
        if let Some(held_back) = self.isolation_log.check(Instant::now()) {
            tracing::warn!(
                bootstrap_peers = self.bootstrap_list.len(),
                attempt = self.bootstrap_attempt,
                held_back,
                "isolated: no member peer connected; dialing the bootstrap peers again"
            );
        }
        self.dial_bootstrap_peers();
        self.bootstrap_attempt = self.bootstrap_attempt.saturating_add(1);
        self.arm_retry();
    }

    /// Notes a private-network peer whose transport handshake failed (see
    /// `transport_refused_by`).
    fn on_dial_error(&mut self, peer: PeerId, error: &libp2p::swarm::DialError) {
        if self.dht != DhtKind::Private || self.members.contains(&peer) {
            return;
        }
        if !error.to_string().contains(HANDSHAKE_FAILED_MARKER) {
            return;
        }
        let (newly, _) = self.transport_refused_by.insert(peer);
        if newly {
            tracing::warn!(%peer, "peer failed the private network handshake: another network?");
            self.emit(NetEvent::MembershipRefused {
                peer,
                by_us: false,
                reason: "private network handshake failed".into(),
            });
        }
    }

    /// The node met a member or a DHT peer: the next isolation starts the backoff afresh.
    pub(crate) fn on_not_isolated(&mut self) {
        if !self.is_isolated() {
            self.bootstrap_attempt = 0;
        }
    }

    /// Runs until `shutdown` fires or every [`super::NetClient`] is dropped.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                _ = sweep.tick() => {
                    self.sweep_waiting();
                    self.lift_ended_bans();
                }
                _ = &mut self.retry, if self.retry_armed => self.on_retry(),
            }
        }
        tracing::debug!("network event loop stopped");
    }

    /// Hands an event to the application without ever blocking the swarm.
    pub(crate) fn emit(&self, event: NetEvent) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                tracing::warn!(?event, "network event queue full; event dropped")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::ListenAddrs { reply } => {
                let addrs: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
                if !addrs.is_empty() || self.open_listeners == 0 {
                    let _ = reply.send(Ok(addrs));
                } else {
                    self.pending_listen.push(reply);
                }
            }
            Command::StartProviding { reply } => self.start_providing(reply),
            Command::FindProviders { progress, reply } => self.find_providers(progress, reply),
            Command::Request {
                peer,
                envelope,
                reply,
            } => {
                if peer == self.local {
                    let _ = reply.send(Err(NetError::SelfRequest));
                } else if self.is_refused(&peer) {
                    let _ = reply.send(Err(NetError::NotMember { peer }));
                } else if self.members.contains(&peer) {
                    self.send_msg_request(peer, envelope, reply);
                } else {
                    self.wait_for_membership(peer, envelope, reply);
                }
            }
            Command::Respond {
                channel,
                envelope,
                reply,
            } => {
                let sent = self
                    .swarm
                    .behaviour_mut()
                    .msg
                    .send_response(channel.0, envelope);
                let _ = reply.send(sent.map_err(|_| NetError::ResponseChannelClosed));
            }
            Command::Status { reply } => {
                let mut members: Vec<PeerId> = self.members.iter().copied().collect();
                members.sort();
                let _ = reply.send(NetStatus {
                    peer_id: self.local,
                    listen_addrs: self.swarm.listeners().cloned().collect(),
                    connected: self.swarm.connected_peers().count(),
                    members,
                    refused_by: {
                        let mut v = self.refused_by.sorted();
                        v.extend(self.transport_refused_by.sorted());
                        v.sort();
                        v.dedup();
                        v
                    },
                    refused: self.refused.sorted(),
                    isolated: self.is_isolated(),
                    connected_members: self
                        .members
                        .iter()
                        .filter(|m| self.swarm.is_connected(m))
                        .count(),
                    dht: self.dht,
                    dht_role: self.dht_role,
                    rejected_connections: self.rejected_connections,
                    announce_pending: self.providing
                        && (self.reannounce_when_routable || !self.background_announces.is_empty()),
                    banned: self.offenses.banned(),
                });
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.on_identify(e),
            SwarmEvent::Behaviour(BehaviourEvent::Membership(e)) => self.on_membership(e),
            SwarmEvent::Behaviour(BehaviourEvent::Msg(e)) => self.on_msg(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => {
                tracing::trace!(peer = %e.peer, result = ?e.result, "ping")
            }
            SwarmEvent::Behaviour(BehaviourEvent::Blocked(never)) => match never {},
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                if self.is_refused(&peer_id) {
                    self.swarm.close_connection(connection_id);
                    return;
                }
                tracing::debug!(peer = %peer_id, ?endpoint, "connection established");
                self.on_not_isolated();
                if self.dht == DhtKind::Public
                    && !self.bootstrapped
                    && self.bootstrap_peers.contains(&peer_id)
                {
                    // Fill the routing table from the public DHT (on a private one this waits
                    // for the first member, see `add_member`).
                    match self.swarm.behaviour_mut().kad.bootstrap() {
                        Ok(_) => self.bootstrapped = true,
                        Err(e) => tracing::debug!("kademlia bootstrap deferred: {e}"),
                    }
                }
                self.reannounce_if_needed();
                if endpoint.is_dialer() {
                    self.book
                        .add(peer_id, endpoint.get_remote_address().clone());
                    if !self.members.contains(&peer_id) {
                        self.start_handshake(peer_id);
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                cause,
                num_established,
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                if num_established == 0 {
                    self.on_last_connection_closed(peer_id);
                    if self.providing && self.is_isolated() {
                        // Whoever held our record may be gone: announce again once we are back.
                        self.reannounce_when_routable = true;
                    }
                    self.arm_retry();
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                tracing::debug!(%peer, "dial failed: {error}");
                self.on_dial_error(peer, &error);
                if !self.swarm.is_connected(&peer) && self.waiting.contains_key(&peer) {
                    let reason = error.to_string();
                    self.fail_waiting(peer, |peer| NetError::Dial {
                        peer,
                        reason: reason.clone(),
                    });
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                // On a private network this is mostly a non-member without the network key:
                // its bytes decrypt to garbage and the upgrade fails. Count every one, log a
                // few (an outsider can make as many as it likes).
                self.rejected_connections = self.rejected_connections.saturating_add(1);
                if let Some(held_back) = self.rejected_log.check(Instant::now()) {
                    tracing::warn!(
                        from = %send_back_addr,
                        dht = ?self.dht,
                        held_back,
                        "incoming connection failed before the transport handshake completed \
                         (a non-member without the network key?): {error}"
                    );
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if self.announce_listen_addrs {
                    for addr in dialable_addrs([address]) {
                        self.swarm.add_external_address(addr);
                    }
                    self.refresh_local_provider_record();
                }
                let addrs: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
                for reply in self.pending_listen.drain(..) {
                    let _ = reply.send(Ok(addrs.clone()));
                }
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                tracing::warn!(?addresses, ?reason, "listener closed");
                self.open_listeners = self.open_listeners.saturating_sub(1);
                if self.open_listeners == 0 {
                    for reply in self.pending_listen.drain(..) {
                        let _ =
                            reply.send(Err(NetError::Transport("every listener closed".into())));
                    }
                }
            }
            SwarmEvent::ListenerError { error, .. } => tracing::warn!("listener error: {error}"),
            SwarmEvent::NewExternalAddrOfPeer { peer_id, address } => {
                if !self.is_refused(&peer_id) {
                    self.book.add(peer_id, address);
                }
            }
            other => tracing::trace!(?other, "swarm event"),
        }
    }

    /// Routes `/leasewire/membership/1.0.0` traffic to the handshake state machine.
    fn on_membership(&mut self, event: request_response::Event<Frame, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request: Frame::Data(request),
                    channel,
                    ..
                } => self.on_membership_request(peer, request, channel),
                request_response::Message::Request {
                    request: Frame::Malformed(reason),
                    channel,
                    ..
                } => {
                    drop(channel);
                    self.bad_message(peer, format!("malformed membership frame: {reason}"), true);
                }
                request_response::Message::Request {
                    request: Frame::Truncated,
                    channel,
                    ..
                } => {
                    drop(channel);
                    self.bad_message(peer, "membership frame cut short".into(), false);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_membership_response(request_id, response),
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => self.on_membership_failure(request_id, error),
            other => tracing::debug!(?other, "membership protocol event"),
        }
    }

    /// Drops a misbehaving peer's message and connection, and reports it. An `offense`
    /// (oversized frame, forged or undecodable envelope, oversized field: nothing an honest
    /// peer sends) also counts towards a ban; a stale or undecidable envelope (a bad clock, an
    /// honest peer's own flood) or a frame cut short (a lost connection looks the same) does
    /// not.
    pub(crate) fn bad_message(&mut self, peer: PeerId, reason: String, offense: bool) {
        tracing::warn!(%peer, offense, "dropping bad message, disconnecting: {reason}");
        let _ = self.swarm.disconnect_peer_id(peer);
        if offense {
            let (verdict, lifted) = self.offenses.offend(peer, Instant::now());
            if let Some(old) = lifted
                && !self.is_refused(&old)
            {
                self.swarm.behaviour_mut().blocked.unblock_peer(old);
            }
            if let Verdict::Banned(until) = verdict {
                let secs = until.saturating_duration_since(Instant::now()).as_secs();
                if !self
                    .swarm
                    .behaviour()
                    .blocked
                    .blocked_peers()
                    .contains(&peer)
                {
                    tracing::warn!(%peer, secs, "peer banned for repeated offenses");
                    self.swarm.behaviour_mut().blocked.block_peer(peer);
                    self.members.remove(&peer);
                    self.emit(NetEvent::PeerBanned {
                        peer,
                        secs,
                        reason: reason.clone(),
                    });
                }
            }
        }
        self.emit(NetEvent::BadMessage { peer, reason });
    }

    /// Lifts ended bans (a refused peer stays blocked).
    fn lift_ended_bans(&mut self) {
        for peer in self.offenses.expire(Instant::now()) {
            if !self.is_refused(&peer) {
                tracing::info!(%peer, "ban ended");
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            }
        }
    }
}
