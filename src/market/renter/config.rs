//! The `[renter]` section of the configuration: what to ask for, what to pay, AutoPay and
//! spending limits.

use serde::{Deserialize, Serialize};

/// `[renter]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RenterConfig {
    /// Credit bought with a new lease when `rent` is not given `--credit`.
    pub default_credit_sat: u64,
    /// IPv4 prefix length asked for (None: no IPv4).
    pub ipv4_prefix_len: Option<u8>,
    /// IPv6 prefix length asked for (None: no IPv6).
    pub ipv6_prefix_len: Option<u8>,
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
}
