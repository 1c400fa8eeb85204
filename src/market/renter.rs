//! The renter role.
//!
//! 1. Discovery: find providers on the DHT topic, `hello` each, verify the signed offer it
//!    answers with (signer == provider, unexpired, our network, sane terms), and measure the
//!    round trip.
//! 2. Rent: rank offers ([`super::select`]), send `rentRequest`, and check the invoice before
//!    paying anything: amount equals the terms, payee equals the offer's LN node, not expiring
//!    too soon, description hash equals the commitment we compute ourselves, hash never paid.
//! 3. Pay: the intent is persisted and audited before the payment starts; the outcome after.
//! 4. Send `paymentResult`, verify the signed lease against what we asked for, configure the
//!    tunnel and write the wg-quick file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ipnet::IpNet;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::store::Table;
use super::{MarketError, Peers, select};
use crate::audit::{AuditKind, AuditLog};
use crate::config::RenterConfig;
use crate::lightning::invoice::{InvoiceExpectation, check_invoice};
use crate::lightning::{LightningNode, PayRequest};
use crate::tunnel::{InterfaceSpec, PeerSpec, RoutingPolicy, Tunnel, render_wg_quick};
use crate::types::{DAY_SECS, Sats, WgKey, now_unix, random_id};
use crate::wire::{
    ErrorCode, Hello, InvoiceCommitment, Lease, LeaseState, Message, Offer, PURPOSE_ACTIVATION,
    PURPOSE_TOPUP, PayInvoice, PaymentResult, RentRequest, Signed, StatusRequest, TopUpRequest,
};

/// Routing table for source policy routing of leased addresses.
const POLICY_TABLE: u32 = 51820;

/// Everything a renter needs. Built by the node.
pub struct RenterParams {
    /// Node signing key (the renter signs nothing itself; it names us).
    pub key: SigningKey,
    /// Renter settings.
    pub cfg: RenterConfig,
    /// Lightning network name.
    pub network: String,
    /// Routing fee limit per payment.
    pub fee_limit_sat: u64,
    /// Payment timeout.
    pub payment_timeout_secs: u32,
    /// Our WireGuard private key.
    pub wg_private: WgKey,
    /// Our WireGuard public key.
    pub wg_public: WgKey,
    /// Base interface name.
    pub iface: String,
    /// Keepalive towards the provider.
    pub keepalive: u16,
    /// Where wg-quick files go (D/wireguard).
    pub conf_dir: PathBuf,
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
    /// Round trip of the hello that fetched it.
    pub rtt: Duration,
    /// When we fetched it.
    pub seen_at: u64,
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
}

impl Rental {
    /// Credit left at `now`.
    pub fn remaining_credit(&self, now: u64) -> Sats {
        let secs = self.lease.paid_until.saturating_sub(now);
        ((secs as u128 * self.lease.terms.rate_sat_per_day as u128) / DAY_SECS as u128) as Sats
    }
}

/// One payment as the payer records it, keyed by payment hash; a hash in this table is never
/// paid again.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PaymentRecord {
    request_id: String,
    lease_id: String,
    provider: String,
    amount_sat: Sats,
    /// "attempting", "succeeded" or "failed".
    state: String,
    preimage: Option<String>,
    reason: Option<String>,
    at: u64,
}

/// The renter role. Cheap to clone.
#[derive(Clone)]
pub struct Renter {
    inner: Arc<Inner>,
}

struct Inner {
    peer_id: PeerId,
    cfg: RenterConfig,
    network: String,
    fee_limit_sat: u64,
    payment_timeout_secs: u32,
    wg_private: WgKey,
    wg_public: WgKey,
    iface: String,
    keepalive: u16,
    conf_dir: PathBuf,
    ln: Arc<dyn LightningNode>,
    tunnel: Arc<dyn Tunnel>,
    audit: AuditLog,
    peers: Arc<dyn Peers>,
    offers: Mutex<HashMap<String, KnownOffer>>,
    rentals: Table<Rental>,
    payments: Table<PaymentRecord>,
    /// One rent or top-up at a time: keeps interface naming and payments simple to reason about.
    op_lock: tokio::sync::Mutex<()>,
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
}

