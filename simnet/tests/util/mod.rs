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

/// Asserts every figure of a passing `simnet --scenario churn --json` report; `netns` adds the
/// real-traffic verdicts.
pub fn assert_churn(v: &serde_json::Value, netns: bool) {
    assert_eq!(v["scenario"], "churn", "{v:#}");
    assert_eq!(v["double_payments"], 0, "{v:#}");
    assert_eq!(v["audit_ok"], true, "{v:#}");
    assert!(
        v["leases_per_renter_max"]
            .as_u64()
            .expect("leases_per_renter_max")
            >= 3,
        "{v:#}"
    );
    assert!(v["failovers"].as_u64().expect("failovers") >= 1, "{v:#}");
    assert_eq!(v["paid_after_death_sat"], 0, "{v:#}");
    assert_eq!(v["endpoint_followed"], true, "{v:#}");
    assert!(v["refunds_sat"].as_u64().expect("refunds_sat") > 0, "{v:#}");
    let release_ms = v["release_seen_by_provider_ms"]
        .as_u64()
        .expect("release_seen_by_provider_ms");
    assert!(release_ms <= 1_000, "{v:#}");
    let undelivered = v["undelivered_paid"].as_object().expect("undelivered_paid");
    assert!(
        undelivered
            .values()
            .all(|n| n.as_u64().is_some_and(|n| n <= 1)),
        "{v:#}"
    );
    // The cheated renter lost exactly one invoice, and nobody else lost any.
    assert_eq!(undelivered["renter-1"], 1, "{v:#}");
    assert_eq!(
        undelivered
            .values()
            .filter_map(serde_json::Value::as_u64)
            .sum::<u64>(),
        1,
        "{v:#}"
    );
    let rentals = v["rentals"].as_array().expect("rentals array");
    let of = |renter: &str| -> Vec<&serde_json::Value> {
        rentals.iter().filter(|r| r["renter"] == renter).collect()
    };
    // renter-0: two leases from provider-0 (one released) and one from provider-1.
    let multi = of("renter-0");
    assert_eq!(multi.len(), 3, "{v:#}");
    assert_eq!(
        multi
            .iter()
            .filter(|r| r["provider"] == "provider-0")
            .count(),
        2,
        "{v:#}"
    );
    assert_eq!(
        multi.iter().filter(|r| r["state"] == "released").count(),
        1,
        "{v:#}"
    );
    // renter-1 leased elsewhere after paying the provider that never delivers.
    let cheated = of("renter-1");
    assert_eq!(cheated.len(), 1, "{v:#}");
    assert_ne!(cheated[0]["provider"], "provider-2", "{v:#}");
    // renter-2 and renter-3 failed over from the dead and the terminating provider.
    for (renter, from) in [("renter-2", "provider-3"), ("renter-3", "provider-1")] {
        assert!(
            of(renter)
                .iter()
                .any(|r| r["failed_over_from"] == from && r["state"] == "active"),
            "{renter} did not fail over from {from}: {v:#}"
        );
    }
    for r in rentals {
        assert!(r.get("lease_id").and_then(|l| l.as_str()).is_some(), "{r}");
        assert!(
            ["ipv4", "ipv6", "dual"].contains(&r["family"].as_str().expect("family")),
            "{r}"
        );
        assert!(
            r.get("ipv4_len").is_some() && r.get("ipv6_len").is_some(),
            "{r}"
        );
        assert!(r.get("failed_over_from").is_some(), "{r}");
        if netns && r["state"] == "active" && r["provider"] != "provider-3" {
            // Every live lease the scenario checked carried traffic.
            assert_ne!(r["traffic_ok"], false, "{r}");
        }
    }
    // renter-4: IPv4 only, a /32 and a /30; renter-5: IPv6 only.
    let sized = |renter: &str, family: &str, v4: serde_json::Value, v6: serde_json::Value| {
        of(renter)
            .iter()
            .any(|r| r["family"] == family && r["ipv4_len"] == v4 && r["ipv6_len"] == v6)
    };
    let null = serde_json::Value::Null;
    assert!(sized("renter-4", "ipv4", 32.into(), null.clone()), "{v:#}");
    assert!(sized("renter-4", "ipv4", 30.into(), null.clone()), "{v:#}");
    assert!(sized("renter-5", "ipv6", null, 64.into()), "{v:#}");
    if netns {
        for renter in ["renter-4", "renter-5"] {
            assert!(
                of(renter).iter().all(|r| r["traffic_ok"] == true),
                "{renter}'s leases must all have carried traffic on every address: {v:#}"
            );
        }
        assert!(
            multi.iter().all(|r| r["traffic_ok"] == true),
            "renter-0's leases must all have carried traffic: {v:#}"
        );
    }
}
