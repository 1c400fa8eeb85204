//! End to end with real packets: the built `simnet --netns` runs 1 provider and 2 renters, each
//! daemon in its own network namespace with real (userspace) WireGuard tunnels, and every
//! data-plane verdict it reports is asserted here (including traffic after a restart of the
//! provider daemon, and the rent-to-first-packet figure), plus that it left no namespace, no
//! `wireguard-go`, no UAPI socket, no process and no directory behind.
//!
//! A second run, `--scenario autopay` (2 providers, 3 renters), checks that AutoPay keeps
//! healthy leases topped up over a minute and pays nothing more for a tunnel simnet breaks on
//! purpose. A third, `--scenario churn --netns`, checks that every lease of the churn
//! scenario (several per renter, one behind a moved endpoint, failover replacements) carries
//! real traffic.
//!
//! Needs root, iproute2, wireguard-go (and `wg` for autopay). Without root it prints SKIPPED and passes, unless
//! `CI` is set: then it fails, so CI cannot silently stop running it.
//!
//! It drives the real `leasewire` and `lnd-sim` binaries, found next to `simnet`; with
//! `-p leasewire-simnet` alone, run `cargo build --workspace` first.

mod util;

use std::process::Command;
use std::time::Duration;

use util::{Finished, assert_churn, processes_mentioning, run_simnet_process};

/// Longest a run may take: cluster start, 40 s of credit, the cut, the resume, the provider
/// restart, stop, audit.
const RUN_TIMEOUT: Duration = Duration::from_secs(420);

/// The data-plane verdicts every rental must carry, all true.
const CHECKS: [&str; 8] = [
    "out_v4",
    "out_v6",
    "in_v4",
    "in_v6",
    "suspend_cut",
    "resume_ok",
    "source_ok",
    "provider_restart_ok",
];

/// Runs the built `simnet` with `args` and `--json` as root under a fresh base dir; checks
/// it left no namespace, `wireguard-go`, UAPI socket, process or directory behind and
/// exited 0; returns its JSON. `None` (after printing SKIPPED) without root, unless `CI` is
/// set: then it panics.
fn run_netns(test: &str, args: &[&str]) -> Option<serde_json::Value> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var_os("CI").is_some() {
            panic!("simnet --netns needs root for network namespaces, and CI is set: run as root");
        }
        eprintln!("SKIPPED {test}: needs root");
        return None;
    }
    let ns_before = simnet_namespaces();
    let base = tempfile::tempdir().expect("a temp dir");
    let Finished {
        status,
        stdout,
        stderr,
    } = run_simnet_process(args, base.path(), RUN_TIMEOUT, Duration::from_secs(20));

    // Cleanup is checked before the verdict: a failing run must not leak either. Only this
    // run's namespaces count: the other test of this file may be running at the same time.
    let tag = run_tag(&stderr).unwrap_or_else(|| panic!("no run tag in the log:\n{stderr}"));
    let ours = format!("lw-{tag}-");
    let new_ns: Vec<String> = simnet_namespaces()
        .into_iter()
        .filter(|n| !ns_before.contains(n) && n.starts_with(&ours))
        .collect();
    assert!(new_ns.is_empty(), "namespaces left behind: {new_ns:?}");
    let leftovers = processes_mentioning(&base.path().to_string_lossy());
    assert!(
        leftovers.is_empty(),
        "processes left behind: {leftovers:#?}"
    );
    let iface_prefix = format!("lw{tag}");
    let wg = processes_mentioning(&iface_prefix);
    assert!(wg.is_empty(), "wireguard-go left behind: {wg:#?}");
    for dir in ["/var/run/wireguard", "/run/wireguard"] {
        let socks: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&iface_prefix))
            .collect();
        assert!(socks.is_empty(), "UAPI sockets left in {dir}: {socks:?}");
    }
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
    Some(
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}")),
    )
}

