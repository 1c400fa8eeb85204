//! The `[provider]` section of the configuration: endpoint, address pools and terms of sale.

use serde::{Deserialize, Serialize};

use crate::types::Terms;

/// `[provider]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// WireGuard endpoint renters connect to: "ip:port", "[ipv6]:port" or "name:port".
    pub endpoint: String,
    /// IPv4 pools (CIDR, /24 or longer: prefixes from these are leased).
    pub ipv4_pools: Vec<String>,
    /// IPv6 pools (CIDR).
    pub ipv6_pools: Vec<String>,
    /// IPv4 prefix length per lease (28..=32).
    pub ipv4_prefix_len: u8,
    /// IPv6 prefix length per lease (56..=64).
    pub ipv6_prefix_len: u8,
    /// Offers expire after this many seconds and are re-signed before then.
    pub offer_ttl_secs: u64,
    /// Invoice expiry.
    pub invoice_expiry_secs: u64,
    /// Seconds between metering passes.
    pub metering_interval_secs: u64,
    /// Terms of sale.
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
            ipv4_prefix_len: 32,
            ipv6_prefix_len: 64,
            offer_ttl_secs: 3600,
            invoice_expiry_secs: 600,
            metering_interval_secs: 5,
            terms: Terms {
                activation_fee_sat: 1_000,
                rate_sat_per_day: 100,
                min_initial_credit_sat: 700,
                min_topup_sat: 100,
                max_credit_sat: 36_500,
                reserve_days: 7,
            },
            fault: FaultConfig::default(),
        }
    }
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
}
