//! Never paying twice for nothing: a provider that takes a payment and never sends the lease
//! gets exactly one invoice from a renter. Two providers in memory (in-memory Lightning, file
//! tunnels, one manual clock); the network is a direct call, so a test can make one provider
//! dishonest: it answers everything but `paymentResult`, which it drops as if it timed out.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::provider;
use ed25519_dalek::SigningKey;
use leasewire::audit::AuditLog;
use leasewire::config::RenterConfig;
use leasewire::lightning::testing::MemNetwork;
use leasewire::market::provider::Provider;
use leasewire::market::renter::{RECHECK_SECS, RentArgs, Renter, RenterParams};
use leasewire::market::{MarketError, Peers};
use leasewire::tunnel::FileTunnel;
use leasewire::types::{DAY_SECS, ManualClock, WgKey};
use leasewire::wire::Message;
use leasewire::wire::signed::peer_id_of;
use libp2p::PeerId;
use tempfile::TempDir;

/// Both providers, reached by a direct call. `dishonest` makes the cheap one drop every
/// `paymentResult` (it keeps the money and sends no lease).
struct Market {
    cheap: (PeerId, Provider),
    honest: (PeerId, Provider),
    renter: PeerId,
    dishonest: AtomicBool,
    /// While set, every request to the cheap provider fails as if it were unreachable.
    cheap_down: AtomicBool,
}

#[async_trait::async_trait]
impl Peers for Market {
    async fn find_providers(&self) -> Result<Vec<PeerId>, MarketError> {
        Ok(vec![self.cheap.0, self.honest.0])
    }

    async fn request(
        &self,
        peer: PeerId,
        msg: Message,
    ) -> Result<(Message, Duration), MarketError> {
        let provider = if peer == self.cheap.0 {
            if self.cheap_down.load(Ordering::SeqCst) {
                return Err(MarketError::Net("provider unreachable (test)".into()));
            }
            if self.dishonest.load(Ordering::SeqCst) && matches!(msg, Message::PaymentResult(_)) {
                return Err(MarketError::Net("request timed out (test)".into()));
            }
            &self.cheap.1
        } else {
            assert_eq!(peer, self.honest.0);
            &self.honest.1
        };
        Ok((
            provider.handle(self.renter, msg).await,
            Duration::from_millis(3),
        ))
    }
}

struct World {
    _dir: TempDir,
    net: MemNetwork,
    clock: Arc<ManualClock>,
    market: Arc<Market>,
    renter: Renter,
    audit: AuditLog,
}

async fn world() -> World {
    world_with(RenterConfig {
        ipv6_prefix_len: None,
        ..RenterConfig::default()
    })
    .await
}

async fn world_with(cfg: RenterConfig) -> World {
    let dir = tempfile::tempdir().unwrap();
    let net = MemNetwork::new(&[
        ("renter".into(), 1_000_000),
        ("cheap".into(), 0),
        ("honest".into(), 0),
    ])
    .unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let cheap = provider(dir.path(), "cheap", 10, 50, &net, &clock);
    let honest = provider(dir.path(), "honest", 20, 100, &net, &clock);
    cheap.1.start().await.unwrap();
    honest.1.start().await.unwrap();
    let key = SigningKey::from_bytes(&[30; 32]);
    let db = sled::open(dir.path().join("renter").join("db")).unwrap();
    let audit = AuditLog::open(&db, key.clone()).unwrap();
    let market = Arc::new(Market {
        cheap,
        honest,
        renter: peer_id_of(&key.verifying_key()),
        dishonest: AtomicBool::new(false),
        cheap_down: AtomicBool::new(false),
    });
    let renter = Renter::with_clock(
        RenterParams {
            key,
            cfg,
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
            audit: audit.clone(),
            peers: market.clone(),
            db,
        },
        clock.clone(),
    )
    .unwrap();
    World {
        _dir: dir,
        net,
        clock,
        market,
        renter,
        audit,
    }
}

fn auto(credit: u64) -> RentArgs {
    RentArgs {
        offer_id: None,
        credit_sat: Some(credit),
        timeout: Duration::ZERO,
        ..RentArgs::default()
    }
}

/// Audit entries of `kind` whose payload's `key` is `value`.
fn entries(w: &World, kind: &str, key: &str, value: &str) -> Vec<serde_json::Value> {
    w.audit
        .entries(0)
        .map(|e| e.unwrap())
        .filter(|e| e.kind == kind)
        .map(|e| e.payload_as::<serde_json::Value>().unwrap())
        .filter(|p| p[key] == value)
        .collect()
}

