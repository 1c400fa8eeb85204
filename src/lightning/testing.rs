//! Test support for code that invoices and pays: an in-memory [`LightningNode`]
//! ([`MemNetwork`] / [`MemNode`]) and [`conformance`], the contract every backend must keep.
//!
//! Compiled only for this crate's tests and with the `test-utils` feature: production builds
//! carry no test double. The full LND simulator (`lnd-sim`, with fault injection and LND's gRPC
//! API) lives in the `leasewire-simnet` crate; this double is deliberately small. Its invoices
//! are real signed regtest BOLT11 strings that pass [`super::invoice::check_invoice`], payments
//! settle at once, and its errors have the shapes [`super::lnd::LndClient`] reports against
//! lnd-sim (`Rpc { code: AlreadyExists, .. }` for a second payment, `PaymentFailed` with LND's
//! reason names), so code tested here behaves the same against a real node. [`conformance`]
//! runs against both to keep it that way.
//!
//! ```
//! use leasewire::lightning::testing::MemNetwork;
//! use leasewire::lightning::{InvoiceRequest, InvoiceState, LightningNode, PayRequest};
//! # futures::executor::block_on(async {
//! let net = MemNetwork::new(&[("provider".into(), 0), ("renter".into(), 1_000)]).unwrap();
//! let (provider, renter) = (net.node("provider").unwrap(), net.node("renter").unwrap());
//! let inv = provider
//!     .add_invoice(InvoiceRequest { amount_msat: 5_000, description_hash: [0; 32], expiry_secs: 60 })
//!     .await
//!     .unwrap();
//! renter
//!     .pay_invoice(PayRequest { bolt11: inv.bolt11, fee_limit_msat: 0, timeout_secs: 10 })
//!     .await
//!     .unwrap();
//! let status = provider.lookup_invoice(inv.payment_hash).await.unwrap();
//! assert_eq!(status.state, InvoiceState::Settled);
//! assert_eq!(net.balance_msat("renter"), Some(995_000));
//! # });
//! ```

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bitcoin::hashes::{Hash as _, sha256};
use bitcoin::secp256k1::{All, PublicKey, Secp256k1, SecretKey};
use lightning_invoice::{Bolt11Invoice, Currency, InvoiceBuilder, PaymentSecret};

use super::invoice::{InvoiceExpectation, check_invoice};
use super::{
    CreatedInvoice, InvoicePage, InvoiceRequest, InvoiceState, InvoiceStatus, LightningError,
    LightningNode, ListedInvoice, NodeInfo, PayRequest, PaymentOutcome, PaymentStatus,
};

/// The block height every [`MemNode`] reports (lnd-sim reports the same).
pub const MEM_BLOCK_HEIGHT: u32 = 1_000;
/// Final CLTV delta of [`MemNode`] invoices (LND's default).
const CLTV_EXPIRY_DELTA: u64 = 80;

/// A set of in-memory Lightning nodes that can pay each other's invoices. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MemNetwork {
    state: Arc<Mutex<State>>,
}

/// One node of a [`MemNetwork`]; implements [`LightningNode`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MemNode {
    state: Arc<Mutex<State>>,
    id: usize,
}

#[derive(Debug)]
struct State {
    secp: Secp256k1<All>,
    nodes: Vec<Node>,
    /// Every node's invoices, by payment hash (hashes are unique across the network).
    invoices: HashMap<[u8; 32], Invoice>,
    /// Every payment attempt, oldest first.
    payments: Vec<Payment>,
    fee_base_msat: u64,
    fee_ppm: u64,
}

#[derive(Debug)]
struct Node {
    name: String,
    secret_key: SecretKey,
    pubkey: PublicKey,
    balance_msat: u64,
    next_add_index: u64,
    /// What `can_pay` answers (see [`MemNetwork::set_can_pay`]).
    can_pay: bool,
}

#[derive(Debug)]
struct Invoice {
    payee: usize,
    add_index: u64,
    preimage: [u8; 32],
    amount_msat: u64,
    expires_at: u64,
    state: InvoiceState,
    amount_paid_msat: u64,
    settled_at: Option<u64>,
}

