//! The payment history the limits count, read from the payer's own audit log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::LimitsError;
use crate::audit::{AuditEntry, AuditKind, AuditLog};

/// A payment already made (or in flight), as counted by the limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PastPayment {
    /// Unix seconds of the attempt.
    pub at: u64,
    /// Amount in sat, excluding fees.
    pub amount_sat: u64,
    /// Routing fee in sat: the fee paid, or the fee limit while the outcome is unknown.
    pub fee_sat: u64,
    /// Provider PeerId.
    pub provider: String,
    /// Lease id (may be empty if the audit entry had none).
    pub lease_id: String,
}

#[derive(Deserialize)]
struct AttemptPayload {
    payment_hash: String,
    amount_sat: u64,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    lease_id: Option<String>,
    /// Older entries lack it; such an in-flight payment then counts without a fee.
    #[serde(default)]
    fee_limit_msat: Option<u64>,
}

#[derive(Deserialize)]
struct SucceededPayload {
    payment_hash: String,
    amount_msat: u64,
    #[serde(default)]
    fee_msat: u64,
    #[serde(default)]
    provider: Option<String>,
}

#[derive(Deserialize)]
struct FailedPayload {
    payment_hash: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Outcome {
    InFlight,
    Succeeded,
    Failed,
}

/// One payment hash as the history folds it: the payment, its outcome so far, and the seq of
/// the entry that first recorded it (ties of `at` keep that order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    at: u64,
    amount_sat: u64,
    fee_sat: u64,
    provider: String,
    lease_id: String,
    outcome: Outcome,
    first_seq: u64,
}

impl Record {
    fn past(&self) -> PastPayment {
        PastPayment {
            at: self.at,
            amount_sat: self.amount_sat,
            fee_sat: self.fee_sat,
            provider: self.provider.clone(),
            lease_id: self.lease_id.clone(),
        }
    }
}

/// Where the fold keeps its records: a map in memory, or the index's sled tree.
trait Records {
    fn get(&mut self, hash: &str) -> Result<Option<Record>, LimitsError>;
    fn put(&mut self, hash: String, rec: Record);
}

impl Records for HashMap<String, Record> {
    fn get(&mut self, hash: &str) -> Result<Option<Record>, LimitsError> {
        Ok(HashMap::get(self, hash).cloned())
    }
    fn put(&mut self, hash: String, rec: Record) {
        self.insert(hash, rec);
    }
}

/// Folds one audit entry into the records (entries that are not payments change nothing).
/// The rules are those of [`history_from_audit`].
fn apply(entry: &AuditEntry, records: &mut dyn Records) -> Result<(), LimitsError> {
    let Some(kind) = entry.audit_kind() else {
        return Ok(());
    };
    let bad = |e: crate::audit::AuditError| LimitsError::BadEntry {
        seq: entry.seq,
        kind: entry.kind.clone(),
        reason: e.to_string(),
    };
    let at = entry.time_ms / 1000;
    match kind {
        AuditKind::PaymentAttempt => {
            let a: AttemptPayload = entry.payload_as().map_err(bad)?;
            let old = records.get(&a.payment_hash)?;
            // A hash settles at most once, so a retry (after a failure, or resumed after a
            // crash) replaces the earlier attempt instead of counting twice.
            if old
                .as_ref()
                .is_some_and(|r| r.outcome == Outcome::Succeeded)
            {
                return Ok(());
            }
            let rec = Record {
                at,
                amount_sat: a.amount_sat,
                fee_sat: a.fee_limit_msat.unwrap_or(0).div_ceil(1000),
                provider: a.provider.unwrap_or_default(),
                lease_id: a.lease_id.unwrap_or_default(),
                outcome: Outcome::InFlight,
                first_seq: old.map_or(entry.seq, |r| r.first_seq),
            };
            records.put(a.payment_hash, rec);
        }
        AuditKind::PaymentSucceeded => {
            let s: SucceededPayload = entry.payload_as().map_err(bad)?;
            let (amount_sat, fee_sat) = (s.amount_msat.div_ceil(1000), s.fee_msat.div_ceil(1000));
            match records.get(&s.payment_hash)? {
                Some(r) if r.outcome == Outcome::Succeeded => {
                    tracing::debug!(seq = entry.seq, "duplicate payment_succeeded ignored");
                }
                Some(r) => {
                    let rec = Record {
                        amount_sat,
                        fee_sat,
                        outcome: Outcome::Succeeded,
                        ..r
                    };
                    records.put(s.payment_hash, rec);
                }
                None => {
                    tracing::warn!(seq = entry.seq, hash = %s.payment_hash, "payment succeeded without a recorded attempt; counting it");
                    let rec = Record {
                        at,
                        amount_sat,
                        fee_sat,
                        provider: s.provider.unwrap_or_default(),
                        lease_id: String::new(),
                        outcome: Outcome::Succeeded,
                        first_seq: entry.seq,
                    };
                    records.put(s.payment_hash, rec);
                }
            }
        }
        AuditKind::PaymentFailed => {
            let f: FailedPayload = entry.payload_as().map_err(bad)?;
            if let Some(r) = records.get(&f.payment_hash)?
                && r.outcome == Outcome::InFlight
            {
                let rec = Record {
                    outcome: Outcome::Failed,
                    ..r
                };
                records.put(f.payment_hash, rec);
            }
        }
        _ => {}
    }
    Ok(())
}

