//! [`LndClient`]: the [`LightningNode`] backend for a real LND node (or `lnd-sim`), over LND's
//! gRPC API.
//!
//! Connection steps:
//! 1. read `tls.cert` and the macaroon file;
//! 2. open TCP, then TLS with a verifier that accepts exactly the pinned certificate (LND's
//!    self-signed `tls.cert` is a CA certificate, which webpki refuses as a server certificate,
//!    and pinning the exact bytes is stronger than a CA check anyway), ALPN `h2`;
//! 3. run `lnrpc.Lightning` and `routerrpc.Router` clients over that channel, adding the hex
//!    macaroon as the `macaroon` metadata header on every call.
//!
//! The macaroon is a bearer credential: it is never logged, and no `Debug` impl prints it.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bitcoin::hashes::{Hash as _, sha256};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, warn};

use super::proto::lnrpc::{
    self, invoice::InvoiceState as LndInvoiceState, lightning_client::LightningClient,
    payment::PaymentStatus as LndPaymentStatus,
};
use super::proto::routerrpc::{self, router_client::RouterClient};
use super::{
    CreatedInvoice, InvoicePage, InvoiceRequest, InvoiceState, InvoiceStatus, LightningError,
    LightningNode, ListedInvoice, NodeInfo, PayRequest, PaymentOutcome, PaymentStatus,
};

/// How long to wait for TCP + TLS + HTTP/2 setup.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Extra time, beyond the payment's own `timeout_seconds`, we wait for LND's final status.
/// LND enforces the payment timeout itself; this only guards against a stuck stream.
const PAYMENT_STREAM_GRACE: Duration = Duration::from_secs(60);

/// Where and how to reach an LND node.
///
/// `Debug` shows only the paths, never file contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LndConfig {
    /// gRPC `host:port` (LND's default is `127.0.0.1:10009`; IPv6 as `[::1]:10009`).
    pub address: String,
    /// LND's `tls.cert` (PEM). The server must present exactly this certificate.
    pub tls_cert_path: PathBuf,
    /// A macaroon file (raw bytes, e.g. `admin.macaroon` or a baked invoice+offchain one).
    pub macaroon_path: PathBuf,
}

/// Adds the `macaroon` header to every request. Its `Debug` output is redacted.
#[derive(Clone)]
pub struct MacaroonInterceptor {
    header: MetadataValue<Ascii>,
}

impl std::fmt::Debug for MacaroonInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacaroonInterceptor(<redacted>)")
    }
}

impl Interceptor for MacaroonInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("macaroon", self.header.clone());
        Ok(req)
    }
}

/// The channel type of the raw clients: every request carries the macaroon.
pub type AuthedChannel = InterceptedService<Channel, MacaroonInterceptor>;
type Authed = AuthedChannel;

/// A connected LND gRPC client. Cheap to clone (clones share one HTTP/2 connection).
#[derive(Clone)]
pub struct LndClient {
    lightning: LightningClient<Authed>,
    router: RouterClient<Authed>,
    address: String,
    /// The macaroon, for `CheckMacaroonPermissions` (never logged: `Debug` omits it).
    macaroon: std::sync::Arc<Vec<u8>>,
}

