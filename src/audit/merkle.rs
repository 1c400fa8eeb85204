//! The Merkle tree over the audit log (RFC 9162 hashing), signed tree heads, and inclusion
//! and consistency proofs with their offline verifiers.
//!
//! Leaf `i` of the tree is entry `i` of the log; its leaf data is the entry's 32-byte chain
//! `hash` (which already commits to every field of the entry and to its predecessor). The
//! tree hashes follow RFC 9162 §2.1.1 with SHA-256:
//!
//! ```text
//! MTH({})        = SHA-256()                       (empty tree)
//! leaf hash      = SHA-256(0x00 || entry.hash)
//! node hash      = SHA-256(0x01 || left || right)
//! MTH(D[n])      = node(MTH(D[0:k]), MTH(D[k:n]))   k = largest power of two < n
//! ```
//!
//! The stored form keeps, in the sled tree [`MERKLE_TREE_NAME`], the root of every *perfect*
//! (complete, aligned) subtree: key `level (u8) || index (u64 BE)` for the subtree over leaves
//! `[index·2^level, (index+1)·2^level)`. Any root or proof node is a combination of at most
//! `O(log n)` of them, so proofs cost `O(log² n)` reads at worst and no whole-log scan. The
//! stored nodes are derived data: [`MerkleStore::catch_up`] rebuilds whatever is missing from
//! the entries (the migration of a log written before the tree existed, and the repair after
//! a crash between an entry insert and its node insert).
//!
//! A signed tree head ([`SignedTreeHead`]) is the node key's signature over
//!
//! ```text
//! "leasewire/audit-head/v1\0" || size (u64 BE) || time_ms (u64 BE) || root (32 bytes)
//! ```

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AuditError, entries_in};

/// Name of the sled tree holding the perfect-subtree roots.
pub const MERKLE_TREE_NAME: &str = "audit_merkle";
/// Domain-separation tag that starts the bytes of a tree head signature.
pub const HEAD_SIG_DOMAIN: &[u8] = b"leasewire/audit-head/v1\0";
/// Prefix byte of a leaf hash input (RFC 9162).
pub const LEAF_PREFIX: u8 = 0x00;
/// Prefix byte of an interior node hash input (RFC 9162).
pub const NODE_PREFIX: u8 = 0x01;
/// Key in [`MERKLE_TREE_NAME`] holding the number of leaves whose nodes are stored.
const SIZE_KEY: &[u8] = b"size";

/// A 32-byte SHA-256 value.
pub type Hash = [u8; 32];

/// Errors of proof verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The proof does not match the given sizes (wrong length, index out of range).
    #[error("malformed proof: {0}")]
    Malformed(&'static str),
    /// The proof is well formed but the recomputed root differs.
    #[error("proof does not lead to the expected root")]
    RootMismatch,
    /// A tree head signature does not verify.
    #[error("tree head signature does not verify")]
    BadSignature,
    /// A public key is not a valid Ed25519 key.
    #[error("invalid signer key")]
    BadKey,
}

/// `SHA-256()`: the root of the empty tree.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// RFC 9162 leaf hash of `data` (for the audit log, `data` is an entry's chain hash).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(data);
    h.finalize().into()
}

/// RFC 9162 interior node hash.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Largest power of two strictly smaller than `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Root of the tree over the leaf hashes `leaves`, computed directly (for tests, vectors and
/// small in-memory trees).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// Where proof code reads perfect-subtree roots from.
pub trait NodeSource {
    /// Root of the perfect subtree over leaves `[index·2^level, (index+1)·2^level)`.
    ///
    /// # Errors
    /// Whatever the store reports; a missing node is an error.
    fn perfect(&self, level: u8, index: u64) -> Result<Hash, AuditError>;
}

