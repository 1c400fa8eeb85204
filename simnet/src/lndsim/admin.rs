//! lnd-sim's admin API (`proto/lndsim/admin.proto`): fault injection, the routing fee and a
//! ledger-wide payment audit, for simnet scenarios.
//!
//! [`AdminService`] is served on the same gRPC server as the LND services and accepts only
//! the admin macaroon (`DIR/admin.macaroon`, also in the manifest); node macaroons are
//! refused. [`AdminClient`] is the client simnet uses:
//!
//! ```no_run
//! # async fn demo(manifest: &leasewire_simnet::lndsim::SimManifest) -> Result<(), leasewire_simnet::lndsim::admin::AdminError> {
//! use leasewire_simnet::lndsim::admin::{AdminClient, double_payments};
//! use leasewire_simnet::lndsim::ledger::FaultKind;
//! let admin = AdminClient::connect(manifest).await?;
//! admin.set_fault("renter-0", FaultKind::NoRoute, 1).await?;
//! admin.set_routing_fee(1_000, 500).await?;
//! let audit = admin.list_all_payments().await?;
//! assert_eq!(double_payments(&audit.payments), 0);
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use leasewire::lightning::LightningError;
use leasewire::lightning::lnd::{AuthedChannel, authed_channel};
use leasewire::lightning::proto::lnrpc::payment::PaymentStatus;
use tonic::{Request, Response, Status};
use tracing::info;

use super::SimManifest;
use super::ledger::admin_proto::{
    self, admin_client::AdminClient as RawAdminClient, admin_server::Admin,
};
use super::ledger::{Fault, FaultKind, Ledger, NodeId, PaymentRecord, RoutingFee, lock_ledger};

pub use super::ledger::admin_proto::PaymentEntry;

/// [`PaymentEntry::status`] of a payment still in flight.
pub const STATUS_IN_FLIGHT: &str = "IN_FLIGHT";
/// [`PaymentEntry::status`] of a successful payment.
pub const STATUS_SUCCEEDED: &str = "SUCCEEDED";
/// [`PaymentEntry::status`] of a failed payment.
pub const STATUS_FAILED: &str = "FAILED";

/// The admin gRPC service over the shared ledger. Cheap to clone.
#[derive(Clone)]
pub struct AdminService {
    ledger: Arc<Mutex<Ledger>>,
    macaroon: Arc<Vec<u8>>,
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminService").finish_non_exhaustive()
    }
}

/// Equality in time independent of where the inputs differ (the macaroon is a credential).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AdminService {
    /// Serves `ledger` to callers presenting `macaroon` (raw bytes).
    pub fn new(ledger: Arc<Mutex<Ledger>>, macaroon: Vec<u8>) -> AdminService {
        AdminService {
            ledger,
            macaroon: Arc::new(macaroon),
        }
    }

    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let ok = req
            .metadata()
            .get("macaroon")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| hex::decode(s).ok())
            .is_some_and(|m| ct_eq(&m, &self.macaroon));
        if ok {
            Ok(())
        } else {
            Err(Status::permission_denied(
                "the admin API needs the admin macaroon",
            ))
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        lock_ledger(&self.ledger)
    }
}

fn node_id(ledger: &Ledger, name: &str) -> Result<NodeId, Status> {
    ledger
        .node_by_name(name)
        .ok_or_else(|| Status::not_found(format!("no node named {name:?}")))
}

/// Converts a ledger record to its audit entry.
pub fn payment_entry(ledger: &Ledger, p: &PaymentRecord) -> PaymentEntry {
    let status = match p.status {
        PaymentStatus::Succeeded => STATUS_SUCCEEDED,
        PaymentStatus::Failed => STATUS_FAILED,
        _ => STATUS_IN_FLIGHT,
    };
    PaymentEntry {
        payer: ledger.node(p.payer).name.clone(),
        payee: p
            .payee
            .map(|id| ledger.node(id).name.clone())
            .unwrap_or_default(),
        payment_hash: hex::encode(p.payment_hash),
        amount_msat: p.value_msat,
        fee_msat: p.fee_msat,
        status: status.to_owned(),
        failure_reason: if p.status == PaymentStatus::Failed {
            p.failure_reason.as_str_name().to_owned()
        } else {
            String::new()
        },
        created_at_ns: p.creation_time_ns,
        resolved_at_ns: p.resolved_time_ns.unwrap_or(0),
        note: p.note.clone(),
        payment_index: p.payment_index,
    }
}

