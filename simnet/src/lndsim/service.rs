//! gRPC front of the simulator: LND's `lnrpc.Lightning` and `routerrpc.Router` services
//! (the subset in `proto/lnd/`) over the shared [`Ledger`].
//!
//! `SendPaymentSync` (LND's older unary payment call) runs the same ledger payment as
//! `SendPaymentV2` and answers once it is final, with LND's conventions for that call: the
//! fee limit defaults by amount, and a failed or refused payment is an OK response carrying
//! `payment_error`.
//!
//! Every call first selects the virtual node from the hex `macaroon` metadata header, as LND
//! authenticates with it; a missing or unknown macaroon is `Unauthenticated`.
//!
//! Macaroons are not scoped: each virtual node has one macaroon that may do everything, like
//! LND's `admin.macaroon`. `CheckMacaroonPermissions` therefore answers `valid` for any
//! permission list exactly when the macaroon checked is one of the simulator's node
//! macaroons.

use std::pin::Pin;
use std::str::FromStr as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bitcoin::hashes::Hash as _;
use futures::Stream;
use leasewire::lightning::proto::lnrpc::{
    self, lightning_server::Lightning, payment::PaymentStatus,
};
use leasewire::lightning::proto::routerrpc::{self, router_server::Router};
use lightning_invoice::Bolt11Invoice;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use super::ledger::{
    Ledger, LedgerError, NewInvoice, NodeId, PayParams, PaymentRecord, SIM_BLOCK_HEIGHT,
    lock_ledger, start_payment, wait_final,
};

/// A boxed server stream, as the generated traits require a nameable type.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Both services, sharing one ledger. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SimService {
    ledger: Arc<Mutex<Ledger>>,
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// The gRPC status LND uses for each ledger refusal.
fn status(e: LedgerError) -> Status {
    match e {
        LedgerError::InvalidArgument(m) => Status::invalid_argument(m),
        LedgerError::AlreadyPaid | LedgerError::DuplicateInvoice | LedgerError::PaymentInFlight => {
            Status::already_exists(e.to_string())
        }
        LedgerError::NotFound(m) => Status::not_found(m),
        other => Status::internal(other.to_string()),
    }
}

fn hash32(bytes: &[u8], what: &str) -> Result<[u8; 32], Status> {
    <[u8; 32]>::try_from(bytes)
        .map_err(|_| Status::invalid_argument(format!("{what} must be exactly 32 bytes")))
}

fn non_negative(v: i64, what: &str) -> Result<u64, Status> {
    u64::try_from(v).map_err(|_| Status::invalid_argument(format!("{what} must not be negative")))
}

impl SimService {
    /// Wraps a shared ledger.
    pub fn new(ledger: Arc<Mutex<Ledger>>) -> SimService {
        SimService { ledger }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock would be a simulator bug; the state is still
        // consistent (each operation mutates only after all checks), so keep serving.
        lock_ledger(&self.ledger)
    }

    /// Selects the node named by the request's macaroon header.
    fn authenticate<T>(&self, req: &Request<T>) -> Result<NodeId, Status> {
        let values: Vec<_> = req.metadata().get_all("macaroon").iter().collect();
        let [value] = values.as_slice() else {
            return Err(Status::unauthenticated(format!(
                "expected 1 macaroon, got {}",
                values.len()
            )));
        };
        let bytes = value
            .to_str()
            .ok()
            .and_then(|s| hex::decode(s).ok())
            .ok_or_else(|| Status::unauthenticated("macaroon is not hex"))?;
        self.lock().node_by_macaroon(&bytes).ok_or_else(|| {
            Status::unauthenticated(
                "verification failed: signature mismatch after caveat verification",
            )
        })
    }
}

#[tonic::async_trait]
impl Lightning for SimService {
    async fn get_info(
        &self,
        request: Request<lnrpc::GetInfoRequest>,
    ) -> Result<Response<lnrpc::GetInfoResponse>, Status> {
        let node = self.authenticate(&request)?;
        let ledger = self.lock();
        let n = ledger.node(node);
        let peers = u32::try_from(ledger.nodes().len() - 1).unwrap_or(u32::MAX);
        Ok(Response::new(lnrpc::GetInfoResponse {
            version: concat!("lnd-sim ", env!("CARGO_PKG_VERSION")).into(),
            identity_pubkey: hex::encode(n.pubkey.serialize()),
            alias: n.name.clone(),
            color: "#3399ff".into(),
            num_active_channels: peers,
            num_peers: peers,
            block_height: SIM_BLOCK_HEIGHT,
            synced_to_chain: true,
            synced_to_graph: true,
            chains: vec![lnrpc::Chain {
                chain: "bitcoin".into(),
                network: "regtest".into(),
            }],
            ..Default::default()
        }))
    }

