//! Provider and renter logic end to end in one process (see `world`): renting, the payer's
//! invoice checks, settlement, metering, release.

// Tests may unwrap: a panic is the failure report (clippy.toml allows it in #[test]
// functions only, not in an integration test's helpers).
#![allow(clippy::unwrap_used)]

mod world;

use std::sync::atomic::Ordering;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use leasewire::config::{ProviderConfig, RenterConfig};
use leasewire::lightning::LightningNode;
use leasewire::market::MarketError;
use leasewire::market::renter::RentArgs;
use leasewire::tunnel::Tunnel;
use leasewire::types::{Clock, WgKey};
use leasewire::wire::signed::peer_id_of;
use leasewire::wire::{ErrorCode, Message, PaymentResult, RentRequest};
use world::{Tamper, kinds, world, world_full, world_with};

#[tokio::test]
async fn renter_rents_pays_exactly_and_gets_a_verified_lease() {
    let w = world(Tamper::None).await;
    assert_eq!(w.renter.discover().await.unwrap(), 1);
    let rental = w
        .renter
        .rent(RentArgs {
            offer_id: None,
            credit_sat: Some(3000),
            timeout: Duration::from_secs(10),
            ..RentArgs::default()
        })
        .await
        .unwrap();
    let lease = &rental.lease;
    assert_eq!(lease.ipv4.as_deref(), Some("198.51.100.0/32"));
    assert_eq!(lease.ipv6.as_deref(), Some("2001:db8:100::/64"));
    assert_eq!(rental.paid_sat, 1000 + 3000, "activation fee + credit");
    assert_eq!(lease.provider, w.provider_peer.to_string());
    assert_eq!(lease.renter, w.renter_peer.to_string());
    // 3000 sat at 100 sat/day buys 30 days.
    assert_eq!(lease.paid_until - lease.activated_at, 30 * 86_400);

    // The provider recorded it and put the renter's key on its interface with the prefixes.
    let leases = w.provider.leases().unwrap();
    assert_eq!(leases.len(), 1);
    let stats = w.provider_tunnel.peer_stats("lwp0").await.unwrap();
    assert_eq!(stats.len(), 1);
    // The lease's own WireGuard key (each lease has one), not the node's shared key.
    assert_eq!(stats[0].public_key, lease.renter_wg_pubkey);
    assert_ne!(lease.renter_wg_pubkey, WgKey([4; 32]));
    let allowed: Vec<String> = stats[0].allowed_ips.iter().map(|n| n.to_string()).collect();
    assert_eq!(allowed, ["198.51.100.0/32", "2001:db8:100::/64"]);

    // The renter's wg-quick file carries the leased addresses and the provider as peer.
    let (path, text) = w.renter.conf("").unwrap();
    assert!(path.ends_with("lwr0.conf"));
    assert!(text.contains("198.51.100.0/32"), "{text}");
    assert!(text.contains("Address = 2001:db8:100::1/64"), "{text}");
    // The source rule covers the whole leased IPv6 prefix.
    assert!(
        text.contains("ip -6 rule add from 2001:db8:100::/64 table"),
        "{text}"
    );
    assert!(text.contains(&WgKey([2; 32]).to_base64()), "{text}");
    assert!(text.contains("127.0.0.1:51820"), "{text}");

    let rk = kinds(&w.renter_audit);
    for k in [
        "peer_discovered",
        "offer_seen",
        "payment_attempt",
        "payment_succeeded",
        "lease_received",
        "lease_applied",
    ] {
        assert!(rk.iter().any(|x| x == k), "renter audit lacks {k}: {rk:?}");
    }
    let pk = kinds(&w.provider_audit);
    for k in [
        "offer_published",
        "invoice_created",
        "invoice_settled",
        "lease_issued",
    ] {
        assert!(
            pk.iter().any(|x| x == k),
            "provider audit lacks {k}: {pk:?}"
        );
    }
    // A hello changes nothing: it is not audited (it was most of a busy provider's log).
    assert!(!pk.iter().any(|x| x == "hello"), "{pk:?}");
    assert!(w.renter_audit.verify().ok && w.provider_audit.verify().ok);
    // lnd-sim's own ledger: exactly the invoice amount moved.
    assert_eq!(
        w.sim.balance_msat("renter"),
        Some(1_000_000_000 - 4_000_000)
    );
    assert_eq!(w.sim.balance_msat("provider"), Some(4_000_000));

    // Top-up: one ledger at the provider, confirmed by a re-signed lease.
    let topped = w.renter.add_credit("", 500).await.unwrap();
    assert_eq!(topped.lease.credit_sat, 3500);
    assert_eq!(topped.lease.revision, 2);
    assert_eq!(topped.lease.paid_until, lease.paid_until + 5 * 86_400);
    assert_eq!(topped.paid_sat, 4500);
    assert_eq!(w.provider.leases().unwrap()[0].lease.credit_sat, 3500);
}

