//! Every provider visible: a renter whose DHT lookup returns ONE member learns the offers of
//! more providers than a DHT key keeps records for (libp2p-kad keeps 20) through the offer
//! exchange, relayed over two hops, and rents from a provider it never found on the DHT.
//! Providers in memory (in-memory Lightning, file tunnels, one manual clock); the network is
//! a direct call that records who asked whom for what.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::provider;
use ed25519_dalek::SigningKey;
use leasewire::audit::AuditLog;
use leasewire::config::RenterConfig;
use leasewire::lightning::testing::MemNetwork;
use leasewire::market::offers::{self, Inserted, OfferCache};
use leasewire::market::provider::Provider;
use leasewire::market::renter::{RentArgs, Renter, RenterParams};
use leasewire::market::{MarketError, Peers};
use leasewire::tunnel::FileTunnel;
use leasewire::types::{Clock, ManualClock, WgKey};
use leasewire::wire::signed::peer_id_of;
use leasewire::wire::{Message, Offer, Signed};
use libp2p::PeerId;

/// More providers than one DHT key keeps records for.
const PAPER_PROVIDERS: u8 = 30;

/// (asker, asked, message name) of every request.
type RequestLog = Arc<Mutex<Vec<(PeerId, PeerId, &'static str)>>>;

/// The providers reachable by a direct call, as seen by `from`.
struct Net {
    from: PeerId,
    /// What the DHT lookup answers.
    on_dht: Vec<PeerId>,
    providers: Vec<(PeerId, Provider)>,
    log: RequestLog,
}

#[async_trait::async_trait]
impl Peers for Net {
    async fn find_providers(&self) -> Result<Vec<PeerId>, MarketError> {
        Ok(self.on_dht.clone())
    }

    async fn request(
        &self,
        peer: PeerId,
        msg: Message,
    ) -> Result<(Message, Duration), MarketError> {
        self.log.lock().unwrap().push((self.from, peer, msg.name()));
        let Some((_, p)) = self.providers.iter().find(|(id, _)| *id == peer) else {
            return Err(MarketError::Net("unreachable (test)".into()));
        };
        Ok((p.handle(self.from, msg).await, Duration::from_millis(3)))
    }
}

/// An offer of a provider that exists only on paper (signed by its key, never reachable).
fn paper_offer(template: &Offer, seed: u8) -> Signed<Offer> {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let mut offer = Offer {
        provider: peer_id_of(&key.verifying_key()).to_string(),
        seq: 1,
        ..template.clone()
    };
    // Dearer than every real provider here.
    offer.terms.rate_sat_per_day = 200;
    Signed::sign(&key, &offer).unwrap()
}

#[tokio::test]
async fn a_renter_meeting_one_member_learns_every_offer_and_rents_from_one_it_never_found() {
    let dir = tempfile::tempdir().unwrap();
    let ln = MemNetwork::new(&[
        ("renter".into(), 1_000_000),
        ("hub".into(), 0),
        ("far".into(), 0),
    ])
    .unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let hub = provider(dir.path(), "hub", 10, 100, &ln, &clock);
    // The cheapest provider of the market, absent from the DHT answers the renter gets.
    let far = provider(dir.path(), "far", 20, 50, &ln, &clock);
    hub.1.start().await.unwrap();
    far.1.start().await.unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let now = {
        let clock = clock.clone();
        move || clock.now_unix()
    };

    // `far` knows the offers of 30 providers (it learned them from members earlier).
    let template = far.1.offer().verify().unwrap();
    let paper: Vec<Signed<Offer>> = (0..PAPER_PROVIDERS)
        .map(|i| paper_offer(&template, 100 + i))
        .collect();
    for o in &paper {
        assert_eq!(
            far.1.offer_cache().insert(o.clone(), now()),
            Ok(Inserted::New)
        );
    }

    // `far` meets `hub`: the hub asks it for the offers it knows and verifies every one.
    let hub_side = Net {
        from: hub.0,
        on_dht: Vec::new(),
        providers: vec![far.clone()],
        log: log.clone(),
    };
    let report = offers::pull(&hub_side, hub.1.offer_cache(), far.0, &now)
        .await
        .unwrap();
    assert_eq!(report.new, usize::from(PAPER_PROVIDERS) + 1, "{report:?}");
    assert!(report.rejected.is_empty(), "{report:?}");

    // The renter's DHT lookup finds the hub only.
    let key = SigningKey::from_bytes(&[30; 32]);
    let renter_peer = peer_id_of(&key.verifying_key());
    let db = sled::open(dir.path().join("renter").join("db")).unwrap();
    let audit = AuditLog::open(&db, key.clone()).unwrap();
    let renter_net = Arc::new(Net {
        from: renter_peer,
        on_dht: vec![hub.0],
        providers: vec![hub.clone(), far.clone()],
        log: log.clone(),
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
            ln: Arc::new(ln.node("renter").unwrap()),
            tunnel: Arc::new(FileTunnel::new(dir.path().join("renter").join("tunnel")).unwrap()),
            audit: audit.clone(),
            peers: renter_net,
            db,
        },
        clock.clone(),
    )
    .unwrap();

    // One pass: every offer of the market, from one member.
    let all = usize::from(PAPER_PROVIDERS) + 2;
    assert_eq!(renter.discover().await.unwrap(), all);
    let listed: HashSet<String> = renter.offers(None).into_iter().map(|o| o.peer).collect();
    assert!(listed.contains(&far.0.to_string()));
    assert!(listed.contains(&hub.0.to_string()));
    for o in &paper {
        assert!(listed.contains(&o.verify().unwrap().provider));
    }
    // The renter's cache now serves them all in turn.
    assert_eq!(renter.offer_cache().len(), all);

    // Learned, not dialed: the renter asked nothing of `far` or of the paper providers.
    let asked_by_renter: Vec<(PeerId, &str)> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(from, _, _)| *from == renter_peer)
        .map(|(_, to, what)| (*to, *what))
        .collect();
    assert!(
        asked_by_renter.iter().all(|(to, _)| *to == hub.0),
        "{asked_by_renter:?}"
    );
    assert!(asked_by_renter.contains(&(hub.0, "offersRequest")));
    assert!(asked_by_renter.contains(&(hub.0, "hello")));

    // A second pass asks nothing new of anyone: nothing changed.
    let before = log.lock().unwrap().len();
    assert_eq!(renter.discover().await.unwrap(), all);
    let again: Vec<(PeerId, PeerId, &str)> = log.lock().unwrap()[before..].to_vec();
    assert!(
        again.iter().all(|(_, _, what)| *what == "offersRequest"),
        "only the exchange, no hello: {again:?}"
    );

    // New providers and offers are audited once each; the cheapest provider ranks first.
    let discovered = audit
        .entries(0)
        .map(|e| e.unwrap())
        .filter(|e| e.kind == "peer_discovered")
        .count();
    assert_eq!(discovered, all);
    let best = renter.offers(Some(1_000)).into_iter().next().unwrap();
    assert_eq!(best.peer, far.0.to_string(), "far is the cheapest");

    // It rents from `far`, met only through the exchange.
    let far_offer = far.1.offer().id();
    let r = renter
        .rent(RentArgs {
            offer_id: Some(far_offer),
            credit_sat: Some(1_000),
            timeout: Duration::ZERO,
            ..RentArgs::default()
        })
        .await
        .unwrap();
    assert_eq!(r.lease.provider, far.0.to_string());
    assert_eq!(ln.balance_msat("far"), Some(2_000_000));
}

