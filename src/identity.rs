//! Node identity (the ed25519 key behind the libp2p `PeerId` and every signature) and the
//! WireGuard key pair, both kept in owner-only files of the data directory.
//!
//! - `D/node.key`: the 32 raw bytes of the ed25519 secret key.
//! - a WireGuard private key file: base64 text, as written by `wg genkey`.
//!
//! Loading refuses key files that group or others may read: a leaked node key lets anyone sign
//! offers and leases as this node, and a leaked WireGuard key lets them impersonate its tunnel.
//! Key material never reaches logs or `Debug` output.

use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use libp2p::PeerId;

use crate::datadir::DataDir;
use crate::fsutil;
use crate::types::WgKey;
use crate::wire::signed::peer_id_of;

/// File name of the node key inside the data directory.
pub const NODE_KEY_FILE: &str = DataDir::NODE_KEY_FILE;

/// Errors from creating or loading keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading, writing or creating a file or directory failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A key file already exists and overwriting was not requested.
    #[error("{} already exists; refusing to overwrite it (pass --force to replace the node identity)", .0.display())]
    Exists(PathBuf),
    /// There is no key file.
    #[error("no key at {}; create one first (leasewire init)", .0.display())]
    Missing(PathBuf),
    /// The key file is readable or writable by group or others.
    #[error("{} has mode {mode:o}, readable by other users; run: chmod 600 {}", .path.display(), .path.display())]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not hold a key of the right size or encoding.
    #[error("{} is not a valid key file: {reason}", .path.display())]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong (never contains key material).
        reason: String,
    },
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> IdentityError {
    move |source| IdentityError::Io { context, source }
}

/// The node's ed25519 identity.
#[derive(Clone)]
pub struct Identity {
    /// Secret key: signs offers, leases, envelopes; also the libp2p identity key.
    pub signing_key: SigningKey,
    /// The libp2p peer id of `signing_key`'s public key.
    pub peer_id: PeerId,
}

impl fmt::Debug for Identity {
    // The signing key is deliberately absent.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Builds an identity from an existing key.
    pub fn from_signing_key(signing_key: SigningKey) -> Identity {
        let peer_id = peer_id_of(&signing_key.verifying_key());
        Identity {
            signing_key,
            peer_id,
        }
    }

    /// Generates a new key and stores it: creates `data_dir` (mode 0700 if new, parents too)
    /// and `data_dir/node.key` (32 raw secret bytes, mode 0600). Without `force` the file is
    /// created with `O_EXCL`, so an existing identity is never replaced; with `force` the new key
    /// atomically replaces the old one.
    ///
    /// Errors: [`IdentityError::Exists`] if the key exists and `!force`, [`IdentityError::Io`].
    pub fn create(data_dir: &Path, force: bool) -> Result<Identity, IdentityError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| IdentityError::Io {
            context: "cannot get random bytes for the node key".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let identity = Identity::from_signing_key(SigningKey::from_bytes(&secret));
        write_key_file(&Identity::key_path(data_dir), &secret, force)?;
        tracing::info!(peer_id = %identity.peer_id, dir = %data_dir.display(), "created node identity");
        Ok(identity)
    }

    /// Loads `data_dir/node.key`.
    ///
    /// Errors: [`IdentityError::Missing`], [`IdentityError::InsecurePermissions`] if group or
    /// others have any access (the message says to `chmod 600`), [`IdentityError::Malformed`]
    /// if the file is not exactly 32 bytes, [`IdentityError::Io`].
    pub fn load(data_dir: &Path) -> Result<Identity, IdentityError> {
        let path = Identity::key_path(data_dir);
        let bytes = read_private_file(&path, 32)?;
        let secret: [u8; 32] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| IdentityError::Malformed {
                    path: path.clone(),
                    reason: format!("{} bytes, want 32", bytes.len()),
                })?;
        Ok(Identity::from_signing_key(SigningKey::from_bytes(&secret)))
    }

    /// Path of the node key in `data_dir`.
    pub fn key_path(data_dir: &Path) -> PathBuf {
        DataDir::new(data_dir).node_key()
    }
}

/// A WireGuard key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct WgKeyPair {
    /// The private key (clamped as `wg genkey` does).
    pub private: WgKey,
    /// X25519 public key of `private`.
    pub public: WgKey,
}

