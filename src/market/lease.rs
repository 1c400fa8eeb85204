//! The one lease state machine. Provider (settlement and metering) and renter (applying
//! leases, its tick, release) both ask [`next`] what a lease becomes; neither decides states
//! inline. `next` is pure: the caller passes the time, and carries out the returned
//! [`Transition`] (tunnel changes, pool releases, audit entries).
//!
//! | from        | event                        | to        | kind          |
//! |-------------|------------------------------|-----------|---------------|
//! | (none)      | `Issue`, paid_until > now    | Active    | Issued        |
//! | (none)      | `Issue`, paid_until <= now   | Suspended | Issued        |
//! | Active      | `Pay`                        | Active    | Paid          |
//! | Suspended   | `Pay`, paid_until > now      | Active    | Reactivated   |
//! | Suspended   | `Pay`, paid_until <= now     | Suspended | Paid          |
//! | Released    | `Pay`                        | Released  | Paid          |
//! | Active      | `Tick`, now >= paid_until    | Suspended | Suspended     |
//! | Suspended   | `Tick`, now >= reserve end   | Released  | Expired       |
//! | Active/Susp.| `Release`                    | Released  | Released      |
//! | any         | `Tick` otherwise             | unchanged | none          |
//!
//! Illegal: `Issue` on an existing lease; `Pay`, `Tick` or `Release` without a lease; `Pay` or
//! `Release` of a `Pending` one (time passing changes nothing for it: a provider's status may
//! show it, and that is no reason to fail every tick); `Release` of a released lease. The
//! reserve end is `paid_until + reserve_days`.

use crate::types::DAY_SECS;
use crate::wire::LeaseState;

/// What happened to a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The activation was paid and the lease made, paid until `paid_until`.
    Issue {
        /// End of the paid time of the new lease.
        paid_until: u64,
    },
    /// A top-up was credited; the lease is now paid until `paid_until`.
    Pay {
        /// End of the paid time after the top-up.
        paid_until: u64,
    },
    /// Time passed: metering looks at the lease.
    Tick {
        /// End of the paid time.
        paid_until: u64,
        /// Days the addresses are held after the paid time ends.
        reserve_days: u32,
    },
    /// The renter gave the lease up.
    Release,
}

/// Which transition took place (what to audit and which side effects to run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A new lease: add the tunnel peer / configure the tunnel.
    Issued,
    /// Credit added; the state did not change.
    Paid,
    /// Credit ran out: the tunnel goes off, the addresses are held.
    Suspended,
    /// A top-up brought a suspended lease back: the tunnel goes on again.
    Reactivated,
    /// Given up by the renter: everything set up for it is removed.
    Released,
    /// The reserve period is over: the addresses go back to the pool.
    Expired,
}

/// The outcome of [`next`]: the new state and, when something happened, what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// State after the event.
    pub state: LeaseState,
    /// `None`: nothing changed.
    pub kind: Option<Kind>,
}

/// An event that cannot happen to a lease in that state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("illegal lease transition: {event:?} in state {state:?}")]
pub struct IllegalTransition {
    /// State the lease was in (`None`: no lease yet).
    pub state: Option<LeaseState>,
    /// The event.
    pub event: Event,
}

fn to(state: LeaseState, kind: Kind) -> Transition {
    Transition {
        state,
        kind: Some(kind),
    }
}

/// The lease state machine: what a lease in `state` (`None`: not issued yet) becomes on
/// `event` at unix time `now`.
///
/// # Errors
/// [`IllegalTransition`] for an event that cannot happen in that state (see the module table).
pub fn next(
    state: Option<LeaseState>,
    event: Event,
    now: u64,
) -> Result<Transition, IllegalTransition> {
    use LeaseState::{Active, Released, Suspended};
    let illegal = Err(IllegalTransition { state, event });
    let Some(state) = state else {
        return match event {
            Event::Issue { paid_until } if paid_until > now => Ok(to(Active, Kind::Issued)),
            Event::Issue { .. } => Ok(to(Suspended, Kind::Issued)),
            _ => illegal,
        };
    };
    match (state, event) {
        (_, Event::Issue { .. }) => illegal,
        (LeaseState::Pending, Event::Tick { .. }) => Ok(Transition { state, kind: None }),
        (LeaseState::Pending, _) => illegal,
        (Active, Event::Pay { .. }) => Ok(to(Active, Kind::Paid)),
        (Suspended, Event::Pay { paid_until }) if paid_until > now => {
            Ok(to(Active, Kind::Reactivated))
        }
        // Credited (the money is on the ledger) but still short, or too late: no change.
        (Suspended, Event::Pay { .. }) => Ok(to(Suspended, Kind::Paid)),
        (Released, Event::Pay { .. }) => Ok(to(Released, Kind::Paid)),
        (Active, Event::Tick { paid_until, .. }) if now >= paid_until => {
            Ok(to(Suspended, Kind::Suspended))
        }
        (
            Suspended,
            Event::Tick {
                paid_until,
                reserve_days,
            },
        ) if now >= reserve_end(paid_until, reserve_days) => Ok(to(Released, Kind::Expired)),
        (_, Event::Tick { .. }) => Ok(Transition { state, kind: None }),
        (Active | Suspended, Event::Release) => Ok(to(Released, Kind::Released)),
        (Released, Event::Release) => illegal,
    }
}