/// Leaf hashes held in memory are a [`NodeSource`] (perfect subtrees computed on demand).
impl NodeSource for [Hash] {
    fn perfect(&self, level: u8, index: u64) -> Result<Hash, AuditError> {
        let width = 1usize << level;
        let lo = usize::try_from(index)
            .unwrap_or(usize::MAX)
            .saturating_mul(width);
        self.get(lo..lo.saturating_add(width))
            .map(root_of)
            .ok_or_else(|| AuditError::Decode {
                what: "merkle node".into(),
                reason: format!("level {level} index {index} is past the leaves"),
            })
    }
}

/// Root over leaves `[lo, hi)`, `lo < hi`, from perfect subtrees.
pub fn subtree_root<S: NodeSource + ?Sized>(src: &S, lo: u64, hi: u64) -> Result<Hash, AuditError> {
    let n = hi - lo;
    if n.is_power_of_two() && lo.is_multiple_of(n) {
        return src.perfect(n.trailing_zeros() as u8, lo / n);
    }
    let k = split(n);
    Ok(node_hash(
        &subtree_root(src, lo, lo + k)?,
        &subtree_root(src, lo + k, hi)?,
    ))
}

/// Root of the tree of the first `size` leaves.
///
/// # Errors
/// A store error or missing node from `src`.
pub fn root_at<S: NodeSource + ?Sized>(src: &S, size: u64) -> Result<Hash, AuditError> {
    if size == 0 {
        return Ok(empty_root());
    }
    subtree_root(src, 0, size)
}

/// RFC 9162 inclusion proof (`PATH(m, D[n])`) of leaf `index` in the tree of `size` leaves,
/// leaf-side first.
///
/// # Errors
/// [`AuditError::Decode`] if `index >= size`; store errors from `src`.
pub fn inclusion_proof<S: NodeSource + ?Sized>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, AuditError> {
    if index >= size {
        return Err(AuditError::Decode {
            what: "inclusion proof request".into(),
            reason: format!("leaf {index} is not in a tree of {size}"),
        });
    }
    let mut path = Vec::new();
    let (mut lo, mut hi) = (0u64, size);
    // Walk down from the root, collecting the sibling at each split; reversed at the end so
    // the path runs from the leaf up, as RFC 9162 orders it.
    while hi - lo > 1 {
        let k = split(hi - lo);
        if index - lo < k {
            path.push(subtree_root(src, lo + k, hi)?);
            hi = lo + k;
        } else {
            path.push(subtree_root(src, lo, lo + k)?);
            lo += k;
        }
    }
    path.reverse();
    Ok(path)
}

