//! End-to-end: leasewire's real LND client (`LndClient`, TLS pinning, macaroon header) against
//! lnd-sim served in-process over real TLS on 127.0.0.1.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::hashes::{Hash as _, sha256};
use futures::StreamExt as _;
use leasewire::config::LightningConfig;
use leasewire::lightning::connect::{
    LndSource, autodetect_paths, connect_from_config, lndconnect_uri,
};
use leasewire::lightning::invoice::{InvoiceExpectation, check_invoice};
use leasewire::lightning::lnd::{LndClient, LndConfig};
use leasewire::lightning::lnd::{authed_channel, parse_certificate};
use leasewire::lightning::proto::{lnrpc, routerrpc};
use leasewire::lightning::testing::conformance;
use leasewire::lightning::{
    InvoiceRequest, InvoiceState, LightningError, LightningNode, PayRequest, PaymentStatus,
};
use leasewire_simnet::lndsim::admin::{
    AdminClient, STATUS_FAILED, STATUS_SUCCEEDED, double_payments,
};
use leasewire_simnet::lndsim::ledger::admin_proto::{self, admin_client::AdminClient as RawAdmin};
use leasewire_simnet::lndsim::ledger::{FaultKind, RoutingFee};
use leasewire_simnet::lndsim::{SimHandle, SimManifest, SimServer};
use std::time::{Duration, Instant};

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

fn cert_der(sim: &SimHandle) -> Vec<u8> {
    let pem = std::fs::read(sim.tls_cert_path()).expect("cert");
    parse_certificate(&pem).expect("PEM").to_vec()
}

fn macaroon(sim: &SimHandle, name: &str) -> Vec<u8> {
    std::fs::read(sim.lnd_config(name).expect("node").macaroon_path).expect("macaroon")
}

fn pay_limit(bolt11: &str, fee_limit_msat: u64, timeout_secs: i32) -> PayRequest {
    PayRequest {
        bolt11: bolt11.to_owned(),
        fee_limit_msat,
        timeout_secs,
    }
}

fn failure_reason(err: LightningError) -> String {
    match err {
        LightningError::PaymentFailed { reason } => reason,
        other => panic!("expected PaymentFailed, got {other}"),
    }
}

