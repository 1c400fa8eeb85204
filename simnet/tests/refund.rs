//! Refunds of unused credit end to end in one process (see `world`): a renter that releases
//! a lease, or whose provider terminates it, gets the unused credit back through lnd-sim when
//! the terms promise it, and sees it in its status.

// Tests may unwrap: a panic is the failure report (clippy.toml allows it in #[test]
// functions only, not in an integration test's helpers).
#![allow(clippy::unwrap_used)]

mod world;

use std::time::Duration;

use leasewire::config::ProviderConfig;
use leasewire::lightning::LightningNode;
use leasewire::types::Terms;
use leasewire::wire::{LeaseState, RefundState};
use world::{Tamper, World, kinds, world_with};

fn refunding() -> Terms {
    Terms {
        refund_unused: true,
        reservation_secs: 0,
        ..ProviderConfig::default().terms
    }
}

fn sat(w: &World, name: &str) -> u64 {
    w.sim.balance_msat(name).unwrap() / 1000
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

#[tokio::test]
async fn a_released_lease_is_refunded_its_unused_credit_and_status_shows_it() {
    let w = world_with(Tamper::None, refunding()).await;
    // lnd-sim's node macaroons can do everything: the check says they can pay.
    assert!(w.renter_ln.can_pay().await.unwrap());
    // 1000 sat of credit: 10 days at 100 sat/day.
    let rental = w.rent_with_credit(1000).await;
    let id = rental.lease.lease_id.clone();
    assert!(
        rental.lease.terms.refund_unused,
        "the promise is in the signed lease"
    );
    // Half an hour used: 997 sat left (rounded down). (Kept short: lnd-sim stamps the renter's invoices
    // with the wall clock, which the test clock must not leave far behind.)
    w.clock.advance(Duration::from_secs(1_800));

    // The renter sees what it should get back before releasing.
    let (_, forfeit) = w.renter.release_preview(&id).unwrap();
    assert_eq!(forfeit, 997);
    let released = w.renter.release(&id).await.unwrap();
    assert_eq!(released.state, LeaseState::Released);
    assert!(!released.end_unsent);
    let before = sat(&w, "renter");

    // The next tick asks for it with an invoice of the renter's own node; the provider pays.
    w.renter.tick().await.unwrap();
    let r = w.renter.rental(&id).unwrap();
    assert_eq!(r.refund.refund_sat, 997);
    assert!(r.refund.received, "{:?}", r.refund);
    assert!(matches!(r.refund.state, RefundState::Paid { .. }));
    assert_eq!(r.refund.describe(), "received");
    assert_eq!(sat(&w, "renter"), before + 997, "exactly the unused credit");
    assert_eq!(count(&kinds(&w.renter_audit), "refund_received"), 1);
    assert_eq!(count(&kinds(&w.provider_audit), "refund_paid"), 1);
    let hash = r.refund.refund_hash.clone().unwrap();
    let p = &w.provider.leases().unwrap()[0];
    assert_eq!(
        p.refund.as_ref().unwrap().state,
        RefundState::Paid { payment_hash: hash }
    );

    // Later ticks change nothing and pay nothing again.
    w.renter.tick().await.unwrap();
    w.provider.tick().await.unwrap();
    assert_eq!(sat(&w, "renter"), before + 997);
    assert_eq!(count(&kinds(&w.renter_audit), "refund_received"), 1);
    assert_eq!(count(&kinds(&w.provider_audit), "refund_paid"), 1);
}

#[tokio::test]
async fn a_terminated_lease_is_refunded_after_the_notice_ends() {
    let w = world_with(Tamper::None, refunding()).await;
    let id = w.rent_with_credit(1000).await.lease.lease_id;
    // A short notice keeps the test clock close to lnd-sim's wall clock, which stamps the
    // renter's invoices.
    w.provider
        .terminate(&id, Duration::from_secs(600))
        .await
        .unwrap();
    w.renter.tick().await.unwrap();
    assert!(w.renter.rental(&id).unwrap().terminates_at().is_some());
    let before = sat(&w, "renter");
    // Nothing is due while the notice runs.
    assert_eq!(w.renter.rental(&id).unwrap().refund.refund_sat, 0);

    w.clock.advance(Duration::from_secs(600));
    w.provider.tick().await.unwrap();
    w.renter.tick().await.unwrap();
    let r = w.renter.rental(&id).unwrap();
    assert_eq!(r.state, LeaseState::Released);
    // What is left of 10 days of credit at 100 sat/day after 600 s, rounded down.
    let due = (10 * 86_400 - 600) * 100 / 86_400;
    assert_eq!(due, 999);
    assert_eq!(r.refund.refund_sat, due);
    assert!(r.refund.received, "{:?}", r.refund);
    assert_eq!(sat(&w, "renter"), before + due);
    assert_eq!(count(&kinds(&w.provider_audit), "refund_paid"), 1);
}

#[tokio::test]
async fn without_the_promise_a_released_lease_asks_for_nothing() {
    let w = world_with(Tamper::None, ProviderConfig::default().terms).await;
    let id = w.rent_with_credit(1000).await.lease.lease_id;
    w.renter.release(&id).await.unwrap();
    let before = sat(&w, "renter");
    w.renter.tick().await.unwrap();
    let r = w.renter.rental(&id).unwrap();
    assert_eq!(r.refund.refund_sat, 0);
    assert!(!r.refund.received);
    assert_eq!(sat(&w, "renter"), before);
    assert_eq!(count(&kinds(&w.provider_audit), "refund_paid"), 0);
}
