//! Size limits of every variable-size field a peer sends.
//!
//! A frame is at most 64 KiB, but nothing in the protocol needs a field anywhere near that:
//! without per-field limits, a member could make us store a 60 KB `agent` string in every
//! audit entry, or have its oversized ids echoed back in our errors. [`check`] runs on every
//! decoded message, request or response, before anything else looks at it ([`super::envelope::open`]);
//! an oversized field refuses the whole message with [`WireError::FieldTooLong`] or
//! [`WireError::TooManyItems`], which name the field and its size but never its content.
//!
//! Signed objects carried inside a message (`Signed<Offer>`, `Signed<Lease>`, ...) are bounded
//! as a whole ([`MAX_SIGNED_BODY`]) and their decoded fields are checked as well; a body that
//! does not decode is left for the signature check to refuse.

use serde::de::DeserializeOwned;

use super::messages::*;
use super::signed::{Signed, WireError};

/// Longest `hello.agent` ("leasewire/0.1.0" is 15 bytes).
pub const MAX_AGENT: usize = 128;
/// Longest Lightning network name ("regtest", "mainnet", ...).
pub const MAX_NETWORK: usize = 32;
/// Longest id, hash, preimage, PeerId or LN public key in text form (a SHA-256 in hex is 64
/// characters, a PeerId 52, an LN public key 66).
pub const MAX_ID: usize = 96;
/// Longest WireGuard endpoint (`dns-name:port`: a DNS name is at most 253 bytes).
pub const MAX_ENDPOINT: usize = 300;
/// Longest CIDR prefix in text form (an IPv6 prefix is at most 43 bytes).
pub const MAX_PREFIX_TEXT: usize = 64;
/// Longest BOLT11 invoice (bech32 invoices with many route hints stay well under this).
pub const MAX_BOLT11: usize = 4096;
/// Longest `error.message`.
pub const MAX_ERROR_MESSAGE: usize = 4096;
/// Most prefix sizes an offer lists per address family.
pub const MAX_PREFIX_SIZES: usize = 16;
/// Most entries of a lease's `allowed_ips`.
pub const MAX_ALLOWED_IPS: usize = 16;
/// Largest body of a signed object (an offer or lease is well under 2 KiB).
pub const MAX_SIGNED_BODY: usize = 8 * 1024;
/// Length of a signed object's `signer` (an ed25519 public key).
pub const SIGNER_LEN: usize = 32;
/// Length of a signed object's `sig` (an ed25519 signature).
pub const SIG_LEN: usize = 64;
/// Most hashes in a consistency proof (its length is about log2 of the log's size: 64 covers
/// any log that fits in a u64).
pub const MAX_PROOF_HASHES: usize = 64;

/// Checks one text field.
fn text(field: &'static str, value: &str, max: usize) -> Result<(), WireError> {
    if value.len() > max {
        return Err(WireError::FieldTooLong {
            field,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

/// Checks the length of one byte field.
fn bytes(field: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::FieldTooLong { field, len, max });
    }
    Ok(())
}

/// Checks the number of items of one list field.
fn items(field: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::TooManyItems { field, len, max });
    }
    Ok(())
}

/// Checks a signed object's envelope fields, then (if the body decodes) its content.
fn signed<T: DeserializeOwned>(
    field: &'static str,
    s: &Signed<T>,
    content: impl FnOnce(&T) -> Result<(), WireError>,
) -> Result<(), WireError> {
    if s.body.len() > MAX_SIGNED_BODY {
        return Err(WireError::FieldTooLong {
            field,
            len: s.body.len(),
            max: MAX_SIGNED_BODY,
        });
    }
    if s.signer.len() > SIGNER_LEN {
        return Err(WireError::FieldTooLong {
            field: "signed.signer",
            len: s.signer.len(),
            max: SIGNER_LEN,
        });
    }
    if s.sig.len() > SIG_LEN {
        return Err(WireError::FieldTooLong {
            field: "signed.sig",
            len: s.sig.len(),
            max: SIG_LEN,
        });
    }
    // An undecodable body is refused by the signature check that every reader runs.
    match ciborium::from_reader::<T, _>(s.body.as_slice()) {
        Ok(value) => content(&value),
        Err(_) => Ok(()),
    }
}

