//! Settlement: a lease is issued or extended only once our own Lightning node shows the
//! invoice settled, and exactly once per invoice.

use super::*;

impl Provider {
    pub(super) async fn on_payment_result(&self, peer: PeerId, r: PaymentResult) -> Message {
        let i = &self.inner;
        let pending = match i.pending.get(&r.request_id) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "pending lookup failed");
                return err(ErrorCode::Unavailable, "provider storage error");
            }
        };
        let Some(pending) = pending else {
            // Already settled and issued (e.g. by the watcher): answer with the lease.
            return self.lease_for_request(peer, &r.request_id);
        };
        if pending.renter_peer != peer.to_string() {
            return err(ErrorCode::NotFound, "no such request of yours");
        }
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        loop {
            match self.settle_if_paid(&r.request_id).await {
                Ok(Some(lease)) => return Message::Lease(lease),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "settlement check failed");
                    return err(ErrorCode::Unavailable, "provider cannot check its node now");
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return err(
                    ErrorCode::NotSettled,
                    format!(
                        "invoice {} is not settled on the provider's node",
                        pending.payment_hash
                    ),
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(super) fn lease_for_request(&self, peer: PeerId, request_id: &str) -> Message {
        let done = self
            .inner
            .meta
            .get(format!("settled/{request_id}").as_bytes())
            .ok()
            .flatten();
        let Some(lease_id) = done.map(|v| String::from_utf8_lossy(&v).into_owned()) else {
            return err(ErrorCode::NotFound, "unknown request");
        };
        match self.inner.leases.get(&lease_id) {
            Ok(Some(rec)) if rec.renter_peer == peer.to_string() => Message::Lease(rec.signed),
            _ => err(ErrorCode::NotFound, "unknown request"),
        }
    }

    /// If the invoice of `request_id` is settled on our node, issues or extends the lease
    /// (exactly once) and returns it.
    pub(super) async fn settle_if_paid(
        &self,
        request_id: &str,
    ) -> Result<Option<Signed<Lease>>, MarketError> {
        let i = &self.inner;
        let _guard = i.settle_lock.lock().await;
        let Some(p) = i.pending.get(request_id)? else {
            return Ok(None);
        };
        let hash: [u8; 32] = hex::decode(&p.payment_hash)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| MarketError::Store("bad stored payment hash".into()))?;
        let status = i.ln.lookup_invoice(hash).await?;
        if status.state != InvoiceState::Settled {
            return Ok(None);
        }
        if status.amount_paid_msat < p.commitment.amount_sat * 1000 {
            tracing::warn!(request_id, "settled for less than invoiced; not issuing");
            return Ok(None);
        }
        self.audit(
            AuditKind::InvoiceSettled,
            json!({"request_id": request_id, "payment_hash": p.payment_hash,
                   "amount_paid_msat": status.amount_paid_msat, "lease_id": p.lease_id}),
        );
        let rec = if p.commitment.purpose == PURPOSE_TOPUP {
            self.extend_lease(request_id, &p).await?
        } else {
            self.issue_lease(request_id, &p).await?
        };
        i.meta.insert(
            format!("settled/{request_id}").as_bytes(),
            p.lease_id.as_bytes(),
        )?;
        i.meta.flush()?;
        i.pending.remove(request_id)?;
        Ok(Some(rec.signed))
    }

    pub(super) async fn issue_lease(
        &self,
        request_id: &str,
        p: &PendingInvoice,
    ) -> Result<ProviderLease, MarketError> {
        let i = &self.inner;
        if let Some(rec) = i.leases.get(&p.lease_id)? {
            // Issued before a crash that came before the pending invoice was cleared.
            tracing::info!(lease_id = %p.lease_id, "lease already issued; not issuing again");
            return Ok(rec);
        }
        let now = now_unix();
        let c = &p.commitment;
        let allowed_ips: Vec<String> = p.ipv4.iter().chain(p.ipv6.iter()).cloned().collect();
        let lease = Lease {
            lease_id: p.lease_id.clone(),
            provider: i.peer_id.to_string(),
            renter: c.renter.clone(),
            offer_id: c.offer_id.clone(),
            renter_wg_pubkey: c.renter_wg_pubkey,
            provider_wg_pubkey: i.wg_public,
            endpoint: i.cfg.endpoint.clone(),
            ipv4: p.ipv4.clone(),
            ipv6: p.ipv6.clone(),
            allowed_ips,
            terms: c.terms.clone(),
            credit_sat: c.credit_sat,
            activated_at: now,
            paid_until: now + c.terms.credit_secs(c.credit_sat),
            payment_hash: p.payment_hash.clone(),
            revision: 1,
        };
        let signed = Signed::sign(&i.key, &lease).map_err(|e| MarketError::Store(e.to_string()))?;
        let rec = ProviderLease {
            lease,
            signed,
            state: LeaseState::Active,
            renter_peer: p.renter_peer.clone(),
            paid_sat: c.amount_sat,
            settled_requests: vec![request_id.to_owned()],
        };
        // Persist first: a crash after this point re-applies the peer on start.
        i.leases.put(&p.lease_id, &rec)?;
        if let Err(e) = self.apply_peer(&rec.lease).await {
            tracing::error!(error = %e, lease_id = %p.lease_id, "cannot add tunnel peer");
            self.audit(
                AuditKind::Error,
                json!({"lease_id": p.lease_id, "error": e.to_string()}),
            );
        }
        self.audit(
            AuditKind::LeaseIssued,
            json!({"lease_id": p.lease_id, "renter": c.renter, "ipv4": p.ipv4, "ipv6": p.ipv6,
                   "credit_sat": c.credit_sat, "paid_sat": c.amount_sat,
                   "paid_until": rec.lease.paid_until}),
        );
        tracing::info!(lease_id = %p.lease_id, ipv4 = ?p.ipv4, ipv6 = ?p.ipv6, "lease issued");
        Ok(rec)
    }

    pub(super) async fn extend_lease(
        &self,
        request_id: &str,
        p: &PendingInvoice,
    ) -> Result<ProviderLease, MarketError> {
        let i = &self.inner;
        let mut rec = i
            .leases
            .get(&p.lease_id)?
            .ok_or_else(|| MarketError::NotFound(p.lease_id.clone()))?;
        if rec.settled_requests.iter().any(|r| r == request_id) {
            tracing::info!(lease_id = %p.lease_id, request_id, "top-up already credited");
            return Ok(rec);
        }
        let now = now_unix();
        let add = p.commitment.credit_sat;
        // Credit is one continuous ledger from activation: paid_until extends from the old
        // paid_until even when that is past, so back rent is paid first. Recomputing from the
        // total (docs/PROTOCOL.md) avoids a rounding loss per top-up.
        rec.lease.credit_sat += add;
        rec.lease.paid_until =
            rec.lease.activated_at + rec.lease.terms.credit_secs(rec.lease.credit_sat);
        rec.lease.revision += 1;
        rec.paid_sat += add;
        rec.settled_requests.push(request_id.to_owned());
        rec.signed =
            Signed::sign(&i.key, &rec.lease).map_err(|e| MarketError::Store(e.to_string()))?;
        let reactivate = rec.state == LeaseState::Suspended && rec.lease.paid_until > now;
        if reactivate {
            rec.state = LeaseState::Active;
        }
        i.leases.put(&p.lease_id, &rec)?;
        self.audit(
            AuditKind::CreditAdded,
            json!({"lease_id": p.lease_id, "amount_sat": add, "paid_until": rec.lease.paid_until}),
        );
        if reactivate {
            self.apply_peer(&rec.lease).await?;
            self.audit(AuditKind::LeaseReactivated, json!({"lease_id": p.lease_id}));
            tracing::info!(lease_id = %p.lease_id, "lease reactivated");
        }
        Ok(rec)
    }

    pub(super) async fn apply_peer(&self, lease: &Lease) -> Result<(), MarketError> {
        let allowed_ips = lease
            .allowed_ips
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .map_err(|_| MarketError::Store(format!("bad stored prefix {s}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.inner
            .tunnel
            .add_peer(
                &self.inner.iface,
                &PeerSpec {
                    public_key: lease.renter_wg_pubkey,
                    endpoint: None,
                    allowed_ips,
                    persistent_keepalive: None,
                },
            )
            .await?;
        Ok(())
    }
}
