//! Refunds of unused credit (terms with `refund_unused`).
//!
//! When a lease ends early (the renter's `leaseEnd`, the end of our termination notice, or a
//! termination without notice) [`Provider::release_now`] freezes the credit left at the end
//! time as the refund due, once. The renter then sends a signed `refundRequest` carrying an
//! invoice of its own node for exactly that amount. We check it against our own ledger, mark
//! the refund `paying` durably (compare-and-swap on the lease record, under the lease's lock)
//! and only then pay. A refund is therefore paid at most once: a second request, concurrent
//! or later, finds it `paying` or `paid`. A refund left `paying` by a crash or by an unclear
//! answer is resolved by asking our node ([`LightningNode::track_payment`]), never by paying
//! again; a failed payment makes the refund `due` again, for a new invoice.
//!
//! We pay the routing fee on top of the refund (the renter receives exactly what was due),
//! up to [`refund_fee_limit_msat`].

use super::*;
use crate::lightning::invoice::check_refund_invoice;
use crate::lightning::{LightningError, PayRequest, PaymentOutcome, PaymentStatus};
use crate::wire::{RefundRequest, RefundState};

/// A refund invoice must stay valid at least this long when we start paying it.
pub const REFUND_MIN_EXPIRY_LEFT_SECS: u64 = 60;

/// How long we let our node try to pay a refund before asking it how the payment ended.
const REFUND_PAY_TIMEOUT_SECS: i32 = 60;

/// The most routing fee we pay on top of a refund of `amount_sat`: 1 % of it, at least
/// 10 sat. A route dearer than that fails the payment and the refund is due again.
pub fn refund_fee_limit_msat(amount_sat: Sats) -> u64 {
    (amount_sat.saturating_mul(1000) / 100).max(10_000)
}

/// A refund as the provider keeps it in the lease record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRefund {
    /// Unused credit owed back, frozen when the lease ended.
    pub due_sat: Sats,
    /// Where it stands.
    pub state: RefundState,
    /// The renter's invoice being paid or paid (`None` while due).
    #[serde(default)]
    pub bolt11: Option<String>,
    /// Routing fee we paid on top, once paid.
    #[serde(default)]
    pub fee_msat: u64,
}

impl ProviderRefund {
    /// The refund owed for `rec` ending at `end`: the credit its own ledger shows left then,
    /// when its terms promise a refund and something is left.
    pub fn frozen(rec: &ProviderLease, end: u64) -> Option<ProviderRefund> {
        let due_sat = rec.remaining_credit(end);
        (rec.lease.terms.refund_unused && due_sat > 0).then_some(ProviderRefund {
            due_sat,
            state: RefundState::Due,
            bolt11: None,
            fee_msat: 0,
        })
    }
}

/// Run before the provider is built: when `cfg` promises refunds but `ln` cannot pay (its
/// macaroon lacks `offchain:write`, or the check itself fails), switches `refund_unused` off
/// with a warning, so the offer never promises refunds we cannot pay. Returns whether the
/// terms offer refunds afterwards.
pub async fn refunds_payable(cfg: &mut ProviderConfig, ln: &dyn LightningNode) -> bool {
    if !cfg.terms.refund_unused {
        return false;
    }
    let why = match ln.can_pay().await {
        Ok(true) => return true,
        Ok(false) => "the Lightning macaroon cannot pay (it lacks offchain:write)".to_owned(),
        Err(e) => format!("cannot check that the Lightning macaroon can pay: {e}"),
    };
    tracing::warn!(
        "refund_unused is set but {why}; offering no refunds (see docs/LND.md for the macaroon)"
    );
    cfg.terms.refund_unused = false;
    false
}

