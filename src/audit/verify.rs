//! Full verification of an audit tree (format in the parent module docs).
//!
//! The tree is read in order in windows of [`WINDOW`] entries, the next one while the current
//! one is checked. Each window is split into chunks of [`CHUNK`] entries that one thread per
//! core (and the reading thread, once it is done) take in turn. A chunk decodes its entries, checks seqs, links and hashes in order, then
//! checks the signatures of the entries that passed with Ed25519 batch verification, falling
//! back to one strict check per entry when a batch fails so the first bad entry is named
//! exactly. The chunks' results are then merged in seq order (including the link between the
//! last entry of one chunk and the first of the next), so the report is the one a single
//! sequential pass would give.

use std::sync::atomic::{AtomicUsize, Ordering};

use ed25519_dalek::{Signature, VerifyingKey, verify_batch};
use serde::Serialize;

use super::merkle::{Hash, SignedTreeHead, leaf_hash, node_hash};
use super::{AuditEntry, GENESIS_PREV_HASH, entries_in, key_seq, sig_message};

/// Entries read before the checks of a window start; bounds memory for long logs. (Small in
/// tests, so that short logs exercise several windows, chunks and signature batches.)
const WINDOW: usize = if cfg!(test) { 700 } else { 16 * 1024 };
/// Entries per chunk, the unit of work a thread takes (two signature batches).
const CHUNK: usize = if cfg!(test) { 100 } else { 2048 };
/// Signatures per `verify_batch` call: large enough for the multiscalar speed-up, small
/// enough that the per-entry fallback after a failed batch stays cheap.
const SIG_BATCH: usize = if cfg!(test) { 64 } else { 1024 };

const SIG_REASON: &str = "signature does not verify against the signer key";

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
    /// The checks against kept signed heads ([`verify_with_heads`]); empty when none.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub kept_heads: Vec<KeptHeadCheck>,
}

/// The check of the log against one signed tree head kept outside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptHeadCheck {
    /// Entries the head covers.
    pub size: u64,
    /// When the head was signed (ms since the Unix epoch).
    pub time_ms: u64,
    /// The head's Merkle root (hex).
    pub root: String,
    /// Whether the log extends this head.
    pub ok: bool,
    /// Why not (empty when `ok`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// [`verify`], then checks that the log extends every head in `kept` (signed tree heads
/// kept outside the database, see [`super::head_file`]): each must be signed by `signer`,
/// cover no more entries than the log holds (otherwise entries were removed from its end:
/// truncation), and have the Merkle root of the log's first `size` entries, recomputed from
/// the entries themselves (otherwise they were rewritten).
///
/// A failed head check makes the report fail with `first_bad` at the log's length (for a
/// truncation) or at 0 (for a rewrite), unless an entry failed first.
pub fn verify_with_heads(
    tree: &sled::Tree,
    signer: &VerifyingKey,
    kept: &[SignedTreeHead],
) -> VerifyReport {
    let mut report = verify(tree, signer);
    for sth in kept {
        let head = sth.head;
        let problem = if sth.signer != signer.to_bytes() || sth.verify().is_err() {
            Some("kept head is not signed by the log's key".to_owned())
        } else if head.size > report.entries {
            Some(format!(
                "log truncated: a head signed at {} ms covers {} entries, the log verifies {}",
                head.time_ms, head.size, report.entries
            ))
        } else {
            match root_from_entries(tree, head.size) {
                Ok(root) if root == head.root => None,
                Ok(_) => Some(format!(
                    "log rewritten: its first {} entries do not have the root of the head signed at {} ms",
                    head.size, head.time_ms
                )),
                Err(e) => Some(format!("cannot recompute the root: {e}")),
            }
        };
        if let Some(reason) = &problem
            && report.ok
        {
            tracing::warn!(%reason, "audit log does not extend a kept head");
            report.ok = false;
            let seq = if head.size > report.entries {
                report.entries
            } else {
                0
            };
            report.first_bad = Some(BadEntry {
                seq,
                reason: reason.clone(),
            });
        }
        report.kept_heads.push(KeptHeadCheck {
            size: head.size,
            time_ms: head.time_ms,
            root: hex::encode(head.root),
            ok: problem.is_none(),
            reason: problem.unwrap_or_default(),
        });
    }
    report
}

