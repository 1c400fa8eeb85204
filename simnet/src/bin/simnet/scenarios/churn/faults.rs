//! Step 5 of the churn scenario: a provider killed for good, a provider that moves its
//! WireGuard port and then ends a lease with notice, and what the renters must do about it.

use super::*;

/// Step 5, death: SIGKILLs provider-3 and waits for renter-2's failover. Returns the time of
/// death (Unix ns) once the process is gone.
pub(super) async fn doom(
    cluster: &Cluster,
    cast: &Cast<'_>,
    prober: Option<&Prober<'_>>,
    orphan: Option<&RentOut>,
    notes: &mut Notes,
) -> Option<u64> {
    let doomed = cast.providers[P_DOOMED];
    if let (Some(_), Some(old)) = (prober, orphan) {
        autopay_first(cluster, cast.renters[R_ORPHAN], &old.lease_id, notes).await;
    }
    if let Err(e) = cluster.kill_daemon(doomed).await {
        notes.fail(format!("cannot kill provider-3: {e:#}"));
        return None;
    }
    let death = now_ns();
    let died = Instant::now();
    tracing::warn!("provider-3 killed for good");
    let Some(old) = orphan else {
        return Some(death);
    };
    notes.role(&old.lease_id, "provider killed");
    let renter = cast.renters[R_ORPHAN];
    match wait_lease(&cluster.cli, &renter.data_dir, FAILOVER_LIMIT, |l| {
        l.failed_over_from == old.lease_id && l.is_active()
    })
    .await
    {
        Ok(new) => {
            tracing::info!(secs = died.elapsed().as_secs(), new = %new.lease_id, "renter-2 failed over");
            notes.role(
                &new.lease_id,
                format!("failover after {} s", died.elapsed().as_secs()),
            );
            replacement_traffic(prober, renter, &new, notes).await;
        }
        Err(e) => notes.fail(format!(
            "renter-2 did not fail over within {FAILOVER_LIMIT:?} of provider-3's death: {e:#}"
        )),
    }
    Some(death)
}

/// Step 5, endpoint: provider-1 moves to a new WireGuard port; renter-0's lease `lease` from
/// it must follow with no payment by renter-0 meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) async fn move_endpoint(
    cluster: &Cluster,
    bins: &Bins,
    placement: Placement<'_>,
    prober: Option<&Prober<'_>>,
    cast: &Cast<'_>,
    ledger: &Ledger,
    lease: Option<&RentOut>,
    notes: &mut Notes,
) {
    let Some(lease) = lease else { return };
    notes.role(&lease.lease_id, "endpoint moved");
    let renter = cast.renters[R_MULTI];
    let mover = cast.providers[P_MOVER];
    let before = now_ns();
    let endpoint = match rewrite_port(mover, placement).await {
        Ok(e) => e,
        Err(e) => return notes.fail(format!("cannot move provider-1: {e:#}")),
    };
    tracing::info!(%endpoint, "restarting provider-1 on a new WireGuard port");
    if let Err(e) = cluster
        .restart_daemon(bins, placement, mover, STOP_GRACE)
        .await
    {
        return notes.fail(format!("cannot restart provider-1: {e:#}"));
    }
    let id = lease.lease_id.clone();
    let followed = wait_lease(&cluster.cli, &renter.data_dir, FOLLOW_TIMEOUT, |l| {
        l.lease_id == id && l.endpoint == endpoint
    })
    .await;
    if let Err(e) = followed {
        return notes.fail(format!(
            "renter-0 did not follow provider-1 to {endpoint}: {e:#}"
        ));
    }
    let paid = match ledger.audit().await {
        Ok(a) => figures::succeeded_after(&a.payments, Some(&renter.name), None, before).count(),
        Err(e) => return notes.fail(format!("ledger: {e:#}")),
    };
    if paid > 0 {
        return notes.fail(format!(
            "renter-0 made {paid} payments while following the move"
        ));
    }
    notes.endpoint_followed = true;
    if let Some(p) = prober {
        let (ok, why) = traffic(p, renter, lease.ipv4.as_deref(), lease.ipv6.as_deref()).await;
        notes.traffic.insert(lease.lease_id.clone(), ok);
        if !ok {
            notes.fail(format!(
                "renter-0's lease from provider-1 carries no traffic after the move: {}",
                why.join("; ")
            ));
        }
    }
}

/// Rewrites `node`'s config with a new WireGuard listen port and the endpoint that goes with
/// it; returns the new endpoint.
///
/// Errors: the config cannot be read, changed or written.
pub(super) async fn rewrite_port(node: &Node, placement: Placement<'_>) -> Result<String> {
    let path = node.data_dir.join("config.toml");
    let mut cfg = Config::load(&path)?;
    let port = match placement {
        // Its own namespace: any other port is free.
        Placement::Netns { .. } => NETNS_WG_PORT + 1,
        Placement::Host => std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .context("cannot find a free UDP port")?
            .port(),
    };
    let host = cfg
        .provider
        .endpoint
        .rsplit_once(':')
        .map(|(h, _)| h.to_owned())
        .ok_or_else(|| anyhow!("endpoint {:?} has no port", cfg.provider.endpoint))?;
    cfg.provider.endpoint = format!("{host}:{port}");
    cfg.tunnel.listen_port = port;
    cfg.validate()?;
    std::fs::write(&path, cfg.to_toml())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(cfg.provider.endpoint)
}

