//! Human-readable rendering of control API replies: aligned tables and `key: value` lines.
//! Pure functions over a writer, so they are unit-tested without a daemon.

use std::io::{self, Write};

use leasewire::control::pb;

/// A left-aligned text table; columns are as wide as their widest cell, two spaces apart.
pub(super) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn new(header: Vec<&'static str>) -> Self {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    pub(super) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(
            cells.len(),
            self.header.len(),
            "row width must match header"
        );
        self.rows.push(cells);
    }

    pub(super) fn write(&self, w: &mut dyn Write) -> io::Result<()> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == cells.len() {
                    // No padding after the last column: no trailing whitespace.
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 2));
                }
            }
            writeln!(w, "{line}")?;
        }
        Ok(())
    }
}

/// `-` for an empty string, so table columns never look shifted.
fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

/// Shortens a libp2p peer id for tables: every id starts with the same `12D3KooW`, so the
/// tail is what tells peers apart.
pub(super) fn short_peer(id: &str) -> String {
    let n = id.chars().count();
    if n <= 14 {
        return or_dash(id);
    }
    let tail: String = id.chars().skip(n - 8).collect();
    let head: String = id.chars().take(4).collect();
    format!("{head}…{tail}")
}

/// `1234 sat`.
pub(super) fn sat(v: u64) -> String {
    format!("{v} sat")
}

/// A Unix time relative to `now`, e.g. `in 6d 23h` or `3h 5m ago`; `-` for 0 (unset).
pub(super) fn relative_time(at: u64, now: u64) -> String {
    if at == 0 {
        return "-".to_owned();
    }
    if at >= now {
        format!("in {}", span(at - now))
    } else {
        format!("{} ago", span(now - at))
    }
}

