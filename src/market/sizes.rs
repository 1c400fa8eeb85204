//! Prefix families and sizes: what an offer leases, what a renter asks for, and the price of
//! the combination. Pure functions, no I/O; the provider, the renter's check of the invoice
//! commitment and the ranking all use [`effective_terms`], so they cannot disagree.
//!
//! An offer's `terms.rate_sat_per_day` is the base rate of a lease (the tunnel); each
//! [`PrefixAvailability`] adds its own `rate_sat_per_day` for one prefix of that size. The
//! effective rate of a lease is the base rate plus the rate of the IPv4 size asked (if any)
//! plus the rate of the IPv6 size asked (if any). Leases and invoice commitments carry the
//! effective terms, so everything downstream (credit, metering, top-ups) uses one rate.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::types::{Sats, Terms};
use crate::wire::{Offer, PrefixAvailability};

/// IPv4 prefix lengths a lease may have.
pub const IPV4_LENS: std::ops::RangeInclusive<u8> = 28..=32;
/// IPv6 prefix lengths a lease may have.
pub const IPV6_LENS: std::ops::RangeInclusive<u8> = 56..=64;

/// What a renter asks for: a prefix length per family, `None` for a family it does not want.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Sizes {
    /// IPv4 prefix length wanted (`None`: no IPv4).
    pub ipv4: Option<u8>,
    /// IPv6 prefix length wanted (`None`: no IPv6).
    pub ipv6: Option<u8>,
}

impl Sizes {
    /// Checks the request: at least one family, each length in its family's range.
    ///
    /// # Errors
    /// [`SizeError::NothingAsked`] or [`SizeError::OutOfRange`].
    pub fn validate(&self) -> Result<(), SizeError> {
        if self.ipv4.is_none() && self.ipv6.is_none() {
            return Err(SizeError::NothingAsked);
        }
        check_len(Family::V4, self.ipv4)?;
        check_len(Family::V6, self.ipv6)
    }
}

impl fmt::Display for Sizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let one = |l: Option<u8>| l.map_or("none".to_owned(), |l| format!("/{l}"));
        write!(f, "IPv4 {}, IPv6 {}", one(self.ipv4), one(self.ipv6))
    }
}

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// "IPv4" or "IPv6".
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The prefix lengths a lease of this family may have.
    pub fn lens(self) -> std::ops::RangeInclusive<u8> {
        match self {
            Family::V4 => IPV4_LENS,
            Family::V6 => IPV6_LENS,
        }
    }
}

fn check_len(family: Family, len: Option<u8>) -> Result<(), SizeError> {
    match len {
        Some(l) if !family.lens().contains(&l) => Err(SizeError::OutOfRange { family, len: l }),
        _ => Ok(()),
    }
}

/// Why a size request or an offer's size list does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SizeError {
    /// Neither family asked for.
    #[error("ask for an IPv4 or an IPv6 prefix (or both)")]
    NothingAsked,
    /// A length outside its family's range.
    #[error("{} /{len} is outside /{}../{}", family.name(), family.lens().start(), family.lens().end())]
    OutOfRange {
        /// Family.
        family: Family,
        /// Length.
        len: u8,
    },
    /// A size listed twice for a family.
    #[error("{} /{len} is listed twice", family.name())]
    Duplicate {
        /// Family.
        family: Family,
        /// Length.
        len: u8,
    },
    /// The offer does not lease a size asked for.
    #[error("this provider leases {offered}; asked for {asked}")]
    NotOffered {
        /// What the offer leases, e.g. "IPv4 /32 /30, IPv6 none".
        offered: String,
        /// What was asked.
        asked: Sizes,
    },
    /// A combination that costs nothing per day: credit would last forever.
    #[error("a lease of {0} would cost 0 sat per day")]
    ZeroRate(Sizes),
    /// The rates overflow.
    #[error("the daily rate of {0} overflows")]
    Overflow(Sizes),
}

