//! The payer's checks and the payment itself: nothing is paid unless every check passes,
//! and no payment hash is ever paid twice.

use super::*;

impl Renter {
    /// Checks an invoice against what we agreed, then pays it exactly once.
    pub(super) async fn pay_checked(
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
}
