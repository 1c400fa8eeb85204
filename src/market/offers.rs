//! The offer cache every member keeps and serves, and the exchange that fills it.
//!
//! The DHT is where members meet, not the catalogue: libp2p-kad keeps 20 provider records per
//! key, so past a few dozen providers a DHT lookup alone hides some of them. Members therefore
//! exchange the signed offers they know (`offersRequest` / `offers`): a node that meets its
//! first member learns the whole market from it. Offers travel exactly as their providers
//! signed them; whoever receives one verifies it (signature, signer = `provider`, unexpired,
//! our network, sane terms and sizes) before keeping it, so a relaying peer can drop offers but
//! never forge or alter one.
//!
//! The cache keeps one offer per provider (the highest `seq` wins), drops expired ones, and is
//! bounded ([`DEFAULT_CAPACITY`]): when full, the offer that expires first makes room for one
//! that expires later.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;

use super::{MarketError, Peers};
use crate::wire::{
    KnownSeq, MAX_KNOWN_SEQS, MAX_OFFERS_PAGE_BYTES, MAX_OFFERS_PER_PAGE, Message, Offer, Offers,
    OffersRequest, Signed,
};

/// Offers kept by default (one per provider).
pub const DEFAULT_CAPACITY: usize = 10_000;

/// At most this many pages are asked of one member in one exchange (bounds a peer that keeps
/// answering `next`).
pub const MAX_PAGES_PER_PULL: usize = 64;

/// Members met within [`PULL_WINDOW_SECS`] that are asked for their offers.
pub const PULLS_ON_MEETING: usize = 2;

/// See [`PULLS_ON_MEETING`].
pub const PULL_WINDOW_SECS: u64 = 60;

/// Why a signed offer was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OfferRejected {
    /// The signature does not verify or the body does not decode.
    #[error("bad signature or encoding: {0}")]
    BadSignature(String),
    /// The signer is not the provider the offer names (or not the peer that should sign it).
    #[error("offer names another provider")]
    WrongSigner,
    /// The offer has expired.
    #[error("offer expired")]
    Expired,
    /// The offer is for another Lightning network.
    #[error("offer is for network {got}, we use {ours}")]
    WrongNetwork {
        /// The offer's network.
        got: String,
        /// Ours.
        ours: String,
    },
    /// Its terms or size lists are not sane.
    #[error("{0}")]
    BadTerms(String),
    /// The cache is full of offers that all outlive this one.
    #[error("offer cache full")]
    Full,
}

/// Verifies a signed offer as anyone receiving it must: signature, signer = the offer's
/// `provider` (and = `expected` when given: the peer it was asked of), unexpired at `now`,
/// `network`, sane terms and size lists. Returns the decoded offer.
///
/// # Errors
/// [`OfferRejected`] saying which check failed.
pub fn verify_offer(
    signed: &Signed<Offer>,
    expected: Option<&PeerId>,
    network: &str,
    now: u64,
) -> Result<Offer, OfferRejected> {
    let offer = match expected {
        Some(peer) => signed.verify_from(peer),
        None => signed.verify(),
    }
    .map_err(|e| match e {
        crate::wire::signed::WireError::WrongSigner { .. } => OfferRejected::WrongSigner,
        e => OfferRejected::BadSignature(e.to_string()),
    })?;
    let signer = signed
        .signer_peer_id()
        .map_err(|e| OfferRejected::BadSignature(e.to_string()))?;
    if offer.provider != signer.to_string() {
        return Err(OfferRejected::WrongSigner);
    }
    if offer.expires_at <= now {
        return Err(OfferRejected::Expired);
    }
    if offer.network != network {
        return Err(OfferRejected::WrongNetwork {
            got: offer.network,
            ours: network.to_owned(),
        });
    }
    match offer.terms.validate() {
        // A base rate of 0 is fine when every size has a price (checked below).
        Ok(()) | Err(crate::types::TermsError::ZeroRate) => {}
        Err(e) => return Err(OfferRejected::BadTerms(e.to_string())),
    }
    super::sizes::validate_sizes(&offer.terms, &offer.ipv4, &offer.ipv6)
        .map_err(|e| OfferRejected::BadTerms(e.to_string()))?;
    Ok(offer)
}

/// A verified offer held by the cache.
#[derive(Clone, Debug)]
pub struct CachedOffer {
    /// As signed by its provider.
    pub signed: Signed<Offer>,
    /// Decoded and verified.
    pub offer: Offer,
    /// Its offer id.
    pub offer_id: String,
}

