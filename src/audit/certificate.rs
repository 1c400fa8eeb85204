//! Lease certificates: a provider-signed lease and the offer it was made under, with an
//! inclusion proof of a `lease_certified` entry of the provider's audit log under a signed
//! tree head. Anyone can check one offline ([`verify_certificate`]), with no daemon and no
//! network; docs/PROTOCOL.md specifies the format so that other implementations can too.
//!
//! What a valid certificate shows: the key that signed the lease (the provider) also signed
//! the offer it names, logged the lease (its exact signed bytes, by hash) in its append-only
//! log at `entry.seq`, and signed a head of that log which includes the entry. A provider
//! that later denies the lease must either show a log without that entry (which cannot be
//! consistent with the head it signed) or not show its log at all.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::merkle::{self, InclusionProof, SignedTreeHead, hex32, hex64};
use super::{AuditEntry, AuditError, AuditKind, AuditLog};
use crate::wire::signed::peer_id_of;
use crate::wire::{Lease, Offer, Signed, SignedKind};

/// The `format` string of a version-1 certificate.
pub const CERTIFICATE_FORMAT: &str = "leasewire-lease-certificate/v1";

/// Errors of building or checking a certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The audit log failed while building.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The file is not a certificate of a known format.
    #[error("not a lease certificate: {0}")]
    Format(String),
    /// A check failed: the certificate was tampered with or is not what it claims.
    #[error("certificate does not verify: {0}")]
    Invalid(String),
}

fn invalid(what: impl Into<String>) -> CertificateError {
    CertificateError::Invalid(what.into())
}

/// A signed value with its fields as hex text (the JSON form of [`Signed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHex {
    /// Signer's Ed25519 public key, 32 bytes.
    #[serde(with = "hex32")]
    pub signer: [u8; 32],
    /// The CBOR body, as signed.
    #[serde(with = "hex_bytes")]
    pub body: Vec<u8>,
    /// Ed25519 signature over `DOMAIN || 0x00 || body`.
    #[serde(with = "hex64")]
    pub sig: [u8; 64],
}

impl SignedHex {
    /// The hex form of `signed`.
    ///
    /// # Errors
    /// [`CertificateError::Format`] when the key or signature has the wrong length.
    pub fn of<T: SignedKind>(signed: &Signed<T>) -> Result<Self, CertificateError> {
        Ok(SignedHex {
            signer: signed
                .signer
                .as_slice()
                .try_into()
                .map_err(|_| CertificateError::Format("signer is not 32 bytes".into()))?,
            body: signed.body.clone(),
            sig: signed
                .sig
                .as_slice()
                .try_into()
                .map_err(|_| CertificateError::Format("signature is not 64 bytes".into()))?,
        })
    }

    /// Back to a [`Signed`] (not verified).
    ///
    /// # Errors
    /// [`CertificateError::Format`] (cannot happen for well-formed fields).
    pub fn to_signed<T: SignedKind>(&self) -> Result<Signed<T>, CertificateError> {
        use ciborium::Value;
        let map = Value::Map(vec![
            (
                Value::Text("signer".into()),
                Value::Bytes(self.signer.to_vec()),
            ),
            (Value::Text("body".into()), Value::Bytes(self.body.clone())),
            (Value::Text("sig".into()), Value::Bytes(self.sig.to_vec())),
        ]);
        map.deserialized()
            .map_err(|e| CertificateError::Format(format!("signed value: {e}")))
    }
}

/// An audit entry with its byte fields as hex text (the JSON form of [`AuditEntry`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryHex {
    /// Position in the log.
    pub seq: u64,
    /// Append time, ms since the Unix epoch.
    pub time_ms: u64,
    /// Kind name.
    pub kind: String,
    /// CBOR payload.
    #[serde(with = "hex_bytes")]
    pub payload: Vec<u8>,
    /// Hash of the previous entry.
    #[serde(with = "hex32")]
    pub prev_hash: [u8; 32],
    /// This entry's hash.
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
    /// The entry signature.
    #[serde(with = "hex64")]
    pub sig: [u8; 64],
}

impl From<AuditEntry> for EntryHex {
    fn from(e: AuditEntry) -> Self {
        EntryHex {
            seq: e.seq,
            time_ms: e.time_ms,
            kind: e.kind,
            payload: e.payload,
            prev_hash: e.prev_hash,
            hash: e.hash,
            sig: e.sig,
        }
    }
}