/// The Merkle root of the first `size` entries of `tree`, from their stored chain hashes
/// (streaming, O(log n) memory; the stored Merkle nodes are not trusted).
fn root_from_entries(tree: &sled::Tree, size: u64) -> Result<Hash, super::AuditError> {
    // Perfect subtrees of decreasing height, left to right, as (height, root).
    let mut stack: Vec<(u32, Hash)> = Vec::new();
    let mut n = 0u64;
    for entry in entries_in(tree, 0).take(usize::try_from(size).unwrap_or(usize::MAX)) {
        let entry = entry?;
        let mut item = (0u32, leaf_hash(&entry.hash));
        while let Some(&(height, left)) = stack.last() {
            if height != item.0 {
                break;
            }
            stack.pop();
            item = (height + 1, node_hash(&left, &item.1));
        }
        stack.push(item);
        n += 1;
    }
    if n != size {
        return Err(super::AuditError::Decode {
            what: "entries".into(),
            reason: format!("{n} readable entries, expected {size}"),
        });
    }
    let Some((_, mut root)) = stack.pop() else {
        return Ok(super::merkle::empty_root());
    };
    while let Some((_, left)) = stack.pop() {
        root = node_hash(&left, &root);
    }
    Ok(root)
}

/// Verifies a whole audit tree: entries decode, seqs are contiguous from 0, every `prev_hash`
/// links to the previous entry's hash, every hash recomputes, and every signature verifies
/// (strictly) against `signer`.
///
/// Stops at the first failure and names it in [`VerifyReport::first_bad`]. Store errors while
/// scanning are reported as a failure at the seq being read rather than returned, so the
/// result is always a report. Uses all cores (see the module docs) and blocks until done.
pub fn verify(tree: &sled::Tree, signer: &VerifyingKey) -> VerifyReport {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut expected: u64 = 0;
    let mut prev_hash = GENESIS_PREV_HASH;
    let mut iter = tree.iter();

    let fail = |seq: u64, reason: String, prev_hash: [u8; 32]| {
        tracing::warn!(seq, %reason, "audit log verification failed");
        VerifyReport {
            ok: false,
            entries: seq,
            first_bad: Some(BadEntry { seq, reason }),
            head_hash: hex::encode(prev_hash),
            kept_heads: Vec::new(),
        }
    };

    let mut window = read_window(&mut iter, &mut expected);
    loop {
        let last = window.stop.is_some() || window.exhausted;
        let chunks: Vec<&[(u64, sled::IVec)]> = window.entries.chunks(CHUNK).collect();
        let next_chunk = AtomicUsize::new(0);
        // Workers take chunks in turn until none is left, so a worker that the OS preempts
        // does not leave the others idle at the end of the window.
        let work = || {
            let mut done = Vec::new();
            while let Some(chunk) = chunks.get(next_chunk.fetch_add(1, Ordering::Relaxed)) {
                done.push((
                    chunk.first().map_or(0, |(seq, _)| *seq),
                    check_chunk(chunk, signer),
                ));
            }
            done
        };
        // Check this window on every core while this thread reads the next one, then help.
        let (mut outcomes, next) = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
            let next = (!last).then(|| read_window(&mut iter, &mut expected));
            let mut outcomes = work();
            for h in handles {
                match h.join() {
                    Ok(done) => outcomes.extend(done),
                    // A panic while checking is a bug; propagate it as one.
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            (outcomes, next)
        });
        outcomes.sort_unstable_by_key(|(first_seq, _)| *first_seq);
        for (first_seq, outcome) in outcomes {
            if let Some(first_prev) = outcome.first_prev
                && first_prev != prev_hash
            {
                return fail(first_seq, link_reason(first_seq), prev_hash);
            }
            if let Some(bad) = outcome.failure {
                let head = bad.hash_before.unwrap_or(prev_hash);
                return fail(first_seq + bad.index as u64, bad.reason, head);
            }
            prev_hash = outcome.last_hash;
        }
        if let Some((seq, reason)) = window.stop {
            return fail(seq, reason, prev_hash);
        }
        match next {
            Some(n) => window = n,
            None => break,
        }
    }

    tracing::debug!(entries = expected, "audit log verified");
    VerifyReport {
        ok: true,
        entries: expected,
        first_bad: None,
        head_hash: hex::encode(prev_hash),
        kept_heads: Vec::new(),
    }
}

