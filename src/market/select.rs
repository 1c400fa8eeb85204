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

use crate::market::sizes::{self, Sizes};
use crate::types::{Sats, Terms};
use crate::wire::Offer;

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

/// Filters on the offers a renter considers (`[renter]` config, `rent` options). The default
/// lets every offer through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Leave out offers whose effective daily rate for the sizes asked is above this.
    pub max_price_sat_per_day: Option<Sats>,
    /// When not empty, only these providers (PeerIds).
    pub allow: Vec<String>,
    /// Never these providers (PeerIds).
    pub deny: Vec<String>,
}

/// Why an offer was left out.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LeftOut {
    /// The provider is on the deny list.
    Denied,
    /// There is an allow list and the provider is not on it.
    NotAllowed,
    /// The offer does not list a size asked, or has none of it available: names what it
    /// lacks ("IPv6 /64").
    Without(String),
    /// Its effective daily rate is above the maximum.
    AboveMaxPrice,
}

impl std::fmt::Display for LeftOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeftOut::Denied => f.write_str("denied"),
            LeftOut::NotAllowed => f.write_str("not in the allow list"),
            LeftOut::Without(what) => write!(f, "without {what}"),
            LeftOut::AboveMaxPrice => f.write_str("above max price"),
        }
    }
}

/// Checks one offer of `provider` against the sizes asked and the filters: its effective
/// terms for `asked` when it passes, else why it is left out (the deny and allow lists
/// first, then the sizes, then the price).
pub fn admit(
    offer: &Offer,
    provider: &str,
    asked: Sizes,
    filters: &Filters,
) -> Result<Terms, LeftOut> {
    if filters.deny.iter().any(|p| p == provider) {
        return Err(LeftOut::Denied);
    }
    if !filters.allow.is_empty() && !filters.allow.iter().any(|p| p == provider) {
        return Err(LeftOut::NotAllowed);
    }
    let lacks = |list: &[crate::wire::PrefixAvailability], len: Option<u8>| {
        len.is_some_and(|l| !list.iter().any(|a| a.prefix_len == l && a.available > 0))
    };
    let mut missing = Vec::new();
    if lacks(&offer.ipv4, asked.ipv4) {
        missing.push(format!("IPv4 /{}", asked.ipv4.unwrap_or_default()));
    }
    if lacks(&offer.ipv6, asked.ipv6) {
        missing.push(format!("IPv6 /{}", asked.ipv6.unwrap_or_default()));
    }
    if !missing.is_empty() {
        return Err(LeftOut::Without(missing.join(" and ")));
    }
    let terms = sizes::effective_terms(offer, asked)
        .map_err(|e| LeftOut::Without(format!("a usable price ({e})")))?;
    if filters
        .max_price_sat_per_day
        .is_some_and(|max| terms.rate_sat_per_day > max)
    {
        return Err(LeftOut::AboveMaxPrice);
    }
    Ok(terms)
}

/// How many offers each filter left out, for the error when none is left: "3 offers: 2 above
/// max price, 1 without IPv6 /64".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Offers seen.
    pub seen: usize,
    /// Offers left out, by reason (most first).
    pub left_out: Vec<(LeftOut, usize)>,
}