    async fn add_invoice(
        &self,
        request: Request<lnrpc::Invoice>,
    ) -> Result<Response<lnrpc::AddInvoiceResponse>, Status> {
        let node = self.authenticate(&request)?;
        let inv = request.into_inner();
        if inv.value != 0 && inv.value_msat != 0 {
            return Err(Status::invalid_argument(
                "value and value_msat are mutually exclusive",
            ));
        }
        let value_msat = if inv.value != 0 {
            non_negative(inv.value, "value")?
                .checked_mul(1000)
                .ok_or_else(|| Status::invalid_argument("value too large"))?
        } else {
            non_negative(inv.value_msat, "value_msat")?
        };
        let description_hash = if inv.description_hash.is_empty() {
            None
        } else {
            Some(hash32(&inv.description_hash, "description_hash")?)
        };
        let preimage = if inv.r_preimage.is_empty() {
            None
        } else {
            Some(hash32(&inv.r_preimage, "r_preimage")?)
        };
        let rec = self
            .lock()
            .add_invoice(
                node,
                NewInvoice {
                    value_msat,
                    memo: inv.memo,
                    description_hash,
                    expiry: non_negative(inv.expiry, "expiry")?,
                    cltv_expiry: inv.cltv_expiry,
                    preimage,
                },
                now(),
            )
            .map_err(status)?;
        debug!(node, add_index = rec.add_index, value_msat, "invoice added");
        Ok(Response::new(lnrpc::AddInvoiceResponse {
            r_hash: rec.payment_hash.to_vec(),
            payment_request: rec.bolt11,
            add_index: rec.add_index,
            payment_addr: rec.payment_addr.to_vec(),
        }))
    }

    async fn lookup_invoice(
        &self,
        request: Request<lnrpc::PaymentHash>,
    ) -> Result<Response<lnrpc::Invoice>, Status> {
        let node = self.authenticate(&request)?;
        let req = request.into_inner();
        #[allow(deprecated)] // r_hash_str is deprecated in LND but still accepted there.
        let hash = if !req.r_hash.is_empty() {
            hash32(&req.r_hash, "payment hash")?
        } else {
            let bytes = hex::decode(&req.r_hash_str)
                .map_err(|_| Status::invalid_argument("r_hash_str is not hex"))?;
            hash32(&bytes, "payment hash")?
        };
        self.lock()
            .lookup_invoice(node, &hash)
            .map(|inv| Response::new(inv.to_proto()))
            .ok_or_else(|| Status::not_found("unable to locate invoice"))
    }