impl Renter {
    /// Opens the renter's state.
    pub fn new(p: RenterParams) -> Result<Renter, MarketError> {
        let peer_id = crate::wire::signed::peer_id_of(&p.key.verifying_key());
        Ok(Renter {
            inner: Arc::new(Inner {
                rentals: Table::open(&p.db, "renter_rentals")?,
                payments: Table::open(&p.db, "renter_payments")?,
                peer_id,
                cfg: p.cfg,
                network: p.network,
                fee_limit_sat: p.fee_limit_sat,
                payment_timeout_secs: p.payment_timeout_secs,
                wg_private: p.wg_private,
                wg_public: p.wg_public,
                iface: p.iface,
                keepalive: p.keepalive,
                conf_dir: p.conf_dir,
                ln: p.ln,
                tunnel: p.tunnel,
                audit: p.audit,
                peers: p.peers,
                offers: Mutex::new(HashMap::new()),
                op_lock: tokio::sync::Mutex::new(()),
            }),
        })
    }

    fn audit(&self, kind: AuditKind, payload: serde_json::Value) {
        if let Err(e) = self.inner.audit.append(kind, &payload) {
            tracing::error!(error = %e, ?kind, "audit append failed");
        }
    }

    /// Re-applies the tunnel of every active rental (idempotent), e.g. after a restart.
    pub async fn start(&self) -> Result<(), MarketError> {
        for (_, r) in self.inner.rentals.all()? {
            if r.state == LeaseState::Active {
                self.apply_tunnel(&r.lease, &r.iface).await?;
            }
        }
        Ok(())
    }

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
        let now = now_unix();
        let mut offers = self.inner.offers.lock().expect("offers lock not poisoned");
        offers.retain(|_, o| o.offer.expires_at > now);
        Ok(offers.len())
    }

    async fn fetch_offer(&self, peer: PeerId) -> Result<KnownOffer, MarketError> {
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
                );
                return Err(e);
            }
        };
        let known = KnownOffer {
            peer: peer.to_string(),
            offer_id: signed.id(),
            offer,
            signed,
            rtt,
            seen_at: now_unix(),
        };
        let previous = self
            .inner
            .offers
            .lock()
            .expect("offers lock not poisoned")
            .insert(known.peer.clone(), known.clone());
        match previous {
            None => {
                self.audit(AuditKind::PeerDiscovered, json!({"peer": known.peer}));
                self.audit(
                    AuditKind::OfferSeen,
                    json!({"peer": known.peer, "offer_id": known.offer_id,
                    "seq": known.offer.seq, "terms": known.offer.terms}),
                );
            }
            Some(p) if p.offer_id != known.offer_id => {
                self.audit(
                    AuditKind::OfferSeen,
                    json!({"peer": known.peer, "offer_id": known.offer_id,
                    "seq": known.offer.seq, "terms": known.offer.terms}),
                );
            }
            Some(_) => {}
        }
        Ok(known)
    }

    fn check_offer(&self, peer: PeerId, signed: &Signed<Offer>) -> Result<Offer, MarketError> {
        let bad = |reason: String| MarketError::BadSigned {
            what: "offer",
            reason,
        };
        let offer = signed.verify_from(&peer).map_err(|e| bad(e.to_string()))?;
        if offer.provider != peer.to_string() {
            return Err(bad("offer names another provider".into()));
        }
        if offer.expires_at <= now_unix() {
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
    fn serves(&self, offer: &Offer) -> bool {
        let has = |list: &[crate::wire::PrefixAvailability], len: Option<u8>| match len {
            None => true,
            Some(l) => list.iter().any(|a| a.prefix_len == l && a.available > 0),
        };
        has(&offer.ipv4, self.inner.cfg.ipv4_prefix_len)
            && has(&offer.ipv6, self.inner.cfg.ipv6_prefix_len)
    }

    /// Rents under `args.offer_id`, or the best offer; returns once the tunnel is configured.
    pub async fn rent(&self, args: RentArgs) -> Result<Rental, MarketError> {
        let _op = self.inner.op_lock.lock().await;
        let credit = args.credit_sat.unwrap_or(self.inner.cfg.default_credit_sat);
        let deadline = tokio::time::Instant::now() + args.timeout;
        loop {
            let ranked = self.offers(Some(credit));
            let candidates: Vec<KnownOffer> = match &args.offer_id {
                Some(id) => ranked
                    .into_iter()
                    .filter(|o| &o.offer_id == id || o.offer_id.starts_with(id.as_str()))
                    .collect(),
                None => ranked
                    .into_iter()
                    .filter(|o| {
                        self.serves(&o.offer) && select::price(&o.offer.terms, credit).is_some()
                    })
                    .collect(),
            };
            let mut last_err = None;
            for offer in candidates {
                match self.rent_from(&offer, credit).await {
                    Ok(r) => return Ok(r),
                    // Offer-side problems: try the next offer. Money problems stop here.
                    Err(
                        e @ (MarketError::Refused { .. }
                        | MarketError::Net(_)
                        | MarketError::InvoiceRejected(_)
                        | MarketError::Unexpected { .. }),
                    ) => {
                        tracing::warn!(offer_id = %offer.offer_id, error = %e, "offer failed; trying the next");
                        let _ = self.fetch_offer_str(&offer.peer).await;
                        last_err = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(last_err.unwrap_or_else(|| {
                    MarketError::NoOffer(match &args.offer_id {
                        Some(id) => format!("offer {id} not found or not usable"),
                        None => "no usable offer found before the timeout".into(),
                    })
                }));
            }
            if let Err(e) = self.discover().await {
                tracing::debug!(error = %e, "discovery failed");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn fetch_offer_str(&self, peer: &str) -> Result<KnownOffer, MarketError> {
        let peer: PeerId = peer
            .parse()
            .map_err(|_| MarketError::Invalid("bad peer id".into()))?;
        self.fetch_offer(peer).await
    }

    async fn rent_from(&self, known: &KnownOffer, credit: Sats) -> Result<Rental, MarketError> {
        let i = &self.inner;
        let peer: PeerId = known
            .peer
            .parse()
            .map_err(|_| MarketError::Invalid("bad peer id".into()))?;
        let (credit, total) = select::price(&known.offer.terms, credit)
            .ok_or_else(|| MarketError::NoOffer("offer cannot sell that credit".into()))?;
        let request_id = random_id();
        let req = RentRequest {
            request_id: request_id.clone(),
            offer_id: known.offer_id.clone(),
            credit_sat: credit,
            ipv4_prefix_len: i.cfg.ipv4_prefix_len,
            ipv6_prefix_len: i.cfg.ipv6_prefix_len,
            wg_pubkey: i.wg_public,
        };
        let pay = self
            .expect_invoice(peer, Message::RentRequest(req.clone()))
            .await?;
        let commitment = InvoiceCommitment {
            purpose: PURPOSE_ACTIVATION.into(),
            request_id: request_id.clone(),
            provider: known.peer.clone(),
            renter: i.peer_id.to_string(),
            offer_id: known.offer_id.clone(),
            lease_id: None,
            terms: known.offer.terms.clone(),
            credit_sat: credit,
            amount_sat: total,
            ipv4_prefix_len: req.ipv4_prefix_len,
            ipv6_prefix_len: req.ipv6_prefix_len,
            renter_wg_pubkey: i.wg_public,
        };
        self.pay_checked(&pay, &commitment, &known.offer.ln_pubkey, &known.peer)
            .await?;
        let signed = self.fetch_lease(peer, &pay, &request_id).await?;
        let lease = self.check_lease(peer, &signed, &pay.lease_id, |l| {
            if l.renter_wg_pubkey != i.wg_public || l.offer_id != known.offer_id {
                return Err("lease is not for our key and offer".into());
            }
            if l.credit_sat != credit || l.revision != 1 {
                return Err(format!(
                    "lease credit {} differs from the {credit} sat paid",
                    l.credit_sat
                ));
            }
            let len_ok = |p: &Option<String>, want: Option<u8>| match (p, want) {
                (None, None) => true,
                (Some(p), Some(w)) => p
                    .parse::<IpNet>()
                    .map(|n| n.prefix_len() == w)
                    .unwrap_or(false),
                _ => false,
            };
            if !len_ok(&l.ipv4, i.cfg.ipv4_prefix_len) || !len_ok(&l.ipv6, i.cfg.ipv6_prefix_len) {
                return Err("lease prefixes differ from the request".into());
            }
            Ok(())
        })?;
        self.audit(
            AuditKind::LeaseReceived,
            json!({"lease_id": lease.lease_id, "provider": known.peer,
            "ipv4": lease.ipv4, "ipv6": lease.ipv6, "paid_until": lease.paid_until}),
        );
        let iface = self.free_iface()?;
        let conf_path = self.apply_tunnel(&lease, &iface).await?;
        let rental = Rental {
            lease: lease.clone(),
            signed,
            state: LeaseState::Active,
            paid_sat: total,
            iface: iface.clone(),
            conf_path: conf_path.clone(),
            provider_ln_pubkey: known.offer.ln_pubkey.clone(),
        };
        i.rentals.put(&lease.lease_id, &rental)?;
        self.audit(
            AuditKind::LeaseApplied,
            json!({"lease_id": lease.lease_id, "iface": iface,
            "conf": conf_path.display().to_string(), "backend": i.tunnel.kind()}),
        );
        tracing::info!(lease_id = %lease.lease_id, ipv4 = ?lease.ipv4, ipv6 = ?lease.ipv6, "lease applied");
        Ok(rental)
    }

    async fn expect_invoice(&self, peer: PeerId, msg: Message) -> Result<PayInvoice, MarketError> {
        match self.inner.peers.request(peer, msg).await?.0 {
            Message::PayInvoice(p) => Ok(p),
            Message::Error(e) => Err(MarketError::Refused {
                code: e.code,
                message: e.message,
            }),
            other => Err(MarketError::Unexpected {
                expected: "payInvoice",
                got: other.name(),
            }),
        }
    }

    /// Checks an invoice against what we agreed, then pays it exactly once.
    async fn pay_checked(
        &self,
        pay: &PayInvoice,
        commitment: &InvoiceCommitment,
        payee: &str,
        provider: &str,
    ) -> Result<(), MarketError> {
        let i = &self.inner;
        let expect = InvoiceExpectation {
            network: i.network.clone(),
            amount_msat: commitment.amount_sat * 1000,
            payee_pubkey: payee.to_owned(),
            description_hash: commitment.description_hash(),
            min_expiry_left_secs: i.cfg.min_invoice_expiry_secs,
            now_unix: now_unix(),
        };
        let checked = check_invoice(&pay.bolt11, &expect)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                if pay.amount_sat != commitment.amount_sat {
                    Err(format!(
                        "provider states {} sat, terms say {}",
                        pay.amount_sat, commitment.amount_sat
                    ))
                } else if commitment.amount_sat > i.cfg.max_invoice_sat {
                    Err(format!(
                        "{} sat exceeds renter.max_invoice_sat {}",
                        commitment.amount_sat, i.cfg.max_invoice_sat
                    ))
                } else {
                    Ok(c)
                }
            });
        let checked = match checked {
            Ok(c) => c,
            Err(reason) => {
                self.audit(
                    AuditKind::InvoiceRejected,
                    json!({"provider": provider, "request_id": pay.request_id, "reason": reason}),
                );
                tracing::warn!(provider, %reason, "invoice refused; nothing paid");
                return Err(MarketError::InvoiceRejected(reason));
            }
        };
        let hash = hex::encode(checked.payment_hash);
        if let Some(prev) = i.payments.get(&hash)? {
            let reason = format!(
                "payment hash {hash} already {} here; never paying twice",
                prev.state
            );
            self.audit(
                AuditKind::InvoiceRejected,
                json!({"provider": provider, "request_id": pay.request_id, "reason": reason}),
            );
            return Err(MarketError::InvoiceRejected(reason));
        }
        let mut record = PaymentRecord {
            request_id: pay.request_id.clone(),
            lease_id: pay.lease_id.clone(),
            provider: provider.to_owned(),
            amount_sat: commitment.amount_sat,
            state: "attempting".into(),
            preimage: None,
            reason: None,
            at: now_unix(),
        };
        // The intent is durable (table and audit log) before any money moves.
        i.payments.put(&hash, &record)?;
        i.audit.append(AuditKind::PaymentAttempt, &json!({"payment_hash": hash, "amount_sat": commitment.amount_sat,
            "provider": provider, "request_id": pay.request_id, "lease_id": pay.lease_id, "purpose": commitment.purpose}))?;
        let outcome =
            i.ln.pay_invoice(PayRequest {
                bolt11: pay.bolt11.clone(),
                fee_limit_sat: i.fee_limit_sat,
                timeout_secs: i.payment_timeout_secs as i32,
            })
            .await;
        match outcome {
            Ok(o) => {
                record.state = "succeeded".into();
                record.preimage = Some(hex::encode(o.preimage));
                i.payments.put(&hash, &record)?;
                self.audit(
                    AuditKind::PaymentSucceeded,
                    json!({"payment_hash": hash, "amount_msat": o.amount_msat,
                    "fee_msat": o.fee_msat, "provider": provider}),
                );
                Ok(())
            }
            Err(e) => {
                record.state = "failed".into();
                record.reason = Some(e.to_string());
                i.payments.put(&hash, &record)?;
                self.audit(
                    AuditKind::PaymentFailed,
                    json!({"payment_hash": hash, "reason": e.to_string(), "provider": provider}),
                );
                Err(MarketError::Lightning(e))
            }
        }
    }

    async fn fetch_lease(
        &self,
        peer: PeerId,
        pay: &PayInvoice,
        request_id: &str,
    ) -> Result<Signed<Lease>, MarketError> {
        let i = &self.inner;
        let Some((hash, rec)) = i
            .payments
            .all()?
            .into_iter()
            .find(|(_, r)| r.request_id == request_id)
        else {
            return Err(MarketError::NotFound(format!(
                "payment for request {request_id}"
            )));
        };
        let msg = Message::PaymentResult(PaymentResult {
            request_id: request_id.to_owned(),
            payment_hash: hash,
            preimage: rec.preimage.unwrap_or_default(),
        });
        let mut attempts = 0;
        loop {
            attempts += 1;
            match i.peers.request(peer, msg.clone()).await {
                Ok((Message::Lease(l), _)) => return Ok(l),
                Ok((Message::Error(e), _)) if e.code == ErrorCode::NotSettled && attempts < 5 => {}
                Ok((Message::Error(e), _)) => {
                    return Err(MarketError::Refused {
                        code: e.code,
                        message: e.message,
                    });
                }
                Ok((other, _)) => {
                    return Err(MarketError::Unexpected {
                        expected: "lease",
                        got: other.name(),
                    });
                }
                Err(e) if attempts < 5 => {
                    tracing::warn!(error = %e, lease_id = %pay.lease_id, "lease fetch failed; retrying")
                }
                Err(e) => return Err(e),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn check_lease(
        &self,
        peer: PeerId,
        signed: &Signed<Lease>,
        lease_id: &str,
        extra: impl Fn(&Lease) -> Result<(), String>,
    ) -> Result<Lease, MarketError> {
        let bad = |reason: String| {
            self.audit(
                AuditKind::Error,
                json!({"lease_id": lease_id, "error": format!("bad lease: {reason}")}),
            );
            MarketError::BadSigned {
                what: "lease",
                reason,
            }
        };
        let lease = signed.verify_from(&peer).map_err(|e| bad(e.to_string()))?;
        if lease.lease_id != lease_id
            || lease.provider != peer.to_string()
            || lease.renter != self.inner.peer_id.to_string()
        {
            return Err(bad("lease names another lease, provider or renter".into()));
        }
        extra(&lease).map_err(bad)?;
        Ok(lease)
    }

    fn free_iface(&self) -> Result<String, MarketError> {
        let used: Vec<String> = self
            .inner
            .rentals
            .all()?
            .into_iter()
            .filter(|(_, r)| r.state != LeaseState::Released)
            .map(|(_, r)| r.iface)
            .collect();
        let base = &self.inner.iface;
        if !used.contains(base) {
            return Ok(base.clone());
        }
        (1..100)
            .map(|n| format!("{}{n}", base.trim_end_matches(|c: char| c.is_ascii_digit())))
            .find(|n| !used.contains(n) && n.len() <= 15)
            .ok_or_else(|| MarketError::Invalid("no free interface name".into()))
    }

    /// Configures the tunnel for `lease` on `iface` and writes its wg-quick file.
    async fn apply_tunnel(&self, lease: &Lease, iface: &str) -> Result<PathBuf, MarketError> {
        let i = &self.inner;
        let mut addresses = Vec::new();
        if let Some(v4) = &lease.ipv4 {
            let net: ipnet::Ipv4Net = v4
                .parse()
                .map_err(|_| MarketError::Store(format!("bad prefix {v4}")))?;
            addresses.push(IpNet::V4(
                ipnet::Ipv4Net::new(net.network(), 32).expect("/32 to be valid"),
            ));
        }
        if let Some(v6) = &lease.ipv6 {
            let net: ipnet::Ipv6Net = v6
                .parse()
                .map_err(|_| MarketError::Store(format!("bad prefix {v6}")))?;
            // The first host address of the prefix (::1), not the subnet-router anycast address.
            let first = std::net::Ipv6Addr::from(u128::from(net.network()) + 1);
            addresses.push(IpNet::V6(
                ipnet::Ipv6Net::new(first, 128).expect("/128 to be valid"),
            ));
        }
        let spec = InterfaceSpec {
            name: iface.to_owned(),
            private_key: i.wg_private,
            listen_port: None,
            addresses,
            policy: RoutingPolicy::SourceOnly {
                table: POLICY_TABLE,
            },
        };
        let peer = PeerSpec {
            public_key: lease.provider_wg_pubkey,
            endpoint: Some(lease.endpoint.clone()),
            allowed_ips: vec![
                "0.0.0.0/0".parse().expect("valid"),
                "::/0".parse().expect("valid"),
            ],
            persistent_keepalive: (i.keepalive > 0).then_some(i.keepalive),
        };
        i.tunnel.ensure_interface(&spec).await?;
        i.tunnel.add_peer(iface, &peer).await?;
        let path = i.conf_dir.join(format!("{iface}.conf"));
        write_private(
            &path,
            render_wg_quick(&spec, std::slice::from_ref(&peer)).as_bytes(),
        )
        .map_err(|e| MarketError::Store(format!("cannot write {}: {e}", path.display())))?;
        Ok(path)
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

    /// The rental `lease_id`, or the latest one when empty.
    pub fn rental(&self, lease_id: &str) -> Result<Rental, MarketError> {
        let all = self.rentals()?;
        let found = if lease_id.is_empty() {
            all.into_iter().max_by_key(|r| r.lease.activated_at)
        } else {
            all.into_iter()
                .find(|r| r.lease.lease_id == lease_id || r.lease.lease_id.starts_with(lease_id))
        };
        found.ok_or_else(|| {
            MarketError::NotFound(if lease_id.is_empty() {
                "no lease yet".into()
            } else {
                format!("lease {lease_id}")
            })
        })
    }

    /// Buys `amount` sat more credit for a lease; returns it as the provider re-signed it.
    pub async fn add_credit(&self, lease_id: &str, amount: Sats) -> Result<Rental, MarketError> {
        let _op = self.inner.op_lock.lock().await;
        let i = &self.inner;
        let mut rental = self.rental(lease_id)?;
        let lease_id = rental.lease.lease_id.clone();
        let peer: PeerId = rental
            .lease
            .provider
            .parse()
            .map_err(|_| MarketError::Store("bad provider id".into()))?;
        let request_id = random_id();
        let pay = self
            .expect_invoice(
                peer,
                Message::TopUpRequest(TopUpRequest {
                    request_id: request_id.clone(),
                    lease_id: lease_id.clone(),
                    amount_sat: amount,
                }),
            )
            .await?;
        let commitment = InvoiceCommitment {
            purpose: PURPOSE_TOPUP.into(),
            request_id: request_id.clone(),
            provider: rental.lease.provider.clone(),
            renter: i.peer_id.to_string(),
            offer_id: rental.lease.offer_id.clone(),
            lease_id: Some(lease_id.clone()),
            terms: rental.lease.terms.clone(),
            credit_sat: amount,
            amount_sat: amount,
            ipv4_prefix_len: None,
            ipv6_prefix_len: None,
            renter_wg_pubkey: i.wg_public,
        };
        // Top-up invoices must come from the LN node of the offer the lease was made under.
        let payee = rental.provider_ln_pubkey.clone();
        self.pay_checked(&pay, &commitment, &payee, &rental.lease.provider)
            .await?;
        let old = rental.lease.clone();
        let signed = self.fetch_lease(peer, &pay, &request_id).await?;
        let lease = self.check_lease(peer, &signed, &lease_id, |l| {
            if l.revision <= old.revision
                || l.credit_sat != old.credit_sat + amount
                || l.paid_until <= old.paid_until
            {
                return Err("re-issued lease does not add the credit paid".into());
            }
            if l.ipv4 != old.ipv4
                || l.ipv6 != old.ipv6
                || l.renter_wg_pubkey != old.renter_wg_pubkey
            {
                return Err("re-issued lease changed its prefixes or key".into());
            }
            Ok(())
        })?;
        rental.lease = lease;
        rental.signed = signed;
        rental.paid_sat += amount;
        if rental.lease.paid_until > now_unix() {
            if rental.state != LeaseState::Active {
                self.apply_tunnel(&rental.lease, &rental.iface).await?;
            }
            rental.state = LeaseState::Active;
        }
        i.rentals.put(&lease_id, &rental)?;
        self.audit(AuditKind::CreditAdded, json!({"lease_id": lease_id, "amount_sat": amount, "paid_until": rental.lease.paid_until}));
        Ok(rental)
    }

    /// Asks the provider for the lease's state and records it.
    pub async fn refresh(&self, lease_id: &str) -> Result<Rental, MarketError> {
        let mut rental = self.rental(lease_id)?;
        let peer: PeerId = rental
            .lease
            .provider
            .parse()
            .map_err(|_| MarketError::Store("bad provider id".into()))?;
        let reply = self
            .inner
            .peers
            .request(
                peer,
                Message::StatusRequest(StatusRequest {
                    lease_id: rental.lease.lease_id.clone(),
                }),
            )
            .await?
            .0;
        match reply {
            Message::Status(s) => {
                rental.state = s.state;
                if let Some(signed) = s.lease {
                    let l = self.check_lease(peer, &signed, &rental.lease.lease_id, |_| Ok(()))?;
                    if l.revision >= rental.lease.revision {
                        rental.lease = l;
                        rental.signed = signed;
                    }
                }
                self.inner.rentals.put(&rental.lease.lease_id, &rental)?;
                Ok(rental)
            }
            Message::Error(e) => Err(MarketError::Refused {
                code: e.code,
                message: e.message,
            }),
            other => Err(MarketError::Unexpected {
                expected: "status",
                got: other.name(),
            }),
        }
    }

    /// Marks rentals whose credit ran out as suspended (the provider cuts the tunnel).
    pub fn tick(&self) -> Result<(), MarketError> {
        let now = now_unix();
        for (id, mut r) in self.inner.rentals.all()? {
            if r.state == LeaseState::Active && r.lease.paid_until <= now {
                r.state = LeaseState::Suspended;
                self.inner.rentals.put(&id, &r)?;
                self.audit(
                    AuditKind::LeaseSuspended,
                    json!({"lease_id": id, "paid_until": r.lease.paid_until}),
                );
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

/// Writes `bytes` to `path` with mode 0600, atomically (temp file, fsync, rename).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
