//! Control API requests (`control`): the daemon's gRPC service, fed raw request bodies as the
//! CLI (or anything else that can open the 0600 socket) would send them.
//!
//! Input: one byte choosing the RPC, then the HTTP/2 request body (gRPC length-prefixed
//! frames: compression flag, u32 length, protobuf message). The service is the one `serve`
//! runs ([`leasewire::control::grpc_service`]) with a handler that checks arguments the way
//! the node's does (prefix sizes, PeerIds, required fields) and echoes the request.
//! Properties: no panic; every request gets an HTTP 200 answer carrying a gRPC status, whose
//! body can be read to the end.

#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use leasewire::control::{ControlError, ControlHandler, grpc_service, pb};
use leasewire::market::sizes::{Sizes, parse_len_or_none};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;

const METHODS: [&str; 12] = [
    "Status",
    "Offers",
    "Rent",
    "Conf",
    "AddCredit",
    "ManualInvoice",
    "AwaitCredit",
    "SetAutopay",
    "Release",
    "Leases",
    "Terminate",
    "AuditVerify",
];

/// Checks arguments as `NodeControl` does before it reaches the market, then echoes.
struct Checker;

fn invalid(m: impl Into<String>) -> ControlError {
    ControlError::InvalidArgument(m.into())
}

fn lease(id: &str) -> pb::LeaseInfo {
    pb::LeaseInfo {
        lease_id: id.to_owned(),
        ..Default::default()
    }
}

#[async_trait::async_trait]
impl ControlHandler for Checker {
    async fn status(&self) -> Result<pb::StatusReply, ControlError> {
        Ok(pb::StatusReply::default())
    }
    async fn offers(&self) -> Result<pb::OffersReply, ControlError> {
        Ok(pb::OffersReply::default())
    }
    async fn rent(&self, req: pb::RentRequest) -> Result<pb::LeaseInfo, ControlError> {
        if req.auto != req.offer_id.is_empty() {
            return Err(invalid("give exactly one of an offer id or auto"));
        }
        let pick = |s: &str| -> Result<Option<u8>, ControlError> {
            if s.is_empty() {
                Ok(None)
            } else {
                parse_len_or_none(s).map_err(invalid)
            }
        };
        let sizes = Sizes {
            ipv4: pick(&req.ipv4)?,
            ipv6: pick(&req.ipv6)?,
        };
        if sizes.ipv4.is_some() || sizes.ipv6.is_some() {
            sizes.validate().map_err(|e| invalid(e.to_string()))?;
        }
        for p in req.allow.iter().chain(&req.deny) {
            p.parse::<libp2p::PeerId>()
                .map_err(|_| invalid(format!("{p:?} is not a PeerId")))?;
        }
        Ok(pb::LeaseInfo {
            offer_id: req.offer_id,
            credit_sat: req.credit_sat,
            ..Default::default()
        })
    }
    async fn conf(&self, req: pb::ConfRequest) -> Result<pb::ConfReply, ControlError> {
        Err(ControlError::NotFound(format!(
            "no lease {:?}",
            req.lease_id
        )))
    }
    async fn add_credit(&self, req: pb::AddCreditRequest) -> Result<pb::LeaseInfo, ControlError> {
        if req.amount_sat == 0 {
            return Err(invalid("amount must be positive"));
        }
        Ok(lease(&req.lease_id))
    }
    async fn manual_invoice(
        &self,
        req: pb::AddCreditRequest,
    ) -> Result<pb::ManualInvoiceReply, ControlError> {
        if req.amount_sat == 0 {
            return Err(invalid("amount must be positive"));
        }
        Ok(pb::ManualInvoiceReply {
            lease_id: req.lease_id,
            amount_sat: req.amount_sat,
            ..Default::default()
        })
    }
    async fn await_credit(
        &self,
        req: pb::AwaitCreditRequest,
    ) -> Result<pb::LeaseInfo, ControlError> {
        Err(ControlError::NotFound(format!(
            "no open payment {:?}",
            req.payment_hash
        )))
    }
    async fn set_autopay(&self, req: pb::SetAutopayRequest) -> Result<pb::LeaseInfo, ControlError> {
        Ok(lease(&req.lease_id))
    }
    async fn release(&self, req: pb::ReleaseRequest) -> Result<pb::LeaseInfo, ControlError> {
        Ok(lease(&req.lease_id))
    }
    async fn leases(&self) -> Result<pb::LeasesReply, ControlError> {
        Ok(pb::LeasesReply::default())
    }
    async fn terminate(&self, req: pb::TerminateRequest) -> Result<pb::LeaseInfo, ControlError> {
        Ok(lease(&req.lease_id))
    }
    async fn audit_verify(&self) -> Result<pb::AuditVerifyReply, ControlError> {
        Ok(pb::AuditVerifyReply::default())
    }
    async fn receipts(&self, req: pb::ReceiptsRequest) -> Result<pb::ReceiptsReply, ControlError> {
        match req.lease_id {
            Some(id) => Err(ControlError::NotFound(format!(
                "no receipts of lease {id:?}"
            ))),
            None => Ok(pb::ReceiptsReply::default()),
        }
    }
    async fn audit_witness(&self) -> Result<pb::AuditWitnessReply, ControlError> {
        Ok(pb::AuditWitnessReply::default())
    }
    async fn lease_certificate(
        &self,
        req: pb::LeaseCertificateRequest,
    ) -> Result<pb::LeaseCertificateReply, ControlError> {
        Err(ControlError::NotFound(format!(
            "no lease {:?}",
            req.lease_id
        )))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    leasewire_fuzz::cap_allocations(data.len());
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(sel) % METHODS.len()];
    let req = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://localhost/leasewire.control.Control/{method}"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("a valid request");
    runtime().block_on(async {
        let svc = grpc_service(Arc::new(Checker));
        let resp = svc.oneshot(req).await.expect("the service to answer");
        assert_eq!(resp.status(), http::StatusCode::OK);
        let in_headers = resp.headers().contains_key("grpc-status");
        let collected = resp
            .into_body()
            .collect()
            .await
            .expect("the response body to be readable");
        let in_trailers = collected
            .trailers()
            .is_some_and(|t| t.contains_key("grpc-status"));
        assert!(in_headers || in_trailers, "no gRPC status in the answer");
    });
});
