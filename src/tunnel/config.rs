//! The `[tunnel]` section of the configuration: which backend, and the interface settings.

use serde::{Deserialize, Serialize};

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