/// RFC 9162 consistency proof (`PROOF(m, D[n])`) that the tree of `old_size` leaves is a
/// prefix of the tree of `new_size` leaves. Empty when `old_size` is 0 or equals `new_size`.
///
/// # Errors
/// [`AuditError::Decode`] if `old_size > new_size`; store errors from `src`.
pub fn consistency_proof<S: NodeSource + ?Sized>(
    src: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, AuditError> {
    if old_size > new_size {
        return Err(AuditError::Decode {
            what: "consistency proof request".into(),
            reason: format!("old size {old_size} is larger than new size {new_size}"),
        });
    }
    if old_size == 0 || old_size == new_size {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[lo:hi], b), unrolled: the nodes are pushed root side first and
    // reversed at the end.
    let mut out = Vec::new();
    let (mut m, mut lo, mut hi, mut b) = (old_size, 0u64, new_size, true);
    loop {
        let n = hi - lo;
        if m == n {
            if !b {
                out.push(subtree_root(src, lo, hi)?);
            }
            break;
        }
        let k = split(n);
        if m <= k {
            out.push(subtree_root(src, lo + k, hi)?);
            hi = lo + k;
        } else {
            out.push(subtree_root(src, lo, lo + k)?);
            lo += k;
            m -= k;
            b = false;
        }
    }
    out.reverse();
    Ok(out)
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2): that `leaf` (a leaf hash) is leaf
/// `index` of the tree of `size` leaves with root `root`.
///
/// # Errors
/// [`ProofError::Malformed`] or [`ProofError::RootMismatch`].
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    path: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::Malformed(
            "leaf index is not below the tree size",
        ));
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if snode == 0 {
            return Err(ProofError::Malformed("inclusion path too long"));
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Malformed("inclusion path too short"));
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Verifies a consistency proof (RFC 9162 §2.1.4.2): that the tree of `old_size` leaves with
/// root `old_root` is a prefix of the tree of `new_size` leaves with root `new_root`.
///
/// # Errors
/// [`ProofError::Malformed`] or [`ProofError::RootMismatch`].
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::Malformed("old size is larger than new size"));
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::Malformed(
                "proof between equal sizes must be empty",
            ));
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if old_size == 0 {
        // Every tree extends the empty one.
        if !proof.is_empty() {
            return Err(ProofError::Malformed(
                "proof from the empty tree must be empty",
            ));
        }
        return if *old_root == empty_root() {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::Malformed("empty consistency proof"));
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return Err(ProofError::Malformed("consistency proof too long"));
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::Malformed("consistency proof too short"));
    }
    if fr != *old_root || sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// A tree head: the log's size and Merkle root at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeHead {
    /// Number of entries (leaves) covered.
    pub size: u64,
    /// Wall-clock time of signing, ms since the Unix epoch.
    pub time_ms: u64,
    /// Merkle root of the first `size` entries.
    #[serde(with = "hex32")]
    pub root: Hash,
}

impl TreeHead {
    /// The bytes a head signature covers (see the module docs).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut msg = Vec::with_capacity(HEAD_SIG_DOMAIN.len() + 48);
        msg.extend_from_slice(HEAD_SIG_DOMAIN);
        msg.extend_from_slice(&self.size.to_be_bytes());
        msg.extend_from_slice(&self.time_ms.to_be_bytes());
        msg.extend_from_slice(&self.root);
        msg
    }

    /// Signs the head with `key`.
    pub fn sign(self, key: &SigningKey) -> SignedTreeHead {
        let sig = key.sign(&self.signed_bytes()).to_bytes();
        SignedTreeHead {
            head: self,
            signer: key.verifying_key().to_bytes(),
            sig,
        }
    }
}

/// A [`TreeHead`] with its signer and Ed25519 signature. Serializes (JSON, CBOR) as a map
/// `{size, time_ms, root, signer, sig}`, byte fields as lowercase hex text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTreeHead {
    /// The head.
    #[serde(flatten)]
    pub head: TreeHead,
    /// The signer's Ed25519 public key.
    #[serde(with = "hex32")]
    pub signer: [u8; 32],
    /// Ed25519 signature over [`TreeHead::signed_bytes`].
    #[serde(with = "hex64")]
    pub sig: [u8; 64],
}

impl SignedTreeHead {
    /// The signer's public key.
    ///
    /// # Errors
    /// [`ProofError::BadKey`] when the bytes are not a valid key.
    pub fn signer_key(&self) -> Result<VerifyingKey, ProofError> {
        VerifyingKey::from_bytes(&self.signer).map_err(|_| ProofError::BadKey)
    }

    /// Checks the signature (strictly) against the embedded signer. Whether that signer is
    /// the expected one is the caller's question.
    ///
    /// # Errors
    /// [`ProofError::BadKey`] or [`ProofError::BadSignature`].
    pub fn verify(&self) -> Result<(), ProofError> {
        let key = self.signer_key()?;
        key.verify_strict(&self.head.signed_bytes(), &Signature::from_bytes(&self.sig))
            .map_err(|_| ProofError::BadSignature)
    }
}

impl SignedTreeHead {
    /// The wire form (`head` of a `head` message).
    pub fn to_wire(&self) -> crate::wire::WireHead {
        crate::wire::WireHead {
            size: self.head.size,
            time_ms: self.head.time_ms,
            root: self.head.root.to_vec(),
            signer: self.signer.to_vec(),
            sig: self.sig.to_vec(),
        }
    }

