//! The payer's checks and the payment itself: nothing is paid unless every invoice check and
//! every spending limit passes, the intent is durable before any money moves, and no payment
//! hash is ever paid twice, across crashes too.
//!
//! A payment record moves `attempting → succeeded | failed`. A record left `attempting` by a
//! crash (or by an answer that did not say how the payment ended) is resolved by asking the
//! node ([`LightningNode::track_payment`]) — never by paying again. A `succeeded` record whose
//! lease has not been received yet is completed by asking the provider for it
//! ([`Renter::complete_payment`]) until it answers.

use super::*;
use crate::lightning::invoice::CheckedInvoice;
use crate::lightning::{LightningError, PaymentStatus};
use crate::market::limits;
use tokio::sync::OwnedMutexGuard;

/// Where a payment stands, as the payer records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum PayState {
    /// The intent is recorded; the outcome is not known yet.
    Attempting,
    /// Paid; the preimage is known.
    Succeeded,
    /// The node reported a final failure (or never started the payment).
    Failed,
    /// An invoice handed out for payment from another wallet (`add-credit --manual`); this
    /// node never pays it.
    Manual,
}

/// One payment as the payer records it, keyed by payment hash; a hash in this table is never
/// paid again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct PaymentRecord {
    pub(super) request_id: String,
    pub(super) lease_id: String,
    pub(super) provider: String,
    pub(super) amount_sat: Sats,
    pub(super) state: PayState,
    pub(super) preimage: Option<String>,
    pub(super) reason: Option<String>,
    pub(super) at: u64,
    /// What the invoice committed to: enough to finish the rental or top-up after a restart.
    #[serde(default)]
    pub(super) commitment: Option<InvoiceCommitment>,
    /// LN node the invoice was checked against (the offer's).
    #[serde(default)]
    pub(super) payee: String,
    /// Routing fee limit the payment was started with.
    #[serde(default)]
    pub(super) fee_limit_msat: u64,
    /// Routing fee actually paid.
    #[serde(default)]
    pub(super) fee_msat: u64,
    /// Credit the lease held (per the provider's last signed lease) when a top-up was paid; the
    /// re-issued lease must hold at least this plus the top-up.
    #[serde(default)]
    pub(super) credit_before: Sats,
    /// The lease this payment bought (or extended) has been received and applied.
    #[serde(default)]
    pub(super) completed: bool,
    /// Made by AutoPay rather than by a command.
    #[serde(default)]
    pub(super) autopay: bool,
}

/// How a payment is to be made.
pub(super) struct PayPlan<'a> {
    pub(super) pay: &'a PayInvoice,
    pub(super) commitment: &'a InvoiceCommitment,
    /// The LN node the invoice must be signed by.
    pub(super) payee: &'a str,
    /// Credit on the lease before a top-up (0 for an activation).
    pub(super) credit_before: Sats,
    pub(super) autopay: bool,
}

/// A payment of ours whose lease has not arrived yet: paid (or possibly paid, its outcome
/// still being tracked with our node) and not completed. While one is open for a provider,
/// nothing more is paid to that provider, so the most a provider that never delivers can take
/// is one invoice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenPayment {
    /// Payment hash, hex.
    pub payment_hash: String,
    /// Provider PeerId.
    pub provider: String,
    /// Lease the payment is for.
    pub lease_id: String,
    /// Amount paid, sat.
    pub amount_sat: Sats,
    /// `activation` or `topup`.
    pub purpose: String,
    /// True when our node reported the payment succeeded; false while its outcome is still
    /// being tracked.
    pub paid: bool,
    /// When the payment was started, unix seconds.
    pub since: u64,
    /// How long it has waited, seconds.
    pub age_secs: u64,
    /// What the renter can do, as a sentence.
    pub advice: String,
}

impl OpenPayment {
    /// One line naming the payment, its age and what to do.
    pub fn describe(&self) -> String {
        format!(
            "{} payment {} of {} sat to provider {} ({}) has waited {}s for its lease; {}",
            self.purpose,
            self.payment_hash,
            self.amount_sat,
            self.provider,
            if self.paid {
                "paid"
            } else {
                "outcome being tracked"
            },
            self.age_secs,
            self.advice
        )
    }
}

