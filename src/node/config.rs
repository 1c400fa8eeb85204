//! The `[node]` section of the configuration: roles, networking and discovery.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
    /// Seconds between the renter's discovery passes (DHT lookup, offer exchange, the offer
    /// fetches that are due) and its ticks; a pass also runs at once when a member is met.
    pub discovery_interval_secs: u64,
    /// Seconds to wait for a peer's answer.
    pub request_timeout_secs: u64,
    /// Inbound requests answered at the same time; more are refused at once with an
    /// `Unavailable` error (the peer retries) instead of queueing without bound.
    pub max_inbound_requests: usize,
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
            max_inbound_requests: DEFAULT_MAX_INBOUND_REQUESTS,
        }
    }
}