    /// Reads the wire form and checks its signature.
    ///
    /// # Errors
    /// [`ProofError::Malformed`] for wrong field lengths; [`ProofError::BadKey`] or
    /// [`ProofError::BadSignature`].
    pub fn from_wire(w: &crate::wire::WireHead) -> Result<Self, ProofError> {
        let sth = SignedTreeHead {
            head: TreeHead {
                size: w.size,
                time_ms: w.time_ms,
                root: w
                    .root
                    .as_slice()
                    .try_into()
                    .map_err(|_| ProofError::Malformed("root is not 32 bytes"))?,
            },
            signer: w
                .signer
                .as_slice()
                .try_into()
                .map_err(|_| ProofError::Malformed("signer is not 32 bytes"))?,
            sig: w
                .sig
                .as_slice()
                .try_into()
                .map_err(|_| ProofError::Malformed("signature is not 64 bytes"))?,
        };
        sth.verify()?;
        Ok(sth)
    }
}

/// An inclusion proof of one leaf, as carried in certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// Index of the leaf (the entry's seq).
    pub leaf_index: u64,
    /// Size of the tree the proof is for.
    pub tree_size: u64,
    /// Sibling hashes, leaf side first, hex.
    #[serde(with = "hex_vec")]
    pub path: Vec<Hash>,
}

/// A consistency proof between two tree sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// Size of the older tree.
    pub old_size: u64,
    /// Size of the newer tree.
    pub new_size: u64,
    /// Proof nodes in RFC 9162 order, hex.
    #[serde(with = "hex_vec")]
    pub path: Vec<Hash>,
}

/// The stored perfect-subtree roots of one log (see the module docs).
#[derive(Debug, Clone)]
pub struct MerkleStore {
    tree: sled::Tree,
}

