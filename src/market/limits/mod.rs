//! Spending limits the renter enforces on itself before paying any invoice.
//!
//! Limits are configured under `[renter.limits]` (base, all payments), optionally overridden
//! per provider (`[renter.limits.provider."<PeerId>"]`) and per lease
//! (`[renter.limits.lease."<lease id>"]`). Every setting is optional; an unset setting is no
//! limit. For each setting the most specific level that sets it wins, and that level also
//! decides which past payments the limit counts: a lease limit counts the payments for that
//! lease, a provider limit the payments to that provider, a base limit every payment.
//!
//! The history comes from the audit log ([`history_from_audit`]), so limits survive restarts
//! and cannot be bypassed by clearing some other table. A payer keeps it incrementally in a
//! [`PaymentIndex`] beside the log (rebuilt from the log when missing), so a check reads the
//! payments, not the whole log. The payer then calls [`check`] with
//! the payment it is about to make; a refusal says which limit refused, in which scope, and
//! when the same payment would be allowed.
//!
//! `maxRoutingFee` is not a refusal: the payer lowers the fee limit it hands to Lightning to
//! [`effective_routing_fee_cap`] and passes that lowered limit in [`Proposed::fee_limit_sat`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod duration;
mod history;

/// Period used by the per-period limits when no level sets `limits_period`.
pub const DEFAULT_LIMITS_PERIOD: Duration = Duration::from_secs(86_400);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// A duration string is not of the form `<positive integer><s|m|h|d>`.
    #[error(
        "invalid duration {value:?}: {reason}; expected <positive integer><unit> with unit s, m, h or d, e.g. \"10m\" or \"1d\""
    )]
    BadDuration {
        /// The rejected text.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The audit log could not be read.
    #[error("cannot read payment history from the audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// A payment entry of the audit log has a payload this module cannot understand. The
    /// history is then unknown, so callers must not pay.
    #[error("audit entry {seq} ({kind}) is not a valid payment record: {reason}")]
    BadEntry {
        /// Seq of the entry.
        seq: u64,
        /// Its kind.
        kind: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The payment history index beside the log cannot be read or written.
    #[error("payment history index: {0}")]
    Index(String),
}

pub use duration::{format_duration, parse_duration, serde_duration};
pub use history::{INDEX_TREE, PastPayment, PaymentIndex, history_from_audit};

/// One level of limit settings. Every field is optional; `None` means this level does not
/// set it (a less specific level may, else there is no such limit).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest amount of one payment, in sat, excluding routing fees (`maxTransactionSize`).
    #[serde(alias = "maxTransactionSize", skip_serializing_if = "Option::is_none")]
    pub max_transaction_size: Option<u64>,
    /// Least time between the start of two payments (`minTimeBetweenPayments`).
    #[serde(
        alias = "minTimeBetweenPayments",
        with = "serde_duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_time_between_payments: Option<Duration>,
    /// Length of the period the per-period limits count over (`limitsPeriod`); 1 day when a
    /// per-period limit is set and no level sets this.
    #[serde(
        alias = "limitsPeriod",
        with = "serde_duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub limits_period: Option<Duration>,
    /// `true` (the default): the period is the window ending now. `false`: calendar periods,
    /// whose boundaries are multiples of the period since the Unix epoch (so `1d` is a UTC
    /// day) (`useRollingLimitsPeriod`).
    #[serde(
        alias = "useRollingLimitsPeriod",
        skip_serializing_if = "Option::is_none"
    )]
    pub use_rolling_limits_period: Option<bool>,
    /// Most payments started in one period (`maxTransactionsPerPeriod`).
    #[serde(
        alias = "maxTransactionsPerPeriod",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_transactions_per_period: Option<u32>,
    /// Most sat spent in one period, amounts plus routing fees (`maxAmountPerPeriod`).
    #[serde(alias = "maxAmountPerPeriod", skip_serializing_if = "Option::is_none")]
    pub max_amount_per_period: Option<u64>,
    /// Largest routing fee of one payment, in sat (`maxRoutingFee`); the payer lowers its fee
    /// limit to this rather than refusing (see [`effective_routing_fee_cap`]).
    #[serde(alias = "maxRoutingFee", skip_serializing_if = "Option::is_none")]
    pub max_routing_fee: Option<u64>,
}

/// `[renter.limits]`: base settings for all payments plus per-provider and per-lease
/// overrides.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Settings for all payments (the keys directly under `[renter.limits]`).
    #[serde(flatten)]
    pub base: LimitSettings,
    /// Overrides by provider PeerId (`[renter.limits.provider."12D3…"]`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub provider: BTreeMap<String, LimitSettings>,
    /// Overrides by lease id (`[renter.limits.lease."<id>"]`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub lease: BTreeMap<String, LimitSettings>,
}

impl LimitSettings {
    fn validate(&self, at: &str) -> Result<(), String> {
        for (key, d) in [
            ("min_time_between_payments", self.min_time_between_payments),
            ("limits_period", self.limits_period),
        ] {
            if let Some(d) = d
                && (d.as_secs() == 0 || d.subsec_nanos() != 0)
            {
                return Err(format!(
                    "{at}{key} must be a whole number of seconds above 0"
                ));
            }
        }
        Ok(())
    }
}

