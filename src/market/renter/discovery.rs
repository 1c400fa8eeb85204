//! Discovery: DHT lookup, hello, offer verification, ranking; and what this renter has seen of
//! each provider (deliveries, failures), which ranking uses and which drops a provider that
//! stopped answering from the offer list.

use super::*;

/// What this renter has seen of one provider, kept durably (sled tree `renter_providers`,
/// keyed by PeerId). Payments still waiting for their lease are not stored here: they are
/// read from the payment records when ranking.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderHistory {
    /// Leases it issued to us that we received and applied.
    #[serde(default)]
    pub leases_delivered: u32,
    /// Top-ups it credited that we received.
    #[serde(default)]
    pub topups_delivered: u32,
    /// Times it stopped answering (a run of failed requests, timeouts or unreachable, counts
    /// once: a provider down for an hour of discovery passes is one failure, not hundreds).
    #[serde(default)]
    pub failures: u32,
    /// Failed requests since it last answered; 0 once it answers.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// When a request to it last failed, unix seconds (0: never).
    #[serde(default)]
    pub last_failure_at: u64,
    /// Tunnel checks (AutoPay's `Tunnel::verify`: handshake and probe) that passed.
    #[serde(default)]
    pub checks_ok: u32,
    /// Tunnel checks that failed (no recent handshake, or the probe went unanswered).
    #[serde(default)]
    pub checks_failed: u32,
}

/// At most this many offers are fetched from providers at once in a discovery pass.
pub const FETCH_CONCURRENCY: usize = 16;

/// Members asked for the offers they know in one discovery pass (those asked least recently).
const EXCHANGE_PEERS: usize = 2;

/// A provider this renter talked to is asked for its offer again after this long, even if
/// nothing says it changed: that is how a provider that stopped answering is noticed (and,
/// after `renter.drop_after_failures` failed requests in a row, dropped).
pub const RECHECK_SECS: u64 = 300;

/// An offer learned from another member (verified, but its provider never asked by us) is
/// fetched from its provider, which measures the round trip, only once it has been known this
/// long: a renter that just learned the whole market from its first member does not dial
/// every provider at once (nor do all the renters that started with it).
pub const MEASURE_AFTER_SECS: u64 = 30;

/// Ranking treats an offer whose round trip was never measured (learned from another member)
/// as this far away: it still ranks by price first, but a measured provider wins a tie.
const UNMEASURED_RTT: Duration = Duration::from_secs(10);

