//! Offer ranking: pure functions, no I/O.
//!
//! A renter asks for `credit` sat of prepaid credit. Under an offer that buys
//! `credit / rate_sat_per_day` days for `activation_fee + credit` sat. Offers are ranked by cost
//! per day of service (the activation fee amortised over the days the credit buys), then by the
//! measured round trip, then by offer id so the order is total and stable.

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
}

/// Ranks candidates for `credit`, best first; candidates that cannot serve are left out.
pub fn rank<'a>(cands: &[Candidate<'a>], credit: Sats) -> Vec<Candidate<'a>> {
    let mut scored: Vec<(u128, Candidate<'a>)> = cands
        .iter()
        .filter(|c| c.available)
        .filter_map(|c| cost_msat_per_day(c.terms, credit).map(|s| (s, c.clone())))
        .collect();
    scored.sort_by(|(sa, a), (sb, b)| {
        sa.cmp(sb)
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
        };
        let ids: Vec<_> = rank(&[c("x", 30), c("y", 10), c("z", 20)], 1000)
            .iter()
            .map(|c| c.offer_id)
            .collect();
        assert_eq!(ids, ["y", "z", "x"]);
    }
}
