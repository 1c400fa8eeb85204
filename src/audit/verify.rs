//! Full verification of an audit tree (format in the parent module docs).

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use super::{AuditEntry, GENESIS_PREV_HASH, key_seq};

/// The first entry that failed verification, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadEntry {
    /// Seq of the bad entry. For a gap this is the missing seq; otherwise the seq of the
    /// stored entry that failed (its storage key).
    pub seq: u64,
    /// Human-readable reason, e.g. `"prev_hash does not match hash of entry 2"`.
    pub reason: String,
}

/// Result of [`verify`]; serializes to JSON for `audit verify --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// True when every entry verified.
    pub ok: bool,
    /// Number of entries that verified, counted from seq 0. When `ok` this is the length of
    /// the log; otherwise it equals `first_bad.seq`.
    pub entries: u64,
    /// The first failure, if any (`None` exactly when `ok`).
    pub first_bad: Option<BadEntry>,
    /// Hash of the last verified entry (hex), or all zeros for an empty log. Comparing it with
    /// a head recorded elsewhere detects truncation.
    pub head_hash: String,
}

/// Verifies a whole audit tree: entries decode, seqs are contiguous from 0, every `prev_hash`
/// links to the previous entry's hash, every hash recomputes, and every signature verifies
/// (strictly) against `signer`.
///
/// Stops at the first failure and names it in [`VerifyReport::first_bad`]. Store errors while
/// scanning are reported as a failure at the seq being read rather than returned, so the
/// result is always a report.
pub fn verify(tree: &sled::Tree, signer: &VerifyingKey) -> VerifyReport {
    let mut expected: u64 = 0;
    let mut prev_hash = GENESIS_PREV_HASH;

    let fail = |seq: u64, reason: String, prev_hash: [u8; 32]| {
        tracing::warn!(seq, %reason, "audit log verification failed");
        VerifyReport {
            ok: false,
            entries: seq,
            first_bad: Some(BadEntry { seq, reason }),
            head_hash: hex::encode(prev_hash),
        }
    };

    for item in tree.iter() {
        let (k, v) = match item {
            Ok(kv) => kv,
            Err(e) => return fail(expected, format!("store error: {e}"), prev_hash),
        };
        let Some(seq) = key_seq(&k) else {
            return fail(
                expected,
                format!("storage key of {} bytes, expected 8", k.len()),
                prev_hash,
            );
        };
        if seq != expected {
            // Keys are iterated in order, so a larger key means `expected` was removed.
            return fail(
                expected,
                format!("entry {expected} is missing (next stored entry is {seq})"),
                prev_hash,
            );
        }
        let entry = match AuditEntry::decode(seq, &v) {
            Ok(e) => e,
            Err(e) => return fail(seq, e.to_string(), prev_hash),
        };
        if let Err(reason) = check_entry(&entry, seq, &prev_hash, signer) {
            return fail(seq, reason, prev_hash);
        }
        prev_hash = entry.hash;
        expected = match expected.checked_add(1) {
            Some(n) => n,
            None => return fail(seq, "seq space exhausted".into(), prev_hash),
        };
    }

    tracing::debug!(entries = expected, "audit log verified");
    VerifyReport {
        ok: true,
        entries: expected,
        first_bad: None,
        head_hash: hex::encode(prev_hash),
    }
}

