//! Lightning payments: the [`LightningNode`] trait the market logic sees, its LND backend
//! ([`lnd::LndClient`], gRPC over a pinned TLS certificate), and the payer-side BOLT11 checks
//! ([`invoice::check_invoice`]) a renter runs before paying a provider's invoice.
//!
//! The trait is deliberately small: a provider creates invoices and looks them up, a renter
//! pays them. Everything is keyed by the 32-byte payment hash, which both sides can derive from
//! the BOLT11 string, so no backend-specific identifiers leak into the market code.
//!
//! With the `test-utils` feature (and in this crate's own tests), `testing` holds an in-memory
//! [`LightningNode`] for tests and the conformance suite every backend must pass. The LND
//! simulator (`lnd-sim`) lives in the `leasewire-simnet` crate, not here.

pub mod config;
pub mod connect;
pub mod invoice;
pub mod lnd;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

use std::sync::Arc;

/// Code generated from the LND API subset in `proto/lnd/` (see the comment at the top of each
/// `.proto` file). Both the clients ([`lnd::LndClient`]) and the servers (`lnd-sim`) use it.
pub mod proto {
    /// LND's `lnrpc` package: the `Lightning` service and the shared messages.
    #[allow(clippy::all, missing_docs)]
    pub mod lnrpc {
        tonic::include_proto!("lnrpc");
    }
    /// LND's `routerrpc` package: the `Router` service (`SendPaymentV2`, `TrackPaymentV2`).
    #[allow(clippy::all, missing_docs)]
    pub mod routerrpc {
        tonic::include_proto!("routerrpc");
    }
}

/// Identity and chain position of a Lightning node, as reported by the node itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Hex-encoded 33-byte compressed secp256k1 identity key.
    pub pubkey: String,
    /// The node's alias (may be empty).
    pub alias: String,
    /// Bitcoin network the node runs on: `"mainnet"`, `"testnet"`, `"signet"`, `"regtest"`, ...
    pub network: String,
    /// Height of the best block the node knows.
    pub block_height: u32,
}

/// What a payee asks its node to invoice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceRequest {
    /// Amount to request, in millisatoshis. Must be non-zero: leasewire never issues
    /// open-amount invoices.
    pub amount_msat: u64,
    /// SHA-256 of the terms being paid for; committed in the invoice's `h` field so the payer
    /// can check the invoice is for exactly these terms.
    pub description_hash: [u8; 32],
    /// Seconds until the invoice expires.
    pub expiry_secs: u64,
}

/// An invoice the node has created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedInvoice {
    /// The BOLT11 payment request to hand to the payer.
    pub bolt11: String,
    /// Payment hash; the key for [`LightningNode::lookup_invoice`].
    pub payment_hash: [u8; 32],
    /// The node's monotonically increasing invoice index.
    pub add_index: u64,
}

/// Lifecycle state of an invoice (LND's `Invoice.InvoiceState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvoiceState {
    /// Created, not yet paid.
    Open,
    /// Paid in full; the preimage has been released.
    Settled,
    /// Canceled (or expired and garbage-collected); can no longer be paid.
    Canceled,
    /// HTLCs accepted but not yet settled (hold invoices only).
    Accepted,
}

/// Payee-side view of an invoice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceStatus {
    /// Current state.
    pub state: InvoiceState,
    /// Amount received so far, in millisatoshis (zero unless settled or accepted).
    pub amount_paid_msat: u64,
    /// Unix time (seconds) of settlement, when settled.
    pub settled_at: Option<u64>,
}

/// One invoice of a [`LightningNode::list_invoices`] page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedInvoice {
    /// Payment hash.
    pub payment_hash: [u8; 32],
    /// The node's add index of the invoice (see [`CreatedInvoice::add_index`]).
    pub add_index: u64,
    /// Its state now.
    pub status: InvoiceStatus,
}

/// A page of [`LightningNode::list_invoices`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InvoicePage {
    /// The invoices, by add index, oldest first.
    pub invoices: Vec<ListedInvoice>,
    /// The add index of the last invoice of the page (pass it as the next `index_offset`);
    /// 0 for an empty page.
    pub last_index_offset: u64,
}

/// A payment the payer's node should make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayRequest {
    /// The BOLT11 invoice to pay. Callers should run [`invoice::check_invoice`] first.
    pub bolt11: String,
    /// Maximum routing fee, in millisatoshis. Zero allows only fee-free (e.g. direct) routes.
    pub fee_limit_msat: u64,
    /// Give up after this many seconds. Must be positive (LND rejects zero).
    pub timeout_secs: i32,
}