/// The payments that count, oldest first (equal times in the order first recorded).
fn counted(records: impl IntoIterator<Item = Record>) -> Vec<PastPayment> {
    let mut recs: Vec<Record> = records
        .into_iter()
        .filter(|r| r.outcome != Outcome::Failed)
        .collect();
    recs.sort_by_key(|r| (r.at, r.first_seq));
    recs.iter().map(Record::past).collect()
}

/// Reads every payment of the audit log (kinds `payment_attempt`, `payment_succeeded`,
/// `payment_failed`) into the history the limits count, oldest first.
///
/// A payment counts unless it failed: a succeeded one with its amount and the fee paid, one
/// with an attempt but no outcome yet (in flight, or the node crashed) with its amount and
/// its fee limit. Each payment hash counts at most once, as Lightning settles it at most
/// once: an outcome applies to the attempt with that hash, a repeated attempt replaces an
/// earlier in-flight or failed one, a success without an attempt still counts (money moved), a late success after a recorded
/// failure turns it into a success, and a failure never cancels a recorded success. Amounts
/// in msat are rounded up.
///
/// This reads the whole log; a payer uses [`PaymentIndex`], which keeps the same history
/// beside the log and reads only the entries appended since its last call.
///
/// # Errors
/// [`LimitsError::Audit`] if an entry cannot be read and [`LimitsError::BadEntry`] if a
/// payment entry's payload is malformed: the history is then unknown and the caller must
/// refuse to pay (fail closed).
pub fn history_from_audit(log: &AuditLog) -> Result<Vec<PastPayment>, LimitsError> {
    let mut records: HashMap<String, Record> = HashMap::new();
    for entry in log.entries(0) {
        apply(&entry?, &mut records)?;
    }
    Ok(counted(records.into_values()))
}

/// Name of the index's sled tree.
pub const INDEX_TREE: &str = "limits_history";
/// Key of the next audit seq to index.
const CURSOR_KEY: &[u8] = b"cursor";
/// Prefix of the records, by payment hash.
const RECORD_PREFIX: &[u8] = b"p/";

/// The payment history kept incrementally beside the audit log, in its own sled tree: one
/// record per payment hash, and the seq of the next audit entry to fold in. Each
/// [`history`](PaymentIndex::history) folds in only the entries appended since the last one
/// and reads the records, so its cost grows with the payments made, not with the log (hellos,
/// handshakes, offers). The tree holds nothing the log does not: missing, unreadable or behind
/// a log that was replaced, it is rebuilt from the log. It is not flushed on its own: after a
/// crash it is at worst behind, and catches up from the log.
#[derive(Clone)]
pub struct PaymentIndex {
    tree: sled::Tree,
    /// One catch-up at a time: two would fold the same entries concurrently.
    fold: Arc<Mutex<()>>,
}

struct TreeRecords<'a> {
    tree: &'a sled::Tree,
    /// Records changed by this catch-up, written with the cursor in one batch.
    dirty: HashMap<String, Record>,
}

