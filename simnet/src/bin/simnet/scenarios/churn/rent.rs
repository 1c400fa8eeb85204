//! Steps 1 to 4 of the churn scenario: offers, rents (families and sizes too), renter-0's
//! leases held at once, and the timed release.

use super::*;

/// Families and sizes, with a cluster of at least [`SIZED_PROVIDERS`] providers and as many
/// renters: renter-4 rents IPv4 only from the IPv4-only provider-4, a /32 and then a /30
/// (`--ipv4 32|30 --ipv6 none`); renter-5 rents IPv6 only from the IPv6-only provider-5
/// (`--ipv4 none --ipv6 64`). Each lease must have exactly the family and size asked for;
/// with `--netns` every address of each (all four of the /30) carries traffic both ways.
pub(super) async fn families(cli: &Cli, cast: &Cast<'_>, prober: Option<&Prober<'_>>) -> Notes {
    let mut notes = Notes::default();
    if cast.providers.len() < SIZED_PROVIDERS || cast.renters.len() < SIZED_PROVIDERS {
        return notes;
    }
    let v4 = |len: &'static str| Sizes {
        ipv4: Some(len),
        ipv6: Some("none"),
    };
    let v6 = Sizes {
        ipv4: Some("none"),
        ipv6: Some("64"),
    };
    // (renter, provider, what to ask for, the family and lengths that must come back)
    let plan: [(usize, usize, Sizes, Family); 3] = [
        (R_V4, P_V4ONLY, v4("32"), ("ipv4", Some(32), None)),
        (R_V4, P_V4ONLY, v4("30"), ("ipv4", Some(30), None)),
        (R_V6, P_V6ONLY, v6, ("ipv6", None, Some(64))),
    ];
    for (r, p, sizes, want) in plan {
        let renter = cast.renters[r];
        let out = match timed_rent(cli, renter, cast.providers[p], LONG_CREDIT_SAT, sizes).await {
            Ok((o, ms)) => {
                notes.lease_ms.insert(o.lease_id.clone(), ms);
                o
            }
            Err(e) => {
                notes.fail(format!("{} rent {sizes:?}: {e:#}", renter.name));
                continue;
            }
        };
        let got = ChurnLease::family_of(out.ipv4.as_deref(), out.ipv6.as_deref());
        if got != want {
            notes.fail(format!(
                "{} asked for {sizes:?} and got {:?} / {:?}",
                renter.name, out.ipv4, out.ipv6
            ));
            continue;
        }
        notes.role(&out.lease_id, format!("{} only, asked for", want.0));
        if let Some(p) = prober {
            let (ok, why) = traffic(p, renter, out.ipv4.as_deref(), out.ipv6.as_deref()).await;
            notes.traffic.insert(out.lease_id.clone(), ok);
            if !ok {
                notes.fail(format!(
                    "{} lease {} ({:?}) carries no traffic on every address: {}",
                    renter.name,
                    out.lease_id,
                    out.ipv4.as_deref().or(out.ipv6.as_deref()),
                    why.join("; ")
                ));
            }
        }
    }
    notes
}

