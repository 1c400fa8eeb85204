//! The `[renter]` section of the configuration: what to ask for, what to pay, AutoPay and
//! spending limits.

use serde::{Deserialize, Serialize};

/// `[renter]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RenterConfig {
    /// Credit bought with a new lease when `rent` is not given `--credit`.
    pub default_credit_sat: u64,
    /// IPv4 prefix length asked for (28..=32), or `"none"` for no IPv4. `rent --ipv4`
    /// overrides it.
    #[serde(with = "crate::market::sizes::len_or_none")]
    pub ipv4_prefix_len: Option<u8>,
    /// IPv6 prefix length asked for (56..=64), or `"none"` for no IPv6. `rent --ipv6`
    /// overrides it.
    #[serde(with = "crate::market::sizes::len_or_none")]
    pub ipv6_prefix_len: Option<u8>,
    /// Offers whose daily rate for the sizes asked (base plus sizes) is above this are left
    /// out of ranking, for `rent` and AutoPay's failover. `None`: no limit. `rent
    /// --max-price` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price_sat_per_day: Option<u64>,
    /// When not empty, only offers of these providers (PeerIds) are ranked. `rent --allow`
    /// overrides it.
    pub allow_providers: Vec<String>,
    /// Offers of these providers (PeerIds) are never ranked. `rent --deny` overrides it.
    pub deny_providers: Vec<String>,
    /// Refuse invoices with less expiry left than this.
    pub min_invoice_expiry_secs: u64,
    /// Never pay more than this for one invoice.
    pub max_invoice_sat: u64,
    /// Send all traffic through the tunnel instead of only traffic from the leased addresses.
    pub full_tunnel: bool,
    /// Spending limits the renter enforces before paying (`[renter.limits]`); none by default.
    pub limits: crate::market::limits::LimitsConfig,
    /// AutoPay: keep each lease's credit between two watermarks (`[renter.autopay]`).
    pub autopay: super::AutopayConfig,
    /// A provider that failed to answer this many requests in a row (timeouts, unreachable:
    /// hello, rent, paymentResult, status) is dropped from the offer list until it answers
    /// again; after one failure it is already ranked below providers without one. 0: never
    /// dropped.
    pub drop_after_failures: u32,
    /// Failover: a lease whose tunnel has failed every check for longer than this (or whose
    /// provider gave notice or vanished) is replaced by AutoPay with a lease from another
    /// provider ("5m"; `"off"` or `"0"`: no failover at all, the checks still show in
    /// `status`). See docs/PAYMENTS.md, "Failover".
    #[serde(with = "crate::market::limits::serde_duration::off")]
    pub failover_grace: Option<std::time::Duration>,
}

impl Default for RenterConfig {
    fn default() -> Self {
        RenterConfig {
            default_credit_sat: 3_000,
            ipv4_prefix_len: Some(32),
            ipv6_prefix_len: Some(64),
            max_price_sat_per_day: None,
            allow_providers: Vec::new(),
            deny_providers: Vec::new(),
            min_invoice_expiry_secs: 60,
            max_invoice_sat: 100_000,
            full_tunnel: false,
            limits: crate::market::limits::LimitsConfig::default(),
            autopay: super::AutopayConfig::default(),
            drop_after_failures: 3,
            failover_grace: Some(std::time::Duration::from_secs(300)),
        }
    }
}

impl RenterConfig {
    /// The sizes asked for when `rent` does not say.
    pub fn sizes(&self) -> crate::market::sizes::Sizes {
        crate::market::sizes::Sizes {
            ipv4: self.ipv4_prefix_len,
            ipv6: self.ipv6_prefix_len,
        }
    }

    /// The offer filters when `rent` does not say.
    pub fn filters(&self) -> super::Filters {
        super::Filters {
            max_price_sat_per_day: self.max_price_sat_per_day,
            allow: self.allow_providers.clone(),
            deny: self.deny_providers.clone(),
        }
    }

