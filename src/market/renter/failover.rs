//! Failover: every active lease's tunnel is checked periodically ([`Tunnel::verify`]); when
//! `renter.failover_grace` is set (it is by default), a
//! lease whose tunnel has been dead for longer than `renter.failover_grace`, whose provider
//! gave termination notice, or whose provider was dropped for failing
//! `renter.drop_after_failures` requests in a row is replaced, when AutoPay is on for it, by a
//! lease of the same families and prefix sizes from another provider, bought through the
//! normal payer path (invoice checks, spending limits, never paying a provider that has not
//! delivered). The old lease gets no more top-ups.
//!
//! At most one replacement per lease, across ticks and restarts: the new lease's id is stored
//! in the old lease's [`FailoverRecord`] before anything is paid. A record naming a lease
//! that has not arrived is retried only when no payment for that lease can have gone out
//! (none recorded, or all failed); otherwise payment recovery delivers it and it is linked
//! on a later pass.

use super::autopay::Probe;
use super::payment::PayState;
use super::*;

/// What the periodic tunnel checks saw of one lease. Times are unix seconds on the renter's
/// clock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHealth {
    /// When the tunnel was last checked (0: never).
    #[serde(default)]
    pub last_check_at: u64,
    /// When a check last found the tunnel working (handshake and probe).
    #[serde(default)]
    pub last_ok_at: Option<u64>,
    /// Since when every check has found the tunnel dead; `None` while it works or cannot be
    /// checked.
    #[serde(default)]
    pub dead_since: Option<u64>,
    /// Why the last check did not find the tunnel working (dead, or cannot be checked).
    #[serde(default)]
    pub last_error: Option<String>,
}

/// The decision to replace a lease by one from another provider, stored on the old lease
/// before anything is paid.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRecord {
    /// When the failover was decided, unix seconds.
    pub decided_at: u64,
    /// Why: dead tunnel, termination notice or vanished provider.
    pub reason: String,
    /// The lease bought instead, known once its provider's invoice arrived (stored before
    /// paying it).
    #[serde(default)]
    pub new_lease: Option<String>,
    /// The provider of the new lease.
    #[serde(default)]
    pub new_provider: Option<String>,
    /// When the new lease was received and applied; the failover is then over.
    #[serde(default)]
    pub done_at: Option<u64>,
    /// Attempts to buy a replacement so far.
    #[serde(default)]
    pub attempts: u32,
    /// Why the last attempt bought nothing (retried on the next pass).
    #[serde(default)]
    pub last_error: Option<String>,
}

impl Renter {
    /// Checks the tunnel of every active lease not already replaced, then fails over the
    /// leases that need it (see the module docs). Runs at the start of every AutoPay pass.
    ///
    /// # Errors
    /// Only when the rentals cannot be read; a failing lease is logged and audited and the
    /// pass goes on with the others.
    pub async fn failover_tick(&self) -> Result<(), MarketError> {
        self.failover_pass().await.map(|_| ())
    }

    /// [`Renter::failover_tick`], returning the tunnel check made of each lease, by id.
    pub(super) async fn failover_pass(&self) -> Result<HashMap<String, Probe>, MarketError> {
        let mut probes = HashMap::new();
        for r in self.rentals()? {
            if r.state != LeaseState::Active
                || r.failover.as_ref().is_some_and(|f| f.done_at.is_some())
            {
                continue;
            }
            let id = r.lease.lease_id.clone();
            match self.check_health(&id).await {
                Ok(Some(p)) => {
                    probes.insert(id.clone(), p);
                }
                Ok(None) => {}
                Err(e) => self.item_failed("health check", "lease_id", &id, &e).await,
            }
            if self.inner.cfg.failover_grace.is_some()
                && let Err(e) = self.failover_one(&id).await
            {
                self.item_failed("failover", "lease_id", &id, &e).await;
            }
        }
        Ok(probes)
    }

