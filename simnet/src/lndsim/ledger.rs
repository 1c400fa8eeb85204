//! A simulated Lightning network: virtual nodes, their balances, invoices and payments.
//!
//! This is the model behind `lnd-sim` (the LND-compatible gRPC server of this crate). It lives
//! here, not in the leasewire library, so production builds carry no simulator; the library's
//! in-memory test double (`leasewire::lightning::testing::MemNode`, feature `test-utils`) keeps
//! the same contract, which `leasewire::lightning::testing::conformance` checks for both. It is
//! pure, synchronous state (callers wrap it in a mutex and pass the clock in), so every payment
//! rule is unit-testable. Invoices
//! are real, signed regtest BOLT11 strings. Semantics follow LND where there is a choice:
//!
//! - each node has its own invoice `add_index`/`settle_index` and payment index sequences;
//! - paying an invoice this payer already paid is an *error* (`AlreadyPaid`, LND's
//!   "invoice is already paid"), not a failed payment;
//! - other refusals are recorded as FAILED payments with LND's failure reason:
//!   - payee not a node of this simulator, or payee == payer (LND refuses circular routes
//!     unless `allow_self_payment`): `FAILURE_REASON_NO_ROUTE`;
//!   - payee known but the hash unknown, the invoice canceled, expired, or already settled by
//!     another payer: `FAILURE_REASON_INCORRECT_PAYMENT_DETAILS` (what the payee returns for
//!     an HTLC it will not accept: `incorrect_or_unknown_payment_details`);
//!   - a routing fee (see [`RoutingFee`], zero by default) above the request's fee limit:
//!     `FAILURE_REASON_NO_ROUTE` (LND finds no route within the limit), noted "fee over limit";
//!   - balance below the amount plus the fee: `FAILURE_REASON_INSUFFICIENT_BALANCE`.
//! - a payment is IN_FLIGHT from [`Ledger::begin_payment`] until it resolves; amount and fee are
//!   reserved (debited) meanwhile and refunded if it fails. Without faults it resolves at once;
//!   injected [`Fault`]s keep it in flight (delay, timeout) or fail it (no route, fee over
//!   limit). [`start_payment`] finishes in-flight payments in a task of their own, so they
//!   complete even when the client that started them is gone;
//! - the fee is charged to the payer and credited to nobody (it models routing nodes outside
//!   the simulator).

use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bitcoin::hashes::{Hash as _, sha256};
use bitcoin::secp256k1::{All, PublicKey, Secp256k1, SecretKey};
use leasewire::lightning::proto::lnrpc::{
    self, PaymentFailureReason, invoice::InvoiceState, payment::PaymentStatus,
};
use lightning_invoice::{Bolt11Invoice, Currency, InvoiceBuilder, PaymentSecret};
use tokio::sync::broadcast;

/// Default invoice expiry, as in LND and BOLT11.
pub const DEFAULT_EXPIRY_SECS: u64 = 3600;
/// Default final CLTV delta for new invoices (LND's current default).
pub const DEFAULT_CLTV_EXPIRY: u64 = 80;
/// The (fixed) block height every simulated node reports.
pub const SIM_BLOCK_HEIGHT: u32 = 1_000;
/// Capacity of the invoice and payment event channels; a subscriber further behind is
/// disconnected (payment waiters then re-read the ledger).
const EVENT_CAPACITY: usize = 1024;

/// Code generated from `simnet/proto/lndsim/admin.proto` (by simnet's build.rs): lnd-sim's admin API (faults, routing fee,
/// payment audit), served next to the LND services.
pub mod admin_proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("lndsim");
}

/// Index of a payment in the ledger (across all nodes, in creation order).
pub type PaymentId = usize;

/// A fault lnd-sim injects into one payer's payments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Fail at once with `FAILURE_REASON_NO_ROUTE`.
    NoRoute,
    /// Stay IN_FLIGHT for the request's timeout, then fail with `FAILURE_REASON_TIMEOUT`.
    Timeout,
    /// The routing fee exceeds any limit: fail with `FAILURE_REASON_NO_ROUTE`.
    FeeOverLimit,
    /// Stay IN_FLIGHT this long, then proceed normally.
    Delay(Duration),
}

impl FaultKind {
    /// Short name for logs and notes: `no_route`, `timeout`, `fee_over_limit`, `delay`.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::NoRoute => "no_route",
            FaultKind::Timeout => "timeout",
            FaultKind::FeeOverLimit => "fee_over_limit",
            FaultKind::Delay(_) => "delay",
        }
    }
}

/// A fault and how many payments it still affects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// What happens.
    pub kind: FaultKind,
    /// Payments it affects; 0 = every payment until cleared.
    pub count: u32,
}

/// The fee charged to the payer of each payment: `base_msat + amount_msat * ppm / 1_000_000`
/// (rounded down, as LND computes channel fees).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoutingFee {
    /// Fixed part, in millisatoshis.
    pub base_msat: u64,
    /// Proportional part, in parts per million of the amount.
    pub ppm: u64,
}

impl RoutingFee {
    /// The fee for `amount_msat`, saturating at `u64::MAX`.
    pub fn fee_msat(&self, amount_msat: u64) -> u64 {
        let prop = u128::from(amount_msat) * u128::from(self.ppm) / 1_000_000;
        self.base_msat
            .saturating_add(u64::try_from(prop).unwrap_or(u64::MAX))
    }
}

/// What a payer asks its node to pay.
#[derive(Clone, Copy, Debug)]
pub struct PayParams<'a> {
    /// The BOLT11 string.
    pub bolt11: &'a str,
    /// Largest routing fee accepted, in millisatoshis.
    pub fee_limit_msat: u64,
    /// The request's timeout (how long a `Timeout` fault keeps the payment in flight).
    pub timeout: Duration,
}

/// How an in-flight payment ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingOutcome {
    /// Settle (if the invoice is still payable then).
    Proceed,
    /// Fail with `FAILURE_REASON_TIMEOUT`.
    TimeOut,
}

/// A payment left IN_FLIGHT by [`Ledger::begin_payment`]: call [`Ledger::resolve_payment`]
/// after `after` (what [`start_payment`] does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingPayment {
    /// The payment.
    pub id: PaymentId,
    /// How long it stays in flight.
    pub after: Duration,
}

/// The current Unix time.
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

fn unix_ns(t: Duration) -> u64 {
    u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
}

/// Locks a shared ledger. Ledger operations check everything before mutating, so the state is
/// consistent even if a thread panicked while holding the lock: poisoning is ignored.
pub fn lock_ledger(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|p| p.into_inner())
}

/// Number of payment hashes with more than one SUCCEEDED payment, given the hashes of all
/// succeeded payments. A correct node refuses to pay a settled invoice, so this must be 0; it
/// is the cross-check simnet reports.
pub fn double_payments<H: Eq + std::hash::Hash>(
    succeeded_hashes: impl IntoIterator<Item = H>,
) -> u64 {
    let mut seen: HashMap<H, u32> = HashMap::new();
    for h in succeeded_hashes {
        *seen.entry(h).or_default() += 1;
    }
    seen.values().filter(|n| **n > 1).count() as u64
}

/// Index of a node in the ledger.
pub type NodeId = usize;