#[tokio::test]
async fn a_provider_that_never_delivers_is_paid_once_and_rent_auto_goes_elsewhere() {
    let w = world().await;
    let cheap = w.market.cheap.0.to_string();
    let honest = w.market.honest.0.to_string();
    w.market.dishonest.store(true, Ordering::SeqCst);
    assert_eq!(w.renter.discover().await.unwrap(), 2);
    assert_eq!(
        w.renter.offers(Some(1_000))[0].peer,
        cheap,
        "the cheap one ranks first"
    );

    // It takes the money and sends no lease.
    let err = w.renter.rent(auto(1_000)).await.unwrap_err();
    assert!(matches!(err, MarketError::AwaitingLease(_)), "{err}");
    assert_eq!(w.net.balance_msat("cheap"), Some(2_000_000));
    let open = w.renter.open_payments().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].provider, cheap);
    assert_eq!(open[0].amount_sat, 2_000);
    assert!(open[0].paid);

    // Time passes; status shows how long the payment has waited and what to do.
    w.clock.advance(Duration::from_secs(600));
    let open = w.renter.open_payments().unwrap();
    assert_eq!(open[0].age_secs, 600);
    assert!(open[0].advice.contains("rent --auto"), "{}", open[0].advice);

    // Its three unanswered paymentResults dropped it from the offer list...
    let offer_id = w.market.cheap.1.offer().id();
    assert!(w.renter.offers(Some(1_000)).iter().all(|o| o.peer != cheap));
    let (_, h) = w
        .renter
        .provider_history()
        .unwrap()
        .into_iter()
        .find(|(p, _)| *p == cheap)
        .unwrap();
    // One outage (counted once) of three failed requests.
    assert_eq!(
        (h.failures, h.consecutive_failures, h.leases_delivered),
        (1, 3, 0)
    );

    // ...so rent --auto rents from the next-best provider.
    let r = w.renter.rent(auto(1_000)).await.unwrap();
    assert_eq!(r.lease.provider, honest);
    assert_eq!(w.net.balance_msat("honest"), Some(2_000_000));

    // It answers hello again: back in the list, but ranked last although cheaper (it holds a
    // payment without having delivered), and rent --auto still skips it.
    assert_eq!(w.renter.discover().await.unwrap(), 2);
    let ranked: Vec<String> = w
        .renter
        .offers(Some(1_000))
        .into_iter()
        .map(|o| o.peer)
        .collect();
    assert_eq!(ranked, [honest.clone(), cheap.clone()]);
    let r = w.renter.rent(auto(1_000)).await.unwrap();
    assert_eq!(r.lease.provider, honest);

    // Asked for by name, it is refused before anything is asked of it or paid, and audited.
    let err = w
        .renter
        .rent(RentArgs {
            offer_id: Some(offer_id),
            ..auto(1_000)
        })
        .await
        .unwrap_err();
    let MarketError::UndeliveredPayment(msg) = &err else {
        panic!("wanted UndeliveredPayment, got {err}");
    };
    assert!(msg.contains(&open[0].payment_hash), "{msg}");
    assert!(msg.contains("2000 sat") && msg.contains("600s"), "{msg}");
    let refused = entries(&w, "payment_refused", "provider", &cheap);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["reason"], "undelivered_payment");
    assert_eq!(
        refused[0]["open_payment_hash"],
        open[0].payment_hash.as_str()
    );

    // The ledger: exactly one payment to it, nothing paid twice.
    assert_eq!(entries(&w, "payment_attempt", "provider", &cheap).len(), 1);
    assert_eq!(w.net.balance_msat("cheap"), Some(2_000_000));
    assert_eq!(w.net.double_payments(), 0);
}