impl Provider {
    pub(super) async fn on_refund_request(
        &self,
        peer: PeerId,
        req: Signed<RefundRequest>,
    ) -> Message {
        let r = match req.verify_from(&peer) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "refundRequest refused: bad signature");
                return err(ErrorCode::BadRequest, format!("bad refundRequest: {e}"));
            }
        };
        if r.renter != peer.to_string() || r.provider != self.inner.peer_id.to_string() {
            return err(
                ErrorCode::BadRequest,
                "refundRequest names another renter or provider",
            );
        }
        let (hash, due_sat, _paying) = match self.start_refund(&peer, &r).await {
            Ok(Start::Pay(hash, due_sat, paying)) => (hash, due_sat, paying),
            Ok(Start::Answer(rec)) => return self.status_of(*rec),
            Ok(Start::Refused(code, why)) => {
                tracing::info!(%peer, lease_id = %r.lease_id, why, "refundRequest refused");
                return err(code, why);
            }
            Err(e) => {
                tracing::error!(error = %e, "refundRequest failed");
                return err(ErrorCode::Unavailable, "provider storage error");
            }
        };
        let paid = self
            .inner
            .ln
            .pay_invoice(PayRequest {
                bolt11: r.bolt11.clone(),
                fee_limit_msat: refund_fee_limit_msat(due_sat),
                timeout_secs: REFUND_PAY_TIMEOUT_SECS,
            })
            .await;
        let status = match paid {
            Ok(out) => PaymentStatus::Succeeded(out),
            Err(LightningError::PaymentFailed { reason }) => PaymentStatus::Failed { reason },
            Err(e) => {
                tracing::warn!(lease_id = %r.lease_id, error = %e, "refund outcome unclear; tracking it");
                self.track(hash).await
            }
        };
        match self.record_refund(&r.lease_id, hash, status).await {
            Ok(Some(rec)) => self.status_of(rec),
            Ok(None) => err(ErrorCode::NotFound, "no such lease of yours"),
            Err(e) => {
                tracing::error!(error = %e, "recording a refund failed");
                err(ErrorCode::Unavailable, "provider storage error")
            }
        }
    }

    /// Checks a refund request against our ledger and, when it may be paid, marks the refund
    /// `paying` durably before anything is paid.
    async fn start_refund(&self, peer: &PeerId, r: &RefundRequest) -> Result<Start, MarketError> {
        let i = &self.inner;
        let _lease = i.lease_locks.lock(&r.lease_id).await;
        let Some(current) = i.leases.get_versioned(&r.lease_id)? else {
            return Ok(Start::refused(
                ErrorCode::NotFound,
                "no such lease of yours",
            ));
        };
        let mut rec = current.value.clone();
        if rec.renter_peer != peer.to_string() || rec.lease.renter != peer.to_string() {
            return Ok(Start::refused(
                ErrorCode::NotFound,
                "no such lease of yours",
            ));
        }
        if !rec.lease.terms.refund_unused {
            return Ok(Start::refused(
                ErrorCode::BadRequest,
                "the lease's terms promise no refund",
            ));
        }
        if rec.state != LeaseState::Released {
            return Ok(Start::refused(
                ErrorCode::BadRequest,
                "the lease has not ended",
            ));
        }
        let Some(refund) = rec.refund.as_mut() else {
            return Ok(Start::refused(
                ErrorCode::BadRequest,
                "no refund is due: no credit was left when the lease ended",
            ));
        };
        if refund.state != RefundState::Due {
            // Paying or paid already: the status says which, nothing is paid again.
            return Ok(Start::Answer(Box::new(rec)));
        }
        let checked = match check_refund_invoice(
            &r.bolt11,
            &i.network,
            refund.due_sat.saturating_mul(1000),
            self.now(),
            REFUND_MIN_EXPIRY_LEFT_SECS,
        ) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Start::refused(
                    ErrorCode::BadRequest,
                    format!("refund invoice refused ({} sat due): {e}", refund.due_sat),
                ));
            }
        };
        refund.state = RefundState::Paying {
            payment_hash: hex::encode(checked.payment_hash),
        };
        refund.bolt11 = Some(r.bolt11.clone());
        // Marked ours before the swap, so no resolution pass tracks it before we pay.
        let paying = PayingGuard::new(self, &r.lease_id);
        // Only the record as read becomes `paying`: whoever swaps first pays, once.
        if !i
            .leases
            .compare_and_swap(&r.lease_id, Some(&current), Some(&rec))
            .await?
        {
            let now = i.leases.get(&r.lease_id)?.unwrap_or(current.value);
            return Ok(Start::Answer(Box::new(now)));
        }
        let due_sat = rec.refund.as_ref().map_or(0, |r| r.due_sat);
        tracing::info!(lease_id = %r.lease_id, due_sat, "paying a refund");
        Ok(Start::Pay(checked.payment_hash, due_sat, paying))
    }

    /// What our node says of the refund payment `hash`; unknown to it means never started.
    async fn track(&self, hash: [u8; 32]) -> PaymentStatus {
        match self.inner.ln.track_payment(hash).await {
            Ok(Some(s)) => s,
            Ok(None) => PaymentStatus::Failed {
                reason: "the node never started the payment".into(),
            },
            Err(e) => {
                tracing::warn!(payment_hash = %hex::encode(hash), error = %e, "cannot track a refund now");
                PaymentStatus::InFlight
            }
        }
    }

    /// Stores what our node says of the refund payment `hash` of `lease_id`: paid, due again,
    /// or (in flight) unchanged. Audits `refund_paid` or `refund_failed`.
    async fn record_refund(
        &self,
        lease_id: &str,
        hash: [u8; 32],
        status: PaymentStatus,
    ) -> Result<Option<ProviderLease>, MarketError> {
        let i = &self.inner;
        let _lease = i.lease_locks.lock(lease_id).await;
        let Some(mut rec) = i.leases.get(lease_id)? else {
            return Ok(None);
        };
        let hex_hash = hex::encode(hash);
        let Some(refund) = rec.refund.as_mut() else {
            return Ok(Some(rec));
        };
        if !matches!(&refund.state, RefundState::Paying { payment_hash } if *payment_hash == hex_hash)
        {
            return Ok(Some(rec));
        }
        let due_sat = refund.due_sat;
        let (kind, payload) = match status {
            PaymentStatus::InFlight => return Ok(Some(rec)),
            PaymentStatus::Succeeded(PaymentOutcome { fee_msat, .. }) => {
                refund.state = RefundState::Paid {
                    payment_hash: hex_hash.clone(),
                };
                refund.fee_msat = fee_msat;
                (
                    AuditKind::RefundPaid,
                    json!({"lease_id": lease_id, "renter": rec.renter_peer,
                           "payment_hash": hex_hash, "amount_sat": due_sat, "fee_msat": fee_msat}),
                )
            }
            PaymentStatus::Failed { reason } => {
                refund.state = RefundState::Due;
                refund.bolt11 = None;
                (
                    AuditKind::RefundFailed,
                    json!({"lease_id": lease_id, "renter": rec.renter_peer,
                           "payment_hash": hex_hash, "amount_sat": due_sat, "reason": reason}),
                )
            }
        };
        i.leases.put(lease_id, &rec).await?;
        self.audit(kind, payload).await;
        tracing::info!(lease_id, payment_hash = %hex_hash, ?kind, "refund payment resolved");
        Ok(Some(rec))
    }

    /// Resolves every refund left `paying` (a crash, an unclear answer) by asking our node
    /// how its payment ended; never pays again. Run at start and on every tick.
    pub(super) async fn resolve_paying_refunds(&self) -> Result<(), MarketError> {
        for (lease_id, rec) in self.inner.leases.all()? {
            let Some(RefundState::Paying { payment_hash }) = rec.refund.map(|r| r.state) else {
                continue;
            };
            if self.paying_now(&lease_id) {
                // Being paid by this process: its own answer resolves it.
                continue;
            }
            let Some(hash) = hex::decode(&payment_hash)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            else {
                continue;
            };
            let status = self.track(hash).await;
            if let Err(e) = self.record_refund(&lease_id, hash, status).await {
                self.item_failed("refund resolution", &lease_id, &e).await;
            }
        }
        Ok(())
    }
}

