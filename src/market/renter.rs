//! The renter role.
//!
//! 1. Discovery: find providers on the DHT topic, `hello` each, verify the signed offer it
//!    answers with (signer == provider, unexpired, our network, sane terms and sizes), and
//!    measure the round trip.
//! 2. Rent: rank the offers that lease the sizes asked and pass the filters ([`super::select`],
//!    at their effective rate, [`super::sizes`]), send `rentRequest`, and check the invoice before
//!    paying anything: amount equals the terms, payee equals the offer's LN node, not expiring
//!    too soon, description hash equals the commitment we compute ourselves, hash never paid.
//! 3. Pay: the intent is persisted and audited before the payment starts; the outcome after.
//! 4. Send `paymentResult`, verify the signed lease against what we asked for, configure the
//!    tunnel and write the wg-quick file.
//!
//! Locking is per lease and per payment, never global: one top-up (or release) per lease at a
//! time, one completion per payment hash; `rent` holds nothing while it waits for offers. A
//! payment hash is claimed by compare-and-swap before any money moves, so it is never paid
//! twice. Lease states come from [`super::lease::next`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ipnet::IpNet;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use serde_json::json;

mod autopay;
mod complete;
pub mod config;
mod discovery;
mod endpoint;
mod failover;
mod manual;
mod payment;
mod receipts;
mod refund;
mod rent;
mod tunnel;

pub use autopay::{AutopayConfig, AutopayNote, RentalStats};
pub use discovery::{FETCH_CONCURRENCY, ProviderHistory, RECHECK_SECS};
pub use failover::{FailoverRecord, LeaseHealth};
pub use manual::ManualInvoice;
pub use payment::OpenPayment;
use payment::PaymentRecord;
pub use receipts::KeptReceipt;
pub use refund::{RenterRefund, refund_description_hash};
use tunnel::lease_addresses;

use super::lease::{self, Event, Kind};
use super::locks::KeyedLocks;
use super::offers::OfferCache;
use super::store::{Store, Table};
use super::{MarketError, Peers, select};
use crate::audit::{AuditKind, AuditLog};
use crate::identity::WgKeyPair;
use crate::lightning::invoice::{InvoiceExpectation, check_invoice};
use crate::lightning::{LightningNode, PayRequest};
pub use crate::market::select::Filters;
pub use crate::market::sizes::Sizes;
use crate::tunnel::{InterfaceSpec, PeerSpec, RoutingPolicy, Tunnel, render_wg_quick};
use crate::types::{Clock, DAY_SECS, Sats, SystemClock, WgKey, random_id};
use crate::wire::{
    ErrorCode, Hello, InvoiceCommitment, Lease, LeaseEnd, LeaseState, Message, Offer,
    PURPOSE_ACTIVATION, PURPOSE_TOPUP, PayInvoice, PaymentResult, RentRequest, Signed,
    StatusRequest, TerminationNotice, TopUpRequest,
};
pub use config::RenterConfig;

/// Routing table for source policy routing of leased addresses.
const POLICY_TABLE: u32 = 51820;

/// Everything a renter needs. Built by the node.
pub struct RenterParams {
    /// Node signing key: names us, and signs the `leaseEnd` of a lease we release.
    pub key: SigningKey,
    /// Renter settings.
    pub cfg: RenterConfig,
    /// Lightning network name.
    pub network: String,
    /// Routing fee limit per payment, absolute.
    pub fee_limit_sat: u64,
    /// Routing fee limit per payment, in millionths of the amount (0: none); the lower of the
    /// two limits applies.
    pub fee_limit_ppm: u64,
    /// Payment timeout.
    pub payment_timeout_secs: u32,
    /// The node's WireGuard private key: only leases made before each lease got its own key
    /// pair still use it.
    pub wg_private: WgKey,
    /// The node's WireGuard public key (see `wg_private`).
    pub wg_public: WgKey,
    /// Base interface name.
    pub iface: String,
    /// Keepalive towards the provider.
    pub keepalive: u16,
    /// Where wg-quick files go (D/wireguard); each lease's WireGuard key goes to its `keys/`.
    pub conf_dir: PathBuf,
    /// Link wg-quick files into this directory (normally /etc/wireguard, when running as root
    /// and it is writable); `None` links nothing.
    pub etc_wireguard: Option<PathBuf>,
    /// Lightning backend.
    pub ln: Arc<dyn LightningNode>,
    /// Tunnel backend.
    pub tunnel: Arc<dyn Tunnel>,
    /// Audit log.
    pub audit: AuditLog,
    /// Network access.
    pub peers: Arc<dyn Peers>,
    /// Database.
    pub db: sled::Db,
}

