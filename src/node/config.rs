//! The `[node]` section of the configuration: roles, networking and discovery.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::net::DhtKind;

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Offers addresses.
    Provider,
    /// Rents addresses.
    Renter,
}

/// Default of [`NodeConfig::max_inbound_requests`]: far above what honest peers need (a
/// rental is a handful of requests, each answered in milliseconds or, waiting for a
/// settlement, seconds), low enough that a flood cannot pile up unbounded tasks.
pub const DEFAULT_MAX_INBOUND_REQUESTS: usize = 256;

/// Whether the node serves the DHT (`node.dht_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhtMode {
    /// Decided from the configuration (see [`crate::config::Config::dht_role`]): on a private
    /// DHT always a server; on the public DHT a server when the node has an `external`
    /// address or is a provider whose endpoint is a literal public IP, a client otherwise.
    #[default]
    Auto,
    /// Always a DHT server (the node must be reachable at its announced addresses).
    Server,
    /// Always a DHT client (queries only).
    Client,
}

/// `[node]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Roles this daemon runs.
    pub roles: Vec<Role>,
    /// libp2p listen multiaddrs.
    pub listen: Vec<String>,
    /// Bootstrap peers: multiaddrs ending in `/p2p/<PeerId>`. Empty on the public DHT with
    /// `public_bootstrap` on: the well-known IPFS bootstrap peers
    /// ([`crate::net::PUBLIC_BOOTSTRAP_PEERS`]).
    pub bootstrap: Vec<String>,
    /// With `dht = "public"` and an empty `bootstrap`, join through the well-known IPFS
    /// bootstrap peers. Turn off for the first node of a network of one's own (it waits to be
    /// dialed). Never used on a private DHT.
    pub public_bootstrap: bool,
    /// `"public"`: the public IPFS DHT; `"private"`: a private network keyed by the secret.
    /// Absent: public for the public market (no secret), private for a cluster secret.
    pub dht: Option<DhtKind>,
    /// `"auto"`, `"server"` or `"client"`; see [`DhtMode`].
    pub dht_mode: DhtMode,
    /// Seconds a DHT query may run; absent: 30 on the public DHT, 10 on a private one.
    /// Separate from `request_timeout_secs`.
    pub dht_query_timeout_secs: Option<u64>,
    /// Addresses to announce to the DHT; empty: the bound listen addresses.
    pub external: Vec<String>,
    /// Shared secret naming the market. Empty: the public market (documented default secret).
    pub secret: String,
    /// Alternatively, a file holding the secret (first line), so it stays out of config.toml.
    pub secret_file: Option<PathBuf>,
    /// Seconds between the renter's discovery passes (DHT lookup, offer exchange, the offer
    /// fetches that are due) and its ticks; a pass also runs at once when a member is met.
    pub discovery_interval_secs: u64,
    /// Seconds to wait for a peer's answer.
    pub request_timeout_secs: u64,
    /// Inbound requests answered at the same time; more are refused at once with an
    /// `Unavailable` error (the peer retries) instead of queueing without bound.
    pub max_inbound_requests: usize,
    /// `[node.limits]`: connection bounds, handshake timeout, memory, streams, per-peer request
    /// rates and bans (docs/OPERATIONS.md, "Limits").
    pub limits: crate::net::limits::NetLimits,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            roles: vec![Role::Renter],
            listen: vec!["/ip4/0.0.0.0/tcp/4710".into()],
            bootstrap: Vec::new(),
            public_bootstrap: true,
            dht: None,
            dht_mode: DhtMode::Auto,
            dht_query_timeout_secs: None,
            external: Vec::new(),
            secret: String::new(),
            secret_file: None,
            discovery_interval_secs: 15,
            request_timeout_secs: 30,
            max_inbound_requests: DEFAULT_MAX_INBOUND_REQUESTS,
            limits: crate::net::limits::NetLimits::default(),
        }
    }
}

impl NodeConfig {
    /// The DHT the node joins: `dht` if set, else public for the public market and private
    /// for a cluster secret. `secret_is_public` is whether the secret in use (from `secret` or
    /// `secret_file`) is the public market's.
    pub fn dht_kind(&self, secret_is_public: bool) -> DhtKind {
        self.dht.unwrap_or(if secret_is_public {
            DhtKind::Public
        } else {
            DhtKind::Private
        })
    }

    /// The bootstrap peers the node dials on `dht`: the configured list, or, on the public
    /// DHT with an empty list and `public_bootstrap` on, the well-known IPFS peers.
    pub fn bootstrap_for(&self, dht: DhtKind) -> Vec<String> {
        if self.bootstrap.is_empty() && self.public_bootstrap && dht == DhtKind::Public {
            crate::net::PUBLIC_BOOTSTRAP_PEERS
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        } else {
            self.bootstrap.clone()
        }
    }

