//! The lndconnect URI (`lightning::connect::LndConnect::parse`): pasted by the operator into
//! the config or `leasewire init`.
//!
//! Input: the URI text. Properties: no panic; a parsed URI written back with `lndconnect_uri`
//! parses to the same address, certificate and macaroon; errors never quote the macaroon.

#![no_main]

use leasewire::lightning::connect::{LndConnect, lndconnect_uri};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leasewire_fuzz::cap_allocations(data.len());
    let Ok(uri) = std::str::from_utf8(data) else {
        return;
    };
    match LndConnect::parse(uri) {
        Ok(p) => {
            assert!(!p.macaroon.is_empty());
            let again = lndconnect_uri(&p.address, &p.cert_der, &p.macaroon);
            let q = LndConnect::parse(&again)
                .unwrap_or_else(|e| panic!("a written URI does not parse: {e}; from {p:?}"));
            assert_eq!(q, p, "URI round trip changed it");
        }
        Err(e) => {
            // The macaroon parameter's value never appears in the message. (Only values that
            // cannot be mistaken for the fixed text of a message are looked for.)
            let msg = e.to_string();
            let query = uri.trim().split_once('?').map_or("", |(_, q)| q);
            for value in query
                .split('&')
                .filter_map(|kv| kv.strip_prefix("macaroon="))
            {
                if value.len() >= 12
                    && value.bytes().any(|b| b.is_ascii_digit())
                    && !value.bytes().any(|b| b.is_ascii_whitespace())
                {
                    assert!(!msg.contains(value), "error quotes the macaroon: {msg}");
                }
            }
        }
    }
});
