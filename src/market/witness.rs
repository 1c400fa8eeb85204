//! Witnessing peers' audit logs: a node keeps, per peer, the latest signed tree head it has
//! seen of that peer's log, and checks each newer head against it with the consistency proof
//! the peer sends along (`headRequest` / `head`, docs/PROTOCOL.md §18). Two heads that cannot
//! both be true (a fork, or a head smaller than one signed before: a rollback) are evidence,
//! kept with both signed heads and the proof, and audited.

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::MarketError;
use super::store::{Store, Table};
use crate::audit::merkle::{Hash, judge_heads};
use crate::audit::{AuditKind, AuditLog, HeadVerdict, SignedTreeHead};
use crate::types::now_unix_ms;
use crate::wire::HeadReply;
use crate::wire::signed::peer_id_of;

/// The latest head of one peer's log this node has seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessedHead {
    /// The peer (PeerId).
    pub peer: String,
    /// Its head.
    pub head: SignedTreeHead,
    /// When this node received it (ms since the Unix epoch).
    pub seen_at_ms: u64,
}

/// Two signed heads of one peer's log that cannot both be true.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkEvidence {
    /// The peer (PeerId).
    pub peer: String,
    /// `"fork"` or `"rollback"`.
    pub kind: String,
    /// Why the heads conflict.
    pub reason: String,
    /// The head held before.
    pub old: SignedTreeHead,
    /// The conflicting head.
    pub new: SignedTreeHead,
    /// The consistency proof the peer sent with `new` (hex).
    pub proof: Vec<String>,
    /// When it was found (ms since the Unix epoch).
    pub found_at_ms: u64,
}

/// What one observed head told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The first head seen of this peer.
    First,
    /// It extends (or equals) the head held; it is now the one held.
    Extends,
    /// The reply's proof is not from the size held (the peer answered another question);
    /// nothing changed.
    Unproven,
    /// Evidence was found (and kept, once).
    Conflict(Box<ForkEvidence>),
}

/// Per-peer heads and evidence, on the node's store.
#[derive(Clone)]
pub struct Witness {
    heads: Table<WitnessedHead>,
    evidence: Table<ForkEvidence>,
    audit: AuditLog,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness").finish_non_exhaustive()
    }
}

impl Witness {
    /// Opens the witness tables of `db` (`witness_heads`, `witness_evidence`); evidence is
    /// also audited to `audit`.
    ///
    /// # Errors
    /// Store errors.
    pub fn open(db: &dyn Store, audit: AuditLog) -> Result<Self, MarketError> {
        Ok(Witness {
            heads: Table::open(db, "witness_heads")?,
            evidence: Table::open(db, "witness_evidence")?,
            audit,
        })
    }

    /// The size of `peer`'s head held (0: none): what to ask a proof from.
    ///
    /// # Errors
    /// Store errors.
    pub fn since_size(&self, peer: &PeerId) -> Result<u64, MarketError> {
        Ok(self
            .heads
            .get(&peer.to_string())?
            .map_or(0, |w| w.head.head.size))
    }

    /// Checks `reply` from `peer` against the head held, keeps it if it extends, and keeps
    /// and audits evidence if it conflicts.
    ///
    /// # Errors
    /// [`MarketError::Invalid`] when the head is malformed, badly signed, or signed by
    /// another key than `peer`'s; store errors.
    pub async fn observe(
        &self,
        peer: &PeerId,
        reply: &HeadReply,
    ) -> Result<Observation, MarketError> {
        let new = SignedTreeHead::from_wire(&reply.head)
            .map_err(|e| MarketError::Invalid(format!("head of {peer}: {e}")))?;
        let signer = new
            .signer_key()
            .map_err(|e| MarketError::Invalid(format!("head of {peer}: {e}")))?;
        if peer_id_of(&signer) != *peer {
            return Err(MarketError::Invalid(format!(
                "head of {peer} is signed by another key"
            )));
        }
        let proof: Vec<Hash> = reply
            .proof
            .iter()
            .map(|h| {
                <Hash>::try_from(h.as_slice())
                    .map_err(|_| MarketError::Invalid("proof hash is not 32 bytes".into()))
            })
            .collect::<Result<_, _>>()?;
        let key = peer.to_string();
        let witnessed = WitnessedHead {
            peer: key.clone(),
            head: new,
            seen_at_ms: now_unix_ms(),
        };
        let Some(old) = self.heads.get(&key)? else {
            self.heads.put(&key, &witnessed).await?;
            return Ok(Observation::First);
        };
        // A smaller head is judged without a proof; otherwise the proof must start where ours
        // ends.
        if new.head.size >= old.head.head.size && reply.since_size != old.head.head.size {
            return Ok(Observation::Unproven);
        }
        let (kind, reason) = match judge_heads(&old.head, &new, &proof) {
            HeadVerdict::Extends => {
                if new.head.size > old.head.head.size || new.head.time_ms > old.head.head.time_ms {
                    self.heads.put(&key, &witnessed).await?;
                }
                return Ok(Observation::Extends);
            }
            HeadVerdict::Rollback => (
                "rollback",
                format!(
                    "signed a head of {} entries after one of {}",
                    new.head.size, old.head.head.size
                ),
            ),
            HeadVerdict::Fork { reason } => ("fork", reason),
        };
        let evidence = ForkEvidence {
            peer: key.clone(),
            kind: kind.into(),
            reason,
            old: old.head,
            new,
            proof: proof.iter().map(hex::encode).collect(),
            found_at_ms: now_unix_ms(),
        };
        let id = format!(
            "{key}/{}/{}/{}",
            evidence.old.head.size,
            evidence.new.head.size,
            hex::encode(&evidence.new.head.root[..8])
        );
        if self.evidence.get(&id)?.is_none() {
            tracing::warn!(peer = %key, kind, reason = %evidence.reason, "audit log conflict of a peer");
            self.evidence.put(&id, &evidence).await?;
            if let Err(e) = self
                .audit
                .append_async(AuditKind::LogForkDetected, &evidence)
                .await
            {
                tracing::error!(error = %e, "audit append failed");
            }
        }
        Ok(Observation::Conflict(Box::new(evidence)))
    }