impl LimitsConfig {
    /// Checks the settings: durations are whole, non-zero seconds; provider keys are PeerIds;
    /// lease keys are not empty. The message names the offending key relative to
    /// `renter.limits`.
    ///
    /// # Errors
    /// A message naming the key and what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        self.base.validate("")?;
        for (peer, s) in &self.provider {
            if peer.parse::<libp2p::PeerId>().is_err() {
                return Err(format!("provider.{peer:?} is not a PeerId"));
            }
            s.validate(&format!("provider.{peer:?}."))?;
        }
        for (lease, s) in &self.lease {
            if lease.is_empty() {
                return Err("lease keys must not be empty".to_owned());
            }
            s.validate(&format!("lease.{lease:?}."))?;
        }
        Ok(())
    }

    /// The levels that apply to a payment, most specific first.
    fn levels<'a>(&'a self, provider: &'a str, lease_id: &'a str) -> Vec<Level<'a>> {
        let mut out = Vec::with_capacity(3);
        if let Some(s) = self.lease.get(lease_id).filter(|_| !lease_id.is_empty()) {
            out.push((Scope::Lease(lease_id), s));
        }
        if let Some(s) = self.provider.get(provider) {
            out.push((Scope::Provider(provider), s));
        }
        out.push((Scope::Base, &self.base));
        out
    }
}

#[derive(Clone, Copy)]
enum Scope<'a> {
    Lease(&'a str),
    Provider(&'a str),
    Base,
}

impl Scope<'_> {
    fn covers(&self, p: &PastPayment) -> bool {
        match self {
            Scope::Lease(id) => p.lease_id == *id,
            Scope::Provider(id) => p.provider == *id,
            Scope::Base => true,
        }
    }
}

impl fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Lease(id) => write!(f, "lease {id}"),
            Scope::Provider(id) => write!(f, "provider {id}"),
            Scope::Base => f.write_str("base"),
        }
    }
}

/// A level of settings that applies to a payment, with the scope it counts.
type Level<'a> = (Scope<'a>, &'a LimitSettings);

/// The first level (from `levels`) that sets a field, with its index.
fn pick<T>(levels: &[Level<'_>], f: impl Fn(&LimitSettings) -> Option<T>) -> Option<(T, usize)> {
    levels
        .iter()
        .enumerate()
        .find_map(|(i, (_, s))| f(s).map(|v| (v, i)))
}

/// The routing-fee cap (sat) for a payment to `provider` for `lease_id`, by the usual
/// precedence; `None` when no level sets `maxRoutingFee`. The payer uses
/// `min(its own fee limit, cap)` as the fee limit of the payment; [`check`] does not refuse
/// on fees.
pub fn effective_routing_fee_cap(
    cfg: &LimitsConfig,
    provider: &str,
    lease_id: &str,
) -> Option<u64> {
    pick(&cfg.levels(provider, lease_id), |s| s.max_routing_fee).map(|(v, _)| v)
}

/// A payment the renter is about to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposed {
    /// Current unix seconds.
    pub now: u64,
    /// Amount in sat, excluding fees.
    pub amount_sat: u64,
    /// The fee limit the payment will be sent with (already lowered to
    /// [`effective_routing_fee_cap`]); counted as spent in per-period totals.
    pub fee_limit_sat: u64,
    /// Provider PeerId.
    pub provider: String,
    /// Lease id (empty if not known; lease overrides then do not apply).
    pub lease_id: String,
}

/// Why a payment was refused, and when the same payment would be allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitRefusal {
    /// The setting's camelCase name, e.g. `"maxAmountPerPeriod"`.
    pub limit: &'static str,
    /// Where it was set: `"base"`, `"provider <id>"` or `"lease <id>"`.
    pub scope: String,
    /// The numbers behind the refusal.
    pub detail: String,
    /// Unix seconds from which the same payment passes this limit (given no other payment in
    /// between); `None`: never (e.g. larger than `maxTransactionSize`).
    pub next_allowed_at: Option<u64>,
}

impl fmt::Display for LimitRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "payment refused by {} ({}): {}; ",
            self.limit, self.scope, self.detail
        )?;
        match self.next_allowed_at {
            Some(t) => write!(f, "it would be allowed from {}", rfc3339(t)),
            None => f.write_str("it will never be allowed under this limit"),
        }
    }
}

impl std::error::Error for LimitRefusal {}

