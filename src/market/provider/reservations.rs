//! Caps on unpaid invoices, counted in memory and checked atomically.
//!
//! Every unpaid invoice costs the provider an LND invoice and audit entries, and an unpaid
//! activation invoice also holds prefixes until it expires. Caps bound that: unpaid activation
//! invoices (reservations) per peer and for all peers together, and unpaid top-up invoices per
//! lease (a top-up needs a paid lease; AutoPay asks for one at a time). The counts live in memory, rebuilt from the pending table at
//! start, so a rent request neither scans the table nor races another request between the
//! check and the reservation: a [`Slot`] is taken (counted) under one mutex before any prefix
//! is allocated, and given back if the invoice is never stored. Once stored, the slot is
//! given back when the invoice stops being unpaid (settled or expired); slots are kept by
//! request id, so giving one back twice changes nothing, and every expiry pass gives back the
//! stored slots whose invoice the table no longer holds unpaid (a settlement or expiry whose
//! flush failed after the swap took effect).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Unpaid top-up invoices one lease may have at once. AutoPay asks for one at a time, but a
/// payment that fails (no route, a limit) leaves its invoice open until it expires and the
/// next attempt asks for a new one: room for several retries within an invoice's expiry.
pub const MAX_UNPAID_TOPUPS_PER_LEASE: usize = 8;

/// Why a slot was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapReached {
    /// The peer has this many unpaid invoices already.
    #[error("{0} unpaid invoices already; pay them or let them expire")]
    Peer(usize),
    /// All peers together hold this many unpaid reservations.
    #[error("the provider holds {0} unpaid reservations, its limit; try again in a few minutes")]
    Total(usize),
    /// The peer's IP address has this many unpaid reservations already (of any identity).
    #[error("{0} unpaid reservations from your address already; pay them or let them expire")]
    Ip(usize),
    /// The lease has this many unpaid top-up invoices already.
    #[error("{0} unpaid top-up invoices for this lease already; pay one or let it expire")]
    Lease(usize),
    /// The request id has a slot already (the same request sent twice at once).
    #[error("request id already used")]
    Duplicate,
}

/// The counts and their caps.
#[derive(Debug)]
pub(super) struct Reservations {
    max_per_peer: usize,
    max_per_ip: usize,
    max_total: usize,
    counts: Mutex<Counts>,
}

/// One counted invoice.
#[derive(Debug, Clone)]
struct Entry {
    peer: String,
    /// The address an activation's request came from, when known.
    ip: Option<String>,
    /// The lease a top-up invoice credits; `None` for an activation (which holds prefixes).
    topup_of: Option<String>,
    /// Stored: only settlement, expiry or a resync give it back.
    kept: bool,
}

#[derive(Debug, Default)]
struct Counts {
    /// Every counted invoice, by request id: giving one back twice changes nothing.
    entries: HashMap<String, Entry>,
    /// Unpaid activation invoices per peer.
    by_peer: HashMap<String, usize>,
    /// Unpaid activation invoices per IP address (when known).
    by_ip: HashMap<String, usize>,
    /// Unpaid top-up invoices per lease.
    by_lease: HashMap<String, usize>,
    /// Unpaid activation invoices of all peers.
    reservations: usize,
}

impl Counts {
    fn insert(&mut self, request_id: &str, e: Entry) {
        match &e.topup_of {
            None => {
                *self.by_peer.entry(e.peer.clone()).or_default() += 1;
                if let Some(ip) = &e.ip {
                    *self.by_ip.entry(ip.clone()).or_default() += 1;
                }
                self.reservations += 1;
            }
            Some(lease) => *self.by_lease.entry(lease.clone()).or_default() += 1,
        }
        self.entries.insert(request_id.to_owned(), e);
    }

    fn remove(&mut self, request_id: &str) {
        let Some(e) = self.entries.remove(request_id) else {
            return;
        };
        let (map, key) = match &e.topup_of {
            None => {
                self.reservations = self.reservations.saturating_sub(1);
                if let Some(ip) = &e.ip
                    && let Some(n) = self.by_ip.get_mut(ip)
                {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.by_ip.remove(ip);
                    }
                }
                (&mut self.by_peer, &e.peer)
            }
            Some(lease) => (&mut self.by_lease, lease),
        };
        if let Some(n) = map.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(key);
            }
        }
    }
}