/// Two most significant units of a duration in seconds.
fn span(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        (secs % 86_400) / 3600,
        (secs % 3600) / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// `key: value` lines with the values aligned.
fn kv(w: &mut dyn Write, pairs: &[(&str, String)]) -> io::Result<()> {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (k, v) in pairs {
        writeln!(w, "{:<width$} {v}", format!("{k}:"))?;
    }
    Ok(())
}

/// One lease in detail (after `rent` or `add-credit`).
pub(super) fn lease_detail(w: &mut dyn Write, l: &pb::LeaseInfo, now: u64) -> io::Result<()> {
    let mut pairs = vec![
        ("lease", l.lease_id.clone()),
        ("state", provider_state(l)),
        ("provider", or_dash(&l.provider)),
    ];
    if !l.renter.is_empty() {
        pairs.push(("renter", l.renter.clone()));
    }
    pairs.extend([
        ("ipv4", or_dash(&l.ipv4)),
        ("ipv6", or_dash(&l.ipv6)),
        ("endpoint", or_dash(&l.endpoint)),
        ("paid", sat(l.paid_sat)),
        (
            "credit",
            format!(
                "{} bought, {} left",
                sat(l.credit_sat),
                sat(l.remaining_credit_sat)
            ),
        ),
        ("rate", format!("{}/day", sat(l.rate_sat_per_day))),
        ("paid until", relative_time(l.paid_until, now)),
    ]);
    if !l.conf_path.is_empty() {
        pairs.push(("wg-quick file", l.conf_path.clone()));
        pairs.push(("autopay", autopay_line(l, now)));
        pairs.push((
            "payments",
            format!("{} made, {} top-ups", l.payments, l.topups),
        ));
    }
    if l.forfeit_sat > 0 {
        pairs.push(("credit given up", sat(l.forfeit_sat)));
    }
    if let Some(line) = refund_line(l) {
        pairs.push(("refund", line));
    }
    if l.terminates_at > 0 {
        pairs.push((
            "terminated",
            format!(
                "the provider ends this lease {}",
                relative_time(l.terminates_at, now)
            ),
        ));
    }
    if !l.failover.is_empty() {
        pairs.push(("failover", l.failover.clone()));
    }
    if !l.failed_over_from.is_empty() {
        pairs.push(("failed over from", l.failed_over_from.clone()));
    }
    if l.dead_since > 0 {
        pairs.push((
            "tunnel",
            format!("dead since {}", relative_time(l.dead_since, now)),
        ));
    }
    if l.end_unsent {
        pairs.push((
            "provider",
            "not told of the release yet (retrying)".to_owned(),
        ));
    }
    kv(w, &pairs)
}

/// The refund of unused credit, when the terms promise one and there is something to say.
fn refund_line(l: &pb::LeaseInfo) -> Option<String> {
    if !l.refund_unused {
        return None;
    }
    let amount = sat(l.refund_sat);
    Some(match l.refund_state.as_str() {
        "" if l.forfeit_sat > 0 => format!("{amount} expected back (the terms promise it)"),
        "" => return None,
        "none" => "none owed".to_owned(),
        "due" => format!("{amount} due"),
        "paying" => format!("{amount} being paid"),
        "paid" => format!(
            "{amount} paid by the provider ({})",
            or_dash(&l.refund_hash)
        ),
        "received" => format!("{amount} received ({})", or_dash(&l.refund_hash)),
        other => format!("{amount} {other}"),
    })
}

/// AutoPay's state for a renter lease: on/off, then what it last did or refused.
fn autopay_line(l: &pb::LeaseInfo, now: u64) -> String {
    let mut s = if l.autopay { "on" } else { "off" }.to_owned();
    if l.autopay_note_at > 0 {
        let verb = if l.autopay_note_paid {
            "paid"
        } else {
            "refused"
        };
        s.push_str(&format!(
            "; {verb} {}: {}",
            relative_time(l.autopay_note_at, now),
            l.autopay_note
        ));
    }
    s
}

/// Renter leases as a table (used by `status`).
fn renter_leases(w: &mut dyn Write, leases: &[pb::LeaseInfo], now: u64) -> io::Result<()> {
    let mut t = Table::new(vec![
        "LEASE",
        "STATE",
        "PROVIDER",
        "IPV4",
        "IPV6",
        "CREDIT LEFT",
        "PAID UNTIL",
    ]);
    for l in leases {
        t.row(vec![
            l.lease_id.clone(),
            or_dash(&l.state),
            short_peer(&l.provider),
            or_dash(&l.ipv4),
            or_dash(&l.ipv6),
            sat(l.remaining_credit_sat),
            relative_time(l.paid_until, now),
        ]);
    }
    t.write(w)
}

/// `leasewire status`.
pub(super) fn status(w: &mut dyn Write, s: &pb::StatusReply, now: u64) -> io::Result<()> {
    let net = s.net.clone().unwrap_or_default();
    let join = |v: &[String]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(", ")
        }
    };
    let mut pairs = vec![
        ("peer id", s.peer_id.clone()),
        ("roles", join(&s.roles)),
        ("network", or_dash(&s.network)),
        (
            "market",
            if s.public_market {
                "public".to_owned()
            } else {
                "private (shared secret)".to_owned()
            },
        ),
        ("lightning node", or_dash(&s.ln_pubkey)),
        ("listening on", join(&s.listen_addrs)),
        (
            "peers",
            format!(
                "{} connected, {} market members",
                net.connected,
                net.members.len()
            ),
        ),
    ];
    if !net.dht.is_empty() {
        pairs.push(("dht", format!("{} ({})", net.dht, or_dash(&net.dht_role))));
    }
    if net.isolated {
        pairs.push((
            "ISOLATED",
            "no member peer connected; redialing the bootstrap peers".to_owned(),
        ));
    }
    if net.rejected_connections > 0 {
        pairs.push(("rejected connections", net.rejected_connections.to_string()));
    }
    if net.banned > 0 {
        pairs.push(("banned peers", net.banned.to_string()));
    }
    if !s.audit_root.is_empty() {
        pairs.push((
            "audit log",
            format!("{} entries, root {}", s.audit_entries, s.audit_root),
        ));
    }
    if !net.refused_by.is_empty() {
        pairs.push(("refused by", join(&net.refused_by)));
    }
    if !net.refused.is_empty() {
        pairs.push(("refused", join(&net.refused)));
    }
    if !s.provider_disk.is_empty() {
        pairs.push(("DISK", s.provider_disk.clone()));
    }
    if !s.tunnel_pending.is_empty() {
        pairs.push((
            "tunnel pending",
            format!(
                "{} (the tunnel backend refused their peers; retried every pass)",
                join(&s.tunnel_pending)
            ),
        ));
    }
    pairs.push(("offers known", s.offers_known.to_string()));
    pairs.push(("leases", s.leases.len().to_string()));
    kv(w, &pairs)?;
    if !s.leases.is_empty() {
        writeln!(w)?;
        renter_leases(w, &s.leases, now)?;
        for l in s.leases.iter().filter(|l| l.autopay_note_at > 0) {
            writeln!(w, "autopay {}: {}", l.lease_id, autopay_line(l, now))?;
        }
        for l in s.leases.iter().filter(|l| !l.failover.is_empty()) {
            writeln!(w, "failover {}: {}", l.lease_id, l.failover)?;
        }
        for l in s.leases.iter().filter(|l| !l.failed_over_from.is_empty()) {
            writeln!(
                w,
                "failover {}: replaces {}",
                l.lease_id, l.failed_over_from
            )?;
        }
        for l in s.leases.iter().filter(|l| l.terminates_at > 0) {
            writeln!(
                w,
                "notice {}: the provider ends this lease {}; AutoPay no longer tops it up",
                l.lease_id,
                relative_time(l.terminates_at, now)
            )?;
        }
        for l in s.leases.iter().filter(|l| !l.refund_state.is_empty()) {
            if let Some(line) = refund_line(l) {
                writeln!(w, "refund {}: {line}", l.lease_id)?;
            }
        }
    }
    for c in &s.log_conflicts {
        writeln!(w, "\nPEER LOG CONFLICT (see `audit evidence`): {c}")?;
    }
    for p in &s.open_payments {
        writeln!(
            w,
            "\nWAITING FOR A LEASE: {} payment {} of {} sat to {} ({}, {}s ago){}\n  {}",
            p.purpose,
            p.payment_hash,
            p.amount_sat,
            p.provider,
            if p.paid {
                "paid"
            } else {
                "outcome being tracked"
            },
            p.age_secs,
            if p.lease_id.is_empty() {
                String::new()
            } else {
                format!(", lease {}", p.lease_id)
            },
            p.advice
        )?;
    }
    Ok(())
}