impl Tally {
    /// Counts one offer and, if it was left out, why.
    pub fn count(&mut self, outcome: Result<(), &LeftOut>) {
        self.seen += 1;
        if let Err(why) = outcome {
            match self.left_out.iter_mut().find(|(w, _)| w == why) {
                Some((_, n)) => *n += 1,
                None => self.left_out.push((why.clone(), 1)),
            }
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = self.left_out.clone();
        parts.sort_by(|(a, n), (b, m)| m.cmp(n).then_with(|| a.cmp(b)));
        write!(
            f,
            "{} offer{}",
            self.seen,
            if self.seen == 1 { "" } else { "s" }
        )?;
        for (i, (why, n)) in parts.iter().enumerate() {
            write!(f, "{}{n} {why}", if i == 0 { ": " } else { ", " })?;
        }
        Ok(())
    }
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
            reservation_secs: 0,
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
            reservation_secs: 0,
        };
        static DEAR: Terms = Terms {
            activation_fee_sat: 1_000,
            rate_sat_per_day: 100,
            min_initial_credit_sat: 0,
            min_topup_sat: 1,
            max_credit_sat: 100_000,
            reserve_days: 7,
            refund_unused: false,
            reservation_secs: 0,
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
            reservation_secs: 0,
        };
        static DEAR: Terms = Terms {
            activation_fee_sat: 0,
            rate_sat_per_day: 100,
            min_initial_credit_sat: 0,
            min_topup_sat: 1,
            max_credit_sat: 100_000,
            reserve_days: 7,
            refund_unused: false,
            reservation_secs: 0,
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

    fn offer(ipv4: &[(u8, u32, Sats)], ipv6: &[(u8, u32, Sats)], rate: Sats) -> Offer {
        crate::market::sizes::testing::offer(ipv4, ipv6, terms(1000, rate))
    }

    const BOTH: Sizes = Sizes {
        ipv4: Some(32),
        ipv6: Some(64),
    };

    #[test]
    fn admit_gives_the_effective_terms() {
        let o = offer(&[(32, 3, 10), (30, 1, 40)], &[(64, 5, 5)], 20);
        let t = admit(&o, "p", BOTH, &Filters::default()).unwrap();
        assert_eq!(t.rate_sat_per_day, 35);
        let t = admit(
            &o,
            "p",
            Sizes {
                ipv4: Some(30),
                ipv6: None,
            },
            &Filters::default(),
        )
        .unwrap();
        assert_eq!(t.rate_sat_per_day, 60);
    }

    #[test]
    fn max_price_compares_the_effective_rate() {
        let o = offer(&[(32, 3, 10)], &[(64, 5, 5)], 20);
        let f = |max| Filters {
            max_price_sat_per_day: Some(max),
            ..Filters::default()
        };
        assert!(admit(&o, "p", BOTH, &f(35)).is_ok());
        assert_eq!(admit(&o, "p", BOTH, &f(34)), Err(LeftOut::AboveMaxPrice));
        let v4_only = Sizes {
            ipv4: Some(32),
            ipv6: None,
        };
        assert!(
            admit(&o, "p", v4_only, &f(30)).is_ok(),
            "IPv6 not asked, not paid"
        );
    }

    #[test]
    fn allow_and_deny_lists() {
        let o = offer(&[(32, 3, 0)], &[(64, 5, 0)], 20);
        let deny = Filters {
            deny: vec!["bad".into()],
            ..Filters::default()
        };
        assert_eq!(admit(&o, "bad", BOTH, &deny), Err(LeftOut::Denied));
        assert!(admit(&o, "good", BOTH, &deny).is_ok());
        let allow = Filters {
            allow: vec!["good".into()],
            ..Filters::default()
        };
        assert!(admit(&o, "good", BOTH, &allow).is_ok());
        assert_eq!(admit(&o, "other", BOTH, &allow), Err(LeftOut::NotAllowed));
        let both = Filters {
            allow: vec!["good".into()],
            deny: vec!["good".into()],
            ..Filters::default()
        };
        assert_eq!(
            admit(&o, "good", BOTH, &both),
            Err(LeftOut::Denied),
            "deny wins"
        );
    }

    #[test]
    fn offers_without_the_sizes_are_left_out_and_named() {
        let v4_only = offer(&[(32, 3, 0)], &[], 20);
        assert_eq!(
            admit(&v4_only, "p", BOTH, &Filters::default()),
            Err(LeftOut::Without("IPv6 /64".into()))
        );
        let none_left = offer(&[(32, 0, 0)], &[(64, 1, 0)], 20);
        assert_eq!(
            admit(&none_left, "p", BOTH, &Filters::default()),
            Err(LeftOut::Without("IPv4 /32".into()))
        );
        let v6_only = Sizes {
            ipv4: None,
            ipv6: Some(64),
        };
        assert!(admit(&none_left, "p", v6_only, &Filters::default()).is_ok());
    }

    #[test]
    fn tally_says_how_many_each_filter_removed() {
        let mut t = Tally::default();
        t.count(Err(&LeftOut::AboveMaxPrice));
        t.count(Err(&LeftOut::Without("IPv6 /64".into())));
        t.count(Err(&LeftOut::AboveMaxPrice));
        assert_eq!(
            t.to_string(),
            "3 offers: 2 above max price, 1 without IPv6 /64"
        );
        t.count(Ok(()));
        t.count(Err(&LeftOut::Denied));
        assert_eq!(
            t.to_string(),
            "5 offers: 2 above max price, 1 denied, 1 without IPv6 /64"
        );
        assert_eq!(Tally::default().to_string(), "0 offers");
    }
}