#[tokio::test]
async fn provider_issues_no_lease_before_its_node_shows_settlement() {
    let w = world(Tamper::None).await;
    let offer_id = w.provider.offer().id();
    let reply = w
        .provider
        .handle(
            w.renter_peer,
            Message::RentRequest(RentRequest {
                request_id: "00".repeat(16),
                offer_id,
                credit_sat: 1000,
                ipv4_prefix_len: Some(32),
                ipv6_prefix_len: Some(64),
                wg_pubkey: WgKey([9; 32]),
            }),
        )
        .await;
    let Message::PayInvoice(pay) = reply else {
        panic!("wanted payInvoice, got {reply:?}")
    };
    // The renter claims it paid, with an invented preimage. Nothing was paid.
    let claim = Message::PaymentResult(PaymentResult {
        request_id: pay.request_id.clone(),
        payment_hash: "11".repeat(32),
        preimage: "22".repeat(32),
    });
    match w.provider.handle(w.renter_peer, claim).await {
        Message::Error(e) => assert_eq!(e.code, ErrorCode::NotSettled),
        other => panic!("a claim alone must not issue a lease, got {other:?}"),
    }
    assert!(w.provider.leases().unwrap().is_empty());
    w.provider.tick().await.unwrap();
    assert!(
        w.provider.leases().unwrap().is_empty(),
        "the watcher must not issue either"
    );

    // Once really paid, the watcher issues the lease even without a paymentResult.
    w.renter_ln
        .pay_invoice(leasewire::lightning::PayRequest {
            bolt11: pay.bolt11,
            fee_limit_msat: 10_000,
            timeout_secs: 30,
        })
        .await
        .unwrap();
    w.provider.tick().await.unwrap();
    let leases = w.provider.leases().unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].lease.lease_id, pay.lease_id);
}

async fn refused_before_paying(tamper: Tamper, expect_in_reason: &str) {
    let w = world(tamper).await;
    w.renter.discover().await.unwrap();
    let err = w
        .renter
        .rent(RentArgs {
            offer_id: None,
            credit_sat: Some(1000),
            timeout: Duration::from_millis(100),
            ..RentArgs::default()
        })
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, MarketError::InvoiceRejected(_)),
        "{tamper:?}: {msg}"
    );
    assert!(
        msg.to_lowercase().contains(expect_in_reason),
        "{tamper:?}: {msg}"
    );
    let rk = kinds(&w.renter_audit);
    assert!(rk.iter().any(|k| k == "invoice_rejected"), "{rk:?}");
    assert!(
        !rk.iter().any(|k| k == "payment_attempt"),
        "{tamper:?}: a payment was attempted: {rk:?}"
    );
    assert!(w.provider.leases().unwrap().is_empty());
    assert_eq!(
        w.sim.balance_msat("renter"),
        Some(1_000_000_000),
        "{tamper:?}: money moved"
    );
}

#[tokio::test]
async fn invoice_with_wrong_amount_is_refused_before_paying() {
    refused_before_paying(Tamper::Amount, "amount").await;
}

#[tokio::test]
async fn invoice_from_another_node_is_refused_before_paying() {
    refused_before_paying(Tamper::Payee, "payee").await;
}

#[tokio::test]
async fn expired_invoice_is_refused_before_paying() {
    refused_before_paying(Tamper::Expired, "expire").await;
}

#[tokio::test]
async fn invoice_committing_to_other_terms_is_refused_before_paying() {
    refused_before_paying(Tamper::DescriptionHash, "description").await;
}

#[tokio::test]
async fn invoice_for_another_network_is_refused_before_paying() {
    refused_before_paying(Tamper::Network, "network").await;
}

#[tokio::test]
async fn one_peer_cannot_reserve_the_whole_pool_with_unpaid_invoices() {
    let w = world(Tamper::None).await;
    let request = |n: u8| {
        Message::RentRequest(RentRequest {
            request_id: format!("{n:02x}").repeat(16),
            offer_id: w.provider.offer().id(),
            credit_sat: 1000,
            ipv4_prefix_len: Some(32),
            ipv6_prefix_len: Some(64),
            wg_pubkey: WgKey([9; 32]),
        })
    };
    let max = leasewire::market::provider::MAX_UNPAID_PER_PEER;
    for n in 0..max as u8 {
        let reply = w.provider.handle(w.renter_peer, request(n)).await;
        assert!(matches!(reply, Message::PayInvoice(_)), "{reply:?}");
        // The offer is re-signed when availability changes; ask under the current one.
    }
    match w.provider.handle(w.renter_peer, request(max as u8)).await {
        Message::Error(e) => {
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(e.message.contains("unpaid"), "{}", e.message);
        }
        other => panic!("a peer over the unpaid-invoice cap was served: {other:?}"),
    }
    // Another peer is still served from what is left of the pool.
    let other = peer_id_of(&SigningKey::from_bytes(&[33; 32]).verifying_key());
    let reply = w.provider.handle(other, request(200)).await;
    assert!(matches!(reply, Message::PayInvoice(_)), "{reply:?}");
}

#[tokio::test]
async fn credit_runs_out_the_tunnel_goes_off_and_back_rent_restores_it() {
    // 86 400 sat/day is one sat per second: 2 sat of credit lasts two seconds.
    let terms = leasewire::types::Terms {
        activation_fee_sat: 10,
        rate_sat_per_day: 86_400,
        min_initial_credit_sat: 2,
        min_topup_sat: 1,
        max_credit_sat: 1_000,
        reserve_days: 1,
        refund_unused: false,
        reservation_secs: 0,
    };
    let w = world_with(Tamper::None, terms).await;
    w.renter.discover().await.unwrap();
    let rental = w
        .renter
        .rent(RentArgs {
            offer_id: None,
            credit_sat: Some(2),
            timeout: Duration::from_secs(10),
            ..RentArgs::default()
        })
        .await
        .unwrap();
    assert_eq!(rental.lease.paid_until, rental.lease.activated_at + 2);
    assert_eq!(w.provider_tunnel.peer_stats("lwp0").await.unwrap().len(), 1);

    // Three seconds of market time: the two paid seconds are used up.
    w.clock.advance(Duration::from_secs(3));
    w.provider.tick().await.unwrap();
    let rec = &w.provider.leases().unwrap()[0];
    assert_eq!(rec.state, leasewire::wire::LeaseState::Suspended);
    assert!(
        w.provider_tunnel
            .peer_stats("lwp0")
            .await
            .unwrap()
            .is_empty(),
        "peer not removed"
    );
    assert!(
        kinds(&w.provider_audit)
            .iter()
            .any(|k| k == "lease_suspended")
    );
    // Addresses are held, not released, during the reserve period.
    let offer = w.provider.offer().verify().unwrap();
    assert_eq!(offer.ipv4[0].available, 7);

    // Back rent first: 5 sat from a paid_until that is already past buys service until
    // activation + 7 s, four seconds from now, so the lease comes back on the same addresses.
    let topped = w.renter.add_credit("", 5).await.unwrap();
    assert_eq!(topped.lease.paid_until, rental.lease.activated_at + 7);
    assert_eq!(topped.lease.ipv4, rental.lease.ipv4);
    assert_eq!(topped.lease.ipv6, rental.lease.ipv6);
    let rec = &w.provider.leases().unwrap()[0];
    assert_eq!(rec.state, leasewire::wire::LeaseState::Active);
    assert_eq!(
        w.provider_tunnel.peer_stats("lwp0").await.unwrap().len(),
        1,
        "peer not restored"
    );
    assert!(
        kinds(&w.provider_audit)
            .iter()
            .any(|k| k == "lease_reactivated")
    );
}