#[derive(Debug)]
struct Payment {
    payer: usize,
    payment_hash: [u8; 32],
    status: PaymentStatus,
}

impl State {
    /// The routing fee for `amount_msat`: `base + amount * ppm / 1e6`, as lnd-sim charges it.
    fn fee_msat(&self, amount_msat: u64) -> u64 {
        let prop = u128::from(amount_msat) * u128::from(self.fee_ppm) / 1_000_000;
        self.fee_base_msat
            .saturating_add(u64::try_from(prop).unwrap_or(u64::MAX))
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every operation checks before it mutates, so a panic elsewhere leaves the state usable.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn random32() -> Result<[u8; 32], LightningError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| LightningError::InvalidResponse(format!("OS RNG: {e}")))?;
    Ok(b)
}

fn rpc(method: &'static str, code: tonic::Code, message: impl Into<String>) -> LightningError {
    LightningError::Rpc {
        method,
        code,
        message: message.into(),
    }
}

impl MemNetwork {
    /// Creates nodes `(name, balance_sat)`, each with a fresh random identity key.
    ///
    /// # Errors
    /// [`LightningError::InvalidRequest`] for an empty list, an empty or duplicate name, or a
    /// balance that overflows millisatoshis.
    pub fn new(nodes: &[(String, u64)]) -> Result<MemNetwork, LightningError> {
        if nodes.is_empty() {
            return Err(LightningError::InvalidRequest(
                "at least one node is needed".into(),
            ));
        }
        let secp = Secp256k1::new();
        let mut list: Vec<Node> = Vec::with_capacity(nodes.len());
        for (name, balance_sat) in nodes {
            if name.is_empty() || list.iter().any(|n| &n.name == name) {
                return Err(LightningError::InvalidRequest(format!(
                    "node name {name:?} is empty or taken"
                )));
            }
            let balance_msat = balance_sat.checked_mul(1000).ok_or_else(|| {
                LightningError::InvalidRequest(format!("balance of {name:?} is too large"))
            })?;
            // A random 32-byte string is a valid key except with negligible probability.
            let secret_key = loop {
                if let Ok(k) = SecretKey::from_slice(&random32()?) {
                    break k;
                }
            };
            list.push(Node {
                name: name.clone(),
                pubkey: PublicKey::from_secret_key(&secp, &secret_key),
                secret_key,
                balance_msat,
                next_add_index: 1,
                can_pay: true,
            });
        }
        Ok(MemNetwork {
            state: Arc::new(Mutex::new(State {
                secp,
                nodes: list,
                invoices: HashMap::new(),
                payments: Vec::new(),
                fee_base_msat: 0,
                fee_ppm: 0,
            })),
        })
    }