#[tokio::test]
async fn top_ups_and_autopay_wait_for_an_undelivered_top_up_then_resume() {
    // The provider that stops delivering also stops answering, which would make AutoPay fail
    // over to the other one; this test is about the old lease's payments, so no failover.
    let w = world_with(RenterConfig {
        ipv6_prefix_len: None,
        failover_grace: None,
        ..RenterConfig::default()
    })
    .await;
    let cheap = w.market.cheap.0.to_string();
    w.renter.discover().await.unwrap();
    // Delivered honestly first: 1000 sat of credit at 50 sat/day is 20 days.
    let r = w.renter.rent(auto(1_000)).await.unwrap();
    assert_eq!(r.lease.provider, cheap);
    let lease_id = r.lease.lease_id.clone();

    // Then it stops delivering: one top-up is paid, its lease never comes.
    w.market.dishonest.store(true, Ordering::SeqCst);
    let err = w.renter.add_credit(&lease_id, 100).await.unwrap_err();
    assert!(matches!(err, MarketError::AwaitingLease(_)), "{err}");
    let after_one = w.net.balance_msat("cheap").unwrap();
    assert_eq!(after_one, 2_000_000 + 100_000);

    // add-credit is refused while that payment is open...
    let err = w.renter.add_credit(&lease_id, 100).await.unwrap_err();
    assert!(matches!(err, MarketError::UndeliveredPayment(_)), "{err}");
    // ...and so is AutoPay, once the lease is below the low watermark.
    w.clock
        .advance(Duration::from_secs(20 * DAY_SECS - 6 * 3600));
    w.renter.autopay_tick().await.unwrap();
    let r = w.renter.rental(&lease_id).unwrap();
    let note = r.stats.last_autopay.unwrap();
    assert!(!note.paid);
    assert!(note.message.contains("earlier payment"), "{}", note.message);
    assert_eq!(
        w.net.balance_msat("cheap"),
        Some(after_one),
        "nothing more paid"
    );
    let refused = entries(&w, "payment_refused", "provider", &cheap);
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.iter().all(|p| p["reason"] == "undelivered_payment"));

    // It delivers after all: recovery fetches the lease and payments resume.
    w.market.dishonest.store(false, Ordering::SeqCst);
    w.renter.recover_payments().await.unwrap();
    assert!(w.renter.open_payments().unwrap().is_empty());
    let r = w.renter.add_credit(&lease_id, 100).await.unwrap();
    assert_eq!(r.stats.topups, 2);
    assert_eq!(entries(&w, "payment_attempt", "provider", &cheap).len(), 3);
    assert_eq!(w.net.double_payments(), 0);
}

#[tokio::test]
async fn a_provider_that_stops_answering_is_demoted_then_dropped_until_it_answers() {
    let w = world().await;
    let cheap = w.market.cheap.0.to_string();
    let honest = w.market.honest.0.to_string();
    let order = |w: &World| -> Vec<String> {
        w.renter
            .offers(Some(1_000))
            .into_iter()
            .map(|o| o.peer)
            .collect()
    };
    w.renter.discover().await.unwrap();
    assert_eq!(order(&w), [cheap.clone(), honest.clone()], "cheaper first");

    // One failed hello: still listed, but ranked below the provider that answers. A provider
    // whose offer is fresh is asked again only after RECHECK_SECS without news of it; from its
    // first failure on, every pass asks it.
    w.market.cheap_down.store(true, Ordering::SeqCst);
    w.clock.advance(Duration::from_secs(RECHECK_SECS));
    w.renter.discover().await.unwrap();
    assert_eq!(order(&w), [honest.clone(), cheap.clone()], "demoted");
    // A second one: still demoted; the third drops it from the list.
    w.renter.discover().await.unwrap();
    assert_eq!(order(&w), [honest.clone(), cheap.clone()]);
    w.renter.discover().await.unwrap();
    assert_eq!(
        order(&w),
        vec![honest.clone()],
        "dropped after 3 failures in a row"
    );
    let refused: Vec<serde_json::Value> = entries(&w, "peer_refused", "peer", &cheap);
    assert_eq!(refused.len(), 1, "{refused:?}");
    // rent --auto goes to the one that answers.
    let r = w.renter.rent(auto(1_000)).await.unwrap();
    assert_eq!(r.lease.provider, honest);

    // It answers again: back in the list. It failed us more often than it delivered, so it
    // stays below the provider that delivered, although it is cheaper.
    w.market.cheap_down.store(false, Ordering::SeqCst);
    w.renter.discover().await.unwrap();
    assert_eq!(order(&w), [honest.clone(), cheap.clone()]);
    let history = w.renter.provider_history().unwrap();
    let h = |p: &str| history.iter().find(|(k, _)| k == p).unwrap().1.clone();
    assert_eq!((h(&cheap).failures, h(&cheap).consecutive_failures), (1, 0));
    assert_eq!((h(&honest).leases_delivered, h(&honest).failures), (1, 0));
}

#[tokio::test]
async fn drop_after_failures_zero_never_drops() {
    let w = world_with(RenterConfig {
        ipv6_prefix_len: None,
        drop_after_failures: 0,
        ..RenterConfig::default()
    })
    .await;
    let cheap = w.market.cheap.0.to_string();
    w.renter.discover().await.unwrap();
    w.market.cheap_down.store(true, Ordering::SeqCst);
    w.clock.advance(Duration::from_secs(RECHECK_SECS));
    for _ in 0..5 {
        w.renter.discover().await.unwrap();
    }
    let peers: Vec<String> = w
        .renter
        .offers(Some(1_000))
        .into_iter()
        .map(|o| o.peer)
        .collect();
    assert_eq!(peers.last(), Some(&cheap), "demoted, never dropped");
    assert_eq!(peers.len(), 2);
}
