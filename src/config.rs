//! The daemon's configuration: `D/config.toml`, loaded with [`Config::load`].
//!
//! Each module owns its section type ([`NodeConfig`], [`LightningConfig`], [`TunnelConfig`],
//! [`ProviderConfig`], [`RenterConfig`], re-exported here); this module only assembles them into
//! [`Config`], loads and validates the file. Every field has a default, so a file only needs
//! what differs; `leasewire init` writes a commented file from the templates in `config/`.
//! Paths that are relative are taken relative to the data dir ([`DataDir::resolve`]).
//! Backends are named here and nowhere else but `node.rs`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::datadir::DataDir;
pub use crate::lightning::config::LightningConfig;
pub use crate::market::provider::config::ProviderConfig;
pub use crate::market::renter::config::RenterConfig;
pub use crate::node::config::{DhtKind, DhtMode, NodeConfig, Role};
pub use crate::tunnel::config::{TunnelBackendKind, TunnelConfig};

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

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        // An empty file would run a renter on the public market with every default: almost
        // certainly not what was meant (a truncated write, a forgotten `init`).
        let sets_nothing = toml::from_str::<toml::Table>(&text).is_ok_and(|t| t.is_empty());
        if sets_nothing {
            return Err(ConfigError::Invalid(format!(
                "{} sets nothing; run `leasewire init --role provider|renter` to write a \
                 commented one, or set at least [node] roles",
                path.display()
            )));
        }
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
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let mut message = e.to_string();
            if let Some(hint) = crate::market::provider::config::replaced_key_hint(&message) {
                message = format!("{hint}\n{message}");
            }
            ConfigError::Parse {
                path: PathBuf::new(),
                message,
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Config to serialize to TOML")
    }

    /// Whether the node serves the DHT of kind `dht` (see [`DhtMode`]): `dht_mode` if not
    /// `auto`; on a private DHT a server (members are the only DHT peers there is); on the
    /// public DHT a server when the node has an `external` address or is a provider whose
    /// endpoint is a literal public IP, else a client (it is presumably behind NAT).
    /// AutoNAT is not used: the decision is made from the configuration alone.
    pub fn dht_role(&self, dht: DhtKind) -> crate::net::DhtRole {
        use crate::net::DhtRole;
        match (self.node.dht_mode, dht) {
            (DhtMode::Server, _) => DhtRole::Server,
            (DhtMode::Client, _) => DhtRole::Client,
            (DhtMode::Auto, DhtKind::Private) => DhtRole::Server,
            (DhtMode::Auto, DhtKind::Public) => {
                let public_endpoint = self.has_role(Role::Provider)
                    && self
                        .provider
                        .endpoint
                        .parse::<std::net::SocketAddr>()
                        .is_ok_and(|a| is_public_ip(a.ip()));
                if !self.node.external.is_empty() || public_endpoint {
                    DhtRole::Server
                } else {
                    DhtRole::Client
                }
            }
        }
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
        if self.node.dht_query_timeout_secs == Some(0) {
            return bad("node.dht_query_timeout_secs must be at least 1".into());
        }
        if !(1..=65_536).contains(&self.node.max_inbound_requests) {
            return bad("node.max_inbound_requests must be 1..=65536".into());
        }
        self.node
            .limits
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("node.limits.{e}")))?;
        self.lightning.validate().map_err(ConfigError::Invalid)?;
        if self.tunnel.interface.is_empty() || self.tunnel.interface.len() > 15 {
            return bad("tunnel.interface must be 1 to 15 bytes".into());
        }
        if self.has_role(Role::Provider) {
            self.provider.validate().map_err(ConfigError::Invalid)?;
        }
        self.renter.validate().map_err(ConfigError::Invalid)?;
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

    /// For a provider, what is still the template's: an endpoint or pools in documentation
    /// address space (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), which no
    /// renter could use. `None` when the `[provider]` section names real addresses (or the node
    /// is no provider). The node refuses to publish such an offer on the public market; a
    /// private cluster (tests, a lab) may use them.
    pub fn unedited_provider_template(&self) -> Option<String> {
        if !self.has_role(Role::Provider) {
            return None;
        }
        let mut what = Vec::new();
        let endpoint_ip = self
            .provider
            .endpoint
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip());
        if endpoint_ip.is_some_and(is_documentation_ip) {
            what.push(format!(
                "provider.endpoint ({}): the public ip:port renters reach your WireGuard on",
                self.provider.endpoint
            ));
        }
        for (key, pools) in [
            ("provider.ipv4_pools", &self.provider.ipv4_pools),
            ("provider.ipv6_pools", &self.provider.ipv6_pools),
        ] {
            let doc: Vec<&str> = pools
                .iter()
                .filter(|p| {
                    p.parse::<ipnet::IpNet>()
                        .is_ok_and(|n| is_documentation_ip(n.network()))
                })
                .map(String::as_str)
                .collect();
            if !doc.is_empty() {
                what.push(format!(
                    "{key} ({}): the prefixes routed to this host that you lease out \
                     (or [] to lease none of that family)",
                    doc.join(", ")
                ));
            }
        }
        if what.is_empty() {
            return None;
        }
        Some(format!(
            "the provider configuration still has the template's documentation addresses, so \
             no offer is published on the public market; edit config.toml: {}",
            what.join("; ")
        ))
    }

    /// Resolves a path from the config against the data dir (see [`DataDir::resolve`]).
    pub fn resolve(data_dir: &Path, p: &Path) -> PathBuf {
        DataDir::new(data_dir).resolve(p)
    }
}