fn offer(o: &Offer) -> Result<(), WireError> {
    text("offer.provider", &o.provider, MAX_ID)?;
    text("offer.network", &o.network, MAX_NETWORK)?;
    text("offer.ln_pubkey", &o.ln_pubkey, MAX_ID)?;
    text("offer.endpoint", &o.endpoint, MAX_ENDPOINT)?;
    items("offer.ipv4", o.ipv4.len(), MAX_PREFIX_SIZES)?;
    items("offer.ipv6", o.ipv6.len(), MAX_PREFIX_SIZES)
}

fn lease(l: &Lease) -> Result<(), WireError> {
    text("lease.lease_id", &l.lease_id, MAX_ID)?;
    text("lease.provider", &l.provider, MAX_ID)?;
    text("lease.renter", &l.renter, MAX_ID)?;
    text("lease.offer_id", &l.offer_id, MAX_ID)?;
    text("lease.endpoint", &l.endpoint, MAX_ENDPOINT)?;
    if let Some(p) = &l.ipv4 {
        text("lease.ipv4", p, MAX_PREFIX_TEXT)?;
    }
    if let Some(p) = &l.ipv6 {
        text("lease.ipv6", p, MAX_PREFIX_TEXT)?;
    }
    items("lease.allowed_ips", l.allowed_ips.len(), MAX_ALLOWED_IPS)?;
    for ip in &l.allowed_ips {
        text("lease.allowed_ips[]", ip, MAX_PREFIX_TEXT)?;
    }
    text("lease.payment_hash", &l.payment_hash, MAX_ID)
}

fn lease_end(e: &LeaseEnd) -> Result<(), WireError> {
    text("leaseEnd.lease_id", &e.lease_id, MAX_ID)?;
    text("leaseEnd.provider", &e.provider, MAX_ID)?;
    text("leaseEnd.renter", &e.renter, MAX_ID)
}

fn refund_request(r: &RefundRequest) -> Result<(), WireError> {
    text("refundRequest.lease_id", &r.lease_id, MAX_ID)?;
    text("refundRequest.provider", &r.provider, MAX_ID)?;
    text("refundRequest.renter", &r.renter, MAX_ID)?;
    text("refundRequest.bolt11", &r.bolt11, MAX_BOLT11)
}

fn receipt(r: &super::messages::Receipt) -> Result<(), WireError> {
    text("receipt.lease_id", &r.lease_id, MAX_ID)?;
    text("receipt.provider", &r.provider, MAX_ID)?;
    text("receipt.renter", &r.renter, MAX_ID)?;
    text("receipt.payment_hash", &r.payment_hash, MAX_ID)
}

fn termination(t: &TerminationNotice) -> Result<(), WireError> {
    text("termination.lease_id", &t.lease_id, MAX_ID)?;
    text("termination.provider", &t.provider, MAX_ID)?;
    text("termination.renter", &t.renter, MAX_ID)
}

