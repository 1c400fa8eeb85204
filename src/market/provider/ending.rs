//! Ending a lease early: the renter's signed `leaseEnd`.
//!
//! The provider checks that the signer is the lease's renter (and the peer that sent it),
//! then at once stops metering (the lease is released), removes the WireGuard peer and audits
//! `lease_released`. The prefixes stay out of the pool for what is left of the reserve period
//! (at most `reserve_days` from the release) and are freed by metering after that. A repeated
//! `leaseEnd` changes nothing and gets the same `status` answer.

use super::*;
use crate::types::DAY_SECS;

impl Provider {
    pub(super) async fn on_lease_end(&self, peer: PeerId, end: Signed<LeaseEnd>) -> Message {
        // Signed by the peer that sent it, about a lease of ours, naming that peer as renter.
        let e = match end.verify_from(&peer) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "leaseEnd refused: bad signature");
                return err(ErrorCode::BadRequest, format!("bad leaseEnd: {e}"));
            }
        };
        if e.renter != peer.to_string() || e.provider != self.inner.peer_id.to_string() {
            return err(
                ErrorCode::BadRequest,
                "leaseEnd names another renter or provider",
            );
        }
        match self.end_lease(&peer, &e, &end).await {
            Ok(Some(rec)) => self.status_of(rec),
            Ok(None) => err(ErrorCode::NotFound, "no such lease of yours"),
            Err(e) => {
                tracing::error!(error = %e, "leaseEnd failed");
                err(ErrorCode::Unavailable, "provider storage error")
            }
        }
    }

    /// Releases the lease `e` names for its renter `peer`; `None` when `peer` has no such lease.
    async fn end_lease(
        &self,
        peer: &PeerId,
        e: &LeaseEnd,
        signed: &Signed<LeaseEnd>,
    ) -> Result<Option<ProviderLease>, MarketError> {
        let i = &self.inner;
        let _lease = i.lease_locks.lock(&e.lease_id).await;
        let Some(mut rec) = i.leases.get(&e.lease_id)? else {
            return Ok(None);
        };
        if rec.renter_peer != peer.to_string() || rec.lease.renter != peer.to_string() {
            tracing::warn!(%peer, lease_id = %e.lease_id, "leaseEnd refused: not the lease's renter");
            return Ok(None);
        }
        if rec.state == LeaseState::Released {
            // Already over (an earlier leaseEnd, or the reserve period ran out): same answer.
            return Ok(Some(rec));
        }
        let now = self.now();
        let t = lease::next(Some(rec.state), Event::Release, now)?;
        if rec.state == LeaseState::Active {
            i.tunnel
                .remove_peer(&i.iface, &rec.lease.renter_wg_pubkey)
                .await?;
        }
        let reserve = rec.lease.terms.reserve_days;
        let held_until = lease::reserve_end(rec.lease.paid_until, reserve)
            .min(now.saturating_add(u64::from(reserve) * DAY_SECS));
        let forfeit = rec.remaining_credit(now);
        rec.state = t.state;
        rec.prefixes_held_until = Some(held_until);
        rec.lease_end = Some(signed.clone());
        i.leases.put(&e.lease_id, &rec).await?;
        // Prefixes whose hold is already over go back at once.
        self.free_held_prefixes(&e.lease_id, &mut rec).await?;
        self.audit(
            AuditKind::LeaseReleased,
            json!({"lease_id": e.lease_id, "reason": "released by the renter",
                   "renter": peer.to_string(), "ended_at": e.ended_at,
                   "unused_credit_sat": forfeit, "prefixes_held_until": held_until}),
        )
        .await;
        tracing::info!(lease_id = %e.lease_id, held_until, "lease released by its renter");
        Ok(Some(rec))
    }

    /// Returns the prefixes of a released lease to the pool once their hold is over; the
    /// caller holds the lease's lock.
    pub(super) async fn free_held_prefixes(
        &self,
        lease_id: &str,
        rec: &mut ProviderLease,
    ) -> Result<(), MarketError> {
        let i = &self.inner;
        match rec.prefixes_held_until {
            Some(until) if rec.state == LeaseState::Released && self.now() >= until => {}
            _ => return Ok(()),
        }
        for prefix in rec.lease.ipv4.iter().chain(rec.lease.ipv6.iter()) {
            i.pool.release(prefix, lease_id).await?;
        }
        rec.prefixes_held_until = None;
        i.leases.put(lease_id, rec).await?;
        self.audit(
            AuditKind::LeaseReleased,
            json!({"lease_id": lease_id, "reason": "prefixes of a released lease freed"}),
        )
        .await;
        Ok(())
    }
}
