//! Renting and topping up: request, invoice, payment, lease verification.

use super::*;

impl Renter {
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

    pub(super) async fn rent_from(
        &self,
        known: &KnownOffer,
        credit: Sats,
    ) -> Result<Rental, MarketError> {
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

    pub(super) async fn expect_invoice(
        &self,
        peer: PeerId,
        msg: Message,
    ) -> Result<PayInvoice, MarketError> {
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

    pub(super) async fn fetch_lease(
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

    pub(super) fn check_lease(
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
}
