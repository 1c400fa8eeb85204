//! Payer-side BOLT11 checks.
//!
//! A renter receives a BOLT11 invoice from a provider it does not trust. Before handing it to
//! its own Lightning node it checks, offline, that the invoice is exactly the one the signed
//! terms call for: signed by the provider's Lightning key, on our network, for the agreed
//! amount, committing to the agreed terms through the description hash, and valid long enough
//! for the payment to complete. Each refusal is a distinct [`InvoiceCheckError`] variant so the
//! caller can log and audit precisely why it refused to pay.

use std::str::FromStr;

use bitcoin::hashes::Hash as _;
use lightning_invoice::{
    Bolt11Invoice, Bolt11InvoiceDescriptionRef, Bolt11SemanticError, Currency, ParseOrSemanticError,
};

/// What the payer expects an invoice to say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceExpectation {
    /// Network name as LND reports it in `GetInfo` (`"mainnet"`, `"testnet"`, `"signet"`,
    /// `"regtest"`, `"simnet"`); see [`network_currency`].
    pub network: String,
    /// Exact amount, in millisatoshis.
    pub amount_msat: u64,
    /// Hex-encoded 33-byte compressed public key of the payee's Lightning node (any case).
    pub payee_pubkey: String,
    /// Expected SHA-256 commitment in the invoice's description-hash field.
    pub description_hash: [u8; 32],
    /// The invoice must stay valid at least this many seconds after `now_unix`.
    pub min_expiry_left_secs: u64,
    /// Current Unix time in seconds (passed in so the check is a pure function).
    pub now_unix: u64,
}

/// The facts of an invoice that passed [`check_invoice`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedInvoice {
    /// Payment hash: the key to track the payment and to verify the preimage.
    pub payment_hash: [u8; 32],
    /// Amount in millisatoshis (equal to the expected amount).
    pub amount_msat: u64,
    /// Lower-case hex of the payee key the signature verifies against.
    pub payee_pubkey: String,
    /// Unix time (seconds) at which the invoice expires.
    pub expires_at: u64,
}

/// Why an invoice was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvoiceCheckError {
    /// Not a well-formed BOLT11 string (bad bech32, bad fields, missing mandatory fields).
    #[error("not a valid BOLT11 invoice: {0}")]
    Parse(String),
    /// The signature does not verify against the payee key in the invoice.
    #[error("invoice signature is invalid")]
    BadSignature,
    /// The expectation named a network this module does not know.
    #[error("unknown Lightning network name {0:?}")]
    UnknownNetwork(String),
    /// The invoice is for another network (e.g. a mainnet invoice on regtest).
    #[error("invoice is for network {got}, expected {expected}")]
    WrongNetwork {
        /// Network we are on.
        expected: String,
        /// Network the invoice names.
        got: String,
    },
    /// The invoice has no amount (an "any amount" invoice); we only pay exact amounts.
    #[error("invoice has no amount")]
    MissingAmount,
    /// The invoice asks for a different amount than agreed.
    #[error("invoice amount is {got_msat} msat, expected {expected_msat} msat")]
    AmountMismatch {
        /// Agreed amount.
        expected_msat: u64,
        /// Amount in the invoice.
        got_msat: u64,
    },
    /// The invoice is signed by a different node than the provider's.
    #[error("invoice payee is {got}, expected {expected}")]
    PayeeMismatch {
        /// The provider's node key (lower-case hex).
        expected: String,
        /// The key that signed the invoice (lower-case hex).
        got: String,
    },
    /// The invoice has already expired.
    #[error("invoice has expired")]
    Expired,
    /// The invoice expires too soon for the payment to complete safely.
    #[error("invoice expires in {left_secs}s, need at least {min_secs}s")]
    ExpiryTooShort {
        /// Seconds until expiry.
        left_secs: u64,
        /// Required minimum.
        min_secs: u64,
    },
    /// The invoice carries a plain description instead of a description hash, so it does not
    /// commit to the terms.
    #[error("invoice has no description hash")]
    MissingDescriptionHash,
    /// The description hash commits to something other than the agreed terms.
    #[error("invoice description hash does not match the terms")]
    DescriptionHashMismatch,
}

