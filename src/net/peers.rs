//! Peer bookkeeping of the event loop: the address book, the membership handshake state
//! machine, refusals, and requests waiting for a handshake.
//!
//! Membership steps (docs/PROTOCOL.md):
//! 1. the dialer of a new connection to a non-member sends Noise message 1
//!    ([`EventLoop::start_handshake`]); a request waiting for a peer we are connected to but
//!    that never started one makes us start it too;
//! 2. the responder checks it ([`EventLoop::on_membership_request`]): success makes the
//!    initiator a member and answers message 2; failure refuses the initiator;
//! 3. the initiator checks message 2 ([`EventLoop::on_membership_response`]); a bad answer, or
//!    none (the responder drops the stream and the connection), refuses the responder. On the
//!    public DHT a responder that does not serve the membership protocol at all is a DHT-only
//!    peer (an IPFS node): it is not a member, and not refused either.
//!
//! A refused peer is blocked (connections closed now and denied later), leaves the DHT
//! routing table and the address book, and its waiting requests fail with `NotMember`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use libp2p::multiaddr::Protocol;
use libp2p::request_response::{OutboundFailure, ResponseChannel};
use libp2p::{Multiaddr, PeerId};

use super::codec::Frame;
use super::event_loop::{EventLoop, Reply};
use super::membership::{self, Initiator, MembershipError};
use super::{DhtKind, NetError, NetEvent};
use crate::wire::messages::Message;

/// Most addresses remembered per peer; identify data is peer-controlled, so it is bounded.
const MAX_ADDRS_PER_PEER: usize = 8;

/// Most peers remembered as refused, per direction. PeerIds cost nothing to make, so an
/// outsider could otherwise grow the refusal sets (and the block list) without bound; past the
/// limit the oldest refusal is forgotten and that peer may try (and fail) again.
const MAX_REFUSED: usize = 4096;

/// A bounded set of refused peers, oldest evicted first.
#[derive(Debug, Default)]
pub(crate) struct RefusedSet {
    set: HashSet<PeerId>,
    order: VecDeque<PeerId>,
}

impl RefusedSet {
    pub(crate) fn contains(&self, peer: &PeerId) -> bool {
        self.set.contains(peer)
    }

    /// Adds `peer`; returns whether it is new and the peer evicted to make room, if any.
    pub(crate) fn insert(&mut self, peer: PeerId) -> (bool, Option<PeerId>) {
        if !self.set.insert(peer) {
            return (false, None);
        }
        self.order.push_back(peer);
        let evicted = if self.order.len() > MAX_REFUSED {
            let old = self.order.pop_front();
            if let Some(old) = old {
                self.set.remove(&old);
            }
            old
        } else {
            None
        };
        (true, evicted)
    }

    /// Forgets `peer`; returns whether it was there.
    pub(crate) fn remove(&mut self, peer: &PeerId) -> bool {
        if !self.set.remove(peer) {
            return false;
        }
        self.order.retain(|p| p != peer);
        true
    }

    /// The refused peers, sorted.
    pub(crate) fn sorted(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self.set.iter().copied().collect();
        v.sort();
        v
    }
}

/// Known dialable addresses of peers, most recent last.
#[derive(Debug, Default)]
pub(crate) struct AddressBook {
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
}

impl AddressBook {
    /// Remembers `addr` for `peer` (a trailing `/p2p/..` is stripped). Returns true if new.
    pub(crate) fn add(&mut self, peer: PeerId, mut addr: Multiaddr) -> bool {
        if let Some(Protocol::P2p(_)) = addr.iter().last() {
            addr.pop();
        }
        if addr.is_empty() {
            return false;
        }
        let list = self.addrs.entry(peer).or_default();
        if list.contains(&addr) {
            return false;
        }
        if list.len() >= MAX_ADDRS_PER_PEER {
            list.remove(0);
        }
        list.push(addr);
        true
    }

    /// Addresses of `peer` (empty if unknown).
    pub(crate) fn get(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.addrs.get(peer).cloned().unwrap_or_default()
    }

    /// Forgets `peer`.
    pub(crate) fn remove(&mut self, peer: &PeerId) {
        self.addrs.remove(peer);
    }
}

/// A request waiting for the membership handshake with its peer.
pub(crate) struct Waiting {
    pub(crate) envelope: Vec<u8>,
    pub(crate) reply: Reply<(Message, std::time::Duration)>,
    pub(crate) deadline: Instant,
}

impl EventLoop {
    /// True if `peer` failed a handshake with us, either way.
    pub(crate) fn is_refused(&self, peer: &PeerId) -> bool {
        self.refused.contains(peer) || self.refused_by.contains(peer)
    }