/// Polls the renter's `offers` until every provider of `want` (peer ids) is listed.
///
/// Errors: not within [`OFFERS_TIMEOUT`].
pub(super) async fn wait_offers(cli: &Cli, renter: &Node, want: &HashSet<String>) -> Result<()> {
    let deadline = Instant::now() + OFFERS_TIMEOUT;
    loop {
        let seen: HashSet<String> = match cli.offers(&renter.data_dir).await {
            Ok(o) => o.offers.into_iter().map(|o| o.provider).collect(),
            Err(e) => {
                tracing::debug!(renter = %renter.name, "offers: {e:#}");
                HashSet::new()
            }
        };
        if want.iter().all(|p| seen.contains(p)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} listed {} of {} providers within {OFFERS_TIMEOUT:?}",
                renter.name,
                want.iter().filter(|p| seen.contains(*p)).count(),
                want.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `rent --offer ID` under `provider`'s current offer, asking for `sizes`, timed from the
/// first attempt. A provider re-signs its offer (a new id) whenever what it has available
/// changes, e.g. after each lease it issues, and the renter's `rent --offer` knows only the
/// newest one: an id superseded between the lookup and the rent is looked up again.
///
/// Errors: the renter knows no offer of the provider, or the rent fails otherwise.
pub(super) async fn timed_rent(
    cli: &Cli,
    renter: &Node,
    provider: &Node,
    credit: u64,
    sizes: Sizes,
) -> Result<(RentOut, u64)> {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let offer_id = current_offer(cli, renter, &provider.peer_id).await?;
        match cli
            .rent_offer(
                &renter.data_dir,
                &offer_id,
                credit,
                OFFER_RENT_TIMEOUT_SECS,
                sizes,
            )
            .await
        {
            Ok(out) => {
                tracing::info!(renter = %renter.name, provider = %provider.name,
                    lease_id = %out.lease_id, ipv4 = ?out.ipv4, ipv6 = ?out.ipv6, "leased");
                return Ok((out, millis(started.elapsed())));
            }
            Err(e) if attempt < RENT_ATTEMPTS && format!("{e:#}").contains(SUPERSEDED) => {
                tracing::info!(renter = %renter.name, %offer_id, "offer superseded; looking it up again");
            }
            Err(e) => return Err(e),
        }
    }
}

/// The id of `provider`'s newest offer the renter knows, polled until it knows one.
///
/// Errors: none within [`OFFERS_TIMEOUT`].
pub(super) async fn current_offer(cli: &Cli, renter: &Node, provider: &str) -> Result<String> {
    let deadline = Instant::now() + OFFERS_TIMEOUT;
    loop {
        if let Ok(o) = cli.offers(&renter.data_dir).await
            && let Some(o) = o.offers.into_iter().find(|o| o.provider == provider)
        {
            return Ok(o.offer_id);
        }
        if Instant::now() >= deadline {
            bail!(
                "{} knows no offer of {provider} within {OFFERS_TIMEOUT:?}",
                renter.name
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Step 3: renter-0's leases are all active at once; provider-0 holds its two as two peers;
/// with `--netns` each carries traffic.
pub(super) async fn check_multi(
    cluster: &Cluster,
    cast: &Cast<'_>,
    prober: Option<&Prober<'_>>,
    placement: Placement<'_>,
    multi: &[Option<RentOut>],
    notes: &mut Notes,
) {
    let renter = cast.renters[R_MULTI];
    let leases: Vec<&RentOut> = multi.iter().flatten().collect();
    match cluster.cli.status(&renter.data_dir).await {
        Ok(s) => {
            let active = leases
                .iter()
                .filter(|l| {
                    s.leases
                        .iter()
                        .any(|x| x.lease_id == l.lease_id && x.is_active())
                })
                .count();
            notes.leases_max = notes.leases_max.max(u32::try_from(active).unwrap_or(0));
            if active < 3 {
                notes.fail(format!("renter-0 holds {active} active leases, not 3"));
            }
        }
        Err(e) => notes.fail(format!("renter-0 status: {e:#}")),
    }
    let from_cheap: Vec<&RentOut> = multi.iter().take(2).flatten().collect();
    if from_cheap.len() == 2 {
        let p0 = cast.providers[P_CHEAP];
        let peers = match placement {
            Placement::Host => file_peers(&p0.data_dir, &Kind::Provider.interface("", p0.index)),
            Placement::Netns { topo, tag } => {
                let iface = Kind::Provider.interface(tag, p0.index);
                crate::scenarios::autopay::wg(
                    topo,
                    topo.provider_ns(p0.index),
                    &["show", &iface, "allowed-ips"],
                )
                .await
                .map(|shown| {
                    shown
                        .lines()
                        .map(|l| l.split_whitespace().skip(1).map(str::to_owned).collect())
                        .collect()
                })
            }
        };
        match peers {
            Ok(peers) => {
                if let Err(e) = two_peers(&peers, from_cheap[0], from_cheap[1]) {
                    notes.fail(format!("provider-0's peer state: {e}"));
                }
            }
            Err(e) => notes.fail(format!("provider-0's peer state: {e:#}")),
        }
    }
    if let Some(p) = prober {
        let checks = leases.iter().map(|l| async move {
            let (ok, why) = traffic(p, renter, l.ipv4.as_deref(), l.ipv6.as_deref()).await;
            (l.lease_id.clone(), ok, why)
        });
        for (id, ok, why) in futures::future::join_all(checks).await {
            notes.traffic.insert(id.clone(), ok);
            if !ok {
                notes.fail(format!(
                    "renter-0 lease {id} carries no traffic: {}",
                    why.join("; ")
                ));
            }
        }
    }
}

/// The allowed IPs of every peer in the file backend's state of interface `iface`
/// (`DATA/tunnel/IFACE.state.json`).
///
/// Errors: the file cannot be read or parsed.
pub(super) fn file_peers(data_dir: &Path, iface: &str) -> Result<Vec<Vec<String>>> {
    #[derive(Deserialize)]
    struct State {
        peers: Vec<Peer>,
    }
    #[derive(Deserialize)]
    struct Peer {
        allowed_ips: Vec<String>,
    }
    let path = data_dir.join("tunnel").join(format!("{iface}.state.json"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let state: State =
        serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
    Ok(state.peers.into_iter().map(|p| p.allowed_ips).collect())
}

/// Whether `peers` (each peer's allowed IPs) route each lease's prefixes to a peer of its own.
pub(super) fn two_peers(peers: &[Vec<String>], a: &RentOut, b: &RentOut) -> Result<(), String> {
    let peer_of = |l: &RentOut| -> Result<usize, String> {
        let prefixes: Vec<&str> = [l.ipv4.as_deref(), l.ipv6.as_deref()]
            .into_iter()
            .flatten()
            .filter(|p| !p.is_empty())
            .collect();
        let i = peers
            .iter()
            .position(|ips| prefixes.iter().all(|p| ips.iter().any(|x| x == p)))
            .ok_or_else(|| format!("no peer routes {prefixes:?} (peers: {peers:?})"))?;
        Ok(i)
    };
    let (pa, pb) = (peer_of(a)?, peer_of(b)?);
    if pa == pb {
        return Err(format!(
            "leases {} and {} share one peer",
            a.lease_id, b.lease_id
        ));
    }
    Ok(())
}

/// Step 4: releases `lease` while polling the provider's `leases`; returns the ms from the
/// release command's start to the provider showing the lease released.
///
/// Errors: the release fails or the provider does not show it within [`RELEASE_TIMEOUT`].
pub(super) async fn time_release(
    cli: &Cli,
    renter: &Node,
    provider: &Node,
    lease: &RentOut,
) -> Result<u64> {
    let started = Instant::now();
    let release = cli.release(&renter.data_dir, &lease.lease_id);
    let seen = async {
        loop {
            if let Ok(l) = cli.leases(&provider.data_dir).await
                && l.leases
                    .iter()
                    .any(|x| x.lease_id == lease.lease_id && x.state == "released")
            {
                return millis(started.elapsed());
            }
            if started.elapsed() > RELEASE_TIMEOUT {
                return u64::MAX;
            }
            tokio::time::sleep(RELEASE_POLL).await;
        }
    };
    let (released, ms) = tokio::join!(release, seen);
    let out = released.context("release")?;
    tracing::info!(lease_id = %lease.lease_id, forfeit_sat = out.paid_sat, ms, "released");
    if ms == u64::MAX {
        bail!(
            "provider-0 did not show lease {} released within {RELEASE_TIMEOUT:?}",
            lease.lease_id
        );
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rent(id: &str, v4: &str, v6: &str) -> RentOut {
        RentOut {
            lease_id: id.into(),
            provider: "P".into(),
            ipv4: Some(v4.into()),
            ipv6: Some(v6.into()),
            paid_sat: 1,
            paid_until: None,
        }
    }

    #[test]
    fn two_leases_need_two_peers() {
        let a = rent("a", "198.51.100.1/32", "2001:db8:100::/64");
        let b = rent("b", "198.51.100.2/32", "2001:db8:100:1::/64");
        let ips = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let two = [
            ips(&["198.51.100.1/32", "2001:db8:100::/64"]),
            ips(&["198.51.100.2/32", "2001:db8:100:1::/64"]),
        ];
        assert_eq!(two_peers(&two, &a, &b), Ok(()));
        // The old bug: one peer whose allowed IPs were replaced by the newest lease.
        let one = [ips(&["198.51.100.2/32", "2001:db8:100:1::/64"])];
        assert!(
            two_peers(&one, &a, &b)
                .unwrap_err()
                .contains("no peer routes")
        );
        let shared = [ips(&[
            "198.51.100.1/32",
            "2001:db8:100::/64",
            "198.51.100.2/32",
            "2001:db8:100:1::/64",
        ])];
        assert!(
            two_peers(&shared, &a, &b)
                .unwrap_err()
                .contains("share one peer")
        );
    }

    #[test]
    fn file_backend_state_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tunnel")).unwrap();
        std::fs::write(
            dir.path().join("tunnel/lwp0.state.json"),
            r#"{"version":1,"spec":{},"peers":[{"public_key":"k","allowed_ips":["198.51.100.1/32"]}]}"#,
        )
        .unwrap();
        assert_eq!(
            file_peers(dir.path(), "lwp0").unwrap(),
            [vec!["198.51.100.1/32".to_owned()]]
        );
        assert!(file_peers(dir.path(), "lwp1").is_err());
    }
}
