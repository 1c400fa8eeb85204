//! Protocol messages. Each is carried CBOR-encoded inside a signed [`super::envelope`].
//!
//! Field order is part of the protocol (it fixes the CBOR encoding that is hashed or signed);
//! docs/PROTOCOL.md describes every message. Amounts are satoshis, times Unix seconds, peer ids
//! libp2p PeerIds in base58, LN pubkeys 33-byte compressed secp256k1 in hex, WireGuard keys
//! base64, prefixes in CIDR text.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::signed::{Signed, SignedKind};
use crate::types::{Sats, Terms, WgKey};

/// One protocol message. Requests and the responses they expect:
///
/// | request | response |
/// |---|---|
/// | `hello` | `offer` (provider) or `hello` |
/// | `rentRequest` | `payInvoice` |
/// | `paymentResult` | `lease` |
/// | `topUpRequest` | `payInvoice` |
/// | `statusRequest` | `status` |
/// | `leaseEnd` | `status` |
/// | `refundRequest` | `status` |
/// | `offersRequest` | `offers` |
/// | `receiptsRequest` | `receipts` |
/// | `headRequest` | `head` |
///
/// Any request may be answered with `error`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Message {
    /// First message on a connection: who we are and what we do.
    Hello(Hello),
    /// A provider's signed offer.
    Offer(Signed<Offer>),
    /// A renter asks to rent prefixes under an offer.
    RentRequest(RentRequest),
    /// The provider's invoice for a rent or top-up request.
    PayInvoice(PayInvoice),
    /// The renter reports a payment (the provider trusts only its own LN node).
    PaymentResult(PaymentResult),
    /// A provider-signed lease.
    Lease(Signed<Lease>),
    /// Ask for a lease's state.
    StatusRequest(StatusRequest),
    /// A lease's state as the provider's ledger has it.
    Status(Status),
    /// A renter asks to add credit to a lease.
    TopUpRequest(TopUpRequest),
    /// A request was refused.
    Error(ErrorMsg),
    /// The renter gives a lease up (signed by the renter).
    LeaseEnd(Signed<LeaseEnd>),
    /// The renter asks for the unused credit of an ended lease (signed by the renter).
    RefundRequest(Signed<RefundRequest>),
    /// A member asks another for the signed offers it knows and the asker lacks.
    OffersRequest(OffersRequest),
    /// The answer to `offersRequest`: offers as their providers signed them, one page.
    Offers(Offers),
    /// A renter asks for the provider's signed receipts of a lease's settled payments.
    ReceiptsRequest(ReceiptsRequest),
    /// The answer to `receiptsRequest`: every receipt of the lease, oldest first.
    Receipts(Receipts),
    /// Asks a node for its latest signed audit head, with a consistency proof from a size the
    /// asker saw before.
    HeadRequest(HeadRequest),
    /// The answer to `headRequest`.
    Head(HeadReply),
}

impl Message {
    /// The message's wire name (the CBOR map key), for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Offer(_) => "offer",
            Message::RentRequest(_) => "rentRequest",
            Message::PayInvoice(_) => "payInvoice",
            Message::PaymentResult(_) => "paymentResult",
            Message::Lease(_) => "lease",
            Message::StatusRequest(_) => "statusRequest",
            Message::Status(_) => "status",
            Message::TopUpRequest(_) => "topUpRequest",
            Message::Error(_) => "error",
            Message::LeaseEnd(_) => "leaseEnd",
            Message::RefundRequest(_) => "refundRequest",
            Message::OffersRequest(_) => "offersRequest",
            Message::Offers(_) => "offers",
            Message::ReceiptsRequest(_) => "receiptsRequest",
            Message::Receipts(_) => "receipts",
            Message::HeadRequest(_) => "headRequest",
            Message::Head(_) => "head",
        }
    }
}

/// Introduces a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Software name and version, e.g. "leasewire/0.1.0".
    pub agent: String,
    /// The node offers addresses.
    pub provider: bool,
    /// The node rents addresses.
    pub renter: bool,
    /// Lightning network the node pays or is paid on ("regtest", "mainnet", ...).
    pub network: String,
}

impl Hello {
    /// Our own hello.
    pub fn ours(provider: bool, renter: bool, network: &str) -> Hello {
        Hello {
            agent: format!("leasewire/{}", env!("CARGO_PKG_VERSION")),
            provider,
            renter,
            network: network.to_owned(),
        }
    }
}

