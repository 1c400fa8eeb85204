//! Checks the Merkle log, signed head, receipt and lease certificate vectors of
//! docs/PROTOCOL.md (the fenced block tagged `merkle-vectors`, and the example certificate in
//! the block tagged `certificate`) against the code, so the published format and the
//! implementation cannot drift apart.
//!
//! `LEASEWIRE_PRINT_VECTORS=1 cargo test --test merkle_vectors -- --nocapture` prints the
//! values the code computes (to write the document from).

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use leasewire::audit::certificate::{parse_certificate, verify_certificate};
use leasewire::audit::merkle::{
    self, consistency_proof, empty_root, inclusion_proof, leaf_hash, node_hash, root_of,
};
use leasewire::audit::{TreeHead, merkle::Hash};
use leasewire::wire::{HeadReply, HeadRequest, Message, Receipt, Signed};

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md");
    std::fs::read_to_string(path).expect("docs/PROTOCOL.md to be readable")
}

/// The lines of the fenced block tagged `tag`.
fn block(doc: &str, tag: &str) -> String {
    let open = format!("```{tag}");
    let mut lines = doc.lines().skip_while(|l| l.trim() != open).skip(1);
    let mut out = String::new();
    for line in lines.by_ref() {
        if line.trim() == "```" {
            return out;
        }
        out.push_str(line);
        out.push('\n');
    }
    panic!("no closed ```{tag} block in docs/PROTOCOL.md");
}

fn vectors(doc: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in block(doc, "merkle-vectors").lines() {
        let (name, value) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("vector line without `: `: {line}"));
        assert!(
            out.insert(name.trim().to_owned(), value.trim().to_owned())
                .is_none(),
            "vector {name} defined twice"
        );
    }
    out
}

fn hexes(list: &[Hash]) -> String {
    list.iter().map(hex::encode).collect::<Vec<_>>().join(",")
}

/// Every vector as the code computes it.
fn computed() -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    // Leaf data i = 32 bytes of value i (standing for entry i's chain hash).
    let leaves: Vec<Hash> = (0..7u8).map(|i| leaf_hash(&[i; 32])).collect();
    v.insert("empty_root".into(), hex::encode(empty_root()));
    v.insert("leaf_0".into(), hex::encode(leaves[0]));
    v.insert(
        "node_0_1".into(),
        hex::encode(node_hash(&leaves[0], &leaves[1])),
    );
    for n in [1usize, 2, 3, 4, 5, 7] {
        v.insert(format!("root_{n}"), hex::encode(root_of(&leaves[..n])));
    }
    v.insert(
        "inclusion_2_of_7".into(),
        hexes(&inclusion_proof(leaves.as_slice(), 2, 7).unwrap()),
    );
    v.insert(
        "inclusion_6_of_7".into(),
        hexes(&inclusion_proof(leaves.as_slice(), 6, 7).unwrap()),
    );
    v.insert(
        "consistency_3_to_7".into(),
        hexes(&consistency_proof(leaves.as_slice(), 3, 7).unwrap()),
    );
    v.insert(
        "consistency_4_to_7".into(),
        hexes(&consistency_proof(leaves.as_slice(), 4, 7).unwrap()),
    );
    let key = SigningKey::from_bytes(&[1; 32]);
    let head = TreeHead {
        size: 7,
        time_ms: 1_700_000_000_000,
        root: root_of(&leaves),
    };
    v.insert("head_key_seed".into(), hex::encode([1u8; 32]));
    v.insert(
        "head_public_key".into(),
        hex::encode(key.verifying_key().to_bytes()),
    );
    v.insert("head_signed_bytes".into(), hex::encode(head.signed_bytes()));
    v.insert("head_sig".into(), hex::encode(head.sign(&key).sig));
    let receipt = Receipt {
        lease_id: "ab".repeat(16),
        provider: leasewire::wire::signed::peer_id_of(&key.verifying_key()).to_string(),
        renter: leasewire::wire::signed::peer_id_of(
            &SigningKey::from_bytes(&[2; 32]).verifying_key(),
        )
        .to_string(),
        payment_hash: "cd".repeat(32),
        amount_sat: 2_000,
        paid_until: 1_700_864_100,
        revision: 1,
        log_seq: 41,
        settled_at: 1_700_000_100,
    };
    let signed = Signed::sign(&key, &receipt).unwrap();
    v.insert("receipt_body".into(), hex::encode(&signed.body));
    v.insert("receipt_sig".into(), hex::encode(&signed.sig));
    // The head exchange: a request from size 3, and the answer with the head above and the
    // consistency proof 3 -> 7.
    let cbor = |m: &Message| {
        let mut out = Vec::new();
        ciborium::into_writer(m, &mut out).unwrap();
        hex::encode(out)
    };
    v.insert(
        "head_request.message".into(),
        cbor(&Message::HeadRequest(HeadRequest { since_size: 3 })),
    );
    let reply = HeadReply {
        head: head.sign(&key).to_wire(),
        since_size: 3,
        proof: consistency_proof(leaves.as_slice(), 3, 7)
            .unwrap()
            .iter()
            .map(|h| serde_bytes::ByteBuf::from(h.to_vec()))
            .collect(),
    };
    v.insert("head.message".into(), cbor(&Message::Head(reply)));
    v
}

