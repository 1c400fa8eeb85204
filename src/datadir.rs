//! [`DataDir`]: the one place that names the files and directories inside a node's data dir.
//!
//! Every other module asks this type for a path instead of joining names itself, so the layout
//! is written down once (docs/ARCHITECTURE.md, "Data dir", lists the same names).

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Errors of [`DataDir::secure`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// The directory could not be created, read or changed.
    #[error("data dir {path}: {source}")]
    Io {
        /// The data dir.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Something other than a directory is in the way.
    #[error("data dir {0} is not a directory")]
    NotADirectory(PathBuf),
    /// Group or others may write to it: someone else could have replaced the key, the config
    /// or the database, so nothing in it is trusted.
    #[error(
        "data dir {path} is writable by group or others (mode {mode:03o}); anyone could have \
         planted files in it. Check what is inside, then run `chmod 700 {path}`"
    )]
    Writable {
        /// The data dir.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Errors of [`open_db`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbOpenError {
    /// Another process (the daemon) holds the database.
    #[error("database {0} is held by another process (the daemon)")]
    Locked(PathBuf),
    /// The store's own files do not decode: the database cannot be opened at all, so no
    /// entry of it can be checked.
    #[error(
        "store corrupt at {path}: {reason}. The sled files themselves are damaged; restore \
         the db directory from a backup (the audit log cannot be read from it)"
    )]
    Corrupt {
        /// The database dir.
        path: PathBuf,
        /// What sled said (or the panic it raised).
        reason: String,
    },
    /// The database could not be opened for another reason (permissions, I/O).
    #[error("cannot open database {path}: {reason}")]
    Io {
        /// The database dir.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
}

/// Opens the sled database at `path`, telling a store that is corrupt (sled reports
/// corruption, or panics while reading its own files) from one that is locked or unreadable.
///
/// # Errors
/// See [`DbOpenError`].
pub fn open_db(path: &Path) -> Result<sled::Db, DbOpenError> {
    // sled panics on some damage it finds while recovering; that is an answer about the files,
    // not a bug of ours. The default hook would print a backtrace hint first: keep it quiet.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| sled::open(path));
    std::panic::set_hook(hook);
    let corrupt = |reason: String| DbOpenError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    match opened {
        Ok(Ok(db)) => Ok(db),
        // sled reports a held lock only as an `Other` I/O error with this text.
        Ok(Err(sled::Error::Io(e))) if e.to_string().contains("could not acquire lock") => {
            Err(DbOpenError::Locked(path.to_owned()))
        }
        Ok(Err(sled::Error::Io(e))) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(corrupt(e.to_string()))
        }
        Ok(Err(sled::Error::Io(e))) => Err(DbOpenError::Io {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
        Ok(Err(e)) => Err(corrupt(e.to_string())),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "sled panicked reading its files".into());
            Err(corrupt(msg))
        }
    }
}

/// What [`DataDir::secure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secured {
    /// It was created, mode 0700.
    Created,
    /// It was readable by group or others (mode given); it is 0700 now.
    Tightened(u32),
    /// It was 0700 (or stricter) already.
    Unchanged,
}

/// A node's data directory (`--data-dir`, default `$HOME/.leasewire`) and the paths inside it.
///
/// It names paths; only [`DataDir::secure`] touches the file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Name of the configuration file.
    pub const CONFIG_FILE: &'static str = "config.toml";
    /// Name of the node's ed25519 key file (32 raw bytes, mode 0600).
    pub const NODE_KEY_FILE: &'static str = "node.key";
    /// Name of the sled database directory.
    pub const DB_DIR: &'static str = "db";
    /// Name of the lock file a running daemon holds.
    pub const LOCK_FILE: &'static str = "daemon.lock";
    /// Name of the control API's Unix socket.
    pub const SOCKET_FILE: &'static str = "leasewire.sock";
    /// Name of the directory of the WireGuard key and the renter's wg-quick files.
    pub const WIREGUARD_DIR: &'static str = "wireguard";
    /// Name of the WireGuard private key file inside [`Self::WIREGUARD_DIR`].
    pub const WIREGUARD_KEY_FILE: &'static str = "private.key";
    /// Name of the file tunnel backend's state directory.
    pub const TUNNEL_DIR: &'static str = "tunnel";
    /// Name of the daemon's debug log.
    pub const DEBUG_LOG: &'static str = "debug.log";

    /// The data dir at `root` (not created).
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// Makes sure the directory exists and only its owner can enter it: created 0700 when
    /// missing, tightened to 0700 when group or others may read or enter it (its sled files,
    /// key and config would be readable through it), refused when group or others may write
    /// to it.
    ///
    /// # Errors
    /// [`DataDirError::Writable`] for a group- or world-writable directory,
    /// [`DataDirError::NotADirectory`], or [`DataDirError::Io`].
    pub fn secure(&self) -> Result<Secured, DataDirError> {
        let io = |source| DataDirError::Io {
            path: self.root.clone(),
            source,
        };
        let meta = match std::fs::metadata(&self.root) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.root)
                    .map_err(io)?;
                // The umask cannot widen 0700, but a parent created on the way could be
                // anything: the data dir itself is what must be private.
                std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
                    .map_err(io)?;
                return Ok(Secured::Created);
            }
            Err(e) => return Err(io(e)),
        };
        if !meta.is_dir() {
            return Err(DataDirError::NotADirectory(self.root.clone()));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(DataDirError::Writable {
                path: self.root.clone(),
                mode,
            });
        }
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
                .map_err(io)?;
            return Ok(Secured::Tightened(mode));
        }
        Ok(Secured::Unchanged)
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `config.toml`.
    pub fn config_file(&self) -> PathBuf {
        self.root.join(Self::CONFIG_FILE)
    }

    /// `node.key`.
    pub fn node_key(&self) -> PathBuf {
        self.root.join(Self::NODE_KEY_FILE)
    }

    /// `db/`: sled (audit log, leases, payments).
    pub fn db(&self) -> PathBuf {
        self.root.join(Self::DB_DIR)
    }

    /// `daemon.lock`: one daemon per data dir.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(Self::LOCK_FILE)
    }

    /// `leasewire.sock`: the control API.
    pub fn control_socket(&self) -> PathBuf {
        self.root.join(Self::SOCKET_FILE)
    }

    /// `wireguard/`: the WireGuard key and the renter's wg-quick files.
    pub fn wireguard_dir(&self) -> PathBuf {
        self.root.join(Self::WIREGUARD_DIR)
    }

    /// `wireguard/private.key`.
    pub fn wireguard_key(&self) -> PathBuf {
        self.wireguard_dir().join(Self::WIREGUARD_KEY_FILE)
    }

    /// `tunnel/`: state of the file tunnel backend.
    pub fn tunnel_dir(&self) -> PathBuf {
        self.root.join(Self::TUNNEL_DIR)
    }

    /// `debug.log`.
    pub fn debug_log(&self) -> PathBuf {
        self.root.join(Self::DEBUG_LOG)
    }

    /// A path from the configuration (`node.secret_file`, LND's cert and macaroon, `lnd_dir`):
    /// relative paths are taken relative to the data dir.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.root.join(p)
        }
    }
}