/// When the addresses of a lease paid until `paid_until` go back to the pool.
pub fn reserve_end(paid_until: u64, reserve_days: u32) -> u64 {
    paid_until.saturating_add(u64::from(reserve_days).saturating_mul(DAY_SECS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use LeaseState::{Active, Pending, Released, Suspended};

    const NOW: u64 = 1_000_000;

    fn ok(state: LeaseState, kind: Option<Kind>) -> Result<Transition, IllegalTransition> {
        Ok(Transition { state, kind })
    }

    fn tick(paid_until: u64) -> Event {
        Event::Tick {
            paid_until,
            reserve_days: 1,
        }
    }

    #[test]
    fn issue() {
        let paid = Event::Issue {
            paid_until: NOW + 1,
        };
        assert_eq!(next(None, paid, NOW), ok(Active, Some(Kind::Issued)));
        let lapsed = Event::Issue { paid_until: NOW };
        assert_eq!(next(None, lapsed, NOW), ok(Suspended, Some(Kind::Issued)));
        for s in [Pending, Active, Suspended, Released] {
            assert!(next(Some(s), paid, NOW).is_err(), "issue twice from {s:?}");
        }
    }

    #[test]
    fn pay() {
        let future = Event::Pay {
            paid_until: NOW + 10,
        };
        let past = Event::Pay { paid_until: NOW };
        assert_eq!(
            next(Some(Active), future, NOW),
            ok(Active, Some(Kind::Paid))
        );
        assert_eq!(next(Some(Active), past, NOW), ok(Active, Some(Kind::Paid)));
        assert_eq!(
            next(Some(Suspended), future, NOW),
            ok(Active, Some(Kind::Reactivated))
        );
        assert_eq!(
            next(Some(Suspended), past, NOW),
            ok(Suspended, Some(Kind::Paid))
        );
        assert_eq!(
            next(Some(Released), future, NOW),
            ok(Released, Some(Kind::Paid))
        );
        assert!(next(None, future, NOW).is_err());
        assert!(next(Some(Pending), future, NOW).is_err());
    }

    #[test]
    fn tick_suspends_at_paid_until_and_expires_after_the_reserve() {
        assert_eq!(next(Some(Active), tick(NOW + 1), NOW), ok(Active, None));
        assert_eq!(
            next(Some(Active), tick(NOW), NOW),
            ok(Suspended, Some(Kind::Suspended))
        );
        // Still inside the reserve period.
        let end = NOW - DAY_SECS + 1;
        assert_eq!(next(Some(Suspended), tick(end), NOW), ok(Suspended, None));
        assert_eq!(
            next(Some(Suspended), tick(NOW - DAY_SECS), NOW),
            ok(Released, Some(Kind::Expired))
        );
        // Long past everything: an active lease first suspends, it never skips to expired.
        assert_eq!(
            next(Some(Active), tick(0), NOW),
            ok(Suspended, Some(Kind::Suspended))
        );
        assert_eq!(next(Some(Released), tick(0), NOW), ok(Released, None));
        assert_eq!(next(Some(Pending), tick(0), NOW), ok(Pending, None));
        assert!(next(None, tick(0), NOW).is_err());
    }

    #[test]
    fn release() {
        for s in [Active, Suspended] {
            assert_eq!(
                next(Some(s), Event::Release, NOW),
                ok(Released, Some(Kind::Released))
            );
        }
        for s in [None, Some(Pending), Some(Released)] {
            let e = next(s, Event::Release, NOW).unwrap_err();
            assert_eq!(e.state, s);
        }
    }

    #[test]
    fn reserve_end_saturates() {
        assert_eq!(reserve_end(10, 1), 10 + DAY_SECS);
        assert_eq!(reserve_end(u64::MAX, 7), u64::MAX);
    }
}
