//! The churn scenario's figures, from lnd-sim's ledger and the renters' `status`, and the
//! criteria on them: pure functions, so every verdict is tested below.

use std::collections::BTreeMap;

use leasewire_simnet::lndsim::admin::{PaymentEntry, STATUS_SUCCEEDED};

use crate::report::ChurnSummary;

/// Most milliseconds a release may take to show on the provider's side.
pub const RELEASE_SEEN_MAX_MS: u64 = 1_000;

/// SUCCEEDED payments matching `payer` and `payee` (`None`: any node) created after
/// `after_ns` (Unix nanoseconds, the ledger's clock).
pub fn succeeded_after<'a>(
    payments: &'a [PaymentEntry],
    payer: Option<&'a str>,
    payee: Option<&'a str>,
    after_ns: u64,
) -> impl Iterator<Item = &'a PaymentEntry> + 'a {
    payments.iter().filter(move |p| {
        p.status == STATUS_SUCCEEDED
            && payer.is_none_or(|n| p.payer == n)
            && payee.is_none_or(|n| p.payee == n)
            && p.created_at_ns > after_ns
    })
}

/// Satoshis of the payments of [`succeeded_after`].
pub fn sat_after(
    payments: &[PaymentEntry],
    payer: Option<&str>,
    payee: Option<&str>,
    after_ns: u64,
) -> u64 {
    succeeded_after(payments, payer, payee, after_ns)
        .map(|p| p.amount_msat / 1000)
        .sum()
}

/// Satoshis paid back by providers to renters: every SUCCEEDED payment from a node named in
/// `providers` to one named in `renters`.
pub fn refunds_sat(payments: &[PaymentEntry], providers: &[String], renters: &[String]) -> u64 {
    payments
        .iter()
        .filter(|p| {
            p.status == STATUS_SUCCEEDED
                && providers.contains(&p.payer)
                && renters.contains(&p.payee)
        })
        .map(|p| p.amount_msat / 1000)
        .sum()
}

/// One lease as the renter's `status` counts it: its provider's node name, the payments the
/// renter made for it and what they came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    /// The provider's node name.
    pub provider: String,
    /// Payments made for the lease.
    pub payments: u32,
    /// Satoshis paid for the lease.
    pub paid_sat: u64,
}

/// Per provider, what `renter` paid it per the ledger beyond what its leases account for:
/// `(payments with no lease, ledger sat, status sat)`, only for providers where the counts or
/// sums differ.
pub fn unaccounted(
    payments: &[PaymentEntry],
    renter: &str,
    leases: &[Counted],
) -> BTreeMap<String, (u32, u64, u64)> {
    let mut ledger: BTreeMap<String, (u32, u64)> = BTreeMap::new();
    for p in succeeded_after(payments, Some(renter), None, 0) {
        let e = ledger.entry(p.payee.clone()).or_default();
        e.0 += 1;
        e.1 += p.amount_msat / 1000;
    }
    let mut status: BTreeMap<String, (u32, u64)> = BTreeMap::new();
    for l in leases {
        let e = status.entry(l.provider.clone()).or_default();
        e.0 += l.payments;
        e.1 += l.paid_sat;
    }
    let mut out = BTreeMap::new();
    for provider in ledger.keys().chain(status.keys()) {
        let (lc, ls) = ledger.get(provider).copied().unwrap_or_default();
        let (sc, ss) = status.get(provider).copied().unwrap_or_default();
        if (lc, ls) != (sc, ss) {
            out.insert(provider.clone(), (lc.saturating_sub(sc), ls, ss));
        }
    }
    out
}

