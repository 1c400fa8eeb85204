//! `quickstart`, the default scenario: everyone rents at once.
//!
//! Steps of [`run`]:
//!
//! 1. every renter runs `rent --auto` at once; beside each `rent`, `offers` is polled to time
//!    how long discovery of all providers takes;
//! 2. with an intruder: once the renters are done and it has had at least two discovery
//!    rounds, read how many offers it saw and how many peers refused it;
//! 3. with `--netns`: right after each `rent` returns, the time to the first packet through
//!    its tunnel; then the data-plane checks of every lease, all renters at once (see
//!    dataplane.rs); then every provider daemon is restarted in place and each lease must
//!    carry traffic again without its renter doing anything.
//!
//! The frame (scenario.rs) then reads the payment figures, stops and audits.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cli::{Bins, Cli};
use crate::cluster::{Cluster, DISCOVERY_INTERVAL_SECS, Kind, Node, Placement};
use crate::dataplane::{self, Prober};
use crate::procs::{Procs, Stopped};
use crate::report::{DataPlane, IntruderReport, Rental};
use crate::scenario::{Outcome, Plan, RENT_TIMEOUT_SECS, STOP_GRACE};

/// Pause between `offers` polls while timing discovery.
const DISCOVERY_POLL: Duration = Duration::from_millis(300);
/// After the minimum wait, how long to keep asking the intruder for a refusal.
const INTRUDER_EXTRA_WAIT: Duration = Duration::from_secs(15);

/// Runs the steps of the module doc on a started cluster.
///
/// Errors: (netns) the internet host's probe listeners did not start.
pub async fn run(
    cluster: &Cluster,
    root: &Path,
    bins: &Bins,
    procs: &Arc<Procs>,
    plan: Plan,
    placement: Placement<'_>,
) -> Result<Outcome> {
    let prober = match placement {
        Placement::Host => None,
        Placement::Netns { topo, .. } => {
            let p = Prober {
                topo,
                exe: std::env::current_exe().context("cannot find simnet's own executable")?,
                procs: procs.clone(),
                log_dir: dataplane::log_dir(root)?,
            };
            dataplane::start_internet_listeners(&p).await?;
            Some(p)
        }
    };
    let names = cluster.provider_names();
    let all: HashSet<String> = names.keys().cloned().collect();

    tracing::info!(
        renters = plan.renters,
        credit_sat = plan.credit_sat,
        "renting"
    );
    let rents = cluster.of_kind(Kind::Renter).map(|n| {
        let (cli, all, names, prober) = (&cluster.cli, &all, &names, prober.as_ref());
        async move {
            let started = Instant::now();
            let r = rent_one(cli, n, plan.credit_sat, all, names).await;
            // Right after `rent` returns, in the same task, so the figure is not delayed by
            // other renters still waiting for their leases.
            let first = match (prober, r.ipv4.as_deref()) {
                (Some(p), Some(v4)) if r.leased() => {
                    Some(dataplane::first_packet(p, n, v4, started).await)
                }
                _ => None,
            };
            (r, first)
        }
    });
    let (mut rentals, firsts): (Vec<Rental>, Vec<Option<Result<u64>>>) =
        futures::future::join_all(rents).await.into_iter().unzip();
    let mut restart_unclean = Vec::new();

    if let Some(p) = &prober {
        tracing::info!("checking the data plane of every lease");
        let checks = cluster.of_kind(Kind::Renter).zip(&rentals).map(|(n, r)| {
            let cli = &cluster.cli;
            async move {
                if !r.leased() {
                    return DataPlane {
                        notes: vec!["no lease to check".into()],
                        ..DataPlane::default()
                    };
                }
                dataplane::check_rental(
                    p,
                    cli,
                    n,
                    r.ipv4.as_deref(),
                    r.ipv6.as_deref(),
                    r.paid_until,
                )
                .await
            }
        });
        let planes = futures::future::join_all(checks).await;
        for ((r, mut d), first) in rentals.iter_mut().zip(planes).zip(firsts) {
            match first {
                Some(Ok(ms)) => d.first_packet_ms = Some(ms),
                Some(Err(e)) => d.notes.push(format!("first packet: {e:#}")),
                None => {}
            }
            r.dataplane = Some(d);
        }
        restart_unclean = restart_providers(cluster, bins, placement, p, &mut rentals).await;
        dataplane::stop_listeners(procs).await;
    }

    let intruder = match cluster.of_kind(Kind::Intruder).next() {
        Some(node) => Some(probe_intruder(&cluster.cli, node).await),
        None => None,
    };
    Ok(Outcome {
        rentals,
        intruder,
        unclean_stops: restart_unclean,
        ..Outcome::default()
    })
}

