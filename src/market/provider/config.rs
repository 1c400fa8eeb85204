//! The `[provider]` section of the configuration: endpoint, address pools, the sizes leased
//! and terms of sale. [`ProviderConfig::validate`] checks it; `crate::config` calls it.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::market::pool::PoolRules;
use crate::market::sizes::{self, Family, SizePrice};
use crate::types::{Terms, TermsError};
use crate::wire::PrefixAvailability;

/// How long an unpaid activation invoice holds its prefixes by default (`terms.reservation_secs`).
pub const DEFAULT_RESERVATION_SECS: u64 = 120;
/// Default of [`ProviderConfig::max_unpaid_per_peer`].
pub const DEFAULT_MAX_UNPAID_PER_PEER: usize = 4;
/// Default of [`ProviderConfig::max_unpaid_per_ip`].
pub const DEFAULT_MAX_UNPAID_PER_IP: usize = 8;
/// Default of [`ProviderConfig::max_unpaid_total`].
pub const DEFAULT_MAX_UNPAID_TOTAL: usize = 32;
/// Default of [`ProviderConfig::min_free_disk_mib`].
pub const DEFAULT_MIN_FREE_DISK_MIB: u64 = 64;
/// Shortest `terms.reservation_secs`: renters refuse invoices that expire within a minute.
pub const MIN_RESERVATION_SECS: u64 = 60;
/// Longest `terms.reservation_secs`.
pub const MAX_RESERVATION_SECS: u64 = 3_600;

/// `[provider]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// WireGuard endpoint renters connect to: "ip:port", "[ipv6]:port" or "name:port".
    pub endpoint: String,
    /// IPv4 pools (CIDR): prefixes of every size in `ipv4_sizes` are leased from these.
    /// Empty: no IPv4 offered.
    pub ipv4_pools: Vec<String>,
    /// IPv6 pools (CIDR). Empty: no IPv6 offered.
    pub ipv6_pools: Vec<String>,
    /// IPv4 sizes leased (/28../32), each with its daily price on top of the base rate.
    /// Empty: no IPv4 offered.
    pub ipv4_sizes: Vec<SizePrice>,
    /// IPv6 sizes leased (/56../64), each with its daily price on top of the base rate.
    /// Empty: no IPv6 offered.
    pub ipv6_sizes: Vec<SizePrice>,
    /// The provider's own addresses inside the pools: never leased. The endpoint's address
    /// is never leased either when it is a literal inside a pool.
    pub reserved_addresses: Vec<String>,
    /// The IPv4 pools are on-link (a LAN subnet) rather than routed to the provider: their
    /// network and broadcast addresses are never leased.
    pub ipv4_on_link: bool,
    /// Offers expire after this many seconds and are re-signed before then.
    pub offer_ttl_secs: u64,
    /// Expiry of top-up invoices, and of activation invoices when the terms do not state
    /// `reservation_secs`.
    pub invoice_expiry_secs: u64,
    /// Unpaid activation invoices (each holding prefixes) one peer may hold at once. Top-ups
    /// are capped per lease instead (eight at once).
    pub max_unpaid_per_peer: usize,
    /// Unpaid activation invoices (each holding prefixes until it expires) all peers together
    /// may hold at once.
    pub max_unpaid_total: usize,
    /// Unpaid activation invoices the peers behind one IP address may hold at once, when the
    /// network layer tells the provider the address ([`super::Provider::handle_from`]).
    pub max_unpaid_per_ip: usize,
    /// New work (rent and top-up requests) is refused while the data dir's file system has
    /// less than this many MiB free, so that what is already under way (a settlement, a
    /// suspension) still finds room. 0: no check of the free space.
    pub min_free_disk_mib: u64,
    /// Seconds between metering passes.
    pub metering_interval_secs: u64,
    /// Terms of sale; `rate_sat_per_day` is the base rate of a lease, to which the price of
    /// each size leased is added.
    pub terms: Terms,
    /// Fault injection for the simnet only (`[provider.fault]`); never set it on a real
    /// provider. Left out of a written config while everything in it is off.
    #[serde(skip_serializing_if = "FaultConfig::is_off")]
    pub fault: FaultConfig,
}

