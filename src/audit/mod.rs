//! Append-only, signed, hash-chained audit log on sled.
//!
//! Every event and payment a node takes part in is appended here, so that an operator (or a
//! dispute) can later prove what the node saw and did, in which order, and that nothing was
//! rewritten afterwards.
//!
//! # Format (v1)
//!
//! The log lives in the sled tree `"audit"`. Each entry is stored under the key
//! `seq.to_be_bytes()` (8 bytes, big-endian `u64`, so sled's byte order is log order) and its
//! value is the CBOR encoding (a map with text keys) of:
//!
//! | field       | type          | meaning                                                  |
//! |-------------|---------------|----------------------------------------------------------|
//! | `seq`       | `u64`         | position in the log; 0 for the first entry, no gaps      |
//! | `time_ms`   | `u64`         | wall-clock time of the append, ms since the Unix epoch   |
//! | `kind`      | text          | event kind, a snake_case [`AuditKind`] name              |
//! | `payload`   | byte string   | the event body, itself CBOR-encoded                      |
//! | `prev_hash` | 32-byte bstr  | `hash` of entry `seq - 1`; 32 zero bytes for `seq == 0`  |
//! | `hash`      | 32-byte bstr  | see below                                                |
//! | `sig`       | 64-byte bstr  | see below                                                |
//!
//! ```text
//! hash = SHA-256( "leasewire/audit/v1\0"
//!               || seq      (u64 big-endian)
//!               || time_ms  (u64 big-endian)
//!               || len(kind)    (u32 big-endian) || kind    (UTF-8 bytes)
//!               || len(payload) (u32 big-endian) || payload (CBOR bytes)
//!               || prev_hash (32 bytes) )
//! sig  = Ed25519-Sign(node signing key, "leasewire/audit-sig/v1\0" || hash)
//! ```
//!
//! The `\0` is a single zero byte that ends each domain-separation tag. The genesis entry
//! (`seq == 0`) has `prev_hash` = 32 zero bytes. The signer's 32-byte Ed25519 public key is
//! kept in the tree `"audit_meta"` under the key `"signer"`.
//!
//! A log verifies (see [`verify()`]) when every entry decodes, the seqs run 0, 1, 2, … with no
//! gap, every `prev_hash` equals the previous entry's `hash`, every `hash` recomputes, and
//! every `sig` verifies (strictly) against the expected signer. Because each entry commits to
//! its predecessor, changing, removing or reordering any entry breaks verification at that
//! entry. Dropping entries from the *end* of the log cannot be detected from the log alone;
//! compare against a head ([`AuditLog::head`]) recorded elsewhere for that.
//!
//! # API
//!
//! [`AuditLog`] is the only writer and only appends: there is no update or delete. Each log has
//! one writer thread that owns the chain and group-commits: [`AuditLog::append_async`] (one
//! entry) and [`AuditLog::append_batch`] (several, contiguous) complete once their entries are
//! flushed, and appends that arrive together share one flush. [`AuditLog::append`] is the
//! blocking form for non-async code. Reading is done with [`AuditLog::entries`], [`verify()`]
//! (batch signature verification on all cores), [`export_jsonl`] and [`show`], all of which
//! also work on a bare `sled::Tree` so the CLI can inspect a log without the node's key.

pub mod certificate;
mod export;
pub mod head_file;
pub mod merkle;
mod verify;
mod writer;

pub use export::{export_jsonl, show};
pub use merkle::{
    ConsistencyProof, HeadVerdict, InclusionProof, MerkleStore, ProofError, SignedTreeHead,
    TreeHead,
};
pub use verify::{BadEntry, KeptHeadCheck, VerifyReport, verify, verify_with_heads};

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::channel::oneshot;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use writer::ChainState;

/// Name of the sled tree holding the entries.
pub const TREE_NAME: &str = "audit";
/// Name of the sled tree holding log metadata (the signer's public key).
pub const META_TREE_NAME: &str = "audit_meta";
/// Key in [`META_TREE_NAME`] under which the signer's 32-byte public key is stored.
pub const META_SIGNER_KEY: &[u8] = b"signer";
/// Domain-separation tag that starts the bytes hashed for each entry.
pub const HASH_DOMAIN: &[u8] = b"leasewire/audit/v1\0";
/// Domain-separation tag that starts the bytes signed for each entry.
pub const SIG_DOMAIN: &[u8] = b"leasewire/audit-sig/v1\0";
/// `prev_hash` of the genesis entry.
pub const GENESIS_PREV_HASH: [u8; 32] = [0u8; 32];

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The sled store failed (I/O error, corruption detected by sled, …).
    #[error("audit store error: {0}")]
    Sled(#[from] sled::Error),
    /// A value could not be encoded (CBOR payload or JSON output).
    #[error("cannot encode audit {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's message.
        reason: String,
    },
    /// A stored value could not be decoded.
    #[error("cannot decode audit {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// The decoder's message.
        reason: String,
    },
    /// Writing exported output failed.
    #[error("audit output error: {0}")]
    Io(#[from] std::io::Error),
    /// The log on disk was started by a different key than the one given to
    /// [`AuditLog::open`]; appending would produce a log that cannot verify.
    #[error("audit log is signed by key {stored}, not by the given key {given}")]
    SignerMismatch {
        /// Hex of the public key stored in `audit_meta`.
        stored: String,
        /// Hex of the public key of the key passed to `open`.
        given: String,
    },
    /// The last entry on disk is unreadable or inconsistent, so new entries cannot be chained
    /// onto it. Run `verify` to find the first damaged entry.
    #[error("audit log head at seq {seq} is corrupt: {reason}")]
    CorruptHead {
        /// Seq (storage key) of the damaged last entry.
        seq: u64,
        /// Why it was rejected.
        reason: String,
    },
    /// A string did not name any [`AuditKind`].
    #[error("unknown audit kind {0:?}")]
    UnknownKind(String),
    /// A request to the writer did not complete for a reason reported elsewhere; the message
    /// says what happened.
    #[error("audit append task did not complete: {0}")]
    Task(String),
    /// The log's writer has stopped ([`AuditLog::close`] was called, or the writer thread
    /// is gone); nothing more can be appended through this handle.
    #[error("audit log is closed")]
    Closed,
    /// A kind or payload is too large for the `u32` length prefixes of the hash input.
    #[error("audit {0} is longer than u32::MAX bytes")]
    TooLarge(&'static str),
}

macro_rules! audit_kinds {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)+) => {
        /// The kind of an audit entry; stored as its snake_case name (see [`AuditKind::as_str`]).
        ///
        /// New kinds may be added in later versions; readers treat the stored string as
        /// authoritative and do not fail on unknown names (see [`AuditEntry::audit_kind`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum AuditKind {
            $($(#[$doc])* $variant,)+
        }

        impl AuditKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [AuditKind] = &[$(AuditKind::$variant,)+];

            /// The snake_case name stored in entries and hashed (e.g. `"lease_issued"`).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(AuditKind::$variant => $name,)+
                }
            }
        }

        impl FromStr for AuditKind {
            type Err = AuditError;

            /// Parses a snake_case name as produced by [`AuditKind::as_str`].
            ///
            /// # Errors
            /// [`AuditError::UnknownKind`] when the name is not a known kind.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok(AuditKind::$variant),)+
                    other => Err(AuditError::UnknownKind(other.to_owned())),
                }
            }
        }
    };
}

