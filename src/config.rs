//! The daemon's configuration: `D/config.toml`, loaded with [`Config::load`].
//!
//! Every field has a default, so a file only needs what differs; `leasewire init` writes a
//! commented file from the templates in `config/`. Paths that are relative are taken relative to
//! the data dir. Backends are named here and nowhere else but `node.rs`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::types::Terms;

/// Errors loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Parser message, with line and column.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Offers addresses.
    Provider,
    /// Rents addresses.
    Renter,
}

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Identity, roles, networking and discovery.
    pub node: NodeConfig,
    /// The Lightning node (LND) the daemon pays from or is paid to.
    pub lightning: LightningConfig,
    /// WireGuard tunnel backend.
    pub tunnel: TunnelConfig,
    /// Provider role settings.
    pub provider: ProviderConfig,
    /// Renter role settings.
    pub renter: RenterConfig,
}

/// `[node]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Roles this daemon runs.
    pub roles: Vec<Role>,
    /// libp2p listen multiaddrs.
    pub listen: Vec<String>,
    /// Bootstrap peers: multiaddrs ending in `/p2p/<PeerId>`.
    pub bootstrap: Vec<String>,
    /// Addresses to announce to the DHT; empty: the bound listen addresses.
    pub external: Vec<String>,
    /// Shared secret naming the market. Empty: the public market (documented default secret).
    pub secret: String,
    /// Alternatively, a file holding the secret (first line), so it stays out of config.toml.
    pub secret_file: Option<PathBuf>,
    /// Seconds between DHT lookups / offer refreshes.
    pub discovery_interval_secs: u64,
    /// Seconds to wait for a peer's answer.
    pub request_timeout_secs: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            roles: vec![Role::Renter],
            listen: vec!["/ip4/0.0.0.0/tcp/4710".into()],
            bootstrap: Vec::new(),
            external: Vec::new(),
            secret: String::new(),
            secret_file: None,
            discovery_interval_secs: 15,
            request_timeout_secs: 30,
        }
    }
}

/// `[lightning]`: how to reach LND's gRPC API, and the payment limits.
///
/// The node is found in this order (see [`crate::lightning::connect::connect_from_config`]):
/// `lndconnect` if set; else `tls_cert_path` + `macaroon_path` (both, relative to the data
/// dir); else the standard files under `lnd_dir`. `Debug` redacts `lndconnect` (it embeds the
/// macaroon).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LightningConfig {
    /// Expected network of the node ("regtest", "testnet", "testnet4", "signet", "mainnet",
    /// "simnet"); also picks the macaroon directory when autodetecting.
    pub network: String,
    /// An lndconnect URI (`lndconnect://host:port?cert=...&macaroon=...`); empty = unused.
    /// A secret: it carries the macaroon.
    pub lndconnect: String,
    /// LND gRPC `host:port`; `None` means `127.0.0.1:10009`. Ignored with `lndconnect`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// LND's `tls.cert` (pinned exactly). Set together with `macaroon_path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_path: Option<PathBuf>,
    /// Macaroon file (binary, as LND writes it). Set together with `tls_cert_path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub macaroon_path: Option<PathBuf>,
    /// LND's directory for autodetection; `None` means `$HOME/.lnd`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lnd_dir: Option<PathBuf>,
    /// Largest routing fee per payment, in satoshis (absolute cap).
    pub fee_limit_sat: u64,
    /// Largest routing fee as parts per million of the amount (0 = only the absolute cap).
    pub fee_limit_ppm: u64,
    /// Give up a payment after this many seconds.
    pub payment_timeout_secs: u32,
}

impl LightningConfig {
    /// LND's default gRPC address, used when `address` is unset.
    pub const DEFAULT_ADDRESS: &'static str = "127.0.0.1:10009";

