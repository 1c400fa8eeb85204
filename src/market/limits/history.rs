//! The payment history the limits count, read from the payer's own audit log.

use std::collections::HashMap;

use serde::Deserialize;

use super::LimitsError;
use crate::audit::{AuditKind, AuditLog};

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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    InFlight,
    Succeeded,
    Failed,
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
/// # Errors
/// [`LimitsError::Audit`] if an entry cannot be read and [`LimitsError::BadEntry`] if a
/// payment entry's payload is malformed: the history is then unknown and the caller must
/// refuse to pay (fail closed).
pub fn history_from_audit(log: &AuditLog) -> Result<Vec<PastPayment>, LimitsError> {
    let mut records: Vec<(PastPayment, Outcome)> = Vec::new();
    let mut by_hash: HashMap<String, usize> = HashMap::new();
    for entry in log.entries(0) {
        let entry = entry?;
        let Some(kind) = entry.audit_kind() else {
            continue;
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
                let past = PastPayment {
                    at,
                    amount_sat: a.amount_sat,
                    fee_sat: a.fee_limit_msat.unwrap_or(0).div_ceil(1000),
                    provider: a.provider.unwrap_or_default(),
                    lease_id: a.lease_id.unwrap_or_default(),
                };
                // A hash settles at most once, so a retry (after a failure, or resumed after
                // a crash) replaces the earlier attempt instead of counting twice.
                match by_hash.get(&a.payment_hash).map(|&i| &mut records[i]) {
                    Some((_, Outcome::Succeeded)) => {}
                    Some(rec) => *rec = (past, Outcome::InFlight),
                    None => {
                        by_hash.insert(a.payment_hash, records.len());
                        records.push((past, Outcome::InFlight));
                    }
                }
            }
            AuditKind::PaymentSucceeded => {
                let s: SucceededPayload = entry.payload_as().map_err(bad)?;
                let (amount_sat, fee_sat) =
                    (s.amount_msat.div_ceil(1000), s.fee_msat.div_ceil(1000));
                match by_hash.get(&s.payment_hash).map(|&i| &mut records[i]) {
                    Some((_, Outcome::Succeeded)) => {
                        tracing::debug!(seq = entry.seq, "duplicate payment_succeeded ignored");
                    }
                    Some((past, outcome)) => {
                        (past.amount_sat, past.fee_sat, *outcome) =
                            (amount_sat, fee_sat, Outcome::Succeeded);
                    }
                    None => {
                        tracing::warn!(seq = entry.seq, hash = %s.payment_hash, "payment succeeded without a recorded attempt; counting it");
                        by_hash.insert(s.payment_hash, records.len());
                        let past = PastPayment {
                            at,
                            amount_sat,
                            fee_sat,
                            provider: s.provider.unwrap_or_default(),
                            lease_id: String::new(),
                        };
                        records.push((past, Outcome::Succeeded));
                    }
                }
            }
            AuditKind::PaymentFailed => {
                let f: FailedPayload = entry.payload_as().map_err(bad)?;
                if let Some((_, outcome)) = by_hash.get(&f.payment_hash).map(|&i| &mut records[i])
                    && *outcome == Outcome::InFlight
                {
                    *outcome = Outcome::Failed;
                }
            }
            _ => {}
        }
    }
    let mut out: Vec<PastPayment> = records
        .into_iter()
        .filter(|(_, o)| *o != Outcome::Failed)
        .map(|(p, _)| p)
        .collect();
    // A retry moves its record's time; keep the promised order (stable for equal times).
    out.sort_by_key(|p| p.at);
    Ok(out)
}
