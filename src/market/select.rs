//! Offer ranking: pure functions, no I/O.
//!
//! A renter asks for `credit` sat of prepaid credit. Under an offer that buys
//! `credit / rate_sat_per_day` days for `activation_fee + credit` sat. Offers are ranked first
//! by the renter's own history with the provider ([`Standing`], passed in as data), then by
//! cost per day of service (the activation fee amortised over the days the credit buys), then
//! by fewer failures and more deliveries, then by the measured round trip, then by offer id so
//! the order is total and stable.

use std::cmp::Ordering;
use std::time::Duration;

use crate::types::{Sats, Terms};

/// The price of renting `credit` under `terms`: (credit actually bought, total to pay), or
/// `None` when the offer cannot sell that credit.
pub fn price(terms: &Terms, credit: Sats) -> Option<(Sats, Sats)> {
    if terms.rate_sat_per_day == 0 {
        return None;
    }
    let credit = credit.max(terms.min_initial_credit_sat);
    if credit > terms.max_credit_sat || credit == 0 {
        return None;
    }
    Some((credit, terms.activation_fee_sat.checked_add(credit)?))
}

/// Cost per day of service in millisatoshi for renting `credit` under `terms`.
pub fn cost_msat_per_day(terms: &Terms, credit: Sats) -> Option<u128> {
    let (credit, total) = price(terms, credit)?;
    // total / (credit / rate) days, in msat, without floating point.
    Some(total as u128 * 1000 * terms.rate_sat_per_day as u128 / credit as u128)
}

/// What this renter has seen of a provider, as the ranker uses it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Leases and top-ups it delivered to us (paid for and received).
    pub delivered: u32,
    /// Times it failed us: stopped answering (a run of failed requests counts once) or failed
    /// a tunnel check.
    pub failures: u32,
    /// Failed requests since it last answered.
    pub consecutive_failures: u32,
    /// Payments of ours to it whose lease has not arrived.
    pub undelivered: u32,
}

/// A provider's standing with this renter, best first. It ranks before price: a provider that
/// failed us ranks below one that delivered, whatever their prices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    /// Nothing against it: new to us, or it delivered more than it failed.
    Good,
    /// It failed us more often than it delivered, but answers now.
    Failed,
    /// Demoted: it did not answer its last request(s), or holds a payment of ours without
    /// having delivered its lease.
    Demoted,
}

impl History {
    /// The standing this history earns.
    pub fn standing(&self) -> Standing {
        if self.consecutive_failures > 0 || self.undelivered > 0 {
            Standing::Demoted
        } else if self.failures > self.delivered {
            Standing::Failed
        } else {
            Standing::Good
        }
    }
}

/// One offer as the ranker sees it.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    /// Offer id.
    pub offer_id: &'a str,
    /// Terms.
    pub terms: &'a Terms,
    /// Measured round trip of the last hello.
    pub rtt: Duration,
    /// Whether a prefix of each wanted size is available.
    pub available: bool,
    /// This renter's history with the provider.
    pub history: History,
}

