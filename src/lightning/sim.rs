//! A simulated Lightning network: virtual nodes, their balances, invoices and payments.
//!
//! This is the model behind both `lnd-sim` (the LND-compatible gRPC server in the simnet
//! crate) and the in-memory [`super::testing::MemNode`]. It is pure, synchronous state (callers
//! wrap it in a mutex and pass the clock in), so every payment rule is unit-testable. Invoices
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
//!   - balance below the amount: `FAILURE_REASON_INSUFFICIENT_BALANCE`.
//! - payments are direct: the routing fee is always zero.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use super::proto::lnrpc::{
    self, PaymentFailureReason, invoice::InvoiceState, payment::PaymentStatus,
};
use bitcoin::hashes::{Hash as _, sha256};
use bitcoin::secp256k1::{All, PublicKey, Secp256k1, SecretKey};
use lightning_invoice::{Bolt11Invoice, Currency, InvoiceBuilder, PaymentSecret};
use tokio::sync::broadcast;

/// Default invoice expiry, as in LND and BOLT11.
pub const DEFAULT_EXPIRY_SECS: u64 = 3600;
/// Default final CLTV delta for new invoices (LND's current default).
pub const DEFAULT_CLTV_EXPIRY: u64 = 80;
/// The (fixed) block height every simulated node reports.
pub const SIM_BLOCK_HEIGHT: u32 = 1_000;
/// Capacity of the invoice event channel; a subscriber further behind is disconnected.
const EVENT_CAPACITY: usize = 1024;

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

/// An outgoing payment attempt and its final result.
#[derive(Debug, Clone)]
pub struct PaymentRecord {
    /// Paying node.
    pub payer: NodeId,
    /// Hash paid.
    pub payment_hash: [u8; 32],
    /// Released preimage (successful payments only).
    pub preimage: Option<[u8; 32]>,
    /// Amount sent.
    pub value_msat: u64,
    /// The BOLT11 string paid.
    pub payment_request: String,
    /// `Succeeded` or `Failed`.
    pub status: PaymentStatus,
    /// `FailureReasonNone` unless failed.
    pub failure_reason: PaymentFailureReason,
    /// Unix nanoseconds.
    pub creation_time_ns: u64,
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
            fee: 0,
            payment_preimage: self.preimage.map(hex::encode).unwrap_or_default(),
            value_sat: sat_floor(self.value_msat),
            value_msat: clamp_i64(self.value_msat),
            payment_request: self.payment_request.clone(),
            status: self.status as i32,
            fee_sat: 0,
            fee_msat: 0,
            creation_time_ns: clamp_i64(self.creation_time_ns),
            payment_index: self.payment_index,
            failure_reason: self.failure_reason as i32,
        }
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
    events: broadcast::Sender<InvoiceEvent>,
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
            });
        }
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Ok(Ledger {
            nodes,
            invoices: HashMap::new(),
            payments: Vec::new(),
            events,
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

    /// Pays `bolt11` from `payer`. See the module docs for the rules.
    ///
    /// Returns the recorded payment, SUCCEEDED or FAILED.
    ///
    /// # Errors
    /// [`LedgerError::InvalidArgument`] for an unparsable, non-regtest or amount-less invoice;
    /// [`LedgerError::AlreadyPaid`] if `payer` already paid it. Neither is recorded.
    pub fn pay(
        &mut self,
        payer: NodeId,
        bolt11: &str,
        now: Duration,
    ) -> Result<PaymentRecord, LedgerError> {
        let invoice = Bolt11Invoice::from_str(bolt11.trim())
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
        if self
            .payments_of(payer)
            .any(|p| p.payment_hash == payment_hash && p.status == PaymentStatus::Succeeded)
        {
            return Err(LedgerError::AlreadyPaid);
        }

        let payee_key = invoice.get_payee_pub_key();
        let payee = self.nodes.iter().position(|n| n.pubkey == payee_key);
        let outcome = match payee {
            None => Err(PaymentFailureReason::FailureReasonNoRoute),
            Some(p) if p == payer => Err(PaymentFailureReason::FailureReasonNoRoute),
            Some(p) => match self.invoices.get(&payment_hash) {
                Some(inv)
                    if inv.payee == p
                        && inv.state == InvoiceState::Open
                        && !inv.expired_at(now.as_secs())
                        && value_msat >= inv.value_msat =>
                {
                    if self.nodes[payer].balance_msat < value_msat {
                        Err(PaymentFailureReason::FailureReasonInsufficientBalance)
                    } else {
                        Ok(p)
                    }
                }
                _ => Err(PaymentFailureReason::FailureReasonIncorrectPaymentDetails),
            },
        };

        let payer_node = &mut self.nodes[payer];
        let payment_index = payer_node.next_payment_index;
        payer_node.next_payment_index += 1;
        let mut record = PaymentRecord {
            payer,
            payment_hash,
            preimage: None,
            value_msat,
            payment_request: bolt11.trim().to_owned(),
            status: PaymentStatus::Failed,
            failure_reason: PaymentFailureReason::FailureReasonNone,
            creation_time_ns: u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
            payment_index,
        };
        match outcome {
            Err(reason) => record.failure_reason = reason,
            Ok(payee) => {
                // Checked above: payer's balance covers the amount. The payee's cannot
                // overflow in practice (21e6 BTC is ~2^61 msat), but saturate rather than wrap.
                self.nodes[payer].balance_msat -= value_msat;
                let payee_node = &mut self.nodes[payee];
                payee_node.balance_msat = payee_node.balance_msat.saturating_add(value_msat);
                let settle_index = payee_node.next_settle_index;
                payee_node.next_settle_index += 1;
                let inv = self
                    .invoices
                    .get_mut(&payment_hash)
                    .expect("invoice looked up above");
                inv.state = InvoiceState::Settled;
                inv.settle_index = settle_index;
                inv.settle_date = now.as_secs();
                inv.amt_paid_msat = value_msat;
                inv.paid_by = Some(payer);
                record.preimage = Some(inv.preimage);
                record.status = PaymentStatus::Succeeded;
                let settled = inv.clone();
                self.emit(payee, &settled);
            }
        }
        self.payments.push(record.clone());
        Ok(record)
    }
}

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
}
