//! Step 6 of the churn scenario: one rental per lease from every renter's `status`, and the
//! ledger's figures with the criteria on them.

use super::*;

/// Step 6: one rental per lease from every renter's `status`, the ledger's figures and the
/// criteria on them.
pub(super) async fn finish(
    cluster: &Cluster,
    ledger: &Ledger,
    cast: &Cast<'_>,
    mut notes: Notes,
    start_ns: u64,
    death_ns: Option<u64>,
) -> Outcome {
    let names = cluster.provider_names();
    let audit = match ledger.audit().await {
        Ok(a) => Some(a),
        Err(e) => {
            notes.fail(format!("cannot read lnd-sim's ledger: {e:#}"));
            None
        }
    };
    let mut rentals = Vec::new();
    let mut undelivered = BTreeMap::new();
    let mut failovers = 0;
    for renter in &cast.renters {
        let leases = match cluster.cli.status(&renter.data_dir).await {
            Ok(s) => s.leases,
            Err(e) => {
                notes.fail(format!("{} status: {e:#}", renter.name));
                continue;
            }
        };
        let active = leases.iter().filter(|l| l.is_active()).count();
        notes.leases_max = notes.leases_max.max(u32::try_from(active).unwrap_or(0));
        let provider_of = |l: &LeaseOut| {
            names
                .get(&l.provider)
                .cloned()
                .unwrap_or_else(|| l.provider.clone())
        };
        let by_id: HashMap<&str, &LeaseOut> =
            leases.iter().map(|l| (l.lease_id.as_str(), l)).collect();
        let counted: Vec<figures::Counted> = leases
            .iter()
            .map(|l| figures::Counted {
                provider: provider_of(l),
                payments: l.payments,
                paid_sat: l.paid_sat,
            })
            .collect();
        let mut missing = 0;
        if let Some(a) = &audit {
            for (provider, (no_lease, ledger_sat, status_sat)) in
                figures::unaccounted(&a.payments, &renter.name, &counted)
            {
                missing += no_lease;
                // A payment that bought nothing explains the difference; anything else is a
                // disagreement between the renter and the ledger.
                if no_lease == 0 || counted.iter().any(|c| c.provider == provider) {
                    notes.fail(format!(
                        "{} payments to {provider}: status says {status_sat} sat, lnd-sim's \
                         ledger has {ledger_sat} sat",
                        renter.name
                    ));
                }
            }
        }
        undelivered.insert(renter.name.clone(), missing);
        for l in &leases {
            let from = (!l.failed_over_from.is_empty()).then(|| {
                by_id
                    .get(l.failed_over_from.as_str())
                    .map_or_else(|| l.failed_over_from.clone(), |old| provider_of(old))
            });
            failovers += u32::from(from.is_some());
            let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
            let (family, ipv4_len, ipv6_len) = ChurnLease::family_of(Some(&l.ipv4), Some(&l.ipv6));
            rentals.push(Rental {
                renter: renter.name.clone(),
                provider: Some(provider_of(l)),
                ipv4: opt(&l.ipv4),
                ipv6: opt(&l.ipv6),
                paid_sat: Some(l.paid_sat),
                payments: Some(l.payments),
                topups: Some(l.topups),
                refused_unverified: Some(l.refused_unverified),
                lease_ms: notes.lease_ms.get(&l.lease_id).copied(),
                paid_until: Some(l.paid_until),
                churn: Some(ChurnLease {
                    lease_id: l.lease_id.clone(),
                    state: l.state.clone(),
                    family,
                    ipv4_len,
                    ipv6_len,
                    failed_over_from: from,
                    roles: notes.roles.get(&l.lease_id).cloned().unwrap_or_default(),
                    traffic_ok: notes.traffic.get(&l.lease_id).copied(),
                }),
                ..Rental::default()
            });
        }
    }
    let node_names =
        |k: Kind| -> Vec<String> { cluster.of_kind(k).map(|n| n.name.clone()).collect() };
    let (paid_after_death_sat, refunds_sat, double_payments) = match &audit {
        Some(a) => (
            death_ns.map_or(0, |at| {
                figures::sat_after(&a.payments, None, Some(&cast.providers[P_DOOMED].name), at)
            }),
            figures::refunds_sat(
                &a.payments,
                &node_names(Kind::Provider),
                &node_names(Kind::Renter),
            ),
            Ok(ledger::double_payments(a)),
        ),
        None => (0, 0, Err("the ledger could not be read".to_owned())),
    };
    if let Some(a) = &audit {
        let faulty = &cast.providers[P_FAULTY].name;
        let paid = figures::succeeded_after(&a.payments, None, Some(faulty), start_ns).count();
        if paid != 1 {
            notes.fail(format!(
                "provider-2 (never delivers) was paid {paid} times, not once"
            ));
        }
    }
    let summary = ChurnSummary {
        leases_per_renter_max: notes.leases_max,
        failovers,
        paid_after_death_sat,
        refunds_sat,
        undelivered_paid: undelivered,
        endpoint_followed: notes.endpoint_followed,
        release_seen_by_provider_ms: notes.release_ms,
    };
    // provider-1 promises refunds (see `tune`): its termination must pay one back.
    notes.failed.extend(figures::judge(&summary, true));
    Outcome {
        rentals,
        criteria_failed: notes.failed,
        double_payments: Some(double_payments),
        churn: Some(summary),
        ..Outcome::default()
    }
}