/// A member that answers `offersRequest` with a page it made up (to the first range asked).
struct Liar(Vec<Signed<Offer>>);

#[async_trait::async_trait]
impl Peers for Liar {
    async fn find_providers(&self) -> Result<Vec<PeerId>, MarketError> {
        Ok(Vec::new())
    }

    async fn request(
        &self,
        _peer: PeerId,
        msg: Message,
    ) -> Result<(Message, Duration), MarketError> {
        let Message::OffersRequest(req) = msg else {
            panic!("expected offersRequest, got {}", msg.name());
        };
        // Its made-up page answers the first range; the other ranges of the pull get nothing.
        let offers = if req.after.is_empty() {
            self.0.clone()
        } else {
            Vec::new()
        };
        Ok((
            Message::Offers(leasewire::wire::Offers { offers, next: None }),
            Duration::from_millis(3),
        ))
    }
}

#[tokio::test]
async fn a_member_relaying_forged_or_tampered_offers_passes_on_nothing_of_them() {
    let clock = Arc::new(ManualClock::starting_now());
    let dir = tempfile::tempdir().unwrap();
    let ln = MemNetwork::new(&[("p".into(), 0)]).unwrap();
    let (_, p) = provider(dir.path(), "p", 40, 100, &ln, &clock);
    let now = {
        let clock = clock.clone();
        move || clock.now_unix()
    };
    let template = p.offer().verify().unwrap();
    let honest = paper_offer(&template, 50);
    let honest_id = honest.verify().unwrap().provider;
    let liar_key = SigningKey::from_bytes(&[60; 32]);
    // The honest offer with cheaper terms put in its body: the signature no longer holds.
    let mut cheaper = honest.verify().unwrap();
    cheaper.terms.rate_sat_per_day = 1;
    let mut tampered = honest.clone();
    tampered.body = Signed::sign(&liar_key, &cheaper).unwrap().body;
    // The cheaper offer signed by the liar, naming the honest provider.
    let forged = Signed::sign(&liar_key, &cheaper).unwrap();
    // A genuine offer, relayed unchanged: kept.
    let genuine = paper_offer(&template, 51);
    let liar = Liar(vec![tampered, forged, genuine.clone()]);
    let mine = OfferCache::new("regtest", 100);
    let report = offers::pull(&liar, &mine, PeerId::random(), &now)
        .await
        .unwrap();
    assert_eq!((report.received, report.new), (3, 1), "{report:?}");
    assert_eq!(report.rejected.len(), 2, "{report:?}");
    assert!(mine.get(&honest_id).is_none());
    assert_eq!(
        mine.get(&genuine.verify().unwrap().provider)
            .unwrap()
            .offer_id,
        genuine.id()
    );
}
