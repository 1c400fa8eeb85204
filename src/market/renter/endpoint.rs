//! Following the provider when it moves: lease revisions that change its endpoint or
//! WireGuard key, and DNS endpoints whose address changes.
//!
//! Neither costs anything: a revision is re-signed by the provider without a payment (see
//! docs/PROTOCOL.md, "Lease revisions"), and the renter only re-points its tunnel's peer.

use std::net::SocketAddr;

use super::*;

/// How long one DNS look-up of a provider's endpoint may take before the tick gives up on it
/// (the tunnel keeps the address it has).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

impl Renter {
    /// Checks a newer revision of a lease against the one held: it may change the provider's
    /// endpoint and WireGuard key, and add credit, nothing else. A refusal is audited
    /// (`lease_revision_refused`) and the held lease stays.
    pub(super) async fn check_revision(
        &self,
        held: &Lease,
        new: &Lease,
    ) -> Result<(), MarketError> {
        let reason = if new.ipv4 != held.ipv4
            || new.ipv6 != held.ipv6
            || new.allowed_ips != held.allowed_ips
        {
            Some("it changes the leased addresses")
        } else if new.renter_wg_pubkey != held.renter_wg_pubkey {
            Some("it changes the renter's WireGuard key")
        } else if new.credit_sat < held.credit_sat || new.paid_until < held.paid_until {
            Some("it reduces the credit")
        } else if new.terms != held.terms
            || new.activated_at != held.activated_at
            || new.offer_id != held.offer_id
            || new.payment_hash != held.payment_hash
        {
            Some("it changes the terms or the lease's origin")
        } else {
            None
        };
        let Some(reason) = reason else {
            return Ok(());
        };
        tracing::warn!(lease_id = %held.lease_id, revision = new.revision, reason, "lease revision refused");
        self.audit(
            AuditKind::LeaseRevisionRefused,
            json!({"lease_id": held.lease_id, "provider": held.provider,
                   "held_revision": held.revision, "revision": new.revision, "reason": reason}),
        )
        .await;
        Err(MarketError::BadSigned {
            what: "lease revision",
            reason: reason.into(),
        })
    }

    /// Re-points the tunnel of `now` (the rental as just stored) when its lease moved the
    /// provider's endpoint or WireGuard key away from `before`'s: the old peer goes (for a new
    /// key), the new peer and the wg-quick file are written. Nothing is paid. A released rental
    /// has no tunnel left to move.
    pub(super) async fn follow_revision(
        &self,
        before: &Lease,
        now: &Rental,
    ) -> Result<(), MarketError> {
        let key_changed = before.provider_wg_pubkey != now.lease.provider_wg_pubkey;
        if (before.endpoint == now.lease.endpoint && !key_changed)
            || now.state == LeaseState::Released
        {
            return Ok(());
        }
        let i = &self.inner;
        if key_changed {
            i.tunnel
                .remove_peer(&now.iface, &before.provider_wg_pubkey)
                .await?;
        }
        self.apply_tunnel(&now.lease, &now.iface, now.wg_key_id.as_deref())
            .await?;
        // The address resolved for the old endpoint no longer says anything.
        self.forget_resolved(&now.lease.lease_id);
        self.audit(
            AuditKind::LeaseRevised,
            json!({"lease_id": now.lease.lease_id, "revision": now.lease.revision,
                   "old_endpoint": before.endpoint, "endpoint": now.lease.endpoint,
                   "key_changed": key_changed, "iface": now.iface}),
        )
        .await;
        tracing::info!(lease_id = %now.lease.lease_id, revision = now.lease.revision,
            old_endpoint = %before.endpoint, endpoint = %now.lease.endpoint, key_changed,
            "provider moved; tunnel re-pointed");
        Ok(())
    }

    /// Resolves a `host:port` endpoint of a lease that is not released again, and points the
    /// tunnel's peer at the new address when it changed. An address still among the answers is
    /// kept (no flapping between a name's several addresses); an IP literal needs nothing.
    /// A failed look-up leaves the tunnel as it is.
    pub(super) async fn reresolve_endpoint(&self, id: &str) -> Result<(), MarketError> {
        let i = &self.inner;
        let Some(r) = i.rentals.get(id)? else {
            return Ok(());
        };
        let endpoint = r.lease.endpoint.as_str();
        if r.state == LeaseState::Released || endpoint.parse::<SocketAddr>().is_ok() {
            return Ok(());
        }
        let addrs: Vec<SocketAddr> =
            match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(endpoint)).await {
                Ok(Ok(addrs)) => addrs.collect(),
                Ok(Err(e)) => {
                    return Err(MarketError::Net(format!("cannot resolve {endpoint}: {e}")));
                }
                Err(_) => return Err(MarketError::Net(format!("resolving {endpoint} timed out"))),
            };
        let previous = self.resolved_endpoint(id);
        if previous.is_some_and(|p| addrs.contains(&p)) {
            return Ok(());
        }
        let Some(addr) = addrs.first().copied() else {
            return Err(MarketError::Net(format!("{endpoint} has no address")));
        };
        let peer = self.provider_peer(&r.lease, addr.to_string());
        i.tunnel.add_peer(&r.iface, &peer).await?;
        i.resolved
            .lock()
            .expect("resolved endpoints not poisoned")
            .insert(id.to_owned(), addr);
        match previous {
            Some(old) => {
                tracing::info!(lease_id = %id, endpoint, %old, new = %addr, "provider endpoint resolves to a new address; tunnel re-pointed")
            }
            None => tracing::debug!(lease_id = %id, endpoint, %addr, "provider endpoint resolved"),
        }
        Ok(())
    }

    /// The address `id`'s endpoint last resolved to, if it was resolved by this run.
    pub fn resolved_endpoint(&self, id: &str) -> Option<SocketAddr> {
        self.inner
            .resolved
            .lock()
            .expect("resolved endpoints not poisoned")
            .get(id)
            .copied()
    }

    /// Forgets what `id`'s endpoint resolved to (its endpoint changed).
    fn forget_resolved(&self, id: &str) {
        self.inner
            .resolved
            .lock()
            .expect("resolved endpoints not poisoned")
            .remove(id);
    }
}
