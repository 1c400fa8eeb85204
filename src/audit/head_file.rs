//! The kept head: the latest signed tree head, stored outside sled so that deleting or
//! rewriting entries in the database cannot remove the evidence of what the log held.
//!
//! The file (default name [`HEAD_FILE_NAME`] in the data dir) is JSON, one
//! [`SignedTreeHead`], replaced atomically (temporary file, fsync, rename, fsync of the
//! directory) by the log's writer, at most every half second and whenever it stops. When the
//! log is opened and no longer extends the kept head (it is shorter, or its first `size`
//! entries have another root), the kept head is moved to [`lost_path`] before a new one is
//! written, so [`super::verify_with_heads`] (and `audit verify`) can report the truncation.

use std::io;
use std::path::{Path, PathBuf};

use super::merkle::SignedTreeHead;

/// File name of the kept head in the data dir.
pub const HEAD_FILE_NAME: &str = "audit-head.json";

/// Where a kept head that the log no longer extends is moved: `<path>.lost`.
pub fn lost_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lost");
    PathBuf::from(s)
}

/// Writes `sth` to `path` atomically and durably (mode 0600).
///
/// # Errors
/// I/O errors.
pub fn store(path: &Path, sth: &SignedTreeHead) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(sth).map_err(io::Error::other)?;
    crate::fsutil::write_private(path, &json)
}

/// Reads the head kept at `path`; `Ok(None)` when there is no file.
///
/// # Errors
/// I/O errors, or [`io::ErrorKind::InvalidData`] for a file that is not a signed head.
pub fn load(path: &Path) -> io::Result<Option<SignedTreeHead>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every kept head at `path`: the current one and a lost one, if present.
///
/// # Errors
/// As [`load`].
pub fn load_all(path: &Path) -> io::Result<Vec<SignedTreeHead>> {
    let mut out = Vec::new();
    out.extend(load(&lost_path(path))?);
    out.extend(load(path)?);
    Ok(out)
}