    /// The routing-fee limit for paying `amount_msat`, in millisatoshis:
    /// `min(fee_limit_sat * 1000, ceil(amount_msat * fee_limit_ppm / 1_000_000))` when
    /// `fee_limit_ppm > 0`, else `fee_limit_sat * 1000`. Saturates instead of overflowing.
    pub fn fee_limit_msat(&self, amount_msat: u64) -> u64 {
        let cap = self.fee_limit_sat.saturating_mul(1000);
        if self.fee_limit_ppm == 0 {
            return cap;
        }
        let proportional =
            (u128::from(amount_msat) * u128::from(self.fee_limit_ppm)).div_ceil(1_000_000);
        cap.min(u64::try_from(proportional).unwrap_or(u64::MAX))
    }

    /// The gRPC address to use with paths or autodetection.
    pub fn address_or_default(&self) -> &str {
        self.address.as_deref().unwrap_or(Self::DEFAULT_ADDRESS)
    }

    /// Checks the `[lightning]` keys; the message names the offending key and never quotes
    /// the lndconnect URI.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !crate::lightning::connect::KNOWN_NETWORKS.contains(&self.network.as_str()) {
            return bad(format!(
                "lightning.network must be one of {:?}",
                crate::lightning::connect::KNOWN_NETWORKS
            ));
        }
        if !self.lndconnect.is_empty() {
            crate::lightning::connect::LndConnect::parse(&self.lndconnect)
                .map_err(|e| ConfigError::Invalid(format!("lightning.lndconnect: {e}")))?;
        }
        if self.tls_cert_path.is_some() != self.macaroon_path.is_some() {
            return bad(
                "lightning.tls_cert_path and lightning.macaroon_path must be set together".into(),
            );
        }
        if self.address.as_deref().is_some_and(|a| !a.contains(':')) {
            return bad("lightning.address must be host:port".into());
        }
        if self.fee_limit_ppm > 1_000_000 {
            return bad("lightning.fee_limit_ppm must be at most 1000000".into());
        }
        if !(1..=86_400).contains(&self.payment_timeout_secs) {
            return bad("lightning.payment_timeout_secs must be 1..=86400".into());
        }
        Ok(())
    }
}

impl std::fmt::Debug for LightningConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URI embeds the macaroon, a bearer credential: show only whether it is set.
        let lndconnect = if self.lndconnect.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        f.debug_struct("LightningConfig")
            .field("network", &self.network)
            .field("lndconnect", &lndconnect)
            .field("address", &self.address)
            .field("tls_cert_path", &self.tls_cert_path)
            .field("macaroon_path", &self.macaroon_path)
            .field("lnd_dir", &self.lnd_dir)
            .field("fee_limit_sat", &self.fee_limit_sat)
            .field("fee_limit_ppm", &self.fee_limit_ppm)
            .field("payment_timeout_secs", &self.payment_timeout_secs)
            .finish()
    }
}

impl Default for LightningConfig {
    fn default() -> Self {
        LightningConfig {
            network: "regtest".into(),
            lndconnect: String::new(),
            address: None,
            tls_cert_path: None,
            macaroon_path: None,
            lnd_dir: None,
            fee_limit_sat: 50,
            fee_limit_ppm: 10_000,
            payment_timeout_secs: 60,
        }
    }
}

/// Which tunnel backend to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelBackendKind {
    /// Write wg-quick files and record state only; no interface is touched.
    File,
    /// Real WireGuard interfaces (kernel module, else `wireguard-go`); needs root (CAP_NET_ADMIN).
    Wireguard,
}

