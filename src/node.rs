//! The daemon: wires identity, config, audit log, Lightning, tunnel, network and market
//! together, serves the control API and shuts everything down cleanly.
//!
//! Steps of [`run_daemon`]:
//! 1. take the data dir's lock (one daemon per data dir), load config and node key;
//! 2. open sled and the audit log; derive the topic from the secret (slow KDF, off the runtime);
//! 3. connect to LND and check its network; open the tunnel backend and WireGuard keys;
//! 4. start the libp2p event loop, the provider and/or renter, their periodic tasks, the
//!    request dispatcher and the control API;
//! 5. on SIGINT/SIGTERM cancel everything, wait for the tasks, log `node_stopped`, flush.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod handler;
mod tasks;

use handler::Control;
use tasks::{announce_loop, log_audit, periodic, read_secret, wait_for_signal};

use crate::audit::{AuditKind, AuditLog};
use crate::config::{Config, Role, TunnelBackendKind};
use crate::control::{self, ControlError};
use crate::identity::{Identity, WgKeyPair};
use crate::lightning::LightningNode;
use crate::market::provider::{Provider, ProviderParams};
use crate::market::renter::{Renter, RenterParams};
use crate::market::{MarketError, Peers};
use crate::net::{self, NetClient, NetConfig, NetEvent};
use crate::tunnel::Tunnel;
use crate::tunnel::file::FileTunnel;
use crate::tunnel::wireguard::WireGuardTunnel;
use crate::wire::{ErrorCode, ErrorMsg, Hello, Message};