/// `leasewire offers`.
pub(super) fn offers(w: &mut dyn Write, o: &pb::OffersReply) -> io::Result<()> {
    if o.offers.is_empty() {
        writeln!(
            w,
            "no offers discovered yet (the daemon looks for them every few seconds)"
        )?;
        return Ok(());
    }
    let mut t = Table::new(vec![
        "OFFER",
        "PROVIDER",
        "ENDPOINT",
        "FEE",
        "RATE/DAY",
        "MIN CREDIT",
        "FREE V4/V6",
        "RTT",
        "PRICE",
        "SIZES",
    ]);
    for x in &o.offers {
        t.row(vec![
            x.offer_id.clone(),
            short_peer(&x.provider),
            or_dash(&x.endpoint),
            sat(x.activation_fee_sat),
            sat(x.rate_sat_per_day),
            sat(x.min_initial_credit_sat),
            format!("{}/{}", x.ipv4_available, x.ipv6_available),
            if x.rtt_ms > 0.0 {
                format!("{:.0} ms", x.rtt_ms)
            } else {
                "-".to_owned()
            },
            sat(x.price_sat),
            or_dash(&x.sizes),
        ]);
    }
    t.write(w)
}

/// A provider lease's state, with "tunnel pending" while its peer is not in place.
fn provider_state(l: &pb::LeaseInfo) -> String {
    if l.tunnel_pending {
        format!("{} (tunnel pending)", or_dash(&l.state))
    } else {
        or_dash(&l.state)
    }
}