    /// One tunnel check of a lease, recorded in its [`LeaseHealth`] (not in the provider's
    /// history: AutoPay counts the checks it pays on, see `verify_tunnel`).
    async fn check_health(&self, id: &str) -> Result<Option<Probe>, MarketError> {
        let Some(r) = self.inner.rentals.get(id)? else {
            return Ok(None);
        };
        let probe = self.probe_tunnel(&r).await;
        let now = self.now();
        let mut went_down = false;
        let mut came_up = false;
        self.inner
            .rentals
            .update(id, |cur| {
                let Some(cur) = cur else { return Ok(None) };
                let mut r = cur.clone();
                let h = &mut r.health;
                h.last_check_at = now;
                match &probe {
                    Probe::Up => {
                        came_up = h.dead_since.is_some();
                        h.last_ok_at = Some(now);
                        h.dead_since = None;
                        h.last_error = None;
                    }
                    Probe::Down(why) | Probe::Error(why) => {
                        went_down = h.dead_since.is_none();
                        h.dead_since.get_or_insert(now);
                        h.last_error = Some(why.clone());
                    }
                    Probe::Unknown(why) => h.last_error = Some(why.clone()),
                }
                Ok(Some(r))
            })
            .await?;
        if went_down {
            tracing::warn!(lease_id = id, provider = %r.lease.provider,
                "tunnel check failed; failing over if it stays dead past the grace period");
        } else if came_up {
            tracing::info!(lease_id = id, "tunnel works again");
        }
        Ok(Some(probe))
    }

    /// Why lease `r` must be replaced now, if it must.
    fn failover_trigger(&self, r: &Rental) -> Option<String> {
        if let Some(ends_at) = r.terminates_at() {
            return Some(format!(
                "the provider gave notice: the lease ends at {ends_at}"
            ));
        }
        let now = self.now();
        if let (Some(grace), Some(since)) = (self.inner.cfg.failover_grace, r.health.dead_since)
            && now.saturating_sub(since) > grace.as_secs()
        {
            return Some(format!(
                "the tunnel has been dead for {}s (grace {}s): {}",
                now - since,
                grace.as_secs(),
                r.health.last_error.as_deref().unwrap_or("check failed")
            ));
        }
        let limit = self.inner.cfg.drop_after_failures;
        if limit > 0
            && let Ok(Some(h)) = self.inner.providers.get(&r.lease.provider)
            && h.consecutive_failures >= limit
        {
            return Some(format!(
                "the provider failed {} requests in a row and was dropped from the offer list",
                h.consecutive_failures
            ));
        }
        None
    }

    /// Whether a payment for `lease_id` may have gone out (one is recorded and not failed).
    fn payment_for_lease(&self, lease_id: &str) -> Result<bool, MarketError> {
        Ok(self
            .inner
            .payments
            .all()?
            .into_iter()
            .any(|(_, p)| p.lease_id == lease_id && p.state != PayState::Failed))
    }

    /// Updates the rental `id` with `f`.
    async fn edit_rental(&self, id: &str, f: impl Fn(&mut Rental)) -> Result<Rental, MarketError> {
        self.inner
            .rentals
            .update(id, |cur| {
                let mut r = cur
                    .cloned()
                    .ok_or_else(|| MarketError::NotFound(format!("lease {id}")))?;
                f(&mut r);
                Ok(Some(r))
            })
            .await?
            .ok_or_else(|| MarketError::NotFound(format!("lease {id}")))
    }

