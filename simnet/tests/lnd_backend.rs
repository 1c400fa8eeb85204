//! End-to-end: leasewire's real LND client (`LndClient`, TLS pinning, macaroon header) against
//! lnd-sim served in-process over real TLS on 127.0.0.1.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::hashes::{Hash as _, sha256};
use futures::StreamExt as _;
use leasewire::lightning::invoice::{InvoiceExpectation, check_invoice};
use leasewire::lightning::lnd::{LndClient, LndConfig};
use leasewire::lightning::proto::{lnrpc, routerrpc};
use leasewire::lightning::{
    InvoiceRequest, InvoiceState, LightningError, LightningNode, PayRequest,
};
use leasewire_simnet::lndsim::{SimHandle, SimManifest, SimServer};

const TERMS: [u8; 32] = [42; 32];

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("valid address")
}

async fn start(dir: &std::path::Path) -> SimHandle {
    SimServer::start(
        dir,
        loopback(),
        &[
            ("alice".to_owned(), 1_000_000),
            ("bob".to_owned(), 10_000),
            ("carol".to_owned(), 1),
        ],
    )
    .await
    .expect("lnd-sim starts")
}

async fn client(sim: &SimHandle, name: &str) -> LndClient {
    LndClient::connect(&sim.lnd_config(name).expect("node exists"))
        .await
        .expect("client connects")
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn invoice_req(amount_msat: u64) -> InvoiceRequest {
    InvoiceRequest {
        amount_msat,
        description_hash: TERMS,
        expiry_secs: 600,
    }
}

fn pay_req(bolt11: &str) -> PayRequest {
    PayRequest {
        bolt11: bolt11.to_owned(),
        fee_limit_msat: 10_000,
        timeout_secs: 30,
    }
}

#[tokio::test]
async fn pay_flow_over_real_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start(dir.path()).await;
    let alice = client(&sim, "alice").await;
    let bob = client(&sim, "bob").await;
    let carol = client(&sim, "carol").await;

    // Identity and network.
    let info = alice.get_info().await.expect("get_info");
    assert_eq!(info.pubkey, sim.pubkey("alice").expect("alice"));
    assert_eq!(info.pubkey.len(), 66);
    assert_eq!(info.alias, "alice");
    assert_eq!(info.network, "regtest");
    let bob_info = bob.get_info().await.expect("get_info");
    assert_ne!(bob_info.pubkey, info.pubkey);

    // Bob invoices 250 sat; the payer-side checks accept it.
    let created = bob
        .add_invoice(invoice_req(250_000))
        .await
        .expect("invoice");
    assert_eq!(created.add_index, 1);
    let checked = check_invoice(
        &created.bolt11,
        &InvoiceExpectation {
            network: info.network.clone(),
            amount_msat: 250_000,
            payee_pubkey: bob_info.pubkey.clone(),
            description_hash: TERMS,
            min_expiry_left_secs: 300,
            now_unix: now_unix(),
        },
    )
    .expect("invoice passes payer checks");
    assert_eq!(checked.payment_hash, created.payment_hash);

    let open = bob
        .lookup_invoice(created.payment_hash)
        .await
        .expect("lookup");
    assert_eq!(open.state, InvoiceState::Open);
    assert_eq!(open.amount_paid_msat, 0);
    assert_eq!(open.settled_at, None);

    // Alice pays; the preimage proves it.
    let outcome = alice
        .pay_invoice(pay_req(&created.bolt11))
        .await
        .expect("payment succeeds");
    assert_eq!(outcome.payment_hash, created.payment_hash);
    assert_eq!(
        sha256::Hash::hash(&outcome.preimage).to_byte_array(),
        created.payment_hash
    );
    assert_eq!(outcome.amount_msat, 250_000);
    assert_eq!(outcome.fee_msat, 0);

    let settled = bob
        .lookup_invoice(created.payment_hash)
        .await
        .expect("lookup");
    assert_eq!(settled.state, InvoiceState::Settled);
    assert_eq!(settled.amount_paid_msat, 250_000);
    assert!(settled.settled_at.is_some_and(|t| t + 60 >= now_unix()));
    assert_eq!(sim.balance_msat("alice"), Some(1_000_000_000 - 250_000));
    assert_eq!(sim.balance_msat("bob"), Some(10_000_000 + 250_000));

    // Only the payee's node knows the invoice.
    let err = alice
        .lookup_invoice(created.payment_hash)
        .await
        .expect_err("not alice's invoice");
    assert!(err.is_rpc_code(tonic::Code::NotFound), "{err}");

    // Paying twice is refused by the node, and moves nothing.
    let err = alice
        .pay_invoice(pay_req(&created.bolt11))
        .await
        .expect_err("second payment refused");
    assert!(err.is_rpc_code(tonic::Code::AlreadyExists), "{err}");
    assert!(err.to_string().contains("already paid"), "{err}");
    assert_eq!(sim.balance_msat("alice"), Some(1_000_000_000 - 250_000));

    // Carol has 1 sat: the payment fails with LND's reason and moves nothing.
    let big = bob.add_invoice(invoice_req(5_000)).await.expect("invoice");
    assert_eq!(big.add_index, 2);
    let err = carol
        .pay_invoice(pay_req(&big.bolt11))
        .await
        .expect_err("insufficient balance");
    match err {
        LightningError::PaymentFailed { reason } => {
            assert_eq!(reason, "FAILURE_REASON_INSUFFICIENT_BALANCE")
        }
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(sim.balance_msat("carol"), Some(1_000));
    assert_eq!(sim.balance_msat("bob"), Some(10_000_000 + 250_000));
    let still_open = bob.lookup_invoice(big.payment_hash).await.expect("lookup");
    assert_eq!(still_open.state, InvoiceState::Open);

    // Self-payment is refused (no circular routes).
    let own = alice
        .add_invoice(invoice_req(1_000))
        .await
        .expect("invoice");
    let err = alice
        .pay_invoice(pay_req(&own.bolt11))
        .await
        .expect_err("self-payment refused");
    assert!(
        matches!(&err, LightningError::PaymentFailed { reason } if reason == "FAILURE_REASON_NO_ROUTE"),
        "{err}"
    );

    // Invalid requests are rejected before reaching the node.
    assert!(matches!(
        bob.add_invoice(invoice_req(0)).await,
        Err(LightningError::InvalidRequest(_))
    ));

    sim.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn wrong_macaroon_is_unauthenticated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start(dir.path()).await;
    let bad = dir.path().join("bad.macaroon");
    std::fs::write(&bad, [0xAB; 32]).expect("write");
    let cfg = LndConfig {
        macaroon_path: bad,
        ..sim.lnd_config("alice").expect("alice")
    };
    let client = LndClient::connect(&cfg).await.expect("TLS still connects");
    let err = client.get_info().await.expect_err("refused");
    assert!(err.is_rpc_code(tonic::Code::Unauthenticated), "{err}");
    let err = client
        .add_invoice(invoice_req(1_000))
        .await
        .expect_err("refused");
    assert!(err.is_rpc_code(tonic::Code::Unauthenticated), "{err}");
}

#[tokio::test]
async fn client_pinned_to_other_cert_cannot_connect() {
    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    let sim_a = start(dir_a.path()).await;
    let sim_b = start(dir_b.path()).await;
    let cfg = LndConfig {
        tls_cert_path: sim_b.tls_cert_path().to_owned(),
        ..sim_a.lnd_config("alice").expect("alice")
    };
    let err = LndClient::connect(&cfg).await.expect_err("pin mismatch");
    assert!(matches!(err, LightningError::Connect { .. }), "{err}");
    // The right pin works against the same server.
    client(&sim_a, "alice").await;
}

#[tokio::test]
async fn manifest_streams_and_payment_listing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start(dir.path()).await;

    // The manifest round-trips and is enough to connect.
    let path = dir.path().join("lnd-sim.json");
    sim.write_manifest(&path).expect("manifest written");
    let manifest = SimManifest::load(&path).expect("manifest parses");
    assert_eq!(&manifest, sim.manifest());
    assert_eq!(manifest.nodes.len(), 3);
    assert_eq!(
        std::fs::read(&manifest.nodes[0].macaroon_path)
            .expect("macaroon")
            .len(),
        32
    );
    let alice = LndClient::connect(&manifest.lnd_config("alice").expect("alice"))
        .await
        .expect("connect from manifest");
    let bob = client(&sim, "bob").await;

    // Bob subscribes, then sees his invoice added and settled.
    let mut events = bob
        .lightning_client()
        .subscribe_invoices(lnrpc::InvoiceSubscription::default())
        .await
        .expect("subscribe")
        .into_inner();
    let inv = bob.add_invoice(invoice_req(3_000)).await.expect("invoice");
    let added = events.next().await.expect("event").expect("ok");
    assert_eq!(added.r_hash, inv.payment_hash.to_vec());
    assert_eq!(added.state, lnrpc::invoice::InvoiceState::Open as i32);
    assert_eq!(added.value_msat, 3_000);
    assert_eq!(added.description_hash, TERMS.to_vec());
    alice.pay_invoice(pay_req(&inv.bolt11)).await.expect("paid");
    let settled = events.next().await.expect("event").expect("ok");
    assert_eq!(settled.state, lnrpc::invoice::InvoiceState::Settled as i32);
    assert_eq!(settled.amt_paid_msat, 3_000);
    assert_eq!(settled.settle_index, 1);

    // With zero indexes nothing is replayed: the first event is the next new invoice.
    let mut replay = bob
        .lightning_client()
        .subscribe_invoices(lnrpc::InvoiceSubscription {
            add_index: 0,
            settle_index: 0,
        })
        .await
        .expect("subscribe")
        .into_inner();
    let second = bob.add_invoice(invoice_req(4_000)).await.expect("invoice");
    let ev = replay.next().await.expect("event").expect("ok");
    assert_eq!(ev.r_hash, second.payment_hash.to_vec());

    // ListPayments and TrackPaymentV2 on the payer.
    let listed = alice
        .lightning_client()
        .list_payments(lnrpc::ListPaymentsRequest {
            include_incomplete: true,
            count_total_payments: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.payments.len(), 1);
    assert_eq!(listed.total_num_payments, 1);
    let p = &listed.payments[0];
    assert_eq!(p.payment_hash, hex::encode(inv.payment_hash));
    assert_eq!(p.value_msat, 3_000);
    assert_eq!(p.status, lnrpc::payment::PaymentStatus::Succeeded as i32);

    let mut track = alice
        .router_client()
        .track_payment_v2(routerrpc::TrackPaymentRequest {
            payment_hash: inv.payment_hash.to_vec(),
            no_inflight_updates: true,
        })
        .await
        .expect("track")
        .into_inner();
    let tracked = track.next().await.expect("update").expect("ok");
    assert_eq!(tracked.payment_preimage, p.payment_preimage);

    // Bob never paid anything.
    let none = bob
        .lightning_client()
        .list_payments(lnrpc::ListPaymentsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(none.payments.is_empty());
    let err = bob
        .router_client()
        .track_payment_v2(routerrpc::TrackPaymentRequest {
            payment_hash: inv.payment_hash.to_vec(),
            no_inflight_updates: true,
        })
        .await
        .expect_err("bob has no such payment");
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Shutdown completes even though subscription streams are still open.
    let started = std::time::Instant::now();
    sim.shutdown().await.expect("shutdown");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    drop((events, replay));
}