    fn id(&self, name: &str) -> Option<usize> {
        lock(&self.state).nodes.iter().position(|n| n.name == name)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<MemNode> {
        self.id(name).map(|id| MemNode {
            state: self.state.clone(),
            id,
        })
    }

    /// Current balance of `name`, in millisatoshis.
    pub fn balance_msat(&self, name: &str) -> Option<u64> {
        let id = self.id(name)?;
        Some(lock(&self.state).nodes[id].balance_msat)
    }

    /// Hex identity key of `name`.
    pub fn pubkey(&self, name: &str) -> Option<String> {
        let id = self.id(name)?;
        Some(hex::encode(lock(&self.state).nodes[id].pubkey.serialize()))
    }

    /// Sets the routing fee charged to payers from now on: `base_msat + amount * ppm / 1e6`
    /// (credited to nobody: it models routing nodes outside the network).
    pub fn set_routing_fee(&self, base_msat: u64, ppm: u64) {
        let mut state = lock(&self.state);
        state.fee_base_msat = base_msat;
        state.fee_ppm = ppm;
    }

    /// Sets what `can_pay` of `name` answers (true by default): false models a node whose
    /// macaroon cannot pay. Payments themselves are not refused by it.
    pub fn set_can_pay(&self, name: &str, can_pay: bool) {
        if let Some(id) = self.id(name) {
            lock(&self.state).nodes[id].can_pay = can_pay;
        }
    }

    /// Number of payment hashes paid more than once (SUCCEEDED twice). A correct payer never
    /// does that, so tests assert it stays 0.
    pub fn double_payments(&self) -> u64 {
        let state = lock(&self.state);
        let mut seen: HashMap<[u8; 32], u32> = HashMap::new();
        for p in &state.payments {
            if matches!(p.status, PaymentStatus::Succeeded(_)) {
                *seen.entry(p.payment_hash).or_default() += 1;
            }
        }
        seen.values().filter(|n| **n > 1).count() as u64
    }
}

impl MemNode {
    /// Decides a payment under the lock. `Err` is a refusal before any payment exists (as
    /// LND's RPC errors); `Ok` is the recorded final status.
    fn pay_locked(
        state: &mut State,
        payer: usize,
        bolt11: &str,
        fee_limit_msat: u64,
    ) -> Result<PaymentStatus, LightningError> {
        let invalid = |m: String| rpc("SendPaymentV2", tonic::Code::InvalidArgument, m);
        let invoice = Bolt11Invoice::from_str(bolt11.trim())
            .map_err(|e| invalid(format!("invalid payment request: {e}")))?;
        if invoice.currency() != Currency::Regtest {
            return Err(invalid(
                "invoice not for current active network 'regtest'".into(),
            ));
        }
        let amount_msat = invoice.amount_milli_satoshis().ok_or_else(|| {
            invalid("amount must be specified when paying a zero amount invoice".into())
        })?;
        let payment_hash = invoice.payment_hash().to_byte_array();
        // LND keeps one payment per hash: a succeeded one refuses another attempt.
        if state.payments.iter().any(|p| {
            p.payer == payer
                && p.payment_hash == payment_hash
                && matches!(p.status, PaymentStatus::Succeeded(_))
        }) {
            return Err(rpc(
                "SendPaymentV2",
                tonic::Code::AlreadyExists,
                "invoice is already paid",
            ));
        }

        let payee_key = invoice.get_payee_pub_key();
        let payee = state.nodes.iter().position(|n| n.pubkey == payee_key);
        let fee_msat = state.fee_msat(amount_msat);
        let now = now_unix();
        let payable = |payee: usize| {
            state.invoices.get(&payment_hash).is_some_and(|inv| {
                inv.payee == payee
                    && inv.state == InvoiceState::Open
                    && now < inv.expires_at
                    && amount_msat >= inv.amount_msat
            })
        };
        // LND's failure reasons, in the order lnd-sim checks them.
        let failure = match payee {
            None => Some("FAILURE_REASON_NO_ROUTE"),
            Some(p) if p == payer => Some("FAILURE_REASON_NO_ROUTE"),
            Some(p) if !payable(p) => Some("FAILURE_REASON_INCORRECT_PAYMENT_DETAILS"),
            Some(_) if fee_msat > fee_limit_msat => Some("FAILURE_REASON_NO_ROUTE"),
            Some(_) if state.nodes[payer].balance_msat < amount_msat.saturating_add(fee_msat) => {
                Some("FAILURE_REASON_INSUFFICIENT_BALANCE")
            }
            Some(_) => None,
        };
        let status = match (failure, payee) {
            (None, Some(payee)) => {
                state.nodes[payer].balance_msat -= amount_msat + fee_msat;
                let node = &mut state.nodes[payee];
                node.balance_msat = node.balance_msat.saturating_add(amount_msat);
                let inv = state
                    .invoices
                    .get_mut(&payment_hash)
                    .expect("payable() found the invoice");
                inv.state = InvoiceState::Settled;
                inv.amount_paid_msat = amount_msat;
                inv.settled_at = Some(now);
                PaymentStatus::Succeeded(PaymentOutcome {
                    payment_hash,
                    preimage: inv.preimage,
                    amount_msat,
                    fee_msat,
                })
            }
            (reason, _) => PaymentStatus::Failed {
                reason: reason.unwrap_or("FAILURE_REASON_ERROR").to_owned(),
            },
        };
        state.payments.push(Payment {
            payer,
            payment_hash,
            status: status.clone(),
        });
        Ok(status)
    }
}

#[async_trait::async_trait]
impl LightningNode for MemNode {
    async fn get_info(&self) -> Result<NodeInfo, LightningError> {
        let state = lock(&self.state);
        let n = &state.nodes[self.id];
        Ok(NodeInfo {
            pubkey: hex::encode(n.pubkey.serialize()),
            alias: n.name.clone(),
            network: "regtest".into(),
            block_height: MEM_BLOCK_HEIGHT,
        })
    }

