//! Ending a lease early: the renter's signed `leaseEnd`, or the provider's termination notice.
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
        rec.lease_end = Some(signed.clone());
        self.release_now(&e.lease_id, &mut rec, "released by the renter")
            .await?;
        Ok(Some(rec))
    }

    /// Releases an active or suspended lease now (its renter's `leaseEnd`, or the end of our
    /// termination notice): removes the peer, stops metering, holds the prefixes for what is
    /// left of the reserve period, audits. The caller holds the lease's lock.
    pub(super) async fn release_now(
        &self,
        lease_id: &str,
        rec: &mut ProviderLease,
        reason: &str,
    ) -> Result<(), MarketError> {
        let i = &self.inner;
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
        // Credit left when the lease ended: at the end of our notice if that is what ended
        // it (metering may run a little later), otherwise now.
        let end = notice_end(rec).filter(|e| *e <= now).unwrap_or(now);
        let unused = rec.remaining_credit(end);
        if rec.refund.is_none() {
            rec.refund = super::ProviderRefund::frozen(rec, end);
        }
        let refund_due = rec.refund.as_ref().map_or(0, |r| r.due_sat);
        rec.state = t.state;
        rec.prefixes_held_until = Some(held_until);
        i.leases.put(lease_id, rec).await?;
        self.audit(
            AuditKind::LeaseReleased,
            json!({"lease_id": lease_id, "reason": reason, "renter": rec.renter_peer,
                   "unused_credit_sat": unused, "refund_due_sat": refund_due,
                   "prefixes_held_until": held_until}),
        )
        .await;
        tracing::info!(lease_id, held_until, reason, "lease released");
        // Prefixes whose hold is already over go back at once.
        self.free_held_prefixes(lease_id, rec).await
    }

    /// Gives notice that we end `lease_id` in `notice` from now: a signed
    /// [`TerminationNotice`] the renter sees in `status`. Top-ups are refused from now on; at
    /// the end of the notice metering releases the lease. Giving notice again replaces the
    /// end time.
    ///
    /// # Errors
    /// [`MarketError::NotFound`] for an unknown lease, [`MarketError::Invalid`] for a released
    /// one.
    pub async fn terminate(
        &self,
        lease_id: &str,
        notice: std::time::Duration,
    ) -> Result<ProviderLease, MarketError> {
        let i = &self.inner;
        let id = lease_id.to_owned();
        let _lease = i.lease_locks.lock(&id).await;
        let mut rec = i
            .leases
            .get(&id)?
            .ok_or_else(|| MarketError::NotFound(format!("lease {id}")))?;
        if rec.state == LeaseState::Released {
            return Err(MarketError::Invalid(format!(
                "lease {id} is already released"
            )));
        }
        let now = self.now();
        let notice = TerminationNotice {
            lease_id: id.clone(),
            provider: i.peer_id.to_string(),
            renter: rec.renter_peer.clone(),
            issued_at: now,
            ends_at: now.saturating_add(notice.as_secs()),
        };
        rec.termination =
            Some(Signed::sign(&i.key, &notice).map_err(|e| MarketError::Store(e.to_string()))?);
        i.leases.put(&id, &rec).await?;
        self.audit(
            AuditKind::LeaseTerminated,
            json!({"lease_id": id, "renter": rec.renter_peer, "ends_at": notice.ends_at,
                   "unused_credit_sat": rec.remaining_credit(notice.ends_at)}),
        )
        .await;
        tracing::info!(lease_id = %id, ends_at = notice.ends_at, "termination notice given");
        if notice.ends_at <= now {
            self.release_now(&id, &mut rec, "terminated by the provider")
                .await?;
        }
        Ok(rec)
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

/// When our termination notice of `rec` ends the lease, if we gave one.
pub(super) fn notice_end(rec: &ProviderLease) -> Option<u64> {
    rec.termination
        .as_ref()
        .and_then(|n| n.verify().ok())
        .map(|n| n.ends_at)
}
