//! Durable, private file writes: the one implementation of "mode 0600, fsync, rename, fsync
//! the directory" that keys, configs, wg-quick files and tunnel state all use.
//!
//! A reader (or a crash) sees either the old file or the new one, never a mix, and the bytes
//! are never in a file that group or others could read, not even briefly.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` with mode 0600, replacing any existing file atomically: a fresh
/// temporary file in the same directory, fsync, rename over `path`, fsync of the directory.
/// Missing parent directories are created with mode 0700.
///
/// Errors carry the failing step and path in their message and keep the OS error's kind.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write(path, bytes, true)
}

/// Like [`write_private`], but never replaces an existing file: fails with
/// [`io::ErrorKind::AlreadyExists`] if `path` exists (checked atomically by the final link).
pub fn create_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write(path, bytes, false)
}

/// Creates `dir` and its missing parents with mode 0700 (existing directories keep theirs).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| context(e, "cannot create", dir))
}

/// Makes renames, links and removals in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| context(e, "cannot sync", dir))
}

fn write(path: &Path, bytes: &[u8], replace: bool) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    create_private_dir(dir)?;
    let tmp = temp_path(dir, path);
    // A leftover from a crash may carry another mode or content; start from a fresh file.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(context(e, "cannot remove", &tmp));
        }
        _ => {}
    }
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| context(e, "cannot create", &tmp))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| context(e, "cannot write", &tmp))?;
        drop(f);
        if replace {
            fs::rename(&tmp, path).map_err(|e| context(e, "cannot replace", path))
        } else {
            // link(2) fails if `path` exists, so two writers cannot both create it.
            let linked = fs::hard_link(&tmp, path).map_err(|e| context(e, "cannot create", path));
            // The temporary name is useless either way; a failure to remove it only leaves a
            // stray file that the next write removes.
            let _ = fs::remove_file(&tmp);
            linked
        }
    })();
    if result.is_err() {
        // Best effort, as above.
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

/// `.NAME.tmp` next to `path`: hidden, and in the same directory so the rename is atomic.
fn temp_path(dir: &Path, path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{name}.tmp"))
}

fn context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn replaces_whole_with_mode_0600_and_no_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/f.conf");
        write_private(&path, b"one\ntwo\n").unwrap();
        write_private(&path, b"three\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"three\n");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("sub/dir")), 0o700);
        let names: Vec<_> = fs::read_dir(dir.path().join("sub/dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.conf")]);
    }

    #[test]
    fn a_stale_temporary_file_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let tmp = dir.path().join(".k.tmp");
        fs::write(&tmp, b"stale").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode(&path), 0o600);
        assert!(!tmp.exists());
    }

    #[test]
    fn create_refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        create_private(&path, b"first").unwrap();
        let e = create_private(&path, b"second").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(e.to_string().contains("node.key"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(mode(&path), 0o600);
        assert!(!dir.path().join(".node.key.tmp").exists());
    }
}