impl std::fmt::Debug for LndClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LndClient")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl LndClient {
    /// Reads the certificate and macaroon named by `config` and connects.
    ///
    /// The connection is established eagerly, so a wrong address or a server presenting a
    /// different certificate fails here rather than on the first call. The macaroon itself is
    /// only checked by the node when a call is made.
    ///
    /// # Errors
    /// [`LightningError::Io`] if a file cannot be read (or the macaroon is empty),
    /// [`LightningError::Tls`] if the certificate file holds no PEM certificate or the host
    /// is not a valid TLS server name, [`LightningError::Connect`] if the node cannot be reached
    /// or the TLS handshake fails.
    pub async fn connect(config: &LndConfig) -> Result<LndClient, LightningError> {
        let pinned = read_pinned_cert(&config.tls_cert_path)?;
        let macaroon = read_file(&config.macaroon_path, "macaroon")?;
        if macaroon.is_empty() {
            return Err(LightningError::Io {
                what: "macaroon",
                path: config.macaroon_path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "file is empty"),
            });
        }
        LndClient::connect_pinned_der(&config.address, pinned, &macaroon).await
    }

    /// Connects with an in-memory certificate and macaroon (e.g. from an lndconnect URI).
    ///
    /// `cert` is LND's `tls.cert`, PEM or DER (detected by the `-----BEGIN` marker);
    /// `macaroon` is the raw macaroon bytes (not hex). Neither is ever logged or included in
    /// an error message.
    ///
    /// # Errors
    /// [`LightningError::Config`] for an empty macaroon, [`LightningError::Tls`] for a
    /// certificate that is neither a PEM certificate nor DER-encoded, or a bad host;
    /// [`LightningError::Connect`] if the node cannot be reached or the TLS handshake fails.
    pub async fn connect_with(
        address: &str,
        cert: &[u8],
        macaroon: &[u8],
    ) -> Result<LndClient, LightningError> {
        if macaroon.is_empty() {
            return Err(LightningError::Config("the macaroon is empty".into()));
        }
        let pinned = parse_certificate(cert)?;
        LndClient::connect_pinned_der(address, pinned, macaroon).await
    }

    async fn connect_pinned_der(
        address: &str,
        pinned: CertificateDer<'static>,
        macaroon: &[u8],
    ) -> Result<LndClient, LightningError> {
        let (channel, interceptor) = pinned_channel(address, pinned, macaroon).await?;
        debug!(%address, "connected to LND");
        Ok(LndClient {
            lightning: LightningClient::with_interceptor(channel.clone(), interceptor.clone()),
            router: RouterClient::with_interceptor(channel, interceptor),
            address: address.to_owned(),
            macaroon: std::sync::Arc::new(macaroon.to_vec()),
        })
    }

    /// The `host:port` this client is connected to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A raw `lnrpc.Lightning` client on this connection, for calls outside
    /// [`LightningNode`] (e.g. `SubscribeInvoices`, `ListPayments`).
    pub fn lightning_client(&self) -> LightningClient<AuthedChannel> {
        self.lightning.clone()
    }

    /// A raw `routerrpc.Router` client on this connection (e.g. `TrackPaymentV2`).
    pub fn router_client(&self) -> RouterClient<AuthedChannel> {
        self.router.clone()
    }
}

/// Opens an HTTP/2 channel to `address` over TLS pinned to `pinned`, with the macaroon
/// interceptor to wrap clients in.
async fn pinned_channel(
    address: &str,
    pinned: CertificateDer<'static>,
    macaroon: &[u8],
) -> Result<(Channel, MacaroonInterceptor), LightningError> {
    // tonic (server side, elsewhere in the process) and rustls need one process-wide
    // provider when several are compiled in; an "already installed" error is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let header = MetadataValue::try_from(hex::encode(macaroon))
        .expect("hex is always a valid ASCII metadata value");
    let channel = connect_pinned(address, pinned).await?;
    Ok((channel, MacaroonInterceptor { header }))
}