    /// Fails lease `id` over if it must (see the module docs). Holds the old lease's lock
    /// throughout, so one pass at a time works on it.
    async fn failover_one(&self, id: &str) -> Result<(), MarketError> {
        let _lease = self.inner.lease_locks.lock(id).await;
        let Some(r) = self.inner.rentals.get(id)? else {
            return Ok(());
        };
        if r.state != LeaseState::Active {
            return Ok(());
        }
        if let Some(f) = &r.failover {
            if f.done_at.is_some() {
                return Ok(());
            }
            if let Some(new) = &f.new_lease {
                if self.inner.rentals.get(new)?.is_some() {
                    // Bought earlier (perhaps delivered by payment recovery): link it.
                    return self.failover_done(id, new).await;
                }
                if self.payment_for_lease(new)? {
                    // Paid (or possibly paid): payment recovery fetches the lease; never buy
                    // a second one meanwhile.
                    return Ok(());
                }
                // Nothing went out for it: free to try again below.
            }
        }
        let Some(reason) = self.failover_trigger(&r) else {
            if r.failover.is_some() || r.failover_note.is_some() {
                // Nothing was bought and the lease is fine again: the decision lapses.
                self.edit_rental(id, |r| {
                    r.failover = None;
                    r.failover_note = None;
                })
                .await?;
                tracing::info!(lease_id = id, "lease recovered; failover called off");
            }
            return Ok(());
        };
        if !r.autopay {
            let note = format!(
                "needs a failover ({reason}), but AutoPay is off for this lease: nothing is \
                 bought automatically; rent a replacement by hand or switch AutoPay on"
            );
            if r.failover_note.as_deref() != Some(note.as_str()) {
                tracing::warn!(lease_id = id, "{note}");
                self.edit_rental(id, |r| r.failover_note = Some(note.clone()))
                    .await?;
            }
            return Ok(());
        }
        // The decision is durable before anything is asked of another provider.
        let first = r.failover.is_none();
        let now = self.now();
        let rec = self
            .edit_rental(id, |r| {
                let f = r.failover.get_or_insert_with(|| FailoverRecord {
                    decided_at: now,
                    reason: reason.clone(),
                    ..FailoverRecord::default()
                });
                f.new_lease = None;
                f.new_provider = None;
                f.attempts = f.attempts.saturating_add(1);
                r.failover_note = None;
            })
            .await?;
        if first {
            tracing::warn!(lease_id = id, provider = %r.lease.provider, %reason, "failing over");
            self.audit(
                AuditKind::Failover,
                json!({"lease_id": id, "provider": r.lease.provider, "reason": reason,
                       "phase": "decided"}),
            )
            .await;
        }
        let outcome = self.buy_replacement(&rec).await;
        match outcome {
            Ok(new) => self.failover_done(id, &new).await,
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(lease_id = id, error = %msg, "failover bought nothing yet; retrying on the next pass");
                self.edit_rental(id, |r| {
                    if let Some(f) = r.failover.as_mut() {
                        f.last_error = Some(msg.clone());
                    }
                })
                .await?;
                Ok(())
            }
        }
    }

    /// The prefix sizes of a lease: (IPv4, IPv6) prefix lengths, `None` for a family it lacks.
    pub(super) fn lease_sizes(lease: &Lease) -> Sizes {
        let len = |p: &Option<String>| {
            p.as_deref()
                .and_then(|s| s.parse::<IpNet>().ok())
                .map(|n| n.prefix_len())
        };
        Sizes {
            ipv4: len(&lease.ipv4),
            ipv6: len(&lease.ipv6),
        }
    }

    /// Rents the best offer of another provider serving `old`'s families and sizes, with the
    /// AutoPay high watermark's worth of credit (raised to the offer's minimum). Returns the
    /// new lease's id.
    async fn buy_replacement(&self, old: &Rental) -> Result<String, MarketError> {
        let id = old.lease.lease_id.as_str();
        let sizes = Self::lease_sizes(&old.lease);
        let high = self.inner.cfg.autopay.high_watermark;
        let credit_for = |t: &crate::types::Terms| {
            let c =
                u128::from(high.as_secs()) * u128::from(t.rate_sat_per_day) / u128::from(DAY_SECS);
            u64::try_from(c).unwrap_or(u64::MAX).max(1)
        };
        // Same families and sizes as the old lease, the configured filters, ranked at the
        // effective rate of those sizes.
        let filters = self.inner.cfg.filters();
        let candidates = |me: &Self| -> Vec<(KnownOffer, crate::types::Terms)> {
            me.usable_offers(None, sizes, &filters)
                .0
                .into_iter()
                .filter(|(o, _)| o.peer != old.lease.provider)
                .filter(|(_, t)| select::price(t, credit_for(t)).is_some())
                .filter(|(o, _)| me.payable(&o.peer))
                .collect()
        };
        let mut offers = candidates(self);
        if offers.is_empty() {
            if let Err(e) = self.discover().await {
                tracing::debug!(error = %e, "discovery failed");
            }
            offers = candidates(self);
        }
        let mut last = MarketError::NoOffer(format!(
            "no offer from another provider serves {sizes} within the limits and filters"
        ));
        for (offer, terms) in offers {
            let credit = credit_for(&terms);
            match self.rent_offer(&offer, credit, sizes, Some(id)).await {
                Ok(new) => return Ok(new.lease.lease_id),
                Err(e) => {
                    tracing::warn!(lease_id = id, offer_id = %offer.offer_id, error = %e,
                        "failover: offer failed");
                    // Anything that may have paid ends the attempt: the record names the
                    // lease, and recovery or the next pass finishes it. Otherwise the next
                    // offer may be tried.
                    let named = self
                        .inner
                        .rentals
                        .get(id)?
                        .and_then(|r| r.failover.and_then(|f| f.new_lease));
                    if let Some(new) = named {
                        if self.payment_for_lease(&new)? {
                            return Err(e);
                        }
                        self.edit_rental(id, |r| {
                            if let Some(f) = r.failover.as_mut() {
                                f.new_lease = None;
                                f.new_provider = None;
                            }
                        })
                        .await?;
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Called by [`Renter::rent_offer`] with the invoice in hand, before paying: stores which
    /// lease replaces `old` (refused if `old` already has one).
    pub(super) async fn failover_buying(
        &self,
        old: &str,
        new: &str,
        provider: &str,
    ) -> Result<(), MarketError> {
        let r = self.inner.rentals.get(old)?;
        if let Some(other) = r
            .as_ref()
            .and_then(|r| r.failover.as_ref())
            .and_then(|f| f.new_lease.clone())
            .filter(|n| n != new)
        {
            return Err(MarketError::Invalid(format!(
                "lease {old} is already being replaced by {other}"
            )));
        }
        self.edit_rental(old, |r| {
            if let Some(f) = r.failover.as_mut() {
                f.new_lease = Some(new.to_owned());
                f.new_provider = Some(provider.to_owned());
            }
        })
        .await?;
        Ok(())
    }

    /// The replacement `new` of lease `old` is in hand: both are marked and it is audited.
    async fn failover_done(&self, old: &str, new: &str) -> Result<(), MarketError> {
        let now = self.now();
        let before = self.inner.rentals.get(old)?;
        let was_done = before
            .as_ref()
            .and_then(|r| r.failover.as_ref())
            .is_some_and(|f| f.done_at.is_some());
        let r = self
            .edit_rental(old, |r| {
                if let Some(f) = r.failover.as_mut() {
                    f.new_lease = Some(new.to_owned());
                    f.done_at.get_or_insert(now);
                    f.last_error = None;
                }
            })
            .await?;
        let n = self
            .edit_rental(new, |n| n.failed_over_from = Some(old.to_owned()))
            .await?;
        if !was_done {
            let reason = r.failover.map(|f| f.reason).unwrap_or_default();
            tracing::warn!(lease_id = old, new_lease_id = new, new_provider = %n.lease.provider,
                "failed over; the old lease gets no more top-ups");
            self.audit(
                AuditKind::Failover,
                json!({"lease_id": old, "provider": r.lease.provider, "reason": reason,
                       "phase": "done", "new_lease_id": new,
                       "new_provider": n.lease.provider}),
            )
            .await;
        }
        Ok(())
    }
}

impl Rental {
    /// `status` text for this lease's failover, if any: "failed over to …", "failing over …",
    /// or why a failover it needs is not done.
    pub fn failover_status(&self) -> Option<String> {
        let r = self;
        if let Some(f) = &r.failover {
            return Some(match (&f.new_lease, f.done_at) {
                (Some(new), Some(_)) => format!("failed over to {new} ({})", f.reason),
                (Some(new), None) => {
                    format!(
                        "failing over to {new}: paid, waiting for the lease ({})",
                        f.reason
                    )
                }
                (None, _) => format!(
                    "failing over ({}); no replacement yet{}",
                    f.reason,
                    f.last_error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
            });
        }
        r.failover_note.clone()
    }
}