/// Maps the wire fault to the ledger's.
fn fault_kind(kind: i32, delay_ms: u64) -> Result<FaultKind, Status> {
    use admin_proto::FaultKind as K;
    match K::try_from(kind) {
        Ok(K::NoRoute) => Ok(FaultKind::NoRoute),
        Ok(K::Timeout) => Ok(FaultKind::Timeout),
        Ok(K::FeeOverLimit) => Ok(FaultKind::FeeOverLimit),
        Ok(K::Delay) if delay_ms > 0 => Ok(FaultKind::Delay(Duration::from_millis(delay_ms))),
        Ok(K::Delay) => Err(Status::invalid_argument("a delay fault needs delay_ms > 0")),
        Ok(K::Unspecified) | Err(_) => Err(Status::invalid_argument("unknown fault kind")),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn set_fault(
        &self,
        request: Request<admin_proto::SetFaultRequest>,
    ) -> Result<Response<admin_proto::SetFaultResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        let kind = fault_kind(req.kind, req.delay_ms)?;
        let mut ledger = self.lock();
        let id = node_id(&ledger, &req.node)?;
        ledger.add_fault(
            id,
            Fault {
                kind,
                count: req.count,
            },
        );
        info!(node = %req.node, fault = kind.name(), delay_ms = req.delay_ms, count = req.count, "fault set");
        Ok(Response::new(admin_proto::SetFaultResponse {}))
    }

    async fn clear_faults(
        &self,
        request: Request<admin_proto::ClearFaultsRequest>,
    ) -> Result<Response<admin_proto::ClearFaultsResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        let mut ledger = self.lock();
        let node = if req.node.is_empty() {
            None
        } else {
            Some(node_id(&ledger, &req.node)?)
        };
        ledger.clear_faults(node);
        info!(node = %req.node, "faults cleared");
        Ok(Response::new(admin_proto::ClearFaultsResponse {}))
    }

    async fn set_routing_fee(
        &self,
        request: Request<admin_proto::SetRoutingFeeRequest>,
    ) -> Result<Response<admin_proto::SetRoutingFeeResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        self.lock().set_routing_fee(RoutingFee {
            base_msat: req.base_msat,
            ppm: req.ppm,
        });
        info!(base_msat = req.base_msat, ppm = req.ppm, "routing fee set");
        Ok(Response::new(admin_proto::SetRoutingFeeResponse {}))
    }

    async fn list_all_payments(
        &self,
        request: Request<admin_proto::ListAllPaymentsRequest>,
    ) -> Result<Response<admin_proto::ListAllPaymentsResponse>, Status> {
        self.authorize(&request)?;
        let ledger = self.lock();
        let payments = ledger
            .all_payments()
            .iter()
            .map(|p| payment_entry(&ledger, p))
            .collect();
        Ok(Response::new(admin_proto::ListAllPaymentsResponse {
            payments,
            duplicate_attempts: ledger.duplicate_attempts(),
        }))
    }
}

/// Number of payment hashes with more than one SUCCEEDED entry in `payments`. lnd-sim refuses
/// to pay a settled invoice, so this must be 0; simnet reports it as a cross-check.
pub fn double_payments(payments: &[PaymentEntry]) -> u64 {
    super::ledger::double_payments(
        payments
            .iter()
            .filter(|p| p.status == STATUS_SUCCEEDED)
            .map(|p| p.payment_hash.as_str()),
    )
}

/// Errors from [`AdminClient`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The manifest has no admin macaroon (written by an older lnd-sim) or it is unreadable.
    #[error("admin macaroon: {0}")]
    Macaroon(String),
    /// Reading the certificate failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Connecting (TCP, pinned TLS) failed.
    #[error(transparent)]
    Connect(#[from] LightningError),
    /// lnd-sim refused the call (e.g. `NotFound` for an unknown node name).
    #[error("{method} failed: {code:?}: {message}")]
    Rpc {
        /// The admin method.
        method: &'static str,
        /// gRPC status code.
        code: tonic::Code,
        /// lnd-sim's message.
        message: String,
    },
}

fn rpc(method: &'static str) -> impl FnOnce(Status) -> AdminError {
    move |s| AdminError::Rpc {
        method,
        code: s.code(),
        message: s.message().to_owned(),
    }
}

/// Every payment of the simulated network and the duplicate-attempt count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentAudit {
    /// All payments, oldest first.
    pub payments: Vec<PaymentEntry>,
    /// Attempts to pay an already-paid hash (see `admin.proto`).
    pub duplicate_attempts: u64,
}

/// A client of lnd-sim's admin API. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AdminClient {
    inner: RawAdminClient<AuthedChannel>,
}

