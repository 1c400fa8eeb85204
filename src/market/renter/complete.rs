//! After the money: fetching the lease a payment bought from the provider, verifying it
//! against the commitment the invoice was checked against, and applying it. Works from the
//! stored payment record alone, so a payment made before a crash (or while the provider was
//! down) is completed later exactly like one made a moment ago.

use super::payment::{PayState, PaymentRecord};
use super::*;

impl Renter {
    /// Fetches, verifies and applies the lease bought by payment `hash`; marks the payment
    /// completed. For a manual invoice it also learns from the provider whether it was paid.
    /// `attempts` bounds the `paymentResult` round trips (each may wait for the provider's
    /// settlement check), so background passes stay short.
    ///
    /// # Errors
    /// [`MarketError::Refused`] with `NotSettled` while the provider does not see the invoice
    /// paid; network errors while it is unreachable; [`MarketError::BadSigned`] when what it
    /// sends does not match what was paid for.
    pub(super) async fn complete_payment(
        &self,
        hash: &str,
        attempts: u32,
    ) -> Result<Rental, MarketError> {
        let _paying = self.inner.pay_locks.lock(hash).await;
        self.complete_payment_locked(hash, attempts).await
    }

    /// [`Renter::complete_payment`] for a caller that holds the payment's lock: it is what
    /// makes the lease applied (and counted) once per payment.
    pub(super) async fn complete_payment_locked(
        &self,
        hash: &str,
        attempts: u32,
    ) -> Result<Rental, MarketError> {
        let i = &self.inner;
        let mut rec = i
            .payments
            .get(hash)?
            .ok_or_else(|| MarketError::NotFound(format!("payment {hash}")))?;
        let c = rec
            .commitment
            .clone()
            .ok_or_else(|| MarketError::Store(format!("payment {hash} has no commitment")))?;
        if rec.completed {
            return self.rental(&rec.lease_id);
        }
        if !matches!(rec.state, PayState::Succeeded | PayState::Manual) {
            return Err(MarketError::Invalid(format!(
                "payment {hash} is {:?}, not paid",
                rec.state
            )));
        }
        let peer: PeerId = c
            .provider
            .parse()
            .map_err(|_| MarketError::Store("bad provider id".into()))?;
        let signed = self
            .fetch_lease(
                peer,
                &rec.request_id,
                hash,
                rec.preimage.as_deref().unwrap_or(""),
                attempts,
            )
            .await?;
        let rental = if c.purpose == PURPOSE_TOPUP {
            self.apply_topup(peer, &signed, &rec, &c).await?
        } else {
            self.apply_activation(peer, &signed, &rec, &c).await?
        };
        rec.completed = true;
        i.payments.put(hash, &rec).await?;
        Ok(rental)
    }

