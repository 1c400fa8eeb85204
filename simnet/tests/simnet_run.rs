//! End to end: the built `simnet` binary runs 2 providers, 2 renters and an intruder, and
//! every check it reports is asserted here, plus that it left no process and no directory
//! behind.
//!
//! It drives the real `leasewire` and `lnd-sim` binaries, found next to `simnet`.
//! `cargo test --workspace` builds them (cargo builds a package's binaries when it runs that
//! package's integration tests, and the root package has some); with `-p leasewire-simnet`
//! alone, run `cargo build --workspace` first so `target/debug/leasewire` is current.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::time::Duration;

mod util;

use util::{drain, processes_mentioning, wait_or_stop};

/// Longest a run may take: cluster start, 60 s rent timeout, intruder wait, stop and audit.
const RUN_TIMEOUT: Duration = Duration::from_secs(420);

#[test]
fn two_providers_two_renters_and_an_intruder() {
    let base = tempfile::tempdir().expect("a temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_simnet"))
        .args(["--providers", "2", "--renters", "2", "--intruder", "--json"])
        .arg("--base-dir")
        .arg(base.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("simnet to start");
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_or_stop(&mut child, RUN_TIMEOUT, Duration::from_secs(15));
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    let status = status.unwrap_or_else(|| {
        panic!("simnet did not finish within {RUN_TIMEOUT:?}; stderr:\n{stderr}")
    });

    // Checked before the verdict: a failing run must not leak processes either.
    let leftovers = processes_mentioning(&base.path().to_string_lossy());
    assert!(
        leftovers.is_empty(),
        "processes left behind: {leftovers:#?}"
    );
    let left_files: Vec<_> = std::fs::read_dir(base.path())
        .expect("base dir still there")
        .collect();
    assert!(
        left_files.is_empty(),
        "run directory not removed: {left_files:?}"
    );

    assert!(
        status.success(),
        "simnet exited with {status}; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}"));

    let rentals = v["rentals"].as_array().expect("rentals array");
    assert_eq!(rentals.len(), 2, "{v:#}");
    let mut ipv4s = Vec::new();
    for r in rentals {
        let renter = r["renter"].as_str().expect("renter name");
        assert!(renter.starts_with("renter-"), "{r}");
        let provider = r["provider"].as_str().expect("provider name");
        assert!(provider == "provider-0" || provider == "provider-1", "{r}");
        let (ip4, len4) = prefix(r["ipv4"].as_str().expect("an IPv4 prefix"));
        let ip4: Ipv4Addr = ip4.parse().expect("IPv4 address");
        assert_eq!(
            ip4.octets()[..3],
            [198, 51, 100],
            "IPv4 outside 198.51.100.0/24: {r}"
        );
        assert!((24..=32).contains(&len4), "{r}");
        ipv4s.push(ip4);
        let (ip6, len6) = prefix(r["ipv6"].as_str().expect("an IPv6 prefix"));
        let ip6: Ipv6Addr = ip6.parse().expect("IPv6 address");
        assert_eq!(
            ip6.segments()[..2],
            [0x2001, 0x0db8],
            "IPv6 outside 2001:db8::/32: {r}"
        );
        assert!(len6 >= 32, "{r}");
        assert!(r["paid_sat"].as_u64().expect("paid_sat") > 0, "{r}");
        assert!(r["lease_ms"].as_u64().is_some(), "{r}");
    }
    assert_ne!(ipv4s[0], ipv4s[1], "two renters got the same IPv4: {v:#}");

    assert_eq!(v["audit_ok"], true, "{v:#}");
    assert_eq!(v["intruder"]["offers_seen"], 0, "{v:#}");
    assert!(
        v["intruder"]["refused_by"].as_u64().expect("refused_by") >= 1,
        "{v:#}"
    );
    let nodes = v["nodes"].as_array().expect("nodes array");
    assert_eq!(nodes.len(), 5, "2 providers + 2 renters + intruder: {v:#}");
}

/// Splits "addr/len".
fn prefix(s: &str) -> (&str, u8) {
    let (a, l) = s.split_once('/').unwrap_or((s, "128"));
    (a, l.parse().expect("prefix length"))
}