/// Checks a proposed payment against every limit that applies to it.
///
/// When several limits refuse, the one with the latest `next_allowed_at` (a "never" first) is
/// returned: as no limit re-closes once open while no other payment is made, that is the
/// time the payment passes all of them. Routing fees are not refused here (see
/// [`effective_routing_fee_cap`]); the proposed amount plus its fee limit counts toward the
/// per-period amount.
///
/// # Errors
/// The binding [`LimitRefusal`].
pub fn check(
    cfg: &LimitsConfig,
    history: &[PastPayment],
    p: &Proposed,
) -> Result<(), LimitRefusal> {
    let levels: &[Level<'_>] = &cfg.levels(&p.provider, &p.lease_id);
    let mut refusals = Vec::new();
    let refuse = |limit, i: usize, detail, next_allowed_at| LimitRefusal {
        limit,
        scope: levels[i].0.to_string(),
        detail,
        next_allowed_at,
    };
    let in_scope = |i: usize| history.iter().filter(move |h| levels[i].0.covers(h));
    // A per-period limit set at level i uses the period settings of level i or, where that
    // level leaves them unset, of less specific levels. A lease override of the period thus
    // never stretches or shrinks a base or provider limit.
    let period_of = |i: usize| {
        let period =
            pick(&levels[i..], |s| s.limits_period).map_or(DEFAULT_LIMITS_PERIOD, |(d, _)| d);
        let rolling = pick(&levels[i..], |s| s.use_rolling_limits_period).is_none_or(|(r, _)| r);
        Window::new(period.as_secs().max(1), rolling, p.now)
    };
    let cost = p.amount_sat.saturating_add(p.fee_limit_sat);

    if let Some((max, i)) = pick(levels, |s| s.max_transaction_size)
        && p.amount_sat > max
    {
        let detail = format!(
            "{} sat is more than the {max} sat allowed per payment",
            p.amount_sat
        );
        refusals.push(refuse("maxTransactionSize", i, detail, None));
    }
    if let Some((gap, i)) = pick(levels, |s| s.min_time_between_payments)
        && let Some(last) = in_scope(i).map(|h| h.at).max()
        && let next = last.saturating_add(gap.as_secs())
        && p.now < next
    {
        let detail = format!(
            "the last payment was at {}, less than {} ago",
            rfc3339(last),
            format_duration(gap)
        );
        refusals.push(refuse("minTimeBetweenPayments", i, detail, Some(next)));
    }
    if let Some((max, i)) = pick(levels, |s| s.max_transactions_per_period) {
        let w = period_of(i);
        let times = w.sorted_times(in_scope(i));
        if times.len() >= max as usize {
            // The oldest `len - max + 1` payments must leave the window.
            let next = (max > 0).then(|| w.leaves_at(times[times.len() - max as usize]));
            let detail = format!(
                "{} payments in {} already, at most {max} allowed",
                times.len(),
                w.describe()
            );
            refusals.push(refuse("maxTransactionsPerPeriod", i, detail, next));
        }
    }
    if let Some((max, i)) = pick(levels, |s| s.max_amount_per_period) {
        let w = period_of(i);
        let mut spent: Vec<(u64, u64)> = in_scope(i)
            .filter(|h| w.contains(h.at))
            .map(|h| (h.at, h.amount_sat.saturating_add(h.fee_sat)))
            .collect();
        spent.sort_unstable();
        let mut total = spent.iter().fold(0u64, |t, &(_, c)| t.saturating_add(c));
        if total.saturating_add(cost) > max {
            let detail = format!(
                "{total} sat spent in {} already, plus {cost} sat (amount and fee limit) would exceed {max} sat",
                w.describe()
            );
            let next = (cost <= max).then(|| {
                // Let payments leave oldest first until this one fits (it fits once all left).
                let mut next = w.leaves_at(spent.last().map_or(p.now, |&(at, _)| at));
                for &(at, c) in &spent {
                    total = total.saturating_sub(c);
                    if total.saturating_add(cost) <= max {
                        next = w.leaves_at(at);
                        break;
                    }
                }
                next
            });
            refusals.push(refuse("maxAmountPerPeriod", i, detail, next));
        }
    }
    match refusals
        .into_iter()
        .max_by_key(|r| r.next_allowed_at.map_or(u128::MAX, u128::from))
    {
        Some(r) => {
            tracing::info!(limit = r.limit, scope = %r.scope, next_allowed_at = ?r.next_allowed_at, "payment refused by spending limit");
            Err(r)
        }
        None => Ok(()),
    }
}

/// The period a per-period limit counts over, as of `now`.
struct Window {
    period: u64,
    rolling: bool,
    now: u64,
    /// Start of the current calendar period (unused when rolling).
    start: u64,
}

impl Window {
    fn new(period: u64, rolling: bool, now: u64) -> Self {
        Window {
            period,
            rolling,
            now,
            start: now - now % period,
        }
    }

    /// Rolling: the last `period` seconds up to now (later, clock-skewed payments count too).
    /// Calendar: the current period.
    fn contains(&self, at: u64) -> bool {
        if self.rolling {
            at.saturating_add(self.period) > self.now
        } else {
            at >= self.start && at - self.start < self.period
        }
    }

    /// When a payment made at `at` stops counting.
    fn leaves_at(&self, at: u64) -> u64 {
        if self.rolling {
            at.saturating_add(self.period)
        } else {
            self.start.saturating_add(self.period)
        }
    }

    fn sorted_times<'a>(&self, h: impl Iterator<Item = &'a PastPayment>) -> Vec<u64> {
        let mut t: Vec<u64> = h.map(|h| h.at).filter(|&at| self.contains(at)).collect();
        t.sort_unstable();
        t
    }

    fn describe(&self) -> String {
        let d = format_duration(Duration::from_secs(self.period));
        if self.rolling {
            format!("the last {d}")
        } else {
            format!("the {d} period since {}", rfc3339(self.start))
        }
    }
}