/// An offer we have seen and verified.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KnownOffer {
    /// Provider PeerId.
    pub peer: String,
    /// Offer id.
    pub offer_id: String,
    /// Decoded offer.
    pub offer: Offer,
    /// As signed.
    pub signed: Signed<Offer>,
    /// Round trip of the hello that fetched it; zero until this renter has asked the provider
    /// itself (an offer learned from another member's cache).
    pub rtt: Duration,
    /// When we fetched or learned this version.
    pub seen_at: u64,
    /// When this renter first verified an offer of this provider, unix milliseconds of the
    /// wall clock (a measurement for operators and the simnet, not market time: kept across
    /// the provider's later versions).
    pub first_verified_ms: u64,
}

/// A lease as the renter keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rental {
    /// Latest lease.
    pub lease: Lease,
    /// As signed by the provider.
    pub signed: Signed<Lease>,
    /// State as we last learned it.
    pub state: LeaseState,
    /// Total paid for this lease, sat.
    pub paid_sat: Sats,
    /// Interface carrying it.
    pub iface: String,
    /// wg-quick file.
    pub conf_path: PathBuf,
    /// LN node of the offer the lease was made under: top-up invoices must be signed by it.
    pub provider_ln_pubkey: String,
    /// AutoPay keeps this lease's credit topped up.
    #[serde(default)]
    pub autopay: bool,
    /// Payment and AutoPay counters.
    #[serde(default)]
    pub stats: RentalStats,
    /// Request id of the rent that made this lease's own WireGuard key pair
    /// (`D/wireguard/keys/<id>.key`, 0600). `None`: a lease from before per-lease keys, which
    /// uses the node's shared key.
    #[serde(default)]
    pub wg_key_id: Option<String>,
    /// Our signed `leaseEnd`, once we released the lease.
    #[serde(default)]
    pub lease_end: Option<Signed<LeaseEnd>>,
    /// Released, but the provider has not confirmed our `leaseEnd` yet: the tick sends it again
    /// until it does.
    #[serde(default)]
    pub end_unsent: bool,
    /// The provider's signed notice that it ends this lease, as its status showed it.
    #[serde(default)]
    pub termination: Option<Signed<TerminationNotice>>,
    /// What the periodic tunnel checks saw of this lease (failover).
    #[serde(default)]
    pub health: LeaseHealth,
    /// This lease is being (or has been) replaced by a lease from another provider: it gets
    /// no more top-ups. At most one per lease.
    #[serde(default)]
    pub failover: Option<FailoverRecord>,
    /// The lease this one replaced, when it was bought by a failover.
    #[serde(default)]
    pub failed_over_from: Option<String>,
    /// Why a failover this lease would need is not done (for `status`), e.g. AutoPay is off.
    #[serde(default)]
    pub failover_note: Option<String>,
    /// The refund of unused credit, when the lease ended early under terms that promise one.
    #[serde(default)]
    pub refund: RenterRefund,
}

impl Rental {
    /// When the provider's termination notice ends this lease, if it gave one.
    pub fn terminates_at(&self) -> Option<u64> {
        self.termination
            .as_ref()
            .and_then(|n| n.verify().ok())
            .map(|n| n.ends_at)
    }
}

impl Rental {
    /// Credit left at `now`.
    pub fn remaining_credit(&self, now: u64) -> Sats {
        self.lease.remaining_credit(now)
    }
}