impl fmt::Debug for WgKeyPair {
    // Only the public half is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WgKeyPair")
            .field("public", &self.public.to_base64())
            .finish_non_exhaustive()
    }
}

impl WgKeyPair {
    /// The key pair of `private`; the public key is `X25519(private, 9)` as `wg pubkey`
    /// computes it (the scalar is clamped during multiplication, so any 32 bytes work).
    pub fn from_private(private: WgKey) -> WgKeyPair {
        let public = x25519_dalek::x25519(private.0, x25519_dalek::X25519_BASEPOINT_BYTES);
        WgKeyPair {
            private,
            public: WgKey(public),
        }
    }

    /// A fresh random key pair, the private key clamped like `wg genkey` output.
    ///
    /// Errors: [`IdentityError::Io`] if the OS random number generator fails.
    pub fn generate() -> Result<WgKeyPair, IdentityError> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| IdentityError::Io {
            context: "cannot get random bytes for the WireGuard key".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(WgKeyPair::from_private(WgKey(clamp(k))))
    }

    /// Loads the private key stored at `path` (base64, as `wg genkey` writes it; surrounding
    /// whitespace ignored), or if there is no file, generates one and stores it with mode 0600
    /// (creating missing parent directories with mode 0700).
    ///
    /// Errors: [`IdentityError::InsecurePermissions`] for a file group or others can access,
    /// [`IdentityError::Malformed`] for anything but one base64 32-byte key,
    /// [`IdentityError::Io`].
    pub fn load_or_create(path: &Path) -> Result<WgKeyPair, IdentityError> {
        match read_private_file(path, 128) {
            Ok(bytes) => {
                let text = std::str::from_utf8(&bytes).map_err(|_| IdentityError::Malformed {
                    path: path.to_owned(),
                    reason: "not UTF-8 text".into(),
                })?;
                // The parse error is dropped on purpose: it could echo part of the key.
                let private: WgKey = text.parse().map_err(|_| IdentityError::Malformed {
                    path: path.to_owned(),
                    reason: "want one base64-encoded 32-byte WireGuard private key".into(),
                })?;
                Ok(WgKeyPair::from_private(private))
            }
            Err(IdentityError::Missing(_)) => {
                let pair = WgKeyPair::generate()?;
                let text = format!("{}\n", pair.private.to_base64());
                write_key_file(path, text.as_bytes(), false)?;
                tracing::info!(path = %path.display(), public_key = %pair.public, "created WireGuard key");
                Ok(pair)
            }
            Err(e) => Err(e),
        }
    }
}

/// Clamps a Curve25519 scalar as WireGuard does for private keys (RFC 7748 section 5).
fn clamp(mut k: [u8; 32]) -> [u8; 32] {
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    k
}

/// Writes `bytes` to `path` with mode 0600 through [`fsutil`] (parent created 0700, file and
/// directory fsynced). Without `force` an existing file is never replaced
/// ([`IdentityError::Exists`]); with `force` it is replaced atomically, so a crash leaves the
/// old or the new key.
fn write_key_file(path: &Path, bytes: &[u8], force: bool) -> Result<(), IdentityError> {
    let written = if force {
        fsutil::write_private(path, bytes)
    } else {
        fsutil::create_private(path, bytes)
    };
    written.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists && !force {
            IdentityError::Exists(path.to_owned())
        } else {
            IdentityError::Io {
                context: format!("cannot write {}", path.display()),
                source: e,
            }
        }
    })
}