impl AdminClient {
    /// Connects to the lnd-sim described by `manifest` with its admin macaroon.
    ///
    /// # Errors
    /// [`AdminError::Macaroon`] if the manifest has none, [`AdminError::Io`] if the
    /// certificate cannot be read, [`AdminError::Connect`] if lnd-sim cannot be reached.
    pub async fn connect(manifest: &SimManifest) -> Result<AdminClient, AdminError> {
        let macaroon = hex::decode(&manifest.admin_macaroon)
            .ok()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| AdminError::Macaroon("missing or not hex in the manifest".into()))?;
        let cert = std::fs::read(&manifest.tls_cert_path).map_err(|source| AdminError::Io {
            path: manifest.tls_cert_path.clone(),
            source,
        })?;
        let channel = authed_channel(&manifest.address, &cert, &macaroon).await?;
        Ok(AdminClient {
            inner: RawAdminClient::new(channel),
        })
    }

    /// Injects `kind` into the next `count` payments made by node `payer` (0 = until cleared).
    ///
    /// # Errors
    /// [`AdminError::Rpc`] with `NotFound` for an unknown node, `InvalidArgument` for a zero
    /// delay.
    pub async fn set_fault(
        &self,
        payer: &str,
        kind: FaultKind,
        count: u32,
    ) -> Result<(), AdminError> {
        let (kind, delay_ms) = match kind {
            FaultKind::NoRoute => (admin_proto::FaultKind::NoRoute, 0),
            FaultKind::Timeout => (admin_proto::FaultKind::Timeout, 0),
            FaultKind::FeeOverLimit => (admin_proto::FaultKind::FeeOverLimit, 0),
            FaultKind::Delay(d) => (
                admin_proto::FaultKind::Delay,
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            ),
        };
        self.inner
            .clone()
            .set_fault(admin_proto::SetFaultRequest {
                node: payer.to_owned(),
                kind: kind as i32,
                delay_ms,
                count,
            })
            .await
            .map_err(rpc("SetFault"))?;
        Ok(())
    }

    /// Removes the faults of `node`, or of every node when `None`.
    ///
    /// # Errors
    /// [`AdminError::Rpc`] with `NotFound` for an unknown node.
    pub async fn clear_faults(&self, node: Option<&str>) -> Result<(), AdminError> {
        self.inner
            .clone()
            .clear_faults(admin_proto::ClearFaultsRequest {
                node: node.unwrap_or_default().to_owned(),
            })
            .await
            .map_err(rpc("ClearFaults"))?;
        Ok(())
    }

    /// Sets the fee charged to the payer of each later payment.
    ///
    /// # Errors
    /// [`AdminError::Rpc`] if lnd-sim refuses.
    pub async fn set_routing_fee(&self, base_msat: u64, ppm: u64) -> Result<(), AdminError> {
        self.inner
            .clone()
            .set_routing_fee(admin_proto::SetRoutingFeeRequest { base_msat, ppm })
            .await
            .map_err(rpc("SetRoutingFee"))?;
        Ok(())
    }

    /// Every payment of every node and the duplicate-attempt count.
    ///
    /// # Errors
    /// [`AdminError::Rpc`] if lnd-sim refuses.
    pub async fn list_all_payments(&self) -> Result<PaymentAudit, AdminError> {
        let r = self
            .inner
            .clone()
            .list_all_payments(admin_proto::ListAllPaymentsRequest {})
            .await
            .map_err(rpc("ListAllPayments"))?
            .into_inner();
        Ok(PaymentAudit {
            payments: r.payments,
            duplicate_attempts: r.duplicate_attempts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(hash: &str, status: &str) -> PaymentEntry {
        PaymentEntry {
            payment_hash: hash.into(),
            status: status.into(),
            ..Default::default()
        }
    }

    #[test]
    fn double_payments_counts_hashes_paid_twice() {
        let list = [
            entry("aa", STATUS_SUCCEEDED),
            entry("aa", STATUS_FAILED),
            entry("bb", STATUS_SUCCEEDED),
            entry("bb", STATUS_SUCCEEDED),
            entry("bb", STATUS_SUCCEEDED),
            entry("cc", STATUS_IN_FLIGHT),
            entry("cc", STATUS_SUCCEEDED),
        ];
        assert_eq!(double_payments(&list), 1);
        assert_eq!(double_payments(&list[..2]), 0);
    }

    #[test]
    fn fault_kinds_map() {
        assert_eq!(
            fault_kind(admin_proto::FaultKind::Delay as i32, 250).expect("delay"),
            FaultKind::Delay(Duration::from_millis(250))
        );
        assert!(fault_kind(admin_proto::FaultKind::Delay as i32, 0).is_err());
        assert!(fault_kind(0, 0).is_err());
        assert!(fault_kind(99, 0).is_err());
        assert_eq!(
            fault_kind(admin_proto::FaultKind::NoRoute as i32, 0).expect("no route"),
            FaultKind::NoRoute
        );
    }

    #[test]
    fn ct_eq_compares_exactly() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