audit_kinds! {
    /// The daemon started.
    NodeStarted => "node_started",
    /// The daemon is shutting down.
    NodeStopped => "node_stopped",
    /// A peer was found (mDNS, DHT, bootstrap).
    PeerDiscovered => "peer_discovered",
    /// A membership hello was exchanged with a peer.
    Hello => "hello",
    /// An offer from a provider was seen.
    OfferSeen => "offer_seen",
    /// This node published an offer.
    OfferPublished => "offer_published",
    /// A peer proved membership of the marketplace topic.
    MembershipOk => "membership_ok",
    /// A peer failed the membership check.
    MembershipRefused => "membership_refused",
    /// A rent request was sent or received.
    RentRequested => "rent_requested",
    /// A provider created an invoice for a rent request.
    InvoiceCreated => "invoice_created",
    /// A renter rejected an invoice (amount, expiry, payee, … did not match).
    InvoiceRejected => "invoice_rejected",
    /// A renter started paying an invoice.
    PaymentAttempt => "payment_attempt",
    /// A payment completed; the preimage is known.
    PaymentSucceeded => "payment_succeeded",
    /// A payment failed.
    PaymentFailed => "payment_failed",
    /// A spending limit or check refused a payment before any money moved.
    PaymentRefused => "payment_refused",
    /// Autopay did not top up a lease (tunnel unverified, terms changed, limits).
    AutopayRefused => "autopay_refused",
    /// A provider saw its invoice settled.
    InvoiceSettled => "invoice_settled",
    /// A provider issued a lease.
    LeaseIssued => "lease_issued",
    /// A renter received a lease.
    LeaseReceived => "lease_received",
    /// A lease was applied to the tunnel backend.
    LeaseApplied => "lease_applied",
    /// A lease was suspended (credit exhausted, policy).
    LeaseSuspended => "lease_suspended",
    /// A suspended lease was reactivated.
    LeaseReactivated => "lease_reactivated",
    /// A lease ended and its addresses were released.
    LeaseReleased => "lease_released",
    /// A provider gave notice that it ends a lease (`leasewire terminate`).
    LeaseTerminated => "lease_terminated",
    /// A provider re-signed a lease with its new endpoint or WireGuard key (a revision
    /// without payment), or a renter re-pointed its tunnel to follow one.
    LeaseRevised => "lease_revised",
    /// A renter refused a lease revision (it changed the addresses, keys, terms or reduced
    /// the credit).
    LeaseRevisionRefused => "lease_revision_refused",
    /// Credit was added to a lease.
    CreditAdded => "credit_added",
    /// A renter handed out an invoice for payment from another wallet (`add-credit --manual`).
    ManualInvoice => "manual_invoice",
    /// A renter replaced a lease by one from another provider (dead tunnel, termination
    /// notice, vanished provider): decided, then done.
    Failover => "failover",
    /// A provider paid a renter's invoice refunding a released lease's unused credit.
    RefundPaid => "refund_paid",
    /// A provider's payment of a refund failed; the refund is due again.
    RefundFailed => "refund_failed",
    /// A renter's own node shows its refund invoice settled.
    RefundReceived => "refund_received",
    /// A peer was refused (rate limit, bad signature, policy).
    PeerRefused => "peer_refused",
    /// An error worth keeping a record of.
    Error => "error",
    /// A provider certified one of its leases for a third party (`lease export`): the
    /// entry a lease certificate's inclusion proof points to.
    LeaseCertified => "lease_certified",
    /// Two signed heads of a peer's log that cannot both be true (a fork or a rollback).
    LogForkDetected => "log_fork_detected",
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the log, exactly as stored (see the module docs for the format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the log, from 0.
    pub seq: u64,
    /// Wall-clock time of the append, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Snake_case kind name; normally one of [`AuditKind`].
    pub kind: String,
    /// CBOR encoding of the event body.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Hash of the previous entry ([`GENESIS_PREV_HASH`] for seq 0).
    #[serde(with = "serde_bytes")]
    pub prev_hash: [u8; 32],
    /// [`entry_hash`] of this entry's fields.
    #[serde(with = "serde_bytes")]
    pub hash: [u8; 32],
    /// Ed25519 signature over [`SIG_DOMAIN`] `||` `hash`.
    #[serde(with = "serde_bytes")]
    pub sig: [u8; 64],
}

impl AuditEntry {
    /// The kind as an [`AuditKind`], or `None` for a name this version does not know.
    pub fn audit_kind(&self) -> Option<AuditKind> {
        self.kind.parse().ok()
    }

    /// Decodes the CBOR payload into `T`.
    ///
    /// # Errors
    /// [`AuditError::Decode`] when the payload is not valid CBOR for `T`.
    pub fn payload_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, AuditError> {
        ciborium::from_reader(self.payload.as_slice()).map_err(|e| AuditError::Decode {
            what: format!("payload of entry {}", self.seq),
            reason: e.to_string(),
        })
    }

    /// Recomputes the hash from the entry's fields (it does not read `self.hash`).
    ///
    /// # Errors
    /// [`AuditError::TooLarge`] if `kind` or `payload` exceed `u32::MAX` bytes.
    pub fn compute_hash(&self) -> Result<[u8; 32], AuditError> {
        entry_hash(
            self.seq,
            self.time_ms,
            &self.kind,
            &self.payload,
            &self.prev_hash,
        )
    }

    /// Checks `sig` against `signer` (strict Ed25519 verification). It does not recompute
    /// the hash; callers check that separately.
    pub fn signature_valid(&self, signer: &VerifyingKey) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(&self.sig);
        signer.verify_strict(&sig_message(&self.hash), &sig).is_ok()
    }

    /// Builds and signs an entry. Private because only [`AuditLog`] may mint entries (tests
    /// also use it to forge entries with other keys).
    #[cfg(test)]
    fn sign(
        seq: u64,
        time_ms: u64,
        kind: &str,
        payload: Vec<u8>,
        prev_hash: [u8; 32],
        key: &SigningKey,
    ) -> Result<Self, AuditError> {
        let hash = entry_hash(seq, time_ms, kind, &payload, &prev_hash)?;
        Ok(Self::sign_hashed(
            seq, time_ms, kind, payload, prev_hash, hash, key,
        ))
    }

    /// Signs an entry whose `hash` the caller has already computed with [`entry_hash`] over
    /// the same fields (the writer fixes hashes in chain order, then signs in parallel).
    fn sign_hashed(
        seq: u64,
        time_ms: u64,
        kind: &str,
        payload: Vec<u8>,
        prev_hash: [u8; 32],
        hash: [u8; 32],
        key: &SigningKey,
    ) -> Self {
        let sig = key.sign(&sig_message(&hash)).to_bytes();
        AuditEntry {
            seq,
            time_ms,
            kind: kind.to_owned(),
            payload,
            prev_hash,
            hash,
            sig,
        }
    }

    /// CBOR bytes as stored in sled.
    fn encode(&self) -> Result<Vec<u8>, AuditError> {
        let mut out = Vec::with_capacity(160 + self.kind.len() + self.payload.len());
        ciborium::into_writer(self, &mut out).map_err(|e| AuditError::Encode {
            what: "entry",
            reason: e.to_string(),
        })?;
        Ok(out)
    }

    /// Decodes a stored value. Trailing bytes after the CBOR item are rejected so that a
    /// stored value has exactly one meaning.
    ///
    /// # Errors
    /// [`AuditError::Decode`] naming `key_seq` (the storage key) when the bytes are not one
    /// well-formed entry.
    pub fn decode(key_seq: u64, bytes: &[u8]) -> Result<Self, AuditError> {
        let mut cursor = std::io::Cursor::new(bytes);
        let entry: AuditEntry =
            ciborium::from_reader(&mut cursor).map_err(|e| AuditError::Decode {
                what: format!("entry at key {key_seq}"),
                reason: e.to_string(),
            })?;
        let used = cursor.position();
        if used != bytes.len() as u64 {
            return Err(AuditError::Decode {
                what: format!("entry at key {key_seq}"),
                reason: format!("{} trailing bytes", bytes.len() as u64 - used),
            });
        }
        Ok(entry)
    }
}