    async fn add_invoice(&self, req: InvoiceRequest) -> Result<CreatedInvoice, LightningError> {
        // The same request validation as `LndClient`.
        if req.amount_msat == 0 {
            return Err(LightningError::InvalidRequest(
                "invoice amount must be non-zero".into(),
            ));
        }
        if i64::try_from(req.amount_msat).is_err() {
            return Err(LightningError::InvalidRequest(
                "invoice amount too large".into(),
            ));
        }
        if req.expiry_secs == 0 || i64::try_from(req.expiry_secs).is_err() {
            return Err(LightningError::InvalidRequest(
                "expiry must be 1..=i64::MAX".into(),
            ));
        }
        let preimage = random32()?;
        let payment_secret = random32()?;
        let payment_hash = sha256::Hash::hash(&preimage).to_byte_array();
        let created = now_unix();
        let mut state = lock(&self.state);
        let state = &mut *state;
        let node = &mut state.nodes[self.id];
        let signed = InvoiceBuilder::new(Currency::Regtest)
            .amount_milli_satoshis(req.amount_msat)
            .description_hash(sha256::Hash::from_byte_array(req.description_hash))
            .payment_hash(sha256::Hash::from_byte_array(payment_hash))
            .payment_secret(PaymentSecret(payment_secret))
            .duration_since_epoch(Duration::from_secs(created))
            .expiry_time(Duration::from_secs(req.expiry_secs))
            .min_final_cltv_expiry_delta(CLTV_EXPIRY_DELTA)
            .payee_pub_key(node.pubkey)
            .build_signed(|m| state.secp.sign_ecdsa_recoverable(m, &node.secret_key))
            .map_err(|e| rpc("AddInvoice", tonic::Code::Internal, e.to_string()))?;
        let add_index = node.next_add_index;
        node.next_add_index += 1;
        state.invoices.insert(
            payment_hash,
            Invoice {
                payee: self.id,
                add_index,
                preimage,
                amount_msat: req.amount_msat,
                expires_at: created.saturating_add(req.expiry_secs),
                state: InvoiceState::Open,
                amount_paid_msat: 0,
                settled_at: None,
            },
        );
        Ok(CreatedInvoice {
            bolt11: signed.to_string(),
            payment_hash,
            add_index,
        })
    }

    async fn lookup_invoice(
        &self,
        payment_hash: [u8; 32],
    ) -> Result<InvoiceStatus, LightningError> {
        let state = lock(&self.state);
        // Another node's invoice is "not found", as in LND.
        let inv = state
            .invoices
            .get(&payment_hash)
            .filter(|inv| inv.payee == self.id)
            .ok_or_else(|| {
                rpc(
                    "LookupInvoice",
                    tonic::Code::NotFound,
                    "unable to locate invoice",
                )
            })?;
        Ok(InvoiceStatus {
            state: inv.state,
            amount_paid_msat: inv.amount_paid_msat,
            settled_at: inv.settled_at,
        })
    }