/// `leasewire leases` (provider view).
pub(super) fn provider_leases(w: &mut dyn Write, r: &pb::LeasesReply, now: u64) -> io::Result<()> {
    if r.leases.is_empty() {
        writeln!(w, "no leases issued")?;
        return Ok(());
    }
    let mut t = Table::new(vec![
        "LEASE",
        "STATE",
        "RENTER",
        "IPV4",
        "IPV6",
        "PAID",
        "CREDIT LEFT",
        "PAID UNTIL",
    ]);
    for l in &r.leases {
        t.row(vec![
            l.lease_id.clone(),
            provider_state(l),
            short_peer(&l.renter),
            or_dash(&l.ipv4),
            or_dash(&l.ipv6),
            sat(l.paid_sat),
            sat(l.remaining_credit_sat),
            relative_time(l.paid_until, now),
        ]);
    }
    t.write(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> String {
        let mut buf = Vec::new();
        f(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    fn lease(id: &str) -> pb::LeaseInfo {
        pb::LeaseInfo {
            lease_id: id.into(),
            provider: "12D3KooWProviderPeerIdXYZ12345678".into(),
            renter: String::new(),
            state: "active".into(),
            ipv4: "198.51.100.3/32".into(),
            ipv6: "2001:db8:100::/64".into(),
            paid_sat: 4000,
            credit_sat: 3000,
            remaining_credit_sat: 2900,
            paid_until: 1_000 + 2 * 86_400 + 3600,
            endpoint: "203.0.113.10:51820".into(),
            offer_id: "off1".into(),
            conf_path: "/d/wireguard/lw0.conf".into(),
            activated_at: 900,
            rate_sat_per_day: 100,
            autopay: true,
            payments: 2,
            topups: 1,
            autopay_topups: 1,
            refused_unverified: 1,
            autopay_note: "tunnel not verified: no reply to the probe".into(),
            autopay_note_at: 940,
            autopay_note_paid: false,
            forfeit_sat: 0,
            confirm: String::new(),
            end_unsent: false,
            terminates_at: 0,
            ..Default::default()
        }
    }

    #[test]
    fn table_aligns_columns_without_trailing_space() {
        let mut t = Table::new(vec!["A", "LONG HEADER", "C"]);
        t.row(vec!["xxxx".into(), "y".into(), "z".into()]);
        let out = text(|w| t.write(w));
        assert_eq!(out, "A     LONG HEADER  C\nxxxx  y            z\n");
    }

    #[test]
    fn relative_times_read_naturally() {
        assert_eq!(relative_time(0, 100), "-");
        assert_eq!(relative_time(100 + 2 * 86_400 + 7200, 100), "in 2d 2h");
        assert_eq!(relative_time(100, 100 + 3 * 3600 + 300), "3h 5m ago");
        assert_eq!(relative_time(130, 100), "in 30s");
    }

    #[test]
    fn peer_ids_are_shortened_to_their_distinct_tail() {
        assert_eq!(short_peer("12D3KooWAbcdefghijklmnop"), "12D3…ijklmnop");
        assert_eq!(short_peer("short"), "short");
        assert_eq!(short_peer(""), "-");
    }

    #[test]
    fn lease_detail_lists_addresses_credit_and_file() {
        let out = text(|w| lease_detail(w, &lease("L1"), 1_000));
        assert!(out.starts_with("lease:"), "{out}");
        assert!(out.contains("ipv4:"));
        assert!(out.contains("198.51.100.3/32"));
        assert!(out.contains("3000 sat bought, 2900 sat left"));
        assert!(out.contains("in 2d 1h"));
        assert!(out.contains("/d/wireguard/lw0.conf"));
        assert!(
            out.contains("autopay:") && out.contains("on; refused 1m 0s ago: tunnel not verified"),
            "{out}"
        );
        assert!(out.contains("2 made, 1 top-ups"), "{out}");
        // No renter line on the renter's own view.
        assert!(!out.contains("renter:"));
        assert!(!out.contains("refund"), "no refund promised: {out}");
    }

    #[test]
    fn lease_detail_shows_the_refund() {
        let mut l = lease("L1");
        l.refund_unused = true;
        l.forfeit_sat = 700;
        l.refund_sat = 700;
        let out = text(|w| lease_detail(w, &l, 1_000));
        assert!(out.contains("700 sat expected back"), "{out}");
        l.forfeit_sat = 0;
        l.state = "released".into();
        l.refund_state = "received".into();
        l.refund_hash = "ab".repeat(32);
        let out = text(|w| lease_detail(w, &l, 1_000));
        assert!(out.contains("refund:"), "{out}");
        assert!(out.contains("700 sat received (abab"), "{out}");
        // `status` has a line for it under the table.
        let s = pb::StatusReply {
            net: Some(pb::NetInfo::default()),
            leases: vec![l],
            ..Default::default()
        };
        let out = text(|w| status(w, &s, 1_000));
        assert!(out.contains("refund L1: 700 sat received (abab"), "{out}");
    }

    #[test]
    fn status_shows_counts_and_lease_table() {
        let s = pb::StatusReply {
            peer_id: "12D3KooWMe".into(),
            roles: vec!["renter".into()],
            listen_addrs: vec![],
            net: Some(pb::NetInfo {
                connected: 3,
                members: vec!["a".into(), "b".into()],
                refused_by: vec!["c".into()],
                refused: vec![],
                isolated: true,
                connected_members: 0,
                dht: "private".into(),
                dht_role: "server".into(),
                rejected_connections: 7,
                joined_at_unix_ms: 0,
                banned: 2,
            }),
            offers_known: 4,
            leases: vec![lease("L1"), lease("L2")],
            public_market: false,
            ln_pubkey: String::new(),
            network: "regtest".into(),
            open_payments: vec![pb::OpenPaymentInfo {
                payment_hash: "ab12".into(),
                provider: "12D3KooWP".into(),
                amount_sat: 4000,
                purpose: "activation".into(),
                paid: true,
                age_secs: 90,
                advice: "wait".into(),
                ..Default::default()
            }],
            provider_disk: String::new(),
            tunnel_pending: Vec::new(),
            audit_entries: 12,
            audit_root: "ab".repeat(32),
            log_conflicts: vec!["12D3KooWX: fork: two heads".into()],
        };
        let out = text(|w| status(w, &s, 1_000));
        assert!(
            !out.contains("DISK") && !out.contains("tunnel pending"),
            "{out}"
        );
        assert!(
            out.contains("WAITING FOR A LEASE: activation payment ab12 of 4000 sat to 12D3KooWP (paid, 90s ago)"),
            "{out}"
        );
        assert!(out.contains("3 connected, 2 market members"), "{out}");
        assert!(out.contains("ISOLATED"), "{out}");
        assert!(out.contains("private (server)"), "{out}");
        assert!(out.contains("rejected connections: 7"), "{out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("banned peers:") && l.ends_with(" 2")),
            "{out}"
        );
        assert!(out.contains("12 entries, root abab"), "{out}");
        assert!(
            out.contains("PEER LOG CONFLICT (see `audit evidence`): 12D3KooWX: fork"),
            "{out}"
        );
        assert!(out.contains("refused by:"));
        assert!(!out.contains("refused:  "), "empty list omitted: {out}");
        assert!(out.contains("private"));
        assert!(out.contains("LEASE"));
        assert_eq!(out.lines().filter(|l| l.starts_with("L")).count(), 3);
    }

    #[test]
    fn a_provider_shows_its_disk_refusal_and_pending_tunnels() {
        let s = pb::StatusReply {
            net: Some(pb::NetInfo::default()),
            provider_disk: "provider disk nearly full (3 MiB free, 64 MiB needed)".into(),
            tunnel_pending: vec!["L7".into()],
            ..Default::default()
        };
        let out = text(|w| status(w, &s, 1_000));
        let line = |key: &str| {
            out.lines()
                .find(|l| l.starts_with(key))
                .map(|l| l[key.len()..].trim_start().to_owned())
                .unwrap_or_default()
        };
        assert!(
            line("DISK:").starts_with("provider disk nearly full"),
            "{out}"
        );
        assert!(
            line("tunnel pending:").starts_with("L7 (the tunnel backend"),
            "{out}"
        );
        let mut l = lease("L7");
        l.tunnel_pending = true;
        let r = pb::LeasesReply { leases: vec![l] };
        let out = text(|w| provider_leases(w, &r, 1_000));
        assert!(out.contains("active (tunnel pending)"), "{out}");
    }

    #[test]
    fn empty_lists_say_so() {
        assert!(text(|w| offers(w, &pb::OffersReply::default())).contains("no offers"));
        assert!(
            text(|w| provider_leases(w, &pb::LeasesReply::default(), 0))
                .contains("no leases issued")
        );
    }
}