/// An authenticated channel for any gRPC client generated by tonic (e.g. lnd-sim's admin
/// API): TLS pinned to `cert` (PEM or DER) and the hex `macaroon` header on every call, the
/// same connection setup as [`LndClient`].
///
/// # Errors
/// As [`LndClient::connect_with`].
pub async fn authed_channel(
    address: &str,
    cert: &[u8],
    macaroon: &[u8],
) -> Result<AuthedChannel, LightningError> {
    if macaroon.is_empty() {
        return Err(LightningError::Config("the macaroon is empty".into()));
    }
    let pinned = parse_certificate(cert)?;
    let (channel, interceptor) = pinned_channel(address, pinned, macaroon).await?;
    Ok(InterceptedService::new(channel, interceptor))
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, LightningError> {
    std::fs::read(path).map_err(|source| LightningError::Io {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Parses a certificate given as PEM (the first certificate in it) or as raw DER.
///
/// DER input is only checked structurally (one complete ASN.1 SEQUENCE, the shape of an
/// X.509 certificate): the pin compares exact bytes, so a wrong but well-formed certificate
/// fails at the TLS handshake instead. Error messages never contain the input.
///
/// # Errors
/// [`LightningError::Tls`] when the bytes are neither.
pub fn parse_certificate(bytes: &[u8]) -> Result<CertificateDer<'static>, LightningError> {
    let trimmed = bytes.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        let mut reader = std::io::BufReader::new(trimmed);
        return match rustls_pemfile::certs(&mut reader).next() {
            Some(Ok(cert)) => Ok(cert),
            Some(Err(e)) => Err(LightningError::Tls(format!("bad PEM certificate: {e}"))),
            None => Err(LightningError::Tls("no certificate in the PEM data".into())),
        };
    }
    if is_der_sequence(bytes) {
        Ok(CertificateDer::from(bytes.to_vec()))
    } else {
        Err(LightningError::Tls(format!(
            "certificate ({} bytes) is neither PEM nor DER",
            bytes.len()
        )))
    }
}

/// True when `der` is exactly one DER SEQUENCE (tag 0x30, definite length covering the rest)
/// whose content starts with another SEQUENCE (`tbsCertificate`).
fn is_der_sequence(der: &[u8]) -> bool {
    let Some((&0x30, rest)) = der.split_first() else {
        return false;
    };
    let Some((&first, rest)) = rest.split_first() else {
        return false;
    };
    let (len, content) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: the low bits say how many length bytes follow (at most 4 here; a
        // certificate over 4 GiB is not a certificate).
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return false;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    len == content.len() && content.first() == Some(&0x30)
}

/// Reads the first PEM certificate from `path`.
fn read_pinned_cert(path: &Path) -> Result<CertificateDer<'static>, LightningError> {
    let pem = read_file(path, "TLS certificate")?;
    let mut reader = std::io::BufReader::new(pem.as_slice());
    match rustls_pemfile::certs(&mut reader).next() {
        Some(Ok(cert)) => Ok(cert),
        Some(Err(e)) => Err(LightningError::Tls(format!(
            "bad PEM in {}: {e}",
            path.display()
        ))),
        None => Err(LightningError::Tls(format!(
            "no certificate in {}",
            path.display()
        ))),
    }
}

/// Accepts the server only if it presents exactly the pinned certificate. Handshake signatures
/// are still verified (with the ring provider), so the server must hold the matching key.
#[derive(Debug)]
struct PinnedCertVerifier {
    pinned: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Name and validity period are deliberately not checked: the pin identifies the node
        // exactly, and LND regenerates its certificate (which the operator then re-pins).
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Formats an error with its whole `source()` chain (tonic's top-level messages are terse).
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// Opens an HTTP/2 channel to `address` over TLS pinned to `pinned`.
async fn connect_pinned(
    address: &str,
    pinned: CertificateDer<'static>,
) -> Result<Channel, LightningError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinnedCertVerifier {
        pinned,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LightningError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls));

    // SNI name: the host part of `host:port`, brackets stripped for IPv6 literals. The verifier
    // ignores it, but rustls needs a syntactically valid name or IP.
    let host = address
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(address)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|e| LightningError::Tls(format!("bad host in {address:?}: {e}")))?;

    // tonic must not add its own TLS layer (it would refuse the CA certificate), so the
    // endpoint URI is plain http and TLS happens inside the connector.
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| LightningError::Connect {
            address: address.to_owned(),
            reason: format!("invalid address: {e}"),
        })?
        .connect_timeout(CONNECT_TIMEOUT);
    let target = address.to_owned();
    let connector = tower::service_fn(move |_uri: tonic::codegen::http::Uri| {
        let tls = tls.clone();
        let server_name = server_name.clone();
        let target = target.clone();
        async move {
            let tcp = TcpStream::connect(&target).await?;
            // Small gRPC frames (a request's end, a ping) must not wait for a delayed ACK.
            tcp.set_nodelay(true)?;
            let stream = tls.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| LightningError::Connect {
            address: address.to_owned(),
            reason: error_chain(&e),
        })
}

fn rpc_error(method: &'static str) -> impl FnOnce(tonic::Status) -> LightningError {
    move |status| LightningError::Rpc {
        method,
        code: status.code(),
        message: status.message().to_owned(),
    }
}

fn to_hash(bytes: &[u8], what: &str) -> Result<[u8; 32], LightningError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| {
        LightningError::InvalidResponse(format!("{what} is {} bytes, not 32", bytes.len()))
    })
}