/// Why a ledger operation was refused outright (as opposed to a FAILED payment).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The request is malformed (bad payment request, wrong network, bad field lengths).
    #[error("{0}")]
    InvalidArgument(String),
    /// This payer already paid this invoice.
    #[error("invoice is already paid")]
    AlreadyPaid,
    /// This payer has a payment for this hash in flight (LND: `ErrPaymentInFlight`).
    #[error("payment is in transition")]
    PaymentInFlight,
    /// An invoice with this payment hash already exists.
    #[error("invoice with payment hash already exists")]
    DuplicateInvoice,
    /// No such invoice or payment.
    #[error("{0}")]
    NotFound(String),
    /// Node set-up was invalid (names, balances).
    #[error("invalid node spec: {0}")]
    InvalidNode(String),
    /// Randomness or invoice signing failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A virtual Lightning node.
#[derive(Debug)]
pub struct SimNode {
    /// Name (alias), also the directory of its macaroon.
    pub name: String,
    secret_key: SecretKey,
    /// Identity key.
    pub pubkey: PublicKey,
    /// Bearer credential selecting this node (raw bytes; sent hex-encoded).
    pub macaroon: Vec<u8>,
    /// Spendable balance, in millisatoshis.
    pub balance_msat: u64,
    next_add_index: u64,
    next_settle_index: u64,
    next_payment_index: u64,
    /// Injected faults for this node's payments, consumed front first.
    faults: VecDeque<Fault>,
}

/// An invoice and its state.
#[derive(Debug, Clone)]
pub struct InvoiceRecord {
    /// Node that issued it.
    pub payee: NodeId,
    /// Signed BOLT11 string.
    pub bolt11: String,
    /// `sha256(preimage)`.
    pub payment_hash: [u8; 32],
    /// Secret released on settlement.
    pub preimage: [u8; 32],
    /// BOLT11 payment secret.
    pub payment_addr: [u8; 32],
    /// Requested amount (0 = any amount).
    pub value_msat: u64,
    /// Free-text memo (in the invoice when there is no description hash).
    pub memo: String,
    /// Committed description hash, if any.
    pub description_hash: Option<[u8; 32]>,
    /// Unix seconds.
    pub creation_date: u64,
    /// Seconds after `creation_date` until expiry.
    pub expiry: u64,
    /// Final CLTV delta.
    pub cltv_expiry: u64,
    /// Payee's add index.
    pub add_index: u64,
    /// Payee's settle index (0 until settled).
    pub settle_index: u64,
    /// Current state.
    pub state: InvoiceState,
    /// Unix seconds of settlement (0 until settled).
    pub settle_date: u64,
    /// Amount received.
    pub amt_paid_msat: u64,
    /// Node that paid it, once settled.
    pub paid_by: Option<NodeId>,
}

impl InvoiceRecord {
    /// The invoice as LND's `lnrpc.Invoice`.
    // LND still fills the deprecated fields for old clients; so do we.
    #[allow(deprecated)]
    pub fn to_proto(&self) -> lnrpc::Invoice {
        let settled = self.state == InvoiceState::Settled;
        lnrpc::Invoice {
            memo: self.memo.clone(),
            r_preimage: self.preimage.to_vec(),
            r_hash: self.payment_hash.to_vec(),
            value: sat_floor(self.value_msat),
            value_msat: clamp_i64(self.value_msat),
            settled,
            creation_date: clamp_i64(self.creation_date),
            settle_date: clamp_i64(self.settle_date),
            payment_request: self.bolt11.clone(),
            description_hash: self
                .description_hash
                .map(|h| h.to_vec())
                .unwrap_or_default(),
            expiry: clamp_i64(self.expiry),
            cltv_expiry: self.cltv_expiry,
            add_index: self.add_index,
            settle_index: self.settle_index,
            amt_paid: sat_floor(self.amt_paid_msat),
            amt_paid_sat: sat_floor(self.amt_paid_msat),
            amt_paid_msat: clamp_i64(self.amt_paid_msat),
            state: self.state as i32,
            payment_addr: self.payment_addr.to_vec(),
            ..Default::default()
        }
    }

    fn expired_at(&self, now_secs: u64) -> bool {
        self.creation_date.saturating_add(self.expiry) <= now_secs
    }
}

/// An outgoing payment attempt and its state.
#[derive(Debug, Clone)]
pub struct PaymentRecord {
    /// Ledger-wide id (position in [`Ledger::all_payments`]).
    pub id: PaymentId,
    /// Paying node.
    pub payer: NodeId,
    /// The invoice's payee, when it is a node of this ledger.
    pub payee: Option<NodeId>,
    /// Hash paid.
    pub payment_hash: [u8; 32],
    /// Released preimage (successful payments only).
    pub preimage: Option<[u8; 32]>,
    /// Amount sent.
    pub value_msat: u64,
    /// Routing fee: reserved while in flight, charged when succeeded, 0 when failed.
    pub fee_msat: u64,
    /// The fee limit the payer asked for.
    pub fee_limit_msat: u64,
    /// The BOLT11 string paid.
    pub payment_request: String,
    /// `InFlight`, `Succeeded` or `Failed`.
    pub status: PaymentStatus,
    /// `FailureReasonNone` unless failed.
    pub failure_reason: PaymentFailureReason,
    /// Unix nanoseconds.
    pub creation_time_ns: u64,
    /// Unix nanoseconds of the final state; `None` while in flight.
    pub resolved_time_ns: Option<u64>,
    /// Why the simulator decided as it did ("fee over limit", "injected fault: timeout", ...);
    /// empty for an ordinary success.
    pub note: String,
    /// Payer's payment index.
    pub payment_index: u64,
}

impl PaymentRecord {
    /// The payment as LND's `lnrpc.Payment`.
    // LND still fills the deprecated fields for old clients; so do we.
    #[allow(deprecated)]
    pub fn to_proto(&self) -> lnrpc::Payment {
        lnrpc::Payment {
            payment_hash: hex::encode(self.payment_hash),
            value: sat_floor(self.value_msat),
            creation_date: clamp_i64(self.creation_time_ns / 1_000_000_000),
            fee: sat_floor(self.fee_msat),
            payment_preimage: self.preimage.map(hex::encode).unwrap_or_default(),
            value_sat: sat_floor(self.value_msat),
            value_msat: clamp_i64(self.value_msat),
            payment_request: self.payment_request.clone(),
            status: self.status as i32,
            fee_sat: sat_floor(self.fee_msat),
            fee_msat: clamp_i64(self.fee_msat),
            creation_time_ns: clamp_i64(self.creation_time_ns),
            payment_index: self.payment_index,
            failure_reason: self.failure_reason as i32,
        }
    }