/// Up to [`WINDOW`] consecutive stored entries, read in key order.
struct Window {
    entries: Vec<(u64, sled::IVec)>,
    /// A problem with the keys themselves (store error, bad key, gap) that ended the read:
    /// reported only if every entry before it verifies.
    stop: Option<(u64, String)>,
    /// The tree has no more entries.
    exhausted: bool,
}

/// Reads the next window; `expected` is the seq the next stored key must have.
fn read_window(iter: &mut sled::Iter, expected: &mut u64) -> Window {
    let mut entries = Vec::with_capacity(WINDOW);
    let mut stop = None;
    let mut exhausted = false;
    while entries.len() < WINDOW {
        let Some(item) = iter.next() else {
            exhausted = true;
            break;
        };
        let (k, v) = match item {
            Ok(kv) => kv,
            Err(e) => {
                stop = Some((*expected, format!("store error: {e}")));
                break;
            }
        };
        let Some(seq) = key_seq(&k) else {
            stop = Some((
                *expected,
                format!("storage key of {} bytes, expected 8", k.len()),
            ));
            break;
        };
        if seq != *expected {
            // Keys are iterated in order, so a larger key means `expected` was removed.
            stop = Some((
                *expected,
                format!("entry {expected} is missing (next stored entry is {seq})"),
            ));
            break;
        }
        entries.push((seq, v));
        // Seqs are contiguous from 0, so u64::MAX cannot be reached by a real log.
        *expected = expected.saturating_add(1);
    }
    Window {
        entries,
        stop,
        exhausted,
    }
}

/// What one chunk of consecutive entries found.
struct ChunkOutcome {
    /// `prev_hash` of the chunk's first entry, if that entry got as far as the link check
    /// (decoded, right seq). The link to the previous chunk is checked when merging.
    first_prev: Option<[u8; 32]>,
    /// Stored hash of the chunk's last entry (meaningful only without a failure).
    last_hash: [u8; 32],
    /// The chunk's first failure, if any.
    failure: Option<ChunkFailure>,
}

struct ChunkFailure {
    /// Position of the bad entry in the chunk.
    index: usize,
    reason: String,
    /// Hash of the entry before it in the chunk (`None` when it is the chunk's first).
    hash_before: Option<[u8; 32]>,
}

/// Checks consecutive entries: in order the seq, link, and hash of each, then the signatures
/// of every entry before the first failure. An entry fails on the first check it fails, in
/// the order seq, link, hash, signature, as a sequential pass would report it.
fn check_chunk(chunk: &[(u64, sled::IVec)], signer: &VerifyingKey) -> ChunkOutcome {
    let mut first_prev = None;
    let mut prev = GENESIS_PREV_HASH;
    // (hash, signature) of every entry that passed the structural checks, in order.
    let mut signed: Vec<([u8; 32], [u8; 64])> = Vec::with_capacity(chunk.len());
    let mut structural: Option<(usize, String)> = None;

    for (i, (seq, bytes)) in chunk.iter().enumerate() {
        let seq = *seq;
        let entry = match AuditEntry::decode(seq, bytes) {
            Ok(e) => e,
            Err(e) => {
                structural = Some((i, e.to_string()));
                break;
            }
        };
        if entry.seq != seq {
            structural = Some((
                i,
                format!("entry stored under key {seq} claims seq {}", entry.seq),
            ));
            break;
        }
        if i == 0 {
            first_prev = Some(entry.prev_hash);
        } else if entry.prev_hash != prev {
            structural = Some((i, link_reason(seq)));
            break;
        }
        match entry.compute_hash() {
            Ok(h) if h == entry.hash => {}
            Ok(_) => {
                structural = Some((i, "hash does not match the entry's contents".to_owned()));
                break;
            }
            Err(e) => {
                structural = Some((i, e.to_string()));
                break;
            }
        }
        signed.push((entry.hash, entry.sig));
        prev = entry.hash;
    }

    // Every entry before `structural` is in `signed`, so a bad signature comes first.
    let failure = match (first_bad_signature(&signed, signer), structural) {
        (Some(index), _) => Some((index, SIG_REASON.to_owned())),
        (None, other) => other,
    }
    .map(|(index, reason)| ChunkFailure {
        index,
        reason,
        hash_before: index
            .checked_sub(1)
            .and_then(|i| signed.get(i))
            .map(|(hash, _)| *hash),
    });
    ChunkOutcome {
        first_prev,
        last_hash: prev,
        failure,
    }
}

