//! AutoPay: keeps each lease's prepaid credit between a low and a high watermark, paying only
//! for a tunnel it has just verified, under terms that have not changed, within the spending
//! limits. The provider's signed lease is the one ledger: every decision starts from a fresh
//! status, so a manual top-up made meanwhile is counted, and the renter never holds more
//! prepaid credit than the high watermark.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::*;
use crate::market::limits::serde_duration;
use crate::tunnel::{ProbeSpec, TunnelError};

/// `[renter.autopay]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutopayConfig {
    /// AutoPay for new leases (each lease can be switched on or off on its own).
    pub enabled: bool,
    /// Top up when less than this much paid time remains ("12h").
    #[serde(with = "serde_duration")]
    pub low_watermark: Duration,
    /// Top up to this much paid time ("1d"); never hold more. With the low watermark it bounds
    /// what a provider that vanishes can keep (docs/PAYMENTS.md, "Exposure").
    #[serde(with = "serde_duration")]
    pub high_watermark: Duration,
    /// How often leases are looked at.
    #[serde(with = "serde_duration")]
    pub check_interval: Duration,
    /// A tunnel whose last WireGuard handshake is older than this is not verified ("3m":
    /// WireGuard re-keys every 2 minutes while traffic flows; keepalives keep it flowing).
    #[serde(with = "serde_duration")]
    pub max_handshake_age: Duration,
    /// How long to wait for the probe through the tunnel.
    #[serde(with = "serde_duration")]
    pub probe_timeout: Duration,
}

impl Default for AutopayConfig {
    fn default() -> Self {
        AutopayConfig {
            enabled: true,
            // About one day ahead at most: a vanished provider keeps at most about a day of
            // credit (plus the activation fee and one undelivered invoice).
            low_watermark: Duration::from_secs(DAY_SECS / 2),
            high_watermark: Duration::from_secs(DAY_SECS),
            check_interval: Duration::from_secs(60),
            max_handshake_age: Duration::from_secs(180),
            probe_timeout: Duration::from_secs(5),
        }
    }
}

impl AutopayConfig {
    /// Checks the watermarks are usable.
    ///
    /// # Errors
    /// A message naming the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.low_watermark >= self.high_watermark {
            return Err("renter.autopay.low_watermark must be below high_watermark".into());
        }
        if self.check_interval.is_zero() || self.probe_timeout.is_zero() {
            return Err("renter.autopay.check_interval and probe_timeout must be positive".into());
        }
        Ok(())
    }
}

/// The last thing AutoPay did or refused for a lease, for `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutopayNote {
    /// Unix time.
    pub at: u64,
    /// True when it paid.
    pub paid: bool,
    /// What happened, as a sentence.
    pub message: String,
}

/// Counters kept per rental.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RentalStats {
    /// Payments this node made for the lease (activation and top-ups).
    pub payments: u32,
    /// Top-ups credited (AutoPay, `add-credit` and manual).
    pub topups: u32,
    /// Top-ups made by AutoPay.
    pub autopay_topups: u32,
    /// Times AutoPay did not pay because the tunnel could not be verified.
    pub refused_unverified: u32,
    /// The last AutoPay decision that was not "nothing to do".
    pub last_autopay: Option<AutopayNote>,
}

/// Why AutoPay did not pay.
enum Skip {
    /// The tunnel could not be verified.
    Unverified(String),
    /// Anything else (terms changed, limits, provider unreachable...).
    Other(String),
}

impl Renter {
    /// One AutoPay pass: the health checks and failovers of [`Renter::failover_tick`], then a
    /// top-up check of every active lease with AutoPay on that has not been replaced.
    ///
    /// # Errors
    /// Only when the rentals cannot be read; a failing lease is logged and audited and the
    /// pass goes on with the others.
    pub async fn autopay_tick(&self) -> Result<(), MarketError> {
        // Health checks and failover first; a lease that failed over gets no more top-ups.
        // The tunnel checks of this pass are reused below rather than probing twice.
        let mut probes = self.failover_pass().await?;
        for r in self.rentals()? {
            if r.autopay
                && r.state == LeaseState::Active
                // Replaced (or being replaced: a new lease is bought or paid for): no more
                // top-ups. A failover still looking for an offer leaves AutoPay to say why it
                // does not pay.
                && r.failover.as_ref().is_none_or(|f| f.new_lease.is_none())
                && let Err(e) = self
                    .autopay_one(&r.lease.lease_id, probes.remove(&r.lease.lease_id))
                    .await
            {
                self.item_failed("autopay", "lease_id", &r.lease.lease_id, &e)
                    .await;
            }
        }
        Ok(())
    }

