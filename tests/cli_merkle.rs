//! Runs the built `leasewire` binary for the Merkle log's command-line parts: `lease verify`
//! of the example certificate of docs/PROTOCOL.md (offline, no data dir) and of a tampered
//! copy, and `audit verify` naming a truncated log against the kept signed head.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use leasewire::audit::head_file::HEAD_FILE_NAME;
use leasewire::audit::{AuditKind, AuditLog, TREE_NAME};
use leasewire::identity::Identity;

fn leasewire(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leasewire"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("LEASEWIRE_DATA_DIR")
        .env_remove("RUST_LOG")
        .output()
        .expect("the leasewire binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The example certificate of docs/PROTOCOL.md.
fn example_certificate() -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap();
    let mut out = String::new();
    let mut lines = doc
        .lines()
        .skip_while(|l| l.trim() != "```certificate")
        .skip(1);
    for l in lines.by_ref() {
        if l.trim() == "```" {
            return out;
        }
        out.push_str(l);
        out.push('\n');
    }
    panic!("no certificate block");
}

#[test]
fn lease_verify_accepts_the_example_and_rejects_a_tampered_copy() {
    let tmp = tempfile::tempdir().unwrap();
    // A data dir that does not exist: verification needs none.
    let nowhere = tmp.path().join("no-such-dir");
    let good = tmp.path().join("cert.json");
    let cert = example_certificate();
    std::fs::write(&good, &cert).unwrap();
    let out = leasewire(&nowhere, &["lease", "verify", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("lease certificate valid"), "{s}");
    assert!(s.contains("198.51.100.7/32"), "{s}");
    assert!(s.contains("12D3KooW"), "{s}");
    assert!(!nowhere.exists());

    let out = leasewire(
        &nowhere,
        &["lease", "verify", "--json", good.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(v["paid_until"], 1_700_864_100u64);
    assert_eq!(v["ipv4"], "198.51.100.7/32");

    // The lease's paid_until pushed one day later, by editing the CBOR's last bytes: the
    // lease body is hex, so change one hex digit of the paid_until field.
    let mut c: serde_json::Value = serde_json::from_str(&cert).unwrap();
    let body = c["lease"]["body"].as_str().unwrap().to_owned();
    let at = body
        .find("1a65612064")
        .expect("paid_until in the lease body");
    let mut changed = body.clone();
    changed.replace_range(at + 6..at + 8, "21");
    c["lease"]["body"] = serde_json::Value::String(changed);
    let bad = tmp.path().join("tampered.json");
    std::fs::write(&bad, serde_json::to_vec(&c).unwrap()).unwrap();
    let out = leasewire(&nowhere, &["lease", "verify", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("does not verify"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn audit_verify_reports_a_truncated_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = leasewire(dir, &["init", "--role", "renter"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let key = Identity::load(dir).unwrap().signing_key;
    {
        let db = sled::open(dir.join("db")).unwrap();
        let log = AuditLog::open_keeping_head(&db, key, &dir.join(HEAD_FILE_NAME)).unwrap();
        for i in 0..6u64 {
            log.append(AuditKind::CreditAdded, &serde_json::json!({ "n": i }))
                .unwrap();
        }
        futures::executor::block_on(log.close()).unwrap();
    }
    let ok = leasewire(dir, &["audit", "verify"]);
    assert_eq!(ok.status.code(), Some(0), "stderr: {}", text(&ok.stderr));

    // Delete the last two entries, as anyone with the sled files could.
    {
        let db = sled::open(dir.join("db")).unwrap();
        let tree = db.open_tree(TREE_NAME).unwrap();
        tree.remove(5u64.to_be_bytes()).unwrap();
        tree.remove(4u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let bad = leasewire(dir, &["audit", "verify"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = text(&bad.stderr);
    assert!(err.contains("broken at seq 4"), "{err}");
    assert!(err.contains("truncated"), "{err}");
    let bad = leasewire(dir, &["audit", "verify", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text(&bad.stdout)).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["kept_heads"][0]["size"], 6);
    assert_eq!(v["kept_heads"][0]["ok"], false);
}

#[test]
fn audit_peers_and_evidence_list_what_the_witness_found() {
    use leasewire::market::witness::{Observation, Witness};
    use leasewire::wire::signed::peer_id_of;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = leasewire(dir, &["init", "--role", "renter"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    // A peer's log (key 0x11) and a fork of it; the node witnesses both heads.
    let peer_key = ed25519_dalek::SigningKey::from_bytes(&[0x11; 32]);
    let peer = peer_id_of(&peer_key.verifying_key());
    let logs: Vec<_> = (0..2)
        .map(|fork| {
            let d = tempfile::tempdir().unwrap();
            let db = sled::open(d.path().join("db")).unwrap();
            let log = AuditLog::open(&db, peer_key.clone()).unwrap();
            for i in 0..3 + fork {
                log.append(AuditKind::Hello, &(i + 10 * fork)).unwrap();
            }
            (d, db, log)
        })
        .collect();
    {
        let key = Identity::load(dir).unwrap().signing_key;
        let db = sled::open(dir.join("db")).unwrap();
        let me = AuditLog::open(&db, key).unwrap();
        let store: &dyn leasewire::market::store::Store = &db;
        let w = Witness::open(store, me).unwrap();
        db.flush().unwrap();
        let out = leasewire(dir, &["audit", "evidence"]);
        // The database is held by this process: the CLI asks the daemon, and there is none.
        assert_eq!(out.status.code(), Some(1));
        // Timers on: the witness's durable writes are flushed with a time limit.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let first = logs[0].2.head_reply(0).unwrap();
        assert_eq!(
            rt.block_on(w.observe(&peer, &first)).unwrap(),
            Observation::First
        );
        let forked = logs[1].2.head_reply(3).unwrap();
        assert!(matches!(
            rt.block_on(w.observe(&peer, &forked)).unwrap(),
            Observation::Conflict(_)
        ));
    }
    let out = leasewire(dir, &["audit", "peers", "--json"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(v[0]["peer"], peer.to_string());
    assert_eq!(v[0]["head"]["size"], 3);
    let out = leasewire(dir, &["audit", "evidence", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["kind"], "fork");
    assert_eq!(v[0]["new"]["size"], 4);
    let out = leasewire(dir, &["audit", "evidence"]);
    assert!(
        text(&out.stdout).contains(" fork "),
        "{}",
        text(&out.stdout)
    );
}