#[tokio::test]
async fn connect_from_config_three_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start(dir.path()).await;
    let der = cert_der(&sim);

    // 1. lndconnect URI built from lnd-sim's certificate and alice's macaroon.
    let uri = lndconnect_uri(sim.address(), &der, &macaroon(&sim, "alice"));
    let cfg = LightningConfig {
        lndconnect: uri.clone(),
        ..Default::default()
    };
    assert!(!format!("{cfg:?}").contains(&uri));
    let (ln, source) = connect_from_config(&cfg, Path::new("/nonexistent"))
        .await
        .expect("lndconnect");
    assert_eq!(source, LndSource::Lndconnect);
    assert_eq!(ln.get_info().await.expect("info").alias, "alice");

    // 2. Explicit paths, relative to the data dir (the lnd-sim dir here).
    let cfg = LightningConfig {
        address: Some(sim.address().to_owned()),
        tls_cert_path: Some("tls.cert".into()),
        macaroon_path: Some("bob/admin.macaroon".into()),
        ..Default::default()
    };
    let (ln, source) = connect_from_config(&cfg, dir.path()).await.expect("paths");
    assert_eq!(source, LndSource::Paths);
    assert_eq!(ln.get_info().await.expect("info").alias, "bob");

    // 3. Autodetect in a fake LND directory.
    let lnd_dir = dir.path().join("fake-lnd");
    let (cert_path, mac_path) = autodetect_paths(&lnd_dir, "regtest");
    std::fs::create_dir_all(mac_path.parent().expect("parent")).expect("mkdir");
    std::fs::copy(sim.tls_cert_path(), &cert_path).expect("copy cert");
    std::fs::write(&mac_path, macaroon(&sim, "carol")).expect("write macaroon");
    let cfg = LightningConfig {
        address: Some(sim.address().to_owned()),
        lnd_dir: Some(lnd_dir.clone()),
        ..Default::default()
    };
    let (ln, source) = connect_from_config(&cfg, Path::new("/nonexistent"))
        .await
        .expect("autodetect");
    assert_eq!(
        source,
        LndSource::Autodetect {
            lnd_dir: lnd_dir.clone()
        }
    );
    assert!(source.to_string().contains(&lnd_dir.display().to_string()));
    assert_eq!(ln.get_info().await.expect("info").alias, "carol");

    // Missing macaroon: the error names the file looked for and that it is missing.
    std::fs::remove_file(&mac_path).expect("rm");
    let err = connect_from_config(&cfg, Path::new("/nonexistent"))
        .await
        .expect_err("missing macaroon");
    let msg = err.to_string();
    assert!(matches!(err, LightningError::Config(_)), "{msg}");
    assert!(
        msg.contains(&format!("missing: {}", mac_path.display())),
        "{msg}"
    );
    assert!(msg.contains(&cert_path.display().to_string()), "{msg}");
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn bad_lndconnect_uris_are_refused_without_leaking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other_dir = tempfile::tempdir().expect("tempdir");
    let sim = start(dir.path()).await;
    let other = start(other_dir.path()).await;
    let good_mac = macaroon(&sim, "alice");

    // Wrong macaroon: TLS connects, the node refuses the call; nothing secret in the error.
    let wrong_mac = [0x5Au8; 32];
    let cfg = LightningConfig {
        lndconnect: lndconnect_uri(sim.address(), &cert_der(&sim), &wrong_mac),
        ..Default::default()
    };
    let (ln, _) = connect_from_config(&cfg, dir.path()).await.expect("TLS ok");
    let err = ln.get_info().await.expect_err("refused");
    assert!(err.is_rpc_code(tonic::Code::Unauthenticated), "{err}");
    assert!(!err.to_string().contains(&hex::encode(wrong_mac)), "{err}");

    // Another server's certificate: the pin refuses the handshake.
    let uri = lndconnect_uri(sim.address(), &cert_der(&other), &good_mac);
    let cfg = LightningConfig {
        lndconnect: uri.clone(),
        ..Default::default()
    };
    let err = connect_from_config(&cfg, dir.path())
        .await
        .expect_err("pin mismatch");
    assert!(matches!(err, LightningError::Connect { .. }), "{err}");
    let (_, query) = uri.split_once('?').expect("query");
    for secret in query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(_, v)| v)
    {
        assert!(!err.to_string().contains(secret), "{err}");
    }

    // A cert parameter that is not a certificate: refused before connecting.
    let mac_b64 = lndconnect_uri("h:1", b"x", &good_mac)
        .rsplit_once("macaroon=")
        .map(|(_, m)| m.to_owned())
        .expect("macaroon param");
    let cfg = LightningConfig {
        lndconnect: format!(
            "lndconnect://{}?cert=AAAA&macaroon={mac_b64}",
            sim.address()
        ),
        ..Default::default()
    };
    let err = connect_from_config(&cfg, dir.path())
        .await
        .expect_err("bad cert");
    assert!(matches!(err, LightningError::Config(_)), "{err}");
    assert!(!err.to_string().contains(&mac_b64), "{err}");
    let e = cfg
        .validate()
        .expect_err("validation refuses it too")
        .to_string();
    assert!(!e.contains(&mac_b64), "{e}");
    other.shutdown().await.expect("shutdown");
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn routing_fee_is_charged_within_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start(dir.path()).await;
    let alice = client(&sim, "alice").await;
    let bob = client(&sim, "bob").await;
    sim.set_routing_fee(RoutingFee {
        base_msat: 1_000,
        ppm: 10_000,
    });
    // 100 sat: fee = 1000 + 1% = 2000 msat.
    let inv = bob
        .add_invoice(invoice_req(100_000))
        .await
        .expect("invoice");
    let err = alice
        .pay_invoice(pay_limit(&inv.bolt11, 1_999, 30))
        .await
        .expect_err("fee over limit");
    assert_eq!(failure_reason(err), "FAILURE_REASON_NO_ROUTE");
    assert_eq!(sim.balance_msat("alice"), Some(1_000_000_000));
    let out = alice
        .pay_invoice(pay_limit(&inv.bolt11, 2_000, 30))
        .await
        .expect("within limit");
    assert_eq!((out.amount_msat, out.fee_msat), (100_000, 2_000));
    assert_eq!(sim.balance_msat("alice"), Some(1_000_000_000 - 102_000));
    assert_eq!(sim.balance_msat("bob"), Some(10_000_000 + 100_000));
    assert_eq!(
        alice.track_payment(inv.payment_hash).await.expect("track"),
        Some(PaymentStatus::Succeeded(out))
    );

    let path = dir.path().join("lnd-sim.json");
    sim.write_manifest(&path).expect("manifest");
    let admin = AdminClient::connect(&SimManifest::load(&path).expect("load"))
        .await
        .expect("admin");
    let audit = admin.list_all_payments().await.expect("list");
    assert_eq!(audit.payments.len(), 2);
    assert_eq!(audit.payments[0].status, STATUS_FAILED);
    assert!(
        audit.payments[0].note.contains("fee over limit"),
        "{:?}",
        audit.payments[0]
    );
    assert_eq!(audit.payments[1].fee_msat, 2_000);
    assert_eq!(audit.payments[1].payer, "alice");
    assert_eq!(audit.payments[1].payee, "bob");
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn injected_faults_through_the_admin_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start(dir.path()).await;
    let alice = client(&sim, "alice").await;
    let bob = client(&sim, "bob").await;
    let admin = AdminClient::connect(sim.manifest()).await.expect("admin");

    // Node macaroons do not open the admin API.
    let pem = std::fs::read(sim.tls_cert_path()).expect("cert");
    let chan = authed_channel(sim.address(), &pem, &macaroon(&sim, "alice"))
        .await
        .expect("channel");
    let err = RawAdmin::new(chan)
        .list_all_payments(admin_proto::ListAllPaymentsRequest {})
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = admin
        .set_fault("nobody", FaultKind::NoRoute, 1)
        .await
        .expect_err("unknown node");
    assert!(err.to_string().contains("NotFound"), "{err}");

    // no_route, once.
    admin
        .set_fault("alice", FaultKind::NoRoute, 1)
        .await
        .expect("set");
    let inv = bob.add_invoice(invoice_req(1_000)).await.expect("invoice");
    let err = alice
        .pay_invoice(pay_req(&inv.bolt11))
        .await
        .expect_err("no route");
    assert_eq!(failure_reason(err), "FAILURE_REASON_NO_ROUTE");
    // Bob's payments are not affected, and alice's fault is used up.
    alice
        .pay_invoice(pay_req(&inv.bolt11))
        .await
        .expect("second try pays");

    // fee_over_limit even with a huge limit.
    admin
        .set_fault("alice", FaultKind::FeeOverLimit, 1)
        .await
        .expect("set");
    let inv = bob.add_invoice(invoice_req(1_000)).await.expect("invoice");
    let err = alice
        .pay_invoice(pay_limit(&inv.bolt11, u64::MAX / 2, 30))
        .await
        .expect_err("fee over limit");
    assert_eq!(failure_reason(err), "FAILURE_REASON_NO_ROUTE");

    // timeout: in flight for the request's timeout, then TIMEOUT; nothing moves.
    admin
        .set_fault("alice", FaultKind::Timeout, 1)
        .await
        .expect("set");
    let before = sim.balance_msat("alice");
    let started = Instant::now();
    let err = alice
        .pay_invoice(pay_limit(&inv.bolt11, 0, 1))
        .await
        .expect_err("timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(failure_reason(err), "FAILURE_REASON_TIMEOUT");
    assert_eq!(sim.balance_msat("alice"), before);

    // delay: in flight for a while, then succeeds.
    admin
        .set_fault("alice", FaultKind::Delay(Duration::from_millis(300)), 0)
        .await
        .expect("set");
    let started = Instant::now();
    alice
        .pay_invoice(pay_req(&inv.bolt11))
        .await
        .expect("delayed but paid");
    assert!(started.elapsed() >= Duration::from_millis(300));
    admin.clear_faults(None).await.expect("clear");
    let quick = bob.add_invoice(invoice_req(1_000)).await.expect("invoice");
    let started = Instant::now();
    alice
        .pay_invoice(pay_req(&quick.bolt11))
        .await
        .expect("paid");
    assert!(started.elapsed() < Duration::from_millis(300));

    // A duplicate attempt is refused and counted; no hash is ever paid twice.
    alice
        .pay_invoice(pay_req(&quick.bolt11))
        .await
        .expect_err("twice");
    let audit = admin.list_all_payments().await.expect("list");
    assert_eq!(audit.duplicate_attempts, 1);
    assert_eq!(double_payments(&audit.payments), 0);
    let statuses: Vec<(&str, &str)> = audit
        .payments
        .iter()
        .map(|p| (p.status.as_str(), p.failure_reason.as_str()))
        .collect();
    assert_eq!(
        statuses,
        [
            (STATUS_FAILED, "FAILURE_REASON_NO_ROUTE"),
            (STATUS_SUCCEEDED, ""),
            (STATUS_FAILED, "FAILURE_REASON_NO_ROUTE"),
            (STATUS_FAILED, "FAILURE_REASON_TIMEOUT"),
            (STATUS_SUCCEEDED, ""),
            (STATUS_SUCCEEDED, ""),
        ]
    );
    assert!(
        audit
            .payments
            .iter()
            .all(|p| p.resolved_at_ns >= p.created_at_ns)
    );
    assert!(audit.payments[3].note.contains("timeout"));
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn payment_completes_after_the_client_disconnects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start(dir.path()).await;
    let bob = client(&sim, "bob").await;
    let tracker = client(&sim, "alice").await;
    sim.add_fault("alice", FaultKind::Delay(Duration::from_millis(600)), 1)
        .expect("fault");
    let inv = bob.add_invoice(invoice_req(7_000)).await.expect("invoice");

    assert_eq!(
        tracker
            .track_payment(inv.payment_hash)
            .await
            .expect("track"),
        None
    );
    {
        // A separate connection, dropped (future and client) while the payment is in flight.
        let payer = client(&sim, "alice").await;
        let r = tokio::time::timeout(
            Duration::from_millis(150),
            payer.pay_invoice(pay_req(&inv.bolt11)),
        )
        .await;
        assert!(r.is_err(), "still in flight when abandoned");
    }
    assert_eq!(
        tracker
            .track_payment(inv.payment_hash)
            .await
            .expect("track"),
        Some(PaymentStatus::InFlight)
    );
    assert_eq!(
        sim.balance_msat("alice"),
        Some(1_000_000_000 - 7_000),
        "reserved"
    );
    // Paying again while in flight is refused.
    let err = tracker
        .pay_invoice(pay_req(&inv.bolt11))
        .await
        .expect_err("in transition");
    assert!(err.is_rpc_code(tonic::Code::AlreadyExists), "{err}");

    // Wait for the resolution itself (TrackPaymentV2 without in-flight updates sends only
    // the final state), not for an amount of wall-clock time.
    let mut final_update = tracker
        .router_client()
        .track_payment_v2(routerrpc::TrackPaymentRequest {
            payment_hash: inv.payment_hash.to_vec(),
            no_inflight_updates: true,
        })
        .await
        .expect("track stream")
        .into_inner();
    let done = final_update
        .next()
        .await
        .expect("final update")
        .expect("ok");
    assert_eq!(done.status, lnrpc::payment::PaymentStatus::Succeeded as i32);
    match tracker
        .track_payment(inv.payment_hash)
        .await
        .expect("track")
    {
        Some(PaymentStatus::Succeeded(out)) => {
            assert_eq!(
                sha256::Hash::hash(&out.preimage).to_byte_array(),
                inv.payment_hash
            );
            assert_eq!(out.amount_msat, 7_000);
        }
        other => panic!("expected success, got {other:?}"),
    }
    let settled = bob.lookup_invoice(inv.payment_hash).await.expect("lookup");
    assert_eq!(settled.state, InvoiceState::Settled);
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn send_and_track_stream_in_flight_then_final() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start(dir.path()).await;
    let alice = client(&sim, "alice").await;
    let bob = client(&sim, "bob").await;
    sim.add_fault("alice", FaultKind::Delay(Duration::from_millis(300)), 1)
        .expect("fault");
    let inv = bob.add_invoice(invoice_req(2_000)).await.expect("invoice");
    let mut send = alice
        .router_client()
        .send_payment_v2(routerrpc::SendPaymentRequest {
            payment_request: inv.bolt11.clone(),
            timeout_seconds: 10,
            fee_limit_msat: 0,
            ..Default::default()
        })
        .await
        .expect("send")
        .into_inner();
    let first = send.next().await.expect("update").expect("ok");
    assert_eq!(first.status, lnrpc::payment::PaymentStatus::InFlight as i32);
    assert!(first.payment_preimage.is_empty());

    let mut track = alice
        .router_client()
        .track_payment_v2(routerrpc::TrackPaymentRequest {
            payment_hash: inv.payment_hash.to_vec(),
            no_inflight_updates: false,
        })
        .await
        .expect("track")
        .into_inner();
    let current = track.next().await.expect("update").expect("ok");
    assert_eq!(
        current.status,
        lnrpc::payment::PaymentStatus::InFlight as i32
    );

    let last = send.next().await.expect("final").expect("ok");
    assert_eq!(last.status, lnrpc::payment::PaymentStatus::Succeeded as i32);
    let tracked = track.next().await.expect("final").expect("ok");
    assert_eq!(tracked.payment_preimage, last.payment_preimage);
    assert!(send.next().await.is_none());
    assert!(track.next().await.is_none());

    // Unknown hash: track_payment answers None.
    assert_eq!(alice.track_payment([7; 32]).await.expect("track"), None);
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn lnd_client_passes_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start(dir.path()).await;
    let alice = client(&sim, "alice").await;
    let bob = client(&sim, "bob").await;
    conformance(&bob, &alice, &|| sim.balance_msat("alice")).await;
    assert_eq!(sim.ledger().lock().expect("ledger").double_payments(), 0);
    sim.shutdown().await.expect("shutdown");
}

