//! The provider role.
//!
//! 1. Publishes a signed [`Offer`] (terms, availability, LN and WireGuard keys, endpoint) and
//!    re-signs it when availability changes or it nears expiry; the node re-announces it.
//! 2. `rentRequest`: checks it against the current offer, reserves prefixes, creates an invoice
//!    whose description hash commits to the rental ([`InvoiceCommitment`]), answers `payInvoice`.
//! 3. A lease is issued only once the provider's *own* Lightning node reports the invoice
//!    settled: on `paymentResult` (after waiting briefly for settlement) or by the settlement
//!    watcher in [`Provider::tick`]. A renter's claim alone never issues anything. The lease is
//!    issued exactly once, by compare-and-swap on the invoice's pending record; whichever path
//!    comes second gets the issued lease from that record at once.
//! 4. Metering: at `paid_until` the WireGuard peer is removed and the lease suspended; a top-up
//!    (back rent included) reactivates it; after `reserve_days` the prefixes go back to the pool.
//!    Every state change comes from [`super::lease::next`].
//!
//! No lock is shared between leases: settlement and metering of one lease exclude each other
//! with a lock of that lease only.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ipnet::IpNet;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use super::MarketError;
pub mod config;
mod disk;
mod ending;
mod metering;
mod receipts;
mod refund;
mod requests;
mod reservations;
mod settlement;

use super::lease::{self, Event, Kind};
use super::locks::KeyedLocks;
use super::offers::{DEFAULT_CAPACITY, OfferCache};
use super::pool::Pool;
use super::store::{self as kv, Store, Table, Tree};
use crate::audit::{AuditKind, AuditLog};
use crate::lightning::{InvoiceRequest, InvoiceState, LightningNode};
use crate::tunnel::{InterfaceSpec, PeerSpec, RoutingPolicy, Tunnel};
use crate::types::{Clock, Sats, SystemClock, WgKey, random_id};
use crate::wire::{
    ErrorCode, ErrorMsg, InvoiceCommitment, Lease, LeaseEnd, LeaseState, Message, Offer, Offers,
    OffersRequest, PURPOSE_ACTIVATION, PURPOSE_TOPUP, PayInvoice, PaymentResult,
    PrefixAvailability, RentRequest, Signed, Status, StatusRequest, TerminationNotice,
    TopUpRequest,
};
pub use config::{FaultConfig, ProviderConfig};
pub use refund::{
    ProviderRefund, REFUND_MIN_EXPIRY_LEFT_SECS, refund_fee_limit_msat, refunds_payable,
};

/// Unpaid invoices one peer may hold at once under the default configuration
/// ([`ProviderConfig::max_unpaid_per_peer`]).
pub const MAX_UNPAID_PER_PEER: usize = config::DEFAULT_MAX_UNPAID_PER_PEER;

/// Recent offer versions a rent request may still name.
const RECENT_OFFERS: usize = 64;

/// How long a `paymentResult` waits for the provider's node to show the invoice settled.
const SETTLE_WAIT: Duration = Duration::from_secs(10);

/// Everything a provider needs. Built by the node.
pub struct ProviderParams {
    /// Node signing key (offers and leases are signed with it).
    pub key: SigningKey,
    /// Provider settings.
    pub cfg: ProviderConfig,
    /// Lightning network name.
    pub network: String,
    /// Our LN node's pubkey (from GetInfo).
    pub ln_pubkey: String,
    /// Our WireGuard keys.
    pub wg_private: WgKey,
    /// Our WireGuard public key.
    pub wg_public: WgKey,
    /// Interface name.
    pub iface: String,
    /// WireGuard listen port.
    pub listen_port: u16,
    /// Lightning backend.
    pub ln: Arc<dyn LightningNode>,
    /// Tunnel backend.
    pub tunnel: Arc<dyn Tunnel>,
    /// Audit log.
    pub audit: AuditLog,
    /// Database.
    pub db: sled::Db,
}

/// A lease as the provider keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProviderLease {
    /// Latest lease contents.
    pub lease: Lease,
    /// Latest signed lease.
    pub signed: Signed<Lease>,
    /// State.
    pub state: LeaseState,
    /// Renter's PeerId.
    pub renter_peer: String,
    /// Total received for this lease, sat.
    pub paid_sat: Sats,
    /// Request ids whose payment this record already includes (activation and every top-up).
    /// Settlement checks it, so a crash between updating the lease and clearing the pending
    /// invoice can never credit the same payment twice.
    #[serde(default)]
    pub settled_requests: Vec<String>,
    /// A lease its renter released (`leaseEnd`) keeps its prefixes out of the pool until this
    /// time (what metering would have held them for, at most `reserve_days` from the release),
    /// so they are not handed to someone else at once. `None`: nothing held.
    #[serde(default)]
    pub prefixes_held_until: Option<u64>,
    /// The renter's signed `leaseEnd`, kept as proof of who ended the lease and when.
    #[serde(default)]
    pub lease_end: Option<Signed<LeaseEnd>>,
    /// Our signed notice ending the lease at its `ends_at` (`leasewire terminate`).
    #[serde(default)]
    pub termination: Option<Signed<TerminationNotice>>,
    /// The unused credit owed back since the lease ended early, when its terms promise a
    /// refund; frozen once, at the end.
    #[serde(default)]
    pub refund: Option<ProviderRefund>,
    /// The lease is active but its WireGuard peer could not be put in place (the tunnel
    /// backend failed: out of file descriptors, a netlink error); every metering pass tries
    /// again until it is.
    #[serde(default)]
    pub tunnel_pending: bool,
}

impl ProviderLease {
    /// Credit left at `now`.
    pub fn remaining_credit(&self, now: u64) -> Sats {
        self.lease.remaining_credit(now)
    }
}

/// An invoice issued and not yet settled or expired. Once settled, `issued` holds the lease
/// record it produced: swapping it in is the single step that issues (or credits) the lease.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PendingInvoice {
    lease_id: String,
    renter_peer: String,
    commitment: InvoiceCommitment,
    payment_hash: String,
    bolt11: String,
    expires_at: u64,
    ipv4: Option<String>,
    ipv6: Option<String>,
    /// The IP address the rent request came from, when the network layer told us: counted
    /// under the per-IP cap while unpaid.
    #[serde(default)]
    remote_ip: Option<String>,
    /// Our node's add index of the invoice: the expiry pass lists the node's invoices from
    /// the oldest unpaid one on. 0 in records of older versions (listed from the start).
    #[serde(default)]
    add_index: u64,
    /// The lease record this invoice's payment produced; `None` while unpaid.
    #[serde(default)]
    issued: Option<ProviderLease>,
}

impl PendingInvoice {
    /// Whether this invoice holds prefixes (an activation), and so counts as a reservation.
    fn holds_prefixes(&self) -> bool {
        self.commitment.purpose == PURPOSE_ACTIVATION
    }
}

/// The provider role. Cheap to clone.
#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

struct Inner {
    key: SigningKey,
    peer_id: PeerId,
    cfg: ProviderConfig,
    network: String,
    ln_pubkey: String,
    wg_private: WgKey,
    wg_public: WgKey,
    iface: String,
    listen_port: u16,
    ln: Arc<dyn LightningNode>,
    tunnel: Arc<dyn Tunnel>,
    audit: AuditLog,
    pool: Pool,
    leases: Table<ProviderLease>,
    pending: Table<PendingInvoice>,
    /// Signed receipts of settled payments, per lease id (see `receipts`).
    receipts: Table<Vec<Signed<crate::wire::Receipt>>>,
    /// The signed offers leases were made under, by offer id (see `receipts`).
    lease_offers: Table<Signed<Offer>>,
    meta: Arc<dyn Tree>,
    offer: RwLock<Signed<Offer>>,
    /// Offers signed by this run, newest last, for [`Provider::accepts_offer`].
    recent_offers: std::sync::Mutex<std::collections::VecDeque<(String, Offer)>>,
    offer_tx: watch::Sender<u64>,
    /// One lock per lease: its settlement and metering never interleave, and nothing else
    /// waits for them.
    lease_locks: KeyedLocks,
    /// Unpaid invoices counted per peer and in total, with their caps.
    reservations: reservations::Reservations,
    /// Free space and write failures of the disk: new work is refused while it is unhealthy.
    disk: disk::DiskGuard,
    /// Leases whose refund this process is paying right now: the resolution of refunds left
    /// `paying` (for a crash) must not read a payment our node has not registered yet as
    /// "never started".
    refunds_paying: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Audit payload of the first offer, appended by [`Provider::start`] (construction is
    /// synchronous and must not wait on the disk).
    first_offer_audit: std::sync::Mutex<Option<serde_json::Value>>,
    /// The verified offers of other providers this node knows (shared with the node's renter
    /// when it has one), served to members that ask (`offersRequest`).
    offer_cache: OfferCache,
    clock: Arc<dyn Clock>,
}

fn err(code: ErrorCode, msg: impl Into<String>) -> Message {
    Message::Error(ErrorMsg::new(code, msg))
}

impl Provider {
    /// Opens the provider's state and signs a first offer, on the system clock.
    pub fn new(p: ProviderParams) -> Result<Provider, MarketError> {
        Provider::with_clock(p, Arc::new(SystemClock))
    }