/// `[provider.fault]`: fault injection, for the simnet only. Each knob makes the provider
/// misbehave on purpose so the simnet can check that renters survive it; the daemon logs an
/// ERROR ("FAULT INJECTION: ...") at start while any is on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Take payment and never send the lease: invoices are issued and settle on our node, but
    /// `paymentResult` is answered with a retryable refusal (`NotSettled`) and no lease is
    /// ever issued for them.
    pub withhold_leases: bool,
}

impl FaultConfig {
    /// Whether no fault is injected.
    pub fn is_off(&self) -> bool {
        !self.withhold_leases
    }
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            endpoint: "203.0.113.10:51820".into(),
            ipv4_pools: vec!["198.51.100.0/28".into()],
            ipv6_pools: vec!["2001:db8:100::/48".into()],
            ipv4_sizes: vec![SizePrice {
                prefix_len: 32,
                rate_sat_per_day: 0,
            }],
            ipv6_sizes: vec![SizePrice {
                prefix_len: 64,
                rate_sat_per_day: 0,
            }],
            reserved_addresses: Vec::new(),
            ipv4_on_link: false,
            offer_ttl_secs: 3600,
            invoice_expiry_secs: 600,
            max_unpaid_per_peer: DEFAULT_MAX_UNPAID_PER_PEER,
            max_unpaid_total: DEFAULT_MAX_UNPAID_TOTAL,
            max_unpaid_per_ip: DEFAULT_MAX_UNPAID_PER_IP,
            min_free_disk_mib: DEFAULT_MIN_FREE_DISK_MIB,
            metering_interval_secs: 5,
            terms: Terms {
                activation_fee_sat: 1_000,
                rate_sat_per_day: 100,
                min_initial_credit_sat: 700,
                min_topup_sat: 100,
                max_credit_sat: 36_500,
                reserve_days: 7,
                refund_unused: false,
                reservation_secs: DEFAULT_RESERVATION_SECS,
            },
            fault: FaultConfig::default(),
        }
    }
}

/// Keys of older versions and what replaced them.
const REPLACED_KEYS: [(&str, &str); 2] = [
    (
        "ipv4_prefix_len",
        "provider.ipv4_prefix_len was replaced by provider.ipv4_sizes, e.g. \
         ipv4_sizes = [{ prefix_len = 32, rate_sat_per_day = 0 }]",
    ),
    (
        "ipv6_prefix_len",
        "provider.ipv6_prefix_len was replaced by provider.ipv6_sizes, e.g. \
         ipv6_sizes = [{ prefix_len = 64, rate_sat_per_day = 0 }]",
    ),
];

/// For a parse error about an unknown key of the `[provider]` section that an older version
/// had, what replaced it. (The renter's `ipv4_prefix_len` is valid, so an unknown-field error
/// naming it can only come from this section.)
pub fn replaced_key_hint(parse_message: &str) -> Option<&'static str> {
    REPLACED_KEYS
        .iter()
        .find(|(k, _)| parse_message.contains(&format!("unknown field `{k}`")))
        .map(|(_, hint)| *hint)
}

impl ProviderConfig {
    /// Seconds an activation invoice stays payable (and holds its prefixes).
    pub fn activation_expiry_secs(&self) -> u64 {
        match self.terms.reservation_secs {
            0 => self.invoice_expiry_secs,
            r => r,
        }
    }

    /// Whether `family` is offered: it has pools and sizes.
    pub fn offers(&self, family: Family) -> bool {
        match family {
            Family::V4 => !self.ipv4_pools.is_empty() && !self.ipv4_sizes.is_empty(),
            Family::V6 => !self.ipv6_pools.is_empty() && !self.ipv6_sizes.is_empty(),
        }
    }

    /// The sizes leased in `family` (none when the family is not offered).
    pub fn sizes(&self, family: Family) -> &[SizePrice] {
        if !self.offers(family) {
            return &[];
        }
        match family {
            Family::V4 => &self.ipv4_sizes,
            Family::V6 => &self.ipv6_sizes,
        }
    }

    /// The offer's size lists with `available(family, len)` prefixes free for each size.
    pub fn size_lists(
        &self,
        available: impl Fn(Family, u8) -> u32,
    ) -> (Vec<PrefixAvailability>, Vec<PrefixAvailability>) {
        let list = |f: Family| -> Vec<PrefixAvailability> {
            self.sizes(f)
                .iter()
                .map(|s| s.with_available(available(f, s.prefix_len)))
                .collect()
        };
        (list(Family::V4), list(Family::V6))
    }