/// "IPv4 /32 /30, IPv6 none": the sizes an offer (or a configuration) leases, for messages.
pub fn describe(ipv4: &[PrefixAvailability], ipv6: &[PrefixAvailability]) -> String {
    let one = |l: &[PrefixAvailability]| {
        if l.is_empty() {
            "none".to_owned()
        } else {
            l.iter()
                .map(|a| format!("/{}", a.prefix_len))
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    format!("IPv4 {}, IPv6 {}", one(ipv4), one(ipv6))
}

/// The terms of a lease of `asked` under `terms` with the given size lists: `terms` with the
/// base rate plus the rate of each size asked. Refuses sizes the lists do not hold (whatever
/// their availability: that is the pool's business), a request for nothing, and a combination
/// whose rate is 0.
///
/// # Errors
/// [`SizeError`].
pub fn effective_terms_of(
    terms: &Terms,
    ipv4: &[PrefixAvailability],
    ipv6: &[PrefixAvailability],
    asked: Sizes,
) -> Result<Terms, SizeError> {
    if asked.ipv4.is_none() && asked.ipv6.is_none() {
        return Err(SizeError::NothingAsked);
    }
    let rate_of = |list: &[PrefixAvailability], len: Option<u8>| -> Result<Sats, SizeError> {
        match len {
            None => Ok(0),
            Some(l) => list
                .iter()
                .find(|a| a.prefix_len == l)
                .map(|a| a.rate_sat_per_day)
                .ok_or_else(|| SizeError::NotOffered {
                    offered: describe(ipv4, ipv6),
                    asked,
                }),
        }
    };
    let (r4, r6) = (rate_of(ipv4, asked.ipv4)?, rate_of(ipv6, asked.ipv6)?);
    let rate = terms
        .rate_sat_per_day
        .checked_add(r4)
        .and_then(|r| r.checked_add(r6))
        .ok_or(SizeError::Overflow(asked))?;
    if rate == 0 {
        return Err(SizeError::ZeroRate(asked));
    }
    Ok(Terms {
        rate_sat_per_day: rate,
        ..terms.clone()
    })
}

/// [`effective_terms_of`] for an offer.
///
/// # Errors
/// [`SizeError`].
pub fn effective_terms(offer: &Offer, asked: Sizes) -> Result<Terms, SizeError> {
    effective_terms_of(&offer.terms, &offer.ipv4, &offer.ipv6, asked)
}

/// Whether `offer` lists every size of `asked` with at least one prefix available.
pub fn serves(offer: &Offer, asked: Sizes) -> bool {
    let has = |list: &[PrefixAvailability], len: Option<u8>| match len {
        None => true,
        Some(l) => list.iter().any(|a| a.prefix_len == l && a.available > 0),
    };
    (asked.ipv4.is_some() || asked.ipv6.is_some())
        && has(&offer.ipv4, asked.ipv4)
        && has(&offer.ipv6, asked.ipv6)
}

/// Checks an offer's size lists: lengths in range, no duplicates, at least one size, and a
/// daily rate above 0 for every combination it sells (IPv4 alone, IPv6 alone, both).
///
/// # Errors
/// [`SizeError`]; `NothingAsked` when the offer lists no size at all.
pub fn validate_sizes(
    terms: &Terms,
    ipv4: &[PrefixAvailability],
    ipv6: &[PrefixAvailability],
) -> Result<(), SizeError> {
    for (family, list) in [(Family::V4, ipv4), (Family::V6, ipv6)] {
        for (n, a) in list.iter().enumerate() {
            check_len(family, Some(a.prefix_len))?;
            if list[..n].iter().any(|b| b.prefix_len == a.prefix_len) {
                return Err(SizeError::Duplicate {
                    family,
                    len: a.prefix_len,
                });
            }
        }
    }
    if ipv4.is_empty() && ipv6.is_empty() {
        return Err(SizeError::NothingAsked);
    }
    let choices = |list: &[PrefixAvailability]| -> Vec<Option<u8>> {
        std::iter::once(None)
            .chain(list.iter().map(|a| Some(a.prefix_len)))
            .collect()
    };
    for v4 in choices(ipv4) {
        for v6 in choices(ipv6) {
            let asked = Sizes { ipv4: v4, ipv6: v6 };
            if v4.is_some() || v6.is_some() {
                effective_terms_of(terms, ipv4, ipv6, asked)?;
            }
        }
    }
    Ok(())
}

/// Serde for a prefix length that may be `"none"`: an integer, or the string `"none"` for a
/// family not wanted (TOML has no null). Used by the renter's `ipv4_prefix_len` and
/// `ipv6_prefix_len`.
pub mod len_or_none {
    use super::*;

    /// Writes `None` as `"none"`, a length as an integer.
    pub fn serialize<S: Serializer>(v: &Option<u8>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(l) => s.serialize_u8(*l),
            None => s.serialize_str("none"),
        }
    }

    /// Reads an integer (0..=128) or `"none"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Len(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Len(l) => u8::try_from(l)
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("prefix length {l} is too long"))),
            Raw::Text(t) => parse_len_or_none(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"none"` or a prefix length (`"30"`, `"/30"`), as the CLI and the control API take it.
///
/// # Errors
/// A message naming what was given.
pub fn parse_len_or_none(s: &str) -> Result<Option<u8>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    t.strip_prefix('/')
        .unwrap_or(t)
        .parse::<u8>()
        .map(Some)
        .map_err(|_| format!("want a prefix length or \"none\", got {s:?}"))
}

/// A size a provider leases in a family and its daily price, as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizePrice {
    /// Prefix length.
    pub prefix_len: u8,
    /// Daily price of one prefix of that length, added to the base rate.
    #[serde(default)]
    pub rate_sat_per_day: Sats,
}

impl SizePrice {
    /// This size with `available` prefixes free, as an offer lists it.
    pub fn with_available(self, available: u32) -> PrefixAvailability {
        PrefixAvailability {
            prefix_len: self.prefix_len,
            available,
            rate_sat_per_day: self.rate_sat_per_day,
        }
    }
}

/// Offers for tests of the pure modules (sizes, ranking).
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// An offer with these size lists, as (prefix length, available, daily price).
    pub(crate) fn offer(ipv4: &[(u8, u32, Sats)], ipv6: &[(u8, u32, Sats)], terms: Terms) -> Offer {
        let list = |l: &[(u8, u32, Sats)]| {
            l.iter()
                .map(
                    |&(prefix_len, available, rate_sat_per_day)| PrefixAvailability {
                        prefix_len,
                        available,
                        rate_sat_per_day,
                    },
                )
                .collect()
        };
        Offer {
            provider: String::new(),
            seq: 1,
            created_at: 0,
            expires_at: 0,
            network: String::new(),
            ln_pubkey: String::new(),
            wg_pubkey: crate::types::WgKey([0; 32]),
            endpoint: String::new(),
            ipv4: list(ipv4),
            ipv6: list(ipv6),
            terms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(rate: Sats) -> Terms {
        Terms {
            activation_fee_sat: 1000,
            rate_sat_per_day: rate,
            min_initial_credit_sat: 500,
            min_topup_sat: 100,
            max_credit_sat: 10_000,
            reserve_days: 7,
            refund_unused: false,
            reservation_secs: 0,
        }
    }

    fn pa(prefix_len: u8, available: u32, rate: Sats) -> PrefixAvailability {
        PrefixAvailability {
            prefix_len,
            available,
            rate_sat_per_day: rate,
        }
    }

    fn sz(ipv4: Option<u8>, ipv6: Option<u8>) -> Sizes {
        Sizes { ipv4, ipv6 }
    }

    #[test]
    fn effective_rate_is_base_plus_each_size_asked() {
        let v4 = [pa(32, 5, 10), pa(30, 1, 40)];
        let v6 = [pa(64, 9, 5)];
        let t = terms(20);
        let rate = |a| {
            effective_terms_of(&t, &v4, &v6, a)
                .unwrap()
                .rate_sat_per_day
        };
        assert_eq!(rate(sz(Some(32), None)), 30);
        assert_eq!(rate(sz(Some(30), Some(64))), 65);
        assert_eq!(rate(sz(None, Some(64))), 25);
        let e = effective_terms_of(&t, &v4, &v6, sz(Some(32), None)).unwrap();
        assert_eq!(e.activation_fee_sat, 1000, "only the rate changes");
    }

    #[test]
    fn sizes_not_offered_are_refused_with_what_is_offered() {
        let v4 = [pa(32, 5, 0), pa(30, 1, 0)];
        let e = effective_terms_of(&terms(10), &v4, &[], sz(Some(32), Some(64))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "this provider leases IPv4 /32 /30, IPv6 none; asked for IPv4 /32, IPv6 /64"
        );
        let e = effective_terms_of(&terms(10), &v4, &[], sz(Some(29), None)).unwrap_err();
        assert!(matches!(e, SizeError::NotOffered { .. }), "{e}");
        assert_eq!(
            effective_terms_of(&terms(10), &v4, &[], sz(None, None)),
            Err(SizeError::NothingAsked)
        );
    }

    #[test]
    fn zero_rate_combinations_are_refused() {
        // Base 0 is fine when every size has a price.
        let v4 = [pa(32, 1, 10)];
        let v6 = [pa(64, 1, 5)];
        assert_eq!(validate_sizes(&terms(0), &v4, &v6), Ok(()));
        let v6_free = [pa(64, 1, 0)];
        assert_eq!(
            validate_sizes(&terms(0), &v4, &v6_free),
            Err(SizeError::ZeroRate(sz(None, Some(64))))
        );
        assert_eq!(validate_sizes(&terms(1), &v4, &v6_free), Ok(()));
    }

    #[test]
    fn offer_sizes_are_checked() {
        let t = terms(10);
        assert!(matches!(
            validate_sizes(&t, &[pa(27, 1, 0)], &[]),
            Err(SizeError::OutOfRange { len: 27, .. })
        ));
        assert!(matches!(
            validate_sizes(&t, &[], &[pa(48, 1, 0)]),
            Err(SizeError::OutOfRange { len: 48, .. })
        ));
        assert!(matches!(
            validate_sizes(&t, &[pa(32, 1, 0), pa(32, 2, 3)], &[]),
            Err(SizeError::Duplicate { len: 32, .. })
        ));
        assert_eq!(validate_sizes(&t, &[], &[]), Err(SizeError::NothingAsked));
        assert_eq!(validate_sizes(&t, &[], &[pa(56, 0, 0)]), Ok(()));
    }

    #[test]
    fn serves_needs_every_size_asked_with_availability() {
        let o = testing::offer(&[(32, 3, 0), (30, 0, 0)], &[], terms(10));
        assert!(serves(&o, sz(Some(32), None)));
        assert!(!serves(&o, sz(Some(30), None)), "none available");
        assert!(!serves(&o, sz(Some(32), Some(64))), "no IPv6");
        assert!(!serves(&o, sz(None, None)));
    }

    #[test]
    fn len_or_none_parses_and_round_trips() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct T {
            #[serde(with = "len_or_none")]
            l: Option<u8>,
        }
        for (text, want) in [("l = 30", Some(30)), ("l = \"none\"", None)] {
            let t: T = toml::from_str(text).unwrap();
            assert_eq!(t.l, want);
            assert_eq!(
                toml::from_str::<T>(&toml::to_string(&t).unwrap()).unwrap(),
                t
            );
        }
        assert!(toml::from_str::<T>("l = \"all\"").is_err());
        assert!(toml::from_str::<T>("l = 300").is_err());
        assert_eq!(parse_len_or_none("none"), Ok(None));
        assert_eq!(parse_len_or_none("/30"), Ok(Some(30)));
        assert!(parse_len_or_none("x").is_err());
        assert_eq!(sz(Some(30), None).validate(), Ok(()));
        assert_eq!(sz(None, None).validate(), Err(SizeError::NothingAsked));
        assert!(sz(Some(27), None).validate().is_err());
        assert!(sz(None, Some(65)).validate().is_err());
    }
}