    /// Like [`Provider::new`], reading the time from `clock`.
    pub fn with_clock(p: ProviderParams, clock: Arc<dyn Clock>) -> Result<Provider, MarketError> {
        let cache = OfferCache::new(&p.network, DEFAULT_CAPACITY);
        Provider::with_cache(p, clock, cache)
    }

    /// Like [`Provider::with_clock`], serving (and sharing) the offer cache `offer_cache`.
    pub fn with_cache(
        p: ProviderParams,
        clock: Arc<dyn Clock>,
        offer_cache: OfferCache,
    ) -> Result<Provider, MarketError> {
        let db: &dyn Store = &p.db;
        let pool = Pool::open(db, &p.cfg.ipv4_pools, &p.cfg.ipv6_pools, p.cfg.pool_rules())?;
        let meta = db.open_tree("provider_meta")?;
        let peer_id = crate::wire::signed::peer_id_of(&p.key.verifying_key());
        // A placeholder signature is replaced right below by `refresh_offer`.
        let placeholder = Signed::sign(&p.key, &empty_offer(&peer_id))
            .map_err(|e| MarketError::Store(e.to_string()))?;
        let (offer_tx, _) = watch::channel(0);
        let pending: Table<PendingInvoice> = Table::open(db, "provider_pending")?;
        let reservations = reservations::Reservations::new(
            p.cfg.max_unpaid_per_peer,
            p.cfg.max_unpaid_per_ip,
            p.cfg.max_unpaid_total,
        );
        for (request_id, inv) in pending.all()? {
            if inv.issued.is_none() {
                let topup_of = (!inv.holds_prefixes()).then_some(inv.lease_id.as_str());
                reservations.count_existing(
                    &request_id,
                    &inv.renter_peer,
                    inv.remote_ip.as_deref(),
                    topup_of,
                );
            }
        }
        let provider = Provider {
            inner: Arc::new(Inner {
                leases: Table::open(db, "provider_leases")?,
                pending,
                reservations,
                disk: disk::DiskGuard::default(),
                receipts: Table::open(db, "provider_receipts")?,
                lease_offers: Table::open(db, "provider_lease_offers")?,
                key: p.key,
                peer_id,
                cfg: p.cfg,
                network: p.network,
                ln_pubkey: p.ln_pubkey,
                wg_private: p.wg_private,
                wg_public: p.wg_public,
                iface: p.iface,
                listen_port: p.listen_port,
                ln: p.ln,
                tunnel: p.tunnel,
                audit: p.audit,
                pool,
                meta,
                offer: RwLock::new(placeholder),
                recent_offers: std::sync::Mutex::new(std::collections::VecDeque::new()),
                offer_tx,
                lease_locks: KeyedLocks::default(),
                refunds_paying: std::sync::Mutex::new(std::collections::HashSet::new()),
                first_offer_audit: std::sync::Mutex::new(None),
                offer_cache,
                clock,
            }),
        };
        let seq = provider.next_offer_seq()?;
        provider.inner.meta.flush_blocking()?;
        let payload = provider.publish_offer(seq)?;
        *provider
            .inner
            .first_offer_audit
            .lock()
            .expect("first offer lock not poisoned") = Some(payload);
        Ok(provider)
    }

    /// Current unix time on the provider's clock.
    fn now(&self) -> u64 {
        self.inner.clock.now_unix()
    }

    /// Brings the WireGuard interface up, finishes settlements a crash interrupted, and
    /// re-applies every active lease (idempotent).
    pub async fn start(&self) -> Result<(), MarketError> {
        let i = &self.inner;
        if i.cfg.fault.withhold_leases {
            tracing::error!(
                "FAULT INJECTION: provider.fault.withhold_leases is on: this provider takes \
                 payment and never sends the lease (for the simnet only)"
            );
        }
        let first = i
            .first_offer_audit
            .lock()
            .expect("first offer lock not poisoned")
            .take();
        if let Some(payload) = first {
            self.audit(AuditKind::OfferPublished, payload).await;
        }
        i.tunnel
            .ensure_interface(&InterfaceSpec {
                name: i.iface.clone(),
                private_key: i.wg_private,
                listen_port: Some(i.listen_port),
                addresses: Vec::new(),
                policy: RoutingPolicy::Provider,
            })
            .await?;
        // Settlements a crash cut short: their lease records and peers, before the restore.
        self.finish_issued_all().await;
        let mut restored = 0;
        for (id, rec) in i.leases.all()? {
            if rec.state == LeaseState::Active {
                // A peer the tunnel refuses now is retried by every tick, not a failed start.
                let _lease = i.lease_locks.lock(&id).await;
                if self.place_peer_locked(&id).await? {
                    restored += 1;
                }
            }
        }
        tracing::info!(
            restored,
            iface = %i.iface,
            backend = i.tunnel.kind(),
            "provider tunnel ready"
        );
        self.revise_moved_leases().await?;
        // Refunds a crash left `paying`: asked of our node, never paid again.
        self.resolve_paying_refunds().await?;
        Ok(())
    }

    /// Re-signs every lease that is not released whose endpoint or provider WireGuard key is
    /// not the one configured now (the provider moved, or rotated its key), as revision + 1
    /// with the same credit and `paid_until`. The renter picks the revision up from the
    /// `status` it asks for every lease and re-points its tunnel without paying. The offer
    /// signed at construction already carries the new endpoint and key under a new seq.
    /// Returns how many leases were revised.
    ///
    /// # Errors
    /// When the leases cannot be read or a revision cannot be stored.
    pub async fn revise_moved_leases(&self) -> Result<usize, MarketError> {
        let i = &self.inner;
        let mut revised = 0;
        for (id, _) in i.leases.all()? {
            // Settlement and metering of this lease wait; a top-up stored meanwhile keeps
            // working on the revised record.
            let _lease = i.lease_locks.lock(&id).await;
            let Some(mut rec) = i.leases.get(&id)? else {
                continue;
            };
            if rec.state == LeaseState::Released
                || (rec.lease.endpoint == i.cfg.endpoint
                    && rec.lease.provider_wg_pubkey == i.wg_public)
            {
                continue;
            }
            let old_endpoint = std::mem::replace(&mut rec.lease.endpoint, i.cfg.endpoint.clone());
            let key_changed = rec.lease.provider_wg_pubkey != i.wg_public;
            rec.lease.provider_wg_pubkey = i.wg_public;
            rec.lease.revision += 1;
            rec.signed =
                Signed::sign(&i.key, &rec.lease).map_err(|e| MarketError::Store(e.to_string()))?;
            i.leases.put(&id, &rec).await?;
            self.audit(
                AuditKind::LeaseRevised,
                json!({"lease_id": id, "renter": rec.renter_peer, "revision": rec.lease.revision,
                       "old_endpoint": old_endpoint, "endpoint": rec.lease.endpoint,
                       "key_changed": key_changed}),
            )
            .await;
            tracing::info!(lease_id = %id, revision = rec.lease.revision, old_endpoint = %old_endpoint,
                endpoint = %rec.lease.endpoint, key_changed, "lease revised: endpoint or key changed");
            revised += 1;
        }
        Ok(revised)
    }

