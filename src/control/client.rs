//! The CLI's side of the control API.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{ControlError, pb};

/// Client of the control API, used by the CLI. Cheap to clone; calls may run concurrently.
///
/// No request timeout is set: `rent` legitimately waits for discovery and a Lightning payment.
#[derive(Clone, Debug)]
pub struct ControlClient {
    inner: pb::control_client::ControlClient<Channel>,
}

impl ControlClient {
    /// Connects to the daemon listening on `socket`.
    ///
    /// # Errors
    /// [`ControlError::Unavailable`] with the text "no daemon is running for D (…)" when the
    /// socket does not exist or nobody answers on it (D is the socket's directory);
    /// [`ControlError::Io`] for other socket errors (e.g. permission denied);
    /// [`ControlError::Transport`] if the HTTP/2 channel cannot be set up.
    pub async fn connect(socket: &Path) -> Result<Self, ControlError> {
        let dir = socket.parent().unwrap_or_else(|| Path::new("."));
        // Connect once ourselves so a missing daemon gives a clear message rather than a
        // generic transport error; tonic then reuses this stream as its first connection.
        let first = match UnixStream::connect(socket).await {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ControlError::Unavailable(format!(
                    "no daemon is running for {} (no socket at {})",
                    dir.display(),
                    socket.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Err(ControlError::Unavailable(format!(
                    "no daemon is running for {} (nobody answers on {})",
                    dir.display(),
                    socket.display()
                )));
            }
            Err(e) => {
                return Err(ControlError::io(
                    format!("cannot connect to {}", socket.display()),
                    e,
                ));
            }
        };
        let first = Arc::new(Mutex::new(Some(first)));
        let path = socket.to_path_buf();
        // The URI is required by the HTTP/2 layer but never resolved: the connector below
        // always dials the Unix socket.
        let channel = Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let first = Arc::clone(&first);
                let path = path.clone();
                async move {
                    let pre = first.lock().unwrap_or_else(PoisonError::into_inner).take();
                    let stream = match pre {
                        Some(s) => s,
                        None => UnixStream::connect(&path).await?,
                    };
                    Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await?;
        Ok(ControlClient {
            inner: pb::control_client::ControlClient::new(channel),
        })
    }

    /// Calls `Status`.
    ///
    /// # Errors
    /// The daemon's error, or [`ControlError::Unavailable`] if the connection broke.
    pub async fn status(&self) -> Result<pb::StatusReply, ControlError> {
        Ok(self
            .inner
            .clone()
            .status(pb::StatusRequest {})
            .await?
            .into_inner())
    }

    /// Calls `Offers`.
    ///
    /// # Errors
    /// As [`ControlClient::status`].
    pub async fn offers(&self) -> Result<pb::OffersReply, ControlError> {
        Ok(self
            .inner
            .clone()
            .offers(pb::OffersRequest {})
            .await?
            .into_inner())
    }

    /// Calls `Rent`; returns once the lease is applied (this can take minutes).
    ///
    /// # Errors
    /// As [`ControlClient::status`].
    pub async fn rent(&self, req: pb::RentRequest) -> Result<pb::LeaseInfo, ControlError> {
        Ok(self.inner.clone().rent(req).await?.into_inner())
    }

    /// Calls `Conf`.
    ///
    /// # Errors
    /// As [`ControlClient::status`].
    pub async fn conf(&self, req: pb::ConfRequest) -> Result<pb::ConfReply, ControlError> {
        Ok(self.inner.clone().conf(req).await?.into_inner())
    }

    /// Calls `AddCredit`.
    ///
    /// # Errors
    /// As [`ControlClient::status`].
    pub async fn add_credit(
        &self,
        req: pb::AddCreditRequest,
    ) -> Result<pb::LeaseInfo, ControlError> {
        Ok(self.inner.clone().add_credit(req).await?.into_inner())
    }

    /// Calls `ManualInvoice`.
    ///
    /// # Errors
    /// As [`ControlClient::status`].
    pub async fn manual_invoice(
        &self,
        req: pb::AddCreditRequest,
    ) -> Result<pb::ManualInvoiceReply, ControlError> {
        Ok(self.inner.clone().manual_invoice(req).await?.into_inner())
    }

    /// Calls `AwaitCredit`.
    ///
    /// # Errors
    /// As [`ControlClient::status`].
    pub async fn await_credit(
        &self,
        req: pb::AwaitCreditRequest,
    ) -> Result<pb::LeaseInfo, ControlError> {
        Ok(self.inner.clone().await_credit(req).await?.into_inner())
    }

    /// Calls `SetAutopay`.
    ///
    /// # Errors
    /// As [`ControlClient::status`].
    pub async fn set_autopay(
        &self,
        req: pb::SetAutopayRequest,
    ) -> Result<pb::LeaseInfo, ControlError> {
        Ok(self.inner.clone().set_autopay(req).await?.into_inner())
    }

    /// Calls `Release`.
    ///
    /// # Errors
    /// As [`ControlClient::status`].
    pub async fn release(&self, req: pb::ReleaseRequest) -> Result<pb::LeaseInfo, ControlError> {
        Ok(self.inner.clone().release(req).await?.into_inner())
    }

    /// Calls `Terminate`.
    ///
    /// # Errors
    /// As [`ControlClient::status`].
    pub async fn terminate(
        &self,
        req: pb::TerminateRequest,
    ) -> Result<pb::LeaseInfo, ControlError> {
        Ok(self.inner.clone().terminate(req).await?.into_inner())
    }

    /// Calls `Leases`.
    ///
    /// # Errors
    /// As [`ControlClient::status`].
    pub async fn leases(&self) -> Result<pb::LeasesReply, ControlError> {
        Ok(self
            .inner
            .clone()
            .leases(pb::LeasesRequest {})
            .await?
            .into_inner())
    }

    /// Calls `AuditVerify`.
    ///
    /// # Errors
    /// As [`ControlClient::status`].
    pub async fn audit_verify(&self) -> Result<pb::AuditVerifyReply, ControlError> {
        Ok(self
            .inner
            .clone()
            .audit_verify(pb::AuditVerifyRequest {})
            .await?
            .into_inner())
    }

    /// Calls `Receipts`.
    ///
    /// # Errors
    /// As [`ControlClient::status`].
    pub async fn receipts(
        &self,
        lease_id: Option<String>,
    ) -> Result<pb::ReceiptsReply, ControlError> {
        Ok(self
            .inner
            .clone()
            .receipts(pb::ReceiptsRequest { lease_id })
            .await?
            .into_inner())
    }

    /// Calls `LeaseCertificate`.
    ///
    /// # Errors
    /// As [`ControlClient::status`].
    pub async fn lease_certificate(
        &self,
        lease_id: String,
    ) -> Result<pb::LeaseCertificateReply, ControlError> {
        Ok(self
            .inner
            .clone()
            .lease_certificate(pb::LeaseCertificateRequest { lease_id })
            .await?
            .into_inner())
    }

    /// Calls `AuditWitness`.
    ///
    /// # Errors
    /// As [`ControlClient::status`].
    pub async fn audit_witness(&self) -> Result<pb::AuditWitnessReply, ControlError> {
        Ok(self
            .inner
            .clone()
            .audit_witness(pb::AuditWitnessRequest {})
            .await?
            .into_inner())
    }
}