/// Errors that stop the daemon (at start-up, mostly). Each names what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Another daemon holds this data dir.
    #[error("another leasewire daemon is running for {0}")]
    Locked(PathBuf),
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Identity problem.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// Database problem.
    #[error("database {path}: {reason}")]
    Db {
        /// Database dir.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Audit log problem.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// Lightning node problem.
    #[error("lightning node: {0}")]
    Lightning(#[from] crate::lightning::LightningError),
    /// The LN node is on another network than configured.
    #[error("the Lightning node runs on {got}, but lightning.network is {expected}")]
    WrongNetwork {
        /// Configured.
        expected: String,
        /// Reported by the node.
        got: String,
    },
    /// Network layer problem.
    #[error("network: {0}")]
    Net(#[from] crate::net::NetError),
    /// Market problem.
    #[error(transparent)]
    Market(#[from] MarketError),
    /// Control API problem.
    #[error("control API: {0}")]
    Control(#[from] ControlError),
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

/// Path of the sled database inside a data dir.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

/// Path of the control socket inside a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("leasewire.sock")
}

/// Holds an exclusive `flock` on `D/daemon.lock` for the daemon's lifetime.
struct DirLock(#[allow(dead_code)] std::fs::File);

impl DirLock {
    fn take(data_dir: &Path) -> Result<DirLock, NodeError> {
        let path = data_dir.join("daemon.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| NodeError::Other(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(NodeError::Locked(data_dir.to_owned()));
        }
        Ok(DirLock(file))
    }
}

/// The network seen through the market's [`Peers`] trait.
struct NetPeers(NetClient);

#[async_trait::async_trait]
impl Peers for NetPeers {
    async fn find_providers(&self) -> Result<Vec<PeerId>, MarketError> {
        Ok(self
            .0
            .find_providers()
            .await
            .map_err(|e| MarketError::Net(e.to_string()))?
            .into_iter()
            .collect())
    }

    async fn request(
        &self,
        peer: PeerId,
        msg: Message,
    ) -> Result<(Message, Duration), MarketError> {
        self.0
            .request(peer, msg)
            .await
            .map_err(|e| MarketError::Net(e.to_string()))
    }
}

/// Where to link renter wg-quick files: /etc/wireguard when configured, running as root and
/// the directory is writable.
fn etc_wireguard(cfg: &Config) -> Option<PathBuf> {
    let dir = Path::new("/etc/wireguard");
    // SAFETY: geteuid and access have no preconditions; the path is a valid C string.
    let root = unsafe { libc::geteuid() } == 0;
    let writable = unsafe { libc::access(c"/etc/wireguard".as_ptr(), libc::W_OK) } == 0;
    (cfg.tunnel.link_etc_wireguard && root && dir.is_dir() && writable).then(|| dir.to_owned())
}

/// Runs the daemon for `data_dir` until SIGINT/SIGTERM.
pub async fn run_daemon(data_dir: &Path) -> Result<(), NodeError> {
    let _lock = DirLock::take(data_dir)?;
    let cfg = Config::load(&data_dir.join("config.toml"))?;
    let identity = Identity::load(data_dir)?;
    tracing::info!(peer_id = %identity.peer_id, data_dir = %data_dir.display(), "starting leasewire daemon");

    let db_dir = db_path(data_dir);
    let db = sled::open(&db_dir).map_err(|e| NodeError::Db {
        path: db_dir.clone(),
        reason: e.to_string(),
    })?;
    let audit = AuditLog::open(&db, identity.signing_key.clone())?;

    let secret = read_secret(data_dir, &cfg)?;
    let topic = tokio::task::spawn_blocking(move || net::topic::derive(&secret))
        .await
        .map_err(|e| NodeError::Other(format!("topic derivation panicked: {e}")))?
        .map_err(|e| NodeError::Other(format!("topic derivation: {e}")))?;
    if topic.is_public {
        tracing::info!(
            "no secret configured: joining the PUBLIC market (default secret {:?})",
            net::topic::DEFAULT_PUBLIC_SECRET
        );
    } else {
        tracing::info!("joining a private market (secret from config)");
    }
    let public_market = topic.is_public;

    let (ln, source) =
        crate::lightning::connect::connect_from_config(&cfg.lightning, data_dir).await?;
    let info = ln.get_info().await?;
    if info.network != cfg.lightning.network {
        return Err(NodeError::WrongNetwork {
            expected: cfg.lightning.network.clone(),
            got: info.network,
        });
    }
    tracing::info!(ln_pubkey = %info.pubkey, network = %info.network, %source, "connected to Lightning node");
    let ln: Arc<dyn LightningNode> = Arc::new(ln);

    let tunnel: Arc<dyn Tunnel> = match cfg.tunnel.backend {
        TunnelBackendKind::File => Arc::new(
            FileTunnel::new(data_dir.join("tunnel"))
                .map_err(|e| NodeError::Other(format!("tunnel backend: {e}")))?,
        ),
        TunnelBackendKind::Wireguard => Arc::new(
            WireGuardTunnel::new()
                .await
                .map_err(|e| NodeError::Other(format!("tunnel backend: {e}")))?,
        ),
    };
    tracing::info!(backend = tunnel.kind(), "tunnel backend ready");
    let wg = WgKeyPair::load_or_create(&data_dir.join("wireguard").join("private.key"))?;

    let parse_addrs = |v: &[String]| -> Result<Vec<Multiaddr>, NodeError> {
        v.iter()
            .map(|a| {
                a.parse()
                    .map_err(|e| NodeError::Other(format!("bad multiaddr {a}: {e}")))
            })
            .collect()
    };
    let (net_client, mut net_events, event_loop) = net::new(
        &identity.signing_key,
        NetConfig {
            listen: parse_addrs(&cfg.node.listen)?,
            bootstrap: parse_addrs(&cfg.node.bootstrap)?,
            external: parse_addrs(&cfg.node.external)?,
            topic,
            request_timeout: Duration::from_secs(cfg.node.request_timeout_secs),
        },
    )?;
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(event_loop.run(shutdown.clone()));

    audit
        .append_async(
            AuditKind::NodeStarted,
            &json!({"peer_id": identity.peer_id.to_string(), "roles": cfg.node.roles,
                    "ln_pubkey": info.pubkey, "public_market": public_market}),
        )
        .await?;

    let provider = if cfg.has_role(Role::Provider) {
        let p = Provider::new(ProviderParams {
            key: identity.signing_key.clone(),
            cfg: cfg.provider.clone(),
            network: cfg.lightning.network.clone(),
            ln_pubkey: info.pubkey.clone(),
            wg_private: wg.private,
            wg_public: wg.public,
            iface: cfg.tunnel.interface.clone(),
            listen_port: cfg.tunnel.listen_port,
            ln: ln.clone(),
            tunnel: tunnel.clone(),
            audit: audit.clone(),
            db: db.clone(),
        })?;
        p.start().await?;
        Some(p)
    } else {
        None
    };
    let renter = if cfg.has_role(Role::Renter) {
        let r = Renter::new(RenterParams {
            key: identity.signing_key.clone(),
            cfg: cfg.renter.clone(),
            network: cfg.lightning.network.clone(),
            fee_limit_sat: cfg.lightning.fee_limit_sat,
            fee_limit_ppm: cfg.lightning.fee_limit_ppm,
            payment_timeout_secs: cfg.lightning.payment_timeout_secs,
            wg_private: wg.private,
            wg_public: wg.public,
            iface: cfg.tunnel.interface.clone(),
            keepalive: cfg.tunnel.persistent_keepalive_secs,
            conf_dir: data_dir.join("wireguard"),
            etc_wireguard: etc_wireguard(&cfg),
            ln: ln.clone(),
            tunnel: tunnel.clone(),
            audit: audit.clone(),
            peers: Arc::new(NetPeers(net_client.clone())),
            db: db.clone(),
        })?;
        r.start().await?;
        Some(r)
    } else {
        None
    };

    let discovery = Duration::from_secs(cfg.node.discovery_interval_secs.max(1));
    if let Some(p) = provider.clone() {
        tasks.spawn(announce_loop(
            p.clone(),
            net_client.clone(),
            discovery,
            shutdown.clone(),
        ));
        let every = Duration::from_secs(cfg.provider.metering_interval_secs.max(1));
        tasks.spawn(periodic(every, shutdown.clone(), move || {
            let p = p.clone();
            async move {
                if let Err(e) = p.tick().await {
                    tracing::warn!(error = %e, "provider tick failed");
                }
            }
        }));
    }
    if let Some(r) = renter.clone() {
        let autopay_renter = r.clone();
        tasks.spawn(periodic(discovery, shutdown.clone(), move || {
            let r = r.clone();
            async move {
                match r.discover().await {
                    Ok(n) => tracing::debug!(offers = n, "discovery pass"),
                    Err(e) => tracing::debug!(error = %e, "discovery pass failed"),
                }
                if let Err(e) = r.tick().await {
                    tracing::warn!(error = %e, "renter tick failed");
                }
                // Payments a crash or an unreachable provider left open.
                if let Err(e) = r.recover_payments().await {
                    tracing::warn!(error = %e, "payment recovery pass failed");
                }
            }
        }));
        let every = cfg.renter.autopay.check_interval;
        tasks.spawn(periodic(every, shutdown.clone(), move || {
            let r = autopay_renter.clone();
            async move {
                if let Err(e) = r.autopay_tick().await {
                    tracing::warn!(error = %e, "autopay pass failed");
                }
            }
        }));
    }

    // Inbound requests: each is answered in its own task, so a provider waiting for an
    // invoice to settle never holds up other peers.
    {
        let provider = provider.clone();
        let net_client = net_client.clone();
        let audit = audit.clone();
        let network = cfg.lightning.network.clone();
        let is_renter = renter.is_some();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    ev = net_events.recv() => match ev { Some(ev) => ev, None => break },
                };
                match ev {
                    NetEvent::InboundRequest {
                        peer,
                        message,
                        channel,
                    } => {
                        let provider = provider.clone();
                        let net_client = net_client.clone();
                        let network = network.clone();
                        tokio::spawn(async move {
                            let reply = match (&provider, message) {
                                (Some(p), m) => p.handle(peer, m).await,
                                (None, Message::Hello(_)) => {
                                    Message::Hello(Hello::ours(false, is_renter, &network))
                                }
                                (None, m) => Message::Error(ErrorMsg::new(
                                    ErrorCode::Unsupported,
                                    format!("this node is not a provider ({})", m.name()),
                                )),
                            };
                            if let Err(e) = net_client.respond(channel, reply).await {
                                tracing::debug!(%peer, error = %e, "could not answer");
                            }
                        });
                    }
                    NetEvent::MemberJoined { peer } => {
                        log_audit(
                            &audit,
                            AuditKind::MembershipOk,
                            json!({"peer": peer.to_string()}),
                        )
                        .await;
                    }
                    NetEvent::MembershipRefused {
                        peer,
                        by_us,
                        reason,
                    } => {
                        log_audit(
                            &audit,
                            AuditKind::MembershipRefused,
                            json!({"peer": peer.to_string(), "by_us": by_us, "reason": reason}),
                        )
                        .await;
                    }
                    NetEvent::BadMessage { peer, reason } => {
                        log_audit(
                            &audit,
                            AuditKind::PeerRefused,
                            json!({"peer": peer.to_string(), "reason": reason}),
                        )
                        .await;
                    }
                }
            }
        });
    }

    let handler = Arc::new(Control {
        peer_id: identity.peer_id,
        roles: cfg.node.roles.clone(),
        net: net_client.clone(),
        provider: provider.clone(),
        renter: renter.clone(),
        audit: audit.clone(),
        public_market,
        ln_pubkey: info.pubkey.clone(),
        network: cfg.lightning.network.clone(),
        default_credit_sat: cfg.renter.default_credit_sat,
    });
    let socket = socket_path(data_dir);
    let control_task = {
        let shutdown = shutdown.clone();
        let socket = socket.clone();
        tokio::spawn(async move { control::serve(&socket, handler, shutdown).await })
    };
    tracing::info!(socket = %socket.display(), "control API listening; daemon ready");

    let outcome = tokio::select! {
        r = wait_for_signal() => r,
        r = control_task => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NodeError::Control(e)),
            Err(e) => Err(NodeError::Other(format!("control API task failed: {e}"))),
        },
    };
    tracing::info!("shutting down");
    shutdown.cancel();
    drop(net_client);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 10 s");
    }
    let _ = std::fs::remove_file(&socket);
    if let Some(r) = &renter
        && let Err(e) = r.shutdown().await
    {
        tracing::warn!(error = %e, "could not remove the tunnels of suspended leases");
    }
    audit
        .append_async(
            AuditKind::NodeStopped,
            &json!({"peer_id": identity.peer_id.to_string()}),
        )
        .await?;
    audit.flush_async().await?;
    db.flush().map_err(|e| NodeError::Db {
        path: db_dir,
        reason: e.to_string(),
    })?;
    tracing::info!("stopped");
    outcome
}
