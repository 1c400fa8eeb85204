//! `Signed<T>`: a value signed by an ed25519 node key, verifiable on its own (offers and leases
//! are stored and forwarded, so they carry their own signature besides the envelope's).
//!
//! Signed bytes: `DOMAIN || 0x00 || body`, where `body` is the CBOR encoding of `T` exactly as
//! carried in the `body` field. Verification never re-encodes: it checks the signature over the
//! received bytes and only then decodes them.

use std::marker::PhantomData;

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use libp2p::PeerId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A type that can be signed, with its own domain-separation string.
pub trait SignedKind: Serialize + DeserializeOwned {
    /// Domain string; distinct per type so a signature over one type never verifies as another.
    const DOMAIN: &'static str;
}

/// Errors from signing, verifying and decoding wire data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// CBOR encoding failed.
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Encoder message.
        reason: String,
    },
    /// CBOR decoding failed.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Decoder message.
        reason: String,
    },
    /// A public key is not a valid ed25519 key.
    #[error("invalid signer public key")]
    BadKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// The signer is not who it must be.
    #[error("signed by {got}, expected {expected}")]
    WrongSigner {
        /// Expected PeerId.
        expected: String,
        /// Actual signer.
        got: String,
    },
    /// Unsupported protocol version.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// Timestamp outside the accepted window.
    #[error("timestamp {ts} outside the window around {now} (±{window}s)")]
    Stale {
        /// Message time (seconds).
        ts: u64,
        /// Local time (seconds).
        now: u64,
        /// Window (seconds).
        window: u64,
    },
    /// The nonce was seen before from this sender.
    #[error("replayed message (nonce {0} already seen)")]
    Replay(u64),
    /// The replay cache reached its memory bound and had to forget envelopes this old, so
    /// it cannot tell whether this one (nonce given) is a replay; refused to fail closed.
    #[error("cannot rule out a replay (nonce {0}): envelope older than the replay cache holds")]
    ReplayUndecidable(u64),
    /// A frame exceeds the size limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A field of a message is longer than its limit ([`super::limits`]). Names the field and
    /// its size, never its content.
    #[error("field {field} is {len} bytes long, over its limit of {max}")]
    FieldTooLong {
        /// The field, as `message.field`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A list field of a message has more items than its limit ([`super::limits`]).
    #[error("field {field} has {len} items, over its limit of {max}")]
    TooManyItems {
        /// The field, as `message.field`.
        field: &'static str,
        /// Its number of items.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// I/O error while reading or writing a frame.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A value of type `T`, CBOR-encoded and signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    /// Signer's ed25519 public key (32 bytes).
    #[serde(with = "serde_bytes")]
    pub signer: Vec<u8>,
    /// CBOR encoding of the value.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// ed25519 signature (64 bytes) over `DOMAIN || 0x00 || body`.
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
    #[serde(skip)]
    _kind: PhantomData<fn() -> T>,
}

fn signed_bytes(domain: &str, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(domain.len() + 1 + body.len());
    v.extend_from_slice(domain.as_bytes());
    v.push(0);
    v.extend_from_slice(body);
    v
}

/// The libp2p PeerId of an ed25519 public key.
pub fn peer_id_of(key: &VerifyingKey) -> PeerId {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(key.as_bytes())
        .expect("a valid dalek verifying key to be a valid libp2p ed25519 key");
    libp2p::identity::PublicKey::from(pk).to_peer_id()
}

impl<T: SignedKind> Signed<T> {
    /// Encodes and signs `value`.
    pub fn sign(key: &SigningKey, value: &T) -> Result<Self, WireError> {
        let mut body = Vec::new();
        ciborium::into_writer(value, &mut body).map_err(|e| WireError::Encode {
            what: T::DOMAIN,
            reason: e.to_string(),
        })?;
        let sig = key.sign(&signed_bytes(T::DOMAIN, &body));
        Ok(Signed {
            signer: key.verifying_key().to_bytes().to_vec(),
            body,
            sig: sig.to_bytes().to_vec(),
            _kind: PhantomData,
        })
    }

    /// The signer's public key, if well formed.
    pub fn signer_key(&self) -> Result<VerifyingKey, WireError> {
        let bytes: [u8; 32] = self
            .signer
            .as_slice()
            .try_into()
            .map_err(|_| WireError::BadKey)?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| WireError::BadKey)
    }

    /// The signer's PeerId.
    pub fn signer_peer_id(&self) -> Result<PeerId, WireError> {
        Ok(peer_id_of(&self.signer_key()?))
    }

    /// Checks the signature, then decodes the value.
    pub fn verify(&self) -> Result<T, WireError> {
        let key = self.signer_key()?;
        let sig =
            ed25519_dalek::Signature::from_slice(&self.sig).map_err(|_| WireError::BadSignature)?;
        key.verify(&signed_bytes(T::DOMAIN, &self.body), &sig)
            .map_err(|_| WireError::BadSignature)?;
        ciborium::from_reader(self.body.as_slice()).map_err(|e| WireError::Decode {
            what: T::DOMAIN,
            reason: e.to_string(),
        })
    }

    /// Like [`Signed::verify`], and also requires the signer to be `expected`.
    pub fn verify_from(&self, expected: &PeerId) -> Result<T, WireError> {
        let got = self.signer_peer_id()?;
        if &got != expected {
            return Err(WireError::WrongSigner {
                expected: expected.to_string(),
                got: got.to_string(),
            });
        }
        self.verify()
    }

    /// Content id: the first 16 bytes of SHA-256(`DOMAIN || 0x00 || body`), in hex.
    pub fn id(&self) -> String {
        let digest = Sha256::digest(signed_bytes(T::DOMAIN, &self.body));
        hex::encode(&digest[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Thing {
        n: u32,
    }
    impl SignedKind for Thing {
        const DOMAIN: &'static str = "leasewire/test-thing/v1";
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Other {
        n: u32,
    }
    impl SignedKind for Other {
        const DOMAIN: &'static str = "leasewire/test-other/v1";
    }

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    #[test]
    fn sign_verify_round_trip() {
        let s = Signed::sign(&key(1), &Thing { n: 5 }).unwrap();
        assert_eq!(s.verify().unwrap(), Thing { n: 5 });
        let me = peer_id_of(&key(1).verifying_key());
        assert_eq!(s.verify_from(&me).unwrap(), Thing { n: 5 });
        let other = peer_id_of(&key(2).verifying_key());
        assert!(matches!(
            s.verify_from(&other),
            Err(WireError::WrongSigner { .. })
        ));
    }

    #[test]
    fn tampered_body_or_signer_is_refused() {
        let s = Signed::sign(&key(1), &Thing { n: 5 }).unwrap();
        for i in 0..s.body.len() {
            let mut t = s.clone();
            t.body[i] ^= 0x01;
            assert!(t.verify().is_err(), "flipped body byte {i} accepted");
        }
        let mut t = s.clone();
        t.signer = key(2).verifying_key().to_bytes().to_vec();
        assert!(matches!(t.verify(), Err(WireError::BadSignature)));
    }

    #[test]
    fn domain_separates_types() {
        let s = Signed::sign(&key(1), &Thing { n: 5 }).unwrap();
        let as_other: Signed<Other> = Signed {
            signer: s.signer.clone(),
            body: s.body.clone(),
            sig: s.sig.clone(),
            _kind: PhantomData,
        };
        assert!(matches!(as_other.verify(), Err(WireError::BadSignature)));
    }
}