impl From<EntryHex> for AuditEntry {
    fn from(e: EntryHex) -> Self {
        AuditEntry {
            seq: e.seq,
            time_ms: e.time_ms,
            kind: e.kind,
            payload: e.payload,
            prev_hash: e.prev_hash,
            hash: e.hash,
            sig: e.sig,
        }
    }
}

/// Payload of a `lease_certified` audit entry (CBOR map with text keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifiedPayload {
    /// The lease.
    pub lease_id: String,
    /// Its revision.
    pub revision: u64,
    /// SHA-256 of the signed lease's `body` bytes, hex.
    pub lease_sha256: String,
    /// The offer the lease names.
    pub offer_id: String,
}

/// A lease certificate (JSON; see docs/PROTOCOL.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseCertificate {
    /// Always [`CERTIFICATE_FORMAT`].
    pub format: String,
    /// The provider-signed lease.
    pub lease: SignedHex,
    /// The provider-signed offer the lease was made under (`None` when the provider no
    /// longer had it: leases issued before offers were kept).
    pub offer: Option<SignedHex>,
    /// The `lease_certified` entry of the provider's log.
    pub entry: EntryHex,
    /// Inclusion proof of `entry` under `head`.
    pub inclusion: InclusionProof,
    /// A signed head of the provider's log.
    pub head: SignedTreeHead,
}

/// What a valid certificate says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateSummary {
    /// The provider's PeerId (the signer of everything).
    pub provider: String,
    /// The provider's Ed25519 public key, hex.
    pub provider_key: String,
    /// The renter's PeerId.
    pub renter: String,
    /// The lease id.
    pub lease_id: String,
    /// The lease revision.
    pub revision: u64,
    /// Leased IPv4 prefix.
    pub ipv4: Option<String>,
    /// Leased IPv6 prefix.
    pub ipv6: Option<String>,
    /// When the lease became active (Unix seconds).
    pub activated_at: u64,
    /// Paid up to (Unix seconds).
    pub paid_until: u64,
    /// The offer id, and whether the offer was included and verified.
    pub offer_id: String,
    /// Whether the certificate carries the offer (and it verified).
    pub offer_included: bool,
    /// Seq of the `lease_certified` entry in the provider's log.
    pub log_seq: u64,
    /// Size of the signed head the entry is proven under.
    pub head_size: u64,
    /// When the head was signed (ms since the Unix epoch).
    pub head_time_ms: u64,
}