    async fn list_invoices(
        &self,
        request: Request<lnrpc::ListInvoiceRequest>,
    ) -> Result<Response<lnrpc::ListInvoiceResponse>, Status> {
        let node = self.authenticate(&request)?;
        let req = request.into_inner();
        if req.reversed || req.creation_date_start != 0 || req.creation_date_end != 0 {
            return Err(Status::unimplemented(
                "lnd-sim lists invoices forward by index only",
            ));
        }
        // LND answers at most 100 invoices when no maximum is given.
        let max = match req.num_max_invoices {
            0 => 100,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let invoices: Vec<lnrpc::Invoice> = self
            .lock()
            .list_invoices(node, req.index_offset, max, req.pending_only)
            .iter()
            .map(|i| i.to_proto())
            .collect();
        Ok(Response::new(lnrpc::ListInvoiceResponse {
            first_index_offset: invoices.first().map_or(0, |i| i.add_index),
            last_index_offset: invoices.last().map_or(0, |i| i.add_index),
            invoices,
        }))
    }

    type SubscribeInvoicesStream = BoxStream<lnrpc::Invoice>;

    async fn subscribe_invoices(
        &self,
        request: Request<lnrpc::InvoiceSubscription>,
    ) -> Result<Response<Self::SubscribeInvoicesStream>, Status> {
        let node = self.authenticate(&request)?;
        let req = request.into_inner();
        // Backlog and live receiver are taken under one lock so no event falls in between.
        let (backlog, rx) = self.lock().subscribe(node, req.add_index, req.settle_index);
        let backlog = futures::stream::iter(backlog.into_iter().map(|i| Ok(i.to_proto())));
        let live = futures::stream::unfold(rx, move |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) if ev.node == node => return Some((Ok(ev.invoice.to_proto()), rx)),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!(
                            node,
                            missed = n,
                            "invoice subscriber lagged; ending its stream"
                        );
                        return None;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        use futures::StreamExt as _;
        Ok(Response::new(Box::pin(backlog.chain(live))))
    }

    async fn list_payments(
        &self,
        request: Request<lnrpc::ListPaymentsRequest>,
    ) -> Result<Response<lnrpc::ListPaymentsResponse>, Status> {
        let node = self.authenticate(&request)?;
        let req = request.into_inner();
        let ledger = self.lock();
        let all: Vec<_> = ledger
            .payments_of(node)
            .filter(|p| req.include_incomplete || p.status == PaymentStatus::Succeeded)
            .collect();
        let max = if req.max_payments == 0 {
            usize::MAX
        } else {
            usize::try_from(req.max_payments).unwrap_or(usize::MAX)
        };
        // index_offset is exclusive; 0 means "from the start" (or "from the end" reversed).
        let page: Vec<_> = if req.reversed {
            let before: Vec<_> = all
                .iter()
                .filter(|p| req.index_offset == 0 || p.payment_index < req.index_offset)
                .collect();
            let skip = before.len().saturating_sub(max);
            before
                .into_iter()
                .skip(skip)
                .map(|p| p.to_proto())
                .collect()
        } else {
            all.iter()
                .filter(|p| p.payment_index > req.index_offset)
                .take(max)
                .map(|p| p.to_proto())
                .collect()
        };
        Ok(Response::new(lnrpc::ListPaymentsResponse {
            first_index_offset: page.first().map_or(0, |p| p.payment_index),
            last_index_offset: page.last().map_or(0, |p| p.payment_index),
            total_num_payments: if req.count_total_payments {
                ledger.payments_of(node).count() as u64
            } else {
                0
            },
            payments: page,
        }))
    }
    async fn check_macaroon_permissions(
        &self,
        request: Request<lnrpc::CheckMacPermRequest>,
    ) -> Result<Response<lnrpc::CheckMacPermResponse>, Status> {
        self.authenticate(&request)?;
        let req = request.into_inner();
        let valid = self.lock().node_by_macaroon(&req.macaroon).is_some();
        Ok(Response::new(lnrpc::CheckMacPermResponse { valid }))
    }

    async fn send_payment_sync(
        &self,
        request: Request<lnrpc::SendRequest>,
    ) -> Result<Response<lnrpc::SendResponse>, Status> {
        let node = self.authenticate(&request)?;
        let req = request.into_inner();
        if req.payment_request.is_empty() {
            return Err(Status::invalid_argument(
                "lnd-sim only supports paying a payment_request",
            ));
        }
        let invoice = Bolt11Invoice::from_str(req.payment_request.trim())
            .map_err(|e| Status::invalid_argument(format!("invalid payment request: {e}")))?;
        if req.amt != 0 || req.amt_msat != 0 {
            // The ledger only pays invoices that carry their amount; so does LND here.
            return Err(Status::invalid_argument(
                "amount must not be specified when paying a non-zero amount invoice",
            ));
        }
        let amount_msat = invoice.amount_milli_satoshis().ok_or_else(|| {
            Status::invalid_argument("amount must be specified when paying a zero amount invoice")
        })?;
        let fee_limit_msat = send_fee_limit_msat(req.fee_limit.as_ref(), amount_msat)?;
        let params = PayParams {
            bolt11: &req.payment_request,
            fee_limit_msat,
            timeout: SEND_SYNC_TIMEOUT,
        };
        let payment_hash = invoice.payment_hash().to_byte_array().to_vec();
        // The payment runs on its own from here, as with SendPaymentV2.
        let started = match start_payment(&self.ledger, node, params) {
            Ok(p) => p,
            // LND reports a refused payment of an already paid (or in-flight) hash in the
            // response, as for any payment that did not succeed.
            Err(e @ (LedgerError::AlreadyPaid | LedgerError::PaymentInFlight)) => {
                return Ok(Response::new(lnrpc::SendResponse {
                    payment_error: e.to_string(),
                    payment_hash,
                    ..Default::default()
                }));
            }
            Err(e) => return Err(status(e)),
        };
        let done = wait_final(&self.ledger, started.id)
            .await
            .ok_or_else(|| Status::internal("payment vanished from the ledger"))?;
        log_final(&done);
        Ok(Response::new(match done.preimage {
            Some(preimage) if done.status == PaymentStatus::Succeeded => lnrpc::SendResponse {
                payment_preimage: preimage.to_vec(),
                payment_route: Some(lnrpc::Route {
                    total_time_lock: SIM_BLOCK_HEIGHT + 80,
                    total_fees_msat: clamp_i64(done.fee_msat),
                    total_amt_msat: clamp_i64(done.value_msat.saturating_add(done.fee_msat)),
                }),
                payment_hash,
                ..Default::default()
            },
            _ => lnrpc::SendResponse {
                payment_error: lnd_failure_text(done.failure_reason).into(),
                payment_hash,
                ..Default::default()
            },
        }))
    }
}

/// How long a `SendPaymentSync` payment may stay in flight (what a `Timeout` fault waits):
/// LND's default payment timeout for that call.
const SEND_SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// The fee limit of a `SendRequest`, in millisatoshis, computed as LND does: fixed (sat or
/// msat) or a percentage of the amount; without one, 100% of the amount up to 1,000 sat and
/// 5% above.
fn send_fee_limit_msat(limit: Option<&lnrpc::FeeLimit>, amount_msat: u64) -> Result<u64, Status> {
    use lnrpc::fee_limit::Limit;
    match limit.and_then(|l| l.limit) {
        Some(Limit::Fixed(sat)) => non_negative(sat, "fee_limit.fixed")?
            .checked_mul(1000)
            .ok_or_else(|| Status::invalid_argument("fee_limit.fixed too large")),
        Some(Limit::FixedMsat(msat)) => non_negative(msat, "fee_limit.fixed_msat"),
        Some(Limit::Percent(pct)) => {
            let pct = non_negative(pct, "fee_limit.percent")?;
            Ok(u64::try_from(u128::from(amount_msat) * u128::from(pct) / 100).unwrap_or(u64::MAX))
        }
        None if amount_msat <= 1_000_000 => Ok(amount_msat),
        None => Ok(amount_msat / 20),
    }
}

/// LND's text for a payment failure reason (its `FailureReason.String()`), which is what
/// `SendPaymentSync` puts in `payment_error`.
fn lnd_failure_text(reason: lnrpc::PaymentFailureReason) -> &'static str {
    use lnrpc::PaymentFailureReason as R;
    match reason {
        R::FailureReasonTimeout => "timeout",
        R::FailureReasonNoRoute => "no_route",
        R::FailureReasonError => "error",
        R::FailureReasonIncorrectPaymentDetails => "incorrect_payment_details",
        R::FailureReasonInsufficientBalance => "insufficient_balance",
        R::FailureReasonCanceled => "canceled",
        R::FailureReasonNone => "unknown",
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[tonic::async_trait]
impl Router for SimService {
    type SendPaymentV2Stream = BoxStream<lnrpc::Payment>;

    async fn send_payment_v2(
        &self,
        request: Request<routerrpc::SendPaymentRequest>,
    ) -> Result<Response<Self::SendPaymentV2Stream>, Status> {
        let node = self.authenticate(&request)?;
        let req = request.into_inner();
        if req.payment_request.is_empty() {
            return Err(Status::invalid_argument(
                "lnd-sim only supports paying a payment_request",
            ));
        }
        if req.timeout_seconds <= 0 {
            return Err(Status::invalid_argument(
                "timeout_seconds must be specified",
            ));
        }
        if req.fee_limit_sat != 0 && req.fee_limit_msat != 0 {
            return Err(Status::invalid_argument(
                "fee_limit_sat and fee_limit_msat are mutually exclusive",
            ));
        }
        // As in LND, no limit given means a zero limit: only fee-free routes.
        let fee_limit_msat = if req.fee_limit_sat != 0 {
            non_negative(req.fee_limit_sat, "fee_limit_sat")?
                .checked_mul(1000)
                .ok_or_else(|| Status::invalid_argument("fee_limit_sat too large"))?
        } else {
            non_negative(req.fee_limit_msat, "fee_limit_msat")?
        };
        let params = PayParams {
            bolt11: &req.payment_request,
            fee_limit_msat,
            timeout: Duration::from_secs(req.timeout_seconds.unsigned_abs().into()),
        };
        // The payment runs on its own from here: a client that disconnects (or is killed)
        // does not stop it, and TrackPaymentV2 reports how it ended.
        let started = start_payment(&self.ledger, node, params).map_err(status)?;
        let hash = hex::encode(started.payment_hash);
        info!(node, payment_hash = %hash, msat = started.value_msat, fee_msat = started.fee_msat,
            fee_limit_msat, note = %started.note, "payment started");
        Ok(Response::new(payment_updates(
            self.ledger.clone(),
            started,
            true,
            req.no_inflight_updates,
        )))
    }

    type TrackPaymentV2Stream = BoxStream<lnrpc::Payment>;

    async fn track_payment_v2(
        &self,
        request: Request<routerrpc::TrackPaymentRequest>,
    ) -> Result<Response<Self::TrackPaymentV2Stream>, Status> {
        let node = self.authenticate(&request)?;
        let req = request.into_inner();
        let hash = hash32(&req.payment_hash, "payment_hash")?;
        let current = self
            .lock()
            .latest_payment(node, &hash)
            .cloned()
            .ok_or_else(|| Status::not_found("payment isn't initiated"))?;
        Ok(Response::new(payment_updates(
            self.ledger.clone(),
            current,
            false,
            req.no_inflight_updates,
        )))
    }
}

/// The update stream of a payment: for `SendPaymentV2` an IN_FLIGHT update first (as LND
/// sends), for `TrackPaymentV2` the current state; then, if not yet final, the final state
/// once it is. In-flight updates are skipped when the client set `no_inflight_updates`.
fn payment_updates(
    ledger: Arc<Mutex<Ledger>>,
    current: PaymentRecord,
    inflight_first: bool,
    no_inflight_updates: bool,
) -> BoxStream<lnrpc::Payment> {
    use futures::StreamExt as _;
    let mut first = Vec::with_capacity(2);
    if (inflight_first || !current.is_final()) && !no_inflight_updates {
        first.push(Ok(lnrpc::Payment {
            status: PaymentStatus::InFlight as i32,
            payment_preimage: String::new(),
            failure_reason: lnrpc::PaymentFailureReason::FailureReasonNone as i32,
            ..current.to_proto()
        }));
    }
    if current.is_final() {
        log_final(&current);
        first.push(Ok(current.to_proto()));
    }
    let rest = (!current.is_final()).then_some((ledger, current.id));
    // Dropping this stream (client gone) only stops the waiting, never the payment.
    let tail = futures::stream::iter(rest).then(|(ledger, id)| async move {
        match wait_final(&ledger, id).await {
            Some(done) => {
                log_final(&done);
                Ok(done.to_proto())
            }
            None => Err(Status::internal("payment vanished from the ledger")),
        }
    });
    Box::pin(futures::stream::iter(first).chain(tail))
}

fn log_final(p: &PaymentRecord) {
    let hash = hex::encode(p.payment_hash);
    match p.status {
        PaymentStatus::Succeeded => {
            info!(node = p.payer, payment_hash = %hash, msat = p.value_msat, fee_msat = p.fee_msat, "payment succeeded")
        }
        _ => {
            info!(node = p.payer, payment_hash = %hash, reason = p.failure_reason.as_str_name(),
                note = %p.note, "payment failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lnrpc::fee_limit::Limit;

    fn limit(l: Limit) -> lnrpc::FeeLimit {
        lnrpc::FeeLimit { limit: Some(l) }
    }

    #[test]
    fn send_fee_limits_follow_lnd() {
        // Default: 100% up to 1,000 sat, 5% above.
        assert_eq!(
            send_fee_limit_msat(None, 1_000_000).expect("valid limit"),
            1_000_000
        );
        assert_eq!(
            send_fee_limit_msat(None, 2_000_000).expect("valid limit"),
            100_000
        );
        let fixed = limit(Limit::Fixed(3));
        assert_eq!(
            send_fee_limit_msat(Some(&fixed), 1).expect("valid limit"),
            3_000
        );
        let msat = limit(Limit::FixedMsat(7));
        assert_eq!(send_fee_limit_msat(Some(&msat), 1).expect("valid limit"), 7);
        let pct = limit(Limit::Percent(3));
        assert_eq!(
            send_fee_limit_msat(Some(&pct), 1_000).expect("valid limit"),
            30
        );
        let negative = limit(Limit::Fixed(-1));
        assert!(send_fee_limit_msat(Some(&negative), 1).is_err());
        assert!(send_fee_limit_msat(Some(&limit(Limit::Fixed(i64::MAX))), 1).is_err());
    }

    #[test]
    fn failure_texts_are_lnds() {
        use lnrpc::PaymentFailureReason as R;
        assert_eq!(lnd_failure_text(R::FailureReasonNoRoute), "no_route");
        assert_eq!(
            lnd_failure_text(R::FailureReasonIncorrectPaymentDetails),
            "incorrect_payment_details"
        );
        assert_eq!(
            lnd_failure_text(R::FailureReasonInsufficientBalance),
            "insufficient_balance"
        );
    }
}