/// Maps an LND network name (as in `GetInfoResponse.chains[].network`) to a BOLT11 currency.
///
/// Accepts `mainnet`/`bitcoin`, `testnet`/`testnet3`/`testnet4`, `signet`, `regtest`, `simnet`
/// (case-insensitive).
///
/// # Errors
/// [`InvoiceCheckError::UnknownNetwork`] for any other name.
pub fn network_currency(name: &str) -> Result<Currency, InvoiceCheckError> {
    match name.to_ascii_lowercase().as_str() {
        "mainnet" | "bitcoin" => Ok(Currency::Bitcoin),
        "testnet" | "testnet3" | "testnet4" => Ok(Currency::BitcoinTestnet),
        "signet" => Ok(Currency::Signet),
        "regtest" => Ok(Currency::Regtest),
        "simnet" => Ok(Currency::Simnet),
        _ => Err(InvoiceCheckError::UnknownNetwork(name.to_owned())),
    }
}

/// The LND-style network name of a BOLT11 currency (inverse of [`network_currency`]).
pub fn currency_network_name(currency: &Currency) -> &'static str {
    match currency {
        Currency::Bitcoin => "mainnet",
        Currency::BitcoinTestnet => "testnet",
        Currency::Signet => "signet",
        Currency::Regtest => "regtest",
        Currency::Simnet => "simnet",
    }
}

/// Parses `bolt11` and checks it against `expect`.
///
/// Checks, in order: well-formedness, signature, network, payee key, description hash, amount,
/// and expiry (relative to `expect.now_unix`). An invoice passes only if all hold.
///
/// # Errors
/// The first failing check, as the matching [`InvoiceCheckError`] variant.
pub fn check_invoice(
    bolt11: &str,
    expect: &InvoiceExpectation,
) -> Result<CheckedInvoice, InvoiceCheckError> {
    let invoice = parse(bolt11)?;
    check_network(&invoice, &expect.network)?;

    // `from_str` verified the signature against the explicit payee key if present, otherwise
    // the key is recovered from the signature; either way this is the key that signed.
    let payee = hex::encode(invoice.get_payee_pub_key().serialize());
    let expected_payee = expect.payee_pubkey.trim().to_ascii_lowercase();
    if payee != expected_payee {
        return Err(InvoiceCheckError::PayeeMismatch {
            expected: expected_payee,
            got: payee,
        });
    }

    match invoice.description() {
        Bolt11InvoiceDescriptionRef::Hash(hash) => {
            if hash.0.to_byte_array() != expect.description_hash {
                return Err(InvoiceCheckError::DescriptionHashMismatch);
            }
        }
        Bolt11InvoiceDescriptionRef::Direct(_) => {
            return Err(InvoiceCheckError::MissingDescriptionHash);
        }
    }
    amount_and_expiry(
        &invoice,
        expect.amount_msat,
        expect.now_unix,
        expect.min_expiry_left_secs,
    )
}

/// Checks an invoice whose payee and description the payer does not know in advance: a
/// provider paying a renter's refund invoice. Checks well-formedness, signature, `network`,
/// the exact `amount_msat` (an amountless invoice is refused) and that it stays valid at
/// least `min_expiry_left_secs` after `now_unix`.
///
/// # Errors
/// The first failing check, as the matching [`InvoiceCheckError`] variant.
pub fn check_refund_invoice(
    bolt11: &str,
    network: &str,
    amount_msat: u64,
    now_unix: u64,
    min_expiry_left_secs: u64,
) -> Result<CheckedInvoice, InvoiceCheckError> {
    let invoice = parse(bolt11)?;
    check_network(&invoice, network)?;
    amount_and_expiry(&invoice, amount_msat, now_unix, min_expiry_left_secs)
}

fn parse(bolt11: &str) -> Result<Bolt11Invoice, InvoiceCheckError> {
    Bolt11Invoice::from_str(bolt11.trim()).map_err(|e| match e {
        ParseOrSemanticError::SemanticError(Bolt11SemanticError::InvalidSignature) => {
            InvoiceCheckError::BadSignature
        }
        other => InvoiceCheckError::Parse(other.to_string()),
    })
}

fn check_network(invoice: &Bolt11Invoice, network: &str) -> Result<(), InvoiceCheckError> {
    let expected_currency = network_currency(network)?;
    let currency = invoice.currency();
    if currency != expected_currency {
        return Err(InvoiceCheckError::WrongNetwork {
            expected: currency_network_name(&expected_currency).to_owned(),
            got: currency_network_name(&currency).to_owned(),
        });
    }
    Ok(())
}

