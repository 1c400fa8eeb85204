//! In-memory [`LightningNode`] double for tests of code that invoices and pays (market, node).
//!
//! [`MemNetwork`] wraps the same [`Ledger`] as `lnd-sim`, so payments follow the same rules and
//! invoices are real signed regtest BOLT11 strings that pass [`super::invoice::check_invoice`].
//! Errors mirror what [`super::lnd::LndClient`] reports for the same situation against
//! `lnd-sim` (e.g. `Rpc { code: AlreadyExists }` for a second payment, `PaymentFailed` with
//! LND's reason names), so code tested here behaves the same against a real node.
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

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::proto::lnrpc::{
    invoice::InvoiceState as LndInvoiceState, payment::PaymentStatus as LndPaymentStatus,
};
use super::sim::{
    Fault, FaultKind, Ledger, LedgerError, NewInvoice, NodeId, PayParams, RoutingFee,
    SIM_BLOCK_HEIGHT, lock_ledger, start_payment, wait_final,
};
use super::{
    CreatedInvoice, InvoiceRequest, InvoiceState, InvoiceStatus, LightningError, LightningNode,
    NodeInfo, PayRequest, PaymentOutcome, PaymentStatus,
};

/// A set of in-memory Lightning nodes sharing one ledger. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MemNetwork {
    ledger: Arc<Mutex<Ledger>>,
}

/// One node of a [`MemNetwork`]; implements [`LightningNode`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MemNode {
    ledger: Arc<Mutex<Ledger>>,
    id: NodeId,
}

fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    lock_ledger(ledger)
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

impl MemNetwork {
    /// Creates nodes `(name, balance_sat)`.
    ///
    /// # Errors
    /// [`LedgerError::InvalidNode`] for an empty list, bad or duplicate names, or overflowing
    /// balances.
    pub fn new(nodes: &[(String, u64)]) -> Result<MemNetwork, LedgerError> {
        Ok(MemNetwork {
            ledger: Arc::new(Mutex::new(Ledger::new(nodes)?)),
        })
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<MemNode> {
        lock(&self.ledger).node_by_name(name).map(|id| MemNode {
            ledger: self.ledger.clone(),
            id,
        })
    }

    /// Current balance of `name`, in millisatoshis.
    pub fn balance_msat(&self, name: &str) -> Option<u64> {
        let ledger = lock(&self.ledger);
        ledger
            .node_by_name(name)
            .map(|id| ledger.node(id).balance_msat)
    }

    /// Hex identity key of `name`.
    pub fn pubkey(&self, name: &str) -> Option<String> {
        let ledger = lock(&self.ledger);
        ledger
            .node_by_name(name)
            .map(|id| hex::encode(ledger.node(id).pubkey.serialize()))
    }

    /// The shared ledger, for assertions beyond balances.
    pub fn ledger(&self) -> Arc<Mutex<Ledger>> {
        self.ledger.clone()
    }

    /// Injects a fault into `payer`'s next `count` payments (0 = until cleared), as lnd-sim's
    /// admin `SetFault` does. Delays and timeouts need a tokio runtime or use a thread.
    ///
    /// Returns false when there is no node called `payer`.
    pub fn set_fault(&self, payer: &str, kind: FaultKind, count: u32) -> bool {
        let mut ledger = lock(&self.ledger);
        match ledger.node_by_name(payer) {
            Some(id) => {
                ledger.add_fault(id, Fault { kind, count });
                true
            }
            None => false,
        }
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        lock(&self.ledger).clear_faults(None);
    }

    /// Sets the routing fee charged to payers from now on.
    pub fn set_routing_fee(&self, base_msat: u64, ppm: u64) {
        lock(&self.ledger).set_routing_fee(RoutingFee { base_msat, ppm });
    }
}

fn rpc(method: &'static str, code: tonic::Code, e: LedgerError) -> LightningError {
    LightningError::Rpc {
        method,
        code,
        message: e.to_string(),
    }
}

#[async_trait::async_trait]
impl LightningNode for MemNode {
    async fn get_info(&self) -> Result<NodeInfo, LightningError> {
        let ledger = lock(&self.ledger);
        let n = ledger.node(self.id);
        Ok(NodeInfo {
            pubkey: hex::encode(n.pubkey.serialize()),
            alias: n.name.clone(),
            network: "regtest".into(),
            block_height: SIM_BLOCK_HEIGHT,
        })
    }

