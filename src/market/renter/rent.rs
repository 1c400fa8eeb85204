//! Renting and topping up: request, invoice, payment, lease verification.

use super::payment::PayPlan;
use super::*;

impl Renter {
    /// Rents under `args.offer_id`, or the best offer; returns once the tunnel is configured.
    /// Holds no lock while it waits for offers: top-ups of other leases go on meanwhile.
    /// Buys a further lease from a provider we already lease from without asking (see
    /// [`Renter::rent_confirmed`]).
    pub async fn rent(&self, args: RentArgs) -> Result<Rental, MarketError> {
        self.rent_confirmed(args, true).await
    }

    /// [`Renter::rent`], but unless `second_ok`, an offer from a provider this renter already
    /// holds a lease from (not released) is not bought: [`MarketError::NeedsConfirmation`]
    /// names the provider and the leases held, and nothing is paid.
    pub async fn rent_confirmed(
        &self,
        args: RentArgs,
        second_ok: bool,
    ) -> Result<Rental, MarketError> {
        let credit = args.credit_sat.unwrap_or(self.inner.cfg.default_credit_sat);
        let asked = args.sizes.unwrap_or_else(|| self.inner.cfg.sizes());
        asked
            .validate()
            .map_err(|e| MarketError::Invalid(e.to_string()))?;
        let filters = args
            .filters
            .clone()
            .unwrap_or_else(|| self.inner.cfg.filters());
        let deadline = tokio::time::Instant::now() + args.timeout;
        let mut tally = select::Tally::default();
        loop {
            let candidates: Vec<KnownOffer> = match &args.offer_id {
                // An offer named by the user: no filters, but it must lease the sizes asked.
                Some(id) => {
                    let named: Vec<KnownOffer> = self
                        .offers(Some(credit))
                        .into_iter()
                        .filter(|o| &o.offer_id == id || o.offer_id.starts_with(id.as_str()))
                        .collect();
                    if named.is_empty() {
                        // The provider re-signed it since (what it has free changed): its
                        // current offer, if it sells the same thing at the same price.
                        let current = self.current_for_superseded(id);
                        if let Some(c) = &current {
                            tracing::info!(named = %id, current = %c.offer_id,
                                "offer superseded by one selling the same; renting under that");
                        }
                        current.into_iter().collect()
                    } else {
                        named
                    }
                }
                None => {
                    let (usable, t) = self.usable_offers(Some(credit), asked, &filters);
                    tally = t;
                    usable
                        .into_iter()
                        .filter(|(_, terms)| select::price(terms, credit).is_some())
                        .map(|(o, _)| o)
                        .filter(|o| self.payable(&o.peer))
                        .collect()
                }
            };
            let mut last_err = None;
            for offer in candidates {
                if !second_ok {
                    let held: Vec<Rental> = self
                        .rentals()?
                        .into_iter()
                        .filter(|r| {
                            r.state != LeaseState::Released && r.lease.provider == offer.peer
                        })
                        .collect();
                    if !held.is_empty() {
                        return Err(MarketError::NeedsConfirmation(format!(
                            "offer {} is from provider {}, who already leases to us: {}; \
                             rent again with --yes to buy a second lease from it",
                            offer.offer_id,
                            offer.peer,
                            super::lease_list(&held)
                        )));
                    }
                }
                match self.rent_offer(&offer, credit, asked, None).await {
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
                        None => {
                            let waiting = self.open_payments().map(|p| p.len()).unwrap_or(0);
                            if waiting > 0 {
                                format!(
                                    "no usable offer found before the timeout (providers with a \
                                     payment whose lease has not arrived are skipped: {waiting} \
                                     such payment(s), see `status`)"
                                )
                            } else if tally.seen > tally.left_out.iter().map(|(_, n)| n).sum() {
                                "no usable offer found before the timeout".into()
                            } else {
                                format!(
                                    "no usable offer for {asked} found before the timeout ({tally})"
                                )
                            }
                        }
                    })
                }));
            }
            if let Err(e) = self.discover().await {
                tracing::debug!(error = %e, "discovery failed");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Rents `known` with prefixes of `sizes` (IPv4, IPv6 prefix lengths). For a failover,
    /// `failover_from` names the lease being replaced: the new lease's id is stored in its
    /// failover record before anything is paid, so the decision survives a crash.
    pub(super) async fn rent_offer(
        &self,
        known: &KnownOffer,
        credit: Sats,
        sizes: Sizes,
        failover_from: Option<&str>,
    ) -> Result<Rental, MarketError> {
        let i = &self.inner;
        let peer: PeerId = known
            .peer
            .parse()
            .map_err(|_| MarketError::Invalid("bad peer id".into()))?;
        // The terms of this lease: the offer's, at the rate of the sizes asked. The invoice's
        // commitment must carry exactly these.
        let terms = crate::market::sizes::effective_terms(&known.offer, sizes)
            .map_err(|e| MarketError::NoOffer(format!("offer {}: {e}", known.offer_id)))?;
        let (credit, total) = select::price(&terms, credit)
            .ok_or_else(|| MarketError::NoOffer("offer cannot sell that credit".into()))?;
        // Before the provider reserves anything for us: no second payment to a provider that
        // has not delivered the first.
        self.refuse_if_undelivered(&known.peer, "", total).await?;
        let request_id = random_id();
        // Every lease has its own WireGuard key pair, stored before the provider learns it.
        let wg = self.new_lease_key(&request_id)?;
        let req = RentRequest {
            request_id: request_id.clone(),
            offer_id: known.offer_id.clone(),
            credit_sat: credit,
            ipv4_prefix_len: sizes.ipv4,
            ipv6_prefix_len: sizes.ipv6,
            wg_pubkey: wg.public,
        };
        let pay = self
            .expect_invoice(peer, Message::RentRequest(req.clone()))
            .await?;
        if let Some(old) = failover_from {
            self.failover_buying(old, &pay.lease_id, &known.peer)
                .await?;
        }
        let commitment = InvoiceCommitment {
            purpose: PURPOSE_ACTIVATION.into(),
            request_id: request_id.clone(),
            provider: known.peer.clone(),
            renter: i.peer_id.to_string(),
            offer_id: known.offer_id.clone(),
            lease_id: None,
            terms,
            credit_sat: credit,
            amount_sat: total,
            ipv4_prefix_len: req.ipv4_prefix_len,
            ipv6_prefix_len: req.ipv6_prefix_len,
            renter_wg_pubkey: wg.public,
        };
        let (hash, _paying) = self
            .pay_checked(PayPlan {
                pay: &pay,
                commitment: &commitment,
                payee: &known.offer.ln_pubkey,
                credit_before: 0,
                // A failover is AutoPay's purchase.
                autopay: failover_from.is_some(),
            })
            .await?;
        // Paid: from here on nothing may send the caller to another offer. If the lease does
        // not come now, recovery keeps asking the provider for it.
        self.complete_payment_locked(&hex::encode(hash), 3)
            .await
            .map_err(|e| MarketError::AwaitingLease(format!("lease {}: {e}", pay.lease_id)))
    }

    pub(super) async fn expect_invoice(
        &self,
        peer: PeerId,
        msg: Message,
    ) -> Result<PayInvoice, MarketError> {
        match self.ask(peer, msg).await?.0 {
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

    /// Verifies a signed lease from `peer` for `lease_id` (plus the `extra` checks); a bad one
    /// is audited.
    pub(super) async fn check_lease(
        &self,
        peer: PeerId,
        signed: &Signed<Lease>,
        lease_id: &str,
        extra: impl Fn(&Lease) -> Result<(), String>,
    ) -> Result<Lease, MarketError> {
        let checked = signed
            .verify_from(&peer)
            .map_err(|e| e.to_string())
            .and_then(|lease| {
                if lease.lease_id != lease_id
                    || lease.provider != peer.to_string()
                    || lease.renter != self.inner.peer_id.to_string()
                {
                    return Err("lease names another lease, provider or renter".to_owned());
                }
                extra(&lease)?;
                Ok(lease)
            });
        match checked {
            Ok(lease) => Ok(lease),
            Err(reason) => {
                self.audit(
                    AuditKind::Error,
                    json!({"lease_id": lease_id, "error": format!("bad lease: {reason}")}),
                )
                .await;
                Err(MarketError::BadSigned {
                    what: "lease",
                    reason,
                })
            }
        }
    }

    /// Buys `amount` sat more credit for a lease; returns it as the provider re-signed it.
    pub async fn add_credit(&self, lease_id: &str, amount: Sats) -> Result<Rental, MarketError> {
        let id = self.rental(lease_id)?.lease.lease_id;
        let _lease = self.inner.lease_locks.lock(&id).await;
        self.top_up(&id, amount, false).await
    }

    /// Asks the provider for a top-up invoice for a lease that is not released, and builds the
    /// commitment the invoice must carry.
    pub(super) async fn request_topup(
        &self,
        rental: &Rental,
        amount: Sats,
    ) -> Result<(PayInvoice, InvoiceCommitment), MarketError> {
        let i = &self.inner;
        if rental.state == LeaseState::Released {
            return Err(MarketError::Invalid(format!(
                "lease {} is released",
                rental.lease.lease_id
            )));
        }
        let lease_id = rental.lease.lease_id.clone();
        self.refuse_if_undelivered(&rental.lease.provider, &lease_id, amount)
            .await?;
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
        if pay.lease_id != lease_id || pay.request_id != request_id {
            return Err(MarketError::InvoiceRejected(
                "the invoice names another lease or request".into(),
            ));
        }
        let commitment = InvoiceCommitment {
            purpose: PURPOSE_TOPUP.into(),
            request_id,
            provider: rental.lease.provider.clone(),
            renter: i.peer_id.to_string(),
            offer_id: rental.lease.offer_id.clone(),
            lease_id: Some(lease_id),
            terms: rental.lease.terms.clone(),
            credit_sat: amount,
            amount_sat: amount,
            ipv4_prefix_len: None,
            ipv6_prefix_len: None,
            renter_wg_pubkey: rental.lease.renter_wg_pubkey,
        };
        Ok((pay, commitment))
    }

    /// A top-up paid by our node; the caller holds the lease's lock.
    pub(super) async fn top_up(
        &self,
        lease_id: &str,
        amount: Sats,
        autopay: bool,
    ) -> Result<Rental, MarketError> {
        let rental = self.rental(lease_id)?;
        let (pay, commitment) = self.request_topup(&rental, amount).await?;
        // Top-up invoices must come from the LN node of the offer the lease was made under.
        let (hash, _paying) = self
            .pay_checked(PayPlan {
                pay: &pay,
                commitment: &commitment,
                payee: &rental.provider_ln_pubkey,
                credit_before: rental.lease.credit_sat,
                autopay,
            })
            .await?;
        self.complete_payment_locked(&hex::encode(hash), 3)
            .await
            .map_err(|e| MarketError::AwaitingLease(format!("lease {lease_id}: {e}")))
    }

    /// Asks the provider for the lease's state and records it.
    pub async fn refresh(&self, lease_id: &str) -> Result<Rental, MarketError> {
        let rental = self.rental(lease_id)?;
        let id = rental.lease.lease_id.clone();
        let peer: PeerId = rental
            .lease
            .provider
            .parse()
            .map_err(|_| MarketError::Store("bad provider id".into()))?;
        let reply = self
            .ask(
                peer,
                Message::StatusRequest(StatusRequest {
                    lease_id: id.clone(),
                }),
            )
            .await?
            .0;
        match reply {
            Message::Status(s) => {
                // A termination notice counts only as the provider signed it, for this lease.
                let notice = match &s.termination {
                    Some(n) => match n.verify_from(&peer) {
                        Ok(t) if t.lease_id == id && t.renter == self.inner.peer_id.to_string() => {
                            Some(n.clone())
                        }
                        _ => {
                            return Err(MarketError::BadSigned {
                                what: "termination notice",
                                reason: "not signed by the provider for this lease".into(),
                            });
                        }
                    },
                    None => None,
                };
                let newer = match &s.lease {
                    Some(signed) => {
                        let l = self.check_lease(peer, signed, &id, |_| Ok(())).await?;
                        // A newer revision must keep everything the renter paid for.
                        if l.revision > rental.lease.revision {
                            self.check_revision(&rental.lease, &l).await?;
                        }
                        Some((l, signed.clone()))
                    }
                    None => None,
                };
                // The provider's view is adopted as it is: it keeps the one ledger.
                let updated = self
                    .inner
                    .rentals
                    .update(&id, |cur| {
                        let mut r = cur
                            .cloned()
                            .ok_or_else(|| MarketError::NotFound(format!("lease {id}")))?;
                        r.state = s.state;
                        if notice.is_some() {
                            r.termination = notice.clone();
                        }
                        if let Some((l, signed)) = &newer
                            && l.revision > r.lease.revision
                        {
                            r.lease = l.clone();
                            r.signed = signed.clone();
                        }
                        Ok(Some(r))
                    })
                    .await?
                    .ok_or_else(|| MarketError::NotFound(format!("lease {id}")))?;
                // A revision that moved the provider (endpoint or key): re-point the tunnel.
                self.follow_revision(&rental.lease, &updated).await?;
                Ok(updated)
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
}