fn hex_hash(s: &str, what: &str) -> Result<[u8; 32], LightningError> {
    let bytes = hex::decode(s)
        .map_err(|e| LightningError::InvalidResponse(format!("{what} is not hex: {e}")))?;
    to_hash(&bytes, what)
}

fn non_negative(v: i64, what: &str) -> Result<u64, LightningError> {
    u64::try_from(v)
        .map_err(|_| LightningError::InvalidResponse(format!("{what} is negative: {v}")))
}

/// Converts LND's final `Payment` update into an outcome, checking the proof of payment.
/// The payee-side state of an LND invoice.
fn invoice_status(inv: &lnrpc::Invoice) -> Result<InvoiceStatus, LightningError> {
    let state = match LndInvoiceState::try_from(inv.state) {
        Ok(LndInvoiceState::Open) => InvoiceState::Open,
        Ok(LndInvoiceState::Settled) => InvoiceState::Settled,
        Ok(LndInvoiceState::Canceled) => InvoiceState::Canceled,
        Ok(LndInvoiceState::Accepted) => InvoiceState::Accepted,
        Err(_) => {
            return Err(LightningError::InvalidResponse(format!(
                "unknown invoice state {}",
                inv.state
            )));
        }
    };
    let settled_at = (state == InvoiceState::Settled && inv.settle_date > 0)
        .then(|| non_negative(inv.settle_date, "settle_date"))
        .transpose()?;
    Ok(InvoiceStatus {
        state,
        amount_paid_msat: non_negative(inv.amt_paid_msat, "amt_paid_msat")?,
        settled_at,
    })
}

fn payment_outcome(p: &lnrpc::Payment) -> Result<PaymentOutcome, LightningError> {
    let payment_hash = hex_hash(&p.payment_hash, "payment_hash")?;
    let preimage = hex_hash(&p.payment_preimage, "payment_preimage")?;
    if sha256::Hash::hash(&preimage).to_byte_array() != payment_hash {
        return Err(LightningError::InvalidResponse(
            "preimage does not hash to the payment hash".into(),
        ));
    }
    Ok(PaymentOutcome {
        payment_hash,
        preimage,
        amount_msat: non_negative(p.value_msat, "value_msat")?,
        fee_msat: non_negative(p.fee_msat, "fee_msat")?,
    })
}

fn failure_reason_name(code: i32) -> String {
    match lnrpc::PaymentFailureReason::try_from(code) {
        Ok(r) => r.as_str_name().to_owned(),
        Err(_) => format!("UNKNOWN_FAILURE_REASON_{code}"),
    }
}

/// Maps one `lnrpc.Payment` (from `TrackPaymentV2` or `ListPayments`) to our status.
// `Unknown` is deprecated in the proto but old nodes still send it.
#[allow(deprecated)]
fn payment_status(p: &lnrpc::Payment) -> Result<PaymentStatus, LightningError> {
    match LndPaymentStatus::try_from(p.status) {
        Ok(LndPaymentStatus::Succeeded) => Ok(PaymentStatus::Succeeded(payment_outcome(p)?)),
        Ok(LndPaymentStatus::Failed) => Ok(PaymentStatus::Failed {
            reason: failure_reason_name(p.failure_reason),
        }),
        // UNKNOWN is only used by very old LND versions for legacy payments still pending;
        // INITIATED means HTLCs may be dispatched at any moment. Neither is final.
        Ok(
            LndPaymentStatus::Unknown | LndPaymentStatus::InFlight | LndPaymentStatus::Initiated,
        ) => Ok(PaymentStatus::InFlight),
        Err(_) => Err(LightningError::InvalidResponse(format!(
            "unknown payment status {}",
            p.status
        ))),
    }
}