#[tokio::test]
async fn a_second_lease_gets_its_own_interface_and_routing_table() {
    let w = world(Tamper::None).await;
    w.renter.discover().await.unwrap();
    let args = || RentArgs {
        offer_id: None,
        credit_sat: Some(1000),
        timeout: Duration::from_secs(10),
        ..RentArgs::default()
    };
    let first = w.renter.rent(args()).await.unwrap();
    // A second lease from the same provider is bought only once confirmed; asking pays nothing.
    let attempts = || {
        kinds(&w.renter_audit)
            .iter()
            .filter(|k| *k == "payment_attempt")
            .count()
    };
    let paid = attempts();
    let e = w.renter.rent_confirmed(args(), false).await.unwrap_err();
    assert!(
        matches!(&e, MarketError::NeedsConfirmation(m) if m.contains(&first.lease.lease_id)
            && m.contains(&w.provider_peer.to_string())),
        "{e}"
    );
    assert_eq!(w.renter.rentals().unwrap().len(), 1);
    assert_eq!(attempts(), paid, "nothing paid before the confirmation");
    let second = w.renter.rent_confirmed(args(), true).await.unwrap();
    assert_eq!(
        (first.iface.as_str(), second.iface.as_str()),
        ("lwr0", "lwr1")
    );
    assert_ne!(first.lease.ipv4, second.lease.ipv4);
    let (_, a) = w.renter.conf(&first.lease.lease_id).unwrap();
    let (_, b) = w.renter.conf(&second.lease.lease_id).unwrap();
    assert!(
        a.contains("table 51820") && !a.contains("table 51821"),
        "{a}"
    );
    assert!(
        b.contains("table 51821") && !b.contains("table 51820"),
        "{b}"
    );
    // Each lease has its own WireGuard key, so the provider holds one peer per lease, each
    // with its own lease's addresses.
    assert_ne!(first.lease.renter_wg_pubkey, second.lease.renter_wg_pubkey);
    assert_ne!(
        a.lines().find(|l| l.starts_with("PrivateKey")),
        b.lines().find(|l| l.starts_with("PrivateKey"))
    );
    let mut peers: Vec<_> = w
        .provider_tunnel
        .peer_stats("lwp0")
        .await
        .unwrap()
        .into_iter()
        .map(|p| {
            (
                p.public_key,
                p.allowed_ips
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    peers.sort_by_key(|(k, _)| k.0);
    let mut want: Vec<_> = [&first, &second]
        .iter()
        .map(|r| (r.lease.renter_wg_pubkey, r.lease.allowed_ips.clone()))
        .collect();
    want.sort_by_key(|(k, _)| k.0);
    assert_eq!(peers, want);
    // With two leases held, commands that act on one lease must be told which.
    for e in [
        w.renter.conf("").unwrap_err().to_string(),
        w.renter.set_autopay("", false).unwrap_err().to_string(),
        w.renter.add_credit("", 500).await.unwrap_err().to_string(),
    ] {
        assert!(
            e.contains("--lease")
                && e.contains(&first.lease.lease_id)
                && e.contains(&second.lease.lease_id),
            "{e}"
        );
    }
    let e = w.renter.release("").await.unwrap_err().to_string();
    assert!(
        e.contains(&first.lease.lease_id) && e.contains(&second.lease.lease_id),
        "{e}"
    );
    w.renter.release(&first.lease.lease_id).await.unwrap();
    assert_eq!(
        w.renter.rental("").unwrap().lease.lease_id,
        second.lease.lease_id
    );
}

#[tokio::test]
async fn recent_offer_versions_stay_acceptable_unknown_ones_do_not() {
    let w = world(Tamper::None).await;
    let first_id = w.provider.offer().id();
    let request = |offer_id: String, n: u8| {
        Message::RentRequest(RentRequest {
            request_id: format!("{n:02x}").repeat(16),
            offer_id,
            credit_sat: 1000,
            ipv4_prefix_len: Some(32),
            ipv6_prefix_len: Some(64),
            wg_pubkey: WgKey([9; 32]),
        })
    };
    let reply = w
        .provider
        .handle(w.renter_peer, request(first_id.clone(), 1))
        .await;
    assert!(matches!(reply, Message::PayInvoice(_)), "{reply:?}");
    assert_ne!(
        w.provider.offer().id(),
        first_id,
        "a reservation re-signs the offer"
    );
    // A renter that fetched the offer before that change is still served.
    let reply = w.provider.handle(w.renter_peer, request(first_id, 2)).await;
    assert!(matches!(reply, Message::PayInvoice(_)), "{reply:?}");
    match w
        .provider
        .handle(w.renter_peer, request("ab".repeat(16), 3))
        .await
    {
        Message::Error(e) => assert_eq!(e.code, ErrorCode::OfferChanged),
        other => panic!("an unknown offer id was accepted: {other:?}"),
    }
}

#[tokio::test]
async fn release_removes_the_tunnel_the_conf_and_its_link() {
    let w = world_full(
        Tamper::None,
        ProviderConfig::default().terms,
        RenterConfig::default(),
        true,
    )
    .await;
    w.renter.discover().await.unwrap();
    let rental = w
        .renter
        .rent(RentArgs {
            offer_id: None,
            credit_sat: Some(1000),
            timeout: Duration::from_secs(10),
            ..RentArgs::default()
        })
        .await
        .unwrap();
    let link = w.dir_path.join("etc-wireguard").join("lwr0.conf");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        rental.conf_path,
        "wg-quick file linked"
    );
    assert_eq!(w.renter_tunnel.peer_stats("lwr0").await.unwrap().len(), 1);

    let released = w.renter.release("").await.unwrap();
    assert_eq!(released.state, leasewire::wire::LeaseState::Released);
    assert!(
        w.renter_tunnel.peer_stats("lwr0").await.is_err(),
        "interface still there"
    );
    assert!(!rental.conf_path.exists(), "wg-quick file still there");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "link still there"
    );
    assert!(kinds(&w.renter_audit).iter().any(|k| k == "lease_released"));
    assert!(w.renter.release("").await.is_err(), "released twice");
    // The provider was told with the renter's signed leaseEnd: released there too, peer gone.
    assert!(!released.end_unsent);
    let rec = &w.provider.leases().unwrap()[0];
    assert_eq!(rec.state, leasewire::wire::LeaseState::Released);
    assert!(
        w.provider_tunnel
            .peer_stats("lwp0")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_release_the_provider_missed_is_sent_again_on_later_ticks() {
    let w = world(Tamper::None).await;
    w.renter.discover().await.unwrap();
    let args = || RentArgs {
        offer_id: None,
        credit_sat: Some(1000),
        timeout: Duration::from_secs(10),
        ..RentArgs::default()
    };
    let first = w.renter.rent(args()).await.unwrap();
    let second = w.renter.rent(args()).await.unwrap();
    let (_, forfeit) = w.renter.release_preview(&first.lease.lease_id).unwrap();
    assert_eq!(forfeit, 1000, "the whole credit is given up");

    // The provider cannot be reached: the renter releases locally all the same.
    w.peers.down.store(true, Ordering::SeqCst);
    let released = w.renter.release(&first.lease.lease_id).await.unwrap();
    assert_eq!(released.state, leasewire::wire::LeaseState::Released);
    assert!(
        released.end_unsent,
        "recorded that the provider was not told"
    );
    let state = |id: &str| {
        w.provider
            .leases()
            .unwrap()
            .into_iter()
            .find(|l| l.lease.lease_id == id)
            .unwrap()
            .state
    };
    assert_eq!(
        state(&first.lease.lease_id),
        leasewire::wire::LeaseState::Active
    );
    w.renter.tick().await.unwrap();
    assert!(w.renter.rental(&first.lease.lease_id).unwrap().end_unsent);

    // Reachable again: the next tick tells it, once.
    w.peers.down.store(false, Ordering::SeqCst);
    w.renter.tick().await.unwrap();
    assert!(!w.renter.rental(&first.lease.lease_id).unwrap().end_unsent);
    assert_eq!(
        state(&first.lease.lease_id),
        leasewire::wire::LeaseState::Released
    );
    assert_eq!(
        state(&second.lease.lease_id),
        leasewire::wire::LeaseState::Active
    );
    let peers = w.provider_tunnel.peer_stats("lwp0").await.unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].public_key, second.lease.renter_wg_pubkey);
    let provider_releases = kinds(&w.provider_audit)
        .iter()
        .filter(|k| *k == "lease_released")
        .count();
    w.renter.tick().await.unwrap();
    assert_eq!(
        kinds(&w.provider_audit)
            .iter()
            .filter(|k| *k == "lease_released")
            .count(),
        provider_releases,
        "not sent again once confirmed"
    );
}

#[tokio::test]
async fn full_tunnel_mode_routes_everything_through_the_tunnel() {
    let cfg = RenterConfig {
        full_tunnel: true,
        ..RenterConfig::default()
    };
    let w = world_full(Tamper::None, ProviderConfig::default().terms, cfg, false).await;
    w.renter.discover().await.unwrap();
    w.renter
        .rent(RentArgs {
            offer_id: None,
            credit_sat: Some(1000),
            timeout: Duration::from_secs(10),
            ..RentArgs::default()
        })
        .await
        .unwrap();
    let (_, text) = w.renter.conf("").unwrap();
    assert!(!text.contains("Table = off"), "{text}");
    assert!(!text.contains("rule add from"), "{text}");
    assert!(text.contains("AllowedIPs = 0.0.0.0/0, ::/0"), "{text}");
}

#[tokio::test]
async fn a_termination_notice_shows_on_the_renter_and_stops_autopay() {
    let w = world(Tamper::None).await;
    w.renter.discover().await.unwrap();
    // 1000 sat at 100 sat/day: paid for 10 days.
    let rental = w
        .renter
        .rent(RentArgs {
            offer_id: None,
            credit_sat: Some(1000),
            timeout: Duration::from_secs(10),
            ..RentArgs::default()
        })
        .await
        .unwrap();
    let id = rental.lease.lease_id.clone();
    assert!(rental.autopay);
    let notice = Duration::from_secs(9 * 86_400 + 23 * 3_600);
    w.provider.terminate(&id, notice).await.unwrap();
    let ends_at = w.clock.now_unix() + notice.as_secs();

    // The renter's tick fetches the provider's status and keeps the signed notice.
    w.renter.tick().await.unwrap();
    let r = w.renter.rental(&id).unwrap();
    assert_eq!(r.terminates_at(), Some(ends_at));

    // Nearly out of credit: AutoPay would top up, but not a lease under notice.
    w.clock
        .advance(Duration::from_secs(9 * 86_400 + 22 * 3_600));
    let attempts = || {
        kinds(&w.renter_audit)
            .iter()
            .filter(|k| *k == "payment_attempt")
            .count()
    };
    let before = attempts();
    w.renter.autopay_tick().await.unwrap();
    assert_eq!(attempts(), before, "AutoPay paid for a lease under notice");
    let note = w.renter.rental(&id).unwrap().stats.last_autopay.unwrap();
    assert!(
        note.message.contains("termination notice"),
        "{}",
        note.message
    );

    // At the end of the notice the provider releases it.
    w.clock.advance(Duration::from_secs(3_600));
    w.provider.tick().await.unwrap();
    assert_eq!(
        w.provider.leases().unwrap()[0].state,
        leasewire::wire::LeaseState::Released
    );
    assert!(
        w.provider_tunnel
            .peer_stats("lwp0")
            .await
            .unwrap()
            .is_empty()
    );
    // And the renter takes its side down too.
    w.renter.tick().await.unwrap();
    let r = w.renter.rental(&id).unwrap();
    assert_eq!(r.state, leasewire::wire::LeaseState::Released);
    assert!(
        w.renter_tunnel.peer_stats(&r.iface).await.is_err(),
        "renter interface still there"
    );
    assert!(!r.conf_path.exists());
}

/// Rents one lease from the world's provider; returns its id.
async fn rent_one(w: &world::World) -> String {
    assert_eq!(w.renter.discover().await.unwrap(), 1);
    w.renter
        .rent(RentArgs {
            offer_id: None,
            credit_sat: Some(3000),
            timeout: Duration::from_secs(10),
            ..RentArgs::default()
        })
        .await
        .unwrap()
        .lease
        .lease_id
}

#[tokio::test]
async fn a_provider_that_moved_is_followed_without_a_payment() {
    let mut w = world(Tamper::None).await;
    let id = rent_one(&w).await;
    let before = w.renter.rental(&id).unwrap();
    let balance = w.sim.balance_msat("renter");
    let attempts = |w: &world::World| {
        kinds(&w.renter_audit)
            .iter()
            .filter(|k| *k == "payment_attempt")
            .count()
    };
    let paid_attempts = attempts(&w);
    let old_seq = w.provider.offer().verify().unwrap().seq;

    // The provider restarts on another port with a rotated WireGuard key.
    w.restart_provider("127.0.0.1:51999", (WgKey([5; 32]), WgKey([6; 32])))
        .await;
    let offer = w.provider.offer().verify().unwrap();
    assert!(offer.seq > old_seq, "a new offer seq");
    assert_eq!(offer.endpoint, "127.0.0.1:51999");
    assert_eq!(offer.wg_pubkey, WgKey([6; 32]));
    let rec = &w.provider.leases().unwrap()[0];
    assert_eq!(rec.lease.revision, before.lease.revision + 1);
    assert_eq!(rec.lease.endpoint, "127.0.0.1:51999");
    assert_eq!(rec.lease.provider_wg_pubkey, WgKey([6; 32]));
    assert_eq!(rec.lease.credit_sat, before.lease.credit_sat);
    assert_eq!(rec.lease.paid_until, before.lease.paid_until);
    assert_eq!(rec.signed.verify().unwrap(), rec.lease);
    assert!(
        kinds(&w.provider_audit)
            .iter()
            .any(|k| k == "lease_revised")
    );
    assert_eq!(
        w.provider.revise_moved_leases().await.unwrap(),
        0,
        "a lease already revised is not revised again"
    );
    // The restarted provider still routes the lease to the renter's key.
    let pstats = w.provider_tunnel.peer_stats("lwp0").await.unwrap();
    assert_eq!(pstats.len(), 1);
    assert_eq!(pstats[0].public_key, before.lease.renter_wg_pubkey);

    // The renter's tick fetches the status, checks the revision and re-points the tunnel.
    w.renter.tick().await.unwrap();
    let after = w.renter.rental(&id).unwrap();
    assert_eq!(after.lease.revision, before.lease.revision + 1);
    assert_eq!(after.lease.endpoint, "127.0.0.1:51999");
    assert_eq!(after.paid_sat, before.paid_sat);
    assert_eq!(after.stats.payments, before.stats.payments);
    let stats = w.renter_tunnel.peer_stats(&after.iface).await.unwrap();
    assert_eq!(stats.len(), 1, "the old key's peer is gone: {stats:?}");
    assert_eq!(stats[0].public_key, WgKey([6; 32]));
    assert_eq!(stats[0].endpoint.as_deref(), Some("127.0.0.1:51999"));
    let (_, text) = w.renter.conf(&id).unwrap();
    assert!(text.contains("Endpoint = 127.0.0.1:51999"), "{text}");
    assert!(text.contains(&WgKey([6; 32]).to_base64()), "{text}");
    assert!(!text.contains(&WgKey([2; 32]).to_base64()), "{text}");
    // Nothing was paid for it: lnd-sim's ledger and the audit log agree.
    assert_eq!(w.sim.balance_msat("renter"), balance);
    assert_eq!(attempts(&w), paid_attempts);
    assert!(kinds(&w.renter_audit).iter().any(|k| k == "lease_revised"));

    // A second tick changes nothing more.
    w.renter.tick().await.unwrap();
    assert_eq!(
        w.renter.rental(&id).unwrap().lease.revision,
        after.lease.revision
    );
    let revised = kinds(&w.renter_audit)
        .iter()
        .filter(|k| *k == "lease_revised")
        .count();
    assert_eq!(revised, 1);
    assert!(w.renter_audit.verify().ok && w.provider_audit.verify().ok);
}

#[tokio::test]
async fn a_dns_endpoint_is_resolved_and_followed() {
    let mut w = world(Tamper::None).await;
    let id = rent_one(&w).await;
    assert_eq!(
        w.renter.resolved_endpoint(&id),
        None,
        "an IP literal needs no look-up"
    );
    w.restart_provider("localhost:51998", (WgKey([1; 32]), WgKey([2; 32])))
        .await;
    w.renter.tick().await.unwrap();
    let r = w.renter.rental(&id).unwrap();
    assert_eq!(r.lease.endpoint, "localhost:51998");
    let addr = w
        .renter
        .resolved_endpoint(&id)
        .expect("resolved on the tick");
    assert!(addr.ip().is_loopback() && addr.port() == 51998, "{addr}");
    // The kernel peer gets the address; the wg-quick file keeps the name.
    let stats = w.renter_tunnel.peer_stats(&r.iface).await.unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].endpoint, Some(addr.to_string()));
    let (_, text) = w.renter.conf(&id).unwrap();
    assert!(text.contains("Endpoint = localhost:51998"), "{text}");
    // Resolved again each tick; the same address changes nothing.
    w.renter.tick().await.unwrap();
    assert_eq!(w.renter.resolved_endpoint(&id), Some(addr));
}