/// One prefix size an offer leases: how many are available and what one costs per day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixAvailability {
    /// Prefix length, e.g. 32 for one IPv4 address or 64 for an IPv6 /64.
    pub prefix_len: u8,
    /// How many such prefixes can still be leased.
    pub available: u32,
    /// Daily price of one prefix of this size, added to the offer's base
    /// `terms.rate_sat_per_day` (see [`crate::market::sizes::effective_terms`]).
    pub rate_sat_per_day: Sats,
}

/// A provider's offer. Published signed; its id is derived from the signed bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The provider's PeerId (base58); must equal the signer.
    pub provider: String,
    /// Increases every time the provider changes its offer.
    pub seq: u64,
    /// When this version was made.
    pub created_at: u64,
    /// After this time the offer must not be accepted.
    pub expires_at: u64,
    /// Lightning network of the provider's node.
    pub network: String,
    /// The provider's Lightning node public key (hex); invoices must be signed by it.
    pub ln_pubkey: String,
    /// The provider's WireGuard public key.
    pub wg_pubkey: WgKey,
    /// WireGuard endpoint: "ip:port", "[ipv6]:port" or "dns-name:port".
    pub endpoint: String,
    /// Every IPv4 prefix size on offer, with availability and price; empty: no IPv4.
    pub ipv4: Vec<PrefixAvailability>,
    /// Every IPv6 prefix size on offer, with availability and price; empty: no IPv6.
    pub ipv6: Vec<PrefixAvailability>,
    /// Terms of sale. `rate_sat_per_day` is the base rate of a lease; a lease's own terms
    /// (and its invoice commitment's) carry the effective rate for its sizes.
    pub terms: Terms,
}

impl SignedKind for Offer {
    const DOMAIN: &'static str = "leasewire/offer/v1";
}

/// A renter asks to rent under a specific offer version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RentRequest {
    /// Random id chosen by the renter (32 hex chars); names the rental until a lease exists.
    pub request_id: String,
    /// Id of the signed offer the renter accepts.
    pub offer_id: String,
    /// Prepaid credit the renter wants, on top of the activation fee.
    pub credit_sat: Sats,
    /// IPv4 prefix length wanted (None: no IPv4).
    pub ipv4_prefix_len: Option<u8>,
    /// IPv6 prefix length wanted (None: no IPv6).
    pub ipv6_prefix_len: Option<u8>,
    /// The renter's WireGuard public key: its identity for the tunnel.
    pub wg_pubkey: WgKey,
}

/// What an invoice is for. Its description hash commits to every field, so the payer can
/// check it pays for exactly what it asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceCommitment {
    /// "activation" for a new lease, "topup" for added credit.
    pub purpose: String,
    /// The request this invoice answers.
    pub request_id: String,
    /// Provider PeerId.
    pub provider: String,
    /// Renter PeerId.
    pub renter: String,
    /// Offer the rental is under.
    pub offer_id: String,
    /// Lease being topped up (None for activation).
    pub lease_id: Option<String>,
    /// Terms in force: the offer's, with the effective rate of the sizes asked (activation),
    /// or the lease's own terms (top-up).
    pub terms: Terms,
    /// Credit bought.
    pub credit_sat: Sats,
    /// Invoice amount: credit plus activation fee for activation, credit for a top-up.
    pub amount_sat: Sats,
    /// IPv4 prefix length (activation only).
    pub ipv4_prefix_len: Option<u8>,
    /// IPv6 prefix length (activation only).
    pub ipv6_prefix_len: Option<u8>,
    /// Renter's WireGuard key.
    pub renter_wg_pubkey: WgKey,
}

/// Purpose string of an activation invoice.
pub const PURPOSE_ACTIVATION: &str = "activation";
/// Purpose string of a top-up invoice.
pub const PURPOSE_TOPUP: &str = "topup";
const COMMITMENT_DOMAIN: &[u8] = b"leasewire/invoice-commitment/v1\0";

impl InvoiceCommitment {
    /// SHA-256 over the domain string and the commitment's CBOR encoding: the BOLT11
    /// description hash (`h` field) of the invoice that pays for it.
    pub fn description_hash(&self) -> [u8; 32] {
        let mut cbor = Vec::new();
        ciborium::into_writer(self, &mut cbor)
            .expect("CBOR encoding into a Vec not to fail for plain data");
        let mut h = Sha256::new();
        h.update(COMMITMENT_DOMAIN);
        h.update(&cbor);
        h.finalize().into()
    }
}