    /// The current signed offer.
    pub fn offer(&self) -> Signed<Offer> {
        self.inner
            .offer
            .read()
            .expect("offer lock not to be poisoned")
            .clone()
    }

    /// Whether a rent request may name `offer_id`: the current offer, or a recent version of it
    /// that has not expired and has the current terms. Offers are re-signed whenever
    /// availability changes, so without this every lease would send concurrent renters back to
    /// fetch the offer again for nothing.
    pub fn accepts_offer(&self, offer_id: &str) -> bool {
        if self.offer().id() == offer_id {
            return true;
        }
        let now = self.now();
        let recent = self
            .inner
            .recent_offers
            .lock()
            .expect("recent offers lock not poisoned");
        recent
            .iter()
            .any(|(id, o)| id == offer_id && o.expires_at > now && o.terms == self.inner.cfg.terms)
    }

    /// Fires (with the new seq) every time the offer is re-signed.
    pub fn subscribe_offer(&self) -> watch::Receiver<u64> {
        self.inner.offer_tx.subscribe()
    }

    /// Every lease this provider has issued.
    pub fn leases(&self) -> Result<Vec<ProviderLease>, MarketError> {
        Ok(self
            .inner
            .leases
            .all()?
            .into_iter()
            .map(|(_, l)| l)
            .collect())
    }

    /// The offer's size lists: every size leased per family, with availability and price.
    fn availability(&self) -> (Vec<PrefixAvailability>, Vec<PrefixAvailability>) {
        let i = &self.inner;
        i.cfg.size_lists(|f, len| i.pool.available(f, len))
    }

    /// Re-signs the offer when `force`, when availability changed, or when it is past half its
    /// lifetime. Returns whether a new offer was made.
    pub async fn refresh_offer(&self, force: bool) -> Result<bool, MarketError> {
        let i = &self.inner;
        let now = self.now();
        if !force {
            let (ipv4, ipv6) = self.availability();
            let current = self.offer();
            if let Ok(o) = current.verify() {
                let fresh = o.expires_at > now + i.cfg.offer_ttl_secs / 2;
                if fresh && o.ipv4 == ipv4 && o.ipv6 == ipv6 {
                    return Ok(false);
                }
            }
        }
        let seq = self.next_offer_seq()?;
        // The sequence number is durable before any offer carries it.
        kv::flush(&i.meta).await?;
        let payload = self.publish_offer(seq)?;
        self.audit(AuditKind::OfferPublished, payload).await;
        i.offer_tx.send_replace(seq);
        Ok(true)
    }

    /// Takes the next offer sequence number (not yet flushed).
    fn next_offer_seq(&self) -> Result<u64, MarketError> {
        let meta = &self.inner.meta;
        loop {
            let old = meta.get(b"offer_seq")?;
            let n = old
                .as_deref()
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0)
                + 1;
            if meta.compare_and_swap(
                b"offer_seq",
                old.as_deref(),
                Some(n.to_be_bytes().to_vec()),
            )? {
                return Ok(n);
            }
        }
    }

    /// Signs and installs offer `seq`; returns its audit payload.
    fn publish_offer(&self, seq: u64) -> Result<serde_json::Value, MarketError> {
        let i = &self.inner;
        let now = self.now();
        let (ipv4, ipv6) = self.availability();
        let offer = Offer {
            provider: i.peer_id.to_string(),
            seq,
            created_at: now,
            expires_at: now + i.cfg.offer_ttl_secs,
            network: i.network.clone(),
            ln_pubkey: i.ln_pubkey.clone(),
            wg_pubkey: i.wg_public,
            endpoint: i.cfg.endpoint.clone(),
            ipv4,
            ipv6,
            terms: i.cfg.terms.clone(),
        };
        let signed = Signed::sign(&i.key, &offer).map_err(|e| MarketError::Store(e.to_string()))?;
        let id = signed.id();
        // Our own offer is in the cache we serve and whose `seq` list we send when we ask
        // others: a member we ask sees it is missing there and pulls it back.
        if let Err(e) = i.offer_cache.insert(signed.clone(), now) {
            tracing::warn!(error = %e, "own offer not cached");
        }
        *i.offer.write().expect("offer lock not to be poisoned") = signed;
        {
            let mut recent = i
                .recent_offers
                .lock()
                .expect("recent offers lock not poisoned");
            recent.push_back((id.clone(), offer.clone()));
            while recent.len() > RECENT_OFFERS {
                recent.pop_front();
            }
        }
        tracing::info!(offer_id = %id, seq, "offer signed");
        Ok(json!({"offer_id": id, "seq": seq, "ipv4": offer.ipv4, "ipv6": offer.ipv6}))
    }

    /// Appends to the audit log, awaiting durability (at most [`disk::AUDIT_TIMEOUT`]); a
    /// failure is logged and refuses new work until the disk takes writes again, never fatal.
    async fn audit(&self, kind: AuditKind, payload: serde_json::Value) {
        if let Err(e) = self.audit_checked(kind, payload).await {
            tracing::error!(error = %e, ?kind, "audit append failed");
        }
    }

    /// Answers one request from `peer`. Never fails: problems become `error` messages.
    pub async fn handle(&self, peer: PeerId, msg: Message) -> Message {
        self.handle_from(peer, None, msg).await
    }

    /// Like [`Provider::handle`], for a request that arrived from `remote_ip` when the network
    /// layer knows it: unpaid reservations are then also capped per IP address
    /// (`provider.max_unpaid_per_ip`), so fresh identities behind one address share one cap.
    pub async fn handle_from(
        &self,
        peer: PeerId,
        remote_ip: Option<std::net::IpAddr>,
        msg: Message,
    ) -> Message {
        match msg {
            Message::Hello(h) => {
                // Not audited: a hello changes nothing, and an fsync'd entry per hello was most
                // of a busy provider's log (and of its disk writes).
                tracing::debug!(%peer, agent = %h.agent, renter = h.renter, "hello");
                Message::Offer(self.offer())
            }
            Message::OffersRequest(r) => Message::Offers(self.on_offers_request(&r)),
            Message::RentRequest(r) => self.on_rent_request(peer, remote_ip, r).await,
            Message::TopUpRequest(r) => self.on_topup_request(peer, r).await,
            Message::PaymentResult(r) => self.on_payment_result(peer, r).await,
            Message::StatusRequest(r) => self.on_status(peer, r),
            Message::LeaseEnd(end) => self.on_lease_end(peer, end).await,
            Message::RefundRequest(r) => self.on_refund_request(peer, r).await,
            Message::ReceiptsRequest(r) => self.on_receipts_request(peer, &r),
            Message::HeadRequest(r) => self.on_head_request(&r),
            other => err(
                ErrorCode::Unsupported,
                format!("a provider does not answer {}", other.name()),
            ),
        }
    }

    /// The offers this node knows that the asker lacks, our own included.
    fn on_offers_request(&self, r: &OffersRequest) -> Offers {
        let now = self.now();
        // Our own offer is served like any other (re-inserting it is a no-op unless it was
        // re-signed since).
        if let Err(e) = self.inner.offer_cache.insert(self.offer(), now) {
            tracing::warn!(error = %e, "own offer not cached");
        }
        self.inner.offer_cache.answer(r, now)
    }

    /// The offer cache this provider serves.
    pub fn offer_cache(&self) -> &OfferCache {
        &self.inner.offer_cache
    }

    fn on_status(&self, peer: PeerId, r: StatusRequest) -> Message {
        match self.inner.leases.get(&r.lease_id) {
            Ok(Some(rec)) if rec.renter_peer == peer.to_string() => self.status_of(rec),
            Ok(_) => err(ErrorCode::NotFound, "no such lease of yours"),
            Err(e) => {
                tracing::error!(error = %e, "lease lookup failed");
                err(ErrorCode::Unavailable, "provider storage error")
            }
        }
    }
}