    async fn list_invoices(
        &self,
        index_offset: u64,
        max: u64,
    ) -> Result<InvoicePage, LightningError> {
        let state = lock(&self.state);
        let mut invoices: Vec<ListedInvoice> = state
            .invoices
            .iter()
            .filter(|(_, inv)| inv.payee == self.id && inv.add_index > index_offset)
            .map(|(hash, inv)| ListedInvoice {
                payment_hash: *hash,
                add_index: inv.add_index,
                status: InvoiceStatus {
                    state: inv.state,
                    amount_paid_msat: inv.amount_paid_msat,
                    settled_at: inv.settled_at,
                },
            })
            .collect();
        invoices.sort_by_key(|i| i.add_index);
        invoices.truncate(usize::try_from(max).unwrap_or(usize::MAX));
        Ok(InvoicePage {
            last_index_offset: invoices.last().map_or(0, |i| i.add_index),
            invoices,
        })
    }

    async fn pay_invoice(&self, req: PayRequest) -> Result<PaymentOutcome, LightningError> {
        if req.timeout_secs <= 0 {
            return Err(LightningError::InvalidRequest(
                "payment timeout must be positive".into(),
            ));
        }
        let status = MemNode::pay_locked(
            &mut lock(&self.state),
            self.id,
            &req.bolt11,
            req.fee_limit_msat,
        )?;
        match status {
            PaymentStatus::Succeeded(out) => Ok(out),
            PaymentStatus::Failed { reason } => Err(LightningError::PaymentFailed { reason }),
            PaymentStatus::InFlight => Err(LightningError::InvalidResponse(
                "in-memory payments resolve at once".into(),
            )),
        }
    }

    async fn track_payment(
        &self,
        payment_hash: [u8; 32],
    ) -> Result<Option<PaymentStatus>, LightningError> {
        let state = lock(&self.state);
        Ok(state
            .payments
            .iter()
            .rfind(|p| p.payer == self.id && p.payment_hash == payment_hash)
            .map(|p| p.status.clone()))
    }

