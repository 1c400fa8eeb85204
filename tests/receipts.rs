//! Receipts: every settled payment (activation and top-ups) gets a provider-signed receipt,
//! and the renter keeps each one. One provider and one renter in memory (in-memory Lightning,
//! file tunnels, a manual clock); the network is a direct call.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::provider;
use ed25519_dalek::SigningKey;
use leasewire::audit::AuditLog;
use leasewire::config::RenterConfig;
use leasewire::lightning::testing::MemNetwork;
use leasewire::market::provider::Provider;
use leasewire::market::renter::{RentArgs, Renter, RenterParams};
use leasewire::market::{MarketError, Peers};
use leasewire::tunnel::FileTunnel;
use leasewire::types::{ManualClock, WgKey};
use leasewire::wire::signed::peer_id_of;
use leasewire::wire::{Message, ReceiptsRequest};
use libp2p::PeerId;

struct Market {
    provider: (PeerId, Provider),
    /// More providers, for the ranking test.
    others: Vec<(PeerId, Provider)>,
    renter: PeerId,
}

#[async_trait::async_trait]
impl Peers for Market {
    async fn find_providers(&self) -> Result<Vec<PeerId>, MarketError> {
        Ok(std::iter::once(self.provider.0)
            .chain(self.others.iter().map(|o| o.0))
            .collect())
    }

    async fn request(
        &self,
        peer: PeerId,
        msg: Message,
    ) -> Result<(Message, Duration), MarketError> {
        let p = std::iter::once(&self.provider)
            .chain(self.others.iter())
            .find(|p| p.0 == peer)
            .expect("a known provider");
        Ok((p.1.handle(self.renter, msg).await, Duration::from_millis(1)))
    }
}

/// A renter (key 30) over `market`'s providers.
fn renter_for(
    dir: &std::path::Path,
    net: &MemNetwork,
    clock: &Arc<ManualClock>,
    market: Arc<Market>,
) -> Renter {
    let key = SigningKey::from_bytes(&[30; 32]);
    let db = sled::open(dir.join("renter").join("db")).unwrap();
    let audit = AuditLog::open(&db, key.clone()).unwrap();
    Renter::with_clock(
        RenterParams {
            key,
            cfg: RenterConfig {
                ipv6_prefix_len: None,
                ..RenterConfig::default()
            },
            network: "regtest".into(),
            fee_limit_sat: 10,
            fee_limit_ppm: 0,
            payment_timeout_secs: 30,
            wg_private: WgKey([31; 32]),
            wg_public: WgKey([32; 32]),
            iface: "lwr".into(),
            keepalive: 25,
            conf_dir: dir.join("renter").join("wireguard"),
            etc_wireguard: None,
            ln: Arc::new(net.node("renter").unwrap()),
            tunnel: Arc::new(FileTunnel::new(dir.join("renter").join("tunnel")).unwrap()),
            audit,
            peers: market,
            db,
        },
        clock.clone(),
    )
    .unwrap()
}

