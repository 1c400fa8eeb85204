//! Background work: settlement watcher, expiry of unpaid invoices, metering of leases. Each
//! item is handled on its own: a failing one is logged and audited and the pass goes on.

use super::ending::notice_end;
use super::*;

/// Invoices asked of our node per page of the expiry pass.
const LIST_PAGE: u64 = 1_000;

impl Provider {
    /// One pass of background work: issue leases for invoices settled without a
    /// `paymentResult`, drop expired invoices, meter leases, refresh the offer.
    ///
    /// # Errors
    /// Only when the tables cannot be read at all; one failing invoice or lease is logged and
    /// audited and the pass goes on with the others.
    pub async fn tick(&self) -> Result<(), MarketError> {
        let i = &self.inner;
        // First: a disk that failed a write is probed, so new work resumes as soon as it can.
        self.probe_disk().await;
        self.finish_issued_all().await;
        self.settle_and_expire_unpaid().await?;
        for (lease_id, rec) in i.leases.all()? {
            if rec.tunnel_pending {
                let _lease = i.lease_locks.lock(&lease_id).await;
                if let Err(e) = self.place_peer_locked(&lease_id).await {
                    self.item_failed("tunnel peer", &lease_id, &e).await;
                }
            }
            if let Err(e) = self.meter(&lease_id).await {
                self.item_failed("metering", &lease_id, &e).await;
            }
        }
        self.resolve_paying_refunds().await?;
        let refreshed = self.refresh_offer(false).await;
        self.note_write(&refreshed);
        refreshed?;
        Ok(())
    }