/// Whether a payment record still waits for what it paid for.
fn is_open(rec: &PaymentRecord) -> bool {
    match rec.state {
        PayState::Attempting => true,
        PayState::Succeeded => !rec.completed,
        PayState::Failed | PayState::Manual => false,
    }
}

impl Renter {
    /// Payments of ours whose lease has not arrived yet, oldest first (see [`OpenPayment`]).
    ///
    /// # Errors
    /// When the payments cannot be read.
    pub fn open_payments(&self) -> Result<Vec<OpenPayment>, MarketError> {
        let now = self.now();
        let mut open: Vec<OpenPayment> = self
            .inner
            .payments
            .all()?
            .into_iter()
            .filter(|(_, rec)| is_open(rec))
            .map(|(hash, rec)| {
                let paid = rec.state == PayState::Succeeded;
                let advice = if paid {
                    "the daemon keeps asking the provider for the lease; until it arrives \
                     nothing more is paid to this provider (rent, add-credit and AutoPay are \
                     refused) and `rent --auto` picks another one. If it never arrives, this \
                     invoice is all that is lost; keep the payment hash and preimage (audit log) \
                     as proof of payment"
                } else {
                    "the payment's outcome is being tracked with the Lightning node; if it \
                     failed, it is resolved on the next pass. Until then nothing more is paid \
                     to this provider and `rent --auto` picks another one"
                };
                OpenPayment {
                    purpose: rec
                        .commitment
                        .as_ref()
                        .map(|c| c.purpose.clone())
                        .unwrap_or_default(),
                    payment_hash: hash,
                    provider: rec.provider,
                    lease_id: rec.lease_id,
                    amount_sat: rec.amount_sat,
                    paid,
                    since: rec.at,
                    age_secs: now.saturating_sub(rec.at),
                    advice: advice.to_owned(),
                }
            })
            .collect();
        open.sort_by_key(|p| p.since);
        Ok(open)
    }

    /// The oldest open payment to `provider`, if any.
    pub(super) fn open_payment_to(
        &self,
        provider: &str,
    ) -> Result<Option<OpenPayment>, MarketError> {
        Ok(self
            .open_payments()?
            .into_iter()
            .find(|p| p.provider == provider))
    }

    /// Whether `provider` may be paid now as far as undelivered payments go; `rent --auto`
    /// skips those that may not (logged, not audited: nothing was asked of them).
    pub(super) fn payable(&self, provider: &str) -> bool {
        match self.open_payment_to(provider) {
            Ok(None) => true,
            Ok(Some(open)) => {
                tracing::info!(provider, open_payment_hash = %open.payment_hash,
                    age_secs = open.age_secs,
                    "skipping a provider that has not delivered an earlier payment's lease");
                false
            }
            Err(e) => {
                tracing::warn!(provider, error = %e, "cannot read payments; skipping the provider");
                false
            }
        }
    }

    /// Refuses any payment to `provider` while one of ours to it waits for its lease: the
    /// refusal is audited (`payment_refused`, reason `undelivered_payment`) and logged, and
    /// nothing is paid. Called before asking for an invoice and again, under the provider's
    /// lock, right before a payment hash is claimed.
    pub(super) async fn refuse_if_undelivered(
        &self,
        provider: &str,
        lease_id: &str,
        amount_sat: Sats,
    ) -> Result<(), MarketError> {
        let Some(open) = self.open_payment_to(provider)? else {
            return Ok(());
        };
        self.audit(
            AuditKind::PaymentRefused,
            json!({"reason": "undelivered_payment", "provider": provider,
                   "lease_id": lease_id, "amount_sat": amount_sat,
                   "open_payment_hash": open.payment_hash,
                   "open_amount_sat": open.amount_sat, "open_since": open.since,
                   "open_age_secs": open.age_secs}),
        )
        .await;
        tracing::warn!(provider, open_payment_hash = %open.payment_hash,
            age_secs = open.age_secs, "payment refused: an earlier payment to this provider has \
            not delivered its lease; nothing paid");
        Err(MarketError::UndeliveredPayment(format!(
            "nothing more is paid to this provider until an earlier payment is resolved: {}",
            open.describe()
        )))
    }

