//! The daemon's local control API: gRPC (tonic) over the Unix socket `D/leasewire.sock`.
//!
//! The daemon implements [`ControlHandler`] and hands it to [`serve`]; the CLI talks to it with
//! [`ControlClient`]. Access control is the file system: the socket is created with mode 0600
//! (only the daemon's user may connect), so there is no authentication on top.
//!
//! Serving, step by step:
//! 1. a socket file left behind by a crashed daemon (nobody answers) is removed; a live one
//!    means another daemon owns this data dir, which is an error;
//! 2. the socket is bound inside a fresh 0700 directory, set to 0600 and only then renamed to
//!    its public path, so it is never reachable with looser permissions;
//! 3. requests are served until the cancellation token fires; the socket file is then removed.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::{Code, Request, Response, Status};

mod client;
mod node;

pub use client::ControlClient;
pub use node::NodeControl;

/// Messages and service stubs generated from `proto/control.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("leasewire.control");
}

/// Errors of the control API, on both sides of the socket.
///
/// The first five variants travel over gRPC as the matching [`tonic::Code`] with the message
/// as the status message, so the CLI can print exactly what the daemon said.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The request is malformed or names something in the wrong form (gRPC `INVALID_ARGUMENT`).
    #[error("{0}")]
    InvalidArgument(String),
    /// The lease, offer or other object named does not exist (gRPC `NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// The node is not in a state where the request makes sense, e.g. `rent` on a node without
    /// the renter role, or a second daemon on the same data dir (gRPC `FAILED_PRECONDITION`).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The daemon, or something it depends on (LND, the provider), cannot be reached right now;
    /// retrying later may work (gRPC `UNAVAILABLE`).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else that went wrong inside the daemon (gRPC `INTERNAL` and unmapped codes).
    #[error("{0}")]
    Internal(String),
    /// A local file-system or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path involved.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The gRPC transport failed (server could not run, or the client channel broke).
    #[error("control transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl ControlError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        ControlError::Io {
            context: context.into(),
            source,
        }
    }

    /// The gRPC code this error travels as.
    pub fn code(&self) -> Code {
        match self {
            ControlError::InvalidArgument(_) => Code::InvalidArgument,
            ControlError::NotFound(_) => Code::NotFound,
            ControlError::FailedPrecondition(_) => Code::FailedPrecondition,
            ControlError::Unavailable(_) | ControlError::Transport(_) => Code::Unavailable,
            ControlError::Internal(_) | ControlError::Io { .. } => Code::Internal,
        }
    }
}

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl From<Status> for ControlError {
    fn from(s: Status) -> Self {
        let msg = s.message().to_owned();
        match s.code() {
            Code::InvalidArgument | Code::OutOfRange => ControlError::InvalidArgument(msg),
            Code::NotFound => ControlError::NotFound(msg),
            Code::FailedPrecondition | Code::AlreadyExists | Code::PermissionDenied => {
                ControlError::FailedPrecondition(msg)
            }
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                ControlError::Unavailable(msg)
            }
            Code::Internal => ControlError::Internal(msg),
            // Codes the daemon never sends itself come from the transport or a proxy; keep the
            // code in the text since it is the only hint of what happened.
            other => ControlError::Internal(format!("{other:?}: {msg}")),
        }
    }
}