    async fn apply_activation(
        &self,
        peer: PeerId,
        signed: &Signed<Lease>,
        rec: &PaymentRecord,
        c: &InvoiceCommitment,
    ) -> Result<Rental, MarketError> {
        let i = &self.inner;
        let lease = self
            .check_lease(peer, signed, &rec.lease_id, |l| {
                if l.renter_wg_pubkey != c.renter_wg_pubkey || l.offer_id != c.offer_id {
                    return Err("lease is not for our key and offer".into());
                }
                if l.credit_sat < c.credit_sat || l.terms != c.terms {
                    return Err(format!(
                        "lease credit {} or terms differ from the {} sat paid",
                        l.credit_sat, c.credit_sat
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
                if !len_ok(&l.ipv4, c.ipv4_prefix_len) || !len_ok(&l.ipv6, c.ipv6_prefix_len) {
                    return Err("lease prefixes differ from the request".into());
                }
                Ok(())
            })
            .await?;
        self.audit(
            AuditKind::LeaseReceived,
            json!({"lease_id": lease.lease_id, "provider": c.provider,
            "ipv4": lease.ipv4, "ipv6": lease.ipv6, "paid_until": lease.paid_until}),
        )
        .await;
        if let Some(r) = i.rentals.get(&lease.lease_id)? {
            // Applied before a crash that came before the payment was marked completed.
            return Ok(r);
        }
        let state = lease::next(
            None,
            Event::Issue {
                paid_until: lease.paid_until,
            },
            self.now(),
        )?
        .state;
        let claim = self.claim_iface()?;
        let iface = claim.name.clone();
        // Leases from before per-lease keys were made with the node's key.
        let key_id = (lease.renter_wg_pubkey != i.wg_public).then(|| rec.request_id.clone());
        let conf_path = self.apply_tunnel(&lease, &iface, key_id.as_deref()).await?;
        let rental = Rental {
            lease: lease.clone(),
            signed: signed.clone(),
            state,
            paid_sat: c.amount_sat,
            iface: iface.clone(),
            conf_path: conf_path.clone(),
            provider_ln_pubkey: rec.payee.clone(),
            autopay: i.cfg.autopay.enabled,
            stats: RentalStats {
                payments: 1,
                ..RentalStats::default()
            },
            wg_key_id: key_id,
            lease_end: None,
            end_unsent: false,
            termination: None,
            health: LeaseHealth::default(),
            failover: None,
            failed_over_from: None,
            failover_note: None,
            refund: RenterRefund::default(),
        };
        i.rentals.put(&lease.lease_id, &rental).await?;
        drop(claim);
        self.audit(
            AuditKind::LeaseApplied,
            json!({"lease_id": lease.lease_id, "iface": iface,
            "conf": conf_path.display().to_string(), "backend": i.tunnel.kind()}),
        )
        .await;
        self.note_delivered(&c.provider, false).await;
        tracing::info!(lease_id = %lease.lease_id, ipv4 = ?lease.ipv4, ipv6 = ?lease.ipv6, "lease applied");
        Ok(rental)
    }

    async fn apply_topup(
        &self,
        peer: PeerId,
        signed: &Signed<Lease>,
        rec: &PaymentRecord,
        c: &InvoiceCommitment,
    ) -> Result<Rental, MarketError> {
        let i = &self.inner;
        let old = self.rental(&rec.lease_id)?;
        let lease = self
            .check_lease(peer, signed, &rec.lease_id, |l| {
                // A status refresh may already have brought this revision in, so "newer than
                // what we hold" is not required; holding the credit paid for is.
                if l.revision < old.lease.revision
                    || l.credit_sat < rec.credit_before + c.credit_sat
                {
                    return Err("re-issued lease does not add the credit paid".into());
                }
                if l.ipv4 != old.lease.ipv4
                    || l.ipv6 != old.lease.ipv6
                    || l.renter_wg_pubkey != old.lease.renter_wg_pubkey
                {
                    return Err("re-issued lease changed its prefixes or key".into());
                }
                Ok(())
            })
            .await?;
        let now = self.now();
        let mut reactivated = None;
        // The caller holds this payment's lock, so the counters move once per payment; the
        // update keeps whatever else changed the rental meanwhile (a status refresh, AutoPay
        // notes).
        let rental = i
            .rentals
            .update(&rec.lease_id, |cur| {
                let mut rental = cur
                    .cloned()
                    .ok_or_else(|| MarketError::NotFound(format!("lease {}", rec.lease_id)))?;
                let t = lease::next(
                    Some(rental.state),
                    Event::Pay {
                        paid_until: lease.paid_until,
                    },
                    now,
                )?;
                // Only a suspended lease that comes back needs its tunnel applied again.
                reactivated = (t.kind == Some(Kind::Reactivated)).then(|| rental.iface.clone());
                rental.state = t.state;
                rental.lease = lease.clone();
                rental.signed = signed.clone();
                rental.paid_sat += c.amount_sat;
                rental.stats.topups += 1;
                if rec.state == PayState::Succeeded {
                    rental.stats.payments += 1;
                }
                if rec.autopay {
                    rental.stats.autopay_topups += 1;
                }
                Ok(Some(rental))
            })
            .await?
            .ok_or_else(|| MarketError::NotFound(format!("lease {}", rec.lease_id)))?;
        if let Some(iface) = reactivated {
            self.apply_tunnel(&rental.lease, &iface, rental.wg_key_id.as_deref())
                .await?;
        }
        // The top-up's lease may carry an endpoint or key the provider moved to meanwhile.
        self.follow_revision(&old.lease, &rental).await?;
        self.audit(
            AuditKind::CreditAdded,
            json!({"lease_id": rec.lease_id, "amount_sat": c.amount_sat,
                   "paid_until": rental.lease.paid_until, "manual": rec.state == PayState::Manual,
                   "autopay": rec.autopay}),
        )
        .await;
        self.note_delivered(&c.provider, true).await;
        tracing::info!(lease_id = %rec.lease_id, amount_sat = c.amount_sat, paid_until = rental.lease.paid_until, "credit added");
        Ok(rental)
    }

    /// The credit of `lease_id` as the provider's signed lease states it now (one status
    /// request; nothing is stored).
    pub(super) async fn provider_credit(&self, lease_id: &str) -> Result<Sats, MarketError> {
        let peer: PeerId = self
            .rental(lease_id)?
            .lease
            .provider
            .parse()
            .map_err(|_| MarketError::Store("bad provider id".into()))?;
        let msg = Message::StatusRequest(StatusRequest {
            lease_id: lease_id.to_owned(),
        });
        match self.ask(peer, msg).await?.0 {
            Message::Status(s) => match s.lease {
                Some(signed) => {
                    let l = self
                        .check_lease(peer, &signed, lease_id, |_| Ok(()))
                        .await?;
                    Ok(l.credit_sat)
                }
                None => Err(MarketError::NotFound(format!(
                    "provider has no lease {lease_id}"
                ))),
            },
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

    /// Sends `paymentResult` and waits for the lease; `NotSettled` answers and network errors
    /// are retried up to `attempts` times in all (the provider's node may see the settlement
    /// a moment after ours).
    pub(super) async fn fetch_lease(
        &self,
        peer: PeerId,
        request_id: &str,
        payment_hash: &str,
        preimage: &str,
        attempts: u32,
    ) -> Result<Signed<Lease>, MarketError> {
        let max = attempts.max(1);
        let msg = Message::PaymentResult(PaymentResult {
            request_id: request_id.to_owned(),
            payment_hash: payment_hash.to_owned(),
            preimage: preimage.to_owned(),
        });
        let mut attempts = 0;
        loop {
            attempts += 1;
            let again = attempts < max;
            match self.ask(peer, msg.clone()).await {
                Ok((Message::Lease(l), _)) => {
                    // The provider signed a receipt for this payment: keep it (and any we
                    // missed). Not fatal: the lease stands without it, and the next payment
                    // fetches the missing ones.
                    if let Ok(lease) = l.verify()
                        && let Err(e) = self.fetch_receipts(peer, &lease.lease_id).await
                    {
                        tracing::warn!(error = %e, request_id, "receipts not fetched");
                    }
                    return Ok(l);
                }
                Ok((Message::Error(e), _)) if e.code == ErrorCode::NotSettled && again => {}
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
                Err(e) if again => {
                    tracing::warn!(error = %e, request_id, "lease fetch failed; retrying")
                }
                Err(e) => return Err(e),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