/// Checks every variable-size field of `msg` against its limit.
///
/// # Errors
/// [`WireError::FieldTooLong`] or [`WireError::TooManyItems`] for the first field over its
/// limit; the error names the field and its size, never its content.
pub fn check(msg: &Message) -> Result<(), WireError> {
    match msg {
        Message::Hello(h) => {
            text("hello.agent", &h.agent, MAX_AGENT)?;
            text("hello.network", &h.network, MAX_NETWORK)
        }
        Message::Offer(s) => signed("offer", s, offer),
        Message::RentRequest(r) => {
            text("rentRequest.request_id", &r.request_id, MAX_ID)?;
            text("rentRequest.offer_id", &r.offer_id, MAX_ID)
        }
        Message::PayInvoice(p) => {
            text("payInvoice.request_id", &p.request_id, MAX_ID)?;
            text("payInvoice.lease_id", &p.lease_id, MAX_ID)?;
            text("payInvoice.bolt11", &p.bolt11, MAX_BOLT11)
        }
        Message::PaymentResult(p) => {
            text("paymentResult.request_id", &p.request_id, MAX_ID)?;
            text("paymentResult.payment_hash", &p.payment_hash, MAX_ID)?;
            text("paymentResult.preimage", &p.preimage, MAX_ID)
        }
        Message::Lease(s) => signed("lease", s, lease),
        Message::StatusRequest(r) => text("statusRequest.lease_id", &r.lease_id, MAX_ID),
        Message::Status(s) => {
            text("status.lease_id", &s.lease_id, MAX_ID)?;
            if let Some(l) = &s.lease {
                signed("status.lease", l, lease)?;
            }
            if let Some(t) = &s.termination {
                signed("status.termination", t, termination)?;
            }
            match &s.refund {
                RefundState::Paying { payment_hash } | RefundState::Paid { payment_hash } => {
                    text("status.refund.payment_hash", payment_hash, MAX_ID)
                }
                RefundState::None | RefundState::Due => Ok(()),
            }
        }
        Message::TopUpRequest(t) => {
            text("topUpRequest.request_id", &t.request_id, MAX_ID)?;
            text("topUpRequest.lease_id", &t.lease_id, MAX_ID)
        }
        Message::Error(e) => text("error.message", &e.message, MAX_ERROR_MESSAGE),
        Message::LeaseEnd(s) => signed("leaseEnd", s, lease_end),
        Message::RefundRequest(s) => signed("refundRequest", s, refund_request),
        Message::OffersRequest(r) => {
            text("offersRequest.after", &r.after, MAX_ID)?;
            text("offersRequest.until", &r.until, MAX_ID)?;
            items("offersRequest.known", r.known.len(), MAX_KNOWN_SEQS)?;
            for k in &r.known {
                text("offersRequest.known[].provider", &k.provider, MAX_ID)?;
            }
            Ok(())
        }
        Message::ReceiptsRequest(r) => text("receiptsRequest.lease_id", &r.lease_id, MAX_ID),
        Message::Receipts(r) => {
            text("receipts.lease_id", &r.lease_id, MAX_ID)?;
            items(
                "receipts.receipts",
                r.receipts.len(),
                super::messages::MAX_RECEIPTS_PER_ANSWER,
            )?;
            for s in &r.receipts {
                signed("receipts.receipts[]", s, receipt)?;
            }
            Ok(())
        }
        Message::HeadRequest(_) => Ok(()),
        Message::Head(h) => {
            bytes("head.head.root", h.head.root.len(), 32)?;
            bytes("head.head.signer", h.head.signer.len(), SIGNER_LEN)?;
            bytes("head.head.sig", h.head.sig.len(), SIG_LEN)?;
            items("head.proof", h.proof.len(), MAX_PROOF_HASHES)?;
            for p in &h.proof {
                bytes("head.proof[]", p.len(), 32)?;
            }
            Ok(())
        }
        Message::Offers(o) => {
            items("offers.offers", o.offers.len(), MAX_OFFERS_PER_PAGE)?;
            for s in &o.offers {
                signed("offers.offers[]", s, offer)?;
            }
            if let Some(n) = &o.next {
                text("offers.next", n, MAX_ID)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Terms, WgKey};
    use ed25519_dalek::SigningKey;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[3; 32])
    }

    fn terms() -> Terms {
        Terms {
            activation_fee_sat: 1000,
            rate_sat_per_day: 100,
            min_initial_credit_sat: 700,
            min_topup_sat: 100,
            max_credit_sat: 100_000,
            reserve_days: 7,
            refund_unused: false,
            reservation_secs: 0,
        }
    }

    fn an_offer() -> Offer {
        Offer {
            provider: "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp".into(),
            seq: 1,
            created_at: 1,
            expires_at: 2,
            network: "regtest".into(),
            ln_pubkey: "02".repeat(33),
            wg_pubkey: WgKey([1; 32]),
            endpoint: "203.0.113.7:51820".into(),
            ipv4: vec![PrefixAvailability {
                prefix_len: 32,
                available: 1,
                rate_sat_per_day: 0,
            }],
            ipv6: vec![],
            terms: terms(),
        }
    }

    fn a_lease() -> Lease {
        Lease {
            lease_id: "ab".repeat(16),
            provider: "p".into(),
            renter: "r".into(),
            offer_id: "cd".repeat(16),
            renter_wg_pubkey: WgKey([7; 32]),
            provider_wg_pubkey: WgKey([8; 32]),
            endpoint: "[2001:db8::1]:51820".into(),
            ipv4: Some("198.51.100.3/32".into()),
            ipv6: None,
            allowed_ips: vec!["198.51.100.3/32".into()],
            terms: terms(),
            credit_sat: 1,
            activated_at: 1,
            paid_until: 2,
            payment_hash: "ef".repeat(32),
            revision: 0,
        }
    }

    /// The refusal names the field and its size, and does not carry the value.
    fn assert_refused(msg: &Message, field: &str) {
        let err = check(msg).expect_err("an oversized field must be refused");
        let text = err.to_string();
        assert!(text.contains(field), "{text}");
        assert!(!text.contains("xxxx"), "the value is echoed: {text}");
        assert!(text.len() < 200, "{text}");
    }

    #[test]
    fn honest_messages_pass() {
        check(&Message::Hello(Hello::ours(true, false, "regtest"))).unwrap();
        check(&Message::Offer(Signed::sign(&key(), &an_offer()).unwrap())).unwrap();
        check(&Message::Lease(Signed::sign(&key(), &a_lease()).unwrap())).unwrap();
        check(&Message::Offers(Offers {
            offers: vec![Signed::sign(&key(), &an_offer()).unwrap(); MAX_OFFERS_PER_PAGE],
            next: Some("12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp".into()),
        }))
        .unwrap();
    }

    #[test]
    fn oversized_hello_fields_are_refused() {
        let big = "x".repeat(60_000);
        let mut h = Hello::ours(true, false, "regtest");
        h.agent = big.clone();
        assert_refused(&Message::Hello(h.clone()), "hello.agent");
        h.agent = "x".repeat(MAX_AGENT);
        check(&Message::Hello(h.clone())).unwrap();
        h.network = big;
        assert_refused(&Message::Hello(h), "hello.network");
    }

    #[test]
    fn oversized_ids_are_refused() {
        let big = "x".repeat(MAX_ID + 1);
        assert_refused(
            &Message::RentRequest(RentRequest {
                request_id: "01".repeat(16),
                offer_id: big.clone(),
                credit_sat: 1,
                ipv4_prefix_len: Some(32),
                ipv6_prefix_len: None,
                wg_pubkey: WgKey([7; 32]),
            }),
            "rentRequest.offer_id",
        );
        assert_refused(
            &Message::StatusRequest(StatusRequest {
                lease_id: big.clone(),
            }),
            "statusRequest.lease_id",
        );
        assert_refused(
            &Message::TopUpRequest(TopUpRequest {
                request_id: big.clone(),
                lease_id: "ab".into(),
                amount_sat: 1,
            }),
            "topUpRequest.request_id",
        );
        assert_refused(
            &Message::PaymentResult(PaymentResult {
                request_id: "a".into(),
                payment_hash: "b".into(),
                preimage: big.clone(),
            }),
            "paymentResult.preimage",
        );
        assert_refused(
            &Message::PayInvoice(PayInvoice {
                request_id: "a".into(),
                lease_id: "b".into(),
                bolt11: "x".repeat(MAX_BOLT11 + 1),
                amount_sat: 1,
            }),
            "payInvoice.bolt11",
        );
        assert_refused(
            &Message::Error(ErrorMsg::new(
                ErrorCode::BadRequest,
                "x".repeat(MAX_ERROR_MESSAGE + 1),
            )),
            "error.message",
        );
    }

    #[test]
    fn oversized_fields_inside_signed_objects_are_refused() {
        let mut o = an_offer();
        o.endpoint = "x".repeat(MAX_ENDPOINT + 1);
        assert_refused(
            &Message::Offer(Signed::sign(&key(), &o).unwrap()),
            "offer.endpoint",
        );
        let mut o = an_offer();
        o.ipv6 = vec![o.ipv4[0].clone(); MAX_PREFIX_SIZES + 1];
        assert_refused(
            &Message::Offer(Signed::sign(&key(), &o).unwrap()),
            "offer.ipv6",
        );
        let mut l = a_lease();
        l.allowed_ips = vec!["198.51.100.3/32".into(); MAX_ALLOWED_IPS + 1];
        assert_refused(
            &Message::Lease(Signed::sign(&key(), &l).unwrap()),
            "lease.allowed_ips",
        );
        // A body too large to be an honest object is refused before it is decoded.
        let mut s = Signed::sign(&key(), &a_lease()).unwrap();
        s.body = vec![0; MAX_SIGNED_BODY + 1];
        assert_refused(&Message::Lease(s), "lease");
        let mut s = Signed::sign(&key(), &a_lease()).unwrap();
        s.signer = vec![0; 1000];
        assert_refused(&Message::Lease(s), "signed.signer");
    }

    #[test]
    fn long_lists_are_refused() {
        assert_refused(
            &Message::OffersRequest(OffersRequest {
                after: String::new(),
                until: String::new(),
                known: vec![
                    KnownSeq {
                        provider: "p".into(),
                        seq: 1
                    };
                    MAX_KNOWN_SEQS + 1
                ],
            }),
            "offersRequest.known",
        );
        assert_refused(
            &Message::Offers(Offers {
                offers: vec![Signed::sign(&key(), &an_offer()).unwrap(); MAX_OFFERS_PER_PAGE + 1],
                next: None,
            }),
            "offers.offers",
        );
    }
}
