//! Envelope open (`wire::envelope::open`): the check every message from a peer passes.
//!
//! Each input is used twice:
//! 1. as the frame payload a peer sent: decodes and is refused, or (only a genuine envelope
//!    from the expected sender) opens once and is a replay the second time;
//! 2. as the body of a genuine envelope from that sender: the signature, time and replay checks
//!    pass, so the message decoder runs on it; a decoded message round-trips.

#![no_main]

use leasewire::wire::envelope::{Envelope, ReplayGuard, TIME_WINDOW_SECS, open};
use leasewire::wire::signed::WireError;
use leasewire_fuzz::{TS, assert_round_trip, peer, provider_key, seal_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leasewire_fuzz::cap_allocations(data.len());
    let key = provider_key();
    let sender = peer(&key);

    let guard = ReplayGuard::new(TIME_WINDOW_SECS);
    if let Ok(opened) = open(data, &sender, &guard, TS) {
        assert_eq!(opened.sender, sender);
        assert_round_trip(&opened.message);
        assert!(
            matches!(open(data, &sender, &guard, TS), Err(WireError::Replay(n)) if n == opened.nonce),
            "the same envelope opened twice"
        );
    }
    if let Ok(env) = Envelope::from_cbor(data) {
        let bytes = env.to_cbor().expect("a decoded envelope to encode");
        assert_eq!(Envelope::from_cbor(&bytes).expect("re-decode"), env);
    }

    let guard = ReplayGuard::new(TIME_WINDOW_SECS);
    let sealed = seal_body(&key, data, TS, u64::MAX);
    match open(&sealed, &sender, &guard, TS) {
        Ok(opened) => {
            assert_eq!(opened.nonce, u64::MAX);
            assert_round_trip(&opened.message);
        }
        Err(
            e @ (WireError::BadKey
            | WireError::BadSignature
            | WireError::WrongSigner { .. }
            | WireError::Version(_)
            | WireError::Stale { .. }
            | WireError::Replay(_)
            | WireError::ReplayUndecidable(_)),
        ) => panic!("a genuine, fresh envelope was refused: {e}"),
        // The body does not decode (or, once field limits exist, is refused by them).
        Err(_) => {}
    }
});