    async fn add_invoice(&self, req: InvoiceRequest) -> Result<CreatedInvoice, LightningError> {
        // Same request validation as `LndClient`.
        if req.amount_msat == 0 || i64::try_from(req.amount_msat).is_err() {
            return Err(LightningError::InvalidRequest(
                "invoice amount must be 1..=i64::MAX msat".into(),
            ));
        }
        if req.expiry_secs == 0 || i64::try_from(req.expiry_secs).is_err() {
            return Err(LightningError::InvalidRequest(
                "expiry must be 1..=i64::MAX".into(),
            ));
        }
        let rec = lock(&self.ledger)
            .add_invoice(
                self.id,
                NewInvoice {
                    value_msat: req.amount_msat,
                    description_hash: Some(req.description_hash),
                    expiry: req.expiry_secs,
                    ..Default::default()
                },
                now(),
            )
            .map_err(|e| rpc("AddInvoice", tonic::Code::Internal, e))?;
        Ok(CreatedInvoice {
            bolt11: rec.bolt11,
            payment_hash: rec.payment_hash,
            add_index: rec.add_index,
        })
    }

    async fn lookup_invoice(
        &self,
        payment_hash: [u8; 32],
    ) -> Result<InvoiceStatus, LightningError> {
        let ledger = lock(&self.ledger);
        let inv = ledger
            .lookup_invoice(self.id, &payment_hash)
            .ok_or_else(|| LightningError::Rpc {
                method: "LookupInvoice",
                code: tonic::Code::NotFound,
                message: "unable to locate invoice".into(),
            })?;
        let state = match inv.state {
            LndInvoiceState::Open => InvoiceState::Open,
            LndInvoiceState::Settled => InvoiceState::Settled,
            LndInvoiceState::Canceled => InvoiceState::Canceled,
            LndInvoiceState::Accepted => InvoiceState::Accepted,
        };
        Ok(InvoiceStatus {
            state,
            amount_paid_msat: inv.amt_paid_msat,
            settled_at: (state == InvoiceState::Settled).then_some(inv.settle_date),
        })
    }

    async fn pay_invoice(&self, req: PayRequest) -> Result<PaymentOutcome, LightningError> {
        if req.timeout_secs <= 0 {
            return Err(LightningError::InvalidRequest(
                "payment timeout must be positive".into(),
            ));
        }
        let params = PayParams {
            bolt11: &req.bolt11,
            fee_limit_msat: req.fee_limit_msat,
            timeout: Duration::from_secs(req.timeout_secs.unsigned_abs().into()),
        };
        let started = start_payment(&self.ledger, self.id, params).map_err(|e| {
            let code = match e {
                LedgerError::AlreadyPaid | LedgerError::PaymentInFlight => {
                    tonic::Code::AlreadyExists
                }
                LedgerError::InvalidArgument(_) => tonic::Code::InvalidArgument,
                _ => tonic::Code::Internal,
            };
            rpc("SendPaymentV2", code, e)
        })?;
        let record = wait_final(&self.ledger, started.id).await.ok_or_else(|| {
            LightningError::InvalidResponse("payment vanished from the ledger".into())
        })?;
        match (record.status, record.preimage) {
            (LndPaymentStatus::Succeeded, Some(preimage)) => Ok(PaymentOutcome {
                payment_hash: record.payment_hash,
                preimage,
                amount_msat: record.value_msat,
                fee_msat: record.fee_msat,
            }),
            _ => Err(LightningError::PaymentFailed {
                reason: record.failure_reason.as_str_name().to_owned(),
            }),
        }
    }

    async fn track_payment(
        &self,
        payment_hash: [u8; 32],
    ) -> Result<Option<PaymentStatus>, LightningError> {
        let ledger = lock(&self.ledger);
        let Some(p) = ledger.latest_payment(self.id, &payment_hash) else {
            return Ok(None);
        };
        Ok(Some(match (p.status, p.preimage) {
            (LndPaymentStatus::Succeeded, Some(preimage)) => {
                PaymentStatus::Succeeded(PaymentOutcome {
                    payment_hash: p.payment_hash,
                    preimage,
                    amount_msat: p.value_msat,
                    fee_msat: 0,
                })
            }
            (LndPaymentStatus::Failed, _) => PaymentStatus::Failed {
                reason: p.failure_reason.as_str_name().to_owned(),
            },
            _ => PaymentStatus::InFlight,
        }))
    }
}

#[cfg(test)]
mod tests {
    use bitcoin::hashes::{Hash as _, sha256};