impl Provider {
    fn paying_now(&self, lease_id: &str) -> bool {
        self.inner
            .refunds_paying
            .lock()
            .expect("refunds paying lock not poisoned")
            .contains(lease_id)
    }
}

/// Marks a lease's refund as being paid by this process until dropped.
struct PayingGuard {
    provider: Provider,
    lease_id: String,
}

impl PayingGuard {
    fn new(provider: &Provider, lease_id: &str) -> PayingGuard {
        provider
            .inner
            .refunds_paying
            .lock()
            .expect("refunds paying lock not poisoned")
            .insert(lease_id.to_owned());
        PayingGuard {
            provider: provider.clone(),
            lease_id: lease_id.to_owned(),
        }
    }
}

impl Drop for PayingGuard {
    fn drop(&mut self) {
        self.provider
            .inner
            .refunds_paying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.lease_id);
    }
}

/// What [`Provider::start_refund`] decided.
enum Start {
    /// Marked `paying`: pay the invoice with this hash, for this many sat; the guard keeps
    /// the resolution pass off it until the payment's outcome is recorded.
    Pay([u8; 32], Sats, PayingGuard),
    /// Nothing to pay (already paying or paid): answer with this record's status.
    Answer(Box<ProviderLease>),
    /// Refused, with why.
    Refused(ErrorCode, String),
}