    /// Checks the sizes and the provider lists; the message names the offending key.
    ///
    /// # Errors
    /// A message for the user.
    pub fn validate(&self) -> Result<(), String> {
        use crate::market::sizes::SizeError;
        match self.sizes().validate() {
            Ok(()) => {}
            Err(SizeError::NothingAsked) => {
                return Err(
                    "renter.ipv4_prefix_len and renter.ipv6_prefix_len are both \"none\": \
                     ask for at least one family"
                        .into(),
                );
            }
            Err(SizeError::OutOfRange { family, .. }) => {
                let (key, range) = match family {
                    crate::market::sizes::Family::V4 => ("renter.ipv4_prefix_len", "28..=32"),
                    crate::market::sizes::Family::V6 => ("renter.ipv6_prefix_len", "56..=64"),
                };
                return Err(format!("{key} must be {range} or \"none\""));
            }
            Err(e) => return Err(format!("renter prefix lengths: {e}")),
        }
        for (key, list) in [
            ("renter.allow_providers", &self.allow_providers),
            ("renter.deny_providers", &self.deny_providers),
        ] {
            for p in list {
                p.parse::<libp2p::PeerId>()
                    .map_err(|_| format!("{key}: {p:?} is not a PeerId"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn failover_grace_is_a_strict_duration_or_off() {
        assert_eq!(
            RenterConfig::default().failover_grace,
            Some(Duration::from_secs(300))
        );
        let parse =
            |v: &str| toml::from_str::<RenterConfig>(&format!("failover_grace = \"{v}\"\n"));
        assert_eq!(
            parse("10m").unwrap().failover_grace,
            Some(Duration::from_secs(600))
        );
        assert_eq!(parse("off").unwrap().failover_grace, None);
        assert_eq!(parse("0").unwrap().failover_grace, None);
        for bad in ["5", "5 m", "-1m", "1.5m", "never", ""] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        // It round-trips, "off" included.
        for v in [Some(Duration::from_secs(120)), None] {
            let c = RenterConfig {
                failover_grace: v,
                ..RenterConfig::default()
            };
            let text = toml::to_string(&c).unwrap();
            assert_eq!(toml::from_str::<RenterConfig>(&text).unwrap(), c, "{text}");
        }
    }

    #[test]
    fn sizes_take_a_length_or_none_and_round_trip() {
        let c: RenterConfig =
            toml::from_str("ipv4_prefix_len = 30\nipv6_prefix_len = \"none\"\n").unwrap();
        assert_eq!((c.ipv4_prefix_len, c.ipv6_prefix_len), (Some(30), None));
        c.validate().unwrap();
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("ipv6_prefix_len = \"none\""), "{text}");
        assert_eq!(toml::from_str::<RenterConfig>(&text).unwrap(), c);
        let both: RenterConfig =
            toml::from_str("ipv4_prefix_len = \"none\"\nipv6_prefix_len = \"none\"\n").unwrap();
        assert!(both.validate().unwrap_err().contains("both"));
        let bad: RenterConfig = toml::from_str("ipv4_prefix_len = 27\n").unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("renter.ipv4_prefix_len")
        );
        let bad: RenterConfig = toml::from_str("ipv6_prefix_len = 65\n").unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("renter.ipv6_prefix_len")
        );
        assert!(toml::from_str::<RenterConfig>("ipv4_prefix_len = \"all\"\n").is_err());
    }

    #[test]
    fn filters_default_to_none_and_check_peer_ids() {
        let c = RenterConfig::default();
        assert_eq!(c.filters(), super::super::Filters::default());
        let peer = libp2p::PeerId::random().to_string();
        let c: RenterConfig = toml::from_str(&format!(
            "max_price_sat_per_day = 50\nallow_providers = [\"{peer}\"]\n"
        ))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.filters().max_price_sat_per_day, Some(50));
        assert_eq!(c.filters().allow, [peer]);
        assert_eq!(
            toml::from_str::<RenterConfig>(&toml::to_string(&c).unwrap()).unwrap(),
            c
        );
        let bad: RenterConfig = toml::from_str("deny_providers = [\"x\"]\n").unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("renter.deny_providers")
        );
    }
}
