//! Background work: settlement watcher, expiry of unpaid invoices, metering of leases. Each
//! item is handled on its own: a failing one is logged and audited and the pass goes on.

use super::ending::notice_end;
use super::*;

impl Provider {
    /// One pass of background work: issue leases for invoices settled without a
    /// `paymentResult`, drop expired invoices, meter leases, refresh the offer.
    ///
    /// # Errors
    /// Only when the tables cannot be read at all; one failing invoice or lease is logged and
    /// audited and the pass goes on with the others.
    pub async fn tick(&self) -> Result<(), MarketError> {
        let i = &self.inner;
        self.finish_issued_all().await;
        for (request_id, p) in i.pending.all()? {
            if p.issued.is_some() {
                continue;
            }
            match self.settle_if_paid(&request_id).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => self.item_failed("settlement check", &p.lease_id, &e).await,
            }
            if self.now() > p.expires_at + 60
                && let Err(e) = self.expire_invoice(&request_id, &p.lease_id).await
            {
                self.item_failed("invoice expiry", &p.lease_id, &e).await;
            }
        }
        for (lease_id, _) in i.leases.all()? {
            if let Err(e) = self.meter(&lease_id).await {
                self.item_failed("metering", &lease_id, &e).await;
            }
        }
        self.resolve_paying_refunds().await?;
        self.refresh_offer(false).await?;
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