/// What the daemon implements to answer control requests. One method per RPC of
/// `proto/control.proto`; errors are sent to the client as their gRPC code and message.
#[async_trait::async_trait]
pub trait ControlHandler: Send + Sync + 'static {
    /// Node identity, network membership, known offers and this node's renter leases.
    async fn status(&self) -> Result<pb::StatusReply, ControlError>;
    /// Offers discovered by the renter role, best first.
    async fn offers(&self) -> Result<pb::OffersReply, ControlError>;
    /// Rents under `req.offer_id` or, with `req.auto`, the best offer; returns once the lease
    /// is applied. May take as long as discovery plus a Lightning payment.
    async fn rent(&self, req: pb::RentRequest) -> Result<pb::LeaseInfo, ControlError>;
    /// The wg-quick configuration of a renter lease (empty id: the only or latest lease).
    async fn conf(&self, req: pb::ConfRequest) -> Result<pb::ConfReply, ControlError>;
    /// Pays for more credit on a renter lease; returns the lease as the provider confirmed it.
    async fn add_credit(&self, req: pb::AddCreditRequest) -> Result<pb::LeaseInfo, ControlError>;
    /// A checked top-up invoice for payment from another wallet.
    async fn manual_invoice(
        &self,
        req: pb::AddCreditRequest,
    ) -> Result<pb::ManualInvoiceReply, ControlError>;
    /// Waits until the provider's signed lease shows a manual invoice's credit.
    async fn await_credit(
        &self,
        req: pb::AwaitCreditRequest,
    ) -> Result<pb::LeaseInfo, ControlError>;
    /// Switches AutoPay on or off for a renter lease.
    async fn set_autopay(&self, req: pb::SetAutopayRequest) -> Result<pb::LeaseInfo, ControlError>;
    /// Gives a renter lease up.
    async fn release(&self, req: pb::ReleaseRequest) -> Result<pb::LeaseInfo, ControlError>;
    /// Provider view: every lease this node has issued.
    async fn leases(&self) -> Result<pb::LeasesReply, ControlError>;
    /// Provider: ends a lease with notice.
    async fn terminate(&self, req: pb::TerminateRequest) -> Result<pb::LeaseInfo, ControlError>;
    /// Verifies this node's audit log.
    async fn audit_verify(&self) -> Result<pb::AuditVerifyReply, ControlError>;
    /// Renter: the kept receipts.
    async fn receipts(&self, req: pb::ReceiptsRequest) -> Result<pb::ReceiptsReply, ControlError>;
    /// Witnessed peer heads and evidence.
    async fn audit_witness(&self) -> Result<pb::AuditWitnessReply, ControlError>;
    /// Provider: a lease certificate.
    async fn lease_certificate(
        &self,
        req: pb::LeaseCertificateRequest,
    ) -> Result<pb::LeaseCertificateReply, ControlError>;
}

/// Adapts a [`ControlHandler`] to the generated tonic service trait.
struct Service {
    handler: Arc<dyn ControlHandler>,
}

/// Converts a handler result into a tonic response, logging failures on the daemon side so
/// the operator sees them even when the client has gone away.
fn reply<T>(rpc: &'static str, result: Result<T, ControlError>) -> Result<Response<T>, Status> {
    match result {
        Ok(v) => Ok(Response::new(v)),
        Err(e) => {
            if matches!(e.code(), Code::Internal) {
                tracing::warn!(rpc, error = %e, "control request failed");
            } else {
                tracing::debug!(rpc, error = %e, "control request refused");
            }
            Err(e.into())
        }
    }
}

