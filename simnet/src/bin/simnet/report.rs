//! The run's result: the JSON object of `--json`, the human table, and the pass/fail verdict.
//!
//! [`Report`] serializes to exactly the documented object (`scenario`, `rentals`, `nodes`,
//! `audit_ok`, `double_payments`, and `intruder` with `--intruder`); a renter that got no lease
//! still appears in `rentals`, with nulls and an `error`. Each rental's `payments`, `paid_sat`,
//! `topups` and `refused_unverified` come from the renter's `status` and are cross-checked
//! against lnd-sim's ledger; `double_payments` is the ledger's count of hashes paid twice. Per-node audit details and daemon stop results are kept out of the
//! JSON but feed [`Report::failures`] and the table. With `--netns` each rental also carries
//! the data-plane verdicts of [`DataPlane`], flattened into its object.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::cli::AuditOut;

/// Everything a run found out.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The scenario that ran (`quickstart`, `crash-pay`, `autopay`).
    pub scenario: &'static str,
    /// One entry per renter, in renter order.
    pub rentals: Vec<Rental>,
    /// Every leasewire node of the cluster.
    pub nodes: Vec<NodeEntry>,
    /// Whether every node's audit log verified.
    pub audit_ok: bool,
    /// Payment hashes with more than one SUCCEEDED payment in lnd-sim's ledger (must be 0);
    /// null when the ledger could not be read.
    pub double_payments: Option<u64>,
    /// The intruder's view, with `--intruder` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intruder: Option<IntruderReport>,
    /// Why lnd-sim's ledger could not be read (a failure).
    #[serde(skip)]
    pub ledger_error: Option<String>,
    /// The scenario's own pass criteria that did not hold, as sentences.
    #[serde(skip)]
    pub criteria_failed: Vec<String>,
    /// Per-node audit verdicts behind `audit_ok`.
    #[serde(skip)]
    pub audits: Vec<NodeAudit>,
    /// Daemons that did not exit with status 0 on SIGTERM (a warning, not a failure).
    #[serde(skip)]
    pub unclean_stops: Vec<String>,
    /// Number of providers, for the summary.
    #[serde(skip)]
    pub providers: usize,
    /// Churn scenario only: its top-level figures.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub churn: Option<ChurnSummary>,
    /// Siege scenario only: `attack_secs` and the per-attack figures.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub siege: Option<crate::scenarios::siege::SiegeSummary>,
}

/// The churn scenario's top-level figures (see scenarios/churn.rs for the criteria on them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChurnSummary {
    /// Most leases one renter held active at once (at least 3 required).
    pub leases_per_renter_max: u32,
    /// Leases that replaced another one by a failover, over all renters.
    pub failovers: u32,
    /// Satoshis paid (SUCCEEDED, ledger) to the killed provider's node after its death.
    pub paid_after_death_sat: u64,
    /// Satoshis paid back by providers to renters (ledger), i.e. refunds.
    pub refunds_sat: u64,
    /// Per renter: its SUCCEEDED payments (ledger) for which no lease arrived.
    pub undelivered_paid: std::collections::BTreeMap<String, u32>,
    /// A renter followed its provider's endpoint change, with no payment in between.
    pub endpoint_followed: bool,
    /// Milliseconds from `release` to the provider's `leases` showing the lease released;
    /// null when it never did.
    pub release_seen_by_provider_ms: Option<u64>,
}

