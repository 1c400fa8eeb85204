//! End to end: `simnet --scenario discovery` with 18 providers (two start batches after the
//! bootstrap provider, and two providers on the /31 pools past the first 16) and 2 renters.
//! Every renter must hold every provider's offer, the figures the anchor comparison reads must
//! be there, and nothing may be left behind.
//!
//! Like simnet_run.rs it drives the real `leasewire` and `lnd-sim` binaries found next to
//! `simnet`; with `-p leasewire-simnet` alone, run `cargo build --workspace` first.

use std::time::Duration;

// Each test binary uses only some of the shared helpers.
#[allow(dead_code)]
mod util;

use util::{Finished, processes_mentioning, run_simnet_process};

/// Cluster start (18 daemons in batches), the 60 s watch at most, and the stop.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn every_renter_holds_every_offer() {
    let base = tempfile::tempdir().expect("a temp dir");
    let args = [
        "--scenario",
        "discovery",
        "--providers",
        "18",
        "--renters",
        "2",
    ];
    let Finished {
        status,
        stdout,
        stderr,
    } = run_simnet_process(&args, base.path(), RUN_TIMEOUT, Duration::from_secs(15));
    let leftovers = processes_mentioning(&base.path().to_string_lossy());
    assert!(
        leftovers.is_empty(),
        "processes left behind: {leftovers:#?}"
    );
    assert!(
        status.success(),
        "simnet exited with {status}; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}"));

    assert_eq!(v["scenario"], "discovery", "{v:#}");
    assert_eq!(v["providers"], 18, "{v:#}");
    assert_eq!(v["complete"], true, "{v:#}");
    assert_eq!(v["offers_seen_min"], 18, "{v:#}");
    let all = v["all_exchanged_ms"].as_u64().expect("all_exchanged_ms");
    let first = v["first_offer_ms"].as_u64().expect("first_offer_ms");
    assert!(first <= all, "{v:#}");
    assert!(
        v["client_cpu_ms"].as_u64().expect("client_cpu_ms") > 0,
        "{v:#}"
    );
    let rss_max = v["rss_mb_max"].as_f64().expect("rss_mb_max");
    let rss_total = v["rss_mb_total"].as_f64().expect("rss_mb_total");
    // 20 daemons, each at most the largest.
    assert!(
        rss_max > 0.0 && rss_total >= rss_max && rss_total <= 20.0 * rss_max,
        "{v:#}"
    );

    let renters = v["per_renter"].as_array().expect("per_renter");
    assert_eq!(renters.len(), 2, "{v:#}");
    for r in renters {
        assert_eq!(r["offers_seen"], 18, "{r}");
        let all_r = r["all_exchanged_ms"].as_u64().expect("a renter's time");
        assert!(all_r <= all, "{r}");
        assert!(
            r["cpu_ms"].as_u64().is_some() && r["rss_mb"].as_f64().is_some(),
            "{r}"
        );
        assert!(r.get("error").is_none(), "{r}");
    }
}