    use super::*;
    use crate::lightning::invoice::{InvoiceExpectation, check_invoice};

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
    async fn invoices_pass_checks_and_payments_settle() {
        let net = net();
        let provider = net.node("provider").expect("provider");
        let renter: Arc<dyn LightningNode> = Arc::new(net.node("renter").expect("renter"));
        let info = provider.get_info().await.expect("info");
        assert_eq!(info.network, "regtest");
        assert_eq!(Some(info.pubkey.clone()), net.pubkey("provider"));

        let inv = provider.add_invoice(req(100_000)).await.expect("invoice");
        let checked = check_invoice(
            &inv.bolt11,
            &InvoiceExpectation {
                network: "regtest".into(),
                amount_msat: 100_000,
                payee_pubkey: info.pubkey,
                description_hash: [1; 32],
                min_expiry_left_secs: 60,
                now_unix: now().as_secs(),
            },
        )
        .expect("passes payer checks");
        assert_eq!(checked.payment_hash, inv.payment_hash);

        let out = renter.pay_invoice(pay(&inv.bolt11)).await.expect("paid");
        assert_eq!(
            sha256::Hash::hash(&out.preimage).to_byte_array(),
            inv.payment_hash
        );
        let status = provider
            .lookup_invoice(inv.payment_hash)
            .await
            .expect("lookup");
        assert_eq!(status.state, InvoiceState::Settled);
        assert_eq!(status.amount_paid_msat, 100_000);
        assert!(status.settled_at.is_some());
        assert_eq!(net.balance_msat("renter"), Some(400_000));
        assert_eq!(net.balance_msat("provider"), Some(100_000));

        let err = renter
            .pay_invoice(pay(&inv.bolt11))
            .await
            .expect_err("twice");
        assert!(err.is_rpc_code(tonic::Code::AlreadyExists), "{err}");
    }

    #[tokio::test]
    async fn track_payment_reports_latest_state() {
        let net = net();
        let provider = net.node("provider").expect("provider");
        let renter = net.node("renter").expect("renter");
        assert_eq!(renter.track_payment([9; 32]).await.expect("track"), None);

        let big = provider.add_invoice(req(600_000)).await.expect("invoice");
        renter
            .pay_invoice(pay(&big.bolt11))
            .await
            .expect_err("too big");
        assert_eq!(
            renter.track_payment(big.payment_hash).await.expect("track"),
            Some(PaymentStatus::Failed {
                reason: "FAILURE_REASON_INSUFFICIENT_BALANCE".into()
            })
        );

        let inv = provider.add_invoice(req(1_000)).await.expect("invoice");
        let out = renter.pay_invoice(pay(&inv.bolt11)).await.expect("paid");
        assert_eq!(
            renter.track_payment(inv.payment_hash).await.expect("track"),
            Some(PaymentStatus::Succeeded(out))
        );
        // The payee never paid it: unknown from its side.
        assert_eq!(
            provider
                .track_payment(inv.payment_hash)
                .await
                .expect("track"),
            None
        );
    }

    #[tokio::test]
    async fn fees_faults_and_abandoned_payments() {
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
        let out = renter
            .pay_invoice(PayRequest {
                fee_limit_msat: 500,
                ..pay(&inv.bolt11)
            })
            .await
            .expect("paid");
        assert_eq!(out.fee_msat, 500);
        assert_eq!(net.balance_msat("renter"), Some(500_000 - 10_500));

        // Timeout fault: fails with LND's reason after the request's timeout.
        assert!(net.set_fault("renter", FaultKind::Timeout, 1));
        assert!(!net.set_fault("nobody", FaultKind::Timeout, 1));
        let inv = provider.add_invoice(req(1_000)).await.expect("invoice");
        let err = renter
            .pay_invoice(PayRequest {
                timeout_secs: 1,
                fee_limit_msat: 1_000,
                ..pay(&inv.bolt11)
            })
            .await
            .expect_err("timeout");
        assert!(
            matches!(&err, LightningError::PaymentFailed { reason } if reason == "FAILURE_REASON_TIMEOUT"),
            "{err}"
        );

        // Delay fault: the payer gives up waiting, the payment still completes.
        net.set_fault("renter", FaultKind::Delay(Duration::from_millis(100)), 1);
        let abandoned = tokio::time::timeout(
            Duration::from_millis(20),
            renter.pay_invoice(PayRequest {
                fee_limit_msat: 1_000,
                ..pay(&inv.bolt11)
            }),
        )
        .await;
        assert!(abandoned.is_err());
        assert_eq!(
            renter.track_payment(inv.payment_hash).await.expect("track"),
            Some(PaymentStatus::InFlight)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(matches!(
            renter.track_payment(inv.payment_hash).await.expect("track"),
            Some(PaymentStatus::Succeeded(_))
        ));
        net.clear_faults();
    }

    #[tokio::test]
    async fn failures_mirror_lnd() {
        let net = net();
        let provider = net.node("provider").expect("provider");
        let renter = net.node("renter").expect("renter");
        let inv = provider.add_invoice(req(600_000)).await.expect("invoice");
        match renter.pay_invoice(pay(&inv.bolt11)).await {
            Err(LightningError::PaymentFailed { reason }) => {
                assert_eq!(reason, "FAILURE_REASON_INSUFFICIENT_BALANCE")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(net.balance_msat("renter"), Some(500_000));
        let err = renter
            .lookup_invoice(inv.payment_hash)
            .await
            .expect_err("not renter's invoice");
        assert!(err.is_rpc_code(tonic::Code::NotFound));
        assert!(matches!(
            provider.add_invoice(req(0)).await,
            Err(LightningError::InvalidRequest(_))
        ));
        assert!(net.node("nobody").is_none());
    }
}
