//! `Signed<Offer>` (`wire::signed`, checked by `market::offers::verify_offer`): offers come
//! from providers and are relayed by any member.
//!
//! Each input is a peer's `Signed<Offer>` CBOR and also the body of a genuine signature by the
//! vectors' provider key (see `leasewire_fuzz::fuzz_signed`), so the offer decoder and the
//! checks after it run on fuzzer bytes. Properties: no panic; round-trips; an offer that passes
//! `verify_offer` names its signer, is unexpired and enters an offer cache.

#![no_main]

use leasewire::market::offers::{OfferCache, verify_offer};
use leasewire::wire::messages::Offer;
use leasewire_fuzz::{TS, fuzz_signed, peer, provider_key, sign_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leasewire_fuzz::cap_allocations(data.len());
    let key = provider_key();
    if fuzz_signed::<Offer>(data, &key).is_none() {
        return;
    }
    let signed = sign_body::<Offer>(&key, data);
    let provider = peer(&key);
    for network in ["regtest", "mainnet"] {
        if let Ok(offer) = verify_offer(&signed, Some(&provider), network, TS) {
            assert_eq!(offer.provider, provider.to_string());
            assert!(offer.expires_at > TS);
            assert_eq!(offer.network, network);
            let cache = OfferCache::new(network, 4);
            assert!(
                cache.insert(signed.clone(), TS).is_ok(),
                "a verified offer was not cached"
            );
            assert!(cache.get(&offer.provider).is_some());
        }
    }
});