/// A raw `lnrpc.Lightning` client for node `name` (no `LndClient` in between).
async fn raw_lightning(
    sim: &SimHandle,
    name: &str,
) -> lnrpc::lightning_client::LightningClient<leasewire::lightning::lnd::AuthedChannel> {
    let channel = authed_channel(sim.address(), &cert_der(sim), &macaroon(sim, name))
        .await
        .expect("channel");
    lnrpc::lightning_client::LightningClient::new(channel)
}

fn send_req(bolt11: &str) -> lnrpc::SendRequest {
    lnrpc::SendRequest {
        payment_request: bolt11.to_owned(),
        ..Default::default()
    }
}

// SendPaymentSync is deprecated in LND (still served up to v0.20); lnd-sim serves it.
#[allow(deprecated)]
#[tokio::test]
async fn send_payment_sync_pays_and_reports_failures_in_the_response() {
    use lnrpc::fee_limit::Limit;
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start(dir.path()).await;
    let mut alice = raw_lightning(&sim, "alice").await;
    let mut carol = raw_lightning(&sim, "carol").await;
    let bob = client(&sim, "bob").await;

    // Success: the preimage proves payment, the route carries the totals.
    let inv = bob.add_invoice(invoice_req(5_000)).await.expect("invoice");
    let resp = alice
        .send_payment_sync(send_req(&inv.bolt11))
        .await
        .expect("sync pay")
        .into_inner();
    assert_eq!(resp.payment_error, "");
    assert_eq!(resp.payment_hash, inv.payment_hash.to_vec());
    assert_eq!(
        sha256::Hash::hash(&resp.payment_preimage)
            .to_byte_array()
            .to_vec(),
        resp.payment_hash
    );
    let route = resp.payment_route.expect("route");
    assert_eq!((route.total_amt_msat, route.total_fees_msat), (5_000, 0));
    let status = bob.lookup_invoice(inv.payment_hash).await.expect("lookup");
    assert_eq!(status.state, InvoiceState::Settled);
    assert_eq!(sim.balance_msat("alice"), Some(1_000_000_000 - 5_000));
    // The same payment as SendPaymentV2 makes: TrackPaymentV2 sees it.
    let tracked = client(&sim, "alice")
        .await
        .track_payment(inv.payment_hash)
        .await
        .expect("track");
    assert!(
        matches!(&tracked, Some(PaymentStatus::Succeeded(o)) if o.preimage.to_vec() == resp.payment_preimage),
        "{tracked:?}"
    );

    // Paying again: refused in the response (LND's wording), nothing debited.
    let again = alice
        .send_payment_sync(send_req(&inv.bolt11))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(again.payment_error, "invoice is already paid");
    assert!(again.payment_preimage.is_empty());
    assert_eq!(sim.balance_msat("alice"), Some(1_000_000_000 - 5_000));

    // Fee limits as LND computes them: fixed, percent, and by default 100% up to 1,000 sat.
    sim.set_routing_fee(RoutingFee {
        base_msat: 2_000,
        ppm: 0,
    });
    let inv = bob
        .add_invoice(invoice_req(100_000))
        .await
        .expect("invoice");
    for limit in [Limit::FixedMsat(1_999), Limit::Fixed(1), Limit::Percent(1)] {
        let resp = alice
            .send_payment_sync(lnrpc::SendRequest {
                fee_limit: Some(lnrpc::FeeLimit { limit: Some(limit) }),
                ..send_req(&inv.bolt11)
            })
            .await
            .expect("answered")
            .into_inner();
        assert_eq!(resp.payment_error, "no_route", "{limit:?}");
        assert!(resp.payment_route.is_none());
    }
    let resp = alice
        .send_payment_sync(send_req(&inv.bolt11))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(resp.payment_error, "");
    assert_eq!(
        resp.payment_route
            .map(|r| (r.total_amt_msat, r.total_fees_msat)),
        Some((102_000, 2_000))
    );

    // Insufficient balance: carol has 1 sat.
    let inv = bob.add_invoice(invoice_req(5_000)).await.expect("invoice");
    let resp = carol
        .send_payment_sync(send_req(&inv.bolt11))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(resp.payment_error, "insufficient_balance");
    assert_eq!(sim.balance_msat("carol"), Some(1_000));

    // Malformed requests are gRPC errors, as in LND.
    let err = alice
        .send_payment_sync(send_req("lnbcrt1garbage"))
        .await
        .expect_err("garbage");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = alice
        .send_payment_sync(lnrpc::SendRequest {
            amt: 5,
            ..send_req(&inv.bolt11)
        })
        .await
        .expect_err("amount given for an invoice that has one");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(sim.ledger().lock().expect("ledger").double_payments(), 0);
    sim.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn check_macaroon_permissions_knows_the_node_macaroons_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start(dir.path()).await;
    let alice = client(&sim, "alice").await;
    // lnd-sim does not scope macaroons: a node's macaroon may do everything, paying included.
    assert!(alice.can_pay().await.expect("check answers"));
    let ask = |macaroon: Vec<u8>| {
        let mut raw = alice.lightning_client();
        async move {
            raw.check_macaroon_permissions(lnrpc::CheckMacPermRequest {
                macaroon,
                permissions: vec![lnrpc::MacaroonPermission {
                    entity: "offchain".into(),
                    action: "write".into(),
                }],
            })
            .await
            .expect("check answers")
            .into_inner()
            .valid
        }
    };
    let bob_macaroon =
        std::fs::read(sim.lnd_config("bob").expect("bob").macaroon_path).expect("bob's macaroon");
    assert!(
        ask(bob_macaroon).await,
        "another node's macaroon is one of lnd-sim's"
    );
    assert!(!ask(b"not a macaroon".to_vec()).await);
}