#[tokio::test]
async fn every_settled_payment_has_a_signed_receipt_the_renter_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemNetwork::new(&[("renter".into(), 1_000_000), ("prov".into(), 0)]).unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let prov = provider(dir.path(), "prov", 10, 50, &net, &clock);
    prov.1.start().await.unwrap();
    let key = SigningKey::from_bytes(&[30; 32]);
    let market = Arc::new(Market {
        provider: prov,
        others: Vec::new(),
        renter: peer_id_of(&key.verifying_key()),
    });
    let renter = renter_for(dir.path(), &net, &clock, market.clone());

    renter.discover().await.unwrap();
    let rental = renter
        .rent(RentArgs {
            credit_sat: Some(1_000),
            timeout: Duration::ZERO,
            ..RentArgs::default()
        })
        .await
        .unwrap();
    let lease_id = rental.lease.lease_id.clone();
    let kept = renter.receipts(Some(&lease_id)).unwrap();
    assert_eq!(kept.len(), 1, "one receipt for the activation");
    let first = &kept[0].receipt;
    assert_eq!(first.lease_id, lease_id);
    assert_eq!(first.amount_sat, 2_000, "credit plus activation fee");
    assert_eq!(first.paid_until, rental.lease.paid_until);
    assert_eq!(first.payment_hash, rental.lease.payment_hash);
    assert_eq!(first.renter, market.renter.to_string());
    assert_eq!(
        kept[0].signed.verify_from(&market.provider.0).unwrap(),
        *first
    );

    // Two top-ups: one receipt each, with the lease's new paid_until.
    for amount in [100, 250] {
        let after = renter.add_credit(&lease_id, amount).await.unwrap();
        let kept = renter.receipts(Some(&lease_id)).unwrap();
        let last = &kept.last().unwrap().receipt;
        assert_eq!(last.amount_sat, amount);
        assert_eq!(last.paid_until, after.lease.paid_until);
        assert_eq!(last.revision, after.lease.revision);
    }
    let kept = renter.receipts(None).unwrap();
    assert_eq!(kept.len(), 3);
    let seqs: Vec<u64> = kept.iter().map(|k| k.receipt.log_seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // The renter's copies are the provider's, byte for byte.
    let provider_side = market.provider.1.receipts(&lease_id).unwrap();
    assert_eq!(
        provider_side,
        kept.iter().map(|k| k.signed.clone()).collect::<Vec<_>>()
    );

    // The renter witnesses the provider's audit log: a first head, then heads that extend it.
    use leasewire::market::witness::Observation;
    assert_eq!(
        renter.witness_provider(market.provider.0).await.unwrap(),
        Observation::First
    );
    renter.add_credit(&lease_id, 100).await.unwrap();
    assert_eq!(
        renter.witness_provider(market.provider.0).await.unwrap(),
        Observation::Extends
    );
    renter.tick().await.unwrap();
    let seen = renter.witness().peers().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].peer, market.provider.0.to_string());
    assert!(renter.witness().evidence().unwrap().is_empty());

    // Nobody but the lease's renter gets them.
    let stranger = peer_id_of(&SigningKey::from_bytes(&[77; 32]).verifying_key());
    let reply = market
        .provider
        .1
        .handle(
            stranger,
            Message::ReceiptsRequest(ReceiptsRequest {
                lease_id: lease_id.clone(),
            }),
        )
        .await;
    assert!(matches!(reply, Message::Error(_)), "{reply:?}");
}

#[tokio::test]
async fn a_provider_whose_log_forked_is_demoted_in_ranking() {
    use leasewire::audit::AuditKind;
    use leasewire::market::witness::Observation;
    let dir = tempfile::tempdir().unwrap();
    let net = MemNetwork::new(&[
        ("renter".into(), 1_000_000),
        ("cheap".into(), 0),
        ("dear".into(), 0),
    ])
    .unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let cheap = provider(dir.path(), "cheap", 10, 50, &net, &clock);
    let dear = provider(dir.path(), "dear", 20, 100, &net, &clock);
    cheap.1.start().await.unwrap();
    dear.1.start().await.unwrap();
    let market = Arc::new(Market {
        provider: cheap,
        others: vec![dear],
        renter: peer_id_of(&SigningKey::from_bytes(&[30; 32]).verifying_key()),
    });
    let renter = renter_for(dir.path(), &net, &clock, market.clone());
    renter.discover().await.unwrap();
    let cheap_id = market.provider.0.to_string();
    assert_eq!(renter.offers(Some(1_000))[0].peer, cheap_id);

    // The renter has seen the cheap provider's head; then a copy of its log with another
    // history (same key: a copied data dir) answers.
    assert_eq!(
        renter.witness_provider(market.provider.0).await.unwrap(),
        Observation::First
    );
    let seen = renter.witness().since_size(&market.provider.0).unwrap();
    let fork_dir = tempfile::tempdir().unwrap();
    let fork_db = sled::open(fork_dir.path().join("db")).unwrap();
    let fork = AuditLog::open(&fork_db, SigningKey::from_bytes(&[10; 32])).unwrap();
    for i in 0..seen + 2 {
        fork.append(AuditKind::Hello, &i).unwrap();
    }
    let forked = fork.head_reply(seen).unwrap();
    assert!(matches!(
        renter
            .witness()
            .observe(&market.provider.0, &forked)
            .await
            .unwrap(),
        Observation::Conflict(_)
    ));
    // Demoted: the dearer honest provider now ranks first.
    assert_ne!(renter.offers(Some(1_000))[0].peer, cheap_id);
}
