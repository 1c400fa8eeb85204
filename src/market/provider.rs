//! The provider role.
//!
//! 1. Publishes a signed [`Offer`] (terms, availability, LN and WireGuard keys, endpoint) and
//!    re-signs it when availability changes or it nears expiry; the node re-announces it.
//! 2. `rentRequest`: checks it against the current offer, reserves prefixes, creates an invoice
//!    whose description hash commits to the rental ([`InvoiceCommitment`]), answers `payInvoice`.
//! 3. A lease is issued only once the provider's *own* Lightning node reports the invoice
//!    settled: on `paymentResult` (after waiting briefly for settlement) or by the settlement
//!    watcher in [`Provider::tick`]. A renter's claim alone never issues anything.
//! 4. Metering: at `paid_until` the WireGuard peer is removed and the lease suspended; a top-up
//!    (back rent included) reactivates it; after `reserve_days` the prefixes go back to the pool.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ipnet::IpNet;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Mutex, watch};

use super::MarketError;
use super::pool::Pool;
use super::store::Table;
use crate::audit::{AuditKind, AuditLog};
use crate::config::ProviderConfig;
use crate::lightning::{InvoiceRequest, InvoiceState, LightningNode};
use crate::tunnel::{InterfaceSpec, PeerSpec, RoutingPolicy, Tunnel};
use crate::types::{DAY_SECS, Sats, WgKey, now_unix, random_id};
use crate::wire::{
    ErrorCode, ErrorMsg, Hello, InvoiceCommitment, Lease, LeaseState, Message, Offer,
    PURPOSE_ACTIVATION, PURPOSE_TOPUP, PayInvoice, PaymentResult, PrefixAvailability, RentRequest,
    Signed, Status, StatusRequest, TopUpRequest,
};

/// Unpaid invoices (with reserved prefixes) one peer may hold at once.
pub const MAX_UNPAID_PER_PEER: usize = 4;

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
}

impl ProviderLease {
    /// Credit left at `now`.
    pub fn remaining_credit(&self, now: u64) -> Sats {
        let secs = self.lease.paid_until.saturating_sub(now);
        ((secs as u128 * self.lease.terms.rate_sat_per_day as u128) / DAY_SECS as u128) as Sats
    }
}

/// An invoice issued and not yet settled or expired.
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
    meta: sled::Tree,
    offer: RwLock<Signed<Offer>>,
    offer_tx: watch::Sender<u64>,
    /// Serialises settlement handling so each invoice issues or extends a lease exactly once.
    settle_lock: Mutex<()>,
}

fn err(code: ErrorCode, msg: impl Into<String>) -> Message {
    Message::Error(ErrorMsg::new(code, msg))
}

impl Provider {
    /// Opens the provider's state and signs a first offer.
    pub fn new(p: ProviderParams) -> Result<Provider, MarketError> {
        let pool = Pool::open(
            &p.db,
            &p.cfg.ipv4_pools,
            &p.cfg.ipv6_pools,
            p.cfg.ipv4_prefix_len,
            p.cfg.ipv6_prefix_len,
        )?;
        let meta = p.db.open_tree("provider_meta")?;
        let peer_id = crate::wire::signed::peer_id_of(&p.key.verifying_key());
        // A placeholder signature is replaced right below by `refresh_offer`.
        let placeholder = Signed::sign(&p.key, &empty_offer(&peer_id))
            .map_err(|e| MarketError::Store(e.to_string()))?;
        let (offer_tx, _) = watch::channel(0);
        let provider = Provider {
            inner: Arc::new(Inner {
                leases: Table::open(&p.db, "provider_leases")?,
                pending: Table::open(&p.db, "provider_pending")?,
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
                offer_tx,
                settle_lock: Mutex::new(()),
            }),
        };
        provider.refresh_offer(true)?;
        Ok(provider)
    }