    /// Switches AutoPay on or off for one lease. Synchronous for its callers: it waits for
    /// one small durable write and holds no lock meanwhile.
    pub fn set_autopay(&self, lease_id: &str, on: bool) -> Result<Rental, MarketError> {
        let id = self.rental(lease_id)?.lease.lease_id;
        let r = self
            .inner
            .rentals
            .update_blocking(&id, |cur| {
                let mut r = cur
                    .cloned()
                    .ok_or_else(|| MarketError::NotFound(format!("lease {id}")))?;
                r.autopay = on;
                Ok(Some(r))
            })?
            .ok_or_else(|| MarketError::NotFound(format!("lease {id}")))?;
        tracing::info!(lease_id = %r.lease.lease_id, on, "autopay switched");
        Ok(r)
    }

    async fn autopay_one(&self, lease_id: &str, probe: Option<Probe>) -> Result<(), MarketError> {
        // Only this lease's top-ups wait for it (and it for them).
        let _lease = self.inner.lease_locks.lock(lease_id).await;
        let ap = &self.inner.cfg.autopay;
        let low = ap.low_watermark.as_secs();
        let local = self.rental(lease_id)?;
        if local.lease.paid_until.saturating_sub(self.now()) >= low {
            return Ok(());
        }
        let outcome = self.autopay_decide(lease_id, probe).await;
        let r = self.rental(lease_id)?;
        let mut refused_unverified = false;
        let note = match outcome {
            Ok(None) => return Ok(()),
            Ok(Some(amount)) => AutopayNote {
                at: self.now(),
                paid: true,
                message: format!("topped up {amount} sat; paid until {}", r.lease.paid_until),
            },
            Err(skip) => {
                let (message, unverified) = match skip {
                    Skip::Unverified(m) => (format!("tunnel not verified: {m}"), true),
                    Skip::Other(m) => (m, false),
                };
                refused_unverified = unverified;
                self.audit(
                    AuditKind::AutopayRefused,
                    json!({"lease_id": lease_id, "reason": message, "unverified": unverified}),
                )
                .await;
                tracing::warn!(lease_id, reason = %message, "autopay did not pay");
                AutopayNote {
                    at: self.now(),
                    paid: false,
                    message,
                }
            }
        };
        self.inner
            .rentals
            .update(lease_id, |cur| {
                let mut r = cur
                    .cloned()
                    .ok_or_else(|| MarketError::NotFound(format!("lease {lease_id}")))?;
                if refused_unverified {
                    r.stats.refused_unverified += 1;
                }
                r.stats.last_autopay = Some(note.clone());
                Ok(Some(r))
            })
            .await?;
        Ok(())
    }

    /// Decides and, when everything checks out, pays. `Ok(None)`: nothing to do.
    async fn autopay_decide(
        &self,
        lease_id: &str,
        probe: Option<Probe>,
    ) -> Result<Option<Sats>, Skip> {
        let ap = &self.inner.cfg.autopay;
        // The provider's signed lease, not our estimate: manual top-ups count.
        let r = self
            .refresh(lease_id)
            .await
            .map_err(|e| Skip::Other(format!("cannot get the provider's status: {e}")))?;
        if r.state != LeaseState::Active {
            return Err(Skip::Other(format!(
                "the provider reports the lease {:?}",
                r.state
            )));
        }
        // --- issue 9, leases helper: a lease under termination notice gets no more top-ups.
        if let Some(ends_at) = r.terminates_at() {
            return Err(Skip::Other(format!(
                "the provider is ending this lease at {ends_at} (termination notice)"
            )));
        }
        // --- end of the termination check.
        let now = self.now();
        let remaining = r.lease.paid_until.saturating_sub(now);
        if remaining >= ap.low_watermark.as_secs() {
            return Ok(None);
        }
        let amount = topup_amount(&r.lease, now, ap.high_watermark).map_err(Skip::Other)?;
        // No further payment to a provider that has not delivered an earlier one; checked
        // before the tunnel probe and the offer fetch, as nothing could be paid anyway.
        self.refuse_if_undelivered(&r.lease.provider, lease_id, amount)
            .await
            .map_err(|e| Skip::Other(e.to_string()))?;
        self.verify_tunnel(&r, probe)
            .await
            .map_err(Skip::Unverified)?;
        let current = self
            .fetch_offer_str(&r.lease.provider)
            .await
            .map_err(|e| Skip::Other(format!("cannot fetch the provider's current offer: {e}")))?;
        // The lease holds the effective terms of its sizes: compare like with like.
        let current_terms =
            crate::market::sizes::effective_terms(&current.offer, Self::lease_sizes(&r.lease)).ok();
        if current_terms.as_ref() != Some(&r.lease.terms)
            || current.offer.ln_pubkey != r.provider_ln_pubkey
        {
            return Err(Skip::Other(
                "the provider's terms or Lightning node changed since the lease was made; \
                 top up by hand after reviewing them"
                    .into(),
            ));
        }
        self.top_up(lease_id, amount, true)
            .await
            .map_err(|e| Skip::Other(e.to_string()))?;
        Ok(Some(amount))
    }