impl Records for TreeRecords<'_> {
    fn get(&mut self, hash: &str) -> Result<Option<Record>, LimitsError> {
        if let Some(r) = self.dirty.get(hash) {
            return Ok(Some(r.clone()));
        }
        match self.tree.get(record_key(hash)).map_err(index_error)? {
            None => Ok(None),
            Some(raw) => ciborium::from_reader(raw.as_ref())
                .map(Some)
                .map_err(|e| LimitsError::Index(format!("record of {hash}: {e}"))),
        }
    }
    fn put(&mut self, hash: String, rec: Record) {
        self.dirty.insert(hash, rec);
    }
}

fn record_key(hash: &str) -> Vec<u8> {
    [RECORD_PREFIX, hash.as_bytes()].concat()
}

fn index_error(e: sled::Error) -> LimitsError {
    LimitsError::Index(e.to_string())
}

impl PaymentIndex {
    /// Opens (creating) the index tree in `db`, the database of the audit log it follows.
    ///
    /// # Errors
    /// [`LimitsError::Index`] when the tree cannot be opened.
    pub fn open(db: &sled::Db) -> Result<PaymentIndex, LimitsError> {
        Ok(PaymentIndex {
            tree: db.open_tree(INDEX_TREE).map_err(index_error)?,
            fold: Arc::new(Mutex::new(())),
        })
    }

    /// The history [`history_from_audit`] would read from `log`, from the index after folding
    /// in the entries appended since the last call.
    ///
    /// # Errors
    /// As [`history_from_audit`] for the new entries (fail closed), and
    /// [`LimitsError::Index`] when the index cannot be read or written even after a rebuild.
    pub fn history(&self, log: &AuditLog) -> Result<Vec<PastPayment>, LimitsError> {
        let _one = self.fold.lock().unwrap_or_else(PoisonError::into_inner);
        match self.catch_up(log) {
            Err(LimitsError::Index(e)) => {
                tracing::warn!(error = %e, "payment history index unreadable; rebuilding it from the audit log");
                self.tree.clear().map_err(index_error)?;
                self.catch_up(log)
            }
            other => other,
        }
    }

    fn catch_up(&self, log: &AuditLog) -> Result<Vec<PastPayment>, LimitsError> {
        let mut cursor = match self.tree.get(CURSOR_KEY).map_err(index_error)? {
            None => 0,
            Some(raw) => u64::from_be_bytes(
                <[u8; 8]>::try_from(raw.as_ref())
                    .map_err(|_| LimitsError::Index("cursor is not 8 bytes".into()))?,
            ),
        };
        if cursor > log.len() {
            // The index is ahead of the log: it follows another log. Start over.
            return Err(LimitsError::Index(format!(
                "index at seq {cursor}, log has {} entries",
                log.len()
            )));
        }
        let mut records = TreeRecords {
            tree: &self.tree,
            dirty: HashMap::new(),
        };
        for entry in log.entries(cursor) {
            let entry = entry?;
            apply(&entry, &mut records)?;
            cursor = entry.seq + 1;
        }
        if !records.dirty.is_empty() || self.tree.get(CURSOR_KEY).map_err(index_error)?.is_none() {
            let mut batch = sled::Batch::default();
            for (hash, rec) in &records.dirty {
                let mut buf = Vec::new();
                ciborium::into_writer(rec, &mut buf)
                    .map_err(|e| LimitsError::Index(e.to_string()))?;
                batch.insert(record_key(hash), buf);
            }
            batch.insert(CURSOR_KEY, &cursor.to_be_bytes());
            self.tree.apply_batch(batch).map_err(index_error)?;
        } else {
            self.tree
                .insert(CURSOR_KEY, &cursor.to_be_bytes())
                .map_err(index_error)?;
        }
        let mut all = Vec::new();
        for item in self.tree.scan_prefix(RECORD_PREFIX) {
            let (k, v) = item.map_err(index_error)?;
            let rec: Record = ciborium::from_reader(v.as_ref()).map_err(|e| {
                LimitsError::Index(format!("record {}: {e}", String::from_utf8_lossy(&k)))
            })?;
            all.push(rec);
        }
        Ok(counted(all))
    }
}
