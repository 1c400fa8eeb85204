//! Background work: settlement watcher, expiry of unpaid invoices, metering of leases.

use super::*;

impl Provider {
    /// One pass of background work: issue leases for invoices settled without a
    /// `paymentResult`, drop expired invoices, meter leases, refresh the offer.
    pub async fn tick(&self) -> Result<(), MarketError> {
        let i = &self.inner;
        let now = now_unix();
        for (request_id, p) in i.pending.all()? {
            match self.settle_if_paid(&request_id).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, request_id, "settlement check failed"),
            }
            if now > p.expires_at + 60 {
                for prefix in p.ipv4.iter().chain(p.ipv6.iter()) {
                    i.pool.release(prefix, &p.lease_id)?;
                }
                i.pending.remove(&request_id)?;
                self.audit(
                    AuditKind::LeaseReleased,
                    json!({"lease_id": p.lease_id, "reason": "invoice expired unpaid"}),
                );
            }
        }
        for (lease_id, mut rec) in i.leases.all()? {
            match rec.state {
                LeaseState::Active if now >= rec.lease.paid_until => {
                    i.tunnel
                        .remove_peer(&i.iface, &rec.lease.renter_wg_pubkey)
                        .await?;
                    rec.state = LeaseState::Suspended;
                    i.leases.put(&lease_id, &rec)?;
                    self.audit(
                        AuditKind::LeaseSuspended,
                        json!({"lease_id": lease_id, "paid_until": rec.lease.paid_until}),
                    );
                    tracing::info!(lease_id, "credit exhausted: lease suspended");
                }
                LeaseState::Suspended
                    if now
                        >= rec.lease.paid_until
                            + u64::from(rec.lease.terms.reserve_days) * DAY_SECS =>
                {
                    for prefix in rec.lease.ipv4.iter().chain(rec.lease.ipv6.iter()) {
                        i.pool.release(prefix, &lease_id)?;
                    }
                    rec.state = LeaseState::Released;
                    i.leases.put(&lease_id, &rec)?;
                    self.audit(
                        AuditKind::LeaseReleased,
                        json!({"lease_id": lease_id, "reason": "reserve period over"}),
                    );
                }
                _ => {}
            }
        }
        self.refresh_offer(false)?;
        Ok(())
    }
}