/// The provider-restart check (netns): every provider daemon is restarted in place, all at
/// once, and then every leased rental is probed again until its traffic flows, with the
/// renters left alone. Sets each rental's `provider_restart_ok` and notes.
///
/// Returns the providers whose old process did not exit cleanly on SIGTERM (a warning, as for
/// the final stop). Never fails: a provider that cannot be restarted fails its rentals' check.
async fn restart_providers(
    cluster: &Cluster,
    bins: &Bins,
    placement: Placement<'_>,
    p: &Prober<'_>,
    rentals: &mut [Rental],
) -> Vec<String> {
    tracing::info!("restarting every provider daemon");
    let started = Instant::now();
    let restarts = cluster.of_kind(Kind::Provider).map(|n| async move {
        let r = cluster.restart_daemon(bins, placement, n, STOP_GRACE).await;
        (n.name.clone(), r)
    });
    let results: HashMap<String, Result<Stopped>> = futures::future::join_all(restarts)
        .await
        .into_iter()
        .collect();
    tracing::info!(
        secs = started.elapsed().as_secs_f32(),
        "providers restarted; probing their leases"
    );
    let mut unclean = Vec::new();
    for (name, r) in &results {
        match r {
            Ok(how) if !how.is_clean() => {
                tracing::warn!(%name, %how, "provider did not exit cleanly for its restart");
                unclean.push(name.clone());
            }
            Ok(_) => {}
            Err(e) => tracing::error!(%name, "provider restart failed: {e:#}"),
        }
    }
    let checks = cluster
        .of_kind(Kind::Renter)
        .zip(rentals.iter())
        .map(|(n, r)| {
            let restarted = r
                .provider
                .as_ref()
                .and_then(|prov| results.get(prov))
                .map(|res| res.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")));
            async move {
                if r.dataplane.is_none() || !r.leased() {
                    return None;
                }
                Some(match restarted {
                    Some(Ok(())) => {
                        dataplane::check_after_restart(p, n, r.ipv4.as_deref(), r.ipv6.as_deref())
                            .await
                    }
                    Some(Err(e)) => (false, vec![format!("provider restart: {e}")]),
                    None => (
                        false,
                        vec![format!("provider {:?} is not in the cluster", r.provider)],
                    ),
                })
            }
        });
    let verdicts = futures::future::join_all(checks).await;
    for (r, v) in rentals.iter_mut().zip(verdicts) {
        if let (Some(d), Some((ok, notes))) = (r.dataplane.as_mut(), v) {
            d.provider_restart_ok = ok;
            d.notes.extend(notes);
        }
    }
    unclean
}

/// One renter's `rent`, timed, with discovery timed alongside.
pub async fn rent_one(
    cli: &Cli,
    node: &Node,
    credit_sat: u64,
    providers: &HashSet<String>,
    names: &HashMap<String, String>,
) -> Rental {
    let start = Instant::now();
    let rent = cli.rent(&node.data_dir, credit_sat, RENT_TIMEOUT_SECS);
    let discovery = discover_all(cli, &node.data_dir, providers, start);
    tokio::pin!(rent, discovery);
    let mut discovery_ms = None;
    // Poll discovery only until it completes; the loop ends with rent either way.
    let result = loop {
        tokio::select! {
            r = &mut rent => break r,
            ms = &mut discovery, if discovery_ms.is_none() => discovery_ms = Some(ms),
        }
    };
    let lease_ms = millis(start.elapsed());
    match result {
        Ok(out) => {
            let provider = names
                .get(&out.provider)
                .cloned()
                .unwrap_or_else(|| out.provider.clone());
            tracing::info!(
                renter = %node.name, %provider, ipv4 = ?out.ipv4, ipv6 = ?out.ipv6,
                paid_sat = out.paid_sat, lease_ms, ?discovery_ms, "leased"
            );
            Rental {
                renter: node.name.clone(),
                provider: Some(provider),
                ipv4: out.ipv4,
                ipv6: out.ipv6,
                paid_sat: Some(out.paid_sat),
                lease_ms: Some(lease_ms),
                discovery_ms,
                error: None,
                paid_until: out.paid_until,
                ..Rental::default()
            }
        }
        Err(e) => {
            tracing::error!(renter = %node.name, "rent failed: {e:#}");
            Rental {
                renter: node.name.clone(),
                discovery_ms,
                error: Some(format!("{e:#}")),
                ..Rental::default()
            }
        }
    }
}

/// Polls `offers` until every provider in `want` is listed; returns ms since `start`.
/// Never returns otherwise: the caller stops polling when `rent` finishes.
async fn discover_all(cli: &Cli, dir: &Path, want: &HashSet<String>, start: Instant) -> u64 {
    loop {
        match cli.offers(dir).await {
            Ok(out) => {
                let seen: HashSet<&str> = out.offers.iter().map(|o| o.provider.as_str()).collect();
                if want.iter().all(|p| seen.contains(p.as_str())) {
                    return millis(start.elapsed());
                }
            }
            // The daemon may be busy renting; a failed poll just means "not yet".
            Err(e) => tracing::debug!(dir = %dir.display(), "offers poll failed: {e:#}"),
        }
        tokio::time::sleep(DISCOVERY_POLL).await;
    }
}

/// Reads what the intruder saw, after at least two discovery rounds of its own.
async fn probe_intruder(cli: &Cli, node: &Node) -> IntruderReport {
    let min_wait = Duration::from_secs(2 * DISCOVERY_INTERVAL_SECS + 1);
    let ready = node.ready_at.unwrap_or_else(Instant::now);
    tokio::time::sleep_until((ready + min_wait).into()).await;

    // A refusal needs a handshake round trip; give it a little beyond the minimum.
    let deadline = Instant::now() + INTRUDER_EXTRA_WAIT;
    let mut report = IntruderReport::default();
    loop {
        match cli.status(&node.data_dir).await {
            Ok(s) => {
                report.refused_by = s.net.refused_by.len();
                report.error = None;
            }
            Err(e) => report.error = Some(format!("status: {e:#}")),
        }
        if report.refused_by > 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Offers last, so they cover the whole time the intruder was up.
    match cli.offers(&node.data_dir).await {
        Ok(o) => report.offers_seen = o.offers.len(),
        Err(e) => {
            let prev = report
                .error
                .take()
                .map(|p| format!("{p}; "))
                .unwrap_or_default();
            report.error = Some(format!("{prev}offers: {e:#}"));
        }
    }
    tracing::info!(
        offers_seen = report.offers_seen,
        refused_by = report.refused_by,
        "intruder probed"
    );
    report
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fake `leasewire` that answers `offers` with the providers listed in a file and
    /// `rent` after a delay.
    fn fake_cli(dir: &Path, rent_script: &str) -> Cli {
        let bin = dir.join("leasewire");
        let script = format!(
            "#!/bin/sh\ncase \"$1\" in\n\
             offers) printf '{{\"offers\":[%s]}}' \"$(cat {dir}/offers 2>/dev/null)\" ;;\n\
             rent) {rent_script} ;;\n\
             status) echo '{{\"peer_id\":\"X\",\"net\":{{\"refused_by\":[\"P0\"]}}}}' ;;\n\
             *) exit 9 ;;\nesac\n",
            dir = dir.display()
        );
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Avoid ETXTBSY from a child forked by a concurrent test while our write fd was open.
        std::thread::sleep(Duration::from_millis(50));
        Cli::new(bin)
    }

    fn node(dir: &Path, kind: Kind) -> Node {
        Node {
            name: kind.name(0),
            kind,
            index: 0,
            data_dir: dir.to_owned(),
            peer_id: "X".into(),
            ready_at: Some(Instant::now() - Duration::from_secs(60)),
            ns: None,
        }
    }

    #[tokio::test]
    async fn rent_records_lease_and_discovery() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("offers"),
            r#"{"provider":"P0"},{"provider":"P1"}"#,
        )
        .unwrap();
        let cli = fake_cli(
            dir.path(),
            r#"sleep 1; echo '{"provider":"P1","ipv4":"198.51.100.17/32","ipv6":null,"paid_sat":4000}'"#,
        );
        let want: HashSet<String> = ["P0".into(), "P1".into()].into();
        let names: HashMap<String, String> = [("P1".into(), "provider-1".into())].into();
        let r = rent_one(&cli, &node(dir.path(), Kind::Renter), 3000, &want, &names).await;
        assert!(r.leased(), "{r:?}");
        assert_eq!(r.provider.as_deref(), Some("provider-1"));
        assert_eq!(r.ipv4.as_deref(), Some("198.51.100.17/32"));
        assert_eq!(r.paid_sat, Some(4000));
        assert!(r.lease_ms.unwrap() >= 1000);
        let d = r
            .discovery_ms
            .expect("both providers were listed before rent returned");
        assert!(d < r.lease_ms.unwrap());
    }

    #[tokio::test]
    async fn failed_rent_keeps_the_message_and_no_discovery() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("offers"), r#"{"provider":"P0"}"#).unwrap();
        let cli = fake_cli(dir.path(), "echo 'no offers found' >&2; exit 1");
        let want: HashSet<String> = ["P0".into(), "P1".into()].into();
        let r = rent_one(
            &cli,
            &node(dir.path(), Kind::Renter),
            3000,
            &want,
            &HashMap::new(),
        )
        .await;
        assert!(!r.leased());
        assert!(
            r.error.as_deref().unwrap().contains("no offers found"),
            "{r:?}"
        );
        assert_eq!(r.discovery_ms, None);
    }

    #[tokio::test]
    async fn intruder_probe_counts_refusals_and_offers() {
        let dir = tempfile::tempdir().unwrap();
        let cli = fake_cli(dir.path(), "exit 1");
        let r = probe_intruder(&cli, &node(dir.path(), Kind::Intruder)).await;
        assert_eq!(r.refused_by, 1);
        assert_eq!(r.offers_seen, 0);
        assert_eq!(r.error, None);
        std::fs::write(dir.path().join("offers"), r#"{"provider":"P0"}"#).unwrap();
        let r = probe_intruder(&cli, &node(dir.path(), Kind::Intruder)).await;
        assert_eq!(r.offers_seen, 1);
    }
}
