//! Every process simnet starts, and how each one is stopped.
//!
//! Long-running children (lnd-sim and the daemons) live in a [`Procs`] registry. Short commands
//! (`leasewire status`, `rent`, …) go through [`run_capture`], which owns its child until it
//! exits. Four layers make sure nothing outlives a run:
//!
//! 1. [`Procs::stop_all`]: SIGTERM, a grace period, then SIGKILL, in reverse start order
//!    (daemons before the lnd-sim they pay through). The normal path, and the Ctrl-C path.
//! 2. `Drop for Procs`: SIGKILL to whatever is still registered, for early returns and panics.
//! 3. `kill_on_drop(true)` on every tokio child, so a dropped future (a cancelled `rent`) takes
//!    its process with it.
//! 4. `PR_SET_PDEATHSIG`: the kernel sends SIGTERM to a child when the simnet thread that
//!    forked it dies, which covers `kill -9 simnet`. It fires on the death of the forking
//!    *thread*, which is why `main` runs a current-thread runtime.
//!
//! Children run in their own process group, so a terminal's Ctrl-C reaches simnet alone and
//! simnet decides the stop order.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::process::{Child, Command};

/// One registered long-running child.
struct Entry {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Registry of long-running children; see the module doc for the cleanup layers.
pub struct Procs {
    entries: Mutex<Vec<Entry>>,
}

impl Procs {
    /// An empty registry.
    pub fn new() -> Procs {
        Procs {
            entries: Mutex::new(Vec::new()),
        }
    }

    /// Starts `cmd` as a registered child called `name`, with stdin closed and stdout plus
    /// stderr appended to `log`.
    ///
    /// Errors: the log file cannot be created or the program cannot be started.
    pub fn spawn(&self, name: &str, mut cmd: Command, log: &Path) -> Result<u32> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot create log file {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("cannot duplicate log file {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        prepare(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{name} exited before it could be registered"))?;
        tracing::debug!(name, pid, log = %log.display(), "started");
        self.lock().push(Entry {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        });
        Ok(pid)
    }