/// How many payments one `ListPayments` page asks for in the fallback scan.
const LIST_PAYMENTS_PAGE: u64 = 500;
/// Upper bound on pages scanned, so a huge payment history cannot stall a caller forever.
const LIST_PAYMENTS_MAX_PAGES: usize = 200;

impl LndClient {
    /// `ListPayments` fallback of [`LightningNode::track_payment`]: scans the payment history
    /// newest first and returns the latest payment with this hash.
    async fn track_by_listing(
        &self,
        payment_hash: [u8; 32],
    ) -> Result<Option<PaymentStatus>, LightningError> {
        let wanted = hex::encode(payment_hash);
        let mut index_offset = 0;
        for _ in 0..LIST_PAYMENTS_MAX_PAGES {
            let page = self
                .lightning
                .clone()
                .list_payments(lnrpc::ListPaymentsRequest {
                    include_incomplete: true,
                    index_offset,
                    max_payments: LIST_PAYMENTS_PAGE,
                    reversed: true,
                    count_total_payments: false,
                })
                .await
                .map_err(rpc_error("ListPayments"))?
                .into_inner();
            // A reversed page is still in ascending index order: search it from the end.
            if let Some(p) = page
                .payments
                .iter()
                .rev()
                .find(|p| p.payment_hash == wanted)
            {
                return payment_status(p).map(Some);
            }
            if page.payments.is_empty() || page.first_index_offset <= 1 {
                return Ok(None);
            }
            index_offset = page.first_index_offset;
        }
        Err(LightningError::InvalidResponse(format!(
            "payment not among the newest {} payments; use TrackPaymentV2",
            LIST_PAYMENTS_PAGE * LIST_PAYMENTS_MAX_PAGES as u64
        )))
    }
}

#[async_trait::async_trait]
impl LightningNode for LndClient {
    async fn can_pay(&self) -> Result<bool, LightningError> {
        let resp = self
            .lightning
            .clone()
            .check_macaroon_permissions(lnrpc::CheckMacPermRequest {
                macaroon: self.macaroon.to_vec(),
                permissions: vec![lnrpc::MacaroonPermission {
                    entity: "offchain".into(),
                    action: "write".into(),
                }],
            })
            .await
            .map_err(rpc_error("CheckMacaroonPermissions"))?
            .into_inner();
        Ok(resp.valid)
    }

    async fn get_info(&self) -> Result<NodeInfo, LightningError> {
        let info = self
            .lightning
            .clone()
            .get_info(lnrpc::GetInfoRequest {})
            .await
            .map_err(rpc_error("GetInfo"))?
            .into_inner();
        let network = info
            .chains
            .first()
            .map(|c| c.network.clone())
            .ok_or_else(|| LightningError::InvalidResponse("GetInfo lists no chain".into()))?;
        Ok(NodeInfo {
            pubkey: info.identity_pubkey,
            alias: info.alias,
            network,
            block_height: info.block_height,
        })
    }

    async fn add_invoice(&self, req: InvoiceRequest) -> Result<CreatedInvoice, LightningError> {
        if req.amount_msat == 0 {
            return Err(LightningError::InvalidRequest(
                "invoice amount must be non-zero".into(),
            ));
        }
        let value_msat = i64::try_from(req.amount_msat)
            .map_err(|_| LightningError::InvalidRequest("invoice amount too large".into()))?;
        let expiry = i64::try_from(req.expiry_secs)
            .ok()
            .filter(|e| *e > 0)
            .ok_or_else(|| LightningError::InvalidRequest("expiry must be 1..=i64::MAX".into()))?;
        let resp = self
            .lightning
            .clone()
            .add_invoice(lnrpc::Invoice {
                value_msat,
                description_hash: req.description_hash.to_vec(),
                expiry,
                ..Default::default()
            })
            .await
            .map_err(rpc_error("AddInvoice"))?
            .into_inner();
        if resp.payment_request.is_empty() {
            return Err(LightningError::InvalidResponse(
                "AddInvoice returned no payment request".into(),
            ));
        }
        Ok(CreatedInvoice {
            bolt11: resp.payment_request,
            payment_hash: to_hash(&resp.r_hash, "r_hash")?,
            add_index: resp.add_index,
        })
    }