#[test]
fn merkle_vectors_match_the_code() {
    let computed = computed();
    if std::env::var_os("LEASEWIRE_PRINT_VECTORS").is_some() {
        for (k, v) in &computed {
            println!("{k}: {v}");
        }
    }
    let doc = doc();
    let published = vectors(&doc);
    assert_eq!(
        published.keys().collect::<Vec<_>>(),
        computed.keys().collect::<Vec<_>>(),
        "the vector names differ"
    );
    for (k, v) in &computed {
        assert_eq!(&published[k], v, "vector {k}");
    }
}

#[test]
fn published_proofs_verify_and_fail_when_changed() {
    let v = vectors(&doc());
    let parse = |s: &str| -> Vec<Hash> {
        s.split(',')
            .map(|h| hex::decode(h).unwrap().try_into().unwrap())
            .collect()
    };
    let one = |s: &str| -> Hash { hex::decode(s).unwrap().try_into().unwrap() };
    let root7 = one(&v["root_7"]);
    let leaf = |i: u8| leaf_hash(&[i; 32]);
    merkle::verify_inclusion(&leaf(2), 2, 7, &parse(&v["inclusion_2_of_7"]), &root7).unwrap();
    merkle::verify_inclusion(&leaf(6), 6, 7, &parse(&v["inclusion_6_of_7"]), &root7).unwrap();
    assert!(
        merkle::verify_inclusion(&leaf(3), 2, 7, &parse(&v["inclusion_2_of_7"]), &root7).is_err()
    );
    merkle::verify_consistency(
        3,
        7,
        &one(&v["root_3"]),
        &root7,
        &parse(&v["consistency_3_to_7"]),
    )
    .unwrap();
    merkle::verify_consistency(
        4,
        7,
        &one(&v["root_4"]),
        &root7,
        &parse(&v["consistency_4_to_7"]),
    )
    .unwrap();
    assert!(
        merkle::verify_consistency(
            3,
            7,
            &one(&v["root_2"]),
            &root7,
            &parse(&v["consistency_3_to_7"])
        )
        .is_err()
    );
}

#[test]
fn the_example_certificate_verifies_and_a_tampered_copy_does_not() {
    let text = block(&doc(), "certificate");
    if std::env::var_os("LEASEWIRE_PRINT_VECTORS").is_some() {
        println!("{text}");
    }
    let cert = parse_certificate(text.as_bytes()).unwrap();
    let s = verify_certificate(&cert).unwrap();
    assert_eq!(s.lease_id, "ab".repeat(16));
    assert_eq!(s.ipv4.as_deref(), Some("198.51.100.7/32"));
    assert!(s.offer_included);
    // One flipped bit in the signed lease makes it fail.
    let mut bad = cert.clone();
    let last = bad.lease.body.len() - 1;
    bad.lease.body[last] ^= 1;
    assert!(verify_certificate(&bad).is_err());
}

#[tokio::test]
async fn a_certificate_built_from_a_log_verifies() {
    use leasewire::audit::certificate::build_certificate;
    use leasewire::audit::{AuditKind, AuditLog};
    use leasewire::types::{Terms, WgKey};
    use leasewire::wire::signed::peer_id_of;
    use leasewire::wire::{Lease, Offer};

    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path().join("db")).unwrap();
    let key = SigningKey::from_bytes(&[1; 32]);
    let log = AuditLog::open(&db, key.clone()).unwrap();
    for i in 0..5u64 {
        log.append_async(AuditKind::Hello, &i).await.unwrap();
    }
    let terms = Terms {
        activation_fee_sat: 1_000,
        rate_sat_per_day: 100,
        min_initial_credit_sat: 100,
        min_topup_sat: 10,
        max_credit_sat: 100_000,
        reserve_days: 7,
        refund_unused: false,
        reservation_secs: 0,
    };
    let provider = peer_id_of(&key.verifying_key()).to_string();
    let offer = Signed::sign(
        &key,
        &Offer {
            provider: provider.clone(),
            seq: 3,
            created_at: 1_700_000_000,
            expires_at: 1_700_086_400,
            network: "regtest".into(),
            ln_pubkey: "02".repeat(33),
            wg_pubkey: WgKey([5; 32]),
            endpoint: "198.51.100.1:51820".into(),
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            terms: terms.clone(),
        },
    )
    .unwrap();
    let lease = Signed::sign(
        &key,
        &Lease {
            lease_id: "ab".repeat(16),
            provider,
            renter: peer_id_of(&SigningKey::from_bytes(&[2; 32]).verifying_key()).to_string(),
            offer_id: offer.id(),
            renter_wg_pubkey: WgKey([6; 32]),
            provider_wg_pubkey: WgKey([5; 32]),
            endpoint: "198.51.100.1:51820".into(),
            ipv4: Some("198.51.100.7/32".into()),
            ipv6: None,
            allowed_ips: vec!["198.51.100.7/32".into()],
            terms,
            credit_sat: 1_000,
            activated_at: 1_700_000_100,
            paid_until: 1_700_864_100,
            payment_hash: "cd".repeat(32),
            revision: 1,
        },
    )
    .unwrap();
    let cert = build_certificate(&log, &lease, Some(&offer)).await.unwrap();
    let json = serde_json::to_string_pretty(&cert).unwrap();
    if std::env::var_os("LEASEWIRE_PRINT_VECTORS").is_some() {
        println!("{json}");
    }
    let s = verify_certificate(&parse_certificate(json.as_bytes()).unwrap()).unwrap();
    assert_eq!(s.log_seq, 5);
    assert_eq!(s.head_size, 6);
}
