//! End to end: a short `simnet --scenario siege` (3 s per attack). Every attack must be
//! reported with every figure issue 11 asks for, nothing may be left behind (processes, the
//! run directory, the full-disk provider's tmpfs), and the scenario must exit 0: its exit
//! status is the verdict on issue 11's thresholds (no honest rental failed, rent p99, RSS,
//! audit growth, no paid lease without a tunnel, no double payment). This test makes no timed
//! assertion of its own.
//!
//! Ignored until the defences of issue 11 are merged: without them the reservation-grab and
//! full-disk attacks fail their thresholds (docs/SIMNET.md, "siege", gives the figures).
//! Run it with `cargo test -p leasewire-simnet --test siege_run -- --ignored`.
//!
//! Like simnet_run.rs it drives the real `leasewire` and `lnd-sim` binaries found next to
//! `simnet`; with `-p leasewire-simnet` alone, run `cargo build --workspace` first.

use std::time::Duration;

// Each test binary uses only some of the shared helpers.
#[allow(dead_code)]
mod util;

use util::{Finished, processes_mentioning, run_simnet_process};

/// Cluster start, seven attacks of 3 s with their honest rents (each up to a 20 s rent
/// timeout when the market refuses), stop and audit.
const RUN_TIMEOUT: Duration = Duration::from_secs(420);

/// The attacks, in the order the scenario runs them.
const ATTACKS: [&str; 7] = [
    "replay-poison",
    "oversized",
    "floods",
    "hold-open",
    "garbage",
    "full-disk",
    "reservation-grab",
];

#[test]
#[ignore = "passes once issue 11's defences (connection limits, replay guard, reservation caps, disk-full handling) are merged"]
fn the_market_keeps_serving_under_siege() {
    let base = tempfile::tempdir().expect("a temp dir");
    let base_str = base.path().to_string_lossy().into_owned();
    let args = ["--scenario", "siege", "--attack-secs", "3"];
    let Finished {
        status,
        stdout,
        stderr,
    } = run_simnet_process(&args, base.path(), RUN_TIMEOUT, Duration::from_secs(15));

    // Cleanup first: a failing run must not leak either.
    let leftovers = processes_mentioning(&base_str);
    assert!(
        leftovers.is_empty(),
        "processes left behind: {leftovers:#?}"
    );
    let attackers = processes_mentioning("attack --attack");
    assert!(
        attackers.is_empty(),
        "attackers left behind: {attackers:#?}"
    );
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    assert!(
        !mounts.contains(&base_str),
        "tmpfs left mounted under {base_str}:\n{mounts}"
    );
    let left_files: Vec<_> = std::fs::read_dir(base.path())
        .expect("base dir still there")
        .collect();
    assert!(
        left_files.is_empty(),
        "run directory not removed: {left_files:?}"
    );

    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("stdout is not one JSON object ({e}):\n{stdout}\nstderr:\n{stderr}")
    });
    assert_eq!(v["scenario"], "siege", "{v:#}");
    assert_eq!(v["attack_secs"], 3, "{v:#}");
    assert_eq!(v["double_payments"], 0, "{v:#}");
    assert_eq!(v["audit_ok"], true, "{v:#}");
    let attacks = v["attacks"].as_array().expect("attacks");
    let names: Vec<&str> = attacks
        .iter()
        .map(|a| a["attack"].as_str().expect("attack name"))
        .collect();
    assert_eq!(names, ATTACKS, "{v:#}");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    for a in attacks {
        if a["attack"] == "full-disk" && !root {
            assert_eq!(a["status"], "SKIPPED", "{a:#}");
            assert!(stderr.contains("full-disk SKIPPED"), "{stderr}");
            continue;
        }
        assert_eq!(a["status"], "ran", "{a:#}");
        for field in [
            "honest_rentals_ok",
            "honest_rentals_failed",
            "audit_bytes_written",
            "paid_without_tunnel",
        ] {
            assert!(a[field].is_u64(), "{field} missing: {a:#}");
        }
        for field in ["rent_ms_p50", "rent_ms_p99"] {
            assert!(a[field].is_u64() || a[field].is_null(), "{field}: {a:#}");
        }
        // Every daemon (3 providers, 2 renters) was sampled.
        for field in ["rss_mb_max", "fds_max"] {
            let per = a[field].as_object().expect(field);
            assert_eq!(per.len(), 5, "{field}: {a:#}");
            assert!(
                per.values().all(|x| x.as_f64().is_some_and(|x| x > 0.0)),
                "{a:#}"
            );
        }
        if a["attack"] == "full-disk" {
            assert!(a["recovered"].is_boolean(), "{a:#}");
        } else {
            // The attacker ran and reached the targets.
            let s = &a["attacker"];
            assert!(s["sent"].as_u64().is_some_and(|n| n > 0), "{a:#}");
        }
    }

    // The verdict on the thresholds.
    assert!(
        status.success(),
        "simnet siege exited with {status}; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}