    async fn lookup_invoice(
        &self,
        payment_hash: [u8; 32],
    ) -> Result<InvoiceStatus, LightningError> {
        let inv = self
            .lightning
            .clone()
            .lookup_invoice(lnrpc::PaymentHash {
                r_hash: payment_hash.to_vec(),
                ..Default::default()
            })
            .await
            .map_err(rpc_error("LookupInvoice"))?
            .into_inner();
        invoice_status(&inv)
    }

    async fn list_invoices(
        &self,
        index_offset: u64,
        max: u64,
    ) -> Result<InvoicePage, LightningError> {
        let resp = self
            .lightning
            .clone()
            .list_invoices(lnrpc::ListInvoiceRequest {
                index_offset,
                num_max_invoices: max,
                ..Default::default()
            })
            .await
            .map_err(rpc_error("ListInvoices"))?
            .into_inner();
        let invoices = resp
            .invoices
            .iter()
            .map(|inv| {
                Ok(ListedInvoice {
                    payment_hash: to_hash(&inv.r_hash, "r_hash")?,
                    add_index: inv.add_index,
                    status: invoice_status(inv)?,
                })
            })
            .collect::<Result<Vec<_>, LightningError>>()?;
        Ok(InvoicePage {
            invoices,
            last_index_offset: resp.last_index_offset,
        })
    }

    async fn pay_invoice(&self, req: PayRequest) -> Result<PaymentOutcome, LightningError> {
        if req.timeout_secs <= 0 {
            return Err(LightningError::InvalidRequest(
                "payment timeout must be positive".into(),
            ));
        }
        let fee_limit_msat = i64::try_from(req.fee_limit_msat)
            .map_err(|_| LightningError::InvalidRequest("fee limit too large".into()))?;
        let mut stream = self
            .router
            .clone()
            .send_payment_v2(routerrpc::SendPaymentRequest {
                payment_request: req.bolt11,
                timeout_seconds: req.timeout_secs,
                fee_limit_msat,
                no_inflight_updates: true,
                ..Default::default()
            })
            .await
            .map_err(rpc_error("SendPaymentV2"))?
            .into_inner();

        let timeout_secs = u64::try_from(req.timeout_secs).unwrap_or(0);
        let deadline = Duration::from_secs(timeout_secs) + PAYMENT_STREAM_GRACE;
        let result = tokio::time::timeout(deadline, async {
            // Intermediate (IN_FLIGHT / INITIATED) updates are skipped; the last update is final.
            while let Some(update) = stream.message().await.map_err(rpc_error("SendPaymentV2"))? {
                match LndPaymentStatus::try_from(update.status) {
                    Ok(LndPaymentStatus::Succeeded) => return payment_outcome(&update),
                    Ok(LndPaymentStatus::Failed) => {
                        let reason = failure_reason_name(update.failure_reason);
                        warn!(payment_hash = %update.payment_hash, %reason, "payment failed");
                        return Err(LightningError::PaymentFailed { reason });
                    }
                    _ => debug!(payment_hash = %update.payment_hash, "payment in flight"),
                }
            }
            Err(LightningError::InvalidResponse(
                "SendPaymentV2 stream ended without a final status".into(),
            ))
        })
        .await;
        match result {
            Ok(r) => r,
            Err(_) => Err(LightningError::Timeout {
                what: "SendPaymentV2 final status",
                secs: deadline.as_secs(),
            }),
        }
    }

