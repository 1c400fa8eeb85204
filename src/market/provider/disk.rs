//! Disk health: new work is refused while the data dir's disk is nearly full or a write failed,
//! and accepted again by itself once writes succeed.
//!
//! sled cannot recover from a failed write in the same process: after one `ENOSPC` every
//! later write of that database fails until it is opened again. So the first line is the
//! free-space floor: below `min_free_disk_mib` no new lease or top-up is started (each costs an
//! invoice, a pending record and audit entries), and the space left is kept for what is under
//! way: settling a payment that lands meanwhile, suspending, releasing. The second line is a
//! write that failed anyway (or an audit append that did not finish in time): new work is
//! refused, the tick probes the store with a small write, and the first probe that succeeds
//! lifts the refusal. Reads (offers, status) are served throughout.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError};

use super::*;

/// How long an audit append may take before the provider treats the disk as failing and goes
/// on without waiting (the append may still finish later).
pub(super) const AUDIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Key the probe writes in `provider_meta`.
const PROBE_KEY: &[u8] = b"disk_probe";

/// The provider's view of its disk.
#[derive(Debug, Default)]
pub(super) struct DiskGuard {
    /// The directory whose file system is watched (the database's); unset: no free-space check.
    dir: OnceLock<PathBuf>,
    /// The last write failure, until a probe succeeds.
    failed: Mutex<Option<String>>,
    /// Probes that failed in a row while the disk had room: the store itself refuses writes.
    probe_failures: std::sync::atomic::AtomicU32,
}

/// Probes failing in a row, with room on the disk, after which the store needs reopening.
const REOPEN_AFTER_PROBES: u32 = 3;

impl DiskGuard {
    fn failed(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.failed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a failed (or stalled) write.
    pub(super) fn record_failure(&self, what: &str) {
        let mut f = self.failed();
        if f.is_none() {
            tracing::error!(
                error = what,
                "a write to the provider's disk failed; refusing new leases and top-ups until writes succeed again"
            );
        }
        *f = Some(what.to_owned());
    }

    /// Whether a write failed and no probe has succeeded since.
    pub(super) fn is_failing(&self) -> bool {
        self.failed().is_some()
    }

    /// A probe write succeeded: new work is accepted again.
    pub(super) fn record_ok(&self) {
        self.probe_failures
            .store(0, std::sync::atomic::Ordering::SeqCst);
        if self.failed().take().is_some() {
            tracing::info!("the provider's disk takes writes again; accepting new leases");
        }
    }

    /// Whether the free space of the watched directory is above the floor (true when no
    /// directory is watched or the floor is 0).
    fn has_room(&self, min_free_mib: u64) -> bool {
        match self.dir.get() {
            Some(dir) if min_free_mib > 0 => {
                free_bytes(dir).is_ok_and(|f| f >= min_free_mib.saturating_mul(1 << 20))
            }
            _ => true,
        }
    }

    /// Why new work is refused now, if it is.
    pub(super) fn refusal(&self, min_free_mib: u64) -> Option<String> {
        if let Some(e) = self.failed().as_ref() {
            return Some(format!(
                "provider cannot write to its disk ({e}); no new leases or top-ups until it can"
            ));
        }
        let dir = self.dir.get()?;
        if min_free_mib == 0 {
            return None;
        }
        match free_bytes(dir) {
            Ok(free) if free < min_free_mib.saturating_mul(1 << 20) => Some(format!(
                "provider disk nearly full ({} MiB free, {min_free_mib} MiB needed); no new \
                 leases or top-ups until space is freed",
                free >> 20
            )),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot read the free space");
                None
            }
        }
    }
}

/// Bytes available to unprivileged writers on the file system holding `dir`.
pub(crate) fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
    // right type; statvfs fills it completely when it returns 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialized `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

impl Provider {
    /// Watches the free space of the file system holding `dir` (the database's directory):
    /// below `provider.min_free_disk_mib` new work is refused. Set once, by the node.
    pub fn watch_disk(&self, dir: PathBuf) {
        if self.inner.disk.dir.set(dir).is_err() {
            tracing::debug!("disk already watched");
        }
    }

