//! Settlement: a lease is issued or extended only once our own Lightning node shows the
//! invoice settled, and exactly once per invoice.
//!
//! The single step that issues is a compare-and-swap of the invoice's pending record from
//! "open" to "issued, with this lease record". `paymentResult`, the settlement watcher and the
//! metering tick may all find the invoice settled at the same moment; exactly one swaps, and
//! the others read the lease from the record and answer with it at once. The lease's own lock
//! (never a global one) keeps the lease ledger consistent while the winner computes the new
//! record; nothing is held while our node is asked about the invoice.
//!
//! After the swap the winner writes the lease record, changes the tunnel and audits. A crash
//! in between is finished by [`Provider::finish_issued_all`] at start and on every tick, from
//! the record kept in the pending entry. Then the pending entry is replaced by a
//! `settled/<request>` marker, so late `paymentResult`s still find the lease.

use super::*;

/// How often `paymentResult` asks our node again while the invoice is not settled yet.
const SETTLE_POLL: Duration = Duration::from_millis(200);

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
            // Already settled and cleaned up: answer with the lease.
            return self.lease_for_request(peer, &r.request_id);
        };
        if pending.renter_peer != peer.to_string() {
            return err(ErrorCode::NotFound, "no such request of yours");
        }
        if i.cfg.fault.withhold_leases {
            // Fault injection (simnet): the invoice may be settled, but the renter is told to
            // ask again, forever.
            tracing::warn!(request_id = %r.request_id, "FAULT INJECTION: withholding the lease");
            return err(
                ErrorCode::NotSettled,
                format!(
                    "invoice {} is not settled on the provider's node",
                    pending.payment_hash
                ),
            );
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
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// The lease issued for `request_id`, once settled: from the pending record while it is
    /// kept, then from the `settled/` marker.
    pub(super) fn lease_for_request(&self, peer: PeerId, request_id: &str) -> Message {
        match self.issued_for(request_id) {
            Ok(Some(rec)) if rec.renter_peer == peer.to_string() => Message::Lease(rec.signed),
            Ok(_) => err(ErrorCode::NotFound, "unknown request"),
            Err(e) => {
                tracing::error!(error = %e, "settled lookup failed");
                err(ErrorCode::Unavailable, "provider storage error")
            }
        }
    }

    fn issued_for(&self, request_id: &str) -> Result<Option<ProviderLease>, MarketError> {
        let i = &self.inner;
        if let Some(p) = i.pending.get(request_id)? {
            return Ok(p.issued);
        }
        let Some(lease_id) = i.meta.get(settled_key(request_id).as_bytes())? else {
            return Ok(None);
        };
        Ok(i.leases.get(&String::from_utf8_lossy(&lease_id))?)
    }

    /// If the invoice of `request_id` is settled on our node, issues or extends the lease
    /// (exactly once) and returns it. Called concurrently by `paymentResult` and the watcher:
    /// the second caller gets the lease the first issued.
    pub(super) async fn settle_if_paid(
        &self,
        request_id: &str,
    ) -> Result<Option<Signed<Lease>>, MarketError> {
        let i = &self.inner;
        let Some(p) = i.pending.get(request_id)? else {
            return Ok(self.issued_for(request_id)?.map(|r| r.signed));
        };
        if let Some(rec) = p.issued {
            return Ok(Some(rec.signed));
        }
        if i.cfg.fault.withhold_leases {
            // Fault injection (simnet): nothing is ever issued, paid or not.
            return Ok(None);
        }
        let hash = p.hash()?;
        // Asked with no lock held: other leases, and other requests of this one, go on.
        let status = i.ln.lookup_invoice(hash).await?;
        self.settle_with_status(request_id, &p, &status).await
    }

    /// Issues or extends the lease of `request_id` (exactly once) when `status`, our node's
    /// answer about its invoice `p`, says it is settled; `None` when it is not.
    pub(super) async fn settle_with_status(
        &self,
        request_id: &str,
        p: &PendingInvoice,
        status: &crate::lightning::InvoiceStatus,
    ) -> Result<Option<Signed<Lease>>, MarketError> {
        let i = &self.inner;
        if i.cfg.fault.withhold_leases {
            // Fault injection (simnet): nothing is ever issued, paid or not.
            return Ok(None);
        }
        if status.state != InvoiceState::Settled {
            return Ok(None);
        }
        if status.amount_paid_msat < p.commitment.amount_sat * 1000 {
            tracing::warn!(request_id, "settled for less than invoiced; not issuing");
            return Ok(None);
        }
        let _lease = i.lease_locks.lock(&p.lease_id).await;
        // Another path may have issued while we asked our node.
        let Some(current) = i.pending.get_versioned(request_id)? else {
            return Ok(self.issued_for(request_id)?.map(|r| r.signed));
        };
        if let Some(rec) = &current.value.issued {
            return Ok(Some(rec.signed.clone()));
        }
        let rec = if p.commitment.purpose == PURPOSE_TOPUP {
            self.credited_record(request_id, &current.value)?
        } else {
            self.issued_record(request_id, &current.value)?
        };
        let mut settled = current.value.clone();
        settled.issued = Some(rec.clone());
        // The one step that issues: exactly one caller swaps the open invoice for the lease.
        if !i
            .pending
            .compare_and_swap(request_id, Some(&current), Some(&settled))
            .await?
        {
            tracing::debug!(
                request_id,
                "settled concurrently; answering with that lease"
            );
            return Ok(self.issued_for(request_id)?.map(|r| r.signed));
        }
        // No longer unpaid: its slot under the unpaid-invoice caps is free again.
        i.reservations.release(request_id);
        let log_seq = self
            .audit_seq(
                AuditKind::InvoiceSettled,
                json!({"request_id": request_id, "payment_hash": p.payment_hash,
                   "amount_paid_msat": status.amount_paid_msat, "lease_id": p.lease_id}),
            )
            .await;
        if let Some(log_seq) = log_seq {
            self.issue_receipt(
                &rec,
                &p.payment_hash,
                status.amount_paid_msat / 1000,
                log_seq,
            )
            .await;
        }
        self.finish_issued(request_id, &settled).await?;
        Ok(Some(rec.signed))
    }

    /// The lease record an activation produces (or the one a crash left already issued).
    pub(super) fn issued_record(
        &self,
        request_id: &str,
        p: &PendingInvoice,
    ) -> Result<ProviderLease, MarketError> {
        let i = &self.inner;
        if let Some(rec) = i.leases.get(&p.lease_id)? {
            // Issued before a crash that came before the pending invoice was updated.
            tracing::info!(lease_id = %p.lease_id, "lease already issued; not issuing again");
            return Ok(rec);
        }
        let now = self.now();
        let c = &p.commitment;
        let allowed_ips: Vec<String> = p.ipv4.iter().chain(p.ipv6.iter()).cloned().collect();
        let paid_until = now + c.terms.credit_secs(c.credit_sat);
        let state = lease::next(None, Event::Issue { paid_until }, now)?.state;
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
            paid_until,
            payment_hash: p.payment_hash.clone(),
            revision: 1,
        };
        let signed = Signed::sign(&i.key, &lease).map_err(|e| MarketError::Store(e.to_string()))?;
        Ok(ProviderLease {
            lease,
            signed,
            state,
            renter_peer: p.renter_peer.clone(),
            paid_sat: c.amount_sat,
            settled_requests: vec![request_id.to_owned()],
            prefixes_held_until: None,
            lease_end: None,
            termination: None,
            refund: None,
            tunnel_pending: false,
        })
    }

    /// The lease record after crediting a top-up (or unchanged when it was credited already).
    fn credited_record(
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
        rec.state = lease::next(
            Some(rec.state),
            Event::Pay {
                paid_until: rec.lease.paid_until,
            },
            self.now(),
        )?
        .state;
        Ok(rec)
    }

    /// Carries out an issued settlement: stores the lease record (unless it already holds this
    /// request), changes the tunnel, audits, and replaces the pending entry with a `settled/`
    /// marker. Idempotent; the caller holds the lease's lock.
    async fn finish_issued(&self, request_id: &str, p: &PendingInvoice) -> Result<(), MarketError> {
        let i = &self.inner;
        let Some(rec) = &p.issued else {
            return Ok(());
        };
        let lease_id = &p.lease_id;
        let before = i.leases.get(lease_id)?;
        let applied = before
            .as_ref()
            .is_some_and(|b| b.settled_requests.iter().any(|r| r == request_id));
        let kind = match &before {
            _ if applied => None,
            None => Some(Kind::Issued),
            Some(b) if b.state == LeaseState::Suspended && rec.state == LeaseState::Active => {
                Some(Kind::Reactivated)
            }
            Some(_) => Some(Kind::Paid),
        };
        if kind.is_some() {
            // Persist first: a crash after this point re-applies the peer on start.
            i.leases.put(lease_id, rec).await?;
        }
        let c = &p.commitment;
        match kind {
            Some(Kind::Issued) => {
                // A peer the tunnel refuses now is marked pending and retried by every tick.
                self.place_peer_locked(lease_id).await?;
                self.audit(
                    AuditKind::LeaseIssued,
                    json!({"lease_id": lease_id, "renter": c.renter, "ipv4": p.ipv4,
                           "ipv6": p.ipv6, "credit_sat": c.credit_sat,
                           "paid_sat": c.amount_sat, "paid_until": rec.lease.paid_until}),
                )
                .await;
                tracing::info!(lease_id, ipv4 = ?p.ipv4, ipv6 = ?p.ipv6, "lease issued");
            }
            Some(kind) => {
                self.audit(
                    AuditKind::CreditAdded,
                    json!({"lease_id": lease_id, "amount_sat": c.credit_sat,
                           "paid_until": rec.lease.paid_until}),
                )
                .await;
                if kind == Kind::Reactivated {
                    self.place_peer_locked(lease_id).await?;
                    self.audit(AuditKind::LeaseReactivated, json!({"lease_id": lease_id}))
                        .await;
                    tracing::info!(lease_id, "lease reactivated");
                }
            }
            None => {
                // Finishing after a failure or a crash: the record is stored; make sure the
                // tunnel matches it (adding a peer is idempotent).
                if before.is_some_and(|b| b.state == LeaseState::Active) {
                    self.place_peer_locked(lease_id).await?;
                }
            }
        }
        i.meta.apply_batch(vec![(
            settled_key(request_id).into_bytes(),
            Some(lease_id.as_bytes().to_vec()),
        )])?;
        kv::flush(&i.meta).await?;
        i.pending.remove(request_id).await?;
        Ok(())
    }

    /// Finishes every settlement a crash (or a failed step) left issued but not carried out.
    /// A failing one is logged and audited; the others go on.
    pub(super) async fn finish_issued_all(&self) {
        let all = match self.inner.pending.all() {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "cannot read pending invoices");
                return;
            }
        };
        for (request_id, p) in all {
            if p.issued.is_none() {
                continue;
            }
            let _lease = self.inner.lease_locks.lock(&p.lease_id).await;
            // Re-read under the lock: a live settlement may have finished it meanwhile.
            let done = match self.inner.pending.get(&request_id) {
                Ok(Some(p)) if p.issued.is_some() => self.finish_issued(&request_id, &p).await,
                Ok(_) => Ok(()),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = done {
                self.item_failed("finish settlement", &p.lease_id, &e).await;
            }
        }
    }

    /// Logs and audits a failure of one item of a background pass, which then goes on.
    pub(super) async fn item_failed(&self, what: &str, lease_id: &str, e: &MarketError) {
        tracing::warn!(error = %e, lease_id, "{what} failed; going on with the others");
        if matches!(e, MarketError::Store(_) | MarketError::Audit(_)) {
            // Retried by the next pass; meanwhile no new work adds to the disk's trouble.
            self.inner.disk.record_failure(&format!("{what}: {e}"));
        }
        self.audit(
            AuditKind::Error,
            json!({"lease_id": lease_id, "error": format!("{what}: {e}")}),
        )
        .await;
    }

    /// Puts the peer of lease `lease_id` in place when the lease is active. When the tunnel
    /// refuses (out of file descriptors, a netlink error), the lease is marked
    /// `tunnel_pending` (audited once) and `Ok(false)` returned: the tick tries again until it
    /// is in place, and `leases` shows it meanwhile. A lease that is not active is never
    /// pending. The caller holds the lease's lock.
    ///
    /// # Errors
    /// Only the store: the lease cannot be read or its mark written.
    pub(super) async fn place_peer_locked(&self, lease_id: &str) -> Result<bool, MarketError> {
        let i = &self.inner;
        let Some(mut rec) = i.leases.get(lease_id)? else {
            return Ok(false);
        };
        if rec.state != LeaseState::Active {
            if rec.tunnel_pending {
                rec.tunnel_pending = false;
                i.leases.put(lease_id, &rec).await?;
            }
            return Ok(false);
        }
        match self.apply_peer(&rec.lease).await {
            Ok(()) => {
                if rec.tunnel_pending {
                    rec.tunnel_pending = false;
                    i.leases.put(lease_id, &rec).await?;
                    tracing::info!(lease_id, "tunnel peer in place after a retry");
                }
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(error = %e, lease_id, "cannot add the tunnel peer; retrying every tick");
                if !rec.tunnel_pending {
                    rec.tunnel_pending = true;
                    i.leases.put(lease_id, &rec).await?;
                    // Audited once per outage, not once per retry.
                    self.audit(
                        AuditKind::Error,
                        json!({"lease_id": lease_id,
                               "error": format!("tunnel peer pending: {e}")}),
                    )
                    .await;
                }
                Ok(false)
            }
        }
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

impl PendingInvoice {
    /// The stored payment hash.
    pub(super) fn hash(&self) -> Result<[u8; 32], MarketError> {
        hex::decode(&self.payment_hash)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| MarketError::Store("bad stored payment hash".into()))
    }
}

fn settled_key(request_id: &str) -> String {
    format!("settled/{request_id}")
}