    /// True if this configuration can never make the node dial the well-known public
    /// bootstrap peers, whatever its secret: it names its own bootstrap peers, turns
    /// `public_bootstrap` off, or is on a private DHT. Tests and the simnet assert it of every
    /// configuration they write (the network rule: nothing dials off the machine).
    pub fn bootstrap_is_explicit(&self) -> bool {
        // The DHT kind as far as the configuration alone tells: a `secret_file` could hold
        // the public secret, so it settles nothing.
        let known_private = match self.dht {
            Some(kind) => kind == DhtKind::Private,
            None => {
                self.secret_file.is_none()
                    && !self.secret.is_empty()
                    && self.secret != crate::net::topic::DEFAULT_PUBLIC_SECRET
            }
        };
        !self.bootstrap.is_empty() || !self.public_bootstrap || known_private
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dht_follows_the_secret_unless_set() {
        let mut n = NodeConfig::default();
        assert_eq!(n.dht_kind(true), DhtKind::Public);
        assert_eq!(n.dht_kind(false), DhtKind::Private);
        n.dht = Some(DhtKind::Private);
        assert_eq!(n.dht_kind(true), DhtKind::Private);
        n.dht = Some(DhtKind::Public);
        assert_eq!(n.dht_kind(false), DhtKind::Public);
    }

    #[test]
    fn public_bootstrap_list_only_when_nothing_else_is_said() {
        let mut n = NodeConfig::default();
        assert!(!n.bootstrap_is_explicit());
        assert_eq!(
            n.bootstrap_for(DhtKind::Public).len(),
            crate::net::PUBLIC_BOOTSTRAP_PEERS.len()
        );
        // Never on a private DHT.
        assert!(n.bootstrap_for(DhtKind::Private).is_empty());
        n.public_bootstrap = false;
        assert!(n.bootstrap_is_explicit());
        assert!(n.bootstrap_for(DhtKind::Public).is_empty());
        let n = NodeConfig {
            bootstrap: vec![
                "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
                    .into(),
            ],
            ..NodeConfig::default()
        };
        assert!(n.bootstrap_is_explicit());
        assert_eq!(n.bootstrap_for(DhtKind::Public), n.bootstrap);
        let n = NodeConfig {
            dht: Some(DhtKind::Private),
            ..NodeConfig::default()
        };
        assert!(n.bootstrap_is_explicit());
        // A cluster secret means a private DHT unless `dht` says otherwise.
        let mut n = NodeConfig {
            secret: "cluster".into(),
            ..NodeConfig::default()
        };
        assert!(n.bootstrap_is_explicit());
        n.dht = Some(DhtKind::Public);
        assert!(!n.bootstrap_is_explicit());
        n.dht = None;
        n.secret = crate::net::topic::DEFAULT_PUBLIC_SECRET.into();
        assert!(!n.bootstrap_is_explicit());
        // A secret file could hold anything.
        n.secret = String::new();
        n.secret_file = Some("secret".into());
        assert!(!n.bootstrap_is_explicit());
    }

    #[test]
    fn limits_parse_from_their_own_table() {
        let n: NodeConfig =
            toml::from_str("[limits]\nmax_connections_per_ip = 4\nlimit_loopback = true\n")
                .unwrap();
        assert_eq!(n.limits.max_connections_per_ip, 4);
        assert!(n.limits.limit_loopback);
        assert_eq!(
            n.limits.max_connections,
            crate::net::limits::DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(NodeConfig::default().limits, Default::default());
        assert!(toml::from_str::<NodeConfig>("[limits]\nmax_conections = 4\n").is_err());
        // The daemon's configuration refuses a limit that cannot work, naming it.
        let e = crate::config::Config::from_toml("[node.limits]\nrequest_burst = 0\n").unwrap_err();
        assert!(e.to_string().contains("node.limits.request_burst"), "{e}");
        crate::config::Config::from_toml("[node.limits]\nmax_memory_mb = 0\n").unwrap();
    }

    #[test]
    fn dht_settings_parse_from_toml() {
        let n: NodeConfig = toml::from_str(
            "dht = \"private\"\ndht_mode = \"client\"\ndht_query_timeout_secs = 5\npublic_bootstrap = false\n",
        )
        .unwrap();
        assert_eq!(n.dht, Some(DhtKind::Private));
        assert_eq!(n.dht_mode, DhtMode::Client);
        assert_eq!(n.dht_query_timeout_secs, Some(5));
        assert!(!n.public_bootstrap);
        assert!(toml::from_str::<NodeConfig>("dht = \"other\"\n").is_err());
        assert!(toml::from_str::<NodeConfig>("dht_mode = \"other\"\n").is_err());
    }
}