    /// Brings the WireGuard interface up and re-applies every active lease (idempotent).
    pub async fn start(&self) -> Result<(), MarketError> {
        let i = &self.inner;
        i.tunnel
            .ensure_interface(&InterfaceSpec {
                name: i.iface.clone(),
                private_key: i.wg_private,
                listen_port: Some(i.listen_port),
                addresses: Vec::new(),
                policy: RoutingPolicy::Provider,
            })
            .await?;
        let mut restored = 0;
        for (_, rec) in i.leases.all()? {
            if rec.state == LeaseState::Active {
                self.apply_peer(&rec.lease).await?;
                restored += 1;
            }
        }
        tracing::info!(
            restored,
            iface = %i.iface,
            backend = i.tunnel.kind(),
            "provider tunnel ready"
        );
        Ok(())
    }

    /// The current signed offer.
    pub fn offer(&self) -> Signed<Offer> {
        self.inner
            .offer
            .read()
            .expect("offer lock not to be poisoned")
            .clone()
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

    fn availability(&self) -> (Vec<PrefixAvailability>, Vec<PrefixAvailability>) {
        let i = &self.inner;
        let (a4, a6) = i.pool.available();
        let v4 = if i.cfg.ipv4_pools.is_empty() {
            Vec::new()
        } else {
            vec![PrefixAvailability {
                prefix_len: i.cfg.ipv4_prefix_len,
                available: a4,
            }]
        };
        let v6 = if i.cfg.ipv6_pools.is_empty() {
            Vec::new()
        } else {
            vec![PrefixAvailability {
                prefix_len: i.cfg.ipv6_prefix_len,
                available: a6,
            }]
        };
        (v4, v6)
    }

    /// Re-signs the offer when `force`, when availability changed, or when it is past half its
    /// lifetime. Returns whether a new offer was made.
    pub fn refresh_offer(&self, force: bool) -> Result<bool, MarketError> {
        let i = &self.inner;
        let now = now_unix();
        let (ipv4, ipv6) = self.availability();
        if !force {
            let current = self.offer();
            if let Ok(o) = current.verify() {
                let fresh = o.expires_at > now + i.cfg.offer_ttl_secs / 2;
                if fresh && o.ipv4 == ipv4 && o.ipv6 == ipv6 {
                    return Ok(false);
                }
            }
        }
        let seq = i
            .meta
            .update_and_fetch("offer_seq", |old| {
                let n = old
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Some((n + 1).to_be_bytes().to_vec())
            })?
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(1);
        i.meta.flush()?;
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
        *i.offer.write().expect("offer lock not to be poisoned") = signed;
        self.audit(
            AuditKind::OfferPublished,
            json!({"offer_id": id, "seq": seq, "ipv4": offer.ipv4, "ipv6": offer.ipv6}),
        );
        tracing::info!(offer_id = %id, seq, "offer signed");
        i.offer_tx.send_replace(seq);
        Ok(true)
    }

    fn audit(&self, kind: AuditKind, payload: serde_json::Value) {
        if let Err(e) = self.inner.audit.append(kind, &payload) {
            tracing::error!(error = %e, ?kind, "audit append failed");
        }
    }

    /// Answers one request from `peer`. Never fails: problems become `error` messages.
    pub async fn handle(&self, peer: PeerId, msg: Message) -> Message {
        match msg {
            Message::Hello(h) => {
                self.audit(
                    AuditKind::Hello,
                    json!({"peer": peer.to_string(), "agent": h.agent, "renter": h.renter}),
                );
                Message::Offer(self.offer())
            }
            Message::RentRequest(r) => self.on_rent_request(peer, r).await,
            Message::TopUpRequest(r) => self.on_topup_request(peer, r).await,
            Message::PaymentResult(r) => self.on_payment_result(peer, r).await,
            Message::StatusRequest(r) => self.on_status(peer, r),
            other => err(
                ErrorCode::Unsupported,
                format!("a provider does not answer {}", other.name()),
            ),
        }
    }

    async fn on_rent_request(&self, peer: PeerId, r: RentRequest) -> Message {
        let i = &self.inner;
        let offer = self.offer();
        if r.offer_id != offer.id() {
            return err(
                ErrorCode::OfferChanged,
                format!(
                    "offer {} is not current; current is {}",
                    r.offer_id,
                    offer.id()
                ),
            );
        }
        let terms = &i.cfg.terms;
        if r.credit_sat < terms.min_initial_credit_sat || r.credit_sat > terms.max_credit_sat {
            return err(
                ErrorCode::BadRequest,
                format!(
                    "credit {} sat outside {}..={} sat",
                    r.credit_sat, terms.min_initial_credit_sat, terms.max_credit_sat
                ),
            );
        }
        if r.ipv4_prefix_len.is_none() && r.ipv6_prefix_len.is_none() {
            return err(ErrorCode::BadRequest, "ask for an IPv4 or IPv6 prefix");
        }
        let want_v4 = r.ipv4_prefix_len.is_some();
        let want_v6 = r.ipv6_prefix_len.is_some();
        if (want_v4
            && (r.ipv4_prefix_len != Some(i.cfg.ipv4_prefix_len) || i.cfg.ipv4_pools.is_empty()))
            || (want_v6
                && (r.ipv6_prefix_len != Some(i.cfg.ipv6_prefix_len)
                    || i.cfg.ipv6_pools.is_empty()))
        {
            return err(
                ErrorCode::BadRequest,
                format!(
                    "this provider leases IPv4 /{} and IPv6 /{} only",
                    i.cfg.ipv4_prefix_len, i.cfg.ipv6_prefix_len
                ),
            );
        }
        if i.pending.get(&r.request_id).ok().flatten().is_some() {
            return err(ErrorCode::BadRequest, "request id already used");
        }
        // Each unpaid invoice holds prefixes until it expires; a cap per peer keeps one peer
        // from reserving the whole pool.
        let unpaid = match i.pending.all() {
            Ok(all) => all
                .iter()
                .filter(|(_, p)| p.renter_peer == peer.to_string())
                .count(),
            Err(e) => {
                tracing::error!(error = %e, "pending lookup failed");
                return err(ErrorCode::Unavailable, "provider storage error");
            }
        };
        if unpaid >= MAX_UNPAID_PER_PEER {
            tracing::warn!(%peer, unpaid, "rent request refused: too many unpaid invoices");
            return err(
                ErrorCode::BadRequest,
                format!("{unpaid} unpaid invoices already; pay them or let them expire"),
            );
        }
        let lease_id = random_id();
        let reserve = || -> Result<(Option<String>, Option<String>), MarketError> {
            let v4 = if want_v4 {
                match i.pool.allocate_v4(&lease_id)? {
                    Some(n) => Some(n.to_string()),
                    None => return Err(MarketError::NoOffer("no IPv4 prefix left".into())),
                }
            } else {
                None
            };
            let v6 = if want_v6 {
                match i.pool.allocate_v6(&lease_id)? {
                    Some(n) => Some(n.to_string()),
                    None => {
                        if let Some(p) = &v4 {
                            i.pool.release(p, &lease_id)?;
                        }
                        return Err(MarketError::NoOffer("no IPv6 prefix left".into()));
                    }
                }
            } else {
                None
            };
            Ok((v4, v6))
        };
        let (ipv4, ipv6) = match reserve() {
            Ok(x) => x,
            Err(MarketError::NoOffer(m)) => return err(ErrorCode::PoolExhausted, m),
            Err(e) => {
                tracing::error!(error = %e, "pool allocation failed");
                return err(ErrorCode::Unavailable, "provider storage error");
            }
        };
        let amount_sat = terms.activation_fee_sat + r.credit_sat;
        let commitment = InvoiceCommitment {
            purpose: PURPOSE_ACTIVATION.into(),
            request_id: r.request_id.clone(),
            provider: i.peer_id.to_string(),
            renter: peer.to_string(),
            offer_id: r.offer_id.clone(),
            lease_id: None,
            terms: terms.clone(),
            credit_sat: r.credit_sat,
            amount_sat,
            ipv4_prefix_len: r.ipv4_prefix_len,
            ipv6_prefix_len: r.ipv6_prefix_len,
            renter_wg_pubkey: r.wg_pubkey,
        };
        let reply = self
            .create_invoice(
                peer,
                &r.request_id,
                &lease_id,
                commitment,
                ipv4.clone(),
                ipv6.clone(),
            )
            .await;
        if matches!(reply, Message::Error(_)) {
            for p in ipv4.iter().chain(ipv6.iter()) {
                let _ = i.pool.release(p, &lease_id);
            }
        } else {
            self.audit(
                AuditKind::RentRequested,
                json!({"peer": peer.to_string(), "request_id": r.request_id, "lease_id": lease_id,
                       "credit_sat": r.credit_sat, "ipv4": ipv4, "ipv6": ipv6}),
            );
            if let Err(e) = self.refresh_offer(false) {
                tracing::warn!(error = %e, "offer refresh failed");
            }
        }
        reply
    }

    async fn create_invoice(
        &self,
        peer: PeerId,
        request_id: &str,
        lease_id: &str,
        commitment: InvoiceCommitment,
        ipv4: Option<String>,
        ipv6: Option<String>,
    ) -> Message {
        let i = &self.inner;
        let amount_sat = commitment.amount_sat;
        let created = match i
            .ln
            .add_invoice(InvoiceRequest {
                amount_msat: amount_sat * 1000,
                description_hash: commitment.description_hash(),
                expiry_secs: i.cfg.invoice_expiry_secs,
            })
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot create invoice");
                return err(
                    ErrorCode::Unavailable,
                    "provider cannot create an invoice now",
                );
            }
        };
        let payment_hash = hex::encode(created.payment_hash);
        let pending = PendingInvoice {
            lease_id: lease_id.to_owned(),
            renter_peer: peer.to_string(),
            commitment,
            payment_hash: payment_hash.clone(),
            bolt11: created.bolt11.clone(),
            expires_at: now_unix() + i.cfg.invoice_expiry_secs,
            ipv4,
            ipv6,
        };
        if let Err(e) = i.pending.put(request_id, &pending) {
            tracing::error!(error = %e, "cannot persist pending invoice");
            return err(ErrorCode::Unavailable, "provider storage error");
        }
        self.audit(
            AuditKind::InvoiceCreated,
            json!({"request_id": request_id, "lease_id": lease_id, "payment_hash": payment_hash,
                   "amount_sat": amount_sat, "purpose": pending.commitment.purpose,
                   "peer": peer.to_string()}),
        );
        Message::PayInvoice(PayInvoice {
            request_id: request_id.to_owned(),
            lease_id: lease_id.to_owned(),
            bolt11: created.bolt11,
            amount_sat,
        })
    }

    async fn on_topup_request(&self, peer: PeerId, r: TopUpRequest) -> Message {
        let i = &self.inner;
        let rec = match i.leases.get(&r.lease_id) {
            Ok(Some(rec)) if rec.renter_peer == peer.to_string() => rec,
            Ok(_) => {
                return err(
                    ErrorCode::NotFound,
                    format!("no lease {} of yours", r.lease_id),
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "lease lookup failed");
                return err(ErrorCode::Unavailable, "provider storage error");
            }
        };
        if rec.state == LeaseState::Released {
            return err(ErrorCode::NotFound, "lease released; rent again");
        }
        let terms = &rec.lease.terms;
        let remaining = rec.remaining_credit(now_unix());
        if r.amount_sat < terms.min_topup_sat || remaining + r.amount_sat > terms.max_credit_sat {
            return err(
                ErrorCode::BadRequest,
                format!(
                    "top-up must be at least {} sat and keep credit under {} sat (now {remaining} sat)",
                    terms.min_topup_sat, terms.max_credit_sat
                ),
            );
        }
        if i.pending.get(&r.request_id).ok().flatten().is_some() {
            return err(ErrorCode::BadRequest, "request id already used");
        }
        let commitment = InvoiceCommitment {
            purpose: PURPOSE_TOPUP.into(),
            request_id: r.request_id.clone(),
            provider: i.peer_id.to_string(),
            renter: peer.to_string(),
            offer_id: rec.lease.offer_id.clone(),
            lease_id: Some(r.lease_id.clone()),
            terms: terms.clone(),
            credit_sat: r.amount_sat,
            amount_sat: r.amount_sat,
            ipv4_prefix_len: None,
            ipv6_prefix_len: None,
            renter_wg_pubkey: rec.lease.renter_wg_pubkey,
        };
        self.create_invoice(peer, &r.request_id, &r.lease_id, commitment, None, None)
            .await
    }

    async fn on_payment_result(&self, peer: PeerId, r: PaymentResult) -> Message {
        let i = &self.inner;
        let pending = match i.pending.get(&r.request_id) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "pending lookup failed");
                return err(ErrorCode::Unavailable, "provider storage error");
            }
        };
        let Some(pending) = pending else {
            // Already settled and issued (e.g. by the watcher): answer with the lease.
            return self.lease_for_request(peer, &r.request_id);
        };
        if pending.renter_peer != peer.to_string() {
            return err(ErrorCode::NotFound, "no such request of yours");
        }
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        loop {
            match self.settle_if_paid(&r.request_id).await {
                Ok(Some(lease)) => return Message::Lease(lease),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "settlement check failed");
                    return err(ErrorCode::Unavailable, "provider cannot check its node now");
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return err(
                    ErrorCode::NotSettled,
                    format!(
                        "invoice {} is not settled on the provider's node",
                        pending.payment_hash
                    ),
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn lease_for_request(&self, peer: PeerId, request_id: &str) -> Message {
        let done = self
            .inner
            .meta
            .get(format!("settled/{request_id}").as_bytes())
            .ok()
            .flatten();
        let Some(lease_id) = done.map(|v| String::from_utf8_lossy(&v).into_owned()) else {
            return err(ErrorCode::NotFound, "unknown request");
        };
        match self.inner.leases.get(&lease_id) {
            Ok(Some(rec)) if rec.renter_peer == peer.to_string() => Message::Lease(rec.signed),
            _ => err(ErrorCode::NotFound, "unknown request"),
        }
    }

    /// If the invoice of `request_id` is settled on our node, issues or extends the lease
    /// (exactly once) and returns it.
    async fn settle_if_paid(&self, request_id: &str) -> Result<Option<Signed<Lease>>, MarketError> {
        let i = &self.inner;
        let _guard = i.settle_lock.lock().await;
        let Some(p) = i.pending.get(request_id)? else {
            return Ok(None);
        };
        let hash: [u8; 32] = hex::decode(&p.payment_hash)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| MarketError::Store("bad stored payment hash".into()))?;
        let status = i.ln.lookup_invoice(hash).await?;
        if status.state != InvoiceState::Settled {
            return Ok(None);
        }
        if status.amount_paid_msat < p.commitment.amount_sat * 1000 {
            tracing::warn!(request_id, "settled for less than invoiced; not issuing");
            return Ok(None);
        }
        self.audit(
            AuditKind::InvoiceSettled,
            json!({"request_id": request_id, "payment_hash": p.payment_hash,
                   "amount_paid_msat": status.amount_paid_msat, "lease_id": p.lease_id}),
        );
        let rec = if p.commitment.purpose == PURPOSE_TOPUP {
            self.extend_lease(&p).await?
        } else {
            self.issue_lease(&p).await?
        };
        i.meta.insert(
            format!("settled/{request_id}").as_bytes(),
            p.lease_id.as_bytes(),
        )?;
        i.meta.flush()?;
        i.pending.remove(request_id)?;
        Ok(Some(rec.signed))
    }

    async fn issue_lease(&self, p: &PendingInvoice) -> Result<ProviderLease, MarketError> {
        let i = &self.inner;
        let now = now_unix();
        let c = &p.commitment;
        let allowed_ips: Vec<String> = p.ipv4.iter().chain(p.ipv6.iter()).cloned().collect();
        let lease = Lease {
            lease_id: p.lease_id.clone(),
            provider: i.peer_id.to_string(),
            renter: c.renter.clone(),
            offer_id: c.offer_id.clone(),
            renter_wg_pubkey: c.renter_wg_pubkey,
            provider_wg_pubkey: i.wg_public,
            endpoint: i.cfg.endpoint.clone(),
            ipv4: p.ipv4.clone(),
            ipv6: p.ipv6.clone(),
            allowed_ips,
            terms: c.terms.clone(),
            credit_sat: c.credit_sat,
            activated_at: now,
            paid_until: now + c.terms.credit_secs(c.credit_sat),
            payment_hash: p.payment_hash.clone(),
            revision: 1,
        };
        let signed = Signed::sign(&i.key, &lease).map_err(|e| MarketError::Store(e.to_string()))?;
        let rec = ProviderLease {
            lease,
            signed,
            state: LeaseState::Active,
            renter_peer: p.renter_peer.clone(),
            paid_sat: c.amount_sat,
        };
        // Persist first: a crash after this point re-applies the peer on start.
        i.leases.put(&p.lease_id, &rec)?;
        if let Err(e) = self.apply_peer(&rec.lease).await {
            tracing::error!(error = %e, lease_id = %p.lease_id, "cannot add tunnel peer");
            self.audit(
                AuditKind::Error,
                json!({"lease_id": p.lease_id, "error": e.to_string()}),
            );
        }
        self.audit(
            AuditKind::LeaseIssued,
            json!({"lease_id": p.lease_id, "renter": c.renter, "ipv4": p.ipv4, "ipv6": p.ipv6,
                   "credit_sat": c.credit_sat, "paid_sat": c.amount_sat,
                   "paid_until": rec.lease.paid_until}),
        );
        tracing::info!(lease_id = %p.lease_id, ipv4 = ?p.ipv4, ipv6 = ?p.ipv6, "lease issued");
        Ok(rec)
    }

    async fn extend_lease(&self, p: &PendingInvoice) -> Result<ProviderLease, MarketError> {
        let i = &self.inner;
        let mut rec = i
            .leases
            .get(&p.lease_id)?
            .ok_or_else(|| MarketError::NotFound(p.lease_id.clone()))?;
        let now = now_unix();
        let add = p.commitment.credit_sat;
        // Credit is one continuous ledger from activation: paid_until extends from the old
        // paid_until even when that is past, so back rent is paid first. Recomputing from the
        // total (docs/PROTOCOL.md) avoids a rounding loss per top-up.
        rec.lease.credit_sat += add;
        rec.lease.paid_until =
            rec.lease.activated_at + rec.lease.terms.credit_secs(rec.lease.credit_sat);
        rec.lease.revision += 1;
        rec.paid_sat += add;
        rec.signed =
            Signed::sign(&i.key, &rec.lease).map_err(|e| MarketError::Store(e.to_string()))?;
        let reactivate = rec.state == LeaseState::Suspended && rec.lease.paid_until > now;
        if reactivate {
            rec.state = LeaseState::Active;
        }
        i.leases.put(&p.lease_id, &rec)?;
        self.audit(
            AuditKind::CreditAdded,
            json!({"lease_id": p.lease_id, "amount_sat": add, "paid_until": rec.lease.paid_until}),
        );
        if reactivate {
            self.apply_peer(&rec.lease).await?;
            self.audit(AuditKind::LeaseReactivated, json!({"lease_id": p.lease_id}));
            tracing::info!(lease_id = %p.lease_id, "lease reactivated");
        }
        Ok(rec)
    }

    async fn apply_peer(&self, lease: &Lease) -> Result<(), MarketError> {
        let allowed_ips = lease
            .allowed_ips
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .map_err(|_| MarketError::Store(format!("bad stored prefix {s}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.inner
            .tunnel
            .add_peer(
                &self.inner.iface,
                &PeerSpec {
                    public_key: lease.renter_wg_pubkey,
                    endpoint: None,
                    allowed_ips,
                    persistent_keepalive: None,
                },
            )
            .await?;
        Ok(())
    }

    fn on_status(&self, peer: PeerId, r: StatusRequest) -> Message {
        match self.inner.leases.get(&r.lease_id) {
            Ok(Some(rec)) if rec.renter_peer == peer.to_string() => {
                let now = now_unix();
                Message::Status(Status {
                    lease_id: r.lease_id,
                    state: rec.state,
                    remaining_credit_sat: rec.remaining_credit(now),
                    paid_until: rec.lease.paid_until,
                    now,
                    lease: Some(rec.signed),
                })
            }
            Ok(_) => err(ErrorCode::NotFound, "no such lease of yours"),
            Err(e) => {
                tracing::error!(error = %e, "lease lookup failed");
                err(ErrorCode::Unavailable, "provider storage error")
            }
        }
    }

    /// One pass of background work: issue leases for invoices settled without a
    /// `paymentResult`, drop expired invoices, meter leases, refresh the offer.
    pub async fn tick(&self) -> Result<(), MarketError> {
        let i = &self.inner;
        let now = now_unix();
        for (request_id, p) in i.pending.all()? {
            match self.settle_if_paid(&request_id).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, request_id, "settlement check failed"),
            }
            if now > p.expires_at + 60 {
                for prefix in p.ipv4.iter().chain(p.ipv6.iter()) {
                    i.pool.release(prefix, &p.lease_id)?;
                }
                i.pending.remove(&request_id)?;
                self.audit(
                    AuditKind::LeaseReleased,
                    json!({"lease_id": p.lease_id, "reason": "invoice expired unpaid"}),
                );
            }
        }
        for (lease_id, mut rec) in i.leases.all()? {
            match rec.state {
                LeaseState::Active if now >= rec.lease.paid_until => {
                    i.tunnel
                        .remove_peer(&i.iface, &rec.lease.renter_wg_pubkey)
                        .await?;
                    rec.state = LeaseState::Suspended;
                    i.leases.put(&lease_id, &rec)?;
                    self.audit(
                        AuditKind::LeaseSuspended,
                        json!({"lease_id": lease_id, "paid_until": rec.lease.paid_until}),
                    );
                    tracing::info!(lease_id, "credit exhausted: lease suspended");
                }
                LeaseState::Suspended
                    if now
                        >= rec.lease.paid_until
                            + u64::from(rec.lease.terms.reserve_days) * DAY_SECS =>
                {
                    for prefix in rec.lease.ipv4.iter().chain(rec.lease.ipv6.iter()) {
                        i.pool.release(prefix, &lease_id)?;
                    }
                    rec.state = LeaseState::Released;
                    i.leases.put(&lease_id, &rec)?;
                    self.audit(
                        AuditKind::LeaseReleased,
                        json!({"lease_id": lease_id, "reason": "reserve period over"}),
                    );
                }
                _ => {}
            }
        }
        self.refresh_offer(false)?;
        Ok(())
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
        },
    }
}

impl Hello {
    /// Our own hello.
    pub fn ours(provider: bool, renter: bool, network: &str) -> Hello {
        Hello {
            agent: format!("leasewire/{}", env!("CARGO_PKG_VERSION")),
            provider,
            renter,
            network: network.to_owned(),
        }
    }
}