/// Step 5, notice: provider-1 terminates renter-3's lease with notice; the notice must show
/// in renter-3's `status`, renter-3 must fail over and pay provider-1 nothing more.
pub(super) async fn terminate(
    cluster: &Cluster,
    cast: &Cast<'_>,
    prober: Option<&Prober<'_>>,
    ledger: &Ledger,
    lease: Option<&RentOut>,
    notes: &mut Notes,
) {
    let Some(lease) = lease else { return };
    notes.role(&lease.lease_id, "terminated with notice");
    let renter = cast.renters[R_NOTICED];
    let provider = cast.providers[P_MOVER];
    if prober.is_some() {
        autopay_first(cluster, renter, &lease.lease_id, notes).await;
    }
    let at = now_ns();
    if let Err(e) = cluster
        .cli
        .terminate(&provider.data_dir, &lease.lease_id, NOTICE_SECS)
        .await
    {
        return notes.fail(format!("terminate: {e:#}"));
    }
    let id = lease.lease_id.clone();
    let shown = wait_lease(&cluster.cli, &renter.data_dir, FOLLOW_TIMEOUT, |l| {
        l.lease_id == id && l.terminates_at > 0
    })
    .await;
    let ends_at = match shown {
        Ok(l) => l.terminates_at,
        Err(e) => return notes.fail(format!("renter-3's status never showed the notice: {e:#}")),
    };
    match wait_lease(&cluster.cli, &renter.data_dir, FOLLOW_TIMEOUT, |l| {
        l.failed_over_from == id && l.is_active()
    })
    .await
    {
        Ok(new) => {
            notes.role(&new.lease_id, "failover after a termination notice");
            replacement_traffic(prober, renter, &new, notes).await;
        }
        Err(e) => notes.fail(format!(
            "renter-3 did not fail over after the notice: {e:#}"
        )),
    }
    // AutoPay gets its chance to (wrongly) pay until the notice is over.
    let end = UNIX_EPOCH + Duration::from_secs(ends_at + 2);
    if let Ok(wait) = end.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    match ledger.audit().await {
        Ok(a) => {
            let n =
                figures::succeeded_after(&a.payments, Some(&renter.name), Some(&provider.name), at)
                    .count();
            if n > 0 {
                notes.fail(format!(
                    "renter-3 paid provider-1 {n} times after the notice"
                ));
            }
        }
        Err(e) => notes.fail(format!("ledger: {e:#}")),
    }
    // provider-1 promises refunds of unused credit: once the lease has ended, renter-3 claims
    // what was left of it and provider-1 pays it back through lnd-sim.
    let deadline = Instant::now() + REFUND_TIMEOUT;
    loop {
        match ledger.audit().await {
            Ok(a) => {
                let sat =
                    figures::sat_after(&a.payments, Some(&provider.name), Some(&renter.name), at);
                if sat > 0 {
                    notes.role(&lease.lease_id, format!("refunded {sat} sat"));
                    break;
                }
            }
            Err(e) => return notes.fail(format!("ledger: {e:#}")),
        }
        if Instant::now() >= deadline {
            return notes.fail(format!(
                "provider-1 refunded nothing to renter-3 within {REFUND_TIMEOUT:?} of the lease's end"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// With `--netns`, where AutoPay can verify tunnels: waits for AutoPay's first top-up of
/// `lease_id`, so that what follows (death, notice) stops a payer that was paying.
pub(super) async fn autopay_first(
    cluster: &Cluster,
    renter: &Node,
    lease_id: &str,
    notes: &mut Notes,
) {
    match wait_lease(&cluster.cli, &renter.data_dir, AUTOPAY_TIMEOUT, |l| {
        l.lease_id == lease_id && l.autopay_topups >= 1
    })
    .await
    {
        Ok(_) => notes.role(lease_id, "topped up by AutoPay"),
        Err(e) => notes.fail(format!(
            "{}: AutoPay never topped up lease {lease_id}: {e:#}",
            renter.name
        )),
    }
}

/// With `--netns`: the replacement lease a failover bought carries traffic.
pub(super) async fn replacement_traffic(
    prober: Option<&Prober<'_>>,
    renter: &Node,
    new: &LeaseOut,
    notes: &mut Notes,
) {
    let Some(p) = prober else { return };
    let (ok, why) = traffic(p, renter, Some(&new.ipv4), Some(&new.ipv6)).await;
    notes.traffic.insert(new.lease_id.clone(), ok);
    if !ok {
        notes.fail(format!(
            "{}: the replacement lease {} carries no traffic: {}",
            renter.name,
            new.lease_id,
            why.join("; ")
        ));
    }
}
