//! Every `Message` (`wire::messages`): the decoder behind a valid envelope, and what the node
//! does first with the messages a member may send it unasked.
//!
//! Properties: no panic; a decoded message round-trips (encode -> decode gives it back, and
//! encoding is stable); embedded signed values verify or are refused; an `offersRequest` is
//! answered and an `offers` page inserted into an offer cache without panicking, and the
//! answer respects the page bound.

#![no_main]

use leasewire::market::offers::OfferCache;
use leasewire::wire::messages::{MAX_OFFERS_PER_PAGE, Message};
use leasewire_fuzz::{TS, assert_round_trip, from_cbor, peer, provider_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leasewire_fuzz::cap_allocations(data.len());
    let Some(msg) = from_cbor::<Message>(data) else {
        return;
    };
    assert_round_trip(&msg);
    let _ = msg.name();
    match &msg {
        Message::Offer(s) => {
            let _ = (s.verify(), s.id());
            let cache = OfferCache::new("regtest", 8);
            let _ = cache.insert(s.clone(), TS);
        }
        Message::Lease(s) => {
            if let Ok(l) = s.verify() {
                let _ = l.remaining_credit(TS);
            }
        }
        Message::LeaseEnd(s) => {
            let _ = s.verify_from(&peer(&provider_key()));
        }
        Message::RefundRequest(s) => {
            let _ = (s.verify(), s.id());
        }
        Message::Offers(page) => {
            let cache = OfferCache::new("regtest", 8);
            for s in &page.offers {
                let _ = cache.insert(s.clone(), TS);
            }
            assert!(cache.len() <= 8);
        }
        Message::OffersRequest(req) => {
            let cache = OfferCache::new("regtest", 8);
            let answer = cache.answer(req, TS);
            assert!(answer.offers.len() <= MAX_OFFERS_PER_PAGE);
            let _ = cache.request_after(&req.after);
        }
        Message::Status(st) => {
            let _ = (st.state.as_str(), st.refund.as_str(), st.refund.is_none());
            if let Some(l) = &st.lease {
                let _ = l.verify();
            }
            if let Some(t) = &st.termination {
                let _ = t.verify();
            }
        }
        _ => {}
    }
});