/// Computes an entry hash exactly as specified in the module docs.
///
/// # Errors
/// [`AuditError::TooLarge`] if `kind` or `payload` exceed `u32::MAX` bytes (their length
/// prefixes are `u32`).
pub fn entry_hash(
    seq: u64,
    time_ms: u64,
    kind: &str,
    payload: &[u8],
    prev_hash: &[u8; 32],
) -> Result<[u8; 32], AuditError> {
    let kind_len = u32::try_from(kind.len()).map_err(|_| AuditError::TooLarge("kind"))?;
    let payload_len = u32::try_from(payload.len()).map_err(|_| AuditError::TooLarge("payload"))?;
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(time_ms.to_be_bytes());
    h.update(kind_len.to_be_bytes());
    h.update(kind.as_bytes());
    h.update(payload_len.to_be_bytes());
    h.update(payload);
    h.update(prev_hash);
    Ok(h.finalize().into())
}

/// CBOR-encodes an entry payload.
fn encode_payload<T: Serialize + ?Sized>(payload: &T) -> Result<Vec<u8>, AuditError> {
    let mut body = Vec::new();
    ciborium::into_writer(payload, &mut body).map_err(|e| AuditError::Encode {
        what: "payload",
        reason: e.to_string(),
    })?;
    Ok(body)
}

/// The bytes an entry signature covers: [`SIG_DOMAIN`] `||` `hash`.
fn sig_message(hash: &[u8; 32]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIG_DOMAIN.len() + hash.len());
    msg.extend_from_slice(SIG_DOMAIN);
    msg.extend_from_slice(hash);
    msg
}

/// Storage key of entry `seq`.
fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Parses a storage key back into a seq; `None` if it is not 8 bytes.
fn key_seq(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

fn now_ms() -> u64 {
    // A clock before 1970 is a broken host; record 0 rather than refuse to log.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Reads the signer public key recorded in the `audit_meta` tree of `db`, if any.
///
/// This is what the log *claims* as its signer; a verifier that must not trust the disk
/// should compare it with the node identity it expects.
///
/// # Errors
/// [`AuditError::Sled`] on store failure, [`AuditError::Decode`] if the stored bytes are not a
/// valid Ed25519 public key.
pub fn stored_signer(db: &sled::Db) -> Result<Option<VerifyingKey>, AuditError> {
    let meta = db.open_tree(META_TREE_NAME)?;
    let Some(raw) = meta.get(META_SIGNER_KEY)? else {
        return Ok(None);
    };
    let bytes = <[u8; 32]>::try_from(raw.as_ref()).map_err(|_| AuditError::Decode {
        what: "signer key".into(),
        reason: format!("expected 32 bytes, found {}", raw.len()),
    })?;
    VerifyingKey::from_bytes(&bytes)
        .map(Some)
        .map_err(|e| AuditError::Decode {
            what: "signer key".into(),
            reason: e.to_string(),
        })
}

/// What every handle shares; dropping the last handle stops the writer.
struct Inner {
    tree: sled::Tree,
    merkle: MerkleStore,
    head_file: Option<PathBuf>,
    public: VerifyingKey,
    shared: Arc<writer::Shared>,
    /// `Some` until `Drop`, which takes it to disconnect the writer.
    tx: Option<mpsc::Sender<writer::Request>>,
    /// The writer thread, joined on drop.
    thread: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Disconnecting lets the writer finish whatever is still queued (only requests whose
        // waiters went away can be left, since a waiter holds a handle) and exit. Joining it
        // releases its clone of the tree, so the database can be reopened right after.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("audit writer thread panicked");
        }
    }
}

/// Handle to the audit log: cheap to clone, `Send + Sync`, shared by all tasks of a node.
///
/// One dedicated writer thread owns the end of the chain and the signing key; every append,
/// from any handle, goes through it (see the `writer` module): appends that arrive together
/// are signed, inserted and flushed as one group, and each is acknowledged only once it is
/// on disk. Dropping the last handle lets the writer finish what is queued and stop; [`close`]
/// does the same explicitly while handles remain.
///
/// [`close`]: AuditLog::close
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl fmt::Debug for AuditLog {
    // Hand-written so that it shows the signer's public key and the head, nothing else.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (next_seq, last_hash) = self.head();
        f.debug_struct("AuditLog")
            .field("signer", &hex::encode(self.inner.public.as_bytes()))
            .field("next_seq", &next_seq)
            .field("last_hash", &hex::encode(last_hash))
            .finish()
    }
}

impl AuditLog {
    /// Opens (creating if needed) the tree `"audit"` in `db`, signing new entries with `key`,
    /// and starts the log's writer thread.
    ///
    /// Recovers the head (next seq and last hash) from the last stored entry, and records the
    /// signer's public key in `"audit_meta"` on first use so [`verify()`] can later be run
    /// against it. Only the last entry is checked here; run [`verify()`] for a full check.
    ///
    /// Open each database once and clone the returned handle: two handles opened separately
    /// on the same tree would each track their own head and fork the chain.
    ///
    /// # Errors
    /// - [`AuditError::SignerMismatch`] if the log was started by a different key.
    /// - [`AuditError::CorruptHead`] if the last entry cannot be decoded or does not match
    ///   its storage key, or its hash does not recompute (appending would chain onto garbage).
    /// - [`AuditError::Sled`] on store failure.
    /// - [`AuditError::Io`] if the writer thread cannot be started.
    pub fn open(db: &sled::Db, key: SigningKey) -> Result<Self, AuditError> {
        Self::open_with(db, key, None)
    }

    /// Like [`open`](AuditLog::open), and keeps the latest signed tree head in the file
    /// `head_file` (see [`head_file`]), outside the database, so that a later truncation or
    /// rewrite of the entries is detectable by [`verify_with_heads`]. When the log on disk
    /// no longer extends the head kept there, that head is moved to
    /// [`head_file::lost_path`] (an existing lost head is kept), logged as an error and
    /// audited, and the log goes on from what it holds.
    ///
    /// # Errors
    /// As [`open`](AuditLog::open); failures to read or write the head file are logged, not
    /// returned (they must not stop a node).
    pub fn open_keeping_head(
        db: &sled::Db,
        key: SigningKey,
        head_file: &Path,
    ) -> Result<Self, AuditError> {
        Self::open_with(db, key, Some(head_file.to_path_buf()))
    }