/// One renter's lease, or why it has none.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rental {
    /// `renter-N`.
    pub renter: String,
    /// `provider-N` (the peer id if the provider is not one of ours).
    pub provider: Option<String>,
    /// Leased IPv4 prefix.
    pub ipv4: Option<String>,
    /// Leased IPv6 prefix.
    pub ipv6: Option<String>,
    /// Satoshis paid for the lease in all (activation fee, credit, top-ups), per the renter's
    /// `status` at the end of the run.
    pub paid_sat: Option<u64>,
    /// Payments the renter made for the lease, per its `status`.
    pub payments: Option<u32>,
    /// Top-ups credited to the lease, per the renter's `status`.
    pub topups: Option<u32>,
    /// Times AutoPay refused to pay because the tunnel could not be verified.
    pub refused_unverified: Option<u32>,
    /// Autopay scenario: whether this rental's tunnel was broken on purpose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken: Option<bool>,
    /// Autopay scenario: payments to the provider's node created after the break (ledger).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payments_after_break: Option<u32>,
    /// Crash-pay scenario: what was killed and when, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub crash: Vec<String>,
    /// The renter's SUCCEEDED payments to the provider's node in lnd-sim's ledger.
    #[serde(skip)]
    pub ledger_payments: Option<u32>,
    /// How the renter's figures disagree with the ledger (a failure).
    #[serde(skip)]
    pub mismatch: Option<String>,
    /// Milliseconds from starting `rent` to holding the lease.
    pub lease_ms: Option<u64>,
    /// Milliseconds from starting `rent` until `offers` listed every provider; null when
    /// `rent` finished first.
    pub discovery_ms: Option<u64>,
    /// Why the renter has no lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix time the lease's credit runs out, as `rent` reported it.
    #[serde(skip)]
    pub paid_until: Option<u64>,
    /// Real-packet checks through the tunnel (`--netns` only).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<DataPlane>,
    /// Churn scenario only: what the lease is (one rental per lease there, not per renter).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub churn: Option<ChurnLease>,
}

/// One lease of the churn scenario, flattened into its rental.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChurnLease {
    /// The lease id.
    pub lease_id: String,
    /// Its state at the end of the run, per the renter's `status`.
    pub state: String,
    /// `ipv4`, `ipv6` or `dual`.
    pub family: &'static str,
    /// IPv4 prefix length, null without IPv4.
    pub ipv4_len: Option<u8>,
    /// IPv6 prefix length, null without IPv6.
    pub ipv6_len: Option<u8>,
    /// The provider of the lease this one replaced by a failover, or null.
    pub failed_over_from: Option<String>,
    /// What the scenario did with the lease (`released`, `terminated`, `endpoint moved`,
    /// `provider killed`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// With `--netns`: real traffic went through from (and to) every leased address checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_ok: Option<bool>,
}

impl ChurnLease {
    /// The family name and prefix lengths of a lease's prefixes (empty or unparsable: none).
    pub fn family_of(
        ipv4: Option<&str>,
        ipv6: Option<&str>,
    ) -> (&'static str, Option<u8>, Option<u8>) {
        let len = |p: Option<&str>| {
            p.filter(|p| !p.is_empty())
                .and_then(|p| p.parse::<ipnet::IpNet>().ok())
                .map(|n| n.prefix_len())
        };
        let (v4, v6) = (len(ipv4), len(ipv6));
        let family = match (v4, v6) {
            (Some(_), Some(_)) => "dual",
            (Some(_), None) => "ipv4",
            (None, Some(_)) => "ipv6",
            (None, None) => "none",
        };
        (family, v4, v6)
    }
}

/// What real packets through one renter's tunnel showed (`--netns`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DataPlane {
    /// A TCP connection from the leased IPv4 address reached the internet host.
    pub out_v4: bool,
    /// A TCP connection from the leased IPv6 address reached the internet host.
    pub out_v6: bool,
    /// The internet host reached a listener on the leased IPv4 address.
    pub in_v4: bool,
    /// The internet host reached a listener on the leased IPv6 address.
    pub in_v6: bool,
    /// Once the credit ran out, all four directions above failed.
    pub suspend_cut: bool,
    /// After `add-credit`, all four worked again, on the same addresses.
    pub resume_ok: bool,
    /// The internet host saw exactly the leased addresses as the sources of outbound
    /// connections (both families), before suspension and after resumption.
    pub source_ok: bool,
    /// The source address the internet host reported for the outbound IPv4 connection.
    pub source_seen: Option<String>,
    /// The source address the internet host reported for the outbound IPv6 connection.
    pub source_seen_v6: Option<String>,
    /// After its provider daemon was stopped (SIGTERM) and started again on the same data
    /// dir, all four directions above worked again, from the leased sources, with no action
    /// by the renter.
    pub provider_restart_ok: bool,
    /// Milliseconds from the start of `rent` to the first outbound TCP connection through the
    /// tunnel from the leased IPv4 address; null when none got through. A figure, judged only
    /// in that it must be present when `out_v4` held.
    pub first_packet_ms: Option<u64>,
    /// Why a check failed, in order; empty when all held.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl DataPlane {
    /// Names of the checks that did not hold.
    pub fn failed_checks(&self) -> Vec<&'static str> {
        [
            ("out_v4", self.out_v4),
            ("out_v6", self.out_v6),
            ("in_v4", self.in_v4),
            ("in_v6", self.in_v6),
            ("suspend_cut", self.suspend_cut),
            ("resume_ok", self.resume_ok),
            ("source_ok", self.source_ok),
            ("provider_restart_ok", self.provider_restart_ok),
            // Traffic flowed, so the first-packet loop should have seen it too.
            (
                "first_packet_ms",
                !self.out_v4 || self.first_packet_ms.is_some(),
            ),
        ]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| name)
        .collect()
    }
}