    /// Fails if the child `name` has exited, with its exit status and the end of its log.
    ///
    /// Used while waiting for a child to become ready, so a crash is reported at once rather
    /// than as a timeout. Errors also when `name` is not registered.
    pub fn ensure_running(&self, name: &str) -> Result<()> {
        let mut entries = self.lock();
        let entry = entries
            .iter_mut()
            .find(|e| e.name == name)
            .ok_or_else(|| anyhow!("{name} is not a running simnet process"))?;
        match entry.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{name} exited ({status}); end of {}:\n{}",
                entry.log.display(),
                log_tail(&entry.log, 20)
            ),
            Err(e) => bail!("cannot query {name}: {e}"),
        }
    }

    /// Sends `sig` (SIGSTOP, SIGCONT, ...) to the running child `name`, which stays
    /// registered; returns its pid.
    ///
    /// Errors: `name` is not registered, or it has already exited (its pid may be reused, so
    /// nothing is sent).
    pub fn signal(&self, name: &str, sig: libc::c_int) -> Result<u32> {
        let mut entries = self.lock();
        let entry = entries
            .iter_mut()
            .find(|e| e.name == name)
            .ok_or_else(|| anyhow!("{name} is not a running simnet process"))?;
        match (entry.child.try_wait(), entry.child.id()) {
            (Ok(None), Some(pid)) => {
                send_signal(pid, sig);
                Ok(pid)
            }
            (Ok(Some(status)), _) => bail!("{name} has already exited ({status})"),
            (Err(e), _) => bail!("cannot query {name}: {e}"),
            (Ok(None), None) => bail!("{name} has no pid"),
        }
    }

    /// Kills the child `name` with SIGKILL at once (a crash, not a stop: it gets no chance to
    /// clean up), waits until it is gone and removes it from the registry. Works on a
    /// SIGSTOPped child too. Returns how it ended.
    ///
    /// Errors: `name` is not registered, or waiting for it fails.
    pub async fn kill(&self, name: &str) -> Result<ExitStatus> {
        let mut entry = {
            let mut entries = self.lock();
            let i = entries
                .iter()
                .position(|e| e.name == name)
                .ok_or_else(|| anyhow!("{name} is not a running simnet process"))?;
            entries.remove(i)
        };
        // `Child::kill` sends SIGKILL only to an unreaped child, then reaps it.
        entry
            .child
            .kill()
            .await
            .with_context(|| format!("cannot kill {name}"))?;
        let status = entry
            .child
            .wait()
            .await
            .with_context(|| format!("cannot reap {name}"))?;
        tracing::debug!(name, %status, "killed");
        Ok(status)
    }

    /// Number of registered children (running or not yet reaped).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Stops every registered child whose name satisfies `select`, newest first: SIGTERM, up
    /// to `grace` for all of them to exit, then SIGKILL for the rest. Stopped children leave
    /// the registry. Returns `(name, how it ended)` per child; never fails, because cleanup
    /// must go on even when one child misbehaves.
    pub async fn stop_matching(
        &self,
        grace: Duration,
        select: impl Fn(&str) -> bool,
    ) -> Vec<(String, Stopped)> {
        let mut taken = {
            let mut entries = self.lock();
            let (chosen, kept): (Vec<Entry>, Vec<Entry>) =
                entries.drain(..).partition(|e| select(&e.name));
            *entries = kept;
            chosen
        };
        taken.reverse();
        for e in &mut taken {
            // Only signal a child that has not been reaped: its pid cannot have been reused.
            if let (Ok(None), Some(pid)) = (e.child.try_wait(), e.child.id()) {
                send_signal(pid, libc::SIGTERM);
            }
        }
        let waits = taken.into_iter().map(|mut e| async move {
            let how = match tokio::time::timeout(grace, e.child.wait()).await {
                Ok(Ok(status)) => Stopped::Exited(status),
                Ok(Err(err)) => Stopped::Lost(err.to_string()),
                Err(_) => {
                    tracing::warn!(name = %e.name, "did not exit after SIGTERM; killing");
                    match e.child.kill().await {
                        Ok(()) => Stopped::Killed,
                        Err(err) => Stopped::Lost(err.to_string()),
                    }
                }
            };
            tracing::debug!(name = %e.name, %how, "stopped");
            (e.name, how)
        });
        futures::future::join_all(waits).await
    }

    /// [`Procs::stop_matching`] for every registered child.
    pub async fn stop_all(&self, grace: Duration) -> Vec<(String, Stopped)> {
        self.stop_matching(grace, |_| true).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A panic while holding the lock leaves the Vec intact; cleanup must still run.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for Procs {
    fn default() -> Self {
        Procs::new()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for e in self.lock().iter_mut() {
            if let Ok(None) = e.child.try_wait() {
                tracing::warn!(name = %e.name, "still running at exit; killing");
                // start_kill sends SIGKILL without waiting; the kernel reparents the zombie.
                let _ = e.child.start_kill();
            }
        }
    }
}

/// How a child ended in [`Procs::stop_matching`].
#[derive(Debug)]
pub enum Stopped {
    /// It exited on its own after SIGTERM, with this status.
    Exited(ExitStatus),
    /// It ignored SIGTERM for the whole grace period and was killed.
    Killed,
    /// Waiting for it failed; the message says why.
    Lost(String),
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Exited(status) => write!(f, "exited ({status})"),
            Stopped::Killed => f.write_str("killed after ignoring SIGTERM"),
            Stopped::Lost(e) => write!(f, "lost: {e}"),
        }
    }
}

impl Stopped {
    /// Whether the child exited by itself with status 0.
    pub fn is_clean(&self) -> bool {
        matches!(self, Stopped::Exited(s) if s.success())
    }
}

/// What a finished short command produced.
#[derive(Debug)]
pub struct Captured {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout, lossily decoded.
    pub stdout: String,
    /// Everything it wrote to stderr, lossily decoded.
    pub stderr: String,
}