    /// Runs every payer-side check on `pay` against what we agreed; on a refusal the reason is
    /// audited and logged, and nothing is recorded as a payment.
    pub(super) async fn check_pay_invoice(
        &self,
        pay: &PayInvoice,
        commitment: &InvoiceCommitment,
        payee: &str,
    ) -> Result<CheckedInvoice, MarketError> {
        let i = &self.inner;
        let expect = InvoiceExpectation {
            network: i.network.clone(),
            amount_msat: commitment.amount_sat * 1000,
            payee_pubkey: payee.to_owned(),
            description_hash: commitment.description_hash(),
            min_expiry_left_secs: i.cfg.min_invoice_expiry_secs,
            now_unix: self.now(),
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
            })
            .and_then(|c| {
                let hash = hex::encode(c.payment_hash);
                match i.payments.get(&hash) {
                    Ok(None) => Ok(c),
                    Ok(Some(prev)) => Err(format!(
                        "payment hash {hash} already seen here ({:?}); never paying twice",
                        prev.state
                    )),
                    Err(e) => Err(format!("cannot check the payment hash: {e}")),
                }
            });
        match checked {
            Ok(c) => Ok(c),
            Err(reason) => Err(self.reject_invoice(pay, commitment, reason).await),
        }
    }

    /// Audits and logs a refused invoice; returns the error for the caller.
    async fn reject_invoice(
        &self,
        pay: &PayInvoice,
        commitment: &InvoiceCommitment,
        reason: String,
    ) -> MarketError {
        self.audit(
            AuditKind::InvoiceRejected,
            json!({"provider": commitment.provider, "request_id": pay.request_id,
                   "lease_id": pay.lease_id, "reason": reason}),
        )
        .await;
        tracing::warn!(provider = %commitment.provider, %reason, "invoice refused; nothing paid");
        MarketError::InvoiceRejected(reason)
    }

    /// The routing fee limit for paying `amount_sat`: the configured absolute and ppm limits,
    /// lowered further by a `maxRoutingFee` spending limit that applies to this payment.
    fn fee_limit_msat(&self, amount_sat: Sats, provider: &str, lease_id: &str) -> u64 {
        let i = &self.inner;
        let amount_msat = amount_sat.saturating_mul(1000);
        let mut limit = i.fee_limit_sat.saturating_mul(1000);
        if i.fee_limit_ppm > 0 {
            let ppm = (u128::from(amount_msat) * u128::from(i.fee_limit_ppm)).div_ceil(1_000_000);
            limit = limit.min(u64::try_from(ppm).unwrap_or(u64::MAX));
        }
        if let Some(cap) = limits::effective_routing_fee_cap(&i.cfg.limits, provider, lease_id) {
            limit = limit.min(cap.saturating_mul(1000));
        }
        limit
    }

    /// Refuses the payment when a spending limit, read from our own audit log, says no.
    async fn check_limits(
        &self,
        amount_sat: Sats,
        fee_limit_msat: u64,
        provider: &str,
        lease_id: &str,
    ) -> Result<(), MarketError> {
        let i = &self.inner;
        let history = i
            .payment_index
            .history(&i.audit)
            .map_err(|e| MarketError::Store(format!("cannot read payment history: {e}")))?;
        let proposed = limits::Proposed {
            now: self.now(),
            amount_sat,
            fee_limit_sat: fee_limit_msat.div_ceil(1000),
            provider: provider.to_owned(),
            lease_id: lease_id.to_owned(),
        };
        let Err(r) = limits::check(&i.cfg.limits, &history, &proposed) else {
            return Ok(());
        };
        self.audit(
            AuditKind::PaymentRefused,
            json!({"limit": r.limit, "scope": r.scope, "detail": r.detail,
                   "next_allowed_at": r.next_allowed_at, "provider": provider,
                   "lease_id": lease_id, "amount_sat": amount_sat}),
        )
        .await;
        tracing::warn!(limit = r.limit, scope = %r.scope, next_allowed_at = ?r.next_allowed_at,
            "{r}; nothing paid");
        Err(MarketError::LimitExceeded(r.to_string()))
    }

    /// Checks an invoice and the spending limits, records the intent durably, then pays it
    /// exactly once. Returns the payment hash once the node reports the payment succeeded,
    /// with the payment's lock: the caller completes it (fetches the lease) while holding it,
    /// so recovery never works on the same payment at the same time.
    ///
    /// # Errors
    /// [`MarketError::InvoiceRejected`] / [`MarketError::LimitExceeded`] before any money
    /// moved; [`MarketError::Lightning`] when the node reports a final failure;
    /// [`MarketError::AwaitingLease`] when the outcome is not known yet (it is tracked later).
    pub(super) async fn pay_checked(
        &self,
        plan: PayPlan<'_>,
    ) -> Result<([u8; 32], OwnedMutexGuard<()>), MarketError> {
        let i = &self.inner;
        let PayPlan {
            pay,
            commitment,
            payee,
            credit_before,
            autopay,
        } = plan;
        let provider = commitment.provider.as_str();
        let hash_bytes = self
            .check_pay_invoice(pay, commitment, payee)
            .await?
            .payment_hash;
        let hash = hex::encode(hash_bytes);
        let fee_limit_msat = self.fee_limit_msat(commitment.amount_sat, provider, &pay.lease_id);
        self.check_limits(
            commitment.amount_sat,
            fee_limit_msat,
            provider,
            &pay.lease_id,
        )
        .await?;
        // One payment at a time per provider from the check to the claim: of two payments racing
        // to one provider, the second sees the first as open and is refused.
        let _provider = i.pay_locks.lock(&format!("provider:{provider}")).await;
        if i.payments.get(&hash)?.is_some() {
            // The same invoice, claimed by a racing payer meanwhile: the precise reason.
            let reason = format!("payment hash {hash} already seen here; never paying twice");
            return Err(self.reject_invoice(pay, commitment, reason).await);
        }
        self.refuse_if_undelivered(provider, &pay.lease_id, commitment.amount_sat)
            .await?;
        let paying = i.pay_locks.lock(&hash).await;
        let mut record = PaymentRecord {
            request_id: pay.request_id.clone(),
            lease_id: pay.lease_id.clone(),
            provider: provider.to_owned(),
            amount_sat: commitment.amount_sat,
            state: PayState::Attempting,
            preimage: None,
            reason: None,
            at: self.now(),
            commitment: Some(commitment.clone()),
            payee: payee.to_owned(),
            fee_limit_msat,
            fee_msat: 0,
            credit_before,
            completed: false,
            autopay,
        };
        // The intent is durable (table and audit log) before any money moves. The hash is
        // claimed by compare-and-swap: of two payers racing for one invoice, one pays.
        if !i
            .payments
            .compare_and_swap(&hash, None, Some(&record))
            .await?
        {
            let reason = format!("payment hash {hash} already seen here; never paying twice");
            return Err(self.reject_invoice(pay, commitment, reason).await);
        }
        i.audit
            .append_async(
                AuditKind::PaymentAttempt,
                &json!({"payment_hash": hash, "amount_sat": commitment.amount_sat,
                        "provider": provider, "request_id": pay.request_id,
                        "lease_id": pay.lease_id, "purpose": commitment.purpose,
                        "fee_limit_msat": fee_limit_msat, "autopay": autopay}),
            )
            .await?;
        let outcome =
            i.ln.pay_invoice(PayRequest {
                bolt11: pay.bolt11.clone(),
                fee_limit_msat,
                timeout_secs: i32::try_from(i.payment_timeout_secs.max(1)).unwrap_or(i32::MAX),
            })
            .await;
        let status = match outcome {
            Ok(o) => PaymentStatus::Succeeded(o),
            Err(LightningError::PaymentFailed { reason }) => PaymentStatus::Failed { reason },
            Err(e) => {
                // The node did not tell us how the payment ended (lost connection, our own
                // timeout, "already paid"...). Ask it; never pay again to find out.
                tracing::warn!(payment_hash = %hash, error = %e, "payment outcome unclear; tracking it");
                match i.ln.track_payment(hash_bytes).await {
                    Ok(Some(s)) => s,
                    Ok(None) => PaymentStatus::Failed {
                        reason: format!("the node never started the payment: {e}"),
                    },
                    Err(te) => {
                        tracing::warn!(payment_hash = %hash, error = %te, "cannot track the payment now");
                        PaymentStatus::InFlight
                    }
                }
            }
        };
        self.record_outcome(&hash, &mut record, status).await?;
        match record.state {
            PayState::Succeeded => Ok((hash_bytes, paying)),
            PayState::Failed => Err(MarketError::Lightning(LightningError::PaymentFailed {
                reason: record.reason.unwrap_or_default(),
            })),
            _ => Err(MarketError::AwaitingLease(format!(
                "payment {hash} is still in flight; it is tracked with the node and the lease \
                 is fetched once it completes"
            ))),
        }
    }

    /// Stores and audits what the node says of a payment. In-flight changes nothing.
    async fn record_outcome(
        &self,
        hash: &str,
        record: &mut PaymentRecord,
        status: PaymentStatus,
    ) -> Result<(), MarketError> {
        match status {
            PaymentStatus::InFlight => return Ok(()),
            PaymentStatus::Succeeded(o) => {
                record.state = PayState::Succeeded;
                record.preimage = Some(hex::encode(o.preimage));
                record.fee_msat = o.fee_msat;
                self.inner.payments.put(hash, record).await?;
                self.audit(
                    AuditKind::PaymentSucceeded,
                    json!({"payment_hash": hash, "amount_msat": o.amount_msat,
                           "fee_msat": o.fee_msat, "provider": record.provider,
                           "lease_id": record.lease_id}),
                )
                .await;
                tracing::info!(payment_hash = %hash, amount_sat = record.amount_sat, fee_msat = o.fee_msat, "payment succeeded");
            }
            PaymentStatus::Failed { reason } => {
                record.state = PayState::Failed;
                record.reason = Some(reason.clone());
                self.inner.payments.put(hash, record).await?;
                self.audit(
                    AuditKind::PaymentFailed,
                    json!({"payment_hash": hash, "reason": reason, "provider": record.provider,
                           "lease_id": record.lease_id}),
                )
                .await;
                tracing::warn!(payment_hash = %hash, %reason, "payment failed");
            }
        }
        Ok(())
    }

    /// Resolves what a crash or an unclear answer left open: payments still `attempting` are
    /// looked up with the node (never paid again), and paid payments whose lease has not been
    /// received are completed with the provider. Called at start and from every tick. A
    /// payment being made or completed right now is left to that operation.
    ///
    /// # Errors
    /// Only when the payments cannot be read; a failing payment is logged and audited and the
    /// pass goes on with the others.
    pub async fn recover_payments(&self) -> Result<(), MarketError> {
        for (hash, _) in self.inner.payments.all()? {
            let Some(_paying) = self.inner.pay_locks.try_lock(&hash) else {
                continue;
            };
            if let Err(e) = self.recover_one(&hash).await {
                self.item_failed("payment recovery", "payment_hash", &hash, &e)
                    .await;
            }
        }
        Ok(())
    }

    /// One payment of [`Renter::recover_payments`]; the caller holds its lock.
    async fn recover_one(&self, hash: &str) -> Result<(), MarketError> {
        let Some(mut rec) = self.inner.payments.get(hash)? else {
            return Ok(());
        };
        if rec.state == PayState::Attempting {
            let Some(bytes) = hex::decode(hash)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            else {
                return Ok(());
            };
            match self.inner.ln.track_payment(bytes).await {
                Ok(Some(status)) => self.record_outcome(hash, &mut rec, status).await?,
                Ok(None) => {
                    self.record_outcome(
                        hash,
                        &mut rec,
                        PaymentStatus::Failed {
                            reason: "the node has no payment for this hash: the daemon stopped \
                                     before the payment started"
                                .into(),
                        },
                    )
                    .await?
                }
                Err(e) => {
                    tracing::warn!(payment_hash = %hash, error = %e, "cannot track payment; will retry");
                    return Ok(());
                }
            }
        }
        let open = match rec.state {
            PayState::Succeeded => true,
            // A manual invoice is watched until it is paid or has expired.
            PayState::Manual => rec.at + MANUAL_WATCH_SECS > self.now(),
            _ => false,
        };
        if !open || rec.completed || rec.commitment.is_none() {
            return Ok(());
        }
        if rec.state == PayState::Manual {
            // Cheap question first: does the provider's signed lease show the credit yet?
            let paid = match self.provider_credit(&rec.lease_id).await {
                Ok(credit) => credit >= rec.credit_before + rec.amount_sat,
                Err(e) => {
                    tracing::debug!(payment_hash = %hash, error = %e, "manual invoice status unknown");
                    false
                }
            };
            if !paid {
                return Ok(());
            }
        }
        // One round trip per pass: the next pass tries again.
        match self.complete_payment_locked(hash, 1).await {
            Ok(r) => {
                tracing::info!(lease_id = %r.lease.lease_id, payment_hash = %hash, "completed a payment left open")
            }
            Err(e) => {
                tracing::debug!(payment_hash = %hash, error = %e, "payment not completed yet")
            }
        }
        Ok(())
    }
}