/// The provider's invoice for a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayInvoice {
    /// The request answered.
    pub request_id: String,
    /// Lease id the provider assigned (new lease) or the lease topped up.
    pub lease_id: String,
    /// BOLT11 invoice.
    pub bolt11: String,
    /// Amount the provider says it charges; the payer checks it against its own figure.
    pub amount_sat: Sats,
}

/// The renter reports its payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentResult {
    /// The request paid.
    pub request_id: String,
    /// Payment hash (hex).
    pub payment_hash: String,
    /// Preimage (hex), proof of payment.
    pub preimage: String,
}

/// A provider-signed lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Lease id (32 hex chars).
    pub lease_id: String,
    /// Provider PeerId; must equal the signer.
    pub provider: String,
    /// Renter PeerId.
    pub renter: String,
    /// Offer the lease was made under.
    pub offer_id: String,
    /// Renter WireGuard key (the tunnel peer).
    pub renter_wg_pubkey: WgKey,
    /// Provider WireGuard key.
    pub provider_wg_pubkey: WgKey,
    /// Provider WireGuard endpoint.
    pub endpoint: String,
    /// Leased IPv4 prefix in CIDR form, e.g. "198.51.100.3/32".
    pub ipv4: Option<String>,
    /// Leased IPv6 prefix in CIDR form, e.g. "2001:db8:100::/64".
    pub ipv6: Option<String>,
    /// Allowed IPs of the renter's peer entry at the provider: the leased prefixes.
    pub allowed_ips: Vec<String>,
    /// Terms in force, with the effective rate of the lease's sizes.
    pub terms: Terms,
    /// Total credit bought over the lease's life.
    pub credit_sat: Sats,
    /// When the lease first became active.
    pub activated_at: u64,
    /// Service is paid up to this time.
    pub paid_until: u64,
    /// Payment hash (hex) of the activation invoice.
    pub payment_hash: String,
    /// Incremented each time the provider re-issues the lease (top-ups).
    pub revision: u64,
}

impl Lease {
    /// Credit left at `now`: the unexpired part of `paid_until` at the lease's rate.
    pub fn remaining_credit(&self, now: u64) -> Sats {
        let secs = self.paid_until.saturating_sub(now);
        ((secs as u128 * self.terms.rate_sat_per_day as u128) / crate::types::DAY_SECS as u128)
            as Sats
    }
}

impl SignedKind for Lease {
    const DOMAIN: &'static str = "leasewire/lease/v1";
}

/// A renter ends its lease. Signed by the renter (its node key), so the provider can keep it
/// as proof of who ended the lease and when; the provider answers with its `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEnd {
    /// The lease ended.
    pub lease_id: String,
    /// Provider PeerId: the lease's provider.
    pub provider: String,
    /// Renter PeerId: the lease's renter; must equal the signer.
    pub renter: String,
    /// When the renter released the lease (its clock).
    pub ended_at: u64,
}

impl SignedKind for LeaseEnd {
    const DOMAIN: &'static str = "leasewire/lease-end/v1";
}

/// Ask for a lease's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest {
    /// Lease asked about.
    pub lease_id: String,
}

/// Lifecycle state of a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Invoice issued, not yet paid.
    Pending,
    /// Paid up; the tunnel carries the prefixes.
    Active,
    /// Credit ran out; the tunnel is off, the prefixes are held.
    Suspended,
    /// The prefixes went back to the pool.
    Released,
}

impl LeaseState {
    /// Lowercase name.
    pub fn as_str(&self) -> &'static str {
        match self {
            LeaseState::Pending => "pending",
            LeaseState::Active => "active",
            LeaseState::Suspended => "suspended",
            LeaseState::Released => "released",
        }
    }
}

