//! The seed corpora of the fuzz targets (fuzz/seeds/<target>/), built from the test vectors of
//! docs/PROTOCOL.md and from typical values of the other inputs.
//!
//! The seeds are committed. This test checks that they are exactly what the vectors give, so
//! a protocol change that updates the vectors also shows up here; to write them again run
//!
//! ```text
//! LEASEWIRE_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_seeds
//! ```

// Tests may unwrap: a panic is the failure report (clippy.toml allows it in #[test]
// functions only, not in an integration test's helpers).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bitcoin::hashes::{Hash as _, sha256};
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use ed25519_dalek::SigningKey;
use leasewire::control::pb;
use leasewire::lightning::connect::lndconnect_uri;
use leasewire::lightning::invoice::{InvoiceExpectation, check_invoice};
use leasewire::types::{Terms, WgKey};
use leasewire::wire::framing::MAX_FRAME;
use leasewire::wire::messages::{
    ErrorCode, ErrorMsg, Lease, Message, PayInvoice, PaymentResult, RentRequest, StatusRequest,
    TopUpRequest,
};
use leasewire::wire::signed::{Signed, peer_id_of};
use lightning_invoice::{Currency, InvoiceBuilder, PaymentSecret};

const TS: u64 = 1_700_000_000;

/// The `name: value` lines of the ```vectors block of docs/PROTOCOL.md.
fn vectors() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(path).expect("docs/PROTOCOL.md to be readable");
    doc.lines()
        .skip_while(|l| l.trim() != "```vectors")
        .skip(1)
        .take_while(|l| l.trim() != "```")
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn vector(v: &BTreeMap<String, String>, name: &str) -> Vec<u8> {
    let hex = v
        .get(name)
        .unwrap_or_else(|| panic!("vector {name} missing from docs/PROTOCOL.md"));
    hex::decode(hex).unwrap_or_else(|e| panic!("vector {name} is not hex: {e}"))
}

fn cbor<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn key(b: u8) -> SigningKey {
    SigningKey::from_bytes(&[b; 32])
}

fn terms() -> Terms {
    Terms {
        activation_fee_sat: 1000,
        rate_sat_per_day: 100,
        min_initial_credit_sat: 700,
        min_topup_sat: 100,
        max_credit_sat: 100_000,
        reserve_days: 7,
        refund_unused: false,
        reservation_secs: 0,
    }
}

fn lease() -> Lease {
    Lease {
        lease_id: "00112233445566778899aabbccddeeff".into(),
        provider: peer_id_of(&key(1).verifying_key()).to_string(),
        renter: peer_id_of(&key(2).verifying_key()).to_string(),
        offer_id: "45fb930729bd9c1c06d3ac30e3122b33".into(),
        renter_wg_pubkey: WgKey([7; 32]),
        provider_wg_pubkey: WgKey([8; 32]),
        endpoint: "203.0.113.7:51820".into(),
        ipv4: Some("198.51.100.3/32".into()),
        ipv6: Some("2001:db8:100::/64".into()),
        allowed_ips: vec!["198.51.100.3/32".into(), "2001:db8:100::/64".into()],
        terms: terms(),
        credit_sat: 3000,
        activated_at: TS,
        paid_until: TS + 30 * 86_400,
        payment_hash: "11".repeat(32),
        revision: 0,
    }
}

/// The messages of the vectors and one of every other kind.
fn messages(v: &BTreeMap<String, String>) -> Vec<(&'static str, Vec<u8>)> {
    let signed_lease = Signed::sign(&key(1), &lease()).unwrap();
    let other = [
        (
            "rent_request",
            Message::RentRequest(RentRequest {
                request_id: "00112233445566778899aabbccddeeff".into(),
                offer_id: "45fb930729bd9c1c06d3ac30e3122b33".into(),
                credit_sat: 3000,
                ipv4_prefix_len: Some(32),
                ipv6_prefix_len: None,
                wg_pubkey: WgKey([7; 32]),
            }),
        ),
        (
            "pay_invoice",
            Message::PayInvoice(PayInvoice {
                request_id: "00112233445566778899aabbccddeeff".into(),
                lease_id: "00112233445566778899aabbccddeeff".into(),
                bolt11: "lnbcrt40u1example".into(),
                amount_sat: 4000,
            }),
        ),
        (
            "payment_result",
            Message::PaymentResult(PaymentResult {
                request_id: "00112233445566778899aabbccddeeff".into(),
                payment_hash: "11".repeat(32),
                preimage: "22".repeat(32),
            }),
        ),
        ("lease", Message::Lease(signed_lease)),
        (
            "status_request",
            Message::StatusRequest(StatusRequest {
                lease_id: "00112233445566778899aabbccddeeff".into(),
            }),
        ),
        (
            "topup_request",
            Message::TopUpRequest(TopUpRequest {
                request_id: "00112233445566778899aabbccddeeff".into(),
                lease_id: "00112233445566778899aabbccddeeff".into(),
                amount_sat: 500,
            }),
        ),
        (
            "error",
            Message::Error(ErrorMsg::new(ErrorCode::NotFound, "no such lease")),
        ),
    ];
    let mut out = vec![
        ("hello", vector(v, "envelope.body")),
        ("offer", vector(v, "offer.message")),
        ("offers_request", vector(v, "offers_request.message")),
        ("offers", vector(v, "offers.message")),
        ("lease_end", vector(v, "lease_end.message")),
        ("refund_request", vector(v, "refund_request.message")),
        ("status_refund", vector(v, "status_refund.message")),
    ];
    out.extend(other.iter().map(|(n, m)| (*n, cbor(m))));
    out
}