impl AsRef<Path> for DataDir {
    fn as_ref(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_the_documented_one() {
        let d = DataDir::new("/d");
        assert_eq!(d.config_file(), Path::new("/d/config.toml"));
        assert_eq!(d.node_key(), Path::new("/d/node.key"));
        assert_eq!(d.db(), Path::new("/d/db"));
        assert_eq!(d.lock_file(), Path::new("/d/daemon.lock"));
        assert_eq!(d.control_socket(), Path::new("/d/leasewire.sock"));
        assert_eq!(d.wireguard_dir(), Path::new("/d/wireguard"));
        assert_eq!(d.wireguard_key(), Path::new("/d/wireguard/private.key"));
        assert_eq!(d.tunnel_dir(), Path::new("/d/tunnel"));
        assert_eq!(d.debug_log(), Path::new("/d/debug.log"));
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_data_dir_is_created_private_tightened_or_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let d = DataDir::new(tmp.path().join("a/b"));
        assert_eq!(d.secure().unwrap(), Secured::Created);
        assert_eq!(mode_of(d.root()), 0o700);
        assert_eq!(d.secure().unwrap(), Secured::Unchanged);

        // A pre-existing 0755 dir would leave the sled files readable: tightened.
        std::fs::set_permissions(d.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(d.secure().unwrap(), Secured::Tightened(0o755));
        assert_eq!(mode_of(d.root()), 0o700);

        // Group- or world-writable: refused, and left as it is for the owner to look at.
        for mode in [0o775, 0o757, 0o777, 0o1777] {
            std::fs::set_permissions(d.root(), std::fs::Permissions::from_mode(mode)).unwrap();
            let e = d.secure().unwrap_err();
            assert!(
                matches!(e, DataDirError::Writable { mode: m, .. } if m == mode),
                "{e}"
            );
            assert!(e.to_string().contains("chmod 700"), "{e}");
            assert_eq!(mode_of(d.root()), mode);
        }

        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            DataDir::new(&file).secure(),
            Err(DataDirError::NotADirectory(_))
        ));
    }

    #[test]
    fn a_damaged_store_is_reported_as_corrupt_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("db");
        {
            let db = open_db(&path).unwrap();
            let t = db.open_tree("audit").unwrap();
            for i in 0u64..2_000 {
                t.insert(i.to_be_bytes(), vec![7u8; 100]).unwrap();
            }
            db.flush().unwrap();
            // Held by this handle: locked, not corrupt.
            assert!(matches!(open_db(&path), Err(DbOpenError::Locked(_))));
        }
        // Flip bytes in every file sled wrote.
        for entry in std::fs::read_dir(&path).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                let mut bytes = std::fs::read(&p).unwrap();
                for b in bytes.iter_mut().step_by(7) {
                    *b ^= 0x5a;
                }
                std::fs::write(&p, bytes).unwrap();
            }
        }
        match open_db(&path) {
            Err(e @ DbOpenError::Corrupt { .. }) => {
                assert!(e.to_string().starts_with("store corrupt at "), "{e}");
                assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            }
            other => panic!("a damaged store opened as {other:?}"),
        }
    }

    #[test]
    fn config_paths_resolve_against_the_data_dir() {
        let d = DataDir::new("/d");
        assert_eq!(d.resolve(Path::new("s/secret")), Path::new("/d/s/secret"));
        assert_eq!(d.resolve(Path::new("/etc/x")), Path::new("/etc/x"));
    }
}
