//! Manual top-ups (`leasewire add-credit --manual`): the provider's invoice is checked like any
//! other, then handed to the user to pay from any wallet. The credit counts once the provider's
//! re-signed lease shows it: the provider keeps the one credit ledger per lease, so manual
//! payments and AutoPay never disagree.

use super::payment::{MANUAL_WATCH_SECS, PayState, PaymentRecord};
use super::*;

/// An invoice for the user to pay by hand.
#[derive(Clone, Debug, Serialize)]
pub struct ManualInvoice {
    /// Lease the credit is for.
    pub lease_id: String,
    /// Hex payment hash; [`Renter::await_manual`] takes it.
    pub payment_hash: String,
    /// The BOLT11 invoice.
    pub bolt11: String,
    /// Amount, sat.
    pub amount_sat: Sats,
    /// Unix time the invoice expires.
    pub expires_at: u64,
}

impl Renter {
    /// Gets a top-up invoice for `lease_id` from its provider and checks it (payee, amount,
    /// description hash, expiry, network, never seen). This node never pays it; the hash is
    /// recorded so it never will.
    ///
    /// # Errors
    /// [`MarketError::InvoiceRejected`] when a check fails; network and refusal errors from
    /// the provider.
    pub async fn manual_invoice(
        &self,
        lease_id: &str,
        amount: Sats,
    ) -> Result<ManualInvoice, MarketError> {
        let id = self.rental(lease_id)?.lease.lease_id;
        let _lease = self.inner.lease_locks.lock(&id).await;
        let rental = self.rental(&id)?;
        let (pay, commitment) = self.request_topup(&rental, amount).await?;
        let checked = self
            .check_pay_invoice(&pay, &commitment, &rental.provider_ln_pubkey)
            .await?;
        let hash = hex::encode(checked.payment_hash);
        let record = PaymentRecord {
            request_id: pay.request_id.clone(),
            lease_id: pay.lease_id.clone(),
            provider: commitment.provider.clone(),
            amount_sat: amount,
            state: PayState::Manual,
            preimage: None,
            reason: None,
            at: self.now(),
            commitment: Some(commitment),
            payee: rental.provider_ln_pubkey.clone(),
            fee_limit_msat: 0,
            fee_msat: 0,
            credit_before: rental.lease.credit_sat,
            completed: false,
            autopay: false,
        };
        // Claimed like a payment: a hash recorded here is never paid by this node.
        if !self
            .inner
            .payments
            .compare_and_swap(&hash, None, Some(&record))
            .await?
        {
            return Err(MarketError::InvoiceRejected(format!(
                "payment hash {hash} already seen here; never paying twice"
            )));
        }
        self.audit(
            AuditKind::ManualInvoice,
            json!({"lease_id": pay.lease_id, "payment_hash": hash, "amount_sat": amount,
                   "request_id": pay.request_id, "expires_at": checked.expires_at}),
        )
        .await;
        tracing::info!(lease_id = %pay.lease_id, payment_hash = %hash, amount_sat = amount, "manual top-up invoice ready");
        Ok(ManualInvoice {
            lease_id: pay.lease_id,
            payment_hash: hash,
            bolt11: pay.bolt11,
            amount_sat: amount,
            expires_at: checked.expires_at,
        })
    }

    /// Waits until the provider's signed lease shows the credit of manual invoice
    /// `payment_hash`, then returns the rental as the provider confirmed it.
    ///
    /// # Errors
    /// [`MarketError::NotFound`] for an unknown hash; [`MarketError::Invalid`] when the wait
    /// timed out (the daemon keeps watching in the background for an hour) or the hash is not
    /// a manual invoice.
    pub async fn await_manual(
        &self,
        payment_hash: &str,
        timeout: Duration,
    ) -> Result<Rental, MarketError> {
        let rec = self
            .inner
            .payments
            .get(payment_hash)?
            .ok_or_else(|| MarketError::NotFound(format!("invoice {payment_hash}")))?;
        if rec.state != PayState::Manual {
            return Err(MarketError::Invalid(format!(
                "{payment_hash} is not a manual invoice"
            )));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let peer: PeerId = rec
            .provider
            .parse()
            .map_err(|_| MarketError::Store("bad provider id".into()))?;
        loop {
            // Ask the provider to look at its node now (it waits a few seconds for the
            // settlement); it answers with the re-signed lease once the invoice is paid.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let nudge = self.fetch_lease(peer, &rec.request_id, payment_hash, "", 1);
            let credited = match tokio::time::timeout(left, nudge).await {
                Ok(Ok(_)) => true,
                Ok(Err(
                    MarketError::Refused {
                        code: ErrorCode::NotSettled,
                        ..
                    }
                    | MarketError::Net(_),
                ))
                | Err(_) => false,
                Ok(Err(e)) => return Err(e),
            };
            if credited {
                let done = self.complete_payment(payment_hash, 1).await;
                let r = match done {
                    Ok(r) => r,
                    // Recovery completed it a moment ago.
                    Err(_)
                        if self
                            .inner
                            .payments
                            .get(payment_hash)?
                            .is_some_and(|p| p.completed) =>
                    {
                        self.rental(&rec.lease_id)?
                    }
                    Err(e) => return Err(e),
                };
                // Record the provider's latest signed status, which is what AutoPay reads.
                return match self.refresh(&rec.lease_id).await {
                    Ok(r) => Ok(r),
                    Err(e) => {
                        tracing::warn!(error = %e, "status refresh failed after a manual top-up");
                        Ok(r)
                    }
                };
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MarketError::Invalid(format!(
                    "invoice {payment_hash} not paid within {}s; the daemon keeps watching it for \
                     {} minutes",
                    timeout.as_secs(),
                    MANUAL_WATCH_SECS / 60
                )));
            }
            // Polls the provider (another process) for a payment made from another wallet.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