    fn open_with(
        db: &sled::Db,
        key: SigningKey,
        head_path: Option<PathBuf>,
    ) -> Result<Self, AuditError> {
        let tree = db.open_tree(TREE_NAME)?;
        let meta = db.open_tree(META_TREE_NAME)?;
        let public = key.verifying_key();

        match meta.get(META_SIGNER_KEY)? {
            Some(stored) if stored.as_ref() != public.as_bytes() => {
                return Err(AuditError::SignerMismatch {
                    stored: hex::encode(&stored),
                    given: hex::encode(public.as_bytes()),
                });
            }
            Some(_) => {}
            None => {
                // A non-empty log without a recorded signer has been tampered with or was
                // written by something else: do not silently adopt it.
                if let Some((k, _)) = tree.first()? {
                    return Err(AuditError::CorruptHead {
                        seq: key_seq(&k).unwrap_or(0),
                        reason: "log has entries but no recorded signer".into(),
                    });
                }
                meta.insert(META_SIGNER_KEY, public.as_bytes().as_slice())?;
                meta.flush()?;
            }
        }

        let state = match tree.last()? {
            None => ChainState {
                next_seq: 0,
                last_hash: GENESIS_PREV_HASH,
            },
            Some((k, v)) => {
                let seq = key_seq(&k).ok_or_else(|| AuditError::CorruptHead {
                    seq: 0,
                    reason: format!("storage key of {} bytes, expected 8", k.len()),
                })?;
                let corrupt = |reason: String| AuditError::CorruptHead { seq, reason };
                let entry = AuditEntry::decode(seq, &v).map_err(|e| corrupt(e.to_string()))?;
                if entry.seq != seq {
                    return Err(corrupt(format!("entry claims seq {}", entry.seq)));
                }
                if entry.compute_hash()? != entry.hash {
                    return Err(corrupt("hash does not recompute".into()));
                }
                let next_seq = seq
                    .checked_add(1)
                    .ok_or_else(|| corrupt("seq space exhausted".into()))?;
                ChainState {
                    next_seq,
                    last_hash: entry.hash,
                }
            }
        };
        tracing::info!(
            next_seq = state.next_seq,
            signer = %hex::encode(public.as_bytes()),
            "audit log opened"
        );

        // Build (or migrate to) the Merkle tree of the entries, and sign the head.
        let merkle = MerkleStore::open(db)?;
        if merkle.size()? > state.next_seq {
            // Nodes of entries that are gone: the entries were removed behind the log's back.
            tracing::error!(
                nodes = merkle.size()?,
                entries = state.next_seq,
                "audit merkle tree is longer than the log: entries were removed; rebuilding"
            );
            merkle.tree().clear()?;
        }
        let merkle_size = merkle.catch_up(&tree)?;
        let sth = TreeHead {
            size: merkle_size,
            time_ms: now_ms(),
            root: merkle.root(merkle_size)?,
        }
        .sign(&key);
        let lost = head_path
            .as_deref()
            .and_then(|path| keep_or_set_aside(path, &merkle, merkle_size));

        let shared = Arc::new(writer::Shared::new(state, sth));
        let (tx, rx) = mpsc::channel();
        let writer = writer::Writer {
            tree: tree.clone(),
            key,
            state,
            shared: Arc::clone(&shared),
            merkle: merkle.clone(),
            merkle_size,
            head_file: head_path.clone(),
            head_written: None,
            // The head signed at open is written at once (with the first group or on stop).
            head_dirty: head_path.is_some(),
        };
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))?;

        let log = AuditLog {
            inner: Arc::new(Inner {
                tree,
                merkle,
                head_file: head_path,
                public,
                shared,
                tx: Some(tx),
                thread: Some(thread),
            }),
        };
        if let Some(reason) = lost {
            log.append(AuditKind::Error, &serde_json::json!({ "error": reason }))?;
        }
        Ok(log)
    }

    /// Appends one entry with `payload` CBOR-encoded, and returns its seq once it is durable.
    ///
    /// This is THE append for async code: the entry is signed, inserted and flushed by the
    /// log's writer thread, together with whatever other appends arrived at the same time
    /// (one fsync for the whole group), and the returned future completes only after that
    /// flush, so a crash after `Ok` never loses the entry. No disk I/O runs on the calling
    /// thread. The payload is encoded before the call suspends, so it need not be `Send`.
    ///
    /// If the future is dropped after it was first polled, the entry may still be written;
    /// the chain stays consistent either way.
    ///
    /// # Errors
    /// - [`AuditError::Encode`] if `payload` cannot be CBOR-encoded (nothing is written).
    /// - [`AuditError::TooLarge`] if the payload exceeds `u32::MAX` bytes (nothing is written).
    /// - [`AuditError::Sled`] if the write or the flush of its group fails. If the write
    ///   failed nothing was added; if only the flush failed the entry may still reach disk
    ///   later and stays part of the chain.
    /// - [`AuditError::Closed`] if the log was closed.
    pub async fn append_async<T: Serialize + ?Sized>(
        &self,
        kind: AuditKind,
        payload: &T,
    ) -> Result<u64, AuditError> {
        let body = encode_payload(payload)?;
        let range = self.submit(vec![(kind, body)])?.await;
        first_seq(range)
    }

    /// Appends `entries` contiguously (no other entry lands between them), with one flush,
    /// and returns their seq range (empty, at the current head, for an empty `entries`).
    ///
    /// All or nothing: if any payload cannot be encoded or is too large, or the write fails,
    /// none of them is added.
    ///
    /// # Errors
    /// As [`append_async`](AuditLog::append_async).
    pub async fn append_batch<T: Serialize>(
        &self,
        entries: Vec<(AuditKind, T)>,
    ) -> Result<Range<u64>, AuditError> {
        let encoded = entries
            .iter()
            .map(|(kind, payload)| Ok((*kind, encode_payload(payload)?)))
            .collect::<Result<Vec<_>, AuditError>>()?;
        received(self.submit(encoded)?.await)
    }

    /// Blocking form of [`append_async`](AuditLog::append_async), for code that is not async
    /// (the CLI, tests, plain threads): same writer, same group commit, same durability.
    ///
    /// Never call it on an async runtime's worker thread: it parks the thread until the
    /// group's fsync is done, and the other tasks of that worker wait with it.
    ///
    /// # Errors
    /// As [`append_async`](AuditLog::append_async).
    pub fn append<T: Serialize + ?Sized>(
        &self,
        kind: AuditKind,
        payload: &T,
    ) -> Result<u64, AuditError> {
        let body = encode_payload(payload)?;
        let rx = self.submit(vec![(kind, body)])?;
        first_seq(futures::executor::block_on(rx))
    }

    /// Sends an append to the writer; the receiver yields its seq range once durable.
    fn submit(
        &self,
        entries: Vec<(AuditKind, Vec<u8>)>,
    ) -> Result<oneshot::Receiver<Result<Range<u64>, AuditError>>, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.send(writer::Request::Append { entries, reply })?;
        Ok(rx)
    }

    fn send(&self, req: writer::Request) -> Result<(), AuditError> {
        #[cfg(test)]
        self.inner
            .shared
            .hooks
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner
            .tx
            .as_ref()
            .expect("the sender is only taken when the last handle drops")
            .send(req)
            .map_err(|_| AuditError::Closed)
    }

    /// Blocking barrier: returns once everything appended before the call is on disk. Every
    /// append already waits for its own flush; this is for shutdown paths that want an
    /// explicit barrier. Never call it on an async runtime's worker thread (use
    /// [`flush_async`](AuditLog::flush_async)).
    ///
    /// # Errors
    /// [`AuditError::Sled`] if the flush fails, [`AuditError::Closed`] if the log was closed.
    pub fn flush(&self) -> Result<(), AuditError> {
        let (reply, rx) = oneshot::channel();
        self.send(writer::Request::Flush { reply })?;
        received(futures::executor::block_on(rx))
    }

    /// Async form of [`flush`](AuditLog::flush); the flush runs on the writer thread.
    ///
    /// # Errors
    /// As [`flush`](AuditLog::flush).
    pub async fn flush_async(&self) -> Result<(), AuditError> {
        let (reply, rx) = oneshot::channel();
        self.send(writer::Request::Flush { reply })?;
        received(rx.await)
    }

    /// Flushes everything appended before the call and stops the writer: later appends and
    /// flushes from any handle fail with [`AuditError::Closed`]. Reading (entries, verify,
    /// head) still works. Closing twice reports [`AuditError::Closed`] the second time.
    ///
    /// Dropping the last handle has the same effect without the explicit wait.
    ///
    /// # Errors
    /// [`AuditError::Sled`] if the final flush fails, [`AuditError::Closed`] if the log was
    /// already closed.
    pub async fn close(&self) -> Result<(), AuditError> {
        let (reply, rx) = oneshot::channel();
        self.send(writer::Request::Close { reply })?;
        received(rx.await)
    }

    /// Number of entries in the log (equal to the next seq to be assigned).
    pub fn len(&self) -> u64 {
        self.inner.shared.head().next_seq
    }

    /// Whether the log has no entries yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The head of the chain: `(next_seq, last_hash)`. `next_seq` is the seq the next append
    /// will get (== [`len`](AuditLog::len)); `last_hash` is the hash of entry `next_seq - 1`,
    /// or [`GENESIS_PREV_HASH`] for an empty log. Recording it elsewhere lets a later
    /// [`verify()`] also detect truncation.
    pub fn head(&self) -> (u64, [u8; 32]) {
        let state = self.inner.shared.head();
        (state.next_seq, state.last_hash)
    }

    /// Iterates over the stored entries with `seq >= from_seq`, in order.
    ///
    /// The iterator is a snapshot-free scan of sled: entries appended while iterating may or
    /// may not be seen. Each item is an error if the store fails or a value does not decode;
    /// iteration continues past decode errors.
    pub fn entries(
        &self,
        from_seq: u64,
    ) -> impl Iterator<Item = Result<AuditEntry, AuditError>> + Send + 'static {
        entries_in(&self.inner.tree, from_seq)
    }

    /// The public key entries are signed with.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.inner.public
    }

    /// The underlying sled tree (read it with [`verify()`], [`export_jsonl`], [`show`]).
    pub fn tree(&self) -> &sled::Tree {
        &self.inner.tree
    }

    /// Verifies the whole log against this handle's own key, and against the heads kept in
    /// the head file (if the log keeps one). See [`verify_with_heads`]. It reads and checks
    /// on all cores and blocks until done; async code runs it on a blocking thread.
    pub fn verify(&self) -> VerifyReport {
        let kept = match &self.inner.head_file {
            Some(path) => head_file::load_all(path).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the kept audit head");
                Vec::new()
            }),
            None => Vec::new(),
        };
        verify_with_heads(&self.inner.tree, &self.verifying_key(), &kept)
    }

    /// The latest signed tree head: signed by the writer after every group of appends (and
    /// at open), covering every entry whose append has completed.
    pub fn signed_head(&self) -> SignedTreeHead {
        self.inner.shared.signed_head()
    }

    /// The log's Merkle nodes (for proofs; see [`merkle`]).
    pub fn merkle(&self) -> &MerkleStore {
        &self.inner.merkle
    }

    /// Inclusion proof of entry `seq` in the tree of the first `size` entries.
    ///
    /// # Errors
    /// [`AuditError::Decode`] when `seq >= size` or `size` is past the stored tree; store
    /// errors.
    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Result<InclusionProof, AuditError> {
        self.check_size(size)?;
        Ok(InclusionProof {
            leaf_index: seq,
            tree_size: size,
            path: merkle::inclusion_proof(&self.inner.merkle, seq, size)?,
        })
    }

    /// Consistency proof that the first `old_size` entries are a prefix of the first
    /// `new_size`.
    ///
    /// # Errors
    /// [`AuditError::Decode`] when `old_size > new_size` or `new_size` is past the stored
    /// tree; store errors.
    pub fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProof, AuditError> {
        self.check_size(new_size)?;
        Ok(ConsistencyProof {
            old_size,
            new_size,
            path: merkle::consistency_proof(&self.inner.merkle, old_size, new_size)?,
        })
    }

    /// The answer to a peer's `headRequest`: the latest signed head and the consistency
    /// proof to it from `since_size` (from 0, i.e. empty, when `since_size` is past the head:
    /// the asker then sees the rollback itself).
    ///
    /// # Errors
    /// Store errors reading the proof's nodes.
    pub fn head_reply(&self, since_size: u64) -> Result<crate::wire::HeadReply, AuditError> {
        let head = self.signed_head();
        let since = if since_size > head.head.size {
            0
        } else {
            since_size
        };
        let proof = self.consistency_proof(since, head.head.size)?;
        Ok(crate::wire::HeadReply {
            head: head.to_wire(),
            since_size: since,
            proof: proof
                .path
                .iter()
                .map(|h| serde_bytes::ByteBuf::from(h.to_vec()))
                .collect(),
        })
    }

    fn check_size(&self, size: u64) -> Result<(), AuditError> {
        let stored = self.inner.merkle.size()?;
        if size > stored {
            return Err(AuditError::Decode {
                what: "proof request".into(),
                reason: format!("tree size {size} is past the {stored} entries in the tree"),
            });
        }
        Ok(())
    }

    #[cfg(test)]
    fn hooks(&self) -> &writer::hooks::TestHooks {
        &self.inner.shared.hooks
    }
}