/// A lease's state, from the provider's ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The lease.
    pub lease_id: String,
    /// Its state.
    pub state: LeaseState,
    /// Credit left now.
    pub remaining_credit_sat: Sats,
    /// Paid up to.
    pub paid_until: u64,
    /// The provider's clock when answering.
    pub now: u64,
    /// Latest signed lease.
    pub lease: Option<Signed<Lease>>,
    /// The provider's signed notice that it ends the lease, if it gave one. Absent from the
    /// encoding of older nodes, hence the default.
    #[serde(default)]
    pub termination: Option<Signed<TerminationNotice>>,
    /// Unused credit the provider owes back for this ended lease (its terms promised
    /// `refund_unused`); 0 when none. Left out of the encoding when 0, so older nodes decode
    /// it and older encodings decode here.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refund_due_sat: Sats,
    /// Where that refund stands. Left out of the encoding when `none`.
    #[serde(default, skip_serializing_if = "RefundState::is_none")]
    pub refund: RefundState,
}

fn is_zero(n: &Sats) -> bool {
    *n == 0
}

/// Where a refund of unused credit stands, in the provider's ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundState {
    /// No refund: the terms promise none, nothing was left, or the lease has not ended.
    #[default]
    None,
    /// Owed: the renter may send a `refundRequest` with an invoice for `refund_due_sat`.
    Due,
    /// The provider's node is paying the renter's invoice with this payment hash (hex).
    Paying {
        /// Payment hash of the renter's invoice.
        payment_hash: String,
    },
    /// Paid: the renter's invoice with this payment hash (hex) was paid.
    Paid {
        /// Payment hash of the renter's invoice.
        payment_hash: String,
    },
}

impl RefundState {
    /// True for [`RefundState::None`].
    pub fn is_none(&self) -> bool {
        matches!(self, RefundState::None)
    }

    /// Lowercase name: `none`, `due`, `paying` or `paid`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RefundState::None => "none",
            RefundState::Due => "due",
            RefundState::Paying { .. } => "paying",
            RefundState::Paid { .. } => "paid",
        }
    }
}

/// A renter asks for the unused credit of an ended lease: `bolt11` is an invoice of its own
/// node for exactly the `refund_due_sat` the provider's `status` shows. Signed by the renter;
/// the provider answers with its `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    /// The ended lease.
    pub lease_id: String,
    /// Provider PeerId: the lease's provider.
    pub provider: String,
    /// Renter PeerId: the lease's renter; must equal the signer.
    pub renter: String,
    /// BOLT11 invoice of the renter's node for exactly the refund due.
    pub bolt11: String,
    /// When the renter made the request (its clock).
    pub requested_at: u64,
}

impl SignedKind for RefundRequest {
    const DOMAIN: &'static str = "leasewire/refund-request/v1";
}

/// A provider ends a lease with notice: the lease stays as it is until `ends_at`, then the
/// provider releases it. Signed by the provider; carried in `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminationNotice {
    /// The lease ended.
    pub lease_id: String,
    /// Provider PeerId; must equal the signer.
    pub provider: String,
    /// Renter PeerId.
    pub renter: String,
    /// When the notice was given.
    pub issued_at: u64,
    /// When the provider ends the lease.
    pub ends_at: u64,
}

impl SignedKind for TerminationNotice {
    const DOMAIN: &'static str = "leasewire/termination/v1";
}

/// A renter asks to add credit to a lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUpRequest {
    /// Random id chosen by the renter.
    pub request_id: String,
    /// Lease to credit.
    pub lease_id: String,
    /// Credit to add.
    pub amount_sat: Sats,
}

/// Machine-readable reason of an [`ErrorMsg`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request was malformed or violates the terms.
    BadRequest,
    /// Unknown lease, request or offer.
    NotFound,
    /// The offer changed or expired; fetch it again.
    OfferChanged,
    /// No prefix of the requested size is free.
    PoolExhausted,
    /// The invoice is not settled on the provider's node (yet).
    NotSettled,
    /// The node does not serve this request (e.g. not a provider).
    Unsupported,
    /// Temporary failure on the provider's side.
    Unavailable,
}

/// A refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// Why, for programs.
    pub code: ErrorCode,
    /// Why, for people.
    pub message: String,
}

impl ErrorMsg {
    /// Builds an error message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorMsg {
            code,
            message: message.into(),
        }
    }
}

/// At most this many entries in [`OffersRequest::known`] (they must fit in one frame).
pub const MAX_KNOWN_SEQS: usize = 512;
/// At most this many offers in one [`Offers`] page.
pub const MAX_OFFERS_PER_PAGE: usize = 32;
/// At most about this many bytes of signed offers in one [`Offers`] page (the frame is 64 KiB).
pub const MAX_OFFERS_PAGE_BYTES: usize = 40 * 1024;

