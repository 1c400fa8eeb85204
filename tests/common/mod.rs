//! Pieces shared by the in-memory market tests (tests/never_pay_twice.rs, tests/discovery.rs):
//! a provider on an in-memory Lightning network with a file tunnel and the test's manual clock.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use leasewire::audit::AuditLog;
use leasewire::config::ProviderConfig;
use leasewire::lightning::testing::MemNetwork;
use leasewire::market::provider::{Provider, ProviderParams};
use leasewire::tunnel::FileTunnel;
use leasewire::types::{DAY_SECS, ManualClock, Terms, WgKey};
use leasewire::wire::signed::peer_id_of;
use libp2p::PeerId;

/// The terms every test provider sells under, at `rate` sat a day.
pub fn terms(rate: u64) -> Terms {
    Terms {
        activation_fee_sat: 1_000,
        rate_sat_per_day: rate,
        min_initial_credit_sat: 100,
        min_topup_sat: 10,
        max_credit_sat: 100_000,
        reserve_days: 7,
        refund_unused: false,
        reservation_secs: 0,
    }
}

/// An IPv4-only provider named `name` (its node on `net`, its keys from `seed`, its data under
/// `dir/name`) selling at `rate` sat a day, not started.
pub fn provider(
    dir: &std::path::Path,
    name: &str,
    seed: u8,
    rate: u64,
    net: &MemNetwork,
    clock: &Arc<ManualClock>,
) -> (PeerId, Provider) {
    let db = sled::open(dir.join(name).join("db")).unwrap();
    let key = SigningKey::from_bytes(&[seed; 32]);
    let peer = peer_id_of(&key.verifying_key());
    let audit = AuditLog::open(&db, key.clone()).unwrap();
    let p = Provider::with_clock(
        ProviderParams {
            key,
            cfg: ProviderConfig {
                ipv6_pools: Vec::new(),
                terms: terms(rate),
                // Invoices carry the wall-clock time they were made; market time runs ahead of
                // it in these tests, so they must outlive the days the tests skip.
                invoice_expiry_secs: 60 * DAY_SECS,
                ..ProviderConfig::default()
            },
            network: "regtest".into(),
            ln_pubkey: net.pubkey(name).unwrap(),
            wg_private: WgKey([seed; 32]),
            wg_public: WgKey([seed + 1; 32]),
            iface: format!("lw{seed}"),
            listen_port: 51820,
            ln: Arc::new(net.node(name).unwrap()),
            tunnel: Arc::new(FileTunnel::new(dir.join(name).join("tunnel")).unwrap()),
            audit,
            db,
        },
        clock.clone(),
    )
    .unwrap();
    (peer, p)
}