    /// What the pool must never lease: the reserved addresses, the endpoint's address when it
    /// is a literal, and the on-link rule. Addresses that do not parse are left out
    /// ([`Self::validate`] refuses them).
    pub fn pool_rules(&self) -> PoolRules {
        let mut excluded: Vec<IpAddr> = self
            .reserved_addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        if let Some(ip) = self.endpoint_ip() {
            excluded.push(ip);
        }
        PoolRules {
            excluded,
            ipv4_on_link: self.ipv4_on_link,
        }
    }

    /// The endpoint's address when it is an IP literal ("ip:port" or "[ipv6]:port").
    fn endpoint_ip(&self) -> Option<IpAddr> {
        self.endpoint
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|s| s.ip())
    }

    /// Checks the section; the message names the offending key.
    ///
    /// # Errors
    /// A message for the user.
    pub fn validate(&self) -> Result<(), String> {
        match self.terms.validate() {
            // A base rate of 0 is fine when every size has a price: checked per combination.
            Ok(()) | Err(TermsError::ZeroRate) => {}
            Err(e) => return Err(format!("provider.terms: {e}")),
        }
        let r = self.terms.reservation_secs;
        if r != 0 && !(MIN_RESERVATION_SECS..=MAX_RESERVATION_SECS).contains(&r) {
            return Err(format!(
                "provider.terms.reservation_secs = {r}: use {MIN_RESERVATION_SECS}..={MAX_RESERVATION_SECS} \
                 (or 0 to leave it out of the terms)"
            ));
        }
        if self.max_unpaid_per_peer == 0
            || self.max_unpaid_per_ip == 0
            || self.max_unpaid_total == 0
        {
            return Err(
                "provider.max_unpaid_per_peer, provider.max_unpaid_per_ip and \
                 provider.max_unpaid_total must be at least 1"
                    .into(),
            );
        }
        if !self.endpoint.contains(':') {
            return Err("provider.endpoint must be host:port".into());
        }
        let pools = self.parse_pools()?;
        for (i, (key_a, a)) in pools.iter().enumerate() {
            for (key_b, b) in &pools[i + 1..] {
                if a.contains(b) || b.contains(a) {
                    return Err(format!(
                        "provider pools overlap: {a} ({key_a}) and {b} ({key_b})"
                    ));
                }
            }
        }
        for (family, key) in [
            (Family::V4, "provider.ipv4_sizes"),
            (Family::V6, "provider.ipv6_sizes"),
        ] {
            let all = match family {
                Family::V4 => &self.ipv4_sizes,
                Family::V6 => &self.ipv6_sizes,
            };
            for s in all {
                if !family.lens().contains(&s.prefix_len) {
                    return Err(format!(
                        "{key}: /{} is outside /{}../{}",
                        s.prefix_len,
                        family.lens().start(),
                        family.lens().end()
                    ));
                }
            }
            let Some(largest) = all.iter().map(|s| s.prefix_len).min() else {
                continue;
            };
            for (_, pool) in pools.iter().filter(|(_, p)| is_family(p, family)) {
                if pool.prefix_len() > largest {
                    return Err(format!(
                        "{} pool {pool} is smaller than a /{largest} ({key})",
                        family.name()
                    ));
                }
            }
        }
        for a in &self.reserved_addresses {
            a.parse::<IpAddr>()
                .map_err(|_| format!("provider.reserved_addresses: {a:?} is not an IP address"))?;
        }
        if !self.offers(Family::V4) && !self.offers(Family::V6) {
            return Err(
                "a provider needs provider.ipv4_pools with provider.ipv4_sizes, or \
                 provider.ipv6_pools with provider.ipv6_sizes"
                    .into(),
            );
        }
        let (v4, v6) = self.size_lists(|_, _| 0);
        sizes::validate_sizes(&self.terms, &v4, &v6).map_err(|e| format!("provider sizes: {e}"))
    }

    /// Every pool, parsed, with the key it came from.
    fn parse_pools(&self) -> Result<Vec<(&'static str, IpNet)>, String> {
        let mut out = Vec::new();
        for p in &self.ipv4_pools {
            let n: ipnet::Ipv4Net = p
                .parse()
                .map_err(|_| format!("provider.ipv4_pools: bad IPv4 pool {p:?}"))?;
            out.push(("provider.ipv4_pools", IpNet::V4(n.trunc())));
        }
        for p in &self.ipv6_pools {
            let n: ipnet::Ipv6Net = p
                .parse()
                .map_err(|_| format!("provider.ipv6_pools: bad IPv6 pool {p:?}"))?;
            out.push(("provider.ipv6_pools", IpNet::V6(n.trunc())));
        }
        Ok(out)
    }
}