/// Index of the first signature in `signed` that does not verify strictly, if any.
///
/// Batches of [`SIG_BATCH`] are checked with `verify_batch`. A batch that fails is checked
/// again one `verify_strict` at a time, which names the bad entry exactly. `verify_batch` accepts
/// every signature `verify_strict` accepts; the converse fails only for signatures crafted
/// with the signing key itself (small-order or non-canonical R), which a holder of the key
/// does not need in order to write entries that verify. A weak (small-order) signer key is
/// rejected by `verify_strict` only, so then every signature is checked that way.
fn first_bad_signature(signed: &[([u8; 32], [u8; 64])], signer: &VerifyingKey) -> Option<usize> {
    let strict_ok = |(hash, sig): &([u8; 32], [u8; 64])| {
        signer
            .verify_strict(&sig_message(hash), &Signature::from_bytes(sig))
            .is_ok()
    };
    if signer.is_weak() {
        return signed.iter().position(|item| !strict_ok(item));
    }
    for (b, batch) in signed.chunks(SIG_BATCH).enumerate() {
        let messages: Vec<Vec<u8>> = batch.iter().map(|(hash, _)| sig_message(hash)).collect();
        let messages: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let signatures: Vec<Signature> = batch
            .iter()
            .map(|(_, sig)| Signature::from_bytes(sig))
            .collect();
        let keys = vec![*signer; batch.len()];
        if verify_batch(&messages, &signatures, &keys).is_ok() {
            continue;
        }
        if let Some(i) = batch.iter().position(|item| !strict_ok(item)) {
            return Some(b * SIG_BATCH + i);
        }
    }
    None
}