/// The amount and expiry checks shared by both checkers, and the facts of a passing invoice.
fn amount_and_expiry(
    invoice: &Bolt11Invoice,
    expected_msat: u64,
    now_unix: u64,
    min_expiry_left_secs: u64,
) -> Result<CheckedInvoice, InvoiceCheckError> {
    let amount_msat = invoice
        .amount_milli_satoshis()
        .ok_or(InvoiceCheckError::MissingAmount)?;
    if amount_msat != expected_msat {
        return Err(InvoiceCheckError::AmountMismatch {
            expected_msat,
            got_msat: amount_msat,
        });
    }

    // An overflowing expiry is effectively "never expires"; saturate instead of refusing.
    let expires_at = invoice
        .duration_since_epoch()
        .as_secs()
        .saturating_add(invoice.expiry_time().as_secs());
    if expires_at <= now_unix {
        return Err(InvoiceCheckError::Expired);
    }
    let left_secs = expires_at - now_unix;
    if left_secs < min_expiry_left_secs {
        return Err(InvoiceCheckError::ExpiryTooShort {
            left_secs,
            min_secs: min_expiry_left_secs,
        });
    }

    Ok(CheckedInvoice {
        payment_hash: invoice.payment_hash().to_byte_array(),
        amount_msat,
        payee_pubkey: hex::encode(invoice.get_payee_pub_key().serialize()),
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bitcoin::hashes::sha256;
    use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
    use lightning_invoice::{InvoiceBuilder, PaymentSecret};

    use super::*;

    const NOW: u64 = 1_700_000_000;
    const TERMS: [u8; 32] = [7; 32];
    const AMOUNT: u64 = 250_000;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_slice(&[n; 32]).expect("constant key is in range")
    }

    fn pubkey_hex(sk: &SecretKey) -> String {
        hex::encode(PublicKey::from_secret_key(&Secp256k1::new(), sk).serialize())
    }

    /// Knobs for building a signed test invoice; `Default` yields one that passes `expect()`.
    struct Spec {
        currency: Currency,
        amount_msat: Option<u64>,
        desc_hash: Option<[u8; 32]>,
        timestamp: u64,
        expiry_secs: u64,
        signer: SecretKey,
        /// When set, written as the explicit payee key (`n` field) regardless of the signer.
        claimed_payee: Option<SecretKey>,
    }

    impl Default for Spec {
        fn default() -> Self {
            Spec {
                currency: Currency::Regtest,
                amount_msat: Some(AMOUNT),
                desc_hash: Some(TERMS),
                timestamp: NOW - 10,
                expiry_secs: 3600,
                signer: key(1),
                claimed_payee: None,
            }
        }
    }

    fn build(spec: Spec) -> String {
        let secp = Secp256k1::new();
        let mut b =
            InvoiceBuilder::new(spec.currency).expiry_time(Duration::from_secs(spec.expiry_secs));
        if let Some(payee) = spec.claimed_payee {
            b = b.payee_pub_key(PublicKey::from_secret_key(&secp, &payee));
        }
        if let Some(amount) = spec.amount_msat {
            b = b.amount_milli_satoshis(amount);
        }
        // The builder's typestate differs per branch, so finish the chain in a macro.
        macro_rules! finish {
            ($b:expr) => {
                $b.payment_hash(sha256::Hash::hash(&[9; 32]))
                    .payment_secret(PaymentSecret([3; 32]))
                    .duration_since_epoch(Duration::from_secs(spec.timestamp))
                    .min_final_cltv_expiry_delta(40)
                    .build_signed(|m| secp.sign_ecdsa_recoverable(m, &spec.signer))
                    .expect("test invoice builds")
                    .to_string()
            };
        }
        match spec.desc_hash {
            Some(h) => finish!(b.description_hash(sha256::Hash::from_byte_array(h))),
            None => finish!(b.description("a lease".to_owned())),
        }
    }

    fn expect() -> InvoiceExpectation {
        InvoiceExpectation {
            network: "regtest".into(),
            amount_msat: AMOUNT,
            payee_pubkey: pubkey_hex(&key(1)),
            description_hash: TERMS,
            min_expiry_left_secs: 600,
            now_unix: NOW,
        }
    }

    #[test]
    fn accepts_matching_invoice() {
        let checked = check_invoice(&build(Spec::default()), &expect()).expect("valid");
        assert_eq!(checked.amount_msat, AMOUNT);
        assert_eq!(checked.payee_pubkey, pubkey_hex(&key(1)));
        assert_eq!(checked.expires_at, NOW - 10 + 3600);
        assert_eq!(
            checked.payment_hash,
            sha256::Hash::hash(&[9; 32]).to_byte_array()
        );
    }

    #[test]
    fn accepts_upper_case_expected_pubkey() {
        let mut e = expect();
        e.payee_pubkey = e.payee_pubkey.to_uppercase();
        assert!(check_invoice(&build(Spec::default()), &e).is_ok());
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(
            check_invoice("lnbcrt1garbage", &expect()),
            Err(InvoiceCheckError::Parse(_))
        ));
    }

    #[test]
    fn refuses_bad_signature() {
        // Claims key 2 as payee but is signed by key 1.
        let inv = build(Spec {
            claimed_payee: Some(key(2)),
            ..Spec::default()
        });
        assert_eq!(
            check_invoice(&inv, &expect()),
            Err(InvoiceCheckError::BadSignature)
        );
    }

    #[test]
    fn refuses_wrong_network() {
        let inv = build(Spec {
            currency: Currency::Bitcoin,
            ..Spec::default()
        });
        assert_eq!(
            check_invoice(&inv, &expect()),
            Err(InvoiceCheckError::WrongNetwork {
                expected: "regtest".into(),
                got: "mainnet".into()
            })
        );
    }

    #[test]
    fn refuses_unknown_network_name() {
        let mut e = expect();
        e.network = "dogecoin".into();
        assert_eq!(
            check_invoice(&build(Spec::default()), &e),
            Err(InvoiceCheckError::UnknownNetwork("dogecoin".into()))
        );
    }

    #[test]
    fn refuses_missing_amount() {
        let inv = build(Spec {
            amount_msat: None,
            ..Spec::default()
        });
        assert_eq!(
            check_invoice(&inv, &expect()),
            Err(InvoiceCheckError::MissingAmount)
        );
    }

    #[test]
    fn refuses_amount_mismatch() {
        let inv = build(Spec {
            amount_msat: Some(AMOUNT + 1000),
            ..Spec::default()
        });
        assert_eq!(
            check_invoice(&inv, &expect()),
            Err(InvoiceCheckError::AmountMismatch {
                expected_msat: AMOUNT,
                got_msat: AMOUNT + 1000
            })
        );
    }

    #[test]
    fn refuses_other_payee() {
        let inv = build(Spec {
            signer: key(3),
            ..Spec::default()
        });
        assert_eq!(
            check_invoice(&inv, &expect()),
            Err(InvoiceCheckError::PayeeMismatch {
                expected: pubkey_hex(&key(1)),
                got: pubkey_hex(&key(3))
            })
        );
    }

    #[test]
    fn refuses_expired() {
        let inv = build(Spec {
            timestamp: NOW - 4000,
            ..Spec::default()
        });
        assert_eq!(
            check_invoice(&inv, &expect()),
            Err(InvoiceCheckError::Expired)
        );
        // Expiring exactly now counts as expired.
        let inv = build(Spec {
            timestamp: NOW - 3600,
            ..Spec::default()
        });
        assert_eq!(
            check_invoice(&inv, &expect()),
            Err(InvoiceCheckError::Expired)
        );
    }

    #[test]
    fn refuses_expiry_too_short() {
        let inv = build(Spec {
            expiry_secs: 300,
            timestamp: NOW,
            ..Spec::default()
        });
        assert_eq!(
            check_invoice(&inv, &expect()),
            Err(InvoiceCheckError::ExpiryTooShort {
                left_secs: 300,
                min_secs: 600
            })
        );
    }

    #[test]
    fn refuses_plain_description() {
        let inv = build(Spec {
            desc_hash: None,
            ..Spec::default()
        });
        assert_eq!(
            check_invoice(&inv, &expect()),
            Err(InvoiceCheckError::MissingDescriptionHash)
        );
    }

    #[test]
    fn refuses_other_description_hash() {
        let inv = build(Spec {
            desc_hash: Some([8; 32]),
            ..Spec::default()
        });
        assert_eq!(
            check_invoice(&inv, &expect()),
            Err(InvoiceCheckError::DescriptionHashMismatch)
        );
    }

    #[test]
    fn network_names_round_trip() {
        for name in ["mainnet", "testnet", "signet", "regtest", "simnet"] {
            let c = network_currency(name).expect("known");
            assert_eq!(currency_network_name(&c), name);
        }
        assert_eq!(
            network_currency("Bitcoin").expect("alias"),
            Currency::Bitcoin
        );
    }
}
