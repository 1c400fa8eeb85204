//! The BOLT11 invoice checks (`lightning::invoice`): a renter checks the provider's invoice,
//! a provider the renter's refund invoice, before paying.
//!
//! Input: the invoice text. Properties: no panic; an invoice that passes is exactly the one
//! expected (amount, payee, network) and stays valid long enough.

#![no_main]

use leasewire::lightning::invoice::{InvoiceExpectation, check_invoice, check_refund_invoice};
use leasewire_fuzz::TS;
use libfuzzer_sys::fuzz_target;

/// The payee of the seed invoices: the secp256k1 key of secret 1 (the generator point), as in
/// the offer vector's `ln_pubkey`.
const PAYEE: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
/// `commitment.description_hash` of the test vectors.
const DESCRIPTION_HASH: [u8; 32] = [
    0x52, 0xc3, 0x94, 0xd1, 0xf7, 0xf0, 0x50, 0x49, 0x47, 0x21, 0x46, 0x26, 0x2d, 0x78, 0x3b, 0xea,
    0x24, 0x72, 0xbe, 0xbf, 0x34, 0x1b, 0xde, 0xdd, 0x03, 0x1a, 0x8c, 0x04, 0xd3, 0xb8, 0x19, 0x98,
];
const AMOUNT_MSAT: u64 = 4_000_000;
const MIN_LEFT: u64 = 60;

fuzz_target!(|data: &[u8]| {
    leasewire_fuzz::cap_allocations(data.len());
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let expect = InvoiceExpectation {
        network: "regtest".into(),
        amount_msat: AMOUNT_MSAT,
        payee_pubkey: PAYEE.into(),
        description_hash: DESCRIPTION_HASH,
        min_expiry_left_secs: MIN_LEFT,
        now_unix: TS,
    };
    if let Ok(c) = check_invoice(text, &expect) {
        assert_eq!(c.amount_msat, AMOUNT_MSAT);
        assert_eq!(c.payee_pubkey, PAYEE);
        assert!(c.expires_at >= TS + MIN_LEFT);
    }
    for network in ["regtest", "mainnet"] {
        if let Ok(c) = check_refund_invoice(text, network, AMOUNT_MSAT, TS, MIN_LEFT) {
            assert_eq!(c.amount_msat, AMOUNT_MSAT);
            assert!(c.expires_at >= TS + MIN_LEFT);
        }
    }
});