/// The seed invoices: signed by secret key 1 (the payee the invoice target expects), for the
/// vectors' description hash, 4,000 sat, created at the vectors' time.
fn invoice(currency: Currency, amount_msat: Option<u64>, direct: bool) -> String {
    let secp = Secp256k1::new();
    let mut sk = [0u8; 32];
    sk[31] = 1;
    let sk = SecretKey::from_slice(&sk).unwrap();
    let builder = InvoiceBuilder::new(currency);
    let builder = if direct {
        builder.description("rent".into())
    } else {
        builder.description_hash(sha256::Hash::from_byte_array(
            hex::decode("52c394d1f7f05049472146262d783bea2472bebf341bdedd031a8c04d3b81998")
                .unwrap()
                .try_into()
                .unwrap(),
        ))
    };
    let builder = builder
        .payment_hash(sha256::Hash::from_byte_array([0x11; 32]))
        .payment_secret(PaymentSecret([0x22; 32]))
        .duration_since_epoch(Duration::from_secs(TS))
        .expiry_time(Duration::from_secs(3600))
        .min_final_cltv_expiry_delta(80)
        .payee_pub_key(PublicKey::from_secret_key(&secp, &sk));
    let signed = match amount_msat {
        Some(a) => builder
            .amount_milli_satoshis(a)
            .build_signed(|m| secp.sign_ecdsa_recoverable(m, &sk)),
        None => builder.build_signed(|m| secp.sign_ecdsa_recoverable(m, &sk)),
    };
    signed.unwrap().to_string()
}