fn node_key(level: u8, index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = level;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

impl NodeSource for MerkleStore {
    fn perfect(&self, level: u8, index: u64) -> Result<Hash, AuditError> {
        let raw = self
            .tree
            .get(node_key(level, index))?
            .ok_or_else(|| AuditError::Decode {
                what: "merkle node".into(),
                reason: format!("level {level} index {index} is not stored"),
            })?;
        <Hash>::try_from(raw.as_ref()).map_err(|_| AuditError::Decode {
            what: "merkle node".into(),
            reason: format!("level {level} index {index}: {} bytes", raw.len()),
        })
    }
}

impl MerkleStore {
    /// Opens the node tree of `db` (nothing is built; see [`catch_up`](Self::catch_up)).
    ///
    /// # Errors
    /// [`AuditError::Sled`].
    pub fn open(db: &sled::Db) -> Result<Self, AuditError> {
        Ok(MerkleStore {
            tree: db.open_tree(MERKLE_TREE_NAME)?,
        })
    }

    /// Number of leaves whose nodes are stored.
    ///
    /// # Errors
    /// [`AuditError::Sled`], or [`AuditError::Decode`] for a malformed size record.
    pub fn size(&self) -> Result<u64, AuditError> {
        match self.tree.get(SIZE_KEY)? {
            None => Ok(0),
            Some(raw) => <[u8; 8]>::try_from(raw.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| AuditError::Decode {
                    what: "merkle size".into(),
                    reason: format!("{} bytes, expected 8", raw.len()),
                }),
        }
    }

    /// The node writes that append `leaves` (entry chain hashes) after the first `size`
    /// leaves, and the new size. Pure apart from reads of stored left siblings.
    ///
    /// # Errors
    /// A store error or missing left sibling.
    pub(super) fn append_batch(
        &self,
        size: u64,
        leaves: &[Hash],
    ) -> Result<(sled::Batch, u64), AuditError> {
        let mut batch = sled::Batch::default();
        // Nodes written in this batch are not readable from the tree yet; keep them here.
        let mut fresh: std::collections::HashMap<(u8, u64), Hash> = Default::default();
        let mut n = size;
        for data in leaves {
            let mut h = leaf_hash(data);
            let (mut level, mut index) = (0u8, n);
            fresh.insert((level, index), h);
            batch.insert(&node_key(level, index), &h[..]);
            // A right child completes its parent.
            while index & 1 == 1 {
                let left = match fresh.get(&(level, index - 1)) {
                    Some(l) => *l,
                    None => self.perfect(level, index - 1)?,
                };
                h = node_hash(&left, &h);
                level += 1;
                index >>= 1;
                fresh.insert((level, index), h);
                batch.insert(&node_key(level, index), &h[..]);
            }
            n += 1;
        }
        batch.insert(SIZE_KEY, &n.to_be_bytes()[..]);
        Ok((batch, n))
    }

    /// Appends leaves for `leaves` after the stored size and applies them.
    ///
    /// # Errors
    /// Store errors.
    pub(super) fn append(&self, leaves: &[Hash]) -> Result<u64, AuditError> {
        let (batch, n) = self.append_batch(self.size()?, leaves)?;
        self.tree.apply_batch(batch)?;
        Ok(n)
    }

    /// Builds the nodes of every entry of `entries_tree` past the stored size: migrates a log
    /// written before the tree existed, and repairs a crash between an entry's insert and its
    /// nodes'. Returns the new size.
    ///
    /// # Errors
    /// Store or decode errors of the entries.
    pub fn catch_up(&self, entries_tree: &sled::Tree) -> Result<u64, AuditError> {
        let mut size = self.size()?;
        let mut pending: Vec<Hash> = Vec::new();
        let migrating = size;
        for entry in entries_in(entries_tree, size) {
            let entry = entry?;
            if entry.seq != size + pending.len() as u64 {
                // A gap: the tree stops where the log does; `verify` names the gap.
                break;
            }
            pending.push(entry.hash);
            if pending.len() >= 4096 {
                size = self.append(&pending)?;
                pending.clear();
            }
        }
        if !pending.is_empty() {
            size = self.append(&pending)?;
        }
        if size > migrating {
            self.tree.flush()?;
            tracing::info!(
                from = migrating,
                to = size,
                "audit merkle tree built for existing entries"
            );
        }
        Ok(size)
    }

    /// Root of the first `size` leaves.
    ///
    /// # Errors
    /// Store errors or missing nodes.
    pub fn root(&self, size: u64) -> Result<Hash, AuditError> {
        root_at(self, size)
    }

    /// The underlying sled tree.
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }
}

/// What a witness concludes from a peer's newer head and the proof that came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadVerdict {
    /// The new head extends the old one (or equals it): keep the new one.
    Extends,
    /// The two heads cannot both be true of one append-only log: the signer forked or
    /// rewrote it (`reason` says how).
    Fork {
        /// Why.
        reason: String,
    },
    /// The signer presented a head smaller than one it signed before: it lost or removed
    /// entries (a rollback or truncation).
    Rollback,
}

/// Compares a peer's `new` head with the `old` one a witness holds, given the consistency
/// proof from `old.size` to `new.size` the peer sent. Both heads must already be verified
/// and by the same signer (the caller checks that).
pub fn judge_heads(old: &SignedTreeHead, new: &SignedTreeHead, proof: &[Hash]) -> HeadVerdict {
    let (o, n) = (old.head, new.head);
    if n.size < o.size {
        return HeadVerdict::Rollback;
    }
    match verify_consistency(o.size, n.size, &o.root, &n.root, proof) {
        Ok(()) => HeadVerdict::Extends,
        Err(e) if n.size == o.size => HeadVerdict::Fork {
            reason: format!("two heads of size {} with different roots ({e})", n.size),
        },
        Err(e) => HeadVerdict::Fork {
            reason: format!(
                "the head of size {} does not extend the head of size {}: {e}",
                n.size, o.size
            ),
        },
    }
}

