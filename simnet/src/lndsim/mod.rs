//! lnd-sim: an LND-API-compatible Lightning simulator.
//!
//! One gRPC server (TLS, self-signed CA certificate like LND's `tls.cert`) hosts several virtual
//! nodes; the request's `macaroon` header selects which one. Nodes hold a balance and issue
//! real, signed regtest BOLT11 invoices; any node can pay any other node's invoice, which moves
//! the amount (plus a configurable routing fee) between balances (see [`ledger`] for the exact
//! rules). Payments run on their own task, so they finish even if the paying client dies.
//! The [`admin`] API (same server, admin macaroon) injects faults, sets the routing fee and
//! lists every payment.
//!
//! Start-up steps ([`SimServer::start`]):
//! 1. build the ledger (random node keys and macaroons) and a random admin macaroon;
//! 2. write `DIR/tls.cert`, `DIR/tls.key`, `DIR/NAME/admin.macaroon` (raw bytes, like LND)
//!    and `DIR/admin.macaroon` (lnd-sim's admin API);
//! 3. bind the listener and serve until [`SimHandle::shutdown`] (or the handle is dropped).
//!
//! [`SimHandle::write_manifest`] then describes the running simulator in a JSON file.

pub mod admin;
pub mod ledger;
pub mod service;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use leasewire::lightning::lnd::LndConfig;
use leasewire::lightning::proto::lnrpc::lightning_server::LightningServer;
use leasewire::lightning::proto::routerrpc::router_server::RouterServer;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tracing::{error, info, warn};

use self::admin::AdminService;
use self::ledger::admin_proto::admin_server::AdminServer;
use self::ledger::{Fault, FaultKind, Ledger, LedgerError, RoutingFee, lock_ledger};
use self::service::SimService;

/// How long [`SimHandle::shutdown`] lets open connections finish before cutting them.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Errors starting or running the simulator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The node list was invalid.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Writing or reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Generating the TLS certificate failed.
    #[error("generating TLS certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The gRPC server failed to start or stopped with an error.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The server task panicked or was cancelled.
    #[error("server task: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The manifest could not be encoded.
    #[error("encoding manifest: {0}")]
    Json(#[from] serde_json::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SimError + '_ {
    move |source| SimError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One virtual node as described to clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestNode {
    /// Node name (alias).
    pub name: String,
    /// Hex identity key.
    pub pubkey: String,
    /// Its `admin.macaroon`.
    pub macaroon_path: PathBuf,
    /// Starting balance, in satoshis.
    pub balance_sat: u64,
}

/// The contents of `lnd-sim.json`: everything a client needs to connect to each node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimManifest {
    /// `host:port` of the gRPC server.
    pub address: String,
    /// The server's certificate (PEM).
    pub tls_cert_path: PathBuf,
    /// The virtual nodes.
    pub nodes: Vec<ManifestNode>,
    /// lnd-sim's admin macaroon file (`DIR/admin.macaroon`).
    #[serde(default)]
    pub admin_macaroon_path: PathBuf,
    /// The admin macaroon, hex (what [`admin::AdminClient::connect`] uses).
    #[serde(default)]
    pub admin_macaroon: String,
}

impl SimManifest {
    /// The [`LndConfig`] for the node called `name`, if there is one.
    pub fn lnd_config(&self, name: &str) -> Option<LndConfig> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| LndConfig {
                address: self.address.clone(),
                tls_cert_path: self.tls_cert_path.clone(),
                macaroon_path: n.macaroon_path.clone(),
            })
    }

    /// Reads a manifest written by [`SimHandle::write_manifest`].
    ///
    /// # Errors
    /// [`SimError::Io`] / [`SimError::Json`] if the file is missing or malformed.
    pub fn load(path: &Path) -> Result<SimManifest, SimError> {
        let text = std::fs::read(path).map_err(io_err(path))?;
        Ok(serde_json::from_slice(&text)?)
    }
}

/// Entry point; see the module docs.
#[derive(Debug)]
pub struct SimServer;