    /// A recent WireGuard handshake with the provider and a probe answered through the tunnel;
    /// `done` is a check this pass already made.
    async fn verify_tunnel(&self, r: &Rental, done: Option<Probe>) -> Result<(), String> {
        let probe = match done {
            Some(p) => p,
            None => self.probe_tunnel(r).await,
        };
        // Only a check that ran counts in the provider's history; a backend that cannot
        // verify says nothing about the provider.
        match probe {
            Probe::Up => {
                self.note_check(&r.lease.provider, true).await;
                Ok(())
            }
            Probe::Down(why) => {
                self.note_check(&r.lease.provider, false).await;
                Err(why)
            }
            Probe::Error(why) | Probe::Unknown(why) => Err(why),
        }
    }

    /// Checks a lease's tunnel with [`Tunnel::verify`]: a recent handshake and an echo
    /// answered through it. Records nothing.
    pub(super) async fn probe_tunnel(&self, r: &Rental) -> Probe {
        let ap = &self.inner.cfg.autopay;
        let sources: Vec<IpAddr> = match lease_addresses(&r.lease) {
            Ok(a) => a.iter().map(|n| n.addr()).collect(),
            Err(e) => return Probe::Unknown(e.to_string()),
        };
        let targets: Vec<IpAddr> = match tokio::net::lookup_host(r.lease.endpoint.as_str()).await {
            Ok(a) => a.map(|a| a.ip()).collect(),
            Err(e) => {
                return Probe::Error(format!(
                    "cannot resolve the endpoint {}: {e}",
                    r.lease.endpoint
                ));
            }
        };
        let Some((source, target)) = sources.iter().find_map(|s| {
            targets
                .iter()
                .find(|t| t.is_ipv4() == s.is_ipv4())
                .map(|t| (*s, *t))
        }) else {
            return Probe::Unknown(
                "no leased address of the endpoint's address family to probe from".into(),
            );
        };
        let spec = ProbeSpec {
            source,
            target,
            timeout: ap.probe_timeout,
            attempts: 3,
        };
        let check = match self
            .inner
            .tunnel
            .verify(&r.iface, &r.lease.provider_wg_pubkey, &spec)
            .await
        {
            Ok(c) => c,
            Err(TunnelError::Unsupported(m)) => return Probe::Unknown(m),
            Err(e) => return Probe::Error(format!("verification failed: {e}")),
        };
        match check.reason(ap.max_handshake_age) {
            None => {
                tracing::debug!(lease_id = %r.lease.lease_id, rtt = ?check.probe_rtt, "tunnel verified");
                Probe::Up
            }
            Some(why) => Probe::Down(why),
        }
    }
}

/// What one tunnel check found.
#[derive(Clone, Debug)]
pub(super) enum Probe {
    /// Handshake recent and the probe answered.
    Up,
    /// The check ran and failed: why.
    Down(String),
    /// The check failed on our side or on the way (endpoint not resolved, backend error):
    /// the tunnel does not work, but the provider's history is not charged with it.
    Error(String),
    /// The check could not run (the backend cannot verify, nothing to probe from): why. Says
    /// nothing about the tunnel.
    Unknown(String),
}