/// Serde helpers: fixed-size byte arrays and lists of them as lowercase hex text.
pub(crate) mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as hex text.
    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    /// Parses hex text of exactly 32 bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 bytes of hex"))
    }
}

pub(crate) mod hex64 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as hex text.
    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    /// Parses hex text of exactly 64 bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("expected 64 bytes of hex"))
    }
}

pub(crate) mod hex_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as a list of hex texts.
    pub fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }

    /// Parses a list of 32-byte hex texts.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| {
                hex::decode(s)
                    .map_err(serde::de::Error::custom)?
                    .try_into()
                    .map_err(|_| serde::de::Error::custom("expected 32 bytes of hex"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{filled_log, temp_db, test_key};

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn every_inclusion_proof_verifies_and_tampering_fails() {
        for n in 1..=33u64 {
            let l = leaves(n);
            let root = root_of(&l);
            for i in 0..n {
                let path = inclusion_proof(l.as_slice(), i, n).unwrap();
                assert!(path.len() <= 64 - (n.leading_zeros() as usize) + 1);
                verify_inclusion(&l[i as usize], i, n, &path, &root).unwrap();
                // Wrong leaf, wrong index, wrong root, flipped node: all refused.
                let other = leaf_hash(b"other");
                assert!(verify_inclusion(&other, i, n, &path, &root).is_err());
                if n > 1 {
                    assert!(
                        verify_inclusion(&l[i as usize], (i + 1) % n, n, &path, &root).is_err()
                    );
                }
                assert!(verify_inclusion(&l[i as usize], i, n, &path, &[7u8; 32]).is_err());
                for j in 0..path.len() {
                    let mut bad = path.clone();
                    bad[j][0] ^= 1;
                    assert!(verify_inclusion(&l[i as usize], i, n, &bad, &root).is_err());
                }
                let mut long = path.clone();
                long.push([0u8; 32]);
                assert!(verify_inclusion(&l[i as usize], i, n, &long, &root).is_err());
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_tampering_fails() {
        for n in 1..=33u64 {
            let l = leaves(n);
            let new_root = root_of(&l);
            for m in 0..=n {
                let old_root = root_of(&l[..m as usize]);
                let proof = consistency_proof(l.as_slice(), m, n).unwrap();
                verify_consistency(m, n, &old_root, &new_root, &proof).unwrap();
                if m > 0 && m < n {
                    // A forked old tree (its last leaf changed) is not a prefix.
                    let mut forked = l[..m as usize].to_vec();
                    forked[m as usize - 1] = leaf_hash(b"fork");
                    assert_eq!(
                        verify_consistency(m, n, &root_of(&forked), &new_root, &proof),
                        Err(ProofError::RootMismatch)
                    );
                    for j in 0..proof.len() {
                        let mut bad = proof.clone();
                        bad[j][31] ^= 0x80;
                        assert!(verify_consistency(m, n, &old_root, &new_root, &bad).is_err());
                    }
                    assert!(verify_consistency(m, n, &old_root, &new_root, &[]).is_err());
                }
            }
        }
    }

    #[test]
    fn stored_nodes_give_the_same_roots_and_proofs_as_the_leaves() {
        let (_dir, db) = temp_db();
        let store = MerkleStore::open(&db).unwrap();
        let data: Vec<Hash> = (0..45u64)
            .map(|i| Sha256::digest(i.to_be_bytes()).into())
            .collect();
        // Appended in uneven batches, as the writer's groups come.
        let mut at = 0;
        for chunk in [1usize, 2, 5, 8, 13, 16] {
            store.append(&data[at..at + chunk]).unwrap();
            at += chunk;
        }
        assert_eq!(store.size().unwrap(), 45);
        let l: Vec<Hash> = data.iter().map(|d| leaf_hash(d)).collect();
        for n in 1..=45u64 {
            assert_eq!(store.root(n).unwrap(), root_of(&l[..n as usize]));
            for i in [0, n / 2, n - 1] {
                assert_eq!(
                    inclusion_proof(&store, i, n).unwrap(),
                    inclusion_proof(l.as_slice(), i, n).unwrap()
                );
            }
            assert_eq!(
                consistency_proof(&store, n / 3, n).unwrap(),
                consistency_proof(l.as_slice(), n / 3, n).unwrap()
            );
        }
        assert_eq!(store.root(0).unwrap(), empty_root());
    }

    #[test]
    fn catch_up_builds_the_tree_of_an_existing_log() {
        // A log written by the plain append path, then its node tree removed: the state of a
        // log made before the Merkle tree existed.
        let (_dir, db, log) = filled_log(11);
        let store = MerkleStore::open(&db).unwrap();
        store.tree().clear().unwrap();
        assert_eq!(store.size().unwrap(), 0);
        assert_eq!(store.catch_up(log.tree()).unwrap(), 11);
        let l: Vec<Hash> = log
            .entries(0)
            .map(|e| leaf_hash(&e.unwrap().hash))
            .collect();
        assert_eq!(store.root(11).unwrap(), root_of(&l));
        // Idempotent.
        assert_eq!(store.catch_up(log.tree()).unwrap(), 11);
    }

    #[test]
    fn judging_heads_finds_forks_and_rollbacks() {
        let key = test_key(3);
        let l = leaves(9);
        let head = |n: usize, leaves: &[Hash]| {
            TreeHead {
                size: n as u64,
                time_ms: n as u64,
                root: root_of(&leaves[..n]),
            }
            .sign(&key)
        };
        let old = head(5, &l);
        let new = head(9, &l);
        let proof = consistency_proof(l.as_slice(), 5, 9).unwrap();
        assert_eq!(judge_heads(&old, &new, &proof), HeadVerdict::Extends);
        assert_eq!(judge_heads(&old, &old, &[]), HeadVerdict::Extends);
        assert_eq!(judge_heads(&new, &old, &[]), HeadVerdict::Rollback);
        // A fork at leaf 3: its own history is self-consistent, but not with the old head.
        let mut forked = l.clone();
        forked[3] = leaf_hash(b"fork");
        let fork_new = head(9, &forked);
        let fork_proof = consistency_proof(forked.as_slice(), 5, 9).unwrap();
        assert!(matches!(
            judge_heads(&old, &fork_new, &fork_proof),
            HeadVerdict::Fork { .. }
        ));
        assert!(matches!(
            judge_heads(&old, &head(5, &forked), &[]),
            HeadVerdict::Fork { .. }
        ));
    }

    #[test]
    fn head_signature_covers_every_field() {
        let key = test_key(3);
        let sth = TreeHead {
            size: 5,
            time_ms: 1_700_000_000_000,
            root: [4u8; 32],
        }
        .sign(&key);
        sth.verify().unwrap();
        let mut bad = sth;
        bad.head.size = 6;
        assert_eq!(bad.verify(), Err(ProofError::BadSignature));
        let mut bad = sth;
        bad.head.time_ms += 1;
        assert_eq!(bad.verify(), Err(ProofError::BadSignature));
        let mut bad = sth;
        bad.head.root[0] ^= 1;
        assert_eq!(bad.verify(), Err(ProofError::BadSignature));
        let mut bad = sth;
        bad.signer = test_key(4).verifying_key().to_bytes();
        assert_eq!(bad.verify(), Err(ProofError::BadSignature));
        // JSON round trip keeps it verifiable.
        let json = serde_json::to_string(&sth).unwrap();
        assert!(json.contains("\"root\":\"0404"), "{json}");
        let back: SignedTreeHead = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sth);
        back.verify().unwrap();
    }
}