impl Start {
    fn refused(code: ErrorCode, why: impl Into<String>) -> Start {
        Start::Refused(code, why.into())
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;
    use std::time::Duration;

    use bitcoin::hashes::{Hash as _, sha256};
    use bitcoin::secp256k1::{Secp256k1, SecretKey};
    use lightning_invoice::{Currency, InvoiceBuilder, PaymentSecret};

    use super::super::tests::{
        Harness, count, harness_with, lease_end, rent_and_pay, renter_peer, result_for,
    };
    use super::*;
    use crate::lightning::InvoiceRequest;
    use crate::types::DAY_SECS;

    fn refunding() -> ProviderConfig {
        let mut cfg = ProviderConfig {
            ipv6_pools: Vec::new(),
            ..ProviderConfig::default()
        };
        cfg.terms.refund_unused = true;
        cfg
    }

    /// Renter `n` rents (1000 sat of credit: 10 days) and is issued its lease.
    async fn leased(h: &Harness, n: u8) -> String {
        let pay = rent_and_pay(h, n).await;
        let reply = h.provider.handle(renter_peer(n), result_for(&pay)).await;
        assert!(matches!(reply, Message::Lease(_)), "{reply:?}");
        pay.lease_id
    }

    /// Renter `n` rents, uses `used_days`, then ends the lease; returns the lease id and the
    /// status answer.
    async fn ended(h: &Harness, n: u8, used_days: u64) -> (String, Status) {
        let id = leased(h, n).await;
        h.clock.advance(Duration::from_secs(used_days * DAY_SECS));
        let reply = h
            .provider
            .handle(renter_peer(n), lease_end(n, &id, h))
            .await;
        let Message::Status(st) = reply else {
            panic!("{reply:?}")
        };
        (id, st)
    }

    /// An invoice of the renter's node for `sat`, valid `expiry` seconds on the provider's
    /// clock (the in-memory node stamps invoices with the wall clock, which the test clock
    /// has left behind by however far it was advanced).
    async fn renter_invoice(h: &Harness, sat: Sats, expiry: u64) -> String {
        let expiry = expiry + h.clock.now_unix().saturating_sub(crate::types::now_unix());
        h.net
            .node("renter")
            .unwrap()
            .add_invoice(InvoiceRequest {
                amount_msat: sat * 1000,
                description_hash: [9; 32],
                expiry_secs: expiry,
            })
            .await
            .unwrap()
            .bolt11
    }

    /// A signed invoice on `currency`, with `amount_msat` or none.
    fn foreign_invoice(currency: Currency, amount_msat: Option<u64>) -> String {
        let secp = Secp256k1::new();
        let key = SecretKey::from_slice(&[5; 32]).unwrap();
        let b = InvoiceBuilder::new(currency)
            .description_hash(sha256::Hash::from_byte_array([9; 32]))
            .payment_hash(sha256::Hash::from_byte_array([3; 32]))
            .payment_secret(PaymentSecret([4; 32]))
            .duration_since_epoch(Duration::from_secs(crate::types::now_unix()))
            .expiry_time(Duration::from_secs(3600))
            .min_final_cltv_expiry_delta(80);
        let signed = match amount_msat {
            Some(a) => b
                .amount_milli_satoshis(a)
                .build_signed(|m| secp.sign_ecdsa_recoverable(m, &key)),
            None => b.build_signed(|m| secp.sign_ecdsa_recoverable(m, &key)),
        };
        signed.unwrap().to_string()
    }

    /// Renter `n`'s signed refundRequest for `lease_id` with `bolt11`.
    fn request(h: &Harness, n: u8, lease_id: &str, bolt11: &str) -> Message {
        let key = ed25519_dalek::SigningKey::from_bytes(&[100 + n; 32]);
        Message::RefundRequest(
            Signed::sign(
                &key,
                &RefundRequest {
                    lease_id: lease_id.into(),
                    provider: h.provider.inner.peer_id.to_string(),
                    renter: renter_peer(n).to_string(),
                    bolt11: bolt11.into(),
                    requested_at: h.clock.now_unix(),
                },
            )
            .unwrap(),
        )
    }

    /// Renter `n`'s refundRequest for `lease_id` with `bolt11`, sent by renter `n`.
    async fn ask(h: &Harness, n: u8, lease_id: &str, bolt11: &str) -> Message {
        h.provider
            .handle(renter_peer(n), request(h, n, lease_id, bolt11))
            .await
    }

    fn assert_paid(reply: &Message) {
        assert!(
            matches!(reply, Message::Status(s) if matches!(s.refund, RefundState::Paid { .. })),
            "{reply:?}"
        );
    }

    fn refused(reply: &Message, code: ErrorCode, says: &str) {
        assert!(
            matches!(reply, Message::Error(e) if e.code == code && e.message.contains(says)),
            "wanted {code:?} saying {says:?}, got {reply:?}"
        );
    }

    fn renter_sat(h: &Harness) -> u64 {
        h.net.balance_msat("renter").unwrap() / 1000
    }

    #[tokio::test]
    async fn a_released_lease_freezes_its_unused_credit_once_and_pays_it_once() {
        let h = harness_with(refunding()).await;
        let (id, st) = ended(&h, 1, 3).await;
        assert_eq!(st.state, LeaseState::Released);
        assert_eq!((st.refund_due_sat, &st.refund), (700, &RefundState::Due));
        // A repeated leaseEnd, a day later, changes nothing.
        h.clock.advance(Duration::from_secs(DAY_SECS));
        let again = h
            .provider
            .handle(renter_peer(1), lease_end(1, &id, &h))
            .await;
        assert!(
            matches!(&again, Message::Status(s) if s.refund_due_sat == 700),
            "{again:?}"
        );

        let before = renter_sat(&h);
        let bolt11 = renter_invoice(&h, 700, 600).await;
        let reply = ask(&h, 1, &id, &bolt11).await;
        let Message::Status(st) = reply else {
            panic!("{reply:?}")
        };
        let RefundState::Paid { payment_hash } = &st.refund else {
            panic!("{st:?}")
        };
        assert_eq!(
            renter_sat(&h),
            before + 700,
            "exactly the refund due arrived"
        );
        assert_eq!(count(&h.audit, "refund_paid"), 1);
        // Asking again (same or another invoice) pays nothing more.
        let other = renter_invoice(&h, 700, 600).await;
        for b in [&bolt11, &other] {
            let reply = ask(&h, 1, &id, b).await;
            assert!(
                matches!(&reply, Message::Status(s)
                    if s.refund == RefundState::Paid { payment_hash: payment_hash.clone() }),
                "{reply:?}"
            );
        }
        assert_eq!(renter_sat(&h), before + 700);
        assert_eq!(count(&h.audit, "refund_paid"), 1);
        assert_eq!(h.net.double_payments(), 0);
    }

    #[tokio::test]
    async fn every_refusal_pays_nothing() {
        let h = harness_with(refunding()).await;
        let active = leased(&h, 2).await;
        let (id, _) = ended(&h, 1, 0).await;
        let due = 1000;
        let before = renter_sat(&h);
        let good = renter_invoice(&h, due, 600).await;

        // Not ended.
        let bolt11 = renter_invoice(&h, 1000, 600).await;
        let r = ask(&h, 2, &active, &bolt11).await;
        refused(&r, ErrorCode::BadRequest, "has not ended");
        // Wrong signer: renter 2 forwards renter 1's request, or asks for renter 1's lease.
        let r = h
            .provider
            .handle(renter_peer(2), request(&h, 1, &id, &good))
            .await;
        refused(&r, ErrorCode::BadRequest, "bad refundRequest");
        let r = ask(&h, 2, &id, &good).await;
        refused(&r, ErrorCode::NotFound, "no such lease");
        // Wrong amount: more, less, none.
        for sat in [due + 1, due - 1] {
            let b = renter_invoice(&h, sat, 600).await;
            let r = ask(&h, 1, &id, &b).await;
            refused(&r, ErrorCode::BadRequest, "amount");
        }
        let amountless = foreign_invoice(Currency::Regtest, None);
        let r = ask(&h, 1, &id, &amountless).await;
        refused(&r, ErrorCode::BadRequest, "no amount");
        // Wrong network.
        let mainnet = foreign_invoice(Currency::Bitcoin, Some(due * 1000));
        let r = ask(&h, 1, &id, &mainnet).await;
        refused(&r, ErrorCode::BadRequest, "network");
        // Not an invoice at all.
        let r = ask(&h, 1, &id, "lnbcrt1garbage").await;
        refused(&r, ErrorCode::BadRequest, "not a valid BOLT11");
        // Expired (and too close to expiry).
        let short = renter_invoice(&h, due, 30).await;
        let r = ask(&h, 1, &id, &short).await;
        refused(&r, ErrorCode::BadRequest, "expires in");
        h.clock.advance(Duration::from_secs(700));
        let r = ask(&h, 1, &id, &good).await;
        refused(&r, ErrorCode::BadRequest, "expired");

        assert_eq!(renter_sat(&h), before, "nothing was paid");
        assert_eq!(
            count(&h.audit, "refund_paid") + count(&h.audit, "refund_failed"),
            0
        );
        let rec = h.provider.inner.leases.get(&id).unwrap().unwrap();
        assert_eq!(rec.refund.unwrap().state, RefundState::Due);
    }

    #[tokio::test]
    async fn terms_without_refunds_owe_nothing() {
        let h = harness_with(ProviderConfig {
            ipv6_pools: Vec::new(),
            ..ProviderConfig::default()
        })
        .await;
        let (id, st) = ended(&h, 1, 1).await;
        assert_eq!((st.refund_due_sat, st.refund), (0, RefundState::None));
        let b = renter_invoice(&h, 900, 600).await;
        let r = ask(&h, 1, &id, &b).await;
        refused(&r, ErrorCode::BadRequest, "promise no refund");
    }

    #[tokio::test]
    async fn credit_that_ran_out_leaves_no_refund() {
        let h = harness_with(refunding()).await;
        let id = leased(&h, 1).await;
        h.clock.advance(Duration::from_secs(11 * DAY_SECS));
        h.provider.tick().await.unwrap();
        let reply = h
            .provider
            .handle(renter_peer(1), lease_end(1, &id, &h))
            .await;
        assert!(
            matches!(&reply, Message::Status(s) if s.refund_due_sat == 0
                && s.refund == RefundState::None),
            "{reply:?}"
        );
        let b = renter_invoice(&h, 1, 600).await;
        let r = ask(&h, 1, &id, &b).await;
        refused(&r, ErrorCode::BadRequest, "no refund is due");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_concurrent_requests_pay_once() {
        let h = harness_with(refunding()).await;
        let (id, _) = ended(&h, 1, 5).await;
        let before = renter_sat(&h);
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let b = renter_invoice(&h, 500, 600).await;
            let msg = request(&h, 1, &id, &b);
            let p = h.provider.clone();
            tasks.push(tokio::spawn(
                async move { p.handle(renter_peer(1), msg).await },
            ));
        }
        for t in tasks {
            let reply = t.await.unwrap();
            assert!(matches!(reply, Message::Status(_)), "{reply:?}");
        }
        h.provider.tick().await.unwrap();
        assert_eq!(renter_sat(&h), before + 500, "paid exactly once");
        assert_eq!(count(&h.audit, "refund_paid"), 1);
        let rec = h.provider.inner.leases.get(&id).unwrap().unwrap();
        assert!(matches!(
            rec.refund.unwrap().state,
            RefundState::Paid { .. }
        ));
    }

    #[tokio::test]
    async fn a_tick_while_a_refund_is_being_paid_leaves_it_to_the_payer() {
        let h = harness_with(refunding()).await;
        let (id, _) = ended(&h, 1, 0).await;
        let before = renter_sat(&h);
        // The request is marked paying and reaches the node, which has not seen it yet...
        h.ln.hold_next_pay
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let b = renter_invoice(&h, 1000, 600).await;
        let in_flight = tokio::spawn({
            let p = h.provider.clone();
            let msg = request(&h, 1, &id, &b);
            async move { p.handle(renter_peer(1), msg).await }
        });
        h.ln.entered.notified().await;
        // ...while the background pass runs: it must not take it for a payment never started.
        h.provider.tick().await.unwrap();
        let state = || {
            h.provider
                .inner
                .leases
                .get(&id)
                .unwrap()
                .unwrap()
                .refund
                .unwrap()
                .state
        };
        assert!(
            matches!(state(), RefundState::Paying { .. }),
            "{:?}",
            state()
        );
        assert_eq!(count(&h.audit, "refund_failed"), 0);
        h.ln.release.notify_one();
        assert_paid(&in_flight.await.unwrap());
        // A new invoice afterwards is not paid.
        let again = renter_invoice(&h, 1000, 600).await;
        assert_paid(&ask(&h, 1, &id, &again).await);
        assert_eq!(renter_sat(&h), before + 1000);
        assert_eq!(count(&h.audit, "refund_paid"), 1);
    }

    /// Puts the refund of `id` in `paying` for `bolt11`, as a crash right after the swap (or
    /// during the payment) would leave it.
    async fn crashed_paying(h: &Harness, id: &str, bolt11: &str) -> String {
        let mut rec = h.provider.inner.leases.get(id).unwrap().unwrap();
        let hash = hex::encode(
            lightning_invoice::Bolt11Invoice::from_str(bolt11)
                .unwrap()
                .payment_hash()
                .to_byte_array(),
        );
        let refund = rec.refund.as_mut().unwrap();
        refund.state = RefundState::Paying {
            payment_hash: hash.clone(),
        };
        refund.bolt11 = Some(bolt11.into());
        h.provider.inner.leases.put(id, &rec).await.unwrap();
        hash
    }

    #[tokio::test]
    async fn a_crash_while_paying_is_resolved_with_the_node_never_by_paying_again() {
        let h = harness_with(refunding()).await;
        let (paid_id, _) = ended(&h, 1, 2).await;
        let (unpaid_id, _) = ended(&h, 2, 0).await;

        // Lease 1: the payment went out, then the provider died before recording it.
        let b1 = renter_invoice(&h, 800, 600).await;
        let hash1 = crashed_paying(&h, &paid_id, &b1).await;
        h.net
            .node("provider")
            .unwrap()
            .pay_invoice(PayRequest {
                bolt11: b1.clone(),
                fee_limit_msat: 10_000,
                timeout_secs: 10,
            })
            .await
            .unwrap();
        // Lease 2: it died after the swap, before paying.
        let b2 = renter_invoice(&h, 1000, 600).await;
        crashed_paying(&h, &unpaid_id, &b2).await;
        // While paying, a new request is answered with the status and pays nothing.
        let r = ask(&h, 1, &paid_id, &b1).await;
        assert!(
            matches!(&r, Message::Status(s) if matches!(s.refund, RefundState::Paying { .. })),
            "{r:?}"
        );
        let before = renter_sat(&h);

        h.provider.start().await.unwrap();
        let state = |id: &str| {
            h.provider
                .inner
                .leases
                .get(id)
                .unwrap()
                .unwrap()
                .refund
                .unwrap()
                .state
        };
        assert_eq!(
            state(&paid_id),
            RefundState::Paid {
                payment_hash: hash1
            }
        );
        assert_eq!(
            state(&unpaid_id),
            RefundState::Due,
            "never started: due again"
        );
        assert_eq!(renter_sat(&h), before, "nothing paid by the restart");
        assert_eq!(count(&h.audit, "refund_paid"), 1);
        assert_eq!(count(&h.audit, "refund_failed"), 1);
        // Lease 2's renter sends an invoice again and is paid once.
        let r = ask(&h, 2, &unpaid_id, &b2).await;
        assert_paid(&r);
        assert_eq!(renter_sat(&h), before + 1000);
        assert_eq!(h.net.double_payments(), 0);
    }

    #[tokio::test]
    async fn a_failed_payment_makes_the_refund_due_again() {
        let h = harness_with(refunding()).await;
        let (id, _) = ended(&h, 1, 0).await;
        // A route dearer than the cap (1 % of 1000 sat, at least 10 sat) fails.
        h.net.set_routing_fee(10_001, 0);
        let b = renter_invoice(&h, 1000, 600).await;
        let r = ask(&h, 1, &id, &b).await;
        assert!(
            matches!(&r, Message::Status(s) if s.refund == RefundState::Due),
            "{r:?}"
        );
        assert_eq!(count(&h.audit, "refund_failed"), 1);
        // Within the cap the provider pays the fee on top; the renter gets the full refund.
        h.net.set_routing_fee(10_000, 0);
        let before = (renter_sat(&h), h.net.balance_msat("provider").unwrap());
        let b = renter_invoice(&h, 1000, 600).await;
        let r = ask(&h, 1, &id, &b).await;
        assert_paid(&r);
        assert_eq!(renter_sat(&h), before.0 + 1000);
        assert_eq!(
            h.net.balance_msat("provider").unwrap(),
            before.1 - 1_000_000 - 10_000
        );
    }

    #[tokio::test]
    async fn a_terminated_lease_is_refunded_what_was_left_at_the_end_of_the_notice() {
        let h = harness_with(refunding()).await;
        let id = leased(&h, 1).await;
        h.provider
            .terminate(&id, Duration::from_secs(4 * DAY_SECS))
            .await
            .unwrap();
        // Metering runs a little after the notice ends: the refund is what was left then.
        h.clock.advance(Duration::from_secs(4 * DAY_SECS + 3_600));
        h.provider.tick().await.unwrap();
        let st = h
            .provider
            .handle(
                renter_peer(1),
                Message::StatusRequest(crate::wire::StatusRequest {
                    lease_id: id.clone(),
                }),
            )
            .await;
        let Message::Status(st) = st else {
            panic!("{st:?}")
        };
        assert_eq!(st.state, LeaseState::Released);
        assert_eq!((st.refund_due_sat, &st.refund), (600, &RefundState::Due));
        let before = renter_sat(&h);
        let b = renter_invoice(&h, 600, 600).await;
        let r = ask(&h, 1, &id, &b).await;
        assert_paid(&r);
        assert_eq!(renter_sat(&h), before + 600);
    }

    #[tokio::test]
    async fn a_provider_whose_macaroon_cannot_pay_offers_no_refunds() {
        let h = harness_with(refunding()).await;
        let ln = h.net.node("provider").unwrap();
        let mut cfg = refunding();
        assert!(refunds_payable(&mut cfg, &ln).await);
        assert!(cfg.terms.refund_unused);
        assert!(h.provider.offer().verify().unwrap().terms.refund_unused);

        h.net.set_can_pay("provider", false);
        assert!(!refunds_payable(&mut cfg, &ln).await);
        assert!(!cfg.terms.refund_unused, "switched off");
        let h2 = harness_with(cfg).await;
        assert!(!h2.provider.offer().verify().unwrap().terms.refund_unused);
    }
}