#[tokio::test]
async fn forged_or_illegal_lease_revisions_are_refused() {
    let w = world(Tamper::None).await;
    let id = rent_one(&w).await;
    let held = w.renter.rental(&id).unwrap();
    let provider_key = SigningKey::from_bytes(&[11; 32]);
    let moved = |f: &dyn Fn(&mut leasewire::wire::Lease)| {
        let mut l = held.lease.clone();
        l.revision += 1;
        l.endpoint = "127.0.0.1:40000".into();
        f(&mut l);
        l
    };
    let cases = [
        (
            "other addresses",
            leasewire::wire::Signed::sign(
                &provider_key,
                &moved(&|l| l.ipv4 = Some("198.51.100.5/32".into())),
            )
            .unwrap(),
        ),
        (
            "less credit",
            leasewire::wire::Signed::sign(&provider_key, &moved(&|l| l.credit_sat -= 100)).unwrap(),
        ),
        (
            "another renter key",
            leasewire::wire::Signed::sign(
                &provider_key,
                &moved(&|l| l.renter_wg_pubkey = WgKey([9; 32])),
            )
            .unwrap(),
        ),
        (
            "not signed by the provider",
            leasewire::wire::Signed::sign(&SigningKey::from_bytes(&[99; 32]), &moved(&|_| {}))
                .unwrap(),
        ),
    ];
    for (what, forged) in cases {
        *w.peers.status_lease.lock().unwrap() = Some(forged);
        let e = w.renter.refresh(&id).await.unwrap_err();
        assert!(matches!(e, MarketError::BadSigned { .. }), "{what}: {e}");
        // The tick hits the same refusal and carries on.
        w.renter.tick().await.unwrap();
        let r = w.renter.rental(&id).unwrap();
        assert_eq!(r.lease, held.lease, "{what}: the held lease stays");
        let stats = w.renter_tunnel.peer_stats(&r.iface).await.unwrap();
        assert_eq!(
            stats[0].endpoint.as_deref(),
            Some("127.0.0.1:51820"),
            "{what}"
        );
    }
    let refused = kinds(&w.renter_audit)
        .iter()
        .filter(|k| *k == "lease_revision_refused")
        .count();
    // Three illegal revisions, each seen by refresh and by the tick; the forged signature is
    // refused (and audited as an error) before the revision is looked at.
    assert_eq!(refused, 6);
    assert!(!kinds(&w.renter_audit).iter().any(|k| k == "lease_revised"));
}