#[test]
fn netns_one_provider_two_renters_real_packets() {
    let Some(v) = run_netns(
        "netns_one_provider_two_renters_real_packets",
        &["--netns", "--providers", "1", "--renters", "2"],
    ) else {
        return;
    };
    assert_eq!(v["scenario"], "quickstart", "{v:#}");
    assert_eq!(v["double_payments"], 0, "{v:#}");
    let rentals = v["rentals"].as_array().expect("rentals array");
    assert_eq!(rentals.len(), 2, "{v:#}");
    for r in rentals {
        assert_eq!(r["provider"], "provider-0", "{r}");
        assert!(
            r["ipv4"]
                .as_str()
                .is_some_and(|p| p.starts_with("198.51.100.")),
            "{r}"
        );
        assert!(
            r["ipv6"]
                .as_str()
                .is_some_and(|p| p.starts_with("2001:db8:")),
            "{r}"
        );
        for check in CHECKS {
            assert_eq!(r[check], true, "{check} failed: {r}");
        }
        // The internet host saw the leased address itself as the source.
        let leased_v4 = r["ipv4"].as_str().and_then(|p| p.split('/').next());
        assert_eq!(r["source_seen"].as_str(), leased_v4, "{r}");
        // Traffic cannot flow before the lease exists.
        let first = r["first_packet_ms"].as_u64();
        let lease = r["lease_ms"].as_u64();
        assert!(
            first.zip(lease).is_some_and(|(f, l)| f >= l),
            "first_packet_ms missing or before lease_ms: {r}"
        );
    }
    assert_ne!(rentals[0]["ipv4"], rentals[1]["ipv4"], "{v:#}");
    assert_eq!(v["audit_ok"], true, "{v:#}");
}

#[test]
fn netns_autopay_tops_up_and_refuses_a_broken_tunnel() {
    // --netns is implied by the scenario.
    let Some(v) = run_netns(
        "netns_autopay_tops_up_and_refuses_a_broken_tunnel",
        &["--scenario", "autopay"],
    ) else {
        return;
    };
    assert_eq!(v["scenario"], "autopay", "{v:#}");
    assert_eq!(v["double_payments"], 0, "{v:#}");
    assert_eq!(v["audit_ok"], true, "{v:#}");
    let rentals = v["rentals"].as_array().expect("rentals array");
    assert_eq!(rentals.len(), 3, "default: 2 providers, 3 renters: {v:#}");
    let broken: Vec<&serde_json::Value> = rentals.iter().filter(|r| r["broken"] == true).collect();
    assert_eq!(broken.len(), 1, "exactly one tunnel is broken: {v:#}");
    let b = broken[0];
    assert_eq!(b["payments_after_break"], 0, "{b}");
    assert!(
        b["refused_unverified"]
            .as_u64()
            .expect("refused_unverified")
            >= 1,
        "{b}"
    );
    // It was broken after its first AutoPay top-up.
    assert!(b["topups"].as_u64().expect("topups") >= 1, "{b}");
    for r in rentals.iter().filter(|r| r["broken"] == false) {
        let topups = r["topups"].as_u64().expect("topups");
        assert!(topups >= 3, "healthy rental with {topups} top-ups: {r}");
        // Activation plus every top-up, each a payment of the renter's.
        assert!(r["payments"].as_u64().expect("payments") > topups, "{r}");
        assert!(
            r["payments_after_break"]
                .as_u64()
                .expect("payments_after_break")
                >= 1,
            "{r}"
        );
    }
}

#[test]
fn netns_churn_every_lease_carries_traffic_through_the_churn() {
    let Some(v) = run_netns(
        "netns_churn_every_lease_carries_traffic_through_the_churn",
        &["--scenario", "churn", "--netns"],
    ) else {
        return;
    };
    assert_churn(&v, true);
}

/// The run tag from the "netns topology up run=TAG" log line.
fn run_tag(log: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains("netns topology up"))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("run="))
        .map(str::to_owned)
}

/// Namespaces named like simnet's (`lw-…`).
fn simnet_namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("lw-"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn run_tag_is_read_from_the_log() {
    let log = "2026-01-01T00:00:00Z  INFO simnet::netns: netns topology up run=a418 providers=1";
    assert_eq!(run_tag(log).as_deref(), Some("a418"));
    assert_eq!(run_tag("nothing here"), None);
}