/// A running simulator. Dropping it stops the server.
#[derive(Debug)]
pub struct SimHandle {
    manifest: SimManifest,
    ledger: Arc<Mutex<Ledger>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

/// Writes `bytes` to `path`, readable by the owner only (keys and macaroons are secrets).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SimError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))
}

/// Generates a self-signed CA certificate shaped like LND's (ECDSA P-256, `IsCA`, SANs for
/// localhost and the loopback addresses). Returns `(cert_pem, key_pem)`.
fn generate_cert() -> Result<(String, String), SimError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    params
        .distinguished_name
        .push(DnType::OrganizationName, "lnd autogenerated cert");
    params
        .distinguished_name
        .push(DnType::CommonName, "lnd-sim");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl SimServer {
    /// Creates the nodes `(name, balance_sat)`, writes the credential files under `dir`, and
    /// starts serving on `listen` (port 0 picks a free port; see [`SimHandle::address`]).
    ///
    /// Existing `tls.cert`, `tls.key` and macaroons in `dir` are overwritten: every start is a
    /// fresh network.
    ///
    /// # Errors
    /// [`SimError::Ledger`] for invalid node specs, [`SimError::Io`] / [`SimError::Cert`] for
    /// file or certificate problems, [`SimError::Bind`] if the address is taken,
    /// [`SimError::Serve`] if TLS cannot be configured.
    pub async fn start(
        dir: &Path,
        listen: SocketAddr,
        nodes: &[(String, u64)],
    ) -> Result<SimHandle, SimError> {
        // tonic's TLS server needs a process-wide rustls provider when more than one is linked.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let ledger = Ledger::new(nodes)?;
        let mut admin_macaroon = vec![0u8; 32];
        getrandom::fill(&mut admin_macaroon)
            .map_err(|e| SimError::Ledger(LedgerError::Internal(format!("OS RNG: {e}"))))?;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let admin_macaroon_path = dir.join("admin.macaroon");
        write_private(&admin_macaroon_path, &admin_macaroon)?;
        let (cert_pem, key_pem) = generate_cert()?;
        let tls_cert_path = dir.join("tls.cert");
        std::fs::write(&tls_cert_path, &cert_pem).map_err(io_err(&tls_cert_path))?;
        write_private(&dir.join("tls.key"), key_pem.as_bytes())?;

        let mut manifest_nodes = Vec::with_capacity(nodes.len());
        for (node, (_, balance_sat)) in ledger.nodes().iter().zip(nodes) {
            let node_dir = dir.join(&node.name);
            std::fs::create_dir_all(&node_dir).map_err(io_err(&node_dir))?;
            let macaroon_path = node_dir.join("admin.macaroon");
            write_private(&macaroon_path, &node.macaroon)?;
            manifest_nodes.push(ManifestNode {
                name: node.name.clone(),
                pubkey: hex::encode(node.pubkey.serialize()),
                macaroon_path,
                balance_sat: *balance_sat,
            });
        }

        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| SimError::Bind {
            addr: listen,
            source,
        })?;

        let ledger = Arc::new(Mutex::new(ledger));
        let service = SimService::new(ledger.clone());
        let admin = AdminService::new(ledger.clone(), admin_macaroon.clone());
        let tls = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
        let router = Server::builder()
            .tls_config(tls)?
            .add_service(LightningServer::new(service.clone()))
            .add_service(RouterServer::new(service))
            .add_service(AdminServer::new(admin));
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        // TCP_NODELAY on every accepted connection: a unary gRPC answer ends with a small
        // trailers frame written after the body; with Nagle's algorithm on, it waits for the
        // client's delayed ACK (~40 ms on Linux), which added ~44 ms to every unary RPC and
        // inflated every simnet timing. (tonic's own `tcp_nodelay` applies only to listeners
        // it binds itself, not to an incoming stream like this one.)
        let incoming = TcpListenerStream::new(listener).map(|conn| {
            let conn = conn?;
            conn.set_nodelay(true)?;
            Ok::<_, std::io::Error>(conn)
        });
        let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
            // Either an explicit shutdown or the handle being dropped stops the server.
            let _ = shutdown_rx.await;
        }));
        info!(address = %local, nodes = nodes.len(), "lnd-sim listening");
        Ok(SimHandle {
            manifest: SimManifest {
                address: local.to_string(),
                tls_cert_path,
                nodes: manifest_nodes,
                admin_macaroon_path,
                admin_macaroon: hex::encode(&admin_macaroon),
            },
            ledger,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        })
    }
}