// --- Failover (issue 9): two providers; the renter's tunnel checks are a test double whose
// result each test sets per provider. Market time is the world's clock, moved by hand.

/// A world with a second, dearer provider (so the first is rented first) and a renter whose
/// backend can verify tunnels; the renter holds one lease from the first provider, bought
/// with 1000 sat of credit (10 days).
async fn failover_world() -> (world::World, String) {
    let w = world::world_opts(world::Opts {
        verifying: true,
        second_provider: Some(leasewire::types::Terms {
            rate_sat_per_day: 200,
            min_initial_credit_sat: 2_000,
            // The market clock runs ahead of lnd-sim's invoice timestamps (real time) by the
            // grace period before this provider is rented: a 120 s reservation would look
            // expired to the renter. Not stated: its invoices keep the 600 s expiry.
            reservation_secs: 0,
            ..ProviderConfig::default().terms
        }),
        ..world::Opts::default()
    })
    .await;
    assert_eq!(w.renter.discover().await.unwrap(), 2);
    let r = w
        .renter
        .rent(RentArgs {
            offer_id: None,
            credit_sat: Some(1000),
            timeout: Duration::from_secs(10),
            ..RentArgs::default()
        })
        .await
        .unwrap();
    assert_eq!(
        r.lease.provider,
        w.provider_peer.to_string(),
        "the cheaper one"
    );
    assert!(r.autopay);
    (w, r.lease.lease_id)
}