    /// True once SUCCEEDED or FAILED.
    pub fn is_final(&self) -> bool {
        self.status != PaymentStatus::InFlight
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn sat_floor(msat: u64) -> i64 {
    clamp_i64(msat / 1000)
}

/// An invoice was added or settled (sent to `SubscribeInvoices` streams).
#[derive(Debug, Clone)]
pub struct InvoiceEvent {
    /// The invoice's payee.
    pub node: NodeId,
    /// Its state after the event.
    pub invoice: InvoiceRecord,
}

/// What `AddInvoice` asked for, already validated for field lengths.
#[derive(Debug, Clone, Default)]
pub struct NewInvoice {
    /// Amount (0 = any amount).
    pub value_msat: u64,
    /// Memo.
    pub memo: String,
    /// Description hash.
    pub description_hash: Option<[u8; 32]>,
    /// Expiry seconds (0 = default).
    pub expiry: u64,
    /// Final CLTV delta (0 = default).
    pub cltv_expiry: u64,
    /// Caller-chosen preimage, else random.
    pub preimage: Option<[u8; 32]>,
}

/// All simulated nodes and their shared payment state.
pub struct Ledger {
    nodes: Vec<SimNode>,
    invoices: HashMap<[u8; 32], InvoiceRecord>,
    payments: Vec<PaymentRecord>,
    /// How each in-flight payment ends when resolved.
    pending: HashMap<PaymentId, PendingOutcome>,
    events: broadcast::Sender<InvoiceEvent>,
    payment_events: broadcast::Sender<PaymentRecord>,
    routing_fee: RoutingFee,
    duplicate_attempts: u64,
    secp: Secp256k1<All>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("nodes", &self.nodes.len())
            .field("invoices", &self.invoices.len())
            .field("payments", &self.payments.len())
            .finish()
    }
}

fn random32() -> Result<[u8; 32], LedgerError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| LedgerError::Internal(format!("OS RNG: {e}")))?;
    Ok(b)
}

/// Checks a node name is usable as a directory name and an alias.
pub fn validate_node_name(name: &str) -> Result<(), LedgerError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(LedgerError::InvalidNode(format!(
            "name {name:?} must be 1-32 chars of [A-Za-z0-9_-]"
        )))
    }
}

impl Ledger {
    /// Creates one node per `(name, balance_sat)` with a fresh random key and macaroon.
    ///
    /// # Errors
    /// [`LedgerError::InvalidNode`] for an empty list, a bad or duplicate name, or a balance
    /// that overflows msat; [`LedgerError::Internal`] if the OS RNG fails.
    pub fn new(specs: &[(String, u64)]) -> Result<Ledger, LedgerError> {
        if specs.is_empty() {
            return Err(LedgerError::InvalidNode(
                "at least one node is needed".into(),
            ));
        }
        let secp = Secp256k1::new();
        let mut nodes: Vec<SimNode> = Vec::with_capacity(specs.len());
        for (name, balance_sat) in specs {
            validate_node_name(name)?;
            if nodes.iter().any(|n| &n.name == name) {
                return Err(LedgerError::InvalidNode(format!("duplicate name {name:?}")));
            }
            let balance_msat = balance_sat.checked_mul(1000).ok_or_else(|| {
                LedgerError::InvalidNode(format!("balance of {name:?} is too large"))
            })?;
            // A random 32-byte string is a valid key except with negligible probability.
            let secret_key = loop {
                if let Ok(k) = SecretKey::from_slice(&random32()?) {
                    break k;
                }
            };
            nodes.push(SimNode {
                name: name.clone(),
                pubkey: PublicKey::from_secret_key(&secp, &secret_key),
                secret_key,
                macaroon: random32()?.to_vec(),
                balance_msat,
                next_add_index: 1,
                next_settle_index: 1,
                next_payment_index: 1,
                faults: VecDeque::new(),
            });
        }
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let (payment_events, _) = broadcast::channel(EVENT_CAPACITY);
        Ok(Ledger {
            nodes,
            invoices: HashMap::new(),
            payments: Vec::new(),
            pending: HashMap::new(),
            events,
            payment_events,
            routing_fee: RoutingFee::default(),
            duplicate_attempts: 0,
            secp,
        })
    }