pub use crate::types::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{temp_db, test_key};
    use crate::audit::{AuditKind, AuditLog};
    use serde_json::json;

    const DAY: u64 = 86_400;
    /// 2024-02-29T12:00:00Z, a Thursday noon on a leap day.
    const NOON: u64 = 1_709_208_000;

    fn past(at: u64, amount_sat: u64, fee_sat: u64, provider: &str, lease_id: &str) -> PastPayment {
        PastPayment {
            at,
            amount_sat,
            fee_sat,
            provider: provider.into(),
            lease_id: lease_id.into(),
        }
    }

    fn proposed(now: u64, amount_sat: u64, fee_limit_sat: u64) -> Proposed {
        Proposed {
            now,
            amount_sat,
            fee_limit_sat,
            provider: "P".into(),
            lease_id: "L".into(),
        }
    }

    fn base(s: LimitSettings) -> LimitsConfig {
        LimitsConfig {
            base: s,
            ..LimitsConfig::default()
        }
    }

    fn secs(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n))
    }

    #[test]
    fn durations_parse_strictly_and_format_canonically() {
        for (text, s) in [
            ("60s", 60),
            ("10m", 600),
            ("4h", 14_400),
            ("1d", DAY),
            ("90m", 5_400),
        ] {
            assert_eq!(
                parse_duration(text).unwrap(),
                Duration::from_secs(s),
                "{text}"
            );
        }
        for bad in [
            "",
            "1.5h",
            "10",
            "5w",
            " 1d",
            "1d ",
            "-1s",
            "+1s",
            "0s",
            "00m",
            "d",
            "1D",
            "1 d",
            "99999999999999999999d",
            "999999999999999999d",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(
                matches!(e, LimitsError::BadDuration { ref value, .. } if value == bad),
                "{bad}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("{bad:?}")) && msg.contains("<positive integer><unit>"),
                "{msg}"
            );
        }
        assert_eq!(format_duration(Duration::from_secs(DAY)), "1d");
        assert_eq!(format_duration(Duration::from_secs(5_400)), "90m");
        assert_eq!(format_duration(Duration::from_secs(7_200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(61)), "61s");
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(NOON), "2024-02-29T12:00:00Z");
        assert_eq!(rfc3339(1_234_567_890), "2009-02-13T23:31:30Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn no_limits_pass_everything() {
        let h = vec![past(NOON - 1, 1_000_000, 10, "P", "L"); 50];
        assert_eq!(
            check(
                &LimitsConfig::default(),
                &h,
                &proposed(NOON, u64::MAX, u64::MAX)
            ),
            Ok(())
        );
    }

    #[test]
    fn max_transaction_size_refuses_forever() {
        let cfg = base(LimitSettings {
            max_transaction_size: Some(1_000),
            ..Default::default()
        });
        assert_eq!(
            check(&cfg, &[], &proposed(NOON, 1_000, 500)),
            Ok(()),
            "fees do not count"
        );
        let r = check(&cfg, &[], &proposed(NOON, 1_001, 0)).unwrap_err();
        assert_eq!(
            (r.limit, r.scope.as_str(), r.next_allowed_at),
            ("maxTransactionSize", "base", None)
        );
        let msg = r.to_string();
        assert!(
            msg.contains("maxTransactionSize") && msg.contains("1001") && msg.contains("never"),
            "{msg}"
        );
    }

    #[test]
    fn min_time_between_payments_waits_for_the_gap() {
        let cfg = base(LimitSettings {
            min_time_between_payments: secs(600),
            ..Default::default()
        });
        let h = [
            past(NOON - 2_000, 1, 0, "P", "L"),
            past(NOON - 100, 1, 0, "X", "Y"),
        ];
        let r = check(&cfg, &h, &proposed(NOON, 1, 0)).unwrap_err();
        assert_eq!(r.limit, "minTimeBetweenPayments");
        assert_eq!(r.next_allowed_at, Some(NOON + 500));
        assert!(r.to_string().contains("2024-02-29T12:08:20Z"), "{r}");
        assert_eq!(check(&cfg, &h, &proposed(NOON + 500, 1, 0)), Ok(()));
        assert_eq!(check(&cfg, &h[..1], &proposed(NOON, 1, 0)), Ok(()));
    }

    #[test]
    fn transactions_per_period_rolling() {
        let cfg = base(LimitSettings {
            max_transactions_per_period: Some(2),
            limits_period: secs(1_000),
            ..Default::default()
        });
        let h = [
            past(NOON - 2_000, 1, 0, "P", "L"), // outside the window
            past(NOON - 900, 1, 0, "P", "L"),
            past(NOON - 800, 1, 0, "P", "L"),
            past(NOON - 700, 1, 0, "P", "L"),
        ];
        let r = check(&cfg, &h, &proposed(NOON, 1, 0)).unwrap_err();
        assert_eq!(r.limit, "maxTransactionsPerPeriod");
        // Two of the three must leave: the second oldest leaves at NOON - 800 + 1000.
        assert_eq!(r.next_allowed_at, Some(NOON + 200));
        assert!(r.detail.contains("3 payments"), "{}", r.detail);
        assert!(check(&cfg, &h, &proposed(NOON + 199, 1, 0)).is_err());
        assert_eq!(check(&cfg, &h, &proposed(NOON + 200, 1, 0)), Ok(()));
        assert_eq!(check(&cfg, &h[..2], &proposed(NOON, 1, 0)), Ok(()));
        // Zero allows nothing, ever.
        let zero = base(LimitSettings {
            max_transactions_per_period: Some(0),
            ..Default::default()
        });
        assert_eq!(
            check(&zero, &[], &proposed(NOON, 1, 0))
                .unwrap_err()
                .next_allowed_at,
            None
        );
    }

    #[test]
    fn transactions_per_period_calendar_uses_utc_days() {
        let cfg = base(LimitSettings {
            max_transactions_per_period: Some(1),
            use_rolling_limits_period: Some(false),
            ..Default::default()
        });
        let midnight = NOON - 12 * 3_600;
        let yesterday = [past(midnight - 1, 1, 0, "P", "L")];
        assert_eq!(check(&cfg, &yesterday, &proposed(NOON, 1, 0)), Ok(()));
        let today = [past(midnight, 1, 0, "P", "L")];
        let r = check(&cfg, &today, &proposed(NOON, 1, 0)).unwrap_err();
        assert_eq!(r.next_allowed_at, Some(midnight + DAY));
        assert!(r.to_string().contains("2024-03-01T00:00:00Z"), "{r}");
        assert!(
            r.detail.contains("since 2024-02-29T00:00:00Z"),
            "{}",
            r.detail
        );
        assert_eq!(check(&cfg, &today, &proposed(midnight + DAY, 1, 0)), Ok(()));
        // The same history under a rolling window waits a full day from the payment.
        let rolling = base(LimitSettings {
            max_transactions_per_period: Some(1),
            ..Default::default()
        });
        let r = check(&rolling, &yesterday, &proposed(NOON, 1, 0)).unwrap_err();
        assert_eq!(r.next_allowed_at, Some(midnight - 1 + DAY));
    }

    #[test]
    fn amount_per_period_counts_fees_and_fee_limit() {
        let cfg = base(LimitSettings {
            max_amount_per_period: Some(1_000),
            ..Default::default()
        });
        let h = [
            past(NOON - 3_600, 300, 10, "P", "L"),
            past(NOON - 1_800, 500, 0, "Q", "M"),
        ];
        // 810 spent; 150 + 40 = 190 fits exactly.
        assert_eq!(check(&cfg, &h, &proposed(NOON, 150, 40)), Ok(()));
        let r = check(&cfg, &h, &proposed(NOON, 150, 41)).unwrap_err();
        assert_eq!(r.limit, "maxAmountPerPeriod");
        // Once the oldest (310 sat) leaves, 500 + 191 fits.
        assert_eq!(r.next_allowed_at, Some(NOON - 3_600 + DAY));
        assert!(
            r.detail.contains("810 sat") && r.detail.contains("191 sat"),
            "{}",
            r.detail
        );
        // 600 needs both gone.
        let r = check(&cfg, &h, &proposed(NOON, 550, 50)).unwrap_err();
        assert_eq!(r.next_allowed_at, Some(NOON - 1_800 + DAY));
        // More than the whole budget: never.
        let r = check(&cfg, &[], &proposed(NOON, 990, 11)).unwrap_err();
        assert_eq!(r.next_allowed_at, None);
    }

    #[test]
    fn amount_per_period_calendar_waits_for_next_period() {
        let cfg = base(LimitSettings {
            max_amount_per_period: Some(1_000),
            limits_period: secs(3_600),
            use_rolling_limits_period: Some(false),
            ..Default::default()
        });
        let h = [past(NOON + 10, 900, 0, "P", "L")];
        let r = check(&cfg, &h, &proposed(NOON + 20, 100, 1)).unwrap_err();
        assert_eq!(r.next_allowed_at, Some(NOON + 3_600));
        assert_eq!(check(&cfg, &h, &proposed(NOON + 3_600, 100, 1)), Ok(()));
    }

    #[test]
    fn overrides_lease_beats_provider_beats_base_with_scoped_history() {
        let mut cfg = base(LimitSettings {
            max_transaction_size: Some(10_000),
            max_transactions_per_period: Some(100),
            limits_period: secs(3_600),
            max_routing_fee: Some(50),
            ..Default::default()
        });
        cfg.provider.insert(
            "P".into(),
            LimitSettings {
                max_transaction_size: Some(5_000),
                max_transactions_per_period: Some(3),
                max_routing_fee: Some(20),
                ..Default::default()
            },
        );
        cfg.lease.insert(
            "L".into(),
            LimitSettings {
                max_transaction_size: Some(1_000),
                ..Default::default()
            },
        );
        // Field by field: size from the lease, count from the provider (with the base period).
        let r = check(&cfg, &[], &proposed(NOON, 1_001, 0)).unwrap_err();
        assert_eq!(
            (r.limit, r.scope.as_str()),
            ("maxTransactionSize", "lease L")
        );
        let other_lease = Proposed {
            lease_id: "L2".into(),
            ..proposed(NOON, 1_001, 0)
        };
        assert_eq!(check(&cfg, &[], &other_lease), Ok(()));
        let r = check(
            &cfg,
            &[],
            &Proposed {
                lease_id: "L2".into(),
                ..proposed(NOON, 5_001, 0)
            },
        )
        .unwrap_err();
        assert_eq!(r.scope, "provider P");
        let r = check(
            &cfg,
            &[],
            &Proposed {
                provider: "Q".into(),
                lease_id: String::new(),
                ..proposed(NOON, 10_001, 0)
            },
        )
        .unwrap_err();
        assert_eq!(r.scope, "base");

        // The provider's count covers all its leases, not other providers; base period 1h.
        let h = [
            past(NOON - 100, 1, 0, "P", "L"),
            past(NOON - 200, 1, 0, "P", "L2"),
            past(NOON - 300, 1, 0, "Q", "M"),
            past(NOON - 400, 1, 0, "Q", "M"),
        ];
        assert_eq!(check(&cfg, &h, &proposed(NOON, 1, 0)), Ok(()));
        let h3 = [&h[..], &[past(NOON - 3_000, 1, 0, "P", "L3")]].concat();
        let r = check(&cfg, &h3, &proposed(NOON, 1, 0)).unwrap_err();
        assert_eq!(
            (r.limit, r.scope.as_str()),
            ("maxTransactionsPerPeriod", "provider P")
        );
        assert_eq!(r.next_allowed_at, Some(NOON - 3_000 + 3_600));

        // A lease-level count sees only that lease's payments.
        cfg.lease
            .get_mut("L")
            .expect("inserted above")
            .max_transactions_per_period = Some(1);
        let r = check(&cfg, &h3, &proposed(NOON, 1, 0)).unwrap_err();
        assert_eq!(
            (r.limit, r.scope.as_str()),
            ("maxTransactionsPerPeriod", "lease L")
        );
        assert_eq!(r.next_allowed_at, Some(NOON - 100 + 3_600));
        let h_no_l: Vec<_> = h3.iter().filter(|p| p.lease_id != "L").cloned().collect();
        assert_eq!(check(&cfg, &h_no_l, &proposed(NOON, 1, 0)), Ok(()));

        assert_eq!(effective_routing_fee_cap(&cfg, "P", "L"), Some(20));
        assert_eq!(effective_routing_fee_cap(&cfg, "Q", "L"), Some(50));
        assert_eq!(
            effective_routing_fee_cap(&LimitsConfig::default(), "P", "L"),
            None
        );
    }

    #[test]
    fn a_lease_period_does_not_change_a_base_limit() {
        let mut cfg = base(LimitSettings {
            max_transactions_per_period: Some(1),
            ..Default::default()
        });
        cfg.lease.insert(
            "L".into(),
            LimitSettings {
                limits_period: secs(60),
                ..Default::default()
            },
        );
        let h = [past(NOON - 3_600, 1, 0, "P", "L")];
        let r = check(&cfg, &h, &proposed(NOON, 1, 0)).unwrap_err();
        assert_eq!(
            (r.scope.as_str(), r.next_allowed_at),
            ("base", Some(NOON - 3_600 + DAY))
        );
    }

    #[test]
    fn the_latest_refusal_is_reported() {
        let cfg = base(LimitSettings {
            min_time_between_payments: secs(60),
            max_transactions_per_period: Some(1),
            ..Default::default()
        });
        let h = [past(NOON - 10, 1, 0, "P", "L")];
        let r = check(&cfg, &h, &proposed(NOON, 1, 0)).unwrap_err();
        assert_eq!(
            (r.limit, r.next_allowed_at),
            ("maxTransactionsPerPeriod", Some(NOON - 10 + DAY))
        );
        let cfg = base(LimitSettings {
            max_transaction_size: Some(0),
            ..cfg.base
        });
        assert_eq!(
            check(&cfg, &h, &proposed(NOON, 1, 0)).unwrap_err().limit,
            "maxTransactionSize"
        );
    }

    #[test]
    fn toml_round_trip_with_aliases_and_overrides() {
        let peer = libp2p::PeerId::random().to_string();
        let text = format!(
            "maxTransactionSize = 5000\nminTimeBetweenPayments = \"10m\"\nlimits_period = \"1d\"\n\
             useRollingLimitsPeriod = false\nmaxTransactionsPerPeriod = 4\nmax_amount_per_period = 9000\n\
             maxRoutingFee = 30\n[provider.\"{peer}\"]\nlimitsPeriod = \"4h\"\n[lease.abc]\nmax_routing_fee = 5\n"
        );
        let cfg: LimitsConfig = toml::from_str(&text).unwrap();
        assert_eq!(
            cfg.base,
            LimitSettings {
                max_transaction_size: Some(5_000),
                min_time_between_payments: secs(600),
                limits_period: secs(DAY),
                use_rolling_limits_period: Some(false),
                max_transactions_per_period: Some(4),
                max_amount_per_period: Some(9_000),
                max_routing_fee: Some(30),
            }
        );
        assert_eq!(cfg.provider[&peer].limits_period, secs(14_400));
        assert_eq!(cfg.lease["abc"].max_routing_fee, Some(5));
        cfg.validate().unwrap();
        let out = toml::to_string(&cfg).unwrap();
        assert!(
            out.contains("min_time_between_payments = \"10m\"")
                && out.contains("limits_period = \"4h\""),
            "{out}"
        );
        assert_eq!(toml::from_str::<LimitsConfig>(&out).unwrap(), cfg);
        // An empty table is no limits and serialises to nothing.
        assert_eq!(
            toml::from_str::<LimitsConfig>("").unwrap(),
            LimitsConfig::default()
        );
        assert_eq!(
            toml::to_string(&LimitsConfig::default()).unwrap().trim(),
            ""
        );
    }

    #[test]
    fn toml_rejects_unknown_keys_and_bad_values() {
        for text in [
            "max_transaction_sise = 1\n",
            "[lease.x]\nmaxAmount = 1\n",
            "limits_period = \"1.5h\"\n",
            "limits_period = \"0s\"\n",
            "[provider]\nmax_routing_fee = 1\n",
        ] {
            assert!(toml::from_str::<LimitsConfig>(text).is_err(), "{text}");
        }
        let e = toml::from_str::<LimitsConfig>("min_time_between_payments = \"5w\"\n").unwrap_err();
        assert!(e.to_string().contains("\"5w\""), "{e}");
    }

    #[test]
    fn config_file_carries_limits_and_validates_them() {
        use crate::config::Config;
        let peer = libp2p::PeerId::random().to_string();
        let cfg = Config::from_toml(&format!(
            "[renter.limits]\nmaxAmountPerPeriod = 100\n[renter.limits.provider.\"{peer}\"]\nmax_routing_fee = 3\n"
        ))
        .unwrap();
        assert_eq!(cfg.renter.limits.base.max_amount_per_period, Some(100));
        assert_eq!(
            effective_routing_fee_cap(&cfg.renter.limits, &peer, ""),
            Some(3)
        );
        assert_eq!(Config::from_toml(&cfg.to_toml()).unwrap(), cfg);
        let e = Config::from_toml("[renter.limits]\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = Config::from_toml("[renter.limits.provider.not-a-peer]\nmax_routing_fee = 3\n")
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("renter.limits: provider.\"not-a-peer\""),
            "{e}"
        );
        let zero = base(LimitSettings {
            limits_period: secs(0),
            ..Default::default()
        });
        assert!(zero.validate().unwrap_err().contains("limits_period"));
        let mut empty_lease = LimitsConfig::default();
        empty_lease
            .lease
            .insert(String::new(), LimitSettings::default());
        assert!(empty_lease.validate().is_err());
    }

    #[test]
    fn history_from_a_real_audit_log() {
        let (_dir, db) = temp_db();
        let log = AuditLog::open(&db, test_key(7)).unwrap();
        let before = crate::types::now_unix();
        let attempt = |hash: &str, amount: u64, lease: &str, fee_limit_msat: u64| {
            json!({"payment_hash": hash, "amount_sat": amount, "provider": "P", "lease_id": lease,
                   "request_id": "r", "purpose": "activation", "fee_limit_msat": fee_limit_msat})
        };
        log.append(AuditKind::NodeStarted, &json!({})).unwrap();
        log.append(
            AuditKind::PaymentAttempt,
            &attempt("aa", 1_000, "L1", 50_000),
        )
        .unwrap();
        log.append(AuditKind::PaymentSucceeded, &json!({"payment_hash": "aa", "amount_msat": 1_000_000, "fee_msat": 1_500, "provider": "P"})).unwrap();
        log.append(
            AuditKind::PaymentAttempt,
            &attempt("bb", 2_000, "L1", 50_000),
        )
        .unwrap();
        log.append(
            AuditKind::PaymentFailed,
            &json!({"payment_hash": "bb", "reason": "no route", "provider": "P"}),
        )
        .unwrap();
        // In flight: counts with its fee limit (rounded up to whole sat).
        log.append(AuditKind::PaymentAttempt, &attempt("cc", 3_000, "", 20_001))
            .unwrap();
        // A success with no recorded attempt still moved money.
        log.append(AuditKind::PaymentSucceeded, &json!({"payment_hash": "dd", "amount_msat": 4_000_000, "fee_msat": 0, "provider": "Q"})).unwrap();
        // A failure report after a success changes nothing; a duplicate success is not counted twice.
        log.append(
            AuditKind::PaymentFailed,
            &json!({"payment_hash": "aa", "reason": "late", "provider": "P"}),
        )
        .unwrap();
        log.append(AuditKind::PaymentSucceeded, &json!({"payment_hash": "aa", "amount_msat": 1_000_000, "fee_msat": 1_500, "provider": "P"})).unwrap();
        // A retry of a failed hash counts once, with the retry's amount and fee limit.
        log.append(AuditKind::PaymentAttempt, &attempt("ee", 500, "L2", 1_000))
            .unwrap();
        log.append(
            AuditKind::PaymentFailed,
            &json!({"payment_hash": "ee", "reason": "x", "provider": "P"}),
        )
        .unwrap();
        log.append(AuditKind::PaymentAttempt, &attempt("ee", 600, "L2", 2_000))
            .unwrap();
        log.append(AuditKind::PaymentRefused, &json!({"reason": "limits"}))
            .unwrap();

        let h = history_from_audit(&log).unwrap();
        let after = crate::types::now_unix();
        assert!(h.iter().all(|p| (before..=after).contains(&p.at)), "{h:?}");
        let got: Vec<_> = h
            .iter()
            .map(|p| {
                (
                    p.amount_sat,
                    p.fee_sat,
                    p.provider.as_str(),
                    p.lease_id.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (1_000, 2, "P", "L1"),
                (3_000, 21, "P", ""),
                (4_000, 0, "Q", ""),
                (600, 2, "P", "L2"),
            ]
        );

        // The history feeds the check: 1002 + 3021 + 4000 + 602 spent today.
        let cfg = base(LimitSettings {
            max_amount_per_period: Some(8_702),
            ..Default::default()
        });
        let r = check(&cfg, &h, &proposed(after, 77, 1)).unwrap_err();
        assert_eq!(r.next_allowed_at, Some(h[0].at + DAY));
        assert_eq!(check(&cfg, &h, &proposed(after, 76, 1)), Ok(()));
    }

    #[test]
    fn a_malformed_payment_entry_fails_closed() {
        let (_dir, db) = temp_db();
        let log = AuditLog::open(&db, test_key(8)).unwrap();
        log.append(AuditKind::PaymentAttempt, &json!({"payment_hash": "aa"}))
            .unwrap();
        let e = history_from_audit(&log).unwrap_err();
        assert!(
            matches!(e, LimitsError::BadEntry { seq: 0, ref kind, .. } if kind == "payment_attempt"),
            "{e}"
        );
    }

    /// A log with every kind of payment history: retries, late outcomes, duplicates,
    /// successes without attempts, and many entries that are not payments.
    fn busy_log(log: &AuditLog, rounds: u64) {
        for r in 0..rounds {
            let hash = |n: u64| format!("{:02x}", (r * 7 + n) % 23);
            for _ in 0..5 {
                log.append(AuditKind::NodeStarted, &json!({})).unwrap();
            }
            log.append(
                AuditKind::PaymentAttempt,
                &json!({"payment_hash": hash(0), "amount_sat": 100 + r, "provider": "P",
                        "lease_id": format!("L{}", r % 3), "fee_limit_msat": 1_500}),
            )
            .unwrap();
            match r % 4 {
                0 => log.append(
                    AuditKind::PaymentSucceeded,
                    &json!({"payment_hash": hash(0),
                        "amount_msat": (100 + r) * 1000, "fee_msat": 999, "provider": "P"}),
                ),
                1 => log.append(AuditKind::PaymentFailed, &json!({"payment_hash": hash(0)})),
                2 => log.append(
                    AuditKind::PaymentSucceeded,
                    &json!({"payment_hash": hash(5),
                        "amount_msat": 7_001, "provider": "Q"}),
                ),
                _ => log.append(AuditKind::PaymentFailed, &json!({"payment_hash": hash(3)})),
            }
            .unwrap();
        }
    }

    #[test]
    fn the_index_reads_what_the_full_scan_reads_at_every_step() {
        let (_dir, db) = temp_db();
        let log = AuditLog::open(&db, test_key(9)).unwrap();
        let index = PaymentIndex::open(&db).unwrap();
        assert_eq!(index.history(&log).unwrap(), Vec::new());
        for step in 0..12 {
            busy_log(&log, 3 + step);
            let full = history_from_audit(&log).unwrap();
            assert!(!full.is_empty());
            assert_eq!(index.history(&log).unwrap(), full, "after step {step}");
        }
        // The index only reads what was appended since: its cursor is the log's end.
        let cursor = db
            .open_tree(INDEX_TREE)
            .unwrap()
            .get(b"cursor")
            .unwrap()
            .unwrap();
        assert_eq!(
            u64::from_be_bytes(cursor.as_ref().try_into().unwrap()),
            log.len()
        );
    }

    #[test]
    fn a_missing_or_damaged_index_is_rebuilt_from_the_log() {
        let (_dir, db) = temp_db();
        let log = AuditLog::open(&db, test_key(10)).unwrap();
        busy_log(&log, 20);
        let full = history_from_audit(&log).unwrap();
        let index = PaymentIndex::open(&db).unwrap();
        assert_eq!(index.history(&log).unwrap(), full);
        let tree = db.open_tree(INDEX_TREE).unwrap();
        // Dropped: rebuilt from the start of the log.
        tree.clear().unwrap();
        assert_eq!(index.history(&log).unwrap(), full);
        // A record that does not decode, or a cursor past the end of the log: rebuilt.
        let some = tree.scan_prefix(b"p/").next().unwrap().unwrap().0;
        tree.insert(some, b"garbage".as_slice()).unwrap();
        assert_eq!(index.history(&log).unwrap(), full);
        tree.insert(b"cursor", &(log.len() + 5).to_be_bytes())
            .unwrap();
        assert_eq!(index.history(&log).unwrap(), full);
        // A malformed payment entry still fails closed.
        log.append(AuditKind::PaymentAttempt, &json!({"payment_hash": "zz"}))
            .unwrap();
        assert!(matches!(
            index.history(&log),
            Err(LimitsError::BadEntry { .. })
        ));
    }
}