/// An address of the documentation ranges (RFC 5737, RFC 3849): the template's placeholders.
fn is_documentation_ip(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_documentation(),
        std::net::IpAddr::V6(v6) => {
            let seg = v6.segments();
            seg[0] == 0x2001 && seg[1] == 0x0db8
        }
    }
}

/// A globally routable address: not private, loopback, link-local, shared (CGNAT),
/// unspecified, broadcast, multicast or documentation space.
fn is_public_ip(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            let shared = a == 100 && (64..128).contains(&b);
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || shared)
        }
        std::net::IpAddr::V6(v6) => {
            let seg = v6.segments();
            let unique_local = seg[0] & 0xfe00 == 0xfc00;
            let link_local = seg[0] & 0xffc0 == 0xfe80;
            let documentation = seg[0] == 0x2001 && seg[1] == 0x0db8;
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || unique_local
                || link_local
                || documentation)
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
            "[node]\nroles=[\"provider\"]\n[provider]\nipv4_pools=[\"198.51.100.0/30\"]\nipv4_sizes=[{prefix_len=28}]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("smaller"), "{e}");
        let e = Config::from_toml("[provider]\nipv4_prefix_len=30\n").unwrap_err();
        assert!(e.to_string().contains("provider.ipv4_sizes"), "{e}");
        let e = Config::from_toml(
            "[node]\nroles=[\"provider\"]\n[provider]\nipv4_pools=[\"198.51.100.0/28\", \"198.51.100.0/29\"]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        let e = Config::from_toml("[renter]\nipv4_prefix_len=\"none\"\nipv6_prefix_len=\"none\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("renter.ipv4_prefix_len"), "{e}");
    }

    #[test]
    fn an_empty_config_file_is_refused_naming_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        for text in ["", "\n\n", "# only comments\n"] {
            std::fs::write(&path, text).unwrap();
            let e = Config::load(&path).unwrap_err().to_string();
            assert!(
                e.contains("sets nothing") && e.contains("leasewire init"),
                "{e}"
            );
        }
        std::fs::write(&path, "[node]\nroles = [\"renter\"]\n").unwrap();
        Config::load(&path).unwrap();
    }

    #[test]
    fn the_unedited_provider_template_is_named_and_edits_clear_it() {
        let mut c = Config::from_toml(include_str!("../config/provider.toml")).unwrap();
        let m = c
            .unedited_provider_template()
            .expect("the template is flagged");
        for key in [
            "provider.endpoint",
            "provider.ipv4_pools",
            "provider.ipv6_pools",
            "public market",
        ] {
            assert!(m.contains(key), "{m}");
        }
        c.provider.endpoint = "8.8.4.4:51820".into();
        c.provider.ipv4_pools = vec!["5.6.7.0/28".into()];
        let m = c.unedited_provider_template().unwrap();
        assert!(
            !m.contains("provider.endpoint") && m.contains("ipv6_pools"),
            "{m}"
        );
        c.provider.ipv6_pools = vec!["2a01:4f8::/48".into()];
        assert_eq!(c.unedited_provider_template(), None);
        // A renter has no offer to hold back.
        let r = Config::from_toml(include_str!("../config/renter.toml")).unwrap();
        assert_eq!(r.unedited_provider_template(), None);
    }

    #[test]
    fn dht_role_auto_follows_reachability() {
        use crate::net::DhtRole;
        let mut c = Config::default();
        // A renter with nothing announced is behind NAT as far as we know.
        assert_eq!(c.dht_role(DhtKind::Public), DhtRole::Client);
        assert_eq!(c.dht_role(DhtKind::Private), DhtRole::Server);
        c.node.external = vec!["/ip4/192.0.2.7/tcp/4710".into()];
        assert_eq!(c.dht_role(DhtKind::Public), DhtRole::Server);
        c.node.external.clear();
        c.node.roles = vec![Role::Provider];
        c.provider.endpoint = "8.8.4.4:51820".into();
        assert_eq!(c.dht_role(DhtKind::Public), DhtRole::Server);
        for private in [
            "10.0.0.1:51820",
            "127.0.0.1:1",
            "[fd00::1]:1",
            "vpn.example:1",
        ] {
            c.provider.endpoint = private.into();
            assert_eq!(c.dht_role(DhtKind::Public), DhtRole::Client, "{private}");
        }
        c.node.dht_mode = DhtMode::Server;
        assert_eq!(c.dht_role(DhtKind::Public), DhtRole::Server);
        c.node.dht_mode = DhtMode::Client;
        assert_eq!(c.dht_role(DhtKind::Private), DhtRole::Client);
        assert!(is_public_ip("2606:4700::1".parse().unwrap()));
        assert!(!is_public_ip("2001:db8::1".parse().unwrap()));
        assert!(!is_public_ip("100.64.0.1".parse().unwrap()));
    }
}
