//! The `[lightning]` section of the configuration: how to reach LND, and the payment limits.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[lightning]`: how to reach LND's gRPC API, and the payment limits.
///
/// The node is found in this order (see [`super::connect::connect_from_config`]):
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
    pub fn validate(&self) -> Result<(), String> {
        let bad = |m: String| Err(m);
        if !super::connect::KNOWN_NETWORKS.contains(&self.network.as_str()) {
            return bad(format!(
                "lightning.network must be one of {:?}",
                super::connect::KNOWN_NETWORKS
            ));
        }
        if !self.lndconnect.is_empty() {
            super::connect::LndConnect::parse(&self.lndconnect)
                .map_err(|e| format!("lightning.lndconnect: {e}"))?;
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
