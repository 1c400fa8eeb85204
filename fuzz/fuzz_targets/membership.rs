//! The membership responder (`net::membership`): the first bytes a connecting peer sends
//! before it has proven anything.
//!
//! Properties: no panic for any message 1 (responder) or message 2 (initiator); anything over
//! the size bound is refused as too large; a genuine handshake succeeds and the same handshake
//! with one byte of message 1 or message 2 flipped (where and how chosen by the input) fails.

#![no_main]

use leasewire::net::membership::{Initiator, MAX_HANDSHAKE_MESSAGE, MembershipError, respond};
use leasewire_fuzz::{peer, provider_key, renter_key};
use libfuzzer_sys::fuzz_target;

/// The cluster membership key of the test vectors (docs/PROTOCOL.md).
const PSK: [u8; 32] = [
    0xaa, 0xe8, 0x83, 0xf9, 0x59, 0x0e, 0x44, 0x13, 0x44, 0x49, 0x5f, 0xe7, 0x1c, 0x07, 0x4d, 0xb5,
    0x3d, 0x77, 0xe9, 0xae, 0x05, 0x1a, 0xda, 0x44, 0x57, 0xbf, 0x87, 0x54, 0x1c, 0xb9, 0xfc, 0xfd,
];

fuzz_target!(|data: &[u8]| {
    leasewire_fuzz::cap_allocations(data.len());
    let (a, b) = (peer(&provider_key()), peer(&renter_key()));

    // A stranger's message 1: it cannot hold the PSK, so it is refused.
    let r = respond(&PSK, &a, &b, data);
    if data.len() > MAX_HANDSHAKE_MESSAGE {
        assert!(matches!(r, Err(MembershipError::TooLarge(_))));
    }
    if let Ok(m2) = &r {
        assert!(m2.len() <= MAX_HANDSHAKE_MESSAGE);
    }

    // A stranger's message 2 to our initiator.
    let (init, m1) = Initiator::start(&PSK, &a, &b).expect("a handshake to start");
    let _ = init.finish(data);

    // A genuine run, with one byte flipped when the input says so.
    let Some((&where_, rest)) = data.split_first() else {
        return;
    };
    let mask = rest.first().copied().unwrap_or(0);
    let (init, mut m1b) = Initiator::start(&PSK, &a, &b).expect("a handshake to start");
    let flip_m1 = where_ & 0x80 == 0;
    if mask != 0 && flip_m1 {
        let i = usize::from(where_) % m1b.len();
        m1b[i] ^= mask;
    }
    let r = respond(&PSK, &a, &b, &m1b);
    if mask != 0 && flip_m1 {
        assert!(r.is_err(), "a tampered message 1 was accepted");
        return;
    }
    let mut m2 = r.expect("a genuine message 1 to be accepted");
    if mask != 0 {
        let i = usize::from(where_) % m2.len();
        m2[i] ^= mask;
        assert!(
            init.finish(&m2).is_err(),
            "a tampered message 2 was accepted"
        );
    } else {
        init.finish(&m2)
            .expect("a genuine message 2 to be accepted");
    }
    drop(m1);
});
