//! The `--netns` environment of one run: its topology, its run tag, and the cleanup of
//! everything the daemons leave in the namespaces.
//!
//! Cleanup order matters. The registered children (daemons, lnd-sim, probe listeners) are
//! stopped by the caller first. What is left are the `wireguard-go` processes the daemons
//! started: they daemonize, so they are nobody's child and outlive their daemon. Removing
//! their UAPI sockets makes them exit; anything still running in one of our namespaces after
//! that is killed by pid (`ip netns pids`). Only then are the namespaces deleted: a namespace
//! with a live process disappears from `ip netns list` but lives on.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use ipnet::IpNet;

use crate::netns::{Topology, TopologySpec, list_namespaces, run_prefix};

/// Where userspace WireGuard keeps its UAPI sockets (both spellings; /var/run is usually a
/// link to /run).
const SOCKET_DIRS: [&str; 2] = ["/var/run/wireguard", "/run/wireguard"];
/// How long processes in our namespaces get to exit after SIGTERM.
const EXIT_GRACE: Duration = Duration::from_secs(3);

/// A live `--netns` environment.
#[derive(Debug)]
pub struct NetEnv {
    /// The namespaces.
    pub topo: Topology,
    /// Four hex digits naming this run: namespaces are `lw-<tag>-…`, interfaces `lw<tag>…`.
    pub tag: String,
}

impl NetEnv {
    /// Checks the machine ([`Topology::preflight`]) and builds a topology for `pools.len()`
    /// providers (provider `i` leases out `pools[i]`) and `renters` renters, under a fresh tag.
    ///
    /// Blocking (a few `ip` commands per node). Errors: the preflight names what is missing,
    /// or the topology cannot be built (nothing is left behind then).
    pub fn create(pools: Vec<Vec<IpNet>>, renters: usize) -> Result<NetEnv> {
        Topology::preflight()?;
        let tag = random_tag()?;
        let topo = Topology::create(&TopologySpec {
            run_id: tag.clone(),
            providers: pools,
            renters,
        })?;
        Ok(NetEnv { topo, tag })
    }

    /// Ends every process still running in this run's namespaces (the daemons'
    /// `wireguard-go`s), removes their sockets, deletes the namespaces and checks that
    /// `ip netns list` shows none of them. Call after every registered child has stopped.
    ///
    /// Errors: a namespace could not be deleted or is still listed; the message names it.
    pub async fn cleanup(self) -> Result<()> {
        let removed = remove_sockets(&format!("lw{}", self.tag));
        tracing::debug!(removed, "removed userspace WireGuard sockets");
        let mut namespaces = vec![self.topo.internet_ns().to_owned()];
        namespaces.extend((0..self.topo.providers()).map(|i| self.topo.provider_ns(i).to_owned()));
        namespaces.extend((0..self.topo.renters()).map(|i| self.topo.renter_ns(i).to_owned()));
        // wireguard-go notices its socket is gone at once; give it a moment, then insist.
        end_processes(&namespaces, libc::SIGTERM, EXIT_GRACE).await;
        end_processes(&namespaces, libc::SIGKILL, Duration::from_secs(2)).await;
        let tag = self.tag.clone();
        self.topo.teardown()?;
        let left = list_namespaces(&run_prefix(&tag))?;
        if !left.is_empty() {
            bail!(
                "namespaces still listed after teardown: {}",
                left.join(", ")
            );
        }
        tracing::info!(run = %tag, "netns topology removed");
        Ok(())
    }
}

/// Four random hex digits.
fn random_tag() -> Result<String> {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).map_err(|e| anyhow!("no randomness for the run tag: {e}"))?;
    Ok(hex::encode(b))
}

/// Removes every UAPI socket whose interface name starts with `prefix`; returns how many.
fn remove_sockets(prefix: &str) -> usize {
    let mut n = 0;
    for dir in SOCKET_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(prefix) && name.ends_with(".sock") {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => n += 1,
                    // Both directories may be the same one: already gone is fine.
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => tracing::warn!(path = %e.path().display(), "cannot remove: {err}"),
                }
            }
        }
    }
    n
}

/// Pids of the processes in namespace `ns`.
fn pids_in(ns: &str) -> Vec<i32> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => parse_pids(&String::from_utf8_lossy(&o.stdout)),
        _ => Vec::new(),
    }
}

fn parse_pids(out: &str) -> Vec<i32> {
    out.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Sends `sig` to every process in `namespaces`, then waits up to `grace` for them to go.
async fn end_processes(namespaces: &[String], sig: libc::c_int, grace: Duration) {
    let deadline = Instant::now() + grace;
    let mut signalled = false;
    loop {
        let pids: Vec<(String, i32)> = namespaces
            .iter()
            .flat_map(|ns| pids_in(ns).into_iter().map(move |p| (ns.clone(), p)))
            .collect();
        if pids.is_empty() {
            return;
        }
        if !signalled {
            for (ns, pid) in &pids {
                tracing::debug!(%ns, pid, sig, "ending leftover process");
                // SAFETY: kill(2) has no memory-safety preconditions. The pid was listed in a
                // namespace this run created, so it is a process the run started (a daemon's
                // wireguard-go); our namespaces hold nothing else.
                unsafe {
                    libc::kill(*pid, sig);
                }
            }
            signalled = true;
        }
        if Instant::now() >= deadline {
            tracing::warn!(left = pids.len(), sig, "processes still in our namespaces");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_four_hex_digits() {
        let t = random_tag().unwrap();
        assert_eq!(t.len(), 4);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        // Interface names built from it stay within IFNAMSIZ.
        assert!(format!("lw{t}r63").len() <= 15);
    }

    #[test]
    fn pid_lists_parse() {
        assert_eq!(parse_pids("12\n345\n\n"), [12, 345]);
        assert!(parse_pids("").is_empty());
        assert_eq!(parse_pids("x 7"), [7]);
    }

    #[test]
    fn no_sockets_means_nothing_removed() {
        // A prefix no real interface can have (interface names cannot contain '/').
        assert_eq!(remove_sockets("no/such/prefix"), 0);
    }
}