#[tonic::async_trait]
impl pb::control_server::Control for Service {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        reply("status", self.handler.status().await)
    }

    async fn offers(
        &self,
        _req: Request<pb::OffersRequest>,
    ) -> Result<Response<pb::OffersReply>, Status> {
        reply("offers", self.handler.offers().await)
    }

    async fn rent(&self, req: Request<pb::RentRequest>) -> Result<Response<pb::LeaseInfo>, Status> {
        reply("rent", self.handler.rent(req.into_inner()).await)
    }

    async fn conf(&self, req: Request<pb::ConfRequest>) -> Result<Response<pb::ConfReply>, Status> {
        reply("conf", self.handler.conf(req.into_inner()).await)
    }

    async fn add_credit(
        &self,
        req: Request<pb::AddCreditRequest>,
    ) -> Result<Response<pb::LeaseInfo>, Status> {
        reply(
            "add_credit",
            self.handler.add_credit(req.into_inner()).await,
        )
    }

    async fn manual_invoice(
        &self,
        req: Request<pb::AddCreditRequest>,
    ) -> Result<Response<pb::ManualInvoiceReply>, Status> {
        reply(
            "manual_invoice",
            self.handler.manual_invoice(req.into_inner()).await,
        )
    }

    async fn await_credit(
        &self,
        req: Request<pb::AwaitCreditRequest>,
    ) -> Result<Response<pb::LeaseInfo>, Status> {
        reply(
            "await_credit",
            self.handler.await_credit(req.into_inner()).await,
        )
    }

    async fn set_autopay(
        &self,
        req: Request<pb::SetAutopayRequest>,
    ) -> Result<Response<pb::LeaseInfo>, Status> {
        reply(
            "set_autopay",
            self.handler.set_autopay(req.into_inner()).await,
        )
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::LeaseInfo>, Status> {
        reply("release", self.handler.release(req.into_inner()).await)
    }

    async fn terminate(
        &self,
        req: Request<pb::TerminateRequest>,
    ) -> Result<Response<pb::LeaseInfo>, Status> {
        reply("terminate", self.handler.terminate(req.into_inner()).await)
    }

    async fn leases(
        &self,
        _req: Request<pb::LeasesRequest>,
    ) -> Result<Response<pb::LeasesReply>, Status> {
        reply("leases", self.handler.leases().await)
    }

    async fn audit_verify(
        &self,
        _req: Request<pb::AuditVerifyRequest>,
    ) -> Result<Response<pb::AuditVerifyReply>, Status> {
        reply("audit_verify", self.handler.audit_verify().await)
    }

    async fn receipts(
        &self,
        req: Request<pb::ReceiptsRequest>,
    ) -> Result<Response<pb::ReceiptsReply>, Status> {
        reply("receipts", self.handler.receipts(req.into_inner()).await)
    }

    async fn audit_witness(
        &self,
        _req: Request<pb::AuditWitnessRequest>,
    ) -> Result<Response<pb::AuditWitnessReply>, Status> {
        reply("audit_witness", self.handler.audit_witness().await)
    }

    async fn lease_certificate(
        &self,
        req: Request<pb::LeaseCertificateRequest>,
    ) -> Result<Response<pb::LeaseCertificateReply>, Status> {
        reply(
            "lease_certificate",
            self.handler.lease_certificate(req.into_inner()).await,
        )
    }
}

/// The gRPC service [`serve`] runs for `handler`: a tower service taking HTTP/2 requests.
/// [`serve`] is what the daemon uses; this is for driving the API without a socket (the
/// control-request fuzz target in fuzz/ feeds it raw gRPC request bodies).
pub fn grpc_service(
    handler: Arc<dyn ControlHandler>,
) -> pb::control_server::ControlServer<impl pb::control_server::Control> {
    pb::control_server::ControlServer::new(Service { handler })
        .max_decoding_message_size(MAX_CONTROL_REQUEST)
}

/// Largest control request accepted, in bytes (the largest real one, a `rent` with allow and
/// deny lists, is a few KiB). tonic reserves a buffer of the length a request announces before
/// its bytes arrive, up to this limit (4 MiB by default; found by fuzz/ control_request).
pub const MAX_CONTROL_REQUEST: usize = 64 * 1024;

/// Serves the Control service on the Unix socket `socket` (mode 0600) until `shutdown` is
/// cancelled, then removes the socket file and returns.
///
/// A stale socket file (nobody answering) is removed first.
///
/// # Errors
/// - [`ControlError::FailedPrecondition`] if a daemon already answers on `socket`, or the path
///   exists and is not a socket (it is left untouched).
/// - [`ControlError::Io`] if the socket cannot be created, secured or moved into place.
/// - [`ControlError::Transport`] if the gRPC server fails while running.
pub async fn serve(
    socket: &Path,
    handler: Arc<dyn ControlHandler>,
    shutdown: CancellationToken,
) -> Result<(), ControlError> {
    clear_stale_socket(socket).await?;
    let listener = bind_private(socket)?;
    tracing::info!(socket = %socket.display(), "control API listening");

    let result = Server::builder()
        .add_service(grpc_service(handler))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.cancelled())
        .await;

    // Remove the socket even when the server failed, so the next start does not have to
    // treat it as stale.
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(socket = %socket.display(), error = %e, "cannot remove control socket")
        }
    }
    tracing::info!("control API stopped");
    result.map_err(ControlError::from)
}