/// Checks the head kept at `path` against the opened log; when the log no longer extends
/// it, moves it to the lost path and returns why (for the audit entry).
fn keep_or_set_aside(path: &Path, merkle: &MerkleStore, size: u64) -> Option<String> {
    let kept = match head_file::load(path) {
        Ok(Some(kept)) => kept,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "unreadable kept audit head");
            return None;
        }
    };
    let reason = if kept.head.size > size {
        format!(
            "audit log truncated: it holds {size} entries, but a head signed at {} ms covered {}",
            kept.head.time_ms, kept.head.size
        )
    } else {
        match merkle.root(kept.head.size) {
            Ok(root) if root == kept.head.root => return None,
            Ok(_) => format!(
                "audit log rewritten: its first {} entries do not match the head signed at {} ms",
                kept.head.size, kept.head.time_ms
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the kept audit head");
                return None;
            }
        }
    };
    tracing::error!(path = %path.display(), "{reason}");
    let lost = head_file::lost_path(path);
    if lost.exists() {
        // The first evidence stays; the current file is replaced by the next head.
        return Some(reason);
    }
    if let Err(e) = std::fs::rename(path, &lost) {
        tracing::warn!(error = %e, "cannot set the lost audit head aside");
    }
    Some(reason)
}

/// The answer of the writer, or [`AuditError::Closed`] if it went away without one.
fn received<T>(answer: Result<Result<T, AuditError>, oneshot::Canceled>) -> Result<T, AuditError> {
    answer.map_err(|_| AuditError::Closed)?
}