    async fn can_pay(&self) -> Result<bool, LightningError> {
        Ok(lock(&self.state).nodes[self.id].can_pay)
    }
}

/// Checks the contract every [`LightningNode`] backend must keep, panicking on the first
/// violation. `payee` and `payer` are two nodes of one network that can pay each other;
/// `payer` needs at least 50 sat. `payer_balance_msat` reads the payer's spendable balance
/// (return `None` for a backend that cannot tell: the balance checks are then skipped).
///
/// Checked: `get_info`; `add_invoice` returns an invoice that passes
/// [`check_invoice`](super::invoice::check_invoice) with the requested amount, description
/// hash and expiry; a request the backend must refuse (zero amount, zero timeout);
/// `lookup_invoice` before and after payment (Open, then Settled with the amount paid), and
/// only by the payee; `list_invoices` pages after an index with the states of the moment; `pay_invoice` returns a preimage that hashes to the payment hash; a
/// second payment of the same invoice is refused as already paid and debits nothing; a
/// payment the payer cannot afford fails with `FAILURE_REASON_INSUFFICIENT_BALANCE`, debits
/// nothing and leaves the invoice open; `track_payment` of a paid, a failed and an unknown
/// hash.
pub async fn conformance(
    payee: &dyn LightningNode,
    payer: &dyn LightningNode,
    payer_balance_msat: &(dyn Fn() -> Option<u64> + Sync),
) {
    const AMOUNT_MSAT: u64 = 21_000;
    const EXPIRY_SECS: u64 = 900;
    let description_hash = sha256::Hash::hash(b"leasewire conformance").to_byte_array();
    let request = |amount_msat| InvoiceRequest {
        amount_msat,
        description_hash,
        expiry_secs: EXPIRY_SECS,
    };
    let pay = |bolt11: &str| PayRequest {
        bolt11: bolt11.to_owned(),
        fee_limit_msat: 1_000,
        timeout_secs: 30,
    };

    // Identity.
    let info = payee.get_info().await.expect("payee get_info");
    let payer_info = payer.get_info().await.expect("payer get_info");
    assert_eq!(info.pubkey.len(), 66, "hex 33-byte key: {}", info.pubkey);
    assert!(hex::decode(&info.pubkey).is_ok(), "{}", info.pubkey);
    assert_ne!(info.pubkey, payer_info.pubkey, "two distinct nodes");
    assert_eq!(info.network, payer_info.network, "one network");

    // Invoices: valid BOLT11 with exactly the requested terms.
    let now = now_unix();
    let inv = payee
        .add_invoice(request(AMOUNT_MSAT))
        .await
        .expect("add_invoice");
    let checked = check_invoice(
        &inv.bolt11,
        &InvoiceExpectation {
            network: info.network.clone(),
            amount_msat: AMOUNT_MSAT,
            payee_pubkey: info.pubkey.clone(),
            description_hash,
            min_expiry_left_secs: EXPIRY_SECS - 60,
            now_unix: now,
        },
    )
    .expect("the invoice passes the payer's checks");
    assert_eq!(checked.payment_hash, inv.payment_hash);
    let parsed = Bolt11Invoice::from_str(&inv.bolt11).expect("BOLT11");
    assert_eq!(parsed.expiry_time(), Duration::from_secs(EXPIRY_SECS));
    let second = payee
        .add_invoice(request(AMOUNT_MSAT))
        .await
        .expect("add_invoice");
    assert_ne!(
        second.payment_hash, inv.payment_hash,
        "fresh hash per invoice"
    );
    assert!(second.add_index > inv.add_index, "add_index increases");
    assert!(matches!(
        payee.add_invoice(request(0)).await,
        Err(LightningError::InvalidRequest(_))
    ));

    // Before payment.
    let open = payee
        .lookup_invoice(inv.payment_hash)
        .await
        .expect("lookup");
    assert_eq!(open.state, InvoiceState::Open);
    assert_eq!(open.amount_paid_msat, 0);
    assert_eq!(open.settled_at, None);
    let err = payer
        .lookup_invoice(inv.payment_hash)
        .await
        .expect_err("only the payee knows its invoice");
    assert!(err.is_rpc_code(tonic::Code::NotFound), "{err}");
    let err = payee
        .lookup_invoice([0x5a; 32])
        .await
        .expect_err("unknown hash");
    assert!(err.is_rpc_code(tonic::Code::NotFound), "{err}");
    assert_eq!(
        payer.track_payment(inv.payment_hash).await.expect("track"),
        None
    );
    assert!(matches!(
        payer
            .pay_invoice(PayRequest {
                timeout_secs: 0,
                ..pay(&inv.bolt11)
            })
            .await,
        Err(LightningError::InvalidRequest(_))
    ));

    // Payment.
    let before = payer_balance_msat();
    let out = payer.pay_invoice(pay(&inv.bolt11)).await.expect("pay");
    assert_eq!(out.payment_hash, inv.payment_hash);
    assert_eq!(
        sha256::Hash::hash(&out.preimage).to_byte_array(),
        inv.payment_hash,
        "the preimage proves payment"
    );
    assert_eq!(out.amount_msat, AMOUNT_MSAT);
    let after = payer_balance_msat();
    if let (Some(b), Some(a)) = (before, after) {
        assert_eq!(b - a, AMOUNT_MSAT + out.fee_msat, "debited amount plus fee");
    }
    let settled = payee
        .lookup_invoice(inv.payment_hash)
        .await
        .expect("lookup");
    assert_eq!(settled.state, InvoiceState::Settled);
    assert_eq!(settled.amount_paid_msat, AMOUNT_MSAT);
    assert!(settled.settled_at.is_some_and(|t| t + 60 >= now));
    assert_eq!(
        payer.track_payment(inv.payment_hash).await.expect("track"),
        Some(PaymentStatus::Succeeded(out.clone()))
    );
    // Only the payer paid it.
    assert_eq!(
        payee.track_payment(inv.payment_hash).await.expect("track"),
        None
    );

    // A second payment is refused and never debits twice.
    let err = payer
        .pay_invoice(pay(&inv.bolt11))
        .await
        .expect_err("paid twice");
    assert!(err.is_already_paid(), "{err}");
    assert_eq!(payer_balance_msat(), after, "no second debit");
    assert_eq!(
        payer.track_payment(inv.payment_hash).await.expect("track"),
        Some(PaymentStatus::Succeeded(out))
    );
    let still = payee
        .lookup_invoice(inv.payment_hash)
        .await
        .expect("lookup");
    assert_eq!(still.amount_paid_msat, AMOUNT_MSAT);

    // Listing: the payee's own invoices after an index, oldest first, a page at a time, each
    // with its state now (the paid one settled, the second open).
    let page = payee
        .list_invoices(inv.add_index - 1, 1)
        .await
        .expect("list_invoices");
    assert_eq!(page.invoices.len(), 1, "at most `max` per page");
    assert_eq!(page.invoices[0].payment_hash, inv.payment_hash);
    assert_eq!(page.invoices[0].status.state, InvoiceState::Settled);
    assert_eq!(page.invoices[0].status.amount_paid_msat, AMOUNT_MSAT);
    assert_eq!(page.last_index_offset, inv.add_index);
    let next = payee
        .list_invoices(page.last_index_offset, 100)
        .await
        .expect("list_invoices");
    let open = next
        .invoices
        .iter()
        .find(|i| i.payment_hash == second.payment_hash)
        .expect("the second invoice is listed after the first");
    assert_eq!(open.status.state, InvoiceState::Open);
    assert!(
        next.invoices.iter().all(|i| i.add_index > inv.add_index),
        "only invoices after the offset"
    );
    let theirs = payer.list_invoices(0, 1_000).await.expect("list_invoices");
    assert!(
        theirs
            .invoices
            .iter()
            .all(|i| i.payment_hash != inv.payment_hash),
        "only the payee lists its invoice"
    );

    // A payment the payer cannot afford fails cleanly, and can be tracked.
    if let Some(balance) = payer_balance_msat() {
        let big = payee
            .add_invoice(request(balance + 1_000))
            .await
            .expect("add_invoice");
        let err = payer
            .pay_invoice(pay(&big.bolt11))
            .await
            .expect_err("unaffordable");
        assert!(
            matches!(&err, LightningError::PaymentFailed { reason }
                if reason == "FAILURE_REASON_INSUFFICIENT_BALANCE"),
            "{err}"
        );
        assert_eq!(
            payer_balance_msat(),
            Some(balance),
            "a failure debits nothing"
        );
        assert_eq!(
            payer.track_payment(big.payment_hash).await.expect("track"),
            Some(PaymentStatus::Failed {
                reason: "FAILURE_REASON_INSUFFICIENT_BALANCE".into()
            })
        );
        let open = payee
            .lookup_invoice(big.payment_hash)
            .await
            .expect("lookup");
        assert_eq!(open.state, InvoiceState::Open);
    }

    // A hash nobody paid is unknown to the payer.
    assert_eq!(payer.track_payment([0x5a; 32]).await.expect("track"), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> MemNetwork {
        MemNetwork::new(&[("provider".into(), 0), ("renter".into(), 500)]).expect("network")
    }

    fn req(amount_msat: u64) -> InvoiceRequest {
        InvoiceRequest {
            amount_msat,
            description_hash: [1; 32],
            expiry_secs: 600,
        }
    }

    fn pay(bolt11: &str) -> PayRequest {
        PayRequest {
            bolt11: bolt11.into(),
            fee_limit_msat: 0,
            timeout_secs: 10,
        }
    }

    #[tokio::test]
    async fn mem_node_passes_conformance() {
        let net = net();
        let provider = net.node("provider").expect("provider");
        let renter: Arc<dyn LightningNode> = Arc::new(net.node("renter").expect("renter"));
        conformance(&provider, &renter, &|| net.balance_msat("renter")).await;
        assert_eq!(net.double_payments(), 0);
        assert_eq!(net.balance_msat("provider"), Some(21_000));
    }

    #[tokio::test]
    async fn info_matches_the_network() {
        let net = net();
        let info = net.node("provider").expect("provider").get_info().await;
        let info = info.expect("info");
        assert_eq!(info.network, "regtest");
        assert_eq!(info.alias, "provider");
        assert_eq!(Some(info.pubkey), net.pubkey("provider"));
        assert!(net.node("nobody").is_none());
        assert_eq!(net.balance_msat("nobody"), None);
    }

    #[tokio::test]
    async fn routing_fees_respect_the_limit() {
        let net = net();
        let provider = net.node("provider").expect("provider");
        let renter = net.node("renter").expect("renter");
        net.set_routing_fee(500, 0);
        let inv = provider.add_invoice(req(10_000)).await.expect("invoice");
        let err = renter
            .pay_invoice(pay(&inv.bolt11))
            .await
            .expect_err("fee limit 0");
        assert!(
            matches!(&err, LightningError::PaymentFailed { reason } if reason == "FAILURE_REASON_NO_ROUTE"),
            "{err}"
        );
        assert_eq!(net.balance_msat("renter"), Some(500_000));
        // A failed attempt does not block a later one (LND allows retrying a failed hash).
        let out = renter
            .pay_invoice(PayRequest {
                fee_limit_msat: 500,
                ..pay(&inv.bolt11)
            })
            .await
            .expect("paid");
        assert_eq!(out.fee_msat, 500);
        assert_eq!(net.balance_msat("renter"), Some(500_000 - 10_500));
        assert_eq!(net.balance_msat("provider"), Some(10_000));
        assert_eq!(
            renter.track_payment(inv.payment_hash).await.expect("track"),
            Some(PaymentStatus::Succeeded(out))
        );
    }

    #[tokio::test]
    async fn failures_mirror_lnd() {
        let a = net();
        let provider = a.node("provider").expect("provider");
        let renter = a.node("renter").expect("renter");

        // Another network's invoice: the payee is unknown, so there is no route.
        let b = net();
        let foreign = b
            .node("provider")
            .expect("provider")
            .add_invoice(req(1_000))
            .await
            .expect("invoice");
        match renter.pay_invoice(pay(&foreign.bolt11)).await {
            Err(LightningError::PaymentFailed { reason }) => {
                assert_eq!(reason, "FAILURE_REASON_NO_ROUTE")
            }
            other => panic!("unexpected {other:?}"),
        }

        // Paying one's own invoice is a circular route, refused by LND.
        let own = renter.add_invoice(req(1_000)).await.expect("invoice");
        assert!(matches!(
            renter.pay_invoice(pay(&own.bolt11)).await,
            Err(LightningError::PaymentFailed { reason }) if reason == "FAILURE_REASON_NO_ROUTE"
        ));

        // Not a BOLT11 string: refused before any payment exists.
        let err = renter
            .pay_invoice(pay("lnbcrt1garbage"))
            .await
            .expect_err("garbage");
        assert!(err.is_rpc_code(tonic::Code::InvalidArgument), "{err}");

        // An invoice settled by another payer is no longer payable.
        let c = MemNetwork::new(&[
            ("provider".into(), 0),
            ("r1".into(), 100),
            ("r2".into(), 100),
        ])
        .expect("network");
        let inv = c
            .node("provider")
            .expect("provider")
            .add_invoice(req(1_000))
            .await
            .expect("invoice");
        c.node("r1")
            .expect("r1")
            .pay_invoice(pay(&inv.bolt11))
            .await
            .expect("paid");
        let err = c
            .node("r2")
            .expect("r2")
            .pay_invoice(pay(&inv.bolt11))
            .await
            .expect_err("settled");
        assert!(
            matches!(&err, LightningError::PaymentFailed { reason } if reason == "FAILURE_REASON_INCORRECT_PAYMENT_DETAILS"),
            "{err}"
        );
        assert_eq!(c.balance_msat("r2"), Some(100_000));
        assert_eq!(c.double_payments(), 0);
        assert_eq!(
            provider
                .track_payment(inv.payment_hash)
                .await
                .expect("track"),
            None
        );
    }

    #[test]
    fn network_specs_are_checked() {
        assert!(MemNetwork::new(&[]).is_err());
        assert!(MemNetwork::new(&[("a".into(), 1), ("a".into(), 2)]).is_err());
        assert!(MemNetwork::new(&[("".into(), 1)]).is_err());
        assert!(MemNetwork::new(&[("a".into(), u64::MAX)]).is_err());
    }
}