/// One line per rental for "choose one" messages: id, state, provider and addresses.
fn lease_list(rentals: &[Rental]) -> String {
    let mut sorted: Vec<&Rental> = rentals.iter().collect();
    sorted.sort_by_key(|r| r.lease.activated_at);
    sorted
        .iter()
        .map(|r| {
            let addrs: Vec<&str> = r
                .lease
                .ipv4
                .iter()
                .chain(r.lease.ipv6.iter())
                .map(String::as_str)
                .collect();
            format!(
                "{} ({}, provider {}, {})",
                r.lease.lease_id,
                r.state.as_str(),
                r.lease.provider,
                addrs.join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The renter role. Cheap to clone.
#[derive(Clone)]
pub struct Renter {
    inner: Arc<Inner>,
}

struct Inner {
    /// Node key: signs our `leaseEnd`s.
    key: SigningKey,
    peer_id: PeerId,
    cfg: RenterConfig,
    network: String,
    fee_limit_sat: u64,
    fee_limit_ppm: u64,
    payment_timeout_secs: u32,
    wg_private: WgKey,
    wg_public: WgKey,
    iface: String,
    keepalive: u16,
    conf_dir: PathBuf,
    etc_wireguard: Option<PathBuf>,
    ln: Arc<dyn LightningNode>,
    tunnel: Arc<dyn Tunnel>,
    audit: AuditLog,
    /// Payment history for the spending limits, kept beside the audit log.
    payment_index: super::limits::PaymentIndex,
    peers: Arc<dyn Peers>,
    offers: Mutex<HashMap<String, KnownOffer>>,
    /// Offers replaced by a newer version of the same provider, by old id: the provider and
    /// the old offer with its availability and dates left out ([`discovery::sale_terms`]).
    /// A provider re-signs its offer each time what it has free changes, so an id the user
    /// copied a moment ago may be gone; `rent --offer OLD` still buys when nothing for sale
    /// changed. Bounded: emptied when it reaches [`discovery::MAX_SUPERSEDED`].
    superseded: Mutex<HashMap<String, (String, Offer)>>,
    /// Every verified offer this node knows, learned from providers and from other members
    /// (shared with the node's provider role when it has one); `offers` is filled from it.
    offer_cache: OfferCache,
    /// When we last asked each member for the offers it knows (unix seconds): the exchange of
    /// a discovery pass goes to those asked least recently.
    pulled: Mutex<HashMap<PeerId, u64>>,
    /// Rate limit of the audit entries of refused offers, per peer.
    refusals: super::offers::RefusalAudits,
    rentals: Table<Rental>,
    payments: Table<PaymentRecord>,
    /// Every receipt the providers signed, per lease id (see `receipts`).
    receipts: Table<Vec<KeptReceipt>>,
    /// The providers' audit heads this renter has witnessed, and evidence against them.
    witness: super::witness::Witness,
    /// What this renter has seen of each provider, by PeerId: deliveries and failures.
    providers: Table<ProviderHistory>,
    /// Per lease: one top-up, manual invoice or release at a time.
    lease_locks: KeyedLocks,
    /// Per payment hash: one completion (fetching and applying the lease) at a time.
    pay_locks: KeyedLocks,
    /// Interface names chosen for leases being applied and not stored yet.
    iface_claims: Mutex<HashSet<String>>,
    /// By lease id: the address its provider's DNS endpoint last resolved to (this run).
    resolved: Mutex<HashMap<String, std::net::SocketAddr>>,
    clock: Arc<dyn Clock>,
}

/// What `rent` should do.
#[derive(Clone, Debug, Default)]
pub struct RentArgs {
    /// A specific offer; `None` picks the best.
    pub offer_id: Option<String>,
    /// Credit to buy; `None` = configured default.
    pub credit_sat: Option<Sats>,
    /// How long to wait for offers.
    pub timeout: Duration,
    /// Prefix sizes to ask for; `None` = `renter.ipv4_prefix_len` / `ipv6_prefix_len`.
    pub sizes: Option<Sizes>,
    /// Offer filters; `None` = the `[renter]` ones (`max_price_sat_per_day`,
    /// `allow_providers`, `deny_providers`).
    pub filters: Option<Filters>,
}

impl Renter {
    /// The renter's settings.
    pub fn config(&self) -> &RenterConfig {
        &self.inner.cfg
    }

    /// Opens the renter's state, on the system clock.
    pub fn new(p: RenterParams) -> Result<Renter, MarketError> {
        Renter::with_clock(p, Arc::new(SystemClock))
    }

    /// Like [`Renter::new`], reading the time from `clock`.
    pub fn with_clock(p: RenterParams, clock: Arc<dyn Clock>) -> Result<Renter, MarketError> {
        let cache = OfferCache::new(&p.network, super::offers::DEFAULT_CAPACITY);
        Renter::with_cache(p, clock, cache)
    }

    /// Like [`Renter::with_clock`], keeping the offers it learns in `offer_cache` (which the
    /// node's provider role, if any, serves to other members).
    pub fn with_cache(
        p: RenterParams,
        clock: Arc<dyn Clock>,
        offer_cache: OfferCache,
    ) -> Result<Renter, MarketError> {
        let peer_id = crate::wire::signed::peer_id_of(&p.key.verifying_key());
        let db: &dyn Store = &p.db;
        Ok(Renter {
            inner: Arc::new(Inner {
                rentals: Table::open(db, "renter_rentals")?,
                payments: Table::open(db, "renter_payments")?,
                receipts: Table::open(db, "renter_receipts")?,
                witness: super::witness::Witness::open(db, p.audit.clone())?,
                providers: Table::open(db, "renter_providers")?,
                key: p.key,
                peer_id,
                cfg: p.cfg,
                network: p.network,
                fee_limit_sat: p.fee_limit_sat,
                fee_limit_ppm: p.fee_limit_ppm,
                payment_timeout_secs: p.payment_timeout_secs,
                wg_private: p.wg_private,
                wg_public: p.wg_public,
                iface: p.iface,
                keepalive: p.keepalive,
                conf_dir: p.conf_dir,
                etc_wireguard: p.etc_wireguard,
                ln: p.ln,
                tunnel: p.tunnel,
                payment_index: super::limits::PaymentIndex::open(&p.db)
                    .map_err(|e| MarketError::Store(e.to_string()))?,
                audit: p.audit,
                peers: p.peers,
                offers: Mutex::new(HashMap::new()),
                superseded: Mutex::new(HashMap::new()),
                offer_cache,
                pulled: Mutex::new(HashMap::new()),
                refusals: super::offers::RefusalAudits::default(),
                lease_locks: KeyedLocks::default(),
                pay_locks: KeyedLocks::default(),
                iface_claims: Mutex::new(HashSet::new()),
                resolved: Mutex::new(HashMap::new()),
                clock,
            }),
        })
    }

    /// Current unix time on the renter's clock.
    fn now(&self) -> u64 {
        self.inner.clock.now_unix()
    }

    /// Appends to the audit log, awaiting durability; a failure is logged, never fatal.
    async fn audit(&self, kind: AuditKind, payload: serde_json::Value) {
        if let Err(e) = self.inner.audit.append_async(kind, &payload).await {
            tracing::error!(error = %e, ?kind, "audit append failed");
        }
    }

    /// Logs and audits a failure of one item of a background pass, which then goes on.
    /// `key` names what `id` is (`lease_id`, `payment_hash`).
    async fn item_failed(&self, what: &str, key: &str, id: &str, e: &MarketError) {
        tracing::warn!(error = %e, key, id, "{what} failed; going on with the others");
        let mut payload = json!({"error": format!("{what}: {e}")});
        payload[key] = json!(id);
        self.audit(AuditKind::Error, payload).await;
    }

    /// Re-applies the tunnel of every active rental (idempotent), e.g. after a restart.
    pub async fn start(&self) -> Result<(), MarketError> {
        for (_, r) in self.inner.rentals.all()? {
            if r.state == LeaseState::Active {
                self.apply_tunnel(&r.lease, &r.iface, r.wg_key_id.as_deref())
                    .await?;
            }
        }
        Ok(())
    }

    /// Every rental.
    pub fn rentals(&self) -> Result<Vec<Rental>, MarketError> {
        Ok(self
            .inner
            .rentals
            .all()?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// The rental `lease_id` (a unique prefix will do). Empty: the one lease held (not
    /// released), or when none is held the latest one.
    ///
    /// # Errors
    /// [`MarketError::NotFound`] when there is no such lease; [`MarketError::Invalid`] when the
    /// choice is ambiguous (empty with several leases held, or a prefix of several ids): the
    /// message lists the candidates, to be picked with `--lease`.
    pub fn rental(&self, lease_id: &str) -> Result<Rental, MarketError> {
        let all = self.rentals()?;
        let found: Vec<Rental> = if lease_id.is_empty() {
            let held: Vec<Rental> = all
                .iter()
                .filter(|r| r.state != LeaseState::Released)
                .cloned()
                .collect();
            if held.is_empty() {
                all.into_iter()
                    .max_by_key(|r| r.lease.activated_at)
                    .into_iter()
                    .collect()
            } else {
                held
            }
        } else if let Some(exact) = all.iter().find(|r| r.lease.lease_id == lease_id) {
            vec![exact.clone()]
        } else {
            all.into_iter()
                .filter(|r| r.lease.lease_id.starts_with(lease_id))
                .collect()
        };
        match found.len() {
            0 => Err(MarketError::NotFound(if lease_id.is_empty() {
                "no lease yet".into()
            } else {
                format!("lease {lease_id}")
            })),
            1 => Ok(found.into_iter().next().expect("one rental")),
            n => Err(MarketError::Invalid(format!(
                "{n} leases match; choose one with --lease: {}",
                lease_list(&found)
            ))),
        }
    }

    /// Follows the provider's metering locally: a rental whose credit ran out is suspended
    /// (its tunnel stays configured, so back rent brings it back on the same addresses); once
    /// the provider's reserve period is over too, everything set up for it is removed.
    ///
    /// # Errors
    /// Only when the rentals cannot be read; a failing lease is logged and audited and the
    /// pass goes on. A lease busy with a top-up or release is left for the next pass.
    pub async fn tick(&self) -> Result<(), MarketError> {
        for (id, _) in self.inner.rentals.all()? {
            let Some(_lease) = self.inner.lease_locks.try_lock(&id) else {
                continue;
            };
            if let Err(e) = self.meter(&id).await {
                self.item_failed("renter tick", "lease_id", &id, &e).await;
            }
            // Learn of termination notices (shown in `status`, heeded by AutoPay) from the
            // provider's status; an unreachable provider is simply asked again next time.
            if self
                .inner
                .rentals
                .get(&id)?
                .is_some_and(|r| r.state == LeaseState::Active && r.termination.is_none())
                && let Err(e) = self.refresh(&id).await
            {
                tracing::debug!(lease_id = %id, error = %e, "status poll failed");
            }
            // A provider reached by DNS name may have moved to another address.
            if let Err(e) = self.reresolve_endpoint(&id).await {
                tracing::debug!(lease_id = %id, error = %e, "endpoint not re-resolved");
            }
            // A release the provider has not confirmed yet: tell it again.
            if self
                .inner
                .rentals
                .get(&id)?
                .is_some_and(|r| r.end_unsent && r.state == LeaseState::Released)
                && let Err(e) = self.send_lease_end(&id).await
            {
                tracing::info!(lease_id = %id, error = %e, "provider still not told of the release; retrying later");
            }
            // An ended lease whose terms promise a refund: ask for it until it has arrived.
            if self
                .inner
                .rentals
                .get(&id)?
                .is_some_and(|r| Renter::refund_pending(&r))
                && let Err(e) = self.claim_refund(&id).await
            {
                tracing::info!(lease_id = %id, error = %e, "refund not claimed yet; retrying later");
            }
        }
        // Check each provider's audit log head against the one seen last time.
        self.witness_providers().await;
        Ok(())
    }

    /// One lease of [`Renter::tick`]; the caller holds its lock.
    async fn meter(&self, id: &str) -> Result<(), MarketError> {
        let Some(r) = self.inner.rentals.get(id)? else {
            return Ok(());
        };
        if let Some(ends_at) = r.terminates_at()
            && self.now() >= ends_at
            && r.state != LeaseState::Released
        {
            // The provider's notice is over: it released the lease, so do we.
            let t = lease::next(Some(r.state), Event::Release, self.now())?;
            self.teardown_tunnel(&r).await?;
            let r = self.set_state(id, t.state).await?;
            self.forget_lease_key(&r);
            self.audit(
                AuditKind::LeaseReleased,
                json!({"lease_id": id, "reason": "terminated by the provider", "ends_at": ends_at}),
            )
            .await;
            return Ok(());
        }
        let t = lease::next(
            Some(r.state),
            Event::Tick {
                paid_until: r.lease.paid_until,
                reserve_days: r.lease.terms.reserve_days,
            },
            self.now(),
        )?;
        match t.kind {
            Some(Kind::Suspended) => {
                self.set_state(id, t.state).await?;
                self.audit(
                    AuditKind::LeaseSuspended,
                    json!({"lease_id": id, "paid_until": r.lease.paid_until}),
                )
                .await;
            }
            Some(Kind::Expired) => {
                self.teardown_tunnel(&r).await?;
                self.set_state(id, t.state).await?;
                self.forget_lease_key(&r);
                self.audit(
                    AuditKind::LeaseReleased,
                    json!({"lease_id": id, "reason": "reserve period over"}),
                )
                .await;
            }
            _ => {}
        }
        Ok(())
    }

    /// Stores a new state for a rental, keeping whatever else changed meanwhile.
    async fn set_state(&self, id: &str, state: LeaseState) -> Result<Rental, MarketError> {
        self.update_rental(id, |r| r.state = state).await
    }

    /// Applies `f` to the stored rental `id` (read-modify-write, retried on a concurrent
    /// write) and returns what was stored.
    async fn update_rental(
        &self,
        id: &str,
        f: impl Fn(&mut Rental),
    ) -> Result<Rental, MarketError> {
        self.inner
            .rentals
            .update(id, |cur| {
                let mut r = cur
                    .cloned()
                    .ok_or_else(|| MarketError::NotFound(format!("lease {id}")))?;
                f(&mut r);
                Ok(Some(r))
            })
            .await?
            .ok_or_else(|| MarketError::NotFound(format!("lease {id}")))
    }

    /// The rental `lease_id` would release, and the credit given up by releasing it now
    /// (what the provider's ledger would still meter). When the lease's terms promise a
    /// refund (`lease.terms.refund_unused`), that amount is what we expect back; otherwise
    /// nothing of it is paid back.
    ///
    /// # Errors
    /// As [`Renter::rental`]; [`MarketError::Invalid`] for a lease already released.
    pub fn release_preview(&self, lease_id: &str) -> Result<(Rental, Sats), MarketError> {
        let r = self.rental(lease_id)?;
        if r.state == LeaseState::Released {
            return Err(MarketError::Invalid(format!(
                "lease {} is already released",
                r.lease.lease_id
            )));
        }
        let forfeit = r.remaining_credit(self.now());
        Ok((r, forfeit))
    }

    /// Gives a lease up: removes its interface, routes, rules, wg-quick file, link and
    /// WireGuard key, marks it released and sends the provider our signed `leaseEnd`, so it
    /// stops metering, removes the peer and frees the prefixes after its reserve period. The
    /// remaining credit is given up, unless the terms promise a refund: then later ticks
    /// claim it ([`Rental::refund`]). A provider that cannot be reached is told on later ticks
    /// ([`Rental::end_unsent`]); the release itself is done locally either way.
    pub async fn release(&self, lease_id: &str) -> Result<Rental, MarketError> {
        let id = self.rental(lease_id)?.lease.lease_id;
        let _lease = self.inner.lease_locks.lock(&id).await;
        let (r, forfeit) = self.release_preview(&id)?;
        let now = self.now();
        let t = lease::next(Some(r.state), Event::Release, now)?;
        let end = LeaseEnd {
            lease_id: id.clone(),
            provider: r.lease.provider.clone(),
            renter: self.inner.peer_id.to_string(),
            ended_at: now,
        };
        let signed =
            Signed::sign(&self.inner.key, &end).map_err(|e| MarketError::Store(e.to_string()))?;
        self.teardown_tunnel(&r).await?;
        let r = self
            .inner
            .rentals
            .update(&id, |cur| {
                let mut r = cur
                    .cloned()
                    .ok_or_else(|| MarketError::NotFound(format!("lease {id}")))?;
                r.state = t.state;
                r.lease_end = Some(signed.clone());
                r.end_unsent = true;
                Ok(Some(r))
            })
            .await?
            .ok_or_else(|| MarketError::NotFound(format!("lease {id}")))?;
        self.forget_lease_key(&r);
        self.audit(
            AuditKind::LeaseReleased,
            json!({"lease_id": r.lease.lease_id, "reason": "released by the renter",
                   "forfeited_credit_sat": forfeit}),
        )
        .await;
        tracing::info!(lease_id = %r.lease.lease_id, iface = %r.iface, forfeit, "lease released");
        match self.send_lease_end(&id).await {
            Ok(r) => Ok(r),
            Err(e) => {
                tracing::warn!(lease_id = %id, error = %e, "provider not told of the release; retrying on later ticks");
                self.rental(&id)
            }
        }
    }

    /// Sends the stored `leaseEnd` of a released rental to its provider; once the provider's
    /// status shows the lease released, [`Rental::end_unsent`] is cleared.
    async fn send_lease_end(&self, id: &str) -> Result<Rental, MarketError> {
        let r = self.rental(id)?;
        let Some(signed) = r.lease_end.clone() else {
            return Ok(r);
        };
        let peer: PeerId = r
            .lease
            .provider
            .parse()
            .map_err(|_| MarketError::Store("bad provider id".into()))?;
        match self
            .inner
            .peers
            .request(peer, Message::LeaseEnd(signed))
            .await?
            .0
        {
            Message::Status(s) if s.lease_id == id && s.state == LeaseState::Released => {}
            Message::Status(s) => {
                return Err(MarketError::Invalid(format!(
                    "provider answered leaseEnd with state {}",
                    s.state.as_str()
                )));
            }
            Message::Error(e) => {
                return Err(MarketError::Refused {
                    code: e.code,
                    message: e.message,
                });
            }
            other => {
                return Err(MarketError::Unexpected {
                    expected: "status",
                    got: other.name(),
                });
            }
        }
        let r = self
            .inner
            .rentals
            .update(id, |cur| {
                let mut r = cur
                    .cloned()
                    .ok_or_else(|| MarketError::NotFound(format!("lease {id}")))?;
                r.end_unsent = false;
                Ok(Some(r))
            })
            .await?
            .ok_or_else(|| MarketError::NotFound(format!("lease {id}")))?;
        self.audit(
            AuditKind::LeaseReleased,
            json!({"lease_id": id, "reason": "provider confirmed the release"}),
        )
        .await;
        tracing::info!(lease_id = %id, "provider confirmed the release");
        Ok(r)
    }

    /// On daemon shutdown: tunnels of active leases stay up (and are adopted on the next
    /// start); those of suspended leases are removed, as nothing flows through them.
    pub async fn shutdown(&self) -> Result<(), MarketError> {
        for (_, r) in self.inner.rentals.all()? {
            if r.state == LeaseState::Suspended {
                self.teardown_tunnel(&r).await?;
            }
        }
        Ok(())
    }

    /// The wg-quick file of a rental.
    pub fn conf(&self, lease_id: &str) -> Result<(PathBuf, String), MarketError> {
        let r = self.rental(lease_id)?;
        let text = std::fs::read_to_string(&r.conf_path).map_err(|e| {
            MarketError::Store(format!("cannot read {}: {e}", r.conf_path.display()))
        })?;
        Ok((r.conf_path, text))
    }

    /// Our PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }
}