/// How long an unpaid manual invoice is watched for its payment.
pub(super) const MANUAL_WATCH_SECS: u64 = 3_600;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lightning::InvoiceRequest;
    use crate::lightning::testing::MemNetwork;
    use crate::tunnel::file::FileTunnel;
    use crate::wire::PURPOSE_TOPUP;

    /// No network: these tests call the payment code directly.
    struct NoPeers;

    #[async_trait::async_trait]
    impl Peers for NoPeers {
        async fn find_providers(&self) -> Result<Vec<PeerId>, MarketError> {
            Ok(Vec::new())
        }
        async fn request(
            &self,
            _peer: PeerId,
            _msg: Message,
        ) -> Result<(Message, Duration), MarketError> {
            Err(MarketError::Net("no network in this test".into()))
        }
    }

    fn renter(dir: &Path, net: &MemNetwork, ppm: u64, cfg: RenterConfig) -> (Renter, AuditLog) {
        let db = sled::open(dir.join("db")).unwrap();
        let key = SigningKey::from_bytes(&[5; 32]);
        let audit = AuditLog::open(&db, key.clone()).unwrap();
        let r = Renter::new(RenterParams {
            key,
            cfg,
            network: "regtest".into(),
            fee_limit_sat: 10,
            fee_limit_ppm: ppm,
            payment_timeout_secs: 30,
            wg_private: WgKey([3; 32]),
            wg_public: WgKey([4; 32]),
            iface: "lwt0".into(),
            keepalive: 25,
            conf_dir: dir.join("wireguard"),
            etc_wireguard: None,
            ln: Arc::new(net.node("renter").unwrap()),
            tunnel: Arc::new(FileTunnel::new(dir.join("tunnel")).unwrap()),
            audit: audit.clone(),
            peers: Arc::new(NoPeers),
            db,
        })
        .unwrap();
        (r, audit)
    }

    fn commitment(renter: &Renter) -> InvoiceCommitment {
        InvoiceCommitment {
            purpose: PURPOSE_TOPUP.into(),
            request_id: "req-1".into(),
            provider: "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into(),
            renter: renter.peer_id().to_string(),
            offer_id: "offer-1".into(),
            lease_id: Some("lease-1".into()),
            terms: crate::config::ProviderConfig::default().terms,
            credit_sat: 500,
            amount_sat: 500,
            ipv4_prefix_len: None,
            ipv6_prefix_len: None,
            renter_wg_pubkey: WgKey([4; 32]),
        }
    }

    #[tokio::test]
    async fn a_payment_hash_is_never_paid_twice() {
        let dir = tempfile::tempdir().unwrap();
        let net = MemNetwork::new(&[("renter".into(), 100_000), ("provider".into(), 0)]).unwrap();
        let (r, audit) = renter(dir.path(), &net, 0, RenterConfig::default());
        let c = commitment(&r);
        let provider = net.node("provider").unwrap();
        let inv = provider
            .add_invoice(InvoiceRequest {
                amount_msat: 500_000,
                description_hash: c.description_hash(),
                expiry_secs: 600,
            })
            .await
            .unwrap();
        let pay = PayInvoice {
            request_id: c.request_id.clone(),
            lease_id: "lease-1".into(),
            bolt11: inv.bolt11,
            amount_sat: 500,
        };
        let payee = net.pubkey("provider").unwrap();
        let plan = || PayPlan {
            pay: &pay,
            commitment: &c,
            payee: &payee,
            credit_before: 0,
            autopay: false,
        };
        drop(r.pay_checked(plan()).await.unwrap());
        assert_eq!(net.balance_msat("renter"), Some(100_000_000 - 500_000));

        // The very same invoice again, for the very same request: refused before paying.
        let err = r.pay_checked(plan()).await.unwrap_err();
        assert!(
            matches!(&err, MarketError::InvoiceRejected(m) if m.contains("never paying twice")),
            "{err}"
        );
        assert_eq!(net.balance_msat("renter"), Some(100_000_000 - 500_000));
        let kinds: Vec<String> = audit.entries(0).map(|e| e.unwrap().kind).collect();
        assert_eq!(
            kinds.iter().filter(|k| *k == "payment_attempt").count(),
            1,
            "{kinds:?}"
        );
        assert_eq!(kinds.last().map(String::as_str), Some("invoice_rejected"));
    }

    #[tokio::test]
    async fn two_payers_racing_for_one_invoice_pay_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let net = MemNetwork::new(&[("renter".into(), 100_000), ("provider".into(), 0)]).unwrap();
        let (r, audit) = renter(dir.path(), &net, 0, RenterConfig::default());
        let c = commitment(&r);
        let inv = net
            .node("provider")
            .unwrap()
            .add_invoice(InvoiceRequest {
                amount_msat: 500_000,
                description_hash: c.description_hash(),
                expiry_secs: 600,
            })
            .await
            .unwrap();
        let pay = PayInvoice {
            request_id: c.request_id.clone(),
            lease_id: "lease-1".into(),
            bolt11: inv.bolt11,
            amount_sat: 500,
        };
        let payee = net.pubkey("provider").unwrap();
        let attempt = || async {
            r.pay_checked(PayPlan {
                pay: &pay,
                commitment: &c,
                payee: &payee,
                credit_before: 0,
                autopay: false,
            })
            .await
            // The payment's lock goes with the result; the caller is done with it here.
            .map(|(hash, _paying)| hash)
        };
        let (a, b) = tokio::join!(attempt(), attempt());
        assert_eq!(
            usize::from(a.is_ok()) + usize::from(b.is_ok()),
            1,
            "{a:?} {b:?}"
        );
        let refused = a.err().or(b.err()).unwrap();
        assert!(
            matches!(&refused, MarketError::InvoiceRejected(m) if m.contains("never paying twice")),
            "{refused}"
        );
        assert_eq!(net.balance_msat("renter"), Some(100_000_000 - 500_000));
        let kinds: Vec<String> = audit.entries(0).map(|e| e.unwrap().kind).collect();
        assert_eq!(
            kinds.iter().filter(|k| *k == "payment_attempt").count(),
            1,
            "{kinds:?}"
        );
    }

    #[tokio::test]
    async fn fee_limit_is_the_lowest_of_absolute_ppm_and_max_routing_fee() {
        let dir = tempfile::tempdir().unwrap();
        let net = MemNetwork::new(&[("renter".into(), 1), ("provider".into(), 0)]).unwrap();
        let (r, _) = renter(dir.path(), &net, 0, RenterConfig::default());
        // 10 sat absolute, no ppm, no spending limit.
        assert_eq!(r.fee_limit_msat(100_000, "p", "l"), 10_000);
        drop(r);
        // 1% of 500 sat = 5 sat, below the 10 sat absolute limit.
        let dir = tempfile::tempdir().unwrap();
        let (r, _) = renter(dir.path(), &net, 10_000, RenterConfig::default());
        assert_eq!(r.fee_limit_msat(500, "p", "l"), 5_000);
        assert_eq!(r.fee_limit_msat(100_000, "p", "l"), 10_000);
        drop(r);
        // maxRoutingFee = 2 sat for one provider only.
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config::from_toml(
            "[renter.limits.provider.\"12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN\"]\n\
             max_routing_fee = 2\n",
        )
        .unwrap()
        .renter;
        let (r, _) = renter(dir.path(), &net, 10_000, cfg);
        let capped = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        assert_eq!(r.fee_limit_msat(100_000, capped, "l"), 2_000);
        assert_eq!(r.fee_limit_msat(100_000, "other", "l"), 10_000);
    }

    #[tokio::test]
    async fn two_invoices_racing_to_one_provider_pay_one_and_the_other_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let net = MemNetwork::new(&[("renter".into(), 100_000), ("provider".into(), 0)]).unwrap();
        let (r, audit) = renter(dir.path(), &net, 0, RenterConfig::default());
        let payee = net.pubkey("provider").unwrap();
        // Two requests (two different invoices) to the same provider.
        let mut plans = Vec::new();
        for n in 1..=2 {
            let mut c = commitment(&r);
            c.request_id = format!("req-{n}");
            let inv = net
                .node("provider")
                .unwrap()
                .add_invoice(InvoiceRequest {
                    amount_msat: 500_000,
                    description_hash: c.description_hash(),
                    expiry_secs: 600,
                })
                .await
                .unwrap();
            let pay = PayInvoice {
                request_id: c.request_id.clone(),
                lease_id: "lease-1".into(),
                bolt11: inv.bolt11,
                amount_sat: 500,
            };
            plans.push((pay, c));
        }
        let attempt = |i: usize| {
            let (pay, c) = &plans[i];
            let payee = payee.as_str();
            let r = r.clone();
            async move {
                r.pay_checked(PayPlan {
                    pay,
                    commitment: c,
                    payee,
                    credit_before: 0,
                    autopay: false,
                })
                .await
                .map(|(hash, _paying)| hash)
            }
        };
        // The first is paid, and its lease never comes (no network here): it stays open.
        let (a, b) = tokio::join!(attempt(0), attempt(1));
        assert_eq!(
            usize::from(a.is_ok()) + usize::from(b.is_ok()),
            1,
            "{a:?} {b:?}"
        );
        let refused = a.err().or(b.err()).unwrap();
        assert!(
            matches!(&refused, MarketError::UndeliveredPayment(m) if m.contains("500 sat")),
            "{refused}"
        );
        assert_eq!(net.balance_msat("renter"), Some(100_000_000 - 500_000));
        let open = r.open_payments().unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].provider, commitment(&r).provider);
        assert!(open[0].paid);
        let refusals: Vec<serde_json::Value> = audit
            .entries(0)
            .map(|e| e.unwrap())
            .filter(|e| e.kind == "payment_refused")
            .map(|e| e.payload_as().unwrap())
            .collect();
        assert_eq!(refusals.len(), 1);
        assert_eq!(refusals[0]["reason"], "undelivered_payment");
        assert_eq!(
            refusals[0]["open_payment_hash"],
            open[0].payment_hash.as_str()
        );
    }
}