impl SimHandle {
    /// The `host:port` the server listens on.
    pub fn address(&self) -> &str {
        &self.manifest.address
    }

    /// Path of the server's PEM certificate (`DIR/tls.cert`).
    pub fn tls_cert_path(&self) -> &Path {
        &self.manifest.tls_cert_path
    }

    /// Description of the simulator (address, certificate, nodes).
    pub fn manifest(&self) -> &SimManifest {
        &self.manifest
    }

    /// The [`LndConfig`] connecting to node `name`.
    pub fn lnd_config(&self, name: &str) -> Option<LndConfig> {
        self.manifest.lnd_config(name)
    }

    /// Hex identity key of node `name`.
    pub fn pubkey(&self, name: &str) -> Option<&str> {
        self.manifest
            .nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.pubkey.as_str())
    }

    /// Current balance of node `name`, in millisatoshis (for test assertions). Amounts of
    /// in-flight payments are already deducted from the payer.
    pub fn balance_msat(&self, name: &str) -> Option<u64> {
        let ledger = lock_ledger(&self.ledger);
        ledger
            .node_by_name(name)
            .map(|id| ledger.node(id).balance_msat)
    }

    /// The shared ledger, for in-process assertions and direct control (the admin API does
    /// the same over gRPC).
    pub fn ledger(&self) -> Arc<Mutex<Ledger>> {
        self.ledger.clone()
    }

    /// Sets the routing fee charged to payers from now on.
    pub fn set_routing_fee(&self, fee: RoutingFee) {
        lock_ledger(&self.ledger).set_routing_fee(fee);
    }

    /// Injects a fault into the payments of node `payer`.
    ///
    /// # Errors
    /// [`SimError::Ledger`] with [`LedgerError::NotFound`] for an unknown node.
    pub fn add_fault(&self, payer: &str, kind: FaultKind, count: u32) -> Result<(), SimError> {
        let mut ledger = lock_ledger(&self.ledger);
        let id = ledger
            .node_by_name(payer)
            .ok_or_else(|| LedgerError::NotFound(format!("no node named {payer:?}")))?;
        ledger.add_fault(id, Fault { kind, count });
        Ok(())
    }

    /// Writes the manifest as JSON to `path` atomically (temporary file, then rename), so a
    /// reader polling for the file never sees it half-written. Mode 0600: it contains the
    /// admin macaroon.
    ///
    /// # Errors
    /// [`SimError::Io`] / [`SimError::Json`].
    pub fn write_manifest(&self, path: &Path) -> Result<(), SimError> {
        let json = serde_json::to_vec_pretty(&self.manifest)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        // Private: it holds the admin macaroon.
        write_private(&tmp, &json)?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    }

    /// Stops accepting connections and waits for the server to finish.
    ///
    /// # Errors
    /// [`SimError::Serve`] if the server had failed, [`SimError::Join`] if its task panicked.
    pub async fn shutdown(mut self) -> Result<(), SimError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        // Graceful shutdown waits for open streams (a SubscribeInvoices stream never ends on
        // its own), so give connections a moment and then cut them.
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(r) => Ok(r??),
            Err(_) => {
                warn!("lnd-sim: streams still open after shutdown grace period; aborting");
                task.abort();
                Ok(())
            }
        }
    }

    /// Waits until the server stops on its own (it only does so on error).
    ///
    /// # Errors
    /// As [`SimHandle::shutdown`].
    pub async fn wait(&mut self) -> Result<(), SimError> {
        match self.task.as_mut() {
            Some(task) => {
                let r = task.await;
                self.task = None;
                if let Ok(Err(e)) = &r {
                    error!(error = %e, "lnd-sim server stopped");
                }
                Ok(r??)
            }
            None => Ok(()),
        }
    }
}
