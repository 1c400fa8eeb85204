//! The payer's side of money, end to end in one process (see `world`): spending limits refuse
//! before any money moves, a payment whose lease did not arrive is completed later without
//! paying again, AutoPay pays only for a verified tunnel, manual top-ups are counted once.

// Tests may unwrap: a panic is the failure report (clippy.toml allows it in #[test]
// functions only, not in an integration test's helpers).
#![allow(clippy::unwrap_used)]

mod world;

use std::sync::atomic::Ordering;
use std::time::Duration;

use leasewire::config::{ProviderConfig, RenterConfig};
use leasewire::market::MarketError;
use leasewire::market::limits::LimitsConfig;
use leasewire::market::renter::{AutopayConfig, RentArgs, Rental};
use leasewire::types::Clock;
use leasewire::wire::LeaseState;
use world::{Opts, Tamper, World, fast_terms, kinds, world_opts};

const START_MSAT: u64 = 1_000_000_000;

/// A renter config with `[renter.limits]` as written in a config file.
fn limits(toml_text: &str) -> RenterConfig {
    let text = format!("[renter.limits]\n{toml_text}");
    let cfg = leasewire::config::Config::from_toml(&text).expect("limits parse");
    assert_ne!(cfg.renter.limits, LimitsConfig::default());
    cfg.renter
}

async fn rent(w: &World, credit: u64) -> Result<Rental, MarketError> {
    w.renter.discover().await.unwrap();
    w.renter
        .rent(RentArgs {
            offer_id: None,
            credit_sat: Some(credit),
            timeout: Duration::from_millis(500),
            ..RentArgs::default()
        })
        .await
}

fn count(w: &World, kind: &str) -> usize {
    kinds(&w.renter_audit).iter().filter(|k| *k == kind).count()
}

