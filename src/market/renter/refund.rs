//! Claiming the refund of unused credit a provider promised (`refund_unused` terms) for a lease
//! we released or it terminated.
//!
//! On each tick, for such a lease: ask the provider's `status`. While it shows a refund due,
//! create an invoice on our own node for exactly `refund_due_sat` (reused until it nears
//! expiry) and send it in a signed `refundRequest`. Once the status shows it paid, look the
//! invoice up on our own node: only when our node shows it settled is the refund recorded as
//! received (and audited `refund_received`). A status with no refund for a released lease
//! means nothing is owed (the credit had run out). A provider that cannot be reached is asked
//! again on the next tick.

use sha2::{Digest, Sha256};

use super::*;
use crate::lightning::{InvoiceRequest, InvoiceState};
use crate::wire::{RefundRequest, RefundState, Status};

/// Our refund invoices are valid this long.
const REFUND_INVOICE_EXPIRY_SECS: u64 = 3_600;
/// A stored refund invoice with less than this left is replaced by a new one.
const REFUND_INVOICE_MIN_LEFT_SECS: u64 = 600;

/// What the renter knows of the refund of one of its leases.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenterRefund {
    /// Refund due per the provider's status (0 until it shows one).
    pub refund_sat: Sats,
    /// The provider's view: none, due, paying, paid.
    pub state: RefundState,
    /// Our invoice for it, while one is outstanding, and when it expires.
    pub bolt11: Option<String>,
    /// Expiry of `bolt11` (unix seconds).
    pub expires_at: u64,
    /// Payment hash (hex) the provider says it paid.
    pub refund_hash: Option<String>,
    /// Our own node shows that invoice settled: the refund arrived.
    pub received: bool,
    /// Nothing more to do: received, or the provider owes nothing.
    pub done: bool,
}

impl RenterRefund {
    /// A short word for `status`: none, due, paying, paid or received; empty while the
    /// provider has not said yet.
    pub fn describe(&self) -> &'static str {
        if self.received {
            "received"
        } else if self.state.is_none() && !self.done {
            ""
        } else {
            self.state.as_str()
        }
    }
}

/// The description hash of our refund invoice for `lease_id` from `provider`: SHA-256 of
/// "leasewire refund of unused credit: lease <id> from provider <peer id>".
pub fn refund_description_hash(lease_id: &str, provider: &str) -> [u8; 32] {
    Sha256::digest(
        format!("leasewire refund of unused credit: lease {lease_id} from provider {provider}")
            .as_bytes(),
    )
    .into()
}

impl Renter {
    /// Whether the tick should work on the refund of `r`: ended (released, and the provider
    /// knows it), under terms that promise a refund, and not done yet.
    pub(super) fn refund_pending(r: &Rental) -> bool {
        r.state == LeaseState::Released
            && !r.end_unsent
            && r.lease.terms.refund_unused
            && !r.refund.done
    }

    /// One step towards the refund of `id`; the caller holds the lease's lock.
    pub(super) async fn claim_refund(&self, id: &str) -> Result<Rental, MarketError> {
        let r = self.rental(id)?;
        let peer: PeerId = r
            .lease
            .provider
            .parse()
            .map_err(|_| MarketError::Store("bad provider id".into()))?;
        let mut status = self
            .refund_status(
                peer,
                Message::StatusRequest(StatusRequest {
                    lease_id: id.into(),
                }),
            )
            .await?;
        if status.refund == RefundState::Due && status.refund_due_sat > 0 {
            let bolt11 = self.refund_invoice(&r, status.refund_due_sat).await?;
            let req = RefundRequest {
                lease_id: id.into(),
                provider: r.lease.provider.clone(),
                renter: self.inner.peer_id.to_string(),
                bolt11,
                requested_at: self.now(),
            };
            let signed = Signed::sign(&self.inner.key, &req)
                .map_err(|e| MarketError::Store(e.to_string()))?;
            tracing::info!(lease_id = %id, amount_sat = status.refund_due_sat, "asking for a refund");
            status = self
                .refund_status(peer, Message::RefundRequest(signed))
                .await?;
        }
        self.record_refund_status(id, &status).await
    }

    /// Sends `msg` to `peer` and returns its `status` answer.
    async fn refund_status(&self, peer: PeerId, msg: Message) -> Result<Status, MarketError> {
        match self.ask(peer, msg).await?.0 {
            Message::Status(s) => Ok(s),
            other => Err(MarketError::wrong_answer(other, "status")),
        }
    }

    /// Our invoice for the refund of `r`: the stored one when it is for `amount` and has time
    /// left, otherwise a new one (stored before it is sent).
    async fn refund_invoice(&self, r: &Rental, amount: Sats) -> Result<String, MarketError> {
        let now = self.now();
        if let Some(b) = &r.refund.bolt11
            && r.refund.refund_sat == amount
            && r.refund.expires_at > now + REFUND_INVOICE_MIN_LEFT_SECS
        {
            return Ok(b.clone());
        }
        let id = r.lease.lease_id.clone();
        let created = self
            .inner
            .ln
            .add_invoice(InvoiceRequest {
                amount_msat: amount.saturating_mul(1000),
                description_hash: refund_description_hash(&id, &r.lease.provider),
                expiry_secs: REFUND_INVOICE_EXPIRY_SECS,
            })
            .await?;
        let bolt11 = created.bolt11.clone();
        self.update_refund(&id, |f| {
            f.refund_sat = amount;
            f.bolt11 = Some(bolt11.clone());
            f.expires_at = now + REFUND_INVOICE_EXPIRY_SECS;
        })
        .await?;
        Ok(created.bolt11)
    }

    /// Records the provider's view of the refund; when it says paid, checks our own node.
    async fn record_refund_status(&self, id: &str, s: &Status) -> Result<Rental, MarketError> {
        let received = match &s.refund {
            RefundState::Paid { payment_hash } => self.settled_here(payment_hash).await?,
            _ => false,
        };
        let before = self.rental(id)?.refund;
        let r = self
            .update_refund(id, |f| {
                f.state = s.refund.clone();
                if s.refund_due_sat > 0 {
                    f.refund_sat = s.refund_due_sat;
                }
                if let RefundState::Paid { payment_hash } = &s.refund {
                    f.refund_hash = Some(payment_hash.clone());
                }
                f.received = received;
                // Released with nothing owed, or the money is here: nothing more to do.
                f.done = received || (s.state == LeaseState::Released && s.refund.is_none());
            })
            .await?;
        if received && !before.received {
            self.audit(
                AuditKind::RefundReceived,
                json!({"lease_id": id, "provider": r.lease.provider,
                       "amount_sat": r.refund.refund_sat, "payment_hash": r.refund.refund_hash}),
            )
            .await;
            tracing::info!(lease_id = %id, amount_sat = r.refund.refund_sat, "refund received");
        }
        Ok(r)
    }

    /// Whether our own node shows the invoice with `payment_hash` (hex) settled.
    async fn settled_here(&self, payment_hash: &str) -> Result<bool, MarketError> {
        let Some(hash) = hex::decode(payment_hash)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        else {
            return Ok(false);
        };
        match self.inner.ln.lookup_invoice(hash).await {
            Ok(st) => Ok(st.state == InvoiceState::Settled),
            // Not an invoice of ours: the provider paid something else; never "received".
            Err(e) if e.is_rpc_code(tonic::Code::NotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn update_refund(
        &self,
        id: &str,
        f: impl Fn(&mut RenterRefund),
    ) -> Result<Rental, MarketError> {
        self.update_rental(id, |r| f(&mut r.refund)).await
    }
}
