//! End to end: the built `simnet` binary runs 2 providers, 2 renters and an intruder, and
//! every check it reports is asserted here, plus that it left no process and no directory
//! behind. A second run, `--scenario crash-pay`, kills a renter daemon and then a provider
//! daemon while a payment is in flight, and every rental must still end with exactly one
//! lease, one payment and no double payment. A third, `--scenario churn`, runs leases that
//! come and go (several per renter, release, notice, an endpoint move, a provider killed and
//! one that never delivers) and asserts every figure it reports.
//!
//! It drives the real `leasewire` and `lnd-sim` binaries, found next to `simnet`.
//! `cargo test --workspace` builds them (cargo builds a package's binaries when it runs that
//! package's integration tests, and the root package has some); with `-p leasewire-simnet`
//! alone, run `cargo build --workspace` first so `target/debug/leasewire` is current.

use std::net::{Ipv4Addr, Ipv6Addr};

use std::time::Duration;

mod util;

use util::{Finished, assert_churn, processes_mentioning, run_simnet_process};

/// Longest a run may take: cluster start, 60 s rent timeout, intruder wait, stop and audit
/// (crash-pay: two crashes of a few seconds each, or 60 s lease waits when something is
/// broken).
const RUN_TIMEOUT: Duration = Duration::from_secs(420);

/// Runs the built `simnet` with `args` and `--json` under a fresh base dir; checks it left no
/// process and no directory behind and exited 0; returns its JSON.
fn run_simnet(args: &[&str]) -> serde_json::Value {
    let base = tempfile::tempdir().expect("a temp dir");
    let Finished {
        status,
        stdout,
        stderr,
    } = run_simnet_process(args, base.path(), RUN_TIMEOUT, Duration::from_secs(15));

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
        "simnet {args:?} exited with {status}; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}"))
}

#[test]
fn two_providers_two_renters_and_an_intruder() {
    let v = run_simnet(&["--providers", "2", "--renters", "2", "--intruder"]);
    assert_eq!(v["scenario"], "quickstart", "{v:#}");
    assert_eq!(v["double_payments"], 0, "{v:#}");

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
        // One activation payment and nothing else: AutoPay is off outside its scenario.
        assert_eq!(r["payments"], 1, "{r}");
        assert_eq!(r["topups"], 0, "{r}");
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

#[test]
fn crash_pay_survives_killed_renter_and_provider() {
    let v = run_simnet(&["--scenario", "crash-pay"]);
    assert_eq!(v["scenario"], "crash-pay", "{v:#}");
    assert_eq!(v["double_payments"], 0, "{v:#}");
    assert_eq!(v["audit_ok"], true, "{v:#}");
    let rentals = v["rentals"].as_array().expect("rentals array");
    assert_eq!(rentals.len(), 2, "default: 1 provider, 2 renters: {v:#}");
    for r in rentals {
        assert_eq!(r["provider"], "provider-0", "{r}");
        assert!(r.get("error").is_none(), "{r}");
        assert!(r["ipv4"].as_str().is_some(), "{r}");
        // Exactly one payment, per the renter and (cross-checked by simnet) per lnd-sim.
        assert_eq!(r["payments"], 1, "{r}");
        assert!(r["paid_sat"].as_u64().expect("paid_sat") > 0, "{r}");
        let notes: Vec<&str> = r["crash"]
            .as_array()
            .expect("crash notes")
            .iter()
            .filter_map(|n| n.as_str())
            .collect();
        assert!(notes.iter().any(|n| n.contains("IN_FLIGHT")), "{r}");
        assert!(notes.iter().any(|n| n.contains("SUCCEEDED")), "{r}");
        assert!(notes.iter().any(|n| n.contains("restarted")), "{r}");
    }
    let crash = |i: usize| rentals[i]["crash"].to_string();
    assert!(
        crash(0).contains("renter-0 daemon SIGKILLed"),
        "{}",
        crash(0)
    );
    assert!(
        crash(1).contains("provider-0 daemon frozen"),
        "{}",
        crash(1)
    );
    assert!(crash(1).contains("provider-0 lists lease"), "{}", crash(1));
}

#[test]
fn churn_leases_come_and_go_and_nothing_is_paid_for_nothing() {
    let v = run_simnet(&["--scenario", "churn"]);
    assert_churn(&v, false);
}

/// Splits "addr/len".
fn prefix(s: &str) -> (&str, u8) {
    let (a, l) = s.split_once('/').unwrap_or((s, "128"));
    (a, l.parse().expect("prefix length"))
}
