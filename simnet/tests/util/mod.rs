//! Helpers shared by the tests that run the `simnet` binary.

use std::io::Read;
use std::process::Child;
use std::time::{Duration, Instant};

/// Reads a child's pipe to the end on a thread, so a full pipe never blocks the child.
pub fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error just truncates the captured text; the assertions report what we got.
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child`; on timeout sends SIGTERM (so simnet cleans up), waits `grace`, then
/// SIGKILL. `None` means it timed out.
pub fn wait_or_stop(
    child: &mut Child,
    timeout: Duration,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    std::thread::sleep(grace);
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Live processes whose command line contains `needle` (zombies have an empty one).
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

/// What a finished `simnet` run printed.
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the built `simnet` with `args`, `--json` and `--base-dir base`, plain-text logs, both
/// pipes drained; on `timeout` it is stopped (SIGTERM, `grace`, SIGKILL) and the test fails
/// with its log.
pub fn run_simnet_process(
    args: &[&str],
    base: &std::path::Path,
    timeout: Duration,
    grace: Duration,
) -> Finished {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_simnet"))
        .args(args)
        .arg("--json")
        .arg("--base-dir")
        .arg(base)
        // Callers read the run tag from the log, which must be plain text.
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("simnet to start");
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_or_stop(&mut child, timeout, grace);
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    let status = status
        .unwrap_or_else(|| panic!("simnet did not finish within {timeout:?}; stderr:\n{stderr}"));
    Finished {
        status,
        stdout,
        stderr,
    }
}