fn failover_entries(w: &world::World) -> Vec<serde_json::Value> {
    w.renter_audit
        .entries(0)
        .map(|e| e.unwrap())
        .filter(|e| e.kind == "failover")
        .map(|e| e.payload_as().unwrap())
        .collect()
}

#[tokio::test]
async fn a_dead_tunnel_fails_over_after_the_grace_period_and_only_once() {
    let (mut w, old) = failover_world().await;
    let second = w.second.clone().unwrap();
    let v = w.verifying.clone().unwrap();
    let grace = RenterConfig::default().failover_grace.unwrap().as_secs();
    assert_eq!(grace, 300);

    // The first check finds the first provider's tunnel dead.
    v.set_peer_dead(WgKey([2; 32]), true);
    w.renter.autopay_tick().await.unwrap();
    let r = w.renter.rental(&old).unwrap();
    let since = r
        .health
        .dead_since
        .expect("dead since the first failed check");
    assert_eq!(since, w.clock.now_unix());
    // Still within the grace period: nothing is bought.
    w.clock.advance(Duration::from_secs(grace));
    w.renter.autopay_tick().await.unwrap();
    assert_eq!(w.renter.rentals().unwrap().len(), 1);
    assert!(w.renter.rental(&old).unwrap().failover.is_none());
    assert!(failover_entries(&w).is_empty());

    // Past it: one lease from the other provider, with the same sizes.
    let provider_balance = w.sim.balance_msat("provider");
    w.clock.advance(Duration::from_secs(1));
    w.renter.autopay_tick().await.unwrap();
    let rentals = w.renter.rentals().unwrap();
    assert_eq!(rentals.len(), 2, "exactly one new lease");
    let new = rentals
        .iter()
        .find(|r| r.lease.lease_id != old)
        .unwrap()
        .clone();
    assert_eq!(new.lease.provider, second.peer.to_string());
    assert_eq!(new.failed_over_from.as_deref(), Some(old.as_str()));
    assert!(new.lease.ipv4.as_deref().unwrap().ends_with("/32"));
    assert!(new.lease.ipv6.as_deref().unwrap().ends_with("/64"));
    let o = w.renter.rental(&old).unwrap();
    let f = o.failover.clone().unwrap();
    assert_eq!(f.new_lease.as_deref(), Some(new.lease.lease_id.as_str()));
    assert!(f.done_at.is_some() && f.reason.contains("dead"), "{f:?}");
    assert!(
        o.failover_status()
            .unwrap()
            .starts_with(&format!("failed over to {}", new.lease.lease_id))
    );
    let entries = failover_entries(&w);
    assert_eq!(entries.len(), 2, "decided, then done: {entries:?}");
    assert_eq!(entries[1]["new_lease_id"], new.lease.lease_id.as_str());

    // Later passes, and a restarted renter, buy nothing more; the old lease gets no top-up
    // even once its tunnel answers again and its credit runs low.
    v.set_peer_dead(WgKey([2; 32]), false);
    w.restart_renter();
    for _ in 0..3 {
        w.renter.autopay_tick().await.unwrap();
    }
    w.clock
        .advance(Duration::from_secs(9 * 86_400 + 13 * 3_600));
    w.renter.autopay_tick().await.unwrap();
    assert_eq!(w.renter.rentals().unwrap().len(), 2);
    assert_eq!(failover_entries(&w).len(), 2);
    assert_eq!(w.renter.rental(&old).unwrap().stats.payments, 1);
    assert_eq!(
        w.sim.balance_msat("provider"),
        provider_balance,
        "paid the old provider after the failover"
    );
}