impl Provider {
    /// The `status` answer for a lease record.
    fn status_of(&self, rec: ProviderLease) -> Message {
        let now = self.now();
        Message::Status(Status {
            lease_id: rec.lease.lease_id.clone(),
            state: rec.state,
            remaining_credit_sat: rec.remaining_credit(now),
            paid_until: rec.lease.paid_until,
            now,
            lease: Some(rec.signed),
            termination: rec.termination,
            refund_due_sat: rec.refund.as_ref().map_or(0, |r| r.due_sat),
            refund: rec.refund.map(|r| r.state).unwrap_or_default(),
        })
    }
}

fn empty_offer(peer_id: &PeerId) -> Offer {
    Offer {
        provider: peer_id.to_string(),
        seq: 0,
        created_at: 0,
        expires_at: 0,
        network: String::new(),
        ln_pubkey: String::new(),
        wg_pubkey: WgKey([0; 32]),
        endpoint: String::new(),
        ipv4: Vec::new(),
        ipv6: Vec::new(),
        terms: crate::types::Terms {
            activation_fee_sat: 0,
            rate_sat_per_day: 0,
            min_initial_credit_sat: 0,
            min_topup_sat: 0,
            max_credit_sat: 0,
            reserve_days: 0,
            refund_unused: false,
            reservation_secs: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use tokio::sync::Notify;

    use super::*;
    use crate::lightning::testing::{MemNetwork, MemNode};
    use crate::lightning::{
        CreatedInvoice, InvoiceStatus, LightningError, NodeInfo, PayRequest, PaymentOutcome,
        PaymentStatus,
    };
    use crate::tunnel::file::FileTunnel;
    use crate::tunnel::testing::VerifyingTunnel;
    use crate::types::{DAY_SECS, ManualClock};

    /// The provider's node, with every `lookup_invoice` counted and the next one optionally
    /// held at a gate: a test decides exactly when a settlement check sees its answer.
    pub(super) struct GatedNode {
        inner: MemNode,
        pub(super) lookups: AtomicU32,
        /// `list_invoices` calls (the expiry and settlement pass).
        pub(super) lists: AtomicU32,
        hold_next: AtomicBool,
        /// Hold the next `pay_invoice` at the gate too (before the node sees the payment).
        pub(super) hold_next_pay: AtomicBool,
        pub(super) entered: Notify,
        pub(super) release: Notify,
    }

    #[async_trait::async_trait]
    impl LightningNode for GatedNode {
        async fn get_info(&self) -> Result<NodeInfo, LightningError> {
            self.inner.get_info().await
        }
        async fn add_invoice(&self, req: InvoiceRequest) -> Result<CreatedInvoice, LightningError> {
            self.inner.add_invoice(req).await
        }
        async fn lookup_invoice(&self, hash: [u8; 32]) -> Result<InvoiceStatus, LightningError> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            if self.hold_next.swap(false, Ordering::SeqCst) {
                self.entered.notify_one();
                self.release.notified().await;
            }
            self.inner.lookup_invoice(hash).await
        }
        async fn list_invoices(
            &self,
            index_offset: u64,
            max: u64,
        ) -> Result<crate::lightning::InvoicePage, LightningError> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            self.inner.list_invoices(index_offset, max).await
        }
        async fn pay_invoice(&self, req: PayRequest) -> Result<PaymentOutcome, LightningError> {
            if self.hold_next_pay.swap(false, Ordering::SeqCst) {
                self.entered.notify_one();
                self.release.notified().await;
            }
            self.inner.pay_invoice(req).await
        }
        async fn track_payment(
            &self,
            hash: [u8; 32],
        ) -> Result<Option<PaymentStatus>, LightningError> {
            self.inner.track_payment(hash).await
        }
        async fn can_pay(&self) -> Result<bool, LightningError> {
            self.inner.can_pay().await
        }
    }

    pub(super) struct Harness {
        _dir: tempfile::TempDir,
        pub(super) net: MemNetwork,
        pub(super) ln: Arc<GatedNode>,
        pub(super) tunnel: Arc<VerifyingTunnel>,
        pub(super) clock: Arc<ManualClock>,
        pub(super) audit: AuditLog,
        pub(super) provider: Provider,
        pub(super) db: sled::Db,
        pub(super) key: SigningKey,
    }

    /// Parameters of a test provider: node key `key`, `cfg`, the Lightning key of `net`'s
    /// "provider" node, WireGuard key `[wg; 32]` (public `[wg + 1; 32]`), interface `lwt0` on
    /// port 51820, and its backends and store.
    #[allow(clippy::too_many_arguments)]
    fn params(
        key: SigningKey,
        cfg: ProviderConfig,
        net: &MemNetwork,
        wg: u8,
        ln: Arc<dyn LightningNode>,
        tunnel: Arc<dyn Tunnel>,
        audit: &AuditLog,
        db: &sled::Db,
    ) -> ProviderParams {
        ProviderParams {
            key,
            cfg,
            network: "regtest".into(),
            ln_pubkey: net.pubkey("provider").unwrap(),
            wg_private: WgKey([wg; 32]),
            wg_public: WgKey([wg + 1; 32]),
            iface: "lwt0".into(),
            listen_port: 51820,
            ln,
            tunnel,
            audit: audit.clone(),
            db: db.clone(),
        }
    }

    async fn harness() -> Harness {
        harness_with(ProviderConfig {
            ipv6_pools: Vec::new(),
            ..ProviderConfig::default()
        })
        .await
    }

    /// A started provider with `cfg` (an IPv4-only /32 provider for [`harness`]) on a fresh
    /// database, its node "provider" and a renter node "renter" with 1M sat on one
    /// in-memory Lightning network, and a manual clock.
    pub(super) async fn harness_with(cfg: ProviderConfig) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let net = MemNetwork::new(&[("provider".into(), 0), ("renter".into(), 1_000_000)]).unwrap();
        let ln = Arc::new(GatedNode {
            inner: net.node("provider").unwrap(),
            lookups: AtomicU32::new(0),
            lists: AtomicU32::new(0),
            hold_next: AtomicBool::new(false),
            hold_next_pay: AtomicBool::new(false),
            entered: Notify::new(),
            release: Notify::new(),
        });
        let tunnel = Arc::new(VerifyingTunnel::new(Arc::new(
            FileTunnel::new(dir.path().join("tunnel")).unwrap(),
        )));
        let db = sled::open(dir.path().join("db")).unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let audit = AuditLog::open(&db, key.clone()).unwrap();
        let clock = Arc::new(ManualClock::starting_now());
        let provider = Provider::with_clock(
            params(key, cfg, &net, 1, ln.clone(), tunnel.clone(), &audit, &db),
            clock.clone(),
        )
        .unwrap();
        provider.start().await.unwrap();
        Harness {
            db,
            key: SigningKey::from_bytes(&[7; 32]),
            _dir: dir,
            net,
            ln,
            tunnel,
            clock,
            audit,
            provider,
        }
    }

    pub(super) fn renter_peer(n: u8) -> PeerId {
        crate::wire::signed::peer_id_of(&SigningKey::from_bytes(&[100 + n; 32]).verifying_key())
    }

    /// Asks for a lease as renter `n` and pays the invoice from the renter's node.
    pub(super) async fn rent_and_pay(h: &Harness, n: u8) -> PayInvoice {
        rent_and_pay_with(h, n, n, 1_000).await
    }

    /// Asks for a lease as renter `n` with WireGuard key `[k; 32]` and `credit` sat, and pays.
    async fn rent_and_pay_with(h: &Harness, n: u8, k: u8, credit: Sats) -> PayInvoice {
        let reply = h
            .provider
            .handle(renter_peer(n), rent_request(h, n, k, credit))
            .await;
        let Message::PayInvoice(pay) = reply else {
            panic!("wanted payInvoice, got {reply:?}")
        };
        h.net
            .node("renter")
            .unwrap()
            .pay_invoice(PayRequest {
                bolt11: pay.bolt11.clone(),
                fee_limit_msat: 10_000,
                timeout_secs: 30,
            })
            .await
            .unwrap();
        pay
    }

    fn rent_request(h: &Harness, n: u8, k: u8, credit: Sats) -> Message {
        Message::RentRequest(RentRequest {
            request_id: format!("{n:02}{k:02}").repeat(8),
            offer_id: h.provider.offer().id(),
            credit_sat: credit,
            ipv4_prefix_len: Some(32),
            ipv6_prefix_len: None,
            wg_pubkey: WgKey([k; 32]),
        })
    }

    pub(super) fn result_for(pay: &PayInvoice) -> Message {
        Message::PaymentResult(PaymentResult {
            request_id: pay.request_id.clone(),
            payment_hash: String::new(),
            preimage: String::new(),
        })
    }

    pub(super) fn count(audit: &AuditLog, kind: &str) -> usize {
        audit
            .entries(0)
            .filter(|e| e.as_ref().unwrap().kind == kind)
            .count()
    }

    #[tokio::test]
    async fn watcher_settles_first_and_the_payment_result_in_flight_gets_the_lease_at_once() {
        let h = harness().await;
        let pay = rent_and_pay(&h, 1).await;

        // paymentResult arrives and asks the node; its answer is held back...
        h.ln.hold_next.store(true, Ordering::SeqCst);
        let in_flight = tokio::spawn({
            let p = h.provider.clone();
            let msg = result_for(&pay);
            async move { p.handle(renter_peer(1), msg).await }
        });
        h.ln.entered.notified().await;
        // ...while the settlement watcher sees the payment and issues the lease.
        h.provider.tick().await.unwrap();
        let issued = h.provider.leases().unwrap();
        assert_eq!(issued.len(), 1);
        assert_eq!(issued[0].lease.lease_id, pay.lease_id);

        // Now the in-flight handler learns the invoice is settled: it finds the lease already
        // issued and answers with it, instead of waiting for a pending entry that is gone.
        h.ln.release.notify_one();
        let reply = in_flight.await.unwrap();
        match reply {
            Message::Lease(l) => assert_eq!(l, issued[0].signed),
            other => panic!("wanted the issued lease, got {other:?}"),
        }
        // One check each: the handler's lookup (it never went round the not-settled loop)
        // and the watcher's one listing.
        assert_eq!(h.ln.lookups.load(Ordering::SeqCst), 1);
        assert_eq!(h.ln.lists.load(Ordering::SeqCst), 1);
        assert_eq!(count(&h.audit, "lease_issued"), 1);
        assert_eq!(count(&h.audit, "invoice_settled"), 1);
        assert_eq!(h.tunnel.inner.peer_stats("lwt0").await.unwrap().len(), 1);

        // Late retries get it from the settled marker, without asking the node.
        let again = h.provider.handle(renter_peer(1), result_for(&pay)).await;
        assert!(matches!(again, Message::Lease(l) if l == issued[0].signed));
        assert_eq!(h.ln.lookups.load(Ordering::SeqCst), 1);
        // Another peer does not get someone else's lease.
        let theirs = h.provider.handle(renter_peer(2), result_for(&pay)).await;
        assert!(matches!(theirs, Message::Error(e) if e.code == ErrorCode::NotFound));
    }

    #[tokio::test]
    async fn a_settlement_cut_short_after_the_swap_is_finished_on_start() {
        let h = harness().await;
        let pay = rent_and_pay(&h, 1).await;
        let i = &h.provider.inner;
        // The swap that issues happens, then the process "dies": no lease record, no peer.
        let current = i.pending.get_versioned(&pay.request_id).unwrap().unwrap();
        let rec = h
            .provider
            .issued_record(&pay.request_id, &current.value)
            .unwrap();
        let mut settled = current.value.clone();
        settled.issued = Some(rec.clone());
        assert!(
            i.pending
                .compare_and_swap(&pay.request_id, Some(&current), Some(&settled))
                .await
                .unwrap()
        );
        assert!(h.provider.leases().unwrap().is_empty());
        // The renter asking now already gets the lease that was issued.
        let reply = h.provider.handle(renter_peer(1), result_for(&pay)).await;
        assert!(
            matches!(&reply, Message::Lease(l) if *l == rec.signed),
            "{reply:?}"
        );

        // Restart: the settlement is carried out from the pending record, exactly once.
        h.provider.start().await.unwrap();
        let leases = h.provider.leases().unwrap();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].signed, rec.signed);
        assert_eq!(h.tunnel.inner.peer_stats("lwt0").await.unwrap().len(), 1);
        assert!(i.pending.get(&pay.request_id).unwrap().is_none());
        h.provider.tick().await.unwrap();
        assert_eq!(count(&h.audit, "lease_issued"), 1);
        let again = h.provider.handle(renter_peer(1), result_for(&pay)).await;
        assert!(
            matches!(&again, Message::Lease(l) if *l == rec.signed),
            "{again:?}"
        );
    }

    #[tokio::test]
    async fn concurrent_settlements_of_one_invoice_issue_one_lease() {
        let h = harness().await;
        let pay = rent_and_pay(&h, 1).await;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let p = h.provider.clone();
            let msg = result_for(&pay);
            tasks.push(tokio::spawn(
                async move { p.handle(renter_peer(1), msg).await },
            ));
        }
        let mut leases = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Message::Lease(l) => leases.push(l),
                other => panic!("wanted a lease, got {other:?}"),
            }
        }
        leases.dedup();
        assert_eq!(leases.len(), 1, "every caller got the same lease");
        assert_eq!(h.provider.leases().unwrap().len(), 1);
        assert_eq!(count(&h.audit, "lease_issued"), 1);
    }

    #[tokio::test]
    async fn one_failing_lease_does_not_stop_metering_of_the_others() {
        let h = harness().await;
        for n in [1, 2] {
            let pay = rent_and_pay(&h, n).await;
            let reply = h.provider.handle(renter_peer(n), result_for(&pay)).await;
            assert!(matches!(reply, Message::Lease(_)), "{reply:?}");
        }
        // Renter 1's peer cannot be removed; both leases run out of credit.
        h.tunnel.set_remove_fails(WgKey([1; 32]), true);
        h.clock.advance(Duration::from_secs(11 * DAY_SECS));
        h.provider.tick().await.unwrap();
        let state = |n: u8| {
            h.provider
                .leases()
                .unwrap()
                .into_iter()
                .find(|l| l.lease.renter_wg_pubkey == WgKey([n; 32]))
                .unwrap()
                .state
        };
        assert_eq!(state(1), LeaseState::Active, "its suspension failed");
        assert_eq!(state(2), LeaseState::Suspended, "the pass went on");
        assert_eq!(count(&h.audit, "error"), 1);
        assert_eq!(count(&h.audit, "lease_suspended"), 1);

        // Fixed: the next pass suspends it; after the reserve period both are released.
        h.tunnel.set_remove_fails(WgKey([1; 32]), false);
        h.provider.tick().await.unwrap();
        assert_eq!(state(1), LeaseState::Suspended);
        h.clock.advance(Duration::from_secs(7 * DAY_SECS));
        h.provider.tick().await.unwrap();
        assert_eq!(state(1), LeaseState::Released);
        assert_eq!(state(2), LeaseState::Released);
        let offer = h.provider.offer().verify().unwrap();
        assert_eq!(
            offer.ipv4[0].available, 16,
            "both prefixes back in the pool"
        );
    }

    /// The provider's peers on its interface: key and allowed IPs.
    async fn peers(h: &Harness) -> Vec<(WgKey, Vec<IpNet>)> {
        let mut p: Vec<_> = h
            .tunnel
            .inner
            .peer_stats("lwt0")
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.public_key, s.allowed_ips))
            .collect();
        p.sort_by_key(|(k, _)| k.0);
        p
    }

    #[tokio::test]
    async fn two_leases_of_one_renter_are_independent_peers() {
        let h = harness().await;
        let mut leases = Vec::new();
        // Renter 1 rents twice, each lease with its own key; the first runs out sooner.
        for (k, credit) in [(11, 1_000), (12, 3_000)] {
            let pay = rent_and_pay_with(&h, 1, k, credit).await;
            let reply = h.provider.handle(renter_peer(1), result_for(&pay)).await;
            let Message::Lease(l) = reply else {
                panic!("{reply:?}")
            };
            leases.push(l.verify().unwrap());
        }
        let ips = |l: &Lease| -> Vec<IpNet> {
            l.allowed_ips.iter().map(|s| s.parse().unwrap()).collect()
        };
        assert_ne!(leases[0].ipv4, leases[1].ipv4);
        assert_eq!(
            peers(&h).await,
            vec![
                (WgKey([11; 32]), ips(&leases[0])),
                (WgKey([12; 32]), ips(&leases[1]))
            ]
        );
        // A third lease on a key in use would take a peer over: refused.
        let reply = h
            .provider
            .handle(renter_peer(1), rent_request(&h, 1, 12, 1_000))
            .await;
        assert!(
            matches!(&reply, Message::Error(e) if e.code == ErrorCode::BadRequest
                && e.message.contains("one key per lease")),
            "{reply:?}"
        );

        // The first lease's credit runs out: only its peer goes, the other keeps its own IPs.
        h.clock.advance(Duration::from_secs(11 * DAY_SECS));
        h.provider.tick().await.unwrap();
        let state = |id: &str| {
            h.provider
                .leases()
                .unwrap()
                .into_iter()
                .find(|l| l.lease.lease_id == id)
                .unwrap()
                .state
        };
        assert_eq!(state(&leases[0].lease_id), LeaseState::Suspended);
        assert_eq!(state(&leases[1].lease_id), LeaseState::Active);
        assert_eq!(peers(&h).await, vec![(WgKey([12; 32]), ips(&leases[1]))]);
    }

    pub(super) fn lease_end(n: u8, lease_id: &str, h: &Harness) -> Message {
        let key = SigningKey::from_bytes(&[100 + n; 32]);
        let end = LeaseEnd {
            lease_id: lease_id.into(),
            provider: h.provider.inner.peer_id.to_string(),
            renter: renter_peer(n).to_string(),
            ended_at: h.clock.now_unix(),
        };
        Message::LeaseEnd(Signed::sign(&key, &end).unwrap())
    }

    #[tokio::test]
    async fn a_lease_end_releases_at_once_only_for_the_renter_and_once() {
        let h = harness().await;
        let mut ids = Vec::new();
        for n in [1, 2] {
            let pay = rent_and_pay(&h, n).await;
            let reply = h.provider.handle(renter_peer(n), result_for(&pay)).await;
            assert!(matches!(reply, Message::Lease(_)), "{reply:?}");
            ids.push(pay.lease_id);
        }
        let available = |h: &Harness| h.provider.offer().verify().unwrap().ipv4[0].available;
        assert_eq!(available(&h), 14);

        // Renter 2 cannot end renter 1's lease: not by naming it (no such lease of theirs),
        // nor by forwarding renter 1's signed leaseEnd (signer is not the sender).
        let theirs = h
            .provider
            .handle(renter_peer(2), lease_end(2, &ids[0], &h))
            .await;
        assert!(
            matches!(&theirs, Message::Error(e) if e.code == ErrorCode::NotFound),
            "{theirs:?}"
        );
        let forwarded = h
            .provider
            .handle(renter_peer(2), lease_end(1, &ids[0], &h))
            .await;
        assert!(
            matches!(&forwarded, Message::Error(e) if e.code == ErrorCode::BadRequest),
            "{forwarded:?}"
        );
        assert_eq!(peers(&h).await.len(), 2);
        assert_eq!(count(&h.audit, "lease_released"), 0);

        // Renter 1 ends its lease: released at once, its peer gone, the other untouched.
        let reply = h
            .provider
            .handle(renter_peer(1), lease_end(1, &ids[0], &h))
            .await;
        let Message::Status(st) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(st.state, LeaseState::Released);
        assert_eq!(peers(&h).await.len(), 1);
        assert_eq!(peers(&h).await[0].0, WgKey([2; 32]));
        let rec = |id: &str| {
            h.provider
                .leases()
                .unwrap()
                .into_iter()
                .find(|l| l.lease.lease_id == id)
                .unwrap()
        };
        assert_eq!(rec(&ids[0]).state, LeaseState::Released);
        assert!(rec(&ids[0]).lease_end.is_some());
        assert_eq!(rec(&ids[1]).state, LeaseState::Active);
        assert_eq!(count(&h.audit, "lease_released"), 1);

        // A second leaseEnd changes nothing and gets the same answer.
        let again = h
            .provider
            .handle(renter_peer(1), lease_end(1, &ids[0], &h))
            .await;
        assert!(
            matches!(&again, Message::Status(s) if s.state == LeaseState::Released),
            "{again:?}"
        );
        assert_eq!(count(&h.audit, "lease_released"), 1);

        // Metering stops at once; the prefix stays held for the reserve period, then is freed.
        h.provider.tick().await.unwrap();
        assert_eq!(available(&h), 14, "prefix held during the reserve period");
        h.clock.advance(Duration::from_secs(7 * DAY_SECS));
        h.provider.tick().await.unwrap();
        assert_eq!(available(&h), 15, "prefix back after the reserve period");
        assert_eq!(rec(&ids[0]).state, LeaseState::Released);
        assert_eq!(rec(&ids[0]).prefixes_held_until, None);
        assert_eq!(count(&h.audit, "lease_suspended"), 0);
    }

    #[tokio::test]
    async fn a_terminated_lease_runs_until_the_notice_ends_then_is_released() {
        let h = harness().await;
        let mut ids = Vec::new();
        for n in [1, 2] {
            let pay = rent_and_pay(&h, n).await;
            let reply = h.provider.handle(renter_peer(n), result_for(&pay)).await;
            assert!(matches!(reply, Message::Lease(_)), "{reply:?}");
            ids.push(pay.lease_id);
        }
        let rec = h
            .provider
            .terminate(&ids[0], Duration::from_secs(2 * DAY_SECS))
            .await
            .unwrap();
        assert_eq!(rec.state, LeaseState::Active);
        assert_eq!(count(&h.audit, "lease_terminated"), 1);

        // The renter sees the signed notice in its status.
        let status = h
            .provider
            .handle(
                renter_peer(1),
                Message::StatusRequest(StatusRequest {
                    lease_id: ids[0].clone(),
                }),
            )
            .await;
        let Message::Status(st) = status else {
            panic!("{status:?}")
        };
        let notice = st
            .termination
            .expect("notice in status")
            .verify_from(&h.provider.inner.peer_id)
            .unwrap();
        assert_eq!(notice.ends_at, h.clock.now_unix() + 2 * DAY_SECS);
        assert_eq!(notice.renter, renter_peer(1).to_string());
        // No top-ups during the notice.
        let topup = h
            .provider
            .handle(
                renter_peer(1),
                Message::TopUpRequest(TopUpRequest {
                    request_id: "ee".repeat(16),
                    lease_id: ids[0].clone(),
                    amount_sat: 500,
                }),
            )
            .await;
        assert!(
            matches!(&topup, Message::Error(e) if e.code == ErrorCode::BadRequest),
            "{topup:?}"
        );

        // Until the notice ends the lease is served as before.
        h.clock.advance(Duration::from_secs(2 * DAY_SECS - 1));
        h.provider.tick().await.unwrap();
        assert_eq!(peers(&h).await.len(), 2);
        h.clock.advance(Duration::from_secs(1));
        h.provider.tick().await.unwrap();
        let state = |id: &str| {
            h.provider
                .leases()
                .unwrap()
                .into_iter()
                .find(|l| l.lease.lease_id == id)
                .unwrap()
                .state
        };
        assert_eq!(state(&ids[0]), LeaseState::Released);
        assert_eq!(state(&ids[1]), LeaseState::Active);
        assert_eq!(
            peers(&h).await,
            vec![(WgKey([2; 32]), peers(&h).await[0].1.clone())]
        );
        assert_eq!(count(&h.audit, "lease_released"), 1);
        // A released lease cannot be given notice again.
        assert!(h.provider.terminate(&ids[0], Duration::ZERO).await.is_err());
    }

    /// The harness's provider restarted on its database with `endpoint` and WireGuard key
    /// `[wg; 32]` (public `[wg + 1; 32]`).
    async fn moved(h: &Harness, endpoint: &str, wg: u8) -> Provider {
        let cfg = ProviderConfig {
            endpoint: endpoint.into(),
            ipv6_pools: Vec::new(),
            ..ProviderConfig::default()
        };
        restarted(h, cfg, wg).await
    }

    /// The harness's provider restarted on its database with `cfg` and WireGuard key
    /// `[wg; 32]` (public `[wg + 1; 32]`).
    async fn restarted(h: &Harness, cfg: ProviderConfig, wg: u8) -> Provider {
        let p = Provider::with_clock(
            params(
                h.key.clone(),
                cfg,
                &h.net,
                wg,
                h.ln.clone(),
                h.tunnel.clone(),
                &h.audit,
                &h.db,
            ),
            h.clock.clone(),
        )
        .unwrap();
        p.start().await.unwrap();
        p
    }

    #[tokio::test]
    async fn a_moved_provider_revises_its_unreleased_leases_once_without_credit() {
        let h = harness().await;
        let mut ids = Vec::new();
        for n in [1, 2] {
            let pay = rent_and_pay(&h, n).await;
            let reply = h.provider.handle(renter_peer(n), result_for(&pay)).await;
            assert!(matches!(reply, Message::Lease(_)), "{reply:?}");
            ids.push(pay.lease_id);
        }
        let ended = h
            .provider
            .handle(renter_peer(2), lease_end(2, &ids[1], &h))
            .await;
        assert!(matches!(ended, Message::Status(_)), "{ended:?}");
        let before: Vec<ProviderLease> = ids
            .iter()
            .map(|id| h.provider.inner.leases.get(id).unwrap().unwrap())
            .collect();

        // Same endpoint and key: nothing to revise.
        let same = moved(&h, &ProviderConfig::default().endpoint, 1).await;
        assert_eq!(same.revise_moved_leases().await.unwrap(), 0);
        assert_eq!(count(&h.audit, "lease_revised"), 0);

        let p = moved(&h, "192.0.2.99:51999", 5).await;
        let active = p.inner.leases.get(&ids[0]).unwrap().unwrap();
        assert_eq!(active.lease.revision, before[0].lease.revision + 1);
        assert_eq!(active.lease.endpoint, "192.0.2.99:51999");
        assert_eq!(active.lease.provider_wg_pubkey, WgKey([6; 32]));
        assert_eq!(active.lease.credit_sat, before[0].lease.credit_sat);
        assert_eq!(active.lease.paid_until, before[0].lease.paid_until);
        assert_eq!(active.paid_sat, before[0].paid_sat);
        assert_eq!(active.signed.verify().unwrap(), active.lease);
        // The renter sees it in the status it polls.
        let status = p
            .handle(
                renter_peer(1),
                Message::StatusRequest(StatusRequest {
                    lease_id: ids[0].clone(),
                }),
            )
            .await;
        let Message::Status(s) = status else {
            panic!("wanted status, got {status:?}")
        };
        assert_eq!(
            s.lease.unwrap().verify().unwrap().revision,
            active.lease.revision
        );
        // A released lease is left as it ended.
        let released = p.inner.leases.get(&ids[1]).unwrap().unwrap();
        assert_eq!(released.lease, before[1].lease);
        assert_eq!(count(&h.audit, "lease_revised"), 1);
        // Once revised, a later start revises nothing.
        assert_eq!(
            moved(&h, "192.0.2.99:51999", 5)
                .await
                .revise_moved_leases()
                .await
                .unwrap(),
            0
        );
        assert_eq!(count(&h.audit, "lease_revised"), 1);
    }

    #[tokio::test]
    async fn a_provider_withholding_leases_takes_the_payment_and_never_issues() {
        let h = harness().await;
        let cfg = ProviderConfig {
            ipv6_pools: Vec::new(),
            fault: FaultConfig {
                withhold_leases: true,
            },
            ..ProviderConfig::default()
        };
        let p = restarted(&h, cfg, 1).await;
        let req = Message::RentRequest(RentRequest {
            request_id: "0101".repeat(8),
            offer_id: p.offer().id(),
            credit_sat: 1_000,
            ipv4_prefix_len: Some(32),
            ipv6_prefix_len: None,
            wg_pubkey: WgKey([1; 32]),
        });
        let Message::PayInvoice(pay) = p.handle(renter_peer(1), req).await else {
            panic!("the faulty provider still sells")
        };
        h.net
            .node("renter")
            .unwrap()
            .pay_invoice(PayRequest {
                bolt11: pay.bolt11.clone(),
                fee_limit_msat: 10_000,
                timeout_secs: 30,
            })
            .await
            .unwrap();
        // Answered at once with a refusal the renter retries, never with the lease.
        for _ in 0..2 {
            let reply = p.handle(renter_peer(1), result_for(&pay)).await;
            assert!(
                matches!(&reply, Message::Error(e) if e.code == ErrorCode::NotSettled),
                "{reply:?}"
            );
            p.tick().await.unwrap();
        }
        assert!(p.leases().unwrap().is_empty());
        assert_eq!(count(&h.audit, "lease_issued"), 0);
        assert_eq!(count(&h.audit, "invoice_settled"), 0);
        assert!(h.tunnel.inner.peer_stats("lwt0").await.unwrap().is_empty());
        // The settlement checks never even asked the node.
        assert_eq!(h.ln.lookups.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_peer_the_tunnel_refuses_is_retried_until_it_is_in_place() {
        let h = harness().await;
        // Out of file descriptors: every peer change fails.
        h.tunnel.add_fails.store(true, Ordering::SeqCst);
        let pay = rent_and_pay(&h, 1).await;
        let reply = h.provider.handle(renter_peer(1), result_for(&pay)).await;
        assert!(
            matches!(reply, Message::Lease(_)),
            "paid: issued: {reply:?}"
        );
        let rec = |h: &Harness| h.provider.inner.leases.get(&pay.lease_id).unwrap().unwrap();
        assert_eq!(rec(&h).state, LeaseState::Active);
        assert!(rec(&h).tunnel_pending, "no peer yet: pending");
        assert!(peers(&h).await.is_empty());
        assert_eq!(count(&h.audit, "error"), 1);

        // Retried every pass, audited once; a restart meanwhile does not fail on it.
        h.provider.tick().await.unwrap();
        let again = restarted(
            &h,
            ProviderConfig {
                ipv6_pools: Vec::new(),
                ..ProviderConfig::default()
            },
            1,
        )
        .await;
        again.tick().await.unwrap();
        assert!(rec(&h).tunnel_pending);
        assert_eq!(count(&h.audit, "error"), 1, "one entry per outage");

        // The backend works again: the next pass puts the peer in place.
        h.tunnel.add_fails.store(false, Ordering::SeqCst);
        h.provider.tick().await.unwrap();
        assert!(!rec(&h).tunnel_pending);
        assert_eq!(peers(&h).await.len(), 1);
        assert_eq!(peers(&h).await[0].0, WgKey([1; 32]));
    }

    #[tokio::test]
    async fn a_failed_write_refuses_new_work_until_a_probe_succeeds() {
        let h = harness().await;
        h.provider
            .inner
            .disk
            .record_failure("No space left on device (os error 28)");
        for msg in [
            rent_request(&h, 1, 1, 1_000),
            Message::TopUpRequest(TopUpRequest {
                request_id: "ab".repeat(16),
                lease_id: "L".into(),
                amount_sat: 500,
            }),
        ] {
            match h.provider.handle(renter_peer(1), msg).await {
                Message::Error(e) => {
                    assert_eq!(e.code, ErrorCode::Unavailable);
                    assert!(
                        e.message.contains("cannot write to its disk"),
                        "{}",
                        e.message
                    );
                }
                other => panic!("new work taken on a failing disk: {other:?}"),
            }
        }
        // Reads are served meanwhile.
        let hello = Message::Hello(crate::wire::Hello::ours(false, true, "regtest"));
        assert!(matches!(
            h.provider.handle(renter_peer(1), hello).await,
            Message::Offer(_)
        ));
        // The next pass probes the disk; the write works, so new work is taken again.
        h.provider.tick().await.unwrap();
        assert_eq!(h.provider.disk_refusal(), None);
        assert!(matches!(
            h.provider
                .handle(renter_peer(1), rent_request(&h, 1, 1, 1_000))
                .await,
            Message::PayInvoice(_)
        ));
    }

    /// A tmpfs of `mib` MiB mounted for one test, unmounted on drop.
    struct Tmpfs {
        dir: tempfile::TempDir,
    }

    impl Tmpfs {
        fn mount(mib: u64) -> Option<Tmpfs> {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            ok.then_some(Tmpfs { dir })
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            // Lazy: sled's threads may still hold a file for a moment, and a plain umount
            // would then fail with "busy" and leave the tmpfs mounted after the test.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }

    #[tokio::test]
    async fn a_nearly_full_disk_refuses_new_leases_credits_a_payment_and_recovers_by_itself() {
        let Some(fs) = Tmpfs::mount(32) else {
            eprintln!(
                "SKIPPED a_nearly_full_disk_refuses_new_leases_credits_a_payment_and_recovers_by_itself: \
                 needs root to mount a tmpfs"
            );
            return;
        };
        let root = fs.dir.path().to_owned();
        let net = MemNetwork::new(&[("provider".into(), 0), ("renter".into(), 1_000_000)]).unwrap();
        let ln = Arc::new(net.node("provider").unwrap());
        let tunnel = Arc::new(FileTunnel::new(root.join("tunnel")).unwrap());
        let db = sled::open(root.join("db")).unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let audit = AuditLog::open(&db, key.clone()).unwrap();
        let clock = Arc::new(ManualClock::starting_now());
        let p = Provider::with_clock(
            params(
                key,
                ProviderConfig {
                    ipv6_pools: Vec::new(),
                    min_free_disk_mib: 12,
                    ..ProviderConfig::default()
                },
                &net,
                1,
                ln,
                tunnel.clone(),
                &audit,
                &db,
            ),
            clock.clone(),
        )
        .unwrap();
        p.watch_disk(root.join("db"));
        p.start().await.unwrap();
        let ask = |n: u8| {
            Message::RentRequest(RentRequest {
                request_id: format!("{n:02}").repeat(16),
                offer_id: p.offer().id(),
                credit_sat: 1_000,
                ipv4_prefix_len: Some(32),
                ipv6_prefix_len: None,
                wg_pubkey: WgKey([n; 32]),
            })
        };
        let Message::PayInvoice(first) = p.handle(renter_peer(1), ask(1)).await else {
            panic!("a healthy disk refused work")
        };

        // Something else fills the disk to below the floor.
        let ballast = root.join("ballast");
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&ballast).unwrap();
            let chunk = vec![0u8; 1 << 20];
            while disk::free_bytes(&root).unwrap() > 6 << 20 {
                f.write_all(&chunk).unwrap();
            }
            f.sync_all().unwrap();
        }
        match p.handle(renter_peer(2), ask(2)).await {
            Message::Error(e) => {
                assert_eq!(e.code, ErrorCode::Unavailable);
                assert!(e.message.contains("disk nearly full"), "{}", e.message);
            }
            other => panic!("new work taken on a full disk: {other:?}"),
        }
        assert!(p.disk_refusal().is_some(), "the CLI's status shows it");
        // Reads are served.
        let offer = p
            .handle(
                renter_peer(2),
                Message::Hello(crate::wire::Hello::ours(false, true, "regtest")),
            )
            .await;
        assert!(matches!(offer, Message::Offer(_)), "{offer:?}");

        // A payment that lands meanwhile is credited at once, from the space kept for it.
        net.node("renter")
            .unwrap()
            .pay_invoice(PayRequest {
                bolt11: first.bolt11.clone(),
                fee_limit_msat: 10_000,
                timeout_secs: 30,
            })
            .await
            .unwrap();
        p.tick().await.unwrap();
        let leases = p.leases().unwrap();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].state, LeaseState::Active);
        assert_eq!(tunnel.peer_stats("lwt0").await.unwrap().len(), 1);
        assert_eq!(count(&audit, "lease_issued"), 1);

        // Space comes back: new work is taken again, without a restart.
        std::fs::remove_file(&ballast).unwrap();
        assert_eq!(p.disk_refusal(), None);
        assert!(matches!(
            p.handle(renter_peer(2), ask(2)).await,
            Message::PayInvoice(_)
        ));
        drop(p);
        drop(audit);
        drop(db);
    }

    #[tokio::test]
    async fn a_store_failed_by_a_full_disk_asks_for_a_reopen_which_credits_the_payment() {
        let Some(fs) = Tmpfs::mount(32) else {
            eprintln!(
                "SKIPPED a_store_failed_by_a_full_disk_asks_for_a_reopen_which_credits_the_payment: \
                 needs root to mount a tmpfs"
            );
            return;
        };
        let root = fs.dir.path().to_owned();
        let net = MemNetwork::new(&[("provider".into(), 0), ("renter".into(), 1_000_000)]).unwrap();
        let ln = Arc::new(net.node("provider").unwrap());
        let tunnel = Arc::new(FileTunnel::new(root.join("tunnel")).unwrap());
        let clock = Arc::new(ManualClock::starting_now());
        let key = SigningKey::from_bytes(&[7; 32]);
        let open = |db: &sled::Db, audit: &AuditLog| {
            let p = Provider::with_clock(
                params(
                    key.clone(),
                    ProviderConfig {
                        ipv6_pools: Vec::new(),
                        min_free_disk_mib: 12,
                        ..ProviderConfig::default()
                    },
                    &net,
                    1,
                    ln.clone(),
                    tunnel.clone(),
                    audit,
                    db,
                ),
                clock.clone(),
            )
            .unwrap();
            p.watch_disk(root.join("db"));
            p
        };
        let ask = |p: &Provider, n: u8| {
            Message::RentRequest(RentRequest {
                request_id: format!("{n:02}").repeat(16),
                offer_id: p.offer().id(),
                credit_sat: 1_000,
                ipv4_prefix_len: Some(32),
                ipv6_prefix_len: None,
                wg_pubkey: WgKey([n; 32]),
            })
        };
        let db = crate::datadir::open_db(&root.join("db")).unwrap();
        let audit = AuditLog::open(&db, key.clone()).unwrap();
        let p = open(&db, &audit);
        p.start().await.unwrap();
        let Message::PayInvoice(first) = p.handle(renter_peer(1), ask(&p, 1)).await else {
            panic!("a healthy disk refused work")
        };

        // Something fills the disk to the last byte; the store's next writes fail.
        let ballast = root.join("ballast");
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&ballast).unwrap();
            let chunk = vec![0u8; 64 << 10];
            while f.write_all(&chunk).is_ok() {}
            let _ = f.sync_all();
        }
        net.node("renter")
            .unwrap()
            .pay_invoice(PayRequest {
                bolt11: first.bolt11.clone(),
                fee_limit_msat: 10_000,
                timeout_secs: 30,
            })
            .await
            .unwrap();
        for _ in 0..200 {
            if p.inner.disk.is_failing() {
                break;
            }
            let _ = p.tick().await;
            let _ = p.refresh_offer(true).await.map_err(|e| {
                p.inner.disk.record_failure(&e.to_string());
            });
        }
        assert!(p.inner.disk.is_failing(), "no write failed on a full disk");
        assert!(
            !p.store_needs_reopen(),
            "no reopen while the disk is still full"
        );

        // Space comes back, but sled keeps failing until the database is opened again: the
        // probes see it, and the provider asks for a reopen (the daemon restarts the node).
        std::fs::remove_file(&ballast).unwrap();
        for _ in 0..3 {
            let _ = p.tick().await;
        }
        assert!(p.store_needs_reopen());
        assert!(matches!(
            p.handle(renter_peer(2), ask(&p, 2)).await,
            Message::Error(e) if e.code == ErrorCode::Unavailable
        ));
        drop(p);
        drop(audit);
        drop(db);

        // Reopened: the payment that landed meanwhile is credited, and new work is taken.
        let db = crate::datadir::open_db(&root.join("db")).unwrap();
        let audit = AuditLog::open(&db, key.clone()).unwrap();
        let p = open(&db, &audit);
        p.start().await.unwrap();
        p.tick().await.unwrap();
        let leases = p.leases().unwrap();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].lease.lease_id, first.lease_id);
        assert_eq!(leases[0].state, LeaseState::Active);
        assert!(!p.store_needs_reopen());
        assert!(matches!(
            p.handle(renter_peer(2), ask(&p, 2)).await,
            Message::PayInvoice(_)
        ));
        drop(p);
        drop(audit);
        drop(db);
    }
}