/// Checks one decoded entry stored under key `seq` against the chain so far.
fn check_entry(
    entry: &AuditEntry,
    seq: u64,
    prev_hash: &[u8; 32],
    signer: &VerifyingKey,
) -> Result<(), String> {
    if entry.seq != seq {
        return Err(format!(
            "entry stored under key {seq} claims seq {}",
            entry.seq
        ));
    }
    if &entry.prev_hash != prev_hash {
        return Err(match seq.checked_sub(1) {
            Some(p) => format!("prev_hash does not match hash of entry {p}"),
            None => "genesis entry has a non-zero prev_hash".to_owned(),
        });
    }
    let computed = entry.compute_hash().map_err(|e| e.to_string())?;
    if computed != entry.hash {
        return Err("hash does not match the entry's contents".to_owned());
    }
    if !entry.signature_valid(signer) {
        return Err("signature does not verify against the signer key".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{filled_log, payment, temp_db, test_key};
    use super::super::{AuditEntry, AuditKind, AuditLog, seq_key};
    use super::*;

    fn check(log: &AuditLog) -> VerifyReport {
        verify(log.tree(), &test_key(1).verifying_key())
    }

    #[test]
    fn intact_log_verifies() {
        let (_dir, _db, log) = filled_log(10);
        let report = check(&log);
        assert_eq!(
            report,
            VerifyReport {
                ok: true,
                entries: 10,
                first_bad: None,
                head_hash: hex::encode(log.head().1),
            }
        );
        let (_dir2, db2) = temp_db();
        let empty = verify(
            &db2.open_tree("audit").unwrap(),
            &test_key(1).verifying_key(),
        );
        assert!(empty.ok);
        assert_eq!(empty.entries, 0);
    }

    #[test]
    fn wrong_verifying_key_fails_at_genesis() {
        let (_dir, _db, log) = filled_log(3);
        let report = verify(log.tree(), &test_key(2).verifying_key());
        assert!(!report.ok);
        let bad = report.first_bad.unwrap();
        assert_eq!(bad.seq, 0);
        assert!(bad.reason.contains("signature"), "{}", bad.reason);
    }

    #[test]
    fn every_single_byte_flip_in_entry_3_is_caught_at_seq_3() {
        let (_dir, _db, log) = filled_log(6);
        let tree = log.tree();
        let original = tree.get(seq_key(3)).unwrap().unwrap().to_vec();
        for i in 0..original.len() {
            let mut tampered = original.clone();
            tampered[i] ^= 0x01;
            tree.insert(seq_key(3), tampered).unwrap();
            let report = check(&log);
            assert!(!report.ok, "flip at byte {i} went unnoticed");
            assert_eq!(report.entries, 3);
            let bad = report.first_bad.unwrap();
            assert_eq!(bad.seq, 3, "flip at byte {i}: {}", bad.reason);
        }
        tree.insert(seq_key(3), original).unwrap();
        assert!(check(&log).ok);
    }

    #[test]
    fn deleted_entry_is_a_gap() {
        let (_dir, _db, log) = filled_log(6);
        log.tree().remove(seq_key(2)).unwrap();
        let bad = check(&log).first_bad.unwrap();
        assert_eq!(bad.seq, 2);
        assert!(bad.reason.contains("missing"), "{}", bad.reason);
    }

    #[test]
    fn deleting_the_genesis_entry_is_detected() {
        let (_dir, _db, log) = filled_log(3);
        log.tree().remove(seq_key(0)).unwrap();
        assert_eq!(check(&log).first_bad.unwrap().seq, 0);
    }

    #[test]
    fn swapped_entries_are_detected() {
        let (_dir, _db, log) = filled_log(6);
        let tree = log.tree();
        let a = tree.get(seq_key(3)).unwrap().unwrap();
        let b = tree.get(seq_key(4)).unwrap().unwrap();
        tree.insert(seq_key(3), b).unwrap();
        tree.insert(seq_key(4), a).unwrap();
        let bad = check(&log).first_bad.unwrap();
        assert_eq!(bad.seq, 3);
        assert!(bad.reason.contains("claims seq 4"), "{}", bad.reason);
    }

    #[test]
    fn renumbered_entry_is_detected() {
        // Delete entry 2 and move entry 3 into its slot with its seq rewritten: the seq is
        // contiguous again but the hash no longer matches.
        let (_dir, _db, log) = filled_log(5);
        let tree = log.tree();
        let mut moved = AuditEntry::decode(3, &tree.get(seq_key(3)).unwrap().unwrap()).unwrap();
        moved.seq = 2;
        tree.remove(seq_key(3)).unwrap();
        tree.insert(seq_key(2), moved.encode().unwrap()).unwrap();
        let bad = check(&log).first_bad.unwrap();
        assert_eq!(bad.seq, 2);
    }

    #[test]
    fn entry_signed_by_another_key_is_detected() {
        let (_dir, _db, log) = filled_log(4);
        let (next_seq, last_hash) = log.head();
        // A well-formed, correctly chained entry whose only fault is the signer.
        let forged = AuditEntry::sign(
            next_seq,
            1_700_000_000_000,
            AuditKind::CreditAdded.as_str(),
            {
                let mut b = Vec::new();
                ciborium::into_writer(&payment(9), &mut b).unwrap();
                b
            },
            last_hash,
            &test_key(2),
        )
        .unwrap();
        log.tree()
            .insert(seq_key(next_seq), forged.encode().unwrap())
            .unwrap();
        let report = check(&log);
        assert_eq!(report.entries, 4);
        let bad = report.first_bad.unwrap();
        assert_eq!(bad.seq, 4);
        assert!(bad.reason.contains("signature"), "{}", bad.reason);
    }

    #[test]
    fn resigned_rewrite_by_the_same_key_still_breaks_the_chain() {
        // Someone holding the key rewrites entry 1's payload and re-signs it; entry 2 still
        // points at the old hash.
        let (_dir, _db, log) = filled_log(4);
        let tree = log.tree();
        let old = AuditEntry::decode(1, &tree.get(seq_key(1)).unwrap().unwrap()).unwrap();
        let rewritten = AuditEntry::sign(
            1,
            old.time_ms,
            &old.kind,
            vec![0xf6],
            old.prev_hash,
            &test_key(1),
        )
        .unwrap();
        tree.insert(seq_key(1), rewritten.encode().unwrap())
            .unwrap();
        let bad = check(&log).first_bad.unwrap();
        assert_eq!(bad.seq, 2);
        assert!(bad.reason.contains("prev_hash"), "{}", bad.reason);
    }

    #[test]
    fn report_serializes_for_json_output() {
        let (_dir, _db, log) = filled_log(2);
        log.tree().remove(seq_key(1)).unwrap();
        log.tree().insert(seq_key(5), &b"x"[..]).unwrap();
        let json = serde_json::to_value(check(&log)).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["entries"], 1);
        assert_eq!(json["first_bad"]["seq"], 1);
    }
}