/// Reads a key file of at most `max_len` bytes after checking, on the open file itself (so the
/// check and the read see the same file), that it is a regular file without group/other access.
fn read_private_file(path: &Path, max_len: u64) -> Result<Vec<u8>, IdentityError> {
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(IdentityError::Missing(path.to_owned()));
        }
        Err(e) => {
            return Err(IdentityError::Io {
                context: format!("cannot open {}", path.display()),
                source: e,
            });
        }
    };
    let meta = f
        .metadata()
        .map_err(io_err(format!("cannot stat {}", path.display())))?;
    if !meta.is_file() {
        return Err(IdentityError::Malformed {
            path: path.to_owned(),
            reason: "not a regular file".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    // One byte over the limit tells an oversized file from one exactly at it.
    f.take(max_len + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(format!("cannot read {}", path.display())))?;
    if bytes.len() as u64 > max_len {
        return Err(IdentityError::Malformed {
            path: path.to_owned(),
            reason: format!("larger than {max_len} bytes"),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn create_then_load_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let created = Identity::create(&dir, false).unwrap();
        let loaded = Identity::load(&dir).unwrap();
        assert_eq!(created.peer_id, loaded.peer_id);
        assert_eq!(
            created.signing_key.to_bytes(),
            loaded.signing_key.to_bytes()
        );
        assert_eq!(
            created.peer_id,
            peer_id_of(&loaded.signing_key.verifying_key())
        );
        assert_eq!(fs::read(Identity::key_path(&dir)).unwrap().len(), 32);
        assert_eq!(mode_of(&Identity::key_path(&dir)), 0o600);
        assert_eq!(mode_of(&dir), 0o700);
        let debug = format!("{loaded:?}");
        assert!(debug.contains(&loaded.peer_id.to_string()));
        assert!(!debug.contains(&hex::encode(loaded.signing_key.to_bytes())));
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let first = Identity::create(tmp.path(), false).unwrap();
        assert!(matches!(
            Identity::create(tmp.path(), false),
            Err(IdentityError::Exists(_))
        ));
        // The refused attempt left the original key in place.
        assert_eq!(Identity::load(tmp.path()).unwrap().peer_id, first.peer_id);
        let second = Identity::create(tmp.path(), true).unwrap();
        assert_ne!(first.peer_id, second.peer_id);
        assert_eq!(Identity::load(tmp.path()).unwrap().peer_id, second.peer_id);
        assert_eq!(mode_of(&Identity::key_path(tmp.path())), 0o600);
    }

    #[test]
    fn refuses_group_or_world_readable_key() {
        let tmp = tempfile::tempdir().unwrap();
        Identity::create(tmp.path(), false).unwrap();
        let path = Identity::key_path(tmp.path());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load(tmp.path()).unwrap_err();
        assert!(matches!(
            err,
            IdentityError::InsecurePermissions { mode: 0o644, .. }
        ));
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(Identity::load(tmp.path()).is_err());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(Identity::load(tmp.path()).is_ok());
    }

    #[test]
    fn refuses_wrong_sizes_and_missing_key() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            Identity::load(tmp.path()),
            Err(IdentityError::Missing(_))
        ));
        let path = Identity::key_path(tmp.path());
        for len in [0usize, 31, 33, 64] {
            fs::write(&path, vec![7u8; len]).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            assert!(
                matches!(
                    Identity::load(tmp.path()),
                    Err(IdentityError::Malformed { .. })
                ),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn wg_public_key_matches_rfc7748_vector() {
        // RFC 7748 section 6.1: Alice's private key and X25519(a, 9).
        let private: [u8; 32] =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap()
                .try_into()
                .unwrap();
        let public =
            hex::decode("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
                .unwrap();
        let pair = WgKeyPair::from_private(WgKey(private));
        assert_eq!(pair.public.0.to_vec(), public);
        // Bob's pair from the same section.
        let bob: [u8; 32] =
            hex::decode("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
                .unwrap()
                .try_into()
                .unwrap();
        assert_eq!(
            hex::encode(WgKeyPair::from_private(WgKey(bob)).public.0),
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
        );
    }

    #[test]
    fn wg_key_file_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("keys/wg.key");
        let created = WgKeyPair::load_or_create(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", created.private.to_base64()));
        // Clamped like `wg genkey`.
        assert_eq!(created.private.0[0] & 7, 0);
        assert_eq!(created.private.0[31] & 0xc0, 0x40);
        let loaded = WgKeyPair::load_or_create(&path).unwrap();
        assert_eq!(created, loaded);
        assert_eq!(loaded, WgKeyPair::from_private(loaded.private));
        assert!(!format!("{loaded:?}").contains(&loaded.private.to_base64()));
    }

    #[test]
    fn wg_key_file_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("wg.key");
        // A key written by `wg genkey` (RFC 7748 Alice, base64), world-readable: refused.
        fs::write(&path, "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            WgKeyPair::load_or_create(&path),
            Err(IdentityError::InsecurePermissions { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let pair = WgKeyPair::load_or_create(&path).unwrap();
        assert_eq!(
            pair.public.to_base64(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
        fs::write(&path, "not a key\n").unwrap();
        assert!(matches!(
            WgKeyPair::load_or_create(&path),
            Err(IdentityError::Malformed { .. })
        ));
    }
}
