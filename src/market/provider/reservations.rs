//! Caps on unpaid invoices, counted in memory and checked atomically.
//!
//! Every unpaid invoice costs the provider an LND invoice and audit entries, and an unpaid
//! activation invoice also holds prefixes until it expires. Two caps bound that: one per peer
//! on unpaid invoices of any purpose, and one for all peers together on unpaid activation
//! invoices (reservations). The counts live in memory, rebuilt from the pending table at
//! start, so a rent request neither scans the table nor races another request between the
//! check and the reservation: a [`Slot`] is taken (counted) under one mutex before any prefix
//! is allocated, and given back if the invoice is never stored. Once stored, the slot is
//! given back when the invoice stops being unpaid (settled or expired).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Why a slot was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapReached {
    /// The peer has this many unpaid invoices already.
    #[error("{0} unpaid invoices already; pay them or let them expire")]
    Peer(usize),
    /// All peers together hold this many unpaid reservations.
    #[error("the provider holds {0} unpaid reservations, its limit; try again in a few minutes")]
    Total(usize),
}

/// The counts and their caps.
#[derive(Debug)]
pub(super) struct Reservations {
    max_per_peer: usize,
    max_total: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Unpaid invoices (any purpose) per peer.
    by_peer: HashMap<String, usize>,
    /// Unpaid activation invoices of all peers.
    reservations: usize,
}

/// One counted unpaid invoice: given back on drop unless [`Slot::keep`] was called.
#[must_use]
pub(super) struct Slot<'a> {
    owner: &'a Reservations,
    peer: String,
    reservation: bool,
    kept: bool,
}

impl Slot<'_> {
    /// The invoice is stored: the slot stays counted until [`Reservations::release`].
    pub(super) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.owner.release(&self.peer, self.reservation);
        }
    }
}

impl Reservations {
    /// Empty counts under these caps.
    pub(super) fn new(max_per_peer: usize, max_total: usize) -> Self {
        Reservations {
            max_per_peer,
            max_total,
            counts: Mutex::new(Counts::default()),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Every change below is a single increment or decrement: a panic cannot tear it.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a stored unpaid invoice (at start, from the pending table), caps ignored.
    pub(super) fn count_existing(&self, peer: &str, reservation: bool) {
        let mut c = self.counts();
        *c.by_peer.entry(peer.to_owned()).or_default() += 1;
        if reservation {
            c.reservations += 1;
        }
    }

    /// Takes a slot for a new unpaid invoice of `peer` (a `reservation` when it holds
    /// prefixes), or says which cap is reached. Check and count are one step.
    pub(super) fn take(&self, peer: &str, reservation: bool) -> Result<Slot<'_>, CapReached> {
        let mut c = self.counts();
        let mine = c.by_peer.get(peer).copied().unwrap_or(0);
        if mine >= self.max_per_peer {
            return Err(CapReached::Peer(mine));
        }
        if reservation && c.reservations >= self.max_total {
            return Err(CapReached::Total(c.reservations));
        }
        *c.by_peer.entry(peer.to_owned()).or_default() += 1;
        if reservation {
            c.reservations += 1;
        }
        Ok(Slot {
            owner: self,
            peer: peer.to_owned(),
            reservation,
            kept: false,
        })
    }

    /// A stored unpaid invoice of `peer` was settled or expired.
    pub(super) fn release(&self, peer: &str, reservation: bool) {
        let mut c = self.counts();
        if let Some(n) = c.by_peer.get_mut(peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_peer.remove(peer);
            }
        }
        if reservation {
            c.reservations = c.reservations.saturating_sub(1);
        }
    }

    /// `(unpaid invoices of peer, unpaid reservations of all peers)`.
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
    fn caps_per_peer_and_in_total_and_slots_come_back() {
        let r = Reservations::new(2, 3);
        let a1 = r.take("a", true).unwrap();
        let a2 = r.take("a", true).unwrap();
        assert_eq!(r.take("a", false).err(), Some(CapReached::Peer(2)));
        a1.keep();
        let b1 = r.take("b", true).unwrap();
        // Three reservations held: a fourth peer is refused, but a top-up (no prefixes) of a
        // peer under its own cap is not.
        assert_eq!(r.take("c", true).err(), Some(CapReached::Total(3)));
        let c_topup = r.take("c", false).unwrap();
        assert_eq!(r.snapshot("c"), (1, 3));
        // A slot dropped without keep (the invoice was never stored) is given back.
        drop(a2);
        drop(c_topup);
        assert_eq!(r.snapshot("a"), (1, 2));
        let c1 = r.take("c", true).unwrap();
        c1.keep();
        b1.keep();
        // A kept slot comes back only when released (settled or expired).
        r.release("a", true);
        assert_eq!(r.snapshot("a"), (0, 2));
        r.take("a", true).unwrap().keep();
        assert_eq!(r.snapshot("a"), (1, 3));
    }

    #[test]
    fn concurrent_takes_never_pass_the_total() {
        let r = std::sync::Arc::new(Reservations::new(1, 5));
        let kept = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        std::thread::scope(|s| {
            for t in 0..16 {
                let (r, kept) = (r.clone(), kept.clone());
                s.spawn(move || {
                    if let Ok(slot) = r.take(&format!("peer{t}"), true) {
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
