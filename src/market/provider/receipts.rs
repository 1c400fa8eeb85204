//! Receipts: for every settled payment the provider signs a [`Receipt`] (payment hash, amount,
//! lease, new `paid_until`, and the position of its `invoice_settled` entry in the provider's
//! Merkle audit log), keeps it, and hands a lease's receipts to its renter on
//! `receiptsRequest`. It also keeps the signed offer each lease was made under, so that a
//! lease certificate (`lease export`) can carry it long after the offer was re-signed.

use super::*;
use crate::audit::certificate::{LeaseCertificate, build_certificate};
use crate::wire::{MAX_RECEIPTS_PER_ANSWER, Receipt, Receipts, ReceiptsRequest};

impl Provider {
    /// Appends to the audit log like `audit`, returning the entry's seq (`None`, logged,
    /// when the append failed).
    pub(super) async fn audit_seq(
        &self,
        kind: AuditKind,
        payload: serde_json::Value,
    ) -> Option<u64> {
        match self.inner.audit.append_async(kind, &payload).await {
            Ok(seq) => Some(seq),
            Err(e) => {
                tracing::error!(error = %e, ?kind, "audit append failed");
                None
            }
        }
    }

    /// Signs and keeps the receipt of a settled payment: `amount_sat` paid by `payment_hash`
    /// for the lease of `rec`, whose `invoice_settled` entry is `log_seq`. A failure is
    /// logged, never fatal: the payment is credited either way.
    pub(super) async fn issue_receipt(
        &self,
        rec: &ProviderLease,
        payment_hash: &str,
        amount_sat: Sats,
        log_seq: u64,
    ) {
        let receipt = Receipt {
            lease_id: rec.lease.lease_id.clone(),
            provider: self.inner.peer_id.to_string(),
            renter: rec.lease.renter.clone(),
            payment_hash: payment_hash.to_owned(),
            amount_sat,
            paid_until: rec.lease.paid_until,
            revision: rec.lease.revision,
            log_seq,
            settled_at: self.now(),
        };
        if rec.lease.revision == 1 {
            self.keep_lease_offer(&rec.lease.offer_id).await;
        }
        let signed = match Signed::sign(&self.inner.key, &receipt) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign a receipt");
                return;
            }
        };
        let stored = self
            .inner
            .receipts
            .update(&receipt.lease_id, |old| {
                let mut all = old.cloned().unwrap_or_default();
                // Idempotent: a settlement finished twice keeps one receipt per payment.
                if !all.iter().any(|r: &Signed<Receipt>| {
                    r.verify()
                        .is_ok_and(|x| x.payment_hash == receipt.payment_hash)
                }) {
                    all.push(signed.clone());
                }
                Ok(Some(all))
            })
            .await;
        if let Err(e) = stored {
            tracing::error!(error = %e, lease_id = %receipt.lease_id, "cannot keep a receipt");
        }
    }

    /// Every receipt kept for `lease_id`, oldest first.
    ///
    /// # Errors
    /// Store errors.
    pub fn receipts(&self, lease_id: &str) -> Result<Vec<Signed<Receipt>>, MarketError> {
        Ok(self.inner.receipts.get(lease_id)?.unwrap_or_default())
    }

    /// Answers `headRequest`: this node's latest signed audit head, with the consistency
    /// proof from the size the asker holds.
    pub(super) fn on_head_request(&self, r: &crate::wire::HeadRequest) -> Message {
        match self.inner.audit.head_reply(r.since_size) {
            Ok(reply) => Message::Head(reply),
            Err(e) => {
                tracing::error!(error = %e, "cannot make a head reply");
                err(ErrorCode::Unavailable, "audit log unreadable")
            }
        }
    }

    /// Answers `receiptsRequest`: the lease's receipts, to its renter only.
    pub(super) fn on_receipts_request(&self, peer: PeerId, r: &ReceiptsRequest) -> Message {
        match self.inner.leases.get(&r.lease_id) {
            Ok(Some(rec)) if rec.renter_peer == peer.to_string() => {}
            Ok(_) => return err(ErrorCode::NotFound, "no such lease of yours"),
            Err(e) => {
                tracing::error!(error = %e, "lease lookup failed");
                return err(ErrorCode::Unavailable, "provider storage error");
            }
        }
        match self.receipts(&r.lease_id) {
            Ok(mut all) => {
                let skip = all.len().saturating_sub(MAX_RECEIPTS_PER_ANSWER);
                all.drain(..skip);
                Message::Receipts(Receipts {
                    lease_id: r.lease_id.clone(),
                    receipts: all,
                })
            }
            Err(e) => {
                tracing::error!(error = %e, "receipt lookup failed");
                err(ErrorCode::Unavailable, "provider storage error")
            }
        }
    }

    /// The signed offer with id `offer_id`: kept at activation, or the current one, or one
    /// signed recently in this run (signing is deterministic, so re-signing the same offer
    /// gives the same bytes and id).
    fn signed_offer(&self, offer_id: &str) -> Result<Option<Signed<Offer>>, MarketError> {
        if let Some(kept) = self.inner.lease_offers.get(offer_id)? {
            return Ok(Some(kept));
        }
        let current = self.offer();
        if current.id() == offer_id {
            return Ok(Some(current));
        }
        let recent: Vec<Offer> = self
            .inner
            .recent_offers
            .lock()
            .expect("recent offers lock not poisoned")
            .iter()
            .filter(|(id, _)| id == offer_id)
            .map(|(_, o)| o.clone())
            .collect();
        for offer in recent {
            let signed = Signed::sign(&self.inner.key, &offer)
                .map_err(|e| MarketError::Store(e.to_string()))?;
            if signed.id() == offer_id {
                return Ok(Some(signed));
            }
        }
        Ok(None)
    }

    /// Keeps the signed offer a new lease was made under (logged, never fatal, if missing).
    async fn keep_lease_offer(&self, offer_id: &str) {
        let kept = match self.signed_offer(offer_id) {
            Ok(Some(signed)) => self.inner.lease_offers.put(offer_id, &signed).await,
            Ok(None) => {
                tracing::warn!(offer_id, "offer of a new lease no longer known; not kept");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, offer_id, "cannot find the offer of a new lease");
                return;
            }
        };
        if let Err(e) = kept {
            tracing::warn!(error = %e, offer_id, "cannot keep the offer of a new lease");
        }
    }

    /// A lease certificate for one of this provider's leases: its current signed revision
    /// and offer, proven in the audit log (see [`crate::audit::certificate`]).
    ///
    /// # Errors
    /// [`MarketError::NotFound`] for an unknown lease; audit and store errors.
    pub async fn lease_certificate(&self, lease_id: &str) -> Result<LeaseCertificate, MarketError> {
        let rec = self
            .inner
            .leases
            .get(lease_id)?
            .ok_or_else(|| MarketError::NotFound(format!("no lease {lease_id}")))?;
        let offer = self.signed_offer(&rec.lease.offer_id)?;
        if offer.is_none() {
            tracing::warn!(
                lease_id,
                "the lease's offer is no longer known; certificate without it"
            );
        }
        build_certificate(&self.inner.audit, &rec.signed, offer.as_ref())
            .await
            .map_err(|e| match e {
                crate::audit::certificate::CertificateError::Audit(a) => MarketError::Audit(a),
                other => MarketError::Invalid(other.to_string()),
            })
    }
}
