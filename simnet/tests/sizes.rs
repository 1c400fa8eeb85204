//! Families and sizes end to end in one process (see `world`): an IPv4-only provider and an
//! IPv6-only provider, rented from with the matching request; a /30 whose four addresses all
//! end up on the renter's interface; sizes not offered and filters refused with reasons.

// Tests may unwrap: a panic is the failure report (clippy.toml allows it in #[test]
// functions only, not in an integration test's helpers).
#![allow(clippy::unwrap_used)]

mod world;

use std::time::Duration;

use leasewire::market::MarketError;
use leasewire::market::renter::{Filters, RentArgs, Sizes};
use leasewire::market::sizes::SizePrice;
use leasewire::tunnel::Tunnel;
use leasewire::types::{Terms, WgKey};
use leasewire::wire::{ErrorCode, Message, RentRequest};
use world::{Opts, World, world_opts};

fn size(prefix_len: u8, rate_sat_per_day: u64) -> SizePrice {
    SizePrice {
        prefix_len,
        rate_sat_per_day,
    }
}

/// Provider 1 leases IPv4 only (/32 at +0, /30 at +40 sat/day on a base of 100); provider 2
/// leases IPv6 only (/64 at +5 on a base of 20).
async fn two_single_family_providers() -> World {
    let second_terms = Terms {
        rate_sat_per_day: 20,
        ..leasewire::config::ProviderConfig::default().terms
    };
    let w = world_opts(Opts {
        sizes: Some((vec![size(32, 0), size(30, 40)], Vec::new())),
        second_provider: Some(second_terms),
        second_sizes: Some((Vec::new(), vec![size(64, 5)])),
        ..Opts::default()
    })
    .await;
    assert_eq!(w.renter.discover().await.unwrap(), 2);
    w
}

fn args(sizes: Sizes) -> RentArgs {
    RentArgs {
        credit_sat: Some(3000),
        timeout: Duration::from_millis(100),
        sizes: Some(sizes),
        ..RentArgs::default()
    }
}

#[tokio::test]
async fn single_family_providers_serve_matching_requests_and_a_30_brings_four_addresses() {
    let w = two_single_family_providers().await;
    let second = w.second.clone().unwrap();

    // The offers say what they lease, with prices.
    let o1 = w.provider.offer().verify().unwrap();
    assert!(o1.ipv6.is_empty());
    let v4: Vec<(u8, u32, u64)> = o1
        .ipv4
        .iter()
        .map(|a| (a.prefix_len, a.available, a.rate_sat_per_day))
        .collect();
    assert_eq!(v4, [(32, 8, 0), (30, 2, 40)]);
    let o2 = second.provider.offer().verify().unwrap();
    assert!(o2.ipv4.is_empty());
    assert_eq!(o2.ipv6[0].rate_sat_per_day, 5);

    // IPv4 /30 only: only provider 1 can serve it.
    let r4 = w
        .renter
        .rent(args(Sizes {
            ipv4: Some(30),
            ipv6: None,
        }))
        .await
        .unwrap();
    assert_eq!(r4.lease.provider, w.provider_peer.to_string());
    assert_eq!(r4.lease.ipv4.as_deref(), Some("198.51.100.0/30"));
    assert_eq!(r4.lease.ipv6, None);
    assert_eq!(r4.lease.terms.rate_sat_per_day, 140, "base 100 + /30 at 40");
    assert_eq!(r4.paid_sat, 1000 + 3000);
    // 3000 sat at 140 sat/day.
    assert_eq!(
        r4.lease.paid_until - r4.lease.activated_at,
        3000 * 86_400 / 140
    );
    // The provider routes the whole /30 to the lease's peer ...
    let stats = w.provider_tunnel.peer_stats("lwp0").await.unwrap();
    let allowed: Vec<String> = stats[0].allowed_ips.iter().map(|n| n.to_string()).collect();
    assert_eq!(allowed, ["198.51.100.0/30"]);
    // ... and all four addresses are on the renter's interface: in the backend's state and
    // wg-quick file, and in the renter's own wg-quick file.
    let conf = std::fs::read_to_string(w.renter_tunnel.conf_path(&r4.iface)).unwrap();
    let state = std::fs::read_to_string(w.renter_tunnel.state_path(&r4.iface)).unwrap();
    let (_, own) = w.renter.conf(&r4.lease.lease_id).unwrap();
    for a in 0..4 {
        let addr = format!("198.51.100.{a}/32");
        assert!(conf.contains(&format!("Address = {addr}")), "{conf}");
        assert!(state.contains(&addr), "{state}");
        assert!(own.contains(&addr), "{own}");
    }
    assert!(!conf.contains("198.51.100.4"), "{conf}");
    // Availability follows: one /30 left, four /32s.
    let o1 = w.provider.offer().verify().unwrap();
    assert_eq!((o1.ipv4[0].available, o1.ipv4[1].available), (4, 1));

    // IPv6 /64 only: only provider 2.
    let r6 = w
        .renter
        .rent(args(Sizes {
            ipv4: None,
            ipv6: Some(64),
        }))
        .await
        .unwrap();
    assert_eq!(r6.lease.provider, second.peer.to_string());
    assert_eq!(r6.lease.ipv4, None);
    assert_eq!(r6.lease.ipv6.as_deref(), Some("2001:db8:200::/64"));
    assert_eq!(r6.lease.terms.rate_sat_per_day, 25, "base 20 + /64 at 5");
    let (_, own6) = w.renter.conf(&r6.lease.lease_id).unwrap();
    assert!(own6.contains("2001:db8:200::1/128"), "{own6}");
    assert!(!own6.contains("198.51.100"), "{own6}");
    assert_eq!(
        second.provider.leases().unwrap()[0]
            .lease
            .terms
            .rate_sat_per_day,
        25,
        "both sides hold the effective rate"
    );
}