/// The criteria on the top-level figures; `refunds_expected` when some provider promises
/// refunds of unused credit.
pub fn judge(s: &ChurnSummary, refunds_expected: bool) -> Vec<String> {
    let mut failed = Vec::new();
    if s.leases_per_renter_max < 3 {
        failed.push(format!(
            "no renter held 3 leases at once (most: {})",
            s.leases_per_renter_max
        ));
    }
    if s.failovers == 0 {
        failed.push("no lease failed over".to_owned());
    }
    if s.paid_after_death_sat != 0 {
        failed.push(format!(
            "{} sat paid to the killed provider after its death",
            s.paid_after_death_sat
        ));
    }
    for (renter, n) in &s.undelivered_paid {
        if *n > 1 {
            failed.push(format!(
                "{renter} paid {n} times for leases that never came"
            ));
        }
    }
    if !s.endpoint_followed {
        failed.push("the endpoint change was not followed without a payment".to_owned());
    }
    match s.release_seen_by_provider_ms {
        Some(ms) if ms <= RELEASE_SEEN_MAX_MS => {}
        Some(ms) => failed.push(format!(
            "the provider applied the release after {ms} ms, over {RELEASE_SEEN_MAX_MS} ms"
        )),
        None => failed.push("the provider never showed the release".to_owned()),
    }
    if refunds_expected && s.refunds_sat == 0 {
        failed.push("no refund was paid back through lnd-sim".to_owned());
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pay(payer: &str, payee: &str, sat: u64, at: u64, status: &str) -> PaymentEntry {
        PaymentEntry {
            payer: payer.into(),
            payee: payee.into(),
            amount_msat: sat * 1000,
            created_at_ns: at,
            status: status.into(),
            ..PaymentEntry::default()
        }
    }

    fn ledger() -> Vec<PaymentEntry> {
        vec![
            pay("renter-0", "provider-0", 100, 10, STATUS_SUCCEEDED),
            pay("renter-0", "provider-0", 50, 20, STATUS_SUCCEEDED),
            pay("renter-1", "provider-2", 70, 15, STATUS_SUCCEEDED),
            pay("renter-1", "provider-0", 80, 30, STATUS_SUCCEEDED),
            pay("renter-2", "provider-3", 90, 40, "FAILED"),
            pay("provider-1", "renter-3", 12, 50, STATUS_SUCCEEDED),
        ]
    }

    #[test]
    fn payments_after_a_moment_count_only_succeeded_ones() {
        let l = ledger();
        assert_eq!(sat_after(&l, None, Some("provider-0"), 0), 230);
        assert_eq!(sat_after(&l, None, Some("provider-0"), 20), 80);
        assert_eq!(sat_after(&l, Some("renter-0"), None, 15), 50);
        // A FAILED payment moved no money.
        assert_eq!(sat_after(&l, None, Some("provider-3"), 0), 0);
        let providers: Vec<String> = (0..4).map(|i| format!("provider-{i}")).collect();
        let renters: Vec<String> = (0..4).map(|i| format!("renter-{i}")).collect();
        assert_eq!(refunds_sat(&l, &providers, &renters), 12);
        assert_eq!(refunds_sat(&l, &renters, &providers), 300);
    }

    #[test]
    fn a_payment_without_a_lease_is_unaccounted() {
        let l = ledger();
        let counted = |provider: &str, payments, paid_sat| Counted {
            provider: provider.into(),
            payments,
            paid_sat,
        };
        // Two leases of renter-0 from provider-0 account for both its payments.
        let r0 = [counted("provider-0", 1, 100), counted("provider-0", 1, 50)];
        assert!(unaccounted(&l, "renter-0", &r0).is_empty());
        // renter-1 paid provider-2 and got nothing from it.
        let r1 = [counted("provider-0", 1, 80)];
        let u = unaccounted(&l, "renter-1", &r1);
        assert_eq!(u.len(), 1);
        assert_eq!(u["provider-2"], (1, 70, 0));
        // A status that claims more than the ledger holds is a disagreement too.
        let wrong = [counted("provider-0", 2, 160)];
        assert_eq!(
            unaccounted(&l, "renter-0", &wrong)["provider-0"],
            (0, 150, 160)
        );
    }

    fn passing() -> ChurnSummary {
        ChurnSummary {
            leases_per_renter_max: 3,
            failovers: 2,
            paid_after_death_sat: 0,
            refunds_sat: 5,
            undelivered_paid: [("renter-1".to_owned(), 1), ("renter-0".to_owned(), 0)].into(),
            endpoint_followed: true,
            release_seen_by_provider_ms: Some(300),
        }
    }

    #[test]
    fn every_criterion_is_named() {
        assert!(
            judge(&passing(), true).is_empty(),
            "{:?}",
            judge(&passing(), true)
        );
        let bad = ChurnSummary {
            leases_per_renter_max: 2,
            failovers: 0,
            paid_after_death_sat: 40,
            refunds_sat: 0,
            undelivered_paid: [("renter-1".to_owned(), 2)].into(),
            endpoint_followed: false,
            release_seen_by_provider_ms: Some(1_500),
        };
        let f = judge(&bad, true).join("\n");
        for want in [
            "no renter held 3 leases at once (most: 2)",
            "no lease failed over",
            "40 sat paid to the killed provider",
            "renter-1 paid 2 times",
            "endpoint change was not followed",
            "after 1500 ms",
            "no refund",
        ] {
            assert!(f.contains(want), "{want:?} missing from:\n{f}");
        }
        // Without refund terms, no refund is no failure; a release never seen is one.
        let mut s = passing();
        s.refunds_sat = 0;
        s.release_seen_by_provider_ms = None;
        assert_eq!(judge(&s, false), ["the provider never showed the release"]);
    }
}
