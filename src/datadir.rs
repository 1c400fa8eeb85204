//! [`DataDir`]: the one place that names the files and directories inside a node's data dir.
//!
//! Every other module asks this type for a path instead of joining names itself, so the layout
//! is written down once (docs/ARCHITECTURE.md, "Data dir", lists the same names).

use std::path::{Path, PathBuf};

/// A node's data directory (`--data-dir`, default `$HOME/.leasewire`) and the paths inside it.
///
/// Only names paths: nothing here touches the file system.
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

    #[test]
    fn config_paths_resolve_against_the_data_dir() {
        let d = DataDir::new("/d");
        assert_eq!(d.resolve(Path::new("s/secret")), Path::new("/d/s/secret"));
        assert_eq!(d.resolve(Path::new("/etc/x")), Path::new("/etc/x"));
    }
}