/// The seq of a one-entry append.
fn first_seq(
    answer: Result<Result<Range<u64>, AuditError>, oneshot::Canceled>,
) -> Result<u64, AuditError> {
    Ok(received(answer)?.start)
}

/// Iterates over the entries of a bare audit tree with `seq >= from_seq`, in key order.
///
/// Same contract as [`AuditLog::entries`]; for readers that have the tree but no key.
pub fn entries_in(
    tree: &sled::Tree,
    from_seq: u64,
) -> impl Iterator<Item = Result<AuditEntry, AuditError>> + Send + 'static {
    tree.range(seq_key(from_seq)..).map(|item| {
        let (k, v) = item?;
        let seq = key_seq(&k).ok_or_else(|| AuditError::Decode {
            what: "storage key".into(),
            reason: format!("{} bytes, expected 8", k.len()),
        })?;
        AuditEntry::decode(seq, &v)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde::Deserialize;

    /// A deterministic test key; distinct `n` give distinct keys.
    pub(crate) fn test_key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    /// A fresh sled database in a temporary directory (kept alive by the returned guard).
    pub(crate) fn temp_db() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path().join("db")).expect("open sled");
        (dir, db)
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    pub(crate) struct Payment {
        pub(crate) lease_id: String,
        pub(crate) amount_msat: u64,
        #[serde(with = "serde_bytes")]
        pub(crate) hash: Vec<u8>,
    }

    pub(crate) fn payment(i: u64) -> Payment {
        Payment {
            lease_id: format!("lease-{i}"),
            amount_msat: 1_000 * i,
            hash: vec![i as u8; 4],
        }
    }

    /// A log with `n` PaymentSucceeded entries, signed by `test_key(1)`.
    pub(crate) fn filled_log(n: u64) -> (tempfile::TempDir, sled::Db, AuditLog) {
        let (dir, db) = temp_db();
        let log = AuditLog::open(&db, test_key(1)).expect("open log");
        for i in 0..n {
            assert_eq!(
                log.append(AuditKind::PaymentSucceeded, &payment(i))
                    .unwrap(),
                i
            );
        }
        (dir, db, log)
    }

    #[test]
    fn kind_names_round_trip_and_match_serde() {
        for kind in AuditKind::ALL {
            let name = kind.as_str();
            assert_eq!(name.parse::<AuditKind>().unwrap(), *kind);
            assert_eq!(serde_json::to_string(kind).unwrap(), format!("\"{name}\""));
            assert_eq!(kind.to_string(), name);
        }
        assert_eq!(AuditKind::ALL.len(), 36);
        assert_eq!(AuditKind::LeaseReactivated.as_str(), "lease_reactivated");
        assert!(matches!(
            "LeaseIssued".parse::<AuditKind>(),
            Err(AuditError::UnknownKind(s)) if s == "LeaseIssued"
        ));
    }

    #[test]
    fn hash_follows_the_documented_layout() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"leasewire/audit/v1\0");
        bytes.extend_from_slice(&7u64.to_be_bytes());
        bytes.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
        bytes.extend_from_slice(&5u32.to_be_bytes());
        bytes.extend_from_slice(b"hello");
        bytes.extend_from_slice(&3u32.to_be_bytes());
        bytes.extend_from_slice(&[1, 2, 3]);
        bytes.extend_from_slice(&[9u8; 32]);
        let expected: [u8; 32] = Sha256::digest(&bytes).into();
        assert_eq!(
            entry_hash(7, 1_700_000_000_000, "hello", &[1, 2, 3], &[9u8; 32]).unwrap(),
            expected
        );
    }

    #[test]
    fn append_and_read_back() {
        let (_dir, _db, log) = filled_log(5);
        assert_eq!(log.len(), 5);
        let entries: Vec<AuditEntry> = log.entries(0).map(|e| e.unwrap()).collect();
        assert_eq!(entries.len(), 5);
        let mut prev = GENESIS_PREV_HASH;
        for (i, e) in entries.iter().enumerate() {
            let i = i as u64;
            assert_eq!(e.seq, i);
            assert_eq!(e.kind, "payment_succeeded");
            assert_eq!(e.audit_kind(), Some(AuditKind::PaymentSucceeded));
            assert_eq!(e.payload_as::<Payment>().unwrap(), payment(i));
            assert_eq!(e.prev_hash, prev);
            assert_eq!(e.compute_hash().unwrap(), e.hash);
            assert!(e.signature_valid(&test_key(1).verifying_key()));
            assert!(!e.signature_valid(&test_key(2).verifying_key()));
            assert!(e.time_ms > 1_600_000_000_000, "wall-clock ms expected");
            prev = e.hash;
        }
        assert_eq!(log.head(), (5, prev));
        // Reading from the middle starts at that seq.
        let tail: Vec<u64> = log.entries(3).map(|e| e.unwrap().seq).collect();
        assert_eq!(tail, vec![3, 4]);
        assert_eq!(log.entries(99).count(), 0);
    }

    #[test]
    fn stored_value_is_cbor_with_byte_strings() {
        let (_dir, _db, log) = filled_log(1);
        let raw = log.tree().get(0u64.to_be_bytes()).unwrap().unwrap();
        let value: ciborium::Value = ciborium::from_reader(raw.as_ref()).unwrap();
        let map = value.as_map().expect("entry is a CBOR map");
        let field = |name: &str| {
            map.iter()
                .find(|(k, _)| k.as_text() == Some(name))
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("field {name} missing"))
        };
        assert_eq!(field("kind").as_text(), Some("payment_succeeded"));
        assert_eq!(field("hash").as_bytes().map(Vec::len), Some(32));
        assert_eq!(field("prev_hash").as_bytes().map(Vec::len), Some(32));
        assert_eq!(field("sig").as_bytes().map(Vec::len), Some(64));
        assert!(field("payload").is_bytes());
    }

    #[test]
    fn empty_log_head_is_genesis() {
        let (_dir, db) = temp_db();
        let log = AuditLog::open(&db, test_key(1)).unwrap();
        assert!(log.is_empty());
        assert_eq!(log.head(), (0, GENESIS_PREV_HASH));
        assert!(log.verify().ok);
        assert_eq!(
            stored_signer(&db).unwrap(),
            Some(test_key(1).verifying_key())
        );
    }

    #[test]
    fn chain_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let head_before = {
            let db = sled::open(&path).unwrap();
            let log = AuditLog::open(&db, test_key(1)).unwrap();
            for i in 0..4 {
                log.append(AuditKind::LeaseIssued, &payment(i)).unwrap();
            }
            log.head()
        };
        // The sled::Db above is dropped, releasing its file lock.
        let db = sled::open(&path).unwrap();
        let log = AuditLog::open(&db, test_key(1)).unwrap();
        assert_eq!(log.head(), head_before);
        assert_eq!(log.len(), 4);
        assert_eq!(log.append(AuditKind::LeaseReleased, &"bye").unwrap(), 4);
        let last = log.entries(4).next().unwrap().unwrap();
        assert_eq!(last.prev_hash, head_before.1);
        assert_eq!(last.payload_as::<String>().unwrap(), "bye");
        let report = log.verify();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.entries, 5);
    }

    #[test]
    fn reopen_with_another_key_is_refused() {
        let (_dir, db, _log) = filled_log(2);
        let err = AuditLog::open(&db, test_key(2)).unwrap_err();
        assert!(matches!(err, AuditError::SignerMismatch { .. }), "{err}");
        // The right key still opens it.
        assert_eq!(AuditLog::open(&db, test_key(1)).unwrap().len(), 2);
    }

    #[test]
    fn corrupt_head_is_refused_on_open() {
        let (_dir, db, log) = filled_log(3);
        log.tree()
            .insert(2u64.to_be_bytes(), &b"garbage"[..])
            .unwrap();
        let err = AuditLog::open(&db, test_key(1)).unwrap_err();
        assert!(
            matches!(err, AuditError::CorruptHead { seq: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn entries_without_recorded_signer_are_refused() {
        let (_dir, db, _log) = filled_log(1);
        db.open_tree(META_TREE_NAME).unwrap().clear().unwrap();
        let err = AuditLog::open(&db, test_key(1)).unwrap_err();
        assert!(matches!(err, AuditError::CorruptHead { .. }), "{err}");
    }

    #[test]
    fn concurrent_appends_get_unique_contiguous_seqs() {
        let (_dir, _db) = temp_db();
        let log = AuditLog::open(&_db, test_key(1)).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| log.append(AuditKind::OfferSeen, &(t, i)).unwrap())
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..200).collect::<Vec<u64>>());
        let report = log.verify();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.entries, 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_appends_chain_like_sync_ones() {
        let (_dir, _db, log) = filled_log(2);
        let tasks: Vec<_> = (0..10u64)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append_async(AuditKind::Hello, &i).await })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap().unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (2..12).collect::<Vec<u64>>());
        let mut payloads: Vec<u64> = log
            .entries(2)
            .map(|e| e.unwrap().payload_as::<u64>().unwrap())
            .collect();
        payloads.sort_unstable();
        assert_eq!(payloads, (0..10).collect::<Vec<u64>>());
        assert!(log.verify().ok);
    }

    #[test]
    fn unencodable_payload_writes_nothing() {
        struct Bad;
        impl Serialize for Bad {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("refuse"))
            }
        }
        let (_dir, _db, log) = filled_log(1);
        let err = log.append(AuditKind::Error, &Bad).unwrap_err();
        assert!(matches!(err, AuditError::Encode { .. }), "{err}");
        assert_eq!(log.len(), 1);
        assert_eq!(log.append(AuditKind::Error, &"fine").unwrap(), 1);
        assert!(log.verify().ok);
    }

    /// Waits (without sleeping) until `n` more requests than `before` reached the writer's
    /// channel.
    async fn queued(log: &AuditLog, before: u64, n: u64) {
        use std::sync::atomic::Ordering;
        while log.hooks().requests.load(Ordering::SeqCst) < before + n {
            tokio::task::yield_now().await;
        }
    }

    fn flushes(log: &AuditLog) -> u64 {
        log.hooks()
            .flushes
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn requests(log: &AuditLog) -> u64 {
        log.hooks()
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_that_arrive_together_share_one_flush() {
        let (_dir, _db, log) = filled_log(3);
        let flushes_before = flushes(&log);
        let before = requests(&log);
        // Hold the writer so all 20 appends are queued before it collects its next group.
        log.hooks().hold();
        let tasks: Vec<_> = (0..20u64)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append_async(AuditKind::OfferSeen, &i).await })
            })
            .collect();
        queued(&log, before, 20).await;
        log.hooks().release();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap().unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (3..23).collect::<Vec<u64>>());
        assert_eq!(flushes(&log) - flushes_before, 1, "one flush for the group");
        let report = log.verify();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.entries, 23);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_appenders_build_one_valid_chain() {
        let (_dir, _db) = temp_db();
        let log = AuditLog::open(&_db, test_key(1)).unwrap();
        let tasks: Vec<_> = (0..64u64)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut seqs = Vec::new();
                    for i in 0..10u64 {
                        seqs.push(log.append_async(AuditKind::Hello, &(t, i)).await.unwrap());
                    }
                    seqs
                })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            let mine = t.await.unwrap();
            // One appender's entries keep its order.
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
            seqs.extend(mine);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (0..640).collect::<Vec<u64>>());
        assert!(flushes(&log) <= 640);
        let report = log.verify();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.entries, 640);
        assert_eq!(log.head().0, 640);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_are_contiguous_and_verify() {
        let (_dir, _db, log) = filled_log(1);
        let tasks: Vec<_> = (0..4u64)
            .map(|b| {
                let log = log.clone();
                tokio::spawn(async move {
                    let single = log
                        .append_async(AuditKind::Error, &"between")
                        .await
                        .unwrap();
                    let batch = (0..300u64)
                        .map(|i| (AuditKind::CreditAdded, (b, i)))
                        .collect::<Vec<_>>();
                    (single, b, log.append_batch(batch).await.unwrap())
                })
            })
            .collect();
        let mut total = 1;
        for t in tasks {
            let (single, b, range) = t.await.unwrap();
            assert_eq!(range.end - range.start, 300);
            assert!(!range.contains(&single));
            let payloads: Vec<(u64, u64)> = log
                .entries(range.start)
                .take(300)
                .map(|e| e.unwrap().payload_as().unwrap())
                .collect();
            assert_eq!(payloads, (0..300).map(|i| (b, i)).collect::<Vec<_>>());
            total += 301;
        }
        assert_eq!(log.len(), total);
        // An empty batch appends nothing and reports the head.
        let empty = log
            .append_batch(Vec::<(AuditKind, u64)>::new())
            .await
            .unwrap();
        assert_eq!(empty, total..total);
        let report = log.verify();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.entries, total);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_is_reported_to_every_waiter_and_leaves_the_chain() {
        let (_dir, _db, log) = filled_log(2);
        let head = log.head();
        let before = requests(&log);
        log.hooks().hold();
        log.hooks().fail_next_insert();
        let mut tasks = Vec::new();
        for i in 0..5u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.append_async(AuditKind::Hello, &i).await.map(|_| ())
            }));
        }
        let batch_log = log.clone();
        tasks.push(tokio::spawn(async move {
            batch_log
                .append_batch(vec![(AuditKind::Hello, 1u8), (AuditKind::Hello, 2u8)])
                .await
                .map(|_| ())
        }));
        queued(&log, before, 6).await;
        log.hooks().release();
        for t in tasks {
            let err = t.await.unwrap().unwrap_err();
            assert!(matches!(err, AuditError::Sled(_)), "{err}");
        }
        assert_eq!(log.head(), head, "the chain is unchanged");
        assert_eq!(log.entries(0).count(), 2);
        // The writer goes on: the next append takes the next seq and links to the old head.
        assert_eq!(
            log.append_async(AuditKind::Hello, &"after").await.unwrap(),
            2
        );
        let last = log.entries(2).next().unwrap().unwrap();
        assert_eq!(last.prev_hash, head.1);
        assert!(log.verify().ok);
    }

    #[tokio::test]
    async fn close_flushes_then_refuses_further_appends() {
        let (dir, db, log) = filled_log(2);
        let other = log.clone();
        log.close().await.unwrap();
        assert!(matches!(
            other.append_async(AuditKind::Hello, &1).await,
            Err(AuditError::Closed)
        ));
        assert!(matches!(
            other.append(AuditKind::Hello, &1),
            Err(AuditError::Closed)
        ));
        assert!(matches!(log.flush_async().await, Err(AuditError::Closed)));
        assert!(matches!(log.close().await, Err(AuditError::Closed)));
        // Reading still works and the log is whole.
        assert_eq!(log.len(), 2);
        assert!(log.verify().ok);
        drop((log, other, db));
        // With every handle gone the writer thread has released its tree, and with it the
        // database's lock: the log reopens from disk.
        let db = sled::open(dir.path().join("db")).unwrap();
        let reopened = AuditLog::open(&db, test_key(1)).unwrap();
        assert_eq!(reopened.append(AuditKind::Hello, &3).unwrap(), 2);
    }

    #[test]
    fn blocking_flush_is_a_barrier() {
        let (_dir, _db, log) = filled_log(2);
        let before = flushes(&log);
        log.flush().unwrap();
        assert_eq!(flushes(&log), before + 1);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let e =
            AuditEntry::sign(0, 1, "hello", vec![0xf6], GENESIS_PREV_HASH, &test_key(1)).unwrap();
        let mut bytes = e.encode().unwrap();
        assert_eq!(AuditEntry::decode(0, &bytes).unwrap(), e);
        bytes.push(0);
        assert!(AuditEntry::decode(0, &bytes).is_err());
    }

    #[test]
    fn signed_head_covers_every_appended_entry_and_proofs_verify() {
        let (_dir, _db, log) = filled_log(9);
        let sth = log.signed_head();
        sth.verify().unwrap();
        assert_eq!(sth.signer, test_key(1).verifying_key().to_bytes());
        assert_eq!(sth.head.size, 9);
        let leaves: Vec<merkle::Hash> = log
            .entries(0)
            .map(|e| merkle::leaf_hash(&e.unwrap().hash))
            .collect();
        assert_eq!(sth.head.root, merkle::root_of(&leaves));
        let proof = log.inclusion_proof(4, 9).unwrap();
        merkle::verify_inclusion(&leaves[4], 4, 9, &proof.path, &sth.head.root).unwrap();
        let old_root = log.merkle().root(5).unwrap();
        let c = log.consistency_proof(5, 9).unwrap();
        merkle::verify_consistency(5, 9, &old_root, &sth.head.root, &c.path).unwrap();
        assert!(log.inclusion_proof(3, 10).is_err(), "past the tree");
    }

    /// A log opened with a kept head file, `n` entries, then closed (head file written).
    fn kept_log(n: u64) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("db");
        let head_path = dir.path().join(head_file::HEAD_FILE_NAME);
        let db = sled::open(&db_path).unwrap();
        let log = AuditLog::open_keeping_head(&db, test_key(1), &head_path).unwrap();
        for i in 0..n {
            log.append(AuditKind::PaymentSucceeded, &payment(i))
                .unwrap();
        }
        futures::executor::block_on(log.close()).unwrap();
        drop((log, db));
        (dir, db_path, head_path)
    }

    #[test]
    fn kept_head_follows_the_log_and_an_intact_log_passes() {
        let (_dir, db_path, head_path) = kept_log(6);
        let kept = head_file::load(&head_path).unwrap().unwrap();
        assert_eq!(kept.head.size, 6);
        kept.verify().unwrap();
        let db = sled::open(&db_path).unwrap();
        let tree = db.open_tree(TREE_NAME).unwrap();
        let report = verify_with_heads(&tree, &test_key(1).verifying_key(), &[kept]);
        assert!(report.ok, "{report:?}");
        assert_eq!(report.kept_heads.len(), 1);
        assert!(report.kept_heads[0].ok);
        // Reopening an intact log keeps no lost head.
        let log = AuditLog::open_keeping_head(&db, test_key(1), &head_path).unwrap();
        assert!(!head_file::lost_path(&head_path).exists());
        assert!(log.verify().ok);
    }

    #[test]
    fn truncation_is_reported_against_the_kept_head() {
        let (_dir, db_path, head_path) = kept_log(8);
        let db = sled::open(&db_path).unwrap();
        let tree = db.open_tree(TREE_NAME).unwrap();
        // Remove the last three entries, as someone with the sled files could.
        for seq in 5..8u64 {
            tree.remove(seq.to_be_bytes()).unwrap();
        }
        // Offline (the CLI's path): plain verify says intact, the kept head says truncated.
        assert!(verify(&tree, &test_key(1).verifying_key()).ok);
        let kept = head_file::load_all(&head_path).unwrap();
        let report = verify_with_heads(&tree, &test_key(1).verifying_key(), &kept);
        assert!(!report.ok);
        let bad = report.first_bad.unwrap();
        assert_eq!(bad.seq, 5);
        assert!(bad.reason.contains("truncated"), "{}", bad.reason);
        // The node restarting on the truncated log sets the kept head aside, audits it, and
        // its verify still reports the truncation.
        let log = AuditLog::open_keeping_head(&db, test_key(1), &head_path).unwrap();
        assert!(head_file::lost_path(&head_path).exists());
        let last = log.entries(5).next().unwrap().unwrap();
        assert_eq!(last.kind, "error");
        let report = log.verify();
        assert!(!report.ok, "{report:?}");
        assert!(
            report.kept_heads.iter().any(|k| !k.ok && k.size == 8),
            "{report:?}"
        );
    }

    #[test]
    fn a_resigned_rewrite_is_reported_against_the_kept_head() {
        let (_dir, db_path, head_path) = kept_log(5);
        let db = sled::open(&db_path).unwrap();
        let tree = db.open_tree(TREE_NAME).unwrap();
        // The key holder rewrites history from entry 2 on and re-signs a valid chain.
        let mut prev = AuditEntry::decode(1, &tree.get(1u64.to_be_bytes()).unwrap().unwrap())
            .unwrap()
            .hash;
        for seq in 2..6u64 {
            let e = AuditEntry::sign(seq, 1, "hello", vec![0xf6], prev, &test_key(1)).unwrap();
            prev = e.hash;
            tree.insert(seq.to_be_bytes(), e.encode().unwrap()).unwrap();
        }
        assert!(
            verify(&tree, &test_key(1).verifying_key()).ok,
            "the chain alone passes"
        );
        let kept = head_file::load_all(&head_path).unwrap();
        let report = verify_with_heads(&tree, &test_key(1).verifying_key(), &kept);
        assert!(!report.ok);
        assert!(
            report.first_bad.unwrap().reason.contains("rewritten"),
            "{:?}",
            report.kept_heads
        );
    }

    #[test]
    fn a_log_written_before_the_merkle_tree_migrates_on_open() {
        // Entries written by the current append path, then the node tree dropped: what a log
        // of the previous version holds.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let db = sled::open(&path).unwrap();
            let log = AuditLog::open(&db, test_key(1)).unwrap();
            for i in 0..20 {
                log.append(AuditKind::LeaseIssued, &payment(i)).unwrap();
            }
            drop(log);
            db.drop_tree(merkle::MERKLE_TREE_NAME).unwrap();
        }
        let db = sled::open(&path).unwrap();
        let log = AuditLog::open(&db, test_key(1)).unwrap();
        let sth = log.signed_head();
        assert_eq!(sth.head.size, 20);
        let leaves: Vec<merkle::Hash> = log
            .entries(0)
            .map(|e| merkle::leaf_hash(&e.unwrap().hash))
            .collect();
        assert_eq!(sth.head.root, merkle::root_of(&leaves));
        // And it goes on growing.
        log.append(AuditKind::Hello, &1).unwrap();
        assert_eq!(log.signed_head().head.size, 21);
    }
}