    /// All nodes, in creation order (a node's [`NodeId`] is its position).
    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }

    /// The node with this id.
    ///
    /// # Panics
    /// If `id` did not come from this ledger.
    pub fn node(&self, id: NodeId) -> &SimNode {
        &self.nodes[id]
    }

    /// The node whose macaroon is exactly `macaroon`.
    pub fn node_by_macaroon(&self, macaroon: &[u8]) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.macaroon == macaroon)
    }

    /// The node with this name.
    pub fn node_by_name(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Creates and signs a BOLT11 invoice (regtest) for `node`.
    ///
    /// # Errors
    /// [`LedgerError::DuplicateInvoice`] if the preimage was used before;
    /// [`LedgerError::Internal`] if the RNG or signing fails.
    pub fn add_invoice(
        &mut self,
        node: NodeId,
        req: NewInvoice,
        now: Duration,
    ) -> Result<InvoiceRecord, LedgerError> {
        let preimage = match req.preimage {
            Some(p) => p,
            None => random32()?,
        };
        let payment_hash = sha256::Hash::hash(&preimage).to_byte_array();
        if self.invoices.contains_key(&payment_hash) {
            return Err(LedgerError::DuplicateInvoice);
        }
        let payment_addr = random32()?;
        let expiry = if req.expiry == 0 {
            DEFAULT_EXPIRY_SECS
        } else {
            req.expiry
        };
        let cltv_expiry = if req.cltv_expiry == 0 {
            DEFAULT_CLTV_EXPIRY
        } else {
            req.cltv_expiry
        };
        let creation_date = now.as_secs();

        let n = &self.nodes[node];
        let mut builder = InvoiceBuilder::new(Currency::Regtest)
            .expiry_time(Duration::from_secs(expiry))
            .payee_pub_key(n.pubkey);
        if req.value_msat > 0 {
            builder = builder.amount_milli_satoshis(req.value_msat);
        }
        let secp = &self.secp;
        let sk = &n.secret_key;
        // The description kind changes the builder's type, hence the duplicated tail.
        let signed = match req.description_hash {
            Some(h) => builder
                .description_hash(sha256::Hash::from_byte_array(h))
                .payment_hash(sha256::Hash::from_byte_array(payment_hash))
                .payment_secret(PaymentSecret(payment_addr))
                .duration_since_epoch(Duration::from_secs(creation_date))
                .min_final_cltv_expiry_delta(cltv_expiry)
                .build_signed(|m| secp.sign_ecdsa_recoverable(m, sk)),
            None => builder
                .description(req.memo.clone())
                .payment_hash(sha256::Hash::from_byte_array(payment_hash))
                .payment_secret(PaymentSecret(payment_addr))
                .duration_since_epoch(Duration::from_secs(creation_date))
                .min_final_cltv_expiry_delta(cltv_expiry)
                .build_signed(|m| secp.sign_ecdsa_recoverable(m, sk)),
        }
        .map_err(|e| LedgerError::Internal(format!("building invoice: {e}")))?;

        let n = &mut self.nodes[node];
        let add_index = n.next_add_index;
        n.next_add_index += 1;
        let record = InvoiceRecord {
            payee: node,
            bolt11: signed.to_string(),
            payment_hash,
            preimage,
            payment_addr,
            value_msat: req.value_msat,
            memo: req.memo,
            description_hash: req.description_hash,
            creation_date,
            expiry,
            cltv_expiry,
            add_index,
            settle_index: 0,
            state: InvoiceState::Open,
            settle_date: 0,
            amt_paid_msat: 0,
            paid_by: None,
        };
        self.invoices.insert(payment_hash, record.clone());
        self.emit(node, &record);
        Ok(record)
    }

    fn emit(&self, node: NodeId, record: &InvoiceRecord) {
        // No subscribers is the normal case; the error only means nobody is listening.
        let _ = self.events.send(InvoiceEvent {
            node,
            invoice: record.clone(),
        });
    }

    /// One of `node`'s own invoices (another node's invoice is "not found", as in LND).
    pub fn lookup_invoice(&self, node: NodeId, payment_hash: &[u8; 32]) -> Option<&InvoiceRecord> {
        self.invoices
            .get(payment_hash)
            .filter(|inv| inv.payee == node)
    }

    /// Subscribes to `node`'s invoice events, returning the backlog LND would replay first:
    /// invoices with `add_index > add_index` and settled ones with `settle_index >
    /// settle_index` (each only when the given index is non-zero).
    pub fn subscribe(
        &self,
        node: NodeId,
        add_index: u64,
        settle_index: u64,
    ) -> (Vec<InvoiceRecord>, broadcast::Receiver<InvoiceEvent>) {
        let mine = || self.invoices.values().filter(move |i| i.payee == node);
        let mut added: Vec<InvoiceRecord> = if add_index > 0 {
            mine()
                .filter(|i| i.add_index > add_index)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        added.sort_by_key(|i| i.add_index);
        let mut settled: Vec<InvoiceRecord> = if settle_index > 0 {
            mine()
                .filter(|i| i.settle_index > settle_index)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        settled.sort_by_key(|i| i.settle_index);
        added.extend(settled);
        (added, self.events.subscribe())
    }

    /// `node`'s payments in index order.
    pub fn payments_of(&self, node: NodeId) -> impl Iterator<Item = &PaymentRecord> {
        self.payments.iter().filter(move |p| p.payer == node)
    }

    /// `node`'s most recent payment attempt for `payment_hash`.
    pub fn latest_payment(&self, node: NodeId, payment_hash: &[u8; 32]) -> Option<&PaymentRecord> {
        self.payments_of(node)
            .filter(|p| &p.payment_hash == payment_hash)
            .last()
    }

    /// Every payment of every node, oldest first.
    pub fn all_payments(&self) -> &[PaymentRecord] {
        &self.payments
    }

    /// The payment with this id.
    pub fn payment(&self, id: PaymentId) -> Option<&PaymentRecord> {
        self.payments.get(id)
    }

    /// Attempts to pay a hash that was already paid: refused as [`LedgerError::AlreadyPaid`],
    /// or failed because the invoice had been settled (by another payer, or meanwhile).
    pub fn duplicate_attempts(&self) -> u64 {
        self.duplicate_attempts
    }

    /// Payment hashes with more than one SUCCEEDED payment (see [`double_payments`]).
    pub fn double_payments(&self) -> u64 {
        double_payments(
            self.payments
                .iter()
                .filter(|p| p.status == PaymentStatus::Succeeded)
                .map(|p| p.payment_hash),
        )
    }

    /// Subscribes to payment updates: every new payment and every resolution.
    pub fn subscribe_payments(&self) -> broadcast::Receiver<PaymentRecord> {
        self.payment_events.subscribe()
    }

    /// The routing fee charged from now on.
    pub fn routing_fee(&self) -> RoutingFee {
        self.routing_fee
    }

    /// Sets the routing fee for later payments (in-flight ones keep theirs).
    pub fn set_routing_fee(&mut self, fee: RoutingFee) {
        self.routing_fee = fee;
    }

    /// Adds a fault for `node`'s later payments, after any faults already set.
    pub fn add_fault(&mut self, node: NodeId, fault: Fault) {
        self.nodes[node].faults.push_back(fault);
    }

    /// Removes the faults of `node`, or of every node when `None`.
    pub fn clear_faults(&mut self, node: Option<NodeId>) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if node.is_none_or(|id| id == i) {
                n.faults.clear();
            }
        }
    }

    /// The faults still set for `node`.
    pub fn faults(&self, node: NodeId) -> impl Iterator<Item = &Fault> {
        self.nodes[node].faults.iter()
    }

    /// Consumes one use of `node`'s first fault.
    fn take_fault(&mut self, node: NodeId) -> Option<FaultKind> {
        let faults = &mut self.nodes[node].faults;
        let first = faults.front_mut()?;
        let kind = first.kind;
        match first.count {
            0 => {}
            1 => {
                faults.pop_front();
            }
            _ => first.count -= 1,
        }
        Some(kind)
    }

    /// Pays `bolt11` from `payer` with no fee limit and a 60 s timeout; see
    /// [`Ledger::begin_payment`]. Without faults the returned record is final.
    ///
    /// # Errors
    /// As [`Ledger::begin_payment`].
    pub fn pay(
        &mut self,
        payer: NodeId,
        bolt11: &str,
        now: Duration,
    ) -> Result<PaymentRecord, LedgerError> {
        let params = PayParams {
            bolt11,
            fee_limit_msat: u64::MAX,
            timeout: Duration::from_secs(60),
        };
        self.begin_payment(payer, params, now).map(|(r, _)| r)
    }

    /// Starts paying `params.bolt11` from `payer`. See the module docs for the rules.
    ///
    /// Returns the recorded payment (SUCCEEDED, FAILED, or IN_FLIGHT with amount and fee
    /// reserved) and, when in flight, when to call [`Ledger::resolve_payment`].
    ///
    /// # Errors
    /// [`LedgerError::InvalidArgument`] for an unparsable, non-regtest or amount-less invoice;
    /// [`LedgerError::AlreadyPaid`] if `payer` already paid it;
    /// [`LedgerError::PaymentInFlight`] if `payer` is paying it right now. None is recorded
    /// as a payment, and none consumes a fault.
    pub fn begin_payment(
        &mut self,
        payer: NodeId,
        params: PayParams<'_>,
        now: Duration,
    ) -> Result<(PaymentRecord, Option<PendingPayment>), LedgerError> {
        let bolt11 = params.bolt11.trim();
        let invoice = Bolt11Invoice::from_str(bolt11)
            .map_err(|e| LedgerError::InvalidArgument(format!("invalid payment request: {e}")))?;
        if invoice.currency() != Currency::Regtest {
            return Err(LedgerError::InvalidArgument(
                "invoice not for current active network 'regtest'".into(),
            ));
        }
        let value_msat = invoice.amount_milli_satoshis().ok_or_else(|| {
            LedgerError::InvalidArgument(
                "amount must be specified when paying a zero amount invoice".into(),
            )
        })?;
        let payment_hash = invoice.payment_hash().to_byte_array();
        let mine = |p: &&PaymentRecord| p.payer == payer && p.payment_hash == payment_hash;
        if self
            .payments
            .iter()
            .filter(mine)
            .any(|p| p.status == PaymentStatus::Succeeded)
        {
            self.duplicate_attempts += 1;
            return Err(LedgerError::AlreadyPaid);
        }
        if self
            .payments
            .iter()
            .filter(mine)
            .any(|p| p.status == PaymentStatus::InFlight)
        {
            return Err(LedgerError::PaymentInFlight);
        }

        let payee_key = invoice.get_payee_pub_key();
        let payee = self.nodes.iter().position(|n| n.pubkey == payee_key);
        if self
            .invoices
            .get(&payment_hash)
            .is_some_and(|i| i.state == InvoiceState::Settled)
        {
            self.duplicate_attempts += 1;
        }
        let fault = self.take_fault(payer);
        let fee_msat = self.routing_fee.fee_msat(value_msat);
        // The reasons, in the order LND would hit them: route, payee's answer (here checked
        // up front), fee limit, balance.
        let decision: Result<(), (PaymentFailureReason, String)> = match payee {
            None => Err((NoRoute, "payee is not a node of this simulator".into())),
            Some(p) if p == payer => Err((NoRoute, "self-payment".into())),
            Some(_) if fault == Some(FaultKind::NoRoute) => {
                Err((NoRoute, "injected fault: no_route".into()))
            }
            Some(p) if !self.payable(p, &payment_hash, value_msat, now) => Err((
                PaymentFailureReason::FailureReasonIncorrectPaymentDetails,
                String::new(),
            )),
            Some(_) if fault == Some(FaultKind::FeeOverLimit) => Err((
                NoRoute,
                "fee over limit (injected fault: fee_over_limit)".into(),
            )),
            Some(_) if fee_msat > params.fee_limit_msat => Err((
                NoRoute,
                format!(
                    "fee over limit: {fee_msat} msat > {} msat",
                    params.fee_limit_msat
                ),
            )),
            Some(_) if self.nodes[payer].balance_msat < value_msat.saturating_add(fee_msat) => {
                Err((
                    PaymentFailureReason::FailureReasonInsufficientBalance,
                    String::new(),
                ))
            }
            Some(_) => Ok(()),
        };

        let payer_node = &mut self.nodes[payer];
        let payment_index = payer_node.next_payment_index;
        payer_node.next_payment_index += 1;
        let id = self.payments.len();
        let mut record = PaymentRecord {
            id,
            payer,
            payee,
            payment_hash,
            preimage: None,
            value_msat,
            fee_msat: 0,
            fee_limit_msat: params.fee_limit_msat,
            payment_request: bolt11.to_owned(),
            status: PaymentStatus::InFlight,
            failure_reason: PaymentFailureReason::FailureReasonNone,
            creation_time_ns: unix_ns(now),
            resolved_time_ns: None,
            note: String::new(),
            payment_index,
        };
        if let Err((reason, note)) = decision {
            record.status = PaymentStatus::Failed;
            record.failure_reason = reason;
            record.resolved_time_ns = Some(unix_ns(now));
            record.note = note;
            self.push_payment(record.clone());
            return Ok((record, None));
        }

        // Reserve amount and fee (checked above that the balance covers both).
        self.nodes[payer].balance_msat -= value_msat + fee_msat;
        record.fee_msat = fee_msat;
        let pending = match fault {
            Some(FaultKind::Timeout) => {
                record.note = "injected fault: timeout".into();
                Some((PendingOutcome::TimeOut, params.timeout))
            }
            Some(FaultKind::Delay(d)) => {
                record.note = format!("injected fault: delay {} ms", d.as_millis());
                Some((PendingOutcome::Proceed, d))
            }
            _ => None,
        };
        self.push_payment(record);
        match pending {
            Some((outcome, after)) => {
                self.pending.insert(id, outcome);
                Ok((
                    self.payments[id].clone(),
                    Some(PendingPayment { id, after }),
                ))
            }
            None => {
                self.pending.insert(id, PendingOutcome::Proceed);
                let done = self
                    .resolve_payment(id, now)
                    .expect("payment just recorded");
                Ok((done, None))
            }
        }
    }

    /// Whether `payee`'s invoice `hash` accepts `value_msat` now.
    fn payable(&self, payee: NodeId, hash: &[u8; 32], value_msat: u64, now: Duration) -> bool {
        self.invoices.get(hash).is_some_and(|inv| {
            inv.payee == payee
                && inv.state == InvoiceState::Open
                && !inv.expired_at(now.as_secs())
                && value_msat >= inv.value_msat
        })
    }

    fn push_payment(&mut self, record: PaymentRecord) {
        // No subscribers is the normal case.
        let _ = self.payment_events.send(record.clone());
        self.payments.push(record);
    }

    /// Finishes the in-flight payment `id` as decided when it began: settles it (if the
    /// invoice is still payable at `now`; else FAILED with
    /// `FAILURE_REASON_INCORRECT_PAYMENT_DETAILS`) or times it out
    /// (`FAILURE_REASON_TIMEOUT`). A failure refunds the reservation. Calling it again, or on
    /// a final payment, changes nothing.
    ///
    /// Returns the payment's record, or `None` for an unknown id.
    pub fn resolve_payment(&mut self, id: PaymentId, now: Duration) -> Option<PaymentRecord> {
        let record = self.payments.get(id)?.clone();
        let Some(outcome) = self.pending.remove(&id) else {
            return Some(record);
        };
        let mut record = record;
        let payee = record
            .payee
            .expect("only payments to a known payee go in flight");
        let refund = |l: &mut Ledger, r: &mut PaymentRecord, reason, note: &str| {
            let n = &mut l.nodes[r.payer];
            n.balance_msat = n.balance_msat.saturating_add(r.value_msat + r.fee_msat);
            r.fee_msat = 0;
            r.status = PaymentStatus::Failed;
            r.failure_reason = reason;
            if !note.is_empty() {
                if !r.note.is_empty() {
                    r.note.push_str("; ");
                }
                r.note.push_str(note);
            }
        };
        match outcome {
            PendingOutcome::TimeOut => refund(
                self,
                &mut record,
                PaymentFailureReason::FailureReasonTimeout,
                "",
            ),
            PendingOutcome::Proceed
                if !self.payable(payee, &record.payment_hash, record.value_msat, now) =>
            {
                let settled = self
                    .invoices
                    .get(&record.payment_hash)
                    .is_some_and(|i| i.state == InvoiceState::Settled);
                if settled {
                    self.duplicate_attempts += 1;
                }
                refund(
                    self,
                    &mut record,
                    PaymentFailureReason::FailureReasonIncorrectPaymentDetails,
                    "invoice no longer payable when the payment arrived",
                )
            }
            PendingOutcome::Proceed => {
                // The payee's balance cannot overflow in practice (21e6 BTC is ~2^61 msat),
                // but saturate rather than wrap.
                let payee_node = &mut self.nodes[payee];
                payee_node.balance_msat = payee_node.balance_msat.saturating_add(record.value_msat);
                let settle_index = payee_node.next_settle_index;
                payee_node.next_settle_index += 1;
                let inv = self
                    .invoices
                    .get_mut(&record.payment_hash)
                    .expect("payable() found the invoice");
                inv.state = InvoiceState::Settled;
                inv.settle_index = settle_index;
                inv.settle_date = now.as_secs();
                inv.amt_paid_msat = record.value_msat;
                inv.paid_by = Some(record.payer);
                record.preimage = Some(inv.preimage);
                record.status = PaymentStatus::Succeeded;
                let settled = inv.clone();
                self.emit(payee, &settled);
            }
        }
        record.resolved_time_ns = Some(unix_ns(now));
        self.payments[id] = record.clone();
        let _ = self.payment_events.send(record.clone());
        Some(record)
    }
}

