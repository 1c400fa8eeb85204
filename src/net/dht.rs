//! DHT side of the event loop: provider records under the topic key, provider lookups, and
//! the addresses Kademlia and identify teach us.
//!
//! On a private network only members enter the routing table (`BucketInserts::Manual`, see
//! [`super::behaviour`]); addresses of other peers are kept in the address book so a request
//! can dial them. On the public DHT Kademlia fills its table itself.
//!
//! Our own provider record is stored with an explicit address list ([`dialable_addrs`] of our
//! external addresses): left empty, Kademlia would answer lookups with our listen and external
//! addresses chained, which lists every announced listen address twice.

use std::collections::HashSet;

use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, GetProvidersOk, ProviderRecord, QueryResult, RecordKey};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{PeerId, identify};

use tokio::sync::mpsc;

use super::event_loop::{EventLoop, PendingFind, Reply};
use super::{DhtKind, NetError, dialable_addrs};

impl EventLoop {
    /// Publishes our provider record; answered when the query completes.
    pub(crate) fn start_providing(&mut self, reply: Reply<()>) {
        let key = RecordKey::new(&self.topic.dht_key);
        match self.swarm.behaviour_mut().kad.start_providing(key) {
            Ok(id) => {
                self.providing = true;
                // With an empty routing table the query reaches nobody: announce again as soon
                // as a peer is routable (see `reannounce_if_needed`).
                self.reannounce_when_routable = !self.has_routable_peer();
                self.refresh_local_provider_record();
                self.pending_providing.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(NetError::Dht(e.to_string())));
            }
        }
    }

    /// True if Kademlia's routing table holds at least one peer to send queries to.
    fn has_routable_peer(&mut self) -> bool {
        self.swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .any(|b| b.num_entries() > 0)
    }

    /// Announces our provider record again, without a caller waiting, if the last announce
    /// reached nobody and a DHT peer is routable now. Called when a member joins, a connection
    /// opens and the routing table gains a peer: a provider whose first announce ran before it
    /// met its bootstrap peer is then findable at once instead of at its next timed
    /// re-announce.
    pub(crate) fn reannounce_if_needed(&mut self) {
        if !self.providing
            || !self.reannounce_when_routable
            || self.is_isolated()
            || !self.has_routable_peer()
        {
            return;
        }
        self.reannounce_when_routable = false;
        let key = RecordKey::new(&self.topic.dht_key);
        match self.swarm.behaviour_mut().kad.start_providing(key) {
            Ok(id) => {
                tracing::debug!("a DHT peer is routable: announcing again");
                self.background_announces.insert(id);
            }
            Err(e) => tracing::debug!("cannot announce again: {e}"),
        }
    }

    /// Replaces our own provider record's addresses with our deduplicated, dialable external
    /// addresses (see the module documentation). A no-op until we provide.
    pub(crate) fn refresh_local_provider_record(&mut self) {
        if !self.providing {
            return;
        }
        let addrs = dialable_addrs(self.swarm.external_addresses().cloned());
        if addrs.is_empty() {
            return;
        }
        let record = ProviderRecord::new(RecordKey::new(&self.topic.dht_key), self.local, addrs);
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .add_provider(record)
        {
            tracing::debug!("cannot update our provider record: {e}");
        }
    }

    /// Looks up the topic's providers; answered when the query completes.
    /// Each new provider also goes to `progress` as soon as Kademlia reports it.
    pub(crate) fn find_providers(
        &mut self,
        progress: Option<mpsc::UnboundedSender<PeerId>>,
        reply: Reply<HashSet<PeerId>>,
    ) {
        let key = RecordKey::new(&self.topic.dht_key);
        let id = self.swarm.behaviour_mut().kad.get_providers(key);
        self.pending_find.insert(
            id,
            PendingFind {
                found: HashSet::new(),
                progress,
                reply,
            },
        );
    }

    /// Dials newly found providers while their lookup is still running: Kademlia knows their
    /// addresses (from the provider records) only for the life of the query, and the caller
    /// will want to talk to them anyway. The connection also runs the membership handshake.
    fn connect_to_providers(&mut self, providers: HashSet<PeerId>) {
        for peer in providers {
            if peer == self.local || self.is_refused(&peer) || self.swarm.is_connected(&peer) {
                continue;
            }
            let opts = DialOpts::peer_id(peer)
                .addresses(self.book.get(&peer))
                .extend_addresses_through_behaviour()
                .build();
            match self.swarm.dial(opts) {
                Ok(()) => tracing::debug!(%peer, "dialing provider"),
                Err(e) => tracing::debug!(%peer, "cannot dial provider: {e}"),
            }
        }
    }

    /// Handles Kademlia events: query progress for parked commands, peer addresses.
    pub(crate) fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
            } => match result {
                QueryResult::StartProviding(res) => {
                    let background = self.background_announces.remove(&id);
                    let reply = self.pending_providing.remove(&id);
                    if !background && reply.is_none() {
                        return;
                    }
                    tracing::debug!(
                        ?res,
                        reached = stats.num_successes(),
                        background,
                        "start providing finished"
                    );
                    if stats.num_successes() == 0 {
                        // Nobody holds our record: try again when the routing table changes.
                        self.reannounce_when_routable = true;
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(res.map(|_| ()).map_err(|_| NetError::Timeout));
                    }
                }
                QueryResult::GetProviders(res) => {
                    if !self.pending_find.contains_key(&id) {
                        return;
                    }
                    // Kademlia reports providers as it meets them: each new one goes to the
                    // caller's progress channel at once; the answer comes once the query is
                    // over, with everything found.
                    let (done, timed_out) = match res {
                        Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                            let fresh: Vec<PeerId> = providers
                                .iter()
                                .copied()
                                .filter(|p| *p != self.local && !self.is_refused(p))
                                .collect();
                            if let Some(pending) = self.pending_find.get_mut(&id) {
                                for peer in fresh {
                                    if pending.found.insert(peer)
                                        && let Some(progress) = &pending.progress
                                    {
                                        let _ = progress.send(peer);
                                    }
                                }
                            }
                            self.connect_to_providers(providers);
                            (step.last, false)
                        }
                        Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => (true, false),
                        Err(e) => {
                            tracing::debug!("provider lookup: {e}");
                            (true, true)
                        }
                    };
                    if !(done || step.last) {
                        return;
                    }
                    let Some(PendingFind {
                        mut found, reply, ..
                    }) = self.pending_find.remove(&id)
                    else {
                        return;
                    };
                    found.retain(|p| *p != self.local && !self.is_refused(p));
                    let answer = if timed_out && found.is_empty() {
                        Err(NetError::Timeout)
                    } else {
                        Ok(found)
                    };
                    let _ = reply.send(answer);
                }
                other => tracing::debug!(?other, "kademlia query progressed"),
            },
            kad::Event::RoutingUpdated {
                peer, addresses, ..
            } => {
                for addr in addresses.iter() {
                    self.book.add(peer, addr.clone());
                }
                self.reannounce_if_needed();
            }
            kad::Event::RoutablePeer { peer, address }
            | kad::Event::PendingRoutablePeer { peer, address } => {
                if self.is_refused(&peer) {
                    return;
                }
                self.book.add(peer, address.clone());
                if self.members.contains(&peer) && self.dht == DhtKind::Private {
                    self.swarm.behaviour_mut().kad.add_address(&peer, address);
                }
            }
            other => tracing::debug!(?other, "kademlia event"),
        }
    }

    /// Records the listen addresses a peer announces (and routes members through them).
    pub(crate) fn on_identify(&mut self, event: identify::Event) {
        if let identify::Event::Received { peer_id, info, .. } = event {
            if self.is_refused(&peer_id) {
                return;
            }
            tracing::debug!(peer = %peer_id, agent = %info.agent_version, "identified");
            let member = self.members.contains(&peer_id) && self.dht == DhtKind::Private;
            for addr in dialable_addrs(info.listen_addrs) {
                if self.book.add(peer_id, addr.clone()) && member {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
        }
    }
}
