//! Topic derivation: a shared secret names a market.
//!
//! Every node of a market knows one secret. From it we derive, with a deliberately slow
//! Argon2id step, a root key, and from the root (HKDF-SHA256, distinct labels):
//!
//! - the **DHT key** under which providers advertise (public: anyone watching the DHT sees
//!   it, which is why the root is slow to compute: a guess of the secret costs an Argon2id run);
//! - the **membership key**, the pre-shared key of the Noise membership handshake that proves a
//!   peer knows the secret (never sent, never logged).
//!
//! The default public market uses the well-known [`DEFAULT_PUBLIC_SECRET`]; private clusters
//! pick their own. docs/PROTOCOL.md lists the exact parameters and test vectors.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use hkdf::Hkdf;
use sha2::Sha256;

/// Secret of the public market: anyone can join it.
pub const DEFAULT_PUBLIC_SECRET: &str = "leasewire public market v1";

/// Argon2id salt (fixed: the secret is the only input that varies).
pub const ARGON2_SALT: &[u8] = b"leasewire/topic-salt/v1";
/// Argon2id memory cost in KiB (19 MiB, the OWASP-recommended minimum for Argon2id).
pub const ARGON2_M_KIB: u32 = 19_456;
/// Argon2id iterations.
pub const ARGON2_T: u32 = 2;
/// Argon2id lanes.
pub const ARGON2_P: u32 = 1;
/// HKDF info string of the DHT key digest.
pub const DHT_KEY_INFO: &[u8] = b"leasewire/dht-key/v1";
/// HKDF info string of the membership pre-shared key.
pub const MEMBERSHIP_INFO: &[u8] = b"leasewire/membership-psk/v1";
/// HKDF info string of the private-network (libp2p `pnet`) key of a private cluster.
pub const PNET_INFO: &[u8] = b"leasewire/pnet-psk/v1";
/// Multihash prefix of the DHT key: code 0x12 (sha2-256), length 0x20 (32 bytes).
pub const MULTIHASH_SHA2_256_PREFIX: [u8; 2] = [0x12, 0x20];

/// Errors from [`derive`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The secret is empty.
    #[error("the topic secret must not be empty")]
    EmptySecret,
    /// Argon2 refused its parameters or inputs (e.g. a secret longer than 2^32-1 bytes).
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

/// Keys derived from a market secret. `Debug` hides the secret-derived keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Topic {
    /// Argon2id output; everything else derives from it. Secret.
    pub(crate) root: [u8; 32],
    /// Kademlia key for provider records: `0x12 0x20 || digest` (a sha2-256 multihash, 34
    /// bytes), which every libp2p DHT implementation accepts. Public.
    pub dht_key: Vec<u8>,
    /// Pre-shared key of the membership handshake. Secret: never log or send it.
    pub membership_key: [u8; 32],
    /// Pre-shared key of the private network (libp2p `pnet`) of a private cluster. Secret.
    pub pnet_key: [u8; 32],
    /// True for the public market ([`DEFAULT_PUBLIC_SECRET`]).
    pub is_public: bool,
}

impl Topic {
    /// The DHT key in lowercase hex, for logs (it is public on the DHT anyway).
    pub fn dht_key_hex(&self) -> String {
        hex::encode(&self.dht_key)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topic")
            .field("dht_key", &self.dht_key_hex())
            .field("is_public", &self.is_public)
            .finish_non_exhaustive()
    }
}

/// Derives a market's keys from its secret (UTF-8 bytes as given, no normalisation).
///
/// Slow on purpose (Argon2id, 19 MiB, 2 passes: tens of milliseconds in release builds, more in
/// debug) so that the public DHT key does not let anyone test guesses of the secret cheaply.
/// Callers on an async runtime must run it in `spawn_blocking`.
///
/// # Errors
/// [`TopicError::EmptySecret`] for an empty secret; [`TopicError::Kdf`] if Argon2 fails.
pub fn derive(secret: &str) -> Result<Topic, TopicError> {
    if secret.is_empty() {
        return Err(TopicError::EmptySecret);
    }
    let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(32))
        .map_err(|e| TopicError::Kdf(e.to_string()))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut root = [0u8; 32];
    argon
        .hash_password_into(secret.as_bytes(), ARGON2_SALT, &mut root)
        .map_err(|e| TopicError::Kdf(e.to_string()))?;
    Ok(Topic::from_root(root, secret == DEFAULT_PUBLIC_SECRET))
}