fn is_family(n: &IpNet, f: Family) -> bool {
    matches!(
        (n, f),
        (IpNet::V4(_), Family::V4) | (IpNet::V6(_), Family::V6)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_injection_is_off_by_default_and_left_out_of_written_configs() {
        let c = ProviderConfig::default();
        assert!(c.fault.is_off());
        let text = toml::to_string(&c).unwrap();
        assert!(!text.contains("fault"), "{text}");
        let on: ProviderConfig = toml::from_str("[fault]\nwithhold_leases = true\n").unwrap();
        assert!(on.fault.withhold_leases && !on.fault.is_off());
        let text = toml::to_string(&on).unwrap();
        assert_eq!(toml::from_str::<ProviderConfig>(&text).unwrap(), on);
        assert!(toml::from_str::<ProviderConfig>("[fault]\nunknown = true\n").is_err());
    }

    fn size(prefix_len: u8, rate_sat_per_day: u64) -> SizePrice {
        SizePrice {
            prefix_len,
            rate_sat_per_day,
        }
    }

    fn check(edit: impl FnOnce(&mut ProviderConfig)) -> Result<(), String> {
        let mut c = ProviderConfig::default();
        edit(&mut c);
        c.validate()
    }

    #[test]
    fn defaults_offer_one_address_and_a_64() {
        let c = ProviderConfig::default();
        c.validate().unwrap();
        let (v4, v6) = c.size_lists(|_, _| 5);
        assert_eq!(
            (v4.len(), v4[0].prefix_len, v4[0].rate_sat_per_day),
            (1, 32, 0)
        );
        assert_eq!((v6.len(), v6[0].prefix_len), (1, 64));
        let parsed: ProviderConfig = toml::from_str("").unwrap();
        assert_eq!(parsed, c, "a section without the keys behaves as before");
    }

    #[test]
    fn sizes_parse_from_toml() {
        let c: ProviderConfig = toml::from_str(
            "ipv4_sizes = [{ prefix_len = 32, rate_sat_per_day = 10 }, { prefix_len = 30 }]\n\
             ipv6_sizes = []\n",
        )
        .unwrap();
        assert_eq!(c.ipv4_sizes, [size(32, 10), size(30, 0)]);
        assert!(c.offers(Family::V4) && !c.offers(Family::V6));
        c.validate().unwrap();
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<ProviderConfig>(&text).unwrap(), c);
    }

    #[test]
    fn old_keys_name_the_new_ones() {
        let e = toml::from_str::<ProviderConfig>("ipv4_prefix_len = 30\n").unwrap_err();
        assert_eq!(
            replaced_key_hint(&e.to_string()).map(|h| h.contains("provider.ipv4_sizes")),
            Some(true),
            "{e}"
        );
        let e = toml::from_str::<ProviderConfig>("ipv6_prefix_len = 64\n").unwrap_err();
        assert!(replaced_key_hint(&e.to_string()).is_some());
        assert_eq!(replaced_key_hint("unknown field `endpointt`"), None);
    }

    #[test]
    fn overlapping_pools_are_refused_naming_both() {
        let e = check(|c| {
            c.ipv4_pools = vec!["198.51.100.0/28".into(), "198.51.100.8/29".into()];
        })
        .unwrap_err();
        assert!(
            e.contains("198.51.100.0/28") && e.contains("198.51.100.8/29"),
            "{e}"
        );
        let e = check(|c| {
            c.ipv6_pools = vec!["2001:db8:100::/48".into(), "2001:db8::/32".into()];
        })
        .unwrap_err();
        assert!(e.contains("overlap"), "{e}");
        check(|c| c.ipv4_pools = vec!["198.51.100.0/28".into(), "198.51.100.16/28".into()])
            .unwrap();
    }

    #[test]
    fn pools_must_hold_the_largest_size() {
        let e = check(|c| {
            c.ipv4_pools = vec!["198.51.100.0/30".into()];
            c.ipv4_sizes = vec![size(32, 0), size(29, 0)];
        })
        .unwrap_err();
        assert!(e.contains("smaller than a /29"), "{e}");
        check(|c| {
            c.ipv4_pools = vec!["198.51.100.0/29".into()];
            c.ipv4_sizes = vec![size(32, 0), size(29, 0)];
        })
        .unwrap();
    }

    #[test]
    fn sizes_and_rates_are_checked() {
        let e = check(|c| c.ipv4_sizes = vec![size(27, 0)]).unwrap_err();
        assert!(e.contains("ipv4_sizes") && e.contains("/27"), "{e}");
        let e = check(|c| c.ipv6_sizes = vec![size(48, 0)]).unwrap_err();
        assert!(e.contains("ipv6_sizes"), "{e}");
        let e = check(|c| c.ipv4_sizes = vec![size(32, 0), size(32, 5)]).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        // Base rate 0: every size needs a price.
        let e = check(|c| c.terms.rate_sat_per_day = 0).unwrap_err();
        assert!(e.contains("0 sat per day"), "{e}");
        check(|c| {
            c.terms.rate_sat_per_day = 0;
            c.ipv4_sizes = vec![size(32, 10)];
            c.ipv6_sizes = vec![size(64, 3)];
        })
        .unwrap();
        let e = check(|c| c.terms.min_initial_credit_sat = 1_000_000).unwrap_err();
        assert!(e.contains("provider.terms"), "{e}");
    }

    #[test]
    fn reservation_time_and_unpaid_caps_are_checked() {
        let d = ProviderConfig::default();
        assert_eq!(d.terms.reservation_secs, DEFAULT_RESERVATION_SECS);
        assert_eq!(d.activation_expiry_secs(), DEFAULT_RESERVATION_SECS);
        for bad in [1, MIN_RESERVATION_SECS - 1, MAX_RESERVATION_SECS + 1] {
            let e = check(|c| c.terms.reservation_secs = bad).unwrap_err();
            assert!(e.contains("provider.terms.reservation_secs"), "{e}");
        }
        check(|c| c.terms.reservation_secs = MIN_RESERVATION_SECS).unwrap();
        // Not stated: the activation invoice expires like any other.
        check(|c| c.terms.reservation_secs = 0).unwrap();
        let c = ProviderConfig {
            terms: Terms {
                reservation_secs: 0,
                ..d.terms.clone()
            },
            ..ProviderConfig::default()
        };
        assert_eq!(c.activation_expiry_secs(), c.invoice_expiry_secs);
        for edit in [
            (|c: &mut ProviderConfig| c.max_unpaid_per_peer = 0) as fn(&mut ProviderConfig),
            |c: &mut ProviderConfig| c.max_unpaid_total = 0,
            |c: &mut ProviderConfig| c.max_unpaid_per_ip = 0,
        ] {
            let e = check(edit).unwrap_err();
            assert!(e.contains("max_unpaid"), "{e}");
        }
    }

    #[test]
    fn families_may_be_left_out_but_not_both() {
        check(|c| c.ipv6_pools.clear()).unwrap();
        check(|c| c.ipv4_sizes.clear()).unwrap();
        let e = check(|c| {
            c.ipv4_sizes.clear();
            c.ipv6_pools.clear();
        })
        .unwrap_err();
        assert!(e.contains("needs"), "{e}");
        let c = ProviderConfig {
            ipv6_pools: Vec::new(),
            ..ProviderConfig::default()
        };
        assert!(c.size_lists(|_, _| 1).1.is_empty(), "IPv6 not offered");
    }

    #[test]
    fn reserved_addresses_and_a_literal_endpoint_are_excluded() {
        let e = check(|c| c.reserved_addresses = vec!["nope".into()]).unwrap_err();
        assert!(e.contains("reserved_addresses"), "{e}");
        let c = ProviderConfig {
            endpoint: "198.51.100.1:51820".into(),
            reserved_addresses: vec!["198.51.100.2".into(), "2001:db8:100::1".into()],
            ipv4_on_link: true,
            ..ProviderConfig::default()
        };
        c.validate().unwrap();
        let r = c.pool_rules();
        assert!(r.ipv4_on_link);
        let want: Vec<IpAddr> = ["198.51.100.2", "2001:db8:100::1", "198.51.100.1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(r.excluded, want);
        let named = ProviderConfig {
            endpoint: "vpn.example.net:51820".into(),
            ..ProviderConfig::default()
        };
        assert!(named.pool_rules().excluded.is_empty());
    }
}