/// Why the entry at `seq` does not link to its predecessor.
fn link_reason(seq: u64) -> String {
    match seq.checked_sub(1) {
        Some(p) => format!("prev_hash does not match hash of entry {p}"),
        None => "genesis entry has a non-zero prev_hash".to_owned(),
    }
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
                kept_heads: Vec::new(),
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

    /// The single-threaded, one-`verify_strict`-per-entry check this module used before batch
    /// verification: the parallel one must give the very same report.
    fn sequential_reference(tree: &sled::Tree, signer: &VerifyingKey) -> VerifyReport {
        let mut expected = 0u64;
        let mut prev_hash = GENESIS_PREV_HASH;
        let fail = |seq: u64, reason: String, prev_hash: [u8; 32]| VerifyReport {
            ok: false,
            entries: seq,
            first_bad: Some(BadEntry { seq, reason }),
            head_hash: hex::encode(prev_hash),
            kept_heads: Vec::new(),
        };
        for item in tree.iter() {
            let (k, v) = item.unwrap();
            let seq = key_seq(&k).unwrap();
            if seq != expected {
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
            let reason = if entry.seq != seq {
                Some(format!(
                    "entry stored under key {seq} claims seq {}",
                    entry.seq
                ))
            } else if entry.prev_hash != prev_hash {
                Some(link_reason(seq))
            } else if entry.compute_hash().unwrap() != entry.hash {
                Some("hash does not match the entry's contents".to_owned())
            } else if !entry.signature_valid(signer) {
                Some(SIG_REASON.to_owned())
            } else {
                None
            };
            if let Some(reason) = reason {
                return fail(seq, reason, prev_hash);
            }
            prev_hash = entry.hash;
            expected += 1;
        }
        VerifyReport {
            ok: true,
            entries: expected,
            first_bad: None,
            head_hash: hex::encode(prev_hash),
            kept_heads: Vec::new(),
        }
    }

    /// A log of `n` entries written with one batch append.
    fn batch_log(n: u64) -> (tempfile::TempDir, sled::Db, AuditLog) {
        let (dir, db) = temp_db();
        let log = AuditLog::open(&db, test_key(1)).unwrap();
        let entries = (0..n)
            .map(|i| (AuditKind::PaymentSucceeded, payment(i)))
            .collect();
        let range = futures::executor::block_on(log.append_batch(entries)).unwrap();
        assert_eq!(range, 0..n);
        (dir, db, log)
    }

    fn rewrite(tree: &sled::Tree, seq: u64, change: impl FnOnce(&mut AuditEntry)) {
        let mut e = AuditEntry::decode(seq, &tree.get(seq_key(seq)).unwrap().unwrap()).unwrap();
        change(&mut e);
        tree.insert(seq_key(seq), e.encode().unwrap()).unwrap();
    }

    #[test]
    fn one_bad_signature_among_many_is_named_exactly() {
        // 2000 entries: three windows, several chunks and signature batches per window.
        let (_dir, _db, log) = batch_log(2000);
        assert!(check(&log).ok);
        let tree = log.tree();
        let hash_1336 = AuditEntry::decode(1336, &tree.get(seq_key(1336)).unwrap().unwrap())
            .unwrap()
            .hash;
        rewrite(tree, 1337, |e| e.sig[5] ^= 0x10);
        rewrite(tree, 1900, |e| e.sig[9] ^= 0x01);
        let report = check(&log);
        assert_eq!(
            report,
            VerifyReport {
                ok: false,
                entries: 1337,
                first_bad: Some(BadEntry {
                    seq: 1337,
                    reason: SIG_REASON.to_owned()
                }),
                head_hash: hex::encode(hash_1336),
                kept_heads: Vec::new(),
            }
        );
        assert_eq!(
            report,
            sequential_reference(tree, &test_key(1).verifying_key())
        );
    }

    #[test]
    fn parallel_report_equals_the_sequential_one_for_every_kind_of_damage() {
        let (_dir, _db, log) = batch_log(1500);
        let tree = log.tree();
        let signer = test_key(1).verifying_key();
        // Window, chunk and signature-batch edges (in tests: windows of 700, chunks of 100,
        // batches of 64), and the ends of the log.
        let positions = [
            0u64, 1, 63, 64, 99, 100, 101, 350, 699, 700, 701, 1050, 1499,
        ];
        type Damage = fn(&sled::Tree, u64);
        let damages: [(&str, Damage); 7] = [
            ("signature", |t, s| rewrite(t, s, |e| e.sig[0] ^= 1)),
            ("hash", |t, s| rewrite(t, s, |e| e.hash[31] ^= 1)),
            ("prev_hash", |t, s| rewrite(t, s, |e| e.prev_hash[0] ^= 1)),
            ("payload", |t, s| rewrite(t, s, |e| e.payload.push(0))),
            ("claimed seq", |t, s| rewrite(t, s, |e| e.seq += 1)),
            ("garbage", |t, s| {
                t.insert(seq_key(s), &b"garbage"[..]).unwrap();
            }),
            ("deleted", |t, s| {
                t.remove(seq_key(s)).unwrap();
            }),
        ];
        for &pos in &positions {
            let original = tree.get(seq_key(pos)).unwrap().unwrap();
            for (name, damage) in &damages {
                damage(tree, pos);
                let report = verify(tree, &signer);
                assert_eq!(
                    report,
                    sequential_reference(tree, &signer),
                    "{name} at {pos}"
                );
                // Dropping the last entry is the one change the log alone cannot show.
                let expected = (*name != "deleted" || pos != 1499).then_some(pos);
                assert_eq!(report.first_bad.map(|b| b.seq), expected, "{name} at {pos}");
                tree.insert(seq_key(pos), original.clone()).unwrap();
            }
        }
        // Two faults: the earlier one is reported, whatever their kinds.
        rewrite(tree, 800, |e| e.sig[1] ^= 1);
        rewrite(tree, 420, |e| e.hash[0] ^= 1);
        let report = verify(tree, &signer);
        assert_eq!(report.first_bad.as_ref().map(|b| b.seq), Some(420));
        assert_eq!(report, sequential_reference(tree, &signer));
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