/// What [`OfferCache::insert`] did with a verified offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// The first offer of this provider in the cache.
    New,
    /// Replaced this provider's offer of a lower `seq` (given).
    Updated(u64),
    /// The cache already held this `seq` or a higher one: nothing changed.
    Unchanged,
}

struct State {
    network: String,
    capacity: usize,
    /// When this node last started exchanges prompted by meeting a member (unix seconds).
    recent_pulls: std::collections::VecDeque<u64>,
    /// By provider PeerId (text): sorted, which pages `offers` answers.
    by_provider: BTreeMap<String, CachedOffer>,
}

/// A bounded cache of verified offers, one per provider. Cheap to clone (shared).
#[derive(Clone)]
pub struct OfferCache {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for OfferCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfferCache")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl OfferCache {
    /// An empty cache for offers on `network`, holding at most `capacity` (at least 1).
    pub fn new(network: &str, capacity: usize) -> OfferCache {
        OfferCache {
            state: Arc::new(Mutex::new(State {
                network: network.to_owned(),
                capacity: capacity.max(1),
                recent_pulls: std::collections::VecDeque::new(),
                by_provider: BTreeMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("offer cache lock not poisoned")
    }

    /// Verifies `signed` ([`verify_offer`], with no expected signer: it may be relayed) and
    /// keeps it unless the cache holds this provider's offer at the same or a higher `seq`.
    ///
    /// # Errors
    /// [`OfferRejected`] when it fails verification, or [`OfferRejected::Full`].
    pub fn insert(&self, signed: Signed<Offer>, now: u64) -> Result<Inserted, OfferRejected> {
        let network = self.lock().network.clone();
        // Verified outside the lock: signature checks are the expensive part.
        let offer = verify_offer(&signed, None, &network, now)?;
        let offer_id = signed.id();
        let mut st = self.lock();
        let previous = st.by_provider.get(&offer.provider).map(|c| c.offer.seq);
        match previous {
            Some(seq) if seq >= offer.seq => return Ok(Inserted::Unchanged),
            Some(_) => {}
            None if st.by_provider.len() >= st.capacity => {
                st.by_provider.retain(|_, c| c.offer.expires_at > now);
                if st.by_provider.len() >= st.capacity {
                    // Room is made by the offer that expires first, if it expires before
                    // this one; otherwise this one is the least useful.
                    let first = st
                        .by_provider
                        .iter()
                        .min_by_key(|(_, c)| c.offer.expires_at)
                        .map(|(p, c)| (p.clone(), c.offer.expires_at));
                    match first {
                        Some((p, at)) if at < offer.expires_at => {
                            st.by_provider.remove(&p);
                        }
                        _ => return Err(OfferRejected::Full),
                    }
                }
            }
            None => {}
        }
        st.by_provider.insert(
            offer.provider.clone(),
            CachedOffer {
                signed,
                offer,
                offer_id,
            },
        );
        Ok(match previous {
            Some(seq) => Inserted::Updated(seq),
            None => Inserted::New,
        })
    }

    /// The offer held for `provider`, if any.
    pub fn get(&self, provider: &str) -> Option<CachedOffer> {
        self.lock().by_provider.get(provider).cloned()
    }

    /// Every offer held that is unexpired at `now`, by provider.
    pub fn snapshot(&self, now: u64) -> Vec<CachedOffer> {
        self.lock()
            .by_provider
            .values()
            .filter(|c| c.offer.expires_at > now)
            .cloned()
            .collect()
    }

    /// Drops the offers expired at `now`; returns how many are left.
    pub fn prune(&self, now: u64) -> usize {
        let mut st = self.lock();
        st.by_provider.retain(|_, c| c.offer.expires_at > now);
        st.by_provider.len()
    }

    /// Forgets `provider`'s offer.
    pub fn remove(&self, provider: &str) {
        self.lock().by_provider.remove(provider);
    }

    /// Whether to ask a member just met for its offers: yes for the first
    /// [`PULLS_ON_MEETING`] members met within [`PULL_WINDOW_SECS`], no after that (a node that
    /// dials many providers would otherwise run one exchange per connection). Counts the pull.
    pub fn should_pull_on_meeting(&self, now: u64) -> bool {
        let mut st = self.lock();
        while st
            .recent_pulls
            .front()
            .is_some_and(|t| t.saturating_add(PULL_WINDOW_SECS) <= now)
        {
            st.recent_pulls.pop_front();
        }
        if st.recent_pulls.len() >= PULLS_ON_MEETING {
            return false;
        }
        st.recent_pulls.push_back(now);
        true
    }

    /// Whether the asker of `req` holds an offer this cache lacks or holds at a lower `seq`
    /// (its `known` list says so): then it is worth asking it back ([`PullBacks`]). This is how
    /// a member that others pull from (a bootstrap peer, say) learns of every member that asks
    /// it, without pulling from each member it meets.
    pub fn asker_knows_more(&self, req: &OffersRequest) -> bool {
        let st = self.lock();
        req.known.iter().take(MAX_KNOWN_SEQS).any(|k| {
            st.by_provider
                .get(&k.provider)
                .is_none_or(|c| c.offer.seq < k.seq)
        })
    }

    /// Number of offers held (expired ones included until [`OfferCache::prune`]).
    pub fn len(&self) -> usize {
        self.lock().by_provider.len()
    }

    /// Whether the cache holds no offer.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The request for the page of `(after, end]` (`after` empty: from the first; `end`
    /// `None`: no bound): what we hold in that range, cut at [`MAX_KNOWN_SEQS`] entries (then
    /// `until` bounds the request to the last one listed; the asker goes on from there).
    pub fn request_range(&self, after: &str, end: Option<&str>) -> OffersRequest {
        let st = self.lock();
        let upper = end.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Included);
        let range = st
            .by_provider
            .range::<str, _>((std::ops::Bound::Excluded(after), upper))
            .map(|(p, c)| KnownSeq {
                provider: p.clone(),
                seq: c.offer.seq,
            });
        let mut known: Vec<KnownSeq> = range.take(MAX_KNOWN_SEQS + 1).collect();
        let until = if known.len() > MAX_KNOWN_SEQS {
            known.truncate(MAX_KNOWN_SEQS);
            known.last().map(|k| k.provider.clone()).unwrap_or_default()
        } else {
            end.unwrap_or_default().to_owned()
        };
        OffersRequest {
            after: after.to_owned(),
            until,
            known,
        }
    }

    /// The request for the page after `after` (empty: the first): what we hold past it, cut
    /// at [`MAX_KNOWN_SEQS`] entries (then `until` bounds the range to the last one listed).
    pub fn request_after(&self, after: &str) -> OffersRequest {
        self.request_range(after, None)
    }

    /// The answer to `req`: the unexpired offers in its range that the asker lacks (or holds
    /// at a lower `seq`), ascending by provider, one page of at most [`MAX_OFFERS_PER_PAGE`]
    /// offers and about [`MAX_OFFERS_PAGE_BYTES`] bytes. A request whose `known` list is too
    /// long is served as if it listed only its first [`MAX_KNOWN_SEQS`] entries.
    pub fn answer(&self, req: &OffersRequest, now: u64) -> Offers {
        let known: std::collections::HashMap<&str, u64> = req
            .known
            .iter()
            .take(MAX_KNOWN_SEQS)
            .map(|k| (k.provider.as_str(), k.seq))
            .collect();
        let st = self.lock();
        let upper = if req.until.is_empty() {
            std::ops::Bound::Unbounded
        } else {
            std::ops::Bound::Included(req.until.as_str())
        };
        let mut offers = Vec::new();
        let mut bytes = 0usize;
        let mut last: Option<&String> = None;
        let mut full = false;
        for (p, c) in st
            .by_provider
            .range::<str, _>((std::ops::Bound::Excluded(req.after.as_str()), upper))
        {
            if c.offer.expires_at <= now || known.get(p.as_str()).is_some_and(|s| *s >= c.offer.seq)
            {
                continue;
            }
            let size = c.signed.body.len() + c.signed.sig.len() + c.signed.signer.len() + 16;
            if offers.len() >= MAX_OFFERS_PER_PAGE
                || (!offers.is_empty() && bytes + size > MAX_OFFERS_PAGE_BYTES)
            {
                full = true;
                break;
            }
            bytes += size;
            offers.push(c.signed.clone());
            last = Some(p);
        }
        let next = if full {
            // The page is full: the asker continues after the last provider sent.
            last.cloned()
        } else if !req.until.is_empty() {
            // The range asked for ends at `until`: the asker goes on from there.
            Some(req.until.clone())
        } else {
            None
        };
        Offers { offers, next }
    }
}

/// A member whose `offersRequest` shows it knows more than we do is pulled from at most once
/// per this many seconds (a peer cannot make us pull in a loop by listing offers it lacks).
pub const PULL_BACK_EVERY_SECS: u64 = 10;

/// Peers remembered by [`PullBacks`] (past it, the oldest are forgotten).
pub const PULL_BACK_PEERS: usize = 4096;

/// Which askers to pull from in return: at most once per [`PULL_BACK_EVERY_SECS`] each, at
/// most [`PULL_BACKS_AT_ONCE`] running and [`PULL_BACKS_WAITING`] waiting for a turn. An asker
/// asks once (when it meets us), so a pull-back is queued rather than dropped while others run:
/// a bootstrap peer met by a batch of newcomers at once still learns every one of them.
#[derive(Debug)]
pub struct PullBacks {
    last: Mutex<std::collections::HashMap<PeerId, u64>>,
    running: Arc<tokio::sync::Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
}

/// Pull-backs running at once on one node.
pub const PULL_BACKS_AT_ONCE: usize = 8;

/// Pull-backs waiting for a turn on one node; past it, new ones are dropped.
pub const PULL_BACKS_WAITING: usize = 1024;

impl Default for PullBacks {
    fn default() -> Self {
        PullBacks {
            last: Mutex::new(std::collections::HashMap::new()),
            running: Arc::new(tokio::sync::Semaphore::new(PULL_BACKS_AT_ONCE)),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

/// A turn to pull back from one asker: held while the pull runs.
#[derive(Debug)]
pub struct PullBackTurn {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl PullBacks {
    /// Waits for a turn to pull from `peer`; `None` (at once) if it was pulled from in the last
    /// [`PULL_BACK_EVERY_SECS`], or if [`PULL_BACKS_WAITING`] pull-backs already wait.
    pub async fn admit(&self, peer: PeerId, now: u64) -> Option<PullBackTurn> {
        use std::sync::atomic::Ordering;
        {
            let mut last = self.last.lock().expect("pull-back lock not poisoned");
            if last
                .get(&peer)
                .is_some_and(|t| now < t.saturating_add(PULL_BACK_EVERY_SECS))
            {
                return None;
            }
            if self.waiting.load(Ordering::Acquire) >= PULL_BACKS_WAITING {
                return None;
            }
            if last.len() >= PULL_BACK_PEERS {
                last.retain(|_, t| now < t.saturating_add(PULL_BACK_EVERY_SECS));
                if last.len() >= PULL_BACK_PEERS {
                    last.clear();
                }
            }
            last.insert(peer, now);
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let permit = self.running.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        permit.ok().map(|p| PullBackTurn { _permit: p })
    }
}

/// A refusal of the same peer is audited at most once per this many seconds (the log line is
/// kept for every one): a peer that keeps failing the handshake must not fill the audit log.
pub const REFUSAL_AUDIT_EVERY_SECS: u64 = 60;

/// At most this many peers are remembered by [`RefusalAudits`]; beyond it the memory is
/// cleared (at worst one extra entry per peer).
const REFUSAL_PEERS_MAX: usize = 4096;

/// Rate-limits the audit entries of refusals, per peer.
#[derive(Debug, Default)]
pub struct RefusalAudits {
    last: Mutex<std::collections::HashMap<PeerId, u64>>,
}

impl RefusalAudits {
    /// Whether a refusal of `peer` at `now` is audited (and if so, remembers it).
    pub fn admit(&self, peer: PeerId, now: u64) -> bool {
        let mut last = self.last.lock().expect("refusal audits lock not poisoned");
        if last
            .get(&peer)
            .is_some_and(|t| now < t.saturating_add(REFUSAL_AUDIT_EVERY_SECS))
        {
            return false;
        }
        if last.len() >= REFUSAL_PEERS_MAX {
            last.clear();
        }
        last.insert(peer, now);
        true
    }
}

/// What one exchange with a member brought.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Offers received.
    pub received: usize,
    /// Offers of providers the cache did not hold.
    pub new: usize,
    /// Offers that replaced a lower `seq`.
    pub updated: usize,
    /// Offers refused (failed verification), with why: the peer relaying them is not trusted.
    pub rejected: Vec<(String, OfferRejected)>,
}

/// Where [`pull`] splits the PeerId space into ranges it asks for at once (each range
/// `(previous bound, bound]`, the last one open). PeerIds of ed25519 keys are
/// `12D3KooW` followed by base58 digits that spread over about `9`..`S`; any other PeerId
/// still falls in one of the ranges, so splitting only changes how many round trips one
/// exchange takes, never what it covers.
pub const PULL_RANGE_BOUNDS: [&str; 3] = ["12D3KooWD", "12D3KooWK", "12D3KooWQ"];

/// Asks `peer` for the offers it knows that `cache` lacks, and keeps those that verify. The
/// PeerId space is split at [`PULL_RANGE_BOUNDS`] and the ranges are asked for concurrently,
/// each page by page, at most [`MAX_PAGES_PER_PULL`] pages in all: a market of 200 offers
/// takes two round trips instead of seven. `now` reads the market clock.
///
/// # Errors
/// When a request fails or `peer` answers something else than `offers` (its refusal included,
/// e.g. an older node that does not serve `offersRequest`); offers from ranges that completed
/// are kept all the same.
pub async fn pull(
    peers: &dyn Peers,
    cache: &OfferCache,
    peer: PeerId,
    now: &(dyn Fn() -> u64 + Send + Sync),
) -> Result<PullReport, MarketError> {
    let pages = std::sync::atomic::AtomicUsize::new(0);
    let mut starts = vec![String::new()];
    starts.extend(PULL_RANGE_BOUNDS.iter().map(|b| (*b).to_owned()));
    let ends = PULL_RANGE_BOUNDS.iter().map(|b| Some(*b)).chain([None]);
    let chains = starts
        .into_iter()
        .zip(ends)
        .map(|(after, end)| pull_range(peers, cache, peer, now, after, end, &pages));
    let mut report = PullReport::default();
    let mut first_error = None;
    for r in futures::future::join_all(chains).await {
        match r {
            Ok(part) => {
                report.received += part.received;
                report.new += part.new;
                report.updated += part.updated;
                report.rejected.extend(part.rejected);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if report.received == 0 => Err(e),
        Some(e) => {
            tracing::debug!(%peer, error = %e, "part of an offer exchange failed");
            Ok(report)
        }
        None => Ok(report),
    }
}

/// One range of [`pull`]: pages of `(after, end]` until the answer's `next` reaches `end`
/// (or stops, or does not move forward), while `pages` (shared by the ranges) stays under
/// [`MAX_PAGES_PER_PULL`].
async fn pull_range(
    peers: &dyn Peers,
    cache: &OfferCache,
    peer: PeerId,
    now: &(dyn Fn() -> u64 + Send + Sync),
    mut after: String,
    end: Option<&str>,
    pages: &std::sync::atomic::AtomicUsize,
) -> Result<PullReport, MarketError> {
    let mut report = PullReport::default();
    while pages.fetch_add(1, std::sync::atomic::Ordering::AcqRel) < MAX_PAGES_PER_PULL {
        let req = cache.request_range(&after, end);
        let (reply, _) = peers.request(peer, Message::OffersRequest(req)).await?;
        let page = match reply {
            Message::Offers(page) => page,
            other => return Err(MarketError::wrong_answer(other, "offers")),
        };
        report.received += page.offers.len();
        for signed in page.offers {
            let id = signed.id();
            match cache.insert(signed, now()) {
                Ok(Inserted::New) => report.new += 1,
                Ok(Inserted::Updated(_)) => report.updated += 1,
                Ok(Inserted::Unchanged) => {}
                Err(e) => report.rejected.push((id, e)),
            }
        }
        match page.next {
            // A `next` that does not move forward would loop, and one at (or past) the end of
            // the range means the range is done.
            Some(n) if n > after && end.is_none_or(|e| n.as_str() < e) => after = n,
            _ => break,
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Terms, WgKey};
    use crate::wire::PrefixAvailability;
    use crate::wire::signed::peer_id_of;
    use ed25519_dalek::SigningKey;

    const NOW: u64 = 1_700_000_000;

    fn key(n: u32) -> SigningKey {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_be_bytes());
        b[31] = 1;
        SigningKey::from_bytes(&b)
    }

    fn offer_of(k: &SigningKey, seq: u64, expires_at: u64) -> Offer {
        Offer {
            provider: peer_id_of(&k.verifying_key()).to_string(),
            seq,
            created_at: NOW,
            expires_at,
            network: "regtest".into(),
            ln_pubkey: "02".to_owned() + &"11".repeat(32),
            wg_pubkey: WgKey([8; 32]),
            endpoint: "203.0.113.7:51820".into(),
            ipv4: vec![PrefixAvailability {
                prefix_len: 32,
                available: 3,
                rate_sat_per_day: 0,
            }],
            ipv6: Vec::new(),
            terms: Terms {
                activation_fee_sat: 1000,
                rate_sat_per_day: 100,
                min_initial_credit_sat: 700,
                min_topup_sat: 100,
                max_credit_sat: 100_000,
                reserve_days: 7,
                refund_unused: false,
                reservation_secs: 0,
            },
        }
    }

    fn signed(n: u32, seq: u64) -> Signed<Offer> {
        Signed::sign(&key(n), &offer_of(&key(n), seq, NOW + 3600)).unwrap()
    }

    #[test]
    fn asker_knows_more_when_it_lists_an_offer_we_lack_or_a_newer_seq() {
        let ours = OfferCache::new("regtest", 10);
        ours.insert(signed(1, 5), NOW).unwrap();
        let theirs = OfferCache::new("regtest", 10);
        theirs.insert(signed(1, 5), NOW).unwrap();
        // Same knowledge: nothing to pull back.
        assert!(!ours.asker_knows_more(&theirs.request_after("")));
        // An older version on their side: still nothing.
        let older = OfferCache::new("regtest", 10);
        older.insert(signed(1, 4), NOW).unwrap();
        assert!(!ours.asker_knows_more(&older.request_after("")));
        // A newer version, or a provider we lack: worth asking back.
        let newer = OfferCache::new("regtest", 10);
        newer.insert(signed(1, 6), NOW).unwrap();
        assert!(ours.asker_knows_more(&newer.request_after("")));
        theirs.insert(signed(2, 1), NOW).unwrap();
        assert!(ours.asker_knows_more(&theirs.request_after("")));
        // An empty asker knows nothing.
        let empty = OfferCache::new("regtest", 10);
        assert!(!ours.asker_knows_more(&empty.request_after("")));
    }

    /// A member that answers `offersRequest` from its cache and counts the requests.
    struct Member {
        cache: OfferCache,
        requests: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Peers for Member {
        async fn find_providers(&self) -> Result<Vec<PeerId>, MarketError> {
            Ok(Vec::new())
        }

        async fn request(
            &self,
            _peer: PeerId,
            msg: Message,
        ) -> Result<(Message, std::time::Duration), MarketError> {
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match msg {
                Message::OffersRequest(r) => Ok((
                    Message::Offers(self.cache.answer(&r, NOW)),
                    std::time::Duration::ZERO,
                )),
                other => Err(MarketError::Net(format!("unexpected {}", other.name()))),
            }
        }
    }

    #[tokio::test]
    async fn a_pull_asks_its_ranges_at_once_and_misses_nothing() {
        let member = Member {
            cache: OfferCache::new("regtest", 1000),
            requests: std::sync::atomic::AtomicUsize::new(0),
        };
        for n in 0..200 {
            member.cache.insert(signed(1000 + n, 1), NOW).unwrap();
        }
        // Offers on both sides of every bound, and the asker already holds a few.
        let mine = OfferCache::new("regtest", 1000);
        for n in 0..10 {
            mine.insert(signed(1000 + n, 1), NOW).unwrap();
        }
        let now = || NOW;
        let report = pull(&member, &mine, PeerId::random(), &now).await.unwrap();
        assert_eq!(report.new, 190);
        assert_eq!(report.received, 190);
        assert_eq!(mine.len(), 200);
        // Seven pages one after the other before; now each range takes about two.
        let asked = member.requests.load(std::sync::atomic::Ordering::SeqCst);
        assert!(asked <= 10, "{asked} requests");
        // Nothing left to send on a second pull: one empty page per range.
        let again = pull(&member, &mine, PeerId::random(), &now).await.unwrap();
        assert_eq!(again.received, 0);
    }

    #[test]
    fn a_range_request_lists_only_the_range_and_bounds_itself() {
        let c = OfferCache::new("regtest", 1000);
        for n in 0..60 {
            c.insert(signed(2000 + n, 1), NOW).unwrap();
        }
        let (lo, hi) = (PULL_RANGE_BOUNDS[0], PULL_RANGE_BOUNDS[1]);
        let req = c.request_range(lo, Some(hi));
        assert_eq!(req.after, lo);
        assert_eq!(req.until, hi);
        assert!(
            req.known
                .iter()
                .all(|k| k.provider.as_str() > lo && k.provider.as_str() <= hi)
        );
        let open = c.request_range(PULL_RANGE_BOUNDS[2], None);
        assert!(open.until.is_empty());
        let total: usize = [
            c.request_range("", Some(PULL_RANGE_BOUNDS[0])).known.len(),
            req.known.len(),
            c.request_range(hi, Some(PULL_RANGE_BOUNDS[2])).known.len(),
            open.known.len(),
        ]
        .iter()
        .sum();
        assert_eq!(total, 60);
    }

    #[tokio::test]
    async fn pull_backs_are_paced_per_peer_and_wait_their_turn() {
        let pb = Arc::new(PullBacks::default());
        let a = PeerId::random();
        let turn = pb.admit(a, NOW).await.expect("first pull-back");
        drop(turn);
        // Again within the window: refused, even with no pull running.
        assert!(pb.admit(a, NOW + PULL_BACK_EVERY_SECS - 1).await.is_none());
        assert!(pb.admit(a, NOW + PULL_BACK_EVERY_SECS).await.is_some());
        // At most PULL_BACKS_AT_ONCE run together; the next one waits (it is not dropped)
        // and runs once a running one ends.
        let mut turns = Vec::new();
        for _ in 0..PULL_BACKS_AT_ONCE {
            turns.push(pb.admit(PeerId::random(), NOW).await.expect("a free slot"));
        }
        let pb2 = pb.clone();
        let waiter = tokio::spawn(async move { pb2.admit(PeerId::random(), NOW).await.is_some() });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        turns.pop();
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn meeting_members_prompts_a_bounded_number_of_exchanges() {
        let c = OfferCache::new("regtest", 10);
        assert!(c.should_pull_on_meeting(NOW));
        assert!(c.should_pull_on_meeting(NOW + 1));
        assert!(!c.should_pull_on_meeting(NOW + 2));
        assert!(!c.should_pull_on_meeting(NOW + PULL_WINDOW_SECS - 1));
        assert!(c.should_pull_on_meeting(NOW + PULL_WINDOW_SECS));
    }

    #[test]
    fn verified_offers_are_kept_one_per_provider_highest_seq_wins() {
        let c = OfferCache::new("regtest", 100);
        assert_eq!(c.insert(signed(1, 5), NOW), Ok(Inserted::New));
        assert_eq!(c.insert(signed(1, 4), NOW), Ok(Inserted::Unchanged));
        assert_eq!(c.insert(signed(1, 5), NOW), Ok(Inserted::Unchanged));
        assert_eq!(
            c.get(&signed(1, 5).signer_peer_id().unwrap().to_string())
                .unwrap()
                .offer
                .seq,
            5
        );
        assert_eq!(c.insert(signed(1, 7), NOW), Ok(Inserted::Updated(5)));
        assert_eq!(c.insert(signed(2, 1), NOW), Ok(Inserted::New));
        assert_eq!(c.len(), 2);
        let seqs: Vec<u64> = c.snapshot(NOW).iter().map(|o| o.offer.seq).collect();
        assert!(seqs.contains(&7) && seqs.contains(&1), "{seqs:?}");
    }

    #[test]
    fn forged_tampered_expired_and_foreign_offers_are_refused() {
        let c = OfferCache::new("regtest", 100);
        // Signed by key 2 but naming key 1 as its provider: a relay passing off its own offer.
        let forged = Signed::sign(&key(2), &offer_of(&key(1), 9, NOW + 3600)).unwrap();
        assert_eq!(c.insert(forged, NOW), Err(OfferRejected::WrongSigner));
        // A genuine offer whose body a relay altered (cheaper terms): the signature fails.
        let mut tampered = signed(1, 3);
        let mut o = offer_of(&key(1), 3, NOW + 3600);
        o.terms.rate_sat_per_day = 1;
        tampered.body = Signed::sign(&key(1), &o).unwrap().body;
        assert!(matches!(
            c.insert(tampered, NOW),
            Err(OfferRejected::BadSignature(_))
        ));
        // A signature swapped in from another offer of the same provider.
        let mut swapped = signed(1, 3);
        swapped.sig = signed(1, 4).sig;
        assert!(matches!(
            c.insert(swapped, NOW),
            Err(OfferRejected::BadSignature(_))
        ));
        let expired = Signed::sign(&key(1), &offer_of(&key(1), 3, NOW)).unwrap();
        assert_eq!(c.insert(expired, NOW), Err(OfferRejected::Expired));
        let mut o = offer_of(&key(1), 3, NOW + 3600);
        o.network = "mainnet".into();
        let foreign = Signed::sign(&key(1), &o).unwrap();
        assert!(matches!(
            c.insert(foreign, NOW),
            Err(OfferRejected::WrongNetwork { .. })
        ));
        let mut o = offer_of(&key(1), 3, NOW + 3600);
        o.terms.max_credit_sat = 1;
        let insane = Signed::sign(&key(1), &o).unwrap();
        assert!(matches!(
            c.insert(insane, NOW),
            Err(OfferRejected::BadTerms(_))
        ));
        assert!(c.is_empty(), "nothing refused was kept");
        // With an expected signer (an offer asked of that peer), another signer is refused.
        let p2 = peer_id_of(&key(2).verifying_key());
        assert_eq!(
            verify_offer(&signed(1, 1), Some(&p2), "regtest", NOW).map(|_| ()),
            Err(OfferRejected::WrongSigner)
        );
    }

    #[test]
    fn expired_offers_are_dropped_and_never_served() {
        let c = OfferCache::new("regtest", 100);
        let short = Signed::sign(&key(1), &offer_of(&key(1), 1, NOW + 10)).unwrap();
        c.insert(short, NOW).unwrap();
        c.insert(signed(2, 1), NOW).unwrap();
        let later = NOW + 10;
        assert_eq!(c.snapshot(later).len(), 1);
        assert_eq!(c.answer(&c_empty_request(), later).offers.len(), 1);
        assert_eq!(c.prune(later), 1);
        assert_eq!(c.len(), 1);
    }

    fn c_empty_request() -> OffersRequest {
        OffersRequest {
            after: String::new(),
            until: String::new(),
            known: Vec::new(),
        }
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_the_longest_lived_offers() {
        let c = OfferCache::new("regtest", 3);
        for n in 1..=3 {
            let o = Signed::sign(&key(n), &offer_of(&key(n), 1, NOW + 100 * u64::from(n))).unwrap();
            c.insert(o, NOW).unwrap();
        }
        // Outlived by everything held: refused.
        let short = Signed::sign(&key(9), &offer_of(&key(9), 1, NOW + 50)).unwrap();
        assert_eq!(c.insert(short, NOW), Err(OfferRejected::Full));
        // Outlives the first to expire (key 1): takes its place.
        let long = Signed::sign(&key(10), &offer_of(&key(10), 1, NOW + 1000)).unwrap();
        assert_eq!(c.insert(long, NOW), Ok(Inserted::New));
        assert_eq!(c.len(), 3);
        let k1 = peer_id_of(&key(1).verifying_key()).to_string();
        assert!(c.get(&k1).is_none());
        // A newer seq of a provider held always fits.
        let k2 = Signed::sign(&key(2), &offer_of(&key(2), 2, NOW + 200)).unwrap();
        assert_eq!(c.insert(k2, NOW), Ok(Inserted::Updated(1)));
    }

    #[test]
    fn answers_skip_what_the_asker_holds_and_page_through_everything() {
        let server = OfferCache::new("regtest", 1000);
        for n in 1..=100 {
            server.insert(signed(n, 2), NOW).unwrap();
        }
        let client = OfferCache::new("regtest", 1000);
        // The client holds 10 of them at the same seq and 5 at an older one.
        for n in 1..=10 {
            client.insert(signed(n, 2), NOW).unwrap();
        }
        for n in 11..=15 {
            client.insert(signed(n, 1), NOW).unwrap();
        }
        let mut after = String::new();
        let mut got = 0;
        let mut pages = 0;
        loop {
            let req = client.request_after(&after);
            let page = server.answer(&req, NOW);
            assert!(page.offers.len() <= MAX_OFFERS_PER_PAGE);
            let mut cbor = Vec::new();
            ciborium::into_writer(&Message::Offers(page.clone()), &mut cbor).unwrap();
            assert!(
                cbor.len() < crate::wire::framing::MAX_FRAME - 1024,
                "{}",
                cbor.len()
            );
            pages += 1;
            for o in page.offers {
                assert_ne!(client.insert(o, NOW), Ok(Inserted::Unchanged), "sent again");
                got += 1;
            }
            match page.next {
                Some(n) => after = n,
                None => break,
            }
        }
        assert_eq!(got, 90, "the 85 missing and the 5 outdated");
        assert!(pages >= 3, "{pages}");
        assert_eq!(client.len(), 100);
        assert!(client.snapshot(NOW).iter().all(|o| o.offer.seq == 2));
        // Nothing left to send.
        assert!(
            server
                .answer(&client.request_after(""), NOW)
                .offers
                .is_empty()
        );
    }

    #[test]
    fn a_known_list_cut_at_its_bound_still_reaches_every_offer() {
        let n_all = (MAX_KNOWN_SEQS + 40) as u32;
        let server = OfferCache::new("regtest", 10_000);
        let client = OfferCache::new("regtest", 10_000);
        for n in 1..=n_all {
            server.insert(signed(n, 1), NOW).unwrap();
            // The client holds all but every tenth.
            if n % 10 != 0 {
                client.insert(signed(n, 1), NOW).unwrap();
            }
        }
        let mut after = String::new();
        let mut got = 0;
        for _ in 0..100 {
            let req = client.request_after(&after);
            assert!(req.known.len() <= MAX_KNOWN_SEQS);
            let page = server.answer(&req, NOW);
            for o in page.offers {
                assert_eq!(client.insert(o, NOW), Ok(Inserted::New));
                got += 1;
            }
            match page.next {
                Some(n) => after = n,
                None => break,
            }
        }
        assert_eq!(got, n_all as usize / 10);
        assert_eq!(client.len(), n_all as usize);
    }
}
