//! `Signed<Lease>` (`wire::signed`): the lease a provider signs and a renter stores and acts on.
//!
//! Each input is a peer's `Signed<Lease>` CBOR and also the body of a genuine signature by the
//! vectors' provider key (see `leasewire_fuzz::fuzz_signed`). Properties: no panic;
//! round-trips; the credit arithmetic on a decoded lease never panics and never exceeds what
//! its `paid_until` and rate allow.

#![no_main]

use leasewire::wire::messages::Lease;
use leasewire_fuzz::{TS, fuzz_signed, provider_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leasewire_fuzz::cap_allocations(data.len());
    let Some(lease) = fuzz_signed::<Lease>(data, &provider_key()) else {
        return;
    };
    for now in [0, TS, lease.paid_until, u64::MAX] {
        let left = lease.remaining_credit(now);
        if now >= lease.paid_until {
            assert_eq!(left, 0);
        }
    }
    let _ = leasewire::market::lease::reserve_end(lease.paid_until, lease.terms.reserve_days);
});