/// `[tunnel]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TunnelConfig {
    /// Backend.
    pub backend: TunnelBackendKind,
    /// WireGuard interface name (at most 15 bytes).
    pub interface: String,
    /// UDP listen port of the provider's interface.
    pub listen_port: u16,
    /// Keepalive the renter sets towards the provider (seconds; 0 = off).
    pub persistent_keepalive_secs: u16,
    /// Link the renter's wg-quick files into /etc/wireguard when running as root and it is
    /// writable, so `wg-quick up <iface>` works.
    pub link_etc_wireguard: bool,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            backend: TunnelBackendKind::File,
            interface: "lw0".into(),
            listen_port: 51820,
            persistent_keepalive_secs: 25,
            link_etc_wireguard: true,
        }
    }
}

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
        }
    }
}

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
    pub autopay: crate::market::renter::AutopayConfig,
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
            autopay: crate::market::renter::AutopayConfig::default(),
        }
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Config to serialize to TOML")
    }

    /// Whether the daemon runs `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.node.roles.contains(&role)
    }

    /// Checks ranges and cross-field rules; the message names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.node.roles.is_empty() {
            return bad("node.roles must name at least one of \"provider\", \"renter\"".into());
        }
        for a in self
            .node
            .listen
            .iter()
            .chain(&self.node.bootstrap)
            .chain(&self.node.external)
        {
            if a.parse::<libp2p::Multiaddr>().is_err() {
                return bad(format!("not a multiaddr: {a:?}"));
            }
        }
        self.lightning.validate()?;
        if self.tunnel.interface.is_empty() || self.tunnel.interface.len() > 15 {
            return bad("tunnel.interface must be 1 to 15 bytes".into());
        }
        if self.has_role(Role::Provider) {
            let p = &self.provider;
            p.terms
                .validate()
                .map_err(|e| ConfigError::Invalid(format!("provider.terms: {e}")))?;
            if !(28..=32).contains(&p.ipv4_prefix_len) {
                return bad("provider.ipv4_prefix_len must be 28..=32".into());
            }
            if !(56..=64).contains(&p.ipv6_prefix_len) {
                return bad("provider.ipv6_prefix_len must be 56..=64".into());
            }
            for pool in &p.ipv4_pools {
                let net: ipnet::Ipv4Net = pool
                    .parse()
                    .map_err(|_| ConfigError::Invalid(format!("bad IPv4 pool {pool:?}")))?;
                if net.prefix_len() > p.ipv4_prefix_len {
                    return bad(format!(
                        "IPv4 pool {pool} is smaller than a /{}",
                        p.ipv4_prefix_len
                    ));
                }
            }
            for pool in &p.ipv6_pools {
                let net: ipnet::Ipv6Net = pool
                    .parse()
                    .map_err(|_| ConfigError::Invalid(format!("bad IPv6 pool {pool:?}")))?;
                if net.prefix_len() > p.ipv6_prefix_len {
                    return bad(format!(
                        "IPv6 pool {pool} is smaller than a /{}",
                        p.ipv6_prefix_len
                    ));
                }
            }
            if p.ipv4_pools.is_empty() && p.ipv6_pools.is_empty() {
                return bad("a provider needs provider.ipv4_pools or provider.ipv6_pools".into());
            }
            if !p.endpoint.contains(':') {
                return bad("provider.endpoint must be host:port".into());
            }
        }
        if let Some(l) = self.renter.ipv4_prefix_len
            && !(28..=32).contains(&l)
        {
            return bad("renter.ipv4_prefix_len must be 28..=32".into());
        }
        if let Some(l) = self.renter.ipv6_prefix_len
            && !(56..=64).contains(&l)
        {
            return bad("renter.ipv6_prefix_len must be 56..=64".into());
        }
        self.renter
            .limits
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("renter.limits: {e}")))?;
        self.renter
            .autopay
            .validate()
            .map_err(ConfigError::Invalid)?;
        Ok(())
    }

    /// Resolves a path from the config against the data dir.
    pub fn resolve(data_dir: &Path, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            data_dir.join(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn shipped_templates_parse() {
        for t in [
            include_str!("../config/provider.toml"),
            include_str!("../config/renter.toml"),
        ] {
            Config::from_toml(t).unwrap();
        }
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::from_toml("[node]\nroles = []\n").unwrap_err();
        assert!(e.to_string().contains("node.roles"), "{e}");
        let e = Config::from_toml("[node]\nlisten = [\"nope\"]\n").unwrap_err();
        assert!(e.to_string().contains("multiaddr"), "{e}");
        let e = Config::from_toml("[nod]\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = Config::from_toml(
            "[node]\nroles=[\"provider\"]\n[provider]\nipv4_pools=[\"198.51.100.0/30\"]\nipv4_prefix_len=28\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("smaller"), "{e}");
    }
}