/// The wall clock in unix milliseconds (0 if it is before 1970): when an offer was first
/// verified, for measurement only.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The peers a receiver yields, as a stream that ends when every sender is dropped.
fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<PeerId>,
) -> impl futures::Stream<Item = PeerId> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl Renter {
    /// One discovery pass: looks the providers up on the DHT (fetching the offer of each
    /// provider we hold none from as soon as the lookup meets it), asks members for the signed
    /// offers they know (verified one by one: the relaying member is not trusted), then fetches
    /// (`hello`, at most [`FETCH_CONCURRENCY`] at once) the offers of the providers found on
    /// the DHT only where needed: not known yet, never asked ourselves (once known for
    /// [`MEASURE_AFTER_SECS`]), in a run of failures, close to expiry, or not heard from for
    /// [`RECHECK_SECS`]. Returns how many offers are
    /// known.
    ///
    /// # Errors
    /// When the DHT lookup fails (the offers learned so far are kept).
    pub async fn discover(&self) -> Result<usize, MarketError> {
        use futures::StreamExt as _;
        let now = self.now();
        self.inner.offer_cache.prune(now);
        // Providers we hold no offer from are asked as soon as the lookup meets them, not
        // once it is over (at most FETCH_CONCURRENCY at once).
        let (progress, arrivals) = tokio::sync::mpsc::unbounded_channel();
        let lookup = self.inner.peers.find_providers_each(progress);
        let early = tokio_stream_of(arrivals)
            .filter(|peer| {
                let unknown = *peer != self.inner.peer_id
                    && !self
                        .inner
                        .offers
                        .lock()
                        .expect("offers lock not poisoned")
                        .contains_key(&peer.to_string());
                std::future::ready(unknown)
            })
            .map(|peer| async move {
                if let Err(e) = self.fetch_offer(peer).await {
                    tracing::debug!(%peer, error = %e, "no offer from peer");
                }
                peer
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .collect::<HashSet<PeerId>>();
        let (found, fetched) = futures::future::join(lookup, early).await;
        let found: Vec<PeerId> = match found {
            Ok(found) => found
                .into_iter()
                .filter(|p| *p != self.inner.peer_id)
                .collect(),
            Err(e) => {
                self.learn_from_cache().await;
                return Err(e);
            }
        };
        self.exchange(&found).await;
        self.learn_from_cache().await;
        let mut due = self.fetch_due(&found);
        // Asked moments ago in this pass: an answer is fresh, a failure is counted already.
        due.retain(|p| !fetched.contains(p));
        self.fetch_offers(due).await;
        let now = self.now();
        self.inner
            .offers
            .lock()
            .expect("offers lock not poisoned")
            .retain(|_, o| o.offer.expires_at > now);
        Ok(self.known_offers().len())
    }

    /// We met `peer` (it passed the membership handshake): unless this node has just asked
    /// other members ([`OfferCache::should_pull_on_meeting`]), asks it for the offers it knows
    /// and lists them at once. Returns whether a discovery pass should follow now: when it
    /// asked, learned nothing (the member failed, or knew no offer we lack) and lists no
    /// offer, so the DHT is the way on. When the member did share offers, the DHT walk and the exchanges with other
    /// members wait for the next timed pass (`discovery_interval_secs`): a renter that just
    /// learned the market does not also dial every provider its walk meets, while every other
    /// renter that started with it is still asking. A member that withheld offers is caught
    /// at that pass, which asks two other members.
    pub async fn met(&self, peer: PeerId) -> bool {
        if !self.inner.offer_cache.should_pull_on_meeting(self.now()) {
            return false;
        }
        let learned = match self.pull_from(peer).await {
            Ok(report) => report.new + report.updated,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "member did not share its offers");
                0
            }
        };
        self.learn_from_cache().await;
        learned == 0 && self.known_offers().is_empty()
    }

    /// Lists the offers of the cache this renter does not list yet (or lists at a lower
    /// `seq`): after something else filled the cache.
    pub async fn learn_offers(&self) {
        self.learn_from_cache().await;
    }

    /// The offer cache this renter learns into.
    pub fn offer_cache(&self) -> &OfferCache {
        &self.inner.offer_cache
    }

    /// Asks up to [`EXCHANGE_PEERS`] of `found` (those asked least recently) for the offers
    /// they know, concurrently.
    async fn exchange(&self, found: &[PeerId]) {
        let chosen: Vec<PeerId> = {
            let pulled = self.inner.pulled.lock().expect("pulled lock not poisoned");
            let mut by_age: Vec<(u64, PeerId)> = found
                .iter()
                .map(|p| (pulled.get(p).copied().unwrap_or(0), *p))
                .collect();
            by_age.sort();
            by_age
                .into_iter()
                .take(EXCHANGE_PEERS)
                .map(|(_, p)| p)
                .collect()
        };
        let pulls = chosen.into_iter().map(|peer| async move {
            if let Err(e) = self.pull_from(peer).await {
                tracing::debug!(%peer, error = %e, "member did not share its offers");
            }
        });
        futures::future::join_all(pulls).await;
    }

    /// One exchange with `peer`. Its failures do not count against it as a provider: it may
    /// be an older node that does not serve `offersRequest`, and its `hello` tells.
    async fn pull_from(
        &self,
        peer: PeerId,
    ) -> Result<super::super::offers::PullReport, MarketError> {
        {
            let mut pulled = self.inner.pulled.lock().expect("pulled lock not poisoned");
            // Bounded like the offer cache: past it, the rotation simply starts over.
            if pulled.len() >= super::super::offers::DEFAULT_CAPACITY {
                pulled.clear();
            }
            pulled.insert(peer, self.now());
        }
        let clock = self.inner.clock.clone();
        let now = move || clock.now_unix();
        let report = super::super::offers::pull(
            self.inner.peers.as_ref(),
            &self.inner.offer_cache,
            peer,
            &now,
        )
        .await?;
        tracing::debug!(%peer, received = report.received, new = report.new,
            updated = report.updated, rejected = report.rejected.len(), "offers exchanged");
        if !report.rejected.is_empty() && self.inner.refusals.admit(peer, self.now()) {
            // A member relaying offers that do not verify: worth one entry per exchange (not
            // per offer), and the offers are simply not kept.
            let (first_id, first_why) = &report.rejected[0];
            self.audit(
                AuditKind::PeerRefused,
                json!({"peer": peer.to_string(), "reason": format!(
                    "relayed {} offer(s) that fail verification (first: {first_id}: {first_why})",
                    report.rejected.len())}),
            )
            .await;
        }
        Ok(report)
    }

    /// Brings the offers of the cache into the offer list: a provider not listed yet, or
    /// listed at a lower `seq`, takes the cached offer (keeping the round trip measured
    /// earlier). New providers and changed offers are audited, in one batch.
    async fn learn_from_cache(&self) {
        let now = self.now();
        let cached = self.inner.offer_cache.snapshot(now);
        let mut changes = Vec::new();
        {
            let mut offers = self.inner.offers.lock().expect("offers lock not poisoned");
            for c in cached {
                if c.offer.provider == self.inner.peer_id.to_string() {
                    continue;
                }
                let previous = offers.get(&c.offer.provider);
                if previous.is_some_and(|p| p.offer.seq >= c.offer.seq) {
                    continue;
                }
                let known = KnownOffer {
                    peer: c.offer.provider.clone(),
                    offer_id: c.offer_id,
                    rtt: previous.map(|p| p.rtt).unwrap_or_default(),
                    offer: c.offer,
                    signed: c.signed,
                    seen_at: now,
                    first_verified_ms: previous.map_or_else(wall_ms, |p| p.first_verified_ms),
                };
                let is_new = previous.is_none();
                if let Some(old) = offers.insert(known.peer.clone(), known.clone()) {
                    self.note_superseded(&old);
                }
                changes.push((is_new, known));
            }
        }
        self.audit_changes(changes).await;
    }

    /// Audits new providers (`peer_discovered`) and new offer versions (`offer_seen`), with one
    /// flush for all of them.
    async fn audit_changes(&self, changes: Vec<(bool, KnownOffer)>) {
        if changes.is_empty() {
            return;
        }
        let mut entries = Vec::with_capacity(changes.len() * 2);
        for (is_new, k) in changes {
            if is_new {
                entries.push((AuditKind::PeerDiscovered, json!({"peer": k.peer})));
            }
            entries.push((
                AuditKind::OfferSeen,
                json!({"peer": k.peer, "offer_id": k.offer_id,
                       "seq": k.offer.seq, "terms": k.offer.terms}),
            ));
        }
        if let Err(e) = self.inner.audit.append_batch(entries).await {
            tracing::error!(error = %e, "audit append failed");
        }
    }

    /// The providers of `found` whose offer needs fetching (see [`Renter::discover`]).
    fn fetch_due(&self, found: &[PeerId]) -> Vec<PeerId> {
        let now = self.now();
        let histories = self.inner.providers.all().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read provider history");
            Vec::new()
        });
        let failing: HashSet<String> = histories
            .into_iter()
            .filter(|(_, h)| h.consecutive_failures > 0)
            .map(|(p, _)| p)
            .collect();
        let offers = self.inner.offers.lock().expect("offers lock not poisoned");
        found
            .iter()
            .filter(|peer| {
                let id = peer.to_string();
                let Some(o) = offers.get(&id) else {
                    return true;
                };
                let lifetime = o.offer.expires_at.saturating_sub(o.offer.created_at);
                let refresh_at = o.offer.expires_at.saturating_sub((lifetime / 4).max(60));
                (o.rtt.is_zero() && now >= o.seen_at.saturating_add(MEASURE_AFTER_SECS))
                    || failing.contains(&id)
                    || now >= refresh_at
                    || now >= o.seen_at.saturating_add(RECHECK_SECS)
            })
            .copied()
            .collect()
    }

    /// Fetches the offers of `peers`, at most [`FETCH_CONCURRENCY`] at once.
    async fn fetch_offers(&self, peers: Vec<PeerId>) {
        use futures::StreamExt as _;
        futures::stream::iter(peers)
            .map(|peer| async move {
                if let Err(e) = self.fetch_offer(peer).await {
                    tracing::debug!(%peer, error = %e, "no offer from peer");
                }
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
    }

    /// Asks `peer` itself for its offer (`hello`), verifies it, measures the round trip, and
    /// keeps it (in the offer list and the cache).
    pub(super) async fn fetch_offer(&self, peer: PeerId) -> Result<KnownOffer, MarketError> {
        let hello = Message::Hello(Hello::ours(false, true, &self.inner.network));
        let (reply, rtt) = self.ask(peer, hello).await?;
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
                // A provider whose offer keeps failing is asked again every pass: audited at
                // most once a minute.
                if self.inner.refusals.admit(peer, self.now()) {
                    self.audit(
                        AuditKind::PeerRefused,
                        json!({"peer": peer.to_string(), "reason": e.to_string()}),
                    )
                    .await;
                }
                return Err(e);
            }
        };
        if let Err(e) = self.inner.offer_cache.insert(signed.clone(), self.now()) {
            tracing::debug!(%peer, error = %e, "offer not cached");
        }
        let (previous, known) = {
            let mut offers = self.inner.offers.lock().expect("offers lock not poisoned");
            let first_verified_ms = offers
                .get(&peer.to_string())
                .map_or_else(wall_ms, |p| p.first_verified_ms);
            let known = KnownOffer {
                peer: peer.to_string(),
                offer_id: signed.id(),
                offer,
                signed,
                rtt,
                seen_at: self.now(),
                first_verified_ms,
            };
            (offers.insert(known.peer.clone(), known.clone()), known)
        };
        match previous {
            None => self.audit_changes(vec![(true, known.clone())]).await,
            Some(p) if p.offer_id != known.offer_id => {
                self.note_superseded(&p);
                self.audit_changes(vec![(false, known.clone())]).await
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
        super::super::offers::verify_offer(signed, Some(&peer), &self.inner.network, self.now())
            .map_err(|e| MarketError::BadSigned {
                what: "offer",
                reason: e.to_string(),
            })
    }

    /// Known offers, best first for `credit` (default credit when `None`), for the configured
    /// sizes and filters; offers that cannot serve them (or fail a filter) follow, unranked.
    /// Ranking uses this renter's history with each provider; a provider that failed
    /// `renter.drop_after_failures` requests in a row is left out until it answers again.
    pub fn offers(&self, credit: Option<Sats>) -> Vec<KnownOffer> {
        let cfg = &self.inner.cfg;
        let (usable, _) = self.usable_offers(credit, cfg.sizes(), &cfg.filters());
        let mut ranked: Vec<KnownOffer> = usable.into_iter().map(|(o, _)| o).collect();
        let rest: Vec<KnownOffer> = self
            .known_offers()
            .into_iter()
            .filter(|o| !ranked.iter().any(|r| r.offer_id == o.offer_id))
            .collect();
        ranked.extend(rest);
        ranked
    }

    /// Remembers that `old` was replaced, so `rent --offer <old id>` can still find its
    /// provider's current offer ([`Renter::current_for_superseded`]).
    fn note_superseded(&self, old: &KnownOffer) {
        let mut map = self
            .inner
            .superseded
            .lock()
            .expect("superseded lock not poisoned");
        if map.len() >= MAX_SUPERSEDED {
            map.clear();
        }
        map.insert(
            old.offer_id.clone(),
            (old.peer.clone(), sale_terms(&old.offer)),
        );
    }

    /// The current offer that replaced the offer `id` names (a full id or a prefix), if it
    /// sells exactly what that one did: same provider, keys, endpoint, network, terms and
    /// sizes with their prices. Only availability, `seq` and dates may differ.
    pub(super) fn current_for_superseded(&self, id: &str) -> Option<KnownOffer> {
        let (peer, old) = {
            let map = self
                .inner
                .superseded
                .lock()
                .expect("superseded lock not poisoned");
            let mut matching = map
                .iter()
                .filter(|(k, _)| k.as_str() == id || k.starts_with(id));
            let (_, found) = matching.next()?;
            // An ambiguous prefix names nothing.
            if matching.next().is_some() {
                return None;
            }
            found.clone()
        };
        let current = self
            .inner
            .offers
            .lock()
            .expect("offers lock not poisoned")
            .get(&peer)
            .cloned()?;
        (sale_terms(&current.offer) == old).then_some(current)
    }

    /// Every known offer of a provider that is not dropped.
    fn known_offers(&self) -> Vec<KnownOffer> {
        let histories = self.histories();
        self.inner
            .offers
            .lock()
            .expect("offers lock not poisoned")
            .values()
            .filter(|o| {
                !histories
                    .get(&o.peer)
                    .is_some_and(|h| self.dropped(h.consecutive_failures))
            })
            .cloned()
            .collect()
    }

    /// The known offers that serve `asked` and pass `filters`, best first for `credit`
    /// (default credit when `None`) at their effective terms for `asked` (returned with each),
    /// and how many offers each filter left out.
    pub(super) fn usable_offers(
        &self,
        credit: Option<Sats>,
        asked: Sizes,
        filters: &Filters,
    ) -> (Vec<(KnownOffer, crate::types::Terms)>, select::Tally) {
        let credit = credit.unwrap_or(self.inner.cfg.default_credit_sat);
        let histories = self.histories();
        let mut tally = select::Tally::default();
        let mut admitted: Vec<(KnownOffer, crate::types::Terms)> = Vec::new();
        for o in self.known_offers() {
            match select::admit(&o.offer, &o.peer, asked, filters) {
                Ok(terms) => {
                    tally.count(Ok(()));
                    admitted.push((o, terms));
                }
                Err(why) => tally.count(Err(&why)),
            }
        }
        let cands: Vec<select::Candidate<'_>> = admitted
            .iter()
            .map(|(o, terms)| select::Candidate {
                offer_id: &o.offer_id,
                terms,
                rtt: if o.rtt.is_zero() {
                    UNMEASURED_RTT
                } else {
                    o.rtt
                },
                available: true,
                history: histories.get(&o.peer).copied().unwrap_or_default(),
            })
            .collect();
        let order: Vec<String> = select::rank(&cands, credit)
            .into_iter()
            .map(|c| c.offer_id.to_owned())
            .collect();
        let ranked = order
            .iter()
            .filter_map(|id| admitted.iter().find(|(o, _)| &o.offer_id == id).cloned())
            .collect();
        (ranked, tally)
    }

    /// Whether a provider with `consecutive` failed requests in a row is dropped.
    fn dropped(&self, consecutive: u32) -> bool {
        let limit = self.inner.cfg.drop_after_failures;
        limit > 0 && consecutive >= limit
    }

    /// What ranking needs to know of each provider this renter has dealt with: the stored
    /// history plus the payments still waiting for their lease.
    fn histories(&self) -> HashMap<String, select::History> {
        let mut out: HashMap<String, select::History> = HashMap::new();
        match self.inner.providers.all() {
            Ok(all) => {
                for (peer, h) in all {
                    out.insert(
                        peer,
                        // A verified tunnel is service delivered; a failed check, service
                        // missed.
                        select::History {
                            delivered: h
                                .leases_delivered
                                .saturating_add(h.topups_delivered)
                                .saturating_add(h.checks_ok),
                            failures: h.failures.saturating_add(h.checks_failed),
                            consecutive_failures: h.consecutive_failures,
                            undelivered: 0,
                        },
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read provider history; ranking without it")
            }
        }
        match self.open_payments() {
            Ok(open) => {
                for p in open {
                    let h = out.entry(p.provider).or_default();
                    h.undelivered = h.undelivered.saturating_add(1);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read payments; ranking without them"),
        }
        // A provider whose audit log forked or rolled back (witness evidence) is demoted like
        // one that holds a payment without delivering.
        match self.inner.witness.evidence() {
            Ok(found) => {
                for e in found {
                    let h = out.entry(e.peer).or_default();
                    h.undelivered = h.undelivered.max(1);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read witness evidence"),
        }
        out
    }

    /// This renter's history with every provider it has dealt with, by PeerId.
    ///
    /// # Errors
    /// When the history cannot be read.
    pub fn provider_history(&self) -> Result<Vec<(String, ProviderHistory)>, MarketError> {
        Ok(self.inner.providers.all()?)
    }

    /// Sends a request to a provider and keeps its record: a request that fails on the way
    /// (timeout, unreachable) counts against it; any answer, even a refusal, clears its run of
    /// failures. Every request of the renter goes through here (hello, rent, top-up,
    /// paymentResult, status).
    pub(super) async fn ask(
        &self,
        peer: PeerId,
        msg: Message,
    ) -> Result<(Message, Duration), MarketError> {
        let result = self.inner.peers.request(peer, msg).await;
        match &result {
            Ok(_) => self.note_answer(&peer.to_string()).await,
            Err(MarketError::Net(e)) => self.note_failure(&peer.to_string(), e).await,
            Err(_) => {}
        }
        result
    }

    /// A provider answered: its run of failures ends (written only when there was one).
    async fn note_answer(&self, peer: &str) {
        let had_run = match self.inner.providers.get(peer) {
            Ok(h) => h.is_some_and(|h| h.consecutive_failures > 0),
            Err(e) => {
                tracing::warn!(peer, error = %e, "cannot read provider history");
                false
            }
        };
        if !had_run {
            return;
        }
        let updated = self
            .inner
            .providers
            .update(peer, |cur| {
                let mut h = cur.cloned().unwrap_or_default();
                h.consecutive_failures = 0;
                Ok(Some(h))
            })
            .await;
        match updated {
            Ok(_) => tracing::info!(peer, "provider answers again; ranked normally"),
            Err(e) => tracing::warn!(peer, error = %e, "cannot store provider history"),
        }
    }

    /// A request to a provider failed on the way: counted; after `drop_after_failures` in a
    /// row its offer leaves the offer list (audited as `peer_refused`).
    async fn note_failure(&self, peer: &str, error: &str) {
        let now = self.now();
        let updated = self
            .inner
            .providers
            .update(peer, |cur| {
                let mut h = cur.cloned().unwrap_or_default();
                if h.consecutive_failures == 0 {
                    h.failures = h.failures.saturating_add(1);
                }
                h.consecutive_failures = h.consecutive_failures.saturating_add(1);
                h.last_failure_at = now;
                Ok(Some(h))
            })
            .await;
        let h = match updated {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(peer, error = %e, "cannot store provider history");
                return;
            }
        };
        let limit = self.inner.cfg.drop_after_failures;
        if limit > 0 && h.consecutive_failures == limit {
            // Its offer stays known (the offer list leaves dropped providers out), so that the
            // exchange does not bring it back as a newly discovered provider every pass.
            let removed = self
                .inner
                .offers
                .lock()
                .expect("offers lock not poisoned")
                .get(peer)
                .cloned();
            tracing::warn!(peer, failures = h.consecutive_failures, %error,
                "provider failed to answer {limit} requests in a row; dropped from the offer list \
                 until it answers again");
            self.audit(
                AuditKind::PeerRefused,
                json!({"peer": peer, "reason": format!(
                    "dropped from the offer list: {limit} requests in a row failed (last: {error})"),
                    "offer_id": removed.map(|o| o.offer_id)}),
            )
            .await;
        } else {
            tracing::info!(peer, failures = h.consecutive_failures, %error,
                "request to provider failed; ranked lower until it answers");
        }
    }

    /// Counts the outcome of a tunnel check of a lease from this provider.
    pub(super) async fn note_check(&self, peer: &str, ok: bool) {
        let updated = self
            .inner
            .providers
            .update(peer, |cur| {
                let mut h = cur.cloned().unwrap_or_default();
                if ok {
                    h.checks_ok = h.checks_ok.saturating_add(1);
                } else {
                    h.checks_failed = h.checks_failed.saturating_add(1);
                }
                Ok(Some(h))
            })
            .await;
        if let Err(e) = updated {
            tracing::warn!(peer, error = %e, "cannot store provider history");
        }
    }

    /// Counts a lease (or a top-up) this provider delivered.
    pub(super) async fn note_delivered(&self, peer: &str, topup: bool) {
        let updated = self
            .inner
            .providers
            .update(peer, |cur| {
                let mut h = cur.cloned().unwrap_or_default();
                if topup {
                    h.topups_delivered = h.topups_delivered.saturating_add(1);
                } else {
                    h.leases_delivered = h.leases_delivered.saturating_add(1);
                }
                Ok(Some(h))
            })
            .await;
        if let Err(e) = updated {
            tracing::warn!(peer, error = %e, "cannot store provider history");
        }
    }

    pub(super) async fn fetch_offer_str(&self, peer: &str) -> Result<KnownOffer, MarketError> {
        let peer: PeerId = peer
            .parse()
            .map_err(|_| MarketError::Invalid("bad peer id".into()))?;
        self.fetch_offer(peer).await
    }
}

/// Most replaced offer ids remembered (see `Inner::superseded`).
pub(super) const MAX_SUPERSEDED: usize = 4096;

/// What an offer sells, without what changes as it sells (availability) or as it is re-signed
/// (`seq`, dates): two offers with equal `sale_terms` sell the same thing at the same price.
pub(super) fn sale_terms(offer: &Offer) -> Offer {
    let mut o = offer.clone();
    o.seq = 0;
    o.created_at = 0;
    o.expires_at = 0;
    for size in o.ipv4.iter_mut().chain(o.ipv6.iter_mut()) {
        size.available = 0;
    }
    o
}