impl Topic {
    /// The keys of the market whose Argon2id root is `root` (the fast HKDF half of
    /// [`derive`]): for a node that kept the root of its secret from an earlier start.
    pub fn from_root(root: [u8; 32], is_public: bool) -> Topic {
        let hk = Hkdf::<Sha256>::new(None, &root);
        let mut digest = [0u8; 32];
        hk.expand(DHT_KEY_INFO, &mut digest)
            .expect("32 bytes to be a valid HKDF-SHA256 output length");
        let mut membership_key = [0u8; 32];
        hk.expand(MEMBERSHIP_INFO, &mut membership_key)
            .expect("32 bytes to be a valid HKDF-SHA256 output length");
        let mut pnet_key = [0u8; 32];
        hk.expand(PNET_INFO, &mut pnet_key)
            .expect("32 bytes to be a valid HKDF-SHA256 output length");

        let mut dht_key = Vec::with_capacity(34);
        dht_key.extend_from_slice(&MULTIHASH_SHA2_256_PREFIX);
        dht_key.extend_from_slice(&digest);
        Topic {
            root,
            dht_key,
            membership_key,
            pnet_key,
            is_public,
        }
    }

    /// The Argon2id root every key derives from. Secret (it stands for the market secret).
    pub fn root(&self) -> &[u8; 32] {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_deterministic_and_separates_secrets() {
        let a = derive("test-cluster-secret").unwrap();
        let b = derive("test-cluster-secret").unwrap();
        let c = derive("test-cluster-secret2").unwrap();
        assert_eq!(a, b);
        assert_ne!(a.dht_key, c.dht_key);
        assert_ne!(a.membership_key, c.membership_key);
        assert_ne!(a.pnet_key, c.pnet_key);
        assert_ne!(a.pnet_key, a.membership_key);
        assert!(!a.is_public);
    }

    #[test]
    fn keys_have_the_documented_shape() {
        let t = derive(DEFAULT_PUBLIC_SECRET).unwrap();
        assert!(t.is_public);
        assert_eq!(t.dht_key.len(), 34);
        assert_eq!(&t.dht_key[..2], &[0x12, 0x20]);
        assert_eq!(t.dht_key_hex(), hex::encode(&t.dht_key));
        // The three outputs are independent: none is a copy of another.
        assert_ne!(&t.dht_key[2..], &t.membership_key[..]);
        assert_ne!(t.root, t.membership_key);
        assert_ne!(&t.dht_key[2..], &t.root[..]);
    }

    /// The root is crate-private, so its documented vectors are checked here; the public keys
    /// are checked by tests/protocol_vectors.rs.
    #[test]
    fn root_matches_the_documented_vectors() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        let vector = |name: &str| {
            doc.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
                .unwrap_or_else(|| panic!("{name} missing from docs/PROTOCOL.md"))
                .trim()
                .to_owned()
        };
        let public = derive(DEFAULT_PUBLIC_SECRET).unwrap();
        assert_eq!(hex::encode(public.root), vector("topic.public.root"));
        let cluster = derive("test-cluster-secret").unwrap();
        assert_eq!(hex::encode(cluster.root), vector("topic.cluster.root"));
        assert_eq!(
            hex::encode(cluster.pnet_key),
            vector("topic.cluster.pnet_key")
        );
    }

    #[test]
    fn empty_secret_is_refused() {
        assert!(matches!(derive(""), Err(TopicError::EmptySecret)));
    }

    #[test]
    fn debug_hides_secret_keys() {
        let t = derive("test-cluster-secret").unwrap();
        let shown = format!("{t:?}");
        assert!(shown.contains(&t.dht_key_hex()));
        assert!(!shown.contains(&hex::encode(t.membership_key)));
        assert!(!shown.contains(&hex::encode(t.root)));
        assert!(!shown.contains(&hex::encode(t.pnet_key)));
        assert!(!shown.contains("membership"));
    }
}