    /// Every head held, by peer.
    ///
    /// # Errors
    /// Store errors.
    pub fn peers(&self) -> Result<Vec<WitnessedHead>, MarketError> {
        Ok(self.heads.all()?.into_iter().map(|(_, w)| w).collect())
    }

    /// Every piece of evidence found.
    ///
    /// # Errors
    /// Store errors.
    pub fn evidence(&self) -> Result<Vec<ForkEvidence>, MarketError> {
        Ok(self.evidence.all()?.into_iter().map(|(_, e)| e).collect())
    }

    /// Reads the heads and evidence kept in `db` without opening a witness (for the CLI on a
    /// stopped daemon's database).
    ///
    /// # Errors
    /// Store errors.
    pub fn read(db: &dyn Store) -> Result<(Vec<WitnessedHead>, Vec<ForkEvidence>), MarketError> {
        let heads: Table<WitnessedHead> = Table::open(db, "witness_heads")?;
        let evidence: Table<ForkEvidence> = Table::open(db, "witness_evidence")?;
        Ok((
            heads.all()?.into_iter().map(|(_, w)| w).collect(),
            evidence.all()?.into_iter().map(|(_, e)| e).collect(),
        ))
    }

    /// Whether `peer` has evidence against it (for ranking).
    ///
    /// # Errors
    /// Store errors.
    pub fn is_suspect(&self, peer: &str) -> Result<bool, MarketError> {
        Ok(self.evidence()?.iter().any(|e| e.peer == peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{filled_log, temp_db, test_key};

    fn peer_of(n: u8) -> PeerId {
        peer_id_of(&test_key(n).verifying_key())
    }

    #[tokio::test]
    async fn heads_that_extend_are_kept_and_a_fork_and_a_rollback_are_evidence() {
        // The watched peer: key 1, its log grows.
        let (_d1, _db1, log) = filled_log(4);
        let (_d2, db2) = temp_db();
        let me = AuditLog::open(&db2, test_key(5)).unwrap();
        let store: &dyn Store = &db2;
        let w = Witness::open(store, me.clone()).unwrap();
        let peer = peer_of(1);

        let first = log.head_reply(w.since_size(&peer).unwrap()).unwrap();
        assert_eq!(w.observe(&peer, &first).await.unwrap(), Observation::First);
        assert_eq!(w.since_size(&peer).unwrap(), 4);
        for i in 0..3 {
            log.append(AuditKind::Hello, &i).unwrap();
        }
        let next = log.head_reply(w.since_size(&peer).unwrap()).unwrap();
        assert_eq!(w.observe(&peer, &next).await.unwrap(), Observation::Extends);
        assert_eq!(w.since_size(&peer).unwrap(), 7);

        // A copy of the peer's log that diverged after entry 4 (the same key, a forked data
        // dir): its head of 8 cannot extend the head of 7 seen.
        let (_d3, _db3, fork) = filled_log(4);
        for i in 10..14 {
            fork.append(AuditKind::Hello, &i).unwrap();
        }
        let forked = fork.head_reply(w.since_size(&peer).unwrap()).unwrap();
        match w.observe(&peer, &forked).await.unwrap() {
            Observation::Conflict(e) => assert_eq!(e.kind, "fork"),
            other => panic!("{other:?}"),
        }
        // The same conflict again is not kept twice.
        w.observe(&peer, &forked).await.unwrap();
        assert_eq!(w.evidence().unwrap().len(), 1);
        assert!(w.is_suspect(&peer.to_string()).unwrap());

        // A truncated copy (4 entries) shows a smaller head: a rollback.
        let (_d4, _db4, short) = filled_log(4);
        let rolled = short.head_reply(w.since_size(&peer).unwrap()).unwrap();
        match w.observe(&peer, &rolled).await.unwrap() {
            Observation::Conflict(e) => assert_eq!(e.kind, "rollback"),
            other => panic!("{other:?}"),
        }
        assert_eq!(w.evidence().unwrap().len(), 2);
        // Both were audited by the witness.
        let kinds: Vec<String> = me.entries(0).map(|e| e.unwrap().kind).collect();
        assert_eq!(
            kinds.iter().filter(|k| *k == "log_fork_detected").count(),
            2
        );

        // A head claimed for this peer but signed by another key is refused.
        let (_d5, _db5, other) = filled_log(1);
        let mut stranger = other.head_reply(0).unwrap();
        stranger.head.signer = test_key(9).verifying_key().to_bytes().to_vec();
        assert!(w.observe(&peer, &stranger).await.is_err());
        assert!(w.observe(&peer_of(2), &first).await.is_err());
    }
}