#[tokio::test]
async fn requests_no_offer_serves_are_refused_with_reasons() {
    let w = two_single_family_providers().await;
    // Both families at once: neither provider serves it, and the error says why.
    let e = w
        .renter
        .rent(args(Sizes {
            ipv4: Some(32),
            ipv6: Some(64),
        }))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, MarketError::NoOffer(_)), "{msg}");
    assert!(
        msg.contains("2 offers: 1 without IPv4 /32, 1 without IPv6 /64"),
        "{msg}"
    );
    // A price limit below the /30's effective rate (140) leaves provider 1 out.
    let e = w
        .renter
        .rent(RentArgs {
            filters: Some(Filters {
                max_price_sat_per_day: Some(139),
                ..Filters::default()
            }),
            ..args(Sizes {
                ipv4: Some(30),
                ipv6: None,
            })
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("2 offers: 1 without IPv4 /30, 1 above max price"),
        "{e}"
    );
    // Denying the IPv6 provider leaves nothing for an IPv6 request.
    let e = w
        .renter
        .rent(RentArgs {
            filters: Some(Filters {
                deny: vec![w.second.as_ref().unwrap().peer.to_string()],
                ..Filters::default()
            }),
            ..args(Sizes {
                ipv4: None,
                ipv6: Some(64),
            })
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 denied"), "{e}");
    // Nothing was paid.
    assert!(w.renter.rentals().unwrap().is_empty());
    assert_eq!(w.sim.balance_msat("renter"), Some(1_000_000_000));

    // A provider asked directly for a size it does not list refuses, naming what it leases.
    let offer_id = w.provider.offer().id();
    let ask = |v4: Option<u8>, v6: Option<u8>, id: &str| {
        Message::RentRequest(RentRequest {
            request_id: id.repeat(16),
            offer_id: offer_id.clone(),
            credit_sat: 1000,
            ipv4_prefix_len: v4,
            ipv6_prefix_len: v6,
            wg_pubkey: WgKey([9; 32]),
        })
    };
    for (v4, v6) in [(Some(29), None), (Some(32), Some(64)), (None, Some(64))] {
        match w.provider.handle(w.renter_peer, ask(v4, v6, "01")).await {
            Message::Error(e) => {
                assert_eq!(e.code, ErrorCode::BadRequest);
                assert!(
                    e.message
                        .contains("this provider leases IPv4 /32 /30, IPv6 none"),
                    "{}",
                    e.message
                );
            }
            other => panic!("a size not offered was answered with {other:?}"),
        }
    }
    match w
        .provider
        .handle(w.renter_peer, ask(None, None, "02"))
        .await
    {
        Message::Error(e) => assert_eq!(e.code, ErrorCode::BadRequest),
        other => panic!("a request for nothing was answered with {other:?}"),
    }
    assert!(w.provider.leases().unwrap().is_empty());
    let o1 = w.provider.offer().verify().unwrap();
    assert_eq!(
        o1.ipv4[0].available, 8,
        "nothing reserved for refused requests"
    );
}

#[tokio::test]
async fn autopay_tops_up_at_the_effective_rate_of_the_lease_sizes() {
    // 10 sat/s base, +5 sat/s for the /32: the lease's terms differ from the offer's base
    // terms, and AutoPay still recognises them as the offer's.
    let w = world_opts(Opts {
        terms: world::fast_terms(),
        sizes: Some((vec![size(32, 432_000)], vec![size(64, 0)])),
        renter_cfg: leasewire::config::RenterConfig {
            autopay: leasewire::market::renter::AutopayConfig {
                low_watermark: Duration::from_secs(60),
                high_watermark: Duration::from_secs(120),
                ..Default::default()
            },
            ..Default::default()
        },
        verifying: true,
        ..Opts::default()
    })
    .await;
    w.renter.discover().await.unwrap();
    let r = w
        .renter
        .rent(RentArgs {
            credit_sat: Some(300),
            timeout: Duration::from_millis(500),
            ..RentArgs::default()
        })
        .await
        .unwrap();
    assert_eq!(r.lease.terms.rate_sat_per_day, 1_296_000);
    assert_eq!(
        r.lease.paid_until - r.lease.activated_at,
        20,
        "300 sat at 15 sat/s"
    );
    w.renter.autopay_tick().await.unwrap();
    let after = w.renter.rental("").unwrap();
    assert_eq!(after.stats.autopay_topups, 1, "{:?}", after.stats);
    let left = after.lease.paid_until - leasewire::types::Clock::now_unix(&*w.clock);
    assert!(
        (110..=120).contains(&left),
        "topped up to the high watermark: {left}s"
    );
    // What the provider received: fee + credit at the effective rate.
    let credited = after.lease.credit_sat;
    assert_eq!(after.paid_sat, 100 + credited);
}

#[tokio::test]
async fn failover_replaces_a_lease_with_the_same_families_and_sizes() {
    // Provider 1: IPv4 only, a /30 at 100 + 40. Provider 2: both families, a /30 at 200 + 10.
    let w = world_opts(Opts {
        sizes: Some((vec![size(32, 0), size(30, 40)], Vec::new())),
        second_provider: Some(Terms {
            rate_sat_per_day: 200,
            ..leasewire::config::ProviderConfig::default().terms
        }),
        second_sizes: Some((vec![size(32, 0), size(30, 10)], vec![size(64, 0)])),
        verifying: true,
        ..Opts::default()
    })
    .await;
    w.renter.discover().await.unwrap();
    let old = w
        .renter
        .rent(args(Sizes {
            ipv4: Some(30),
            ipv6: None,
        }))
        .await
        .unwrap();
    assert_eq!(
        old.lease.provider,
        w.provider_peer.to_string(),
        "the cheaper /30"
    );
    // Provider 1 vanishes: the renter's status polls fail until it is dropped.
    w.peers
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..leasewire::config::RenterConfig::default().drop_after_failures {
        w.renter.tick().await.unwrap();
    }
    w.renter.autopay_tick().await.unwrap();
    let rentals = w.renter.rentals().unwrap();
    let new = rentals
        .iter()
        .find(|r| r.lease.lease_id != old.lease.lease_id)
        .expect("a replacement");
    let second = w.second.clone().unwrap();
    assert_eq!(new.lease.provider, second.peer.to_string());
    assert_eq!(new.lease.ipv4.as_deref(), Some("203.0.113.0/30"));
    assert_eq!(new.lease.ipv6, None, "no IPv6: the old lease had none");
    assert_eq!(new.lease.terms.rate_sat_per_day, 210);
}