/// Starts a payment on a shared ledger ([`Ledger::begin_payment`]) and, if it stays in
/// flight, resolves it later from a task of its own: on the current tokio runtime if there is
/// one, else on a thread. The payment therefore completes even if the caller (or its client
/// connection) goes away.
///
/// # Errors
/// As [`Ledger::begin_payment`].
pub fn start_payment(
    ledger: &Arc<Mutex<Ledger>>,
    payer: NodeId,
    params: PayParams<'_>,
) -> Result<PaymentRecord, LedgerError> {
    let (record, pending) = lock_ledger(ledger).begin_payment(payer, params, unix_now())?;
    if let Some(p) = pending {
        let ledger = ledger.clone();
        let resolve = move || {
            if let Some(r) = lock_ledger(&ledger).resolve_payment(p.id, unix_now()) {
                tracing::debug!(
                    id = p.id,
                    status = r.status.as_str_name(),
                    "in-flight payment resolved"
                );
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(p.after).await;
                    resolve();
                });
            }
            Err(_) => {
                std::thread::spawn(move || {
                    std::thread::sleep(p.after);
                    resolve();
                });
            }
        }
    }
    Ok(record)
}

/// Waits until payment `id` is final and returns it (at once if it already is).
///
/// Returns `None` for an unknown id.
pub async fn wait_final(ledger: &Mutex<Ledger>, id: PaymentId) -> Option<PaymentRecord> {
    loop {
        // Subscribe and read under one lock so the resolution cannot slip in between.
        let mut rx = {
            let l = lock_ledger(ledger);
            let current = l.payment(id)?;
            if current.is_final() {
                return Some(current.clone());
            }
            l.subscribe_payments()
        };
        loop {
            match rx.recv().await {
                Ok(r) if r.id == id && r.is_final() => return Some(r),
                Ok(_) => continue,
                // Missed events: re-read the ledger.
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                // The ledger (which owns the sender) is alive while we hold a reference, so
                // this cannot happen; re-reading is still the safe answer.
                Err(broadcast::error::RecvError::Closed) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    break;
                }
            }
        }
    }
}

