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
        let (hash, due_sat) = match self.start_refund(&peer, &r).await {
            Ok(Start::Pay(hash, due_sat)) => (hash, due_sat),
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
            return Ok(Start::refused(ErrorCode::NotFound, "no such lease of yours"));
        };
        let mut rec = current.value.clone();
        if rec.renter_peer != peer.to_string() || rec.lease.renter != peer.to_string() {
            return Ok(Start::refused(ErrorCode::NotFound, "no such lease of yours"));
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
                    format!(
                        "refund invoice refused ({} sat due): {e}",
                        refund.due_sat
                    ),
                ));
            }
        };
        refund.state = RefundState::Paying {
            payment_hash: hex::encode(checked.payment_hash),
        };
        refund.bolt11 = Some(r.bolt11.clone());
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
        Ok(Start::Pay(checked.payment_hash, due_sat))
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

/// What [`Provider::start_refund`] decided.
enum Start {
    /// Marked `paying`: pay the invoice with this hash, for this many sat.
    Pay([u8; 32], Sats),
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