impl Rental {
    /// Whether the renter holds a lease.
    pub fn leased(&self) -> bool {
        self.error.is_none() && self.provider.is_some()
    }
}

/// A node of the cluster.
#[derive(Clone, Debug, Serialize)]
pub struct NodeEntry {
    /// `provider-0`, `renter-1`, `intruder`.
    pub name: String,
    /// `provider` or `renter`.
    pub role: String,
    /// Its data dir (valid after the run only with `--keep`).
    pub data_dir: PathBuf,
}

/// What the node on the wrong secret saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IntruderReport {
    /// Offers it learned (must be 0).
    pub offers_seen: usize,
    /// Peers that refused its membership proof (must be at least 1).
    pub refused_by: usize,
    /// Why the check could not be made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One node's `audit verify` result, or why there is none.
#[derive(Clone, Debug)]
pub struct NodeAudit {
    /// Node name.
    pub name: String,
    /// The verdict, or the error running the check.
    pub result: Result<AuditOut, String>,
}

impl NodeAudit {
    /// Whether the log verified.
    pub fn ok(&self) -> bool {
        matches!(&self.result, Ok(a) if a.ok)
    }
}

impl Report {
    /// Every reason the run failed; empty means it passed.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        for r in &self.rentals {
            if !r.leased() {
                f.push(format!(
                    "{} got no lease: {}",
                    r.renter,
                    r.error.as_deref().unwrap_or("no provider in the reply")
                ));
            }
            if let Some(m) = &r.mismatch {
                f.push(format!("{} payment figures: {m}", r.renter));
            }
            if let Some(d) = &r.dataplane {
                let failed = d.failed_checks();
                if !failed.is_empty() {
                    f.push(format!(
                        "{} data plane: {} failed ({})",
                        r.renter,
                        failed.join(", "),
                        d.notes.join("; ")
                    ));
                }
            }
        }
        for a in &self.audits {
            match &a.result {
                Ok(v) if v.ok => {}
                Ok(v) => f.push(match &v.first_bad {
                    Some(b) => format!(
                        "audit log of {} is broken at seq {}: {}",
                        a.name, b.seq, b.reason
                    ),
                    None => format!("audit log of {} does not verify", a.name),
                }),
                Err(e) => f.push(format!("cannot audit {}: {e}", a.name)),
            }
        }
        if !self.audit_ok && self.audits.iter().all(NodeAudit::ok) {
            f.push("audit was not run".to_owned());
        }
        match (&self.ledger_error, self.double_payments) {
            (Some(e), _) => f.push(format!("cannot read lnd-sim's ledger: {e}")),
            (None, Some(n)) if n > 0 => {
                f.push(format!("{n} payment hashes were paid more than once"));
            }
            (None, None) => f.push("lnd-sim's ledger was not read".to_owned()),
            (None, Some(_)) => {}
        }
        f.extend(self.criteria_failed.iter().cloned());
        if let Some(i) = &self.intruder {
            if let Some(e) = &i.error {
                f.push(format!("intruder check failed: {e}"));
            }
            if i.offers_seen != 0 {
                f.push(format!(
                    "intruder saw {} offers through another market secret",
                    i.offers_seen
                ));
            }
            if i.refused_by == 0 {
                f.push("no peer refused the intruder".to_owned());
            }
        }
        f
    }

    /// The single JSON object printed with `--json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a Report of plain strings and numbers")
    }

    /// The human-readable table and summary.
    pub fn table(&self) -> String {
        let dash = || "-".to_owned();
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(dash);
        let num = |v: Option<u64>| v.map_or_else(dash, |n| n.to_string());
        let header = [
            "RENTER", "PROVIDER", "IPV4", "IPV6", "PAID SAT", "LEASE MS", "DISC MS",
        ]
        .map(str::to_owned);
        let rows: Vec<[String; 7]> = self
            .rentals
            .iter()
            .map(|r| {
                [
                    r.renter.clone(),
                    opt(&r.provider),
                    opt(&r.ipv4),
                    opt(&r.ipv6),
                    num(r.paid_sat),
                    num(r.lease_ms),
                    num(r.discovery_ms),
                ]
            })
            .collect();
        let mut widths = header.clone().map(|h| h.len());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&rows) {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        out.push('\n');

        let leased = self.rentals.iter().filter(|r| r.leased()).count();
        let _ = writeln!(out, "scenario:  {}", self.scenario);
        if self.churn.is_some() {
            // One rental per lease there, not per renter.
            let renters: std::collections::BTreeSet<&str> =
                self.rentals.iter().map(|r| r.renter.as_str()).collect();
            let _ = writeln!(
                out,
                "leases:    {leased} held by {} renters (one row per lease)",
                renters.len()
            );
        } else {
            let _ = writeln!(out, "leases:    {leased}/{} renters", self.rentals.len());
        }
        let sum =
            |f: fn(&Rental) -> Option<u32>| -> u32 { self.rentals.iter().filter_map(f).sum() };
        let _ = writeln!(
            out,
            "payments:  {} made, {} top-ups, {} refused unverified; double payments: {}",
            sum(|r| r.payments),
            sum(|r| r.topups),
            sum(|r| r.refused_unverified),
            self.double_payments
                .map_or_else(|| "unknown".to_owned(), |n| n.to_string())
        );
        let mut disc: Vec<u64> = self.rentals.iter().filter_map(|r| r.discovery_ms).collect();
        disc.sort_unstable();
        if let (Some(median), Some(max)) = (disc.get(disc.len() / 2), disc.last()) {
            let _ = writeln!(
                out,
                "discovery: {}/{} renters listed all {} providers; median {median} ms, max {max} ms",
                disc.len(),
                self.rentals.len(),
                self.providers
            );
        }
        let planes: Vec<(&str, &DataPlane)> = self
            .rentals
            .iter()
            .filter_map(|r| r.dataplane.as_ref().map(|d| (r.renter.as_str(), d)))
            .collect();
        if !planes.is_empty() {
            let good = planes
                .iter()
                .filter(|(_, d)| d.failed_checks().is_empty())
                .count();
            let _ = writeln!(
                out,
                "dataplane: {good}/{} leases passed out/in v4+v6, suspension cut, resume and provider restart",
                planes.len()
            );
            let mut first: Vec<u64> = planes
                .iter()
                .filter_map(|(_, d)| d.first_packet_ms)
                .collect();
            first.sort_unstable();
            if let (Some(median), Some(max)) = (first.get(first.len() / 2), first.last()) {
                let _ = writeln!(
                    out,
                    "first pkt: rent to first packet through the tunnel: median {median} ms, max {max} ms"
                );
            }
        }
        let bad_audits = self.audits.iter().filter(|a| !a.ok()).count();
        let entries: u64 = self
            .audits
            .iter()
            .filter_map(|a| a.result.as_ref().ok().map(|v| v.entries))
            .sum();
        let _ = writeln!(
            out,
            "audit:     {} ({} nodes, {entries} entries{})",
            if self.audit_ok { "ok" } else { "FAILED" },
            self.audits.len(),
            if bad_audits > 0 {
                format!(", {bad_audits} failed")
            } else {
                String::new()
            }
        );
        if let Some(i) = &self.intruder {
            let _ = writeln!(
                out,
                "intruder:  saw {} offers, refused by {} peers",
                i.offers_seen, i.refused_by
            );
        }
        if let Some(c) = &self.churn {
            let _ = writeln!(
                out,
                "churn:     max {} leases per renter, {} failovers, {} sat paid after death, \
                 {} sat refunded, endpoint followed: {}, release seen in {} ms, undelivered {:?}",
                c.leases_per_renter_max,
                c.failovers,
                c.paid_after_death_sat,
                c.refunds_sat,
                c.endpoint_followed,
                c.release_seen_by_provider_ms
                    .map_or_else(|| "-".to_owned(), |ms| ms.to_string()),
                c.undelivered_paid
            );
        }
        if let Some(s) = &self.siege {
            out.push_str(&s.table());
        }
        if !self.unclean_stops.is_empty() {
            let _ = writeln!(
                out,
                "warning:   did not exit cleanly on SIGTERM: {}",
                self.unclean_stops.join(", ")
            );
        }
        let failures = self.failures();
        for f in &failures {
            let _ = writeln!(out, "FAIL:      {f}");
        }
        let _ = writeln!(
            out,
            "result:    {}",
            if failures.is_empty() { "PASS" } else { "FAIL" }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::BadEntry;

    fn rental(i: usize, provider: &str) -> Rental {
        Rental {
            renter: format!("renter-{i}"),
            provider: Some(provider.to_owned()),
            ipv4: Some(format!("198.51.100.{}/32", i + 1)),
            ipv6: Some(format!("2001:db8:100:{i}::/64")),
            paid_sat: Some(4_000),
            payments: Some(1),
            topups: Some(0),
            refused_unverified: Some(0),
            ledger_payments: Some(1),
            lease_ms: Some(1_500 + i as u64),
            discovery_ms: Some(700 + i as u64),
            error: None,
            paid_until: None,
            dataplane: None,
            ..Rental::default()
        }
    }

    fn audit(name: &str, ok: bool) -> NodeAudit {
        NodeAudit {
            name: name.to_owned(),
            result: Ok(AuditOut {
                ok,
                entries: 5,
                first_bad: (!ok).then(|| BadEntry {
                    seq: 2,
                    reason: "hash mismatch".to_owned(),
                }),
            }),
        }
    }

    fn passing() -> Report {
        Report {
            scenario: "quickstart",
            double_payments: Some(0),
            ledger_error: None,
            criteria_failed: Vec::new(),
            rentals: vec![rental(0, "provider-0"), rental(1, "provider-1")],
            nodes: vec![NodeEntry {
                name: "provider-0".into(),
                role: "provider".into(),
                data_dir: "/tmp/x/provider-0".into(),
            }],
            audit_ok: true,
            intruder: Some(IntruderReport {
                offers_seen: 0,
                refused_by: 2,
                error: None,
            }),
            audits: vec![audit("provider-0", true), audit("renter-0", true)],
            unclean_stops: Vec::new(),
            providers: 2,
            churn: None,
            siege: None,
        }
    }

    #[test]
    fn json_has_exactly_the_documented_shape() {
        let v: serde_json::Value = serde_json::from_str(&passing().to_json()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "audit_ok",
                "double_payments",
                "intruder",
                "nodes",
                "rentals",
                "scenario"
            ]
        );
        assert_eq!(v["scenario"], "quickstart");
        assert_eq!(v["double_payments"], 0);
        let r = &v["rentals"][1];
        let mut rk: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        rk.sort_unstable();
        assert_eq!(
            rk,
            [
                "discovery_ms",
                "ipv4",
                "ipv6",
                "lease_ms",
                "paid_sat",
                "payments",
                "provider",
                "refused_unverified",
                "renter",
                "topups"
            ]
        );
        assert_eq!(r["provider"], "provider-1");
        assert_eq!(r["paid_sat"], 4000);
        assert_eq!(v["intruder"]["refused_by"], 2);
        assert_eq!(v["nodes"][0]["data_dir"], "/tmp/x/provider-0");
    }

    #[test]
    fn intruder_key_absent_without_flag() {
        let mut r = passing();
        r.intruder = None;
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert!(v.get("intruder").is_none());
        assert!(r.failures().is_empty());
    }

    #[test]
    fn passing_run_has_no_failures_and_says_pass() {
        let r = passing();
        assert!(r.failures().is_empty(), "{:?}", r.failures());
        let t = r.table();
        assert!(t.contains("198.51.100.2/32"), "{t}");
        assert!(t.contains("leases:    2/2"), "{t}");
        assert!(t.contains("median 701 ms, max 701 ms"), "{t}");
        assert!(t.contains("result:    PASS"), "{t}");
    }

    #[test]
    fn dataplane_is_flattened_and_judged() {
        let mut r = passing();
        let all = DataPlane {
            out_v4: true,
            out_v6: true,
            in_v4: true,
            in_v6: true,
            suspend_cut: true,
            resume_ok: true,
            source_ok: true,
            source_seen: Some("198.51.100.16".into()),
            source_seen_v6: Some("2001:db8:101::1".into()),
            provider_restart_ok: true,
            first_packet_ms: Some(812),
            notes: Vec::new(),
        };
        r.rentals[0].dataplane = Some(all.clone());
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let r0 = &v["rentals"][0];
        for k in [
            "out_v4",
            "out_v6",
            "in_v4",
            "in_v6",
            "suspend_cut",
            "resume_ok",
            "source_ok",
            "provider_restart_ok",
        ] {
            assert_eq!(r0[k], true, "{k}: {r0}");
        }
        assert_eq!(r0["first_packet_ms"], 812, "{r0}");
        assert!(
            r.table()
                .contains("first pkt: rent to first packet through the tunnel: median 812 ms"),
            "{}",
            r.table()
        );
        assert_eq!(r0["source_seen"], "198.51.100.16", "{r0}");
        assert_eq!(r0["source_seen_v6"], "2001:db8:101::1", "{r0}");
        assert!(r0.get("notes").is_none(), "{r0}");
        // Without --netns no data-plane keys appear.
        assert!(v["rentals"][1].get("out_v4").is_none());
        assert!(r.failures().is_empty(), "{:?}", r.failures());

        r.rentals[0].dataplane = Some(DataPlane {
            in_v6: false,
            resume_ok: false,
            notes: vec!["in_v6: timed out".into()],
            ..all.clone()
        });
        assert!(
            r.table().contains("dataplane: 0/1 leases passed"),
            "{}",
            r.table()
        );
        let f = r.failures().join("\n");
        assert!(
            f.contains("renter-0 data plane: in_v6, resume_ok failed (in_v6: timed out)"),
            "{f}"
        );

        // A provider restart that did not bring traffic back fails the lease.
        r.rentals[0].dataplane = Some(DataPlane {
            provider_restart_ok: false,
            ..all.clone()
        });
        assert_eq!(
            r.rentals[0].dataplane.as_ref().unwrap().failed_checks(),
            ["provider_restart_ok"]
        );
        assert_eq!(r.failures().len(), 1, "{:?}", r.failures());

        // first_packet_ms is a figure: required only when outbound IPv4 worked at all.
        let no_first = DataPlane {
            first_packet_ms: None,
            ..all.clone()
        };
        assert_eq!(no_first.failed_checks(), ["first_packet_ms"]);
        let v: serde_json::Value = serde_json::to_value(&no_first).unwrap();
        assert!(v["first_packet_ms"].is_null(), "{v}");
        let dead = DataPlane {
            out_v4: false,
            first_packet_ms: None,
            ..all
        };
        assert_eq!(dead.failed_checks(), ["out_v4"]);
    }

    #[test]
    fn every_kind_of_failure_is_named() {
        let mut r = passing();
        r.rentals[1] = Rental {
            renter: "renter-1".into(),
            error: Some("no offers within 60 s".into()),
            ..Rental::default()
        };
        r.audits[1] = audit("renter-0", false);
        r.audit_ok = false;
        r.intruder = Some(IntruderReport {
            offers_seen: 3,
            refused_by: 0,
            error: None,
        });
        let f = r.failures().join("\n");
        assert!(
            f.contains("renter-1 got no lease: no offers within 60 s"),
            "{f}"
        );
        assert!(
            f.contains("renter-0 is broken at seq 2: hash mismatch"),
            "{f}"
        );
        assert!(f.contains("saw 3 offers"), "{f}");
        assert!(f.contains("no peer refused"), "{f}");
        assert!(!r.failures().is_empty());
        let t = r.table();
        assert!(t.contains("result:    FAIL"), "{t}");
        assert!(t.contains("audit:     FAILED"), "{t}");
        // The failed renter's row still lines up, with dashes.
        assert!(
            t.lines()
                .any(|l| l.starts_with("renter-1") && l.contains(" -")),
            "{t}"
        );
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["rentals"][1]["error"], "no offers within 60 s");
        assert!(v["rentals"][1]["provider"].is_null());
    }

    #[test]
    fn ledger_disagreements_doubles_and_criteria_fail() {
        let mut r = passing();
        r.rentals[0].mismatch = Some("status says 2 payments, lnd-sim's ledger has 1".into());
        r.double_payments = Some(2);
        r.criteria_failed
            .push("renter-1 has 2 active leases".into());
        let f = r.failures().join("\n");
        assert!(f.contains("renter-0 payment figures: status says 2"), "{f}");
        assert!(
            f.contains("2 payment hashes were paid more than once"),
            "{f}"
        );
        assert!(f.contains("renter-1 has 2 active leases"), "{f}");
        let mut r = passing();
        r.double_payments = None;
        r.ledger_error = Some("connection refused".into());
        assert_eq!(
            r.failures(),
            ["cannot read lnd-sim's ledger: connection refused"]
        );
        // Scenario-only keys appear only when set.
        let mut r = passing();
        r.rentals[0].broken = Some(true);
        r.rentals[0].payments_after_break = Some(0);
        r.rentals[1].crash = vec!["renter-1 SIGKILLed at +3.2 s".into()];
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["rentals"][0]["broken"], true);
        assert_eq!(v["rentals"][0]["payments_after_break"], 0);
        assert!(v["rentals"][0].get("crash").is_none());
        assert_eq!(v["rentals"][1]["crash"][0], "renter-1 SIGKILLed at +3.2 s");
        assert!(v["rentals"][1].get("broken").is_none());
        assert!(
            r.table().contains("payments:  2 made, 0 top-ups"),
            "{}",
            r.table()
        );
    }

    #[test]
    fn audit_errors_and_missing_audits_fail() {
        let mut r = passing();
        r.audits.push(NodeAudit {
            name: "intruder".into(),
            result: Err("cannot start".into()),
        });
        assert!(
            r.failures()
                .iter()
                .any(|f| f.contains("cannot audit intruder"))
        );
        let mut r = passing();
        r.audit_ok = false;
        r.audits.clear();
        assert!(!r.failures().is_empty());
    }

    #[test]
    fn table_columns_align() {
        let t = passing().table();
        let lines: Vec<&str> = t.lines().take(3).collect();
        let col = lines[0].find("IPV4").unwrap();
        assert_eq!(lines[1].find("198.51.100.1/32"), Some(col));
        assert_eq!(lines[2].find("198.51.100.2/32"), Some(col));
    }

    #[test]
    fn churn_fields_appear_only_for_churn() {
        let mut r = passing();
        let (family, v4, v6) = ChurnLease::family_of(Some("198.51.100.4/30"), Some(""));
        assert_eq!((family, v4, v6), ("ipv4", Some(30), None));
        assert_eq!(ChurnLease::family_of(None, Some("2001:db8::/64")).0, "ipv6");
        assert_eq!(
            ChurnLease::family_of(Some("198.51.100.1/32"), Some("2001:db8::/64")).0,
            "dual"
        );
        r.rentals[0].churn = Some(ChurnLease {
            lease_id: "l1".into(),
            state: "active".into(),
            family,
            ipv4_len: v4,
            ipv6_len: v6,
            failed_over_from: None,
            roles: Vec::new(),
            traffic_ok: None,
        });
        r.churn = Some(ChurnSummary {
            leases_per_renter_max: 3,
            failovers: 1,
            undelivered_paid: [("renter-1".to_owned(), 1)].into(),
            endpoint_followed: true,
            release_seen_by_provider_ms: Some(120),
            ..ChurnSummary::default()
        });
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["leases_per_renter_max"], 3);
        assert_eq!(v["undelivered_paid"]["renter-1"], 1);
        assert_eq!(v["release_seen_by_provider_ms"], 120);
        assert_eq!(v["rentals"][0]["family"], "ipv4");
        assert_eq!(v["rentals"][0]["ipv4_len"], 30);
        assert!(v["rentals"][0]["ipv6_len"].is_null());
        assert!(v["rentals"][0]["failed_over_from"].is_null());
        assert!(v["rentals"][1].get("family").is_none());
        assert!(
            r.table().contains("churn:     max 3 leases per renter"),
            "{}",
            r.table()
        );
        let plain: serde_json::Value = serde_json::from_str(&passing().to_json()).unwrap();
        assert!(plain.get("failovers").is_none());
    }
}