#[tokio::test]
async fn a_termination_notice_fails_over_before_the_end() {
    let (w, old) = failover_world().await;
    let second = w.second.clone().unwrap();
    let notice = Duration::from_secs(2 * 86_400);
    w.provider.terminate(&old, notice).await.unwrap();
    let ends_at = w.clock.now_unix() + notice.as_secs();
    w.renter.tick().await.unwrap();
    assert_eq!(
        w.renter.rental(&old).unwrap().terminates_at(),
        Some(ends_at)
    );

    w.renter.autopay_tick().await.unwrap();
    assert!(w.clock.now_unix() < ends_at);
    let rentals = w.renter.rentals().unwrap();
    assert_eq!(rentals.len(), 2);
    let new = rentals.iter().find(|r| r.lease.lease_id != old).unwrap();
    assert_eq!(new.lease.provider, second.peer.to_string());
    assert_eq!(new.state, leasewire::wire::LeaseState::Active);
    let f = w.renter.rental(&old).unwrap().failover.unwrap();
    assert!(f.reason.contains("notice"), "{f:?}");
    // The second provider holds the renter's peer for the new lease.
    assert_eq!(second.tunnel.peer_stats("lwq0").await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_vanished_provider_is_failed_over_from() {
    let (w, old) = failover_world().await;
    let second = w.second.clone().unwrap();
    w.peers.down.store(true, Ordering::SeqCst);
    // Each renter tick asks the provider for the lease's status; all fail.
    for _ in 0..RenterConfig::default().drop_after_failures {
        w.renter.tick().await.unwrap();
    }
    w.renter.autopay_tick().await.unwrap();
    let rentals = w.renter.rentals().unwrap();
    assert_eq!(rentals.len(), 2);
    let new = rentals.iter().find(|r| r.lease.lease_id != old).unwrap();
    assert_eq!(new.lease.provider, second.peer.to_string());
    let f = w.renter.rental(&old).unwrap().failover.unwrap();
    assert!(f.reason.contains("requests in a row"), "{f:?}");
}

#[tokio::test]
async fn with_autopay_off_nothing_fails_over_and_status_says_why() {
    let (w, old) = failover_world().await;
    w.renter.set_autopay(&old, false).unwrap();
    let v = w.verifying.clone().unwrap();
    v.set_peer_dead(WgKey([2; 32]), true);
    w.renter.autopay_tick().await.unwrap();
    w.clock.advance(Duration::from_secs(301));
    w.renter.autopay_tick().await.unwrap();
    assert_eq!(w.renter.rentals().unwrap().len(), 1);
    let r = w.renter.rental(&old).unwrap();
    assert!(r.failover.is_none());
    let why = r.failover_status().unwrap();
    assert!(why.contains("AutoPay is off"), "{why}");
    assert!(failover_entries(&w).is_empty());
    // The tunnel answers again: the note goes away.
    v.set_peer_dead(WgKey([2; 32]), false);
    w.renter.autopay_tick().await.unwrap();
    assert!(w.renter.rental(&old).unwrap().failover_status().is_none());
}

#[tokio::test]
async fn failover_grace_off_never_fails_over() {
    let w = world::world_opts(world::Opts {
        verifying: true,
        second_provider: Some(leasewire::types::Terms {
            rate_sat_per_day: 200,
            ..ProviderConfig::default().terms
        }),
        renter_cfg: RenterConfig {
            failover_grace: None,
            ..RenterConfig::default()
        },
        ..world::Opts::default()
    })
    .await;
    w.renter.discover().await.unwrap();
    let r = w
        .renter
        .rent(RentArgs {
            offer_id: None,
            credit_sat: Some(1000),
            timeout: Duration::from_secs(10),
            ..RentArgs::default()
        })
        .await
        .unwrap();
    let v = w.verifying.clone().unwrap();
    v.set_peer_dead(r.lease.provider_wg_pubkey, true);
    w.renter.autopay_tick().await.unwrap();
    w.clock.advance(Duration::from_secs(3_600));
    w.renter.autopay_tick().await.unwrap();
    assert_eq!(w.renter.rentals().unwrap().len(), 1);
    assert!(w.renter.rental("").unwrap().health.dead_since.is_some());
    // Nor for a termination notice.
    let id = r.lease.lease_id.clone();
    w.provider
        .terminate(&id, Duration::from_secs(86_400))
        .await
        .unwrap();
    w.renter.tick().await.unwrap();
    w.renter.autopay_tick().await.unwrap();
    assert_eq!(w.renter.rentals().unwrap().len(), 1);
    assert!(w.renter.rental(&id).unwrap().failover.is_none());
}

#[tokio::test]
async fn a_paid_replacement_whose_lease_is_late_is_never_bought_twice() {
    let (mut w, old) = failover_world().await;
    let second = w.second.clone().unwrap();
    let second_peer = second.peer.to_string();
    let paid_to_second = |w: &world::World| {
        w.renter_audit
            .entries(0)
            .map(|e| e.unwrap())
            .filter(|e| e.kind == "payment_attempt")
            .filter(|e| {
                e.payload_as::<serde_json::Value>().unwrap()["provider"] == second_peer.as_str()
            })
            .count()
    };
    // The second provider sends its invoice, is paid, then cannot be reached for the lease.
    second.cut_after_invoice.store(true, Ordering::SeqCst);
    let notice = Duration::from_secs(2 * 86_400);
    w.provider.terminate(&old, notice).await.unwrap();
    w.renter.tick().await.unwrap();
    w.renter.autopay_tick().await.unwrap();
    assert_eq!(paid_to_second(&w), 1);
    let f = w.renter.rental(&old).unwrap().failover.unwrap();
    let new_id = f.new_lease.clone().expect("stored before paying");
    assert!(f.done_at.is_none());
    assert!(
        w.renter
            .rental(&old)
            .unwrap()
            .failover_status()
            .unwrap()
            .contains("waiting for the lease")
    );

    // Later passes, and a restarted renter, wait for that lease instead of buying another.
    second.cut_after_invoice.store(false, Ordering::SeqCst);
    w.renter.autopay_tick().await.unwrap();
    w.restart_renter();
    w.renter.autopay_tick().await.unwrap();
    assert_eq!(paid_to_second(&w), 1, "a second replacement was paid for");
    assert_eq!(w.renter.rentals().unwrap().len(), 1);

    // The provider answers again: recovery fetches the lease and the next pass links it.
    second.down.store(false, Ordering::SeqCst);
    w.renter.recover_payments().await.unwrap();
    w.renter.autopay_tick().await.unwrap();
    let new = w.renter.rental(&new_id).unwrap();
    assert_eq!(new.failed_over_from.as_deref(), Some(old.as_str()));
    assert!(
        w.renter
            .rental(&old)
            .unwrap()
            .failover
            .unwrap()
            .done_at
            .is_some()
    );
    assert_eq!(paid_to_second(&w), 1);
    assert_eq!(failover_entries(&w).len(), 2);
}

#[tokio::test]
async fn an_offer_id_superseded_by_one_selling_the_same_still_rents() {
    let w = world(Tamper::None).await;
    w.renter.discover().await.unwrap();
    let old_id = w.renter.offers(None)[0].offer_id.clone();
    let args = |offer_id: Option<String>| RentArgs {
        offer_id,
        credit_sat: Some(1000),
        timeout: Duration::from_secs(2),
        ..RentArgs::default()
    };
    // The first lease takes an address: the provider re-signs its offer (fewer free), with a
    // new id, and the renter learns it.
    w.renter.rent(args(None)).await.unwrap();
    w.provider.refresh_offer(false).await.unwrap();
    w.renter.discover().await.unwrap();
    let new_id = w.renter.offers(None)[0].offer_id.clone();
    assert_ne!(new_id, old_id, "availability changed: a new offer version");

    // The id the user copied before still buys, under the offer that replaced it.
    let second = w
        .renter
        .rent_confirmed(args(Some(old_id[..12].to_owned())), true)
        .await
        .unwrap();
    assert_eq!(second.lease.offer_id, new_id);
    // An id never seen names nothing.
    let e = w
        .renter
        .rent_confirmed(args(Some("00".repeat(16))), true)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
}