fn grpc(method: u8, msg: &impl prost::Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut out = vec![method, 0];
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Every seed: (target, name, bytes).
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let v = vectors();
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |t: &'static str, n: &str, b: Vec<u8>| out.push((t, n.to_owned(), b));

    let envelope = vector(&v, "envelope.cbor");
    let msgs = messages(&v);

    // framing: a limit selector byte (even: MAX_FRAME), then the stream.
    add("framing", "envelope", [vec![0], frame(&envelope)].concat());
    let mut stream = vec![0];
    for (_, m) in &msgs {
        stream.extend(frame(m));
    }
    add("framing", "messages", stream);
    add(
        "framing",
        "small_limit",
        [vec![3], frame(b"hello")].concat(),
    );
    let too_big = u32::try_from(MAX_FRAME + 1).unwrap().to_be_bytes();
    add("framing", "oversized", [vec![0], too_big.to_vec()].concat());

    // envelope_open: envelopes, and message bodies (each input is tried as both).
    add("envelope_open", "envelope", envelope.clone());
    for (n, m) in &msgs {
        add("envelope_open", n, m.clone());
        add("message", n, m.clone());
    }

    // Signed<Offer> and Signed<Lease>: the signed values, and their bodies.
    let offer = match ciborium::from_reader(vector(&v, "offer.message").as_slice()).unwrap() {
        Message::Offer(s) => s,
        other => panic!("offer.message is a {}", other.name()),
    };
    add("signed_offer", "signed", cbor(&offer));
    add("signed_offer", "body", vector(&v, "offer.body"));
    let signed_lease = Signed::sign(&key(1), &lease()).unwrap();
    add("signed_lease", "signed", cbor(&signed_lease));
    add("signed_lease", "body", signed_lease.body.clone());

    // membership: message-shaped bytes; the first byte also picks where a genuine run is
    // tampered with (bit 7 clear: message 1, set: message 2) and the second how.
    add("membership", "genuine_run", vec![0x05]);
    add("membership", "flip_message1", vec![0x00, 0x01]);
    add("membership", "flip_message2", vec![0x80, 0x01]);
    add(
        "membership",
        "message_sized",
        [[0x09; 32].as_slice(), &[0; 16]].concat(),
    );

    // invoice: one that passes, and one failing each of several checks.
    add(
        "invoice",
        "ok",
        invoice(Currency::Regtest, Some(4_000_000), false).into_bytes(),
    );
    add(
        "invoice",
        "mainnet",
        invoice(Currency::Bitcoin, Some(4_000_000), false).into_bytes(),
    );
    add(
        "invoice",
        "no_amount",
        invoice(Currency::Regtest, None, false).into_bytes(),
    );
    add(
        "invoice",
        "direct_description",
        invoice(Currency::Regtest, Some(4_000_000), true).into_bytes(),
    );

    // lndconnect: the forms the parser accepts.
    let mut der = vec![0x30, 0x82, 0x01, 0x04, 0x30, 0x82, 0x01, 0x00];
    der.extend(0..=255u8);
    let macaroon = b"\x02\x01\x03lnd-secret-macaroon-bytes";
    add(
        "lndconnect",
        "ipv4",
        lndconnect_uri("198.51.100.7:10009", &der, macaroon).into_bytes(),
    );
    add(
        "lndconnect",
        "ipv6",
        lndconnect_uri("[2001:db8::1]:8443", &der, macaroon).into_bytes(),
    );
    add(
        "lndconnect",
        "escaped_default_port",
        format!(
            "lndconnect://lnd.example?macaroon=AgED%3D%3D&cert={}",
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE, &der)
        )
        .into_bytes(),
    );

    // config_toml: the templates `leasewire init` writes, and a minimal file.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for t in ["provider", "renter"] {
        let text = std::fs::read(root.join(format!("config/{t}.toml"))).unwrap();
        add("config_toml", t, text);
    }
    add(
        "config_toml",
        "minimal",
        b"[node]\nroles = [\"renter\"]\n".to_vec(),
    );

    // control_request: a method selector byte (the order of the target's METHODS), then one
    // gRPC frame.
    add("control_request", "status", grpc(0, &pb::StatusRequest {}));
    add(
        "control_request",
        "rent",
        grpc(
            2,
            &pb::RentRequest {
                auto: true,
                credit_sat: 3000,
                ipv4: "/32".into(),
                ipv6: "none".into(),
                max_price_sat_per_day: Some(200),
                allow: vec![peer_id_of(&key(1).verifying_key()).to_string()],
                ..Default::default()
            },
        ),
    );
    add(
        "control_request",
        "add_credit",
        grpc(
            4,
            &pb::AddCreditRequest {
                lease_id: "0011".into(),
                amount_sat: 500,
            },
        ),
    );
    add(
        "control_request",
        "terminate",
        grpc(
            10,
            &pb::TerminateRequest {
                lease_id: "0011".into(),
                notice_secs: 86_400,
            },
        ),
    );
    add(
        "control_request",
        "release",
        grpc(
            8,
            &pb::ReleaseRequest {
                lease_id: String::new(),
                yes: true,
            },
        ),
    );
    out
}

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")
}

#[test]
fn seed_invoice_passes_the_invoice_check() {
    // The invoice target's expectation; its seed must pass so the fuzzer starts from the
    // accepting path.
    let expect = InvoiceExpectation {
        network: "regtest".into(),
        amount_msat: 4_000_000,
        payee_pubkey: "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798".into(),
        description_hash: hex::decode(
            "52c394d1f7f05049472146262d783bea2472bebf341bdedd031a8c04d3b81998",
        )
        .unwrap()
        .try_into()
        .unwrap(),
        min_expiry_left_secs: 60,
        now_unix: TS,
    };
    let checked = check_invoice(&invoice(Currency::Regtest, Some(4_000_000), false), &expect)
        .expect("the seed invoice to pass");
    assert_eq!(checked.amount_msat, 4_000_000);
}

#[test]
fn committed_seeds_match_the_vectors() {
    let dir = seeds_dir();
    let seeds = seeds();
    if std::env::var_os("LEASEWIRE_WRITE_FUZZ_SEEDS").is_some() {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        for (target, name, bytes) in &seeds {
            let d = dir.join(target);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(name), bytes).unwrap();
        }
        return;
    }
    let mut on_disk = BTreeMap::new();
    for target in std::fs::read_dir(&dir).expect("fuzz/seeds to exist") {
        let target = target.unwrap();
        for f in std::fs::read_dir(target.path()).unwrap() {
            let f = f.unwrap();
            let key = format!(
                "{}/{}",
                target.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            );
            on_disk.insert(key, std::fs::read(f.path()).unwrap());
        }
    }
    let expected: BTreeMap<String, Vec<u8>> = seeds
        .into_iter()
        .map(|(t, n, b)| (format!("{t}/{n}"), b))
        .collect();
    assert_eq!(
        on_disk.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "seed files differ; rewrite them with LEASEWIRE_WRITE_FUZZ_SEEDS=1"
    );
    for (k, b) in &expected {
        // The config templates belong to their own sections' owners and change with them; a
        // seed that lags behind a template is still a good seed, so only its presence counts.
        if k.starts_with("config_toml/") {
            continue;
        }
        assert!(
            on_disk[k] == *b,
            "seed {k} is stale; rewrite with LEASEWIRE_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_seeds"
        );
    }
}