    /// Sends Noise message 1 to `peer` unless a handshake of ours with it is in flight.
    pub(crate) fn start_handshake(&mut self, peer: PeerId) {
        if self.handshaking.contains(&peer) || self.is_refused(&peer) {
            return;
        }
        match Initiator::start(&self.topic.membership_key, &self.local, &peer) {
            Ok((state, message1)) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .membership
                    .send_request(&peer, Frame::Data(message1));
                tracing::debug!(%peer, "membership handshake started");
                self.pending_handshakes.insert(id, (peer, state));
                self.handshaking.insert(peer);
            }
            // A local fault (no randomness?): nothing the peer did; try again next connection.
            Err(e) => tracing::error!(%peer, "cannot start membership handshake: {e}"),
        }
    }

    /// Answers (or refuses) a peer's Noise message 1.
    pub(crate) fn on_membership_request(
        &mut self,
        peer: PeerId,
        message1: Vec<u8>,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        if self.is_refused(&peer) {
            // Blocked peers' connections are closed; this can only be a late stream.
            drop(channel);
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        match membership::respond(&self.topic.membership_key, &peer, &self.local, &message1) {
            Ok(message2) => {
                if self
                    .swarm
                    .behaviour_mut()
                    .membership
                    .send_response(channel, message2)
                    .is_err()
                {
                    tracing::debug!(%peer, "membership answer not sent: stream closed");
                }
                self.add_member(peer);
            }
            Err(MembershipError::Noise(e)) => {
                // Our own fault, not the peer's: do not refuse it; it may retry.
                drop(channel);
                tracing::error!(%peer, "cannot answer membership handshake: {e}");
            }
            Err(e) => {
                // Send nothing: an answer would only tell an outsider its guess was checked.
                drop(channel);
                tracing::warn!(%peer, "refusing membership handshake: {e}");
                self.refuse(peer, true, e.to_string());
            }
        }
    }

    /// Checks the responder's Noise message 2.
    pub(crate) fn on_membership_response(
        &mut self,
        id: libp2p::request_response::OutboundRequestId,
        message2: Vec<u8>,
    ) {
        let Some((peer, state)) = self.pending_handshakes.remove(&id) else {
            return;
        };
        self.handshaking.remove(&peer);
        match state.finish(&message2) {
            Ok(()) => self.add_member(peer),
            Err(e) => {
                tracing::warn!(%peer, "peer's membership answer is invalid: {e}");
                self.refuse(peer, false, e.to_string());
            }
        }
    }

    /// Our handshake got no answer.
    pub(crate) fn on_membership_failure(
        &mut self,
        id: libp2p::request_response::OutboundRequestId,
        error: OutboundFailure,
    ) {
        let Some((peer, _)) = self.pending_handshakes.remove(&id) else {
            return;
        };
        self.handshaking.remove(&peer);
        if self.dht == DhtKind::Public && matches!(error, OutboundFailure::UnsupportedProtocols) {
            // A plain DHT peer (an IPFS node, another Kademlia implementation, a bootstrap
            // peer): not a member, but it routes our DHT queries and may hold our provider
            // records, so it keeps its connection and its routing-table entry. Blocking it would
            // cut the node off the public DHT. It can send us no market message either way.
            tracing::debug!(%peer, "peer does not speak leasewire: a DHT-only peer");
            for w in self.waiting.remove(&peer).unwrap_or_default() {
                let _ = w.reply.send(Err(NetError::NotMember { peer }));
            }
            return;
        }
        tracing::warn!(%peer, "membership handshake failed: {error}");
        self.refuse(peer, false, format!("no membership answer: {error}"));
    }

    /// Records a successful handshake: DHT routing, bootstrap, waiting requests.
    fn add_member(&mut self, peer: PeerId) {
        if self.members.insert(peer) {
            tracing::info!(%peer, "member joined");
            self.emit(NetEvent::MemberJoined { peer });
        }
        self.on_not_isolated();
        self.transport_refused_by.remove(&peer);
        // On a private network members, and only members, enter the routing table (Manual
        // bucket inserts). On the public DHT Kademlia adds every peer that serves it; a member
        // is added too, so the market's own peers route even if they are DHT clients.
        for addr in self.book.get(&peer) {
            self.swarm.behaviour_mut().kad.add_address(&peer, addr);
        }
        if !self.bootstrapped {
            match self.swarm.behaviour_mut().kad.bootstrap() {
                Ok(_) => self.bootstrapped = true,
                // The member has no known address yet; identify will add it and the next
                // member (or Kademlia's periodic bootstrap) fills the table.
                Err(e) => tracing::debug!("kademlia bootstrap deferred: {e}"),
            }
        }
        for w in self.waiting.remove(&peer).unwrap_or_default() {
            self.send_msg_request(peer, w.envelope, w.reply);
        }
        self.reannounce_if_needed();
    }

    /// Refuses `peer` for the life of the loop (see the module documentation).
    pub(crate) fn refuse(&mut self, peer: PeerId, by_us: bool, reason: String) {
        let (newly, evicted) = if by_us {
            self.refused.insert(peer)
        } else {
            self.refused_by.insert(peer)
        };
        if let Some(old) = evicted
            && !self.is_refused(&old)
            && !self.offenses.is_banned(&old, Instant::now())
        {
            self.swarm.behaviour_mut().blocked.unblock_peer(old);
        }
        self.members.remove(&peer);
        self.handshaking.remove(&peer);
        self.book.remove(&peer);
        let behaviour = self.swarm.behaviour_mut();
        behaviour.kad.remove_peer(&peer);
        // Closes every connection with the peer and denies new ones, in both directions.
        behaviour.blocked.block_peer(peer);
        for w in self.waiting.remove(&peer).unwrap_or_default() {
            let _ = w.reply.send(Err(NetError::NotMember { peer }));
        }
        if newly {
            tracing::info!(%peer, by_us, "membership refused: {reason}");
            self.emit(NetEvent::MembershipRefused {
                peer,
                by_us,
                reason,
            });
        }
    }

    /// Queues a request until the handshake with `peer` completes, dialing it if needed.
    pub(crate) fn wait_for_membership(
        &mut self,
        peer: PeerId,
        envelope: Vec<u8>,
        reply: Reply<(Message, std::time::Duration)>,
    ) {
        let deadline = Instant::now() + self.request_timeout;
        self.waiting.entry(peer).or_default().push(Waiting {
            envelope,
            reply,
            deadline,
        });
        if self.swarm.is_connected(&peer) {
            // Normally the dialer's handshake is already under way; if it never comes (the
            // dialer thinks we are members already, e.g. it kept state we lost), run our own.
            self.start_handshake(peer);
            return;
        }
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(self.book.get(&peer))
            .extend_addresses_through_behaviour()
            .build();
        match self.swarm.dial(opts) {
            Ok(()) => tracing::debug!(%peer, "dialing"),
            // Already dialing: the waiting request rides on that attempt.
            Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {}
            Err(e) => self.fail_waiting(peer, |peer| NetError::Dial {
                peer,
                reason: e.to_string(),
            }),
        }
    }

    /// Membership is proven per connection: once the last one closes, the peer must prove it
    /// again on the next (a restarted peer has forgotten our handshake, and would refuse our
    /// requests if we skipped it). Forgets the addresses of a peer that never joined, so peers
    /// that connect without joining cannot grow the address book; members' addresses are kept
    /// to dial them again.
    pub(crate) fn on_last_connection_closed(&mut self, peer: PeerId) {
        let was_member = self.members.remove(&peer);
        if was_member {
            tracing::debug!(%peer, "last connection closed; membership to be proven again");
        }
        if !was_member && !self.waiting.contains_key(&peer) && !self.bootstrap_peers.contains(&peer)
        {
            self.book.remove(&peer);
        }
    }

    /// Fails every request waiting for `peer`.
    pub(crate) fn fail_waiting(&mut self, peer: PeerId, err: impl Fn(PeerId) -> NetError) {
        for w in self.waiting.remove(&peer).unwrap_or_default() {
            let _ = w.reply.send(Err(err(peer)));
        }
    }

    /// Fails waiting requests whose handshake did not complete in time.
    pub(crate) fn sweep_waiting(&mut self) {
        let now = Instant::now();
        self.waiting.retain(|peer, list| {
            let (expired, kept): (Vec<_>, Vec<_>) = list.drain(..).partition(|w| w.deadline <= now);
            for w in expired {
                tracing::debug!(%peer, "no membership handshake in time");
                let _ = w.reply.send(Err(NetError::NotMember { peer: *peer }));
            }
            *list = kept;
            !list.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_book_strips_peer_id_dedups_and_is_bounded() {
        let peer = PeerId::random();
        let mut book = AddressBook::default();
        let with_id: Multiaddr = format!("/ip4/192.0.2.1/tcp/4001/p2p/{peer}")
            .parse()
            .unwrap();
        assert!(book.add(peer, with_id));
        assert!(!book.add(peer, "/ip4/192.0.2.1/tcp/4001".parse().unwrap()));
        assert_eq!(
            book.get(&peer),
            vec!["/ip4/192.0.2.1/tcp/4001".parse::<Multiaddr>().unwrap()]
        );
        for port in 0..20u16 {
            book.add(
                peer,
                format!("/ip4/198.51.100.7/tcp/{port}").parse().unwrap(),
            );
        }
        let addrs = book.get(&peer);
        assert_eq!(addrs.len(), MAX_ADDRS_PER_PEER);
        // The newest are kept.
        assert_eq!(
            addrs.last().unwrap().to_string(),
            "/ip4/198.51.100.7/tcp/19"
        );
        book.remove(&peer);
        assert!(book.get(&peer).is_empty());
    }

    #[test]
    fn refused_set_evicts_oldest_past_the_limit() {
        let mut set = RefusedSet::default();
        let first = PeerId::random();
        assert_eq!(set.insert(first), (true, None));
        assert_eq!(set.insert(first), (false, None));
        for _ in 1..MAX_REFUSED {
            assert_eq!(set.insert(PeerId::random()).1, None);
        }
        let (new, evicted) = set.insert(PeerId::random());
        assert!(new);
        assert_eq!(evicted, Some(first));
        assert!(!set.contains(&first));
        assert_eq!(set.sorted().len(), MAX_REFUSED);
        let last = *set.order.back().unwrap();
        assert!(set.remove(&last));
        assert!(!set.remove(&last));
        assert!(!set.contains(&last));
        assert_eq!(set.order.len(), MAX_REFUSED - 1);
    }
}