/// Asserts `r` is a refusal by `limit`, audited, with no payment attempted for it and the
/// renter's balance at `balance_msat`.
fn assert_refused(
    w: &World,
    r: Result<Rental, MarketError>,
    limit: &str,
    attempts_before: usize,
    balance_msat: u64,
) {
    let err = r.expect_err("the payment must be refused");
    assert!(
        matches!(&err, MarketError::LimitExceeded(m) if m.contains(limit)),
        "{err}"
    );
    assert_eq!(count(w, "payment_refused"), 1, "one refusal audited");
    assert_eq!(
        count(w, "payment_attempt"),
        attempts_before,
        "no payment attempted after the refusal"
    );
    assert_eq!(
        w.sim.balance_msat("renter"),
        Some(balance_msat),
        "money moved"
    );
    let refusal = w
        .renter_audit
        .entries(0)
        .map(|e| e.unwrap())
        .find(|e| e.kind == "payment_refused")
        .unwrap();
    let payload: serde_json::Value = refusal.payload_as().unwrap();
    assert_eq!(
        payload["limit"], limit,
        "the audit names the limit: {payload}"
    );
    assert!(
        payload["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{payload}"
    );
}

#[tokio::test]
async fn max_transaction_size_refuses_before_paying() {
    let w = world_opts(Opts {
        renter_cfg: limits("maxTransactionSize = 1500\n"),
        ..Opts::default()
    })
    .await;
    // Activation fee 1000 + credit 1000 = 2000 sat > 1500.
    let r = rent(&w, 1000).await;
    assert_refused(&w, r, "maxTransactionSize", 0, START_MSAT);
    assert!(w.provider.leases().unwrap().is_empty());
}

/// Rents (2000 sat: fee 1000 + credit 1000) under `cfg`, then asserts a 200 sat top-up is
/// refused by `limit` before any money moves.
async fn top_up_refused_by(cfg: RenterConfig, limit: &str) {
    let w = world_opts(Opts {
        renter_cfg: cfg,
        ..Opts::default()
    })
    .await;
    rent(&w, 1000).await.unwrap();
    let r = w.renter.add_credit("", 200).await;
    assert_refused(&w, r, limit, 1, START_MSAT - 2_000_000);
}

#[tokio::test]
async fn min_time_between_payments_refuses_the_next_payment() {
    top_up_refused_by(
        limits("min_time_between_payments = \"1h\"\n"),
        "minTimeBetweenPayments",
    )
    .await;
}

#[tokio::test]
async fn max_transactions_per_period_refuses() {
    top_up_refused_by(
        limits("maxTransactionsPerPeriod = 1\nlimitsPeriod = \"1d\"\n"),
        "maxTransactionsPerPeriod",
    )
    .await;
}

#[tokio::test]
async fn max_amount_per_period_refuses_and_counts_fee_limits() {
    // 2000 sat rent + its 10 sat fee limit fits in 2100; 200 more does not.
    top_up_refused_by(
        limits("max_amount_per_period = 2100\nuse_rolling_limits_period = false\n"),
        "maxAmountPerPeriod",
    )
    .await;
}

#[tokio::test]
async fn provider_override_is_stricter_than_base() {
    // The world's provider key is fixed, so its PeerId can be named before it starts.
    let probe = world_opts(Opts::default()).await;
    let provider = probe.provider_peer.to_string();
    drop(probe);
    let cfg = limits(&format!(
        "maxTransactionsPerPeriod = 10\n[renter.limits.provider.\"{provider}\"]\n\
         maxTransactionsPerPeriod = 1\n"
    ));
    top_up_refused_by(cfg, "maxTransactionsPerPeriod").await;
}

#[tokio::test]
async fn a_lease_paid_while_the_provider_is_away_is_fetched_later_never_paid_twice() {
    let w = world_opts(Opts::default()).await;
    w.renter.discover().await.unwrap();
    // The provider answers the rent request with its invoice, then becomes unreachable: the
    // invoice is paid but the paymentResult cannot be delivered.
    w.peers.cut_after_invoice.store(true, Ordering::SeqCst);
    let err = w
        .renter
        .rent(RentArgs {
            offer_id: None,
            credit_sat: Some(1000),
            timeout: Duration::from_millis(500),
            ..RentArgs::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, MarketError::AwaitingLease(_)), "{err}");
    assert_eq!(w.sim.balance_msat("renter"), Some(START_MSAT - 2_000_000));
    assert!(w.renter.rentals().unwrap().is_empty());
    // Recovery while the provider is still away changes nothing and pays nothing.
    w.renter.recover_payments().await.unwrap();
    assert!(w.renter.rentals().unwrap().is_empty());
    // The provider's own watcher issues the lease from its node's settlement...
    w.provider.tick().await.unwrap();
    assert_eq!(w.provider.leases().unwrap().len(), 1);
    // ...and once it is reachable again the renter fetches it.
    w.peers.cut_after_invoice.store(false, Ordering::SeqCst);
    w.peers.down.store(false, Ordering::SeqCst);
    w.renter.recover_payments().await.unwrap();
    let rentals = w.renter.rentals().unwrap();
    assert_eq!(rentals.len(), 1, "the lease arrived");
    assert_eq!(rentals[0].state, LeaseState::Active);
    assert_eq!(rentals[0].stats.payments, 1);
    assert_eq!(count(&w, "payment_attempt"), 1);
    assert_eq!(w.sim.balance_msat("renter"), Some(START_MSAT - 2_000_000));
    // Later passes are no-ops.
    w.renter.recover_payments().await.unwrap();
    assert_eq!(w.renter.rentals().unwrap().len(), 1);
    assert_eq!(count(&w, "payment_attempt"), 1);
}

#[tokio::test]
async fn a_restarted_renter_completes_what_it_paid_for() {
    let mut w = world_opts(Opts::default()).await;
    rent(&w, 1000).await.unwrap();
    // A new Renter on the same database (a restarted daemon) keeps the rental and pays
    // nothing when it recovers.
    w.restart_renter();
    w.renter.recover_payments().await.unwrap();
    assert_eq!(w.renter.rentals().unwrap().len(), 1);
    assert_eq!(count(&w, "payment_attempt"), 1);
    assert_eq!(w.sim.balance_msat("renter"), Some(START_MSAT - 2_000_000));
}

/// Fast terms: 864 000 sat/day is 10 sat a second.
fn autopay_cfg() -> RenterConfig {
    RenterConfig {
        autopay: AutopayConfig {
            low_watermark: Duration::from_secs(60),
            high_watermark: Duration::from_secs(120),
            ..AutopayConfig::default()
        },
        ..RenterConfig::default()
    }
}

/// A world on fast terms whose renter rented 300 sat (30 s of service, below AutoPay's 60 s
/// low watermark); `verifying`: its tunnel backend can verify tunnels.
async fn autopay_world(verifying: bool) -> World {
    let w = world_opts(Opts {
        terms: fast_terms(),
        renter_cfg: autopay_cfg(),
        verifying,
        ..Opts::default()
    })
    .await;
    rent(&w, 300).await.unwrap();
    w
}

#[tokio::test]
async fn autopay_tops_up_a_verified_tunnel_to_the_high_watermark() {
    let w = autopay_world(true).await;
    assert!(w.renter.rental("").unwrap().autopay);
    w.renter.autopay_tick().await.unwrap();
    let after = w.renter.rental("").unwrap();
    assert_eq!(after.stats.autopay_topups, 1, "{:?}", after.stats);
    assert_eq!(after.stats.topups, 1);
    assert_eq!(after.stats.payments, 2);
    let left = after.lease.paid_until - w.clock.now_unix();
    assert!(
        (110..=120).contains(&left),
        "topped up to the high watermark and no further: {left}s"
    );
    assert!(after.stats.last_autopay.as_ref().is_some_and(|n| n.paid));
    // Above the low watermark now: nothing more is paid.
    w.renter.autopay_tick().await.unwrap();
    assert_eq!(w.renter.rental("").unwrap().stats.autopay_topups, 1);
    assert_eq!(count(&w, "payment_attempt"), 2);
}

#[tokio::test]
async fn autopay_never_pays_for_a_tunnel_it_cannot_verify() {
    let w = autopay_world(true).await;
    let v = w.verifying.clone().unwrap();
    v.healthy.store(false, Ordering::SeqCst);
    let balance = w.sim.balance_msat("renter");
    w.renter.autopay_tick().await.unwrap();
    w.renter.autopay_tick().await.unwrap();
    let r = w.renter.rental("").unwrap();
    assert_eq!(r.stats.refused_unverified, 2);
    assert_eq!(r.stats.autopay_topups, 0);
    let note = r.stats.last_autopay.unwrap();
    assert!(
        !note.paid && note.message.contains("not verified"),
        "{note:?}"
    );
    assert_eq!(w.sim.balance_msat("renter"), balance, "money moved");
    assert_eq!(count(&w, "payment_attempt"), 1, "only the activation");
    assert_eq!(count(&w, "autopay_refused"), 2);
    assert_eq!(v.checks.load(Ordering::SeqCst), 2);
    // The tunnel answers again: AutoPay resumes.
    v.healthy.store(true, Ordering::SeqCst);
    w.renter.autopay_tick().await.unwrap();
    assert_eq!(w.renter.rental("").unwrap().stats.autopay_topups, 1);
    // Every check is in the renter's history with the provider, which ranking uses.
    let history = w.renter.provider_history().unwrap();
    let (_, h) = history
        .iter()
        .find(|(p, _)| *p == w.provider_peer.to_string())
        .unwrap();
    assert_eq!((h.checks_failed, h.checks_ok), (2, 1));
    assert_eq!((h.leases_delivered, h.topups_delivered), (1, 1));
}

#[tokio::test]
async fn autopay_refuses_with_a_backend_that_cannot_verify() {
    let w = autopay_world(false).await;
    w.renter.autopay_tick().await.unwrap();
    let r = w.renter.rental("").unwrap();
    assert_eq!(r.stats.refused_unverified, 1);
    assert!(
        r.stats
            .last_autopay
            .is_some_and(|n| n.message.contains("cannot verify")),
    );
    assert_eq!(count(&w, "payment_attempt"), 1);
}

#[tokio::test]
async fn autopay_off_for_a_lease_pays_nothing() {
    let w = autopay_world(true).await;
    w.renter.set_autopay("", false).unwrap();
    w.renter.autopay_tick().await.unwrap();
    assert_eq!(count(&w, "payment_attempt"), 1);
}

#[tokio::test]
async fn a_manual_top_up_paid_elsewhere_is_credited_once_and_seen_by_autopay() {
    let w = world_opts(Opts {
        tamper: Tamper::None,
        terms: ProviderConfig::default().terms,
        ..Opts::default()
    })
    .await;
    rent(&w, 1000).await.unwrap();
    let before = w.renter.rental("").unwrap();
    let inv = w.renter.manual_invoice("", 500).await.unwrap();
    assert!(inv.bolt11.starts_with("lnbcrt5u"), "{}", inv.bolt11);
    // Not paid yet: waiting gives up with a clear message and changes nothing.
    let e = w
        .renter
        .await_manual(&inv.payment_hash, Duration::from_millis(1200))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not paid"), "{e}");
    // Paid from another wallet.
    use leasewire::lightning::{LightningNode, PayRequest};
    w.mallory_ln
        .pay_invoice(PayRequest {
            bolt11: inv.bolt11.clone(),
            fee_limit_msat: 10_000,
            timeout_secs: 30,
        })
        .await
        .unwrap();
    let r = w
        .renter
        .await_manual(&inv.payment_hash, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.lease.credit_sat, before.lease.credit_sat + 500);
    assert_eq!(r.stats.topups, 1);
    assert_eq!(
        r.stats.payments, 1,
        "the renter's node paid only the activation"
    );
    assert_eq!(
        w.sim.balance_msat("renter"),
        Some(START_MSAT - 2_000_000),
        "the renter's own node paid nothing for the manual top-up"
    );
    // The renter never pays that hash itself, and recovery does not count it twice.
    w.renter.recover_payments().await.unwrap();
    assert_eq!(w.renter.rental("").unwrap().stats.topups, 1);
    assert_eq!(count(&w, "payment_attempt"), 1);
    assert!(kinds(&w.renter_audit).iter().any(|k| k == "manual_invoice"));

    // A second one paid after the command gave up: the provider's watcher credits it, and the
    // renter's background pass sees it in the provider's signed lease.
    let inv2 = w.renter.manual_invoice("", 300).await.unwrap();
    w.mallory_ln
        .pay_invoice(PayRequest {
            bolt11: inv2.bolt11.clone(),
            fee_limit_msat: 10_000,
            timeout_secs: 30,
        })
        .await
        .unwrap();
    w.renter.recover_payments().await.unwrap();
    assert_eq!(
        w.renter.rental("").unwrap().stats.topups,
        1,
        "not credited by the provider yet"
    );
    w.provider.tick().await.unwrap();
    w.renter.recover_payments().await.unwrap();
    let r = w.renter.rental("").unwrap();
    assert_eq!(r.stats.topups, 2);
    assert_eq!(r.lease.credit_sat, before.lease.credit_sat + 800);
    assert_eq!(r.paid_sat, before.paid_sat + 800);
    assert_eq!(count(&w, "payment_attempt"), 1);
}

#[tokio::test]
async fn a_renter_stopped_mid_payment_tracks_it_after_restart_and_never_pays_twice() {
    use leasewire_simnet::lndsim::ledger::FaultKind;
    let mut w = world_opts(Opts::default()).await;
    w.sim
        .add_fault("renter", FaultKind::Delay(Duration::from_secs(2)), 1)
        .unwrap();
    w.renter.discover().await.unwrap();
    // The daemon "dies" while its payment is in flight: the rent future is dropped, leaving
    // the record `attempting`. The payment goes on at the node.
    let cut = tokio::time::timeout(
        Duration::from_millis(700),
        w.renter.rent(RentArgs {
            offer_id: None,
            credit_sat: Some(1000),
            timeout: Duration::from_millis(500),
            ..RentArgs::default()
        }),
    )
    .await;
    assert!(cut.is_err(), "the payment should still be in flight");
    assert_eq!(count(&w, "payment_attempt"), 1);
    assert_eq!(count(&w, "payment_succeeded"), 0);

    // Restarted while the node still has it in flight: recovery leaves it alone.
    w.restart_renter();
    w.renter.recover_payments().await.unwrap();
    assert!(w.renter.rentals().unwrap().is_empty());
    assert_eq!(count(&w, "payment_failed"), 0, "in flight is not failed");

    // Once the node has finished it, recovery learns the outcome and fetches the lease.
    // Waits for lnd-sim (a real gRPC server in this process) to finish the payment it holds
    // for two seconds of real time: this is not market time.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    w.renter.recover_payments().await.unwrap();
    let rentals = w.renter.rentals().unwrap();
    assert_eq!(
        rentals.len(),
        1,
        "the lease bought before the crash arrived"
    );
    assert_eq!(rentals[0].state, LeaseState::Active);
    assert_eq!(count(&w, "payment_attempt"), 1, "never paid again");
    assert_eq!(count(&w, "payment_succeeded"), 1);
    assert_eq!(w.sim.balance_msat("renter"), Some(START_MSAT - 2_000_000));
    assert_eq!(w.provider.leases().unwrap().len(), 1);
}

#[tokio::test]
async fn max_routing_fee_caps_the_fee_limit_and_nothing_moves_when_routes_cost_more() {
    use leasewire_simnet::lndsim::ledger::RoutingFee;
    let w = world_opts(Opts {
        renter_cfg: limits("maxRoutingFee = 1\n"),
        ..Opts::default()
    })
    .await;
    // Routes cost 5 sat; the renter's own limit would allow 10, the spending limit only 1.
    w.sim.set_routing_fee(RoutingFee {
        base_msat: 5_000,
        ppm: 0,
    });
    let err = rent(&w, 1000).await.unwrap_err();
    assert!(
        matches!(&err, MarketError::Lightning(e) if e.to_string().contains("NO_ROUTE")),
        "{err}"
    );
    assert_eq!(
        w.sim.balance_msat("renter"),
        Some(START_MSAT),
        "money moved"
    );
    let attempt: serde_json::Value = w
        .renter_audit
        .entries(0)
        .map(|e| e.unwrap())
        .find(|e| e.kind == "payment_attempt")
        .unwrap()
        .payload_as()
        .unwrap();
    assert_eq!(attempt["fee_limit_msat"], 1_000, "{attempt}");
    assert_eq!(count(&w, "payment_failed"), 1);
    assert!(w.provider.leases().unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_payment_is_recorded_with_its_reason_and_its_hash_never_paid() {
    use leasewire_simnet::lndsim::ledger::FaultKind;
    let w = world_opts(Opts::default()).await;
    w.sim.add_fault("renter", FaultKind::NoRoute, 1).unwrap();
    let err = rent(&w, 1000).await.unwrap_err();
    assert!(err.to_string().contains("FAILURE_REASON_NO_ROUTE"), "{err}");
    assert_eq!(count(&w, "payment_failed"), 1);
    assert_eq!(w.sim.balance_msat("renter"), Some(START_MSAT));
    // Recovery does not retry a failed payment.
    w.renter.recover_payments().await.unwrap();
    assert_eq!(count(&w, "payment_attempt"), 1);
    // A fresh rent gets a fresh invoice and succeeds.
    rent(&w, 1000).await.unwrap();
    assert_eq!(count(&w, "payment_attempt"), 2);
    assert_eq!(w.sim.balance_msat("renter"), Some(START_MSAT - 2_000_000));
}

#[tokio::test]
async fn a_rent_waiting_for_offers_holds_up_no_top_up() {
    let w = world_opts(Opts::default()).await;
    let first = rent(&w, 1000).await.unwrap();
    // A second rent waits (up to a minute) for an offer that never shows up...
    let waiting = tokio::spawn({
        let renter = w.renter.clone();
        async move {
            renter
                .rent(RentArgs {
                    offer_id: Some("no-such-offer".into()),
                    credit_sat: Some(1000),
                    timeout: Duration::from_secs(60),
                    ..RentArgs::default()
                })
                .await
        }
    });
    // ...while a top-up of the first lease and an AutoPay pass go through meanwhile.
    let topped = w
        .renter
        .add_credit(&first.lease.lease_id, 500)
        .await
        .unwrap();
    assert_eq!(topped.lease.credit_sat, first.lease.credit_sat + 500);
    w.renter.autopay_tick().await.unwrap();
    assert!(
        !waiting.is_finished(),
        "the rent is still waiting for offers"
    );
    waiting.abort();
    assert_eq!(count(&w, "payment_attempt"), 2);
}