/// Result of a successful payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentOutcome {
    /// The payment hash that was paid.
    pub payment_hash: [u8; 32],
    /// The preimage released by the payee: proof of payment (`sha256(preimage) == payment_hash`).
    pub preimage: [u8; 32],
    /// Amount delivered to the payee, in millisatoshis (excluding fees).
    pub amount_msat: u64,
    /// Routing fee paid, in millisatoshis.
    pub fee_msat: u64,
}

/// What the payer's node knows of a payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentStatus {
    /// Started and not yet resolved: HTLCs may be pending. Paying again is refused by the node;
    /// wait (or track again) instead.
    InFlight,
    /// Completed; the outcome carries the preimage (proof of payment) and the fee paid.
    Succeeded(PaymentOutcome),
    /// Every attempt failed; no money moved. Paying again is allowed.
    Failed {
        /// LND's `PaymentFailureReason` name, e.g. `FAILURE_REASON_NO_ROUTE`.
        reason: String,
    },
}

/// Errors from a [`LightningNode`] backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LightningError {
    /// Reading the TLS certificate or macaroon failed.
    #[error("cannot read {what} at {path}: {source}")]
    Io {
        /// Which file ("TLS certificate", "macaroon").
        what: &'static str,
        /// Its path.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built (bad certificate file, bad address).
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The node could not be reached, or the TLS handshake failed (for example because it
    /// presented a certificate other than the pinned one).
    #[error("cannot connect to the Lightning node at {address}: {reason}")]
    Connect {
        /// `host:port` we tried.
        address: String,
        /// What went wrong, including the error's source chain.
        reason: String,
    },
    /// The node answered a call with a gRPC error status.
    #[error("{method} failed: {code:?}: {message}")]
    Rpc {
        /// The RPC method, e.g. `"AddInvoice"`.
        method: &'static str,
        /// gRPC status code (e.g. `Unauthenticated` for a bad macaroon).
        code: tonic::Code,
        /// The node's error message.
        message: String,
    },
    /// The payment reached a final FAILED state.
    #[error("payment failed: {reason}")]
    PaymentFailed {
        /// LND's `PaymentFailureReason` name, e.g. `FAILURE_REASON_INSUFFICIENT_BALANCE`.
        reason: String,
    },
    /// The node's answer violated the API contract (wrong lengths, missing fields, stream ended
    /// without a final status).
    #[error("invalid response from the Lightning node: {0}")]
    InvalidResponse(String),
    /// No final answer arrived in time. For a payment this does NOT mean it failed: it may
    /// still complete, and paying the same invoice again is refused by the node.
    #[error("timed out after {secs}s waiting for {what}")]
    Timeout {
        /// What we were waiting for.
        what: &'static str,
        /// How long we waited.
        secs: u64,
    },
    /// The caller's request cannot be expressed to the node (e.g. amount overflows `i64`).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The connection settings are unusable: a malformed lndconnect URI, only one of the
    /// certificate/macaroon paths set, files missing from the LND directory. The message
    /// names what to change and never contains a macaroon or certificate.
    #[error("Lightning configuration: {0}")]
    Config(String),
}

impl LightningError {
    /// True when the failure is a gRPC status with this code.
    pub fn is_rpc_code(&self, expected: tonic::Code) -> bool {
        matches!(self, LightningError::Rpc { code, .. } if *code == expected)
    }

    /// True when the node refused to pay because this node already paid the invoice (LND:
    /// `AlreadyExists`, "invoice is already paid"). The payment succeeded earlier; its
    /// preimage can be fetched with `TrackPaymentV2`.
    pub fn is_already_paid(&self) -> bool {
        matches!(self, LightningError::Rpc { code: tonic::Code::AlreadyExists, message, .. }
            if message.contains("already paid"))
    }
}

/// A Lightning node leasewire can invoice and pay through.
///
/// Implementations must be cheap to share across tasks (`Send + Sync`); all methods may be
/// called concurrently. Errors are returned, never panicked: a failing node must not take the
/// daemon down.
#[async_trait::async_trait]
pub trait LightningNode: Send + Sync + 'static {
    /// The node's identity, network and block height.
    ///
    /// # Errors
    /// [`LightningError::Rpc`] / [`LightningError::Connect`] when the node cannot answer;
    /// [`LightningError::InvalidResponse`] when it reports no chain.
    async fn get_info(&self) -> Result<NodeInfo, LightningError>;

    /// Creates an invoice for `req.amount_msat` committing to `req.description_hash`.
    ///
    /// # Errors
    /// [`LightningError::InvalidRequest`] for a zero or oversized amount or expiry;
    /// [`LightningError::Rpc`] when the node refuses.
    async fn add_invoice(&self, req: InvoiceRequest) -> Result<CreatedInvoice, LightningError>;

    /// Looks up one of this node's own invoices by payment hash.
    ///
    /// # Errors
    /// [`LightningError::Rpc`] with `NotFound` (LND) when the node has no such invoice.
    async fn lookup_invoice(&self, payment_hash: [u8; 32])
    -> Result<InvoiceStatus, LightningError>;

    /// This node's own invoices whose add index is above `index_offset`, oldest first, at most
    /// `max` of them (LND: `ListInvoices` with `index_offset`, `num_max_invoices`). A payee
    /// learns the state of all its open invoices with a few such pages instead of one lookup
    /// per invoice.
    ///
    /// # Errors
    /// [`LightningError::Rpc`] / [`LightningError::Connect`] when the node cannot answer;
    /// [`LightningError::InvalidResponse`] for an invoice without a valid hash or state.
    async fn list_invoices(
        &self,
        index_offset: u64,
        max: u64,
    ) -> Result<InvoicePage, LightningError>;

    /// Pays a BOLT11 invoice and waits for the final outcome.
    ///
    /// # Errors
    /// [`LightningError::PaymentFailed`] when the payment failed (no route, insufficient
    /// balance, timeout...); [`LightningError::Rpc`] when the node refused to start it, e.g.
    /// `AlreadyExists` for an invoice that is already paid.
    async fn pay_invoice(&self, req: PayRequest) -> Result<PaymentOutcome, LightningError>;

    /// The payer-side state of the payment for `payment_hash`; `Ok(None)` when the node has
    /// never seen a payment for it (LND's `TrackPaymentV2` answers `NotFound`). Returns the
    /// CURRENT state at once (does not wait for a final state). With several attempts for the
    /// same hash, this is the state of the payment as a whole (LND keeps one per hash).
    ///
    /// LND: the first update of `TrackPaymentV2`, falling back to `ListPayments` when the
    /// router sub-server is not available.
    ///
    /// # Errors
    /// [`LightningError::Rpc`] / [`LightningError::Connect`] when the node cannot answer;
    /// [`LightningError::InvalidResponse`] when a succeeded payment carries no valid preimage.
    async fn track_payment(
        &self,
        payment_hash: [u8; 32],
    ) -> Result<Option<PaymentStatus>, LightningError>;

    /// Whether our credentials let this node pay invoices (LND: the macaroon grants
    /// `offchain:write`, asked with `CheckMacaroonPermissions`, LND >= 0.13). A provider
    /// offers refunds only when this is true.
    ///
    /// # Errors
    /// [`LightningError::Rpc`] / [`LightningError::Connect`] when the node cannot answer (for
    /// LND also a macaroon without `macaroon:read`, which the check itself needs).
    async fn can_pay(&self) -> Result<bool, LightningError>;
}

#[async_trait::async_trait]
impl<T: LightningNode + ?Sized> LightningNode for Arc<T> {
    async fn get_info(&self) -> Result<NodeInfo, LightningError> {
        (**self).get_info().await
    }

    async fn add_invoice(&self, req: InvoiceRequest) -> Result<CreatedInvoice, LightningError> {
        (**self).add_invoice(req).await
    }

    async fn lookup_invoice(
        &self,
        payment_hash: [u8; 32],
    ) -> Result<InvoiceStatus, LightningError> {
        (**self).lookup_invoice(payment_hash).await
    }

    async fn list_invoices(
        &self,
        index_offset: u64,
        max: u64,
    ) -> Result<InvoicePage, LightningError> {
        (**self).list_invoices(index_offset, max).await
    }

    async fn pay_invoice(&self, req: PayRequest) -> Result<PaymentOutcome, LightningError> {
        (**self).pay_invoice(req).await
    }

    async fn track_payment(
        &self,
        payment_hash: [u8; 32],
    ) -> Result<Option<PaymentStatus>, LightningError> {
        (**self).track_payment(payment_hash).await
    }

    async fn can_pay(&self) -> Result<bool, LightningError> {
        (**self).can_pay().await
    }
}