/// SHA-256 of `bytes`, hex.
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Builds a certificate for `lease` (signed by `log`'s key): appends a `lease_certified`
/// entry, waits until it is durable, and proves it under the head signed right after.
///
/// # Errors
/// [`CertificateError::Invalid`] when the lease or offer is not signed by the log's key or
/// does not verify; audit errors.
pub async fn build_certificate(
    log: &AuditLog,
    lease: &Signed<Lease>,
    offer: Option<&Signed<Offer>>,
) -> Result<LeaseCertificate, CertificateError> {
    let me = log.verifying_key().to_bytes();
    if lease.signer.as_slice() != me {
        return Err(invalid("the lease is not signed by this node's key"));
    }
    let decoded = lease.verify().map_err(|e| invalid(format!("lease: {e}")))?;
    if let Some(o) = offer
        && (o.signer.as_slice() != me || o.id() != decoded.offer_id)
    {
        return Err(invalid("the offer is not this node's offer of the lease"));
    }
    let payload = CertifiedPayload {
        lease_id: decoded.lease_id.clone(),
        revision: decoded.revision,
        lease_sha256: sha256_hex(&lease.body),
        offer_id: decoded.offer_id.clone(),
    };
    let seq = log
        .append_async(AuditKind::LeaseCertified, &payload)
        .await?;
    let head = log.signed_head();
    if head.head.size <= seq {
        // The writer publishes the head before it answers; this would be a bug.
        return Err(invalid("no signed head covers the new entry yet"));
    }
    let inclusion = log.inclusion_proof(seq, head.head.size)?;
    let entry = log
        .entries(seq)
        .next()
        .ok_or_else(|| invalid("the new entry is not readable"))??;
    Ok(LeaseCertificate {
        format: CERTIFICATE_FORMAT.into(),
        lease: SignedHex::of(lease)?,
        offer: offer.map(SignedHex::of).transpose()?,
        entry: entry.into(),
        inclusion,
        head,
    })
}

/// Parses a certificate file.
///
/// # Errors
/// [`CertificateError::Format`].
pub fn parse_certificate(bytes: &[u8]) -> Result<LeaseCertificate, CertificateError> {
    let cert: LeaseCertificate =
        serde_json::from_slice(bytes).map_err(|e| CertificateError::Format(e.to_string()))?;
    if cert.format != CERTIFICATE_FORMAT {
        return Err(CertificateError::Format(format!(
            "format {:?}, expected {CERTIFICATE_FORMAT:?}",
            cert.format
        )));
    }
    Ok(cert)
}

/// Checks a certificate offline: every signature (lease, offer, log entry, tree head) is by
/// the one provider key the lease names; the offer is the one the lease names; the log entry
/// recomputes, is a `lease_certified` entry for exactly these lease bytes; and the inclusion
/// proof leads from it to the signed head's root.
///
/// # Errors
/// [`CertificateError::Invalid`] naming the first failed check.
pub fn verify_certificate(cert: &LeaseCertificate) -> Result<CertificateSummary, CertificateError> {
    if cert.format != CERTIFICATE_FORMAT {
        return Err(CertificateError::Format(cert.format.clone()));
    }
    let signer = VerifyingKey::from_bytes(&cert.lease.signer)
        .map_err(|_| invalid("the lease signer is not a valid key"))?;
    let provider = peer_id_of(&signer);
    let lease: Lease = cert
        .lease
        .to_signed::<Lease>()?
        .verify_from(&provider)
        .map_err(|e| invalid(format!("lease: {e}")))?;
    if lease.provider != provider.to_string() {
        return Err(invalid("the lease names another provider than its signer"));
    }
    let offer_included = match &cert.offer {
        None => false,
        Some(o) => {
            let signed = o.to_signed::<Offer>()?;
            signed
                .verify_from(&provider)
                .map_err(|e| invalid(format!("offer: {e}")))?;
            if signed.id() != lease.offer_id {
                return Err(invalid("the offer is not the one the lease names"));
            }
            true
        }
    };
    // The log entry: recomputes, signed by the provider, certifies exactly these lease bytes.
    let entry: AuditEntry = cert.entry.clone().into();
    if entry.compute_hash().map_err(|e| invalid(e.to_string()))? != entry.hash {
        return Err(invalid("the log entry's hash does not recompute"));
    }
    if !entry.signature_valid(&signer) {
        return Err(invalid("the log entry is not signed by the provider"));
    }
    if entry.kind != AuditKind::LeaseCertified.as_str() {
        return Err(invalid(format!(
            "the log entry is a {:?} entry",
            entry.kind
        )));
    }
    let payload: CertifiedPayload = entry
        .payload_as()
        .map_err(|e| invalid(format!("log entry payload: {e}")))?;
    if payload.lease_sha256 != sha256_hex(&cert.lease.body)
        || payload.lease_id != lease.lease_id
        || payload.revision != lease.revision
    {
        return Err(invalid("the log entry certifies another lease"));
    }
    // The head: signed by the provider; the entry is in it.
    if cert.head.signer != cert.lease.signer {
        return Err(invalid("the tree head is signed by another key"));
    }
    cert.head
        .verify()
        .map_err(|e| invalid(format!("tree head: {e}")))?;
    if cert.inclusion.leaf_index != entry.seq || cert.inclusion.tree_size != cert.head.head.size {
        return Err(invalid(
            "the inclusion proof is for another position or tree",
        ));
    }
    merkle::verify_inclusion(
        &merkle::leaf_hash(&entry.hash),
        entry.seq,
        cert.head.head.size,
        &cert.inclusion.path,
        &cert.head.head.root,
    )
    .map_err(|e| invalid(format!("inclusion proof: {e}")))?;
    Ok(CertificateSummary {
        provider: provider.to_string(),
        provider_key: hex::encode(cert.lease.signer),
        renter: lease.renter,
        lease_id: lease.lease_id,
        revision: lease.revision,
        ipv4: lease.ipv4,
        ipv6: lease.ipv6,
        activated_at: lease.activated_at,
        paid_until: lease.paid_until,
        offer_id: lease.offer_id,
        offer_included,
        log_seq: entry.seq,
        head_size: cert.head.head.size,
        head_time_ms: cert.head.head.time_ms,
    })
}

/// Serde helper: a byte string as lowercase hex text.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{filled_log, test_key};
    use crate::types::{Terms, WgKey};

    pub(crate) fn sample_offer() -> Offer {
        Offer {
            provider: peer_id_of(&test_key(1).verifying_key()).to_string(),
            seq: 3,
            created_at: 1_700_000_000,
            expires_at: 1_700_086_400,
            network: "regtest".into(),
            ln_pubkey: "02".repeat(33),
            wg_pubkey: WgKey([5; 32]),
            endpoint: "198.51.100.1:51820".into(),
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            terms: Terms {
                activation_fee_sat: 1_000,
                rate_sat_per_day: 100,
                min_initial_credit_sat: 100,
                min_topup_sat: 10,
                max_credit_sat: 100_000,
                reserve_days: 7,
                refund_unused: false,
                reservation_secs: 0,
            },
        }
    }

    pub(crate) fn sample_lease(offer_id: &str) -> Lease {
        let offer = sample_offer();
        Lease {
            lease_id: "ab".repeat(16),
            provider: offer.provider.clone(),
            renter: peer_id_of(&test_key(2).verifying_key()).to_string(),
            offer_id: offer_id.into(),
            renter_wg_pubkey: WgKey([6; 32]),
            provider_wg_pubkey: WgKey([5; 32]),
            endpoint: offer.endpoint.clone(),
            ipv4: Some("198.51.100.7/32".into()),
            ipv6: None,
            allowed_ips: vec!["198.51.100.7/32".into()],
            terms: offer.terms.clone(),
            credit_sat: 1_000,
            activated_at: 1_700_000_100,
            paid_until: 1_700_864_100,
            payment_hash: "cd".repeat(32),
            revision: 1,
        }
    }

    async fn certificate() -> (tempfile::TempDir, LeaseCertificate) {
        let (dir, _db, log) = filled_log(6);
        let offer = Signed::sign(&test_key(1), &sample_offer()).unwrap();
        let lease = Signed::sign(&test_key(1), &sample_lease(&offer.id())).unwrap();
        let cert = build_certificate(&log, &lease, Some(&offer)).await.unwrap();
        (dir, cert)
    }

    #[tokio::test]
    async fn a_built_certificate_verifies_after_a_json_round_trip() {
        let (_dir, cert) = certificate().await;
        let json = serde_json::to_vec_pretty(&cert).unwrap();
        let back = parse_certificate(&json).unwrap();
        let s = verify_certificate(&back).unwrap();
        assert_eq!(s.lease_id, "ab".repeat(16));
        assert_eq!(s.ipv4.as_deref(), Some("198.51.100.7/32"));
        assert_eq!(s.paid_until, 1_700_864_100);
        assert_eq!(s.log_seq, 6);
        assert_eq!(s.head_size, 7);
        assert!(s.offer_included);
        assert_eq!(
            s.provider,
            peer_id_of(&test_key(1).verifying_key()).to_string()
        );
    }

    #[tokio::test]
    async fn every_kind_of_tampering_is_rejected() {
        let (_dir, cert) = certificate().await;
        type Tamper = Box<dyn Fn(&mut LeaseCertificate)>;
        let tampers: Vec<(&str, Tamper)> = vec![
            ("lease body", Box::new(|c| c.lease.body[10] ^= 1)),
            ("lease sig", Box::new(|c| c.lease.sig[0] ^= 1)),
            (
                "offer body",
                Box::new(|c| c.offer.as_mut().unwrap().body[5] ^= 1),
            ),
            ("entry payload", Box::new(|c| c.entry.payload[3] ^= 1)),
            ("entry seq", Box::new(|c| c.entry.seq += 1)),
            ("entry sig", Box::new(|c| c.entry.sig[1] ^= 1)),
            ("path", Box::new(|c| c.inclusion.path[0][0] ^= 1)),
            ("leaf index", Box::new(|c| c.inclusion.leaf_index = 5)),
            ("head size", Box::new(|c| c.head.head.size += 1)),
            ("head root", Box::new(|c| c.head.head.root[0] ^= 1)),
            ("head sig", Box::new(|c| c.head.sig[0] ^= 1)),
            (
                "another lease re-signed by someone else",
                Box::new(|c| {
                    let mut l = sample_lease("x");
                    l.paid_until += 1;
                    c.lease = SignedHex::of(&Signed::sign(&test_key(9), &l).unwrap()).unwrap();
                }),
            ),
        ];
        for (what, tamper) in tampers {
            let mut bad = cert.clone();
            tamper(&mut bad);
            assert!(verify_certificate(&bad).is_err(), "{what} was not caught");
        }
    }
}