/// Runs a short command to completion and captures its output, killing it if it is still
/// running after `timeout` (or if the returned future is dropped).
///
/// Errors: it cannot be started, waiting fails, or it times out. A non-zero exit is *not*
/// an error here: callers decide, since some commands print JSON on failure too.
pub async fn run_capture(mut cmd: Command, timeout: Duration) -> Result<Captured> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    prepare(&mut cmd);
    let what = describe(&cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(Captured {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
        Ok(Err(e)) => Err(anyhow!("waiting for {what} failed: {e}")),
        // Dropping the wait future dropped the child, and kill_on_drop killed it.
        Err(_) => Err(anyhow!("{what} did not finish within {timeout:?}")),
    }
}

/// The last `lines` lines of a log file, or a note that it cannot be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Options every child gets: killed with its handle, own process group, parent-death signal.
fn prepare(cmd: &mut Command) {
    cmd.kill_on_drop(true).process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe prctl(2) system call; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Program and arguments, for error messages.
fn describe(cmd: &Command) -> String {
    let std = cmd.as_std();
    let mut s = std.get_program().to_string_lossy().into_owned();
    for a in std.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn send_signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; the caller has checked that `pid`
    // is an unreaped child of ours, so it names the intended process.
    unsafe {
        libc::kill(pid, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    fn alive(pid: u32) -> bool {
        // A zombie still has a /proc entry; look at its state instead.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn graceful_stop_reports_exit_and_empties_registry() {
        let dir = tempfile::tempdir().unwrap();
        let procs = Procs::new();
        let pid = procs
            .spawn("sleeper", sh("exec sleep 30"), &dir.path().join("s.log"))
            .unwrap();
        assert!(alive(pid));
        procs.ensure_running("sleeper").unwrap();
        let stopped = procs.stop_all(Duration::from_secs(5)).await;
        assert_eq!(stopped.len(), 1);
        assert_eq!(stopped[0].0, "sleeper");
        // sleep dies of SIGTERM: exited, but not cleanly.
        assert!(matches!(stopped[0].1, Stopped::Exited(_)));
        assert!(!stopped[0].1.is_clean());
        assert_eq!(procs.len(), 0);
        assert!(!alive(pid));
    }

    #[tokio::test]
    async fn sigterm_ignorer_is_killed_after_grace() {
        let dir = tempfile::tempdir().unwrap();
        let procs = Procs::new();
        let log = dir.path().join("t.log");
        let pid = procs
            .spawn(
                "stubborn",
                sh("trap '' TERM; echo ready; while :; do sleep 0.05; done"),
                &log,
            )
            .unwrap();
        // Wait until the trap is installed, or SIGTERM could land before it.
        for _ in 0..100 {
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("ready")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stopped = procs.stop_all(Duration::from_millis(300)).await;
        assert!(matches!(stopped[0].1, Stopped::Killed), "{stopped:?}");
        assert!(!alive(pid));
    }

    #[tokio::test]
    async fn stop_matching_leaves_others_and_goes_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let procs = Procs::new();
        for n in ["lnd", "a", "b"] {
            procs
                .spawn(n, sh("exec sleep 30"), &dir.path().join(format!("{n}.log")))
                .unwrap();
        }
        let stopped = procs
            .stop_matching(Duration::from_secs(5), |n| n != "lnd")
            .await;
        let names: Vec<&str> = stopped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(procs.len(), 1);
        procs.ensure_running("lnd").unwrap();
        procs.stop_all(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn ensure_running_reports_crash_with_log() {
        let dir = tempfile::tempdir().unwrap();
        let procs = Procs::new();
        procs
            .spawn(
                "crasher",
                sh("echo boom-happened >&2; exit 3"),
                &dir.path().join("c.log"),
            )
            .unwrap();
        let mut last = Ok(());
        for _ in 0..100 {
            last = procs.ensure_running("crasher");
            if last.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let msg = format!("{:#}", last.unwrap_err());
        assert!(msg.contains("boom-happened"), "{msg}");
        assert!(msg.contains('3'), "{msg}");
        assert!(procs.ensure_running("nobody").is_err());
    }

    #[tokio::test]
    async fn signal_stops_and_kill_removes_a_stopped_child() {
        let dir = tempfile::tempdir().unwrap();
        let procs = Procs::new();
        let pid = procs
            .spawn("victim", sh("exec sleep 30"), &dir.path().join("v.log"))
            .unwrap();
        assert_eq!(procs.signal("victim", libc::SIGSTOP).unwrap(), pid);
        // A stopped process shows state T in /proc.
        let mut stopped = false;
        for _ in 0..100 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            if stat
                .rsplit_once(')')
                .unwrap()
                .1
                .trim_start()
                .starts_with('T')
            {
                stopped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(stopped, "pid {pid} was not stopped");
        procs.ensure_running("victim").unwrap();
        let status = procs.kill("victim").await.unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert_eq!(procs.len(), 0);
        assert!(!alive(pid));
        assert!(procs.kill("victim").await.is_err());
        assert!(procs.signal("victim", libc::SIGCONT).is_err());
    }

    #[tokio::test]
    async fn drop_kills_registered_children() {
        let dir = tempfile::tempdir().unwrap();
        let procs = Procs::new();
        let pid = procs
            .spawn("orphan", sh("exec sleep 30"), &dir.path().join("o.log"))
            .unwrap();
        drop(procs);
        let mut gone = false;
        for _ in 0..100 {
            if !alive(pid) {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "pid {pid} survived the registry");
    }

    #[tokio::test]
    async fn run_capture_collects_output_and_times_out() {
        let out = run_capture(sh("echo out; echo err >&2; exit 4"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(out.stdout.trim(), "out");
        assert_eq!(out.stderr.trim(), "err");
        assert_eq!(out.status.code(), Some(4));
        let e = run_capture(sh("exec sleep 30"), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("did not finish"), "{e}");
    }

    #[test]
    fn log_tail_keeps_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.log");
        std::fs::write(&p, "1\n2\n3\n4\n").unwrap();
        assert_eq!(log_tail(&p, 2), "3\n4");
        assert_eq!(log_tail(&p, 10), "1\n2\n3\n4");
        assert!(log_tail(&dir.path().join("none"), 2).contains("cannot read"));
    }
}