    /// Why new leases and top-ups are refused now (disk nearly full or failing), if they are.
    pub fn disk_refusal(&self) -> Option<String> {
        self.inner.disk.refusal(self.inner.cfg.min_free_disk_mib)
    }

    /// Whether the store refuses every write although the disk has room again: sled keeps
    /// failing after a write failed (`ENOSPC`) until the database is opened again, so the
    /// daemon restarts the node in-process (`leasewire daemon` checks this). Never true on a
    /// disk that is still below the floor: space has to come back first.
    pub fn store_needs_reopen(&self) -> bool {
        let d = &self.inner.disk;
        d.is_failing()
            && d.dir.get().is_some()
            && d.has_room(self.inner.cfg.min_free_disk_mib)
            && d.probe_failures.load(std::sync::atomic::Ordering::SeqCst) >= REOPEN_AFTER_PROBES
    }

    /// Records the outcome of a store write of request handling or a background pass.
    pub(super) fn note_write<T>(&self, r: &Result<T, MarketError>) {
        if let Err(e) = r {
            self.inner.disk.record_failure(&e.to_string());
        }
    }

    /// While a write failure is recorded: writes a small value and flushes it; when that
    /// works the disk is healthy again. Called by every tick.
    pub(super) async fn probe_disk(&self) {
        let i = &self.inner;
        if !i.disk.is_failing() {
            return;
        }
        let now = self.now().to_be_bytes().to_vec();
        let wrote = i
            .meta
            .apply_batch(vec![(PROBE_KEY.to_vec(), Some(now))])
            .map_err(MarketError::from);
        let flushed = match wrote {
            Ok(()) => kv::flush(&i.meta).await.map_err(MarketError::from),
            Err(e) => Err(e),
        };
        let audited = match flushed {
            Ok(()) => {
                self.audit_checked(
                    AuditKind::Error,
                    json!({"error": "disk probe: writes work again"}),
                )
                .await
            }
            Err(e) => Err(e),
        };
        match audited {
            Ok(()) => i.disk.record_ok(),
            Err(e) => {
                tracing::debug!(error = %e, "disk probe failed; still refusing new work");
                i.disk.record_failure(&e.to_string());
                if i.disk.has_room(i.cfg.min_free_disk_mib) {
                    i.disk
                        .probe_failures
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    }

    /// Appends to the audit log and waits at most [`AUDIT_TIMEOUT`]; a failure or a stall is
    /// recorded against the disk.
    pub(super) async fn audit_checked(
        &self,
        kind: AuditKind,
        payload: serde_json::Value,
    ) -> Result<(), MarketError> {
        let append = self.inner.audit.append_async(kind, &payload);
        let r = match tokio::time::timeout(AUDIT_TIMEOUT, append).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(MarketError::Store(format!("audit append: {e}"))),
            Err(_) => Err(MarketError::Store(format!(
                "audit append did not finish within {} s",
                AUDIT_TIMEOUT.as_secs()
            ))),
        };
        self.note_write(&r);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_refuses_until_recorded_ok_and_the_floor_reads_the_disk() {
        let g = DiskGuard::default();
        assert_eq!(g.refusal(64), None, "no directory watched, nothing failed");
        g.record_failure("No space left on device (os error 28)");
        let r = g.refusal(0).unwrap();
        assert!(
            r.contains("cannot write to its disk") && r.contains("os error 28"),
            "{r}"
        );
        g.record_ok();
        assert_eq!(g.refusal(0), None);

        let dir = tempfile::tempdir().unwrap();
        g.dir.set(dir.path().to_owned()).unwrap();
        let free_mib = free_bytes(dir.path()).unwrap() >> 20;
        assert_eq!(g.refusal(0), None, "0: no floor");
        assert_eq!(g.refusal(1), None, "{free_mib} MiB free");
        let r = g.refusal(free_mib + 1_000_000).unwrap();
        assert!(r.contains("disk nearly full"), "{r}");
    }
}
