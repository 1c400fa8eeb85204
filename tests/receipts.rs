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
    renter: PeerId,
}

#[async_trait::async_trait]
impl Peers for Market {
    async fn find_providers(&self) -> Result<Vec<PeerId>, MarketError> {
        Ok(vec![self.provider.0])
    }

    async fn request(
        &self,
        peer: PeerId,
        msg: Message,
    ) -> Result<(Message, Duration), MarketError> {
        assert_eq!(peer, self.provider.0);
        Ok((
            self.provider.1.handle(self.renter, msg).await,
            Duration::from_millis(1),
        ))
    }
}

#[tokio::test]
async fn every_settled_payment_has_a_signed_receipt_the_renter_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemNetwork::new(&[("renter".into(), 1_000_000), ("prov".into(), 0)]).unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let prov = provider(dir.path(), "prov", 10, 50, &net, &clock);
    prov.1.start().await.unwrap();
    let key = SigningKey::from_bytes(&[30; 32]);
    let db = sled::open(dir.path().join("renter").join("db")).unwrap();
    let audit = AuditLog::open(&db, key.clone()).unwrap();
    let market = Arc::new(Market {
        provider: prov,
        renter: peer_id_of(&key.verifying_key()),
    });
    let renter = Renter::with_clock(
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
            conf_dir: dir.path().join("renter").join("wireguard"),
            etc_wireguard: None,
            ln: Arc::new(net.node("renter").unwrap()),
            tunnel: Arc::new(FileTunnel::new(dir.path().join("renter").join("tunnel")).unwrap()),
            audit,
            peers: market.clone(),
            db,
        },
        clock.clone(),
    )
    .unwrap();

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