use PaymentFailureReason::FailureReasonNoRoute as NoRoute;

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::from_secs(1_700_000_000);

    fn ledger() -> Ledger {
        Ledger::new(&[("alice".into(), 1_000), ("bob".into(), 50)]).expect("ledger")
    }

    fn invoice(l: &mut Ledger, node: NodeId, msat: u64) -> InvoiceRecord {
        l.add_invoice(
            node,
            NewInvoice {
                value_msat: msat,
                description_hash: Some([4; 32]),
                ..Default::default()
            },
            NOW,
        )
        .expect("invoice")
    }

    #[test]
    fn rejects_bad_node_specs() {
        assert!(Ledger::new(&[]).is_err());
        assert!(Ledger::new(&[("a".into(), 1), ("a".into(), 2)]).is_err());
        assert!(Ledger::new(&[("../x".into(), 1)]).is_err());
        assert!(Ledger::new(&[("a".into(), u64::MAX)]).is_err());
    }

    #[test]
    fn nodes_have_distinct_keys_and_macaroons() {
        let l = ledger();
        assert_ne!(l.node(0).pubkey, l.node(1).pubkey);
        assert_ne!(l.node(0).macaroon, l.node(1).macaroon);
        assert_eq!(l.node_by_macaroon(&l.node(1).macaroon.clone()), Some(1));
        assert_eq!(l.node_by_macaroon(b"nope"), None);
        assert_eq!(l.node(0).balance_msat, 1_000_000);
    }

    #[test]
    fn invoice_is_real_signed_regtest_bolt11() {
        let mut l = ledger();
        let rec = invoice(&mut l, 1, 200_000);
        let parsed: Bolt11Invoice = rec.bolt11.parse().expect("valid bolt11");
        assert_eq!(parsed.currency(), Currency::Regtest);
        assert_eq!(parsed.amount_milli_satoshis(), Some(200_000));
        assert_eq!(parsed.get_payee_pub_key(), l.node(1).pubkey);
        assert_eq!(parsed.payment_hash().to_byte_array(), rec.payment_hash);
        assert_eq!(
            parsed.expiry_time(),
            Duration::from_secs(DEFAULT_EXPIRY_SECS)
        );
        assert_eq!(rec.add_index, 1);
        assert_eq!(invoice(&mut l, 1, 1).add_index, 2);
        // Per-node index sequences.
        assert_eq!(invoice(&mut l, 0, 1).add_index, 1);
    }

    #[test]
    fn duplicate_preimage_refused() {
        let mut l = ledger();
        let req = NewInvoice {
            value_msat: 1,
            preimage: Some([1; 32]),
            ..Default::default()
        };
        l.add_invoice(0, req.clone(), NOW).expect("first");
        assert_eq!(
            l.add_invoice(1, req, NOW).expect_err("dup"),
            LedgerError::DuplicateInvoice
        );
    }

    #[test]
    fn payment_moves_funds_and_settles() {
        let mut l = ledger();
        let inv = invoice(&mut l, 1, 200_000);
        let p = l
            .pay(0, &inv.bolt11, NOW + Duration::from_secs(5))
            .expect("pay");
        assert_eq!(p.status, PaymentStatus::Succeeded);
        assert_eq!(p.preimage, Some(inv.preimage));
        assert_eq!(l.node(0).balance_msat, 1_000_000 - 200_000);
        assert_eq!(l.node(1).balance_msat, 50_000 + 200_000);
        let settled = l.lookup_invoice(1, &inv.payment_hash).expect("found");
        assert_eq!(settled.state, InvoiceState::Settled);
        assert_eq!(settled.amt_paid_msat, 200_000);
        assert_eq!(settled.settle_date, NOW.as_secs() + 5);
        assert_eq!(settled.settle_index, 1);
        // Only the payee can look it up.
        assert!(l.lookup_invoice(0, &inv.payment_hash).is_none());
    }

    #[test]
    fn second_payment_is_already_paid() {
        let mut l = ledger();
        let inv = invoice(&mut l, 1, 1000);
        l.pay(0, &inv.bolt11, NOW).expect("pay");
        assert_eq!(
            l.pay(0, &inv.bolt11, NOW).expect_err("twice"),
            LedgerError::AlreadyPaid
        );
        assert_eq!(l.node(0).balance_msat, 1_000_000 - 1000);
    }

    #[test]
    fn settled_by_someone_else_is_incorrect_details() {
        let mut l =
            Ledger::new(&[("a".into(), 10), ("b".into(), 10), ("c".into(), 10)]).expect("ledger");
        let inv = invoice(&mut l, 2, 1000);
        l.pay(0, &inv.bolt11, NOW).expect("pay");
        let p = l.pay(1, &inv.bolt11, NOW).expect("recorded");
        assert_eq!(p.status, PaymentStatus::Failed);
        assert_eq!(
            p.failure_reason,
            PaymentFailureReason::FailureReasonIncorrectPaymentDetails
        );
        assert_eq!(l.node(1).balance_msat, 10_000);
    }

    #[test]
    fn insufficient_balance_fails_and_moves_nothing() {
        let mut l = ledger();
        let inv = invoice(&mut l, 0, 60_000);
        let p = l.pay(1, &inv.bolt11, NOW).expect("recorded");
        assert_eq!(p.status, PaymentStatus::Failed);
        assert_eq!(
            p.failure_reason,
            PaymentFailureReason::FailureReasonInsufficientBalance
        );
        assert_eq!(l.node(1).balance_msat, 50_000);
        assert_eq!(l.node(0).balance_msat, 1_000_000);
        assert_eq!(
            l.lookup_invoice(0, &inv.payment_hash).expect("found").state,
            InvoiceState::Open
        );
        // A failed attempt does not block a later retry.
        assert_eq!(
            l.latest_payment(1, &inv.payment_hash)
                .map(|p| p.payment_index),
            Some(1)
        );
    }

    #[test]
    fn expired_invoice_fails_with_incorrect_details() {
        let mut l = ledger();
        let inv = invoice(&mut l, 1, 1000);
        let later = NOW + Duration::from_secs(DEFAULT_EXPIRY_SECS);
        let p = l.pay(0, &inv.bolt11, later).expect("recorded");
        assert_eq!(
            p.failure_reason,
            PaymentFailureReason::FailureReasonIncorrectPaymentDetails
        );
        assert_eq!(l.node(0).balance_msat, 1_000_000);
    }

    #[test]
    fn self_payment_and_unknown_payee_have_no_route() {
        let mut l = ledger();
        let inv = invoice(&mut l, 0, 1000);
        let p = l.pay(0, &inv.bolt11, NOW).expect("recorded");
        assert_eq!(p.failure_reason, PaymentFailureReason::FailureReasonNoRoute);

        // An invoice from a node outside this simulator.
        let mut other = ledger();
        let foreign = invoice(&mut other, 0, 1000);
        let p = l.pay(1, &foreign.bolt11, NOW).expect("recorded");
        assert_eq!(p.failure_reason, PaymentFailureReason::FailureReasonNoRoute);
        assert_eq!(l.node(1).balance_msat, 50_000);
    }

    #[test]
    fn malformed_and_amountless_requests_are_errors() {
        let mut l = ledger();
        assert!(matches!(
            l.pay(0, "lnbcrt1nonsense", NOW),
            Err(LedgerError::InvalidArgument(_))
        ));
        let any = invoice(&mut l, 1, 0);
        assert!(matches!(
            l.pay(0, &any.bolt11, NOW),
            Err(LedgerError::InvalidArgument(_))
        ));
        assert_eq!(l.payments_of(0).count(), 0);
    }

    #[test]
    fn events_and_backlog() {
        let mut l = ledger();
        let first = invoice(&mut l, 1, 1000);
        let (backlog, mut rx) = l.subscribe(1, 0, 0);
        assert!(backlog.is_empty());
        let second = invoice(&mut l, 1, 2000);
        l.pay(0, &first.bolt11, NOW).expect("pay");
        let ev = rx.try_recv().expect("add event");
        assert_eq!(ev.invoice.payment_hash, second.payment_hash);
        let ev = rx.try_recv().expect("settle event");
        assert_eq!(ev.invoice.state, InvoiceState::Settled);
        assert_eq!(ev.node, 1);

        let (backlog, _) = l.subscribe(1, 1, 0);
        assert_eq!(backlog.len(), 1);
        assert_eq!(backlog[0].payment_hash, second.payment_hash);
        let (backlog, _) = l.subscribe(1, 0, 0);
        assert!(backlog.is_empty());
    }

    #[test]
    fn proto_conversion_carries_lnd_fields() {
        let mut l = ledger();
        let inv = invoice(&mut l, 1, 234_567);
        let p = inv.to_proto();
        assert_eq!(p.value_msat, 234_567);
        assert_eq!(p.value, 234);
        assert_eq!(p.r_hash, inv.payment_hash.to_vec());
        assert_eq!(p.state, InvoiceState::Open as i32);
        assert_eq!(p.description_hash, vec![4; 32]);
        let pay = l.pay(0, &inv.bolt11, NOW).expect("pay").to_proto();
        assert_eq!(pay.status, PaymentStatus::Succeeded as i32);
        assert_eq!(pay.payment_preimage, hex::encode(inv.preimage));
        assert_eq!(pay.payment_hash, hex::encode(inv.payment_hash));
    }

    fn params(bolt11: &str, fee_limit_msat: u64) -> PayParams<'_> {
        PayParams {
            bolt11,
            fee_limit_msat,
            timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn routing_fee_is_charged_and_limited() {
        let mut l = ledger();
        l.set_routing_fee(RoutingFee {
            base_msat: 1_000,
            ppm: 10_000,
        });
        let inv = invoice(&mut l, 1, 200_000);
        // fee = 1000 + 1% of 200_000 = 3000 msat.
        let (p, pending) = l
            .begin_payment(0, params(&inv.bolt11, 2_999), NOW)
            .expect("recorded");
        assert_eq!(pending, None);
        assert_eq!(p.status, PaymentStatus::Failed);
        assert_eq!(p.failure_reason, PaymentFailureReason::FailureReasonNoRoute);
        assert!(p.note.contains("fee over limit"), "{}", p.note);
        assert_eq!(l.node(0).balance_msat, 1_000_000);

        let (p, _) = l
            .begin_payment(0, params(&inv.bolt11, 3_000), NOW)
            .expect("recorded");
        assert_eq!(p.status, PaymentStatus::Succeeded);
        assert_eq!(p.fee_msat, 3_000);
        assert_eq!(p.to_proto().fee_msat, 3_000);
        assert_eq!(l.node(0).balance_msat, 1_000_000 - 203_000);
        assert_eq!(l.node(1).balance_msat, 50_000 + 200_000);
        assert_eq!(
            RoutingFee {
                base_msat: 0,
                ppm: 1
            }
            .fee_msat(999_999),
            0,
            "proportional part rounds down"
        );
    }

    #[test]
    fn balance_must_cover_amount_and_fee() {
        let mut l = ledger();
        l.set_routing_fee(RoutingFee {
            base_msat: 1,
            ppm: 0,
        });
        let inv = invoice(&mut l, 0, 50_000);
        let (p, _) = l
            .begin_payment(1, params(&inv.bolt11, 10), NOW)
            .expect("recorded");
        assert_eq!(
            p.failure_reason,
            PaymentFailureReason::FailureReasonInsufficientBalance
        );
    }

    #[test]
    fn no_route_and_fee_faults_fail_and_count_down() {
        let mut l = ledger();
        l.add_fault(
            0,
            Fault {
                kind: FaultKind::NoRoute,
                count: 1,
            },
        );
        l.add_fault(
            0,
            Fault {
                kind: FaultKind::FeeOverLimit,
                count: 2,
            },
        );
        let inv = invoice(&mut l, 1, 1_000);
        let first = l
            .begin_payment(0, params(&inv.bolt11, u64::MAX), NOW)
            .expect("1")
            .0;
        assert_eq!(
            first.failure_reason,
            PaymentFailureReason::FailureReasonNoRoute
        );
        assert!(first.note.contains("no_route"));
        for _ in 0..2 {
            let p = l
                .begin_payment(0, params(&inv.bolt11, u64::MAX), NOW)
                .expect("2")
                .0;
            assert_eq!(p.failure_reason, PaymentFailureReason::FailureReasonNoRoute);
            assert!(p.note.contains("fee over limit"), "{}", p.note);
        }
        assert_eq!(l.faults(0).count(), 0);
        let p = l
            .begin_payment(0, params(&inv.bolt11, 0), NOW)
            .expect("3")
            .0;
        assert_eq!(p.status, PaymentStatus::Succeeded);
        // Node 1 was never affected.
        assert_eq!(l.faults(1).count(), 0);
    }

    #[test]
    fn until_cleared_fault_persists() {
        let mut l = ledger();
        l.add_fault(
            0,
            Fault {
                kind: FaultKind::NoRoute,
                count: 0,
            },
        );
        for _ in 0..3 {
            let inv = invoice(&mut l, 1, 1_000);
            let p = l
                .begin_payment(0, params(&inv.bolt11, 0), NOW)
                .expect("p")
                .0;
            assert_eq!(p.status, PaymentStatus::Failed);
        }
        l.clear_faults(Some(0));
        let inv = invoice(&mut l, 1, 1_000);
        assert_eq!(
            l.begin_payment(0, params(&inv.bolt11, 0), NOW)
                .expect("p")
                .0
                .status,
            PaymentStatus::Succeeded
        );
    }

    #[test]
    fn delay_reserves_then_settles() {
        let mut l = ledger();
        let delay = Duration::from_millis(500);
        l.add_fault(
            0,
            Fault {
                kind: FaultKind::Delay(delay),
                count: 1,
            },
        );
        let inv = invoice(&mut l, 1, 100_000);
        let (p, pending) = l
            .begin_payment(0, params(&inv.bolt11, 0), NOW)
            .expect("begin");
        assert_eq!(p.status, PaymentStatus::InFlight);
        assert_eq!(
            pending,
            Some(PendingPayment {
                id: p.id,
                after: delay
            })
        );
        assert_eq!(l.node(0).balance_msat, 900_000, "reserved");
        assert_eq!(l.node(1).balance_msat, 50_000);
        // A second attempt while in flight is refused, not recorded.
        assert_eq!(
            l.begin_payment(0, params(&inv.bolt11, 0), NOW)
                .expect_err("in flight"),
            LedgerError::PaymentInFlight
        );
        assert_eq!(
            l.latest_payment(0, &inv.payment_hash).map(|p| p.id),
            Some(p.id)
        );

        let done = l.resolve_payment(p.id, NOW + delay).expect("known");
        assert_eq!(done.status, PaymentStatus::Succeeded);
        assert_eq!(done.resolved_time_ns, Some(unix_ns(NOW + delay)));
        assert_eq!(l.node(1).balance_msat, 150_000);
        // Idempotent.
        let again = l.resolve_payment(p.id, NOW + delay * 2).expect("known");
        assert_eq!(again.resolved_time_ns, done.resolved_time_ns);
        assert_eq!(l.node(1).balance_msat, 150_000);
        assert!(l.resolve_payment(99, NOW).is_none());
    }

    #[test]
    fn timeout_refunds_with_timeout_reason() {
        let mut l = ledger();
        l.set_routing_fee(RoutingFee {
            base_msat: 7,
            ppm: 0,
        });
        l.add_fault(
            0,
            Fault {
                kind: FaultKind::Timeout,
                count: 1,
            },
        );
        let inv = invoice(&mut l, 1, 1_000);
        let (p, pending) = l
            .begin_payment(0, params(&inv.bolt11, 100), NOW)
            .expect("begin");
        assert_eq!(pending.map(|p| p.after), Some(Duration::from_secs(30)));
        assert_eq!(l.node(0).balance_msat, 1_000_000 - 1_007);
        let done = l.resolve_payment(p.id, NOW).expect("known");
        assert_eq!(
            done.failure_reason,
            PaymentFailureReason::FailureReasonTimeout
        );
        assert_eq!(done.fee_msat, 0);
        assert_eq!(l.node(0).balance_msat, 1_000_000);
        assert_eq!(
            l.lookup_invoice(1, &inv.payment_hash).expect("inv").state,
            InvoiceState::Open
        );
    }

    #[test]
    fn invoice_settled_meanwhile_fails_in_flight_payment() {
        let mut l =
            Ledger::new(&[("a".into(), 10), ("b".into(), 10), ("c".into(), 10)]).expect("ledger");
        l.add_fault(
            0,
            Fault {
                kind: FaultKind::Delay(Duration::from_secs(1)),
                count: 1,
            },
        );
        let inv = invoice(&mut l, 2, 1_000);
        let (slow, _) = l.begin_payment(0, params(&inv.bolt11, 0), NOW).expect("a");
        l.begin_payment(1, params(&inv.bolt11, 0), NOW).expect("b");
        let done = l.resolve_payment(slow.id, NOW).expect("known");
        assert_eq!(
            done.failure_reason,
            PaymentFailureReason::FailureReasonIncorrectPaymentDetails
        );
        assert_eq!(l.node(0).balance_msat, 10_000);
        assert_eq!(l.duplicate_attempts(), 1);
        assert_eq!(l.double_payments(), 0);
    }

    #[test]
    fn duplicates_are_counted() {
        let mut l = ledger();
        let inv = invoice(&mut l, 1, 1_000);
        l.pay(0, &inv.bolt11, NOW).expect("pay");
        assert_eq!(l.duplicate_attempts(), 0);
        l.pay(0, &inv.bolt11, NOW).expect_err("already paid");
        assert_eq!(l.duplicate_attempts(), 1);
        assert_eq!(double_payments([[1u8; 32], [2; 32], [1; 32], [1; 32]]), 1);
        assert_eq!(double_payments(Vec::<u8>::new()), 0);
    }

    // Paused tokio time: the spawned resolver's sleep and the test's sleep below run on the
    // virtual clock, so the order is fixed (the resolver is due first) and nothing waits.
    #[tokio::test(start_paused = true)]
    async fn started_payment_completes_without_a_waiter() {
        let l = Arc::new(Mutex::new(ledger()));
        let delay = Duration::from_millis(50);
        let inv = {
            let mut g = lock_ledger(&l);
            g.add_fault(
                0,
                Fault {
                    kind: FaultKind::Delay(delay),
                    count: 1,
                },
            );
            // start_payment uses the real clock.
            g.add_invoice(
                1,
                NewInvoice {
                    value_msat: 1_000,
                    ..Default::default()
                },
                unix_now(),
            )
            .expect("invoice")
        };
        let started = start_payment(&l, 0, params(&inv.bolt11, 0)).expect("start");
        assert_eq!(started.status, PaymentStatus::InFlight);
        // Nobody waits; the spawned task still settles it when its (virtual) delay is over.
        tokio::time::sleep(delay * 4).await;
        let p = lock_ledger(&l).payment(started.id).cloned().expect("known");
        assert_eq!(p.status, PaymentStatus::Succeeded);
        assert_eq!(
            wait_final(&l, started.id).await.map(|p| p.status),
            Some(PaymentStatus::Succeeded)
        );
        assert!(wait_final(&l, 42).await.is_none());
    }
}