    /// One pass over every unpaid invoice: our node's invoices are listed from the oldest
    /// unpaid one on (a few pages, however many invoices are open), each settled one issues or
    /// extends its lease, and each expired one is dropped with its prefixes freed. Never one
    /// lookup per invoice: thousands of unpaid invoices cost a few calls, not thousands.
    ///
    /// # Errors
    /// When the pending table cannot be read. A node that cannot list is logged and audited
    /// (nothing is settled or expired this pass; `paymentResult` still settles by lookup).
    async fn settle_and_expire_unpaid(&self) -> Result<(), MarketError> {
        let i = &self.inner;
        // Slots stored before the table is read: those no longer unpaid in it were settled or
        // expired by a write that failed after it took effect, and are given back here.
        let kept = i.reservations.kept();
        let unpaid: Vec<(String, PendingInvoice)> = i
            .pending
            .all()?
            .into_iter()
            .filter(|(_, p)| p.issued.is_none())
            .collect();
        let unpaid_ids: std::collections::HashSet<String> =
            unpaid.iter().map(|(id, _)| id.clone()).collect();
        let resynced = i.reservations.forget_settled(&kept, &unpaid_ids);
        if resynced > 0 {
            tracing::info!(
                resynced,
                "unpaid-invoice slots given back after failed writes"
            );
        }
        let Some(oldest) = unpaid.iter().map(|(_, p)| p.add_index).min() else {
            return Ok(());
        };
        let mut wanted: std::collections::HashMap<
            [u8; 32],
            Option<crate::lightning::InvoiceStatus>,
        > = std::collections::HashMap::new();
        for (_, p) in &unpaid {
            match p.hash() {
                Ok(h) => {
                    wanted.insert(h, None);
                }
                Err(e) => self.item_failed("invoice listing", &p.lease_id, &e).await,
            }
        }
        if let Err(e) = self
            .list_states(oldest.saturating_sub(1), &mut wanted)
            .await
        {
            tracing::warn!(error = %e, "cannot list our node's invoices; retrying next pass");
            self.item_failed("invoice listing", "", &e).await;
            return Ok(());
        }
        for (request_id, p) in unpaid {
            let Ok(hash) = p.hash() else { continue };
            let status = wanted.get(&hash).cloned().flatten();
            if let Some(status) = &status {
                match self.settle_with_status(&request_id, &p, status).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                    Err(e) => self.item_failed("settlement", &p.lease_id, &e).await,
                }
            }
            // Past its expiry (with a minute's grace for clocks), an invoice our node does
            // not show settled can no longer be paid: open, canceled, or not listed at all.
            let settled = status.is_some_and(|s| s.state == InvoiceState::Settled);
            if !settled
                && self.now() > p.expires_at + 60
                && let Err(e) = self.expire_invoice(&request_id, &p.lease_id).await
            {
                self.item_failed("invoice expiry", &p.lease_id, &e).await;
            }
        }
        Ok(())
    }

    /// Fills in the state of every invoice of `wanted` our node lists after `from`, paging
    /// through the listing until it ends.
    async fn list_states(
        &self,
        from: u64,
        wanted: &mut std::collections::HashMap<[u8; 32], Option<crate::lightning::InvoiceStatus>>,
    ) -> Result<(), MarketError> {
        let mut offset = from;
        let mut pages = 0u32;
        loop {
            let page = self.inner.ln.list_invoices(offset, LIST_PAGE).await?;
            pages += 1;
            for inv in page.invoices.iter() {
                if let Some(slot) = wanted.get_mut(&inv.payment_hash) {
                    *slot = Some(inv.status.clone());
                }
            }
            // A short page is the last; an offset that does not advance would loop forever.
            if (page.invoices.len() as u64) < LIST_PAGE || page.last_index_offset <= offset {
                break;
            }
            offset = page.last_index_offset;
        }
        tracing::debug!(pages, from, "listed our node's invoices");
        Ok(())
    }

    /// Drops an invoice that expired unpaid and frees its prefixes.
    async fn expire_invoice(&self, request_id: &str, lease_id: &str) -> Result<(), MarketError> {
        let i = &self.inner;
        let _lease = i.lease_locks.lock(lease_id).await;
        let Some(current) = i.pending.get_versioned(request_id)? else {
            return Ok(());
        };
        let p = &current.value;
        if p.issued.is_some() {
            return Ok(());
        }
        // Only the open invoice as read is dropped: a settlement that got in first wins.
        if !i
            .pending
            .compare_and_swap(request_id, Some(&current), None)
            .await?
        {
            return Ok(());
        }
        // No longer unpaid: its slot under the unpaid-invoice caps is free again.
        i.reservations.release(request_id);
        for prefix in p.ipv4.iter().chain(p.ipv6.iter()) {
            i.pool.release(prefix, &p.lease_id).await?;
        }
        self.audit(
            AuditKind::LeaseReleased,
            json!({"lease_id": p.lease_id, "reason": "invoice expired unpaid"}),
        )
        .await;
        Ok(())
    }

    /// Meters one lease: suspends it when its credit ran out, releases its prefixes when the
    /// reserve period is over.
    async fn meter(&self, lease_id: &str) -> Result<(), MarketError> {
        let i = &self.inner;
        let _lease = i.lease_locks.lock(lease_id).await;
        let Some(mut rec) = i.leases.get(lease_id)? else {
            return Ok(());
        };
        if rec.prefixes_held_until.is_some() {
            // Released by its renter: nothing is metered, the prefixes come back when due.
            return self.free_held_prefixes(lease_id, &mut rec).await;
        }
        if let Some(ends_at) = notice_end(&rec)
            && self.now() >= ends_at
            && rec.state != LeaseState::Released
        {
            // The notice ran out: the lease ends as if its renter had released it.
            self.release_now(lease_id, &mut rec, "termination notice over")
                .await?;
            return Ok(());
        }
        let t = lease::next(
            Some(rec.state),
            Event::Tick {
                paid_until: rec.lease.paid_until,
                reserve_days: rec.lease.terms.reserve_days,
            },
            self.now(),
        )?;
        match t.kind {
            Some(Kind::Suspended) => {
                i.tunnel
                    .remove_peer(&i.iface, &rec.lease.renter_wg_pubkey)
                    .await?;
                rec.state = t.state;
                i.leases.put(lease_id, &rec).await?;
                self.audit(
                    AuditKind::LeaseSuspended,
                    json!({"lease_id": lease_id, "paid_until": rec.lease.paid_until}),
                )
                .await;
                tracing::info!(lease_id, "credit exhausted: lease suspended");
            }
            Some(Kind::Expired) => {
                for prefix in rec.lease.ipv4.iter().chain(rec.lease.ipv6.iter()) {
                    i.pool.release(prefix, lease_id).await?;
                }
                rec.state = t.state;
                i.leases.put(lease_id, &rec).await?;
                self.audit(
                    AuditKind::LeaseReleased,
                    json!({"lease_id": lease_id, "reason": "reserve period over"}),
                )
                .await;
            }
            _ => {}
        }
        Ok(())
    }
}