/// Ranks candidates for `credit`, best first; candidates that cannot serve are left out.
pub fn rank<'a>(cands: &[Candidate<'a>], credit: Sats) -> Vec<Candidate<'a>> {
    let mut scored: Vec<(u128, Candidate<'a>)> = cands
        .iter()
        .filter(|c| c.available)
        .filter_map(|c| cost_msat_per_day(c.terms, credit).map(|s| (s, c.clone())))
        .collect();
    scored.sort_by(|(sa, a), (sb, b)| {
        a.history
            .standing()
            .cmp(&b.history.standing())
            .then_with(|| sa.cmp(sb))
            .then_with(|| a.history.failures.cmp(&b.history.failures))
            .then_with(|| b.history.delivered.cmp(&a.history.delivered))
            .then_with(|| a.rtt.cmp(&b.rtt))
            .then_with(|| a.offer_id.cmp(b.offer_id))
            .then(Ordering::Equal)
    });
    scored.into_iter().map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(fee: Sats, rate: Sats) -> Terms {
        Terms {
            activation_fee_sat: fee,
            rate_sat_per_day: rate,
            min_initial_credit_sat: 500,
            min_topup_sat: 100,
            max_credit_sat: 10_000,
            reserve_days: 7,
            refund_unused: false,
        }
    }

    #[test]
    fn price_respects_min_and_max_credit() {
        let t = terms(1000, 100);
        assert_eq!(price(&t, 3000), Some((3000, 4000)));
        assert_eq!(price(&t, 100), Some((500, 1500)), "raised to the minimum");
        assert_eq!(price(&t, 20_000), None, "above max credit");
    }

    #[test]
    fn cheaper_per_day_wins_then_rtt_then_id() {
        let cheap = terms(1000, 50);
        let dear = terms(1000, 100);
        let no_fee_dear = terms(0, 100);
        let c = |id, t, ms, available| Candidate {
            offer_id: id,
            terms: t,
            rtt: Duration::from_millis(ms),
            available,
            history: History::default(),
        };
        let ranked = rank(
            &[
                c("a", &dear, 1, true),
                c("b", &cheap, 50, true),
                c("c", &no_fee_dear, 9, true),
                c("d", &cheap, 5, true),
                c("e", &cheap, 1, false),
            ],
            3000,
        );
        let ids: Vec<_> = ranked.iter().map(|c| c.offer_id).collect();
        // cheap: 4000 sat for 60 days; no_fee_dear: 3000 for 30; dear: 4000 for 30.
        assert_eq!(ids, ["d", "b", "c", "a"]);
    }

    #[test]
    fn ties_break_on_rtt() {
        let t = terms(1000, 100);
        let c = |id, ms| Candidate {
            offer_id: id,
            terms: &t,
            rtt: Duration::from_millis(ms),
            available: true,
            history: History::default(),
        };
        let ids: Vec<_> = rank(&[c("x", 30), c("y", 10), c("z", 20)], 1000)
            .iter()
            .map(|c| c.offer_id)
            .collect();
        assert_eq!(ids, ["y", "z", "x"]);
    }

    fn with_history(id: &'static str, t: &'static Terms, h: History) -> Candidate<'static> {
        Candidate {
            offer_id: id,
            terms: t,
            rtt: Duration::from_millis(10),
            available: true,
            history: h,
        }
    }

    fn ids(ranked: &[Candidate<'static>]) -> Vec<&'static str> {
        ranked.iter().map(|c| c.offer_id).collect()
    }

    #[test]
    fn standing_follows_the_history() {
        let h = |delivered, failures, consecutive_failures, undelivered| History {
            delivered,
            failures,
            consecutive_failures,
            undelivered,
        };
        assert_eq!(h(0, 0, 0, 0).standing(), Standing::Good);
        assert_eq!(h(3, 1, 0, 0).standing(), Standing::Good);
        assert_eq!(h(1, 1, 0, 0).standing(), Standing::Good);
        assert_eq!(h(0, 1, 0, 0).standing(), Standing::Failed);
        assert_eq!(h(1, 2, 0, 0).standing(), Standing::Failed);
        assert_eq!(h(9, 1, 1, 0).standing(), Standing::Demoted);
        assert_eq!(h(9, 0, 0, 1).standing(), Standing::Demoted);
        assert!(Standing::Good < Standing::Failed && Standing::Failed < Standing::Demoted);
    }

    #[test]
    fn a_provider_that_failed_us_ranks_below_one_that_delivered_whatever_the_price() {
        static CHEAP: Terms = Terms {
            activation_fee_sat: 0,
            rate_sat_per_day: 10,
            min_initial_credit_sat: 0,
            min_topup_sat: 1,
            max_credit_sat: 100_000,
            reserve_days: 7,
            refund_unused: false,
        };
        static DEAR: Terms = Terms {
            activation_fee_sat: 1_000,
            rate_sat_per_day: 100,
            min_initial_credit_sat: 0,
            min_topup_sat: 1,
            max_credit_sat: 100_000,
            reserve_days: 7,
            refund_unused: false,
        };
        let ranked = rank(
            &[
                with_history(
                    "unpaid",
                    &CHEAP,
                    History {
                        delivered: 5,
                        undelivered: 1,
                        ..History::default()
                    },
                ),
                with_history(
                    "down",
                    &CHEAP,
                    History {
                        delivered: 5,
                        failures: 2,
                        consecutive_failures: 2,
                        ..History::default()
                    },
                ),
                with_history(
                    "failed",
                    &CHEAP,
                    History {
                        failures: 1,
                        ..History::default()
                    },
                ),
                with_history(
                    "good",
                    &DEAR,
                    History {
                        delivered: 2,
                        ..History::default()
                    },
                ),
                with_history("new", &DEAR, History::default()),
            ],
            3000,
        );
        // Same price: the one that delivered goes first; then the one that failed us (it
        // answers now); the demoted ones last, fewer failures first.
        assert_eq!(ids(&ranked), ["good", "new", "failed", "unpaid", "down"]);
    }

    #[test]
    fn within_a_standing_price_still_decides() {
        static CHEAP: Terms = Terms {
            activation_fee_sat: 0,
            rate_sat_per_day: 10,
            min_initial_credit_sat: 0,
            min_topup_sat: 1,
            max_credit_sat: 100_000,
            reserve_days: 7,
            refund_unused: false,
        };
        static DEAR: Terms = Terms {
            activation_fee_sat: 0,
            rate_sat_per_day: 100,
            min_initial_credit_sat: 0,
            min_topup_sat: 1,
            max_credit_sat: 100_000,
            reserve_days: 7,
            refund_unused: false,
        };
        // A new provider that is cheaper beats one that delivered: history only separates
        // standings, so newcomers still compete on price.
        let ranked = rank(
            &[
                with_history(
                    "good",
                    &DEAR,
                    History {
                        delivered: 4,
                        ..History::default()
                    },
                ),
                with_history("new", &CHEAP, History::default()),
                with_history(
                    "mixed",
                    &CHEAP,
                    History {
                        delivered: 4,
                        failures: 1,
                        ..History::default()
                    },
                ),
            ],
            3000,
        );
        assert_eq!(ids(&ranked), ["new", "mixed", "good"]);
    }
}