/// Credit that brings the lease up to the high watermark, within the provider's minimum top-up
/// and maximum credit.
fn topup_amount(lease: &Lease, now: u64, high: Duration) -> Result<Sats, String> {
    let t = &lease.terms;
    let remaining_secs = lease.paid_until.saturating_sub(now);
    let want_secs = high.as_secs().saturating_sub(remaining_secs);
    // Rounded down: never hold more than the high watermark.
    let by_watermark = u64::try_from(
        u128::from(want_secs) * u128::from(t.rate_sat_per_day) / u128::from(DAY_SECS),
    )
    .unwrap_or(u64::MAX);
    let room = t.max_credit_sat.saturating_sub(lease.remaining_credit(now));
    let amount = by_watermark.min(room);
    if amount < t.min_topup_sat.max(1) {
        return Err(format!(
            "a top-up to the high watermark ({amount} sat) is below the provider's minimum of {} \
             sat; raise renter.autopay.high_watermark",
            t.min_topup_sat
        ));
    }
    Ok(amount)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Terms;

    fn lease(paid_until: u64, rate: u64, min_topup: u64, max_credit: u64) -> Lease {
        Lease {
            lease_id: "l".into(),
            provider: "p".into(),
            renter: "r".into(),
            offer_id: "o".into(),
            renter_wg_pubkey: WgKey([1; 32]),
            provider_wg_pubkey: WgKey([2; 32]),
            endpoint: "192.0.2.1:51820".into(),
            ipv4: Some("198.51.100.1/32".into()),
            ipv6: None,
            allowed_ips: vec![],
            terms: Terms {
                activation_fee_sat: 0,
                rate_sat_per_day: rate,
                min_initial_credit_sat: 0,
                min_topup_sat: min_topup,
                max_credit_sat: max_credit,
                reserve_days: 1,
                refund_unused: false,
                reservation_secs: 0,
            },
            credit_sat: 0,
            activated_at: 0,
            paid_until,
            payment_hash: String::new(),
            revision: 1,
        }
    }

    #[test]
    fn tops_up_to_the_high_watermark_and_no_further() {
        // 1 day left at 100 sat/day, high watermark 7 days: 6 days = 600 sat.
        let l = lease(1_000 + DAY_SECS, 100, 10, 10_000);
        assert_eq!(
            topup_amount(&l, 1_000, Duration::from_secs(7 * DAY_SECS)),
            Ok(600)
        );
    }

    #[test]
    fn max_credit_caps_the_top_up() {
        let l = lease(1_000 + DAY_SECS, 100, 10, 300);
        assert_eq!(
            topup_amount(&l, 1_000, Duration::from_secs(7 * DAY_SECS)),
            Ok(200)
        );
    }

    #[test]
    fn below_min_topup_is_refused_with_the_reason() {
        let l = lease(1_000 + DAY_SECS, 100, 1_000, 10_000);
        let e = topup_amount(&l, 1_000, Duration::from_secs(7 * DAY_SECS)).unwrap_err();
        assert!(e.contains("minimum of 1000"), "{e}");
    }

    #[test]
    fn default_watermarks_top_up_half_a_day_to_one_day() {
        // 11 hours left at 100 sat/day: up to 24 hours is 13 hours = 54 sat (rounded down).
        let c = AutopayConfig::default();
        let l = lease(1_000 + 11 * 3600, 100, 10, 10_000);
        assert!(
            11 * 3600 < c.low_watermark.as_secs(),
            "below the low watermark"
        );
        assert_eq!(topup_amount(&l, 1_000, c.high_watermark), Ok(54));
        // A provider whose minimum top-up is above half a day's rent is refused with the
        // reason, never paid more than the watermark allows.
        let l = lease(1_000 + 11 * 3600, 100, 100, 10_000);
        let e = topup_amount(&l, 1_000, c.high_watermark).unwrap_err();
        assert!(e.contains("minimum of 100"), "{e}");
    }

    #[test]
    fn config_defaults_and_durations() {
        let c = AutopayConfig::default();
        c.validate().unwrap();
        assert_eq!(c.low_watermark, Duration::from_secs(12 * 3600));
        assert_eq!(c.high_watermark, Duration::from_secs(DAY_SECS));
        let t: AutopayConfig =
            toml::from_str("low_watermark = \"10s\"\nhigh_watermark = \"1m\"\n").unwrap();
        assert_eq!(t.high_watermark, Duration::from_secs(60));
        assert!(toml::from_str::<AutopayConfig>("low_watermark = \"10\"\n").is_err());
        let bad = AutopayConfig {
            low_watermark: Duration::from_secs(60),
            high_watermark: Duration::from_secs(60),
            ..AutopayConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
