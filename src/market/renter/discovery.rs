//! Discovery: DHT lookup, hello, offer verification, ranking.

use super::*;

impl Renter {
    /// Looks for providers and refreshes their offers. Returns how many offers are known.
    pub async fn discover(&self) -> Result<usize, MarketError> {
        let peers = self.inner.peers.find_providers().await?;
        for peer in peers {
            if peer == self.inner.peer_id {
                continue;
            }
            if let Err(e) = self.fetch_offer(peer).await {
                tracing::debug!(%peer, error = %e, "no offer from peer");
            }
        }
        let now = self.now();
        let mut offers = self.inner.offers.lock().expect("offers lock not poisoned");
        offers.retain(|_, o| o.offer.expires_at > now);
        Ok(offers.len())
    }

    pub(super) async fn fetch_offer(&self, peer: PeerId) -> Result<KnownOffer, MarketError> {
        let hello = Message::Hello(Hello::ours(false, true, &self.inner.network));
        let (reply, rtt) = self.inner.peers.request(peer, hello).await?;
        let signed = match reply {
            Message::Offer(o) => o,
            Message::Hello(_) => {
                return Err(MarketError::NoOffer(format!("{peer} is not a provider")));
            }
            Message::Error(e) => {
                return Err(MarketError::Refused {
                    code: e.code,
                    message: e.message,
                });
            }
            other => {
                return Err(MarketError::Unexpected {
                    expected: "offer",
                    got: other.name(),
                });
            }
        };
        let offer = match self.check_offer(peer, &signed) {
            Ok(o) => o,
            Err(e) => {
                self.audit(
                    AuditKind::PeerRefused,
                    json!({"peer": peer.to_string(), "reason": e.to_string()}),
                )
                .await;
                return Err(e);
            }
        };
        let known = KnownOffer {
            peer: peer.to_string(),
            offer_id: signed.id(),
            offer,
            signed,
            rtt,
            seen_at: self.now(),
        };
        let previous = self
            .inner
            .offers
            .lock()
            .expect("offers lock not poisoned")
            .insert(known.peer.clone(), known.clone());
        match previous {
            None => {
                self.audit(AuditKind::PeerDiscovered, json!({"peer": known.peer}))
                    .await;
                self.audit(
                    AuditKind::OfferSeen,
                    json!({"peer": known.peer, "offer_id": known.offer_id,
                    "seq": known.offer.seq, "terms": known.offer.terms}),
                )
                .await;
            }
            Some(p) if p.offer_id != known.offer_id => {
                self.audit(
                    AuditKind::OfferSeen,
                    json!({"peer": known.peer, "offer_id": known.offer_id,
                    "seq": known.offer.seq, "terms": known.offer.terms}),
                )
                .await;
            }
            Some(_) => {}
        }
        Ok(known)
    }

    pub(super) fn check_offer(
        &self,
        peer: PeerId,
        signed: &Signed<Offer>,
    ) -> Result<Offer, MarketError> {
        let bad = |reason: String| MarketError::BadSigned {
            what: "offer",
            reason,
        };
        let offer = signed.verify_from(&peer).map_err(|e| bad(e.to_string()))?;
        if offer.provider != peer.to_string() {
            return Err(bad("offer names another provider".into()));
        }
        if offer.expires_at <= self.now() {
            return Err(bad("offer expired".into()));
        }
        if offer.network != self.inner.network {
            return Err(bad(format!(
                "offer is for network {}, we use {}",
                offer.network, self.inner.network
            )));
        }
        offer.terms.validate().map_err(|e| bad(e.to_string()))?;
        Ok(offer)
    }

    /// Known offers, best first for `credit` (default credit when `None`).
    pub fn offers(&self, credit: Option<Sats>) -> Vec<KnownOffer> {
        let credit = credit.unwrap_or(self.inner.cfg.default_credit_sat);
        let all: Vec<KnownOffer> = self
            .inner
            .offers
            .lock()
            .expect("offers lock not poisoned")
            .values()
            .cloned()
            .collect();
        let cands: Vec<select::Candidate<'_>> = all
            .iter()
            .map(|o| select::Candidate {
                offer_id: &o.offer_id,
                terms: &o.offer.terms,
                rtt: o.rtt,
                available: self.serves(&o.offer),
            })
            .collect();
        let order: Vec<String> = select::rank(&cands, credit)
            .into_iter()
            .map(|c| c.offer_id.to_owned())
            .collect();
        let mut ranked: Vec<KnownOffer> = order
            .iter()
            .filter_map(|id| all.iter().find(|o| &o.offer_id == id).cloned())
            .collect();
        // Offers that cannot serve us stay visible, after the others.
        ranked.extend(all.iter().filter(|o| !order.contains(&o.offer_id)).cloned());
        ranked
    }

    /// Whether the offer has prefixes of the sizes we want.
    pub(super) fn serves(&self, offer: &Offer) -> bool {
        let has = |list: &[crate::wire::PrefixAvailability], len: Option<u8>| match len {
            None => true,
            Some(l) => list.iter().any(|a| a.prefix_len == l && a.available > 0),
        };
        has(&offer.ipv4, self.inner.cfg.ipv4_prefix_len)
            && has(&offer.ipv6, self.inner.cfg.ipv6_prefix_len)
    }

    pub(super) async fn fetch_offer_str(&self, peer: &str) -> Result<KnownOffer, MarketError> {
        let peer: PeerId = peer
            .parse()
            .map_err(|_| MarketError::Invalid("bad peer id".into()))?;
        self.fetch_offer(peer).await
    }
}