/// Removes `socket` if it is a socket nobody answers on; fails if a daemon answers there or
/// the path is something other than a socket.
async fn clear_stale_socket(socket: &Path) -> Result<(), ControlError> {
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ControlError::io(
                format!("cannot inspect {}", socket.display()),
                e,
            ));
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ControlError::FailedPrecondition(format!(
            "{} exists and is not a socket; move it away before starting the daemon",
            socket.display()
        )));
    }
    match UnixStream::connect(socket).await {
        Ok(_) => Err(ControlError::FailedPrecondition(format!(
            "another daemon is running (it answers on {})",
            socket.display()
        ))),
        // Refused (or vanished meanwhile): the daemon that made it is gone.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
            ) =>
        {
            tracing::info!(socket = %socket.display(), "removing stale control socket");
            match std::fs::remove_file(socket) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(ControlError::io(
                    format!("cannot remove stale socket {}", socket.display()),
                    e,
                )),
            }
        }
        Err(e) => Err(ControlError::io(
            format!("cannot probe existing socket {}", socket.display()),
            e,
        )),
    }
}

/// Binds a listener at `socket` that is never reachable with permissions looser than 0600.
///
/// `bind` creates the socket file with the process umask (often 0022, i.e. world-connectable),
/// and changing the umask is process-wide and racy. So the socket is bound inside a fresh
/// 0700 directory next to its final path, chmod-ed to 0600 there and renamed into place.
fn bind_private(socket: &Path) -> Result<UnixListener, ControlError> {
    let parent = socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let staging: PathBuf = parent.join(format!(".leasewire.sock.{}.d", std::process::id()));
    // A leftover staging dir can only come from a crashed process with our pid.
    match std::fs::remove_dir_all(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ControlError::io(
                format!("cannot remove {}", staging.display()),
                e,
            ));
        }
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| ControlError::io(format!("cannot create {}", staging.display()), e))?;

    let staged = staging.join("s");
    let bound = (|| {
        let listener = UnixListener::bind(&staged)
            .map_err(|e| ControlError::io(format!("cannot bind {}", staged.display()), e))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ControlError::io(format!("cannot chmod {}", staged.display()), e))?;
        std::fs::rename(&staged, socket).map_err(|e| {
            ControlError::io(
                format!("cannot move control socket into {}", socket.display()),
                e,
            )
        })?;
        Ok(listener)
    })();
    if let Err(e) = std::fs::remove_dir_all(&staging) {
        tracing::warn!(dir = %staging.display(), error = %e, "cannot remove socket staging dir");
    }
    bound
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers `status` with a fixed reply and refuses everything else with distinct codes,
    /// so the tests can check both directions of the error mapping.
    struct Fake;

    #[async_trait::async_trait]
    impl ControlHandler for Fake {
        async fn status(&self) -> Result<pb::StatusReply, ControlError> {
            Ok(pb::StatusReply {
                peer_id: "12D3KooWFake".into(),
                roles: vec!["renter".into()],
                offers_known: 3,
                ..Default::default()
            })
        }
        async fn offers(&self) -> Result<pb::OffersReply, ControlError> {
            Err(ControlError::FailedPrecondition("not a renter".into()))
        }
        async fn rent(&self, req: pb::RentRequest) -> Result<pb::LeaseInfo, ControlError> {
            Err(ControlError::NotFound(format!("no offer {}", req.offer_id)))
        }
        async fn conf(&self, _req: pb::ConfRequest) -> Result<pb::ConfReply, ControlError> {
            Err(ControlError::InvalidArgument("bad lease id".into()))
        }
        async fn add_credit(
            &self,
            _req: pb::AddCreditRequest,
        ) -> Result<pb::LeaseInfo, ControlError> {
            Err(ControlError::Unavailable("LND is down".into()))
        }
        async fn manual_invoice(
            &self,
            _req: pb::AddCreditRequest,
        ) -> Result<pb::ManualInvoiceReply, ControlError> {
            Err(ControlError::NotFound("no lease yet".into()))
        }
        async fn await_credit(
            &self,
            _req: pb::AwaitCreditRequest,
        ) -> Result<pb::LeaseInfo, ControlError> {
            Err(ControlError::NotFound("no such invoice".into()))
        }
        async fn set_autopay(
            &self,
            _req: pb::SetAutopayRequest,
        ) -> Result<pb::LeaseInfo, ControlError> {
            Err(ControlError::NotFound("no lease yet".into()))
        }
        async fn release(&self, _req: pb::ReleaseRequest) -> Result<pb::LeaseInfo, ControlError> {
            Err(ControlError::NotFound("no lease yet".into()))
        }
        async fn terminate(
            &self,
            _req: pb::TerminateRequest,
        ) -> Result<pb::LeaseInfo, ControlError> {
            Err(ControlError::NotFound("no lease yet".into()))
        }
        async fn leases(&self) -> Result<pb::LeasesReply, ControlError> {
            Err(ControlError::io("reading leases", io::Error::other("disk")))
        }
        async fn audit_verify(&self) -> Result<pb::AuditVerifyReply, ControlError> {
            Ok(pb::AuditVerifyReply {
                ok: false,
                entries: 2,
                first_bad_seq: Some(2),
                reason: "bad signature".into(),
            })
        }

        async fn receipts(
            &self,
            _req: pb::ReceiptsRequest,
        ) -> Result<pb::ReceiptsReply, ControlError> {
            Ok(pb::ReceiptsReply::default())
        }

        async fn audit_witness(&self) -> Result<pb::AuditWitnessReply, ControlError> {
            Ok(pb::AuditWitnessReply::default())
        }

        async fn lease_certificate(
            &self,
            req: pb::LeaseCertificateRequest,
        ) -> Result<pb::LeaseCertificateReply, ControlError> {
            Err(ControlError::NotFound(format!("no lease {}", req.lease_id)))
        }
    }

    fn spawn_server(
        sock: &Path,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<Result<(), ControlError>>,
    ) {
        let token = CancellationToken::new();
        let path = sock.to_path_buf();
        let t = token.clone();
        let handle = tokio::spawn(async move { serve(&path, Arc::new(Fake), t).await });
        (token, handle)
    }

    async fn wait_for_socket(path: &Path) {
        for _ in 0..200 {
            if path.exists() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("socket {} never appeared", path.display());
    }

    #[tokio::test]
    async fn serves_status_on_private_socket_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("leasewire.sock");
        let (token, server) = spawn_server(&sock);
        wait_for_socket(&sock).await;

        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The staging directory is gone.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("leasewire.sock")]);

        let client = ControlClient::connect(&sock).await.unwrap();
        let status = client.status().await.unwrap();
        assert_eq!(status.peer_id, "12D3KooWFake");
        assert_eq!(status.offers_known, 3);
        // A second call reuses the channel.
        assert_eq!(client.status().await.unwrap().roles, vec!["renter"]);

        // A second daemon on the same live socket is refused and leaves it alone.
        let second = serve(&sock, Arc::new(Fake), CancellationToken::new()).await;
        match second {
            Err(ControlError::FailedPrecondition(m)) => {
                assert!(m.contains("another daemon is running"), "{m}")
            }
            other => panic!("second serve: {other:?}"),
        }
        assert!(client.status().await.is_ok());

        token.cancel();
        server.await.unwrap().unwrap();
        assert!(!sock.exists());
    }

    #[tokio::test]
    async fn an_oversized_request_is_refused_before_the_handler() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("big.sock");
        let (token, server) = spawn_server(&sock);
        wait_for_socket(&sock).await;
        let c = ControlClient::connect(&sock).await.unwrap();
        let e = c
            .conf(pb::ConfRequest {
                lease_id: "x".repeat(MAX_CONTROL_REQUEST + 1),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ControlError::InvalidArgument(m) if m.contains("too large")),
            "{e:?}"
        );
        // Just under the limit the handler answers (the fake's own refusal).
        let e = c
            .conf(pb::ConfRequest {
                lease_id: "x".repeat(MAX_CONTROL_REQUEST - 16),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ControlError::InvalidArgument(m) if m == "bad lease id"),
            "{e:?}"
        );
        token.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn errors_keep_their_kind_and_message_across_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("c.sock");
        let (token, server) = spawn_server(&sock);
        wait_for_socket(&sock).await;
        let c = ControlClient::connect(&sock).await.unwrap();

        let e = c.offers().await.unwrap_err();
        assert!(
            matches!(&e, ControlError::FailedPrecondition(m) if m == "not a renter"),
            "{e:?}"
        );
        let e = c
            .rent(pb::RentRequest {
                offer_id: "o9".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ControlError::NotFound(m) if m == "no offer o9"),
            "{e:?}"
        );
        let e = c.conf(pb::ConfRequest::default()).await.unwrap_err();
        assert!(matches!(e, ControlError::InvalidArgument(_)), "{e:?}");
        let e = c
            .add_credit(pb::AddCreditRequest::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ControlError::Unavailable(m) if m == "LND is down"),
            "{e:?}"
        );
        let e = c.leases().await.unwrap_err();
        assert!(
            matches!(&e, ControlError::Internal(m) if m.contains("reading leases")),
            "{e:?}"
        );
        let v = c.audit_verify().await.unwrap();
        assert_eq!((v.ok, v.first_bad_seq), (false, Some(2)));

        token.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_and_missing_daemon_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("leasewire.sock");

        let e = ControlClient::connect(&sock).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "no daemon is running for {}",
                dir.path().display()
            )),
            "{msg}"
        );
        assert!(msg.contains("no socket at"), "{msg}");

        // A socket file nobody listens on, as a crashed daemon leaves behind.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        let e = ControlClient::connect(&sock).await.unwrap_err();
        assert!(e.to_string().contains("nobody answers"), "{e}");

        let (token, server) = spawn_server(&sock);
        // Wait until the new server answers (the stale file existed all along).
        let client = loop {
            if let Ok(c) = ControlClient::connect(&sock).await {
                break c;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        assert_eq!(client.status().await.unwrap().peer_id, "12D3KooWFake");
        token.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_regular_file_at_the_socket_path_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("leasewire.sock");
        std::fs::write(&sock, b"not a socket").unwrap();
        let e = serve(&sock, Arc::new(Fake), CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(e, ControlError::FailedPrecondition(_)), "{e:?}");
        assert_eq!(std::fs::read(&sock).unwrap(), b"not a socket");
    }

    #[test]
    fn status_codes_map_both_ways() {
        for e in [
            ControlError::InvalidArgument("a".into()),
            ControlError::NotFound("b".into()),
            ControlError::FailedPrecondition("c".into()),
            ControlError::Unavailable("d".into()),
            ControlError::Internal("e".into()),
        ] {
            let code = e.code();
            let text = e.to_string();
            let back = ControlError::from(Status::from(e));
            assert_eq!(back.code(), code);
            assert_eq!(back.to_string(), text);
        }
        let odd = ControlError::from(Status::new(Code::ResourceExhausted, "too big"));
        assert!(
            matches!(&odd, ControlError::Internal(m) if m.contains("ResourceExhausted") && m.contains("too big"))
        );
    }
}