    async fn track_payment(
        &self,
        payment_hash: [u8; 32],
    ) -> Result<Option<PaymentStatus>, LightningError> {
        let started = self
            .router
            .clone()
            .track_payment_v2(routerrpc::TrackPaymentRequest {
                payment_hash: payment_hash.to_vec(),
                // The first update is the current state either way; in-flight updates are
                // wanted so an unresolved payment answers at once instead of at resolution.
                no_inflight_updates: false,
            })
            .await;
        let mut stream = match started {
            Ok(resp) => resp.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            // LND built without the router sub-server: the main service still lists payments.
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                debug!("TrackPaymentV2 unimplemented, falling back to ListPayments");
                return self.track_by_listing(payment_hash).await;
            }
            Err(s) => return Err(rpc_error("TrackPaymentV2")(s)),
        };
        // LND sends the current state as the first message; only that one is needed. Some
        // LND versions report NotFound as a stream error rather than on the call itself.
        let first = tokio::time::timeout(CONNECT_TIMEOUT, stream.message()).await;
        match first {
            Ok(Ok(Some(update))) => payment_status(&update).map(Some),
            Ok(Ok(None)) => self.track_by_listing(payment_hash).await,
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => Ok(None),
            Ok(Err(s)) => Err(rpc_error("TrackPaymentV2")(s)),
            Err(_) => Err(LightningError::Timeout {
                what: "TrackPaymentV2 first update",
                secs: CONNECT_TIMEOUT.as_secs(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_macaroon() {
        let i = MacaroonInterceptor {
            header: MetadataValue::from_static("0201036c6e64"),
        };
        assert!(!format!("{i:?}").contains("0201036c6e64"));
    }

    #[test]
    fn outcome_checks_preimage() {
        let preimage = [5u8; 32];
        let hash = sha256::Hash::hash(&preimage).to_byte_array();
        let mut p = lnrpc::Payment {
            payment_hash: hex::encode(hash),
            payment_preimage: hex::encode(preimage),
            value_msat: 1000,
            fee_msat: 2,
            status: LndPaymentStatus::Succeeded as i32,
            ..Default::default()
        };
        let o = payment_outcome(&p).expect("valid");
        assert_eq!(
            (o.payment_hash, o.preimage, o.amount_msat, o.fee_msat),
            (hash, preimage, 1000, 2)
        );
        p.payment_preimage = hex::encode([6u8; 32]);
        assert!(matches!(
            payment_outcome(&p),
            Err(LightningError::InvalidResponse(_))
        ));
        p.payment_preimage = "zz".into();
        assert!(matches!(
            payment_outcome(&p),
            Err(LightningError::InvalidResponse(_))
        ));
    }

    #[test]
    fn failure_reasons_use_lnd_names() {
        assert_eq!(
            failure_reason_name(
                lnrpc::PaymentFailureReason::FailureReasonInsufficientBalance as i32
            ),
            "FAILURE_REASON_INSUFFICIENT_BALANCE"
        );
        assert_eq!(failure_reason_name(99), "UNKNOWN_FAILURE_REASON_99");
    }

    #[test]
    fn missing_files_are_io_errors() {
        let err = read_pinned_cert(Path::new("/nonexistent/tls.cert")).expect_err("missing");
        assert!(matches!(
            err,
            LightningError::Io {
                what: "TLS certificate",
                ..
            }
        ));
    }

    #[test]
    fn non_pem_cert_is_tls_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tls.cert");
        std::fs::write(&path, b"not a certificate").expect("write");
        assert!(matches!(
            read_pinned_cert(&path),
            Err(LightningError::Tls(_))
        ));
    }

    #[test]
    fn config_round_trips_through_toml() {
        let cfg = LndConfig {
            address: "127.0.0.1:10009".into(),
            tls_cert_path: "/var/lib/lnd/tls.cert".into(),
            macaroon_path: "/var/lib/lnd/admin.macaroon".into(),
        };
        let text = toml::to_string(&cfg).expect("serialize");
        assert_eq!(toml::from_str::<LndConfig>(&text).expect("parse"), cfg);
    }
}