/// The version of one provider's offer that the asker already holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownSeq {
    /// Provider PeerId.
    pub provider: String,
    /// The `seq` of the offer held.
    pub seq: u64,
}

/// Asks a member for the signed offers it knows, in provider order, skipping those the asker
/// already holds at the same or a higher `seq`. Offers are relayed as their providers signed
/// them: the asker verifies each one itself and trusts nothing of the relaying peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffersRequest {
    /// Only providers whose PeerId sorts (bytewise, as text) after this one; empty: from the
    /// first. The `next` of the previous page.
    pub after: String,
    /// Only providers whose PeerId sorts at or before this one; empty: no bound. Set by an
    /// asker whose `known` list had to be cut at [`MAX_KNOWN_SEQS`] to the last provider it
    /// lists, so that nothing it holds is sent again.
    pub until: String,
    /// What the asker holds in that range, ascending by provider, at most [`MAX_KNOWN_SEQS`].
    pub known: Vec<KnownSeq>,
}

/// One page of offers answering an [`OffersRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Offers {
    /// Offers, ascending by provider, at most [`MAX_OFFERS_PER_PAGE`] and about
    /// [`MAX_OFFERS_PAGE_BYTES`] bytes.
    pub offers: Vec<Signed<Offer>>,
    /// When the page is full: ask again with `after` set to this to get the rest. `None`: the
    /// range asked for is exhausted.
    pub next: Option<String>,
}

/// A provider's receipt for one settled payment: signed by the provider when its own node
/// shows the invoice settled and the lease is credited, and kept by the renter as proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The lease paid for.
    pub lease_id: String,
    /// Provider PeerId; must equal the signer.
    pub provider: String,
    /// Renter PeerId.
    pub renter: String,
    /// Payment hash (hex) of the settled invoice.
    pub payment_hash: String,
    /// Amount settled, sat.
    pub amount_sat: Sats,
    /// The lease's `paid_until` after this payment.
    pub paid_until: u64,
    /// The lease revision this payment produced.
    pub revision: u64,
    /// Seq of the provider's `invoice_settled` audit entry for this payment: its position in
    /// the provider's Merkle log.
    pub log_seq: u64,
    /// When the provider settled it (Unix seconds).
    pub settled_at: u64,
}

impl SignedKind for Receipt {
    const DOMAIN: &'static str = "leasewire/receipt/v1";
}

/// At most this many receipts in one [`Receipts`] answer (the newest are kept).
pub const MAX_RECEIPTS_PER_ANSWER: usize = 64;

/// Asks a provider for its receipts of one lease (only that lease's renter gets them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptsRequest {
    /// The lease.
    pub lease_id: String,
}

/// The provider's signed receipts of a lease, oldest first, at most
/// [`MAX_RECEIPTS_PER_ANSWER`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipts {
    /// The lease.
    pub lease_id: String,
    /// The receipts.
    pub receipts: Vec<Signed<Receipt>>,
}

/// Asks for the answerer's latest signed tree head and a consistency proof to it from
/// `since_size` (the size of the answerer's head the asker last saw; 0 for none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadRequest {
    /// The size of the answerer's head the asker holds (0: none).
    pub since_size: u64,
}

/// A signed tree head of an audit log on the wire (docs/PROTOCOL.md §18): the signer's
/// Ed25519 signature over `"leasewire/audit-head/v1" || 0x00 || size || time_ms || root`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireHead {
    /// Entries covered.
    pub size: u64,
    /// Signing time, ms since the Unix epoch.
    pub time_ms: u64,
    /// Merkle root (32 bytes).
    #[serde(with = "serde_bytes")]
    pub root: Vec<u8>,
    /// Signer's Ed25519 public key (32 bytes).
    #[serde(with = "serde_bytes")]
    pub signer: Vec<u8>,
    /// Signature (64 bytes).
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

/// The answerer's latest signed head and the consistency proof from the asked size to it
/// (empty when that size is 0, equal to the head's, or larger: the asker judges that).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadReply {
    /// The latest signed head of the answerer's audit log.
    pub head: WireHead,
    /// The size the proof starts from (the request's `since_size`, or 0 when larger than
    /// the head).
    pub since_size: u64,
    /// RFC 9162 consistency proof from `since_size` to `head.size` (32-byte hashes).
    pub proof: Vec<serde_bytes::ByteBuf>,
}