/// One counted unpaid invoice: given back on drop unless [`Slot::keep`] was called.
#[must_use]
pub(super) struct Slot<'a> {
    owner: &'a Reservations,
    request_id: String,
    kept: bool,
}

impl Slot<'_> {
    /// The invoice is stored: the slot stays counted until [`Reservations::release`].
    pub(super) fn keep(mut self) {
        self.kept = true;
        if let Some(e) = self.owner.counts().entries.get_mut(&self.request_id) {
            e.kept = true;
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.owner.release(&self.request_id);
        }
    }
}

impl Reservations {
    /// Empty counts under these caps.
    pub(super) fn new(max_per_peer: usize, max_per_ip: usize, max_total: usize) -> Self {
        Reservations {
            max_per_peer,
            max_per_ip,
            max_total,
            counts: Mutex::new(Counts::default()),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Every change below completes under the lock before it is let go.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a stored unpaid invoice (at start, from the pending table), caps ignored.
    pub(super) fn count_existing(
        &self,
        request_id: &str,
        peer: &str,
        ip: Option<&str>,
        topup_of: Option<&str>,
    ) {
        let mut c = self.counts();
        if !c.entries.contains_key(request_id) {
            let e = Entry {
                peer: peer.to_owned(),
                ip: ip.map(str::to_owned),
                topup_of: topup_of.map(str::to_owned),
                kept: true,
            };
            c.insert(request_id, e);
        }
    }

    /// Takes a slot for a new unpaid invoice `request_id` of `peer` (from address `ip` when
    /// known): an activation (which holds prefixes) when `topup_of` is `None`, else a top-up
    /// of that lease. Says which cap is reached otherwise. Check and count are one step.
    pub(super) fn take(
        &self,
        request_id: &str,
        peer: &str,
        ip: Option<&str>,
        topup_of: Option<&str>,
    ) -> Result<Slot<'_>, CapReached> {
        let mut c = self.counts();
        if c.entries.contains_key(request_id) {
            return Err(CapReached::Duplicate);
        }
        match topup_of {
            None => {
                let mine = c.by_peer.get(peer).copied().unwrap_or(0);
                if mine >= self.max_per_peer {
                    return Err(CapReached::Peer(mine));
                }
                if let Some(ip) = ip {
                    let theirs = c.by_ip.get(ip).copied().unwrap_or(0);
                    if theirs >= self.max_per_ip {
                        return Err(CapReached::Ip(theirs));
                    }
                }
                if c.reservations >= self.max_total {
                    return Err(CapReached::Total(c.reservations));
                }
            }
            Some(lease) => {
                let open = c.by_lease.get(lease).copied().unwrap_or(0);
                if open >= MAX_UNPAID_TOPUPS_PER_LEASE {
                    return Err(CapReached::Lease(open));
                }
            }
        }
        let e = Entry {
            peer: peer.to_owned(),
            ip: ip.filter(|_| topup_of.is_none()).map(str::to_owned),
            topup_of: topup_of.map(str::to_owned),
            kept: false,
        };
        c.insert(request_id, e);
        Ok(Slot {
            owner: self,
            request_id: request_id.to_owned(),
            kept: false,
        })
    }

    /// The invoice `request_id` was settled or expired (or never stored). Idempotent.
    pub(super) fn release(&self, request_id: &str) {
        self.counts().remove(request_id);
    }

    /// The stored (kept) slots now. Pass them to [`Reservations::forget_settled`] with what
    /// the pending table says after this call.
    pub(super) fn kept(&self) -> Vec<String> {
        self.counts()
            .entries
            .iter()
            .filter(|(_, e)| e.kept)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Gives back every slot of `kept` (taken before the pending table was read) whose
    /// invoice the table no longer holds unpaid: a settlement or expiry whose write failed
    /// after it took effect never released its slot. Returns how many were given back.
    pub(super) fn forget_settled(
        &self,
        kept: &[String],
        unpaid: &std::collections::HashSet<String>,
    ) -> usize {
        let mut c = self.counts();
        let mut n = 0;
        for id in kept.iter().filter(|id| !unpaid.contains(*id)) {
            if c.entries.contains_key(id) {
                c.remove(id);
                n += 1;
            }
        }
        n
    }

    /// `(unpaid activation invoices of peer, unpaid reservations of all peers)`.
    #[cfg(test)]
    pub(super) fn snapshot(&self, peer: &str) -> (usize, usize) {
        let c = self.counts();
        (c.by_peer.get(peer).copied().unwrap_or(0), c.reservations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_peer_in_total_and_per_lease_and_slots_come_back() {
        let r = Reservations::new(2, 8, 3);
        let a1 = r.take("a1", "a", None, None).unwrap();
        let a2 = r.take("a2", "a", None, None).unwrap();
        assert_eq!(
            r.take("a3", "a", None, None).err(),
            Some(CapReached::Peer(2))
        );
        assert_eq!(
            r.take("a1", "b", None, None).err(),
            Some(CapReached::Duplicate)
        );
        a1.keep();
        let b1 = r.take("b1", "b", None, None).unwrap();
        // Three reservations held: a fourth peer is refused.
        assert_eq!(
            r.take("c1", "c", None, None).err(),
            Some(CapReached::Total(3))
        );
        // Top-ups hold no prefixes: capped per lease, not by the reservation caps.
        let t1 = r.take("t1", "a", None, Some("L")).unwrap();
        for k in 1..MAX_UNPAID_TOPUPS_PER_LEASE {
            r.take(&format!("t1-{k}"), "a", None, Some("L"))
                .unwrap()
                .keep();
        }
        assert_eq!(
            r.take("tx", "a", None, Some("L")).err(),
            Some(CapReached::Lease(MAX_UNPAID_TOPUPS_PER_LEASE))
        );
        r.take("t4", "a", None, Some("M")).unwrap().keep();
        assert_eq!(r.snapshot("a"), (2, 3));
        // A slot dropped without keep (the invoice was never stored) is given back.
        drop(a2);
        drop(t1);
        assert_eq!(r.snapshot("a"), (1, 2));
        r.take("tx", "a", None, Some("L")).unwrap().keep();
        r.take("c1", "c", None, None).unwrap().keep();
        b1.keep();
        // A kept slot comes back only when released (settled or expired), once.
        r.release("a1");
        r.release("a1");
        assert_eq!(r.snapshot("a"), (0, 2));
        r.take("a4", "a", None, None).unwrap().keep();
        assert_eq!(r.snapshot("a"), (1, 3));
    }

    #[test]
    fn fresh_identities_behind_one_address_share_its_cap() {
        let r = Reservations::new(4, 2, 32);
        r.take("1", "p1", Some("192.0.2.9"), None).unwrap().keep();
        r.take("2", "p2", Some("192.0.2.9"), None).unwrap().keep();
        assert_eq!(
            r.take("3", "p3", Some("192.0.2.9"), None).err(),
            Some(CapReached::Ip(2))
        );
        // Another address, or an unknown one, is not held back by it.
        r.take("4", "p3", Some("192.0.2.10"), None).unwrap().keep();
        r.take("5", "p4", None, None).unwrap().keep();
        r.release("1");
        r.take("3", "p3", Some("192.0.2.9"), None).unwrap().keep();
    }

    #[test]
    fn a_resync_gives_back_what_is_no_longer_unpaid_and_nothing_in_flight() {
        let r = Reservations::new(4, 8, 4);
        r.take("x", "p", None, None).unwrap().keep();
        r.take("y", "p", None, None).unwrap().keep();
        let kept = r.kept();
        // Taken after the snapshot and not stored yet: never touched by the resync.
        let in_flight = r.take("z", "p", None, None).unwrap();
        let unpaid: std::collections::HashSet<String> = ["y".to_owned()].into();
        assert_eq!(r.forget_settled(&kept, &unpaid), 1, "x was settled");
        assert_eq!(r.snapshot("p"), (2, 2));
        drop(in_flight);
        assert_eq!(r.snapshot("p"), (1, 1));
    }

    #[test]
    fn concurrent_takes_never_pass_the_total() {
        let r = std::sync::Arc::new(Reservations::new(1, 8, 5));
        let kept = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        std::thread::scope(|s| {
            for t in 0..16 {
                let (r, kept) = (r.clone(), kept.clone());
                s.spawn(move || {
                    if let Ok(slot) = r.take(&format!("r{t}"), &format!("peer{t}"), None, None) {
                        slot.keep();
                        kept.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(kept.load(std::sync::atomic::Ordering::SeqCst), 5);
        assert_eq!(r.snapshot("x").1, 5);
    }
}
